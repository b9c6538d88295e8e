/* COPY's destination rules against a stack of lower layers, without the
 * executor: the layer index (symlinks resolved as fs.RootPath does inside the
 * image, whiteouts, opaque directories, later layers winning) and ib_copy_run
 * on top of it (usrmerge /bin, copying into an existing directory, --chown on
 * the parents it creates, empty wildcards, --exclude on sources, --chmod
 * expansion, heredoc backslashes). Lower layers are tars written here, the
 * context is a plain directory, and the layer COPY writes is listed back. */
#include "ut.h"
#include "build/copy.h"
#include "common/error.h"
#include "common/fs.h"
#include "common/strbuf.h"
#include "layer/index.h"
#include "oci/store.h"

#include <archive.h>
#include <archive_entry.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *W;

typedef struct {
    const char *name;
    char type; /* 'd' dir, 'f' file, 'l' symlink */
    unsigned perm, uid;
    const char *link;
} ent;

/* Writes a plain tar from a NULL-name-terminated list; returns its path. */
static char *tar_of(const ent *list)
{
    static int n;
    char *path = ib_xasprintf("%s/lower%d.tar", W, n++);
    struct archive *a = archive_write_new();
    archive_write_set_format_pax_restricted(a);
    if (archive_write_open_filename(a, path) != ARCHIVE_OK) abort();
    for (const ent *x = list; x->name; x++) {
        struct archive_entry *e = archive_entry_new();
        archive_entry_set_pathname(e, x->name);
        archive_entry_set_filetype(e, x->type == 'd' ? AE_IFDIR : x->type == 'l' ? AE_IFLNK : AE_IFREG);
        archive_entry_set_perm(e, x->perm ? x->perm : x->type == 'd' ? 0755 : 0644);
        archive_entry_set_uid(e, x->uid);
        archive_entry_set_gid(e, x->uid);
        if (x->link) archive_entry_set_symlink(e, x->link);
        archive_entry_set_size(e, 0);
        if (archive_write_header(a, e) < ARCHIVE_WARN) abort();
        archive_entry_free(e);
    }
    archive_write_close(a);
    archive_write_free(a);
    return path;
}

static void add_layer(ib_layer_index *x, const ent *list)
{
    char *p = tar_of(list);
    CHECK(ib_layer_index_add(x, p) == 0);
    free(p);
}

/* A usrmerge base: /bin -> usr/bin, an absolute link, a link climbing above
 * the root, a link to a link, a loop, an /etc with its own mode and owner. */
static const ent base[] = {
    {"usr/", 'd', 0, 0, NULL},
    {"usr/bin/", 'd', 0, 0, NULL},
    {"bin", 'l', 0777, 0, "usr/bin"},
    {"chain", 'l', 0777, 0, "/bin"},
    {"etc/", 'd', 0700, 5, NULL},
    {"etc/conf", 'l', 0777, 0, "../../../etc/real"},
    {"opt/", 'd', 0, 0, NULL},
    {"opt/app", 'l', 0777, 0, "/srv/real"},
    {"loop1", 'l', 0777, 0, "loop2/x"},
    {"loop2", 'l', 0777, 0, "/loop1"},
    {NULL, 0, 0, 0, NULL},
};

static void check_resolve(const ib_layer_index *x, const char *in, const char *want)
{
    char *out = NULL;
    int r = ib_layer_index_resolve(&out, x, in);
    CHECK_INT(r, 0);
    CHECK_STR(out, want);
    free(out);
}

static void test_index(void)
{
    ib_layer_index *x = ib_layer_index_new();
    add_layer(x, base);
    check_resolve(x, "bin/sh", "usr/bin/sh");
    check_resolve(x, "/bin", "usr/bin"); /* the last component is followed too */
    check_resolve(x, "chain/sh", "usr/bin/sh");
    check_resolve(x, "opt/app/x", "srv/real/x");  /* absolute target: from the image root */
    check_resolve(x, "etc/conf/f", "etc/real/f"); /* ".." stops at the root */
    check_resolve(x, "nope/a/b", "nope/a/b");
    check_resolve(x, "usr/../bin/./x", "usr/bin/x");
    char *out = (char *)"unset";
    CHECK_INT(ib_layer_index_resolve(&out, x, "loop1/f"), IB_EINVALID);
    CHECK(out == NULL);
    CHECK(strstr(ib_error_last(), "too many levels of symbolic links") != NULL);
    const char *target = NULL;
    unsigned m = 0, u = 0, g = 0;
    CHECK_INT(ib_layer_index_kind(x, "bin", &target), IB_LX_SYMLINK);
    CHECK_STR(target, "usr/bin");
    CHECK_INT(ib_layer_index_dir(x, "bin", &m, &u, &g), 0); /* a link to a directory is not one */
    CHECK_INT(ib_layer_index_dir(x, "etc", &m, &u, &g), 1);
    CHECK_INT(m, 0700);
    CHECK_INT(u, 5);

    /* An entry under a linked directory lands where the link points (as the
     * applier puts it); a whiteout removes a link; a directory replaces a
     * link, a file replaces a link. */
    static const ent l2[] = {
        {"bin/newdir/", 'd', 0, 0, NULL},
        {".wh.chain", 'f', 0, 0, NULL},
        {"opt/app/", 'd', 0, 0, NULL},
        {"etc/conf", 'f', 0, 0, NULL},
        {NULL, 0, 0, 0, NULL},
    };
    add_layer(x, l2);
    CHECK_INT(ib_layer_index_dir(x, "usr/bin/newdir", &m, &u, &g), 1);
    CHECK_INT(ib_layer_index_kind(x, "bin/newdir", NULL), IB_LX_NONE);
    CHECK_INT(ib_layer_index_kind(x, "chain", NULL), IB_LX_NONE);
    CHECK_INT(ib_layer_index_kind(x, "opt/app", NULL), IB_LX_DIR);
    CHECK_INT(ib_layer_index_kind(x, "etc/conf", NULL), IB_LX_NONE);
    check_resolve(x, "opt/app/x", "opt/app/x");

    /* An opaque directory hides what lower layers had below it, not what its
     * own layer adds; the link at /bin is left dangling, still followed. */
    static const ent l3[] = {
        {"usr/lib/", 'd', 0, 0, NULL},
        {"usr/.wh..wh..opq", 'f', 0, 0, NULL},
        {NULL, 0, 0, 0, NULL},
    };
    add_layer(x, l3);
    CHECK_INT(ib_layer_index_dir(x, "usr/bin", &m, &u, &g), 0);
    CHECK_INT(ib_layer_index_dir(x, "usr/bin/newdir", &m, &u, &g), 0);
    CHECK_INT(ib_layer_index_dir(x, "usr/lib", &m, &u, &g), 1);
    check_resolve(x, "bin/x", "usr/bin/x");
    ib_layer_index_free(x);

    CHECK_INT(ib_layer_index_resolve(&out, NULL, "/a/./b/"), 0); /* nothing below: only cleaned */
    CHECK_STR(out, "a/b");
    free(out);
}

/* ---- ib_copy_run ----------------------------------------------------------- */

static ib_store *S;
static ib_context *CTX;

static const char *vars(void *ctx, const char *name)
{
    (void)ctx;
    if (!strcmp(name, "MODE")) return "440";
    if (!strcmp(name, "FOO")) return "bar";
    return NULL;
}

static void put(const char *rel, const char *text, int mode)
{
    char *p = ib_fs_join(W, rel), *dir = ib_xstrdup(p);
    *strrchr(dir, '/') = 0;
    if (ib_fs_mkdir_p(dir, 0755) < 0 || ib_fs_write_atomic(p, text, strlen(text), mode) < 0) abort();
    free(dir);
    free(p);
}

/* Runs the COPY on line 2 of "FROM scratch\n<copy>" over the lower index;
 * returns 0 and the layer's entries ("f 644 0/0 path", "d ...", "l ... path ->
 * target", one a line, in layer order), or the error code. With content_of,
 * *content gets the bytes of that file in the layer. */
static int copy_layer(char **listing, const ib_layer_index *lower, const char *copy, const char *content_of,
                      char **content)
{
    char *text = ib_xasprintf("FROM scratch\n%s\n", copy);
    ib_dockerfile *df = NULL;
    int r = ib_df_parse(&df, text, strlen(text), "Dockerfile");
    free(text);
    if (r < 0) return r;
    ib_copy_env env = {.store = S, .tmpdir = W, .ctx = CTX, .escape = '\\', .lookup = vars, .epoch = 0,
                       .compression = IB_COMP_NONE, .threads = 1, .df_name = "Dockerfile", .lower = lower};
    const char *chown = ib_df_flag_get(&df->instrs[1], "chown", NULL);
    if (chown && (r = ib_copy_parse_chown(&env.uid, &env.gid, chown, NULL)) < 0) goto out;
    env.chown = chown != NULL;
    ib_layer_result res;
    if ((r = ib_copy_run(&res, &env, &df->instrs[1], df->instrs[1].kind == IB_DF_ADD)) < 0) goto out;
    char *blob = ib_store_blob_path(S, res.digest);
    struct archive *a = archive_read_new();
    archive_read_support_format_tar(a);
    r = archive_read_open_filename(a, blob, 1 << 16) == ARCHIVE_OK ? 0 : IB_ERR;
    free(blob);
    ib_strbuf out = {0};
    struct archive_entry *e;
    while (r == 0 && archive_read_next_header(a, &e) == ARCHIVE_OK) {
        int t = archive_entry_filetype(e);
        const char *name = archive_entry_pathname(e);
        size_t nl = strlen(name);
        if (nl > 1 && name[nl - 1] == '/') nl--; /* the tar writer's "usr/" is listed as "usr" */
        ib_strbuf_addf(&out, "%c %o %u/%u %.*s%s%s\n", t == AE_IFDIR ? 'd' : t == AE_IFLNK ? 'l' : 'f',
                       (unsigned)archive_entry_perm(e), (unsigned)archive_entry_uid(e), (unsigned)archive_entry_gid(e),
                       (int)nl, name, t == AE_IFLNK ? " -> " : "", t == AE_IFLNK ? archive_entry_symlink(e) : "");
        if (content_of && !strcmp(archive_entry_pathname(e), content_of)) {
            size_t n = (size_t)archive_entry_size(e);
            *content = ib_xcalloc(1, n + 1);
            if (archive_read_data(a, *content, n) != (la_ssize_t)n) r = IB_ERR;
        }
    }
    archive_read_free(a);
    *listing = out.s ? out.s : ib_xstrdup("");
out:
    ib_df_free(df);
    return r;
}

static void check_copy(const ib_layer_index *lower, const char *copy, const char *want)
{
    char *got = NULL;
    int r = copy_layer(&got, lower, copy, NULL, NULL);
    if (r < 0) fprintf(stderr, "%s: %s\n", copy, ib_error_last());
    CHECK_INT(r, 0);
    CHECK_STR(got, want);
    free(got);
}

static void test_copy(void)
{
    put("ctx/mytool", "#!/bin/sh\n", 0755);
    put("ctx/hello.txt", "hi\n", 0644);
    put("ctx/home.txt", "1\n", 0644);
    put("ctx/homer.py", "2\n", 0644);
    put("ctx/homedir/a.txt", "3\n", 0644);
    put("ctx/homedir/b.py", "4\n", 0644);
    /* three archives for one glob: more matches than the instruction has words */
    for (int k = 1; k <= 3; k++) {
        char d[16], f[16];
        snprintf(d, sizeof d, "d%d/", k);
        snprintf(f, sizeof f, "d%d/f", k);
        const ent list[] = {{d, 'd', 0, 0, NULL}, {f, 'f', 0, 0, NULL}, {NULL, 0, 0, 0, NULL}};
        char *p = tar_of(list), *to = ib_xasprintf("%s/ctx/t%d.tar", W, k);
        if (rename(p, to) < 0) abort();
        free(p);
        free(to);
    }
    char *sp = ib_fs_join(W, "store"), *cp = ib_fs_join(W, "ctx");
    if (ib_store_open(&S, sp) < 0 || ib_context_open_dir(&CTX, NULL, cp, 1) < 0) abort();
    free(sp);
    free(cp);
    ib_layer_index *x = ib_layer_index_new();
    add_layer(x, base);

    /* usrmerge: the link stays, the file goes where it points, the parents
     * that exist keep their metadata */
    check_copy(x, "COPY mytool /bin/mytool", "d 755 0/0 usr\nd 755 0/0 usr/bin\nf 755 0/0 usr/bin/mytool\n");
    check_copy(x, "COPY mytool /chain/", "d 755 0/0 usr\nd 755 0/0 usr/bin\nf 755 0/0 usr/bin/mytool\n");
    check_copy(x, "COPY hello.txt /opt/app/", "d 755 0/0 srv\nd 755 0/0 srv/real\nf 644 0/0 srv/real/hello.txt\n");
    /* an existing directory is copied into, also without a trailing slash */
    check_copy(x, "COPY hello.txt /bin", "d 755 0/0 usr\nd 755 0/0 usr/bin\nf 644 0/0 usr/bin/hello.txt\n");
    check_copy(x, "COPY hello.txt /etc", "d 700 5/5 etc\nf 644 0/0 etc/hello.txt\n");
    check_copy(x, "COPY hello.txt /new", "f 644 0/0 new\n");
    check_copy(x, "COPY hello.txt mytool /etc", "d 700 5/5 etc\nf 644 0/0 etc/hello.txt\nf 755 0/0 etc/mytool\n");
    /* --chown owns the directories COPY creates, not the existing /etc */
    check_copy(x, "COPY --chown=7:8 hello.txt /etc/a/b/f",
               "d 700 5/5 etc\nd 755 7/8 etc/a\nd 755 7/8 etc/a/b\nf 644 7/8 etc/a/b/f\n");
    /* wildcards that match nothing are skipped; a plain missing source is an error */
    check_copy(x, "COPY nomatch* hello.txt requirements*.txt /w/", "d 755 0/0 w\nf 644 0/0 w/hello.txt\n");
    check_copy(x, "COPY nomatch* /w/", "");
    char *got = NULL;
    CHECK_INT(copy_layer(&got, x, "COPY missing.txt /w/", NULL, NULL), IB_EINVALID);
    CHECK(strstr(ib_error_last(), "COPY missing.txt: not found in the build context") != NULL);
    /* --exclude filters the sources and what is below directory sources */
    check_copy(x, "COPY --exclude=*.txt hom* /m/", "d 755 0/0 m\nf 644 0/0 m/b.py\nf 644 0/0 m/homer.py\n");
    /* ADD extracts every archive a glob matches */
    check_copy(x, "ADD t*.tar /x/",
               "d 755 0/0 x\nd 755 0/0 x/d1\nf 644 0/0 x/d1/f\nd 755 0/0 x/d2\nf 644 0/0 x/d2/f\nd 755 0/0 x/d3\n"
               "f 644 0/0 x/d3/f\n");
    /* --chmod is expanded */
    check_copy(x, "COPY --chmod=$MODE hello.txt /h", "f 440 0/0 h\n");
    /* a destination that loops is an error, not a guess */
    CHECK_INT(copy_layer(&got, x, "COPY hello.txt /loop1/x", NULL, NULL), IB_EINVALID);
    CHECK(strstr(ib_error_last(), "too many levels of symbolic links") != NULL);
    /* without a lower index the destination is taken literally */
    check_copy(NULL, "COPY hello.txt /bin/x", "d 755 0/0 bin\nf 644 0/0 bin/x\n");

    /* unquoted heredoc: $VAR expanded, quotes literal, \$ and \\ escapes,
     * any other backslash kept */
    char *body = NULL;
    CHECK_INT(copy_layer(&got, x, "COPY <<EOT /s.sh\necho \"${FOO}\" '$FOO' \\$HOME a\\b \\\\ \\${FOO}\nEOT", "s.sh", &body),
              0);
    CHECK_STR(body, "echo \"bar\" 'bar' $HOME a\\b \\ ${FOO}\n");
    free(got);
    free(body);
    body = NULL;
    CHECK_INT(copy_layer(&got, x, "COPY <<'EOT' /s.sh\necho \"${FOO}\" \\$HOME\nEOT", "s.sh", &body), 0);
    CHECK_STR(body, "echo \"${FOO}\" \\$HOME\n");
    free(got);
    free(body);

    ib_layer_index_free(x);
    ib_context_free(CTX);
    ib_store_free(S);
}

/* What the index says about each path, one line each: the comparison of a
 * saved-and-loaded index with the one computed from the layers. */
static char *describe(const ib_layer_index *x, const char *const *paths)
{
    ib_strbuf sb = {0};
    ib_strbuf_addf(&sb, "-");
    for (const char *const *p = paths; *p; p++) {
        const char *t = NULL;
        unsigned m = 0, u = 0, g = 0;
        int k = ib_layer_index_kind(x, *p, &t), d = ib_layer_index_dir(x, *p, &m, &u, &g);
        ib_strbuf_addf(&sb, "%s: %d %s %d %o %u %u\n", *p, k, t ? t : "-", d, m, u, g);
    }
    return sb.s;
}

/* A layer with a file and no entries for its directories: they exist once
 * applied (0755 root), so the index has them too. */
static void test_index_implicit_parents(void)
{
    static const ent only_file[] = {
        {"usr/local/bin/tool", 'f', 0755, 0, NULL},
        {NULL, 0, 0, 0, NULL},
    };
    ib_layer_index *x = ib_layer_index_new();
    add_layer(x, only_file);
    unsigned m = 0, u = 9, g = 9;
    CHECK_INT(ib_layer_index_dir(x, "usr/local/bin", &m, &u, &g), 1);
    CHECK_INT(m, 0755);
    CHECK_INT(u, 0);
    CHECK_INT(g, 0);
    CHECK_INT(ib_layer_index_dir(x, "usr", &m, &u, &g), 1);
    CHECK_INT(ib_layer_index_dir(x, "usr/local/bin/tool", &m, &u, &g), 0);
    ib_layer_index_free(x);
}

static void test_index_saved(void)
{
    static const ent weird[] = {
        {"we\nird/", 'd', 0750, 7, NULL},
        {"F\xc5\x91t/", 'd', 0, 0, NULL},
        {"F\xc5\x91t/l", 'l', 0777, 0, "../we\nird"},
        {"usr/lib/", 'd', 0, 0, NULL},
        {NULL, 0, 0, 0, NULL},
    };
    /* an opaque usr/ in the layer after the saved ones hides only what lower layers had */
    static const ent l3[] = {
        {"usr/", 'd', 0, 0, NULL},
        {"usr/.wh..wh..opq", 'f', 0, 0, NULL},
        {"usr/bin2/", 'd', 0711, 3, NULL},
        {NULL, 0, 0, 0, NULL},
    };
    static const char *const paths[] = {"usr", "usr/bin", "usr/lib", "usr/bin2", "bin", "chain", "etc", "etc/conf", "opt/app",
                                        "loop1", "we\nird", "F\xc5\x91t", "F\xc5\x91t/l", "nope", NULL};
    ib_layer_index *x = ib_layer_index_new();
    add_layer(x, base);
    add_layer(x, weird);
    char *path = ib_xasprintf("%s/saved.idx", W);
    CHECK_INT(ib_layer_index_save(x, path, "chain sha256:ab\nblob sha256:cd\n"), 0);
    char *tag = NULL;
    CHECK_INT(ib_layer_index_saved_tag(&tag, path), 0);
    CHECK_STR(tag, "chain sha256:ab\nblob sha256:cd\n");
    free(tag);
    ib_layer_index *y = NULL;
    CHECK_INT(ib_layer_index_load(&y, path, "chain sha256:ab\nblob sha256:cd\n"), 0);
    if (!y) y = ib_layer_index_new();
    char *a = describe(x, paths), *b = describe(y, paths);
    CHECK_STR(b, a);
    free(a);
    free(b);
    check_resolve(y, "F\xc5\x91t/l/x", "we\nird/x");
    add_layer(x, l3);
    add_layer(y, l3);
    a = describe(x, paths);
    b = describe(y, paths);
    CHECK_STR(b, a);
    CHECK(strstr(a, "usr/bin: 0 - 0") != NULL); /* hidden by the opaque marker, */
    CHECK(strstr(a, "usr/lib: 0 - 0") != NULL); /* also from the layer just saved */
    CHECK(strstr(a, "usr/bin2: 1 - 1 711 3 3") != NULL);
    free(a);
    free(b);
    ib_layer_index_free(y);

    /* another tag, a flipped byte, a truncated file: refused, never used */
    CHECK_INT(ib_layer_index_load(&y, path, "chain sha256:ab\nblob sha256:ce\n"), IB_ECORRUPT);
    CHECK(y == NULL);
    char *text;
    size_t len;
    CHECK_INT(ib_fs_read_all(&text, &len, path, 1 << 20), 0);
    char *hit = strstr(text, " 750 ");
    CHECK(hit != NULL);
    if (hit) hit[1] = '6';
    CHECK_INT(ib_fs_write_atomic(path, text, len, 0644), 0);
    CHECK_INT(ib_layer_index_load(&y, path, "chain sha256:ab\nblob sha256:cd\n"), IB_ECORRUPT);
    if (hit) hit[1] = '7';
    CHECK_INT(ib_fs_write_atomic(path, text, len / 2, 0644), 0);
    CHECK_INT(ib_layer_index_load(&y, path, "chain sha256:ab\nblob sha256:cd\n"), IB_ECORRUPT);
    CHECK_INT(ib_fs_write_atomic(path, text, len, 0644), 0);
    CHECK_INT(ib_layer_index_load(&y, path, "chain sha256:ab\nblob sha256:cd\n"), 0);
    ib_layer_index_free(y);
    free(text);
    free(path);
    ib_layer_index_free(x);
}

int main(void)
{
    if (ib_fs_mkdtemp(&W, "ib-copy-test") < 0) {
        fprintf(stderr, "%s\n", ib_error_last());
        return 1;
    }
    test_index();
    test_index_implicit_parents();
    test_index_saved();
    test_copy();
    ib_fs_rm_rf(W);
    free(W);
    return ut_done();
}
