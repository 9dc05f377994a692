"""Gateway: a router's way to the provider's external network, on its gateway hosts.

A router with an external address has a gateway group: hosts with the provider network,
most preferred first (`external.gateways`, else placed by the controller). Every host of
the group holds the router's whole gateway (SNAT, ext_out, ext_route, un-SNAT), so any
of them can carry it at once; which one does is decided by the switches themselves,
with no controller in the way:

- the router's other hosts send its external traffic (`dispatch`, encap layer) through
  a fast-failover group whose buckets are the gateways in order, each bucket watching
  the BFD tunnel port toward its gateway: the first live gateway takes it. A gateway
  host sends its own ports' traffic to the gateways before it while they live, else
  handles it itself;
- only the active gateway answers ARP for the router's address: on a standby, ARP goes
  through a fast-failover group whose first buckets (empty: drop) watch the gateways
  before it, and whose last answers (`ext_arp`). When those die, the standby answers.

A floating IP whose port runs on a host with the provider network is distributed: its
ARP (with a MAC of its own, so the provider's switches learn where it is), its DNAT,
its SNAT and its way out are on that host only, and follow the port when it moves.
A floating IP whose port's host has no provider network goes through the gateway, as
the router's address does.

Inbound, from the external port: ARP for our addresses is answered; a packet to a
floating IP is DNATed to its port; a packet to the router's own address is only
un-NATed (replies of SNAT connections). After conntrack, `ext_route` routes what now
has an inside destination; anything else (new connections to the router address,
inside addresses) has no flow and is dropped: nothing else inside a tenant is reachable
from outside.
"""
from __future__ import annotations

import ipaddress

from dataplane.match_action import (ETH_TYPE_ARP, ETH_TYPE_IP, IN_PORT, Ct, DecTtl, Group, Match, Move,
                                    Nat, Output, SetField, ct_state)
from controller.layers.arp_responder import ARP_REPLY, ARP_REQUEST
from controller.layers.base import Layer, TableDecl
from controller.spaces.ids import EXTERNAL_NET_KEY, GATEWAY_GROUP_BASE, STANDBY_GROUP_BASE
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
PRIO_FLOATING_EXT_OUT = 200  # a distributed floating IP leaves with its own MAC
PRIO_EXT_ARP_REPLY = 100  # ext_arp: one flow per address (disjoint)


def external_mac(router) -> str:
    return derived_mac(router.external_ip, 1)


DEFAULT_GATEWAYS = 3  # a router without `external.gateways`: this many hosts with the provider network


def gateway_hosts(r, hosts) -> tuple[str, ...]:
    """Router `r`'s gateway group, most preferred first: its `external.gateways` that
    have the provider network, else the first DEFAULT_GATEWAYS such hosts by name.
    `hosts`: name -> the compiler's Host (its `external`)."""
    if r.external_ip is None:
        return ()
    if r.gateways:
        return tuple(h for h in r.gateways if h in hosts and hosts[h].external)
    return tuple(sorted(h.name for h in hosts.values() if h.external))[:DEFAULT_GATEWAYS]


def host_external_mac(ip: str) -> str:
    """The MAC a host answers for its own provider-network address."""
    return derived_mac(ipaddress.IPv4Address(ip), 4)


def floating_mac(n) -> str:
    """A distributed floating IP's own MAC, so the provider's switches learn its host."""
    return derived_mac(n.external_ip, 1)


def gateway_groups(t, a) -> frozenset:
    """The group ids a tenant's gateway flows use: two per router with an external
    address, named by its transit VNI (which it alone holds)."""
    out = set()
    for r in t.routers:
        vni = a.vni.get(transit_name(r.name)) if r.external_ip is not None else None
        if vni is not None:
            out |= {GATEWAY_GROUP_BASE + vni, STANDBY_GROUP_BASE + vni}
    return frozenset(out)


def distributed(t, n) -> str | None:
    """The host that carries floating IP `n` itself (its port's, with the provider
    network), or None: it goes through the router's gateway. A router without any
    gateway has no way out, and its floating IPs are not answered anywhere."""
    p = t.tenant.port(n.port)
    return p.host if p is not None and p.host in t.externals and n.router in t.gateways else None


def distributed_host(tenant, n, hosts) -> str | None:
    """The same from a tenant and the compiler's hosts (controller.compile.compiler.Host)."""
    p = tenant.port(n.port)
    h = hosts.get(p.host) if p is not None else None
    if h is None or not h.external or not gateway_hosts(tenant.router(n.router), hosts):
        return None
    return p.host


def arp_reply(mac: str, ip: str) -> tuple:
    return (Move("eth_src", "eth_dst"), SetField("eth_src", mac), SetField("arp_op", ARP_REPLY),
            Move("arp_sha", "arp_tha"), Move("arp_spa", "arp_tpa"), SetField("arp_sha", mac),
            SetField("arp_spa", ip), Output(IN_PORT))


class Gateway(Layer):
    name = "gateway"
    id = 11
    tables = (
        TableDecl("ext_in", frozenset({"reg13", "eth_type", "arp_op", "arp_tpa", "ipv4_dst"}),
                  successors=("ext_route", "ext_arp"),
                  doc="from the external network: ARP for our addresses, DNAT / un-SNAT"),
        TableDecl("ext_arp", frozenset({"reg13", "eth_type", "arp_tpa"}),
                  doc="the active gateway's answer to ARP for the router's addresses"),
        TableDecl("ext_route", frozenset({"reg13", "eth_type", "ct_state", "ipv4_dst"}),
                  successors=("ip_neighbor",),
                  doc="after conntrack: route to the inside port the address now names"),
        TableDecl("ext_snat", frozenset({"reg13", "eth_type", "ipv4_src"}), successors=("ext_out",),
                  doc="to the external network: floating IP or SNAT in the router's zone"),
        TableDecl("ext_out", frozenset({"reg13", "ct_state", "eth_type", "ipv4_src"}),
                  doc="out of the external port to the provider's next hop (a distributed floating "
                      "IP's with its own MAC); conntrack's invalid packets (which NAT did not "
                      "translate) are dropped"),
    )

    def host_flows(self, h, out):
        """The host's own address on the provider network, where BGP sends what this host
        carries (controller.server.routes): answered here only, with a MAC of its own."""
        if h.external is None or not h.provider_address:
            return
        ip = h.provider_address
        mac = host_external_mac(ip)
        out.to((h.name,), out.flow(
            "ext_in", PRIO_EXT_ARP,
            Match.of(**LOGICAL_SWITCH.m(EXTERNAL_NET_KEY), eth_type=ETH_TYPE_ARP, arp_op=ARP_REQUEST, arp_tpa=ip),
            arp_reply(mac, ip), rule=f"host {h.name}: its provider-network address {ip} is-at {mac} (BGP next hop)"))

    def tenant_flows(self, t, out):
        tn = t.tenant
        ext = LOGICAL_SWITCH.m(EXTERNAL_NET_KEY)
        for r in tn.routers:
            group = t.gateways.get(r.name)
            if r.external_ip is None:
                continue
            transit = t.vni[transit_name(r.name)]
            zone = t.zone[router_zone_name(r.name)]
            mac, rip = external_mac(r), str(r.external_ip)
            here = LOGICAL_SWITCH.m(transit)
            fips = [(n, tn.port(n.port)) for n in tn.nat if n.type == "floating-ip" and n.router == r.name]
            central = [(n, p) for n, p in fips if distributed(t, n) is None]
            gws = tuple(h for h, _, _ in group or ())
            route_on = set(gws)

            for n, p in fips:  # distributed floating IPs: all on the port's host
                h = distributed(t, n)
                if h is None:
                    continue
                route_on.add(h)
                ext_port, next_hop_mac = t.externals[h]
                fip, fmac = str(n.external_ip), floating_mac(n)
                self._floating(out, (h,), tn, n, p, transit, zone, here, ext)
                out.to((h,), out.flow(
                    "ext_in", PRIO_EXT_ARP, Match.of(**ext, eth_type=ETH_TYPE_ARP, arp_op=ARP_REQUEST, arp_tpa=fip),
                    arp_reply(fmac, fip), rule=f"floating IP {fip} is-at {fmac} (on {h}, with {p.name})"))
                out.to((h,), out.flow(
                    "ext_out", PRIO_FLOATING_EXT_OUT,
                    Match.of(**here, eth_type=ETH_TYPE_IP, ipv4_src=fip, ct_state=ct_state(trk=True, inv=False)),
                    (SetField("eth_src", fmac), SetField("eth_dst", next_hop_mac), Output(ext_port)),
                    rule=f"floating IP {fip}: out to the external network on {h}"))

            if gws:
                for ip in [rip] + [str(n.external_ip) for n, _ in central]:
                    out.to(gws, out.flow("ext_arp", PRIO_EXT_ARP_REPLY, Match.of(**ext, eth_type=ETH_TYPE_ARP, arp_tpa=ip),
                                         arp_reply(mac, ip), rule=f"router {r.name}: arp {ip} is-at {mac}"))
                    for i, h in enumerate(gws):
                        out.to((h,), out.flow(
                            "ext_in", PRIO_EXT_ARP,
                            Match.of(**ext, eth_type=ETH_TYPE_ARP, arp_op=ARP_REQUEST, arp_tpa=ip),
                            self._when_active(t, gws, i, transit, out),
                            rule=f"router {r.name}: arp {ip} on {h}, "
                                 + ("its first gateway" if i == 0 else f"gateway {i + 1}: when those before it are down")))
                out.to(gws, out.flow(
                    "ext_in", PRIO_EXT_IP, Match.of(**ext, eth_type=ETH_TYPE_IP, ipv4_dst=rip),
                    (LOGICAL_SWITCH.load(transit), Ct(zone=zone, nat=Nat(), table=out.table("ext_route"))),
                    rule=f"router {r.name}: replies to {rip} (SNAT)", stat=(("snatReplies", r.name),)))
                for n, p in central:
                    self._floating(out, gws, tn, n, p, transit, zone, here, ext)
                for n in tn.nat:
                    if n.type == "snat" and n.router == r.name:
                        out.to(gws, out.flow(
                            "ext_snat", PRIO_SNAT, Match.of(**here, eth_type=ETH_TYPE_IP, ipv4_src=str(n.cidr)),
                            (Ct(zone=zone, commit=True, nat=Nat("src", rip), table=out.table("ext_out")),),
                            rule=f"router {r.name}: SNAT {n.cidr} as {rip}",
                            stat=(("nat", tn.nat.index(n), "out"),)))
                for h, ext_port, next_hop_mac in group:
                    out.to((h,), out.flow(
                        "ext_out", PRIO_EXT_OUT, Match.of(**here, ct_state=ct_state(trk=True, inv=False)),
                        (SetField("eth_src", mac), SetField("eth_dst", next_hop_mac), Output(ext_port)),
                        rule=f"router {r.name}: out to the external network on {h}"))
            if not route_on:
                continue
            on = tuple(sorted(route_on))
            for rp in r.ports:
                sw = tn.switch(rp.switch)
                out.to(on, out.flow(
                    "ext_route", PRIO_EXT_ROUTE,
                    Match.of(**here, eth_type=ETH_TYPE_IP, ct_state=ct_state(trk=True, inv=False),
                             ipv4_dst=str(sw.cidr)),
                    (DecTtl(), SetField("eth_src", rp.mac), LOGICAL_SWITCH.load(t.vni[rp.switch]),
                     INPORT.load(t.port_key[router_port_name(r.name, rp.switch)]),
                     Move("ipv4_dst", NEXTHOP.field), out.goto("ip_neighbor")),
                    rule=f"router {r.name}: from outside to {sw.cidr} ({sw.name})"))

    @staticmethod
    def _floating(out, hosts, tn, n, p, transit, zone, here, ext) -> None:
        """Floating IP `n` of port `p`, both ways, on `hosts`."""
        out.to(hosts, out.flow(
            "ext_in", PRIO_EXT_IP, Match.of(**ext, eth_type=ETH_TYPE_IP, ipv4_dst=str(n.external_ip)),
            (LOGICAL_SWITCH.load(transit),
             Ct(zone=zone, commit=True, nat=Nat("dst", str(p.ip)), table=out.table("ext_route"))),
            rule=f"floating IP {n.external_ip} -> {p.name} {p.ip}",
            stat=(("nat", tn.nat.index(n), "in"),)))
        out.to(hosts, out.flow(
            "ext_snat", PRIO_FLOATING_OUT, Match.of(**here, eth_type=ETH_TYPE_IP, ipv4_src=str(p.ip)),
            (Ct(zone=zone, commit=True, nat=Nat("src", str(n.external_ip)), table=out.table("ext_out")),),
            rule=f"floating IP: {p.name} {p.ip} leaves as {n.external_ip}",
            stat=(("nat", tn.nat.index(n), "out"),)))

    @staticmethod
    def _when_active(t, gws, i, transit, out) -> tuple:
        """Gateway `i` of `gws` answers for the router when every gateway before it is
        down, as its BFD sessions toward them say: a fast-failover group whose first
        buckets (drop) watch those, and whose last answers."""
        if i == 0:
            return (out.goto("ext_arp"),)
        watch = tuple(t.peer_port.get(h) for h in gws[:i])
        if any(w is None for w in watch):  # a gateway before it has no BFD port: it is never known down
            return ()
        return (Group(STANDBY_GROUP_BASE + transit, tuple(() for _ in watch) + ((out.resubmit("ext_arp"),),),
                      kind="ff", watch=watch + (t.tunnel_port,)),)  # the tunnel port: no BFD, always live
