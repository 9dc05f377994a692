"""Packets the pipeline hands to the controller, answered from the tenants' specs.

Three kinds arrive by packet-in, each through its tenant's control-plane meter on its
host (see `controller.layers.services`):
  services table, UDP to 67   a DHCP request: answered with the port's CA, mask,
                              gateway, MTU, DNS server, domain and lease time
  services table, UDP to 53   a DNS query: `<port>.<tenant>.nvctl` from inside that
                              tenant only; another tenant's names are NXDOMAIN, any
                              other name REFUSED (nothing is forwarded)
  services table, ICMPv6      neighbour solicitations (answered for the addresses the
                              spec knows, never for the asker's own: its duplicate
                              address detection succeeds, and fails for another's
                              address), router solicitations (a SLAAC advertisement
                              from the router port), ping6 to the router
  tunnel_out table            a packet too big for its switch's MTU: ICMP
                              "fragmentation needed" (ICMPv6 "packet too big") with
                              that MTU, back to the sender
  lb_dnat table               a new connection to a load balancer whose backends
                              health checks all found down: a TCP reset (UDP: ICMP
                              port unreachable) from the VIP (controller.packetin.health)

The spec is the only state: a lease is what the port's YAML says, so a controller
restart or failover loses nothing, and two tenants with identical specs get their own
answers (the lookup is by VNI, which no two tenants share). Pure apart from the
clock-free counters: `Punt.handle` returns the frames to send and where.
"""
from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Mapping

from controller.layers.services import DNS_PORT, ICMPV6_ECHO_REQUEST, ND_RS
from dataplane.match_action import ETH_TYPE_IP, ETH_TYPE_IPV6, ND_NS
from controller.layers.port_security import DHCP_SERVER_PORT
from controller.packetin.health import refusal
from topology.model import DEFAULT_LEASE_SECONDS, DNS_SUFFIX, Port, Tenant

DNS_QTYPE_A, DNS_QTYPE_AAAA = 1, 28


class _Responder:
    """`controller.packetin.responder`, imported when first used: it builds its answers
    with scapy, whose import is about 0.4 s of a controller's start-up (a restart's
    switches wait for it). `warm()` imports it ahead of the first packet."""

    def __getattr__(self, name):
        return getattr(warm(), name)


def warm():
    """Import the responder (and scapy) now; returns the module."""
    global responder
    from controller.packetin import responder as module
    responder = module
    return module


responder = _Responder()


@dataclass
class _Facts:
    """One tenant's lookups, built when its first packet-in arrives."""
    tenant: Tenant
    by_key: dict  # (switch, port key) -> Port
    by_ofport: dict  # (host, ofport) -> Port
    by_name: dict  # port name -> Port


class Punt:
    def __init__(self, switch_mtus: Callable[[Tenant], Mapping[str, int]]):
        self.switch_mtus = switch_mtus
        self.by_vni: dict[int, tuple[str, str]] = {}  # VNI -> (tenant, switch)
        self.tenants: dict[str, tuple] = {}  # name -> (Tenant, Allocation)
        self._facts: dict[str, _Facts] = {}
        self.counts: Counter = Counter()  # (kind, outcome) -> packets

    # kept in step with the core's tenants --------------------------------------------
    def update(self, name: str, tenant: Tenant | None, alloc=None) -> None:
        old = self.tenants.pop(name, None)
        if old is not None:
            for vni in old[1].vni.values():
                if self.by_vni.get(vni, (None,))[0] == name:
                    del self.by_vni[vni]
        self._facts.pop(name, None)
        if tenant is not None:
            self.tenants[name] = (tenant, alloc)
            for sw, vni in alloc.vni.items():
                self.by_vni[vni] = (name, sw)

    def _facts_of(self, name: str) -> _Facts:
        f = self._facts.get(name)
        if f is None:
            t, a = self.tenants[name]
            f = _Facts(t, {(p.switch, a.port_key[p.name]): p for p in t.ports},
                       {(p.host, a.ofport[p.name]): p for p in t.ports}, {p.name: p for p in t.ports})
            self._facts[name] = f
        return f

    # packet-ins ----------------------------------------------------------------------
    def handle(self, host: str, table: str, regs: Mapping[str, int], in_port: int,
               data: bytes) -> list[tuple[int, bytes]]:
        """(ofport, frame) to send for one packet-in; [] when there is nothing to say."""
        where = self.by_vni.get(regs.get("reg13", -1))
        if where is None:
            self.counts[("unknown", "ignored")] += 1
            return []
        name, switch = where
        f = self._facts_of(name)
        if table == "tunnel_out":
            return self._too_big(f, switch, host, in_port, data)
        if table == "lb_dnat":
            reply = refusal(data)
            self.counts[("lb", "refused" if reply else "ignored")] += 1
            return [(in_port, reply)] if reply else []
        if table == "services" and _icmp6_type(data) is not None:
            return self._icmp6(f, switch, host, in_port, data)
        l4 = _udp_dst(data)
        if table == "services" and l4 == DHCP_SERVER_PORT:
            return self._dhcp(f, switch, regs.get("reg14", -1), in_port, data)
        if table == "services" and l4 == DNS_PORT:
            return self._dns(f, in_port, data)
        self.counts[("unknown", "ignored")] += 1
        return []

    def _dhcp(self, f: _Facts, switch: str, key: int, in_port: int, data: bytes):
        p = f.by_key.get((switch, key))
        if p is None or data[6:12] != _mac_bytes(p.mac):
            self.counts[("dhcp", "not its port")] += 1
            return []
        reply = responder.dhcp_answer(data, self.lease(f.tenant, p))
        self.counts[("dhcp", "answered" if reply else "ignored")] += 1
        return [(in_port, reply)] if reply else []

    def lease(self, t: Tenant, p: Port) -> "responder.Lease":
        """What DHCP gives port p: all of it from the spec."""
        sw = t.switch(p.switch)
        svc = t.service(p.switch)
        return responder.Lease(
            mac=p.mac, ip=str(p.ip), prefixlen=sw.cidr.prefixlen, server_ip=str(svc.ip), server_mac=svc.mac,
            router=str(svc.router) if svc.router else None, mtu=self.switch_mtus(t)[p.switch],
            dns=str(svc.ip), domain=t.domain, lease_time=DEFAULT_LEASE_SECONDS, hostname=p.name)

    def _dns(self, f: _Facts, in_port: int, data: bytes):
        reply = responder.dns_answer(data, lambda q, qt: self.resolve(f, q, qt))
        self.counts[("dns", "answered" if reply else "ignored")] += 1
        return [(in_port, reply)] if reply else []

    @staticmethod
    def resolve(f: _Facts, qname: str, qtype: int) -> tuple[str, list[str]]:
        """A port's name in its tenant's domain; nothing of other tenants."""
        qname = qname.lower().rstrip(".")
        if not (qname == DNS_SUFFIX or qname.endswith("." + DNS_SUFFIX)):
            return "REFUSED", []
        own = f.tenant.domain
        if qname == own:
            return "NOERROR", []
        if not qname.endswith("." + own):
            return "NXDOMAIN", []  # another tenant's names, or none: the same answer
        p = f.by_name.get(qname[: -len(own) - 1])
        if p is None:
            return "NXDOMAIN", []
        if qtype == DNS_QTYPE_A:
            return "NOERROR", [str(p.ip)]
        if qtype == DNS_QTYPE_AAAA and p.ip6 is not None:
            return "NOERROR", [str(p.ip6)]
        return "NOERROR", []  # the name exists; it has no address of this type

    def _icmp6(self, f: _Facts, switch: str, host: str, in_port: int, data: bytes):
        kind = _icmp6_type(data)
        t = f.tenant
        rr = t.router_of(switch)
        rp = rr[1] if rr is not None and rr[1].ip6 is not None else None
        out = None
        if kind == ND_NS:
            ns = responder.nd_solicitation(data)
            if ns is not None:
                asker = f.by_ofport.get((host, in_port))
                owner = self._owner(t, switch, ns[0])
                if owner is not None and owner[0] is not asker:  # never for the asker's own address
                    out = responder.neighbor_advertisement(data, ns[0], owner[1], router=owner[0] is None)
            what = "nd"
        elif kind == ND_RS and rp is not None and responder.router_solicitation(data):
            sw = t.switch(switch)
            out = responder.router_advertisement(data, rp.mac, str(rp.link_local), sw.cidr6,
                                                 self.switch_mtus(t)[switch], str(rp.ip6) if sw.dhcp else None)
            what = "ra"
        elif kind == ICMPV6_ECHO_REQUEST and rp is not None:
            out = responder.echo6_reply(data, rp.mac)
            what = "ping6"
        else:
            what = "icmp6"
        self.counts[(what, "answered" if out else "ignored")] += 1
        return [(in_port, out)] if out else []

    @staticmethod
    def _owner(t: Tenant, switch: str, target: str):
        """(port or None for the router, MAC) of whoever has IPv6 address `target` on the switch."""
        a = ipaddress.IPv6Address(target)
        for p in t.ports_on(switch):
            if p.ip6 == a or (p.ip6 is not None and p.link_local == a):
                return p, p.mac
        rr = t.router_of(switch)
        if rr is not None and rr[1].ip6 is not None and a in (rr[1].ip6, rr[1].link_local):
            return None, rr[1].mac
        return None

    def _too_big(self, f: _Facts, switch: str, host: str, in_port: int, data: bytes):
        sender = f.by_ofport.get((host, in_port))
        if sender is None:
            self.counts[("pmtu", "not from a port")] += 1
            return []
        mtu = self.switch_mtus(f.tenant)[switch]
        rr = f.tenant.router_of(sender.switch)
        v6 = data[12:14] == b"\x86\xdd"
        if rr is not None and (not v6 or rr[1].ip6 is not None):  # the sender's gateway speaks for the path
            src_mac, src_ip = rr[1].mac, str(rr[1].ip6 if v6 else rr[1].ip)
        else:  # switched: the destination's own address
            src_mac, src_ip = _fmt_mac(data[0:6]), _ip_dst(data)
        build = responder.packet_too_big if v6 else responder.frag_needed
        reply = build(data, mtu, src_mac, src_ip)
        if reply is None:
            self.counts[("pmtu", "ignored")] += 1
            return []
        self.counts[("pmtu", "answered")] += 1
        return [(in_port, _mac_bytes(sender.mac) + reply[6:])]  # to the sender, whoever rewrote eth


def _udp_dst(data: bytes) -> int | None:
    if len(data) < 34:
        return None
    eth_type = struct.unpack_from("!H", data, 12)[0]
    if eth_type == ETH_TYPE_IPV6:
        return struct.unpack_from("!H", data, 56)[0] if len(data) >= 58 and data[20] == 17 else None
    if eth_type != ETH_TYPE_IP or data[23] != 17:
        return None
    ihl = (data[14] & 0x0F) * 4
    if len(data) < 14 + ihl + 4:
        return None
    return struct.unpack_from("!H", data, 14 + ihl + 2)[0]


def _icmp6_type(data: bytes) -> int | None:
    """The ICMPv6 type of a packet without extension headers, else None."""
    if len(data) < 55 or data[12:14] != b"\x86\xdd" or data[20] != 58:
        return None
    return data[54]


def _ip_dst(data: bytes) -> str:
    if data[12:14] == b"\x86\xdd":
        return str(ipaddress.IPv6Address(data[38:54]))
    return ".".join(str(b) for b in data[30:34])


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def _fmt_mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)
