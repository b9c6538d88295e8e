/* Registry authentication: challenges (RFC 7235), credential files (docker
 * config.json, containers-auth.json(5)), docker-credential-* helpers
 * (docker-credential-helpers protocol: `get`, server URL on stdin, JSON
 * {"ServerURL","Username","Secret"} on stdout), and the Distribution token
 * protocol (docs/spec/auth/token.md, oauth.md). Secrets never reach an error
 * message: messages name the file, helper or user only. */
#include "registry/auth.h"

#include "common/error.h"
#include "common/fs.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define IB_AUTH_MAX_FILE (4u << 20)
#define IB_AUTH_HELPER_TIMEOUT_MS 60000
#define IB_AUTH_HELPER_MAX_OUT (1u << 20)
#define DOCKER_HUB_LEGACY_KEY "https://index.docker.io/v1/"

/* ---- base64 (RFC 4648 section 4) ------------------------------------------ */

static const char b64_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *ib_base64_encode(const void *data, size_t len)
{
    const unsigned char *in = data;
    char *out = ib_xmalloc((len + 2) / 3 * 4 + 1), *o = out;
    size_t i = 0;
    for (; i + 3 <= len; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        *o++ = b64_alphabet[v >> 18 & 63];
        *o++ = b64_alphabet[v >> 12 & 63];
        *o++ = b64_alphabet[v >> 6 & 63];
        *o++ = b64_alphabet[v & 63];
    }
    if (len - i == 1) {
        unsigned v = (unsigned)in[i] << 16;
        *o++ = b64_alphabet[v >> 18 & 63];
        *o++ = b64_alphabet[v >> 12 & 63];
        *o++ = '=';
        *o++ = '=';
    } else if (len - i == 2) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8;
        *o++ = b64_alphabet[v >> 18 & 63];
        *o++ = b64_alphabet[v >> 12 & 63];
        *o++ = b64_alphabet[v >> 6 & 63];
        *o++ = '=';
    }
    *o = 0;
    return out;
}

static int b64_value(int c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Accepts padded input and, leniently, unpadded input (some tools write
 * `auth` without padding); rejects anything else. */
int ib_base64_decode(unsigned char **out, size_t *out_len, const char *s)
{
    *out = NULL;
    *out_len = 0;
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ')) n--;
    size_t pad = 0;
    while (n && s[n - 1] == '=' && pad < 2) {
        n--;
        pad++;
    }
    if (n % 4 == 1 || (pad && (n + pad) % 4 != 0))
        return ib_error_set(IB_EINVALID, "invalid base64 (bad length)");
    unsigned char *buf = ib_xmalloc(n / 4 * 3 + 3), *o = buf;
    unsigned acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64_value((unsigned char)s[i]);
        if (v < 0) {
            free(buf);
            return ib_error_set(IB_EINVALID, "invalid base64 (bad character at offset %zu)", i);
        }
        acc = (acc << 6 | (unsigned)v) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            *o++ = (unsigned char)(acc >> bits & 0xff);
        }
    }
    *o = 0;
    *out = buf;
    *out_len = (size_t)(o - buf);
    return 0;
}

/* ---- challenges (RFC 7235 section 2.1, 4.1) --------------------------------- */

static int is_tchar(int c)
{
    /* RFC 7230 3.2.6 tchar */
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int is_ws(int c) { return c == ' ' || c == '\t'; }

static void lower(char *s)
{
    for (; *s; s++) *s = (char)tolower((unsigned char)*s);
}

static void set_once(char **dst, char *v)
{
    if (*dst) free(v);
    else *dst = v;
}

void ib_challenge_clear(ib_challenge *c)
{
    if (!c) return;
    free(c->scheme);
    free(c->realm);
    free(c->service);
    free(c->scope);
    free(c->error);
    memset(c, 0, sizeof *c);
}

int ib_auth_parse_challenge(ib_challenge *out, const char *header)
{
    memset(out, 0, sizeof *out);
    if (!header) return ib_error_set(IB_EINVALID, "WWW-Authenticate: missing");
    /* keep the first Bearer and the first Basic challenge; others are ignored */
    ib_challenge bearer = {0}, basic = {0}, *cur = NULL, ignored = {0};
    int have_bearer = 0, have_basic = 0, nchal = 0;
    const char *p = header;
    int r = 0;
    for (;;) {
        while (is_ws(*p) || *p == ',') p++;
        if (!*p) break;
        const char *t = p;
        while (is_tchar((unsigned char)*p)) p++;
        if (p == t) {
            r = ib_error_set(IB_EINVALID, "WWW-Authenticate: unexpected character at offset %d", (int)(t - header));
            goto fail;
        }
        size_t tlen = (size_t)(p - t);
        const char *q = p;
        while (is_ws(*q)) q++;
        if (*q == '=' && cur) {
            /* auth-param = token BWS "=" BWS ( token / quoted-string ) */
            const char *v = q + 1;
            while (is_ws(*v)) v++;
            char *val;
            if (*v == '"') {
                /* quoted-string with quoted-pair (RFC 7230 3.2.6) */
                size_t cap = strlen(v), n = 0;
                val = ib_xmalloc(cap + 1);
                v++;
                for (;;) {
                    if (!*v) {
                        free(val);
                        r = ib_error_set(IB_EINVALID, "WWW-Authenticate: unterminated quoted string");
                        goto fail;
                    }
                    if (*v == '"') {
                        v++;
                        break;
                    }
                    if (*v == '\\') {
                        v++;
                        if (!*v) continue; /* reported as unterminated above */
                    }
                    val[n++] = *v++;
                }
                val[n] = 0;
            } else {
                const char *vs = v;
                while (is_tchar((unsigned char)*v) || *v == '/' || *v == ':') v++;
                /* ':' and '/' are not tchars, but unquoted realms like
                 * realm=https://x/token are seen in the wild; accept them */
                val = ib_xstrndup(vs, (size_t)(v - vs));
            }
            p = v;
            while (is_ws(*p)) p++;
            if (*p && *p != ',') {
                free(val);
                r = ib_error_set(IB_EINVALID, "WWW-Authenticate: expected ',' at offset %d", (int)(p - header));
                goto fail;
            }
            char *name = ib_xstrndup(t, tlen);
            lower(name);
            if (strcmp(name, "realm") == 0) set_once(&cur->realm, val);
            else if (strcmp(name, "service") == 0) set_once(&cur->service, val);
            else if (strcmp(name, "scope") == 0) set_once(&cur->scope, val);
            else if (strcmp(name, "error") == 0) set_once(&cur->error, val);
            else free(val);
            free(name);
            continue;
        }
        if (*q == '=') {
            r = ib_error_set(IB_EINVALID, "WWW-Authenticate: parameter before any scheme");
            goto fail;
        }
        /* a new challenge: auth-scheme */
        nchal++;
        char *scheme = ib_xstrndup(t, tlen);
        lower(scheme);
        ib_challenge_clear(&ignored);
        if (strcmp(scheme, "bearer") == 0 && !have_bearer) {
            have_bearer = 1;
            bearer.scheme = scheme;
            cur = &bearer;
        } else if (strcmp(scheme, "basic") == 0 && !have_basic) {
            have_basic = 1;
            basic.scheme = scheme;
            cur = &basic;
        } else {
            ignored.scheme = scheme;
            cur = &ignored;
        }
        /* token68 (RFC 7235 2.1) may follow the scheme instead of params,
         * e.g. "Negotiate abc==": skip it. Something followed by "=value" is
         * the first auth-param and is parsed by the loop. */
        p = q;
        const char *s68 = p;
        while (is_tchar((unsigned char)*p) || *p == '/' || *p == '+') p++;
        if (p > s68) {
            const char *e = p;
            while (*e == '=') e++;
            while (is_ws(*e)) e++;
            p = (*e == ',' || !*e) ? e : s68;
        }
    }
    ib_challenge_clear(&ignored);
    if (nchal == 0) {
        r = ib_error_set(IB_EINVALID, "WWW-Authenticate: empty challenge");
        goto fail;
    }
    if (have_bearer) {
        if (!bearer.realm || !*bearer.realm) {
            r = ib_error_set(IB_EINVALID, "WWW-Authenticate: Bearer challenge without realm");
            goto fail;
        }
        *out = bearer;
        ib_challenge_clear(&basic);
        return 0;
    }
    if (have_basic) {
        *out = basic;
        return 0;
    }
    r = ib_error_set(IB_EINVALID, "WWW-Authenticate: no Basic or Bearer challenge");
fail:
    ib_challenge_clear(&ignored);
    ib_challenge_clear(&bearer);
    ib_challenge_clear(&basic);
    return r;
}

/* ---- credential files ----------------------------------------------------- */

void ib_cred_clear(ib_cred *c)
{
    if (!c) return;
    if (c->password) {
        /* best effort: do not leave secrets in freed heap */
        volatile char *v = c->password;
        while (*v) *v++ = 0;
    }
    free(c->username);
    free(c->password);
    free(c->source);
    memset(c, 0, sizeof *c);
}

static char *home_dir(void)
{
    const char *h = getenv("HOME");
    if (h && *h) return ib_xstrdup(h);
    struct passwd pw, *res = NULL;
    char buf[4096];
    if (getpwuid_r(getuid(), &pw, buf, sizeof buf, &res) == 0 && res && res->pw_dir)
        return ib_xstrdup(res->pw_dir);
    return NULL;
}

static char *docker_config_path(void)
{
    const char *d = getenv("DOCKER_CONFIG");
    if (d && *d) return ib_fs_join(d, "config.json");
    char *home = home_dir();
    if (!home) return NULL;
    char *p = ib_fs_join(home, ".docker/config.json");
    free(home);
    return p;
}

static int is_docker_hub(const char *host)
{
    return strcmp(host, "docker.io") == 0 || strcmp(host, "index.docker.io") == 0 ||
           strcmp(host, "registry-1.docker.io") == 0;
}

/* "https://host:5000/v1/" -> "host:5000", as containers/image normalizes
 * auth file keys (and docker does for legacy "https://index.docker.io/v1/").
 * The path is dropped only after a scheme: without one, "host/ns" is a
 * namespaced key (containers-auth.json(5)), matched only by
 * lookup_repo_keys, never as the bare host (containers/image
 * normalizeAuthFileKey does the same). */
static char *normalize_key(const char *key)
{
    const char *s = strstr(key, "://");
    size_t n = s ? strcspn(s + 3, "/") : strlen(key);
    s = s ? s + 3 : key;
    char *r = ib_xstrndup(s, n);
    lower(r);
    return r;
}

static int key_matches(const char *key, const char *host)
{
    char *n = normalize_key(key);
    int m = strcasecmp(n, host) == 0 || (is_docker_hub(host) && is_docker_hub(n));
    free(n);
    return m;
}

/* Splits "user:password" (the password may contain ':'). */
static int split_userpass(ib_cred *out, const unsigned char *buf, size_t len, const char *src)
{
    const unsigned char *colon = memchr(buf, ':', len);
    if (!colon) return ib_error_set(IB_EINVALID, "%s: auth entry is not base64(user:password)", src);
    if (memchr(buf, 0, len))
        return ib_error_set(IB_EINVALID, "%s: auth entry contains a NUL byte", src);
    out->username = ib_xstrndup((const char *)buf, (size_t)(colon - buf));
    out->password = ib_xstrndup((const char *)colon + 1, len - (size_t)(colon - buf) - 1);
    return 0;
}

/* Parses one auths[] entry. IB_ENOTFOUND for an empty entry ({} is what
 * docker writes when the secret lives in credsStore). */
static int parse_auth_entry(ib_cred *out, json_t *e, const char *path)
{
    if (!json_is_object(e)) return ib_error_set(IB_EINVALID, "%s: auths entry is not an object", path);
    const char *auth = json_string_value(json_object_get(e, "auth"));
    const char *user = json_string_value(json_object_get(e, "username"));
    const char *pass = json_string_value(json_object_get(e, "password"));
    const char *idtok = json_string_value(json_object_get(e, "identitytoken"));
    if (idtok && *idtok) {
        /* docker: an identity token replaces the password (OAuth2 refresh token) */
        out->username = ib_xstrdup("<token>");
        out->password = ib_xstrdup(idtok);
    } else if (auth && *auth) {
        unsigned char *dec = NULL;
        size_t dlen = 0;
        if (ib_base64_decode(&dec, &dlen, auth) < 0) {
            return ib_error_set(IB_EINVALID, "%s: auths entry has invalid base64 in \"auth\"", path);
        }
        int r = split_userpass(out, dec, dlen, path);
        memset(dec, 0, dlen);
        free(dec);
        if (r < 0) return r;
    } else if (user && *user) {
        out->username = ib_xstrdup(user);
        out->password = ib_xstrdup(pass ? pass : "");
    } else {
        return IB_ENOTFOUND;
    }
    out->source = ib_xstrdup(path);
    return 0;
}

static int valid_helper_name(const char *n)
{
    if (!n || !*n || strlen(n) > 64) return 0;
    for (const char *p = n; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_' && *p != '.') return 0;
    return n[0] != '.';
}

/* Writes all of buf to fd with SIGPIPE blocked in this thread, so a helper
 * that exits without reading stdin yields EPIPE rather than killing us
 * (signal dispositions are process-wide; the mask is per thread). */
static void write_nosigpipe(int fd, const char *buf, size_t len)
{
    sigset_t block, old, pending;
    sigemptyset(&block);
    sigaddset(&block, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    int had_pending = 0;
    sigpending(&pending);
    had_pending = sigismember(&pending, SIGPIPE);
    int got_epipe = 0;
    while (len) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EPIPE) got_epipe = 1;
            break;
        }
        buf += n;
        len -= (size_t)n;
    }
    if (got_epipe && !had_pending) {
        /* consume the SIGPIPE we caused before unblocking */
        struct timespec zero = {0, 0};
        sigtimedwait(&block, NULL, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* Runs `docker-credential-<name> get` with server on stdin.
 * IB_ENOTFOUND when the helper says it has nothing for this server. */
static int run_helper(ib_cred *out, const char *name, const char *server)
{
    if (!valid_helper_name(name))
        return ib_error_set(IB_EINVALID, "credential helper name \"%.64s\" is not valid", name);
    char *prog = ib_xasprintf("docker-credential-%s", name);
    int in[2], outp[2];
    if (pipe2(in, O_CLOEXEC) < 0) {
        int r = ib_error_errno(IB_ERR, "%s: pipe", prog);
        free(prog);
        return r;
    }
    if (pipe2(outp, O_CLOEXEC) < 0) {
        int r = ib_error_errno(IB_ERR, "%s: pipe", prog);
        close(in[0]);
        close(in[1]);
        free(prog);
        return r;
    }
    char *argv[] = {prog, "get", NULL};
    pid_t pid = fork();
    if (pid < 0) {
        int r = ib_error_errno(IB_ERR, "%s: fork", prog);
        close(in[0]);
        close(in[1]);
        close(outp[0]);
        close(outp[1]);
        free(prog);
        return r;
    }
    if (pid == 0) {
        /* child: only async-signal-safe calls until exec (we may be threaded) */
        if (dup2(in[0], 0) < 0 || dup2(outp[1], 1) < 0) _exit(126);
        signal(SIGPIPE, SIG_DFL);
        execvp(prog, argv);
        _exit(127);
    }
    close(in[0]);
    close(outp[1]);
    write_nosigpipe(in[1], server, strlen(server));
    close(in[1]);

    char *buf = ib_xmalloc(4096);
    size_t len = 0, cap = 4096;
    int timed_out = 0, too_big = 0;
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long elapsed = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
        if (elapsed >= IB_AUTH_HELPER_TIMEOUT_MS) {
            timed_out = 1;
            break;
        }
        struct pollfd pfd = {outp[0], POLLIN, 0};
        int pr = poll(&pfd, 1, (int)(IB_AUTH_HELPER_TIMEOUT_MS - elapsed));
        if (pr < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (pr == 0) {
            timed_out = 1;
            break;
        }
        if (len + 1 >= cap) {
            if (cap >= IB_AUTH_HELPER_MAX_OUT) {
                too_big = 1;
                break;
            }
            cap *= 2;
            buf = ib_xrealloc(buf, cap);
        }
        ssize_t n = read(outp[0], buf + len, cap - len - 1);
        if (n < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (n == 0) break;
        len += (size_t)n;
    }
    buf[len] = 0;
    close(outp[0]);
    if (timed_out || too_big) kill(pid, SIGKILL);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }

    int r;
    if (timed_out) {
        r = ib_error_set(IB_ERR, "%s get: no answer within %d s", prog, IB_AUTH_HELPER_TIMEOUT_MS / 1000);
    } else if (too_big) {
        r = ib_error_set(IB_ERR, "%s get: output too large", prog);
    } else if (WIFEXITED(status) && WEXITSTATUS(status) == 127) {
        r = ib_error_set(IB_ERR, "%s: not found on PATH (named by credHelpers/credsStore)", prog);
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        /* docker-credential-helpers' ErrCredentialsNotFound message */
        if (strstr(buf, "credentials not found") || strstr(buf, "not found in"))
            r = IB_ENOTFOUND;
        else
            r = ib_error_set(IB_ERR, "%s get: failed (exit status %d)", prog,
                             WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    } else {
        json_error_t je;
        json_t *j = json_loadb(buf, len, 0, &je);
        const char *u = j ? json_string_value(json_object_get(j, "Username")) : NULL;
        const char *s = j ? json_string_value(json_object_get(j, "Secret")) : NULL;
        if (!j || !json_is_object(j)) {
            r = ib_error_set(IB_ERR, "%s get: output is not a JSON object", prog);
        } else if (!s || !*s) {
            r = IB_ENOTFOUND;
        } else {
            /* docker-credential-helpers: Username "<token>" marks an identity token */
            out->username = ib_xstrdup(u ? u : "");
            out->password = ib_xstrdup(s);
            out->source = ib_xstrdup(prog);
            r = 0;
        }
        json_decref(j);
    }
    memset(buf, 0, cap);
    free(buf);
    free(prog);
    return r;
}

/* The server URL a helper is asked about: docker stores Docker Hub under its
 * legacy key, everything else under the bare host. */
static const char *helper_server(const char *host)
{
    return is_docker_hub(host) ? DOCKER_HUB_LEGACY_KEY : host;
}

/* containers-auth.json(5) namespaced keys: for repo "ns/app" on host, tries
 * auths["host/ns/app"], then auths["host/ns"], most specific first, as exact
 * keys, so only whole path components match ("host/pro" never covers
 * "host/proj/app"). The bare host is left to the caller. An empty entry ({})
 * holds nothing and does not stop the walk. IB_ENOTFOUND if no key has credentials. */
static int lookup_repo_keys(ib_cred *out, json_t *auths, const char *host, const char *repo, const char *path)
{
    size_t hlen = strlen(host);
    char *key = ib_xasprintf("%s/%s", host, repo);
    int r = IB_ENOTFOUND;
    for (;;) {
        json_t *e = json_object_get(auths, key);
        if (e && (r = parse_auth_entry(out, e, path)) != IB_ENOTFOUND) break;
        char *slash = strrchr(key + hlen + 1, '/');
        if (!slash) break;
        *slash = 0;
    }
    free(key);
    return r;
}

/* Looks host (and repo, when not NULL) up in one file. IB_ENOTFOUND when the
 * file or entry is absent. */
static int lookup_file(ib_cred *out, const char *path, const char *host, const char *repo)
{
    char *data = NULL;
    size_t len = 0;
    int r = ib_fs_read_all(&data, &len, path, IB_AUTH_MAX_FILE);
    if (r == IB_ENOTFOUND) {
        ib_error_clear();
        return IB_ENOTFOUND;
    }
    if (r < 0) return r;
    json_error_t je;
    json_t *root = json_loadb(data, len, 0, &je);
    memset(data, 0, len);
    free(data);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        if (len == 0) return IB_ENOTFOUND;
        return ib_error_set(IB_EINVALID, "%s:%d: invalid JSON: %s", path, je.line, je.text);
    }

    /* 1. credHelpers[host] */
    json_t *helpers = json_object_get(root, "credHelpers");
    if (json_is_object(helpers)) {
        const char *key;
        json_t *v;
        const char *name = NULL;
        json_object_foreach(helpers, key, v) {
            if (strcmp(key, host) == 0) {
                name = json_string_value(v);
                break;
            }
        }
        if (!name) {
            json_object_foreach(helpers, key, v) {
                if (key_matches(key, host)) {
                    name = json_string_value(v);
                    break;
                }
            }
        }
        if (name && *name) {
            r = run_helper(out, name, helper_server(host));
            if (r != IB_ENOTFOUND) goto done;
        }
    }

    /* 2. auths["host/ns/repo"], auths["host/ns"] (most specific first), then
     * auths[host]: exact key first, then scheme/path variants */
    json_t *auths = json_object_get(root, "auths");
    if (json_is_object(auths) && repo) {
        r = lookup_repo_keys(out, auths, host, repo, path);
        if (r != IB_ENOTFOUND) goto done;
    }
    if (json_is_object(auths)) {
        json_t *e = json_object_get(auths, host);
        if (!e && is_docker_hub(host)) e = json_object_get(auths, DOCKER_HUB_LEGACY_KEY);
        r = e ? parse_auth_entry(out, e, path) : IB_ENOTFOUND;
        if (r == IB_ENOTFOUND) {
            const char *key;
            json_t *v;
            json_object_foreach(auths, key, v) {
                if (v == e || !key_matches(key, host)) continue;
                r = parse_auth_entry(out, v, path);
                if (r != IB_ENOTFOUND) break;
            }
        }
        if (r != IB_ENOTFOUND) goto done;
    }

    /* 3. credsStore: the default helper for every registry */
    const char *store = json_string_value(json_object_get(root, "credsStore"));
    r = (store && *store) ? run_helper(out, store, helper_server(host)) : IB_ENOTFOUND;
done:
    json_decref(root);
    return r;
}

/* The files credentials are looked up in, in order (paths[] gets at most 4,
 * to be freed): $REGISTRY_AUTH_FILE, podman's $XDG_RUNTIME_DIR/containers/
 * auth.json, docker's config.json, ~/.config/containers/auth.json. */
static int lookup_chain(char **paths)
{
    int n = 0;
    const char *e = getenv("REGISTRY_AUTH_FILE");
    if (e && *e) paths[n++] = ib_xstrdup(e);
    e = getenv("XDG_RUNTIME_DIR");
    if (e && *e) paths[n++] = ib_fs_join(e, "containers/auth.json");
    char *dc = docker_config_path();
    if (dc) paths[n++] = dc;
    char *home = home_dir();
    if (home) {
        paths[n++] = ib_fs_join(home, ".config/containers/auth.json");
        free(home);
    }
    return n;
}

int ib_auth_lookup(ib_cred *out, const char *host, const char *authfile)
{
    return ib_auth_lookup_repo(out, host, NULL, authfile);
}

int ib_auth_lookup_repo(ib_cred *out, const char *host, const char *repo, const char *authfile)
{
    memset(out, 0, sizeof *out);
    if (!host || !*host) return ib_error_set(IB_EINVALID, "credential lookup: empty host");
    char *lhost = ib_xstrdup(host);
    lower(lhost);
    /* "/ns/app/" -> "ns/app"; an empty repository means host-only */
    char *lrepo = NULL;
    if (repo) {
        while (*repo == '/') repo++;
        size_t n = strlen(repo);
        while (n && repo[n - 1] == '/') n--;
        if (n) lrepo = ib_xstrndup(repo, n);
    }
    int r;
    if (authfile) {
        r = lookup_file(out, authfile, lhost, lrepo);
    } else {
        /* file by file in chain order: the first file with a match wins, the
         * most specific key within it (containers/image getCredentialsFromAuthFiles) */
        char *paths[5] = {0};
        int n = lookup_chain(paths);
        r = IB_ENOTFOUND;
        for (int i = 0; i < n && r == IB_ENOTFOUND; i++) r = lookup_file(out, paths[i], lhost, lrepo);
        for (int i = 0; i < n; i++) free(paths[i]);
    }
    if (r == IB_ENOTFOUND) {
        ib_cred_clear(out);
        r = ib_error_set(IB_ENOTFOUND, "no credentials for %s%s%s", host, lrepo ? "/" : "", lrepo ? lrepo : "");
    } else if (r < 0) {
        ib_cred_clear(out);
    }
    free(lrepo);
    free(lhost);
    return r;
}

/* ---- login / logout --------------------------------------------------------- */

static char *store_path(const char *authfile)
{
    if (authfile) return ib_xstrdup(authfile);
    const char *e = getenv("REGISTRY_AUTH_FILE");
    if (e && *e) return ib_xstrdup(e);
    return docker_config_path();
}

static int load_config(json_t **out, const char *path)
{
    char *data = NULL;
    size_t len = 0;
    *out = NULL;
    int r = ib_fs_read_all(&data, &len, path, IB_AUTH_MAX_FILE);
    if (r == IB_ENOTFOUND) {
        ib_error_clear();
        *out = json_object();
        return 0;
    }
    if (r < 0) return r;
    size_t i = 0;
    while (i < len && isspace((unsigned char)data[i])) i++;
    if (i == len) {
        free(data);
        *out = json_object();
        return 0;
    }
    json_error_t je;
    json_t *root = json_loadb(data, len, 0, &je);
    memset(data, 0, len);
    free(data);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        return ib_error_set(IB_EINVALID, "%s:%d: invalid JSON: %s", path, je.line, je.text);
    }
    *out = root;
    return 0;
}

static int save_config(json_t *root, const char *path)
{
    char *slash = strrchr(path, '/');
    if (slash && slash != path) {
        char *dir = ib_xstrndup(path, (size_t)(slash - path));
        int r = ib_fs_mkdir_p(dir, 0700);
        free(dir);
        if (r < 0) return r;
    }
    /* docker writes config.json with tab indentation */
    char *text = json_dumps(root, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    if (!text) return ib_error_set(IB_ERR, "%s: cannot serialise JSON", path);
    size_t n = strlen(text);
    char *withnl = ib_xasprintf("%s\n", text);
    memset(text, 0, n);
    free(text);
    /* 0600: the file holds secrets (docker and podman create it the same way) */
    int r = ib_fs_write_atomic(path, withnl, n + 1, 0600);
    memset(withnl, 0, n + 1);
    free(withnl);
    return r;
}

/* Deletes every auths key equivalent to host; returns how many. */
static int remove_keys(json_t *auths, const char *host)
{
    int removed = 0;
    const char *key;
    json_t *v;
    void *tmp;
    json_object_foreach_safe(auths, tmp, key, v) {
        if (strcasecmp(key, host) == 0 || key_matches(key, host)) {
            json_object_del(auths, key);
            removed++;
        }
    }
    return removed;
}

/* For every file of the lookup chain other than primary that has an entry
 * for host: replace it with entry (login), or delete it when entry is NULL
 * (logout). Returns how many files changed, or <0. */
static int each_other_file(const char *primary, const char *host, json_t *entry)
{
    char *paths[5] = {0};
    int n = lookup_chain(paths), changed = 0, r = 0;
    for (int i = 0; i < n && r >= 0; i++) {
        if (!strcmp(paths[i], primary) || !ib_fs_exists(paths[i])) continue;
        json_t *root = NULL;
        if (load_config(&root, paths[i]) < 0) {
            ib_error_clear(); /* a file we cannot read is not ours to fix */
            continue;
        }
        json_t *auths = json_object_get(root, "auths");
        if (json_is_object(auths) && remove_keys(auths, host) > 0) {
            if (entry) json_object_set(auths, host, entry);
            r = save_config(root, paths[i]);
            if (r == 0) changed++;
        }
        json_decref(root);
    }
    for (int i = 0; i < n; i++) free(paths[i]);
    return r < 0 ? r : changed;
}

int ib_auth_store(char **written_to, const char *host, const char *user, const char *password, const char *authfile)
{
    if (written_to) *written_to = NULL;
    if (!host || !*host || !user || !password)
        return ib_error_set(IB_EINVALID, "login: host, user and password are required");
    if (strchr(user, ':'))
        return ib_error_set(IB_EINVALID, "login: user name must not contain ':' (the Basic scheme splits on it)");
    char *path = store_path(authfile);
    if (!path) return ib_error_set(IB_ERR, "login: cannot find a home directory for the credential file");
    json_t *root = NULL;
    int r = load_config(&root, path);
    if (r < 0) {
        free(path);
        return r;
    }
    json_t *auths = json_object_get(root, "auths");
    if (!json_is_object(auths)) {
        auths = json_object();
        json_object_set_new(root, "auths", auths);
    }
    char *lhost = ib_xstrdup(host);
    lower(lhost);
    remove_keys(auths, lhost);
    char *up = ib_xasprintf("%s:%s", user, password);
    char *b64 = ib_base64_encode(up, strlen(up));
    memset(up, 0, strlen(up));
    free(up);
    json_t *entry = json_object();
    json_object_set_new(entry, "auth", json_string(b64));
    memset(b64, 0, strlen(b64));
    free(b64);
    /* docker itself keys Docker Hub by its legacy v1 URL; others by host */
    json_object_set(auths, is_docker_hub(lhost) ? DOCKER_HUB_LEGACY_KEY : lhost, entry);
    r = save_config(root, path);
    json_decref(root);
    /* Files read before or after this one (podman's auth.json) that hold
     * this host get the new entry too: otherwise the lookup would keep
     * finding the old credentials there. */
    if (r == 0 && !authfile) {
        int c = each_other_file(path, lhost, entry);
        if (c < 0) r = c;
    }
    json_decref(entry);
    free(lhost);
    if (r == 0 && written_to) *written_to = path;
    else free(path);
    return r;
}

int ib_auth_remove(char **written_to, const char *host, const char *authfile)
{
    if (written_to) *written_to = NULL;
    if (!host || !*host) return ib_error_set(IB_EINVALID, "logout: empty host");
    char *path = store_path(authfile);
    if (!path) return ib_error_set(IB_ERR, "logout: cannot find a home directory for the credential file");
    json_t *root = NULL;
    int r = load_config(&root, path);
    if (r < 0) {
        free(path);
        return r;
    }
    char *lhost = ib_xstrdup(host);
    lower(lhost);
    json_t *auths = json_object_get(root, "auths");
    int removed = json_is_object(auths) ? remove_keys(auths, lhost) : 0;
    if (removed) r = save_config(root, path);
    /* podman's auth.json too: logging out must stop every lookup */
    int others = r == 0 && !authfile ? each_other_file(path, lhost, NULL) : 0;
    if (others < 0) r = others;
    free(lhost);
    if (r == 0 && !removed && !others) r = ib_error_set(IB_ENOTFOUND, "not logged in to %s (%s)", host, path);
    json_decref(root);
    if (r == 0 && written_to) *written_to = path;
    else free(path);
    return r;
}

char *ib_auth_basic_header(const ib_cred *c)
{
    const char *u = c && c->username ? c->username : "";
    const char *p = c && c->password ? c->password : "";
    char *up = ib_xasprintf("%s:%s", u, p);
    size_t n = strlen(up);
    char *b64 = ib_base64_encode(up, n);
    memset(up, 0, n);
    free(up);
    char *h = ib_xasprintf("Authorization: Basic %s", b64);
    memset(b64, 0, strlen(b64));
    free(b64);
    return h;
}

/* ---- tokens (Distribution docs/spec/auth/token.md, oauth.md) --------------- */

static char *url_host(const char *url)
{
    const char *s = strstr(url, "://");
    s = s ? s + 3 : url;
    size_t n = strcspn(s, "/?#");
    const char *at = memchr(s, '@', n);
    if (at) {
        n -= (size_t)(at + 1 - s);
        s = at + 1;
    }
    return ib_xstrndup(s, n);
}

static void append(char **s, const char *fmt_a, const char *b)
{
    char *n = ib_xasprintf("%s%s%s", *s, fmt_a, b);
    free(*s);
    *s = n;
}

/* RFC 3339 "2024-01-02T03:04:05Z" / "+01:00" / fractional seconds -> epoch, or -1. */
static int64_t parse_rfc3339(const char *s)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    int Y, M, D, h, m, sec, consumed = 0;
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &Y, &M, &D, &h, &m, &sec, &consumed) != 6) return -1;
    const char *p = s + consumed;
    if (*p == '.')
        for (p++; isdigit((unsigned char)*p); p++) {
        }
    long off = 0;
    if (*p == '+' || *p == '-') {
        int oh = 0, om = 0;
        if (sscanf(p + 1, "%2d:%2d", &oh, &om) != 2) return -1;
        off = (oh * 3600L + om * 60L) * (*p == '-' ? -1 : 1);
    } else if (*p != 'Z' && *p != 'z') {
        return -1;
    }
    tm.tm_year = Y - 1900;
    tm.tm_mon = M - 1;
    tm.tm_mday = D;
    tm.tm_hour = h;
    tm.tm_min = m;
    tm.tm_sec = sec;
    time_t t = timegm(&tm);
    if (t == (time_t)-1) return -1;
    return (int64_t)t - off;
}

int ib_auth_fetch_token(char **token, int64_t *expires_at, ib_http *h, const ib_challenge *c,
                        const char *const *scopes, size_t nscopes, const ib_cred *cred)
{
    *token = NULL;
    if (expires_at) *expires_at = 0;
    if (!c || !c->realm || !*c->realm) return ib_error_set(IB_EINVALID, "token request: challenge has no realm");
    char *rhost = url_host(c->realm);
    int identity = cred && cred->username && strcmp(cred->username, "<token>") == 0;

    /* query (GET) or form (POST) parameters: service, then one scope each */
    char *params = ib_xstrdup("");
    const char *sep = "";
    if (c->service && *c->service) {
        char *e = ib_http_escape(c->service);
        append(&params, "service=", e);
        free(e);
        sep = "&";
    }
    size_t nsc = nscopes;
    const char *const *sc = scopes;
    const char *one[1];
    if (nsc == 0 && c->scope && *c->scope) {
        one[0] = c->scope;
        sc = one;
        nsc = 1;
    }
    /* the GET of token.md repeats scope; the POST form of oauth.md has one
     * scope parameter, space-separated ("should only be specified once") */
    char *form_params = ib_xstrdup(params), *joined = ib_xstrdup("");
    for (size_t i = 0; i < nsc; i++) {
        if (!sc[i] || !*sc[i]) continue;
        char *e = ib_http_escape(sc[i]);
        char *k = ib_xasprintf("%sscope=", sep);
        append(&params, k, e);
        free(k);
        free(e);
        sep = "&";
        char *jn = ib_xasprintf("%s%s%s", joined, *joined ? " " : "", sc[i]);
        free(joined);
        joined = jn;
    }
    if (*joined) {
        char *e = ib_http_escape(joined);
        append(&form_params, *form_params ? "&scope=" : "scope=", e);
        free(e);
    }
    free(joined);

    ib_http_req req;
    memset(&req, 0, sizeof req);
    char *url = NULL, *auth_hdr = NULL, *form = NULL;
    const char *hdrs[4] = {0};
    if (identity) {
        /* An identity token is an OAuth2 refresh token: Distribution's
         * oauth.md flow is a POST form with grant_type=refresh_token (docker
         * does the same); a Basic "<token>:..." GET would be rejected. */
        char *rt = ib_http_escape(cred->password ? cred->password : "");
        form = ib_xasprintf("grant_type=refresh_token&client_id=imgbuild&refresh_token=%s%s%s", rt,
                            *form_params ? "&" : "", form_params);
        memset(rt, 0, strlen(rt));
        free(rt);
        url = ib_xstrdup(c->realm);
        hdrs[0] = "Content-Type: application/x-www-form-urlencoded";
        req.method = "POST";
        req.body = form;
        req.body_len = strlen(form);
    } else {
        url = *params ? ib_xasprintf("%s%s%s", c->realm, strchr(c->realm, '?') ? "&" : "?", params)
                      : ib_xstrdup(c->realm);
        req.method = "GET";
        if (cred) {
            auth_hdr = ib_auth_basic_header(cred);
            hdrs[0] = auth_hdr;
        }
    }
    free(form_params);
    req.url = url;
    req.headers = hdrs;
    req.max_body = 1u << 20;
    req.follow_redirects = 1;

    ib_http_resp resp;
    int r = ib_http_do(&resp, h, &req);
    if (r == 0 && identity && resp.status == 404) {
        /* oauth.md: a token server without the POST flow answers 404; fall
         * back to GET as docker does (the identity token is no Basic secret) */
        ib_http_resp_clear(&resp);
        free(url);
        url = *params ? ib_xasprintf("%s%s%s", c->realm, strchr(c->realm, '?') ? "&" : "?", params)
                      : ib_xstrdup(c->realm);
        memset(&req, 0, sizeof req);
        const char *none[1] = {NULL};
        req.method = "GET";
        req.url = url;
        req.headers = none;
        req.max_body = 1u << 20;
        req.follow_redirects = 1;
        r = ib_http_do(&resp, h, &req);
    }
    free(params);
    if (auth_hdr) {
        memset(auth_hdr, 0, strlen(auth_hdr));
        free(auth_hdr);
    }
    if (form) {
        memset(form, 0, strlen(form));
        free(form);
    }
    free(url);
    if (r < 0) {
        r = ib_error_wrap(IB_ERR, "registry token server at %s", rhost);
        free(rhost);
        return r;
    }
    if (resp.status == 401 || resp.status == 403) {
        if (cred)
            r = ib_error_set(IB_EAUTH_REFUSED, "registry token server at %s: credentials rejected for %s", rhost,
                             identity ? "the stored identity token" : cred->username);
        else
            r = ib_error_set(IB_EAUTH, "registry token server at %s: anonymous access denied (HTTP %ld); log in first",
                             rhost, resp.status);
        goto out;
    }
    if (resp.status != 200) {
        r = ib_error_set(IB_ERR, "registry token server at %s: HTTP %ld", rhost, resp.status);
        goto out;
    }
    json_error_t je;
    json_t *j = json_loadb(resp.body, resp.body_len, 0, &je);
    if (!j || !json_is_object(j)) {
        json_decref(j);
        r = ib_error_set(IB_ERR, "registry token server at %s: answer is not a JSON object", rhost);
        goto out;
    }
    /* token.md: `token`; OAuth2-compatible servers send `access_token` */
    const char *t = json_string_value(json_object_get(j, "token"));
    if (!t || !*t) t = json_string_value(json_object_get(j, "access_token"));
    if (!t || !*t) {
        json_decref(j);
        r = ib_error_set(IB_ERR, "registry token server at %s: answer has no token", rhost);
        goto out;
    }
    *token = ib_xstrdup(t);
    json_int_t exp = 60;
    json_t *ei = json_object_get(j, "expires_in");
    if (json_is_integer(ei) && json_integer_value(ei) > 0) exp = json_integer_value(ei);
    /* token.md: "If expires_in is unspecified or less than 60 seconds, assume 60" */
    if (exp < 60) exp = 60;
    int64_t now = (int64_t)time(NULL), base = now;
    const char *ia = json_string_value(json_object_get(j, "issued_at"));
    if (ia) {
        /* the server's clock decides expiry; an issued_at in our past makes
         * the token expire earlier on our clock, one in our future is skew we
         * must not trust (it would extend the token's life) */
        int64_t t0 = parse_rfc3339(ia);
        if (t0 > 0 && t0 < now) base = t0;
    }
    int64_t margin = exp / 10;
    if (margin < 5) margin = 5;
    if (margin > 30) margin = 30;
    if (expires_at) *expires_at = base + (int64_t)exp - margin;
    json_decref(j);
    r = 0;
out:
    ib_http_resp_clear(&resp);
    free(rhost);
    return r;
}
