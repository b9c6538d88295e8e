#!/usr/bin/env bash
# RUN --mount=type=bind (uv's documented pattern: bind the lock files, install, never copy them into a
# layer): the file comes from the commit (not the worktree), its content is in the RUN's cache key
# (a changed uv.lock reruns the install with the reason, an unrelated change does not), the mount is
# read-only unless rw and an rw mount's writes are thrown away, from=STAGE works, .dockerignore applies,
# a missing or escaping source is a one-line error, and no mount stub is left in the layer.
. "$(dirname "$0")/lib.sh"

B=$TMP/base
new_repo "$B"
bb_rootfs "$B/rootfs" sh ls cat echo rm mkdir touch wc test sha256sum sort || exit 1
mkdir -p "$B/rootfs/tmp"
printf 'FROM scratch\nCOPY rootfs/ /\n' >"$B/Dockerfile"
commit_all "$B" base
(cd "$B" && ib --name local/bb -o "$TMP/bb.tar" -q >/dev/null && ib load "$TMP/bb.tar" >/dev/null) || exit 1
BASE=local/bb:sha-$(git -C "$B" rev-parse HEAD)

R=$TMP/app
new_repo "$R"
mkdir -p "$R/src" "$R/secret-notes"
printf 'version = 1\n[[package]]\nname = "flask"\nversion = "3.0.3"\n' >"$R/uv.lock"
printf '[project]\nname = "weppcloud"\n' >"$R/pyproject.toml"
echo 'print(1)' >"$R/src/main.py"
echo 'do not ship' >"$R/secret-notes/n.txt"
printf 'secret-notes\n' >"$R/.dockerignore"
cat >"$R/Dockerfile" <<DF
FROM $BASE AS build
RUN echo built-in-stage > /out.txt

FROM $BASE
WORKDIR /app
RUN --mount=type=bind,source=uv.lock,target=uv.lock --mount=type=bind,source=pyproject.toml,target=/app/pyproject.toml \\
    cat uv.lock pyproject.toml | sha256sum > /deps.sha && ls /app > /app-during-run.txt
RUN --mount=type=bind,target=/ctx ls /ctx | sort > /ctx-listing.txt
RUN --mount=type=bind,from=build,source=/out.txt,target=/tmp/o cat /tmp/o > /from-stage.txt
RUN --mount=type=bind,source=src,target=/src,rw echo scribble > /src/new.txt && ls /src | sort > /rw-listing.txt
COPY src/ /app/src/
DF
commit_all "$R" app

test_expect_success 'bind-mounted files are read during RUN and never land in a layer' '
    echo "uncommitted" >>"$R/uv.lock" &&
    (cd "$R" && ib -o "$TMP/a.tar" --progress plain >/dev/null) && git -C "$R" checkout -q uv.lock &&
    unpack_image "$TMP/a.tar" "$TMP/a" && F=$TMP/a/rootfs &&
    want=$(git -C "$R" show HEAD:uv.lock HEAD:pyproject.toml | sha256sum) &&
    test "$(cat "$F/deps.sha")" = "$want" &&
    grep -qx "uv.lock" "$F/app-during-run.txt" && grep -qx "pyproject.toml" "$F/app-during-run.txt" &&
    test ! -e "$F/app/uv.lock" && test ! -e "$F/app/pyproject.toml" && test ! -e "$F/ctx" &&
    test -d "$F/app" && test "$(ls "$F/app")" = src &&
    test "$(cat "$F/from-stage.txt")" = built-in-stage && test ! -e "$F/tmp/o"
'

test_expect_success '.dockerignore applies to a bind of the context; rw writes go nowhere' '
    F=$TMP/a/rootfs &&
    grep -qx "uv.lock" "$F/ctx-listing.txt" && grep -qx "src" "$F/ctx-listing.txt" &&
    ! grep -q "secret-notes" "$F/ctx-listing.txt" &&
    grep -qx "new.txt" "$F/rw-listing.txt" && grep -qx "main.py" "$F/rw-listing.txt" &&
    test ! -e "$R/src/new.txt" && test ! -e "$F/src" && test -z "$(git -C "$R" status --porcelain)"
'

test_expect_success 'the lock file content keys the RUN: unrelated commit CACHED, changed uv.lock rebuilt with the reason' '
    echo "# docs" >"$R/README.md" && commit_all "$R" docs &&
    (cd "$R" && ib -o "$TMP/b.tar" --progress plain >/dev/null) &&
    grep -qE "RUN --mount=type=bind,source=uv.lock.* CACHED" "$TMP/last.err" &&
    grep -qE "RUN --mount=type=bind,target=/ctx .* BUILT" "$TMP/last.err" &&
    printf "[[package]]\nname = \"rq\"\n" >>"$R/uv.lock" && commit_all "$R" deps &&
    (cd "$R" && ib -o "$TMP/c.tar" --progress plain >/dev/null) &&
    grep -qE "RUN --mount=type=bind,source=uv.lock.* BUILT .*uv.lock changed" "$TMP/last.err" &&
    grep -qE "RUN --mount=type=bind,from=build.* CACHED|RUN --mount=type=bind,from=build.* BUILT" "$TMP/last.err" &&
    unpack_image "$TMP/c.tar" "$TMP/c" &&
    test "$(cat "$TMP/c/rootfs/deps.sha")" = "$(git -C "$R" show HEAD:uv.lock HEAD:pyproject.toml | sha256sum)"
'

test_expect_success '--worktree: a bound file rewritten during the build fails the RUN, never poisons the cache' '
    # As in t0008 for COPY: z flips between AAAA and BBBB while it is hashed
    # for the key and copied for the mount (after big.bin). A RUN that
    # succeeded must have seen what its key says: a later hit equals a cold build.
    F=$TMP/flip && new_repo "$F" && head -c 8000000 /dev/urandom >"$F/big.bin" &&
    printf "FROM %s\nRUN --mount=type=bind,target=/m cat /m/z > /got\n" "$BASE" >"$F/Dockerfile" &&
    printf AAAA >"$TMP/A" && printf BBBB >"$TMP/B" && cp "$TMP/A" "$F/z" && commit_all "$F" flip &&
    flip_check "$F" "^imgbuild: error: Dockerfile:2: .*z changed while the build read it; build again$" "$TMP/bb.tar"
'

test_expect_success 'a running build keeps its scratch dir when another process sweeps tmp/, however old it looks' '
    # The sweep at store open used to remove tmp/build-* dirs by mtime alone
    # (a day): a RUN longer than that, or a touched dir, lost its scratch.
    S=$TMP/slow && new_repo "$S" && echo data >"$S/d" &&
    printf "FROM %s\nRUN --mount=type=bind,source=d,target=/d sleep 3 && cat /d > /got\n" "$BASE" >"$S/Dockerfile" &&
    commit_all "$S" slow &&
    export IMGBUILD_CACHE="$TMP/sweep" && ib load "$TMP/bb.tar" >/dev/null &&
    { (cd "$S" && exec "$IMGBUILD" -q -o "$TMP/slow.tar" >"$TMP/slow.out" 2>"$TMP/slow.err") & } && pid=$! &&
    for i in $(seq 1 50); do ls -d "$IMGBUILD_CACHE"/tmp/build-*/run-* >/dev/null 2>&1 && break; sleep 0.1; done &&
    touch -d "3 days ago" "$IMGBUILD_CACHE"/tmp/build-* &&
    ib cache ls >/dev/null && ib cache du >/dev/null || { kill $pid; exit 1; }
    rc=0; wait $pid || rc=$?
    cat "$TMP/slow.err" && test $rc = 0 &&
    unpack_image "$TMP/slow.tar" "$TMP/slow" && test "$(cat "$TMP/slow/rootfs/got")" = data &&
    sleep 1 && ib cache ls >/dev/null && test -z "$(ls "$IMGBUILD_CACHE/tmp" | grep "^build-")"
'

test_expect_success 'a read-only bind cannot be written; the failing RUN names its line' '
    printf "FROM %s\nRUN --mount=type=bind,source=src,target=/src touch /src/x\n" "$BASE" >"$R/Dockerfile.ro" &&
    commit_all "$R" ro &&
    (cd "$R" && expect_error "Dockerfile.ro:2: .*status" -f Dockerfile.ro -o "$TMP/ro.tar") && test ! -e "$TMP/ro.tar"
'

test_expect_success 'a missing, ignored or escaping source is a one-line error naming the mount' '
    printf "FROM %s\nRUN --mount=type=bind,source=nope.lock,target=/x true\n" "$BASE" >"$R/Dockerfile.m1" &&
    printf "FROM %s\nRUN --mount=type=bind,source=secret-notes/n.txt,target=/x true\n" "$BASE" >"$R/Dockerfile.m2" &&
    printf "FROM %s\nRUN --mount=type=bind,source=../../../etc/passwd,target=/x true\n" "$BASE" >"$R/Dockerfile.m3" &&
    printf "FROM %s\nRUN --mount=type=bind,source=uv.lock true\n" "$BASE" >"$R/Dockerfile.m4" &&
    commit_all "$R" bad &&
    (cd "$R" && expect_error "Dockerfile.m1:2: .*source .nope.lock. not found" -f Dockerfile.m1 -o "$TMP/m.tar") &&
    (cd "$R" && expect_error "Dockerfile.m2:2: .*not found" -f Dockerfile.m2 -o "$TMP/m.tar") &&
    (cd "$R" && expect_error "Dockerfile.m3:2: .*not found" -f Dockerfile.m3 -o "$TMP/m.tar") &&
    (cd "$R" && expect_error "Dockerfile.m4:2: .*target=" -f Dockerfile.m4 -o "$TMP/m.tar") &&
    test ! -e "$TMP/m.tar"
'

test_expect_success 'a rebuilt RUN names what changed: USER, WORKDIR, SHELL, a pruned entry' '
    N=$TMP/notes && new_repo "$N" &&
    printf "FROM %s\nUSER root\nWORKDIR /\nSHELL [\"/bin/sh\", \"-c\"]\nRUN echo hi\n" "$BASE" >"$N/Dockerfile" &&
    commit_all "$N" n && export IMGBUILD_CACHE="$TMP/notes-cache" && ib load "$TMP/bb.tar" >/dev/null &&
    step() { (cd "$N" && ib -o "$TMP/n.tar" --progress plain >/dev/null) && grep -E "RUN echo hi " "$TMP/last.err"; } &&
    step | grep -q "BUILT" &&
    sed -i "s/^USER root/USER app/" "$N/Dockerfile" && commit_all "$N" user &&
    step | grep -qE "BUILT .*rebuilt: user changed \(root -> app\)$" &&
    sed -i "s|^WORKDIR /$|WORKDIR /bin|" "$N/Dockerfile" && commit_all "$N" wd &&
    step | grep -qE "BUILT .*rebuilt: workdir changed \(/ -> /bin\)$" &&
    sed -i "s/\"-c\"/\"-ec\"/" "$N/Dockerfile" && commit_all "$N" shell &&
    step | grep -qE "BUILT .*rebuilt: SHELL changed \(/bin/sh -c -> /bin/sh -ec\)$" &&
    step | grep -q "CACHED" &&
    L=$(skopeo inspect --raw oci-archive:"$TMP/n.tar" | python3 -c "import json,sys;print(json.load(sys.stdin)[\"layers\"][-1][\"digest\"])") &&
    grep -l "\"$L\"" "$IMGBUILD_CACHE"/cache/entries/* | xargs rm &&
    step | grep -qE "BUILT .*rebuilt: inputs unchanged, but the cached layer was pruned since the last build$"
'

test_done
