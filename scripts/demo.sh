#!/usr/bin/env bash
# make demo: build the bundled example (examples/monolith) from this repo's
# HEAD commit, then show what came out: tag, digest, and skopeo's view.
set -euo pipefail
IMGBUILD=$(realpath "${1:-build/imgbuild}")
cd "$(dirname "$0")/.."
if ! git rev-parse --verify -q HEAD >/dev/null; then
    echo "demo: this checkout has no commit to build from" >&2
    exit 1
fi
out=build/monolith.tar
sha=$(git rev-parse HEAD)
echo "== imgbuild examples/monolith --tag $sha -o $out"
"$IMGBUILD" examples/monolith --tag "$sha" -o "$out" --progress plain
echo
echo "== imgbuild inspect $out"
"$IMGBUILD" inspect "$out"
if command -v skopeo >/dev/null 2>&1; then
    echo
    echo "== skopeo inspect oci-archive:$out (digest as a standard tool sees it)"
    skopeo inspect oci-archive:"$out" | grep -E '"Digest"|"Architecture"|"Os"' || true
fi
echo
echo "tag:    sha-$sha"
echo "digest: $(tar -xOf "$out" index.json | python3 -c 'import json,sys; print(json.load(sys.stdin)["manifests"][0]["digest"])' 2>/dev/null || "$IMGBUILD" inspect --json "$out" | grep -m1 '"digest"')"
