#include "layer/index.h"
#include "common/error.h"
#include "common/fs.h"
#include "common/strbuf.h"
#include "oci/digest.h"

#include <archive.h>
#include <archive_entry.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *path;
    ib_lx_kind kind;  /* IB_LX_DIR or IB_LX_SYMLINK */
    char *link;       /* symlinks: the target, as written */
    unsigned mode, uid, gid;
    unsigned layer; /* index of the layer that wrote it (opaque markers only hide lower ones) */
} dent;

/* continuity's maxSymlinkLimit: RootPath gives up on a loop after 255 links. */
#define MAX_LINKS 255

struct ib_layer_index {
    dent *v; /* open addressing; path NULL = empty, path "" = tombstone */
    size_t cap, n;
    unsigned layers;
};

static size_t hash(const char *s)
{
    size_t h = 1469598103934665603u;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211u;
    return h;
}

ib_layer_index *ib_layer_index_new(void)
{
    ib_layer_index *x = ib_xcalloc(1, sizeof *x);
    x->cap = 256;
    x->v = ib_xcalloc(x->cap, sizeof *x->v);
    return x;
}

void ib_layer_index_free(ib_layer_index *x)
{
    if (!x) return;
    for (size_t i = 0; i < x->cap; i++) {
        free(x->v[i].path);
        free(x->v[i].link);
    }
    free(x->v);
    free(x);
}

static dent *find(const ib_layer_index *x, const char *p)
{
    for (size_t i = hash(p) & (x->cap - 1), k = 0; k < x->cap; i = (i + 1) & (x->cap - 1), k++) {
        if (!x->v[i].path) return NULL;
        if (*x->v[i].path && !strcmp(x->v[i].path, p)) return &x->v[i];
    }
    return NULL;
}

/* The slot for p: its entry, or a fresh one (path set, the rest zero). */
static dent *slot(ib_layer_index *x, const char *p);

static void grow(ib_layer_index *x)
{
    dent *old = x->v;
    size_t oc = x->cap;
    x->cap *= 2;
    x->v = ib_xcalloc(x->cap, sizeof *x->v);
    x->n = 0;
    for (size_t i = 0; i < oc; i++) {
        if (old[i].path && *old[i].path) {
            dent *d = slot(x, old[i].path);
            char *path = d->path;
            *d = old[i];
            d->path = path;
        } else {
            free(old[i].link);
        }
        free(old[i].path);
    }
    free(old);
}

static dent *slot(ib_layer_index *x, const char *p)
{
    dent *d = find(x, p);
    if (d) return d;
    if ((x->n + 1) * 2 > x->cap) grow(x);
    size_t i = hash(p) & (x->cap - 1);
    while (x->v[i].path && *x->v[i].path) i = (i + 1) & (x->cap - 1);
    free(x->v[i].path);
    d = &x->v[i];
    *d = (dent){.path = ib_xstrdup(p)};
    x->n++;
    return d;
}

static void put(ib_layer_index *x, const char *p, ib_lx_kind kind, const char *link, unsigned mode, unsigned uid,
                unsigned gid, unsigned layer)
{
    dent *d = slot(x, p);
    free(d->link);
    d->kind = kind;
    d->link = link ? ib_xstrdup(link) : NULL;
    d->mode = mode;
    d->uid = uid;
    d->gid = gid;
    d->layer = layer;
}

static void tombstone(ib_layer_index *x, dent *d)
{
    free(d->path);
    free(d->link);
    d->link = NULL;
    d->path = ib_xstrdup(""); /* tombstone keeps probe chains intact */
    x->n--;
}

static void del(ib_layer_index *x, const char *p)
{
    dent *d = find(x, p);
    if (d) tombstone(x, d);
}

/* Removes everything strictly below dir written by layers before `layer`. */
static void del_below(ib_layer_index *x, const char *dir, unsigned before_layer)
{
    size_t n = strlen(dir);
    for (size_t i = 0; i < x->cap; i++) {
        dent *d = &x->v[i];
        if (!d->path || !*d->path || d->layer >= before_layer) continue;
        if (n == 0 || (!strncmp(d->path, dir, n) && d->path[n] == '/')) tombstone(x, d);
    }
}

static int index_link(void *ctx, const char *resolved, char **target)
{
    const dent *d = ctx ? find(ctx, resolved) : NULL;
    if (!d || d->kind != IB_LX_SYMLINK) return 0;
    *target = ib_xstrdup(d->link);
    return 1;
}

int ib_layer_index_resolve(char **out, const ib_layer_index *x, const char *path)
{
    int r = ib_fs_resolve_links(out, path, 1, MAX_LINKS, index_link, (void *)x);
    if (r < 0) {
        free(*out);
        *out = NULL;
    }
    return r;
}

ib_lx_kind ib_layer_index_kind(const ib_layer_index *x, const char *path, const char **target)
{
    const dent *d = find(x, path);
    if (!d) return IB_LX_NONE;
    if (target) *target = d->link;
    return d->kind;
}

/* A layer may hold "usr/local/bin/tool" with no entry for usr/local/bin:
 * the applier then makes the missing directories 0755 root:root (as
 * containerd does). They exist below later steps all the same, so they are
 * recorded as that: a WORKDIR or COPY must not think them absent and put
 * them in its layer with another owner. */
static void implicit_parents(ib_layer_index *x, char *dir, unsigned layer)
{
    if (!*dir) return;
    for (char *q = dir;; q++) {
        if (*q && *q != '/') continue;
        char c = *q;
        *q = 0;
        if (!find(x, dir)) put(x, dir, IB_LX_DIR, NULL, 0755, 0, 0, layer);
        *q = c;
        if (!c) break;
    }
}

int ib_layer_index_add(ib_layer_index *x, const char *blob_path)
{
    struct archive *a = archive_read_new();
    archive_read_support_filter_all(a);
    archive_read_support_format_tar(a);
    archive_read_support_format_gnutar(a);
    if (archive_read_open_filename(a, blob_path, 1 << 16) != ARCHIVE_OK) {
        int r = ib_error_set(IB_ERR, "%s: %s", blob_path, archive_error_string(a));
        archive_read_free(a);
        return r;
    }
    unsigned layer = ++x->layers;
    struct archive_entry *e;
    int st, r = 0;
    /* ARCHIVE_WARN: a name libarchive cannot convert to our (C) locale, such
     * as a UTF-8 pax path in a Go-written layer (Debian's ca-certificates
     * has "Főtanúsítvány.crt"); it keeps the raw bytes, which is the name. */
    while ((st = archive_read_next_header(a, &e)) == ARCHIVE_OK || st == ARCHIVE_WARN) {
        const char *name = archive_entry_pathname(e);
        char *clean = ib_fs_path_clean(name ? name : "", 1);
        char *slash = strrchr(clean, '/');
        const char *base = slash ? slash + 1 : clean;
        char *dir = slash ? ib_xstrndup(clean, (size_t)(slash - clean)) : ib_xstrdup("");
        /* The applier (layer/apply.c, like containerd) opens an entry's parent
         * with the symlinks below followed inside the root: "bin/x" over a
         * "bin -> usr/bin" link lands in usr/bin. A parent that loops is an
         * error there; here it is taken literally (the index only advises). */
        char *rdir;
        if (ib_layer_index_resolve(&rdir, x, dir) < 0) rdir = ib_xstrdup(dir);
        char *p = *rdir ? ib_xasprintf("%s/%s", rdir, base) : ib_xstrdup(base);
        implicit_parents(x, rdir, layer);
        if (!strcmp(base, ".wh..wh..opq")) {
            del_below(x, rdir, layer);
        } else if (!strncmp(base, ".wh.", 4)) {
            char *victim = *rdir ? ib_xasprintf("%s/%s", rdir, base + 4) : ib_xstrdup(base + 4);
            del(x, victim);
            del_below(x, victim, layer + 1);
            free(victim);
        } else if (*base) {
            int type = archive_entry_filetype(e);
            const dent *old = find(x, p);
            /* A directory over a directory merges with it; anything else
             * replaces what was there, with everything below it. */
            if (old && !(type == AE_IFDIR && old->kind == IB_LX_DIR)) {
                del(x, p);
                del_below(x, p, layer + 1);
            }
            const char *link = archive_entry_symlink(e);
            if (type == AE_IFDIR)
                put(x, p, IB_LX_DIR, NULL, archive_entry_perm(e) & 07777, (unsigned)archive_entry_uid(e),
                    (unsigned)archive_entry_gid(e), layer);
            else if (type == AE_IFLNK && link && *link)
                put(x, p, IB_LX_SYMLINK, link, 0777, (unsigned)archive_entry_uid(e), (unsigned)archive_entry_gid(e),
                    layer);
        }
        free(p);
        free(rdir);
        free(dir);
        free(clean);
    }
    if (st != ARCHIVE_EOF) r = ib_error_set(IB_ERR, "%s: %s", blob_path, archive_error_string(a));
    archive_read_free(a);
    return r;
}

int ib_layer_index_dir(const ib_layer_index *x, const char *path, unsigned *mode, unsigned *uid, unsigned *gid)
{
    dent *d = find(x, path);
    if (!d || d->kind != IB_LX_DIR) return 0;
    *mode = d->mode;
    *uid = d->uid;
    *gid = d->gid;
    return 1;
}

int ib_layer_diff_id(char *out, const char *blob_path)
{
    struct archive *a = archive_read_new();
    archive_read_support_filter_all(a);
    archive_read_support_format_raw(a);
    struct archive_entry *e;
    int r = 0;
    if (archive_read_open_filename(a, blob_path, 1 << 16) != ARCHIVE_OK || archive_read_next_header(a, &e) != ARCHIVE_OK) {
        r = ib_error_set(IB_EINVALID, "%s: %s", blob_path, archive_error_string(a));
        archive_read_free(a);
        return r;
    }
    ib_digester *d = NULL;
    if ((r = ib_digest_new(&d)) < 0) {
        archive_read_free(a);
        return r;
    }
    static _Thread_local char buf[1 << 17];
    for (;;) {
        la_ssize_t n = archive_read_data(a, buf, sizeof buf);
        if (n < 0) {
            r = ib_error_set(IB_EINVALID, "%s: %s", blob_path, archive_error_string(a));
            break;
        }
        if (n == 0) break;
        ib_digest_update(d, buf, (size_t)n);
    }
    if (r == 0) ib_digest_final(out, d);
    ib_digest_free(d);
    archive_read_free(a);
    return r;
}

/* ---------- saved indexes ---------- */

#define SAVE_MAGIC "imgbuild-layer-index-v2\n" /* v2: implicit parent dirs recorded */

int ib_layer_index_save(const ib_layer_index *x, const char *path, const char *tag)
{
    ib_strbuf sb = {0};
    ib_strbuf_addf(&sb, SAVE_MAGIC "tag %zu:%s\nlayers %u entries %zu\n", strlen(tag), tag, x->layers, x->n);
    for (size_t i = 0; i < x->cap; i++) {
        const dent *d = &x->v[i];
        if (!d->path || !*d->path) continue;
        const char *l = d->link ? d->link : "";
        ib_strbuf_addf(&sb, "%c %o %u %u %u %zu:%s %zu:%s\n", d->kind == IB_LX_DIR ? 'd' : 'l', d->mode, d->uid, d->gid,
                       d->layer, strlen(d->path), d->path, strlen(l), l);
    }
    char ck[IB_DIGEST_STRLEN + 1];
    ib_digest_buf(ck, sb.s, sb.len);
    ib_strbuf_addf(&sb, "check %s\n", ck);
    int r = ib_fs_write_atomic(path, sb.s, sb.len, 0644);
    free(sb.s);
    return r;
}

/* An unsigned number (base 10 or 8) at *p: digits only, no sign, no
 * blanks, at most max; advances *p past it. */
static int take_num(unsigned long long *v, const char **p, const char *end, int base, unsigned long long max)
{
    const char *q = *p;
    unsigned long long n = 0;
    if (q >= end || *q < '0' || *q >= '0' + base) return -1;
    for (; q < end && *q >= '0' && *q < '0' + base; q++) {
        if (n > (max - (unsigned)(*q - '0')) / (unsigned)base) return -1;
        n = n * (unsigned)base + (unsigned)(*q - '0');
    }
    *v = n;
    *p = q;
    return 0;
}

static int take_lit(const char **p, const char *end, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(end - *p) < n || memcmp(*p, lit, n)) return -1;
    *p += n;
    return 0;
}

/* "<len>:<bytes>" at *p (bytes may hold anything but NUL); advances *p. */
static char *take_counted(const char **p, const char *end)
{
    const char *q = *p;
    unsigned long long n;
    if (take_num(&n, &q, end, 10, (unsigned long long)(end - *p)) < 0 || take_lit(&q, end, ":") < 0 ||
        n > (unsigned long long)(end - q) || memchr(q, 0, (size_t)n))
        return NULL;
    char *s = ib_xstrndup(q, (size_t)n);
    *p = q + n;
    return s;
}

/* The text after the magic line, parsed strictly and in one pass (a saved
 * index of a big base has hundreds of thousands of lines). */
static int load_body(ib_layer_index *x, char **tag, const char *text, size_t len)
{
    const char *p = text, *end = text + len;
    unsigned long long layers, n, kind_mode, v[4];
    if (take_lit(&p, end, SAVE_MAGIC "tag ") < 0) return -1;
    if (!(*tag = take_counted(&p, end))) return -1;
    if (take_lit(&p, end, "\nlayers ") < 0 || take_num(&layers, &p, end, 10, 0xffffffffULL) < 0 ||
        take_lit(&p, end, " entries ") < 0 || take_num(&n, &p, end, 10, len) < 0 || take_lit(&p, end, "\n") < 0)
        return -1;
    x->layers = (unsigned)layers;
    for (unsigned long long i = 0; i < n; i++) {
        if (end - p < 2 || (p[0] != 'd' && p[0] != 'l') || p[1] != ' ') return -1;
        char kind = p[0];
        p += 2;
        if (take_num(&kind_mode, &p, end, 8, 07777) < 0) return -1;
        for (int k = 0; k < 3; k++)
            if (take_lit(&p, end, " ") < 0 || take_num(&v[k], &p, end, 10, 0xffffffffULL) < 0) return -1;
        if (take_lit(&p, end, " ") < 0) return -1;
        char *path = take_counted(&p, end), *link = NULL;
        if (path && take_lit(&p, end, " ") == 0) link = take_counted(&p, end);
        if (!path || !link || take_lit(&p, end, "\n") < 0 || !*path || (kind == 'l' && !*link) ||
            (kind == 'd' && *link)) {
            free(path);
            free(link);
            return -1;
        }
        put(x, path, kind == 'd' ? IB_LX_DIR : IB_LX_SYMLINK, kind == 'l' ? link : NULL, (unsigned)kind_mode,
            (unsigned)v[0], (unsigned)v[1], (unsigned)v[2]);
        free(path);
        free(link);
    }
    return p == end ? 0 : -1;
}

int ib_layer_index_load(ib_layer_index **out, const char *path, const char *tag)
{
    *out = NULL;
    char *text;
    size_t len;
    int r = ib_fs_read_all(&text, &len, path, (size_t)256 << 20);
    if (r < 0) return r;
    /* the last line checks everything before it */
    size_t body = len;
    while (body > 0 && text[body - 1] == '\n') body--;
    while (body > 0 && text[body - 1] != '\n') body--;
    char want[IB_DIGEST_STRLEN + 1], have[IB_DIGEST_STRLEN + 8];
    ib_digest_buf(want, text, body);
    snprintf(have, sizeof have, "check %s\n", want);
    ib_layer_index *x = ib_layer_index_new();
    char *got = NULL;
    if (len - body != strlen(have) || memcmp(text + body, have, len - body) || load_body(x, &got, text, body) < 0) {
        r = ib_error_set(IB_ECORRUPT, "%s: damaged saved layer index", path);
    } else if (strcmp(got, tag)) {
        r = ib_error_set(IB_ECORRUPT, "%s: saved layer index is for other layers", path);
    }
    free(got);
    free(text);
    if (r < 0) {
        ib_layer_index_free(x);
        return r;
    }
    *out = x;
    return 0;
}

int ib_layer_index_saved_tag(char **tag, const char *path)
{
    *tag = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return ib_error_errno(IB_ERR, "%s", path);
    char head[sizeof SAVE_MAGIC + 32];
    size_t n = fread(head, 1, sizeof SAVE_MAGIC + 3, f);
    int r = ib_error_set(IB_ECORRUPT, "%s: not a saved layer index", path);
    unsigned long long tl;
    if (n == sizeof SAVE_MAGIC + 3 && !memcmp(head, SAVE_MAGIC "tag ", sizeof SAVE_MAGIC + 3) &&
        fscanf(f, "%llu:", &tl) == 1 && tl < (1u << 20)) {
        char *t = ib_xmalloc((size_t)tl + 1);
        if (fread(t, 1, (size_t)tl, f) == tl) {
            t[tl] = 0;
            *tag = t;
            r = 0;
        } else {
            free(t);
        }
    }
    fclose(f);
    return r;
}
