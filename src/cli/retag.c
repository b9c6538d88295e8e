#include "cli/cli.h"
#include "common/error.h"
#include "common/fs.h"
#include "oci/reference.h"
#include "registry/client.h"

#include <ctype.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char help[] =
    "usage: imgbuild retag --commit-map FILE HOST[:PORT]/REPO [--dry-run] [flags]\n"
    "\n"
    "After a history rewrite (imgbuild slim, git filter-repo), commits have new\n"
    "ids. For every \"old new\" pair in the commit map whose sha-<old> tag exists\n"
    "in the repository, adds sha-<new> pointing at the same manifest: no blob is\n"
    "uploaded, and deploys and rollbacks by sha tag keep working. Existing\n"
    "sha-<new> tags are left alone. Reads git filter-repo's commit-map format too.\n"
    "Pruned commits (new id 0000...) get no tag: their images keep sha-<old> only,\n"
    "and each one that has an image is named in a warning.\n"
    "\n"
    "      --commit-map FILE    lines \"<old sha> <new sha>\" (a header line is skipped)\n"
    "      --dry-run            only print what would be tagged\n" IB_CLI_REG_HELP;

static int is_sha(const char *s, size_t n)
{
    if (n != 40) return 0;
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)s[i]) || isupper((unsigned char)s[i])) return 0;
    return 1;
}

int ib_cmd_retag(int argc, char **argv)
{
    static const struct option opts[] = {{"commit-map", required_argument, 0, 'm'},
                                         {"dry-run", no_argument, 0, 'n'},
                                         {"help", no_argument, 0, 'h'},
                                         IB_CLI_REG_OPTIONS,
                                         {0, 0, 0, 0}};
    ib_reg_opts ro = {0};
    const char *map = NULL;
    int dry = 0, c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        if (ib_cli_reg_opt(&ro, c, optarg)) continue;
        switch (c) {
        case 'm': map = optarg; break;
        case 'n': dry = 1; break;
        case 'h': fputs(help, stdout); return 0;
        case ':': return ib_cli_usage_error("%s: missing value", argv[optind - 1]);
        default: return ib_cli_usage_error("unknown flag %s (see 'imgbuild retag --help')", argv[optind - 1]);
        }
    }
    if (!map) return ib_cli_usage_error("retag: --commit-map FILE is required");
    if (argc - optind != 1) return ib_cli_usage_error("retag: expected one HOST/REPO");
    ib_ref dest;
    if (ib_ref_parse(&dest, argv[optind], NULL) < 0) return ib_cli_fail(IB_EUSAGE);
    if (dest.tag || dest.digest) {
        ib_ref_clear(&dest);
        return ib_cli_usage_error("retag: give HOST/REPO without a tag");
    }
    char *text;
    int r = ib_fs_read_all(&text, NULL, map, 256u << 20);
    if (r < 0) {
        ib_ref_clear(&dest);
        return ib_cli_fail(IB_EUSAGE);
    }
    ib_registry *reg = NULL;
    r = ib_registry_open(&reg, dest.registry, &ro);
    if (r == 0) ib_registry_want(reg, dest.repo, "pull,push");
    unsigned lineno = 0, pairs = 0, tagged = 0, missing = 0, present = 0, pruned = 0, unchanged = 0;
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); r == 0 && line; line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        char old[64], nw[64];
        if (sscanf(line, "%63s %63s", old, nw) != 2) continue;
        if (!is_sha(old, strlen(old)) || !is_sha(nw, strlen(nw))) {
            if (lineno == 1) continue; /* filter-repo's "old new" header */
            r = ib_error_set(IB_EINVALID, "%s:%u: expected \"<old sha> <new sha>\"", map, lineno);
            break;
        }
        pairs++;
        if (!strcmp(old, nw)) {
            unchanged++; /* the rewrite kept this commit: its tag is already right */
            continue;
        }
        char *ot = ib_xasprintf("sha-%s", old), *nt = ib_xasprintf("sha-%s", nw);
        char od[IB_DIGEST_STRLEN + 1] = "", nd[IB_DIGEST_STRLEN + 1] = "";
        int h = ib_registry_manifest_head(od, reg, dest.repo, ot);
        if (strspn(nw, "0") == 40) {
            /* Pruned: no new commit to tag. Its image stays reachable by the
             * old tag only, which no commit of the new history names, so a
             * deploy by the new ids gets the nearest kept ancestor's image. */
            pruned++;
            if (h == 0)
                fprintf(stderr,
                        "warning: %s:%s is the image of a commit the rewrite pruned: it keeps its old tag only\n",
                        dest.repo, ot);
            else if (h != IB_ENOTFOUND)
                r = h;
        } else if (h == IB_ENOTFOUND) {
            missing++; /* most commits were never built */
        } else if (h < 0) {
            r = h;
        } else if (ib_registry_manifest_head(nd, reg, dest.repo, nt) == 0) {
            present++;
            if (strcmp(nd, od))
                fprintf(stderr, "warning: %s:%s already exists with another image (%.19s); left alone\n", dest.repo, nt,
                        nd);
        } else if (dry) {
            printf("would tag %s:%s -> %s (%s)\n", dest.repo, nt, ot, od);
            tagged++;
        } else {
            char *body = NULL, *mt = NULL;
            size_t len = 0;
            char dg[IB_DIGEST_STRLEN + 1];
            r = ib_registry_manifest_get(&body, &len, &mt, dg, reg, dest.repo, od);
            if (r == 0) r = ib_registry_manifest_put(reg, dest.repo, nt, body, len, mt, dg);
            if (r == 0) {
                printf("tagged %s:%s -> %s\n", dest.repo, nt, dg);
                tagged++;
            }
            free(body);
            free(mt);
        }
        free(ot);
        free(nt);
    }
    free(text);
    ib_registry_free(reg);
    int rc = 0;
    char more[48] = "";
    if (unchanged) snprintf(more, sizeof more, ", %u unchanged by the rewrite", unchanged);
    if (r < 0) rc = ib_cli_fail(r);
    else
        printf("%u commit pairs: %u tag%s %s, %u already tagged, %u without an image, %u pruned (their images keep "
               "their old tag only)%s\n",
               pairs, tagged, tagged == 1 ? "" : "s", dry ? "to add" : "added", present, missing, pruned, more);
    ib_ref_clear(&dest);
    return rc;
}
