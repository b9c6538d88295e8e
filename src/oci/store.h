/* Content-addressed blob store + named refs, in the cache dir:
 *   <dir>/blobs/sha256/<hex>    immutable blobs, written via temp file + rename
 *   <dir>/refs/<escaped name>   one line: the manifest digest a name points to
 *   <dir>/tmp/                  in-flight writes (same filesystem, so rename is atomic)
 * Every read of a blob is verified against its digest, so a corrupted or
 * torn file is detected (IB_ECORRUPT), never used. */
#ifndef IB_OCI_STORE_H
#define IB_OCI_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "oci/digest.h"

typedef struct ib_store ib_store;
typedef struct ib_blob_writer ib_blob_writer;
typedef int (*ib_store_sink_fn)(void *ctx, const void *buf, size_t len);

int ib_store_open(ib_store **out, const char *dir);
void ib_store_free(ib_store *s);
const char *ib_store_dir(const ib_store *s);
/* Default cache dir: $IMGBUILD_CACHE, else $XDG_CACHE_HOME/imgbuild, else ~/.cache/imgbuild. Caller frees. */
char *ib_store_default_dir(void);

/* A scratch dir for one build, <dir>/tmp/<prefix>XXXXXX (*path, caller
 * frees), holding a lock file that *lockfd keeps locked (flock LOCK_EX)
 * until it is closed: keep it open for as long as the dir is in use. The
 * sweep in ib_store_open removes such a dir only when it can take that lock,
 * never because of its age, so a build that runs for days keeps it. A child
 * forked without exec (a background removal) inherits the lock. */
int ib_store_scratch_dir(char **path, int *lockfd, ib_store *s, const char *prefix);

/* Path of a blob (may not exist). Caller frees. */
char *ib_store_blob_path(const ib_store *s, const char *digest);
/* 1 if present (size in *size), 0 if not. Presence is not verification. */
int ib_store_has_blob(const ib_store *s, const char *digest, uint64_t *size);

/* Streaming writer: bytes are hashed as they arrive; commit renames the temp
 * file to its digest name (or drops it if the blob already exists). */
int ib_store_blob_begin(ib_blob_writer **out, ib_store *s);
int ib_blob_write(ib_blob_writer *w, const void *buf, size_t len);
/* A sink adapter for ib_blob_write (ctx = the writer). */
int ib_blob_sink(void *ctx, const void *buf, size_t len);
/* Finishes the blob. If expected is non-NULL and differs: IB_ECORRUPT and
 * nothing is stored. Always frees w. digest_out may be NULL. */
int ib_store_blob_commit(char *digest_out, uint64_t *size_out, ib_blob_writer *w, const char *expected);
void ib_store_blob_abort(ib_blob_writer *w);

int ib_store_put_blob(char *digest_out, ib_store *s, const void *buf, size_t len);
/* Reads a small blob fully and verifies it. *out NUL-terminated, caller frees. */
int ib_store_read_blob(char **out, size_t *len, ib_store *s, const char *digest, size_t max);
/* Streams a blob to sink, verifying size and digest at the end (IB_ECORRUPT on
 * mismatch; the sink has then seen bad bytes, so callers write to temp files). */
int ib_store_stream_blob(ib_store *s, const char *digest, ib_store_sink_fn sink, void *ctx);

/* Names: normalized references like "docker.io/library/busybox:latest". */
int ib_store_set_ref(ib_store *s, const char *name, const char *manifest_digest);
/* IB_ENOTFOUND if unknown. */
int ib_store_get_ref(char *digest_out, ib_store *s, const char *name);

/* Small named records (e.g. "last-build" per directory), atomic like refs. */
int ib_store_set_note(ib_store *s, const char *ns, const char *key, const char *value);
int ib_store_get_note(char **value, ib_store *s, const char *ns, const char *key);

#endif
