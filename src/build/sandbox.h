/* RUN without a daemon: the command runs chrooted into an overlayfs view of
 * the stage's root filesystem (lower = the unpacked layers, read-only; upper
 * = a fresh dir that collects every change), in new mount, PID, UTS and IPC
 * namespaces (and network, for --network=none, with lo up), with a fresh
 * /proc, a read-only /sys, the /dev a container runtime gives (runc/containerd
 * defaults: device nodes, fd links, /dev/shm, /dev/pts, /dev/mqueue) and
 * read-only copies of the host's resolv.conf and a hosts file. The upper dir
 * is the snapshot: its cost grows with what the command changed, not with the
 * image size. */
#ifndef IB_BUILD_SANDBOX_H
#define IB_BUILD_SANDBOX_H

#include "layer/writer.h"

typedef int (*ib_line_fn)(void *ctx, const char *line);

/* A host path bound into the run (cache mount dirs, secret files): never
 * part of the layer, whatever the command writes there. */
typedef struct {
    const char *source;         /* NULL: a tmpfs (RUN --mount=type=tmpfs) */
    const char *target;         /* absolute path inside the image */
    int is_file;
    int readonly;
    unsigned long long tmpfs_size; /* bytes, 0 = the kernel's default (half of RAM) */
} ib_sandbox_mount;

typedef struct {
    const char *lower;          /* unpacked root filesystem (never modified) */
    const char *scratch;        /* empty dir on a filesystem that can hold an overlay upper */
    char *const *argv;
    char *const *envp;
    const char *workdir;        /* absolute path inside the image ("/" if NULL) */
    unsigned uid, gid;
    /* Supplementary groups (setgroups). A rootless run cannot set them: its
     * user namespace maps one uid and has setgroups denied. */
    const unsigned *groups;
    size_t ngroups;
    int network_none;
    const ib_sandbox_mount *mounts;
    size_t nmounts;
    ib_line_fn output;          /* each line of combined stdout/stderr */
    void *output_ctx;
    /* Set to 1 when the snapshot is a full copy (no overlayfs here, or
     * $IMGBUILD_SNAPSHOT=walk): then *upper is that copy and the changes
     * come from ib_sandbox_diff_walk against lower. */
    int *walked;
} ib_sandbox_opts;

/* Runs the command; *status = its exit status (128+N if killed by signal N).
 * *upper (caller frees) = the dir holding the changes, valid until scratch is removed. */
int ib_sandbox_run(int *status, char **upper, const ib_sandbox_opts *o);

/* Adds the changes in an overlay upper dir to a layer: files, dirs, symlinks
 * with their metadata; deleted paths as whiteouts; opaque dirs as opaque
 * whiteouts. The builder reads file content from upper when written. */
int ib_sandbox_diff(ib_layer_builder *b, const char *upper, void *upper_ctx);
/* The fallback snapshot: root is a copy of lower the command ran in; every
 * path whose type, mode, owner, size, mtime, xattrs or link target differs is
 * added, every path gone from root becomes a whiteout. Costs a walk of the
 * whole image, which is why overlayfs is preferred. */
int ib_sandbox_diff_walk(ib_layer_builder *b, const char *lower, const char *root, void *root_ctx);

#endif
