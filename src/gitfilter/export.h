/* Export first, rewrite second: every file `imgbuild slim` removes is written
 * under the data directory (e.g. an NFS mount such as /geodata) and read back
 * before any history is touched. Nothing here modifies the repository. */
#ifndef IB_GITFILTER_EXPORT_H
#define IB_GITFILTER_EXPORT_H

#include <git2.h>
#include <stddef.h>
#include <stdint.h>

/* Names in the export dir that are ours: the manifest, and the versions
 * tree (other versions of a path, named by blob id). */
#define IB_GF_EXPORT_MANIFEST "MANIFEST"
#define IB_GF_EXPORT_VERSIONS ".imgbuild-versions"

typedef struct {
    const char *dest; /* relative to the export dir, '/'-separated, no leading '/', no ".." */
    git_oid blob;     /* the content; verified by re-hashing the written file */
    uint32_t mode;    /* GIT_FILEMODE_BLOB, GIT_FILEMODE_BLOB_EXECUTABLE or GIT_FILEMODE_LINK */
} ib_gf_export_item;

typedef struct {
    size_t files;    /* items exported (= n) */
    size_t written;  /* files written by this run */
    size_t present;  /* files already there with the right content (re-runs are idempotent) */
    uint64_t bytes;  /* total content size */
} ib_gf_export_stats;

/* Called on the caller's thread after files it wrote itself, with the
 * totals of all writer threads so far, and once at the end (may be NULL). */
typedef void (*ib_gf_export_progress)(void *ud, size_t done_files, size_t total_files, uint64_t done_bytes,
                                      uint64_t total_bytes);

/* Writes every item under dir (created if missing), then dir/MANIFEST, then
 * reads every file and the manifest back and checks them. Items must have
 * unique dest. Fails (and says which file) when a dest exists with other
 * content, crosses a symlink, cannot be written, or does not verify. */
int ib_gf_export(ib_gf_export_stats *out, git_repository *repo, const char *dir, const ib_gf_export_item *items,
                 size_t n, ib_gf_export_progress cb, void *ud);

#endif
