/* ib-compress ALGO LEVEL THREADS < in > out
 *
 * Benchmark helper (not installed): streams stdin through the layer
 * compressor to stdout, so bench/compress.sh can time it against pigz/zstd on
 * equal terms (same pipes, same file sizes). */
#include "common/error.h"
#include "layer/compress.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static int write_all(void *ctx, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t n = write(STDOUT_FILENO, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return ib_error_errno(IB_ERR, "write stdout");
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: ib-compress gzip|zstd|none LEVEL THREADS < in > out\n");
        return 2;
    }
    ib_comp_algo algo;
    if (ib_compress_parse(&algo, argv[1]) < 0) {
        fprintf(stderr, "ib-compress: error: %s\n", ib_error_last());
        return 2;
    }
    ib_compressor *c;
    if (ib_compress_new(&c, algo, atoi(argv[2]), atoi(argv[3]), write_all, NULL) < 0) {
        fprintf(stderr, "ib-compress: error: %s\n", ib_error_last());
        return 2;
    }
    /* 1 MiB reads: large enough that syscalls do not show up in the profile,
     * like the peers' own I/O buffers. */
    size_t cap = 1 << 20;
    char *buf = ib_xmalloc(cap);
    int rc = 0;
    for (;;) {
        ssize_t n = read(STDIN_FILENO, buf, cap);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            rc = ib_error_errno(IB_ERR, "read stdin");
            break;
        }
        if (n == 0) {
            rc = ib_compress_finish(c);
            break;
        }
        if ((rc = ib_compress_write(c, buf, (size_t)n)) < 0) break;
    }
    if (rc < 0) fprintf(stderr, "ib-compress: error: %s\n", ib_error_last());
    ib_compress_free(c);
    free(buf);
    return rc < 0 ? 1 : 0;
}
