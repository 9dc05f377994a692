"""`nvctl verify`'s input and output as plain values: the network (hosts' tables, who
owns which port, each tenant's facts: VNIs, zones, meters, groups, owned provider
addresses, the pairs its topology connects) and the report (violations with their
counterexamples). `controller.analysis.verify` proves the checks over them.
"""
from __future__ import annotations

from controller.spaces.names import pending_name
from dataclasses import dataclass, field
from typing import Mapping

from dataplane.match_action import Group, Meter
from controller.spaces.ids import BUM_METER_BASE, TUNNEL_OFPORT
from controller.layers.gateway import gateway_groups


# --------------------------------------------------------------------------------------
# Input: the network as plain values
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PortRef:
    tenant: str
    port: str
    switch: str


@dataclass(frozen=True)
class Endpoint:
    """Where a port is and how it sends (for reachability witnesses)."""
    host: str
    ofport: int
    mac: str
    ip: str
    switch: str
    ip6: str | None = None


@dataclass
class HostTables:
    pa: str
    flows: list
    groups: dict = field(default_factory=dict)  # group id -> list of bucket action tuples
    meters: dict = field(default_factory=dict)  # meter id -> (rate, burst)


@dataclass
class TenantFacts:
    tenant_id: int
    vnis: frozenset
    zones: frozenset
    meters: frozenset  # (host, meter id): meter ids are per host
    groups: frozenset
    owned_external: frozenset  # IPv4 addresses (text)
    reach_pairs: frozenset  # (port, port) that must reach each other (one way each)
    endpoints: dict = field(default_factory=dict)  # port -> Endpoint
    router_macs: dict = field(default_factory=dict)  # switch -> its router port's MAC
    # (port, port) -> PairPolicy, for each ordered pair of ports one of which a network
    # policy isolates (empty without policies: nothing to check, nothing to constrain)
    policy: dict = field(default_factory=dict)
    # the same over IPv6 (pairs of ports that both have an ip6), and the pairs that must
    # reach each other with an IPv6 packet: both only for a tenant with network policies
    policy6: dict = field(default_factory=dict)
    reach_pairs6: frozenset = frozenset()


@dataclass
class Network:
    hosts: dict  # name -> HostTables
    ports: dict  # (host, ofport) -> PortRef
    tenants: dict  # name -> TenantFacts
    tunnel_ofport: int = TUNNEL_OFPORT
    external: dict = field(default_factory=dict)  # host -> ofport of the provider network


@dataclass(frozen=True)
class PairPolicy:
    """What the network policies let through as new connections of IP version `family`
    from port a's address to port b's: `allowed` = `egress` (a's Egress policies) AND
    `ingress` (b's Ingress policies). Each is ALL (None: the side is not isolated, or a
    rule with no ports allows every protocol, ICMP included) or a tuple of (protocol,
    low, high) cubes, "tcp"/"udp" over the destination port; () = nothing."""
    src: str  # a's address (IPv4, or IPv6 for family 6)
    dst: str  # b's address
    allowed: tuple | None
    egress: tuple | None
    ingress: tuple | None
    family: int = 4

    @property
    def denies_some(self) -> bool:
        return self.allowed is not None


def _as_flow_list(flows) -> list:
    if isinstance(flows, Mapping):
        return list(flows.values())
    return list(flows)


def _carriers(flows) -> set:
    """Cookies of the flows with a group or meter action."""
    out = set()
    for f in flows:
        for a in f.actions:
            c = a.__class__
            if c is Group or c is Meter:
                out.add(f.cookie)
                break
    return out


def _carries_groups(flows) -> bool:
    for f in flows:
        for a in f.actions:
            if a.__class__ is Group or a.__class__ is Meter:
                return True
    return False


def host_tables(pa: str, flows) -> HostTables:
    """A host's tables; groups and meters as the flows carry them (a group id used with
    two bucket sets keeps the last, as a switch would after both were sent)."""
    fl = _as_flow_list(flows)
    groups, meters = {}, {}
    for f in fl:
        for a in f.actions:
            c = a.__class__  # Group and Meter have no subclasses
            if c is Group:
                groups[a.group_id] = list(a.buckets)
            elif c is Meter:
                meters[a.meter_id] = (a.rate_kbps, a.burst_kb)
    return HostTables(pa, fl, groups, meters)


def network_from_compiled(hosts: Mapping, tenants: Mapping, flows_per_host: Mapping) -> Network:
    """From what `compile_world(hosts, tenants)` takes, and flows per host (its result, or
    flows read back from the switches: {host: {cookie: Flow}} or {host: [Flow]})."""
    net_hosts = {h: host_tables(hosts[h].pa, flows_per_host.get(h, ())) for h in hosts}
    ports, facts = {}, {}
    for name, (t, a) in tenants.items():
        f, refs = tenant_facts(t, a, hosts)
        facts[name] = f
        ports.update(refs)
    external = {h.name: h.external[0] for h in hosts.values() if h.external}
    return Network(net_hosts, ports, facts, TUNNEL_OFPORT, external)


def tenant_facts(t, a, hosts: Mapping) -> tuple[TenantFacts, dict]:
    """(facts, {(host, ofport): PortRef}) of one tenant from its model and allocation."""
    placed = [p for p in t.ports if p.host in hosts]
    refs = {(p.host, a.ofport[p.name]): PortRef(t.name, p.name, p.switch) for p in placed}
    # a migrating port's pending interface on its destination is the tenant's too: a
    # start point whose packets must stay in the tenant (they reach the controller or drop)
    refs.update({(p.pending, a.ofport[pending_name(p.name)]): PortRef(t.name, pending_name(p.name), p.switch)
                 for p in placed if p.pending in hosts and pending_name(p.name) in a.ofport})
    owned = {str(r.external_ip) for r in t.routers if r.external_ip is not None}
    owned |= {str(n.external_ip) for n in t.nat if n.type == "floating-ip"}
    endpoints = {p.name: Endpoint(p.host, a.ofport[p.name], p.mac, str(p.ip), p.switch,
                                  str(p.ip6) if p.ip6 is not None else None) for p in placed}
    router_macs = {rp.switch: rp.mac for r in t.routers for rp in r.ports}
    policy = policy_pairs(t, placed)
    policy6, reach6 = {}, frozenset()
    if getattr(t, "has_ipv6", False):  # IPv6 reachability for every dual-stack tenant
        policy6 = policy_pairs(t, placed, family=6) if policy else {}
        reach6 = frozenset(reach_pairs(t, placed, policy6, family=6))
    facts = TenantFacts(
        tenant_id=a.tenant_id, vnis=frozenset(a.vni.values()), zones=frozenset(a.zone.values()),
        meters=frozenset(_port_meters(placed, a) | _control_meters(a, hosts)),
        groups=frozenset(a.group.values()) | gateway_groups(t, a), owned_external=frozenset(owned),
        reach_pairs=frozenset(reach_pairs(t, placed, policy)), endpoints=endpoints,
        router_macs=router_macs, policy=policy, policy6=policy6, reach_pairs6=reach6)
    return facts, refs


def _port_meters(ports, a) -> set:
    """(host, meter id) the qos layer gives each port: its rate limit (id = ofport) and
    its broadcast/unknown-traffic meter (id = BUM_METER_BASE + ofport)."""
    out = set()
    for p in ports:
        if p.rate_limit_mbps is not None:
            out.add((p.host, a.ofport[p.name]))
        out.add((p.host, BUM_METER_BASE + a.ofport[p.name]))
    return out


def _control_meters(a, hosts) -> set:
    """(host, meter id) of the tenant's control-plane meters: for packets the services
    layer answers and for its logged ACL rules' copies; its own ids, on every host."""
    from controller.layers.services import control_meter
    from controller.layers.acl import log_meter
    mids = (control_meter(a.tenant_id).meter_id, log_meter(a.tenant_id).meter_id)
    return {(h, mid) for h in hosts for mid in mids}


def reach_pairs(t, ports=None, policy: dict | None = None, family: int = 4) -> set:
    """Ordered pairs (a, b) of ports the topology connects (same switch, or switches of
    one router) and that no ACL necessarily separates: neither a's from-port rules nor
    b's to-port rules, read by priority, reach a deny that matches every a->b packet
    before an allow that could match one; and that the network policies let open some
    new connection (`policy_pairs`: some protocol or port allowed both ways). Over IP
    version `family`: for 6, ports with an ip6, switches joined by router ports with
    an ip6 (connected IPv6 routes), the ACL rules that apply to IPv6."""
    from controller.layers.acl import guarded_ports
    ports = list(t.ports if ports is None else ports)
    if family == 6:
        ports = [p for p in ports if p.ip6 is not None]
    guarded = guarded_ports(t)
    pols = policy_pairs(t, ports, family) if policy is None else policy
    joined = set()
    for r in t.routers:
        sws = {rp.switch for rp in r.ports if family == 4 or rp.ip6 is not None}
        joined |= {(x, y) for x in sws for y in sws}
    out = set()
    for a in ports:
        for b in ports:
            if a.name == b.name:
                continue
            if a.switch != b.switch and (a.switch, b.switch) not in joined:
                continue
            if _separated(guarded.get(a.name, {}).get("from-port", []), a, b, family) or \
                    _separated(guarded.get(b.name, {}).get("to-port", []), a, b, family):
                continue
            if pols:
                pp = pols.get((a.name, b.name))
                if pp is not None and pp.allowed == ():
                    continue
            out.add((a.name, b.name))
    return out


def policy_pairs(t, ports=None, family: int = 4) -> dict:
    """{(a, b): PairPolicy} for the ordered pairs of `ports` (of tenant `t`) where a is
    isolated for Egress or b for Ingress (topology.policy's reading of the spec), over
    the ports' addresses of IP version `family` (for 6: the ports that have an ip6);
    {} for a tenant without network policies."""
    if not getattr(t, "network_policies", ()):
        return {}
    ports = list(t.ports if ports is None else ports)
    if family == 6:
        ports = [p for p in ports if p.ip6 is not None]
    addr = (lambda p: p.ip) if family == 4 else (lambda p: p.ip6)
    view = _PolicyView(t)
    eg_iso, in_iso = view.iso["Egress"], view.iso["Ingress"]
    out = {}
    for a in ports:
        for b in ports:
            if a.name == b.name or (a.name not in eg_iso and b.name not in in_iso):
                continue
            eg = view.side("Egress", a.name, addr(b))
            ing = view.side("Ingress", b.name, addr(a))
            out[(a.name, b.name)] = PairPolicy(str(addr(a)), str(addr(b)), _intersect(eg, ing), eg, ing, family)
    return out


class _PolicyView:
    """topology.policy's selection, computed once per tenant: who is isolated, and the
    ports each selector peer picks."""

    def __init__(self, t):
        from topology.policy import addresses, isolated
        self.t = t
        self.iso = isolated(t)
        self.by_addr = {a: p.name for p in t.ports for a in addresses(p)}
        self._peers: dict = {}

    def _peer_ports(self, pol, peer) -> frozenset:
        k = (pol.index, id(peer))
        got = self._peers.get(k)
        if got is None:
            from topology.policy import peer_ports
            got = self._peers[k] = (frozenset(peer_ports(self.t, pol, peer)), peer)
        return got[0]

    def side(self, kind: str, me: str, other_addr) -> tuple | None:
        """What `me`'s policies of `kind` let through with `other_addr` on the far side:
        None (everything) or the (protocol, low, high) cubes, as `topology.policy.allows`
        decides for each protocol and port."""
        from topology.policy import in_block
        pols = self.iso[kind].get(me)
        if not pols:
            return None
        other = self.by_addr.get(other_addr)
        cubes = set()
        for pol in pols:
            for rule in (pol.ingress if kind == "Ingress" else pol.egress):
                if rule.peers and not any(
                        in_block(peer, other_addr) if peer.cidr is not None
                        else other is not None and other in self._peer_ports(pol, peer)
                        for peer in rule.peers):
                    continue
                if not rule.ports:
                    return None
                for pr, lo, hi in rule.ports:  # no port: every one, 0 included (allows)
                    cubes.add((pr, 0, 65535) if lo is None else (pr, lo, hi))
        return _merged(cubes)


def _merged(cubes) -> tuple:
    """(protocol, low, high) cubes, sorted, overlapping or adjacent ranges merged."""
    out: list = []
    for pr, lo, hi in sorted(cubes):
        if out and out[-1][0] == pr and lo <= out[-1][2] + 1:
            out[-1] = (pr, out[-1][1], max(out[-1][2], hi))
        else:
            out.append((pr, lo, hi))
    return tuple(out)


def _intersect(x, y):
    if x is None:
        return y
    if y is None:
        return x
    return _merged({(p, max(lo, lo2), min(hi, hi2)) for p, lo, hi in x for p2, lo2, hi2 in y
                    if p == p2 and max(lo, lo2) <= min(hi, hi2)})


def policy_allows(cubes, proto: str, dport: int) -> bool:
    """Is (proto, dport) in a PairPolicy side or its `allowed` (None: everything)?"""
    return cubes is None or any(p == proto and lo <= dport <= hi for p, lo, hi in cubes)


def _separated(rules, a, b, family: int = 4) -> bool:
    """Do these ACL rules, by priority, deny every packet of IP version `family` from
    a's address to b's before an allow that could match one? (A rule naming networks of
    the other version only does not apply: `a.ip6 in` an IPv4 network is False.)"""
    ax, bx = (a.ip, b.ip) if family == 4 else (a.ip6, b.ip6)
    for r in sorted(rules, key=lambda r: -r.priority):
        if r.src and not any(ax in n for n in r.src):
            continue
        if r.dst and not any(bx in n for n in r.dst):
            continue
        if r.action != "deny":
            return False
        if r.protocol is None and not r.src_ports and not r.dst_ports:
            return True
    return False


# --------------------------------------------------------------------------------------
# Output: violations and the report
# --------------------------------------------------------------------------------------


@dataclass
class Violation:
    kind: str
    tenants: list
    message: str
    host: str = ""
    in_port: int | None = None
    packet: dict = field(default_factory=dict)  # the counterexample's header values
    path: list = field(default_factory=list)  # [{host, table, priority, rule, flow, cookie, note}]
    flow: str = ""  # the deciding flow, ovs-ofctl text with cookie
    cookie: str = ""

    def key(self) -> tuple:
        return (self.kind, tuple(self.tenants), self.host, self.cookie, self.message)

    def to_json(self) -> dict:
        return {"kind": self.kind, "tenants": list(self.tenants), "message": self.message,
                "host": self.host, "in_port": self.in_port, "packet": self.packet,
                "path": self.path, "flow": self.flow, "cookie": self.cookie}

    def format(self) -> str:
        lines = [f"VIOLATION {self.kind} [{', '.join(self.tenants)}]: {self.message}"]
        if self.packet:
            pk = ",".join(f"{k}={v}" for k, v in self.packet.items())
            lines.append(f"  packet (in_port={self.in_port} on {self.host}): {pk}")
        host = None
        for hop in self.path:
            if hop["host"] != host:
                host = hop["host"]
                lines.append(f"  == {host}")
            if hop.get("flow"):
                lines.append(f"    {hop['table']:<14} prio {hop['priority']:<5} {hop['rule']:<50} "
                             f"cookie={hop['cookie']}")
            else:
                lines.append(f"    {hop['table']:<14} {hop.get('note') or ''}")
        if self.flow:
            lines.append(f"  deciding flow: {self.flow}")
        return "\n".join(lines)


@dataclass
class Report:
    ok: bool
    violations: list
    checked: dict
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_json(self) -> dict:
        return {"ok": self.ok, "violations": [v.to_json() for v in self.violations],
                "checked": dict(self.checked), "seconds": round(self.seconds, 4)}

    def format(self) -> str:
        c = self.checked
        head = (f"verify: {'OK' if self.ok else 'VIOLATIONS'}: {len(self.violations)} violation(s); "
                f"checked {c.get('port_starts', 0)} ports, {c.get('tunnel_starts', 0)} tunnel entries, "
                + (f"{c['external_starts']} provider-network entries, " if c.get("external_starts") else "")
                + f"{c.get('reach_pairs', 0)} reachable pairs, "
                + (f"{c['policy_pairs']} pairs against network policies, " if c.get("policy_pairs") else "")
                + (f"over IPv6 {c.get('reach_pairs6', 0)} reachable pairs"
                   + (f" and {c['policy_pairs6']} against network policies" if c.get("policy_pairs6") else "")
                   + ", " if c.get("reach_pairs6") or c.get("policy_pairs6") else "")
                + f"{c.get('branches', 0)} packet classes in {self.seconds:.2f}s")
        return "\n\n".join([head] + [v.format() for v in self.violations])
