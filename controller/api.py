"""The controller's API: one JSON request and one JSON answer per connection, over a
unix socket that only root can open (mode 0600), so only root on this machine can
change tenants.

Request:  {"op": "tenant.create", "args": {"yaml": "..."}}
Answer:   {"ok": true, "result": ...}  or  {"ok": false, "error": "...", "errors": [[path, reason], ...]}
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading

LOG = logging.getLogger("nvctl.api")
MAX_REQUEST = 16 << 20


class ApiClientError(Exception):
    def __init__(self, message: str, errors=None):
        super().__init__(message)
        self.errors = errors or []


def operations(core) -> dict:
    return {
        "ping": lambda: {"pong": True},
        "host.register": core.register_host,
        "host.list": core.list_hosts,
        "tenant.validate": core.validate,
        "tenant.create": core.create,
        "tenant.apply": core.apply,
        "tenant.delete": core.delete,
        "port.migrate": core.migrate,
        "tenant.list": core.list_tenants,
        "tenant.show": core.show,
        "port.info": core.port_info,
        "trace": core.trace,
        "flows": core.flows,
    }


class ApiServer:
    def __init__(self, core, path: str):
        from controller.core import ApiError
        self.ops = operations(core)
        self.path = path
        self.api_error = ApiError
        if os.path.exists(path):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.sock.bind(path)
        finally:
            os.umask(old)
        self.sock.listen(64)

    def serve_forever(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                data = _read_line(conn)
                req = json.loads(data)
                answer = self.dispatch(req.get("op"), req.get("args") or {})
            except Exception as e:  # a malformed request
                answer = {"ok": False, "error": f"bad request: {e}"}
            try:
                conn.sendall(json.dumps(answer).encode() + b"\n")
            except OSError:
                pass

    def dispatch(self, op, args: dict) -> dict:
        fn = self.ops.get(op)
        if fn is None:
            return {"ok": False, "error": f"unknown operation {op!r}"}
        try:
            return {"ok": True, "result": fn(**args)}
        except self.api_error as e:
            return {"ok": False, "error": str(e), "errors": e.errors}
        except TypeError as e:
            return {"ok": False, "error": f"{op}: {e}"}
        except Exception as e:
            LOG.exception("%s failed", op)
            return {"ok": False, "error": f"{op} failed: {type(e).__name__}: {e}"}


def _read_line(conn: socket.socket) -> bytes:
    buf = bytearray()
    while not buf.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST:
            raise ValueError("request too large")
    return bytes(buf)


def call(path: str, op: str, timeout: float = 600, **args):
    """Send one request; return its result or raise ApiClientError."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        raise ApiClientError(f"no controller answers on {path} (is the lab up? try 'nvctl lab up')") from None
    with s:
        s.sendall(json.dumps({"op": op, "args": args}).encode() + b"\n")
        answer = json.loads(_read_line(s) or b"null")
    if not answer:
        raise ApiClientError("the controller closed the connection without an answer")
    if not answer.get("ok"):
        raise ApiClientError(answer.get("error", "failed"), answer.get("errors"))
    return answer["result"]
