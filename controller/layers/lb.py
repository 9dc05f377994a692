"""Load balancers: a VIP:port spread over backend ports, per connection.

Ingress, on the client's host (after its from-port ACLs, which see the VIP): a packet to
VIP:port goes through conntrack with NAT in the tenant's LB zone. An established
connection comes back already translated; a new one goes to the LB's select group,
whose buckets each commit it with DNAT to one backend. `lb_out` then addresses the
frame to the translated destination (a port on the client's switch, else the router),
and switching or routing carries on as for any packet. Removing a backend changes the
group: new connections never reach it; established ones keep their translation.

Egress (before the to-port ACLs): a packet from a backend address and port goes
through the same zone to have the VIP put back as its source.

Health checks (`healthCheck:`, controller.packetin.health): a backend its probes found
down (`LoadBalancer.down`, controller state) has no bucket; established connections
keep their translation. With every backend down, a new connection to the VIP goes to
the controller through the tenant's control-plane meter, which answers a TCP reset
(UDP: ICMP port unreachable), so a client is told at once rather than left waiting.
`LbMonitor` (its own table, right after port security) takes a backend's answers to
the probes, addressed to its switch's monitor address, to the controller.
"""
from __future__ import annotations

from dataplane.match_action import (ETH_TYPE_ARP, ETH_TYPE_IP, IN_PORT, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Ct,
                                    Group, Match, Move, Nat, Output, SetField, ct_state)
from controller.layers.base import Layer, TableDecl
from controller.layers.services import to_controller
from controller.spaces.names import lb_zone_name
from controller.spaces.registers import LOGICAL_SWITCH

PROTO = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP}
LB_ZONE = lb_zone_name("")  # one zone per tenant

# lb_in: one flow per VIP:port and switch; anything else misses (on, untouched).
PRIO_VIP = 100
# lb_dnat: a new connection to a VIP picks a backend; an established one (any VIP)
# passes on, already translated. Apart by ct_state; the per-VIP flow ranks first.
PRIO_NEW_TO_VIP = 100
PRIO_ESTABLISHED = 90
# lb_out: a backend on the client's switch is addressed directly, before the switch's
# catch-all to its router.
PRIO_BACKEND_HERE = 100
PRIO_VIA_ROUTER = 10
# lb_reply: one flow per backend address:port and switch; anything else misses (on).
PRIO_BACKEND_REPLY = 100


def _hosts(t):
    return frozenset().union(*t.members.values()) if t.members else frozenset()


class LbIngress(Layer):
    name = "lb"
    id = 12
    tables = (
        TableDecl("lb_in", frozenset({"reg13", "eth_type", "ip_proto", "ipv4_dst", "tcp_dst", "udp_dst"}),
                  successors=("lb_dnat",), miss="@next", doc="to a VIP: conntrack with NAT"),
        TableDecl("lb_dnat", frozenset({"reg13", "eth_type", "ct_state", "ip_proto", "ipv4_dst",
                                        "tcp_dst", "udp_dst"}),
                  successors=("lb_out",), doc="new: pick a backend (select group); established: on"),
        TableDecl("lb_out", frozenset({"reg13", "eth_type", "ipv4_dst"}), successors=("@next",),
                  doc="address the frame to the translated destination"),
    )

    def tenant_flows(self, t, out):
        tn = t.tenant
        if not tn.load_balancers:
            return
        zone = t.zone[LB_ZONE]
        for lb in tn.load_balancers:
            proto = PROTO[lb.protocol]
            to_vip = dict(eth_type=ETH_TYPE_IP, ip_proto=proto, ipv4_dst=str(lb.vip),
                          **{f"{lb.protocol}_dst": lb.port})
            live = lb.live
            buckets = tuple(
                (Ct(zone=zone, commit=True, nat=Nat("dst", str(tn.port(p).ip), port),
                    table=out.table("lb_out")),)
                for p, port in live)
            out_of = f" ({', '.join(f'{p}:{n}' for p, n in lb.down)} down)" if lb.down else ""
            if buckets:
                pick = (Group(t.group[lb.name], buckets),)
                what = f"lb {lb.name}: new connection -> one of {len(buckets)} backends{out_of}"
            else:  # every backend down: told at once (a reset), not left to time out
                pick = to_controller(t.tenant_id)
                what = (f"lb {lb.name}: every backend down{out_of}: new connection refused by the controller "
                        f"({'TCP reset' if lb.protocol == 'tcp' else 'ICMP port unreachable'})")
            for s in tn.switches:
                ls = LOGICAL_SWITCH.m(t.vni[s.name])
                where = t.members[s.name]
                out.to(where, out.flow(
                    "lb_in", PRIO_VIP, Match.of(**ls, **to_vip),
                    (Ct(zone=zone, nat=Nat(), table=out.table("lb_dnat")),),
                    rule=f"lb {lb.name}: {lb.vip}:{lb.port}/{lb.protocol}"))
                out.to(where, out.flow(
                    "lb_dnat", PRIO_NEW_TO_VIP, Match.of(**ls, **to_vip, ct_state=ct_state(trk=True, new=True)),
                    pick, rule=what, stat=(("lb", lb.name),)))
        for s in tn.switches:
            ls = LOGICAL_SWITCH.m(t.vni[s.name])
            where = t.members[s.name]
            ip = dict(eth_type=ETH_TYPE_IP)
            out.to(where, out.flow(
                "lb_dnat", PRIO_ESTABLISHED, Match.of(**ls, **ip, ct_state=ct_state(trk=True, est=True, rpl=False)),
                (out.goto("lb_out"),), rule="lb: established connection, already translated"))
            for q in tn.ports_on(s.name):
                out.to(where, out.flow("lb_out", PRIO_BACKEND_HERE, Match.of(**ls, **ip, ipv4_dst=str(q.ip)),
                                       (SetField("eth_dst", q.mac), out.goto("@next")),
                                       rule=f"lb: backend {q.name} is on this switch"))
            gw = tn.router_of(s.name)
            if gw is not None:
                out.to(where, out.flow("lb_out", PRIO_VIA_ROUTER, Match.of(**ls, **ip),
                                       (SetField("eth_dst", gw[1].mac), out.goto("@next")),
                                       rule=f"lb: backend off {s.name}, via router {gw[0].name}"))


class LbEgress(Layer):
    name = "lb_reply"
    id = 13
    tables = (
        TableDecl("lb_reply", frozenset({"reg13", "eth_type", "ip_proto", "ipv4_src", "tcp_src", "udp_src"}),
                  successors=("@next",), miss="@next",
                  doc="from a backend: put the VIP back as the source"),
    )

    def tenant_flows(self, t, out):
        tn = t.tenant
        if not tn.load_balancers:
            return
        zone = t.zone[LB_ZONE]
        seen = set()
        for lb in tn.load_balancers:
            for p, port in lb.backends:
                key = (lb.protocol, str(tn.port(p).ip), port)
                if key in seen:
                    continue
                seen.add(key)
                # Scoped by the switch the reply is delivered on (the client's: any of the
                # tenant's switches), so a twin tenant's backend at the same address and
                # port has flows of its own rather than the same (table, priority, match).
                for s in tn.switches:
                    out.to(_hosts(t), out.flow(
                        "lb_reply", PRIO_BACKEND_REPLY,
                        Match.of(**LOGICAL_SWITCH.m(t.vni[s.name]), eth_type=ETH_TYPE_IP,
                                 ip_proto=PROTO[lb.protocol], ipv4_src=key[1],
                                 **{f"{lb.protocol}_src": port}),
                        (Ct(zone=zone, nat=Nat(), table=out.table("@next")),),
                        rule=f"lb: replies from backend {p}:{port} (to switch {s.name})",
                        stat=(("lbReply",) + key,)))


# lb_monitor: a backend's answer to a health probe (to its switch's monitor address,
# from its own address and port: port security has checked both) goes to the
# controller; an ARP request for the monitor address nobody else answers is answered
# here. The flows are disjoint (protocol, addresses, ports); anything else misses (on).
PRIO_PROBE_REPLY = 100
ICMP_DEST_UNREACHABLE = 3
ARP_REQUEST, ARP_REPLY = 1, 2


def monitor_address(tn, switch: str):
    """(IP, MAC) health probes to backends on `switch` come from: the switch's router
    port if it has one, else its DHCP/DNS service address (`Tenant.service`). Either is
    an address no workload may have, answered by ARP on the switch."""
    svc = tn.service(switch)
    return svc.ip, svc.mac


class LbMonitor(Layer):
    name = "lb_monitor"
    id = 18
    tables = (
        TableDecl("lb_monitor", frozenset({"reg13", "eth_type", "ip_proto", "ipv4_src", "ipv4_dst", "tcp_src",
                                           "icmpv4_type", "arp_op", "arp_tpa"}),
                  successors=("@next",), miss="@next",
                  doc="a backend's answer to a health probe: to the controller"),
    )

    def tenant_flows(self, t, out):
        tn = t.tenant
        seen = set()
        for lb in tn.load_balancers:
            if lb.health_check is None:
                continue
            for pname, port in lb.backends:
                p = tn.port(pname)
                if p.host not in t.pa:  # its host is gone: no probe, no answer
                    continue
                mon_ip, mon_mac = monitor_address(tn, p.switch)
                ls = LOGICAL_SWITCH.m(t.vni[p.switch])
                ip = dict(eth_type=ETH_TYPE_IP, ipv4_src=str(p.ip), ipv4_dst=str(mon_ip))
                if lb.protocol == "tcp":
                    key = ("tcp", p.switch, str(p.ip), port)
                    match = Match.of(**ls, **ip, ip_proto=IPPROTO_TCP, tcp_src=port)
                    what = f"lb {lb.name}: backend {pname}:{port} answers a health probe (SYN-ACK or reset)"
                else:
                    key = ("icmp", p.switch, str(p.ip))
                    match = Match.of(**ls, **ip, ip_proto=IPPROTO_ICMP, icmpv4_type=ICMP_DEST_UNREACHABLE)
                    what = f"lb {lb.name}: backend {pname} says a UDP health probe's port is unreachable"
                if key not in seen:
                    seen.add(key)
                    out.to((p.host,), out.flow("lb_monitor", PRIO_PROBE_REPLY, match, to_controller(t.tenant_id),
                                               rule=what))
                s = tn.switch(p.switch)
                if tn.router_of(p.switch) is None and not s.dhcp and ("arp", p.switch, p.host) not in seen:
                    seen.add(("arp", p.switch, p.host))  # nobody else answers for the service address
                    out.to((p.host,), out.flow(
                        "lb_monitor", PRIO_PROBE_REPLY,
                        Match.of(**ls, eth_type=ETH_TYPE_ARP, arp_op=ARP_REQUEST, arp_tpa=str(mon_ip)),
                        (Move("eth_src", "eth_dst"), SetField("eth_src", mon_mac), SetField("arp_op", ARP_REPLY),
                         Move("arp_sha", "arp_tha"), Move("arp_spa", "arp_tpa"),
                         SetField("arp_sha", mon_mac), SetField("arp_spa", str(mon_ip)), Output(IN_PORT)),
                        rule=f"arp {mon_ip} is-at {mon_mac} (health probes on {p.switch})"))
