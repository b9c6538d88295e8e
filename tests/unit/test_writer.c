/* Layer writer determinism: the same entries give the same bytes whatever
 * the order they were added in, the thread count or the process; parents are
 * synthesised; duplicates keep the last; metadata is exactly as given. */
#include "ut.h"
#include "common/error.h"
#include "common/fs.h"
#include "layer/writer.h"
#include "oci/store.h"

#include <archive.h>
#include <archive_entry.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int str_content(void *src, const char *path, ib_sink_fn sink, void *ctx)
{
    (void)path;
    return sink(ctx, src, strlen(src));
}

static char long_name[300];

static void add_all(ib_layer_builder *b, int reverse)
{
    static char *payload[] = {"print('a')\n", "b\n", "#!/bin/sh\n", "dup-old", "dup-new"};
    ib_layer_entry es[] = {
        {.path = "app/main.py", .type = IB_LE_FILE, .mode = 0644, .size = 11, .src = payload[0], .content = str_content},
        {.path = "app/pkg/b.txt", .type = IB_LE_FILE, .mode = 0644, .size = 2, .src = payload[1], .content = str_content},
        {.path = "usr/local/bin/run", .type = IB_LE_FILE, .mode = 04755, .uid = 1000, .gid = 50, .size = 10, .src = payload[2], .content = str_content},
        {.path = "app/link", .type = IB_LE_SYMLINK, .mode = 0777, .link = "main.py"},
        {.path = "data", .type = IB_LE_DIR, .mode = 0700, .uid = 7, .gid = 7},
        {.path = "app/old", .type = IB_LE_WHITEOUT},
        {.path = long_name, .type = IB_LE_FILE, .mode = 0600, .size = 2, .src = payload[1], .content = str_content},
    };
    size_t n = sizeof es / sizeof *es;
    for (size_t k = 0; k < n; k++) CHECK(ib_layer_add(b, &es[reverse ? n - 1 - k : k]) == 0);
    /* a later entry for the same path wins, regardless of the add order above */
    ib_layer_entry d1 = {.path = "./app//dup.txt", .type = IB_LE_FILE, .mode = 0644, .size = 7, .src = payload[3], .content = str_content};
    ib_layer_entry d2 = {.path = "app/dup.txt", .type = IB_LE_FILE, .mode = 0640, .size = 7, .src = payload[4], .content = str_content};
    CHECK(ib_layer_add(b, &d1) == 0);
    CHECK(ib_layer_add(b, &d2) == 0);
}

static void write_layer(ib_layer_result *res, ib_store *s, int reverse, ib_comp_algo algo, int threads)
{
    ib_layer_builder *b = ib_layer_builder_new();
    add_all(b, reverse);
    CHECK(ib_layer_write(res, b, s, algo, threads, 1714564800) == 0);
    ib_layer_builder_free(b);
}

int main(void)
{
    memset(long_name, 'n', sizeof long_name - 1);
    memcpy(long_name, "deep/", 5); /* > 255 bytes: needs a pax header, which must be deterministic too */
    char *dir;
    CHECK(ib_fs_mkdtemp(&dir, "ib-ut-writer") == 0);
    ib_store *s;
    CHECK(ib_store_open(&s, dir) == 0);

    ib_layer_result a, b, c;
    write_layer(&a, s, 0, IB_COMP_GZIP, 1);
    write_layer(&b, s, 1, IB_COMP_GZIP, 4);
    CHECK_STR(a.digest, b.digest);
    CHECK_STR(a.diff_id, b.diff_id);
    CHECK_STR(a.media_type, "application/vnd.oci.image.layer.v1.tar+gzip");

    /* Another process (different pid, heap layout) writes the same bytes. */
    int pfd[2];
    CHECK(pipe(pfd) == 0);
    pid_t pid = fork();
    if (pid == 0) {
        ib_layer_result r;
        write_layer(&r, s, 1, IB_COMP_GZIP, 2);
        if (write(pfd[1], r.digest, sizeof r.digest) != (ssize_t)sizeof r.digest) _exit(1);
        _exit(0);
    }
    char child[IB_DIGEST_STRLEN + 1] = "";
    CHECK(read(pfd[0], child, sizeof child) == (ssize_t)sizeof child);
    waitpid(pid, NULL, 0);
    close(pfd[0]);
    close(pfd[1]);
    CHECK_STR(child, a.digest);

    /* zstd and none: same tar (diffID), different blobs. */
    write_layer(&c, s, 0, IB_COMP_NONE, 1);
    CHECK_STR(c.diff_id, a.diff_id);
    CHECK_STR(c.digest, c.diff_id); /* uncompressed: digest == diffID */
    CHECK_INT(c.size, c.tar_size);
    write_layer(&c, s, 0, IB_COMP_ZSTD, 2);
    CHECK_STR(c.diff_id, a.diff_id);
    CHECK(strcmp(c.digest, a.digest) != 0);

    /* Read the gzip layer back and check order, parents, metadata. */
    char *path = ib_store_blob_path(s, a.digest);
    struct archive *ar = archive_read_new();
    archive_read_support_filter_all(ar);
    archive_read_support_format_all(ar);
    CHECK(archive_read_open_filename(ar, path, 65536) == ARCHIVE_OK);
    struct archive_entry *e;
    const char *want[] = {"app/", "app/.wh.old", "app/dup.txt", "app/link", "app/main.py", "app/pkg/", "app/pkg/b.txt",
                          "data/", "deep/", NULL /* long name */, "usr/", "usr/local/", "usr/local/bin/",
                          "usr/local/bin/run"};
    size_t i = 0, nwant = sizeof want / sizeof *want;
    while (archive_read_next_header(ar, &e) == ARCHIVE_OK) {
        const char *name = archive_entry_pathname(e);
        if (i < nwant && want[i]) CHECK_STR(name, want[i]);
        if (i < nwant && !want[i]) CHECK_STR(name, long_name);
        CHECK_INT(archive_entry_mtime(e), 1714564800);
        CHECK(archive_entry_uname(e) == NULL || !*archive_entry_uname(e));
        if (!strcmp(name, "app/dup.txt")) {
            char buf[16] = {0};
            CHECK_INT(archive_read_data(ar, buf, sizeof buf), 7);
            CHECK_STR(buf, "dup-new");
            CHECK_INT(archive_entry_perm(e), 0640);
        }
        if (!strcmp(name, "usr/local/bin/run")) {
            CHECK_INT(archive_entry_perm(e), 04755);
            CHECK_INT(archive_entry_uid(e), 1000);
            CHECK_INT(archive_entry_gid(e), 50);
        }
        if (!strcmp(name, "usr/local/")) {
            CHECK_INT(archive_entry_perm(e), 0755);
            CHECK_INT(archive_entry_uid(e), 0);
            CHECK(archive_entry_filetype(e) == AE_IFDIR);
        }
        if (!strcmp(name, "data/")) CHECK_INT(archive_entry_perm(e), 0700);
        if (!strcmp(name, "app/link")) CHECK_STR(archive_entry_symlink(e), "main.py");
        if (!strcmp(name, "app/.wh.old")) CHECK_INT(archive_entry_size(e), 0);
        i++;
    }
    CHECK_INT(i, nwant);
    CHECK_INT(a.nentries, nwant);
    archive_read_free(ar);
    free(path);

    /* Paths climbing out are refused at add time. */
    ib_layer_builder *bad = ib_layer_builder_new();
    ib_layer_entry ev = {.path = "app/../../etc/passwd", .type = IB_LE_DIR, .mode = 0755};
    CHECK(ib_layer_add(bad, &ev) == IB_EINVALID);
    ib_layer_entry ev2 = {.path = "/", .type = IB_LE_DIR, .mode = 0755};
    CHECK(ib_layer_add(bad, &ev2) == IB_EINVALID);
    ib_layer_builder_free(bad);

    /* A content source that delivers fewer bytes than declared fails the layer, and nothing is stored. */
    ib_layer_builder *sh = ib_layer_builder_new();
    ib_layer_entry liar = {.path = "x", .type = IB_LE_FILE, .mode = 0644, .size = 100, .src = "short", .content = str_content};
    CHECK(ib_layer_add(sh, &liar) == 0);
    ib_layer_result lr;
    CHECK(ib_layer_write(&lr, sh, s, IB_COMP_GZIP, 2, 0) < 0);
    CHECK_STR(ib_error_last(), "x changed while the build read it; build again");
    ib_layer_builder_free(sh);

    /* The key holds a sha256 of the bytes read when the layer was planned;
     * other bytes at write time (the file was edited meanwhile) fail the
     * layer, naming the source file, and store nothing. */
    char keyed[IB_DIGEST_STRLEN + 1];
    ib_digest_buf(keyed, "AAAA", 4);
    ib_layer_builder *ch = ib_layer_builder_new();
    ib_layer_entry edited = {.path = "w/z", .type = IB_LE_FILE, .mode = 0644, .size = 4, .src = "BBBB",
                             .src_path = "app/z", .content = str_content, .content_id = keyed};
    CHECK(ib_layer_add(ch, &edited) == 0);
    CHECK(ib_layer_write(&lr, ch, s, IB_COMP_GZIP, 2, 0) < 0);
    CHECK_STR(ib_error_last(), "app/z changed while the build read it; build again");
    ib_layer_builder_free(ch);
    /* the same bytes pass; a git blob id names immutable bytes and is not re-hashed */
    ib_layer_result ok1, ok2;
    ib_layer_builder *same = ib_layer_builder_new();
    ib_layer_entry kept = {.path = "w/z", .type = IB_LE_FILE, .mode = 0644, .size = 4, .src = "AAAA",
                           .src_path = "app/z", .content = str_content, .content_id = keyed};
    CHECK(ib_layer_add(same, &kept) == 0);
    CHECK(ib_layer_write(&ok1, same, s, IB_COMP_GZIP, 2, 0) == 0);
    ib_layer_builder_free(same);
    ib_layer_builder *gb = ib_layer_builder_new();
    ib_layer_entry blob = {.path = "w/z", .type = IB_LE_FILE, .mode = 0644, .size = 4, .src = "AAAA",
                           .src_path = "app/z", .content = str_content,
                           .content_id = "git:5d308e1d060b0c387d452cf4747f89ecb9935851"};
    CHECK(ib_layer_add(gb, &blob) == 0);
    CHECK(ib_layer_write(&ok2, gb, s, IB_COMP_GZIP, 2, 0) == 0);
    CHECK_STR(ok2.diff_id, ok1.diff_id);
    ib_layer_builder_free(gb);
    char *tmpd = ib_xasprintf("%s/tmp", dir);
    char **names = NULL;
    (void)names;
    CHECK(rmdir(tmpd) == 0); /* empty: the aborted blob left no temp file */
    free(tmpd);

    ib_store_free(s);
    ib_fs_rm_rf(dir);
    free(dir);
    return ut_done();
}
