"""Dual stack: the schema, forwarding and routing of IPv6 in the simulator, port security
for IPv6 and neighbour discovery, and twins with identical IPv6 prefixes, names and MACs
proved isolated over the header space (IPv6 fields included)."""
import ipaddress
import os

import pytest

from controller.compile.compiler import compile_world
from controller.analysis.verify import network_from_compiled, verify
from dataplane.match_action import ETH_TYPE_IPV6, IPPROTO_ICMPV6, IPPROTO_TCP, ND_NA
from topology.model import eui64
from topology.schema import ValidationError, load_tenant, to_doc, validate
from tests.unit.fixtures import HOSTS, Net, world

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DUAL = open(os.path.join(ROOT, "examples", "dual-stack.yaml")).read().replace("name: dual}", "name: NAME}")


def dual(name="shop6"):
    return DUAL.replace("NAME", name)


def test_ports_get_an_ip6_from_their_mac_or_as_given_and_it_round_trips():
    t = load_tenant(dual(), HOSTS.keys())
    w1 = t.port("w1")
    assert w1.ip6 == eui64(ipaddress.IPv6Network("fd00:0:0:1::/64"), w1.mac)
    assert str(t.port("w2").ip6) == "fd00:0:0:1::12"
    assert validate(to_doc(t), HOSTS.keys()) == t


@pytest.mark.parametrize("change,path,why", [
    ('ip6: "fd00:0:0:1::12"}', "spec.ports[3].ip6", "has no cidr6"),  # with db made IPv4-only below
    ('cidr6: "fd00:0:0:2::/64"}', "spec.switches[1].cidr6", "overlaps"),
])
def test_bad_ipv6_is_refused_naming_the_field(change, path, why):
    doc = dual()
    if "has no cidr6" in why:
        doc = doc.replace(', cidr6: "fd00:0:0:2::/64"}', "}").replace(', ip6: "fd00:0:0:2::1"}', "}")
        doc = doc.replace("ip: 10.0.1.10, host: hv2}", 'ip: 10.0.1.10, host: hv2, ip6: "fd00::9"}')
    else:
        doc = doc.replace('cidr6: "fd00:0:0:1::/64"}', change)
    with pytest.raises(ValidationError) as e:
        load_tenant(doc, HOSTS.keys())
    assert any(p == path and why in w for p, w in e.value.errors), e.value.errors


def test_an_ip6_outside_the_prefix_or_taken_is_refused():
    with pytest.raises(ValidationError) as e:
        load_tenant(dual().replace('ip6: "fd00:0:0:1::12"', 'ip6: "fd00:0:0:9::12"'), HOSTS.keys())
    assert any(p == "spec.ports[1].ip6" and "not a host address" in w for p, w in e.value.errors)
    with pytest.raises(ValidationError) as e:
        load_tenant(dual().replace('ip6: "fd00:0:0:1::12"', 'ip6: "fd00:0:0:1::1"'), HOSTS.keys())
    assert any(p.startswith("spec.routers[0].ports[0].ip6") and "already used" in w for p, w in e.value.errors)


def v6(src_mac, dst_mac, src, dst, proto=IPPROTO_TCP, **l4):
    pkt = {"eth_src": src_mac, "eth_dst": dst_mac, "eth_type": ETH_TYPE_IPV6, "ipv6_src": str(src),
           "ipv6_dst": str(dst), "ip_proto": proto, "ip_ttl": 64}
    if proto == IPPROTO_TCP:
        pkt.update(tcp_src=40000, tcp_dst=l4.get("dport", 80))
    pkt.update({k: v for k, v in l4.items() if k != "dport"})
    return pkt


def test_ipv6_is_switched_routed_and_guarded_by_its_acl():
    n = Net(world(dual()))
    w1, _ = n.port("shop6", "w1")
    w2, _ = n.port("shop6", "w2")
    d1, _ = n.port("shop6", "d1")
    r = n.tenants["shop6"][0].router("r1")
    assert n.who(n.send("shop6", "w1", v6(w1.mac, w2.mac, w1.ip6, w2.ip6))) == [("shop6", "w2")]
    # routed: to the router's MAC, TTL down, onto db; the ACL lets only TCP 22 from w1 in
    got = n.send("shop6", "w1", v6(w1.mac, r.ports[0].mac, w1.ip6, d1.ip6, dport=22))
    assert n.who(got) == [("shop6", "d1")]
    assert got[0].packet["eth_src"] == r.ports[1].mac and got[0].packet["ip_ttl"] == 63
    assert n.send("shop6", "w1", v6(w1.mac, r.ports[0].mac, w1.ip6, d1.ip6, dport=80)) == []
    assert n.send("shop6", "w2", v6(w2.mac, r.ports[0].mac, w2.ip6, d1.ip6, dport=22)) == []


def test_a_port_may_not_spoof_an_ipv6_source_nor_advertise_a_neighbour():
    n = Net(world(dual()))
    w1, _ = n.port("shop6", "w1")
    w2, _ = n.port("shop6", "w2")
    assert n.send("shop6", "w1", v6(w1.mac, w2.mac, w2.ip6, w2.ip6)) == []
    na = v6(w1.mac, w2.mac, w1.ip6, w2.ip6, proto=IPPROTO_ICMPV6, icmpv6_type=ND_NA, icmpv6_code=0,
            ipv6_nd_target=str(w2.ip6), ipv6_nd_tll=w1.mac)
    assert n.send("shop6", "w1", na) == []
    # its link-local address is its own, too
    ll = v6(w1.mac, w2.mac, w1.link_local, w2.link_local)
    assert n.who(n.send("shop6", "w1", ll)) == [("shop6", "w2")]


def test_dual_stack_twins_verify_clean():
    w = world(dual("twin-a"), dual("twin-b"))
    flows = {h: list(fl.values()) for h, fl in compile_world(HOSTS, w).items()}
    r = verify(network_from_compiled(HOSTS, w, flows))
    assert r.ok, r.format()
    assert r.checked["port_starts"] == 8


def _twins_and_flows():
    w = world(dual("twin-a"), dual("twin-b"))
    return w, {h: list(fl.values()) for h, fl in compile_world(HOSTS, w).items()}


def test_verify_finds_an_ipv6_packet_sent_to_the_twins_port():
    from controller.compile.pipeline import PIPELINE
    from dataplane.match_action import Flow, Match, Output
    w, flows = _twins_and_flows()
    (a, aa), (b, ba) = w["twin-a"], w["twin-b"]
    w2 = a.port("w2")  # on hv2, like twin-b's w2
    bad = Flow(PIPELINE["l2_lookup"], 200, Match.of(reg13=aa.vni["web"], eth_dst=w2.mac, eth_type=ETH_TYPE_IPV6),
               (Output(ba.ofport["w2"]),), layer_id=4, tenant_id=aa.tenant_id, rule="planted v6")
    flows["hv2"] = flows["hv2"] + [bad]
    r = verify(network_from_compiled(HOSTS, w, flows))
    bad_ones = [v for v in r.violations if v.kind == "isolation_port"]
    assert bad_ones and bad_ones[0].tenants == ["twin-a", "twin-b"], r.format()
    assert bad_ones[0].packet["eth_type"] == ETH_TYPE_IPV6


def test_verify_finds_a_tenant_punting_through_the_twins_control_meter():
    from controller.layers.services import control_meter
    from dataplane.match_action import Flow, Meter, cookie_layer, cookie_tenant
    w, flows = _twins_and_flows()
    theirs = control_meter(w["twin-b"][1].tenant_id).meter_id
    mine = control_meter(w["twin-a"][1].tenant_id).meter_id
    swapped = [Flow(f.table, f.priority, f.match,
                    tuple(Meter(theirs, a.rate_kbps, a.burst_kb, a.unit) if isinstance(a, Meter)
                          and a.meter_id == mine else a for a in f.actions),
                    cookie_layer(f.cookie), cookie_tenant(f.cookie), f.rule)
               if f.table.name == "services" and any(isinstance(a, Meter) and a.meter_id == mine
                                                     for a in f.actions) else f
               for f in flows["hv1"]]
    assert swapped != flows["hv1"]
    flows["hv1"] = swapped
    r = verify(network_from_compiled(HOSTS, w, flows))
    assert any(v.kind == "shared_meter" and v.tenants == ["twin-a", "twin-b"] for v in r.violations), r.format()
