#include "registry/client.h"
#include "common/error.h"
#include "oci/digest.h"
#include "oci/image.h"
#include "registry/auth.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ACCEPT_MANIFESTS                                                                                          \
    "Accept: " IB_MT_OCI_MANIFEST ", " IB_MT_OCI_INDEX ", " IB_MT_DOCKER_MANIFEST ", " IB_MT_DOCKER_LIST

enum { AUTH_NONE, AUTH_BASIC, AUTH_BEARER };

struct ib_registry {
    char *host;
    char *base;
    ib_http *http;
    ib_reg_opts o;
    pthread_mutex_t mu;
    int kind;
    ib_challenge chal;
    ib_cred cred;
    int cred_state; /* 0 not looked up, 1 found, -1 none */
    char *cred_repo; /* first repository wanted: credentials are looked up for it */
    char *token;
    int64_t token_exp;
    unsigned token_gen; /* bumps on each new token */
    char **scopes;
    size_t nscopes;
    int scopes_dirty;
    ib_registry_stats st;
    ib_registry_progress_fn progress;
    void *progress_ud;
};

void ib_registry_on_progress(ib_registry *r, ib_registry_progress_fn fn, void *ud)
{
    r->progress = fn;
    r->progress_ud = ud;
}

static int64_t now_s(void) { return (int64_t)time(NULL); }

int ib_registry_open(ib_registry **out, const char *host, const ib_reg_opts *o)
{
    ib_registry *r = ib_xcalloc(1, sizeof *r);
    r->host = ib_xstrdup(host);
    if (o) r->o = *o;
    if (r->o.jobs <= 0) r->o.jobs = 4;
    ib_http_opts ho = {.ca_file = r->o.ca_file, .host = host, .insecure = r->o.insecure, .plain_http = r->o.plain_http};
    int rc = ib_http_new(&r->http, &ho);
    if (rc < 0) {
        free(r->host);
        free(r);
        return rc;
    }
    /* "docker.io" names Docker Hub; its API lives at registry-1.docker.io. */
    r->base = ib_http_base_url(r->http, strcmp(host, "docker.io") ? host : "registry-1.docker.io");
    pthread_mutex_init(&r->mu, NULL);
    *out = r;
    return 0;
}

void ib_registry_free(ib_registry *r)
{
    if (!r) return;
    ib_http_free(r->http);
    free(r->host);
    free(r->base);
    ib_challenge_clear(&r->chal);
    ib_cred_clear(&r->cred);
    free(r->cred_repo);
    free(r->token);
    for (size_t i = 0; i < r->nscopes; i++) free(r->scopes[i]);
    free(r->scopes);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

const char *ib_registry_host(const ib_registry *r) { return r->host; }

void ib_registry_get_stats(ib_registry_stats *out, ib_registry *r)
{
    pthread_mutex_lock(&r->mu);
    *out = r->st;
    pthread_mutex_unlock(&r->mu);
}

/* Adds a scope unless an equal or wider one is there ("pull" is covered by
 * "pull,push" on the same repository). Returns 1 if the token must change. */
static int add_scope_locked(ib_registry *r, const char *scope)
{
    const char *colon = strrchr(scope, ':');
    size_t prefix = colon ? (size_t)(colon - scope) : strlen(scope);
    for (size_t i = 0; i < r->nscopes; i++) {
        if (!strcmp(r->scopes[i], scope)) return 0;
        if (colon && !strncmp(r->scopes[i], scope, prefix + 1)) {
            int covered = 1;
            char *acts = ib_xstrdup(colon + 1), *save = NULL;
            for (char *a = strtok_r(acts, ",", &save); a; a = strtok_r(NULL, ",", &save)) {
                const char *have = r->scopes[i] + prefix + 1;
                size_t al = strlen(a);
                const char *f = strstr(have, a);
                if (!(f && (f == have || f[-1] == ',') && (f[al] == 0 || f[al] == ','))) covered = 0;
            }
            free(acts);
            if (covered) return 0;
        }
    }
    r->scopes = ib_xrealloc(r->scopes, (r->nscopes + 1) * sizeof *r->scopes);
    r->scopes[r->nscopes++] = ib_xstrdup(scope);
    r->scopes_dirty = 1;
    return 1;
}

void ib_registry_want(ib_registry *r, const char *repo, const char *actions)
{
    char *s = ib_xasprintf("repository:%s:%s", repo, actions);
    pthread_mutex_lock(&r->mu);
    add_scope_locked(r, s);
    if (!r->cred_repo) r->cred_repo = ib_xstrdup(repo);
    pthread_mutex_unlock(&r->mu);
    free(s);
}

/* Registry error bodies: {"errors":[{"code":"DENIED","message":"..."}]}. */
static void describe(char *out, size_t n, const ib_http_resp *resp)
{
    json_t *j = resp->body ? json_loadb(resp->body, resp->body_len, 0, NULL) : NULL;
    json_t *e = json_array_get(json_object_get(j, "errors"), 0);
    const char *code = json_string_value(json_object_get(e, "code"));
    const char *msg = json_string_value(json_object_get(e, "message"));
    if (code) snprintf(n ? out : out, n, "HTTP %ld %s%s%s", resp->status, code, msg ? ": " : "", msg ? msg : "");
    else snprintf(out, n, "HTTP %ld", resp->status);
    json_decref(j);
}

static int reg_fail(ib_registry *r, const ib_http_resp *resp, const char *what)
{
    char d[512];
    describe(d, sizeof d, resp);
    const char *hint = "";
    if (resp->status == 412) hint = " (Harbor: the tag is immutable in this project; push a new tag)";
    else if (resp->status == 403)
        hint = " (Harbor: no push permission for this account, the project quota is full, or it is a proxy-cache "
               "project)";
    else if (resp->status == 401) hint = " (check the credentials: imgbuild login)";
    return ib_error_set(resp->status == 404 ? IB_ENOTFOUND : IB_ERR, "%s: %s: %s%s", r->host, what, d, hint);
}

/* Fills *hdr with the Authorization line for the current auth state,
 * fetching a (new) token when needed. Called with r->mu held. */
static int auth_line_locked(char **hdr, ib_registry *r)
{
    *hdr = NULL;
    if (r->kind == AUTH_BASIC) {
        *hdr = ib_auth_basic_header(&r->cred);
        return 0;
    }
    if (r->kind != AUTH_BEARER) return 0;
    if (!r->token || r->scopes_dirty || now_s() >= r->token_exp) {
        if (r->cred_state == 0) {
            int rc = ib_auth_lookup_repo(&r->cred, r->host, r->cred_repo, r->o.authfile);
            if (rc < 0 && rc != IB_ENOTFOUND) return rc;
            r->cred_state = rc == 0 ? 1 : -1;
        }
        char *tok = NULL;
        int64_t exp = 0;
        int rc = ib_auth_fetch_token(&tok, &exp, r->http, &r->chal, (const char *const *)r->scopes, r->nscopes,
                                     r->cred_state == 1 ? &r->cred : NULL);
        if (rc < 0) return rc;
        free(r->token);
        r->token = tok;
        r->token_exp = exp;
        r->token_gen++;
        r->scopes_dirty = 0;
        r->st.token_fetches++;
    }
    *hdr = ib_xasprintf("Authorization: Bearer %s", r->token);
    return 0;
}

/* Sends req with authentication, answering at most two challenges: the
 * first tells us the scheme (and, for Bearer, the realm); a second 401 after
 * fresh credentials means they are not good enough. */
static int do_req(ib_http_resp *resp, ib_registry *r, const ib_http_req *req0)
{
    const char *hs[16];
    size_t nh = 0;
    for (const char *const *h = req0->headers; h && *h && nh < 14; h++) hs[nh++] = *h;
    for (int attempt = 0;; attempt++) {
        char *auth = NULL;
        unsigned gen;
        pthread_mutex_lock(&r->mu);
        int rc = auth_line_locked(&auth, r);
        gen = r->token_gen;
        int kind = r->kind;
        pthread_mutex_unlock(&r->mu);
        if (rc < 0) return rc;
        size_t n = nh;
        if (auth) hs[n++] = auth;
        hs[n] = NULL;
        ib_http_req req = *req0;
        req.headers = hs;
        memset(resp, 0, sizeof *resp);
        rc = ib_http_do(resp, r->http, &req);
        free(auth);
        if (rc < 0) return rc;
        if (resp->status != 401 || attempt >= 2) {
            if (resp->status == 401) return reg_fail(r, resp, "authentication failed");
            return 0;
        }
        /* RFC 7235: several WWW-Authenticate lines are one comma-joined list
         * (a Basic line then a Bearer line must still find the Bearer one). */
        char *wa = NULL;
        for (size_t i = 0; i < resp->nheaders; i++) {
            if (strcmp(resp->headers[i].name, "www-authenticate")) continue;
            char *j = wa ? ib_xasprintf("%s, %s", wa, resp->headers[i].value) : ib_xstrdup(resp->headers[i].value);
            free(wa);
            wa = j;
        }
        ib_challenge c = {0};
        int pc = wa ? ib_auth_parse_challenge(&c, wa) : IB_EINVALID;
        free(wa);
        if (pc < 0) {
            ib_challenge_clear(&c);
            return reg_fail(r, resp, "authentication required but the registry sent no usable challenge");
        }
        pthread_mutex_lock(&r->mu);
        int err = 0;
        if (!strcmp(c.scheme, "bearer")) {
            /* Parallel requests all meet the first challenge: whoever comes
             * second finds a token fetched after it sent and just retries. */
            int fresh_elsewhere = r->kind == AUTH_BEARER && r->token && r->token_gen != gen;
            int added = 0;
            /* Distribution may list several scopes in one parameter, space-separated. */
            if (c.scope) {
                char *dup = ib_xstrdup(c.scope), *save = NULL;
                for (char *t = strtok_r(dup, " ", &save); t; t = strtok_r(NULL, " ", &save))
                    added |= add_scope_locked(r, t);
                free(dup);
            }
            /* RFC 6750 invalid_token: ours expired on the registry's clock (or
             * was revoked) before it did on ours. Fetch a new one and retry. */
            int expired = !fresh_elsewhere && kind == AUTH_BEARER && r->token && c.error &&
                          !strcmp(c.error, "invalid_token");
            if (expired) {
                free(r->token);
                r->token = NULL;
            }
            /* The token we sent already covered what the registry asks for:
             * no permission, or no credentials at all. */
            if (!expired && !fresh_elsewhere && kind == AUTH_BEARER && r->token && !added)
                err = r->cred_state == 1 ? 2 : 3;
            ib_challenge_clear(&r->chal);
            r->chal = c;
            r->kind = AUTH_BEARER;
        } else if (!strcmp(c.scheme, "basic")) {
            if (kind == AUTH_BEARER) {
                /* Harbor answers a token without enough scope with a bare Basic challenge. */
                err = r->cred_state == 1 ? 2 : 3;
            } else if (kind == AUTH_BASIC) {
                err = 1;
            } else {
                if (r->cred_state == 0) {
                    int lr = ib_auth_lookup_repo(&r->cred, r->host, r->cred_repo, r->o.authfile);
                    r->cred_state = lr == 0 ? 1 : -1;
                    /* a broken auth file or helper says so, as on the Bearer path */
                    if (lr < 0 && lr != IB_ENOTFOUND) err = 5;
                }
                if (!err) {
                    if (r->cred_state != 1) err = 3;
                    else r->kind = AUTH_BASIC;
                }
            }
            ib_challenge_clear(&c);
        } else {
            ib_challenge_clear(&c);
            err = 4;
        }
        pthread_mutex_unlock(&r->mu);
        if (err == 1) {
            int e = ib_error_set(IB_EAUTH_REFUSED,
                                 "%s: authentication failed: the registry refused the credentials%s%s%s",
                                 r->host, r->cred_state == 1 ? " from " : "",
                                 r->cred_state == 1 && r->cred.source ? r->cred.source : "",
                                 " (check them with imgbuild login)");
            ib_http_resp_clear(resp);
            return e;
        }
        if (err == 2) {
            int e = ib_error_set(IB_EAUTH, "%s: access denied: the registry did not grant %s (no permission on the "
                                           "repository for this account?)",
                                 r->host, r->nscopes ? r->scopes[0] : "the needed scope");
            ib_http_resp_clear(resp);
            return e;
        }
        if (err == 3) {
            int e = ib_error_set(IB_EAUTH, "%s: authentication required: no credentials found (run `imgbuild login %s`)",
                                 r->host, r->host);
            ib_http_resp_clear(resp);
            return e;
        }
        if (err == 5) {
            int e = ib_error_wrap(IB_EAUTH, "%s: reading credentials", r->host);
            ib_http_resp_clear(resp);
            return e;
        }
        if (err == 4) {
            int e = ib_error_set(IB_EAUTH, "%s: unsupported authentication scheme", r->host);
            ib_http_resp_clear(resp);
            return e;
        }
        ib_http_resp_clear(resp);
    }
}

int ib_registry_ping(ib_registry *r)
{
    char *url = ib_xasprintf("%s/v2/", r->base);
    ib_http_req req = {.method = "GET", .url = url};
    ib_http_resp resp;
    int rc = do_req(&resp, r, &req);
    free(url);
    if (rc < 0) return rc;
    if (resp.status != 200) rc = reg_fail(r, &resp, "GET /v2/");
    ib_http_resp_clear(&resp);
    return rc;
}

int ib_registry_blob_exists(int *exists, ib_registry *r, const char *repo, const char *digest)
{
    char *url = ib_xasprintf("%s/v2/%s/blobs/%s", r->base, repo, digest);
    ib_http_req req = {.method = "HEAD", .url = url, .follow_redirects = 1};
    ib_http_resp resp;
    int rc = do_req(&resp, r, &req);
    free(url);
    if (rc < 0) return rc;
    if (resp.status == 200) *exists = 1;
    else if (resp.status == 404) *exists = 0;
    else rc = reg_fail(r, &resp, "HEAD blob");
    ib_http_resp_clear(&resp);
    return rc;
}

static int start_upload(char **location, ib_registry *r, const char *repo, const char *mount_digest,
                        const char *from, int *mounted)
{
    char *url;
    if (mount_digest) {
        char *f = ib_http_escape(from);
        url = ib_xasprintf("%s/v2/%s/blobs/uploads/?mount=%s&from=%s", r->base, repo, mount_digest, f);
        free(f);
    } else {
        url = ib_xasprintf("%s/v2/%s/blobs/uploads/", r->base, repo);
    }
    ib_http_req req = {.method = "POST", .url = url, .body = "", .body_len = 0};
    ib_http_resp resp;
    int rc = do_req(&resp, r, &req);
    if (rc < 0) {
        free(url);
        return rc;
    }
    if (mounted) *mounted = resp.status == 201;
    if (resp.status == 201 && mount_digest) {
        *location = NULL;
    } else if (resp.status == 202) {
        const char *loc = ib_http_resp_header(&resp, "location");
        if (!loc) rc = ib_error_set(IB_ERR, "%s: upload started without a Location header", r->host);
        else *location = ib_http_resolve_url(url, loc);
    } else {
        rc = reg_fail(r, &resp, "starting a blob upload");
    }
    ib_http_resp_clear(&resp);
    free(url);
    return rc;
}

int ib_registry_blob_mount(int *mounted, ib_registry *r, const char *repo, const char *digest, const char *from_repo)
{
    char *loc = NULL;
    *mounted = 0;
    int rc = start_upload(&loc, r, repo, digest, from_repo, mounted);
    /* A 202 opened an upload session we do not use now: the caller uploads
     * through its own session, and Distribution expires idle ones. */
    if (loc) {
        ib_http_req req = {.method = "DELETE", .url = loc, .no_retry = 1};
        ib_http_resp resp;
        if (do_req(&resp, r, &req) == 0) ib_http_resp_clear(&resp);
        free(loc);
    }
    if (rc == 0 && *mounted) {
        pthread_mutex_lock(&r->mu);
        r->st.mounted++;
        pthread_mutex_unlock(&r->mu);
    }
    return rc;
}

struct fd_body {
    int fd;
    uint64_t start, len, pos;
    ib_registry *r;
    const char *digest;
    uint64_t total;
};

static long long fd_read(void *ctx, char *buf, size_t n)
{
    struct fd_body *b = ctx;
    if (b->pos >= b->len) return 0;
    if (n > b->len - b->pos) n = (size_t)(b->len - b->pos);
    ssize_t k = pread(b->fd, buf, n, (off_t)(b->start + b->pos));
    if (k < 0) return -1;
    b->pos += (uint64_t)k;
    if (b->r && b->r->progress) b->r->progress(b->r->progress_ud, b->digest, 1, b->start + b->pos, b->total);
    return k;
}

/* "Range: 0-1234" (an upload's status) -> next offset 1235. Distribution
 * answers "0-0" both for an empty upload and for one holding one byte: that
 * is read as 0, and a registry that has the byte refuses the resend with 416,
 * after which the upload starts over. */
static int range_next(uint64_t *next, const ib_http_resp *resp)
{
    const char *rg = ib_http_resp_header(resp, "range");
    if (!rg) return -1;
    if (!strncmp(rg, "bytes=", 6)) rg += 6;
    const char *dash = strchr(rg, '-');
    if (!dash) return -1;
    char *end;
    unsigned long long first = strtoull(rg, NULL, 10), last = strtoull(dash + 1, &end, 10);
    if (end == dash + 1 || last < first) return -1;
    *next = last == 0 ? 0 : (uint64_t)last + 1;
    return 0;
}

/* GET on the upload URL reports how much the registry has; used after a
 * dropped connection to resume instead of starting over. */
static int upload_status(uint64_t *next, char **loc, ib_registry *r)
{
    ib_http_req req = {.method = "GET", .url = *loc};
    ib_http_resp resp;
    int rc = do_req(&resp, r, &req);
    if (rc < 0) return rc;
    if (resp.status == 204 || resp.status == 202) {
        if (range_next(next, &resp) < 0) *next = 0;
        const char *l = ib_http_resp_header(&resp, "location");
        if (l) {
            char *nl = ib_http_resolve_url(*loc, l);
            free(*loc);
            *loc = nl;
        }
    } else if (resp.status == 404) {
        rc = IB_ENOTFOUND; /* BLOB_UPLOAD_UNKNOWN: the session is gone */
    } else {
        rc = reg_fail(r, &resp, "upload status");
    }
    ib_http_resp_clear(&resp);
    return rc;
}

/* Statuses after which the same bytes may be offered again once the
 * registry has said where it stands. */
static int resumable(int t, long status)
{
    return (t < 0 && t != IB_EAUTH && t != IB_EAUTH_REFUSED) ||
           (t == 0 && (status >= 500 || status == 408 || status == 429));
}

/* The pause before a resume: Retry-After when the registry sent one (bounded
 * like the HTTP layer's), else a short linear backoff. */
static void resume_pause(const ib_http_resp *resp, int attempt)
{
    long ms = 100L * attempt;
    const char *ra = resp ? ib_http_resp_header(resp, "retry-after") : NULL;
    if (ra && *ra >= '0' && *ra <= '9') ms = strtol(ra, NULL, 10) * 1000L;
    if (ms > 10000) ms = 10000;
    usleep((useconds_t)ms * 1000u);
}

static void count_recovery(ib_registry *r, int restarted)
{
    pthread_mutex_lock(&r->mu);
    if (restarted) r->st.restarted++;
    else r->st.resumed++;
    pthread_mutex_unlock(&r->mu);
}

enum {
    MONOLITHIC_MAX = 4u << 20, /* one PUT with the bytes: one round trip less */
    RESUME_CHUNK = 4u << 20,   /* after a cut: GHCR refuses Content-Range PATCHes over 4 MiB */
};

/* How a blob goes up, as docker and skopeo do it unless told otherwise:
 * - up to 4 MiB: POST, then PUT ?digest= carrying the bytes (monolithic);
 * - larger: POST, one PATCH streaming the whole blob without Content-Range,
 *   then PUT ?digest=;
 * - --chunk-size N: PATCHes of N bytes with Content-Range, for proxies and
 *   registries that cap request bodies.
 * A PATCH is never replayed blindly, because Distribution appends PATCH
 * bodies whatever Content-Range says: after a dropped connection, 5xx, 408
 * or 429 the registry is asked where the upload stands (GET, Range) and the
 * rest follows in Content-Range chunks; a 416 means the two sides disagree
 * and is settled the same way. A session the registry no longer knows (404,
 * BLOB_UPLOAD_UNKNOWN), a finished blob that does not match (400) or a resume
 * that makes no progress starts the blob over, up to 3 times. After a 202 the
 * offset is what was sent, not the Range answered: ECR's lags behind. */
int ib_registry_blob_upload(ib_registry *r, const char *repo, const char *digest, ib_store *s)
{
    char *path = ib_store_blob_path(s, digest);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = ib_error_errno(IB_ERR, "blob %s", digest);
        free(path);
        return e;
    }
    free(path);
    struct stat sb;
    fstat(fd, &sb);
    uint64_t size = (uint64_t)sb.st_size;
    int rc = 0, restarts = 0, resumes = 0;
    int chunked = r->o.chunk_size > 0;
    char *loc = NULL;
    ib_http_resp resp;
restart:
    free(loc);
    loc = NULL;
    if ((rc = start_upload(&loc, r, repo, NULL, NULL, NULL)) < 0) goto out;
    uint64_t off = 0;
    int resuming = 0, monolithic = !chunked && size <= MONOLITHIC_MAX;
    while (!monolithic && off < size) {
        uint64_t n = size - off;
        if (chunked && n > r->o.chunk_size) n = r->o.chunk_size;
        if (resuming && n > RESUME_CHUNK) n = RESUME_CHUNK;
        struct fd_body fb = {fd, off, n, 0, r, digest, size};
        ib_http_body body = {fd_read, NULL, &fb, (int64_t)n};
        char cr[96];
        snprintf(cr, sizeof cr, "Content-Range: %llu-%llu", (unsigned long long)off, (unsigned long long)(off + n - 1));
        const char *hs[] = {"Content-Type: application/octet-stream", (chunked || resuming) ? cr : NULL, NULL};
        ib_http_req req = {.method = "PATCH", .url = loc, .headers = hs, .stream = &body, .no_retry = 1};
        int t = do_req(&resp, r, &req);
        if (t == IB_EAUTH || t == IB_EAUTH_REFUSED) {
            rc = t;
            goto out;
        }
        long status = t == 0 ? resp.status : 0;
        if (resumable(t, status) || status == 416) {
            if (++resumes > 8) {
                rc = t < 0 ? t : reg_fail(r, &resp, "uploading a blob (the registry keeps refusing to resume)");
                if (t == 0) ib_http_resp_clear(&resp);
                goto out;
            }
            resume_pause(t == 0 ? &resp : NULL, resumes);
            if (t == 0) ib_http_resp_clear(&resp);
            uint64_t was = off;
            int st = upload_status(&off, &loc, r);
            /* A 416 that moves nothing, or a registry claiming more than
             * the blob: this session cannot be trusted any more. */
            if (st == IB_ENOTFOUND || (st == 0 && ((status == 416 && off == was) || off > size))) {
                if (restarts++ >= 3) {
                    rc = ib_error_set(IB_ERR, "%s: upload of %s keeps failing (started over 3 times)", r->host, digest);
                    goto out;
                }
                count_recovery(r, 1);
                goto restart;
            }
            if (st < 0) {
                rc = st;
                goto out;
            }
            resuming = 1;
            count_recovery(r, 0);
            continue;
        }
        if (status == 404 && restarts++ < 3) {
            ib_http_resp_clear(&resp);
            count_recovery(r, 1);
            goto restart;
        }
        if (status != 202) {
            rc = reg_fail(r, &resp, "uploading a blob chunk");
            ib_http_resp_clear(&resp);
            goto out;
        }
        const char *l = ib_http_resp_header(&resp, "location");
        if (l) {
            char *nl = ib_http_resolve_url(loc, l);
            free(loc);
            loc = nl;
        }
        off += n;
        ib_http_resp_clear(&resp);
    }
    {
        char *url = ib_xasprintf("%s%cdigest=%s", loc, strchr(loc, '?') ? '&' : '?', digest);
        struct fd_body fb = {fd, 0, size, 0, r, digest, size};
        ib_http_body body = {fd_read, NULL, &fb, (int64_t)size};
        const char *hs[] = {"Content-Type: application/octet-stream", NULL};
        ib_http_req req = {.method = "PUT", .url = url, .headers = hs, .body = "", .body_len = 0, .no_retry = monolithic};
        if (monolithic) req.stream = &body;
        int t = do_req(&resp, r, &req);
        free(url);
        if (monolithic && resumable(t, t == 0 ? resp.status : 0) && restarts++ < 3) {
            /* one request carried the whole blob: nothing to resume */
            resume_pause(t == 0 ? &resp : NULL, restarts);
            if (t == 0) ib_http_resp_clear(&resp);
            count_recovery(r, 1);
            goto restart;
        }
        if (t < 0) {
            rc = t;
            goto out;
        }
        /* 404: the session expired; 400 DIGEST_INVALID: bytes from a cut
         * request landed after we resumed. Either way: start over. */
        if ((resp.status == 404 || resp.status == 400) && restarts++ < 3) {
            ib_http_resp_clear(&resp);
            count_recovery(r, 1);
            goto restart;
        }
        if (resp.status != 201) {
            rc = reg_fail(r, &resp, "finishing a blob upload");
        } else {
            const char *dcd = ib_http_resp_header(&resp, "docker-content-digest");
            if (dcd && strcmp(dcd, digest))
                rc = ib_error_set(IB_ECORRUPT, "%s: stored blob as %s, expected %s", r->host, dcd, digest);
        }
        ib_http_resp_clear(&resp);
    }
    if (rc == 0) {
        pthread_mutex_lock(&r->mu);
        r->st.uploaded++;
        r->st.bytes_up += size;
        pthread_mutex_unlock(&r->mu);
    }
out:
    free(loc);
    close(fd);
    return rc;
}

struct fetch_sink {
    ib_store *s;
    ib_blob_writer *w;
    uint64_t n, max;
    ib_registry *r;
    const char *digest;
};

static int fetch_write(void *ctx, const void *buf, size_t len)
{
    struct fetch_sink *f = ctx;
    f->n += len;
    if (f->r->progress) f->r->progress(f->r->progress_ud, f->digest, 0, f->n, f->max);
    if (f->max && f->n > f->max) return ib_error_set(IB_ECORRUPT, "blob larger than its descriptor says");
    return ib_blob_write(f->w, buf, len);
}

static int fetch_reset(void *ctx)
{
    struct fetch_sink *f = ctx;
    ib_store_blob_abort(f->w);
    f->w = NULL;
    f->n = 0;
    return ib_store_blob_begin(&f->w, f->s);
}

int ib_registry_blob_fetch(ib_registry *r, const char *repo, const char *digest, uint64_t size, ib_store *s)
{
    struct fetch_sink f = {s, NULL, 0, size, r, digest};
    int rc = ib_store_blob_begin(&f.w, s);
    if (rc < 0) return rc;
    char *url = ib_xasprintf("%s/v2/%s/blobs/%s", r->base, repo, digest);
    ib_http_req req = {.method = "GET", .url = url, .sink = fetch_write, .sink_ctx = &f, .sink_reset = fetch_reset,
                       .follow_redirects = 1};
    ib_http_resp resp;
    rc = do_req(&resp, r, &req);
    free(url);
    if (rc < 0) {
        ib_store_blob_abort(f.w);
        return rc;
    }
    if (resp.status != 200) {
        rc = reg_fail(r, &resp, "GET blob");
        ib_http_resp_clear(&resp);
        ib_store_blob_abort(f.w);
        return rc;
    }
    ib_http_resp_clear(&resp);
    rc = ib_store_blob_commit(NULL, NULL, f.w, digest);
    if (rc == IB_ECORRUPT)
        return ib_error_set(IB_ECORRUPT, "%s: blob %s from %s does not match its digest (refused)", r->host, digest,
                            repo);
    if (rc == 0) {
        pthread_mutex_lock(&r->mu);
        r->st.fetched++;
        r->st.bytes_down += f.n;
        pthread_mutex_unlock(&r->mu);
    }
    return rc;
}

int ib_registry_manifest_get(char **body, size_t *len, char **media_type, char *digest_out, ib_registry *r,
                             const char *repo, const char *reference)
{
    char *url = ib_xasprintf("%s/v2/%s/manifests/%s", r->base, repo, reference);
    const char *hs[] = {ACCEPT_MANIFESTS, NULL};
    ib_http_req req = {.method = "GET", .url = url, .headers = hs, .max_body = IB_MANIFEST_MAX + 1};
    ib_http_resp resp;
    int rc = do_req(&resp, r, &req);
    free(url);
    if (rc < 0) return rc;
    if (resp.status != 200) {
        rc = reg_fail(r, &resp, "GET manifest");
        if (rc == IB_ENOTFOUND)
            rc = ib_error_set(IB_ENOTFOUND, "%s/%s:%s: manifest unknown to the registry", r->host, repo, reference);
        ib_http_resp_clear(&resp);
        return rc;
    }
    if (resp.body_len > IB_MANIFEST_MAX) {
        ib_http_resp_clear(&resp);
        return ib_error_set(IB_EINVALID, "%s/%s:%s: manifest larger than 4 MiB (refused)", r->host, repo, reference);
    }
    char dg[IB_DIGEST_STRLEN + 1];
    ib_digest_buf(dg, resp.body ? resp.body : "", resp.body_len);
    const char *dcd = ib_http_resp_header(&resp, "docker-content-digest");
    if ((ib_digest_valid(reference) && strcmp(reference, dg)) || (dcd && ib_digest_valid(dcd) && strcmp(dcd, dg))) {
        rc = ib_error_set(IB_ECORRUPT, "%s/%s:%s: manifest content does not match its digest (refused)", r->host,
                          repo, reference);
        ib_http_resp_clear(&resp);
        return rc;
    }
    const char *ct = ib_http_resp_header(&resp, "content-type");
    json_t *j = json_loadb(resp.body ? resp.body : "", resp.body_len, 0, NULL);
    const char *mt = json_string_value(json_object_get(j, "mediaType"));
    *media_type = ib_xstrdup(mt ? mt : ct ? ct : IB_MT_OCI_MANIFEST);
    char *semi = strchr(*media_type, ';');
    if (semi) *semi = 0;
    json_decref(j);
    memcpy(digest_out, dg, sizeof dg);
    *body = resp.body ? resp.body : ib_xstrdup("");
    *len = resp.body_len;
    resp.body = NULL;
    ib_http_resp_clear(&resp);
    return 0;
}

int ib_registry_manifest_head(char *digest_out, ib_registry *r, const char *repo, const char *reference)
{
    char *url = ib_xasprintf("%s/v2/%s/manifests/%s", r->base, repo, reference);
    const char *hs[] = {ACCEPT_MANIFESTS, NULL};
    ib_http_req req = {.method = "HEAD", .url = url, .headers = hs};
    ib_http_resp resp;
    int rc = do_req(&resp, r, &req);
    free(url);
    if (rc < 0) return rc;
    const char *dcd = ib_http_resp_header(&resp, "docker-content-digest");
    if (resp.status == 200 && dcd && ib_digest_valid(dcd)) memcpy(digest_out, dcd, IB_DIGEST_STRLEN + 1);
    else rc = resp.status == 404 ? IB_ENOTFOUND : reg_fail(r, &resp, "HEAD manifest");
    ib_http_resp_clear(&resp);
    return rc;
}

int ib_registry_manifest_put(ib_registry *r, const char *repo, const char *reference, const char *body, size_t len,
                             const char *media_type, const char *digest)
{
    if (len > IB_MANIFEST_MAX) return ib_error_set(IB_EINVALID, "manifest larger than 4 MiB: registries refuse it");
    char *url = ib_xasprintf("%s/v2/%s/manifests/%s", r->base, repo, reference);
    char *ct = ib_xasprintf("Content-Type: %s", media_type);
    const char *hs[] = {ct, NULL};
    ib_http_req req = {.method = "PUT", .url = url, .headers = hs, .body = body, .body_len = len};
    ib_http_resp resp;
    int rc = do_req(&resp, r, &req);
    free(url);
    free(ct);
    if (rc < 0) return rc;
    if (resp.status != 201 && resp.status != 200) {
        char *what = ib_xasprintf("PUT manifest %s:%s", repo, reference);
        rc = reg_fail(r, &resp, what);
        free(what);
    } else {
        const char *dcd = ib_http_resp_header(&resp, "docker-content-digest");
        if (dcd && strcmp(dcd, digest))
            rc = ib_error_set(IB_ECORRUPT, "%s: registry stored the manifest as %s, expected %s", r->host, dcd, digest);
    }
    ib_http_resp_clear(&resp);
    return rc;
}
