#include "common/userns.h"

#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define INSIDE_ENV "_IMGBUILD_IN_USERNS"

int ib_userns_initial(void)
{
    static int cached = -1;
    if (cached >= 0) return cached;
    FILE *f = fopen("/proc/self/uid_map", "re");
    unsigned long a = 1, b = 1, n = 0;
    int k = f ? fscanf(f, "%lu %lu %lu", &a, &b, &n) : 0;
    if (f) fclose(f);
    /* no /proc: assume the usual case rather than refuse what root may do */
    cached = !f || (k == 3 && a == 0 && b == 0 && n == 4294967295UL);
    return cached;
}

/* The first range of /etc/subuid or /etc/subgid for the user (by name or
 * uid, as shadow's tools match them); 1 if found. */
static int subid_range(const char *file, const char *name, unsigned long id, unsigned long *start,
                       unsigned long *count)
{
    FILE *f = fopen(file, "re");
    if (!f) return 0;
    char line[512], ids[32];
    snprintf(ids, sizeof ids, "%lu", id);
    int found = 0;
    while (!found && fgets(line, sizeof line, f)) {
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2) continue;
        *c1 = 0;
        if (strcmp(line, name) && strcmp(line, ids)) continue;
        char *e1, *e2;
        unsigned long s = strtoul(c1 + 1, &e1, 10), n = strtoul(c2 + 1, &e2, 10);
        if (e1 != c2 || e2 == c2 + 1 || n == 0 || s == 0) continue;
        *start = s;
        *count = n;
        found = 1;
    }
    fclose(f);
    return found;
}

static const char *find_helper(const char *name, char *buf, size_t n)
{
    static const char *const dirs[] = {"/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"};
    for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
        snprintf(buf, n, "%s/%s", dirs[i], name);
        if (access(buf, X_OK) == 0) return buf;
    }
    return NULL;
}

/* newuidmap PID 0 ID 1 1 START COUNT: our id is 0, the range is 1..COUNT. */
static int run_map(const char *helper, pid_t pid, unsigned long id, unsigned long start, unsigned long count)
{
    char a[5][32];
    snprintf(a[0], sizeof a[0], "%ld", (long)pid);
    snprintf(a[1], sizeof a[1], "%lu", id);
    snprintf(a[2], sizeof a[2], "%lu", start);
    snprintf(a[3], sizeof a[3], "%lu", count);
    char *argv[] = {(char *)helper, a[0], "0", a[1], "1", "1", a[2], a[3], NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    /* its complaints would be noise before our own one-line warning */
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    pid_t h;
    int rc = posix_spawn(&h, helper, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) return -1;
    int st;
    while (waitpid(h, &st, 0) < 0)
        if (errno != EINTR) return -1;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

static pid_t child_pid;

static void forward(int sig)
{
    if (child_pid > 0) kill(child_pid, sig);
}

int ib_userns_reexec(char **argv)
{
    if (geteuid() == 0 || getenv(INSIDE_ENV)) return 0;
    const char *opt = getenv("IMGBUILD_SUBIDS");
    if (opt && !strcmp(opt, "0")) return 0;
    struct passwd pw, *res = NULL;
    char pwbuf[4096];
    if (getpwuid_r(getuid(), &pw, pwbuf, sizeof pwbuf, &res) != 0 || !res) return 0;
    unsigned long us, un, gs, gn;
    char ub[64], gb[64];
    const char *nu = find_helper("newuidmap", ub, sizeof ub), *ng = find_helper("newgidmap", gb, sizeof gb);
    if (!nu || !ng || !subid_range("/etc/subuid", pw.pw_name, getuid(), &us, &un) ||
        !subid_range("/etc/subgid", pw.pw_name, getuid(), &gs, &gn))
        return 0;

    int c2p[2], p2c[2];
    if (pipe2(c2p, O_CLOEXEC) < 0) return 0;
    if (pipe2(p2c, O_CLOEXEC) < 0) {
        close(c2p[0]);
        close(c2p[1]);
        return 0;
    }
    fflush(NULL);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        close(c2p[0]);
        close(c2p[1]);
        close(p2c[0]);
        close(p2c[1]);
        return 0;
    }
    if (pid == 0) {
        close(c2p[0]);
        close(p2c[1]);
        /* the waiter is what CI kills on a timeout: the build goes with it */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(137);
        char ok = unshare(CLONE_NEWUSER) == 0 ? 'u' : 'e', go = 0;
        if (write(c2p[1], &ok, 1) != 1 || ok != 'u') _exit(0);
        while (read(p2c[0], &go, 1) < 0 && errno == EINTR) {}
        if (go != 'g') _exit(0);
        setenv(INSIDE_ENV, "1", 1);
        /* inside, getpwuid(getuid()) is root's entry: keep the user's home
         * for the cache dir and credential files when HOME is not set */
        if (!getenv("HOME") && pw.pw_dir && *pw.pw_dir) setenv("HOME", pw.pw_dir, 1);
        execv("/proc/self/exe", argv);
        /* no /proc: say so rather than run whatever imgbuild PATH has */
        fprintf(stderr, "imgbuild: error: cannot re-execute in the user namespace (/proc/self/exe: %s); "
                        "IMGBUILD_SUBIDS=0 builds without subordinate ids\n", strerror(errno));
        _exit(125);
    }
    close(c2p[1]);
    close(p2c[0]);
    char ok = 0, go = 'n';
    while (read(c2p[0], &ok, 1) < 0 && errno == EINTR) {}
    close(c2p[0]);
    const char *why = NULL;
    if (ok != 'u') why = "cannot create a user namespace";
    else if (run_map(nu, pid, getuid(), us, un) < 0 || run_map(ng, pid, getgid(), gs, gn) < 0)
        why = "newuidmap/newgidmap refused the ranges in /etc/subuid and /etc/subgid";
    else go = 'g';
    /* A child that could not unshare has exited: writing to it would raise
     * SIGPIPE and kill us without a word. It reads only after 'u'. */
    if (ok == 'u') {
        void (*old_pipe)(int) = signal(SIGPIPE, SIG_IGN);
        if (write(p2c[1], &go, 1) != 1) go = 'n';
        signal(SIGPIPE, old_pipe);
    }
    close(p2c[1]);
    int st = 0;
    if (go != 'g') {
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
        fprintf(stderr, "imgbuild: warning: subordinate ids not used (%s): a RUN maps one uid\n", why);
        return 0;
    }
    /* Signals sent to us (a supervisor, a CI runner's kill) are passed on.
     * Ctrl-C reaches the build from the terminal as well, so it may get
     * SIGINT twice: its handler only removes temp files and exits. */
    child_pid = pid;
    signal(SIGINT, forward);
    signal(SIGQUIT, forward);
    signal(SIGTERM, forward);
    signal(SIGHUP, forward);
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) _exit(125);
    if (WIFEXITED(st)) _exit(WEXITSTATUS(st));
    int sig = WIFSIGNALED(st) ? WTERMSIG(st) : SIGKILL;
    signal(sig, SIG_DFL);
    raise(sig);
    _exit(128 + sig);
}
