/* Image manifests and configs: media types, loading an image from the store
 * (verified), and normalising Docker schema2 media types to OCI ones so one
 * manifest never mixes the two families. */
#ifndef IB_OCI_IMAGE_H
#define IB_OCI_IMAGE_H

#include <jansson.h>
#include <stdint.h>

#include "oci/digest.h"
#include "oci/store.h"

#define IB_MT_OCI_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define IB_MT_OCI_INDEX "application/vnd.oci.image.index.v1+json"
#define IB_MT_OCI_CONFIG "application/vnd.oci.image.config.v1+json"
#define IB_MT_OCI_LAYER "application/vnd.oci.image.layer.v1.tar"
#define IB_MT_OCI_LAYER_GZIP "application/vnd.oci.image.layer.v1.tar+gzip"
#define IB_MT_OCI_LAYER_ZSTD "application/vnd.oci.image.layer.v1.tar+zstd"
#define IB_MT_DOCKER_MANIFEST "application/vnd.docker.distribution.manifest.v2+json"
#define IB_MT_DOCKER_LIST "application/vnd.docker.distribution.manifest.list.v2+json"
#define IB_MT_DOCKER_CONFIG "application/vnd.docker.container.image.v1+json"
#define IB_MT_DOCKER_LAYER "application/vnd.docker.image.rootfs.diff.tar"
#define IB_MT_DOCKER_LAYER_GZIP "application/vnd.docker.image.rootfs.diff.tar.gzip"

/* Manifests above this size are refused (Harbor's and Distribution's limit). */
#define IB_MANIFEST_MAX (4u << 20)
#define IB_CONFIG_MAX (16u << 20)

typedef struct {
    char *media_type;
    char digest[IB_DIGEST_STRLEN + 1];
    uint64_t size;
} ib_desc;

typedef struct {
    char digest[IB_DIGEST_STRLEN + 1]; /* of the manifest */
    uint64_t size;
    json_t *manifest;
    json_t *config;
    ib_desc config_desc;
    ib_desc *layers;   /* media types normalised to OCI */
    size_t nlayers;
    char **diff_ids;   /* from config rootfs.diff_ids, nlayers entries */
} ib_image;

/* Loads and verifies manifest + config; checks that every layer blob is in the store. */
int ib_image_load(ib_image **out, ib_store *s, const char *manifest_digest);
void ib_image_free(ib_image *img);

/* OCI equivalent of a (Docker or OCI) layer media type, or NULL if unknown. */
const char *ib_image_layer_mt_to_oci(const char *mt);
/* Parses a descriptor object. */
int ib_desc_from_json(ib_desc *out, const json_t *j);
json_t *ib_desc_to_json(const ib_desc *d);
void ib_desc_clear(ib_desc *d);

/* Compact, deterministic serialisation (insertion order kept). Caller frees. */
char *ib_json_dump(const json_t *j);
/* "2026-11-23T04:21:40Z" for a unix time. */
void ib_rfc3339(char out[32], int64_t t);

#endif
