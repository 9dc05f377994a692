"""External network through the gateway host: SNAT, floating IPs, and nothing else
reachable from outside. Conntrack state is the simulator's, kept across packets."""
import pytest

from tests.unit.fixtures import (EXT_PORT, GW_HOSTS as HOSTS, NAT, NEXT_HOP_MAC, OUTSIDE, R1_EXTERNAL, Net,
                                 routed_tenant, world)
from tests.unit.packets import arp_request, icmp, tcp


def nat_doc(nat=NAT) -> str:
    """The routed tenant with r1 external at 203.0.113.10, SNAT for web, db1's floating IP 203.0.113.11."""
    return routed_tenant("shop", router=R1_EXTERNAL, nat=nat)


DOC = nat_doc()


@pytest.fixture
def net():
    return Net(world(DOC, hosts=HOSTS), hosts=HOSTS)


def out_of(net, tenant, port, pkt_fn):
    p, _ = net.port(tenant, port)
    t, _ = net.tenants[tenant]
    return net.send(tenant, port, pkt_fn(p, t.router_of(p.switch)[1].mac))


def from_outside(net, pkt):
    return net.fabric.send("hv1", EXT_PORT, {"eth_src": NEXT_HOP_MAC, **pkt})


def test_snat_leaves_with_the_router_address_and_replies_come_back(net):
    got = out_of(net, "shop", "web2", lambda p, gw: icmp(p.mac, gw, str(p.ip), OUTSIDE))  # web2 on hv2
    (d,) = got
    assert (d.host, d.port) == ("hv1", EXT_PORT)
    assert d.packet["ipv4_src"] == "203.0.113.10" and d.packet["eth_dst"] == NEXT_HOP_MAC
    assert d.packet["ip_ttl"] == 63
    assert [h for h, _ in d.hops] == ["hv2", "hv1"]  # to the gateway over the tunnel
    back = from_outside(net, icmp(NEXT_HOP_MAC, d.packet["eth_src"], OUTSIDE, "203.0.113.10", icmp_type=0))
    assert net.who(back) == [("shop", "web2")]
    assert back[0].packet["ipv4_dst"] == "10.0.0.12"


def test_floating_ip_both_ways(net):
    t, _ = net.tenants["shop"]
    ext_mac = "02:01:cb:00:71:0a"  # the router's external MAC, derived from 203.0.113.10
    inbound = from_outside(net, tcp(NEXT_HOP_MAC, ext_mac, OUTSIDE, "203.0.113.11", 50000, 22))
    assert net.who(inbound) == [("shop", "db1")]
    assert inbound[0].packet["ipv4_dst"] == "10.0.1.10"
    (d,) = out_of(net, "shop", "db1", lambda p, gw: tcp(p.mac, gw, str(p.ip), OUTSIDE, 22, 50000))
    assert d.port == EXT_PORT and d.packet["ipv4_src"] == "203.0.113.11"
    (d2,) = out_of(net, "shop", "db1", lambda p, gw: icmp(p.mac, gw, str(p.ip), OUTSIDE))
    assert d2.packet["ipv4_src"] == "203.0.113.11"  # its own connections leave as the FIP too


def test_nothing_else_is_reachable_from_outside(net):
    ext_mac = "02:01:cb:00:71:0a"
    assert from_outside(net, tcp(NEXT_HOP_MAC, ext_mac, OUTSIDE, "203.0.113.10", 50001, 22)) == []
    assert from_outside(net, icmp(NEXT_HOP_MAC, ext_mac, OUTSIDE, "10.0.0.11")) == []
    assert from_outside(net, icmp(NEXT_HOP_MAC, ext_mac, OUTSIDE, "203.0.113.12")) == []
    (arp,) = from_outside(net, arp_request(NEXT_HOP_MAC, OUTSIDE, "203.0.113.11"))
    assert arp.port == EXT_PORT and arp.packet["arp_sha"] == ext_mac
    assert from_outside(net, arp_request(NEXT_HOP_MAC, OUTSIDE, "203.0.113.50")) == []


def test_sources_outside_every_snat_prefix_do_not_leave(net):
    got = out_of(net, "shop", "db2", lambda p, gw: icmp(p.mac, gw, str(p.ip), OUTSIDE))  # db: no SNAT
    assert got == []


@pytest.mark.parametrize("rule,key,value,path,reason", [
    (0, "cidr", "10.0.0.0/33", "spec.nat[0].cidr", "is not an IPv4 network"),
    (0, "router", "r9", "spec.nat[0].router", "unknown router 'r9'"),
    (1, "externalIp", "203.0.113.10", "spec.nat[1].externalIp", "203.0.113.10 is already used by router r1"),
    (1, "port", "nope", "spec.nat[1].port", "unknown port 'nope'"),
    (0, "type", "masquerade", "spec.nat[0].type", "is not one of snat, floating-ip"),
])
def test_nat_rejections(rule, key, value, path, reason):
    """DOC with one field of one NAT rule changed: refused, naming that field."""
    from topology.schema import ValidationError, load_tenant
    nat = [dict(r) for r in NAT]
    assert key in nat[rule]
    nat[rule][key] = value
    with pytest.raises(ValidationError) as e:
        load_tenant(nat_doc(nat), HOSTS)
    assert any(p == path and reason in r for p, r in e.value.errors), e.value.errors
