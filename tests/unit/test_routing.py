"""Distributed routing, checked by sending packets through every host's compiled flows."""
import pytest

from controller.compile.compiler import TUNNEL_OFPORT
from controller.compile.pipeline import LAYER_BY_ID
from dataplane.match_action import cookie_layer
from tests.unit.fixtures import Net, routed_tenant, world
from tests.unit.packets import arp_request, icmp


@pytest.fixture(scope="module")
def net():
    return Net(world(routed_tenant("blue"), routed_tenant("red")))


def gw_mac(n, tenant, switch):
    t, _ = n.tenants[tenant]
    return t.router_of(switch)[1].mac


def routed(n, tenant, src, dst_ip, ttl=64):
    p, _ = n.port(tenant, src)
    return n.send(tenant, src, icmp(p.mac, gw_mac(n, tenant, p.switch), str(p.ip), dst_ip, ttl=ttl))


def test_cross_subnet_between_hosts_is_routed_at_the_source_and_crosses_once(net):
    got = routed(net, "blue", "web1", "10.0.1.10")  # hv1 -> db1 on hv2
    assert net.who(got) == [("blue", "db1")]
    (d,) = got
    db1, _ = net.port("blue", "db1")
    assert d.packet["ip_ttl"] == 63
    assert d.packet["eth_src"] == gw_mac(net, "blue", "db") and d.packet["eth_dst"] == db1.mac
    assert [h for h, _ in d.hops] == ["hv1", "hv2"]  # routed on hv1, one tunnel hop
    wire = d.hops[0][1].outputs[0].packet
    _, alloc = net.tenants["blue"]
    assert wire["tunnel_id"] == alloc.vni["db"]  # it travels on the destination's switch


def test_cross_subnet_on_one_host_never_touches_the_tunnel(net):
    got = routed(net, "blue", "web1", "10.0.1.30")  # web1 and db3 both on hv1
    assert net.who(got) == [("blue", "db3")]
    assert [h for h, _ in got[0].hops] == ["hv1"]
    assert TUNNEL_OFPORT not in got[0].hops[0][1].ports()


def test_the_router_answers_ping_and_arp_on_its_addresses(net):
    web1, ofport = net.port("blue", "web1")
    for gw in ("10.0.0.1", "10.0.1.1"):
        (d,) = net.send("blue", "web1", icmp(web1.mac, gw_mac(net, "blue", "web"), "10.0.0.11", gw))
        assert (d.host, d.port) == ("hv1", ofport)
        assert d.packet["icmpv4_type"] == 0
        assert (d.packet["ipv4_src"], d.packet["ipv4_dst"]) == (gw, "10.0.0.11")
        assert d.packet["eth_dst"] == web1.mac
    (d,) = net.send("blue", "web1", arp_request(web1.mac, "10.0.0.11", "10.0.0.1"))
    assert d.packet["arp_sha"] == gw_mac(net, "blue", "web") and d.packet["arp_op"] == 2


def test_static_routes_and_longest_prefix(net):
    assert net.who(routed(net, "blue", "web1", "192.168.50.7")) == [("blue", "db2")]
    # 10.0.1.130 is inside db's connected /24, but the static /25 is longer: via db2
    (d,) = routed(net, "blue", "web1", "10.0.1.130")
    assert net.who([d]) == [("blue", "db2")]
    assert d.packet["ipv4_dst"] == "10.0.1.130"  # the destination address is kept


def test_no_route_and_ttl_expiry_drop(net):
    web1, ofport = net.port("blue", "web1")
    sim = net.fabric.sims["hv1"]
    fate = sim.run(icmp(web1.mac, gw_mac(net, "blue", "web"), "10.0.0.11", "172.16.0.1"), ofport)
    assert fate.dropped and fate.decided_by().rule == "router r1: no route"
    assert routed(net, "blue", "web1", "10.0.1.10", ttl=1) == []


def test_routers_never_route_into_another_tenant(net):
    for src in ("web1", "web2"):
        for dst in ("10.0.1.10", "10.0.1.20", "10.0.1.30", "192.168.50.7"):
            got = routed(net, "blue", src, dst)
            assert got and all(t == "blue" for t, _ in net.who(got)), (src, dst)


def test_routed_flows_are_decided_by_the_routing_layer(net):
    web1, ofport = net.port("blue", "web1")
    fate = net.fabric.sims["hv1"].run(
        icmp(web1.mac, gw_mac(net, "blue", "web"), "10.0.0.11", "10.0.1.10"), ofport)
    layers = [LAYER_BY_ID[cookie_layer(h.flow.cookie)].name for h in fate.path if h.flow]
    assert "routing" in layers and layers.index("routing") < layers.index("encap")
