#include "oci/store.h"
#include "common/error.h"
#include "common/fs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct ib_store {
    char *dir;
    char *blobs;
    char *refs;
    char *tmp;
};

struct ib_blob_writer {
    ib_store *s;
    int fd;
    char *tmp_path;
    ib_digester *d;
};

char *ib_store_default_dir(void)
{
    const char *e = getenv("IMGBUILD_CACHE");
    if (e && *e) return ib_xstrdup(e);
    e = getenv("XDG_CACHE_HOME");
    if (e && *e) return ib_xasprintf("%s/imgbuild", e);
    const char *home = getenv("HOME");
    if (!home || !*home) home = "/root";
    return ib_xasprintf("%s/.cache/imgbuild", home);
}

/* The lock file inside a scratch dir (ib_store_scratch_dir). */
#define SCRATCH_LOCK ".lock"

/* A killed build leaves its temp files in tmp/ (never under a blob name).
 * A scratch dir with a lock file is removed exactly when its lock can be
 * taken: its build (or the background removal of a finished one, which
 * inherits the lock) is gone, whatever the dir's age; a RUN that takes days
 * keeps its dir. Anything else (temp blob files, dirs of older imgbuild
 * versions, a dir whose lock file is being created) is swept when a day
 * old, as before. */
static void sweep_tmp(const char *tmp)
{
    DIR *d = opendir(tmp);
    if (!d) return;
    time_t now = time(NULL);
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        char *p = ib_xasprintf("%s/%s", tmp, de->d_name);
        struct stat st;
        if (lstat(p, &st) < 0) {
            free(p);
            continue;
        }
        if (S_ISDIR(st.st_mode)) {
            char *lp = ib_xasprintf("%s/" SCRATCH_LOCK, p);
            int fd = open(lp, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
            free(lp);
            if (fd >= 0) {
                /* held while removing, so a creator racing us sees its dir go (see below) */
                if (flock(fd, LOCK_EX | LOCK_NB) == 0) ib_fs_rm_rf(p);
                close(fd);
                free(p);
                continue;
            }
        }
        /* trash-*: a finished build's scratch whose background removal was cut short */
        if (now - st.st_mtime > 24 * 3600 || (!strncmp(de->d_name, "trash", 5) && now - st.st_mtime > 600))
            ib_fs_rm_rf(p);
        free(p);
    }
    closedir(d);
}

int ib_store_scratch_dir(char **out, int *lockfd, ib_store *s, const char *prefix)
{
    *out = NULL;
    *lockfd = -1;
    for (int tries = 0; tries < 16; tries++) {
        char *p = ib_xasprintf("%s/%sXXXXXX", s->tmp, prefix);
        if (!mkdtemp(p)) {
            int r = ib_error_errno(IB_ERR, "mkdtemp %s", p);
            free(p);
            return r;
        }
        char *lp = ib_xasprintf("%s/" SCRATCH_LOCK, p);
        int fd = open(lp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        int r = fd < 0 ? ib_error_errno(IB_ERR, "%s", lp) : 0;
        while (r == 0 && flock(fd, LOCK_EX) < 0)
            if (errno != EINTR) r = ib_error_errno(IB_ERR, "lock %s", lp);
        /* Between open and flock, a sweep in another process can take the
         * lock of this brand-new dir and remove it: then the file we locked
         * is no longer the one at lp, and we start over. */
        struct stat a, b;
        int ours = r == 0 && fstat(fd, &a) == 0 && stat(lp, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
        free(lp);
        if (ours) {
            *out = p;
            *lockfd = fd;
            return 0;
        }
        if (fd >= 0) close(fd);
        if (r < 0) {
            ib_fs_rm_rf(p);
            free(p);
            return r;
        }
        free(p);
    }
    return ib_error_set(IB_ERR, "%s: cannot create a scratch dir (removed again as it was made)", s->tmp);
}

int ib_store_open(ib_store **out, const char *dir)
{
    ib_store *s = ib_xcalloc(1, sizeof *s);
    s->dir = ib_xstrdup(dir);
    s->blobs = ib_xasprintf("%s/blobs/sha256", dir);
    s->refs = ib_xasprintf("%s/refs", dir);
    s->tmp = ib_xasprintf("%s/tmp", dir);
    int r;
    if ((r = ib_fs_mkdir_p(s->blobs, 0755)) < 0 || (r = ib_fs_mkdir_p(s->refs, 0755)) < 0 ||
        (r = ib_fs_mkdir_p(s->tmp, 0755)) < 0) {
        ib_error_wrap(r, "cache dir %s", dir);
        ib_store_free(s);
        return r;
    }
    sweep_tmp(s->tmp);
    *out = s;
    return 0;
}

void ib_store_free(ib_store *s)
{
    if (!s) return;
    free(s->dir);
    free(s->blobs);
    free(s->refs);
    free(s->tmp);
    free(s);
}

const char *ib_store_dir(const ib_store *s) { return s->dir; }

char *ib_store_blob_path(const ib_store *s, const char *digest)
{
    return ib_xasprintf("%s/%s", s->blobs, ib_digest_hex(digest));
}

int ib_store_has_blob(const ib_store *s, const char *digest, uint64_t *size)
{
    if (!ib_digest_valid(digest)) return 0;
    char *p = ib_store_blob_path(s, digest);
    struct stat st;
    int ok = stat(p, &st) == 0 && S_ISREG(st.st_mode);
    free(p);
    if (ok && size) *size = (uint64_t)st.st_size;
    return ok;
}

int ib_store_blob_begin(ib_blob_writer **out, ib_store *s)
{
    ib_blob_writer *w = ib_xcalloc(1, sizeof *w);
    w->s = s;
    w->tmp_path = ib_xasprintf("%s/blob-XXXXXX", s->tmp);
    w->fd = mkstemp(w->tmp_path);
    if (w->fd < 0) {
        int r = ib_error_errno(IB_ERR, "cannot create a temp file in %s", s->tmp);
        free(w->tmp_path);
        free(w);
        return r;
    }
    int r = ib_digest_new(&w->d);
    if (r < 0) {
        close(w->fd);
        unlink(w->tmp_path);
        free(w->tmp_path);
        free(w);
        return r;
    }
    *out = w;
    return 0;
}

static int write_full(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int ib_blob_write(ib_blob_writer *w, const void *buf, size_t len)
{
    ib_digest_update(w->d, buf, len);
    if (write_full(w->fd, buf, len) < 0) return ib_error_errno(IB_ERR, "write %s", w->tmp_path);
    return 0;
}

int ib_blob_sink(void *ctx, const void *buf, size_t len) { return ib_blob_write(ctx, buf, len); }

void ib_store_blob_abort(ib_blob_writer *w)
{
    if (!w) return;
    close(w->fd);
    unlink(w->tmp_path);
    free(w->tmp_path);
    ib_digest_free(w->d);
    free(w);
}

int ib_store_blob_commit(char *digest_out, uint64_t *size_out, ib_blob_writer *w, const char *expected)
{
    char dg[IB_DIGEST_STRLEN + 1];
    ib_digest_final(dg, w->d);
    uint64_t size = ib_digest_bytes(w->d);
    int r = 0;
    if (expected && strcmp(expected, dg) != 0) {
        r = ib_error_set(IB_ECORRUPT, "digest mismatch: expected %s, got %s", expected, dg);
        ib_store_blob_abort(w);
        return r;
    }
    /* fsync before rename: after a crash the name must never point at a
     * partially written file. */
    if (fsync(w->fd) < 0 || fchmod(w->fd, 0644) < 0) {
        r = ib_error_errno(IB_ERR, "fsync %s", w->tmp_path);
        ib_store_blob_abort(w);
        return r;
    }
    char *final = ib_store_blob_path(w->s, dg);
    if (rename(w->tmp_path, final) < 0) r = ib_error_errno(IB_ERR, "rename to %s", final);
    free(final);
    close(w->fd);
    if (r < 0) unlink(w->tmp_path);
    free(w->tmp_path);
    ib_digest_free(w->d);
    free(w);
    if (r == 0) {
        if (digest_out) memcpy(digest_out, dg, sizeof dg);
        if (size_out) *size_out = size;
    }
    return r;
}

int ib_store_put_blob(char *digest_out, ib_store *s, const void *buf, size_t len)
{
    char dg[IB_DIGEST_STRLEN + 1];
    ib_digest_buf(dg, buf, len);
    uint64_t have;
    if (ib_store_has_blob(s, dg, &have) && have == len) {
        if (digest_out) memcpy(digest_out, dg, sizeof dg);
        return 0;
    }
    ib_blob_writer *w;
    int r = ib_store_blob_begin(&w, s);
    if (r < 0) return r;
    if ((r = ib_blob_write(w, buf, len)) < 0) {
        ib_store_blob_abort(w);
        return r;
    }
    return ib_store_blob_commit(digest_out, NULL, w, dg);
}

int ib_store_stream_blob(ib_store *s, const char *digest, ib_store_sink_fn sink, void *ctx)
{
    if (!ib_digest_valid(digest)) return ib_error_set(IB_EINVALID, "invalid digest '%s'", digest);
    char *p = ib_store_blob_path(s, digest);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int r = ib_error_errno(errno == ENOENT ? IB_ENOTFOUND : IB_ERR, "blob %s", digest);
        free(p);
        return r;
    }
    ib_digester *d = NULL;
    int r = ib_digest_new(&d);
    if (r < 0) {
        close(fd);
        free(p);
        return r;
    }
    size_t cap = 1 << 20;
    char *buf = ib_xmalloc(cap);
    for (;;) {
        ssize_t n = read(fd, buf, cap);
        if (n < 0) {
            if (errno == EINTR) continue;
            r = ib_error_errno(IB_ERR, "read %s", p);
            break;
        }
        if (n == 0) break;
        ib_digest_update(d, buf, (size_t)n);
        if ((r = sink(ctx, buf, (size_t)n)) < 0) break;
    }
    free(buf);
    close(fd);
    if (r == 0) {
        char got[IB_DIGEST_STRLEN + 1];
        ib_digest_final(got, d);
        if (strcmp(got, digest) != 0)
            r = ib_error_set(IB_ECORRUPT, "store blob %s is corrupt (content hashes to %s); remove it and rebuild",
                             p, got);
    }
    ib_digest_free(d);
    free(p);
    return r;
}

struct membuf {
    char *buf;
    size_t len, max;
};

static int mem_sink(void *ctx, const void *buf, size_t len)
{
    struct membuf *m = ctx;
    if (m->len + len > m->max) return ib_error_set(IB_ERR, "blob larger than %zu bytes", m->max);
    m->buf = ib_xrealloc(m->buf, m->len + len + 1);
    memcpy(m->buf + m->len, buf, len);
    m->len += len;
    return 0;
}

int ib_store_read_blob(char **out, size_t *len, ib_store *s, const char *digest, size_t max)
{
    struct membuf m = {ib_xmalloc(1), 0, max};
    int r = ib_store_stream_blob(s, digest, mem_sink, &m);
    if (r < 0) {
        free(m.buf);
        return r;
    }
    m.buf[m.len] = 0;
    *out = m.buf;
    if (len) *len = m.len;
    return 0;
}

/* Ref names contain '/', ':' and '@': percent-encode everything outside a safe
 * set so each name is one flat file and distinct names never collide. */
static char *escaped_path(const char *dir, const char *name)
{
    size_t n = strlen(name);
    char *enc = ib_xmalloc(n * 3 + 1), *o = enc;
    for (const char *p = name; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '-' ||
            c == '_')
            *o++ = (char)c;
        else
            o += sprintf(o, "%%%02X", c);
    }
    *o = 0;
    char *p = ib_xasprintf("%s/%s", dir, enc);
    free(enc);
    return p;
}

static char *ref_path(const ib_store *s, const char *name) { return escaped_path(s->refs, name); }

int ib_store_set_note(ib_store *s, const char *ns, const char *key, const char *value)
{
    char *dir = ib_xasprintf("%s/notes/%s", s->dir, ns);
    int r = ib_fs_mkdir_p(dir, 0755);
    if (r == 0) {
        char *p = escaped_path(dir, key);
        r = ib_fs_write_atomic_if_changed(p, value, strlen(value), 0644);
        free(p);
    }
    free(dir);
    return r;
}

int ib_store_get_note(char **value, ib_store *s, const char *ns, const char *key)
{
    char *dir = ib_xasprintf("%s/notes/%s", s->dir, ns);
    char *p = escaped_path(dir, key);
    int r = ib_fs_read_all(value, NULL, p, 1 << 16);
    free(p);
    free(dir);
    return r;
}

int ib_store_set_ref(ib_store *s, const char *name, const char *manifest_digest)
{
    char *p = ref_path(s, name);
    char line[IB_DIGEST_STRLEN + 2];
    int n = snprintf(line, sizeof line, "%s\n", manifest_digest);
    int r = ib_fs_write_atomic_if_changed(p, line, (size_t)n, 0644);
    free(p);
    return r;
}

int ib_store_get_ref(char *digest_out, ib_store *s, const char *name)
{
    char *p = ref_path(s, name), *buf;
    int r = ib_fs_read_all(&buf, NULL, p, 4096);
    free(p);
    if (r < 0) {
        if (r == IB_ENOTFOUND) return ib_error_set(IB_ENOTFOUND, "image '%s' not found in the local store", name);
        return r;
    }
    buf[strcspn(buf, "\r\n")] = 0;
    if (!ib_digest_valid(buf)) {
        r = ib_error_set(IB_ECORRUPT, "store ref for '%s' is corrupt", name);
    } else {
        memcpy(digest_out, buf, IB_DIGEST_STRLEN + 1);
    }
    free(buf);
    return r;
}
