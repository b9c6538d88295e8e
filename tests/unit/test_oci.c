/* Store (atomic, verified), references, descriptors and image loading. */
#include "ut.h"
#include "common/error.h"
#include "common/fs.h"
#include "oci/platform.h"
#include "oci/image.h"
#include "oci/reference.h"
#include "oci/store.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void test_refs(void)
{
    struct {
        const char *in, *out;
    } ok[] = {
        {"busybox", "docker.io/library/busybox:latest"},
        {"busybox:1.36", "docker.io/library/busybox:1.36"},
        {"wepp/weppcloud:sha-abc", "docker.io/wepp/weppcloud:sha-abc"},
        {"harbor.local/wepp/app", "harbor.local/wepp/app:latest"},
        {"harbor.local:8443/wepp/app:v1", "harbor.local:8443/wepp/app:v1"},
        {"localhost/app", "localhost/app:latest"},
        {"localhost:5000/a/b/c:t", "localhost:5000/a/b/c:t"},
        {"index.docker.io/library/redis:7", "docker.io/library/redis:7"},
        {"ghcr.io/org/img@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
         "ghcr.io/org/img@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"myapp/sub__part.v2-x", "docker.io/myapp/sub__part.v2-x:latest"},
        {"my.registry/x", "my.registry/x:latest"},
        {"h.io/a--b/c---d", "h.io/a--b/c---d:latest"},
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        ib_ref r;
        CHECK(ib_ref_parse(&r, ok[i].in, "latest") == 0);
        char *s = ib_ref_string(&r);
        CHECK_STR(s, ok[i].out);
        free(s);
        ib_ref_clear(&r);
    }
    /* distribution/reference: one separator ("." "_" "__" "-"+) between alphanumeric runs */
    const char *bad[] = {"",     "UPPER/case", "a//b", "repo:bad tag", "repo@sha256:short", "-lead", "x/.y", "a:",
                         "a-.b", "a._b",       "a_-b", "a.-b",         "a___b",             "a..b",  "trail-"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ib_ref r;
        CHECK(ib_ref_parse(&r, bad[i], "latest") == IB_EINVALID);
    }
    char longname[300];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    longname[10] = '/';
    {
        ib_ref r;
        CHECK(ib_ref_parse(&r, longname, "latest") == IB_EINVALID);
        CHECK(strstr(ib_error_last(), "255") != NULL);
    }
    ib_ref r;
    CHECK(ib_ref_parse(&r, "harbor.local/wepp/app", NULL) == 0);
    CHECK(r.tag == NULL);
    char *n = ib_ref_name(&r);
    CHECK_STR(n, "harbor.local/wepp/app");
    free(n);
    ib_ref_clear(&r);
    CHECK(ib_ref_valid_tag("sha-0123456789abcdef0123456789abcdef01234567-dirty"));
    CHECK(!ib_ref_valid_tag(".hidden"));
}

static void test_store(const char *dir)
{
    ib_store *s;
    CHECK(ib_store_open(&s, dir) == 0);
    char d[IB_DIGEST_STRLEN + 1], d2[IB_DIGEST_STRLEN + 1];
    CHECK(ib_store_put_blob(d, s, "hello", 5) == 0);
    CHECK_STR(d, "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
    CHECK(ib_store_put_blob(d2, s, "hello", 5) == 0); /* idempotent */
    CHECK_STR(d2, d);
    uint64_t sz = 0;
    CHECK(ib_store_has_blob(s, d, &sz) == 1);
    CHECK_INT(sz, 5);
    char *buf;
    size_t len;
    CHECK(ib_store_read_blob(&buf, &len, s, d, 100) == 0);
    CHECK_INT(len, 5);
    CHECK_STR(buf, "hello");
    free(buf);
    CHECK(ib_store_read_blob(&buf, &len, s, d, 3) < 0); /* size cap */

    /* Streaming writer with a wrong expected digest stores nothing. */
    ib_blob_writer *w;
    CHECK(ib_store_blob_begin(&w, s) == 0);
    CHECK(ib_blob_write(w, "abc", 3) == 0);
    CHECK(ib_store_blob_commit(NULL, NULL, w, d) == IB_ECORRUPT);
    CHECK(!ib_store_has_blob(s, "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", NULL));

    /* A corrupted blob file is detected on read, never returned. */
    char *p = ib_store_blob_path(s, d);
    FILE *fp = fopen(p, "w");
    fputs("jello", fp);
    fclose(fp);
    free(p);
    CHECK(ib_store_read_blob(&buf, &len, s, d, 100) == IB_ECORRUPT);
    CHECK(strstr(ib_error_last(), "corrupt") != NULL);

    /* refs */
    CHECK(ib_store_set_ref(s, "harbor.local:8443/wepp/app:sha-1", d) == 0);
    CHECK(ib_store_get_ref(d2, s, "harbor.local:8443/wepp/app:sha-1") == 0);
    CHECK_STR(d2, d);
    CHECK(ib_store_get_ref(d2, s, "harbor.local:8443/wepp/app:sha-2") == IB_ENOTFOUND);
    /* names differing only in separators never share a file */
    CHECK(ib_store_get_ref(d2, s, "harbor.local:8443/wepp/app/sha-1") == IB_ENOTFOUND);
    ib_store_free(s);
}

/* The tmp sweep at store open: a build's scratch dir survives as long as its
 * lock is held, however old its mtime; once released it goes at once. Old
 * lock-less leftovers go after a day, fresh ones stay. */
static void test_scratch_sweep(const char *dir)
{
    ib_store *s, *s2;
    CHECK(ib_store_open(&s, dir) == 0);
    char *scratch = NULL;
    int fd = -1;
    CHECK(ib_store_scratch_dir(&scratch, &fd, s, "build-") == 0);
    CHECK(fd >= 0 && scratch && strstr(scratch, "/tmp/build-"));
    char *inner = ib_xasprintf("%s/run-0", scratch);
    CHECK(ib_fs_mkdir_p(inner, 0700) == 0);
    char *stale = ib_xasprintf("%s/tmp/build-legacy", dir), *fresh = ib_xasprintf("%s/tmp/build-fresh", dir);
    CHECK(ib_fs_mkdir_p(stale, 0700) == 0 && ib_fs_mkdir_p(fresh, 0700) == 0);
    /* two days old: the age alone used to get a running build's dir removed */
    struct timespec old[2] = {{time(NULL) - 2 * 86400, 0}, {time(NULL) - 2 * 86400, 0}};
    CHECK(utimensat(AT_FDCWD, scratch, old, 0) == 0 && utimensat(AT_FDCWD, stale, old, 0) == 0);
    CHECK(ib_store_open(&s2, dir) == 0); /* sweeps, as another build starting would */
    ib_store_free(s2);
    CHECK(access(inner, F_OK) == 0);
    CHECK(access(stale, F_OK) != 0);
    CHECK(access(fresh, F_OK) == 0);
    close(fd); /* the build is over (or was killed) */
    CHECK(ib_store_open(&s2, dir) == 0);
    ib_store_free(s2);
    CHECK(access(scratch, F_OK) != 0);
    ib_fs_rm_rf(fresh);
    free(inner);
    free(stale);
    free(fresh);
    free(scratch);
    ib_store_free(s);
}

static void test_image(const char *dir)
{
    ib_store *s;
    CHECK(ib_store_open(&s, dir) == 0);
    char layer[IB_DIGEST_STRLEN + 1], cfg[IB_DIGEST_STRLEN + 1], man[IB_DIGEST_STRLEN + 1];
    CHECK(ib_store_put_blob(layer, s, "not really gzip", 15) == 0);
    char *cfg_s = ib_xasprintf("{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{},\"rootfs\":{\"type\":\"layers\","
                               "\"diff_ids\":[\"%s\"]}}",
                               layer);
    CHECK(ib_store_put_blob(cfg, s, cfg_s, strlen(cfg_s)) == 0);
    /* a Docker schema2 manifest: its media types are normalised to OCI on load */
    char *man_s = ib_xasprintf(
        "{\"schemaVersion\":2,\"mediaType\":\"%s\",\"config\":{\"mediaType\":\"%s\",\"digest\":\"%s\",\"size\":%zu},"
        "\"layers\":[{\"mediaType\":\"%s\",\"digest\":\"%s\",\"size\":15}]}",
        IB_MT_DOCKER_MANIFEST, IB_MT_DOCKER_CONFIG, cfg, strlen(cfg_s), IB_MT_DOCKER_LAYER_GZIP, layer);
    CHECK(ib_store_put_blob(man, s, man_s, strlen(man_s)) == 0);
    ib_image *img;
    CHECK(ib_image_load(&img, s, man) == 0);
    CHECK_INT(img->nlayers, 1);
    CHECK_STR(img->layers[0].media_type, IB_MT_OCI_LAYER_GZIP);
    CHECK_STR(img->layers[0].digest, layer);
    CHECK_STR(img->diff_ids[0], layer);
    CHECK_INT(img->size, strlen(man_s));
    /* descriptor JSON round trip */
    json_t *j = ib_desc_to_json(&img->layers[0]);
    ib_desc back;
    CHECK(ib_desc_from_json(&back, j) == 0);
    CHECK_STR(back.media_type, img->layers[0].media_type);
    CHECK_STR(back.digest, layer);
    CHECK_INT(back.size, 15);
    char *dump = ib_json_dump(j);
    CHECK(strstr(dump, "\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\"") != NULL);
    free(dump);
    ib_desc_clear(&back);
    json_decref(j);
    ib_image_free(img);

    /* bad descriptors and a manifest whose layer is missing */
    json_t *bad = json_pack("{s:s,s:s,s:i}", "mediaType", "x", "digest", "sha256:123", "size", 1);
    CHECK(ib_desc_from_json(&back, bad) == IB_EINVALID);
    json_decref(bad);
    bad = json_pack("{s:s,s:s,s:i}", "mediaType", "x", "digest", layer, "size", -1);
    CHECK(ib_desc_from_json(&back, bad) == IB_EINVALID);
    json_decref(bad);
    char *missing = ib_xasprintf(
        "{\"schemaVersion\":2,\"mediaType\":\"%s\",\"config\":{\"mediaType\":\"%s\",\"digest\":\"%s\",\"size\":%zu},"
        "\"layers\":[{\"mediaType\":\"%s\",\"digest\":\"sha256:%064d\",\"size\":15}]}",
        IB_MT_OCI_MANIFEST, IB_MT_OCI_CONFIG, cfg, strlen(cfg_s), IB_MT_OCI_LAYER_GZIP, 0);
    char md[IB_DIGEST_STRLEN + 1];
    CHECK(ib_store_put_blob(md, s, missing, strlen(missing)) == 0);
    CHECK(ib_image_load(&img, s, md) < 0); /* diff_ids count mismatch or missing layer */
    free(missing);

    char ts[32];
    ib_rfc3339(ts, 1714564800);
    CHECK_STR(ts, "2024-05-01T12:00:00Z");
    free(cfg_s);
    free(man_s);
    ib_store_free(s);
}

static void test_platform(void)
{
    static const struct {
        const char *in, *out;
    } ok[] = {{"linux/amd64", "linux/amd64"},       {"linux/x86_64", "linux/amd64"},   {"linux/amd64/v1", "linux/amd64"},
              {"linux/amd64/v3", "linux/amd64/v3"}, {"linux/aarch64", "linux/arm64"},  {"linux/arm64/v8", "linux/arm64"},
              {"linux/arm", "linux/arm/v7"},        {"linux/arm/7", "linux/arm/v7"},   {"linux/armhf", "linux/arm/v7"},
              {"linux/armel", "linux/arm/v6"},      {"linux/arm/v5", "linux/arm/v5"},  {"Linux/ARM64", "linux/arm64"},
              {"linux/i386", "linux/386"},          {"linux/s390x", "linux/s390x"}};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        ib_platform p;
        char f[96];
        CHECK(ib_platform_parse(&p, ok[i].in, "--platform") == 0);
        ib_platform_format(f, sizeof f, &p);
        CHECK(strcmp(f, ok[i].out) == 0);
    }
    static const char *bad[] = {"arm64", "linux/", "/amd64", "linux/arm/v7/x", "linux//v7", "linux/amd 64", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ib_platform p;
        CHECK(ib_platform_parse(&p, bad[i], "--platform") == IB_EUSAGE);
        CHECK(strstr(ib_error_last(), "--platform") != NULL);
    }
    /* An index as Docker Hub serves them: arm/v5 listed before arm/v7, arm64
     * with variant v8, an attestation entry, amd64 last. */
    const char *idx = "{\"schemaVersion\":2,\"manifests\":["
                      "{\"digest\":\"sha256:" "1111111111111111111111111111111111111111111111111111111111111111\","
                      "\"platform\":{\"os\":\"linux\",\"architecture\":\"arm\",\"variant\":\"v5\"}},"
                      "{\"digest\":\"sha256:" "2222222222222222222222222222222222222222222222222222222222222222\","
                      "\"platform\":{\"os\":\"linux\",\"architecture\":\"arm\",\"variant\":\"v7\"}},"
                      "{\"digest\":\"sha256:" "3333333333333333333333333333333333333333333333333333333333333333\","
                      "\"platform\":{\"os\":\"linux\",\"architecture\":\"arm64\",\"variant\":\"v8\"}},"
                      "{\"digest\":\"sha256:" "4444444444444444444444444444444444444444444444444444444444444444\","
                      "\"platform\":{\"os\":\"unknown\",\"architecture\":\"unknown\"}},"
                      "{\"digest\":\"sha256:" "5555555555555555555555555555555555555555555555555555555555555555\","
                      "\"platform\":{\"os\":\"linux\",\"architecture\":\"amd64\"}}]}";
    static const struct {
        const char *want;
        char digit;
    } picks[] = {{"linux/arm", '2'},   {"linux/arm/v7", '2'},   {"linux/arm/v6", '1'}, {"linux/arm/v5", '1'},
                 {"linux/arm64", '3'}, {"linux/aarch64", '3'},  {"linux/amd64", '5'},  {"linux/amd64/v3", '5'}};
    for (size_t i = 0; i < sizeof picks / sizeof picks[0]; i++) {
        ib_platform w;
        char dg[IB_DIGEST_STRLEN + 1] = "";
        CHECK(ib_platform_parse(&w, picks[i].want, "--platform") == 0);
        CHECK(ib_platform_pick(dg, idx, strlen(idx), &w) == 0);
        CHECK(dg[7] == picks[i].digit);
    }
    ib_platform w;
    char dg[IB_DIGEST_STRLEN + 1];
    CHECK(ib_platform_parse(&w, "linux/riscv64", "--platform") == 0);
    CHECK(ib_platform_pick(dg, idx, strlen(idx), &w) == IB_ENOTFOUND);
    CHECK(strstr(ib_error_last(), "linux/riscv64") && strstr(ib_error_last(), "linux/arm/v7, linux/arm64, linux/amd64"));
    CHECK(ib_platform_parse(&w, "linux/arm64", "--platform") == 0);
    CHECK(ib_platform_pick(dg, "{nope", 5, &w) == IB_EINVALID);
}

int main(void)
{
    test_refs();
    test_platform();
    char *dir;
    CHECK(ib_fs_mkdtemp(&dir, "ib-ut-oci") == 0);
    test_store(dir);
    test_image(dir);
    test_scratch_sweep(dir);
    ib_fs_rm_rf(dir);
    free(dir);
    return ut_done();
}
