/* COPY and ADD: source matching (globs, .dockerignore, --exclude, symlinks
 * resolved inside the context), Docker's destination rules (resolved through
 * the image's symlinks), --chown/--chmod, heredoc sources, ADD's local
 * archive extraction; the result is one layer. */
#ifndef IB_BUILD_COPY_H
#define IB_BUILD_COPY_H

#include <stdint.h>

#include "build/context.h"
#include "build/dockerfile.h"
#include "build/ignore.h"
#include "layer/index.h"
#include "layer/writer.h"
#include "oci/store.h"

typedef struct {
    ib_store *store;
    const char *tmpdir;        /* scratch space for ADD archives */
    ib_context *ctx;           /* where sources come from */
    const ib_ignore *ignore;   /* .dockerignore for the build context; NULL for --from */
    char escape;
    ib_df_lookup_fn lookup;    /* variables in scope */
    void *lookup_ctx;
    const char *workdir;       /* NULL or "" = "/" */
    int64_t epoch;
    ib_comp_algo compression;
    int threads;
    const char *df_name;
    int chown;
    unsigned uid, gid;
    /* What the stage's layers so far hold (NULL: nothing known below). The
     * destination is resolved through its symlinks (BuildKit: fs.RootPath in
     * the image), an existing directory there is copied into, and parent
     * directories that exist keep their metadata. */
    const ib_layer_index *lower;
    /* Without lower: metadata of directories that exist below (may be NULL);
     * knows no symlinks, so the destination is then taken literally. */
    ib_layer_parent_fn parent_fn;
    void *parent_ctx;
    /* Turns the planned layer into a result (cache lookup, else write). inputs:
     * "src <path> <content id>" lines, for explaining cache misses. NULL: always write. */
    int (*produce)(void *ctx, ib_layer_builder *b, const char *inputs, ib_layer_result *res);
    void *produce_ctx;
} ib_copy_env;

int ib_copy_run(ib_layer_result *res, const ib_copy_env *env, const ib_df_instr *in, int is_add);
/* "uid[:gid]" or "user[:group]"; names are looked up in rootfs/etc/passwd
 * and /etc/group (rootfs NULL: numeric only). A missing gid = the uid. */
int ib_copy_parse_chown(unsigned *uid, unsigned *gid, const char *spec, const char *rootfs);
/* Lexically cleaned absolute path ("/a/b"; "/" for the root). Caller frees. */
char *ib_copy_clean_abs(const char *path);

#endif
