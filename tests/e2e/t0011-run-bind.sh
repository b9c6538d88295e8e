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

test_done
