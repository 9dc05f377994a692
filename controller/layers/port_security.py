"""Port security: a workload may only send with its own MAC and IP, ARP included.

Nor may it play a network service to its neighbours: DHCP server messages (UDP from
port 67) are dropped. On a switch with DHCP, a port's DHCP client messages from
0.0.0.0 (before it has an address) are admitted; the services layer takes them to
the controller, which answers only a port asking with its own MAC. IPv6 (router advertisements included) does not pass at all yet:
only the port's own IPv4 and ARP are admitted.
"""
from __future__ import annotations

from dataplane.match_action import ETH_TYPE_ARP, ETH_TYPE_IP, IPPROTO_UDP, Match
from controller.layers.base import Layer, TableDecl
from controller.registers import INPORT, LOGICAL_SWITCH


DHCP_SERVER_PORT, DHCP_CLIENT_PORT = 67, 68


class PortSecurity(Layer):
    name = "port_security"
    id = 2
    tables = (
        TableDecl("port_security",
                  frozenset({"reg13", "reg14", "eth_src", "eth_type", "arp_spa", "arp_sha",
                             "ipv4_src", "ip_proto", "udp_src", "udp_dst"}),
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
            out.to((p.host,), out.flow(
                "port_security", 110,
                Match.of(**ls, eth_type=ETH_TYPE_IP, ip_proto=IPPROTO_UDP, udp_src=DHCP_SERVER_PORT),
                (), rule=f"port {p.name} may not answer DHCP (UDP from port 67): drop"))
        for sw in t.tenant.switches:
            if sw.dhcp and t.members[sw.name]:
                out.to(t.members[sw.name], out.flow(
                    "port_security", 100,
                    Match.of(**LOGICAL_SWITCH.m(t.vni[sw.name]), eth_type=ETH_TYPE_IP, ipv4_src="0.0.0.0",
                             ip_proto=IPPROTO_UDP, udp_src=DHCP_CLIENT_PORT, udp_dst=DHCP_SERVER_PORT),
                    (out.goto("@next"),),
                    rule=f"switch {sw.name}: a DHCP client before it has an address (answered only "
                         f"for its own MAC)"))
