#include "gitfilter/oidmap.h"
#include "common/error.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    git_oid id;
    uint8_t used;
    uint64_t value;
} slot;

struct ib_oidmap {
    slot *s;
    size_t cap, n; /* cap is a power of two; load kept under 1/2 */
};

static uint64_t h(const git_oid *id)
{
    uint64_t v;
    memcpy(&v, id->id, sizeof v); /* SHA-1 bytes are already uniformly spread */
    return v;
}

ib_oidmap *ib_oidmap_new(void)
{
    ib_oidmap *m = ib_xcalloc(1, sizeof *m);
    m->cap = 1024;
    m->s = ib_xcalloc(m->cap, sizeof *m->s);
    return m;
}

void ib_oidmap_free(ib_oidmap *m)
{
    if (!m) return;
    free(m->s);
    free(m);
}

size_t ib_oidmap_count(const ib_oidmap *m) { return m->n; }

static slot *find(slot *s, size_t cap, const git_oid *id)
{
    size_t i = h(id) & (cap - 1);
    while (s[i].used && !git_oid_equal(&s[i].id, id)) i = (i + 1) & (cap - 1);
    return &s[i];
}

void ib_oidmap_set(ib_oidmap *m, const git_oid *id, uint64_t value)
{
    if ((m->n + 1) * 2 > m->cap) {
        size_t ncap = m->cap * 2;
        slot *ns = ib_xcalloc(ncap, sizeof *ns);
        for (size_t i = 0; i < m->cap; i++)
            if (m->s[i].used) *find(ns, ncap, &m->s[i].id) = m->s[i];
        free(m->s);
        m->s = ns;
        m->cap = ncap;
    }
    slot *e = find(m->s, m->cap, id);
    if (!e->used) {
        e->used = 1;
        git_oid_cpy(&e->id, id);
        m->n++;
    }
    e->value = value;
}

int ib_oidmap_get(const ib_oidmap *m, const git_oid *id, uint64_t *out)
{
    slot *e = find(m->s, m->cap, id);
    if (!e->used) return 0;
    if (out) *out = e->value;
    return 1;
}

int ib_oidmap_iter(const ib_oidmap *m, size_t *i, git_oid *id_out, uint64_t *value_out)
{
    while (*i < m->cap) {
        slot *e = &m->s[(*i)++];
        if (!e->used) continue;
        if (id_out) git_oid_cpy(id_out, &e->id);
        if (value_out) *value_out = e->value;
        return 1;
    }
    return 0;
}
