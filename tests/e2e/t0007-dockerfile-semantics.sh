#!/usr/bin/env bash
# Dockerfile details that real base images and real Dockerfiles depend on:
# parent directories keep the base image's mode/owner (/tmp stays 1777),
# ownership is 0:0 unless --chown (never the builder's uid), heredocs,
# ADD archives (several; and a .gz that is not a tar), ONBUILD not inherited,
# <Dockerfile>.dockerignore next to the Dockerfile, SOURCE_DATE_EPOCH checks,
# one source annotation whichever way the repo was cloned.
. "$(dirname "$0")/lib.sh"

layer_listing() { # TAR INDEX -> "mode uid/gid name" lines of that layer
    local L
    L=$(skopeo inspect --raw oci-archive:"$1" | python3 -c "import json,sys;print(json.load(sys.stdin)[\"layers\"][$2][\"digest\"][7:])")
    tar -xOf "$1" "blobs/sha256/$L" | tar -tzv --numeric-owner | awk '{print $1, $2, $6}'
}

B=$TMP/base
new_repo "$B"
mkdir -p "$TMP/rootsrc/tmp" "$TMP/rootsrc/etc" "$B/appdir"
chmod 1777 "$TMP/rootsrc/tmp"
echo 'root:x:0:0::/root:/bin/sh' >"$TMP/rootsrc/etc/passwd"
tar -C "$TMP/rootsrc" --owner=0 --group=0 -cf "$B/rootfs.tar" tmp etc
echo app >"$B/appdir/app.txt"
cat >"$B/Dockerfile" <<'DF'
FROM scratch
ADD rootfs.tar /
COPY --chown=1000:1000 appdir/ /app/
ONBUILD COPY . /onbuild/
DF
commit_all "$B" base
(cd "$B" && ib --name local/base -o "$TMP/base.tar" -q >/dev/null && ib load "$TMP/base.tar" >/dev/null)
BASE=local/base:sha-$(git -C "$B" rev-parse HEAD)

test_expect_success 'COPY keeps the base image metadata of existing parent directories' '
    C=$TMP/child && new_repo "$C" && echo x >"$C/x.txt" &&
    printf "FROM %s\nCOPY x.txt /tmp/x.txt\nCOPY x.txt /app/sub/y.txt\n" "$BASE" >"$C/Dockerfile" && commit_all "$C" c &&
    (cd "$C" && ib -o "$TMP/child.tar" -q >/dev/null) &&
    layer_listing "$TMP/child.tar" 2 >"$TMP/l2" && layer_listing "$TMP/child.tar" 3 >"$TMP/l3" &&
    cat "$TMP/l2" "$TMP/l3" &&
    grep -qx "drwxrwxrwt 0/0 tmp/" "$TMP/l2" &&
    grep -qx "drwxr-xr-x 1000/1000 app/" "$TMP/l3" &&
    grep -qx "drwxr-xr-x 0/0 app/sub/" "$TMP/l3" &&
    unpack_image "$TMP/child.tar" "$TMP/cb" && test "$(stat -c %a "$TMP/cb/rootfs/tmp")" = 1777
'

test_expect_success 'ONBUILD triggers are recorded, warned about in a child, and not inherited' '
    skopeo inspect --config oci-archive:"$TMP/base.tar" | grep -q "COPY . /onbuild/" &&
    (cd "$TMP/child" && ib -o "$TMP/child2.tar" --progress plain >/dev/null) &&
    grep -q "warning: Dockerfile:1: ONBUILD triggers of .* are not executed" "$TMP/last.err" &&
    ! skopeo inspect --config oci-archive:"$TMP/child2.tar" | grep -q OnBuild
'

test_expect_success 'COPY --from and ADD archives are 0:0 unless --chown, whoever runs the build' '
    R=$TMP/own && new_repo "$R" && mkdir -p "$TMP/o/pkg" && echo v >"$TMP/o/pkg/f" &&
    tar -C "$TMP/o" --owner=1234 --group=1234 -czf "$R/v.tgz" pkg &&
    printf "FROM scratch AS a\nADD v.tgz /opt/\nFROM scratch\nCOPY --from=a /opt /opt\nCOPY --from=a --chown=7:8 /opt/pkg /chowned\n" >"$R/Dockerfile" &&
    commit_all "$R" own && chmod -R a+rwX "$TMP" &&
    (cd "$R" && ib -o "$TMP/own.tar" -q >/dev/null) &&
    layer_listing "$TMP/own.tar" 0 | grep -qx -- "-rw-r--r-- 0/0 opt/pkg/f" &&
    layer_listing "$TMP/own.tar" 1 | grep -qx -- "-rw-r--r-- 7/8 chowned/f" &&
    d1=$(digest_of "$TMP/own.tar") &&
    run_nobody() { (cd "$R" && setpriv --reuid=65534 --regid=65534 --clear-groups env HOME="$TMP/nobody-home" IMGBUILD_CACHE="$TMP/nobody-cache" "$IMGBUILD" "$@"); } &&
    mkdir -p "$TMP/nobody-home" && chmod 777 "$TMP/nobody-home" &&
    { rc=0; run_nobody -o "$TMP/own2.tar" -q 2>"$TMP/nb.err" || rc=$?; } && test $rc = 1 &&
    grep -q "owned by another user.*safe.directory" "$TMP/nb.err" &&
    printf "[safe]\n\tdirectory = %s\n" "$R" >"$TMP/nobody-home/.gitconfig" &&
    d2=$(run_nobody -o "$TMP/own2.tar" -q) &&
    test "$d1" = "$d2"
'

test_expect_success 'heredocs with similar names, several ADD archives, a .gz that is not a tar' '
    R=$TMP/hd && new_repo "$R" && mkdir -p "$TMP/a1/one" "$TMP/a2/two" &&
    echo 1 >"$TMP/a1/one/f" && echo 2 >"$TMP/a2/two/f" &&
    tar -C "$TMP/a1" -czf "$R/one.tgz" one && tar -C "$TMP/a2" -cf "$R/two.tar" two &&
    echo "plain text" | gzip -n >"$R/notes.txt.gz" &&
    cat >"$R/Dockerfile" <<DF &&
FROM scratch
ARG WHO=world
COPY <<EOT <<EOT2 /etc/
one \${WHO}
EOT
two
EOT2
ADD one.tgz /x/
ADD two.tar /y/
ADD notes.txt.gz /z/
DF
    commit_all "$R" hd && (cd "$R" && ib -o "$TMP/hd.tar" -q >/dev/null) &&
    unpack_image "$TMP/hd.tar" "$TMP/hb" &&
    test "$(cat "$TMP/hb/rootfs/etc/EOT")" = "one world" && test "$(cat "$TMP/hb/rootfs/etc/EOT2")" = two &&
    test "$(cat "$TMP/hb/rootfs/x/one/f")" = 1 && test "$(cat "$TMP/hb/rootfs/y/two/f")" = 2 &&
    test "$(gzip -dc "$TMP/hb/rootfs/z/notes.txt.gz")" = "plain text"
'

test_expect_success 'COPY --parents is refused, not silently ignored' '
    R=$TMP/par && new_repo "$R" && mkdir -p "$R/a/b" && echo f >"$R/a/b/f" &&
    printf "FROM scratch\nCOPY --parents a/b/f /x/\n" >"$R/Dockerfile" && commit_all "$R" p &&
    (cd "$R" && expect_error "Dockerfile:2: .*--parents is not supported" -o "$TMP/par.tar")
'

test_expect_success 'a <Dockerfile>.dockerignore next to the Dockerfile wins over .dockerignore' '
    R=$TMP/ign && new_repo "$R" && mkdir -p "$R/docker" && echo a >"$R/a.txt" && echo b >"$R/b.txt" &&
    echo a.txt >"$R/.dockerignore" && echo b.txt >"$R/docker/web.Dockerfile.dockerignore" &&
    printf "FROM scratch\nCOPY . /c/\n" >"$R/docker/web.Dockerfile" && commit_all "$R" i &&
    (cd "$R" && ib -f docker/web.Dockerfile -o "$TMP/ign.tar" -q >/dev/null) &&
    unpack_image "$TMP/ign.tar" "$TMP/ib" && test -f "$TMP/ib/rootfs/c/a.txt" && test ! -e "$TMP/ib/rootfs/c/b.txt"
'

test_expect_success 'SOURCE_DATE_EPOCH must be a number of seconds' '
    cd "$B" &&
    { rc=0; SOURCE_DATE_EPOCH=yesterday ib -o "$TMP/e.tar" || rc=$?; } && test $rc = 2 &&
    grep -q "^imgbuild: error: SOURCE_DATE_EPOCH=yesterday" "$TMP/last.err" &&
    { rc=0; SOURCE_DATE_EPOCH=99999999999999 ib -o "$TMP/e.tar" || rc=$?; } && test $rc = 2 && test ! -e "$TMP/e.tar"
'

test_expect_success 'https, ssh and scp-style origins give one source annotation and one digest' '
    for url in https://tok:secret@git.example.com/wepp/app.git ssh://git@git.example.com:2222/wepp/app git@git.example.com:wepp/app.git; do
        git -C "$B" remote remove origin 2>/dev/null; git -C "$B" remote add origin "$url" &&
        (cd "$B" && ib -o "$TMP/o.tar" -q) >>"$TMP/origin.digests" &&
        skopeo inspect --raw oci-archive:"$TMP/o.tar" | grep -q "\"org.opencontainers.image.source\":\"https://git.example.com/wepp/app\"" || exit 1
    done &&
    test "$(sort -u "$TMP/origin.digests" | wc -l)" = 1 &&
    ! grep -q secret "$TMP/o.tar" &&
    git -C "$B" remote set-url origin /some/local/path && (cd "$B" && ib -o "$TMP/o2.tar" -q >/dev/null) &&
    ! skopeo inspect --raw oci-archive:"$TMP/o2.tar" | grep -q image.source
'

test_expect_success '-o never replaces a device or directory' '
    cd "$B" && mkdir -p "$TMP/adir" &&
    { rc=0; ib -o "$TMP/adir" || rc=$?; } && test $rc = 2 && grep -q "adir: is a directory" "$TMP/last.err" &&
    test -c /dev/null
'

test_done
