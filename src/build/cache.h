/* The local layer cache, keyed by content (BuildKit semantics, stricter on
 * one point: a key covers everything that decides the layer's bytes).
 *   key = sha256("imgbuild-cache-v1", parent layer chain, compression,
 *                digest of the layer's entries: paths, modes, owners, sizes,
 *                link targets and content ids — git blob ids for commit builds)
 * Entries live in <cache>/cache/entries/<key-hex> (JSON: the layer
 * descriptor, diffID, the step that made it), written by temp file + rename
 * after the blob itself, so a killed build never leaves an entry pointing at
 * nothing; a hit is verified before use (the entry's own checksum, its
 * blob's size, digest and compression).
 * Per step, the inputs of the last build are kept (<cache>/cache/steps/) so
 * a miss can say which input changed. */
#ifndef IB_BUILD_CACHE_H
#define IB_BUILD_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "layer/writer.h"
#include "oci/store.h"

typedef struct ib_cache ib_cache;

int ib_cache_open(ib_cache **out, ib_store *s);
void ib_cache_free(ib_cache *c);

/* key (out, IB_DIGEST_STRLEN+1) from the parent chain, compression name and entries digest. */
void ib_cache_key(char *out, const char *parent_chain, const char *compression, const char *entries_digest);
/* "sha256:" digest of a list of diffIDs: a stage's layer chain so far. */
void ib_cache_chain(char *out, char *const *diff_ids, size_t n);

/* 1 on a verified hit (res filled), 0 on a miss, <0 on error. Refreshes the
 * entry's last use. Verified: the entry's checksum (over its fields and the
 * key), its blob's size, digest and compression (magic bytes vs media type);
 * for uncompressed layers diffID = digest. A damaged entry (or blob) is
 * removed and counts as a miss; *damaged (may be NULL) then says why, for
 * the step's note (caller frees; NULL otherwise). */
int ib_cache_get(ib_layer_result *res, char **damaged, ib_cache *c, const char *key);
/* Writes the entry (with its checksum) by temp file + rename. */
int ib_cache_put(ib_cache *c, const char *key, const ib_layer_result *res, const char *created_by);
/* The OCI layer media type a blob's first bytes show: gzip (1f 8b), zstd
 * (28 b5 2f fd), else an uncompressed tar. */
const char *ib_cache_sniff_layer_mt(const void *head, size_t n);
/* Hashes the store's layer blob against its digest, and *mt is the media
 * type its first bytes show. A blob that does not match is unlinked (so a
 * fetch can replace it) and IB_ECORRUPT returned. */
int ib_cache_verify_layer_blob(const char **mt, ib_store *s, const char *digest);

/* Explaining misses: inputs is a text of "name value" lines (instruction,
 * parent, compression, key, entries; "src PATH [MODE] ID" per source;
 * argv, user, workdir, network, dest, owner, bind...). Names may repeat:
 * they are compared as lists. record() stores it for locator; explain()
 * compares with the stored one and returns a short reason naming what
 * changed, or "pruned" when the key is the one recorded (caller frees). */
int ib_cache_record(ib_cache *c, const char *locator, const char *inputs);
char *ib_cache_explain(ib_cache *c, const char *locator, const char *inputs);

/* Listing and pruning (imgbuild cache ls|du|prune). */
typedef struct {
    char key[72];
    char *created_by;
    uint64_t size;
    int64_t last_used;
    char digest[72];
} ib_cache_entry;
int ib_cache_list(ib_cache_entry **out, size_t *n, ib_cache *c);
void ib_cache_entries_free(ib_cache_entry *e, size_t n);
typedef struct {
    int all;
    int64_t older_than_s;     /* 0 = no age limit */
    uint64_t keep_bytes;      /* 0 = no size limit */
} ib_prune_opts;
typedef struct {
    size_t entries_removed, blobs_removed, mounts_removed;
    uint64_t bytes_freed; /* blobs and cache mounts */
} ib_prune_result;
/* RUN --mount=type=cache directories (<store>/mounts/<id hash>): how many
 * and their total size. prune removes them with --all, or when unused for
 * older_than (a build touches each mount it uses); keep_bytes leaves them. */
uint64_t ib_cache_mounts_usage(ib_cache *c, size_t *count);
/* Removes entries (by age / least recently used beyond keep_bytes / all),
 * then every blob no remaining entry and no named image references. Takes
 * the store's exclusive lock, so it never races a build (builds hold it shared). */
int ib_cache_prune(ib_prune_result *res, ib_cache *c, const ib_prune_opts *o);
/* Shared lock for the duration of a build; released by ib_cache_free. */
int ib_cache_lock_shared(ib_cache *c);

#endif
