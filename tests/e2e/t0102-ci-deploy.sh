#!/usr/bin/env bash
# scripts/ci-deploy.sh (the CI body of docs/ci.md) for real: a copy of
# examples/monolith in a fresh git repo, two commits built and pushed to a
# Harbor-style token-auth registry over TLS with a robot account; skopeo checks
# both sha tags, the compose file's web image rendered for "deploy" and for
# "rollback", extra (branch) tags, re-runs, Harbor's 412 on immutable tags, and
# that the password never shows up in the script's output.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/registry.sh"

registry_start K token || exit 1

SCRIPT=$IB_SRC/scripts/ci-deploy.sh
COMPOSE=$IB_SRC/examples/monolith/compose.yaml
W=$TMP/src/monolith # the directory name is the default IMAGE_NAME
mkdir -p "$W"
cp -a "$IB_SRC/examples/monolith/." "$W/"
rm -rf "$W/.venv" "$W/app/__pycache__"
new_repo "$W" && commit_all "$W" "monolith v1" || exit 1
SHA1=$(git -C "$W" rev-parse HEAD)

# ci_deploy N [VAR=VALUE...]: runs the script in $TMP/ciN the way a CI job does;
# stdout in $TMP/ciN.out, stderr in $TMP/ciN.err; its own TMPDIR in $TMP/ciN.tmp.
ci_deploy() {
    local n=$1 rc=0
    shift
    mkdir -p "$TMP/ci$n" "$TMP/ci$n.tmp"
    (cd "$TMP/ci$n" && env CI=true TMPDIR="$TMP/ci$n.tmp" REGISTRY="$K_HOST/wepp" REGISTRY_USER="$K_USER" \
        REGISTRY_PASSWORD="$K_PASS" IMGBUILD="$IMGBUILD" CONTEXT="$W" REGISTRY_FLAGS="--ca-file $K_CA" \
        "$@" bash "$SCRIPT") >"$TMP/ci$n.out" 2>"$TMP/ci$n.err" || rc=$?
    if grep -qE 'AddressSanitizer|LeakSanitizer|runtime error:|UndefinedBehaviorSanitizer' "$TMP/ci$n.err"; then
        cp "$TMP/ci$n.err" "$SANITIZER_MARK"
    fi
    return $rc
}

# The digest imgbuild reported: every "Digest  sha256:…" line of the run (build and push) must agree.
reported_digest() {
    local d
    d=$(sed -n 's/^Digest  *//p' "$1" | sort -u)
    [ "$(printf '%s\n' "$d" | grep -c .)" = 1 ] || { echo "digests in $1: $d" >&2; return 1; }
    printf '%s\n' "$d"
}

skopeo_digest() {
    skopeo inspect --cert-dir "$K_CERT_DIR" --creds "$K_USER:$K_PASS" "docker://$1" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["Digest"])'
}

# render_web_image GIT_SHA [REGISTRY]: the web service's image from compose.yaml with
# compose's interpolation (${VAR}, ${VAR:-default}, ${VAR-default}, $VAR) applied.
render_web_image() {
    GIT_SHA=$1 REGISTRY=${2:-} HAVE_REGISTRY=${2:+1} python3 - "$COMPOSE" <<'PY'
import os, re, sys
text = open(sys.argv[1]).read()
env = {"GIT_SHA": os.environ["GIT_SHA"]}
if os.environ.get("HAVE_REGISTRY"):
    env["REGISTRY"] = os.environ["REGISTRY"]
try:
    import yaml  # resolves the x-app anchor and the << merge into services.web
    image = yaml.safe_load(text)["services"]["web"]["image"]
except ImportError:
    image = next(l.split("image:", 1)[1].strip() for l in text.splitlines()
                 if l.strip().startswith("image:") and "GIT_SHA" in l)
def sub(m):
    name, op, default = m.group(1) or m.group(4), m.group(2), m.group(3)
    val = env.get(name)
    if op == ":-" and not val: return default
    if op == "-" and val is None: return default
    if val is None: sys.exit("compose.yaml: %s is not set" % name)
    return val
print(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)", sub, image))
PY
}

test_expect_success 'commit 1: build, login, push; last stdout line is REGISTRY/monolith:sha-<sha>' '
    ci_deploy 1 &&
    test "$(tail -n 1 "$TMP/ci1.out")" = "$K_HOST/wepp/monolith:sha-$SHA1" &&
    grep -q "^Pushed  $K_HOST/wepp/monolith:sha-$SHA1$" "$TMP/ci1.out" &&
    D1=$(reported_digest "$TMP/ci1.out") && test "$D1" = "$(digest_of "$TMP/ci1/app.tar")" &&
    grep -q "^Login succeeded: $K_HOST" "$TMP/ci1.err"
'
D1=$(reported_digest "$TMP/ci1.out" 2>/dev/null)

echo "# v2" >>"$W/app/web.py"
commit_all "$W" "monolith v2"
SHA2=$(git -C "$W" rev-parse HEAD)

test_expect_success 'commit 2 with branch tags: sha tag plus main and feature/x (as feature-x)' '
    ci_deploy 2 EXTRA_TAGS="main feature/x" &&
    test "$(tail -n 1 "$TMP/ci2.out")" = "$K_HOST/wepp/monolith:sha-$SHA2" &&
    D2=$(reported_digest "$TMP/ci2.out") && test "$D2" != "$D1" &&
    grep -q "^Pushed  $K_HOST/wepp/monolith:main$" "$TMP/ci2.out" &&
    grep -q "^Pushed  $K_HOST/wepp/monolith:feature-x$" "$TMP/ci2.out"
'
D2=$(reported_digest "$TMP/ci2.out" 2>/dev/null)

test_expect_success 'skopeo: both sha tags exist with the digests imgbuild reported' '
    test -n "$D1" && test -n "$D2" &&
    test "$(skopeo_digest "$K_HOST/wepp/monolith:sha-$SHA1")" = "$D1" &&
    test "$(skopeo_digest "$K_HOST/wepp/monolith:sha-$SHA2")" = "$D2" &&
    test "$(skopeo_digest "$K_HOST/wepp/monolith:main")" = "$D2" &&
    test "$(skopeo_digest "$K_HOST/wepp/monolith:feature-x")" = "$D2"
'

test_expect_success 'deploy: the compose file'"'"'s web image, rendered with GIT_SHA and REGISTRY, is the new image' '
    test "$(render_web_image "$SHA2")" = "harbor.local/wepp/monolith:sha-$SHA2" &&
    ref=$(render_web_image "$SHA2" "$K_HOST/wepp") &&
    test "$ref" = "$(tail -n 1 "$TMP/ci2.out")" &&
    test "$(skopeo_digest "$ref")" = "$D2"
'

test_expect_success 'rollback: GIT_SHA=<older sha> still resolves to the older digest' '
    ref=$(render_web_image "$SHA1" "$K_HOST/wepp") &&
    test "$ref" = "$K_HOST/wepp/monolith:sha-$SHA1" &&
    test "$(skopeo_digest "$ref")" = "$D1"
'

test_expect_success 're-running the job for the same commit gives the same digest and uploads nothing' '
    ci_deploy 3 GIT_SHA="$SHA1" &&
    test "$(tail -n 1 "$TMP/ci3.out")" = "$K_HOST/wepp/monolith:sha-$SHA1" &&
    test "$(reported_digest "$TMP/ci3.out")" = "$D1" &&
    grep -q "^Blobs .* 0 uploaded" "$TMP/ci3.out" &&
    test "$(skopeo_digest "$K_HOST/wepp/monolith:sha-$SHA1")" = "$D1"
'

# A stand-in for Harbor's immutability rule: the first push of a run fails the
# way imgbuild reports Harbor's 412; everything else is the real imgbuild.
cat >"$TMP/imgbuild-412" <<EOF
#!/usr/bin/env bash
if [ "\$1" = push ] && [ ! -e "\$TMPDIR.refused" ]; then
    : >"\$TMPDIR.refused"
    echo "imgbuild: error: $K_HOST: PUT manifest wepp/monolith:sha-x: HTTP 412 PRECONDITION: immutable (Harbor: the tag is immutable in this project; push a new tag)" >&2
    exit 1
fi
exec "$IMGBUILD" "\$@"
EOF
chmod +x "$TMP/imgbuild-412"

test_expect_success 'immutable sha tag (412) on a re-run: accepted when it holds this digest, branch tag still pushed' '
    ci_deploy 4 IMGBUILD="$TMP/imgbuild-412" EXTRA_TAGS=release &&
    grep -q "is immutable in $K_HOST/wepp" "$TMP/ci4.err" &&
    test "$(tail -n 1 "$TMP/ci4.out")" = "$K_HOST/wepp/monolith:sha-$SHA2" &&
    test "$(skopeo_digest "$K_HOST/wepp/monolith:release")" = "$D2"
'

test_expect_success 'immutable sha tag (412) holding another image: the job fails' '
    echo "# v3" >>"$W/app/web.py" && commit_all "$W" "monolith v3" && SHA3=$(git -C "$W" rev-parse HEAD) &&
    skopeo copy -q --src-cert-dir "$K_CERT_DIR" --dest-cert-dir "$K_CERT_DIR" --src-creds "$K_USER:$K_PASS" \
        --dest-creds "$K_USER:$K_PASS" "docker://$K_HOST/wepp/monolith:sha-$SHA1" "docker://$K_HOST/wepp/monolith:sha-$SHA3" &&
    ! ci_deploy 5 IMGBUILD="$TMP/imgbuild-412" &&
    grep -q "refusing to continue" "$TMP/ci5.err" &&
    test "$(skopeo_digest "$K_HOST/wepp/monolith:sha-$SHA3")" = "$D1"
'

test_expect_success 'wrong password or missing inputs: the job fails before building' '
    rc=0
    ci_deploy 6 REGISTRY_PASSWORD="wrong-$K_PASS" || rc=$?
    test $rc = 1 && test ! -e "$TMP/ci6/app.tar"
    tail -n 1 "$TMP/ci6.err" | grep -qE "^imgbuild: error: .*(credentials|authentication)"
    rc=0
    ci_deploy 7 REGISTRY_PASSWORD= || rc=$?
    test $rc = 2 && grep -q "REGISTRY_PASSWORD is not set" "$TMP/ci7.err"
'

test_expect_success 'the password is never printed, and no credentials file outlives the job' '
    for n in 1 2 3 4 5 6 7; do
        ! grep -qF "$K_PASS" "$TMP/ci$n.out" "$TMP/ci$n.err" || { echo "password in ci$n output"; exit 1; }
        test -z "$(ls -A "$TMP/ci$n.tmp")" || { ls -la "$TMP/ci$n.tmp"; exit 1; }
    done &&
    test ! -e "$HOME/.docker/config.json" &&
    (env REGISTRY="$K_HOST/wepp" REGISTRY_USER="$K_USER" REGISTRY_PASSWORD="$K_PASS" IMGBUILD=false \
        CONTEXT="$W" bash -x "$SCRIPT" || true) >"$TMP/trace.out" 2>&1 &&
    grep -q "logging in to $K_HOST" "$TMP/trace.out" && ! grep -qF "$K_PASS" "$TMP/trace.out"
'

test_done
