/* A growing string for building texts piece by piece (cache-key inputs). */
#ifndef IB_COMMON_STRBUF_H
#define IB_COMMON_STRBUF_H

#include <stddef.h>

typedef struct {
    char *s; /* NUL-terminated once anything was added; free() it */
    size_t len, cap;
} ib_strbuf;

void ib_strbuf_addf(ib_strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
