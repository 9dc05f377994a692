"""Pure parts of nvctl trace: the packet spec, and reading OVS's datapath actions."""
import pytest

from controller.analysis.trace import TraceError, build_packet, parse_datapath_actions, parse_spec
from tests.unit.fixtures import routed_tenant
from topology.schema import load_tenant


def test_spec_parsing_and_defaults():
    t = load_tenant(routed_tenant("shop"), None)
    web1 = t.port("web1")
    proto, f = parse_spec("tcp,nw_dst=10.0.1.10,tp_dst=5432")
    pkt = build_packet(t, web1, proto, f)
    assert pkt["eth_dst"] == t.router_of("web")[1].mac  # off-switch: via the router
    assert (pkt["ipv4_src"], pkt["tcp_src"], pkt["tcp_dst"], pkt["ip_ttl"]) == ("10.0.0.11", 40000, 5432, 64)
    same = build_packet(t, web1, *parse_spec("icmp,nw_dst=10.0.0.12"))
    assert same["eth_dst"] == t.port("web2").mac and same["icmpv4_type"] == 8
    forged = build_packet(t, web1, *parse_spec("ip,nw_dst=10.0.0.12,nw_src=10.9.9.9,dl_src=02:00:de:ad:be:ef"))
    assert (forged["ipv4_src"], forged["eth_src"]) == ("10.9.9.9", "02:00:de:ad:be:ef")


@pytest.mark.parametrize("spec,msg", [
    ("sctp,nw_dst=1.2.3.4", "unknown protocol"),
    ("tcp,nw_dest=1.2.3.4", "unknown field"),
    ("tcp,nw_dst=1.2.3", "not a valid value"),
    ("tcp", "give the destination"),
    ("ip,nw_dst=10.0.0.77", "no port has it"),
])
def test_bad_specs_say_why(spec, msg):
    t = load_tenant(routed_tenant("shop"), None)
    with pytest.raises(TraceError, match=msg):
        build_packet(t, t.port("web1"), *parse_spec(spec))


def test_datapath_actions_are_read_as_ports_and_tunnels():
    odp = {5: ("br-int", 10, "wabc"), 3: ("br-int", 1, "vxlan0"), 1: ("br-phy", 1, "ul0")}
    text = """Datapath actions: ct(zone=3),recirc(0x1)
Datapath actions: set(eth(src=02:01:0a:00:01:01)),tnl_push(tnl_port(3),header(size=50,type=4,eth(dst=1e:db,src=f2:1e,dl_type=0x0800),ipv4(src=192.0.2.11,dst=192.0.2.12,proto=17,tos=0,ttl=64,frag=0x4000),udp(src=0,dst=4789,csum=0x0),vxlan(flags=0x8000000,vni=0x3e9)),out_port(2)),1,5
"""
    assert parse_datapath_actions(text, odp, 10) == [("port", 10), ("tunnel", "192.0.2.12", 1001)]
    assert parse_datapath_actions("Datapath actions: drop\n", odp, 10) == []


def test_an_explicit_destination_mac_is_taken_as_given():
    t = load_tenant(routed_tenant("shop"), None)
    pkt = build_packet(t, t.port("web1"), *parse_spec("ip,nw_dst=10.0.0.77,dl_dst=02:00:00:00:99:99"))
    assert pkt["eth_dst"] == "02:00:00:00:99:99"


def test_copies_inside_clone_are_read_too():
    odp = {3: ("br-int", 1, "vxlan0"), 1: ("br-phy", 1, "ul0"), 6: ("br-int", 11, "w")}
    text = ("Datapath actions: clone(tnl_push(tnl_port(3),header(size=50,type=4,ipv4(src=192.0.2.12,"
            "dst=192.0.2.11,proto=17),vxlan(flags=0x8000000,vni=0x3e8)),out_port(2)),1),6,"
            "tnl_push(tnl_port(3),header(size=50,type=4,ipv4(src=192.0.2.12,dst=192.0.2.13,proto=17),"
            "vxlan(flags=0x8000000,vni=0x3e8)),out_port(2)),1\n")
    assert parse_datapath_actions(text, odp, 10) == [
        ("port", 11), ("tunnel", "192.0.2.11", 1000), ("tunnel", "192.0.2.13", 1000)]


def test_check_pkt_len_is_read_as_its_small_packet_branch():
    """check_pkt_larger in the datapath: the too-big branch goes to the controller
    (userspace), the other into the tunnel; a traced flow is a small packet."""
    odp = {3: ("br-int", 1, "vxlan0"), 1: ("br-phy", 1, "ul0")}
    tnl = ("tnl_push(tnl_port(3),header(size=50,type=4,eth(dst=1e:db,src=f2:1e,dl_type=0x0800),"
           "ipv4(src=192.0.2.11,dst=192.0.2.12,proto=17,tos=0,ttl=64,frag=0x4000),udp(src=0,dst=4789,csum=0x0),"
           "vxlan(flags=0x8000000,vni=0x3e9)),out_port(2))")
    text = f"Datapath actions: check_pkt_len(size=1464,gt(userspace(pid=0,controller(reason=1))),le({tnl}))\n"
    assert parse_datapath_actions(text, odp, 10) == [("tunnel", "192.0.2.12", 1001)]


def test_an_ipv6_spec_builds_the_ports_ipv6_packet_to_the_router_when_off_link():
    import os
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    t = load_tenant(open(os.path.join(root, "examples", "dual-stack.yaml")).read(), None)
    w1, d1, w2 = t.port("w1"), t.port("d1"), t.port("w2")
    pkt = build_packet(t, w1, *parse_spec(f"tcp6,ipv6_dst={d1.ip6},tp_dst=22"))
    assert (pkt["eth_type"], pkt["ipv6_src"], pkt["ipv6_dst"], pkt["ip_proto"], pkt["tcp_dst"]) == \
        (0x86DD, str(w1.ip6), str(d1.ip6), 6, 22)
    assert pkt["eth_dst"] == t.router("r1").ports[0].mac
    pkt = build_packet(t, w1, *parse_spec(f"icmp6,ipv6_dst={w2.ip6}"))
    assert (pkt["eth_dst"], pkt["ip_proto"], pkt["icmpv6_type"]) == (w2.mac, 58, 128)


def test_a_field_that_does_not_fit_is_the_callers_error(core):
    from controller.server.errors import ApiError
    from tests.unit.fixtures import BLUE
    core.create(BLUE)
    with pytest.raises(ApiError, match="99999 does not fit in 16 bits"):
        core.trace("blue", "vm1", "tcp,nw_dst=10.0.0.12,tp_dst=99999")
