#include "gitfilter/rewrite.h"
#include "gitfilter/gitutil.h"
#include "common/error.h"
#include "common/fs.h"
#include "gitfilter/oidmap.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

/* ---- small growable buffers ------------------------------------------- */

typedef struct {
    char *s;
    size_t len, cap;
} buf;

static void buf_put(buf *b, const void *p, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2 + 64;
        b->s = ib_xrealloc(b->s, b->cap);
    }
    memcpy(b->s + b->len, p, n);
    b->len += n;
    b->s[b->len] = '\0';
}
static void buf_puts(buf *b, const char *s) { buf_put(b, s, strlen(s)); }
static void buf_oid(buf *b, const git_oid *id)
{
    char hex[GIT_OID_HEXSZ + 1];
    git_oid_tostr(hex, sizeof hex, id);
    buf_put(b, hex, GIT_OID_HEXSZ);
}

typedef struct {
    int *v;
    size_t n, cap;
} ivec;

static void ivec_push(ivec *a, int x)
{
    if (a->n == a->cap) {
        a->cap = a->cap ? a->cap * 2 : 64;
        a->v = ib_xrealloc(a->v, a->cap * sizeof *a->v);
    }
    a->v[a->n++] = x;
}


int ib_gf_parse_prune(int *out, const char *flag, const char *value)
{
    if (!strcmp(value, "auto")) *out = IB_GF_PRUNE_AUTO;
    else if (!strcmp(value, "always")) *out = IB_GF_PRUNE_ALWAYS;
    else if (!strcmp(value, "never")) *out = IB_GF_PRUNE_NEVER;
    else return ib_error_set(IB_EUSAGE, "%s '%s': expected auto, always or never", flag, value);
    return 0;
}

/* ---- the rewrite state -------------------------------------------------- */

enum { T_SAME = 0, T_NEW = 1, T_EMPTY = 2 };

typedef struct {
    git_oid id;
    int state;
} tree_result;

typedef struct {
    git_object_t type;
    char *data;
    size_t len;
    git_oid id;
} new_object;

typedef struct {
    char *name;        /* final name (after origin migration) */
    char *orig_name;   /* name it had; equals name unless migrated */
    git_oid old, new;  /* new zero: delete */
    int symbolic;      /* refs/remotes/origin/HEAD: only deleted */
    int drop;          /* a migrated remote ref whose local twin carries on */
} ref_plan;

typedef struct {
    git_oid old_id, new_id; /* new_id: valid when kept */
    git_oid orig_tree, new_tree;
    int to;                 /* kept commit representing this one, -1: none */
    int gen, ogen;          /* generation numbers, for bounded ancestry walks */
    size_t par_off, opar_off;
    int par_n, opar_n;
} commit_info;

struct ib_gf_rewrite {
    git_repository *repo;
    git_odb *odb;
    ib_gf_rewrite_opts o;
    uint64_t max_blob;
    int path_rules;

    ib_oidmap *sizes;     /* blob -> size */
    ib_oidmap *memo_path; /* H(tree, path) -> tree_result index */
    ib_oidmap *memo_tree; /* tree -> tree_result index (subtrees only the size rule can touch) */
    tree_result *tr;
    size_t ntr, captr;

    new_object *obj;
    size_t nobj, capobj;
    ib_oidmap *objmap;

    ib_oidmap *cidx; /* old commit -> index */
    commit_info *c;
    size_t nc, capc;
    ivec par, opar;  /* parent index lists (new graph: kept commits; orig graph) */
    unsigned *seen;  /* ancestry walk stamps */
    unsigned epoch;
    ivec stack;

    ib_oidmap *tagmap; /* old tag -> index into obj (or UINT64_MAX: deleted) */
    ref_plan *refs;
    size_t nrefs;
    git_oid head_new;
    int head_detached;
    git_oid head_old;

    buf path;
    ib_gf_rewrite_stats st;
};

static void add_object(ib_gf_rewrite *w, git_object_t type, char *data, size_t len, git_oid *id_out)
{
    git_oid id;
    git_odb_hash(&id, data, len, type);
    if (id_out) git_oid_cpy(id_out, &id);
    if (ib_oidmap_get(w->objmap, &id, NULL)) {
        free(data);
        return;
    }
    if (w->nobj == w->capobj) {
        w->capobj = w->capobj ? w->capobj * 2 : 256;
        w->obj = ib_xrealloc(w->obj, w->capobj * sizeof *w->obj);
    }
    new_object *o = &w->obj[w->nobj];
    o->type = type;
    o->data = data;
    o->len = len;
    git_oid_cpy(&o->id, &id);
    ib_oidmap_set(w->objmap, &id, w->nobj);
    w->nobj++;
}

static int blob_size(ib_gf_rewrite *w, const git_oid *id, uint64_t *out)
{
    if (ib_oidmap_get(w->sizes, id, out)) return 0;
    size_t len;
    git_object_t type;
    if (git_odb_read_header(&len, &type, w->odb, id) < 0) return ib_gf_git_fail(IB_ECORRUPT, "reading a blob header");
    ib_oidmap_set(w->sizes, id, len);
    *out = len;
    return 0;
}

/* Memo key for a path-dependent subtree: a path filter can treat the same
 * tree differently at two paths, so the path is part of the key. */
static void path_key(git_oid *key, const git_oid *tree, const buf *path)
{
    char stackbuf[512];
    size_t n = GIT_OID_RAWSZ + path->len;
    char *k = n <= sizeof stackbuf ? stackbuf : ib_xmalloc(n);
    memcpy(k, tree->id, GIT_OID_RAWSZ);
    if (path->len) memcpy(k + GIT_OID_RAWSZ, path->s, path->len);
    git_odb_hash(key, k, n, GIT_OBJECT_BLOB);
    if (k != stackbuf) free(k);
}

static size_t add_result(ib_gf_rewrite *w, const git_oid *id, int state)
{
    if (w->ntr == w->captr) {
        w->captr = w->captr ? w->captr * 2 : 1024;
        w->tr = ib_xrealloc(w->tr, w->captr * sizeof *w->tr);
    }
    if (id) git_oid_cpy(&w->tr[w->ntr].id, id);
    else memset(&w->tr[w->ntr].id, 0, sizeof(git_oid));
    w->tr[w->ntr].state = state;
    return w->ntr++;
}

/* Trees under directories the filters keep are reused by id, unread: that is
 * what makes the rewrite cost grow with what changes. filter-repo rewrites
 * every tree through fast-import, which also normalises legacy modes
 * (100664, from git before 2007) everywhere; here only the trees the rewrite
 * writes anyway are normalised. Reading every tree to normalise the rest
 * cost +18% of a dry run on the bench repo: 1, if that ever matters more. */
#define CANON_ALL 0
static int rewrite_tree(ib_gf_rewrite *w, const git_oid *tree, git_oid *out, int *state)
{
    buf *pb = &w->path;
    int ds = w->path_rules ? ib_gf_filter_dir(w->o.filter, pb->s ? pb->s : "", pb->len) : IB_GF_DIR_KEEP;
    if (ds == IB_GF_DIR_DROP) {
        *state = T_EMPTY;
        return 0;
    }
    if (ds == IB_GF_DIR_KEEP && !w->max_blob && !CANON_ALL) {
        git_oid_cpy(out, tree);
        *state = T_SAME;
        return 0;
    }
    git_oid key;
    ib_oidmap *memo = ds == IB_GF_DIR_KEEP ? w->memo_tree : w->memo_path;
    if (ds == IB_GF_DIR_KEEP) git_oid_cpy(&key, tree);
    else path_key(&key, tree, pb);
    uint64_t hit;
    if (ib_oidmap_get(memo, &key, &hit)) {
        *state = w->tr[hit].state;
        git_oid_cpy(out, *state == T_SAME ? tree : &w->tr[hit].id);
        return 0;
    }

    git_tree *t;
    if (git_tree_lookup(&t, w->repo, tree) < 0) return ib_gf_git_fail(IB_ECORRUPT, "reading a tree");
    size_t n = git_tree_entrycount(t);
    /* per entry: 0 keep, 1 removed, 2 replaced by ids[i] */
    unsigned char *what = ib_xcalloc(n ? n : 1, 1);
    git_oid *ids = ib_xmalloc((n ? n : 1) * sizeof *ids);
    size_t base = pb->len;
    int changed = 0, rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const git_tree_entry *e = git_tree_entry_byindex(t, i);
        const char *name = git_tree_entry_name(e);
        if (base) buf_put(pb, "/", 1);
        buf_puts(pb, name);
        git_object_t type = git_tree_entry_type(e);
        if (type == GIT_OBJECT_TREE) {
            int st;
            rc = rewrite_tree(w, git_tree_entry_id(e), &ids[i], &st);
            if (st == T_EMPTY) what[i] = 1;
            else if (st == T_NEW) what[i] = 2;
        } else {
            int gone = ds != IB_GF_DIR_KEEP && ib_gf_filter_path_removed(w->o.filter, pb->s, pb->len);
            if (!gone && w->max_blob && type == GIT_OBJECT_BLOB) {
                uint64_t sz;
                rc = blob_size(w, git_tree_entry_id(e), &sz);
                gone = rc == 0 && sz > w->max_blob;
            }
            if (gone) what[i] = 1;
        }
        if (what[i]) changed = 1;
        /* a legacy mode (100664): the tree is written again with canonical ones */
        if (git_tree_entry_filemode_raw(e) != git_tree_entry_filemode(e)) changed = 1;
        pb->len = base;
        if (pb->s) pb->s[base] = '\0';
    }
    if (rc == 0) {
        int st = T_SAME;
        git_oid nid;
        if (changed) {
            buf body = {0};
            size_t kept = 0;
            for (size_t i = 0; i < n; i++) {
                if (what[i] == 1) continue;
                const git_tree_entry *e = git_tree_entry_byindex(t, i);
                char mode[16];
                /* canonical modes (100664 -> 100644), as fast-import writes them for filter-repo */
                int ml = snprintf(mode, sizeof mode, "%o ", (unsigned)git_tree_entry_filemode(e));
                buf_put(&body, mode, (size_t)ml);
                buf_put(&body, git_tree_entry_name(e), strlen(git_tree_entry_name(e)) + 1);
                buf_put(&body, (what[i] == 2 ? &ids[i] : git_tree_entry_id(e))->id, GIT_OID_RAWSZ);
                kept++;
            }
            if (kept == 0) {
                free(body.s);
                st = T_EMPTY;
            } else {
                add_object(w, GIT_OBJECT_TREE, body.s, body.len, &nid);
                w->st.trees++;
                st = T_NEW;
            }
        }
        size_t ri = add_result(w, st == T_NEW ? &nid : NULL, st);
        ib_oidmap_set(memo, &key, ri);
        *state = st;
        git_oid_cpy(out, st == T_NEW ? &nid : tree);
    }
    free(what);
    free(ids);
    git_tree_free(t);
    return rc;
}

/* ---- ancestry (filter-repo's AncestryGraph, over our indexes) ---------- */

static int is_ancestor(ib_gf_rewrite *w, int a, int b, int orig)
{
    if (a == b) return 1;
    if (++w->epoch == 0) {
        memset(w->seen, 0, w->nc * sizeof *w->seen);
        w->epoch = 1;
    }
    int agen = orig ? w->c[a].ogen : w->c[a].gen;
    w->stack.n = 0;
    ivec_push(&w->stack, b);
    while (w->stack.n) {
        int x = w->stack.v[--w->stack.n];
        if (x == a) return 1;
        if (w->seen[x] == w->epoch) continue;
        w->seen[x] = w->epoch;
        const commit_info *ci = &w->c[x];
        if ((orig ? ci->ogen : ci->gen) <= agen) continue;
        const ivec *pv = orig ? &w->opar : &w->par;
        size_t off = orig ? ci->opar_off : ci->par_off;
        int np = orig ? ci->opar_n : ci->par_n;
        for (int k = 0; k < np; k++) ivec_push(&w->stack, pv->v[off + (size_t)k]);
    }
    return 0;
}

/* ---- commits ------------------------------------------------------------ */

static void commit_body(buf *b, git_commit *c, const git_oid *tree, const git_oid *parents, int np)
{
    buf_puts(b, "tree ");
    buf_oid(b, tree);
    buf_puts(b, "\n");
    for (int i = 0; i < np; i++) {
        buf_puts(b, "parent ");
        buf_oid(b, &parents[i]);
        buf_puts(b, "\n");
    }
    /* Everything else of the header is kept byte for byte (author, committer,
     * encoding), except signatures: they cannot survive a rewrite, and
     * filter-repo drops them too. */
    const char *h = git_commit_raw_header(c);
    int skip = 0;
    while (h && *h) {
        const char *nl = strchr(h, '\n');
        size_t len = nl ? (size_t)(nl - h) : strlen(h);
        if (*h == ' ') {
            /* continuation of the previous header line */
        } else {
            skip = !strncmp(h, "tree ", 5) || !strncmp(h, "parent ", 7) || !strncmp(h, "gpgsig ", 7) ||
                   !strncmp(h, "gpgsig-sha256 ", 14) || !strncmp(h, "mergetag ", 9);
        }
        if (!skip) {
            buf_put(b, h, len);
            buf_puts(b, "\n");
        }
        h += len + (nl ? 1 : 0);
    }
    buf_puts(b, "\n");
    const char *msg = git_commit_message_raw(c);
    buf_puts(b, msg ? msg : "");
}

static const git_oid *empty_tree(ib_gf_rewrite *w)
{
    git_oid id;
    add_object(w, GIT_OBJECT_TREE, ib_xcalloc(1, 1), 0, &id);
    uint64_t i = 0;
    ib_oidmap_get(w->objmap, &id, &i);
    return &w->obj[i].id;
}

static int process_commit(ib_gf_rewrite *w, const git_oid *id)
{
    git_commit *c;
    if (git_commit_lookup(&c, w->repo, id) < 0) return ib_gf_git_fail(IB_ECORRUPT, "reading a commit");
    if (w->nc == w->capc) {
        w->capc = w->capc ? w->capc * 2 : 1024;
        w->c = ib_xrealloc(w->c, w->capc * sizeof *w->c);
        w->seen = ib_xrealloc(w->seen, w->capc * sizeof *w->seen);
    }
    int me = (int)w->nc++;
    w->seen[me] = 0;
    commit_info *ci = &w->c[me];
    memset(ci, 0, sizeof *ci);
    git_oid_cpy(&ci->old_id, id);
    git_oid_cpy(&ci->orig_tree, git_commit_tree_id(c));
    ib_oidmap_set(w->cidx, id, (uint64_t)me);

    int nop = (int)git_commit_parentcount(c);
    int op[nop > 0 ? nop : 1];
    ci->opar_off = w->opar.n;
    ci->opar_n = nop;
    ci->ogen = 1;
    for (int k = 0; k < nop; k++) {
        uint64_t pi;
        if (!ib_oidmap_get(w->cidx, git_commit_parent_id(c, (unsigned)k), &pi)) {
            git_commit_free(c);
            return ib_error_set(IB_ECORRUPT, "commit %s: parent not walked before it (shallow clone?)",
                                git_oid_tostr_s(id));
        }
        op[k] = (int)pi;
        ivec_push(&w->opar, op[k]);
        if (w->c[op[k]].ogen + 1 > ci->ogen) ci->ogen = w->c[op[k]].ogen + 1;
    }

    /* new tree */
    int st;
    w->path.len = 0;
    if (w->path.s) w->path.s[0] = '\0';
    int rc = rewrite_tree(w, &ci->orig_tree, &ci->new_tree, &st);
    if (rc < 0) {
        git_commit_free(c);
        return rc;
    }
    ci = &w->c[me];
    if (st == T_EMPTY) git_oid_cpy(&ci->new_tree, empty_tree(w));
    static const git_oid empty_id = {{0x4b, 0x82, 0x5d, 0xc6, 0x42, 0xcb, 0x6e, 0xb9, 0xa0, 0x60,
                                      0xe5, 0x4b, 0xf8, 0xd6, 0x92, 0x88, 0xfb, 0xee, 0x49, 0x04}};
    /* fast-export's view: a commit "had file changes" when it differs from
     * its first parent (a root: when its tree is not empty) */
    int had_changes = nop == 0 ? !git_oid_equal(&ci->orig_tree, &empty_id)
                               : !git_oid_equal(&ci->orig_tree, &w->c[op[0]].orig_tree);

    /* Translate parents; filter-repo's _trim_extra_parents. */
    int always_deg = w->o.prune_degenerate == IB_GF_PRUNE_ALWAYS;
    int P[nop > 0 ? nop : 1], O[nop > 0 ? nop : 1], R[nop > 0 ? nop : 1], np = 0;
    for (int k = 0; k < nop; k++) {
        int t = w->c[op[k]].to;
        if (t < 0) continue;
        P[np] = t;
        O[np] = op[k];
        R[np] = w->c[op[k]].to != op[k] || always_deg;
        np++;
    }
    int copy[nop > 0 ? nop : 1], ncopy = np; /* parents_copy */
    memcpy(copy, P, sizeof(int) * (size_t)np);
    int new1st = -1;
    int *fin = P, nfin = np;
    if (np >= 2 && w->o.prune_degenerate != IB_GF_PRUNE_NEVER) {
        int uP[np], uO[np], uR[np], nu = 0;
        for (int k = 0; k < np; k++) {
            int dup = 0;
            for (int j = 0; j < k; j++)
                if (P[j] == P[k]) dup = 1;
            if (!dup || !R[k]) {
                uP[nu] = P[k];
                uO[nu] = O[k];
                uR[nu] = R[k];
                nu++;
            }
        }
        if (nu < 2) {
            fin = copy;
            nfin = ncopy;
            new1st = uP[0];
        } else {
            int rm[nu];
            memset(rm, 0, sizeof rm);
            for (int cur = 0; cur < nu; cur++) {
                if (!uR[cur]) continue;
                for (int oth = 0; oth < nu; oth++) {
                    if (cur == oth) continue;
                    if (!is_ancestor(w, uP[cur], uP[oth], 0)) continue;
                    if (!always_deg && is_ancestor(w, uO[cur], uO[oth], 1)) continue;
                    rm[cur] = 1;
                    break;
                }
            }
            int nk = 0;
            for (int k = 0; k < nu; k++)
                if (!rm[k]) {
                    P[nk] = uP[k];
                    nk++;
                }
            if (nk < 2) {
                fin = copy;
                nfin = ncopy;
                new1st = P[0];
            } else {
                fin = P;
                nfin = nk;
            }
        }
    }

    /* filter-repo's _prunable, on trees: "empty" = same tree as the parent it
     * would be compared with. */
    ci = &w->c[me];
    int prune = 0;
    if (w->o.prune_empty != IB_GF_PRUNE_NEVER) {
        int always = w->o.prune_empty == IB_GF_PRUNE_ALWAYS;
        if (nfin >= 2 && new1st < 0) {
            prune = 0;
        } else if (nfin >= 2) {
            prune = git_oid_equal(&ci->new_tree, &w->c[new1st].new_tree);
        } else {
            int empty_now = nfin == 0 ? git_oid_equal(&ci->new_tree, &empty_id)
                                      : git_oid_equal(&ci->new_tree, &w->c[fin[0]].new_tree);
            if (!had_changes && !always) {
                int parents_pruned = nfin < nop || (nop == 1 && w->c[op[0]].to != op[0]);
                prune = empty_now && parents_pruned;
            } else {
                prune = empty_now;
            }
        }
    }

    if (prune) {
        ci->to = new1st >= 0 ? new1st : (nfin > 0 ? fin[0] : -1);
        w->st.pruned++;
    } else {
        /* Duplicate parents stay when --prune-degenerate never keeps them:
         * fast-import writes them too, and the ids must match filter-repo's. */
        git_oid pids[nfin > 0 ? nfin : 1];
        int npid = 0;
        ci->par_off = w->par.n;
        ci->gen = 1;
        for (int k = 0; k < nfin; k++) {
            git_oid_cpy(&pids[npid++], &w->c[fin[k]].new_id);
            ivec_push(&w->par, fin[k]);
            if (w->c[fin[k]].gen + 1 > ci->gen) ci->gen = w->c[fin[k]].gen + 1;
        }
        ci->par_n = npid;
        buf b = {0};
        commit_body(&b, c, &ci->new_tree, pids, npid);
        git_oid nid;
        add_object(w, GIT_OBJECT_COMMIT, b.s, b.len, &nid);
        ci = &w->c[me];
        git_oid_cpy(&ci->new_id, &nid);
        ci->to = me;
        w->st.kept++;
        if (!git_oid_equal(&nid, id)) w->st.changed++;
    }
    git_commit_free(c);
    return 0;
}

/* ---- tags and refs ------------------------------------------------------ */

static const char *const sig_markers[] = {"-----BEGIN PGP SIGNATURE-----", "-----BEGIN SSH SIGNATURE-----",
                                          "-----BEGIN SIGNED MESSAGE-----"};

/* new id of the object old points at after the rewrite; zero = gone */
static int map_object(ib_gf_rewrite *w, const git_oid *old, git_oid *out, int depth);

static int map_tag(ib_gf_rewrite *w, const git_oid *old, git_oid *out, int depth)
{
    uint64_t v;
    if (ib_oidmap_get(w->tagmap, old, &v)) {
        if (v == UINT64_MAX) memset(out, 0, sizeof *out);
        else git_oid_cpy(out, &w->obj[v].id);
        return 0;
    }
    git_odb_object *raw;
    if (git_odb_read(&raw, w->odb, old) < 0) return ib_gf_git_fail(IB_ECORRUPT, "reading a tag");
    const char *d = git_odb_object_data(raw);
    size_t len = git_odb_object_size(raw);
    git_oid target, nt;
    if (len < 7 + GIT_OID_HEXSZ + 1 || strncmp(d, "object ", 7) || git_oid_fromstrn(&target, d + 7, GIT_OID_HEXSZ) < 0) {
        git_odb_object_free(raw);
        return ib_error_set(IB_ECORRUPT, "tag %s: malformed", git_oid_tostr_s(old));
    }
    int rc = map_object(w, &target, &nt, depth + 1);
    if (rc < 0 || git_oid_is_zero(&nt)) {
        if (rc == 0) {
            ib_oidmap_set(w->tagmap, old, UINT64_MAX);
            memset(out, 0, sizeof *out);
        }
        git_odb_object_free(raw);
        return rc;
    }
    if (git_oid_equal(&nt, &target)) {
        git_oid_cpy(out, old); /* untouched, signature and all */
        git_odb_object_free(raw);
        return 0;
    }
    buf b = {0};
    buf_puts(&b, "object ");
    buf_oid(&b, &nt);
    const char *rest = d + 7 + GIT_OID_HEXSZ;
    size_t rlen = len - 7 - GIT_OID_HEXSZ;
    /* drop a signature appended to the message: it signed the old object */
    const char *hdr_end = memmem(rest, rlen, "\n\n", 2);
    if (hdr_end) {
        for (size_t k = 0; k < sizeof sig_markers / sizeof *sig_markers; k++) {
            size_t ml = strlen(sig_markers[k]);
            for (const char *p = hdr_end + 1; p && p < rest + rlen;) {
                if ((size_t)(rest + rlen - p) >= ml && !memcmp(p, sig_markers[k], ml) && p[-1] == '\n') {
                    rlen = (size_t)(p - rest);
                    break;
                }
                p = memchr(p, '\n', (size_t)(rest + rlen - p));
                if (p) p++;
            }
        }
    }
    buf_put(&b, rest, rlen);
    git_odb_object_free(raw);
    add_object(w, GIT_OBJECT_TAG, b.s, b.len, out);
    uint64_t idx = 0;
    ib_oidmap_get(w->objmap, out, &idx);
    ib_oidmap_set(w->tagmap, old, idx);
    w->st.tags++;
    return 0;
}

static int map_object(ib_gf_rewrite *w, const git_oid *old, git_oid *out, int depth)
{
    if (depth > 32) return ib_error_set(IB_ECORRUPT, "tag chain too deep at %s", git_oid_tostr_s(old));
    uint64_t ci;
    if (ib_oidmap_get(w->cidx, old, &ci)) {
        int t = w->c[ci].to;
        if (t < 0) memset(out, 0, sizeof *out);
        else git_oid_cpy(out, &w->c[t].new_id);
        return 0;
    }
    size_t len;
    git_object_t type;
    if (git_odb_read_header(&len, &type, w->odb, old) < 0) return ib_gf_git_fail(IB_ECORRUPT, "reading a ref target");
    if (type == GIT_OBJECT_TAG) return map_tag(w, old, out, depth);
    git_oid_cpy(out, old); /* trees and blobs pointed at directly are left alone */
    return 0;
}

static int push_tip(ib_gf_rewrite *w, git_revwalk *walk, const git_oid *id)
{
    git_object *o;
    if (git_object_lookup(&o, w->repo, id, GIT_OBJECT_ANY) < 0) return ib_gf_git_fail(IB_ECORRUPT, "reading a ref");
    git_object *peeled = NULL;
    int rc = 0;
    if (git_object_peel(&peeled, o, GIT_OBJECT_COMMIT) == 0) {
        if (git_revwalk_push(walk, git_object_id(peeled)) < 0) rc = ib_gf_git_fail(IB_ERR, "walking history");
    } else {
        git_error_clear(); /* a tag of a tree or blob: nothing to walk */
    }
    git_object_free(peeled);
    git_object_free(o);
    return rc;
}

static int collect_refs(ib_gf_rewrite *w, git_revwalk *walk)
{
    git_reference_iterator *it;
    if (git_reference_iterator_new(&it, w->repo) < 0) return ib_gf_git_fail(IB_ERR, "listing refs");
    git_reference *r;
    int rc = 0, err;
    size_t cap = 0;
    while (rc == 0 && (err = git_reference_next(&r, it)) == 0) {
        if (w->nrefs == cap) {
            cap = cap ? cap * 2 : 64;
            w->refs = ib_xrealloc(w->refs, cap * sizeof *w->refs);
        }
        ref_plan *p = &w->refs[w->nrefs];
        memset(p, 0, sizeof *p);
        p->orig_name = ib_xstrdup(git_reference_name(r));
        if (git_reference_type(r) == GIT_REFERENCE_SYMBOLIC) {
            p->symbolic = 1;
            w->nrefs++;
        } else {
            git_oid_cpy(&p->old, git_reference_target(r));
            w->nrefs++;
            rc = push_tip(w, walk, &p->old);
        }
        git_reference_free(r);
    }
    git_reference_iterator_free(it);
    if (rc == 0 && err != GIT_ITEROVER) rc = ib_gf_git_fail(IB_ERR, "listing refs");
    if (rc == 0 && git_repository_head_detached(w->repo) == 1) {
        git_reference *h;
        if (git_repository_head(&h, w->repo) == 0) {
            w->head_detached = 1;
            git_oid_cpy(&w->head_old, git_reference_target(h));
            rc = push_tip(w, walk, &w->head_old);
            git_reference_free(h);
        }
    }
    return rc;
}

static int has_ref(const ib_gf_rewrite *w, const char *name)
{
    for (size_t i = 0; i < w->nrefs; i++)
        if (!strcmp(w->refs[i].orig_name, name)) return 1;
    return 0;
}

/* ---- notes --------------------------------------------------------------- */

typedef struct {
    ib_gf_rewrite *w;
    char (*name)[GIT_OID_HEXSZ + 1];
    git_oid *blob;
    size_t n, cap;
    int moved;
} notes_ctx;

static int note_cb(const git_oid *blob, const git_oid *annotated, void *ud)
{
    notes_ctx *x = ud;
    ib_gf_rewrite *w = x->w;
    uint64_t sz, ci;
    if (w->max_blob && blob_size(w, blob, &sz) == 0 && sz > w->max_blob) {
        x->moved = 1; /* the size rule strips note blobs as it strips any blob */
        return 0;
    }
    const git_oid *key = annotated;
    if (ib_oidmap_get(w->cidx, annotated, &ci) && w->c[ci].to == (int)ci &&
        !git_oid_equal(&w->c[ci].new_id, annotated)) {
        key = &w->c[ci].new_id;
        x->moved = 1;
    }
    if (x->n == x->cap) {
        x->cap = x->cap ? x->cap * 2 : 64;
        x->name = ib_xrealloc(x->name, x->cap * sizeof *x->name);
        x->blob = ib_xrealloc(x->blob, x->cap * sizeof *x->blob);
    }
    git_oid_tostr(x->name[x->n], GIT_OID_HEXSZ + 1, key);
    git_oid_cpy(&x->blob[x->n], blob);
    x->n++;
    return 0;
}

static int cmp_note(const void *a, const void *b, void *names)
{
    char(*n)[GIT_OID_HEXSZ + 1] = names;
    return strcmp(n[*(const size_t *)a], n[*(const size_t *)b]);
}

/* Notes are keyed by the id of the commit they annotate. The notes history
 * itself is rewritten like any branch (as filter-repo does); on top of it one
 * commit re-keys every note to its commit's new id, so `git log --notes`
 * keeps showing them. Notes of pruned commits keep their old key. */
static int rekey_notes(ib_gf_rewrite *w, ref_plan *p)
{
    notes_ctx x = {.w = w};
    if (git_note_foreach(w->repo, p->orig_name, note_cb, &x) < 0) {
        git_error_clear(); /* not a notes tree after all: leave it as rewritten */
        free(x.name);
        free(x.blob);
        return 0;
    }
    int rc = 0;
    if (x.moved) {
        size_t *ord = ib_xmalloc((x.n ? x.n : 1) * sizeof *ord);
        for (size_t i = 0; i < x.n; i++) ord[i] = i;
        qsort_r(ord, x.n, sizeof *ord, cmp_note, x.name);
        buf tree = {0};
        for (size_t i = 0; i < x.n; i++) {
            buf_puts(&tree, "100644 ");
            buf_put(&tree, x.name[ord[i]], GIT_OID_HEXSZ + 1);
            buf_put(&tree, x.blob[ord[i]].id, GIT_OID_RAWSZ);
        }
        free(ord);
        git_oid tid;
        add_object(w, GIT_OBJECT_TREE, tree.s ? tree.s : ib_xcalloc(1, 1), tree.len, &tid);
        git_commit *tip;
        if (git_commit_lookup(&tip, w->repo, &p->old) < 0) {
            rc = ib_gf_git_fail(IB_ECORRUPT, "reading a notes commit");
        } else {
            buf b = {0};
            buf_puts(&b, "tree ");
            buf_oid(&b, &tid);
            buf_puts(&b, "\n");
            if (!git_oid_is_zero(&p->new)) {
                buf_puts(&b, "parent ");
                buf_oid(&b, &p->new);
                buf_puts(&b, "\n");
            }
            /* the tip's own identity and time: the result stays a function of the input */
            for (const char *h = git_commit_raw_header(tip); h && *h;) {
                const char *nl = strchr(h, '\n');
                size_t len = nl ? (size_t)(nl - h) + 1 : strlen(h);
                if (!strncmp(h, "author ", 7) || !strncmp(h, "committer ", 10)) buf_put(&b, h, len);
                h += len;
            }
            buf_puts(&b, "\nNotes re-keyed to the rewritten commits (imgbuild slim)\n");
            add_object(w, GIT_OBJECT_COMMIT, b.s, b.len, &p->new);
            git_commit_free(tip);
        }
    }
    free(x.name);
    free(x.blob);
    return rc;
}

static int plan_refs(ib_gf_rewrite *w)
{
    for (size_t i = 0; i < w->nrefs; i++) {
        ref_plan *p = &w->refs[i];
        const char *n = p->orig_name;
        p->name = ib_xstrdup(n);
        if (w->o.migrate_origin && !strncmp(n, "refs/remotes/origin/", 20)) {
            char *local = ib_xasprintf("refs/heads/%s", n + 20);
            if (p->symbolic || !strcmp(n + 20, "HEAD") || has_ref(w, local)) {
                p->drop = 1;
                free(local);
            } else {
                free(p->name);
                p->name = local;
            }
        }
        if (p->symbolic) continue;
        int rc = map_object(w, &p->old, &p->new, 0);
        if (rc == 0 && !strncmp(p->orig_name, "refs/notes/", 11)) rc = rekey_notes(w, p);
        if (rc < 0) return rc;
        if (p->drop || git_oid_is_zero(&p->new)) w->st.refs_deleted += !p->drop;
        else if (!git_oid_equal(&p->old, &p->new) || strcmp(p->name, p->orig_name)) w->st.refs_updated++;
    }
    /* HEAD's new commit, for the checkout */
    git_oid head;
    memset(&w->head_new, 0, sizeof w->head_new);
    if (w->head_detached) {
        return map_object(w, &w->head_old, &w->head_new, 0);
    }
    if (git_reference_name_to_id(&head, w->repo, "HEAD") == 0) {
        git_object *o = NULL, *pc = NULL;
        if (git_object_lookup(&o, w->repo, &head, GIT_OBJECT_ANY) == 0 &&
            git_object_peel(&pc, o, GIT_OBJECT_COMMIT) == 0)
            map_object(w, git_object_id(pc), &w->head_new, 0);
        git_object_free(pc);
        git_object_free(o);
    }
    git_error_clear();
    return 0;
}

int ib_gf_rewrite_compute(ib_gf_rewrite **out, git_repository *repo, const ib_gf_rewrite_opts *opts,
                          ib_gf_rewrite_progress cb, void *ud)
{
    *out = NULL;
    ib_gf_rewrite *w = ib_xcalloc(1, sizeof *w);
    w->repo = repo;
    w->o = *opts;
    w->max_blob = ib_gf_filter_max_blob(opts->filter);
    w->path_rules = ib_gf_filter_has_path_rules(opts->filter);
    w->sizes = ib_oidmap_new();
    w->memo_path = ib_oidmap_new();
    w->memo_tree = ib_oidmap_new();
    w->objmap = ib_oidmap_new();
    w->cidx = ib_oidmap_new();
    w->tagmap = ib_oidmap_new();
    git_revwalk *walk = NULL;
    int rc = 0;
    if (git_repository_odb(&w->odb, repo) < 0) rc = ib_gf_git_fail(IB_ERR, "opening the object database");
    if (rc == 0 && git_revwalk_new(&walk, repo) < 0) rc = ib_gf_git_fail(IB_ERR, "walking history");
    if (rc == 0) {
        /* parents before children; the order among unrelated commits does
         * not change the result */
        git_revwalk_sorting(walk, GIT_SORT_TOPOLOGICAL | GIT_SORT_REVERSE);
        rc = collect_refs(w, walk);
    }
    git_oid id;
    size_t total = 0;
    int err = 0;
    while (rc == 0 && (err = git_revwalk_next(&id, walk)) == 0) {
        rc = process_commit(w, &id);
        if (cb && ++total % 500 == 0) cb(ud, total, 0);
    }
    if (rc == 0 && err != GIT_ITEROVER && err < 0) rc = ib_gf_git_fail(IB_ERR, "walking history");
    w->st.commits = w->nc;
    if (rc == 0) rc = plan_refs(w);
    git_revwalk_free(walk);
    if (rc < 0) {
        ib_gf_rewrite_free(w);
        return rc;
    }
    if (cb) cb(ud, w->nc, w->nc);
    *out = w;
    return 0;
}

const ib_gf_rewrite_stats *ib_gf_rewrite_stats_get(const ib_gf_rewrite *rw) { return &rw->st; }
const git_oid *ib_gf_rewrite_new_head(const ib_gf_rewrite *rw) { return &rw->head_new; }

/* ---- apply -------------------------------------------------------------- */

/* All new objects go into one pack, written here with its .idx (v2) rather
 * than through libgit2's indexer, which inflates and re-hashes every object
 * we just built; one deflate stream is reset between objects instead of
 * being set up 10,000 times. No deltas: the gc after a slim repacks anyway. */
typedef struct {
    git_oid id;
    uint32_t crc;
    uint64_t off;
} pack_entry;

static int cmp_pack_entry(const void *a, const void *b)
{
    return git_oid_cmp(&((const pack_entry *)a)->id, &((const pack_entry *)b)->id);
}

static void put_be32(buf *b, uint32_t v)
{
    unsigned char x[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16), (unsigned char)(v >> 8), (unsigned char)v};
    buf_put(b, x, 4);
}

static int write_file_atomic(const char *path, const buf *b)
{
    return ib_fs_write_atomic(path, b->s, b->len, 0444);
}

static int write_pack(ib_gf_rewrite *w)
{
    /* No existence check: for objects not in a pack it is a stat(2) per
     * object in the loose backend, and a rare object that already exists
     * (a tree that returns to an earlier state) is harmless in a new pack. */
    size_t count = w->nobj;
    w->st.objects = count;
    if (count == 0) return 0;
    pack_entry *pe = ib_xmalloc(count * sizeof *pe);
    buf pack = {0};
    unsigned char hdr[12] = {'P', 'A', 'C', 'K', 0, 0, 0, 2};
    hdr[8] = (unsigned char)(count >> 24);
    hdr[9] = (unsigned char)(count >> 16);
    hdr[10] = (unsigned char)(count >> 8);
    hdr[11] = (unsigned char)count;
    buf_put(&pack, hdr, sizeof hdr);
    z_stream z;
    memset(&z, 0, sizeof z);
    int rc = deflateInit(&z, 1) == Z_OK ? 0 : ib_error_set(IB_ERR, "zlib: cannot start a deflate stream");
    size_t k = 0;
    for (size_t i = 0; rc == 0 && i < w->nobj; i++) {
        new_object *o = &w->obj[i];
        if (o->type == GIT_OBJECT_INVALID) continue;
        size_t start = pack.len;
        unsigned char oh[16];
        size_t ol = 0, sz = o->len;
        unsigned char b = (unsigned char)((o->type << 4) | (sz & 15));
        sz >>= 4;
        while (sz) {
            oh[ol++] = b | 0x80;
            b = sz & 0x7f;
            sz >>= 7;
        }
        oh[ol++] = b;
        buf_put(&pack, oh, ol);
        size_t bound = deflateBound(&z, (uLong)o->len) + 16;
        if (pack.len + bound + 1 > pack.cap) {
            pack.cap = (pack.len + bound + 1) * 2;
            pack.s = ib_xrealloc(pack.s, pack.cap);
        }
        deflateReset(&z);
        z.next_in = (Bytef *)o->data;
        z.avail_in = (uInt)o->len;
        z.next_out = (Bytef *)pack.s + pack.len;
        z.avail_out = (uInt)bound;
        if (deflate(&z, Z_FINISH) != Z_STREAM_END) {
            rc = ib_error_set(IB_ERR, "zlib: compressing an object failed");
            break;
        }
        pack.len += bound - z.avail_out;
        git_oid_cpy(&pe[k].id, &o->id);
        pe[k].off = start;
        pe[k].crc = (uint32_t)crc32(0, (const Bytef *)pack.s + start, (uInt)(pack.len - start));
        k++;
    }
    deflateEnd(&z);
    unsigned char sum[EVP_MAX_MD_SIZE];
    unsigned sl = 0;
    if (rc == 0 && !EVP_Digest(pack.s, pack.len, sum, &sl, EVP_sha1(), NULL))
        rc = ib_error_set(IB_ERR, "hashing the new pack");
    if (rc == 0) buf_put(&pack, sum, sl);

    buf idx = {0};
    if (rc == 0) {
        qsort(pe, count, sizeof *pe, cmp_pack_entry);
        static const unsigned char magic[8] = {0xff, 't', 'O', 'c', 0, 0, 0, 2};
        buf_put(&idx, magic, sizeof magic);
        size_t j = 0;
        for (unsigned f = 0; f < 256; f++) {
            while (j < count && pe[j].id.id[0] <= f) j++;
            put_be32(&idx, (uint32_t)j);
        }
        for (size_t i = 0; i < count; i++) buf_put(&idx, pe[i].id.id, GIT_OID_RAWSZ);
        for (size_t i = 0; i < count; i++) put_be32(&idx, pe[i].crc);
        size_t nlarge = 0;
        for (size_t i = 0; i < count; i++)
            put_be32(&idx, pe[i].off < 0x80000000u ? (uint32_t)pe[i].off : (uint32_t)(0x80000000u | nlarge++));
        for (size_t i = 0; i < count; i++)
            if (pe[i].off >= 0x80000000u) {
                put_be32(&idx, (uint32_t)(pe[i].off >> 32));
                put_be32(&idx, (uint32_t)pe[i].off);
            }
        buf_put(&idx, sum, sl);
        unsigned char isum[EVP_MAX_MD_SIZE];
        unsigned il = 0;
        if (!EVP_Digest(idx.s, idx.len, isum, &il, EVP_sha1(), NULL)) rc = ib_error_set(IB_ERR, "hashing the new index");
        else buf_put(&idx, isum, il);
    }
    if (rc == 0) {
        /* the .pack first: git only looks at packs that have an .idx */
        char hex[GIT_OID_HEXSZ + 1];
        git_oid pid;
        git_oid_fromraw(&pid, sum);
        git_oid_tostr(hex, sizeof hex, &pid);
        char *pp = ib_xasprintf("%sobjects/pack/pack-%s.pack", git_repository_commondir(w->repo), hex);
        char *ip = ib_xasprintf("%sobjects/pack/pack-%s.idx", git_repository_commondir(w->repo), hex);
        rc = write_file_atomic(pp, &pack);
        if (rc == 0) rc = write_file_atomic(ip, &idx);
        free(pp);
        free(ip);
    }
    free(pe);
    free(pack.s);
    free(idx.s);
    if (rc == 0 && git_odb_refresh(w->odb) < 0) rc = ib_gf_git_fail(IB_ERR, "refreshing the object database");
    return rc;
}

static int cmp_ref(const void *a, const void *b)
{
    return strcmp(((const ref_plan *)a)->name, ((const ref_plan *)b)->name);
}

static int write_maps(ib_gf_rewrite *w, const char *mapdir)
{
    if (ib_fs_mkdir_p(mapdir, 0755) < 0) return -1;
    static const git_oid zero;
    buf b = {0};
    char line[128];
    snprintf(line, sizeof line, "%-40s %s\n", "old", "new");
    buf_puts(&b, line);
    for (size_t i = 0; i < w->nc; i++) {
        const commit_info *ci = &w->c[i];
        buf_oid(&b, &ci->old_id);
        buf_puts(&b, " ");
        buf_oid(&b, ci->to == (int)i ? &ci->new_id : &zero);
        buf_puts(&b, "\n");
    }
    char *p = ib_fs_join(mapdir, "commit-map");
    int rc = ib_fs_write_atomic(p, b.s, b.len, 0644);
    free(p);
    b.len = 0;
    snprintf(line, sizeof line, "%-40s %-40s %s\n", "old", "new", "ref");
    buf_puts(&b, line);
    qsort(w->refs, w->nrefs, sizeof *w->refs, cmp_ref);
    for (size_t i = 0; rc == 0 && i < w->nrefs; i++) {
        const ref_plan *r = &w->refs[i];
        /* as filter-repo: refs under their final names; migrated remote refs
         * with a local twin and symbolic refs are not listed */
        if (r->symbolic || r->drop) continue;
        buf_oid(&b, &r->old);
        buf_puts(&b, " ");
        buf_oid(&b, &r->new);
        buf_puts(&b, " ");
        buf_puts(&b, r->name);
        buf_puts(&b, "\n");
    }
    p = ib_fs_join(mapdir, "ref-map");
    if (rc == 0) rc = ib_fs_write_atomic(p, b.s, b.len, 0644);
    free(p);
    free(b.s);
    return rc;
}

typedef struct {
    const char *name;
    size_t nlen;
    const char *text; /* the ref line and its "^peeled" line, if any */
    size_t len;
} packed_line;

static int cmp_packed(const void *a, const void *b)
{
    const packed_line *x = a, *y = b;
    size_t n = x->nlen < y->nlen ? x->nlen : y->nlen;
    int c = memcmp(x->name, y->name, n);
    return c ? c : (x->nlen > y->nlen) - (x->nlen < y->nlen);
}

/* refs/replace/<old> for every rewritten commit, written straight into
 * packed-refs (under git's packed-refs.lock): thousands of loose ref files
 * through the ref transaction took longer than the whole rewrite. */
static int add_replace_refs(ib_gf_rewrite *w)
{
    const char *common = git_repository_commondir(w->repo);
    char *path = ib_xasprintf("%spacked-refs", common), *lock = ib_xasprintf("%s.lock", path);
    int fd = open(lock, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        int rc = ib_error_errno(IB_ERR, "%s (is another git command running?)", lock);
        free(path);
        free(lock);
        return rc;
    }
    ib_fs_tmp_register(lock);
    char *old = NULL;
    size_t olen = 0;
    if (ib_fs_exists(path) && ib_fs_read_all(&old, &olen, path, (size_t)1 << 31) < 0) olen = 0;
    size_t cap = w->nc + 64, n = 0;
    packed_line *v = ib_xmalloc(cap * sizeof *v);
    const char *header = "# pack-refs with: peeled fully-peeled sorted \n";
    size_t hlen = strlen(header);
    for (size_t off = 0; off < olen;) {
        const char *line = old + off, *nl = memchr(line, '\n', olen - off);
        size_t len = nl ? (size_t)(nl - line) + 1 : olen - off;
        off += len;
        if (line[0] == '#') {
            header = line;
            hlen = len;
        } else if (line[0] == '^' && n > 0) {
            v[n - 1].len += len; /* peeled line follows its ref */
        } else if (len > GIT_OID_HEXSZ + 1) {
            if (n == cap) v = ib_xrealloc(v, (cap *= 2) * sizeof *v);
            v[n].name = line + GIT_OID_HEXSZ + 1;
            v[n].nlen = len - GIT_OID_HEXSZ - 1 - (nl ? 1 : 0);
            v[n].text = line;
            v[n].len = len;
            n++;
        }
    }
    buf names = {0};
    for (size_t i = 0; i < w->nc; i++) {
        const commit_info *ci = &w->c[i];
        if (ci->to != (int)i || git_oid_equal(&ci->old_id, &ci->new_id)) continue;
        char name[64];
        snprintf(name, sizeof name, "refs/replace/%s", git_oid_tostr_s(&ci->old_id));
        if (has_ref(w, name)) continue; /* an existing replace ref was rewritten with the others */
        buf_oid(&names, &ci->new_id);
        buf_puts(&names, " ");
        buf_puts(&names, name);
        buf_puts(&names, "\n");
    }
    /* pointers into names are taken once it has stopped growing */
    for (size_t off = 0; off < names.len;) {
        const char *line = names.s + off, *nl = memchr(line, '\n', names.len - off);
        size_t len = (size_t)(nl - line) + 1;
        if (n == cap) v = ib_xrealloc(v, (cap *= 2) * sizeof *v);
        v[n].name = line + GIT_OID_HEXSZ + 1;
        v[n].nlen = len - GIT_OID_HEXSZ - 2;
        v[n].text = line;
        v[n].len = len;
        n++;
        off += len;
    }
    qsort(v, n, sizeof *v, cmp_packed);
    buf out = {0};
    buf_put(&out, header, hlen);
    for (size_t i = 0; i < n; i++) buf_put(&out, v[i].text, v[i].len);
    int rc = 0;
    if (write(fd, out.s, out.len) != (ssize_t)out.len || fsync(fd) < 0) rc = ib_error_errno(IB_ERR, "%s", lock);
    close(fd);
    if (rc == 0 && rename(lock, path) < 0) rc = ib_error_errno(IB_ERR, "%s", path);
    if (rc < 0) unlink(lock);
    ib_fs_tmp_forget(lock);
    free(out.s);
    free(names.s);
    free(v);
    free(old);
    free(path);
    free(lock);
    return rc;
}

int ib_gf_rewrite_apply(ib_gf_rewrite *w, const char *mapdir)
{
    int rc = write_pack(w);
    if (rc < 0) return rc;
    /* One transaction for every ref: either the whole new history is in
     * place or none of it. */
    git_signature *sig = NULL;
    git_transaction *tx = NULL;
    if (git_signature_now(&sig, "imgbuild slim", "imgbuild@localhost") < 0 || git_transaction_new(&tx, w->repo) < 0)
        rc = ib_gf_git_fail(IB_ERR, "starting the ref transaction");
    for (size_t i = 0; rc == 0 && i < w->nrefs; i++) {
        ref_plan *p = &w->refs[i];
        int moved = strcmp(p->name, p->orig_name) != 0;
        if (p->symbolic && !p->drop) continue;
        if (!p->symbolic && !p->drop && !moved && git_oid_equal(&p->old, &p->new)) continue;
        if (git_transaction_lock_ref(tx, p->orig_name) < 0) rc = ib_gf_git_fail(IB_ERR, p->orig_name);
        else if (moved && !p->drop && git_transaction_lock_ref(tx, p->name) < 0) rc = ib_gf_git_fail(IB_ERR, p->name);
        else if (p->drop || moved || git_oid_is_zero(&p->new)) {
            if (git_transaction_remove(tx, p->orig_name) < 0) rc = ib_gf_git_fail(IB_ERR, p->orig_name);
        }
        if (rc == 0 && !p->drop && !git_oid_is_zero(&p->new) &&
            git_transaction_set_target(tx, p->name, &p->new, sig, "imgbuild slim") < 0)
            rc = ib_gf_git_fail(IB_ERR, p->name);
    }
    if (rc == 0 && git_transaction_commit(tx) < 0) rc = ib_gf_git_fail(IB_ERR, "updating refs");
    git_transaction_free(tx);
    git_signature_free(sig);
    if (rc == 0 && w->o.replace_refs) rc = add_replace_refs(w);
    if (rc == 0 && w->head_detached && !git_oid_is_zero(&w->head_new) &&
        git_repository_set_head_detached(w->repo, &w->head_new) < 0)
        rc = ib_gf_git_fail(IB_ERR, "moving the detached HEAD");
    if (rc == 0) rc = write_maps(w, mapdir);
    return rc;
}

void ib_gf_rewrite_free(ib_gf_rewrite *w)
{
    if (!w) return;
    for (size_t i = 0; i < w->nobj; i++) free(w->obj[i].data);
    free(w->obj);
    for (size_t i = 0; i < w->nrefs; i++) {
        free(w->refs[i].name);
        free(w->refs[i].orig_name);
    }
    free(w->refs);
    ib_oidmap_free(w->sizes);
    ib_oidmap_free(w->memo_path);
    ib_oidmap_free(w->memo_tree);
    ib_oidmap_free(w->objmap);
    ib_oidmap_free(w->cidx);
    ib_oidmap_free(w->tagmap);
    free(w->tr);
    free(w->c);
    free(w->seen);
    free(w->par.v);
    free(w->opar.v);
    free(w->stack.v);
    free(w->path.s);
    git_odb_free(w->odb);
    free(w);
}

/* ---- listing what a filter removes -------------------------------------- */

typedef struct {
    git_repository *repo;
    const ib_gf_filter *f;
    ib_oidmap *seen;
    ib_gf_removed_cb cb;
    void *ud;
    buf path;
    uint64_t max;
    git_odb *odb;
} removed_ctx;

static int walk_removed(removed_ctx *x, const git_oid *tree, int drop_all)
{
    buf *pb = &x->path;
    int ds = drop_all ? IB_GF_DIR_DROP
                      : (ib_gf_filter_has_path_rules(x->f) ? ib_gf_filter_dir(x->f, pb->s ? pb->s : "", pb->len)
                                                           : IB_GF_DIR_KEEP);
    if (ds == IB_GF_DIR_KEEP && !x->max) return 0;
    if (x->seen) {
        git_oid key;
        path_key(&key, tree, pb);
        if (ib_oidmap_get(x->seen, &key, NULL)) return 0;
        ib_oidmap_set(x->seen, &key, 1);
    }
    git_tree *t;
    if (git_tree_lookup(&t, x->repo, tree) < 0) return ib_gf_git_fail(IB_ECORRUPT, "reading a tree");
    size_t n = git_tree_entrycount(t), base = pb->len;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const git_tree_entry *e = git_tree_entry_byindex(t, i);
        if (base) buf_put(pb, "/", 1);
        buf_puts(pb, git_tree_entry_name(e));
        git_object_t type = git_tree_entry_type(e);
        if (type == GIT_OBJECT_TREE) {
            rc = walk_removed(x, git_tree_entry_id(e), ds == IB_GF_DIR_DROP);
        } else if (type == GIT_OBJECT_BLOB) {
            int gone = ds == IB_GF_DIR_DROP || (ds != IB_GF_DIR_KEEP && ib_gf_filter_path_removed(x->f, pb->s, pb->len));
            if (!gone && x->max) {
                size_t len;
                git_object_t ty;
                if (git_odb_read_header(&len, &ty, x->odb, git_tree_entry_id(e)) < 0)
                    rc = ib_gf_git_fail(IB_ECORRUPT, "reading a blob header");
                else gone = len > x->max;
            }
            if (rc == 0 && gone)
                rc = x->cb(x->ud, pb->s, pb->len, git_tree_entry_id(e), (uint32_t)git_tree_entry_filemode_raw(e));
        }
        pb->len = base;
        pb->s[base] = '\0';
    }
    git_tree_free(t);
    return rc;
}

int ib_gf_removed_in_tree(git_repository *repo, const git_oid *tree, const ib_gf_filter *filter, ib_oidmap *seen,
                          ib_gf_removed_cb cb, void *ud)
{
    removed_ctx x = {.repo = repo, .f = filter, .seen = seen, .cb = cb, .ud = ud, .max = ib_gf_filter_max_blob(filter)};
    if (git_repository_odb(&x.odb, repo) < 0) return ib_gf_git_fail(IB_ERR, "opening the object database");
    int rc = walk_removed(&x, tree, 0);
    free(x.path.s);
    git_odb_free(x.odb);
    return rc;
}
