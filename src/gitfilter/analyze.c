/* `imgbuild slim --analyze`: sizes of a repository's history by path,
 * directory and extension, in the spirit of git filter-repo --analyze.
 *
 * The cost that matters is the history walk. A repository with thousands of
 * commits has the same trees at the same paths in almost all of them, so each
 * (tree id, path) pair is expanded once and every later sighting costs one hash
 * lookup; the whole walk is then proportional to the number of distinct trees,
 * not commits × files. Packed sizes come from the .idx offset tables, so no
 * object is inflated to learn its size on disk. */
/* filter.h uses size_t without including <stddef.h>. */
#include <stddef.h>

#include "gitfilter/analyze.h"
#include "gitfilter/gitutil.h"
#include "common/error.h"
#include "common/fs.h"
#include "common/progress.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define NONE UINT32_MAX
#define SUMMARY_COLS 100


/* ---- on-disk sizes ------------------------------------------------------ */

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t be64(const unsigned char *p) { return (uint64_t)be32(p) << 32 | be32(p + 4); }

static void set_min(ib_oidmap *m, const git_oid *id, uint64_t size)
{
    uint64_t old;
    /* Duplicates (same object in two packs, or packed and loose) are what the
     * next repack collapses to; the smallest copy is the one that stays. */
    if (!ib_oidmap_get(m, id, &old) || size < old) ib_oidmap_set(m, id, size);
}

typedef struct {
    uint64_t off;
    uint32_t ix;
} offent;

static int cmp_off(const void *a, const void *b)
{
    uint64_t x = ((const offent *)a)->off, y = ((const offent *)b)->off;
    return x < y ? -1 : x > y;
}

/* Pack index formats: Documentation/gitformat-pack.txt ("pack-*.idx files").
 * Every count and offset is checked against the mapped length before use, so
 * a truncated or hostile .idx yields IB_ECORRUPT instead of a wild read. */
static int idx_sizes(ib_oidmap *m, const char *path, const unsigned char *p, size_t n, uint64_t pack_size)
{
    static const unsigned char magic[4] = {0xff, 't', 'O', 'c'};
    const unsigned char *fan, *shas, *offs, *large = NULL;
    size_t sha_stride, off_stride;
    uint64_t nlarge = 0;
    int v2 = n >= 8 && memcmp(p, magic, 4) == 0;

    if (v2) {
        if (be32(p + 4) != 2)
            return ib_error_set(IB_ECORRUPT, "%s: unsupported pack index version %u", path, be32(p + 4));
        if (n < 8 + 1024 + 40) return ib_error_set(IB_ECORRUPT, "%s: truncated pack index", path);
        fan = p + 8;
    } else {
        if (n < 1024 + 40) return ib_error_set(IB_ECORRUPT, "%s: truncated pack index", path);
        fan = p;
    }
    for (int i = 1; i < 256; i++)
        if (be32(fan + 4 * i) < be32(fan + 4 * (i - 1)))
            return ib_error_set(IB_ECORRUPT, "%s: pack index fan-out is not sorted", path);
    uint64_t count = be32(fan + 255 * 4);

    if (v2) {
        uint64_t base = 8 + 1024;
        if (base + count * 28 + 40 > n) return ib_error_set(IB_ECORRUPT, "%s: truncated pack index", path);
        shas = p + base;
        sha_stride = 20;
        offs = shas + count * 24; /* after the names and the CRC32 table */
        off_stride = 4;
        large = offs + count * 4;
        nlarge = (n - 40 - (uint64_t)(large - p)) / 8;
    } else {
        if (1024 + count * 24 + 40 > n) return ib_error_set(IB_ECORRUPT, "%s: truncated pack index", path);
        offs = p + 1024; /* v1 entries: 4-byte offset, then the name */
        off_stride = 24;
        shas = offs + 4;
        sha_stride = 24;
    }
    if (pack_size < 12 + 20) return ib_error_set(IB_ECORRUPT, "%s: its pack is too small", path);
    uint64_t end = pack_size - 20; /* the pack's trailing checksum belongs to no object */

    offent *e = ib_xmalloc((count ? count : 1) * sizeof *e);
    for (uint64_t i = 0; i < count; i++) {
        uint64_t o = be32(offs + i * off_stride);
        if (v2 && (o & 0x80000000u)) {
            uint64_t k = o & 0x7fffffffu;
            if (k >= nlarge) {
                free(e);
                return ib_error_set(IB_ECORRUPT, "%s: large offset %llu out of range", path, (unsigned long long)k);
            }
            o = be64(large + 8 * k);
        }
        if (o < 12 || o >= end) {
            free(e);
            return ib_error_set(IB_ECORRUPT, "%s: object offset %llu outside its pack", path, (unsigned long long)o);
        }
        e[i].off = o;
        e[i].ix = (uint32_t)i;
    }
    /* An object's bytes run up to the next object in pack order, which is not
     * the index's name order. */
    qsort(e, count, sizeof *e, cmp_off);
    for (uint64_t i = 0; i < count; i++) {
        uint64_t next = i + 1 < count ? e[i + 1].off : end;
        git_oid id;
        memcpy(id.id, shas + (uint64_t)e[i].ix * sha_stride, 20);
        set_min(m, &id, next - e[i].off);
    }
    free(e);
    return 0;
}

static int has_suffix(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && memcmp(s + a - b, suf, b) == 0;
}

static int one_pack(ib_oidmap *m, const char *packdir, const char *name)
{
    char *idx = ib_fs_join(packdir, name);
    size_t l = strlen(idx);
    char *pack = ib_xasprintf("%.*s.pack", (int)(l - 4), idx);
    struct stat ps, is;
    int rc = 0, fd = -1;
    if (stat(pack, &ps) < 0) {
        /* git ignores an .idx whose pack is gone (interrupted repack), so do we. */
        if (errno != ENOENT) rc = ib_error_errno(IB_ERR, "stat %s", pack);
        goto out;
    }
    fd = open(idx, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &is) < 0) {
        rc = ib_error_errno(IB_ERR, "open %s", idx);
        goto out;
    }
    if (is.st_size < 1024 + 40) {
        rc = ib_error_set(IB_ECORRUPT, "%s: truncated pack index", idx);
        goto out;
    }
    void *map = mmap(NULL, (size_t)is.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        rc = ib_error_errno(IB_ERR, "mmap %s", idx);
        goto out;
    }
    rc = idx_sizes(m, idx, map, (size_t)is.st_size, (uint64_t)ps.st_size);
    munmap(map, (size_t)is.st_size);
out:
    if (fd >= 0) close(fd);
    free(pack);
    free(idx);
    return rc;
}

static int pack_sizes(ib_oidmap *m, const char *objdir)
{
    char *packdir = ib_fs_join(objdir, "pack");
    DIR *d = opendir(packdir);
    int rc = 0;
    if (!d) {
        if (errno != ENOENT) rc = ib_error_errno(IB_ERR, "opendir %s", packdir);
        free(packdir);
        return rc;
    }
    struct dirent *de;
    while (!rc && (de = readdir(d)))
        if (de->d_name[0] != '.' && has_suffix(de->d_name, ".idx")) rc = one_pack(m, packdir, de->d_name);
    closedir(d);
    free(packdir);
    return rc;
}

static int loose_sizes(ib_oidmap *m, const char *objdir)
{
    static const char hex[] = "0123456789abcdef";
    int rc = 0;
    for (int i = 0; i < 256 && !rc; i++) {
        char sub[3] = {hex[i >> 4], hex[i & 15], 0};
        char *dpath = ib_fs_join(objdir, sub);
        DIR *d = opendir(dpath);
        if (!d) {
            if (errno != ENOENT) rc = ib_error_errno(IB_ERR, "opendir %s", dpath);
            free(dpath);
            continue;
        }
        struct dirent *de;
        while ((de = readdir(d))) {
            const char *nm = de->d_name;
            if (strlen(nm) != 38) continue; /* tmp_obj_* files and the like */
            int ok = 1;
            for (int k = 0; k < 38 && ok; k++) ok = isxdigit((unsigned char)nm[k]);
            if (!ok) continue;
            char full[41];
            memcpy(full, sub, 2);
            memcpy(full + 2, nm, 39);
            git_oid id;
            if (git_oid_fromstr(&id, full) < 0) continue;
            struct stat st;
            /* A concurrent gc may prune it between readdir and stat: not an error. */
            if (fstatat(dirfd(d), nm, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(st.st_mode)) continue;
            set_min(m, &id, (uint64_t)st.st_size);
        }
        closedir(d);
        free(dpath);
    }
    return rc;
}

int ib_gf_disk_sizes(ib_oidmap **out, git_repository *repo)
{
    *out = NULL;
    /* Linked worktrees share the main repository's objects. */
    const char *common = git_repository_commondir(repo);
    if (!common) common = git_repository_path(repo);
    char *objdir = ib_fs_join(common, "objects");
    ib_oidmap *m = ib_oidmap_new();
    int rc = pack_sizes(m, objdir);
    if (!rc) rc = loose_sizes(m, objdir);
    free(objdir);
    if (rc) {
        ib_oidmap_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

/* ---- hash tables -------------------------------------------------------- */

static uint64_t fnv(uint64_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ULL;
    return h;
}
#define FNV0 0xcbf29ce484222325ULL

static uint64_t mix(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
}

/* Interned strings: id -> NUL-terminated name in one arena. Names are referred
 * to by offset while interning (the arena moves as it grows). */
typedef struct {
    char *arena;
    size_t alen, acap;
    size_t *off;
    uint32_t *len;
    uint64_t *hash;
    uint32_t n, ncap;
    uint32_t *slot; /* id + 1, 0 = empty */
    size_t cap;
} strtab;

static void strtab_init(strtab *t)
{
    memset(t, 0, sizeof *t);
    t->cap = 1024;
    t->slot = ib_xcalloc(t->cap, sizeof *t->slot);
}

static void strtab_free(strtab *t)
{
    free(t->arena);
    free(t->off);
    free(t->len);
    free(t->hash);
    free(t->slot);
}

static const char *strtab_name(const strtab *t, uint32_t id) { return t->arena + t->off[id]; }

/* The id of s (hash h = fnv(FNV0, s)), added when create; NONE when absent. */
static uint32_t strtab_get(strtab *t, const char *s, size_t len, uint64_t h, int create)
{
    if (create && ((size_t)t->n + 1) * 2 > t->cap) {
        size_t ncap = t->cap * 2;
        uint32_t *ns = ib_xcalloc(ncap, sizeof *ns);
        for (uint32_t id = 0; id < t->n; id++) {
            size_t i = mix(t->hash[id]) & (ncap - 1);
            while (ns[i]) i = (i + 1) & (ncap - 1);
            ns[i] = id + 1;
        }
        free(t->slot);
        t->slot = ns;
        t->cap = ncap;
    }
    size_t i = mix(h) & (t->cap - 1);
    for (; t->slot[i]; i = (i + 1) & (t->cap - 1)) {
        uint32_t id = t->slot[i] - 1;
        if (t->hash[id] == h && t->len[id] == len && memcmp(t->arena + t->off[id], s, len) == 0) return id;
    }
    if (!create) return NONE;
    if (t->n == t->ncap) {
        t->ncap = t->ncap ? t->ncap * 2 : 1024;
        t->off = ib_xrealloc(t->off, t->ncap * sizeof *t->off);
        t->len = ib_xrealloc(t->len, t->ncap * sizeof *t->len);
        t->hash = ib_xrealloc(t->hash, t->ncap * sizeof *t->hash);
    }
    if (t->alen + len + 1 > t->acap) {
        while (t->alen + len + 1 > t->acap) t->acap = t->acap ? t->acap * 2 : 65536;
        t->arena = ib_xrealloc(t->arena, t->acap);
    }
    memcpy(t->arena + t->alen, s, len);
    t->arena[t->alen + len] = 0;
    uint32_t id = t->n++;
    t->off[id] = t->alen;
    t->len[id] = (uint32_t)len;
    t->hash[id] = h;
    t->alen += len + 1;
    t->slot[i] = id + 1;
    return id;
}

/* A set of (object id, 32-bit key) pairs: (tree, directory) for the walk memo,
 * (blob, path) for the versions of each path. */
typedef struct {
    git_oid id;
    uint32_t k;
    uint32_t used;
} pslot;

typedef struct {
    pslot *s;
    size_t cap, n;
} pairset;

static void pairset_init(pairset *p)
{
    p->cap = 4096;
    p->n = 0;
    p->s = ib_xcalloc(p->cap, sizeof *p->s);
}

static size_t pair_hash(const git_oid *id, uint32_t k)
{
    uint64_t v;
    memcpy(&v, id->id, sizeof v);
    return (size_t)mix(v ^ ((uint64_t)k * 0x9e3779b97f4a7c15ULL));
}

/* 1 when (id, k) was not in the set yet (and is now). */
static int pairset_add(pairset *p, const git_oid *id, uint32_t k)
{
    if ((p->n + 1) * 2 > p->cap) {
        size_t ncap = p->cap * 2;
        pslot *ns = ib_xcalloc(ncap, sizeof *ns);
        for (size_t j = 0; j < p->cap; j++) {
            if (!p->s[j].used) continue;
            size_t i = pair_hash(&p->s[j].id, p->s[j].k) & (ncap - 1);
            while (ns[i].used) i = (i + 1) & (ncap - 1);
            ns[i] = p->s[j];
        }
        free(p->s);
        p->s = ns;
        p->cap = ncap;
    }
    size_t i = pair_hash(id, k) & (p->cap - 1);
    for (; p->s[i].used; i = (i + 1) & (p->cap - 1))
        if (p->s[i].k == k && git_oid_equal(&p->s[i].id, id)) return 0;
    git_oid_cpy(&p->s[i].id, id);
    p->s[i].k = k;
    p->s[i].used = 1;
    p->n++;
    return 1;
}

/* ---- the walk ----------------------------------------------------------- */

/* Per interned path. Directories are interned with a trailing '/' ("a/b/",
 * the root is ""), so a file and a directory of the same name stay apart. */
typedef struct {
    uint64_t unpacked, packed, versions, removed;
    uint32_t parent;
    uint8_t is_dir, present;
    int8_t rule; /* path rules' verdict, -1 until asked */
} pent;

typedef struct {
    uint64_t size, disk;
    uint8_t kept, removed;
} binfo;

typedef struct {
    const char *name;
    size_t len;
    uint64_t unpacked, packed, versions;
    int present;
} row;

struct ib_gf_analysis {
    strtab paths, exts; /* own the names the rows point to */
    row *dirs, *extrows, *files;
    size_t ndirs, nexts, nfiles;
    uint64_t commits, trees, blobs, objects, disk_total, blob_bytes, missing;
    int head_known, filtered;
    uint64_t removed_paths, dropped_blobs, dropped_unpacked, dropped_packed, estimate;
};

typedef struct {
    git_repository *repo;
    git_odb *odb;
    const ib_gf_filter *filter; /* NULL unless it has rules */
    uint64_t max_blob;
    ib_oidmap *disk;
    strtab *paths;
    pent *pe;
    size_t pe_cap;
    pairset memo, pairs;
    ib_oidmap *trees;   /* distinct tree ids, for the count */
    ib_oidmap *blob_ix; /* blob id -> index in blobs */
    binfo *blobs;
    size_t nblobs, blobs_cap;
    char *buf; /* the current path; extended and truncated while recursing */
    size_t bcap;
    int marking; /* walking HEAD's tree: what is seen exists now */
    uint64_t missing;
} walker;

static uint32_t intern(walker *w, size_t len, uint64_t h, uint32_t parent, int is_dir)
{
    uint32_t before = w->paths->n;
    uint32_t id = strtab_get(w->paths, w->buf, len, h, 1);
    if (id == before) {
        if (id >= w->pe_cap) {
            w->pe_cap = w->pe_cap ? w->pe_cap * 2 : 1024;
            w->pe = ib_xrealloc(w->pe, w->pe_cap * sizeof *w->pe);
        }
        memset(&w->pe[id], 0, sizeof w->pe[id]);
        w->pe[id].parent = parent;
        w->pe[id].is_dir = (uint8_t)is_dir;
        w->pe[id].rule = -1;
    }
    return id;
}

static int add_version(walker *w, uint32_t pid, size_t plen, const git_oid *id)
{
    uint64_t bi;
    if (!ib_oidmap_get(w->blob_ix, id, &bi)) {
        size_t len = 0;
        git_object_t type;
        int e = git_odb_read_header(&len, &type, w->odb, id);
        if (e == GIT_ENOTFOUND) {
            /* Partial or damaged clone: report it, count it as empty. */
            w->missing++;
            len = 0;
            git_error_clear();
        } else if (e < 0) {
            char what[GIT_OID_HEXSZ + 32];
            snprintf(what, sizeof what, "reading blob %s", git_oid_tostr_s(id));
            return ib_gf_git_fail(IB_ERR, what);
        }
        if (w->nblobs == w->blobs_cap) {
            w->blobs_cap = w->blobs_cap ? w->blobs_cap * 2 : 4096;
            w->blobs = ib_xrealloc(w->blobs, w->blobs_cap * sizeof *w->blobs);
        }
        binfo *b = &w->blobs[w->nblobs];
        memset(b, 0, sizeof *b);
        b->size = len;
        ib_oidmap_get(w->disk, id, &b->disk); /* 0 when only in an alternate */
        bi = w->nblobs++;
        ib_oidmap_set(w->blob_ix, id, bi);
    }
    binfo *b = &w->blobs[bi];
    pent *p = &w->pe[pid];
    p->versions++;
    p->unpacked += b->size;
    p->packed += b->disk;
    if (w->filter) {
        if (p->rule < 0) p->rule = ib_gf_filter_path_removed(w->filter, w->buf, plen) ? 1 : 0;
        if (p->rule || (w->max_blob && b->size > w->max_blob)) {
            b->removed = 1;
            p->removed++;
        } else {
            b->kept = 1;
        }
    }
    return 0;
}

/* w->buf[0..base) holds the directory's key ("" or "a/b/"), h its hash. */
static int walk_tree(walker *w, const git_oid *tree_id, uint32_t dir, size_t base, uint64_t h)
{
    git_tree *t;
    if (git_tree_lookup(&t, w->repo, tree_id) < 0) {
        char what[GIT_OID_HEXSZ + 32];
        snprintf(what, sizeof what, "reading tree %s", git_oid_tostr_s(tree_id));
        return ib_gf_git_fail(IB_ERR, what);
    }
    ib_oidmap_set(w->trees, tree_id, 1);
    size_t n = git_tree_entrycount(t);
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        const git_tree_entry *e = git_tree_entry_byindex(t, i);
        git_object_t type = git_tree_entry_type(e);
        if (type != GIT_OBJECT_TREE && type != GIT_OBJECT_BLOB) continue; /* submodule commits */
        const char *name = git_tree_entry_name(e);
        size_t nl = strlen(name), plen = base + nl;
        if (plen + 2 > w->bcap) {
            while (plen + 2 > w->bcap) w->bcap *= 2;
            w->buf = ib_xrealloc(w->buf, w->bcap);
        }
        memcpy(w->buf + base, name, nl);
        uint64_t ph = fnv(h, name, nl);
        const git_oid *id = git_tree_entry_id(e);
        if (type == GIT_OBJECT_TREE) {
            w->buf[plen] = '/';
            w->buf[plen + 1] = 0;
            ph = fnv(ph, "/", 1);
            uint32_t sub = intern(w, plen + 1, ph, dir, 1);
            if (w->marking) w->pe[sub].present = 1;
            if (pairset_add(&w->memo, id, sub)) rc = walk_tree(w, id, sub, plen + 1, ph);
        } else {
            w->buf[plen] = 0;
            uint32_t pid = intern(w, plen, ph, dir, 0);
            if (w->marking) w->pe[pid].present = 1;
            if (pairset_add(&w->pairs, id, pid)) rc = add_version(w, pid, plen, id);
        }
    }
    git_tree_free(t);
    return rc;
}

static int walk_commit(walker *w, const git_oid *cid)
{
    git_commit *c;
    if (git_commit_lookup(&c, w->repo, cid) < 0) {
        char what[GIT_OID_HEXSZ + 32];
        snprintf(what, sizeof what, "reading commit %s", git_oid_tostr_s(cid));
        return ib_gf_git_fail(IB_ERR, what);
    }
    git_oid tree;
    git_oid_cpy(&tree, git_commit_tree_id(c));
    git_commit_free(c);
    if (!pairset_add(&w->memo, &tree, 0)) return 0;
    w->buf[0] = 0;
    return walk_tree(w, &tree, 0, 0, FNV0);
}

/* Pushes every ref that peels to a commit. Tags of trees or blobs, and refs
 * that cannot be resolved, have no history to walk. */
static int push_refs(git_revwalk *walk, git_repository *repo)
{
    git_reference_iterator *it;
    if (git_reference_iterator_new(&it, repo) < 0) return ib_gf_git_fail(IB_ERR, "listing refs");
    git_reference *ref;
    int e, rc = 0;
    while (!rc && (e = git_reference_next(&ref, it)) == 0) {
        git_object *obj;
        if (git_reference_peel(&obj, ref, GIT_OBJECT_COMMIT) == 0) {
            if (git_revwalk_push(walk, git_object_id(obj)) < 0) rc = ib_gf_git_fail(IB_ERR, git_reference_name(ref));
            git_object_free(obj);
        } else {
            git_error_clear();
        }
        git_reference_free(ref);
    }
    if (!rc && e != GIT_ITEROVER) rc = ib_gf_git_fail(IB_ERR, "listing refs");
    git_reference_iterator_free(it);
    return rc;
}

/* Python's os.path.splitext on the basename, as filter-repo: leading dots
 * make a hidden file, not an extension (".gitignore" has none). */
static const char *extension(const char *path, size_t len, size_t *ext_len)
{
    const char *base = memrchr(path, '/', len);
    base = base ? base + 1 : path;
    const char *end = path + len;
    const char *dot = memrchr(base, '.', (size_t)(end - base));
    if (!dot) return NULL;
    for (const char *q = base; q < dot; q++)
        if (*q != '.') {
            *ext_len = (size_t)(end - dot);
            return dot;
        }
    return NULL;
}

static int cmp_row(const void *a, const void *b)
{
    const row *x = a, *y = b;
    if (x->packed != y->packed) return x->packed > y->packed ? -1 : 1;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->name, y->name, n);
    if (c) return c;
    return x->len < y->len ? -1 : x->len > y->len;
}

/* Rolls files up into their directories and extensions, and builds the sorted tables. */
static void aggregate(ib_gf_analysis *a, walker *w)
{
    strtab *t = &a->paths;
    uint32_t n = t->n;
    row *ext = NULL;
    size_t ext_cap = 0;
    for (uint32_t id = 0; id < n; id++) {
        pent *p = &w->pe[id];
        if (p->is_dir || !p->versions) continue;
        for (uint32_t d = p->parent; d != NONE && d != 0; d = w->pe[d].parent) {
            w->pe[d].unpacked += p->unpacked;
            w->pe[d].packed += p->packed;
            w->pe[d].versions += p->versions;
        }
        size_t el = 0;
        const char *e = extension(strtab_name(t, id), t->len[id], &el);
        if (!e) {
            e = "<no extension>";
            el = strlen(e);
        }
        uint32_t x = strtab_get(&a->exts, e, el, fnv(FNV0, e, el), 1);
        if (x >= ext_cap) {
            size_t old = ext_cap;
            ext_cap = ext_cap ? ext_cap * 2 : 64;
            ext = ib_xrealloc(ext, ext_cap * sizeof *ext);
            memset(ext + old, 0, (ext_cap - old) * sizeof *ext);
        }
        ext[x].unpacked += p->unpacked;
        ext[x].packed += p->packed;
        ext[x].versions += p->versions;
        ext[x].present |= p->present;
        if (p->removed) a->removed_paths++;
    }
    /* The ext table is complete: names no longer move. */
    a->nexts = a->exts.n;
    a->extrows = ext ? ext : ib_xcalloc(1, sizeof *ext);
    for (size_t x = 0; x < a->nexts; x++) {
        a->extrows[x].name = strtab_name(&a->exts, (uint32_t)x);
        a->extrows[x].len = a->exts.len[x];
    }
    a->dirs = ib_xmalloc((n ? n : 1) * sizeof *a->dirs);
    a->files = ib_xmalloc((n ? n : 1) * sizeof *a->files);
    for (uint32_t id = 1; id < n; id++) {
        pent *p = &w->pe[id];
        if (!p->versions) continue; /* directories holding only submodules */
        row r = {strtab_name(t, id), t->len[id], p->unpacked, p->packed, p->versions, p->present};
        if (p->is_dir) {
            r.len--; /* the trailing '/' */
            a->dirs[a->ndirs++] = r;
        } else {
            a->files[a->nfiles++] = r;
        }
    }
    qsort(a->dirs, a->ndirs, sizeof *a->dirs, cmp_row);
    qsort(a->files, a->nfiles, sizeof *a->files, cmp_row);
    qsort(a->extrows, a->nexts, sizeof *a->extrows, cmp_row);
}

static void walker_free(walker *w)
{
    if (w->odb) git_odb_free(w->odb);
    ib_oidmap_free(w->disk);
    free(w->pe);
    free(w->memo.s);
    free(w->pairs.s);
    ib_oidmap_free(w->trees);
    ib_oidmap_free(w->blob_ix);
    free(w->blobs);
    free(w->buf);
}

int ib_gf_analyze(ib_gf_analysis **out, git_repository *repo, const ib_gf_filter *filter)
{
    *out = NULL;
    ib_gf_analysis *a = ib_xcalloc(1, sizeof *a);
    strtab_init(&a->paths);
    strtab_init(&a->exts);
    walker w = {0};
    w.repo = repo;
    w.paths = &a->paths;
    if (filter && ib_gf_filter_has_rules(filter)) {
        w.filter = filter;
        w.max_blob = ib_gf_filter_max_blob(filter);
        a->filtered = 1;
    }
    pairset_init(&w.memo);
    pairset_init(&w.pairs);
    w.trees = ib_oidmap_new();
    w.blob_ix = ib_oidmap_new();
    w.bcap = 4096;
    w.buf = ib_xmalloc(w.bcap);
    w.buf[0] = 0;
    intern(&w, 0, FNV0, NONE, 1); /* the root directory is id 0 */
    git_revwalk *walk = NULL;
    git_object *head = NULL;

    int rc = ib_gf_disk_sizes(&w.disk, repo);
    if (rc) goto out;
    if (git_repository_odb(&w.odb, repo) < 0) {
        rc = ib_gf_git_fail(IB_ERR, "opening the object database");
        goto out;
    }
    if (git_revwalk_new(&walk, repo) < 0) {
        rc = ib_gf_git_fail(IB_ERR, "starting the history walk");
        goto out;
    }
    /* HEAD first, with the memo still empty, so its whole tree is seen and
     * marks what is present now; the revwalk meets it again at no cost. */
    if (git_revparse_single(&head, repo, "HEAD^{commit}") == 0) {
        a->head_known = 1;
        w.marking = 1;
        rc = walk_commit(&w, git_object_id(head));
        w.marking = 0;
        if (!rc && git_revwalk_push(walk, git_object_id(head)) < 0) rc = ib_gf_git_fail(IB_ERR, "HEAD");
        if (rc) goto out;
    } else {
        git_error_clear(); /* unborn HEAD: nothing is "present" */
    }
    if ((rc = push_refs(walk, repo))) goto out;
    git_oid cid;
    int e;
    while ((e = git_revwalk_next(&cid, walk)) == 0) {
        a->commits++;
        if ((rc = walk_commit(&w, &cid))) goto out;
    }
    if (e != GIT_ITEROVER) {
        rc = ib_gf_git_fail(IB_ERR, "walking history");
        goto out;
    }

    size_t i = 0;
    uint64_t v;
    git_oid oid;
    while (ib_oidmap_iter(w.disk, &i, &oid, &v)) a->disk_total += v;
    a->objects = ib_oidmap_count(w.disk);
    a->trees = ib_oidmap_count(w.trees);
    a->blobs = w.nblobs;
    a->missing = w.missing;
    for (size_t b = 0; b < w.nblobs; b++) {
        a->blob_bytes += w.blobs[b].size;
        if (w.blobs[b].removed && !w.blobs[b].kept) {
            a->dropped_blobs++;
            a->dropped_unpacked += w.blobs[b].size;
            a->dropped_packed += w.blobs[b].disk;
        }
    }
    /* What a full repack after the rewrite would leave: the dropped blobs go.
     * Rewritten commits and trees replace the old ones at about the same size,
     * and a blob stored as a delta against a dropped one may grow, so this is
     * an estimate, not a promise. */
    a->estimate = a->disk_total > a->dropped_packed ? a->disk_total - a->dropped_packed : 0;
    aggregate(a, &w);
out:
    git_object_free(head);
    git_revwalk_free(walk);
    walker_free(&w);
    if (rc) {
        ib_gf_analysis_free(a);
        return rc;
    }
    *out = a;
    return 0;
}

void ib_gf_analysis_free(ib_gf_analysis *a)
{
    if (!a) return;
    strtab_free(&a->paths);
    strtab_free(&a->exts);
    free(a->dirs);
    free(a->extrows);
    free(a->files);
    free(a);
}

/* ---- reports ------------------------------------------------------------ */

typedef struct {
    char *p;
    size_t n, cap;
} sbuf;

static void sb_add(sbuf *s, const char *d, size_t n)
{
    if (s->n + n + 1 > s->cap) {
        while (s->n + n + 1 > s->cap) s->cap = s->cap ? s->cap * 2 : 4096;
        s->p = ib_xrealloc(s->p, s->cap);
    }
    memcpy(s->p + s->n, d, n);
    s->n += n;
    s->p[s->n] = 0;
}

static void sb_printf(sbuf *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *s, const char *fmt, ...)
{
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof small) {
        sb_add(s, small, (size_t)n);
        return;
    }
    char *big = ib_xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb_add(s, big, (size_t)n);
    free(big);
}

/* Names go into the tables raw unless a control character would break the
 * one-entry-a-line format; then C-quoted, as git quotes such paths. */
static void sb_name(sbuf *s, const char *name, size_t len)
{
    int quote = 0;
    for (size_t i = 0; i < len && !quote; i++) quote = (unsigned char)name[i] < 0x20 || name[i] == 0x7f;
    if (!quote) {
        sb_add(s, name, len);
        return;
    }
    sb_add(s, "\"", 1);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c == '"' || c == '\\') sb_printf(s, "\\%c", c);
        else if (c == '\n') sb_add(s, "\\n", 2);
        else if (c == '\t') sb_add(s, "\\t", 2);
        else if (c < 0x20 || c == 0x7f) sb_printf(s, "\\%03o", c);
        else sb_add(s, (const char *)&c, 1);
    }
    sb_add(s, "\"", 1);
}

static const char *state(const ib_gf_analysis *a, const row *r)
{
    if (!a->head_known) return "-";
    return r->present ? "present" : "deleted";
}

static void table(sbuf *s, const ib_gf_analysis *a, const char *title, const char *what, const row *r, size_t n)
{
    sb_printf(s, "=== All %s by reverse size ===\n", title);
    sb_printf(s, "Format: unpacked size, packed size, versions, present|deleted, %s name\n", what);
    for (size_t i = 0; i < n; i++) {
        sb_printf(s, "%13llu %13llu %9llu %-7s ", (unsigned long long)r[i].unpacked,
                  (unsigned long long)r[i].packed, (unsigned long long)r[i].versions, state(a, &r[i]));
        sb_name(s, r[i].name, r[i].len);
        sb_add(s, "\n", 1);
    }
}

static int is_cont(unsigned char c) { return (c & 0xc0) == 0x80; }

/* Appends name in at most width columns (one per UTF-8 character), cutting
 * the middle out with "…" so both the top directory and the file name stay. */
static void sb_fit(sbuf *s, const char *name, size_t len, size_t width)
{
    size_t cols = 0;
    for (size_t i = 0; i < len; i++) cols += !is_cont((unsigned char)name[i]);
    size_t keep_head = cols, keep_tail = 0;
    if (cols > width) {
        keep_head = (width - 1) / 2;
        keep_tail = width - 1 - keep_head;
    }
    size_t c = 0, i = 0;
    for (; i < len; i++) {
        unsigned char ch = (unsigned char)name[i];
        if (!is_cont(ch) && c++ == keep_head) break;
        char out = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
        sb_add(s, &out, 1);
    }
    if (cols <= width) return;
    sb_add(s, "\xe2\x80\xa6", 3);
    /* Skip to the first character of the tail. */
    size_t skip = cols - keep_tail;
    c = 0;
    for (i = 0; i < len; i++) {
        if (!is_cont((unsigned char)name[i]) && c++ == skip) break;
    }
    for (; i < len; i++) {
        unsigned char ch = (unsigned char)name[i];
        char out = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
        sb_add(s, &out, 1);
    }
}

static void top_table(sbuf *s, const ib_gf_analysis *a, const char *title, const row *r, size_t n, int top)
{
    sb_printf(s, "\n%s (%zu%s):\n", title, n, (size_t)top < n ? ", biggest first" : "");
    if (!n) return;
    sb_printf(s, "  %9s  %9s  %8s  %-7s  %s\n", "packed", "unpacked", "versions", "state", "name");
    for (size_t i = 0; i < n && i < (size_t)top; i++) {
        char pk[32], up[32], pre[128];
        ib_human_size(pk, r[i].packed);
        ib_human_size(up, r[i].unpacked);
        int pl = snprintf(pre, sizeof pre, "  %9s  %9s  %8llu  %-7s  ", pk, up, (unsigned long long)r[i].versions,
                          state(a, &r[i]));
        if (pl < 0) pl = 0;
        if ((size_t)pl >= sizeof pre) pl = sizeof pre - 1;
        sb_add(s, pre, (size_t)pl);
        size_t width = (size_t)pl + 10 < SUMMARY_COLS ? SUMMARY_COLS - (size_t)pl : 10;
        sb_fit(s, r[i].name, r[i].len, width);
        sb_add(s, "\n", 1);
    }
}

char *ib_gf_analysis_summary(const ib_gf_analysis *a, int top)
{
    sbuf s = {0};
    char h1[32], h2[32];
    if (top < 0) top = 0;
    ib_human_size(h1, a->blob_bytes);
    sb_printf(&s, "History: %llu commits, %llu trees, %llu blobs (%s of file contents)\n",
              (unsigned long long)a->commits, (unsigned long long)a->trees, (unsigned long long)a->blobs, h1);
    ib_human_size(h1, a->disk_total);
    sb_printf(&s, "Objects on disk: %s in %llu objects\n", h1, (unsigned long long)a->objects);
    if (a->missing)
        sb_printf(&s, "Note: %llu blobs are missing from the object store (partial clone?); counted as empty\n",
                  (unsigned long long)a->missing);
    if (!a->head_known) sb_printf(&s, "Note: HEAD has no commit, so nothing is marked present\n");
    top_table(&s, a, "Directories", a->dirs, a->ndirs, top);
    top_table(&s, a, "Extensions", a->extrows, a->nexts, top);
    top_table(&s, a, "Paths", a->files, a->nfiles, top);
    if (a->filtered) {
        ib_human_size(h1, a->dropped_packed);
        ib_human_size(h2, a->dropped_unpacked);
        sb_printf(&s, "\nWith the filter:\n  would remove: %llu paths, %llu blobs, %s packed (%s unpacked)\n",
                  (unsigned long long)a->removed_paths, (unsigned long long)a->dropped_blobs, h1, h2);
        ib_human_size(h1, a->estimate);
        ib_human_size(h2, a->disk_total);
        sb_printf(&s, "  estimated .git objects after slim: %s (now %s)\n", h1, h2);
        sb_printf(&s, "  (after a full repack; blobs stored as deltas of removed ones may grow)\n");
    }
    return s.p;
}

int ib_gf_analysis_write(const ib_gf_analysis *a, const char *dir)
{
    int rc = ib_fs_mkdir_p(dir, 0755);
    if (rc) return rc;
    sbuf s = {0};
    struct {
        const char *file, *title, *what;
        const row *r;
        size_t n;
    } t[] = {
        {"directories.txt", "directories", "directory", a->dirs, a->ndirs},
        {"extensions.txt", "extensions", "extension", a->extrows, a->nexts},
        {"paths.txt", "paths", "path", a->files, a->nfiles},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0] && !rc; i++) {
        s.n = 0;
        table(&s, a, t[i].title, t[i].what, t[i].r, t[i].n);
        char *path = ib_fs_join(dir, t[i].file);
        rc = ib_fs_write_atomic(path, s.p, s.n, 0644);
        free(path);
    }
    free(s.p);
    if (rc) return rc;
    char *sum = ib_gf_analysis_summary(a, 20);
    char *path = ib_fs_join(dir, "summary.txt");
    rc = ib_fs_write_atomic(path, sum, strlen(sum), 0644);
    free(path);
    free(sum);
    return rc;
}
