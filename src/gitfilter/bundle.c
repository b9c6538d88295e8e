#include "gitfilter/bundle.h"
#include "gitfilter/gitutil.h"
#include "common/error.h"
#include "common/fs.h"
#include "common/strbuf.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

struct ib_gf_bundle_plan {
    char *pack;          /* the repository's only .pack */
    unsigned long long pack_size;
    ib_strbuf header;    /* "# v2 git bundle\n", "<oid> <ref>\n"…, "\n" */
};

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int has_file(const char *dir, const char *name)
{
    char *p = ib_fs_join(dir, name);
    int r = ib_fs_exists(p);
    free(p);
    return r;
}

/* The single pack of gitdir, or NULL when the store has any other shape. */
static char *only_pack(const char *gitdir)
{
    char *info = ib_xasprintf("%sobjects/info", gitdir);
    int alternates = has_file(info, "alternates");
    free(info);
    if (alternates) return NULL;
    for (int i = 0; i < 256; i++) {
        char *sub = ib_xasprintf("%sobjects/%02x", gitdir, i);
        DIR *s = opendir(sub);
        free(sub);
        int loose = 0;
        for (struct dirent *e; s && !loose && (e = readdir(s));) loose = e->d_name[0] != '.';
        if (s) closedir(s);
        if (loose) return NULL;
    }
    char *dir = ib_xasprintf("%sobjects/pack", gitdir);
    DIR *d = opendir(dir);
    char *pack = NULL;
    int packs = 0, other = 0;
    for (struct dirent *e; d && (e = readdir(d));) {
        size_t l = strlen(e->d_name);
        if (l > 5 && !strcmp(e->d_name + l - 5, ".pack")) {
            packs++;
            free(pack);
            pack = ib_fs_join(dir, e->d_name);
        } else if (l > 9 && !strcmp(e->d_name + l - 9, ".promisor")) {
            other++; /* a partial clone: its pack is not the whole history */
        }
    }
    if (d) closedir(d);
    free(dir);
    if (packs != 1 || other) {
        free(pack);
        return NULL;
    }
    return pack;
}

static int add_ref(ib_gf_bundle_plan *p, git_repository *repo, git_odb *odb, const char *name)
{
    git_oid id;
    if (git_reference_name_to_id(&id, repo, name) < 0 || !git_odb_exists(odb, &id)) {
        git_error_clear();
        return 1; /* dangling or broken: let git decide what to do with it */
    }
    char hex[GIT_OID_HEXSZ + 1];
    git_oid_tostr(hex, sizeof hex, &id);
    ib_strbuf_addf(&p->header, "%s %s\n", hex, name);
    return 0;
}

int ib_gf_bundle_plan_new(ib_gf_bundle_plan **out, git_repository *repo)
{
    *out = NULL;
    char *pack = only_pack(git_repository_path(repo));
    if (!pack) return 0;
    struct stat st;
    unsigned char magic[8];
    int fd = open(pack, O_RDONLY | O_CLOEXEC);
    int ok = fd >= 0 && fstat(fd, &st) == 0 && st.st_size > 32 && pread(fd, magic, 8, 0) == 8 &&
             !memcmp(magic, "PACK\0\0\0", 7) && (magic[7] == 2 || magic[7] == 3);
    if (fd >= 0) close(fd);
    if (!ok) {
        free(pack);
        return 0;
    }

    git_reference_iterator *it = NULL;
    git_odb *odb = NULL;
    if (git_repository_odb(&odb, repo) < 0 || git_reference_iterator_glob_new(&it, repo, "refs/*") < 0) {
        git_odb_free(odb);
        free(pack);
        return ib_gf_git_fail(IB_ERR, "listing the refs for the backup");
    }
    char **names = NULL;
    size_t n = 0;
    git_reference *ref;
    while (git_reference_next(&ref, it) == 0) {
        names = ib_xrealloc(names, (n + 1) * sizeof *names);
        names[n++] = ib_xstrdup(git_reference_name(ref));
        git_reference_free(ref);
    }
    git_error_clear();
    git_reference_iterator_free(it);
    qsort(names, n, sizeof *names, cmp_str);

    ib_gf_bundle_plan *p = ib_xcalloc(1, sizeof *p);
    p->pack = pack;
    p->pack_size = (unsigned long long)st.st_size;
    ib_strbuf_addf(&p->header, "# v2 git bundle\n");
    int broken = 0;
    for (size_t i = 0; i < n; i++) {
        broken |= add_ref(p, repo, odb, names[i]);
        free(names[i]);
    }
    free(names);
    git_reference *head;
    if (git_reference_lookup(&head, repo, "HEAD") == 0) {
        /* an unborn HEAD is simply not listed, as git does */
        git_oid id;
        if (git_reference_name_to_id(&id, repo, "HEAD") == 0) broken |= add_ref(p, repo, odb, "HEAD");
        git_reference_free(head);
    }
    git_error_clear();
    git_odb_free(odb);
    ib_strbuf_addf(&p->header, "\n");
    if (broken) {
        ib_gf_bundle_plan_free(p);
        return 0;
    }
    *out = p;
    return 0;
}

unsigned long long ib_gf_bundle_size(const ib_gf_bundle_plan *p) { return p->header.len + p->pack_size; }

static int write_all(int fd, const void *buf, size_t n)
{
    const char *s = buf;
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

/* The pack goes through SHA-1 on its way and must match its own trailer:
 * the backup is what the user falls back on, so it is checked as it is made
 * rather than trusted. */
int ib_gf_bundle_write(const ib_gf_bundle_plan *p, const char *path)
{
    enum { CHUNK = 1 << 20 };
    int in = open(p->pack, O_RDONLY | O_CLOEXEC);
    if (in < 0) return ib_error_errno(IB_ERR, "%s", p->pack);
    int out = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
        int rc = ib_error_errno(IB_ERR, "%s", path);
        close(in);
        return rc;
    }
    int rc = 0;
    unsigned char *buf = ib_xmalloc(CHUNK);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md || EVP_DigestInit_ex(md, EVP_sha1(), NULL) != 1) {
        rc = ib_error_set(IB_ERR, "%s: SHA-1 unavailable", path);
        goto done;
    }
    if (write_all(out, p->header.s, p->header.len) < 0) {
        rc = ib_error_errno(IB_ERR, "%s", path);
        goto done;
    }
    unsigned long long body = p->pack_size - 20, done_bytes = 0;
    unsigned char trailer[20];
    size_t tl = 0;
    for (;;) {
        ssize_t r = read(in, buf, CHUNK);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            rc = ib_error_errno(IB_ERR, "%s", p->pack);
            goto done;
        }
        if (r == 0) break;
        /* hash everything but the trailing 20 bytes, which are kept aside */
        size_t n = (size_t)r, h = 0;
        if (done_bytes < body) h = (size_t)(body - done_bytes < n ? body - done_bytes : n);
        if (h) EVP_DigestUpdate(md, buf, h);
        for (size_t i = h; i < n && tl < 20; i++) trailer[tl++] = buf[i];
        done_bytes += n;
        if (done_bytes > p->pack_size) break;
        if (write_all(out, buf, n) < 0) {
            rc = ib_error_errno(IB_ERR, "%s", path);
            goto done;
        }
    }
    unsigned char sum[EVP_MAX_MD_SIZE];
    unsigned sl = 0;
    EVP_DigestFinal_ex(md, sum, &sl);
    if (done_bytes != p->pack_size || tl != 20 || sl != 20 || memcmp(sum, trailer, 20)) {
        rc = ib_error_set(IB_ERR, "%s: the pack changed or does not match its checksum; not backed up from it", p->pack);
        goto done;
    }
    if (fsync(out) < 0) rc = ib_error_errno(IB_ERR, "%s", path);
done:
    EVP_MD_CTX_free(md);
    free(buf);
    close(in);
    if (close(out) < 0 && rc == 0) rc = ib_error_errno(IB_ERR, "%s", path);
    return rc;
}

void ib_gf_bundle_plan_free(ib_gf_bundle_plan *p)
{
    if (!p) return;
    free(p->pack);
    free(p->header.s);
    free(p);
}
