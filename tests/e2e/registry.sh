# tests/e2e/registry.sh — real CNCF Distribution registries (+ a Harbor-like
# token server and fault-injecting proxies) for e2e tests. Source AFTER lib.sh:
#
#   . "$(dirname "$0")/lib.sh"
#   . "$(dirname "$0")/registry.sh"
#   registry_start R token          # exports R_HOST R_URL R_CA R_USER R_PASS ...
#
# Call registry_start / the proxies at the top level of the test script, not in
# a test_expect_success body (a body runs in a subshell, so its exports are lost;
# processes are tied to the starting shell and die with it).
#
# registry_start NAME MODE   MODE = plain | htpasswd-tls | token | token-http
#   Exports (NAME must be a shell identifier):
#   NAME_HOST        127.0.0.1:PORT
#   NAME_URL         http(s)://127.0.0.1:PORT
#   NAME_SCHEME      http | https
#   NAME_LOG         access log (Combined Log Format, one line per finished request)
#   NAME_SERVER_LOG  registry's own logrus log (level info)
#   NAME_DIR         $TMP/registry-NAME (config.yml, storage in data/)
#   NAME_PID         registry pid
#   TLS modes (htpasswd-tls, token):
#   NAME_CA          CA certificate (PEM) that signed the server cert
#   NAME_CERT_DIR    directory holding ca.crt (for skopeo --{src,dest}-cert-dir)
#   auth modes (htpasswd-tls, token, token-http):
#   NAME_USER / NAME_PASS                robot$wepp+ci and a password with : @ / % & $ # !
#   NAME_READER_USER / NAME_READER_PASS  reader / readerpw (pull only in token modes;
#                                        htpasswd cannot restrict, reader may push there)
#   token modes:
#   NAME_TOKEN_URL   the realm (http(s)://127.0.0.1:PORT/token), TLS iff the registry is
#   NAME_TOKEN_LOG   one line per token request:
#                    "GET /token user=U status=S service=SVC scope=SCOPES"
#   NAME_TOKEN_CERT  the token signing certificate (= rootcertbundle)
#   NAME_SERVICE=harbor-registry  NAME_ISSUER=harbor-token-issuer
#   Token lifetime: env TOKEN_EXPIRY (seconds, default 300) when registry_start runs.
#
# Other helpers: free_port, registry_stop NAME, registry_stop_all,
#   registry_requests NAME, registry_count NAME REGEX, token_count NAME [REGEX],
#   registry_curl NAME CURL-ARGS..., registry_token NAME USER PASS SCOPE...,
#   registry_skopeo_args NAME [src|dest],
#   tcp_cut_proxy VAR TARGET CUT_AFTER_BYTES [up|down], proxy_cut_count VAR,
#   tamper_proxy VAR TARGET [MAX_TAMPERS], proxy_tamper_count VAR.

REG_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Resolve python3 once (it may be a slow pyenv shim) so pids are the servers'.
REG_PY=$(python3 -c 'import sys; print(sys.executable)')
REG_PIDFILE="$TMP/.registry-pids"
: >"$REG_PIDFILE"
REG_ROBOT_USER='robot$wepp+ci'
REG_ROBOT_PASS='Rb0t:p@ss/w%rd&$x#!'
REG_READER_USER='reader'
REG_READER_PASS='readerpw'

# free_port: prints a currently free TCP port on 127.0.0.1 (racy by nature:
# the python servers here bind port 0 themselves; registry_start retries).
free_port() {
    "$REG_PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# _reg_bg LOG CMD...: start CMD in the background (killed with the test shell
# via PDEATHSIG, killed by registry_stop_all at exit); sets REG_BG_PID.
_reg_bg() {
    local log=$1
    shift
    setpriv --pdeathsig KILL -- "$@" </dev/null >>"$log" 2>&1 &
    REG_BG_PID=$!
    echo "$REG_BG_PID" >>"$REG_PIDFILE"
}

# _reg_wait_file FILE PID WHAT LOG: wait (≤ 15 s) until FILE exists.
_reg_wait_file() {
    local f=$1 pid=$2 what=$3 log=$4 i
    for i in $(seq 1 150); do
        [ -s "$f" ] && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "registry.sh: $what did not start; last lines of $log:" >&2
    tail -n 20 "$log" >&2
    return 1
}

_reg_kill() {
    local pid=$1 i
    kill "$pid" 2>/dev/null || return 0
    for i in $(seq 1 30); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
}

registry_stop_all() {
    local pid
    [ -f "$REG_PIDFILE" ] || return 0
    while read -r pid; do
        if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
    done <"$REG_PIDFILE"
    while read -r pid; do
        [ -n "$pid" ] && _reg_kill "$pid"
    done <"$REG_PIDFILE"
    : >"$REG_PIDFILE"
}
trap 'registry_stop_all; cleanup' EXIT
# Make INT/TERM/HUP run the EXIT trap too (ctest timeouts send SIGTERM).
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# registry_stop NAME: stop that registry (and its token server).
registry_stop() {
    local n=$1 v
    for v in "${n}_PID" "${n}_TOKEN_PID"; do
        [ -n "${!v:-}" ] && _reg_kill "${!v}"
    done
    return 0
}

# _reg_certs DIR: CA + server cert (SAN IP:127.0.0.1, DNS:localhost), once per $TMP.
_reg_certs() {
    local d=$TMP/registry-pki
    [ -f "$d/server.crt" ] && return 0
    mkdir -p "$d"
    (
        cd "$d"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
            -keyout ca.key -out ca.crt -subj "/CN=imgbuild test CA" \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout server.key -out server.csr -subj "/CN=127.0.0.1"
        printf '%s\n' 'subjectAltName=IP:127.0.0.1,DNS:localhost' 'basicConstraints=CA:FALSE' \
            'keyUsage=critical,digitalSignature,keyEncipherment' 'extendedKeyUsage=serverAuth' >server.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
            -extfile server.ext -out server.crt
        # Token signing key: RSA (RS256), self-signed cert = the rootcertbundle.
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -keyout token.key -out token.crt \
            -subj "/CN=harbor-token-issuer"
    ) >"$d/openssl.log" 2>&1 || { cat "$d/openssl.log" >&2; return 1; }
}

# _reg_start_token NAME DIR TLS(0|1): start the token server, sets REG_TOKEN_URL.
_reg_start_token() {
    local n=$1 dir=$2 tls=$3 pki=$TMP/registry-pki scheme=http port
    local -a tlsargs=()
    if [ "$tls" = 1 ]; then
        tlsargs=(--tls-cert "$pki/server.crt" --tls-key "$pki/server.key")
        scheme=https
    fi
    REG_ROBOT_USER="$REG_ROBOT_USER" REG_ROBOT_PASS="$REG_ROBOT_PASS" \
        REG_READER_USER="$REG_READER_USER" REG_READER_PASS="$REG_READER_PASS" "$REG_PY" - "$dir/acl.json" <<'PY'
import json, os, sys
acl = {"users": {
    os.environ["REG_ROBOT_USER"]: {"password": os.environ["REG_ROBOT_PASS"], "access": {"*": ["pull", "push"]}},
    os.environ["REG_READER_USER"]: {"password": os.environ["REG_READER_PASS"], "access": {"*": ["pull"]}},
}, "anonymous": {}}
json.dump(acl, open(sys.argv[1], "w"), indent=1)
PY
    rm -f "$dir/token.port"
    _reg_bg "$dir/tokenserver.err" "$REG_PY" "$REG_LIB_DIR/tokenserver.py" \
        --key "$pki/token.key" --cert "$pki/token.crt" --acl "$dir/acl.json" \
        --port-file "$dir/token.port" --log "$dir/token.log" \
        --issuer harbor-token-issuer --service harbor-registry "${tlsargs[@]}"
    export "${n}_TOKEN_PID=$REG_BG_PID"
    _reg_wait_file "$dir/token.port" "$REG_BG_PID" "token server $n" "$dir/tokenserver.err" || return 1
    port=$(cat "$dir/token.port")
    REG_TOKEN_URL="$scheme://127.0.0.1:$port/token"
    export "${n}_TOKEN_URL=$REG_TOKEN_URL" "${n}_TOKEN_LOG=$dir/token.log" \
        "${n}_TOKEN_CERT=$pki/token.crt" "${n}_SERVICE=harbor-registry" "${n}_ISSUER=harbor-token-issuer"
}

registry_start() {
    local n=$1 mode=$2 dir=$TMP/registry-$1 pki=$TMP/registry-pki tls=0 auth=none
    case $mode in
    plain) ;;
    htpasswd-tls) tls=1 auth=htpasswd ;;
    token) tls=1 auth=token ;;
    token-http) auth=token ;;
    *) echo "registry_start: unknown mode '$mode'" >&2; return 1 ;;
    esac
    [[ $n =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || { echo "registry_start: bad name '$n'" >&2; return 1; }
    mkdir -p "$dir/data"
    export "${n}_DIR=$dir" "${n}_LOG=$dir/access.log" "${n}_SERVER_LOG=$dir/registry.log"
    if [ $tls = 1 ] || [ $auth = token ]; then _reg_certs || return 1; fi

    local scheme=http tlscfg="" authcfg="" curlca=()
    if [ $tls = 1 ]; then
        scheme=https
        mkdir -p "$dir/certs.d"
        cp "$pki/ca.crt" "$dir/certs.d/ca.crt"
        tlscfg="  tls:
    certificate: $pki/server.crt
    key: $pki/server.key"
        curlca=(--cacert "$pki/ca.crt")
        export "${n}_CA=$pki/ca.crt" "${n}_CERT_DIR=$dir/certs.d"
    fi
    case $auth in
    htpasswd)
        htpasswd -Bbn "$REG_ROBOT_USER" "$REG_ROBOT_PASS" >"$dir/htpasswd" &&
            htpasswd -Bbn "$REG_READER_USER" "$REG_READER_PASS" >>"$dir/htpasswd" || return 1
        authcfg="auth:
  htpasswd:
    realm: imgbuild-test
    path: $dir/htpasswd"
        ;;
    token)
        _reg_start_token "$n" "$dir" $tls || return 1
        authcfg="auth:
  token:
    realm: $REG_TOKEN_URL
    service: harbor-registry
    issuer: harbor-token-issuer
    rootcertbundle: $pki/token.crt"
        ;;
    esac
    if [ $auth != none ]; then
        export "${n}_USER=$REG_ROBOT_USER" "${n}_PASS=$REG_ROBOT_PASS" \
            "${n}_READER_USER=$REG_READER_USER" "${n}_READER_PASS=$REG_READER_PASS"
    fi

    local try port pid code i
    for try in 1 2 3 4 5; do
        port=$(free_port)
        cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
  fields:
    service: registry-$n
storage:
  filesystem:
    rootdirectory: $dir/data
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: imgbuild-test-secret-$n
  headers:
    X-Content-Type-Options: [nosniff]
$tlscfg
$authcfg
EOF
        : >"$dir/access.log"
        : >"$dir/registry.log"
        # Access log (Combined Log Format) goes to stdout, logrus to stderr.
        # Distribution reads every REGISTRY_* variable as a config override
        # (REGISTRY_AUTH_FILE, meant for skopeo, would become auth.file): drop them.
        local -a unset_env=()
        local e
        for e in $(compgen -e); do
            [[ $e == REGISTRY_* ]] && unset_env+=(-u "$e")
        done
        setpriv --pdeathsig KILL -- env "${unset_env[@]}" docker-registry serve "$dir/config.yml" \
            </dev/null >>"$dir/access.log" 2>>"$dir/registry.log" &
        pid=$!
        echo "$pid" >>"$REG_PIDFILE"
        for i in $(seq 1 150); do
            kill -0 "$pid" 2>/dev/null || break
            code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "${curlca[@]}" \
                "$scheme://127.0.0.1:$port/v2/" 2>/dev/null) || code=000
            if [ "$code" = 200 ] || [ "$code" = 401 ]; then
                export "${n}_HOST=127.0.0.1:$port" "${n}_URL=$scheme://127.0.0.1:$port" \
                    "${n}_SCHEME=$scheme" "${n}_PID=$pid"
                : >"$dir/access.log" # forget the readiness probes
                return 0
            fi
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            _reg_kill "$pid"
            break # running but never answering: don't retry
        fi
        grep -q 'address already in use' "$dir/registry.log" || break
    done
    echo "registry.sh: registry $n ($mode) did not start; last lines of $dir/registry.log:" >&2
    tail -n 20 "$dir/registry.log" >&2
    return 1
}

# registry_requests NAME: "METHOD URI STATUS" for every request in the access log.
registry_requests() {
    local v="${1}_LOG"
    sed -nE 's/^.*"([A-Z]+) ([^ ]*) HTTP\/[0-9.]+" ([0-9]{3}) .*$/\1 \2 \3/p' "${!v}"
}

# registry_count NAME REGEX: how many "METHOD URI STATUS" lines match REGEX (ERE),
# e.g. registry_count R 'PUT /v2/.*/blobs/uploads'  or  registry_count R '^PATCH .* 202$'.
registry_count() {
    registry_requests "$1" | grep -cE -- "$2" || true
}

# token_count NAME [REGEX]: token requests (default: successful GETs) matching REGEX.
token_count() {
    local v="${1}_TOKEN_LOG"
    grep -cE -- "${2:-^GET /token .*status=200}" "${!v}" || true
}

# registry_curl NAME CURL-ARGS...: curl -sS trusting NAME's CA (if TLS).
registry_curl() {
    local ca="${1}_CA"
    shift
    if [ -n "${!ca:-}" ]; then curl -sS --cacert "${!ca}" "$@"; else curl -sS "$@"; fi
}

# registry_token NAME USER PASS SCOPE...: prints a bearer token from NAME's token
# server (USER empty = anonymous), e.g. registry_token R "$R_USER" "$R_PASS" repository:a/b:pull
registry_token() {
    local n=$1 user=$2 pass=$3 url v
    shift 3
    v="${n}_TOKEN_URL"
    url="${!v}?service=harbor-registry"
    local s
    for s in "$@"; do url="$url&scope=$(printf %s "$s" | "$REG_PY" -c 'import sys,urllib.parse; print(urllib.parse.quote(sys.stdin.read(), safe=""))')"; done
    local -a creds=()
    [ -n "$user" ] && creds=(-u "$user:$pass")
    registry_curl "$n" -f "${creds[@]}" "$url" | "$REG_PY" -c 'import json,sys; print(json.load(sys.stdin)["token"])'
}

# registry_skopeo_args NAME [src|dest]: the skopeo TLS flags for NAME (word-split
# the output: paths under $TMP have no spaces), e.g.
#   skopeo copy $(registry_skopeo_args R dest) --dest-creds "$R_USER:$R_PASS" oci:L:t docker://$R_HOST/a/b:t
#   skopeo inspect $(registry_skopeo_args R) docker://$R_HOST/a/b:t
registry_skopeo_args() {
    local v="${1}_CERT_DIR" p=${2:+$2-}
    if [ -n "${!v:-}" ]; then echo "--${p}cert-dir ${!v}"; else echo "--${p}tls-verify=false"; fi
}

# _reg_proxy VAR LOG SCRIPT ARGS...: start a python proxy that writes its port file.
_reg_proxy() {
    local var=$1 script=$2 dir
    shift 2
    [[ $var =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || { echo "proxy: bad variable name '$var'" >&2; return 1; }
    dir=$TMP/proxy-$var
    mkdir -p "$dir"
    rm -f "$dir/port"
    : >"$dir/proxy.log"
    _reg_bg "$dir/proxy.err" "$REG_PY" "$REG_LIB_DIR/$script" "$@"
    _reg_wait_file "$dir/port" "$REG_BG_PID" "$script for $var" "$dir/proxy.err" || return 1
    export "$var=127.0.0.1:$(cat "$dir/port")" "${var}_LOG=$dir/proxy.log" "${var}_PID=$REG_BG_PID"
}

# tcp_cut_proxy VAR TARGET_HOST:PORT CUT_AFTER_BYTES [up|down]
# Exports VAR=127.0.0.1:PORT, VAR_LOG, VAR_PID. The first connection carrying more
# than CUT_AFTER_BYTES client->server (up, default) or server->client (down) is
# reset on both sides; every other connection is forwarded untouched. Log lines:
# "open conn=K", "cut conn=K dir=D after=N", "close conn=K up=U down=D".
# TLS passes through (the server cert's SAN 127.0.0.1 still matches).
tcp_cut_proxy() {
    local var=$1 dir=$TMP/proxy-$1
    _reg_proxy "$var" cutproxy.py "$2" "$3" "$dir/port" "$dir/proxy.log" "${4:-up}"
}
proxy_cut_count() {
    local v="${1}_LOG"
    grep -c '^cut ' "${!v}" || true
}

# tamper_proxy VAR TARGET_HOST:PORT [MAX_TAMPERS] [UPSTREAM_CA]
# Exports VAR=127.0.0.1:PORT (plain HTTP), VAR_LOG, VAR_PID. GET /v2/*/blobs/sha256:*
# bodies come back with the middle byte flipped (same length, same headers incl.
# Docker-Content-Digest); at most MAX_TAMPERS times if > 0. Log: "METHOD PATH STATUS
# [tampered offset=N]". For a TLS registry pass UPSTREAM_CA (the proxy still serves HTTP).
tamper_proxy() {
    local var=$1 dir=$TMP/proxy-$1
    _reg_proxy "$var" tamperproxy.py "$2" "$dir/port" "$dir/proxy.log" "${3:-0}" "${4:-}"
}
proxy_tamper_count() {
    local v="${1}_LOG"
    grep -c ' tampered ' "${!v}" || true
}
