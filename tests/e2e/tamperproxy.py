#!/usr/bin/env python3
"""HTTP proxy that corrupts blob downloads (same length, one byte flipped).

  tamperproxy.py TARGET_HOST:PORT PORT_FILE LOG [MAX_TAMPERS] [UPSTREAM_CA]

Listens (plain HTTP/1.1, keep-alive) on 127.0.0.1:<free port>, written to
PORT_FILE, and forwards every request to TARGET (over TLS verified against
UPSTREAM_CA when given). The Host header is passed through unchanged, so
Distribution's absolute Location URLs point back at the proxy. For GET
/v2/<name>/blobs/sha256:<hex> answers with a body, the byte in the middle of
the body is XORed with 0x01; everything else is untouched. MAX_TAMPERS (default
0 = unlimited) stops tampering after that many bodies. LOG gets
  <METHOD> <path> <status> [tampered offset=N]
per request. With env PAD_MANIFESTS=N, a GET of /v2/<name>/manifests/<ref>
answered 200 gets N spaces appended instead (still valid JSON, now too big)
and is logged "padded N".
"""
import http.client
import os
import re
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

target_host, target_port = sys.argv[1].rsplit(":", 1)
target_port = int(target_port)
port_file, log_path = sys.argv[2], sys.argv[3]
max_tampers = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4] else 0
upstream_ca = sys.argv[5] if len(sys.argv) > 5 and sys.argv[5] else None

BLOB = re.compile(r"^/v2/.+/blobs/sha256:[0-9a-f]{64}$")
MANIFEST = re.compile(r"^/v2/.+/manifests/[^/]+$")
pad_manifests = int(os.environ.get("PAD_MANIFESTS", "0") or 0)
HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
lock = threading.Lock()
state = {"tampered": 0}


def log(line):
    with lock, open(log_path, "a") as f:
        f.write(line + "\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60

    def log_message(self, fmt, *args):
        pass

    def upstream(self):
        if getattr(self, "_up", None) is None:
            if upstream_ca:
                ctx = ssl.create_default_context(cafile=upstream_ca)
                self._up = http.client.HTTPSConnection(target_host, target_port, context=ctx, timeout=60)
            else:
                self._up = http.client.HTTPConnection(target_host, target_port, timeout=60)
        return self._up

    def request_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                out.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(out)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else None

    def forward(self):
        body = self.request_body()
        # A list, not a dict: clients send several Accept headers.
        headers = [(k, v) for k, v in self.headers.items()
                   if k.lower() not in HOP and k.lower() != "content-length"]
        if body is not None:
            headers.append(("Content-Length", str(len(body))))
        elif self.command in ("POST", "PUT", "PATCH"):
            headers.append(("Content-Length", "0"))
        for attempt in (0, 1):
            try:
                up = self.upstream()
                up.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for k, v in headers:
                    up.putheader(k, v)
                up.endheaders(body)
                resp = up.getresponse()
                break
            except (http.client.HTTPException, OSError):
                self._up = None  # stale keep-alive upstream connection: retry once
                if attempt:
                    raise
        data = resp.read()
        path = self.path.split("?", 1)[0]
        note = ""
        if pad_manifests and self.command == "GET" and resp.status == 200 and MANIFEST.match(path):
            data += b" " * pad_manifests
            note = " padded %d" % pad_manifests
        elif (self.command == "GET" and resp.status in (200, 206) and BLOB.match(path) and data):
            with lock:
                go = max_tampers == 0 or state["tampered"] < max_tampers
                if go:
                    state["tampered"] += 1
            if go:
                i = len(data) // 2
                data = data[:i] + bytes([data[i] ^ 1]) + data[i + 1:]
                note = " tampered offset=%d" % i
        log("%s %s %d%s" % (self.command, self.path, resp.status, note))
        self.send_response_only(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in HOP and k.lower() != "content-length":
                self.send_header(k, v)
        if self.command == "HEAD":
            cl = resp.getheader("Content-Length")
            if cl is not None:
                self.send_header("Content-Length", cl)
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = forward


def main():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    open(log_path, "a").close()
    with open(port_file + ".tmp", "w") as f:
        f.write("%d\n" % srv.server_address[1])
    os.rename(port_file + ".tmp", port_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
