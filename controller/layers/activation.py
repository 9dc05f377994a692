"""Activation: a migrating port's second binding, waiting for its guest to speak.

While a VM migrates (controller.server.vmmigrate), its port is bound twice: on its
host, where it runs, and pending on the host it moves to, where the hypervisor has
made an interface with the same iface-id for the incoming guest. As OVN's
`activation-strategy=rarp` does, the pending binding carries nothing until the guest's
first packet from there: QEMU's RARP (or the guest's gratuitous ARP, when it announces
itself) with the port's MAC, from that interface. Classify sends the pending
interface's packets here; the announcement goes to the controller, which activates the
binding (the port's placement moves, that host first); anything else drops. So a guest
that is not migrating, or announces another port's MAC, or announces from a host it is
not migrating to, activates nothing: none of those has a flow here.

Meanwhile the other hosts send the port's unicast traffic to both bindings (the
encapsulation layer); the pending host drops its copy until activation, and then
delivers it without waiting for anyone else to switch.
"""
from __future__ import annotations

from dataplane.match_action import ETH_TYPE_ARP, Match
from controller.layers.base import Layer, TableDecl
from controller.layers.services import to_controller
from controller.spaces.names import pending_name

ETH_TYPE_RARP = 0x8035
ARP_REQUEST = 1
# activation: one flow per announcement kind of each pending port (each pins its own
# in_port, so none overlaps another); anything else from a pending interface misses (drop).
PRIO_ANNOUNCE = 100


class Activation(Layer):
    name = "activation"
    id = 15
    tables = (
        TableDecl("activation", frozenset({"in_port", "eth_src", "eth_type", "arp_op", "arp_spa", "arp_tpa"}),
                  doc="a migrating port's pending interface: its guest's RARP/GARP to the controller, else drop"),
    )

    def tenant_flows(self, t, out):
        for p in t.tenant.ports:
            if not p.pending:
                continue
            ofport = t.ofport[pending_name(p.name)]
            out.to((p.pending,), out.flow(
                "activation", PRIO_ANNOUNCE, Match.of(in_port=ofport, eth_src=p.mac, eth_type=ETH_TYPE_RARP),
                to_controller(t.tenant_id), rule=f"port {p.name} moving to {p.pending}: its RARP activates"))
            out.to((p.pending,), out.flow(
                "activation", PRIO_ANNOUNCE, Match.of(in_port=ofport, eth_src=p.mac, eth_type=ETH_TYPE_ARP,
                                                      arp_op=ARP_REQUEST, arp_spa=str(p.ip), arp_tpa=str(p.ip)),
                to_controller(t.tenant_id), rule=f"port {p.name} moving to {p.pending}: its gratuitous ARP activates"))
