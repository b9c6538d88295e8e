#include "build/executor.h"
#include "oci/platform.h"
#include "build/context.h"
#include "build/cache.h"
#include "build/copy.h"
#include "build/remote_cache.h"
#include "build/sandbox.h"
#include "build/dockerfile.h"
#include "build/ignore.h"
#include "common/error.h"
#include "common/strbuf.h"
#include "common/fs.h"
#include "layer/apply.h"
#include "layer/index.h"
#include "layer/writer.h"
#include "oci/archive.h"
#include "oci/image.h"
#include "oci/reference.h"
#include "oci/store.h"
#include "registry/transfer.h"

#include <ctype.h>
#include <dirent.h>
#include <stdarg.h>
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#define DEFAULT_PATH "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define DOCKERFILE_MAX (4u << 20)

/* ---------- ordered key/value lists (ENV, ARG) ---------- */

typedef struct {
    char *k, *v; /* v NULL: declared without a value */
} kv;
typedef struct {
    kv *v;
    size_t n;
} kvlist;

static kv *kv_find(const kvlist *l, const char *k)
{
    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(l->v[i].k, k)) return &l->v[i];
    return NULL;
}

static void kv_set(kvlist *l, const char *k, const char *v)
{
    kv *e = kv_find(l, k);
    if (e) {
        free(e->v);
        e->v = v ? ib_xstrdup(v) : NULL;
        return;
    }
    l->v = ib_xrealloc(l->v, (l->n + 1) * sizeof *l->v);
    l->v[l->n].k = ib_xstrdup(k);
    l->v[l->n].v = v ? ib_xstrdup(v) : NULL;
    l->n++;
}

static void kv_clear(kvlist *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].k);
        free(l->v[i].v);
    }
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static void kv_copy(kvlist *dst, const kvlist *src)
{
    for (size_t i = 0; i < src->n; i++) kv_set(dst, src->v[i].k, src->v[i].v);
}


/* ---------- build state ---------- */

typedef struct stage {
    size_t index;
    char *name;       /* lowercased "AS" name, or NULL */
    size_t first, end; /* instruction range [first, end) */
    int needed, built;
    char *base;       /* expanded FROM argument */
    /* image being built */
    json_t *cfg;      /* the "config" object of the image config */
    json_t *history;
    json_t *base_annotations;
    ib_desc *layers;
    char **diff_ids;
    size_t nlayers;
    kvlist env, args;
    int cmd_from_base;
    char *os, *arch;
    /* root filesystem, materialised only when COPY --from or --chown needs it */
    char *rootfs;
    size_t rootfs_layers;
    /* directories of the layers so far, for stages on a base image (parent dir metadata) */
    size_t base_layers;
    ib_layer_index *lidx;
    size_t lidx_layers;
} stage;

typedef struct {
    const ib_build_opts *o;
    ib_progress *prog;
    ib_store *store;
    ib_context *ctx;
    ib_git_info git;
    ib_ignore *ignore;
    ib_dockerfile *df;
    char *df_name;
    stage *stages;
    size_t nstages;
    kvlist meta;        /* global ARGs (before the first FROM) */
    kvlist build_args;  /* --build-arg */
    char **used_args;
    size_t nused;
    int64_t epoch;
    char created[32];
    char *tmpdir;
    int tmplock; /* held while tmpdir is in use: the store's sweep skips it */
    const char *os, *arch;
    /* strings that must outlive layer writes (expanded heredocs) */
    char **keep;
    size_t nkeep;
    ib_cache *cache;
    int64_t layer_mtime;
    unsigned cached, built;
    ib_remote_cache **rfrom;
    size_t nrfrom;
    ib_remote_cache *rto;
    /* cache mounts used by RUNs of this build (exported with --cache-to) */
    struct used_mount {
        char name[33];
        char *dir, *target;
    } mounts[16];
    size_t nmounts;
    struct exported {
        char key[IB_DIGEST_STRLEN + 1];
        ib_layer_result res;
        char *created_by;
    } *exports;
    size_t nexports;
} build;

static void mark_arg_used(build *b, const char *k)
{
    for (size_t i = 0; i < b->nused; i++)
        if (!strcmp(b->used_args[i], k)) return;
    b->used_args = ib_xrealloc(b->used_args, (b->nused + 1) * sizeof *b->used_args);
    b->used_args[b->nused++] = ib_xstrdup(k);
}

/* ---------- expansion ---------- */

typedef struct {
    build *b;
    stage *st; /* NULL: global scope (FROM lines) */
} scope;

static const char *lookup(void *vctx, const char *name)
{
    scope *sc = vctx;
    if (sc->st) {
        kv *e = kv_find(&sc->st->env, name);
        if (e) return e->v;
        e = kv_find(&sc->st->args, name);
        if (e) return e->v;
        return NULL;
    }
    kv *e = kv_find(&sc->b->meta, name);
    return e ? e->v : NULL;
}

static int expand(char **out, build *b, stage *st, const char *word, int line)
{
    scope sc = {b, st};
    return ib_df_expand(out, word, b->df->escape, lookup, &sc, b->df_name, line);
}

/* ---------- stage rootfs (COPY --from, --chown by name) ---------- */

static int stage_rootfs(const char **out, build *b, stage *st)
{
    if (!st->rootfs) {
        st->rootfs = ib_xasprintf("%s/rootfs-%zu", b->tmpdir, st->index);
        /* chmod: the builder's umask must not make the image's / unreadable */
        if (mkdir(st->rootfs, 0755) < 0 || chmod(st->rootfs, 0755) < 0)
            return ib_error_errno(IB_ERR, "mkdir %s", st->rootfs);
    }
    for (; st->rootfs_layers < st->nlayers; st->rootfs_layers++) {
        char *p = ib_store_blob_path(b->store, st->layers[st->rootfs_layers].digest);
        int r = ib_layer_apply(NULL, st->rootfs, p);
        free(p);
        if (r < 0) return r;
    }
    *out = st->rootfs;
    return 0;
}

/* ---------- base images ---------- */

static void stage_init_empty(build *b, stage *st)
{
    st->cfg = json_object();
    st->history = json_array();
    st->os = ib_xstrdup(b->os);
    st->arch = ib_xstrdup(b->arch);
    kv_set(&st->env, "PATH", &DEFAULT_PATH[5]);
}

static void env_from_json(kvlist *env, json_t *arr)
{
    size_t i;
    json_t *e;
    json_array_foreach(arr, i, e)
    {
        const char *s = json_string_value(e);
        if (!s) continue;
        const char *eq = strchr(s, '=');
        if (!eq) continue;
        char *k = ib_xstrndup(s, (size_t)(eq - s));
        kv_set(env, k, eq + 1);
        free(k);
    }
}

static void stage_from_stage(stage *st, const stage *src)
{
    st->cfg = json_deep_copy(src->cfg);
    st->history = json_deep_copy(src->history);
    st->nlayers = src->nlayers;
    st->layers = ib_xcalloc(src->nlayers ? src->nlayers : 1, sizeof *st->layers);
    st->diff_ids = ib_xcalloc(src->nlayers ? src->nlayers : 1, sizeof *st->diff_ids);
    for (size_t i = 0; i < src->nlayers; i++) {
        st->layers[i] = src->layers[i];
        st->layers[i].media_type = ib_xstrdup(src->layers[i].media_type);
        st->diff_ids[i] = ib_xstrdup(src->diff_ids[i]);
    }
    kv_copy(&st->env, &src->env);
    /* BuildKit dispatchState.init: a stage FROM another stage inherits its
     * ARGs (values included), not just its ENV. */
    kv_copy(&st->args, &src->args);
    st->base_layers = src->base_layers;
    st->cmd_from_base = json_object_get(st->cfg, "Cmd") != NULL;
    st->os = ib_xstrdup(src->os);
    st->arch = ib_xstrdup(src->arch);
    if (src->base_annotations) st->base_annotations = json_deep_copy(src->base_annotations);
}

/* The image manifest a digest names in the store: itself, or for an index
 * (stored by the pull that resolved it) the entry for this platform.
 * IB_ENOTFOUND when either is missing. */
static int local_by_digest(char *out, ib_store *s, const char *digest, const char *platform)
{
    char *body = NULL;
    size_t len = 0;
    if (!ib_store_has_blob(s, digest, NULL)) return IB_ENOTFOUND;
    int r = ib_store_read_blob(&body, &len, s, digest, IB_MANIFEST_MAX);
    if (r < 0) return r;
    json_t *j = json_loadb(body, len, 0, NULL);
    const char *mt = json_string_value(json_object_get(j, "mediaType"));
    int index = (mt && (!strcmp(mt, IB_MT_OCI_INDEX) || !strcmp(mt, IB_MT_DOCKER_LIST))) ||
                (!mt && json_is_array(json_object_get(j, "manifests")));
    json_decref(j);
    if (!index) {
        memcpy(out, digest, IB_DIGEST_STRLEN + 1);
    } else {
        ib_platform want;
        r = ib_platform_parse(&want, platform, "--platform");
        if (r == 0) r = ib_platform_pick(out, body, len, &want);
        if (r == 0 && !ib_store_has_blob(s, out, NULL)) r = IB_ENOTFOUND;
    }
    free(body);
    return r;
}

static int stage_from_image(build *b, stage *st, const char *refstr, int line)
{
    ib_ref ref;
    int r = ib_ref_parse(&ref, refstr, "latest");
    if (r < 0) return r;
    char dg[IB_DIGEST_STRLEN + 1];
    char *full = ib_ref_string(&ref);
    const char *plat = kv_find(&b->meta, "TARGETPLATFORM")->v;
    if (ref.digest) {
        /* A digest decides, as in docker (a tag next to it is only a label);
         * an index digest resolves through the index pulled with it. */
        r = local_by_digest(dg, b->store, ref.digest, plat);
        if (r == IB_ENOTFOUND) ib_error_set(r, "base image %s is not in the local store", full);
    } else {
        r = ib_store_get_ref(dg, b->store, full);
    }
    if (r == IB_ENOTFOUND) {
        /* Not local: pull it, as docker build would. */
        ib_reg_opts ro = {0};
        if (b->o->reg) ro = *b->o->reg;
        ib_progress_msg(b->prog, "info", "pulling %s", full);
        r = ib_pull(dg, b->store, &ref, plat, &ro, b->prog);
        if (r < 0)
            ib_error_wrap(r, "base image %s is not in the local store and pulling it failed (or `imgbuild load` "
                             "a tarball of it)",
                          full);
    }
    ib_ref_clear(&ref);
    if (r < 0) {
        free(full);
        return r;
    }
    ib_image *img;
    if ((r = ib_image_load(&img, b->store, dg)) < 0) {
        free(full);
        return r;
    }
    json_t *c = json_object_get(img->config, "config");
    st->cfg = json_is_object(c) ? json_deep_copy(c) : json_object();
    json_t *h = json_object_get(img->config, "history");
    st->history = json_is_array(h) ? json_deep_copy(h) : json_array();
    const char *os = json_string_value(json_object_get(img->config, "os"));
    const char *arch = json_string_value(json_object_get(img->config, "architecture"));
    st->os = ib_xstrdup(os ? os : b->os);
    st->arch = ib_xstrdup(arch ? arch : b->arch);
    if (strcmp(st->os, b->os) || strcmp(st->arch, b->arch))
        ib_progress_msg(b->prog, "warning", "%s:%d: base image %s is %s/%s, building for %s/%s", b->df_name, line,
                        full, st->os, st->arch, b->os, b->arch);
    st->nlayers = img->nlayers;
    st->base_layers = img->nlayers;
    st->layers = ib_xcalloc(img->nlayers ? img->nlayers : 1, sizeof *st->layers);
    st->diff_ids = ib_xcalloc(img->nlayers ? img->nlayers : 1, sizeof *st->diff_ids);
    for (size_t i = 0; i < img->nlayers; i++) {
        st->layers[i] = img->layers[i];
        st->layers[i].media_type = ib_xstrdup(img->layers[i].media_type);
        st->diff_ids[i] = ib_xstrdup(img->diff_ids[i]);
    }
    env_from_json(&st->env, json_object_get(st->cfg, "Env"));
    st->cmd_from_base = json_object_get(st->cfg, "Cmd") != NULL;
    /* OCI annotations spec: record what the image was built on. */
    st->base_annotations = json_pack("{s:s,s:s}", "org.opencontainers.image.base.name", full,
                                     "org.opencontainers.image.base.digest", dg);
    if (json_array_size(json_object_get(st->cfg, "OnBuild")))
        ib_progress_msg(b->prog, "warning", "%s:%d: ONBUILD triggers of %s are not executed", b->df_name, line, full);
    /* Docker: triggers fire in the child build and are not inherited further. */
    json_object_del(st->cfg, "OnBuild");
    free(full);
    ib_image_free(img);
    return 0;
}

static stage *find_stage(build *b, const char *name, size_t before)
{
    for (size_t i = 0; i < before && i < b->nstages; i++)
        if (b->stages[i].name && !strcasecmp(b->stages[i].name, name)) return &b->stages[i];
    /* a stage index, as in COPY --from=0 */
    char *end;
    unsigned long n = strtoul(name, &end, 10);
    if (*name && !*end && n < before) return &b->stages[n];
    return NULL;
}

/* ---------- history and layers ---------- */

static void add_history(build *b, stage *st, const char *created_by, int empty)
{
    json_t *h = json_object();
    json_object_set_new(h, "created", json_string(b->created));
    json_object_set_new(h, "created_by", json_string(created_by));
    json_object_set_new(h, "comment", json_string("imgbuild"));
    if (empty) json_object_set_new(h, "empty_layer", json_true());
    json_array_append_new(st->history, h);
}

static void push_layer(stage *st, const ib_layer_result *lr)
{
    st->layers = ib_xrealloc(st->layers, (st->nlayers + 1) * sizeof *st->layers);
    st->diff_ids = ib_xrealloc(st->diff_ids, (st->nlayers + 1) * sizeof *st->diff_ids);
    ib_desc *d = &st->layers[st->nlayers];
    d->media_type = ib_xstrdup(lr->media_type);
    memcpy(d->digest, lr->digest, sizeof d->digest);
    d->size = lr->size;
    st->diff_ids[st->nlayers] = ib_xstrdup(lr->diff_id);
    st->nlayers++;
}

/* ---------- instructions ---------- */

/* The config member key of obj, created (object, or array when array=1) if absent. */
static json_t *cfg_member(json_t *obj, const char *key, int array)
{
    json_t *m = json_object_get(obj, key);
    if (array ? !json_is_array(m) : !json_is_object(m)) {
        m = array ? json_array() : json_object();
        json_object_set_new(obj, key, m);
    }
    return m;
}

static int json_strings(json_t **out, build *b, stage *st, const ib_df_instr *in, size_t from, int expand_words)
{
    json_t *a = json_array();
    for (size_t i = from; i < in->nargs; i++) {
        if (expand_words) {
            char *w;
            int r = expand(&w, b, st, in->args[i], in->line);
            if (r < 0) {
                json_decref(a);
                return r;
            }
            json_array_append_new(a, json_string(w));
            free(w);
        } else {
            json_array_append_new(a, json_string(in->args[i]));
        }
    }
    *out = a;
    return 0;
}

/* CMD/ENTRYPOINT/HEALTHCHECK CMD shell form runs under the stage's SHELL. */
static json_t *shell_form(stage *st, const char *cmd)
{
    json_t *sh = json_object_get(st->cfg, "Shell");
    json_t *a = json_is_array(sh) && json_array_size(sh) ? json_deep_copy(sh) : json_pack("[s,s]", "/bin/sh", "-c");
    json_array_append_new(a, json_string(cmd));
    return a;
}

static int do_healthcheck(build *b, stage *st, const ib_df_instr *in)
{
    json_t *hc = json_object();
    int r = 0;
    if (in->nargs >= 1 && !strcasecmp(in->args[0], "NONE")) {
        json_object_set_new(hc, "Test", json_pack("[s]", "NONE"));
    } else {
        json_t *test;
        if (in->json_form) {
            if ((r = json_strings(&test, b, st, in, 1, 0)) < 0) goto out;
            json_array_insert_new(test, 0, json_string("CMD"));
        } else {
            test = json_pack("[s,s]", "CMD-SHELL", in->nargs > 1 ? in->args[1] : "");
        }
        json_object_set_new(hc, "Test", test);
        static const struct { const char *flag, *key; } durs[] = {
            {"interval", "Interval"}, {"timeout", "Timeout"}, {"start-period", "StartPeriod"},
            {"start-interval", "StartInterval"}};
        for (size_t i = 0; i < sizeof durs / sizeof *durs; i++) {
            const char *v = ib_df_flag_get(in, durs[i].flag, NULL);
            if (!v) continue;
            long long ns = 0;
            if (ib_df_parse_duration(v, &ns) < 0) {
                r = ib_error_set(IB_EINVALID, "--%s=%s: invalid duration", durs[i].flag, v);
                goto out;
            }
            json_object_set_new(hc, durs[i].key, json_integer(ns));
        }
        const char *rv = ib_df_flag_get(in, "retries", NULL);
        if (rv) {
            char *end;
            long n = strtol(rv, &end, 10);
            if (*end || n < 0) {
                r = ib_error_set(IB_EINVALID, "--retries=%s: not a non-negative integer", rv);
                goto out;
            }
            json_object_set_new(hc, "Retries", json_integer(n));
        }
    }
    json_object_set(st->cfg, "Healthcheck", hc);
out:
    json_decref(hc);
    return r;
}

static int do_kv_list(build *b, stage *st, const ib_df_instr *in, int is_env)
{
    json_t *labels = NULL;
    if (!is_env) {
        labels = cfg_member(st->cfg, "Labels", 0);
    }
    /* Docker expands every pair with the values in effect BEFORE this
     * instruction: ENV A=1 B=$A uses the old A. */
    char **ks = ib_xcalloc(in->nargs + 1, sizeof *ks);
    int r = 0;
    for (size_t i = 0; i + 1 < in->nargs + 1 && r == 0; i++) r = expand(&ks[i], b, st, in->args[i] ? in->args[i] : "", in->line);
    for (size_t i = 0; r == 0 && i + 1 < in->nargs; i += 2) {
        if (!*ks[i]) {
            r = ib_error_set(IB_EINVALID, "%s: empty key", is_env ? "ENV" : "LABEL");
            break;
        }
        if (is_env) kv_set(&st->env, ks[i], ks[i + 1]);
        else json_object_set_new(labels, ks[i], json_string(ks[i + 1]));
    }
    for (size_t i = 0; i < in->nargs; i++) free(ks[i]);
    free(ks);
    return r;
}

static int do_arg(build *b, stage *st, const ib_df_instr *in, kvlist *into)
{
    for (size_t i = 0; i + 1 < in->nargs + 1; i += 2) {
        const char *name = in->args[i];
        const char *def = i + 1 < in->nargs ? in->args[i + 1] : NULL;
        kv *ba = kv_find(&b->build_args, name);
        char *val = NULL;
        if (ba) {
            val = ib_xstrdup(ba->v);
            mark_arg_used(b, name);
        } else if (def) {
            int r = expand(&val, b, st, def, in->line);
            if (r < 0) return r;
        } else if (st) {
            /* ARG NAME inside a stage re-imports the global value. */
            kv *g = kv_find(&b->meta, name);
            if (g && g->v) val = ib_xstrdup(g->v);
        }
        kv_set(into, name, val);
        free(val);
    }
    return 0;
}

static int do_workdir(build *b, stage *st, const ib_df_instr *in)
{
    char *w;
    int r = expand(&w, b, st, in->args[0], in->line);
    if (r < 0) return r;
    const char *cur = json_string_value(json_object_get(st->cfg, "WorkingDir"));
    char *joined = w[0] == '/' ? ib_xstrdup(w) : ib_fs_join(cur && *cur ? cur : "/", w);
    char *norm = ib_copy_clean_abs(joined);
    json_object_set_new(st->cfg, "WorkingDir", json_string(norm));
    free(norm);
    free(joined);
    free(w);
    return 0;
}

static int expose_one(json_t *ports, const char *word);

static int do_expose(build *b, stage *st, const ib_df_instr *in)
{
    json_t *ports = cfg_member(st->cfg, "ExposedPorts", 0);
    /* BuildKit dispatchExpose: each word goes through ProcessWords, so
     * ENV PORTS="80 443/udp" + EXPOSE $PORTS exposes two ports. */
    char **words = NULL;
    size_t nw = 0;
    for (size_t i = 0; i < in->nargs; i++) {
        char **w;
        size_t n;
        scope sc = {b, st};
        int r = ib_df_expand_words(&w, &n, in->args[i], b->df->escape, lookup, &sc, b->df_name, in->line);
        if (r < 0) {
            for (size_t k = 0; k < nw; k++) free(words[k]);
            free(words);
            return r;
        }
        words = ib_xrealloc(words, (nw + n + 1) * sizeof *words);
        for (size_t k = 0; k < n; k++) words[nw++] = w[k];
        free(w);
    }
    int r = 0;
    for (size_t i = 0; i < nw && r == 0; i++) r = expose_one(ports, words[i]);
    for (size_t k = 0; k < nw; k++) free(words[k]);
    free(words);
    return r;
}

/* One "port[-port][/proto]" word, already expanded. */
static int expose_one(json_t *ports, const char *word)
{
    char *p = ib_xstrdup(word);
    char *proto = strchr(p, '/');
    char pr[16];
    snprintf(pr, sizeof pr, "%s", proto ? proto + 1 : "tcp");
    if (proto) *proto = 0;
    for (char *q = pr; *q; q++) *q = (char)tolower((unsigned char)*q);
    char *end;
    long a = strtol(p, &end, 10), z = a;
    if (*end == '-') z = strtol(end + 1, &end, 10);
    if (*end || a < 1 || z > 65535 || z < a || (strcmp(pr, "tcp") && strcmp(pr, "udp") && strcmp(pr, "sctp"))) {
        free(p);
        return ib_error_set(IB_EINVALID, "EXPOSE %s: invalid port or protocol", word);
    }
    for (long n = a; n <= z; n++) {
        char key[32];
        snprintf(key, sizeof key, "%ld/%s", n, pr);
        json_object_set_new(ports, key, json_object());
    }
    free(p);
    return 0;
}

static int do_volume(build *b, stage *st, const ib_df_instr *in)
{
    json_t *vols = cfg_member(st->cfg, "Volumes", 0);
    for (size_t i = 0; i < in->nargs; i++) {
        char *v;
        /* BuildKit VolumeCommand.Expand: the JSON form is expanded too (VOLUME ["$D"]). */
        int r = expand(&v, b, st, in->args[i], in->line);
        if (r < 0) return r;
        if (!*v) {
            free(v);
            return ib_error_set(IB_EINVALID, "VOLUME specified can not be an empty string");
        }
        json_object_set_new(vols, v, json_object());
        free(v);
    }
    return 0;
}

typedef struct {
    build *b;
    stage *st;
    const ib_df_instr *in;
    int hit;
    char *why; /* reason for a miss */
} stage_ref;

/* Where a step's inputs are remembered, to explain its next miss. */
static char *step_locator(build *b, const stage *st, const ib_df_instr *in)
{
    return ib_xasprintf("%s|%s|%s|%zu", b->git.repo_root ? b->git.repo_root : "-", b->df_name,
                        st->name ? st->name : "-", (size_t)(in - b->df->instrs));
}

/* The lookup itself (see cache_lookup): *from names a registry hit, *damaged
 * a local entry found damaged and removed. */
static int cache_lookup_at(ib_layer_result *res, char **from, char **damaged, build *b, const char *key)
{
    *from = NULL;
    *damaged = NULL;
    if (b->o->no_cache) return 0;
    int r = ib_cache_get(res, damaged, b->cache, key);
    for (size_t i = 0; r == 0 && i < b->nrfrom; i++) {
        if (!b->rfrom[i]) continue;
        r = ib_remote_cache_get(res, b->rfrom[i], b->store, b->cache, key);
        if (r == 1) {
            *from = ib_xasprintf("from %s", ib_remote_cache_name(b->rfrom[i]));
        } else if (r == IB_ECORRUPT) {
            ib_progress_msg(b->prog, "warning", "--cache-from %s: %s (entry ignored)", ib_remote_cache_name(b->rfrom[i]),
                            ib_error_last());
            r = 0;
        } else if (r < 0) {
            ib_progress_msg(b->prog, "warning", "--cache-from %s: %s (not asked again in this build)",
                            ib_remote_cache_name(b->rfrom[i]), ib_error_last());
            ib_remote_cache_free(b->rfrom[i]);
            b->rfrom[i] = NULL;
            r = 0;
        }
    }
    return r;
}

/* Local cache, then the --cache-from registries. 1 on a hit (*note names the
 * registry it came from, or is NULL), 0 on a miss (*note says why: --no-cache,
 * a damaged local entry that was removed, or what changed in inputs since
 * the step's last build at locator). A registry that cannot be read is a
 * warning, not a failure, and is not asked again in this build; a damaged
 * entry there is a warning too, and only that entry is skipped. */
static int cache_lookup(ib_layer_result *res, char **note, build *b, const char *key, const char *locator,
                        const char *inputs)
{
    char *from = NULL, *damaged = NULL;
    int r = cache_lookup_at(res, &from, &damaged, b, key);
    if (r == 1) {
        *note = from;
    } else {
        free(from);
        *note = r < 0              ? NULL
                : b->o->no_cache   ? ib_xstrdup("--no-cache")
                : damaged          ? ib_xstrdup(damaged)
                                   : ib_cache_explain(b->cache, locator, inputs);
    }
    free(damaged);
    return r;
}

/* Queues a layer for --cache-to, pushed once the image is written. */
static void remember_export(build *b, const char *key, const ib_layer_result *res, const char *created_by)
{
    if (!b->rto) return;
    b->exports = ib_xrealloc(b->exports, (b->nexports + 1) * sizeof *b->exports);
    struct exported *x = &b->exports[b->nexports++];
    memcpy(x->key, key, sizeof x->key);
    x->res = *res;
    x->created_by = ib_xstrdup(created_by);
}

/* The layer a COPY/ADD planned: served from the cache when its key is there,
 * else written (compressed) and remembered. */
static int produce_layer(void *ctx, ib_layer_builder *lb, const char *inputs, ib_layer_result *res)
{
    stage_ref *sr = ctx;
    build *b = sr->b;
    stage *st = sr->st;
    char chain[IB_DIGEST_STRLEN + 1], entries[IB_DIGEST_STRLEN + 1], key[IB_DIGEST_STRLEN + 1];
    ib_cache_chain(chain, st->diff_ids, st->nlayers);
    ib_layer_builder_digest(entries, lb);
    /* Everything else that decides the layer's bytes: compression and file times. */
    char comp[64];
    snprintf(comp, sizeof comp, "%s mtime=%lld", ib_compress_name(b->o->compression), (long long)b->layer_mtime);
    ib_cache_key(key, chain, comp, entries);
    /* What a later miss is explained from: the inputs, the entries digest
     * (anything about the files the named inputs miss) and the key itself
     * (same key, no entry: the layer was pruned). */
    char *all = ib_xasprintf("instruction %s\nparent %s\ncompression %s\n%sentries %s\nkey %s\n", sr->in->original,
                             chain, comp, inputs, entries, key);
    char *locator = step_locator(b, st, sr->in);
    int r = cache_lookup(res, &sr->why, b, key, locator, all);
    if (r == 1) {
        sr->hit = 1;
        r = 0;
    } else if (r == 0) {
        r = ib_layer_write(res, lb, b->store, b->o->compression, b->o->threads, b->layer_mtime);
        if (r == 0) r = ib_cache_put(b->cache, key, res, sr->in->original);
    }
    if (r == 0) {
        ib_cache_record(b->cache, locator, all);
        remember_export(b, key, res, sr->in->original);
    }
    free(all);
    free(locator);
    return r;
}

static int lower_dir(void *ctx, const char *path, unsigned *mode, unsigned *uid, unsigned *gid)
{
    stage *st = ((stage_ref *)ctx)->st;
    return st->lidx ? ib_layer_index_dir(st->lidx, path, mode, uid, gid) : 0;
}

/* Saved directory indexes: <store>/cache/index/<chain hex>, tagged with the
 * chain and the layer blobs it covers (prune drops one whose blobs went). */
#define INDEX_SAVE_MIN ((uint64_t)4 << 20)

static char *index_path(build *b, const stage *st, size_t k)
{
    char chain[IB_DIGEST_STRLEN + 1];
    ib_cache_chain(chain, st->diff_ids, k);
    return ib_xasprintf("%s/cache/index/%s", ib_store_dir(b->store), chain + 7);
}

static char *index_tag(const stage *st, size_t k)
{
    char chain[IB_DIGEST_STRLEN + 1];
    ib_cache_chain(chain, st->diff_ids, k);
    ib_strbuf sb = {0};
    ib_strbuf_addf(&sb, "chain %s\n", chain);
    for (size_t i = 0; i < k; i++) ib_strbuf_addf(&sb, "blob %s\n", st->layers[i].digest);
    return sb.s;
}

/* Brings the stage's directory index up to date with its layers (headers
 * only). On scratch too once it has layers: a later COPY must keep the owner
 * an earlier COPY --chown gave a directory, and follow its symlinks. */
static int stage_index(build *b, stage *st)
{
    if (!st->nlayers) return 0;
    if (!st->lidx) {
        /* the longest run of this stage's layers with a saved index */
        for (size_t k = st->nlayers; k > 0 && !st->lidx; k--) {
            char *path = index_path(b, st, k), *tag = index_tag(st, k);
            ib_layer_index *x;
            int r = ib_layer_index_load(&x, path, tag);
            if (r == 0) {
                st->lidx = x;
                st->lidx_layers = k;
                utimensat(AT_FDCWD, path, NULL, 0); /* last use, for prune */
            } else if (r == IB_ECORRUPT) {
                unlink(path); /* derived data: rebuilt below */
            }
            ib_error_clear();
            free(path);
            free(tag);
        }
        if (!st->lidx) st->lidx = ib_layer_index_new();
    }
    uint64_t read = 0;
    for (; st->lidx_layers < st->nlayers; st->lidx_layers++) {
        char *p = ib_store_blob_path(b->store, st->layers[st->lidx_layers].digest);
        int r = ib_layer_index_add(st->lidx, p);
        free(p);
        if (r < 0) return r;
        read += st->layers[st->lidx_layers].size;
    }
    /* Saved only after big reads (a base, a deps layer): the small layers of
     * code steps cost little to add again, and would leave a file per commit. */
    if (read >= INDEX_SAVE_MIN) {
        char *path = index_path(b, st, st->nlayers), *tag = index_tag(st, st->nlayers);
        if (ib_layer_index_save(st->lidx, path, tag) < 0) ib_error_clear(); /* an optimisation only */
        free(path);
        free(tag);
    }
    return 0;
}

static int id_lookup(unsigned *id, unsigned *gid_out, const char *rootfs, const char *file, const char *name);

/* WORKDIR makes its directory when the image lacks it, in a layer of its
 * own, as BuildKit does (dispatchWorkdir: llb.Mkdir with parents, 0755,
 * owned by the USER in effect): an image whose WORKDIR no RUN or COPY touches still has it, and
 * a USER app can write to a WORKDIR it did not create. Existing directories
 * (through the image's symlinks) make no layer. The key holds the USER as
 * written, not its uid: the parent chain fixes /etc/passwd, so a cache hit
 * never needs the rootfs. */
static int workdir_layer(ib_layer_result *lr, int *made, int *hit, char *why, size_t whysz, build *b, stage *st,
                         const ib_df_instr *in)
{
    *made = *hit = 0;
    const char *wd = json_string_value(json_object_get(st->cfg, "WorkingDir"));
    if (!wd || !strcmp(wd, "/") || !*wd) return 0;
    int r = stage_index(b, st);
    if (r < 0) return r;
    char *rel;
    if ((r = ib_layer_index_resolve(&rel, st->lidx, wd)) < 0) return r;
    unsigned m, u, g;
    if (!*rel || (st->lidx && ib_layer_index_dir(st->lidx, rel, &m, &u, &g) == 1)) {
        free(rel);
        return 0;
    }
    const char *user = json_string_value(json_object_get(st->cfg, "User"));
    char chain[IB_DIGEST_STRLEN + 1], key[IB_DIGEST_STRLEN + 1], ind[IB_DIGEST_STRLEN + 1];
    ib_cache_chain(chain, st->diff_ids, st->nlayers);
    ib_strbuf sb = {0};
    ib_strbuf_addf(&sb, "instruction %s\nparent %s\nmkdir %s\nuser %s\ncompression %s mtime=%lld\n", in->original,
                   chain, rel, user ? user : "", ib_compress_name(b->o->compression), (long long)b->layer_mtime);
    ib_digest_buf(ind, sb.s, sb.len);
    ib_cache_key(key, chain, "workdir", ind);
    ib_strbuf_addf(&sb, "key %s\n", key);
    char *locator = step_locator(b, st, in), *note = NULL;
    r = cache_lookup(lr, &note, b, key, locator, sb.s);
    if (note) snprintf(why, whysz, r == 1 ? "%s" : "rebuilt: %s", note);
    free(note);
    if (r == 1) {
        *hit = 1;
        r = 0;
    } else if (r == 0) {
        /* The owner BuildKit's file ops give (llbsolver/file readUser): a
         * numeric user is uid = gid = it; a name takes its passwd uid and
         * primary gid, or 0:0 when the image has no such user; a ":group"
         * by number, or by /etc/group name when there is one. */
        unsigned uid = 0, gid = 0;
        if (user && *user) {
            char *un = ib_xstrdup(user), *gn = strchr(un, ':');
            if (gn) *gn++ = 0;
            int unum = *un && strspn(un, "0123456789") == strlen(un);
            int gnum = !gn || !*gn || strspn(gn, "0123456789") == strlen(gn);
            const char *root = NULL;
            if (!unum || !gnum) r = stage_rootfs(&root, b, st);
            if (r == 0) {
                if (unum) uid = gid = (unsigned)strtoul(un, NULL, 10);
                else if (id_lookup(&uid, &gid, root, "passwd", un) != 0) uid = gid = 0;
                unsigned gg;
                if (gn && *gn && gnum) gid = (unsigned)strtoul(gn, NULL, 10);
                else if (gn && *gn && id_lookup(&gg, NULL, root, "group", gn) == 0) gid = gg;
            }
            free(un);
        }
        ib_layer_builder *lb = r == 0 ? ib_layer_builder_new() : NULL;
        if (lb) {
            stage_ref sref = {b, st, in, 0, NULL};
            if (st->lidx) ib_layer_set_parent_meta(lb, lower_dir, &sref);
            /* every missing component is made and owned by the user; the
             * existing ones keep what they have (parent meta) */
            for (char *q = rel;; q++) {
                if (*q && *q != '/') continue;
                char c = *q;
                *q = 0;
                if (!st->lidx || ib_layer_index_dir(st->lidx, rel, &m, &u, &g) != 1) {
                    ib_layer_entry e = {.path = rel, .type = IB_LE_DIR, .mode = 0755, .uid = uid, .gid = gid};
                    if (r == 0) r = ib_layer_add(lb, &e);
                }
                *q = c;
                if (!c) break;
            }
            if (r == 0) r = ib_layer_write(lr, lb, b->store, b->o->compression, b->o->threads, b->layer_mtime);
            if (r == 0) r = ib_cache_put(b->cache, key, lr, in->original);
            ib_layer_builder_free(lb);
        }
    }
    if (r == 0) {
        *made = 1;
        ib_cache_record(b->cache, locator, sb.s);
        remember_export(b, key, lr, in->original);
    }
    free(locator);
    free(sb.s);
    free(rel);
    return r;
}

/* ---------- RUN ---------- */

/* "name:x:uid:gid:..." lookups in the image's own /etc/passwd and /etc/group. */
static int id_lookup(unsigned *id, unsigned *gid_out, const char *rootfs, const char *file, const char *name)
{
    char *p = ib_xasprintf("/etc/%s", file), *text;
    int r = ib_fs_read_in_root(&text, NULL, rootfs, p, 16 << 20);
    free(p);
    if (r < 0) return IB_ENOTFOUND;
    r = IB_ENOTFOUND;
    size_t nl = strlen(name);
    int numeric = name[0] && strspn(name, "0123456789") == nl;
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *f[4] = {0};
        char *q = line;
        for (int k = 0; k < 4 && q; k++) {
            f[k] = q;
            q = strchr(q, ':');
            if (q) *q++ = 0;
        }
        if (!f[2]) continue;
        if (numeric ? !strcmp(f[2], name) : !strcmp(f[0], name)) {
            *id = (unsigned)strtoul(f[2], NULL, 10);
            if (gid_out && f[3]) *gid_out = (unsigned)strtoul(f[3], NULL, 10);
            r = 0;
            break;
        }
    }
    free(text);
    return r;
}

/* USER "name|uid[:group|gid]" as Docker resolves it: a uid without a group
 * gets the user's primary group from /etc/passwd, or 0. */
static int resolve_user(unsigned *uid, unsigned *gid, const char *rootfs, const char *spec)
{
    *uid = *gid = 0;
    if (!spec || !*spec) return 0;
    char *u = ib_xstrdup(spec), *g = strchr(u, ':');
    if (g) *g++ = 0;
    int numeric = strspn(u, "0123456789") == strlen(u) && *u;
    unsigned pg = 0;
    int r = id_lookup(uid, &pg, rootfs, "passwd", u);
    if (r == IB_ENOTFOUND && numeric) {
        *uid = (unsigned)strtoul(u, NULL, 10);
        r = 0;
    } else if (r == IB_ENOTFOUND) {
        r = ib_error_set(IB_EINVALID, "USER %s: no such user in the image's /etc/passwd", u);
    }
    if (r == 0) {
        *gid = pg;
        if (g && *g) {
            int gnum = strspn(g, "0123456789") == strlen(g);
            if (id_lookup(gid, NULL, rootfs, "group", g) == IB_ENOTFOUND) {
                if (gnum) *gid = (unsigned)strtoul(g, NULL, 10);
                else r = ib_error_set(IB_EINVALID, "USER %s: no such group in the image's /etc/group", spec);
            }
        }
    }
    free(u);
    return r;
}

/* The groups a RUN gets, as BuildKit sets them (executor/oci/user.go GetUser
 * over runc's GetExecUser, then ensureAdditionalGids): the primary gid first,
 * then, when USER names no group, every group of the image's /etc/group that
 * lists the user's name as a member. An unset USER is uid 0 (BuildKit #2428);
 * a numeric uid takes the name of its /etc/passwd entry, and one without an
 * entry has no memberships. *out has at least the primary gid. */
static void user_groups(unsigned **out, size_t *n, const char *rootfs, const char *spec, unsigned gid)
{
    *out = ib_xmalloc(sizeof **out);
    (*out)[0] = gid;
    *n = 1;
    char *u = ib_xstrdup(spec && *spec ? spec : "0"), *g = strchr(u, ':');
    if (g) *g++ = 0;
    char *name = NULL, *text = NULL;
    if (g && *g) goto done; /* an explicit group: no supplementary ones */
    if (*u && strspn(u, "0123456789") == strlen(u)) {
        /* the first entry with that uid, compared as numbers as runc does */
        unsigned long want = strtoul(u, NULL, 10);
        if (ib_fs_read_in_root(&text, NULL, rootfs, "/etc/passwd", 16 << 20) < 0) text = NULL;
        for (char *save = NULL, *line = text ? strtok_r(text, "\n", &save) : NULL; line && !name;
             line = strtok_r(NULL, "\n", &save)) {
            char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
            if (c2 && c2[1] >= '0' && c2[1] <= '9' && strtoul(c2 + 1, NULL, 10) == want)
                name = ib_xstrndup(line, (size_t)(c1 - line));
        }
        free(text);
        text = NULL;
    } else {
        name = ib_xstrdup(u);
    }
    if (!name || ib_fs_read_in_root(&text, NULL, rootfs, "/etc/group", 16 << 20) < 0) text = NULL;
    if (!text) goto done;
    /* name:password:gid:member,member,... */
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *f[4] = {0}, *q = line;
        for (int k = 0; k < 4 && q; k++) {
            f[k] = q;
            q = strchr(q, ':');
            if (q) *q++ = 0;
        }
        if (!f[3] || !*f[2] || strspn(f[2], "0123456789") != strlen(f[2])) continue;
        for (char *s2 = NULL, *m = strtok_r(f[3], ",", &s2); m; m = strtok_r(NULL, ",", &s2)) {
            if (strcmp(m, name)) continue;
            unsigned id = (unsigned)strtoul(f[2], NULL, 10);
            int dup = 0;
            for (size_t i = 0; i < *n; i++) dup |= (*out)[i] == id;
            if (!dup) {
                *out = ib_xrealloc(*out, (*n + 1) * sizeof **out);
                (*out)[(*n)++] = id;
            }
            break;
        }
    }
done:
    ib_error_clear();
    free(text);
    free(name);
    free(u);
}

static char *passwd_home(const char *rootfs, unsigned uid)
{
    char *text, *home = NULL;
    int r = ib_fs_read_in_root(&text, NULL, rootfs, "/etc/passwd", 16 << 20);
    if (r < 0) {
        ib_error_clear();
        return NULL;
    }
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line && !home; line = strtok_r(NULL, "\n", &save)) {
        char *f[7] = {0};
        char *q = line;
        for (int k = 0; k < 7 && q; k++) {
            f[k] = q;
            q = strchr(q, ':');
            if (q) *q++ = 0;
        }
        if (f[2] && f[5] && *f[5] && (unsigned)strtoul(f[2], NULL, 10) == uid) home = ib_xstrdup(f[5]);
    }
    free(text);
    return home;
}

/* A RUN's output: streamed as it comes, and its last non-blank lines kept
 * for a failure, which shows them even with -q (where nothing was streamed):
 * the last line alone is often "Error: 1" or a blank line. */
#define RUN_TAIL 10
typedef struct {
    build *b;
    char tail[RUN_TAIL][512];
    size_t ntail; /* lines seen; the last one is tail[(ntail - 1) % RUN_TAIL] */
} run_out;

static int run_line(void *ctx, const char *line)
{
    run_out *ro = ctx;
    ib_progress_msg(ro->b->prog, "info", "  | %s", line);
    if (line[strspn(line, " \t\r\f\v")]) snprintf(ro->tail[ro->ntail++ % RUN_TAIL], sizeof ro->tail[0], "%s", line);
    return 0;
}

/* The kept lines, before the one-line error (which must stay the last line
 * and the only one starting "imgbuild:"; hence the "  | " prefix). */
static void run_tail_show(const run_out *ro, const char *where, const char *cmd)
{
    if (!ro->ntail) return;
    size_t n = ro->ntail < RUN_TAIL ? ro->ntail : RUN_TAIL;
    ib_progress_msg(ro->b->prog, "output", "------");
    int cl = (int)strcspn(cmd, "\n"); /* a heredoc's first line names the step well enough */
    ib_progress_msg(ro->b->prog, "output", " > %s: %.*s%s (last %zu line%s of output):", where, cl > 200 ? 200 : cl, cmd,
                    cl > 200 ? "..." : "", n, n == 1 ? "" : "s");
    for (size_t i = ro->ntail - n; i < ro->ntail; i++)
        ib_progress_msg(ro->b->prog, "output", "  | %s", ro->tail[i % RUN_TAIL]);
    ib_progress_msg(ro->b->prog, "output", "------");
}

/* "k=v,k=v" option lists of RUN --mount and --secret. */
static const char *opt_get(const char *spec, const char *key, char *buf, size_t n)
{
    size_t kl = strlen(key);
    for (const char *p = spec; p && *p;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len > kl && !strncmp(p, key, kl) && p[kl] == '=') {
            snprintf(buf, n, "%.*s", (int)(len - kl - 1), p + kl + 1);
            return buf;
        }
        if (len == kl && !strncmp(p, key, kl)) {
            snprintf(buf, n, "true");
            return buf;
        }
        p = e ? e + 1 : NULL;
    }
    return NULL;
}

/* --from=NAME (COPY, RUN --mount=type=bind): an earlier stage, else an image
 * (local store or registry), as a context over its root filesystem. */
typedef struct {
    ib_context *ctx;
    stage img; /* when NAME was an image */
    char *name;
} from_src;

static void close_from(from_src *fs)
{
    free(fs->name);
    ib_context_free(fs->ctx);
    stage *t = &fs->img;
    if (t->cfg) {
        json_decref(t->cfg);
        json_decref(t->history);
        json_decref(t->base_annotations);
        for (size_t i = 0; i < t->nlayers; i++) {
            free(t->layers[i].media_type);
            free(t->diff_ids[i]);
        }
        free(t->layers);
        free(t->diff_ids);
        kv_clear(&t->env);
        free(t->os);
        free(t->arch);
        if (t->rootfs) ib_fs_rm_rf(t->rootfs);
        free(t->rootfs);
    }
    memset(fs, 0, sizeof *fs);
}

static int open_from(from_src *fs, build *b, stage *st, const ib_df_instr *in, const char *from)
{
    memset(fs, 0, sizeof *fs);
    int r;
    fs->name = ib_xstrdup(from); /* literal: check_froms refused variables */
    stage *src = find_stage(b, fs->name, st->index);
    if (!src) {
        fs->img.index = 1000 + st->index;
        if ((r = stage_from_image(b, &fs->img, fs->name, in->line)) < 0) {
            char *img_err = ib_xstrdup(ib_error_last());
            r = ib_error_set(IB_EINVALID, "%s --from=%s: no stage of that name before this line, and as an image: %s",
                             ib_df_kind_name(in->kind), fs->name, img_err);
            free(img_err);
            return r;
        }
        src = &fs->img;
    } else if (!src->built) {
        return ib_error_set(IB_EINVALID, "--from=%s: stage is not built", fs->name);
    }
    const char *root;
    if ((r = stage_rootfs(&root, b, src)) < 0) return r;
    return ib_context_open_dir(&fs->ctx, NULL, root, 0);
}

/* RUN --mount=type=bind: a file or directory of the build context (or of
 * from=STAGE|IMAGE) seen at target during the command only: uv's and pip's
 * documented pattern for lock files. Its content is part of the RUN's cache
 * key (a changed uv.lock reruns `uv sync`); the mount is read-only unless
 * rw, and writes to an rw mount are thrown away with the copy. */
typedef struct {
    from_src from;
    ib_context *ctx;
    const ib_ignore *ignore;
    char *src;    /* resolved, relative to the context root ("" = the root) */
    char *target; /* absolute */
    int rw;
    ib_ctx_type type;
    /* bind_walk's listing (what the key holds) and how far bind_copy has
     * matched it: the copy the command sees must be what was keyed. */
    char *walk;
    size_t walk_len, walk_off;
} bind_src;

typedef struct {
    bind_src v[16];
    size_t n;
} bind_list;

static void bind_list_free(bind_list *bl)
{
    for (size_t i = 0; i < bl->n; i++) {
        close_from(&bl->v[i].from);
        free(bl->v[i].src);
        free(bl->v[i].target);
        free(bl->v[i].walk);
    }
    bl->n = 0;
}

static int bind_ignored(const bind_src *bs, const char *rel) { return bs->ignore && *rel && ib_ignore_match(bs->ignore, rel); }

/* One entry of a bind source as the key sees it: bind_walk writes these
 * lines, bind_copy writes them again for what it copies and compares. */
static void bind_line(ib_strbuf *sb, const char *rel, const ib_ctx_stat *cs, const char *id)
{
    ib_strbuf_addf(sb, "%s %d %o %u:%u %s\n", *rel ? rel : ".", (int)cs->type, cs->mode, cs->uid, cs->gid, id);
}

/* One line per entry below rel (sorted, recursive): what the command can see. */
static int bind_walk(ib_strbuf *sb, const bind_src *bs, const char *rel)
{
    ib_ctx_stat cs;
    int r = ib_context_stat(&cs, bs->ctx, rel);
    if (r < 0) return r;
    char id[IB_DIGEST_STRLEN + 1] = "";
    if (cs.type == IB_CT_FILE) {
        char *cid = NULL;
        if ((r = ib_context_content_id(&cid, bs->ctx, rel, &cs)) < 0) return r;
        snprintf(id, sizeof id, "%s", cid);
        free(cid);
    } else if (cs.type == IB_CT_SYMLINK) {
        char *t = NULL;
        if ((r = ib_context_readlink(&t, bs->ctx, rel)) < 0) return r;
        ib_digest_buf(id, t, strlen(t));
        free(t);
    }
    bind_line(sb, rel, &cs, id);
    if (cs.type != IB_CT_DIR) return 0;
    char **names = NULL;
    size_t n = 0;
    if ((r = ib_context_list(&names, &n, bs->ctx, rel)) < 0) return r;
    for (size_t i = 0; i < n && r == 0; i++) {
        char *child = *rel ? ib_xasprintf("%s/%s", rel, names[i]) : ib_xstrdup(names[i]);
        if (!bind_ignored(bs, child)) r = bind_walk(sb, bs, child);
        free(child);
    }
    ib_context_names_free(names, n);
    return r;
}

struct copy_to {
    int fd;
    ib_digester *d; /* hashes the bytes copied; NULL when the id is a git blob id */
};

static int copy_sink(void *ctx, const void *buf, size_t len)
{
    struct copy_to *ct = ctx;
    if (ct->d) ib_digest_update(ct->d, buf, len);
    const char *p = buf;
    while (len) {
        ssize_t w = write(ct->fd, p, len);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return ib_error_errno(IB_ERR, "bind mount copy");
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

static int bind_changed(const char *rel)
{
    return ib_error_set(IB_ERR, "%s changed while the build read it; build again", *rel ? rel : ".");
}

/* The path of a bind_line ("PATH TYPE MODE UID:GID ID", ID may be empty). */
static char *walk_line_path(const char *line, size_t len)
{
    size_t end = len, spaces = 0;
    while (end > 0 && spaces < 4)
        if (line[--end] == ' ') spaces++;
    return ib_xstrndup(line, end);
}

/* Compares one copied entry with the next line of the listing its key was
 * made from. On a mismatch the entry that changed (or appeared, or went) is
 * named and nothing is cached: the command must see what the key says. */
static int bind_check(bind_src *bs, const char *rel, const ib_ctx_stat *cs, const char *id)
{
    ib_strbuf l = {0};
    bind_line(&l, rel, cs, id);
    const char *want = bs->walk + bs->walk_off;
    size_t rest = bs->walk_len - bs->walk_off;
    if (l.len <= rest && !memcmp(want, l.s, l.len)) {
        bs->walk_off += l.len;
        free(l.s);
        return 0;
    }
    free(l.s);
    if (!rest) return bind_changed(rel); /* a new entry after the last one keyed */
    const char *nl = memchr(want, '\n', rest);
    char *was = walk_line_path(want, nl ? (size_t)(nl - want) : rest);
    const char *now = *rel ? rel : ".";
    /* Listings are sorted: the smaller name is the one added or removed. */
    int r = bind_changed(strcmp(was, now) < 0 ? was : now);
    free(was);
    return r;
}

/* The mount source is a private copy: the context may be a git tree (no
 * files on disk), and an rw mount must not write into the user's files. */
static int bind_copy_tree(bind_src *bs, const char *rel, const char *dst)
{
    ib_ctx_stat cs;
    int r = ib_context_stat(&cs, bs->ctx, rel);
    if (r == IB_ENOTFOUND) return bind_changed(rel); /* keyed, then gone */
    if (r < 0) return r;
    if (cs.type == IB_CT_SYMLINK) {
        char *t = NULL;
        char id[IB_DIGEST_STRLEN + 1];
        if ((r = ib_context_readlink(&t, bs->ctx, rel)) < 0) return r;
        ib_digest_buf(id, t, strlen(t));
        r = bind_check(bs, rel, &cs, id);
        if (r == 0 && symlink(t, dst) < 0) r = ib_error_errno(IB_ERR, "bind mount copy %s", dst);
        free(t);
        return r;
    }
    if (cs.type == IB_CT_FILE) {
        struct copy_to ct = {open(dst, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600), NULL};
        if (ct.fd < 0) return ib_error_errno(IB_ERR, "bind mount copy %s", dst);
        /* Git blob ids name immutable objects: only files read from disk
         * (worktree, stages) are hashed again, as they are copied. */
        char id[IB_DIGEST_STRLEN + 1];
        if (cs.id[0]) snprintf(id, sizeof id, "git:%s", cs.id);
        else r = ib_digest_new(&ct.d);
        if (r == 0) r = ib_context_read(bs->ctx, rel, copy_sink, &ct);
        if (r == IB_ENOTFOUND) r = bind_changed(rel);
        if (r == 0 && ct.d) ib_digest_final(id, ct.d);
        if (r == 0) r = bind_check(bs, rel, &cs, id);
        if (r == 0 && (fchmod(ct.fd, cs.mode & 07777) < 0 || fchown(ct.fd, cs.uid, cs.gid) < 0) && geteuid() == 0)
            r = ib_error_errno(IB_ERR, "bind mount copy %s", dst);
        ib_digest_free(ct.d);
        close(ct.fd);
        return r;
    }
    if ((r = bind_check(bs, rel, &cs, "")) < 0) return r;
    if (mkdir(dst, 0700) < 0) return ib_error_errno(IB_ERR, "bind mount copy %s", dst);
    char **names = NULL;
    size_t n = 0;
    if ((r = ib_context_list(&names, &n, bs->ctx, rel)) < 0) return r == IB_ENOTFOUND ? bind_changed(rel) : r;
    for (size_t i = 0; i < n && r == 0; i++) {
        char *child = *rel ? ib_xasprintf("%s/%s", rel, names[i]) : ib_xstrdup(names[i]);
        char *cdst = ib_xasprintf("%s/%s", dst, names[i]);
        if (!bind_ignored(bs, child)) r = bind_copy_tree(bs, child, cdst);
        free(child);
        free(cdst);
    }
    ib_context_names_free(names, n);
    if (r == 0 && (chmod(dst, cs.mode & 07777) < 0 || (geteuid() == 0 && chown(dst, cs.uid, cs.gid) < 0)))
        r = ib_error_errno(IB_ERR, "bind mount copy %s", dst);
    return r;
}

/* Copies the source to dst and proves the copy is what the key describes:
 * every entry matched its keyed line, and none of them went missing. */
static int bind_copy(bind_src *bs, const char *rel, const char *dst)
{
    bs->walk_off = 0;
    int r = bind_copy_tree(bs, rel, dst);
    if (r == 0 && bs->walk_off != bs->walk_len) {
        const char *want = bs->walk + bs->walk_off;
        const char *nl = memchr(want, '\n', bs->walk_len - bs->walk_off);
        char *was = walk_line_path(want, nl ? (size_t)(nl - want) : bs->walk_len - bs->walk_off);
        r = bind_changed(was);
        free(was);
    }
    return r;
}

/* Parses the bind mounts and adds "src <source> <digest>" lines to the
 * RUN's key text (the lines `cache explain` names when one changes). */
static int bind_prepare(bind_list *bl, ib_strbuf *key, build *b, stage *st, const ib_df_instr *in, const char *wd)
{
    memset(bl, 0, sizeof *bl);
    for (size_t i = 0; i < in->nflags; i++) {
        if (strcmp(in->flags[i].name, "mount") || !in->flags[i].value) continue;
        const char *spec = in->flags[i].value;
        char type[32] = "bind", tgt[1024] = "", src[1024] = "", from[512] = "", buf[64];
        opt_get(spec, "type", type, sizeof type);
        if (strcmp(type, "bind")) continue;
        if (!opt_get(spec, "target", tgt, sizeof tgt) && !opt_get(spec, "dst", tgt, sizeof tgt))
            opt_get(spec, "destination", tgt, sizeof tgt);
        if (!*tgt) return ib_error_set(IB_EINVALID, "RUN --mount=%s: a bind mount needs target=", spec);
        if (!opt_get(spec, "source", src, sizeof src) && !opt_get(spec, "src", src, sizeof src)) strcpy(src, ".");
        if (bl->n == 16) return ib_error_set(IB_EINVALID, "RUN: at most 16 bind mounts");
        bind_src *bs = &bl->v[bl->n++];
        bs->rw = opt_get(spec, "rw", buf, sizeof buf) || opt_get(spec, "readwrite", buf, sizeof buf);
        if (opt_get(spec, "from", from, sizeof from)) {
            int r = open_from(&bs->from, b, st, in, from);
            if (r < 0) return r;
            bs->ctx = bs->from.ctx;
        } else {
            bs->ctx = b->ctx;
            bs->ignore = b->ignore;
        }
        char *wdt = tgt[0] == '/' ? ib_xstrdup(tgt) : ib_xasprintf("%s/%s", wd && *wd ? wd : "/", tgt);
        bs->target = ib_copy_clean_abs(wdt);
        free(wdt);
        /* ".." never leaves the context: resolved the way COPY resolves its sources */
        int r = ib_context_resolve(&bs->src, bs->ctx, src, 1);
        ib_ctx_stat cs;
        if (r == 0 && bind_ignored(bs, bs->src)) r = IB_ENOTFOUND;
        if (r == 0) r = ib_context_stat(&cs, bs->ctx, bs->src);
        if (r == IB_ENOTFOUND)
            return ib_error_set(IB_EINVALID, "RUN --mount=%s: source '%s' not found in %s", spec, src,
                                *from ? from : "the build context");
        if (r < 0) return r;
        bs->type = cs.type;
        ib_strbuf walk = {0};
        r = bind_walk(&walk, bs, bs->src);
        if (r == 0) {
            char dg[IB_DIGEST_STRLEN + 1];
            ib_digest_buf(dg, walk.s ? walk.s : "", walk.len);
            ib_strbuf_addf(key, "src %s%s%s %s\nbind %s -> %s%s\n", *from ? from : "", *from ? ":" : "",
                           *bs->src ? bs->src : ".", dg, *bs->src ? bs->src : ".", bs->target, bs->rw ? " rw" : "");
        }
        bs->walk = walk.s; /* bind_copy checks its copy against it */
        bs->walk_len = walk.len;
        if (r < 0) return r;
    }
    return 0;
}

typedef struct {
    ib_sandbox_mount m[16];
    char *owned[32];
    size_t n, nowned;
    int lockfds[16];
    size_t nlocks;
} run_mounts;

static void run_mounts_free(run_mounts *rm)
{
    for (size_t i = 0; i < rm->nowned; i++) free(rm->owned[i]);
    for (size_t i = 0; i < rm->nlocks; i++) close(rm->lockfds[i]);
}

static const char *own(run_mounts *rm, char *s)
{
    if (rm->nowned < 32) rm->owned[rm->nowned++] = s;
    return s;
}

static int dir_is_empty(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return 1;
    struct dirent *e;
    int empty = 1;
    while (empty && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) empty = 0;
    closedir(d);
    return empty;
}

/* Remembers a cache mount for --cache-to and, the first time a build uses an
 * empty one, fills it from --cache-from: a fresh CI runner starts with the
 * wheels the last runner downloaded. A registry that fails is a warning. */
static void use_cache_mount(build *b, const char *hex, const char *dir, const char *target)
{
    char name[33];
    snprintf(name, sizeof name, "%.32s", hex);
    for (size_t i = 0; i < b->nmounts; i++)
        if (!strcmp(b->mounts[i].name, name)) return;
    if (b->nmounts == sizeof b->mounts / sizeof *b->mounts) return;
    struct used_mount *u = &b->mounts[b->nmounts++];
    memcpy(u->name, name, sizeof name);
    u->dir = ib_xstrdup(dir);
    u->target = ib_xstrdup(target);
    if (!dir_is_empty(dir)) return;
    for (size_t i = 0; i < b->nrfrom; i++) {
        if (!b->rfrom[i]) continue;
        uint64_t size = 0;
        double t0 = ib_now();
        int r = ib_remote_cache_get_mount(&size, b->rfrom[i], b->store, name, dir);
        if (r == 1) {
            char hs[32];
            ib_human_size(hs, size);
            ib_progress_msg(b->prog, "info", "cache mount %s imported from %s (%s, %.2fs)", target,
                            ib_remote_cache_name(b->rfrom[i]), hs, ib_now() - t0);
            return;
        }
        if (r < 0)
            ib_progress_msg(b->prog, "warning", "--cache-from %s: cache mount %s: %s", ib_remote_cache_name(b->rfrom[i]),
                            target, ib_error_last());
    }
}

/* RUN --mount=type=cache (a dir under the cache dir that outlives builds and
 * never enters a layer) and type=secret (a --secret file, read-only, never
 * in a layer or a cache key). */
/* Go strconv.ParseBool. */
static int parse_bool(const char *s, int *v)
{
    static const char *const t[] = {"1", "t", "T", "TRUE", "true", "True"};
    static const char *const f[] = {"0", "f", "F", "FALSE", "false", "False"};
    for (size_t i = 0; i < 6; i++) {
        if (!strcmp(s, t[i])) return *v = 1, 0;
        if (!strcmp(s, f[i])) return *v = 0, 0;
    }
    return -1;
}

/* RUN --mount=type=secret (BuildKit dispatchSecret + parseMount): the
 * secret's id is id= or source=, else the target's base name; env=NAME puts
 * the value in the command's environment (no file unless target= is given
 * too); the file is a private copy with mode= (octal, default 0400) and
 * uid=/gid= (default 0). A secret not given with --secret is skipped unless
 * required. Neither the value nor the file enters a layer, the config, the
 * history or a cache key: the key only sees the instruction text. */
static int secret_mount(run_mounts *rm, kvlist *secret_env, build *b, const char *spec, const char *id_opt,
                        const char *tgt, const char *scratch)
{
    char id[512], src_opt[512], env_name[256], buf[64];
    int has_src = opt_get(spec, "source", src_opt, sizeof src_opt) || opt_get(spec, "src", src_opt, sizeof src_opt);
    if (has_src && *id_opt) return ib_error_set(IB_EINVALID, "RUN --mount=%s: both source and id can't be set", spec);
    snprintf(id, sizeof id, "%s", has_src ? src_opt : id_opt);
    if (!*id) {
        if (!*tgt)
            return ib_error_set(IB_EINVALID, "RUN --mount=%s: invalid secret mount. one of source, target required",
                                spec);
        const char *base = strrchr(tgt, '/');
        snprintf(id, sizeof id, "%s", base ? base + 1 : tgt);
    }
    int required = 0;
    if (opt_get(spec, "required", buf, sizeof buf) && parse_bool(buf, &required) < 0)
        return ib_error_set(IB_EINVALID, "RUN --mount=%s: invalid value for required: %s", spec, buf);
    unsigned long mode = 0400, uid = 0, gid = 0;
    const char *const nums[3] = {"mode", "uid", "gid"};
    unsigned long *vals[3] = {&mode, &uid, &gid};
    for (int k = 0; k < 3; k++) {
        if (!opt_get(spec, nums[k], buf, sizeof buf)) continue;
        char *end;
        errno = 0;
        unsigned long v = strtoul(buf, &end, k == 0 ? 8 : 10);
        if (!*buf || *end || errno || v > 0xffffffffUL || buf[0] == '-')
            return ib_error_set(IB_EINVALID, "RUN --mount=%s: invalid value %s for %s", spec, buf, nums[k]);
        *vals[k] = v;
    }
    int as_env = opt_get(spec, "env", env_name, sizeof env_name) != NULL;
    if (as_env && (!*env_name || strchr(env_name, '=')))
        return ib_error_set(IB_EINVALID, "RUN --mount=%s: invalid env name '%s'", spec, env_name);
    const char *src = NULL;
    char sid[512], ssrc[4096];
    for (size_t k = 0; k < b->o->nsecrets && !src; k++)
        if (opt_get(b->o->secrets[k], "id", sid, sizeof sid) && !strcmp(sid, id) &&
            (opt_get(b->o->secrets[k], "src", ssrc, sizeof ssrc) ||
             opt_get(b->o->secrets[k], "source", ssrc, sizeof ssrc)))
            src = ssrc;
    if (!src) {
        if (required)
            return ib_error_set(IB_EINVALID, "RUN --mount=%s: secret '%s' was not given (--secret id=%s,src=FILE)",
                                spec, id, id);
        return 0;
    }
    /* BuildKit's limit for a secret (secretsprovider MaxSecretSize). */
    char *val = NULL;
    size_t len = 0;
    int r = ib_fs_read_all(&val, &len, src, 500 * 1024);
    if (r < 0) return ib_error_wrap(r, "RUN --mount=%s: secret '%s'", spec, id);
    if (as_env) {
        if (memchr(val, 0, len)) {
            free(val);
            return ib_error_set(IB_EINVALID, "RUN --mount=%s: secret '%s' holds a NUL byte and cannot be env %s",
                                spec, id, env_name);
        }
        kv_set(secret_env, env_name, val);
    }
    if (!as_env || *tgt) {
        if (rm->n == 16) {
            free(val);
            return ib_error_set(IB_EINVALID, "RUN: at most 16 --mount");
        }
        if (geteuid() != 0 && (uid || gid)) {
            free(val);
            return ib_error_set(IB_EINVALID, "RUN --mount=%s: uid/gid other than 0 need a root build or subordinate ids", spec);
        }
        char *copy = ib_xasprintf("%s/secret-%zu", scratch, rm->n);
        r = ib_fs_write_atomic(copy, val, len, (int)(mode & 07777));
        if (r == 0 && geteuid() == 0 && chown(copy, (uid_t)uid, (gid_t)gid) < 0)
            r = ib_error_errno(IB_ERR, "secret %s", id);
        if (r < 0) {
            free(copy);
            free(val);
            return r;
        }
        const char *base = strrchr(id, '/');
        ib_sandbox_mount *m = &rm->m[rm->n++];
        m->source = own(rm, copy);
        m->target = own(rm, *tgt ? ib_xstrdup(tgt) : ib_xasprintf("/run/secrets/%s", base ? base + 1 : id));
        m->is_file = 1;
        m->readonly = 1;
    }
    /* the value is a secret: do not leave it in freed heap memory */
    explicit_bzero(val, len);
    free(val);
    return 0;
}

/* A tmpfs size= as BuildKit reads it (go-units RAMInBytes): a number with
 * an optional b, k, m, g or t, any case, "b"/"ib" after the letter allowed,
 * powers of 1024. */
static int ram_size(unsigned long long *out, const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || v < 0 || !(v == v)) return -1;
    char u[4] = "";
    size_t k = 0;
    for (; *end && k < sizeof u - 1; end++) u[k++] = (char)tolower((unsigned char)*end);
    if (*end) return -1;
    static const char units[] = "bkmgt";
    const char *p = *u ? strchr(units, u[0]) : units;
    if (!p || (*u && u[1] && strcmp(u + 1, "b") && strcmp(u + 1, "ib")) || (u[0] == 'b' && u[1])) return -1;
    double mul = 1;
    for (const char *q = units; q < p; q++) mul *= 1024;
    if (v * mul > 1.8e19) return -1;
    *out = (unsigned long long)(v * mul);
    return 0;
}

/* RUN --mount=type=ssh[,id=ID][,target=PATH][,required] (BuildKit
 * dispatchSSH): the --ssh agent socket for ID (default "default") bound at
 * target, default /run/buildkit/ssh_agent.N for the Nth ssh mount of the
 * RUN, and SSH_AUTH_SOCK pointing at the first one, so `pip install
 * git+ssh://…` and `git clone` use the keys of the builder's agent, which
 * never enter a layer or a cache key. An id not given is skipped unless
 * required. The socket is bound as it is: BuildKit's mode/uid/gid (for its
 * proxy socket) are refused rather than silently ignored. */
static int ssh_mount(run_mounts *rm, kvlist *env, build *b, const char *spec, const char *id_opt, const char *tgt,
                     unsigned *nth)
{
    char id[512], buf[64];
    snprintf(id, sizeof id, "%s", *id_opt ? id_opt : "default");
    int required = 0;
    if (opt_get(spec, "required", buf, sizeof buf) && parse_bool(buf, &required) < 0)
        return ib_error_set(IB_EINVALID, "RUN --mount=%s: invalid value for required: %s", spec, buf);
    if (opt_get(spec, "mode", buf, sizeof buf) || opt_get(spec, "uid", buf, sizeof buf) ||
        opt_get(spec, "gid", buf, sizeof buf))
        return ib_error_set(IB_EINVALID,
                            "RUN --mount=%s: mode, uid and gid are not supported for ssh (the agent socket is bound "
                            "as it is)",
                            spec);
    if (*tgt && tgt[0] != '/') return ib_error_set(IB_EINVALID, "RUN --mount=%s: target must be absolute", spec);
    const char *sock = NULL;
    size_t idl = strlen(id);
    for (size_t k = 0; k < b->o->nssh && !sock; k++)
        if (!strncmp(b->o->ssh[k], id, idl) && b->o->ssh[k][idl] == '=') sock = b->o->ssh[k] + idl + 1;
    if (!sock) {
        if (required)
            return ib_error_set(IB_EINVALID, "RUN --mount=%s: ssh agent '%s' was not given (--ssh %s=SOCKET%s)", spec,
                                id, id, strcmp(id, "default") ? "" : " or --ssh default");
        return 0;
    }
    if (rm->n == 16) return ib_error_set(IB_EINVALID, "RUN: at most 16 --mount");
    char *target = *tgt ? ib_xstrdup(tgt) : ib_xasprintf("/run/buildkit/ssh_agent.%u", *nth);
    if (*nth == 0 && !kv_find(env, "SSH_AUTH_SOCK")) kv_set(env, "SSH_AUTH_SOCK", target);
    (*nth)++;
    ib_sandbox_mount *m = &rm->m[rm->n++];
    m->source = own(rm, ib_xstrdup(sock));
    m->target = own(rm, target);
    m->is_file = 1;
    return 0;
}

static int parse_mounts(run_mounts *rm, kvlist *secret_env, build *b, const ib_df_instr *in, const char *scratch)
{
    unsigned nssh = 0;
    memset(rm, 0, sizeof *rm);
    for (size_t i = 0; i < in->nflags; i++) {
        if (strcmp(in->flags[i].name, "mount") || !in->flags[i].value) continue;
        const char *spec = in->flags[i].value;
        char type[32] = "bind", tgt[1024] = "", id[512] = "", buf[256];
        opt_get(spec, "type", type, sizeof type);
        if (!opt_get(spec, "target", tgt, sizeof tgt) && !opt_get(spec, "dst", tgt, sizeof tgt))
            opt_get(spec, "destination", tgt, sizeof tgt);
        opt_get(spec, "id", id, sizeof id);
        if (rm->n == 16) return ib_error_set(IB_EINVALID, "RUN: at most 16 --mount");
        ib_sandbox_mount *m = &rm->m[rm->n];
        if (!strcmp(type, "cache")) {
            if (!*tgt) return ib_error_set(IB_EINVALID, "RUN --mount=%s: a cache mount needs target=", spec);
            if (tgt[0] != '/') return ib_error_set(IB_EINVALID, "RUN --mount=%s: target must be absolute", spec);
            char dg[IB_DIGEST_STRLEN + 1];
            const char *key = *id ? id : tgt;
            ib_digest_buf(dg, key, strlen(key));
            char *dir = ib_xasprintf("%s/mounts/%.32s", ib_store_dir(b->store), ib_digest_hex(dg));
            int r = ib_fs_mkdir_p(dir, 0755);
            if (r < 0) {
                free(dir);
                return r;
            }
            unsigned mode = opt_get(spec, "mode", buf, sizeof buf) ? (unsigned)strtoul(buf, NULL, 8) : 0755;
            unsigned uid = opt_get(spec, "uid", buf, sizeof buf) ? (unsigned)strtoul(buf, NULL, 10) : 0;
            unsigned gid = opt_get(spec, "gid", buf, sizeof buf) ? (unsigned)strtoul(buf, NULL, 10) : 0;
            /* the mtime is its last use, for cache prune --older-than */
            utimensat(AT_FDCWD, dir, NULL, 0);
            if (chmod(dir, mode) < 0 || (geteuid() == 0 && chown(dir, uid, gid) < 0)) {
                r = ib_error_errno(IB_ERR, "cache mount %s", dir);
                free(dir);
                return r;
            }
            /* sharing=locked|private: one build at a time uses it (shared, the default, needs no lock) */
            if (opt_get(spec, "sharing", buf, sizeof buf) && strcmp(buf, "shared") && rm->nlocks < 16) {
                char *lp = ib_xasprintf("%s.lock", dir);
                int fd = open(lp, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
                free(lp);
                if (fd >= 0) {
                    while (flock(fd, LOCK_EX) < 0 && errno == EINTR) {}
                    rm->lockfds[rm->nlocks++] = fd;
                }
            }
            use_cache_mount(b, ib_digest_hex(dg), dir, tgt);
            m->source = own(rm, dir);
            m->target = own(rm, ib_xstrdup(tgt));
            rm->n++;
        } else if (!strcmp(type, "secret")) {
            int r = secret_mount(rm, secret_env, b, spec, id, tgt, scratch);
            if (r < 0) return r;
        } else if (!strcmp(type, "tmpfs")) {
            /* BuildKit: target= and an optional size= */
            if (!*tgt) return ib_error_set(IB_EINVALID, "RUN --mount=%s: a tmpfs mount needs target=", spec);
            if (tgt[0] != '/') return ib_error_set(IB_EINVALID, "RUN --mount=%s: target must be absolute", spec);
            unsigned long long size = 0;
            if (opt_get(spec, "size", buf, sizeof buf) && ram_size(&size, buf) < 0)
                return ib_error_set(IB_EINVALID, "RUN --mount=%s: invalid size %s", spec, buf);
            m->source = NULL;
            m->target = own(rm, ib_xstrdup(tgt));
            m->tmpfs_size = size;
            rm->n++;
        } else if (!strcmp(type, "ssh")) {
            int r = ssh_mount(rm, secret_env, b, spec, id, tgt, &nssh);
            if (r < 0) return r;
        } else if (strcmp(type, "bind")) {
            return ib_error_set(IB_EINVALID,
                                "RUN --mount=type=%s is not supported (bind, cache, secret, ssh and tmpfs are)", type);
        }
    }
    return 0;
}

/* Where a "#!" heredoc script is mounted (BuildKit: /dev/pipes/<name>). */
static char *script_path(const ib_df_heredoc *h)
{
    char *p = ib_xasprintf("/dev/pipes/%s", h->name);
    char *clean = ib_copy_clean_abs(p);
    free(p);
    /* a delimiter like "../x" must not place the file outside /dev/pipes */
    if (strncmp(clean, "/dev/pipes/", 11) || !clean[11]) {
        free(clean);
        clean = ib_xstrdup("/dev/pipes/script");
    }
    return clean;
}

/* What a shell-form RUN hands its shell (BuildKit dispatchRun). Without
 * heredocs, the command line. When the line is exactly one heredoc
 * ("RUN <<EOT"), the body is the script: run by the shell, or, starting with
 * "#!", written to a file (*script) that the shell executes so the kernel
 * picks the interpreter. Otherwise the shell gets the line followed by each
 * body and its delimiter, exactly as a shell script would hold them, and
 * does the heredoc work itself (quoted delimiters, <<- tab stripping,
 * several heredocs, expansion at run time). */
static char *run_shell_text(const ib_df_instr *in, const ib_df_heredoc **script)
{
    const char *cmd = in->nargs ? in->args[0] : "";
    *script = NULL;
    if (!in->nheredocs) return ib_xstrdup(cmd);
    if (ib_df_heredoc_only(cmd)) {
        const ib_df_heredoc *h = &in->heredocs[0];
        if (strncmp(h->content, "#!", 2)) return ib_xstrdup(h->content);
        *script = h;
        return script_path(h);
    }
    ib_strbuf sb = {0};
    ib_strbuf_addf(&sb, "%s", cmd);
    for (size_t i = 0; i < in->nheredocs; i++) ib_strbuf_addf(&sb, "\n%s%s", in->heredocs[i].content, in->heredocs[i].name);
    return sb.s ? sb.s : ib_xstrdup("");
}

/* Sets NAME=value in a NULL-terminated, malloc'd envp, replacing NAME if there. */
static void envp_set(char ***envp, const char *name, const char *value)
{
    size_t n = 0, kl = strlen(name);
    char **e = *envp;
    for (; e[n]; n++) {
        if (!strncmp(e[n], name, kl) && e[n][kl] == '=') {
            explicit_bzero(e[n], strlen(e[n])); /* may have held a secret */
            free(e[n]);
            e[n] = ib_xasprintf("%s=%s", name, value);
            return;
        }
    }
    e = ib_xrealloc(e, (n + 2) * sizeof *e);
    e[n] = ib_xasprintf("%s=%s", name, value);
    e[n + 1] = NULL;
    *envp = e;
}

/* Proxy --build-args reach every RUN without an ARG line, under both the
 * upper- and lower-case names (BuildKit proxyEnvFromBuildArgs matches the
 * name in any case; its executor sets both spellings). They are kept out of
 * the cache key (BuildKit's ExecOp.CacheMap clears ProxyEnv), the config and
 * the history, so a CI proxy never changes the image or misses the cache.
 * A variable the stage sets itself (ENV, or a declared ARG) wins. */
static void add_proxy_env(char ***envp, const build *b, const kvlist *env)
{
    static const char *const names[][2] = {{"HTTP_PROXY", "http_proxy"},
                                           {"HTTPS_PROXY", "https_proxy"},
                                           {"FTP_PROXY", "ftp_proxy"},
                                           {"NO_PROXY", "no_proxy"},
                                           {"ALL_PROXY", "all_proxy"}};
    for (size_t p = 0; p < sizeof names / sizeof *names; p++) {
        /* BuildKit walks the args in sorted order, so the lower-case spelling wins when both are given. */
        const kv *hit = kv_find(&b->build_args, names[p][1]);
        for (size_t i = 0; !hit && i < b->build_args.n; i++)
            if (!strcasecmp(b->build_args.v[i].k, names[p][0])) hit = &b->build_args.v[i];
        if (!hit || !hit->v || !*hit->v) continue;
        for (int c = 0; c < 2; c++)
            if (!kv_find(env, names[p][c])) envp_set(envp, names[p][c], hit->v);
    }
}

static int do_run(ib_layer_result *lr, int *hit, char *why, size_t whysz, build *b, stage *st, const ib_df_instr *in)
{
    int present = 0;
    ib_df_flag_get(in, "security", &present);
    if (present) return ib_error_set(IB_EINVALID, "RUN --security is not supported");
    const char *net = ib_df_flag_get(in, "network", NULL);
    int net_none = b->o->network_none;
    if (net) {
        if (!strcmp(net, "none")) net_none = 1;
        else if (!strcmp(net, "default") || !strcmp(net, "host")) net_none = 0;
        else return ib_error_set(IB_EINVALID, "RUN --network=%s: expected none, default or host", net);
    }
    /* argv: exec form as written; shell form through SHELL (default /bin/sh -c). */
    const ib_df_heredoc *script = NULL;
    size_t na = 0;
    char **argv = ib_xcalloc(in->nargs + 16, sizeof *argv);
    if (in->json_form) {
        for (size_t i = 0; i < in->nargs; i++) argv[na++] = ib_xstrdup(in->args[i]);
    } else {
        json_t *sh = json_object_get(st->cfg, "Shell");
        if (json_is_array(sh) && json_array_size(sh)) {
            size_t i;
            json_t *v;
            json_array_foreach(sh, i, v) if (na < 14) argv[na++] = ib_xstrdup(json_string_value(v) ? json_string_value(v) : "");
        } else {
            argv[na++] = ib_xstrdup("/bin/sh");
            argv[na++] = ib_xstrdup("-c");
        }
        argv[na++] = run_shell_text(in, &script);
    }
    if (!na || !*argv[0]) {
        for (size_t i = 0; i < na; i++) free(argv[i]);
        free(argv);
        return ib_error_set(IB_EINVALID, "RUN: empty command");
    }
    /* Environment: the image's ENV plus the ARGs in scope, and nothing of the host's. */
    kvlist env = {0};
    kv_copy(&env, &st->env);
    for (size_t i = 0; i < st->args.n; i++)
        if (st->args.v[i].v && !kv_find(&env, st->args.v[i].k)) kv_set(&env, st->args.v[i].k, st->args.v[i].v);
    if (!kv_find(&env, "PATH")) kv_set(&env, "PATH", &DEFAULT_PATH[5]);
    char **envp = ib_xcalloc(env.n + 2, sizeof *envp);
    for (size_t i = 0; i < env.n; i++) envp[i] = ib_xasprintf("%s=%s", env.v[i].k, env.v[i].v ? env.v[i].v : "");
    const char *user = json_string_value(json_object_get(st->cfg, "User"));
    const char *wd = json_string_value(json_object_get(st->cfg, "WorkingDir"));
    /* Cache key: the command, its environment, user, workdir, network and the
     * parent layers (BuildKit: RUN keys on the command and its parent). */
    char chain[IB_DIGEST_STRLEN + 1], key[IB_DIGEST_STRLEN + 1], cmdd[IB_DIGEST_STRLEN + 1];
    ib_cache_chain(chain, st->diff_ids, st->nlayers);
    ib_strbuf sb = {0};
    ib_strbuf_addf(&sb, "instruction %s\nparent %s\n", in->original, chain);
    for (size_t i = 0; i < na; i++) ib_strbuf_addf(&sb, "argv %zu:%s\n", strlen(argv[i]), argv[i]);
    /* argv names a "#!" script by its path only: its text belongs in the key. */
    if (script) ib_strbuf_addf(&sb, "script %zu:%s\n", strlen(script->content), script->content);
    for (size_t i = 0; i < env.n; i++) {
        char vd[IB_DIGEST_STRLEN + 1];
        const char *v = env.v[i].v ? env.v[i].v : "";
        ib_digest_buf(vd, v, strlen(v));
        ib_strbuf_addf(&sb, "src $%s %s\n", env.v[i].k, vd);
    }
    ib_strbuf_addf(&sb, "user %s\nworkdir %s\nnetwork %s\ncompression %s mtime=%lld\n", user ? user : "", wd ? wd : "/",
             net_none ? "none" : "host", ib_compress_name(b->o->compression), (long long)b->layer_mtime);
    bind_list bl;
    int r = bind_prepare(&bl, &sb, b, st, in, wd);
    if (r < 0) {
        bind_list_free(&bl);
        kv_clear(&env);
        for (size_t i = 0; i < na; i++) free(argv[i]);
        free(argv);
        for (size_t i = 0; envp[i]; i++) free(envp[i]);
        free(envp);
        free(sb.s);
        return r;
    }
    ib_digest_buf(cmdd, sb.s, sb.len);
    ib_cache_key(key, chain, "run", cmdd);
    /* The recorded inputs (for explaining a later miss) also name the key:
     * same key, no entry means the layer was pruned. Added after keying. */
    ib_strbuf_addf(&sb, "key %s\n", key);
    char *locator = step_locator(b, st, in), *note = NULL;
    r = cache_lookup(lr, &note, b, key, locator, sb.s);
    if (note) snprintf(why, whysz, r == 1 ? "%s" : "rebuilt: %s", note);
    free(note);
    if (r == 1) {
        *hit = 1;
        r = 0;
        goto done;
    }
    if (r < 0) goto done;
    const char *root;
    if ((r = stage_rootfs(&root, b, st)) < 0) goto done;
    unsigned uid, gid;
    if ((r = resolve_user(&uid, &gid, root, user)) < 0) goto done;
    if (!kv_find(&env, "HOME")) {
        /* Docker: HOME from the user's /etc/passwd entry, else / (root: /root). */
        char *home = passwd_home(root, uid);
        size_t n = 0;
        while (envp[n]) n++;
        envp = ib_xrealloc(envp, (n + 2) * sizeof *envp);
        envp[n] = ib_xasprintf("HOME=%s", home ? home : uid == 0 ? "/root" : "/");
        envp[n + 1] = NULL;
        free(home);
    }
    static unsigned seq;
    char *scratch = ib_xasprintf("%s/run-%u", b->tmpdir, seq++);
    if (mkdir(scratch, 0700) < 0) {
        r = ib_error_errno(IB_ERR, "mkdir %s", scratch);
        free(scratch);
        goto done;
    }
    run_out ro = {.b = b};
    run_mounts rm;
    kvlist senv = {0};
    add_proxy_env(&envp, b, &env);
    r = parse_mounts(&rm, &senv, b, in, scratch);
    /* after the proxies: a secret env= wins over everything */
    for (size_t i = 0; i < senv.n; i++) {
        envp_set(&envp, senv.v[i].k, senv.v[i].v);
        explicit_bzero(senv.v[i].v, strlen(senv.v[i].v));
    }
    kv_clear(&senv);
    if (r == 0 && script) {
        /* BuildKit mounts the script read-only at /dev/pipes/<name>, mode 0755. */
        char *sp = ib_xasprintf("%s/heredoc-script", scratch);
        r = rm.n == 16 ? ib_error_set(IB_EINVALID, "RUN: at most 16 --mount")
                       : ib_fs_write_atomic(sp, script->content, strlen(script->content), 0755);
        if (r == 0) {
            ib_sandbox_mount *m = &rm.m[rm.n++];
            m->source = own(&rm, sp);
            m->target = own(&rm, ib_xstrdup(argv[na - 1]));
            m->is_file = 1;
            m->readonly = 1;
        } else {
            free(sp);
        }
    }
    for (size_t i = 0; r == 0 && i < bl.n; i++) {
        if (rm.n == 16) {
            r = ib_error_set(IB_EINVALID, "RUN: at most 16 --mount");
            break;
        }
        char *dst = ib_xasprintf("%s/bind-%zu", scratch, i);
        r = bind_copy(&bl.v[i], bl.v[i].src, dst);
        ib_sandbox_mount *m = &rm.m[rm.n++];
        m->source = own(&rm, dst);
        m->target = own(&rm, ib_xstrdup(bl.v[i].target));
        m->is_file = bl.v[i].type != IB_CT_DIR;
        m->readonly = !bl.v[i].rw;
    }
    if (r < 0) {
        run_mounts_free(&rm);
        ib_fs_rm_rf(scratch);
        free(scratch);
        goto done;
    }
    unsigned *groups;
    size_t ngroups;
    user_groups(&groups, &ngroups, root, user, gid);
    ib_sandbox_opts so = {.lower = root, .scratch = scratch, .argv = argv, .envp = envp, .workdir = wd, .uid = uid,
                          .gid = gid, .groups = groups, .ngroups = ngroups, .network_none = net_none, .mounts = rm.m,
                          .nmounts = rm.n, .output = run_line, .output_ctx = &ro};
    int status = 0, walked = 0;
    char *upper = NULL;
    so.walked = &walked;
    r = ib_sandbox_run(&status, &upper, &so);
    free(groups);
    run_mounts_free(&rm);
    if (r == 0 && status != 0) {
        char where[512];
        snprintf(where, sizeof where, "%s:%d", b->df_name, in->line);
        run_tail_show(&ro, where, in->original);
        const char *last = ro.ntail ? ro.tail[(ro.ntail - 1) % RUN_TAIL] : "";
        r = ib_error_set(IB_EINVALID, "RUN exited with status %d%s%s", status, *last ? "; last output: " : "", last);
    }
    if (r == 0) {
        ib_context *uctx = NULL;
        ib_layer_builder *lb = ib_layer_builder_new();
        r = ib_context_open_dir(&uctx, NULL, upper, 0);
        if (r == 0) r = walked ? ib_sandbox_diff_walk(lb, root, upper, uctx) : ib_sandbox_diff(lb, upper, uctx);
        if (r == 0) r = ib_layer_write(lr, lb, b->store, b->o->compression, b->o->threads, b->layer_mtime);
        if (r == 0) r = ib_cache_put(b->cache, key, lr, in->original);
        ib_layer_builder_free(lb);
        ib_context_free(uctx);
    }
    free(upper);
    ib_fs_rm_rf(scratch);
    free(scratch);
done:
    if (r == 0) {
        ib_cache_record(b->cache, locator, sb.s);
        remember_export(b, key, lr, in->original);
    }
    free(locator);
    free(sb.s);
    bind_list_free(&bl);
    for (size_t i = 0; i < na; i++) free(argv[i]);
    free(argv);
    for (size_t i = 0; envp[i]; i++) {
        explicit_bzero(envp[i], strlen(envp[i])); /* secret env= values */
        free(envp[i]);
    }
    free(envp);
    kv_clear(&env);
    return r;
}

/* moby/sys/signal ParseSignal (Linux), which BuildKit's dispatchStopSignal
 * applies after expansion: a non-zero integer, or a signal name with or
 * without "SIG", any case. A typo fails the build instead of an image whose
 * containers cannot be stopped gracefully. */
static int valid_signal(const char *s)
{
    static const char *const names[] = {"ABRT", "ALRM", "BUS",  "CHLD", "CLD",    "CONT", "FPE",    "HUP",   "ILL",
                                        "INT",  "IO",   "IOT",  "KILL", "PIPE",   "POLL", "PROF",   "PWR",   "QUIT",
                                        "SEGV", "STKFLT", "STOP", "SYS", "TERM",  "TRAP", "TSTP",   "TTIN",  "TTOU",
                                        "URG",  "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ", "RTMIN", "RTMAX"};
    /* Go strconv.Atoi: optional sign, decimal digits, fits an int. */
    const char *d = s + (*s == '+' || *s == '-');
    if (*d && strspn(d, "0123456789") == strlen(d)) {
        errno = 0;
        long long v = strtoll(s, NULL, 10);
        return errno == 0 && v != 0;
    }
    char up[32];
    size_t n = strlen(s);
    if (n >= sizeof up) return 0;
    for (size_t i = 0; i <= n; i++) up[i] = (char)toupper((unsigned char)s[i]);
    const char *name = strncmp(up, "SIG", 3) ? up : up + 3;
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if (!strcmp(name, names[i])) return 1;
    /* RTMIN+1..RTMIN+15 and RTMAX-14..RTMAX-1, spelled exactly so */
    for (int k = 1; k <= 15; k++) {
        char rt[16];
        snprintf(rt, sizeof rt, "RTMIN+%d", k);
        if (!strcmp(name, rt)) return 1;
        snprintf(rt, sizeof rt, "RTMAX-%d", k);
        if (k <= 14 && !strcmp(name, rt)) return 1;
    }
    return 0;
}

static void stage_label(char *out, size_t n, const stage *st)
{
    if (st->name) snprintf(out, n, "%s", st->name);
    else snprintf(out, n, "stage-%zu", st->index);
}

static int run_instr(build *b, stage *st, const ib_df_instr *in, int n, int total)
{
    int r = 0;
    char label[64];
    stage_label(label, sizeof label, st);
    ib_progress_step_begin(b->prog, label, n, total, in->original);
    ib_layer_result lr;
    int made_layer = 0;
    char why[700] = "";
    switch (in->kind) {
    case IB_DF_ENV:
        r = do_kv_list(b, st, in, 1);
        break;
    case IB_DF_LABEL:
        r = do_kv_list(b, st, in, 0);
        break;
    case IB_DF_ARG:
        r = do_arg(b, st, in, &st->args);
        break;
    case IB_DF_MAINTAINER:
        break; /* recorded in the top-level "author" when the config is written */
    case IB_DF_WORKDIR: {
        int made = 0, hit = 0;
        r = do_workdir(b, st, in);
        if (r == 0) r = workdir_layer(&lr, &made, &hit, why, sizeof why, b, st, in);
        if (r == 0 && made) made_layer = hit ? 2 : 1;
        break;
    }
    case IB_DF_USER: {
        char *u;
        if ((r = expand(&u, b, st, in->args[0], in->line)) == 0) json_object_set_new(st->cfg, "User", json_string(u));
        free(u);
        break;
    }
    case IB_DF_STOPSIGNAL: {
        char *s;
        if ((r = expand(&s, b, st, in->args[0], in->line)) == 0) {
            if (valid_signal(s)) json_object_set_new(st->cfg, "StopSignal", json_string(s));
            else r = ib_error_set(IB_EINVALID, "STOPSIGNAL: invalid signal: %s", s);
        }
        free(s);
        break;
    }
    case IB_DF_EXPOSE:
        r = do_expose(b, st, in);
        break;
    case IB_DF_VOLUME:
        r = do_volume(b, st, in);
        break;
    case IB_DF_SHELL: {
        if (!in->json_form) {
            r = ib_error_set(IB_EINVALID, "SHELL requires the arguments to be in JSON form");
            break;
        }
        json_t *a;
        if ((r = json_strings(&a, b, st, in, 0, 0)) == 0) json_object_set_new(st->cfg, "Shell", a);
        break;
    }
    case IB_DF_CMD:
    case IB_DF_ENTRYPOINT: {
        json_t *a;
        if (in->json_form) {
            if ((r = json_strings(&a, b, st, in, 0, 0)) < 0) break;
        } else {
            a = shell_form(st, in->nargs ? in->args[0] : "");
        }
        if (in->kind == IB_DF_CMD) {
            json_object_set_new(st->cfg, "Cmd", a);
            st->cmd_from_base = 0;
        } else {
            json_object_set_new(st->cfg, "Entrypoint", a);
            /* Docker: an ENTRYPOINT resets a CMD inherited from the base image. */
            if (st->cmd_from_base) {
                json_object_del(st->cfg, "Cmd");
                st->cmd_from_base = 0;
            }
        }
        break;
    }
    case IB_DF_HEALTHCHECK:
        r = do_healthcheck(b, st, in);
        break;
    case IB_DF_ONBUILD: {
        json_array_append_new(cfg_member(st->cfg, "OnBuild", 1), json_string(in->args[0]));
        break;
    }
    case IB_DF_RUN: {
        int hit = 0;
        r = do_run(&lr, &hit, why, sizeof why, b, st, in);
        if (r == 0) made_layer = hit ? 2 : 1;
        break;
    }
    case IB_DF_COPY:
    case IB_DF_ADD: {
        ib_copy_env env = {.store = b->store,
                           .tmpdir = b->tmpdir,
                           .ctx = b->ctx,
                           .ignore = b->ignore,
                           .escape = b->df->escape,
                           .lookup = lookup,
                           .epoch = b->layer_mtime,
                           .compression = b->o->compression,
                           .threads = b->o->threads,
                           .df_name = b->df_name};
        scope sc = {b, st};
        env.lookup_ctx = &sc;
        stage_ref sref = {b, st, in, 0, NULL};
        env.produce = produce_layer;
        env.produce_ctx = &sref;
        if ((r = stage_index(b, st)) < 0) break;
        if (st->lidx) {
            env.parent_fn = lower_dir;
            env.parent_ctx = &sref;
            env.lower = st->lidx; /* symlinks in the image: COPY x /bin/x lands in /usr/bin */
        }
        env.workdir = json_string_value(json_object_get(st->cfg, "WorkingDir"));
        /* --from: a previous stage or an image; --chown by name: the stage's own /etc/passwd. */
        const char *from = ib_df_flag_get(in, "from", NULL);
        from_src fsrc = {0};
        if (from) {
            if ((r = open_from(&fsrc, b, st, in, from)) < 0) goto copy_out;
            env.ctx = fsrc.ctx;
            env.ignore = NULL;
        }
        const char *chown = ib_df_flag_get(in, "chown", NULL);
        if (chown) {
            char *cx;
            if ((r = expand(&cx, b, st, chown, in->line)) < 0) goto copy_out;
            const char *root = NULL;
            int numeric = 1;
            for (const char *q = cx; *q; q++)
                if (!isdigit((unsigned char)*q) && *q != ':') numeric = 0;
            if (!numeric && (r = stage_rootfs(&root, b, st)) < 0) {
                free(cx);
                goto copy_out;
            }
            r = ib_copy_parse_chown(&env.uid, &env.gid, cx, root);
            env.chown = 1;
            free(cx);
            if (r < 0) goto copy_out;
        }
        /* ADD --unpack=false (Dockerfile 1.17): a local archive is copied as
         * is. Extraction is the only thing ADD does beyond COPY here (URLs are
         * refused by both), so the copier runs in COPY mode and its message
         * is given back ADD's name. */
        int present = 0;
        const char *unpack = in->kind == IB_DF_ADD ? ib_df_flag_get(in, "unpack", &present) : NULL;
        int no_unpack = present && unpack && !strcasecmp(unpack, "false");
        r = ib_copy_run(&lr, &env, in, in->kind == IB_DF_ADD && !no_unpack);
        if (r < 0 && no_unpack && !strncmp(ib_error_last(), "COPY", 4)) {
            char *m = ib_xstrdup(ib_error_last() + 4);
            r = ib_error_set(r, "ADD%s", m);
            free(m);
        }
        if (r == 0) made_layer = sref.hit ? 2 : 1;
        if (r == 0 && sref.why) snprintf(why, sizeof why, sref.hit ? "%s" : "rebuilt: %s", sref.why);
        free(sref.why);
    copy_out:
        close_from(&fsrc);
        break;
    }
    default:
        r = ib_error_set(IB_EINVALID, "%s: unexpected here", ib_df_kind_name(in->kind));
        break;
    }
    if (r < 0) {
        ib_progress_step_end(b->prog, "ERROR", 0, NULL, NULL);
        return r;
    }
    if (made_layer) {
        push_layer(st, &lr);
        add_history(b, st, in->original, 0);
        if (made_layer == 2) b->cached++;
        else b->built++;
        ib_progress_step_end(b->prog, made_layer == 2 ? "CACHED" : "BUILT", lr.size, lr.digest, why[0] ? why : NULL);
    } else {
        add_history(b, st, in->original, 1);
        ib_progress_step_end(b->prog, "DONE", 0, NULL, NULL);
    }
    return 0;
}

/* Adds "<file>:<line>: " unless the message already names a Dockerfile line. */
static int at_line(build *b, int r, int line)
{
    size_t n = strlen(b->df_name);
    const char *m = ib_error_last();
    if (!strncmp(m, b->df_name, n) && m[n] == ':' && isdigit((unsigned char)m[n + 1])) return r;
    return ib_error_wrap(r, "%s:%d", b->df_name, line);
}

static int build_stage(build *b, stage *st)
{
    const ib_df_instr *from = &b->df->instrs[st->first];
    int total = (int)(st->end - st->first);
    char label[64];
    stage_label(label, sizeof label, st);
    ib_progress_step_begin(b->prog, label, 1, total, from->original);
    int r;
    stage *src = find_stage(b, st->base, st->index);
    if (!strcmp(st->base, "scratch")) {
        stage_init_empty(b, st);
        r = 0;
    } else if (src && src->name && !strcasecmp(src->name, st->base)) {
        stage_from_stage(st, src);
        r = 0;
    } else {
        r = stage_from_image(b, st, st->base, from->line);
    }
    if (r < 0) {
        ib_progress_step_end(b->prog, "ERROR", 0, NULL, NULL);
        return at_line(b, r, from->line);
    }
    ib_progress_step_end(b->prog, "DONE", 0, NULL, NULL);
    for (size_t i = st->first + 1; i < st->end; i++) {
        const ib_df_instr *in = &b->df->instrs[i];
        if ((r = run_instr(b, st, in, (int)(i - st->first) + 1, total)) < 0) return at_line(b, r, in->line);
    }
    st->built = 1;
    return 0;
}

/* ---------- the image ---------- */

static int write_image(build *b, stage *st, char *manifest_digest)
{
    json_t *cfg = json_deep_copy(st->cfg);
    json_t *envj = json_array();
    for (size_t i = 0; i < st->env.n; i++) {
        char *e = ib_xasprintf("%s=%s", st->env.v[i].k, st->env.v[i].v ? st->env.v[i].v : "");
        json_array_append_new(envj, json_string(e));
        free(e);
    }
    json_object_set_new(cfg, "Env", envj);
    json_t *labels = cfg_member(cfg, "Labels", 0);
    json_t *ann = json_object();
    if (b->git.sha[0]) json_object_set_new(ann, "org.opencontainers.image.revision", json_string(b->git.sha));
    if (b->git.origin) json_object_set_new(ann, "org.opencontainers.image.source", json_string(b->git.origin));
    json_object_set_new(ann, "org.opencontainers.image.created", json_string(b->created));
    json_object_update(labels, ann);
    if (st->base_annotations) json_object_update(ann, st->base_annotations);

    json_t *img = json_object();
    json_object_set_new(img, "created", json_string(b->created));
    for (size_t i = st->first; i < st->end; i++)
        if (b->df->instrs[i].kind == IB_DF_MAINTAINER && b->df->instrs[i].nargs)
            json_object_set_new(img, "author", json_string(b->df->instrs[i].args[0]));
    json_object_set_new(img, "architecture", json_string(st->arch));
    json_object_set_new(img, "os", json_string(st->os));
    const char *variant = kv_find(&b->meta, "TARGETVARIANT") ? kv_find(&b->meta, "TARGETVARIANT")->v : NULL;
    if (variant && *variant && !strcmp(st->arch, b->arch)) json_object_set_new(img, "variant", json_string(variant));
    json_object_set_new(img, "config", cfg);
    json_t *diffs = json_array();
    for (size_t i = 0; i < st->nlayers; i++) json_array_append_new(diffs, json_string(st->diff_ids[i]));
    json_object_set_new(img, "rootfs", json_pack("{s:s,s:o}", "type", "layers", "diff_ids", diffs));
    json_object_set(img, "history", st->history);
    char *cfg_s = ib_json_dump(img);
    json_decref(img);
    ib_desc cd = {IB_MT_OCI_CONFIG, {0}, strlen(cfg_s)};
    int r = ib_store_put_blob(cd.digest, b->store, cfg_s, strlen(cfg_s));
    free(cfg_s);
    if (r < 0) {
        json_decref(ann);
        return r;
    }
    json_t *man = json_object();
    json_object_set_new(man, "schemaVersion", json_integer(2));
    json_object_set_new(man, "mediaType", json_string(IB_MT_OCI_MANIFEST));
    json_object_set_new(man, "config", ib_desc_to_json(&cd));
    json_t *lays = json_array();
    for (size_t i = 0; i < st->nlayers; i++) json_array_append_new(lays, ib_desc_to_json(&st->layers[i]));
    json_object_set_new(man, "layers", lays);
    json_object_set_new(man, "annotations", ann);
    char *man_s = ib_json_dump(man);
    json_decref(man);
    r = ib_store_put_blob(manifest_digest, b->store, man_s, strlen(man_s));
    free(man_s);
    return r;
}

/* ---------- setup ---------- */

/* reproducible-builds.org: an integer number of seconds since 1970; anything
 * else is an error rather than silently ignored. Capped at 9999-12-31 so
 * timestamps stay valid RFC 3339. */
static int env_epoch(int64_t *out, int *set)
{
    const char *s = getenv("SOURCE_DATE_EPOCH");
    *set = 0;
    if (!s || !*s) return 0;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*end || errno || v < 0 || v > 253402300799LL)
        return ib_error_set(IB_EUSAGE, "SOURCE_DATE_EPOCH=%s: expected seconds since 1970 (0..253402300799)", s);
    *out = (int64_t)v;
    *set = 1;
    return 0;
}

static char *default_name(const char *ctx_dir)
{
    char *real;
    if (ib_fs_realpath(&real, ctx_dir) < 0) real = ib_xstrdup("image");
    const char *base = strrchr(real, '/');
    base = base && base[1] ? base + 1 : "image";
    char *n = ib_xstrdup(base);
    size_t w = 0;
    for (char *p = n; *p; p++) {
        char c = (char)tolower((unsigned char)*p);
        if (isalnum((unsigned char)c) || ((c == '.' || c == '-' || c == '_') && w > 0)) n[w++] = c;
    }
    while (w > 0 && !isalnum((unsigned char)n[w - 1])) w--;
    n[w] = 0;
    if (!w) {
        free(n);
        n = ib_xstrdup("image");
    }
    free(real);
    return n;
}

static int split_stages(build *b)
{
    const ib_dockerfile *df = b->df;
    size_t i = 0;
    for (; i < df->ninstrs && df->instrs[i].kind != IB_DF_FROM; i++) {
        int r = do_arg(b, NULL, &df->instrs[i], &b->meta);
        if (r < 0) return at_line(b, r, df->instrs[i].line);
    }
    for (; i < df->ninstrs; i++) {
        if (df->instrs[i].kind != IB_DF_FROM) continue;
        b->stages = ib_xrealloc(b->stages, (b->nstages + 1) * sizeof *b->stages);
        stage *st = &b->stages[b->nstages];
        memset(st, 0, sizeof *st);
        st->index = b->nstages++;
        st->first = i;
        const ib_df_instr *in = &df->instrs[i];
        int r = expand(&st->base, b, NULL, in->args[0], in->line);
        if (r < 0) return at_line(b, r, in->line);
        if (in->nargs >= 3) {
            st->name = ib_xstrdup(in->args[2]);
            for (char *p = st->name; *p; p++) *p = (char)tolower((unsigned char)*p);
            for (size_t k = 0; k + 1 < b->nstages; k++)
                if (b->stages[k].name && !strcmp(b->stages[k].name, st->name))
                    return ib_error_set(IB_EINVALID, "%s:%d: duplicate stage name '%s'", b->df_name, in->line, st->name);
        }
    }
    for (size_t k = 0; k < b->nstages; k++)
        b->stages[k].end = k + 1 < b->nstages ? b->stages[k + 1].first : df->ninstrs;
    return 0;
}

/* Marks the stages the target needs: its FROM chain and COPY --from sources.
 * Unneeded stages are skipped, as BuildKit does. */
static int mark_from(build *b, size_t k, const char *from, int line)
{
    /* check_froms has made sure the name is literal: no expansion here. */
    stage *d = find_stage(b, from, k);
    if (d) d->needed = 1;
    else if (find_stage(b, from, b->nstages))
        return ib_error_set(IB_EINVALID, "%s:%d: --from=%s refers to a later stage", b->df_name, line, from);
    return 0;
}

/* BuildKit takes --from literally: COPY --from is refused when ProcessWord
 * with no variables changes it (toCommand), RUN --mount from= when it holds
 * "$" and a character (parseMount). Checked for every stage before anything
 * runs, as BuildKit does while building its stage graph, so an unneeded stage
 * fails the same way and the planner and the step can never disagree. */
static int check_froms(build *b)
{
    for (size_t i = 0; i < b->df->ninstrs; i++) {
        const ib_df_instr *in = &b->df->instrs[i];
        if (in->kind == IB_DF_COPY) {
            const char *from = ib_df_flag_get(in, "from", NULL);
            if (!from) continue;
            char *lit = NULL;
            int same = ib_df_expand(&lit, from, b->df->escape, NULL, NULL, NULL, 0) == 0 && !strcmp(lit, from);
            free(lit);
            if (!same)
                return ib_error_set(IB_EINVALID,
                                    "%s:%d: COPY --from=%s: variable expansion is not supported for --from, define a "
                                    "new stage with FROM using ARG from global scope as a workaround",
                                    b->df_name, in->line, from);
        } else if (in->kind == IB_DF_RUN) {
            for (size_t f = 0; f < in->nflags; f++) {
                char mfrom[512];
                if (strcmp(in->flags[f].name, "mount") || !in->flags[f].value) continue;
                if (!opt_get(in->flags[f].value, "from", mfrom, sizeof mfrom)) continue;
                const char *dollar = strchr(mfrom, '$');
                if (dollar && dollar[1])
                    return ib_error_set(IB_EINVALID,
                                        "%s:%d: RUN --mount=%s: 'from' doesn't support variable expansion, define "
                                        "alias stage instead",
                                        b->df_name, in->line, in->flags[f].value);
            }
        }
    }
    return 0;
}

static int mark_needed(build *b, size_t target)
{
    b->stages[target].needed = 1;
    for (size_t k = target + 1; k-- > 0;) {
        stage *st = &b->stages[k];
        if (!st->needed) continue;
        stage *dep = find_stage(b, st->base, k);
        if (dep && dep->name && !strcasecmp(dep->name, st->base)) dep->needed = 1;
        for (size_t i = st->first; i < st->end; i++) {
            const ib_df_instr *in = &b->df->instrs[i];
            int r = 0;
            if (in->kind == IB_DF_COPY || in->kind == IB_DF_ADD) {
                const char *from = ib_df_flag_get(in, "from", NULL);
                if (from) r = mark_from(b, k, from, in->line);
            } else if (in->kind == IB_DF_RUN) {
                /* RUN --mount=type=bind,from=STAGE */
                for (size_t f = 0; f < in->nflags && r == 0; f++) {
                    char mfrom[512], mtype[32] = "bind";
                    if (strcmp(in->flags[f].name, "mount") || !in->flags[f].value) continue;
                    opt_get(in->flags[f].value, "type", mtype, sizeof mtype);
                    if (!strcmp(mtype, "bind") && opt_get(in->flags[f].value, "from", mfrom, sizeof mfrom))
                        r = mark_from(b, k, mfrom, in->line);
                }
            }
            if (r < 0) return r;
        }
    }
    return 0;
}

static void stage_free(stage *st)
{
    free(st->name);
    free(st->base);
    json_decref(st->cfg);
    json_decref(st->history);
    json_decref(st->base_annotations);
    for (size_t i = 0; i < st->nlayers; i++) {
        free(st->layers[i].media_type);
        free(st->diff_ids[i]);
    }
    free(st->layers);
    free(st->diff_ids);
    kv_clear(&st->env);
    kv_clear(&st->args);
    free(st->os);
    free(st->arch);
    free(st->rootfs);
    ib_layer_index_free(st->lidx);
}

static int load_dockerfile(build *b)
{
    const ib_build_opts *o = b->o;
    char *text = NULL;
    size_t len = 0;
    int r;
    char *ign_rel = NULL; /* <Dockerfile>.dockerignore: repo-relative (commit) or a disk path (--worktree) */
    if (!o->file) {
        b->df_name = ib_xstrdup("Dockerfile");
        r = ib_context_read_all(&text, &len, b->ctx, "Dockerfile", DOCKERFILE_MAX);
        if (r == IB_ENOTFOUND)
            return ib_error_set(IB_EINVALID, "no Dockerfile in the context%s (use -f/--file)",
                                o->worktree ? "" : " at this commit");
        if (r < 0) return r;
    } else {
        b->df_name = ib_xstrdup(o->file);
        if (o->worktree || !b->git.repo_root) {
            r = ib_fs_read_all(&text, &len, o->file, DOCKERFILE_MAX);
        } else {
            /* -f names a file on disk; read that path from the commit instead. */
            char *dir = ib_xstrdup(o->file), *slash = strrchr(dir, '/');
            const char *base = slash ? slash + 1 : o->file;
            if (slash) *slash = 0;
            char *rdir;
            r = ib_fs_realpath(&rdir, slash ? (*dir ? dir : "/") : ".");
            if (r == 0) {
                size_t n = strlen(b->git.repo_root);
                if (strncmp(rdir, b->git.repo_root, n) || (rdir[n] && rdir[n] != '/')) {
                    r = ib_error_set(IB_EINVALID, "-f %s: outside the repository %s; builds read the Dockerfile "
                                                  "from the commit (or use --worktree)",
                                     o->file, b->git.repo_root);
                } else {
                    char *rel = rdir[n] ? ib_xasprintf("%s/%s", rdir + n + 1, base) : ib_xstrdup(base);
                    r = ib_context_read_repo_file(&text, &len, b->ctx, rel, DOCKERFILE_MAX);
                    if (r == IB_ENOTFOUND)
                        r = ib_error_set(IB_EINVALID, "-f %s: not in commit %.12s (%s); commit it or use --worktree",
                                         o->file, b->git.sha, rel);
                    ign_rel = ib_xasprintf("%s.dockerignore", rel);
                    free(rel);
                }
                free(rdir);
            }
            free(dir);
        }
        if (r < 0) {
            free(ign_rel);
            if (strncmp(ib_error_last(), "-f ", 3)) return ib_error_wrap(IB_EINVALID, "-f %s", o->file);
            return r == IB_ENOTFOUND ? IB_EINVALID : r;
        }
        if (!ign_rel) ign_rel = ib_xasprintf("%s.dockerignore", o->file);
    }
    r = ib_df_parse(&b->df, text, len, b->df_name);
    free(text);
    if (r < 0) {
        free(ign_rel);
        return r;
    }
    /* BuildKit: a <Dockerfile>.dockerignore next to the Dockerfile wins over the context's .dockerignore. */
    char *itext = NULL;
    size_t ilen = 0;
    const char *iname = ".dockerignore";
    r = IB_ENOTFOUND;
    if (ign_rel) {
        r = ib_context_read_repo_file(&itext, &ilen, b->ctx, ign_rel, DOCKERFILE_MAX);
        if (r == 0) iname = ign_rel;
        else if (r != IB_ENOTFOUND) r = IB_ENOTFOUND; /* unreadable or a directory: fall back */
    }
    if (r == IB_ENOTFOUND) r = ib_context_read_all(&itext, &ilen, b->ctx, ".dockerignore", DOCKERFILE_MAX);
    if (r == IB_ENOTFOUND) {
        b->ignore = ib_ignore_new_empty();
        r = 0;
    } else if (r == 0) {
        r = ib_ignore_parse(&b->ignore, itext, ilen, iname);
    }
    free(itext);
    free(ign_rel);
    return r;
}

static int parse_platform(build *b)
{
    static char os[32], arch[32], norm[96];
    ib_platform pl;
    int r = ib_platform_parse(&pl, b->o->platform ? b->o->platform : "linux/amd64", "--platform");
    if (r < 0) return r;
    snprintf(os, sizeof os, "%s", pl.os);
    snprintf(arch, sizeof arch, "%s", pl.arch);
    ib_platform_format(norm, sizeof norm, &pl);
    b->os = os;
    b->arch = arch;
    /* as BuildKit: the normalised form (linux/arm/v7 for linux/arm) */
    kv_set(&b->meta, "TARGETPLATFORM", norm);
    kv_set(&b->meta, "TARGETOS", os);
    kv_set(&b->meta, "TARGETARCH", arch);
    kv_set(&b->meta, "TARGETVARIANT", pl.variant);
    kv_set(&b->meta, "BUILDPLATFORM", "linux/amd64");
    kv_set(&b->meta, "BUILDOS", "linux");
    kv_set(&b->meta, "BUILDARCH", "amd64");
    return 0;
}

/* Removing an unpacked root filesystem (100k files) can take seconds on
 * disks that discard synchronously. Rename it out of the way and let a
 * detached child delete it, so the build ends when its output is written;
 * whatever a killed child leaves is swept by the next store open. */
static void discard_dir(const char *dir)
{
    char *trash = ib_xstrdup(dir);
    char *slash = strrchr(trash, '/');
    if (slash && !strncmp(slash + 1, "build-", 6)) memcpy(slash + 1, "trash", 5);
    if (!slash || strcmp(trash, dir) == 0 || rename(dir, trash) < 0) {
        ib_fs_rm_rf(dir);
        free(trash);
        return;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        if (fork() == 0) {
            /* no inherited stdio: whoever reads our output must see EOF now */
            int dn = open("/dev/null", O_RDWR);
            if (dn >= 0) {
                dup2(dn, 0);
                dup2(dn, 1);
                dup2(dn, 2);
            }
            setsid();
            ib_fs_rm_rf(trash);
        }
        _exit(0);
    }
    if (pid > 0) waitpid(pid, NULL, 0);
    else ib_fs_rm_rf(trash);
    free(trash);
}

static const char *const proxy_args[] = {"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY",
                                         "ftp_proxy",  "NO_PROXY",   "no_proxy",    "ALL_PROXY",   "all_proxy"};

int ib_build(ib_build_result *res, const ib_build_opts *o)
{
    memset(res, 0, sizeof *res);
    build bb = {0}, *b = &bb;
    b->tmplock = -1;
    b->o = o;
    b->prog = o->progress;
    const char *ctx_dir = o->context_dir ? o->context_dir : ".";
    int r;
    char *cache = o->cache_dir ? ib_xstrdup(o->cache_dir) : ib_store_default_dir();
    char *name = NULL;
    char *tmp_out = NULL;
    (void)tmp_out;

    for (size_t i = 0; i < o->nbuild_args; i++) {
        const char *a = o->build_args[i];
        const char *eq = strchr(a, '=');
        char *k = eq ? ib_xstrndup(a, (size_t)(eq - a)) : ib_xstrdup(a);
        const char *v = eq ? eq + 1 : getenv(k);
        if (!*k) {
            free(k);
            r = ib_error_set(IB_EUSAGE, "--build-arg '%s': expected KEY=VALUE", a);
            goto out;
        }
        /* "--build-arg K" without a value takes K from the environment, or is ignored. */
        if (v) kv_set(&b->build_args, k, v);
        free(k);
    }
    if ((r = parse_platform(b)) < 0) goto out;
    /* The tarball replaces the output by rename: never do that to a device or a directory. */
    struct stat osb;
    if (o->output && stat(o->output, &osb) == 0 && !S_ISREG(osb.st_mode)) {
        r = ib_error_set(IB_EUSAGE, "-o %s: exists and is not a regular file", o->output);
        goto out;
    }
    if ((r = ib_store_open(&b->store, cache)) < 0) goto out;
    if (o->worktree) r = ib_context_open_dir(&b->ctx, &b->git, ctx_dir, 1);
    else r = ib_context_open_git(&b->ctx, &b->git, ctx_dir, o->rev ? o->rev : "HEAD");
    if (r < 0) goto out;

    int set;
    if ((r = env_epoch(&b->epoch, &set)) < 0) goto out;
    if (!set) b->epoch = b->git.time;
    /* File times in layers: 1980-01-01 (the earliest a ZIP can hold; Python
     * wheel builds copy these files), clamped to SOURCE_DATE_EPOCH when that
     * is earlier. Not the commit time: a layer's bytes must depend only on
     * its content, so a code-only commit reuses the dependency layer and a
     * warm cache gives the same digest as a cold one. */
    b->layer_mtime = b->epoch < 315532800 ? b->epoch : 315532800;
    if ((r = ib_cache_open(&b->cache, b->store)) < 0) goto out;
    if ((r = ib_cache_lock_shared(b->cache)) < 0) goto out;
    {
        ib_reg_opts ro = {0};
        if (o->reg) ro = *o->reg;
        b->rfrom = ib_xcalloc(o->ncache_from ? o->ncache_from : 1, sizeof *b->rfrom);
        for (size_t i = 0; i < o->ncache_from; i++, b->nrfrom++)
            if ((r = ib_remote_cache_open(&b->rfrom[i], o->cache_from[i], &ro, 0)) < 0) goto out;
        if (o->cache_to && (r = ib_remote_cache_open(&b->rto, o->cache_to, &ro, 1)) < 0) goto out;
    }
    ib_rfc3339(b->created, b->epoch);

    if ((r = load_dockerfile(b)) < 0) goto out;
    if ((r = split_stages(b)) < 0) goto out;
    if (b->nstages == 0) {
        r = ib_error_set(IB_EINVALID, "%s: no FROM instruction", b->df_name);
        goto out;
    }
    size_t target = b->nstages - 1;
    if (o->target) {
        stage *t = NULL;
        for (size_t i = 0; i < b->nstages; i++)
            if (b->stages[i].name && !strcasecmp(b->stages[i].name, o->target)) t = &b->stages[i];
        if (!t) {
            r = ib_error_set(IB_EINVALID, "--target '%s': no stage of that name in %s", o->target, b->df_name);
            goto out;
        }
        target = t->index;
    }
    if ((r = check_froms(b)) < 0) goto out;
    if ((r = mark_needed(b, target)) < 0) goto out;

    /* Locked for the build's life: another build's store sweep must never
     * remove it, however long a RUN takes. */
    if ((r = ib_store_scratch_dir(&b->tmpdir, &b->tmplock, b->store, "build-")) < 0) goto out;

    for (size_t i = 0; i <= target; i++) {
        if (!b->stages[i].needed) continue;
        if ((r = build_stage(b, &b->stages[i])) < 0) goto out;
    }
    for (size_t i = 0; i < b->build_args.n; i++) {
        const char *k = b->build_args.v[i].k;
        int used = 0;
        for (size_t u = 0; u < b->nused && !used; u++) used = !strcmp(b->used_args[u], k);
        /* proxies are used by every RUN, and matched in any case as add_proxy_env does */
        for (size_t p = 0; p < sizeof proxy_args / sizeof *proxy_args && !used; p++) used = !strcasecmp(proxy_args[p], k);
        if (!used) ib_progress_msg(b->prog, "warning", "build-arg %s was not consumed by any ARG in %s", k, b->df_name);
    }

    stage *fin = &b->stages[target];
    if ((r = write_image(b, fin, res->digest)) < 0) goto out;
    if (b->rto) {
        double t0 = ib_now();
        for (size_t i = 0; i < b->nexports; i++) {
            struct exported *x = &b->exports[i];
            if ((r = ib_remote_cache_put(b->rto, b->store, x->key, &x->res, x->created_by)) < 0) {
                ib_error_wrap(r, "--cache-to %s", ib_remote_cache_name(b->rto));
                goto out;
            }
        }
        ib_progress_msg(b->prog, "info", "exported %zu cache entr%s to %s (%.2fs)", b->nexports,
                        b->nexports == 1 ? "y" : "ies", ib_remote_cache_name(b->rto), ib_now() - t0);
        for (size_t i = 0; i < b->nmounts; i++) {
            uint64_t size = 0;
            int pushed = 0;
            t0 = ib_now();
            r = ib_remote_cache_put_mount(&size, &pushed, b->rto, b->store, b->mounts[i].name, b->mounts[i].dir,
                                          b->mounts[i].target, b->o->compression, b->o->threads);
            if (r < 0) {
                ib_error_wrap(r, "--cache-to %s: cache mount %s", ib_remote_cache_name(b->rto), b->mounts[i].target);
                goto out;
            }
            char hs[32];
            ib_human_size(hs, size);
            ib_progress_msg(b->prog, "info", "cache mount %s %s %s (%s, %.2fs)", b->mounts[i].target,
                            pushed ? "exported to" : "unchanged in", ib_remote_cache_name(b->rto), hs, ib_now() - t0);
        }
    }

    /* Names: tag sha-<commit>, repository from --name or the context dir. */
    if (o->name) {
        ib_ref ref;
        if ((r = ib_ref_parse(&ref, o->name, NULL)) < 0) {
            r = ib_error_wrap(IB_EUSAGE, "--name");
            goto out;
        }
        int has_tag = ref.tag || ref.digest;
        ib_ref_clear(&ref);
        if (has_tag) {
            r = ib_error_set(IB_EUSAGE, "--name %s: give the repository only; the tag is sha-<commit>", o->name);
            goto out;
        }
        name = ib_xstrdup(o->name);
    } else {
        name = default_name(ctx_dir);
    }
    if (b->git.sha[0]) res->tag = ib_xasprintf("sha-%s%s", b->git.sha, o->worktree ? "-dirty" : "");
    else res->tag = ib_xstrdup("dirty");
    res->name = ib_xasprintf("%s:%s", name, res->tag);
    {
        ib_ref ref;
        if ((r = ib_ref_parse(&ref, res->name, NULL)) < 0) goto out;
        res->full_name = ib_ref_string(&ref);
        ib_ref_clear(&ref);
    }
    memcpy(res->revision, b->git.sha, sizeof res->revision);
    res->nlayers = fin->nlayers;
    if ((r = ib_store_set_ref(b->store, res->full_name, res->digest)) < 0) goto out;
    {
        /* `imgbuild push DEST` without a tarball pushes what was built here last. */
        char *cwd = realpath(".", NULL);
        char *note = ib_xasprintf("%s %s\n", res->digest, res->tag);
        ib_store_set_note(b->store, "last-build", cwd ? cwd : ".", note);
        free(note);
        free(cwd);
    }
    if (o->output) {
        res->output = ib_xstrdup(o->output);
    } else {
        const char *last = strrchr(name, '/');
        res->output = ib_xasprintf("%s.tar", last ? last + 1 : name);
    }
    if ((r = ib_archive_write(res->output, b->store, res->digest, res->tag, res->full_name, b->epoch)) < 0) goto out;
    struct stat sb;
    if (stat(res->output, &sb) == 0) res->output_size = (uint64_t)sb.st_size;
out:
    if (b->tmpdir) discard_dir(b->tmpdir); /* its background removal keeps the lock */
    if (b->tmplock >= 0) close(b->tmplock);
    free(b->tmpdir);
    for (size_t i = 0; i < b->nstages; i++) stage_free(&b->stages[i]);
    free(b->stages);
    kv_clear(&b->meta);
    kv_clear(&b->build_args);
    for (size_t i = 0; i < b->nused; i++) free(b->used_args[i]);
    free(b->used_args);
    for (size_t i = 0; i < b->nkeep; i++) free(b->keep[i]);
    free(b->keep);
    ib_df_free(b->df);
    ib_ignore_free(b->ignore);
    free(b->df_name);
    ib_context_free(b->ctx);
    ib_git_info_clear(&b->git);
    res->cached = b->cached;
    res->built = b->built;
    for (size_t i = 0; i < b->nrfrom; i++) ib_remote_cache_free(b->rfrom[i]);
    for (size_t i = 0; i < b->nmounts; i++) {
        free(b->mounts[i].dir);
        free(b->mounts[i].target);
    }
    free(b->rfrom);
    ib_remote_cache_free(b->rto);
    for (size_t i = 0; i < b->nexports; i++) free(b->exports[i].created_by);
    free(b->exports);
    ib_cache_free(b->cache);
    ib_store_free(b->store);
    free(cache);
    free(name);
    if (r < 0) ib_build_result_clear(res);
    return r;
}

void ib_build_result_clear(ib_build_result *r)
{
    free(r->tag);
    free(r->name);
    free(r->full_name);
    free(r->output);
    memset(r, 0, sizeof *r);
}
