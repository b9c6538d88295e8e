/* What directories and symlinks exist in a stack of layers, with their
 * metadata and link targets, read from the tar headers only (no file content
 * is written anywhere). COPY uses it to resolve its destination through the
 * image's symlinks (a usrmerge base's /bin -> usr/bin stays a link), to tell
 * an existing directory from a new path, and so the parent directories it
 * must put in its layer keep the mode and owner they have below (a base
 * image's /tmp stays 1777). Plain files are not recorded: nothing needs them. */
#ifndef IB_LAYER_INDEX_H
#define IB_LAYER_INDEX_H

typedef struct ib_layer_index ib_layer_index;

typedef enum { IB_LX_NONE = 0, IB_LX_DIR, IB_LX_SYMLINK } ib_lx_kind;

ib_layer_index *ib_layer_index_new(void);
void ib_layer_index_free(ib_layer_index *x);
/* Applies one layer blob (any compression) on top, as an extractor would:
 * an entry's parent directory is resolved through the symlinks known so far
 * (like the layer applier's RESOLVE_IN_ROOT walk); directories and symlinks
 * are recorded, anything else at a path removes what was there (and below),
 * whiteouts remove entries, opaque markers drop what lower layers had below
 * the directory. */
int ib_layer_index_add(ib_layer_index *x, const char *blob_path);
/* 1 and the metadata if path ("usr/local", no leading '/') is a directory
 * (the path is taken literally: a symlink to a directory is not one). */
int ib_layer_index_dir(const ib_layer_index *x, const char *path, unsigned *mode, unsigned *uid, unsigned *gid);
/* What is at path, the last component not followed; for a symlink *target
 * (if target is non-NULL) points to its target, owned by the index and valid
 * until the next ib_layer_index_add. Files and absent paths: IB_LX_NONE. */
ib_lx_kind ib_layer_index_kind(const ib_layer_index *x, const char *path, const char **target);
/* containerd/continuity fs.RootPath over the index: every symlink on path,
 * the last component included, is followed as if the image root were "/"
 * (absolute targets start at the root, ".." stops there); components that
 * do not exist are kept as they are. *out has no leading '/' ("" = root).
 * x may be NULL (nothing below: path is only cleaned). IB_EINVALID after 255
 * links (a loop). */
int ib_layer_index_resolve(char **out, const ib_layer_index *x, const char *path);

/* A computed index saved as a small file (written atomically, checked by
 * a digest of its text on load), so the next build on the same layers loads
 * it instead of reading every layer's headers again: on a Python base with
 * a deps layer that is most of a code-only rebuild. tag says which layers
 * it covers; load fails with IB_ECORRUPT unless the file is intact and has
 * the same tag. saved_tag reads the tag alone (for pruning). */
int ib_layer_index_save(const ib_layer_index *x, const char *path, const char *tag);
int ib_layer_index_load(ib_layer_index **out, const char *path, const char *tag);
int ib_layer_index_saved_tag(char **tag, const char *path);

/* diffID of a layer blob: sha256 of its uncompressed tar (gzip/zstd/plain). */
int ib_layer_diff_id(char *out, const char *blob_path);

#endif
