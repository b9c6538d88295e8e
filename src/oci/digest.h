/* Streaming SHA-256 digests in OCI form ("sha256:<64 hex>"). */
#ifndef IB_OCI_DIGEST_H
#define IB_OCI_DIGEST_H

#include <stddef.h>
#include <stdint.h>

#define IB_DIGEST_STRLEN 71 /* "sha256:" + 64 hex */

typedef struct ib_digester ib_digester;

int ib_digest_new(ib_digester **out);
void ib_digest_update(ib_digester *d, const void *buf, size_t len);
/* Writes "sha256:<hex>" (NUL-terminated) into out[IB_DIGEST_STRLEN + 1]. */
void ib_digest_final(char *out, ib_digester *d);
uint64_t ib_digest_bytes(const ib_digester *d);
void ib_digest_free(ib_digester *d);

/* One-shot digest of a buffer. */
void ib_digest_buf(char *out, const void *buf, size_t len);
/* Digest of a file's bytes. */
int ib_digest_file(char *out, uint64_t *out_size, const char *path);
/* 1 if s is "sha256:" followed by exactly 64 lowercase hex digits. */
int ib_digest_valid(const char *s);
/* Pointer to the hex part of a valid digest. */
const char *ib_digest_hex(const char *digest);

#endif
