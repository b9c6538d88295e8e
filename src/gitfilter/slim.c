#include "gitfilter/slim.h"
#include "gitfilter/gitutil.h"
#include "common/error.h"
#include "common/fs.h"
#include "common/progress.h"
#include "gitfilter/analyze.h"
#include "gitfilter/bundle.h"
#include "gitfilter/export.h"
#include "gitfilter/oidmap.h"
#include "gitfilter/rewrite.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <git2.h>
#include <libgen.h>
#include <pthread.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;


static void say(ib_gf_slim_say cb, void *ud, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void say(ib_gf_slim_say cb, void *ud, const char *fmt, ...)
{
    if (!cb) return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    cb(ud, line);
}

/* `git -C dir args…` as a child: stdout discarded, stderr kept so that the
 * last line can go into the error message. gc and bundles are git's own
 * business: libgit2 1.5 cannot delete objects (see ARCHITECTURE.md). */
typedef struct {
    pid_t pid;
    int err;
    const char *what;
} git_child;

static int spawn_git(git_child *ch, const char *dir, const char *what, const char *const *args)
{
    const char *argv[16] = {"git", "-C", dir};
    int n = 3;
    for (; *args && n < 15; args++) argv[n++] = *args;
    argv[n] = NULL;
    int errp[2];
    ch->what = what;
    ch->pid = -1;
    if (pipe2(errp, O_CLOEXEC) < 0) return ib_error_errno(IB_ERR, "%s", what);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, errp[1], 2);
    int rc = posix_spawnp(&ch->pid, "git", &fa, NULL, (char *const *)argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(errp[1]);
    if (rc != 0) {
        close(errp[0]);
        errno = rc;
        ch->pid = -1;
        return ib_error_errno(IB_ERR, "%s: cannot run git", what);
    }
    ch->err = errp[0];
    return 0;
}

static int wait_git(git_child *ch)
{
    char tail[512] = "";
    size_t tl = 0;
    char chunk[4096];
    ssize_t r;
    while ((r = read(ch->err, chunk, sizeof chunk)) > 0 || (r < 0 && errno == EINTR)) {
        for (ssize_t i = 0; i < r; i++) {
            if (tl == sizeof tail - 1) {
                memmove(tail, tail + 256, tl - 256);
                tl -= 256;
            }
            tail[tl++] = chunk[i];
        }
    }
    tail[tl] = '\0';
    close(ch->err);
    int status = 0;
    while (waitpid(ch->pid, &status, 0) < 0 && errno == EINTR) {
    }
    ch->pid = -1;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return 0;
    while (tl && (tail[tl - 1] == '\n' || tail[tl - 1] == '\r')) tail[--tl] = '\0';
    char *last = strrchr(tail, '\n');
    last = last ? last + 1 : tail;
    for (char *p = last; *p; p++)
        if (*p == '\r') *p = ' ';
    return ib_error_set(IB_ERR, "%s failed%s%s", ch->what, *last ? ": " : "", last);
}

static int run_git(const char *dir, const char *what, const char *const *args)
{
    git_child ch;
    int rc = spawn_git(&ch, dir, what, args);
    return rc < 0 ? rc : wait_git(&ch);
}

/* Calls fn for every regular file below dir (not following links) until fn
 * returns non-zero, which is returned. No global state, unlike nftw. */
static int each_file(const char *dir, int (*fn)(void *ud, const char *path, const struct stat *st), void *ud)
{
    DIR *d = opendir(dir);
    if (!d) return 0;
    int r = 0;
    for (struct dirent *e; r == 0 && (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *p = ib_fs_join(dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) == 0) {
            if (S_ISDIR(st.st_mode)) r = each_file(p, fn, ud);
            else if (S_ISREG(st.st_mode)) r = fn(ud, p, &st);
        }
        free(p);
    }
    closedir(d);
    return r;
}

static int add_size(void *ud, const char *p, const struct stat *st)
{
    (void)p;
    *(uint64_t *)ud += (uint64_t)st->st_size;
    return 0;
}

static uint64_t du(const char *dir)
{
    uint64_t n = 0;
    each_file(dir, add_size, &n);
    return n;
}

/* ---- is this a fresh clone? (git filter-repo's sanity checks) ---------- */

typedef struct {
    char *why;
    size_t wn;
} reflog_ctx;

static int reflog_check(void *ud, const char *p, const struct stat *st)
{
    (void)st;
    reflog_ctx *x = ud;
    FILE *fp = fopen(p, "r");
    if (!fp) return 0;
    int lines = 0, ch;
    while ((ch = fgetc(fp)) != EOF)
        if (ch == '\n') lines++;
    fclose(fp);
    if (lines > 1) {
        const char *rel = strstr(p, "/logs/");
        snprintf(x->why, x->wn, "the reflog of %s has %d entries", rel ? rel + 6 : p, lines);
        return 1;
    }
    return 0;
}

/* Remotes by their remote.<name>.url keys. Not git_remote_list: libgit2
 * 1.5 matches config names with a regex whose match data it leaks. */
typedef struct {
    char names[16][128];
    int n;
} remote_names;

static int remote_entry(const git_config_entry *e, void *ud)
{
    remote_names *r = ud;
    size_t l = strlen(e->name);
    if (strncmp(e->name, "remote.", 7) || l < 12 || strcmp(e->name + l - 4, ".url")) return 0;
    size_t nl = l - 11;
    for (int i = 0; i < r->n; i++)
        if (strlen(r->names[i]) == nl && !strncmp(r->names[i], e->name + 7, nl)) return 0;
    if (r->n < 16 && nl < sizeof r->names[0]) {
        memcpy(r->names[r->n], e->name + 7, nl);
        r->names[r->n++][nl] = '\0';
    }
    return 0;
}

static void count_remotes(git_repository *repo, int *n, int *has_origin)
{
    remote_names r = {.n = 0};
    git_config *cfg;
    if (git_repository_config_snapshot(&cfg, repo) == 0) {
        git_config_foreach(cfg, remote_entry, &r);
        git_config_free(cfg);
    }
    git_error_clear();
    *n = r.n;
    *has_origin = 0;
    for (int i = 0; i < r.n; i++)
        if (!strcmp(r.names[i], "origin")) *has_origin = 1;
}

/* git's canon_mode: any regular file mode is 100644 or 100755. */
static uint32_t canon_mode(uint32_t m)
{
    if ((m & 0170000) == 0100000) return (m & 0100) ? 0100755 : 0100644; /* the owner's x bit, as git reads it */
    return m;
}

static int not_fresh(char *why, size_t wn, git_repository *repo, const char *gitdir)
{
    char *packdir = ib_xasprintf("%sobjects/pack", gitdir);
    int packs = 0, loose = 0;
    DIR *d = opendir(packdir);
    for (struct dirent *e; d && (e = readdir(d));) {
        size_t l = strlen(e->d_name);
        if (l > 5 && !strcmp(e->d_name + l - 5, ".pack")) packs++;
    }
    if (d) closedir(d);
    free(packdir);
    for (int i = 0; i < 256; i++) {
        char *sub = ib_xasprintf("%sobjects/%02x", gitdir, i);
        DIR *s = opendir(sub);
        for (struct dirent *e; s && (e = readdir(s));)
            if (e->d_name[0] != '.') loose++;
        if (s) closedir(s);
        free(sub);
    }
    if (packs > 1 || (packs == 1 && loose > 0) || loose >= 100) {
        snprintf(why, wn, "expected a freshly packed repository, found %d packs and %d loose objects", packs, loose);
        return 1;
    }
    int nremotes = 0, has_origin = 0;
    count_remotes(repo, &nremotes, &has_origin);
    if (!((nremotes == 1 && has_origin) || (packs == 0 && nremotes == 0))) {
        snprintf(why, wn, "expected one remote, origin, found %d", nremotes);
        return 1;
    }
    char *logs = ib_xasprintf("%slogs", gitdir);
    reflog_ctx rx = {why, wn};
    int bad = each_file(logs, reflog_check, &rx);
    free(logs);
    if (bad) return 1;
    git_reference *r;
    if (git_reference_lookup(&r, repo, "refs/stash") == 0) {
        git_reference_free(r);
        snprintf(why, wn, "it has stashed changes");
        return 1;
    }
    git_error_clear();
    if (!git_repository_is_bare(repo)) {
        git_status_options so;
        git_status_options_init(&so, GIT_STATUS_OPTIONS_VERSION);
        so.flags = GIT_STATUS_OPT_INCLUDE_UNTRACKED | GIT_STATUS_OPT_RECURSE_UNTRACKED_DIRS;
        git_status_list *sl;
        if (git_status_list_new(&sl, repo, &so) == 0) {
            const char *what = NULL;
            for (size_t i = 0; i < git_status_list_entrycount(sl) && !what; i++) {
                const git_status_entry *se = git_status_byindex(sl, i);
                unsigned s = se->status;
                /* A legacy 100664 (or other non-canonical) mode in HEAD's tree
                 * against the index's 100644: git calls that clean, so do we. */
                const git_diff_delta *hd = se->head_to_index;
                if ((s & GIT_STATUS_INDEX_MODIFIED) && hd && git_oid_equal(&hd->old_file.id, &hd->new_file.id) &&
                    canon_mode(hd->old_file.mode) == canon_mode(hd->new_file.mode))
                    s &= ~(unsigned)GIT_STATUS_INDEX_MODIFIED;
                if (s & (GIT_STATUS_INDEX_NEW | GIT_STATUS_INDEX_MODIFIED | GIT_STATUS_INDEX_DELETED |
                         GIT_STATUS_INDEX_RENAMED | GIT_STATUS_INDEX_TYPECHANGE))
                    what = "uncommitted changes";
                else if (s & GIT_STATUS_WT_NEW) what = "untracked files";
                else if (s & (GIT_STATUS_WT_MODIFIED | GIT_STATUS_WT_DELETED | GIT_STATUS_WT_TYPECHANGE))
                    what = "unstaged changes";
            }
            git_status_list_free(sl);
            if (what) {
                snprintf(why, wn, "it has %s", what);
                return 1;
            }
        }
        git_error_clear();
        git_reference_iterator *it;
        if (git_reference_iterator_glob_new(&it, repo, "refs/heads/*") == 0) {
            while (git_reference_next(&r, it) == 0) {
                const char *name = git_reference_name(r);
                char *origin = ib_xasprintf("refs/remotes/origin/%s", name + 11);
                git_oid oid;
                int missing = git_reference_name_to_id(&oid, repo, origin) < 0;
                int differs = !missing && git_reference_target(r) && !git_oid_equal(&oid, git_reference_target(r));
                if (missing || differs)
                    snprintf(why, wn, "%s %s %s", name, missing ? "has no" : "differs from", origin);
                free(origin);
                git_reference_free(r);
                if (missing || differs) {
                    git_reference_iterator_free(it);
                    return 1;
                }
            }
            git_reference_iterator_free(it);
        }
        git_error_clear();
        git_strarray wts = {0};
        if (git_worktree_list(&wts, repo) == 0) {
            size_t n = wts.count;
            git_strarray_dispose(&wts);
            if (n > 0) {
                snprintf(why, wn, "it has several worktrees");
                return 1;
            }
        }
        git_error_clear();
    }
    return 0;
}

/* ---- the export list ----------------------------------------------------- */

typedef struct {
    git_repository *repo;
    git_odb *odb;
    ib_gf_export_item *items;
    size_t n, cap;
    ib_oidmap *primary;  /* H(path) -> item */
    ib_oidmap *versions; /* H(blob, path) -> 1 */
    ib_oidmap *dirs;     /* H(dir) -> 1 for every directory above a primary item */
    uint64_t bytes;
    int rc;
} export_list;

static uint32_t norm_mode(uint32_t m)
{
    if ((m & 0170000) == 0120000) return GIT_FILEMODE_LINK;
    return (m & 0100) ? GIT_FILEMODE_BLOB_EXECUTABLE : GIT_FILEMODE_BLOB; /* git: the owner's x bit */
}

static void push_item(export_list *l, char *dest, const git_oid *blob, uint32_t mode)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 256;
        l->items = ib_xrealloc(l->items, l->cap * sizeof *l->items);
    }
    l->items[l->n].dest = dest;
    git_oid_cpy(&l->items[l->n].blob, blob);
    l->items[l->n].mode = mode;
    l->n++;
    size_t len;
    git_object_t t;
    if (git_odb_read_header(&len, &t, l->odb, blob) == 0) l->bytes += len;
}

/* Whether path can take its plain place in the export: not our MANIFEST,
 * not a directory some item already lives under, and no item where one of
 * its directories must be (a branch with data/x a file, another with data/x
 * a directory, a symlink in one and a directory in the other). The first
 * one in (HEAD's) wins; a clashing one goes beside the other versions, so
 * no tip is lost and the export still verifies. Its directories are then
 * taken. */
static int primary_fits(export_list *l, const char *path, size_t len)
{
    git_oid key;
    uint64_t v;
    static const char vdir[] = IB_GF_EXPORT_VERSIONS "/";
    /* our names: MANIFEST (also as a directory, MANIFEST/x) and the versions tree */
    size_t ml = strlen(IB_GF_EXPORT_MANIFEST);
    if (len >= ml && !memcmp(path, IB_GF_EXPORT_MANIFEST, ml) && (len == ml || path[ml] == '/')) return 0;
    if (len >= sizeof vdir - 2 && !memcmp(path, vdir, sizeof vdir - 2) && (len == sizeof vdir - 2 || path[sizeof vdir - 2] == '/'))
        return 0;
    git_odb_hash(&key, path, len, GIT_OBJECT_TREE);
    if (ib_oidmap_get(l->dirs, &key, &v)) return 0;
    for (size_t k = 0; k < len; k++) {
        if (path[k] != '/') continue;
        git_odb_hash(&key, path, k, GIT_OBJECT_BLOB);
        if (ib_oidmap_get(l->primary, &key, &v)) return 0;
    }
    for (size_t k = 0; k < len; k++) {
        if (path[k] != '/') continue;
        git_odb_hash(&key, path, k, GIT_OBJECT_TREE);
        ib_oidmap_set(l->dirs, &key, 1);
    }
    return 1;
}

static int on_removed(void *ud, const char *path, size_t len, const git_oid *blob, uint32_t mode)
{
    export_list *l = ud;
    mode = norm_mode(mode);
    git_oid key;
    git_odb_hash(&key, path, len, GIT_OBJECT_BLOB);
    uint64_t i;
    if (!ib_oidmap_get(l->primary, &key, &i)) {
        if (primary_fits(l, path, len)) {
            ib_oidmap_set(l->primary, &key, l->n);
            push_item(l, ib_xstrndup(path, len), blob, mode);
            return 0;
        }
    } else if (git_oid_equal(&l->items[i].blob, blob) && l->items[i].mode == mode) {
        return 0;
    }
    /* another version of the same path: kept beside it, named by its blob */
    char *vk = ib_xmalloc(GIT_OID_RAWSZ + len + 1);
    memcpy(vk, blob->id, GIT_OID_RAWSZ);
    memcpy(vk + GIT_OID_RAWSZ, path, len);
    vk[GIT_OID_RAWSZ + len] = (char)(mode == GIT_FILEMODE_LINK);
    git_odb_hash(&key, vk, GIT_OID_RAWSZ + len + 1, GIT_OBJECT_TREE);
    free(vk);
    if (ib_oidmap_get(l->versions, &key, NULL)) return 0;
    ib_oidmap_set(l->versions, &key, 1);
    char hex[GIT_OID_HEXSZ + 1];
    git_oid_tostr(hex, sizeof hex, blob);
    push_item(l, ib_xasprintf(IB_GF_EXPORT_VERSIONS "/%.*s/%s", (int)len, path, hex), blob, mode);
    return 0;
}

static int cmp_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int tree_of(git_oid *out, git_repository *repo, const git_oid *target)
{
    git_object *o = NULL, *t = NULL;
    int ok = git_object_lookup(&o, repo, target, GIT_OBJECT_ANY) == 0 && git_object_peel(&t, o, GIT_OBJECT_TREE) == 0;
    if (ok) git_oid_cpy(out, git_object_id(t));
    git_object_free(t);
    git_object_free(o);
    git_error_clear();
    return ok;
}

/* Every removed file at the tip of HEAD, every branch (local and
 * remote-tracking) and every tag; HEAD's version wins the plain path. */
static int build_export_list(export_list *l, const ib_gf_filter *f, int all_versions)
{
    ib_oidmap *seen = ib_oidmap_new();
    int rc = 0;
    git_oid head, tree;
    if (git_reference_name_to_id(&head, l->repo, "HEAD") == 0 && tree_of(&tree, l->repo, &head))
        rc = ib_gf_removed_in_tree(l->repo, &tree, f, seen, on_removed, l);
    git_error_clear();
    git_strarray names = {0};
    if (rc == 0 && git_reference_list(&names, l->repo) < 0) rc = ib_gf_git_fail(IB_ERR, "listing refs");
    if (rc == 0) qsort(names.strings, names.count, sizeof *names.strings, cmp_name);
    for (size_t i = 0; rc == 0 && i < names.count; i++) {
        const char *n = names.strings[i];
        /* every ref the rewrite touches (pull-request refs, refs/stash, notes…),
         * not just branches and tags: what it drops must be in the export */
        git_oid id;
        if (git_reference_name_to_id(&id, l->repo, n) < 0 || !tree_of(&tree, l->repo, &id)) {
            git_error_clear();
            continue;
        }
        rc = ib_gf_removed_in_tree(l->repo, &tree, f, seen, on_removed, l);
    }
    git_strarray_dispose(&names);
    if (rc == 0 && all_versions) {
        git_revwalk *walk = NULL;
        if (git_revwalk_new(&walk, l->repo) < 0 || git_revwalk_push_glob(walk, "*") < 0) rc = ib_gf_git_fail(IB_ERR, "walking history");
        git_oid c;
        while (rc == 0 && git_revwalk_next(&c, walk) == 0)
            if (tree_of(&tree, l->repo, &c)) rc = ib_gf_removed_in_tree(l->repo, &tree, f, seen, on_removed, l);
        git_revwalk_free(walk);
        git_error_clear();
    }
    ib_oidmap_free(seen);
    return rc;
}

static void free_list(export_list *l)
{
    for (size_t i = 0; i < l->n; i++) free((char *)l->items[i].dest);
    free(l->items);
    ib_oidmap_free(l->primary);
    ib_oidmap_free(l->versions);
    ib_oidmap_free(l->dirs);
    git_odb_free(l->odb);
}

/* ---- the procedure ---------------------------------------------------- */

/* Exports to NFS run for minutes: a line at every tenth of the bytes. */
typedef struct {
    ib_gf_slim_say cb;
    void *ud;
    int shown; /* tenths reported */
    double t0;
} export_meter;

static void on_export_progress(void *ud, size_t files, size_t total_files, uint64_t bytes, uint64_t total)
{
    export_meter *m = ud;
    if (total < ((uint64_t)64 << 20)) return; /* small exports finish before anyone looks */
    int tenth = (int)(bytes * 10 / total);
    if (tenth <= m->shown) return;
    if (tenth >= 10 && files == total_files) {
        m->shown = 10;
        say(m->cb, m->ud, "export: all %zu files written; syncing and reading them back", files);
        return;
    }
    if (tenth >= 10) return;
    m->shown = tenth;
    char a[32], b[32];
    ib_human_size(a, bytes);
    ib_human_size(b, total);
    double dt = ib_now() - m->t0;
    say(m->cb, m->ud, "export: %d%% (%zu of %zu files, %s of %s, %.0f MB/s)", tenth * 10, files, total_files, a, b,
        dt > 0 ? (double)bytes / 1e6 / dt : 0.0);
}

/* ---- the backup on a thread ------------------------------------------ */

typedef struct {
    ib_gf_bundle_plan *plan;
    const char *path;
    pthread_t th;
    int rc;
    double seconds;
    char msg[512]; /* errors are thread-local: the message travels back here */
} bundle_job;

static void *bundle_thread(void *arg)
{
    bundle_job *j = arg;
    double t0 = ib_now();
    j->rc = ib_gf_bundle_write(j->plan, j->path);
    if (j->rc < 0) snprintf(j->msg, sizeof j->msg, "%s", ib_error_last());
    j->seconds = ib_now() - t0;
    return NULL;
}

static char *default_backup(git_repository *repo)
{
    const char *base = git_repository_is_bare(repo) ? git_repository_path(repo) : git_repository_workdir(repo);
    char *p = ib_xstrdup(base);
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/') p[--n] = '\0';
    char *out = ib_xasprintf("%s.pre-slim.bundle", p);
    free(p);
    return out;
}

/* REPO as given must be the top of a clone; without one (NULL), the
 * repository around the current directory, as git finds it. */
static int open_repo(git_repository **repo, const char *path)
{
    if (git_repository_open_ext(repo, path ? path : ".", path ? GIT_REPOSITORY_OPEN_NO_SEARCH : 0, NULL) < 0) {
        git_error_clear();
        return ib_error_set(IB_ERR, "%s: not a git repository%s", path ? path : "the current directory",
                            path ? " (give the top of a clone)" : "");
    }
    return 0;
}

int ib_gf_slim_analyze(char **report, const char *path, const ib_gf_filter *filter)
{
    *report = NULL;
    git_repository *repo;
    int rc = open_repo(&repo, path);
    if (rc < 0) return rc;
    ib_gf_analysis *a = NULL;
    rc = ib_gf_analyze(&a, repo, ib_gf_filter_has_rules(filter) ? filter : NULL);
    if (rc == 0) {
        char *dir = ib_xasprintf("%simgbuild-slim/analysis", git_repository_path(repo));
        rc = ib_gf_analysis_write(a, dir);
        if (rc == 0) {
            char *s = ib_gf_analysis_summary(a, 10);
            *report = ib_xasprintf("%s\nfull report: %s/\n", s ? s : "", dir);
            free(s);
        }
        free(dir);
    }
    ib_gf_analysis_free(a);
    git_repository_free(repo);
    return rc;
}

int ib_gf_slim_run(ib_gf_slim_result *res, const ib_gf_slim_opts *o, ib_gf_slim_say cb, void *ud)
{
    double t0 = ib_now();
    memset(res, 0, sizeof *res);
    res->dry_run = o->dry_run;
    git_repository *repo;
    int rc = open_repo(&repo, o->repo);
    if (rc < 0) return rc;
    const char *gitdir = git_repository_path(repo);
    const char *workdir = git_repository_workdir(repo);
    char *mapdir = ib_xasprintf("%simgbuild-slim", gitdir);
    char *backup = NULL;
    ib_gf_rewrite *rw = NULL;
    export_list l = {.repo = repo, .primary = ib_oidmap_new(), .versions = ib_oidmap_new(), .dirs = ib_oidmap_new()};
    char hb[32], hb2[32];

    char why[600];
    if (git_repository_is_shallow(repo)) {
        /* its oldest commits would become roots: force-pushing that truncates the server's history */
        rc = ib_error_set(IB_ERR, "%s is a shallow clone: slim needs the whole history (git fetch --unshallow, or "
                                  "git clone --no-local URL)",
                          o->repo ? o->repo : workdir ? workdir : gitdir);
        goto out;
    }
    if (!o->force && not_fresh(why, sizeof why, repo, gitdir)) {
        if (!o->dry_run) {
            rc = ib_error_set(IB_ERR,
                              "%s does not look like a fresh clone (%s); slim rewrites history in place: run it on a "
                              "fresh clone (git clone --no-local URL) or pass --force",
                              o->repo ? o->repo : git_repository_workdir(repo) ? git_repository_workdir(repo) : gitdir, why);
            goto out;
        }
        say(cb, ud, "note: not a fresh clone (%s): the real run will need --force", why);
    }
    uint64_t before = du(gitdir);
    res->gitdir_before = res->gitdir_after = before;

    /* 1. the new history, in memory */
    double tr0 = ib_now();
    ib_gf_rewrite_opts ro = {.filter = o->filter,
                             .prune_empty = o->prune_empty,
                             .prune_degenerate = o->prune_degenerate,
                             .migrate_origin = 1,
                             .replace_refs = !o->no_replace_refs};
    rc = ib_gf_rewrite_compute(&rw, repo, &ro, NULL, NULL);
    if (rc < 0) goto out;
    double t_compute = ib_now() - tr0;
    const ib_gf_rewrite_stats *st = ib_gf_rewrite_stats_get(rw);
    res->commits = st->commits;
    res->kept = st->kept;
    res->pruned = st->pruned;
    res->refs_changed = st->refs_updated + st->refs_deleted;

    /* 2. what it removes, exported and verified before anything changes */
    if (git_repository_odb(&l.odb, repo) < 0) {
        rc = ib_gf_git_fail(IB_ERR, "opening the object database");
        goto out;
    }
    double tl0 = ib_now();
    rc = build_export_list(&l, o->filter, o->export_all_versions);
    if (rc < 0) goto out;
    double t_list = ib_now() - tl0;
    ib_human_size(hb, l.bytes);
    res->exported_files = l.n;
    res->exported_bytes = l.bytes;
    if (o->dry_run) {
        say(cb, ud, "would export: %zu files, %s to %s (listed in %.3f s)", l.n, hb,
            o->export_dir ? o->export_dir : "(--export-to)", t_list);
        say(cb, ud,
            "would rewrite: %zu commits, %zu kept, %zu pruned, %zu changed, %zu refs updated, %zu deleted "
            "(computed in %.3f s)",
            st->commits, st->kept, st->pruned, st->changed, st->refs_updated, st->refs_deleted, t_compute);
        if (st->changed == 0 && l.n == 0) say(cb, ud, "nothing matches the filters: the history would stay as it is");
        goto out;
    }
    if (st->changed == 0 && st->refs_updated == 0 && st->refs_deleted == 0 && l.n == 0) {
        say(cb, ud, "nothing matches the filters: history unchanged");
        goto out;
    }
    /* The backup runs while the export does, and only a verified export
     * lets the rewrite go on. A fresh clone is one pack: the bundle is that
     * pack behind a ref list, copied on a thread; any other store is left to
     * `git bundle create` in another process. */
    git_child bundle = {.pid = -1};
    bundle_job job = {0};
    int bthread = 0;
    char *btmp = NULL;
    double tb0 = ib_now();
    if (!o->no_backup) {
        backup = o->backup ? ib_xstrdup(o->backup) : default_backup(repo);
        btmp = ib_xasprintf("%s.tmp-%d", backup, (int)getpid());
        ib_fs_tmp_register(btmp);
        rc = ib_gf_bundle_plan_new(&job.plan, repo);
        if (rc < 0) goto bundle_done;
        job.path = btmp;
        if (job.plan && pthread_create(&job.th, NULL, bundle_thread, &job) == 0) {
            bthread = 1;
        } else {
            const char *args[] = {"bundle", "create", "--quiet", btmp, "--all", NULL};
            rc = spawn_git(&bundle, workdir ? workdir : gitdir, "git bundle create (the backup)", args);
            if (rc < 0) goto bundle_done;
        }
    }
    double te0 = ib_now();
    ib_gf_export_stats es = {0};
    export_meter meter = {.cb = cb, .ud = ud, .t0 = te0};
    rc = ib_gf_export(&es, repo, o->export_dir, l.items, l.n, on_export_progress, &meter);
    if (rc < 0) {
        ib_error_wrap(rc, "export to %s (nothing was rewritten)", o->export_dir);
        if (bundle.pid > 0) kill(bundle.pid, SIGTERM);
    } else {
        res->exported_written = es.written;
        say(cb, ud, "export: %zu files, %s to %s (%zu written, %zu already present), verified in %.2f s", es.files,
            hb, o->export_dir, es.written, es.present, ib_now() - te0);
    }
    if (bundle.pid > 0) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", ib_error_last());
        int br = wait_git(&bundle);
        if (rc < 0) ib_error_set(rc, "%s", msg); /* the export's error is the one that matters */
        else rc = br;
    }
    if (bthread) {
        pthread_join(job.th, NULL);
        if (rc == 0 && job.rc < 0) rc = ib_error_set(job.rc, "backup %s: %s", backup, job.msg);
    }
    if (rc == 0 && btmp && rename(btmp, backup) < 0) rc = ib_error_errno(IB_ERR, "%s", backup);
    if (rc == 0 && btmp) {
        struct stat bs;
        ib_human_size(hb2, stat(backup, &bs) == 0 ? (uint64_t)bs.st_size : 0);
        say(cb, ud, "backup: %s (%s), written alongside the export in %.2f s", backup, hb2,
            (bthread ? job.seconds : ib_now() - tb0));
    }
bundle_done:
    ib_gf_bundle_plan_free(job.plan);
    if (btmp) {
        if (rc < 0) unlink(btmp);
        ib_fs_tmp_forget(btmp);
        free(btmp);
    }
    if (rc < 0) goto out;

    /* 4. the new objects and refs */
    double ta0 = ib_now();
    rc = ib_gf_rewrite_apply(rw, mapdir);
    if (rc < 0) goto out;
    res->rewrite_seconds = t_compute + (ib_now() - ta0);
    res->changed = 1;
    say(cb, ud, "rewrite: %zu commits, %zu kept, %zu pruned, %zu refs updated in %.3f s", st->commits, st->kept,
        st->pruned, st->refs_updated + st->refs_deleted, res->rewrite_seconds);

    /* 5. like filter-repo: the old remote would hand the old history back */
    git_config *cfg = NULL;
    git_buf url = {0};
    if (git_repository_config_snapshot(&cfg, repo) == 0 && git_config_get_string_buf(&url, cfg, "remote.origin.url") == 0) {
        char *p = ib_fs_join(mapdir, "origin-url");
        char *line = ib_xasprintf("%s\n", url.ptr);
        ib_fs_write_atomic(p, line, strlen(line), 0644);
        free(line);
        free(p);
        const char *args[] = {"remote", "remove", "origin", NULL};
        rc = run_git(gitdir, "git remote remove origin", args);
        if (rc == 0)
            say(cb, ud, "removed remote origin (URL saved in %s/origin-url): add it back to force-push", mapdir);
    }
    git_buf_dispose(&url);
    git_config_free(cfg);
    if (rc < 0) goto out;
    git_error_clear();

    /* 6. check out the new HEAD, then shrink */
    if (workdir && !git_oid_is_zero(ib_gf_rewrite_new_head(rw))) {
        const char *args[] = {"reset", "--hard", "--quiet", NULL};
        rc = run_git(workdir, "git reset --hard (checking out the new HEAD)", args);
        if (rc < 0) goto out;
    } else if (workdir) {
        /* HEAD's branch was pruned away entirely: an index still holding the
         * old tree would keep the data alive through gc and commit it again */
        const char *args[] = {"read-tree", "-u", "--reset", "4b825dc642cb6eb9a060e54bf8d69288fbee4904", NULL};
        rc = run_git(workdir, "git read-tree (emptying the index of the pruned HEAD)", args);
        if (rc < 0) goto out;
    }
    if (!o->no_gc) {
        double tg0 = ib_now();
        const char *a1[] = {"reflog", "expire", "--expire=now", "--all", NULL};
        const char *a2[] = {"gc", "--prune=now", "--quiet", NULL};
        rc = run_git(gitdir, "git reflog expire", a1);
        if (rc == 0) rc = run_git(gitdir, "git gc", a2);
        if (rc < 0) goto out;
        ib_human_size(hb, before);
        res->gitdir_after = du(gitdir);
        ib_human_size(hb2, res->gitdir_after);
        say(cb, ud, "shrink: .git %s -> %s in %.2f s", hb, hb2, ib_now() - tg0);
    }
    res->seconds = ib_now() - t0;
    say(cb, ud, "slim: done in %.2f s; commit-map and ref-map in %s", res->seconds, mapdir);

out:
    free_list(&l);
    ib_gf_rewrite_free(rw);
    free(backup);
    free(mapdir);
    git_repository_free(repo);
    return rc;
}
