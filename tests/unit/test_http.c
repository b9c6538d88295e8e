/* ib_http: URL helpers, and real requests against a tiny canned HTTP/1.1
 * server forked from this test (one connection per request, Connection:
 * close), covering retries (503 + Retry-After: 0), header capture, streamed
 * PUT bodies rewound across a retry, redirects, sinks and the token fetch. */
#include "ut.h"
#include "common/error.h"
#include "registry/auth.h"
#include "registry/http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- the server (child process) ------------------------------------------- */

static int srv_port;

static void srv_send(int fd, const char *s)
{
    size_t n = strlen(s);
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w <= 0) return;
        s += w;
        n -= (size_t)w;
    }
}

static void srv_reply(int fd, const char *status, const char *extra_headers, const char *body)
{
    char head[2048];
    snprintf(head, sizeof head, "HTTP/1.1 %s\r\nContent-Length: %zu\r\nConnection: close\r\n%s\r\n", status,
             strlen(body), extra_headers ? extra_headers : "");
    srv_send(fd, head);
    srv_send(fd, body);
}

/* Reads until the end of headers; returns header length or -1. */
static int srv_read_head(int fd, char *buf, size_t cap, size_t *have)
{
    *have = 0;
    for (;;) {
        if (*have + 1 >= cap) return -1;
        ssize_t n = read(fd, buf + *have, cap - 1 - *have);
        if (n <= 0) return -1;
        *have += (size_t)n;
        buf[*have] = 0;
        char *e = strstr(buf, "\r\n\r\n");
        if (e) return (int)(e - buf) + 4;
    }
}

static int srv_getc(int fd, char *buf, size_t *pos, size_t *have)
{
    if (*pos < *have) return (unsigned char)buf[(*pos)++];
    unsigned char c;
    if (read(fd, &c, 1) != 1) return -1;
    return c;
}

/* Reads the request body (Content-Length or chunked) and returns its length
 * and a simple checksum. */
static long srv_read_body(int fd, char *buf, size_t hlen, size_t have, unsigned long *sum)
{
    const char *cl = strcasestr(buf, "\r\ncontent-length:");
    int chunked = strcasestr(buf, "\r\ntransfer-encoding: chunked") != NULL;
    size_t pos = hlen;
    long total = 0;
    *sum = 0;
    if (cl && !chunked) {
        long want = atol(cl + 17);
        for (long i = 0; i < want; i++) {
            int c = srv_getc(fd, buf, &pos, &have);
            if (c < 0) return -1;
            *sum = *sum * 31 + (unsigned)c;
            total++;
        }
        return total;
    }
    if (!chunked) return 0;
    for (;;) {
        char line[64];
        size_t ln = 0;
        int c;
        while ((c = srv_getc(fd, buf, &pos, &have)) >= 0 && c != '\n')
            if (ln + 1 < sizeof line) line[ln++] = (char)c;
        if (c < 0) return -1;
        line[ln] = 0;
        long sz = strtol(line, NULL, 16);
        if (sz == 0) {
            while ((c = srv_getc(fd, buf, &pos, &have)) >= 0 && c != '\n') {
            }
            return total;
        }
        for (long i = 0; i < sz; i++) {
            c = srv_getc(fd, buf, &pos, &have);
            if (c < 0) return -1;
            *sum = *sum * 31 + (unsigned)c;
            total++;
        }
        srv_getc(fd, buf, &pos, &have); /* \r */
        srv_getc(fd, buf, &pos, &have); /* \n */
    }
}

static void srv_loop(int lfd)
{
    int retry_hits = 0, put_hits = 0, chunk_hits = 0;
    alarm(20); /* never outlive a broken test */
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) continue;
        char buf[16384];
        size_t have;
        int hlen = srv_read_head(fd, buf, sizeof buf, &have);
        if (hlen < 0) {
            close(fd);
            continue;
        }
        char method[16] = {0}, path[1024] = {0};
        sscanf(buf, "%15s %1023s", method, path);
        unsigned long sum = 0;
        long blen = srv_read_body(fd, buf, (size_t)hlen, have, &sum);
        char hdr[512];
        if (strcmp(path, "/quit") == 0) {
            srv_reply(fd, "200 OK", NULL, "bye");
            close(fd);
            _exit(0);
        } else if (strcmp(path, "/retry") == 0) {
            if (retry_hits++ == 0) srv_reply(fd, "503 Service Unavailable", "Retry-After: 0\r\n", "busy");
            else srv_reply(fd, "200 OK", "X-Attempt: 2\r\n", "hello");
        } else if (strcmp(path, "/always503") == 0) {
            srv_reply(fd, "503 Service Unavailable", "Retry-After: 0\r\n", "{\"errors\":[]}");
        } else if (strcmp(path, "/v2/") == 0) {
            snprintf(hdr, sizeof hdr,
                     "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:%d/token\",service=\"test-registry\"\r\n"
                     "Docker-Distribution-API-Version: registry/2.0\r\n",
                     srv_port);
            srv_reply(fd, "401 Unauthorized", hdr, "{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}");
        } else if (strcmp(path, "/upload") == 0 && strcmp(method, "PUT") == 0) {
            /* the first upload fails after the body was read: the client must rewind */
            if (put_hits++ == 0) {
                srv_reply(fd, "503 Service Unavailable", "Retry-After: 0\r\n", "");
            } else {
                snprintf(hdr, sizeof hdr, "X-Body-Len: %ld\r\nX-Body-Sum: %lu\r\n", blen, sum);
                srv_reply(fd, "201 Created", hdr, "");
            }
        } else if (strcmp(path, "/chunked") == 0 && strcmp(method, "PATCH") == 0) {
            chunk_hits++;
            snprintf(hdr, sizeof hdr, "X-Body-Len: %ld\r\nX-Body-Sum: %lu\r\nX-Chunked: %d\r\n", blen, sum,
                     strcasestr(buf, "transfer-encoding: chunked") != NULL);
            srv_reply(fd, "202 Accepted", hdr, "");
        } else if (strcmp(path, "/post") == 0 && strcmp(method, "POST") == 0) {
            snprintf(hdr, sizeof hdr, "X-Body-Len: %ld\r\nLocation: /v2/r/blobs/uploads/abc?_state=xyz\r\n", blen);
            srv_reply(fd, "202 Accepted", hdr, "");
        } else if (strcmp(path, "/redir") == 0) {
            srv_reply(fd, "307 Temporary Redirect", "Location: /plain\r\nX-Hop: 1\r\n", "moved");
        } else if (strcmp(path, "/redir-same") == 0 || strcmp(path, "/redir-other") == 0) {
            /* same host:port, or another host name for the same server */
            snprintf(hdr, sizeof hdr, "Location: http://%s:%d/echo-auth\r\n",
                     strcmp(path, "/redir-same") == 0 ? "127.0.0.1" : "localhost", srv_port);
            srv_reply(fd, "307 Temporary Redirect", hdr, "");
        } else if (strcmp(path, "/echo-auth") == 0) {
            snprintf(hdr, sizeof hdr, "X-Had-Auth: %d\r\n", strcasestr(buf, "\r\nauthorization:") != NULL);
            srv_reply(fd, "200 OK", hdr, "");
        } else if (strcmp(path, "/plain") == 0) {
            if (strcmp(method, "HEAD") == 0)
                srv_send(fd, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\n");
            else
                srv_reply(fd, "200 OK", "X-Final: yes\r\nContent-Type: text/plain\r\n", "plain body");
        } else if (strncmp(path, "/token?", 7) == 0) {
            int ok_query = strstr(path, "service=test-registry") &&
                           strstr(path, "scope=repository%3Arobot%2Fapp%3Apull%2Cpush") &&
                           strstr(path, "scope=repository%3Abase%2Fimg%3Apull");
            /* base64("robot$wepp+ci:s3cr:et") */
            int ok_auth = strstr(buf, "Authorization: Basic cm9ib3Qkd2VwcCtjaTpzM2NyOmV0\r\n") != NULL;
            if (ok_query && ok_auth)
                srv_reply(fd, "200 OK", "Content-Type: application/json\r\n",
                          "{\"access_token\":\"tok-123\",\"expires_in\":300}");
            else
                srv_reply(fd, "401 Unauthorized", NULL, "{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}");
        } else {
            srv_reply(fd, "404 Not Found", NULL, "nope");
        }
        close(fd);
    }
}

static pid_t srv_start(void)
{
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, 16) < 0) {
        perror("server socket");
        exit(1);
    }
    socklen_t al = sizeof a;
    getsockname(lfd, (struct sockaddr *)&a, &al);
    srv_port = ntohs(a.sin_port);
    pid_t pid = fork();
    if (pid == 0) srv_loop(lfd);
    close(lfd);
    return pid;
}

/* ---- client-side helpers -------------------------------------------------- */

typedef struct {
    const char *data;
    size_t len, off;
    int rewinds;
} mem_stream;

static long long ms_read(void *ctx, char *buf, size_t n)
{
    mem_stream *m = ctx;
    size_t left = m->len - m->off;
    if (n > left) n = left;
    if (n > 1000) n = 1000; /* small pieces: exercise repeated callbacks */
    memcpy(buf, m->data + m->off, n);
    m->off += n;
    return (long long)n;
}

static int ms_rewind(void *ctx)
{
    mem_stream *m = ctx;
    m->off = 0;
    m->rewinds++;
    return 0;
}

typedef struct {
    char buf[256];
    size_t len;
} sink_buf;

static int sink_fn(void *ctx, const void *b, size_t n)
{
    sink_buf *s = ctx;
    if (s->len + n >= sizeof s->buf) return -1;
    memcpy(s->buf + s->len, b, n);
    s->len += n;
    s->buf[s->len] = 0;
    return 0;
}

static unsigned long checksum(const char *d, size_t n)
{
    unsigned long s = 0;
    for (size_t i = 0; i < n; i++) s = s * 31 + (unsigned char)d[i];
    return s;
}

typedef struct {
    ib_http *h;
    const char *url;
    int ok;
} par_arg;

static void *par_main(void *p)
{
    par_arg *a = p;
    for (int i = 0; i < 5; i++) {
        ib_http_resp r;
        sink_buf sb = {{0}, 0};
        ib_http_req q = {.method = "GET", .url = a->url, .sink = sink_fn, .sink_ctx = &sb};
        if (ib_http_do(&r, a->h, &q) == 0 && r.status == 200 && strcmp(sb.buf, "plain body") == 0) a->ok++;
        ib_http_resp_clear(&r);
    }
    return NULL;
}

static void test_urls(void)
{
    char *u;
    u = ib_http_resolve_url("https://r.example:5000/v2/a/blobs/uploads/", "https://other/x?y=1");
    CHECK_STR(u, "https://other/x?y=1");
    free(u);
    u = ib_http_resolve_url("https://r.example:5000/v2/a/blobs/uploads/", "/v2/a/blobs/uploads/uuid?_state=a%3D");
    CHECK_STR(u, "https://r.example:5000/v2/a/blobs/uploads/uuid?_state=a%3D");
    free(u);
    u = ib_http_resolve_url("https://r.example/v2/a/blobs/uploads/?x=1", "uuid?s=2");
    CHECK_STR(u, "https://r.example/v2/a/blobs/uploads/uuid?s=2");
    free(u);
    u = ib_http_resolve_url("https://r.example/v2/a/manifests/latest", "../blobs/sha256:00");
    CHECK_STR(u, "https://r.example/v2/a/blobs/sha256:00");
    free(u);
    u = ib_http_resolve_url("https://r.example/v2/a/b?old=1", "?new=2");
    CHECK_STR(u, "https://r.example/v2/a/b?new=2");
    free(u);
    u = ib_http_resolve_url("http://r.example:80/v2/", "//cdn.example/blob");
    CHECK_STR(u, "http://cdn.example/blob");
    free(u);
    u = ib_http_resolve_url("https://r.example", "v2/");
    CHECK_STR(u, "https://r.example/v2/");
    free(u);

    char *e = ib_http_escape("repository:robot/app:pull,push");
    CHECK_STR(e, "repository%3Arobot%2Fapp%3Apull%2Cpush");
    free(e);
    e = ib_http_escape("a b&c=d~e_f.g-h");
    CHECK_STR(e, "a%20b%26c%3Dd~e_f.g-h");
    free(e);
    e = ib_http_escape("\xc3\xa9");
    CHECK_STR(e, "%C3%A9");
    free(e);
}

int main(void)
{
    alarm(30); /* bound: the test can never hang */
    test_urls();

    pid_t srv = srv_start();
    ib_http_opts o = {0};
    o.host = "127.0.0.1";
    o.plain_http = 1;
    o.retry_base_ms = 10;
    o.timeout_s = 5;
    ib_http *h = NULL;
    CHECK(ib_http_new(&h, &o) == 0);
    char *host = NULL;
    {
        char hp[64];
        snprintf(hp, sizeof hp, "127.0.0.1:%d", srv_port);
        host = ib_http_base_url(h, hp);
    }
    CHECK(strncmp(host, "http://127.0.0.1:", 17) == 0);
    char url[256];
    ib_http_resp resp;

    /* 503 + Retry-After: 0, then 200: retried once, body and headers of the final answer */
    snprintf(url, sizeof url, "%s/retry", host);
    ib_http_req req = {.method = "GET", .url = url};
    CHECK(ib_http_do(&resp, h, &req) == 0);
    CHECK_INT(resp.status, 200);
    CHECK_STR(resp.body, "hello");
    CHECK_INT(resp.body_len, 5);
    CHECK_STR(ib_http_resp_header(&resp, "X-Attempt"), "2");
    CHECK(ib_http_resp_header(&resp, "retry-after") == NULL);
    CHECK_INT(ib_http_count(h, "GET"), 2);
    ib_http_resp_clear(&resp);

    /* retries exhausted: the 503 answer is returned (callers decide) */
    snprintf(url, sizeof url, "%s/always503", host);
    req = (ib_http_req){.method = "GET", .url = url};
    CHECK(ib_http_do(&resp, h, &req) == 0);
    CHECK_INT(resp.status, 503);
    CHECK_STR(resp.body, "{\"errors\":[]}");
    CHECK_INT(ib_http_count(h, "GET"), 2 + 6);
    ib_http_resp_clear(&resp);
    req.no_retry = 1;
    CHECK(ib_http_do(&resp, h, &req) == 0);
    CHECK_INT(resp.status, 503);
    CHECK_INT(ib_http_count(h, "GET"), 9);
    ib_http_resp_clear(&resp);

    /* 401 with the challenge header captured (lowercased name) */
    snprintf(url, sizeof url, "%s/v2/", host);
    const char *hdrs[] = {"Accept: application/json", NULL};
    req = (ib_http_req){.method = "GET", .url = url, .headers = hdrs};
    CHECK(ib_http_do(&resp, h, &req) == 0);
    CHECK_INT(resp.status, 401);
    const char *wa = ib_http_resp_header(&resp, "www-authenticate");
    CHECK(wa != NULL);
    ib_challenge ch;
    CHECK(ib_auth_parse_challenge(&ch, wa ? wa : "") == 0);
    CHECK_STR(ch.scheme, "bearer");
    CHECK_STR(ch.service, "test-registry");
    int found = 0;
    for (size_t i = 0; i < resp.nheaders; i++)
        if (strcmp(resp.headers[i].name, "docker-distribution-api-version") == 0) found = 1;
    CHECK(found);
    ib_http_resp_clear(&resp);

    /* token fetch: GET realm?service=&scope=&scope= with Basic credentials */
    {
        const char *scopes[] = {"repository:robot/app:pull,push", "repository:base/img:pull"};
        ib_cred cred = {.username = "robot$wepp+ci", .password = "s3cr:et"};
        char *tok = NULL;
        int64_t exp = 0;
        CHECK(ib_auth_fetch_token(&tok, &exp, h, &ch, scopes, 2, &cred) == 0);
        CHECK_STR(tok, "tok-123");
        CHECK(exp > (int64_t)time(NULL) + 200 && exp <= (int64_t)time(NULL) + 300);
        free(tok);
        ib_cred bad = {.username = "robot$wepp+ci", .password = "wrong-pass"};
        CHECK_INT(ib_auth_fetch_token(&tok, &exp, h, &ch, scopes, 2, &bad), IB_EAUTH_REFUSED);
        CHECK(tok == NULL);
        CHECK(strstr(ib_error_last(), "credentials rejected for robot$wepp+ci") != NULL);
        CHECK(strstr(ib_error_last(), "127.0.0.1") != NULL);
        CHECK(strstr(ib_error_last(), "wrong-pass") == NULL);
    }
    ib_challenge_clear(&ch);

    /* streamed PUT: first attempt answered 503 after the body was sent, so
     * the body is rewound and sent again in full */
    static char big[200000];
    for (size_t i = 0; i < sizeof big; i++) big[i] = (char)(i * 7 + 1);
    mem_stream ms = {big, sizeof big, 0, 0};
    ib_http_body body = {ms_read, ms_rewind, &ms, (int64_t)sizeof big};
    snprintf(url, sizeof url, "%s/upload", host);
    req = (ib_http_req){.method = "PUT", .url = url, .stream = &body};
    CHECK(ib_http_do(&resp, h, &req) == 0);
    CHECK_INT(resp.status, 201);
    CHECK_INT(ms.rewinds, 1);
    CHECK_INT(ib_http_count(h, "PUT"), 2);
    char want[64];
    snprintf(want, sizeof want, "%zu", sizeof big);
    CHECK_STR(ib_http_resp_header(&resp, "x-body-len"), want);
    snprintf(want, sizeof want, "%lu", checksum(big, sizeof big));
    CHECK_STR(ib_http_resp_header(&resp, "x-body-sum"), want);
    CHECK_INT(resp.bytes_sent, sizeof big);
    ib_http_resp_clear(&resp);

    /* PATCH with unknown size: chunked transfer coding */
    ms = (mem_stream){big, 12345, 0, 0};
    body = (ib_http_body){ms_read, ms_rewind, &ms, -1};
    snprintf(url, sizeof url, "%s/chunked", host);
    req = (ib_http_req){.method = "PATCH", .url = url, .stream = &body};
    CHECK(ib_http_do(&resp, h, &req) == 0);
    CHECK_INT(resp.status, 202);
    CHECK_STR(ib_http_resp_header(&resp, "x-body-len"), "12345");
    CHECK_STR(ib_http_resp_header(&resp, "x-chunked"), "1");
    snprintf(want, sizeof want, "%lu", checksum(big, 12345));
    CHECK_STR(ib_http_resp_header(&resp, "x-body-sum"), want);
    CHECK_INT(ib_http_count(h, "PATCH"), 1);
    ib_http_resp_clear(&resp);

    /* POST without body: Content-Length 0; Location resolved against the URL */
    snprintf(url, sizeof url, "%s/post", host);
    req = (ib_http_req){.method = "POST", .url = url};
    CHECK(ib_http_do(&resp, h, &req) == 0);
    CHECK_INT(resp.status, 202);
    CHECK_STR(ib_http_resp_header(&resp, "x-body-len"), "0");
    {
        char *loc = ib_http_resolve_url(resp.effective_url, ib_http_resp_header(&resp, "location"));
        snprintf(want, sizeof want, "%s/v2/r/blobs/uploads/abc?_state=xyz", host);
        CHECK_STR(loc, want);
        free(loc);
    }
    ib_http_resp_clear(&resp);

    /* redirect followed: headers are those of the final response; sink gets the 2xx body */
    sink_buf sb = {{0}, 0};
    snprintf(url, sizeof url, "%s/redir", host);
    req = (ib_http_req){.method = "GET", .url = url, .follow_redirects = 1, .sink = sink_fn, .sink_ctx = &sb};
    CHECK(ib_http_do(&resp, h, &req) == 0);
    CHECK_INT(resp.status, 200);
    CHECK_STR(sb.buf, "plain body");
    CHECK_INT(resp.body_len, 0);
    CHECK_STR(ib_http_resp_header(&resp, "x-final"), "yes");
    CHECK(ib_http_resp_header(&resp, "x-hop") == NULL);
    snprintf(want, sizeof want, "%s/plain", host);
    CHECK_STR(resp.effective_url, want);
    ib_http_resp_clear(&resp);

    /* Authorization follows a redirect to the same host only (curl >= 7.58
     * without CURLOPT_UNRESTRICTED_AUTH): storage redirects never see tokens */
    {
        const char *ah[] = {"Authorization: Bearer SECRET-TOKEN", NULL};
        snprintf(url, sizeof url, "%s/redir-same", host);
        req = (ib_http_req){.method = "GET", .url = url, .headers = ah, .follow_redirects = 1};
        CHECK(ib_http_do(&resp, h, &req) == 0);
        CHECK_INT(resp.status, 200);
        CHECK_STR(ib_http_resp_header(&resp, "x-had-auth"), "1");
        ib_http_resp_clear(&resp);
        snprintf(url, sizeof url, "%s/redir-other", host);
        req.url = url;
        if (ib_http_do(&resp, h, &req) == 0) { /* needs "localhost" to resolve to 127.0.0.1 */
            CHECK_INT(resp.status, 200);
            CHECK_STR(ib_http_resp_header(&resp, "x-had-auth"), "0");
        }
        ib_http_resp_clear(&resp);
        snprintf(url, sizeof url, "%s/redir", host);
    }

    /* not followed: the 3xx itself */
    req = (ib_http_req){.method = "GET", .url = url};
    CHECK(ib_http_do(&resp, h, &req) == 0);
    CHECK_INT(resp.status, 307);
    CHECK_STR(ib_http_resp_header(&resp, "location"), "/plain");
    CHECK_STR(resp.body, "moved");
    ib_http_resp_clear(&resp);

    /* HEAD */
    snprintf(url, sizeof url, "%s/plain", host);
    req = (ib_http_req){.method = "HEAD", .url = url};
    CHECK(ib_http_do(&resp, h, &req) == 0);
    CHECK_INT(resp.status, 200);
    CHECK_STR(ib_http_resp_header(&resp, "content-length"), "10");
    CHECK_INT(resp.body_len, 0);
    CHECK_INT(ib_http_count(h, "HEAD"), 1);
    ib_http_resp_clear(&resp);

    /* max_body caps captured error bodies */
    snprintf(url, sizeof url, "%s/v2/", host);
    req = (ib_http_req){.method = "GET", .url = url, .max_body = 4};
    CHECK(ib_http_do(&resp, h, &req) == 0);
    CHECK_INT(resp.body_len, 4);
    CHECK_STR(resp.body, "{\"er");
    ib_http_resp_clear(&resp);

    /* concurrent calls from 4 threads (parallel blob uploads) share one ib_http */
    {
        pthread_t th[4];
        par_arg pa[4];
        snprintf(url, sizeof url, "%s/plain", host);
        unsigned before = ib_http_count(h, "GET");
        for (int i = 0; i < 4; i++) {
            pa[i] = (par_arg){h, url, 0};
            pthread_create(&th[i], NULL, par_main, &pa[i]);
        }
        for (int i = 0; i < 4; i++) {
            pthread_join(th[i], NULL);
            CHECK_INT(pa[i].ok, 5);
        }
        CHECK_INT(ib_http_count(h, "GET") - before, 20);
    }

    snprintf(url, sizeof url, "%s/quit", host);
    req = (ib_http_req){.method = "GET", .url = url};
    CHECK(ib_http_do(&resp, h, &req) == 0);
    ib_http_resp_clear(&resp);
    int st = 0;
    waitpid(srv, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);

    /* connection refused (the server is gone): an error naming the URL
     * without its query string, after the retries */
    snprintf(url, sizeof url, "%s/v2/x?_state=SECRET", host);
    req = (ib_http_req){.method = "GET", .url = url};
    unsigned before = ib_http_count(h, "GET");
    CHECK(ib_http_do(&resp, h, &req) < 0);
    CHECK(strstr(ib_error_last(), "SECRET") == NULL);
    CHECK(strstr(ib_error_last(), "GET http://127.0.0.1:") != NULL);
    CHECK(strstr(ib_error_last(), "/v2/x:") != NULL);
    CHECK(strstr(ib_error_last(), "(after 5 retries)") != NULL);
    CHECK_INT(ib_http_count(h, "GET") - before, 6);
    ib_http_resp_clear(&resp);
    /* a stream without rewind that was not consumed is still retried; no_retry is not */
    req.no_retry = 1;
    before = ib_http_count(h, "GET");
    CHECK(ib_http_do(&resp, h, &req) < 0);
    CHECK_INT(ib_http_count(h, "GET") - before, 1);
    CHECK(strstr(ib_error_last(), "retries") == NULL);

    free(host);
    ib_http_free(h);

    /* a missing --ca-file is a usage-level error */
    o = (ib_http_opts){.ca_file = "/nonexistent/ca.pem", .host = "r.example"};
    CHECK(ib_http_new(&h, &o) < 0);
    CHECK(strstr(ib_error_last(), "--ca-file") != NULL);
    /* an existing one builds (combined with the system bundle in memory) */
    o.ca_file = "/etc/ssl/certs/ca-certificates.crt";
    h = NULL;
    if (access(o.ca_file, R_OK) == 0) {
        CHECK(ib_http_new(&h, &o) == 0);
        ib_http_free(h);
    }
    return ut_done();
}
