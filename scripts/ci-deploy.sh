#!/usr/bin/env bash
# scripts/ci-deploy.sh — the CI body shared by the GitHub Actions and GitLab CI
# examples in docs/ci.md: build the checked-out commit with imgbuild, log in to
# the registry with a robot account, push the image as sha-<full commit SHA>
# (plus optional extra tags such as the branch name), and print the image
# reference on the last line of stdout.
#
# Inputs (environment):
#   REGISTRY           host[:port]/project, e.g. harbor.local/wepp          (required)
#   REGISTRY_USER      e.g. robot$wepp+ci (Harbor robot account)            (required)
#   REGISTRY_PASSWORD  the robot's secret; read from the environment only,
#                      given to imgbuild on stdin, never printed            (required)
#   IMGBUILD           path to imgbuild                     (default: imgbuild)
#   CONTEXT            build context inside the git work tree (default: .)
#   IMAGE_NAME         repository under REGISTRY   (default: CONTEXT's directory name)
#   GIT_SHA            commit to build            (default: HEAD of CONTEXT's repository)
#   EXTRA_TAGS         space-separated extra tags, e.g. "$BRANCH" (characters a tag
#                      cannot hold become '-': feature/x -> feature-x)
#   REGISTRY_FLAGS     transport flags for every imgbuild call, e.g.
#                      "--ca-file /etc/ssl/harbor-ca.crt" or "--plain-http" (word-split)
#   IMAGE_TAR          where the image tarball is written (default: app.tar)
#   REGISTRY_AUTH_FILE credentials file to keep; by default a temporary one is
#                      used and deleted on exit, so no secret outlives the job
#
# Output: imgbuild's summaries on stdout (Image/Tag/Digest/Output, Pushed/Digest),
# progress on stderr, and as the LAST stdout line: REGISTRY/IMAGE_NAME:sha-<sha>.
# With $GITHUB_OUTPUT set, also writes image=, digest= and sha= there.
# Exit status: imgbuild's (0 ok, 1 failure, 2 usage); 2 for missing inputs.

# Never trace this script: `bash -x` would print the password on the login line.
{ set +x; } 2>/dev/null
set -euo pipefail

die() {
    echo "ci-deploy: error: $*" >&2
    exit 2
}

[ -n "${REGISTRY:-}" ] || die "REGISTRY is not set (host[:port]/project, e.g. harbor.local/wepp)"
[ -n "${REGISTRY_USER:-}" ] || die "REGISTRY_USER is not set (e.g. robot\$wepp+ci)"
[ -n "${REGISTRY_PASSWORD:-}" ] || die "REGISTRY_PASSWORD is not set or empty"
REGISTRY=${REGISTRY%/}
case $REGISTRY in
*/*) ;;
*) die "REGISTRY=$REGISTRY: expected host[:port]/project" ;;
esac
REGISTRY_HOST=${REGISTRY%%/*}
IMGBUILD=${IMGBUILD:-imgbuild}
CONTEXT=${CONTEXT:-.}
IMAGE_TAR=${IMAGE_TAR:-app.tar}
[ -d "$CONTEXT" ] || die "CONTEXT=$CONTEXT: not a directory"
if [ -z "${IMAGE_NAME:-}" ]; then
    # imgbuild's own default, lowercased and cut to [a-z0-9._-]
    IMAGE_NAME=$(basename "$(cd "$CONTEXT" && pwd)" | tr 'A-Z' 'a-z' | tr -cd 'a-z0-9._-')
    [ -n "$IMAGE_NAME" ] || IMAGE_NAME=image
fi
REPO="$REGISTRY/$IMAGE_NAME"

# The full 40-hex SHA: the image tag is always sha-<full SHA>.
GIT_SHA=$(git -C "$CONTEXT" rev-parse --verify --quiet "${GIT_SHA:-HEAD}^{commit}") ||
    die "GIT_SHA=${GIT_SHA:-HEAD}: no such commit in $CONTEXT"
REF="$REPO:sha-$GIT_SHA"

read -r -a FLAGS <<<"${REGISTRY_FLAGS:-}"

ALSO=()
for t in ${EXTRA_TAGS:-}; do
    # A tag is [A-Za-z0-9_][A-Za-z0-9._-]{0,127} (OCI distribution spec).
    t=$(printf '%s' "$t" | tr -c 'A-Za-z0-9._-' '-')
    t=${t:0:128}
    case $t in [.-]*) t="_${t:1}" ;; esac
    [ "$t" = "sha-$GIT_SHA" ] || ALSO+=(--also-tag "$t")
done

# Credentials go to a temporary file unless the caller chose one.
CLEANUP=
if [ -n "${REGISTRY_AUTH_FILE:-}" ]; then
    AUTHFILE=$REGISTRY_AUTH_FILE
else
    CLEANUP=$(mktemp -d "${TMPDIR:-/tmp}/ci-deploy-XXXXXX")
    AUTHFILE=$CLEANUP/auth.json
fi
trap '[ -z "$CLEANUP" ] || rm -rf "$CLEANUP"' EXIT

# 1. Log in first: a wrong secret fails before a long build, and base images in
#    the same (private) project can be pulled by the build. printf is a shell
#    builtin, so the password is in no process's argv.
echo "ci-deploy: logging in to $REGISTRY_HOST as $REGISTRY_USER" >&2
printf '%s' "$REGISTRY_PASSWORD" |
    "$IMGBUILD" login "$REGISTRY_HOST" -u "$REGISTRY_USER" --password-stdin --authfile "$AUTHFILE" "${FLAGS[@]}" >&2

# 2. Build the commit (from git, not the work tree) into IMAGE_TAR.
echo "ci-deploy: building $REF" >&2
BUILT=$("$IMGBUILD" build "$CONTEXT" --tag "$GIT_SHA" --name "$REPO" -o "$IMAGE_TAR" \
    --authfile "$AUTHFILE" "${FLAGS[@]}")
printf '%s\n' "$BUILT"
DIGEST=$(printf '%s\n' "$BUILT" | sed -n 's/^Digest  *//p')

# 3. Push under sha-<sha> (the tarball's own tag) and the extra tags.
echo "ci-deploy: pushing $REF" >&2
ERR=$(mktemp "${TMPDIR:-/tmp}/ci-deploy-err-XXXXXX")
rc=0
"$IMGBUILD" push "$IMAGE_TAR" "$REPO" "${ALSO[@]}" --authfile "$AUTHFILE" "${FLAGS[@]}" 2>"$ERR" || rc=$?
cat "$ERR" >&2
if [ "$rc" != 0 ] && grep -q 'HTTP 412' "$ERR"; then
    # Harbor refuses to rewrite a tag matched by an immutability rule, even with
    # the same digest, so a re-run job for the same commit gets 412. That is fine
    # when the tag already holds exactly this image: check, then push the rest.
    rm -f "$ERR"
    echo "ci-deploy: sha-$GIT_SHA is immutable in $REGISTRY; checking it holds $DIGEST" >&2
    CHECK=$(mktemp -d "${TMPDIR:-/tmp}/ci-deploy-check-XXXXXX")
    have=$("$IMGBUILD" pull "$REF" -q --cache-dir "$CHECK" --authfile "$AUTHFILE" "${FLAGS[@]}") || have=
    rm -rf "$CHECK"
    if [ "$have" != "$DIGEST" ]; then
        echo "ci-deploy: error: $REF is ${have:-unreadable}, not $DIGEST; refusing to continue" >&2
        exit 1
    fi
    echo "Pushed  $REF (already there)"
    echo "Digest  $DIGEST"
    if [ ${#ALSO[@]} -gt 0 ]; then
        first=${ALSO[1]}
        "$IMGBUILD" push "$IMAGE_TAR" "$REPO:$first" "${ALSO[@]:2}" --authfile "$AUTHFILE" "${FLAGS[@]}"
    fi
elif [ "$rc" != 0 ]; then
    rm -f "$ERR"
    exit "$rc"
fi
rm -f "$ERR"

if [ -n "${GITHUB_OUTPUT:-}" ]; then
    printf 'image=%s\ndigest=%s\nsha=%s\n' "$REF" "$DIGEST" "$GIT_SHA" >>"$GITHUB_OUTPUT"
fi
echo "$REF"
