/* Image tarballs: the OCI image layout in one tar plus Docker's manifest.json
 * (what `docker save` writes since Docker 25), so skopeo (oci-archive:),
 * umoci, podman load and docker load all read it. */
#ifndef IB_OCI_ARCHIVE_H
#define IB_OCI_ARCHIVE_H

#include <stddef.h>
#include <stdint.h>

#include "oci/store.h"

/* Writes out_path atomically (temp file + rename): nothing is left behind on
 * failure. ref_name = the tag ("sha-<sha>"); image_name = full name with tag
 * ("harbor.local/wepp/app:sha-<sha>"), may be NULL. mtime = header times. */
int ib_archive_write(const char *out_path, ib_store *s, const char *manifest_digest, const char *ref_name,
                     const char *image_name, int64_t mtime);

typedef struct {
    char digest[IB_DIGEST_STRLEN + 1]; /* manifest digest in the store */
    char **names;                      /* normalised references registered in the store */
    size_t nnames;
} ib_loaded;

/* Loads an OCI archive or a docker-archive (docker save, any version) into
 * the store, verifying every blob against its name. Images get refs for
 * their names (io.containerd.image.name, ref.name, RepoTags). */
int ib_archive_load(ib_loaded **out, size_t *nout, ib_store *s, const char *tar_path);
void ib_loaded_free(ib_loaded *l, size_t n);

/* Reads one (small) member of a tar into memory; IB_ENOTFOUND if absent. */
int ib_archive_read_member(char **out, size_t *len, const char *tar_path, const char *member, size_t max);

#endif
