#include "build/cache.h"
#include "cli/cli.h"
#include "common/error.h"
#include "common/progress.h"
#include "oci/store.h"

#include <ctype.h>
#include <dirent.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static const char help[] =
    "usage: imgbuild cache ls|du|prune [flags]\n"
    "\n"
    "  ls                       cache entries: key, size, last use, the step that made it\n"
    "  du                       disk use of the store (blobs) and of the cache entries\n"
    "  prune                    remove cache entries, then every blob nothing references\n"
    "      --all                remove every cache entry\n"
    "      --older-than DUR     entries not used for DUR (30m, 24h, 7d)\n"
    "      --keep-storage SIZE  keep the most recently used entries up to SIZE (500MB, 10GB)\n"
    "                           (no flag: only blobs that nothing references are removed)\n"
    "      --cache-dir DIR      (default $IMGBUILD_CACHE or $XDG_CACHE_HOME/imgbuild)\n";

static int parse_duration(int64_t *out, const char *s)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || v < 0) return -1;
    double mul = 1;
    if (!strcmp(end, "s") || !*end) mul = 1;
    else if (!strcmp(end, "m")) mul = 60;
    else if (!strcmp(end, "h")) mul = 3600;
    else if (!strcmp(end, "d")) mul = 86400;
    else if (!strcmp(end, "w")) mul = 7 * 86400;
    else return -1;
    *out = (int64_t)(v * mul);
    return 0;
}

static int parse_size(uint64_t *out, const char *s)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || v < 0) return -1;
    char u[8] = "";
    size_t k = 0;
    for (; *end && k < sizeof u - 1; end++) u[k++] = (char)toupper((unsigned char)*end);
    if (*end) return -1;
    double mul;
    if (!strcmp(u, "") || !strcmp(u, "B")) mul = 1;
    else if (!strcmp(u, "K") || !strcmp(u, "KB")) mul = 1e3;
    else if (!strcmp(u, "M") || !strcmp(u, "MB")) mul = 1e6;
    else if (!strcmp(u, "G") || !strcmp(u, "GB")) mul = 1e9;
    else if (!strcmp(u, "KIB")) mul = 1024.0;
    else if (!strcmp(u, "MIB")) mul = 1048576.0;
    else if (!strcmp(u, "GIB")) mul = 1073741824.0;
    else return -1;
    *out = (uint64_t)(v * mul);
    return 0;
}

static uint64_t dir_bytes(const char *dir, size_t *count)
{
    uint64_t total = 0;
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        char *p = ib_xasprintf("%s/%s", dir, de->d_name);
        struct stat st;
        if (stat(p, &st) == 0 && S_ISREG(st.st_mode)) {
            total += (uint64_t)st.st_size;
            if (count) (*count)++;
        }
        free(p);
    }
    if (d) closedir(d);
    return total;
}

/* Most recently used first, then by key: a stable listing. */
static int by_last_use(const void *a, const void *b)
{
    const ib_cache_entry *x = a, *y = b;
    if (x->last_used != y->last_used) return x->last_used > y->last_used ? -1 : 1;
    return strcmp(x->key, y->key);
}

int ib_cmd_cache(int argc, char **argv)
{
    static const struct option opts[] = {{"all", no_argument, 0, 'a'},
                                         {"older-than", required_argument, 0, 'O'},
                                         {"keep-storage", required_argument, 0, 'K'},
                                         {"cache-dir", required_argument, 0, 'C'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    ib_prune_opts po = {0};
    const char *cache_dir = NULL;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'a': po.all = 1; break;
        case 'O':
            if (parse_duration(&po.older_than_s, optarg) < 0 || !po.older_than_s)
                return ib_cli_usage_error("--older-than %s: expected a duration such as 30m, 24h, 7d", optarg);
            break;
        case 'K':
            if (parse_size(&po.keep_bytes, optarg) < 0 || !po.keep_bytes)
                return ib_cli_usage_error("--keep-storage %s: expected a size such as 500MB or 10GB", optarg);
            break;
        case 'C': cache_dir = optarg; break;
        case 'h': fputs(help, stdout); return 0;
        case ':': return ib_cli_usage_error("%s: missing value", argv[optind - 1]);
        default: return ib_cli_usage_error("unknown flag %s (see 'imgbuild cache --help')", argv[optind - 1]);
        }
    }
    if (argc - optind != 1) return ib_cli_usage_error("cache: expected ls, du or prune");
    const char *verb = argv[optind];
    if (strcmp(verb, "ls") && strcmp(verb, "du") && strcmp(verb, "prune"))
        return ib_cli_usage_error("cache: unknown command '%s' (ls, du, prune)", verb);
    char *dir = cache_dir ? ib_xstrdup(cache_dir) : ib_store_default_dir();
    ib_store *s = NULL;
    ib_cache *cache = NULL;
    int r = ib_store_open(&s, dir);
    if (r == 0) r = ib_cache_open(&cache, s);
    int rc = 0;
    if (r < 0) {
        rc = ib_cli_fail(r);
    } else if (!strcmp(verb, "ls")) {
        ib_cache_entry *e;
        size_t n;
        if ((r = ib_cache_list(&e, &n, cache)) < 0) {
            rc = ib_cli_fail(r);
        } else {
            if (n) qsort(e, n, sizeof *e, by_last_use);
            printf("%-19s  %10s  %-19s  %s\n", "KEY", "SIZE", "LAST USED", "STEP");
            for (size_t i = 0; i < n; i++) {
                char hs[32], ts[32];
                ib_human_size(hs, e[i].size);
                time_t t = (time_t)e[i].last_used;
                struct tm tm;
                localtime_r(&t, &tm);
                strftime(ts, sizeof ts, "%Y-%m-%d %H:%M:%S", &tm);
                printf("%.19s  %10s  %-19s  %.80s\n", e[i].key, hs, ts, e[i].created_by);
            }
            ib_cache_entries_free(e, n);
        }
    } else if (!strcmp(verb, "du")) {
        size_t nb = 0, ne = 0;
        char *b = ib_xasprintf("%s/blobs/sha256", dir), *en = ib_xasprintf("%s/cache/entries", dir);
        uint64_t bb = dir_bytes(b, &nb);
        dir_bytes(en, &ne);
        ib_cache_entry *e;
        size_t n = 0;
        uint64_t layers = 0;
        if (ib_cache_list(&e, &n, cache) == 0) {
            for (size_t i = 0; i < n; i++) layers += e[i].size;
            ib_cache_entries_free(e, n);
        }
        size_t nm = 0;
        uint64_t mb = ib_cache_mounts_usage(cache, &nm);
        char h1[32], h2[32], h3[32];
        ib_human_size(h1, bb);
        ib_human_size(h2, layers);
        ib_human_size(h3, mb);
        printf("Store   %s in %zu blobs (%s)\nCache   %zu entries, %s of layers\nMounts  %zu cache mount%s, %s "
               "(RUN --mount=type=cache)\n",
               h1, nb, b, ne, h2, nm, nm == 1 ? "" : "s", h3);
        free(b);
        free(en);
    } else {
        ib_prune_result pr;
        if ((r = ib_cache_prune(&pr, cache, &po)) < 0) {
            rc = ib_cli_fail(r);
        } else {
            char hs[32];
            ib_human_size(hs, pr.bytes_freed);
            printf("Removed %zu cache entr%s, %zu blob%s and %zu cache mount%s, freed %s\n", pr.entries_removed,
                   pr.entries_removed == 1 ? "y" : "ies", pr.blobs_removed, pr.blobs_removed == 1 ? "" : "s",
                   pr.mounts_removed, pr.mounts_removed == 1 ? "" : "s", hs);
        }
    }
    ib_cache_free(cache);
    ib_store_free(s);
    free(dir);
    return rc;
}
