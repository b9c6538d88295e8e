#include "cli/cli.h"
#include "build/cache.h"
#include "common/error.h"
#include "oci/archive.h"
#include "oci/store.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

static const char help[] =
    "usage: imgbuild load IMAGE.tar [--cache-dir DIR]\n"
    "\n"
    "Loads an OCI archive or a docker-archive (docker save, any version) into the\n"
    "local store, verifying every blob, so Dockerfiles can use it in FROM.\n";

int ib_cmd_load(int argc, char **argv)
{
    static const struct option opts[] = {
        {"cache-dir", required_argument, 0, 'C'}, {"input", required_argument, 0, 'i'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *cache_dir = NULL, *input = NULL;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":i:h", opts, NULL)) != -1) {
        switch (c) {
        case 'C': cache_dir = optarg; break;
        case 'i': input = optarg; break;
        case 'h': fputs(help, stdout); return 0;
        case ':': return ib_cli_usage_error("%s: missing value", argv[optind - 1]);
        default: return ib_cli_usage_error("unknown flag %s (see 'imgbuild load --help')", argv[optind - 1]);
        }
    }
    if (!input && optind < argc) input = argv[optind++];
    if (!input || optind != argc) return ib_cli_usage_error("load: expected one IMAGE.tar");
    char *dir = cache_dir ? ib_xstrdup(cache_dir) : ib_store_default_dir();
    ib_store *s;
    int r = ib_store_open(&s, dir);
    free(dir);
    if (r < 0) return ib_cli_fail(r);
    /* Held shared while blobs land, so a concurrent `cache prune` cannot remove them before they are named. */
    ib_cache *lk = NULL;
    if (ib_cache_open(&lk, s) == 0) ib_cache_lock_shared(lk);
    ib_loaded *l;
    size_t n;
    r = ib_archive_load(&l, &n, s, input);
    ib_cache_free(lk);
    ib_store_free(s);
    if (r < 0) return ib_cli_fail(r);
    for (size_t i = 0; i < n; i++) {
        if (!l[i].nnames) printf("Loaded image: %s\n", l[i].digest);
        for (size_t k = 0; k < l[i].nnames; k++) printf("Loaded image: %s (%s)\n", l[i].names[k], l[i].digest);
    }
    ib_loaded_free(l, n);
    return 0;
}
