"""Routes from BGP in tenant routers (compiled and simulated, no switch), which learned
routes a router takes in, what the platform announces and from where, and the
controller's BGP configuration.

Hosts as in test_gateway_ha: all three have the provider network; r1's gateways are
[hv1, hv2]; db2 runs on hv3, db1 (floating IP 203.0.113.11) on hv2.
"""
import dataclasses
import ipaddress
import threading
import types

import pytest

from controller.bgp.speaker import Learned
from controller.server.gateways import GatewaysMixin
from controller.server.peers import check_host_address
from controller.server.routes import Bgp, RoutesMixin, load_config
from controller.server.errors import ApiError
from controller.state.store import HostRecord
from topology.model import LearnedRoute
from topology.schema import ValidationError, load_tenant, to_doc
from tests.unit.fixtures import EXT_PORT, NAT, NEXT_HOP_MAC, R1_EXTERNAL, Net, routed_tenant, world
from tests.unit.packets import icmp
from tests.unit.test_gateway_ha import HOSTS, PEER, _fabric

IMPORTING = {**R1_EXTERNAL, "external": {"ip": "203.0.113.10", "gateways": ["hv1", "hv2"],
                                         "importRoutes": ["198.18.0.0/15", "192.168.50.0/24"]}}
PROVIDER = "203.0.113.1"
ADDRESS = {"hv1": "203.0.113.101", "hv2": "203.0.113.102", "hv3": "203.0.113.103"}


SNAT_ALL = [{**NAT[0], "cidr": "10.0.0.0/16"}, NAT[1]]  # db2 (hv3) is SNATed too


def doc(name="shop", router=IMPORTING, nat=SNAT_ALL):
    return routed_tenant(name, router=router, nat=nat)


def learned(*prefixes, peer=PROVIDER):
    return tuple(LearnedRoute(ipaddress.IPv4Network(p), ipaddress.IPv4Address(PROVIDER), peer, 65001)
                 for p in prefixes)


def net_with(routes=(), router=IMPORTING):
    tenants = world(doc(router=router), hosts=HOSTS)
    t, a = tenants["shop"]
    r = dataclasses.replace(t.router("r1"), learned=routes)
    tenants["shop"] = (dataclasses.replace(t, routers=(r,)), a)
    return Net(tenants, hosts=HOSTS)


def ping(n, port, dst):
    t, a = n.tenants["shop"]
    p = t.port(port)
    return _fabric(n).send(p.host, a.ofport[port], icmp(p.mac, t.router_of(p.switch)[1].mac, str(p.ip), dst))


def test_import_routes_parse_round_trip_and_are_refused_with_the_field():
    t = load_tenant(doc(), HOSTS.keys())
    r = t.router("r1")
    assert r.import_routes == (ipaddress.IPv4Network("198.18.0.0/15"), ipaddress.IPv4Network("192.168.50.0/24"))
    assert r.imports(ipaddress.IPv4Network("198.19.7.0/24")) and not r.imports(ipaddress.IPv4Network("198.0.0.0/8"))
    assert to_doc(t)["spec"]["routers"][0]["external"]["importRoutes"] == ["198.18.0.0/15", "192.168.50.0/24"]
    assert load_tenant(doc(router=R1_EXTERNAL), HOSTS.keys()).router("r1").import_routes is None
    for bad, path, reason in (("198.18.0.0/15", "importRoutes", "must be a list of IPv4 prefixes"),
                              (["198.18.0.1/15"], "importRoutes[0]", "is not an IPv4 prefix"),
                              (["10.0.0.0/8", "10.0.0.0/8"], "importRoutes[1]", "listed twice")):
        ext = {**IMPORTING["external"], "importRoutes": bad}
        with pytest.raises(ValidationError) as e:
            load_tenant(doc(router={**IMPORTING, "external": ext}), HOSTS.keys())
        assert any(p == f"spec.routers[0].external.{path}" and reason in m for p, m in e.value.errors), e.value.errors


def test_an_importing_router_has_no_default_route_until_one_is_learned():
    assert ping(net_with(), "db2", "198.18.0.1") == []  # nothing learned: no way out
    (d,) = ping(net_with(learned("198.18.0.0/24")), "db2", "198.18.0.1")
    assert (d.host, d.port, d.packet["ipv4_src"], d.packet["eth_dst"]) == ("hv1", EXT_PORT, "203.0.113.10",
                                                                             NEXT_HOP_MAC)
    assert ping(net_with(learned("198.18.0.0/24")), "db2", "198.19.0.1") == []  # not learned: still no route
    (d,) = ping(net_with(learned("0.0.0.0/0")), "db2", "8.8.8.8")  # a learned default route
    assert d.port == EXT_PORT
    # a router that imports nothing keeps its default route
    (d,) = ping(net_with(router=R1_EXTERNAL), "db2", "198.18.0.1")
    assert d.port == EXT_PORT


def test_static_routes_beat_learned_ones_of_the_same_length_and_longest_prefix_wins():
    n = net_with(learned("192.168.50.0/24", "192.168.50.128/25"))
    t, a = n.tenants["shop"]
    (d,) = ping(n, "web1", "192.168.50.7")  # static /24 via db2 beats the learned /24
    assert (d.host, d.port) == ("hv3", a.ofport["db2"]), d
    (d,) = ping(n, "web1", "192.168.50.200")  # the learned /25 is longer
    assert d.port == EXT_PORT, d


def test_learned_flows_say_where_they_come_from():
    n = net_with(learned("198.18.0.0/24"))
    rules = {f.rule for fl in n.flows.values() for f in fl.values()}
    assert "router r1: 198.18.0.0/24 learned from 203.0.113.1 (AS 65001) via 203.0.113.1" in rules
    assert not any("default route" in r for r in rules)


# -- which routes a router takes in, and what is announced from where ---------------------

class FakeSpeaker:
    def __init__(self, routes):
        self.routes, self.sent = routes, None

    def learned(self):
        return list(self.routes)

    def status(self):
        return [{"state": "established", "since": 0, "eor_received": True}]

    def announce(self, routes):
        self.sent = dict(routes)


class Entry:
    def __init__(self, t):
        self.tenant = t


class Core(RoutesMixin, GatewaysMixin):
    """What routes.py needs of the controller's Core: hosts, tenants, placement, liveness."""

    def __init__(self, docs, rib, live=None):
        self.hosts = {h: HostRecord(h, HOSTS[h].pa, i, {"external": {
            "name": "external", "ofport": EXT_PORT, "next_hop": PROVIDER, "next_hop_mac": NEXT_HOP_MAC,
            "network": "203.0.113.0/24", "address": ADDRESS[h]}, "peer_port": PEER[h]})
            for i, h in enumerate(HOSTS, 1)}
        self.tenants = {n: Entry(t) for n, (t, _) in world(*docs, hosts=HOSTS).items()}
        self.bgp = Bgp()
        self.bgp.config = {"external": {"asn": 65000}}
        self.bgp.speakers = {"external": FakeSpeaker(rib)}
        self.state = {h: types.SimpleNamespace(session=object()) for h in HOSTS}  # every switch connected
        self.mutex = threading.RLock()
        self._live = live or {}

    def _placement(self):
        return HOSTS

    def liveness(self):
        return self._live

    def leading(self):
        return True

    def clock(self):
        return 0.0


def rib(*rows):
    return [Learned(p, nh, PROVIDER, 65001, (65001,)) for p, nh in rows]


def twin_docs():
    twin_nat = [SNAT_ALL[0], {**SNAT_ALL[1], "externalIp": "203.0.113.21"}]
    twin_router = {**IMPORTING, "external": {**IMPORTING["external"], "ip": "203.0.113.20"}}
    return doc("shop"), doc("twin", router=twin_router, nat=twin_nat)


def test_a_router_takes_in_what_its_filters_allow_and_never_a_route_to_another_tenants_address():
    c = Core(twin_docs(), rib(("198.18.0.0/24", PROVIDER), ("10.9.0.0/16", PROVIDER),
                              ("203.0.113.21/32", PROVIDER), ("198.19.0.0/24", "203.0.113.9"),
                              ("198.18.0.0/16", PROVIDER)))
    got = {n: c.learned_for(e.tenant) for n, e in c.tenants.items()}
    for name in ("shop", "twin"):  # twins: the same routes, each in its own router
        assert [str(x.prefix) for x in got[name]["taken"]["r1"]] == ["198.18.0.0/16", "198.18.0.0/24"], got[name]
    # 10.9/16 is outside the filters; 203.0.113.21/32 is the twin's floating IP (198.18/15
    # does not cover it, but a tenant importing 0.0.0.0/0 would be refused it); the
    # 198.19 route's next hop is not the provider network's gateway
    assert got["shop"]["refused"] == {"r1": [("198.19.0.0/24", "next hop 203.0.113.9 is not the provider "
                                                                "network's gateway 203.0.113.1")]}
    c2 = Core(twin_docs(), rib(("203.0.113.21/32", PROVIDER), ("203.0.113.102/32", PROVIDER)))
    everything = {**IMPORTING, "external": {**IMPORTING["external"], "importRoutes": ["0.0.0.0/0"]}}
    t = load_tenant(doc(router=everything), HOSTS.keys())
    out = c2.learned_for(t)
    assert out["taken"] == {"r1": ()}
    assert [p for p, _ in out["refused"]["r1"]] == ["203.0.113.21/32", "203.0.113.102/32"]
    assert {w for _, w in out["refused"]["r1"]} == {"covers an address the platform carries"}


def test_with_learned_compiles_them_in_and_drops_them_when_the_filter_goes():
    c = Core(twin_docs(), rib(("198.18.0.0/24", PROVIDER)))
    t = c.with_learned(c.tenants["shop"].tenant)
    assert [str(x.prefix) for x in t.router("r1").learned] == ["198.18.0.0/24"]
    plain = dataclasses.replace(t, routers=(dataclasses.replace(t.router("r1"), import_routes=None),))
    assert c.with_learned(plain).router("r1").learned == ()


def test_announcements_name_the_host_that_carries_each_address_and_follow_the_active_gateway():
    c = Core(twin_docs(), [])
    got = c.announcements()["external"]
    # r1's address and the twin's: the first gateway hv1; the floating IPs: db1's host hv2 (distributed)
    assert got == {"203.0.113.10/32": ADDRESS["hv1"], "203.0.113.11/32": ADDRESS["hv2"],
                   "203.0.113.20/32": ADDRESS["hv1"], "203.0.113.21/32": ADDRESS["hv2"]}, got
    # hv1 is down for every host that watches it: its routers' addresses move to hv2
    dead = {h: {PEER["hv1"]: False, PEER["hv2"]: True, PEER["hv3"]: True} for h in ("hv2", "hv3")}
    c._live = dead
    got = c.announcements()["external"]
    assert got["203.0.113.10/32"] == got["203.0.113.20/32"] == ADDRESS["hv2"], got
    c.routes_tick()
    assert c.bgp.speakers["external"].sent == got


def test_bgp_configuration_is_checked_field_by_field():
    good = load_config({"bgp": {"external": {"asn": 65000, "peers": [{"address": "203.0.113.1", "asn": 65001}]}}})
    assert good == {"external": {"asn": 65000, "routerId": None, "holdTime": 9,
                                 "peers": [{"address": "203.0.113.1", "asn": 65001, "port": 179}]}}
    for bad, says in (({"bgp": {}}, "bgp: must map"),
                      ({"bgp": {"x": {"asn": 0, "peers": []}}}, "bgp.x.asn: 0 is not an AS number"),
                      ({"bgp": {"x": {"asn": 1, "peers": [{"address": "nope", "asn": 2}]}}},
                       "bgp.x.peers[0].address: 'nope' is not an IPv4 address"),
                      ({"bgp": {"x": {"asn": 1, "peers": [], "color": 1}}}, "bgp.x: unknown key(s) color"),
                      ({"bgp": {"x": {"asn": 1, "peers": []}}}, "bgp.x.peers: must list")):
        with pytest.raises(ValueError) as e:
            load_config(bad)
        assert says in str(e.value), (says, str(e.value))


def test_a_hosts_provider_address_is_checked():
    hosts = {"hv1": HostRecord("hv1", "192.0.2.11", 1, {"external": {"address": "203.0.113.101"}})}
    base = {"network": "203.0.113.0/24", "next_hop": PROVIDER}
    check_host_address({"external": {**base, "address": "203.0.113.102"}}, "hv2", hosts)
    for addr, says in (("203.0.113.101", "is host hv1's"), ("198.51.100.7", "is not a host address"),
                       (PROVIDER, "is the provider network's gateway"), ("x", "is not an IPv4 address")):
        with pytest.raises(ApiError) as e:
            check_host_address({"external": {**base, "address": addr}}, "hv2", hosts)
        assert says in str(e.value), str(e.value)
