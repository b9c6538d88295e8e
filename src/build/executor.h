/* The build: resolves the commit, parses the Dockerfile, builds the stages
 * the target needs (in order), writes layers and the image into the store
 * and the image tarball to the output path. */
#ifndef IB_BUILD_EXECUTOR_H
#define IB_BUILD_EXECUTOR_H

#include <stddef.h>
#include <stdint.h>

#include "common/progress.h"
#include "layer/compress.h"
#include "oci/digest.h"
#include "registry/client.h"

typedef struct {
    const char *context_dir;  /* default "." */
    const char *file;         /* -f; default <context>/Dockerfile */
    const char *rev;          /* --tag; default "HEAD" */
    int worktree;             /* --worktree */
    const char *name;         /* --name; default: the context directory's name */
    const char *target;       /* --target */
    const char *const *build_args; /* "K=V" or "K" (value from the environment) */
    size_t nbuild_args;
    ib_comp_algo compression;
    const char *cache_dir;    /* NULL: ib_store_default_dir() */
    const char *platform;     /* "linux/amd64" default */
    const char *output;       /* NULL: "<name>.tar" in the current directory */
    int threads;              /* 0 = all cores */
    const ib_reg_opts *reg;   /* transport for pulling base images (NULL: defaults) */
    int no_cache;             /* build every layer (results still go into the cache) */
    int network_none;         /* --network none: RUN gets no network */
    const char *const *secrets; /* "--secret id=ID,src=PATH" values */
    size_t nsecrets;
    const char *const *ssh;   /* "--ssh ID=SOCKET" (the CLI resolved "default" to $SSH_AUTH_SOCK) */
    size_t nssh;
    const char *const *cache_from; /* registry repositories to import cache entries from */
    size_t ncache_from;
    const char *cache_to;     /* registry repository to export this build's cache entries to */
    ib_progress *progress;
} ib_build_opts;

typedef struct {
    char digest[IB_DIGEST_STRLEN + 1]; /* manifest digest */
    char *tag;        /* "sha-<40 hex>" (+ "-dirty") */
    char *name;       /* "monolith:sha-..." as given/defaulted */
    char *full_name;  /* normalised: "docker.io/library/monolith:sha-..." */
    char *output;     /* tarball path */
    uint64_t output_size;
    char revision[41];
    size_t nlayers;
    unsigned cached, built;   /* layer steps served from the cache / built */
} ib_build_result;

int ib_build(ib_build_result *res, const ib_build_opts *o);
void ib_build_result_clear(ib_build_result *r);

#endif
