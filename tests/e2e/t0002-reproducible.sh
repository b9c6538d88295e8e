#!/usr/bin/env bash
# Same commit + Dockerfile => same manifest digest: from two clones at
# different paths, with umask 022 and 002, cold and warm cache dirs, any
# thread count. SOURCE_DATE_EPOCH overrides the commit time.
. "$(dirname "$0")/lib.sh"

O=$TMP/origin
new_repo "$O"
mkdir -p "$O/svc/api" "$O/bin"
for i in $(seq 1 30); do seq 1 $((i * 50)) >"$O/svc/api/data_$i.txt"; done
head -c 400000 /dev/urandom >"$O/svc/blob.bin"
printf '#!/bin/sh\necho run\n' >"$O/bin/run"
chmod +x "$O/bin/run"
ln -s ../bin/run "$O/svc/run"
cat >"$O/Dockerfile" <<'DF'
ARG PY=3.12
FROM scratch AS base
ARG PY
LABEL python.version=$PY
COPY svc/ /srv/svc/
COPY --chmod=0700 bin/run /usr/local/bin/run
FROM base
ENV APP=svc
CMD ["/usr/local/bin/run"]
DF
commit_all "$O" first
git -C "$O" tag -a v1.0 -m release
SHA=$(git -C "$O" rev-parse HEAD)

git clone -q "$O" "$TMP/a/x"
(umask 002 && git clone -q "$O" "$TMP/b/deep/er/y")

build_digest() { # DIR CACHE UMASK [ARGS...]
    local dir=$1 cache=$2 um=$3
    shift 3
    (cd "$dir" && umask "$um" && ib --cache-dir "$cache" -q -o "$TMP/out-$RANDOM.tar" "$@")
}

test_expect_success 'two clones, two umasks, cold caches: same digest' '
    d1=$(build_digest "$TMP/a/x" "$TMP/c1" 022) &&
    d2=$(build_digest "$TMP/b/deep/er/y" "$TMP/c2" 002) &&
    echo "$d1 $d2" && test -n "$d1" && test "$d1" = "$d2" &&
    echo "$d1" >"$TMP/ref.digest"
'

test_expect_success 'warm cache dir gives the same digest' '
    d=$(build_digest "$TMP/a/x" "$TMP/c1" 022) &&
    test "$d" = "$(cat "$TMP/ref.digest")"
'

test_expect_success 'thread count does not change the bytes' '
    d1=$(build_digest "$TMP/a/x" "$TMP/c3" 022 -j 1) &&
    d2=$(build_digest "$TMP/a/x" "$TMP/c4" 022 -j 3) &&
    test "$d1" = "$(cat "$TMP/ref.digest")" && test "$d2" = "$d1"
'

test_expect_success 'abbreviated SHA, branch and annotated tag resolve to the full SHA' '
    cd "$TMP/a/x" &&
    for rev in "${SHA:0:7}" main v1.0 HEAD; do
        ib --tag "$rev" -o "$TMP/rev.tar" >"$TMP/rev.out" &&
        grep -q "^Tag     sha-$SHA\$" "$TMP/rev.out" &&
        test "$(digest_of "$TMP/rev.tar")" = "$(cat "$TMP/ref.digest")" || exit 1
    done
'

test_expect_success 'tarball bytes are identical too (same name given)' '
    (cd "$TMP/a/x" && ib --name app -q -o "$TMP/t1.tar" >/dev/null) &&
    (cd "$TMP/b/deep/er/y" && umask 002 && ib --cache-dir "$TMP/c9" --name app -q -o "$TMP/t2.tar" >/dev/null) &&
    cmp "$TMP/t1.tar" "$TMP/t2.tar"
'

test_expect_success 'SOURCE_DATE_EPOCH overrides the commit time' '
    d=$(cd "$TMP/a/x" && SOURCE_DATE_EPOCH=1700000000 ib -q -o "$TMP/e.tar") &&
    test "$d" != "$(cat "$TMP/ref.digest")" &&
    skopeo inspect --config oci-archive:"$TMP/e.tar" | grep -q "\"created\": \"2023-11-14T22:13:20Z\"" &&
    d2=$(cd "$TMP/b/deep/er/y" && SOURCE_DATE_EPOCH=1700000000 ib -q -o "$TMP/e2.tar") &&
    test "$d" = "$d2"
'

test_expect_success 'a new commit changes the digest; the old commit still builds the old one' '
    cd "$TMP/a/x" && echo change >>svc/api/data_1.txt && git commit -qam change &&
    d=$(ib -q -o "$TMP/new.tar") && test "$d" != "$(cat "$TMP/ref.digest")" &&
    d_old=$(ib --tag HEAD~1 -q -o "$TMP/old.tar") && test "$d_old" = "$(cat "$TMP/ref.digest")"
'

test_expect_success '--worktree: umask-independent, tagged -dirty, includes uncommitted files' '
    cd "$TMP/a/x" && echo wip >svc/api/wip.txt &&
    (umask 022 && cp -r "$TMP/a/x" "$TMP/w1") && (umask 002 && cp -r "$TMP/a/x" "$TMP/w2" && chmod -R g+w "$TMP/w2") &&
    d1=$(cd "$TMP/w1" && ib --worktree -q -o "$TMP/w1.tar") &&
    d2=$(cd "$TMP/w2" && umask 002 && ib --worktree -q -o "$TMP/w2.tar") &&
    test "$d1" = "$d2" &&
    (cd "$TMP/w1" && ib --worktree -o "$TMP/w3.tar") | grep -q "^Tag     sha-$(git rev-parse HEAD)-dirty\$" &&
    unpack_image "$TMP/w1.tar" "$TMP/wb" && test "$(cat "$TMP/wb/rootfs/srv/svc/api/wip.txt")" = wip &&
    test "$(stat -c %a "$TMP/wb/rootfs/srv/svc/api/wip.txt")" = 644
'

test_done
