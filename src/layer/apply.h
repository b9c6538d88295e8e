/* Unpacks layer blobs into a root directory securely: no entry, symlink or
 * hardlink can create, modify or read anything outside root (`..`, absolute
 * names, symlinked parents, links pointing out are all rejected or resolved
 * inside root, as a chroot would). OCI whiteouts (.wh.<name>, .wh..wh..opq)
 * are applied, not written. */
#ifndef IB_LAYER_APPLY_H
#define IB_LAYER_APPLY_H

#include <stdint.h>

typedef struct {
    uint64_t entries;   /* tar entries read */
    uint64_t whiteouts; /* whiteouts applied */
    uint64_t bytes;     /* regular-file bytes written */
} ib_apply_stats;

/* Applies the layer at blob_path (plain tar, gzip or zstd; detected from the
 * bytes) on top of root (which must exist). As root (euid 0) ownership is
 * restored; otherwise files are owned by the caller. Returns IB_EINVALID with
 * "<blob_path>: entry '<name>': <why>" for hostile or malformed entries;
 * stats may be NULL. */
int ib_layer_apply(ib_apply_stats *stats, const char *root, const char *blob_path);

#endif
