/* Export of the files `imgbuild slim` is about to drop from history.
 *
 * The promise is "nothing is lost": every item is written under the export
 * dir, a MANIFEST records what should be there, and then everything is read
 * back and re-hashed before the caller may touch history. Paths are walked
 * with openat(O_NOFOLLOW) from a dir fd, so a symlink planted in the export
 * tree can never redirect a write outside of it, and an existing file is
 * never overwritten (only accepted when it already holds the blob). */
#include "gitfilter/export.h"
#include "gitfilter/gitutil.h"
#include "common/error.h"
#include "common/fs.h"
#include "common/strbuf.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/evp.h>

extern char **environ;

#define BUF_SIZE ((size_t)1 << 20)
/* Above this, blobs are streamed from `git cat-file` instead of being
 * inflated whole by libgit2, so peak memory stays at one buffer. */
#define STREAM_MIN ((uint64_t)256 << 20)
/* Test hook: lets unit tests take the streaming path without 256 MiB blobs. */
#define STREAM_MIN_ENV "IB_EXPORT_STREAM_THRESHOLD"
/* Linux refuses symlink targets of PATH_MAX or more anyway; this only bounds
 * what we load and compare. */
#define LINK_MAX_TARGET 65536
#define MANIFEST_NAME IB_GF_EXPORT_MANIFEST
#define MANIFEST_HEADER "# imgbuild slim export: path\tblob\tsize\tsha256\n"
#define TMP_TAG ".imgbuild-tmp."
/* Keeps ".<base>.imgbuild-tmp.<pid>" under NAME_MAX for long base names. */
#define TMP_BASE_MAX 200
#define SHA1_LEN 20
#define SHA256_LEN 32

typedef struct {
    const ib_gf_export_item *it;
    uint64_t size;
    unsigned char sha256[SHA256_LEN]; /* as written (or as found), checked again on read-back */
    int wrote;                        /* put in place by this run (removed again if the export fails) */
} entry;

typedef struct {
    git_repository *repo;
    git_odb *odb;
    const char *dir; /* as given, for messages */
    int root;        /* fd on dir */
    int pfd;         /* cached parent dir fd: root or owned */
    char *prel;      /* dest-relative path of pfd, NULL when nothing cached */
    unsigned char *buf;
    uint64_t stream_min;
} ctx;

typedef struct {
    EVP_MD_CTX *sha1, *sha256;
} hasher;


static void hex_encode(char *out, const unsigned char *in, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = 0;
}

static char *full_path(const ctx *c, const char *dest) { return ib_fs_join(c->dir, dest); }

/* ---- hashing: git blob id (SHA-1 over "blob <size>\0" + content) and SHA-256 of the content ---- */

static void hasher_free(hasher *h)
{
    EVP_MD_CTX_free(h->sha1);
    EVP_MD_CTX_free(h->sha256);
    h->sha1 = h->sha256 = NULL;
}

static int hasher_init(hasher *h, uint64_t size)
{
    char hdr[32];
    int len = snprintf(hdr, sizeof hdr, "blob %" PRIu64, size);
    h->sha1 = EVP_MD_CTX_new();
    h->sha256 = EVP_MD_CTX_new();
    /* The git object header includes its terminating NUL. */
    if (!h->sha1 || !h->sha256 || EVP_DigestInit_ex(h->sha1, EVP_sha1(), NULL) != 1 ||
        EVP_DigestInit_ex(h->sha256, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(h->sha1, hdr, (size_t)len + 1) != 1) {
        hasher_free(h);
        return ib_error_set(IB_ERR, "OpenSSL: cannot set up SHA-1/SHA-256");
    }
    return 0;
}

static int hasher_update(hasher *h, const void *p, size_t n)
{
    if (EVP_DigestUpdate(h->sha1, p, n) != 1 || EVP_DigestUpdate(h->sha256, p, n) != 1)
        return ib_error_set(IB_ERR, "OpenSSL: hashing failed");
    return 0;
}

/* Frees the hasher in any case. */
static int hasher_final(hasher *h, unsigned char sha1[SHA1_LEN], unsigned char sha256[SHA256_LEN])
{
    unsigned int l1 = 0, l2 = 0;
    int ok = EVP_DigestFinal_ex(h->sha1, sha1, &l1) == 1 && EVP_DigestFinal_ex(h->sha256, sha256, &l2) == 1 &&
             l1 == SHA1_LEN && l2 == SHA256_LEN;
    hasher_free(h);
    return ok ? 0 : ib_error_set(IB_ERR, "OpenSSL: hashing failed");
}

static int hash_buf(const void *p, size_t n, unsigned char sha1[SHA1_LEN], unsigned char sha256[SHA256_LEN])
{
    hasher h;
    int r = hasher_init(&h, n);
    if (r < 0) return r;
    if ((r = hasher_update(&h, p, n)) < 0) {
        hasher_free(&h);
        return r;
    }
    return hasher_final(&h, sha1, sha256);
}

/* Hashes fd to EOF; `size` is what the git header claims, *got what was read. */
static int hash_fd(ctx *c, int fd, const char *path, uint64_t size, uint64_t *got, unsigned char sha1[SHA1_LEN],
                   unsigned char sha256[SHA256_LEN])
{
    hasher h;
    int r = hasher_init(&h, size);
    if (r < 0) return r;
    *got = 0;
    for (;;) {
        ssize_t k = read(fd, c->buf, BUF_SIZE);
        if (k < 0) {
            if (errno == EINTR) continue;
            r = ib_error_errno(IB_ERR, "read %s", path);
            break;
        }
        if (k == 0) break;
        *got += (uint64_t)k;
        if ((r = hasher_update(&h, c->buf, (size_t)k)) < 0) break;
    }
    if (r < 0) {
        hasher_free(&h);
        return r;
    }
    return hasher_final(&h, sha1, sha256);
}

static int write_all(int fd, const void *p, size_t n)
{
    const char *s = p;
    while (n) {
        ssize_t k = write(fd, s, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        s += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Directories report EINVAL on some filesystems: nothing to flush there. */
static int fsync_dir(int fd) { return fsync(fd) < 0 && errno != EINVAL ? -1 : 0; }

/* ---- validation ---- */

static int check_dest(const char *dest)
{
    /* A C string cannot carry a NUL, so that rule holds by construction. */
    if (!dest || !*dest) return ib_error_set(IB_EINVALID, "export: empty destination path");
    if (dest[0] == '/') return ib_error_set(IB_EINVALID, "%s: destination must be relative to the export dir", dest);
    for (const char *s = dest;;) {
        const char *e = strchr(s, '/');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        if (len == 0) return ib_error_set(IB_EINVALID, "%s: empty path component", dest);
        if ((len == 1 && s[0] == '.') || (len == 2 && s[0] == '.' && s[1] == '.'))
            return ib_error_set(IB_EINVALID, "%s: \".\" and \"..\" are not allowed in a destination", dest);
        if (!e) break;
        s = e + 1;
    }
    if (!strcmp(dest, MANIFEST_NAME))
        return ib_error_set(IB_EINVALID, "%s: name reserved for the export manifest", dest);
    return 0;
}

static int cmp_entry(const void *a, const void *b)
{
    /* strcmp compares as unsigned char: the bytewise order MANIFEST promises. */
    return strcmp(((const entry *)a)->it->dest, ((const entry *)b)->it->dest);
}

/* ---- directory walking ---- */

static void drop_parent(ctx *c)
{
    if (c->pfd >= 0 && c->pfd != c->root) close(c->pfd);
    c->pfd = -1;
    free(c->prel);
    c->prel = NULL;
}

/* Opens (and with `create`, makes) the parent dir of dest one component at a
 * time, never following a symlink. Items are processed in sorted order, so
 * the last parent is cached. *base points into dest. */
static int open_parent(ctx *c, const char *dest, const char *path, int create, int *pfd, const char **base)
{
    const char *slash = strrchr(dest, '/');
    size_t plen = slash ? (size_t)(slash - dest) : 0;
    *base = slash ? slash + 1 : dest;
    if (c->prel && strlen(c->prel) == plen && !memcmp(c->prel, dest, plen)) {
        *pfd = c->pfd;
        return 0;
    }
    drop_parent(c);
    int cur = c->root;
    char *rel = ib_xstrndup(dest, plen);
    int r = 0;
    for (char *s = rel; plen && *s;) {
        char *e = strchr(s, '/');
        if (e) *e = 0;
        int fd = openat(cur, s, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 && errno == ENOENT && create) {
            if (mkdirat(cur, s, 0755) < 0 && errno != EEXIST) {
                char *p = full_path(c, rel);
                r = ib_error_errno(IB_ERR, "%s: mkdir %s", path, p);
                free(p);
                break;
            }
            fd = openat(cur, s, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            /* mkdirat honours the umask; the export is meant to be readable by
             * everyone who can read the data dir. (Durability comes from the
             * syncfs passes in ib_gf_export.) */
            if (fd >= 0 && fchmod(fd, 0755) < 0) {
                char *p = full_path(c, rel);
                r = ib_error_errno(IB_ERR, "%s: mkdir %s", path, p);
                free(p);
                close(fd);
                break;
            }
        }
        if (fd < 0) {
            int err = errno;
            struct stat st;
            char *p = full_path(c, rel);
            if (fstatat(cur, s, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode))
                r = ib_error_set(IB_ERR, "%s: path crosses a symlink at %s; not followed", path, p);
            else if (fstatat(cur, s, &st, AT_SYMLINK_NOFOLLOW) == 0 && !S_ISDIR(st.st_mode))
                r = ib_error_set(IB_EINVALID, "%s: %s exists and is not a directory", path, p);
            else {
                errno = err;
                r = ib_error_errno(IB_ERR, "%s: open %s", path, p);
            }
            free(p);
            break;
        }
        if (cur != c->root) close(cur);
        cur = fd;
        if (!e) break;
        *e = '/';
        s = e + 1;
    }
    if (r < 0) {
        if (cur != c->root) close(cur);
        free(rel);
        return r;
    }
    c->pfd = cur;
    c->prel = rel;
    *pfd = cur;
    return 0;
}

/* ---- reading blobs ---- */

static int lookup_blob(ctx *c, const entry *e, const char *path, git_blob **out)
{
    if (git_blob_lookup(out, c->repo, &e->it->blob) < 0) {
        char hex[GIT_OID_HEXSZ + 1];
        git_oid_tostr(hex, sizeof hex, &e->it->blob);
        return ib_error_set(IB_ECORRUPT, "%s: cannot read blob %s: %s", path, hex, ib_gf_git_msg());
    }
    if ((uint64_t)git_blob_rawsize(*out) != e->size) {
        git_blob_free(*out);
        *out = NULL;
        return ib_error_set(IB_ECORRUPT, "%s: blob size differs from its object header", path);
    }
    return 0;
}

/* Streams the blob from `git cat-file` into outfd. A pipe read is bounded by
 * the pipe size, so reads are gathered into the 1 MiB buffer before hashing
 * and writing. git's stderr is collected (not passed through: this layer
 * never prints) for the error message. */
static int stream_blob(ctx *c, const entry *e, const char *path, int outfd, hasher *h)
{
    char hex[GIT_OID_HEXSZ + 1];
    git_oid_tostr(hex, sizeof hex, &e->it->blob);
    char *gitdir = ib_xasprintf("--git-dir=%s", git_repository_path(c->repo));
    char *argv[] = {"git", gitdir, "cat-file", "blob", hex, NULL};
    int out[2] = {-1, -1}, err[2] = {-1, -1};
    if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
        int r = ib_error_errno(IB_ERR, "%s: pipe", path);
        for (int i = 0; i < 2; i++) {
            if (out[i] >= 0) close(out[i]);
            if (err[i] >= 0) close(err[i]);
        }
        free(gitdir);
        return r;
    }
    /* Fewer wake-ups per MiB; the default size is fine too if this fails. */
    (void)fcntl(out[0], F_SETPIPE_SZ, (int)BUF_SIZE);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, err[1], 2);
    pid_t pid;
    int rc = posix_spawnp(&pid, "git", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(out[1]);
    close(err[1]);
    free(gitdir);
    if (rc != 0) {
        close(out[0]);
        close(err[0]);
        errno = rc;
        return ib_error_errno(IB_ERR, "%s: cannot run git cat-file blob %s", path, hex);
    }

    struct pollfd pf[2] = {{.fd = out[0], .events = POLLIN}, {.fd = err[0], .events = POLLIN}};
    char msg[512];
    size_t msglen = 0, fill = 0;
    uint64_t got = 0;
    int r = 0;
    while (r == 0 && (pf[0].fd >= 0 || pf[1].fd >= 0)) {
        if (poll(pf, 2, -1) < 0) {
            if (errno == EINTR) continue;
            r = ib_error_errno(IB_ERR, "%s: poll", path);
            break;
        }
        if (pf[0].fd >= 0 && pf[0].revents) {
            ssize_t k = read(pf[0].fd, c->buf + fill, BUF_SIZE - fill);
            if (k < 0 && errno != EINTR && errno != EAGAIN) {
                r = ib_error_errno(IB_ERR, "%s: read from git cat-file", path);
                break;
            }
            if (k == 0) {
                close(pf[0].fd);
                pf[0].fd = -1;
            } else if (k > 0) {
                fill += (size_t)k;
                got += (uint64_t)k;
                if (got > e->size) {
                    r = ib_error_set(IB_ECORRUPT, "%s: git cat-file blob %s returned more than %" PRIu64 " bytes",
                                     path, hex, e->size);
                    break;
                }
            }
            if (fill == BUF_SIZE || (pf[0].fd < 0 && fill)) {
                if ((r = hasher_update(h, c->buf, fill)) < 0) break;
                if (write_all(outfd, c->buf, fill) < 0) {
                    r = ib_error_errno(IB_ERR, "write %s", path);
                    break;
                }
                fill = 0;
            }
        }
        if (pf[1].fd >= 0 && pf[1].revents) {
            char tmp[512];
            ssize_t k = read(pf[1].fd, tmp, sizeof tmp);
            if (k == 0 || (k < 0 && errno != EINTR && errno != EAGAIN)) {
                close(pf[1].fd);
                pf[1].fd = -1;
            } else if (k > 0) {
                size_t take = (size_t)k < sizeof msg - 1 - msglen ? (size_t)k : sizeof msg - 1 - msglen;
                memcpy(msg + msglen, tmp, take);
                msglen += take;
            }
        }
    }
    if (r < 0) kill(pid, SIGTERM); /* ours, and its output is no longer wanted */
    for (int i = 0; i < 2; i++)
        if (pf[i].fd >= 0) close(pf[i].fd);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    if (r < 0) return r;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        msg[msglen] = 0;
        msg[strcspn(msg, "\n")] = 0;
        return ib_error_set(IB_ERR, "%s: git cat-file blob %s failed (status %d)%s%s", path, hex,
                            WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), msglen ? ": " : "",
                            msg);
    }
    if (got != e->size)
        return ib_error_set(IB_ECORRUPT, "%s: git cat-file blob %s returned %" PRIu64 " bytes, want %" PRIu64, path,
                            hex, got, e->size);
    return 0;
}

/* ---- writing ---- */

static int different(const entry *e, const char *path)
{
    char hex[GIT_OID_HEXSZ + 1];
    git_oid_tostr(hex, sizeof hex, &e->it->blob);
    return ib_error_set(IB_EINVALID, "%s exists with different content (not blob %s); not overwritten", path, hex);
}

/* Accepts an existing regular file only when it holds exactly the blob;
 * hashing it also yields the SHA-256 for MANIFEST without touching the repo. */
static int check_existing_file(ctx *c, entry *e, int pfd, const char *base, const char *path, mode_t want)
{
    int fd = openat(pfd, base, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ELOOP) return different(e, path);
        return ib_error_errno(IB_ERR, "open %s", path);
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int r = ib_error_errno(IB_ERR, "stat %s", path);
        close(fd);
        return r;
    }
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != e->size) {
        close(fd);
        return different(e, path);
    }
    unsigned char sha1[SHA1_LEN];
    uint64_t got;
    int r = hash_fd(c, fd, path, e->size, &got, sha1, e->sha256);
    if (r == 0 && (got != e->size || memcmp(sha1, e->it->blob.id, SHA1_LEN) != 0)) r = different(e, path);
    if (r == 0 && (st.st_mode & 07777) != want && fchmod(fd, want) < 0) r = ib_error_errno(IB_ERR, "chmod %s", path);
    close(fd);
    return r;
}

static int open_tmp(int pfd, const char *base, char **out)
{
    int blen = (int)strlen(base) > TMP_BASE_MAX ? TMP_BASE_MAX : (int)strlen(base);
    /* Another host sharing the NFS export may use the same pid: never reuse
     * (or remove) a temp file we did not create. */
    for (int k = 0; k < 100; k++) {
        char *t = k ? ib_xasprintf(".%.*s" TMP_TAG "%ld-%d", blen, base, (long)getpid(), k)
                    : ib_xasprintf(".%.*s" TMP_TAG "%ld", blen, base, (long)getpid());
        int fd = openat(pfd, t, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd >= 0) {
            *out = t;
            return fd;
        }
        free(t);
        if (errno != EEXIST) return -1;
    }
    errno = EEXIST;
    return -1;
}

/* Places the blob at base via a temp file in the same directory, hashed
 * while it is written, then renamed. */
static int write_file(ctx *c, entry *e, int pfd, const char *base, const char *path, mode_t want)
{
    char *tmp = NULL;
    int fd = open_tmp(pfd, base, &tmp);
    if (fd < 0) return ib_error_errno(IB_ERR, "%s: cannot create a temp file", path);
    char *tmp_full = NULL;
    {
        const char *slash = strrchr(e->it->dest, '/');
        char *rel = slash ? ib_xasprintf("%.*s/%s", (int)(slash - e->it->dest), e->it->dest, tmp) : ib_xstrdup(tmp);
        tmp_full = full_path(c, rel);
        free(rel);
    }
    ib_fs_tmp_register(tmp_full);

    hasher h;
    int r = hasher_init(&h, e->size);
    if (r == 0) {
        if (e->size > c->stream_min) {
            r = stream_blob(c, e, path, fd, &h);
        } else {
            git_blob *b = NULL;
            if ((r = lookup_blob(c, e, path, &b)) == 0) {
                const unsigned char *p = git_blob_rawcontent(b);
                for (uint64_t off = 0; r == 0 && off < e->size; off += BUF_SIZE) {
                    size_t n = e->size - off < BUF_SIZE ? (size_t)(e->size - off) : BUF_SIZE;
                    if ((r = hasher_update(&h, p + off, n)) == 0 && write_all(fd, p + off, n) < 0)
                        r = ib_error_errno(IB_ERR, "write %s", path);
                }
                git_blob_free(b);
            }
        }
        unsigned char sha1[SHA1_LEN];
        if (r < 0) hasher_free(&h);
        else if ((r = hasher_final(&h, sha1, e->sha256)) == 0 && memcmp(sha1, e->it->blob.id, SHA1_LEN) != 0) {
            char want_hex[GIT_OID_HEXSZ + 1], got_hex[GIT_OID_HEXSZ + 1];
            git_oid_tostr(want_hex, sizeof want_hex, &e->it->blob);
            hex_encode(got_hex, sha1, SHA1_LEN);
            r = ib_error_set(IB_ECORRUPT, "%s: content read for blob %s hashes to %s", path, want_hex, got_hex);
        }
    }
    if (r == 0 && fchmod(fd, want) < 0) r = ib_error_errno(IB_ERR, "write %s", path);
    if (close(fd) < 0 && r == 0) r = ib_error_errno(IB_ERR, "write %s", path);
    /* Complete content is renamed into place at once (an interrupted run
     * leaves whole files, which a re-run accepts, or its registered temp
     * file, which the signal handler removes); durability comes from one
     * syncfs for the whole export before MANIFEST is written. The rename
     * refuses to replace (RENAME_NOREPLACE) so a file that appeared in the
     * meantime is not clobbered; filesystems without that flag (older NFS)
     * get a plain rename after a fresh existence check. */
    if (r == 0 && renameat2(pfd, tmp, pfd, base, RENAME_NOREPLACE) < 0) {
        if (errno == EEXIST) {
            r = different(e, path);
        } else if (errno == EINVAL || errno == ENOSYS || errno == ENOTSUP) {
            struct stat st;
            if (fstatat(pfd, base, &st, AT_SYMLINK_NOFOLLOW) == 0) r = different(e, path);
            else if (renameat(pfd, tmp, pfd, base) < 0) r = ib_error_errno(IB_ERR, "rename into %s", path);
        } else {
            r = ib_error_errno(IB_ERR, "rename into %s", path);
        }
    }
    if (r != 0) unlinkat(pfd, tmp, 0);
    else e->wrote = 1;
    ib_fs_tmp_forget(tmp_full);
    free(tmp_full);
    free(tmp);
    return r;
}

static int export_file(ctx *c, entry *e, int pfd, const char *base, const char *path, int *present)
{
    mode_t want = e->it->mode == GIT_FILEMODE_BLOB_EXECUTABLE ? 0755 : 0644;
    for (int attempt = 0;; attempt++) {
        struct stat st;
        if (fstatat(pfd, base, &st, AT_SYMLINK_NOFOLLOW) == 0) {
            *present = 1;
            return check_existing_file(c, e, pfd, base, path, want);
        }
        if (errno != ENOENT) return ib_error_errno(IB_ERR, "stat %s", path);
        (void)attempt;
        return write_file(c, e, pfd, base, path, want);
    }
}

static int export_link(ctx *c, entry *e, int pfd, const char *base, const char *path, int *present)
{
    git_blob *b = NULL;
    int r = lookup_blob(c, e, path, &b);
    if (r < 0) return r;
    size_t n = (size_t)e->size;
    char *target = ib_xmalloc(n + 1);
    memcpy(target, git_blob_rawcontent(b), n);
    target[n] = 0;
    git_blob_free(b);

    unsigned char sha1[SHA1_LEN];
    if ((r = hash_buf(target, n, sha1, e->sha256)) < 0) goto out;
    if (memcmp(sha1, e->it->blob.id, SHA1_LEN) != 0) {
        char hex[GIT_OID_HEXSZ + 1];
        git_oid_tostr(hex, sizeof hex, &e->it->blob);
        r = ib_error_set(IB_ECORRUPT, "%s: content read for blob %s does not hash to it", path, hex);
        goto out;
    }
    if (n == 0 || memchr(target, 0, n)) {
        r = ib_error_set(IB_EINVALID, "%s: symlink target is empty or contains a NUL byte", path);
        goto out;
    }
    for (int attempt = 0;; attempt++) {
        struct stat st;
        if (fstatat(pfd, base, &st, AT_SYMLINK_NOFOLLOW) == 0) {
            *present = 1;
            if (!S_ISLNK(st.st_mode) || (uint64_t)st.st_size != e->size) {
                r = different(e, path);
                goto out;
            }
            ssize_t k = readlinkat(pfd, base, (char *)c->buf, BUF_SIZE);
            if (k < 0) r = ib_error_errno(IB_ERR, "readlink %s", path);
            else if ((size_t)k != n || memcmp(c->buf, target, n) != 0) r = different(e, path);
            goto out;
        }
        if (errno != ENOENT) {
            r = ib_error_errno(IB_ERR, "stat %s", path);
            goto out;
        }
        if (symlinkat(target, pfd, base) == 0) {
            e->wrote = 1;
            break;
        }
        if (errno != EEXIST || attempt) {
            r = ib_error_errno(IB_ERR, "symlink %s", path);
            goto out;
        }
    }
out:
    free(target);
    return r;
}

/* ---- MANIFEST ---- */

/* git's C-style quoting (quote.c), so `git`-aware tools and humans read it the
 * same way: only names that would break the TAB-separated line format (or
 * start with a quote) are quoted; other control bytes become \ooo. */
static int needs_quote(const char *s)
{
    if (*s == '"') return 1;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f || *p == '\\' || *p == '"') return 1;
    return 0;
}

static void add_quoted(ib_strbuf *b, const char *s)
{
    ib_strbuf_addf(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '\t') ib_strbuf_addf(b, "\\t");
        else if (*p == '\n') ib_strbuf_addf(b, "\\n");
        else if (*p == '\\' || *p == '"') ib_strbuf_addf(b, "\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f) ib_strbuf_addf(b, "\\%03o", *p);
        else ib_strbuf_addf(b, "%c", *p);
    }
    ib_strbuf_addf(b, "\"");
}

static void build_manifest(ib_strbuf *b, const entry *es, size_t n)
{
    ib_strbuf_addf(b, "%s", MANIFEST_HEADER);
    for (size_t i = 0; i < n; i++) {
        char oid[GIT_OID_HEXSZ + 1], sha[2 * SHA256_LEN + 1];
        git_oid_tostr(oid, sizeof oid, &es[i].it->blob);
        hex_encode(sha, es[i].sha256, SHA256_LEN);
        if (needs_quote(es[i].it->dest)) add_quoted(b, es[i].it->dest);
        else ib_strbuf_addf(b, "%s", es[i].it->dest);
        ib_strbuf_addf(b, "\t%s\t%" PRIu64 "\t%s\n", oid, es[i].size, sha);
    }
}

/* Reads at most max bytes of the regular file name in the export root (no
 * symlink followed), dropping cached pages first so a network filesystem is
 * asked for the server's bytes where it honours the hint. */
static int read_root_file(ctx *c, const char *name, const char *path, char **out, size_t *len, size_t max)
{
    int fd = openat(c->root, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return ib_error_errno(errno == ENOENT ? IB_ENOTFOUND : IB_ERR, "open %s", path);
    (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    char *buf = ib_xmalloc(max + 1);
    size_t got = 0;
    int r = 0;
    while (got <= max) {
        ssize_t k = read(fd, buf + got, max + 1 - got);
        if (k < 0) {
            if (errno == EINTR) continue;
            r = ib_error_errno(IB_ERR, "read %s", path);
            break;
        }
        if (k == 0) break;
        got += (size_t)k;
    }
    close(fd);
    if (r < 0) {
        free(buf);
        return r;
    }
    *out = buf;
    *len = got;
    return 0;
}

/* Same bytes -> no write at all, so re-runs leave MANIFEST (and its mtime)
 * alone. Otherwise temp + fsync + rename + fsync(dir), through the root fd. */
static int write_manifest(ctx *c, const char *data, size_t len)
{
    char *path = full_path(c, MANIFEST_NAME);
    char *old = NULL;
    size_t olen = 0;
    struct stat st;
    int r = 0;
    if (fstatat(c->root, MANIFEST_NAME, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode) &&
        (uint64_t)st.st_size == len && read_root_file(c, MANIFEST_NAME, path, &old, &olen, len) == 0 &&
        olen == len && !memcmp(old, data, len)) {
        free(old);
        free(path);
        return 0;
    }
    free(old);
    ib_error_clear();
    char *tmp = NULL;
    int fd = open_tmp(c->root, MANIFEST_NAME, &tmp);
    if (fd < 0) {
        r = ib_error_errno(IB_ERR, "%s: cannot create a temp file", path);
        free(path);
        return r;
    }
    char *tmp_full = full_path(c, tmp);
    ib_fs_tmp_register(tmp_full);
    if (write_all(fd, data, len) < 0 || fchmod(fd, 0644) < 0 || fsync(fd) < 0)
        r = ib_error_errno(IB_ERR, "write %s", path);
    if (close(fd) < 0 && r == 0) r = ib_error_errno(IB_ERR, "write %s", path);
    /* Replacing is intended here (also replaces a symlink itself, never its target). */
    if (r == 0 && renameat(c->root, tmp, c->root, MANIFEST_NAME) < 0)
        r = ib_error_errno(IB_ERR, "rename into %s", path);
    if (r == 0 && fsync_dir(c->root) < 0) r = ib_error_errno(IB_ERR, "fsync %s", c->dir);
    if (r < 0) unlinkat(c->root, tmp, 0);
    ib_fs_tmp_forget(tmp_full);
    free(tmp_full);
    free(tmp);
    free(path);
    return r;
}

/* ---- read-back ---- */

static int verify_entry(ctx *c, const entry *e)
{
    char *path = full_path(c, e->it->dest);
    char hex[GIT_OID_HEXSZ + 1];
    git_oid_tostr(hex, sizeof hex, &e->it->blob);
    int pfd;
    const char *base;
    int r = open_parent(c, e->it->dest, path, 0, &pfd, &base);
    if (r < 0) {
        r = ib_error_wrap(IB_ECORRUPT, "verify");
        goto out;
    }
    unsigned char sha1[SHA1_LEN], sha256[SHA256_LEN];
    uint64_t got = 0;
    if (e->it->mode == GIT_FILEMODE_LINK) {
        ssize_t k = readlinkat(pfd, base, (char *)c->buf, BUF_SIZE);
        if (k < 0) {
            r = ib_error_errno(IB_ECORRUPT, "verify %s: readlink", path);
            goto out;
        }
        got = (uint64_t)k;
        if ((r = hash_buf(c->buf, (size_t)k, sha1, sha256)) < 0) goto out;
    } else {
        int fd = openat(pfd, base, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) {
            r = ib_error_errno(IB_ECORRUPT, "verify %s: open", path);
            goto out;
        }
        struct stat st;
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
            close(fd);
            r = ib_error_set(IB_ECORRUPT, "verify %s: not a regular file", path);
            goto out;
        }
        /* git keeps only the executable bit; losing it would lose information. */
        if (!!(st.st_mode & 0100) != (e->it->mode == GIT_FILEMODE_BLOB_EXECUTABLE)) {
            close(fd);
            r = ib_error_set(IB_ECORRUPT, "verify %s: mode %04o does not match git mode %06o", path,
                             (unsigned)(st.st_mode & 07777), (unsigned)e->it->mode);
            goto out;
        }
        (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
        r = hash_fd(c, fd, path, e->size, &got, sha1, sha256);
        close(fd);
        if (r < 0) goto out;
    }
    if (got != e->size)
        r = ib_error_set(IB_ECORRUPT, "verify %s: read back %" PRIu64 " bytes, want %" PRIu64 " (blob %s)", path, got,
                         e->size, hex);
    else if (memcmp(sha1, e->it->blob.id, SHA1_LEN) != 0)
        r = ib_error_set(IB_ECORRUPT, "verify %s: read back content is not blob %s", path, hex);
    else if (memcmp(sha256, e->sha256, SHA256_LEN) != 0)
        r = ib_error_set(IB_ECORRUPT, "verify %s: read back SHA-256 differs from the one written", path);
out:
    free(path);
    return r;
}

static int verify_manifest(ctx *c, const char *data, size_t len)
{
    char *path = full_path(c, MANIFEST_NAME);
    char *back = NULL;
    size_t blen = 0;
    int r = read_root_file(c, MANIFEST_NAME, path, &back, &blen, len);
    if (r < 0) r = ib_error_wrap(IB_ECORRUPT, "verify");
    else if (blen != len || memcmp(back, data, len) != 0)
        r = ib_error_set(IB_ECORRUPT, "verify %s: read back bytes differ from those written", path);
    free(back);
    free(path);
    return r;
}

/* ---- entry point ---- */

/* Checks everything that needs no write first (paths, modes, duplicates,
 * object presence and size), so bad input fails before the data dir changes. */
static int prepare(ctx *c, entry *es, size_t n, uint64_t *total)
{
    *total = 0;
    for (size_t i = 0; i < n; i++) {
        const ib_gf_export_item *it = es[i].it;
        int r = check_dest(it->dest);
        if (r < 0) return r;
        if (it->mode != GIT_FILEMODE_BLOB && it->mode != GIT_FILEMODE_BLOB_EXECUTABLE && it->mode != GIT_FILEMODE_LINK)
            return ib_error_set(IB_EINVALID, "%s: git mode %06o cannot be exported (only files and symlinks)",
                                it->dest, (unsigned)it->mode);
    }
    qsort(es, n, sizeof *es, cmp_entry);
    for (size_t i = 1; i < n; i++)
        if (!strcmp(es[i - 1].it->dest, es[i].it->dest))
            return ib_error_set(IB_EINVALID, "%s: listed twice in the export", es[i].it->dest);
    for (size_t i = 0; i < n; i++) {
        const ib_gf_export_item *it = es[i].it;
        char hex[GIT_OID_HEXSZ + 1];
        git_oid_tostr(hex, sizeof hex, &it->blob);
        size_t len = 0;
        git_object_t type = GIT_OBJECT_INVALID;
        int gr = git_odb_read_header(&len, &type, c->odb, &it->blob);
        if (gr < 0) {
            char *path = full_path(c, it->dest);
            int r = ib_error_set(gr == GIT_ENOTFOUND ? IB_ECORRUPT : IB_ERR, "%s: cannot read blob %s: %s", path,
                                 hex, ib_gf_git_msg());
            free(path);
            return r;
        }
        if (type != GIT_OBJECT_BLOB)
            return ib_error_set(IB_EINVALID, "%s: object %s is a %s, not a blob", it->dest, hex,
                                git_object_type2string(type));
        if (it->mode == GIT_FILEMODE_LINK && len >= LINK_MAX_TARGET)
            return ib_error_set(IB_EINVALID, "%s: symlink target of %zu bytes is too long", it->dest, len);
        es[i].size = len;
        *total += len;
    }
    return 0;
}

/* ---- parallel phases ---- */

/* Writing and read-back are split over a few threads, each with its own
 * repository handle (libgit2 handles are not shared across threads), its
 * own parent-dir cache and buffer, and a contiguous run of the sorted items
 * of about equal bytes. Inflating and hashing, not the disk, bound a local
 * export; an NFS export gains from overlapping round trips. */
typedef struct {
    ctx c;
    entry *es;
    size_t from, to;
    int verify;
    atomic_int *stop;
    /* shared counters; only the calling thread (worker 0) reports them */
    atomic_size_t *done_files;
    atomic_uint_fast64_t *done_bytes;
    size_t total_files;
    uint64_t total_bytes;
    ib_gf_export_progress cb;
    void *ud;
    int rc;
    char msg[1024];
    size_t present, written;
} worker;

static void *work(void *arg)
{
    worker *wk = arg;
    for (size_t i = wk->from; i < wk->to && wk->rc == 0 && !atomic_load(wk->stop); i++) {
        entry *e = &wk->es[i];
        int r;
        if (wk->verify) {
            r = verify_entry(&wk->c, e);
        } else {
            char *path = full_path(&wk->c, e->it->dest);
            int pfd, present = 0;
            const char *base;
            r = open_parent(&wk->c, e->it->dest, path, 1, &pfd, &base);
            if (r == 0)
                r = e->it->mode == GIT_FILEMODE_LINK ? export_link(&wk->c, e, pfd, base, path, &present)
                                                     : export_file(&wk->c, e, pfd, base, path, &present);
            free(path);
            if (r == 0 && present) wk->present++;
            else if (r == 0) wk->written++;
        }
        if (r == 0 && wk->done_files) {
            size_t f = atomic_fetch_add(wk->done_files, 1) + 1;
            uint64_t b = atomic_fetch_add(wk->done_bytes, e->size) + e->size;
            if (wk->cb) wk->cb(wk->ud, f, wk->total_files, b, wk->total_bytes);
        }
        if (r < 0) {
            wk->rc = r;
            snprintf(wk->msg, sizeof wk->msg, "%s", ib_error_last());
            atomic_store(wk->stop, 1);
        }
    }
    drop_parent(&wk->c);
    return NULL;
}

static int run_phase(ctx *c, entry *es, size_t n, uint64_t total, int verify, size_t *present, size_t *written,
                     ib_gf_export_progress cb, void *ud)
{
    atomic_size_t done_files = 0;
    atomic_uint_fast64_t done_bytes = 0;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    size_t nt = cpus < 1 ? 1 : cpus > 4 ? 4 : (size_t)cpus;
    if (n < 32 || total < ((uint64_t)8 << 20)) nt = 1;
    worker wk[4];
    atomic_int stop = 0;
    memset(wk, 0, sizeof wk);
    size_t at = 0;
    uint64_t acc = 0;
    for (size_t t = 0; t < nt; t++) {
        wk[t].c = *c;
        wk[t].c.pfd = -1;
        wk[t].c.prel = NULL;
        wk[t].es = es;
        wk[t].verify = verify;
        wk[t].stop = &stop;
        wk[t].done_files = &done_files;
        wk[t].done_bytes = &done_bytes;
        wk[t].total_files = n;
        wk[t].total_bytes = total;
        wk[t].cb = t == 0 ? cb : NULL; /* callbacks stay on the caller's thread */
        wk[t].ud = ud;
        wk[t].from = at;
        uint64_t goal = total / nt * (t + 1);
        while (at < n && (t == nt - 1 || acc < goal)) acc += es[at++].size;
        wk[t].to = at;
        if (t > 0) {
            wk[t].c.buf = ib_xmalloc(BUF_SIZE);
            if (git_repository_open(&wk[t].c.repo, git_repository_path(c->repo)) < 0 ||
                git_repository_odb(&wk[t].c.odb, wk[t].c.repo) < 0) {
                wk[t].rc = ib_error_set(IB_ERR, "export: cannot open the repository again: %s", ib_gf_git_msg());
                snprintf(wk[t].msg, sizeof wk[t].msg, "%s", ib_error_last());
            }
        }
    }
    pthread_t th[4];
    int started[4] = {0};
    for (size_t t = 1; t < nt; t++)
        if (wk[t].rc == 0 && pthread_create(&th[t], NULL, work, &wk[t]) == 0) started[t] = 1;
        else if (wk[t].rc == 0) work(&wk[t]); /* no thread: do it here */
    work(&wk[0]);
    int rc = 0;
    for (size_t t = 0; t < nt; t++) {
        if (t > 0 && started[t]) pthread_join(th[t], NULL);
        if (rc == 0 && wk[t].rc < 0) rc = ib_error_set(wk[t].rc, "%s", wk[t].msg);
        if (present) *present += wk[t].present;
        if (written) *written += wk[t].written;
        if (t > 0) {
            free(wk[t].c.buf);
            git_odb_free(wk[t].c.odb);
            git_repository_free(wk[t].c.repo);
        }
    }
    return rc;
}

int ib_gf_export(ib_gf_export_stats *out, git_repository *repo, const char *dir, const ib_gf_export_item *items,
                 size_t n, ib_gf_export_progress cb, void *ud)
{
    memset(out, 0, sizeof *out);
    if (!repo || !dir || !*dir || (n && !items)) return ib_error_set(IB_EINVALID, "export: missing arguments");
    ctx c = {.repo = repo, .dir = dir, .root = -1, .pfd = -1, .stream_min = STREAM_MIN};
    const char *env = getenv(STREAM_MIN_ENV);
    if (env && *env) c.stream_min = strtoull(env, NULL, 10);
    entry *es = ib_xcalloc(n ? n : 1, sizeof *es);
    for (size_t i = 0; i < n; i++) es[i].it = &items[i];
    ib_strbuf man = {0};
    int manifest_new = 0, dir_existed = 1;
    uint64_t total = 0, done = 0;
    int r;
    if (git_repository_odb(&c.odb, repo) < 0) {
        r = ib_error_set(IB_ERR, "export: cannot open the object database: %s", ib_gf_git_msg());
        goto out;
    }
    if ((r = prepare(&c, es, n, &total)) < 0) goto out;
    dir_existed = ib_fs_exists(dir);
    if ((r = ib_fs_mkdir_p(dir, 0755)) < 0) goto out;
    c.root = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (c.root < 0) {
        r = ib_error_errno(IB_ERR, "open %s", dir);
        goto out;
    }
    c.buf = ib_xmalloc(BUF_SIZE);

    if ((r = run_phase(&c, es, n, total, 0, &out->present, &out->written, cb, ud)) < 0) goto out;
    out->files = n;
    out->bytes = total;
    done = total;
    if (cb) cb(ud, n, n, done, total);

    /* One syncfs instead of an fsync per file and directory: on these
     * machines (and on NFS) per-file fsyncs were most of the export time. */
    if (syncfs(c.root) < 0) {
        r = ib_error_errno(IB_ERR, "sync %s", dir);
        goto out;
    }

    build_manifest(&man, es, n);
    struct stat mst;
    manifest_new = fstatat(c.root, MANIFEST_NAME, &mst, AT_SYMLINK_NOFOLLOW) < 0;
    if ((r = write_manifest(&c, man.s, man.len)) < 0) goto out;

    /* Read-back only starts once everything is on disk, so the pages are
     * clean and the DONTNEED hint can actually drop them. */
    drop_parent(&c);
    if ((r = run_phase(&c, es, n, total, 1, NULL, NULL, NULL, NULL)) < 0) goto out;
    if ((r = verify_manifest(&c, man.s, man.len)) < 0) goto out;
    if (cb) cb(ud, n, n, total, total);
    r = 0;
out:
    drop_parent(&c);
    if (r < 0 && c.root >= 0) {
        /* A failed export takes back what this run wrote (files that were
         * already there stay), and the directories it leaves empty. */
        for (size_t i = 0; i < n; i++) {
            char *rel = ib_xstrdup(es[i].it->dest);
            if (es[i].wrote) unlinkat(c.root, rel, 0);
            /* only empty directories go: ours, or ones that held nothing anyway */
            for (char *sl = strrchr(rel, '/'); sl; sl = strrchr(rel, '/')) {
                *sl = '\0';
                if (unlinkat(c.root, rel, AT_REMOVEDIR) < 0) break;
            }
            free(rel);
        }
        if (manifest_new) unlinkat(c.root, MANIFEST_NAME, 0);
    }
    if (c.root >= 0) close(c.root);
    if (r < 0 && !dir_existed) rmdir(dir);
    git_odb_free(c.odb);
    free(c.buf);
    free(man.s);
    free(es);
    return r;
}
