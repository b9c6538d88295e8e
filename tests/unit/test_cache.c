/* The local layer cache: entries carry a checksum and are cross-checked
 * against their blob, so a damaged one is removed and reported, never used;
 * the "rebuilt:" notes name what changed (lists compared as lists, modes,
 * USER/WORKDIR/SHELL, SOURCE_DATE_EPOCH, a pruned entry). */
#include "ut.h"
#include "build/cache.h"
#include "common/error.h"
#include "common/fs.h"
#include "layer/writer.h"
#include "oci/image.h"
#include "oci/store.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int str_content(void *src, const char *path, ib_sink_fn sink, void *ctx)
{
    (void)path;
    return sink(ctx, src, strlen(src));
}

/* explain(old inputs, new inputs) for one step, through a fresh record. */
static char *explain(ib_cache *c, const char *was, const char *now)
{
    static int n;
    char loc[32];
    snprintf(loc, sizeof loc, "step-%d", n++);
    CHECK(ib_cache_record(c, loc, was) == 0);
    return ib_cache_explain(c, loc, now);
}

#define EXPECT_NOTE(c, was, now, want)                                                                                 \
    do {                                                                                                               \
        char *ut_note = explain(c, was, now);                                                                          \
        CHECK_STR(ut_note, want);                                                                                      \
        free(ut_note);                                                                                                 \
    } while (0)

/* The inputs changed, so did the key: "key sha256:k1" -> "key sha256:k9" (in place). */
static char *rekey(char *s)
{
    char *k = strstr(s, "key sha256:k1");
    if (k) k[12] = '9';
    return s;
}

static void test_explain(ib_cache *c)
{
    /* RUN: argv repeats, so a changed USER/WORKDIR/SHELL used to read as "argv changed" */
    const char *run = "instruction RUN make\nparent sha256:p\nargv 7:/bin/sh\nargv 2:-c\nargv 4:make\n"
                      "src $PATH sha256:aaaa\nuser \nworkdir /\nnetwork host\ncompression gzip mtime=315532800\n"
                      "key sha256:k1\n";
    EXPECT_NOTE(c, run, run, "inputs unchanged, but the cached layer was pruned since the last build");
    char *t = ib_xstrdup(run);
    memcpy(strstr(t, "key sha256:k1"), "key sha256:k2", 13);
    EXPECT_NOTE(c, run, t, "inputs unchanged, but the layer is not in this cache (pruned, --no-cache or a new cache dir)");
    free(t);
    char *u = ib_xasprintf("%.*suser app\n%s", (int)(strstr(run, "user ") - run), run, strstr(run, "workdir"));
    EXPECT_NOTE(c, run, rekey(u), "user changed (root -> app)");
    free(u);
    char *w = ib_xasprintf("%.*sworkdir /app\n%s", (int)(strstr(run, "workdir") - run), run, strstr(run, "network"));
    EXPECT_NOTE(c, run, rekey(w), "workdir changed (/ -> /app)");
    free(w);
    char *sh = ib_xasprintf("%.*sargv 9:/bin/bash\n%s", (int)(strstr(run, "argv 7") - run), run, strstr(run, "argv 2"));
    EXPECT_NOTE(c, run, rekey(sh), "SHELL changed (/bin/sh -c -> /bin/bash -c)");
    free(sh);
    char *sde = ib_xasprintf("%.*scompression gzip mtime=0\n%s", (int)(strstr(run, "compression") - run), run,
                             strstr(run, "key"));
    EXPECT_NOTE(c, run, rekey(sde), "SOURCE_DATE_EPOCH changed (layer file times 1980-01-01 -> 1970-01-01)");
    free(sde);
    char *z = ib_xasprintf("%.*scompression zstd mtime=315532800\n%s", (int)(strstr(run, "compression") - run), run,
                           strstr(run, "key"));
    EXPECT_NOTE(c, run, rekey(z), "compression changed (gzip -> zstd)");
    free(z);
    char *env = ib_xasprintf("%.*s$PATH sha256:bbbb\n%s", (int)(strstr(run, "$PATH") - run), run, strstr(run, "user"));
    EXPECT_NOTE(c, run, rekey(env), "$PATH changed (sha256:aaaa -> sha256:bbbb)");
    free(env);
    /* an older record (no key line, no modes): lists compare equal, no false "argv changed" */
    const char *old_run = "instruction RUN make\nparent sha256:p\nargv 7:/bin/sh\nargv 2:-c\nargv 4:make\nuser \n";
    EXPECT_NOTE(c, old_run, old_run,
                "inputs unchanged, but the layer is not in this cache (pruned, --no-cache or a new cache dir)");

    /* COPY with several sources */
    const char *cp = "instruction COPY app/ /app/\nparent sha256:p\ncompression gzip mtime=315532800\n"
                     "src app/ 0755 dir\nsrc app/a.py 0644 git:1111111111111111\nsrc app/run.sh 0644 git:2222222222222222\n"
                     "src app/z.py 0644 git:3333333333333333\ndest /app\nentries sha256:e1\nkey sha256:k1\n";
    EXPECT_NOTE(c, cp, cp, "inputs unchanged, but the cached layer was pruned since the last build");
    char *x = ib_xstrdup(cp);
    memcpy(strstr(x, "0644 git:2222"), "0755", 4);
    memcpy(strstr(x, "entries sha256:e1"), "entries sha256:e2", 17);
    memcpy(strstr(x, "key sha256:k1"), "key sha256:k2", 13);
    EXPECT_NOTE(c, cp, x, "app/run.sh mode changed (0644 -> 0755)");
    free(x);
    const char *cp2 = "instruction COPY app/ /app/\nparent sha256:p\ncompression gzip mtime=315532800\n"
                      "src app/ 0755 dir\nsrc app/a.py 0644 git:1111111111111111\nsrc app/b.py 0644 git:4444444444444444\n"
                      "src app/run.sh 0644 git:2222222222222222\ndest /app\nentries sha256:e3\nkey sha256:k3\n";
    EXPECT_NOTE(c, cp, cp2, "app/b.py added, app/z.py removed");
    const char *cp3 = "instruction COPY app/ /app/\nparent sha256:p\ncompression gzip mtime=315532800\n"
                      "src app/ 0755 dir\nsrc app/a.py 0644 git:5555555555555555\nsrc app/b.py 0644 git:4444444444444444\n"
                      "src app/c.py 0644 git:6666666666666666\nsrc app/run.sh 0755 git:2222222222222222\n"
                      "dest /app\nentries sha256:e4\nkey sha256:k4\n";
    EXPECT_NOTE(c, cp, cp3,
                "app/a.py changed (git:111111111111 -> git:555555555555), app/b.py added, app/c.py added and 2 more changed");
    const char *cp4 = "instruction COPY app/ /app/\nparent sha256:p\ncompression gzip mtime=315532800\n"
                      "src app/ 0755 dir\nsrc app/a.py 0644 git:1111111111111111\nsrc app/run.sh 0644 git:2222222222222222\n"
                      "src app/z.py 0644 git:3333333333333333\ndest /srv\nentries sha256:e5\nkey sha256:k5\n";
    EXPECT_NOTE(c, cp, cp4, "dest changed (/app -> /srv)");
    const char *cp5 = "instruction COPY app/ /app/\nparent sha256:q\ncompression gzip mtime=315532800\n"
                      "src app/ 0755 dir\nsrc app/a.py 0644 git:1111111111111111\nsrc app/run.sh 0644 git:2222222222222222\n"
                      "src app/z.py 0644 git:3333333333333333\ndest /app\nentries sha256:e1\nkey sha256:k6\n";
    EXPECT_NOTE(c, cp, cp5, "an earlier step changed");
    char *none = ib_cache_explain(c, "never-recorded", cp);
    CHECK_STR(none, "first build of this step");
    free(none);
}

static char *entry_file(ib_store *s, const char *key)
{
    return ib_xasprintf("%s/cache/entries/%s", ib_store_dir(s), ib_digest_hex(key));
}

static void edit_entry(ib_store *s, const char *key, const char *field, const char *val)
{
    char *p = entry_file(s, key);
    json_t *j = json_load_file(p, 0, NULL);
    CHECK(j != NULL);
    if (val) json_object_set_new(j, field, json_string(val));
    else json_object_del(j, field);
    CHECK(json_dump_file(j, p, 0) == 0);
    json_decref(j);
    free(p);
}

static void test_entries(ib_cache *c, ib_store *s)
{
    ib_layer_builder *lb = ib_layer_builder_new();
    ib_layer_entry e = {.path = "app/x", .type = IB_LE_FILE, .mode = 0644, .size = 6, .src = "hello\n",
                        .content = str_content};
    CHECK(ib_layer_add(lb, &e) == 0);
    ib_layer_result lr, got;
    CHECK(ib_layer_write(&lr, lb, s, IB_COMP_GZIP, 1, 315532800) == 0);
    ib_layer_builder_free(lb);
    const char *key = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    char *damaged = NULL;
    CHECK(ib_cache_get(&got, &damaged, c, key) == 0 && damaged == NULL);
    CHECK(ib_cache_put(c, key, &lr, "COPY x /app/x") == 0);
    CHECK(ib_cache_get(&got, &damaged, c, key) == 1 && damaged == NULL);
    CHECK_STR(got.diff_id, lr.diff_id);
    CHECK_STR(got.media_type, IB_MT_OCI_LAYER_GZIP);

    /* an edited diffID: the checksum no longer matches; removed, reported */
    edit_entry(s, key, "diff_id", "sha256:0000000000000000000000000000000000000000000000000000000000000000");
    CHECK(ib_cache_get(&got, &damaged, c, key) == 0);
    CHECK_STR(damaged, "the cache entry was damaged (checksum mismatch) and was removed");
    free(damaged);
    char *p = entry_file(s, key);
    CHECK(access(p, F_OK) != 0);
    /* an entry of an older imgbuild (no checksum) is treated as torn too */
    CHECK(ib_cache_put(c, key, &lr, "COPY x /app/x") == 0);
    edit_entry(s, key, "check", NULL);
    CHECK(ib_cache_get(&got, &damaged, c, key) == 0);
    CHECK_STR(damaged, "the cache entry was damaged (no checksum: written by an older imgbuild) and was removed");
    free(damaged);
    CHECK(access(p, F_OK) != 0);
    /* a consistent entry whose media type is not what the blob is */
    ib_layer_result lie = lr;
    lie.media_type = IB_MT_OCI_LAYER_ZSTD;
    CHECK(ib_cache_put(c, key, &lie, "COPY x /app/x") == 0);
    CHECK(ib_cache_get(&got, &damaged, c, key) == 0);
    CHECK(damaged && strstr(damaged, "not compressed as its media type says"));
    free(damaged);
    /* uncompressed: diffID and digest must be one */
    lie.media_type = IB_MT_OCI_LAYER;
    CHECK(ib_cache_put(c, key, &lie, "COPY x /app/x") == 0);
    CHECK(ib_cache_get(&got, &damaged, c, key) == 0);
    CHECK(damaged && strstr(damaged, "diffID differs"));
    free(damaged);
    /* a truncated blob: the entry goes, and so does the blob */
    CHECK(ib_cache_put(c, key, &lr, "COPY x /app/x") == 0);
    char *bp = ib_store_blob_path(s, lr.digest);
    CHECK(truncate(bp, 10) == 0);
    CHECK(ib_cache_get(&got, &damaged, c, key) == 0);
    CHECK(damaged && strstr(damaged, "has another size"));
    free(damaged);
    free(bp);
    free(p);

    CHECK_STR(ib_cache_sniff_layer_mt("\x1f\x8b\x08\x00", 4), IB_MT_OCI_LAYER_GZIP);
    CHECK_STR(ib_cache_sniff_layer_mt("\x28\xb5\x2f\xfd", 4), IB_MT_OCI_LAYER_ZSTD);
    CHECK_STR(ib_cache_sniff_layer_mt("app/", 4), IB_MT_OCI_LAYER);
    CHECK_STR(ib_cache_sniff_layer_mt("", 0), IB_MT_OCI_LAYER);
}

int main(void)
{
    char *dir;
    CHECK(ib_fs_mkdtemp(&dir, "ib-ut-cache") == 0);
    ib_store *s;
    ib_cache *c;
    CHECK(ib_store_open(&s, dir) == 0);
    CHECK(ib_cache_open(&c, s) == 0);
    test_explain(c);
    test_entries(c, s);
    ib_cache_free(c);
    ib_store_free(s);
    ib_fs_rm_rf(dir);
    free(dir);
    return ut_done();
}
