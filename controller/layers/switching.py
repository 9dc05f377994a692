"""Switching: destination MAC -> logical output port; broadcast and unknown -> FLOOD.

Placement-independent: every host carrying a switch has the same flows here.
"""
from __future__ import annotations

from dataplane.match_action import Match
from controller.layers.base import Layer, TableDecl
from controller.spaces.ids import FLOOD_PORT_KEY
from controller.spaces.names import router_port_name
from controller.spaces.registers import LOGICAL_SWITCH, OUTPORT

# l2_lookup: a known MAC (a port's, the router port's) goes to its port, before the
# switch's broadcast/unknown flood; another switch's packet misses (drop).
PRIO_MAC = 100
PRIO_FLOOD = 10


class Switching(Layer):
    name = "switching"
    id = 4
    tables = (
        TableDecl("l2_lookup", frozenset({"reg13", "eth_dst"}), successors=("@next",),
                  doc="dst MAC -> outport; broadcast/unknown -> FLOOD"),
    )

    sliced = True

    def port_inputs(self, t, p):
        return (p.name, t.vni[p.switch], p.mac, t.port_key[p.name]), {"members": t.members[p.switch]}

    def port_flows(self, content, out):
        name, vni, mac, key = content
        out.put("members", out.flow(
            "l2_lookup", PRIO_MAC, Match.of(**LOGICAL_SWITCH.m(vni), eth_dst=mac),
            (OUTPORT.load(key), out.goto("@next")), rule=f"mac {mac} -> port {name}"))

    def tenant_flows(self, t, out):
        for s in t.tenant.switches:
            hosts = t.members[s.name]
            if not hosts:
                continue
            ls = LOGICAL_SWITCH.m(t.vni[s.name])
            attached = t.tenant.router_of(s.name)
            if attached is not None:
                r, rp = attached
                out.to(hosts, out.flow(
                    "l2_lookup", PRIO_MAC, Match.of(**ls, eth_dst=rp.mac),
                    (OUTPORT.load(t.port_key[router_port_name(r.name, s.name)]), out.goto("@next")),
                    rule=f"mac {rp.mac} -> router {r.name}"))
            out.to(hosts, out.flow(
                "l2_lookup", PRIO_FLOOD, Match.of(**ls),
                (OUTPORT.load(FLOOD_PORT_KEY), out.goto("@next")),
                rule=f"switch {s.name} broadcast/unknown -> flood"))
