#!/usr/bin/env bash
# imgbuild load: OCI archives and docker-archives (written by skopeo, the
# format of `docker save`) go into the store verified; tampered archives are
# refused; loaded images work in FROM; inspect reads tarballs and refs.
. "$(dirname "$0")/lib.sh"

R=$TMP/repo
new_repo "$R"
mkdir -p "$R/etc" "$R/bin"
printf 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/app:/bin/sh\n' >"$R/etc/passwd"
echo '#!/bin/sh' >"$R/bin/tool" && chmod +x "$R/bin/tool"
printf 'FROM scratch\nCOPY etc/ /etc/\nCOPY bin/ /usr/bin/\nENV LANG=C.UTF-8\nCMD ["/usr/bin/tool"]\n' >"$R/Dockerfile"
commit_all "$R" base
(cd "$R" && ib --name registry.example.com/base/os -o "$TMP/base.tar" -q >/dev/null)
SHA=$(git -C "$R" rev-parse HEAD)
# Peers write the other formats: a docker-archive (docker save) and a second OCI archive.
skopeo copy -q oci-archive:"$TMP/base.tar" docker-archive:"$TMP/base-docker.tar":legacy/base:1.0
skopeo copy -q oci-archive:"$TMP/base.tar" oci-archive:"$TMP/base-skopeo.tar":v2

test_expect_success 'load our own OCI archive registers its name' '
    ib load "$TMP/base.tar" >"$TMP/l1" &&
    grep -qx "Loaded image: registry.example.com/base/os:sha-$SHA ($(digest_of "$TMP/base.tar"))" "$TMP/l1"
'

test_expect_success 'load a docker-archive (docker save format) and build FROM it' '
    ib load "$TMP/base-docker.tar" >"$TMP/l2" &&
    grep -q "^Loaded image: docker.io/legacy/base:1.0 " "$TMP/l2" &&
    mkdir -p "$TMP/c" && cd "$TMP/c" && new_repo . &&
    printf "FROM legacy/base:1.0\nCOPY hello.txt /srv/\nUSER app\n" >Dockerfile && echo hi >hello.txt && commit_all . c &&
    ib -o "$TMP/c.tar" -q >/dev/null &&
    skopeo inspect --config oci-archive:"$TMP/c.tar" >"$TMP/c.json" &&
    grep -q "LANG=C.UTF-8" "$TMP/c.json" && grep -q "\"/usr/bin/tool\"" "$TMP/c.json" &&
    skopeo inspect --raw oci-archive:"$TMP/c.tar" >"$TMP/c.man" &&
    ! grep -q "application/vnd.docker" "$TMP/c.man" &&
    unpack_image "$TMP/c.tar" "$TMP/cb" &&
    test -x "$TMP/cb/rootfs/usr/bin/tool" && test "$(cat "$TMP/cb/rootfs/srv/hello.txt")" = hi &&
    cmp "$TMP/cb/rootfs/etc/passwd" "$R/etc/passwd"
'

test_expect_success 'diffIDs survive the docker-archive round trip' '
    skopeo inspect --config oci-archive:"$TMP/base.tar" | python3 -c "import json,sys;print(json.load(sys.stdin)[\"rootfs\"][\"diff_ids\"])" >"$TMP/d1" &&
    python3 -c "import json,sys;print(json.load(sys.stdin)[\"rootfs\"][\"diff_ids\"][:2])" <"$TMP/c.json" >"$TMP/d2" &&
    diff "$TMP/d1" "$TMP/d2"
'

test_expect_success 'load an OCI archive written by skopeo (ref.name is only a tag)' '
    ib load "$TMP/base-skopeo.tar" >"$TMP/l3" && grep -q "^Loaded image: sha256:" "$TMP/l3"
'

test_expect_success 'a tampered blob is refused and nothing is registered' '
    mkdir -p "$TMP/t" && tar -xf "$TMP/base.tar" -C "$TMP/t" &&
    L=$(skopeo inspect --raw oci-archive:"$TMP/base.tar" | python3 -c "import json,sys;print(json.load(sys.stdin)[\"layers\"][0][\"digest\"][7:])") &&
    printf "evil" >>"$TMP/t/blobs/sha256/$L" &&
    (cd "$TMP/t" && tar -cf "$TMP/tampered.tar" oci-layout index.json manifest.json blobs) &&
    export IMGBUILD_CACHE="$TMP/fresh-cache" &&
    expect_error "digest mismatch" load "$TMP/tampered.tar" &&
    test -z "$(ls -A "$IMGBUILD_CACHE/refs")" &&
    test ! -e "$IMGBUILD_CACHE/blobs/sha256/$L"
'

test_expect_success 'not an image archive / missing file' '
    echo "not a tar" >"$TMP/junk.tar" &&
    expect_error "junk.tar" load "$TMP/junk.tar" &&
    expect_error "nope.tar" load "$TMP/nope.tar"
'

test_expect_success 'inspect of a missing tarball says so, without asking a registry' '
    expect_error "^imgbuild: error: $TMP/typo.tar: no such file$" inspect "$TMP/typo.tar" &&
    ! grep -qi "registry\|docker.io\|resolve" "$TMP/last.err"
'

test_expect_success 'inspect a stored image by reference, human and --json' '
    ib inspect registry.example.com/base/os:sha-$SHA >"$TMP/i1" &&
    grep -q "^Digest  *$(digest_of "$TMP/base.tar")" "$TMP/i1" &&
    grep -q "^Layers  *2" "$TMP/i1" &&
    ib inspect --json legacy/base:1.0 | python3 -c "import json,sys; j=json.load(sys.stdin); assert j[\"config\"][\"config\"][\"Cmd\"]==[\"/usr/bin/tool\"], j" &&
    expect_error "not found in the local store" inspect legacy/base:2.0
'

test_expect_success 'a base written by Go tools (umoci: UTF-8 pax names, like ca-certificates) loads, COPY and RUN build on it' '
    U=$TMP/umoci && mkdir -p "$U/src/etc/ssl/certs" "$U/src/home/app" &&
    bb_rootfs "$U/src" sh ls cat &&
    echo cert >"$U/src/etc/ssl/certs/NetLock_Arany_=Class_Gold=_Főtanúsítvány.crt" &&
    umoci init --layout "$U/lay" >/dev/null && umoci new --image "$U/lay:base" &&
    umoci insert --image "$U/lay:base" "$U/src" / >/dev/null &&
    skopeo copy -q oci:"$U/lay:base" oci-archive:"$U/base.tar":local/gobase:1 &&
    B=$(skopeo inspect --raw oci-archive:"$U/base.tar" | python3 -c "import json,sys;print(json.load(sys.stdin)[\"layers\"][0][\"digest\"][7:])") &&
    tar -xOf "$U/base.tar" "blobs/sha256/$B" | gzip -dc | python3 -c "
import sys, tarfile
t = tarfile.open(fileobj=sys.stdin.buffer, mode=\"r|\")
assert any(\"Főtanúsítvány\" in m.name and \"path\" in m.pax_headers for m in t), \"no UTF-8 pax path in the umoci layer\"" &&
    ib load "$U/base.tar" >/dev/null &&
    mkdir -p "$U/app" && cd "$U/app" && new_repo . && echo x >x &&
    printf "FROM local/gobase:1\nCOPY x /home/app/\nRUN for f in /etc/ssl/certs/*; do echo \"\$f\"; cat \"\$f\"; done > /home/app/certs\n" >Dockerfile && commit_all . app &&
    LANG= LC_ALL= ib -o "$U/app.tar" -q >/dev/null &&
    unpack_image "$U/app.tar" "$U/out" &&
    test -f "$U/out/rootfs/etc/ssl/certs/NetLock_Arany_=Class_Gold=_Főtanúsítvány.crt" &&
    test "$(cat "$U/out/rootfs/home/app/certs")" = "/etc/ssl/certs/NetLock_Arany_=Class_Gold=_Főtanúsítvány.crt
cert" && test "$(cat "$U/out/rootfs/home/app/x")" = x
'

test_done
