/* A session with one registry host: authenticated requests (anonymous,
 * Basic, Bearer tokens asked for every needed scope up front and refreshed
 * on expiry), blob existence/mount/upload (chunked, resumed from the
 * server's Range after a dropped connection, restarted on
 * BLOB_UPLOAD_UNKNOWN), blob download into the store (verified), manifest
 * get (verified, size-capped) and put (Docker-Content-Digest checked).
 * Thread-safe: blob operations run in parallel on one session. */
#ifndef IB_REGISTRY_CLIENT_H
#define IB_REGISTRY_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "oci/store.h"
#include "registry/http.h"

typedef struct {
    const char *authfile;   /* --authfile */
    const char *ca_file;    /* --ca-file */
    int insecure;           /* --insecure */
    int plain_http;         /* --plain-http */
    int jobs;               /* parallel blob transfers, 0 = 4 */
    uint64_t chunk_size;    /* 0: monolithic up to 4 MiB, else one streamed PATCH; N: PATCHes of N bytes */
} ib_reg_opts;

typedef struct ib_registry ib_registry;

int ib_registry_open(ib_registry **out, const char *host, const ib_reg_opts *o);
void ib_registry_free(ib_registry *r);
const char *ib_registry_host(const ib_registry *r);
/* Declares a scope needed by this session ("repository:<repo>:<actions>"),
 * so the next token covers it. The first repository declared is the one the
 * session acts on (push/pull destination): credentials are looked up for it,
 * so repository-scoped auth.json keys apply (ib_auth_lookup_repo). Declare it
 * before any request; without one (login's ping) the lookup is host-only. */
void ib_registry_want(ib_registry *r, const char *repo, const char *actions);

/* Called from the transferring thread as blob bytes move (upload: read from
 * the store; download: written to it), for progress bars. */
typedef void (*ib_registry_progress_fn)(void *ud, const char *digest, int upload, uint64_t done, uint64_t total);
void ib_registry_on_progress(ib_registry *r, ib_registry_progress_fn fn, void *ud);

/* GET /v2/: checks reachability and credentials (login). */
int ib_registry_ping(ib_registry *r);

int ib_registry_blob_exists(int *exists, ib_registry *r, const char *repo, const char *digest);
/* 1 in *mounted if the registry mounted it from from_repo; 0 if it declined
 * (the caller uploads). */
int ib_registry_blob_mount(int *mounted, ib_registry *r, const char *repo, const char *digest, const char *from_repo);
/* Uploads a store blob. */
int ib_registry_blob_upload(ib_registry *r, const char *repo, const char *digest, ib_store *s);
/* Downloads a blob into the store, verifying digest and size. */
int ib_registry_blob_fetch(ib_registry *r, const char *repo, const char *digest, uint64_t size, ib_store *s);

/* GET a manifest or index by tag or digest. Verified against the digest when
 * the reference is one, and against Docker-Content-Digest when given.
 * *digest_out gets sha256 of the body. Bodies over 4 MiB are refused. */
int ib_registry_manifest_get(char **body, size_t *len, char **media_type, char *digest_out, ib_registry *r,
                             const char *repo, const char *reference);
/* HEAD of a manifest: its digest (Docker-Content-Digest) if the tag exists. IB_ENOTFOUND otherwise. */
int ib_registry_manifest_head(char *digest_out, ib_registry *r, const char *repo, const char *reference);
/* PUT a manifest under a tag or digest; checks the registry's Docker-Content-Digest. */
int ib_registry_manifest_put(ib_registry *r, const char *repo, const char *reference, const char *body, size_t len,
                             const char *media_type, const char *digest);

/* Counters for messages and tests. */
typedef struct {
    unsigned uploaded, mounted, existed, fetched;
    uint64_t bytes_up, bytes_down;
    unsigned resumed, restarted, token_fetches;
} ib_registry_stats;
void ib_registry_get_stats(ib_registry_stats *out, ib_registry *r);

#endif
