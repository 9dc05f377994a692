"""The network API: HTTPS + JSON on --api-listen ADDR:PORT, behind the same dispatcher as
the unix socket (controller.server.api.ApiServer.dispatch), so the declared operations,
their checks, the roles and the audit trail are one.

Who is asking (controller.server.access):
  - a bearer token (Authorization: Bearer ...) checked against the store's credentials;
  - or a client certificate: one signed by the switch CA is the host in its CN
    (role host:NAME, as every joined host has one), one signed by the controller CA is
    another member of the cluster, which may forward a caller (X-Nvctl-On-Behalf).
A certificate from any other CA fails the TLS handshake; a plain HTTP or TCP client
never gets past it. Failed authentication from one address is slowed down
(access.Throttle) and, like every request, written to the audit trail.

The wire format is controller.transport.https's.
"""
from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler

from controller.server.access import Principal, Throttle
from controller.transport.https import MAX_BODY, PATH, status_of
from controller.transport.pki import peer_name

LOG = logging.getLogger("nvctl.netapi")
HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 120.0
UNAUTHENTICATED = {"ok": False, "unauthenticated": True,
                   "error": "authentication failed: give a valid credential (nvctl --credential FILE)"}


def server_context(cert: str, key: str, client_cas: list[str]) -> ssl.SSLContext:
    """TLS 1.2+ with our certificate; a client certificate is optional, but one that is
    given must be signed by one of `client_cas`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    for ca in client_cas:
        ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def _issuer_unit(cert: dict) -> str | None:
    for rdn in cert.get("issuer", ()):
        for key, value in rdn:
            if key == "organizationalUnitName":
                return value
    return None


def cert_principal(cert: dict | None, peer: str) -> Principal | None:
    """The principal a verified client certificate stands for (ovs-pki's CAs: OU
    controllerca signs controllers, switchca signs hosts)."""
    if not cert:
        return None
    name, unit = peer_name(cert), _issuer_unit(cert)
    if not name:
        return None
    if unit == "controllerca":
        return Principal(f"member {name}", "member", "member", peer)
    if unit == "switchca":
        return Principal(name, f"host:{name}", "cert", peer)
    return None


class HttpsApiServer:
    def __init__(self, api, core, host: str, port: int, ctx: ssl.SSLContext):
        self.api, self.core, self.ctx = api, core, ctx
        self.throttle = Throttle()
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(128)
        self.address = self.sock.getsockname()[:2]

    def serve_forever(self) -> None:
        while True:
            conn, addr = self.sock.accept()
            threading.Thread(target=self._connection, args=(conn, addr), daemon=True).start()

    def _connection(self, conn: socket.socket, addr) -> None:
        conn.settimeout(HANDSHAKE_TIMEOUT)
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
        except (OSError, ValueError) as e:  # plain HTTP, another CA's certificate, a port scan
            LOG.info("network API: TLS refused %s: %s", addr[0], e)
            self._refused_tls(addr[0], e)
            conn.close()
            return
        tls.settimeout(IDLE_TIMEOUT)
        try:
            Handler(tls, addr, self)
        except (OSError, ValueError) as e:
            LOG.debug("network API: %s: %s", addr[0], e)
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def _refused_tls(self, peer: str, e: Exception) -> None:
        trail = getattr(self.core, "audit_trail", None)
        if trail is not None:
            reason = getattr(e, "reason", None) or type(e).__name__
            trail.record(Principal("(no TLS)", "", "tls", peer), "(handshake)", "", None,
                         f"refused: TLS handshake failed ({reason})")

    def authenticate(self, headers, cert: dict | None, peer: str) -> tuple[Principal | None, str]:
        """(principal, "") or (None, why)."""
        by_cert = cert_principal(cert, peer)
        auth = headers.get("Authorization") or ""
        if auth:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer":
                return None, "not a bearer token"
            p, why = self.core.authenticator.token(token.strip(), peer)
            if p is None:
                return None, why
            return p, ""
        if by_cert is None:
            return None, "no credential"
        if by_cert.role == "member":
            on_behalf = headers.get("X-Nvctl-On-Behalf")
            if on_behalf:
                try:
                    return Principal.from_json(json.loads(on_behalf), "member"), ""
                except (ValueError, KeyError, TypeError):
                    return None, "a member sent an unreadable X-Nvctl-On-Behalf"
        return by_cert, ""

    def answer(self, op: str, body: bytes, headers, cert, peer: str) -> dict:
        p, why = self.authenticate(headers, cert, peer)
        if p is None:
            delay = self.throttle.failed(peer)
            trail = getattr(self.core, "audit_trail", None)
            if trail is not None:
                trail.record(Principal("(unauthenticated)", "", "token", peer), op, "", headers.get("X-Request-Id"),
                             f"refused: {why}" + (f" (answered after {delay:.1f} s)" if delay else ""))
            LOG.warning("network API: %s refused for %s: %s", op, peer, why)
            if delay:
                time.sleep(delay)
            return dict(UNAUTHENTICATED)
        try:
            args = json.loads(body or b"{}")
        except ValueError as e:
            return {"ok": False, "error": f"bad request: the body is not JSON: {e}"}
        return self.api.dispatch(op, args, headers.get("X-Request-Id") or None, principal=p,
                                 context={"peer_ip": peer, "peer_name": p.host})


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY: an answer leaves as headers then body, and with Nagle's algorithm the
    # body waited for the client's delayed ACK of the headers: 44 ms on every request
    # (bench/api_latency.py measured it)
    disable_nagle_algorithm = True
    server_version = "nvctl"
    sys_version = ""

    def log_message(self, fmt, *args):  # the audit trail has every request; stderr does not need them
        pass

    def _send(self, status: int, answer: dict) -> None:
        try:
            data = json.dumps(answer).encode()
        except (TypeError, ValueError) as e:
            status, data = 500, json.dumps({"ok": False, "error": f"internal error: answer is not JSON: {e}"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        if not self.path.startswith(PATH):
            return self._send(404, {"ok": False, "error": f"no such path {self.path!r}: POST {PATH}OPERATION"})
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self.close_connection = True
            return self._send(400, {"ok": False, "error": f"bad request: Content-Length 0 to {MAX_BODY}"})
        body = self.rfile.read(length)
        srv: HttpsApiServer = self.server
        answer = srv.answer(self.path[len(PATH):], body, self.headers, self.connection.getpeercert(),
                            self.client_address[0])
        self._send(status_of(answer), answer)

    def do_GET(self):
        self._send(405, {"ok": False, "error": f"use POST {PATH}OPERATION with the arguments as a JSON object"})
