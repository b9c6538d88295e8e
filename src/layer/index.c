#include "layer/index.h"
#include "common/error.h"
#include "oci/digest.h"

#include <archive.h>
#include <archive_entry.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *path;
    unsigned mode, uid, gid;
    unsigned layer; /* index of the layer that wrote it (opaque markers only hide lower ones) */
} dent;

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
    for (size_t i = 0; i < x->cap; i++) free(x->v[i].path);
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

static void put(ib_layer_index *x, const char *p, unsigned mode, unsigned uid, unsigned gid, unsigned layer);

static void grow(ib_layer_index *x)
{
    dent *old = x->v;
    size_t oc = x->cap;
    x->cap *= 2;
    x->v = ib_xcalloc(x->cap, sizeof *x->v);
    x->n = 0;
    for (size_t i = 0; i < oc; i++) {
        if (old[i].path && *old[i].path) put(x, old[i].path, old[i].mode, old[i].uid, old[i].gid, old[i].layer);
        free(old[i].path);
    }
    free(old);
}

static void put(ib_layer_index *x, const char *p, unsigned mode, unsigned uid, unsigned gid, unsigned layer)
{
    dent *d = find(x, p);
    if (!d) {
        if ((x->n + 1) * 2 > x->cap) grow(x);
        size_t i = hash(p) & (x->cap - 1);
        while (x->v[i].path && *x->v[i].path) i = (i + 1) & (x->cap - 1);
        free(x->v[i].path);
        d = &x->v[i];
        d->path = ib_xstrdup(p);
        x->n++;
    }
    d->mode = mode;
    d->uid = uid;
    d->gid = gid;
    d->layer = layer;
}

static void del(ib_layer_index *x, const char *p)
{
    dent *d = find(x, p);
    if (!d) return;
    free(d->path);
    d->path = ib_xstrdup(""); /* tombstone keeps probe chains intact */
    x->n--;
}

/* Removes everything strictly below dir written by layers before `layer`. */
static void del_below(ib_layer_index *x, const char *dir, unsigned before_layer)
{
    size_t n = strlen(dir);
    for (size_t i = 0; i < x->cap; i++) {
        dent *d = &x->v[i];
        if (!d->path || !*d->path || d->layer >= before_layer) continue;
        if (n == 0 || (!strncmp(d->path, dir, n) && d->path[n] == '/')) {
            free(d->path);
            d->path = ib_xstrdup("");
            x->n--;
        }
    }
}

static char *clean(const char *name)
{
    while (name[0] == '.' && name[1] == '/') name += 2;
    while (*name == '/') name++;
    char *p = ib_xstrdup(name);
    size_t n = strlen(p);
    while (n > 0 && p[n - 1] == '/') p[--n] = 0;
    return p;
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
    while ((st = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
        char *p = clean(archive_entry_pathname(e));
        char *slash = strrchr(p, '/');
        const char *base = slash ? slash + 1 : p;
        char *dir = slash ? ib_xstrndup(p, (size_t)(slash - p)) : ib_xstrdup("");
        if (!strcmp(base, ".wh..wh..opq")) {
            del_below(x, dir, layer);
        } else if (!strncmp(base, ".wh.", 4)) {
            char *victim = *dir ? ib_xasprintf("%s/%s", dir, base + 4) : ib_xstrdup(base + 4);
            del(x, victim);
            del_below(x, victim, layer + 1);
            free(victim);
        } else if (*p) {
            if (archive_entry_filetype(e) == AE_IFDIR)
                put(x, p, archive_entry_perm(e) & 07777, (unsigned)archive_entry_uid(e), (unsigned)archive_entry_gid(e),
                    layer);
            else if (find(x, p)) {
                del(x, p);
                del_below(x, p, layer + 1);
            }
        }
        free(dir);
        free(p);
    }
    if (st != ARCHIVE_EOF) r = ib_error_set(IB_ERR, "%s: %s", blob_path, archive_error_string(a));
    archive_read_free(a);
    return r;
}

int ib_layer_index_dir(const ib_layer_index *x, const char *path, unsigned *mode, unsigned *uid, unsigned *gid)
{
    dent *d = find(x, path);
    if (!d) return 0;
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
