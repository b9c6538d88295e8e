#!/usr/bin/env python3
"""TCP proxy that hard-closes the FIRST connection carrying more than N bytes.

  cutproxy.py TARGET_HOST:PORT CUT_AFTER_BYTES PORT_FILE LOG [up|down]

Listens on 127.0.0.1:<free port> (written to PORT_FILE) and forwards every
connection to TARGET. The first connection whose client->server byte count
(direction "up", the default; "down" = server->client) exceeds CUT_AFTER_BYTES
gets exactly CUT_AFTER_BYTES forwarded in that direction, then both sockets
are reset (SO_LINGER 0 -> RST). All other connections, including every later
one, are forwarded untouched. LOG gets one line per event:
  open conn=K / cut conn=K dir=up after=N / close conn=K up=U down=D
so `grep -c '^cut ' LOG` is the number of cut connections (0 or 1).
"""
import os
import socket
import struct
import sys
import threading

target_host, target_port = sys.argv[1].rsplit(":", 1)
target_port = int(target_port)
limit = int(sys.argv[2])
port_file, log_path = sys.argv[3], sys.argv[4]
direction = sys.argv[5] if len(sys.argv) > 5 else "up"

lock = threading.Lock()
state = {"cut": False, "n": 0}


def log(line):
    with lock, open(log_path, "a") as f:
        f.write(line + "\n")


def hard_close(*socks):
    for s in socks:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        try:
            s.close()
        except OSError:
            pass


class Conn:
    def __init__(self, cid, client, upstream):
        self.cid, self.client, self.upstream = cid, client, upstream
        self.counts = {"up": 0, "down": 0}
        self.dead = False
        self.done = 0
        self.mu = threading.Lock()

    def pump(self, src, dst, name):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self.mu:
                    if self.dead:
                        return
                    seen = self.counts[name]
                    do_cut = False
                    if name == direction and seen + len(data) > limit:
                        with lock:
                            if not state["cut"]:
                                state["cut"] = True
                                do_cut = True
                    if do_cut:
                        keep = limit - seen
                        if keep > 0:
                            dst.sendall(data[:keep])
                        self.counts[name] = limit
                        self.dead = True
                        log("cut conn=%d dir=%s after=%d" % (self.cid, name, limit))
                        hard_close(self.client, self.upstream)
                        return
                dst.sendall(data)
                with self.mu:
                    self.counts[name] += len(data)
            try:  # half-close: pass EOF on
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        except OSError:
            with self.mu:
                if not self.dead:
                    self.dead = True
                    hard_close(self.client, self.upstream)
        finally:
            with self.mu:
                self.done += 1
                last = self.done == 2
            if last:
                log("close conn=%d up=%d down=%d" % (self.cid, self.counts["up"], self.counts["down"]))
                for s in (self.client, self.upstream):
                    try:
                        s.close()
                    except OSError:
                        pass


def serve(client):
    with lock:
        state["n"] += 1
        cid = state["n"]
    try:
        upstream = socket.create_connection((target_host, target_port), timeout=10)
        upstream.settimeout(None)
    except OSError as e:
        log("error conn=%d connect: %s" % (cid, e))
        hard_close(client)
        return
    log("open conn=%d" % cid)
    c = Conn(cid, client, upstream)
    for args in ((client, upstream, "up"), (upstream, client, "down")):
        threading.Thread(target=c.pump, args=args, daemon=True).start()


def main():
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(64)
    open(log_path, "a").close()
    with open(port_file + ".tmp", "w") as f:
        f.write("%d\n" % ls.getsockname()[1])
    os.rename(port_file + ".tmp", port_file)
    while True:
        client, _ = ls.accept()
        serve(client)


if __name__ == "__main__":
    main()
