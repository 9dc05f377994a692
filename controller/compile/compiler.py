"""The compiler: desired state + placement -> the flow set of every host. Pure.

No I/O, no clock, no globals beyond the pipeline declaration. A tenant compiles on its
own (`compile_tenant`), so a change to one tenant recompiles only that tenant; a host's
infrastructure flows compile on their own (`compile_host`). `compile_world` is the sum,
and it is the reference any incremental path must equal.
"""
from __future__ import annotations

import dataclasses
import gc
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Mapping

from dataplane.match_action import Flow, flows_by_cookie
from topology.graph import switch_members, switch_spans
from topology.model import Tenant
from controller.compile.allocator import Allocation
from controller.layers.base import HostView, TenantView
from controller.layers.gateway import gateway_hosts
from controller.compile.pipeline import LAYERS, emitter, miss_flows
from controller.spaces.ids import TUNNEL_OFPORT  # how tep builds br-int; declared with the other ofports


DEFAULT_UPLINK_MTU = 1500  # a host that did not say: what nearly every real host has
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8


@dataclass(frozen=True)
class Host:
    name: str
    pa: str
    external: tuple | None = None  # (ofport, next_hop_mac) where the external network is attached
    mtu: int = DEFAULT_UPLINK_MTU - VXLAN_OVERHEAD  # the largest frame its uplink carries encapsulated
    peer_port: int | None = None  # with `external`: the ofport of the BFD tunnel toward it on other hosts
    provider_address: str | None = None  # with `external`: its own address there, BGP's next hop toward it
    provider_prefix: str | None = None  # with `external`: the provider network's prefix (its connected route)




def underlay_mtus(t: Tenant, hosts: Mapping[str, Host]) -> dict[str, tuple[int, list[str]]]:
    """switch -> (the MTU its hosts' underlay carries, the hosts that set it): the
    smallest over the hosts its traffic may cross (its routed component; all hosts
    when it has no port yet)."""
    spans = switch_spans(t)
    out = {}
    for s in t.switches:
        names = sorted(h for h in spans.get(s.name, ()) if h in hosts) or sorted(hosts)
        if not names:
            out[s.name] = (DEFAULT_UPLINK_MTU - VXLAN_OVERHEAD, [])
            continue
        m = min(hosts[h].mtu for h in names)
        out[s.name] = (m, [h for h in names if hosts[h].mtu == m])
    return out


def switch_mtus(t: Tenant, hosts: Mapping[str, Host]) -> dict[str, int]:
    """switch -> the MTU its workloads get: `mtu:` if given, else what the underlay carries."""
    under = underlay_mtus(t, hosts)
    return {s.name: min(s.mtu or under[s.name][0], under[s.name][0]) for s in t.switches}


def tenant_view(t: Tenant, a: Allocation, hosts: Mapping[str, Host]) -> TenantView:
    placed = tuple(p if p.pending is None or p.pending in hosts else dataclasses.replace(p, pending=None)
                   for p in t.ports if p.host in hosts)  # ports on gone hosts are down, bindings there too
    if placed != t.ports:
        t = dataclasses.replace(t, ports=placed)
    gateways = {}
    for r in t.routers:
        g = gateway_hosts(r, hosts)
        if g:
            gateways[r.name] = tuple((h, *hosts[h].external) for h in g)
    span = dict(switch_spans(t))  # a copy: the gateways join it below
    for r in t.routers:  # return traffic is routed on the gateway hosts
        for h, _, _ in gateways.get(r.name, ()):
            for rp in r.ports:
                span[rp.switch] = span[rp.switch] | {h}
    return TenantView(
        tenant=t, tenant_id=a.tenant_id, vni=a.vni, port_key=a.port_key, ofport=a.ofport,
        members=switch_members(t), span=span, zone=a.zone,
        pa={h.name: h.pa for h in hosts.values()}, tunnel_port=TUNNEL_OFPORT, gateways=gateways,
        externals={h.name: h.external for h in hosts.values() if h.external},
        peer_port={h.name: h.peer_port for h in hosts.values() if h.peer_port},
        provider_prefix={r: hosts[g[0][0]].provider_prefix for r, g in gateways.items()
                         if hosts[g[0][0]].provider_prefix},
        group=a.group, mtu=switch_mtus(t, hosts))


def compile_tenant(t: Tenant, a: Allocation, hosts: Mapping[str, Host],
                   previous: tuple | None = None) -> dict[str, list[Flow]]:
    """The tenant's flows per host. `previous` = (tenant, allocation, flows) of the same
    tenant's last compile: a layer's per-port part (Layer.sliced) whose content for a
    port is what it was keeps that port's flows from there, placed on the hosts its
    placement names now, instead of making them again. The result is the same set of
    flows per host either way."""
    view = tenant_view(t, a, hosts)
    old = _previous_units(previous, a, hosts) if previous is not None else None
    sink: dict[str, list[Flow]] = {}
    units: dict = {}  # this compile's, for the next one (_RECENT)
    for layer in LAYERS:
        out = emitter(layer, sink, a.tenant_id)
        layer.tenant_flows(view, out)
        if not layer.sliced:
            continue
        lid = layer.id
        for name, content, placement in layer.units(view):
            unit = (lid, name)
            if old is not None:
                was = old.get(unit)
                # the same content; for a unit read back from host lists, flows in the
                # same named sets as before (a set empty then held flows seen nowhere)
                if was is not None and was[0] == content and (
                        was[1] is None or was[1] == {k for k, v in placement.items() if v}):
                    for where, f in was[2]:
                        for h in placement[where]:
                            lst = sink.get(h)
                            if lst is None:
                                lst = sink[h] = []
                            lst.append(f)
                    units[unit] = was
                    continue
            out.unit, out.placement, out.made = unit, placement, []
            layer.port_flows(content, out)
            units[unit] = (content, None, out.made)  # None: every flow it made, whatever their hosts
        out.unit = out.made = None
    _RECENT[id(t)] = (t, a, units)
    while len(_RECENT) > RECENT_TENANTS:
        del _RECENT[next(iter(_RECENT))]
    return sink


SLICED = tuple(layer for layer in LAYERS if layer.sliced)
# The per-port units of the last few compiles, by the tenant value compiled: a change's
# `previous` is usually the tenant's last compile, so its units need not be read back
# from its flows. A unit's flows are a function of its content, so any record is exact.
_RECENT: dict = {}  # id(tenant) -> (tenant, allocation, {(layer id, port): (content, None, [(where, flow)])})
RECENT_TENANTS = 8


def _previous_units(previous: tuple, a: Allocation, hosts: Mapping[str, Host]) -> dict | None:
    old_t, old_a, old_flows = previous
    if old_a.tenant_id != a.tenant_id:  # its id is in every cookie
        return None
    got = _RECENT.get(id(old_t))
    if got is not None and got[0] is old_t and got[1] is old_a:
        return got[2]
    return _units(previous, hosts)


def _units(previous: tuple, hosts: Mapping[str, Host]) -> dict:
    """(layer id, port) -> (its content, the names of its non-empty host sets, [(where,
    flow)]) of the previous compile, read back from its flows (each carries its unit)."""
    old_t, old_a, old_flows = previous
    made: dict = {}
    for fl in old_flows.values():
        for f in fl:
            u = f.unit
            if u is not None:
                k = (f.layer_id, u)
                got = made.get(k)
                if got is None:
                    made[k] = {id(f): (f.where, f)}
                else:
                    got[id(f)] = (f.where, f)
    view = tenant_view(old_t, old_a, hosts)
    out = {}
    for layer in SLICED:
        lid = layer.id
        for name, content, placement in layer.units(view):
            unit = (lid, name)
            got = made.get(unit)
            out[unit] = (content, {k for k, v in placement.items() if v}, list(got.values()) if got else ())
    return out


def compile_host(name: str, hosts: Mapping[str, Host]) -> list[Flow]:
    h = hosts[name]
    view = HostView(name, h.pa, TUNNEL_OFPORT,
                    tuple(sorted((o.name, o.pa) for o in hosts.values() if o.name != name)),
                    h.external, h.provider_address)
    sink: dict[str, list[Flow]] = {}
    for layer in LAYERS:
        layer.host_flows(view, emitter(layer, sink))
    miss_flows(name, sink)
    return sink.get(name, [])


@contextmanager
def paused_gc():
    """Compiling allocates hundreds of thousands of small objects that form no cycles.
    Python's cyclic collector would walk the growing heap again and again meanwhile:
    measured, half of a 10,000-port compile. Pause it for the duration (a `with` block,
    or `@paused_gc()` on a function); what was allocated is collected normally afterwards."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@paused_gc()
def compile_world(hosts: Mapping[str, Host],
                  tenants: Mapping[str, tuple[Tenant, Allocation]]) -> dict[str, dict[int, Flow]]:
    """Every host's complete flow set, indexed by cookie."""
    lists: dict[str, list[Flow]] = {h: compile_host(h, hosts) for h in hosts}
    for t, a in tenants.values():
        for h, flows in compile_tenant(t, a, hosts).items():
            lists[h].extend(flows)
    return {h: flows_by_cookie(fl) for h, fl in lists.items()}
