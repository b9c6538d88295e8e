/* Rootless builds with the user's subordinate ids, as buildah and podman run
 * them: an unprivileged user with ranges in /etc/subuid and /etc/subgid (and
 * newuidmap/newgidmap, package uidmap) gets imgbuild re-executed in a user
 * namespace where its own uid is 0 and ids 1..N are its subordinate ones.
 * Inside, the build runs the root code paths: base layers keep their owners
 * (a USER app can write its home), a RUN may switch users (apt's _apt,
 * USER app), chown works, the snapshot reads every file and the scratch dirs
 * can be removed. Without ranges or the helpers, nothing changes: a RUN
 * then maps one uid (root) in a user namespace of its own (sandbox.c). */
#ifndef IB_COMMON_USERNS_H
#define IB_COMMON_USERNS_H

/* Called first in main for the verbs that make or remove such files (build,
 * cache). Returns 0 when the caller should go on in this process: root, no
 * ranges, IMGBUILD_SUBIDS=0, already inside, or the namespace could not be
 * set up (then with a one-line warning on stderr). Otherwise it does not
 * return: it waits for the re-executed imgbuild and exits with its status,
 * passing SIGINT, SIGQUIT, SIGTERM and SIGHUP on. */
int ib_userns_reexec(char **argv);

/* 1 in the initial user namespace (uid_map "0 0 4294967295"), 0 in any other:
 * there, root may not make device nodes nor set trusted.* xattrs, ids
 * outside the map cannot be given, and overlayfs keeps its marks in user.*. */
int ib_userns_initial(void);

#endif
