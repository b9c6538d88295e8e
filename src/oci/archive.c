#include "oci/archive.h"
#include "common/error.h"
#include "common/fs.h"
#include "oci/image.h"
#include "oci/reference.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define OCI_LAYOUT "{\"imageLayoutVersion\":\"1.0.0\"}"

/* ---------- writing ---------- */

struct tar_out {
    struct archive *a;
    struct archive_entry *e;
    int64_t mtime;
};

static int tar_err(struct tar_out *t, const char *what)
{
    return ib_error_set(IB_ERR, "writing image tarball (%s): %s", what, archive_error_string(t->a));
}

static int add_header(struct tar_out *t, const char *name, int type, int mode, int64_t size)
{
    archive_entry_clear(t->e);
    archive_entry_set_pathname(t->e, name);
    archive_entry_set_filetype(t->e, (unsigned)type);
    archive_entry_set_perm(t->e, (mode_t)mode);
    archive_entry_set_size(t->e, size);
    archive_entry_set_mtime(t->e, t->mtime, 0);
    archive_entry_set_uid(t->e, 0);
    archive_entry_set_gid(t->e, 0);
    if (archive_write_header(t->a, t->e) != ARCHIVE_OK) return tar_err(t, name);
    return 0;
}

static int add_mem(struct tar_out *t, const char *name, const char *data, size_t len)
{
    int r = add_header(t, name, AE_IFREG, 0644, (int64_t)len);
    if (r < 0) return r;
    if (len && archive_write_data(t->a, data, len) != (la_ssize_t)len) return tar_err(t, name);
    return 0;
}

static int tar_sink(void *ctx, const void *buf, size_t len)
{
    struct tar_out *t = ctx;
    if (archive_write_data(t->a, buf, len) != (la_ssize_t)len) return tar_err(t, "blob data");
    return 0;
}

static int add_blob(struct tar_out *t, ib_store *s, const char *digest)
{
    uint64_t size;
    if (!ib_store_has_blob(s, digest, &size)) return ib_error_set(IB_ENOTFOUND, "blob %s missing from store", digest);
    char *name = ib_xasprintf("blobs/sha256/%s", ib_digest_hex(digest));
    int r = add_header(t, name, AE_IFREG, 0644, (int64_t)size);
    free(name);
    if (r < 0) return r;
    return ib_store_stream_blob(s, digest, tar_sink, t);
}

int ib_archive_write(const char *out_path, ib_store *s, const char *manifest_digest, const char *ref_name,
                     const char *image_name, int64_t mtime)
{
    ib_image *img;
    int r = ib_image_load(&img, s, manifest_digest);
    if (r < 0) return r;

    json_t *index = json_object();
    json_object_set_new(index, "schemaVersion", json_integer(2));
    json_object_set_new(index, "mediaType", json_string(IB_MT_OCI_INDEX));
    json_t *md = json_object();
    json_object_set_new(md, "mediaType", json_string(IB_MT_OCI_MANIFEST));
    json_object_set_new(md, "digest", json_string(manifest_digest));
    json_object_set_new(md, "size", json_integer((json_int_t)img->size));
    json_t *ann = json_object();
    if (image_name) json_object_set_new(ann, "io.containerd.image.name", json_string(image_name));
    if (ref_name) json_object_set_new(ann, "org.opencontainers.image.ref.name", json_string(ref_name));
    json_object_set_new(md, "annotations", ann);
    json_t *mds = json_array();
    json_array_append_new(mds, md);
    json_object_set_new(index, "manifests", mds);
    char *index_s = ib_json_dump(index);
    json_decref(index);

    json_t *dm = json_array(), *d0 = json_object(), *tags = json_array(), *lays = json_array();
    {
        char *cfgp = ib_xasprintf("blobs/sha256/%s", ib_digest_hex(img->config_desc.digest));
        json_object_set_new(d0, "Config", json_string(cfgp));
        free(cfgp);
    }
    if (image_name) json_array_append_new(tags, json_string(image_name));
    json_object_set_new(d0, "RepoTags", tags);
    for (size_t i = 0; i < img->nlayers; i++) {
        char *lp = ib_xasprintf("blobs/sha256/%s", ib_digest_hex(img->layers[i].digest));
        json_array_append_new(lays, json_string(lp));
        free(lp);
    }
    json_object_set_new(d0, "Layers", lays);
    json_array_append_new(dm, d0);
    char *dm_s = ib_json_dump(dm);
    json_decref(dm);

    FILE *fp;
    char *tmp;
    struct stat osb;
    if (stat(out_path, &osb) == 0 && !S_ISREG(osb.st_mode)) {
        r = ib_error_set(IB_EINVALID, "%s: exists and is not a regular file", out_path);
        goto done_nofile;
    }
    if ((r = ib_fs_tmpfile_near(&fp, &tmp, out_path)) < 0) goto done_nofile;
    /* mkstemp makes 0600; the tarball is an ordinary output file. */
    mode_t um = umask(0);
    umask(um);
    fchmod(fileno(fp), 0666 & ~um);
    struct tar_out t = {archive_write_new(), archive_entry_new(), mtime};
    /* Every name here is ASCII (oci-layout, index.json, blobs/sha256/<hex>):
     * no pax hdrcharset record, which GNU tar warns about on every entry. */
    archive_write_set_format_pax_restricted(t.a);
    if (archive_write_open_FILE(t.a, fp) != ARCHIVE_OK) {
        r = tar_err(&t, "open");
        goto done;
    }
    if ((r = add_mem(&t, "oci-layout", OCI_LAYOUT, strlen(OCI_LAYOUT))) < 0) goto done;
    if ((r = add_mem(&t, "index.json", index_s, strlen(index_s))) < 0) goto done;
    if ((r = add_mem(&t, "manifest.json", dm_s, strlen(dm_s))) < 0) goto done;
    if ((r = add_header(&t, "blobs/", AE_IFDIR, 0755, 0)) < 0) goto done;
    if ((r = add_header(&t, "blobs/sha256/", AE_IFDIR, 0755, 0)) < 0) goto done;
    if ((r = add_blob(&t, s, manifest_digest)) < 0) goto done;
    if ((r = add_blob(&t, s, img->config_desc.digest)) < 0) goto done;
    for (size_t i = 0; i < img->nlayers; i++) {
        /* A base image may repeat a layer; a tar must not hold a path twice. */
        int dup = 0;
        for (size_t k = 0; k < i; k++) dup |= !strcmp(img->layers[k].digest, img->layers[i].digest);
        if (!dup && (r = add_blob(&t, s, img->layers[i].digest)) < 0) goto done;
    }
    if (archive_write_close(t.a) != ARCHIVE_OK) r = tar_err(&t, "close");
done:
    archive_write_free(t.a);
    archive_entry_free(t.e);
    if (r == 0 && (fflush(fp) != 0 || fsync(fileno(fp)) != 0)) r = ib_error_errno(IB_ERR, "write %s", out_path);
    if (fclose(fp) != 0 && r == 0) r = ib_error_errno(IB_ERR, "write %s", out_path);
    if (r == 0 && rename(tmp, out_path) != 0) r = ib_error_errno(IB_ERR, "cannot write %s", out_path);
    if (r < 0) unlink(tmp);
    ib_fs_tmp_forget(tmp);
    free(tmp);
done_nofile:
    free(index_s);
    free(dm_s);
    ib_image_free(img);
    return r;
}

/* ---------- reading ---------- */

static struct archive *open_reader(const char *path, int *r)
{
    struct archive *a = archive_read_new();
    archive_read_support_filter_all(a);
    archive_read_support_format_tar(a);
    archive_read_support_format_gnutar(a);
    if (archive_read_open_filename(a, path, 1 << 16) != ARCHIVE_OK) {
        *r = ib_error_set(errno == ENOENT ? IB_ENOTFOUND : IB_EINVALID, "%s: %s", path, archive_error_string(a));
        archive_read_free(a);
        return NULL;
    }
    *r = 0;
    return a;
}

static const char *clean_name(const char *n)
{
    if (!n) return ""; /* a name libarchive could not give (never one of ours) */
    while (n[0] == '.' && n[1] == '/') n += 2;
    while (*n == '/') n++;
    return n;
}

static int read_data_mem(char **out, size_t *len, struct archive *a, const char *name, size_t max)
{
    size_t cap = 4096, n = 0;
    char *buf = ib_xmalloc(cap + 1);
    for (;;) {
        if (n == cap) {
            if (cap >= max) {
                free(buf);
                return ib_error_set(IB_EINVALID, "%s: larger than %zu bytes", name, max);
            }
            cap *= 2;
            buf = ib_xrealloc(buf, cap + 1);
        }
        la_ssize_t k = archive_read_data(a, buf + n, cap - n);
        if (k < 0) {
            free(buf);
            return ib_error_set(IB_EINVALID, "%s: %s", name, archive_error_string(a));
        }
        if (k == 0) break;
        n += (size_t)k;
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return 0;
}

int ib_archive_read_member(char **out, size_t *len, const char *tar_path, const char *member, size_t max)
{
    int r;
    struct archive *a = open_reader(tar_path, &r);
    if (!a) return r;
    struct archive_entry *e;
    r = ib_error_set(IB_ENOTFOUND, "%s: no member %s", tar_path, member);
    int st;
    while ((st = archive_read_next_header(a, &e)) == ARCHIVE_OK || st == ARCHIVE_WARN) { /* WARN: a name not in our locale */
        if (strcmp(clean_name(archive_entry_pathname(e)), member) != 0) continue;
        r = read_data_mem(out, len, a, member, max);
        break;
    }
    if (st != ARCHIVE_OK && st != ARCHIVE_WARN && st != ARCHIVE_EOF)
        r = ib_error_set(IB_EINVALID, "%s: not a readable tar: %s", tar_path, archive_error_string(a));
    archive_read_free(a);
    return r;
}

void ib_loaded_free(ib_loaded *l, size_t n)
{
    if (!l) return;
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; k < l[i].nnames; k++) free(l[i].names[k]);
        free(l[i].names);
    }
    free(l);
}

/* docker-archive members (layer.tar, <id>.json) are not named by digest: keep
 * what each path hashed to. */
struct pathmap {
    char **paths;
    char (*digests)[IB_DIGEST_STRLEN + 1];
    uint64_t *sizes;
    char **mts;
    size_t n;
};

static void pathmap_free(struct pathmap *m)
{
    for (size_t i = 0; i < m->n; i++) {
        free(m->paths[i]);
        free(m->mts[i]);
    }
    free(m->paths);
    free(m->digests);
    free(m->sizes);
    free(m->mts);
}

static int pathmap_find(const struct pathmap *m, const char *p)
{
    for (size_t i = 0; i < m->n; i++)
        if (!strcmp(m->paths[i], p)) return (int)i;
    return -1;
}

static void pathmap_add(struct pathmap *m, const char *name, const char *dg, uint64_t size, const char *mt);

/* A blobs/sha256/<hex> member skipped because the store had it: map it from the store. */
static int pathmap_find_or_store(struct pathmap *m, ib_store *s, const char *p)
{
    int i = pathmap_find(m, p);
    if (i >= 0 || strncmp(p, "blobs/sha256/", 13)) return i;
    char *dg = ib_xasprintf("sha256:%s", p + 13);
    uint64_t size;
    if (!ib_digest_valid(dg) || !ib_store_has_blob(s, dg, &size)) {
        free(dg);
        return -1;
    }
    unsigned char head[4] = {0};
    char *bp = ib_store_blob_path(s, dg);
    FILE *f = fopen(bp, "rb");
    size_t nh = f ? fread(head, 1, 4, f) : 0;
    if (f) fclose(f);
    free(bp);
    const char *mt = IB_MT_OCI_LAYER;
    if (nh >= 2 && head[0] == 0x1f && head[1] == 0x8b) mt = IB_MT_OCI_LAYER_GZIP;
    else if (nh >= 4 && head[0] == 0x28 && head[1] == 0xb5 && head[2] == 0x2f && head[3] == 0xfd) mt = IB_MT_OCI_LAYER_ZSTD;
    pathmap_add(m, p, dg, size, mt);
    free(dg);
    return (int)m->n - 1;
}

struct sniff_sink {
    ib_blob_writer *w;
    unsigned char head[4];
    size_t nhead;
};

static int store_entry(struct pathmap *m, ib_store *s, struct archive *a, const char *name, const char *expect)
{
    ib_blob_writer *w;
    int r = ib_store_blob_begin(&w, s);
    if (r < 0) return r;
    unsigned char head[4] = {0};
    size_t nhead = 0;
    static _Thread_local char buf[1 << 17];
    for (;;) {
        la_ssize_t k = archive_read_data(a, buf, sizeof buf);
        if (k < 0) {
            r = ib_error_set(IB_EINVALID, "%s: %s", name, archive_error_string(a));
            break;
        }
        if (k == 0) break;
        for (la_ssize_t i = 0; i < k && nhead < 4; i++) head[nhead++] = (unsigned char)buf[i];
        if ((r = ib_blob_write(w, buf, (size_t)k)) < 0) break;
    }
    if (r < 0) {
        ib_store_blob_abort(w);
        return r;
    }
    char dg[IB_DIGEST_STRLEN + 1];
    uint64_t size;
    if ((r = ib_store_blob_commit(dg, &size, w, expect)) < 0) {
        if (r == IB_ECORRUPT) return ib_error_wrap(r, "archive member %s", name);
        return r;
    }
    const char *mt = IB_MT_OCI_LAYER;
    if (nhead >= 2 && head[0] == 0x1f && head[1] == 0x8b) mt = IB_MT_OCI_LAYER_GZIP;
    else if (nhead >= 4 && head[0] == 0x28 && head[1] == 0xb5 && head[2] == 0x2f && head[3] == 0xfd)
        mt = IB_MT_OCI_LAYER_ZSTD;
    pathmap_add(m, name, dg, size, mt);
    return 0;
}

static void pathmap_add(struct pathmap *m, const char *name, const char *dg, uint64_t size, const char *mt)
{
    m->paths = ib_xrealloc(m->paths, (m->n + 1) * sizeof *m->paths);
    m->digests = ib_xrealloc(m->digests, (m->n + 1) * sizeof *m->digests);
    m->sizes = ib_xrealloc(m->sizes, (m->n + 1) * sizeof *m->sizes);
    m->mts = ib_xrealloc(m->mts, (m->n + 1) * sizeof *m->mts);
    m->paths[m->n] = ib_xstrdup(name);
    memcpy(m->digests[m->n], dg, IB_DIGEST_STRLEN + 1);
    m->sizes[m->n] = size;
    m->mts[m->n] = ib_xstrdup(mt);
    m->n++;
}

static void add_name(ib_loaded *l, const char *raw)
{
    ib_ref ref;
    if (ib_ref_parse(&ref, raw, "latest") < 0) return;
    char *n = ib_ref_string(&ref);
    ib_ref_clear(&ref);
    for (size_t i = 0; i < l->nnames; i++)
        if (!strcmp(l->names[i], n)) {
            free(n);
            return;
        }
    l->names = ib_xrealloc(l->names, (l->nnames + 1) * sizeof *l->names);
    l->names[l->nnames++] = n;
}

/* Builds an OCI manifest for a docker-archive image entry (Config + Layers paths). */
static int manifest_from_docker(char *out_digest, ib_store *s, struct pathmap *m, json_t *entry)
{
    const char *cfgp = json_string_value(json_object_get(entry, "Config"));
    json_t *layers = json_object_get(entry, "Layers");
    int ci = cfgp ? pathmap_find_or_store(m, s, cfgp) : -1;
    if (ci < 0 || !json_is_array(layers)) return ib_error_set(IB_EINVALID, "manifest.json: entry without Config/Layers");
    json_t *man = json_object(), *lays = json_array();
    json_object_set_new(man, "schemaVersion", json_integer(2));
    json_object_set_new(man, "mediaType", json_string(IB_MT_OCI_MANIFEST));
    ib_desc cd = {IB_MT_OCI_CONFIG, {0}, m->sizes[ci]};
    memcpy(cd.digest, m->digests[ci], sizeof cd.digest);
    json_object_set_new(man, "config", ib_desc_to_json(&cd));
    size_t i;
    json_t *lp;
    json_array_foreach(layers, i, lp)
    {
        const char *p = json_string_value(lp);
        int li = p ? pathmap_find_or_store(m, s, p) : -1;
        if (li < 0) {
            json_decref(man);
            json_decref(lays);
            return ib_error_set(IB_EINVALID, "manifest.json: layer %s missing from the archive", p ? p : "?");
        }
        ib_desc ld = {m->mts[li], {0}, m->sizes[li]};
        memcpy(ld.digest, m->digests[li], sizeof ld.digest);
        json_array_append_new(lays, ib_desc_to_json(&ld));
    }
    json_object_set_new(man, "layers", lays);
    char *txt = ib_json_dump(man);
    json_decref(man);
    int r = ib_store_put_blob(out_digest, s, txt, strlen(txt));
    free(txt);
    return r;
}

static const char *ann(json_t *desc, const char *key)
{
    return json_string_value(json_object_get(json_object_get(desc, "annotations"), key));
}

int ib_archive_load(ib_loaded **out, size_t *nout, ib_store *s, const char *tar_path)
{
    int r;
    struct archive *a = open_reader(tar_path, &r);
    if (!a) return r;
    struct archive_entry *e;
    char *index_s = NULL, *dman_s = NULL;
    size_t len;
    struct pathmap m = {0};
    int st;
    while ((st = archive_read_next_header(a, &e)) == ARCHIVE_OK || st == ARCHIVE_WARN) { /* WARN: a name not in our locale */
        if (archive_entry_filetype(e) != AE_IFREG) continue;
        const char *name = clean_name(archive_entry_pathname(e));
        if (!strcmp(name, "index.json")) {
            free(index_s);
            if ((r = read_data_mem(&index_s, &len, a, name, IB_MANIFEST_MAX)) < 0) goto done;
        } else if (!strcmp(name, "manifest.json")) {
            free(dman_s);
            if ((r = read_data_mem(&dman_s, &len, a, name, IB_MANIFEST_MAX)) < 0) goto done;
        } else if (!strncmp(name, "blobs/sha256/", 13)) {
            char *expect = ib_xasprintf("sha256:%s", name + 13);
            if (!ib_digest_valid(expect)) {
                r = ib_error_set(IB_EINVALID, "%s: member %s is not named by a sha256 digest", tar_path, name);
                free(expect);
                goto done;
            }
            /* Already in the store (verified when it was written): skip the
             * member's bytes instead of hashing them again. For an
             * uncompressed tar libarchive seeks over them. */
            uint64_t have;
            if (ib_store_has_blob(s, expect, &have) && archive_entry_size_is_set(e) &&
                (uint64_t)archive_entry_size(e) == have) {
                archive_read_data_skip(a);
                free(expect);
                continue;
            }
            r = store_entry(&m, s, a, name, expect);
            free(expect);
            if (r < 0) goto done;
        } else if (strcmp(name, "oci-layout") && strcmp(name, "repositories")) {
            /* docker-archive: <id>/layer.tar, <id>/json, <hex>.json */
            if ((r = store_entry(&m, s, a, name, NULL)) < 0) goto done;
        }
    }
    if (st != ARCHIVE_EOF) {
        r = ib_error_set(IB_EINVALID, "%s: not a readable tar: %s", tar_path, archive_error_string(a));
        goto done;
    }
    if (!index_s && !dman_s) {
        r = ib_error_set(IB_EINVALID, "%s: neither an OCI archive (index.json) nor a docker archive (manifest.json)",
                         tar_path);
        goto done;
    }
    json_error_t je;
    json_t *dman = dman_s ? json_loads(dman_s, 0, &je) : NULL;
    json_t *index = index_s ? json_loads(index_s, 0, &je) : NULL;
    ib_loaded *res = NULL;
    size_t nres = 0;
    if (index) {
        json_t *mds = json_object_get(index, "manifests"), *d;
        size_t i;
        json_array_foreach(mds, i, d)
        {
            const char *mt = json_string_value(json_object_get(d, "mediaType"));
            const char *dg = json_string_value(json_object_get(d, "digest"));
            if (!dg || !ib_digest_valid(dg) || !ib_store_has_blob(s, dg, NULL)) {
                r = ib_error_set(IB_EINVALID, "%s: index.json names a manifest that is not in the archive", tar_path);
                break;
            }
            if (mt && strcmp(mt, IB_MT_OCI_MANIFEST) && strcmp(mt, IB_MT_DOCKER_MANIFEST)) continue;
            res = ib_xrealloc(res, (nres + 1) * sizeof *res);
            ib_loaded *l = &res[nres++];
            memset(l, 0, sizeof *l);
            memcpy(l->digest, dg, IB_DIGEST_STRLEN + 1);
            const char *full = ann(d, "io.containerd.image.name");
            const char *refn = ann(d, "org.opencontainers.image.ref.name");
            if (full) add_name(l, full);
            else if (refn && (strchr(refn, '/') || strchr(refn, ':'))) add_name(l, refn);
        }
        /* docker save (>= 25) also lists RepoTags in manifest.json */
        if (r == 0 && json_is_array(dman)) {
            json_t *ent;
            json_array_foreach(dman, i, ent)
            {
                json_t *tags = json_object_get(ent, "RepoTags"), *t;
                size_t k;
                if (!json_is_array(tags) || i >= nres) continue;
                json_array_foreach(tags, k, t) if (json_is_string(t)) add_name(&res[i], json_string_value(t));
            }
        }
    } else if (json_is_array(dman)) {
        json_t *ent;
        size_t i;
        json_array_foreach(dman, i, ent)
        {
            res = ib_xrealloc(res, (nres + 1) * sizeof *res);
            ib_loaded *l = &res[nres++];
            memset(l, 0, sizeof *l);
            if ((r = manifest_from_docker(l->digest, s, &m, ent)) < 0) break;
            json_t *tags = json_object_get(ent, "RepoTags"), *t;
            size_t k;
            if (json_is_array(tags)) json_array_foreach(tags, k, t) if (json_is_string(t)) add_name(l, json_string_value(t));
        }
    } else {
        r = ib_error_set(IB_EINVALID, "%s: manifest.json is not valid JSON", tar_path);
    }
    /* Verify each image is complete and readable before naming it. */
    for (size_t i = 0; r == 0 && i < nres; i++) {
        ib_image *img;
        if ((r = ib_image_load(&img, s, res[i].digest)) < 0) {
            ib_error_wrap(r, "%s", tar_path);
            break;
        }
        ib_image_free(img);
        for (size_t k = 0; r == 0 && k < res[i].nnames; k++) r = ib_store_set_ref(s, res[i].names[k], res[i].digest);
    }
    if (r == 0 && nres == 0) r = ib_error_set(IB_EINVALID, "%s: no image manifest in the archive", tar_path);
    json_decref(dman);
    json_decref(index);
    if (r < 0) {
        ib_loaded_free(res, nres);
    } else {
        *out = res;
        *nout = nres;
    }
done:
    pathmap_free(&m);
    free(index_s);
    free(dman_s);
    archive_read_free(a);
    return r;
}
