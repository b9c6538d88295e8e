/* Streaming layer compression: parallel gzip (pigz-style independent 128 KiB
 * blocks primed with the previous 32 KiB as dictionary, CRCs combined),
 * multithreaded zstd (libzstd), or none. Output bytes depend only on the
 * input, algorithm and level, NEVER on the thread count, so images are
 * reproducible across machines with different core counts. */
#ifndef IB_LAYER_COMPRESS_H
#define IB_LAYER_COMPRESS_H

#include <stddef.h>

typedef enum { IB_COMP_NONE = 0, IB_COMP_GZIP = 1, IB_COMP_ZSTD = 2 } ib_comp_algo;

/* Receives compressed bytes, always in order and always on the thread that
 * called write/finish. Returns 0, or <0 to abort (propagated). */
typedef int (*ib_sink_fn)(void *ctx, const void *buf, size_t len);

typedef struct ib_compressor ib_compressor;

/* level 0 = default (gzip 6, zstd 3); threads 0 = number of online CPUs. */
int ib_compress_new(ib_compressor **out, ib_comp_algo algo, int level, int threads, ib_sink_fn sink,
                    void *sink_ctx);
int ib_compress_write(ib_compressor *c, const void *buf, size_t len);
/* Flushes everything and writes the trailer. No writes after this. */
int ib_compress_finish(ib_compressor *c);
void ib_compress_free(ib_compressor *c);

/* "gzip" | "zstd" | "none" -> algo; IB_EUSAGE with a message otherwise. */
int ib_compress_parse(ib_comp_algo *out, const char *name);
const char *ib_compress_name(ib_comp_algo a);
/* OCI layer media type for the algorithm ("application/vnd.oci.image.layer.v1.tar+gzip"). */
const char *ib_compress_media_type(ib_comp_algo a);

#endif
