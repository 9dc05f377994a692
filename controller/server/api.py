"""The controller's API: one JSON request and one JSON answer per connection, over a
unix socket that only root can open (mode 0600), so only root on this machine can
change tenants.

Request:  {"op": "tenant.create", "args": {"yaml": "..."}}
Answer:   {"ok": true, "result": ...}  or  {"ok": false, "error": "...", "errors": [[path, reason], ...]}

Hosts on other machines reach a second, much smaller API over the network
(`NetworkApiServer`): TLS with a client certificate signed by the controller's switch
CA (or plain TCP only when the controller is started with --insecure), and only the
operations a joining host needs: ping, host.join and host.self.

The framing is controller.transport.framing's; the client side is controller.client.api.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

from controller.transport.framing import read_line, request

LOG = logging.getLogger("nvctl.api")


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
                data = read_line(conn)
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
            request(leader["api"], {"op": "ping", "args": {}}, 2)  # a stopped leader must not hold us
            out = request(leader["api"], {"op": op, "args": args, "id": rid}, 600)
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
                req = json.loads(read_line(conn))
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
