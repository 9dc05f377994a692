"""Port security: a workload may only send with its own MAC and IP, ARP included.

Nor may it play a network service to its neighbours: DHCP server messages (UDP from
port 67) are dropped. On a switch with DHCP, a port's DHCP client messages from
0.0.0.0 (before it has an address) are admitted; the services layer takes them to
the controller, which answers only a port asking with its own MAC. IPv6 (router advertisements included) does not pass at all yet:
only the port's own IPv4 and ARP are admitted.
"""
from __future__ import annotations

from dataplane.match_action import ETH_TYPE_ARP, ETH_TYPE_IP, ETH_TYPE_IPV6, IPPROTO_ICMPV6, IPPROTO_UDP, ND_NA, Match
from controller.layers.base import Layer, TableDecl
from controller.spaces.registers import INPORT, LOGICAL_SWITCH


DHCP_SERVER_PORT, DHCP_CLIENT_PORT = 67, 68
ND_RA = 134
# port_security, highest first: what no workload may send on its switch (a DHCP server
# message, a neighbour or router advertisement) drops even from the port's own
# address; then the port's own MAC and addresses pass, as does a DHCP client's first
# message from 0.0.0.0 (disjoint from them); then the rest of the port's traffic
# drops by a flow of its own (counted per port); the miss drops the rest.
PRIO_SWITCH_DROP = 110
PRIO_OWN_ADDRESS = 100
PRIO_DHCP_CLIENT = 100
PRIO_PORT_DROP = 1


class PortSecurity(Layer):
    name = "port_security"
    id = 2
    tables = (
        TableDecl("port_security",
                  frozenset({"reg13", "reg14", "eth_src", "eth_type", "arp_spa", "arp_sha",
                             "ipv4_src", "ip_proto", "udp_src", "udp_dst", "ipv6_src", "icmpv6_type"}),
                  successors=("@next",), miss="drop",
                  doc="only the port's own MAC and IP may leave it; everything else drops"),
    )

    sliced = True

    def port_inputs(self, t, p):
        return ((p.name, t.vni[p.switch], t.port_key[p.name], str(p.ip), p.mac,
                 (p.ip6, p.link_local) if p.ip6 is not None else None), {"own": (p.host,)})

    def port_flows(self, content, out):
        name, vni, key, ip, mac, six = content
        ls = {**LOGICAL_SWITCH.m(vni), **INPORT.m(key)}
        rule = f"port {name} {mac} {ip}"
        out.put("own", out.flow(
            "port_security", PRIO_OWN_ADDRESS,
            Match.of(**ls, eth_src=mac, eth_type=ETH_TYPE_ARP, arp_spa=ip, arp_sha=mac),
            (out.goto("@next"),), rule=rule))
        out.put("own", out.flow(
            "port_security", PRIO_OWN_ADDRESS,
            Match.of(**ls, eth_src=mac, eth_type=ETH_TYPE_IP, ipv4_src=ip),
            (out.goto("@next"),), rule=rule))
        if six is not None:
            for src in (six[0], six[1], "::"):
                extra = {"ip_proto": IPPROTO_ICMPV6} if src == "::" else {}
                out.put("own", out.flow(
                    "port_security", PRIO_OWN_ADDRESS,
                    Match.of(**ls, eth_src=mac, eth_type=ETH_TYPE_IPV6, ipv6_src=str(src), **extra),
                    (out.goto("@next"),), rule=f"port {name} {mac} {src}" +
                    (" (ICMPv6 only: duplicate address detection, MLD)" if extra else "")))
        # What else the port sends is not its own: dropped here, by a flow of the
        # port's own so that `nvctl stats` counts its drops (the table's miss is
        # shared by every port on the host).
        out.put("own", out.flow(
            "port_security", PRIO_PORT_DROP, Match.of(**ls), (),
            rule=f"port {name}: not its own address: drop", stat=(("port", name, "portSecurity"),)))

    def tenant_flows(self, t, out):
        for sw in t.tenant.switches:
            if t.members[sw.name]:  # per switch, not per port: one flow where a flow per port would do
                out.to(t.members[sw.name], out.flow(
                    "port_security", PRIO_SWITCH_DROP,
                    Match.of(**LOGICAL_SWITCH.m(t.vni[sw.name]), eth_type=ETH_TYPE_IP, ip_proto=IPPROTO_UDP,
                             udp_src=DHCP_SERVER_PORT),
                    (), rule=f"switch {sw.name}: a workload may not answer DHCP (UDP from port 67): drop",
                    stat=(("switch", sw.name, "dhcpServer"),)))
            if sw.cidr6 is not None and t.members[sw.name]:
                for kind, why in ((ND_NA, "neighbour advertisement"), (ND_RA, "router advertisement")):
                    out.to(t.members[sw.name], out.flow(
                        "port_security", PRIO_SWITCH_DROP,
                        Match.of(**LOGICAL_SWITCH.m(t.vni[sw.name]), eth_type=ETH_TYPE_IPV6,
                                 ip_proto=IPPROTO_ICMPV6, icmpv6_type=kind), (),
                        rule=f"switch {sw.name}: no workload's {why} (the platform answers): drop"))
            if sw.dhcp and t.members[sw.name]:
                out.to(t.members[sw.name], out.flow(
                    "port_security", PRIO_DHCP_CLIENT,
                    Match.of(**LOGICAL_SWITCH.m(t.vni[sw.name]), eth_type=ETH_TYPE_IP, ipv4_src="0.0.0.0",
                             ip_proto=IPPROTO_UDP, udp_src=DHCP_CLIENT_PORT, udp_dst=DHCP_SERVER_PORT),
                    (out.goto("@next"),),
                    rule=f"switch {sw.name}: a DHCP client before it has an address (answered only "
                         f"for its own MAC)"))
