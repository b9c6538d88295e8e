#!/usr/bin/env bash
# RUN in the daemonless sandbox, on a busybox-static base image the test makes:
# creates/modifies/deletes files (checked with umoci, whiteouts included),
# USER/WORKDIR/ENV/ARG applied and the host environment kept out, failures
# name the line and status, --network=none, RUN layers cached by command and
# parent, and a code-only commit reuses them.
. "$(dirname "$0")/lib.sh"

BB=$(command -v busybox)
file -L "$BB" 2>/dev/null | grep -q "statically linked" || { echo "busybox-static is required (scripts/install-deps.sh test)"; exit 1; }

# The base image: busybox + applet links + passwd/group + some data to change.
B=$TMP/base
new_repo "$B"
mkdir -p "$B/rootfs/bin" "$B/rootfs/etc" "$B/rootfs/data/old" "$B/rootfs/tmp"
cp "$BB" "$B/rootfs/bin/busybox"
for a in sh ls cat echo rm mkdir touch mv id chmod ln pwd env sleep wc test; do ln -s busybox "$B/rootfs/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n' >"$B/rootfs/etc/passwd"
printf 'root:x:0:\napp:x:1000:\n' >"$B/rootfs/etc/group"
echo old >"$B/rootfs/data/old/f"
echo gone >"$B/rootfs/data/delme"
printf 'FROM scratch\nCOPY rootfs/ /\n' >"$B/Dockerfile"
commit_all "$B" base
(cd "$B" && ib --name local/busybox -o "$TMP/bb.tar" -q >/dev/null && ib load "$TMP/bb.tar" >/dev/null) || exit 1
BASE=local/busybox:sha-$(git -C "$B" rev-parse HEAD)

R=$TMP/app
new_repo "$R"
mkdir -p "$R/src"
echo 'flask==3.0.3' >"$R/requirements.txt"
echo 'print(1)' >"$R/src/main.py"
cat >"$R/Dockerfile" <<DF
FROM $BASE
ARG GREETING=hello
ENV APP_HOME=/srv/app
COPY requirements.txt /srv/app/
RUN echo "\$GREETING" > /data/new.txt && rm /data/delme && echo more >> /data/old/f && echo "deps from \$(cat /srv/app/requirements.txt)" > /srv/deps.txt
RUN rm -rf /data/old && mkdir /data/old && echo fresh > /data/old/g
RUN echo "pip=\${PIP_INDEX_URL:-unset} home=\$HOME app=\$APP_HOME greet=\$GREETING" > /env.txt
RUN --network=none cat /proc/net/dev > /netdev.txt
RUN mkdir -p /tmp && chmod 1777 /tmp
USER app
WORKDIR /home/app
RUN id > /tmp/id.txt; pwd > /tmp/pwd.txt
COPY src/ /srv/app/src/
DF
commit_all "$R" app

test_expect_success 'RUN creates, modifies and deletes files; umoci sees the result' '
    export PIP_INDEX_URL=https://evil.example/simple &&
    (cd "$R" && ib -o "$TMP/a.tar" --progress plain >/dev/null) &&
    unpack_image "$TMP/a.tar" "$TMP/ab" && F="$TMP/ab/rootfs" &&
    test "$(cat "$F/data/new.txt")" = hello &&
    test ! -e "$F/data/delme" &&
    test "$(cat "$F/data/old/g")" = fresh && test ! -e "$F/data/old/f" &&
    test "$(cat "$F/srv/deps.txt")" = "deps from flask==3.0.3" &&
    test "$(cat "$F/env.txt")" = "pip=unset home=/root app=/srv/app greet=hello" &&
    grep -q "lo:" "$F/netdev.txt" && test "$(grep -c ":" "$F/netdev.txt")" = 1 &&
    grep -q "uid=1000(app) gid=1000(app)" "$F/tmp/id.txt" && test "$(cat "$F/tmp/pwd.txt")" = /home/app &&
    test "$(stat -c %a "$F/tmp")" = 1777 &&
    test ! -e "$F/proc/1" && test ! -e "$F/etc/resolv.conf"
'

test_expect_success 'RUN layers carry whiteouts (file and opaque directory)' '
    for i in 2 3; do
        L=$(skopeo inspect --raw oci-archive:"$TMP/a.tar" | python3 -c "import json,sys;print(json.load(sys.stdin)[\"layers\"][$i][\"digest\"][7:])")
        tar -xOf "$TMP/a.tar" "blobs/sha256/$L" | tar -tz >"$TMP/l$i"
    done &&
    grep -qx "data/.wh.delme" "$TMP/l2" && grep -qx "data/old/.wh..wh..opq" "$TMP/l3" &&
    ! grep -q "^proc/\|^dev/\|resolv.conf" "$TMP/l2" "$TMP/l3"
'

test_expect_success 'RUN layers are cached by command and parent; a code-only commit reuses them' '
    (cd "$R" && ib -o "$TMP/b.tar" --progress plain >/dev/null) &&
    test "$(grep -c "RUN .* CACHED" "$TMP/last.err")" = 6 &&
    test "$(digest_of "$TMP/b.tar")" = "$(digest_of "$TMP/a.tar")" &&
    echo "print(2)" >"$R/src/main.py" && commit_all "$R" code &&
    (cd "$R" && ib -o "$TMP/c.tar" --progress plain >/dev/null) &&
    test "$(grep -c "RUN .* CACHED" "$TMP/last.err")" = 6 &&
    grep -qE "COPY src/ /srv/app/src/ +BUILT" "$TMP/last.err"
'

test_expect_success 'a changed dependency manifest reruns the RUN after it, with the reason' '
    echo "rq==1.16.2" >>"$R/requirements.txt" && commit_all "$R" deps &&
    (cd "$R" && ib -o "$TMP/d.tar" --progress plain >/dev/null) &&
    grep -qE "COPY requirements.txt /srv/app/ +BUILT .*requirements.txt changed" "$TMP/last.err" &&
    grep -qE "RUN echo .* BUILT .*rebuilt: an earlier step changed" "$TMP/last.err" &&
    (cd "$R" && ib --build-arg GREETING=hi -o "$TMP/e.tar" --progress plain >/dev/null) &&
    grep -qE "RUN echo .* BUILT .*GREETING changed" "$TMP/last.err"
'

test_expect_success 'the builder umask does not reach files a RUN creates' '
    IMGBUILD_CACHE="$TMP/u1" ib load "$TMP/bb.tar" >/dev/null && IMGBUILD_CACHE="$TMP/u2" ib load "$TMP/bb.tar" >/dev/null &&
    d1=$(cd "$R" && umask 022 && IMGBUILD_CACHE="$TMP/u1" "$IMGBUILD" -q -o "$TMP/u1.tar") &&
    d2=$(cd "$R" && umask 077 && IMGBUILD_CACHE="$TMP/u2" "$IMGBUILD" -q -o "$TMP/u2.tar") &&
    test "$d1" = "$d2"
'

test_expect_success 'a failing RUN names the line and the exit status, and leaves no output' '
    F2=$TMP/fail && new_repo "$F2" &&
    printf "FROM %s\nRUN echo about to fail && exit 7\n" "$BASE" >"$F2/Dockerfile" && commit_all "$F2" f &&
    (cd "$F2" && expect_error "Dockerfile:2: RUN exited with status 7; last output: about to fail" -o "$TMP/f.tar") &&
    test ! -e "$TMP/f.tar"
'

test_expect_success 'cache mounts persist between builds and stay out of the image' '
    M=$TMP/mnt && new_repo "$M" &&
    printf "FROM %s\nRUN --mount=type=cache,target=/root/.cache/pip,id=pip echo run >> /root/.cache/pip/log && wc -l < /root/.cache/pip/log > /runs.txt\n" "$BASE" >"$M/Dockerfile" &&
    commit_all "$M" m &&
    (cd "$M" && ib --no-cache -o "$TMP/m1.tar" -q >/dev/null && ib --no-cache -o "$TMP/m2.tar" -q >/dev/null) &&
    unpack_image "$TMP/m2.tar" "$TMP/mb" &&
    test "$(cat "$TMP/mb/rootfs/runs.txt" | tr -d " ")" = 2 &&
    test ! -e "$TMP/mb/rootfs/root/.cache/pip/log" &&
    test "$(cat "$IMGBUILD_CACHE"/mounts/*/log | wc -l)" = 2 &&
    ib cache du | grep -qE "^Mounts  1 cache mount, [0-9.]+ [kM]?B \(RUN --mount=type=cache\)" &&
    ib cache prune --older-than 1h | grep -q "and 0 cache mounts, freed" && test -n "$(ls "$IMGBUILD_CACHE"/mounts/*/log)" &&
    ib cache prune --all | grep -q "and 1 cache mount, freed" && test -z "$(ls -A "$IMGBUILD_CACHE/mounts")" &&
    (cd "$M" && ib --no-cache -o "$TMP/m3.tar" -q >/dev/null) && unpack_image "$TMP/m3.tar" "$TMP/mc" &&
    test "$(cat "$TMP/mc/rootfs/runs.txt" | tr -d " ")" = 1
'

test_expect_success 'a secret is readable during RUN and absent from layers, cache keys and the tarball' '
    S=$TMP/sec && new_repo "$S" && printf "s3cr3t-token-%s" "$RANDOM$RANDOM" >"$TMP/token.txt" &&
    printf "FROM %s\nRUN --mount=type=secret,id=token,required=true test -s /run/secrets/token && wc -c < /run/secrets/token > /secret-len\n" "$BASE" >"$S/Dockerfile" &&
    commit_all "$S" s &&
    (cd "$S" && ib --secret id=token,src="$TMP/token.txt" -o "$TMP/s.tar" -q >/dev/null) &&
    unpack_image "$TMP/s.tar" "$TMP/sb" &&
    test "$(tr -d " " <"$TMP/sb/rootfs/secret-len")" = "$(wc -c <"$TMP/token.txt" | tr -d " ")" &&
    test ! -e "$TMP/sb/rootfs/run/secrets/token" &&
    secret=$(cat "$TMP/token.txt") &&
    ! grep -aqF "$secret" "$TMP/s.tar" &&
    mkdir -p "$TMP/sx" && tar -xf "$TMP/s.tar" -C "$TMP/sx" &&
    for f in "$TMP/sx"/blobs/sha256/*; do ! (gzip -dc "$f" 2>/dev/null || cat "$f") | grep -aqF "$secret" || exit 1; done &&
    ! grep -raqF "$secret" "$IMGBUILD_CACHE/cache" &&
    (cd "$S" && expect_error "Dockerfile:2: RUN --mount=.*secret .token. was not given" --no-cache -o "$TMP/s2.tar")
'

test_expect_success 'RUN --mount=type=tmpfs: a private tmpfs (1777, size= enforced) that never reaches the layer' '
    F3=$TMP/tmpfs && new_repo "$F3" &&
    printf "%s\n" "FROM $BASE" \
        "RUN --mount=type=tmpfs,target=/scratch/work,size=64k sh -c \"echo x > /scratch/work/f && stat -c %a /scratch/work > /mode && (head -c 200000 /dev/zero > /scratch/work/big && echo fit || echo full) > /limit\"" \
        "RUN --mount=type=tmpfs,target=/scratch sh -c \"test ! -e /scratch/work/f && echo empty > /second\"" \
        "RUN --mount=type=tmpfs,target=/t,size=lots true" >"$F3/Dockerfile" &&
    sed -i "\$d" "$F3/Dockerfile" && commit_all "$F3" m &&
    (cd "$F3" && ib -o "$TMP/m.tar" -q >/dev/null) &&
    unpack_image "$TMP/m.tar" "$TMP/mu" && test "$(cat "$TMP/mu/rootfs/mode")" = 1777 &&
    test "$(cat "$TMP/mu/rootfs/limit")" = full && test "$(cat "$TMP/mu/rootfs/second")" = empty &&
    test ! -e "$TMP/mu/rootfs/scratch" &&
    printf "FROM %s\nRUN --mount=type=tmpfs,target=/t,size=lots true\n" "$BASE" >"$F3/Dockerfile" && commit_all "$F3" bad &&
    (cd "$F3" && expect_error "Dockerfile:2: RUN --mount=type=tmpfs,target=/t,size=lots: invalid size lots" -o "$TMP/m2.tar") &&
    printf "FROM %s\nRUN --mount=type=npipe,target=/t true\n" "$BASE" >"$F3/Dockerfile" && commit_all "$F3" npipe &&
    (cd "$F3" && expect_error "Dockerfile:2: RUN --mount=type=npipe is not supported" -o "$TMP/m3.tar")
'

test_done
