#include "oci/image.h"
#include "common/error.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *ib_image_layer_mt_to_oci(const char *mt)
{
    if (!mt) return NULL;
    if (!strcmp(mt, IB_MT_OCI_LAYER) || !strcmp(mt, IB_MT_DOCKER_LAYER)) return IB_MT_OCI_LAYER;
    if (!strcmp(mt, IB_MT_OCI_LAYER_GZIP) || !strcmp(mt, IB_MT_DOCKER_LAYER_GZIP)) return IB_MT_OCI_LAYER_GZIP;
    if (!strcmp(mt, IB_MT_OCI_LAYER_ZSTD) || !strcmp(mt, "application/vnd.docker.image.rootfs.diff.tar.zstd"))
        return IB_MT_OCI_LAYER_ZSTD;
    return NULL;
}

void ib_desc_clear(ib_desc *d)
{
    free(d->media_type);
    memset(d, 0, sizeof *d);
}

int ib_desc_from_json(ib_desc *out, const json_t *j)
{
    memset(out, 0, sizeof *out);
    const char *mt = json_string_value(json_object_get(j, "mediaType"));
    const char *dg = json_string_value(json_object_get(j, "digest"));
    json_t *sz = json_object_get(j, "size");
    if (!dg || !ib_digest_valid(dg)) return ib_error_set(IB_EINVALID, "descriptor without a valid sha256 digest");
    if (!json_is_integer(sz) || json_integer_value(sz) < 0)
        return ib_error_set(IB_EINVALID, "descriptor %s without a valid size", dg);
    out->media_type = ib_xstrdup(mt ? mt : "");
    memcpy(out->digest, dg, IB_DIGEST_STRLEN + 1);
    out->size = (uint64_t)json_integer_value(sz);
    return 0;
}

json_t *ib_desc_to_json(const ib_desc *d)
{
    json_t *j = json_object();
    json_object_set_new(j, "mediaType", json_string(d->media_type));
    json_object_set_new(j, "digest", json_string(d->digest));
    json_object_set_new(j, "size", json_integer((json_int_t)d->size));
    return j;
}

char *ib_json_dump(const json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!s) {
        fputs("imgbuild: error: out of memory\n", stderr);
        abort();
    }
    return s;
}

void ib_rfc3339(char out[32], int64_t t)
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

void ib_image_free(ib_image *img)
{
    if (!img) return;
    json_decref(img->manifest);
    json_decref(img->config);
    ib_desc_clear(&img->config_desc);
    for (size_t i = 0; i < img->nlayers; i++) {
        ib_desc_clear(&img->layers[i]);
        free(img->diff_ids ? img->diff_ids[i] : NULL);
    }
    free(img->layers);
    free(img->diff_ids);
    free(img);
}

static int load_json_blob(json_t **out, ib_store *s, const char *digest, size_t max, const char *what)
{
    char *buf;
    size_t len;
    int r = ib_store_read_blob(&buf, &len, s, digest, max);
    if (r < 0) return ib_error_wrap(r, "%s", what);
    json_error_t je;
    json_t *j = json_loadb(buf, len, 0, &je);
    free(buf);
    if (!j || !json_is_object(j)) {
        json_decref(j);
        return ib_error_set(IB_EINVALID, "%s %s: invalid JSON: %s", what, digest, je.text);
    }
    *out = j;
    return 0;
}

int ib_image_load(ib_image **out, ib_store *s, const char *manifest_digest)
{
    ib_image *img = ib_xcalloc(1, sizeof *img);
    memcpy(img->digest, manifest_digest, IB_DIGEST_STRLEN + 1);
    int r = load_json_blob(&img->manifest, s, manifest_digest, IB_MANIFEST_MAX, "manifest");
    if (r < 0) goto fail;
    ib_store_has_blob(s, manifest_digest, &img->size);
    const char *mt = json_string_value(json_object_get(img->manifest, "mediaType"));
    if (mt && strcmp(mt, IB_MT_OCI_MANIFEST) && strcmp(mt, IB_MT_DOCKER_MANIFEST)) {
        r = ib_error_set(IB_EINVALID, "manifest %s has unsupported media type %s", manifest_digest, mt);
        goto fail;
    }
    if ((r = ib_desc_from_json(&img->config_desc, json_object_get(img->manifest, "config"))) < 0) goto fail;
    if ((r = load_json_blob(&img->config, s, img->config_desc.digest, IB_CONFIG_MAX, "image config")) < 0)
        goto fail;
    json_t *layers = json_object_get(img->manifest, "layers");
    json_t *diffs = json_object_get(json_object_get(img->config, "rootfs"), "diff_ids");
    if (!json_is_array(layers) || !json_is_array(diffs) || json_array_size(layers) != json_array_size(diffs)) {
        r = ib_error_set(IB_EINVALID, "image %s: layers and rootfs.diff_ids disagree", manifest_digest);
        goto fail;
    }
    img->nlayers = json_array_size(layers);
    img->layers = ib_xcalloc(img->nlayers, sizeof *img->layers);
    img->diff_ids = ib_xcalloc(img->nlayers, sizeof *img->diff_ids);
    for (size_t i = 0; i < img->nlayers; i++) {
        if ((r = ib_desc_from_json(&img->layers[i], json_array_get(layers, i))) < 0) goto fail;
        const char *oci = ib_image_layer_mt_to_oci(img->layers[i].media_type);
        if (!oci) {
            r = ib_error_set(IB_EINVALID, "image %s: unsupported layer media type %s", manifest_digest,
                             img->layers[i].media_type);
            goto fail;
        }
        free(img->layers[i].media_type);
        img->layers[i].media_type = ib_xstrdup(oci);
        const char *d = json_string_value(json_array_get(diffs, i));
        if (!d || !ib_digest_valid(d)) {
            r = ib_error_set(IB_EINVALID, "image %s: bad diff_id %zu", manifest_digest, i);
            goto fail;
        }
        img->diff_ids[i] = ib_xstrdup(d);
        if (!ib_store_has_blob(s, img->layers[i].digest, NULL)) {
            r = ib_error_set(IB_ENOTFOUND, "image %s: layer %s is missing from the store", manifest_digest,
                             img->layers[i].digest);
            goto fail;
        }
    }
    *out = img;
    return 0;
fail:
    ib_image_free(img);
    return r;
}
