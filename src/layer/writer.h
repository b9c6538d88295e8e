/* Deterministic layer writer: collects entries, then writes one tar (sorted,
 * deduplicated — the last entry added for a path wins, as with successive
 * COPY sources — with every parent directory present, uid/gid/mode as given,
 * mtimes set to the build epoch, no user/group names) and streams it through
 * the compressor into the store, computing the diffID (uncompressed) and the
 * digest (compressed) on the way, so the tar never exists in memory or on disk. */
#ifndef IB_LAYER_WRITER_H
#define IB_LAYER_WRITER_H

#include <stddef.h>
#include <stdint.h>

#include "layer/compress.h"
#include "oci/store.h"

typedef enum { IB_LE_DIR, IB_LE_FILE, IB_LE_SYMLINK, IB_LE_WHITEOUT } ib_le_type;

/* Streams the bytes of a file entry into sink. */
typedef int (*ib_layer_content_fn)(void *src, const char *src_path, ib_sink_fn sink, void *sink_ctx);

typedef struct {
    const char *path;     /* image path, no leading '/' ("app/main.py") */
    ib_le_type type;
    unsigned mode;        /* permission bits (07777) */
    unsigned uid, gid;
    uint64_t size;        /* files */
    const char *link;     /* symlink target */
    /* files: "git:<oid>" or "sha256:<hex>" of the bytes (cache keys). A
     * sha256 id is checked against the bytes the content fn streams: a
     * mismatch fails the write ("PATH changed while the build read it"). */
    const char *content_id;
    void *src;            /* files: passed to the content fn */
    const char *src_path;
    ib_layer_content_fn content;
    /* files: written as a hardlink to this path of the same layer, which must
     * sort before it (the content fn is then not called) */
    const char *hardlink;
    /* extended attributes (security.capability, user.*): records of "name\0",
     * a 4-byte big-endian value length and the value, sorted by name */
    const unsigned char *xattrs;
    size_t xattrs_len;
} ib_layer_entry;

typedef struct {
    char digest[IB_DIGEST_STRLEN + 1];  /* compressed blob */
    char diff_id[IB_DIGEST_STRLEN + 1]; /* uncompressed tar */
    uint64_t size;                      /* compressed bytes */
    uint64_t tar_size;
    const char *media_type;
    size_t nentries;
} ib_layer_result;

typedef struct ib_layer_builder ib_layer_builder;

ib_layer_builder *ib_layer_builder_new(void);
void ib_layer_builder_free(ib_layer_builder *b);
/* Copies the entry (strings included). Returns IB_EINVALID for a path with
 * '..' components or an empty path. */
int ib_layer_add(ib_layer_builder *b, const ib_layer_entry *e);
size_t ib_layer_count(const ib_layer_builder *b);
/* 1 if the builder holds an entry for path. */
int ib_layer_has(const ib_layer_builder *b, const char *path);

/* Where a parent directory the layer must contain already exists below
 * (in lower layers), its metadata is kept instead of the 0755 root default:
 * fn returns 1 and fills mode/uid/gid for such a path. */
typedef int (*ib_layer_parent_fn)(void *ctx, const char *path, unsigned *mode, unsigned *uid, unsigned *gid);
void ib_layer_set_parent_meta(ib_layer_builder *b, ib_layer_parent_fn fn, void *ctx);

/* Digest of everything that decides the layer's bytes (paths, types, modes,
 * owners, sizes, link targets, content ids), after the same sorting,
 * deduplication and parent synthesis as writing: the content part of a
 * cache key. Reads no file content. */
void ib_layer_builder_digest(char *out, ib_layer_builder *b);

/* Writes the layer into the store. threads 0 = all cores. */
int ib_layer_write(ib_layer_result *res, ib_layer_builder *b, ib_store *s, ib_comp_algo algo, int threads,
                   int64_t epoch);

#endif
