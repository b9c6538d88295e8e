#!/usr/bin/env bash
# The RUN snapshot without overlayfs (IMGBUILD_SNAPSHOT=walk, also taken automatically when the overlay
# mount fails): the command runs in a copy of the image and the layer comes from comparing the copy with
# the image. The unpacked result equals the overlayfs build's, file by file (modes, owners, contents,
# links), deletions become whiteouts, hardlinks stay hardlinks, and it works without root too.
. "$(dirname "$0")/lib.sh"

B=$TMP/base
new_repo "$B"
bb_rootfs "$B/rootfs" sh ls cat echo rm mkdir touch id ln chmod mv || exit 1
mkdir -p "$B/rootfs/data/old" "$B/rootfs/keep"
echo old >"$B/rootfs/data/old/f"
echo gone >"$B/rootfs/data/delme"
echo same >"$B/rootfs/keep/unchanged"
ln -s /data/delme "$B/rootfs/data/link"
printf 'FROM scratch\nCOPY rootfs/ /\n' >"$B/Dockerfile"
commit_all "$B" base
(cd "$B" && ib --name local/bb -o "$TMP/bb.tar" -q >/dev/null && ib load "$TMP/bb.tar" >/dev/null) || exit 1
R=$TMP/app
new_repo "$R"
cat >"$R/Dockerfile" <<DF
FROM local/bb:sha-$(git -C "$B" rev-parse HEAD)
RUN echo hi > /data/new.txt && rm /data/delme && rm -rf /data/old && mkdir /data/old && echo g > /data/old/g && \\
    ln /data/new.txt /data/hard && chmod 700 /keep && rm /data/link && ln -s /data/new.txt /data/link && \\
    mkdir -p /srv/app && echo x > /srv/app/x
DF
commit_all "$R" app

layer_of() { # TAR N -> the Nth layer as a file
    local L
    L=$(skopeo inspect --raw oci-archive:"$1" | python3 -c "import json,sys;print(json.load(sys.stdin)[\"layers\"][$2][\"digest\"][7:])") &&
        tar -xOf "$1" "blobs/sha256/$L" >"$3"
}

test_expect_success 'a RUN snapshot by walking a copy gives the same files as the overlayfs one' '
    export IMGBUILD_CACHE="$TMP/c-overlay" && ib load "$TMP/bb.tar" >/dev/null &&
    (cd "$R" && ib -o "$TMP/ov.tar" -q >/dev/null) &&
    export IMGBUILD_CACHE="$TMP/c-walk" && ib load "$TMP/bb.tar" >/dev/null &&
    (cd "$R" && IMGBUILD_SNAPSHOT=walk ib -o "$TMP/walk.tar" --progress plain >/dev/null) &&
    unpack_image "$TMP/ov.tar" "$TMP/ov" && unpack_image "$TMP/walk.tar" "$TMP/wk" &&
    tree_listing "$TMP/ov/rootfs" >"$TMP/ov.list" && tree_listing "$TMP/wk/rootfs" >"$TMP/wk.list" &&
    diff -u "$TMP/ov.list" "$TMP/wk.list" &&
    test ! -e "$TMP/wk/rootfs/data/delme" && test ! -e "$TMP/wk/rootfs/data/old/f" &&
    test "$(stat -c %a "$TMP/wk/rootfs/keep")" = 700 && test "$(readlink "$TMP/wk/rootfs/data/link")" = /data/new.txt
'

test_expect_success 'the walked layer holds only the changes: whiteouts, hardlinks, no unchanged file' '
    layer_of "$TMP/walk.tar" 1 "$TMP/wl.tgz" &&
    python3 - "$TMP/wl.tgz" <<PY
import sys, tarfile
t = tarfile.open(sys.argv[1])
m = {i.name: i for i in t.getmembers()}
assert "data/.wh.delme" in m and "data/old/.wh.f" in m, sorted(m)
assert m["data/new.txt"].islnk() and m["data/new.txt"].linkname == "data/hard", m["data/new.txt"].type
assert "keep/unchanged" not in m and "bin/busybox" not in m and "etc/passwd" not in m, sorted(m)
assert m["keep"].mode & 0o777 == 0o700 and m["data/link"].linkname == "/data/new.txt"
assert "srv/app/x" in m
PY
'

test_done
