"""The API's operations, declared: what each is called on the wire, which Core method
answers it, the arguments it takes (and of which JSON types), whether it reads or
changes, and what it touches. The API server (controller.server.api) checks every
request against this table before it calls anything, so a caller's mistake is named
as one, and an error inside an operation is never blamed on the caller.

`scope` says what an operation touches, for access control by role:
  "tenant"   one tenant, named by the argument `scope_arg` ("yaml": the tenant's
             metadata.name, see tenant_of_yaml); when that argument is optional and
             absent (None), the operation reads every tenant: the scope is "cluster"
  "host"     one host, named by `scope_arg` (an argument, or for the join API the
             connection's certificate name, `peer_name`)
  "cluster"  the controller as a whole (every host, every tenant)
  "none"     nothing (ping, this table)

`over`: which server offers it: "unix" (the root-only socket and the HTTPS API, both
behind one dispatcher) and/or "network" (the join API, for hosts; its arguments
`context` come from the connection, never from the client). `local`: answered by any member of a cluster; a follower hands the
others to the leader.
"""
from __future__ import annotations

from dataclasses import dataclass, field

REQUIRED = type("Required", (), {"__repr__": lambda self: "REQUIRED"})()
NONE = type(None)
KINDS = ("read", "change")
SCOPES = ("tenant", "host", "cluster", "none")
JSON_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array",
              NONE: "null"}


@dataclass(frozen=True)
class Arg:
    types: tuple  # accepted JSON types (of JSON_NAMES); None only with a None default
    default: object = REQUIRED

    def __post_init__(self):
        assert self.types and all(t in JSON_NAMES for t in self.types), self.types
        assert (NONE in self.types) == (self.default is None), "None is accepted exactly when it is the default"

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def accepts(self, value) -> bool:
        """bool is not an integer; an integer is a number; None only where declared."""
        t = type(value)
        if t is bool:
            return bool in self.types
        if t is int:
            return int in self.types or float in self.types
        return any(isinstance(value, k) for k in self.types if k is not bool and k is not int)

    def type_names(self) -> list[str]:
        return [JSON_NAMES[t] for t in self.types]


def req(*types) -> Arg:
    """A required argument."""
    return Arg(types)


def opt(default, *types) -> Arg:
    """An optional argument; with a None default, None is accepted too."""
    return Arg(types + ((NONE,) if default is None else ()), default)


@dataclass(frozen=True)
class Op:
    name: str
    call: str | None  # the Core attribute that answers (dotted); None: the API server answers itself
    args: dict = field(default_factory=dict)  # name -> Arg, in the method's order
    kind: str = "read"
    scope: str = "none"
    scope_arg: str | None = None
    over: tuple = ("unix",)
    local: bool = False
    context: tuple = ()  # the method's arguments the server fills from the connection
    doc: str = ""

    def __post_init__(self):
        assert self.kind in KINDS and self.scope in SCOPES, self
        assert (self.scope in ("tenant", "host")) == (self.scope_arg is not None), self
        assert self.scope_arg in (None, "yaml", *self.args, *self.context), self


def _ops(*ops: Op) -> dict[str, Op]:
    out = {}
    for op in ops:
        assert op.name not in out, op.name
        out[op.name] = op
    return out


T = dict(scope="tenant", scope_arg="tenant")  # the usual: one tenant, named by `tenant`
TENANT_PORT = {"tenant": req(str), "port": req(str)}

OPS: dict[str, Op] = _ops(
    # the API itself ------------------------------------------------------------------------
    Op("ping", None, over=("unix", "network"), local=True,
       doc="Is the controller there (over the network: and which certificate it saw)."),
    Op("api.operations", None, local=True,
       doc="This table: every operation, its arguments and their types, what it reads or changes."),
    # hosts ------------------------------------------------------------------------------
    Op("host.register", "register_host",
       {"name": req(str), "pa": req(str), "dpid": req(int), "info": req(dict)},
       kind="change", scope="host", scope_arg="name", doc="Record a host the lab made (no join)."),
    Op("host.invite", "invite_host",
       {"name": req(str), "pa": req(str), "tls": opt(True, bool), "workloads": opt(None, dict)},
       kind="change", scope="host", scope_arg="name", doc="Allow one host to join; answers its join bundle."),
    Op("host.resync", "resync", {"name": req(str)}, kind="change", scope="host", scope_arg="name",
       doc="Re-read one host's switch and repair what differs."),
    Op("host.list", "list_hosts", {"check": opt(False, bool)}, scope="cluster",
       doc="Every host and whether its switch holds its desired state (check: read every switch "
           "again first, correcting drift)."),
    Op("host.join", "join_host", {"token": req(str), "mtu": opt(None, int), "provider_networks": opt(None, dict),
                                  "provider_address": opt(None, str)},
       kind="change",
       scope="host", scope_arg="peer_name", over=("network",), context=("peer_ip", "peer_name"),
       doc="A host joins with its invitation's token (the join API)."),
    Op("host.self", "host_self", {"token": req(str)}, scope="host", scope_arg="peer_name",
       over=("network",), context=("peer_name",), doc="What a joined host may ask about itself (the join API)."),
    Op("host.interfaces", "report_interfaces",
       {"host": req(str), "interfaces": req(list), "complete": opt(False, bool)}, kind="change", scope="host",
       scope_arg="host",
       doc="A host reports the interfaces on its br-int ({name, ofport or null when gone, iface_id}; complete: "
           "all of them), when the controller cannot read its OVSDB: ports are bound by iface-id; answers "
           "what is bound, what moved, and which interfaces to renumber."),
    # tenants ----------------------------------------------------------------------------
    Op("tenant.validate", "validate", {"yaml": req(str)}, scope="tenant", scope_arg="yaml",
       doc="Check a tenant's YAML; changes nothing."),
    Op("tenant.create", "create", {"yaml": req(str)}, kind="change", scope="tenant", scope_arg="yaml",
       doc="Make a tenant from its YAML (refused if it exists)."),
    Op("tenant.apply", "apply", {"yaml": req(str)}, kind="change", scope="tenant", scope_arg="yaml",
       doc="Make or change a tenant to its YAML."),
    Op("tenant.delete", "delete", {"name": req(str)}, kind="change", scope="tenant", scope_arg="name"),
    Op("tenant.list", "list_tenants", scope="cluster"),
    Op("tenant.show", "show", {"name": req(str)}, scope="tenant", scope_arg="name"),
    # policy layers written apart from the spec, by their owners (controller.server.owners) ---
    Op("layer.show", "layer_show", {"tenant": req(str), "layer": req(str)}, **T,
       doc="One policy layer of a tenant's spec (acls, networkPolicies, loadBalancers or nat): its "
           "content, version and owner."),
    Op("layer.put", "layer_put",
       {"tenant": req(str), "layer": req(str), "content": req(str, list), "expect_version": opt(None, int),
        "release": opt(False, bool)}, kind="change", **T, context=("principal",),
       doc="Replace one policy layer (content: its items, a list or YAML/JSON text of one), validated, "
           "compiled and installed with the rest of the spec as one change; refused when another "
           "credential owns it, or when it is not at `expect_version`. A layer:LAYER credential becomes "
           "its owner; `release` (admin): write it and leave it unowned."),
    Op("layer.release", "layer_release", {"tenant": req(str), "layer": req(str)}, kind="change", **T,
       context=("principal",), doc="Leave a policy layer unowned, its content as it is (admin)."),
    # ports and addresses ----------------------------------------------------------------
    Op("port.add", "port_add",
       {"tenant": req(str), "switch": req(str), "name": opt(None, str), "ip": opt("auto", str),
        "mac": opt(None, str), "host": opt(None, str), "workload": opt(True, bool, str), "ip6": opt(None, str),
        "made_by": opt("api", str), "container_id": opt(None, str), "labels": opt(None, dict)},
       kind="change", **T),
    Op("port.del", "port_del", TENANT_PORT, kind="change", **T),
    Op("port.label", "port_label", {**TENANT_PORT, "set": opt(None, dict), "remove": opt(None, list)},
       kind="change", **T, doc="Set (`set`: key -> value) and remove (`remove`: keys) a port's labels; "
                               "the network policies selecting it follow."),
    Op("port.migrate", "migrate", {**TENANT_PORT, "to": req(str), "prepare": opt(False, bool),
                                   "bandwidth_mbps": opt(None, float)}, kind="change", **T,
       doc="Move a port to host `to`: a namespace make-before-break, a VM live by QEMU; "
           "`prepare`: only bind it pending there, for a hypervisor that migrates it."),
    Op("port.migrate_cancel", "cancel_migration", TENANT_PORT, kind="change", **T,
       doc="Cancel a port's migration under way: the VM stays where it was, bound there."),
    Op("port.attachment", "port_attachment", TENANT_PORT, **T, doc="All that plugging the port needs."),
    Op("port.info", "port_info", TENANT_PORT, **T),
    Op("switch.info", "switch_info", {"tenant": req(str), "switch": req(str)}, **T),
    Op("ipam.hold", "ipam_hold",
       {"tenant": req(str), "switch": req(str), "ip": opt(None, str), "seconds": opt(60.0, float)},
       kind="change", **T, doc="Keep an address of the switch for a port a runtime makes next."),
    Op("ipam.release", "ipam_release", {"tenant": req(str), "switch": req(str), "ip": req(str)},
       kind="change", **T, doc="Give back a held address."),
    # reading ----------------------------------------------------------------------------
    Op("trace", "trace", {**TENANT_PORT, "packet": req(str), "real": opt(False, bool)}, **T),
    Op("flows", "flows", {"host": req(str), "read_switch": opt(True, bool)}, scope="host", scope_arg="host"),
    Op("verify", "verify", {"tenant": opt(None, str), "host": opt(None, str)}, **T,
       doc="Isolation and policy proved over the installed flows (no tenant: every tenant)."),
    Op("verify.changes", "verify_changes", {"after": opt(0, int), "tenant": opt(None, str)}, **T,
       doc="Verify before install's results after sequence `after` (of `tenant` only: other tenants a "
           "counterexample names are not named), newest last; `nvctl verify --watch` follows them."),
    Op("stats", "stats", {"tenant": req(str)}, **T),
    Op("drops", "drops", {"tenant": req(str), "window": opt(60.0, float)}, **T),
    Op("logs", "logs", {"tenant": req(str), "after": opt(0, int), "limit": opt(1000, int)}, **T),
    Op("metrics", "metrics_text", scope="cluster", doc="The Prometheus exposition text."),
    Op("progress", "changes.snapshot", {"tenant": opt(None, str), "after": opt(0, int)}, **T,
       doc="The newest change (of `tenant`) after sequence `after`; never waits for the core's lock."),
    # who may call, and what they did ---------------------------------------------------
    Op("credential.issue", "credential_issue", {"name": req(str), "role": req(str), "ttl": opt(None, float)},
       kind="change", scope="cluster",
       doc="A new credential for the network API (role admin, viewer, tenant:NAME, host:NAME or "
           "layer:LAYER[@TENANT]; ttl in seconds); its token is in the answer only."),
    Op("credential.list", "credential_list", scope="cluster", doc="Every credential (never a secret)."),
    Op("credential.revoke", "credential_revoke", {"name": req(str)}, kind="change", scope="cluster",
       doc="Refuse a credential from now on (every member within a second)."),
    Op("audit.list", "audit_list", {"tenant": opt(None, str), "last": opt(50, int)}, **T, local=True,
       doc="The newest requests, allowed or refused (of a tenant: those its credentials made)."),
    Op("auth.whoami", None, local=True, doc="Who the API takes the caller for: name, role, how it came."),
    Op("api.endpoints", "api_endpoints", scope="none", local=True,
       doc="Every member's network API URL and the CA that signed them (a client finds the cluster)."),
    # a cluster --------------------------------------------------------------------------
    Op("cluster.status", "cluster_status", scope="cluster", local=True),
    Op("bgp.status", "bgp_status", scope="cluster",
       doc="BGP toward the provider's routers: each session, what is announced (and from which "
           "host's address) and what was learned."),
    Op("member.probe", "member_probe", {"host": req(str)}, kind="change", scope="host", scope_arg="host",
       local=True, doc="Ask a switch for the master role and send it a flow-mod that changes nothing."),
)

WRITE_OPS = frozenset(n for n, op in OPS.items() if op.kind == "change")  # done once per request id
LOCAL_OPS = frozenset(n for n, op in OPS.items() if op.local)
NETWORK_OPS = frozenset(n for n, op in OPS.items() if "network" in op.over)


def check_args(op: Op, args) -> list[list[str]]:
    """[[argument, what is wrong], ...]: unknown ones, wrong types, missing required ones."""
    if not isinstance(args, dict):
        return [["args", f"must be an object, not {_json_name(args)}"]]
    errors = []
    for name, value in args.items():
        a = op.args.get(name)
        if a is None:
            errors.append([name, f"is unknown (it takes: {', '.join(op.args) or 'none'})"])
        elif not a.accepts(value):
            errors.append([name, f"must be {' or '.join(a.type_names())}, not {_json_name(value)}"])
    for name, a in op.args.items():
        if a.required and name not in args:
            errors.append([name, "is required"])
    return errors


def _json_name(value) -> str:
    return JSON_NAMES.get(type(value), type(value).__name__)


def tenant_of_yaml(text) -> str | None:
    """The tenant a YAML document names (metadata.name), or None when it names none that
    could be one (not YAML, not one document, no valid name). Never raises: the
    operation's own validation says what is wrong with the document."""
    from topology import schema
    try:
        doc = schema.parse_yaml(text)
        name = doc["metadata"]["name"]
    except Exception:  # noqa: BLE001 - whatever is wrong, the operation answers it
        return None
    return name if isinstance(name, str) and schema.NAME_RE.match(name) else None


def scope_of(op: Op, args: dict, context: dict | None = None) -> tuple[str, str | None]:
    """(scope, name) a request touches: ("tenant", "blue"), ("host", "hv1"), ("cluster",
    None), ("none", None). A tenant or host it cannot name is None (an unparseable YAML:
    the operation refuses it)."""
    if op.scope not in ("tenant", "host"):
        return op.scope, None
    if op.scope_arg == "yaml":
        return "tenant", tenant_of_yaml(args.get("yaml"))
    if op.scope_arg in op.context:
        return op.scope, (context or {}).get(op.scope_arg)
    value = args.get(op.scope_arg)
    a = op.args[op.scope_arg]
    if value is None and not a.required:  # e.g. verify without a tenant: all of them
        return "cluster", None
    return op.scope, value if isinstance(value, str) else None


def resolve(core, op: Op):
    """The bound method that answers `op` (its dotted `call` on the core)."""
    fn = core
    for part in op.call.split("."):
        fn = getattr(fn, part)
    return fn


def describe() -> list[dict]:
    """The table as JSON (the `api.operations` operation)."""
    out = []
    for op in OPS.values():
        out.append({
            "name": op.name, "kind": op.kind,
            "scope": {"kind": op.scope, **({"arg": op.scope_arg} if op.scope_arg else {})},
            "args": {n: {"types": a.type_names(), "required": a.required,
                         **({} if a.required else {"default": a.default})} for n, a in op.args.items()},
            "over": list(op.over), "local": op.local, "doc": op.doc})
    return out
