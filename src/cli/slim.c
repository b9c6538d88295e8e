#include "cli/cli.h"
#include "common/error.h"
#include "common/progress.h"
#include "gitfilter/filter.h"
#include "gitfilter/rewrite.h"
#include "gitfilter/slim.h"

#include <getopt.h>
#include <malloc.h>
#include <git2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char help[] =
    "usage: imgbuild slim [REPO] --path P... --export-to DIR [flags]\n"
    "       imgbuild slim [REPO] --analyze [--path P...]\n"
    "\n"
    "One-time rewrite of all history (every branch, tag, note and remote-tracking\n"
    "ref) that strips data paths and big blobs, with git filter-repo's semantics\n"
    "(--path P --invert-paths). Safer: every removed file, as it is at the tip of\n"
    "every branch and tag, is first exported under DIR (e.g. /geodata) with a\n"
    "MANIFEST and read back; if that fails, nothing is rewritten. Then the old\n"
    "history is bundled (the backup), refs move in one transaction, HEAD is\n"
    "checked out and .git is repacked. Writes .git/imgbuild-slim/commit-map and\n"
    "ref-map (for 'imgbuild retag'). Runs only on a fresh clone unless --force.\n"
    "\n"
    "  what to strip\n"
    "      --path P                   a file or directory, relative to the repo root (repeatable)\n"
    "      --path-glob G              fnmatch pattern on whole paths, '*' crosses '/' (repeatable)\n"
    "      --paths-from-file F        one rule a line: path, glob:G, regex:RE; '#' comments\n"
    "      --strip-blobs-bigger-than SIZE   every blob over SIZE (500K, 10M, 1G)\n"
    "  where it goes\n"
    "      --export-to DIR            required for a real run: the data mount that receives the files\n"
    "      --export-all-versions      also every historical version, as DIR/.imgbuild-versions/PATH/BLOB\n"
    "  how\n"
    "      --analyze                  report the biggest directories, extensions and paths of all\n"
    "                                 history (and the size after slimming with the given filters)\n"
    "      --dry-run                  compute everything, change nothing, write nothing\n"
    "      --force                    run on a repository that is not a fresh clone\n"
    "      --prune-empty MODE         auto (default): drop commits that become empty; always; never\n"
    "      --prune-degenerate MODE    auto (default): drop merges left with nothing to merge; always; never\n"
    "      --backup FILE              where the bundle of the old history goes\n"
    "                                 (default: REPO.pre-slim.bundle beside the repository)\n"
    "      --no-backup                no bundle (the remote still has the old history)\n"
    "      --no-gc                    do not expire reflogs and repack afterwards\n"
    "      --no-replace-refs          do not add refs/replace/<old> -> <new> (filter-repo adds them)\n"
    "      --progress MODE            auto|plain|json\n"
    "  -q, --quiet                    only errors\n";

enum {
    O_PATH = 1,
    O_GLOB,
    O_FROM,
    O_BIG,
    O_EXPORT,
    O_ALLV,
    O_ANALYZE,
    O_DRY,
    O_FORCE,
    O_PEMPTY,
    O_PDEG,
    O_BACKUP,
    O_NOBACKUP,
    O_NOGC,
    O_NOREPLACE,
    O_PROGRESS
};

static void say(void *ud, const char *line) { ib_progress_msg(ud, "info", "%s", line); }

int ib_cmd_slim(int argc, char **argv)
{
    static const struct option opts[] = {{"path", required_argument, 0, O_PATH},
                                         {"path-glob", required_argument, 0, O_GLOB},
                                         {"paths-from-file", required_argument, 0, O_FROM},
                                         {"strip-blobs-bigger-than", required_argument, 0, O_BIG},
                                         {"export-to", required_argument, 0, O_EXPORT},
                                         {"export-all-versions", no_argument, 0, O_ALLV},
                                         {"analyze", no_argument, 0, O_ANALYZE},
                                         {"dry-run", no_argument, 0, O_DRY},
                                         {"force", no_argument, 0, O_FORCE},
                                         {"prune-empty", required_argument, 0, O_PEMPTY},
                                         {"prune-degenerate", required_argument, 0, O_PDEG},
                                         {"backup", required_argument, 0, O_BACKUP},
                                         {"no-backup", no_argument, 0, O_NOBACKUP},
                                         {"no-gc", no_argument, 0, O_NOGC},
                                         {"no-replace-refs", no_argument, 0, O_NOREPLACE},
                                         {"progress", required_argument, 0, O_PROGRESS},
                                         {"quiet", no_argument, 0, 'q'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    ib_gf_filter *f = ib_gf_filter_new();
    ib_gf_slim_opts o = {0};
    int analyze = 0, quiet = 0, c, rc = 0;
    ib_prog_mode mode = IB_PROG_AUTO;
    optind = 1;
    opterr = 0;
    while (rc == 0 && (c = getopt_long(argc, argv, ":qh", opts, NULL)) != -1) {
        uint64_t sz;
        switch (c) {
        case O_PATH: rc = ib_gf_filter_add_path(f, optarg) < 0 ? ib_cli_fail(IB_EUSAGE) : 0; break;
        case O_GLOB: rc = ib_gf_filter_add_glob(f, optarg) < 0 ? ib_cli_fail(IB_EUSAGE) : 0; break;
        case O_FROM: rc = ib_gf_filter_load(f, optarg) < 0 ? ib_cli_fail(IB_EUSAGE) : 0; break;
        case O_BIG:
            if (ib_gf_parse_size(&sz, optarg) < 0) rc = ib_cli_fail(IB_EUSAGE);
            else ib_gf_filter_set_max_blob(f, sz);
            break;
        case O_EXPORT: o.export_dir = optarg; break;
        case O_ALLV: o.export_all_versions = 1; break;
        case O_ANALYZE: analyze = 1; break;
        case O_DRY: o.dry_run = 1; break;
        case O_FORCE: o.force = 1; break;
        case O_PEMPTY:
            if (ib_gf_parse_prune(&o.prune_empty, "--prune-empty", optarg) < 0) rc = ib_cli_fail(IB_EUSAGE);
            break;
        case O_PDEG:
            if (ib_gf_parse_prune(&o.prune_degenerate, "--prune-degenerate", optarg) < 0) rc = ib_cli_fail(IB_EUSAGE);
            break;
        case O_BACKUP: o.backup = optarg; break;
        case O_NOBACKUP: o.no_backup = 1; break;
        case O_NOGC: o.no_gc = 1; break;
        case O_NOREPLACE: o.no_replace_refs = 1; break;
        case O_PROGRESS:
            if (ib_progress_parse(&mode, optarg) < 0) rc = ib_cli_fail(IB_EUSAGE);
            break;
        case 'q': quiet = 1; break;
        case 'h':
            fputs(help, stdout);
            ib_gf_filter_free(f);
            return 0;
        case ':': rc = ib_cli_usage_error("%s: missing value", argv[optind - 1]); break;
        default: rc = ib_cli_usage_error("unknown flag %s (see 'imgbuild slim --help')", argv[optind - 1]); break;
        }
    }
    if (rc == 0 && argc - optind > 1) rc = ib_cli_usage_error("slim: expected at most one REPO");
    o.repo = rc == 0 && argc - optind == 1 ? argv[optind] : NULL;
    o.filter = f;
    if (rc == 0 && !analyze) {
        if (!ib_gf_filter_has_rules(f))
            rc = ib_cli_usage_error("slim: nothing to strip: give --path, --path-glob, --paths-from-file or "
                                    "--strip-blobs-bigger-than (or --analyze to decide)");
        else if (!o.export_dir && !o.dry_run)
            rc = ib_cli_usage_error("slim: --export-to DIR is required: the removed files are exported there and "
                                    "verified before history is rewritten");
        else if (o.backup && o.no_backup)
            rc = ib_cli_usage_error("slim: --backup and --no-backup contradict each other");
    }
    if (rc != 0) {
        ib_gf_filter_free(f);
        return rc;
    }

    /* The rewrite allocates and frees hundreds of thousands of small tree
     * buffers; glibc would hand memory back to the kernel after each burst
     * and fault it in again, which on these VMs cost more than the work. */
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
    mallopt(M_TOP_PAD, 64 << 20);
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    git_libgit2_init();
    /* Pack windows are file-backed mmaps; on a multi-GB repository they would
     * otherwise all stay mapped (and count as resident) until exit. */
    git_libgit2_opts(GIT_OPT_SET_MWINDOW_MAPPED_LIMIT, (size_t)128 << 20);
    /* The rewrite memoises what it needs itself; libgit2's object cache
     * (256 MB by default) would mostly hold trees it never asks for again. */
    git_libgit2_opts(GIT_OPT_SET_CACHE_MAX_SIZE, (ssize_t)32 << 20);
    if (analyze) {
        char *report = NULL;
        if (ib_gf_slim_analyze(&report, o.repo, f) < 0) rc = ib_cli_fail(IB_ERR);
        else fputs(report, stdout);
        free(report);
    } else {
        ib_progress *p = ib_progress_new(quiet ? IB_PROG_QUIET : mode, stderr);
        ib_gf_slim_result res;
        if (ib_gf_slim_run(&res, &o, say, p) < 0) {
            rc = ib_cli_fail(IB_ERR);
        } else {
            char *js = ib_xasprintf(
                "{\"dry_run\":%s,\"rewritten\":%s,\"commits\":%zu,\"kept\":%zu,\"pruned\":%zu,"
                "\"refs_changed\":%zu,\"exported_files\":%zu,\"exported_written\":%zu,\"exported_bytes\":%llu,"
                "\"gitdir_bytes_before\":%llu,\"gitdir_bytes_after\":%llu,\"rewrite_seconds\":%.3f,\"seconds\":%.3f}",
                res.dry_run ? "true" : "false", res.changed ? "true" : "false", res.commits, res.kept, res.pruned,
                res.refs_changed, res.exported_files, res.exported_written, (unsigned long long)res.exported_bytes,
                (unsigned long long)res.gitdir_before, (unsigned long long)res.gitdir_after, res.rewrite_seconds,
                res.seconds);
            ib_progress_result(p, js);
            free(js);
        }
        ib_progress_free(p);
    }
    git_libgit2_shutdown();
    ib_gf_filter_free(f);
    return rc;
}
