/* Build/push progress reporting. The machinery reports events here; the
 * mode decides the rendering: a live line with a ticking timer on a TTY,
 * one plain line per step (CI logs), JSON lines for scripts, or nothing.
 * Everything goes to the stream given at creation (stderr for the CLI). */
#ifndef IB_COMMON_PROGRESS_H
#define IB_COMMON_PROGRESS_H

#include <stdint.h>
#include <stdio.h>

typedef enum { IB_PROG_AUTO, IB_PROG_PLAIN, IB_PROG_TTY, IB_PROG_JSON, IB_PROG_QUIET } ib_prog_mode;

typedef struct ib_progress ib_progress;

/* "auto"|"plain"|"tty"|"json"|"quiet" -> mode; IB_EUSAGE otherwise. */
int ib_progress_parse(ib_prog_mode *out, const char *s);
/* AUTO picks TTY when out is a terminal and $CI is not set, else PLAIN. */
ib_progress *ib_progress_new(ib_prog_mode mode, FILE *out);
void ib_progress_free(ib_progress *p);
ib_prog_mode ib_progress_mode(const ib_progress *p);

/* A step: "[stage n/N] INSTRUCTION". */
void ib_progress_step_begin(ib_progress *p, const char *stage, int n, int total, const char *text);
/* status: "DONE" | "CACHED" | "ERROR"; layer_size 0 and digest NULL for metadata-only steps;
 * note (may be NULL) explains, e.g. why a cache entry missed. */
void ib_progress_step_end(ib_progress *p, const char *status, uint64_t layer_size, const char *digest,
                          const char *note);
/* A free-form message (warnings, summaries); kind e.g. "warning", "info".
 * "info" and "output" print bare, others as "kind: message"; in quiet mode
 * only "warning" and "output" (a failed command's last lines) print. */
void ib_progress_msg(ib_progress *p, const char *kind, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* A transfer in flight (a blob being pushed or pulled): a bar in the live
 * area on a terminal, a "progress" event per tenth in JSON mode, nothing in
 * plain mode (the finished line says it all). Thread-safe. */
void ib_progress_bar(ib_progress *p, const char *id, const char *label, uint64_t done, uint64_t total);
void ib_progress_bar_done(ib_progress *p, const char *id);
/* Emits a final JSON object (json mode) / nothing in other modes. json_obj is a serialised object. */
void ib_progress_result(ib_progress *p, const char *json_obj);
/* The failure, as the last event in json mode ({"event":"error","message":…,
 * "exit":N}), so a script reading events sees how the run ended; nothing in
 * other modes (the one-line "imgbuild: error:" on stderr is always there). */
void ib_progress_error(ib_progress *p, const char *message, int exit_code);

/* "1.2 MB", "532 B" (SI units, as docker prints). */
void ib_human_size(char out[32], uint64_t n);
double ib_now(void);

#endif
