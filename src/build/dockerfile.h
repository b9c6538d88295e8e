/* Dockerfile parser (Docker's reference semantics): instructions with line
 * numbers, flags, exec/shell forms, line continuations, comments, parser
 * directives (syntax, escape, check), heredocs; plus the word expansion
 * ($VAR, ${VAR}, ${VAR:-d}, ${VAR-d}, ${VAR:+a}, ${VAR+a}, quotes, escapes)
 * that the executor applies per instruction with the variables in scope. */
#ifndef IB_BUILD_DOCKERFILE_H
#define IB_BUILD_DOCKERFILE_H

#include <stddef.h>

typedef enum {
    IB_DF_FROM, IB_DF_RUN, IB_DF_CMD, IB_DF_LABEL, IB_DF_MAINTAINER, IB_DF_EXPOSE,
    IB_DF_ENV, IB_DF_ADD, IB_DF_COPY, IB_DF_ENTRYPOINT, IB_DF_VOLUME, IB_DF_USER,
    IB_DF_WORKDIR, IB_DF_ARG, IB_DF_ONBUILD, IB_DF_STOPSIGNAL, IB_DF_HEALTHCHECK,
    IB_DF_SHELL,
} ib_df_kind;

/* "--from=build" -> {name "from", value "build"}; "--link" -> {name "link", value NULL}.
 * Repeatable flags (RUN --mount) appear once per occurrence, in order. */
typedef struct {
    char *name;
    char *value;
} ib_df_flag;

/* A heredoc body attached to an instruction ("COPY <<EOF /dst", "RUN <<EOT"). */
typedef struct {
    char *name;    /* delimiter word without quotes / "<<" / "-" */
    char *content; /* body, lines joined with '\n', with a trailing '\n' */
    int expand;    /* 1 if the delimiter was unquoted (body subject to expansion) */
} ib_df_heredoc;

typedef struct {
    ib_df_kind kind;
    int line;         /* 1-based line of the keyword */
    int end_line;     /* last physical line (continuations, heredocs) */
    char *original;   /* "COPY --chown=1:1 a b /x" as written, continuations joined with ' ' */
    ib_df_flag *flags;
    size_t nflags;
    int json_form;    /* 1 for exec/JSON form (RUN/CMD/ENTRYPOINT/SHELL/COPY/ADD/VOLUME/HEALTHCHECK CMD) */
    /* Words, unexpanded (quotes kept, to be removed by ib_df_expand):
     *  FROM:        [image] or [image, "AS", name]  (AS matched case-insensitively, normalised to "AS")
     *  RUN/CMD/ENTRYPOINT: exec form -> the JSON strings (already unquoted; json_form=1, NOT to be expanded);
     *               shell form -> one word: the rest of the line (continuations joined by removing
     *               escape+newline, as Docker does)
     *  COPY/ADD:    sources..., dest (shell form: split on whitespace; JSON form: strings)
     *  ENV/LABEL:   alternating key, value (both raw); legacy "ENV k v w" -> [k, "v w"]
     *  ARG:         alternating name, default-or-NULL ("ARG a=1 b" -> [a, "1", b, NULL])
     *  EXPOSE/VOLUME/USER/WORKDIR/STOPSIGNAL/MAINTAINER/SHELL: the words (VOLUME/SHELL may be JSON)
     *  HEALTHCHECK: ["NONE"] or ["CMD", cmd...] with json_form for the command part
     *  ONBUILD:     [the trigger instruction text]                                         */
    char **args;
    size_t nargs;
    ib_df_heredoc *heredocs;
    size_t nheredocs;
} ib_df_instr;

typedef struct {
    char *filename;  /* as passed to parse, used in messages */
    char escape;     /* '\\' or '`' */
    char *syntax;    /* "# syntax=" directive value or NULL */
    ib_df_instr *instrs;
    size_t ninstrs;
} ib_dockerfile;

/* Parses text. On error returns IB_EINVALID with "<filename>:<line>: <what>"
 * (e.g. "Dockerfile:7: unknown instruction: COPPY"). Checks: unknown
 * instructions, missing/extra arguments, unknown or malformed flags for the
 * instruction (COPY: --from --chown --chmod --link --parents --exclude; ADD: +
 * --checksum --keep-git-dir --unpack; RUN: --mount --network --security; FROM:
 * --platform; HEALTHCHECK: --interval --timeout --start-period
 * --start-interval --retries), instructions other than ARG before the first
 * FROM, "FROM x AS" without a name, unterminated heredocs, empty Dockerfile. */
int ib_df_parse(ib_dockerfile **out, const char *text, size_t len, const char *filename);
void ib_df_free(ib_dockerfile *df);

const char *ib_df_kind_name(ib_df_kind k); /* "COPY" */
/* Value of the last flag called name, or NULL; *present (if non-NULL) set to 1 if given at all. */
const char *ib_df_flag_get(const ib_df_instr *in, const char *name, int *present);

/* Variable lookup for expansion: returns the value or NULL if unset. */
typedef const char *(*ib_df_lookup_fn)(void *ctx, const char *name);

/* Docker's ProcessWord: removes quotes ('..' literal, ".." with expansion,
 * escape char escapes the next char) and expands $VAR / ${VAR} /
 * ${VAR:-word} / ${VAR-word} / ${VAR:+word} / ${VAR+word} / ${VAR:?msg}
 * using lookup. Unset variables expand to "". Errors (IB_EINVALID,
 * "<file>:<line>: ...") for unterminated quotes or ${ and for ${VAR:?msg}
 * with VAR unset. *out is malloc'd. */
int ib_df_expand(char **out, const char *word, char escape, ib_df_lookup_fn lookup, void *ctx,
                 const char *file, int line);

/* Docker's ProcessWords (EXPOSE): like ib_df_expand, then split into words
 * on unquoted whitespace, including whitespace an unquoted $VAR expanded to
 * ("$PORTS" with PORTS="80 443/udp" gives two words; "\"$PORTS\"" one).
 * Empty words are dropped. *out (n strings) and each string are malloc'd. */
int ib_df_expand_words(char ***out, size_t *n, const char *word, char escape, ib_df_lookup_fn lookup, void *ctx,
                       const char *file, int line);

/* 1 if a RUN shell-form command line is exactly one heredoc word ("<<EOT",
 * "<<-'EOT'"): BuildKit then runs the heredoc body itself as the script
 * (a file executed through SHELL when it starts with "#!"), instead of
 * handing the shell the command line followed by its heredocs. */
int ib_df_heredoc_only(const char *cmd);

/* Go time.ParseDuration syntax ("30s", "1m30s", "1.5h", "0"), as HEALTHCHECK
 * --interval/--timeout/--start-period/--start-interval take: *ns on success,
 * IB_EINVALID otherwise. */
int ib_df_parse_duration(const char *s, long long *ns);

#endif
