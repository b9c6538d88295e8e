#include "ut.h"
#include "build/ignore.h"
#include "common/error.h"

#include <stdlib.h>

static ib_ignore *parse(const char *text)
{
    ib_ignore *ig = NULL;
    int rc = ib_ignore_parse(&ig, text, strlen(text), ".dockerignore");
    if (rc != 0) fprintf(stderr, "parse failed: %s\n", ib_error_last());
    CHECK_INT(rc, 0);
    return ig ? ig : ib_ignore_new_empty();
}

/* 1 if `path` is excluded by the .dockerignore `text`. */
static int excl(const char *text, const char *path)
{
    ib_ignore *ig = parse(text);
    int r = ib_ignore_match(ig, path);
    ib_ignore_free(ig);
    return r;
}

static int may(const char *text, const char *dir)
{
    ib_ignore *ig = parse(text);
    int r = ib_ignore_may_include_under(ig, dir);
    ib_ignore_free(ig);
    return r;
}

/* Expects a parse error whose message starts with `prefix`. */
static void bad(const char *text, const char *prefix)
{
    ib_ignore *ig = (ib_ignore *)1;
    int rc = ib_ignore_parse(&ig, text, strlen(text), "ctx/.dockerignore");
    CHECK_INT(rc, IB_EINVALID);
    CHECK(ig == NULL);
    if (strncmp(ib_error_last(), prefix, strlen(prefix)) != 0)
        fprintf(stderr, "error \"%s\" does not start with \"%s\"\n", ib_error_last(), prefix);
    CHECK(strncmp(ib_error_last(), prefix, strlen(prefix)) == 0);
}

struct mcase { const char *pattern, *path; int want; };

/* moby/patternmatcher TestMatches (single pattern, MatchesOrParentMatches:
 * "exact" and "inexact" both mean excluded). Its two cases on the path "/"
 * are left out: the context root is never a candidate here. */
static const struct mcase moby_matches[] = {
    {"**", "file", 1}, {"**", "file/", 1}, {"**/", "file", 1}, {"**/", "file/", 1},
    {"**", "dir/file", 1}, {"**/", "dir/file", 1}, {"**", "dir/file/", 1}, {"**/", "dir/file/", 1},
    {"**/**", "dir/file", 1}, {"**/**", "dir/file/", 1},
    {"dir/**", "dir/file", 1}, {"dir/**", "dir/file/", 1}, {"dir/**", "dir/dir2/file", 1},
    {"dir/**", "dir/dir2/file/", 1},
    {"**/dir", "dir", 1}, {"**/dir", "dir/file", 1},
    {"**/dir2/*", "dir/dir2/file", 1}, {"**/dir2/*", "dir/dir2/file/", 1},
    {"**/dir2/**", "dir/dir2/dir3/file", 1}, {"**/dir2/**", "dir/dir2/dir3/file/", 1},
    {"**file", "file", 1}, {"**file", "dir/file", 1}, {"**/file", "dir/file", 1},
    {"**file", "dir/dir/file", 1}, {"**/file", "dir/dir/file", 1},
    {"**/file*", "dir/dir/file", 1}, {"**/file*", "dir/dir/file.txt", 1},
    {"**/file*txt", "dir/dir/file.txt", 1}, {"**/file*.txt", "dir/dir/file.txt", 1},
    {"**/file*.txt*", "dir/dir/file.txt", 1}, {"**/**/*.txt", "dir/dir/file.txt", 1},
    {"**/**/*.txt2", "dir/dir/file.txt", 0}, {"**/*.txt", "file.txt", 1},
    {"**/**/*.txt", "file.txt", 1},
    {"a**/*.txt", "a/file.txt", 1}, {"a**/*.txt", "a/dir/file.txt", 1},
    {"a**/*.txt", "a/dir/dir/file.txt", 1},
    {"a/*.txt", "a/dir/file.txt", 0}, {"a/*.txt", "a/file.txt", 1}, {"a/*.txt**", "a/file.txt", 1},
    {"a[b-d]e", "ae", 0}, {"a[b-d]e", "ace", 1}, {"a[b-d]e", "aae", 0}, {"a[^b-d]e", "aze", 1},
    {".*", ".foo", 1}, {".*", "foo", 0},
    {"abc.def", "abcdef", 0}, {"abc.def", "abc.def", 1}, {"abc.def", "abcZdef", 0},
    {"abc?def", "abcZdef", 1}, {"abc?def", "abcdef", 0},
    {"**/foo/bar", "foo/bar", 1}, {"**/foo/bar", "dir/foo/bar", 1}, {"**/foo/bar", "dir/dir2/foo/bar", 1},
    {"abc/**", "abc", 0}, {"abc/**", "abc/def", 1}, {"abc/**", "abc/def/ghi", 1},
    {"**/.foo", ".foo", 1}, {"**/.foo", "bar.foo", 0},
    {"a(b)c/def", "a(b)c/def", 1}, {"a(b)c/def", "a(b)c/xyz", 0},
    {"a.|)$(}+{bc", "a.|)$(}+{bc", 1},
    {"dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
     "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", 1},
    {"dist/*.whl", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", 1},
    {"a\\\\", "a\\", 1}, {"a\\*b", "a*b", 1},
};

/* moby/patternmatcher TestMatch (Go's filepath.Match tests through Matches). */
static const struct mcase go_match[] = {
    {"abc", "abc", 1}, {"*", "abc", 1}, {"*c", "abc", 1}, {"a*", "a", 1}, {"a*", "abc", 1},
    {"a*", "ab/c", 1}, {"a*/b", "abc/b", 1}, {"a*/b", "a/c/b", 0},
    {"a*b*c*d*e*/f", "axbxcxdxe/f", 1}, {"a*b*c*d*e*/f", "axbxcxdxexxx/f", 1},
    {"a*b*c*d*e*/f", "axbxcxdxe/xxx/f", 0}, {"a*b*c*d*e*/f", "axbxcxdxexxx/fff", 0},
    {"a*b?c*x", "abxbbxdbxebxczzx", 1}, {"a*b?c*x", "abxbbxdbxebxczzy", 0},
    {"ab[c]", "abc", 1}, {"ab[b-d]", "abc", 1}, {"ab[e-g]", "abc", 0}, {"ab[^c]", "abc", 0},
    {"ab[^b-d]", "abc", 0}, {"ab[^e-g]", "abc", 1},
    {"a\\*b", "a*b", 1}, {"a\\*b", "ab", 0},
    {"a?b", "a\xe2\x98\xba" "b", 1}, {"a[^a]b", "a\xe2\x98\xba" "b", 1},
    {"a???b", "a\xe2\x98\xba" "b", 0}, {"a[^a][^a][^a]b", "a\xe2\x98\xba" "b", 0},
    {"[a-\xce\xb6]*", "\xce\xb1", 1}, {"*[a-\xce\xb6]", "A", 0},
    {"a?b", "a/b", 0}, {"a*b", "a/b", 0},
    {"[\\]a]", "]", 1}, {"[\\-]", "-", 1}, {"[x\\-]", "x", 1}, {"[x\\-]", "-", 1}, {"[x\\-]", "z", 0},
    {"[\\-x]", "x", 1}, {"[\\-x]", "-", 1}, {"[\\-x]", "a", 0},
    {"*x", "xxx", 1},
};

static void docker_docs(void)
{
    /* docs.docker.com "Build context" > .dockerignore files: the first example. */
    const char *ex = "# comment\n*/temp*\n*/*/temp*\ntemp?\n";
    ib_ignore *ig = parse(ex);
    CHECK_INT(ib_ignore_count(ig), 3);
    CHECK_INT(ib_ignore_match(ig, "somedir/temporary.txt"), 1);
    CHECK_INT(ib_ignore_match(ig, "somedir/temp"), 1);
    CHECK_INT(ib_ignore_match(ig, "somedir/temp/inside.txt"), 1); /* below an excluded dir */
    CHECK_INT(ib_ignore_match(ig, "somedir/subdir/temporary.txt"), 1);
    CHECK_INT(ib_ignore_match(ig, "tempa"), 1);
    CHECK_INT(ib_ignore_match(ig, "tempb"), 1);
    CHECK_INT(ib_ignore_match(ig, "temp"), 0);
    CHECK_INT(ib_ignore_match(ig, "temporary.txt"), 0);
    CHECK_INT(ib_ignore_match(ig, "a/b/c/temp.txt"), 0);
    CHECK_INT(ib_ignore_match(ig, "# comment"), 0);
    CHECK_INT(ib_ignore_match(ig, "somedir/other.txt"), 0);
    ib_ignore_free(ig);

    /* "**" matches any number of directories, including none. */
    CHECK_INT(excl("**/*.go", "main.go"), 1);
    CHECK_INT(excl("**/*.go", "cmd/tool/main.go"), 1);
    CHECK_INT(excl("**/*.go", "main.go.txt"), 0);
    CHECK_INT(excl("**/*.go", "go"), 0);

    /* Exceptions. */
    CHECK_INT(excl("*.md\n!README.md\n", "README.md"), 0);
    CHECK_INT(excl("*.md\n!README.md\n", "CHANGES.md"), 1);
    CHECK_INT(excl("*.md\n!README.md\n", "docs/guide.md"), 0); /* '*' stays in the root */

    /* Placement of exceptions: the last matching line decides. */
    const char *a = "*.md\n!README*.md\nREADME-secret.md\n";
    CHECK_INT(excl(a, "README-secret.md"), 1);
    CHECK_INT(excl(a, "README.md"), 0);
    CHECK_INT(excl(a, "README-dev.md"), 0);
    CHECK_INT(excl(a, "notes.md"), 1);
    const char *b = "*.md\nREADME-secret.md\n!README*.md\n";
    CHECK_INT(excl(b, "README-secret.md"), 0);
    CHECK_INT(excl(b, "README.md"), 0);
    CHECK_INT(excl(b, "notes.md"), 1);

    /* "Include only": '*' then exceptions. */
    const char *only = "*\n!src\n!Dockerfile\n";
    CHECK_INT(excl(only, "src/main.c"), 0);
    CHECK_INT(excl(only, "src"), 0);
    CHECK_INT(excl(only, "Dockerfile"), 0);
    CHECK_INT(excl(only, "Makefile"), 1);
    CHECK_INT(excl(only, "docs/x.md"), 1);

    /* /foo/bar and foo/bar are the same pattern; neither excludes anything else. */
    for (int i = 0; i < 2; i++) {
        const char *t = i ? "/foo/bar\n" : "foo/bar\n";
        CHECK_INT(excl(t, "foo/bar"), 1);
        CHECK_INT(excl(t, "foo/bar/baz.txt"), 1);
        CHECK_INT(excl(t, "foo"), 0);
        CHECK_INT(excl(t, "bar"), 0);
        CHECK_INT(excl(t, "x/foo/bar"), 0);
        CHECK_INT(excl(t, "foo/barn"), 0);
    }

    /* The usual first line. */
    CHECK_INT(excl(".git\n", ".git"), 1);
    CHECK_INT(excl(".git\n", ".git/objects/pack/p.pack"), 1);
    CHECK_INT(excl(".git\n", ".gitignore"), 0);
    CHECK_INT(excl(".git\n", "vendor/lib/.git"), 0);
    CHECK_INT(excl("**/.git\n", "vendor/lib/.git/HEAD"), 1);
}

static void preprocessing(void)
{
    /* filepath.Clean of every pattern. */
    CHECK_INT(excl("docs/../build/\n", "build/out.o"), 1);
    CHECK_INT(excl("docs/../build/\n", "docs"), 0);
    CHECK_INT(excl("./node_modules\n", "node_modules/x/index.js"), 1);
    CHECK_INT(excl("a//b/./c/\n", "a/b/c"), 1);
    CHECK_INT(excl("!docs/../x\n", "x"), 0);
    /* Leading and trailing whitespace, CRLF, a UTF-8 BOM on the first line. */
    CHECK_INT(excl("  *.log  \n", "app.log"), 1);
    CHECK_INT(excl("\t! keep.log\n", "keep.log"), 0);
    CHECK_INT(excl("*.log\r\n!keep.log\r\n", "keep.log"), 0);
    CHECK_INT(excl("*.log\r\n!keep.log\r\n", "app.log"), 1);
    CHECK_INT(excl("\xEF\xBB\xBF" "secret.txt\n", "secret.txt"), 1);
    CHECK_INT(excl("*.log\xC2\xA0\n", "a.log"), 1); /* TrimSpace is Unicode-aware */
    /* moby trims again after dropping the leading '/', but not after '!'. */
    CHECK_INT(excl("/ a\n", "a"), 1);
    CHECK_INT(excl("*\n!/ a\n", "a"), 1);
    CHECK_INT(excl("*\n!/ a\n", " a"), 0);
    /* Only '#' in column 1 is a comment; blank lines are skipped. */
    ib_ignore *ig = parse("# c\n\n   \n  #x\nfoo\n");
    CHECK_INT(ib_ignore_count(ig), 2);
    CHECK_INT(ib_ignore_match(ig, "#x"), 1);
    CHECK_INT(ib_ignore_match(ig, "foo"), 1);
    ib_ignore_free(ig);
    /* The last line needs no newline; an empty file is fine. */
    CHECK_INT(excl("a\nb", "b"), 1);
    ig = parse("");
    CHECK_INT(ib_ignore_count(ig), 0);
    CHECK_INT(ib_ignore_match(ig, "anything"), 0);
    ib_ignore_free(ig);
    ig = ib_ignore_new_empty();
    CHECK_INT(ib_ignore_count(ig), 0);
    CHECK_INT(ib_ignore_match(ig, "x"), 0);
    ib_ignore_free(ig);
    /* Caller paths are cleaned too; the root itself is never excluded. */
    CHECK_INT(excl("foo\n", "./foo"), 1);
    CHECK_INT(excl("foo\n", "foo/"), 1);
    CHECK_INT(excl("foo\n", "/foo"), 1);
    CHECK_INT(excl("*\n", "."), 0);
    CHECK_INT(excl("**\n", ""), 0);
}

static void globbing(void)
{
    /* A pattern that matches a directory matches everything below it. */
    CHECK_INT(excl("docs\n", "docs/a/b/c.txt"), 1);
    CHECK_INT(excl("docs/*\n", "docs/a/b/c.txt"), 1);
    CHECK_INT(excl("docs/*\n", "docs"), 0);
    CHECK_INT(excl("*/cache\n", "a/cache/x/y"), 1);
    /* moby's multi-pattern cases. */
    CHECK_INT(excl("**\n!util/docker/web\n", "util/docker/web/foo"), 0);
    CHECK_INT(excl("**\n!util/docker/web\nutil/docker/web/foo\n", "util/docker/web/foo"), 1);
    CHECK_INT(excl("**\n!dist/*.whl\n", "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl"), 0);
    CHECK_INT(excl("!fileutils.go\n*.go\n", "fileutils.go"), 1);
    CHECK_INT(excl("*.go\n!fileutils.go\n", "fileutils.go"), 0);
    CHECK_INT(excl("docs\n!docs/README.md\n", "docs/README.md"), 0);
    CHECK_INT(excl("docs/\n!docs/README.md\n", "docs/README.md"), 0);
    CHECK_INT(excl("docs/*\n!docs/README.md\n", "docs/README.md"), 0);
    /* Classes and escapes with filepath.Match meaning. */
    CHECK_INT(excl("file[0-9].txt\n", "file7.txt"), 1);
    CHECK_INT(excl("file[0-9].txt\n", "fileA.txt"), 0);
    CHECK_INT(excl("[*]x\n", "*x"), 1);
    CHECK_INT(excl("[*]x\n", "ax"), 0);
    CHECK_INT(excl("\\[x]\n", "[x]"), 1);
    CHECK_INT(excl("a\\db\n", "adb"), 1);
    CHECK_INT(excl("a\\db\n", "a1b"), 0);
    CHECK_INT(excl("a^b\n", "a^b"), 1);
    CHECK_INT(excl("*.py[cod]\n", "pkg/__pycache__/m.pyc"), 0); /* '*' is one level */
    CHECK_INT(excl("**/*.py[cod]\n", "pkg/__pycache__/m.pyc"), 1);
    CHECK_INT(excl("**/*.py[cod]\n", "pkg/m.py"), 0);
    CHECK_INT(excl("[ab]x[cd]y[^e]\n", "bxdyz"), 1); /* several classes in one pattern */
    CHECK_INT(excl("[ab]x[cd]y[^e]\n", "bxdye"), 0);
    /* '*' steps whole characters (moby's regexp does), so the two classes
     * cannot split the 3-byte U+263A between them. */
    CHECK_INT(excl("*[^a][^a]\n", "\xe2\x98\xba"), 0);
    CHECK_INT(excl("*[^a][^a]\n", "\xe2\x98\xba\xe2\x98\xba"), 1);
    /* "**" corners exactly as moby has them. */
    CHECK_INT(excl("**foo\n", "xfoo"), 1);  /* HasSuffix */
    CHECK_INT(excl("**foo*\n", "xfoo"), 0); /* a regexp there: foo must start a name */
    CHECK_INT(excl("a**b\n", "ab"), 1);
    CHECK_INT(excl("a**b\n", "ax/b"), 1);
    CHECK_INT(excl("a**b\n", "axb"), 0);
    CHECK_INT(excl("a/**/b\n", "a/b"), 1);
    CHECK_INT(excl("a/**/b\n", "a/x/y/b"), 1);
    CHECK_INT(excl("a/**/b\n", "a/xb"), 0);
    CHECK_INT(excl("**/x\n", "a\nb/x"), 1);  /* string test: crosses '\n' */
    CHECK_INT(excl("**/x?\n", "a\nb/xy"), 0); /* regexp ".*" does not */
    CHECK_INT(excl("*/x\n", "a\nb/x"), 1);   /* "[^/]" does */

    /* No exponential blow-up on many stars. */
    char path[200];
    memset(path, 'a', sizeof path - 1);
    path[sizeof path - 1] = 0;
    CHECK_INT(excl("a*a*a*a*a*a*a*a*a*a*a*a*b\n", path), 0);
    CHECK_INT(excl("**/**/**/**/**/**/**/**/b\n", path), 0);

    /* Paths longer than the matcher's stack scratch. */
    size_t n = 10000;
    char *big = malloc(n + 1);
    for (size_t i = 0; i < n; i++) big[i] = (i % 10 == 9) ? '/' : 'd';
    memcpy(big + n - 6, "/x.pyc", 6);
    big[n] = 0;
    CHECK_INT(excl("**/*.pyc\n", big), 1);
    CHECK_INT(excl("ddddddddd/**/*.pyc\n", big), 1);
    CHECK_INT(excl("*.pyc\n", big), 0);
    CHECK_INT(excl("ddddddddd/*/*/q\n!ddddddddd/dd*\n", big), 0);
    ib_ignore *ig = parse("ddddddddd\n!**/*.pyc\n");
    CHECK_INT(ib_ignore_match(ig, big), 0);
    big[n - 10] = 0; /* a directory deep inside */
    CHECK_INT(ib_ignore_may_include_under(ig, big), 1);
    ib_ignore_free(ig);
    free(big);
}

static void walker_pruning(void)
{
    CHECK_INT(may("data\n!data/keep.txt\n", "data"), 1);
    CHECK_INT(may("data\n", "data"), 0);
    CHECK_INT(may("!data/keep.txt\ndata\n", "data"), 0); /* the later line wins */
    CHECK_INT(may("data\n!**/*.txt\n", "data"), 1);
    CHECK_INT(may("data\n!*/keep\n", "data"), 1);
    CHECK_INT(may("data\n!other/x\n", "data"), 0);
    CHECK_INT(may("data\n!dat\n", "data"), 0);
    CHECK_INT(may("data\n!*.txt\n", "data"), 0); /* '*' does not cross '/' */
    CHECK_INT(may("data\n!data/keep.txt\n", "data/sub"), 0);
    CHECK_INT(may("data\n!data/sub/keep.txt\n", "data/sub"), 1);
    CHECK_INT(may("data\n!data/s?b/k\n", "data/sub"), 1);
    CHECK_INT(may("data\n!data/[^s]*/k\n", "data/sub"), 0);
    CHECK_INT(may("notes\n!notes/KEEP.md\n", "notes/"), 1);
    CHECK_INT(may(".venv\n!*.py\n", ".venv"), 0);
    CHECK_INT(may("*\n!src\n", "docs"), 0);
    CHECK_INT(may("*\n!src\n", "src"), 1);      /* not excluded at all */
    CHECK_INT(may("data\n", "other"), 1);        /* not excluded at all */
    /* A walker that prunes with it lands on the same files as matching each. */
    ib_ignore *ig = parse("data\n!data/keep.txt\n");
    CHECK_INT(ib_ignore_match(ig, "data"), 1);
    CHECK_INT(ib_ignore_match(ig, "data/keep.txt"), 0);
    CHECK_INT(ib_ignore_match(ig, "data/other.txt"), 1);
    ib_ignore_free(ig);
}

static void errors(void)
{
    bad("ok\n# fine\n[\n", "ctx/.dockerignore:3: bad pattern \"[\"");
    bad("[^\n", "ctx/.dockerignore:1:");
    bad("a[\n", "ctx/.dockerignore:1:");
    bad("x\n[^bc\n", "ctx/.dockerignore:2:");
    bad("\\\n", "ctx/.dockerignore:1: bad pattern");
    bad("foo\\\n", "ctx/.dockerignore:1: bad pattern");
    bad("[]a]\n", "ctx/.dockerignore:1:");
    bad("[-]\n", "ctx/.dockerignore:1:");
    bad("[x-]\n", "ctx/.dockerignore:1:");
    bad("[-x]\n", "ctx/.dockerignore:1:");
    bad("[a-b-c]\n", "ctx/.dockerignore:1:");
    bad("[z-a]\n", "ctx/.dockerignore:1:");
    bad("[Local-Only]/\n", "ctx/.dockerignore:1:"); /* moby fails on first match */
    bad("[\xff]\n", "ctx/.dockerignore:1:");
    bad("a\n!\n", "ctx/.dockerignore:2: bad pattern \"!\"");
    bad("! \n", "ctx/.dockerignore:1:");
    bad("!/\n", "ctx/.dockerignore:1:");
    /* Not errors: a lone ']', and "!." (an exception that matches nothing). */
    CHECK_INT(excl("a]\n", "a]"), 1);
    CHECK_INT(excl("!.\n", "x"), 0);
}

int main(void)
{
    for (size_t i = 0; i < sizeof moby_matches / sizeof *moby_matches; i++) {
        const struct mcase *c = &moby_matches[i];
        char *text = ib_xasprintf("%s\n", c->pattern);
        int got = excl(text, c->path);
        if (got != c->want) fprintf(stderr, "moby case %zu: %s vs %s\n", i, c->pattern, c->path);
        CHECK_INT(got, c->want);
        free(text);
    }
    for (size_t i = 0; i < sizeof go_match / sizeof *go_match; i++) {
        const struct mcase *c = &go_match[i];
        char *text = ib_xasprintf("%s\n", c->pattern);
        int got = excl(text, c->path);
        if (got != c->want) fprintf(stderr, "go case %zu: %s vs %s\n", i, c->pattern, c->path);
        CHECK_INT(got, c->want);
        free(text);
    }
    docker_docs();
    preprocessing();
    globbing();
    walker_pruning();
    errors();
    return ut_done();
}
