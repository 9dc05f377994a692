"""The controller's DHCP, DNS and path-MTU answers, read back with scapy field by field."""
import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6EchoRequest, ICMPv6PacketTooBig, IPv6, \
    IPv6ExtHdrDestOpt, IPv6ExtHdrFragment
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from controller.packetin.responder import DNS_TTL, Lease, dhcp_answer, dns_answer, frag_needed, \
    packet_too_big

VM_MAC, SRV_MAC = "02:00:00:00:00:0b", "02:00:00:00:00:01"
LEASE = Lease(mac=VM_MAC, ip="10.0.4.11", prefixlen=22, server_ip="10.0.4.1", server_mac=SRV_MAC,
              router="10.0.4.1", mtu=1450, dns="10.0.4.1", domain="blue.nvctl", lease_time=3600,
              hostname="vm1")
BCAST_MAC = "ff:ff:ff:ff:ff:ff"


def checksums_ok(frame: bytes) -> bool:
    """Every IP/UDP/ICMP/ICMPv6 checksum equals the one scapy computes with the field deleted."""
    for layer, field in ((IP, "chksum"), (UDP, "chksum"), (ICMP, "chksum"),
                         (ICMPv6PacketTooBig, "cksum")):
        pkt = Ether(frame)
        if layer not in pkt:
            continue
        sent = getattr(pkt[layer], field)
        delattr(pkt[layer], field)
        if getattr(Ether(bytes(pkt))[layer], field) != sent:
            return False
    return True


# --- DHCP -------------------------------------------------------------------------------

def dhcp(kind, chaddr=VM_MAC, ciaddr="0.0.0.0", flags=0, giaddr="0.0.0.0", options=(), op=1):
    src = ciaddr if ciaddr != "0.0.0.0" else "0.0.0.0"
    dst = "10.0.4.1" if ciaddr != "0.0.0.0" else "255.255.255.255"
    return bytes(Ether(src=chaddr, dst=BCAST_MAC) / IP(src=src, dst=dst) / UDP(sport=68, dport=67)
                 / BOOTP(op=op, xid=0x1234abcd, flags=flags, ciaddr=ciaddr, giaddr=giaddr,
                         chaddr=bytes.fromhex(chaddr.replace(":", "")) + bytes(10))
                 / DHCP(options=[("message-type", kind), *options, "end"]))


def opts(pkt):
    return {o[0]: o[1] for o in pkt[DHCP].options if isinstance(o, tuple)}


def answer(request, lease=LEASE):
    reply = dhcp_answer(request, lease)
    assert reply is not None
    assert checksums_ok(reply)
    pkt = Ether(reply)
    assert (pkt.src, pkt[IP].src, pkt[IP].ttl) == (SRV_MAC, "10.0.4.1", 64)
    assert (pkt[UDP].sport, pkt[UDP].dport) == (67, 68)
    b = pkt[BOOTP]
    assert (b.op, b.htype, b.hlen, b.xid) == (2, 1, 6, 0x1234abcd)
    assert b.chaddr[:6] == bytes.fromhex("02000000000b")
    assert len(pkt[UDP]) - 8 >= 300  # BOOTP minimum (RFC 1542)
    return pkt


FULL = {"server_id": "10.0.4.1", "subnet_mask": "255.255.252.0", "router": "10.0.4.1",
        "interface-mtu": 1450, "name_server": "10.0.4.1", "domain": b"blue.nvctl",
        "hostname": b"vm1", "broadcast_address": "10.0.7.255"}
TIMES = {"lease_time": 3600, "renewal_time": 1800, "rebinding_time": 3150}


def test_discover_gets_an_offer_unicast_to_yiaddr_with_every_option():
    pkt = answer(dhcp("discover", options=[("param_req_list", [1, 3])]))  # 55 drops nothing
    assert opts(pkt) == {"message-type": 2, **FULL, **TIMES}
    assert [o[0] for o in pkt[DHCP].options[:3]] == ["message-type", "server_id", "lease_time"]
    assert (pkt.dst, pkt[IP].dst) == (VM_MAC, "10.0.4.11")
    b = pkt[BOOTP]
    assert (b.yiaddr, b.ciaddr, b.giaddr, b.flags) == ("10.0.4.11", "0.0.0.0", "0.0.0.0", 0)


def test_broadcast_flag_makes_the_offer_broadcast_and_is_copied():
    pkt = answer(dhcp("discover", flags=0x8000, giaddr="10.9.9.9"))
    assert (pkt.dst, pkt[IP].dst) == (BCAST_MAC, "255.255.255.255")
    assert (pkt[BOOTP].flags, pkt[BOOTP].giaddr, pkt[BOOTP].yiaddr) == (0x8000, "10.9.9.9",
                                                                        "10.0.4.11")


def test_selecting_request_for_our_address_is_acked():
    pkt = answer(dhcp("request", options=[("requested_addr", "10.0.4.11"),
                                          ("server_id", "10.0.4.1")]))
    assert opts(pkt) == {"message-type": 5, **FULL, **TIMES}
    assert (pkt.dst, pkt[IP].dst, pkt[BOOTP].yiaddr) == (VM_MAC, "10.0.4.11", "10.0.4.11")


def test_renewing_request_is_acked_unicast_to_ciaddr_even_with_the_broadcast_flag():
    pkt = answer(dhcp("request", ciaddr="10.0.4.11", flags=0x8000))
    assert opts(pkt)["message-type"] == 5
    assert (pkt.dst, pkt[IP].dst) == (VM_MAC, "10.0.4.11")
    assert (pkt[BOOTP].ciaddr, pkt[BOOTP].yiaddr) == ("10.0.4.11", "10.0.4.11")


@pytest.mark.parametrize("options", [
    [("requested_addr", "10.0.4.99")],  # INIT-REBOOT with a stale address
    [("requested_addr", "10.0.4.99"), ("server_id", "10.0.4.1")],
])
def test_request_for_another_address_is_naked_by_broadcast(options):
    pkt = answer(dhcp("request", options=options))
    assert opts(pkt) == {"message-type": 6, "server_id": "10.0.4.1"}
    assert (pkt.dst, pkt[IP].dst) == (BCAST_MAC, "255.255.255.255")
    assert (pkt[BOOTP].yiaddr, pkt[BOOTP].ciaddr) == ("0.0.0.0", "0.0.0.0")


def test_renewing_a_foreign_ciaddr_is_naked_by_broadcast():
    pkt = answer(dhcp("request", ciaddr="10.0.4.99"))
    assert opts(pkt)["message-type"] == 6
    assert (pkt.dst, pkt[IP].dst, pkt[BOOTP].ciaddr) == (BCAST_MAC, "255.255.255.255", "0.0.0.0")


def test_inform_gets_an_ack_without_yiaddr_or_lease_times_unicast_to_ciaddr():
    pkt = answer(dhcp("inform", ciaddr="10.0.4.11"))
    assert opts(pkt) == {"message-type": 5, **FULL}
    assert (pkt.dst, pkt[IP].dst) == (VM_MAC, "10.0.4.11")
    assert (pkt[BOOTP].yiaddr, pkt[BOOTP].ciaddr) == ("0.0.0.0", "10.0.4.11")


def test_options_the_switch_lacks_are_not_invented():
    bare = Lease(mac=VM_MAC, ip="192.168.7.5", prefixlen=24, server_ip="192.168.7.254",
                 server_mac=SRV_MAC, router=None, mtu=1500, dns=None, domain=None,
                 lease_time=86400)
    request = dhcp("discover", options=[("param_req_list", [1, 3, 6, 12, 15, 26, 28])])
    o = opts(Ether(dhcp_answer(request, bare)))
    assert o == {"message-type": 2, "server_id": "192.168.7.254", "lease_time": 86400,
                 "renewal_time": 43200, "rebinding_time": 75600, "subnet_mask": "255.255.255.0",
                 "interface-mtu": 1500, "broadcast_address": "192.168.7.255"}


@pytest.mark.parametrize("request_", [
    dhcp("request", options=[("requested_addr", "10.0.4.11"), ("server_id", "10.0.4.254")]),
    dhcp("request", options=[("requested_addr", "10.0.4.99"), ("server_id", "10.0.4.254")]),
    dhcp("request"),  # neither a requested address nor ciaddr
    dhcp("discover", chaddr="02:00:00:00:00:0c"),
    dhcp("request", chaddr="02:00:00:00:00:0c", options=[("requested_addr", "10.0.4.11")]),
    dhcp("release", ciaddr="10.0.4.11"),
    dhcp("decline", options=[("requested_addr", "10.0.4.11")]),
    dhcp("offer", op=2),  # a rogue server's message
    dhcp("discover")[:-60],  # truncated
    bytes(Ether(src=VM_MAC) / IP() / UDP(sport=68, dport=67) / Raw(bytes(300))),  # no cookie
    bytes(Ether(src=VM_MAC) / IP() / UDP(sport=68, dport=68) / Raw(dhcp("discover")[42:])),
    bytes(Ether(src=VM_MAC) / ARP()),
    b"", b"\x00" * 20,
], ids=["other-server", "other-server-other-addr", "no-address", "foreign-chaddr",
        "foreign-request", "release", "decline", "bootreply", "truncated", "no-cookie",
        "wrong-port", "arp", "empty", "garbage"])
def test_no_dhcp_answer(request_):
    assert dhcp_answer(request_, LEASE) is None


# --- DNS --------------------------------------------------------------------------------

CLIENT_MAC, CLIENT_IP, CLIENT_IP6 = "02:00:00:00:00:0b", "10.0.4.11", "fd00::b"
DNS_IP, DNS_IP6 = "10.0.4.1", "fd00::1"
ZONE = {("www.blue.nvctl", 1): ["10.0.4.20", "10.0.4.21"], ("www.blue.nvctl", 28): ["fd00::20"]}


def resolver(calls=None):
    def resolve(qname, qtype):
        if calls is not None:
            calls.append((qname, qtype))
        if qname.endswith(".example"):
            return "REFUSED", []
        if qname != "www.blue.nvctl":
            return "NXDOMAIN", []
        return "NOERROR", ZONE.get((qname, qtype), [])
    return resolve


def query(dns, v6=False, sport=40000, dport=53):
    l3 = IPv6(src=CLIENT_IP6, dst=DNS_IP6) if v6 else IP(src=CLIENT_IP, dst=DNS_IP)
    payload = dns if isinstance(dns, bytes) else bytes(dns)
    return bytes(Ether(src=CLIENT_MAC, dst=SRV_MAC) / l3 / UDP(sport=sport, dport=dport)
                 / Raw(payload))


def records(field):
    """DNS sections as a list, whether scapy gives a list (>= 2.6) or a chain (2.5)."""
    if field is None or isinstance(field, list):
        return field or []
    out = []
    while field and not isinstance(field, Raw):
        out.append(field)
        field = field.payload
    return out


def reply_of(frame, resolve=None):
    reply = dns_answer(frame, resolve or resolver())
    assert reply is not None
    assert checksums_ok(reply)
    return Ether(reply)


def test_a_query_is_answered_from_where_it_was_sent_with_the_question_echoed():
    calls = []
    pkt = reply_of(query(DNS(id=0xbeef, rd=1, qd=DNSQR(qname="WWW.Blue.nvctl.", qtype=1))),
                   resolver(calls))
    assert calls == [("www.blue.nvctl", 1)]
    assert (pkt.src, pkt.dst, pkt[IP].src, pkt[IP].dst, pkt[IP].ttl) == (
        SRV_MAC, CLIENT_MAC, DNS_IP, CLIENT_IP, 64)
    assert (pkt[UDP].sport, pkt[UDP].dport) == (53, 40000)
    d = pkt[DNS]
    assert (d.id, d.qr, d.opcode, d.aa, d.tc, d.rd, d.ra, d.rcode) == (0xbeef, 1, 0, 1, 0, 1, 0, 0)
    (q,) = records(d.qd)
    assert (q.qname, q.qtype, q.qclass) == (b"WWW.Blue.nvctl.", 1, 1)  # case kept (0x20)
    answers = records(d.an)
    assert d.ancount == 2 and [(a.rrname, a.type, a.rclass, a.ttl, a.rdata) for a in answers] == [
        (b"WWW.Blue.nvctl.", 1, 1, DNS_TTL, "10.0.4.20"),
        (b"WWW.Blue.nvctl.", 1, 1, DNS_TTL, "10.0.4.21")]
    assert DNS_TTL == 30


def test_aaaa_query_over_ipv6_is_answered_over_ipv6():
    pkt = reply_of(query(DNS(id=7, rd=0, qd=DNSQR(qname="www.blue.nvctl", qtype=28)), v6=True,
                         sport=5353))
    assert (pkt[IPv6].src, pkt[IPv6].dst, pkt[IPv6].hlim) == (DNS_IP6, CLIENT_IP6, 64)
    assert (pkt[UDP].sport, pkt[UDP].dport) == (53, 5353)
    pkt6 = pkt.copy()
    del pkt6[UDP].chksum
    assert Ether(bytes(pkt6))[UDP].chksum == pkt[UDP].chksum != 0
    d = pkt[DNS]
    assert (d.id, d.rd, d.aa, d.rcode, d.ancount) == (7, 0, 1, 0, 1)
    (a,) = records(d.an)
    assert (a.type, a.ttl, a.rdata) == (28, 30, "fd00::20")


def test_nxdomain_refused_and_nodata():
    nx = reply_of(query(DNS(id=1, rd=1, qd=DNSQR(qname="nope.blue.nvctl"))))[DNS]
    assert (nx.qr, nx.aa, nx.rcode, nx.ancount) == (1, 1, 3, 0)
    refused = reply_of(query(DNS(id=2, rd=1, qd=DNSQR(qname="www.example"))))[DNS]
    assert (refused.qr, refused.aa, refused.rcode, refused.ancount, refused.rd) == (1, 0, 5, 0, 1)
    mx = reply_of(query(DNS(id=3, qd=DNSQR(qname="www.blue.nvctl", qtype=15))))[DNS]
    assert (mx.rcode, mx.aa, mx.ancount, records(mx.qd)[0].qtype) == (0, 1, 0, 15)


def test_checking_disabled_is_copied():
    d = reply_of(query(DNS(id=6, cd=1, qd=DNSQR(qname="www.blue.nvctl"))))[DNS]
    assert (d.cd, d.ad, d.z) == (1, 0, 0)


def test_only_the_first_question_is_answered():
    calls = []
    two = DNS(id=9, qd=DNSQR(qname="www.blue.nvctl", qtype=28) / DNSQR(qname="x.blue.nvctl"),
              qdcount=2)
    d = reply_of(query(two), resolver(calls))[DNS]
    assert calls == [("www.blue.nvctl", 28)]
    assert d.qdcount == 1 and [q.qname for q in records(d.qd)] == [b"www.blue.nvctl."]
    assert [a.rdata for a in records(d.an)] == ["fd00::20"]


def test_non_internet_class_is_refused_without_asking():
    calls = []
    d = reply_of(query(DNS(id=4, qd=DNSQR(qname="version.bind", qtype=16, qclass=3))),
                 resolver(calls))[DNS]
    assert calls == [] and (d.rcode, d.aa) == (5, 0)


def test_too_many_addresses_are_truncated_to_512_bytes():
    many = lambda qname, qtype: ("NOERROR", [f"10.1.{i // 250}.{i % 250}" for i in range(100)])
    reply = dns_answer(query(DNS(id=5, qd=DNSQR(qname="big.blue.nvctl"))), many)
    d = Ether(reply)[DNS]
    assert len(bytes(Ether(reply)[UDP].payload)) <= 512
    assert d.tc == 1 and 20 < d.ancount == len(records(d.an)) < 100


def test_resolver_giving_an_unknown_rcode_is_a_bug():
    with pytest.raises(ValueError):
        dns_answer(query(DNS(qd=DNSQR(qname="a"))), lambda q, t: ("SERVFAIL", []))


GOOD = bytes(DNS(id=7, rd=1, qd=DNSQR(qname="www.blue.nvctl")))


@pytest.mark.parametrize("frame", [
    query(DNS(id=1, qr=1, qd=DNSQR(qname="www.blue.nvctl"))),  # a response
    query(DNS(id=1, opcode=2, qd=DNSQR(qname="www.blue.nvctl"))),  # STATUS, not QUERY
    query(GOOD[:4] + b"\x00\x00" + GOOD[6:12]),  # qdcount 0
    query(GOOD[:5]),  # header cut short
    query(GOOD[:-2]),  # question cut short
    query(GOOD[:12] + b"\x3fabc\x00\x00\x01\x00\x01"),  # label longer than the packet
    query(GOOD[:12] + b"\xc0\x0c\x00\x01\x00\x01"),  # pointer loop
    query(GOOD, dport=5353),
    bytes(Ether(src=CLIENT_MAC, dst=BCAST_MAC) / IP(src=CLIENT_IP, dst="255.255.255.255")
          / UDP(sport=1000, dport=53) / Raw(GOOD)),
    bytes(Ether(src=CLIENT_MAC, dst=SRV_MAC) / IP(src=CLIENT_IP, dst=DNS_IP)
          / TCP(sport=1000, dport=53) / Raw(GOOD)),
    b"\x00" * 13,
], ids=["response", "opcode", "no-question", "short-header", "short-question", "overrun",
        "pointer", "not-53", "broadcast", "tcp", "garbage"])
def test_no_dns_answer(frame):
    assert dns_answer(frame, resolver()) is None


# --- ICMP fragmentation needed / ICMPv6 packet too big ---------------------------------

HOST_MAC, ROUTER_MAC, ROUTER_IP, ROUTER_IP6 = "02:00:00:00:00:0b", "02:00:00:00:00:01", \
    "10.0.4.1", "fd00::1"


def big4(src="10.0.4.11", dst="10.0.8.5", size=1500, **ip):
    ip = {"flags": "DF", **ip}
    pkt = IP(src=src, dst=dst, **ip) / TCP(sport=1, dport=2) / Raw(b"x" * (size - 40))
    return bytes(Ether(src=HOST_MAC, dst=ROUTER_MAC) / pkt)


def test_frag_needed_quotes_up_to_576_bytes_with_the_next_hop_mtu():
    frame = big4()
    pkt = Ether(frag_needed(frame, 1400, ROUTER_MAC, ROUTER_IP))
    assert (pkt.src, pkt.dst) == (ROUTER_MAC, HOST_MAC)
    assert (pkt[IP].src, pkt[IP].dst, pkt[IP].ttl, pkt[IP].proto) == (ROUTER_IP, "10.0.4.11", 64, 1)
    assert (pkt[ICMP].type, pkt[ICMP].code, pkt[ICMP].nexthopmtu) == (3, 4, 1400)
    assert pkt[IP].len == len(pkt) - 14 == 576
    assert bytes(pkt[ICMP])[8:] == frame[14:14 + 548]  # the original header and what follows
    assert bytes(pkt[ICMP])[4:8] == b"\x00\x00" + (1400).to_bytes(2, "big")  # unused, MTU
    assert checksums_ok(bytes(pkt))


def test_frag_needed_quotes_a_small_datagram_whole_without_ethernet_padding():
    frame = bytes(Ether(src=HOST_MAC, dst=ROUTER_MAC) / IP(src="10.0.4.11", dst="10.0.8.5")
                  / UDP(sport=1, dport=2) / Raw(b"hi")) + bytes(16)  # padded
    pkt = Ether(frag_needed(frame, 1280, ROUTER_MAC, ROUTER_IP))
    assert bytes(pkt[ICMP])[8:] == frame[14:14 + 30]
    assert checksums_ok(bytes(pkt))


@pytest.mark.parametrize("frame", [
    big4(frag=0, flags="MF"),  # a first fragment
    bytes(Ether(src=HOST_MAC, dst=ROUTER_MAC) / IP(src="10.0.4.11", dst="10.0.8.5", flags="DF")
          / ICMP(type=8) / Raw(bytes(1472))),  # echo request: not an error
])
def test_frag_needed_is_sent_for(frame):
    assert frag_needed(frame, 1400, ROUTER_MAC, ROUTER_IP) is not None


def icmp_error(kind):
    return bytes(Ether(src=HOST_MAC, dst=ROUTER_MAC) / IP(src="10.0.4.11", dst="10.0.8.5")
                 / ICMP(type=kind) / Raw(bytes(1400)))


@pytest.mark.parametrize("frame", [
    *(icmp_error(t) for t in (3, 4, 5, 11, 12)),
    big4(frag=185),  # a later fragment
    big4(src="0.0.0.0"), big4(src="224.0.0.5"), big4(src="255.255.255.255"),
    big4(dst="239.1.1.1"),
    bytes(Ether(src=HOST_MAC, dst=ROUTER_MAC) / IPv6() / Raw(bytes(1400))),
    bytes(Ether(src=HOST_MAC) / ARP()),
    big4()[:20], b"",
], ids=["unreach", "quench", "redirect", "time-exceeded", "param-problem", "later-fragment",
        "src-zero", "src-multicast", "src-broadcast", "dst-multicast", "ipv6", "arp", "short",
        "empty"])
def test_no_frag_needed(frame):
    assert frag_needed(frame, 1400, ROUTER_MAC, ROUTER_IP) is None


def big6(src="fd00::b", dst="fd00:1::5", size=1500, upper=None):
    upper = upper if upper is not None else UDP(sport=1, dport=2)
    pkt = IPv6(src=src, dst=dst) / upper
    pkt = pkt / Raw(b"y" * (size - len(pkt)))
    return bytes(Ether(src=HOST_MAC, dst=ROUTER_MAC) / pkt)


def test_packet_too_big_quotes_up_to_1280_bytes_with_the_mtu():
    frame = big6()
    pkt = Ether(packet_too_big(frame, 1400, ROUTER_MAC, ROUTER_IP6))
    assert (pkt.src, pkt.dst) == (ROUTER_MAC, HOST_MAC)
    assert (pkt[IPv6].src, pkt[IPv6].dst, pkt[IPv6].hlim) == (ROUTER_IP6, "fd00::b", 64)
    assert (pkt[ICMPv6PacketTooBig].type, pkt[ICMPv6PacketTooBig].code,
            pkt[ICMPv6PacketTooBig].mtu) == (2, 0, 1400)
    assert len(pkt) - 14 == 1280 == 40 + pkt[IPv6].plen
    assert bytes(pkt[ICMPv6PacketTooBig])[8:] == frame[14:14 + 1232]
    assert checksums_ok(bytes(pkt))


def test_checksum_check_catches_a_corrupt_reply():
    reply = bytearray(frag_needed(big4(), 1400, ROUTER_MAC, ROUTER_IP))
    assert checksums_ok(bytes(reply))
    reply[14 + 20 + 8 + 30] ^= 1  # one bit of the quote
    assert not checksums_ok(bytes(reply))


@pytest.mark.parametrize("frame", [
    big6(upper=ICMPv6EchoRequest()),
    big6(upper=IPv6ExtHdrFragment(offset=100, nh=58) / Raw(b"\x01")),  # later fragment
    big6(dst="ff0e::1"),  # multicast destinations may get one (RFC 4443 s. 2.4(e.3))
])
def test_packet_too_big_is_sent_for(frame):
    assert packet_too_big(frame, 1280, ROUTER_MAC, ROUTER_IP6) is not None


@pytest.mark.parametrize("frame", [
    big6(upper=ICMPv6DestUnreach()),
    big6(upper=IPv6ExtHdrDestOpt() / ICMPv6DestUnreach()),  # behind an extension header
    big6(src="::"), big6(src="ff02::1"),
    big4(),
    b"",
], ids=["icmpv6-error", "behind-ext-header", "unspecified", "multicast", "ipv4", "empty"])
def test_no_packet_too_big(frame):
    assert packet_too_big(frame, 1280, ROUTER_MAC, ROUTER_IP6) is None
