#include "build/cache.h"
#include "layer/index.h"
#include "common/error.h"
#include "common/fs.h"
#include "common/strbuf.h"
#include "oci/image.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct ib_cache {
    ib_store *s;
    char *entries;
    char *steps;
    char *index; /* saved layer indexes (executor.c stage_index) */
    char *lockfile;
    int lockfd;
};

int ib_cache_open(ib_cache **out, ib_store *s)
{
    ib_cache *c = ib_xcalloc(1, sizeof *c);
    c->s = s;
    c->entries = ib_xasprintf("%s/cache/entries", ib_store_dir(s));
    c->steps = ib_xasprintf("%s/cache/steps", ib_store_dir(s));
    c->index = ib_xasprintf("%s/cache/index", ib_store_dir(s));
    c->lockfile = ib_xasprintf("%s/lock", ib_store_dir(s));
    c->lockfd = -1;
    int r;
    if ((r = ib_fs_mkdir_p(c->entries, 0755)) < 0 || (r = ib_fs_mkdir_p(c->steps, 0755)) < 0 ||
        (r = ib_fs_mkdir_p(c->index, 0755)) < 0) {
        ib_cache_free(c);
        return r;
    }
    *out = c;
    return 0;
}

void ib_cache_free(ib_cache *c)
{
    if (!c) return;
    if (c->lockfd >= 0) close(c->lockfd);
    free(c->entries);
    free(c->steps);
    free(c->index);
    free(c->lockfile);
    free(c);
}

static int lock(ib_cache *c, int op)
{
    if (c->lockfd < 0) c->lockfd = open(c->lockfile, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (c->lockfd < 0) return ib_error_errno(IB_ERR, "%s", c->lockfile);
    while (flock(c->lockfd, op) < 0)
        if (errno != EINTR) return ib_error_errno(IB_ERR, "lock %s", c->lockfile);
    return 0;
}

int ib_cache_lock_shared(ib_cache *c) { return lock(c, LOCK_SH); }

void ib_cache_key(char *out, const char *parent_chain, const char *compression, const char *entries_digest)
{
    char *t = ib_xasprintf("imgbuild-cache-v1\n%s\n%s\n%s\n", parent_chain, compression, entries_digest);
    ib_digest_buf(out, t, strlen(t));
    free(t);
}

void ib_cache_chain(char *out, char *const *diff_ids, size_t n)
{
    ib_digester *d = NULL;
    if (ib_digest_new(&d) < 0) abort();
    ib_digest_update(d, "chain\n", 6);
    for (size_t i = 0; i < n; i++) {
        ib_digest_update(d, diff_ids[i], strlen(diff_ids[i]));
        ib_digest_update(d, "\n", 1);
    }
    ib_digest_final(out, d);
    ib_digest_free(d);
}

static char *entry_path(ib_cache *c, const char *key) { return ib_xasprintf("%s/%s", c->entries, ib_digest_hex(key)); }

const char *ib_cache_sniff_layer_mt(const void *head, size_t n)
{
    const unsigned char *b = head;
    if (n >= 2 && b[0] == 0x1f && b[1] == 0x8b) return IB_MT_OCI_LAYER_GZIP;
    if (n >= 4 && !memcmp(b, "\x28\xb5\x2f\xfd", 4)) return IB_MT_OCI_LAYER_ZSTD;
    return IB_MT_OCI_LAYER;
}

struct head {
    unsigned char b[4];
    size_t n;
};

static int head_sink(void *ctx, const void *buf, size_t len)
{
    struct head *h = ctx;
    size_t k = len < sizeof h->b - h->n ? len : sizeof h->b - h->n;
    memcpy(h->b + h->n, buf, k);
    h->n += k;
    return 0;
}

int ib_cache_verify_layer_blob(const char **mt, ib_store *s, const char *digest)
{
    struct head h = {{0}, 0};
    int r = ib_store_stream_blob(s, digest, head_sink, &h);
    if (r == IB_ECORRUPT) {
        char *bp = ib_store_blob_path(s, digest);
        unlink(bp);
        free(bp);
    }
    if (r < 0) return r;
    *mt = ib_cache_sniff_layer_mt(h.b, h.n);
    return 0;
}

/* The checksum an entry carries over its fields and the key it is filed
 * under. An entry hand-edited, torn by a foreign writer or copied under
 * another key does not match it, and is never used: its diffID would go
 * into the image config unchecked (decompressing every hit to recompute
 * it would cost more than the hit saves). */
static void entry_check(char *out, const char *key, const char *mt, const char *dg, const char *di, json_int_t size,
                        const char *created_by)
{
    char *t = ib_xasprintf("imgbuild-cache-entry-v1\n%s\n%s\n%s\n%s\n%lld\n%zu:%s\n", key, mt, dg, di,
                           (long long)size, strlen(created_by), created_by);
    ib_digest_buf(out, t, strlen(t));
    free(t);
}

/* NULL when the entry can be used, else what is wrong with it. */
static const char *entry_damage(ib_cache *c, const char *key, json_t *j, uint64_t *have)
{
    if (!json_is_object(j)) return "not valid JSON";
    const char *dg = json_string_value(json_object_get(j, "digest"));
    const char *di = json_string_value(json_object_get(j, "diff_id"));
    const char *mt = json_string_value(json_object_get(j, "mediaType"));
    const char *cb = json_string_value(json_object_get(j, "created_by"));
    const char *ck = json_string_value(json_object_get(j, "check"));
    json_t *sz = json_object_get(j, "size");
    if (!dg || !di || !mt || !cb || !ib_digest_valid(dg) || !ib_digest_valid(di) || !json_is_integer(sz))
        return "fields missing";
    if (!ck) return "no checksum: written by an older imgbuild";
    char want[IB_DIGEST_STRLEN + 1];
    entry_check(want, key, mt, dg, di, json_integer_value(sz), cb);
    if (strcmp(ck, want)) return "checksum mismatch";
    const char *oci = ib_image_layer_mt_to_oci(mt);
    if (!oci) return "not a layer media type";
    /* An uncompressed layer is its own tar: diffID and digest are one. */
    if (!strcmp(oci, IB_MT_OCI_LAYER) && strcmp(dg, di)) return "diffID differs from the uncompressed layer's digest";
    if (!ib_store_has_blob(c->s, dg, have)) return "its layer blob is missing";
    if (*have != (uint64_t)json_integer_value(sz)) return "its layer blob has another size";
    /* A torn or damaged blob must never be used: hash it before trusting the
     * entry (the hash pass also shows its first bytes: the compression). */
    const char *real;
    if (ib_cache_verify_layer_blob(&real, c->s, dg) < 0) return "its layer blob is corrupt";
    if (strcmp(real, oci)) return "its layer blob is not compressed as its media type says";
    return NULL;
}

int ib_cache_get(ib_layer_result *res, char **damaged, ib_cache *c, const char *key)
{
    if (damaged) *damaged = NULL;
    char *p = entry_path(c, key), *txt;
    int r = ib_fs_read_all(&txt, NULL, p, 1 << 16);
    if (r < 0) {
        free(p);
        return r == IB_ENOTFOUND ? 0 : r;
    }
    json_t *j = json_loads(txt, 0, NULL);
    free(txt);
    uint64_t have = 0;
    const char *why = entry_damage(c, key, j, &have);
    if (why) {
        unlink(p);
        if (damaged) *damaged = ib_xasprintf("the cache entry was damaged (%s) and was removed", why);
        free(p);
        json_decref(j);
        return 0;
    }
    memset(res, 0, sizeof *res);
    memcpy(res->digest, json_string_value(json_object_get(j, "digest")), IB_DIGEST_STRLEN + 1);
    memcpy(res->diff_id, json_string_value(json_object_get(j, "diff_id")), IB_DIGEST_STRLEN + 1);
    res->size = have;
    res->media_type = ib_image_layer_mt_to_oci(json_string_value(json_object_get(j, "mediaType")));
    utimensat(AT_FDCWD, p, NULL, 0); /* last use, for prune */
    free(p);
    json_decref(j);
    return 1;
}

int ib_cache_put(ib_cache *c, const char *key, const ib_layer_result *res, const char *created_by)
{
    if (!created_by) created_by = "";
    char ck[IB_DIGEST_STRLEN + 1];
    entry_check(ck, key, res->media_type, res->digest, res->diff_id, (json_int_t)res->size, created_by);
    json_t *j = json_pack("{s:s,s:s,s:s,s:I,s:s,s:s}", "mediaType", res->media_type, "digest", res->digest, "diff_id",
                          res->diff_id, "size", (json_int_t)res->size, "created_by", created_by, "check", ck);
    char *txt = ib_json_dump(j);
    json_decref(j);
    char *p = entry_path(c, key);
    int r = ib_fs_write_atomic(p, txt, strlen(txt), 0644);
    free(p);
    free(txt);
    return r;
}

static char *step_path(ib_cache *c, const char *locator)
{
    char dg[IB_DIGEST_STRLEN + 1];
    ib_digest_buf(dg, locator, strlen(locator));
    return ib_xasprintf("%s/%s", c->steps, ib_digest_hex(dg));
}

int ib_cache_record(ib_cache *c, const char *locator, const char *inputs)
{
    char *p = step_path(c, locator);
    int r = ib_fs_write_atomic_if_changed(p, inputs, strlen(inputs), 0644);
    free(p);
    return r;
}

/* The recorded inputs are "name value" lines; some names repeat (argv, src,
 * bind), so inputs are compared per name as whole lists, never line by line
 * against the first line that happens to share the name. */
static int named(const char *line, const char *name)
{
    size_t nl = strlen(name);
    return !strncmp(line, name, nl) && line[nl] == ' ';
}

/* The values of every line called name, in order, one per line; NULL when
 * there is none. Caller frees. */
static char *values(char **lines, size_t n, const char *name)
{
    ib_strbuf sb = {0};
    int any = 0;
    for (size_t i = 0; i < n; i++)
        if (named(lines[i], name)) {
            ib_strbuf_addf(&sb, "%s\n", lines[i] + strlen(name) + 1);
            any = 1;
        }
    if (any && !sb.s) sb.s = ib_xstrdup("");
    return sb.s;
}

/* The value of the first line called name (single-valued inputs), or NULL. */
static const char *value(char **lines, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (named(lines[i], name)) return lines[i] + strlen(name) + 1;
    return NULL;
}

/* "src PATH [MODE] ID": a source (COPY/ADD: a file, link or dir with its
 * mode in the layer; RUN: a variable or a bind mount, without a mode). */
typedef struct {
    const char *path;
    size_t plen;
    const char *mode; /* 4 octal digits, or NULL */
    const char *id;
    const char *line;
} src_in;

static size_t parse_srcs(src_in **out, char **lines, size_t n)
{
    src_in *v = ib_xcalloc(n ? n : 1, sizeof *v);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (!named(lines[i], "src")) continue;
        const char *rest = lines[i] + 4, *sp = strrchr(rest, ' ');
        if (!sp) continue;
        src_in *s = &v[k++];
        s->line = lines[i];
        s->id = sp + 1;
        s->path = rest;
        s->plen = (size_t)(sp - rest);
        if (s->plen >= 6 && sp[-5] == ' ' && strspn(sp - 4, "01234567") >= 4) {
            s->mode = sp - 4;
            s->plen -= 5;
        }
    }
    *out = v;
    return k;
}

static int cmp_src(const void *x, const void *y)
{
    const src_in *a = x, *b = y;
    size_t m = a->plen < b->plen ? a->plen : b->plen;
    int c = memcmp(a->path, b->path, m);
    if (c) return c;
    if (a->plen != b->plen) return a->plen < b->plen ? -1 : 1;
    return strcmp(a->line, b->line);
}

static int same_path(const src_in *a, const src_in *b) { return a->plen == b->plen && !memcmp(a->path, b->path, a->plen); }

static size_t split_lines(char ***out, char *text)
{
    size_t n = 0, cap = 16;
    char **v = ib_xmalloc(cap * sizeof *v);
    for (char *save = NULL, *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        if (n == cap) v = ib_xrealloc(v, (cap *= 2) * sizeof *v);
        v[n++] = l;
    }
    *out = v;
    return n;
}

static const char *short_id(const char *v)
{
    /* "git:abc..." / "sha256:abc..." -> keep the scheme and 12 hex */
    static _Thread_local char buf[2][32];
    static _Thread_local int k;
    const char *colon = strchr(v, ':');
    k ^= 1;
    snprintf(buf[k], sizeof buf[k], "%.*s%.12s", colon ? (int)(colon - v + 1) : 0, v, colon ? colon + 1 : v);
    return buf[k];
}

typedef struct {
    const src_in *was, *now; /* was NULL: added; now NULL: removed */
} src_change;

static void src_note(ib_strbuf *sb, const src_change *d)
{
    const src_in *s = d->now ? d->now : d->was;
    const char *sep = sb->len ? ", " : "";
    if (!d->was) ib_strbuf_addf(sb, "%s%.*s added", sep, (int)s->plen, s->path);
    else if (!d->now) ib_strbuf_addf(sb, "%s%.*s removed", sep, (int)s->plen, s->path);
    else if (strcmp(d->was->id, d->now->id))
        ib_strbuf_addf(sb, "%s%.*s changed (%s -> %s)", sep, (int)s->plen, s->path, short_id(d->was->id),
                       short_id(d->now->id));
    else ib_strbuf_addf(sb, "%s%.*s mode changed (%.4s -> %.4s)", sep, (int)s->plen, s->path, d->was->mode, d->now->mode);
}

/* The sources that differ (content, mode, added, removed), at most three
 * named, changes and additions before removals; NULL when none differ.
 * Both lists are sorted and merged: a COPY of 100k files stays linear. */
static char *src_diff(char **a, size_t na, char **b, size_t nb)
{
    src_in *sa, *sb;
    size_t ka = parse_srcs(&sa, a, na), kb = parse_srcs(&sb, b, nb);
    if (ka) qsort(sa, ka, sizeof *sa, cmp_src);
    if (kb) qsort(sb, kb, sizeof *sb, cmp_src);
    src_change *d = ib_xcalloc(ka + kb + 1, sizeof *d);
    size_t nd = 0;
    for (size_t i = 0, j = 0; i < ka || j < kb;) {
        int c = i == ka ? 1 : j == kb ? -1 : cmp_src(&sa[i], &sb[j]);
        if (c && i < ka && j < kb && same_path(&sa[i], &sb[j])) c = 0; /* same source, other id or mode */
        if (c < 0) {
            d[nd++] = (src_change){&sa[i++], NULL};
        } else if (c > 0) {
            d[nd++] = (src_change){NULL, &sb[j++]};
        } else {
            const src_in *x = &sa[i++], *y = &sb[j++];
            /* a mode counts when both records have one (older ones do not) */
            if (strcmp(x->id, y->id) || (x->mode && y->mode && strncmp(x->mode, y->mode, 4)))
                d[nd++] = (src_change){x, y};
        }
    }
    char *res = NULL;
    if (nd) {
        ib_strbuf out = {0};
        size_t named_n = 0;
        for (int pass = 0; pass < 2; pass++)
            for (size_t k = 0; k < nd && named_n < 3; k++)
                if ((pass == 0) == (d[k].now != NULL)) {
                    src_note(&out, &d[k]);
                    named_n++;
                }
        if (nd > 3) ib_strbuf_addf(&out, " and %zu more changed", nd - 3);
        res = out.s;
    }
    free(d);
    free(sa);
    free(sb);
    return res;
}

static void fmt_time(char *out, size_t n, long long t, int date_only)
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (!gmtime_r(&tt, &tm)) snprintf(out, n, "%lld", t);
    else strftime(out, n, date_only ? "%Y-%m-%d" : "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* "gzip mtime=315532800": the algorithm and the layers' file time, which
 * only SOURCE_DATE_EPOCH (before 1980) moves. */
static char *compression_note(const char *ca, const char *cb)
{
    size_t la = strcspn(ca, " "), lb = strcspn(cb, " ");
    if (la != lb || strncmp(ca, cb, la)) return ib_xasprintf("compression changed (%.*s -> %.*s)", (int)la, ca, (int)lb, cb);
    const char *ma = strstr(ca, "mtime="), *mb = strstr(cb, "mtime=");
    if (!ma || !mb) return ib_xasprintf("compression changed (%s -> %s)", ca, cb);
    long long ta = strtoll(ma + 6, NULL, 10), tb = strtoll(mb + 6, NULL, 10);
    char fa[32], fb[32];
    int date_only = ta % 86400 == 0 && tb % 86400 == 0;
    fmt_time(fa, sizeof fa, ta, date_only);
    fmt_time(fb, sizeof fb, tb, date_only);
    return ib_xasprintf("SOURCE_DATE_EPOCH changed (layer file times %s -> %s)", fa, fb);
}

/* RUN's argv ("argv LEN:ARG" lines). With the instruction unchanged, a
 * different argv is a different SHELL: the words before the command. */
static char *argv_note(char **a, size_t na, char **b, size_t nb)
{
    char *va = values(a, na, "argv"), *vb = values(b, nb, "argv");
    char *res = NULL;
    if (va && vb && strcmp(va, vb)) {
        ib_strbuf sa = {0}, sb = {0};
        ib_strbuf *bufs[2] = {&sa, &sb};
        char **lines[2] = {a, b};
        size_t ns[2] = {na, nb};
        for (int s = 0; s < 2; s++) {
            size_t total = 0, k = 0;
            for (size_t i = 0; i < ns[s]; i++) total += named(lines[s][i], "argv");
            for (size_t i = 0; i < ns[s]; i++) {
                if (!named(lines[s][i], "argv") || ++k == total) continue; /* the command itself */
                const char *w = strchr(lines[s][i] + 5, ':');
                ib_strbuf_addf(bufs[s], "%s%s", bufs[s]->len ? " " : "", w ? w + 1 : lines[s][i] + 5);
            }
        }
        if (strcmp(sa.s ? sa.s : "", sb.s ? sb.s : ""))
            res = ib_xasprintf("SHELL changed (%.60s -> %.60s)", sa.s ? sa.s : "", sb.s ? sb.s : "");
        else
            res = ib_xstrdup("the command changed");
        free(sa.s);
        free(sb.s);
    }
    free(va);
    free(vb);
    return res;
}

char *ib_cache_explain(ib_cache *c, const char *locator, const char *inputs)
{
    char *p = step_path(c, locator), *old;
    int r = ib_fs_read_all(&old, NULL, p, 64 << 20);
    free(p);
    if (r < 0) return ib_xstrdup("first build of this step");
    char *now = ib_xstrdup(inputs);
    char **a, **b;
    size_t na = split_lines(&a, old), nb = split_lines(&b, now);
    char *res = NULL;
    const char *ka = value(a, na, "key"), *kb = value(b, nb, "key");
    /* Same key as the last build, which hit or wrote it: the entry has gone
     * since (a damaged one is reported by ib_cache_get instead). */
    if (ka && kb && !strcmp(ka, kb))
        res = ib_xstrdup("inputs unchanged, but the cached layer was pruned since the last build");
    if (!res) res = src_diff(a, na, b, nb);
    if (!res) {
        const char *ia = value(a, na, "instruction"), *ib = value(b, nb, "instruction");
        const char *pa = value(a, na, "parent"), *pb = value(b, nb, "parent");
        const char *ca = value(a, na, "compression"), *cb = value(b, nb, "compression");
        if (ia && ib && strcmp(ia, ib)) res = ib_xasprintf("instruction changed (was: %.80s)", ia);
        /* before the parent: a new file time changes every layer below too,
         * and is the cause worth naming on each step */
        else if (ca && cb && strcmp(ca, cb)) res = compression_note(ca, cb);
        else if (pa && pb && strcmp(pa, pb)) res = ib_xstrdup("an earlier step changed");
    }
    if (!res) res = argv_note(a, na, b, nb);
    /* Single-valued inputs, named with both values (USER, WORKDIR, the
     * network mode; COPY's resolved destination and --chown ids). */
    static const char *const single[] = {"user", "workdir", "network", "dest", "owner"};
    for (size_t k = 0; !res && k < sizeof single / sizeof *single; k++) {
        const char *va = value(a, na, single[k]), *vb = value(b, nb, single[k]);
        if (!va || !vb || !strcmp(va, vb)) continue;
        if (!strcmp(single[k], "user")) { /* USER unset is root */
            va = *va ? va : "root";
            vb = *vb ? vb : "root";
        }
        res = ib_xasprintf("%s changed (%.60s -> %.60s)", single[k], va, vb);
    }
    /* Any other input, compared as the list of its values. */
    static const char *const skip[] = {"src", "key", "entries", "instruction", "parent", "compression", "argv",
                                       "user", "workdir", "network", "dest", "owner"};
    for (size_t i = 0; !res && i < nb; i++) {
        size_t kl = strcspn(b[i], " ");
        char name[32];
        if (!b[i][kl] || kl >= sizeof name) continue;
        memcpy(name, b[i], kl);
        name[kl] = 0;
        int skipped = 0;
        for (size_t k = 0; k < sizeof skip / sizeof *skip && !skipped; k++) skipped = !strcmp(skip[k], name);
        if (skipped) continue;
        char *va = values(a, na, name), *vb = values(b, nb, name);
        if (va && vb && strcmp(va, vb))
            res = !strcmp(name, "script") ? ib_xstrdup("the heredoc script changed")
                  : !strcmp(name, "bind") ? ib_xstrdup("bind mounts changed")
                                          : ib_xasprintf("%s changed", name);
        free(va);
        free(vb);
    }
    if (!res) {
        const char *ea = value(a, na, "entries"), *eb = value(b, nb, "entries");
        if (ea && eb && strcmp(ea, eb))
            res = ib_xstrdup("the entries it writes changed (owners, modes or parent directories below it)");
    }
    if (!res)
        res = ib_xstrdup("inputs unchanged, but the layer is not in this cache (pruned, --no-cache or a new cache dir)");
    free(a);
    free(b);
    free(old);
    free(now);
    return res;
}

/* ---------- listing and pruning ---------- */

void ib_cache_entries_free(ib_cache_entry *e, size_t n)
{
    for (size_t i = 0; i < n; i++) free(e[i].created_by);
    free(e);
}

int ib_cache_list(ib_cache_entry **out, size_t *n, ib_cache *c)
{
    DIR *d = opendir(c->entries);
    if (!d) return ib_error_errno(IB_ERR, "%s", c->entries);
    ib_cache_entry *v = NULL;
    size_t cnt = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.' || strlen(de->d_name) != 64) continue;
        char *p = ib_xasprintf("%s/%s", c->entries, de->d_name), *txt;
        struct stat st;
        if (stat(p, &st) < 0 || ib_fs_read_all(&txt, NULL, p, 1 << 16) < 0) {
            free(p);
            continue;
        }
        free(p);
        json_t *j = json_loads(txt, 0, NULL);
        free(txt);
        const char *dg = json_string_value(json_object_get(j, "digest"));
        if (dg && ib_digest_valid(dg)) {
            v = ib_xrealloc(v, (cnt + 1) * sizeof *v);
            ib_cache_entry *e = &v[cnt++];
            memset(e, 0, sizeof *e);
            snprintf(e->key, sizeof e->key, "sha256:%s", de->d_name);
            memcpy(e->digest, dg, IB_DIGEST_STRLEN + 1);
            const char *cb = json_string_value(json_object_get(j, "created_by"));
            e->created_by = ib_xstrdup(cb ? cb : "");
            e->size = (uint64_t)json_integer_value(json_object_get(j, "size"));
            e->last_used = (int64_t)st.st_mtime;
        }
        json_decref(j);
    }
    closedir(d);
    *out = v;
    *n = cnt;
    return 0;
}

static int cmp_lru(const void *a, const void *b)
{
    const ib_cache_entry *x = a, *y = b;
    return x->last_used > y->last_used ? -1 : x->last_used < y->last_used; /* newest first */
}

typedef struct {
    char (*v)[IB_DIGEST_STRLEN + 1];
    size_t n;
} digest_set;

static void keep(digest_set *k, const char *d)
{
    k->v = ib_xrealloc(k->v, (k->n + 1) * sizeof *k->v);
    memcpy(k->v[k->n++], d, IB_DIGEST_STRLEN + 1);
}

static int kept(const digest_set *k, const char *hexname)
{
    for (size_t i = 0; i < k->n; i++)
        if (!strcmp(ib_digest_hex(k->v[i]), hexname)) return 1;
    return 0;
}

static uint64_t tree_bytes;
static int tree_bytes_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)path, (void)flag, (void)ftw;
    if (S_ISREG(st->st_mode)) tree_bytes += (uint64_t)st->st_blocks * 512;
    return 0;
}

/* Disk use of a tree (blocks, as du counts). Not thread-safe: the CLI and
 * prune call it with the store lock held. */
static uint64_t du_tree(const char *dir)
{
    tree_bytes = 0;
    nftw(dir, tree_bytes_cb, 16, FTW_PHYS);
    return tree_bytes;
}

/* Calls fn for each cache mount dir (not its .lock file). */
static void each_mount(ib_cache *c, void (*fn)(void *ud, const char *dir, const struct stat *st), void *ud)
{
    char *root = ib_xasprintf("%s/mounts", ib_store_dir(c->s));
    DIR *d = opendir(root);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.' || strchr(de->d_name, '.')) continue;
        char *p = ib_xasprintf("%s/%s", root, de->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) fn(ud, p, &st);
        free(p);
    }
    if (d) closedir(d);
    free(root);
}

struct mount_usage {
    uint64_t bytes;
    size_t n;
};

static void add_usage(void *ud, const char *dir, const struct stat *st)
{
    (void)st;
    struct mount_usage *u = ud;
    u->bytes += du_tree(dir);
    u->n++;
}

uint64_t ib_cache_mounts_usage(ib_cache *c, size_t *count)
{
    struct mount_usage u = {0, 0};
    each_mount(c, add_usage, &u);
    if (count) *count = u.n;
    return u.bytes;
}

struct mount_prune {
    const ib_prune_opts *o;
    int64_t now;
    ib_prune_result *res;
};

static void prune_mount(void *ud, const char *dir, const struct stat *st)
{
    struct mount_prune *mp = ud;
    if (!mp->o->all && !(mp->o->older_than_s && mp->now - (int64_t)st->st_mtime > mp->o->older_than_s)) return;
    uint64_t bytes = du_tree(dir);
    if (ib_fs_rm_rf(dir) < 0) {
        ib_error_clear();
        return;
    }
    char *lk = ib_xasprintf("%s.lock", dir);
    unlink(lk);
    free(lk);
    mp->res->mounts_removed++;
    mp->res->bytes_freed += bytes;
}

/* Saved layer indexes are derived data: they go with --all, with age, and
 * when a layer blob they describe is gone (a rebuild writes them again). */
static void prune_indexes(ib_cache *c, const ib_prune_opts *o, int64_t now)
{
    DIR *d = opendir(c->index);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        char *p = ib_xasprintf("%s/%s", c->index, de->d_name), *tag = NULL;
        if (de->d_name[0] == '.') {
            /* a save a killed build left half-written: prune holds the store
             * lock exclusively, so no build is writing one now */
            unlink(p);
            free(p);
            continue;
        }
        struct stat st;
        int drop = o->all || stat(p, &st) < 0 || (o->older_than_s && now - (int64_t)st.st_mtime > o->older_than_s) ||
                   ib_layer_index_saved_tag(&tag, p) < 0;
        for (char *l = tag; !drop && l && *l;) {
            char *nl = strchr(l, '\n');
            if (nl) *nl = 0;
            if (!strncmp(l, "blob ", 5) && !ib_store_has_blob(c->s, l + 5, NULL)) drop = 1;
            l = nl ? nl + 1 : NULL;
        }
        if (drop) unlink(p);
        ib_error_clear();
        free(tag);
        free(p);
    }
    if (d) closedir(d);
}

int ib_cache_prune(ib_prune_result *res, ib_cache *c, const ib_prune_opts *o)
{
    memset(res, 0, sizeof *res);
    int r = lock(c, LOCK_EX);
    if (r < 0) return r;
    ib_cache_entry *e;
    size_t n;
    if ((r = ib_cache_list(&e, &n, c)) < 0) goto unlock;
    if (n) qsort(e, n, sizeof *e, cmp_lru);
    int64_t now = (int64_t)time(NULL);
    uint64_t total = 0;
    digest_set k = {0};
    for (size_t i = 0; i < n; i++) {
        int drop = o->all || (o->older_than_s && now - e[i].last_used > o->older_than_s) ||
                   (o->keep_bytes && total + e[i].size > o->keep_bytes);
        if (drop) {
            char *p = entry_path(c, e[i].key);
            if (unlink(p) == 0) res->entries_removed++;
            free(p);
        } else {
            total += e[i].size;
            keep(&k, e[i].digest);
        }
    }
    ib_cache_entries_free(e, n);
    if (o->all) { /* the miss explanations go with the entries */
        ib_fs_rm_rf(c->steps);
        ib_fs_mkdir_p(c->steps, 0755);
    }
    /* Named images keep their manifest, config and layers. */
    char *refs = ib_xasprintf("%s/refs", ib_store_dir(c->s));
    DIR *d = opendir(refs);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        char *p = ib_xasprintf("%s/%s", refs, de->d_name), *txt;
        if (ib_fs_read_all(&txt, NULL, p, 4096) == 0) {
            txt[strcspn(txt, "\n")] = 0;
            ib_image *img;
            if (ib_digest_valid(txt) && ib_image_load(&img, c->s, txt) == 0) {
                keep(&k, img->digest);
                keep(&k, img->config_desc.digest);
                for (size_t i = 0; i < img->nlayers; i++) keep(&k, img->layers[i].digest);
                ib_image_free(img);
            }
            free(txt);
        }
        free(p);
    }
    if (d) closedir(d);
    free(refs);
    char *blobs = ib_xasprintf("%s/blobs/sha256", ib_store_dir(c->s));
    d = opendir(blobs);
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.' || kept(&k, de->d_name)) continue;
        char *p = ib_xasprintf("%s/%s", blobs, de->d_name);
        struct stat st;
        if (stat(p, &st) == 0 && unlink(p) == 0) {
            res->blobs_removed++;
            res->bytes_freed += (uint64_t)st.st_size;
        }
        free(p);
    }
    if (d) closedir(d);
    free(blobs);
    free(k.v);
    prune_indexes(c, o, now);
    struct mount_prune mp = {o, now, res};
    each_mount(c, prune_mount, &mp);
unlock:
    flock(c->lockfd, LOCK_UN);
    return r;
}
