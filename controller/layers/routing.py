"""Routing: distributed logical routers. A packet sent to a router port's MAC is
routed on the host it came from: TTL decremented, source MAC rewritten to the egress
router port, moved onto the destination switch, next hop resolved to a MAC, then
dispatched (one underlay crossing to the destination's host). The router answers
ICMP echo on its own addresses.

Longest prefix wins through priority; at the same length a connected route beats a
static route, which beats a route learned from the provider (BGP, `external.importRoutes`,
controller.server.routes) and the default route to the external network. A learned route
leaves like the default route: through the router's gateway. A router that imports
routes has no default route unless one is learned: what it reaches outside is what the
provider announces.

IPv6: between the switches whose router ports have an ip6, connected routes only (no
static IPv6 routes, no external IPv6 yet); the next hop is the destination itself, so
ip_neighbor matches its address. Ping6 to the router is answered by the controller.
"""
from __future__ import annotations

import ipaddress

from dataplane.match_action import (ETH_TYPE_IP, ETH_TYPE_IPV6, IN_PORT, IPPROTO_ICMP, DecTtl, Match, Move,
                                    Output, SetField)
from topology.model import derived_mac
from controller.layers.base import MISS_PRIORITY, Layer, TableDecl
from controller.spaces.names import router_port_name, transit_name
from controller.spaces.registers import INPORT, LOGICAL_SWITCH, NEXTHOP, OUTPORT, SCRATCH

ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY = 8, 0
# ip_routing, highest first: an echo request to one of the router's addresses is
# answered; then routes, longest prefix first and connected before static before learned
# at the same length (route_priority, PRIO_ROUTE_BASE up to PRIO_ROUTE_BASE + 3*128 + 2); then the
# router's "no route" drop. A packet not to a router port misses (on).
PRIO_ECHO = 3000
PRIO_ROUTE_BASE = 100
PRIO_NO_ROUTE = 1
# ip_neighbor: one flow per next hop address (disjoint); an unknown one drops.
PRIO_NEIGHBOUR = 100


LEARNED, STATIC, CONNECTED = 0, 1, 2  # a route's rank among those of the same length


def route_priority(prefixlen: int, rank: int) -> int:
    return PRIO_ROUTE_BASE + prefixlen * 3 + rank


if not MISS_PRIORITY < PRIO_NO_ROUTE < route_priority(0, LEARNED) <= route_priority(128, CONNECTED) < PRIO_ECHO:
    raise ValueError("routing priorities: a route could outrank the router's echo, or fall to no-route")


def _attached(t) -> dict:
    """switch -> ((router, its port there has IPv6), ...) of the routers attached there
    that have hosts, and {router: the hosts its flows are on (every host its switches
    span)}."""
    out: dict = {}
    for r in t.tenant.routers:
        hosts = frozenset().union(*(t.span[rp.switch] for rp in r.ports))
        if not hosts:
            continue
        for rp in r.ports:
            routers, placement = out.setdefault(rp.switch, ([], {}))
            routers.append((r.name, rp.ip6 is not None))
            placement[r.name] = hosts
    return {sw: (tuple(routers), placement) for sw, (routers, placement) in out.items()}


def ip_int(ip) -> int:
    return int(ipaddress.IPv4Address(ip))


class Routing(Layer):
    name = "routing"
    id = 7
    tables = (
        TableDecl("ip_routing",
                  frozenset({"reg13", "reg15", "eth_type", "ip_proto", "icmpv4_type", "ipv4_dst", "ipv6_dst"}),
                  successors=("ip_neighbor", "dispatch"), miss="@next",
                  doc="packets to a router port: ICMP echo to the router, or route by longest prefix"),
        TableDecl("ip_neighbor", frozenset({"reg13", "reg12", "eth_type", "ipv6_dst"}), successors=("@next",),
                  doc="next hop on the destination switch -> its MAC and logical port"),
    )

    sliced = True

    def port_inputs(self, t, p):
        routers, placement = t.once("routing.routers", lambda: _attached(t)).get(p.switch, ((), {}))
        return (p.name, t.vni[p.switch], p.ip, p.mac, p.ip6, t.port_key[p.name], routers), placement

    def _neighbour_flows(self, content, out):
        """The port as the next hop on its switch, for every router attached there (each
        router's flows on its own hosts)."""
        name, vni, ip, mac, ip6, key, routers = content
        ls = LOGICAL_SWITCH.m(vni)
        for r, rp_ip6 in routers:
            out.put(r, out.flow(
                "ip_neighbor", PRIO_NEIGHBOUR, Match.of(**ls, **NEXTHOP.m(ip_int(ip))),
                (SetField("eth_dst", mac), OUTPORT.load(key), out.goto("@next")),
                rule=f"router {r}: {ip} is {mac} (port {name})"))
            if ip6 is not None and rp_ip6:
                out.put(r, out.flow(
                    "ip_neighbor", PRIO_NEIGHBOUR, Match.of(**ls, eth_type=ETH_TYPE_IPV6, ipv6_dst=str(ip6)),
                    (SetField("eth_dst", mac), OUTPORT.load(key), out.goto("@next")),
                    rule=f"router {r}: {ip6} is {mac} (port {name})"))

    def units(self, t):
        """Each port (its neighbour flows) and each router with hosts: its echo, its
        connected and static routes, its default route, on every host it spans."""
        yield from super().units(t)
        tn = t.tenant
        for r in tn.routers:
            hosts = frozenset().union(*(t.span[rp.switch] for rp in r.ports))
            if not hosts:
                continue
            switches = tuple((rp.switch, t.vni[rp.switch], t.port_key[router_port_name(r.name, rp.switch)],
                              tn.switch(rp.switch)) for rp in r.ports)
            next_hops = tuple(next(p for p in tn.ports if p.ip == route.next_hop).switch for route in r.routes)
            yield (f"router:{r.name}", ("router", r, switches, next_hops, r.name in t.gateways,
                                        t.vni.get(transit_name(r.name)), t.provider_prefix.get(r.name)),
                   {"hosts": hosts})

    def port_flows(self, content, out):
        if content[0] == "router":
            self._router_flows(content, out)
        else:
            self._neighbour_flows(content, out)

    def _router_flows(self, content, out):
        _, r, switches, next_hops, gateway, transit, provider_prefix = content
        on = {sw: (vni, key, s) for sw, vni, key, s in switches}

        def forward(egress) -> tuple:
            """Leave through router port `egress`: TTL, source MAC, destination switch."""
            vni, key, _ = on[egress.switch]
            return (DecTtl(), SetField("eth_src", egress.mac), LOGICAL_SWITCH.load(vni), INPORT.load(key))
        addrs = [rp.ip for rp in r.ports]
        for rp in r.ports:
            vni, key, _ = on[rp.switch]
            came = {**LOGICAL_SWITCH.m(vni), **OUTPORT.m(key)}
            for ip in addrs:  # ping the router on any of its addresses
                out.put("hosts", out.flow(
                    "ip_routing", PRIO_ECHO,
                    Match.of(**came, eth_type=ETH_TYPE_IP, ip_proto=IPPROTO_ICMP,
                             icmpv4_type=ICMP_ECHO_REQUEST, ipv4_dst=str(ip)),
                    (Move("eth_src", "eth_dst"), SetField("eth_src", rp.mac),
                     Move("ipv4_src", SCRATCH.field), Move("ipv4_dst", "ipv4_src"),
                     Move(SCRATCH.field, "ipv4_dst"), SetField("icmpv4_type", ICMP_ECHO_REPLY),
                     Output(IN_PORT)),
                    rule=f"router {r.name} answers ping on {ip}"))
            for egress in r.ports:  # connected networks
                sw = on[egress.switch][2]
                out.put("hosts", out.flow(
                    "ip_routing", route_priority(sw.cidr.prefixlen, CONNECTED),
                    Match.of(**came, eth_type=ETH_TYPE_IP, ipv4_dst=str(sw.cidr)),
                    forward(egress) + (Move("ipv4_dst", NEXTHOP.field), out.goto("ip_neighbor")),
                    rule=f"router {r.name}: {sw.cidr} is connected ({sw.name})"))
            for egress in r.ports if rp.ip6 is not None else ():  # connected IPv6 networks
                sw = on[egress.switch][2]
                if egress.ip6 is None or sw.cidr6 is None:
                    continue
                out.put("hosts", out.flow(
                    "ip_routing", route_priority(sw.cidr6.prefixlen, CONNECTED),
                    Match.of(**came, eth_type=ETH_TYPE_IPV6, ipv6_dst=str(sw.cidr6)),
                    forward(egress) + (out.goto("ip_neighbor"),),
                    rule=f"router {r.name}: {sw.cidr6} is connected ({sw.name})"))
            for route, nh_switch in zip(r.routes, next_hops):
                egress = r.port_on(nh_switch)
                out.put("hosts", out.flow(
                    "ip_routing", route_priority(route.prefix.prefixlen, STATIC),
                    Match.of(**came, eth_type=ETH_TYPE_IP, ipv4_dst=str(route.prefix)),
                    forward(egress) + (NEXTHOP.load(ip_int(route.next_hop)), out.goto("ip_neighbor")),
                    rule=f"router {r.name}: {route.prefix} via {route.next_hop}"))
            if r.external_ip is not None and gateway:
                outside = (DecTtl(), SetField("eth_src", derived_mac(r.external_ip, 1)),
                           LOGICAL_SWITCH.load(transit), out.goto("dispatch"))
                for lr in r.learned:
                    out.put("hosts", out.flow(
                        "ip_routing", route_priority(lr.prefix.prefixlen, LEARNED),
                        Match.of(**came, eth_type=ETH_TYPE_IP, ipv4_dst=str(lr.prefix)), outside,
                        rule=f"router {r.name}: {lr.prefix} learned from {lr.peer} (AS {lr.peer_asn}) "
                             f"via {lr.next_hop}"))
                if r.import_routes is not None and provider_prefix:  # without a default route: the
                    out.put("hosts", out.flow(                          # provider network is connected
                        "ip_routing", route_priority(ipaddress.IPv4Network(provider_prefix).prefixlen, CONNECTED),
                        Match.of(**came, eth_type=ETH_TYPE_IP, ipv4_dst=provider_prefix), outside,
                        rule=f"router {r.name}: {provider_prefix} is connected (the provider network)"))
                if r.import_routes is None:
                    out.put("hosts", out.flow(
                        "ip_routing", route_priority(0, LEARNED), Match.of(**came, eth_type=ETH_TYPE_IP), outside,
                        rule=f"router {r.name}: default route to the external network"))
            out.put("hosts", out.flow("ip_routing", PRIO_NO_ROUTE, Match.of(**came), (),
                                      rule=f"router {r.name}: no route"))

    def tenant_flows(self, t, out):
        """Every flow is a unit's (units): nothing per tenant."""
