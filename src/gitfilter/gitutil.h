/* libgit2's error, in our error convention: shared by the gitfilter files. */
#ifndef IB_GITFILTER_GITUTIL_H
#define IB_GITFILTER_GITUTIL_H

/* libgit2's last message ("unknown libgit2 error" when it left none). */
const char *ib_gf_git_msg(void);
/* Sets "<what>: <libgit2's message>" and returns code. */
int ib_gf_git_fail(int code, const char *what);

#endif
