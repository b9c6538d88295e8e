#!/usr/bin/env bash
# The cache shared through a registry: a CI runner exports its layers with
# --cache-to; a fresh runner (empty cache dir) imports them with --cache-from
# and compresses nothing, producing the same digest. Entries are plain OCI
# images (Harbor accepts them), verified on import.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/registry.sh"

registry_start P plain || exit 1

R=$TMP/repo
new_repo "$R"
mkdir -p "$R/app"
printf 'flask==3.0.3\n' >"$R/requirements.txt"
head -c 3000000 /dev/urandom >"$R/app/model.bin"
echo 'print(1)' >"$R/app/main.py"
printf 'FROM scratch\nCOPY requirements.txt /app/\nCOPY app/ /app/app/\n' >"$R/Dockerfile"
commit_all "$R" init

test_expect_success 'runner A builds and exports its layers as plain OCI images' '
    export IMGBUILD_CACHE="$TMP/runner-a" &&
    (cd "$R" && ib --plain-http --cache-to "$P_HOST/wepp/buildcache" -o "$TMP/a.tar" --progress plain >/dev/null) &&
    grep -q "exported 2 cache entries to $P_HOST/wepp/buildcache" "$TMP/last.err" &&
    test "$(registry_count P "^PUT /v2/wepp/buildcache/manifests/cache-[0-9a-f]{64} 201$")" = 2 &&
    tag=$(registry_curl P -s "$P_URL/v2/wepp/buildcache/tags/list" | python3 -c "import json,sys;print(json.load(sys.stdin)[\"tags\"][0])") &&
    skopeo inspect --tls-verify=false "docker://$P_HOST/wepp/buildcache:$tag" >/dev/null
'

test_expect_success 'runner B (empty cache) imports every layer, same digest, nothing rebuilt' '
    export IMGBUILD_CACHE="$TMP/runner-b" &&
    (cd "$R" && ib --plain-http --cache-from "$P_HOST/wepp/buildcache" -o "$TMP/b.tar" --progress plain >/dev/null) &&
    test "$(grep -c " CACHED .*from $P_HOST/wepp/buildcache" "$TMP/last.err")" = 2 &&
    ! grep -q " BUILT " "$TMP/last.err" &&
    test "$(digest_of "$TMP/b.tar")" = "$(digest_of "$TMP/a.tar")" &&
    (cd "$R" && ib -o "$TMP/b2.tar" --progress plain >/dev/null) && test "$(grep -c " CACHED " "$TMP/last.err")" = 2
'

test_expect_success 'a code-only commit on runner C: deps layer imported, app layer built' '
    echo "print(2)" >"$R/app/main.py" && commit_all "$R" code &&
    export IMGBUILD_CACHE="$TMP/runner-c" &&
    (cd "$R" && ib --plain-http --cache-from "$P_HOST/wepp/buildcache" -o "$TMP/c.tar" --progress plain >/dev/null) &&
    grep -qE "COPY requirements.txt /app/ +CACHED .*from $P_HOST/wepp/buildcache" "$TMP/last.err" &&
    grep -qE "COPY app/ /app/app/ +BUILT" "$TMP/last.err"
'

test_expect_success 'RUN layers travel through the registry cache too' '
    B=$TMP/bb && new_repo "$B" && mkdir -p "$B/rootfs/bin" "$B/rootfs/tmp" && touch "$B/rootfs/tmp/.keep" &&
    cp "$(command -v busybox)" "$B/rootfs/bin/busybox" && ln -s busybox "$B/rootfs/bin/sh" && ln -s busybox "$B/rootfs/bin/echo" &&
    printf "FROM scratch\nCOPY rootfs/ /\n" >"$B/Dockerfile" && commit_all "$B" bb &&
    (cd "$B" && ib --name local/bb -o "$TMP/bb.tar" -q >/dev/null) &&
    BASE=local/bb:sha-$(git -C "$B" rev-parse HEAD) &&
    W=$TMP/withrun && new_repo "$W" && printf "FROM %s\nRUN echo built-once > /tmp/marker\n" "$BASE" >"$W/Dockerfile" && commit_all "$W" w &&
    export IMGBUILD_CACHE="$TMP/runner-e" && ib load "$TMP/bb.tar" >/dev/null &&
    (cd "$W" && ib --plain-http --cache-to "$P_HOST/wepp/buildcache" -o "$TMP/w1.tar" --progress plain >/dev/null) &&
    grep -qE "RUN echo built-once .* BUILT" "$TMP/last.err" &&
    export IMGBUILD_CACHE="$TMP/runner-f" && ib load "$TMP/bb.tar" >/dev/null &&
    (cd "$W" && ib --plain-http --cache-from "$P_HOST/wepp/buildcache" -o "$TMP/w2.tar" --progress plain >/dev/null) &&
    grep -qE "RUN echo built-once .* CACHED .*from $P_HOST/wepp/buildcache" "$TMP/last.err" &&
    test "$(digest_of "$TMP/w2.tar")" = "$(digest_of "$TMP/w1.tar")"
'

test_expect_success 'an entry whose manifest lies about its layer: the size comes from the blob, a wrong media type is refused' '
    T=$TMP/tamper && new_repo "$T" && echo hello >"$T/f" && printf "FROM scratch\nCOPY f /f\n" >"$T/Dockerfile" &&
    commit_all "$T" t &&
    export IMGBUILD_CACHE="$TMP/runner-t" &&
    (cd "$T" && ib --plain-http --cache-to "$P_HOST/wepp/tamper" -o "$TMP/t0.tar" >/dev/null) &&
    tag=$(registry_curl P "$P_URL/v2/wepp/tamper/tags/list" | python3 -c "import json,sys;print(json.load(sys.stdin)[\"tags\"][0])") &&
    registry_curl P -H "Accept: application/vnd.oci.image.manifest.v1+json" "$P_URL/v2/wepp/tamper/manifests/$tag" >"$TMP/m.json" &&
    lie() { python3 -c "import json,sys;m=json.load(open(sys.argv[1]));exec(sys.argv[2]);json.dump(m,open(sys.argv[3],\"w\"))" "$TMP/m.json" "$1" "$TMP/lie.json" &&
            registry_curl P -o /dev/null -X PUT -H "Content-Type: application/vnd.oci.image.manifest.v1+json" \
                --data-binary @"$TMP/lie.json" "$P_URL/v2/wepp/tamper/manifests/$tag"; } &&
    size_of() { skopeo inspect --raw oci-archive:"$1" | python3 -c "import json,sys;print(json.load(sys.stdin)[\"layers\"][0][\"size\"])"; } &&
    lie "m[\"layers\"][0][\"size\"]+=7" &&
    for run in local remote; do
        export IMGBUILD_CACHE="$TMP/runner-t-$run" &&
        if [ $run = local ]; then ib load "$TMP/t0.tar" >/dev/null; fi &&
        (cd "$T" && ib --plain-http --cache-from "$P_HOST/wepp/tamper" -o "$TMP/t1.tar" --progress plain >/dev/null) &&
        grep -qE "COPY f /f +CACHED .*from $P_HOST/wepp/tamper" "$TMP/last.err" &&
        test "$(digest_of "$TMP/t1.tar")" = "$(digest_of "$TMP/t0.tar")" &&
        test "$(size_of "$TMP/t1.tar")" = "$(size_of "$TMP/t0.tar")" || exit 1
    done &&
    lie "m[\"layers\"][0][\"mediaType\"]=\"application/vnd.oci.image.layer.v1.tar\"" &&
    export IMGBUILD_CACHE="$TMP/runner-t-mt" &&
    (cd "$T" && ib --plain-http --cache-from "$P_HOST/wepp/tamper" -o "$TMP/t2.tar" --progress plain >/dev/null) &&
    grep -q "warning: --cache-from $P_HOST/wepp/tamper: cache entry for sha256:[0-9a-f]* labels its layer application/vnd.oci.image.layer.v1.tar, but the blob is gzip-compressed (refused)" "$TMP/last.err" &&
    grep -qE "COPY f /f +BUILT" "$TMP/last.err" &&
    test "$(digest_of "$TMP/t2.tar")" = "$(digest_of "$TMP/t0.tar")" &&
    unpack_image "$TMP/t2.tar" "$TMP/t2" && test "$(cat "$TMP/t2/rootfs/f")" = hello
'

test_expect_success 'an unreachable cache source is a warning, not a failure' '
    export IMGBUILD_CACHE="$TMP/runner-d" &&
    (cd "$R" && ib --plain-http --cache-from 127.0.0.1:1/wepp/buildcache -o "$TMP/d.tar" --progress plain >/dev/null) &&
    grep -q "warning: --cache-from 127.0.0.1:1/wepp/buildcache" "$TMP/last.err" &&
    test "$(digest_of "$TMP/d.tar")" = "$(digest_of "$TMP/c.tar")" &&
    test "$(grep -c "warning: --cache-from" "$TMP/last.err")" = 1 &&
    { rc=0; (cd "$R" && ib --cache-to "$P_HOST/wepp/buildcache:v1" -o "$TMP/e.tar") || rc=$?; } && test $rc = 2 &&
    grep -q "^imgbuild: error: --cache-to .*the tags are the cache keys" "$TMP/last.err" && test ! -e "$TMP/e.tar"
'

test_expect_success 'cache mounts travel: a fresh runner starts with the wheels the last one downloaded' '
    BASE=local/bb:sha-$(git -C "$TMP/bb" rev-parse HEAD) &&
    M=$TMP/mounts && new_repo "$M" &&
    cat >"$M/Dockerfile" <<DF &&
FROM $BASE
ARG PIN=1
ARG RUNNER
RUN --mount=type=cache,target=/root/.cache/pip sh -c "test -f /root/.cache/pip/wheel-\$PIN || echo downloaded-by-\$RUNNER > /root/.cache/pip/wheel-\$PIN; echo pin \$PIN from \$(cat /root/.cache/pip/wheel-\$PIN) > /tmp/got"
DF
    commit_all "$M" m &&
    export IMGBUILD_CACHE="$TMP/runner-g" && ib load "$TMP/bb.tar" >/dev/null &&
    (cd "$M" && ib --plain-http --build-arg RUNNER=g --cache-to "$P_HOST/wepp/buildcache" -o "$TMP/m1.tar" --progress plain >/dev/null) &&
    grep -q "cache mount /root/.cache/pip exported to $P_HOST/wepp/buildcache" "$TMP/last.err" &&
    test "$(registry_count P "^PUT /v2/wepp/buildcache/manifests/mount-[0-9a-f]{32} 201$")" = 1 &&
    (cd "$M" && ib --plain-http --build-arg RUNNER=g --build-arg PIN=2 --cache-to "$P_HOST/wepp/buildcache" -o "$TMP/m1b.tar" --progress plain >/dev/null) &&
    grep -q "cache mount /root/.cache/pip exported to" "$TMP/last.err" &&
    (cd "$M" && ib --plain-http --build-arg RUNNER=g --build-arg PIN=2 --no-cache --cache-to "$P_HOST/wepp/buildcache" -o "$TMP/m1c.tar" --progress plain >/dev/null) &&
    grep -q "cache mount /root/.cache/pip unchanged in" "$TMP/last.err" &&
    test "$(registry_count P "^PUT /v2/wepp/buildcache/manifests/mount-[0-9a-f]{32} 201$")" = 2 &&
    export IMGBUILD_CACHE="$TMP/runner-h" && ib load "$TMP/bb.tar" >/dev/null &&
    (cd "$M" && ib --plain-http --build-arg RUNNER=h --build-arg PIN=1 --no-cache --cache-from "$P_HOST/wepp/buildcache" -o "$TMP/m2.tar" --progress plain >/dev/null) &&
    grep -q "cache mount /root/.cache/pip imported from $P_HOST/wepp/buildcache" "$TMP/last.err" &&
    unpack_image "$TMP/m2.tar" "$TMP/m2" && test "$(cat "$TMP/m2/rootfs/tmp/got")" = "pin 1 from downloaded-by-g" &&
    test ! -e "$TMP/m2/rootfs/root/.cache/pip/wheel-1" &&
    ls "$TMP/runner-h/mounts/"*/wheel-2 >/dev/null
'

test_expect_success 'a token that expires mid-build (registry clock) is fetched again, not taken for "access denied"' '
    # tokens said to last 60 s that the registry rejects after 3 s (see tokenserver.py)
    TOKEN_EXPIRY=60 TOKEN_EXP_SKEW=117 registry_start S token || exit 1
    export IMGBUILD_CACHE="$TMP/runner-s" && ib load "$TMP/bb.tar" >/dev/null &&
    printf "%s" "$S_PASS" | ib login "$S_HOST" -u "$S_USER" --password-stdin --ca-file "$S_CA" >/dev/null &&
    BASE=local/bb:sha-$(git -C "$TMP/bb" rev-parse HEAD) &&
    L=$TMP/long && new_repo "$L" &&
    printf "FROM %s\nRUN echo a > /a\nRUN sleep 4\nRUN echo b > /b\n" "$BASE" >"$L/Dockerfile" && commit_all "$L" long &&
    t0=$(token_count S) &&
    (cd "$L" && ib --ca-file "$S_CA" --cache-from "$S_HOST/wepp/buildcache" --cache-to "$S_HOST/wepp/buildcache" \
        -o "$TMP/long.tar" --progress plain >/dev/null) &&
    ! grep -q "warning: --cache-from" "$TMP/last.err" &&
    grep -q "exported 3 cache entries to $S_HOST/wepp/buildcache" "$TMP/last.err" &&
    test $(( $(token_count S) - t0 )) -ge 2 &&
    test "$(registry_count S " 401$")" -ge 2
'

test_done
