#include "oci/reference.h"
#include "common/error.h"
#include "oci/digest.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

int ib_ref_valid_tag(const char *t)
{
    size_t n = strlen(t);
    if (n == 0 || n > 128) return 0;
    if (!(isalnum((unsigned char)t[0]) || t[0] == '_')) return 0;
    for (size_t i = 1; i < n; i++)
        if (!(isalnum((unsigned char)t[i]) || t[i] == '_' || t[i] == '.' || t[i] == '-')) return 0;
    return 1;
}

/* distribution/reference: path-component = [a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)* */
/* distribution/reference: path-component = alnum+ (separator alnum+)*,
 * separator = "." | "_" | "__" | "-"+ (lowercase only). */
static int valid_component(const char *s, size_t n)
{
    size_t i = 0;
    for (;;) {
        size_t start = i;
        while (i < n && (islower((unsigned char)s[i]) || isdigit((unsigned char)s[i]))) i++;
        if (i == start) return 0;
        if (i == n) return 1;
        if (s[i] == '.') {
            i++;
        } else if (s[i] == '_') {
            i++;
            if (i < n && s[i] == '_') i++;
        } else if (s[i] == '-') {
            while (i < n && s[i] == '-') i++;
        } else {
            return 0;
        }
    }
}

void ib_ref_clear(ib_ref *r)
{
    free(r->registry);
    free(r->repo);
    free(r->tag);
    free(r->digest);
    memset(r, 0, sizeof *r);
}

int ib_ref_parse(ib_ref *out, const char *s, const char *default_tag)
{
    memset(out, 0, sizeof *out);
    if (!s || !*s) return ib_error_set(IB_EINVALID, "invalid reference '': empty");
    char *work = ib_xstrdup(s);
    char *at = strchr(work, '@');
    if (at) {
        *at = 0;
        if (!ib_digest_valid(at + 1)) {
            ib_error_set(IB_EINVALID, "invalid reference '%s': bad digest", s);
            free(work);
            return IB_EINVALID;
        }
        out->digest = ib_xstrdup(at + 1);
    }
    char *slash = strrchr(work, '/');
    char *colon = strrchr(work, ':');
    if (colon && (!slash || colon > slash)) {
        *colon = 0;
        if (!ib_ref_valid_tag(colon + 1)) {
            ib_error_set(IB_EINVALID, "invalid reference '%s': bad tag '%s'", s, colon + 1);
            free(work);
            ib_ref_clear(out);
            return IB_EINVALID;
        }
        out->tag = ib_xstrdup(colon + 1);
    }
    char *first_slash = strchr(work, '/');
    const char *path = work;
    if (first_slash) {
        size_t hl = (size_t)(first_slash - work);
        if (memchr(work, '.', hl) || memchr(work, ':', hl) || (hl == 9 && !strncmp(work, "localhost", 9)) ||
            memchr(work, '[', hl)) {
            out->registry = ib_xstrndup(work, hl);
            path = first_slash + 1;
        }
    }
    if (!out->registry) out->registry = ib_xstrdup("docker.io");
    if (!strcmp(out->registry, "index.docker.io") || !strcmp(out->registry, "registry-1.docker.io")) {
        free(out->registry);
        out->registry = ib_xstrdup("docker.io");
    }
    if (!strcmp(out->registry, "docker.io") && !strchr(path, '/'))
        out->repo = ib_xasprintf("library/%s", path);
    else
        out->repo = ib_xstrdup(path);
    /* Validate each path component. */
    const char *p = out->repo;
    while (1) {
        const char *e = strchr(p, '/');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (!valid_component(p, n)) {
            ib_error_set(IB_EINVALID,
                         "invalid reference '%s': repository name must be lowercase letters, digits and separators",
                         s);
            free(work);
            ib_ref_clear(out);
            return IB_EINVALID;
        }
        if (!e) break;
        p = e + 1;
    }
    if (strlen(out->registry) + 1 + strlen(out->repo) > 255) {
        ib_error_set(IB_EINVALID, "invalid reference '%.64s…': repository name longer than 255 characters", s);
        free(work);
        ib_ref_clear(out);
        return IB_EINVALID;
    }
    if (!out->tag && !out->digest && default_tag) out->tag = ib_xstrdup(default_tag);
    free(work);
    return 0;
}

char *ib_ref_name(const ib_ref *r) { return ib_xasprintf("%s/%s", r->registry, r->repo); }

char *ib_ref_string(const ib_ref *r)
{
    if (r->tag && r->digest) return ib_xasprintf("%s/%s:%s@%s", r->registry, r->repo, r->tag, r->digest);
    if (r->tag) return ib_xasprintf("%s/%s:%s", r->registry, r->repo, r->tag);
    if (r->digest) return ib_xasprintf("%s/%s@%s", r->registry, r->repo, r->digest);
    return ib_xasprintf("%s/%s", r->registry, r->repo);
}
