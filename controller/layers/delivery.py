"""Delivery (egress): logical output port -> the workload's ofport on this host."""
from __future__ import annotations

from dataplane.match_action import Match, Output
from controller.layers.base import Layer, TableDecl
from controller.spaces.registers import LOGICAL_SWITCH, OUTPORT

# deliver: one flow per local port (disjoint); anything else misses (drop).
PRIO_DELIVER = 100


class Delivery(Layer):
    name = "delivery"
    id = 6
    tables = (
        TableDecl("deliver", frozenset({"reg13", "reg15"}),
                  doc="outport -> ofport of the local workload"),
    )

    sliced = True  # every flow is one port's

    def port_inputs(self, t, p):
        return (p.name, t.vni[p.switch], t.port_key[p.name], t.ofport[p.name]), {"own": (p.host,)}

    def port_flows(self, content, out):
        name, vni, key, ofport = content
        out.put("own", out.flow(
            "deliver", PRIO_DELIVER, Match.of(**LOGICAL_SWITCH.m(vni), **OUTPORT.m(key)),
            (Output(ofport),), rule=f"port {name}", stat=(("port", name, "received"),)))
