"""HA gateways and distributed floating IPs, compiled and simulated (no switch).

Every host here has the provider network and a BFD port number (peer_port), as in the
lab; router r1's gateway group is [hv1, hv2]. Ports: web1 hv1, web2 hv2, db1 hv2,
db2 hv3, db3 hv1 (tests/unit/fixtures.py); db1 has the floating IP 203.0.113.11.
"""
import dataclasses

import pytest

from controller.compile.compiler import Host, compile_tenant, gateway_hosts
from controller.layers.gateway import floating_mac, gateway_groups
from controller.server.announce import garp, moved
from controller.server.peers import assign_peer_port, port_name, wanted
from controller.spaces.ids import (FIRST_PEER_TUNNEL_OFPORT, GATEWAY_GROUP_BASE, STANDBY_GROUP_BASE,
                                   TUNNEL_OFPORT)
from controller.spaces.names import transit_name
from controller.state.store import HostRecord
from dataplane.match_action import Fabric, Group
from controller.compile.pipeline import PIPELINE
from topology.schema import ValidationError, load_tenant, to_doc
from tests.unit.fixtures import EXT_PORT, NAT, NEXT_HOP_MAC, OUTSIDE, R1_EXTERNAL, Net, routed_tenant, world
from tests.unit.packets import arp_request, icmp

PEER = {f"hv{i}": FIRST_PEER_TUNNEL_OFPORT + i - 1 for i in (1, 2, 3)}
HOSTS = {h: Host(h, f"192.0.2.{10 + i}", (EXT_PORT, NEXT_HOP_MAC), peer_port=PEER[h])
         for i, h in ((1, "hv1"), (2, "hv2"), (3, "hv3"))}
ROUTER = {**R1_EXTERNAL, "external": {"ip": "203.0.113.10", "gateways": ["hv1", "hv2"]}}
RMAC = "02:01:cb:00:71:0a"  # r1's external MAC, from 203.0.113.10


def doc(name="shop", router=ROUTER, nat=NAT):
    return routed_tenant(name, router=router, nat=nat)


def net(hosts=HOSTS, *docs):
    return Net(world(*(docs or (doc(),)), hosts=hosts), hosts=hosts)


def _groups(flows, table):
    return [a for f in flows.values() if f.table.name == table for a in f.actions if isinstance(a, Group)]


def test_gateways_parse_round_trip_and_are_refused_with_the_field():
    t = load_tenant(doc(), HOSTS.keys())
    assert t.router("r1").gateways == ("hv1", "hv2")
    assert to_doc(t)["spec"]["routers"][0]["external"] == {"ip": "203.0.113.10", "gateways": ["hv1", "hv2"]}
    for bad, reason in ((["hv1", "hv1"], "host hv1 is listed twice"), ("hv1", "must be a list of host names"),
                        ([f"hv{i}" for i in range(9)], "9 hosts: at most 8")):
        with pytest.raises(ValidationError) as e:
            load_tenant(doc(router={**ROUTER, "external": {"ip": "203.0.113.10", "gateways": bad}}), HOSTS.keys())
        assert any(p == "spec.routers[0].external.gateways" and reason in r for p, r in e.value.errors), \
            e.value.errors


def test_the_group_is_the_listed_hosts_with_the_provider_network_else_the_first_three():
    t = load_tenant(doc(), HOSTS.keys())
    r = t.router("r1")
    assert gateway_hosts(r, HOSTS) == ("hv1", "hv2")
    no_ext = {**HOSTS, "hv1": dataclasses.replace(HOSTS["hv1"], external=None)}
    assert gateway_hosts(r, no_ext) == ("hv2",)  # a listed host without it is skipped
    placed = dataclasses.replace(r, gateways=())
    four = {**HOSTS, "hv0": Host("hv0", "192.0.2.9", (EXT_PORT, NEXT_HOP_MAC), peer_port=PEER["hv1"] + 9)}
    assert gateway_hosts(placed, four) == ("hv0", "hv1", "hv2")


def test_each_host_sends_external_traffic_to_its_first_live_gateway():
    n = net()
    t, a = n.tenants["shop"]
    transit = a.vni[transit_name("r1")]
    gid = GATEWAY_GROUP_BASE + transit
    (g3,) = _groups(n.flows["hv3"], "dispatch")  # db2's host: not a gateway
    # the last gateway is unconditional: a missing or down BFD port toward it never drops everything
    assert (g3.group_id, g3.kind, g3.watch) == (gid, "ff", (PEER["hv1"], TUNNEL_OFPORT))
    assert [dict((x.field, x.value) for x in b if hasattr(x, "field")).get("tun_ipv4_dst") for b in g3.buckets] \
        == ["192.0.2.11", "192.0.2.12"]
    (g2,) = _groups(n.flows["hv2"], "dispatch")  # the standby: hv1 while it lives, else itself
    assert g2.watch == (PEER["hv1"], TUNNEL_OFPORT) and g2.buckets[1] == (PIPELINE.resubmit["ext_snat"],)
    assert _groups(n.flows["hv1"], "dispatch") == []  # the first gateway: always itself, no group
    assert gid in gateway_groups(t, a) and STANDBY_GROUP_BASE + transit in gateway_groups(t, a)


def _live(dead: dict):
    return {h: {PEER[p]: False for p in peers} for h, peers in dead.items()}


def _fabric(n, dead=None):
    return Fabric(PIPELINE, {h: (n.flows[h].values(), HOSTS[h].pa) for h in HOSTS}, TUNNEL_OFPORT,
                  live=_live(dead or {}))


def _ping_out(n, fabric, port):
    t, a = n.tenants["shop"]
    p = t.port(port)
    return fabric.send(p.host, a.ofport[port], icmp(p.mac, t.router_of(p.switch)[1].mac, str(p.ip), OUTSIDE))


def test_snat_leaves_at_the_first_gateway_whose_bfd_session_is_up():
    n = net(HOSTS, doc(nat=[{**NAT[0], "cidr": "10.0.0.0/16"}, NAT[1]]))  # db2 (hv3) is SNATed too
    (d,) = _ping_out(n, _fabric(n), "db2")
    assert (d.host, d.port, d.packet["ipv4_src"]) == ("hv1", EXT_PORT, "203.0.113.10")
    (d,) = _ping_out(n, _fabric(n, {"hv3": ["hv1"]}), "db2")  # hv3's session toward hv1 is down
    assert (d.host, d.port, d.packet["ipv4_src"], d.packet["eth_src"]) == ("hv2", EXT_PORT, "203.0.113.10", RMAC)
    assert [h for h, _ in d.hops] == ["hv3", "hv2"]
    (d,) = _ping_out(n, _fabric(n, {"hv3": ["hv1", "hv2"]}), "db2")  # none alive: still the last one
    assert d.host == "hv2"
    (d,) = _ping_out(n, _fabric(n, {"hv2": ["hv1"]}), "web2")  # web2 on hv2, the standby: itself
    assert (d.host, [h for h, _ in d.hops]) == ("hv2", ["hv2"])
    (d,) = _ping_out(n, _fabric(n), "web2")  # while hv1 lives: through hv1
    assert [h for h, _ in d.hops] == ["hv2", "hv1"]


def test_only_the_active_gateway_answers_arp_for_the_router_address():
    n = net()
    ask = {"eth_src": NEXT_HOP_MAC, **arp_request(NEXT_HOP_MAC, OUTSIDE, "203.0.113.10")}
    answers = {h: _fabric(n).send(h, EXT_PORT, ask) for h in HOSTS}
    assert [d.packet["arp_sha"] for d in answers["hv1"]] == [RMAC]
    assert answers["hv2"] == [] and answers["hv3"] == []  # hv2 stays quiet while hv1 lives; hv3 is no gateway
    (d,) = _fabric(n, {"hv2": ["hv1"]}).send("hv2", EXT_PORT, ask)
    assert d.packet["arp_sha"] == RMAC and d.port == EXT_PORT


def test_a_floating_ip_lives_on_its_ports_host_with_its_own_mac():
    n = net()
    t, a = n.tenants["shop"]
    fmac = floating_mac(next(x for x in t.nat if x.type == "floating-ip"))
    ask = {"eth_src": NEXT_HOP_MAC, **arp_request(NEXT_HOP_MAC, OUTSIDE, "203.0.113.11")}
    assert [d.packet["arp_sha"] for d in _fabric(n).send("hv2", EXT_PORT, ask)] == [fmac]  # db1 is on hv2
    assert _fabric(n).send("hv1", EXT_PORT, ask) == []
    (d,) = _ping_out(n, _fabric(n, {"hv2": ["hv1"]}), "db1")
    assert (d.host, d.port, d.packet["ipv4_src"], d.packet["eth_src"]) == ("hv2", EXT_PORT, "203.0.113.11", fmac)
    assert [h for h, _ in d.hops] == ["hv2"]  # never through a gateway
    inbound = _fabric(n).send("hv2", EXT_PORT, {"eth_src": NEXT_HOP_MAC, **icmp(NEXT_HOP_MAC, fmac, OUTSIDE,
                                                                                "203.0.113.11")})
    assert n.who(inbound) == [("shop", "db1")] and [h for h, _ in inbound[0].hops] == ["hv2"]


def test_a_floating_ip_whose_host_has_no_provider_network_goes_through_the_gateway():
    hosts = {**HOSTS, "hv2": dataclasses.replace(HOSTS["hv2"], external=None, peer_port=None)}
    n = Net(world(doc(router={**ROUTER, "external": {"ip": "203.0.113.10", "gateways": ["hv1", "hv3"]}}),
                  hosts=hosts), hosts=hosts)
    (d,) = _ping_out(n, Fabric(PIPELINE, {h: (n.flows[h].values(), hosts[h].pa) for h in hosts}, TUNNEL_OFPORT),
                     "db1")
    assert (d.host, d.packet["ipv4_src"], d.packet["eth_src"]) == ("hv1", "203.0.113.11", RMAC)


def test_twins_compile_the_same_gateway_flows_but_for_their_own_addresses():
    twin = doc("twin", router={**ROUTER, "external": {"ip": "203.0.113.20", "gateways": ["hv1", "hv2"]}},
               nat=[NAT[0], {**NAT[1], "externalIp": "203.0.113.21"}])
    n = net(HOSTS, doc(), twin)
    for name, fip in (("shop", "203.0.113.11"), ("twin", "203.0.113.21")):
        t, a = n.tenants[name]
        p = t.port("db1")
        (d,) = _fabric(n).send(p.host, a.ofport["db1"], icmp(p.mac, t.router_of(p.switch)[1].mac, str(p.ip), OUTSIDE))
        assert (d.host, d.packet["ipv4_src"]) == ("hv2", fip), name
    groups = {name: gateway_groups(*n.tenants[name]) for name in ("shop", "twin")}
    assert not groups["shop"] & groups["twin"]  # each its own group ids (its own transit VNI)


def test_peer_ports_are_numbered_once_per_host_with_the_provider_network():
    ext = {"external": {"ofport": 2}}
    hosts = {}
    for name in ("hv1", "hv2", "hv3"):
        hosts[name] = HostRecord(name, "192.0.2.1", 1, assign_peer_port(ext, name, hosts))
    assert [h.info["peer_port"] for h in hosts.values()] == [FIRST_PEER_TUNNEL_OFPORT + i for i in range(3)]
    again = assign_peer_port({**ext}, "hv2", hosts)  # re-registered: keeps its number
    assert again["peer_port"] == FIRST_PEER_TUNNEL_OFPORT + 1
    hosts["hv4"] = HostRecord("hv4", "192.0.2.4", 4, assign_peer_port({}, "hv4", hosts))  # no provider network
    hosts["hv5"] = HostRecord("hv5", "192.0.2.5", 5, assign_peer_port({}, "hv5", hosts))
    assert (hosts["hv4"].info["peer_port"], hosts["hv5"].info["peer_port"]) == \
        (FIRST_PEER_TUNNEL_OFPORT + 3, FIRST_PEER_TUNNEL_OFPORT + 4)
    # hv4 watches the three possible gateways; a gateway has a port toward every other host
    # (both ends of each session); hv4 and hv5 do not watch each other
    assert set(wanted("hv4", hosts)) == {port_name(FIRST_PEER_TUNNEL_OFPORT + i) for i in range(3)}
    assert set(wanted("hv1", hosts)) == {port_name(FIRST_PEER_TUNNEL_OFPORT + i) for i in (1, 2, 3, 4)}


def test_a_moved_floating_ip_is_announced_from_its_new_host():
    from scapy.layers.l2 import ARP, Ether
    old = load_tenant(doc(), HOSTS.keys())
    new = dataclasses.replace(old, ports=tuple(dataclasses.replace(p, host="hv3") if p.name == "db1" else p
                                               for p in old.ports))
    fmac = floating_mac(next(x for x in old.nat if x.type == "floating-ip"))
    assert moved(old, new, HOSTS) == [("hv3", EXT_PORT, fmac, "203.0.113.11")]
    assert moved(new, new, HOSTS) == []
    assert moved(None, old, HOSTS) == [("hv2", EXT_PORT, fmac, "203.0.113.11")]  # a new one too
    f = Ether(garp(fmac, "203.0.113.11"))
    assert (f.dst, f.src, f[ARP].op, f[ARP].psrc, f[ARP].pdst, f[ARP].hwsrc) == \
        ("ff:ff:ff:ff:ff:ff", fmac, 1, "203.0.113.11", "203.0.113.11", fmac)


def test_a_tenant_compile_puts_no_gateway_flow_on_a_host_outside_the_group():
    t, a = world(doc(), hosts=HOSTS)["shop"]
    flows = compile_tenant(t, a, HOSTS)
    on3 = {f.table.name for f in flows.get("hv3", ()) if f.table.name.startswith("ext_")}
    assert on3 == set(), on3  # hv3: no gateway of r1 and no floating IP of its ports
