#include "common/fs.h"
#include "common/error.h"

#include <errno.h>
#include <stdatomic.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int ib_fs_mkdir_p(const char *path, int mode)
{
    char *p = ib_xstrdup(path);
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/') p[--n] = 0;
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, mode) < 0 && errno != EEXIST) {
            int r = ib_error_errno(IB_ERR, "mkdir %s", p);
            free(p);
            return r;
        }
        *s = '/';
    }
    if (mkdir(p, mode) < 0 && errno != EEXIST) {
        int r = ib_error_errno(IB_ERR, "mkdir %s", p);
        free(p);
        return r;
    }
    free(p);
    return 0;
}

int ib_fs_tmpfile_near(FILE **out_fp, char **out_tmp, const char *final_path)
{
    const char *slash = strrchr(final_path, '/');
    char *tmp;
    if (slash)
        tmp = ib_xasprintf("%.*s/.%s.tmp-XXXXXX", (int)(slash - final_path), final_path, slash + 1);
    else
        tmp = ib_xasprintf(".%s.tmp-XXXXXX", final_path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int r = ib_error_errno(IB_ERR, "cannot create a temp file for %s", final_path);
        free(tmp);
        return r;
    }
    FILE *fp = fdopen(fd, "w+b");
    if (!fp) {
        int r = ib_error_errno(IB_ERR, "fdopen %s", tmp);
        close(fd);
        unlink(tmp);
        free(tmp);
        return r;
    }
    *out_fp = fp;
    *out_tmp = tmp;
    ib_fs_tmp_register(tmp);
    return 0;
}

int ib_fs_write_atomic(const char *path, const void *data, size_t len, int mode)
{
    FILE *fp;
    char *tmp;
    int r = ib_fs_tmpfile_near(&fp, &tmp, path);
    if (r < 0) return r;
    if ((len && fwrite(data, 1, len, fp) != len) || fflush(fp) != 0 || fsync(fileno(fp)) != 0 ||
        fchmod(fileno(fp), mode) != 0) {
        r = ib_error_errno(IB_ERR, "write %s", path);
        fclose(fp);
        unlink(tmp);
        ib_fs_tmp_forget(tmp);
        free(tmp);
        return r;
    }
    if (fclose(fp) != 0 || rename(tmp, path) != 0) {
        r = ib_error_errno(IB_ERR, "write %s", path);
        unlink(tmp);
        ib_fs_tmp_forget(tmp);
        free(tmp);
        return r;
    }
    ib_fs_tmp_forget(tmp);
    free(tmp);
    return 0;
}

int ib_fs_write_atomic_if_changed(const char *path, const void *data, size_t len, int mode)
{
    char *old = NULL;
    size_t olen = 0;
    if (ib_fs_read_all(&old, &olen, path, len + 1) == 0 && olen == len && !memcmp(old, data, len)) {
        free(old);
        return 0;
    }
    free(old);
    ib_error_clear();
    return ib_fs_write_atomic(path, data, len, mode);
}

int ib_fs_read_all(char **out, size_t *out_len, const char *path, size_t max)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return ib_error_errno(errno == ENOENT ? IB_ENOTFOUND : IB_ERR, "%s", path);
    size_t cap = 4096, len = 0;
    char *buf = ib_xmalloc(cap + 1);
    for (;;) {
        if (len == cap) {
            if (cap >= max) {
                free(buf);
                close(fd);
                return ib_error_set(IB_ERR, "%s: larger than %zu bytes", path, max);
            }
            cap *= 2;
            buf = ib_xrealloc(buf, cap + 1);
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0) {
            if (errno == EINTR) continue;
            free(buf);
            close(fd);
            return ib_error_errno(IB_ERR, "read %s", path);
        }
        if (n == 0) break;
        len += (size_t)n;
    }
    close(fd);
    if (len > max) {
        free(buf);
        return ib_error_set(IB_ERR, "%s: larger than %zu bytes", path, max);
    }
    buf[len] = 0;
    *out = buf;
    if (out_len) *out_len = len;
    return 0;
}

int ib_fs_mkdtemp(char **out, const char *prefix)
{
    const char *t = getenv("TMPDIR");
    if (!t || !*t) t = "/tmp";
    char *p = ib_xasprintf("%s/%s-XXXXXX", t, prefix);
    if (!mkdtemp(p)) {
        int r = ib_error_errno(IB_ERR, "mkdtemp %s", p);
        free(p);
        return r;
    }
    *out = p;
    return 0;
}

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    if (remove(path) < 0 && errno != ENOENT) {
        /* A directory made read-only (e.g. by a test) must still go. */
        chmod(path, 0700);
        if (remove(path) < 0 && errno != ENOENT) return -1;
    }
    return 0;
}

static int own_dir_cb(const char *p, const struct stat *sb, int flag, struct FTW *f)
{
    (void)f;
    if (flag == FTW_D || flag == FTW_DNR) chmod(p, (sb->st_mode & 07777) | 0700);
    return 0;
}

int ib_fs_rm_rf(const char *path)
{
    struct stat st;
    if (lstat(path, &st) < 0) return errno == ENOENT ? 0 : ib_error_errno(IB_ERR, "%s", path);
    if (!S_ISDIR(st.st_mode)) {
        if (unlink(path) < 0) return ib_error_errno(IB_ERR, "rm %s", path);
        return 0;
    }
    /* Without root, a directory we own but cannot write (a RUN's 0555 dir,
     * overlayfs' 000 work dir) blocks removal: open them up first. */
    if (geteuid() != 0) nftw(path, own_dir_cb, 32, FTW_PHYS);
    if (nftw(path, rm_cb, 32, FTW_DEPTH | FTW_PHYS) < 0) return ib_error_errno(IB_ERR, "rm -rf %s", path);
    return 0;
}

int ib_fs_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

char *ib_fs_path_clean(const char *path, int clamp)
{
    size_t n = strlen(path);
    char *out = ib_xmalloc(n + 1), *o = out;
    const char *s = path;
    while (*s) {
        while (*s == '/') s++;
        if (!*s) break;
        const char *e = strchr(s, '/');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        if (len == 1 && s[0] == '.') {
        } else if (len == 2 && s[0] == '.' && s[1] == '.') {
            if (o == out && !clamp) {
                free(out);
                return NULL;
            }
            while (o > out && *--o != '/') {}
        } else {
            if (o != out) *o++ = '/';
            memcpy(o, s, len);
            o += len;
        }
        s += len;
    }
    *o = 0;
    return out;
}

char *ib_fs_join(const char *a, const char *b)
{
    size_t la = strlen(a);
    while (la > 1 && a[la - 1] == '/') la--;
    while (*b == '/') b++;
    if (!*b) return ib_xstrndup(a, la);
    if (la == 1 && a[0] == '/') return ib_xasprintf("/%s", b);
    return ib_xasprintf("%.*s/%s", (int)la, a, b);
}

int ib_fs_realpath(char **out, const char *path)
{
    char *r = realpath(path, NULL);
    if (!r) return ib_error_errno(errno == ENOENT ? IB_ENOTFOUND : IB_ERR, "%s", path);
    *out = r;
    return 0;
}

/* Fixed slots, so the signal handler touches no allocator. A slot is taken
 * with a compare-and-swap (free -> claimed -> used) because export threads
 * register temp files concurrently; lock-free atomics are async-signal-safe. */
#define TMP_SLOTS 32
static char tmp_slots[TMP_SLOTS][4096];
static atomic_int tmp_used[TMP_SLOTS]; /* 0 free, 1 used, 2 being filled */

void ib_fs_tmp_register(const char *path)
{
    for (int i = 0; i < TMP_SLOTS; i++) {
        int expect = 0;
        if (!atomic_compare_exchange_strong(&tmp_used[i], &expect, 2)) continue;
        snprintf(tmp_slots[i], sizeof tmp_slots[i], "%s", path);
        atomic_store(&tmp_used[i], 1);
        return;
    }
}

void ib_fs_tmp_forget(const char *path)
{
    for (int i = 0; i < TMP_SLOTS; i++)
        if (atomic_load(&tmp_used[i]) == 1 && !strcmp(tmp_slots[i], path)) atomic_store(&tmp_used[i], 0);
}

static void on_signal(int sig)
{
    for (int i = 0; i < TMP_SLOTS; i++)
        if (atomic_load(&tmp_used[i]) == 1) unlink(tmp_slots[i]);
    signal(sig, SIG_DFL);
    raise(sig);
}

void ib_fs_cleanup_on_signal(void)
{
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);
}

static int root_link(void *ctx, const char *resolved, char **target)
{
    char *p = ib_fs_join(ctx, resolved), buf[4096];
    struct stat sb;
    int r = 0;
    if (lstat(p, &sb) == 0 && S_ISLNK(sb.st_mode)) {
        ssize_t n = readlink(p, buf, sizeof buf - 1);
        if (n < 0) {
            r = ib_error_errno(IB_ERR, "readlink %s", p);
        } else {
            buf[n] = 0;
            *target = ib_xstrdup(buf);
            r = 1;
        }
    }
    free(p);
    return r;
}

int ib_fs_resolve_in_root(char **out, const char *root, const char *path, int follow_last)
{
    return ib_fs_resolve_links(out, path, follow_last, 40, root_link, (void *)root);
}

int ib_fs_read_in_root(char **out, size_t *out_len, const char *root, const char *path, size_t max)
{
    char *rel;
    int r = ib_fs_resolve_in_root(&rel, root, path, 1);
    if (r < 0) {
        free(rel);
        return r;
    }
    char *p = ib_fs_join(root, rel);
    free(rel);
    struct stat sb;
    /* the resolved path has no symlink left: lstat sees what open would */
    if (lstat(p, &sb) < 0 || !S_ISREG(sb.st_mode)) {
        r = ib_error_set(IB_ENOTFOUND, "%s: no such file in the image", path);
        free(p);
        return r;
    }
    r = ib_fs_read_all(out, out_len, p, max);
    free(p);
    return r;
}

int ib_fs_resolve_links(char **out, const char *path, int follow_last, int max_links, ib_fs_link_fn link, void *ctx)
{
    char *todo = ib_xstrdup(path), *res = ib_xstrdup("");
    const char *p = todo;
    int links = 0, r = 0;
    for (;;) {
        while (*p == '/') p++;
        if (!*p) break;
        size_t n = strcspn(p, "/");
        if (n == 1 && p[0] == '.') {
            p += n;
            continue;
        }
        if (n == 2 && p[0] == '.' && p[1] == '.') {
            char *sl = strrchr(res, '/');
            *(sl ? sl : res) = 0; /* ".." at the root stays at the root */
            p += n;
            continue;
        }
        char *next = *res ? ib_xasprintf("%s/%.*s", res, (int)n, p) : ib_xstrndup(p, n);
        p += n;
        const char *q = p;
        while (*q == '/') q++;
        char *target = NULL;
        r = link(ctx, next, &target);
        if (r < 0) {
            char *partial = ib_xasprintf("%s%s", next, p);
            free(next);
            free(res);
            res = partial;
            break;
        }
        if (r == 1 && (*q || follow_last)) {
            free(next);
            if (++links > max_links) {
                free(target);
                r = ib_error_set(IB_EINVALID, "%s: too many levels of symbolic links", path);
                break;
            }
            if (target[0] == '/') res[0] = 0;
            char *nt = ib_xasprintf("%s/%s", target, p);
            free(target);
            free(todo);
            todo = nt;
            p = todo;
            continue;
        }
        free(target);
        free(res);
        res = next;
    }
    free(todo);
    *out = res;
    return r < 0 ? r : 0;
}
