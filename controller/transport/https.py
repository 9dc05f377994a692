"""The network API's wire: HTTPS + JSON, shared by the controller's server and its clients.

    POST /v1/op/NAME          body: the operation's arguments, a JSON object
    Authorization: Bearer nvctl1.NAME.SECRET      (or a client certificate)
    X-Request-Id: ID          a change retried with the same id is made once
    X-Nvctl-On-Behalf: JSON   a cluster member forwarding a caller (members only)

The answer is the same JSON object the unix socket gives ({"ok": true, "result": ...}
or {"ok": false, "error": ..., "errors": [...]}) with a status that says the same:
200 ok, 400 the caller's mistake or no such object, 401 not authenticated, 403 not
allowed, 404 no such operation, 503 retry (a cluster without a leader yet), 500 the
controller's own error. TLS 1.2 or newer only; a plain HTTP or TCP client gets nothing.
"""
from __future__ import annotations

import http.client
import json
import socket
import ssl
from urllib.parse import urlparse

PATH = "/v1/op/"
MAX_BODY = 16 << 20


def status_of(answer: dict) -> int:
    if answer.get("ok"):
        return 200
    if answer.get("unauthenticated"):
        return 401
    if answer.get("denied"):
        return 403
    if answer.get("retry"):
        return 503
    if answer.get("request_id") and "internal error" in str(answer.get("error")):
        return 500
    if str(answer.get("error", "")).startswith("unknown operation"):
        return 404
    return 400


def client_context(ca_pem: str | None = None, ca_file: str | None = None,
                   cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """TLS 1.2+ that trusts only the controller's CA (given as PEM text or a file). The
    CA is the identity (ovs-pki's certificates carry no host names to check)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=ca_file, cadata=ca_pem)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


class Connection:
    """One kept-alive HTTPS connection to one server (reopened when the server closed it)."""

    def __init__(self, url: str, ctx: ssl.SSLContext, timeout: float = 600, netns: str | None = None):
        """`netns`: open the connection from inside that network namespace (the lab's
        operator speaks from its management namespace; see tep.nsutil.entered)."""
        self.netns = netns
        u = urlparse(url)
        if u.scheme != "https" or not u.hostname:
            raise ValueError(f"server {url!r}: give https://HOST:PORT")
        self.url, self.host, self.port = url, u.hostname, u.port or 443
        self.ctx, self.timeout = ctx, timeout
        self._conn: http.client.HTTPSConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def post(self, op: str, args: dict, token: str | None = None, rid: str | None = None,
             headers: dict | None = None, timeout: float | None = None) -> tuple[int, dict]:
        """(HTTP status, the answer). OSError when the server cannot be reached or the
        connection breaks; ssl.SSLError when TLS is refused."""
        body = json.dumps(args).encode()
        h = {"Content-Type": "application/json", "Content-Length": str(len(body)), **(headers or {})}
        if token:
            h["Authorization"] = f"Bearer {token}"
        if rid:
            h["X-Request-Id"] = rid
        for attempt in (0, 1):
            fresh = self._conn is None
            if fresh:
                self._conn = (_NetnsHTTPSConnection if self.netns else http.client.HTTPSConnection)(
                    self.host, self.port, context=self.ctx, timeout=timeout or self.timeout)
                self._conn.netns = self.netns
            elif timeout:
                self._conn.timeout = timeout
                if self._conn.sock is not None:
                    self._conn.sock.settimeout(timeout)
            try:
                self._conn.request("POST", PATH + op, body, h)
                r = self._conn.getresponse()
                data = r.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if fresh or attempt:  # a new connection that broke: the server is the problem
                    raise
                continue  # a kept-alive connection the server had closed: once more on a new one
            except BaseException:
                self.close()
                raise
            if r.getheader("Connection", "").lower() == "close":
                self.close()
            try:
                answer = json.loads(data or b"null")
            except ValueError:
                answer = None
            if not isinstance(answer, dict):
                answer = {"ok": False, "error": f"the server answered HTTP {r.status} without an nvctl answer"}
            return r.status, answer
        raise AssertionError("unreachable")


class _NetnsHTTPSConnection(http.client.HTTPSConnection):
    """Its TCP socket made inside a network namespace (the socket stays there)."""

    netns: str | None = None

    def connect(self):
        from tep.nsutil import entered
        with entered(self.netns):
            sock = socket.create_connection((self.host, self.port), self.timeout, self.source_address)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)
