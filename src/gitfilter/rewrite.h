/* The history rewrite of `imgbuild slim`, with libgit2 and without a
 * fast-export pipe: every commit reachable from any ref is rewritten in
 * topological order with git filter-repo's semantics (prune commits that
 * become empty, trim degenerate merges, rewrite annotated tags), so that for
 * the same filter the new commit ids are the ones filter-repo produces.
 *
 * Two phases, so that nothing is written before the export is verified:
 * compute builds every new object in memory (and is all --dry-run does);
 * apply writes them as one pack, moves the refs in one transaction and
 * writes commit-map / ref-map. */
#ifndef IB_GITFILTER_REWRITE_H
#define IB_GITFILTER_REWRITE_H

#include "gitfilter/filter.h"

#include <git2.h>
#include <stddef.h>
#include <stdint.h>

enum { IB_GF_PRUNE_AUTO = 0, IB_GF_PRUNE_ALWAYS, IB_GF_PRUNE_NEVER };
/* "auto"|"always"|"never" -> value, or IB_EUSAGE naming flag. */
int ib_gf_parse_prune(int *out, const char *flag, const char *value);

typedef struct {
    const ib_gf_filter *filter;
    int prune_empty;      /* IB_GF_PRUNE_* */
    int prune_degenerate; /* IB_GF_PRUNE_* */
    /* As filter-repo in a fresh clone: refs/remotes/origin/X becomes
     * refs/heads/X, refs/remotes/origin/HEAD goes away. */
    int migrate_origin;
    /* As filter-repo's default (--replace-refs update-and-add): for every
     * rewritten commit, refs/replace/<old> -> <new>, so that old ids (in
     * image tags, tickets, CI logs) still resolve in git. */
    int replace_refs;
} ib_gf_rewrite_opts;

typedef struct {
    size_t commits;      /* commits walked */
    size_t kept;         /* commits in the new history */
    size_t pruned;       /* commits that became empty (or degenerate) and were dropped */
    size_t changed;      /* kept commits whose id changed */
    size_t trees;        /* new tree objects */
    size_t tags;         /* annotated tags rewritten */
    size_t refs_updated; /* refs that move (incl. migrated ones) */
    size_t refs_deleted; /* refs whose whole history was pruned */
    size_t objects;      /* new objects written by apply */
} ib_gf_rewrite_stats;

typedef struct ib_gf_rewrite ib_gf_rewrite;

typedef void (*ib_gf_rewrite_progress)(void *ud, size_t done, size_t total);

int ib_gf_rewrite_compute(ib_gf_rewrite **out, git_repository *repo, const ib_gf_rewrite_opts *opts,
                          ib_gf_rewrite_progress cb, void *ud);
const ib_gf_rewrite_stats *ib_gf_rewrite_stats_get(const ib_gf_rewrite *rw);
/* The new id of HEAD's commit (zero oid when HEAD is unborn or was pruned away). */
const git_oid *ib_gf_rewrite_new_head(const ib_gf_rewrite *rw);
/* Writes the new objects, updates the refs, writes mapdir/commit-map and
 * mapdir/ref-map. */
int ib_gf_rewrite_apply(ib_gf_rewrite *rw, const char *mapdir);
void ib_gf_rewrite_free(ib_gf_rewrite *rw);

/* Every file of tree that filter removes (the same decision the rewrite
 * makes), reported as (path, blob id, git mode). seen (may be NULL) is a
 * memo shared between calls: a (tree, path) already walked is skipped, which
 * makes a walk over all of history cost one visit per distinct subtree. */
typedef int (*ib_gf_removed_cb)(void *ud, const char *path, size_t len, const git_oid *blob, uint32_t mode);
typedef struct ib_oidmap ib_oidmap;
int ib_gf_removed_in_tree(git_repository *repo, const git_oid *tree, const ib_gf_filter *filter, ib_oidmap *seen,
                          ib_gf_removed_cb cb, void *ud);

#endif
