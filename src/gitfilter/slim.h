/* `imgbuild slim`: the whole one-time procedure, in the order that makes it
 * safe: sanity check (a fresh clone, as git filter-repo insists), compute the
 * new history in memory, export what it removes and verify the export,
 * bundle the old history, then move the refs, check out the new HEAD and
 * shrink .git. The CLI only parses flags and prints the lines reported here. */
#ifndef IB_GITFILTER_SLIM_H
#define IB_GITFILTER_SLIM_H

#include "gitfilter/filter.h"

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *repo;          /* worktree top or bare repository; NULL: the one around the cwd */
    const ib_gf_filter *filter;
    const char *export_dir;    /* required unless dry_run */
    int export_all_versions;
    int dry_run;
    int force;                 /* skip the fresh-clone check */
    const char *backup;        /* bundle path; NULL: <repo>.pre-slim.bundle beside the repo */
    int no_backup;
    int no_gc;
    int no_replace_refs;
    int prune_empty, prune_degenerate; /* IB_GF_PRUNE_* */
} ib_gf_slim_opts;

/* Receives one finished report line at a time ("export: …", "rewrite: …"). */
typedef void (*ib_gf_slim_say)(void *ud, const char *line);

/* What a run did, for scripts (--progress json). */
typedef struct {
    size_t commits, kept, pruned, refs_changed;
    size_t exported_files, exported_written;
    uint64_t exported_bytes;
    uint64_t gitdir_before, gitdir_after; /* bytes; after = before without gc */
    double rewrite_seconds, seconds;
    int dry_run, changed;                 /* changed: history was rewritten */
} ib_gf_slim_result;

int ib_gf_slim_run(ib_gf_slim_result *res, const ib_gf_slim_opts *o, ib_gf_slim_say say, void *ud);

/* --analyze: writes <gitdir>/imgbuild-slim/analysis/ and returns the report
 * (malloc'd). filter may have no rules (then no estimate is made). */
int ib_gf_slim_analyze(char **report, const char *repo, const ib_gf_filter *filter);

#endif
