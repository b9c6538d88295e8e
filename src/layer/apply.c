/* Secure layer unpacking.
 *
 * The threat model is a hostile layer blob: every name, symlink and hardlink in
 * it is attacker-controlled, and earlier layers (or earlier entries of the same
 * layer) may have planted symlinks that point anywhere on the host. The rules:
 *
 *  - Names are relative to root. A leading '/' is stripped (Docker and
 *    containerd do the same, and tar writers commonly emit "/usr/..."), "."
 *    components and repeated slashes are dropped, and any ".." component is
 *    rejected outright: a well-formed layer never needs one, and refusing is
 *    simpler to reason about than clamping.
 *  - Every parent directory is resolved with openat2(RESOLVE_IN_ROOT), so a
 *    symlink (absolute or full of "..") is followed as if root were "/" — the
 *    kernel guarantees the walk never leaves root, also against concurrent
 *    renames (it fails with EAGAIN, which we retry). Magic links (/proc/self/
 *    fd/N style) are refused with RESOLVE_NO_MAGICLINKS because they jump
 *    anywhere regardless of root.
 *  - The final component is never followed: entries are created with *at()
 *    calls on the resolved parent fd after removing whatever was there, files
 *    are opened O_CREAT|O_EXCL|O_NOFOLLOW, metadata calls use
 *    AT_SYMLINK_NOFOLLOW or an fd of the object itself.
 *  - Hardlink targets are resolved the same way (parent IN_ROOT, last
 *    component not followed), so "/etc/passwd" means root/etc/passwd.
 *
 * There is deliberately no fallback for kernels without openat2 (< 5.6): a
 * userspace path walk is exactly the code that has produced the container
 * ecosystem's tar-breakout CVEs, so we refuse instead. */
#include "layer/apply.h"

#include "common/error.h"
#include "common/userns.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#define WH_PREFIX ".wh."
#define WH_META_PREFIX ".wh..wh."
#define WH_OPAQUE ".wh..wh..opq"

/* ---- set of paths written by this layer (for opaque whiteouts) ---------- */

/* OCI image-spec layer.md: an opaque whiteout hides the lower layers' children
 * of a directory, but it may appear anywhere in the tar, also after siblings
 * this layer added. Recording every path (and its ancestors) this layer
 * touched lets the opaque pass remove exactly the lower-layer leftovers. */
typedef struct {
    char **slots;
    size_t cap, len;
} path_set;

static uint64_t hash_str(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h;
}

static bool set_has_n(const path_set *s, const char *p, size_t n)
{
    if (!s->cap) return false;
    for (size_t i = hash_str(p, n) & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
        const char *e = s->slots[i];
        if (!e) return false;
        if (strlen(e) == n && memcmp(e, p, n) == 0) return true;
    }
}

static void set_put_n(path_set *s, const char *p, size_t n)
{
    if (set_has_n(s, p, n)) return;
    if ((s->len + 1) * 2 > s->cap) { /* keep load <= 1/2 so probes stay short */
        size_t ncap = s->cap ? s->cap * 2 : 64;
        char **ns = ib_xcalloc(ncap, sizeof *ns);
        for (size_t i = 0; i < s->cap; i++) {
            char *e = s->slots[i];
            if (!e) continue;
            size_t j = hash_str(e, strlen(e)) & (ncap - 1);
            while (ns[j]) j = (j + 1) & (ncap - 1);
            ns[j] = e;
        }
        free(s->slots);
        s->slots = ns;
        s->cap = ncap;
    }
    size_t j = hash_str(p, n) & (s->cap - 1);
    while (s->slots[j]) j = (j + 1) & (s->cap - 1);
    s->slots[j] = ib_xstrndup(p, n);
    s->len++;
}

/* Adds path and all its ancestors: an implicitly created parent must survive
 * an opaque marker on its own parent, or it would take this layer's files. */
static void set_put_with_ancestors(path_set *s, const char *p)
{
    for (const char *q = p; (q = strchr(q, '/')); q++) set_put_n(s, p, (size_t)(q - p));
    if (*p) set_put_n(s, p, strlen(p));
}

static void set_free(path_set *s)
{
    for (size_t i = 0; i < s->cap; i++) free(s->slots[i]);
    free(s->slots);
}

/* ---- apply context ------------------------------------------------------- */

/* Directory metadata applied after all entries: creating children changes a
 * directory's mtime, and a read-only mode would stop us creating them. */
typedef struct {
    char *path; /* normalized, "" = root */
    mode_t mode;
    struct timespec ts[2];
    size_t order, depth;
} dir_fix;

typedef struct {
    const char *blob;
    const char *name; /* raw entry name, for messages */
    int rootfd;
    bool priv; /* euid 0: restore owners, devices, setuid bits */
    bool userns; /* root of a user namespace: no devices, ids only as mapped */
    path_set layer_paths;
    dir_fix *dirs;
    size_t ndirs, capdirs;
    ib_apply_stats st;
} apply_ctx;

/* "<blob>: entry '<name>': <why>" for hostile or malformed entries. */
__attribute__((format(printf, 2, 3))) static int bad(apply_ctx *c, const char *fmt, ...)
{
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    return ib_error_set(IB_EINVALID, "%s: entry '%s': %s", c->blob, c->name, why);
}

/* Same shape for system-call failures, with strerror(errno) appended. */
__attribute__((format(printf, 2, 3))) static int ioerr(apply_ctx *c, const char *fmt, ...)
{
    int e = errno;
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    errno = e;
    return ib_error_errno(IB_ERR, "%s: entry '%s': %s", c->blob, c->name, what);
}

/* ---- path handling ------------------------------------------------------- */

/* Normalizes a tar name into "a/b/c" (no leading, trailing or doubled
 * slashes, no "." components). Returns 0, or -1 for an empty name, -2 for a
 * ".." component. The result may be "" for the root itself ("./", "/"). */
static int normalize(char **out, const char *in)
{
    if (!in || !*in) return -1;
    size_t n = strlen(in);
    char *o = ib_xmalloc(n + 1), *w = o;
    for (const char *p = in; *p;) {
        while (*p == '/') p++;
        const char *s = p;
        while (*p && *p != '/') p++;
        size_t len = (size_t)(p - s);
        if (len == 0 || (len == 1 && s[0] == '.')) continue;
        if (len == 2 && s[0] == '.' && s[1] == '.') {
            free(o);
            return -2;
        }
        if (w != o) *w++ = '/';
        memcpy(w, s, len);
        w += len;
    }
    *w = 0;
    *out = o;
    return 0;
}

/* openat2 relative to root with chroot semantics. glibc 2.36 (Debian 12) has
 * no wrapper, hence syscall(). EAGAIN means a rename raced the walk and the
 * kernel could not prove containment: retrying is the documented answer. */
static int open_in_root(int rootfd, const char *path, uint64_t flags)
{
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = flags | O_CLOEXEC;
    how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
    for (int i = 0; i < 64; i++) {
        long fd = syscall(SYS_openat2, rootfd, *path ? path : ".", &how, sizeof how);
        if (fd >= 0) return (int)fd;
        if (errno != EAGAIN) return -1;
    }
    return -1;
}

/* Maps a failed parent resolution to an error. */
static int parent_err(apply_ctx *c, const char *what, const char *path)
{
    if (errno == ENOSYS)
        return ib_error_set(IB_ERR, "%s: openat2(2) is not available (Linux >= 5.6 needed); refusing to "
                                    "unpack without in-root path resolution", c->blob);
    if (errno == ENOTDIR) return bad(c, "%s '%s' is not a directory", what, path);
    if (errno == ELOOP) return bad(c, "%s '%s': too many levels of symbolic links", what, path);
    if (errno == EXDEV) return bad(c, "%s '%s' goes through a magic link", what, path);
    return ioerr(c, "resolve %s '%s'", what, path);
}

/* Opens (as O_PATH) the directory `dir` (normalized, "" = root) resolved
 * inside root. With `create`, missing components are made (0755, as Docker
 * does for parents absent from the tar). Returns the fd, or <0 with the
 * error set; with !create a missing dir returns IB_ENOTFOUND unset. */
static int open_dir(apply_ctx *c, const char *dir, bool create)
{
    int fd = open_in_root(c->rootfd, dir, O_PATH | O_DIRECTORY);
    if (fd >= 0) return fd;
    if (errno != ENOENT) return parent_err(c, "parent", dir);
    if (!create) return IB_ENOTFOUND;

    /* Walk component by component; each prefix is again resolved from root so
     * that a symlink in the middle is followed with chroot semantics. */
    char *p = ib_xstrdup(dir);
    int cur = fcntl(c->rootfd, F_DUPFD_CLOEXEC, 0);
    if (cur < 0) {
        free(p);
        return ioerr(c, "dup");
    }
    char *comp = p;
    for (;;) {
        char *slash = strchr(comp, '/');
        if (slash) *slash = 0;
        int next = open_in_root(c->rootfd, p, O_PATH | O_DIRECTORY);
        if (next < 0 && errno == ENOENT) {
            /* cur is the in-root resolution of the previous prefix, so this
             * mkdirat cannot land outside root. */
            if (mkdirat(cur, comp, 0755) < 0) {
                int r = errno == EEXIST
                            ? bad(c, "parent '%s' is a symlink that does not resolve to a directory inside root",
                                  p)
                            : ioerr(c, "mkdir '%s'", p);
                close(cur);
                free(p);
                return r;
            }
            /* mkdirat honours the umask; the tree must not depend on the
             * caller's, so fix the mode explicitly. */
            next = openat(cur, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (next >= 0 && fchmod(next, 0755) < 0) {
                int r = ioerr(c, "chmod '%s'", p);
                close(next);
                close(cur);
                free(p);
                return r;
            }
        }
        if (next < 0) {
            int r = parent_err(c, "parent", p);
            close(cur);
            free(p);
            return r;
        }
        close(cur);
        cur = next;
        if (!slash) break;
        *slash = '/';
        comp = slash + 1;
    }
    free(p);
    return cur;
}

/* Splits "a/b/c" into dir "a/b" (in place) and base "c"; dir is "" at top. */
static const char *split_path(char *path, char **dir)
{
    char *slash = strrchr(path, '/');
    if (!slash) {
        *dir = path + strlen(path); /* "" */
        return path;
    }
    *slash = 0;
    *dir = path;
    return slash + 1;
}

/* ---- removal ------------------------------------------------------------- */

/* rm -rf of pfd/name without following any symlink: every step is an *at()
 * call on an fd opened O_NOFOLLOW, so a symlink inside is unlinked, never
 * descended into. */
static int rm_rf_at(apply_ctx *c, int pfd, const char *name)
{
    if (unlinkat(pfd, name, 0) == 0 || errno == ENOENT) return 0;
    /* Linux answers EISDIR (not POSIX's EPERM) for a directory. */
    if (errno != EISDIR) return ioerr(c, "remove '%s'", name);
    int fd = openat(pfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return ioerr(c, "open '%s' for removal", name);
    /* Unprivileged, a lower layer's read-only dir would stop us removing
     * its children; it is going away anyway. */
    if (!c->priv) fchmod(fd, 0700);
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return ioerr(c, "opendir '%s'", name);
    }
    int r = 0;
    struct dirent *de;
    /* Deleting while reading is fine on Linux: readdir after unlink neither
     * skips nor repeats the remaining entries of the same stream. */
    while (r == 0 && (errno = 0, de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        r = rm_rf_at(c, dirfd(d), de->d_name);
    }
    if (r == 0 && errno) r = ioerr(c, "readdir '%s'", name);
    closedir(d);
    if (r == 0 && unlinkat(pfd, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
        r = ioerr(c, "rmdir '%s'", name);
    return r;
}

/* Removes whatever is at pfd/name, so the new entry is created fresh and an
 * old symlink there is never written through. */
static int remove_existing(apply_ctx *c, int pfd, const char *name)
{
    return rm_rf_at(c, pfd, name);
}

/* Opaque whiteout: removes the children of pfd (tar path `rel`) that this
 * layer did not write, descending into the ones it did, since a directory
 * this layer merely adds to must also lose its lower-layer contents. */
static int opaque_clear(apply_ctx *c, int pfd, const char *rel)
{
    int fd = openat(pfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return ioerr(c, "open '%s'", *rel ? rel : ".");
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return ioerr(c, "opendir '%s'", *rel ? rel : ".");
    }
    /* Collect first: we both delete and recurse, and recursion opens more
     * streams. */
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    int r = 0;
    while ((errno = 0, de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        if (n == cap) names = ib_xrealloc(names, (cap = cap ? cap * 2 : 16) * sizeof *names);
        names[n++] = ib_xstrdup(de->d_name);
    }
    if (errno) r = ioerr(c, "readdir '%s'", *rel ? rel : ".");
    for (size_t i = 0; r == 0 && i < n; i++) {
        char *child = *rel ? ib_xasprintf("%s/%s", rel, names[i]) : ib_xstrdup(names[i]);
        if (!set_has_n(&c->layer_paths, child, strlen(child))) {
            r = rm_rf_at(c, dirfd(d), names[i]);
        } else {
            int sub = openat(dirfd(d), names[i], O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub >= 0) {
                r = opaque_clear(c, sub, child);
                close(sub);
            } /* not a directory (or a symlink): a kept leaf */
        }
        free(child);
    }
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    closedir(d);
    return r;
}

/* ---- metadata ------------------------------------------------------------ */

static void entry_times(struct archive_entry *e, struct timespec ts[2])
{
    ts[1].tv_sec = archive_entry_mtime(e);
    ts[1].tv_nsec = archive_entry_mtime_nsec(e);
    if (!archive_entry_mtime_is_set(e)) ts[1].tv_nsec = UTIME_OMIT;
    /* Without an atime in the header use the mtime, so the result does not
     * depend on when we ran. */
    if (archive_entry_atime_is_set(e)) {
        ts[0].tv_sec = archive_entry_atime(e);
        ts[0].tv_nsec = archive_entry_atime_nsec(e);
    } else {
        ts[0] = ts[1];
    }
}

/* A chown's result: in a user namespace an id outside the map (a layer
 * file of uid 200000 with 65536 subordinate ids) stays ours (EINVAL), as
 * rootless podman leaves it; anywhere else every failure is an error. */
static bool owned(const apply_ctx *c, int rc) { return rc == 0 || (c->userns && errno == EINVAL); }

/* Only security.capability (file capabilities, e.g. ping) and user.* are
 * restored. trusted.* could steer overlayfs if this rootfs is later a
 * lowerdir, and security.selinux & co are the host's policy, not the
 * image's. Unprivileged, the kernel refuses security.capability (EPERM) and
 * some filesystems lack user xattrs: those are skipped, as rootless Docker
 * does; as root every failure is an error. */
static int apply_xattrs(apply_ctx *c, int fd, struct archive_entry *e)
{
    const char *name;
    const void *val;
    size_t size;
    if (archive_entry_xattr_reset(e) == 0) return 0;
    while (archive_entry_xattr_next(e, &name, &val, &size) == ARCHIVE_OK) {
        if (!name) continue;
        if (strcmp(name, "security.capability") != 0 && strncmp(name, "user.", 5) != 0) continue;
        if (fsetxattr(fd, name, val, size, 0) == 0) continue;
        if ((!c->priv || c->userns) && (errno == EPERM || errno == EACCES || errno == ENOTSUP || errno == EOPNOTSUPP))
            continue;
        return ioerr(c, "set xattr %s", name);
    }
    return 0;
}

/* Mode bits to apply: setuid/setgid only when privileged — unprivileged they
 * would only ever mean "runs as the unpacking user", never what the image
 * intends, and are a surprise in a user's tree. */
static mode_t entry_mode(apply_ctx *c, struct archive_entry *e)
{
    mode_t m = archive_entry_perm(e) & 07777;
    if (!c->priv) m &= ~(mode_t)(S_ISUID | S_ISGID);
    return m;
}

/* ---- entry kinds --------------------------------------------------------- */

static int write_file(apply_ctx *c, struct archive *a, struct archive_entry *e, int pfd, const char *base)
{
    int r = remove_existing(c, pfd, base);
    if (r < 0) return r;
    /* O_EXCL after the unlink: if anything reappeared at the name it is an
     * error, never a symlink we write through. */
    int fd = openat(pfd, base, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) return ioerr(c, "create");
    int64_t end = 0;
    for (;;) {
        const void *buf;
        size_t len;
        la_int64_t off;
        int ar = archive_read_data_block(a, &buf, &len, &off);
        if (ar == ARCHIVE_EOF) break;
        if (ar < ARCHIVE_WARN) {
            r = ib_error_set(IB_ERR, "%s: entry '%s': %s", c->blob, c->name, archive_error_string(a));
            goto out;
        }
        /* Sparse entries come as blocks at offsets; the gaps stay holes. */
        const char *p = buf;
        while (len) {
            ssize_t w = pwrite(fd, p, len, off);
            if (w < 0) {
                if (errno == EINTR) continue;
                r = ioerr(c, "write");
                goto out;
            }
            p += w;
            off += w;
            len -= (size_t)w;
            c->st.bytes += (uint64_t)w;
        }
        if (off > end) end = off;
    }
    if (archive_entry_size_is_set(e) && archive_entry_size(e) > end &&
        ftruncate(fd, (off_t)archive_entry_size(e)) < 0) { /* trailing hole */
        r = ioerr(c, "truncate");
        goto out;
    }
    /* chown clears setuid bits and capabilities, writing clears
     * capabilities: so owner, then mode, then xattrs, then times. */
    if (c->priv && !owned(c, fchown(fd, (uid_t)archive_entry_uid(e), (gid_t)archive_entry_gid(e)))) {
        r = ioerr(c, "chown");
        goto out;
    }
    if (fchmod(fd, entry_mode(c, e)) < 0) {
        r = ioerr(c, "chmod");
        goto out;
    }
    if ((r = apply_xattrs(c, fd, e)) < 0) goto out;
    struct timespec ts[2];
    entry_times(e, ts);
    if (futimens(fd, ts) < 0) r = ioerr(c, "set times");
out:
    if (close(fd) < 0 && r == 0) r = ioerr(c, "close");
    return r;
}

static void defer_dir(apply_ctx *c, const char *path, struct archive_entry *e)
{
    if (c->ndirs == c->capdirs)
        c->dirs = ib_xrealloc(c->dirs, (c->capdirs = c->capdirs ? c->capdirs * 2 : 32) * sizeof *c->dirs);
    dir_fix *d = &c->dirs[c->ndirs];
    d->path = ib_xstrdup(path);
    d->mode = entry_mode(c, e) | (archive_entry_perm(e) & S_ISGID); /* setgid on a dir only sets inheritance */
    entry_times(e, d->ts);
    d->order = c->ndirs++;
    d->depth = *path ? 1 : 0;
    for (const char *p = path; *p; p++) d->depth += *p == '/';
}

static int make_dir(apply_ctx *c, struct archive_entry *e, int pfd, const char *base, const char *path)
{
    int fd;
    if (!*path) {
        fd = openat(c->rootfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    } else {
        struct stat st;
        /* An existing directory is kept (layers merge); anything else at the
         * name, including a symlink to a directory, is replaced. */
        if (fstatat(pfd, base, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode)) {
            int r = remove_existing(c, pfd, base);
            if (r < 0) return r;
            if (mkdirat(pfd, base, 0700) < 0) return ioerr(c, "mkdir");
        }
        fd = openat(pfd, base, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    }
    if (fd < 0) return ioerr(c, "open directory");
    int r = 0;
    if (c->priv && !owned(c, fchown(fd, (uid_t)archive_entry_uid(e), (gid_t)archive_entry_gid(e))))
        r = ioerr(c, "chown");
    /* The final mode comes at the end (defer_dir); meanwhile the owner must
     * be able to create children even if the image wants it read-only. */
    else if (fchmod(fd, (c->priv ? 0 : 0700) | entry_mode(c, e)) < 0)
        r = ioerr(c, "chmod");
    else
        r = apply_xattrs(c, fd, e);
    close(fd);
    if (r == 0) defer_dir(c, path, e);
    return r;
}

static int make_symlink(apply_ctx *c, struct archive_entry *e, int pfd, const char *base)
{
    /* The target text is stored verbatim — it is only ever followed by our
     * in-root resolution or by processes inside the container. */
    const char *target = archive_entry_symlink(e);
    if (!target) target = archive_entry_symlink_utf8(e);
    if (!target || !*target) return bad(c, "symlink without a target");
    int r = remove_existing(c, pfd, base);
    if (r < 0) return r;
    if (symlinkat(target, pfd, base) < 0) return ioerr(c, "symlink");
    if (c->priv &&
        !owned(c, fchownat(pfd, base, (uid_t)archive_entry_uid(e), (gid_t)archive_entry_gid(e), AT_SYMLINK_NOFOLLOW)))
        return ioerr(c, "chown");
    struct timespec ts[2];
    entry_times(e, ts);
    if (utimensat(pfd, base, ts, AT_SYMLINK_NOFOLLOW) < 0) return ioerr(c, "set times");
    return 0;
}

static int make_hardlink(apply_ctx *c, const char *linkname, int pfd, const char *base)
{
    char *target;
    int n = normalize(&target, linkname);
    if (n == -1) return bad(c, "hardlink with an empty target");
    if (n == -2) return bad(c, "hardlink target '%s' has a '..' component", linkname);
    if (!*target) {
        free(target);
        return bad(c, "hardlink to the root directory");
    }
    char *tdir;
    const char *tbase = split_path(target, &tdir);
    int tfd = open_dir(c, tdir, false);
    int r = 0;
    if (tfd == IB_ENOTFOUND) {
        r = bad(c, "hardlink target '%s' does not exist in root", linkname);
        goto out;
    }
    if (tfd < 0) {
        r = tfd;
        goto out;
    }
    struct stat ts, cur;
    /* Not following the target's last component: a hardlink to a symlink
     * links the symlink itself, exactly what tar recorded. */
    if (fstatat(tfd, tbase, &ts, AT_SYMLINK_NOFOLLOW) < 0) {
        r = errno == ENOENT ? bad(c, "hardlink target '%s' does not exist in root", linkname)
                            : ioerr(c, "stat hardlink target '%s'", linkname);
        goto out;
    }
    if (S_ISDIR(ts.st_mode)) {
        r = bad(c, "hardlink target '%s' is a directory", linkname);
        goto out;
    }
    /* Linking a name to itself: removing it first would lose the target. */
    if (fstatat(pfd, base, &cur, AT_SYMLINK_NOFOLLOW) == 0 && cur.st_dev == ts.st_dev && cur.st_ino == ts.st_ino)
        goto out;
    if ((r = remove_existing(c, pfd, base)) < 0) goto out;
    if (linkat(tfd, tbase, pfd, base, 0) < 0) r = ioerr(c, "link to '%s'", linkname);
out:
    if (tfd >= 0) close(tfd);
    free(target);
    return r;
}

static int make_node(apply_ctx *c, struct archive_entry *e, int pfd, const char *base, mode_t type)
{
    /* Unprivileged mknod of devices fails, and a fifo is never what a
     * rootless unpack needs; skipped (they are still counted as entries). */
    if (!c->priv || (c->userns && type != S_IFIFO)) return 0; /* a user namespace makes no devices */
    int r = remove_existing(c, pfd, base);
    if (r < 0) return r;
    dev_t dev = type == S_IFIFO ? 0 : makedev(archive_entry_rdevmajor(e), archive_entry_rdevminor(e));
    if (mknodat(pfd, base, type | 0600, dev) < 0) return ioerr(c, "mknod");
    if (!owned(c, fchownat(pfd, base, (uid_t)archive_entry_uid(e), (gid_t)archive_entry_gid(e), AT_SYMLINK_NOFOLLOW)))
        return ioerr(c, "chown");
    /* fchmodat has no working AT_SYMLINK_NOFOLLOW, but we just created this
     * name as a node and hold the only writer, so it is not a symlink. */
    if (fchmodat(pfd, base, entry_mode(c, e), 0) < 0) return ioerr(c, "chmod");
    struct timespec ts[2];
    entry_times(e, ts);
    if (utimensat(pfd, base, ts, AT_SYMLINK_NOFOLLOW) < 0) return ioerr(c, "set times");
    return 0;
}

/* ---- whiteouts ----------------------------------------------------------- */

static int whiteout(apply_ctx *c, const char *dir, const char *base)
{
    if (!strcmp(base, WH_OPAQUE)) {
        /* The opaque directory exists in the merged view even if nothing else
         * names it, so create it like any missing parent. */
        int fd = open_dir(c, dir, true);
        if (fd < 0) return fd;
        int r = opaque_clear(c, fd, dir);
        close(fd);
        if (r == 0) c->st.whiteouts++;
        return r;
    }
    /* Other ".wh..wh." names are aufs bookkeeping (e.g. .wh..wh.plnk): they
     * are neither content nor whiteouts, so Docker skips them too. */
    if (!strncmp(base, WH_META_PREFIX, strlen(WH_META_PREFIX))) return 0;
    const char *victim = base + strlen(WH_PREFIX);
    if (!*victim || !strcmp(victim, ".") || !strcmp(victim, ".."))
        return bad(c, "whiteout of an invalid name '%s'", victim);
    int fd = open_dir(c, dir, false);
    if (fd == IB_ENOTFOUND) { /* nothing below to hide */
        c->st.whiteouts++;
        return 0;
    }
    if (fd < 0) return fd;
    int r = rm_rf_at(c, fd, victim);
    close(fd);
    if (r == 0) c->st.whiteouts++;
    return r;
}

/* ---- driver -------------------------------------------------------------- */

static int apply_entry(apply_ctx *c, struct archive *a, struct archive_entry *e)
{
    char *path;
    int n = normalize(&path, c->name);
    if (n == -1) return bad(c, "empty name");
    if (n == -2) return bad(c, "name has a '..' component");

    const char *hl = archive_entry_hardlink(e);
    if (!hl) hl = archive_entry_hardlink_utf8(e);
    mode_t type = archive_entry_filetype(e);
    int r = 0;

    if (!*path) {
        /* "./" or "/": the root itself. Its mode/owner/times are the image's;
         * it cannot become anything but a directory. */
        if (hl || type != AE_IFDIR) r = bad(c, "the root can only be a directory");
        else r = make_dir(c, e, -1, "", "");
        free(path);
        return r;
    }

    char *full = ib_xstrdup(path);
    char *dir;
    const char *base = split_path(path, &dir);

    if (!strncmp(base, WH_PREFIX, strlen(WH_PREFIX))) {
        r = whiteout(c, dir, base);
        goto out;
    }

    set_put_with_ancestors(&c->layer_paths, full);
    int pfd = open_dir(c, dir, true);
    if (pfd < 0) {
        r = pfd;
        goto out;
    }
    if (hl) r = make_hardlink(c, hl, pfd, base);
    else if (type == AE_IFREG) r = write_file(c, a, e, pfd, base);
    else if (type == AE_IFDIR) r = make_dir(c, e, pfd, base, full);
    else if (type == AE_IFLNK) r = make_symlink(c, e, pfd, base);
    else if (type == AE_IFCHR || type == AE_IFBLK || type == AE_IFIFO) r = make_node(c, e, pfd, base, type);
    else if (type == AE_IFSOCK) r = 0; /* a socket is runtime state, never content */
    else r = bad(c, "unsupported entry type 0%o", (unsigned)type);
    close(pfd);
out:
    free(full);
    free(path);
    return r;
}

static int cmp_dirs(const void *x, const void *y)
{
    const dir_fix *a = x, *b = y;
    if (a->depth != b->depth) return a->depth > b->depth ? -1 : 1; /* deepest first */
    return a->order < b->order ? -1 : a->order > b->order; /* later entry wins */
}

/* Final directory modes and times. This runs after every entry because
 * creating or removing children bumps a directory's mtime; deepest first is
 * belt and braces (chmod/utimens on a child leave the parent's mtime alone)
 * and keeps a read-only parent from mattering while children are fixed. */
static int fix_dirs(apply_ctx *c)
{
    if (c->ndirs) qsort(c->dirs, c->ndirs, sizeof *c->dirs, cmp_dirs);
    for (size_t i = 0; i < c->ndirs; i++) {
        dir_fix *d = &c->dirs[i];
        c->name = d->path;
        /* O_NOFOLLOW: a later entry may have replaced the dir by a symlink;
         * then this fix no longer applies (ELOOP/ENOTDIR), nor if removed. */
        int fd = *d->path ? open_in_root(c->rootfd, d->path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
                          : openat(c->rootfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0) {
            if (errno == ENOENT || errno == ENOTDIR || errno == ELOOP) continue;
            return ioerr(c, "reopen directory");
        }
        int r = 0;
        if (fchmod(fd, d->mode) < 0) r = ioerr(c, "chmod");
        else if (futimens(fd, d->ts) < 0) r = ioerr(c, "set times");
        close(fd);
        if (r < 0) return r;
    }
    return 0;
}

int ib_layer_apply(ib_apply_stats *stats, const char *root, const char *blob_path)
{
    apply_ctx c;
    memset(&c, 0, sizeof c);
    c.blob = blob_path;
    c.priv = geteuid() == 0;
    c.userns = c.priv && !ib_userns_initial();
    c.rootfd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (c.rootfd < 0) return ib_error_errno(IB_ERR, "%s: cannot open root", root);

    struct archive *a = archive_read_new();
    if (!a) {
        close(c.rootfd);
        return ib_error_set(IB_ERR, "%s: cannot allocate a tar reader", blob_path);
    }
    /* OCI layers are tar, optionally gzip or zstd; the filter is found from
     * the magic bytes, so a mislabelled media type does not matter. */
    archive_read_support_filter_all(a);
    archive_read_support_format_tar(a);
    archive_read_support_format_gnutar(a);
    int r = 0;
    if (archive_read_open_filename(a, blob_path, 1 << 16) != ARCHIVE_OK) {
        r = ib_error_set(IB_ERR, "%s: %s", blob_path, archive_error_string(a));
        goto out;
    }
    for (;;) {
        struct archive_entry *e;
        int ar = archive_read_next_header(a, &e);
        if (ar == ARCHIVE_EOF) break;
        if (ar < ARCHIVE_WARN) {
            r = ib_error_set(IB_ERR, "%s: %s", blob_path, archive_error_string(a));
            goto out;
        }
        c.st.entries++;
        c.name = archive_entry_pathname(e);
        if (!c.name) c.name = archive_entry_pathname_utf8(e);
        if (!c.name) c.name = "";
        if ((r = apply_entry(&c, a, e)) < 0) goto out;
    }
    r = fix_dirs(&c);
out:
    archive_read_free(a);
    close(c.rootfd);
    set_free(&c.layer_paths);
    for (size_t i = 0; i < c.ndirs; i++) free(c.dirs[i].path);
    free(c.dirs);
    if (r == 0 && stats) *stats = c.st;
    return r;
}
