"""Answers the controller gives in place of a server: DHCP, DNS, and path-MTU errors.

A tenant port's DHCP and DNS requests, and packets too big for the overlay path, reach
the controller as packet-ins (whole Ethernet frames). Each function here turns such a
frame into the frame to packet-out back to the port, or None when there is nothing to say.

Pure: bytes in, bytes out, no I/O and no state. Scapy dissects the Ethernet and IP
headers and builds every reply; the DHCP and DNS payloads of requests are read from the
raw bytes, so that what untrusted tenants send never goes through scapy's payload
dissectors (which differ between scapy versions, and log on some malformed input).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from ipaddress import IPv4Network, ip_address
from socket import inet_aton, inet_ntoa
from typing import Callable

from scapy.config import conf
from scapy.layers.dhcp import BOOTP
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet, Raw

conf.verb = 0

DNS_TTL = 30
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"
BROADCAST_IP = "255.255.255.255"
DHCP_COOKIE = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
ICMP_ERRORS = frozenset({3, 4, 5, 11, 12})
ICMP_MAX = 576  # RFC 1812 s. 4.3.2.3
ICMPV6_MAX = 1280  # RFC 4443 s. 2.4(c)
DNS_UDP_MAX = 512  # RFC 1035 s. 4.2.1 (EDNS is not spoken)
RCODES = {"NOERROR": 0, "NXDOMAIN": 3, "REFUSED": 5}
_ZERO = bytes(4)


@dataclass(frozen=True)
class Lease:
    """What the tenant's spec says a port gets by DHCP, and who answers for it."""
    mac: str  # the port's MAC (the only chaddr we answer)
    ip: str  # its CA
    prefixlen: int
    server_ip: str  # server identifier = the address the answer comes from
    server_mac: str
    router: str | None  # default gateway (option 3), None if the switch has no router
    mtu: int  # option 26
    dns: str | None  # option 6
    domain: str | None  # option 15 (e.g. "blue.nvctl")
    lease_time: int  # option 51 (58 = lease/2, 59 = lease*7/8)
    hostname: str | None = None  # option 12


def _dissect(frame: bytes, l4: int = 0) -> Ether | None:
    """Ether/IP or Ether/IPv6 from the frame's headers only (plus `l4` bytes of what follows)."""
    etype, first = frame[12:14], frame[14] if len(frame) > 14 else 0
    if etype == b"\x08\x00" and first >> 4 == 4 and first & 15 >= 5:
        end = 14 + (first & 15) * 4
    elif etype == b"\x86\xdd" and first >> 4 == 6:
        end = 14 + 40
    else:
        return None
    if len(frame) < end + l4:
        return None
    eth = Ether(frame[:end + l4])
    return eth if isinstance(eth.payload, (IP, IPv6)) else None


def _udp(frame: bytes) -> tuple[Ether, bytes] | None:
    """An unfragmented UDP datagram: the dissected headers and the raw UDP payload."""
    eth = _dissect(frame, 8)
    if eth is None or not isinstance(eth.payload.payload, UDP):
        return None
    ip, udp = eth.payload, eth.payload.payload
    if isinstance(ip, IP) and (ip.frag or ip.flags.MF) or udp.len < 8:
        return None
    start = 14 + (ip.ihl * 4 if isinstance(ip, IP) else 40) + 8
    return eth, frame[start:start + udp.len - 8]


def _frame(*layers: Packet) -> bytes:
    """The layers stacked and built; add_payload, unlike `/`, copies nothing (much faster)."""
    for layer in layers[1:]:
        layers[0].add_payload(layer)
    return bytes(layers[0])


def _host(addr: str) -> bool:
    """Whether an address names one host (RFC 1812 s. 4.3.2.7, RFC 4443 s. 2.4(e))."""
    a = ip_address(addr)
    return not (a.is_unspecified or a.is_multicast or a.is_loopback
                or (a.version == 4 and a.is_reserved))  # 240/4, 255.255.255.255


def _unicast_mac(mac: str) -> bool:
    return not int(mac[:2], 16) & 1


def _mac(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", "").replace("-", ""))


def _u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def _dhcp_options(data: bytes) -> dict[int, bytes]:
    """Options by code; repeated codes are concatenated (RFC 3396)."""
    opts: dict[int, bytes] = {}
    i = 0
    while i + 1 < len(data) and data[i] != 255:
        if data[i] == 0:
            i += 1
            continue
        code, n = data[i], data[i + 1]
        opts[code] = opts.get(code, b"") + data[i + 2:i + 2 + n]
        i += 2 + n
    return opts


def dhcp_answer(frame: bytes, lease: Lease) -> bytes | None:
    """The OFFER, ACK or NAK answering a client's DHCP request for `lease`, or None."""
    parsed = _udp(frame)
    if parsed is None:
        return None
    eth, p = parsed
    if not isinstance(eth.payload, IP) or eth[UDP].dport != 67 or p[236:240] != DHCP_COOKIE:
        return None
    op, htype, hlen, _, xid, _, flags, ciaddr, _, _, giaddr, chaddr = struct.unpack_from(
        "!4BIHH4s4s4s4s16s", p)
    if op != 1 or htype != 1 or hlen != 6 or chaddr[:6] != _mac(lease.mac):
        return None
    opts = _dhcp_options(p[240:])
    kind = int.from_bytes(opts.get(53, b""), "big")
    server, ours = inet_aton(lease.server_ip), inet_aton(lease.ip)
    if kind == DISCOVER:
        reply, yiaddr, ciaddr = OFFER, ours, _ZERO
    elif kind == REQUEST:
        if opts.get(54, server) != server:
            return None  # the client chose another server
        wanted = opts.get(50) or (ciaddr if ciaddr != _ZERO else None)
        if wanted is None:
            return None
        reply, yiaddr = (ACK, ours) if wanted == ours else (NAK, _ZERO)
        ciaddr = ciaddr if reply == ACK else _ZERO
    elif kind == INFORM:  # RFC 2131 s. 4.3.5: no yiaddr, no lease times
        reply, yiaddr = ACK, _ZERO
    else:
        return None  # RELEASE, DECLINE, a server's message, or garbage

    out = [(53, bytes([reply])), (54, server)]
    if reply != NAK:
        net = IPv4Network(f"{lease.ip}/{lease.prefixlen}", strict=False)
        if kind != INFORM:
            t = lease.lease_time
            out += [(51, _u32(t)), (58, _u32(t // 2)), (59, _u32(t * 7 // 8))]
        out.append((1, net.netmask.packed))  # before the router (RFC 2132 s. 3.3)
        if lease.router:
            out.append((3, inet_aton(lease.router)))
        out.append((26, lease.mtu.to_bytes(2, "big")))
        if lease.dns:
            out.append((6, inet_aton(lease.dns)))
        if lease.domain:
            out.append((15, lease.domain.encode()))
        if lease.hostname:
            out.append((12, lease.hostname.encode()))
        out.append((28, net.broadcast_address.packed))
    raw = b"".join(bytes([code, len(value)]) + value for code, value in out)
    options = DHCP_COOKIE + (raw + b"\xff").ljust(60, b"\0")  # BOOTP of 300 bytes at least

    if reply == NAK:  # RFC 2131 s. 4.1: NAKs are broadcast, others per ciaddr/flag/yiaddr
        dst_ip, dst_mac = BROADCAST_IP, BROADCAST_MAC
    elif ciaddr != _ZERO:
        dst_ip, dst_mac = inet_ntoa(ciaddr), lease.mac
    elif flags & 0x8000 or yiaddr == _ZERO:
        dst_ip, dst_mac = BROADCAST_IP, BROADCAST_MAC
    else:
        dst_ip, dst_mac = inet_ntoa(yiaddr), lease.mac
    bootp = BOOTP(op=2, xid=xid, flags=flags, ciaddr=inet_ntoa(ciaddr), yiaddr=inet_ntoa(yiaddr),
                  giaddr=inet_ntoa(giaddr), chaddr=chaddr, options=options)
    return _frame(Ether(src=lease.server_mac, dst=dst_mac),
                  IP(src=lease.server_ip, dst=dst_ip, ttl=64), UDP(sport=67, dport=68), bootp)


def _question(msg: bytes) -> tuple[bytes, bytes, int, int] | None:
    """The first question: (its wire bytes, the dotted name, qtype, qclass), None if malformed."""
    labels, off = [], 12
    while off < len(msg) and msg[off]:
        n = msg[off]
        if n > 63 or off + 1 + n > len(msg) or b"." in msg[off + 1:off + 1 + n]:
            return None  # compression pointer (nothing to point at yet), overrun, odd label
        labels.append(msg[off + 1:off + 1 + n])
        off += 1 + n
    if off + 5 > len(msg) or off - 12 + 1 > 255:
        return None
    qtype, qclass = struct.unpack_from("!HH", msg, off + 1)
    return msg[12:off + 5], b".".join(labels), qtype, qclass


def dns_answer(frame: bytes, resolve: Callable[[str, int], tuple[str, list[str]]]) -> bytes | None:
    """The response to a DNS query sent to us, from `resolve(qname, qtype)`, or None."""
    parsed = _udp(frame)
    if parsed is None:
        return None
    eth, msg = parsed
    ip, udp = eth.payload, eth[UDP]
    if udp.dport != 53 or len(msg) < 12 or not (
            _host(ip.src) and _host(ip.dst) and _unicast_mac(eth.src) and _unicast_mac(eth.dst)):
        return None
    ident, flags, qdcount = struct.unpack_from("!HHH", msg)
    question = _question(msg) if qdcount else None
    if flags & 0xf800 or question is None:  # a response, or an opcode other than QUERY
        return None
    wire, name, qtype, qclass = question
    if qclass in (1, 255):  # IN, ANY
        rcode, addrs = resolve(name.lower().decode("latin-1"), qtype)
    else:
        rcode, addrs = "REFUSED", []
    if rcode not in RCODES:
        raise ValueError(f"resolve() gave rcode {rcode!r}, not one of {sorted(RCODES)}")
    version = {1: 4, 28: 6}.get(qtype) if rcode == "NOERROR" else None
    rdatas = [ip_address(a).packed for a in addrs if version and ip_address(a).version == version]
    fit = (DNS_UDP_MAX - 12 - len(wire)) // (12 + (4 if version == 4 else 16))
    truncated = len(rdatas) > fit
    rdatas = rdatas[:fit]
    head = (0x8000 | (rcode != "REFUSED") << 10 | truncated << 9 | flags & 0x0100  # QR AA TC RD
            | flags & 0x0010 | RCODES[rcode])  # CD copied (RFC 6840 s. 5.9)
    answers = b"".join(struct.pack("!HHHIH", 0xc00c, qtype, 1, DNS_TTL, len(r)) + r
                       for r in rdatas)  # the name: a pointer to the question's
    payload = struct.pack("!6H", ident, head, 1, len(rdatas), 0, 0) + wire + answers
    l3 = (IP(src=ip.dst, dst=ip.src, ttl=64) if isinstance(ip, IP)
          else IPv6(src=ip.dst, dst=ip.src, hlim=64))
    return _frame(Ether(src=eth.dst, dst=eth.src), l3, UDP(sport=53, dport=udp.sport),
                  Raw(payload))


def frag_needed(frame: bytes, mtu: int, src_mac: str, src_ip: str) -> bytes | None:
    """ICMP "fragmentation needed and DF set" (3/4) with next-hop `mtu`, or None."""
    eth = _dissect(frame)
    if eth is None or not isinstance(eth.payload, IP):
        return None
    ip, hlen = eth.payload, eth.payload.ihl * 4
    original = frame[14:14 + ip.len]
    if ip.frag or ip.len < hlen or ip.proto == 1 and (
            len(original) <= hlen or original[hlen] in ICMP_ERRORS):
        return None  # later fragment, bogus, or an ICMP error (or unknown ICMP)
    if not (_host(ip.src) and _host(ip.dst) and _unicast_mac(eth.src) and _unicast_mac(eth.dst)):
        return None  # RFC 1812 s. 4.3.2.7
    quote = original[:ICMP_MAX - 20 - 8]
    return _frame(Ether(src=src_mac, dst=eth.src), IP(src=src_ip, dst=ip.src, ttl=64),
                  ICMP(type=3, code=4, nexthopmtu=mtu), Raw(quote))


def _icmp6_error(packet: bytes) -> bool:
    """Whether an IPv6 packet carries an ICMPv6 error, or ICMPv6 cut off before its type."""
    nh, off = packet[6], 40
    while nh in (0, 43, 44, 60) and off + 8 <= len(packet):  # hop-by-hop, routing, frag, dst
        if nh == 44 and struct.unpack_from("!H", packet, off + 2)[0] >> 3:
            return False  # a later fragment: no upper-layer header here
        nh, off = packet[off], off + (8 if nh == 44 else (packet[off + 1] + 1) * 8)
    return nh == 58 and (off >= len(packet) or packet[off] < 128)


def packet_too_big(frame: bytes, mtu: int, src_mac: str, src_ip6: str) -> bytes | None:
    """ICMPv6 Packet Too Big (type 2) with `mtu`, or None."""
    eth = _dissect(frame)
    if eth is None or not isinstance(eth.payload, IPv6):
        return None
    ip6 = eth.payload
    original = frame[14:14 + 40 + ip6.plen] if ip6.plen else frame[14:]  # plen 0: jumbogram
    if not (_host(ip6.src) and _unicast_mac(eth.src)) or _icmp6_error(original):
        return None  # multicast destinations are fine (RFC 4443 s. 2.4(e.3))
    quote = original[:ICMPV6_MAX - 40 - 8]
    return _frame(Ether(src=src_mac, dst=eth.src), IPv6(src=src_ip6, dst=ip6.src, hlim=64),
                  ICMPv6PacketTooBig(mtu=mtu), Raw(quote))


# --- IPv6 neighbour discovery and echo ------------------------------------------------

ALL_NODES = "ff02::1"


def _icmp6(frame: bytes):
    """(eth, ipv6, icmpv6 bytes) of an ICMPv6 packet without extension headers, or None."""
    eth = _dissect(frame)
    if eth is None or not isinstance(eth.payload, IPv6) or eth.payload.nh != 58:
        return None
    body = frame[54:54 + eth.payload.plen]
    return (eth, eth.payload, body) if len(body) >= 4 else None


def nd_solicitation(frame: bytes) -> tuple[str, str] | None:
    """(target, source) of a neighbour solicitation (source "::" in duplicate address
    detection), or None."""
    got = _icmp6(frame)
    if got is None or got[2][0] != 135 or len(got[2]) < 24 or got[1].hlim != 255:
        return None  # RFC 4861 s. 7.1.1: hop limit 255, or it came through a router
    return str(ip_address(got[2][8:24])), got[1].src


def neighbor_advertisement(frame: bytes, target: str, mac: str, router: bool = False) -> bytes | None:
    """The NA answering a solicitation for `target` (which is at `mac`): solicited and
    unicast back to the asker; to all nodes, unsolicited, when the asker is doing
    duplicate address detection (from ::), which then fails as it should."""
    got = _icmp6(frame)
    if got is None:
        return None
    eth, ip6, _ = got
    dad = ip6.src == "::"
    flags = (0x80 if router else 0) | (0 if dad else 0x40) | 0x20  # R, S, O
    body = bytes([136, 0, 0, 0, flags, 0, 0, 0]) + ip_address(target).packed + bytes([2, 1]) + _mac(mac)
    dst, dst_mac = (ALL_NODES, "33:33:00:00:00:01") if dad else (ip6.src, eth.src)
    return _icmp6_frame(mac, dst_mac, target, dst, body)


def router_solicitation(frame: bytes) -> bool:
    got = _icmp6(frame)
    return got is not None and got[2][0] == 133 and got[1].hlim == 255


def router_advertisement(frame: bytes, src_mac: str, src_ll: str, prefix, mtu: int,
                         dns: str | None, lifetime: int = 9000) -> bytes | None:
    """RA from the router port's link-local address, for SLAAC (M=0, O=0): the prefix
    (autonomous and on-link when it is a /64), the switch's MTU, the source link-layer
    address and, where DNS answers, the name server (RDNSS, RFC 8106)."""
    got = _icmp6(frame)
    if got is None:
        return None
    eth, ip6, _ = got
    body = bytearray([134, 0, 0, 0, 64, 0]) + lifetime.to_bytes(2, "big") + bytes(8)  # hop limit 64
    body += bytes([1, 1]) + _mac(src_mac)  # source link-layer address
    body += bytes([5, 1, 0, 0]) + _u32(mtu)
    flags = 0x80 | (0x40 if prefix.prefixlen == 64 else 0)  # L, A
    body += bytes([3, 4, prefix.prefixlen, flags]) + _u32(86400) + _u32(14400) + bytes(4) + \
        prefix.network_address.packed
    if dns:
        body += bytes([25, 3, 0, 0]) + _u32(lifetime) + ip_address(dns).packed
    to_all = ip6.src == "::"
    dst, dst_mac = (ALL_NODES, "33:33:00:00:00:01") if to_all else (ip6.src, eth.src)
    return _icmp6_frame(src_mac, dst_mac, src_ll, dst, bytes(body))


def echo6_reply(frame: bytes, src_mac: str) -> bytes | None:
    """The answer to an ICMPv6 echo request, from the address it was sent to."""
    got = _icmp6(frame)
    if got is None or got[2][0] != 128 or not _host(got[1].src):
        return None
    eth, ip6, body = got
    return _icmp6_frame(src_mac, eth.src, ip6.dst, ip6.src, bytes([129, 0, 0, 0]) + body[4:], hlim=64)


def _icmp6_frame(src_mac: str, dst_mac: str, src: str, dst: str, body: bytes, hlim: int = 255) -> bytes:
    """Ethernet/IPv6/ICMPv6 with `body` (type first, checksum zero) and its checksum."""
    s, d = ip_address(src).packed, ip_address(dst).packed
    pseudo = s + d + len(body).to_bytes(4, "big") + bytes([0, 0, 0, 58])
    data = pseudo + body + (b"\0" if len(body) % 2 else b"")
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    body = body[:2] + (~total & 0xFFFF).to_bytes(2, "big") + body[4:]
    header = struct.pack("!IHBB", 6 << 28, len(body), 58, hlim) + s + d
    return _mac(dst_mac) + _mac(src_mac) + b"\x86\xdd" + header + body
