/* Build contexts: where COPY/ADD read from. Three kinds behind one interface:
 *  - a git commit's tree (libgit2): the default, so the image is built from
 *    exactly what was committed, with git's modes (0644/0755/symlink);
 *  - a working directory (--worktree): modes normalised to 0644/0755 so the
 *    host umask never leaks into the image;
 *  - a stage's or image's root filesystem (COPY --from), with chroot-style
 *    symlink resolution. */
#ifndef IB_BUILD_CONTEXT_H
#define IB_BUILD_CONTEXT_H

#include <stddef.h>
#include <stdint.h>

#include "layer/compress.h"

typedef struct ib_context ib_context;

typedef enum { IB_CT_FILE = 1, IB_CT_DIR, IB_CT_SYMLINK } ib_ctx_type;

typedef struct {
    ib_ctx_type type;
    unsigned mode;  /* permission bits */
    unsigned uid, gid;
    uint64_t size;
    char id[41];    /* git object id (hex) for git contexts, "" otherwise */
} ib_ctx_stat;

typedef struct {
    char sha[41];        /* full commit id ("" when not in a git repo) */
    int64_t time;        /* committer time (0 when unknown) */
    char *origin;        /* origin URL without credentials, or NULL */
    char *repo_root;     /* absolute work tree root, or NULL */
    char *subdir;        /* context path relative to repo_root ("" = root) */
} ib_git_info;

/* Opens the tree of commit `rev` (any git revspec) for the context dir
 * ctx_dir, which must be inside a git work tree. Errors name the flag:
 * "--tag 'x': ...". */
int ib_context_open_git(ib_context **out, ib_git_info *info, const char *ctx_dir, const char *rev);
/* Opens a plain directory. info (may be NULL) is filled from the enclosing git
 * repo's HEAD if there is one. normalize_modes: 1 for build contexts (0644/0755,
 * uid/gid 0), 0 for root filesystems (keep mode, uid, gid). */
int ib_context_open_dir(ib_context **out, ib_git_info *info, const char *dir, int normalize_modes);
void ib_context_free(ib_context *c);
void ib_git_info_clear(ib_git_info *g);

/* lstat-like: path relative to the context root ("" or "." = root).
 * IB_ENOTFOUND if missing. */
int ib_context_stat(ib_ctx_stat *st, ib_context *c, const char *path);
/* Symlink target. Caller frees. */
int ib_context_readlink(char **out, ib_context *c, const char *path);
/* Sorted child names of a directory. Caller frees with ib_context_names_free. */
int ib_context_list(char ***names, size_t *n, ib_context *c, const char *dir);
void ib_context_names_free(char **names, size_t n);
/* Streams a file's bytes (matches ib_layer_content_fn, src = the context). */
int ib_context_read(void *c, const char *path, ib_sink_fn sink, void *sink_ctx);
int ib_context_read_all(char **out, size_t *len, ib_context *c, const char *path, size_t max);
/* Content id of a file (st from ib_context_stat), for cache keys: its git
 * blob id when it comes from a commit ("git:<oid>", nothing read), else the
 * sha256 of its bytes. Caller frees. */
int ib_context_content_id(char **out, ib_context *c, const char *path, const ib_ctx_stat *st);
/* Resolves symlinks in path the way a chroot at the context root would
 * (".." never climbs above the root; absolute targets start at the root).
 * follow_last: also resolve the final component. *out is normalised, no
 * leading '/', "" for the root. IB_ENOTFOUND if a component is missing
 * (*out then still holds the resolved path so far plus the rest). */
int ib_context_resolve(char **out, ib_context *c, const char *path, int follow_last);

/* For -f outside the context dir: reads a file at a path relative to the
 * repository root from the same commit (git contexts) or the file system. */
int ib_context_read_repo_file(char **out, size_t *len, ib_context *c, const char *repo_rel_path, size_t max);

#endif
