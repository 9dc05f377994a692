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

    def status(self):  # Speaker.status()'s keys
        return [{"peer": PROVIDER, "asn": 65001, "state": "established", "since": 0.0, "received": len(self.routes),
                 "sent": 0, "error": None, "graceful_restart": True, "eor_received": True}]

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


def rib(*rows, peer=PROVIDER, path=(65001,)):
    return [Learned(p, nh, peer, 65001, path) for p, nh in rows]


def twin_docs():
    twin_nat = [SNAT_ALL[0], {**SNAT_ALL[1], "externalIp": "203.0.113.21"}]
    twin_router = {**IMPORTING, "external": {**IMPORTING["external"], "ip": "203.0.113.20"}}
    return doc("shop"), doc("twin", router=twin_router, nat=twin_nat)


def test_a_router_takes_in_what_its_filters_allow_and_never_a_route_to_another_tenants_address():
    c = Core(twin_docs(), rib(("198.18.0.0/24", PROVIDER), ("10.9.0.0/16", PROVIDER),
                              ("198.19.0.0/24", "203.0.113.9"), ("198.18.0.0/16", PROVIDER)))
    got = {n: c.learned_for(e.tenant) for n, e in c.tenants.items()}
    for name in ("shop", "twin"):  # twins: the same routes, each in its own router
        assert [str(x.prefix) for x in got[name]["taken"]["r1"]] == ["198.18.0.0/16", "198.18.0.0/24"], got[name]
    # 10.9/16 is outside the filters; the 198.19 route's next hop is not the provider
    # network's gateway (our way out sends to the gateway's MAC)
    assert got["shop"]["refused"] == {"r1": [("198.19.0.0/24", "next hop 203.0.113.9 is not the provider "
                                                                "network's gateway 203.0.113.1")]}
    everything = {**IMPORTING, "external": {**IMPORTING["external"], "importRoutes": ["0.0.0.0/0"]}}
    t = load_tenant(doc(router=everything), HOSTS.keys())
    c2 = Core(twin_docs(), rib(("203.0.113.21/32", PROVIDER), ("203.0.113.102/32", PROVIDER),
                               ("203.0.113.0/25", PROVIDER), ("0.0.0.0/0", PROVIDER), ("10.0.1.128/25", PROVIDER),
                               ("10.0.0.0/8", PROVIDER)))
    out = c2.learned_for(t)
    # a default route takes nothing from anyone; the twin's floating IP, a host's address or
    # a part of the provider network holding them would beat the connected provider
    # network: refused; so is a route into one of the router's own networks (one that
    # holds them, 10/8, takes nothing from them: connected routes are longer)
    assert [str(x.prefix) for x in out["taken"]["r1"]] == ["0.0.0.0/0", "10.0.0.0/8"], out
    assert dict(out["refused"]["r1"]) == {
        "203.0.113.21/32": "covers an address the platform carries",
        "203.0.113.102/32": "covers an address the platform carries",
        "203.0.113.0/25": "covers an address the platform carries",
        "10.0.1.128/25": "lies inside the router's connected network 10.0.1.0/24 (db)"}, out["refused"]


def test_the_best_route_is_chosen_among_those_that_may_be_taken():
    # a second provider router (.2) offers a shorter AS path, but its next hop is not the
    # network's gateway: the gateway's longer path is taken, not nothing
    two = rib(("198.18.0.0/24", PROVIDER), peer=PROVIDER, path=(65001, 65010)) \
        + rib(("198.18.0.0/24", "203.0.113.2"), peer="203.0.113.2", path=(65001,))
    c = Core(twin_docs(), two)
    out = c.learned_for(c.tenants["shop"].tenant)
    (lr,) = out["taken"]["r1"]
    assert (str(lr.prefix), lr.peer) == ("198.18.0.0/24", PROVIDER) and out["refused"] == {}, out


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
    held = {"203.0.113.11": "shop"}
    check_host_address({"external": {**base, "address": "203.0.113.102"}}, "hv2", hosts, held)
    for addr, says in (("203.0.113.101", "is host hv1's"), ("198.51.100.7", "is not a host address"),
                       (PROVIDER, "is the provider network's gateway"), ("x", "is not an IPv4 address"),
                       ("203.0.113.11", "belongs to tenant shop")):
        with pytest.raises(ApiError) as e:
            check_host_address({"external": {**base, "address": addr}}, "hv2", hosts, held)
        assert says in str(e.value), str(e.value)


def test_no_tenant_takes_the_bgp_peers_or_the_platforms_router_id(tmp_path):
    from controller.server.core import Core as RealCore
    from controller.state.store import SqliteStore
    from tests.unit.test_golden import DOC as SHOP  # router external 203.0.113.10, floating IP .11
    c = RealCore(SqliteStore(str(tmp_path / "desired.db")))
    c.bgp.config = load_config({"bgp": {"external": {"asn": 65000, "routerId": "203.0.113.253",
                                                     "peers": [{"address": "203.0.113.2", "asn": 65001}]}}})
    ext = {"ofport": 2, "network": "203.0.113.0/24", "next_hop": PROVIDER, "next_hop_mac": NEXT_HOP_MAC}
    c.register_host("hv1", "192.0.2.11", 0x101, {"kind": "test", "external": {**ext, "address": "203.0.113.101"}})
    for i in (2, 3):
        c.register_host(f"hv{i}", f"192.0.2.{10 + i}", 0x100 + i, {"kind": "test"})
    for bad, why in (("203.0.113.2", "the BGP peer of provider network external"),
                     ("203.0.113.253", "the platform's BGP router id"),
                     ("203.0.113.101", "host hv1's own address")):
        with pytest.raises(ApiError) as e:
            c.create(SHOP.replace("203.0.113.11", bad))
        assert why in dict(e.value.errors)["spec.nat[1].externalIp"], e.value.errors
    c.create(SHOP)
    with pytest.raises(ApiError) as e:  # and no host joins with a tenant's address
        c.register_host("hv4", "192.0.2.14", 0x104, {"kind": "test", "external": {**ext, "address": "203.0.113.11"}})
    assert "belongs to tenant shop" in str(e.value)


def test_a_new_leader_or_a_restart_compiles_what_the_last_leader_learned(tmp_path):
    """The store's runtime state stands in until a session is complete: the switches keep
    the learned routes' flows through a restart or a failover (nothing to send)."""
    from controller.server.core import Core as RealCore
    from controller.server.routes import STATE_NAME
    from controller.state.store import SqliteStore
    store = SqliteStore(str(tmp_path / "desired.db"))
    c = RealCore(store)
    c.bgp.config = load_config({"bgp": {"external": {"asn": 65000, "peers": [{"address": PROVIDER, "asn": 65001}]}}})
    ext = {"name": "external", "ofport": 2, "network": "203.0.113.0/24", "next_hop": PROVIDER,
           "next_hop_mac": NEXT_HOP_MAC}
    for i in (1, 2, 3):
        c.register_host(f"hv{i}", f"192.0.2.{10 + i}", 0x100 + i,
                        {"kind": "test", "external": {**ext, "address": f"203.0.113.{100 + i}"}})
    c.create(doc())
    assert c.tenants["shop"].tenant.router("r1").learned == ()
    store.put_runtime_state(STATE_NAME, {"external": [{"prefix": "198.18.0.0/24", "next_hop": PROVIDER,
                                                       "peer": PROVIDER, "peer_asn": 65001, "as_path": [65001]}]})
    c2 = RealCore(store)  # a restart (or a follower about to lead): what it compiled from the store alone
    c2.bgp.config = c.bgp.config
    before = {h: set(f) for h, f in c2.tenants["shop"].flows.items()}
    with c2.mutex:
        c2.load_learned()
    e = c2.tenants["shop"]
    assert [str(x.prefix) for x in e.tenant.router("r1").learned] == ["198.18.0.0/24"]
    added = {f.rule for h, fl in e.flows.items() for f in fl if f not in before.get(h, ())}
    assert "router r1: 198.18.0.0/24 learned from 203.0.113.1 (AS 65001) via 203.0.113.1" in added, added
    # a session that is up but not complete yet leaves the cache in place; End-of-RIB ends it
    sp = FakeSpeaker([])
    sp.status = lambda: [{"state": "established", "since": 0.0, "graceful_restart": True, "eor_received": False}]
    c2.bgp.speakers = {"external": sp}
    assert [x.prefix for x in c2._rib()["external"]] == ["198.18.0.0/24"]
    sp.status = lambda: [{"state": "established", "since": 0.0, "graceful_restart": True, "eor_received": True}]
    assert c2._rib()["external"] == [] and not c2.bgp.cache
