#!/usr/bin/env bash
# Bad input: each case exits 1 with one line "imgbuild: error: ..." naming the
# file:line or the flag, and leaves no output file (nor a temp file) behind.
. "$(dirname "$0")/lib.sh"

R=$TMP/repo
new_repo "$R"
mkdir -p "$R/app" "$R/out"
echo 'print(1)' >"$R/app/main.py"
echo 'secret' >"$TMP/outside.txt"
ln -s /etc/passwd "$R/app/passwd-link"
ln -s ../../outside.txt "$R/app/up-link"
printf 'app/ignored.py\n' >"$R/.dockerignore"
echo 'x' >"$R/app/ignored.py"
df() { printf '%s\n' "$@" >"$R/Dockerfile.$name"; }
name=ok; df 'FROM scratch' 'COPY app/main.py /app/'
name=malformed; df 'FROM scratch' '' 'COPY app/main.py'
name=unknown; df 'FROM scratch' 'COPPY app /app'
name=nosrc; df 'FROM scratch' 'WORKDIR /app' 'COPY app/nope.py ./'
name=escape; df 'FROM scratch' 'COPY ../outside.txt /x'
name=linkout; df 'FROM scratch' 'COPY app/passwd-link /x'
name=linkup; df 'FROM scratch' 'COPY app/up-link /x'
name=stage; df 'FROM scratch AS build' 'COPY app /app' 'FROM scratch' 'COPY --from=biuld /app /app'
name=flag; df 'FROM scratch' 'COPY --frm=build app /app'
name=multi; df 'FROM scratch' 'COPY app/main.py .dockerignore /dst'
name=ignored; df 'FROM scratch' 'COPY app/ignored.py /x'
name=run; df 'FROM scratch' 'COPY app /app' 'RUN pip install -r requirements.txt'
name=nofrom; df 'COPY app /app'
name=heredoc; df 'FROM scratch' 'COPY <<EOF /x' 'never closed'
commit_all "$R" init
echo 'previous content' >"$R/out/keep.tar"

nothing_left() { # no output, no temp files next to it
    test ! -e "$R/out/img.tar" && test "$(ls -A "$R/out")" = keep.tar && test "$(cat "$R/out/keep.tar")" = "previous content"
}

bad() { # NAME PATTERN
    (cd "$R" && expect_error "$2" -f "Dockerfile.$1" -o out/img.tar --progress plain) && nothing_left
}

test_expect_success 'sanity: the good Dockerfile builds' '
    cd "$R" && ib -f Dockerfile.ok -o "$TMP/ok.tar" -q >/dev/null
'
test_expect_success 'malformed instruction names file:line' 'bad malformed "Dockerfile.malformed:3: COPY requires at least two arguments"'
test_expect_success 'unknown instruction names file:line' 'bad unknown "Dockerfile.unknown:2: unknown instruction: COPPY"'
test_expect_success 'missing COPY source names file:line' 'bad nosrc "Dockerfile.nosrc:3: COPY app/nope.py: not found"'
test_expect_success 'path escaping the context is refused' 'bad escape "Dockerfile.escape:2: COPY ../outside.txt: path is outside the build context"'
test_expect_success 'absolute symlink cannot reach the host /etc/passwd' 'bad linkout "Dockerfile.linkout:2: COPY app/passwd-link: not found"'
test_expect_success 'relative symlink cannot climb out of the context' 'bad linkup "Dockerfile.linkup:2: COPY app/up-link: not found"'
test_expect_success 'unknown stage in --from names file:line' 'bad stage "Dockerfile.stage:4: .*--from=biuld"'
test_expect_success 'unknown flag names file:line' 'bad flag "Dockerfile.flag:2: unknown flag: --frm"'
test_expect_success 'several sources need a directory destination' 'bad multi "Dockerfile.multi:2: COPY: with more than one source file, the destination must be a directory"'
test_expect_success 'a .dockerignored source is not in the context' 'bad ignored "Dockerfile.ignored:2: COPY app/ignored.py: not found in the build context \(excluded by .dockerignore\)"'
test_expect_success 'RUN fails clearly, naming the line' 'bad run "Dockerfile.run:3: RUN: /bin/sh: not found in the image"'
test_expect_success 'instruction before FROM' 'bad nofrom "Dockerfile.nofrom:1: "'
test_expect_success 'unterminated heredoc' 'bad heredoc "Dockerfile.heredoc:2: "'

test_expect_success 'unknown --target stage' '
    (cd "$R" && expect_error "--target .nope.: no stage of that name" -f Dockerfile.ok --target nope -o out/img.tar) && nothing_left
'
test_expect_success 'unresolvable --tag names the flag' '
    (cd "$R" && expect_error "--tag .no-such-rev.: no such commit" -f Dockerfile.ok --tag no-such-rev -o out/img.tar) && nothing_left
'
test_expect_success 'a Dockerfile that is not committed is not read from disk' '
    cp "$R/Dockerfile.ok" "$R/Dockerfile.new" &&
    (cd "$R" && expect_error "-f Dockerfile.new: not in commit" -f Dockerfile.new -o out/img.tar) && nothing_left
'
test_expect_success 'a non-git context needs --worktree' '
    mkdir -p "$TMP/plain/out" && cp "$R/Dockerfile.ok" "$TMP/plain/Dockerfile" && cp -r "$R/app" "$TMP/plain/" &&
    (cd "$TMP/plain" && expect_error "not in a git repository.*--worktree" -o out/img.tar) &&
    test ! -e "$TMP/plain/out/img.tar" &&
    (cd "$TMP/plain" && ib --worktree -o out/img.tar -q >/dev/null) && test -s "$TMP/plain/out/img.tar"
'
test_expect_success 'a missing context directory' '
    (cd "$R" && expect_error "context /nonexistent: not a directory" /nonexistent -o out/img.tar) && nothing_left
'
test_expect_success 'usage errors exit 2 and name the flag' '
    { rc=0; (cd "$R" && ib --compression brotli -o out/img.tar) || rc=$?; } && test "$rc" = 2 &&
    grep -q "^imgbuild: error: unknown compression .brotli." "$TMP/last.err" || grep -q "brotli" "$TMP/last.err" &&
    { rc=0; (cd "$R" && ib --bogus) || rc=$?; } && test "$rc" = 2 && grep -q "unknown flag --bogus" "$TMP/last.err" &&
    { rc=0; (cd "$R" && ib -f) || rc=$?; } && test "$rc" = 2 && grep -q "missing value" "$TMP/last.err" &&
    nothing_left
'

test_expect_success 'with --progress json a failure ends with an error event (then the one error line)' '
    { rc=0; (cd "$R" && ib -f Dockerfile.nosrc --progress json -o out/img.tar) || rc=$?; } && test "$rc" = 1 &&
    test "$(grep -c "^imgbuild: error: " "$TMP/last.err")" = 1 &&
    grep "^{" "$TMP/last.err" | tail -n 1 | python3 -c "
import json, sys
e = json.loads(sys.stdin.read())
assert e[\"event\"] == \"error\" and e[\"exit\"] == 1 and \"Dockerfile.nosrc:3: COPY app/nope.py: not found\" in e[\"message\"], e" &&
    nothing_left
'

test_expect_success 'a mistyped command is a usage error naming the commands, not a missing context' '
    { rc=0; (cd "$R" && ib biuld) || rc=$?; } && test "$rc" = 2 &&
    grep -q "^imgbuild: error: .biuld. is neither a directory nor a command (build, push" "$TMP/last.err" && nothing_left
'

test_expect_success 'a bad --name or -o fails before any step runs (nothing built, nothing pushed)' '
    for a in "--name Bad/Name|--name: invalid reference .Bad/Name." "--name ok/x:v1|--name ok/x:v1: give the repository only" \
        "-o $TMP/nodir/x.tar|-o $TMP/nodir/x.tar: no such directory" "-o $TMP|-o $TMP: is a directory"; do
        rc=0; (cd "$R" && ib -f Dockerfile.ok --progress plain ${a%%|*}) || rc=$?
        test "$rc" = 2 && grep -q "^imgbuild: error: ${a#*|}" "$TMP/last.err" && ! grep -q "^#" "$TMP/last.err" || exit 1
    done &&
    nothing_left
'
test_expect_success 'a corrupt store blob is detected, never used' '
    cd "$R" && ib -f Dockerfile.ok -o "$TMP/c1.tar" -q >/dev/null &&
    L=$(skopeo inspect --raw oci-archive:"$TMP/c1.tar" | python3 -c "import json,sys;print(json.load(sys.stdin)[\"layers\"][0][\"digest\"][7:])") &&
    M=$(digest_of "$TMP/c1.tar") &&
    printf corrupt >"$IMGBUILD_CACHE/blobs/sha256/${M#sha256:}" &&
    expect_error "corrupt" inspect docker.io/library/repo:sha-$(git -C "$R" rev-parse HEAD)
'

test_expect_success 'an interrupted build leaves neither output nor temp files' '
    B=$TMP/bigrepo && new_repo "$B" && mkdir -p "$B/out" &&
    head -c 40000000 /dev/urandom >"$B/big.bin" && printf "FROM scratch\nCOPY big.bin /\n" >"$B/Dockerfile" &&
    commit_all "$B" big &&
    for sig in INT TERM HUP; do
        (cd "$B" && exec "$IMGBUILD" -o out/img.tar -q >/dev/null 2>"$TMP/int.err") & pid=$!
        sleep 0.2; kill -s $sig $pid 2>/dev/null; rc=0; wait $pid || rc=$?
        # 40 MB of random data cannot be compressed in 0.2 s: the TERM run must have been cut.
        if [ $sig = TERM ]; then test $rc = 143 || { echo "TERM: exit $rc"; exit 1; }; fi
        # Killed mid-way: no file at all. Finished first: a complete, valid tarball. Never a torn one.
        if [ -e "$B/out/img.tar" ]; then
            { test $rc = 0 && skopeo inspect --raw oci-archive:"$B/out/img.tar" >/dev/null && rm "$B/out/img.tar"; } ||
                { echo "$sig: exit $rc with an output file"; exit 1; }
        else test $rc != 0 || { echo "$sig: exit 0 without an output file"; exit 1; }; fi
        test -z "$(ls -A "$B/out")" || { ls -la "$B/out"; exit 1; }
    done
'

test_done
