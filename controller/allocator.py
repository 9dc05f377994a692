"""Numbers the controller hands out and keeps: tenant ids, VNIs, port keys, ofports.

Pure: given a tenant, its previous allocation and what everyone else holds, return
the new allocation. Whatever survives a change keeps its number, so an update to one
port never renumbers (and so never rewrites) the flows of the others.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from topology.model import Tenant
from controller.registers import MAX_PORT_KEY
from dataplane.match_action import COOKIE_TENANT_MAX

FIRST_VNI = 1000
MAX_VNI = (1 << 24) - 1  # VXLAN's VNI is 24 bits
FIRST_OFPORT = 10  # below: reserved for infrastructure ports (the tunnel is 1)
MAX_OFPORT = 0xFEFF


@dataclass(frozen=True)
class Allocation:
    tenant_id: int
    vni: dict = field(default_factory=dict)  # switch -> VNI
    port_key: dict = field(default_factory=dict)  # port -> key (unique within its switch)
    ofport: dict = field(default_factory=dict)  # port -> ofport on its host

    def to_json(self) -> dict:
        return {"tenant_id": self.tenant_id, "vni": self.vni, "port_key": self.port_key,
                "ofport": self.ofport}

    @staticmethod
    def from_json(d: dict) -> "Allocation":
        return Allocation(d["tenant_id"], dict(d["vni"]), dict(d["port_key"]), dict(d["ofport"]))


@dataclass
class InUse:
    """What other tenants hold: tenant ids, VNIs, and ofports per host."""

    tenant_ids: set = field(default_factory=set)
    vnis: set = field(default_factory=set)
    ofports: dict = field(default_factory=dict)  # host -> set of ofports

    def add(self, t: Tenant, a: Allocation) -> None:
        self.tenant_ids.add(a.tenant_id)
        self.vnis.update(a.vni.values())
        for p in t.ports:
            self.ofports.setdefault(p.host, set()).add(a.ofport[p.name])

    def remove(self, t: Tenant, a: Allocation) -> None:
        self.tenant_ids.discard(a.tenant_id)
        self.vnis.difference_update(a.vni.values())
        for p in t.ports:
            self.ofports.get(p.host, set()).discard(a.ofport[p.name])


class Exhausted(RuntimeError):
    pass


def _lowest_free(used: set, start: int, stop: int, what: str) -> int:
    n = start
    while n in used:
        n += 1
    if n > stop:
        raise Exhausted(f"no free {what} left ({start}..{stop} all in use)")
    return n


def allocate(t: Tenant, prev_tenant: Tenant | None, prev: Allocation | None,
             others: InUse) -> Allocation:
    """Allocation for `t`. `others` must not include this tenant's own holdings."""
    tid = prev.tenant_id if prev else _lowest_free(others.tenant_ids, 1, COOKIE_TENANT_MAX,
                                                    "tenant id")
    vni: dict = {}
    taken = set(others.vnis)
    for s in t.switches:  # keep the VNIs of switches that stay
        if prev and s.name in prev.vni:
            vni[s.name] = prev.vni[s.name]
            taken.add(vni[s.name])
    for s in t.switches:
        if s.name not in vni:
            vni[s.name] = _lowest_free(taken, FIRST_VNI, MAX_VNI, "VNI")
            taken.add(vni[s.name])
    prev_ports = {p.name: p for p in prev_tenant.ports} if prev_tenant else {}
    keys: dict = {}
    used_keys: dict[str, set] = {}
    ofports: dict = {}
    used_of: dict[str, set] = {h: set(v) for h, v in others.ofports.items()}
    kept = []
    for p in t.ports:
        old = prev_ports.get(p.name)
        if prev and old is not None and old.switch == p.switch:
            keys[p.name] = prev.port_key[p.name]
            used_keys.setdefault(p.switch, set()).add(keys[p.name])
        if prev and old is not None and old.host == p.host:
            ofports[p.name] = prev.ofport[p.name]
            used_of.setdefault(p.host, set()).add(ofports[p.name])
        kept.append(p)
    for p in kept:
        if p.name not in keys:
            used = used_keys.setdefault(p.switch, set())
            keys[p.name] = _lowest_free(used, 1, MAX_PORT_KEY, f"port key on switch {p.switch}")
            used.add(keys[p.name])
        if p.name not in ofports:
            used = used_of.setdefault(p.host, set())
            ofports[p.name] = _lowest_free(used, FIRST_OFPORT, MAX_OFPORT, f"ofport on {p.host}")
            used.add(ofports[p.name])
    return Allocation(tid, vni, keys, ofports)
