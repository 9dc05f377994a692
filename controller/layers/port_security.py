"""Port security: a workload may only send with its own MAC and IP, ARP included."""
from __future__ import annotations

from dataplane.match_action import ETH_TYPE_ARP, ETH_TYPE_IP, Match
from controller.layers.base import Layer, TableDecl
from controller.registers import INPORT, LOGICAL_SWITCH


class PortSecurity(Layer):
    name = "port_security"
    id = 2
    tables = (
        TableDecl("port_security",
                  frozenset({"reg13", "reg14", "eth_src", "eth_type", "arp_spa", "arp_sha",
                             "ipv4_src"}),
                  successors=("@next",), miss="drop",
                  doc="only the port's own MAC and IP may leave it; everything else drops"),
    )

    def tenant_flows(self, t, out):
        for p in t.tenant.ports:
            ls = {**LOGICAL_SWITCH.m(t.vni[p.switch]), **INPORT.m(t.port_key[p.name])}
            ip, mac = str(p.ip), p.mac
            rule = f"port {p.name} {mac} {ip}"
            out.to((p.host,), out.flow(
                "port_security", 100,
                Match.of(**ls, eth_src=mac, eth_type=ETH_TYPE_ARP, arp_spa=ip, arp_sha=mac),
                (out.goto("@next"),), rule=rule))
            out.to((p.host,), out.flow(
                "port_security", 100,
                Match.of(**ls, eth_src=mac, eth_type=ETH_TYPE_IP, ipv4_src=ip),
                (out.goto("@next"),), rule=rule))
