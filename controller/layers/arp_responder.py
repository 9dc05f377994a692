"""ARP responder: requests for a known address on the switch are answered at the
source host, so ARP never floods the overlay."""
from __future__ import annotations

from dataplane.match_action import ETH_TYPE_ARP, IN_PORT, Match, Move, Output, SetField
from controller.layers.base import Layer, TableDecl
from controller.spaces.registers import LOGICAL_SWITCH

ARP_REQUEST, ARP_REPLY = 1, 2
# arp_responder: one flow per known address (disjoint); anything else misses (on).
PRIO_ANSWER = 100


class ArpResponder(Layer):
    name = "arp_responder"
    id = 3
    tables = (
        TableDecl("arp_responder", frozenset({"reg13", "eth_type", "arp_op", "arp_tpa"}),
                  successors=("@next",), miss="next",
                  doc="answer ARP for known CAs; anything else goes on"),
    )

    sliced = True

    def port_inputs(self, t, p):
        return (p.name, t.vni[p.switch], str(p.ip), p.mac), {"members": t.members[p.switch]}

    def port_flows(self, content, out):
        name, vni, ip, mac = content
        out.put("members", self._answer(out, LOGICAL_SWITCH.m(vni), ip, mac, f"port {name}"))

    @staticmethod
    def _answer(out, ls, ip: str, mac: str, who: str):
        return out.flow(
            "arp_responder", PRIO_ANSWER,
            Match.of(**ls, eth_type=ETH_TYPE_ARP, arp_op=ARP_REQUEST, arp_tpa=ip),
            (Move("eth_src", "eth_dst"), SetField("eth_src", mac),
             SetField("arp_op", ARP_REPLY),
             Move("arp_sha", "arp_tha"), Move("arp_spa", "arp_tpa"),
             SetField("arp_sha", mac), SetField("arp_spa", ip),
             Output(IN_PORT)),
            rule=f"arp {ip} is-at {mac} ({who})")

    def tenant_flows(self, t, out):
        answers = [(rp.switch, rp.ip, rp.mac, f"router {r.name}")
                   for r in t.tenant.routers for rp in r.ports]
        answers += [(s.name, lb.vip, lb.mac, f"load balancer {lb.name}")
                    for lb in t.tenant.load_balancers for s in t.tenant.switches if lb.vip in s.cidr]
        for s in t.tenant.switches:  # where DHCP and DNS answer on a switch without a router
            svc = t.tenant.service(s.name)
            if s.dhcp and svc.router is None:
                answers.append((s.name, svc.ip, svc.mac, "DHCP and DNS service"))
        for switch, ip, mac, who in answers:
            out.to(t.members[switch], self._answer(out, LOGICAL_SWITCH.m(t.vni[switch]), str(ip), mac, who))
