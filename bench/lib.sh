# shellcheck shell=bash disable=SC2154  # $ib, $root, $btmp and $work belong to the caller
# bench/lib.sh — helpers shared by the side-by-side benchmarks (sourced).
# The caller sets: $ib (imgbuild to time), $root (repo root), $btmp (temp base),
# and, after creating it, $work (its scratch dir; timings live in $work/t.NAME).

# bench_release_imgbuild NAME: timings of a sanitizer build mean nothing, so
# swap $ib for a Release build (BENCH_REL_DIR, default $btmp/ib-bench-rel;
# BENCH_REBUILD=1 forces it).
bench_is_sanitized() { grep -qaE '__asan_init|__ubsan_handle' "$1"; }
bench_release_imgbuild() {
    local name=$1 rel
    bench_is_sanitized "$ib" || [[ ${BENCH_REBUILD:-0} == 1 ]] || return 0
    rel=${BENCH_REL_DIR:-$btmp/ib-bench-rel}
    echo "$name: $ib is a sanitizer build; building a Release imgbuild in $rel" >&2
    if ! { cmake -S "$root" -B "$rel" -DCMAKE_BUILD_TYPE=Release -DIB_SANITIZE=OFF &&
        cmake --build "$rel" --target imgbuild -j "$(nproc)"; } >"$rel.log" 2>&1; then
        tail -n 30 "$rel.log" >&2
        echo "$name: release build failed (log: $rel.log)" >&2
        exit 1
    fi
    ib=$rel/imgbuild
    bench_is_sanitized "$ib" && echo "$name: warning: $ib is still a sanitizer build" >&2
    return 0
}

# Results: one number per run in $work/t.NAME.
last() { tail -n1 "$work/t.$1"; }
best() { [[ -s $work/t.$1 ]] && sort -g "$work/t.$1" | head -n1 || echo nan; }
allruns() { [[ -s $work/t.$1 ]] && paste -sd' ' "$work/t.$1" || echo -; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0 && a == a+0) printf "%.3f", a/b; else print "n/a" }'; }
