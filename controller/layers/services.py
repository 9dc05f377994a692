"""Network services the platform answers itself: DHCP and DNS, by packet-in.

On a switch with `dhcp: true` (the default), a port's DHCP requests (UDP to port 67)
and its DNS queries to the switch's service address (UDP to port 53) go to the
controller, which answers from the tenant's spec alone (`controller.packetin.responder`,
`controller.packetin.punt`): no lease database, nothing to lose. Port security admits a
DHCP client's first messages (from 0.0.0.0) and still drops any workload's DHCP server
messages, so only the platform answers.

Everything a tenant sends to the controller from one host passes that tenant's
control-plane meter there (id CONTROL_METER_BASE + tenant id, CONTROL_PPS packets a
second): a DHCP or DNS flood costs the flooding tenant its own answers, not another
tenant's, and the controller at most CONTROL_PPS packet-ins a second per tenant and
host. The encap layer sends path-MTU packet-ins through the same meter.

IPv6 (a switch with cidr6): every neighbour solicitation and router solicitation goes
to the controller, which answers for the addresses the spec knows (ports, router
ports, their link-local addresses) and router advertisements from the router port when
it has an ip6 (SLAAC; see `controller.packetin.punt`); ICMPv6 echo to the router and DNS at its
ip6 too. Nothing of neighbour discovery floods the overlay.
"""
from __future__ import annotations

from dataplane.match_action import (CONTROLLER, ETH_TYPE_IP, ETH_TYPE_IPV6, IPPROTO_ICMPV6, IPPROTO_UDP,
                                    ND_NS, Match, Meter, Output)
from controller.layers.base import Layer, TableDecl
from controller.layers.port_security import DHCP_SERVER_PORT
from controller.spaces.ids import CONTROL_METER_BASE
from controller.spaces.registers import LOGICAL_SWITCH

DNS_PORT = 53
ND_RS, ICMPV6_ECHO_REQUEST = 133, 128
# services: every flow takes one kind of request to the controller, and none overlaps
# another (UDP port, ICMPv6 type, destination address); anything else misses (on).
PRIO_TO_CONTROLLER = 100
CONTROL_PPS = 100  # a booting VM's DHCP and DNS need a handful
CONTROL_BURST = 50


def control_meter(tenant_id: int) -> Meter:
    """The tenant's meter for packets to the controller, on each of its hosts."""
    return Meter(CONTROL_METER_BASE + tenant_id, CONTROL_PPS, CONTROL_BURST, "pktps")


def to_controller(tenant_id: int) -> tuple:
    return (control_meter(tenant_id), Output(CONTROLLER))


class Services(Layer):
    name = "services"
    id = 14
    tables = (
        TableDecl("services", frozenset({"reg13", "eth_type", "ip_proto", "ipv4_dst", "udp_dst", "ipv6_dst",
                                         "icmpv6_type"}),
                  successors=("@next",), miss="@next",
                  doc="DHCP requests and DNS queries to the switch's service address: to the controller"),
    )

    def tenant_flows(self, t, out):
        for s in t.tenant.switches:
            hosts = t.members[s.name]
            if s.cidr6 is not None and hosts:
                self._ipv6(t, s, hosts, out)
            if not s.dhcp or not hosts:
                continue
            ls = LOGICAL_SWITCH.m(t.vni[s.name])
            udp = dict(eth_type=ETH_TYPE_IP, ip_proto=IPPROTO_UDP)
            svc = t.tenant.service(s.name)
            out.to(hosts, out.flow(
                "services", PRIO_TO_CONTROLLER, Match.of(**ls, **udp, udp_dst=DHCP_SERVER_PORT),
                to_controller(t.tenant_id), rule=f"switch {s.name}: DHCP, answered by the controller"))
            out.to(hosts, out.flow(
                "services", PRIO_TO_CONTROLLER, Match.of(**ls, **udp, ipv4_dst=str(svc.ip), udp_dst=DNS_PORT),
                to_controller(t.tenant_id), rule=f"switch {s.name}: DNS at {svc.ip}, answered by the controller"))

    @staticmethod
    def _ipv6(t, s, hosts, out):
        ls = LOGICAL_SWITCH.m(t.vni[s.name])
        icmp6 = dict(eth_type=ETH_TYPE_IPV6, ip_proto=IPPROTO_ICMPV6)
        for kind, what in ((ND_NS, "neighbour solicitation"), (ND_RS, "router solicitation")):
            out.to(hosts, out.flow("services", PRIO_TO_CONTROLLER, Match.of(**ls, **icmp6, icmpv6_type=kind),
                                   to_controller(t.tenant_id),
                                   rule=f"switch {s.name}: {what}, answered by the controller"))
        rr = t.tenant.router_of(s.name)
        if rr is None or rr[1].ip6 is None:
            return
        rp = rr[1]
        for addr in [rp.link_local] + [o.ip6 for o in rr[0].ports if o.ip6 is not None]:  # any of its addresses
            out.to(hosts, out.flow(
                "services", PRIO_TO_CONTROLLER,
                Match.of(**ls, **icmp6, ipv6_dst=str(addr), icmpv6_type=ICMPV6_ECHO_REQUEST),
                to_controller(t.tenant_id), rule=f"switch {s.name}: ping6 router {rr[0].name} at {addr}"))
        if s.dhcp:
            out.to(hosts, out.flow(
                "services", PRIO_TO_CONTROLLER,
                Match.of(**ls, eth_type=ETH_TYPE_IPV6, ip_proto=IPPROTO_UDP, ipv6_dst=str(rp.ip6), udp_dst=DNS_PORT),
                to_controller(t.tenant_id), rule=f"switch {s.name}: DNS at {rp.ip6}, answered by the controller"))
