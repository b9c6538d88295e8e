/* Thread-local error slot: every ib_* function that fails returns a negative
 * value and leaves a one-line human message here (libgit2's convention). */
#ifndef IB_COMMON_ERROR_H
#define IB_COMMON_ERROR_H

#include <stdarg.h>
#include <stddef.h>

enum {
    IB_OK = 0,
    IB_ERR = -1,        /* generic failure, message set */
    IB_ENOTFOUND = -2,  /* a looked-up object does not exist */
    IB_EINVALID = -3,   /* bad input from the user (file:line in message) */
    IB_ECORRUPT = -4,   /* digest mismatch / torn data */
    IB_EUSAGE = -5,     /* command-line misuse: CLI exits 2 */
};

/* Sets the message (printf-style) and returns `code`, so callers can write
 * `return ib_error_set(IB_EINVALID, "Dockerfile:%d: ...", line);` */
int ib_error_set(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int ib_error_setv(int code, const char *fmt, va_list ap);
/* Like ib_error_set, appending ": strerror(errno)". */
int ib_error_errno(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prefixes the current message with "<prefix>: " (adds context on the way up). */
int ib_error_wrap(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
const char *ib_error_last(void);
void ib_error_clear(void);

/* Allocation helpers that abort with a message on OOM: an image builder cannot
 * do anything sensible after malloc fails, and checking every strdup would
 * hide the real logic. */
void *ib_xmalloc(size_t n);
void *ib_xcalloc(size_t n, size_t sz);
void *ib_xrealloc(void *p, size_t n);
char *ib_xstrdup(const char *s);
char *ib_xstrndup(const char *s, size_t n);
char *ib_xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
