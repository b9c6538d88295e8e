#!/usr/bin/env bash
# Multi-platform base images from a real Distribution: an OCI index (arm/v5 listed
# before arm/v7, arm64 carrying variant v8 as Docker Hub's do, an attestation entry)
# and a Docker manifest list; --platform normalised the way containerd does it
# (linux/arm = arm/v7, aarch64 = arm64 = arm64/v8); a base pinned by its index digest
# (Renovate's FROM repo:tag@sha256:<index>) builds again without the registry.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/registry.sh"

registry_start P plain || exit 1

# One tiny image per platform, each saying which one it is in /arch.txt.
R=$TMP/plat
new_repo "$R"
for p in arm-v5 arm-v7 arm64 amd64; do
    echo "$p" >"$R/$p.txt"
    printf 'FROM scratch\nCOPY %s.txt /arch.txt\n' "$p" >"$R/Dockerfile.$p"
done
commit_all "$R" init
declare -A PLAT=([arm-v5]=linux/arm/v5 [arm-v7]=linux/arm/v7 [arm64]=linux/arm64 [amd64]=linux/amd64)
declare -A DG SZ
for p in arm-v5 arm-v7 arm64 amd64; do
    (cd "$R" && ib -f "Dockerfile.$p" --platform "${PLAT[$p]}" -o "$TMP/$p.tar" -q >/dev/null) || exit 1
    ib push --plain-http -q "$TMP/$p.tar" "$P_HOST/multi/base:$p" >/dev/null || exit 1
    DG[$p]=$(digest_of "$TMP/$p.tar")
    SZ[$p]=$(curl -sS -H "Accept: application/vnd.oci.image.manifest.v1+json" "http://$P_HOST/v2/multi/base/manifests/${DG[$p]}" | wc -c)
done

# put_list TAG MEDIATYPE CHILD_MEDIATYPE: an index of the four (+ an attestation) under TAG; prints its digest.
put_list() {
    python3 - "$1" "$2" "$3" "${DG[arm-v5]}" "${SZ[arm-v5]}" "${DG[arm-v7]}" "${SZ[arm-v7]}" \
        "${DG[arm64]}" "${SZ[arm64]}" "${DG[amd64]}" "${SZ[amd64]}" >"$TMP/list.json" <<'EOF' || return 1
import json, sys
tag, mt, cmt = sys.argv[1:4]
d = sys.argv[4:]
plats = [{"os": "linux", "architecture": "arm", "variant": "v5"},
         {"os": "linux", "architecture": "arm", "variant": "v7"},
         {"os": "linux", "architecture": "arm64", "variant": "v8"},
         {"os": "linux", "architecture": "amd64"}]
ms = [{"mediaType": cmt, "digest": d[2 * i], "size": int(d[2 * i + 1]), "platform": p} for i, p in enumerate(plats)]
ms.append({"mediaType": cmt, "digest": d[6], "size": int(d[7]), "platform": {"os": "unknown", "architecture": "unknown"},
           "annotations": {"vnd.docker.reference.type": "attestation-manifest"}})
sys.stdout.write(json.dumps({"schemaVersion": 2, "mediaType": mt, "manifests": ms}, separators=(",", ":")))
EOF
    curl -sSf -X PUT -H "Content-Type: $2" --data-binary @"$TMP/list.json" "http://$P_HOST/v2/multi/base/manifests/$1" >/dev/null || return 1
    echo "sha256:$(sha256sum <"$TMP/list.json" | cut -c1-64)"
}
OCI_IDX=$(put_list multi application/vnd.oci.image.index.v1+json application/vnd.oci.image.manifest.v1+json) || exit 1

pulled() { # PLATFORM-ARGS...: the digest imgbuild pull resolves multi/base:multi to
    ib pull --plain-http -q "$@" "$P_HOST/multi/base:multi"
}

test_expect_success 'pull picks by normalised platform: arm = arm/v7 (not the v5 listed first), aarch64 = arm64/v8' '
    export IMGBUILD_CACHE="$TMP/cache-pull" &&
    test "$(pulled)" = "${DG[amd64]}" &&
    test "$(pulled --platform linux/arm)" = "${DG[arm-v7]}" &&
    test "$(pulled --platform linux/arm/v7)" = "${DG[arm-v7]}" &&
    test "$(pulled --platform linux/armhf)" = "${DG[arm-v7]}" &&
    test "$(pulled --platform linux/arm/v5)" = "${DG[arm-v5]}" &&
    test "$(pulled --platform linux/arm/v6)" = "${DG[arm-v5]}" &&
    test "$(pulled --platform linux/arm64)" = "${DG[arm64]}" &&
    test "$(pulled --platform linux/arm64/v8)" = "${DG[arm64]}" &&
    test "$(pulled --platform linux/aarch64)" = "${DG[arm64]}" &&
    test "$(pulled --platform linux/x86_64)" = "${DG[amd64]}"
'

test_expect_success 'a Docker manifest list resolves the same way' '
    export IMGBUILD_CACHE="$TMP/cache-list" &&
    put_list dlist application/vnd.docker.distribution.manifest.list.v2+json \
        application/vnd.oci.image.manifest.v1+json >/dev/null &&
    test "$(ib pull --plain-http -q --platform linux/arm "$P_HOST/multi/base:dlist")" = "${DG[arm-v7]}" &&
    test "$(ib pull --plain-http -q --platform linux/arm64/v8 "$P_HOST/multi/base:dlist")" = "${DG[arm64]}"
'

test_expect_success 'a platform the index lacks names what it has; a malformed --platform is a usage error' '
    export IMGBUILD_CACHE="$TMP/cache-bad" &&
    expect_error "no image for platform linux/riscv64 .*it has: linux/arm/v5, linux/arm/v7, linux/arm64, linux/amd64\)" \
        pull --plain-http --platform linux/riscv64 "$P_HOST/multi/base:multi" &&
    for bad in arm64 linux/ linux/arm/v7/x; do
        rc=0 && ib pull --plain-http --platform "$bad" "$P_HOST/multi/base:multi" 2>/dev/null || rc=$? &&
        test "$rc" = 2 && grep -q "^imgbuild: error: --platform $bad: expected OS/ARCH\[/VARIANT\]" "$TMP/last.err" || exit 1
        rc=0 && (cd "$R" && ib -f Dockerfile.amd64 --platform "$bad" -o "$TMP/bad.tar") 2>/dev/null || rc=$? &&
        test "$rc" = 2 && test ! -e "$TMP/bad.tar" || exit 1
    done
'

test_expect_success 'pull --platform of a single-platform image for another platform: refused on its config, no layer fetched' '
    export IMGBUILD_CACHE="$TMP/cache-single" &&
    gets=$(registry_count P "^GET /v2/multi/base/blobs/") &&
    expect_error "multi/base:amd64 is linux/amd64, not linux/arm64 \(no index to choose a platform from\)" \
        pull --plain-http --platform linux/arm64 "$P_HOST/multi/base:amd64" &&
    test $(( $(registry_count P "^GET /v2/multi/base/blobs/") - gets )) = 1 &&
    test -z "$(ls -A "$IMGBUILD_CACHE/refs" 2>/dev/null)" &&
    test "$(ib pull --plain-http -q --platform linux/x86_64 "$P_HOST/multi/base:amd64")" = "${DG[amd64]}" &&
    test $(( $(registry_count P "^GET /v2/multi/base/blobs/") - gets )) = 2
'

# FROM through a proxy that is then stopped: the registry is gone for the rebuilds.
tcp_cut_proxy PX "$P_HOST" 999999999 || exit 1
C=$TMP/child
new_repo "$C"
echo one >"$C/app.txt"
printf 'FROM %s/multi/base:multi@%s\nCOPY app.txt /\n' "$PX" "$OCI_IDX" >"$C/Dockerfile"
printf 'FROM %s/multi/base@%s\nCOPY app.txt /\n' "$PX" "$OCI_IDX" >"$C/Dockerfile.notag"
commit_all "$C" one

test_expect_success 'FROM repo:tag@<index digest> builds for --platform linux/arm/v7, and again with the registry gone' '
    export IMGBUILD_CACHE="$TMP/cache-pin" &&
    (cd "$C" && ib --plain-http --platform linux/arm/v7 -o "$TMP/pin1.tar" --progress plain) &&
    grep -q "pulling $PX/multi/base:multi@$OCI_IDX" "$TMP/last.err" &&
    unpack_image "$TMP/pin1.tar" "$TMP/pin1" && test "$(cat "$TMP/pin1/rootfs/arch.txt")" = arm-v7 &&
    skopeo inspect --config oci-archive:"$TMP/pin1.tar" >"$TMP/pin1.cfg" &&
    grep -q "\"architecture\": \"arm\"" "$TMP/pin1.cfg" && grep -q "\"variant\": \"v7\"" "$TMP/pin1.cfg" &&
    (cd "$C" && ib --plain-http --platform linux/arm/v7 -f Dockerfile.notag -o "$TMP/pin1n.tar" --progress plain) &&
    ! grep -q "pulling" "$TMP/last.err" &&
    kill "$PX_PID" && sleep 0.2 &&
    echo two >"$C/app.txt" && commit_all "$C" two &&
    (cd "$C" && ib --plain-http --platform linux/arm/v7 -o "$TMP/pin2.tar" --progress plain) &&
    ! grep -q "pulling" "$TMP/last.err" &&
    (cd "$C" && ib --plain-http --platform linux/arm/v7 -f Dockerfile.notag -o "$TMP/pin2n.tar" --progress plain) &&
    unpack_image "$TMP/pin2n.tar" "$TMP/pin2" && test "$(cat "$TMP/pin2/rootfs/arch.txt")" = arm-v7 &&
    test "$(cat "$TMP/pin2/rootfs/app.txt")" = two
'

test_expect_success 'the same pin for another platform needs that platform'"'"'s image: a clear error offline' '
    export IMGBUILD_CACHE="$TMP/cache-pin" &&
    rc=0 && (cd "$C" && ib --plain-http --platform linux/arm64 -o "$TMP/pin3.tar") || rc=$? &&
    test "$rc" = 1 && tail -n 1 "$TMP/last.err" | grep -q "^imgbuild: error: .*base image $PX/multi/base:multi@$OCI_IDX" &&
    test ! -e "$TMP/pin3.tar"
'

test_done
