/* Image transfers between the local store and a registry: push (blobs in
 * parallel: skipped when present, mounted when the registry has them in
 * another repository, else uploaded; then the manifest under each tag) and
 * pull (index/list resolved to one platform, every blob verified). */
#ifndef IB_REGISTRY_TRANSFER_H
#define IB_REGISTRY_TRANSFER_H

#include "common/progress.h"
#include "oci/reference.h"
#include "oci/store.h"
#include "registry/client.h"

typedef struct {
    unsigned blobs, uploaded, mounted, existed, resumed, restarted;
    uint64_t bytes_up;
    double seconds;
} ib_push_result;

/* Pushes the stored image manifest_digest to dest->registry/dest->repo under
 * each of tags (at least one). */
int ib_push(ib_push_result *res, ib_store *s, const char *manifest_digest, const ib_ref *dest, const char *const *tags,
            size_t ntags, const ib_reg_opts *o, ib_progress *p);

/* Pulls ref (tag or digest) for platform ("linux/amd64" if NULL) into the
 * store, names it (ref string) and returns the image manifest digest. A
 * single-platform image (no index) is taken whatever its platform. */
int ib_pull(char *digest_out, ib_store *s, const ib_ref *ref, const char *platform, const ib_reg_opts *o,
            ib_progress *p);

enum {
    /* A single-platform image must be for platform too (pull --platform): its
     * config, fetched before any layer, decides; otherwise IB_EINVALID
     * "REF is OS/ARCH, not PLATFORM (...)" and no layer is downloaded. */
    IB_PULL_EXACT_PLATFORM = 1,
};
/* ib_pull with IB_PULL_* flags. */
int ib_pull_ex(char *digest_out, ib_store *s, const ib_ref *ref, const char *platform, unsigned flags,
               const ib_reg_opts *o, ib_progress *p);

/* Fetches only manifest and config (for inspect): *manifest and *config are
 * JSON texts, caller frees. */
int ib_fetch_metadata(char **manifest, char **config, char *digest_out, const ib_ref *ref, const char *platform,
                      const ib_reg_opts *o);

#endif
