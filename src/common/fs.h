/* Filesystem helpers: atomic writes, mkdir -p, temp dirs. */
#ifndef IB_COMMON_FS_H
#define IB_COMMON_FS_H

#include <stddef.h>
#include <stdio.h>

int ib_fs_mkdir_p(const char *path, int mode);
/* Writes `len` bytes to `path` via a temp file in the same directory + fsync +
 * rename, so readers see the old content or the new, never a torn file. */
int ib_fs_write_atomic(const char *path, const void *data, size_t len, int mode);
/* Like ib_fs_write_atomic, but does nothing when the file already holds
 * exactly these bytes (no-op rebuilds then cost no fsync). */
int ib_fs_write_atomic_if_changed(const char *path, const void *data, size_t len, int mode);
/* Reads a whole (small) file; *out is NUL-terminated, caller frees. max caps
 * the size so a hostile file cannot exhaust memory. */
int ib_fs_read_all(char **out, size_t *out_len, const char *path, size_t max);
/* Creates a temp file next to `final_path` ("<dir>/.<base>.tmp-XXXXXX").
 * *out_tmp is malloc'd; the returned FILE is opened "w+b". */
int ib_fs_tmpfile_near(FILE **out_fp, char **out_tmp, const char *final_path);
/* Creates a fresh temp dir under $TMPDIR (or /tmp) with the given prefix. */
int ib_fs_mkdtemp(char **out, const char *prefix);
/* rm -rf, never following symlinks. */
int ib_fs_rm_rf(const char *path);
int ib_fs_exists(const char *path);
/* Lexically cleans a '/'-separated path: empty and "." components go, ".."
 * removes what precedes it. The result has no leading or trailing '/' ("" is
 * the root). A ".." that would climb above the root is dropped when clamp is
 * 1 (chroot semantics) and makes the result NULL when clamp is 0. */
char *ib_fs_path_clean(const char *path, int clamp);
/* Joins a and b with exactly one '/'. Caller frees. */
char *ib_fs_join(const char *a, const char *b);
/* Absolute, symlink-resolved path of an existing file. Caller frees. */
int ib_fs_realpath(char **out, const char *path);

/* Resolves path component by component as a kernel walk under chroot does,
 * for trees that are not on disk (a git commit, image layers): ".." pops the
 * components resolved so far and stops at the root, and a symlink's target
 * (absolute ones from the root) is put in front of what remains. link(ctx,
 * resolved, &target) says what a resolved prefix is: 1 = a symlink (*target
 * malloc'd), 0 = anything else, <0 = stop with that error. The last component
 * is followed only with follow_last. *out (no leading '/') is the resolved
 * path; after an error from link, the prefix so far plus the rest as written.
 * More than max_links links: IB_EINVALID "PATH: too many levels of symbolic links". */
typedef int (*ib_fs_link_fn)(void *ctx, const char *resolved, char **target);
int ib_fs_resolve_links(char **out, const char *path, int follow_last, int max_links, ib_fs_link_fn link, void *ctx);
/* ib_fs_resolve_links over a tree unpacked on disk at root (an image's
 * rootfs): its symlinks are followed inside it, never into the host. */
int ib_fs_resolve_in_root(char **out, const char *root, const char *path, int follow_last);
/* Reads root/path as a process chrooted to root would (/etc/passwd that
 * links to /usr/share/base-passwd/passwd stays in the image). Only regular
 * files: anything else is IB_ENOTFOUND, like a missing one. */
int ib_fs_read_in_root(char **out, size_t *out_len, const char *root, const char *path, size_t max);

/* Temp files registered here are unlinked if the process is interrupted
 * (SIGINT/SIGTERM/SIGHUP), so a cancelled build leaves no partial output.
 * ib_fs_tmpfile_near registers automatically; call forget after the rename. */
void ib_fs_cleanup_on_signal(void);
void ib_fs_tmp_register(const char *path);
void ib_fs_tmp_forget(const char *path);

#endif
