#include "build/remote_cache.h"
#include "common/error.h"
#include "build/context.h"
#include "build/sandbox.h"
#include "layer/apply.h"
#include "layer/index.h"
#include "oci/image.h"
#include "oci/reference.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct ib_remote_cache {
    ib_registry *reg;
    char *repo;
    char *name;
};

int ib_remote_cache_open(ib_remote_cache **out, const char *ref, const ib_reg_opts *o, int push)
{
    ib_ref r;
    int rc = ib_ref_parse(&r, ref, NULL);
    if (rc < 0) return ib_error_wrap(IB_EUSAGE, "%s", push ? "--cache-to" : "--cache-from");
    if (r.tag || r.digest) {
        ib_ref_clear(&r);
        return ib_error_set(IB_EUSAGE, "%s %s: give a repository (host/repo), the tags are the cache keys",
                            push ? "--cache-to" : "--cache-from", ref);
    }
    ib_remote_cache *c = ib_xcalloc(1, sizeof *c);
    c->repo = ib_xstrdup(r.repo);
    c->name = ib_ref_name(&r);
    rc = ib_registry_open(&c->reg, r.registry, o);
    ib_ref_clear(&r);
    if (rc < 0) {
        ib_remote_cache_free(c);
        return rc;
    }
    ib_registry_want(c->reg, c->repo, push ? "pull,push" : "pull");
    *out = c;
    return 0;
}

void ib_remote_cache_free(ib_remote_cache *c)
{
    if (!c) return;
    ib_registry_free(c->reg);
    free(c->repo);
    free(c->name);
    free(c);
}

const char *ib_remote_cache_name(const ib_remote_cache *c) { return c->name; }

static char *tag_for(const char *key) { return ib_xasprintf("cache-%s", ib_digest_hex(key)); }

/* GETs the one-layer image at tag and checks it is ours: annotation ann_key
 * equal to want, exactly one layer of a layer media type. 0 and cfg/lay
 * filled (cfg may be NULL), 1 when there is no such tag, <0 on error. */
static int fetch_entry(ib_desc *cfg, ib_desc *lay, ib_remote_cache *c, const char *tag, const char *ann_key,
                       const char *want, const char *what)
{
    char *body = NULL, *mt = NULL;
    size_t len = 0;
    char mdg[IB_DIGEST_STRLEN + 1];
    int rc = ib_registry_manifest_get(&body, &len, &mt, mdg, c->reg, c->repo, tag);
    free(mt);
    if (rc == IB_ENOTFOUND) return 1;
    if (rc < 0) return rc;
    json_t *man = json_loadb(body, len, 0, NULL);
    free(body);
    const char *ann = json_string_value(json_object_get(json_object_get(man, "annotations"), ann_key));
    rc = cfg ? ib_desc_from_json(cfg, json_object_get(man, "config")) : 0;
    if (rc == 0) rc = ib_desc_from_json(lay, json_array_get(json_object_get(man, "layers"), 0));
    if (rc == 0 && (!ann || strcmp(ann, want) || json_array_size(json_object_get(man, "layers")) != 1 ||
                    !ib_image_layer_mt_to_oci(lay->media_type)))
        rc = ib_error_set(IB_EINVALID, "%s: %s is not one of ours", c->name, what);
    json_decref(man);
    return rc;
}

/* Brings an entry's layer blob into the store, verified against its digest
 * (a local copy too: it may be damaged, and is then fetched again), and
 * returns its real size and media type. A media type that is not what the
 * blob's magic bytes show (gzip labelled as plain tar) is refused: the
 * image would claim a compression its layer does not have. The size in the
 * manifest is not used: the store's is the verified blob's. */
static int import_layer(uint64_t *size, const char **mt, ib_remote_cache *c, ib_store *s, const ib_desc *lay,
                        const char *key)
{
    int fetched = 0, rc = 0;
    const char *real = NULL;
    for (;;) {
        if (!ib_store_has_blob(s, lay->digest, NULL)) {
            if ((rc = ib_registry_blob_fetch(c->reg, c->repo, lay->digest, lay->size, s)) < 0) return rc;
            fetched = 1;
        }
        /* a damaged local copy is unlinked by the check and fetched again */
        rc = ib_cache_verify_layer_blob(&real, s, lay->digest);
        if (rc != IB_ECORRUPT || fetched) break;
    }
    if (rc < 0) return rc;
    if (!ib_store_has_blob(s, lay->digest, size)) return ib_error_set(IB_ERR, "blob %s vanished from the store", lay->digest);
    const char *said = ib_image_layer_mt_to_oci(lay->media_type);
    if (!said || strcmp(said, real))
        return ib_error_set(IB_ECORRUPT, "cache entry for %.19s labels its layer %s, but the blob is %s (refused)", key,
                            lay->media_type,
                            !strcmp(real, IB_MT_OCI_LAYER_GZIP)   ? "gzip-compressed"
                            : !strcmp(real, IB_MT_OCI_LAYER_ZSTD) ? "zstd-compressed"
                                                                  : "not compressed");
    *mt = real;
    return 0;
}

int ib_remote_cache_get(ib_layer_result *res, ib_remote_cache *c, ib_store *s, ib_cache *local, const char *key)
{
    char *tag = tag_for(key);
    char what[64];
    snprintf(what, sizeof what, "the cache entry for %.19s", key);
    ib_desc cfg = {0}, lay = {0};
    int rc = fetch_entry(&cfg, &lay, c, tag, "org.imgbuild.cache.key", key, what);
    free(tag);
    if (rc == 1) {
        ib_desc_clear(&cfg);
        ib_desc_clear(&lay);
        return 0;
    }
    char *ctext = NULL;
    if (rc == 0) rc = ib_registry_blob_fetch(c->reg, c->repo, cfg.digest, cfg.size, s);
    if (rc == 0) rc = ib_store_read_blob(&ctext, NULL, s, cfg.digest, 1 << 20);
    const char *diff_id = NULL;
    json_t *cj = NULL;
    if (rc == 0) {
        cj = json_loads(ctext, 0, NULL);
        diff_id = json_string_value(json_array_get(json_object_get(json_object_get(cj, "rootfs"), "diff_ids"), 0));
        if (!diff_id || !ib_digest_valid(diff_id))
            rc = ib_error_set(IB_EINVALID, "%s: cache entry for %.19s has no diffID", c->name, key);
    }
    /* Nothing the manifest says about the layer is taken on trust: every
     * field of the local entry, and later of our image's manifest and
     * config, comes from the verified blob itself. */
    uint64_t size = 0;
    const char *mt = NULL;
    if (rc == 0) rc = import_layer(&size, &mt, c, s, &lay, key);
    if (rc == 0) {
        /* The diffID goes into our image config: recompute it, never trust it.
         * An uncompressed layer is its own tar (OCI image-spec config.md). */
        char real[IB_DIGEST_STRLEN + 1];
        if (!strcmp(mt, IB_MT_OCI_LAYER)) {
            memcpy(real, lay.digest, sizeof real);
        } else {
            char *bp = ib_store_blob_path(s, lay.digest);
            rc = ib_layer_diff_id(real, bp);
            free(bp);
            if (rc < 0) {
                char *why = ib_xstrdup(ib_error_last());
                rc = ib_error_set(IB_ECORRUPT, "cache entry for %.19s: %s", key, why);
                free(why);
            }
        }
        if (rc == 0 && strcmp(real, diff_id))
            rc = ib_error_set(IB_ECORRUPT, "cache entry for %.19s claims diffID %.19s, the layer has %.19s", key,
                              diff_id, real);
    }
    if (rc == 0) {
        memset(res, 0, sizeof *res);
        memcpy(res->digest, lay.digest, sizeof res->digest);
        memcpy(res->diff_id, diff_id, IB_DIGEST_STRLEN + 1);
        res->size = size;
        res->media_type = mt;
        const char *by = json_string_value(json_object_get(json_array_get(json_object_get(cj, "history"), 0), "created_by"));
        rc = ib_cache_put(local, key, res, by ? by : "");
        if (rc == 0) rc = 1;
    }
    json_decref(cj);
    free(ctext);
    ib_desc_clear(&cfg);
    ib_desc_clear(&lay);
    return rc;
}

/* The manifest of a one-layer entry image (its config goes into the store):
 * a valid, if empty-looking, image config, so registries that check treat
 * it as an image. ann is a JSON object of annotations (taken). */
static char *entry_manifest(ib_desc *cd, ib_store *s, const ib_layer_result *res, const char *created_by,
                            const char *comment, json_t *ann, int *rc)
{
    json_t *cfg = json_pack("{s:s,s:s,s:{},s:{s:s,s:[s]},s:[{s:s,s:s}]}", "architecture", "amd64", "os", "linux",
                            "config", "rootfs", "type", "layers", "diff_ids", res->diff_id, "history", "created_by",
                            created_by ? created_by : "", "comment", comment);
    char *ctext = ib_json_dump(cfg);
    json_decref(cfg);
    cd->media_type = IB_MT_OCI_CONFIG;
    cd->size = strlen(ctext);
    *rc = ib_store_put_blob(cd->digest, s, ctext, strlen(ctext));
    free(ctext);
    ib_desc ld = {(char *)res->media_type, {0}, res->size};
    memcpy(ld.digest, res->digest, sizeof ld.digest);
    json_t *man = json_object();
    json_object_set_new(man, "schemaVersion", json_integer(2));
    json_object_set_new(man, "mediaType", json_string(IB_MT_OCI_MANIFEST));
    json_object_set_new(man, "config", ib_desc_to_json(cd));
    json_t *ls = json_array();
    json_array_append_new(ls, ib_desc_to_json(&ld));
    json_object_set_new(man, "layers", ls);
    json_object_set_new(man, "annotations", ann);
    char *mtext = ib_json_dump(man);
    json_decref(man);
    return mtext;
}

/* Uploads what the registry lacks of the entry's two blobs, then tags it. */
static int upload_entry(ib_remote_cache *c, ib_store *s, const ib_desc *cd, const ib_layer_result *res,
                        const char *tag, const char *mtext)
{
    int exists = 0;
    int rc = ib_registry_blob_exists(&exists, c->reg, c->repo, cd->digest);
    if (rc == 0 && !exists) rc = ib_registry_blob_upload(c->reg, c->repo, cd->digest, s);
    if (rc == 0) rc = ib_registry_blob_exists(&exists, c->reg, c->repo, res->digest);
    if (rc == 0 && !exists) rc = ib_registry_blob_upload(c->reg, c->repo, res->digest, s);
    char mdg[IB_DIGEST_STRLEN + 1];
    ib_digest_buf(mdg, mtext, strlen(mtext));
    if (rc == 0) rc = ib_registry_manifest_put(c->reg, c->repo, tag, mtext, strlen(mtext), IB_MT_OCI_MANIFEST, mdg);
    return rc;
}

int ib_remote_cache_put(ib_remote_cache *c, ib_store *s, const char *key, const ib_layer_result *res,
                        const char *created_by)
{
    char *tag = tag_for(key);
    char have[IB_DIGEST_STRLEN + 1];
    int rc = ib_registry_manifest_head(have, c->reg, c->repo, tag);
    if (rc != IB_ENOTFOUND) { /* 0: already shared */
        free(tag);
        return rc;
    }
    ib_desc cd = {0};
    char *mtext = entry_manifest(&cd, s, res, created_by, "imgbuild cache",
                                 json_pack("{s:s}", "org.imgbuild.cache.key", key), &rc);
    if (rc == 0) rc = upload_entry(c, s, &cd, res, tag, mtext);
    free(mtext);
    free(tag);
    return rc;
}

static char *mount_tag(const char *name) { return ib_xasprintf("mount-%s", name); }

int ib_remote_cache_put_mount(uint64_t *size, int *pushed, ib_remote_cache *c, ib_store *s, const char *name,
                              const char *dir, const char *target, ib_comp_algo algo, int threads)
{
    *size = 0;
    *pushed = 0;
    /* The directory as a layer: the same walk as a RUN snapshot (modes,
     * owners, symlinks, hardlinks), with fixed file times so that an
     * unchanged cache gives the same digest and is not pushed again. */
    ib_context *ctx = NULL;
    ib_layer_builder *lb = ib_layer_builder_new();
    ib_layer_result res;
    int rc = ib_context_open_dir(&ctx, NULL, dir, 0);
    if (rc == 0) rc = ib_sandbox_diff(lb, dir, ctx);
    if (rc == 0) rc = ib_layer_write(&res, lb, s, algo, threads, 315532800);
    ib_layer_builder_free(lb);
    ib_context_free(ctx);
    if (rc < 0) return rc;
    *size = res.size;
    ib_desc cd = {0};
    char *mtext = entry_manifest(&cd, s, &res, target, "imgbuild cache mount",
                                 json_pack("{s:s,s:s}", "org.imgbuild.cache.mount", name,
                                           "org.imgbuild.cache.mount.target", target),
                                 &rc);
    char mdg[IB_DIGEST_STRLEN + 1], have[IB_DIGEST_STRLEN + 1];
    ib_digest_buf(mdg, mtext, strlen(mtext));
    char *tag = mount_tag(name);
    int h = rc == 0 ? ib_registry_manifest_head(have, c->reg, c->repo, tag) : rc;
    if (h == 0 && !strcmp(have, mdg)) {
        rc = 0; /* unchanged since the last push */
    } else if (h < 0 && h != IB_ENOTFOUND) {
        rc = h;
    } else {
        rc = upload_entry(c, s, &cd, &res, tag, mtext);
        if (rc == 0) *pushed = 1;
    }
    free(tag);
    free(mtext);
    return rc;
}

int ib_remote_cache_get_mount(uint64_t *size, ib_remote_cache *c, ib_store *s, const char *name, const char *dir)
{
    *size = 0;
    char *tag = mount_tag(name);
    char what[64];
    snprintf(what, sizeof what, "mount-%.32s", name);
    ib_desc lay = {0};
    int rc = fetch_entry(NULL, &lay, c, tag, "org.imgbuild.cache.mount", name, what);
    free(tag);
    if (rc == 1) {
        ib_desc_clear(&lay);
        return 0;
    }
    /* verified against its digest on the way in; unpacked with the checks
     * every layer gets (no "..", no escaping links) */
    if (rc == 0 && !ib_store_has_blob(s, lay.digest, NULL))
        rc = ib_registry_blob_fetch(c->reg, c->repo, lay.digest, lay.size, s);
    if (rc == 0) {
        char *bp = ib_store_blob_path(s, lay.digest);
        rc = ib_layer_apply(NULL, dir, bp);
        free(bp);
    }
    if (rc == 0) {
        *size = lay.size;
        rc = 1;
    }
    ib_desc_clear(&lay);
    return rc;
}
