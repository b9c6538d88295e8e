#include "common/error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char ib_err_buf[1024];

int ib_error_setv(int code, const char *fmt, va_list ap)
{
    vsnprintf(ib_err_buf, sizeof ib_err_buf, fmt, ap);
    return code;
}

int ib_error_set(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ib_error_setv(code, fmt, ap);
    va_end(ap);
    return code;
}

int ib_error_errno(int code, const char *fmt, ...)
{
    int e = errno;
    char tmp[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    snprintf(ib_err_buf, sizeof ib_err_buf, "%s: %s", tmp, strerror(e));
    return code;
}

int ib_error_wrap(int code, const char *fmt, ...)
{
    char prefix[512], old[sizeof ib_err_buf];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, ib_err_buf, sizeof old);
    snprintf(ib_err_buf, sizeof ib_err_buf, "%s: %s", prefix, old);
    return code;
}

const char *ib_error_last(void)
{
    return ib_err_buf[0] ? ib_err_buf : "unknown error";
}

void ib_error_clear(void) { ib_err_buf[0] = 0; }

static void oom(void)
{
    fputs("imgbuild: error: out of memory\n", stderr);
    abort();
}

void *ib_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) oom();
    return p;
}

void *ib_xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz ? sz : 1);
    if (!p) oom();
    return p;
}

void *ib_xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p) oom();
    return p;
}

char *ib_xstrdup(const char *s)
{
    char *p = strdup(s);
    if (!p) oom();
    return p;
}

char *ib_xstrndup(const char *s, size_t n)
{
    char *p = strndup(s, n);
    if (!p) oom();
    return p;
}

char *ib_xasprintf(const char *fmt, ...)
{
    char *p;
    va_list ap;
    va_start(ap, fmt);
    int r = vasprintf(&p, fmt, ap);
    va_end(ap);
    if (r < 0) oom();
    return p;
}
