#!/usr/bin/env bash
# Multi-stage builds: COPY --from by name and index, --target, global ARGs in
# FROM, --build-arg, stages the target does not need are skipped, heredocs,
# ADD of a local tar archive, --chown by name from the image's /etc/passwd.
. "$(dirname "$0")/lib.sh"

R=$TMP/repo
new_repo "$R"
mkdir -p "$R/web/static" "$R/worker" "$R/etc"
echo 'from flask import Flask' >"$R/web/app.py"
echo 'h1{}' >"$R/web/static/site.css"
echo 'import rq' >"$R/worker/tasks.py"
printf 'root:x:0:0:root:/root:/bin/sh\nwepp:x:1234:1234::/home/wepp:/bin/sh\n' >"$R/etc/passwd"
printf 'root:x:0:\nwepp:x:1234:\nstaff:x:50:\n' >"$R/etc/group"
mkdir -p "$TMP/vendor/pkg" && echo vendored >"$TMP/vendor/pkg/lib.txt"
tar -czf "$R/vendor.tar.gz" -C "$TMP/vendor" pkg
cat >"$R/Dockerfile" <<'DF'
ARG BASE=scratch
ARG FLAVOR=web
FROM ${BASE} AS users
COPY etc/passwd etc/group /etc/

FROM users AS assets
COPY web/static/ /assets/

FROM scratch AS broken
RUN echo this stage is never needed by the default target

FROM users AS final
ARG FLAVOR
ARG GREETING=hello
ENV FLAVOR=${FLAVOR}
COPY --from=assets /assets /app/static
COPY --from=0 /etc/passwd /app/passwd.copy
COPY --chown=wepp:staff ${FLAVOR}/ /app/${FLAVOR}/
ADD vendor.tar.gz /opt/
COPY <<EOF /app/greeting.txt
${GREETING} from ${FLAVOR}
EOF
CMD ["python", "/app/web/app.py"]
DF
commit_all "$R" init

test_expect_success 'default target builds only the stages it needs' '
    cd "$R" && ib --progress plain -o "$TMP/f.tar" >"$TMP/out" &&
    ! grep -q "\[broken" "$TMP/last.err" &&
    grep -q "\[assets" "$TMP/last.err" &&
    unpack_image "$TMP/f.tar" "$TMP/b" &&
    test "$(cat "$TMP/b/rootfs/app/static/site.css")" = "h1{}" &&
    cmp "$TMP/b/rootfs/app/passwd.copy" "$R/etc/passwd" &&
    test "$(stat -c %u:%g "$TMP/b/rootfs/app/web/app.py")" = 1234:50 &&
    test "$(stat -c %u:%g "$TMP/b/rootfs/app/web")" = 1234:50 &&
    test "$(cat "$TMP/b/rootfs/opt/pkg/lib.txt")" = vendored &&
    test ! -e "$TMP/b/rootfs/opt/vendor.tar.gz" &&
    test "$(cat "$TMP/b/rootfs/app/greeting.txt")" = "hello from web"
'

test_expect_success '--build-arg changes ARGs, including one declared before FROM' '
    cd "$R" && ib --build-arg FLAVOR=worker --build-arg GREETING=hi -o "$TMP/w.tar" -q >/dev/null &&
    unpack_image "$TMP/w.tar" "$TMP/bw" &&
    test -f "$TMP/bw/rootfs/app/worker/tasks.py" && test ! -e "$TMP/bw/rootfs/app/web" &&
    test "$(cat "$TMP/bw/rootfs/app/greeting.txt")" = "hi from worker" &&
    skopeo inspect --config oci-archive:"$TMP/w.tar" | grep -q "FLAVOR=worker"
'

test_expect_success 'an unused --build-arg is reported' '
    cd "$R" && ib --build-arg NOPE=1 -o "$TMP/u.tar" -q >/dev/null &&
    grep -q "build-arg NOPE was not consumed" "$TMP/last.err"
'

test_expect_success '--target builds an intermediate stage' '
    cd "$R" && ib --target assets -o "$TMP/a.tar" -q >/dev/null &&
    unpack_image "$TMP/a.tar" "$TMP/ba" &&
    test -f "$TMP/ba/rootfs/assets/site.css" && test -f "$TMP/ba/rootfs/etc/passwd" && test ! -e "$TMP/ba/rootfs/app"
'

test_expect_success '--target of the stage with RUN fails naming the line' '
    cd "$R" && expect_error "^imgbuild: error: Dockerfile:10: RUN: /bin/sh: not found in the image" --target broken -o "$TMP/broken.tar" &&
    test ! -e "$TMP/broken.tar"
'

test_expect_success 'a FROM of a loaded image reuses its layers' '
    cd "$R" && ib load "$TMP/f.tar" >"$TMP/load.out" &&
    grep -q "Loaded image: docker.io/library/repo:sha-" "$TMP/load.out" &&
    name=$(sed -n "s/^Loaded image: \(docker.io[^ ]*\) .*/\1/p" "$TMP/load.out") &&
    mkdir -p "$TMP/child" && cd "$TMP/child" && new_repo . &&
    printf "FROM %s\nCOPY extra.txt /app/\nUSER wepp\n" "$name" >Dockerfile && echo extra >extra.txt && commit_all . child &&
    ib -o "$TMP/child.tar" -q >/dev/null &&
    base_layers=$(skopeo inspect --raw oci-archive:"$TMP/f.tar" | python3 -c "import json,sys;print(\" \".join(l[\"digest\"] for l in json.load(sys.stdin)[\"layers\"]))") &&
    child_layers=$(skopeo inspect --raw oci-archive:"$TMP/child.tar" | python3 -c "import json,sys;print(\" \".join(l[\"digest\"] for l in json.load(sys.stdin)[\"layers\"][:-1]))") &&
    test "$base_layers" = "$child_layers" &&
    skopeo inspect --raw oci-archive:"$TMP/child.tar" | grep -q "org.opencontainers.image.base.digest" &&
    skopeo inspect --config oci-archive:"$TMP/child.tar" | grep -q "\"User\": \"wepp\"" &&
    unpack_image "$TMP/child.tar" "$TMP/bc" && test -f "$TMP/bc/rootfs/app/web/app.py" && test -f "$TMP/bc/rootfs/app/extra.txt"
'

test_done
