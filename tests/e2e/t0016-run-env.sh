#!/usr/bin/env bash
# The environment a RUN sees matches docker build's (BuildKit + runc/containerd defaults): supplementary
# groups from the image's /etc/group, a missing WORKDIR owned by the USER, a tmpfs /dev/shm (1777), the
# /dev links and ptys, /dev/mqueue, a read-only /sys, lo up with --network=none, resolv.conf/hosts that are
# (dangling, even absolute) symlinks in the image, layers that never depend on the builder's umask nor list
# directories that only held our mount points, and a failure that shows the command's last lines, with -q
# too. Rootless builds get what a one-uid user namespace allows and still run.
. "$(dirname "$0")/lib.sh"

# Base A: busybox, /etc without hosts/resolv.conf, /root and /run present, no /proc, /dev or /sys,
# and /etc/group memberships for app and root.
A=$TMP/base-a
new_repo "$A"
bb_rootfs "$A/rootfs" sh ls cat echo rm mkdir touch id ln chmod stat readlink grep ip test true sleep wc cut tr \
    seq || exit 1
mkdir -p "$A/rootfs/root" "$A/rootfs/run" "$A/rootfs/data" "$A/rootfs/tmp" && chmod 1777 "$A/rootfs/tmp"
touch "$A/rootfs/root/.keep" "$A/rootfs/run/.keep" "$A/rootfs/data/.keep" "$A/rootfs/tmp/.keep"
printf 'root:x:0:\napp:x:1000:\naudio:x:29:root,app\nextra:x:2000:other,app\nnobody:x:65534:\n' >"$A/rootfs/etc/group"
printf 'FROM scratch\nCOPY rootfs/ /\n' >"$A/Dockerfile"
commit_all "$A" base-a
(cd "$A" && ib --name local/bba -o "$TMP/bba.tar" -q >/dev/null && ib load "$TMP/bba.tar" >/dev/null) || exit 1
BASE_A=local/bba:sha-$(git -C "$A" rev-parse HEAD)

# Base B: a systemd-style image whose /etc/resolv.conf is a dangling relative link and whose /etc/hosts
# is a dangling absolute one (its target exists neither in the image nor on this host).
HOSTLEAK=$TMP/host-hosts
B=$TMP/base-b
new_repo "$B"
bb_rootfs "$B/rootfs" sh cat echo readlink grep || exit 1
mkdir -p "$B/rootfs/run" && touch "$B/rootfs/run/.keep"
ln -s ../run/systemd/resolve/stub-resolv.conf "$B/rootfs/etc/resolv.conf"
ln -s "$HOSTLEAK" "$B/rootfs/etc/hosts"
printf 'FROM scratch\nCOPY rootfs/ /\n' >"$B/Dockerfile"
commit_all "$B" base-b
(cd "$B" && ib --name local/bbb -o "$TMP/bbb.tar" -q >/dev/null && ib load "$TMP/bbb.tar" >/dev/null) || exit 1
BASE_B=local/bbb:sha-$(git -C "$B" rev-parse HEAD)

layer_list() { # TAR N: the entries of the Nth layer, one a line
    local L
    L=$(skopeo inspect --raw oci-archive:"$1" | python3 -c "import json,sys;print(json.load(sys.stdin)[\"layers\"][$2][\"digest\"][7:])") &&
        tar -xOf "$1" "blobs/sha256/$L" | tar -tz
}
app() { # NAME: a fresh repo with the Dockerfile read from stdin
    new_repo "$TMP/$1" && cat >"$TMP/$1/Dockerfile" && commit_all "$TMP/$1" "$1"
}

test_expect_success 'USER gets the supplementary groups of the image /etc/group (the primary gid first)' '
    app groups <<DF &&
FROM $BASE_A
RUN chmod 1777 /tmp && grep Groups /proc/self/status > /tmp/g-root
USER app
RUN grep Groups /proc/self/status > /tmp/g-app && id > /tmp/id-app
USER app:app
RUN grep Groups /proc/self/status > /tmp/g-appapp
USER 1000
RUN grep Groups /proc/self/status > /tmp/g-1000
DF
    (cd "$TMP/groups" && ib -o "$TMP/groups.tar" -q >/dev/null) &&
    unpack_image "$TMP/groups.tar" "$TMP/gu" && F=$TMP/gu/rootfs &&
    test "$(cut -f2 "$F/tmp/g-root" | xargs)" = "0 29" &&
    test "$(cut -f2 "$F/tmp/g-app" | xargs)" = "29 1000 2000" &&
    test "$(cut -f2 "$F/tmp/g-appapp" | xargs)" = "1000" &&
    test "$(cut -f2 "$F/tmp/g-1000" | xargs)" = "29 1000 2000" &&
    grep -q "groups=.*29(audio).*2000(extra)" "$F/tmp/id-app"
'

test_expect_success 'a missing WORKDIR is created owned by the USER (only the dirs created)' '
    app workdir <<DF &&
FROM $BASE_A
USER app
WORKDIR /data/new/deep
RUN touch made-by-app
WORKDIR /home/app
RUN touch x
DF
    (cd "$TMP/workdir" && ib -o "$TMP/workdir.tar" -q >/dev/null) &&
    unpack_image "$TMP/workdir.tar" "$TMP/wu" && F=$TMP/wu/rootfs &&
    test "$(stat -c "%u:%g %a" "$F/data")" = "0:0 755" &&
    test "$(stat -c "%u:%g %a" "$F/data/new")" = "1000:1000 755" &&
    test "$(stat -c "%u:%g %a" "$F/data/new/deep")" = "1000:1000 755" &&
    test "$(stat -c %u:%g "$F/data/new/deep/made-by-app")" = 1000:1000 &&
    test "$(stat -c %u:%g "$F/home")" = 1000:1000 && test "$(stat -c %u:%g "$F/home/app/x")" = 1000:1000
'

test_expect_success '/dev/shm is a tmpfs of mode 1777 whatever the builder umask, and not in the layer' '
    app shm <<DF &&
FROM $BASE_A
RUN stat -c %a /dev/shm > /shm-mode && stat -f -c %T /dev/shm > /shm-fs && touch /dev/shm/x
DF
    (cd "$TMP/shm" && umask 077 && ib -o "$TMP/shm.tar" -q >/dev/null) &&
    unpack_image "$TMP/shm.tar" "$TMP/su" && F=$TMP/su/rootfs &&
    test "$(cat "$F/shm-mode") $(cat "$F/shm-fs")" = "1777 tmpfs" &&
    test "$(layer_list "$TMP/shm.tar" 1 | sort | xargs)" = "shm-fs shm-mode"
'

test_expect_success '/dev as runc makes it: fd/std* links, ptys, mqueue; a read-only /sys; none of it in the layer' '
    app dev <<"DF" &&
FROM local/bba
RUN mkdir /f && for l in fd stdin stdout stderr ptmx; do echo "$l $(readlink /dev/$l)"; done > /f/links && \
    echo hi-through-dev-stderr > /dev/stderr && echo hi-through-dev-stdout > /dev/stdout && \
    exec 3<>/dev/ptmx && ls /dev/pts > /f/pts && { cut -d" " -f2,3 /proc/mounts | grep "^/dev/mqueue "; } > /f/mq && \
    grep " /sys " /proc/mounts | cut -d" " -f3,4 | cut -d, -f1 > /f/sys && test -d /sys/class && \
    { touch /sys/x 2>/dev/null && echo rw || echo ro; } > /f/sys-write
DF
    sed -i "s|^FROM local/bba|FROM $BASE_A|" "$TMP/dev/Dockerfile" && commit_all "$TMP/dev" base &&
    (cd "$TMP/dev" && ib -o "$TMP/dev.tar" --progress plain >/dev/null) &&
    grep -q "  | hi-through-dev-stderr" "$TMP/last.err" && grep -q "  | hi-through-dev-stdout" "$TMP/last.err" &&
    unpack_image "$TMP/dev.tar" "$TMP/du" && F=$TMP/du/rootfs &&
    printf "fd /proc/self/fd\nstdin /proc/self/fd/0\nstdout /proc/self/fd/1\nstderr /proc/self/fd/2\nptmx pts/ptmx\n" | diff - "$F/f/links" &&
    grep -qx 0 "$F/f/pts" && grep -qx ptmx "$F/f/pts" && test "$(cat "$F/f/mq")" = "/dev/mqueue mqueue" &&
    test "$(cat "$F/f/sys")" = "sysfs ro" && test "$(cat "$F/f/sys-write")" = ro &&
    test "$(layer_list "$TMP/dev.tar" 1 | xargs)" = "f/ f/links f/mq f/pts f/sys f/sys-write" &&
    test ! -e "$F/dev" && test ! -e "$F/sys" && test ! -e "$F/proc"
'

test_expect_success '--network=none brings lo up (127.0.0.1 works)' '
    app net <<DF &&
FROM $BASE_A
RUN --network=none ip addr show lo > /lo.txt
DF
    (cd "$TMP/net" && ib -o "$TMP/net.tar" -q >/dev/null) &&
    unpack_image "$TMP/net.tar" "$TMP/nu" &&
    grep -q "<LOOPBACK,UP" "$TMP/nu/rootfs/lo.txt" && grep -q "inet 127.0.0.1/8" "$TMP/nu/rootfs/lo.txt"
'

test_expect_success 'resolv.conf and hosts as dangling (relative, absolute) symlinks: mounted inside the image, never the host' '
    app links <<DF &&
FROM $BASE_B
RUN cat /etc/hosts > /h.txt && cat /etc/resolv.conf > /r.txt && readlink /etc/resolv.conf > /rl.txt
DF
    (cd "$TMP/links" && ib -o "$TMP/links.tar" -q >/dev/null) &&
    test ! -e "$HOSTLEAK" &&
    unpack_image "$TMP/links.tar" "$TMP/lu" && F=$TMP/lu/rootfs &&
    grep -q localhost "$F/h.txt" && cmp -s "$F/r.txt" /etc/resolv.conf &&
    test "$(cat "$F/rl.txt")" = ../run/systemd/resolve/stub-resolv.conf &&
    test "$(readlink "$F/etc/resolv.conf")" = ../run/systemd/resolve/stub-resolv.conf &&
    test "$(readlink "$F/etc/hosts")" = "$HOSTLEAK" && test ! -e "$F/run/systemd" &&
    test "$(layer_list "$TMP/links.tar" 1 | sort | xargs)" = "h.txt r.txt rl.txt"
'

test_expect_success 'parents made for mount points are 0755 whatever the builder umask' '
    app umask <<DF &&
FROM $BASE_A
RUN --mount=type=cache,target=/opt/cache/x,id=x echo k > /opt/keep
DF
    (cd "$TMP/umask" && umask 077 && ib -o "$TMP/umask.tar" -q >/dev/null) &&
    unpack_image "$TMP/umask.tar" "$TMP/uu" &&
    test "$(stat -c %a "$TMP/uu/rootfs/opt")" = 755 && test ! -e "$TMP/uu/rootfs/opt/cache" &&
    test "$(layer_list "$TMP/umask.tar" 1 | xargs)" = "opt/ opt/keep"
'

test_expect_success 'a RUN that changes nothing has an empty layer, with mounts too (overlay and walk snapshots)' '
    printf "t0k3n" >"$TMP/tok" &&
    app stray <<DF &&
FROM $BASE_A
RUN true
RUN --mount=type=cache,target=/root/.cache/pip,id=pip true
RUN --mount=type=secret,id=tok,required=true test -s /run/secrets/tok
RUN --mount=type=bind,source=Dockerfile,target=/etc/app/Dockerfile,rw echo x > /etc/app/Dockerfile
DF
    for mode in overlay walk; do
        (cd "$TMP/stray" && IMGBUILD_SNAPSHOT=$([ $mode = walk ] && echo walk) \
            ib --no-cache --secret id=tok,src="$TMP/tok" -o "$TMP/stray-$mode.tar" -q >/dev/null) || exit 1
        for i in 1 2 3 4; do
            test -z "$(layer_list "$TMP/stray-$mode.tar" $i)" || { echo "$mode layer $i:"; layer_list "$TMP/stray-$mode.tar" $i; exit 1; }
        done
    done
'

test_expect_success 'a failing RUN shows its last 10 non-blank lines before the one-line error, with -q too' '
    app fail <<"DF" &&
FROM local/bba
RUN for i in $(seq 1 12); do echo line-$i; done; echo; echo "   "; exit 3
DF
    sed -i "s|^FROM local/bba|FROM $BASE_A|" "$TMP/fail/Dockerfile" && commit_all "$TMP/fail" base &&
    for p in -q "--progress plain"; do
        (cd "$TMP/fail" && expect_error "Dockerfile:2: RUN exited with status 3; last output: line-12\$" $p -o "$TMP/f.tar") || exit 1
        for i in $(seq 3 12); do test "$(grep -cx "  | line-$i" "$TMP/last.err")" -ge 1 || exit 1; done
        grep -q "^ > Dockerfile:2: RUN for i in" "$TMP/last.err"
    done &&
    (cd "$TMP/fail" && "$IMGBUILD" -q -o "$TMP/f.tar" 2>"$TMP/q.err"; true) &&
    ! grep -qx "  | line-2" "$TMP/q.err" && test "$(grep -c "^  | line-" "$TMP/q.err")" = 10 && test ! -e "$TMP/f.tar"
'

# Rootless: the same RUN environment where a one-uid user namespace allows it; nothing fails.
U=nobody
W=$TMP/rootless

test_expect_success 'rootless: /dev links, shm, lo up, symlinked resolv.conf/hosts and empty layers still work' '
    id "$U" >/dev/null && mkdir -p "$W" && chmod 755 "$TMP" "$W" &&
    cp -a "$A" "$W/a" && cp -a "$B" "$W/b" && cp "$TMP/tok" "$W/tok" &&
    mkdir -p "$W/r" && cat >"$W/r/Dockerfile" <<DF &&
FROM local/bba:sha-$(git -C "$A" rev-parse HEAD)
RUN --network=none mkdir /f && readlink /dev/stdout > /f/stdout && stat -c %a /dev/shm > /f/shm && \
    ip addr show lo > /f/lo && echo hi > /dev/stderr && grep Groups /proc/self/status > /f/groups
RUN mkdir /g && test -d /sys/class && { touch /sys/x 2>/dev/null && echo rw || echo ro; } > /g/sys && ls /dev > /g/dev
RUN --mount=type=cache,target=/root/.cache/pip,id=pip --mount=type=secret,id=tok test -s /run/secrets/tok
DF
    printf "FROM local/bbb:sha-%s\nRUN cat /etc/hosts > /h.txt\n" "$(git -C "$B" rev-parse HEAD)" >"$W/r/Dockerfile.links" &&
    new_repo "$W/r" && commit_all "$W/r" r && chown -R "$U" "$W" &&
    as_user "$W/a" --name local/bba -o "$W/bba.tar" -q >/dev/null && as_user "$W/a" load "$W/bba.tar" >/dev/null &&
    as_user "$W/b" --name local/bbb -o "$W/bbb.tar" -q >/dev/null && as_user "$W/b" load "$W/bbb.tar" >/dev/null &&
    as_user "$W/r" --secret id=tok,src="$W/tok" -o "$W/r.tar" -q >/dev/null &&
    as_user "$W/r" -f Dockerfile.links -o "$W/l.tar" -q >/dev/null &&
    test -z "$(layer_list "$W/r.tar" 3)" && test "$(layer_list "$W/l.tar" 1)" = h.txt &&
    unpack_image "$W/r.tar" "$TMP/ru" && F=$TMP/ru/rootfs &&
    test "$(cat "$F/f/stdout")" = /proc/self/fd/1 && test "$(cat "$F/f/shm")" = 1777 &&
    grep -q "<LOOPBACK,UP" "$F/f/lo" && test "$(cat "$F/g/sys")" = ro &&
    grep -qx stderr "$F/g/dev" && grep -qx shm "$F/g/dev"
'

# Base C: /etc/passwd and /etc/group are absolute symlinks (base-passwd style). They must be read inside
# the image, never from the host path of the same name, which here holds a user the image does not have.
printf 'hostonly:x:4242:4242::/nonexistent:/bin/sh\n' >"$TMP/host-passwd"
printf 'hostonly:x:4242:\n' >"$TMP/host-group"
C=$TMP/base-c
new_repo "$C"
bb_rootfs "$C/rootfs" sh id cat || exit 1
mkdir -p "$C/rootfs/usr/share/bp" "$C/rootfs/$TMP"
mv "$C/rootfs/etc/passwd" "$C/rootfs/usr/share/bp/passwd" && mv "$C/rootfs/etc/group" "$C/rootfs/usr/share/bp/group"
# the host-path copies inside the image: the link targets resolve here, not on the host
ln -s /usr/share/bp/passwd "$C/rootfs/$TMP/host-passwd" && ln -s /usr/share/bp/group "$C/rootfs/$TMP/host-group"
ln -s "$TMP/host-passwd" "$C/rootfs/etc/passwd" && ln -s "$TMP/host-group" "$C/rootfs/etc/group"
printf 'FROM scratch\nCOPY rootfs/ /\n' >"$C/Dockerfile"
commit_all "$C" base-c
(cd "$C" && ib --name local/bbc -o "$TMP/bbc.tar" -q >/dev/null && ib load "$TMP/bbc.tar" >/dev/null) || exit 1
BASE_C=local/bbc:sha-$(git -C "$C" rev-parse HEAD)

test_expect_success 'USER and COPY --chown read a symlinked /etc/passwd inside the image, not the host' '
    app pwlink <<DF &&
FROM $BASE_C
COPY --chown=app:app Dockerfile /owned
USER app
RUN [ "\$(id -u):\$(id -g)" = 1000:1000 ]
# umoci resolves USER through the host path of a symlinked /etc/passwd: end as uid 0
USER 0
DF
    (cd "$TMP/pwlink" && ib -o "$TMP/pwlink.tar" -q >/dev/null) &&
    unpack_image "$TMP/pwlink.tar" "$TMP/pwl" &&
    test "$(stat -c %u:%g "$TMP/pwl/rootfs/owned")" = "1000:1000" &&
    app pwhost <<DF &&
FROM $BASE_C
USER hostonly
RUN true
DF
    (cd "$TMP/pwhost" && expect_error "no such user" -o "$TMP/pwhost.tar" -q) &&
    test ! -e "$TMP/pwhost.tar" &&
    app pwchown <<DF &&
FROM $BASE_C
COPY --chown=hostonly Dockerfile /x
DF
    (cd "$TMP/pwchown" && expect_error "no user .hostonly." -o "$TMP/pwchown.tar" -q)
'

test_done
