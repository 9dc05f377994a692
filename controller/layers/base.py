"""What a policy layer is, and the views of intent it compiles from.

A layer (one module in this package) declares the tables it owns and compiles its part
of a tenant's intent into those tables only. It is handed an `Emitter` that builds
flows, stamps them with the layer's cookie id and refuses a flow in a table the layer
does not own, or one that breaks the table's declared contract.

Successors may name a table or a pipeline symbol, resolved by `controller.compile.pipeline`:
  @next          the table that follows in pipeline order
  @egress        the first table of the egress stage
  @tunnel_entry  where packets that arrived over a tunnel continue
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from dataplane.match_action import Action, Flow, Goto, Match, Pipeline, Resubmit, Table
from topology.model import Tenant


# Every table's miss (drop, or on to another table) is an explicit flow at this
# priority, added by the pipeline; every flow a layer builds is above it. Each layer
# module names its own priorities (PRIO_*), with what wins over what.
MISS_PRIORITY = 0


@dataclass(frozen=True)
class TableDecl:
    name: str
    fields: frozenset
    successors: tuple = ()
    miss: str = "drop"
    doc: str = ""


class Layer:
    """Subclass per module: set `name`, `id` (stable: it is in every cookie) and
    `tables`, and override the compile hooks you need."""

    name: str = ""
    id: int = 0
    tables: tuple[TableDecl, ...] = ()

    def tenant_flows(self, t: "TenantView", out: "Emitter") -> None:
        """Flows for one tenant's intent (in a layer with a per-port part: all but that)."""

    # A layer may compile each port's own flows apart (`sliced`). `port_inputs` gives
    # (content, placement): content, one comparable value, is everything those flows
    # read; placement names the host sets they go to ({"own": (host,), "members":
    # hosts, ...}). `port_flows` makes the flows from the content alone (it never sees
    # the view nor the hosts) and puts each in a named set (`Emitter.put`). So a port
    # whose content is equal before and after a change has the same flows, placed anew
    # on the hosts its placement names now: a change recompiles only the ports it
    # touched (controller.compile.compiler.compile_tenant, `previous`).
    sliced = False

    def port_inputs(self, t: "TenantView", p) -> tuple:
        """(content, placement) of this layer's flows for port `p`."""
        raise NotImplementedError

    def units(self, t: "TenantView"):
        """(name, content, placement) of every part this layer compiles apart: one per
        port (named by the port); a layer may add others (named "kind:name", which no
        port name can be), whose flows `port_flows` makes from their content as well."""
        for p in t.tenant.ports:
            content, placement = self.port_inputs(t, p)
            yield p.name, content, placement

    def port_flows(self, content, out: "Emitter") -> None:
        """The flows of one port, from `port_inputs`' content only, each `out.put`."""
        raise NotImplementedError

    def host_flows(self, h: "HostView", out: "Emitter") -> None:
        """Flows that belong to a host rather than a tenant (e.g. accepting tunnels)."""


@dataclass(frozen=True)
class HostView:
    name: str
    pa: str  # provider address (VXLAN endpoint)
    tunnel_port: int  # ofport of the flow-based VXLAN port on br-int
    peers: tuple[tuple[str, str], ...]  # (host, PA) of every other host
    external: tuple | None = None  # (ofport, next_hop_mac) if the external network is here
    provider_address: str | None = None  # with `external`: the host's own address there (BGP's next hop)


@dataclass(frozen=True)
class TenantView:
    """A tenant's intent plus its allocations and placement: all a layer may look at."""

    tenant: Tenant
    tenant_id: int
    vni: dict  # switch -> VNI (also its logical_switch register value)
    port_key: dict  # port (or "router:switch" for a router port) -> key within its switch
    ofport: dict  # port -> ofport on its host's br-int
    members: dict  # switch -> frozenset of hosts with a port on it (flood, ARP, tunnel in)
    span: dict  # switch -> hosts of its routed component (routing, unicast dispatch)
    zone: dict  # port -> conntrack zone (its ACLs' state lives there, on its host)
    pa: dict  # host -> PA, for every host
    tunnel_port: int  # ofport of the VXLAN port, the same on every host
    # router -> its gateway group: ((host, external ofport, next hop MAC), ...), the most
    # preferred first; only routers with an external address and a host to carry it
    gateways: dict = field(default_factory=dict)
    externals: dict = field(default_factory=dict)  # host -> (external ofport, next hop MAC): the provider network
    peer_port: dict = field(default_factory=dict)  # host -> ofport of the BFD tunnel port toward it (on any other host)
    provider_prefix: dict = field(default_factory=dict)  # router -> the prefix of the provider network it is on
    group: dict | None = None  # load balancer -> OpenFlow group id
    mtu: dict | None = None  # switch -> its MTU (the largest IP packet its ports may send)
    # what layers work out once per view (per-port inputs read it for every port)
    memo: dict = field(default_factory=dict, compare=False, repr=False)

    def once(self, key, make):
        """`make()`, computed once for this view under `key`."""
        got = self.memo.get(key)
        if got is None:
            got = self.memo[key] = make()
        return got


# A tenant's flow must pin the scope it belongs to, so that no two tenants' flows can
# have the same identity (table, priority, match) on a host: the logical switch
# register, the workload's ofport, the VNI it arrived with, or the policy tenant register.
# reg8 is the network policies' tenant register: only a flow of the tenant's own
# (keyed by its port, so itself scoped) writes the tenant's id there, so a flow that
# matches it is the tenant's (controller.layers.netpol).
SCOPE_FIELDS = frozenset({"reg13", "in_port", "tunnel_id", "reg8"})


class ScopeError(ValueError):
    """A tenant flow that pins no scope: it could collide with another tenant's."""


class Emitter:
    """Collects one layer's flows per host. Only the layer's own tables are writable,
    and every tenant flow must pin its scope (SCOPE_FIELDS)."""

    def __init__(self, layer: Layer, pipeline: Pipeline, symbols: dict[str, str],
                 sink: dict[str, list[Flow]], tenant_id: int = 0):
        self.layer = layer
        self.pipeline = pipeline
        self.symbols = symbols
        self.sink = sink
        self.tenant_id = tenant_id
        self._own = {d.name for d in layer.tables}
        self.unit = None  # (layer id, port name) while a sliced layer compiles one port's flows
        self.placement: dict = {}  # and the host sets its flows are put in, by name
        self.made: list | None = None  # and [(where, flow)] of every flow it puts

    def table(self, name: str) -> Table:
        """Resolve a table name or symbol (for goto/resubmit targets)."""
        return self.pipeline[self.symbols.get(name, name)]

    def goto(self, name: str) -> Goto:
        return self.pipeline.goto[self.symbols.get(name, name)]

    def resubmit(self, name: str) -> Resubmit:
        return self.pipeline.resubmit[self.symbols.get(name, name)]

    def flow(self, table: str, priority: int, match: Match, actions: Iterable[Action] = (),
             rule: str = "", stat: tuple = ()) -> Flow:
        if table not in self._own:
            raise PermissionError(f"layer {self.layer.name} does not own table {table}")
        t = self.pipeline.by_name[table]
        f = Flow(t, priority, match, actions, self.layer.id, self.tenant_id, rule, stat)
        t.check(f)
        if self.tenant_id and not any(it[0] in SCOPE_FIELDS for it in match.items):
            raise ScopeError(f"layer {self.layer.name}, table {table}: tenant flow {rule!r} pins no "
                             f"scope (one of {sorted(SCOPE_FIELDS)}); another tenant could make the "
                             f"same (table, priority, match): {f.body}")
        return f

    def put(self, where: str, flow: Flow) -> None:
        """In `Layer.port_flows`: install `flow` on the hosts the port's placement names
        `where`; the flow carries its part's name and `where` (its layer id it has), so
        that a later compile can place it again without making it."""
        flow.unit, flow.where = self.unit[1], where
        self.made.append((where, flow))
        self._to(self.placement[where], flow)

    def to(self, hosts: Iterable[str], flow: Flow) -> None:
        """Install `flow` on each of `hosts` (the same immutable object is shared)."""
        if self.unit is not None:
            raise RuntimeError(f"layer {self.layer.name}: a port's own flows are put by name (Emitter.put)")
        self._to(hosts, flow)

    def _to(self, hosts: Iterable[str], flow: Flow) -> None:
        for h in hosts:
            lst = self.sink.get(h)
            if lst is None:
                lst = self.sink[h] = []
            lst.append(flow)

