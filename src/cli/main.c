#include "cli/cli.h"
#include "common/error.h"
#include "common/fs.h"
#include "common/userns.h"

#include <stdarg.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <stdio.h>
#include <string.h>

static const char usage[] =
    "usage: imgbuild [build] [CONTEXT] [flags]    build CONTEXT's Dockerfile from a git commit\n"
    "       imgbuild inspect IMAGE.tar|REF [--json]\n"
    "       imgbuild load IMAGE.tar\n"
    "       imgbuild push [IMAGE.tar] HOST/REPO[:TAG] [--also-tag T]\n"
    "       imgbuild pull REF [-o FILE]\n"
    "       imgbuild login HOST -u USER --password-stdin | imgbuild logout HOST\n"
    "       imgbuild cache ls|du|prune [--all] [--older-than DUR] [--keep-storage SIZE]\n"
    "       imgbuild slim [REPO] --path P... --export-to DIR [--analyze] [--dry-run]   (strip data from history)\n"
    "       imgbuild retag --commit-map FILE HOST/REPO   (sha tags after a history rewrite)\n"
    "       imgbuild --version | --help | <verb> --help\n"
    "\n"
    "Builds an OCI image tarball tagged sha-<commit> without a Docker daemon.\n"
    "Run 'imgbuild build --help' for the build flags.\n";

int ib_cli_fail(int code)
{
    fprintf(stderr, "imgbuild: error: %s\n", ib_error_last());
    return code == IB_EUSAGE ? IB_EXIT_USAGE : IB_EXIT_FAIL;
}

int ib_cli_reg_opt(ib_reg_opts *o, int c, const char *arg)
{
    switch (c) {
    case IB_OPT_PLAIN_HTTP: o->plain_http = 1; return 1;
    case IB_OPT_CA_FILE: o->ca_file = arg; return 1;
    case IB_OPT_INSECURE: o->insecure = 1; return 1;
    case IB_OPT_AUTHFILE: o->authfile = arg; return 1;
    default: return 0;
    }
}

int ib_cli_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("imgbuild: error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return IB_EXIT_USAGE;
}

/* IMGBUILD_REPORT_RSS=1: print this process's own peak RSS at exit, for the
 * benchmarks (time -v would also count helper processes such as git). */
static void report_rss(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) fprintf(stderr, "imgbuild: peak-rss-kb %ld\n", ru.ru_maxrss);
}

int main(int argc, char **argv)
{
    ib_fs_cleanup_on_signal();
    const char *rss = getenv("IMGBUILD_REPORT_RSS");
    if (rss && *rss == '1') atexit(report_rss);
    if (argc >= 2) {
        const char *v = argv[1];
        if (!strcmp(v, "--version") || !strcmp(v, "version")) {
            printf("imgbuild %s\n", IB_VERSION);
            return 0;
        }
        if (!strcmp(v, "--help") || !strcmp(v, "-h") || !strcmp(v, "help")) {
            fputs(usage, stdout);
            return 0;
        }
        if (!strcmp(v, "build")) {
            ib_userns_reexec(argv);
            return ib_cmd_build(argc - 1, argv + 1);
        }
        if (!strcmp(v, "inspect")) return ib_cmd_inspect(argc - 1, argv + 1);
        if (!strcmp(v, "load")) return ib_cmd_load(argc - 1, argv + 1);
        if (!strcmp(v, "push")) return ib_cmd_push(argc - 1, argv + 1);
        if (!strcmp(v, "pull")) return ib_cmd_pull(argc - 1, argv + 1);
        if (!strcmp(v, "login")) return ib_cmd_login(argc - 1, argv + 1);
        if (!strcmp(v, "logout")) return ib_cmd_logout(argc - 1, argv + 1);
        if (!strcmp(v, "cache")) {
            ib_userns_reexec(argv); /* prune removes what RUNs made as other ids */
            return ib_cmd_cache(argc - 1, argv + 1);
        }
        if (!strcmp(v, "retag")) return ib_cmd_retag(argc - 1, argv + 1);
        if (!strcmp(v, "slim")) return ib_cmd_slim(argc - 1, argv + 1);
    }
    /* build is the default verb: `imgbuild --tag $(git rev-parse HEAD)` */
    ib_userns_reexec(argv);
    return ib_cmd_build(argc, argv);
}
