#!/usr/bin/env bash
# Side-by-side RUN benchmark: imgbuild's overlayfs RUN sandbox against `buildah bud` on a big base.
#
# Makes (deterministically, no network) a base image of ~BENCH_FILES small files
# (/usr/share/bulk/dNNN/fNNNN, BENCH_PER_DIR per directory) plus busybox-static (/bin/busybox and
# applet links sh, echo, touch, cat, ...), /etc/passwd, /etc/group and /tmp: a git repo with
# `FROM scratch` + `COPY rootfs/ /`, built with imgbuild into an OCI tarball and `imgbuild load`ed
# into the benchmark's cache dir. The same tarball is pulled into buildah's temp storage
# (`buildah pull oci-archive:...`, vfs) and tagged, so neither tool fetches or unpacks it from
# outside during the timed builds. Then the measured Dockerfile:
#   FROM <base>
#   RUN for i in 1 2 3 4 5 6 7 8 9 10; do echo $i > /tmp/f$i; done          (RUN 1: 10 files)
#   RUN for i in 1 2 3 4 5 6 7 8 9 10; do echo $i > /tmp/g$i; done          (RUN 2: 10 other files)
# is built BENCH_RUNS times by each tool, interleaved, best run reported:
#   imgbuild   build --no-cache --progress plain -o OUT.tar --cache-dir DIR   (base already in the store;
#              both RUNs rebuilt every time). Its per-step seconds come from the "RUN ... BUILT <s>"
#              lines: RUN 1 includes materialising the base rootfs once into a temp dir (unpacking the
#              base layer's ~BENCH_FILES files), RUN 2 only applies RUN 1's tiny layer on top, so it is
#              the pure sandbox + overlayfs snapshot cost; RUN 1 - RUN 2 estimates the unpack.
#   buildah    bud --isolation chroot --storage-driver vfs (no --layers; temp storage and config as in
#              bench/build.sh), base already in its storage; only the bud is timed (the resulting
#              image is removed after each run, untimed, so every run starts from the same state).
# The whole imgbuild wall time includes writing the output tarball (base layer blob included);
# buildah's bud leaves the image in its storage and writes no tarball.
# Prints a table of seconds and imgbuild/buildah ratios; timings are never asserted. If buildah
# cannot RUN here (e.g. chroot isolation fails), its exact error is printed and imgbuild's numbers
# are still reported.
#
# The given imgbuild is used as is unless it is a sanitizer build (the default build/ is): then a
# Release build without sanitizers is made in BENCH_REL_DIR (default ${BENCH_TMP:-/tmp}/ib-bench-rel,
# kept between runs, an incremental build dir shared with bench/cache.sh and bench/push.sh) and
# timed instead. BENCH_REBUILD=1 forces that build.
#
# usage: bash bench/run.sh [PATH/TO/imgbuild]       (default: build/imgbuild under the repo root)
#   env: BENCH_FILES (default 100000), BENCH_PER_DIR (default 1000), BENCH_RUNS (default 3),
#        BENCH_TMP (default /tmp), BENCH_REL_DIR, BENCH_REBUILD=1,
#        BENCH_KEEP=1 keeps the temp dir (repos, logs, tarballs) for inspection.
# Exits non-zero only when imgbuild or the setup fails; timings are only printed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
ib=${1:-$root/build/imgbuild}
[[ -x $ib ]] || { echo "run.sh: imgbuild not found or not executable: $ib (run make build)" >&2; exit 2; }
ib=$(realpath "$ib")

nfiles=${BENCH_FILES:-100000}
per_dir=${BENCH_PER_DIR:-1000}
runs=${BENCH_RUNS:-3}
btmp=${BENCH_TMP:-/tmp}

for t in git python3 buildah awk cmake; do
    command -v "$t" >/dev/null || { echo "run.sh: $t is required (bash scripts/install-deps.sh test)" >&2; exit 2; }
done
BB=$(command -v busybox || true)
if [[ -z $BB ]] || ! file -L "$BB" 2>/dev/null | grep -q "statically linked"; then
    echo "run.sh: busybox-static is required (scripts/install-deps.sh test)" >&2
    exit 2
fi

# ---------------------------------------------------------------- 0. a release imgbuild
# shellcheck source=bench/lib.sh
. "$root/bench/lib.sh"
bench_release_imgbuild run.sh

work=$(mktemp -d "$btmp/imgbuild-runbench.XXXXXX")
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then echo "run.sh: kept $work" >&2; return; fi
    # buildah's vfs storage may hold files it made read-only; make them removable first.
    chmod -R u+rwX "$work" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# Hermetic tools: no user/system git config, no user imgbuild cache, temp files under $work.
export HOME=$work/home GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
mkdir -p "$HOME" "$work/tmp"
export TMPDIR=$work/tmp
unset IMGBUILD_CACHE XDG_CACHE_HOME
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.invalid GIT_AUTHOR_DATE="2024-01-01T00:00:00Z"
export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.invalid GIT_COMMITTER_DATE="2024-01-01T00:00:00Z"
gitc() { git -c commit.gpgsign=false -c core.hooksPath=/dev/null "$@"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }

# ---------------------------------------------------------------- 1. the base image
t_gen0=$(date +%s.%N)
base=$work/base
mkdir -p "$base/rootfs/bin" "$base/rootfs/etc" "$base/rootfs/tmp" "$base/rootfs/root"
cp "$BB" "$base/rootfs/bin/busybox"
for a in sh ls cat echo rm mkdir touch mv id chmod ln pwd env sleep true false test wc; do
    ln -s busybox "$base/rootfs/bin/$a"
done
# git tracks no empty directories: /tmp and /root each get a placeholder file.
: >"$base/rootfs/tmp/.keep"
: >"$base/rootfs/root/.keep"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$base/rootfs/etc/passwd"
printf 'root:x:0:\n' >"$base/rootfs/etc/group"
python3 - "$base/rootfs/usr/share/bulk" "$nfiles" "$per_dir" <<'PY'
import os, sys
dest, n, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    d, f = divmod(i, per)
    if f == 0:
        os.makedirs(f"{dest}/d{d:03d}", exist_ok=True)
    with open(f"{dest}/d{d:03d}/f{f:04d}", "w") as fh:
        fh.write(f"bulk file {i}: {'x' * (i % 97)}\n")
PY
printf 'FROM scratch\nCOPY rootfs/ /\n' >"$base/Dockerfile"
(cd "$base" && gitc -c init.defaultBranch=main init -q . && gitc add -A && gitc commit -q -m "bulk base")
t_gen1=$(date +%s.%N)
n_base=$(find "$base/rootfs" | wc -l)
ibcache=$work/ibcache
base_tar=$work/base.tar
base_ref=local/bulkbase:sha-$(git -C "$base" rev-parse HEAD)
(cd "$base" && "$ib" build --name local/bulkbase -o "$base_tar" -q --cache-dir "$ibcache" >"$work/log.base" 2>&1 &&
    "$ib" load "$base_tar" --cache-dir "$ibcache" >>"$work/log.base" 2>&1) ||
    { cat "$work/log.base" >&2; echo "run.sh: building or loading the base image failed" >&2; exit 1; }
t_gen2=$(date +%s.%N)
echo "base: $n_base paths ($nfiles bulk files + busybox), tarball $(awk -v b="$(stat -c %s "$base_tar")" \
    'BEGIN{printf "%.1f", b/1048576}') MB; generated + committed in $(secs "$t_gen0" "$t_gen1")s," \
    "built + loaded by imgbuild in $(secs "$t_gen1" "$t_gen2")s; $base_ref"

# The application repo: the measured Dockerfile (imgbuild reads the commit, buildah the tree).
app=$work/app
mkdir -p "$app"
write_dockerfile() { # write_dockerfile FILE FROM-REF
    cat >"$1" <<DF
FROM $2
RUN for i in 1 2 3 4 5 6 7 8 9 10; do echo \$i > /tmp/f\$i; done
RUN for i in 1 2 3 4 5 6 7 8 9 10; do echo \$i > /tmp/g\$i; done
DF
}
write_dockerfile "$app/Dockerfile" "$base_ref"
(cd "$app" && gitc -c init.defaultBranch=main init -q . && gitc add -A && gitc commit -q -m app)

# ---------------------------------------------------------------- helpers
# timed NAME CMD...: runs CMD, appends its wall seconds to $work/t.NAME, keeps its output in
# $work/log.NAME (the last run's); returns CMD's status (callers decide whether that is fatal).
timed() {
    local name=$1; shift
    local log=$work/log.$name t0 t1 rc=0
    t0=$(date +%s.%N)
    "$@" >"$log" 2>&1 || rc=$?
    t1=$(date +%s.%N)
    if ((rc)); then return "$rc"; fi
    awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f\n", b-a}' >>"$work/t.$name"
}

# ---------------------------------------------------------------- 2a. imgbuild
out_ib=$work/ib-out.tar
ib_build() {
    rm -f "$out_ib"
    if ! (cd "$app" && timed ib "$ib" build --no-cache -o "$out_ib" --progress plain --cache-dir "$ibcache"); then
        echo "run.sh: imgbuild build failed: $ib build --no-cache -o $out_ib --progress plain --cache-dir $ibcache" >&2
        tail -n 40 "$work/log.ib" >&2
        exit 1
    fi
    # Per-step seconds of the two RUN lines ("#N [2/3] RUN for i ... BUILT 1.23s  ...").
    local steps
    steps=$(grep -oE '^#[0-9]+ .*RUN .* BUILT [0-9.]+s' "$work/log.ib" | grep -oE 'BUILT [0-9.]+s' |
        grep -oE '[0-9.]+' || true)
    if [[ $(wc -l <<<"$steps") != 2 ]]; then
        echo "run.sh: expected two 'RUN ... BUILT <s>' lines in imgbuild's output:" >&2
        cat "$work/log.ib" >&2
        exit 1
    fi
    # Everything outside the step lines: start-up, store reads, writing OUT.tar, removing the temp rootfs.
    grep -oE '^#[0-9]+ .* [A-Z]+ [0-9.]+s' "$work/log.ib" | grep -oE ' [0-9.]+s$' | tr -d ' s' |
        awk -v w="$(last ib)" '{ s += $1 } END { printf "%.3f\n", w - s }' >>"$work/t.ib_other"
    cp "$work/log.ib" "$work/log.ib.$(wc -l <"$work/t.ib")"
    sed -n 1p <<<"$steps" >>"$work/t.ib_run1"
    sed -n 2p <<<"$steps" >>"$work/t.ib_run2"
    awk -v a="$(sed -n 1p <<<"$steps")" -v b="$(sed -n 2p <<<"$steps")" 'BEGIN{printf "%.3f\n", a-b}' \
        >>"$work/t.ib_unpack"
}

# ---------------------------------------------------------------- 2b. buildah
# Self-contained configuration as in bench/build.sh: vfs storage, chroot isolation, an
# accept-anything signature policy and no registries (the base comes from the OCI archive).
printf '[storage]\ndriver = "vfs"\nrunroot = "%s"\ngraphroot = "%s"\n' "$work/brun" "$work/broot" >"$work/storage.conf"
printf 'unqualified-search-registries = []\n' >"$work/registries.conf"
printf '{"default":[{"type":"insecureAcceptAnything"}]}\n' >"$work/policy.json"
export CONTAINERS_STORAGE_CONF=$work/storage.conf CONTAINERS_REGISTRIES_CONF=$work/registries.conf
export BUILDAH_ISOLATION=chroot STORAGE_DRIVER=vfs
bh=(buildah --root "$work/broot" --runroot "$work/brun" --storage-driver vfs)
bh_ok=1 bh_err=""
bh_base=localhost/bulkbase:bench
t_bp0=$(date +%s.%N)
if bh_id=$("${bh[@]}" pull -q --signature-policy "$work/policy.json" "oci-archive:$base_tar" 2>"$work/log.bh_pull") &&
    "${bh[@]}" tag "$bh_id" "$bh_base" >>"$work/log.bh_pull" 2>&1; then
    t_bp1=$(date +%s.%N)
    echo "buildah: base pulled into vfs storage and tagged $bh_base in $(secs "$t_bp0" "$t_bp1")s (untimed setup)"
else
    bh_ok=0 bh_err="buildah pull oci-archive:$base_tar failed: $(tail -n 5 "$work/log.bh_pull")"
fi
bctx=$work/bctx
mkdir -p "$bctx"
write_dockerfile "$bctx/Dockerfile" "$bh_base"
bh_build() {
    ((bh_ok)) || return 0
    if ! (cd "$bctx" && timed bh "${bh[@]}" bud --isolation chroot --pull-never \
        --signature-policy "$work/policy.json" -f Dockerfile -t bench:run .); then
        bh_ok=0
        bh_err="buildah bud failed: $(grep -vE '^(STEP|COMMIT|Getting|Copying|Writing|Storing)' "$work/log.bh" | tail -n 8)"
        echo "run.sh: buildah bud --isolation chroot --storage-driver vfs failed; its output:" >&2
        tail -n 20 "$work/log.bh" >&2
        return 0
    fi
    # Untimed: drop the result so every run starts from the same storage state.
    "${bh[@]}" rmi -f bench:run >/dev/null 2>&1 || true
    "${bh[@]}" rm --all >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------- 3. runs, interleaved
echo "runs: $runs per tool, interleaved; $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for ((i = 1; i <= runs; i++)); do
    ib_build
    line=$(printf 'run %d: imgbuild %6.3fs (RUN 1 %ss, RUN 2 %ss)' "$i" "$(last ib)" "$(last ib_run1)" "$(last ib_run2)")
    bh_build
    if ((bh_ok)); then line+=$(printf ' | buildah bud %6.3fs' "$(last bh)"); else line+=" | buildah: failed"; fi
    echo "$line"
done

# Sanity (not timed): the two RUN layers of imgbuild's last image hold tmp/f1..f10 and tmp/g1..g10.
ib_files=$(python3 - "$out_ib" <<'PY'
import gzip, io, json, sys, tarfile
t = tarfile.open(sys.argv[1])
blob = lambda d: t.extractfile("blobs/sha256/" + d.split(":", 1)[1]).read()
idx = json.loads(t.extractfile("index.json").read())
man = json.loads(blob(idx["manifests"][0]["digest"]))
got = []
for layer in man["layers"][-2:]:
    data = blob(layer["digest"])
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    got.append({m.name.lstrip("./") for m in tarfile.open(fileobj=io.BytesIO(data)) if m.isfile()})
ok = all(f"tmp/{p}{i}" in g for p, g in zip("fg", got) for i in range(1, 11))
print("checked: RUN layers hold tmp/f1..10, tmp/g1..10" if ok else f"UNEXPECTED RUN layers: {got}")
PY
) || ib_files="not checked (could not read it)"

# ---------------------------------------------------------------- report
best_ib=$(awk -v b="$(best ib)" '$1 == b { print NR; exit }' "$work/t.ib")
echo
echo "== RUN benchmark: base of $n_base paths, 2 RUNs touching 10 files each, best of $runs, $(nproc) cores" \
    "(load average now: $(cut -d' ' -f1-3 /proc/loadavg); other work on the machine inflates single runs)"
echo "   imgbuild: $ib (build --no-cache, base loaded in the store; output tarball $ib_files)"
echo "   buildah:  $(buildah --version | head -n1) (bud, vfs, chroot isolation, base in its storage; bud only)"
echo "   imgbuild's fastest run (#$best_ib), --progress plain:"
grep -E '^#[0-9]+ ' "$work/log.ib.$best_ib" | sed 's/^/   | /'
printf '%-52s %8s %9s   %s\n' "measure" "best s" "ratio" "runs (s)"
row() { printf '%-52s %8s %9s   %s\n' "$1" "$(best "$2")" "$3" "$(allruns "$2")"; }
r_total=$(ratio "$(best ib)" "$(best bh)")
((bh_ok)) || r_total=n/a
row "imgbuild build, whole (incl. writing OUT.tar)" ib "$r_total"
row "  RUN 1 step (base rootfs unpack + run + snapshot)" ib_run1 ""
row "  RUN 2 step (run + snapshot only)" ib_run2 ""
row "  RUN 1 - RUN 2 (~ materialising the base rootfs)" ib_unpack ""
row "  outside the steps (start, OUT.tar, temp cleanup)" ib_other ""
if ((bh_ok)); then
    row "buildah bud (chroot, vfs)" bh ""
    echo "   (ratio = imgbuild whole build / buildah bud; buildah's time includes its full vfs copy of the"
    echo "    base for the working container and the commit's diff, imgbuild's the base unpack, both RUNs"
    echo "    and the output tarball)"
    printf 'ratio imgbuild/buildah (whole build / bud): %s\n' "$r_total"
else
    printf '%-52s %8s %9s   %s\n' "buildah bud (chroot, vfs)" "failed" "n/a" "-"
    echo "buildah could not build here; its error:"
    while IFS= read -r l; do echo "   | $l"; done <<<"$bh_err"
fi
