#include "common/progress.h"
#include "common/error.h"

#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct ib_progress {
    ib_prog_mode mode;
    FILE *out;
    int step_no;
    char *label;
    double t0;
    pthread_t ticker;
    int ticking;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
};

double ib_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void ib_human_size(char out[32], uint64_t n)
{
    const char *u[] = {"B", "kB", "MB", "GB", "TB"};
    double v = (double)n;
    int i = 0;
    while (v >= 1000 && i < 4) {
        v /= 1000;
        i++;
    }
    if (i == 0) snprintf(out, 32, "%llu B", (unsigned long long)n);
    else snprintf(out, 32, "%.1f %s", v, u[i]);
}

int ib_progress_parse(ib_prog_mode *out, const char *s)
{
    if (!strcmp(s, "auto")) *out = IB_PROG_AUTO;
    else if (!strcmp(s, "plain")) *out = IB_PROG_PLAIN;
    else if (!strcmp(s, "tty")) *out = IB_PROG_TTY;
    else if (!strcmp(s, "json")) *out = IB_PROG_JSON;
    else if (!strcmp(s, "quiet")) *out = IB_PROG_QUIET;
    else return ib_error_set(IB_EUSAGE, "--progress: unknown mode '%s' (auto, plain, tty, json, quiet)", s);
    return 0;
}

ib_progress *ib_progress_new(ib_prog_mode mode, FILE *out)
{
    ib_progress *p = ib_xcalloc(1, sizeof *p);
    if (mode == IB_PROG_AUTO) {
        const char *ci = getenv("CI");
        mode = (isatty(fileno(out)) && !(ci && *ci)) ? IB_PROG_TTY : IB_PROG_PLAIN;
    }
    p->mode = mode;
    p->out = out;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    return p;
}

static void stop_ticker(ib_progress *p)
{
    if (!p->ticking) return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->ticker, NULL);
    p->ticking = 0;
}

void ib_progress_free(ib_progress *p)
{
    if (!p) return;
    stop_ticker(p);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->label);
    free(p);
}

ib_prog_mode ib_progress_mode(const ib_progress *p) { return p->mode; }

/* Redraws the running step's line with its elapsed time, ~10 times a second,
 * so a long COPY visibly makes progress on a terminal. */
static void *tick(void *arg)
{
    ib_progress *p = arg;
    pthread_mutex_lock(&p->mu);
    while (!p->stop) {
        fprintf(p->out, "\r\033[K => %s  %.1fs", p->label, ib_now() - p->t0);
        fflush(p->out);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

void ib_progress_step_begin(ib_progress *p, const char *stage, int n, int total, const char *text)
{
    stop_ticker(p);
    p->step_no++;
    free(p->label);
    p->label = stage && *stage ? ib_xasprintf("#%d [%s %d/%d] %s", p->step_no, stage, n, total, text)
                               : ib_xasprintf("#%d [%d/%d] %s", p->step_no, n, total, text);
    /* Keep lines readable: long RUN/COPY lines are cut like docker does. */
    if (strlen(p->label) > 100) strcpy(p->label + 97, "...");
    p->t0 = ib_now();
    if (p->mode == IB_PROG_TTY) {
        p->stop = 0;
        if (pthread_create(&p->ticker, NULL, tick, p) == 0) p->ticking = 1;
    } else if (p->mode == IB_PROG_JSON) {
        json_t *j = json_pack("{s:s,s:i,s:s?,s:i,s:i,s:s}", "event", "step", "step", p->step_no, "stage", stage,
                              "index", n, "total", total, "instruction", text);
        char *s = json_dumps(j, JSON_COMPACT);
        fprintf(p->out, "%s\n", s);
        free(s);
        json_decref(j);
        fflush(p->out);
    }
}

void ib_progress_step_end(ib_progress *p, const char *status, uint64_t layer_size, const char *digest,
                          const char *note)
{
    stop_ticker(p);
    double dt = ib_now() - p->t0;
    char hs[32] = "";
    if (digest) ib_human_size(hs, layer_size);
    switch (p->mode) {
    case IB_PROG_TTY:
        fprintf(p->out, "\r\033[K");
        /* fallthrough */
    case IB_PROG_PLAIN:
        fprintf(p->out, "%-60s %s %.2fs%s%s%s%s\n", p->label ? p->label : "", status, dt, digest ? "  " : "", hs,
                note ? "  " : "", note ? note : "");
        break;
    case IB_PROG_JSON: {
        json_t *j = json_pack("{s:s,s:i,s:s,s:f}", "event", "step_done", "step", p->step_no, "status", status,
                              "seconds", dt);
        if (digest) {
            json_object_set_new(j, "layer_digest", json_string(digest));
            json_object_set_new(j, "layer_size", json_integer((json_int_t)layer_size));
        }
        if (note) json_object_set_new(j, "note", json_string(note));
        char *s = json_dumps(j, JSON_COMPACT);
        fprintf(p->out, "%s\n", s);
        free(s);
        json_decref(j);
        break;
    }
    default:
        break;
    }
    fflush(p->out);
}

void ib_progress_msg(ib_progress *p, const char *kind, const char *fmt, ...)
{
    if (p->mode == IB_PROG_QUIET && strcmp(kind, "warning") != 0) return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (p->mode == IB_PROG_JSON) {
        json_t *j = json_pack("{s:s,s:s,s:s}", "event", "message", "kind", kind, "message", buf);
        char *s = json_dumps(j, JSON_COMPACT);
        fprintf(p->out, "%s\n", s);
        free(s);
        json_decref(j);
    } else if (p->mode == IB_PROG_TTY) {
        /* Under the ticker's lock: clear the live line, print, and let the ticker redraw below. */
        pthread_mutex_lock(&p->mu);
        fprintf(p->out, "\r\033[K%s%s%s\n", strcmp(kind, "info") ? kind : "", strcmp(kind, "info") ? ": " : "", buf);
        fflush(p->out);
        pthread_mutex_unlock(&p->mu);
    } else {
        fprintf(p->out, "%s%s%s\n", strcmp(kind, "info") ? kind : "", strcmp(kind, "info") ? ": " : "", buf);
    }
    fflush(p->out);
}

void ib_progress_result(ib_progress *p, const char *json_obj)
{
    if (p->mode != IB_PROG_JSON) return;
    fprintf(p->out, "{\"event\":\"result\",\"result\":%s}\n", json_obj);
    fflush(p->out);
}
