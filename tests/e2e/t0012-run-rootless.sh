#!/usr/bin/env bash
# RUN without root: an unprivileged user builds through a user namespace that maps its uid to root
# (overlayfs with userxattr). Creates, deletes and replaces files (whiteouts and opaque dirs come out as
# in a root build), hardlinks stay hardlinks, everything is owned by 0:0 in the layer, the scratch dirs
# are removed, and a USER other than root is refused clearly (one uid is mapped).
. "$(dirname "$0")/lib.sh"

U=nobody
id "$U" >/dev/null 2>&1 || { echo "no user $U"; exit 1; }
# The unprivileged user needs its own dirs: $TMP is root's 0700.
W=$TMP/rootless
mkdir -p "$W" && chmod 755 "$TMP" "$W"

B=$W/base
new_repo "$B"
bb_rootfs "$B/rootfs" sh ls cat echo rm mkdir touch id ln chmod || exit 1
mkdir -p "$B/rootfs/data/old"
echo old >"$B/rootfs/data/old/f"
echo gone >"$B/rootfs/data/delme"
printf 'FROM scratch\nCOPY rootfs/ /\n' >"$B/Dockerfile"
commit_all "$B" base
R=$W/app
new_repo "$R"
cat >"$R/Dockerfile" <<DF
FROM local/bb:sha-$(git -C "$B" rev-parse HEAD)
RUN echo hi > /data/new.txt && rm /data/delme && rm -rf /data/old && mkdir /data/old && echo g > /data/old/g && \\
    id -u > /uid && ln /data/new.txt /data/hard && mkdir -p /ro/sub && echo x > /ro/sub/f && chmod 555 /ro/sub
DF
printf 'FROM local/bb:sha-%s\nUSER app\nRUN id -u > /uid\n' "$(git -C "$B" rev-parse HEAD)" >"$R/Dockerfile.user"
commit_all "$R" app
chown -R "$U" "$W"

test_expect_success 'an unprivileged user runs RUN steps: whiteouts, opaque dirs, hardlinks, root-owned layer' '
    as_user "$B" --name local/bb -o "$W/bb.tar" -q >/dev/null && as_user "$B" load "$W/bb.tar" >/dev/null &&
    as_user "$R" -o "$W/app.tar" --progress plain >/dev/null &&
    grep -qE "RUN echo hi .* BUILT" "$TMP/last.err" &&
    L=$(skopeo inspect --raw oci-archive:"$W/app.tar" | python3 -c "import json,sys;print(json.load(sys.stdin)[\"layers\"][1][\"digest\"][7:])") &&
    tar -xOf "$W/app.tar" "blobs/sha256/$L" >"$TMP/l.tgz" &&
    python3 - "$TMP/l.tgz" <<PY &&
import sys, tarfile
t = tarfile.open(sys.argv[1])
m = {i.name: i for i in t.getmembers()}
assert "data/.wh.delme" in m and "data/old/.wh..wh..opq" in m, sorted(m)
assert m["data/new.txt"].islnk() and m["data/new.txt"].linkname == "data/hard", m["data/new.txt"].type
assert all(i.uid == 0 and i.gid == 0 for i in t.getmembers()), [(i.name, i.uid) for i in t.getmembers() if i.uid]
assert not any(k.startswith("SCHILY.xattr.user.overlay") for i in t.getmembers() for k in i.pax_headers)
assert t.extractfile("uid").read() == b"0\n"
PY
    unpack_image "$W/app.tar" "$TMP/u" && test "$(cat "$TMP/u/rootfs/data/old/g")" = g && test ! -e "$TMP/u/rootfs/data/delme" &&
    test ! -e "$TMP/u/rootfs/data/old/f" && test -z "$(ls -A "$W/cache/tmp" 2>/dev/null)"
'

test_expect_success 'the same RUN built as root gives the same layer' '
    export IMGBUILD_CACHE="$TMP/rootcache" && ib load "$W/bb.tar" >/dev/null &&
    cp -a "$R" "$TMP/rootapp" && chown -R root:root "$TMP/rootapp" &&
    (cd "$TMP/rootapp" && ib -o "$TMP/root.tar" -q >/dev/null) &&
    r=$(skopeo inspect --raw oci-archive:"$TMP/root.tar" | python3 -c "import json,sys;print(json.load(sys.stdin)[\"layers\"][1][\"digest\"])") &&
    u=$(skopeo inspect --raw oci-archive:"$W/app.tar" | python3 -c "import json,sys;print(json.load(sys.stdin)[\"layers\"][1][\"digest\"])") &&
    test "$r" = "$u"
'

test_expect_success 'without root and without overlayfs (the walking snapshot) the image has the same files' '
    rm -rf "$W/cache" && as_user "$B" load "$W/bb.tar" >/dev/null &&
    export IMGBUILD_SNAPSHOT=walk && as_user "$R" -o "$W/walk.tar" -q >/dev/null && unset IMGBUILD_SNAPSHOT &&
    unpack_image "$W/app.tar" "$TMP/a1" && unpack_image "$W/walk.tar" "$TMP/a2" &&
    tree_listing "$TMP/a1/rootfs" >"$TMP/a1.list" && tree_listing "$TMP/a2/rootfs" >"$TMP/a2.list" &&
    diff -u "$TMP/a1.list" "$TMP/a2.list"
'

test_expect_success 'a USER other than root is refused clearly without root' '
    ! as_user "$R" -f Dockerfile.user -o "$W/user.tar" >/dev/null &&
    tail -n 1 "$TMP/last.err" | grep -qE "^imgbuild: error: Dockerfile.user:3: RUN as USER 1000:1000 needs a root build" &&
    test ! -e "$W/user.tar"
'

test_done
