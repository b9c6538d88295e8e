#include "build/cache.h"
#include "common/error.h"
#include "common/fs.h"
#include "oci/image.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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
    char *lockfile;
    int lockfd;
};

int ib_cache_open(ib_cache **out, ib_store *s)
{
    ib_cache *c = ib_xcalloc(1, sizeof *c);
    c->s = s;
    c->entries = ib_xasprintf("%s/cache/entries", ib_store_dir(s));
    c->steps = ib_xasprintf("%s/cache/steps", ib_store_dir(s));
    c->lockfile = ib_xasprintf("%s/lock", ib_store_dir(s));
    c->lockfd = -1;
    int r;
    if ((r = ib_fs_mkdir_p(c->entries, 0755)) < 0 || (r = ib_fs_mkdir_p(c->steps, 0755)) < 0) {
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

static int verify_sink(void *ctx, const void *buf, size_t len)
{
    (void)ctx;
    (void)buf;
    (void)len;
    return 0;
}

int ib_cache_get(ib_layer_result *res, ib_cache *c, const char *key)
{
    char *p = entry_path(c, key), *txt;
    int r = ib_fs_read_all(&txt, NULL, p, 1 << 16);
    if (r < 0) {
        free(p);
        return r == IB_ENOTFOUND ? 0 : r;
    }
    json_t *j = json_loads(txt, 0, NULL);
    free(txt);
    const char *dg = json_string_value(json_object_get(j, "digest"));
    const char *di = json_string_value(json_object_get(j, "diff_id"));
    const char *mt = json_string_value(json_object_get(j, "mediaType"));
    json_t *sz = json_object_get(j, "size");
    uint64_t have = 0;
    int ok = dg && di && mt && ib_digest_valid(dg) && ib_digest_valid(di) && json_is_integer(sz) &&
             ib_store_has_blob(c->s, dg, &have) && have == (uint64_t)json_integer_value(sz) &&
             ib_image_layer_mt_to_oci(mt);
    /* A torn or damaged blob must never be used: hash it before trusting the entry. */
    if (ok && ib_store_stream_blob(c->s, dg, verify_sink, NULL) < 0) {
        char *bp = ib_store_blob_path(c->s, dg);
        unlink(bp);
        free(bp);
        ok = 0;
    }
    if (!ok) {
        unlink(p);
        free(p);
        json_decref(j);
        return 0;
    }
    memset(res, 0, sizeof *res);
    memcpy(res->digest, dg, IB_DIGEST_STRLEN + 1);
    memcpy(res->diff_id, di, IB_DIGEST_STRLEN + 1);
    res->size = have;
    res->media_type = ib_image_layer_mt_to_oci(mt);
    utimensat(AT_FDCWD, p, NULL, 0); /* last use, for prune */
    free(p);
    json_decref(j);
    return 1;
}

int ib_cache_put(ib_cache *c, const char *key, const ib_layer_result *res, const char *created_by)
{
    json_t *j = json_pack("{s:s,s:s,s:s,s:I,s:s}", "mediaType", res->media_type, "digest", res->digest, "diff_id",
                          res->diff_id, "size", (json_int_t)res->size, "created_by", created_by ? created_by : "");
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

/* "name value" lines -> finds value for name (first match). */
static const char *line_value(char **lines, size_t n, const char *name, size_t nl)
{
    for (size_t i = 0; i < n; i++)
        if (!strncmp(lines[i], name, nl) && lines[i][nl] == ' ') return lines[i] + nl + 1;
    return NULL;
}

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

char *ib_cache_explain(ib_cache *c, const char *locator, const char *inputs)
{
    char *p = step_path(c, locator), *old;
    int r = ib_fs_read_all(&old, NULL, p, 64 << 20);
    free(p);
    if (r < 0) return ib_xstrdup("first build of this step");
    char *now = ib_xstrdup(inputs);
    char **a, **b;
    size_t na = split_lines(&a, old), nb = split_lines(&b, now);
    char out[600] = "";
    size_t changed = 0;
    /* sources: "src <path> <id>" */
    for (size_t i = 0; i < nb; i++) {
        if (strncmp(b[i], "src ", 4)) continue;
        const char *sp = strrchr(b[i], ' ');
        size_t keylen = (size_t)(sp - b[i]);
        const char *was = line_value(a, na, b[i], keylen);
        if (was && !strcmp(was, sp + 1)) continue;
        if (changed++ < 3) {
            size_t ol = strlen(out);
            if (was)
                snprintf(out + ol, sizeof out - ol, "%s%.*s changed (%s -> %s)", ol ? ", " : "", (int)(keylen - 4),
                         b[i] + 4, short_id(was), short_id(sp + 1));
            else
                snprintf(out + ol, sizeof out - ol, "%s%.*s added", ol ? ", " : "", (int)(keylen - 4), b[i] + 4);
        }
    }
    for (size_t i = 0; i < na; i++) {
        if (strncmp(a[i], "src ", 4)) continue;
        const char *sp = strrchr(a[i], ' ');
        size_t keylen = (size_t)(sp - a[i]);
        if (line_value(b, nb, a[i], keylen)) continue;
        if (changed++ < 3) {
            size_t ol = strlen(out);
            snprintf(out + ol, sizeof out - ol, "%s%.*s removed", ol ? ", " : "", (int)(keylen - 4), a[i] + 4);
        }
    }
    char *res;
    if (changed > 3) res = ib_xasprintf("%s and %zu more changed", out, changed - 3);
    else if (changed) res = ib_xstrdup(out);
    else {
        const char *ia = line_value(a, na, "instruction", 11), *ib = line_value(b, nb, "instruction", 11);
        const char *pa = line_value(a, na, "parent", 6), *pb = line_value(b, nb, "parent", 6);
        const char *ca = line_value(a, na, "compression", 11), *cb = line_value(b, nb, "compression", 11);
        const char *other = NULL;
        /* any other recorded input ("user", "workdir", "network", "argv"...) that differs */
        for (size_t i = 0; i < nb && !other; i++) {
            const char *sp = strchr(b[i], ' ');
            if (!sp) continue;
            size_t kl = (size_t)(sp - b[i]);
            const char *was = line_value(a, na, b[i], kl);
            if (!was || strcmp(was, sp + 1)) other = b[i];
        }
        if (ia && ib && strcmp(ia, ib)) res = ib_xasprintf("instruction changed (was: %.80s)", ia);
        else if (pa && pb && strcmp(pa, pb)) res = ib_xstrdup("an earlier step changed");
        else if (ca && cb && strcmp(ca, cb)) res = ib_xasprintf("compression changed (%s -> %s)", ca, cb);
        else if (other) res = ib_xasprintf("%.*s changed", (int)strcspn(other, " "), other);
        else res = ib_xstrdup("inputs unchanged, but the layer is not in this cache (pruned, --no-cache or a new cache dir)");
    }
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
unlock:
    flock(c->lockfd, LOCK_UN);
    return r;
}
