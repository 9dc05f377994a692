"""Packet-ins answered from the spec: twins with identical specs each get their own
lease and their own names; a packet-in that is nobody's gets no answer."""
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from controller.packetin.punt import Punt
from tests.unit.fixtures import tenant_yaml, world


def twin(name, b_ip):
    """Switch s: a on hv1 with a fixed MAC (the same in every twin), b on hv2 at b_ip."""
    return tenant_yaml(name, "s", [("a", "10.0.0.11", "hv1", "02:aa:00:00:00:0a"), ("b", b_ip, "hv2")])


def punt_for(**tenants):
    w = world(*(twin(n, ip) for n, ip in tenants.items()))
    p = Punt(lambda t: {s.name: 1450 for s in t.switches})
    for name, (t, a) in w.items():
        p.update(name, t, a)
    return p, w


def discover(mac):
    return bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
                 / UDP(sport=68, dport=67) / BOOTP(chaddr=bytes.fromhex(mac.replace(":", "")), xid=7)
                 / DHCP(options=[("message-type", "discover"), "end"]))


def regs(w, tenant, port):
    t, a = w[tenant]
    return {"reg13": a.vni[t.port(port).switch], "reg14": a.port_key[port]}


def test_twins_with_the_same_mac_get_their_own_tenants_lease():
    p, w = punt_for(x="10.0.0.12", y="10.0.0.22")
    mac = w["x"][0].port("a").mac
    assert mac == w["y"][0].port("a").mac
    for name in ("x", "y"):
        out = p.handle("hv1", "services", regs(w, name, "a"), w[name][1].ofport["a"], discover(mac))
        assert [port for port, _ in out] == [w[name][1].ofport["a"]]
        reply = Ether(out[0][1])
        assert reply[BOOTP].yiaddr == "10.0.0.11"
        opts = dict(o for o in reply[DHCP].options if isinstance(o, tuple))
        assert opts["domain"] == f"{name}.nvctl".encode()
        assert opts["interface-mtu"] == 1450
        assert opts["name_server"] == "10.0.0.254"  # no router: the switch's service address
    # b differs between the twins: each gets its own
    for name, ip in (("x", "10.0.0.12"), ("y", "10.0.0.22")):
        bmac = w[name][0].port("b").mac
        out = p.handle("hv2", "services", regs(w, name, "b"), w[name][1].ofport["b"], discover(bmac))
        assert Ether(out[0][1])[BOOTP].yiaddr == ip


def test_a_port_asking_with_another_mac_is_not_answered():
    p, w = punt_for(x="10.0.0.12")
    other = w["x"][0].port("b").mac  # b's MAC, sent from a's port
    assert p.handle("hv1", "services", regs(w, "x", "a"), w["x"][1].ofport["a"], discover(other)) == []
    assert p.counts[("dhcp", "not its port")] == 1


def query(name, src="10.0.0.12", server="10.0.0.254"):
    return bytes(Ether(src="02:00:0a:00:00:0c", dst="02:03:0a:00:00:fe") / IP(src=src, dst=server)
                 / UDP(sport=5353, dport=53) / DNS(id=9, rd=1, qd=DNSQR(qname=name, qtype="A")))


def answer(p, w, tenant, name):
    out = p.handle("hv2", "services", regs(w, tenant, "b"), w[tenant][1].ofport["b"], query(name))
    d = Ether(out[0][1])[DNS]
    return d.rcode, [d.an[i].rdata for i in range(d.ancount)]


def test_names_are_the_own_tenants_only():
    p, w = punt_for(x="10.0.0.12", y="10.0.0.22")
    assert answer(p, w, "x", "b.x.nvctl") == (0, ["10.0.0.12"])
    assert answer(p, w, "y", "b.y.nvctl") == (0, ["10.0.0.22"])
    assert answer(p, w, "x", "b.y.nvctl") == (3, [])  # NXDOMAIN, as for a name nobody has
    assert answer(p, w, "x", "zz.x.nvctl") == (3, [])
    assert answer(p, w, "x", "example.com") == (5, [])  # REFUSED: nothing is forwarded


def test_too_big_is_answered_only_for_a_port_of_that_tenant_on_that_host():
    p, w = punt_for(x="10.0.0.12")
    t, a = w["x"]
    big = bytes(Ether(src=t.port("a").mac, dst=t.port("b").mac) / IP(src="10.0.0.11", dst="10.0.0.12", flags="DF")
                / UDP(sport=1, dport=2) / Raw(b"x" * 1460))
    r = {"reg13": a.vni["s"]}
    out = p.handle("hv1", "tunnel_out", r, a.ofport["a"], big)
    icmp = Ether(out[0][1])
    assert (icmp.dst, icmp[IP].dst, icmp[ICMP].type, icmp[ICMP].code, icmp[ICMP].nexthopmtu) == \
        (t.port("a").mac, "10.0.0.11", 3, 4, 1450)
    assert 999 not in a.ofport.values()
    assert p.handle("hv1", "tunnel_out", r, 999, big) == []  # no port of the tenant there
    assert p.handle("hv1", "tunnel_out", {"reg13": 12345}, a.ofport["a"], big) == []  # no such VNI
