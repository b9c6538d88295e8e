#include "cli/cli.h"
#include "build/cache.h"
#include "common/error.h"
#include "common/progress.h"
#include "oci/platform.h"
#include "oci/archive.h"
#include "oci/reference.h"
#include "oci/store.h"
#include "registry/transfer.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char help[] =
    "usage: imgbuild pull REF [-o FILE] [flags]\n"
    "\n"
    "Pulls an image (an OCI index or Docker manifest list resolves to --platform)\n"
    "into the local store, verifying every blob; -o also writes an image tarball.\n"
    "\n"
    "  -o, --output FILE        write an OCI image tarball too\n"
    "      --platform OS/ARCH[/VARIANT]  platform to pick from an index (default linux/amd64)\n"
    "  -j, --jobs N             parallel downloads (default 4)\n"
    "      --cache-dir DIR      local store\n"
    "      --progress MODE      auto, plain, json or quiet\n"
    "  -q, --quiet              print only the digest\n" IB_CLI_REG_HELP;

enum { O_PLATFORM = 300, O_CACHE, O_PROGRESS };

int ib_cmd_pull(int argc, char **argv)
{
    static const struct option opts[] = {{"output", required_argument, 0, 'o'},
                                         {"platform", required_argument, 0, O_PLATFORM},
                                         {"jobs", required_argument, 0, 'j'},
                                         {"cache-dir", required_argument, 0, O_CACHE},
                                         {"progress", required_argument, 0, O_PROGRESS},
                                         {"quiet", no_argument, 0, 'q'},
                                         {"help", no_argument, 0, 'h'},
                                         IB_CLI_REG_OPTIONS,
                                         {0, 0, 0, 0}};
    ib_reg_opts ro = {0};
    const char *out = NULL, *platform = NULL, *cache_dir = NULL;
    ib_prog_mode pm = IB_PROG_AUTO;
    int quiet = 0, c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":o:j:qh", opts, NULL)) != -1) {
        if (ib_cli_reg_opt(&ro, c, optarg)) continue;
        switch (c) {
        case 'o': out = optarg; break;
        case O_PLATFORM: platform = optarg; break;
        case 'j': ro.jobs = atoi(optarg); if (ro.jobs < 1 || ro.jobs > 64) return ib_cli_usage_error("--jobs %s: expected 1..64", optarg); break;
        case O_CACHE: cache_dir = optarg; break;
        case O_PROGRESS:
            if (ib_progress_parse(&pm, optarg) < 0) return ib_cli_fail(IB_EUSAGE);
            break;
        case 'q': quiet = 1; break;
        case 'h': fputs(help, stdout); return 0;
        case ':': return ib_cli_usage_error("%s: missing value", argv[optind - 1]);
        default: return ib_cli_usage_error("unknown flag %s (see 'imgbuild pull --help')", argv[optind - 1]);
        }
    }
    if (argc - optind != 1) return ib_cli_usage_error("pull: expected one REF");
    ib_platform chk;
    if (platform && ib_platform_parse(&chk, platform, "--platform") < 0) return ib_cli_fail(IB_EUSAGE);
    ib_ref ref;
    if (ib_ref_parse(&ref, argv[optind], "latest") < 0) return ib_cli_fail(IB_EUSAGE);
    char *dir = cache_dir ? ib_xstrdup(cache_dir) : ib_store_default_dir();
    ib_store *s = NULL;
    int r = ib_store_open(&s, dir);
    free(dir);
    if (quiet && pm == IB_PROG_AUTO) pm = IB_PROG_QUIET;
    ib_progress *p = ib_progress_new(pm, stderr);
    char digest[IB_DIGEST_STRLEN + 1];
    ib_cache *lk = NULL;
    if (r == 0 && ib_cache_open(&lk, s) == 0) ib_cache_lock_shared(lk); /* prune waits for us */
    /* An explicit --platform holds for a single-platform image too: say so
     * (after its config, before its layers) rather than store another
     * platform's image silently. */
    if (r == 0) r = ib_pull_ex(digest, s, &ref, platform, platform ? IB_PULL_EXACT_PLATFORM : 0, &ro, p);
    char *name = ib_ref_string(&ref);
    if (r == 0 && out) r = ib_archive_write(out, s, digest, ref.tag, name, 0);
    int rc = 0;
    if (r < 0) rc = ib_cli_fail(r);
    else if (quiet) printf("%s\n", digest);
    else printf("Pulled  %s\nDigest  %s\n%s%s%s", name, digest, out ? "Output  " : "", out ? out : "", out ? "\n" : "");
    free(name);
    ib_progress_free(p);
    ib_cache_free(lk);
    ib_store_free(s);
    ib_ref_clear(&ref);
    return rc;
}
