# tests/e2e/lib.sh — sourced by every tNNNN-*.sh (git's t/test-lib.sh style).
# Each test script runs in its own temp dir with its own cache and HOME, so
# tests are independent and can run in parallel under ctest.
set -u

IB_SRC=${IB_SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
IMGBUILD=$(realpath "${IMGBUILD:-$IB_SRC/build/imgbuild}")
TEST_NAME=$(basename "$0" .sh)
TMP=$(mktemp -d "${TMPDIR:-/tmp}/ib-$TEST_NAME-XXXXXX")
export IMGBUILD_CACHE="$TMP/cache"
export HOME="$TMP/home"
mkdir -p "$HOME"
# Hermetic git: no system/global config, fixed identities and dates.
: >"$TMP/gitconfig"
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL="$TMP/gitconfig"
export GIT_AUTHOR_NAME="Test Author" GIT_AUTHOR_EMAIL=author@example.com
export GIT_COMMITTER_NAME="Test Committer" GIT_COMMITTER_EMAIL=committer@example.com
export GIT_AUTHOR_DATE="2024-05-01T12:00:00Z" GIT_COMMITTER_DATE="2024-05-01T12:00:00Z"
# Tests choose output modes explicitly; the CI runner's own CI=true must not leak in.
unset SOURCE_DATE_EPOCH CI 2>/dev/null || true
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:exitcode=86}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1:exitcode=87}

ib_pass=0
ib_fail=0
SANITIZER_MARK="$TMP/.sanitizer-report"

cleanup() {
    if [ "${IB_KEEP_TMP:-}" = 1 ]; then echo "# kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

say() { printf '# %s\n' "$*"; }

# ib ARGS...: runs imgbuild; stderr is shown and kept in $TMP/last.err.
# A sanitizer report anywhere fails the whole script.
ib() {
    local rc=0
    "$IMGBUILD" "$@" 2>"$TMP/last.err" || rc=$?
    cat "$TMP/last.err" >&2
    if grep -qE 'AddressSanitizer|LeakSanitizer|runtime error:|UndefinedBehaviorSanitizer' "$TMP/last.err"; then
        cp "$TMP/last.err" "$SANITIZER_MARK"
    fi
    return $rc
}

# test_expect_success DESC BODY — BODY runs in a subshell with errexit.
test_expect_success() {
    local desc=$1 body=$2
    if (set -e; eval "$body") >"$TMP/out.log" 2>&1; then
        ib_pass=$((ib_pass + 1))
        echo "ok - $desc"
    else
        ib_fail=$((ib_fail + 1))
        echo "not ok - $desc"
        sed 's/^/#   /' "$TMP/out.log" | tail -n 40
    fi
}

# expect_error PATTERN CMD... — CMD must exit 1 and end with exactly one stderr line
# "imgbuild: error: ..." matching the extended regex PATTERN.
expect_error() {
    local pat=$1 rc=0
    shift
    ib "$@" >"$TMP/err.stdout" || rc=$?
    if [ "$rc" != 1 ]; then echo "expected exit 1, got $rc"; return 1; fi
    # Step lines may precede it (progress goes to stderr), but the error itself
    # is exactly one line, the last one.
    local n
    n=$(grep -c "^imgbuild: " "$TMP/last.err")
    if [ "$n" != 1 ]; then echo "expected one 'imgbuild:' line, got $n"; return 1; fi
    tail -n 1 "$TMP/last.err" | grep -qE "^imgbuild: error: " || { echo "last line is not 'imgbuild: error: ...'"; return 1; }
    tail -n 1 "$TMP/last.err" | grep -qE -- "$pat" || { echo "error does not match /$pat/"; return 1; }
}

# bb_rootfs DIR APPLET...: a minimal root filesystem in DIR for RUN tests: busybox-static as
# /bin/busybox with the given applets linked to it, /etc/passwd (root, app 1000) and /etc/group.
bb_rootfs() {
    local d=$1 a bb
    shift
    bb=$(command -v busybox) && file -L "$bb" 2>/dev/null | grep -q "statically linked" ||
        { echo "busybox-static is required (scripts/install-deps.sh test)"; return 1; }
    mkdir -p "$d/bin" "$d/etc" && cp "$bb" "$d/bin/busybox" || return 1
    for a in "$@"; do ln -s busybox "$d/bin/$a" || return 1; done
    printf 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n' >"$d/etc/passwd"
    printf 'root:x:0:\napp:x:1000:\n' >"$d/etc/group"
}

# as_user DIR ARGS...: runs imgbuild ARGS in DIR as the unprivileged user $U, with HOME=$W and the
# cache in $W/cache, a clean environment (but the snapshot, subordinate-id and sanitizer settings), and
# stderr kept in $TMP/last.err like ib() does.
as_user() { # DIR ARGS...
    local d=$1 rc=0
    shift
    setpriv --reuid="$U" --regid="$(id -g "$U")" --clear-groups env -i PATH="$PATH" HOME="$W" IMGBUILD_CACHE="$W/cache" \
        IMGBUILD_SNAPSHOT="${IMGBUILD_SNAPSHOT:-}" IMGBUILD_SUBIDS="${IMGBUILD_SUBIDS:-}" \
        ASAN_OPTIONS="${ASAN_OPTIONS:-}" UBSAN_OPTIONS="${UBSAN_OPTIONS:-}" \
        sh -c 'cd "$1" && shift && exec "$@"' sh "$d" "$IMGBUILD" "$@" 2>"$TMP/last.err" || rc=$?
    cat "$TMP/last.err" >&2
    if grep -qE 'AddressSanitizer|LeakSanitizer|runtime error:' "$TMP/last.err"; then cp "$TMP/last.err" "$SANITIZER_MARK"; fi
    return $rc
}

# flip_check DIR ERR_REGEX [BASE_TAR]: DIR's file z (a copy of $TMP/A) flips between $TMP/A and $TMP/B
# while 8 --worktree builds of DIR run, each with its own cache dir (BASE_TAR loaded into it first). A build
# may fail, with a last line matching ERR_REGEX and no new cache entry; a build that succeeded must have
# cached what its key says: for z = A and z = B, every surviving cache gives the digest a cold build gives.
flip_check() {
    local dir=$1 err=$2 base=${3:-} flipper ok="" bad=0 i v n0 cold d
    { while :; do cp "$TMP/B" "$TMP/z.n"; mv -f "$TMP/z.n" "$dir/z"; cp "$TMP/A" "$TMP/z.n"; mv -f "$TMP/z.n" "$dir/z"; done & }
    flipper=$!
    for i in 1 2 3 4 5 6 7 8; do
        if [ -n "$base" ]; then IMGBUILD_CACHE="$TMP/flip-$i" ib load "$base" >/dev/null || bad=1; fi
        n0=$(ls "$TMP/flip-$i/cache/entries" 2>/dev/null | wc -l)
        if (cd "$dir" && IMGBUILD_CACHE="$TMP/flip-$i" ib --worktree -q -o "$TMP/flip.tar" >/dev/null); then ok="$ok $i"
        elif tail -n 1 "$TMP/last.err" | grep -qE "$err" &&
             test "$(ls "$TMP/flip-$i/cache/entries" 2>/dev/null | wc -l)" = "$n0"; then :
        else bad=1; fi
    done
    kill $flipper
    wait $flipper 2>/dev/null
    test $bad = 0 || return 1
    for v in A B; do
        cp "$TMP/$v" "$dir/z" || return 1
        if [ -n "$base" ]; then IMGBUILD_CACHE="$TMP/flip-cold-$v" ib load "$base" >/dev/null || return 1; fi
        cold=$(cd "$dir" && IMGBUILD_CACHE="$TMP/flip-cold-$v" ib --worktree -q -o "$TMP/flip.tar") || return 1
        for i in $ok; do
            d=$(cd "$dir" && IMGBUILD_CACHE="$TMP/flip-$i" ib --worktree -q -o "$TMP/flip.tar") || return 1
            test "$d" = "$cold" || { echo "cache $i holds a stale layer for $v"; return 1; }
        done
    done
}

# new_repo DIR: an empty git repo with a fixed identity.
new_repo() {
    mkdir -p "$1"
    git -C "$1" init -q -b main
}

commit_all() { # DIR MSG
    git -C "$1" add -A
    git -C "$1" commit -q -m "$2"
}

# digest_of TAR: the manifest digest recorded in the tarball's index.json.
digest_of() {
    tar -xOf "$1" index.json | python3 -c 'import json,sys; print(json.load(sys.stdin)["manifests"][0]["digest"])'
}

# unpack_image TAR DEST: umoci unpack of the tarball's only image into DEST (rootfs in DEST/rootfs).
unpack_image() {
    local tar=$1 dest=$2 lay="$TMP/layout.$$.$RANDOM" ref
    mkdir -p "$lay"
    tar -xf "$tar" -C "$lay"
    ref=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"])' "$lay/index.json")
    umoci unpack --image "$lay:$ref" "$dest" >/dev/null
    rm -rf "$lay"
}

# tree_listing DIR: "type mode uid:gid path [sha256|target]" for every entry, sorted.
tree_listing() {
    (cd "$1" && find . -mindepth 1 -printf '%y %m %U:%G %p\n' | sort -k4 | while read -r t m o p; do
        case $t in
        f) echo "$t $m $o $p $(sha256sum <"$p" | cut -c1-64)" ;;
        l) echo "$t $o $p -> $(readlink "$p")" ;;
        *) echo "$t $m $o $p" ;;
        esac
    done)
}

test_done() {
    if [ -f "$SANITIZER_MARK" ]; then
        echo "not ok - sanitizer report:"
        sed 's/^/#   /' "$SANITIZER_MARK" | head -n 60
        ib_fail=$((ib_fail + 1))
    fi
    echo "$ib_pass passed, $ib_fail failed"
    [ "$ib_fail" = 0 ]
    exit $?
}
