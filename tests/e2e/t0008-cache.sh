#!/usr/bin/env bash
# The layer cache: keyed by content (git blob ids), so a code-only commit
# reuses the dependency layer; misses say which input changed; ARG changes
# invalidate from their first use; safe under concurrent builds and SIGKILL;
# damaged entries are detected; prune keeps what it should.
. "$(dirname "$0")/lib.sh"

R=$TMP/repo
new_repo "$R"
mkdir -p "$R/app" "$R/config" "$R/big"
printf 'flask==3.0.3\nrq==1.16.2\n' >"$R/requirements.txt"
echo 'version = 1' >"$R/uv.lock"
echo '[project]' >"$R/pyproject.toml"
for i in 1 2 3; do echo "def f$i(): return $i" >"$R/app/m$i.py"; done
echo 'debug = false' >"$R/config/settings-3.12.toml"
echo 'debug = true' >"$R/config/settings-3.13.toml"
head -c 20000000 /dev/urandom >"$R/big/data.bin"
cat >"$R/Dockerfile" <<'DF'
FROM scratch
ARG PYVER=3.12
COPY requirements.txt uv.lock pyproject.toml /app/
COPY big/ /opt/big/
COPY app/ /app/app/
COPY config/settings-${PYVER}.toml /app/config/settings.toml
CMD ["python", "-m", "app"]
DF
commit_all "$R" init

layer() { skopeo inspect --raw oci-archive:"$1" | python3 -c "import json,sys;print(json.load(sys.stdin)[\"layers\"][$2][\"digest\"])"; }
build() { (cd "$R" && ib -o "$1" --progress plain "${@:2}" >/dev/null); }

test_expect_success 'first build: every layer built; second: every layer cached, same digest' '
    build "$TMP/a1.tar" && grep -c " BUILT " "$TMP/last.err" | grep -qx 4 &&
    build "$TMP/a2.tar" && grep -c " CACHED " "$TMP/last.err" | grep -qx 4 &&
    test "$(digest_of "$TMP/a1.tar")" = "$(digest_of "$TMP/a2.tar")"
'

test_expect_success 'code-only commit: the deps layer is CACHED and its digest unchanged' '
    echo "def f4(): return 4" >"$R/app/m4.py" && commit_all "$R" code &&
    build "$TMP/b.tar" &&
    grep -qE "COPY requirements.txt uv.lock pyproject.toml /app/ +CACHED" "$TMP/last.err" &&
    grep -qE "COPY big/ /opt/big/ +CACHED" "$TMP/last.err" &&
    grep -qE "COPY app/ /app/app/ +BUILT .*rebuilt: app/m4.py added" "$TMP/last.err" &&
    test "$(layer "$TMP/b.tar" 0)" = "$(layer "$TMP/a1.tar" 0)" &&
    test "$(layer "$TMP/b.tar" 1)" = "$(layer "$TMP/a1.tar" 1)" &&
    test "$(layer "$TMP/b.tar" 2)" != "$(layer "$TMP/a1.tar" 2)"
'

test_expect_success 'a changed dependency manifest rebuilds the deps layer and says why' '
    echo "redis==5.0.4" >>"$R/requirements.txt" && commit_all "$R" deps &&
    build "$TMP/c.tar" &&
    grep -qE "COPY requirements.txt uv.lock pyproject.toml /app/ +BUILT .*rebuilt: requirements.txt changed \(git:[0-9a-f]{12} -> git:[0-9a-f]{12}\)" "$TMP/last.err" &&
    grep -qE "COPY app/ /app/app/ +BUILT .*rebuilt: an earlier step changed" "$TMP/last.err" &&
    test "$(layer "$TMP/c.tar" 0)" != "$(layer "$TMP/b.tar" 0)"
'

test_expect_success 'an ARG change invalidates from its first use, not before' '
    build "$TMP/d.tar" --build-arg PYVER=3.13 &&
    grep -qE "COPY requirements.txt uv.lock pyproject.toml /app/ +CACHED" "$TMP/last.err" &&
    grep -qE "COPY app/ /app/app/ +CACHED" "$TMP/last.err" &&
    grep -qE "COPY config/settings-\\\$\{PYVER\}.toml /app/config/settings.toml +BUILT .*rebuilt: .*settings-3.13.toml" "$TMP/last.err"
'

test_expect_success 'a warm cache gives the digest a cold cache gives (cache and reproducibility agree)' '
    d_warm=$(digest_of "$TMP/c.tar") &&
    d_cold=$(cd "$R" && IMGBUILD_CACHE="$TMP/cold" "$IMGBUILD" -q -o "$TMP/cold.tar") &&
    test "$d_warm" = "$d_cold"
'

test_expect_success 'file times are part of the key: SOURCE_DATE_EPOCH before 1980, warm = cold' '
    d_warm=$(cd "$R" && SOURCE_DATE_EPOCH=0 ib -q -o "$TMP/e0.tar") &&
    d_cold=$(cd "$R" && SOURCE_DATE_EPOCH=0 IMGBUILD_CACHE="$TMP/cold0" "$IMGBUILD" -q -o "$TMP/e0c.tar") &&
    test "$d_warm" = "$d_cold" && test "$d_warm" != "$(digest_of "$TMP/c.tar")"
'

test_expect_success 'a damaged cached layer is detected and rebuilt, never used' '
    L=$(layer "$TMP/c.tar" 1) &&
    truncate -s 1000 "$IMGBUILD_CACHE/blobs/sha256/${L#sha256:}" &&
    build "$TMP/e.tar" &&
    grep -qE "COPY big/ /opt/big/ +BUILT" "$TMP/last.err" &&
    test "$(digest_of "$TMP/e.tar")" = "$(digest_of "$TMP/c.tar")"
'

test_expect_success 'a damaged cache entry (edited diffID, no checksum) is removed and the step rebuilt, saying why' '
    L=$(layer "$TMP/c.tar" 0) && set -- $(grep -l "\"$L\"" "$IMGBUILD_CACHE"/cache/entries/*) && test $# = 1 &&
    edit() { python3 -c "import json,sys;j=json.load(open(sys.argv[1]));exec(sys.argv[2]);json.dump(j,open(sys.argv[1],\"w\"))" "$1" "$2"; } &&
    edit "$1" "j[\"diff_id\"]=\"sha256:\"+\"0\"*64" &&
    build "$TMP/f.tar" &&
    grep -qE "COPY requirements.txt uv.lock pyproject.toml /app/ +BUILT .*rebuilt: the cache entry was damaged \(checksum mismatch\) and was removed$" "$TMP/last.err" &&
    test "$(digest_of "$TMP/f.tar")" = "$(digest_of "$TMP/c.tar")" && grep -q "\"check\"" "$1" &&
    edit "$1" "del j[\"check\"]" &&
    build "$TMP/f.tar" &&
    grep -qE "COPY requirements.txt uv.lock pyproject.toml /app/ +BUILT .*damaged \(no checksum: written by an older imgbuild\)" "$TMP/last.err" &&
    build "$TMP/f.tar" && grep -qE "COPY requirements.txt uv.lock pyproject.toml /app/ +CACHED" "$TMP/last.err" &&
    test "$(digest_of "$TMP/f.tar")" = "$(digest_of "$TMP/c.tar")"
'

test_expect_success '--worktree: a file rewritten during the build fails the step, never poisons the cache' '
    # z flips between AAAA and BBBB while 8 builds (each with its own cache
    # dir) hash it for the key and read it again for the layer, big.bin
    # (written in between) widening the window. A build may fail with the
    # one-line error and no entry; a build that succeeds must have cached
    # a layer that holds what its key says: a later hit equals a cold build.
    F=$TMP/flip && new_repo "$F" && head -c 8000000 /dev/urandom >"$F/big.bin" &&
    printf "FROM scratch\nCOPY big.bin z /w/\n" >"$F/Dockerfile" &&
    printf AAAA >"$TMP/A" && printf BBBB >"$TMP/B" && cp "$TMP/A" "$F/z" && commit_all "$F" flip &&
    flip_check "$F" "^imgbuild: error: Dockerfile:2: COPY: z changed while the build read it; build again$"
'

test_expect_success 'concurrent builds of two commits into one cache dir' '
    export IMGBUILD_CACHE="$TMP/shared" &&
    old=$(git -C "$R" rev-parse HEAD~1) &&
    pids="" &&
    for i in 1 2 3 4; do
        if [ $((i % 2)) = 0 ]; then rev=HEAD; else rev=$old; fi
        (cd "$R" && exec "$IMGBUILD" --tag $rev -q -o "$TMP/par$i.tar" >"$TMP/par$i.out" 2>"$TMP/par$i.err") & pids="$pids $!"
    done &&
    for p in $pids; do wait $p; done &&
    test "$(cat "$TMP/par2.out")" = "$(digest_of "$TMP/c.tar")" &&
    test "$(cat "$TMP/par4.out")" = "$(digest_of "$TMP/c.tar")" &&
    test "$(cat "$TMP/par1.out")" = "$(digest_of "$TMP/b.tar")" &&
    test "$(cat "$TMP/par3.out")" = "$(digest_of "$TMP/b.tar")" &&
    ! grep -l Sanitizer "$TMP"/par*.err
'

test_expect_success 'SIGKILL at random points (x20), then a normal build gives the right digest' '
    export IMGBUILD_CACHE="$TMP/killed" &&
    for i in $(seq 1 20); do
        (cd "$R" && exec "$IMGBUILD" --no-cache -q -o "$TMP/k.tar" >/dev/null 2>&1) & pid=$!
        sleep "0.$(( (RANDOM % 40) + 1 ))"
        kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null || true
    done &&
    test ! -e "$TMP/k.tar" || skopeo inspect --raw oci-archive:"$TMP/k.tar" >/dev/null &&
    d=$(cd "$R" && ib -q -o "$TMP/k2.tar") && test "$d" = "$(digest_of "$TMP/c.tar")" &&
    ib cache ls >/dev/null
'

test_expect_success 'saved layer indexes: written after a big layer, rebuilt when damaged, never change a digest' '
    I=$IMGBUILD_CACHE/cache/index && test -n "$(ls "$I")" && rm -f "$I"/* &&
    echo "def f8(): return 8" >"$R/app/m8.py" && commit_all "$R" idx0 && build "$TMP/i.tar" &&
    ls "$I" >"$TMP/idx" && test "$(wc -l <"$TMP/idx")" = 1 && F=$I/$(cat "$TMP/idx") &&
    head -n 1 "$F" | grep -qx "imgbuild-layer-index-v2" &&
    printf "garbage" | dd of="$F" bs=1 seek=200 conv=notrunc 2>/dev/null &&
    echo "def f9(): return 9" >"$R/app/m9.py" && commit_all "$R" idx &&
    build "$TMP/i1.tar" && ! grep -q garbage "$F" && head -n 1 "$F" | grep -qx "imgbuild-layer-index-v2" &&
    (export IMGBUILD_CACHE="$TMP/cold-idx" && cd "$R" && ib -q -o "$TMP/i0.tar" >/dev/null) &&
    test "$(digest_of "$TMP/i1.tar")" = "$(digest_of "$TMP/i0.tar")" &&
    rm -f "$I"/* && echo "def f10(): return 10" >"$R/app/m10.py" && commit_all "$R" idx2 &&
    build "$TMP/i2.tar" && ls "$I" | grep -q . &&
    (export IMGBUILD_CACHE="$TMP/cold-idx" && cd "$R" && ib -q -o "$TMP/i3.tar" >/dev/null) &&
    test "$(digest_of "$TMP/i2.tar")" = "$(digest_of "$TMP/i3.tar")"
'

test_expect_success 'cache ls / du / prune keep what they should' '
    export IMGBUILD_CACHE="$TMP/cache" &&
    (cd "$R" && ib -q -o "$TMP/before.tar" >/dev/null) &&
    ib cache ls >"$TMP/ls" && test "$(grep -c "^sha256:" "$TMP/ls")" -ge 6 &&
    ib cache du | grep -q "^Cache   [0-9]* entries" &&
    n0=$(grep -c "^sha256:" "$TMP/ls") &&
    ib cache prune --keep-storage 25MB >"$TMP/p1" &&
    ib cache ls >"$TMP/ls2" && n1=$(grep -c "^sha256:" "$TMP/ls2") && test "$n1" -lt "$n0" && test "$n1" -ge 1 &&
    name="docker.io/library/repo:sha-$(git -C "$R" rev-parse HEAD)" &&
    ib cache prune --all >"$TMP/p2" && grep -q "^Removed" "$TMP/p2" &&
    test -z "$(ls "$IMGBUILD_CACHE/cache/index")" &&
    test "$(ib cache ls | grep -c "^sha256:")" = 0 &&
    ib inspect "$name" >/dev/null &&
    (cd "$R" && ib -q -o "$TMP/after.tar" >/dev/null) && test "$(digest_of "$TMP/after.tar")" = "$(digest_of "$TMP/before.tar")" &&
    { rc=0; ib cache prune --older-than soon || rc=$?; } && test $rc = 2
'

test_expect_success 'rebuilt notes name what changed: an exec bit, a pruned entry, SOURCE_DATE_EPOCH' '
    E=$TMP/explain && new_repo "$E" && mkdir -p "$E/app" && for f in a b c; do echo "$f" >"$E/app/$f.py"; done &&
    echo "#!/bin/sh" >"$E/run.sh" && printf "FROM scratch\nCOPY app/ run.sh /srv/\nCOPY run.sh /bin/run\n" >"$E/Dockerfile" &&
    commit_all "$E" e && export IMGBUILD_CACHE="$TMP/explain-cache" &&
    (cd "$E" && ib -o "$TMP/x1.tar" --progress plain >/dev/null) &&
    chmod +x "$E/run.sh" "$E/app/b.py" && commit_all "$E" exec &&
    (cd "$E" && ib -o "$TMP/x2.tar" --progress plain >/dev/null) &&
    grep -qE "COPY app/ run.sh /srv/ +BUILT .*rebuilt: app/b.py mode changed \(0644 -> 0755\), run.sh mode changed \(0644 -> 0755\)$" "$TMP/last.err" &&
    grep -qE "COPY run.sh /bin/run +BUILT .*rebuilt: run.sh mode changed \(0644 -> 0755\)$" "$TMP/last.err" &&
    L=$(layer "$TMP/x2.tar" 0) && rm "$(grep -l "\"$L\"" "$IMGBUILD_CACHE"/cache/entries/*)" &&
    (cd "$E" && ib -o "$TMP/x3.tar" --progress plain >/dev/null) &&
    grep -qE "COPY app/ run.sh /srv/ +BUILT .*rebuilt: inputs unchanged, but the cached layer was pruned since the last build$" "$TMP/last.err" &&
    grep -qE "COPY run.sh /bin/run +CACHED" "$TMP/last.err" &&
    (cd "$E" && SOURCE_DATE_EPOCH=0 ib -o "$TMP/x4.tar" --progress plain >/dev/null) &&
    test "$(grep -c "rebuilt: SOURCE_DATE_EPOCH changed (layer file times 1980-01-01 -> 1970-01-01)$" "$TMP/last.err")" = 2
'

test_done
