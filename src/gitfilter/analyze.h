/* `imgbuild slim --analyze`: where the bytes of a repository's history are,
 * by directory, extension and path (like git filter-repo --analyze), with the
 * estimated .git size once a filter has been applied. Read-only. */
#ifndef IB_GITFILTER_ANALYZE_H
#define IB_GITFILTER_ANALYZE_H

#include "gitfilter/filter.h"
#include "gitfilter/oidmap.h"

#include <git2.h>
#include <stdint.h>

typedef struct ib_gf_analysis ib_gf_analysis;

/* The on-disk (packed, or loose file) size of every object in the repository:
 * read from the pack .idx files (offset differences) and loose object files,
 * without inflating anything. */
int ib_gf_disk_sizes(ib_oidmap **out, git_repository *repo);

/* Walks every commit reachable from every ref. filter may be NULL (no estimate). */
int ib_gf_analyze(ib_gf_analysis **out, git_repository *repo, const ib_gf_filter *filter);
/* Writes directories.txt, extensions.txt, paths.txt and summary.txt into dir
 * (created), atomically. */
int ib_gf_analysis_write(const ib_gf_analysis *a, const char *dir);
/* The human report (top entries of each table, totals, estimate); malloc'd. */
char *ib_gf_analysis_summary(const ib_gf_analysis *a, int top);
void ib_gf_analysis_free(ib_gf_analysis *a);

#endif
