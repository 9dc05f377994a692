"""The controller's API: one JSON request and one JSON answer per connection, over a
unix socket that only root can open (mode 0600), so only root on this machine can
change tenants.

Request:  {"op": "tenant.create", "args": {"yaml": "..."}, "id": "..."}
Answer:   {"ok": true, "result": ...}  or  {"ok": false, "error": "...", "errors": [[path, reason], ...]}

The operations, their arguments and what each touches are declared in
controller.server.ops (and answered by the `api.operations` operation). Every request
is checked against that declaration before anything is called: an unknown, missing or
mistyped argument is answered naming it. An error inside an operation is the
controller's, not the caller's: it is logged with its traceback and the request's id,
and answered as an internal error carrying that id.

Hosts on other machines reach a second, much smaller API over the network
(`NetworkApiServer`): TLS with a client certificate signed by the controller's switch
CA (or plain TCP only when the controller is started with --insecure), and only the
operations a joining host needs (declared with over "network": ping, host.join and
host.self), checked and answered the same way.

The framing is controller.transport.framing's; the client side is controller.client.api.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

from controller.server.access import ROOT, AuditTrail, Principal, decide
from controller.server.errors import ApiError, Refused
from controller.server.ops import LOCAL_OPS, OPS, WRITE_OPS, Op, check_args, describe, resolve
from controller.transport.framing import receive, request, send

LOG = logging.getLogger("nvctl.api")


# the unix socket's operations answered by the API itself, not by the core: ctx -> result
BUILTINS = {"ping": lambda ctx: {"pong": True}, "api.operations": lambda ctx: describe(),
            "auth.whoami": lambda ctx: ctx.get("principal")}


def operations(core) -> dict:
    """name -> the callable that answers it, for every operation of the unix socket
    (what a test or an in-process caller uses without the socket; no argument checks)."""
    out = {name: (lambda fn=fn: fn({})) for name, fn in BUILTINS.items()}
    for op in OPS.values():
        if op.call is not None and "unix" in op.over:
            out[op.name] = resolve(core, op)
    return out


def bad_arguments(op: Op, args) -> dict | None:
    """The answer to a request whose arguments do not fit the declaration, or None."""
    errors = check_args(op, args)
    if not errors:
        return None
    name, why = errors[0]
    more = f" (and {len(errors) - 1} more: {', '.join(e[0] for e in errors[1:])})" if len(errors) > 1 else ""
    return {"ok": False, "error": f"{op.name}: argument '{name}' {why}{more}", "errors": errors}


def failure(op: str, rid: str, e: Exception) -> dict:
    """The answer to an exception that is neither the caller's mistake (ApiError) nor a
    lost leadership (NotLeader: nothing was written, the client retries): the
    controller's own error, logged with its traceback under the request's id."""
    if type(e).__name__ == "NotLeader":  # deposed while serving it: nothing was written
        return {"ok": False, "retry": True, "error": str(e)}
    if type(e).__name__ == "EtcdUnavailable":  # the store, not the controller: say which and why
        return {"ok": False, "error": f"{op} failed: the store is unavailable: {e}", "request_id": rid}
    LOG.error("%s (request %s) failed", op, rid, exc_info=e)
    return {"ok": False, "error": f"internal error in {op} (request {rid}); see the controller's log",
            "request_id": rid}


def invoke(core, op: Op, args: dict, rid: str, context: dict | None = None, builtins: dict | None = None) -> dict:
    """Call an operation whose arguments were checked; its answer."""
    t0 = time.perf_counter()
    try:
        if op.call is None:
            result = builtins[op.name](context or {}, **args)
        else:
            result = resolve(core, op)(**args, **{k: (context or {}).get(k) for k in op.context})
        return {"ok": True, "result": result}
    except ApiError as e:
        return {"ok": False, "error": str(e), "errors": e.errors, **({"denied": True} if isinstance(e, Refused) else {})}
    except Exception as e:
        return failure(op.name, rid, e)
    finally:
        m = getattr(core, "metrics", None)
        if m is not None:
            m.api_seconds.labels(op.name).observe(time.perf_counter() - t0)


def new_request_id() -> str:
    return uuid.uuid4().hex


def _answer(conn: socket.socket, answer: dict, op, rid) -> None:
    """Send the answer; one that cannot be sent as JSON is the controller's error."""
    try:
        try:
            send(conn, answer)
        except (TypeError, ValueError) as e:  # a result that is not JSON
            send(conn, failure(str(op), rid or new_request_id(), e))
    except OSError:
        pass


class ApiServer:
    def __init__(self, core, path: str):
        self.core = core
        self.path = path
        self.builtins = BUILTINS
        self.member_client = None  # (url, op, args, rid, principal) -> answer: set with a network API
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
            req: dict = {}
            try:
                req = receive(conn)
                if not isinstance(req, dict):
                    raise ValueError("a request is a JSON object")
            except (OSError, ValueError) as e:  # a malformed request
                answer = {"ok": False, "error": f"bad request: {e}"}
            else:
                principal, answer = ROOT, None
                if req.get("as") is not None:  # root acting as a credential's holder (the web view)
                    p, why = self.core.authenticator.token(req["as"], "unix")
                    if p is None:
                        answer = self._audit(Principal("(unauthenticated)", "", "unix"), req.get("op"), "",
                                             req.get("id"), {"ok": False, "unauthenticated": True,
                                                             "error": "authentication failed: give a valid credential"},
                                             refused=True)
                    principal = Principal(p.name, p.role, "unix-as") if p else ROOT
                if answer is None:
                    answer = self.dispatch(req.get("op"), req.get("args") or {}, req.get("id"), principal=principal)
            _answer(conn, answer, req.get("op"), req.get("id"))

    def _forward(self, op, args: dict, rid, principal: Principal) -> dict:
        """A follower's answer: the leader's (the client retries while there is none),
        asked over the leader's network API as a member (mutual TLS), on behalf of the
        caller, whom the leader checks again. A leader without a network API (a cluster
        on one machine, no --api-listen) is asked over its unix socket, for root only."""
        c = self.core.cluster
        leader = c.leader
        if not leader or leader.get("name") == c.name or not (leader.get("url") or leader.get("api")):
            return {"ok": False, "retry": True, "error": "no leader elected yet (a failover is under way)"}
        t0 = time.monotonic()
        try:
            if leader.get("url") and self.member_client is not None:
                out = self.member_client(leader["url"], op, args, rid, principal)
            elif principal.role == "admin" and principal.via == "unix" and leader.get("api"):
                request(leader["api"], {"op": "ping", "args": {}}, 2)  # a stopped leader must not hold us
                out = request(leader["api"], {"op": op, "args": args, "id": rid}, 600)
            else:
                out = {"ok": False, "error": f"the leader {leader['name']} has no network API to hand this to"}
        except (OSError, ValueError) as e:
            out = {"ok": False, "retry": True, "error": f"the leader {leader['name']} does not answer: {e}"}
        if op in WRITE_OPS:
            LOG.info("%s %s: handed to %s, %s in %.0f ms", op, rid, leader["name"],
                     "ok" if out.get("ok") else out.get("error"), (time.monotonic() - t0) * 1000)
        return out

    def _port_host(self, tenant, port):
        return self.core.port_host(tenant, port)

    def _audit(self, principal: Principal, op, scope: str, rid, answer: dict, refused: bool = False) -> dict:
        if refused or answer.get("denied"):  # by role (access.decide), or inside the operation (errors.Refused)
            result = "refused: " + str(answer.get("error") or "hidden (answered as for no such tenant)")
        elif answer.get("ok"):
            result = "ok"
        else:
            result = ("retry: " if answer.get("retry") else "failed: ") + str(answer.get("error"))[:200]
        trail = getattr(self.core, "audit_trail", None)
        if isinstance(trail, AuditTrail):  # (a test's stand-in core has none)
            trail.record(principal, op, scope, rid, result)
        return answer

    def dispatch(self, op, args: dict, rid: str | None = None, principal: Principal = ROOT,
                 context: dict | None = None) -> dict:
        """Check the request against its operation's declaration and the caller's role,
        then answer it: here, or (a cluster's follower) by the leader; a retried change
        that was made is not made again. `rid`: the client's request id (one is made for
        the log when none). Every request, allowed or refused, goes to the audit trail
        (but one handed to the leader: the leader records it)."""
        o = OPS.get(op) if isinstance(op, str) else None
        if o is None:
            return self._audit(principal, op, "", rid, {"ok": False, "error": f"unknown operation {op!r}"})
        if "unix" not in o.over:
            if principal.via == "unix":
                return self._audit(principal, op, "", rid, {
                    "ok": False, "error": f"operation {op!r} is offered only over the network join API"})
            # a joining host's request, over the network API or handed over by a member:
            # what the operation takes from the connection comes from the principal
            context = {"peer_ip": principal.peer, "peer_name": principal.host}
        if rid is not None and not isinstance(rid, str):
            return self._audit(principal, op, "", None, {"ok": False, "error": "bad request: its id must be a string"})
        bad = bad_arguments(o, args)
        if bad is not None:
            return self._audit(principal, op, "", rid, bad)
        d = decide(principal, o, args, context, port_host=self._port_host)
        if not d.allow:
            return self._audit(principal, op, d.scope, rid, dict(d.answer), refused=True)
        args = d.args
        log_id = rid or new_request_id()
        c = getattr(self.core, "cluster", None)
        try:
            if c is not None and op not in LOCAL_OPS:
                if not c.is_leader:
                    return self._forward(op, args, log_id, principal)
                if rid and op in WRITE_OPS:
                    done = self.core.store.request_done(rid)
                    if done is not None:  # a retry of a change that was made: answer, do not redo
                        what = done.get("what", "")
                        return self._audit(principal, op, d.scope, rid, {"ok": True, "result": {
                            "retried": True, "tenant": what.split(" ", 1)[-1], "hosts": {}, "attach_errors": [],
                            "action": f"already applied ({what}; the request was retried after a failover)"}})
                    self.core.store.request_id.value = rid
                    LOG.info("%s %s: doing it", op, rid)
            if o.call is None or "principal" in o.context:  # the answer may depend on who asks
                context = {**(context or {}), "principal": principal.to_json()}
            answer = invoke(self.core, o, args, log_id, context, builtins=self.builtins)
            if d.filter_tenant is not None and answer.get("ok"):
                answer["result"] = [r for r in answer["result"] if r.get("name") == d.filter_tenant]
            if d.fields is not None and answer.get("ok"):
                answer["result"] = [{k: r[k] for k in d.fields if k in r} for r in answer["result"]]
            return self._audit(principal, op, d.scope, log_id, answer)
        except Exception as e:  # around the operation: the dedup's store read, the forwarding
            return self._audit(principal, op, d.scope, log_id, failure(op, log_id, e))
        finally:
            if c is not None and getattr(self.core.store, "request_id", None) is not None:
                self.core.store.request_id.value = None


class NetworkApiServer:
    """The join API on IP:PORT. `ctx` is a TLS server context (client certificates
    required); None means plain TCP."""

    def __init__(self, core, host: str, port: int, ctx=None):
        self.core, self.ctx = core, ctx
        self.api = None  # the ApiServer a follower hands joins to the leader through (main sets it)
        self.builtins = {"ping": lambda ctx: {"pong": True, "peer": ctx.get("peer_name")}}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)

    def serve_forever(self) -> None:
        while True:
            conn, addr = self.sock.accept()
            threading.Thread(target=self._handle, args=(conn, addr[0]), daemon=True).start()

    def dispatch(self, op, args: dict, context: dict) -> dict:
        """An operation offered over the network, checked like any other; `context` (the
        connection's peer_ip and certificate name peer_name) fills the arguments the
        operation takes from the connection, which a client can never send."""
        o = OPS.get(op) if isinstance(op, str) else None
        if o is None or "network" not in o.over:
            return {"ok": False, "error": f"operation {op!r} is not offered over the network"}
        c = getattr(self.core, "cluster", None)
        name = context.get("peer_name")
        if (c is not None and not c.is_leader and o.name not in LOCAL_OPS and name
                and self.api is not None):  # a follower: the leader does it, for this host
            return bad_arguments(o, args) or self.api.dispatch(
                op, args, new_request_id(), principal=Principal(name, f"host:{name}", "cert", context.get("peer_ip")))
        return bad_arguments(o, args) or invoke(self.core, o, args, new_request_id(), context, self.builtins)

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
                req = receive(conn)
                if not isinstance(req, dict):
                    raise ValueError("a request is a JSON object")
            except (OSError, ValueError) as e:
                req = req if isinstance(req, dict) else {}
                answer = {"ok": False, "error": f"bad request: {type(e).__name__}: {e}"}
            else:
                answer = self.dispatch(req.get("op"), req.get("args") or {}, {"peer_ip": peer_ip, "peer_name": name})
            LOG.info("join API %s (%s): %s -> %s", peer_ip, name, req.get("op"),
                     "ok" if answer["ok"] else answer["error"])
            _answer(conn, answer, req.get("op"), None)
