#!/usr/bin/env bash
# The CLI surface (help, version, progress modes) and the bundled example:
# examples/monolith built from a commit, checked with skopeo and umoci.
. "$(dirname "$0")/lib.sh"

R=$TMP/mono
new_repo "$R"
cp -a "$IB_SRC/examples/monolith/." "$R/"
commit_all "$R" example
SHA=$(git -C "$R" rev-parse HEAD)

test_expect_success '--version, --help and per-verb help' '
    ib --version | grep -qE "^imgbuild [0-9]+\.[0-9]+\.[0-9]+$" &&
    ib --help | grep -q "usage: imgbuild" &&
    ib build --help | grep -q -- "--worktree" &&
    ib inspect --help | grep -q "usage: imgbuild inspect" &&
    ib load --help | grep -q "usage: imgbuild load"
'

test_expect_success 'plain progress: one line per step with duration and layer size' '
    cd "$R" && ib --tag "$SHA" -o "$TMP/m.tar" --progress plain >"$TMP/out" &&
    grep -cE "^#[0-9]+ \[" "$TMP/last.err" >"$TMP/n" && test "$(cat "$TMP/n")" = 21 &&
    grep -qE "^#8 \[app 8/10\] COPY app/ ./app/ +BUILT [0-9.]+s  [0-9.]+ (B|kB)  rebuilt: first build of this step$" "$TMP/last.err" &&
    grep -qE "^#21 \[runtime 9/9\] CMD \[\"web\"\] +DONE [0-9.]+s$" "$TMP/last.err"
'

test_expect_success 'the example image: config, layers and files' '
    skopeo inspect --config oci-archive:"$TMP/m.tar" >"$TMP/cfg" &&
    python3 - "$TMP/cfg" "$SHA" <<PY
import json, sys
c = json.load(open(sys.argv[1])); sha = sys.argv[2]
cc = c["config"]
assert cc["User"] == "1000:1000", cc
assert cc["Entrypoint"] == ["/usr/local/bin/docker-entrypoint.sh"] and cc["Cmd"] == ["web"], cc
assert "8000/tcp" in cc["ExposedPorts"] and "/geodata" in cc["Volumes"], cc
assert cc["Healthcheck"]["Test"] == ["CMD", "python", "-m", "app.healthcheck"], cc
assert cc["Healthcheck"]["Interval"] == 30 * 10**9 and cc["Healthcheck"]["Retries"] == 3, cc
assert cc["StopSignal"] == "SIGTERM", cc
assert "APP_ENV=production" in cc["Env"], cc
assert cc["Labels"]["org.opencontainers.image.revision"] == sha, cc
PY
    unpack_image "$TMP/m.tar" "$TMP/mb" &&
    test -x "$TMP/mb/rootfs/usr/local/bin/docker-entrypoint.sh" &&
    test -f "$TMP/mb/rootfs/app/app/web.py" && test -f "$TMP/mb/rootfs/app/static/style.css" &&
    test -f "$TMP/mb/rootfs/app/notes/KEEP.md" && test ! -e "$TMP/mb/rootfs/app/notes/todo.md" &&
    test -z "$(find "$TMP/mb/rootfs" -name "*.pyc" -o -name ".env" -o -name ".venv" -o -name tests)"
'

test_expect_success 'json progress: parseable events and a final result' '
    cd "$R" && ib -o "$TMP/j.tar" --progress json >/dev/null &&
    python3 - "$TMP/last.err" "$(digest_of "$TMP/j.tar")" <<PY
import json, sys
events = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
steps = [e for e in events if e["event"] == "step"]
done = [e for e in events if e["event"] == "step_done"]
res = [e for e in events if e["event"] == "result"]
assert len(steps) == len(done) == 21, (len(steps), len(done))
assert all(d["status"] in ("DONE", "CACHED") for d in done), done
assert sum(d["status"] == "CACHED" for d in done) == 7, done  # WORKDIR /app and the 6 COPY layers, built by the previous test
assert any("layer_digest" in d for d in done)
assert len(res) == 1 and res[0]["result"]["digest"] == sys.argv[2], res
PY
'

test_expect_success '-q prints only the digest; stdout is clean' '
    cd "$R" && ib -q -o "$TMP/q.tar" >"$TMP/q.out" &&
    test "$(cat "$TMP/q.out")" = "$(digest_of "$TMP/q.tar")" && test ! -s "$TMP/last.err"
'

test_expect_success 'a terminal gets a live view (redrawn line); plain mode has no escapes' '
    cd "$R" && TERM=xterm script -qec "$IMGBUILD -o $TMP/t.tar" /dev/null >"$TMP/tty.out" &&
    grep -q $'"'"'\r\x1b\[J'"'"' "$TMP/tty.out" && grep -q " => #" "$TMP/tty.out" && ! grep -q Sanitizer "$TMP/tty.out" &&
    (cd "$R" && ib -o "$TMP/p.tar" --progress plain) && ! grep -q $'"'"'\x1b'"'"' "$TMP/last.err"
'

test_expect_success 'CI=true selects plain output even on a terminal' '
    cd "$R" && CI=true TERM=xterm script -qec "$IMGBUILD -o $TMP/t2.tar" /dev/null >"$TMP/tty2.out" &&
    ! grep -q $'"'"'\x1b\['"'"' "$TMP/tty2.out" && ! grep -q Sanitizer "$TMP/tty2.out" && grep -qE "^#1 \[app 1/10\]" "$TMP/tty2.out"
'

test_done
