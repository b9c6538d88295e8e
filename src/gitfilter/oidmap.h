/* A hash map from git object ids to a 64-bit value (sizes, indexes, flags).
 * History rewriting touches every commit and tree once and looks ids up many
 * times; an open-addressing table keyed on the id's own (already uniform)
 * bytes is several times cheaper than libgit2's oidmap behind its API. */
#ifndef IB_GITFILTER_OIDMAP_H
#define IB_GITFILTER_OIDMAP_H

#include <git2.h>
#include <stddef.h>
#include <stdint.h>

typedef struct ib_oidmap ib_oidmap;

ib_oidmap *ib_oidmap_new(void);
void ib_oidmap_free(ib_oidmap *m);
size_t ib_oidmap_count(const ib_oidmap *m);
/* Inserts or replaces. */
void ib_oidmap_set(ib_oidmap *m, const git_oid *id, uint64_t value);
/* 1 and *out set when present, 0 when absent (out may be NULL). */
int ib_oidmap_get(const ib_oidmap *m, const git_oid *id, uint64_t *out);
/* Iteration: i from 0 while ib_oidmap_iter returns 1. */
int ib_oidmap_iter(const ib_oidmap *m, size_t *i, git_oid *id_out, uint64_t *value_out);

#endif
