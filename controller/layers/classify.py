"""Classify: which logical switch and port a packet belongs to, as it enters br-int.

From a workload's port: in_port -> logical_switch + inport. From the tunnel: only from
a known provider address, then the VNI -> logical_switch, marked from_tunnel.
"""
from __future__ import annotations

from dataplane.match_action import Match
from controller.layers.base import Layer, TableDecl
from controller.spaces.ids import EXTERNAL_NET_KEY
from controller.spaces.names import pending_name, transit_name
from controller.spaces.registers import FROM_TUNNEL, INPORT, LOGICAL_SWITCH

# classify: a workload's port, the external port, the tunnel from a known PA; each pins
# its own in_port (and PA), so none overlaps another. Anything else misses (drop).
PRIO_IN_PORT = 100
# tunnel_vni: one VNI each (a switch's, or a router's transit key); an unknown one drops.
PRIO_VNI = 100


class Classify(Layer):
    name = "classify"
    id = 1
    tables = (
        TableDecl("classify", frozenset({"in_port", "tun_ipv4_src"}),
                  successors=("port_security", "tunnel_vni", "ext_in", "activation"),
                  doc="workload port -> logical switch and port; tunnel -> known PAs only"),
        TableDecl("tunnel_vni", frozenset({"tunnel_id"}), successors=("@tunnel_entry", "ext_snat"),
                  doc="VNI -> logical switch, for packets from another host"),
    )

    sliced = True

    def port_inputs(self, t, p):
        return ((p.name, t.vni[p.switch], t.ofport[p.name], t.port_key[p.name], p.pending,
                 t.ofport[pending_name(p.name)] if p.pending else None),
                {"own": (p.host,), "pending": (p.pending,) if p.pending else ()})

    def port_flows(self, content, out):
        name, vni, ofport, key, pending, pending_ofport = content
        out.put("own", out.flow(
            "classify", PRIO_IN_PORT, Match.of(in_port=ofport),
            (LOGICAL_SWITCH.load(vni), INPORT.load(key), out.goto("port_security")),
            rule=f"port {name}", stat=(("port", name, "sent"),)))
        if pending:  # its second binding, until the guest announces itself there
            out.put("pending", out.flow(
                "classify", PRIO_IN_PORT, Match.of(in_port=pending_ofport),
                (out.goto("activation"),), rule=f"port {name}: pending on {pending} (migrating)"))

    def tenant_flows(self, t, out):
        for s in t.tenant.switches:
            hosts = t.members[s.name]
            if not hosts:
                continue
            out.to(hosts, out.flow(
                "tunnel_vni", PRIO_VNI, Match.of(tunnel_id=t.vni[s.name]),
                (LOGICAL_SWITCH.load(t.vni[s.name]), FROM_TUNNEL.load(1),
                 out.goto("@tunnel_entry")),
                rule=f"switch {s.name} vni {t.vni[s.name]}"))

        for r in t.tenant.routers:
            group = t.gateways.get(r.name)
            if group:  # every host of its gateway group takes what is sent to it
                transit = t.vni[transit_name(r.name)]
                out.to(tuple(h for h, _, _ in group), out.flow(
                    "tunnel_vni", PRIO_VNI, Match.of(tunnel_id=transit),
                    (LOGICAL_SWITCH.load(transit), out.goto("ext_snat")),
                    rule=f"router {r.name}: to the external network (vni {transit})"))

    def host_flows(self, h, out):
        if h.external is not None:
            out.to((h.name,), out.flow(
                "classify", PRIO_IN_PORT, Match.of(in_port=h.external[0]),
                (LOGICAL_SWITCH.load(EXTERNAL_NET_KEY), out.goto("ext_in")),
                rule="the external network"))
        for peer, pa in h.peers:
            out.to((h.name,), out.flow(
                "classify", PRIO_IN_PORT, Match.of(in_port=h.tunnel_port, tun_ipv4_src=pa),
                (out.goto("tunnel_vni"),), rule=f"tunnel from {peer}"))
