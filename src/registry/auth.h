/* Registry authentication: WWW-Authenticate challenges, credentials from the
 * files docker, podman and skopeo use (and docker-credential-* helpers), the
 * Distribution token protocol (GET <realm>?service=&scope= with Basic
 * credentials, `token` or `access_token`, expires_in), and `login`/`logout`
 * writing the docker config file. Secrets never appear in error messages. */
#ifndef IB_REGISTRY_AUTH_H
#define IB_REGISTRY_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "registry/http.h"

typedef struct {
    char *scheme;  /* "basic" | "bearer" (lowercased) */
    char *realm;
    char *service; /* bearer only, may be NULL */
    char *scope;   /* bearer only, may be NULL */
    char *error;   /* e.g. "insufficient_scope", may be NULL */
} ib_challenge;

/* Parses one WWW-Authenticate value (RFC 7235: scheme, then comma-separated
 * auth-params with quoted-string values incl. backslash escapes; when several
 * challenges are present, Bearer is preferred over Basic). IB_EINVALID if unparseable. */
int ib_auth_parse_challenge(ib_challenge *out, const char *header);
void ib_challenge_clear(ib_challenge *c);

typedef struct {
    char *username;
    char *password;        /* or identity token (password = token, username "<token>") */
    char *source;          /* where it came from, for messages: a file path or "docker-credential-pass" */
} ib_cred;

/* Looks up credentials for host ("harbor.local:8443"; docker.io also tries
 * "https://index.docker.io/v1/"). Order: authfile (if given; the only source
 * then), $REGISTRY_AUTH_FILE, ${XDG_RUNTIME_DIR}/containers/auth.json,
 * $DOCKER_CONFIG/config.json or ~/.docker/config.json, ~/.config/containers/auth.json.
 * Within a file: credHelpers[host], then auths[host] (also matched with a
 * scheme prefix and any path after it, "https://host/v1/"), then credsStore.
 * Helpers are run as `docker-credential-<name> get` with the host on stdin.
 * IB_ENOTFOUND when no source has the host (anonymous access then). */
int ib_auth_lookup(ib_cred *out, const char *host, const char *authfile);
/* The same for one repository ("proj/app" on host): takes the repository
 * because containers-auth.json(5) lets auths keys name a namespace or a
 * repository, so one registry can have several accounts (Harbor robot
 * accounts per project). In each file, before the host's own keys, it tries
 * auths["host/proj/app"], then auths["host/proj"]: exact keys, whole path
 * components, most specific first. Files are still searched in the order
 * above and the first file with a match wins. Applied to docker's
 * config.json too, as containers/image does (docker writes host keys only,
 * so nothing changes there). credHelpers and credsStore stay host-only
 * (docker semantics). No "*.example.com" keys: that wildcard belongs to
 * registries.conf, not auth.json. repo NULL or "": ib_auth_lookup. */
int ib_auth_lookup_repo(ib_cred *out, const char *host, const char *repo, const char *authfile);
void ib_cred_clear(ib_cred *c);

/* login: writes auths[host].auth = base64(user:password) into authfile or
 * $REGISTRY_AUTH_FILE or $DOCKER_CONFIG/config.json or ~/.docker/config.json
 * (created 0600, written atomically, other keys preserved). logout removes it
 * (IB_ENOTFOUND if it was not there). *written_to (may be NULL) gets the path. */
int ib_auth_store(char **written_to, const char *host, const char *user, const char *password, const char *authfile);
int ib_auth_remove(char **written_to, const char *host, const char *authfile);

/* "Authorization: Basic <base64>" header line. Caller frees. */
char *ib_auth_basic_header(const ib_cred *c);

/* Fetches a bearer token for all scopes at once (Harbor answers a token with
 * too little scope with a bare Basic challenge, so ask for everything up
 * front): GET realm?service=S&scope=A&scope=B with Basic credentials when
 * cred is non-NULL. Accepts `token` or `access_token`; *expires_at = now +
 * expires_in (default 60 s) minus a safety margin. Errors: IB_EAUTH_REFUSED
 * (401/403 from the token server to credentials: "credentials rejected for
 * <user>"), IB_EAUTH (401/403 to an anonymous request), others IB_ERR. */
#define IB_EAUTH (-20)
/* The credentials were sent and refused (Basic 401, or the token server's
 * 401/403): wrong user or password, unlike IB_EAUTH's missing credentials or
 * permissions. login rewords it; a caller testing for auth failures tests both. */
#define IB_EAUTH_REFUSED (-21)
int ib_auth_fetch_token(char **token, int64_t *expires_at, ib_http *h, const ib_challenge *c,
                        const char *const *scopes, size_t nscopes, const ib_cred *cred);

/* base64 (standard alphabet, padded). Caller frees. */
char *ib_base64_encode(const void *data, size_t len);
int ib_base64_decode(unsigned char **out, size_t *out_len, const char *s);

#endif
