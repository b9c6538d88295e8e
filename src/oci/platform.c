#include "oci/platform.h"
#include "common/error.h"
#include "common/strbuf.h"
#include "oci/digest.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void lower(char *s)
{
    for (; *s; s++)
        if (*s >= 'A' && *s <= 'Z') *s = (char)(*s - 'A' + 'a');
}

static void normalize(ib_platform *p)
{
    lower(p->os);
    lower(p->arch);
    lower(p->variant);
    if (!strcmp(p->os, "macos")) snprintf(p->os, sizeof p->os, "darwin");
    char *a = p->arch, *v = p->variant;
    if (!strcmp(a, "i386")) {
        snprintf(a, sizeof p->arch, "386");
        *v = 0;
    } else if (!strcmp(a, "x86_64") || !strcmp(a, "x86-64") || !strcmp(a, "amd64")) {
        snprintf(a, sizeof p->arch, "amd64");
        if (!strcmp(v, "v1")) *v = 0;
    } else if (!strcmp(a, "aarch64") || !strcmp(a, "arm64")) {
        snprintf(a, sizeof p->arch, "arm64");
        if (!strcmp(v, "8") || !strcmp(v, "v8")) *v = 0;
    } else if (!strcmp(a, "armhf")) {
        snprintf(a, sizeof p->arch, "arm");
        snprintf(v, sizeof p->variant, "v7");
    } else if (!strcmp(a, "armel")) {
        snprintf(a, sizeof p->arch, "arm");
        snprintf(v, sizeof p->variant, "v6");
    } else if (!strcmp(a, "arm")) {
        if (!*v || !strcmp(v, "7")) snprintf(v, sizeof p->variant, "v7");
        else if (!strcmp(v, "5") || !strcmp(v, "6") || !strcmp(v, "8")) {
            char d = v[0];
            snprintf(v, sizeof p->variant, "v%c", d);
        }
    }
}

void ib_platform_from(ib_platform *out, const char *os, const char *arch, const char *variant)
{
    memset(out, 0, sizeof *out);
    snprintf(out->os, sizeof out->os, "%s", os ? os : "");
    snprintf(out->arch, sizeof out->arch, "%s", arch ? arch : "");
    snprintf(out->variant, sizeof out->variant, "%s", variant ? variant : "");
    normalize(out);
}

static int component_ok(const char *s, size_t n, size_t max)
{
    if (n == 0 || n >= max) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
              c == '.'))
            return 0;
    }
    return 1;
}

int ib_platform_parse(ib_platform *out, const char *s, const char *flag)
{
    memset(out, 0, sizeof *out);
    const char *s1 = strchr(s, '/'), *s2 = s1 ? strchr(s1 + 1, '/') : NULL;
    int ok = s1 && !(s2 && strchr(s2 + 1, '/'));
    if (ok) {
        size_t l0 = (size_t)(s1 - s), l1 = s2 ? (size_t)(s2 - s1 - 1) : strlen(s1 + 1), l2 = s2 ? strlen(s2 + 1) : 0;
        ok = component_ok(s, l0, sizeof out->os) && component_ok(s1 + 1, l1, sizeof out->arch) &&
             (!s2 || component_ok(s2 + 1, l2, sizeof out->variant));
        if (ok) {
            snprintf(out->os, sizeof out->os, "%.*s", (int)l0, s);
            snprintf(out->arch, sizeof out->arch, "%.*s", (int)l1, s1 + 1);
            if (s2) snprintf(out->variant, sizeof out->variant, "%s", s2 + 1);
        }
    }
    if (!ok)
        return ib_error_set(IB_EUSAGE, "%s %s: expected OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm64/v8", flag, s);
    normalize(out);
    return 0;
}

void ib_platform_format(char *buf, size_t n, const ib_platform *p)
{
    snprintf(buf, n, "%s/%s%s%s", p->os, p->arch, *p->variant ? "/" : "", p->variant);
}

/* "v7" -> 7; "" -> 0 (amd64's baseline, v1); anything else -> -1 */
static int level(const char *v)
{
    if (!*v) return 0;
    if (v[0] != 'v' || v[1] < '1' || v[1] > '9' || v[2]) return -1;
    return v[1] - '0';
}

int ib_platform_score(const ib_platform *want, const ib_platform *have)
{
    if (strcmp(want->os, have->os) || strcmp(want->arch, have->arch)) return 0;
    if (!strcmp(want->variant, have->variant)) return 100;
    /* Older revisions of the same ISA run: arm v7 > v6 > v5, amd64 v3 > v2 > v1. */
    if (!strcmp(want->arch, "arm") || !strcmp(want->arch, "amd64")) {
        int w = level(want->variant), h = level(have->variant);
        if (w >= 0 && h >= 0 && h < w) return 10 + h;
    }
    return 0;
}

int ib_platform_pick(char *out, const char *index_json, size_t len, const ib_platform *want)
{
    json_error_t jerr;
    json_t *j = json_loadb(index_json, len, 0, &jerr);
    if (!j) return ib_error_set(IB_EINVALID, "image index is not valid JSON: %s", jerr.text);
    json_t *mds = json_object_get(j, "manifests"), *d;
    size_t i;
    int best = 0;
    ib_strbuf offered = {0};
    json_array_foreach(mds, i, d)
    {
        json_t *pl = json_object_get(d, "platform");
        const char *os = json_string_value(json_object_get(pl, "os"));
        const char *arch = json_string_value(json_object_get(pl, "architecture"));
        const char *dg = json_string_value(json_object_get(d, "digest"));
        if (!os || !arch || !dg || !ib_digest_valid(dg)) continue;
        ib_platform have;
        ib_platform_from(&have, os, arch, json_string_value(json_object_get(pl, "variant")));
        if (!strcmp(have.os, "unknown")) continue; /* BuildKit attestations */
        char f[96];
        ib_platform_format(f, sizeof f, &have);
        ib_strbuf_addf(&offered, "%s%s", offered.len ? ", " : "", f);
        int s = ib_platform_score(want, &have);
        if (s > best) {
            best = s;
            memcpy(out, dg, IB_DIGEST_STRLEN + 1);
        }
    }
    json_decref(j);
    int rc = 0;
    if (!best) {
        char f[96];
        ib_platform_format(f, sizeof f, want);
        rc = ib_error_set(IB_ENOTFOUND, "no image for platform %s in the index (it has: %s)", f,
                          offered.len ? offered.s : "nothing usable");
    }
    free(offered.s);
    return rc;
}
