#!/usr/bin/env bash
# Side-by-side history-slimming benchmark: `imgbuild slim` against `git filter-repo`.
#
# Generates with tests/e2e/slimgen.py (deterministic, seeded, no network) a repository shaped like
# the wepppy monolith: BENCH_COMMITS commits (merges, tags, side branches) with code plus two data
# dirs that hold BENCH_DATA_MB MB of incompressible data over all history:
#   wepppy/climates/cligen/county_db   wepppy/soils/ssurgo/data
# The generated origin is cached in BENCH_FIXTURES (default /var/cache/imgbuild-fixtures when
# writable, else $BENCH_TMP/imgbuild-fixtures), keyed by the generator's arguments and the sha256 of
# slimgen.py, so reruns skip the ~15 s generation (stale entries of an older slimgen.py are removed).
#
# Each of BENCH_RUNS rounds makes fresh `git clone --no-local` clones of the origin (as the runbook
# says: both tools want a fresh clone) and times, wall clock, interleaved:
#   filter-repo   git filter-repo --path D1 --path D2 --invert-paths
#                 rewrite = its "New history written in X seconds" line; total = the whole command
#                 (rewrite + ref updates + reflog expire + gc/repack)
#   imgbuild      imgbuild slim --path D1 --path D2 --export-to DIR --no-backup --progress plain
#                 rewrite = its "rewrite: … in X s" line; total = the whole command (sanity check,
#                 export + verify of every removed file of every tip, rewrite, checkout, gc); the
#                 export, backup and shrink phases are shown too when imgbuild prints their times
#   imgbuild+bk   the same with the default backup bundle (BENCH_BACKUP=0 skips it)
#   both again *  with glibc's malloc trimming off (GLIBC_TUNABLES; BENCH_TUNED=0 skips them): on these
#                 VMs each trim of the heap costs a TLB shootdown, and git fast-export/fast-import (the
#                 engine of filter-repo) run 2-3x slower with glibc's default than without; the rows
#                 show how much of the ratio comes from that rather than from the tools themselves.
# Both tools run with their defaults, so both add refs/replace/<old> -> <new> for every rewritten commit.
# After each round the refs of both results are compared (`git for-each-ref`: commit and tag ids);
# a difference prints a warning (the e2e test t0200-slim.sh is where that is asserted).
# Prints a table (best of the runs, all runs) and imgbuild/filter-repo ratios with the goals of
# issue 6 (printed, never asserted): rewrite <= 0.1, total <= 0.5.
#
# The given imgbuild is used as is unless it is a sanitizer build: then a Release build without
# sanitizers is made in BENCH_REL_DIR (default ${BENCH_TMP:-/tmp}/ib-bench-rel, shared with the other
# benchmarks) and timed instead. BENCH_REBUILD=1 forces that build.
#
# usage: bash bench/slim.sh [PATH/TO/imgbuild]       (default: build/imgbuild under the repo root)
#   env: BENCH_COMMITS (default 3000), BENCH_DATA_MB (default 200), BENCH_SEED (default 1),
#        BENCH_RUNS (default 3), BENCH_BACKUP (default 1), BENCH_TUNED (default 1),
#        BENCH_FIXTURES, BENCH_TMP (default /tmp), BENCH_REL_DIR, BENCH_REBUILD=1,
#        BENCH_KEEP=1 keeps the temp dir (clones, exports, logs) for inspection.
# Exits non-zero only when a tool fails; timings are only printed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
ib=${1:-$root/build/imgbuild}
[[ -x $ib ]] || { echo "slim.sh: imgbuild not found or not executable: $ib (run make build)" >&2; exit 2; }
ib=$(realpath "$ib")

ncommits=${BENCH_COMMITS:-3000}
data_mb=${BENCH_DATA_MB:-200}
seed=${BENCH_SEED:-1}
runs=${BENCH_RUNS:-3}
with_backup=${BENCH_BACKUP:-1}
tuned=${BENCH_TUNED:-1}
btmp=${BENCH_TMP:-/tmp}
gen=$root/tests/e2e/slimgen.py
D1=wepppy/climates/cligen/county_db
D2=wepppy/soils/ssurgo/data
tunables="glibc.malloc.trim_threshold=536870912:glibc.malloc.top_pad=67108864"

for t in git git-filter-repo python3 awk cmake sha256sum du; do
    command -v "$t" >/dev/null || { echo "slim.sh: $t is required (bash scripts/install-deps.sh test)" >&2; exit 2; }
done

# ---------------------------------------------------------------- 0. a release imgbuild
# shellcheck source=bench/lib.sh
. "$root/bench/lib.sh"
bench_release_imgbuild slim.sh
"$ib" slim --help >/dev/null 2>&1 || { echo "slim.sh: $ib has no working 'slim' verb" >&2; exit 2; }

work=$(mktemp -d "$btmp/imgbuild-slimbench.XXXXXX")
# shellcheck disable=SC2317  # invoked by the trap
cleanup() { if [[ ${BENCH_KEEP:-0} == 1 ]]; then echo "slim.sh: kept $work" >&2; else rm -rf "$work"; fi; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# Hermetic tools: no user/system git config, temp files under $work. The caller's GLIBC_TUNABLES
# would change the tools' speed (see above): only the filter-repo* row sets it.
export HOME=$work/home GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
mkdir -p "$HOME" "$work/tmp"
export TMPDIR=$work/tmp
unset IMGBUILD_CACHE XDG_CACHE_HOME GLIBC_TUNABLES CI
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.invalid
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.invalid

# ---------------------------------------------------------------- 1. the origin (cached)
fixtures=${BENCH_FIXTURES:-}
if [[ -z $fixtures ]]; then
    fixtures=/var/cache/imgbuild-fixtures
    mkdir -p "$fixtures" 2>/dev/null && [[ -w $fixtures ]] || fixtures=$btmp/imgbuild-fixtures
fi
mkdir -p "$fixtures"
genhash=$(sha256sum "$gen" | cut -c1-12)
prefix=slim-origin-c$ncommits-m$data_mb-s$seed
origin=$fixtures/$prefix-$genhash
gen_note="cached"
if [[ ! -f $origin/.git/slimgen-complete ]]; then
    for stale in "$fixtures/$prefix"-*; do
        [[ -e $stale && $stale != "$origin" ]] && { echo "slim.sh: removing stale fixture $stale" >&2; rm -rf "$stale"; }
    done
    rm -rf "$origin" "$origin.tmp.$$"
    echo "slim.sh: generating $origin ($ncommits commits, $data_mb MB of data)" >&2
    g0=$(date +%s.%N)
    python3 "$gen" --commits "$ncommits" --data-mb "$data_mb" --seed "$seed" "$origin.tmp.$$"
    : >"$origin.tmp.$$/.git/slimgen-complete"
    mv "$origin.tmp.$$" "$origin"
    gen_note="generated in $(awk -v a="$g0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
fi
mbs() { awk -v b="$1" 'BEGIN{printf "%.1f", b/1048576}'; }
o_commits=$(git -C "$origin" rev-list --all --count)
o_refs=$(git -C "$origin" for-each-ref | wc -l)
o_git=$(du -sb "$origin/.git" | cut -f1)
o_data=$(git -C "$origin" log --all -m --raw --no-abbrev --format= -- "$D1" "$D2" | awk '$4 !~ /^0+$/ {print $4}' |
    sort -u | git -C "$origin" cat-file --batch-check='%(objectsize)' | awk '{s+=$1} END{print s+0}')
printf 'origin: %s (%s): %s commits, %s refs, .git %s MB, %s MB of data blobs under the two dirs\n' \
    "$origin" "$gen_note" "$o_commits" "$o_refs" "$(mbs "$o_git")" "$(mbs "$o_data")"
echo "imgbuild: $ib"
echo "git filter-repo: $(git filter-repo --version 2>/dev/null || echo '?'), $(git --version)"

# ---------------------------------------------------------------- helpers
# timed NAME CMD...: runs CMD, appends its wall seconds to $work/t.NAME, keeps its output in
# $work/log.NAME (the last run's); on failure prints the log and exits 1.
timed() {
    local name=$1; shift
    local log=$work/log.$name t0 t1 rc=0
    t0=$(date +%s.%N)
    "$@" >"$log" 2>&1 || rc=$?
    t1=$(date +%s.%N)
    if ((rc)); then
        echo "slim.sh: '$name' failed (exit $rc): $*" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
    awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f\n", b-a}' >>"$work/t.$name"
}
# grab NAME ERE OUT: the number right after ERE in the last log of NAME, appended to t.OUT (if any).
grab() {
    local v
    v=$(tr '\r' '\n' <"$work/log.$1" | grep -oE "$2[0-9]+(\.[0-9]+)?" | head -n1 | grep -oE '[0-9]+(\.[0-9]+)?$' || true)
    if [[ -n $v ]]; then echo "$v" >>"$work/t.$3"; fi
}
fresh_clone() { rm -rf "$1" && git clone -q --no-local "$origin" "$1" && sync; }
fr_args=(--path "$D1" --path "$D2" --invert-paths)
ib_args=(--path "$D1" --path "$D2" --progress plain)
gitsize() { du -sb "$1/.git" | cut -f1; }
refs_of() { git -C "$1" for-each-ref --format='%(refname) %(objectname)'; }
declare -A size_after

# run_fr NAME [ENV=VALUE...]: filter-repo on a fresh clone; rewrite time from its own line.
run_fr() {
    local name=$1; shift
    fresh_clone "$work/$name"
    timed "$name" env "$@" bash -c 'cd "$1" && shift && exec git filter-repo "$@"' _ "$work/$name" "${fr_args[@]}"
    grab "$name" 'New history written in ' "${name}_rw"
    size_after[$name]=$(gitsize "$work/$name")
}
# run_ib NAME BACKUP(0|1) [ENV=VALUE...]: imgbuild slim on a fresh clone; phase times from its lines.
run_ib() {
    local name=$1 backup=$2; shift 2
    local extra=(--no-backup)
    [[ $backup == 1 ]] && extra=()
    fresh_clone "$work/$name"
    rm -rf "$work/$name.exp" "$work/$name.pre-slim.bundle"
    timed "$name" env "$@" "$ib" slim "$work/$name" "${ib_args[@]}" --export-to "$work/$name.exp" "${extra[@]}"
    grab "$name" '^rewrite: .* in ' "${name}_rw"
    grab "$name" '^export: .*verified in ' "${name}_exp"
    grab "$name" '^backup: .* in ' "${name}_bk"
    grab "$name" '^shrink: .* in ' "${name}_gc"
    size_after[$name]=$(gitsize "$work/$name")
    [[ $backup == 1 ]] && size_after[$name.bundle]=$(stat -c %s "$work/$name.pre-slim.bundle" 2>/dev/null || echo 0)
    rm -rf "$work/$name.exp" "$work/$name.pre-slim.bundle"
}
# same_refs A B ROUND: warns (never fails) when the refs differ.
refs_ok=1
same_refs() {
    if ! diff <(refs_of "$work/$1") <(refs_of "$work/$2") >"$work/refs.diff"; then
        refs_ok=0
        echo "slim.sh: WARNING: round $3: the refs of $2 differ from $1's (< $1, > $2):" >&2
        head -n 20 "$work/refs.diff" >&2
    fi
}

# ---------------------------------------------------------------- 2. rounds
for ((i = 1; i <= runs; i++)); do
    run_fr fr
    run_ib ib 0
    same_refs fr ib "$i"
    nrefs=$(refs_of "$work/ib" | wc -l)
    exp_line=$(grep -m1 '^export: [0-9]* files' "$work/log.ib" || echo "export: ?")
    rm -rf "$work/fr" "$work/ib"
    line="round $i: filter-repo $(last fr)s (rewrite $(last fr_rw)s) | imgbuild $(last ib)s (rewrite $(last ib_rw)s)"
    if [[ $with_backup == 1 ]]; then
        run_ib ibb 1
        rm -rf "$work/ibb"
        line+=" | imgbuild+backup $(last ibb)s"
    fi
    if [[ $tuned == 1 ]]; then
        run_fr frt GLIBC_TUNABLES="$tunables"
        run_ib ibt 0 GLIBC_TUNABLES="$tunables"
        same_refs frt ibt "$i"
        rm -rf "$work/frt" "$work/ibt"
        line+=" | filter-repo* $(last frt)s (rewrite $(last frt_rw)s) | imgbuild* $(last ibt)s (rewrite $(last ibt_rw)s)"
    fi
    echo "$line"
done

# ---------------------------------------------------------------- report
# row LABEL NAME AFTER: rewrite, total, the imgbuild phases (export+verify, backup, shrink) when printed.
row() {
    local phases=""
    if [[ -s $work/t.$2_exp ]]; then
        phases="export $(best "$2_exp"),"
        [[ -s $work/t.$2_bk ]] && phases+=" backup $(best "$2_bk"),"
        phases+=" rewrite $(best "$2_rw"), shrink $(best "$2_gc")"
    fi
    printf '%-30s %9s %9s %16s   %-24s %s\n' "$1" "$(best "$2_rw")" "$(best "$2")" "$3" "$(allruns "$2")" "$phases"
}
echo
echo "== slim benchmark: $o_commits commits, $o_refs refs, $(mbs "$o_data") MB of data blobs, .git $(mbs "$o_git") MB;" \
    "best of $runs, $(nproc) cores (load average now: $(cut -d' ' -f1-3 /proc/loadavg))"
printf '%-30s %9s %9s %16s   %-24s %s\n' "tool" "rewrite s" "total s" ".git after" "runs total (s)" "phases (best, s)"
row "git filter-repo" fr "$(mbs "${size_after[fr]}") MB"
row "imgbuild slim --no-backup" ib "$(mbs "${size_after[ib]}") MB"
if [[ $with_backup == 1 ]]; then
    row "imgbuild slim (with backup)" ibb "bundle $(mbs "${size_after[ibb.bundle]}") MB"
fi
if [[ $tuned == 1 ]]; then
    row "git filter-repo *" frt "$(mbs "${size_after[frt]}") MB"
    row "imgbuild slim --no-backup *" ibt "$(mbs "${size_after[ibt]}") MB"
fi
echo "   imgbuild's $exp_line"
printf 'ratio imgbuild/filter-repo: rewrite %s (goal <= 0.1), total %s (goal <= 0.5)' \
    "$(ratio "$(best ib_rw)" "$(best fr_rw)")" "$(ratio "$(best ib)" "$(best fr)")"
[[ $with_backup == 1 ]] && printf ', total with backup %s' "$(ratio "$(best ibb)" "$(best fr)")"
echo
if [[ $tuned == 1 ]]; then
    printf 'ratio with malloc trimming off (*) for both: rewrite %s, total %s\n' \
        "$(ratio "$(best ibt_rw)" "$(best frt_rw)")" "$(ratio "$(best ibt)" "$(best frt)")"
    echo "   (* GLIBC_TUNABLES=$tunables: glibc keeps freed memory instead of trimming it after every free)"
fi
if [[ $refs_ok == 1 ]]; then
    echo "refs: identical to git filter-repo's in every round ($nrefs refs, replace refs included)"
else
    echo "refs: WARNING: differ from git filter-repo's (see above)"
fi
