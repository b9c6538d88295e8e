/* slim's filter: filter-repo's --path / --path-glob / --paths-from-file
 * semantics, the subtree shortcut the rewrite relies on, and sizes. */
#include "ut.h"
#include "common/error.h"
#include "gitfilter/filter.h"
#include "gitfilter/oidmap.h"
#include "gitfilter/rewrite.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

static int rm(const ib_gf_filter *f, const char *p) { return ib_gf_filter_path_removed(f, p, strlen(p)); }
static int dir(const ib_gf_filter *f, const char *p) { return ib_gf_filter_dir(f, p, strlen(p)); }

int main(void)
{
    ib_gf_filter *f = ib_gf_filter_new();
    CHECK(!ib_gf_filter_has_rules(f));
    CHECK_INT(ib_gf_filter_add_path(f, "wepppy/climates/cligen/county_db"), 0);
    CHECK_INT(ib_gf_filter_add_path(f, "data/"), 0);
    CHECK(ib_gf_filter_has_rules(f) && ib_gf_filter_has_path_rules(f));

    /* a path is a file or a directory prefix, never a string prefix */
    CHECK(rm(f, "wepppy/climates/cligen/county_db"));
    CHECK(rm(f, "wepppy/climates/cligen/county_db/NM/Luna.cli"));
    CHECK(!rm(f, "wepppy/climates/cligen/county_db2/x"));
    CHECK(!rm(f, "wepppy/climates/cligen/county_dbx"));
    CHECK(!rm(f, "wepppy/climates/cligen"));
    /* "data/" is a directory only */
    CHECK(!rm(f, "data"));
    CHECK(rm(f, "data/a/b"));
    CHECK(!rm(f, "database/x"));
    /* a length-delimited path that is not NUL-terminated (tree walks) */
    const char *buf = "data/xyz-and-more";
    CHECK(ib_gf_filter_path_removed(f, buf, 8));

    CHECK_INT(dir(f, ""), IB_GF_DIR_MAYBE);
    CHECK_INT(dir(f, "wepppy"), IB_GF_DIR_MAYBE);
    CHECK_INT(dir(f, "wepppy/climates/cligen"), IB_GF_DIR_MAYBE);
    CHECK_INT(dir(f, "wepppy/climates/cligen/county_db"), IB_GF_DIR_DROP);
    CHECK_INT(dir(f, "wepppy/climates/cligen/county_db/NM"), IB_GF_DIR_DROP);
    CHECK_INT(dir(f, "wepppy/nodb"), IB_GF_DIR_KEEP);
    CHECK_INT(dir(f, "wepppy/climates/cligen/county"), IB_GF_DIR_KEEP);
    CHECK_INT(dir(f, "data"), IB_GF_DIR_DROP);
    CHECK_INT(dir(f, "docs"), IB_GF_DIR_KEEP);
    ib_gf_filter_free(f);

    /* bad paths are usage errors naming the flag */
    f = ib_gf_filter_new();
    CHECK_INT(ib_gf_filter_add_path(f, "/abs"), IB_EUSAGE);
    CHECK(strstr(ib_error_last(), "--path") != NULL);
    CHECK_INT(ib_gf_filter_add_path(f, "a/../b"), IB_EUSAGE);
    CHECK_INT(ib_gf_filter_add_path(f, "./a"), IB_EUSAGE);
    CHECK_INT(ib_gf_filter_add_path(f, "a//b"), IB_EUSAGE);
    CHECK_INT(ib_gf_filter_add_path(f, ""), IB_EUSAGE);
    CHECK(!ib_gf_filter_has_rules(f));

    /* globs: fnmatch on the whole path, '*' crosses '/' (filter-repo) */
    CHECK_INT(ib_gf_filter_add_glob(f, "*.nc"), 0);
    CHECK_INT(ib_gf_filter_add_glob(f, "wepppy/soils/*/data"), 0);
    CHECK(rm(f, "x.nc"));
    CHECK(rm(f, "a/b/c.nc"));
    CHECK(!rm(f, "a/b/c.nc4"));
    CHECK(rm(f, "wepppy/soils/ssurgo/data"));
    CHECK(rm(f, "wepppy/soils/a/b/data"));
    CHECK(rm(f, "wepppy/soils/ssurgo/data/x.sol")); // filter-repo also tries the glob followed by a slash and a star
    CHECK(!rm(f, "wepppy/soils/ssurgo/database.sol"));
    CHECK_INT(dir(f, "anything"), IB_GF_DIR_MAYBE);    /* "*.nc" can match anywhere */
    ib_gf_filter_free(f);
    f = ib_gf_filter_new();
    CHECK_INT(ib_gf_filter_add_glob(f, "wepppy/soils/*.sol"), 0);
    CHECK_INT(dir(f, "wepppy"), IB_GF_DIR_MAYBE);
    CHECK_INT(dir(f, "wepppy/soils"), IB_GF_DIR_MAYBE);
    CHECK_INT(dir(f, "wepppy/soils/ssurgo"), IB_GF_DIR_MAYBE);
    CHECK_INT(dir(f, "wepppy/nodb"), IB_GF_DIR_KEEP);
    CHECK_INT(dir(f, "docs"), IB_GF_DIR_KEEP);
    ib_gf_filter_free(f);

    /* --paths-from-file: filter-repo's syntax, errors name FILE:LINE */
    char tmpl[] = "/tmp/ib-filter-XXXXXX";
    int fd = mkstemp(tmpl);
    const char *rules = "# data that moves to /geodata\n"
                        "wepppy/climates/cligen/county_db\n"
                        "\n"
                        "glob:*.tif\n"
                        "regex:^wepppy/soils/ssurgo/data/[0-9]+\\.sol$\n"
                        "literal:odd#name\n";
    CHECK(write(fd, rules, strlen(rules)) == (ssize_t)strlen(rules));
    close(fd);
    f = ib_gf_filter_new();
    CHECK_INT(ib_gf_filter_load(f, tmpl), 0);
    CHECK(rm(f, "wepppy/climates/cligen/county_db/a.cli"));
    CHECK(rm(f, "maps/dem.tif"));
    CHECK(rm(f, "wepppy/soils/ssurgo/data/123.sol"));
    CHECK(!rm(f, "wepppy/soils/ssurgo/data/abc.sol"));
    CHECK(rm(f, "odd#name"));
    CHECK(!rm(f, "README.md"));
    ib_gf_filter_free(f);
    fd = open(tmpl, O_WRONLY | O_TRUNC);
    const char *bad = "ok/path\nold==>new\n";
    CHECK(write(fd, bad, strlen(bad)) == (ssize_t)strlen(bad));
    close(fd);
    f = ib_gf_filter_new();
    CHECK_INT(ib_gf_filter_load(f, tmpl), IB_EUSAGE);
    char want[128];
    snprintf(want, sizeof want, "%s:2:", tmpl);
    CHECK(strstr(ib_error_last(), want) != NULL);
    ib_gf_filter_free(f);
    fd = open(tmpl, O_WRONLY | O_TRUNC);
    bad = "regex:([unclosed\n";
    CHECK(write(fd, bad, strlen(bad)) == (ssize_t)strlen(bad));
    close(fd);
    f = ib_gf_filter_new();
    CHECK_INT(ib_gf_filter_load(f, tmpl), IB_EUSAGE);
    CHECK(strstr(ib_error_last(), ":1") != NULL);
    ib_gf_filter_free(f);
    unlink(tmpl);

    /* sizes, 1024-based as filter-repo */
    uint64_t sz = 0;
    CHECK_INT(ib_gf_parse_size(&sz, "10M"), 0);
    CHECK_INT(sz, 10ull << 20);
    CHECK_INT(ib_gf_parse_size(&sz, "500k"), 0);
    CHECK_INT(sz, 500ull << 10);
    CHECK_INT(ib_gf_parse_size(&sz, "1G"), 0);
    CHECK_INT(sz, 1ull << 30);
    CHECK_INT(ib_gf_parse_size(&sz, "123"), 0);
    CHECK_INT(sz, 123);
    CHECK_INT(ib_gf_parse_size(&sz, "10MB"), 0);
    CHECK_INT(ib_gf_parse_size(&sz, "ten"), IB_EUSAGE);
    CHECK(strstr(ib_error_last(), "--strip-blobs-bigger-than") != NULL);
    CHECK_INT(ib_gf_parse_size(&sz, "10X"), IB_EUSAGE);
    CHECK_INT(ib_gf_parse_size(&sz, "-1"), IB_EUSAGE);
    f = ib_gf_filter_new();
    ib_gf_filter_set_max_blob(f, 1024);
    CHECK(ib_gf_filter_has_rules(f) && !ib_gf_filter_has_path_rules(f));
    ib_gf_filter_free(f);

    int mode = -1;
    CHECK_INT(ib_gf_parse_prune(&mode, "--prune-empty", "always"), 0);
    CHECK_INT(mode, IB_GF_PRUNE_ALWAYS);
    CHECK_INT(ib_gf_parse_prune(&mode, "--prune-empty", "sometimes"), IB_EUSAGE);
    CHECK(strstr(ib_error_last(), "--prune-empty") != NULL);

    /* the oid map survives growth and iterates every entry once */
    ib_oidmap *m = ib_oidmap_new();
    git_oid id;
    for (unsigned i = 0; i < 5000; i++) {
        memset(&id, 0, sizeof id);
        memcpy(id.id, &i, sizeof i);
        id.id[19] = (unsigned char)i;
        ib_oidmap_set(m, &id, i * 3);
    }
    CHECK_INT(ib_oidmap_count(m), 5000);
    uint64_t v = 0, sum = 0;
    unsigned k = 4321;
    memset(&id, 0, sizeof id);
    memcpy(id.id, &k, sizeof k);
    id.id[19] = (unsigned char)k;
    CHECK(ib_oidmap_get(m, &id, &v) && v == 4321 * 3);
    id.id[18] = 1;
    CHECK(!ib_oidmap_get(m, &id, NULL));
    size_t it = 0, n = 0;
    while (ib_oidmap_iter(m, &it, NULL, &v)) {
        sum += v;
        n++;
    }
    CHECK_INT(n, 5000);
    CHECK_INT(sum, 3ull * 4999 * 5000 / 2);
    ib_oidmap_free(m);
    return ut_done();
}
