#include "cli/cli.h"
#include "build/cache.h"
#include "common/error.h"
#include "common/progress.h"
#include "oci/archive.h"
#include "oci/reference.h"
#include "oci/store.h"
#include "registry/transfer.h"

#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char help[] =
    "usage: imgbuild push [IMAGE.tar] HOST[:PORT]/REPO[:TAG] [flags]\n"
    "\n"
    "Pushes an image tarball (or, without IMAGE.tar, the last image built in this\n"
    "directory) to an OCI registry: Harbor, Distribution, GHCR... Without a TAG the\n"
    "image's own tag is used (sha-<commit>). Blobs the registry has are skipped,\n"
    "blobs it has in another repository are mounted, the rest uploaded in parallel.\n"
    "\n"
    "      --also-tag TAG       push under this tag too (repeatable)\n"
    "  -j, --jobs N             parallel blob uploads (default 4)\n"
    "      --chunk-size BYTES   upload in PATCHes of this size with Content-Range (default:\n"
    "                           one request per blob), for proxies that cap request bodies\n"
    "      --cache-dir DIR      local store (default $IMGBUILD_CACHE or $XDG_CACHE_HOME/imgbuild)\n"
    "      --progress MODE      auto, plain, json or quiet\n"
    "  -q, --quiet              print only the manifest digest\n" IB_CLI_REG_HELP;

enum { O_ALSO = 300, O_CACHE, O_PROGRESS, O_CHUNK };

/* The tag a name carries: the name itself when it is a bare tag ("sha-…", as
 * ref.name usually is), else the tag of the reference it spells
 * ("localhost/bb:v1": skopeo's ref.name, containerd's image name, RepoTags). */
static char *tag_in(const char *name)
{
    if (!name) return NULL;
    if (ib_ref_valid_tag(name)) return ib_xstrdup(name);
    ib_ref r;
    if (ib_ref_parse(&r, name, NULL) < 0) {
        ib_error_clear();
        return NULL;
    }
    char *t = r.tag ? ib_xstrdup(r.tag) : NULL;
    ib_ref_clear(&r);
    return t;
}

/* The tarball's own tag, for the image push sends (the first): index.json's
 * ref.name, else its io.containerd.image.name; for a docker-archive (no
 * index.json), the first of manifest.json's RepoTags, the name `load` gives it. */
static char *archive_own_tag(const char *image)
{
    char *txt, *tag = NULL;
    size_t len;
    if (ib_archive_read_member(&txt, &len, image, "index.json", 1 << 20) == 0) {
        json_t *j = json_loadb(txt, len, 0, NULL);
        json_t *ann = json_object_get(json_array_get(json_object_get(j, "manifests"), 0), "annotations");
        tag = tag_in(json_string_value(json_object_get(ann, "org.opencontainers.image.ref.name")));
        if (!tag) tag = tag_in(json_string_value(json_object_get(ann, "io.containerd.image.name")));
        json_decref(j);
        free(txt);
        if (tag) return tag;
    }
    if (ib_archive_read_member(&txt, &len, image, "manifest.json", 1 << 20) == 0) {
        json_t *j = json_loadb(txt, len, 0, NULL);
        tag = tag_in(json_string_value(json_array_get(json_object_get(json_array_get(j, 0), "RepoTags"), 0)));
        json_decref(j);
        free(txt);
    }
    ib_error_clear();
    return tag;
}

int ib_cmd_push(int argc, char **argv)
{
    static const struct option opts[] = {{"also-tag", required_argument, 0, O_ALSO},
                                         {"jobs", required_argument, 0, 'j'},
                                         {"cache-dir", required_argument, 0, O_CACHE},
                                         {"progress", required_argument, 0, O_PROGRESS},
                                         {"chunk-size", required_argument, 0, O_CHUNK},
                                         {"quiet", no_argument, 0, 'q'},
                                         {"help", no_argument, 0, 'h'},
                                         IB_CLI_REG_OPTIONS,
                                         {0, 0, 0, 0}};
    ib_reg_opts ro = {0};
    const char *also[32];
    size_t nalso = 0;
    const char *cache_dir = NULL;
    ib_prog_mode pm = IB_PROG_AUTO;
    int quiet = 0, c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":j:qh", opts, NULL)) != -1) {
        if (ib_cli_reg_opt(&ro, c, optarg)) continue;
        switch (c) {
        case O_ALSO:
            if (!ib_ref_valid_tag(optarg)) return ib_cli_usage_error("--also-tag %s: not a valid tag", optarg);
            if (nalso == 31) return ib_cli_usage_error("--also-tag: at most 31");
            also[nalso++] = optarg;
            break;
        case 'j': {
            char *end;
            long n = strtol(optarg, &end, 10);
            if (*end || n < 1 || n > 64) return ib_cli_usage_error("--jobs %s: expected 1..64", optarg);
            ro.jobs = (int)n;
            break;
        }
        case O_CHUNK: {
            char *end;
            unsigned long long n = strtoull(optarg, &end, 10);
            if (*end || n < 1024) return ib_cli_usage_error("--chunk-size %s: expected bytes >= 1024", optarg);
            ro.chunk_size = n;
            break;
        }
        case O_CACHE: cache_dir = optarg; break;
        case O_PROGRESS:
            if (ib_progress_parse(&pm, optarg) < 0) return ib_cli_fail(IB_EUSAGE);
            break;
        case 'q': quiet = 1; break;
        case 'h': fputs(help, stdout); return 0;
        case ':': return ib_cli_usage_error("%s: missing value", argv[optind - 1]);
        default: return ib_cli_usage_error("unknown flag %s (see 'imgbuild push --help')", argv[optind - 1]);
        }
    }
    const char *image = NULL, *destarg = NULL;
    if (argc - optind == 2) {
        image = argv[optind];
        destarg = argv[optind + 1];
    } else if (argc - optind == 1) {
        destarg = argv[optind];
    } else {
        return ib_cli_usage_error("push: expected [IMAGE.tar] HOST/REPO[:TAG]");
    }
    ib_ref dest;
    if (ib_ref_parse(&dest, destarg, NULL) < 0) return ib_cli_fail(IB_EUSAGE);
    if (dest.digest) {
        ib_ref_clear(&dest);
        return ib_cli_usage_error("push: %s: push to a tag, not a digest", destarg);
    }
    char *dir = cache_dir ? ib_xstrdup(cache_dir) : ib_store_default_dir();
    ib_store *s = NULL;
    int r = ib_store_open(&s, dir);
    free(dir);
    char digest[IB_DIGEST_STRLEN + 1] = "";
    char *own_tag = NULL;
    ib_cache *lk = NULL;
    if (r == 0 && ib_cache_open(&lk, s) == 0) ib_cache_lock_shared(lk); /* prune waits for us */
    if (r == 0 && image) {
        ib_loaded *l = NULL;
        size_t n = 0;
        r = ib_archive_load(&l, &n, s, image);
        if (r == 0) {
            memcpy(digest, l[0].digest, sizeof digest);
            own_tag = archive_own_tag(image);
        }
        ib_loaded_free(l, n);
    } else if (r == 0) {
        char *cwd = realpath(".", NULL);
        char *note = NULL;
        r = ib_store_get_note(&note, s, "last-build", cwd ? cwd : ".");
        free(cwd);
        if (r == IB_ENOTFOUND)
            r = ib_error_set(IB_EUSAGE, "push: no IMAGE.tar given and no image was built in this directory yet");
        if (r == 0) {
            char *sp = strchr(note, ' ');
            if (!sp || (size_t)(sp - note) != IB_DIGEST_STRLEN) {
                r = ib_error_set(IB_ERR, "push: the last-build record is damaged; give IMAGE.tar");
            } else {
                memcpy(digest, note, IB_DIGEST_STRLEN);
                digest[IB_DIGEST_STRLEN] = 0;
                own_tag = ib_xstrdup(sp + 1);
                own_tag[strcspn(own_tag, "\n")] = 0;
            }
        }
        free(note);
    }
    const char *tags[33];
    size_t ntags = 0;
    if (r == 0) {
        if (dest.tag) tags[ntags++] = dest.tag;
        else if (own_tag) tags[ntags++] = own_tag;
        else r = ib_error_set(IB_EUSAGE, "push: the image has no tag of its own; give HOST/REPO:TAG");
        for (size_t i = 0; i < nalso; i++) tags[ntags++] = also[i];
    }
    if (r < 0) {
        int rc = ib_cli_fail(r);
        free(own_tag);
        ib_cache_free(lk);
        ib_store_free(s);
        ib_ref_clear(&dest);
        return rc;
    }
    if (quiet && pm == IB_PROG_AUTO) pm = IB_PROG_QUIET;
    ib_progress *p = ib_progress_new(pm, stderr);
    ib_push_result res;
    r = ib_push(&res, s, digest, &dest, tags, ntags, &ro, p);
    int rc = 0;
    if (r < 0) {
        rc = ib_cli_fail(r);
    } else {
        char hs[32];
        ib_human_size(hs, res.bytes_up);
        if (pm == IB_PROG_JSON) {
            json_t *j = json_pack("{s:s,s:s,s:i,s:i,s:i,s:i,s:I,s:f}", "repository", destarg, "digest", digest,
                                  "blobs", res.blobs, "uploaded", res.uploaded, "mounted", res.mounted, "existed",
                                  res.existed, "bytes_uploaded", (json_int_t)res.bytes_up, "seconds", res.seconds);
            json_t *ta = json_array();
            for (size_t i = 0; i < ntags; i++) json_array_append_new(ta, json_string(tags[i]));
            json_object_set_new(j, "tags", ta);
            char *js = json_dumps(j, JSON_COMPACT);
            ib_progress_result(p, js);
            free(js);
            json_decref(j);
        }
        if (quiet) {
            printf("%s\n", digest);
        } else {
            for (size_t i = 0; i < ntags; i++) printf("Pushed  %s/%s:%s\n", dest.registry, dest.repo, tags[i]);
            printf("Digest  %s\nBlobs   %u: %u uploaded (%s), %u mounted, %u already there (%.2fs)\n", digest,
                   res.blobs, res.uploaded, hs, res.mounted, res.existed, res.seconds);
            if (res.resumed || res.restarted)
                printf("Recovered %u interrupted upload%s (%u resumed, %u restarted)\n", res.resumed + res.restarted,
                       res.resumed + res.restarted == 1 ? "" : "s", res.resumed, res.restarted);
        }
    }
    ib_progress_free(p);
    free(own_tag);
    ib_cache_free(lk);
    ib_store_free(s);
    ib_ref_clear(&dest);
    return rc;
}
