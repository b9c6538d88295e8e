#include "layer/writer.h"
#include "common/error.h"
#include "common/fs.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *path;
    ib_le_type type;
    unsigned mode, uid, gid;
    uint64_t size;
    char *link;
    char *content_id;
    void *src;
    char *src_path;
    ib_layer_content_fn content;
    char *hardlink;
    unsigned char *xattrs;
    size_t xattrs_len;
    size_t seq;
} entry;

struct ib_layer_builder {
    entry *v;
    size_t n, cap;
    size_t seq;
    ib_layer_parent_fn parent_fn;
    void *parent_ctx;
    int prepared;
};

void ib_layer_set_parent_meta(ib_layer_builder *b, ib_layer_parent_fn fn, void *ctx)
{
    b->parent_fn = fn;
    b->parent_ctx = ctx;
}

ib_layer_builder *ib_layer_builder_new(void) { return ib_xcalloc(1, sizeof(ib_layer_builder)); }

static void entry_clear(entry *e)
{
    free(e->path);
    free(e->link);
    free(e->content_id);
    free(e->src_path);
    free(e->hardlink);
    free(e->xattrs);
}

void ib_layer_builder_free(ib_layer_builder *b)
{
    if (!b) return;
    for (size_t i = 0; i < b->n; i++) entry_clear(&b->v[i]);
    free(b->v);
    free(b);
}

size_t ib_layer_count(const ib_layer_builder *b) { return b->n; }

/* Normalises "./a//b/" to "a/b"; NULL for the root or a path climbing out. */
static char *norm_path(const char *p)
{
    char *c = ib_fs_path_clean(p, 0);
    if (c && !*c) {
        free(c);
        return NULL;
    }
    return c;
}

static void push(ib_layer_builder *b, entry *e)
{
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 64;
        b->v = ib_xrealloc(b->v, b->cap * sizeof *b->v);
    }
    e->seq = b->seq++;
    b->v[b->n++] = *e;
}

int ib_layer_add(ib_layer_builder *b, const ib_layer_entry *in)
{
    char *p = norm_path(in->path);
    if (!p) return ib_error_set(IB_EINVALID, "invalid layer path '%s'", in->path);
    if (in->type == IB_LE_WHITEOUT) {
        /* Keep the on-disk name (".wh.<name>") as the path, so sorting puts
         * whiteouts where they are written: before their siblings. */
        char *slash = strrchr(p, '/');
        char *wh = slash ? ib_xasprintf("%.*s/.wh.%s", (int)(slash - p), p, slash + 1) : ib_xasprintf(".wh.%s", p);
        free(p);
        p = wh;
    }
    b->prepared = 0;
    entry e = {.path = p,
               .type = in->type,
               .mode = in->mode & 07777,
               .uid = in->uid,
               .gid = in->gid,
               .size = in->size,
               .link = in->link ? ib_xstrdup(in->link) : NULL,
               .content_id = in->content_id ? ib_xstrdup(in->content_id) : NULL,
               .src = in->src,
               .src_path = in->src_path ? ib_xstrdup(in->src_path) : NULL,
               .content = in->content,
               .hardlink = in->hardlink ? norm_path(in->hardlink) : NULL,
               .xattrs_len = in->xattrs ? in->xattrs_len : 0};
    if (e.xattrs_len) {
        e.xattrs = ib_xmalloc(e.xattrs_len);
        memcpy(e.xattrs, in->xattrs, e.xattrs_len);
    }
    push(b, &e);
    return 0;
}

int ib_layer_has(const ib_layer_builder *b, const char *path)
{
    for (size_t i = 0; i < b->n; i++)
        if (!strcmp(b->v[i].path, path)) return 1;
    return 0;
}

static int cmp_entry(const void *a, const void *b)
{
    const entry *x = a, *y = b;
    int c = strcmp(x->path, y->path);
    if (c) return c;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* ---- the tar -> diffID -> compressor -> digest -> store pipeline ---- */

struct pipe {
    ib_digester *diff;
    ib_compressor *comp;
    ib_blob_writer *blob;
    uint64_t tar_size;
    int err;
};

static int comp_sink(void *ctx, const void *buf, size_t len)
{
    struct pipe *p = ctx;
    return ib_blob_write(p->blob, buf, len);
}

static la_ssize_t tar_write_cb(struct archive *a, void *ctx, const void *buf, size_t len)
{
    struct pipe *p = ctx;
    ib_digest_update(p->diff, buf, len);
    p->tar_size += len;
    int r = ib_compress_write(p->comp, buf, len);
    if (r < 0) {
        p->err = r;
        archive_set_error(a, EIO, "%s", ib_error_last());
        return -1;
    }
    return (la_ssize_t)len;
}

struct data_ctx {
    struct archive *a;
    uint64_t written;
    uint64_t want;
    const char *path;
    ib_digester *check; /* hashes what goes into the tar, when the key holds a sha256 of it */
};

static int changed_while_read(const char *path)
{
    return ib_error_set(IB_ERR, "%s changed while the build read it; build again", path);
}

static int data_sink(void *ctx, const void *buf, size_t len)
{
    struct data_ctx *d = ctx;
    if (d->written + len > d->want) return changed_while_read(d->path);
    if (d->check) ib_digest_update(d->check, buf, len);
    if (archive_write_data(d->a, buf, len) != (la_ssize_t)len)
        return ib_error_set(IB_ERR, "layer tar: %s", archive_error_string(d->a));
    d->written += len;
    return 0;
}

static int write_entry(struct archive *a, struct archive_entry *ae, const entry *e, int64_t epoch)
{
    archive_entry_clear(ae);
    if (e->type == IB_LE_WHITEOUT) {
        /* OCI image-spec layer.md: a whiteout is an empty regular file named .wh.<name>. */
        archive_entry_set_pathname(ae, e->path);
        archive_entry_set_filetype(ae, AE_IFREG);
        archive_entry_set_perm(ae, 0644);
        archive_entry_set_size(ae, 0);
    } else {
        archive_entry_set_pathname(ae, e->path);
        archive_entry_set_perm(ae, (mode_t)e->mode);
        switch (e->type) {
        case IB_LE_DIR:
            archive_entry_set_filetype(ae, AE_IFDIR);
            archive_entry_set_size(ae, 0);
            break;
        case IB_LE_SYMLINK:
            archive_entry_set_filetype(ae, AE_IFLNK);
            archive_entry_set_symlink(ae, e->link);
            archive_entry_set_size(ae, 0);
            break;
        default:
            archive_entry_set_filetype(ae, AE_IFREG);
            archive_entry_set_size(ae, e->hardlink ? 0 : (la_int64_t)e->size);
            if (e->hardlink) archive_entry_set_hardlink(ae, e->hardlink);
            break;
        }
        /* pax SCHILY.xattr records, in name order: part of the layer's bytes */
        for (size_t o = 0; o < e->xattrs_len;) {
            const char *name = (const char *)e->xattrs + o;
            size_t nl = strnlen(name, e->xattrs_len - o);
            if (o + nl + 5 > e->xattrs_len) break;
            const unsigned char *lp = e->xattrs + o + nl + 1;
            size_t vl = (size_t)lp[0] << 24 | (size_t)lp[1] << 16 | (size_t)lp[2] << 8 | lp[3];
            if (o + nl + 5 + vl > e->xattrs_len) break;
            archive_entry_xattr_add_entry(ae, name, lp + 4, vl);
            o += nl + 5 + vl;
        }
    }
    archive_entry_set_uid(ae, e->uid);
    archive_entry_set_gid(ae, e->gid);
    archive_entry_set_mtime(ae, epoch, 0);
    /* WARN: "can't translate pathname to UTF-8", written as raw bytes (above) */
    if (archive_write_header(a, ae) < ARCHIVE_WARN)
        return ib_error_set(IB_ERR, "layer tar: %s: %s", e->path, archive_error_string(a));
    if (e->type == IB_LE_FILE && e->size > 0 && !e->hardlink) {
        struct data_ctx d = {a, 0, e->size, e->src_path ? e->src_path : e->path, NULL};
        /* The cache key was computed from a sha256 of the bytes read earlier
         * (worktree files, other stages, archives): the bytes that go into the
         * layer must be those, or a file edited during the build would leave
         * an entry whose key names content its layer does not hold (BuildKit
         * keys on the same bytes it copies). Git blob ids name immutable
         * objects, so commit builds pay nothing here. */
        int r = 0;
        if (e->content_id && !strncmp(e->content_id, "sha256:", 7)) r = ib_digest_new(&d.check);
        if (r == 0) r = e->content(e->src, e->src_path, data_sink, &d);
        if (r == 0 && d.written != e->size) r = changed_while_read(d.path);
        if (r == 0 && d.check) {
            char got[IB_DIGEST_STRLEN + 1];
            ib_digest_final(got, d.check);
            if (strcmp(got, e->content_id)) r = changed_while_read(d.path);
        }
        ib_digest_free(d.check);
        if (r < 0) return r;
    }
    return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int cmp_key_entry(const void *key, const void *el) { return strcmp(key, ((const entry *)el)->path); }

/* Adds the missing parent directories of every entry (0755, root) so that
 * extractors never have to invent them with their own defaults. Expects b
 * sorted by path; leaves it unsorted. */
static void add_parents(ib_layer_builder *b)
{
    char **cand = NULL;
    size_t nc = 0, cap = 0;
    for (size_t i = 0; i < b->n; i++) {
        const char *path = b->v[i].path;
        for (const char *s = strchr(path, '/'); s; s = strchr(s + 1, '/')) {
            if (nc == cap) {
                cap = cap ? cap * 2 : 64;
                cand = ib_xrealloc(cand, cap * sizeof *cand);
            }
            cand[nc++] = ib_xstrndup(path, (size_t)(s - path));
        }
    }
    if (!nc) return;
    qsort(cand, nc, sizeof *cand, cmp_str);
    size_t n0 = b->n;
    for (size_t i = 0; i < nc; i++) {
        int dup = i > 0 && !strcmp(cand[i], cand[i - 1]);
        if (!dup && !bsearch(cand[i], b->v, n0, sizeof *b->v, cmp_key_entry)) {
            entry e = {.path = ib_xstrdup(cand[i]), .type = IB_LE_DIR, .mode = 0755};
            if (b->parent_fn) b->parent_fn(b->parent_ctx, cand[i], &e.mode, &e.uid, &e.gid);
            push(b, &e);
        }
    }
    for (size_t i = 0; i < nc; i++) free(cand[i]);
    free(cand);
}

static void prepare(ib_layer_builder *b)
{
    if (b->prepared) return;
    b->prepared = 1;
    /* Sort first so the parent lookup below can be a binary search. */
    if (b->n) qsort(b->v, b->n, sizeof *b->v, cmp_entry);
    {
        /* dedupe: keep the last of each path */
        size_t w = 0;
        for (size_t i = 0; i < b->n; i++) {
            if (i + 1 < b->n && !strcmp(b->v[i].path, b->v[i + 1].path)) {
                entry_clear(&b->v[i]);
                continue;
            }
            b->v[w++] = b->v[i];
        }
        b->n = w;
    }
    add_parents(b);
    if (b->n) qsort(b->v, b->n, sizeof *b->v, cmp_entry);
}

void ib_layer_builder_digest(char *out, ib_layer_builder *b)
{
    prepare(b);
    ib_digester *d = NULL;
    if (ib_digest_new(&d) < 0) abort();
    for (size_t i = 0; i < b->n; i++) {
        const entry *e = &b->v[i];
        char line[256];
        int n = snprintf(line, sizeof line, "%d %o %u %u %llu ", (int)e->type, e->mode, e->uid, e->gid,
                         (unsigned long long)e->size);
        ib_digest_update(d, line, (size_t)n);
        /* lengths first, so no two different entry lists hash the same text */
        char xd[IB_DIGEST_STRLEN + 1] = "";
        if (e->xattrs_len) ib_digest_buf(xd, e->xattrs, e->xattrs_len);
        const char *parts[] = {e->path, e->link ? e->link : "", e->content_id ? e->content_id : "",
                               e->hardlink ? e->hardlink : "", xd};
        for (int k = 0; k < 5; k++) {
            n = snprintf(line, sizeof line, "%zu:", strlen(parts[k]));
            ib_digest_update(d, line, (size_t)n);
            ib_digest_update(d, parts[k], strlen(parts[k]));
        }
        ib_digest_update(d, "\n", 1);
    }
    ib_digest_final(out, d);
    ib_digest_free(d);
}

int ib_layer_write(ib_layer_result *res, ib_layer_builder *b, ib_store *s, ib_comp_algo algo, int threads,
                   int64_t epoch)
{
    memset(res, 0, sizeof *res);
    prepare(b);

    struct pipe p = {0};
    int r = ib_digest_new(&p.diff);
    if (r < 0) return r;
    if ((r = ib_store_blob_begin(&p.blob, s)) < 0) {
        ib_digest_free(p.diff);
        return r;
    }
    if ((r = ib_compress_new(&p.comp, algo, 0, threads, comp_sink, &p)) < 0) {
        ib_store_blob_abort(p.blob);
        ib_digest_free(p.diff);
        return r;
    }
    struct archive *a = archive_write_new();
    struct archive_entry *ae = archive_entry_new();
    archive_write_set_format_pax_restricted(a);
    /* Names are bytes (git stores bytes). imgbuild never calls setlocale, so
     * libarchive converts names from the C locale, whatever the environment:
     * an ASCII name gets a plain ustar header, any other one a pax header
     * with hdrcharset=BINARY and the bytes as they are (write_entry accepts
     * that ARCHIVE_WARN). Setting hdrcharset=BINARY for the whole archive
     * would put a pax header on every entry: 1 KiB more per file, and a
     * warning per entry from GNU tar. */
    if (archive_write_open2(a, &p, NULL, tar_write_cb, NULL, NULL) != ARCHIVE_OK) {
        r = ib_error_set(IB_ERR, "layer tar: %s", archive_error_string(a));
        goto out;
    }
    for (size_t i = 0; i < b->n && r == 0; i++) r = write_entry(a, ae, &b->v[i], epoch);
    if (r == 0 && archive_write_close(a) != ARCHIVE_OK)
        r = p.err ? p.err : ib_error_set(IB_ERR, "layer tar: %s", archive_error_string(a));
    if (r == 0) r = ib_compress_finish(p.comp);
out:
    archive_entry_free(ae);
    archive_write_free(a);
    ib_compress_free(p.comp);
    if (r < 0) {
        ib_store_blob_abort(p.blob);
        ib_digest_free(p.diff);
        return r;
    }
    ib_digest_final(res->diff_id, p.diff);
    ib_digest_free(p.diff);
    res->tar_size = p.tar_size;
    res->nentries = b->n;
    res->media_type = ib_compress_media_type(algo);
    return ib_store_blob_commit(res->digest, &res->size, p.blob, NULL);
}
