/* The layer cache shared through a registry (--cache-to / --cache-from).
 * Each entry is a plain OCI image manifest tagged "cache-<key hex>" whose one
 * layer is the cached layer and whose config is a valid image config
 * recording the diffID: registries that only accept images (Harbor rejects
 * BuildKit's cache format, buildkit#2479) take it, and every runner that can
 * pull can reuse it. Imports are verified like any pull. */
#ifndef IB_BUILD_REMOTE_CACHE_H
#define IB_BUILD_REMOTE_CACHE_H

#include "build/cache.h"
#include "common/progress.h"
#include "layer/writer.h"
#include "oci/store.h"
#include "registry/client.h"

typedef struct ib_remote_cache ib_remote_cache;

/* ref: "host[:port]/repo". */
int ib_remote_cache_open(ib_remote_cache **out, const char *ref, const ib_reg_opts *o, int push);
void ib_remote_cache_free(ib_remote_cache *rc);
const char *ib_remote_cache_name(const ib_remote_cache *rc);

/* 1 and res filled (blob now in the store, entry in the local cache) on a
 * hit; 0 on a miss; <0 on error (callers treat errors as misses with a warning). */
int ib_remote_cache_get(ib_layer_result *res, ib_remote_cache *rc, ib_store *s, ib_cache *local, const char *key);
/* Pushes one entry (layer blob, config, manifest tag); existing ones are left alone. */
int ib_remote_cache_put(ib_remote_cache *rc, ib_store *s, const char *key, const ib_layer_result *res,
                        const char *created_by);

/* Cache mounts (RUN --mount=type=cache) travel too, which BuildKit cannot do
 * (buildkit#1474): the directory is one layer of an image tagged
 * "mount-<name>" (name: the mount's id hash), pushed again only when its
 * content changed, so a fresh runner starts with a warm pip/uv cache. */
int ib_remote_cache_put_mount(uint64_t *size, int *pushed, ib_remote_cache *rc, ib_store *s, const char *name,
                              const char *dir, const char *target, ib_comp_algo algo, int threads);
/* Fills dir (an empty cache mount) from the image tagged mount-<name>,
 * verified and unpacked with the layer checks: 1 imported, 0 none there. */
int ib_remote_cache_get_mount(uint64_t *size, ib_remote_cache *rc, ib_store *s, const char *name, const char *dir);
#endif
