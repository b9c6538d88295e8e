#!/usr/bin/env bash
# More of Docker's Dockerfile semantics, each checked against BuildKit's
# frontend: RUN heredocs (the shell gets the command line with its heredocs;
# a lone heredoc is the script, "#!" picks the interpreter), ARGs inherited by
# a stage built FROM a stage, proxy --build-args in RUN but nowhere in the
# image or the cache key, --from taken literally, RUN secrets as env=,
# mode/uid/gid, EXPOSE word splitting, STOPSIGNAL validation, VOLUME JSON
# expansion, ADD --unpack.
. "$(dirname "$0")/lib.sh"

B=$TMP/base
new_repo "$B"
bb_rootfs "$B/rootfs" sh cat echo awk test wc stat ls env || exit 1
mkdir -p "$B/rootfs/tmp"
printf 'FROM scratch\nCOPY rootfs/ /\n' >"$B/Dockerfile"
commit_all "$B" base
(cd "$B" && ib --name local/bb -o "$TMP/bb.tar" -q >/dev/null && ib load "$TMP/bb.tar" >/dev/null) || exit 1
BASE=local/bb:sha-$(git -C "$B" rev-parse HEAD)

config() { skopeo inspect --config oci-archive:"$1"; }

test_expect_success 'RUN heredocs: the shell gets the line and its heredocs; a lone heredoc is the script' '
    R=$TMP/hd && new_repo "$R" &&
    printf "%s\n" \
        "FROM $BASE" \
        "ENV WHO=world" \
        "RUN <<FILE1 cat > /file1 && <<FILE2 cat > /file2" \
        "I am" "first" "FILE1" "I am" "second" "FILE2" \
        "RUN cat <<EOT > /greeting" "hello \$WHO" "EOT" \
        "RUN cat <<'"'"'EOT'"'"' > /literal" "\$WHO stays" "EOT" \
        "RUN <<EOT" "echo \"script for \$WHO\" > /script.txt" "echo line2 >> /script.txt" "EOT" \
        "RUN <<-EOT" "	echo tabbed > /tabbed.txt" "	EOT" \
        "RUN cat <<-EOT > /chomp.txt" "	a" "		b" "	EOT" \
        "RUN <<EOT" "#!/bin/awk -f" "BEGIN { print \"from awk\" > \"/awk.txt\" }" "EOT" >"$R/Dockerfile" &&
    commit_all "$R" hd &&
    (cd "$R" && ib -o "$TMP/hd.tar" --progress plain >/dev/null) &&
    unpack_image "$TMP/hd.tar" "$TMP/hdb" && F=$TMP/hdb/rootfs &&
    test "$(cat "$F/file1")" = "I am
first" &&
    test "$(cat "$F/file2")" = "I am
second" &&
    test "$(cat "$F/greeting")" = "hello world" &&
    test "$(cat "$F/literal")" = "\$WHO stays" &&
    test "$(cat "$F/script.txt")" = "script for world
line2" &&
    test "$(cat "$F/tabbed.txt")" = tabbed &&
    test "$(cat "$F/chomp.txt")" = "a
b" &&
    test "$(cat "$F/awk.txt")" = "from awk" &&
    test ! -e "$F/dev/pipes"
'

test_expect_success 'a changed "#!" heredoc script reruns the step' '
    R=$TMP/hd &&
    (cd "$R" && ib -o "$TMP/hd2.tar" --progress plain >/dev/null) &&
    test "$(grep -c "RUN .* CACHED" "$TMP/last.err")" = 7 &&
    sed -i "s/from awk/awk again/" "$R/Dockerfile" && commit_all "$R" awk2 &&
    (cd "$R" && ib -o "$TMP/hd3.tar" --progress plain >/dev/null) &&
    test "$(grep -c "RUN .* CACHED" "$TMP/last.err")" = 6 &&
    unpack_image "$TMP/hd3.tar" "$TMP/hdb3" && test "$(cat "$TMP/hdb3/rootfs/awk.txt")" = "awk again"
'

test_expect_success 'a stage FROM another stage inherits its ARGs' '
    R=$TMP/arg && new_repo "$R" &&
    printf "ARG BASE\nFROM \$BASE AS base\nARG V=from-base\nFROM base\nRUN echo \"v=\$V\" > /v.txt\n" >"$R/Dockerfile" &&
    commit_all "$R" arg &&
    (cd "$R" && ib --build-arg BASE="$BASE" -o "$TMP/arg.tar" -q >/dev/null) &&
    unpack_image "$TMP/arg.tar" "$TMP/argb" && test "$(cat "$TMP/argb/rootfs/v.txt")" = v=from-base
'

test_expect_success 'proxy build-args reach RUN without ARG, stay out of config, history and cache key' '
    R=$TMP/px && new_repo "$R" &&
    printf "FROM %s\nRUN echo \"hp=\$HTTP_PROXY lp=\$http_proxy np=\$NO_PROXY\" > /proxy.txt\n" "$BASE" >"$R/Dockerfile" &&
    commit_all "$R" px &&
    (cd "$R" && ib --build-arg HTTP_PROXY=http://proxy.example:3128 --build-arg no_proxy=localhost \
        -o "$TMP/px.tar" --progress plain >/dev/null) &&
    ! grep -q "not consumed" "$TMP/last.err" &&
    unpack_image "$TMP/px.tar" "$TMP/pxb" &&
    test "$(cat "$TMP/pxb/rootfs/proxy.txt")" = "hp=http://proxy.example:3128 lp=http://proxy.example:3128 np=localhost" &&
    ! config "$TMP/px.tar" | grep -q "proxy.example" &&
    (cd "$R" && ib --build-arg HTTP_PROXY=http://other.example:8080 -o "$TMP/px2.tar" --progress plain >/dev/null) &&
    grep -qE "RUN .* CACHED" "$TMP/last.err" &&
    test "$(digest_of "$TMP/px2.tar")" = "$(digest_of "$TMP/px.tar")"
'

test_expect_success 'COPY --from and RUN --mount from= take no variables, in every stage' '
    R=$TMP/from && new_repo "$R" &&
    printf "ARG SRC=build\nFROM %s AS build\nRUN echo x > /x\nFROM %s\nCOPY --from=\$SRC /x /x\n" "$BASE" "$BASE" >"$R/Dockerfile" &&
    commit_all "$R" from &&
    (cd "$R" && expect_error "Dockerfile:5: COPY --from=\\\$SRC: variable expansion is not supported for --from" -o "$TMP/from.tar") &&
    printf "ARG SRC=build\nFROM %s AS build\nFROM %s\nRUN --mount=type=bind,from=\${SRC},target=/m true\n" "$BASE" "$BASE" >"$R/Dockerfile" &&
    commit_all "$R" mount &&
    (cd "$R" && expect_error "Dockerfile:4: RUN --mount=.*from=.*doesn.t support variable expansion" -o "$TMP/from.tar") &&
    printf "FROM %s AS unused\nCOPY --from=\$X /x /x\nFROM %s\nRUN true\n" "$BASE" "$BASE" >"$R/Dockerfile" &&
    commit_all "$R" unused &&
    (cd "$R" && expect_error "Dockerfile:2: COPY --from=" -o "$TMP/from.tar")
'

test_expect_success 'secret mounts: env=, target= with env=, mode/uid/gid, optional secret skipped' '
    R=$TMP/sec && new_repo "$R" && printf "tok-%s" "$RANDOM$RANDOM" >"$TMP/tok" &&
    printf "%s\n" "FROM $BASE" \
        "RUN --mount=type=secret,id=tok,env=TOKEN echo \"len=\${#TOKEN}\" > /env-len.txt && test ! -e /run/secrets/tok" \
        "RUN --mount=type=secret,id=tok,env=TOKEN,target=/etc/tok.txt test \"\$(cat /etc/tok.txt)\" = \"\$TOKEN\" && echo same > /both.txt" \
        "RUN --mount=type=secret,id=tok stat -c \"%a %u %g\" /run/secrets/tok > /default.txt" \
        "RUN --mount=type=secret,id=tok,mode=0440,uid=1000,gid=1000 stat -c \"%a %u %g\" /run/secrets/tok > /stat.txt" \
        "RUN --mount=type=secret,source=tok,target=/s/t,required wc -c < /s/t > /src.txt" \
        "RUN --mount=type=secret,id=missing,env=NOPE echo \"nope=\${NOPE:-unset}\" > /nope.txt" >"$R/Dockerfile" &&
    commit_all "$R" sec &&
    (cd "$R" && ib --secret id=tok,src="$TMP/tok" -o "$TMP/sec.tar" -q >/dev/null) &&
    unpack_image "$TMP/sec.tar" "$TMP/secb" && F=$TMP/secb/rootfs &&
    test "$(cat "$F/env-len.txt")" = "len=$(wc -c <"$TMP/tok" | tr -d " ")" &&
    test "$(cat "$F/both.txt")" = same &&
    test "$(cat "$F/default.txt")" = "400 0 0" &&
    test "$(cat "$F/stat.txt")" = "440 1000 1000" &&
    test "$(tr -d " " <"$F/src.txt")" = "$(wc -c <"$TMP/tok" | tr -d " ")" &&
    test "$(cat "$F/nope.txt")" = nope=unset &&
    test ! -e "$F/etc/tok.txt" && test ! -e "$F/run" && test ! -e "$F/s" &&
    secret=$(cat "$TMP/tok") &&
    ! grep -aqF "$secret" "$TMP/sec.tar" &&
    mkdir -p "$TMP/secx" && tar -xf "$TMP/sec.tar" -C "$TMP/secx" &&
    for f in "$TMP/secx"/blobs/sha256/*; do ! (gzip -dc "$f" 2>/dev/null || cat "$f") | grep -aqF "$secret" || exit 1; done &&
    ! grep -raqF "$secret" "$IMGBUILD_CACHE/cache" &&
    printf "FROM %s\nRUN --mount=type=secret,required true\n" "$BASE" >"$R/Dockerfile" && commit_all "$R" bad &&
    (cd "$R" && expect_error "Dockerfile:2: RUN --mount=.*one of source, target required" -o "$TMP/sec2.tar")
'

test_expect_success 'EXPOSE splits expanded words; STOPSIGNAL is checked; VOLUME JSON is expanded' '
    R=$TMP/cfg && new_repo "$R" &&
    printf "%s\n" "FROM scratch" "ENV PORTS=\"80 443/udp\" D=/data" "ARG SIG=sigquit" "EXPOSE \$PORTS 8000-8001" \
        "STOPSIGNAL \$SIG" "VOLUME [\"\$D\", \"/lit\"]" >"$R/Dockerfile" &&
    commit_all "$R" cfg &&
    (cd "$R" && ib -o "$TMP/cfg.tar" -q >/dev/null) &&
    config "$TMP/cfg.tar" | python3 -c "
import json, sys
c = json.load(sys.stdin)[\"config\"]
assert sorted(c[\"ExposedPorts\"]) == [\"443/udp\", \"80/tcp\", \"8000/tcp\", \"8001/tcp\"], c[\"ExposedPorts\"]
assert c[\"StopSignal\"] == \"sigquit\", c[\"StopSignal\"]
assert sorted(c[\"Volumes\"]) == [\"/data\", \"/lit\"], c[\"Volumes\"]
" &&
    for s in SIGFOO 0 "SIGRTMIN+16" ""; do
        printf "FROM scratch\nARG S=%s\nSTOPSIGNAL \${S:-FOO}\n" "$s" >"$R/Dockerfile" && commit_all "$R" "sig $s" &&
        (cd "$R" && expect_error "Dockerfile:3: STOPSIGNAL: invalid signal: " -o "$TMP/sig.tar") || exit 1
    done &&
    for s in 9 SIGRTMIN+3 rtmax-1 TERM; do
        printf "FROM scratch\nSTOPSIGNAL %s\n" "$s" >"$R/Dockerfile" && commit_all "$R" "sig $s" &&
        (cd "$R" && ib -o "$TMP/sig.tar" -q >/dev/null) && config "$TMP/sig.tar" | grep -qF "\"StopSignal\": \"$s\"" || exit 1
    done
'

test_expect_success 'ADD --unpack=false copies a local archive as is; the default unpacks' '
    R=$TMP/add && new_repo "$R" && mkdir -p "$TMP/pk/pkg" && echo v >"$TMP/pk/pkg/f" &&
    tar -C "$TMP/pk" -czf "$R/a.tgz" pkg &&
    printf "FROM scratch\nADD --unpack=false a.tgz /kept/\nADD a.tgz /unpacked/\nADD --unpack=true a.tgz /also/\n" >"$R/Dockerfile" &&
    commit_all "$R" add &&
    (cd "$R" && ib -o "$TMP/add.tar" -q >/dev/null) &&
    unpack_image "$TMP/add.tar" "$TMP/addb" && F=$TMP/addb/rootfs &&
    cmp "$F/kept/a.tgz" "$R/a.tgz" && test "$(cat "$F/unpacked/pkg/f")" = v && test "$(cat "$F/also/pkg/f")" = v &&
    printf "FROM scratch\nADD --unpack=false nothere.tgz /x/\n" >"$R/Dockerfile" && commit_all "$R" missing &&
    (cd "$R" && expect_error "Dockerfile:2: ADD nothere.tgz" -o "$TMP/add2.tar")
'

layer_digests() { skopeo inspect --raw oci-archive:"$1" | python3 -c "import json,sys; print(*[l[\"digest\"] for l in json.load(sys.stdin)[\"layers\"]])"; }
nlayers() { skopeo inspect --raw oci-archive:"$1" | python3 -c "import json,sys; print(len(json.load(sys.stdin)[\"layers\"]))"; }
# history_empty TAR N: empty_layer of the Nth history entry (0-based, from the end when negative)
history_empty() { config "$1" | python3 -c "import json,sys; print(json.load(sys.stdin)[\"history\"][$2].get(\"empty_layer\", False))"; }

test_expect_success 'WORKDIR makes a missing directory in its own layer, owned by the USER; an existing one adds none' '
    R=$TMP/wd && new_repo "$R" &&
    mkdir -p "$R/rootfs/data" "$R/rootfs/home" && ln -s /data "$R/rootfs/srv" && touch "$R/rootfs/data/.keep" "$R/rootfs/home/.keep" &&
    printf "%s\n" "FROM $BASE" "COPY rootfs/ /" "USER app" "WORKDIR /home/app/work" "WORKDIR /srv/site" \
        "USER 0" "WORKDIR /home" "WORKDIR /" >"$R/Dockerfile" &&
    commit_all "$R" wd &&
    (cd "$R" && SOURCE_DATE_EPOCH=1700000000 ib -o "$TMP/wd.tar" >"$TMP/wd.out" 2>&1) &&
    test "$(nlayers "$TMP/wd.tar")" = $(($(nlayers "$TMP/bb.tar") + 3)) &&
    test "$(history_empty "$TMP/wd.tar" -1)" = True && test "$(history_empty "$TMP/wd.tar" -2)" = True &&
    test "$(history_empty "$TMP/wd.tar" -4)" = False &&
    unpack_image "$TMP/wd.tar" "$TMP/wdu" && F=$TMP/wdu/rootfs &&
    test "$(stat -c "%a %u:%g" "$F/home/app" "$F/home/app/work")" = "755 1000:1000
755 1000:1000" &&
    test "$(stat -c "%a %u:%g" "$F/home")" = "755 0:0" &&
    test -L "$F/srv" && test "$(stat -c "%a %u:%g" "$F/data/site")" = "755 1000:1000" &&
    test "$(config "$TMP/wd.tar" | python3 -c "import json,sys; print(json.load(sys.stdin)[\"config\"][\"WorkingDir\"])")" = / &&
    grep -q "WORKDIR /home/app/work.*BUILT" "$TMP/wd.out" &&
    echo notes >"$R/NOTES" && commit_all "$R" notes &&
    (cd "$R" && SOURCE_DATE_EPOCH=1700000000 ib -o "$TMP/wd2.tar" >"$TMP/wd2.out" 2>&1) &&
    grep -q "WORKDIR /home/app/work.*CACHED" "$TMP/wd2.out" &&
    test "$(layer_digests "$TMP/wd.tar")" = "$(layer_digests "$TMP/wd2.tar")"
'

test_expect_success 'on scratch, WORKDIR and a later COPY see the directories of earlier layers (owner kept)' '
    R=$TMP/wds && new_repo "$R" && echo a >"$R/a" && echo b >"$R/b" &&
    printf "%s\n" "FROM scratch" "COPY --chown=5:6 a /app/" "WORKDIR /app" "COPY b ./" >"$R/Dockerfile" &&
    commit_all "$R" wds &&
    (cd "$R" && ib -o "$TMP/wds.tar" -q >/dev/null) &&
    test "$(nlayers "$TMP/wds.tar")" = 2 &&
    unpack_image "$TMP/wds.tar" "$TMP/wdsu" &&
    test "$(stat -c "%u:%g" "$TMP/wdsu/rootfs/app" "$TMP/wdsu/rootfs/app/b")" = "5:6
0:0"
'

test_expect_success 'WORKDIR owners as BuildKit gives them: a name takes its primary gid, an unknown one 0:0' '
    R=$TMP/wdu2 && new_repo "$R" && mkdir -p "$R/etc" &&
    printf "root:x:0:0::/root:/bin/sh\nsvc:x:1500:29::/srv:/bin/sh\n" >"$R/etc/passwd" &&
    printf "%s\n" "FROM $BASE" "COPY etc/passwd /etc/passwd" "USER svc" "WORKDIR /w/svc" "USER nobody-here" "WORKDIR /w/none" \
        "USER 1234" "WORKDIR /w/num" "USER svc:7" "WORKDIR /w/grp" "USER 0" >"$R/Dockerfile" && commit_all "$R" wdu2 &&
    (cd "$R" && ib -o "$TMP/wdu2.tar" -q >/dev/null) && unpack_image "$TMP/wdu2.tar" "$TMP/wdu2u" &&
    test "$(cd "$TMP/wdu2u/rootfs/w" && stat -c "%n %u:%g" svc none num grp)" = "svc 1500:29
none 0:0
num 1234:1234
grp 1500:7"
'

# An ssh-agent holding a fresh key, and ssh-add with its libraries in an image, to list the keys from inside.
S=$TMP/ssh
mkdir -p "$S/app/rootfs/usr/bin" && cp /usr/bin/ssh-add "$S/app/rootfs/usr/bin/" || exit 1
for l in $(ldd /usr/bin/ssh-add | grep -o "/[^ ]*"); do mkdir -p "$S/app/rootfs$(dirname "$l")" && cp -L "$l" "$S/app/rootfs$l" || exit 1; done
ssh-keygen -q -t ed25519 -N "" -C imgbuild-ssh-test -f "$S/key" || exit 1
ssh-agent -D -a "$S/agent.sock" >/dev/null 2>&1 &
AGENT_PID=$!
trap 'kill $AGENT_PID 2>/dev/null; cleanup' EXIT
for i in $(seq 1 50); do test -S "$S/agent.sock" && break; sleep 0.1; done
SSH_AUTH_SOCK=$S/agent.sock ssh-add -q "$S/key" 2>/dev/null || { echo "ssh-add failed"; exit 1; }

test_expect_success 'RUN --mount=type=ssh forwards the --ssh agent (SSH_AUTH_SOCK set); never in the layer or the key' '
    new_repo "$S/app" &&
    printf "%s\n" "FROM $BASE" "COPY rootfs/ /" \
        "RUN --mount=type=ssh ssh-add -l > /keys; echo \$SSH_AUTH_SOCK > /sock" \
        "RUN --mount=type=ssh,id=deploy,target=/tmp/agent,required=true ssh-add -l > /keys2" \
        "RUN --mount=type=ssh,id=absent sh -c \"test -z \\\"\\\$SSH_AUTH_SOCK\\\" && echo skipped > /absent\"" >"$S/app/Dockerfile" &&
    commit_all "$S/app" ssh &&
    (cd "$S/app" && SSH_AUTH_SOCK=$S/agent.sock ib --ssh default --ssh deploy="$S/agent.sock" -o "$TMP/ssh.tar" -q >/dev/null) &&
    unpack_image "$TMP/ssh.tar" "$TMP/sshu" && F=$TMP/sshu/rootfs &&
    test "$(cat "$F/keys")" = "$(SSH_AUTH_SOCK=$S/agent.sock ssh-add -l)" && grep -q imgbuild-ssh-test "$F/keys" &&
    test "$(cat "$F/keys2")" = "$(cat "$F/keys")" &&
    test "$(cat "$F/sock")" = /run/buildkit/ssh_agent.0 && test "$(cat "$F/absent")" = skipped &&
    test ! -e "$F/run/buildkit" && test ! -e "$F/tmp/agent" &&
    ln -s "$S/agent.sock" "$S/other.sock" &&
    (cd "$S/app" && ib --ssh default="$S/other.sock" --ssh deploy="$S/other.sock" -o "$TMP/ssh2.tar" --progress plain >/dev/null) &&
    test "$(grep -c " CACHED " "$TMP/last.err")" = 4 &&
    (cd "$S/app" && expect_error "Dockerfile:4: RUN --mount=type=ssh,id=deploy.*ssh agent .deploy. was not given" \
        --ssh default="$S/agent.sock" --no-cache -o "$TMP/ssh3.tar") && test ! -e "$TMP/ssh3.tar"
'

test_expect_success '--ssh refuses what is not an agent socket, and default without SSH_AUTH_SOCK' '
    cd "$S/app" &&
    { rc=0; (unset SSH_AUTH_SOCK; ib --ssh default -o "$TMP/x.tar") 2>"$TMP/e1" || rc=$?; } && test $rc = 2 &&
    grep -q "SSH_AUTH_SOCK is not set" "$TMP/e1" &&
    { rc=0; ib --ssh default="$S/key" -o "$TMP/x.tar" 2>"$TMP/e2" || rc=$?; } && test $rc = 2 &&
    grep -q "not an agent socket" "$TMP/e2" && ! grep -q "PRIVATE KEY" "$TMP/e2" && test ! -e "$TMP/x.tar"
'

test_done
