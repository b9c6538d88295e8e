#include "build/sandbox.h"
#include "build/context.h"
#include "common/error.h"
#include "common/userns.h"
#include "common/fs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <spawn.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <grp.h>

/* The paths every RUN gets something mounted over, before its --mount targets. */
enum { MP_PROC, MP_DEV, MP_SYS, MP_RESOLV, MP_HOSTS, MP_FIXED };
static const char *const fixed_mp[MP_FIXED] = {"proc", "dev", "sys", "etc/resolv.conf", "etc/hosts"};

/* A mount point, planned before the fork (no malloc after it): the image
 * path resolved within the image's own tree, and whether the image had it.
 * What we create only to mount over is removed from the upper dir
 * afterwards, so it never ends up in the layer (Docker's behaviour for its
 * own mount points). */
typedef struct {
    char *rel;   /* resolved, relative to the root, no symlink in it */
    int existed; /* the image had it */
    int skip;    /* not mounted: resolv.conf/hosts that resolve to something we cannot mount a file over */
} mpoint;

static int write_proc(const char *path, const char *text, int n)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    int ok = write(fd, text, (size_t)n) == n;
    close(fd);
    return ok ? 0 : -1;
}

static void die(int fd, const char *what)
{
    char buf[512];
    int n = snprintf(buf, sizeof buf, "RUN sandbox: %s: %s\n", what, strerror(errno));
    if (write(fd, buf, (size_t)n) < 0) {}
    _exit(125);
}

/* mkdir -p of root/rel into buf (the last component an empty file when
 * is_file). Never follows a symlink: rel was resolved in the image before the
 * fork, so a link here can only come from an earlier mount (a bind of the
 * context), and before the chroot it would lead to the host's files. Only
 * creates: opening an existing file of the image for writing would copy it
 * up into the layer. */
static int make_path(char *buf, size_t bufsz, const char *root, const char *rel, int is_file)
{
    int n = snprintf(buf, bufsz, "%s/%s", root, rel);
    if (n < 0 || (size_t)n >= bufsz) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *q = buf + strlen(root) + 1;; q++) {
        if (*q && *q != '/') continue;
        char c = *q;
        int last = !c, rc = 0;
        struct stat sb;
        *q = 0;
        if (lstat(buf, &sb) == 0) {
            if (S_ISLNK(sb.st_mode)) errno = ELOOP, rc = -1;
            else if (!last && !S_ISDIR(sb.st_mode)) errno = ENOTDIR, rc = -1;
        } else if (errno != ENOENT) {
            rc = -1;
        } else if (last && is_file) {
            int fd = open(buf, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
            if (fd < 0) rc = -1;
            else close(fd);
        } else if (mkdir(buf, 0755) < 0) {
            rc = -1;
        }
        *q = c;
        if (rc < 0 || last) return rc;
    }
}

/* make_path or die naming the image path (not our scratch path). */
static void place(char *buf, size_t bufsz, const char *root, const mpoint *m, int is_file, int errfd)
{
    if (make_path(buf, bufsz, root, m->rel, is_file) == 0) return;
    char what[512];
    snprintf(what, sizeof what, "mount point /%s", m->rel);
    die(errfd, what);
}

static void bind_dev(const char *dev, const char *name, int errfd)
{
    char src[64], dst[4096];
    snprintf(src, sizeof src, "/dev/%s", name);
    snprintf(dst, sizeof dst, "%s/%s", dev, name);
    int fd = open(dst, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0 || close(fd) < 0 || mount(src, dst, NULL, MS_BIND, NULL) < 0) die(errfd, src);
}

/* The /dev runc and containerd give a container (runc setupDevSymlinks, the
 * containerd default mounts), on a tmpfs so none of it reaches the layer.
 * What a user namespace may refuse (devpts with gid=5, mqueue, a tmpfs)
 * degrades to less rather than failing the RUN. */
static void make_dev(const char *dev, int errfd)
{
    if (mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k") < 0) die(errfd, "mount /dev");
    static const char *const devs[] = {"null", "zero", "full", "random", "urandom", "tty"};
    for (size_t i = 0; i < sizeof devs / sizeof *devs; i++) bind_dev(dev, devs[i], errfd);
    /* /dev/stdout etc. are what `echo x > /dev/stderr` in a build script relies on */
    static const char *const links[][2] = {{"fd", "/proc/self/fd"},         {"stdin", "/proc/self/fd/0"},
                                           {"stdout", "/proc/self/fd/1"},   {"stderr", "/proc/self/fd/2"},
                                           {"ptmx", "pts/ptmx"}};
    char p[4096];
    for (size_t i = 0; i < sizeof links / sizeof *links; i++) {
        snprintf(p, sizeof p, "%s/%s", dev, links[i][0]);
        if (symlink(links[i][1], p) < 0) die(errfd, links[i][0]);
    }
    /* A tmpfs of its own, mode 1777 whatever the umask, 64 MiB (containerd's default). */
    snprintf(p, sizeof p, "%s/shm", dev);
    if (mkdir(p, 0755) < 0) die(errfd, "/dev/shm");
    if (mount("shm", p, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k") < 0) chmod(p, 01777);
    /* A private devpts instance for ptys (openpty, script, ssh -t). gid=5 is
     * the tty group; a rootless user namespace does not map it and the
     * kernel then refuses the option, so try again without. */
    snprintf(p, sizeof p, "%s/pts", dev);
    if (mkdir(p, 0755) < 0) die(errfd, "/dev/pts");
    if (mount("devpts", p, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5") < 0 &&
        mount("devpts", p, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620") < 0) {
        rmdir(p); /* no ptys rather than a /dev/ptmx that leads nowhere */
        snprintf(p, sizeof p, "%s/ptmx", dev);
        unlink(p);
    }
    snprintf(p, sizeof p, "%s/mqueue", dev);
    if (mkdir(p, 0755) < 0) die(errfd, "/dev/mqueue");
    if (mount("mqueue", p, "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) rmdir(p);
}

/* Read-only /sys, as containerd mounts it. A user namespace may mount sysfs
 * only in a network namespace of its own (--network=none); otherwise the
 * host's /sys is bound and made read-only, and where even that is refused
 * the RUN gets an empty /sys rather than a writable one. */
static void make_sys(const char *sys)
{
    if (mount("sysfs", sys, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) == 0) return;
    if (mount("/sys", sys, NULL, MS_BIND | MS_REC, NULL) < 0) return;
    /* recursive: the host's /sys has submounts (cgroup, securityfs, ...) */
    struct mount_attr a = {.attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC};
    if (mount_setattr(AT_FDCWD, sys, AT_RECURSIVE, &a, sizeof a) < 0) umount2(sys, MNT_DETACH);
}

/* runc brings lo up in a new network namespace: without it, --network=none
 * would not even have 127.0.0.1 (test servers, local sockets). */
static int loopback_up(void)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
    int r = ioctl(s, SIOCGIFFLAGS, &ifr);
    if (r == 0) {
        ifr.ifr_flags |= IFF_UP;
        r = ioctl(s, SIOCSIFFLAGS, &ifr);
    }
    close(s);
    return r;
}

/* pid 1 of the new PID namespace: builds the root and execs the command.
 * No malloc here: another thread may have held the allocator's lock at fork. */
static void child(const ib_sandbox_opts *o, const char *merged, const mpoint *mp, const gid_t *groups,
                  const char *resolv, const char *hosts, int errfd)
{
    /* First thing: the mount points and WORKDIR dirs made below, and every
     * file the command creates, get Docker's umask 022, never the one
     * imgbuild was started with (a layer must not depend on the builder). */
    umask(022);
    char p[4096];
    if (!mp[MP_PROC].skip) {
        place(p, sizeof p, merged, &mp[MP_PROC], 0, errfd);
        if (mount("proc", p, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) die(errfd, "mount /proc");
    }
    if (!mp[MP_DEV].skip) {
        place(p, sizeof p, merged, &mp[MP_DEV], 0, errfd);
        make_dev(p, errfd);
    }
    if (!mp[MP_SYS].skip) {
        place(p, sizeof p, merged, &mp[MP_SYS], 0, errfd);
        make_sys(p);
    }
    const char *files[2] = {resolv, hosts};
    for (int i = 0; i < 2; i++) {
        const mpoint *m = &mp[MP_RESOLV + i];
        if (m->skip) continue;
        place(p, sizeof p, merged, m, 1, errfd);
        if (mount(files[i], p, NULL, MS_BIND, NULL) < 0) die(errfd, fixed_mp[MP_RESOLV + i]);
        /* read-only: a RUN that writes it must not change the host's copy or ours */
        mount(NULL, p, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY, NULL);
    }
    for (size_t i = 0; i < o->nmounts; i++) {
        const ib_sandbox_mount *m = &o->mounts[i];
        place(p, sizeof p, merged, &mp[MP_FIXED + i], m->is_file, errfd);
        if (!m->source) {
            /* no malloc here: the options fit a stack buffer */
            char opts[64];
            if (m->tmpfs_size) snprintf(opts, sizeof opts, "mode=1777,size=%llu", m->tmpfs_size);
            else snprintf(opts, sizeof opts, "mode=1777");
            if (mount("tmpfs", p, "tmpfs", MS_NOSUID | MS_NODEV, opts) < 0) die(errfd, m->target);
            continue;
        }
        if (mount(m->source, p, NULL, MS_BIND | MS_REC, NULL) < 0) die(errfd, m->target);
        if (m->readonly) mount(NULL, p, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY, NULL);
    }
    if (o->network_none && loopback_up() < 0) die(errfd, "bring up lo in the new network namespace");
    if (sethostname("imgbuild", 8) < 0) {}
    if (chroot(merged) < 0) die(errfd, "chroot");
    const char *wd = o->workdir && *o->workdir ? o->workdir : "/";
    /* A missing WORKDIR is created before the command, owned by the USER
     * (runc MkdirAllAndChown, BuildKit dispatchWorkdir): a non-root user can
     * write where it works. Dirs that existed keep their owner. */
    char w[4096];
    snprintf(w, sizeof w, "%s", wd);
    for (char *s = w + 1;; s++) {
        if (*s && *s != '/') continue;
        char c = *s;
        *s = 0;
        if (mkdir(w, 0755) == 0 && lchown(w, o->uid, o->gid) < 0) die(errfd, "chown WORKDIR");
        *s = c;
        if (!c) break;
    }
    if (chdir(wd) < 0) die(errfd, "chdir WORKDIR");
    /* EPERM: a rootless user namespace has setgroups denied (one uid mapped) */
    if (setgroups(o->ngroups, groups) < 0 && errno != EPERM) die(errfd, "setgroups");
    if (setgid(o->gid) < 0) die(errfd, "setgid");
    if (setuid(o->uid) < 0) die(errfd, "setuid");
    /* set after setuid, which clears it: a builder killed with -9 takes its
     * command (PID 1 of the sandbox, so the whole namespace) with it */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    /* PATH lookup uses the image's PATH, not ours. */
    extern char **environ;
    environ = (char **)o->envp;
    execvp(o->argv[0], o->argv);
    if (errno == ENOENT) {
        char buf[512];
        int n = snprintf(buf, sizeof buf, "RUN: %s: not found in the image%s\n", o->argv[0],
                         strcmp(o->argv[0], "/bin/sh") ? "" : " (an image FROM scratch has no shell)");
        if (write(errfd, buf, (size_t)n) < 0) {}
        _exit(127);
    }
    die(errfd, o->argv[0]);
}

/* 1 = overlayfs works here, 0 = use the copy-and-walk fallback, -1 = not tried yet */
static int overlay_ok = -1;

static int copy_tree(const char *from, const char *to)
{
    char *src = ib_xasprintf("%s/.", from);
    const char *argv[] = {"cp", "-a", "--", src, to, NULL};
    pid_t pid;
    int rc = posix_spawnp(&pid, "cp", NULL, NULL, (char *const *)argv, environ);
    free(src);
    if (rc != 0) {
        errno = rc;
        return ib_error_errno(IB_ERR, "cp -a %s", from);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) return ib_error_set(IB_ERR, "cp -a %s %s failed", from, to);
    return 0;
}

/* Resolves a mount point as the kernel would inside the chroot: the image's
 * symlinks followed within the image, ".." stopping at its root, never
 * anything of the host's. A base whose /etc/resolv.conf links to
 * ../run/systemd/resolve/stub-resolv.conf, or to an absolute path, gets the
 * file mounted where the link leads, made there if the link dangles (as
 * runc resolves mount destinations; BuildKit >= 0.12). resolv.conf and hosts
 * (want_file) that lead to anything but a file, or nowhere, are left as the
 * image has them; for a --mount target (!fixed) that is an error. */
static int plan_mpoint(mpoint *m, const char *lower, const char *path, int want_file, int fixed)
{
    int r = ib_fs_resolve_in_root(&m->rel, lower, path, 1);
    if (r < 0 || !*m->rel) {
        if (fixed) {
            ib_error_clear();
            m->skip = 1;
            return 0;
        }
        return r < 0 ? r : ib_error_set(IB_EINVALID, "RUN --mount target %s: leads to the image's root", path);
    }
    char *lp = ib_fs_join(lower, m->rel);
    struct stat sb;
    m->existed = lstat(lp, &sb) == 0;
    if (want_file && (m->existed ? !S_ISREG(sb.st_mode) : errno != ENOENT)) m->skip = 1;
    free(lp);
    return 0;
}

static int same_xattrs(const char *a, const char *b);

/* overlayfs marks of a dir in the upper dir: "opaque" (replaced) or
 * "redirect" (renamed); user.* in a rootless (userxattr) mount. */
static int overlay_marked(const char *path, const char *what)
{
    static const char *const ns[] = {"trusted", "user"};
    for (size_t i = 0; i < 2; i++) {
        char name[64], v[4];
        snprintf(name, sizeof name, "%s.overlay.%s", ns[i], what);
        if (getxattr(path, name, v, sizeof v) >= 0 || errno == ERANGE) return 1; /* ERANGE: set, longer than v */
    }
    return 0;
}

/* A dir of the image that overlayfs copied up only because a mount point was
 * made (and since removed) in it: same mode, owner and xattrs as in the
 * image, neither replaced nor renamed. Only its times moved, and a layer's
 * times are clamped anyway, so the copy carries nothing; left there, every
 * RUN's layer would list etc/ (no /etc/hosts in the image), root/ (a cache
 * mount at /root/.cache/pip) or run/ (a secret). BuildKit's MountStubsCleaner
 * restores the times so that its differ skips such dirs. */
static int unchanged_dir(const char *up, const char *low)
{
    struct stat us, ls;
    if (lstat(up, &us) < 0 || lstat(low, &ls) < 0 || !S_ISDIR(us.st_mode) || !S_ISDIR(ls.st_mode)) return 0;
    if ((us.st_mode & 07777) != (ls.st_mode & 07777) || us.st_uid != ls.st_uid || us.st_gid != ls.st_gid) return 0;
    return !overlay_marked(up, "opaque") && !overlay_marked(up, "redirect") && same_xattrs(up, low);
}

/* Removes a mount point we made at rel (an empty dir or an empty file), the
 * parents made for it while empty, and then, from an overlay upper dir, the
 * image's dirs above it that are empty and unchanged. A walked copy needs no
 * such care (its diff ignores dir times), and there the image's own dirs must
 * stay: removing one would turn it into a whiteout. */
static void unstub(const char *lower, const char *upper, const char *rel, int walk)
{
    char *up = ib_fs_join(upper, rel);
    struct stat sb;
    int gone = 0;
    if (lstat(up, &sb) == 0) {
        if (S_ISDIR(sb.st_mode)) gone = rmdir(up) == 0; /* only if empty */
        else if (S_ISREG(sb.st_mode) && sb.st_size == 0) gone = unlink(up) == 0;
    }
    free(up);
    char *t = ib_xstrdup(rel);
    for (char *slash = strrchr(t, '/'); gone && slash; slash = strrchr(t, '/')) {
        *slash = '\0';
        char *low = ib_fs_join(lower, t), *upp = ib_fs_join(upper, t);
        if (lstat(low, &sb) < 0) gone = lstat(upp, &sb) == 0 && S_ISDIR(sb.st_mode) && rmdir(upp) == 0;
        else gone = !walk && unchanged_dir(upp, low) && rmdir(upp) == 0;
        free(low);
        free(upp);
    }
    free(t);
}

static int run_once(int *status, char **upper_out, const ib_sandbox_opts *o, int walk)
{
    /* walk: "upper" is a full copy of lower that the command runs in */
    char *upper = ib_xasprintf("%s/%s", o->scratch, walk ? "root" : "upper"), *work = ib_xasprintf("%s/work", o->scratch);
    char *merged = walk ? ib_xstrdup(upper) : ib_xasprintf("%s/merged", o->scratch);
    char *resolv = ib_xasprintf("%s/resolv.conf", o->scratch), *hosts = ib_xasprintf("%s/hosts", o->scratch);
    int r = 0;
    mpoint *mp = NULL;
    size_t nmp = 0;
    gid_t *gids = NULL;
    struct stat lsb;
    /* The merged root takes the upper root's mode: give it the image's, not our umask's. */
    if (mkdir(upper, 0755) < 0 || (!walk && (mkdir(work, 0700) < 0 || mkdir(merged, 0755) < 0)) ||
        stat(o->lower, &lsb) < 0 || chmod(upper, lsb.st_mode & 07777) < 0 ||
        (lchown(upper, lsb.st_uid, lsb.st_gid) < 0 && geteuid() == 0)) {
        r = ib_error_errno(IB_ERR, "sandbox dirs in %s", o->scratch);
        goto out;
    }
    if (walk && (r = copy_tree(o->lower, upper)) < 0) goto out;
    {
        /* The build sees the host's resolvers (as docker build does), through a copy. */
        char *rc = NULL;
        size_t rl = 0;
        if (ib_fs_read_all(&rc, &rl, "/etc/resolv.conf", 1 << 16) < 0) {
            rc = ib_xstrdup("");
            rl = 0;
        }
        ib_error_clear();
        const char *h = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\timgbuild\n";
        if ((r = ib_fs_write_atomic(resolv, rc, rl, 0644)) < 0 || (r = ib_fs_write_atomic(hosts, h, strlen(h), 0644)) < 0) {
            free(rc);
            goto out;
        }
        free(rc);
    }
    nmp = MP_FIXED + o->nmounts;
    mp = ib_xcalloc(nmp, sizeof *mp);
    for (size_t i = 0; r == 0 && i < nmp; i++)
        r = plan_mpoint(&mp[i], o->lower, i < MP_FIXED ? fixed_mp[i] : o->mounts[i - MP_FIXED].target,
                        i == MP_RESOLV || i == MP_HOSTS, i < MP_FIXED);
    if (r < 0) goto out;
    /* setgroups wants gid_t; converted here, as the child may not malloc */
    gids = ib_xcalloc(o->ngroups + 1, sizeof *gids);
    for (size_t i = 0; i < o->ngroups; i++) gids[i] = (gid_t)o->groups[i];
    int out[2], err[2];
    if (pipe2(out, O_CLOEXEC) < 0) {
        r = ib_error_errno(IB_ERR, "pipe");
        goto out;
    }
    if (pipe2(err, O_CLOEXEC) < 0) {
        close(out[0]);
        close(out[1]);
        r = ib_error_errno(IB_ERR, "pipe");
        goto out;
    }
    /* Rootless: a user namespace maps our uid to root inside; overlayfs then
     * keeps its whiteout/opaque marks in user.* xattrs (kernel >= 5.11). */
    int rootless = geteuid() != 0;
    uid_t ruid = getuid();
    gid_t rgid = getgid();
    if (rootless && (o->uid || o->gid)) {
        close(out[0]);
        close(out[1]);
        close(err[0]);
        close(err[1]);
        r = ib_error_set(IB_EINVALID,
                         "RUN as USER %u:%u needs a root build or subordinate ids: a rootless RUN without "
                         "/etc/subuid and /etc/subgid ranges (and newuidmap) maps one uid (root)",
                         o->uid, o->gid);
        goto out;
    }
    /* root of a user namespace (subordinate ids, common/userns.h) may not set trusted.* either */
    char *opts = ib_xasprintf("lowerdir=%s,upperdir=%s,workdir=%s%s", o->lower, upper, work,
                              rootless || !ib_userns_initial() ? ",userxattr" : "");
    fflush(NULL);
    pid_t builder = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        r = ib_error_errno(IB_ERR, "fork");
        free(opts);
        close(out[0]);
        close(out[1]);
        close(err[0]);
        close(err[1]);
        goto out;
    }
    if (pid == 0) {
        /* the helper must not outlive the builder: it holds the store lock */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != builder) _exit(137);
        int flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC | (o->network_none ? CLONE_NEWNET : 0);
        if (rootless) {
            if (unshare(CLONE_NEWUSER) < 0)
                die(err[1], "unshare a user namespace (rootless RUN needs unprivileged user namespaces; or build as root)");
            char map[64];
            int n = snprintf(map, sizeof map, "0 %u 1\n", (unsigned)ruid);
            if (write_proc("/proc/self/uid_map", map, n) < 0 || write_proc("/proc/self/setgroups", "deny", 4) < 0)
                die(err[1], "uid_map");
            n = snprintf(map, sizeof map, "0 %u 1\n", (unsigned)rgid);
            if (write_proc("/proc/self/gid_map", map, n) < 0) die(err[1], "gid_map");
        }
        if (unshare(flags) < 0) die(err[1], "unshare (namespaces need root or a user namespace)");
        if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0) die(err[1], "make / private");
        if (!walk && mount("overlay", merged, "overlay", 0, opts) < 0) die(err[1], "mount overlay");
        pid_t init = fork();
        if (init < 0) die(err[1], "fork");
        if (init == 0) {
            dup2(out[1], 1);
            dup2(out[1], 2);
            int devnull = open("/dev/null", O_RDONLY);
            if (devnull >= 0) dup2(devnull, 0);
            child(o, merged, mp, gids, resolv, hosts, err[1]);
        }
        int st;
        while (waitpid(init, &st, 0) < 0 && errno == EINTR) {}
        _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    }
    free(opts);
    close(out[1]);
    close(err[1]);
    /* Stream output line by line to the caller. */
    char buf[4096], line[2048];
    size_t ll = 0;
    for (;;) {
        ssize_t n = read(out[0], buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        for (ssize_t i = 0; i < n; i++) {
            if (buf[i] == '\n' || ll == sizeof line - 1) {
                line[ll] = 0;
                if (o->output) o->output(o->output_ctx, line);
                ll = 0;
                if (buf[i] == '\n') continue;
            }
            line[ll++] = buf[i];
        }
    }
    if (ll && o->output) {
        line[ll] = 0;
        o->output(o->output_ctx, line);
    }
    close(out[0]);
    char emsg[512] = "";
    ssize_t en = read(err[0], emsg, sizeof emsg - 1);
    close(err[0]);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    *status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (en > 0) {
        emsg[en] = 0;
        emsg[strcspn(emsg, "\n")] = 0;
        r = ib_error_set(IB_ERR, "%s", emsg);
        goto out;
    }
    /* Drop what we created only to mount over, and the parents made for it. */
    for (size_t i = nmp; i-- > 0;)
        if (!mp[i].existed && !mp[i].skip) unstub(o->lower, upper, mp[i].rel, walk);
    *upper_out = upper;
    upper = NULL;
out:
    for (size_t i = 0; i < nmp; i++) free(mp[i].rel);
    free(mp);
    free(gids);
    free(upper);
    free(work);
    free(merged);
    free(resolv);
    free(hosts);
    return r;
}

int ib_sandbox_run(int *status, char **upper_out, const ib_sandbox_opts *o)
{
    const char *env = getenv("IMGBUILD_SNAPSHOT");
    int walk = (env && !strcmp(env, "walk")) || overlay_ok == 0;
    if (o->walked) *o->walked = walk;
    int r = run_once(status, upper_out, o, walk);
    if (r < 0 && !walk && overlay_ok == -1 && strstr(ib_error_last(), "mount overlay")) {
        /* No overlayfs here (an NFS scratch dir, an old kernel for a
         * rootless build): the command never started, so run it again in a
         * copy of the image and snapshot by walking. */
        overlay_ok = 0;
        char *u = ib_xasprintf("%s/upper", o->scratch), *w = ib_xasprintf("%s/work", o->scratch),
             *m = ib_xasprintf("%s/merged", o->scratch);
        ib_fs_rm_rf(u);
        ib_fs_rm_rf(w);
        ib_fs_rm_rf(m);
        free(u);
        free(w);
        free(m);
        if (o->walked) *o->walked = 1;
        ib_error_clear();
        r = run_once(status, upper_out, o, 1);
    } else if (r == 0 && !walk) {
        overlay_ok = 1;
    }
    return r;
}

/* ---------- snapshot ---------- */

/* The extended attributes an image carries: file capabilities (setcap),
 * user.* and ACLs; not overlayfs' own trusted.* bookkeeping nor the host's
 * SELinux label. Packed as the layer writer wants them, sorted by name. */
static int want_xattr(const char *name)
{
    return strncmp(name, "trusted.", 8) && strncmp(name, "user.overlay.", 13) && strcmp(name, "security.selinux");
}

/* Rootless, what the command made as root belongs to us on disk. */
static unsigned map_uid(uid_t u) { return geteuid() != 0 && u == getuid() ? 0 : (unsigned)u; }
static unsigned map_gid(gid_t g) { return geteuid() != 0 && g == getgid() ? 0 : (unsigned)g; }

static int cmp_cstr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static unsigned char *read_xattrs(const char *path, size_t *len)
{
    *len = 0;
    ssize_t n = llistxattr(path, NULL, 0);
    if (n <= 0) return NULL;
    char *names = ib_xmalloc((size_t)n);
    n = llistxattr(path, names, (size_t)n);
    if (n <= 0) {
        free(names);
        return NULL;
    }
    char *v[64];
    size_t nv = 0;
    for (char *p = names; p < names + n && nv < 64; p += strlen(p) + 1)
        if (want_xattr(p)) v[nv++] = p;
    qsort(v, nv, sizeof *v, cmp_cstr);
    unsigned char *out = NULL;
    size_t cap = 0;
    for (size_t i = 0; i < nv; i++) {
        ssize_t vl = lgetxattr(path, v[i], NULL, 0);
        if (vl < 0) continue;
        size_t nl = strlen(v[i]), need = *len + nl + 5 + (size_t)vl;
        if (need > cap) {
            cap = need * 2;
            out = ib_xrealloc(out, cap);
        }
        memcpy(out + *len, v[i], nl + 1);
        unsigned char *lp = out + *len + nl + 1;
        vl = vl ? lgetxattr(path, v[i], lp + 4, (size_t)vl) : 0;
        if (vl < 0) continue;
        lp[0] = (unsigned char)(vl >> 24);
        lp[1] = (unsigned char)(vl >> 16);
        lp[2] = (unsigned char)(vl >> 8);
        lp[3] = (unsigned char)vl;
        *len += nl + 5 + (size_t)vl;
    }
    free(names);
    if (!*len) {
        free(out);
        return NULL;
    }
    return out;
}

/* Files with several names in the upper dir: (inode, path) pairs, so that
 * all names but the first (in layer order) become hardlinks to it. */
typedef struct {
    ino_t ino;
    char *path;
} link_name;

typedef struct {
    link_name *v;
    size_t n, cap;
} link_names;

static int cmp_link(const void *a, const void *b)
{
    const link_name *x = a, *y = b;
    if (x->ino != y->ino) return x->ino < y->ino ? -1 : 1;
    return strcmp(x->path, y->path);
}

/* One snapshot entry for the file at abs (image path rel); regular files
 * with several names are remembered for add_hardlinks. */
static int add_path(ib_layer_builder *b, const char *abs, const char *rel, const struct stat *sb, void *ctx,
                    link_names *ln)
{
    size_t xl_len = 0;
    unsigned char *xa = S_ISLNK(sb->st_mode) ? NULL : read_xattrs(abs, &xl_len);
    ib_layer_entry e = {.path = rel, .mode = sb->st_mode & 07777, .uid = map_uid(sb->st_uid),
                        .gid = map_gid(sb->st_gid), .xattrs = xa, .xattrs_len = xl_len};
    char t[4096];
    int r = 0;
    if (S_ISDIR(sb->st_mode)) {
        e.type = IB_LE_DIR;
    } else if (S_ISLNK(sb->st_mode)) {
        ssize_t k = readlink(abs, t, sizeof t - 1);
        if (k < 0) r = ib_error_errno(IB_ERR, "readlink %s", abs);
        t[k < 0 ? 0 : k] = 0;
        e.type = IB_LE_SYMLINK;
        e.mode = 0777;
        e.link = t;
    } else if (S_ISREG(sb->st_mode)) {
        e.type = IB_LE_FILE;
        e.size = (uint64_t)sb->st_size;
        e.src = ctx;
        e.src_path = rel;
        e.content = ib_context_read;
        if (sb->st_nlink > 1) {
            if (ln->n == ln->cap) {
                ln->cap = ln->cap ? ln->cap * 2 : 16;
                ln->v = ib_xrealloc(ln->v, ln->cap * sizeof *ln->v);
            }
            ln->v[ln->n].ino = sb->st_ino;
            ln->v[ln->n++].path = ib_xstrdup(rel);
        }
    } else {
        free(xa);
        return 0; /* sockets, fifos, device nodes: not image content */
    }
    if (r == 0) r = ib_layer_add(b, &e);
    free(xa);
    return r;
}

static int diff_walk(ib_layer_builder *b, const char *upper, const char *rel, void *ctx, link_names *ln)
{
    char *dir = *rel ? ib_fs_join(upper, rel) : ib_xstrdup(upper);
    DIR *d = opendir(dir);
    if (!d) {
        int r = ib_error_errno(IB_ERR, "%s", dir);
        free(dir);
        return r;
    }
    int r = 0;
    struct dirent *de;
    while (r == 0 && (de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        char *rp = *rel ? ib_xasprintf("%s/%s", rel, de->d_name) : ib_xstrdup(de->d_name);
        char *ap = ib_fs_join(upper, rp);
        struct stat sb;
        if (lstat(ap, &sb) < 0) {
            r = ib_error_errno(IB_ERR, "%s", ap);
        } else if (S_ISCHR(sb.st_mode) && sb.st_rdev == makedev(0, 0)) {
            /* overlayfs whiteout: the path was deleted */
            ib_layer_entry e = {.path = rp, .type = IB_LE_WHITEOUT};
            r = ib_layer_add(b, &e);
        } else if (S_ISDIR(sb.st_mode)) {
            r = add_path(b, ap, rp, &sb, ctx, ln);
            char v[4];
            ssize_t xl = getxattr(ap, "trusted.overlay.opaque", v, sizeof v);
            if (xl != 1) xl = getxattr(ap, "user.overlay.opaque", v, sizeof v); /* rootless (userxattr) */
            if (r == 0 && xl == 1 && v[0] == 'y') {
                /* replaced directory: nothing below it from lower layers survives */
                char *opq = ib_xasprintf("%s/.wh..opq", rp);
                ib_layer_entry w = {.path = opq, .type = IB_LE_WHITEOUT};
                r = ib_layer_add(b, &w);
                free(opq);
            }
            if (r == 0) r = diff_walk(b, upper, rp, ctx, ln);
        } else {
            r = add_path(b, ap, rp, &sb, ctx, ln);
        }
        /* sockets, fifos and device nodes a command made are not image content */
        free(ap);
        free(rp);
    }
    closedir(d);
    free(dir);
    return r;
}

/* Names of one inode: the first in path order keeps the content, the
 * others are re-added (the last entry for a path wins) as hardlinks. A name
 * whose twin is not part of the layer stays a plain file. */
static int add_hardlinks(ib_layer_builder *b, const char *dir, link_names *ln)
{
    int r = 0;
    if (ln->n) qsort(ln->v, ln->n, sizeof *ln->v, cmp_link);
    for (size_t i = 1; r == 0 && i < ln->n; i++) {
        if (ln->v[i].ino != ln->v[i - 1].ino) continue;
        size_t first = i - 1;
        while (first > 0 && ln->v[first - 1].ino == ln->v[i].ino) first--;
        char *ap = ib_fs_join(dir, ln->v[i].path);
        struct stat sb;
        if (lstat(ap, &sb) == 0) {
            size_t xl_len;
            unsigned char *xa = read_xattrs(ap, &xl_len);
            ib_layer_entry e = {.path = ln->v[i].path, .type = IB_LE_FILE, .mode = sb.st_mode & 07777,
                                .uid = map_uid(sb.st_uid), .gid = map_gid(sb.st_gid), .size = (uint64_t)sb.st_size,
                                .hardlink = ln->v[first].path, .xattrs = xa, .xattrs_len = xl_len};
            r = ib_layer_add(b, &e);
            free(xa);
        }
        free(ap);
    }
    for (size_t i = 0; i < ln->n; i++) free(ln->v[i].path);
    free(ln->v);
    memset(ln, 0, sizeof *ln);
    return r;
}

int ib_sandbox_diff(ib_layer_builder *b, const char *upper, void *upper_ctx)
{
    link_names ln = {0};
    int r = diff_walk(b, upper, "", upper_ctx, &ln);
    int r2 = add_hardlinks(b, upper, &ln);
    return r < 0 ? r : r2;
}

/* ---------- snapshot without overlayfs ---------- */

static int names_of(char ***out, size_t *n, const char *dir)
{
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return ib_error_errno(IB_ERR, "%s", dir);
    size_t cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 32;
            *out = ib_xrealloc(*out, cap * sizeof **out);
        }
        (*out)[(*n)++] = ib_xstrdup(de->d_name);
    }
    closedir(d);
    if (*n) qsort(*out, *n, sizeof **out, cmp_cstr);
    return 0;
}

static void names_free(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++) free(v[i]);
    free(v);
}

static int same_xattrs(const char *a, const char *b)
{
    size_t la, lb;
    unsigned char *xa = read_xattrs(a, &la), *xb = read_xattrs(b, &lb);
    int same = la == lb && (!la || !memcmp(xa, xb, la));
    free(xa);
    free(xb);
    return same;
}

static int walk_cmp(ib_layer_builder *b, const char *lower, const char *root, const char *rel, void *ctx,
                    link_names *ln, int all_new)
{
    char *rdir = *rel ? ib_fs_join(root, rel) : ib_xstrdup(root);
    char **rn = NULL, **lnm = NULL;
    size_t nr = 0, nl = 0;
    int r = names_of(&rn, &nr, rdir);
    if (r == 0 && !all_new) {
        char *ldir = *rel ? ib_fs_join(lower, rel) : ib_xstrdup(lower);
        if (names_of(&lnm, &nl, ldir) < 0) {
            ib_error_clear();
            nl = 0;
        }
        free(ldir);
    }
    for (size_t i = 0; r == 0 && i < nr; i++) {
        char *rp = *rel ? ib_xasprintf("%s/%s", rel, rn[i]) : ib_xstrdup(rn[i]);
        char *ap = ib_fs_join(root, rp), *lp = ib_fs_join(lower, rp);
        struct stat sr, sl;
        if (lstat(ap, &sr) < 0) {
            r = ib_error_errno(IB_ERR, "%s", ap);
        } else {
            int in_lower = !all_new && lstat(lp, &sl) == 0 && (sl.st_mode & S_IFMT) == (sr.st_mode & S_IFMT);
            if (!in_lower) {
                r = add_path(b, ap, rp, &sr, ctx, ln);
                if (r == 0 && S_ISDIR(sr.st_mode)) r = walk_cmp(b, lower, root, rp, ctx, ln, 1);
            } else {
                int meta = (sr.st_mode & 07777) != (sl.st_mode & 07777) || sr.st_uid != sl.st_uid ||
                           sr.st_gid != sl.st_gid || (!S_ISLNK(sr.st_mode) && !same_xattrs(ap, lp));
                int changed = meta;
                if (S_ISREG(sr.st_mode))
                    changed = changed || sr.st_size != sl.st_size || sr.st_mtim.tv_sec != sl.st_mtim.tv_sec ||
                              sr.st_mtim.tv_nsec != sl.st_mtim.tv_nsec;
                else if (S_ISLNK(sr.st_mode)) {
                    char t1[4096], t2[4096];
                    ssize_t k1 = readlink(ap, t1, sizeof t1), k2 = readlink(lp, t2, sizeof t2);
                    changed = changed || k1 != k2 || (k1 > 0 && memcmp(t1, t2, (size_t)k1));
                }
                if (changed) r = add_path(b, ap, rp, &sr, ctx, ln);
                if (r == 0 && S_ISDIR(sr.st_mode)) r = walk_cmp(b, lower, root, rp, ctx, ln, 0);
            }
        }
        free(ap);
        free(lp);
        free(rp);
    }
    /* gone from the copy: whiteouts (both lists are sorted) */
    for (size_t i = 0, j = 0; r == 0 && i < nl; i++) {
        while (j < nr && strcmp(rn[j], lnm[i]) < 0) j++;
        if (j < nr && !strcmp(rn[j], lnm[i])) continue;
        char *rp = *rel ? ib_xasprintf("%s/%s", rel, lnm[i]) : ib_xstrdup(lnm[i]);
        ib_layer_entry w = {.path = rp, .type = IB_LE_WHITEOUT};
        r = ib_layer_add(b, &w);
        free(rp);
    }
    names_free(rn, nr);
    names_free(lnm, nl);
    free(rdir);
    return r;
}

int ib_sandbox_diff_walk(ib_layer_builder *b, const char *lower, const char *root, void *root_ctx)
{
    link_names ln = {0};
    int r = walk_cmp(b, lower, root, "", root_ctx, &ln, 0);
    int r2 = add_hardlinks(b, root, &ln);
    return r < 0 ? r : r2;
}
