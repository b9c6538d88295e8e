#!/usr/bin/env bash
# The Python dependency flow, offline: a debootstrapped Debian with python3 and
# pip (built once, cached outside the repo) as the base image, a wheel this
# test builds itself, `RUN --mount=type=cache,target=/root/.cache/pip pip
# install --no-index --find-links … -r requirements.txt`, and a code-only
# commit that reuses the installed-dependencies layer.
. "$(dirname "$0")/lib.sh"

PYTAR=$(bash "$IB_SRC/scripts/python-base.sh") || exit 1

# Base image from the rootfs tarball (ADD extracts it, keeping modes and owners).
P=$TMP/pybase
mkdir -p "$P"
ln "$PYTAR" "$P/rootfs.tar" 2>/dev/null || cp "$PYTAR" "$P/rootfs.tar"
printf 'FROM scratch\nADD rootfs.tar /\nCMD ["python3"]\n' >"$P/Dockerfile"
(cd "$P" && ib --worktree --name local/pybase -o "$TMP/pybase.tar" -q >/dev/null && ib load "$TMP/pybase.tar" >/dev/null) || exit 1

# The app: requirements pin a wheel the test makes, no index anywhere.
R=$TMP/app
new_repo "$R"
mkdir -p "$R/wheels" "$R/app"
python3 - "$R/wheels" <<'PY'
import base64, hashlib, sys, zipfile
files = {
    "ibdemo/__init__.py": b'VERSION = "1.0"\n',
    "ibdemo-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: ibdemo\nVersion: 1.0\n",
    "ibdemo-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: imgbuild-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = ""
for name, data in files.items():
    h = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record += f"{name},sha256={h},{len(data)}\n"
record += "ibdemo-1.0.dist-info/RECORD,,\n"
with zipfile.ZipFile(sys.argv[1] + "/ibdemo-1.0-py3-none-any.whl", "w") as z:
    for name, data in files.items():
        z.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data)
    z.writestr(zipfile.ZipInfo("ibdemo-1.0.dist-info/RECORD", (1980, 1, 1, 0, 0, 0)), record)
PY
echo 'ibdemo==1.0' >"$R/requirements.txt"
printf 'import ibdemo\nprint("app on ibdemo", ibdemo.VERSION)\n' >"$R/app/__main__.py"
cat >"$R/Dockerfile" <<'DF'
FROM local/pybase:dirty
WORKDIR /app
COPY requirements.txt ./
COPY wheels/ ./wheels/
RUN --mount=type=cache,target=/root/.cache/pip pip install --break-system-packages --no-index --find-links /app/wheels -r requirements.txt
COPY app/ ./app/
CMD ["python3", "-m", "app"]
DF
commit_all "$R" app

layer() { skopeo inspect --raw oci-archive:"$1" | python3 -c "import json,sys;print(json.load(sys.stdin)[\"layers\"][$2][\"digest\"])"; }

test_expect_success 'pip installs the pinned wheel offline inside the sandbox, host PIP_* settings stay out' '
    export PIP_REQUIRE_VIRTUALENV=true PIP_INDEX_URL=http://127.0.0.1:1/simple &&
    (cd "$R" && ib -o "$TMP/a.tar" --progress plain >/dev/null) &&
    grep -q "Successfully installed ibdemo-1.0" "$TMP/last.err" &&
    unpack_image "$TMP/a.tar" "$TMP/ab" &&
    test "$(chroot "$TMP/ab/rootfs" /usr/bin/python3 -c "import sys; sys.path.insert(0, \"/app\"); import runpy; runpy.run_module(\"app\", run_name=\"__main__\")")" = "app on ibdemo 1.0" &&
    test ! -e "$TMP/ab/rootfs/root/.cache/pip/http"
'

test_expect_success 'a code-only commit reuses the dependency layer (RUN CACHED, same digest)' '
    printf "import ibdemo\\nprint(\\"v2 on ibdemo\\", ibdemo.VERSION)\\n" >"$R/app/__main__.py" && commit_all "$R" code &&
    (cd "$R" && ib -o "$TMP/b.tar" --progress plain >/dev/null) &&
    grep -qE "RUN --mount=type=cache.* CACHED" "$TMP/last.err" &&
    grep -qE "COPY app/ ./app/ +BUILT .*app/__main__.py changed" "$TMP/last.err" &&
    n=$(skopeo inspect --raw oci-archive:"$TMP/a.tar" | python3 -c "import json,sys;print(len(json.load(sys.stdin)[\"layers\"]))") &&
    test "$n" -ge 5 &&
    for i in $(seq 0 $((n - 2))); do test "$(layer "$TMP/b.tar" $i)" = "$(layer "$TMP/a.tar" $i)" || exit 1; done &&
    test "$(layer "$TMP/b.tar" -1)" != "$(layer "$TMP/a.tar" -1)"
'

test_expect_success 'a new pin reruns pip and says why' '
    echo "# pinned again" >>"$R/requirements.txt" && commit_all "$R" deps &&
    (cd "$R" && ib -o "$TMP/c.tar" --progress plain >/dev/null) &&
    grep -qE "COPY requirements.txt ./ +BUILT .*requirements.txt changed" "$TMP/last.err" &&
    grep -qE "RUN --mount=type=cache.* BUILT .*an earlier step changed" "$TMP/last.err" &&
    grep -q "Successfully installed ibdemo-1.0" "$TMP/last.err"
'

test_expect_success 'RUN layers keep file capabilities, user xattrs and hardlinks (and the next RUN sees them)' '
    X=$TMP/caps && new_repo "$X" &&
    cat >"$X/Dockerfile" <<DF &&
FROM local/pybase:dirty AS capd
RUN python3 -c "import os; p=\"/usr/local/bin/pinger\"; open(p,\"w\").write(\"x\"); os.setxattr(p,\"security.capability\",bytes.fromhex(\"0100000200200000000000000000000000000000\")); os.setxattr(p,\"user.origin\",b\"imgbuild\")" && ln /usr/local/bin/pinger /usr/local/bin/pinger-hard
FROM capd
RUN python3 -c "import os; p=\"/usr/local/bin/pinger-hard\"; assert os.getxattr(p,\"security.capability\").hex()==\"0100000200200000000000000000000000000000\"; assert os.stat(p).st_nlink==2; open(\"/seen\",\"w\").write(os.getxattr(p,\"user.origin\").decode())"
DF
    commit_all "$X" caps &&
    (cd "$X" && ib -o "$TMP/caps.tar" --progress plain >/dev/null) &&
    L=$(layer "$TMP/caps.tar" 1) && tar -xOf "$TMP/caps.tar" "blobs/sha256/${L#sha256:}" >"$TMP/caps.layer" &&
    python3 - "$TMP/caps.layer" <<PY
import sys, tarfile
t = tarfile.open(sys.argv[1])
m = {i.name: i for i in t.getmembers()}
f, h = m["usr/local/bin/pinger"], m["usr/local/bin/pinger-hard"]
cap = f.pax_headers["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape")
assert cap.hex() == "0100000200200000000000000000000000000000", cap.hex()
assert f.pax_headers["SCHILY.xattr.user.origin"] == "imgbuild"
assert h.islnk() and h.linkname == "usr/local/bin/pinger", (h.type, h.linkname)
assert not any(k.startswith("SCHILY.xattr.trusted.") for i in t.getmembers() for k in i.pax_headers)
PY
    unpack_image "$TMP/caps.tar" "$TMP/capsu" && test "$(cat "$TMP/capsu/rootfs/seen")" = imgbuild
'

test_done
