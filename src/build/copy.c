#include "build/copy.h"
#include "common/error.h"
#include "common/strbuf.h"
#include "common/fs.h"
#include "layer/apply.h"

#include <archive.h>
#include <archive_entry.h>
#include <ctype.h>
#include <stdarg.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

char *ib_copy_clean_abs(const char *path)
{
    char *rel = ib_fs_path_clean(path, 1);
    char *abs = ib_xasprintf("/%s", rel);
    free(rel);
    return abs;
}

/* A context-relative source; NULL if it climbs above the context root
 * ("../x"), which Docker forbids. */
static char *clean_rel(const char *path) { return ib_fs_path_clean(path, 0); }

static int has_meta(const char *s) { return strpbrk(s, "*?[") != NULL; }

/* ---------- chown ---------- */

static int lookup_name(unsigned *out, const char *rootfs, const char *file, const char *name)
{
    if (!rootfs) return ib_error_set(IB_EINVALID, "--chown %s: names need an /etc/%s in the image", name, file);
    char *p = ib_xasprintf("/etc/%s", file), *text;
    int r = ib_fs_read_in_root(&text, NULL, rootfs, p, 16 << 20);
    free(p);
    if (r < 0)
        return ib_error_set(IB_EINVALID, "--chown: cannot look up %s '%s': the image has no /etc/%s",
                            strcmp(file, "passwd") ? "group" : "user", name, file);
    r = ib_error_set(IB_EINVALID, "--chown: no %s '%s' in the image's /etc/%s",
                     strcmp(file, "passwd") ? "group" : "user", name, file);
    size_t nl = strlen(name);
    for (char *line = text; line && *line;) {
        char *next = strchr(line, '\n');
        if (next) *next++ = 0;
        if (!strncmp(line, name, nl) && line[nl] == ':') {
            /* name:x:UID:... — the id is the third field */
            char *f = strchr(line + nl + 1, ':');
            if (f) {
                *out = (unsigned)strtoul(f + 1, NULL, 10);
                r = 0;
                break;
            }
        }
        line = next;
    }
    free(text);
    return r;
}

static int parse_id(unsigned *out, const char *s, const char *rootfs, const char *file)
{
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (*s && !*end) {
        if (v > 0xffffffffUL) return ib_error_set(IB_EINVALID, "--chown: id %s out of range", s);
        *out = (unsigned)v;
        return 0;
    }
    return lookup_name(out, rootfs, file, s);
}

int ib_copy_parse_chown(unsigned *uid, unsigned *gid, const char *spec, const char *rootfs)
{
    if (!*spec) return ib_error_set(IB_EINVALID, "--chown: empty");
    char *u = ib_xstrdup(spec), *g = strchr(u, ':');
    if (g) *g++ = 0;
    int r = parse_id(uid, u, rootfs, "passwd");
    if (r == 0) r = g && *g ? parse_id(gid, g, rootfs, "group") : (*gid = *uid, 0);
    free(u);
    return r;
}

/* ---------- sources ---------- */

typedef struct {
    char *path;        /* context path ("" = root) after symlink resolution */
    char *name;        /* base name as matched/written (for dest naming) */
    ib_ctx_stat st;
} match;

typedef struct {
    match *v;
    size_t n;
} matches;

static void add_match(matches *m, const char *path, const char *name, const ib_ctx_stat *st)
{
    m->v = ib_xrealloc(m->v, (m->n + 1) * sizeof *m->v);
    m->v[m->n].path = ib_xstrdup(path);
    m->v[m->n].name = ib_xstrdup(name);
    m->v[m->n].st = *st;
    m->n++;
}

static void matches_free(matches *m)
{
    for (size_t i = 0; i < m->n; i++) {
        free(m->v[i].path);
        free(m->v[i].name);
    }
    free(m->v);
}

static const char *base_name(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static int excluded(const ib_copy_env *env, const char *path)
{
    return env->ignore && *path && ib_ignore_match(env->ignore, path);
}

/* --exclude applies to the sources themselves too, matched against their path
 * in the context (the Dockerfile reference's `COPY --exclude=*.txt hom*
 * /mydir/` leaves home.txt out); inside a copied directory it matches paths
 * relative to that source (walk_dir). */
static int excluded_source(const ib_ignore *exclude, const char *path)
{
    return exclude && *path && ib_ignore_match(exclude, path);
}

/* Matches pattern components against the context, as Go's filepath.Match does
 * per path element ('*' never crosses '/'). */
static int glob_walk(matches *m, const ib_copy_env *env, const ib_ignore *exclude, const char *dir, char **comps,
                     size_t nc, size_t i)
{
    if (i == nc) {
        ib_ctx_stat st;
        char *res;
        int r = ib_context_resolve(&res, env->ctx, dir, 1);
        if (r == 0) r = ib_context_stat(&st, env->ctx, res);
        if (r == 0 && !excluded(env, dir) && !excluded_source(exclude, dir)) add_match(m, res, base_name(dir), &st);
        free(res);
        return r == IB_ENOTFOUND ? 0 : r;
    }
    if (!has_meta(comps[i])) {
        char *next = *dir ? ib_xasprintf("%s/%s", dir, comps[i]) : ib_xstrdup(comps[i]);
        int r = glob_walk(m, env, exclude, next, comps, nc, i + 1);
        free(next);
        return r;
    }
    char *rdir;
    int r = ib_context_resolve(&rdir, env->ctx, dir, 1);
    if (r < 0) {
        free(rdir);
        return r == IB_ENOTFOUND ? 0 : r;
    }
    ib_ctx_stat st;
    if (ib_context_stat(&st, env->ctx, rdir) < 0 || st.type != IB_CT_DIR) {
        free(rdir);
        return 0;
    }
    char **names;
    size_t nn;
    r = ib_context_list(&names, &nn, env->ctx, rdir);
    free(rdir);
    if (r < 0) return r;
    for (size_t k = 0; k < nn && r == 0; k++) {
        if (fnmatch(comps[i], names[k], 0) != 0) continue;
        char *next = *dir ? ib_xasprintf("%s/%s", dir, names[k]) : ib_xstrdup(names[k]);
        r = glob_walk(m, env, exclude, next, comps, nc, i + 1);
        free(next);
    }
    ib_context_names_free(names, nn);
    return r;
}

static int collect_source(matches *m, const ib_copy_env *env, const ib_ignore *exclude, const char *word,
                          const char *kind)
{
    char *rel = clean_rel(word);
    if (!rel) return ib_error_set(IB_EINVALID, "%s %s: path is outside the build context", kind, word);
    int r = 0;
    if (has_meta(rel)) {
        char **comps = NULL;
        size_t nc = 0;
        char *dup = ib_xstrdup(rel);
        for (char *t = strtok(dup, "/"); t; t = strtok(NULL, "/")) {
            comps = ib_xrealloc(comps, (nc + 1) * sizeof *comps);
            comps[nc++] = t;
        }
        /* A wildcard that matches nothing is skipped, not an error: BuildKit's
         * dockerfile2llb copies with AllowEmptyWildcard, which is what makes
         * `COPY requirements.txt poetry.lock* ./` work without a lock file. */
        r = glob_walk(m, env, exclude, "", comps, nc, 0);
        free(comps);
        free(dup);
    } else {
        char *res;
        ib_ctx_stat st;
        /* The named source itself is followed if it is a symlink (BuildKit's
         * FollowSymlinks); links inside copied directories are kept as links. */
        r = ib_context_resolve(&res, env->ctx, rel, 1);
        if (r == 0) r = ib_context_stat(&st, env->ctx, res);
        /* An excluded directory still counts when a '!' exception re-includes
         * something below it (BuildKit copies notes/KEEP.md for "notes" +
         * "!notes/KEEP.md"). */
        int hidden = r == 0 && excluded(env, rel) &&
                     !(st.type == IB_CT_DIR && ib_ignore_may_include_under(env->ignore, rel));
        if (r == IB_ENOTFOUND || hidden)
            r = ib_error_set(IB_EINVALID, "%s %s: not found in the build context%s", kind, word,
                             hidden ? " (excluded by .dockerignore)" : "");
        if (r == 0 && !excluded_source(exclude, rel)) add_match(m, res, *rel ? base_name(rel) : "", &st);
        free(res);
    }
    free(rel);
    return r;
}

/* ---------- entries ---------- */


typedef struct {
    const ib_copy_env *env;
    ib_layer_builder *lb;
    int has_chmod;
    unsigned chmod;
    ib_ignore *exclude;
    ib_context *ctx; /* the context the current walk reads */
    const ib_ignore *ignore;
    ib_strbuf inputs;   /* what decided this layer, for explaining cache misses */
} copier;

static void set_owner(const copier *c, ib_layer_entry *e, unsigned uid, unsigned gid)
{
    e->uid = c->env->chown ? c->env->uid : uid;
    e->gid = c->env->chown ? c->env->gid : gid;
}

/* 1 and its metadata if a directory exists below at path (resolved, no leading '/'). */
static int lower_dir(const ib_copy_env *env, const char *path, unsigned *mode, unsigned *uid, unsigned *gid)
{
    if (env->lower) return ib_layer_index_dir(env->lower, path, mode, uid, gid);
    return env->parent_fn ? env->parent_fn(env->parent_ctx, path, mode, uid, gid) : 0;
}

/* The parent directories the layer must hold: one that exists below keeps its
 * metadata; one this COPY creates is 0755 and, with --chown, owned by that
 * user, as BuildKit's MkdirAll chowns each directory it makes (only those). */
static int parent_meta(void *ctx, const char *path, unsigned *mode, unsigned *uid, unsigned *gid)
{
    const copier *c = ctx;
    if (lower_dir(c->env, path, mode, uid, gid)) return 1;
    if (!c->env->chown) return 0;
    *mode = 0755;
    *uid = c->env->uid;
    *gid = c->env->gid;
    return 1;
}

/* Where an absolute, cleaned image path really is: BuildKit resolves the
 * destination with fs.RootPath against the image, so COPY to /bin/x on a
 * usrmerge base (bin -> usr/bin) writes usr/bin/x and the link stays. */
static int resolve_dest(char **out, const ib_copy_env *env, const char *abs)
{
    char *rel;
    int r = ib_layer_index_resolve(&rel, env->lower, abs);
    if (r < 0) return r;
    *out = ib_xasprintf("/%s", rel);
    free(rel);
    return 0;
}

/* One "src PATH MODE ID" line of the step's recorded inputs (what a later
 * miss is explained from; not the key, which the entries decide). The mode
 * is the one in the layer, so an exec bit flip is named as such. A newline
 * in a name would split the line, a space in an id would end it: those are
 * written as %0A and %20 (and a '%' in an id as %25). */
static void record_escaped(ib_strbuf *sb, const char *s, const char *special)
{
    if (!strpbrk(s, special)) { /* the usual case, one call */
        ib_strbuf_addf(sb, "%s", s);
        return;
    }
    for (const char *p = s; *p; p++)
        if (strchr(special, *p)) ib_strbuf_addf(sb, "%%%02X", (unsigned char)*p);
        else ib_strbuf_addf(sb, "%c", *p);
}

static void record_src(copier *c, const char *path, const char *suffix, unsigned mode, const char *id)
{
    ib_strbuf_addf(&c->inputs, "src ");
    record_escaped(&c->inputs, *path ? path : ".", "\n");
    ib_strbuf_addf(&c->inputs, "%s %04o ", suffix, mode & 07777);
    record_escaped(&c->inputs, id, "\n %");
    ib_strbuf_addf(&c->inputs, "\n");
}

static int add_one(copier *c, const char *src, const ib_ctx_stat *st, const char *dst)
{
    ib_layer_entry e = {.path = dst};
    /* Docker: everything COPY/ADD creates is 0:0 unless --chown, also from
     * another stage; and the builder's own uid must never leak into a layer. */
    set_owner(c, &e, 0, 0);
    switch (st->type) {
    case IB_CT_DIR:
        e.type = IB_LE_DIR;
        e.mode = c->has_chmod ? c->chmod : st->mode;
        record_src(c, src, "/", e.mode, "dir");
        return ib_layer_add(c->lb, &e);
    case IB_CT_SYMLINK: {
        char *target;
        int r = ib_context_readlink(&target, c->ctx, src);
        if (r < 0) return r;
        e.type = IB_LE_SYMLINK;
        e.mode = 0777;
        e.link = target;
        r = ib_layer_add(c->lb, &e);
        char *lid = ib_xasprintf("link:%s", target);
        record_src(c, src, "", e.mode, lid);
        free(lid);
        free(target);
        return r;
    }
    default: {
        char *cid;
        int r = ib_context_content_id(&cid, c->ctx, src, st);
        if (r < 0) return r;
        e.type = IB_LE_FILE;
        e.mode = c->has_chmod ? c->chmod : st->mode;
        e.size = st->size;
        e.src = c->ctx;
        e.src_path = src;
        e.content = ib_context_read;
        e.content_id = cid;
        r = ib_layer_add(c->lb, &e);
        record_src(c, src, "", e.mode, cid);
        free(cid);
        return r;
    }
    }
}

static int walk_dir(copier *c, const char *src, const char *dst, const char *rel_under)
{
    char **names;
    size_t n;
    int r = ib_context_list(&names, &n, c->ctx, src);
    if (r < 0) return r;
    for (size_t i = 0; i < n && r == 0; i++) {
        char *sp = *src ? ib_xasprintf("%s/%s", src, names[i]) : ib_xstrdup(names[i]);
        char *dp = ib_xasprintf("%s/%s", dst, names[i]);
        char *ru = *rel_under ? ib_xasprintf("%s/%s", rel_under, names[i]) : ib_xstrdup(names[i]);
        ib_ctx_stat st;
        r = ib_context_stat(&st, c->ctx, sp);
        if (r == 0) {
            int skip = c->ignore && ib_ignore_match(c->ignore, sp);
            if (!skip && c->exclude && ib_ignore_match(c->exclude, ru)) skip = 1;
            if (!skip) r = add_one(c, sp, &st, dp);
            if (r == 0 && st.type == IB_CT_DIR) {
                /* An excluded dir is still entered when a '!' exception may re-include something below it. */
                int descend = !skip || (c->ignore && ib_ignore_match(c->ignore, sp) &&
                                        ib_ignore_may_include_under(c->ignore, sp));
                if (descend) r = walk_dir(c, sp, dp, ru);
            }
        }
        free(sp);
        free(dp);
        free(ru);
    }
    ib_context_names_free(names, n);
    return r;
}

static int mem_content(void *src, const char *path, ib_sink_fn sink, void *ctx)
{
    (void)path;
    const char *s = src;
    return sink(ctx, s, strlen(s));
}

/* ---------- ADD archives ---------- */

struct head_ctx {
    unsigned char buf[512];
    size_t n;
};

static int head_sink(void *ctx, const void *buf, size_t len)
{
    struct head_ctx *h = ctx;
    size_t k = len < sizeof h->buf - h->n ? len : sizeof h->buf - h->n;
    memcpy(h->buf + h->n, buf, k);
    h->n += k;
    return h->n == sizeof h->buf ? 1 : 0; /* 1 = stop early, enough bytes */
}

/* Docker's ADD unpacks local tar archives: plain, gzip, bzip2, xz (and zstd). */
static int is_archive(ib_context *ctx, const char *path)
{
    struct head_ctx h = {{0}, 0};
    if (ib_context_read(ctx, path, head_sink, &h) < 0) return 0;
    const unsigned char *b = h.buf;
    if (h.n >= 2 && b[0] == 0x1f && b[1] == 0x8b) return 1;
    if (h.n >= 3 && !memcmp(b, "BZh", 3)) return 1;
    if (h.n >= 6 && !memcmp(b, "\xfd" "7zXZ\0", 6)) return 1;
    if (h.n >= 4 && !memcmp(b, "\x28\xb5\x2f\xfd", 4)) return 1;
    if (h.n >= 262 && !memcmp(b + 257, "ustar", 5)) return 1;
    return 0;
}

static int file_sink(void *ctx, const void *buf, size_t len)
{
    return fwrite(buf, 1, len, ctx) == len ? 0 : ib_error_errno(IB_ERR, "write");
}

/* Tells a real tar (possibly compressed) from a file that merely starts with
 * a compression magic: Docker copies the latter unchanged. */
static int probe_tar(const char *path)
{
    struct archive *a = archive_read_new();
    archive_read_support_filter_all(a);
    archive_read_support_format_tar(a);
    archive_read_support_format_gnutar(a);
    struct archive_entry *e;
    int ok = archive_read_open_filename(a, path, 1 << 16) == ARCHIVE_OK;
    if (ok) {
        int h = archive_read_next_header(a, &e);
        ok = h == ARCHIVE_OK || h == ARCHIVE_WARN; /* WARN: a UTF-8 name in the C locale */
    }
    archive_read_free(a);
    return ok;
}

static int add_archive(copier *c, const char *src, const ib_ctx_stat *st, const char *dst, const char *file_dst,
                       ib_context **keep)
{
    /* One build runs its instructions one at a time: a counter names scratch dirs uniquely. */
    static unsigned seq;
    unsigned id = seq++;
    char *tarp = ib_xasprintf("%s/add-%u.tar", c->env->tmpdir, id);
    char *root = ib_xasprintf("%s/add-%u", c->env->tmpdir, id);
    FILE *fp = fopen(tarp, "wb");
    int r = fp ? ib_context_read(c->ctx, src, file_sink, fp) : ib_error_errno(IB_ERR, "%s", tarp);
    if (fp && fclose(fp) != 0 && r == 0) r = ib_error_errno(IB_ERR, "%s", tarp);
    if (r == 0 && !probe_tar(tarp)) {
        unlink(tarp);
        free(tarp);
        free(root);
        return add_one(c, src, st, file_dst);
    }
    if (r == 0 && mkdir(root, 0755) < 0) r = ib_error_errno(IB_ERR, "mkdir %s", root);
    if (r == 0) {
        r = ib_layer_apply(NULL, root, tarp);
        if (r < 0) {
            /* Name the source, not our scratch file. */
            char *why = ib_xstrdup(strstr(ib_error_last(), ": entry") ? strstr(ib_error_last(), ": entry") + 2
                                                                      : "not a valid archive");
            r = ib_error_set(r, "%s: %s", src, why);
            free(why);
        }
    }
    unlink(tarp);
    free(tarp);
    if (r == 0) r = ib_context_open_dir(keep, NULL, root, 0);
    free(root);
    if (r < 0) return r;
    copier sub = *c;
    sub.ctx = *keep;
    sub.ignore = NULL;
    r = walk_dir(&sub, "", dst, "");
    c->inputs = sub.inputs; /* the walk may have grown the buffer */
    return r;
}

/* ---------- the instruction ---------- */

static int parse_chmod(unsigned *out, const char *s)
{
    char *end;
    unsigned long v = strtoul(s, &end, 8);
    if (!*s || *end || v > 07777)
        return ib_error_set(IB_EINVALID, "--chmod=%s: expected an octal mode such as 0755", s);
    *out = (unsigned)v;
    return 0;
}

/* The heredoc a word like "<<EOF", "<<-EOF", "<<'EOF'" or "3<<\"EOF\"" names, or NULL. */
static const ib_df_heredoc *heredoc_of(const ib_df_instr *in, const char *w)
{
    while (*w >= '0' && *w <= '9') w++;
    if (strncmp(w, "<<", 2)) return NULL;
    w += 2;
    if (*w == '-') w++;
    size_t n = strlen(w);
    if (n >= 2 && (w[0] == '"' || w[0] == '\'') && w[n - 1] == w[0]) {
        w++;
        n -= 2;
    }
    for (size_t h = 0; h < in->nheredocs; h++)
        if (strlen(in->heredocs[h].name) == n && !strncmp(in->heredocs[h].name, w, n)) return &in->heredocs[h];
    return NULL;
}

/* The body of an unquoted heredoc: $VAR and ${VAR...} are expanded, quotes
 * are literal (BuildKit expands it with SkipProcessQuotes and always with '\'
 * as the escape, whatever the escape directive), and a backslash follows the
 * POSIX here-document rule: it escapes only '$' and itself (\$HOME stays
 * "$HOME", \\ is one backslash); any other backslash is kept as written. The
 * body is rewritten so that ib_df_expand does exactly that. */
static int heredoc_expand(char **out, const char *body, const ib_copy_env *env, int line)
{
    char *w = ib_xmalloc(strlen(body) * 2 + 1), *o = w;
    for (const char *p = body; *p; p++) {
        if (*p == '\\' && (p[1] == '$' || p[1] == '\\')) {
            *o++ = *p++; /* an escape ib_df_expand honours: the next char, literally */
        } else if (*p == '\\' || *p == '"' || *p == '\'') {
            *o++ = '\\'; /* literal: escaped for ib_df_expand */
        }
        *o++ = *p;
    }
    *o = 0;
    int r = ib_df_expand(out, w, '\\', env->lookup, env->lookup_ctx, env->df_name, line);
    free(w);
    return r;
}

static int is_url(const char *s)
{
    return !strncmp(s, "http://", 7) || !strncmp(s, "https://", 8) || !strncmp(s, "git@", 4) ||
           !strncmp(s, "git://", 6) || !strncmp(s, "ssh://", 6);
}

int ib_copy_run(ib_layer_result *res, const ib_copy_env *env, const ib_df_instr *in, int is_add)
{
    const char *kind = is_add ? "ADD" : "COPY";
    copier c = {.env = env, .lb = ib_layer_builder_new(), .ctx = env->ctx, .ignore = env->ignore};
    ib_layer_set_parent_meta(c.lb, parent_meta, &c);
    matches m = {0};
    char **words = ib_xcalloc(in->nargs, sizeof *words);
    char **heredoc_bodies = ib_xcalloc(in->nargs, sizeof *heredoc_bodies);
    ib_context **archives = NULL; /* one per match: ADD's extracted archives */
    char *dest = NULL, *rdest = NULL, *chmod_x = NULL;
    int r = 0;

    int parents = 0;
    ib_df_flag_get(in, "parents", &parents);
    if (parents) {
        r = ib_error_set(IB_EINVALID, "%s --parents is not supported", kind);
        goto out;
    }
    const char *chmod_s = ib_df_flag_get(in, "chmod", NULL);
    if (chmod_s) {
        /* BuildKit's CopyCommand.Expand expands --chmod as it does --chown
         * (ARG MODE=440, COPY --chmod=$MODE ...). */
        r = ib_df_expand(&chmod_x, chmod_s, env->escape, env->lookup, env->lookup_ctx, env->df_name, in->line);
        if (r < 0) goto out;
        if ((r = parse_chmod(&c.chmod, chmod_x)) < 0) goto out;
        c.has_chmod = 1;
    }
    /* --exclude patterns behave like .dockerignore lines relative to each source. */
    {
        char *pat = NULL;
        for (size_t i = 0; i < in->nflags; i++) {
            if (strcmp(in->flags[i].name, "exclude") || !in->flags[i].value) continue;
            char *np = ib_xasprintf("%s%s\n", pat ? pat : "", in->flags[i].value);
            free(pat);
            pat = np;
        }
        if (pat) {
            r = ib_ignore_parse(&c.exclude, pat, strlen(pat), "--exclude");
            free(pat);
            if (r < 0) goto out;
        }
    }
    for (size_t i = 0; i < in->nargs; i++) {
        if (i + 1 < in->nargs && heredoc_of(in, in->args[i])) {
            words[i] = ib_xstrdup(in->args[i]);
            continue;
        }
        r = ib_df_expand(&words[i], in->args[i], env->escape, env->lookup, env->lookup_ctx, env->df_name, in->line);
        if (r < 0) goto out;
    }
    size_t nsrc = in->nargs - 1;
    const char *draw = words[nsrc];
    const char *wd = env->workdir && *env->workdir ? env->workdir : "/";
    {
        char *joined = draw[0] == '/' ? ib_xstrdup(draw) : ib_fs_join(wd, draw);
        dest = ib_copy_clean_abs(joined);
        free(joined);
    }
    /* The path as it is in the image: through its symlinks. */
    if ((r = resolve_dest(&rdest, env, dest)) < 0) goto out;
    unsigned lm, lu, lg; /* an existing destination directory's metadata */
    int dest_exists = strcmp(rdest, "/") && lower_dir(env, rdest + 1, &lm, &lu, &lg);
    size_t dl = strlen(draw);
    /* Docker: the destination is a directory when it says so (trailing '/',
     * "."), and also when it already is one in the image: `COPY f /bin`
     * copies into /bin, it does not replace it. */
    int dest_dir = (dl && draw[dl - 1] == '/') || !strcmp(draw, ".") || (dl >= 2 && !strcmp(draw + dl - 2, "/.")) ||
                   !strcmp(rdest, "/") || dest_exists;
    /* Heredoc sources become files named after the delimiter. */
    size_t nheredoc_src = 0;
    for (size_t i = 0; i < nsrc; i++) {
        const ib_df_heredoc *hd = heredoc_of(in, in->args[i]);
        if (!hd) continue;
        {
            char *body;
            if (hd->expand) {
                if ((r = heredoc_expand(&body, hd->content, env, in->line)) < 0) goto out;
            } else {
                body = ib_xstrdup(hd->content);
            }
            heredoc_bodies[i] = body;
            char *dp = dest_dir || nsrc > 1 ? ib_fs_join(rdest, hd->name) : ib_xstrdup(rdest);
            char hid[IB_DIGEST_STRLEN + 1];
            ib_digest_buf(hid, body, strlen(body));
            ib_layer_entry e = {.path = dp + 1, .type = IB_LE_FILE, .mode = c.has_chmod ? c.chmod : 0644,
                                .size = strlen(body), .src = body, .content = mem_content, .content_id = hid};
            set_owner(&c, &e, 0, 0);
            r = ib_layer_add(c.lb, &e);
            char *hname = ib_xasprintf("<<%s", hd->name);
            record_src(&c, hname, "", e.mode, hid);
            free(hname);
            free(dp);
            if (r < 0) goto out;
            nheredoc_src++;
        }
    }
    for (size_t i = 0; i < nsrc; i++) {
        if (heredoc_bodies[i]) continue;
        if (is_url(words[i])) {
            r = ib_error_set(IB_EINVALID,
                             "%s %s: remote sources are not supported (a build must depend only on the commit); "
                             "vendor the file or fetch it in a RUN step",
                             kind, words[i]);
            goto out;
        }
        if ((r = collect_source(&m, env, c.exclude, words[i], kind)) < 0) goto out;
    }
    if (m.n + nheredoc_src > 1 && !dest_dir) {
        r = ib_error_set(IB_EINVALID,
                         "%s: with more than one source file, the destination must be a directory and end with a /",
                         kind);
        goto out;
    }
    archives = ib_xcalloc(m.n ? m.n : 1, sizeof *archives);
    for (size_t i = 0; i < m.n; i++) {
        match *mt = &m.v[i];
        if (mt->st.type == IB_CT_DIR) {
            if (strcmp(rdest, "/")) {
                ib_ctx_stat dst = mt->st;
                /* An existing destination directory keeps its mode and owner (BuildKit
                 * copies into it), unless --chmod/--chown say otherwise. */
                if (dest_exists) {
                    ib_layer_entry e = {.path = rdest + 1, .type = IB_LE_DIR, .mode = c.has_chmod ? c.chmod : lm};
                    set_owner(&c, &e, lu, lg);
                    r = ib_layer_add(c.lb, &e);
                } else {
                    r = add_one(&c, mt->path, &dst, rdest + 1);
                }
                if (r < 0) goto out;
            }
            if ((r = walk_dir(&c, mt->path, strcmp(rdest, "/") ? rdest + 1 : "", "")) < 0) goto out;
            /* walk_dir with dest "" would give "/name": fix by cleaning in the writer (leading '/' stripped). */
        } else {
            /* Into a directory, the name is not resolved again: BuildKit
             * replaces a symlink there (ensureEmptyFileTarget). */
            char *dp = dest_dir ? ib_fs_join(rdest, mt->name) : ib_xstrdup(rdest);
            if (!strcmp(dp, "/")) {
                r = ib_error_set(IB_EINVALID, "%s %s: cannot replace the root directory", kind, mt->name);
                free(dp);
                goto out;
            }
            if (is_add && mt->st.type == IB_CT_FILE && is_archive(c.ctx, mt->path)) {
                r = add_archive(&c, mt->path, &mt->st, rdest + 1, dp + 1, &archives[i]);
            } else {
                r = add_one(&c, mt->path, &mt->st, dp + 1);
            }
            free(dp);
            if (r < 0) goto out;
        }
    }
    /* Where it writes and as whom, after ARG expansion: named when they
     * change while the instruction text does not (an ARG in the path). */
    ib_strbuf_addf(&c.inputs, "dest %s\n", rdest);
    if (env->chown) ib_strbuf_addf(&c.inputs, "owner %u:%u\n", env->uid, env->gid);
    if (env->produce) r = env->produce(env->produce_ctx, c.lb, c.inputs.s ? c.inputs.s : "", res);
    else r = ib_layer_write(res, c.lb, env->store, env->compression, env->threads, env->epoch);
out:
    free(c.inputs.s);
    if (r < 0 && strncmp(ib_error_last(), kind, strlen(kind))) ib_error_wrap(r, "%s", kind);
    ib_layer_builder_free(c.lb);
    ib_ignore_free(c.exclude);
    for (size_t i = 0; archives && i < m.n; i++) ib_context_free(archives[i]);
    matches_free(&m);
    for (size_t i = 0; i < in->nargs; i++) {
        free(words[i]);
        free(heredoc_bodies[i]);
    }
    free(words);
    free(heredoc_bodies);
    free(archives);
    free(dest);
    free(rdest);
    free(chmod_x);
    return r;
}
