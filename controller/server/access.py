"""Who is asking, and what they may do: credentials, roles, the decision per request, the
audit trail.

A principal is who a request comes from:
  root            the unix socket (only root on the controller's machine opens it): admin
  a credential    a bearer token `nvctl1.NAME.SECRET` sent over TLS; the store keeps
                  only a SHA-256 of SECRET, the role, the expiry and the revocation
  a host          a client certificate signed by the switch CA (CN = the host's name,
                  as every joined host has): role host:NAME
  a member        a client certificate signed by the controller CA (another member of
                  the cluster): it may speak for the principal it forwards

Roles:
  admin           everything
  viewer          every operation that only reads, but credentials and the audit trail
  tenant:NAME     that tenant only; another tenant is answered exactly as a tenant that
                  does not exist ("no tenant 'X'"), and a change naming one is refused
                  without saying whether it exists; lists, verify and progress without a
                  tenant are narrowed to its own
  host:NAME       what a hypervisor and its runtimes need: its own host's operations,
                  ports placed on itself (add, remove, attach), tenants' switches, specs
                  and address holds; no change on another host
  layer:LAYER[@TENANT]
                  a controller that owns one policy layer (LAYER one of
                  controller.server.owners.LAYERS: acls, networkPolicies, loadBalancers,
                  nat) of every tenant's spec, or of TENANT's only: it lists those tenants
                  (names only) and reads and writes that layer (layer.show, layer.put), and
                  nothing else: not ports, not the rest of the spec, not another layer, not
                  verify, stats or the audit trail. The first layer.put makes it the
                  layer's owner; owners.py says what that protects. With @TENANT, another
                  tenant is hidden as for tenant:NAME (reads: "no tenant 'X'"; writes:
                  refused without saying whether it exists)

`decide(principal, op, args, ...)` is the one decision, made by the API server before
an operation is called (controller.server.api); the operations declare their scope
(controller.server.ops) and nothing else here knows an operation by name except the
handful of exceptions listed below.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass, field

from controller.server.errors import ApiError, unknown_tenant
from controller.server.ops import Op, scope_of
from controller.server.owners import LAYERS

LOG = logging.getLogger("nvctl.audit")
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
TOKEN_PREFIX = "nvctl1"
CREDENTIAL_KIND = "nvctl-credential"  # a credential file's "kind" (what the client checks)
CACHE_SECONDS = 0.5  # a revocation reaches every member within this (each reads the store)
MAX_TTL = 10 * 365 * 86400

# operations only an admin may call, whatever their scope says
ADMIN_ONLY = frozenset({"credential.issue", "credential.list", "credential.revoke", "host.register",
                        "host.invite", "member.probe"})
# cluster-wide reads a tenant gets narrowed to its own tenant: op -> the argument to set
NARROWED = {"verify": "tenant", "verify.changes": "tenant", "progress": "tenant", "audit.list": "tenant"}
FILTERED = frozenset({"tenant.list"})  # answered with the caller's own rows only
# what a read answers for a tenant that does not exist, where that is not unknown_tenant
HIDDEN_RESULT = {"progress": None}
# what a host credential may do besides its own host's operations
# (tenant.show: a runtime's garbage collection lists its ports; the host carries the
# tenant's flows anyway, so its spec is no secret from it)
HOST_TENANT_OPS = frozenset({"switch.info", "ipam.hold", "ipam.release", "port.add", "port.del",
                             "port.attachment", "port.info", "tenant.show"})
HOST_OWN_PORT_OPS = frozenset({"port.del", "port.attachment", "port.info"})
# what a layer:LAYER credential may do with a tenant (its own layer only)
LAYER_OPS = frozenset({"layer.show", "layer.put"})
ROLES = "admin, viewer, tenant:NAME, host:NAME or layer:LAYER[@TENANT]"


@dataclass(frozen=True)
class Principal:
    name: str
    role: str  # admin | viewer | tenant:NAME | host:NAME | member
    via: str  # unix | token | cert | member
    peer: str | None = None  # the network address it came from

    @property
    def tenant(self) -> str | None:
        return self.role.split(":", 1)[1] if self.role.startswith("tenant:") else None

    @property
    def host(self) -> str | None:
        return self.role.split(":", 1)[1] if self.role.startswith("host:") else None

    @property
    def layer(self) -> tuple[str, str | None] | None:
        """(LAYER, TENANT or None for every tenant) of a layer:LAYER[@TENANT] role."""
        return parse_layer_role(self.role)

    def to_json(self) -> dict:
        return {"name": self.name, "role": self.role, "via": self.via, "peer": self.peer}

    @staticmethod
    def from_json(d: dict, via: str) -> "Principal":
        return Principal(str(d["name"]), str(d["role"]), via, d.get("peer"))


ROOT = Principal("root", "admin", "unix")


def parse_layer_role(role) -> tuple[str, str | None] | None:
    """layer:LAYER -> (LAYER, None); layer:LAYER@TENANT -> (LAYER, TENANT); else None."""
    kind, sep, rest = str(role).partition(":")
    if kind != "layer" or not sep:
        return None
    layer, at, tenant = rest.partition("@")
    if layer not in LAYERS or (at and not NAME_RE.match(tenant)):
        return None
    return layer, tenant if at else None


def check_role(role) -> str:
    """The role, or an ApiError naming what is wrong with it."""
    if role in ("admin", "viewer"):
        return role
    kind, sep, name = str(role).partition(":")
    if sep and kind in ("tenant", "host") and NAME_RE.match(name):
        return role
    if kind == "layer" and sep:
        if parse_layer_role(role) is not None:
            return role
        layer, at, tenant = name.partition("@")
        why = (f"LAYER {layer!r} is not one of {', '.join(LAYERS)}" if layer not in LAYERS else
               f"TENANT {tenant!r} is not a name (a-z, 0-9, '-', starting with a letter)")
        raise ApiError(f"role {role!r}: {why}", [["role", f"layer:LAYER[@TENANT], LAYER one of {', '.join(LAYERS)}"]])
    raise ApiError(f"role {role!r}: one of {ROLES}", [["role", ROLES]])


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    parts = str(token).split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


# the decision ------------------------------------------------------------------------

@dataclass
class Decision:
    allow: bool
    args: dict = field(default_factory=dict)  # the arguments to call with (narrowed)
    answer: dict | None = None  # when refused: the answer to give
    scope: str = ""  # for the audit trail: "tenant:blue", "host:hv1", "cluster", ""
    filter_tenant: str | None = None  # keep only this tenant's rows of a list's answer
    fields: tuple | None = None  # keep only these keys of each row of a list's answer


def _deny(why: str, scope: str) -> Decision:
    return Decision(False, answer={"ok": False, "error": f"permission denied: {why}", "denied": True}, scope=scope)


def _hide(name: str, scope: str) -> Decision:
    """The answer a tenant that does not exist gets, word for word."""
    return Decision(False, answer={"ok": False, "error": str(unknown_tenant(name)), "errors": []}, scope=scope)


def decide(p: Principal, op: Op, args: dict, context: dict | None = None, port_host=None) -> Decision:
    """May `p` call `op` with `args`? `port_host(tenant, port)` answers where a port is
    placed (None: no such port), for host credentials."""
    kind, name = scope_of(op, args, context)
    scope = f"{kind}:{name}" if name else kind
    if p.role in ("admin", "member"):
        return Decision(True, args, scope=scope)
    if op.name in ADMIN_ONLY:
        return _deny(f"{op.name} is for admin credentials ({p.name} is {p.role})", scope)
    if kind == "none":
        return Decision(True, args, scope=scope)
    if p.role == "viewer":
        if op.kind == "read" and op.name != "audit.list":
            return Decision(True, args, scope=scope)
        return _deny(f"{p.name} is a viewer: it may only read", scope)
    if p.tenant is not None:
        return _decide_tenant(p, p.tenant, op, args, kind, name, scope)
    if p.host is not None:
        return _decide_host(p, p.host, op, args, kind, name, scope, port_host)
    if p.layer is not None:
        return _decide_layer(p, *p.layer, op, args, kind, name, scope)
    return _deny(f"unknown role {p.role!r}", scope)


def _decide_tenant(p, mine, op, args, kind, name, scope) -> Decision:
    if kind == "tenant":
        if name == mine:
            return Decision(True, args, scope=scope)
        if op.kind == "read" and op.scope_arg != "yaml" and name is not None:
            if op.name in HIDDEN_RESULT:
                return Decision(False, answer={"ok": True, "result": HIDDEN_RESULT[op.name]}, scope=scope)
            return _hide(name, scope)
        return _deny(f"{p.name} may only use tenant {mine}" + (" (the YAML must name it in metadata.name)"
                                                             if op.scope_arg == "yaml" else ""), scope)
    if kind == "cluster" and op.name in NARROWED:
        return Decision(True, {**args, NARROWED[op.name]: mine}, scope=f"tenant:{mine}")
    if kind == "cluster" and op.name in FILTERED:
        return Decision(True, args, scope=f"tenant:{mine}", filter_tenant=mine)
    return _deny(f"{op.name} is not for tenant credentials ({p.name} is {p.role})", scope)


def _decide_host(p, mine, op, args, kind, name, scope, port_host) -> Decision:
    if kind == "host":
        if name == mine and op.name not in ADMIN_ONLY:
            return Decision(True, args, scope=scope)
        return _deny(f"{p.name} may only act for host {mine}", scope)
    if kind == "tenant" and op.name in HOST_TENANT_OPS and name is not None:
        if op.name == "port.add" and args.get("host") != mine:
            return _deny(f"{p.name} adds ports on host {mine} only (give host={mine})", scope)
        if op.name in HOST_OWN_PORT_OPS:
            placed = port_host(name, args.get("port")) if port_host else None
            if placed != mine:
                return _deny(f"{p.name} may only touch ports placed on host {mine}", scope)
        return Decision(True, args, scope=scope)
    return _deny(f"{op.name} is not for host credentials ({p.name} is {p.role})", scope)


def _decide_layer(p, layer, only, op, args, kind, name, scope) -> Decision:
    which = f"tenant {only}" if only else "every tenant"
    may = (f"it may list tenants and read and write spec.{layer} of {which} (layer.show, layer.put), "
           "nothing else")
    if kind == "tenant" and op.name in LAYER_OPS and name is not None:
        if only is not None and name != only:
            if op.kind == "read":
                return _hide(name, scope)
            return _deny(f"{p.name} may only use tenant {only}", scope)
        if args.get("layer") != layer:
            return _deny(f"{p.name} ({p.role}) may not touch spec.{args.get('layer')}: {may}", scope)
        if args.get("release"):
            return _deny(f"only an admin releases a layer's owner ({p.name} is {p.role})", scope)
        return Decision(True, args, scope=scope)
    if kind == "cluster" and op.name == "tenant.list":
        return Decision(True, args, scope=f"tenant:{only}" if only else "cluster", filter_tenant=only,
                        fields=("name",))
    return _deny(f"{p.name} ({p.role}) may not call {op.name}: {may}", scope)


# credentials -------------------------------------------------------------------------

class Authenticator:
    """Tokens checked against the store's credentials, read again at most every
    CACHE_SECONDS (so a revocation made on any member holds everywhere within it)."""

    def __init__(self, store, clock=time.time):
        self.store, self.clock = store, clock
        self._cache: tuple[float, dict] | None = None
        self._lock = threading.Lock()

    def credentials(self) -> dict[str, dict]:
        now = time.monotonic()
        with self._lock:
            if self._cache is not None and now - self._cache[0] < CACHE_SECONDS:
                return self._cache[1]
        creds = self.store.credentials()
        with self._lock:
            self._cache = (now, creds)
        return creds

    def forget(self) -> None:
        with self._lock:
            self._cache = None

    def token(self, token: str | None, peer: str | None) -> tuple[Principal | None, str]:
        """(principal, "") or (None, why), the why for the log and the audit trail only:
        the client is told nothing but that it failed."""
        if not token:
            return None, "no credential"
        parsed = parse_token(token)
        if parsed is None:
            return None, "not an nvctl token"
        name, secret = parsed
        c = self.credentials().get(name)
        # compare even when there is no such credential, so the time says nothing
        ok = hmac.compare_digest(digest(secret), (c or {}).get("hash", "0" * 64))
        if c is None or not ok:
            return None, f"bad token for {name!r}"
        if c.get("revoked"):
            return None, f"credential {name} was revoked"
        if c.get("expires") and self.clock() >= c["expires"]:
            return None, f"credential {name} expired"
        return Principal(name, c["role"], "token", peer), ""


class Throttle:
    """Failed authentication, slowed down per address: after FREE failures within WINDOW
    seconds, each further one waits twice as long as the last (up to MAX_DELAY)."""

    FREE, WINDOW, BASE, MAX_DELAY = 5, 60.0, 0.1, 5.0

    def __init__(self):
        self._fails: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def failed(self, peer: str) -> float:
        """Record a failure; the seconds to wait before answering it."""
        now = time.monotonic()
        with self._lock:
            times = [t for t in self._fails.get(peer, []) if now - t < self.WINDOW] + [now]
            self._fails[peer] = times[-64:]
            extra = len(times) - self.FREE
        return 0.0 if extra <= 0 else min(self.BASE * 2 ** (extra - 1), self.MAX_DELAY)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


class AccessMixin:
    """Core's operations on credentials and the audit trail (a piece of Core)."""

    def credential_issue(self, name: str, role: str, ttl: float | None = None) -> dict:
        """A new credential; its token is in this answer only (the store keeps a hash)."""
        if not NAME_RE.match(name or ""):
            raise ApiError(f"credential name {name!r}: 1-63 of a-z, 0-9 and '-', starting with a letter",
                           [["name", "a-z, 0-9, '-'"]])
        check_role(role)
        if ttl is not None and not 0 < ttl <= MAX_TTL:
            raise ApiError(f"ttl {ttl!r}: between 1 s and 10 years", [["ttl", "out of range"]])
        with self.mutex:
            have = self.store.credentials().get(name)
            if have is not None and not have.get("revoked"):
                raise ApiError(f"credential {name} exists (revoke it first to issue it again)",
                               [["name", "taken"]])
            secret = new_secret()
            now = time.time()
            doc = {"role": role, "hash": digest(secret), "created": now,
                   "expires": now + ttl if ttl else None, "revoked": None}
            self.store.put_credential(name, doc)
        self.authenticator.forget()
        return {"kind": CREDENTIAL_KIND, "name": name, "role": role, "token": f"{TOKEN_PREFIX}.{name}.{secret}",
                "expires": doc["expires"], **self.api_endpoints()}

    def host_credential(self, host: str) -> dict:
        """A joining host's credential (host:NAME), issued anew at each join."""
        name = f"host-{host}"
        if name in self.store.credentials():
            self.credential_revoke(name)
        return self.credential_issue(name, f"host:{host}", None)

    def credential_list(self) -> list[dict]:
        now = time.time()
        out = []
        for name, c in sorted(self.store.credentials().items()):
            state = ("revoked" if c.get("revoked") else
                     "expired" if c.get("expires") and c["expires"] <= now else "valid")
            out.append({"name": name, "role": c["role"], "created": c["created"], "expires": c.get("expires"),
                        "revoked": c.get("revoked"), "state": state})
        return out

    def credential_revoke(self, name: str) -> dict:
        with self.mutex:
            c = self.store.credentials().get(name)
            if c is None:
                raise ApiError(f"no credential {name!r}", [["name", "unknown"]])
            if not c.get("revoked"):
                c = {**c, "revoked": time.time()}
                self.store.put_credential(name, c)
        self.authenticator.forget()
        return {"name": name, "revoked": c["revoked"]}

    def audit_list(self, tenant: str | None = None, last: int = 50) -> list[dict]:
        """The newest `last` requests (of `tenant`: made by its credentials, or naming it)."""
        if not 0 < last <= 10000:
            raise ApiError(f"last {last}: between 1 and 10000", [["last", "out of range"]])
        if tenant is not None and tenant not in self.tenants:
            raise unknown_tenant(tenant)
        self.audit_trail.flush()
        if tenant is None:
            return self.store.audit_entries(last)
        rows = [e for e in self.store.audit_entries(10000)
                if e.get("role") == f"tenant:{tenant}"]
        return rows[-last:]

    def port_host(self, tenant: str, port) -> str | None:
        """Where a port is placed (None: no such tenant or port), for host credentials."""
        e = self.tenants.get(tenant)
        p = next((p for p in e.tenant.ports if p.name == port), None) if e is not None else None
        return p.host if p is not None else None

    def api_endpoints(self) -> dict:
        """Where a client reaches the network API: every member's URL, and the CA to trust."""
        servers = list(self.endpoints.get("api_urls") or [])
        if self.cluster is not None:
            servers = self.cluster.api_urls() or servers
        ca = self.pki.read(self.pki.controller_ca) if self.pki is not None else None
        return {"servers": servers, "ca": ca}


class AuditTrail:
    """Every request, allowed or refused, written to the store in batches off the
    request's path (a background thread; `flush` writes what is pending now)."""

    def __init__(self, store, member: str = "", interval: float = 0.2):
        self.store, self.member, self.interval = store, member, interval
        self._pending: list[dict] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()

    def record(self, p: Principal, op, scope: str, rid: str | None, result: str) -> None:
        e = {"time": time.time(), "member": self.member, "who": p.name, "role": p.role, "via": p.via,
             "peer": p.peer, "op": op if isinstance(op, str) else repr(op), "scope": scope, "request_id": rid,
             "result": result}
        with self._lock:
            self._pending.append(e)
        self._wake.set()

    def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        if batch:
            try:
                self.store.append_audit(batch)
            except Exception:  # noqa: BLE001 - the store is away: keep them for the next try
                with self._lock:
                    self._pending[:0] = batch[-10000:]
                raise

    def run(self) -> None:
        while True:
            self._wake.wait(5)
            self._wake.clear()
            time.sleep(self.interval)
            try:
                self.flush()
            except Exception as e:  # noqa: BLE001
                LOG.warning("audit trail not written yet: %s", e)
