/* Platforms ("linux/arm64/v8") as containerd normalises and matches them:
 * the names users type (aarch64, x86_64, armhf) and the ones indexes carry
 * must meet, and an arm/v7 build must not get an arm/v5 base. */
#ifndef IB_OCI_PLATFORM_H
#define IB_OCI_PLATFORM_H

#include <stddef.h>

typedef struct {
    char os[32], arch[32], variant[16];
} ib_platform;

/* Parses OS/ARCH[/VARIANT] and normalises it (aarch64 -> arm64, arm64/v8 ->
 * arm64, arm -> arm/v7, x86_64 -> amd64, armhf -> arm/v7, ...). flag names
 * the option in the IB_EUSAGE error ("--platform"). */
int ib_platform_parse(ib_platform *out, const char *s, const char *flag);

/* "linux/arm/v7" (no trailing variant when there is none). */
void ib_platform_format(char *buf, size_t n, const ib_platform *p);

/* Normalises fields as found in an index or image config (variant may be NULL). */
void ib_platform_from(ib_platform *out, const char *os, const char *arch, const char *variant);

/* How well `have` runs where `want` is asked for: 0 not at all; higher is
 * better, the exact platform best (arm/v7 also runs v6 and v5, amd64/v3
 * also runs v2 and v1, in that order). */
int ib_platform_score(const ib_platform *want, const ib_platform *have);

/* The manifest of an OCI index / Docker manifest list that best serves
 * want: its digest into out[72]. IB_ENOTFOUND (message lists what the
 * index offers) when none does, IB_EINVALID when the index is not JSON. */
int ib_platform_pick(char *out, const char *index_json, size_t len, const ib_platform *want);

#endif
