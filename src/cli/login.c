#include "cli/cli.h"
#include "common/error.h"
#include "common/fs.h"
#include "registry/auth.h"
#include "registry/client.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char help[] =
    "usage: imgbuild login HOST[/NAMESPACE] -u USER --password-stdin [flags]\n"
    "       imgbuild logout HOST[/NAMESPACE] [--authfile PATH]\n"
    "\n"
    "HOST/NAMESPACE (e.g. harbor.local/wepp) stores the credentials for the\n"
    "repositories under it only, as podman login does: one robot account per\n"
    "Harbor project on one registry (podman, skopeo and imgbuild read such keys).\n"
    "\n"
    "login checks the credentials against the registry, then stores them where\n"
    "docker, podman and skopeo find them ($REGISTRY_AUTH_FILE, else\n"
    "$DOCKER_CONFIG/config.json or ~/.docker/config.json). Harbor robot accounts\n"
    "(robot$project+name) work as USER. The password is read from stdin only.\n" IB_CLI_REG_HELP;

/* Reads the password from stdin, without the trailing newline. */
static char *read_password(void)
{
    size_t cap = 256, n = 0;
    char *buf = ib_xmalloc(cap);
    int ch;
    while ((ch = getchar()) != EOF) {
        if (n + 1 >= cap) {
            if (cap > (1 << 16)) break;
            cap *= 2;
            buf = ib_xrealloc(buf, cap);
        }
        buf[n++] = (char)ch;
    }
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) n--;
    buf[n] = 0;
    return buf;
}

static int login_or_logout(int argc, char **argv, int logout)
{
    static const struct option opts[] = {{"username", required_argument, 0, 'u'},
                                         {"password-stdin", no_argument, 0, 'P'},
                                         {"password", required_argument, 0, 'p'},
                                         {"help", no_argument, 0, 'h'},
                                         IB_CLI_REG_OPTIONS,
                                         {0, 0, 0, 0}};
    ib_reg_opts ro = {0};
    const char *user = NULL;
    int pw_stdin = 0, c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":u:p:h", opts, NULL)) != -1) {
        if (ib_cli_reg_opt(&ro, c, optarg)) continue;
        switch (c) {
        case 'u': user = optarg; break;
        case 'P': pw_stdin = 1; break;
        case 'p':
            /* On the command line it would sit in shell history and ps output. */
            return ib_cli_usage_error("--password is not accepted: pipe it to --password-stdin");
        case 'h': fputs(help, stdout); return 0;
        case ':': return ib_cli_usage_error("%s: missing value", argv[optind - 1]);
        default: return ib_cli_usage_error("unknown flag %s (see 'imgbuild login --help')", argv[optind - 1]);
        }
    }
    if (argc - optind != 1) return ib_cli_usage_error("%s: expected one HOST", logout ? "logout" : "login");
    /* KEY is HOST or HOST/NAMESPACE; the registry is always asked at HOST */
    const char *key = argv[optind];
    size_t hl = strcspn(key, "/");
    if (!hl || (key[hl] && (!key[hl + 1] || strstr(key + hl, "//") || key[strlen(key) - 1] == '/')))
        return ib_cli_usage_error("%s: expected HOST[:PORT] or HOST/NAMESPACE, not '%s'", logout ? "logout" : "login",
                                  key);
    char host[512];
    snprintf(host, sizeof host, "%.*s", (int)hl, key);
    char *path = NULL;
    if (logout) {
        int r = ib_auth_remove(&path, key, ro.authfile);
        if (r == IB_ENOTFOUND) {
            free(path);
            return ib_cli_usage_error("logout: not logged in to %s", key);
        }
        if (r < 0) return ib_cli_fail(r);
        printf("Removed login credentials for %s from %s\n", key, path);
        free(path);
        return 0;
    }
    if (!user) return ib_cli_usage_error("login: -u USER is required");
    if (!pw_stdin) return ib_cli_usage_error("login: --password-stdin is required (the password is read from stdin)");
    char *pw = read_password();
    if (!*pw) {
        free(pw);
        return ib_cli_usage_error("login: empty password on stdin");
    }
    /* Verify before storing: a typo must not end up in the credentials file. A
     * temporary auth file carries the new credentials into the session. */
    char tmpl[] = "/tmp/imgbuild-login-XXXXXX";
    int fd = mkstemp(tmpl);
    if (fd < 0) {
        free(pw);
        ib_error_errno(IB_ERR, "temp file");
        return ib_cli_fail(IB_ERR);
    }
    close(fd);
    unlink(tmpl);
    ib_fs_tmp_register(tmpl); /* holds the new password: gone on Ctrl-C too */
    int r = ib_auth_store(NULL, host, user, pw, tmpl);
    ib_registry *reg = NULL;
    if (r == 0) {
        ib_reg_opts vo = ro;
        vo.authfile = tmpl;
        r = ib_registry_open(&reg, host, &vo);
    }
    if (r == 0) r = ib_registry_ping(reg);
    /* The registry's own wording names the temporary file and says "imgbuild
     * login": right for push and pull, beside the point here. */
    if (r == IB_EAUTH_REFUSED)
        r = ib_error_set(r, "login: %s refused the credentials for %s (wrong password or user?)", host, user);
    ib_registry_free(reg);
    unlink(tmpl);
    ib_fs_tmp_forget(tmpl);
    if (r == 0) r = ib_auth_store(&path, key, user, pw, ro.authfile);
    memset(pw, 0, strlen(pw));
    free(pw);
    if (r < 0) {
        free(path);
        return ib_cli_fail(r);
    }
    printf("Login succeeded: %s (credentials in %s)\n", key, path);
    free(path);
    return 0;
}

int ib_cmd_login(int argc, char **argv) { return login_or_logout(argc, argv, 0); }
int ib_cmd_logout(int argc, char **argv) { return login_or_logout(argc, argv, 1); }
