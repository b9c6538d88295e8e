#!/usr/bin/env bash
# Idempotent: installs only what is missing, so `make` on a ready machine costs one dpkg query.
set -euo pipefail
BUILD_PKGS="build-essential cmake pkg-config libarchive-dev libssl-dev libcurl4-openssl-dev libjansson-dev libzstd-dev libgit2-dev zlib1g-dev"
TEST_PKGS="git skopeo umoci buildah docker-registry git-filter-repo busybox-static uidmap openssl pigz zstd apache2-utils curl python3 clang time debootstrap"
want="$BUILD_PKGS"
case "${1:-build}" in
  test|all) want="$BUILD_PKGS $TEST_PKGS" ;;
esac
missing=""
for p in $want; do
  st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [ "$st" = "install ok installed" ] || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "install-deps: installing:$missing" >&2
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
