#!/usr/bin/env bash
# imgbuild retag: after a history rewrite, sha-<new> tags point at the images
# of sha-<old> without uploading a blob; reads git filter-repo's commit-map.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/registry.sh"

registry_start P plain || exit 1

R=$TMP/repo
new_repo "$R"
echo one >"$R/a.txt"
head -c 100000 /dev/urandom >"$R/data.bin" # the data a slim would strip from all history
printf 'FROM scratch\nCOPY a.txt /\n' >"$R/Dockerfile"
commit_all "$R" one
echo two >"$R/a.txt" && commit_all "$R" two
A=$(git -C "$R" rev-parse HEAD~1) && B=$(git -C "$R" rev-parse HEAD)
(cd "$R" && ib --tag "$A" -o "$TMP/a.tar" -q >/dev/null && ib push --plain-http "$TMP/a.tar" "$P_HOST/wepp/app" -q >/dev/null) || exit 1
(cd "$R" && ib --tag "$B" -o "$TMP/b.tar" -q >/dev/null && ib push --plain-http "$TMP/b.tar" "$P_HOST/wepp/app" -q >/dev/null) || exit 1

# A rewrite by git filter-repo (the reference tool): drops a path from history.
git clone -q --no-local "$R" "$TMP/rw"
(cd "$TMP/rw" && git filter-repo --quiet --path data.bin --invert-paths >/dev/null) || exit 1
MAP=$TMP/rw/.git/filter-repo/commit-map

test_expect_success 'filter-repo commit map: new sha tags point at the old images, no blob uploaded' '
    head -n 1 "$MAP" | grep -q "^old *new" &&
    NA=$(awk -v o="$A" "\$1==o {print \$2}" "$MAP") && NB=$(awk -v o="$B" "\$1==o {print \$2}" "$MAP") &&
    test -n "$NA" && test -n "$NB" && test "$NA" != "$A" || { echo "filter-repo kept ids?"; cat "$MAP"; exit 1; }
    ups=$(registry_count P "^POST /v2/wepp/app/blobs/uploads/") &&
    ib retag --plain-http --commit-map "$MAP" "$P_HOST/wepp/app" >"$TMP/retag.out" &&
    grep -q "2 tags added" "$TMP/retag.out" &&
    test "$(registry_count P "^POST /v2/wepp/app/blobs/uploads/")" = "$ups" &&
    da=$(skopeo inspect --tls-verify=false docker://$P_HOST/wepp/app:sha-$NA | python3 -c "import json,sys;print(json.load(sys.stdin)[\"Digest\"])") &&
    test "$da" = "$(digest_of "$TMP/a.tar")" &&
    db=$(skopeo inspect --tls-verify=false docker://$P_HOST/wepp/app:sha-$NB | python3 -c "import json,sys;print(json.load(sys.stdin)[\"Digest\"])") &&
    test "$db" = "$(digest_of "$TMP/b.tar")"
'

test_expect_success 'running it again changes nothing; --dry-run only prints' '
    ib retag --plain-http --commit-map "$MAP" "$P_HOST/wepp/app" | grep -q "0 tags added, 2 already tagged" &&
    printf "%s %s\n%s %s\n" "$A" "$(printf %040d 7)" "$B" "$(printf %040d 0)" >"$TMP/map2" &&
    ib retag --plain-http --dry-run --commit-map "$TMP/map2" "$P_HOST/wepp/app" | grep -q "would tag wepp/app:sha-0000000000000000000000000000000000000007" &&
    ! skopeo inspect --tls-verify=false docker://$P_HOST/wepp/app:sha-0000000000000000000000000000000000000007 >/dev/null 2>&1 &&
    # a commit the rewrite pruned maps to 40 zeros: it gets no tag
    ib retag --plain-http --dry-run --commit-map "$TMP/map2" "$P_HOST/wepp/app" | grep -q "1 tag to add"
'

test_expect_success 'pruned commits are counted; one that has an image is named in a warning' '
    Z=$(printf %040d 0) && NOIMG=$(printf %040d 5) &&
    printf "old new\n%s %s\n%s %s\n%s %s\n" "$A" "$A" "$B" "$Z" "$NOIMG" "$Z" >"$TMP/map3" &&
    ib retag --plain-http --commit-map "$TMP/map3" "$P_HOST/wepp/app" >"$TMP/retag3.out" &&
    grep -qxF "3 commit pairs: 0 tags added, 0 already tagged, 0 without an image, 2 pruned (their images keep their old tag only), 1 unchanged by the rewrite" "$TMP/retag3.out" &&
    grep -qxF "warning: wepp/app:sha-$B is the image of a commit the rewrite pruned: it keeps its old tag only" "$TMP/last.err" &&
    test "$(grep -c "^warning:" "$TMP/last.err")" = 1
'

test_expect_success 'a malformed commit map names its line' '
    printf "%s %s\nnot a pair\n" "$A" "$B" >"$TMP/bad.map" &&
    expect_error "bad.map:2: expected" retag --plain-http --commit-map "$TMP/bad.map" "$P_HOST/wepp/app"
'

test_done
