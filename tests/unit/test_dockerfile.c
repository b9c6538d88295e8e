#include "ut.h"
#include "build/dockerfile.h"
#include "common/error.h"

#include <stdlib.h>

static ib_dockerfile *parse(const char *text)
{
    ib_dockerfile *df = NULL;
    int rc = ib_df_parse(&df, text, strlen(text), "Dockerfile");
    if (rc != 0) fprintf(stderr, "unexpected parse error: %s\n--- input:\n%s\n---\n", ib_error_last(), text);
    CHECK_INT(rc, 0);
    return df;
}

/* Parse must fail with IB_EINVALID and a message starting with `want`. */
#define BAD(text, want)                                                                       \
    do {                                                                                      \
        ib_dockerfile *bad_df = (ib_dockerfile *)1;                                           \
        ib_error_clear();                                                                     \
        CHECK_INT(ib_df_parse(&bad_df, (text), strlen(text), "Dockerfile"), IB_EINVALID);     \
        CHECK(bad_df == NULL);                                                                \
        const char *bad_msg = ib_error_last();                                                \
        if (strncmp(bad_msg, (want), strlen(want)) == 0) ut_pass++;                           \
        else { ut_fail++; fprintf(stderr, "%s:%d: error \"%s\", want prefix \"%s\"\n",        \
                                  __FILE__, __LINE__, bad_msg, (want)); }                     \
    } while (0)

#define ARG(in, i) ((i) < (in)->nargs ? (in)->args[i] : "(missing)")

/* ---------------------------------------------------------------- lookups */

static const char *vars[][2] = {
    {"A", "hello"}, {"EMPTY", ""}, {"P", "/usr/local/bin"}, {"F", "archive.tar.gz"}, {"SP", "a b"},
    {"1", "one"},   {NULL, NULL},
};

static const char *lookup(void *ctx, const char *name)
{
    (void)ctx;
    for (int i = 0; vars[i][0]; i++)
        if (strcmp(vars[i][0], name) == 0) return vars[i][1];
    return NULL;
}

static char *expand_esc(const char *w, char esc)
{
    char *out = NULL;
    int rc = ib_df_expand(&out, w, esc, lookup, NULL, "Dockerfile", 9);
    if (rc != 0) {
        fprintf(stderr, "unexpected expand error for [%s]: %s\n", w, ib_error_last());
        ut_fail++;
        return ib_xstrdup("(error)");
    }
    return out;
}

#define EXP(word, want)                   \
    do {                                  \
        char *exp_s = expand_esc(word, '\\'); \
        CHECK_STR(exp_s, want);           \
        free(exp_s);                      \
    } while (0)

#define EXP_BAD(word, want)                                                                   \
    do {                                                                                      \
        char *exp_s = (char *)1;                                                              \
        CHECK_INT(ib_df_expand(&exp_s, word, '\\', lookup, NULL, "Dockerfile", 9), IB_EINVALID); \
        CHECK(exp_s == NULL);                                                                 \
        CHECK_STR(ib_error_last(), want);                                                     \
    } while (0)

/* ------------------------------------------------------------------ tests */

static void test_all_kinds(void)
{
    const char *t =
        "ARG BASE=alpine:3.19\n"                      /* 1 */
        "from ${BASE} as Build\n"                     /* 2 */
        "RUN make\n"                                  /* 3 */
        "CMD [\"/app\", \"--serve\"]\n"               /* 4 */
        "LABEL version=1\n"                           /* 5 */
        "MAINTAINER Jane Doe <jane@example.com>\n"    /* 6 */
        "EXPOSE 80/tcp 443\n"                         /* 7 */
        "ENV PATH=/x:$PATH\n"                         /* 8 */
        "ADD https://example.com/a.tgz /opt/\n"       /* 9 */
        "COPY a b /dst/\n"                            /* 10 */
        "ENTRYPOINT [\"/bin/app\"]\n"                 /* 11 */
        "VOLUME /data /logs\n"                        /* 12 */
        "USER app:app\n"                              /* 13 */
        "WORKDIR /my dir\n"                           /* 14 */
        "ONBUILD RUN echo hi\n"                       /* 15 */
        "STOPSIGNAL SIGTERM\n"                        /* 16 */
        "HEALTHCHECK NONE\n"                          /* 17 */
        "SHELL [\"/bin/bash\", \"-c\"]\n";            /* 18 */
    ib_dockerfile *df = parse(t);
    if (!df) return;
    CHECK_INT(df->ninstrs, 18);
    CHECK_STR(df->filename, "Dockerfile");
    CHECK_INT(df->escape, '\\');
    CHECK(df->syntax == NULL);
    static const ib_df_kind kinds[] = {IB_DF_ARG,        IB_DF_FROM,    IB_DF_RUN,   IB_DF_CMD,     IB_DF_LABEL,
                                       IB_DF_MAINTAINER, IB_DF_EXPOSE,  IB_DF_ENV,   IB_DF_ADD,     IB_DF_COPY,
                                       IB_DF_ENTRYPOINT, IB_DF_VOLUME,  IB_DF_USER,  IB_DF_WORKDIR, IB_DF_ONBUILD,
                                       IB_DF_STOPSIGNAL, IB_DF_HEALTHCHECK, IB_DF_SHELL};
    for (size_t i = 0; i < df->ninstrs && i < 18; i++) {
        CHECK_INT(df->instrs[i].kind, kinds[i]);
        CHECK_INT(df->instrs[i].line, (int)i + 1);
        CHECK_INT(df->instrs[i].end_line, (int)i + 1);
    }
    ib_df_instr *in = df->instrs;
    CHECK_INT(in[0].nargs, 2);
    CHECK_STR(ARG(&in[0], 0), "BASE");
    CHECK_STR(ARG(&in[0], 1), "alpine:3.19");
    CHECK_INT(in[1].nargs, 3);
    CHECK_STR(ARG(&in[1], 0), "${BASE}");
    CHECK_STR(ARG(&in[1], 1), "AS");
    CHECK_STR(ARG(&in[1], 2), "Build");
    CHECK_STR(in[1].original, "from ${BASE} as Build");
    CHECK_INT(in[2].nargs, 1);
    CHECK_STR(ARG(&in[2], 0), "make");
    CHECK_INT(in[2].json_form, 0);
    CHECK_INT(in[3].json_form, 1);
    CHECK_INT(in[3].nargs, 2);
    CHECK_STR(ARG(&in[3], 1), "--serve");
    CHECK_STR(ARG(&in[4], 0), "version");
    CHECK_STR(ARG(&in[4], 1), "1");
    CHECK_INT(in[5].nargs, 1);
    CHECK_STR(ARG(&in[5], 0), "Jane Doe <jane@example.com>");
    CHECK_INT(in[6].nargs, 2);
    CHECK_STR(ARG(&in[6], 0), "80/tcp");
    CHECK_STR(ARG(&in[6], 1), "443");
    CHECK_STR(ARG(&in[7], 0), "PATH");
    CHECK_STR(ARG(&in[7], 1), "/x:$PATH");
    CHECK_INT(in[8].nargs, 2);
    CHECK_STR(ARG(&in[8], 0), "https://example.com/a.tgz");
    CHECK_INT(in[9].nargs, 3);
    CHECK_STR(ARG(&in[9], 2), "/dst/");
    CHECK_INT(in[9].json_form, 0);
    CHECK_INT(in[10].json_form, 1);
    CHECK_STR(ARG(&in[10], 0), "/bin/app");
    CHECK_INT(in[11].nargs, 2);
    CHECK_STR(ARG(&in[11], 1), "/logs");
    CHECK_STR(ARG(&in[12], 0), "app:app");
    CHECK_INT(in[13].nargs, 1); /* parseString keeps the whole rest */
    CHECK_STR(ARG(&in[13], 0), "/my dir");
    CHECK_INT(in[14].nargs, 1);
    CHECK_STR(ARG(&in[14], 0), "RUN echo hi");
    CHECK_STR(ARG(&in[15], 0), "SIGTERM");
    CHECK_INT(in[16].nargs, 1);
    CHECK_STR(ARG(&in[16], 0), "NONE");
    CHECK_INT(in[17].json_form, 1);
    CHECK_INT(in[17].nargs, 2);
    CHECK_STR(ARG(&in[17], 0), "/bin/bash");
    CHECK_STR(ib_df_kind_name(IB_DF_HEALTHCHECK), "HEALTHCHECK");
    CHECK_STR(ib_df_kind_name(IB_DF_COPY), "COPY");
    ib_df_free(df);
}

static void test_exec_vs_shell(void)
{
    ib_dockerfile *df = parse("FROM x\n"
                              "RUN [\"echo\", \"a b\", \"\\u00e9\\n\"]\n"
                              "RUN [ \"echo\" , 'single' ]\n"   /* not JSON: shell form */
                              "CMD [\"unterminated\"\n"          /* not JSON: shell form */
                              "ENTRYPOINT []\n"
                              "RUN echo [not json]\n"
                              "CMD [\"a\"] trailing\n"
                              "COPY [\"a b\", \"/c d/\"]\n"
                              "VOLUME [\"/v\"]\n"
                              "RUN [\"x\"]   \n");
    if (!df) return;
    ib_df_instr *in = df->instrs;
    CHECK_INT(in[1].json_form, 1);
    CHECK_INT(in[1].nargs, 3);
    CHECK_STR(ARG(&in[1], 1), "a b");
    CHECK_STR(ARG(&in[1], 2), "\xc3\xa9\n");
    CHECK_INT(in[2].json_form, 0);
    CHECK_INT(in[2].nargs, 1);
    CHECK_STR(ARG(&in[2], 0), "[ \"echo\" , 'single' ]");
    CHECK_INT(in[3].json_form, 0);
    CHECK_STR(ARG(&in[3], 0), "[\"unterminated\"");
    CHECK_INT(in[4].json_form, 1);
    CHECK_INT(in[4].nargs, 0);
    CHECK_INT(in[5].json_form, 0);
    CHECK_STR(ARG(&in[5], 0), "echo [not json]");
    CHECK_INT(in[6].json_form, 0);
    CHECK_STR(ARG(&in[6], 0), "[\"a\"] trailing");
    CHECK_INT(in[7].json_form, 1);
    CHECK_INT(in[7].nargs, 2);
    CHECK_STR(ARG(&in[7], 0), "a b");
    CHECK_STR(ARG(&in[7], 1), "/c d/");
    CHECK_INT(in[8].json_form, 1);
    CHECK_STR(ARG(&in[8], 0), "/v");
    CHECK_INT(in[9].json_form, 1);
    CHECK_INT(in[9].nargs, 1);
    ib_df_free(df);

    /* COPY in shell form is split on whitespace only, quotes are not grouping. */
    df = parse("FROM x\nCOPY \"a b\" /c\n");
    if (!df) return;
    CHECK_INT(df->instrs[1].nargs, 3);
    CHECK_STR(ARG(&df->instrs[1], 0), "\"a");
    ib_df_free(df);
}

static void test_continuations(void)
{
    const char *t = "FROM debian\n"                    /* 1 */
                    "RUN apt-get update \\\n"          /* 2 */
                    "    # a comment inside\n"         /* 3 */
                    "\n"                               /* 4: empty continuation line, skipped */
                    "    && apt-get install -y \\  \n" /* 5: trailing blanks after the escape */
                    "       curl\n"                    /* 6 */
                    "\n"                               /* 7 */
                    "  # top-level comment\n"          /* 8 */
                    "   run echo done\n"               /* 9: leading blanks, lower case */
                    "COPY a \\\n"                      /* 10 */
                    "  b\n"                            /* 11 */
                    "ENV X=1 \\\n"                     /* 12 */
                    "    Y=2\n";                       /* 13 */
    ib_dockerfile *df = parse(t);
    if (!df) return;
    CHECK_INT(df->ninstrs, 5);
    ib_df_instr *in = df->instrs;
    CHECK_INT(in[1].line, 2);
    CHECK_INT(in[1].end_line, 6);
    CHECK_STR(ARG(&in[1], 0), "apt-get update     && apt-get install -y        curl");
    CHECK_STR(in[1].original, "RUN apt-get update && apt-get install -y curl");
    CHECK_INT(in[2].kind, IB_DF_RUN);
    CHECK_INT(in[2].line, 9);
    CHECK_STR(ARG(&in[2], 0), "echo done");
    CHECK_STR(in[2].original, "run echo done");
    CHECK_INT(in[3].line, 10);
    CHECK_INT(in[3].end_line, 11);
    CHECK_INT(in[3].nargs, 2);
    CHECK_STR(ARG(&in[3], 1), "b");
    CHECK_INT(in[4].line, 12);
    CHECK_INT(in[4].end_line, 13);
    CHECK_INT(in[4].nargs, 4);
    CHECK_STR(ARG(&in[4], 2), "Y");
    CHECK_STR(ARG(&in[4], 3), "2");
    ib_df_free(df);

    /* CRLF line endings and a UTF-8 BOM. */
    df = parse("\xEF\xBB\xBF# syntax=docker/dockerfile:1\r\nFROM x\r\nRUN a \\\r\n b\r\n");
    if (!df) return;
    CHECK_STR(df->syntax, "docker/dockerfile:1");
    CHECK_INT(df->ninstrs, 2);
    CHECK_STR(ARG(&df->instrs[1], 0), "a  b");
    CHECK_INT(df->instrs[1].end_line, 4);
    ib_df_free(df);

    /* Continuation on the last line of the file: the instruction just ends. */
    df = parse("FROM x\nRUN a \\");
    if (!df) return;
    CHECK_STR(ARG(&df->instrs[1], 0), "a");
    ib_df_free(df);
}

static void test_directives(void)
{
    /* The Windows example from Docker's reference. */
    const char *t = "# escape=`\n"
                    "\n"
                    "FROM mcr.microsoft.com/windows/servercore\n"
                    "COPY testfile.txt c:\\\n"
                    "RUN dir c:\\\n"
                    "RUN echo a `\n"
                    "    b\n";
    ib_dockerfile *df = parse(t);
    if (!df) return;
    CHECK_INT(df->escape, '`');
    CHECK_INT(df->ninstrs, 4);
    CHECK_INT(df->instrs[1].line, 4);
    CHECK_STR(ARG(&df->instrs[1], 1), "c:\\");
    CHECK_STR(ARG(&df->instrs[2], 0), "dir c:\\");
    CHECK_INT(df->instrs[2].line, 5);
    CHECK_STR(ARG(&df->instrs[3], 0), "echo a     b");
    CHECK_INT(df->instrs[3].end_line, 7);
    ib_df_free(df);

    /* Keys are case-insensitive; whitespace around '=' is allowed; check= accepted. */
    df = parse("#\tSyNtAx = example/frontend:1 \n# ESCAPE=\\\n# check=skip=all\nFROM x\n");
    if (!df) return;
    CHECK_STR(df->syntax, "example/frontend:1");
    CHECK_INT(df->escape, '\\');
    ib_df_free(df);

    /* After a comment or blank line, directives are plain comments. */
    df = parse("# hello\n# escape=`\nFROM x\nRUN a \\\n b\n");
    if (!df) return;
    CHECK_INT(df->escape, '\\');
    CHECK_STR(ARG(&df->instrs[1], 0), "a  b");
    ib_df_free(df);
    df = parse("\n# escape=`\nFROM x\n");
    if (df) CHECK_INT(df->escape, '\\');
    ib_df_free(df);
    df = parse("# unknowndirective=x\n# escape=`\nFROM x\n");
    if (df) CHECK_INT(df->escape, '\\');
    ib_df_free(df);
    /* After an instruction too. */
    df = parse("FROM x\n# escape=`\nRUN a\n");
    if (df) CHECK_INT(df->escape, '\\');
    ib_df_free(df);

    BAD("# escape=x\nFROM x\n", "Dockerfile:1: invalid escape token 'x'");
    BAD("# escape=`\n# Escape=\\\nFROM x\n", "Dockerfile:2: only one escape parser directive can be used");
}

static void test_heredocs(void)
{
    const char *t = "FROM x\n"                          /* 1 */
                    "RUN <<EOF\n"                       /* 2 */
                    "echo $HOME\n"                      /* 3 */
                    "  indented\n"                      /* 4 */
                    "EOF\n"                             /* 5 */
                    "COPY <<EOF /dst\n"                 /* 6 */
                    "content\n"                         /* 7 */
                    "EOF\n"                             /* 8 */
                    "RUN <<-END cat\n"                  /* 9 */
                    "\t\tstripped\n"                    /* 10 */
                    "\tEND\n"                           /* 11 */
                    "COPY <<\"A\" <<'B' /d/\n"          /* 12 */
                    "a $X\n"                            /* 13 */
                    "A\n"                               /* 14 */
                    "b\n"                               /* 15 */
                    "B\n"                               /* 16 */
                    "RUN python3 <<EOF > /out\n"        /* 17 */
                    "EOF\n"                             /* 18 */
                    "RUN echo \"<<NOT\" '<<NOT2'\n"     /* 19 */
                    "RUN [\"sh\", \"<<NOJSON\"]\n"      /* 20 */
                    "ENV A=<<NOPE\n"                    /* 21 */
                    "RUN cat <<E1 && \\\n"              /* 22 */
                    "  cat <<E2\n"                      /* 23 */
                    "one\n"                             /* 24 */
                    "E1\n"                              /* 25 */
                    "two\n"                             /* 26 */
                    "E2\n"                              /* 27 */
                    "RUN 3<<FD cat <&3\n"               /* 28 */
                    "x\n"                               /* 29 */
                    "FD\n"                              /* 30 */
                    "LABEL done=1\n";                   /* 31 */
    ib_dockerfile *df = parse(t);
    if (!df) return;
    CHECK_INT(df->ninstrs, 12);
    ib_df_instr *in = df->instrs;

    CHECK_INT(in[1].line, 2);
    CHECK_INT(in[1].end_line, 5);
    CHECK_INT(in[1].nargs, 1);
    CHECK_STR(ARG(&in[1], 0), "<<EOF");
    CHECK_INT(in[1].nheredocs, 1);
    if (in[1].nheredocs == 1) {
        CHECK_STR(in[1].heredocs[0].name, "EOF");
        CHECK_STR(in[1].heredocs[0].content, "echo $HOME\n  indented\n");
        CHECK_INT(in[1].heredocs[0].expand, 1);
    }

    CHECK_INT(in[2].line, 6);
    CHECK_INT(in[2].end_line, 8);
    CHECK_INT(in[2].nargs, 2);
    CHECK_STR(ARG(&in[2], 0), "<<EOF");
    CHECK_STR(ARG(&in[2], 1), "/dst");
    CHECK_INT(in[2].nheredocs, 1);
    if (in[2].nheredocs == 1) CHECK_STR(in[2].heredocs[0].content, "content\n");

    CHECK_INT(in[3].line, 9);
    CHECK_INT(in[3].end_line, 11);
    CHECK_STR(ARG(&in[3], 0), "<<-END cat");
    CHECK_INT(in[3].nheredocs, 1);
    if (in[3].nheredocs == 1) {
        CHECK_STR(in[3].heredocs[0].name, "END");
        CHECK_STR(in[3].heredocs[0].content, "stripped\n");
    }

    CHECK_INT(in[4].line, 12);
    CHECK_INT(in[4].end_line, 16);
    CHECK_INT(in[4].nargs, 3);
    CHECK_STR(ARG(&in[4], 0), "<<\"A\"");
    CHECK_STR(ARG(&in[4], 1), "<<'B'");
    CHECK_INT(in[4].nheredocs, 2);
    if (in[4].nheredocs == 2) {
        CHECK_STR(in[4].heredocs[0].name, "A");
        CHECK_STR(in[4].heredocs[0].content, "a $X\n");
        CHECK_INT(in[4].heredocs[0].expand, 0);
        CHECK_STR(in[4].heredocs[1].name, "B");
        CHECK_STR(in[4].heredocs[1].content, "b\n");
        CHECK_INT(in[4].heredocs[1].expand, 0);
    }

    CHECK_INT(in[5].line, 17);
    CHECK_INT(in[5].end_line, 18);
    CHECK_INT(in[5].nheredocs, 1);
    if (in[5].nheredocs == 1) CHECK_STR(in[5].heredocs[0].content, "");

    CHECK_INT(in[6].line, 19);
    CHECK_INT(in[6].nheredocs, 0);
    CHECK_INT(in[7].line, 20);
    CHECK_INT(in[7].nheredocs, 0);
    CHECK_INT(in[8].line, 21);
    CHECK_INT(in[8].nheredocs, 0);
    CHECK_STR(ARG(&in[8], 1), "<<NOPE");

    CHECK_INT(in[9].line, 22);
    CHECK_INT(in[9].end_line, 27);
    CHECK_STR(ARG(&in[9], 0), "cat <<E1 &&   cat <<E2");
    CHECK_INT(in[9].nheredocs, 2);
    if (in[9].nheredocs == 2) {
        CHECK_STR(in[9].heredocs[0].content, "one\n");
        CHECK_STR(in[9].heredocs[1].name, "E2");
        CHECK_STR(in[9].heredocs[1].content, "two\n");
    }
    CHECK_INT(in[10].line, 28);
    CHECK_INT(in[10].nheredocs, 1);
    if (in[10].nheredocs == 1) CHECK_STR(in[10].heredocs[0].name, "FD");
    CHECK_INT(in[11].line, 31);
    CHECK_INT(in[11].kind, IB_DF_LABEL);
    ib_df_free(df);

    /* ONBUILD triggers may carry heredocs too (BuildKit canContainHeredoc). */
    df = parse("FROM x\nONBUILD RUN <<EOF\nhi\nEOF\nUSER u\n");
    if (!df) return;
    CHECK_INT(df->ninstrs, 3);
    CHECK_INT(df->instrs[1].nheredocs, 1);
    CHECK_INT(df->instrs[1].end_line, 4);
    CHECK_STR(ARG(&df->instrs[1], 0), "RUN <<EOF");
    ib_df_free(df);

    BAD("FROM x\nRUN true\nRUN <<EOF\nnever closed\n", "Dockerfile:3: unterminated heredoc");
    BAD("FROM x\nCOPY <<A <<B /d\nA\nb\n", "Dockerfile:2: unterminated heredoc B");
}

static void test_flags(void)
{
    const char *t = "FROM --platform=linux/amd64 x AS b\n"
                    "COPY --from=b --chown=1:1 --link --chmod=755 a /x\n"
                    "RUN --mount=type=cache,target=/root/.cache --mount=type=secret,id=s --network=none make\n"
                    "ADD --checksum=sha256:abc --keep-git-dir=true https://x/y.git /src\n"
                    "COPY --link=false --exclude=*.md --exclude=*.txt . /app\n"
                    "RUN --mount=type=bind,source=\"/a b\" -- --not-a-flag\n"
                    "HEALTHCHECK --interval=30s --timeout=1m30s --start-period=0 --retries=3 CMD curl -f http://x/\n"
                    "HEALTHCHECK CMD [\"/check\", \"-v\"]\n"
                    "RUN echo --not-a-flag\n";
    ib_dockerfile *df = parse(t);
    if (!df) return;
    ib_df_instr *in = df->instrs;
    int present = 0;
    CHECK_INT(in[0].nflags, 1);
    CHECK_STR(ib_df_flag_get(&in[0], "platform", &present), "linux/amd64");
    CHECK_INT(present, 1);
    CHECK_INT(in[0].nargs, 3);
    CHECK_STR(in[0].original, "FROM --platform=linux/amd64 x AS b");

    CHECK_INT(in[1].nflags, 4);
    CHECK_STR(ib_df_flag_get(&in[1], "from", NULL), "b");
    CHECK_STR(ib_df_flag_get(&in[1], "chown", NULL), "1:1");
    CHECK(ib_df_flag_get(&in[1], "link", &present) == NULL);
    CHECK_INT(present, 1);
    CHECK(ib_df_flag_get(&in[1], "parents", &present) == NULL);
    CHECK_INT(present, 0);
    CHECK_INT(in[1].nargs, 2);
    CHECK_STR(ARG(&in[1], 0), "a");
    CHECK_STR(in[1].original, "COPY --from=b --chown=1:1 --link --chmod=755 a /x");

    CHECK_INT(in[2].nflags, 3);
    if (in[2].nflags == 3) {
        CHECK_STR(in[2].flags[0].name, "mount");
        CHECK_STR(in[2].flags[0].value, "type=cache,target=/root/.cache");
        CHECK_STR(in[2].flags[1].name, "mount");
        CHECK_STR(in[2].flags[1].value, "type=secret,id=s");
    }
    CHECK_STR(ib_df_flag_get(&in[2], "mount", NULL), "type=secret,id=s");
    CHECK_STR(ib_df_flag_get(&in[2], "network", NULL), "none");
    CHECK_STR(ARG(&in[2], 0), "make");

    CHECK_STR(ib_df_flag_get(&in[3], "keep-git-dir", NULL), "true");
    CHECK_STR(ib_df_flag_get(&in[3], "checksum", NULL), "sha256:abc");
    CHECK_STR(ib_df_flag_get(&in[4], "link", NULL), "false");
    CHECK_INT(in[4].nflags, 3);
    CHECK_STR(ib_df_flag_get(&in[4], "exclude", NULL), "*.txt");

    /* Quotes are removed inside flag values; "--" ends the flags. */
    CHECK_INT(in[5].nflags, 1);
    CHECK_STR(ib_df_flag_get(&in[5], "mount", NULL), "type=bind,source=/a b");
    CHECK_STR(ARG(&in[5], 0), "--not-a-flag");

    CHECK_INT(in[6].nflags, 4);
    CHECK_INT(in[6].json_form, 0);
    CHECK_INT(in[6].nargs, 2);
    CHECK_STR(ARG(&in[6], 0), "CMD");
    CHECK_STR(ARG(&in[6], 1), "curl -f http://x/");
    CHECK_INT(in[7].json_form, 1);
    CHECK_INT(in[7].nargs, 3);
    CHECK_STR(ARG(&in[7], 1), "/check");
    CHECK_STR(ARG(&in[7], 2), "-v");
    CHECK_INT(in[8].nflags, 0);
    CHECK_STR(ARG(&in[8], 0), "echo --not-a-flag");
    ib_df_free(df);

    BAD("FROM x\nRUN true\nCOPY --frm=a b /c\n", "Dockerfile:3: unknown flag: --frm");
    BAD("FROM x\nADD --from=a b /c\n", "Dockerfile:2: unknown flag: --from");
    BAD("FROM x\nRUN --chown=1 true\n", "Dockerfile:2: unknown flag: --chown");
    BAD("FROM x\nENV --foo=bar a=b\n", "Dockerfile:2: unknown flag: --foo");
    BAD("FROM --plattform=x y\n", "Dockerfile:1: unknown flag: --plattform");
    BAD("FROM x\nCOPY --from a /b\n", "Dockerfile:2: missing a value on flag: --from");
    BAD("FROM x\nCOPY --link=maybe a /b\n", "Dockerfile:2: expecting boolean value for flag --link");
    BAD("FROM x\nCOPY --from=a --from=b c /d\n", "Dockerfile:2: duplicate flag specified: --from");
    BAD("FROM x\nHEALTHCHECK --interval=5 CMD true\n", "Dockerfile:2: invalid duration for --interval: 5");
    BAD("FROM x\nHEALTHCHECK --timeout=10us CMD true\n", "Dockerfile:2: --timeout cannot be less than 1ms");
    BAD("FROM x\nHEALTHCHECK --retries=-1 CMD true\n", "Dockerfile:2: --retries cannot be negative");
    BAD("FROM x\nHEALTHCHECK --retries=x CMD true\n", "Dockerfile:2: invalid value for --retries: x");

    long long ns = -1;
    CHECK_INT(ib_df_parse_duration("1m30s", &ns), 0);
    CHECK_INT(ns, 90000000000LL);
    CHECK_INT(ib_df_parse_duration("1.5h", &ns), 0);
    CHECK_INT(ns, 5400000000000LL);
    CHECK_INT(ib_df_parse_duration("250ms", &ns), 0);
    CHECK_INT(ns, 250000000LL);
    CHECK_INT(ib_df_parse_duration("0", &ns), 0);
    CHECK_INT(ns, 0);
    CHECK_INT(ib_df_parse_duration("", &ns), IB_EINVALID);
    CHECK_INT(ib_df_parse_duration("10", &ns), IB_EINVALID);
    CHECK_INT(ib_df_parse_duration("s", &ns), IB_EINVALID);
    CHECK_INT(ib_df_parse_duration("1x", &ns), IB_EINVALID);
}

static void test_env_label_arg(void)
{
    const char *t = "ARG A B=2 C=\"x y\"\n"
                    "FROM x\n"
                    "ENV A=\"x y\" B=z C=\n"
                    "ENV key value with  words\n"
                    "ENV D='single quoted' E=esc\\ aped\n"
                    "LABEL \"com.x\"=\"v\" multi=\"a \\\"b\\\"\"\n"
                    "LABEL legacy some value\n"
                    "ARG V\n"
                    "ARG W=\n";
    ib_dockerfile *df = parse(t);
    if (!df) return;
    ib_df_instr *in = df->instrs;
    CHECK_INT(in[0].nargs, 6);
    CHECK_STR(ARG(&in[0], 0), "A");
    CHECK(in[0].nargs >= 2 && in[0].args[1] == NULL);
    CHECK_STR(ARG(&in[0], 2), "B");
    CHECK_STR(ARG(&in[0], 3), "2");
    CHECK_STR(ARG(&in[0], 5), "\"x y\"");

    CHECK_INT(in[2].nargs, 6);
    CHECK_STR(ARG(&in[2], 0), "A");
    CHECK_STR(ARG(&in[2], 1), "\"x y\"");
    CHECK_STR(ARG(&in[2], 3), "z");
    CHECK_STR(ARG(&in[2], 4), "C");
    CHECK_STR(ARG(&in[2], 5), "");

    CHECK_INT(in[3].nargs, 2);
    CHECK_STR(ARG(&in[3], 0), "key");
    CHECK_STR(ARG(&in[3], 1), "value with  words");

    CHECK_INT(in[4].nargs, 4);
    CHECK_STR(ARG(&in[4], 1), "'single quoted'");
    CHECK_STR(ARG(&in[4], 3), "esc\\ aped");

    CHECK_INT(in[5].nargs, 4);
    CHECK_STR(ARG(&in[5], 0), "\"com.x\"");
    CHECK_STR(ARG(&in[5], 1), "\"v\"");
    CHECK_STR(ARG(&in[5], 3), "\"a \\\"b\\\"\"");

    CHECK_INT(in[6].nargs, 2);
    CHECK_STR(ARG(&in[6], 0), "legacy");
    CHECK_STR(ARG(&in[6], 1), "some value");

    CHECK_INT(in[7].nargs, 2);
    CHECK(in[7].nargs == 2 && in[7].args[1] == NULL);
    CHECK_INT(in[8].nargs, 2);
    CHECK_STR(ARG(&in[8], 1), "");

    /* Raw words round-trip through expansion to what Docker would set. */
    char *v = expand_esc(in[2].args[1], '\\');
    CHECK_STR(v, "x y");
    free(v);
    v = expand_esc(in[5].args[3], '\\');
    CHECK_STR(v, "a \"b\"");
    free(v);
    v = expand_esc(in[4].args[3], '\\');
    CHECK_STR(v, "esc aped");
    free(v);
    ib_df_free(df);

    BAD("FROM x\nENV A\n", "Dockerfile:2: ENV must have two arguments");
    BAD("FROM x\nENV\n", "Dockerfile:2: ENV requires at least one argument");
    BAD("FROM x\nENV A=1 B\n", "Dockerfile:2: Syntax error - can't find = in \"B\"");
    BAD("FROM x\nENV =1\n", "Dockerfile:2: ENV names can not be blank");
    BAD("FROM x\nLABEL\n", "Dockerfile:2: LABEL requires at least one argument");
    BAD("FROM x\nLABEL k\n", "Dockerfile:2: LABEL must have two arguments");
    BAD("FROM x\nARG\n", "Dockerfile:2: ARG requires at least one argument");
}

static void test_bad_inputs(void)
{
    BAD("", "Dockerfile: file with no instructions");
    BAD("# only a comment\n\n   \n", "Dockerfile: file with no instructions");
    BAD("FROM x\nRUN a\nCOPPY a b\n", "Dockerfile:3: unknown instruction: COPPY");
    BAD("FROM x\n\nRUN true\nCOPY onlyone\n", "Dockerfile:4: COPY requires at least two arguments");
    BAD("FROM x\nADD [\"a\"]\n", "Dockerfile:2: ADD requires at least two arguments");
    BAD("FROM x\nRUN\n", "Dockerfile:2: RUN requires at least one argument");
    BAD("FROM x\nCMD\n", "Dockerfile:2: CMD requires at least one argument");
    BAD("FROM x\nEXPOSE\n", "Dockerfile:2: EXPOSE requires at least one argument");
    BAD("FROM x\nUSER\n", "Dockerfile:2: USER requires exactly one argument");
    BAD("FROM x\nWORKDIR   \n", "Dockerfile:2: WORKDIR requires exactly one argument");
    BAD("FROM x\nVOLUME\n", "Dockerfile:2: VOLUME requires at least one argument");
    BAD("FROM x\nVOLUME [\"\"]\n", "Dockerfile:2: VOLUME specified can not be an empty string");
    BAD("FROM x\nSHELL /bin/sh -c\n", "Dockerfile:2: SHELL requires the arguments to be in JSON form");
    BAD("FROM x\nCMD [\"a\", 1]\n", "Dockerfile:2: when using JSON array syntax, arrays must be comprised of strings only");
    BAD("FROM x\nHEALTHCHECK\n", "Dockerfile:2: HEALTHCHECK requires at least one argument");
    BAD("FROM x\nHEALTHCHECK CHECK true\n", "Dockerfile:2: Unknown type \"CHECK\" in HEALTHCHECK (try CMD)");
    BAD("FROM x\nHEALTHCHECK NONE x\n", "Dockerfile:2: HEALTHCHECK NONE takes no arguments");
    BAD("FROM x\nHEALTHCHECK CMD\n", "Dockerfile:2: Missing command after HEALTHCHECK CMD");
    BAD("FROM x\nONBUILD\n", "Dockerfile:2: ONBUILD requires at least one argument");
    BAD("FROM x\nONBUILD ONBUILD RUN x\n", "Dockerfile:2: Chaining ONBUILD");
    BAD("FROM x\nONBUILD FROM y\n", "Dockerfile:2: FROM isn't allowed as an ONBUILD trigger");
    BAD("FROM x\nONBUILD COPY a\n", "Dockerfile:2: COPY requires at least two arguments");
    BAD("FROM x\nONBUILD BOGUS a\n", "Dockerfile:2: unknown instruction: BOGUS");
    BAD("FROM\n", "Dockerfile:1: FROM requires either one or three arguments");
    BAD("FROM x AS\n", "Dockerfile:1: FROM x AS: missing stage name");
    BAD("FROM x y\n", "Dockerfile:1: FROM requires either one or three arguments");
    BAD("FROM x AS 1bad\n", "Dockerfile:1: invalid name for build stage: \"1bad\"");
    BAD("FROM x AS b c\n", "Dockerfile:1: FROM requires either one or three arguments");
    BAD("ARG A\nRUN true\nFROM x\n", "Dockerfile:2: RUN before the first FROM");
    BAD("# c\nENV A=1\n", "Dockerfile:2: ENV before the first FROM");
    /* The line reported is the keyword's, even after continuations and heredocs. */
    BAD("FROM x\nRUN <<EOF\n\nEOF\nRUN a \\\n  b\nCOPY \\\n  one\n", "Dockerfile:7: COPY requires at least two arguments");
    /* NUL needs the explicit length. */
    {
        ib_dockerfile *df = (ib_dockerfile *)1;
        CHECK_INT(ib_df_parse(&df, "FROM x\nRUN a\0b\n", 15, "ctx/Dockerfile.dev"), IB_EINVALID);
        CHECK_STR(ib_error_last(), "ctx/Dockerfile.dev:2: unexpected NUL byte");
        CHECK(df == NULL);
    }
    /* The filename given is used in messages. */
    {
        ib_dockerfile *df = NULL;
        CHECK_INT(ib_df_parse(&df, "FROM x\nFOO\n", 11, "sub/Dockerfile.ci"), IB_EINVALID);
        CHECK_STR(ib_error_last(), "sub/Dockerfile.ci:2: unknown instruction: FOO");
    }
}

static void test_expand(void)
{
    EXP("plain", "plain");
    EXP("", "");
    EXP("$A", "hello");
    EXP("${A}", "hello");
    EXP("x${A}y", "xhelloy");
    EXP("$A.txt", "hello.txt");
    EXP("$Ab", "");
    EXP("$UNSET", "");
    EXP("a$", "a$");
    EXP("$ b", "$ b");
    EXP("$1x", "onex");

    EXP("${A:-d}", "hello");
    EXP("${UNSET:-d}", "d");
    EXP("${EMPTY:-d}", "d");
    EXP("${A-d}", "hello");
    EXP("${UNSET-d}", "d");
    EXP("${EMPTY-d}", ""); /* set but empty: '-' keeps it */
    EXP("${A:+x}", "x");
    EXP("${EMPTY:+x}", "");
    EXP("${EMPTY+x}", "x");
    EXP("${UNSET+x}", "");
    EXP("${UNSET:+x}", "");
    EXP("${A:?boom}", "hello");
    EXP("${EMPTY?boom}", "");
    EXP("${UNSET:-${A}}", "hello");
    EXP("${UNSET:-\"q u\"}", "q u");
    EXP("${UNSET:-$A/x}", "hello/x");
    EXP("${UNSET:-a b}", "a b");

    EXP("\\$A", "$A");
    EXP("\\${A}", "${A}");
    EXP("a\\ b", "a b");
    EXP("a\\\\b", "a\\b");
    EXP("trailing\\", "trailing");
    EXP("'$A'", "$A");
    EXP("'a\\b'", "a\\b");
    EXP("\"$A\"", "hello");
    EXP("\"a 'b' $A\"", "a 'b' hello");
    EXP("\"\\$A\"", "$A");
    EXP("\"\\\"\"", "\"");
    EXP("\"\\n\"", "\\n"); /* not escapable inside "...": stays literal */
    EXP("x\"\"y", "xy");
    EXP("\"${SP}\"", "a b");

    /* Pattern modifiers. */
    EXP("${F%.*}", "archive.tar");
    EXP("${F%%.*}", "archive");
    EXP("${F#*.}", "tar.gz");
    EXP("${F##*.}", "gz");
    EXP("${P#/usr}", "/local/bin");
    EXP("${F%.zip}", "archive.tar.gz");
    EXP("${F/.tar/}", "archive.gz");
    EXP("${P//\\//:}", ":usr:local:bin");
    EXP("${UNSET#x}", "");

    /* Backtick as the escape token. */
    {
        char *s = expand_esc("a`$A`\"b\\", '`');
        CHECK_STR(s, "a$A\"b\\");
        free(s);
        s = expand_esc("\"c:\\`$A\"", '`');
        CHECK_STR(s, "c:\\$A");
        free(s);
    }

    /* NULL lookup: everything unset. */
    {
        char *s = NULL;
        CHECK_INT(ib_df_expand(&s, "${A:-z}$A", '\\', NULL, NULL, "Dockerfile", 1), 0);
        CHECK_STR(s, "z");
        free(s);
    }

    EXP_BAD("\"open", "Dockerfile:9: unexpected end of statement while looking for matching double-quote");
    EXP_BAD("'open", "Dockerfile:9: unexpected end of statement while looking for matching single-quote");
    EXP_BAD("\"esc\\", "Dockerfile:9: unexpected end of statement while looking for matching double-quote");
    EXP_BAD("${A", "Dockerfile:9: syntax error: missing '}'");
    EXP_BAD("${", "Dockerfile:9: syntax error: missing '}'");
    EXP_BAD("${A:-x", "Dockerfile:9: unexpected end of statement while looking for matching }");
    EXP_BAD("${}", "Dockerfile:9: syntax error: bad substitution");
    EXP_BAD("${:a}", "Dockerfile:9: syntax error: bad substitution");
    EXP_BAD("${A!}", "Dockerfile:9: unsupported modifier (!) in substitution");
    EXP_BAD("${A:x}", "Dockerfile:9: unsupported modifier (:x) in substitution");
    EXP_BAD("${UNSET:?need it}", "Dockerfile:9: UNSET: need it");
    EXP_BAD("${UNSET?}", "Dockerfile:9: UNSET: is not allowed to be unset");
    EXP_BAD("${EMPTY:?}", "Dockerfile:9: EMPTY: is not allowed to be empty");
    EXP_BAD("${A:-${UNSET:?inner}}", "Dockerfile:9: UNSET: inner");

    /* Deep nesting is refused instead of overflowing the stack. */
    {
        size_t depth = 5000;
        char *w = malloc(depth * 6 + 1);
        size_t k = 0;
        for (size_t i = 0; i < depth; i++) memcpy(w + k, "${A:-", 5), k += 5;
        for (size_t i = 0; i < depth; i++) w[k++] = '}';
        w[k] = 0;
        char *s = (char *)1;
        CHECK_INT(ib_df_expand(&s, w, '\\', lookup, NULL, "Dockerfile", 1), IB_EINVALID);
        CHECK(s == NULL);
        free(w);
    }
}

/* ProcessWords (EXPOSE): unquoted expansions split, quoted text and escaped
 * blanks do not, empty words vanish. */
static void test_expand_words(void)
{
    static const struct {
        const char *in;
        const char *want; /* words joined with '|' */
    } cases[] = {
        {"$SP", "a|b"},           {"\"$SP\"", "a b"},      {"x$SP", "xa|b"},     {"'$SP'", "$SP"},
        {"80 443/udp", "80|443/udp"}, {"a\\ b", "a b"},    {"$UNSET", ""},       {"\"\"", ""},
        {"  $A  ", "hello"},      {"${UNSET:-1 2}", "1|2"}, {"p\"$SP\"q", "pa bq"}, {"", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char **w = NULL;
        size_t n = 0;
        int rc = ib_df_expand_words(&w, &n, cases[i].in, '\\', lookup, NULL, "Dockerfile", 3);
        CHECK_INT(rc, 0);
        char joined[256] = "";
        for (size_t k = 0; k < n; k++) {
            if (k) strcat(joined, "|");
            strncat(joined, w[k], sizeof joined - strlen(joined) - 2);
            free(w[k]);
        }
        free(w);
        if (strcmp(joined, cases[i].want)) fprintf(stderr, "expand_words [%s]\n", cases[i].in);
        CHECK_STR(joined, cases[i].want);
    }
    char **w = (char **)1;
    size_t n = 7;
    CHECK_INT(ib_df_expand_words(&w, &n, "\"open", '\\', lookup, NULL, "Dockerfile", 3), IB_EINVALID);
    CHECK(w == NULL && n == 0);
    CHECK_STR(ib_error_last(), "Dockerfile:3: unexpected end of statement while looking for matching double-quote");
}

/* RUN's command line vs its heredocs (BuildKit dispatchRun's MustParseHeredoc
 * on the whole line), ADD --unpack, and exec form with trailing text. */
static void test_run_heredoc_forms(void)
{
    CHECK_INT(ib_df_heredoc_only("<<EOT"), 1);
    CHECK_INT(ib_df_heredoc_only("<<-EOT"), 1);
    CHECK_INT(ib_df_heredoc_only("<<'EOT'"), 1);
    CHECK_INT(ib_df_heredoc_only("<<\"E O\""), 1);
    CHECK_INT(ib_df_heredoc_only("3<<EOT"), 1);
    CHECK_INT(ib_df_heredoc_only("<<EOT bash"), 0);
    CHECK_INT(ib_df_heredoc_only("cat <<EOT"), 0);
    CHECK_INT(ib_df_heredoc_only("<<EOT > /x"), 0);
    CHECK_INT(ib_df_heredoc_only("<<"), 0);
    CHECK_INT(ib_df_heredoc_only("<<A<<B"), 0);
    CHECK_INT(ib_df_heredoc_only(""), 0);

    ib_dockerfile *df = parse("FROM x\n"
                              "RUN <<FILE1 cat > file1 && <<FILE2 cat > file2\n"
                              "I am\nfirst\nFILE1\nI am\nsecond\nFILE2\n"
                              "ADD --unpack=false a.tar /d/\n"
                              "ADD --unpack a.tar /d/\n"
                              "CMD [\"node\", \"server.js\"]  # start\n");
    if (!df) return;
    ib_df_instr *in = df->instrs;
    CHECK_INT(in[1].nheredocs, 2);
    CHECK_STR(ARG(&in[1], 0), "<<FILE1 cat > file1 && <<FILE2 cat > file2");
    if (in[1].nheredocs == 2) {
        CHECK_STR(in[1].heredocs[0].content, "I am\nfirst\n");
        CHECK_STR(in[1].heredocs[1].content, "I am\nsecond\n");
    }
    int present = 0;
    CHECK_STR(ib_df_flag_get(&in[2], "unpack", &present), "false");
    CHECK_INT(present, 1);
    CHECK(ib_df_flag_get(&in[3], "unpack", &present) == NULL);
    CHECK_INT(present, 1);
    /* BuildKit's parseJSON is json.Unmarshal, which rejects trailing text:
     * the line is shell form, exactly as Docker builds it. */
    CHECK_INT(in[4].json_form, 0);
    CHECK_STR(ARG(&in[4], 0), "[\"node\", \"server.js\"]  # start");
    ib_df_free(df);
    BAD("FROM x\nADD --unpack=maybe a.tar /d/\n", "Dockerfile:2: expecting boolean value for flag --unpack, not: maybe");
    BAD("FROM x\nCOPY --unpack=true a.tar /d/\n", "Dockerfile:2: unknown flag: --unpack");
}

/* Cheap in-process fuzz: random byte soup from a Dockerfile-ish alphabet must
 * never crash or leak (run under ASan/UBSan). */
static void test_fuzz(void)
{
    static const char *atoms[] = {"FROM x\n", "RUN ", "COPY ", "ENV ", "ARG ", "<<EOF", "<<-E", "EOF\n", "\tE\n",
                                  "\\\n", "`\n", "# escape=`\n", "#c\n", "\"", "'", "$", "${", "}", ":-", "[",
                                  "]", "\"a\",", "--from=", "--mount=a", "=", " ", "\n", "a", "\r\n", "ONBUILD ",
                                  "HEALTHCHECK ", "CMD ", "NONE", "-- ", "#", "%", "/", "?", "\t"};
    unsigned seed = 12345;
    char buf[512];
    int parsed = 0, dangling = 0;
    for (int iter = 0; iter < 20000; iter++) {
        size_t n = 0;
        int natoms = 1 + (int)((seed = seed * 1103515245u + 12345u) >> 16) % 24;
        for (int a = 0; a < natoms; a++) {
            seed = seed * 1103515245u + 12345u;
            const char *s = atoms[(seed >> 16) % (sizeof atoms / sizeof atoms[0])];
            size_t l = strlen(s);
            if (n + l >= sizeof buf) break;
            memcpy(buf + n, s, l);
            n += l;
        }
        buf[n] = 0;
        ib_dockerfile *df = NULL;
        if (ib_df_parse(&df, buf, n, "Dockerfile") == 0) {
            parsed++;
            for (size_t i = 0; i < df->ninstrs; i++)
                for (size_t j = 0; j < df->instrs[i].nargs; j++) {
                    char *o = NULL;
                    if (!df->instrs[i].args[j]) continue;
                    if (ib_df_expand(&o, df->instrs[i].args[j], df->escape, lookup, NULL, "Dockerfile", 1) == 0)
                        free(o);
                }
            ib_df_free(df);
        } else if (df != NULL) {
            dangling++;
        }
        char *o = NULL;
        if (ib_df_expand(&o, buf, '\\', lookup, NULL, NULL, 0) == 0) free(o);
        char **ws = NULL;
        size_t nws = 0;
        if (ib_df_expand_words(&ws, &nws, buf, '\\', lookup, NULL, NULL, 0) == 0) {
            for (size_t k = 0; k < nws; k++) free(ws[k]);
            free(ws);
        }
        (void)ib_df_heredoc_only(buf);
    }
    CHECK(parsed > 0);
    CHECK_INT(dangling, 0);
}

int main(void)
{
    test_all_kinds();
    test_exec_vs_shell();
    test_continuations();
    test_directives();
    test_heredocs();
    test_flags();
    test_env_label_arg();
    test_bad_inputs();
    test_expand();
    test_expand_words();
    test_run_heredoc_forms();
    test_fuzz();
    return ut_done();
}
