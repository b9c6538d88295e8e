#include "cli/cli.h"
#include "common/error.h"
#include "common/progress.h"
#include "oci/platform.h"
#include "oci/archive.h"
#include "oci/digest.h"
#include "oci/image.h"
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
    "usage: imgbuild inspect IMAGE.tar|REF [--json] [--cache-dir DIR] [--platform OS/ARCH[/VARIANT]]\n"
    "\n"
    "Shows an image tarball's (or a stored or remote image's) name, tag, digest,\n"
    "layers and sizes, config and annotations. Every blob read is verified. A REF\n"
    "not in the local store is looked up in its registry (manifest and config only).\n" IB_CLI_REG_HELP;

/* Reads a blob member of the tarball and checks it against its digest. */
static int read_verified(json_t **out, const char *tar, const char *digest, size_t max)
{
    char *member = ib_xasprintf("blobs/sha256/%s", ib_digest_hex(digest));
    char *buf;
    size_t len;
    int r = ib_archive_read_member(&buf, &len, tar, member, max);
    free(member);
    if (r < 0) return r;
    char got[IB_DIGEST_STRLEN + 1];
    ib_digest_buf(got, buf, len);
    if (strcmp(got, digest)) {
        free(buf);
        return ib_error_set(IB_ECORRUPT, "%s: blob %s is corrupt (hashes to %s)", tar, digest, got);
    }
    json_error_t je;
    *out = json_loadb(buf, len, 0, &je);
    free(buf);
    if (!*out) return ib_error_set(IB_EINVALID, "%s: blob %s: invalid JSON: %s", tar, digest, je.text);
    return 0;
}

static void print_strings(const char *label, json_t *a)
{
    if (!json_is_array(a) || !json_array_size(a)) return;
    printf("  %-12s", label);
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v) printf("%s%s", i ? " " : "", json_string_value(v) ? json_string_value(v) : "");
    putchar('\n');
}

static void print_keys(const char *label, json_t *o)
{
    if (!json_is_object(o) || !json_object_size(o)) return;
    printf("  %-12s", label);
    const char *k;
    json_t *v;
    int first = 1;
    json_object_foreach(o, k, v)
    {
        printf("%s%s", first ? "" : " ", k);
        first = 0;
    }
    putchar('\n');
}

static void print_human(const char *name, const char *tag, const char *digest, uint64_t msize, json_t *man,
                        json_t *cfg)
{
    printf("Name          %s\n", name ? name : "(none)");
    printf("Tag           %s\n", tag ? tag : "(none)");
    printf("Digest        %s\n", digest);
    printf("Manifest      %s, %llu bytes\n", json_string_value(json_object_get(man, "mediaType")),
           (unsigned long long)msize);
    printf("Created       %s\n", json_string_value(json_object_get(cfg, "created")) ? json_string_value(json_object_get(cfg, "created")) : "");
    printf("Platform      %s/%s\n", json_string_value(json_object_get(cfg, "os")),
           json_string_value(json_object_get(cfg, "architecture")));
    json_t *layers = json_object_get(man, "layers");
    json_t *diffs = json_object_get(json_object_get(cfg, "rootfs"), "diff_ids");
    json_t *hist = json_object_get(cfg, "history");
    uint64_t total = 0;
    size_t i, hi = 0;
    json_t *l;
    printf("Layers        %zu\n", json_array_size(layers));
    json_array_foreach(layers, i, l)
    {
        char hs[32];
        uint64_t sz = (uint64_t)json_integer_value(json_object_get(l, "size"));
        total += sz;
        ib_human_size(hs, sz);
        /* the history entry that made this layer: the i-th non-empty one */
        const char *by = "";
        for (; hi < json_array_size(hist); hi++) {
            json_t *h = json_array_get(hist, hi);
            if (json_is_true(json_object_get(h, "empty_layer"))) continue;
            by = json_string_value(json_object_get(h, "created_by"));
            hi++;
            break;
        }
        printf("  %.19s  %10s  %s\n", json_string_value(json_object_get(l, "digest")), hs, by ? by : "");
        (void)diffs;
    }
    char ts[32];
    ib_human_size(ts, total);
    printf("Size          %s (compressed layers)\n", ts);
    json_t *c = json_object_get(cfg, "config");
    printf("Config\n");
    print_strings("Entrypoint", json_object_get(c, "Entrypoint"));
    print_strings("Cmd", json_object_get(c, "Cmd"));
    const char *s;
    if ((s = json_string_value(json_object_get(c, "WorkingDir"))) && *s) printf("  %-12s%s\n", "WorkingDir", s);
    if ((s = json_string_value(json_object_get(c, "User"))) && *s) printf("  %-12s%s\n", "User", s);
    print_keys("Exposed", json_object_get(c, "ExposedPorts"));
    print_keys("Volumes", json_object_get(c, "Volumes"));
    if ((s = json_string_value(json_object_get(c, "StopSignal")))) printf("  %-12s%s\n", "StopSignal", s);
    json_t *hc = json_object_get(c, "Healthcheck");
    if (hc) print_strings("Healthcheck", json_object_get(hc, "Test"));
    json_t *env = json_object_get(c, "Env");
    json_t *e;
    json_array_foreach(env, i, e) printf("  %-12s%s\n", i ? "" : "Env", json_string_value(e));
    json_t *labels = json_object_get(c, "Labels");
    const char *k;
    json_t *v;
    int first = 1;
    json_object_foreach(labels, k, v)
    {
        printf("  %-12s%s=%s\n", first ? "Labels" : "", k, json_string_value(v));
        first = 0;
    }
    json_t *ann = json_object_get(man, "annotations");
    if (json_object_size(ann)) printf("Annotations\n");
    json_object_foreach(ann, k, v) printf("  %s=%s\n", k, json_string_value(v));
}

int ib_cmd_inspect(int argc, char **argv)
{
    static const struct option opts[] = {{"json", no_argument, 0, 'J'},
                                         {"cache-dir", required_argument, 0, 'C'},
                                         {"platform", required_argument, 0, 'p'},
                                         {"help", no_argument, 0, 'h'},
                                         IB_CLI_REG_OPTIONS,
                                         {0, 0, 0, 0}};
    ib_reg_opts ro = {0};
    const char *platform = NULL;
    int as_json = 0, c;
    const char *cache_dir = NULL;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        if (ib_cli_reg_opt(&ro, c, optarg)) continue;
        switch (c) {
        case 'J': as_json = 1; break;
        case 'p': platform = optarg; break;
        case 'C': cache_dir = optarg; break;
        case 'h': fputs(help, stdout); return 0;
        case ':': return ib_cli_usage_error("%s: missing value", argv[optind - 1]);
        default: return ib_cli_usage_error("unknown flag %s (see 'imgbuild inspect --help')", argv[optind - 1]);
        }
    }
    if (optind != argc - 1) return ib_cli_usage_error("inspect: expected one IMAGE.tar or REF");
    ib_platform chk;
    if (platform && ib_platform_parse(&chk, platform, "--platform") < 0) return ib_cli_fail(IB_EUSAGE);
    const char *what = argv[optind];
    json_t *man = NULL, *cfg = NULL;
    char digest[IB_DIGEST_STRLEN + 1] = "";
    char *name = NULL, *tag = NULL;
    uint64_t msize = 0;
    int r;
    struct stat sb;
    size_t wl = strlen(what);
    if (stat(what, &sb) < 0 && ((wl > 4 && !strcmp(what + wl - 4, ".tar")) || strchr(what, '/') == what ||
                                !strncmp(what, "./", 2) || !strncmp(what, "../", 3))) {
        /* a path, not a reference: never ask Docker Hub for "docker.io/library/app.tar" */
        ib_error_set(IB_ENOTFOUND, "%s: no such file", what);
        return ib_cli_fail(IB_ENOTFOUND);
    }
    if (stat(what, &sb) == 0 && S_ISREG(sb.st_mode)) {
        char *idx;
        size_t len;
        if ((r = ib_archive_read_member(&idx, &len, what, "index.json", IB_MANIFEST_MAX)) < 0) {
            if (r == IB_ENOTFOUND) r = ib_error_set(IB_EINVALID, "%s: not an OCI image tarball (no index.json)", what);
            return ib_cli_fail(r);
        }
        json_t *index = json_loadb(idx, len, 0, NULL);
        free(idx);
        json_t *m0 = json_array_get(json_object_get(index, "manifests"), 0);
        const char *dg = json_string_value(json_object_get(m0, "digest"));
        if (!dg || !ib_digest_valid(dg)) {
            json_decref(index);
            ib_error_set(IB_EINVALID, "%s: index.json has no manifest", what);
            return ib_cli_fail(IB_EINVALID);
        }
        memcpy(digest, dg, sizeof digest);
        msize = (uint64_t)json_integer_value(json_object_get(m0, "size"));
        json_t *ann = json_object_get(m0, "annotations");
        const char *n = json_string_value(json_object_get(ann, "io.containerd.image.name"));
        const char *t = json_string_value(json_object_get(ann, "org.opencontainers.image.ref.name"));
        if (n) name = strdup(n);
        if (t) tag = strdup(t);
        json_decref(index);
        if ((r = read_verified(&man, what, digest, IB_MANIFEST_MAX)) < 0) goto fail;
        const char *cd = json_string_value(json_object_get(json_object_get(man, "config"), "digest"));
        if (!cd || !ib_digest_valid(cd)) {
            r = ib_error_set(IB_EINVALID, "%s: manifest has no config", what);
            goto fail;
        }
        if ((r = read_verified(&cfg, what, cd, IB_CONFIG_MAX)) < 0) goto fail;
    } else {
        ib_ref ref;
        if ((r = ib_ref_parse(&ref, what, "latest")) < 0) {
            ib_error_set(IB_EINVALID, "%s: no such file, and not an image reference", what);
            return ib_cli_fail(IB_EINVALID);
        }
        name = ib_ref_string(&ref);
        tag = ref.tag ? strdup(ref.tag) : NULL;
        ib_ref_clear(&ref);
        char *dir = cache_dir ? strdup(cache_dir) : ib_store_default_dir();
        ib_store *s = NULL;
        r = ib_store_open(&s, dir);
        free(dir);
        if (r == 0) r = ib_store_get_ref(digest, s, name);
        ib_image *img = NULL;
        if (r == 0) r = ib_image_load(&img, s, digest);
        if (r == 0) {
            man = json_incref(img->manifest);
            cfg = json_incref(img->config);
            msize = img->size;
        }
        ib_image_free(img);
        ib_store_free(s);
        if (r == IB_ENOTFOUND) {
            /* Not local: ask the registry for manifest and config only. */
            ib_ref rr;
            char *mtxt = NULL, *ctxt = NULL;
            char *remote_err = NULL, *local_err = ib_xstrdup(ib_error_last());
            if (ib_ref_parse(&rr, what, "latest") == 0) {
                r = ib_fetch_metadata(&mtxt, &ctxt, digest, &rr, platform, &ro);
                if (r < 0) remote_err = ib_xstrdup(ib_error_last());
                ib_ref_clear(&rr);
            }
            if (r == 0) {
                man = json_loads(mtxt, 0, NULL);
                cfg = json_loads(ctxt, 0, NULL);
                msize = strlen(mtxt);
                if (!man || !cfg) r = ib_error_set(IB_EINVALID, "%s: the registry sent invalid JSON", what);
            } else {
                r = ib_error_set(r, "%s (and from the registry: %s)", local_err, remote_err ? remote_err : "?");
            }
            free(local_err);
            free(remote_err);
            free(mtxt);
            free(ctxt);
        }
        if (r < 0) goto fail;
    }
    if (as_json) {
        json_t *j = json_pack("{s:s?,s:s?,s:s,s:O,s:O}", "name", name, "tag", tag, "digest", digest, "manifest", man,
                              "config", cfg);
        char *s = json_dumps(j, JSON_INDENT(2));
        puts(s);
        free(s);
        json_decref(j);
    } else {
        print_human(name, tag, digest, msize, man, cfg);
    }
    json_decref(man);
    json_decref(cfg);
    free(name);
    free(tag);
    return 0;
fail:
    json_decref(man);
    json_decref(cfg);
    free(name);
    free(tag);
    return ib_cli_fail(r);
}
