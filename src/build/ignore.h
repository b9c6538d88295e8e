/* .dockerignore matcher with Docker's documented semantics (moby
 * patternmatcher): patterns cleaned like Go's filepath.Clean, a leading '/'
 * ignored, '#' comments, blank lines skipped, '!' exceptions, '**' matching
 * any number of directories, Go filepath.Match syntax otherwise ('*', '?',
 * '[...]', '\\' escapes), the last matching pattern wins, and a pattern that
 * matches a parent directory matches everything below it. */
#ifndef IB_BUILD_IGNORE_H
#define IB_BUILD_IGNORE_H

#include <stddef.h>

typedef struct ib_ignore ib_ignore;

/* Parses the file's text. IB_EINVALID with "<filename>:<line>: bad pattern ..." on a malformed pattern. */
int ib_ignore_parse(ib_ignore **out, const char *text, size_t len, const char *filename);
/* An empty matcher (no .dockerignore). */
ib_ignore *ib_ignore_new_empty(void);
void ib_ignore_free(ib_ignore *ig);

/* path: relative to the context root, '/'-separated, no leading "./" or '/'.
 * Returns 1 if the path is excluded, 0 if not. */
int ib_ignore_match(const ib_ignore *ig, const char *path);
/* Returns 1 if an exception ('!') pattern could re-include something below
 * the excluded directory dir, so a walker must still descend into it;
 * 0 if the whole subtree can be skipped. */
int ib_ignore_may_include_under(const ib_ignore *ig, const char *dir);
/* Number of patterns (for tests/diagnostics). */
size_t ib_ignore_count(const ib_ignore *ig);

#endif
