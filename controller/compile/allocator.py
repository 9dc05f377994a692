"""Numbers the controller hands out and keeps: tenant ids, VNIs, port keys, ofports.

Pure: given a tenant, its previous allocation and what everyone else holds, return
the new allocation. Whatever survives a change keeps its number, so an update to one
port never renumbers (and so never rewrites) the flows of the others. The ranges it
hands out from are declared, and checked against each other, in controller.spaces.ids.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from topology.model import Tenant
from controller.spaces.ids import (FIRST_GROUP, FIRST_OFPORT, FIRST_PORT_KEY, FIRST_TENANT_ID,
                                   FIRST_VNI, FIRST_ZONE, MAX_GROUP, MAX_OFPORT, MAX_PORT_KEY, MAX_TENANT_ID,
                                   MAX_VNI, MAX_ZONE)
# The names of what a tenant does not name itself; re-exported for older callers.
from controller.spaces.names import (lb_zone_name, pending_name, policy_zone_name, router_port_name, router_zone_name,  # noqa: F401
                                     transit_name)


@dataclass(frozen=True)
class Allocation:
    tenant_id: int
    vni: dict = field(default_factory=dict)  # switch -> VNI
    port_key: dict = field(default_factory=dict)  # port -> key (unique within its switch)
    ofport: dict = field(default_factory=dict)  # port -> ofport on its host
    zone: dict = field(default_factory=dict)  # port -> conntrack zone (unique on every host)
    group: dict = field(default_factory=dict)  # load balancer -> OpenFlow group id

    def to_json(self) -> dict:
        return {"tenant_id": self.tenant_id, "vni": self.vni, "port_key": self.port_key,
                "ofport": self.ofport, "zone": self.zone, "group": self.group}

    @staticmethod
    def from_json(d: dict) -> "Allocation":
        return Allocation(d["tenant_id"], dict(d["vni"]), dict(d["port_key"]), dict(d["ofport"]),
                          dict(d.get("zone", {})), dict(d.get("group", {})))


def provider_addresses(t: Tenant) -> list[tuple[str, str]]:
    """(field path, address) of every address the tenant takes on the provider's
    networks: its routers' external addresses and its floating IPs. Each belongs to one
    tenant at a time."""
    out = [(f"spec.routers[{i}].external.ip", str(r.external_ip))
           for i, r in enumerate(t.routers) if r.external_ip is not None]
    out += [(f"spec.nat[{i}].externalIp", str(n.external_ip))
            for i, n in enumerate(t.nat) if n.type == "floating-ip" and n.external_ip is not None]
    return out


@dataclass
class InUse:
    """What tenants hold: tenant ids, VNIs, ofports per host, zones, groups, and the
    provider addresses each owns."""

    tenant_ids: set = field(default_factory=set)
    vnis: set = field(default_factory=set)
    ofports: dict = field(default_factory=dict)  # host -> set of ofports
    zones: set = field(default_factory=set)
    groups: set = field(default_factory=set)
    addresses: dict = field(default_factory=dict)  # provider address -> owning tenant

    def add(self, t: Tenant, a: Allocation) -> None:
        for _, ip in provider_addresses(t):
            self.addresses[ip] = t.name
        self.groups.update(a.group.values())
        self.tenant_ids.add(a.tenant_id)
        self.vnis.update(a.vni.values())
        self.zones.update(a.zone.values())
        for p in t.ports:
            self.ofports.setdefault(p.host, set()).add(a.ofport[p.name])
            if p.pending:
                self.ofports.setdefault(p.pending, set()).add(a.ofport[pending_name(p.name)])

    def remove(self, t: Tenant, a: Allocation) -> None:
        for _, ip in provider_addresses(t):
            if self.addresses.get(ip) == t.name:
                del self.addresses[ip]
        self.groups.difference_update(a.group.values())
        self.tenant_ids.discard(a.tenant_id)
        self.vnis.difference_update(a.vni.values())
        self.zones.difference_update(a.zone.values())
        for p in t.ports:
            self.ofports.get(p.host, set()).discard(a.ofport[p.name])
            if p.pending:
                self.ofports.get(p.pending, set()).discard(a.ofport[pending_name(p.name)])


class Exhausted(RuntimeError):
    pass


def _lowest_free(used: set, start: int, stop: int, what: str) -> int:
    n = start
    while n in used:
        n += 1
    if n > stop:
        raise Exhausted(f"no free {what} left ({start}..{stop} all in use)")
    return n


class _Taken:
    """The numbers of one scope that others hold, and those this allocation has taken:
    the former read in place (a change does not copy every tenant's holdings)."""

    __slots__ = ("base", "mine")

    def __init__(self, base=()):
        self.base, self.mine = base, set()

    def __contains__(self, n) -> bool:
        return n in self.mine or n in self.base

    def add(self, n) -> None:
        self.mine.add(n)


class _Scopes(dict):
    """scope -> _Taken over `base` (scope -> the set others hold), made when first asked."""

    def __init__(self, base: dict):
        super().__init__()
        self.base = base

    def __missing__(self, scope):
        t = self[scope] = _Taken(self.base.get(scope, ()))
        return t


def _assign(items: list[tuple[str, str]], prev_values: dict, prev_scope: dict,
            used: dict, lo: int, hi: int, what: str) -> dict:
    """items: (name, scope). A name keeps its previous value while its scope (switch,
    host, or "" for global) is unchanged; the others get the lowest free value in their
    scope. `used` (_Scopes) holds what others hold, per scope, and is updated."""
    out: dict = {}
    for name, scope in items:
        if name in prev_values and prev_scope.get(name) == scope:
            out[name] = prev_values[name]
            used[scope].add(out[name])
    for name, scope in items:
        if name not in out:
            taken = used[scope]
            out[name] = _lowest_free(taken, lo, hi, what + (f" on {scope}" if scope else ""))
            taken.add(out[name])
    return out


def _ofport_items(t: Tenant, old: Tenant | None, prev: Allocation) -> tuple[list, dict, dict]:
    """(items, previous values, previous scopes) for the ofports: every port on its host,
    and a migrating port's second binding on the host it is moving to. A port that
    lands where its second binding was (the migration's activation) takes that number:
    the destination's interface is already there."""
    items = [(p.name, p.host) for p in t.ports] + [(pending_name(p.name), p.pending) for p in t.ports if p.pending]
    values, scopes = dict(prev.ofport), {}
    for q in old.ports if old else ():
        scopes[q.name] = q.host
        if q.pending:
            scopes[pending_name(q.name)] = q.pending
    now = {p.name: p for p in t.ports}
    for q in old.ports if old else ():
        p = now.get(q.name)
        if q.pending and p is not None and p.host == q.pending and pending_name(q.name) in prev.ofport:
            values[q.name], scopes[q.name] = prev.ofport[pending_name(q.name)], q.pending
    return items, values, scopes


def allocate(t: Tenant, prev_tenant: Tenant | None, prev: Allocation | None,
             others: InUse) -> Allocation:
    """Allocation for `t`. `others` must not include this tenant's own holdings."""
    tid = prev.tenant_id if prev else _lowest_free(others.tenant_ids, FIRST_TENANT_ID, MAX_TENANT_ID,
                                                    "tenant id")
    prev = prev or Allocation(tid)
    old = prev_tenant
    def keyed(tenant):
        return [(s.name, "") for s in tenant.switches] + \
            [(transit_name(r.name), "") for r in tenant.routers if r.external_ip is not None]
    vni = _assign(keyed(t), prev.vni, dict(keyed(old)) if old else {},
                  _Scopes({"": others.vnis}), FIRST_VNI, MAX_VNI, "VNI")
    members = [(p.name, p.switch) for p in t.ports] + \
        [(router_port_name(r.name, rp.switch), rp.switch) for r in t.routers for rp in r.ports]
    old_switch = {}
    if old:
        old_switch = {p.name: p.switch for p in old.ports}
        old_switch.update({router_port_name(r.name, rp.switch): rp.switch
                           for r in old.routers for rp in r.ports})
    keys = _assign(members, prev.port_key, old_switch, _Scopes({}), FIRST_PORT_KEY, MAX_PORT_KEY, "port key")
    ofports = _assign(*_ofport_items(t, old, prev),
                      _Scopes(others.ofports), FIRST_OFPORT, MAX_OFPORT, "ofport")
    def zoned(tenant):
        return [(p.name, "") for p in tenant.ports] + \
            [(router_zone_name(r.name), "") for r in tenant.routers if r.external_ip is not None] + \
            ([(lb_zone_name(""), "")] if tenant.load_balancers else []) + \
            ([(policy_zone_name(p.name), "") for p in tenant.ports] if tenant.network_policies else [])
    zones = _assign(zoned(t), prev.zone, dict(zoned(old)) if old else {},
                    _Scopes({"": others.zones}), FIRST_ZONE, MAX_ZONE, "conntrack zone")
    groups = _assign([(lb.name, "") for lb in t.load_balancers], prev.group,
                     {lb.name: "" for lb in old.load_balancers} if old else {},
                     _Scopes({"": others.groups}), FIRST_GROUP, MAX_GROUP, "group id")
    return Allocation(tid, vni, keys, ofports, zones, groups)
