#!/usr/bin/env bash
# Prints the path of a tarball of a minimal Debian 12 root filesystem with
# python3 and pip, for tests and benchmarks of the Python dependency flow.
# Built once with debootstrap (about 2 minutes) from the Debian mirror this
# machine's apt already uses, and cached outside the repository:
#   ${IMGBUILD_FIXTURES:-/var/cache/imgbuild-fixtures}/debian-py.tar
set -euo pipefail
FIX=${IMGBUILD_FIXTURES:-/var/cache/imgbuild-fixtures}
out="$FIX/debian-py.tar"
if [ -s "$out" ]; then echo "$out"; exit 0; fi
mkdir -p "$FIX"
exec 9>"$FIX/.lock"
flock 9 # parallel tests: one builds, the others wait and reuse
if [ -s "$out" ]; then echo "$out"; exit 0; fi
command -v debootstrap >/dev/null || { echo "python-base: debootstrap is missing (scripts/install-deps.sh test)" >&2; exit 1; }
mirror=""
for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
    [ -f "$f" ] || continue
    mirror=$(awk '/^URIs:/ {print $2; exit} /^deb / && $0 !~ /security/ {print $2; exit}' "$f")
    [ -n "$mirror" ] && break
done
root="$FIX/debian-py.root"
rm -rf "$root"
if [ -d "$FIX/debian-py.tmp/usr/bin" ] && [ -x "$FIX/debian-py.tmp/usr/bin/python3" ]; then
    mv "$FIX/debian-py.tmp" "$root" # a finished earlier debootstrap
else
    debootstrap --variant=minbase --include=python3-minimal,python3-pip bookworm "$root" ${mirror:+"$mirror"} >"$FIX/debootstrap.log" 2>&1 ||
        { echo "python-base: debootstrap failed, see $FIX/debootstrap.log" >&2; tail -n 5 "$FIX/debootstrap.log" >&2; exit 1; }
fi
# Smaller image, same Python: no package caches, docs or translations.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/locale/* "$root"/usr/share/info/*
# /dev is a tmpfs in the sandbox; the nodes debootstrap made are not image content.
tar --numeric-owner --xattrs --exclude="./dev/*" -C "$root" -cf "$out.tmp" .
mv "$out.tmp" "$out"
rm -rf "$root"
echo "$out"
