/* ib_gf_disk_sizes against git's own `cat-file --batch-check=%(objectsize:disk)`,
 * and ib_gf_analyze's tables and estimate on a small repository built with git. */
#include "ut.h"
#include "common/error.h"
#include "common/fs.h"
#include "gitfilter/analyze.h"
#include "gitfilter/filter.h"

#include <git2.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

static char *tmp, *repo_dir;

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int rc = system(cmd);
    if (rc != 0) fprintf(stderr, "command failed (%d): %s\n", rc, cmd);
    return rc;
}

#define GIT "git -C %s -c user.name=t -c user.email=t@example.com -c commit.gpgsign=false "

static void put(const char *rel, const void *data, size_t len)
{
    char *p = ib_fs_join(repo_dir, rel);
    char *slash = strrchr(p, '/');
    *slash = 0;
    ib_fs_mkdir_p(p, 0755);
    *slash = '/';
    FILE *f = fopen(p, "wb");
    CHECK(f != NULL);
    if (f) {
        fwrite(data, 1, len, f);
        fclose(f);
    }
    free(p);
}

static void put_str(const char *rel, const char *s) { put(rel, s, strlen(s)); }

/* Incompressible and unrelated between seeds, so git can neither deflate nor
 * delta the versions and each one costs its full size in the pack. */
static void put_random(const char *rel, size_t len, uint64_t seed)
{
    unsigned char *b = malloc(len);
    uint64_t x = seed * 0x9e3779b97f4a7c15ULL + 1;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b[i] = (unsigned char)(x >> 24);
    }
    put(rel, b, len);
    free(b);
}

static void commit(const char *msg) { CHECK(sh(GIT "add -A && " GIT "commit -qm '%s'", repo_dir, repo_dir, msg) == 0); }

/* Finds the table row for name; returns 1 and its columns when found. */
static int find_row(const char *text, const char *name, unsigned long long *unp, unsigned long long *pk,
                    unsigned long long *ver, char state[16])
{
    for (const char *l = text; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
        int off = 0;
        if (sscanf(l, "%llu %llu %llu %15s %n", unp, pk, ver, state, &off) != 4 || !off) continue;
        const char *nl = strchr(l + off, '\n');
        size_t n = nl ? (size_t)(nl - (l + off)) : strlen(l + off);
        if (n == strlen(name) && memcmp(l + off, name, n) == 0) return 1;
    }
    return 0;
}

/* The name in the first data row (third line). */
static void first_row(char *out, size_t cap, const char *text)
{
    out[0] = 0;
    const char *l = strchr(text, '\n');
    l = l ? strchr(l + 1, '\n') : NULL;
    if (!l) return;
    unsigned long long a, b, c;
    char st[16];
    int off = 0;
    if (sscanf(l + 1, "%llu %llu %llu %15s %n", &a, &b, &c, st, &off) != 4) return;
    const char *nl = strchr(l + 1 + off, '\n');
    size_t n = nl ? (size_t)(nl - (l + 1 + off)) : strlen(l + 1 + off);
    if (n >= cap) n = cap - 1;
    memcpy(out, l + 1 + off, n);
    out[n] = 0;
}

static char *slurp(const char *dir, const char *file)
{
    char *p = ib_fs_join(dir, file), *data = NULL;
    size_t len;
    if (ib_fs_read_all(&data, &len, p, 64 << 20) != 0) data = NULL;
    free(p);
    return data;
}

/* Inverse of ib_human_size, with the rounding error of its one decimal. */
static double unhuman(const char *s, double *tolerance)
{
    double v = 0;
    char unit[8] = "";
    if (sscanf(s, "%lf %7s", &v, unit) != 2) return -1;
    double m = 1;
    if (!strncmp(unit, "kB", 2)) m = 1e3;
    else if (!strncmp(unit, "MB", 2)) m = 1e6;
    else if (!strncmp(unit, "GB", 2)) m = 1e9;
    *tolerance = m == 1 ? 0.5 : 0.05 * m;
    return v * m;
}

static void check_widths(const char *text)
{
    int worst = 0;
    for (const char *l = text; *l;) {
        int cols = 0;
        for (; *l && *l != '\n'; l++) cols += ((unsigned char)*l & 0xc0) != 0x80;
        if (cols > worst) worst = cols;
        if (*l) l++;
    }
    CHECK(worst <= 100);
}

static void test_corrupt_idx(void)
{
    char *bad = ib_fs_join(tmp, "bad");
    CHECK(sh("git init -q %s", bad) == 0);
    char *idx = ib_fs_join(bad, ".git/objects/pack/pack-bad.idx");
    char *pack = ib_fs_join(bad, ".git/objects/pack/pack-bad.pack");
    unsigned char buf[8 + 1024 + 28 + 40] = {0xff, 't', 'O', 'c', 0, 0, 0, 2};
    unsigned char packb[64] = "PACK";
    FILE *f = fopen(pack, "wb");
    fwrite(packb, 1, sizeof packb, f);
    fclose(f);
    git_repository *r = NULL;
    CHECK(git_repository_open(&r, bad) == 0);
    ib_oidmap *m = NULL;

    /* The fan-out promises 5 objects, the file holds room for none. */
    for (int i = 0; i < 256; i++) buf[8 + 4 * i + 3] = 5;
    f = fopen(idx, "wb");
    fwrite(buf, 1, 8 + 1024 + 40, f);
    fclose(f);
    CHECK_INT(ib_gf_disk_sizes(&m, r), IB_ECORRUPT);
    CHECK(strstr(ib_error_last(), "pack-bad.idx") != NULL);
    CHECK(m == NULL);

    /* One object whose offset points into a large-offset table that is empty. */
    memset(buf + 8, 0, 1024);
    for (int i = 0; i < 256; i++) buf[8 + 4 * i + 3] = 1;
    memset(buf + 8 + 1024, 0xab, 20);
    buf[8 + 1024 + 24] = 0x80;
    f = fopen(idx, "wb");
    fwrite(buf, 1, sizeof buf, f);
    fclose(f);
    CHECK_INT(ib_gf_disk_sizes(&m, r), IB_ECORRUPT);
    CHECK(strstr(ib_error_last(), "large offset") != NULL);

    /* Same, with a plain offset past the pack's end. */
    buf[8 + 1024 + 24] = 0;
    buf[8 + 1024 + 27] = 200;
    f = fopen(idx, "wb");
    fwrite(buf, 1, sizeof buf, f);
    fclose(f);
    CHECK_INT(ib_gf_disk_sizes(&m, r), IB_ECORRUPT);
    CHECK(strstr(ib_error_last(), "outside its pack") != NULL);

    /* In range: one object spanning the pack up to its checksum. */
    buf[8 + 1024 + 27] = 12;
    f = fopen(idx, "wb");
    fwrite(buf, 1, sizeof buf, f);
    fclose(f);
    CHECK_INT(ib_gf_disk_sizes(&m, r), 0);
    CHECK_INT(m ? ib_oidmap_count(m) : 0, 1);
    uint64_t v = 0;
    ib_oidmap_iter(m, &(size_t){0}, &(git_oid){{0}}, &v);
    CHECK_INT(v, sizeof packb - 20 - 12);
    ib_oidmap_free(m);

    git_repository_free(r);
    free(idx);
    free(pack);
    free(bad);
}

int main(void)
{
    git_libgit2_init();
    CHECK(ib_fs_mkdtemp(&tmp, "ib-analyze") == 0);
    setenv("HOME", tmp, 1); /* no user config (signing, hooks, default branch) */
    setenv("GIT_CONFIG_NOSYSTEM", "1", 1);
    repo_dir = ib_fs_join(tmp, "repo");
    CHECK(sh("git init -q %s", repo_dir) == 0);

    char longname[200] = "docs/";
    for (int i = 0; i < 150; i++) strcat(longname, i % 10 == 9 ? "_" : "x");
    strcat(longname, ".md");

    put_str("src/main.c", "int main(void) { return 0; }\n");
    put_str("README.md", "# demo\n");
    put_str("Makefile", "all:\n\tcc src/main.c\n");
    put_str("old.txt", "soon gone\n");
    put_str("data/readme.txt", "county database\n");
    put_random("data/big.bin", 200000, 1);
    commit("one");
    put_str("src/main.c", "int main(void) { return 1; }\n");
    put_random("data/big.bin", 200000, 2);
    commit("two");
    put_str(longname, "long\n");
    put_str("docs/guide.md", "guide\n");
    commit("three");
    put_random("data/big.bin", 200000, 3);
    CHECK(sh(GIT "rm -q old.txt", repo_dir) == 0);
    commit("four");
    put_str("README.md", "# demo\nmore\n");
    commit("five");
    /* A branch not merged into HEAD, an annotated tag, a tag of a blob. */
    CHECK(sh(GIT "checkout -q -b side HEAD~1 && " GIT "tag -a -m v v1 HEAD~3 && " GIT "tag blobtag HEAD:README.md",
             repo_dir, repo_dir, repo_dir) == 0);
    put_str("side.txt", "side\n");
    commit("side");
    CHECK(sh(GIT "checkout -q - && " GIT "gc -q", repo_dir, repo_dir) == 0);
    put_str("loose.txt", "a loose object after gc\n");
    CHECK(sh(GIT "hash-object -w loose.txt >/dev/null", repo_dir) == 0);

    git_repository *repo = NULL;
    CHECK(git_repository_open(&repo, repo_dir) == 0);

    /* --- disk sizes: the peer is git itself -------------------------------- */
    ib_oidmap *disk = NULL;
    CHECK(ib_gf_disk_sizes(&disk, repo) == 0);
    ib_oidmap *want = ib_oidmap_new();
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "git -C %s cat-file --batch-all-objects --batch-check='%%(objectname) %%(objectsize:disk)'", repo_dir);
    FILE *p = popen(cmd, "r");
    char line[512];
    int listed = 0, same = 0;
    uint64_t total = 0;
    while (p && fgets(line, sizeof line, p)) {
        char hex[64];
        unsigned long long sz;
        if (sscanf(line, "%63s %llu", hex, &sz) != 2) continue;
        git_oid id;
        CHECK(git_oid_fromstr(&id, hex) == 0);
        ib_oidmap_set(want, &id, sz);
        listed++;
        total += sz;
        uint64_t got = 0;
        if (disk && ib_oidmap_get(disk, &id, &got) && got == sz) same++;
        else fprintf(stderr, "disk size of %s: got %llu, git says %llu\n", hex, (unsigned long long)got, sz);
    }
    if (p) pclose(p);
    CHECK(listed > 20);
    CHECK_INT(same, listed);
    CHECK_INT(disk ? ib_oidmap_count(disk) : 0, listed);
    ib_oidmap_free(disk);

    /* The three versions of data/big.bin, and what they cost on disk. */
    snprintf(cmd, sizeof cmd, "git -C %s rev-list --objects --all", repo_dir);
    p = popen(cmd, "r");
    int nbig = 0;
    uint64_t big_packed = 0, data_packed = 0;
    while (p && fgets(line, sizeof line, p)) {
        char hex[64], path[256] = "";
        if (sscanf(line, "%63s %255s", hex, path) < 1 || strncmp(path, "data/", 5) != 0) continue;
        git_oid id;
        uint64_t sz = 0;
        git_oid_fromstr(&id, hex);
        CHECK(ib_oidmap_get(want, &id, &sz));
        data_packed += sz;
        if (!strcmp(path, "data/big.bin")) {
            nbig++;
            big_packed += sz;
        }
    }
    if (p) pclose(p);
    CHECK_INT(nbig, 3);
    CHECK(big_packed >= 3 * 200000);
    ib_oidmap_free(want);

    /* --- analysis without a filter ----------------------------------------- */
    ib_gf_analysis *a = NULL;
    CHECK(ib_gf_analyze(&a, repo, NULL) == 0);
    char *out1 = ib_fs_join(tmp, "out1/nested");
    CHECK(a && ib_gf_analysis_write(a, out1) == 0);
    char *dirs = slurp(out1, "directories.txt"), *exts = slurp(out1, "extensions.txt");
    char *paths = slurp(out1, "paths.txt"), *sum = slurp(out1, "summary.txt");
    CHECK(dirs && paths && exts && sum);
    if (dirs && paths && exts && sum) {
        CHECK(!strncmp(dirs, "=== All directories by reverse size ===\nFormat: ", 48));
        CHECK(!strncmp(exts, "=== All extensions by reverse size ===\nFormat: ", 47));
        CHECK(!strncmp(paths, "=== All paths by reverse size ===\nFormat: ", 42));
        char name[256];
        first_row(name, sizeof name, dirs);
        CHECK_STR(name, "data");
        first_row(name, sizeof name, paths);
        CHECK_STR(name, "data/big.bin");
        first_row(name, sizeof name, exts);
        CHECK_STR(name, ".bin");

        unsigned long long unp, pk, ver;
        char st[16];
        CHECK(find_row(paths, "data/big.bin", &unp, &pk, &ver, st));
        CHECK_INT(ver, 3);
        CHECK_INT(unp, 600000);
        CHECK_INT(pk, big_packed);
        CHECK_STR(st, "present");
        CHECK(find_row(paths, "old.txt", &unp, &pk, &ver, st));
        CHECK_STR(st, "deleted");
        CHECK_INT(unp, 10);
        CHECK(find_row(paths, "side.txt", &unp, &pk, &ver, st));
        CHECK_STR(st, "deleted");
        CHECK_INT(ver, 1);
        CHECK(find_row(paths, "src/main.c", &unp, &pk, &ver, st));
        CHECK_INT(ver, 2);
        CHECK(find_row(paths, "README.md", &unp, &pk, &ver, st));
        CHECK_INT(ver, 2);
        CHECK(find_row(paths, longname, &unp, &pk, &ver, st));
        CHECK(!find_row(paths, "loose.txt", &unp, &pk, &ver, st)); /* in no commit */

        CHECK(find_row(dirs, "data", &unp, &pk, &ver, st));
        CHECK_INT(ver, 4);
        CHECK_INT(pk, data_packed);
        CHECK_STR(st, "present");
        CHECK(find_row(dirs, "docs", &unp, &pk, &ver, st));
        CHECK_INT(ver, 2);
        CHECK(find_row(exts, "<no extension>", &unp, &pk, &ver, st)); /* Makefile */
        CHECK_INT(ver, 1);
        CHECK(find_row(exts, ".txt", &unp, &pk, &ver, st));
        CHECK_INT(ver, 3); /* old, side, data/readme */

        CHECK(!strncmp(sum, "History: 6 commits,", 19));
        CHECK(strstr(sum, "\xe2\x80\xa6") != NULL); /* the long name, cut */
        CHECK(strstr(sum, "would remove") == NULL);
        check_widths(sum);
    }
    free(dirs);
    free(exts);
    free(paths);
    free(sum);
    char *s3 = a ? ib_gf_analysis_summary(a, 1) : NULL;
    CHECK(s3 && strstr(s3, "old.txt") == NULL && strstr(s3, "data/big.bin") != NULL);
    free(s3);
    ib_gf_analysis_free(a);

    /* --- with a path filter: the estimate drops what data/ costs ----------- */
    ib_gf_filter *f = ib_gf_filter_new();
    CHECK(ib_gf_filter_add_path(f, "data") == 0);
    a = NULL;
    CHECK(ib_gf_analyze(&a, repo, f) == 0);
    char *s = a ? ib_gf_analysis_summary(a, 5) : NULL;
    CHECK(s != NULL);
    if (s) {
        CHECK(strstr(s, "would remove: 2 paths, 4 blobs, ") != NULL);
        const char *e = strstr(s, "estimated .git objects after slim: ");
        CHECK(e != NULL);
        if (e) {
            e += strlen("estimated .git objects after slim: ");
            const char *now = strstr(e, "(now ");
            double te = 0, tn = 0;
            double est = unhuman(e, &te), cur = now ? unhuman(now + 5, &tn) : -1;
            CHECK(cur > 0 && est > 0);
            CHECK(cur - est >= (double)data_packed - te - tn);
            CHECK(cur >= (double)total - tn && cur <= (double)total + tn);
        }
        check_widths(s);
    }
    free(s);
    ib_gf_analysis_free(a);
    ib_gf_filter_free(f);

    /* --- with a size filter: only big.bin's versions go ---------------------- */
    f = ib_gf_filter_new();
    ib_gf_filter_set_max_blob(f, 100000);
    a = NULL;
    CHECK(ib_gf_analyze(&a, repo, f) == 0);
    s = a ? ib_gf_analysis_summary(a, 5) : NULL;
    CHECK(s && strstr(s, "would remove: 1 paths, 3 blobs, ") != NULL);
    free(s);
    ib_gf_analysis_free(a);
    ib_gf_filter_free(f);

    /* A filter without rules gives no estimate. */
    f = ib_gf_filter_new();
    a = NULL;
    CHECK(ib_gf_analyze(&a, repo, f) == 0);
    s = a ? ib_gf_analysis_summary(a, 5) : NULL;
    CHECK(s && strstr(s, "would remove") == NULL);
    free(s);
    ib_gf_analysis_free(a);
    ib_gf_filter_free(f);

    git_repository_free(repo);
    test_corrupt_idx();

    free(out1);
    ib_fs_rm_rf(tmp);
    free(repo_dir);
    free(tmp);
    git_libgit2_shutdown();
    return ut_done();
}
