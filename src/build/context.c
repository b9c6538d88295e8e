#include "build/context.h"
#include "oci/digest.h"
#include "common/error.h"
#include "common/fs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <git2.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

typedef enum { CTX_GIT, CTX_DIR } ctx_kind;

struct ib_context {
    ctx_kind kind;
    int normalize;
    /* git */
    git_repository *repo;
    git_tree *root_tree;  /* commit tree (repo root) */
    git_tree *tree;       /* context subtree */
    /* dir */
    char *dir;
    int git_ref; /* holds a libgit2 init reference (dir contexts look up HEAD) */
};


static int git_fail(int code, const char *what)
{
    const git_error *e = git_error_last();
    return ib_error_set(code, "%s: %s", what, e && e->message ? e->message : "libgit2 error");
}

/* Every open context holds one libgit2 init reference, released by
 * ib_context_free, so libgit2's global state (and pcre2's match data with
 * it) is torn down when the last context goes. */
static void git_init_once(void)
{
    git_libgit2_init();
    /* Bound libgit2's memory so a huge repository cannot push the builder
     * past its memory budget: a small object cache and mmap window. */
    git_libgit2_opts(GIT_OPT_SET_CACHE_MAX_SIZE, (ssize_t)(16 << 20));
    git_libgit2_opts(GIT_OPT_SET_MWINDOW_MAPPED_LIMIT, (size_t)(32 << 20));
    git_libgit2_opts(GIT_OPT_SET_MWINDOW_SIZE, (size_t)(8 << 20));
}

void ib_git_info_clear(ib_git_info *g)
{
    if (!g) return;
    free(g->origin);
    free(g->repo_root);
    free(g->subdir);
    memset(g, 0, sizeof *g);
}

/* The origin URL becomes org.opencontainers.image.source, which is public and
 * part of the manifest digest. So: no credentials, and one spelling per
 * repository whichever way it was cloned (https, ssh, scp-like, with or
 * without .git), or CI and developer clones of one commit would get different
 * digests. Local paths and file:// are not a source anyone else can use: NULL. */
static char *normalize_origin(const char *url)
{
    const char *host = NULL, *path = NULL;
    size_t hlen = 0;
    const char *scheme = strstr(url, "://");
    if (scheme) {
        size_t sl = (size_t)(scheme - url);
        if ((sl == 4 && !strncmp(url, "file", 4)) || sl == 0) return NULL;
        host = scheme + 3;
        const char *slash = strchr(host, '/');
        const char *at = memchr(host, '@', slash ? (size_t)(slash - host) : strlen(host));
        if (at) host = at + 1;
        hlen = slash ? (size_t)(slash - host) : strlen(host);
        path = slash ? slash : "";
        /* ssh/git ports are not the web port */
        if (!(sl == 5 && !strncmp(url, "https", 5)) && !(sl == 4 && !strncmp(url, "http", 4))) {
            const char *colon = memchr(host, ':', hlen);
            if (colon) hlen = (size_t)(colon - host);
        }
    } else {
        /* scp-like: [user@]host:path — but not a local path with a colon after a slash */
        const char *colon = strchr(url, ':');
        const char *slash = strchr(url, '/');
        if (!colon || (slash && slash < colon)) return NULL;
        host = url;
        const char *at = memchr(url, '@', (size_t)(colon - url));
        if (at) host = at + 1;
        hlen = (size_t)(colon - host);
        path = colon + 1;
    }
    if (!hlen) return NULL;
    while (*path == '/') path++;
    size_t pl = strlen(path);
    while (pl && path[pl - 1] == '/') pl--;
    if (pl >= 4 && !strncmp(path + pl - 4, ".git", 4)) pl -= 4;
    return ib_xasprintf("https://%.*s/%.*s", (int)hlen, host, (int)pl, path);
}

static int fill_repo_info(ib_git_info *info, git_repository *repo, const char *ctx_dir, const git_commit *commit)
{
    const char *wd = git_repository_workdir(repo);
    if (!wd) return ib_error_set(IB_EINVALID, "%s: a bare repository has no work tree to build from", ctx_dir);
    char *rroot, *rctx;
    int r = ib_fs_realpath(&rroot, wd);
    if (r < 0) return r;
    if ((r = ib_fs_realpath(&rctx, ctx_dir)) < 0) {
        free(rroot);
        return r;
    }
    size_t n = strlen(rroot);
    if (strncmp(rctx, rroot, n) != 0 || (rctx[n] && rctx[n] != '/')) {
        r = ib_error_set(IB_EINVALID, "context %s is not inside the work tree %s", ctx_dir, rroot);
        free(rroot);
        free(rctx);
        return r;
    }
    info->repo_root = rroot;
    info->subdir = ib_xstrdup(rctx[n] ? rctx + n + 1 : "");
    free(rctx);
    if (commit) {
        git_oid_tostr(info->sha, sizeof info->sha, git_commit_id(commit));
        info->time = (int64_t)git_commit_time(commit);
    }
    /* A plain config read: git_remote_lookup runs regex matches through
     * pcre2, whose match data libgit2 1.5 never frees. */
    git_config *cfg;
    if (git_repository_config_snapshot(&cfg, repo) == 0) {
        const char *url;
        if (git_config_get_string(&url, cfg, "remote.origin.url") == 0) info->origin = normalize_origin(url);
        git_config_free(cfg);
    }
    return 0;
}

int ib_context_open_git(ib_context **out, ib_git_info *info, const char *ctx_dir, const char *rev)
{
    memset(info, 0, sizeof *info);
    struct stat st;
    if (stat(ctx_dir, &st) < 0 || !S_ISDIR(st.st_mode))
        return ib_error_set(IB_EINVALID, "context %s: not a directory", ctx_dir);
    git_init_once();
    git_repository *repo;
    int oe = git_repository_open_ext(&repo, ctx_dir, 0, NULL);
    if (oe < 0) {
        const git_error *ge = git_error_last();
        int r;
        /* libgit2 1.5 reports a failed owner check as ENOTFOUND with a safe.directory message. */
        if (oe == GIT_EOWNER || (ge && ge->message && (strstr(ge->message, "safe.directory") || strstr(ge->message, "not owned"))))
            r = ib_error_set(IB_EINVALID, "context %s: the repository is owned by another user; add it to git's "
                                          "safe.directory (git config --global --add safe.directory DIR) or build "
                                          "as its owner",
                             ctx_dir);
        else if (oe == GIT_ENOTFOUND)
            r = ib_error_set(IB_EINVALID,
                             "context %s is not in a git repository: commit it, or pass --worktree to build the "
                             "files as they are",
                             ctx_dir);
        else
            r = ib_error_set(IB_EINVALID, "context %s: cannot open its git repository: %s", ctx_dir,
                             ge && ge->message ? ge->message : "libgit2 error");
        git_libgit2_shutdown();
        return r;
    }
    git_object *obj = NULL, *peeled = NULL;
    int r;
    if (git_revparse_single(&obj, repo, rev) < 0) {
        const git_error *e = git_error_last();
        r = ib_error_set(IB_EINVALID, "--tag '%s': no such commit in %s (%s)", rev, git_repository_workdir(repo) ? git_repository_workdir(repo) : ctx_dir,
                         e && e->message ? e->message : "unknown revision");
        git_repository_free(repo);
        git_libgit2_shutdown();
        return r;
    }
    if (git_object_peel(&peeled, obj, GIT_OBJECT_COMMIT) < 0) {
        r = ib_error_set(IB_EINVALID, "--tag '%s': does not name a commit", rev);
        git_object_free(obj);
        git_repository_free(repo);
        git_libgit2_shutdown();
        return r;
    }
    git_object_free(obj);
    git_commit *commit = (git_commit *)peeled;
    ib_context *c = ib_xcalloc(1, sizeof *c);
    c->kind = CTX_GIT;
    c->normalize = 1;
    c->repo = repo;
    if ((r = fill_repo_info(info, repo, ctx_dir, commit)) < 0) goto fail;
    if (git_commit_tree(&c->root_tree, commit) < 0) {
        r = git_fail(IB_ERR, "reading the commit tree");
        goto fail;
    }
    if (!info->subdir[0]) {
        git_tree_dup(&c->tree, c->root_tree);
    } else {
        git_tree_entry *te;
        if (git_tree_entry_bypath(&te, c->root_tree, info->subdir) < 0 || git_tree_entry_type(te) != GIT_OBJECT_TREE) {
            r = ib_error_set(IB_EINVALID, "context %s does not exist in commit %.12s (is it committed?)", info->subdir,
                             info->sha);
            if (te) git_tree_entry_free(te);
            goto fail;
        }
        if (git_tree_lookup(&c->tree, repo, git_tree_entry_id(te)) < 0) r = git_fail(IB_ERR, "reading the context tree");
        git_tree_entry_free(te);
        if (r < 0) goto fail;
    }
    git_commit_free(commit);
    *out = c;
    return 0;
fail:
    git_commit_free(commit);
    ib_context_free(c);
    ib_git_info_clear(info);
    return r;
}

int ib_context_open_dir(ib_context **out, ib_git_info *info, const char *dir, int normalize_modes)
{
    struct stat st;
    if (stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) return ib_error_set(IB_EINVALID, "context %s: not a directory", dir);
    ib_context *c = ib_xcalloc(1, sizeof *c);
    c->kind = CTX_DIR;
    c->normalize = normalize_modes;
    int r = ib_fs_realpath(&c->dir, dir);
    if (r < 0) {
        free(c);
        return r;
    }
    c->git_ref = 1;
    git_init_once();
    if (info) {
        memset(info, 0, sizeof *info);
        git_repository *repo;
        if (git_repository_open_ext(&repo, dir, 0, NULL) == 0) {
            git_object *obj;
            git_commit *commit = NULL;
            if (git_revparse_single(&obj, repo, "HEAD") == 0) {
                git_object_peel((git_object **)&commit, obj, GIT_OBJECT_COMMIT);
                git_object_free(obj);
            }
            r = fill_repo_info(info, repo, dir, commit);
            git_commit_free(commit);
            git_repository_free(repo);
            if (r < 0) {
                ib_context_free(c);
                ib_git_info_clear(info);
                return r;
            }
        }
    }
    *out = c;
    return 0;
}

void ib_context_free(ib_context *c)
{
    if (!c) return;
    git_tree_free(c->tree);
    git_tree_free(c->root_tree);
    git_repository_free(c->repo);
    if (c->kind == CTX_GIT || c->git_ref) git_libgit2_shutdown();
    free(c->dir);
    free(c);
}

static const char *skip_dot(const char *p)
{
    while (p[0] == '.' && (p[1] == '/' || p[1] == 0)) p += p[1] ? 2 : 1;
    while (*p == '/') p++;
    return p;
}

static unsigned norm_mode(unsigned mode, ib_ctx_type t)
{
    if (t == IB_CT_DIR) return 0755;
    if (t == IB_CT_SYMLINK) return 0777;
    return (mode & 0111) ? 0755 : 0644;
}

int ib_context_stat(ib_ctx_stat *st, ib_context *c, const char *path)
{
    memset(st, 0, sizeof *st);
    path = skip_dot(path);
    if (c->kind == CTX_GIT) {
        if (!*path) {
            st->type = IB_CT_DIR;
            st->mode = 0755;
            git_oid_tostr(st->id, sizeof st->id, git_tree_id(c->tree));
            return 0;
        }
        git_tree_entry *te;
        if (git_tree_entry_bypath(&te, c->tree, path) < 0)
            return ib_error_set(IB_ENOTFOUND, "%s: not found", path);
        git_filemode_t fm = git_tree_entry_filemode(te);
        git_oid_tostr(st->id, sizeof st->id, git_tree_entry_id(te));
        int r = 0;
        switch (fm) {
        case GIT_FILEMODE_TREE:
        case GIT_FILEMODE_COMMIT: /* a submodule: its content is not in this repo */
            st->type = IB_CT_DIR;
            break;
        case GIT_FILEMODE_LINK:
            st->type = IB_CT_SYMLINK;
            break;
        default:
            st->type = IB_CT_FILE;
            break;
        }
        st->mode = fm == GIT_FILEMODE_BLOB_EXECUTABLE ? 0755 : norm_mode(0, st->type);
        if (st->type != IB_CT_DIR) {
            /* Header only: the size without inflating the blob. */
            git_odb *odb;
            size_t len;
            git_object_t ot;
            if (git_repository_odb(&odb, c->repo) < 0 || git_odb_read_header(&len, &ot, odb, git_tree_entry_id(te)) < 0)
                r = git_fail(IB_ERR, path);
            else
                st->size = len;
            git_odb_free(odb);
        }
        git_tree_entry_free(te);
        return r;
    }
    char *full = ib_fs_join(c->dir, path);
    struct stat sb;
    int r = lstat(full, &sb);
    free(full);
    if (r < 0) return ib_error_errno(errno == ENOENT || errno == ENOTDIR ? IB_ENOTFOUND : IB_ERR, "%s", path);
    if (S_ISDIR(sb.st_mode)) st->type = IB_CT_DIR;
    else if (S_ISLNK(sb.st_mode)) st->type = IB_CT_SYMLINK;
    else if (S_ISREG(sb.st_mode)) st->type = IB_CT_FILE;
    else return ib_error_set(IB_EINVALID, "%s: not a regular file, directory or symlink", path);
    st->size = S_ISREG(sb.st_mode) ? (uint64_t)sb.st_size : 0;
    if (c->normalize) {
        st->mode = norm_mode(sb.st_mode, st->type);
    } else {
        st->mode = sb.st_mode & 07777;
        st->uid = sb.st_uid;
        st->gid = sb.st_gid;
    }
    return 0;
}

int ib_context_readlink(char **out, ib_context *c, const char *path)
{
    path = skip_dot(path);
    if (c->kind == CTX_GIT) {
        size_t len;
        int r = ib_context_read_all(out, &len, c, path, PATH_MAX);
        return r;
    }
    char *full = ib_fs_join(c->dir, path);
    char buf[PATH_MAX];
    ssize_t n = readlink(full, buf, sizeof buf - 1);
    free(full);
    if (n < 0) return ib_error_errno(IB_ERR, "readlink %s", path);
    buf[n] = 0;
    *out = ib_xstrdup(buf);
    return 0;
}

static int cmp_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

void ib_context_names_free(char **names, size_t n)
{
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
}

int ib_context_list(char ***names, size_t *n, ib_context *c, const char *dir)
{
    dir = skip_dot(dir);
    char **v = NULL;
    size_t cnt = 0;
    if (c->kind == CTX_GIT) {
        git_tree *t = NULL;
        if (!*dir) {
            git_tree_dup(&t, c->tree);
        } else {
            git_tree_entry *te;
            if (git_tree_entry_bypath(&te, c->tree, dir) < 0) return ib_error_set(IB_ENOTFOUND, "%s: not found", dir);
            if (git_tree_entry_filemode(te) == GIT_FILEMODE_COMMIT) {
                git_tree_entry_free(te);
                *names = NULL;
                *n = 0;
                return 0;
            }
            int r = git_tree_entry_type(te) == GIT_OBJECT_TREE ? git_tree_lookup(&t, c->repo, git_tree_entry_id(te)) : -1;
            git_tree_entry_free(te);
            if (r < 0) return ib_error_set(IB_EINVALID, "%s: not a directory", dir);
        }
        cnt = git_tree_entrycount(t);
        v = ib_xcalloc(cnt ? cnt : 1, sizeof *v);
        for (size_t i = 0; i < cnt; i++) v[i] = ib_xstrdup(git_tree_entry_name(git_tree_entry_byindex(t, i)));
        git_tree_free(t);
    } else {
        char *full = ib_fs_join(c->dir, dir);
        DIR *d = opendir(full);
        if (!d) {
            int r = ib_error_errno(errno == ENOENT ? IB_ENOTFOUND : IB_ERR, "%s", *dir ? dir : ".");
            free(full);
            return r;
        }
        size_t cap = 0;
        struct dirent *de;
        while ((de = readdir(d))) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
            /* A worktree build mirrors a commit build: git's own metadata is never part of a tree. */
            if (c->normalize && !*dir && !strcmp(de->d_name, ".git")) continue;
            if (cnt == cap) {
                cap = cap ? cap * 2 : 32;
                v = ib_xrealloc(v, cap * sizeof *v);
            }
            v[cnt++] = ib_xstrdup(de->d_name);
        }
        closedir(d);
        free(full);
    }
    if (cnt) qsort(v, cnt, sizeof *v, cmp_name);
    *names = v;
    *n = cnt;
    return 0;
}

/* libgit2 inflates a packed blob whole; past this size we let git stream it
 * (cat-file writes big blobs out as it inflates them) to keep the builder's
 * memory bounded whatever the files in the context. */
#define STREAM_THRESHOLD (16u << 20)

static int stream_with_git(ib_context *c, const git_oid *id, const char *path, ib_sink_fn sink, void *sink_ctx)
{
    char hex[GIT_OID_HEXSZ + 1];
    git_oid_tostr(hex, sizeof hex, id);
    int fds[2];
    if (pipe(fds) < 0) return ib_error_errno(IB_ERR, "pipe");
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return ib_error_errno(IB_ERR, "fork");
    }
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execlp("git", "git", "-c", "core.bigFileThreshold=16m", "-c", "core.packedGitWindowSize=8m", "-c",
               "core.packedGitLimit=32m", "--git-dir", git_repository_path(c->repo), "cat-file",
               "blob", hex, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    static _Thread_local char buf[1 << 17];
    int r = 0;
    for (;;) {
        ssize_t n = read(fds[0], buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR) continue;
            r = ib_error_errno(IB_ERR, "reading %s from git", path);
            break;
        }
        if (n == 0) break;
        if ((r = sink(sink_ctx, buf, (size_t)n)) < 0) break;
    }
    close(fds[0]);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    if (r == 0 && !(WIFEXITED(st) && WEXITSTATUS(st) == 0))
        r = ib_error_set(IB_ERR, "%s: `git cat-file blob %s` failed (is git installed?)", path, hex);
    return r;
}

int ib_context_read(void *ctx, const char *path, ib_sink_fn sink, void *sink_ctx)
{
    ib_context *c = ctx;
    path = skip_dot(path);
    if (c->kind == CTX_GIT) {
        git_tree_entry *te;
        if (git_tree_entry_bypath(&te, c->tree, path) < 0) return ib_error_set(IB_ENOTFOUND, "%s: not found", path);
        git_odb *odb;
        size_t hsize = 0;
        git_object_t ot;
        if (git_repository_odb(&odb, c->repo) == 0) {
            if (git_odb_read_header(&hsize, &ot, odb, git_tree_entry_id(te)) < 0) hsize = 0;
            git_odb_free(odb);
        }
        if (hsize > STREAM_THRESHOLD) {
            int rr = stream_with_git(c, git_tree_entry_id(te), path, sink, sink_ctx);
            git_tree_entry_free(te);
            return rr;
        }
        git_blob *blob;
        int r = git_blob_lookup(&blob, c->repo, git_tree_entry_id(te));
        git_tree_entry_free(te);
        if (r < 0) return git_fail(IB_ERR, path);
        size_t len = (size_t)git_blob_rawsize(blob);
        const char *p = git_blob_rawcontent(blob);
        r = 0;
        for (size_t off = 0; off < len && r == 0;) {
            size_t k = len - off > (1 << 20) ? (1 << 20) : len - off;
            r = sink(sink_ctx, p + off, k);
            off += k;
        }
        git_blob_free(blob);
        return r;
    }
    char *full = ib_fs_join(c->dir, path);
    int fd = open(full, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    free(full);
    if (fd < 0) return ib_error_errno(errno == ENOENT ? IB_ENOTFOUND : IB_ERR, "%s", path);
    static _Thread_local char buf[1 << 17];
    int r = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR) continue;
            r = ib_error_errno(IB_ERR, "read %s", path);
            break;
        }
        if (n == 0) break;
        if ((r = sink(sink_ctx, buf, (size_t)n)) < 0) break;
    }
    close(fd);
    return r;
}

struct mem {
    char *buf;
    size_t len, max;
    const char *path;
};

static int mem_sink(void *ctx, const void *buf, size_t len)
{
    struct mem *m = ctx;
    if (m->len + len > m->max) return ib_error_set(IB_ERR, "%s: larger than %zu bytes", m->path, m->max);
    m->buf = ib_xrealloc(m->buf, m->len + len + 1);
    memcpy(m->buf + m->len, buf, len);
    m->len += len;
    return 0;
}

int ib_context_read_all(char **out, size_t *len, ib_context *c, const char *path, size_t max)
{
    struct mem m = {ib_xmalloc(1), 0, max, path};
    int r = ib_context_read(c, path, mem_sink, &m);
    if (r < 0) {
        free(m.buf);
        return r;
    }
    m.buf[m.len] = 0;
    *out = m.buf;
    if (len) *len = m.len;
    return 0;
}

int ib_context_read_repo_file(char **out, size_t *len, ib_context *c, const char *repo_rel_path, size_t max)
{
    if (c->kind != CTX_GIT) return ib_fs_read_all(out, len, repo_rel_path, max);
    git_tree_entry *te;
    if (git_tree_entry_bypath(&te, c->root_tree, repo_rel_path) < 0)
        return ib_error_set(IB_ENOTFOUND, "%s: not in the commit", repo_rel_path);
    git_blob *blob;
    int r = git_tree_entry_type(te) == GIT_OBJECT_BLOB ? git_blob_lookup(&blob, c->repo, git_tree_entry_id(te)) : -1;
    git_tree_entry_free(te);
    if (r < 0) return ib_error_set(IB_EINVALID, "%s: not a file in the commit", repo_rel_path);
    size_t n = (size_t)git_blob_rawsize(blob);
    if (n > max) {
        git_blob_free(blob);
        return ib_error_set(IB_ERR, "%s: larger than %zu bytes", repo_rel_path, max);
    }
    *out = ib_xmalloc(n + 1);
    memcpy(*out, git_blob_rawcontent(blob), n);
    (*out)[n] = 0;
    if (len) *len = n;
    git_blob_free(blob);
    return 0;
}

static int context_link(void *ctx, const char *resolved, char **target)
{
    ib_context *c = ctx;
    ib_ctx_stat st;
    int r = ib_context_stat(&st, c, resolved);
    if (r < 0 || st.type != IB_CT_SYMLINK) return r;
    return (r = ib_context_readlink(target, c, resolved)) < 0 ? r : 1;
}

int ib_context_resolve(char **out, ib_context *c, const char *path, int follow_last)
{
    int r = ib_fs_resolve_links(out, path, follow_last, 40, context_link, c);
    if (r == IB_ENOTFOUND) r = ib_error_set(IB_ENOTFOUND, "%s: not found", path);
    return r;
}

static int hash_sink(void *ctx, const void *buf, size_t len)
{
    ib_digest_update(ctx, buf, len);
    return 0;
}

int ib_context_content_id(char **out, ib_context *ctx, const char *path, const ib_ctx_stat *st)
{
    if (st->id[0]) {
        *out = ib_xasprintf("git:%s", st->id);
        return 0;
    }
    ib_digester *d = NULL;
    int r = ib_digest_new(&d);
    if (r < 0) return r;
    r = ib_context_read(ctx, path, hash_sink, d);
    char dg[IB_DIGEST_STRLEN + 1];
    ib_digest_final(dg, d);
    ib_digest_free(d);
    if (r < 0) return r;
    *out = ib_xstrdup(dg);
    return 0;
}
