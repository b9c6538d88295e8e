/* Minimal unit-test harness: CHECK records failures and goes on, so one run
 * shows every broken expectation; ut_done() prints "N passed, N failed" and
 * returns the exit status. */
#ifndef IB_UT_H
#define IB_UT_H

#include <stdio.h>
#include <string.h>

static int ut_pass, ut_fail;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (cond) ut_pass++;                                                         \
        else { ut_fail++; fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); } \
    } while (0)

#define CHECK_STR(a, b)                                                              \
    do {                                                                             \
        const char *ut_a = (a), *ut_b = (b);                                         \
        if (ut_a && ut_b && strcmp(ut_a, ut_b) == 0) ut_pass++;                      \
        else { ut_fail++; fprintf(stderr, "%s:%d: CHECK_STR failed: %s = \"%s\", want \"%s\"\n", \
                                  __FILE__, __LINE__, #a, ut_a ? ut_a : "(null)", ut_b ? ut_b : "(null)"); } \
    } while (0)

#define CHECK_INT(a, b)                                                              \
    do {                                                                             \
        long long ut_a = (long long)(a), ut_b = (long long)(b);                      \
        if (ut_a == ut_b) ut_pass++;                                                 \
        else { ut_fail++; fprintf(stderr, "%s:%d: CHECK_INT failed: %s = %lld, want %lld\n", \
                                  __FILE__, __LINE__, #a, ut_a, ut_b); }             \
    } while (0)

static inline int ut_done(void)
{
    printf("%d passed, %d failed\n", ut_pass, ut_fail);
    return ut_fail ? 1 : 0;
}

#endif
