#!/usr/bin/env bash
# push / pull / login against a real CNCF Distribution: plain HTTP, htpasswd
# over TLS (openssl-made CA), and Harbor-style token auth (real RS256 JWTs);
# cross-checked with skopeo both ways; blob skipping, cross-repo mounts, a
# connection cut mid-upload, a registry serving a corrupted blob.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/registry.sh"

registry_start P plain || exit 1
registry_start T htpasswd-tls || exit 1
registry_start K token || exit 1

# An image with a few layers: two small ones (monolithic PUT) and one of ~6 MB
# (one streamed PATCH by default, Content-Range chunks with --chunk-size).
R=$TMP/repo
new_repo "$R"
mkdir -p "$R/app" "$R/data"
for i in $(seq 1 20); do echo "print($i)" >"$R/app/m$i.py"; done
head -c 6000000 /dev/urandom >"$R/data/blob.bin"
printf 'FROM scratch\nCOPY app/ /app/\nCOPY data/ /data/\nCMD ["python","-m","app"]\n' >"$R/Dockerfile"
commit_all "$R" init
SHA=$(git -C "$R" rev-parse HEAD)
(cd "$R" && ib --name wepp/app -o "$TMP/app.tar" -q >/dev/null) || exit 1
D=$(digest_of "$TMP/app.tar")

skopeo_digest() { skopeo inspect "$@" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Digest"])'; }

test_expect_success 'push to a plain registry: tag sha-<commit>, skopeo sees the same digest' '
    ib push --plain-http "$TMP/app.tar" "$P_HOST/wepp/app" >"$TMP/push1.out" &&
    grep -q "^Pushed  $P_HOST/wepp/app:sha-$SHA$" "$TMP/push1.out" &&
    grep -q "^Digest  $D$" "$TMP/push1.out" &&
    test "$(registry_count P "^PATCH /v2/wepp/app/blobs/uploads/")" = 1 &&
    test "$(registry_count P "^PUT /v2/wepp/app/blobs/uploads/.* 201$")" = 3 &&
    test "$(skopeo_digest --tls-verify=false docker://$P_HOST/wepp/app:sha-$SHA)" = "$D" &&
    skopeo copy -q --src-tls-verify=false docker://$P_HOST/wepp/app:sha-$SHA oci-archive:"$TMP/back.tar":back &&
    unpack_image "$TMP/back.tar" "$TMP/bb" && cmp "$TMP/bb/rootfs/data/blob.bin" "$R/data/blob.bin"
'

test_expect_success 'a no-op re-push uploads no blob and leaves an identical tag alone (Harbor immutable tags)' '
    before=$(registry_count P "^POST /v2/wepp/app/blobs/uploads/ ") &&
    puts=$(registry_count P "^PUT /v2/wepp/app/manifests/sha-") &&
    ib push --plain-http "$TMP/app.tar" "$P_HOST/wepp/app" --also-tag latest >"$TMP/push2.out" &&
    test "$(registry_count P "^POST /v2/wepp/app/blobs/uploads/ ")" = "$before" &&
    test "$(registry_count P "^PUT /v2/wepp/app/manifests/sha-")" = "$puts" &&
    grep -q "0 uploaded" "$TMP/push2.out" &&
    test "$(skopeo_digest --tls-verify=false docker://$P_HOST/wepp/app:latest)" = "$D"
'

test_expect_success 'push to a second repository mounts the blobs instead of uploading' '
    ib push --plain-http "$TMP/app.tar" "$P_HOST/wepp/worker:v1" >"$TMP/push3.out" &&
    grep -qE "0 uploaded .* 3 mounted" "$TMP/push3.out" &&
    test "$(registry_count P "^POST /v2/wepp/worker/blobs/uploads/\?mount=.* 201$")" = 3 &&
    test "$(registry_count P "^PATCH /v2/wepp/worker/")" = 0 &&
    test "$(skopeo_digest --tls-verify=false docker://$P_HOST/wepp/worker:v1)" = "$D"
'

test_expect_success 'push ARCHIVE HOST/REPO takes the archive'"'"'s own tag: docker-archive RepoTags, skopeo'"'"'s ref.name' '
    skopeo copy -q oci-archive:"$TMP/app.tar" docker-archive:"$TMP/dock.tar":localhost/bbdocker:v1 &&
    ib push --plain-http "$TMP/dock.tar" "$P_HOST/wepp/dock" >"$TMP/dock.out" &&
    grep -q "^Pushed  $P_HOST/wepp/dock:v1$" "$TMP/dock.out" &&
    dd=$(sed -n "s/^Digest  //p" "$TMP/dock.out") &&
    test "$(skopeo_digest --tls-verify=false docker://$P_HOST/wepp/dock:v1)" = "$dd" &&
    skopeo copy -q oci-archive:"$TMP/app.tar" oci-archive:"$TMP/named.tar":localhost/bboci:v2 &&
    ib push --plain-http "$TMP/named.tar" "$P_HOST/wepp/dock" >"$TMP/named.out" &&
    grep -q "^Pushed  $P_HOST/wepp/dock:v2$" "$TMP/named.out" &&
    skopeo copy -q oci-archive:"$TMP/app.tar" docker-archive:"$TMP/untagged.tar" &&
    { rc=0; ib push --plain-http "$TMP/untagged.tar" "$P_HOST/wepp/dock" 2>/dev/null || rc=$?; } &&
    test "$rc" = 2 && grep -q "the image has no tag of its own; give HOST/REPO:TAG" "$TMP/last.err"
'

test_expect_success 'push without IMAGE.tar sends the last image built in this directory' '
    cd "$R" && ib -o "$TMP/again.tar" -q >/dev/null &&
    ib push --plain-http "$P_HOST/wepp/last" -q >"$TMP/d" && test "$(cat "$TMP/d")" = "$D" &&
    test "$(skopeo_digest --tls-verify=false docker://$P_HOST/wepp/last:sha-$SHA)" = "$D"
'

test_expect_success 'skopeo push -> imgbuild pull: same digest, image usable in FROM' '
    skopeo copy -q --dest-tls-verify=false oci-archive:"$TMP/app.tar" docker://$P_HOST/other/base:1.0 &&
    want=$(skopeo_digest --tls-verify=false docker://$P_HOST/other/base:1.0) &&
    export IMGBUILD_CACHE="$TMP/cache-pull" &&
    ib pull --plain-http "$P_HOST/other/base:1.0" -o "$TMP/pulled.tar" >"$TMP/pull.out" &&
    grep -q "^Digest  $want$" "$TMP/pull.out" && test "$(digest_of "$TMP/pulled.tar")" = "$want" &&
    C=$TMP/child && new_repo "$C" && echo hi >"$C/hi.txt" &&
    printf "FROM %s/other/base:1.0\nCOPY hi.txt /\n" "$P_HOST" >"$C/Dockerfile" && commit_all "$C" c &&
    export IMGBUILD_CACHE="$TMP/cache-from" &&
    (cd "$C" && ib --plain-http -o "$TMP/child.tar" --progress plain >/dev/null) &&
    grep -q "pulling $P_HOST/other/base:1.0" "$TMP/last.err" &&
    unpack_image "$TMP/child.tar" "$TMP/cb" && test -f "$TMP/cb/rootfs/hi.txt" && test -f "$TMP/cb/rootfs/data/blob.bin"
'

test_expect_success 'htpasswd over TLS: login with a robot account, push with the CA' '
    printf "%s" "$T_PASS" | ib login "$T_HOST" -u "$T_USER" --password-stdin --ca-file "$T_CA" >"$TMP/login.out" &&
    grep -q "^Login succeeded: $T_HOST" "$TMP/login.out" &&
    test "$(stat -c %a "$HOME/.docker/config.json")" = 600 &&
    ib push --ca-file "$T_CA" "$TMP/app.tar" "$T_HOST/wepp/app" -q >"$TMP/d" && test "$(cat "$TMP/d")" = "$D" &&
    test "$(skopeo_digest --cert-dir "$T_CERT_DIR" --creds "$T_USER:$T_PASS" docker://$T_HOST/wepp/app:sha-$SHA)" = "$D" &&
    ! grep -rqF "$T_PASS" "$TMP/last.err" "$TMP/login.out"
'

test_expect_success 'login/logout also fix stale entries in podman'"'"'s auth.json, which is read first' '
    export XDG_RUNTIME_DIR="$TMP/xdg" && mkdir -p "$XDG_RUNTIME_DIR/containers" &&
    stale=$(printf "%s:old-password" "$T_USER" | base64 -w0) &&
    printf "{\"auths\":{\"%s\":{\"auth\":\"%s\"},\"other.example\":{\"auth\":\"eDp5\"}}}\n" "$T_HOST" "$stale" \
        >"$XDG_RUNTIME_DIR/containers/auth.json" &&
    expect_error "authentication failed.*containers/auth.json" push --ca-file "$T_CA" "$TMP/app.tar" "$T_HOST/wepp/app:podman" &&
    printf "%s" "$T_PASS" | ib login "$T_HOST" -u "$T_USER" --password-stdin --ca-file "$T_CA" >/dev/null &&
    ib push --ca-file "$T_CA" "$TMP/app.tar" "$T_HOST/wepp/app:podman" -q >/dev/null &&
    ! grep -q "$stale" "$XDG_RUNTIME_DIR/containers/auth.json" && grep -q "other.example" "$XDG_RUNTIME_DIR/containers/auth.json" &&
    test "$(stat -c %a "$XDG_RUNTIME_DIR/containers/auth.json")" = 600 &&
    ib logout "$T_HOST" >/dev/null &&
    ! grep -q "$T_HOST" "$XDG_RUNTIME_DIR/containers/auth.json" "$HOME/.docker/config.json" &&
    grep -q "other.example" "$XDG_RUNTIME_DIR/containers/auth.json" &&
    expect_error "no credentials found" push --ca-file "$T_CA" "$TMP/app.tar" "$T_HOST/wepp/app:podman2" &&
    printf "%s" "$T_PASS" | ib login "$T_HOST" -u "$T_USER" --password-stdin --ca-file "$T_CA" >/dev/null
'

test_expect_success 'a plain-HTTP registry without --plain-http: the TLS error says what to do' '
    expect_error "wrong version number \(the registry speaks plain HTTP\? use --plain-http\)$" \
        push "$TMP/app.tar" "$P_HOST/wepp/app:tls" &&
    expect_error "use --plain-http\)$" pull "$P_HOST/wepp/app:sha-$SHA"
'

test_expect_success 'TLS is verified by default; --insecure skips it only when asked' '
    expect_error "$T_HOST" push "$TMP/app.tar" "$T_HOST/wepp/app:v2" &&
    ib push --insecure "$TMP/app.tar" "$T_HOST/wepp/app:v2" -q >/dev/null
'

test_expect_success 'wrong password: clear error, nothing stored, password never printed' '
    rm -f "$HOME/.docker/config.json" &&
    printf "wrong-%s" "$T_PASS" | expect_error "refused the credentials" login "$T_HOST" -u "$T_USER" --password-stdin --ca-file "$T_CA" &&
    test ! -e "$HOME/.docker/config.json" &&
    ! grep -qF "$T_PASS" "$TMP/last.err" &&
    # names host and user; not the temporary auth file, nor "run imgbuild login" (Basic and token auth alike)
    tail -n 1 "$TMP/last.err" | grep -qxF "imgbuild: error: login: $T_HOST refused the credentials for $T_USER (wrong password or user?)" &&
    printf "wrong-%s" "$K_PASS" | expect_error "refused the credentials" login "$K_HOST/wepp" -u "$K_USER" --password-stdin --ca-file "$K_CA" &&
    tail -n 1 "$TMP/last.err" | grep -qxF "imgbuild: error: login: $K_HOST refused the credentials for $K_USER (wrong password or user?)" &&
    test ! -e "$HOME/.docker/config.json" &&
    expect_error "no credentials found.*imgbuild login" push --ca-file "$T_CA" "$TMP/app.tar" "$T_HOST/wepp/app:v3"
'

test_expect_success 'token auth (Harbor-style): one token for all scopes even with 4 parallel uploads; reader cannot push' '
    printf "%s" "$K_PASS" | ib login "$K_HOST" -u "$K_USER" --password-stdin --ca-file "$K_CA" >/dev/null &&
    t0=$(token_count K) &&
    ib push --ca-file "$K_CA" "$TMP/app.tar" "$K_HOST/wepp/app" -q >"$TMP/d" && test "$(cat "$TMP/d")" = "$D" &&
    test $(( $(token_count K) - t0 )) = 1 &&
    grep -q "scope=repository:wepp/app:pull,push" "$K_TOKEN_LOG" &&
    test "$(skopeo_digest --cert-dir "$K_CERT_DIR" --creds "$K_USER:$K_PASS" docker://$K_HOST/wepp/app:sha-$SHA)" = "$D" &&
    ib logout "$K_HOST" | grep -q "Removed login credentials for $K_HOST" &&
    printf "%s" "$K_READER_PASS" | ib login "$K_HOST" -u "$K_READER_USER" --password-stdin --ca-file "$K_CA" >/dev/null &&
    expect_error "denied|permission|insufficient" push --ca-file "$K_CA" "$TMP/app.tar" "$K_HOST/wepp/app:reader" &&
    ib logout "$K_HOST" >/dev/null &&
    expect_error "no credentials found.*imgbuild login" push --ca-file "$K_CA" "$TMP/app.tar" "$K_HOST/wepp/app:anon" &&
    printf "%s" "$K_READER_PASS" | ib login "$K_HOST" -u "$K_READER_USER" --password-stdin --ca-file "$K_CA" >/dev/null &&
    export IMGBUILD_CACHE="$TMP/cache-reader" &&
    ib pull --ca-file "$K_CA" "$K_HOST/wepp/app:sha-$SHA" -q >"$TMP/d2" && test "$(cat "$TMP/d2")" = "$D"
'

test_expect_success 'login HOST/NAMESPACE: that account serves the namespace only; logout HOST/NAMESPACE removes it alone' '
    printf "%s" "$K_PASS" | ib login "$K_HOST/wepp" -u "$K_USER" --password-stdin --ca-file "$K_CA" >"$TMP/nslogin" &&
    grep -q "^Login succeeded: $K_HOST/wepp " "$TMP/nslogin" &&
    python3 -c "import json,os,sys; a=json.load(open(os.path.expanduser(\"~/.docker/config.json\")))[\"auths\"]; assert \"$K_HOST/wepp\" in a and \"$K_HOST\" in a, sorted(a)" &&
    ib push --ca-file "$K_CA" "$TMP/app.tar" "$K_HOST/wepp/app:ns" -q >/dev/null &&
    expect_error "denied|permission|insufficient" push --ca-file "$K_CA" "$TMP/app.tar" "$K_HOST/weppx/app:ns" &&
    ib logout "$K_HOST/wepp" | grep -q "Removed login credentials for $K_HOST/wepp" &&
    python3 -c "import json,os,sys; a=json.load(open(os.path.expanduser(\"~/.docker/config.json\")))[\"auths\"]; assert \"$K_HOST/wepp\" not in a and \"$K_HOST\" in a, sorted(a)" &&
    expect_error "denied|permission|insufficient" push --ca-file "$K_CA" "$TMP/app.tar" "$K_HOST/wepp/app:ns2" &&
    { rc=0; ib login "$K_HOST/" -u x --password-stdin </dev/null 2>"$TMP/nserr" || rc=$?; } && test $rc = 2 &&
    grep -q "expected HOST\[:PORT\] or HOST/NAMESPACE, not .$K_HOST/." "$TMP/nserr"
'

test_expect_success 'a connection cut mid-upload is recovered (resume or restart) and ends with the right digest' '
    tcp_cut_proxy CUT "$P_HOST" 1500000 || exit 1
    ib push --plain-http --chunk-size 1000000 -j 1 "$TMP/app.tar" "$CUT/wepp/cut" --progress plain >"$TMP/cut.out" &&
    test "$(proxy_cut_count CUT)" = 1 && grep -q "^Recovered 1 interrupted upload" "$TMP/cut.out" &&
    test "$(skopeo_digest --tls-verify=false docker://$P_HOST/wepp/cut:sha-$SHA)" = "$D" &&
    skopeo copy -q --src-tls-verify=false docker://$P_HOST/wepp/cut:sha-$SHA oci-archive:"$TMP/cut.tar":cut &&
    unpack_image "$TMP/cut.tar" "$TMP/cutb" && cmp "$TMP/cutb/rootfs/data/blob.bin" "$R/data/blob.bin"
'

# Distribution cannot resume after a cut PATCH: the _state token in the upload URL
# still says offset 0 while the cut request wrote more, so it answers the status
# GET with 404 and the blob starts over (registries without that token resume).
test_expect_success 'a connection cut in the one streamed PATCH of the default mode is recovered' '
    tcp_cut_proxy CUT2 "$P_HOST" 2500000 || exit 1
    ib push --plain-http -j 1 "$TMP/app.tar" "$CUT2/wepp/cut2" --progress plain >"$TMP/cut2.out" &&
    test "$(proxy_cut_count CUT2)" = 1 && grep -q "^Recovered 1 interrupted upload" "$TMP/cut2.out" &&
    test "$(registry_count P "^GET /v2/wepp/cut2/blobs/uploads/")" = 1 &&
    test "$(registry_count P "^PATCH /v2/wepp/cut2/blobs/uploads/.* 202$")" = 1 &&
    test "$(skopeo_digest --tls-verify=false docker://$P_HOST/wepp/cut2:sha-$SHA)" = "$D"
'

test_expect_success 'a blob whose bytes do not match its digest is refused' '
    tamper_proxy TAMP "$P_HOST" || exit 1
    export IMGBUILD_CACHE="$TMP/cache-tamper" &&
    expect_error "does not match its digest" pull --plain-http "$TAMP/wepp/app:sha-$SHA" &&
    test -z "$(ls -A "$IMGBUILD_CACHE/refs")" &&
    test "$(proxy_tamper_count TAMP)" -ge 1
'

test_expect_success 'inspect REF reads a remote image (manifest and config only)' '
    export IMGBUILD_CACHE="$TMP/cache-inspect" &&
    ib inspect --plain-http "$P_HOST/wepp/app:sha-$SHA" >"$TMP/ri" &&
    grep -q "^Digest  *$D" "$TMP/ri" && grep -q "^Layers  *2" "$TMP/ri" &&
    test -z "$(ls -A "$IMGBUILD_CACHE/blobs/sha256")"
'

test_expect_success 'a manifest that does not exist, an unreachable registry' '
    expect_error "manifest unknown" pull --plain-http "$P_HOST/wepp/app:nope" &&
    expect_error "127.0.0.1:1" pull --plain-http "127.0.0.1:1/wepp/app:x"
'

test_expect_success 'a manifest over 4 MiB is refused (Distribution refuses to store one: a proxy pads a real one)' '
    PAD_MANIFESTS=$((4 << 20)) tamper_proxy PAD "$P_HOST" || exit 1
    export IMGBUILD_CACHE="$TMP/cache-huge" &&
    expect_error "manifest larger than 4 MiB \(refused\)" pull --plain-http "$PAD/wepp/app:sha-$SHA" &&
    grep -q "GET /v2/wepp/app/manifests/sha-$SHA 200 padded" "$PAD_LOG" &&
    test -z "$(ls -A "$IMGBUILD_CACHE/refs" 2>/dev/null)"
'

new_image() { # NAME: an image of fresh random bytes (nothing to skip or mount)
    local d=$TMP/img-$1
    new_repo "$d" && head -c 3000000 /dev/urandom >"$d/blob.bin" && printf "FROM scratch\nCOPY blob.bin /\n" >"$d/Dockerfile" &&
        commit_all "$d" init && (cd "$d" && ib -o "$TMP/$1.tar" -q >/dev/null)
}

test_expect_success 'progress per blob: bars on a terminal, progress events in JSON, none in plain logs' '
    new_image pj && new_image pt && new_image pp &&
    ib push --plain-http -j 1 --chunk-size 1000000 --progress json "$TMP/pj.tar" "$P_HOST/wepp/progress" >/dev/null &&
    python3 - "$TMP/last.err" <<PY &&
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
prog = [e for e in ev if e.get("event") == "progress"]
assert prog, "no progress events"
big = max(prog, key=lambda e: e["total"])
assert big["action"] == "pushing" and big["total"] > 2000000, big
mine = [e for e in prog if e["id"] == big["id"]]
assert mine[-1]["done"] == mine[-1]["total"], mine[-1]
assert len(mine) >= 3 and all(a["done"] <= b["done"] for a, b in zip(mine, mine[1:])), mine
PY
    ib push --plain-http -j 1 --progress tty "$TMP/pt.tar" "$P_HOST/wepp/progress" >/dev/null &&
    grep -qa "pushing  *sha256:" "$TMP/last.err" && grep -qa "\[#" "$TMP/last.err" &&
    grep -qa "uploaded" "$TMP/last.err" &&
    ib push --plain-http -j 1 --progress plain "$TMP/pp.tar" "$P_HOST/wepp/progress" >/dev/null &&
    ! grep -q "pushing" "$TMP/last.err" && grep -q "uploaded" "$TMP/last.err"
'

test_done
