#ifndef IB_GITFILTER_BUNDLE_H
#define IB_GITFILTER_BUNDLE_H

/* The pre-slim backup as a git bundle (v2) written without git: when the
 * object store is one pack and nothing else (a fresh clone), a full bundle
 * is its ref list followed by that pack's bytes, so the backup costs a file
 * copy instead of `git bundle create`'s walk and re-pack of all history. */

#include <git2.h>

typedef struct ib_gf_bundle_plan ib_gf_bundle_plan;

/* Decides, in the calling thread (it uses libgit2), whether the repository
 * can be backed up by copying its pack: *out is NULL (and 0 returned) when it
 * cannot (loose objects, several packs, alternates, a promisor pack, a ref
 * whose object is missing, a SHA-256 repository); the caller then runs
 * `git bundle create --all`. The ref list is that of `git bundle --all`:
 * every ref under refs/ in name order (symbolic ones resolved), then HEAD. */
int ib_gf_bundle_plan_new(ib_gf_bundle_plan **out, git_repository *repo);

/* Writes the bundle to path (created 0644, replaced if present), synced.
 * Touches no libgit2 state, so it may run on another thread. */
int ib_gf_bundle_write(const ib_gf_bundle_plan *p, const char *path);

/* Bytes the bundle will have. */
unsigned long long ib_gf_bundle_size(const ib_gf_bundle_plan *p);

void ib_gf_bundle_plan_free(ib_gf_bundle_plan *p);

#endif
