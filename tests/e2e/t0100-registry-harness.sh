#!/usr/bin/env bash
# Self-test of tests/e2e/registry.sh with skopeo as the client: a real
# Distribution in plain, htpasswd+TLS and token (Harbor-like) modes, the
# connection-cutting proxy and the blob-tampering proxy.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/registry.sh"

export REGISTRY_AUTH_FILE="$TMP/auth.json" # never the machine's credentials
SK=(skopeo --insecure-policy)

# make_image DIR LAYER_BYTES: an OCI layout (tag v1) with one random, incompressible
# layer of LAYER_BYTES; prints the manifest digest.
make_image() {
    "$REG_PY" - "$1" "$2" <<'PY'
import gzip, hashlib, io, json, os, sys, tarfile
d, size = sys.argv[1], int(sys.argv[2])
os.makedirs(d + "/blobs/sha256", exist_ok=True)
def blob(data):
    h = hashlib.sha256(data).hexdigest()
    open("%s/blobs/sha256/%s" % (d, h), "wb").write(data)
    return "sha256:" + h
raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
    payload = os.urandom(size)
    ti = tarfile.TarInfo("data.bin"); ti.size = len(payload); ti.mtime = 0; ti.mode = 0o644
    t.addfile(ti, io.BytesIO(payload))
    hello = b"hello from the harness\n"
    ti = tarfile.TarInfo("hello.txt"); ti.size = len(hello); ti.mtime = 0; ti.mode = 0o644
    t.addfile(ti, io.BytesIO(hello))
tarb = raw.getvalue()
layer = gzip.compress(tarb, mtime=0)
config = json.dumps({"architecture": "amd64", "os": "linux",
                     "config": {"Cmd": ["/hello.txt"]},
                     "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tarb).hexdigest()]}}).encode()
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": blob(layer), "size": len(layer)}]}).encode()
md = blob(manifest)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": md, "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "v1"}}]},
    open(d + "/index.json", "w"))
open(d + "/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
print(md)
PY
}

# remote_digest NAME REF [skopeo args...]: sha256 of the raw manifest as served.
remote_digest() {
    local n=$1 ref=$2
    shift 2
    echo "sha256:$("${SK[@]}" inspect --raw $(registry_skopeo_args "$n") "$@" "docker://$ref" | sha256sum | cut -c1-64)"
}

IMG=$TMP/img
DIG=$(make_image "$IMG" 200000)
BIGLAYER=$("$REG_PY" -c 'import json,sys; m=json.load(open(sys.argv[1]+"/blobs/sha256/"+sys.argv[2][7:])); print(m["layers"][0]["digest"])' "$IMG" "$DIG")

# Setup failures print the server's log tail; stop right there (the EXIT trap cleans up).
registry_start P plain || exit 1
registry_start H htpasswd-tls || exit 1
TOKEN_EXPIRY=120 registry_start T token || exit 1
tcp_cut_proxy CUT "$P_HOST" 65536 || exit 1
tamper_proxy TAMP "$P_HOST" || exit 1

test_expect_success 'plain: skopeo pushes over HTTP, digest round-trips' '
    "${SK[@]}" copy -q $(registry_skopeo_args P dest) --digestfile "$TMP/p.dig" \
        "oci:$IMG:v1" "docker://$P_HOST/test/hello:v1" &&
    test "$(cat "$TMP/p.dig")" = "$DIG" &&
    test "$(remote_digest P "$P_HOST/test/hello:v1")" = "$DIG" &&
    test "$("${SK[@]}" inspect --format "{{.Digest}}" $(registry_skopeo_args P) "docker://$P_HOST/test/hello:v1")" = "$DIG" &&
    test "$(registry_count P "^PUT /v2/test/hello/manifests/v1 201$")" = 1 &&
    test "$(registry_count P "^PUT /v2/test/hello/blobs/uploads/")" -ge 2 &&
    test "$(registry_count P "^DELETE ")" = 0
'

test_expect_success 'htpasswd-tls: robot account pushes with the CA, digest round-trips' '
    case $H_USER in "robot\$wepp+ci") ;; *) false ;; esac &&
    test -s "$H_CA" && test -s "$H_CERT_DIR/ca.crt" &&
    "${SK[@]}" copy -q $(registry_skopeo_args H dest) --dest-creds "$H_USER:$H_PASS" \
        "oci:$IMG:v1" "docker://$H_HOST/wepp/hello:v1" &&
    test "$(remote_digest H "$H_HOST/wepp/hello:v1" --creds "$H_USER:$H_PASS")" = "$DIG" &&
    test "$(registry_count H "^PUT /v2/wepp/hello/manifests/v1 201$")" = 1
'

test_expect_success 'htpasswd-tls: the TLS is real (no CA = failure, localhost SAN ok)' '
    ! curl -s -o /dev/null "$H_URL/v2/" &&
    test "$(registry_curl H -o /dev/null -w "%{http_code}" "https://localhost:${H_HOST#*:}/v2/")" = 401
'

test_expect_success 'htpasswd-tls: wrong or missing credentials are refused' '
    ! "${SK[@]}" inspect --raw $(registry_skopeo_args H) --creds "$H_USER:wrong" "docker://$H_HOST/wepp/hello:v1" 2>"$TMP/e1" &&
    grep -qiE "unauthorized|authentication required|401" "$TMP/e1" &&
    ! "${SK[@]}" inspect --raw $(registry_skopeo_args H) "docker://$H_HOST/wepp/hello:v1" 2>"$TMP/e2" &&
    ! "${SK[@]}" copy -q $(registry_skopeo_args H dest) --dest-creds "$H_USER:nope" \
        "oci:$IMG:v1" "docker://$H_HOST/wepp/other:v1" &&
    test "$(registry_count H "^PUT /v2/wepp/other/manifests/")" = 0 &&
    test "$(registry_curl H -o /dev/null -w "%{http_code}" -u "$H_USER:$H_PASS" "$H_URL/v2/")" = 200
'

test_expect_success 'token: robot account pushes via real RS256 JWTs' '
    "${SK[@]}" copy -q $(registry_skopeo_args T dest) --dest-creds "$T_USER:$T_PASS" \
        "oci:$IMG:v1" "docker://$T_HOST/wepp/hello:v1" &&
    test "$(remote_digest T "$T_HOST/wepp/hello:v1" --creds "$T_USER:$T_PASS")" = "$DIG" &&
    test "$(registry_count T "^PUT /v2/wepp/hello/manifests/v1 201$")" = 1 &&
    test "$(token_count T "user=robot\\\$wepp\\+ci status=200 .*scope=repository:wepp/hello:pull,push")" -ge 1 &&
    test "$(token_count T "^POST ")" = 0
'

test_expect_success 'token: JWT shape (x5c, RS256, plain-string aud, access claims, expiry)' '
    registry_token T "$T_USER" "$T_PASS" repository:wepp/hello:pull,push repository:other/x:pull >"$TMP/jwt" &&
    registry_curl T -u "$T_USER:$T_PASS" "$T_TOKEN_URL?service=harbor-registry&scope=repository:a/b:pull" >"$TMP/tokresp" &&
    "$REG_PY" - "$TMP/jwt" "$TMP/tokresp" <<PY
import base64, json, sys, time
def seg(s): return json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
h, c = (seg(x) for x in open(sys.argv[1]).read().strip().split(".")[:2])
assert h["alg"] == "RS256" and h["typ"] == "JWT" and len(h["x5c"]) == 1, h
assert c["iss"] == "harbor-token-issuer" and c["aud"] == "harbor-registry", c
assert c["sub"] == "robot\$wepp+ci", c
assert c["exp"] - c["iat"] == 120 and c["nbf"] <= time.time() < c["exp"], c
assert sorted((a["name"], tuple(a["actions"])) for a in c["access"]) == \
    [("other/x", ("pull",)), ("wepp/hello", ("pull", "push"))], c
r = json.load(open(sys.argv[2]))
assert r["token"] == r["access_token"] and r["expires_in"] == 120 and r["issued_at"].endswith("Z"), r
PY
'

test_expect_success 'token: reader pulls but cannot push; anonymous gets nothing' '
    test "$(remote_digest T "$T_HOST/wepp/hello:v1" --creds "$T_READER_USER:$T_READER_PASS")" = "$DIG" &&
    "${SK[@]}" copy -q $(registry_skopeo_args T src) --src-creds "$T_READER_USER:$T_READER_PASS" \
        "docker://$T_HOST/wepp/hello:v1" "oci:$TMP/pulled:v1" &&
    ! "${SK[@]}" copy -q $(registry_skopeo_args T dest) --dest-creds "$T_READER_USER:$T_READER_PASS" \
        "oci:$IMG:v1" "docker://$T_HOST/wepp/readerpush:v1" 2>"$TMP/e3" &&
    grep -qiE "denied|unauthorized|authentication required" "$TMP/e3" &&
    test "$(registry_count T "^PUT /v2/wepp/readerpush/manifests/.* 201$")" = 0 &&
    test "$(token_count T "user=reader status=200")" -ge 2 &&
    ! "${SK[@]}" inspect --raw $(registry_skopeo_args T) "docker://$T_HOST/wepp/hello:v1" &&
    anon=$(registry_token T "" "" repository:wepp/hello:pull) &&
    test "$(registry_curl T -o /dev/null -w "%{http_code}" -H "Authorization: Bearer $anon" \
        "$T_URL/v2/wepp/hello/tags/list")" = 401
'

test_expect_success 'token: bad credentials get 401 + JSON from the token server, POST gets 405' '
    code=$(registry_curl T -o "$TMP/bad.json" -w "%{http_code}" -u "$T_USER:wrong" \
        "$T_TOKEN_URL?service=harbor-registry&scope=repository:wepp/hello:pull") &&
    test "$code" = 401 &&
    "$REG_PY" -c "import json,sys; assert json.load(open(sys.argv[1]))[\"errors\"][0][\"code\"] == \"UNAUTHORIZED\"" "$TMP/bad.json" &&
    ! "${SK[@]}" inspect --raw $(registry_skopeo_args T) --creds "$T_USER:wrong" "docker://$T_HOST/wepp/hello:v1" &&
    test "$(token_count T "status=401")" -ge 2 &&
    test "$(registry_curl T -o /dev/null -w "%{http_code}" -X POST -d x=y "$T_TOKEN_URL")" = 405
'

test_expect_success 'cut proxy: exactly the first big upload connection is reset' '
    test "$(proxy_cut_count CUT)" = 0 &&
    ! "${SK[@]}" copy -q --dest-tls-verify=false "oci:$IMG:v1" "docker://$CUT/cut/hello:v1" 2>"$TMP/cut.err" &&
    cat "$TMP/cut.err" &&
    test "$(proxy_cut_count CUT)" = 1 &&
    grep -q "^cut conn=[0-9]* dir=up after=65536$" "$CUT_LOG" &&
    "${SK[@]}" copy -q --dest-tls-verify=false "oci:$IMG:v1" "docker://$CUT/cut/hello:v1" &&
    test "$(proxy_cut_count CUT)" = 1 &&
    test "$(remote_digest P "$P_HOST/cut/hello:v1")" = "$DIG" &&
    test "$(registry_count P "^PUT /v2/cut/hello/manifests/v1 201$")" = 1
'

test_expect_success 'tamper proxy: blob bodies keep their length but not their digest' '
    url=test/hello/blobs/$BIGLAYER &&
    curl -sSf -o "$TMP/direct.blob" "$P_URL/v2/$url" &&
    curl -sSf -o "$TMP/tampered.blob" -D "$TMP/tampered.hdr" "http://$TAMP/v2/$url" &&
    test "sha256:$(sha256sum <"$TMP/direct.blob" | cut -c1-64)" = "$BIGLAYER" &&
    test "sha256:$(sha256sum <"$TMP/tampered.blob" | cut -c1-64)" != "$BIGLAYER" &&
    test "$(stat -c %s "$TMP/direct.blob")" = "$(stat -c %s "$TMP/tampered.blob")" &&
    test "$(cmp -l "$TMP/direct.blob" "$TMP/tampered.blob" | wc -l)" = 1 &&
    grep -qi "^docker-content-digest: $BIGLAYER" "$TMP/tampered.hdr" &&
    test "$(proxy_tamper_count TAMP)" = 1 &&
    test "$(remote_digest P "$TAMP/test/hello:v1")" = "$DIG" &&
    ! "${SK[@]}" copy -q --src-tls-verify=false "docker://$TAMP/test/hello:v1" "oci:$TMP/bad:v1" 2>"$TMP/tamp.err" &&
    grep -qiE "digest" "$TMP/tamp.err"
'

test_expect_success 'registry_stop stops a registry; others keep running' '
    registry_stop H &&
    ! kill -0 "$H_PID" 2>/dev/null &&
    ! registry_curl H -s -o /dev/null --max-time 5 "$H_URL/v2/" &&
    test "$(curl -s -o /dev/null -w "%{http_code}" "$P_URL/v2/")" = 200
'

test_done
