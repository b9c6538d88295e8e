#include "ut.h"
#include "oci/digest.h"
#include "common/error.h"

#include <stdlib.h>
#include <unistd.h>

int main(void)
{
    char d[IB_DIGEST_STRLEN + 1];
    /* Known answers (FIPS 180-2 test vectors). */
    ib_digest_buf(d, "", 0);
    CHECK_STR(d, "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    ib_digest_buf(d, "abc", 3);
    CHECK_STR(d, "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");

    /* Streaming in odd pieces equals one shot. */
    char big[100000];
    for (size_t i = 0; i < sizeof big; i++) big[i] = (char)(i * 7 + 3);
    char one[IB_DIGEST_STRLEN + 1], many[IB_DIGEST_STRLEN + 1];
    ib_digest_buf(one, big, sizeof big);
    ib_digester *g = NULL;
    CHECK(ib_digest_new(&g) == 0);
    for (size_t off = 0; off < sizeof big;) {
        size_t n = (off * 13 % 977) + 1;
        if (off + n > sizeof big) n = sizeof big - off;
        ib_digest_update(g, big + off, n);
        off += n;
    }
    CHECK_INT(ib_digest_bytes(g), sizeof big);
    ib_digest_final(many, g);
    ib_digest_free(g);
    CHECK_STR(many, one);

    /* File digest equals buffer digest. */
    char path[] = "/tmp/ib-digest-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    CHECK(write(fd, big, sizeof big) == (ssize_t)sizeof big);
    close(fd);
    uint64_t size = 0;
    CHECK(ib_digest_file(d, &size, path) == 0);
    CHECK_STR(d, one);
    CHECK_INT(size, sizeof big);
    unlink(path);
    CHECK(ib_digest_file(d, &size, path) == IB_ENOTFOUND);

    CHECK(ib_digest_valid(one));
    CHECK(!ib_digest_valid("sha256:abc"));
    CHECK(!ib_digest_valid("sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
    CHECK(!ib_digest_valid("sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"));
    CHECK(!ib_digest_valid("sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855x"));
    return ut_done();
}
