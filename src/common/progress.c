#include "common/progress.h"
#include "common/error.h"

#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_BARS 8

typedef struct {
    char id[80];
    char label[16];
    uint64_t done, total;
    double t0, json_at;
    int json_pct;
} bar;

/* On a terminal the bottom of the output is a live area, redrawn by a ticker
 * thread ~10 times a second: the running step with its timer, then one bar
 * per blob in transfer. Everything else is printed above it. */
struct ib_progress {
    ib_prog_mode mode;
    FILE *out;
    int step_no;
    char *label;
    double t0;
    int step_active;
    bar bars[MAX_BARS];
    int nbars;
    int drawn; /* lines of the live area on screen */
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

/* Erases the live area (cursor back at its first line). Under p->mu. */
static void clear_live_locked(ib_progress *p)
{
    if (!p->drawn) return;
    if (p->drawn > 1) fprintf(p->out, "\033[%dA", p->drawn - 1);
    fprintf(p->out, "\r\033[J");
    p->drawn = 0;
}

static void draw_live_locked(ib_progress *p)
{
    clear_live_locked(p);
    int lines = 0;
    if (p->step_active) {
        fprintf(p->out, " => %s  %.1fs", p->label, ib_now() - p->t0);
        lines++;
    }
    for (int i = 0; i < p->nbars; i++) {
        const bar *b = &p->bars[i];
        char d[32], t[32], bar_s[24];
        ib_human_size(d, b->done);
        ib_human_size(t, b->total);
        int fill = b->total ? (int)(20 * (double)b->done / (double)b->total) : 0;
        if (fill > 20) fill = 20;
        for (int k = 0; k < 20; k++) bar_s[k] = k < fill ? '#' : k == fill ? '>' : '.';
        bar_s[20] = '\0';
        double dt = ib_now() - b->t0;
        fprintf(p->out, "%s   %-8s %.19s [%s] %9s / %-9s %6.1f MB/s", lines ? "\n" : "", b->label, b->id, bar_s, d,
                t, dt > 0.05 ? (double)b->done / 1e6 / dt : 0.0);
        lines++;
    }
    p->drawn = lines;
    fflush(p->out);
}

static void *tick(void *arg)
{
    ib_progress *p = arg;
    pthread_mutex_lock(&p->mu);
    while (!p->stop) {
        if (p->step_active || p->nbars) draw_live_locked(p);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    }
    clear_live_locked(p);
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* The ticker lives from the first step or bar to ib_progress_free. */
static void start_ticker(ib_progress *p)
{
    if (p->ticking || p->mode != IB_PROG_TTY) return;
    p->stop = 0;
    if (pthread_create(&p->ticker, NULL, tick, p) == 0) p->ticking = 1;
}

void ib_progress_bar(ib_progress *p, const char *id, const char *label, uint64_t done, uint64_t total)
{
    if (p->mode != IB_PROG_TTY && p->mode != IB_PROG_JSON) return;
    pthread_mutex_lock(&p->mu);
    int i = 0;
    while (i < p->nbars && strcmp(p->bars[i].id, id)) i++;
    if (i == p->nbars) {
        if (p->nbars == MAX_BARS) {
            pthread_mutex_unlock(&p->mu);
            return; /* more transfers than lines worth showing: the rest stay quiet */
        }
        bar *b = &p->bars[p->nbars++];
        memset(b, 0, sizeof *b);
        snprintf(b->id, sizeof b->id, "%s", id);
        snprintf(b->label, sizeof b->label, "%s", label);
        b->t0 = ib_now();
        b->json_pct = -1;
    }
    bar *b = &p->bars[i];
    b->done = done;
    b->total = total;
    if (p->mode == IB_PROG_JSON) {
        /* scripts get a line per tenth (and at most one a second otherwise) */
        int pct = total ? (int)(100 * done / total) / 10 * 10 : 0;
        double now = ib_now();
        if (pct != b->json_pct || now - b->json_at >= 1.0) {
            b->json_pct = pct;
            b->json_at = now;
            fprintf(p->out, "{\"event\":\"progress\",\"id\":\"%s\",\"action\":\"%s\",\"done\":%llu,\"total\":%llu}\n",
                    b->id, b->label, (unsigned long long)done, (unsigned long long)total);
            fflush(p->out);
        }
    }
    pthread_mutex_unlock(&p->mu);
    if (p->mode == IB_PROG_TTY && !p->ticking) {
        pthread_mutex_lock(&p->mu);
        start_ticker(p);
        pthread_mutex_unlock(&p->mu);
    }
}

void ib_progress_bar_done(ib_progress *p, const char *id)
{
    if (p->mode != IB_PROG_TTY && p->mode != IB_PROG_JSON) return;
    pthread_mutex_lock(&p->mu);
    for (int i = 0; i < p->nbars; i++)
        if (!strcmp(p->bars[i].id, id)) {
            p->bars[i] = p->bars[--p->nbars];
            break;
        }
    pthread_mutex_unlock(&p->mu);
}

void ib_progress_step_begin(ib_progress *p, const char *stage, int n, int total, const char *text)
{
    pthread_mutex_lock(&p->mu);
    p->step_no++;
    free(p->label);
    p->label = stage && *stage ? ib_xasprintf("#%d [%s %d/%d] %s", p->step_no, stage, n, total, text)
                               : ib_xasprintf("#%d [%d/%d] %s", p->step_no, n, total, text);
    /* Keep lines readable: long RUN/COPY lines are cut like docker does. */
    if (strlen(p->label) > 100) strcpy(p->label + 97, "...");
    p->t0 = ib_now();
    if (p->mode == IB_PROG_TTY) {
        p->step_active = 1;
        draw_live_locked(p); /* at once: a fast step may end before the ticker's next frame */
        start_ticker(p);
    } else if (p->mode == IB_PROG_JSON) {
        json_t *j = json_pack("{s:s,s:i,s:s?,s:i,s:i,s:s}", "event", "step", "step", p->step_no, "stage", stage,
                              "index", n, "total", total, "instruction", text);
        char *s = json_dumps(j, JSON_COMPACT);
        fprintf(p->out, "%s\n", s);
        free(s);
        json_decref(j);
        fflush(p->out);
    }
    pthread_mutex_unlock(&p->mu);
}

void ib_progress_step_end(ib_progress *p, const char *status, uint64_t layer_size, const char *digest,
                          const char *note)
{
    pthread_mutex_lock(&p->mu);
    double dt = ib_now() - p->t0;
    char hs[32] = "";
    if (digest) ib_human_size(hs, layer_size);
    switch (p->mode) {
    case IB_PROG_TTY:
        clear_live_locked(p);
        p->step_active = 0;
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
    pthread_mutex_unlock(&p->mu);
}

void ib_progress_msg(ib_progress *p, const char *kind, const char *fmt, ...)
{
    /* "output" (a failed RUN's last lines) shows even with -q: without it a
     * quiet build could not say why it failed. */
    if (p->mode == IB_PROG_QUIET && strcmp(kind, "warning") != 0 && strcmp(kind, "output") != 0) return;
    int bare = !strcmp(kind, "info") || !strcmp(kind, "output"); /* no "kind: " prefix */
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
        clear_live_locked(p);
        fprintf(p->out, "%s%s%s\n", bare ? "" : kind, bare ? "" : ": ", buf);
        if (p->step_active || p->nbars) draw_live_locked(p);
        fflush(p->out);
        pthread_mutex_unlock(&p->mu);
    } else {
        fprintf(p->out, "%s%s%s\n", bare ? "" : kind, bare ? "" : ": ", buf);
    }
    fflush(p->out);
}

void ib_progress_error(ib_progress *p, const char *message, int exit_code)
{
    if (!p || p->mode != IB_PROG_JSON) return;
    json_t *j = json_pack("{s:s,s:s,s:i}", "event", "error", "message", message ? message : "", "exit", exit_code);
    char *s = json_dumps(j, JSON_COMPACT);
    fprintf(p->out, "%s\n", s);
    fflush(p->out);
    free(s);
    json_decref(j);
}

void ib_progress_result(ib_progress *p, const char *json_obj)
{
    if (p->mode != IB_PROG_JSON) return;
    fprintf(p->out, "{\"event\":\"result\",\"result\":%s}\n", json_obj);
    fflush(p->out);
}
