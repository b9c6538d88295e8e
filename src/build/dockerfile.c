/* Dockerfile parser and word expansion.
 *
 * The reference is BuildKit's frontend/dockerfile: parser/parser.go (line
 * handling, directives, heredocs, the per-instruction argument splitters),
 * parser/line_parsers.go, instructions/bflag.go + parse.go (flag and argument
 * checks) and shell/lex.go (ProcessWord). Function-level comments name the Go
 * function mirrored so behaviour differences can be traced back. */
#include "build/dockerfile.h"

#include "common/error.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <fnmatch.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ------------------------------------------------------------------ buffers */

typedef struct {
    char *p;
    size_t n, cap;
} sbuf;

static void sb_putn(sbuf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 64;
        while (c < b->n + n + 1) c *= 2;
        b->p = ib_xrealloc(b->p, c);
        b->cap = c;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

static void sb_putc(sbuf *b, char c) { sb_putn(b, &c, 1); }
static void sb_puts(sbuf *b, const char *s) { sb_putn(b, s, strlen(s)); }

static char *sb_take(sbuf *b)
{
    char *p = b->p ? b->p : ib_xstrdup("");
    b->p = NULL;
    b->n = b->cap = 0;
    return p;
}

static void sb_reset(sbuf *b)
{
    b->n = 0;
    if (b->p) b->p[0] = 0;
}

typedef struct {
    char **v;
    size_t n, cap;
} strv;

static void sv_push(strv *s, char *owned)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 8;
        s->v = ib_xrealloc(s->v, s->cap * sizeof *s->v);
    }
    s->v[s->n++] = owned;
}

static void sv_free(strv *s)
{
    for (size_t i = 0; i < s->n; i++) free(s->v[i]);
    free(s->v);
    s->v = NULL;
    s->n = s->cap = 0;
}

/* Go's unicode.IsSpace restricted to ASCII: the Dockerfile grammar only ever
 * separates words with ASCII whitespace in practice. */
static int is_space(int c) { return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'; }
/* parser.go reWhitespace = [\t\v\f\r ]+ (used by the whitespace splitters). */
static int is_ws_sep(int c) { return c == ' ' || c == '\t' || c == '\v' || c == '\f' || c == '\r'; }

static char *trim_dup(const char *s, size_t n)
{
    while (n && is_space((unsigned char)*s)) s++, n--;
    while (n && is_space((unsigned char)s[n - 1])) n--;
    return ib_xstrndup(s, n);
}

/* --------------------------------------------------------------- instr data */

static const char *const kind_names[] = {
    "FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
    "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
};
#define NKINDS (sizeof kind_names / sizeof kind_names[0])

const char *ib_df_kind_name(ib_df_kind k)
{
    return (unsigned)k < NKINDS ? kind_names[k] : "?";
}

static void instr_clear(ib_df_instr *in)
{
    free(in->original);
    for (size_t i = 0; i < in->nflags; i++) {
        free(in->flags[i].name);
        free(in->flags[i].value);
    }
    free(in->flags);
    for (size_t i = 0; i < in->nargs; i++) free(in->args[i]);
    free(in->args);
    for (size_t i = 0; i < in->nheredocs; i++) {
        free(in->heredocs[i].name);
        free(in->heredocs[i].content);
    }
    free(in->heredocs);
    memset(in, 0, sizeof *in);
}

/* Takes ownership of s (may be NULL: ARG without default). */
static void instr_arg(ib_df_instr *in, char *s)
{
    in->args = ib_xrealloc(in->args, (in->nargs + 1) * sizeof *in->args);
    in->args[in->nargs++] = s;
}

void ib_df_free(ib_dockerfile *df)
{
    if (!df) return;
    for (size_t i = 0; i < df->ninstrs; i++) instr_clear(&df->instrs[i]);
    free(df->instrs);
    free(df->filename);
    free(df->syntax);
    free(df);
}

const char *ib_df_flag_get(const ib_df_instr *in, const char *name, int *present)
{
    const char *v = NULL;
    int seen = 0;
    for (size_t i = 0; i < in->nflags; i++) {
        if (strcmp(in->flags[i].name, name) == 0) {
            v = in->flags[i].value;
            seen = 1;
        }
    }
    if (present) *present = seen;
    return v;
}

/* ------------------------------------------------------------------- errors */

typedef struct {
    const char *file;
    int line;
    char escape;
} pctx;

static int perr(const pctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int perr(const pctx *c, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ib_error_set(IB_EINVALID, "%s:%d: %s", c->file, c->line, msg);
}

/* ---------------------------------------------------------------- splitters */

/* parseStringsWhitespaceDelimited: no quote awareness, on purpose (Docker's
 * COPY "a b" /x really is three words). */
static void split_ws(strv *out, const char *s)
{
    const char *p = s;
    while (*p) {
        while (*p && is_ws_sep((unsigned char)*p)) p++;
        if (!*p) break;
        const char *st = p;
        while (*p && !is_ws_sep((unsigned char)*p)) p++;
        sv_push(out, ib_xstrndup(st, (size_t)(p - st)));
    }
}

/* line_parsers.go parseWords: whitespace split that respects quotes and the
 * escape token but keeps both in the words (expansion removes them later). */
static void parse_words(strv *out, const char *rest, char esc)
{
    enum { SP, WORD, QUOTE } phase = SP;
    sbuf w = {0};
    char quote = 0;
    int blank_ok = 0;
    size_t len = strlen(rest);
    for (size_t pos = 0; pos <= len; pos++) {
        char ch = pos < len ? rest[pos] : 0;
        if (phase == SP) {
            if (pos == len) break;
            if (is_space((unsigned char)ch)) continue;
            phase = WORD;
        }
        if (pos == len) {
            if (blank_ok || w.n) sv_push(out, ib_xstrndup(w.p ? w.p : "", w.n));
            break;
        }
        if (phase == WORD) {
            if (is_space((unsigned char)ch)) {
                phase = SP;
                if (blank_ok || w.n) sv_push(out, ib_xstrndup(w.p ? w.p : "", w.n));
                sb_reset(&w);
                blank_ok = 0;
                continue;
            }
            if (ch == '\'' || ch == '"') {
                quote = ch;
                blank_ok = 1;
                phase = QUOTE;
            }
            if (ch == esc) {
                if (pos + 1 == len) continue; /* escape at end of line is dropped */
                sb_putc(&w, ch);
                ch = rest[++pos];
            }
            sb_putc(&w, ch);
            continue;
        }
        /* QUOTE */
        if (ch == quote) phase = WORD;
        if (ch == esc && quote != '\'') {
            if (pos + 1 == len) {
                phase = WORD;
                continue;
            }
            sb_putc(&w, ch);
            ch = rest[++pos];
        }
        sb_putc(&w, ch);
    }
    free(w.p);
}

/* line_parsers.go extractBuilderFlags: leading "--words" (quotes and '\'
 * processed inside them); a bare "--" ends the flags. Returns the rest. */
static const char *extract_flags(strv *flags, const char *line)
{
    enum { SP, WORD, QUOTE } phase = SP;
    sbuf w = {0};
    char quote = 0;
    int blank_ok = 0;
    size_t len = strlen(line);
    const char *rest = line + len;
    for (size_t pos = 0; pos <= len; pos++) {
        char ch = pos < len ? line[pos] : 0;
        if (phase == SP) {
            if (pos == len) break;
            if (is_space((unsigned char)ch)) continue;
            if (ch != '-' || pos + 1 == len || line[pos + 1] != '-') {
                rest = line + pos;
                break;
            }
            phase = WORD;
        }
        if (pos == len) {
            int dd = w.n == 2 && memcmp(w.p, "--", 2) == 0;
            if (!dd && (blank_ok || w.n)) sv_push(flags, ib_xstrndup(w.p ? w.p : "", w.n));
            break;
        }
        if (phase == WORD) {
            if (is_space((unsigned char)ch)) {
                phase = SP;
                if (w.n == 2 && memcmp(w.p, "--", 2) == 0) {
                    rest = line + pos;
                    break;
                }
                if (blank_ok || w.n) sv_push(flags, ib_xstrndup(w.p ? w.p : "", w.n));
                sb_reset(&w);
                blank_ok = 0;
                continue;
            }
            if (ch == '\'' || ch == '"') {
                quote = ch;
                blank_ok = 1;
                phase = QUOTE;
                continue;
            }
            if (ch == '\\') {
                if (pos + 1 == len) continue;
                ch = line[++pos];
            }
            sb_putc(&w, ch);
            continue;
        }
        if (ch == quote) {
            phase = WORD;
            continue;
        }
        if (ch == '\\') {
            if (pos + 1 == len) {
                phase = WORD;
                continue;
            }
            ch = line[++pos];
        }
        sb_putc(&w, ch);
    }
    free(w.p);
    while (*rest && is_space((unsigned char)*rest)) rest++;
    return rest;
}

/* parseJSON: 1 = a JSON array of strings (copied into out), 0 = not JSON
 * (caller falls back to the shell form, as Docker does), -1 = a JSON array
 * holding something other than strings (an error in Docker). */
static int parse_json_array(strv *out, const char *rest)
{
    while (is_space((unsigned char)*rest)) rest++;
    if (*rest != '[') return 0;
    json_error_t e;
    json_t *j = json_loads(rest, 0, &e);
    if (!j) return 0;
    if (!json_is_array(j)) {
        json_decref(j);
        return 0;
    }
    size_t n = json_array_size(j);
    for (size_t i = 0; i < n; i++) {
        if (!json_is_string(json_array_get(j, i))) {
            json_decref(j);
            return -1;
        }
    }
    for (size_t i = 0; i < n; i++) sv_push(out, ib_xstrdup(json_string_value(json_array_get(j, i))));
    json_decref(j);
    return 1;
}

/* ------------------------------------------------------------------- flags */

enum { FL_STR, FL_BOOL, FL_MULTI };
typedef struct {
    const char *name;
    int type;
} flagspec;

static const flagspec fl_none[] = {{NULL, 0}};
static const flagspec fl_from[] = {{"platform", FL_STR}, {NULL, 0}};
static const flagspec fl_run[] = {{"mount", FL_MULTI}, {"network", FL_STR}, {"security", FL_STR}, {NULL, 0}};
static const flagspec fl_copy[] = {{"from", FL_STR},     {"chown", FL_STR},      {"chmod", FL_STR},
                                   {"link", FL_BOOL},    {"parents", FL_BOOL},   {"exclude", FL_MULTI},
                                   {NULL, 0}};
/* Docker's ADD has no --from (sources are the context or URLs); --unpack is
 * Dockerfile 1.17's switch for archive extraction. */
static const flagspec fl_add[] = {{"chown", FL_STR},     {"chmod", FL_STR},    {"link", FL_BOOL},
                                  {"parents", FL_BOOL},  {"exclude", FL_MULTI}, {"checksum", FL_STR},
                                  {"keep-git-dir", FL_BOOL}, {"unpack", FL_BOOL}, {NULL, 0}};
static const flagspec fl_health[] = {{"interval", FL_STR},       {"timeout", FL_STR}, {"start-period", FL_STR},
                                     {"start-interval", FL_STR}, {"retries", FL_STR}, {NULL, 0}};

static const flagspec *flags_for(ib_df_kind k)
{
    switch (k) {
    case IB_DF_FROM: return fl_from;
    case IB_DF_RUN: return fl_run;
    case IB_DF_COPY: return fl_copy;
    case IB_DF_ADD: return fl_add;
    case IB_DF_HEALTHCHECK: return fl_health;
    default: return fl_none;
    }
}

/* Go's time.ParseDuration grammar: [-+]?(number unit)+ or "0". */
int ib_df_parse_duration(const char *s, long long *ns)
{
    static const struct {
        const char *u;
        long double mul;
    } units[] = {{"ns", 1}, {"us", 1e3}, {"\xc2\xb5s", 1e3}, {"\xce\xbcs", 1e3}, {"ms", 1e6},
                 {"s", 1e9}, {"m", 60e9}, {"h", 3600e9}};
    const char *p = s;
    int neg = 0;
    if (*p == '-' || *p == '+') neg = *p++ == '-';
    if (strcmp(p, "0") == 0) {
        *ns = 0;
        return 0;
    }
    if (!*p) return ib_error_set(IB_EINVALID, "invalid duration \"%s\"", s);
    long double total = 0;
    while (*p) {
        long double v = 0, scale = 1;
        int digits = 0;
        while (isdigit((unsigned char)*p)) v = v * 10 + (*p++ - '0'), digits++;
        if (*p == '.') {
            p++;
            while (isdigit((unsigned char)*p)) scale /= 10, v += (*p++ - '0') * scale, digits++;
        }
        if (!digits) return ib_error_set(IB_EINVALID, "invalid duration \"%s\"", s);
        size_t best = 0;
        long double mul = 0;
        for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
            size_t l = strlen(units[i].u);
            if (strncmp(p, units[i].u, l) == 0 && l > best) best = l, mul = units[i].mul;
        }
        if (!best) return ib_error_set(IB_EINVALID, "invalid duration \"%s\"", s);
        p += best;
        total += v * mul;
        if (total > 9.2e18L) return ib_error_set(IB_EINVALID, "invalid duration \"%s\"", s);
    }
    *ns = (long long)(neg ? -total : total);
    return 0;
}

/* bflag.go BFlags.Parse, plus the HEALTHCHECK value checks of parse.go. */
static int parse_flags(const pctx *c, ib_df_instr *in, const strv *raw)
{
    const flagspec *spec = flags_for(in->kind);
    for (size_t i = 0; i < raw->n; i++) {
        const char *arg = raw->v[i];
        if (strncmp(arg, "--", 2) != 0) return perr(c, "arg should start with -- : %s", arg);
        arg += 2;
        const char *eq = strchr(arg, '=');
        size_t nl = eq ? (size_t)(eq - arg) : strlen(arg);
        const flagspec *f = NULL;
        for (const flagspec *s = spec; s->name; s++)
            if (strlen(s->name) == nl && strncmp(s->name, arg, nl) == 0) f = s;
        if (!f) return perr(c, "unknown flag: --%.*s", (int)nl, arg);
        if (f->type != FL_MULTI)
            for (size_t k = 0; k < in->nflags; k++)
                if (strcmp(in->flags[k].name, f->name) == 0) return perr(c, "duplicate flag specified: --%s", f->name);
        if (f->type == FL_BOOL && eq && strcasecmp(eq + 1, "true") != 0 && strcasecmp(eq + 1, "false") != 0)
            return perr(c, "expecting boolean value for flag --%s, not: %s", f->name, eq + 1);
        if (f->type != FL_BOOL && !eq) return perr(c, "missing a value on flag: --%s", f->name);
        if (in->kind == IB_DF_HEALTHCHECK) {
            if (strcmp(f->name, "retries") == 0) {
                char *end;
                long long r = strtoll(eq + 1, &end, 10);
                if (!eq[1] || *end) return perr(c, "invalid value for --retries: %s", eq + 1);
                if (r < 0) return perr(c, "--retries cannot be negative (%lld)", r);
            } else if (eq[1]) {
                long long ns;
                if (ib_df_parse_duration(eq + 1, &ns) < 0)
                    return perr(c, "invalid duration for --%s: %s", f->name, eq + 1);
                /* container.MinimumDuration: 0 means "default", anything else must be >= 1ms. */
                if (ns != 0 && ns < 1000000) return perr(c, "--%s cannot be less than 1ms", f->name);
            }
        }
        in->flags = ib_xrealloc(in->flags, (in->nflags + 1) * sizeof *in->flags);
        in->flags[in->nflags].name = ib_xstrdup(f->name);
        in->flags[in->nflags].value = eq ? ib_xstrdup(eq + 1) : NULL;
        in->nflags++;
    }
    return 0;
}

/* ------------------------------------------------------------ instructions */

static int kind_lookup(const char *w, size_t n)
{
    for (size_t k = 0; k < NKINDS; k++)
        if (strlen(kind_names[k]) == n && strncasecmp(kind_names[k], w, n) == 0) return (int)k;
    return -1;
}

static void move_args(ib_df_instr *in, strv *sv)
{
    for (size_t i = 0; i < sv->n; i++) instr_arg(in, sv->v[i]);
    free(sv->v);
    sv->v = NULL;
    sv->n = sv->cap = 0;
}

/* parseNameVal: "k=v k2=v2" or the legacy "k v w" (decided by whether the first
 * word holds '='), then parse.go parseKvps' checks. */
static int parse_kv(const pctx *c, ib_df_instr *in, const char *rest, const char *what)
{
    strv w = {0};
    parse_words(&w, rest, c->escape);
    int rc = 0;
    if (w.n == 0) {
        rc = perr(c, "%s requires at least one argument", what);
    } else if (!strchr(w.v[0], '=')) {
        const char *p = rest;
        while (*p && !is_ws_sep((unsigned char)*p)) p++;
        const char *k_end = p;
        while (*p && is_ws_sep((unsigned char)*p)) p++;
        if (!*p) rc = perr(c, "%s must have two arguments", what);
        else {
            instr_arg(in, ib_xstrndup(rest, (size_t)(k_end - rest)));
            instr_arg(in, ib_xstrdup(p));
        }
    } else {
        for (size_t i = 0; i < w.n && !rc; i++) {
            char *eq = strchr(w.v[i], '=');
            if (!eq)
                rc = perr(c, "Syntax error - can't find = in \"%s\". Must be of the form: name=value", w.v[i]);
            else if (eq == w.v[i])
                rc = perr(c, "%s names can not be blank", what);
            else {
                instr_arg(in, ib_xstrndup(w.v[i], (size_t)(eq - w.v[i])));
                instr_arg(in, ib_xstrdup(eq + 1));
            }
        }
    }
    sv_free(&w);
    return rc;
}

/* Stage names: parse.go reValidName, matched case-insensitively because the
 * name is kept as written (Docker lowercases it; compare stage names with
 * strcasecmp). */
static int valid_stage_name(const char *s)
{
    if (!isalpha((unsigned char)*s)) return 0;
    for (s++; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '-' && *s != '_' && *s != '.') return 0;
    return 1;
}

static int parse_instr(const pctx *c, const char *line, ib_df_instr *in, int depth, int *heredoc_ok);

/* Fills `in` (kind, flags, args, json_form) from one logical line. */
static int parse_instr(const pctx *c, const char *line, ib_df_instr *in, int depth, int *heredoc_ok)
{
    *heredoc_ok = 0;
    while (is_space((unsigned char)*line)) line++;
    const char *kw = line;
    while (*line && !is_ws_sep((unsigned char)*line)) line++;
    size_t kwn = (size_t)(line - kw);
    int k = kind_lookup(kw, kwn);
    if (k < 0) return perr(c, "unknown instruction: %.*s", (int)kwn, kw);
    in->kind = (ib_df_kind)k;
    const char *what = kind_names[k];

    strv rawflags = {0};
    const char *r0 = extract_flags(&rawflags, line);
    int rc = parse_flags(c, in, &rawflags);
    sv_free(&rawflags);
    if (rc) return rc;
    char *rest = trim_dup(r0, strlen(r0));
    strv sv = {0};
    int j;

    switch (in->kind) {
    case IB_DF_FROM:
        split_ws(&sv, rest);
        if (sv.n == 2 && strcasecmp(sv.v[1], "AS") == 0)
            rc = perr(c, "FROM %s AS: missing stage name", sv.v[0]);
        else if (sv.n == 3 && strcasecmp(sv.v[1], "AS") == 0) {
            if (!valid_stage_name(sv.v[2]))
                rc = perr(c, "invalid name for build stage: \"%s\", name can't start with a number or contain symbols",
                          sv.v[2]);
            else strcpy(sv.v[1], "AS");
        } else if (sv.n != 1)
            rc = perr(c, "FROM requires either one or three arguments");
        break;
    case IB_DF_RUN:
    case IB_DF_CMD:
    case IB_DF_ENTRYPOINT:
    case IB_DF_SHELL:
        j = parse_json_array(&sv, rest);
        if (j < 0) rc = perr(c, "when using JSON array syntax, arrays must be comprised of strings only");
        else if (j > 0) {
            in->json_form = 1;
            if (sv.n == 0 && (in->kind == IB_DF_RUN || in->kind == IB_DF_SHELL))
                rc = perr(c, "%s requires at least one argument", what);
        } else if (!*rest) rc = perr(c, "%s requires at least one argument", what);
        else if (in->kind == IB_DF_SHELL) rc = perr(c, "SHELL requires the arguments to be in JSON form");
        else sv_push(&sv, ib_xstrdup(rest));
        *heredoc_ok = in->kind == IB_DF_RUN && !in->json_form;
        break;
    case IB_DF_COPY:
    case IB_DF_ADD:
    case IB_DF_VOLUME:
        j = parse_json_array(&sv, rest);
        if (j < 0) rc = perr(c, "when using JSON array syntax, arrays must be comprised of strings only");
        else if (j > 0) in->json_form = 1;
        else split_ws(&sv, rest);
        if (rc) break;
        if (in->kind == IB_DF_VOLUME) {
            if (sv.n == 0) rc = perr(c, "VOLUME requires at least one argument");
            for (size_t i = 0; i < sv.n && !rc; i++) {
                const char *v = sv.v[i];
                while (is_space((unsigned char)*v)) v++;
                if (!*v) rc = perr(c, "VOLUME specified can not be an empty string");
            }
        } else {
            if (sv.n < 2) rc = perr(c, "%s requires at least two arguments", what);
            *heredoc_ok = !in->json_form;
        }
        break;
    case IB_DF_ENV:
    case IB_DF_LABEL:
        rc = parse_kv(c, in, rest, what);
        break;
    case IB_DF_ARG:
        parse_words(&sv, rest, c->escape);
        if (sv.n == 0) rc = perr(c, "ARG requires at least one argument");
        for (size_t i = 0; i < sv.n && !rc; i++) {
            char *eq = strchr(sv.v[i], '=');
            if (eq == sv.v[i]) rc = perr(c, "ARG names can not be blank");
            else if (eq) {
                instr_arg(in, ib_xstrndup(sv.v[i], (size_t)(eq - sv.v[i])));
                instr_arg(in, ib_xstrdup(eq + 1));
            } else {
                instr_arg(in, ib_xstrdup(sv.v[i]));
                instr_arg(in, NULL);
            }
        }
        sv_free(&sv);
        break;
    case IB_DF_EXPOSE:
        split_ws(&sv, rest);
        if (sv.n == 0) rc = perr(c, "EXPOSE requires at least one argument");
        break;
    case IB_DF_USER:
    case IB_DF_WORKDIR:
    case IB_DF_STOPSIGNAL:
    case IB_DF_MAINTAINER:
        /* parseString: the whole rest is one argument ("WORKDIR /my dir"). */
        if (!*rest) rc = perr(c, "%s requires exactly one argument", what);
        else sv_push(&sv, ib_xstrdup(rest));
        break;
    case IB_DF_HEALTHCHECK: {
        /* parseHealthConfig: first word is the type, the rest maybe-JSON. */
        const char *p = rest;
        while (*p && !is_space((unsigned char)*p)) p++;
        size_t tn = (size_t)(p - rest);
        while (*p && is_space((unsigned char)*p)) p++;
        if (!tn) rc = perr(c, "HEALTHCHECK requires at least one argument");
        else if (tn == 4 && strncasecmp(rest, "NONE", 4) == 0) {
            if (*p) rc = perr(c, "HEALTHCHECK NONE takes no arguments");
            else sv_push(&sv, ib_xstrdup("NONE"));
        } else if (tn == 3 && strncasecmp(rest, "CMD", 3) == 0) {
            sv_push(&sv, ib_xstrdup("CMD"));
            j = parse_json_array(&sv, p);
            if (j < 0) rc = perr(c, "when using JSON array syntax, arrays must be comprised of strings only");
            else if (j > 0) in->json_form = 1;
            else if (*p) sv_push(&sv, ib_xstrdup(p));
            if (!rc && sv.n < 2) rc = perr(c, "Missing command after HEALTHCHECK CMD");
        } else
            rc = perr(c, "Unknown type \"%.*s\" in HEALTHCHECK (try CMD)", (int)tn, rest);
        break;
    }
    case IB_DF_ONBUILD: {
        if (!*rest) {
            rc = perr(c, "ONBUILD requires at least one argument");
            break;
        }
        const char *p = rest;
        while (*p && !is_ws_sep((unsigned char)*p)) p++;
        int tk = kind_lookup(rest, (size_t)(p - rest));
        if (tk == IB_DF_ONBUILD) rc = perr(c, "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed");
        else if (tk == IB_DF_FROM || tk == IB_DF_MAINTAINER)
            rc = perr(c, "%s isn't allowed as an ONBUILD trigger", kind_names[tk]);
        else if (depth == 0) {
            /* Docker parses the trigger now (parseSubCommand), so its errors
             * surface at the ONBUILD line rather than in a child build. */
            ib_df_instr sub = {0};
            rc = parse_instr(c, rest, &sub, depth + 1, heredoc_ok);
            instr_clear(&sub);
        }
        if (!rc) sv_push(&sv, ib_xstrdup(rest));
        break;
    }
    }
    if (!rc) move_args(in, &sv);
    sv_free(&sv);
    free(rest);
    return rc;
}

/* ---------------------------------------------------------------- heredocs */

/* Word split used by heredocsFromLine (shell lexer with raw quotes and raw
 * escapes, escape always '\'): on an unterminated quote Docker gets no words,
 * so no heredocs. */
static void heredoc_words(strv *out, const char *s)
{
    size_t n = strlen(s), i = 0;
    sbuf w = {0};
    while (i < n) {
        while (i < n && is_space((unsigned char)s[i])) i++;
        if (i >= n) break;
        sb_reset(&w);
        while (i < n && !is_space((unsigned char)s[i])) {
            char ch = s[i];
            if (ch == '\'' || ch == '"') {
                size_t st = i++;
                while (i < n && s[i] != ch) i += (ch == '"' && s[i] == '\\' && i + 1 < n) ? 2 : 1;
                if (i >= n) {
                    sv_free(out);
                    free(w.p);
                    return;
                }
                i++;
                sb_putn(&w, s + st, i - st);
            } else if (ch == '\\' && i + 1 < n) {
                sb_putn(&w, s + i, 2);
                i += 2;
            } else {
                sb_putc(&w, ch);
                i++;
            }
        }
        sv_push(out, sb_take(&w));
    }
    free(w.p);
}

/* parser.go parseHeredoc: ^(\d*)<<(-?)([^<]*)$ with a non-empty word. The
 * name is the word with quotes removed; any quoting disables expansion. */
static int parse_heredoc_word(const char *w, char **name, int *chomp, int *expand)
{
    while (isdigit((unsigned char)*w)) w++;
    if (strncmp(w, "<<", 2) != 0) return 0;
    w += 2;
    *chomp = *w == '-';
    if (*chomp) w++;
    if (!*w || strchr(w, '<')) return 0;
    sbuf b = {0};
    int quoted = 0;
    for (const char *p = w; *p; p++) {
        if (*p == '\'' || *p == '"') {
            char q = *p++;
            quoted = 1;
            for (; *p && *p != q; p++) {
                if (q == '"' && *p == '\\' && (p[1] == '"' || p[1] == '\\' || p[1] == '$')) p++;
                sb_putc(&b, *p);
            }
            if (!*p) break;
        } else if (*p == '\\' && p[1]) {
            sb_putc(&b, *++p);
        } else {
            sb_putc(&b, *p);
        }
    }
    *name = sb_take(&b);
    *expand = !quoted;
    return 1;
}

typedef struct {
    const char *p;
    size_t n;
} span;

static int collect_heredocs(const pctx *c, ib_df_instr *in, const char *line, const span *lines, size_t nl,
                            size_t *pi)
{
    strv words = {0};
    heredoc_words(&words, line);
    int rc = 0;
    for (size_t w = 0; w < words.n && !rc; w++) {
        char *name;
        int chomp, expand;
        if (!parse_heredoc_word(words.v[w], &name, &chomp, &expand)) continue;
        size_t namelen = strlen(name);
        sbuf body = {0};
        int done = 0;
        while (*pi + 1 < nl) {
            span l = lines[++*pi];
            if (chomp)
                while (l.n && *l.p == '\t') l.p++, l.n--;
            if (l.n == namelen && memcmp(l.p, name, namelen) == 0) {
                done = 1;
                break;
            }
            sb_putn(&body, l.p, l.n);
            sb_putc(&body, '\n');
        }
        if (!done) {
            rc = perr(c, "unterminated heredoc %s", name);
            free(name);
            free(body.p);
            break;
        }
        in->heredocs = ib_xrealloc(in->heredocs, (in->nheredocs + 1) * sizeof *in->heredocs);
        ib_df_heredoc *h = &in->heredocs[in->nheredocs++];
        h->name = name;
        h->content = sb_take(&body);
        h->expand = expand;
    }
    sv_free(&words);
    return rc;
}

/* parser.go MustParseHeredoc applied to RUN's whole command line (what
 * dispatchRun does): ^(\d*)<<(-?)([^<]*)$ where the rest lexes as one word. */
int ib_df_heredoc_only(const char *cmd)
{
    const char *p = cmd;
    while (isdigit((unsigned char)*p)) p++;
    if (strncmp(p, "<<", 2) != 0) return 0;
    p += 2;
    if (*p == '-') p++;
    if (!*p || strchr(p, '<')) return 0;
    strv words = {0};
    heredoc_words(&words, p);
    int one = words.n == 1;
    sv_free(&words);
    return one;
}

/* ----------------------------------------------------------------- parsing */

static int is_comment(span l)
{
    size_t i = 0;
    while (i < l.n && is_space((unsigned char)l.p[i])) i++;
    return i < l.n && l.p[i] == '#';
}

static int blank(span l)
{
    for (size_t i = 0; i < l.n; i++)
        if (!is_space((unsigned char)l.p[i])) return 0;
    return 1;
}

/* Docker's line-continuation regex: escape followed by optional [ \t]* at EOL. */
static int strip_continuation(span *l, char esc)
{
    size_t k = l->n;
    while (k && (l->p[k - 1] == ' ' || l->p[k - 1] == '\t')) k--;
    if (k && l->p[k - 1] == esc) {
        l->n = k - 1;
        return 1;
    }
    return 0;
}

/* directives.go reDirective: ^#[ \t]*([a-zA-Z][a-zA-Z0-9]*)[ \t]*=[ \t]*(.+?)[ \t]*$ */
static int match_directive(span l, char *key, size_t keycap, span *val)
{
    size_t i = 1;
    if (!l.n || l.p[0] != '#') return 0;
    while (i < l.n && (l.p[i] == ' ' || l.p[i] == '\t')) i++;
    if (i >= l.n || !isalpha((unsigned char)l.p[i])) return 0;
    size_t ks = i;
    while (i < l.n && isalnum((unsigned char)l.p[i])) i++;
    size_t kn = i - ks;
    while (i < l.n && (l.p[i] == ' ' || l.p[i] == '\t')) i++;
    if (i >= l.n || l.p[i] != '=') return 0;
    i++;
    while (i < l.n && (l.p[i] == ' ' || l.p[i] == '\t')) i++;
    size_t ve = l.n;
    while (ve > i && (l.p[ve - 1] == ' ' || l.p[ve - 1] == '\t')) ve--;
    if (ve == i) return 0;
    if (kn >= keycap) kn = keycap - 1; /* longer keys are unknown anyway */
    for (size_t q = 0; q < kn; q++) key[q] = (char)tolower((unsigned char)l.p[ks + q]);
    key[kn] = 0;
    val->p = l.p + i;
    val->n = ve - i;
    return 1;
}

static void orig_append(sbuf *o, span s)
{
    while (s.n && is_space((unsigned char)*s.p)) s.p++, s.n--;
    while (s.n && is_space((unsigned char)s.p[s.n - 1])) s.n--;
    if (!s.n) return;
    if (o->n) sb_putc(o, ' ');
    sb_putn(o, s.p, s.n);
}

int ib_df_parse(ib_dockerfile **out, const char *text, size_t len, const char *filename)
{
    *out = NULL;
    if (!filename) filename = "Dockerfile";
    if (!text) len = 0;
    ib_dockerfile *df = ib_xcalloc(1, sizeof *df);
    df->filename = ib_xstrdup(filename);
    df->escape = '\\';
    pctx c = {df->filename, 0, '\\'};
    span *lines = NULL;
    size_t nl = 0;
    int rc = 0;

    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) text += 3, len -= 3;
    /* NUL bytes cannot survive the C-string arguments handed to the
     * executor; a Dockerfile holding one is not text, so refuse it. */
    const char *nul = len ? memchr(text, 0, len) : NULL;
    if (nul) {
        c.line = 1;
        for (const char *p = text; p < nul; p++) c.line += *p == '\n';
        rc = perr(&c, "unexpected NUL byte");
        goto done;
    }
    for (size_t i = 0; i < len;) {
        const char *e = memchr(text + i, '\n', len - i);
        size_t n = e ? (size_t)(e - (text + i)) : len - i;
        lines = ib_xrealloc(lines, (nl + 1) * sizeof *lines);
        lines[nl].p = text + i;
        lines[nl].n = n && text[i + n - 1] == '\r' ? n - 1 : n;
        nl++;
        i += n + 1;
    }

    /* Parser directives: only the uninterrupted run of "# key=value" lines
     * with a known key at the very top; anything else ends them for good. */
    int seen_escape = 0, seen_syntax = 0, seen_check = 0;
    for (size_t i = 0; i < nl; i++) {
        char key[16];
        span v;
        if (!match_directive(lines[i], key, sizeof key, &v)) break;
        int *seen = strcmp(key, "escape") == 0   ? &seen_escape
                    : strcmp(key, "syntax") == 0 ? &seen_syntax
                    : strcmp(key, "check") == 0  ? &seen_check
                                                 : NULL;
        if (!seen) break;
        c.line = (int)i + 1;
        if (*seen) {
            rc = perr(&c, "only one %s parser directive can be used", key);
            goto done;
        }
        *seen = 1;
        if (seen == &seen_escape) {
            if (v.n != 1 || (v.p[0] != '\\' && v.p[0] != '`')) {
                rc = perr(&c, "invalid escape token '%.*s' does not match ` or \\", (int)v.n, v.p);
                goto done;
            }
            df->escape = v.p[0];
        } else if (seen == &seen_syntax) {
            df->syntax = ib_xstrndup(v.p, v.n);
        }
    }
    c.escape = df->escape;

    int seen_from = 0;
    size_t cap = 0;
    sbuf logical = {0}, orig = {0};
    for (size_t i = 0; i < nl; i++) {
        span l = lines[i];
        if (is_comment(l)) continue;
        while (l.n && is_space((unsigned char)*l.p)) l.p++, l.n--;
        int cont = strip_continuation(&l, df->escape);
        if (!cont && l.n == 0) continue;
        int start = (int)i + 1;
        sb_reset(&logical);
        sb_reset(&orig);
        sb_putn(&logical, l.p, l.n);
        orig_append(&orig, l);
        /* Inside a continued instruction Docker skips comment lines and
         * blank lines without ending the instruction. */
        while (cont && i + 1 < nl) {
            span k = lines[++i];
            if (is_comment(k) || blank(k)) continue;
            cont = strip_continuation(&k, df->escape);
            sb_putn(&logical, k.p, k.n);
            orig_append(&orig, k);
        }
        if (blank((span){logical.p, logical.n})) continue;
        c.line = start;
        ib_df_instr in = {0};
        int hd = 0;
        rc = parse_instr(&c, logical.p, &in, 0, &hd);
        if (!rc && !seen_from && in.kind != IB_DF_ARG && in.kind != IB_DF_FROM)
            rc = perr(&c, "%s before the first FROM (only ARG may precede FROM)", kind_names[in.kind]);
        if (!rc && hd && strstr(logical.p, "<<")) rc = collect_heredocs(&c, &in, logical.p, lines, nl, &i);
        if (rc) {
            instr_clear(&in);
            break;
        }
        seen_from |= in.kind == IB_DF_FROM;
        in.line = start;
        in.end_line = (int)i + 1;
        in.original = sb_take(&orig);
        if (df->ninstrs == cap) {
            cap = cap ? cap * 2 : 16;
            df->instrs = ib_xrealloc(df->instrs, cap * sizeof *df->instrs);
        }
        df->instrs[df->ninstrs++] = in;
    }
    free(logical.p);
    free(orig.p);
    if (!rc && df->ninstrs == 0) rc = ib_error_set(IB_EINVALID, "%s: file with no instructions", df->filename);

done:
    free(lines);
    if (rc) {
        ib_df_free(df);
        return rc;
    }
    *out = df;
    return 0;
}

/* ---------------------------------------------------------------- expansion */

/* shell/lex.go shellWord, ProcessWord flavour (no word splitting). */
typedef struct {
    const char *s;
    size_t n, i;
    char esc;
    ib_df_lookup_fn lookup;
    void *ctx;
    int failed;
    int depth;
    char err[512];
} lexer;

enum { LX_EOF = -1 };
/* Nesting bound for ${a:-${b:-...}}: Go's growable stacks don't need one, a
 * C stack fed arbitrary input does. */
enum { LX_MAX_DEPTH = 200 };

static int lx_peek(const lexer *lx) { return lx->i < lx->n ? (unsigned char)lx->s[lx->i] : LX_EOF; }
static int lx_next(lexer *lx) { return lx->i < lx->n ? (unsigned char)lx->s[lx->i++] : LX_EOF; }

static int lx_fail(lexer *lx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int lx_fail(lexer *lx, const char *fmt, ...)
{
    if (!lx->failed) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(lx->err, sizeof lx->err, fmt, ap);
        va_end(ap);
        lx->failed = 1;
    }
    return -1;
}

static const char *lx_get(lexer *lx, const char *name)
{
    return lx->lookup ? lx->lookup(lx->ctx, name) : NULL;
}

static int lx_dollar(lexer *lx, sbuf *out);

static int lx_single(lexer *lx, sbuf *out)
{
    lx_next(lx);
    for (;;) {
        int ch = lx_next(lx);
        if (ch == LX_EOF) return lx_fail(lx, "unexpected end of statement while looking for matching single-quote");
        if (ch == '\'') return 0;
        sb_putc(out, (char)ch);
    }
}

static int lx_double(lexer *lx, sbuf *out)
{
    lx_next(lx);
    for (;;) {
        int ch = lx_peek(lx);
        if (ch == LX_EOF) return lx_fail(lx, "unexpected end of statement while looking for matching double-quote");
        if (ch == '"') {
            lx_next(lx);
            return 0;
        }
        if (ch == '$') {
            if (lx_dollar(lx, out) < 0) return -1;
            continue;
        }
        ch = lx_next(lx);
        if (ch == lx->esc) {
            int nx = lx_peek(lx);
            if (nx == LX_EOF) continue; /* reported as unterminated on the next turn */
            /* Only '"', '$' and the escape itself are escapable inside "..."; other
             * escapes stay literal (sh semantics). */
            if (nx == '"' || nx == '$' || nx == lx->esc) ch = lx_next(lx);
        }
        sb_putc(out, (char)ch);
    }
}

/* processStopOnAny: copy/expand until `stop` (consumed) or end of input. */
static int lx_word(lexer *lx, int stop, int raw_escapes, sbuf *out)
{
    while (lx_peek(lx) != LX_EOF) {
        int ch = lx_peek(lx);
        if (stop != LX_EOF && ch == stop) {
            lx_next(lx);
            return 0;
        }
        int r = 0;
        if (ch == '\'') r = lx_single(lx, out);
        else if (ch == '"') r = lx_double(lx, out);
        else if (ch == '$') r = lx_dollar(lx, out);
        else {
            ch = lx_next(lx);
            if (ch == lx->esc) {
                if (raw_escapes) sb_putc(out, (char)ch);
                ch = lx_next(lx);
                if (ch == LX_EOF) break; /* a trailing escape is dropped */
            }
            sb_putc(out, (char)ch);
        }
        if (r < 0) return -1;
    }
    if (stop != LX_EOF) return lx_fail(lx, "unexpected end of statement while looking for matching %c", stop);
    return 0;
}

/* processName: [A-Za-z0-9_]+, or all digits, or one special parameter. */
static void lx_name(lexer *lx, sbuf *name)
{
    int ch = lx_peek(lx);
    if (ch != LX_EOF && isdigit(ch)) {
        while (lx_peek(lx) != LX_EOF && isdigit(lx_peek(lx))) sb_putc(name, (char)lx_next(lx));
        return;
    }
    if (ch != LX_EOF && strchr("@*#?-$!", ch)) {
        sb_putc(name, (char)lx_next(lx));
        return;
    }
    while ((ch = lx_peek(lx)) != LX_EOF && (isalnum(ch) || ch == '_')) sb_putc(name, (char)lx_next(lx));
}

/* ${v#pat} / ${v%pat}: shortest (or, greedy, longest) glob match removed. */
static char *trim_pattern(const char *value, const char *pat, int suffix, int greedy)
{
    size_t n = strlen(value);
    char *tmp = ib_xmalloc(n + 1);
    for (size_t step = 0; step <= n; step++) {
        size_t k = greedy ? n - step : step; /* length of the removed part */
        if (suffix) memcpy(tmp, value + n - k, k + 1);
        else {
            memcpy(tmp, value, k);
            tmp[k] = 0;
        }
        if (fnmatch(pat, tmp, 0) == 0) {
            free(tmp);
            return suffix ? ib_xstrndup(value, n - k) : ib_xstrdup(value + k);
        }
    }
    free(tmp);
    return ib_xstrdup(value);
}

/* ${v/pat/repl}, ${v//pat/repl}: leftmost, longest glob match replaced. */
static char *replace_pattern(const char *value, const char *pat, const char *repl, int all)
{
    size_t n = strlen(value);
    char *tmp = ib_xmalloc(n + 1);
    sbuf o = {0};
    size_t i = 0;
    int replaced = 0;
    /* "pat*" against the remainder tells cheaply whether any match starts at
     * i, so the quadratic longest-match scan only runs where one exists. */
    size_t pl = strlen(pat);
    char *any = NULL;
    if (!pl || pat[pl - 1] != '\\') any = ib_xasprintf("%s*", pat);
    while (i <= n) {
        size_t mlen = 0;
        int hit = 0;
        if ((!replaced || all) && (!any || fnmatch(any, value + i, 0) == 0)) {
            for (size_t e = n; e + 1 > i; e--) {
                memcpy(tmp, value + i, e - i);
                tmp[e - i] = 0;
                if (fnmatch(pat, tmp, 0) == 0) {
                    hit = 1;
                    mlen = e - i;
                    break;
                }
            }
        }
        if (hit) {
            sb_puts(&o, repl);
            replaced = 1;
        }
        if (hit && mlen) {
            i += mlen;
            continue;
        }
        if (i < n) sb_putc(&o, value[i]);
        i++;
    }
    free(any);
    free(tmp);
    return sb_take(&o);
}

static int lx_dollar(lexer *lx, sbuf *out)
{
    if (++lx->depth > LX_MAX_DEPTH) return lx_fail(lx, "variable substitution nested too deeply");
    int rc = 0;
    sbuf name = {0}, word = {0}, repl = {0};
    lx_next(lx); /* '$' */
    if (lx_peek(lx) != '{') {
        lx_name(lx, &name);
        if (!name.n) sb_putc(out, '$');
        else {
            const char *v = lx_get(lx, name.p);
            if (v) sb_puts(out, v);
        }
        goto out;
    }
    lx_next(lx);
    int ch = lx_peek(lx);
    if (ch == LX_EOF) {
        rc = lx_fail(lx, "syntax error: missing '}'");
        goto out;
    }
    if (ch == '{' || ch == '}' || ch == ':') {
        rc = lx_fail(lx, "syntax error: bad substitution");
        goto out;
    }
    lx_name(lx, &name);
    const char *nm = name.p ? name.p : "";
    ch = lx_next(lx);
    int null_unset = 0;
    if (ch == '}') {
        const char *v = lx_get(lx, nm);
        if (v) sb_puts(out, v);
        goto out;
    }
    if (ch == LX_EOF) {
        rc = lx_fail(lx, "syntax error: missing '}'");
        goto out;
    }
    if (ch == ':') {
        null_unset = 1;
        ch = lx_next(lx);
        if (ch == LX_EOF) {
            rc = lx_fail(lx, "syntax error: missing '}'");
            goto out;
        }
    }
    if (ch == '/' && !null_unset) {
        int all = lx_peek(lx) == '/';
        if (all) lx_next(lx);
        if (lx_word(lx, '/', 1, &word) < 0 || lx_word(lx, '}', 1, &repl) < 0) {
            rc = -1;
            goto out;
        }
        const char *v = lx_get(lx, nm);
        char *r = replace_pattern(v ? v : "", word.p ? word.p : "", repl.p ? repl.p : "", all);
        sb_puts(out, r);
        free(r);
        goto out;
    }
    if (!null_unset && !strchr("+-?#%", ch)) {
        rc = lx_fail(lx, "unsupported modifier (%c) in substitution", ch);
        goto out;
    }
    /* Like Go, the word is expanded before we know whether it is used, so
     * errors inside it are reported either way. */
    if (lx_word(lx, '}', ch == '#' || ch == '%', &word) < 0) {
        rc = -1;
        goto out;
    }
    const char *w = word.p ? word.p : "";
    const char *v = lx_get(lx, nm);
    int unset = !v || (null_unset && !*v);
    switch (ch) {
    case '-':
        sb_puts(out, unset ? w : v);
        break;
    case '+':
        if (!unset) sb_puts(out, w);
        break;
    case '?':
        if (!v) rc = lx_fail(lx, "%s: %s", nm, *w ? w : "is not allowed to be unset");
        else if (unset) rc = lx_fail(lx, "%s: %s", nm, *w ? w : "is not allowed to be empty");
        else sb_puts(out, v);
        break;
    case '#':
    case '%': {
        int greedy = *w == ch;
        char *r = trim_pattern(v ? v : "", w + greedy, ch == '%', greedy);
        sb_puts(out, r);
        free(r);
        break;
    }
    default:
        rc = lx_fail(lx, "unsupported modifier (%s%c) in substitution", null_unset ? ":" : "", ch);
    }
out:
    lx->depth--;
    free(name.p);
    free(word.p);
    free(repl.p);
    return rc;
}

int ib_df_expand(char **out, const char *word, char escape, ib_df_lookup_fn lookup, void *ctx, const char *file,
                 int line)
{
    *out = NULL;
    lexer lx = {.s = word ? word : "", .n = word ? strlen(word) : 0, .esc = escape, .lookup = lookup, .ctx = ctx};
    sbuf o = {0};
    if (lx_word(&lx, LX_EOF, 0, &o) < 0) {
        int rc = file ? ib_error_set(IB_EINVALID, "%s:%d: %s", file, line, lx.err)
                      : ib_error_set(IB_EINVALID, "%s", lx.err);
        free(o.p);
        return rc;
    }
    *out = sb_take(&o);
    return 0;
}

/* lex.go wordsStruct: addChar splits on whitespace, addRawString (quoted
 * text, escaped chars) never does; getWords drops empty words, so "" gives
 * none. */
typedef struct {
    strv v;
    sbuf cur;
    int in_word;
} words_acc;

static void wa_end(words_acc *wa)
{
    if (!wa->in_word || !wa->cur.n) return;
    sv_push(&wa->v, ib_xstrndup(wa->cur.p ? wa->cur.p : "", wa->cur.n));
    sb_reset(&wa->cur);
    wa->in_word = 0;
}

static void wa_char(words_acc *wa, char ch)
{
    if (is_space((unsigned char)ch)) {
        wa_end(wa);
        return;
    }
    sb_putc(&wa->cur, ch);
    wa->in_word = 1;
}

static void wa_raw(words_acc *wa, const char *s, size_t n)
{
    sb_putn(&wa->cur, s, n);
    wa->in_word = 1;
}

int ib_df_expand_words(char ***out, size_t *n, const char *word, char escape, ib_df_lookup_fn lookup, void *ctx,
                       const char *file, int line)
{
    *out = NULL;
    *n = 0;
    lexer lx = {.s = word ? word : "", .n = word ? strlen(word) : 0, .esc = escape, .lookup = lookup, .ctx = ctx};
    words_acc wa = {0};
    sbuf tmp = {0};
    int rc = 0;
    while (rc == 0 && lx_peek(&lx) != LX_EOF) {
        int ch = lx_peek(&lx);
        sb_reset(&tmp);
        if (ch == '\'' || ch == '"') {
            rc = ch == '\'' ? lx_single(&lx, &tmp) : lx_double(&lx, &tmp);
            if (rc == 0) wa_raw(&wa, tmp.p ? tmp.p : "", tmp.n);
        } else if (ch == '$') {
            /* An unquoted expansion is split like the shell does: $PORTS = "80 443" is two words. */
            rc = lx_dollar(&lx, &tmp);
            for (size_t i = 0; rc == 0 && i < tmp.n; i++) wa_char(&wa, tmp.p[i]);
        } else {
            ch = lx_next(&lx);
            if (ch == lx.esc) {
                ch = lx_next(&lx);
                if (ch == LX_EOF) break; /* a trailing escape is dropped */
                char c = (char)ch;
                wa_raw(&wa, &c, 1);
            } else {
                wa_char(&wa, (char)ch);
            }
        }
    }
    free(tmp.p);
    if (rc < 0) {
        rc = file ? ib_error_set(IB_EINVALID, "%s:%d: %s", file, line, lx.err) : ib_error_set(IB_EINVALID, "%s", lx.err);
        sv_free(&wa.v);
        free(wa.cur.p);
        return rc;
    }
    wa_end(&wa);
    free(wa.cur.p);
    *out = wa.v.v;
    *n = wa.v.n;
    return 0;
}
