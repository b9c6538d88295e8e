/* Streaming layer compression (see compress.h for the contract).
 *
 * gzip follows pigz: the input is cut into fixed 128 KiB blocks, each block is
 * raw-deflated on its own (primed with the previous block's last 32 KiB as a
 * dictionary so the ratio stays close to single-stream deflate) and ended with
 * a sync flush so the pieces concatenate into one valid deflate stream. Block
 * boundaries depend only on the byte offset in the input, never on the thread
 * count or on how the caller splits its writes, so the output is reproducible.
 *
 * zstd uses libzstd's own worker pool with nbWorkers >= 1 always: libzstd's
 * multithreaded format is independent of the worker count, but differs from
 * the single-threaded (nbWorkers = 0) one, so "1 thread" must still mean
 * nbWorkers = 1 for images to match across machines. */
#include "layer/compress.h"

#include "common/error.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#define GZ_BLOCK (128u * 1024u) /* pigz's default block size (-b 128) */
#define GZ_DICT (32u * 1024u)   /* deflate's maximum window */
/* Worst-case raw deflate output for one block: stored blocks cost 5 bytes per
 * 64 KiB at most, plus the sync/final markers; the slack is generous so one
 * deflate() call always suffices (the loop still grows the buffer if not). */
#define GZ_OUT_CAP (GZ_BLOCK + GZ_BLOCK / 16 + 256)
/* More workers than this only costs memory (each holds ~0.3 MB of buffers and
 * a 256 KiB deflate state) without making a single stream faster in practice. */
#define MAX_THREADS 64

/* zstd input is handed to libzstd in fixed-size pieces so the sequence of
 * ZSTD_compressStream2() calls, and therefore the frame, depends only on the
 * input bytes: in particular a stream shorter than one piece reaches libzstd
 * in a single ZSTD_e_end call (content size recorded in the frame header), no
 * matter whether the caller wrote it in one go or byte by byte. */
#define ZS_CHUNK (1024u * 1024u)

/* A slot cycles FREE -> FILLING (caller copies input in) -> QUEUED -> BUSY (a
 * worker compresses it) -> DONE -> FREE (caller passed it to the sink). BUSY
 * matters: without it a worker that has wrapped around the ring would take a
 * block still being compressed for the one queued after it. */
enum { SLOT_FREE, SLOT_FILLING, SLOT_QUEUED, SLOT_BUSY, SLOT_DONE };

typedef struct gz_job {
    unsigned char *in; /* GZ_BLOCK bytes */
    size_t in_len;
    unsigned char dict[GZ_DICT]; /* copy of the previous block's tail */
    size_t dict_len;
    unsigned char *out;
    size_t out_cap, out_len;
    unsigned long crc; /* crc32 of in[0..in_len) */
    int last;
    int state;
    int zrc; /* Z_OK, or the zlib error a worker hit */
} gz_job;

typedef struct gz_state {
    int level;
    int nworkers; /* 0: compress inline on the caller's thread */
    size_t nslots;
    gz_job *slots;
    /* Sequence numbers; block s lives in slots[s % nslots]. Only the caller's
     * thread touches next_seq and emit_seq; take_seq and every slot's state
     * are shared with the workers and guarded by mu. */
    uint64_t next_seq; /* block being filled / next to be created */
    uint64_t take_seq; /* next queued block a worker will pick up */
    uint64_t emit_seq; /* next block whose output goes to the sink */
    gz_job *cur;       /* block being filled, or NULL */
    unsigned long crc;
    uint64_t total;
    int header_done;
    z_stream inline_strm; /* used when nworkers == 0 */
    int inline_init;
    pthread_t *threads;
    int nstarted;
    pthread_mutex_t mu;
    pthread_cond_t work_cv; /* workers: a block was queued, or shutdown */
    pthread_cond_t done_cv; /* caller: a block finished */
    int shutdown;
    int worker_init_failed;
} gz_state;

struct ib_compressor {
    ib_comp_algo algo;
    ib_sink_fn sink;
    void *sink_ctx;
    int err;      /* sticky: once a call failed, every later call fails */
    int finished; /* finish() ran (successfully or not) */
    gz_state gz;
    ZSTD_CCtx *zs;
    unsigned char *zs_in; /* ZS_CHUNK staging buffer */
    size_t zs_in_len;
    unsigned char *zs_out;
    size_t zs_out_cap;
};

static int emit(ib_compressor *c, const void *buf, size_t len)
{
    if (len == 0) return 0;
    int rc = c->sink(c->sink_ctx, buf, len);
    if (rc < 0) {
        /* Keep the sink's own code and message: it knows what went wrong. */
        c->err = rc;
        return rc;
    }
    return 0;
}

/* ---------------------------------------------------------------- gzip --- */

/* Compresses one block with `strm` (already set up for raw deflate). Runs on a
 * worker or, for single-threaded use, on the caller's thread; the two give the
 * same bytes because the block's input, dictionary and flush mode are fixed
 * before it is queued. Returns a zlib status (never touches the error slot,
 * which is thread-local and would be lost on a worker). */
static int gz_compress_block(z_stream *strm, gz_job *j)
{
    int rc = deflateReset(strm);
    if (rc != Z_OK) return rc;
    if (j->dict_len) {
        rc = deflateSetDictionary(strm, j->dict, (uInt)j->dict_len);
        if (rc != Z_OK) return rc;
    }
    j->crc = crc32(0L, j->in, (uInt)j->in_len);
    strm->next_in = j->in;
    strm->avail_in = (uInt)j->in_len;
    /* Z_SYNC_FLUSH ends every non-final block on a byte boundary with an empty
     * stored block, so the next block's bytes can simply be appended. */
    int flush = j->last ? Z_FINISH : Z_SYNC_FLUSH;
    j->out_len = 0;
    for (;;) {
        if (j->out_len == j->out_cap) {
            j->out_cap *= 2;
            j->out = ib_xrealloc(j->out, j->out_cap);
        }
        strm->next_out = j->out + j->out_len;
        strm->avail_out = (uInt)(j->out_cap - j->out_len);
        rc = deflate(strm, flush);
        j->out_len = j->out_cap - strm->avail_out;
        if (rc == Z_STREAM_ERROR) return rc;
        if (j->last ? rc == Z_STREAM_END : (strm->avail_in == 0 && strm->avail_out != 0)) break;
    }
    return Z_OK;
}

static int gz_strm_init(z_stream *strm, int level)
{
    memset(strm, 0, sizeof *strm);
    /* windowBits -15: raw deflate, the gzip wrapper is written by hand so the
     * blocks can be produced independently; memLevel 8 is zlib's default
     * (what gzip/pigz/Go use), so ratios match theirs. */
    return deflateInit2(strm, level, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY);
}

static void *gz_worker(void *arg)
{
    ib_compressor *c = arg;
    gz_state *g = &c->gz;
    z_stream strm;
    int zinit = gz_strm_init(&strm, g->level);
    pthread_mutex_lock(&g->mu);
    if (zinit != Z_OK) {
        g->worker_init_failed = 1;
        pthread_cond_broadcast(&g->done_cv);
    }
    while (zinit == Z_OK) {
        if (g->shutdown) break;
        /* Blocks are taken in order; the slot holds an older, already taken
         * block until the caller queues the next one. */
        if (g->slots[g->take_seq % g->nslots].state != SLOT_QUEUED) {
            pthread_cond_wait(&g->work_cv, &g->mu);
            continue;
        }
        gz_job *j = &g->slots[g->take_seq % g->nslots];
        j->state = SLOT_BUSY;
        g->take_seq++;
        pthread_mutex_unlock(&g->mu);
        int rc = gz_compress_block(&strm, j);
        pthread_mutex_lock(&g->mu);
        j->zrc = rc;
        j->state = SLOT_DONE;
        /* Broadcast: the caller waits for one specific block, which may not be
         * the one that just finished. */
        pthread_cond_broadcast(&g->done_cv);
    }
    pthread_mutex_unlock(&g->mu);
    if (zinit == Z_OK) deflateEnd(&strm);
    return NULL;
}

static void gz_set_state(gz_state *g, gz_job *j, int state)
{
    if (g->nworkers) pthread_mutex_lock(&g->mu);
    j->state = state;
    if (g->nworkers) {
        /* Only QUEUED concerns the workers; one of them is enough. */
        if (state == SLOT_QUEUED) pthread_cond_signal(&g->work_cv);
        pthread_mutex_unlock(&g->mu);
    }
}

static void gz_write_header(unsigned char h[10], int level)
{
    /* RFC 1952 member header without FNAME/MTIME, as Go's compress/gzip writes
     * it (and therefore Docker/containerd layers): ID1 ID2 CM=8 FLG=0 MTIME=0,
     * XFL=2 for best compression / 4 for fastest, OS=255 (unknown), so the
     * bytes never depend on the host or the time. */
    h[0] = 0x1f;
    h[1] = 0x8b;
    h[2] = 8;
    h[3] = 0;
    h[4] = h[5] = h[6] = h[7] = 0;
    h[8] = level == 9 ? 2 : level == 1 ? 4 : 0;
    h[9] = 255;
}

/* Sends the oldest in-flight block to the sink. With `wait`, blocks until it
 * is compressed; without, returns 1 if it is not ready yet. */
static int gz_emit_one(ib_compressor *c, int wait)
{
    gz_state *g = &c->gz;
    gz_job *j = &g->slots[g->emit_seq % g->nslots];
    if (g->nworkers) {
        pthread_mutex_lock(&g->mu);
        while (j->state != SLOT_DONE && wait && !g->worker_init_failed)
            pthread_cond_wait(&g->done_cv, &g->mu);
        int st = j->state, failed = g->worker_init_failed;
        pthread_mutex_unlock(&g->mu);
        if (st != SLOT_DONE) {
            if (failed) return c->err = ib_error_set(IB_ERR, "gzip: cannot initialise deflate in a worker");
            return 1;
        }
    }
    if (j->zrc != Z_OK) return c->err = ib_error_set(IB_ERR, "gzip: deflate failed (zlib error %d)", j->zrc);
    if (!g->header_done) {
        unsigned char h[10];
        gz_write_header(h, g->level);
        g->header_done = 1;
        if (emit(c, h, sizeof h) < 0) return c->err;
    }
    g->crc = crc32_combine(g->crc, j->crc, (z_off_t)j->in_len);
    g->total += j->in_len;
    int rc = emit(c, j->out, j->out_len);
    gz_set_state(g, j, SLOT_FREE);
    g->emit_seq++;
    return rc;
}

/* Queues the block being filled for compression (inline when single-threaded),
 * then passes along whatever blocks are already finished, in order, so the
 * sink sees data as early as possible. */
static int gz_dispatch(ib_compressor *c, int last)
{
    gz_state *g = &c->gz;
    gz_job *j = g->cur;
    j->last = last;
    g->cur = NULL;
    g->next_seq++;
    if (g->nworkers) {
        gz_set_state(g, j, SLOT_QUEUED);
    } else {
        j->zrc = gz_compress_block(&g->inline_strm, j);
        j->state = SLOT_DONE;
    }
    while (g->emit_seq < g->next_seq) {
        int rc = gz_emit_one(c, 0);
        if (rc < 0) return rc;
        if (rc > 0) break;
    }
    return 0;
}

/* Starts the next block in the ring, first draining the block that last used
 * that slot: this is what bounds memory to nslots blocks however long the
 * stream is. */
static int gz_begin_block(ib_compressor *c)
{
    gz_state *g = &c->gz;
    uint64_t seq = g->next_seq;
    gz_job *j = &g->slots[seq % g->nslots];
    /* Blocks before `seq` are all queued, so this waits on workers only. */
    while (g->emit_seq + g->nslots <= seq) {
        int rc = gz_emit_one(c, 1);
        if (rc < 0) return rc;
    }
    j->in_len = 0;
    j->dict_len = 0;
    if (seq > 0) {
        /* The previous block is always full (a block only follows a full one),
         * and its slot cannot be reused before this one is started: nslots >= 2.
         * Copy rather than point into it, since that slot may be refilled
         * while this block is still waiting for a worker. */
        gz_job *prev = &g->slots[(seq - 1) % g->nslots];
        memcpy(j->dict, prev->in + GZ_BLOCK - GZ_DICT, GZ_DICT);
        j->dict_len = GZ_DICT;
    }
    gz_set_state(g, j, SLOT_FILLING);
    g->cur = j;
    return 0;
}

static int gz_write(ib_compressor *c, const unsigned char *p, size_t len)
{
    gz_state *g = &c->gz;
    while (len) {
        /* A full block is only queued once more input arrives, so that the
         * final block is known at finish() and ends with Z_FINISH directly
         * (no extra empty block, same bytes however the writes were split). */
        if (g->cur && g->cur->in_len == GZ_BLOCK) {
            int rc = gz_dispatch(c, 0);
            if (rc < 0) return rc;
        }
        if (!g->cur) {
            int rc = gz_begin_block(c);
            if (rc < 0) return rc;
        }
        gz_job *j = g->cur;
        size_t n = GZ_BLOCK - j->in_len;
        if (n > len) n = len;
        memcpy(j->in + j->in_len, p, n);
        j->in_len += n;
        p += n;
        len -= n;
    }
    return 0;
}

static int gz_finish(ib_compressor *c)
{
    gz_state *g = &c->gz;
    int rc;
    /* Empty input still needs one (empty, final) deflate block. */
    if (!g->cur && (rc = gz_begin_block(c)) < 0) return rc;
    if ((rc = gz_dispatch(c, 1)) < 0) return rc;
    while (g->emit_seq < g->next_seq)
        if ((rc = gz_emit_one(c, 1)) < 0) return rc;
    /* RFC 1952 trailer: CRC32 and ISIZE (length mod 2^32), little-endian. */
    unsigned char t[8];
    uint32_t crc = (uint32_t)g->crc, isz = (uint32_t)g->total;
    for (int i = 0; i < 4; i++) {
        t[i] = (unsigned char)(crc >> (8 * i));
        t[4 + i] = (unsigned char)(isz >> (8 * i));
    }
    return emit(c, t, sizeof t);
}

static void gz_stop(gz_state *g)
{
    if (g->nworkers) {
        pthread_mutex_lock(&g->mu);
        g->shutdown = 1;
        pthread_cond_broadcast(&g->work_cv);
        pthread_mutex_unlock(&g->mu);
        for (int i = 0; i < g->nstarted; i++) pthread_join(g->threads[i], NULL);
        g->nstarted = 0;
    }
}

static void gz_free(gz_state *g)
{
    gz_stop(g);
    if (g->nworkers) {
        pthread_mutex_destroy(&g->mu);
        pthread_cond_destroy(&g->work_cv);
        pthread_cond_destroy(&g->done_cv);
    }
    free(g->threads);
    if (g->inline_init) deflateEnd(&g->inline_strm);
    for (size_t i = 0; g->slots && i < g->nslots; i++) {
        free(g->slots[i].in);
        free(g->slots[i].out);
    }
    free(g->slots);
}

static int gz_init(ib_compressor *c, int level, int threads)
{
    gz_state *g = &c->gz;
    g->level = level;
    g->crc = crc32(0L, Z_NULL, 0);
    /* One thread: compress on the caller's thread, saving the hand-offs; the
     * bytes are the same because blocks are defined the same way. Otherwise
     * keep about two blocks per worker in flight (one compressing, one queued)
     * plus the one being filled and the one being emitted. */
    g->nworkers = threads > 1 ? threads : 0;
    g->nslots = threads > 1 ? 2 * (size_t)threads + 2 : 2;
    g->slots = ib_xcalloc(g->nslots, sizeof *g->slots);
    for (size_t i = 0; i < g->nslots; i++) {
        g->slots[i].in = ib_xmalloc(GZ_BLOCK);
        g->slots[i].out_cap = GZ_OUT_CAP;
        g->slots[i].out = ib_xmalloc(GZ_OUT_CAP);
        g->slots[i].state = SLOT_FREE;
    }
    if (!g->nworkers) {
        if (gz_strm_init(&g->inline_strm, level) != Z_OK)
            return ib_error_set(IB_ERR, "gzip: cannot initialise deflate (level %d)", level);
        g->inline_init = 1;
        return 0;
    }
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->work_cv, NULL);
    pthread_cond_init(&g->done_cv, NULL);
    g->threads = ib_xcalloc((size_t)g->nworkers, sizeof *g->threads);
    for (int i = 0; i < g->nworkers; i++) {
        int e = pthread_create(&g->threads[i], NULL, gz_worker, c);
        if (e) return ib_error_set(IB_ERR, "gzip: cannot start worker thread: %s", strerror(e));
        g->nstarted++;
    }
    return 0;
}

/* ---------------------------------------------------------------- zstd --- */

static int zs_call(ib_compressor *c, const void *src, size_t len, ZSTD_EndDirective end)
{
    ZSTD_inBuffer in = {src, len, 0};
    for (;;) {
        ZSTD_outBuffer out = {c->zs_out, c->zs_out_cap, 0};
        size_t r = ZSTD_compressStream2(c->zs, &out, &in, end);
        if (ZSTD_isError(r))
            return c->err = ib_error_set(IB_ERR, "zstd: compression failed: %s", ZSTD_getErrorName(r));
        if (emit(c, c->zs_out, out.pos) < 0) return c->err;
        /* continue: done once libzstd has taken all input (it keeps what it
         * cannot compress yet); end: done once the frame is fully flushed. */
        if (end == ZSTD_e_continue ? in.pos == in.size : r == 0) return 0;
    }
}

static int zs_write(ib_compressor *c, const unsigned char *p, size_t len)
{
    while (len) {
        /* Whole chunks straight from the caller's buffer when nothing is
         * staged: same call boundaries as staging them, one copy fewer. */
        if (c->zs_in_len == 0 && len >= ZS_CHUNK) {
            int rc = zs_call(c, p, ZS_CHUNK, ZSTD_e_continue);
            if (rc < 0) return rc;
            p += ZS_CHUNK;
            len -= ZS_CHUNK;
            continue;
        }
        size_t n = ZS_CHUNK - c->zs_in_len;
        if (n > len) n = len;
        memcpy(c->zs_in + c->zs_in_len, p, n);
        c->zs_in_len += n;
        p += n;
        len -= n;
        if (c->zs_in_len == ZS_CHUNK) {
            int rc = zs_call(c, c->zs_in, ZS_CHUNK, ZSTD_e_continue);
            if (rc < 0) return rc;
            c->zs_in_len = 0;
        }
    }
    return 0;
}

static int zs_init(ib_compressor *c, int level, int threads)
{
    c->zs = ZSTD_createCCtx();
    if (!c->zs) return ib_error_set(IB_ERR, "zstd: cannot create context");
    size_t r;
    if (ZSTD_isError(r = ZSTD_CCtx_setParameter(c->zs, ZSTD_c_compressionLevel, level)) ||
        ZSTD_isError(r = ZSTD_CCtx_setParameter(c->zs, ZSTD_c_checksumFlag, 1)))
        return ib_error_set(IB_ERR, "zstd: %s", ZSTD_getErrorName(r));
    /* Fails when libzstd was built without threads; refuse rather than fall
     * back to nbWorkers = 0, whose output differs (see top of file). */
    if (ZSTD_isError(r = ZSTD_CCtx_setParameter(c->zs, ZSTD_c_nbWorkers, threads)))
        return ib_error_set(IB_ERR, "zstd: cannot use %d worker threads: %s", threads, ZSTD_getErrorName(r));
    c->zs_in = ib_xmalloc(ZS_CHUNK);
    c->zs_out_cap = ZSTD_CStreamOutSize();
    c->zs_out = ib_xmalloc(c->zs_out_cap);
    return 0;
}

/* -------------------------------------------------------------- public --- */

int ib_compress_new(ib_compressor **out, ib_comp_algo algo, int level, int threads, ib_sink_fn sink,
                    void *sink_ctx)
{
    *out = NULL;
    if (!sink) return ib_error_set(IB_EUSAGE, "compress: no output sink");
    if (threads < 0) return ib_error_set(IB_EUSAGE, "compress: invalid thread count %d", threads);
    if (threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (int)(n < MAX_THREADS ? n : MAX_THREADS) : 1;
    }
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    switch (algo) {
    case IB_COMP_NONE:
        break;
    case IB_COMP_GZIP:
        if (level == 0) level = 6;
        if (level < 1 || level > 9) return ib_error_set(IB_EUSAGE, "gzip: level %d out of range 1-9", level);
        break;
    case IB_COMP_ZSTD:
        if (level == 0) level = 3;
        if (level < ZSTD_minCLevel() || level > ZSTD_maxCLevel())
            return ib_error_set(IB_EUSAGE, "zstd: level %d out of range %d-%d", level, ZSTD_minCLevel(),
                                ZSTD_maxCLevel());
        break;
    default:
        return ib_error_set(IB_EUSAGE, "compress: unknown algorithm %d", (int)algo);
    }
    ib_compressor *c = ib_xcalloc(1, sizeof *c);
    c->algo = algo;
    c->sink = sink;
    c->sink_ctx = sink_ctx;
    int rc = 0;
    if (algo == IB_COMP_GZIP) rc = gz_init(c, level, threads);
    else if (algo == IB_COMP_ZSTD) rc = zs_init(c, level, threads);
    if (rc < 0) {
        ib_compress_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

int ib_compress_write(ib_compressor *c, const void *buf, size_t len)
{
    if (c->err) return ib_error_set(c->err, "compress: write after an earlier failure");
    if (c->finished) return ib_error_set(IB_ERR, "compress: write after finish");
    if (len == 0) return 0;
    switch (c->algo) {
    case IB_COMP_GZIP:
        return gz_write(c, buf, len);
    case IB_COMP_ZSTD:
        return zs_write(c, buf, len);
    default:
        return emit(c, buf, len);
    }
}

int ib_compress_finish(ib_compressor *c)
{
    if (c->err) return ib_error_set(c->err, "compress: finish after an earlier failure");
    if (c->finished) return ib_error_set(IB_ERR, "compress: finish called twice");
    c->finished = 1;
    int rc = 0;
    if (c->algo == IB_COMP_GZIP) {
        rc = gz_finish(c);
    } else if (c->algo == IB_COMP_ZSTD) {
        rc = zs_call(c, c->zs_in, c->zs_in_len, ZSTD_e_end);
        c->zs_in_len = 0;
    }
    if (rc < 0 && !c->err) c->err = rc;
    return rc;
}

void ib_compress_free(ib_compressor *c)
{
    if (!c) return;
    if (c->algo == IB_COMP_GZIP) gz_free(&c->gz);
    ZSTD_freeCCtx(c->zs); /* joins libzstd's workers; NULL-safe */
    free(c->zs_in);
    free(c->zs_out);
    free(c);
}

int ib_compress_parse(ib_comp_algo *out, const char *name)
{
    static const struct {
        const char *name;
        ib_comp_algo algo;
    } tab[] = {{"gzip", IB_COMP_GZIP}, {"zstd", IB_COMP_ZSTD}, {"none", IB_COMP_NONE}};
    for (size_t i = 0; name && i < sizeof tab / sizeof tab[0]; i++)
        if (strcmp(name, tab[i].name) == 0) {
            *out = tab[i].algo;
            return 0;
        }
    return ib_error_set(IB_EUSAGE, "unknown compression '%s' (expected gzip, zstd or none)", name ? name : "");
}

const char *ib_compress_name(ib_comp_algo a)
{
    switch (a) {
    case IB_COMP_GZIP:
        return "gzip";
    case IB_COMP_ZSTD:
        return "zstd";
    case IB_COMP_NONE:
        return "none";
    }
    return "unknown";
}

const char *ib_compress_media_type(ib_comp_algo a)
{
    /* OCI image-spec media-types.md / layer.md. */
    switch (a) {
    case IB_COMP_GZIP:
        return "application/vnd.oci.image.layer.v1.tar+gzip";
    case IB_COMP_ZSTD:
        return "application/vnd.oci.image.layer.v1.tar+zstd";
    case IB_COMP_NONE:
        return "application/vnd.oci.image.layer.v1.tar";
    }
    return NULL;
}
