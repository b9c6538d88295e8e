#!/usr/bin/env bash
# Builds a generated repo from its commit and checks the image with real peers:
# skopeo reads the tarball, umoci unpacks it, and the rootfs equals
# `git archive` of the commit minus the .dockerignore'd paths, file by file.
. "$(dirname "$0")/lib.sh"

R=$TMP/repo
new_repo "$R"
mkdir -p "$R/app/templates" "$R/app/static/css" "$R/notes" "$R/data/big" "$R/.venv/lib" "$R/scripts"
for i in $(seq 1 40); do printf 'def handler_%d():\n    return %d\n' "$i" "$i" >"$R/app/mod_$i.py"; done
echo '<html>{{ title }}</html>' >"$R/app/templates/index.html"
echo 'body{margin:0}' >"$R/app/static/css/site.css"
printf '#!/bin/sh\nexec gunicorn app:app\n' >"$R/scripts/entrypoint.sh"
chmod 755 "$R/scripts/entrypoint.sh"
ln -s mod_1.py "$R/app/current.py"
echo 'flask==3.0.0' >"$R/requirements.txt"
echo 'private' >"$R/notes/secret.md"
echo 'keep me' >"$R/notes/KEEP.md"
head -c 300000 /dev/zero | tr '\0' 'x' >"$R/data/big/blob.bin"
# Names are bytes: UTF-8 (in a directory and a link target) and a Latin-1 byte must come out as they are.
mkdir -p "$R/app/climates/Doña Ana" && echo cli >"$R/app/climates/Doña Ana/obs.cli"
ln -s "Doña Ana/obs.cli" "$R/app/climates/latest.cli"
echo latin1 >"$R/app/$(printf 'caf\351.txt')"
echo cache >"$R/app/mod_1.pyc"
echo venv >"$R/.venv/lib/site.py"
cat >"$R/.dockerignore" <<'IGN'
# build context exclusions
**/*.pyc
.venv
notes
!notes/KEEP.md
/data/big
IGN
cat >"$R/Dockerfile" <<'DF'
FROM scratch
LABEL org.opencontainers.image.title="generated"
WORKDIR /app
COPY . .
ENV PYTHONUNBUFFERED=1
EXPOSE 8000/tcp
ENTRYPOINT ["/app/scripts/entrypoint.sh"]
CMD ["--workers", "2"]
DF
commit_all "$R" init
SHA=$(git -C "$R" rev-parse HEAD)
# An uncommitted change must NOT be in a commit build.
echo 'uncommitted' >"$R/app/mod_2.py"
echo 'untracked' >"$R/app/untracked.py"

test_expect_success 'build the commit into an OCI tarball' '
    cd "$R" && ib --tag "$(git rev-parse HEAD)" -o "$TMP/app.tar" --progress plain >"$TMP/build.out" &&
    test -s "$TMP/app.tar" &&
    grep -q "^Tag     sha-$SHA\$" "$TMP/build.out"
'

test_expect_success 'skopeo reads it: tag, labels, annotations, config' '
    skopeo inspect --raw oci-archive:"$TMP/app.tar" >"$TMP/manifest.json" &&
    skopeo inspect --config oci-archive:"$TMP/app.tar" >"$TMP/config.json" &&
    python3 - "$TMP" "$SHA" <<PY
import json, sys
tmp, sha = sys.argv[1], sys.argv[2]
m = json.load(open(tmp + "/manifest.json"))
c = json.load(open(tmp + "/config.json"))
assert m["mediaType"] == "application/vnd.oci.image.manifest.v1+json", m
assert all(l["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip" for l in m["layers"]), m
a = m["annotations"]
assert a["org.opencontainers.image.revision"] == sha, a
assert a["org.opencontainers.image.created"] == "2024-05-01T12:00:00Z", a
cc = c["config"]
assert cc["Entrypoint"] == ["/app/scripts/entrypoint.sh"], cc
assert cc["Cmd"] == ["--workers", "2"], cc
assert cc["WorkingDir"] == "/app", cc
assert "8000/tcp" in cc["ExposedPorts"], cc
assert "PYTHONUNBUFFERED=1" in cc["Env"], cc
assert cc["Labels"]["org.opencontainers.image.title"] == "generated", cc
assert cc["Labels"]["org.opencontainers.image.revision"] == sha, cc
assert c["created"] == "2024-05-01T12:00:00Z" and c["os"] == "linux" and c["architecture"] == "amd64", c
# WORKDIR /app makes /app in a layer of its own (as BuildKit does), then COPY . .
assert len(c["rootfs"]["diff_ids"]) == len(m["layers"]) == 2, (c, m)
assert "empty_layer" not in c["history"][1] and c["history"][1]["created_by"] == "WORKDIR /app", c["history"]
assert len(c["history"]) == 7, c["history"]  # FROM scratch adds no history entry
PY
'

test_expect_success 'index.json names the image; oci-layout and docker manifest.json present' '
    tar -tf "$TMP/app.tar" >"$TMP/members" &&
    grep -qx oci-layout "$TMP/members" && grep -qx index.json "$TMP/members" && grep -qx manifest.json "$TMP/members" &&
    test "$(tar -xOf "$TMP/app.tar" oci-layout)" = "{\"imageLayoutVersion\":\"1.0.0\"}" &&
    tar -xOf "$TMP/app.tar" index.json | grep -q "\"org.opencontainers.image.ref.name\":\"sha-$SHA\"" &&
    tar -xOf "$TMP/app.tar" manifest.json | grep -q "\"RepoTags\":\[\"docker.io/library/repo:sha-$SHA\"\]"
'

test_expect_success 'umoci unpack: rootfs equals git archive of the commit minus .dockerignore' '
    unpack_image "$TMP/app.tar" "$TMP/bundle" &&
    mkdir -p "$TMP/expect/app" &&
    git -C "$R" archive HEAD | tar -x -C "$TMP/expect/app" &&
    rm -rf "$TMP/expect/app/.venv" "$TMP/expect/app/notes/secret.md" "$TMP/expect/app/data/big" &&
    find "$TMP/expect/app" -name "*.pyc" -delete &&
    chmod 755 "$TMP/expect" "$TMP/expect/app" &&
    (cd "$TMP/expect" && find . -type d -exec chmod 755 {} + &&
        find . -type f -perm /111 -exec chmod 755 {} + && find . -type f ! -perm /111 -exec chmod 644 {} +) &&
    tree_listing "$TMP/expect" >"$TMP/want.txt" &&
    tree_listing "$TMP/bundle/rootfs" >"$TMP/got.txt" &&
    diff -u "$TMP/want.txt" "$TMP/got.txt" &&
    grep -q "^f 755 0:0 ./app/scripts/entrypoint.sh " "$TMP/got.txt" &&
    grep -q "^l 0:0 ./app/app/current.py -> mod_1.py" "$TMP/got.txt" &&
    grep -q "^f 644 0:0 ./app/notes/KEEP.md " "$TMP/got.txt" &&
    ! grep -q "untracked.py" "$TMP/got.txt" &&
    test "$(cat "$TMP/bundle/rootfs/app/app/mod_2.py")" = "$(git -C "$R" show HEAD:app/mod_2.py)"
'

test_expect_success 'layer tar is sorted, root-owned, file times 1980-01-01 (content-only bytes), no duplicates' '
    L=$(python3 -c "import json;print(json.load(open(\"$TMP/manifest.json\"))[\"layers\"][-1][\"digest\"][7:])") &&
    tar -xOf "$TMP/app.tar" "blobs/sha256/$L" | gzip -dc >"$TMP/layer.tar" &&
    tar -tvf "$TMP/layer.tar" --numeric-owner --full-time >"$TMP/layer.lst" 2>"$TMP/layer.err" &&
    python3 -c "
import sys, tarfile
t = tarfile.open(sys.argv[1], encoding=\"utf-8\", errors=\"surrogateescape\")
pax = sorted(m.name for m in t if m.pax_headers)
# only entries whose name or link target is not ASCII need a pax header; GNU tar then warns about hdrcharset once each
want = sorted(m.name for m in t if not (m.name + m.linkname).isascii())
assert pax == want and len(want) == 4, (pax, want)
" "$TMP/layer.tar" &&
    test "$(grep -c . "$TMP/layer.err")" -le 4 &&
    ! grep -v " 0/0 " "$TMP/layer.lst" &&
    test "$(awk "{print \$4\" \"\$5}" "$TMP/layer.lst" | sort -u)" = "1980-01-01 00:00:00" &&
    tar -tf "$TMP/layer.tar" >"$TMP/names" &&
    LC_ALL=C sort -c "$TMP/names" &&
    test "$(sort "$TMP/names" | uniq -d | wc -l)" = 0 &&
    head -n1 "$TMP/names" | grep -qx "app/"
'

test_expect_success 'gzip header carries no name and no time' '
    L=$(python3 -c "import json;print(json.load(open(\"$TMP/manifest.json\"))[\"layers\"][-1][\"digest\"][7:])") &&
    tar -xOf "$TMP/app.tar" "blobs/sha256/$L" | head -c 10 | od -An -tx1 >"$TMP/hdr" &&
    test "$(tr -d " \n" <"$TMP/hdr" | cut -c1-16)" = "1f8b080000000000"
'

test_expect_success 'blobs in the tarball match their digests' '
    mkdir -p "$TMP/x" && tar -xf "$TMP/app.tar" -C "$TMP/x" &&
    for f in "$TMP/x"/blobs/sha256/*; do test "$(sha256sum <"$f" | cut -c1-64)" = "$(basename "$f")"; done
'

test_expect_success 'inspect shows tag, digest, layers and config' '
    ib inspect "$TMP/app.tar" >"$TMP/inspect.txt" &&
    D=$(digest_of "$TMP/app.tar") &&
    grep -q "^Tag  *sha-$SHA" "$TMP/inspect.txt" &&
    grep -q "^Digest  *$D" "$TMP/inspect.txt" &&
    grep -q "COPY . ." "$TMP/inspect.txt" &&
    grep -q "org.opencontainers.image.revision=$SHA" "$TMP/inspect.txt" &&
    ib inspect --json "$TMP/app.tar" | python3 -c "import json,sys; j=json.load(sys.stdin); assert j[\"digest\"]==\"$D\" and j[\"tag\"]==\"sha-$SHA\""
'

test_expect_success 'zstd and uncompressed layers hold the same tar (same diffID) as gzip' '
    cd "$R" &&
    ib --compression zstd -o "$TMP/z.tar" -q >/dev/null &&
    ib --compression none -o "$TMP/n.tar" -q >/dev/null &&
    skopeo inspect --raw oci-archive:"$TMP/z.tar" | grep -q "layer.v1.tar+zstd" &&
    skopeo inspect --raw oci-archive:"$TMP/n.tar" | grep -q "layer.v1.tar\"" &&
    for t in z n; do skopeo inspect --config oci-archive:"$TMP/$t.tar" | python3 -c "import json,sys; print(json.load(sys.stdin)[\"rootfs\"][\"diff_ids\"])" >"$TMP/$t.diff"; done &&
    python3 -c "import json;print(json.load(open(\"$TMP/config.json\"))[\"rootfs\"][\"diff_ids\"])" >"$TMP/g.diff" &&
    diff "$TMP/g.diff" "$TMP/z.diff" && diff "$TMP/g.diff" "$TMP/n.diff" &&
    L=$(skopeo inspect --raw oci-archive:"$TMP/z.tar" | python3 -c "import json,sys;print(json.load(sys.stdin)[\"layers\"][-1][\"digest\"][7:])") &&
    tar -xOf "$TMP/z.tar" "blobs/sha256/$L" | zstd -dc >"$TMP/zlayer.tar" &&
    cmp "$TMP/zlayer.tar" "$TMP/layer.tar" &&
    unpack_image "$TMP/n.tar" "$TMP/bn" &&
    tree_listing "$TMP/bundle/rootfs" >"$TMP/g.txt" && tree_listing "$TMP/bn/rootfs" >"$TMP/n.txt" &&
    test -s "$TMP/g.txt" && diff -u "$TMP/g.txt" "$TMP/n.txt"
'

test_done
