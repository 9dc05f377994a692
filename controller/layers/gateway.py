"""Gateway: a router's way to the provider's external network, on the gateway host.

Outbound: the source host routes the packet onto the router's transit key and sends it
to the gateway host; there `ext_snat` translates the source in the router's conntrack
zone (a port's floating IP first, then the SNAT prefixes) and `ext_out` sends it out of
the external port to the provider's next hop.

Inbound, from the external port: ARP for the router's external address and its floating
IPs is answered with the router's external MAC. A packet to a floating IP is DNATed to
its port; a packet to the router's own address is only un-NATed (replies of SNAT
connections). After conntrack, `ext_route` routes what now has an inside destination;
anything else (new connections to the router address, inside addresses) has no flow and
is dropped: nothing else inside a tenant is reachable from outside.
"""
from __future__ import annotations

from dataplane.match_action import (ETH_TYPE_ARP, ETH_TYPE_IP, IN_PORT, Ct, DecTtl, Match, Move,
                                    Nat, Output, SetField, ct_state)
from controller.layers.arp_responder import ARP_REPLY, ARP_REQUEST
from controller.layers.base import Layer, TableDecl
from controller.spaces.ids import EXTERNAL_NET_KEY
from controller.spaces.names import router_port_name, router_zone_name, transit_name
from controller.spaces.registers import INPORT, LOGICAL_SWITCH, NEXTHOP
from topology.model import derived_mac

# ext_in: ARP for the router's and its floating IPs' addresses, above the IP to them
# (apart by eth_type anyway). Anything else from outside drops.
PRIO_EXT_ARP = 200
PRIO_EXT_IP = 100
# ext_snat: a floating IP's port leaves as its floating IP, even when an SNAT prefix
# covers it too.
PRIO_FLOATING_OUT = 200
PRIO_SNAT = 100
# ext_route, ext_out: one flow per inside network / per router (disjoint).
PRIO_EXT_ROUTE = 100
PRIO_EXT_OUT = 100


def external_mac(router) -> str:
    return derived_mac(router.external_ip, 1)


def arp_reply(mac: str, ip: str) -> tuple:
    return (Move("eth_src", "eth_dst"), SetField("eth_src", mac), SetField("arp_op", ARP_REPLY),
            Move("arp_sha", "arp_tha"), Move("arp_spa", "arp_tpa"), SetField("arp_sha", mac),
            SetField("arp_spa", ip), Output(IN_PORT))


class Gateway(Layer):
    name = "gateway"
    id = 11
    tables = (
        TableDecl("ext_in", frozenset({"reg13", "eth_type", "arp_op", "arp_tpa", "ipv4_dst"}),
                  successors=("ext_route",),
                  doc="from the external network: ARP for our addresses, DNAT / un-SNAT"),
        TableDecl("ext_route", frozenset({"reg13", "eth_type", "ct_state", "ipv4_dst"}),
                  successors=("ip_neighbor",),
                  doc="after conntrack: route to the inside port the address now names"),
        TableDecl("ext_snat", frozenset({"reg13", "eth_type", "ipv4_src"}), successors=("ext_out",),
                  doc="to the external network: floating IP or SNAT in the router's zone"),
        TableDecl("ext_out", frozenset({"reg13", "ct_state"}),
                  doc="out of the external port to the provider's next hop; conntrack's "
                      "invalid packets (which NAT did not translate) are dropped"),
    )

    def tenant_flows(self, t, out):
        if t.gateway is None:
            return
        gw_host, ext_port, next_hop_mac = t.gateway
        on_gw = (gw_host,)
        tn = t.tenant
        for r in tn.routers:
            if r.external_ip is None:
                continue
            transit = t.vni[transit_name(r.name)]
            zone = t.zone[router_zone_name(r.name)]
            mac, rip = external_mac(r), str(r.external_ip)
            ext = LOGICAL_SWITCH.m(EXTERNAL_NET_KEY)
            here = LOGICAL_SWITCH.m(transit)
            fips = [(n, tn.port(n.port)) for n in tn.nat if n.type == "floating-ip" and n.router == r.name]
            for ip in [rip] + [str(n.external_ip) for n, _ in fips]:
                out.to(on_gw, out.flow(
                    "ext_in", PRIO_EXT_ARP, Match.of(**ext, eth_type=ETH_TYPE_ARP, arp_op=ARP_REQUEST, arp_tpa=ip),
                    arp_reply(mac, ip), rule=f"router {r.name}: arp {ip} is-at {mac}"))
            out.to(on_gw, out.flow(
                "ext_in", PRIO_EXT_IP, Match.of(**ext, eth_type=ETH_TYPE_IP, ipv4_dst=rip),
                (LOGICAL_SWITCH.load(transit), Ct(zone=zone, nat=Nat(), table=out.table("ext_route"))),
                rule=f"router {r.name}: replies to {rip} (SNAT)", stat=(("snatReplies", r.name),)))
            for n, p in fips:
                out.to(on_gw, out.flow(
                    "ext_in", PRIO_EXT_IP, Match.of(**ext, eth_type=ETH_TYPE_IP, ipv4_dst=str(n.external_ip)),
                    (LOGICAL_SWITCH.load(transit),
                     Ct(zone=zone, commit=True, nat=Nat("dst", str(p.ip)), table=out.table("ext_route"))),
                    rule=f"floating IP {n.external_ip} -> {p.name} {p.ip}",
                    stat=(("nat", tn.nat.index(n), "in"),)))
                out.to(on_gw, out.flow(
                    "ext_snat", PRIO_FLOATING_OUT, Match.of(**here, eth_type=ETH_TYPE_IP, ipv4_src=str(p.ip)),
                    (Ct(zone=zone, commit=True, nat=Nat("src", str(n.external_ip)), table=out.table("ext_out")),),
                    rule=f"floating IP: {p.name} {p.ip} leaves as {n.external_ip}",
                    stat=(("nat", tn.nat.index(n), "out"),)))
            for n in tn.nat:
                if n.type == "snat" and n.router == r.name:
                    out.to(on_gw, out.flow(
                        "ext_snat", PRIO_SNAT, Match.of(**here, eth_type=ETH_TYPE_IP, ipv4_src=str(n.cidr)),
                        (Ct(zone=zone, commit=True, nat=Nat("src", rip), table=out.table("ext_out")),),
                        rule=f"router {r.name}: SNAT {n.cidr} as {rip}",
                        stat=(("nat", tn.nat.index(n), "out"),)))
            out.to(on_gw, out.flow("ext_out", PRIO_EXT_OUT, Match.of(**here, ct_state=ct_state(trk=True, inv=False)),
                                   (SetField("eth_src", mac), SetField("eth_dst", next_hop_mac),
                                    Output(ext_port)),
                                   rule=f"router {r.name}: out to the external network"))
            for rp in r.ports:
                sw = tn.switch(rp.switch)
                out.to(on_gw, out.flow(
                    "ext_route", PRIO_EXT_ROUTE,
                    Match.of(**here, eth_type=ETH_TYPE_IP, ct_state=ct_state(trk=True, inv=False),
                             ipv4_dst=str(sw.cidr)),
                    (DecTtl(), SetField("eth_src", rp.mac), LOGICAL_SWITCH.load(t.vni[rp.switch]),
                     INPORT.load(t.port_key[router_port_name(r.name, rp.switch)]),
                     Move("ipv4_dst", NEXTHOP.field), out.goto("ip_neighbor")),
                    rule=f"router {r.name}: from outside to {sw.cidr} ({sw.name})"))
