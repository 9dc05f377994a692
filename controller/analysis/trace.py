"""`nvctl trace`: a packet's path through the compiled flows of every host it crosses.

The packet is described like an ovs-ofctl flow, relative to the sending port:

    tcp,nw_dst=10.0.1.20,tp_dst=5432      icmp,nw_dst=10.0.0.1      arp,arp_tpa=10.0.0.12
    tcp6,ipv6_dst=fd00:0:0:2::10,tp_dst=22                          icmp6,ipv6_dst=fd00:0:0:1::12

Whatever is not given is filled in as the port would send it: its own MAC and IP as
source, the destination's MAC on the same switch or the router's MAC off it, TTL 64,
source port 40000. The same strict simulator the tests use runs it through the
desired flows of each host, following VXLAN hops. With real=True each hop is also
traced by OVS itself (`ofproto/trace`) and the two fates are compared.
"""
from __future__ import annotations

import ipaddress
import re

from dataplane.match_action import (BROADCAST_MAC, ETH_TYPE_ARP, ETH_TYPE_IP, ETH_TYPE_IPV6, FIELDS,
                                    IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Fabric, Fate,
                                    cookie_layer, cookie_tenant)
from controller.spaces.ids import TUNNEL_OFPORT
from controller.compile.pipeline import LAYER_BY_ID, PIPELINE

SPEC_FIELDS = {  # spec key -> (our field, kind)
    "dl_src": "eth_src", "dl_dst": "eth_dst", "nw_src": "ipv4_src", "nw_dst": "ipv4_dst",
    "nw_ttl": "ip_ttl", "tp_src": "tp_src", "tp_dst": "tp_dst", "icmp_type": "icmpv4_type",
    "icmp_code": "icmpv4_code", "arp_tpa": "arp_tpa", "arp_spa": "arp_spa", "arp_op": "arp_op",
    "arp_sha": "arp_sha", "ipv6_src": "ipv6_src", "ipv6_dst": "ipv6_dst", "icmpv6_type": "icmpv6_type",
    "icmpv6_code": "icmpv6_code",
}
PROTOS = {"ip": None, "icmp": IPPROTO_ICMP, "tcp": IPPROTO_TCP, "udp": IPPROTO_UDP, "arp": None,
          "ipv6": None, "icmp6": IPPROTO_ICMPV6, "tcp6": IPPROTO_TCP, "udp6": IPPROTO_UDP}


class TraceError(ValueError):
    pass


def parse_spec(spec: str) -> tuple[str, dict]:
    """'tcp,nw_dst=10.0.1.20,tp_dst=5432' -> ('tcp', {'ipv4_dst': ..., 'tp_dst': 5432})."""
    proto, fields = "ip", {}
    for tok in filter(None, (t.strip() for t in spec.split(","))):
        if "=" not in tok:
            if tok not in PROTOS:
                raise TraceError(f"unknown protocol {tok!r} (use {', '.join(PROTOS)})")
            proto = tok
            continue
        k, v = (x.strip() for x in tok.split("=", 1))
        if k not in SPEC_FIELDS:
            raise TraceError(f"unknown field {k!r} (known: {', '.join(sorted(SPEC_FIELDS))})")
        f = SPEC_FIELDS[k]
        try:
            if f in ("ipv4_src", "ipv4_dst", "arp_tpa", "arp_spa"):
                v = str(ipaddress.IPv4Address(v))
            elif f in ("ipv6_src", "ipv6_dst"):
                v = str(ipaddress.IPv6Address(v))
            elif f in ("eth_src", "eth_dst", "arp_sha"):
                v = v.lower()
            else:
                v = int(v, 0)
        except ValueError:
            raise TraceError(f"{k}={v}: not a valid value") from None
        fields[f] = v
    return proto, fields


def build_packet(tenant, port, proto: str, fields: dict) -> dict:
    """The packet `port` of `tenant` would send for this spec."""
    pkt: dict = {"eth_src": port.mac}
    if proto == "arp":
        pkt.update(eth_dst=BROADCAST_MAC, eth_type=ETH_TYPE_ARP, arp_op=1, arp_sha=port.mac,
                   arp_spa=str(port.ip), arp_tha="00:00:00:00:00:00")
        if "arp_tpa" not in fields:
            raise TraceError("arp needs arp_tpa=IP")
        for k in ("arp_tpa", "arp_spa", "arp_op", "arp_sha", "eth_src", "eth_dst"):
            if k in fields:
                pkt[k] = fields[k]
        return pkt
    sw = tenant.switch(port.switch)
    v6 = proto in ("ipv6", "icmp6", "tcp6", "udp6") or "ipv6_dst" in fields
    if v6:
        dst = fields.get("ipv6_dst")
        if dst is None:
            raise TraceError("give the IPv6 destination as ipv6_dst=IP")
        if port.ip6 is None:
            raise TraceError(f"{port.name} has no IPv6 address (its switch {sw.name} has no cidr6)")
        pkt.update(eth_type=ETH_TYPE_IPV6, ipv6_src=str(port.ip6), ipv6_dst=dst, ip_ttl=64)
        on_link = sw.cidr6 is not None and ipaddress.IPv6Address(dst) in sw.cidr6
        addr_of = lambda p: str(p.ip6)  # noqa: E731
        proto = {"ipv6": "ip", "icmp6": "icmp", "tcp6": "tcp", "udp6": "udp"}.get(proto, proto)
    else:
        dst = fields.get("ipv4_dst")
        if dst is None:
            raise TraceError("give the destination as nw_dst=IP")
        pkt.update(eth_type=ETH_TYPE_IP, ipv4_src=str(port.ip), ipv4_dst=dst, ip_ttl=64)
        on_link = ipaddress.IPv4Address(dst) in sw.cidr
        addr_of = lambda p: str(p.ip)  # noqa: E731
    if "eth_dst" in fields:
        pkt["eth_dst"] = fields["eth_dst"]
    elif on_link:
        peer = next((p for p in tenant.ports if p.switch == sw.name and addr_of(p) == dst), None)
        vip = next((lb for lb in tenant.load_balancers if str(lb.vip) == dst), None)
        gw = tenant.router_of(sw.name)
        if peer is not None:
            pkt["eth_dst"] = peer.mac
        elif vip is not None:
            pkt["eth_dst"] = vip.mac
        elif gw is not None and dst in (str(gw[1].ip), str(gw[1].ip6)):
            pkt["eth_dst"] = gw[1].mac
        elif dst == str(sw.cidr.broadcast_address):
            pkt["eth_dst"] = BROADCAST_MAC
        else:
            raise TraceError(f"{dst} is on {sw.name} but no port has it (give dl_dst=MAC)")
    else:
        gw = tenant.router_of(sw.name)
        if gw is None:
            raise TraceError(f"{dst} is off switch {sw.name}, which has no router")
        pkt["eth_dst"] = gw[1].mac
    if proto != "ip":
        pkt["ip_proto"] = IPPROTO_ICMPV6 if v6 and proto == "icmp" else PROTOS[proto]
    if proto in ("tcp", "udp"):
        pkt[f"{proto}_src"] = fields.get("tp_src", 40000)
        pkt[f"{proto}_dst"] = fields.get("tp_dst", 80)
    elif proto == "icmp" and v6:
        pkt["icmpv6_type"] = fields.get("icmpv6_type", 128)
        pkt["icmpv6_code"] = fields.get("icmpv6_code", 0)
    elif proto == "icmp":
        pkt["icmpv4_type"] = fields.get("icmpv4_type", 8)
        pkt["icmpv4_code"] = fields.get("icmpv4_code", 0)
    for k, v in fields.items():
        if k not in ("tp_src", "tp_dst") and k in FIELDS:
            pkt[k] = v
    return pkt


def _flow_row(flow, tenants_by_id) -> dict:
    layer = LAYER_BY_ID.get(cookie_layer(flow.cookie))
    return {"priority": flow.priority, "layer": layer.name if layer else "?",
            "tenant": tenants_by_id.get(cookie_tenant(flow.cookie), ""), "rule": flow.rule,
            "actions": flow.body.split("actions=", 1)[1]}


def hop_outputs(fate: Fate, tunnel_port: int = TUNNEL_OFPORT) -> list:
    """What a host did with the packet, comparable with OVS: sorted ('port', n) and
    ('tunnel', dst, vni) items; empty = dropped."""
    out = []
    for e in fate.outputs:
        if e.port == tunnel_port:
            out.append(("tunnel", e.packet.get("tun_ipv4_dst"), e.packet.get("tunnel_id")))
        else:
            out.append(("port", e.port))
    return sorted(set(out), key=str)


def simulate(desired: dict, pas: dict, host: str, in_port: int, packet: dict, live: dict | None = None) -> Fabric:
    """Run `packet` from `in_port` on `host` through the desired flows of all hosts, as
    the first packet of a connection; the returned fabric holds every hop. `live`: the
    switches' port liveness (host -> {ofport: live}), which fast-failover groups follow."""
    fabric = Fabric(PIPELINE, {h: (desired[h].values(), pas[h]) for h in desired}, TUNNEL_OFPORT, live=live)
    fabric.send(host, in_port, packet)
    return fabric


# ---------------------------------------------------------------------------------------
# The same hop, traced by OVS itself
# ---------------------------------------------------------------------------------------

def ofctl_flow(in_port: int, packet: dict) -> str:
    """The packet as an ofproto/trace flow string."""
    from dataplane.match_action import Match
    skip = ("in_port", "metadata", "ct_state", "ct_zone")
    fields = {k: v for k, v in packet.items() if k in FIELDS and not k.startswith("reg") and k not in skip}
    return Match.of(in_port=in_port, **fields).ofctl()


def _top_level(actions: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in actions:
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        cur += ch
    if cur:
        out.append(cur)
    return [x.strip() for x in out if x.strip()]


def parse_datapath_actions(text: str, odp: dict, in_port: int, bridge: str = "br-int") -> list:
    """Every 'Datapath actions:' line of an ofproto/trace -> the same comparable items as
    hop_outputs(): ('port', ofport) on the bridge, ('tunnel', PA, VNI)."""
    out: set = set()

    def walk(actions: str) -> None:
        for act in _top_level(actions):
            if act.isdigit():
                b, ofport, _name = odp.get(int(act), ("?", -1, "?"))
                if b == bridge:
                    out.add(("port", ofport))
            elif act.startswith("tnl_push("):
                dst = re.search(r"ipv4\(src=[^,]+,dst=([0-9.]+)", act)
                vni = re.search(r"vni=(0x[0-9a-f]+)", act)
                out.add(("tunnel", dst.group(1) if dst else None, int(vni.group(1), 16) if vni else None))
            elif act.startswith("clone(") and act.endswith(")"):
                walk(act[len("clone("):-1])  # a copy of the packet with its own actions
            elif act.startswith("check_pkt_len(") and act.endswith(")"):
                # check_pkt_larger: the datapath holds both outcomes; a traced packet
                # (a flow, not a frame) is small, as the simulator's is: follow le(...)
                for part in _top_level(act[len("check_pkt_len("):-1]):
                    if part.startswith("le(") and part.endswith(")"):
                        walk(part[3:-1])

    for line in text.splitlines():
        if line.startswith("Datapath actions:"):
            walk(line.split(":", 1)[1])
    return sorted(out, key=str)


DATAPATH_HASH = "hash("  # a select group hashed in the datapath: ofproto/trace stops there


def real_hop(rundir: str, in_port: int, packet: dict) -> tuple[list, str]:
    """(outputs, raw trace) of OVS's own ofproto/trace for one hop."""
    from tep.ovs import OvsHost
    ovs = OvsHost(rundir)
    raw = ovs.trace(ofctl_flow(in_port, packet))
    return parse_datapath_actions(raw, ovs.odp_ports(), in_port), raw
