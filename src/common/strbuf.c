#include "common/strbuf.h"
#include "common/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ib_strbuf_addf(ib_strbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *t;
    int n = vasprintf(&t, fmt, ap);
    va_end(ap);
    if (n < 0) abort();
    if (b->len + (size_t)n + 1 > b->cap) {
        b->cap = (b->len + (size_t)n + 1) * 2;
        b->s = ib_xrealloc(b->s, b->cap);
    }
    memcpy(b->s + b->len, t, (size_t)n + 1);
    b->len += (size_t)n;
    free(t);
}
