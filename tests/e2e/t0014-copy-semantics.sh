#!/usr/bin/env bash
# COPY/ADD where they differ from a naive copy, checked against what BuildKit
# (dockerfile2llb + fsutil copy) does: the destination is resolved through the
# image's symlinks (a usrmerge /bin -> usr/bin stays a link and RUN still
# finds /bin/sh), an existing directory is copied into, a wildcard matching
# nothing is skipped, --exclude filters the sources too, --chmod is expanded,
# --chown owns the parent directories COPY creates (only those), and unquoted
# heredoc bodies keep POSIX backslash rules.
. "$(dirname "$0")/lib.sh"

layer_listing() { # TAR INDEX -> "mode uid/gid name[ -> target]" lines of that layer
    local L
    L=$(skopeo inspect --raw oci-archive:"$1" | python3 -c "import json,sys;print(json.load(sys.stdin)[\"layers\"][$2][\"digest\"][7:])")
    tar -xOf "$1" "blobs/sha256/$L" | tar -tzv --numeric-owner | awk '{l=$1" "$2" "$6; for (i=7;i<=NF;i++) l=l" "$i; print l}'
}

# A usrmerge base (Debian 12 / Ubuntu layout): /bin -> usr/bin, busybox in
# /usr/bin; plus an absolute link, a link climbing above the root, and an
# existing /home and /etc.
B=$TMP/base
new_repo "$B"
bb_rootfs "$B/rootfs" sh cat echo ls || exit 1
mkdir -p "$B/rootfs/usr" "$B/rootfs/home" "$B/rootfs/srv/real" "$B/rootfs/etc/real-conf" "$B/rootfs/opt" &&
    mv "$B/rootfs/bin" "$B/rootfs/usr/bin" && ln -s usr/bin "$B/rootfs/bin" &&
    ln -s /srv/real "$B/rootfs/opt/app" && ln -s ../../../../etc/real-conf "$B/rootfs/etc/conf" &&
    touch "$B/rootfs/srv/real/.keep" "$B/rootfs/etc/real-conf/.keep" "$B/rootfs/home/.keep" || exit 1
printf 'FROM scratch\nCOPY rootfs/ /\n' >"$B/Dockerfile"
commit_all "$B" base
(cd "$B" && ib --name local/usrmerge -o "$TMP/base.tar" -q >/dev/null && ib load "$TMP/base.tar" >/dev/null) || exit 1
BASE=local/usrmerge:sha-$(git -C "$B" rev-parse HEAD)

# app DIR: a repo whose Dockerfile is FROM the base plus stdin.
app() {
    new_repo "$1" && { echo "FROM $BASE"; cat; } >"$1/Dockerfile"
}

test_expect_success 'COPY through a usrmerge /bin symlink writes /usr/bin and RUN still finds /bin/sh' '
    R=$TMP/um && app "$R" <<-\DF &&
	COPY mytool /bin/mytool
	COPY cfg.txt /etc/conf/
	COPY cfg.txt /opt/app/x.txt
	RUN mytool > /out.txt
	DF
    printf "#!/bin/sh\necho tool-ran\n" >"$R/mytool" && chmod 755 "$R/mytool" && echo c >"$R/cfg.txt" &&
    commit_all "$R" um && (cd "$R" && ib -o "$TMP/um.tar" -q >/dev/null) &&
    layer_listing "$TMP/um.tar" 1 >"$TMP/um1" && cat "$TMP/um1" &&
    grep -qx -- "-rwxr-xr-x 0/0 usr/bin/mytool" "$TMP/um1" && ! grep -q " bin/\?$" "$TMP/um1" &&
    layer_listing "$TMP/um.tar" 2 | grep -qx -- "-rw-r--r-- 0/0 etc/real-conf/cfg.txt" &&
    layer_listing "$TMP/um.tar" 3 | grep -qx -- "-rw-r--r-- 0/0 srv/real/x.txt" &&
    unpack_image "$TMP/um.tar" "$TMP/umb" && F=$TMP/umb/rootfs &&
    test -L "$F/bin" && test "$(readlink "$F/bin")" = usr/bin && test -L "$F/opt/app" && test -L "$F/etc/conf" &&
    test "$(cat "$F/out.txt")" = tool-ran && test -f "$F/usr/bin/busybox"
'

test_expect_success 'COPY of a file to an existing directory without a trailing slash copies into it' '
    R=$TMP/into && app "$R" <<-\DF &&
	COPY hello.txt /bin
	COPY hello.txt /home
	COPY hello.txt /new
	DF
    echo hi >"$R/hello.txt" && commit_all "$R" into && (cd "$R" && ib -o "$TMP/into.tar" -q >/dev/null) &&
    unpack_image "$TMP/into.tar" "$TMP/intob" && F=$TMP/intob/rootfs &&
    test -L "$F/bin" && test "$(cat "$F/usr/bin/hello.txt")" = hi &&
    test -d "$F/home" && test "$(cat "$F/home/hello.txt")" = hi && test -f "$F/home/.keep" &&
    test -f "$F/new" && test "$(cat "$F/new")" = hi
'

test_expect_success 'a wildcard that matches nothing is skipped; a missing plain source names file:line' '
    R=$TMP/wild && app "$R" <<-\DF &&
	WORKDIR /app
	COPY requirements.txt poetry.lock* ./
	COPY nothing-here-* /none/
	DF
    echo flask >"$R/requirements.txt" && commit_all "$R" w && (cd "$R" && ib -o "$TMP/wild.tar" -q >/dev/null) &&
    unpack_image "$TMP/wild.tar" "$TMP/wildb" && test "$(cat "$TMP/wildb/rootfs/app/requirements.txt")" = flask &&
    test ! -e "$TMP/wildb/rootfs/app/poetry.lock" && test ! -e "$TMP/wildb/rootfs/none" &&
    printf "FROM %s\nCOPY requirements.txt poetry.lock* ./\nCOPY poetry.lock ./\n" "$BASE" >"$R/Dockerfile" &&
    commit_all "$R" w2 &&
    (cd "$R" && expect_error "Dockerfile:3: COPY poetry.lock: not found in the build context" -o "$TMP/w2.tar")
'

test_expect_success '--exclude filters the sources themselves, and paths inside copied directories' '
    R=$TMP/exc && app "$R" <<-\DF &&
	COPY --exclude=*.txt hom* /mydir/
	COPY --exclude=*.txt home.txt homer.py /named/
	DF
    mkdir -p "$R/homedir" && echo 1 >"$R/home.txt" && echo 2 >"$R/homer.py" &&
    echo 3 >"$R/homedir/a.txt" && echo 4 >"$R/homedir/b.py" &&
    commit_all "$R" e && (cd "$R" && ib -o "$TMP/exc.tar" -q >/dev/null) &&
    unpack_image "$TMP/exc.tar" "$TMP/excb" && F=$TMP/excb/rootfs &&
    test ! -e "$F/mydir/home.txt" && test "$(cat "$F/mydir/homer.py")" = 2 &&
    test "$(cat "$F/mydir/b.py")" = 4 && test ! -e "$F/mydir/a.txt" &&
    test ! -e "$F/named/home.txt" && test -f "$F/named/homer.py"
'

test_expect_success '--chmod is expanded like --chown, and the cache key follows its value' '
    R=$TMP/mode && app "$R" <<-\DF &&
	ARG MODE=440
	COPY --chmod=$MODE f /f
	COPY --chmod=${MODE} f /g
	DF
    echo f >"$R/f" && commit_all "$R" m && (cd "$R" && ib -o "$TMP/m1.tar" -q >/dev/null) &&
    layer_listing "$TMP/m1.tar" 1 | grep -qx -- "-r--r----- 0/0 f" &&
    layer_listing "$TMP/m1.tar" 2 | grep -qx -- "-r--r----- 0/0 g" &&
    (cd "$R" && ib -o "$TMP/m2.tar" --build-arg MODE=0600 --progress plain >/dev/null) &&
    grep -qE "COPY --chmod=\\\$MODE f /f +BUILT" "$TMP/last.err" &&
    layer_listing "$TMP/m2.tar" 1 | grep -qx -- "-rw------- 0/0 f" &&
    printf "FROM %s\nARG MODE=rw\nCOPY --chmod=\$MODE f /f\n" "$BASE" >"$R/Dockerfile" && commit_all "$R" m3 &&
    (cd "$R" && expect_error "Dockerfile:3: .*--chmod=rw: expected an octal mode" -o "$TMP/m3.tar")
'

test_expect_success '--chown owns the parent directories COPY creates, not the existing ones' '
    R=$TMP/own && app "$R" <<-\DF &&
	COPY --chown=app:app f /home/app/.config/f
	COPY --chown=1000 d/ /srv/new/
	DF
    mkdir -p "$R/d/sub" && echo f >"$R/f" && echo g >"$R/d/sub/g" &&
    commit_all "$R" o && (cd "$R" && ib -o "$TMP/own.tar" -q >/dev/null) &&
    layer_listing "$TMP/own.tar" 1 >"$TMP/own1" && layer_listing "$TMP/own.tar" 2 >"$TMP/own2" && cat "$TMP/own1" "$TMP/own2" &&
    grep -qx "drwxr-xr-x 0/0 home/" "$TMP/own1" &&
    grep -qx "drwxr-xr-x 1000/1000 home/app/" "$TMP/own1" &&
    grep -qx "drwxr-xr-x 1000/1000 home/app/.config/" "$TMP/own1" &&
    grep -qx -- "-rw-r--r-- 1000/1000 home/app/.config/f" "$TMP/own1" &&
    grep -qx "drwxr-xr-x 0/0 srv/" "$TMP/own2" && grep -qx "drwxr-xr-x 1000/1000 srv/new/" "$TMP/own2" &&
    grep -qx "drwxr-xr-x 1000/1000 srv/new/sub/" "$TMP/own2"
'

test_expect_success 'an unquoted COPY heredoc keeps POSIX backslash rules; a quoted one is literal' '
    R=$TMP/hd && app "$R" <<-\DF &&
	ARG FOO=bar
	COPY <<-EOT /script.sh
		echo "hello ${FOO}" \$HOME '"'"'$FOO'"'"' a\b \\ \${FOO}
	EOT
	COPY <<"EOT" /lit.sh
	echo "${FOO}" \$HOME \\
	EOT
	DF
    commit_all "$R" h && (cd "$R" && ib -o "$TMP/hd.tar" -q >/dev/null) &&
    unpack_image "$TMP/hd.tar" "$TMP/hdb" && F=$TMP/hdb/rootfs && cat "$F/script.sh" "$F/lit.sh" &&
    test "$(cat "$F/script.sh")" = "echo \"hello bar\" \$HOME '"'"'bar'"'"' a\\b \\ \${FOO}" &&
    test "$(cat "$F/lit.sh")" = "echo \"\${FOO}\" \\\$HOME \\\\"
'

test_expect_success 'ADD extracts every archive a glob matches, more than the instruction has words' '
    R=$TMP/addg && app "$R" <<-\DF &&
	ADD t*.tar /x/
	DF
    for k in 1 2 3; do mkdir -p "$TMP/at/d$k" && echo $k >"$TMP/at/d$k/f" && tar -C "$TMP/at" -cf "$R/t$k.tar" d$k || exit 1; done &&
    commit_all "$R" a && (cd "$R" && ib -o "$TMP/addg.tar" -q >/dev/null) &&
    unpack_image "$TMP/addg.tar" "$TMP/addgb" &&
    for k in 1 2 3; do test "$(cat "$TMP/addgb/rootfs/x/d$k/f")" = $k || exit 1; done
'

test_expect_success 'the COPY layers are reproducible' '
    (cd "$TMP/um" && ib -o "$TMP/um2.tar" -q --no-cache >/dev/null) &&
    test "$(digest_of "$TMP/um.tar")" = "$(digest_of "$TMP/um2.tar")"
'

test_done
