#include "build/executor.h"
#include "cli/cli.h"
#include "common/error.h"
#include "common/progress.h"
#include "oci/reference.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char help[] =
    "usage: imgbuild [build] [CONTEXT] [flags]\n"
    "\n"
    "Builds CONTEXT's Dockerfile from a git commit's tree into an OCI image tarball\n"
    "tagged sha-<full commit SHA>. The same commit always gives the same digest.\n"
    "\n"
    "  -f, --file PATH          Dockerfile (default CONTEXT/Dockerfile, read from the commit)\n"
    "      --tag REV            commit to build: SHA (full or abbreviated), branch or tag (default HEAD)\n"
    "      --worktree           build the files on disk, uncommitted changes included (tag gets -dirty)\n"
    "  -o, --output PATH        image tarball (default NAME.tar)\n"
    "      --name NAME          repository name for the image (default: the context directory's name)\n"
    "      --target STAGE       build this stage instead of the last\n"
    "      --build-arg K=V      set a build argument (repeatable)\n"
    "      --compression ALGO   gzip (default), zstd or none\n"
    "      --platform OS/ARCH[/VARIANT]  target platform (default linux/amd64)\n"
    "      --cache-dir DIR      store and cache (env IMGBUILD_CACHE; default $XDG_CACHE_HOME/imgbuild)\n"
    "      --no-cache           build every step\n"
    "      --cache-from REPO    also look layers up in this registry repository (repeatable)\n"
    "      --cache-to REPO      share this build's layers there (plain OCI images tagged cache-<key>)\n"
    "      --secret id=ID,src=PATH  a file for RUN --mount=type=secret,id=ID (never in a layer or a key)\n"
    "      --ssh ID[=SOCKET]    ssh-agent socket for RUN --mount=type=ssh,id=ID (repeatable;\n"
    "                           'default' alone: $SSH_AUTH_SOCK); keys never enter the image\n"
    "      --network MODE       default/host, or none: RUN steps get no network\n"
    "      --progress MODE      auto, plain, tty, json or quiet (default auto)\n"
    "  -j, --jobs N             compression threads (default: all cores)\n"
    "  -q, --quiet              print only the image digest\n"
    "  -h, --help               this help\n"
    "Base images not in the local store are pulled (registry flags below).\n" IB_CLI_REG_HELP
    "\n"
    "SOURCE_DATE_EPOCH overrides the commit time used for timestamps.\n";

enum {
    O_TAG = 256, O_WORKTREE, O_NAME, O_TARGET, O_BUILD_ARG, O_COMPRESSION, O_CACHE_DIR, O_NO_CACHE,
    O_CACHE_FROM, O_CACHE_TO, O_SECRET, O_SSH, O_NETWORK, O_PLATFORM, O_PROGRESS
};

int ib_cmd_build(int argc, char **argv)
{
    static const struct option opts[] = {
        {"file", required_argument, 0, 'f'},         {"tag", required_argument, 0, O_TAG},
        {"output", required_argument, 0, 'o'},       {"worktree", no_argument, 0, O_WORKTREE},
        {"name", required_argument, 0, O_NAME},      {"target", required_argument, 0, O_TARGET},
        {"build-arg", required_argument, 0, O_BUILD_ARG}, {"compression", required_argument, 0, O_COMPRESSION},
        {"cache-dir", required_argument, 0, O_CACHE_DIR}, {"no-cache", no_argument, 0, O_NO_CACHE},
        {"cache-from", required_argument, 0, O_CACHE_FROM}, {"cache-to", required_argument, 0, O_CACHE_TO},
        {"secret", required_argument, 0, O_SECRET},  {"ssh", required_argument, 0, O_SSH},  {"network", required_argument, 0, O_NETWORK},
        {"platform", required_argument, 0, O_PLATFORM}, {"progress", required_argument, 0, O_PROGRESS},
        {"jobs", required_argument, 0, 'j'},         {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},               IB_CLI_REG_OPTIONS, {0, 0, 0, 0}};
    ib_build_opts o = {0};
    ib_reg_opts ro = {0};
    o.reg = &ro;
    o.compression = IB_COMP_GZIP;
    const char **bargs = NULL, **cfrom = NULL, **secrets = NULL;
    char **ssh = NULL;
    size_t nb = 0, ncfrom = 0, nsecrets = 0, nssh = 0;
    int quiet = 0, c, rc = IB_EXIT_USAGE;
    ib_prog_mode pm = IB_PROG_AUTO;
    int pm_set = 0;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":f:o:j:qh", opts, NULL)) != -1) {
        if (ib_cli_reg_opt(&ro, c, optarg)) continue;
        switch (c) {
        case 'f': o.file = optarg; break;
        case 'o': o.output = optarg; break;
        case O_TAG: o.rev = optarg; break;
        case O_WORKTREE: o.worktree = 1; break;
        case O_NAME: o.name = optarg; break;
        case O_TARGET: o.target = optarg; break;
        case O_BUILD_ARG:
            bargs = realloc(bargs, (nb + 1) * sizeof *bargs);
            if (!bargs) abort();
            bargs[nb++] = optarg;
            break;
        case O_COMPRESSION:
            if (ib_compress_parse(&o.compression, optarg) < 0) {
                rc = ib_cli_fail(IB_EUSAGE);
                goto out;
            }
            break;
        case O_CACHE_DIR: o.cache_dir = optarg; break;
        case O_NO_CACHE: o.no_cache = 1; break;
        case O_CACHE_FROM:
            cfrom = realloc(cfrom, (ncfrom + 1) * sizeof *cfrom);
            if (!cfrom) abort();
            cfrom[ncfrom++] = optarg;
            break;
        case O_CACHE_TO: o.cache_to = optarg; break;
        case O_SECRET: {
            /* id=ID,src=PATH: checked now so a typo fails before the build */
            const char *src = strstr(optarg, "src=");
            if (!src) src = strstr(optarg, "source=");
            if (!strstr(optarg, "id=") || !src) {
                rc = ib_cli_usage_error("--secret %s: expected id=ID,src=PATH", optarg);
                goto out;
            }
            char path[4096];
            snprintf(path, sizeof path, "%s", strchr(src, '=') + 1);
            path[strcspn(path, ",")] = 0;
            if (access(path, R_OK) < 0) {
                rc = ib_cli_usage_error("--secret: cannot read %s", path);
                goto out;
            }
            secrets = realloc(secrets, (nsecrets + 1) * sizeof *secrets);
            if (!secrets) abort();
            secrets[nsecrets++] = optarg;
            break;
        }
        case O_SSH: {
            /* BuildKit's --ssh: ID alone is $SSH_AUTH_SOCK for "default" only;
             * ID=PATH must be an agent socket (key files would need an agent of ours). */
            const char *eq = strchr(optarg, '=');
            int il = eq ? (int)(eq - optarg) : (int)strlen(optarg);
            const char *path = eq ? eq + 1 : NULL;
            if (!path && !strcmp(optarg, "default")) {
                path = getenv("SSH_AUTH_SOCK");
                if (!path || !*path) {
                    rc = ib_cli_usage_error("--ssh default: SSH_AUTH_SOCK is not set (start ssh-agent, ssh-add your key)");
                    goto out;
                }
            }
            if (!il || !path || !*path || strchr(path, ',')) {
                rc = ib_cli_usage_error("--ssh %s: expected default, or ID=SOCKET with one agent socket", optarg);
                goto out;
            }
            struct stat sb;
            int st = stat(path, &sb);
            if (st < 0 || !S_ISSOCK(sb.st_mode)) {
                rc = ib_cli_usage_error("--ssh %.*s=%s: %s", il, optarg, path,
                                        st < 0 ? "no such socket"
                                               : "not an agent socket (key files are not read: ssh-add the key to an "
                                                 "ssh-agent and pass its socket)");
                goto out;
            }
            char *v = NULL;
            if (asprintf(&v, "%.*s=%s", il, optarg, path) < 0) abort();
            ssh = realloc(ssh, (nssh + 1) * sizeof *ssh);
            if (!ssh) abort();
            ssh[nssh++] = v;
            break;
        }
        case O_NETWORK:
            if (strcmp(optarg, "host") && strcmp(optarg, "none") && strcmp(optarg, "default")) {
                rc = ib_cli_usage_error("--network %s: expected host, default or none", optarg);
                goto out;
            }
            o.network_none = !strcmp(optarg, "none");
            break;
        case O_PLATFORM: o.platform = optarg; break;
        case O_PROGRESS:
            if (ib_progress_parse(&pm, optarg) < 0) {
                rc = ib_cli_fail(IB_EUSAGE);
                goto out;
            }
            pm_set = 1;
            break;
        case 'j': {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (*end || n < 1 || n > 256) {
                rc = ib_cli_usage_error("--jobs %s: expected a number from 1 to 256", optarg);
                goto out;
            }
            o.threads = (int)n;
            break;
        }
        case 'q': quiet = 1; break;
        case 'h':
            fputs(help, stdout);
            rc = 0;
            goto out;
        case ':':
            rc = ib_cli_usage_error("%s: missing value", argv[optind - 1]);
            goto out;
        default:
            rc = ib_cli_usage_error("unknown flag %s (see 'imgbuild build --help')", argv[optind - 1]);
            goto out;
        }
    }
    if (optind < argc) o.context_dir = argv[optind++];
    if (o.context_dir && !strchr(o.context_dir, '/') && access(o.context_dir, F_OK) < 0) {
        /* `imgbuild biuld`: more likely a mistyped command than a missing dir */
        rc = ib_cli_usage_error("'%s' is neither a directory nor a command (build, push, pull, inspect, load, login, "
                                "logout, cache, retag, slim; see imgbuild --help)",
                                o.context_dir);
        goto out;
    }
    if (optind < argc) {
        rc = ib_cli_usage_error("unexpected argument '%s' (one CONTEXT only)", argv[optind]);
        goto out;
    }
    if (o.rev && !*o.rev) {
        rc = ib_cli_usage_error("--tag: empty revision");
        goto out;
    }
    if (o.rev && o.worktree) {
        rc = ib_cli_usage_error("--tag and --worktree exclude each other: --worktree builds the files on disk");
        goto out;
    }
    /* Checked before anything is built or pushed (--cache-to): a typo in
     * --name or -o must not cost a whole build. */
    if (o.name) {
        ib_ref ref;
        if (ib_ref_parse(&ref, o.name, NULL) < 0) {
            rc = ib_cli_usage_error("--name: %s", ib_error_last());
            goto out;
        }
        int has_tag = ref.tag || ref.digest;
        ib_ref_clear(&ref);
        if (has_tag) {
            rc = ib_cli_usage_error("--name %s: give the repository only; the tag is sha-<commit>", o.name);
            goto out;
        }
    }
    if (o.output) {
        struct stat sb;
        char *dir = strdup(o.output);
        if (!dir) abort();
        char *sl = strrchr(dir, '/');
        if (sl) *(sl == dir ? sl + 1 : sl) = 0;
        const char *d = sl ? dir : ".";
        int bad_dir = stat(o.output, &sb) == 0 && S_ISDIR(sb.st_mode);
        int no_dir = !bad_dir && (stat(d, &sb) < 0 || !S_ISDIR(sb.st_mode));
        int unwritable = !bad_dir && !no_dir && access(d, W_OK) < 0;
        if (bad_dir || no_dir || unwritable)
            rc = ib_cli_usage_error("-o %s: %s %s", o.output,
                                    bad_dir ? "is a directory" : no_dir ? "no such directory" : "cannot write in",
                                    bad_dir ? "(give a file name)" : d);
        free(dir);
        if (bad_dir || no_dir || unwritable) goto out;
    }
    if (quiet && !pm_set) pm = IB_PROG_QUIET;
    o.build_args = bargs;
    o.nbuild_args = nb;
    o.cache_from = cfrom;
    o.ncache_from = ncfrom;
    o.secrets = secrets;
    o.nsecrets = nsecrets;
    o.ssh = (const char *const *)ssh;
    o.nssh = nssh;
    o.progress = ib_progress_new(pm, stderr);
    ib_build_result res;
    int r = ib_build(&res, &o);
    if (r < 0) {
        ib_progress_error(o.progress, ib_error_last(), r == IB_EUSAGE ? IB_EXIT_USAGE : IB_EXIT_FAIL);
        rc = ib_cli_fail(r);
        ib_progress_free(o.progress);
        goto out;
    }
    if (pm == IB_PROG_JSON) {
        json_t *j = json_pack("{s:s,s:s,s:s,s:s,s:s,s:I,s:s,s:i}", "name", res.name, "full_name", res.full_name,
                              "tag", res.tag, "digest", res.digest, "output", res.output, "output_size",
                              (json_int_t)res.output_size, "revision", res.revision, "layers", (int)res.nlayers);
        char *s = json_dumps(j, JSON_COMPACT);
        ib_progress_result(o.progress, s);
        free(s);
        json_decref(j);
    }
    if (quiet) {
        printf("%s\n", res.digest);
    } else {
        char hs[32];
        ib_human_size(hs, res.output_size);
        printf("Image   %s\nTag     %s\nDigest  %s\nOutput  %s (%s, %zu layer%s)\nSteps   %u built, %u cached\n",
               res.name, res.tag, res.digest, res.output, hs, res.nlayers, res.nlayers == 1 ? "" : "s", res.built,
               res.cached);
    }
    ib_progress_free(o.progress);
    ib_build_result_clear(&res);
    rc = 0;
out:
    free(bargs);
    free(cfrom);
    free(secrets);
    for (size_t i = 0; i < nssh; i++) free(ssh[i]);
    free(ssh);
    return rc;
}
