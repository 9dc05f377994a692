"""The controller's API: one JSON request and one JSON answer per connection, over a
unix socket that only root can open (mode 0600), so only root on this machine can
change tenants.

Request:  {"op": "tenant.create", "args": {"yaml": "..."}}
Answer:   {"ok": true, "result": ...}  or  {"ok": false, "error": "...", "errors": [[path, reason], ...]}

Hosts on other machines reach a second, much smaller API over the network
(`NetworkApiServer`): TLS with a client certificate signed by the controller's switch
CA (or plain TCP only when the controller is started with --insecure), and only the
operations a joining host needs: ping, host.join and host.self.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import threading
import time
import uuid

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
        "host.invite": core.invite_host,
        "host.resync": core.resync,
        "host.list": core.list_hosts,
        "tenant.validate": core.validate,
        "tenant.create": core.create,
        "tenant.apply": core.apply,
        "tenant.delete": core.delete,
        "port.migrate": core.migrate,
        "port.add": core.port_add,
        "port.del": core.port_del,
        "port.attachment": core.port_attachment,
        "switch.info": core.switch_info,
        "ipam.hold": core.ipam_hold,
        "ipam.release": core.ipam_release,
        "tenant.list": core.list_tenants,
        "tenant.show": core.show,
        "port.info": core.port_info,
        "trace": core.trace,
        "flows": core.flows,
        "verify": core.verify,
        "stats": core.stats,
        "drops": core.drops,
        "logs": core.logs,
        "metrics": core.metrics_text,
        "progress": core.changes.snapshot,  # read-only, never the core's lock: answers while a change runs
    }


# In a cluster every member answers; a follower hands all but these to the leader
# (`progress` too: the leader is the one making the change).
LOCAL_OPS = {"ping", "cluster.status", "member.probe"}
# Changes: done once per request id, even when a client retries one across a failover.
WRITE_OPS = {"host.register", "host.invite", "host.resync", "tenant.create", "tenant.apply", "tenant.delete",
             "port.migrate", "port.add", "port.del"}
FAILOVER_WAIT = 30.0  # seconds a client keeps trying the cluster's members


class ApiServer:
    def __init__(self, core, path: str):
        from controller.server.errors import ApiError
        self.core = core
        self.ops = operations(core)
        self.ops["cluster.status"] = core.cluster_status
        self.ops["member.probe"] = core.member_probe
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
                answer = self.dispatch(req.get("op"), req.get("args") or {}, req.get("id"))
            except Exception as e:  # a malformed request
                answer = {"ok": False, "error": f"bad request: {e}"}
            try:
                conn.sendall(json.dumps(answer).encode() + b"\n")
            except OSError:
                pass

    def _forward(self, op, args: dict, rid) -> dict:
        """A follower's answer: the leader's (the client retries while there is none)."""
        c = self.core.cluster
        leader = c.leader
        if not leader or leader.get("name") == c.name or not leader.get("api"):
            return {"ok": False, "retry": True, "error": "no leader elected yet (a failover is under way)"}
        t0 = time.monotonic()
        try:
            _request(leader["api"], {"op": "ping", "args": {}}, 2)  # a stopped leader must not hold us
            out = _request(leader["api"], {"op": op, "args": args, "id": rid}, 600)
        except (OSError, ValueError) as e:
            out = {"ok": False, "retry": True, "error": f"the leader {leader['name']} does not answer: {e}"}
        if op in WRITE_OPS:
            LOG.info("%s %s: handed to %s, %s in %.0f ms", op, rid, leader["name"],
                     "ok" if out.get("ok") else out.get("error"), (time.monotonic() - t0) * 1000)
        return out

    def dispatch(self, op, args: dict, rid: str | None = None) -> dict:
        fn = self.ops.get(op)
        if fn is None:
            return {"ok": False, "error": f"unknown operation {op!r}"}
        c = self.core.cluster
        if c is not None and op not in LOCAL_OPS:
            if not c.is_leader:
                return self._forward(op, args, rid)
            if rid and op in WRITE_OPS:
                done = self.core.store.request_done(rid)
                if done is not None:  # a retry of a change that was made: answer, do not redo
                    what = done.get("what", "")
                    return {"ok": True, "result": {
                        "retried": True, "tenant": what.split(" ", 1)[-1], "hosts": {}, "attach_errors": [],
                        "action": f"already applied ({what}; the request was retried after a failover)"}}
                self.core.store.request_id.value = rid
                LOG.info("%s %s: doing it", op, rid)
        t0 = time.perf_counter()
        try:
            return {"ok": True, "result": fn(**args)}
        except self.api_error as e:
            return {"ok": False, "error": str(e), "errors": e.errors}
        except TypeError as e:
            return {"ok": False, "error": f"{op}: {e}"}
        except Exception as e:
            if type(e).__name__ == "NotLeader":  # deposed while serving it: nothing was written
                return {"ok": False, "retry": True, "error": str(e)}
            LOG.exception("%s failed", op)
            return {"ok": False, "error": f"{op} failed: {type(e).__name__}: {e}"}
        finally:
            m = getattr(self.core, "metrics", None)
            if m is not None:
                m.api_seconds.labels(op).observe(time.perf_counter() - t0)
            if c is not None and getattr(self.core.store, "request_id", None) is not None:
                self.core.store.request_id.value = None


class NetworkApiServer:
    """The join API on IP:PORT. `ctx` is a TLS server context (client certificates
    required); None means plain TCP."""

    def __init__(self, core, host: str, port: int, ctx=None):
        from controller.server.errors import ApiError
        self.core, self.ctx, self.api_error = core, ctx, ApiError
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)

    def serve_forever(self) -> None:
        while True:
            conn, addr = self.sock.accept()
            threading.Thread(target=self._handle, args=(conn, addr[0]), daemon=True).start()

    def _handle(self, conn: socket.socket, peer_ip: str) -> None:
        conn.settimeout(30)
        try:
            if self.ctx is not None:
                conn = self.ctx.wrap_socket(conn, server_side=True)
        except (OSError, ValueError) as e:  # no certificate, or one we did not sign
            LOG.warning("join API: TLS refused %s: %s", peer_ip, e)
            conn.close()
            return
        from controller.transport.pki import peer_name
        name = peer_name(conn.getpeercert()) if self.ctx is not None else None
        req: dict = {}
        with conn:
            try:
                req = json.loads(_read_line(conn))
                op, args = req.get("op"), req.get("args") or {}
                if op == "ping":
                    answer = {"ok": True, "result": {"pong": True, "peer": name}}
                elif op == "host.join":
                    answer = {"ok": True, "result": self.core.join_host(args.get("token"), peer_ip, name,
                                                                        args.get("mtu"))}
                elif op == "host.self":
                    answer = {"ok": True, "result": self.core.host_self(args.get("token"), name)}
                else:
                    answer = {"ok": False, "error": f"operation {op!r} is not offered over the network"}
            except self.api_error as e:
                answer = {"ok": False, "error": str(e)}
            except Exception as e:
                LOG.exception("join API")
                answer = {"ok": False, "error": f"bad request: {type(e).__name__}: {e}"}
            LOG.info("join API %s (%s): %s -> %s", peer_ip, name, req.get("op"),
                     "ok" if answer["ok"] else answer["error"])
            try:
                conn.sendall(json.dumps(answer).encode() + b"\n")
            except OSError:
                pass


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


def _request(path: str, req: dict, timeout: float) -> dict:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    with s:
        s.connect(path)
        s.sendall(json.dumps(req).encode() + b"\n")
        answer = json.loads(_read_line(s) or b"null")
    if not answer:
        raise ConnectionResetError("the controller closed the connection without an answer")
    return answer


def members(path: str) -> list[str]:
    """The API sockets to try: a cluster's members (members.json beside `path`, written
    by the lab), else just `path`."""
    try:
        with open(os.path.join(os.path.dirname(path), "members.json")) as f:
            apis = [m["api"] for m in json.load(f)]
    except (OSError, ValueError, KeyError):
        return [path]
    return [path] + [a for a in apis if a != path] if path in apis else apis


def call(path: str, op: str, timeout: float = 600, **args):
    """Send one request; return its result or raise ApiClientError. To a cluster: any
    member that answers (followers hand it to the leader); while a failover is under
    way, the same request (one id: a change is made once) again, for FAILOVER_WAIT s."""
    req = {"op": op, "args": args, "id": uuid.uuid4().hex}
    targets = members(path)
    deadline = time.monotonic() + FAILOVER_WAIT
    last = None
    for attempt in itertools.count():
        target = targets[attempt % len(targets)]
        try:
            if len(targets) > 1:  # a member that is stopped (not dead) must not hold the client
                _request(target, {"op": "ping", "args": {}}, 1.0)
            answer = _request(target, req, timeout)
        except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, BrokenPipeError, TimeoutError) as e:
            if len(targets) == 1:
                if isinstance(e, TimeoutError):
                    raise
                raise ApiClientError(f"no controller answers on {path} (is the lab up? try 'nvctl lab up')") from None
            last, answer = f"{target}: {e}", None
        if answer is not None and not answer.get("retry"):
            if not answer.get("ok"):
                raise ApiClientError(answer.get("error", "failed"), answer.get("errors"))
            return answer["result"]
        if answer is not None:
            last = answer.get("error")
            if len(targets) == 1:
                raise ApiClientError(last or "failed")
        if time.monotonic() > deadline:
            raise ApiClientError(f"no controller of the cluster answered for {FAILOVER_WAIT:.0f}s ({last})")
        if attempt % len(targets) == len(targets) - 1:
            time.sleep(0.2)


def remote_call(ip: str, port: int, op: str, ctx=None, timeout: float = 60, **args):
    """One request to a controller's network API (TLS when ctx is given)."""
    try:
        s = socket.create_connection((ip, port), timeout=timeout)
    except OSError as e:
        raise ApiClientError(f"cannot reach the controller at {ip}:{port}: {e.strerror or e}") from None
    try:
        if ctx is not None:
            s = ctx.wrap_socket(s)
        s.sendall(json.dumps({"op": op, "args": args}).encode() + b"\n")
        answer = json.loads(_read_line(s) or b"null")
    except (OSError, ValueError) as e:
        raise ApiClientError(f"the controller at {ip}:{port} refused the connection: {e}") from None
    finally:
        s.close()
    if not answer:
        raise ApiClientError(f"the controller at {ip}:{port} closed the connection without an answer "
                             "(it refused our certificate?)")
    if not answer.get("ok"):
        raise ApiClientError(answer.get("error", "failed"))
    return answer["result"]
