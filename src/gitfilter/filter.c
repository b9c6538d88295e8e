#include "gitfilter/filter.h"
#include "common/error.h"
#include "common/fs.h"

#include <ctype.h>
#include <fnmatch.h>
#include <regex.h>
#include <stdlib.h>
#include <string.h>

enum { R_PATH, R_DIR, R_GLOB, R_REGEX };

typedef struct {
    int kind;
    char *s;     /* the path (no trailing '/') or the glob */
    char *below; /* glob: filter-repo's companion pattern, G + "/" + "*" (G + "*" when G ends in '/'): a glob naming a directory takes what is in it */
    size_t len;
    size_t lit;  /* glob: length of the literal prefix before the first wildcard */
    regex_t re;
} rule;

struct ib_gf_filter {
    rule *r;
    size_t n, cap;
    uint64_t max_blob;
};

ib_gf_filter *ib_gf_filter_new(void) { return ib_xcalloc(1, sizeof(ib_gf_filter)); }

void ib_gf_filter_free(ib_gf_filter *f)
{
    if (!f) return;
    for (size_t i = 0; i < f->n; i++) {
        if (f->r[i].kind == R_REGEX) regfree(&f->r[i].re);
        free(f->r[i].s);
        free(f->r[i].below);
    }
    free(f->r);
    free(f);
}

static rule *add(ib_gf_filter *f)
{
    if (f->n == f->cap) {
        f->cap = f->cap ? f->cap * 2 : 8;
        f->r = ib_xrealloc(f->r, f->cap * sizeof *f->r);
    }
    rule *r = &f->r[f->n++];
    memset(r, 0, sizeof *r);
    return r;
}

int ib_gf_filter_add_path(ib_gf_filter *f, const char *path)
{
    size_t n = strlen(path);
    int dir_only = n > 0 && path[n - 1] == '/';
    while (n > 0 && path[n - 1] == '/') n--;
    if (n == 0 || path[0] == '/')
        return ib_error_set(IB_EUSAGE, "--path '%s': expected a path relative to the repository root", path);
    /* filter-repo compares raw bytes: "./a" or "a//b" would silently match
     * nothing, so refuse them instead of letting the export come out empty. */
    for (size_t i = 0, s = 0; i <= n; i++) {
        if (i == n || path[i] == '/') {
            size_t cl = i - s;
            if (cl == 0 || (cl == 1 && path[s] == '.') || (cl == 2 && path[s] == '.' && path[s + 1] == '.'))
                return ib_error_set(IB_EUSAGE, "--path '%s': empty, '.' or '..' component", path);
            s = i + 1;
        }
    }
    rule *r = add(f);
    r->kind = dir_only ? R_DIR : R_PATH;
    r->s = ib_xstrndup(path, n);
    r->len = n;
    return 0;
}

/* filter-repo matches with Python's fnmatch: a backslash is an ordinary
 * character (fnmatch(3) runs with FNM_NOESCAPE) and "[^...]" is a set that
 * holds '^' (glibc would negate it), so the '^' moves to the end of the set,
 * where glibc reads it literally too. */
static char *python_glob(const char *g)
{
    size_t n = strlen(g);
    char *o = ib_xmalloc(n + 1);
    memcpy(o, g, n + 1);
    for (size_t i = 0; i + 1 < n; i++) {
        if (o[i] != '[' || o[i + 1] != '^') continue;
        size_t k = i + 3; /* a ']' right after "[^" belongs to the set */
        while (k < n && o[k] != ']') k++;
        if (k >= n) break;
        memmove(o + i + 1, o + i + 2, k - i - 2);
        o[k - 1] = '^';
        i = k;
    }
    return o;
}

int ib_gf_filter_add_glob(ib_gf_filter *f, const char *glob)
{
    if (!*glob) return ib_error_set(IB_EUSAGE, "--path-glob: empty pattern");
    rule *r = add(f);
    r->kind = R_GLOB;
    r->s = python_glob(glob);
    r->len = strlen(glob);
    r->lit = strcspn(glob, "*?[\\");
    r->below = ib_xasprintf("%s%s", r->s, glob[r->len - 1] == '/' ? "*" : "/*");
    return 0;
}

int ib_gf_filter_add_regex(ib_gf_filter *f, const char *re)
{
    regex_t rx;
    int rc = regcomp(&rx, re, REG_EXTENDED | REG_NOSUB);
    if (rc != 0) {
        char msg[128];
        regerror(rc, &rx, msg, sizeof msg);
        return ib_error_set(IB_EUSAGE, "regex '%s': %s", re, msg);
    }
    rule *r = add(f);
    r->kind = R_REGEX;
    r->s = ib_xstrdup(re);
    r->re = rx;
    return 0;
}

int ib_gf_filter_load(ib_gf_filter *f, const char *file)
{
    char *text;
    size_t len;
    if (ib_fs_read_all(&text, &len, file, 64u << 20) < 0) return ib_error_wrap(IB_EUSAGE, "--paths-from-file");
    int rc = 0;
    unsigned lineno = 0;
    char *save = NULL;
    for (char *p = text; rc == 0 && p < text + len;) {
        char *nl = memchr(p, '\n', (size_t)(text + len - p));
        char *end = nl ? nl : text + len;
        *end = '\0';
        char *line = p;
        p = end + 1;
        lineno++;
        if (end > line && end[-1] == '\r') end[-1] = '\0';
        if (!*line || *line == '#') continue;
        if (strstr(line, "==>"))
            rc = ib_error_set(IB_EUSAGE, "%s:%u: renames (\"==>\") are not supported by slim", file, lineno);
        else if (!strncmp(line, "glob:", 5))
            rc = ib_gf_filter_add_glob(f, line + 5);
        else if (!strncmp(line, "regex:", 6))
            rc = ib_gf_filter_add_regex(f, line + 6);
        else
            rc = ib_gf_filter_add_path(f, !strncmp(line, "literal:", 8) ? line + 8 : line);
        if (rc < 0 && !strstr(ib_error_last(), file)) ib_error_wrap(rc, "%s:%u", file, lineno);
    }
    (void)save;
    free(text);
    return rc;
}

int ib_gf_parse_size(uint64_t *out, const char *s)
{
    char *end;
    if (!isdigit((unsigned char)*s)) goto bad;
    unsigned long long v = strtoull(s, &end, 10);
    uint64_t mul = 1;
    switch (toupper((unsigned char)*end)) {
    case 0: break;
    case 'K': mul = 1024; end++; break;
    case 'M': mul = 1024 * 1024; end++; break;
    case 'G': mul = 1024ull * 1024 * 1024; end++; break;
    default: goto bad;
    }
    if (*end == 'B' || *end == 'b') end++;
    if (*end || v > UINT64_MAX / mul) goto bad;
    *out = v * mul;
    return 0;
bad:
    return ib_error_set(IB_EUSAGE, "--strip-blobs-bigger-than '%s': expected a size such as 500K, 10M or 1G", s);
}

void ib_gf_filter_set_max_blob(ib_gf_filter *f, uint64_t bytes) { f->max_blob = bytes; }
uint64_t ib_gf_filter_max_blob(const ib_gf_filter *f) { return f->max_blob; }
int ib_gf_filter_has_rules(const ib_gf_filter *f) { return f->n > 0 || f->max_blob > 0; }
int ib_gf_filter_has_path_rules(const ib_gf_filter *f) { return f->n > 0; }

int ib_gf_filter_path_removed(const ib_gf_filter *f, const char *path, size_t len)
{
    for (size_t i = 0; i < f->n; i++) {
        const rule *r = &f->r[i];
        switch (r->kind) {
        case R_PATH:
            if (len == r->len && !memcmp(path, r->s, len)) return 1;
            /* fallthrough */
        case R_DIR:
            if (len > r->len && path[r->len] == '/' && !memcmp(path, r->s, r->len)) return 1;
            break;
        case R_GLOB:
        case R_REGEX: {
            /* paths come from tree walks as (pointer, length); rules need C strings */
            char buf[4096];
            const char *p = path;
            char *heap = NULL;
            if (path[len] != '\0') {
                if (len < sizeof buf) {
                    memcpy(buf, path, len);
                    buf[len] = '\0';
                    p = buf;
                } else {
                    p = heap = ib_xstrndup(path, len);
                }
            }
            int m = r->kind == R_GLOB ? fnmatch(r->s, p, FNM_NOESCAPE) == 0 || fnmatch(r->below, p, FNM_NOESCAPE) == 0
                                      : regexec(&r->re, p, 0, NULL, 0) == 0;
            free(heap);
            if (m) return 1;
            break;
        }
        }
    }
    return 0;
}

int ib_gf_filter_dir(const ib_gf_filter *f, const char *dir, size_t len)
{
    int maybe = 0;
    for (size_t i = 0; i < f->n; i++) {
        const rule *r = &f->r[i];
        switch (r->kind) {
        case R_PATH:
        case R_DIR:
            /* dir == rule or below it: all gone; dir above the rule: maybe */
            if (len >= r->len && !memcmp(dir, r->s, r->len) && (len == r->len || dir[r->len] == '/'))
                return IB_GF_DIR_DROP;
            if (len == 0 || (len < r->len && r->s[len] == '/' && !memcmp(dir, r->s, len))) maybe = 1;
            break;
        case R_GLOB: {
            /* Only the literal prefix can rule a directory out: "dir/" and the
             * prefix must agree on their common length. */
            size_t n = len + 1 < r->lit ? len + 1 : r->lit;
            if (len == 0) {
                maybe = 1;
            } else {
                size_t cmp = n <= len ? n : len;
                if (!memcmp(dir, r->s, cmp) && (n <= len || r->s[len] == '/')) maybe = 1;
            }
            break;
        }
        case R_REGEX: maybe = 1; break;
        }
    }
    return maybe ? IB_GF_DIR_MAYBE : IB_GF_DIR_KEEP;
}
