#include "oci/digest.h"
#include "common/error.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct ib_digester {
    EVP_MD_CTX *ctx;
    uint64_t n;
};

int ib_digest_new(ib_digester **out)
{
    ib_digester *d = ib_xcalloc(1, sizeof *d);
    d->ctx = EVP_MD_CTX_new();
    if (!d->ctx || EVP_DigestInit_ex(d->ctx, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(d->ctx);
        free(d);
        return ib_error_set(IB_ERR, "cannot initialise SHA-256");
    }
    *out = d;
    return 0;
}

void ib_digest_update(ib_digester *d, const void *buf, size_t len)
{
    if (!len) return;
    EVP_DigestUpdate(d->ctx, buf, len);
    d->n += len;
}

static void to_hex(char *out, const unsigned char *md, unsigned n)
{
    static const char hx[] = "0123456789abcdef";
    memcpy(out, "sha256:", 7);
    for (unsigned i = 0; i < n; i++) {
        out[7 + 2 * i] = hx[md[i] >> 4];
        out[8 + 2 * i] = hx[md[i] & 15];
    }
    out[7 + 2 * n] = 0;
}

void ib_digest_final(char *out, ib_digester *d)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    EVP_DigestFinal_ex(d->ctx, md, &n);
    to_hex(out, md, n);
}

uint64_t ib_digest_bytes(const ib_digester *d) { return d->n; }

void ib_digest_free(ib_digester *d)
{
    if (!d) return;
    EVP_MD_CTX_free(d->ctx);
    free(d);
}

void ib_digest_buf(char *out, const void *buf, size_t len)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    EVP_Digest(buf, len, md, &n, EVP_sha256(), NULL);
    to_hex(out, md, n);
}

int ib_digest_file(char *out, uint64_t *out_size, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ib_error_errno(errno == ENOENT ? IB_ENOTFOUND : IB_ERR, "%s", path);
    ib_digester *d = NULL;
    int r = ib_digest_new(&d);
    if (r < 0) {
        close(fd);
        return r;
    }
    static _Thread_local unsigned char buf[1 << 17];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR) continue;
            r = ib_error_errno(IB_ERR, "read %s", path);
            break;
        }
        if (n == 0) break;
        ib_digest_update(d, buf, (size_t)n);
    }
    close(fd);
    if (r == 0) {
        ib_digest_final(out, d);
        if (out_size) *out_size = ib_digest_bytes(d);
    }
    ib_digest_free(d);
    return r;
}

int ib_digest_valid(const char *s)
{
    if (!s || strncmp(s, "sha256:", 7) != 0) return 0;
    for (int i = 0; i < 64; i++) {
        char c = s[7 + i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return 0;
    }
    return s[71] == 0;
}

const char *ib_digest_hex(const char *digest) { return digest + 7; }
