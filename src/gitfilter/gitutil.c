#include "gitfilter/gitutil.h"
#include "common/error.h"

#include <git2.h>

const char *ib_gf_git_msg(void)
{
    const git_error *e = git_error_last();
    return e && e->message ? e->message : "unknown libgit2 error";
}

int ib_gf_git_fail(int code, const char *what) { return ib_error_set(code, "%s: %s", what, ib_gf_git_msg()); }
