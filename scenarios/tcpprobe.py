"""A tiny TCP probe for lab workloads (run inside a namespace with `ip netns exec`).

  python -m scenarios.tcpprobe serve PORT [--name N]      echo server (greets with N), until killed
  python -m scenarios.tcpprobe whois IP PORT --count C    C connections; prints the JSON list of
                                                          greetings (null where none came)
  python -m scenarios.tcpprobe connect IP PORT [--timeout S]
        exit 0: connected and echoed; 3: refused (RST); 4: timed out; 5: other error
  python -m scenarios.tcpprobe serve-many --tcp 80,81 --udp 80,81 [--name N]
        TCP echo servers (greeting with N) and UDP echo servers (a datagram comes back with
        "|N" appended), until killed
  python -m scenarios.tcpprobe matrix IP/PROTO/PORT... [--timeout S]
        every target at once (UDP: a tagged datagram, sent three times, its echo awaited);
        prints JSON {"IP/PROTO/PORT": "ok:N" (N: the server's name) | "timeout" | "refused" | "error"}
  python -m scenarios.tcpprobe stream IP PORT --seconds S [--interval I]
        one connection, a numbered line every I seconds, echo checked; prints JSON
        {"sent", "echoed", "max_gap_s", "error"}; exit 0 only if every line came back
"""
from __future__ import annotations

import argparse
import json
import socket
import socketserver
import sys
import time


class _Echo(socketserver.StreamRequestHandler):
    greeting = b""

    def handle(self):
        if self.greeting:
            self.wfile.write(self.greeting)
        for line in self.rfile:
            self.wfile.write(line)


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class _DualStack:
    """A server on one IPv6 socket that takes IPv4 too (mapped)."""
    address_family = socket.AF_INET6

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class _Server6(_DualStack, _Server):
    pass


def _server(port: int, handler):
    try:
        return _Server6(("::", port), handler)
    except OSError:  # a workload without IPv6
        return _Server(("0.0.0.0", port), handler)


def serve(port: int, name: str = "") -> int:
    handler = type("Handler", (_Echo,), {"greeting": f"{name}\n".encode() if name else b""})
    with _server(port, handler) as srv:
        print(f"listening on {port}", flush=True)
        srv.serve_forever()
    return 0


def connect(ip: str, port: int, timeout: float) -> int:
    try:
        with socket.create_connection((ip, port), timeout=timeout) as s:
            s.sendall(b"hello\n")
            data = s.makefile("rb").readline()
            return 0 if data == b"hello\n" else 5
    except ConnectionRefusedError:
        return 3
    except (socket.timeout, TimeoutError):
        return 4
    except OSError as e:
        print(e, file=sys.stderr)
        return 5


def whois(ip: str, port: int, count: int, timeout: float) -> int:
    names = []
    for _ in range(count):
        try:
            with socket.create_connection((ip, port), timeout=timeout) as s:
                s.settimeout(timeout)
                names.append(s.makefile("rb").readline().decode().strip() or None)
        except OSError:
            names.append(None)
    print(json.dumps(names))
    return 0


def stream(ip: str, port: int, seconds: float, interval: float) -> int:
    out = {"sent": 0, "echoed": 0, "max_gap_s": 0.0, "error": None}
    try:
        with socket.create_connection((ip, port), timeout=5) as s:
            s.settimeout(5)
            f = s.makefile("rb")
            end = time.monotonic() + seconds
            last = time.monotonic()
            while time.monotonic() < end:
                s.sendall(f"{out['sent']}\n".encode())
                out["sent"] += 1
                line = f.readline()
                if line.strip() != str(out["sent"] - 1).encode():
                    out["error"] = f"bad echo {line!r}"
                    break
                now = time.monotonic()
                out["max_gap_s"] = round(max(out["max_gap_s"], now - last), 3)
                last = now
                out["echoed"] += 1
                time.sleep(interval)
    except OSError as e:
        out["error"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out), flush=True)
    return 0 if out["error"] is None and out["echoed"] == out["sent"] else 1


class _UdpEcho(socketserver.BaseRequestHandler):
    name = b""

    def handle(self):
        data, sock = self.request
        sock.sendto(data + b"|" + self.name, self.client_address)


class _UdpServer(socketserver.ThreadingUDPServer):
    allow_reuse_address = True
    daemon_threads = True


class _UdpServer6(_DualStack, _UdpServer):
    pass


def serve_many(tcp: list[int], udp: list[int], name: str = "") -> int:
    import threading
    tcp_handler = type("Handler", (_Echo,), {"greeting": f"{name}\n".encode()})
    udp_handler = type("UdpHandler", (_UdpEcho,), {"name": name.encode()})
    servers = [_server(p, tcp_handler) for p in tcp]
    for p in udp:
        try:
            servers.append(_UdpServer6(("::", p), udp_handler))
        except OSError:
            servers.append(_UdpServer(("0.0.0.0", p), udp_handler))
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    print(f"listening on tcp {tcp} udp {udp}", flush=True)
    threading.Event().wait()
    return 0


def _udp_probe(ip: str, port: int, timeout: float) -> str:
    import os
    tag = b"nvctl-probe-" + os.urandom(6).hex().encode()
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.connect((ip, port))
        s.settimeout(timeout / 3)
        for _ in range(3):
            try:
                s.send(tag)
                while True:
                    got = s.recv(2048)
                    if got.startswith(tag + b"|"):
                        return "ok:" + got[len(tag) + 1:].decode(errors="replace")
            except (socket.timeout, TimeoutError):
                continue
            except ConnectionRefusedError:
                return "refused"
            except OSError:
                return "error"
    return "timeout"


def _tcp_probe(ip: str, port: int, timeout: float) -> str:
    """Connect, read the greeting (the server's name), check one echo."""
    try:
        with socket.create_connection((ip, port), timeout=timeout) as s:
            s.settimeout(timeout)
            f = s.makefile("rb")
            name = f.readline().decode(errors="replace").strip()
            s.sendall(b"hello\n")
            return f"ok:{name}" if f.readline() == b"hello\n" else "error"
    except ConnectionRefusedError:
        return "refused"
    except (socket.timeout, TimeoutError):
        return "timeout"
    except OSError:
        return "error"


def matrix(targets: list[str], timeout: float) -> int:
    from concurrent.futures import ThreadPoolExecutor

    def one(t: str) -> str:
        ip, proto, port = t.rsplit("/", 2)
        if proto == "udp":
            return _udp_probe(ip, int(port), timeout)
        return _tcp_probe(ip, int(port), timeout)
    with ThreadPoolExecutor(max_workers=max(1, len(targets))) as ex:
        got = dict(zip(targets, ex.map(one, targets)))
    print(json.dumps(got), flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="tcpprobe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve")
    p.add_argument("port", type=int)
    p.add_argument("--name", default="")
    p = sub.add_parser("whois")
    p.add_argument("ip")
    p.add_argument("port", type=int)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--timeout", type=float, default=2.0)
    p = sub.add_parser("connect")
    p.add_argument("ip")
    p.add_argument("port", type=int)
    p.add_argument("--timeout", type=float, default=2.0)
    p = sub.add_parser("stream")
    p.add_argument("ip")
    p.add_argument("port", type=int)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--interval", type=float, default=0.05)
    p = sub.add_parser("serve-many")
    p.add_argument("--tcp", default="")
    p.add_argument("--udp", default="")
    p.add_argument("--name", default="")
    p = sub.add_parser("matrix")
    p.add_argument("targets", nargs="+")
    p.add_argument("--timeout", type=float, default=1.0)
    a = ap.parse_args(argv)
    if a.cmd == "serve-many":
        return serve_many([int(x) for x in a.tcp.split(",") if x], [int(x) for x in a.udp.split(",") if x], a.name)
    if a.cmd == "matrix":
        return matrix(a.targets, a.timeout)
    if a.cmd == "serve":
        return serve(a.port, a.name)
    if a.cmd == "whois":
        return whois(a.ip, a.port, a.count, a.timeout)
    if a.cmd == "connect":
        return connect(a.ip, a.port, a.timeout)
    return stream(a.ip, a.port, a.seconds, a.interval)


if __name__ == "__main__":
    sys.exit(main())
