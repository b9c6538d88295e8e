/* What `imgbuild slim` removes from history: path rules (git filter-repo's
 * `--path P --invert-paths`, `--path-glob`, `--paths-from-file`) and a blob
 * size rule (`--strip-blobs-bigger-than`). Path rules apply to file paths;
 * the size rule needs the blob's size, so it is asked separately. */
#ifndef IB_GITFILTER_FILTER_H
#define IB_GITFILTER_FILTER_H

#include <stddef.h>
#include <stdint.h>

typedef struct ib_gf_filter ib_gf_filter;

ib_gf_filter *ib_gf_filter_new(void);
void ib_gf_filter_free(ib_gf_filter *f);

/* P removes the file P and everything under the directory P (filter-repo's
 * --path): "a/b" matches "a/b" and "a/b/…", "a/b/" only the directory.
 * IB_EUSAGE for an empty, absolute or ".."-containing path. */
int ib_gf_filter_add_path(ib_gf_filter *f, const char *path);
/* fnmatch(3) on the whole path, '*' crossing '/', as filter-repo's --path-glob. */
int ib_gf_filter_add_glob(ib_gf_filter *f, const char *glob);
/* POSIX extended regex searched in the path (filter-repo's "regex:" lines). */
int ib_gf_filter_add_regex(ib_gf_filter *f, const char *re);
/* filter-repo's --paths-from-file: one rule a line, "glob:" / "regex:" /
 * "literal:" prefixes, '#' comments and blank lines skipped; renames ("==>")
 * are refused with FILE:LINE in the message. */
int ib_gf_filter_load(ib_gf_filter *f, const char *file);
/* "500K", "10M", "1G", "123" (1024-based, as filter-repo); IB_EUSAGE otherwise. */
int ib_gf_parse_size(uint64_t *out, const char *s);
/* Strip every blob strictly bigger than bytes; 0 turns the rule off. */
void ib_gf_filter_set_max_blob(ib_gf_filter *f, uint64_t bytes);
uint64_t ib_gf_filter_max_blob(const ib_gf_filter *f);
/* 1 when any rule (path or size) is set. */
int ib_gf_filter_has_rules(const ib_gf_filter *f);
int ib_gf_filter_has_path_rules(const ib_gf_filter *f);

/* 1 when the path rules remove the file at path ("a/b/c", no leading '/'). */
int ib_gf_filter_path_removed(const ib_gf_filter *f, const char *path, size_t len);

enum { IB_GF_DIR_KEEP = 0, IB_GF_DIR_MAYBE = 1, IB_GF_DIR_DROP = 2 };
/* For the directory dir ("" for the root): DROP when the path rules remove
 * everything below it, KEEP when no path rule can match anything below it
 * (only the size rule may still apply), MAYBE otherwise. Lets the rewrite
 * skip whole subtrees without reading them. */
int ib_gf_filter_dir(const ib_gf_filter *f, const char *dir, size_t len);

#endif
