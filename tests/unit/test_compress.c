/* Layer compression: round trips through the reference decoders (zlib inflate,
 * ZSTD_decompressStream), byte-identical output for any thread count and any
 * split of the caller's writes (reproducible images), gzip header fields,
 * validation by the real gzip/zstd tools, and error propagation from the sink. */
#include "ut.h"
#include "common/error.h"
#include "layer/compress.h"

#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#define KiB 1024u
#define MiB (1024u * 1024u)

typedef struct {
    unsigned char *p;
    size_t len, cap;
    int calls;
    int fail_at; /* fail the Nth call (1-based) with fail_code; 0 = never */
    int fail_code;
} buf_t;

static int sink(void *ctx, const void *data, size_t len)
{
    buf_t *b = ctx;
    b->calls++;
    if (b->fail_at && b->calls >= b->fail_at) return ib_error_set(b->fail_code, "test sink: disk full");
    if (b->len + len > b->cap) {
        b->cap = (b->len + len) * 2;
        b->p = ib_xrealloc(b->p, b->cap);
    }
    if (len) memcpy(b->p + b->len, data, len);
    b->len += len;
    return 0;
}

/* Layer-like test data: runs of text (compressible, with repeats across block
 * boundaries so the 32 KiB dictionary matters) mixed with random bytes. */
static unsigned char *gen(size_t n, uint64_t seed)
{
    static const char *words[] = {"static ", "int ", "return ", "const char *", "struct ", "{\n", "}\n",
                                  "    ", "if (", ") ", "0x", "layer", "/usr/lib/", ".so.6", "\n", "= "};
    unsigned char *p = ib_xmalloc(n ? n : 1);
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    size_t i = 0;
    while (i < n) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size_t run = 1 + (size_t)(x % 9000);
        int random = (x >> 32) % 4 == 0;
        for (size_t k = 0; k < run && i < n; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            if (random) {
                p[i++] = (unsigned char)(x >> 24);
            } else {
                const char *w = words[(x >> 20) % 16];
                for (; *w && i < n; w++) p[i++] = (unsigned char)*w;
            }
        }
    }
    return p;
}

/* Compresses `in` writing `chunk` bytes at a time (0 = one write). */
static int run_compress(buf_t *out, ib_comp_algo algo, int level, int threads, const unsigned char *in, size_t n,
                        size_t chunk)
{
    int fail_at = out->fail_at, fail_code = out->fail_code;
    memset(out, 0, sizeof *out);
    out->fail_at = fail_at;
    out->fail_code = fail_code;
    ib_compressor *c;
    int rc = ib_compress_new(&c, algo, level, threads, sink, out);
    if (rc < 0) return rc;
    for (size_t off = 0; off < n && rc == 0;) {
        size_t k = chunk && chunk < n - off ? chunk : n - off;
        rc = ib_compress_write(c, in + off, k);
        off += k;
    }
    if (rc == 0) rc = ib_compress_finish(c);
    ib_compress_free(c);
    return rc;
}

static int gunzip(buf_t *out, const buf_t *in)
{
    memset(out, 0, sizeof *out);
    z_stream s;
    memset(&s, 0, sizeof s);
    if (inflateInit2(&s, 31) != Z_OK) return -1; /* 31: gzip wrapper only */
    s.next_in = in->p;
    s.avail_in = (uInt)in->len;
    unsigned char tmp[64 * 1024];
    int rc;
    do {
        s.next_out = tmp;
        s.avail_out = sizeof tmp;
        rc = inflate(&s, Z_NO_FLUSH);
        sink(out, tmp, sizeof tmp - s.avail_out);
    } while (rc == Z_OK);
    int trailing = (int)s.avail_in; /* one member, nothing after it */
    inflateEnd(&s);
    return rc == Z_STREAM_END && trailing == 0 ? 0 : -1;
}

static int unzstd(buf_t *out, const buf_t *in)
{
    memset(out, 0, sizeof *out);
    ZSTD_DStream *d = ZSTD_createDStream();
    ZSTD_inBuffer ib = {in->p, in->len, 0};
    unsigned char tmp[64 * 1024];
    size_t r = 1;
    while (ib.pos < ib.size) {
        ZSTD_outBuffer ob = {tmp, sizeof tmp, 0};
        r = ZSTD_decompressStream(d, &ob, &ib);
        if (ZSTD_isError(r)) break;
        sink(out, tmp, ob.pos);
    }
    /* Drain anything still buffered in the decoder. */
    while (!ZSTD_isError(r) && r != 0) {
        ZSTD_outBuffer ob = {tmp, sizeof tmp, 0};
        r = ZSTD_decompressStream(d, &ob, &ib);
        if (ZSTD_isError(r) || ob.pos == 0) break;
        sink(out, tmp, ob.pos);
    }
    ZSTD_freeDStream(d);
    return !ZSTD_isError(r) && r == 0 ? 0 : -1;
}

static int same(const buf_t *a, const buf_t *b)
{
    return a->len == b->len && (a->len == 0 || memcmp(a->p, b->p, a->len) == 0);
}

static int roundtrips(ib_comp_algo algo, const buf_t *z, const unsigned char *in, size_t n)
{
    if (algo == IB_COMP_NONE) return z->len == n && (n == 0 || memcmp(z->p, in, n) == 0);
    buf_t plain = {0};
    int rc = algo == IB_COMP_GZIP ? gunzip(&plain, z) : unzstd(&plain, z);
    int ok = rc == 0 && plain.len == n && (n == 0 || memcmp(plain.p, in, n) == 0);
    free(plain.p);
    return ok;
}

/* Runs `cmd` on the compressed bytes written to a temp file: the real tools
 * are the reference for "any reader accepts this". */
static int tool_check(const buf_t *z, const char *cmd_fmt)
{
    char path[] = "/tmp/ib-compress-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return -1;
    int ok = write(fd, z->p, z->len) == (ssize_t)z->len;
    close(fd);
    char cmd[256];
    snprintf(cmd, sizeof cmd, cmd_fmt, path);
    int rc = ok ? system(cmd) : -1;
    unlink(path);
    return rc;
}

static void test_names(void)
{
    ib_comp_algo a = IB_COMP_NONE;
    CHECK_INT(ib_compress_parse(&a, "gzip"), 0);
    CHECK_INT(a, IB_COMP_GZIP);
    CHECK_INT(ib_compress_parse(&a, "zstd"), 0);
    CHECK_INT(a, IB_COMP_ZSTD);
    CHECK_INT(ib_compress_parse(&a, "none"), 0);
    CHECK_INT(a, IB_COMP_NONE);
    CHECK_INT(ib_compress_parse(&a, "lz4"), IB_EUSAGE);
    CHECK(strstr(ib_error_last(), "lz4") != NULL);
    CHECK_INT(ib_compress_parse(&a, "GZIP"), IB_EUSAGE);
    CHECK_STR(ib_compress_name(IB_COMP_GZIP), "gzip");
    CHECK_STR(ib_compress_name(IB_COMP_ZSTD), "zstd");
    CHECK_STR(ib_compress_name(IB_COMP_NONE), "none");
    CHECK_STR(ib_compress_media_type(IB_COMP_NONE), "application/vnd.oci.image.layer.v1.tar");
    CHECK_STR(ib_compress_media_type(IB_COMP_GZIP), "application/vnd.oci.image.layer.v1.tar+gzip");
    CHECK_STR(ib_compress_media_type(IB_COMP_ZSTD), "application/vnd.oci.image.layer.v1.tar+zstd");

    ib_compressor *c = NULL;
    buf_t b = {0};
    CHECK_INT(ib_compress_new(&c, IB_COMP_GZIP, 10, 1, sink, &b), IB_EUSAGE);
    CHECK(c == NULL);
    CHECK_INT(ib_compress_new(&c, IB_COMP_GZIP, -1, 1, sink, &b), IB_EUSAGE);
    CHECK_INT(ib_compress_new(&c, IB_COMP_ZSTD, 1000, 1, sink, &b), IB_EUSAGE);
    CHECK_INT(ib_compress_new(&c, IB_COMP_GZIP, 6, -2, sink, &b), IB_EUSAGE);
}

/* Sizes around the 128 KiB gzip block and 1 MiB zstd staging boundaries. */
static void test_roundtrip_and_determinism(ib_comp_algo algo)
{
    const size_t sizes[] = {0, 1, 128 * KiB - 1, 128 * KiB, 128 * KiB + 1, 1 * MiB, 1 * MiB + 1, 6 * MiB + 12345};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        size_t n = sizes[si];
        unsigned char *in = gen(n, si + 1);
        buf_t ref = {0};
        CHECK_INT(run_compress(&ref, algo, 0, 1, in, n, 0), 0);
        int ok = roundtrips(algo, &ref, in, n);
        if (!ok) fprintf(stderr, "round trip: algo %s size %zu\n", ib_compress_name(algo), n);
        CHECK(ok);

        /* Thread counts and write splits must not change a single byte. */
        const int threads[] = {2, 8, 0};
        for (size_t t = 0; t < 3; t++) {
            buf_t z = {0};
            CHECK_INT(run_compress(&z, algo, 0, threads[t], in, n, 0), 0);
            ok = same(&z, &ref);
            if (!ok) fprintf(stderr, "differs: algo %s size %zu threads %d\n", ib_compress_name(algo), n, threads[t]);
            CHECK(ok);
            free(z.p);
        }
        const size_t chunks[] = {1, 7 * KiB, 1 * MiB, 4099};
        for (size_t k = 0; k < 4; k++) {
            if (chunks[k] == 1 && n > 256 * KiB) continue; /* 1-byte writes only for small inputs */
            for (int th = 1; th <= 2; th++) {
                buf_t z = {0};
                CHECK_INT(run_compress(&z, algo, 0, th, in, n, chunks[k]), 0);
                ok = same(&z, &ref);
                if (!ok)
                    fprintf(stderr, "differs: algo %s size %zu chunk %zu threads %d\n", ib_compress_name(algo), n,
                            chunks[k], th);
                CHECK(ok);
                free(z.p);
            }
        }
        free(ref.p);
        free(in);
    }
}

static void test_gzip_format(void)
{
    size_t n = 3 * MiB + 777;
    unsigned char *in = gen(n, 42);
    buf_t z = {0};
    CHECK_INT(run_compress(&z, IB_COMP_GZIP, 0, 2, in, n, 0), 0);
    /* Header as Go's compress/gzip writes it: no name, mtime 0, OS unknown. */
    CHECK(z.len > 18);
    CHECK_INT(z.p[0], 0x1f);
    CHECK_INT(z.p[1], 0x8b);
    CHECK_INT(z.p[2], 8);
    CHECK_INT(z.p[3], 0);
    CHECK_INT(z.p[4] | z.p[5] | z.p[6] | z.p[7], 0);
    CHECK_INT(z.p[8], 0);
    CHECK_INT(z.p[9], 255);
    /* Trailer: CRC32 and ISIZE, little-endian. */
    uint32_t crc = (uint32_t)crc32(0L, in, (uInt)n), gcrc = 0, isz = 0;
    for (int i = 0; i < 4; i++) {
        gcrc |= (uint32_t)z.p[z.len - 8 + i] << (8 * i);
        isz |= (uint32_t)z.p[z.len - 4 + i] << (8 * i);
    }
    CHECK_INT(gcrc, crc);
    CHECK_INT(isz, n);
    /* The ratio stays close to single-stream deflate (the dictionary works). */
    uLongf one_len = compressBound((uLong)n);
    unsigned char *one = ib_xmalloc(one_len);
    CHECK_INT(compress2(one, &one_len, in, (uLong)n, 6), Z_OK);
    CHECK(z.len < one_len + one_len / 50 + 64);
    free(one);

    CHECK_INT(tool_check(&z, "gzip -t %s"), 0);
    if (system("command -v pigz >/dev/null 2>&1") == 0) CHECK_INT(tool_check(&z, "pigz -t %s"), 0);
    free(z.p);

    buf_t e = {0};
    CHECK_INT(run_compress(&e, IB_COMP_GZIP, 0, 4, in, 0, 0), 0);
    CHECK_INT(tool_check(&e, "gzip -t %s"), 0);
    CHECK_INT(e.len, 20); /* header + empty final block (03 00) + trailer */
    free(e.p);

    /* XFL follows the level; other levels round-trip too. */
    for (int level = 1; level <= 9; level += 8) {
        CHECK_INT(run_compress(&z, IB_COMP_GZIP, level, 2, in, 300 * KiB, 5000), 0);
        CHECK_INT(z.p[8], level == 9 ? 2 : 4);
        CHECK(roundtrips(IB_COMP_GZIP, &z, in, 300 * KiB));
        buf_t z1 = {0};
        CHECK_INT(run_compress(&z1, IB_COMP_GZIP, level, 1, in, 300 * KiB, 0), 0);
        CHECK(same(&z, &z1));
        free(z1.p);
        free(z.p);
    }
    free(in);
}

static void test_zstd_format(void)
{
    size_t n = 5 * MiB + 3;
    unsigned char *in = gen(n, 7);
    buf_t z = {0};
    CHECK_INT(run_compress(&z, IB_COMP_ZSTD, 0, 2, in, n, 64 * KiB), 0);
    CHECK(z.len > 4 && z.p[0] == 0x28 && z.p[1] == 0xb5 && z.p[2] == 0x2f && z.p[3] == 0xfd);
    CHECK(z.len < n / 2);
    if (system("command -v zstd >/dev/null 2>&1") == 0) CHECK_INT(tool_check(&z, "zstd -q -t %s"), 0);
    free(z.p);
    /* Other levels stay thread-independent too. */
    buf_t a = {0}, b = {0};
    CHECK_INT(run_compress(&a, IB_COMP_ZSTD, 1, 1, in, n, 0), 0);
    CHECK_INT(run_compress(&b, IB_COMP_ZSTD, 1, 3, in, n, 100 * KiB), 0);
    CHECK(same(&a, &b));
    CHECK(roundtrips(IB_COMP_ZSTD, &a, in, n));
    free(a.p);
    free(b.p);
    free(in);
}

/* A failing sink (disk full, broken pipe) stops compression with its code, in
 * write or in finish, and later calls keep failing instead of losing data. */
static void test_sink_error(void)
{
    size_t n = 2 * MiB;
    unsigned char *in = gen(n, 3);
    const ib_comp_algo algos[] = {IB_COMP_GZIP, IB_COMP_ZSTD, IB_COMP_NONE};
    for (int ai = 0; ai < 3; ai++) {
        for (int threads = 1; threads <= 4; threads += 3) {
            for (int fail_at = 1; fail_at <= 3; fail_at++) {
                buf_t b = {0};
                b.fail_at = fail_at;
                b.fail_code = IB_EINVALID;
                ib_compressor *c;
                CHECK_INT(ib_compress_new(&c, algos[ai], 0, threads, sink, &b), 0);
                int rc = 0;
                for (size_t off = 0; off < n && rc == 0; off += 64 * KiB) rc = ib_compress_write(c, in + off, 64 * KiB);
                if (rc == 0) rc = ib_compress_finish(c);
                CHECK_INT(rc, IB_EINVALID);
                CHECK_INT(ib_compress_write(c, in, 10), IB_EINVALID);
                CHECK_INT(ib_compress_finish(c), IB_EINVALID);
                ib_compress_free(c);
                free(b.p);
            }
        }
    }
    /* Error raised by the very last sink call (the gzip trailer / zstd epilogue). */
    buf_t ok = {0};
    CHECK_INT(run_compress(&ok, IB_COMP_GZIP, 0, 2, in, 1000, 0), 0);
    buf_t b = {0};
    b.fail_at = ok.calls;
    b.fail_code = IB_ERR;
    CHECK_INT(run_compress(&b, IB_COMP_GZIP, 0, 2, in, 1000, 0), IB_ERR);
    CHECK_STR(ib_error_last(), "test sink: disk full");
    free(b.p);
    free(ok.p);
    free(in);
}

/* Freeing in mid-stream (the caller gave up) must stop the workers and free
 * everything; ASan checks for leaks. Also: write after finish is refused. */
static void test_abandon(void)
{
    size_t n = 3 * MiB;
    unsigned char *in = gen(n, 5);
    for (int algo = IB_COMP_GZIP; algo <= IB_COMP_ZSTD; algo++) {
        buf_t b = {0};
        ib_compressor *c;
        CHECK_INT(ib_compress_new(&c, (ib_comp_algo)algo, 0, 3, sink, &b), 0);
        CHECK_INT(ib_compress_write(c, in, n), 0);
        ib_compress_free(c);
        free(b.p);

        memset(&b, 0, sizeof b);
        CHECK_INT(ib_compress_new(&c, (ib_comp_algo)algo, 0, 2, sink, &b), 0);
        CHECK_INT(ib_compress_write(c, in, 1000), 0);
        CHECK_INT(ib_compress_finish(c), 0);
        CHECK(ib_compress_write(c, in, 1) < 0);
        CHECK(ib_compress_finish(c) < 0);
        ib_compress_free(c);
        free(b.p);
    }
    free(in);
}

/* A stream much longer than the ring of in-flight blocks, fed in odd pieces:
 * exercises slot reuse and the dictionary hand-over across wrap-arounds (a
 * worker that lapped the ring once compressed a block twice). */
static void test_long_stream(void)
{
    size_t n = 24 * MiB + 5;
    unsigned char *in = gen(n, 11);
    buf_t a = {0}, b = {0};
    CHECK_INT(run_compress(&a, IB_COMP_GZIP, 1, 2, in, n, 333 * KiB + 1), 0);
    CHECK_INT(run_compress(&b, IB_COMP_GZIP, 1, 5, in, n, 0), 0);
    CHECK(same(&a, &b));
    CHECK(roundtrips(IB_COMP_GZIP, &a, in, n));
    free(a.p);
    free(b.p);
    /* zstd at its default level cuts 8 MiB jobs: several jobs, several workers. */
    CHECK_INT(run_compress(&a, IB_COMP_ZSTD, 0, 1, in, n, 333 * KiB + 1), 0);
    CHECK_INT(run_compress(&b, IB_COMP_ZSTD, 0, 4, in, n, 0), 0);
    CHECK(same(&a, &b));
    CHECK(roundtrips(IB_COMP_ZSTD, &a, in, n));
    free(a.p);
    free(b.p);
    free(in);
}

int main(void)
{
    test_names();
    test_roundtrip_and_determinism(IB_COMP_NONE);
    test_roundtrip_and_determinism(IB_COMP_GZIP);
    test_roundtrip_and_determinism(IB_COMP_ZSTD);
    test_gzip_format();
    test_zstd_format();
    test_sink_error();
    test_abandon();
    test_long_stream();
    return ut_done();
}
