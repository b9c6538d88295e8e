#!/usr/bin/env bash
# Side-by-side push benchmark: `imgbuild push` against `skopeo copy` to a local CNCF Distribution.
#
# Generates (deterministically, no network) a git repo with BENCH_LAYERS directories holding
# ~BENCH_MB MB in total, mostly incompressible (AES-CTR keystream via openssl, fixed passes) plus
# some text, and a Dockerfile `FROM scratch` + one COPY per directory. Builds it once with imgbuild
# into an OCI image tarball, then, in each of BENCH_RUNS rounds, starts fresh plain-HTTP registries
# on 127.0.0.1 (filesystem storage in the temp dir) and times:
#   cold     skopeo copy oci-archive:IMG.tar docker://S/skopeo/app:t       registry S (skopeo's own)
#            imgbuild push IMG.tar I/ib/app:t, empty --cache-dir            registry I (imgbuild's own)
#            imgbuild push IMG.tar W/ib/app:t, the build's --cache-dir      registry W
#   no-op    the same commands again (same repository, same tag), BENCH_NOOP times each;
#            plus `imgbuild push W/ib/app:t` without the tarball from the build directory
#            (the last-build record: nothing to read or verify locally)
#   mount    push to a second repository on the same registry (S/skopeo/second, I/ib/second)
# Each tool pushes to its own registry, and every round starts new ones: a blob left in a registry
# by the other tool (or by an earlier round) would turn a "cold" upload into a mount or a skip.
# Prints a table (best of the runs, all runs) with imgbuild/skopeo ratios; goals (printed, never
# asserted): cold <= 0.8x skopeo, no-op <= 50 ms.
#
# The given imgbuild is used as is unless it is a sanitizer build (the default build/ is): then a
# Release build without sanitizers is made in ${BENCH_TMP:-/tmp}/ib-bench-rel (kept between runs,
# an incremental build dir, like build/) and timed instead. BENCH_REBUILD=1 forces that build.
#
# usage: bash bench/push.sh [PATH/TO/imgbuild]       (default: build/imgbuild under the repo root)
#   env: BENCH_MB (default 300), BENCH_LAYERS (default 5), BENCH_RUNS (default 3),
#        BENCH_NOOP (no-op pushes per round and tool, default 3), BENCH_JOBS (imgbuild -j, default
#        imgbuild's own), BENCH_TMP (default /tmp), BENCH_REBUILD=1, BENCH_KEEP=1 keeps the temp dir.
# Exits non-zero only when a tool fails; timings are only printed.
#
# Caveat: skopeo (c/image) keeps a blob-info cache outside the temp dir (as root:
# /var/lib/containers/cache, else ~/.local/share/containers/cache); it has no flag to move it.
# Entries name 127.0.0.1:PORT locations of registries that no longer exist; they can cost skopeo a
# failed mount attempt when a port is reused, nothing more.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
ib=${1:-$root/build/imgbuild}
[[ -x $ib ]] || { echo "push.sh: imgbuild not found or not executable: $ib (run make build)" >&2; exit 2; }
ib=$(realpath "$ib")

mb=${BENCH_MB:-300}
nlayers=${BENCH_LAYERS:-5}
runs=${BENCH_RUNS:-3}
nnoop=${BENCH_NOOP:-3}
btmp=${BENCH_TMP:-/tmp}
jobs=()
[[ -n ${BENCH_JOBS:-} ]] && jobs=(-j "$BENCH_JOBS")

for t in git openssl skopeo docker-registry curl python3 awk setpriv; do
    command -v "$t" >/dev/null || { echo "push.sh: $t is required (bash scripts/install-deps.sh test)" >&2; exit 2; }
done
gtime=()
[[ -x /usr/bin/time ]] && gtime=(/usr/bin/time -v -o)

# ---------------------------------------------------------------- 0. a release imgbuild
# shellcheck source=bench/lib.sh
. "$root/bench/lib.sh"
bench_release_imgbuild push.sh

work=$(mktemp -d "$btmp/imgbuild-pushbench.XXXXXX")
regpids=()
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
    local p
    for p in "${regpids[@]}"; do stop_pid "$p"; done
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then echo "push.sh: kept $work" >&2; else rm -rf "$work"; fi
}
# shellcheck disable=SC2317
stop_pid() {
    local pid=$1 i
    kill "$pid" 2>/dev/null || return 0
    for i in $(seq 1 30); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# Hermetic tools: no user/system git config, skopeo with its own policy and registries.conf,
# its temp files (the extracted oci-archive) under $work.
export HOME=$work/home GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
mkdir -p "$HOME" "$work/tmp"
export TMPDIR=$work/tmp
unset IMGBUILD_CACHE XDG_CACHE_HOME REGISTRY_AUTH_FILE
printf 'unqualified-search-registries = []\n' >"$work/registries.conf"
printf '{"default":[{"type":"insecureAcceptAnything"}]}\n' >"$work/policy.json"
export CONTAINERS_REGISTRIES_CONF=$work/registries.conf
sk=(skopeo --policy "$work/policy.json")

# ---------------------------------------------------------------- 1. repository and image
repo=$work/repo
mkdir -p "$repo"
gen_start=$(date +%s.%N)
{
    echo "FROM scratch"
    total=$((mb * 1024 * 1024))
    wsum=$((nlayers * (nlayers + 1) / 2))
    for ((k = 1; k <= nlayers; k++)); do
        d=$repo/layer$k
        mkdir -p "$d/data" "$d/doc"
        # Layer k gets a share (nlayers-k+1)/wsum of the bytes: 5 layers -> 33/27/20/13/7 %.
        size=$((total * (nlayers - k + 1) / wsum))
        # ~2% text (compressible), the rest in two incompressible files.
        text=$((size / 50))
        bin=$((size - text))
        for part in 1 2; do
            n=$((part == 1 ? bin * 2 / 3 : bin - bin * 2 / 3))
            # head closes the pipe early: openssl's EPIPE is expected, so pipefail is off here.
            (set +o pipefail; openssl enc -aes-128-ctr -pass "pass:push-bench-$k-$part" -nosalt -pbkdf2 \
                </dev/zero 2>/dev/null | head -c "$n" >"$d/data/blob$part.bin")
        done
        awk -v k="$k" -v n="$text" -v dir="$d" 'BEGIN {
            srand(k); b = 0; f = 0; ln = 0; out = sprintf("%s/doc/notes%02d.txt", dir, f);
            while (b < n) {
                if (b >= (f + 1) * 262144) { close(out); f++; out = sprintf("%s/doc/notes%02d.txt", dir, f); }
                l = sprintf("layer %d line %d: the quick brown fox %d jumps over %d lazy dogs; value=%.6f\n",
                            k, ++ln, int(rand() * 1e6), int(rand() * 100), rand());
                printf "%s", l > out; b += length(l);
            } }'
        echo "COPY layer$k /opt/layer$k"
    done
    echo 'ENV BENCH=push'
    echo 'CMD ["/opt/layer1/run"]'
} >"$repo/Dockerfile"
(
    cd "$repo"
    export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.invalid GIT_AUTHOR_DATE="2024-01-01T00:00:00Z"
    export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.invalid GIT_COMMITTER_DATE="2024-01-01T00:00:00Z"
    git -c init.defaultBranch=main init -q .
    git add -A
    git -c commit.gpgsign=false -c core.hooksPath=/dev/null commit -q -m "push bench repo"
)
gen_end=$(date +%s.%N)
sz_repo=$(du -sb --exclude=.git "$repo" | cut -f1)
printf 'repo: %d layer dirs, %.1f MB, generated in %.1fs\n' "$nlayers" \
    "$(awk -v b="$sz_repo" 'BEGIN{print b/1048576}')" "$(awk -v a="$gen_start" -v b="$gen_end" 'BEGIN{print b-a}')"

ms() { date +%s%N | cut -c1-13; } # epoch milliseconds
img=$work/img.tar
bcache=$work/ibcache # the build's store: warm for the tarball's blobs
t0=$(ms)
(cd "$repo" && "$ib" --tag HEAD -o "$img" --progress plain --cache-dir "$bcache") >"$work/log.build" 2>&1 ||
    { tail -n 40 "$work/log.build" >&2; echo "push.sh: imgbuild build failed" >&2; exit 1; }
t1=$(ms)
sz_img=$(stat -c %s "$img")
nblobs=$(tar -tf "$img" | grep -c '^blobs/sha256/.' || true)
printf 'image: %s, %.1f MB tarball, %d blobs, built by imgbuild in %.1fs\n' "$ib" \
    "$(awk -v b="$sz_img" 'BEGIN{print b/1048576}')" "$nblobs" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print (b-a)/1000}')"

# ---------------------------------------------------------------- helpers
# reg_start NAME: a fresh Distribution, plain HTTP on 127.0.0.1, storage in $work/reg-NAME;
# sets REG_HOST and REG_PID. Every REGISTRY_* variable would be read as a config override: dropped.
reg_start() {
    local n=$1 dir=$work/reg-$1 port pid code i e
    local -a unset_env=()
    for e in $(compgen -e); do [[ $e == REGISTRY_* ]] && unset_env+=(-u "$e"); done
    rm -rf "$dir"
    mkdir -p "$dir/data"
    for _ in 1 2 3 4 5; do
        port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $dir/data
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: push-bench-$n
EOF
        : >"$dir/access.log"
        setpriv --pdeathsig KILL -- env "${unset_env[@]}" docker-registry serve "$dir/config.yml" \
            </dev/null >>"$dir/access.log" 2>"$dir/registry.log" &
        pid=$!
        regpids+=("$pid")
        for i in $(seq 1 150); do
            kill -0 "$pid" 2>/dev/null || break
            code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$port/v2/") || code=000
            if [[ $code == 200 ]]; then
                REG_HOST=127.0.0.1:$port REG_PID=$pid
                : >"$dir/access.log"
                return 0
            fi
            sleep 0.05
        done
        stop_pid "$pid"
        unset 'regpids[-1]'
        grep -q 'address already in use' "$dir/registry.log" || break
    done
    tail -n 20 "$dir/registry.log" >&2
    echo "push.sh: registry $n did not start" >&2
    exit 1
}
reg_stop() { # reg_stop NAME PID: stop it, forget its pid (never signal a reused pid) and free its storage
    local p keep=()
    stop_pid "$2"
    for p in "${regpids[@]}"; do [[ $p == "$2" ]] || keep+=("$p"); done
    regpids=("${keep[@]}")
    rm -rf "$work/reg-$1"
}
reqs() { wc -l <"$work/reg-$1/access.log"; } # requests the registry served so far

# timed NAME REG CMD...: runs CMD (under GNU time when available); appends its wall seconds to
# $work/t.NAME, peak RSS (kB) to $work/rss.NAME and the number of HTTP requests REG served meanwhile
# to $work/n.NAME. On failure prints the log and exits 1.
timed() {
    local name=$1 reg=$2 log=$work/log.$1 tv=$work/tv.$1 a b n0 rc=0
    shift 2
    n0=$(reqs "$reg")
    a=$(date +%s%N)
    # No-op steps run bare: /usr/bin/time's own fork+exec would show in a ~50 ms measurement.
    if ((${#gtime[@]})) && [[ $name != *noop* ]]; then
        "${gtime[@]}" "$tv" "$@" >"$log" 2>&1 || rc=$?
    else
        "$@" >"$log" 2>&1 || rc=$?
    fi
    b=$(date +%s%N)
    if ((rc)); then
        echo "push.sh: '$name' failed (exit $rc): $*" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
    awk -v a="$a" -v b="$b" 'BEGIN{printf "%.4f\n", (b-a)/1e9}' >>"$work/t.$name"
    echo $(($(reqs "$reg") - n0)) >>"$work/n.$name"
    [[ -f $tv ]] && awk -F': *' '/Maximum resident set size/{print $2}' "$tv" >>"$work/rss.$name"
    return 0
}
allruns() { [[ -s $work/t.$1 ]] && awk '{printf "%s%.3f", (NR > 1 ? " " : ""), $1}' "$work/t.$1" || echo -; }
nreq() { [[ -s $work/n.$1 ]] && sort -n "$work/n.$1" | uniq | paste -sd/ || echo -; }
maxrss_mb() { [[ -s $work/rss.$1 ]] && sort -g "$work/rss.$1" | tail -n1 | awk '{printf "%.0f", $1/1024}' || echo -; }

# Command prefixes (plain commands, not functions: timed may run them under /usr/bin/time).
skcopy=("${sk[@]}" copy --dest-tls-verify=false "oci-archive:$img")
ibpush=("$ib" push --plain-http "${jobs[@]}" --progress plain)

# ---------------------------------------------------------------- 2. rounds
for ((i = 1; i <= runs; i++)); do
    reg_start S$i; S=$REG_HOST; Spid=$REG_PID
    reg_start I$i; I=$REG_HOST; Ipid=$REG_PID
    reg_start W$i; W=$REG_HOST; Wpid=$REG_PID
    store=$work/store.$i # empty: the cold push loads (reads, hashes, copies) the tarball into it
    sync # flush the previous round's writes (registries, stores) outside the timed steps

    timed sk_cold S$i "${skcopy[@]}" "docker://$S/skopeo/app:t"
    timed ib_cold I$i "${ibpush[@]}" --cache-dir "$store" "$img" "$I/ib/app:t"
    timed ib_cold_warm W$i "${ibpush[@]}" --cache-dir "$bcache" "$img" "$W/ib/app:t"
    echo "round $i cold:  skopeo $(last sk_cold)s  imgbuild $(last ib_cold)s (empty store)" \
        " $(last ib_cold_warm)s (build's store)"

    sync
    for ((k = 1; k <= nnoop; k++)); do
        timed sk_noop S$i "${skcopy[@]}" "docker://$S/skopeo/app:t"
        timed ib_noop I$i "${ibpush[@]}" --cache-dir "$store" "$img" "$I/ib/app:t"
        # without IMG.tar: the image last built in this directory (cd here, not in a subshell,
        # so that nothing but imgbuild itself is timed)
        pushd "$repo" >/dev/null
        timed ib_noop_last W$i "${ibpush[@]}" --cache-dir "$bcache" "$W/ib/app:t"
        popd >/dev/null
    done
    echo "round $i no-op: skopeo $(last sk_noop)s  imgbuild $(last ib_noop)s (tarball)" \
        " $(last ib_noop_last)s (last build, no tarball)"

    sync
    timed sk_mount S$i "${skcopy[@]}" "docker://$S/skopeo/second:t"
    timed ib_mount I$i "${ibpush[@]}" --cache-dir "$store" "$img" "$I/ib/second:t"
    echo "round $i mount: skopeo $(last sk_mount)s  imgbuild $(last ib_mount)s"
    grep -E '^Blobs' "$work/log.ib_mount" | sed 's/^/               imgbuild: /'

    reg_stop S$i "$Spid"; reg_stop I$i "$Ipid"; reg_stop W$i "$Wpid"
    rm -rf "$store" "$work/tmp"/*
done

# ---------------------------------------------------------------- report
msec() { awk -v s="$1" 'BEGIN{ if (s == s+0) printf "%.0f", s*1000; else print "n/a" }'; }
echo
printf '== push benchmark: %.1f MB image, %d blobs, best of %d rounds (no-op: of %d), %d cores\n' \
    "$(awk -v b="$sz_img" 'BEGIN{print b/1048576}')" "$nblobs" "$runs" "$((runs * nnoop))" "$(nproc)"
echo "   imgbuild: $ib${BENCH_JOBS:+ (-j $BENCH_JOBS)}"
echo "   skopeo:   $(skopeo --version)   registry: $(docker-registry --version | awk '{print $NF}') (plain HTTP, filesystem)"
echo "   each tool pushes to its own fresh registry every round (no cross-tool mounts or skips)"
echo "   load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (timings are noisy on a busy host)"
printf '%-44s %8s %7s %8s %9s   %s\n' "step" "best s" "ratio" "peak MB" "requests" "runs (s)"
row() { # row LABEL NAME [SKOPEO-NAME]
    local r=""
    [[ -n ${3:-} ]] && r=$(ratio "$(best "$2")" "$(best "$3")")
    printf '%-44s %8.3f %7s %8s %9s   %s\n' "$1" "$(best "$2")" "$r" "$(maxrss_mb "$2")" "$(nreq "$2")" "$(allruns "$2")"
}
row "cold   skopeo copy oci-archive:"              sk_cold
row "       imgbuild push IMG.tar (empty store)"   ib_cold sk_cold
row "       imgbuild push IMG.tar (build's store)" ib_cold_warm sk_cold
row "no-op  skopeo copy (same repo+tag)"           sk_noop
row "       imgbuild push IMG.tar"                 ib_noop sk_noop
row "       imgbuild push (last build, no tar)"    ib_noop_last sk_noop
row "mount  skopeo copy to a 2nd repo"             sk_mount
row "       imgbuild push IMG.tar to a 2nd repo"   ib_mount sk_mount
echo "(ratio = imgbuild/skopeo, best vs best; requests = HTTP requests the registry served, distinct values)"
echo
printf 'cold:  imgbuild/skopeo %s (empty store), %s (build'"'"'s store)   goal <= 0.8\n' \
    "$(ratio "$(best ib_cold)" "$(best sk_cold)")" "$(ratio "$(best ib_cold_warm)" "$(best sk_cold)")"
printf 'no-op: imgbuild %s ms with IMG.tar, %s ms without (skopeo %s ms)   goal <= 50 ms\n' \
    "$(msec "$(best ib_noop)")" "$(msec "$(best ib_noop_last)")" "$(msec "$(best sk_noop)")"
echo "notes: 'empty store' is the strict cold case: imgbuild first loads the tarball into its store"
echo "       (reads, sha256-verifies and copies every blob), as skopeo first extracts the archive to"
echo "       a temp dir. With the store the image was built in (the usual build-then-push), blobs"
echo "       already there are skipped without hashing. A no-op push with IMG.tar still opens and"
echo "       walks the tarball; without it (push from the build dir) nothing is read locally."
