#!/usr/bin/env bash
# Side-by-side build benchmark: imgbuild against buildah on the same generated repository.
#
# Generates (deterministically, seeded, no network) a git repo of ~BENCH_FILES files / ~BENCH_MB MB:
# python-like sources of various sizes, JSON/CSV data, a few incompressible binaries, nested dirs,
# a .dockerignore excluding a directory, and a COPY-only Dockerfile (FROM scratch). Then times:
#   imgbuild cold  fresh --cache-dir          imgbuild --tag HEAD -o OUT.tar --progress plain
#   imgbuild warm  same cache dir, again
#   buildah cold   fresh storage root         buildah bud + buildah push oci-archive:OUT.tar
#   buildah warm   same root, bud --layers    (primed by one cold --layers build) + push
# Best of BENCH_RUNS runs each. The tarball is imgbuild's output, so buildah's total includes the
# push to an OCI archive; bud-only is reported too. Prints a table and imgbuild/buildah ratios;
# goals (printed, never asserted): cold <= 1/3 of buildah, imgbuild peak RSS < 64 MB.
# Then runs bench/compress.sh if present.
#
# usage: bash bench/build.sh [PATH/TO/imgbuild]       (default: build/imgbuild under the repo root)
#   env: BENCH_FILES (default 5000), BENCH_MB (default 40), BENCH_RUNS (default 3),
#        BENCH_SEED (default 1), BENCH_TMP (default /tmp), BENCH_SKIP_COMPRESS=1 skips compress.sh,
#        BENCH_KEEP=1 keeps the temp dir (repo, logs, tarballs) for inspection.
# Exits non-zero only when a tool fails; timings are only printed.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
ib=${1:-$root/build/imgbuild}
[[ -x $ib ]] || { echo "build.sh: imgbuild not found or not executable: $ib (run make build)" >&2; exit 2; }
ib=$(realpath "$ib")

nfiles=${BENCH_FILES:-5000}
mb=${BENCH_MB:-40}
runs=${BENCH_RUNS:-3}
seed=${BENCH_SEED:-1}

for t in git python3 openssl buildah awk sha256sum; do
    command -v "$t" >/dev/null || { echo "build.sh: $t is required (bash scripts/install-deps.sh test)" >&2; exit 2; }
done
# GNU time for peak RSS ("Maximum resident set size"); it is in install-deps.sh's TEST_PKGS.
if [[ ! -x /usr/bin/time ]]; then
    echo "build.sh: installing GNU time" >&2
    sudo=""; [[ $(id -u) == 0 ]] || sudo="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends time >/dev/null ||
        echo "build.sh: could not install GNU time; peak RSS will be n/a" >&2
fi
gtime=()
[[ -x /usr/bin/time ]] && gtime=(/usr/bin/time -v -o)

# shellcheck source=bench/lib.sh
. "$root/bench/lib.sh"
btmp=${BENCH_TMP:-/tmp}
bench_release_imgbuild build.sh
work=$(mktemp -d "${BENCH_TMP:-/tmp}/imgbuild-bench.XXXXXX")
# shellcheck disable=SC2317  # invoked by the trap
cleanup() { if [[ ${BENCH_KEEP:-0} == 1 ]]; then echo "build.sh: kept $work" >&2; else rm -rf "$work"; fi; }
trap cleanup EXIT
trap 'exit 130' INT TERM
repo=$work/repo
mkdir -p "$repo"

# ---------------------------------------------------------------- 1. generate the repository
gen_start=$(date +%s.%N)
python3 - "$repo" "$nfiles" "$mb" "$seed" >"$work/binaries.txt" <<'PY'
import json, os, random, sys

dest, nfiles, mb, seed = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
total = int(mb * 1024 * 1024)

words = ("user account order item price total count value data config cache session token request "
         "response handler client server worker queue task job event message payload record batch "
         "index key path name status error result state context manager service model view schema "
         "field table query filter limit offset page size buffer stream reader writer parser node").split()
mods = "os sys json re time logging typing dataclasses itertools functools collections pathlib".split()

def ident():
    return "_".join(rng.choice(words) for _ in range(rng.randint(1, 3)))

def line():
    ind = "    " * rng.choice((0, 1, 1, 2, 2, 2, 3))
    k = rng.randrange(12)
    if k == 0: return f"def {ident()}({ident()}, {ident()}=None):"
    if k == 1: return f"class {ident().title().replace('_', '')}(Base{rng.randint(1, 40)}):"
    if k == 2: return f"{ind}return {ident()}.{ident()}({ident()})"
    if k == 3: return f"{ind}# {' '.join(rng.choice(words) for _ in range(rng.randint(3, 12)))}"
    if k == 4: return f"{'from ' + rng.choice(mods) + ' ' if rng.random() < .5 else ''}import {rng.choice(mods)}"
    if k == 5: return f"{ind}if {ident()} is not None and len({ident()}) > {rng.randint(0, 999)}:"
    if k == 6: return f"{ind}for {ident()} in self.{ident()}:"
    if k == 7: return f'{ind}raise ValueError("{ident()} {rng.randint(0, 99999)} invalid")'
    if k == 8: return ""
    return f"{ind}{ident()} = self.{ident()}.get({ident()!r}, {rng.randint(0, 10**6)})"

pool = [line() for _ in range(20000)]

def text_of(size):
    out, n = [], 0
    while n < size:
        chunk = rng.choices(pool, k=64)
        out.extend(chunk)
        n += sum(len(c) + 1 for c in chunk)
    return "\n".join(out)[:size - 1] + "\n"

def json_of(size):
    recs, n = [], 2
    while n < size:
        r = {"id": rng.randint(1, 10**9), "name": ident(), "active": rng.random() < .5,
             "score": round(rng.uniform(0, 100), 3), "tags": [rng.choice(words) for _ in range(rng.randint(0, 5))]}
        s = json.dumps(r)
        recs.append(s)
        n += len(s) + 4
    return "[\n  " + ",\n  ".join(recs) + "\n]\n"

def csv_of(size):
    rows, n = ["id,name,qty,price,ts"], 0
    while n < size:
        r = f"{rng.randint(1, 10**7)},{ident()},{rng.randint(0, 500)},{rng.uniform(0, 999):.2f},{rng.randint(1600000000, 1800000000)}"
        rows.append(r)
        n += len(r) + 1
    return "\n".join(rows) + "\n"

# Directory tree: src/core (copied twice by the Dockerfile), more packages, tests, data, docs, assets,
# and artifacts/ (excluded by .dockerignore).
dirs = ["src/core", "src/core/api", "src/core/db", "tests", "data", "docs"]
for _ in range(max(nfiles // 15, 8)):
    parent = rng.choice(dirs[:3] + [d for d in dirs if d.startswith(("src", "tests"))])
    if parent.count("/") >= 6:
        parent = rng.choice(("src", "tests", "src/core"))
    dirs.append(f"{parent}/{ident()[:20]}_{len(dirs)}")
src_dirs = [d for d in dirs if d.startswith(("src", "tests"))]
data_dirs = ["data", "data/fixtures", "data/exports"] + [d for d in dirs if d.startswith("data")]

nbin = 6
nexcl = max(2, nfiles * 3 // 100)
njson = nfiles * 8 // 100
ncsv = nfiles * 5 // 100
ntext = max(1, nfiles - nbin - nexcl - njson - ncsv - 3)

bin_bytes = int(total * 0.20)
excl_bytes = int(total * 0.03)
data_bytes = int(total * 0.12)
text_bytes = max(total - bin_bytes - excl_bytes - data_bytes, ntext * 64)

def split(budget, n, sigma):
    w = [rng.lognormvariate(0, sigma) for _ in range(n)]
    s = sum(w)
    return [max(16, int(budget * x / s)) for x in w]

files = []  # (path, content, mode)
for i, sz in enumerate(split(text_bytes, ntext, 1.3)):
    d = rng.choice(src_dirs)
    r = rng.random()
    ext = ".py" if r < 0.85 else ".md" if r < 0.92 else ".yaml" if r < 0.97 else ".txt"
    files.append((f"{d}/{ident()[:24]}_{i}{ext}", text_of(sz), 0o644))
for i, sz in enumerate(split(data_bytes * 0.6, njson, 1.0)):
    files.append((f"{rng.choice(data_dirs)}/{ident()[:20]}_{i}.json", json_of(sz), 0o644))
for i, sz in enumerate(split(data_bytes * 0.4, ncsv, 1.0)):
    files.append((f"{rng.choice(data_dirs)}/{ident()[:20]}_{i}.csv", csv_of(sz), 0o644))
for i, sz in enumerate(split(excl_bytes, nexcl, 1.0)):
    files.append((f"artifacts/{'cache' if i % 2 else 'wheels'}/{ident()[:20]}_{i}.pyc", text_of(sz), 0o644))
files.append(("bin/run", "#!/bin/sh\nexec python3 -m core.main \"$@\"\n", 0o755))
files.append(("src/core/__init__.py", "VERSION = '1.0.0'\n", 0o644))
files.append(("README.md", "# bench repo\nGenerated by bench/build.sh.\n", 0o644))

for path, content, mode in files:
    p = os.path.join(dest, path)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "w") as f:
        f.write(content)
    os.chmod(p, mode)

# Incompressible binaries: the shell writes them with openssl (AES-CTR keystream of a fixed key).
for i, frac in enumerate((0.30, 0.22, 0.16, 0.12, 0.10, 0.10)[:nbin]):
    print(f"assets/{['model.bin', 'index.db', 'fonts.pak', 'sprites.atlas', 'blob.dat', 'geo.idx'][i]} "
          f"{int(bin_bytes * frac)} bench-seed-{seed}-{i}")

with open(os.path.join(dest, ".dockerignore"), "w") as f:
    f.write(".git\nartifacts\n**/*.tmp\n")
with open(os.path.join(dest, "Dockerfile"), "w") as f:
    f.write("FROM scratch\n"
            "COPY . /app\n"
            "COPY src/core /opt/core\n"
            "ENV APP_ENV=bench PYTHONPATH=/app/src:/opt\n"
            "WORKDIR /app\n"
            'CMD ["/app/bin/run", "--serve"]\n')
PY
while read -r path size pass; do
    mkdir -p "$repo/$(dirname "$path")"
    # head closes the pipe early: openssl's EPIPE is expected, so pipefail is off for this line.
    (set +o pipefail; openssl enc -aes-128-ctr -pass "pass:$pass" -nosalt -pbkdf2 </dev/zero 2>/dev/null |
        head -c "$size" >"$repo/$path")
done <"$work/binaries.txt"
(
    cd "$repo"
    export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.invalid GIT_AUTHOR_DATE="2024-01-01T00:00:00Z"
    export GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.invalid GIT_COMMITTER_DATE="2024-01-01T00:00:00Z"
    git -c init.defaultBranch=main init -q .
    git add -A
    git -c commit.gpgsign=false -c core.hooksPath=/dev/null commit -q -m "bench repo (seed $seed)"
)
gen_end=$(date +%s.%N)
n_git=$(git -C "$repo" ls-files | wc -l)
sz_git=$(du -sb --exclude=.git "$repo" | cut -f1)
n_excl=$(git -C "$repo" ls-files artifacts | wc -l)
commit=$(git -C "$repo" rev-parse HEAD)
printf 'repo: %s files, %.1f MB (%s under excluded artifacts/), commit %s, generated in %.1fs\n' \
    "$n_git" "$(awk -v b="$sz_git" 'BEGIN{print b/1048576}')" "$n_excl" "${commit:0:12}" \
    "$(awk -v a="$gen_start" -v b="$gen_end" 'BEGIN{print b-a}')"
if grep -qa __asan_init "$ib"; then
    echo "note: $ib is an AddressSanitizer build; its timings and RSS are not representative" >&2
fi

# ---------------------------------------------------------------- helpers
# timed NAME CMD...: runs CMD (under GNU time when available), appends its wall seconds to
# $work/t.NAME and its peak RSS (kB) to $work/rss.NAME; on failure prints the log and exits 1.
timed() {
    local name=$1; shift
    local log=$work/log.$name tv=$work/tv.$name t0 t1 rc=0
    t0=$(date +%s.%N)
    if ((${#gtime[@]})); then "${gtime[@]}" "$tv" "$@" >"$log" 2>&1 || rc=$?; else "$@" >"$log" 2>&1 || rc=$?; fi
    t1=$(date +%s.%N)
    if ((rc)); then
        echo "build.sh: '$name' failed (exit $rc): $*" >&2
        tail -n 40 "$log" >&2
        if [[ -f $tv ]]; then grep -E 'Command being timed|Exit status' "$tv" >&2 || true; fi
        exit 1
    fi
    awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f\n", b-a}' >>"$work/t.$name"
    if [[ -f $tv ]]; then
        awk -F': *' '/Maximum resident set size/{print $2}' "$tv" >>"$work/rss.$name"
    fi
}
maxrss_mb() { [[ -s $work/rss.$1 ]] && sort -g "$work/rss.$1" | tail -n1 | awk '{printf "%.1f", $1/1024}' || echo n/a; }
sum_runs() { # sum_runs OUT A B: per-run A+B into t.OUT
    paste -d' ' "$work/t.$2" "$work/t.$3" | awk '{printf "%.3f\n", $1+$2}' >"$work/t.$1"
}

# ---------------------------------------------------------------- 2a. imgbuild
out_ib=$work/ib-out.tar
for ((i = 1; i <= runs; i++)); do
    rm -rf "$work/ibcache" "$out_ib"
    (cd "$repo" && timed ib_cold "$ib" --tag HEAD -o "$out_ib" --progress plain --cache-dir "$work/ibcache")
    echo "imgbuild cold run $i: $(tail -n1 "$work/t.ib_cold")s"
done
sum_cold=$(sha256sum <"$out_ib" | cut -c1-64)
sz_ib=$(stat -c %s "$out_ib")
for ((i = 1; i <= runs; i++)); do
    rm -f "$out_ib"
    (cd "$repo" && timed ib_warm "$ib" --tag HEAD -o "$out_ib" --progress plain --cache-dir "$work/ibcache")
    echo "imgbuild warm run $i: $(tail -n1 "$work/t.ib_warm")s"
done
sum_warm=$(sha256sum <"$out_ib" | cut -c1-64)

# ---------------------------------------------------------------- 2b. buildah
# Self-contained configuration, independent of /etc/containers and ~/.config/containers:
# vfs storage (no overlay/fuse needed), chroot isolation (no runc/namespaces for COPY-only builds),
# an accept-anything signature policy and an empty registries list (FROM scratch pulls nothing).
printf '[storage]\ndriver = "vfs"\nrunroot = "%s"\ngraphroot = "%s"\n' "$work/brun" "$work/broot" >"$work/storage.conf"
printf 'unqualified-search-registries = []\n' >"$work/registries.conf"
printf '{"default":[{"type":"insecureAcceptAnything"}]}\n' >"$work/policy.json"
export CONTAINERS_STORAGE_CONF=$work/storage.conf CONTAINERS_REGISTRIES_CONF=$work/registries.conf
export BUILDAH_ISOLATION=chroot STORAGE_DRIVER=vfs
bh=(buildah --root "$work/broot" --runroot "$work/brun" --storage-driver vfs)
out_bh=$work/b.tar
bud() { (cd "$repo" && timed "$1" "${bh[@]}" bud "${@:2}" --isolation chroot --signature-policy "$work/policy.json" \
    -f Dockerfile -t bench:1 .); }
push() { rm -f "$out_bh"; timed "$1" "${bh[@]}" push --signature-policy "$work/policy.json" bench:1 "oci-archive:$out_bh"; }
wipe() { rm -rf "$work/broot" "$work/brun"; }

for ((i = 1; i <= runs; i++)); do
    wipe
    bud bh_cold_bud
    push bh_cold_push
    echo "buildah cold run $i: bud $(tail -n1 "$work/t.bh_cold_bud")s + push $(tail -n1 "$work/t.bh_cold_push")s"
done
sum_runs bh_cold bh_cold_bud bh_cold_push
sz_bh=$(stat -c %s "$out_bh")
# Warm: prime a fresh root with one --layers build (so intermediate layers are cached), then rebuild.
wipe
bud bh_prime_bud --layers
push bh_prime_push
echo "buildah cold --layers (priming): bud $(tail -n1 "$work/t.bh_prime_bud")s + push $(tail -n1 "$work/t.bh_prime_push")s"
sum_runs bh_prime bh_prime_bud bh_prime_push
for ((i = 1; i <= runs; i++)); do
    bud bh_warm_bud --layers
    push bh_warm_push
    echo "buildah warm run $i: bud $(tail -n1 "$work/t.bh_warm_bud")s + push $(tail -n1 "$work/t.bh_warm_push")s"
done
sum_runs bh_warm bh_warm_bud bh_warm_push

# ---------------------------------------------------------------- report
r_cold=$(ratio "$(best ib_cold)" "$(best bh_cold)")
r_cold_bud=$(ratio "$(best ib_cold)" "$(best bh_cold_bud)")
r_warm=$(ratio "$(best ib_warm)" "$(best bh_warm)")
r_warm_bud=$(ratio "$(best ib_warm)" "$(best bh_warm_bud)")
echo
echo "== build benchmark: $n_git files, $(awk -v b="$sz_git" 'BEGIN{printf "%.1f", b/1048576}') MB, best of $runs, $(nproc) cores"
echo "   imgbuild: $ib"
echo "   buildah:  $(buildah --version | head -n1) (vfs, chroot isolation)"
printf '%-36s %8s %10s   %s\n' "step" "best s" "peak MB" "runs (s)"
row() { printf '%-36s %8s %10s   %s\n' "$1" "$(best "$2")" "${3:-}" "$(allruns "$2")"; }
row "imgbuild cold"                       ib_cold "$(maxrss_mb ib_cold)"
row "imgbuild warm"                       ib_warm "$(maxrss_mb ib_warm)"
row "buildah cold (bud + push)"           bh_cold
row "  bud only"                          bh_cold_bud "$(maxrss_mb bh_cold_bud)"
row "  push oci-archive only"             bh_cold_push "$(maxrss_mb bh_cold_push)"
row "buildah cold --layers (bud + push)"  bh_prime
row "buildah warm --layers (bud + push)"  bh_warm
row "  bud only"                          bh_warm_bud "$(maxrss_mb bh_warm_bud)"
row "  push oci-archive only"             bh_warm_push "$(maxrss_mb bh_warm_push)"
echo
printf 'ratio imgbuild/buildah cold: %s (vs bud only: %s)   goal <= 0.333\n' "$r_cold" "$r_cold_bud"
printf 'ratio imgbuild/buildah warm: %s (vs bud only: %s)\n' "$r_warm" "$r_warm_bud"
printf 'imgbuild peak RSS: %s MB (max over all runs)   goal < 64 MB\n' \
    "$(maxrss_mb ib_cold | awk -v w="$(maxrss_mb ib_warm)" '{print ($1+0 > w+0) ? $1 : w}')"
printf 'tarballs: imgbuild %.1f MB, buildah %.1f MB; imgbuild cold/warm outputs identical: %s\n' \
    "$(awk -v b="$sz_ib" 'BEGIN{print b/1048576}')" "$(awk -v b="$sz_bh" 'BEGIN{print b/1048576}')" \
    "$([[ $sum_cold == "$sum_warm" ]] && echo yes || echo "NO ($sum_cold vs $sum_warm)")"

# ---------------------------------------------------------------- compression benchmark
rc=0
if [[ -f $here/compress.sh && ${BENCH_SKIP_COMPRESS:-0} != 1 ]]; then
    echo
    echo "== bench/compress.sh"
    # compress.sh takes a build dir or the ib-compress binary (not imgbuild): pass imgbuild's dir
    # when ib-compress was built there, else let it find build/ib-compress itself.
    ibdir=$(dirname "$ib")
    if [[ -x $ibdir/ib-compress ]]; then bash "$here/compress.sh" "$ibdir" || rc=$?
    else bash "$here/compress.sh" || rc=$?; fi
    ((rc == 0)) || echo "build.sh: bench/compress.sh failed (exit $rc)" >&2
fi
exit "$rc"
