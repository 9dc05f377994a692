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

    def tenant_flows(self, t, out):
        for p in t.tenant.ports:
            out.to((p.host,), out.flow(
                "deliver", PRIO_DELIVER,
                Match.of(**LOGICAL_SWITCH.m(t.vni[p.switch]), **OUTPORT.m(t.port_key[p.name])),
                (Output(t.ofport[p.name]),), rule=f"port {p.name}",
                stat=(("port", p.name, "received"),)))
