/* registry/auth: challenge parsing, base64, credential lookup across the
 * docker/podman files and credential helpers, login/logout. Everything runs
 * in a temp HOME with the environment set here, never the user's files. */
#include "ut.h"
#include "common/error.h"
#include "common/fs.h"
#include "registry/auth.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void write_file(const char *path, const char *text, int mode)
{
    char *dir = ib_xstrdup(path);
    *strrchr(dir, '/') = 0;
    ib_fs_mkdir_p(dir, 0700);
    free(dir);
    CHECK(ib_fs_write_atomic(path, text, strlen(text), mode) == 0);
}

static void test_challenges(void)
{
    ib_challenge c;
    /* Distribution's token auth challenge (docs/spec/auth/token.md) */
    CHECK(ib_auth_parse_challenge(&c, "Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\","
                                      "scope=\"repository:samalba/my-app:pull,push\"") == 0);
    CHECK_STR(c.scheme, "bearer");
    CHECK_STR(c.realm, "https://auth.docker.io/token");
    CHECK_STR(c.service, "registry.docker.io");
    CHECK_STR(c.scope, "repository:samalba/my-app:pull,push");
    CHECK(c.error == NULL);
    ib_challenge_clear(&c);

    /* Harbor's bare Basic challenge */
    CHECK(ib_auth_parse_challenge(&c, "Basic realm=\"harbor\"") == 0);
    CHECK_STR(c.scheme, "basic");
    CHECK_STR(c.realm, "harbor");
    CHECK(c.service == NULL && c.scope == NULL);
    ib_challenge_clear(&c);

    /* insufficient scope, case-insensitive names, spaces around '=' and ',' */
    CHECK(ib_auth_parse_challenge(&c, "BEARER Realm = \"https://h/token\" , Service=\"h\",  "
                                      "scope=\"repository:a/b:push\",ERROR=\"insufficient_scope\"") == 0);
    CHECK_STR(c.scheme, "bearer");
    CHECK_STR(c.realm, "https://h/token");
    CHECK_STR(c.service, "h");
    CHECK_STR(c.error, "insufficient_scope");
    ib_challenge_clear(&c);

    /* quoted-pair escapes, and an unquoted token value */
    CHECK(ib_auth_parse_challenge(&c, "Bearer realm=\"https://h/t\\\"x\\\\y\",service=reg.example") == 0);
    CHECK_STR(c.realm, "https://h/t\"x\\y");
    CHECK_STR(c.service, "reg.example");
    ib_challenge_clear(&c);

    /* several challenges in one header: Bearer preferred over Basic, unknown skipped */
    CHECK(ib_auth_parse_challenge(&c, "Basic realm=\"b\", Negotiate abc==, Bearer realm=\"https://t/\",service=\"s\"") == 0);
    CHECK_STR(c.scheme, "bearer");
    CHECK_STR(c.realm, "https://t/");
    CHECK_STR(c.service, "s");
    ib_challenge_clear(&c);
    CHECK(ib_auth_parse_challenge(&c, "Negotiate, Basic realm=\"x, y\"") == 0);
    CHECK_STR(c.scheme, "basic");
    CHECK_STR(c.realm, "x, y");
    ib_challenge_clear(&c);
    /* a comma inside a quoted scope does not split anything */
    CHECK(ib_auth_parse_challenge(&c, "Bearer scope=\"a,b\",realm=\"r\"") == 0);
    CHECK_STR(c.scope, "a,b");
    CHECK_STR(c.realm, "r");
    ib_challenge_clear(&c);

    /* garbage */
    CHECK_INT(ib_auth_parse_challenge(&c, ""), IB_EINVALID);
    CHECK_INT(ib_auth_parse_challenge(&c, "   ,  "), IB_EINVALID);
    CHECK_INT(ib_auth_parse_challenge(&c, "Bearer realm=\"unterminated"), IB_EINVALID);
    CHECK_INT(ib_auth_parse_challenge(&c, "Bearer realm=\"a\" service=\"b\""), IB_EINVALID);
    CHECK_INT(ib_auth_parse_challenge(&c, "=\"x\""), IB_EINVALID);
    CHECK_INT(ib_auth_parse_challenge(&c, "Bearer service=\"s\""), IB_EINVALID); /* no realm */
    CHECK_INT(ib_auth_parse_challenge(&c, "Negotiate abc"), IB_EINVALID);
    CHECK_INT(ib_auth_parse_challenge(&c, "Bearer realm=\"a\",\x01"), IB_EINVALID);
    CHECK_INT(ib_auth_parse_challenge(&c, "\"Bearer\""), IB_EINVALID);
    CHECK(c.scheme == NULL && c.realm == NULL);
}

static void test_base64(void)
{
    /* RFC 4648 section 10 test vectors */
    static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const enc[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (size_t i = 0; i < 7; i++) {
        char *e = ib_base64_encode(plain[i], strlen(plain[i]));
        CHECK_STR(e, enc[i]);
        free(e);
        unsigned char *d = NULL;
        size_t n = 99;
        CHECK(ib_base64_decode(&d, &n, enc[i]) == 0);
        CHECK_INT(n, strlen(plain[i]));
        CHECK(d && memcmp(d, plain[i], n) == 0);
        free(d);
    }
    unsigned char *d = NULL;
    size_t n = 0;
    CHECK(ib_base64_decode(&d, &n, "Zm8") == 0); /* unpadded is tolerated */
    CHECK(n == 2 && memcmp(d, "fo", 2) == 0);
    free(d);
    CHECK(ib_base64_decode(&d, &n, "Zm9v!") < 0);
    CHECK(d == NULL);
    CHECK(ib_base64_decode(&d, &n, "Z") < 0);
    CHECK(ib_base64_decode(&d, &n, "Zg=") < 0);
    CHECK(ib_base64_decode(&d, &n, "Zm=v") < 0);
    /* binary round trip */
    unsigned char bin[256];
    for (int i = 0; i < 256; i++) bin[i] = (unsigned char)(255 - i);
    char *e = ib_base64_encode(bin, sizeof bin);
    CHECK(ib_base64_decode(&d, &n, e) == 0);
    CHECK(n == sizeof bin && memcmp(d, bin, n) == 0);
    free(d);
    free(e);
    /* Harbor robot account names survive (the '$' and '+' are plain bytes) */
    e = ib_base64_encode("robot$wepp+ci:tok", 17);
    CHECK_STR(e, "cm9ib3Qkd2VwcCtjaTp0b2s=");
    CHECK(ib_base64_decode(&d, &n, e) == 0);
    CHECK(n == 17 && memcmp(d, "robot$wepp+ci:tok", 17) == 0);
    free(d);
    free(e);
}

static void expect_cred_repo(const char *host, const char *repo, const char *authfile, const char *user,
                             const char *pass, const char *source_part, int line)
{
    ib_cred c;
    int r = repo ? ib_auth_lookup_repo(&c, host, repo, authfile) : ib_auth_lookup(&c, host, authfile);
    if (r != 0) {
        fprintf(stderr, "line %d: lookup %s %s: %s\n", line, host, repo ? repo : "", ib_error_last());
        ut_fail++;
        return;
    }
    CHECK_STR(c.username, user);
    CHECK_STR(c.password, pass);
    if (!c.source || !strstr(c.source, source_part)) {
        fprintf(stderr, "line %d: source %s, want *%s*\n", line, c.source ? c.source : "(null)", source_part);
        ut_fail++;
    }
    ib_cred_clear(&c);
}

static void expect_cred(const char *host, const char *authfile, const char *user, const char *pass,
                        const char *source_part, int line)
{
    expect_cred_repo(host, NULL, authfile, user, pass, source_part, line);
}

static void test_lookup(const char *tmp)
{
    char *home = ib_fs_join(tmp, "home");
    char *run = ib_fs_join(tmp, "run");
    char *bin = ib_fs_join(tmp, "bin");
    ib_fs_mkdir_p(home, 0700);
    ib_fs_mkdir_p(run, 0700);
    ib_fs_mkdir_p(bin, 0700);
    setenv("HOME", home, 1);
    setenv("XDG_RUNTIME_DIR", run, 1);
    unsetenv("DOCKER_CONFIG");
    unsetenv("REGISTRY_AUTH_FILE");
    const char *old_path = getenv("PATH");
    char *path = ib_xasprintf("%s:%s", bin, old_path ? old_path : "/usr/bin:/bin");
    setenv("PATH", path, 1);
    free(path);

    /* a fake docker-credential helper: server URL on stdin, JSON on stdout */
    char *helper = ib_fs_join(bin, "docker-credential-fake");
    write_file(helper,
               "#!/bin/sh\n"
               "[ \"$1\" = get ] || exit 2\n"
               "read -r server\n"
               "case \"$server\" in\n"
               "helped.example) printf '{\"ServerURL\":\"%s\",\"Username\":\"robot$wepp+ci\",\"Secret\":\"hs:1\"}' "
               "\"$server\" ;;\n"
               "tok.example) printf '{\"ServerURL\":\"%s\",\"Username\":\"<token>\",\"Secret\":\"idtok\"}' \"$server\" ;;\n"
               "https://index.docker.io/v1/) printf '{\"Username\":\"hub\",\"Secret\":\"hubsecret\"}' ;;\n"
               "*) echo 'credentials not found in native keychain'; exit 1 ;;\n"
               "esac\n",
               0755);
    free(helper);

    char *auth_robot = ib_base64_encode("robot$wepp+ci:pa:ss", 19);
    char *auth_fb = ib_base64_encode("fallback:pw", 11);
    char *docker_cfg = ib_fs_join(home, ".docker/config.json");
    char *text = ib_xasprintf(
        "{\n"
        " \"auths\": {\n"
        "  \"harbor.local:8443\": {\"auth\": \"%s\"},\n"
        "  \"https://legacy.example/v1/\": {\"username\": \"u2\", \"password\": \"p2\"},\n"
        "  \"http://scheme.example:5000\": {\"auth\": \"%s\"},\n"
        "  \"idtok.example\": {\"auth\": \"dTo=\", \"identitytoken\": \"refresh-me\"},\n"
        "  \"miss.example\": {\"auth\": \"%s\"},\n"
        "  \"empty.example\": {}\n"
        " },\n"
        " \"credHelpers\": {\"helped.example\": \"fake\", \"tok.example\": \"fake\", \"miss.example\": \"fake\",\n"
        "                 \"broken.example\": \"nosuchhelper\", \"evil.example\": \"../../bin/sh\"},\n"
        " \"HttpHeaders\": {\"User-Agent\": \"x\"}\n"
        "}\n",
        auth_robot, auth_fb, auth_fb);
    write_file(docker_cfg, text, 0600);
    free(text);

    expect_cred("harbor.local:8443", NULL, "robot$wepp+ci", "pa:ss", ".docker/config.json", __LINE__);
    expect_cred("HARBOR.local:8443", NULL, "robot$wepp+ci", "pa:ss", ".docker/config.json", __LINE__);
    expect_cred("legacy.example", NULL, "u2", "p2", "config.json", __LINE__);
    expect_cred("scheme.example:5000", NULL, "fallback", "pw", "config.json", __LINE__);
    expect_cred("idtok.example", NULL, "<token>", "refresh-me", "config.json", __LINE__);
    expect_cred("helped.example", NULL, "robot$wepp+ci", "hs:1", "docker-credential-fake", __LINE__);
    expect_cred("tok.example", NULL, "<token>", "idtok", "docker-credential-fake", __LINE__);
    /* the helper has nothing for it: fall back to auths */
    expect_cred("miss.example", NULL, "fallback", "pw", "config.json", __LINE__);
    ib_cred c;
    CHECK_INT(ib_auth_lookup(&c, "unknown.example", NULL), IB_ENOTFOUND);
    CHECK_INT(ib_auth_lookup(&c, "empty.example", NULL), IB_ENOTFOUND);
    CHECK_INT(ib_auth_lookup(&c, "scheme.example", NULL), IB_ENOTFOUND); /* port matters */
    CHECK_INT(ib_auth_lookup(&c, "broken.example", NULL), IB_ERR);
    CHECK(strstr(ib_error_last(), "docker-credential-nosuchhelper") != NULL);
    CHECK_INT(ib_auth_lookup(&c, "evil.example", NULL), IB_EINVALID);
    CHECK(c.username == NULL && c.password == NULL);

    /* credsStore covers hosts without an entry; Docker Hub is asked by its legacy URL */
    text = ib_xasprintf("{\"auths\": {\"https://index.docker.io/v1/\": {}}, \"credsStore\": \"fake\"}");
    char *dc_dir = ib_fs_join(tmp, "dockercfg");
    char *dc_file = ib_fs_join(dc_dir, "config.json");
    write_file(dc_file, text, 0600);
    free(text);
    setenv("DOCKER_CONFIG", dc_dir, 1);
    expect_cred("docker.io", NULL, "hub", "hubsecret", "docker-credential-fake", __LINE__);
    CHECK_INT(ib_auth_lookup(&c, "harbor.local:8443", NULL), IB_ENOTFOUND); /* ~/.docker is not read now */
    unsetenv("DOCKER_CONFIG");

    /* ~/.config/containers/auth.json is the last resort */
    char *podman_home = ib_fs_join(home, ".config/containers/auth.json");
    write_file(podman_home, "{\"auths\": {\"late.example\": {\"auth\": \"bGF0ZTpwdw==\"}, "
                            "\"harbor.local:8443\": {\"auth\": \"bm86bm8=\"}}}", 0600);
    expect_cred("late.example", NULL, "late", "pw", ".config/containers/auth.json", __LINE__);
    expect_cred("harbor.local:8443", NULL, "robot$wepp+ci", "pa:ss", ".docker/config.json", __LINE__);

    /* ${XDG_RUNTIME_DIR}/containers/auth.json comes before the docker config */
    char *xdg = ib_fs_join(run, "containers/auth.json");
    write_file(xdg, "{\"auths\": {\"harbor.local:8443\": {\"auth\": \"eGRnOnB3\"}}}", 0600);
    expect_cred("harbor.local:8443", NULL, "xdg", "pw", "run/containers/auth.json", __LINE__);
    expect_cred("legacy.example", NULL, "u2", "p2", ".docker/config.json", __LINE__);

    /* $REGISTRY_AUTH_FILE comes first */
    char *raf = ib_fs_join(tmp, "raf.json");
    write_file(raf, "{\"auths\": {\"https://harbor.local:8443/v2/\": {\"username\": \"env\", \"password\": \"e\"}}}",
               0600);
    setenv("REGISTRY_AUTH_FILE", raf, 1);
    expect_cred("harbor.local:8443", NULL, "env", "e", "raf.json", __LINE__);

    /* --authfile is the only source when given */
    char *af = ib_fs_join(tmp, "explicit.json");
    write_file(af, "{\"auths\": {\"only.example\": {\"auth\": \"b25seTpvbmx5\"}}}", 0600);
    expect_cred("only.example", af, "only", "only", "explicit.json", __LINE__);
    CHECK_INT(ib_auth_lookup(&c, "harbor.local:8443", af), IB_ENOTFOUND);
    char *missing = ib_fs_join(tmp, "missing.json");
    CHECK_INT(ib_auth_lookup(&c, "only.example", missing), IB_ENOTFOUND);
    free(missing);

    /* corrupt JSON is an error naming the file */
    char *bad = ib_fs_join(tmp, "bad.json");
    write_file(bad, "{\"auths\": ", 0600);
    CHECK_INT(ib_auth_lookup(&c, "x", bad), IB_EINVALID);
    CHECK(strstr(ib_error_last(), "bad.json") != NULL);
    write_file(bad, "{\"auths\": {\"x\": {\"auth\": \"bm9jb2xvbg==\"}}}", 0600); /* "nocolon" */
    CHECK_INT(ib_auth_lookup(&c, "x", bad), IB_EINVALID);
    free(bad);

    unsetenv("REGISTRY_AUTH_FILE");
    free(raf);
    free(af);
    free(xdg);
    free(podman_home);
    free(dc_dir);
    free(dc_file);
    free(docker_cfg);
    free(auth_robot);
    free(auth_fb);
    free(home);
    free(run);
    free(bin);
}

static void test_store(const char *tmp)
{
    char *af = ib_fs_join(tmp, "store/auth.json");
    char *dir = ib_fs_join(tmp, "store");
    ib_fs_mkdir_p(dir, 0700);
    write_file(af, "{\"auths\": {\"keep.example\": {\"auth\": \"azpr\"}, \"https://robot.example/v2/\": {\"auth\": \"eDp5\"}},"
                   " \"HttpHeaders\": {\"X-Meta\": \"1\"}}", 0644);

    char *written = NULL;
    CHECK(ib_auth_store(&written, "robot.example", "robot$wepp+ci", "tok:en", af) == 0);
    CHECK_STR(written, af);
    free(written);
    struct stat st;
    CHECK(stat(af, &st) == 0 && (st.st_mode & 0777) == 0600);
    expect_cred("robot.example", af, "robot$wepp+ci", "tok:en", "auth.json", __LINE__);
    expect_cred("keep.example", af, "k", "k", "auth.json", __LINE__);
    char *text = NULL;
    size_t len = 0;
    CHECK(ib_fs_read_all(&text, &len, af, 1 << 20) == 0);
    CHECK(text && strstr(text, "X-Meta") != NULL);
    CHECK(text && strstr(text, "https://robot.example/v2/") == NULL); /* the stale variant is replaced */
    CHECK(text && strstr(text, "tok:en") == NULL);                    /* stored base64-encoded */
    free(text);

    /* basic header for the stored robot account round-trips through base64 */
    ib_cred c;
    CHECK(ib_auth_lookup(&c, "robot.example", af) == 0);
    char *hdr = ib_auth_basic_header(&c);
    CHECK(strncmp(hdr, "Authorization: Basic ", 21) == 0);
    unsigned char *dec = NULL;
    size_t n = 0;
    CHECK(ib_base64_decode(&dec, &n, hdr + 21) == 0);
    CHECK(n == strlen("robot$wepp+ci:tok:en") && memcmp(dec, "robot$wepp+ci:tok:en", n) == 0);
    free(dec);
    free(hdr);
    ib_cred_clear(&c);

    CHECK(ib_auth_remove(&written, "robot.example", af) == 0);
    CHECK_STR(written, af);
    free(written);
    CHECK_INT(ib_auth_lookup(&c, "robot.example", af), IB_ENOTFOUND);
    expect_cred("keep.example", af, "k", "k", "auth.json", __LINE__);
    CHECK_INT(ib_auth_remove(NULL, "robot.example", af), IB_ENOTFOUND);
    CHECK(stat(af, &st) == 0 && (st.st_mode & 0777) == 0600);

    /* default location: $DOCKER_CONFIG/config.json, created (with its dir) 0600 */
    char *dcfg = ib_fs_join(tmp, "newdocker/sub");
    setenv("DOCKER_CONFIG", dcfg, 1);
    unsetenv("REGISTRY_AUTH_FILE");
    unsetenv("XDG_RUNTIME_DIR"); /* its auth.json (from test_lookup) would win the lookup */
    CHECK(ib_auth_store(&written, "Harbor.Local:8443", "admin", "Harbor12345", NULL) == 0);
    char *want = ib_fs_join(dcfg, "config.json");
    CHECK_STR(written, want);
    CHECK(stat(want, &st) == 0 && (st.st_mode & 0777) == 0600);
    expect_cred("harbor.local:8443", NULL, "admin", "Harbor12345", "newdocker/sub/config.json", __LINE__);
    free(written);
    /* Docker Hub is stored under docker's legacy key and found as docker.io */
    CHECK(ib_auth_store(NULL, "docker.io", "hubu", "hubp", NULL) == 0);
    CHECK(ib_fs_read_all(&text, &len, want, 1 << 20) == 0);
    CHECK(text && strstr(text, "https://index.docker.io/v1/") != NULL);
    free(text);
    expect_cred("docker.io", NULL, "hubu", "hubp", "config.json", __LINE__);
    CHECK(ib_auth_remove(NULL, "docker.io", NULL) == 0);
    CHECK_INT(ib_auth_lookup(&c, "docker.io", want), IB_ENOTFOUND);
    CHECK_INT(ib_auth_store(NULL, "h", "a:b", "p", NULL), IB_EINVALID);
    unsetenv("DOCKER_CONFIG");
    free(want);
    free(dcfg);
    free(dir);
    free(af);
}

/* containers-auth.json(5) namespaced keys: the most specific "host/ns/repo"
 * key of a file wins, whole path components only; across files the chain
 * order is unchanged (first file with any match). */
static void test_repo_keys(const char *tmp)
{
    char *home = ib_fs_join(tmp, "nshome");
    char *run = ib_fs_join(tmp, "nsrun");
    ib_fs_mkdir_p(home, 0700);
    ib_fs_mkdir_p(run, 0700);
    setenv("HOME", home, 1);
    setenv("XDG_RUNTIME_DIR", run, 1);
    unsetenv("DOCKER_CONFIG");
    unsetenv("REGISTRY_AUTH_FILE");
    ib_cred c;

    /* one file (--authfile): three accounts on one registry */
    char *af = ib_fs_join(tmp, "ns/auth.json");
    char *app_auth = ib_base64_encode("u-app:p-app", 11);
    char *text = ib_xasprintf(
        "{\"auths\": {\n"
        " \"harbor.local\": {\"username\": \"u-host\", \"password\": \"p-host\"},\n"
        " \"harbor.local/proj\": {\"username\": \"u-proj\", \"password\": \"p-proj\"},\n"
        " \"harbor.local/proj/app\": {\"auth\": \"%s\"},\n"
        " \"harbor.local/pro\": {\"username\": \"u-pro\", \"password\": \"p-pro\"},\n"
        " \"harbor.local/empty/app\": {},\n"
        " \"*.harbor.local\": {\"username\": \"u-wild\", \"password\": \"p-wild\"},\n"
        " \"https://legacy.local/v1/\": {\"username\": \"u-legacy\", \"password\": \"p-legacy\"},\n"
        " \"legacy.local/team\": {\"username\": \"u-team\", \"password\": \"p-team\"},\n"
        " \"https://index.docker.io/v1/\": {\"username\": \"u-hub\", \"password\": \"p-hub\"},\n"
        " \"docker.io/library\": {\"username\": \"u-lib\", \"password\": \"p-lib\"}\n"
        "}}\n",
        app_auth);
    write_file(af, text, 0600);
    free(text);
    free(app_auth);
    expect_cred_repo("harbor.local", "proj/app", af, "u-app", "p-app", "ns/auth.json", __LINE__);
    expect_cred_repo("harbor.local", "proj/other", af, "u-proj", "p-proj", "ns/auth.json", __LINE__);
    expect_cred_repo("harbor.local", "lib/x", af, "u-host", "p-host", "ns/auth.json", __LINE__);
    expect_cred_repo("harbor.local", "proj", af, "u-proj", "p-proj", "ns/auth.json", __LINE__);
    expect_cred_repo("harbor.local", "proj/app/sub", af, "u-app", "p-app", "ns/auth.json", __LINE__);
    expect_cred_repo("HARBOR.local", "proj/app", af, "u-app", "p-app", "ns/auth.json", __LINE__);
    /* component boundaries: "harbor.local/pro" covers neither proj nor projx */
    expect_cred_repo("harbor.local", "projx/app", af, "u-host", "p-host", "ns/auth.json", __LINE__);
    expect_cred_repo("harbor.local", "pro/app", af, "u-pro", "p-pro", "ns/auth.json", __LINE__);
    /* an empty entry holds nothing: the walk goes on to the host */
    expect_cred_repo("harbor.local", "empty/app", af, "u-host", "p-host", "ns/auth.json", __LINE__);
    /* host-only lookups (login, or no repository) never take a namespaced key */
    expect_cred("harbor.local", af, "u-host", "p-host", "ns/auth.json", __LINE__);
    expect_cred_repo("harbor.local", "", af, "u-host", "p-host", "ns/auth.json", __LINE__);
    /* no wildcard keys in auth.json (that is registries.conf) */
    CHECK_INT(ib_auth_lookup_repo(&c, "sub.harbor.local", "proj/app", af), IB_ENOTFOUND);
    /* a host matched through a URL key still has its namespaced keys first */
    expect_cred_repo("legacy.local", "team/app", af, "u-team", "p-team", "ns/auth.json", __LINE__);
    expect_cred_repo("legacy.local", "other/app", af, "u-legacy", "p-legacy", "ns/auth.json", __LINE__);
    /* Docker Hub: "docker.io/library" as containers/image names it, else the legacy key */
    expect_cred_repo("docker.io", "library/busybox", af, "u-lib", "p-lib", "ns/auth.json", __LINE__);
    expect_cred_repo("docker.io", "someone/tool", af, "u-hub", "p-hub", "ns/auth.json", __LINE__);

    /* a file with only "harbor.local/pro": nothing for proj/app, nor for the bare host */
    char *pro = ib_fs_join(tmp, "ns/pro.json");
    write_file(pro, "{\"auths\": {\"harbor.local/pro\": {\"username\": \"u-pro\", \"password\": \"x\"}}}", 0600);
    CHECK_INT(ib_auth_lookup_repo(&c, "harbor.local", "proj/app", pro), IB_ENOTFOUND);
    CHECK(c.username == NULL);
    CHECK_INT(ib_auth_lookup(&c, "harbor.local", pro), IB_ENOTFOUND);
    CHECK(strstr(ib_error_last(), "harbor.local") != NULL);

    /* across files: the chain order decides, then the most specific key in
     * the first file that matches at all */
    char *xdg = ib_fs_join(run, "containers/auth.json");
    char *dcfg = ib_fs_join(home, ".docker/config.json");
    char *late = ib_fs_join(home, ".config/containers/auth.json");
    write_file(xdg, "{\"auths\": {\"harbor.local\": {\"username\": \"x-host\", \"password\": \"x\"}}}", 0600);
    write_file(dcfg,
               "{\"auths\": {\"harbor.local/proj/app\": {\"username\": \"d-app\", \"password\": \"d\"},"
               " \"harbor.local/team\": {\"username\": \"d-team\", \"password\": \"d\"},"
               " \"helped.example/ns\": {\"username\": \"d-ns\", \"password\": \"d\"}},"
               " \"credHelpers\": {\"helped.example\": \"fake\", \"harbor.local/proj\": \"nosuchhelper\"}}",
               0600);
    write_file(late,
               "{\"auths\": {\"harbor.local/proj/app\": {\"username\": \"l-app\", \"password\": \"l\"},"
               " \"other.local/ns\": {\"username\": \"l-ns\", \"password\": \"l\"}}}",
               0600);
    expect_cred_repo("harbor.local", "proj/app", NULL, "x-host", "x", "nsrun/containers/auth.json", __LINE__);
    expect_cred_repo("other.local", "ns/a", NULL, "l-ns", "l", ".config/containers/auth.json", __LINE__);
    CHECK_INT(ib_auth_lookup_repo(&c, "other.local", "elsewhere/a", NULL), IB_ENOTFOUND);
    unsetenv("XDG_RUNTIME_DIR");
    /* docker's config.json honours namespaced keys too (as in containers/image) */
    expect_cred_repo("harbor.local", "proj/app", NULL, "d-app", "d", ".docker/config.json", __LINE__);
    expect_cred_repo("harbor.local", "team/y", NULL, "d-team", "d", ".docker/config.json", __LINE__);
    CHECK_INT(ib_auth_lookup_repo(&c, "harbor.local", "lib/z", NULL), IB_ENOTFOUND);
    /* credHelpers are keyed by host only: the helper (docker-credential-fake,
     * on PATH since test_lookup) wins over a namespaced auths key, and a
     * namespaced credHelpers key is never used */
    expect_cred_repo("helped.example", "ns/app", NULL, "robot$wepp+ci", "hs:1", "docker-credential-fake", __LINE__);
    /* $REGISTRY_AUTH_FILE still comes first */
    char *raf = ib_fs_join(tmp, "ns/raf.json");
    write_file(raf, "{\"auths\": {\"harbor.local/proj\": {\"username\": \"r-proj\", \"password\": \"r\"}}}", 0600);
    setenv("REGISTRY_AUTH_FILE", raf, 1);
    expect_cred_repo("harbor.local", "proj/app", NULL, "r-proj", "r", "ns/raf.json", __LINE__);
    expect_cred_repo("harbor.local", "team/y", NULL, "d-team", "d", ".docker/config.json", __LINE__);
    unsetenv("REGISTRY_AUTH_FILE");

    free(raf);
    free(late);
    free(dcfg);
    free(xdg);
    free(pro);
    free(af);
    free(run);
    free(home);
}

int main(void)
{
    alarm(30); /* a stuck helper must not hang the suite */
    test_challenges();
    test_base64();
    char *tmp = NULL;
    CHECK(ib_fs_mkdtemp(&tmp, "ib-test-auth") == 0);
    if (tmp) {
        test_lookup(tmp);
        test_store(tmp);
        test_repo_keys(tmp);
        ib_fs_rm_rf(tmp);
        free(tmp);
    }
    return ut_done();
}
