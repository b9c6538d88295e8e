/* .dockerignore matching, following moby/patternmatcher (used by both the
 * classic builder and BuildKit) and its ignorefile reader.
 *
 * Patterns are compiled once into a short token list and matched with a
 * position-set simulation (one pass per token over the path), so the cost is
 * O(tokens x path length) whatever the pattern; a backtracking glob would be
 * exponential on patterns like "a*b*c*d*e*". moby translates patterns to Go
 * regexps; we do not, because regex.h's POSIX syntax differs from Go's in
 * exactly the corners that matter here (escapes, classes, newlines).
 *
 * Where moby's regexp translation and the documented filepath.Match syntax
 * disagree we follow filepath.Match, which is what Docker documents:
 *   - "\c" always means a literal c (moby hands "\d", "\w" to the regexp
 *     engine, where they become character classes);
 *   - '*' and '?' inside "[...]" are literal members (moby splices its
 *     wildcard regexps into the class);
 *   - a literal '^' outside a class is just a character (moby emits it
 *     unescaped, so it becomes an anchor and the pattern can never match).
 * We reject at parse time what moby only rejects at the first match (and
 * then fails the build): a class range whose ends are reversed ("[z-a]").
 * Everything specific to "**", including its odd corners, is moby's. */
#include "build/ignore.h"

#include "common/error.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum tok_kind {
    TK_LIT,         /* bytes lit[off .. off+len) */
    TK_ONE,         /* '?': one rune, not '/' */
    TK_STAR,        /* '*': any run of non-'/' bytes */
    TK_CLASS,       /* "[...]": one rune in/out of len (lo, hi) pairs at ranges[off] */
    TK_DSTAR_SLASH, /* "**" before more pattern: empty, or any text that ends in '/' */
    TK_DSTAR_ANY,   /* "**" at the end: regexp .* */
};

typedef struct {
    unsigned char kind;
    unsigned char neg;   /* TK_CLASS: "[^...]" */
    unsigned char nl_ok; /* TK_DSTAR_*: may cross '\n' (see compile()) */
    uint32_t off, len;
} tok;

typedef struct {
    int exception;    /* '!' pattern: re-includes what it matches */
    int literal;      /* one TK_LIT and nothing else: compared directly */
    tok *toks;
    size_t ntok;
    char *lit;
    uint32_t *ranges; /* lo, hi pairs */
} pattern;

struct ib_ignore {
    pattern *pats;
    size_t n;
};

/* ---- Go-compatible text helpers ------------------------------------------ */

#define RUNE_ERROR 0xFFFDu

/* utf8.DecodeRune: an invalid or truncated sequence decodes as U+FFFD of
 * width 1, which is also how Go's regexp and filepath.Match step over it. */
static uint32_t decode_rune(const unsigned char *s, size_t n, size_t *w)
{
    *w = 1;
    if (n == 0) return RUNE_ERROR;
    unsigned c = s[0];
    if (c < 0x80) return c;
    size_t need;
    unsigned lo = 0x80, hi = 0xBF;
    uint32_t r;
    if (c >= 0xC2 && c <= 0xDF) { need = 2; r = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 3; r = c & 0x0F;
        if (c == 0xE0) lo = 0xA0;
        else if (c == 0xED) hi = 0x9F; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 4; r = c & 0x07;
        if (c == 0xF0) lo = 0x90;
        else if (c == 0xF4) hi = 0x8F; /* <= U+10FFFF */
    } else return RUNE_ERROR;
    if (n < need || s[1] < lo || s[1] > hi) return RUNE_ERROR;
    r = (r << 6) | (s[1] & 0x3F);
    for (size_t i = 2; i < need; i++) {
        if (s[i] < 0x80 || s[i] > 0xBF) return RUNE_ERROR;
        r = (r << 6) | (s[i] & 0x3F);
    }
    *w = need;
    return r;
}

static int is_space_rune(uint32_t r)
{
    /* unicode.IsSpace, which strings.TrimSpace uses. */
    switch (r) {
    case '\t': case '\n': case '\v': case '\f': case '\r': case ' ':
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029:
    case 0x202F: case 0x205F: case 0x3000:
        return 1;
    default:
        return r >= 0x2000 && r <= 0x200A;
    }
}

static void trim_space(const char **s, size_t *n)
{
    const unsigned char *p = (const unsigned char *)*s;
    size_t len = *n, w;
    while (len) {
        uint32_t r = decode_rune(p, len, &w);
        if (!is_space_rune(r)) break;
        p += w;
        len -= w;
    }
    while (len) {
        /* Find the start of the last rune the way utf8.DecodeLastRune does:
         * back over at most 3 continuation bytes, then require that the
         * sequence found spans exactly to the end. */
        size_t start = len - 1;
        while (start > 0 && len - start < 4 && (p[start] & 0xC0) == 0x80) start--;
        uint32_t r = decode_rune(p + start, len - start, &w);
        if (start + w != len) { r = RUNE_ERROR; w = 1; }
        if (!is_space_rune(r)) break;
        len -= w;
    }
    *s = (const char *)p;
    *n = len;
}

/* filepath.Clean for '/'-separated paths. Returns a malloc'd NUL-terminated
 * string; *out_len excludes the NUL. */
static char *go_clean(const char *s, size_t n, size_t *out_len)
{
    char *out = ib_xmalloc(n + 2);
    if (n == 0) {
        memcpy(out, ".", 2);
        *out_len = 1;
        return out;
    }
    int rooted = s[0] == '/';
    size_t r = 0, w = 0, dotdot = 0;
    if (rooted) {
        out[w++] = '/';
        r = dotdot = 1;
    }
    while (r < n) {
        if (s[r] == '/') {
            r++;
        } else if (s[r] == '.' && (r + 1 == n || s[r + 1] == '/')) {
            r++;
        } else if (s[r] == '.' && s[r + 1] == '.' && (r + 2 == n || s[r + 2] == '/')) {
            r += 2;
            if (w > dotdot) {
                w--;
                while (w > dotdot && out[w] != '/') w--;
            } else if (!rooted) {
                if (w > 0) out[w++] = '/';
                out[w++] = '.';
                out[w++] = '.';
                dotdot = w;
            }
        } else {
            if ((rooted && w != 1) || (!rooted && w != 0)) out[w++] = '/';
            while (r < n && s[r] != '/') out[w++] = s[r++];
        }
    }
    if (w == 0) out[w++] = '.';
    out[w] = 0;
    *out_len = w;
    return out;
}

/* ---- compiling ----------------------------------------------------------- */

typedef struct {
    tok *toks;
    size_t ntok, captok;
    char *lit;
    size_t nlit, caplit;
    uint32_t *ranges;
    size_t nrange, caprange;
} builder;

static tok *push_tok(builder *b, int kind)
{
    if (b->ntok == b->captok) {
        b->captok = b->captok ? 2 * b->captok : 8;
        b->toks = ib_xrealloc(b->toks, b->captok * sizeof *b->toks);
    }
    tok *t = &b->toks[b->ntok++];
    memset(t, 0, sizeof *t);
    t->kind = (unsigned char)kind;
    return t;
}

static void push_lit(builder *b, char c)
{
    if (b->nlit == b->caplit) {
        b->caplit = b->caplit ? 2 * b->caplit : 32;
        b->lit = ib_xrealloc(b->lit, b->caplit);
    }
    tok *last = b->ntok ? &b->toks[b->ntok - 1] : NULL;
    if (!last || last->kind != TK_LIT) {
        last = push_tok(b, TK_LIT);
        last->off = (uint32_t)b->nlit;
    }
    b->lit[b->nlit++] = c;
    last->len++;
}

static void push_range(builder *b, uint32_t lo, uint32_t hi)
{
    if (b->nrange + 2 > b->caprange) {
        b->caprange = b->caprange ? 2 * b->caprange : 16;
        b->ranges = ib_xrealloc(b->ranges, b->caprange * sizeof *b->ranges);
    }
    b->ranges[b->nrange++] = lo;
    b->ranges[b->nrange++] = hi;
}

/* filepath.Match's getEsc: one class member, possibly escaped. */
static int class_char(const char *p, size_t n, size_t *i, uint32_t *out, const char **why)
{
    if (*i >= n) { *why = "unterminated character class"; return -1; }
    if (p[*i] == '-' || p[*i] == ']') { *why = "bad character class"; return -1; }
    if (p[*i] == '\\') {
        if (++*i >= n) { *why = "unterminated character class"; return -1; }
    }
    size_t w;
    uint32_t r = decode_rune((const unsigned char *)p + *i, n - *i, &w);
    if (r == RUNE_ERROR && w == 1) { *why = "invalid UTF-8 in character class"; return -1; }
    *i += w;
    if (*i >= n) { *why = "unterminated character class"; return -1; }
    *out = r;
    return 0;
}

/* True if moby's compile() would keep treating these bytes as plain text
 * (no wildcard, class or escape), which decides its match "type". */
static int moby_plain(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] == '*' || p[i] == '?' || p[i] == '[' || p[i] == ']' || p[i] == '\\') return 0;
    return 1;
}

static int compile(pattern *pt, const char *p, size_t n, const char **why)
{
    /* moby's compile() picks a strategy before any regexp is involved:
     * "**rest" with a plain rest is a HasSuffix test, "plain**" a HasPrefix
     * test. Those string tests cross '\n' while the regexp ".*" it uses
     * otherwise does not; the nl_ok flag keeps that difference. The suffix
     * form also means "**foo" matches "xfoo" (not only "x/foo"). */
    int starts_dstar = n >= 2 && p[0] == '*' && p[1] == '*';
    size_t rest = starts_dstar ? (n > 2 && p[2] == '/' ? 3 : 2) : 0;
    int suffix_mode = starts_dstar && moby_plain(p + rest, n - rest);
    int prefix_mode = !starts_dstar && n >= 2 && p[n - 2] == '*' && p[n - 1] == '*' &&
                      moby_plain(p, n - 2);
    unsigned char nl_ok = (unsigned char)(suffix_mode || prefix_mode);

    builder b = {0};
    size_t i = 0;
    while (i < n) {
        char c = p[i];
        if (c == '*') {
            if (i + 1 < n && p[i + 1] == '*') {
                int at_start = i == 0, slash = 0;
                i += 2;
                if (i < n && p[i] == '/') { i++; slash = 1; }
                int any = i == n || (suffix_mode && at_start && !slash);
                push_tok(&b, any ? TK_DSTAR_ANY : TK_DSTAR_SLASH)->nl_ok = nl_ok;
            } else {
                push_tok(&b, TK_STAR);
                i++;
            }
        } else if (c == '?') {
            push_tok(&b, TK_ONE);
            i++;
        } else if (c == '[') {
            i++;
            int neg = 0;
            if (i < n && p[i] == '^') { neg = 1; i++; }
            size_t first = b.nrange;
            for (size_t nr = 0;; nr++) {
                if (i < n && p[i] == ']' && nr > 0) { i++; break; }
                uint32_t lo, hi;
                if (class_char(p, n, &i, &lo, why) < 0) goto fail;
                hi = lo;
                if (p[i] == '-') {
                    i++;
                    if (class_char(p, n, &i, &hi, why) < 0) goto fail;
                    if (lo > hi) { *why = "invalid character class range"; goto fail; }
                }
                push_range(&b, lo, hi);
            }
            tok *t = push_tok(&b, TK_CLASS);
            t->neg = (unsigned char)neg;
            t->off = (uint32_t)first;
            t->len = (uint32_t)((b.nrange - first) / 2);
        } else if (c == '\\') {
            if (++i >= n) { *why = "trailing backslash"; goto fail; }
            push_lit(&b, p[i++]);
        } else {
            push_lit(&b, c);
            i++;
        }
    }
    pt->toks = b.toks;
    pt->ntok = b.ntok;
    pt->lit = b.lit;
    pt->ranges = b.ranges;
    pt->literal = b.ntok == 1 && b.toks[0].kind == TK_LIT;
    return 0;
fail:
    free(b.toks);
    free(b.lit);
    free(b.ranges);
    return -1;
}

static void pattern_free(pattern *pt)
{
    free(pt->toks);
    free(pt->lit);
    free(pt->ranges);
}

ib_ignore *ib_ignore_new_empty(void)
{
    return ib_xcalloc(1, sizeof(ib_ignore));
}

void ib_ignore_free(ib_ignore *ig)
{
    if (!ig) return;
    for (size_t i = 0; i < ig->n; i++) pattern_free(&ig->pats[i]);
    free(ig->pats);
    free(ig);
}

size_t ib_ignore_count(const ib_ignore *ig)
{
    return ig ? ig->n : 0;
}

int ib_ignore_parse(ib_ignore **out, const char *text, size_t len, const char *filename)
{
    *out = NULL;
    if (!filename) filename = ".dockerignore";
    ib_ignore *ig = ib_ignore_new_empty();
    size_t cap = 0;
    const char *p = len ? text : "", *end = p + len;
    int lineno = 0;

    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *l = p;
        size_t ll = (size_t)((nl ? nl : end) - p);
        p = nl ? nl + 1 : end;
        lineno++;
        /* bufio.ScanLines drops a '\r' before the '\n' (CRLF files). */
        if (ll && l[ll - 1] == '\r') ll--;
        if (lineno == 1 && ll >= 3 && memcmp(l, "\xEF\xBB\xBF", 3) == 0) { l += 3; ll -= 3; }
        /* ignorefile.ReadAll: only a '#' in column 1 starts a comment, so
         * "  #x" is a pattern; this is checked before trimming. */
        if (ll && l[0] == '#') continue;
        trim_space(&l, &ll);
        if (!ll) continue;

        int invert = l[0] == '!';
        if (invert) {
            l++;
            ll--;
            trim_space(&l, &ll);
        }
        /* ReadAll cleans and drops one leading '/' (the context root is both
         * the working and the root directory), then New() trims and cleans
         * the whole line again, '!' included. Both steps are kept because the
         * second one shows: "/ a" ends up as "a" (but "!/ a" as "! a"), and
         * "!/" as a bare "!", which is rejected. */
        char *cleaned = NULL;
        size_t cl = 0;
        if (ll) {
            cleaned = go_clean(l, ll, &cl);
            if (cl > 1 && cleaned[0] == '/') memmove(cleaned, cleaned + 1, cl--);
        }
        size_t linelen = (invert ? 1 : 0) + cl;
        char *line = ib_xmalloc(linelen + 1);
        if (invert) line[0] = '!';
        if (cl) memcpy(line + (invert ? 1 : 0), cleaned, cl);
        line[linelen] = 0;
        free(cleaned);
        const char *lt = line;
        trim_space(&lt, &linelen);
        if (!linelen) {
            free(line);
            continue;
        }
        char *pat = go_clean(lt, linelen, &cl);
        free(line);

        pattern pt = {0};
        const char *body = pat;
        if (pat[0] == '!') {
            if (cl == 1) {
                free(pat);
                ib_ignore_free(ig);
                return ib_error_set(IB_EINVALID, "%s:%d: bad pattern \"!\": an exception needs a path",
                                    filename, lineno);
            }
            pt.exception = 1;
            body++;
            cl--;
        }
        const char *why = NULL;
        if (compile(&pt, body, cl, &why) < 0) {
            int rc = ib_error_set(IB_EINVALID, "%s:%d: bad pattern \"%s\": %s", filename, lineno, pat, why);
            free(pat);
            ib_ignore_free(ig);
            return rc;
        }
        free(pat);
        if (ig->n == cap) {
            cap = cap ? 2 * cap : 8;
            ig->pats = ib_xrealloc(ig->pats, cap * sizeof *ig->pats);
        }
        ig->pats[ig->n++] = pt;
    }
    *out = ig;
    return 0;
}

/* ---- matching ------------------------------------------------------------ */

static int class_has(const pattern *pt, const tok *t, uint32_t r)
{
    const uint32_t *rg = pt->ranges + t->off;
    int in = 0;
    for (uint32_t k = 0; k < t->len && !in; k++) in = rg[2 * k] <= r && r <= rg[2 * k + 1];
    return in != t->neg;
}

enum { RUN_MATCH, RUN_ALIVE };

/* Simulates the pattern over s[0..n). cur[j] says "the tokens so far can
 * consume exactly s[0..j)"; each token maps that set to the next. Because a
 * prefix's result never depends on later bytes, the final set answers for
 * every prefix at once:
 *   RUN_MATCH: 1 if the pattern matches s or a parent directory of s (a prefix
 *     ending before a '/'), i.e. moby's MatchesOrParentMatches per pattern;
 *   RUN_ALIVE: 1 if some path that starts with s could still match (s is
 *     "dir/"), used to know whether an exception can reach below dir.
 * cur and nxt must each hold n + 1 bytes. */
static int run(const pattern *pt, const char *s, size_t n, unsigned char *cur, unsigned char *nxt, int mode)
{
    memset(cur, 0, n + 1);
    cur[0] = 1;
    size_t lo = 0, hi = 0; /* every set entry of cur lies in [lo, hi] */

    for (size_t ti = 0; ti < pt->ntok; ti++) {
        const tok *t = &pt->toks[ti];
        if (mode == RUN_ALIVE && cur[n]) return 1;
        memset(nxt + lo, 0, n + 1 - lo);
        size_t nlo = SIZE_MAX, nhi = 0;
#define SET(k) do { size_t k_ = (k); nxt[k_] = 1; if (k_ < nlo) nlo = k_; if (k_ > nhi) nhi = k_; } while (0)
        switch (t->kind) {
        case TK_LIT: {
            const char *lit = pt->lit + t->off;
            for (size_t j = lo; j <= hi; j++) {
                if (!cur[j]) continue;
                if (j + t->len <= n) {
                    if (memcmp(s + j, lit, t->len) == 0) SET(j + t->len);
                } else if (mode == RUN_ALIVE && memcmp(s + j, lit, n - j) == 0) {
                    return 1; /* s ends inside this literal */
                }
            }
            break;
        }
        case TK_ONE:
        case TK_CLASS:
            for (size_t j = lo; j <= hi && j < n; j++) {
                if (!cur[j]) continue;
                size_t w;
                uint32_t r = decode_rune((const unsigned char *)s + j, n - j, &w);
                if (t->kind == TK_ONE ? r != '/' : class_has(pt, t, r)) SET(j + w);
            }
            break;
        case TK_STAR:
        case TK_DSTAR_ANY: {
            /* Steps whole runes, as moby's regexp does: stopping inside a
             * multi-byte character would let a following '?' or class eat
             * its tail as an invalid byte. A walk that reaches a position an
             * earlier walk set can stop there: the rest is the same. */
            int stop_slash = t->kind == TK_STAR, stop_nl = !t->nl_ok && t->kind == TK_DSTAR_ANY;
            for (size_t j = lo; j <= hi; j++) {
                if (!cur[j]) continue;
                for (size_t k = j; !nxt[k];) {
                    SET(k);
                    if (k == n || (stop_slash && s[k] == '/') || (stop_nl && s[k] == '\n')) break;
                    size_t w;
                    decode_rune((const unsigned char *)s + k, n - k, &w);
                    k += w;
                }
            }
            break;
        }
        case TK_DSTAR_SLASH: {
            int live = 0;
            for (size_t j = lo; j <= n; j++) {
                if (j <= hi && cur[j]) { SET(j); live = 1; }
                if (!live) { if (j > hi) break; continue; }
                if (j < n) {
                    if (s[j] == '\n' && !t->nl_ok) live = 0;
                    else if (s[j] == '/') SET(j + 1);
                }
            }
            break;
        }
        }
#undef SET
        if (nlo == SIZE_MAX) return 0;
        unsigned char *tmp = cur;
        cur = nxt;
        nxt = tmp;
        lo = nlo;
        hi = nhi;
    }
    if (cur[n]) return 1;
    if (mode == RUN_ALIVE) return 0;
    for (size_t k = lo; k <= hi && k < n; k++)
        if (cur[k] && s[k] == '/') return 1;
    return 0;
}

/* Scratch space for run(): on the stack for ordinary paths, so matching a
 * large tree does not allocate per file. */
typedef struct {
    unsigned char stack[2 * 4100];
    unsigned char *heap;
    unsigned char *cur, *nxt;
} scratch;

static void scratch_init(scratch *sc, size_t n)
{
    sc->heap = NULL;
    unsigned char *base = sc->stack;
    if (2 * (n + 1) > sizeof sc->stack) base = sc->heap = ib_xmalloc(2 * (n + 1));
    sc->cur = base;
    sc->nxt = base + n + 1;
}

static int pattern_matches(const pattern *pt, const char *s, size_t n, scratch *sc)
{
    if (pt->literal) {
        size_t L = pt->toks[0].len;
        return n >= L && memcmp(s, pt->lit, L) == 0 && (n == L || s[L] == '/');
    }
    return run(pt, s, n, sc->cur, sc->nxt, RUN_MATCH);
}

/* Index + 1 of the last pattern matching path or one of its parents, 0 if
 * none. The last match decides (moby evaluates all patterns in order and
 * lets each match overwrite the result, which comes to the same). */
static size_t last_match(const ib_ignore *ig, const char *s, size_t n, scratch *sc)
{
    for (size_t i = ig->n; i > 0; i--)
        if (pattern_matches(&ig->pats[i - 1], s, n, sc)) return i;
    return 0;
}

/* Cleans a caller's path like moby does, and drops a leading '/' so an
 * absolute-looking path is taken relative to the context root. */
static char *norm_path(const char *path, size_t *n)
{
    char *c = go_clean(path, strlen(path), n);
    size_t skip = 0;
    while (skip < *n && c[skip] == '/') skip++;
    if (skip) {
        memmove(c, c + skip, *n - skip + 1);
        *n -= skip;
    }
    return c;
}

int ib_ignore_match(const ib_ignore *ig, const char *path)
{
    if (!ig || !ig->n || !path) return 0;
    size_t n;
    char *s = norm_path(path, &n);
    int res = 0;
    /* moby never excludes the context root itself. */
    if (n && strcmp(s, ".") != 0) {
        scratch sc;
        scratch_init(&sc, n);
        size_t i = last_match(ig, s, n, &sc);
        res = i && !ig->pats[i - 1].exception;
        free(sc.heap);
    }
    free(s);
    return res;
}

int ib_ignore_may_include_under(const ib_ignore *ig, const char *dir)
{
    if (!ig || !ig->n || !dir) return 1;
    size_t n;
    char *s = norm_path(dir, &n);
    if (!n || strcmp(s, ".") == 0) {
        free(s);
        return 1;
    }
    /* Room for "dir/" for the RUN_ALIVE runs. */
    s = ib_xrealloc(s, n + 2);
    scratch sc;
    scratch_init(&sc, n + 1);
    int res = 1;
    size_t last = last_match(ig, s, n, &sc);
    /* Every path below dir is matched (through its parent) by the pattern that
     * excludes dir, so only exceptions after it can change the verdict, and
     * only if they can match something that starts with "dir/". A dir that is
     * not excluded gets 1: the walker must look inside anyway. */
    if (last && !ig->pats[last - 1].exception) {
        s[n] = '/';
        s[n + 1] = 0;
        res = 0;
        for (size_t i = last; i < ig->n && !res; i++) {
            const pattern *pt = &ig->pats[i];
            if (pt->exception) res = run(pt, s, n + 1, sc.cur, sc.nxt, RUN_ALIVE);
        }
    }
    free(sc.heap);
    free(s);
    return res;
}
