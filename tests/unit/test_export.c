#include "ut.h"
#include "gitfilter/export.h"
#include "common/error.h"
#include "common/fs.h"

#include <dirent.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

typedef struct {
    size_t calls, last_done, last_total;
    uint64_t last_bytes, last_total_bytes;
} progress;

static void on_progress(void *ud, size_t done_files, size_t total_files, uint64_t done_bytes, uint64_t total_bytes)
{
    progress *p = ud;
    p->calls++;
    p->last_done = done_files;
    p->last_total = total_files;
    p->last_bytes = done_bytes;
    p->last_total_bytes = total_bytes;
}

static void sha256_hex(char out[65], const void *p, size_t n)
{
    unsigned char md[32];
    unsigned int len = 0;
    EVP_Digest(p, n, md, &len, EVP_sha256(), NULL);
    for (unsigned i = 0; i < 32; i++) sprintf(out + 2 * i, "%02x", md[i]);
}

static char *slurp(const char *path, size_t *len)
{
    char *s = NULL;
    size_t n = 0;
    if (ib_fs_read_all(&s, &n, path, 1 << 24) < 0) return NULL;
    if (len) *len = n;
    return s;
}

static char *path2(const char *a, const char *b) { return ib_fs_join(a, b); }

static int dir_entries(const char *path)
{
    DIR *d = opendir(path);
    if (!d) return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) n++;
    closedir(d);
    return n;
}

/* Appends one MANIFEST line the way the format documents it (dest pre-quoted by the caller). */
static void add_line(char *buf, size_t cap, const char *dest_field, const git_oid *oid, const void *content,
                     size_t len)
{
    char hex[GIT_OID_HEXSZ + 1], sha[65];
    git_oid_tostr(hex, sizeof hex, oid);
    sha256_hex(sha, content, len);
    size_t used = strlen(buf);
    snprintf(buf + used, cap - used, "%s\t%s\t%zu\t%s\n", dest_field, hex, len, sha);
}

int main(void)
{
    git_libgit2_init();
    umask(022);
    char *base = NULL;
    CHECK(ib_fs_mkdtemp(&base, "ib-export-test") == 0);
    char *repo_dir = path2(base, "repo");
    git_repository *repo = NULL;
    CHECK(git_repository_init(&repo, repo_dir, 0) == 0);

    const char *hello = "hello\n";
    const char *script = "#!/bin/sh\necho hi\n";
    const char *target = "../a/b/hello.txt";
    const char *other = "other content\n";
    size_t big_len = 50000;
    char *big = malloc(big_len);
    for (size_t i = 0; i < big_len; i++) big[i] = (char)(i * 31 + 7);

    git_oid o_hello, o_script, o_target, o_big, o_other;
    CHECK(git_blob_create_from_buffer(&o_hello, repo, hello, strlen(hello)) == 0);
    CHECK(git_blob_create_from_buffer(&o_script, repo, script, strlen(script)) == 0);
    CHECK(git_blob_create_from_buffer(&o_target, repo, target, strlen(target)) == 0);
    CHECK(git_blob_create_from_buffer(&o_big, repo, big, big_len) == 0);
    CHECK(git_blob_create_from_buffer(&o_other, repo, other, strlen(other)) == 0);

    ib_gf_export_item items[] = {
        {"z.txt", o_other, GIT_FILEMODE_BLOB},
        {"bin/run.sh", o_script, GIT_FILEMODE_BLOB_EXECUTABLE},
        {"a/b/hello.txt", o_hello, GIT_FILEMODE_BLOB},
        {"links/hello", o_target, GIT_FILEMODE_LINK},
        {"big.bin", o_big, GIT_FILEMODE_BLOB},
        {"odd\tname", o_hello, GIT_FILEMODE_BLOB},
    };
    size_t n = sizeof items / sizeof items[0];
    uint64_t total = strlen(other) + strlen(script) + strlen(hello) + strlen(target) + big_len + strlen(hello);

    /* Sorted bytewise by dest; the TAB name is C-quoted like git does. */
    char want[4096] = "# imgbuild slim export: path\tblob\tsize\tsha256\n";
    add_line(want, sizeof want, "a/b/hello.txt", &o_hello, hello, strlen(hello));
    add_line(want, sizeof want, "big.bin", &o_big, big, big_len);
    add_line(want, sizeof want, "bin/run.sh", &o_script, script, strlen(script));
    add_line(want, sizeof want, "links/hello", &o_target, target, strlen(target));
    add_line(want, sizeof want, "\"odd\\tname\"", &o_hello, hello, strlen(hello));
    add_line(want, sizeof want, "z.txt", &o_other, other, strlen(other));

    /* First run: everything written, dir created (mkdir -p). */
    char *out = path2(base, "data/wepppy");
    char *manifest = path2(out, "MANIFEST");
    ib_gf_export_stats st;
    progress pr = {0};
    int r = ib_gf_export(&st, repo, out, items, n, on_progress, &pr);
    if (r) fprintf(stderr, "export: %s\n", ib_error_last());
    CHECK_INT(r, 0);
    CHECK_INT(st.files, n);
    CHECK_INT(st.written, n);
    CHECK_INT(st.present, 0);
    CHECK_INT(st.bytes, total);
    CHECK(pr.calls >= 2); /* after the (parallel) writes and after the read-back */
    CHECK_INT(pr.last_done, n);
    CHECK_INT(pr.last_total, n);
    CHECK_INT(pr.last_bytes, total);
    CHECK_INT(pr.last_total_bytes, total);

    char *p, *s;
    size_t len = 0;
    struct stat sb;
    p = path2(out, "a/b/hello.txt");
    s = slurp(p, NULL);
    CHECK_STR(s, hello);
    CHECK(stat(p, &sb) == 0 && (sb.st_mode & 07777) == 0644);
    free(s);
    free(p);
    p = path2(out, "bin/run.sh");
    s = slurp(p, NULL);
    CHECK_STR(s, script);
    CHECK(stat(p, &sb) == 0 && (sb.st_mode & 07777) == 0755);
    free(s);
    free(p);
    p = path2(out, "bin");
    CHECK(stat(p, &sb) == 0 && S_ISDIR(sb.st_mode) && (sb.st_mode & 07777) == 0755);
    free(p);
    p = path2(out, "big.bin");
    s = slurp(p, &len);
    CHECK(s && len == big_len && !memcmp(s, big, big_len));
    free(s);
    free(p);
    p = path2(out, "links/hello");
    char lbuf[256] = {0};
    CHECK(lstat(p, &sb) == 0 && S_ISLNK(sb.st_mode));
    CHECK(readlink(p, lbuf, sizeof lbuf - 1) == (ssize_t)strlen(target));
    CHECK_STR(lbuf, target);
    free(p);
    p = path2(out, "odd\tname");
    s = slurp(p, NULL);
    CHECK_STR(s, hello);
    free(s);
    free(p);
    s = slurp(manifest, NULL);
    CHECK_STR(s, want);
    free(s);
    CHECK_INT(dir_entries(out), 7); /* a big.bin bin links odd<TAB>name z.txt MANIFEST: no temp files left */
    struct stat m1;
    CHECK(stat(manifest, &m1) == 0);

    /* Second run is idempotent: nothing rewritten, MANIFEST untouched. */
    p = path2(out, "bin/run.sh");
    CHECK(chmod(p, 0644) == 0); /* a lost exec bit is repaired, not an error */
    r = ib_gf_export(&st, repo, out, items, n, NULL, NULL);
    if (r) fprintf(stderr, "export: %s\n", ib_error_last());
    CHECK_INT(r, 0);
    CHECK_INT(st.written, 0);
    CHECK_INT(st.present, n);
    CHECK_INT(st.bytes, total);
    CHECK(stat(p, &sb) == 0 && (sb.st_mode & 07777) == 0755);
    free(p);
    struct stat m2;
    CHECK(stat(manifest, &m2) == 0);
    CHECK(m1.st_ino == m2.st_ino && m1.st_mtim.tv_sec == m2.st_mtim.tv_sec &&
          m1.st_mtim.tv_nsec == m2.st_mtim.tv_nsec);
    s = slurp(manifest, NULL);
    CHECK_STR(s, want);
    free(s);

    /* A dest holding other bytes is never overwritten. */
    p = path2(out, "z.txt");
    CHECK(ib_fs_write_atomic(p, "local edit\n", 11, 0644) == 0);
    r = ib_gf_export(&st, repo, out, items, n, NULL, NULL);
    CHECK_INT(r, IB_EINVALID);
    CHECK(strstr(ib_error_last(), "z.txt") != NULL);
    CHECK(strstr(ib_error_last(), "different content") != NULL);
    s = slurp(p, NULL);
    CHECK_STR(s, "local edit\n");
    free(s);
    /* ...nor is a symlink in its place followed. */
    CHECK(unlink(p) == 0);
    CHECK(symlink("a/b/hello.txt", p) == 0);
    r = ib_gf_export(&st, repo, out, items, n, NULL, NULL);
    CHECK_INT(r, IB_EINVALID);
    CHECK(strstr(ib_error_last(), "z.txt") != NULL);
    free(p);
    p = path2(out, "a/b/hello.txt");
    s = slurp(p, NULL);
    CHECK_STR(s, hello);
    free(s);
    free(p);

    /* Bad dests are refused before anything is written. */
    const char *bad[] = {"../escape", "a/../b", "/abs", "", "a//b", "./x", "a/.", "a/", "MANIFEST"};
    char *fresh = path2(base, "fresh");
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ib_gf_export_item it = {bad[i], o_hello, GIT_FILEMODE_BLOB};
        CHECK_INT(ib_gf_export(&st, repo, fresh, &it, 1, NULL, NULL), IB_EINVALID);
    }
    ib_gf_export_item dup[] = {{"x", o_hello, GIT_FILEMODE_BLOB}, {"x", o_other, GIT_FILEMODE_BLOB}};
    CHECK_INT(ib_gf_export(&st, repo, fresh, dup, 2, NULL, NULL), IB_EINVALID);
    CHECK(strstr(ib_error_last(), "x") != NULL);
    ib_gf_export_item sub = {"sub", o_hello, GIT_FILEMODE_COMMIT};
    CHECK_INT(ib_gf_export(&st, repo, fresh, &sub, 1, NULL, NULL), IB_EINVALID);
    ib_gf_export_item tree = {"t", o_hello, GIT_FILEMODE_TREE};
    CHECK_INT(ib_gf_export(&st, repo, fresh, &tree, 1, NULL, NULL), IB_EINVALID);

    /* A blob that is not in the repository fails, naming the dest. */
    git_oid missing;
    CHECK(git_oid_fromstr(&missing, "0123456789abcdef0123456789abcdef01234567") == 0);
    ib_gf_export_item miss = {"lost/file.dat", missing, GIT_FILEMODE_BLOB};
    r = ib_gf_export(&st, repo, fresh, &miss, 1, NULL, NULL);
    CHECK(r < 0);
    CHECK(strstr(ib_error_last(), "lost/file.dat") != NULL);
    CHECK(!ib_fs_exists(fresh));

    /* A symlinked component inside the export dir is never followed. */
    char *out2 = path2(base, "out2");
    char *elsewhere = path2(base, "elsewhere");
    CHECK(ib_fs_mkdir_p(out2, 0755) == 0);
    CHECK(ib_fs_mkdir_p(elsewhere, 0755) == 0);
    p = path2(out2, "a");
    CHECK(symlink(elsewhere, p) == 0);
    free(p);
    ib_gf_export_item via = {"a/x", o_hello, GIT_FILEMODE_BLOB};
    r = ib_gf_export(&st, repo, out2, &via, 1, NULL, NULL);
    CHECK(r < 0);
    CHECK(strstr(ib_error_last(), "a/x") != NULL);
    CHECK(strstr(ib_error_last(), "symlink") != NULL);
    CHECK_INT(dir_entries(elsewhere), 0);

    /* Big blobs stream through `git cat-file` (threshold lowered for the test). */
    char *out3 = path2(base, "out3");
    setenv("IB_EXPORT_STREAM_THRESHOLD", "1000", 1);
    ib_gf_export_item bigs[] = {{"deep/er/big.bin", o_big, GIT_FILEMODE_BLOB}, {"small", o_hello, GIT_FILEMODE_BLOB}};
    r = ib_gf_export(&st, repo, out3, bigs, 2, NULL, NULL);
    unsetenv("IB_EXPORT_STREAM_THRESHOLD");
    if (r) fprintf(stderr, "export: %s\n", ib_error_last());
    CHECK_INT(r, 0);
    CHECK_INT(st.written, 2);
    p = path2(out3, "deep/er/big.bin");
    s = slurp(p, &len);
    CHECK(s && len == big_len && !memcmp(s, big, big_len));
    free(s);
    free(p);
    p = path2(out3, "MANIFEST");
    char want3[1024] = "# imgbuild slim export: path\tblob\tsize\tsha256\n";
    add_line(want3, sizeof want3, "deep/er/big.bin", &o_big, big, big_len);
    add_line(want3, sizeof want3, "small", &o_hello, hello, strlen(hello));
    s = slurp(p, NULL);
    CHECK_STR(s, want3);
    free(s);
    free(p);

    /* No temp files are left behind anywhere. */
    p = path2(out3, "deep/er");
    CHECK_INT(dir_entries(p), 1);
    free(p);

    /* When git cannot be run the export fails and leaves no temp file. */
    char *out5 = path2(base, "out5");
    char *old_path = getenv("PATH") ? strdup(getenv("PATH")) : NULL;
    setenv("PATH", base, 1);
    setenv("IB_EXPORT_STREAM_THRESHOLD", "1000", 1);
    r = ib_gf_export(&st, repo, out5, bigs, 1, NULL, NULL);
    unsetenv("IB_EXPORT_STREAM_THRESHOLD");
    if (old_path) setenv("PATH", old_path, 1);
    free(old_path);
    CHECK(r < 0);
    CHECK(strstr(ib_error_last(), "deep/er/big.bin") != NULL);
    /* and takes back the directories it made: out5 did not exist before */
    CHECK(access(out5, F_OK) != 0);
    free(out5);

    /* An empty export still yields a MANIFEST (header only). */
    char *out4 = path2(base, "out4");
    CHECK_INT(ib_gf_export(&st, repo, out4, NULL, 0, NULL, NULL), 0);
    p = path2(out4, "MANIFEST");
    s = slurp(p, NULL);
    CHECK_STR(s, "# imgbuild slim export: path\tblob\tsize\tsha256\n");
    free(s);
    free(p);

    git_repository_free(repo);
    CHECK(ib_fs_rm_rf(base) == 0);
    free(out4);
    free(out3);
    free(out2);
    free(elsewhere);
    free(fresh);
    free(manifest);
    free(out);
    free(big);
    free(repo_dir);
    free(base);
    git_libgit2_shutdown();
    return ut_done();
}
