/* HTTP for registries over libcurl (7.88 on Debian 12).
 *
 * Thread safety: ib_http_do runs concurrently from several upload threads.
 * An easy handle may only be used by one thread at a time, so each call takes
 * a handle from a small mutex-guarded pool and returns it afterwards. A handle
 * keeps its own idle connections between calls (curl_easy_reset leaves "live
 * connections" alone), so N threads end up with N kept-alive connections.
 * The connection cache is deliberately NOT put in the CURLSH: curl's
 * maintainers say sharing it between concurrent threads has a known
 * concurrency bug (curl-library, March 2021, "Concurrency and send/recv");
 * DNS and TLS sessions are shared (with one mutex per lock kind, as
 * CURLSHOPT_LOCKFUNC asks), so new connections still skip lookups and full
 * handshakes. */
#include "registry/http.h"

#include "common/error.h"
#include "common/fs.h"

/* libcurl is opened with dlopen on the first HTTP use, not linked: it and
 * the ~20 libraries it pulls in (LDAP, Kerberos, GnuTLS for RTMP, ...) cost
 * about 7 ms of page faults at every start, a seventh of a no-op rebuild,
 * which never talks to a registry. The type-checking macros of curl.h are
 * off so that the calls below can go through the table. */
#define CURL_DISABLE_TYPECHECK 1
#include <ctype.h>
#include <curl/curl.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#ifndef IB_VERSION
#define IB_VERSION "dev"
#endif

#define IB_HTTP_POOL_MAX 8
#define IB_HTTP_DEFAULT_RETRIES 5
#define IB_HTTP_DEFAULT_BASE_MS 200
#define IB_HTTP_MAX_BACKOFF_MS 10000
/* A server's Retry-After is honoured, but bounded so a hostile or confused
 * server cannot park a push for hours. */
#define IB_HTTP_MAX_RETRY_AFTER_MS 60000
#define IB_HTTP_DEFAULT_MAX_BODY (1u << 20)
/* CA bundles are a few hundred KiB; cap reads so a wrong path cannot eat memory. */
#define IB_HTTP_MAX_PEM (16u << 20)

enum { M_GET, M_HEAD, M_PUT, M_POST, M_PATCH, M_DELETE, M_OTHER, M_COUNT };

struct ib_http {
    char *host;
    int insecure;
    int plain_http;
    int max_retries;
    int retry_base_ms;
    int timeout_s;

    char *ca_pem;        /* system bundle + extra CAs, or NULL for curl's default */
    size_t ca_pem_len;
    char *client_cert;   /* certs.d client.cert / client.key paths, or NULL */
    char *client_key;

    CURLSH *share;
    pthread_mutex_t share_mu[CURL_LOCK_DATA_LAST];

    pthread_mutex_t pool_mu;
    CURL *pool[IB_HTTP_POOL_MAX];
    int npool;

    atomic_uint counts[M_COUNT];
};

/* ---- global init ---------------------------------------------------------- */

static struct {
    CURLcode (*global_init)(long);
    CURL *(*easy_init)(void);
    CURLcode (*easy_setopt)(CURL *, CURLoption, ...);
    CURLcode (*easy_perform)(CURL *);
    void (*easy_cleanup)(CURL *);
    void (*easy_reset)(CURL *);
    CURLcode (*easy_getinfo)(CURL *, CURLINFO, ...);
    const char *(*easy_strerror)(CURLcode);
    struct curl_slist *(*slist_append)(struct curl_slist *, const char *);
    void (*slist_free_all)(struct curl_slist *);
    CURLSH *(*share_init)(void);
    CURLSHcode (*share_setopt)(CURLSH *, CURLSHoption, ...);
    CURLSHcode (*share_cleanup)(CURLSH *);
    time_t (*getdate)(const char *, const time_t *);
} cf;
static const char *g_curl_load_err;

#undef curl_easy_setopt
#undef curl_easy_getinfo
#undef curl_share_setopt
#define curl_global_init (*cf.global_init)
#define curl_easy_init (*cf.easy_init)
#define curl_easy_setopt (*cf.easy_setopt)
#define curl_easy_perform (*cf.easy_perform)
#define curl_easy_cleanup (*cf.easy_cleanup)
#define curl_easy_reset (*cf.easy_reset)
#define curl_easy_getinfo (*cf.easy_getinfo)
#define curl_easy_strerror (*cf.easy_strerror)
#define curl_slist_append (*cf.slist_append)
#define curl_slist_free_all (*cf.slist_free_all)
#define curl_share_init (*cf.share_init)
#define curl_share_setopt (*cf.share_setopt)
#define curl_share_cleanup (*cf.share_cleanup)
#define curl_getdate (*cf.getdate)

static int load_curl(void)
{
    void *h = dlopen("libcurl.so.4", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        g_curl_load_err = "libcurl.so.4 not found (apt-get install libcurl4)";
        return -1;
    }
    /* POSIX: dlsym's result is converted through a union-free memcpy-free cast */
#define LOAD(field, name)                                                                                    \
    do {                                                                                                     \
        void *sym = dlsym(h, name);                                                                          \
        if (!sym) {                                                                                          \
            g_curl_load_err = "libcurl.so.4 lacks " name;                                                   \
            return -1;                                                                                       \
        }                                                                                                    \
        memcpy(&cf.field, &sym, sizeof sym);                                                                 \
    } while (0)
    LOAD(global_init, "curl_global_init");
    LOAD(easy_init, "curl_easy_init");
    LOAD(easy_setopt, "curl_easy_setopt");
    LOAD(easy_perform, "curl_easy_perform");
    LOAD(easy_cleanup, "curl_easy_cleanup");
    LOAD(easy_reset, "curl_easy_reset");
    LOAD(easy_getinfo, "curl_easy_getinfo");
    LOAD(easy_strerror, "curl_easy_strerror");
    LOAD(slist_append, "curl_slist_append");
    LOAD(slist_free_all, "curl_slist_free_all");
    LOAD(share_init, "curl_share_init");
    LOAD(share_setopt, "curl_share_setopt");
    LOAD(share_cleanup, "curl_share_cleanup");
    LOAD(getdate, "curl_getdate");
#undef LOAD
    return 0; /* never dlclosed: libcurl keeps global state for the process */
}

static pthread_once_t g_curl_once = PTHREAD_ONCE_INIT;
static CURLcode g_curl_init_rc;

/* curl_global_init is not thread-safe itself; once per process. */
static void curl_init_once(void)
{
    if (load_curl() < 0) {
        g_curl_init_rc = CURLE_FAILED_INIT;
        return;
    }
    g_curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---- small helpers -------------------------------------------------------- */

static int method_index(const char *m)
{
    static const char *const names[] = {"GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"};
    for (int i = 0; i < M_OTHER; i++)
        if (strcmp(m, names[i]) == 0) return i;
    return M_OTHER;
}

/* URL for messages: without userinfo, query string or fragment, since upload
 * locations carry state tokens and storage redirects carry signed credentials
 * in their query strings. */
static char *redact_url(const char *url)
{
    if (!url) return ib_xstrdup("(null)");
    size_t n = strcspn(url, "?#");
    char *out = ib_xstrndup(url, n);
    char *sep = strstr(out, "://");
    if (sep) {
        char *auth = sep + 3;
        size_t alen = strcspn(auth, "/");
        char *at = memchr(auth, '@', alen);
        if (at) memmove(auth, at + 1, strlen(at + 1) + 1);
    }
    return out;
}

static void sleep_ms(long ms)
{
    if (ms <= 0) return;
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

static void buf_append(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
    size_t need = *len + n + 1;
    if (need < *len) abort(); /* size_t overflow: cannot happen with capped inputs */
    if (need > *cap || !*buf) {
        size_t nc = *cap * 2;
        if (nc < need) nc = need;
        if (nc < 4096) nc = 4096;
        *buf = ib_xrealloc(*buf, nc);
        *cap = nc;
    }
    char *b = *buf;
    if (n) memcpy(b + *len, s, n);
    *len += n;
    b[*len] = 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

/* Reads one certs.d directory (Docker's and containers' layout, see
 * docker docs "Verify repository client certificates"): every *.crt is a CA,
 * a *.cert with a matching *.key is a client key pair (client.cert/client.key
 * conventionally). Names are sorted so the choice of pair is deterministic. */
static int load_certs_dir(ib_http *h, const char *dir, char **pem, size_t *len, size_t *cap)
{
    DIR *d = opendir(dir);
    if (!d) return 0; /* absent directory: nothing configured for this host */
    char **names = NULL;
    size_t n = 0, ncap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        if (n == ncap) {
            ncap = ncap ? ncap * 2 : 8;
            names = ib_xrealloc(names, ncap * sizeof *names);
        }
        names[n++] = ib_xstrdup(e->d_name);
    }
    closedir(d);
    if (n) qsort(names, n, sizeof *names, cmp_str);
    int r = 0;
    for (size_t i = 0; i < n && r == 0; i++) {
        char *p = ib_fs_join(dir, names[i]);
        if (ends_with(names[i], ".crt")) {
            char *data = NULL;
            size_t dlen = 0;
            r = ib_fs_read_all(&data, &dlen, p, IB_HTTP_MAX_PEM);
            if (r == 0) {
                buf_append(pem, len, cap, "\n", 1);
                buf_append(pem, len, cap, data, dlen);
            } else {
                r = ib_error_wrap(IB_ERR, "certs.d CA");
            }
            free(data);
        } else if (ends_with(names[i], ".cert") && !h->client_cert) {
            size_t base = strlen(p) - strlen(".cert");
            char *key = ib_xasprintf("%.*s.key", (int)base, p);
            if (ib_fs_exists(key)) {
                h->client_cert = p;
                h->client_key = key;
                p = NULL;
            } else {
                r = ib_error_set(IB_EINVALID, "%s: client certificate without matching %s", p, key);
                free(key);
            }
        }
        free(p);
    }
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    return r;
}

/* curl accepts a single CA bundle (CURLOPT_CAINFO / CAINFO_BLOB), so extra
 * CAs are appended to the system bundle in memory and passed as a blob
 * (CURLOPT_CAINFO_BLOB, curl >= 7.77, OpenSSL backend). Without extra CAs
 * curl's compiled-in default (the same system bundle on Debian) is used. */
static int build_tls(ib_http *h, const ib_http_opts *o)
{
    char *extra = NULL;
    size_t elen = 0, ecap = 0;
    int r = 0;
    if (o->ca_file && *o->ca_file) {
        char *data = NULL;
        size_t dlen = 0;
        r = ib_fs_read_all(&data, &dlen, o->ca_file, IB_HTTP_MAX_PEM);
        if (r < 0) {
            free(extra);
            return ib_error_wrap(IB_EINVALID, "--ca-file");
        }
        buf_append(&extra, &elen, &ecap, "\n", 1);
        buf_append(&extra, &elen, &ecap, data, dlen);
        free(data);
    }
    if (o->host && *o->host && !strchr(o->host, '/') && strcmp(o->host, "..") != 0 &&
        strcmp(o->host, ".") != 0) {
        static const char *const roots[] = {"/etc/docker/certs.d", "/etc/containers/certs.d"};
        for (size_t i = 0; i < sizeof roots / sizeof roots[0] && r == 0; i++) {
            char *dir = ib_fs_join(roots[i], o->host);
            r = load_certs_dir(h, dir, &extra, &elen, &ecap);
            free(dir);
        }
    }
    if (r < 0) {
        free(extra);
        return r;
    }
    if (extra && !o->insecure) {
        const char *sys = getenv("SSL_CERT_FILE");
        if (!sys || !*sys) sys = "/etc/ssl/certs/ca-certificates.crt";
        char *data = NULL;
        size_t dlen = 0;
        if (ib_fs_read_all(&data, &dlen, sys, IB_HTTP_MAX_PEM) < 0) {
            /* a missing system bundle is not fatal: the extra CAs may be all we need */
            ib_error_clear();
            data = NULL;
            dlen = 0;
        }
        size_t plen = dlen + elen;
        char *pem = ib_xmalloc(plen + 1);
        if (dlen) memcpy(pem, data, dlen);
        memcpy(pem + dlen, extra, elen);
        pem[plen] = 0;
        free(data);
        h->ca_pem = pem;
        h->ca_pem_len = plen;
    }
    free(extra);
    return 0;
}

static void share_lock(CURL *handle, curl_lock_data data, curl_lock_access access, void *userptr)
{
    (void)handle;
    (void)access;
    ib_http *h = userptr;
    if ((int)data >= 0 && data < CURL_LOCK_DATA_LAST) pthread_mutex_lock(&h->share_mu[data]);
}

static void share_unlock(CURL *handle, curl_lock_data data, void *userptr)
{
    (void)handle;
    ib_http *h = userptr;
    if ((int)data >= 0 && data < CURL_LOCK_DATA_LAST) pthread_mutex_unlock(&h->share_mu[data]);
}

/* ---- lifecycle ------------------------------------------------------------ */

int ib_http_new(ib_http **out, const ib_http_opts *o)
{
    static const ib_http_opts zero;
    if (!o) o = &zero;
    *out = NULL;
    pthread_once(&g_curl_once, curl_init_once);
    if (g_curl_load_err) return ib_error_set(IB_ERR, "HTTP: %s", g_curl_load_err);
    if (g_curl_init_rc != CURLE_OK)
        return ib_error_set(IB_ERR, "libcurl init: %s", curl_easy_strerror(g_curl_init_rc));

    ib_http *h = ib_xcalloc(1, sizeof *h);
    h->host = o->host ? ib_xstrdup(o->host) : NULL;
    h->insecure = o->insecure;
    h->plain_http = o->plain_http;
    h->max_retries = o->max_retries == 0 ? IB_HTTP_DEFAULT_RETRIES : o->max_retries < 0 ? 0 : o->max_retries;
    h->retry_base_ms = o->retry_base_ms > 0 ? o->retry_base_ms : IB_HTTP_DEFAULT_BASE_MS;
    h->timeout_s = o->timeout_s > 0 ? o->timeout_s : 30;
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++) pthread_mutex_init(&h->share_mu[i], NULL);
    pthread_mutex_init(&h->pool_mu, NULL);
    for (int i = 0; i < M_COUNT; i++) atomic_init(&h->counts[i], 0);

    int r = build_tls(h, o);
    if (r < 0) {
        ib_http_free(h);
        return r;
    }
    h->share = curl_share_init();
    if (!h->share) {
        ib_http_free(h);
        return ib_error_set(IB_ERR, "libcurl: cannot create share handle");
    }
    curl_share_setopt(h->share, CURLSHOPT_LOCKFUNC, share_lock);
    curl_share_setopt(h->share, CURLSHOPT_UNLOCKFUNC, share_unlock);
    curl_share_setopt(h->share, CURLSHOPT_USERDATA, h);
    curl_share_setopt(h->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    curl_share_setopt(h->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    *out = h;
    return 0;
}

void ib_http_free(ib_http *h)
{
    if (!h) return;
    /* easy handles first: they detach from the share on cleanup */
    for (int i = 0; i < h->npool; i++) curl_easy_cleanup(h->pool[i]);
    if (h->share) curl_share_cleanup(h->share);
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++) pthread_mutex_destroy(&h->share_mu[i]);
    pthread_mutex_destroy(&h->pool_mu);
    free(h->host);
    free(h->ca_pem);
    free(h->client_cert);
    free(h->client_key);
    free(h);
}

char *ib_http_base_url(const ib_http *h, const char *host)
{
    return ib_xasprintf("%s://%s", h->plain_http ? "http" : "https", host);
}

unsigned ib_http_count(const ib_http *h, const char *method)
{
    if (!h || !method) return 0;
    return atomic_load(&((ib_http *)h)->counts[method_index(method)]);
}

/* ---- handle pool ---------------------------------------------------------- */

static CURL *pool_get(ib_http *h)
{
    CURL *c = NULL;
    pthread_mutex_lock(&h->pool_mu);
    if (h->npool > 0) c = h->pool[--h->npool];
    pthread_mutex_unlock(&h->pool_mu);
    if (c) {
        /* resets options only; live connections, the share and caches stay */
        curl_easy_reset(c);
        return c;
    }
    c = curl_easy_init();
    if (c) curl_easy_setopt(c, CURLOPT_SHARE, h->share);
    return c;
}

static void pool_put(ib_http *h, CURL *c)
{
    pthread_mutex_lock(&h->pool_mu);
    if (h->npool < IB_HTTP_POOL_MAX) {
        h->pool[h->npool++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&h->pool_mu);
    if (c) curl_easy_cleanup(c);
}

/* ---- one transfer --------------------------------------------------------- */

typedef struct {
    const ib_http_req *req;
    size_t max_body;
    long status;              /* from the latest status line */
    ib_http_header *headers;
    size_t nheaders, hcap;
    char *body;
    size_t body_len, body_cap;
    int sink_got_bytes;
    int sink_failed;          /* sink returned <0: its message is in the error slot */
    int read_failed;          /* stream read returned <0 */
    int read_called;          /* the body source was consumed (affects replay) */
    size_t mem_off;           /* in-memory body read position */
} xfer;

static void headers_free(ib_http_header *hs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(hs[i].name);
        free(hs[i].value);
    }
    free(hs);
}

static void xfer_reset(xfer *x)
{
    headers_free(x->headers, x->nheaders);
    x->headers = NULL;
    x->nheaders = x->hcap = 0;
    free(x->body);
    x->body = NULL;
    x->body_len = x->body_cap = 0;
    x->status = 0;
    x->mem_off = 0;
    x->read_called = 0;
}

static size_t on_header(char *buf, size_t size, size_t nitems, void *ud)
{
    xfer *x = ud;
    size_t n = size * nitems, len = n;
    while (len && (buf[len - 1] == '\n' || buf[len - 1] == '\r')) len--;
    if (len >= 5 && strncmp(buf, "HTTP/", 5) == 0) {
        /* A new response starts (1xx interim, or the next hop of a redirect
         * chain): the caller gets the headers of the final response only. */
        headers_free(x->headers, x->nheaders);
        x->headers = NULL;
        x->nheaders = x->hcap = 0;
        const char *sp = memchr(buf, ' ', len);
        x->status = sp ? strtol(sp + 1, NULL, 10) : 0;
        return n;
    }
    if (len == 0) return n;
    if ((buf[0] == ' ' || buf[0] == '\t') && x->nheaders) {
        /* obsolete line folding (RFC 7230 3.2.4): continuation of the previous value */
        ib_http_header *last = &x->headers[x->nheaders - 1];
        size_t s = 0;
        while (s < len && (buf[s] == ' ' || buf[s] == '\t')) s++;
        char *v = ib_xasprintf("%s %.*s", last->value, (int)(len - s), buf + s);
        free(last->value);
        last->value = v;
        return n;
    }
    const char *colon = memchr(buf, ':', len);
    if (!colon) return n;
    size_t nl = (size_t)(colon - buf);
    while (nl && (buf[nl - 1] == ' ' || buf[nl - 1] == '\t')) nl--;
    const char *v = colon + 1, *end = buf + len;
    while (v < end && (*v == ' ' || *v == '\t')) v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t')) end--;
    if (x->nheaders == x->hcap) {
        x->hcap = x->hcap ? x->hcap * 2 : 16;
        x->headers = ib_xrealloc(x->headers, x->hcap * sizeof *x->headers);
    }
    char *name = ib_xstrndup(buf, nl);
    for (char *p = name; *p; p++) *p = (char)tolower((unsigned char)*p);
    x->headers[x->nheaders].name = name;
    x->headers[x->nheaders].value = ib_xstrndup(v, (size_t)(end - v));
    x->nheaders++;
    return n;
}

static size_t on_write(char *buf, size_t size, size_t nmemb, void *ud)
{
    xfer *x = ud;
    size_t n = size * nmemb;
    if (x->req->sink && x->status >= 200 && x->status < 300) {
        if (n == 0) return 0;
        x->sink_got_bytes = 1;
        if (x->req->sink(x->req->sink_ctx, buf, n) < 0) {
            x->sink_failed = 1;
            return 0; /* != n: curl aborts with CURLE_WRITE_ERROR */
        }
        return n;
    }
    /* error bodies and small JSON answers: keep up to max_body, drop the rest */
    size_t room = x->max_body > x->body_len ? x->max_body - x->body_len : 0;
    size_t take = n < room ? n : room;
    if (take || !x->body) buf_append(&x->body, &x->body_len, &x->body_cap, buf, take);
    return n;
}

static size_t on_read(char *buf, size_t size, size_t nitems, void *ud)
{
    xfer *x = ud;
    size_t n = size * nitems;
    x->read_called = 1;
    if (x->req->stream) {
        long long got = x->req->stream->read(x->req->stream->ctx, buf, n);
        if (got < 0 || (unsigned long long)got > n) {
            x->read_failed = 1;
            return CURL_READFUNC_ABORT;
        }
        return (size_t)got;
    }
    size_t left = x->req->body_len - x->mem_off;
    if (n > left) n = left;
    if (n) memcpy(buf, (const char *)x->req->body + x->mem_off, n);
    x->mem_off += n;
    return n;
}

/* curl seeks back when it must resend the body itself (e.g. a 307/308
 * redirect of a PUT, or a connection that died while reusing it). */
static int on_seek(void *ud, curl_off_t offset, int origin)
{
    xfer *x = ud;
    if (origin != SEEK_SET || offset != 0) return CURL_SEEKFUNC_CANTSEEK;
    if (x->req->stream) {
        if (!x->req->stream->rewind) return CURL_SEEKFUNC_CANTSEEK;
        return x->req->stream->rewind(x->req->stream->ctx) < 0 ? CURL_SEEKFUNC_FAIL : CURL_SEEKFUNC_OK;
    }
    x->mem_off = 0;
    return CURL_SEEKFUNC_OK;
}

static int retryable_status(long s)
{
    /* 408 Request Timeout, 429 Too Many Requests, and server-side failures;
     * 501 Not Implemented and 505 HTTP Version Not Supported are permanent. */
    return s == 408 || s == 429 || (s >= 500 && s <= 599 && s != 501 && s != 505);
}

static int retryable_curl(CURLcode c)
{
    switch (c) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_GOT_NOTHING:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        return 1;
    default:
        return 0;
    }
}

/* Retry-After (RFC 9110 10.2.3): delay-seconds or an HTTP-date. -1 = absent/bad. */
static long retry_after_ms(const xfer *x)
{
    for (size_t i = 0; i < x->nheaders; i++) {
        if (strcmp(x->headers[i].name, "retry-after") != 0) continue;
        const char *v = x->headers[i].value;
        if (isdigit((unsigned char)*v)) {
            char *end;
            errno = 0;
            long long s = strtoll(v, &end, 10);
            if (errno || *end) return -1;
            if (s > IB_HTTP_MAX_RETRY_AFTER_MS / 1000) return IB_HTTP_MAX_RETRY_AFTER_MS;
            return (long)s * 1000;
        }
        time_t t = curl_getdate(v, NULL);
        if (t == (time_t)-1) return -1;
        time_t now = time(NULL);
        if (t <= now) return 0;
        if (t - now > IB_HTTP_MAX_RETRY_AFTER_MS / 1000) return IB_HTTP_MAX_RETRY_AFTER_MS;
        return (long)(t - now) * 1000;
    }
    return -1;
}

static struct curl_slist *build_headers(const ib_http_req *req)
{
    struct curl_slist *l = NULL, *t;
    int has_ct = 0;
    if (req->headers) {
        for (const char *const *p = req->headers; *p; p++) {
            if (strncasecmp(*p, "content-type:", 13) == 0) has_ct = 1;
            t = curl_slist_append(l, *p);
            if (!t) goto oom;
            l = t;
        }
    }
    /* Expect: 100-continue costs a round trip (or a 1 s stall with servers
     * that ignore it); registries answer errors before reading bodies anyway. */
    if (!(t = curl_slist_append(l, "Expect:"))) goto oom;
    l = t;
    /* curl labels POST bodies as form data; a registry request is not a form */
    if (!has_ct && strcmp(req->method, "POST") == 0) {
        if (!(t = curl_slist_append(l, "Content-Type:"))) goto oom;
        l = t;
    }
    return l;
oom:
    curl_slist_free_all(l);
    fputs("imgbuild: error: out of memory\n", stderr);
    abort();
}

static void setup(CURL *c, ib_http *h, const ib_http_req *req, xfer *x, struct curl_slist *hdrs, char *errbuf)
{
    curl_easy_setopt(c, CURLOPT_URL, req->url);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L); /* threads: no SIGALRM-based DNS timeouts */
    curl_easy_setopt(c, CURLOPT_USERAGENT, "imgbuild/" IB_VERSION);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, (long)h->timeout_s);
    /* No total timeout (a multi-GiB layer legitimately takes long); a stalled
     * transfer (< 1 KiB/s for 60 s) is aborted and retried instead. */
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1024L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
    curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, x);
    if (req->follow_redirects) {
        /* Since curl 7.58 (and 7.83 for scheme/port changes, CVE-2022-27776)
         * a custom Authorization header set via CURLOPT_HTTPHEADER is sent
         * only to the original host:port:scheme unless CURLOPT_UNRESTRICTED_AUTH
         * is set, which we never do: blob redirects to S3/GCS presigned URLs
         * must not receive the registry token. */
        curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
        curl_easy_setopt(c, CURLOPT_UNRESTRICTED_AUTH, 0L);
    }
    if (h->insecure) {
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
    } else if (h->ca_pem) {
        struct curl_blob blob = {h->ca_pem, h->ca_pem_len, CURL_BLOB_NOCOPY};
        curl_easy_setopt(c, CURLOPT_CAINFO_BLOB, &blob);
    }
    if (h->client_cert) {
        curl_easy_setopt(c, CURLOPT_SSLCERT, h->client_cert);
        curl_easy_setopt(c, CURLOPT_SSLKEY, h->client_key);
    }

    const char *m = req->method;
    int has_body = req->stream || req->body_len > 0;
    if (strcmp(m, "HEAD") == 0) {
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    } else if (strcmp(m, "GET") == 0) {
        curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(m, "POST") == 0) {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        if (req->stream) {
            curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
            curl_easy_setopt(c, CURLOPT_READDATA, x);
            curl_easy_setopt(c, CURLOPT_SEEKFUNCTION, on_seek);
            curl_easy_setopt(c, CURLOPT_SEEKDATA, x);
            curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->stream->size);
        } else {
            /* POSTFIELDS with an explicit size: curl sends Content-Length
             * (0 for the empty POST that starts a blob upload). */
            curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
            curl_easy_setopt(c, CURLOPT_POSTFIELDS, req->body_len ? (const char *)req->body : "");
        }
    } else if (strcmp(m, "PUT") == 0 || strcmp(m, "PATCH") == 0 || has_body) {
        curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
        curl_easy_setopt(c, CURLOPT_READDATA, x);
        curl_easy_setopt(c, CURLOPT_SEEKFUNCTION, on_seek);
        curl_easy_setopt(c, CURLOPT_SEEKDATA, x);
        int64_t size = req->stream ? req->stream->size : (int64_t)req->body_len;
        /* unknown size (-1): curl uses chunked transfer coding on HTTP/1.1 */
        if (size >= 0) curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)size);
        if (strcmp(m, "PUT") != 0) curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, m);
    } else {
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, m);
    }
}

void ib_http_resp_clear(ib_http_resp *r)
{
    if (!r) return;
    free(r->body);
    headers_free(r->headers, r->nheaders);
    free(r->effective_url);
    memset(r, 0, sizeof *r);
}

const char *ib_http_resp_header(const ib_http_resp *r, const char *name)
{
    if (!r || !name) return NULL;
    for (size_t i = 0; i < r->nheaders; i++)
        if (strcasecmp(r->headers[i].name, name) == 0) return r->headers[i].value;
    return NULL;
}

int ib_http_do(ib_http_resp *resp, ib_http *h, const ib_http_req *req)
{
    memset(resp, 0, sizeof *resp);
    if (!req || !req->method || !req->url) return ib_error_set(IB_EINVALID, "http: request without method or URL");
    char *shown = redact_url(req->url);
    CURL *c = pool_get(h);
    if (!c) {
        int r = ib_error_set(IB_ERR, "%s %s: cannot create curl handle", req->method, shown);
        free(shown);
        return r;
    }
    struct curl_slist *hdrs = build_headers(req);
    xfer x;
    memset(&x, 0, sizeof x);
    x.req = req;
    x.max_body = req->max_body ? req->max_body : IB_HTTP_DEFAULT_MAX_BODY;
    char errbuf[CURL_ERROR_SIZE];
    int midx = method_index(req->method);
    int attempt = 0, rc = 0;

    for (;;) {
        xfer_reset(&x);
        errbuf[0] = 0;
        if (attempt > 0) {
            curl_easy_reset(c);
        }
        setup(c, h, req, &x, hdrs, errbuf);
        atomic_fetch_add(&h->counts[midx], 1u);
        CURLcode cc = curl_easy_perform(c);

        if (cc == CURLE_OK) {
            if (!retryable_status(x.status)) break;
        } else if (x.sink_failed) {
            rc = ib_error_wrap(IB_ERR, "%s %s", req->method, shown);
            goto out;
        } else if (x.read_failed) {
            rc = ib_error_wrap(IB_ERR, "%s %s: reading request body", req->method, shown);
            goto out;
        }
        int can = !req->no_retry && attempt < h->max_retries && (cc == CURLE_OK || retryable_curl(cc));
        /* a body already handed to curl can be sent again only if it can be
         * re-read from the start; a sink that saw bytes must be reset */
        if (can && req->stream && x.read_called && !req->stream->rewind) can = 0;
        if (can && x.sink_got_bytes && !req->sink_reset) can = 0;
        if (!can) {
            if (cc == CURLE_OK) break; /* an HTTP answer: the caller decides what a 503 means */
            const char *what = errbuf[0] ? errbuf : curl_easy_strerror(cc);
            /* OpenSSL's answer to an HTTP reply where a TLS record should be:
             * the usual cause is a registry without TLS. */
            const char *hint = cc == CURLE_SSL_CONNECT_ERROR && strstr(what, "wrong version number") &&
                                       !strncmp(req->url, "https://", 8)
                                   ? " (the registry speaks plain HTTP? use --plain-http)"
                                   : "";
            if (attempt > 0)
                rc = ib_error_set(IB_ERR, "%s %s: %s (after %d retr%s)%s", req->method, shown, what, attempt,
                                  attempt == 1 ? "y" : "ies", hint);
            else
                rc = ib_error_set(IB_ERR, "%s %s: %s%s", req->method, shown, what, hint);
            goto out;
        }
        long delay = -1;
        if (cc == CURLE_OK) delay = retry_after_ms(&x);
        if (delay < 0) {
            long d = (long)h->retry_base_ms;
            for (int i = 0; i < attempt && d < IB_HTTP_MAX_BACKOFF_MS; i++) d *= 2;
            delay = d > IB_HTTP_MAX_BACKOFF_MS ? IB_HTTP_MAX_BACKOFF_MS : d;
        }
        sleep_ms(delay);
        if (req->stream && x.read_called && req->stream->rewind && req->stream->rewind(req->stream->ctx) < 0) {
            rc = ib_error_wrap(IB_ERR, "%s %s: rewinding request body", req->method, shown);
            goto out;
        }
        if (x.sink_got_bytes) {
            if (req->sink_reset(req->sink_ctx) < 0) {
                rc = ib_error_wrap(IB_ERR, "%s %s: resetting download", req->method, shown);
                goto out;
            }
            x.sink_got_bytes = 0;
        }
        attempt++;
    }

    resp->status = x.status;
    resp->headers = x.headers;
    resp->nheaders = x.nheaders;
    x.headers = NULL;
    x.nheaders = 0;
    if (!x.body) x.body = ib_xcalloc(1, 1);
    resp->body = x.body;
    resp->body_len = x.body_len;
    x.body = NULL;
    {
        char *eff = NULL;
        curl_easy_getinfo(c, CURLINFO_EFFECTIVE_URL, &eff);
        resp->effective_url = ib_xstrdup(eff ? eff : req->url);
        curl_off_t up = 0;
        curl_easy_getinfo(c, CURLINFO_SIZE_UPLOAD_T, &up);
        resp->bytes_sent = up > 0 ? (uint64_t)up : 0;
    }
out:
    xfer_reset(&x);
    curl_slist_free_all(hdrs);
    /* the error buffer lives on this stack frame: detach before pooling */
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, NULL);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
    pool_put(h, c);
    free(shown);
    return rc;
}

/* ---- URLs ----------------------------------------------------------------- */

/* RFC 3986 5.2.4 remove_dot_segments, on the path part only. */
static char *remove_dots(const char *in)
{
    size_t n = strlen(in);
    char *out = ib_xmalloc(n + 2);
    size_t o = 0;
    const char *p = in;
    while (*p) {
        if (strncmp(p, "../", 3) == 0) p += 3;
        else if (strncmp(p, "./", 2) == 0) p += 2;
        else if (strncmp(p, "/./", 3) == 0) p += 2;
        else if (strcmp(p, "/.") == 0) p = "/";
        else if (strncmp(p, "/../", 4) == 0 || strcmp(p, "/..") == 0) {
            p = p[3] ? p + 3 : "/";
            while (o > 0 && out[o - 1] != '/') o--;
            if (o > 0) o--;
        } else if (strcmp(p, ".") == 0 || strcmp(p, "..") == 0) break;
        else {
            if (*p == '/') out[o++] = *p++;
            while (*p && *p != '/') out[o++] = *p++;
        }
    }
    out[o] = 0;
    return out;
}

static int has_scheme(const char *s)
{
    if (!isalpha((unsigned char)*s)) return 0;
    for (const char *p = s + 1; *p; p++) {
        if (*p == ':') return 1;
        if (!isalnum((unsigned char)*p) && *p != '+' && *p != '-' && *p != '.') return 0;
    }
    return 0;
}

char *ib_http_resolve_url(const char *base_url, const char *location)
{
    if (!location) return NULL;
    if (!base_url || has_scheme(location)) return ib_xstrdup(location);
    const char *sep = strstr(base_url, "://");
    if (!sep) return ib_xstrdup(location);
    size_t scheme_len = (size_t)(sep - base_url);
    const char *auth = sep + 3;
    size_t auth_len = strcspn(auth, "/?#");
    const char *path = auth + auth_len;
    size_t path_len = strcspn(path, "?#");

    if (location[0] == '/' && location[1] == '/') /* network-path reference */
        return ib_xasprintf("%.*s:%s", (int)scheme_len, base_url, location);

    /* split the reference into path and "?query#frag" tail */
    size_t lp = strcspn(location, "?#");
    const char *tail = location + lp;
    char *merged;
    if (lp == 0) {
        /* "?q" or "#f" or "": keep the base path (and the base query for "#f") */
        if (*tail == '#' ) {
            size_t qlen = strcspn(path, "#");
            return ib_xasprintf("%.*s%s", (int)(path + qlen - base_url), base_url, tail);
        }
        if (*tail == 0) return ib_xasprintf("%.*s", (int)(path + strcspn(path, "#") - base_url), base_url);
        merged = ib_xstrndup(path, path_len);
    } else if (location[0] == '/') {
        merged = ib_xstrndup(location, lp);
    } else {
        /* relative: replace the last segment of the base path (RFC 3986 5.2.3) */
        const char *slash = NULL;
        for (const char *q = path; q < path + path_len; q++)
            if (*q == '/') slash = q;
        if (!slash) merged = ib_xasprintf("/%.*s", (int)lp, location);
        else merged = ib_xasprintf("%.*s%.*s", (int)(slash - path + 1), path, (int)lp, location);
    }
    char *clean = remove_dots(merged);
    free(merged);
    char *out = ib_xasprintf("%.*s%s%s", (int)(path - base_url), base_url,
                             clean[0] == '/' || clean[0] == 0 ? "" : "/", clean);
    char *res = ib_xasprintf("%s%s", out, tail);
    free(out);
    free(clean);
    return res;
}

char *ib_http_escape(const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(s);
    char *out = ib_xmalloc(n * 3 + 1), *o = out;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        /* RFC 3986 2.3 unreserved characters stay; everything else is encoded */
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' || *p == '_' || *p == '~') {
            *o++ = (char)*p;
        } else {
            *o++ = '%';
            *o++ = hex[*p >> 4];
            *o++ = hex[*p & 15];
        }
    }
    *o = 0;
    return out;
}
