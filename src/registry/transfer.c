#include "registry/transfer.h"
#include "common/error.h"
#include "common/fs.h"
#include "oci/image.h"
#include "oci/platform.h"

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- which repository of a registry already holds a blob (for mounts) ---- */

static char *known_path(ib_store *s, const char *host, const char *digest)
{
    char *h = ib_xstrdup(host);
    for (char *p = h; *p; p++)
        if (*p == ':' || *p == '/') *p = '_';
    char *p = ib_xasprintf("%s/registry/%s/%s", ib_store_dir(s), h, ib_digest_hex(digest));
    free(h);
    return p;
}

static char *known_get(ib_store *s, const char *host, const char *digest)
{
    char *p = known_path(s, host, digest), *txt = NULL;
    if (ib_fs_read_all(&txt, NULL, p, 4096) < 0) txt = NULL;
    free(p);
    if (txt) txt[strcspn(txt, "\n")] = 0;
    return txt;
}

static void known_set(ib_store *s, const char *host, const char *digest, const char *repo)
{
    char *p = known_path(s, host, digest);
    char *dir = ib_xstrdup(p);
    *strrchr(dir, '/') = 0;
    if (ib_fs_mkdir_p(dir, 0755) == 0) ib_fs_write_atomic(p, repo, strlen(repo), 0644);
    free(dir);
    free(p);
}

/* ---- a tiny worker pool over a list of jobs ---- */

typedef struct {
    const char *digest;
    uint64_t size;
    char *mount_from;
    int rc;
    char err[512];
} job;

typedef struct {
    job *jobs;
    size_t n;
    size_t next;
    pthread_mutex_t mu;
    ib_registry *reg;
    ib_store *s;
    const char *repo;
    ib_progress *p;
    int push; /* 1 push, 0 fetch */
    int failed;
} pool;

static void on_progress(void *ud, const char *digest, int upload, uint64_t done, uint64_t total)
{
    ib_progress_bar(ud, digest, upload ? "pushing" : "pulling", done, total);
}

static void note(pool *pl, job *j, const char *what, double dt)
{
    ib_progress_bar_done(pl->p, j->digest);
    char hs[32];
    ib_human_size(hs, j->size);
    pthread_mutex_lock(&pl->mu);
    if (dt >= 0) ib_progress_msg(pl->p, "info", "%.19s  %9s  %s  %.2fs", j->digest, hs, what, dt);
    else ib_progress_msg(pl->p, "info", "%.19s  %9s  %s", j->digest, hs, what);
    pthread_mutex_unlock(&pl->mu);
}

static void run_job(pool *pl, job *j)
{
    double t0 = ib_now();
    int rc;
    if (pl->push) {
        int exists = 0;
        rc = ib_registry_blob_exists(&exists, pl->reg, pl->repo, j->digest);
        if (rc == 0 && exists) {
            note(pl, j, "exists", -1);
            return;
        }
        if (rc == 0 && j->mount_from) {
            int mounted = 0;
            rc = ib_registry_blob_mount(&mounted, pl->reg, pl->repo, j->digest, j->mount_from);
            if (rc == 0 && mounted) {
                char *w = ib_xasprintf("mounted from %s", j->mount_from);
                note(pl, j, w, ib_now() - t0);
                free(w);
                known_set(pl->s, ib_registry_host(pl->reg), j->digest, pl->repo);
                return;
            }
            /* Declined or not allowed (401/403 on the source): upload instead. */
            rc = 0;
        }
        if (rc == 0) rc = ib_registry_blob_upload(pl->reg, pl->repo, j->digest, pl->s);
        if (rc == 0) {
            note(pl, j, "uploaded", ib_now() - t0);
            known_set(pl->s, ib_registry_host(pl->reg), j->digest, pl->repo);
        }
    } else {
        if (ib_store_has_blob(pl->s, j->digest, NULL)) {
            note(pl, j, "already in the store", -1);
            return;
        }
        rc = ib_registry_blob_fetch(pl->reg, pl->repo, j->digest, j->size, pl->s);
        if (rc == 0) {
            note(pl, j, "downloaded", ib_now() - t0);
            known_set(pl->s, ib_registry_host(pl->reg), j->digest, pl->repo);
        }
    }
    j->rc = rc;
    if (rc < 0) {
        snprintf(j->err, sizeof j->err, "%s", ib_error_last());
        ib_progress_bar_done(pl->p, j->digest);
    }
}

static void *worker(void *arg)
{
    pool *pl = arg;
    for (;;) {
        pthread_mutex_lock(&pl->mu);
        if (pl->next >= pl->n || pl->failed) {
            pthread_mutex_unlock(&pl->mu);
            return NULL;
        }
        job *j = &pl->jobs[pl->next++];
        pthread_mutex_unlock(&pl->mu);
        run_job(pl, j);
        if (j->rc < 0) {
            pthread_mutex_lock(&pl->mu);
            pl->failed = 1;
            pthread_mutex_unlock(&pl->mu);
        }
    }
}

static int run_pool(pool *pl, int threads)
{
    pthread_mutex_init(&pl->mu, NULL);
    if (threads < 1) threads = 1;
    if ((size_t)threads > pl->n) threads = (int)(pl->n ? pl->n : 1);
    pthread_t *t = ib_xcalloc((size_t)threads, sizeof *t);
    int started = 0;
    for (int i = 0; i < threads; i++)
        if (pthread_create(&t[i], NULL, worker, pl) == 0) started++;
    if (!started) worker(pl);
    for (int i = 0; i < started; i++) pthread_join(t[i], NULL);
    free(t);
    pthread_mutex_destroy(&pl->mu);
    for (size_t i = 0; i < pl->n; i++)
        if (pl->jobs[i].rc < 0) return ib_error_set(pl->jobs[i].rc, "%s", pl->jobs[i].err);
    return 0;
}

/* ---- push ---- */

int ib_push(ib_push_result *res, ib_store *s, const char *manifest_digest, const ib_ref *dest, const char *const *tags,
            size_t ntags, const ib_reg_opts *o, ib_progress *p)
{
    memset(res, 0, sizeof *res);
    double t0 = ib_now();
    ib_image *img;
    int rc = ib_image_load(&img, s, manifest_digest);
    if (rc < 0) return rc;
    char *mbody;
    size_t mlen;
    if ((rc = ib_store_read_blob(&mbody, &mlen, s, manifest_digest, IB_MANIFEST_MAX)) < 0) {
        ib_image_free(img);
        return rc;
    }
    const char *mt = json_string_value(json_object_get(img->manifest, "mediaType"));
    ib_registry *reg;
    if ((rc = ib_registry_open(&reg, dest->registry, o)) < 0) goto out_img;
    ib_registry_want(reg, dest->repo, "pull,push");
    {
        /* Every tag already names this manifest: a manifest only exists once all
         * its blobs do, so there is nothing to check or send (one request). */
        size_t same = 0;
        for (size_t i = 0; i < ntags; i++) {
            char have[IB_DIGEST_STRLEN + 1] = "";
            if (ib_registry_manifest_head(have, reg, dest->repo, tags[i]) == 0 && !strcmp(have, manifest_digest)) same++;
            else break;
        }
        if (ntags && same == ntags) {
            ib_progress_msg(p, "info", "%s: every tag already points at %.19s", dest->repo, manifest_digest);
            res->blobs = res->existed = (unsigned)(img->nlayers + 1);
            res->seconds = ib_now() - t0;
            ib_registry_free(reg);
            goto out_img;
        }
        ib_error_clear();
    }
    size_t n = img->nlayers + 1;
    job *jobs = ib_xcalloc(n, sizeof *jobs);
    for (size_t i = 0; i < n; i++) {
        const ib_desc *d = i == 0 ? &img->config_desc : &img->layers[i - 1];
        /* a layer listed twice is pushed once */
        int dup = 0;
        for (size_t k = 0; k < i; k++) dup |= !strcmp(jobs[k].digest, d->digest);
        jobs[i].digest = d->digest;
        jobs[i].size = d->size;
        if (dup) {
            jobs[i].digest = NULL;
            continue;
        }
        char *from = known_get(s, dest->registry, d->digest);
        if (from && strcmp(from, dest->repo)) {
            jobs[i].mount_from = from;
            ib_registry_want(reg, from, "pull");
        } else {
            free(from);
        }
    }
    /* compact away duplicates */
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (jobs[i].digest) jobs[m++] = jobs[i];
    pool pl = {.jobs = jobs, .n = m, .reg = reg, .s = s, .repo = dest->repo, .p = p, .push = 1};
    ib_registry_on_progress(reg, on_progress, p);
    rc = run_pool(&pl, o && o->jobs > 0 ? o->jobs : 4);
    ib_registry_on_progress(reg, NULL, NULL);
    for (size_t i = 0; rc == 0 && i < ntags; i++) {
        /* A tag that already names this exact manifest is left alone: re-running
         * a CI job must not trip Harbor's immutable-tag rule (412). */
        char have[IB_DIGEST_STRLEN + 1] = "";
        if (ib_registry_manifest_head(have, reg, dest->repo, tags[i]) == 0 && !strcmp(have, manifest_digest)) {
            ib_progress_msg(p, "info", "%s:%s already points at %.19s", dest->repo, tags[i], manifest_digest);
            continue;
        }
        rc = ib_registry_manifest_put(reg, dest->repo, tags[i], mbody, mlen, mt ? mt : IB_MT_OCI_MANIFEST,
                                      manifest_digest);
    }
    ib_registry_stats st;
    ib_registry_get_stats(&st, reg);
    res->blobs = (unsigned)m;
    res->uploaded = st.uploaded;
    res->mounted = st.mounted;
    res->existed = (unsigned)m - st.uploaded - st.mounted;
    res->resumed = st.resumed;
    res->restarted = st.restarted;
    res->bytes_up = st.bytes_up;
    res->seconds = ib_now() - t0;
    for (size_t i = 0; i < n; i++) free(jobs[i].mount_from);
    free(jobs);
    ib_registry_free(reg);
out_img:
    free(mbody);
    ib_image_free(img);
    return rc;
}

/* ---- pull ---- */

/* by its media type, or, when a registry sends none, by schemaVersion 1 */
static int is_schema1(const char *mt, const char *body, size_t len)
{
    if (mt && (!strcmp(mt, "application/vnd.docker.distribution.manifest.v1+json") ||
               !strcmp(mt, "application/vnd.docker.distribution.manifest.v1+prettyjws")))
        return 1;
    json_t *j = json_loadb(body, len, 0, NULL);
    int v1 = json_integer_value(json_object_get(j, "schemaVersion")) == 1;
    json_decref(j);
    return v1;
}

static int is_index(const char *mt) { return !strcmp(mt, IB_MT_OCI_INDEX) || !strcmp(mt, IB_MT_DOCKER_LIST); }

/* Resolves ref to an image manifest (through an index if needed; the
 * index itself goes to *index when asked for, so that a base image pinned
 * by the index digest resolves again without the registry). */
static int resolve(char **body, size_t *len, char *digest, char **index, size_t *index_len, ib_registry *reg,
                   const ib_ref *ref, const char *platform)
{
    char *mt = NULL;
    const char *reference = ref->digest ? ref->digest : ref->tag ? ref->tag : "latest";
    ib_platform want;
    int rc = ib_platform_parse(&want, platform ? platform : "linux/amd64", "--platform");
    if (rc < 0) return rc;
    rc = ib_registry_manifest_get(body, len, &mt, digest, reg, ref->repo, reference);
    if (rc < 0) return rc;
    if (is_schema1(mt, *body, *len)) {
        free(*body);
        *body = NULL;
        free(mt);
        return ib_error_set(IB_EINVALID,
                            "%s/%s%s%s is a Docker schema 1 manifest, which is deprecated and not supported (copy "
                            "it once with a current skopeo or docker to convert it to schema 2)",
                            ref->registry, ref->repo, ref->digest ? "@" : ":", reference);
    }
    if (is_index(mt)) {
        char child[IB_DIGEST_STRLEN + 1];
        rc = ib_platform_pick(child, *body, *len, &want);
        if (rc == 0 && index) {
            *index = *body;
            *index_len = *len;
        } else {
            free(*body);
        }
        *body = NULL;
        free(mt);
        mt = NULL;
        if (rc < 0) return rc;
        rc = ib_registry_manifest_get(body, len, &mt, digest, reg, ref->repo, child);
        if (rc == 0 && is_index(mt)) {
            free(*body);
            *body = NULL;
            rc = ib_error_set(IB_EINVALID, "nested image index is not supported");
        }
    }
    free(mt);
    return rc;
}

/* A single-platform image's config (in the store) against the platform asked
 * for: pull --platform must not store another platform's image silently. */
static int check_platform(ib_store *s, const char *config_digest, const ib_ref *ref, const char *platform)
{
    char *body = NULL;
    size_t len = 0;
    int rc = ib_store_read_blob(&body, &len, s, config_digest, IB_CONFIG_MAX);
    if (rc < 0) return rc;
    json_t *cfg = json_loadb(body, len, 0, NULL);
    free(body);
    const char *os = json_string_value(json_object_get(cfg, "os"));
    const char *arch = json_string_value(json_object_get(cfg, "architecture"));
    const char *variant = json_string_value(json_object_get(cfg, "variant"));
    ib_platform want, have;
    rc = ib_platform_parse(&want, platform ? platform : "linux/amd64", "--platform");
    if (rc == 0 && os && arch) {
        ib_platform_from(&have, os, arch, variant);
        if (ib_platform_score(&want, &have) == 0) {
            char hs[96], *name = ib_ref_string(ref);
            ib_platform_format(hs, sizeof hs, &have);
            rc = ib_error_set(IB_EINVALID, "%s is %s, not %s (no index to choose a platform from)", name, hs,
                              platform ? platform : "linux/amd64");
            free(name);
        }
    }
    json_decref(cfg);
    return rc;
}

int ib_pull(char *digest_out, ib_store *s, const ib_ref *ref, const char *platform, const ib_reg_opts *o,
            ib_progress *p)
{
    return ib_pull_ex(digest_out, s, ref, platform, 0, o, p);
}

int ib_pull_ex(char *digest_out, ib_store *s, const ib_ref *ref, const char *platform, unsigned flags,
               const ib_reg_opts *o, ib_progress *p)
{
    ib_registry *reg;
    int rc = ib_registry_open(&reg, ref->registry, o);
    if (rc < 0) return rc;
    ib_registry_want(reg, ref->repo, "pull");
    char *body = NULL, *index = NULL;
    size_t len = 0, index_len = 0;
    char dg[IB_DIGEST_STRLEN + 1];
    if ((rc = resolve(&body, &len, dg, &index, &index_len, reg, ref, platform)) < 0) goto out;
    json_t *man = json_loadb(body, len, 0, NULL);
    json_t *layers = json_object_get(man, "layers");
    size_t n = json_array_size(layers) + 1;
    job *jobs = ib_xcalloc(n, sizeof *jobs);
    ib_desc *descs = ib_xcalloc(n, sizeof *descs);
    for (size_t i = 0; i < n && rc == 0; i++) {
        rc = ib_desc_from_json(&descs[i], i == 0 ? json_object_get(man, "config") : json_array_get(layers, i - 1));
        jobs[i].digest = descs[i].digest;
        jobs[i].size = descs[i].size;
    }
    if (rc == 0) {
        ib_registry_on_progress(reg, on_progress, p);
        size_t first = 0;
        if ((flags & IB_PULL_EXACT_PLATFORM) && !index) {
            /* No index chose the platform: the config (jobs[0], small) says
             * what the image is before a single layer is downloaded. */
            pool cp = {.jobs = jobs, .n = 1, .reg = reg, .s = s, .repo = ref->repo, .p = p, .push = 0};
            rc = run_pool(&cp, 1);
            if (rc == 0) rc = check_platform(s, descs[0].digest, ref, platform);
            first = 1;
        }
        if (rc == 0) {
            pool pl = {.jobs = jobs + first, .n = n - first, .reg = reg, .s = s, .repo = ref->repo, .p = p, .push = 0};
            rc = run_pool(&pl, o && o->jobs > 0 ? o->jobs : 4);
        }
        ib_registry_on_progress(reg, NULL, NULL);
    }
    for (size_t i = 0; i < n; i++) ib_desc_clear(&descs[i]);
    free(descs);
    free(jobs);
    json_decref(man);
    /* The manifest goes in last: a name never points at an incomplete image. */
    if (rc == 0) rc = ib_store_put_blob(NULL, s, body, len);
    if (rc == 0 && index) rc = ib_store_put_blob(NULL, s, index, index_len);
    ib_image *img = NULL;
    if (rc == 0) rc = ib_image_load(&img, s, dg);
    ib_image_free(img);
    if (rc == 0) {
        char *name = ib_ref_string(ref);
        rc = ib_store_set_ref(s, name, dg);
        free(name);
    }
    if (rc == 0) memcpy(digest_out, dg, sizeof dg);
out:
    free(body);
    free(index);
    ib_registry_free(reg);
    return rc;
}

int ib_fetch_metadata(char **manifest, char **config, char *digest_out, const ib_ref *ref, const char *platform,
                      const ib_reg_opts *o)
{
    ib_registry *reg;
    int rc = ib_registry_open(&reg, ref->registry, o);
    if (rc < 0) return rc;
    ib_registry_want(reg, ref->repo, "pull");
    char *body = NULL;
    size_t len = 0;
    if ((rc = resolve(&body, &len, digest_out, NULL, NULL, reg, ref, platform)) == 0) {
        json_t *man = json_loadb(body, len, 0, NULL);
        ib_desc cd;
        rc = ib_desc_from_json(&cd, json_object_get(man, "config"));
        json_decref(man);
        if (rc == 0) {
            /* Through a throwaway in-memory path: the config is small and verified here. */
            char *dir;
            rc = ib_fs_mkdtemp(&dir, "imgbuild-inspect");
            if (rc == 0) {
                ib_store *tmp;
                if ((rc = ib_store_open(&tmp, dir)) == 0) {
                    rc = ib_registry_blob_fetch(reg, ref->repo, cd.digest, cd.size, tmp);
                    size_t cl;
                    if (rc == 0) rc = ib_store_read_blob(config, &cl, tmp, cd.digest, IB_CONFIG_MAX);
                    ib_store_free(tmp);
                }
                ib_fs_rm_rf(dir);
                free(dir);
            }
            ib_desc_clear(&cd);
        }
        if (rc == 0) *manifest = body;
        else free(body);
    }
    ib_registry_free(reg);
    return rc;
}
