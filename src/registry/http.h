/* HTTP for registries over libcurl: one handle pool per session (connection
 * reuse, HTTP/1.1 keep-alive, optional HTTP/2), TLS verified by default with
 * extra CAs from a file and Docker/containers certs.d dirs, retries with
 * exponential backoff on connection errors and 408/429/5xx honouring
 * Retry-After, streamed request and response bodies. Never logs header values
 * of Authorization (credentials and tokens stay out of every message). */
#ifndef IB_REGISTRY_HTTP_H
#define IB_REGISTRY_HTTP_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *ca_file;     /* extra CA bundle (PEM) or NULL */
    const char *host;        /* "host[:port]" of the registry: certs.d lookup
                              * (/etc/docker/certs.d/<host>/ and /etc/containers/certs.d/<host>/:
                              * *.crt = CAs, client.cert + client.key = client TLS auth) */
    int insecure;            /* skip TLS verification */
    int plain_http;          /* http:// instead of https:// (ib_http_base_url) */
    int max_retries;         /* 0 = default (5); -1 = none */
    int retry_base_ms;       /* 0 = default (200 ms) first backoff, doubled each retry, capped at 10 s */
    int timeout_s;           /* connect timeout, 0 = default (30 s); transfers have a low-speed limit instead */
} ib_http_opts;

typedef struct ib_http ib_http;

typedef struct {
    char *name;   /* lowercased */
    char *value;
} ib_http_header;

typedef struct {
    long status;               /* final HTTP status */
    char *body;                /* captured body (error bodies, JSON) when no sink was given or status is not 2xx;
                                * NUL-terminated, capped at req.max_body */
    size_t body_len;
    ib_http_header *headers;   /* headers of the final response */
    size_t nheaders;
    char *effective_url;       /* after redirects */
    uint64_t bytes_sent;       /* request body bytes the server accepted in the final attempt */
} ib_http_resp;

/* Streamed request body. read returns bytes copied into buf (0 = end) or <0 on error.
 * rewind restarts from the beginning (needed for retries; NULL = body not retryable). */
typedef struct {
    long long (*read)(void *ctx, char *buf, size_t n);
    int (*rewind)(void *ctx);
    void *ctx;
    int64_t size; /* Content-Length, or -1 for chunked */
} ib_http_body;

/* Response body sink for 2xx answers (GET of a blob): returns 0 or <0 to abort. */
typedef int (*ib_http_sink_fn)(void *ctx, const void *buf, size_t len);

typedef struct {
    const char *method;             /* "GET" "HEAD" "PUT" "POST" "PATCH" "DELETE" */
    const char *url;
    const char *const *headers;     /* "Name: value" strings, NULL-terminated, may be NULL */
    const void *body;               /* in-memory body ... */
    size_t body_len;
    const ib_http_body *stream;     /* ... or a streamed one (NULL) */
    ib_http_sink_fn sink;           /* 2xx body goes here instead of resp.body */
    void *sink_ctx;
    int (*sink_reset)(void *ctx);   /* called before a retry re-sends a GET whose sink saw bytes; NULL = no retry then */
    size_t max_body;                /* 0 = 1 MiB */
    int no_retry;                   /* never retry this request (e.g. a non-idempotent POST) */
    int follow_redirects;           /* GET/HEAD of blobs may redirect to storage; Authorization is not
                                     * forwarded to another host */
} ib_http_req;

int ib_http_new(ib_http **out, const ib_http_opts *o);
void ib_http_free(ib_http *h);
/* "https://host" or "http://host" per the options. Caller frees. */
char *ib_http_base_url(const ib_http *h, const char *host);

/* Performs the request, retrying as described. Returns 0 once an HTTP
 * response was received (whatever its status: callers decide), or <0 with a
 * message naming the URL (without query string credentials) after the last
 * failed attempt, e.g. "GET https://h/v2/: connection refused (after 5 retries)". */
int ib_http_do(ib_http_resp *resp, ib_http *h, const ib_http_req *req);
void ib_http_resp_clear(ib_http_resp *r);
/* Case-insensitive lookup of a header of the final response, or NULL. */
const char *ib_http_resp_header(const ib_http_resp *r, const char *name);

/* Resolves a Location header against the request URL (absolute, host-relative "/v2/..." or relative). */
char *ib_http_resolve_url(const char *base_url, const char *location);
/* Percent-encodes a query value. Caller frees. */
char *ib_http_escape(const char *s);

/* Test/diagnostic counters: number of requests sent per method since creation. */
unsigned ib_http_count(const ib_http *h, const char *method);

#endif
