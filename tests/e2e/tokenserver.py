#!/usr/bin/env python3
"""Harbor-like Docker registry token server for the e2e tests (stdlib only).

GET /token?service=S&scope=repository:NAME:pull,push[&scope=...] with optional
HTTP Basic credentials answers {"token", "access_token", "expires_in",
"issued_at"} where the token is an RS256 JWT whose header carries the signing
certificate in x5c, as CNCF Distribution's token auth expects.

  tokenserver.py --key KEY.pem --cert CERT.pem --acl ACL.json --port-file F
                 --log LOG [--tls-cert C --tls-key K] [--issuer I] [--service S]

ACL.json: {"users": {"NAME": {"password": "...", "access": {"GLOB": ["pull", ...]}}},
           "anonymous": {"GLOB": [...]}}   (GLOB is an fnmatch pattern on the repository)
Expiry in seconds: env TOKEN_EXPIRY (default 300). Env TOKEN_EXP_SKEW=N moves the
JWT's exp claim N seconds earlier than expires_in says: Distribution accepts a
token up to 60 s after exp, so a skew of 57 makes tokens die 3 s after issue
while the client is told they last TOKEN_EXPIRY seconds (a registry whose
clock runs ahead).
Behaves like Harbor: POST gets 405, bad credentials get 401 with a JSON error,
no credentials get an (empty-access) anonymous token.
"""
import argparse
import base64
import datetime
import fnmatch
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

try:  # prefer python3-cryptography, fall back to the openssl CLI
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding
    HAVE_CRYPTO = True
except Exception:  # pragma: no cover - depends on the machine
    HAVE_CRYPTO = False


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Signer:
    def __init__(self, key_path, cert_path):
        self.key_path = key_path
        pem = open(cert_path, "rb").read().decode()
        body = pem.split("-----BEGIN CERTIFICATE-----")[1].split("-----END CERTIFICATE-----")[0]
        self.x5c = [base64.b64encode(base64.b64decode("".join(body.split()))).decode()]
        self.key = None
        if HAVE_CRYPTO:
            self.key = serialization.load_pem_private_key(open(key_path, "rb").read(), password=None)

    def sign(self, data):
        if self.key is not None:
            return self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return subprocess.run(["openssl", "dgst", "-sha256", "-sign", self.key_path],
                              input=data, stdout=subprocess.PIPE, check=True).stdout

    def jwt(self, claims):
        header = {"typ": "JWT", "alg": "RS256", "x5c": self.x5c}
        signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "." +
                         b64url(json.dumps(claims, separators=(",", ":")).encode()))
        return signing_input + "." + b64url(self.sign(signing_input.encode()))


def parse_scope(s):
    # type:name:actions — the name may itself contain ':' (e.g. a port), the
    # type and the action list never do.
    if s.count(":") < 2:
        return None
    typ, rest = s.split(":", 1)
    name, actions = rest.rsplit(":", 1)
    return typ, name, [a for a in actions.split(",") if a]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "harbor-token-mock"
    timeout = 60

    def setup(self):
        # TLS handshake in the connection's own thread, not in accept().
        if self.server.ssl_ctx is not None:
            self.request = self.server.ssl_ctx.wrap_socket(self.request, server_side=True)
        super().setup()

    def log_message(self, fmt, *args):  # silence the default stderr log
        pass

    def _log(self, user, status, query):
        safe = {k: v for k, v in query.items() if k not in ("password", "refresh_token")}
        line = "%s %s user=%s status=%d service=%s scope=%s" % (
            self.command, urlsplit(self.path).path, user or "-", status,
            ",".join(safe.get("service", [])) or "-", " ".join(safe.get("scope", [])) or "-")
        for k in sorted(safe):  # any other parameter (account, client_id, offline_token...)
            if k not in ("service", "scope"):
                line += " %s=%s" % (k, ",".join(safe[k]))
        line += "\n"
        with self.server.log_lock, open(self.server.opts.log, "a") as f:
            f.write(line)

    def _send(self, status, obj, extra=()):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _auth(self):
        """(ok, user): user None = anonymous."""
        h = self.headers.get("Authorization")
        if not h:
            return True, None
        parts = h.split(None, 1)
        if len(parts) != 2 or parts[0].lower() != "basic":
            return False, "?"
        try:
            user, _, pw = base64.b64decode(parts[1], validate=True).decode("utf-8").partition(":")
        except Exception:
            return False, "?"
        u = self.server.acl.get("users", {}).get(user)
        if u is None or u.get("password") != pw:
            return False, user
        return True, user

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        self._log(None, 405, {})
        self._send(405, {"errors": [{"code": "METHOD_NOT_ALLOWED", "message": "use GET"}]})

    def do_GET(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        if url.path != "/token":
            self._log(None, 404, query)
            return self._send(404, {"errors": [{"code": "NOT_FOUND", "message": url.path}]})
        ok, user = self._auth()
        if not ok:
            self._log(user, 401, query)
            return self._send(401, {"errors": [{"code": "UNAUTHORIZED",
                                                "message": "authentication required"}]},
                              [("WWW-Authenticate", 'Basic realm="harbor"')])
        service = query.get("service", [self.server.opts.service])[0]
        if user is None:
            rules = self.server.acl.get("anonymous", {})
        else:
            rules = self.server.acl["users"][user].get("access", {})
        access = []
        for raw in query.get("scope", []):
            for s in raw.split():  # one scope parameter may hold several, space separated
                p = parse_scope(s)
                if p is None:
                    continue
                typ, name, wanted = p
                allowed = set()
                if typ == "repository":
                    for pat, acts in rules.items():
                        if fnmatch.fnmatchcase(name, pat):
                            allowed |= set(acts)
                granted = [a for a in wanted if a in allowed or ("*" in allowed)]
                if granted:
                    access.append({"type": typ, "name": name, "actions": granted})
        now = int(time.time())
        expiry = int(os.environ.get("TOKEN_EXPIRY", "300"))
        claims = {
            "iss": self.server.opts.issuer, "sub": user or "", "aud": service,
            "exp": now + expiry - int(os.environ.get("TOKEN_EXP_SKEW", "0")), "nbf": now - 1, "iat": now,
            "jti": uuid.uuid4().hex, "access": access,
        }
        tok = self.server.signer.jwt(claims)
        self._log(user, 200, query)
        issued = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self._send(200, {"token": tok, "access_token": tok, "expires_in": expiry, "issued_at": issued})

    do_HEAD = do_GET


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--key", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--acl", required=True)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--issuer", default="harbor-token-issuer")
    ap.add_argument("--service", default="harbor-registry")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    opts = ap.parse_args()

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.opts = opts
    srv.acl = json.load(open(opts.acl))
    srv.signer = Signer(opts.key, opts.cert)
    srv.log_lock = threading.Lock()
    srv.ssl_ctx = None
    if opts.tls_cert:
        srv.ssl_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        srv.ssl_ctx.load_cert_chain(opts.tls_cert, opts.tls_key)
    open(opts.log, "a").close()
    tmp = opts.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % srv.server_address[1])
    os.rename(tmp, opts.port_file)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
