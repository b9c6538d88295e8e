#!/usr/bin/env bash
# Rootless with subordinate ids (as buildah and podman): an unprivileged user with /etc/subuid and
# /etc/subgid ranges (and newuidmap/newgidmap) builds in a user namespace where its uid is 0 and
# 1..65536 are its subordinate ids. So the base keeps its owners (USER app writes its home), a RUN can
# switch users and chown, supplementary groups work, files only their owner can read still reach the
# layer, a cache mount owned by app persists, the scratch dirs go, and the output belongs to the user.
# IMGBUILD_SUBIDS=0 (or no ranges) keeps the one-uid user namespace of t0012.
. "$(dirname "$0")/lib.sh"

U=ibsubids
if ! id "$U" >/dev/null 2>&1; then useradd -M -s /bin/sh "$U" || { echo "useradd $U failed"; exit 1; }; fi
# useradd gives a range when /etc/login.defs asks for one; make sure there is one either way
grep -q "^$U:" /etc/subuid 2>/dev/null || usermod --add-subuids 600000-665535 "$U" || exit 1
grep -q "^$U:" /etc/subgid 2>/dev/null || usermod --add-subgids 600000-665535 "$U" || exit 1
command -v newuidmap >/dev/null && command -v newgidmap >/dev/null ||
    { echo "newuidmap/newgidmap are required (package uidmap: scripts/install-deps.sh test)"; exit 1; }
SUBUID=$(grep "^$U:" /etc/subuid | head -n 1 | cut -d: -f2)

W=$TMP/subids
mkdir -p "$W" && chmod 755 "$TMP" "$W"
B=$W/base
new_repo "$B"
bb_rootfs "$B/rootfs" sh id touch chmod chown cat echo ls mkdir stat || exit 1
mkdir -p "$B/rootfs/home/app" && touch "$B/rootfs/home/app/.keep"
printf 'root:x:0:\napp:x:1000:\naudio:x:29:app\n' >"$B/rootfs/etc/group"
printf 'FROM scratch\nCOPY rootfs/ /\nCOPY --chown=1000:1000 rootfs/home/app/ /home/app/\n' >"$B/Dockerfile"
commit_all "$B" base
R=$W/app
new_repo "$R"
cat >"$R/Dockerfile" <<'DF'
FROM local/sbb:base
RUN chown 1234:1235 /etc/group && id -u > /root-uid
USER app
RUN touch /home/app/secret && chmod 600 /home/app/secret && echo mine > /home/app/secret && id > /home/app/id
RUN --mount=type=cache,target=/home/app/.cache,uid=1000,gid=1000 sh -c 'ls /home/app/.cache > /home/app/seen; touch /home/app/.cache/wheel-$(cat /home/app/id | cut -c1-3)'
DF
printf 'FROM local/sbb:base\nUSER app\nRUN id -u > /home/app/uid\n' >"$R/Dockerfile.user"
commit_all "$R" app
chown -R "$U" "$W"

test_expect_success 'with subordinate ids a rootless RUN keeps owners, switches users, chowns, reads 0600 files' '
    as_user "$B" --name local/sbb -o "$W/base.tar" -q >/dev/null && as_user "$B" load "$W/base.tar" >/dev/null &&
    sed -i "s|local/sbb:base|local/sbb:sha-$(git -c safe.directory="*" -C "$B" rev-parse HEAD)|" "$R/Dockerfile" "$R/Dockerfile.user" &&
    setpriv --reuid="$U" --regid="$(id -g "$U")" --clear-groups env HOME="$W" git -C "$R" -c user.email=t@e -c user.name=t commit -qam base &&
    as_user "$R" -o "$W/app.tar" --progress plain >/dev/null &&
    test "$(stat -c %U "$W/app.tar")" = "$U" &&
    unpack_image "$W/app.tar" "$TMP/u" && F=$TMP/u/rootfs &&
    test "$(stat -c %u:%g "$F/etc/group")" = 1234:1235 && test "$(cat "$F/root-uid")" = 0 &&
    test "$(stat -c "%a %u:%g" "$F/home/app" "$F/home/app/secret")" = "755 1000:1000
600 1000:1000" &&
    test "$(cat "$F/home/app/secret")" = mine &&
    grep -q "^uid=1000(app) gid=1000(app) groups=29(audio),1000(app)" "$F/home/app/id" &&
    test ! -e "$F/home/app/.cache/wheel-uid" &&
    test -z "$(ls -A "$W/cache/tmp" 2>/dev/null)"
'

test_expect_success 'the cache mount is owned by app and survives to the next build; prune works without root' '
    echo "# again" >>"$R/Dockerfile" &&
    setpriv --reuid="$U" --regid="$(id -g "$U")" --clear-groups env HOME="$W" git -C "$R" -c user.email=t@e -c user.name=t commit -qam again &&
    sed -i "s|/home/app/seen;|/home/app/seen2;|" "$R/Dockerfile" &&
    setpriv --reuid="$U" --regid="$(id -g "$U")" --clear-groups env HOME="$W" git -C "$R" -c user.email=t@e -c user.name=t commit -qam seen2 &&
    as_user "$R" -o "$W/app2.tar" -q >/dev/null &&
    unpack_image "$W/app2.tar" "$TMP/u2" && grep -qx "wheel-uid" "$TMP/u2/rootfs/home/app/seen2" &&
    find "$W/cache" -name "wheel-uid" -printf "%U\n" | grep -qx "$((SUBUID + 999))" &&
    as_user "$R" cache prune --all >/dev/null && test -z "$(ls -A "$W/cache/tmp" 2>/dev/null)"
'

layers_but_last() { skopeo inspect --raw oci-archive:"$1" | python3 -c "import json,sys; print(*[l[\"digest\"] for l in json.load(sys.stdin)[\"layers\"][:-1]])"; }

test_expect_success 'the same build as root gives the same layers (the last one saw another cache mount)' '
    export IMGBUILD_CACHE="$TMP/rootcache" && ib load "$W/base.tar" >/dev/null &&
    cp -a "$R" "$TMP/rootapp" && chown -R root:root "$TMP/rootapp" &&
    (cd "$TMP/rootapp" && ib -o "$TMP/root.tar" -q >/dev/null) &&
    test -n "$(layers_but_last "$TMP/root.tar")" &&
    test "$(layers_but_last "$TMP/root.tar")" = "$(layers_but_last "$W/app2.tar")"
'

test_expect_success 'IMGBUILD_SUBIDS=0 keeps the one-uid namespace: USER app is refused, saying how to get ids' '
    export IMGBUILD_SUBIDS=0 &&
    ! as_user "$R" -f Dockerfile.user -o "$W/one.tar" --no-cache >/dev/null &&
    tail -n 1 "$TMP/last.err" | grep -qE "^imgbuild: error: Dockerfile.user:3: RUN as USER 1000:1000 needs a root build or subordinate ids" &&
    test ! -e "$W/one.tar"
'

test_expect_success 'killing (-9) or interrupting (-INT) the imgbuild a runner started stops the build in the namespace' '
    unset IMGBUILD_SUBIDS &&
    printf "FROM local/sbb:base\nRUN sleep 60\n" >"$R/Dockerfile.slow" &&
    sed -i "s|local/sbb:base|local/sbb:sha-$(git -c safe.directory="*" -C "$B" rev-parse HEAD)|" "$R/Dockerfile.slow" &&
    chown "$U" "$R/Dockerfile.slow" &&
    (as_user "$R" --worktree -f Dockerfile.slow -o "$W/slow.tar" >/dev/null 2>&1 &) &&
    for i in $(seq 1 100); do pgrep -u "$U" -x sleep >/dev/null && break; sleep 0.1; done &&
    pgrep -u "$U" -x sleep >/dev/null &&
    waiter=$(pgrep -u "$U" -o -f "$IMGBUILD") && kill -9 "$waiter" &&
    for i in $(seq 1 50); do pgrep -u "$U" >/dev/null || break; sleep 0.1; done &&
    ! pgrep -u "$U" -a && test ! -e "$W/slow.tar" &&
    (as_user "$R" --worktree -f Dockerfile.slow -o "$W/slow.tar" >/dev/null 2>&1 &) &&
    for i in $(seq 1 100); do pgrep -u "$U" -x sleep >/dev/null && break; sleep 0.1; done &&
    waiter=$(pgrep -u "$U" -o -f "$IMGBUILD") && kill -INT "$waiter" &&
    for i in $(seq 1 100); do pgrep -u "$U" >/dev/null || break; sleep 0.1; done &&
    ! pgrep -u "$U" -a && test ! -e "$W/slow.tar"
'

test_done
