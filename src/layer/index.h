/* What directories exist in a stack of layers, and with which metadata,
 * read from the tar headers only (no file content is written anywhere).
 * COPY uses it so the parent directories it must put in its layer keep the
 * mode and owner they have below (a base image's /tmp stays 1777). */
#ifndef IB_LAYER_INDEX_H
#define IB_LAYER_INDEX_H

typedef struct ib_layer_index ib_layer_index;

ib_layer_index *ib_layer_index_new(void);
void ib_layer_index_free(ib_layer_index *x);
/* Applies one layer blob (any compression) on top: directories are recorded,
 * anything else at a path removes a directory there, whiteouts remove
 * entries, opaque markers drop what lower layers had below the directory. */
int ib_layer_index_add(ib_layer_index *x, const char *blob_path);
/* 1 and the metadata if path ("usr/local", no leading '/') is a directory. */
int ib_layer_index_dir(const ib_layer_index *x, const char *path, unsigned *mode, unsigned *uid, unsigned *gid);

/* diffID of a layer blob: sha256 of its uncompressed tar (gzip/zstd/plain). */
int ib_layer_diff_id(char *out, const char *blob_path);

#endif
