"""Counters by intent without a switch: packets run through the simulator, each flow they
hit counted as OVS counts it, and the counts attributed back to ports and rules."""
import struct
from collections import Counter

import pytest
from os_ken.ofproto import ofproto_v1_3_parser as parser

from controller.analysis import stats
from controller.client.render import log_line as line
from controller.packetin.acl_log import AclLog, five_tuple
from controller.layers.acl import ACL_LOG_METER_BASE
from controller.layers.qos import BUM_METER_BASE
from controller.switch.ofcodec import NXActionControllerMeter, from_action
from controller.compile.pipeline import PIPELINE
from dataplane.match_action import Log, meters_of
from tests.unit.fixtures import Net, port, tenant_doc, tenant_yaml, world
from tests.unit.packets import tcp
from topology.schema import ValidationError, load_tenant

ACLS = [{"name": "no-ssh", "priority": 200, "direction": "to-port", "ports": ["vm2"], "protocol": "tcp",
         "dstPorts": [22], "action": "deny", "log": True},
        {"name": "web-in", "priority": 100, "direction": "to-port", "ports": ["vm2"], "protocol": "tcp",
         "action": "allow", "log": True}]


def twin(name):
    """Twins: switch web, vm1 (hv1) and vm2 (hv2) with fixed MACs, vm2 guarded by logged ACLs."""
    return tenant_doc(name, switches=[{"name": "web", "cidr": "10.0.0.0/24"}], acls=ACLS,
                      ports=[port("vm1", "web", "10.0.0.11", "hv1", mac="02:00:0a:00:00:0b"),
                             port("vm2", "web", "10.0.0.12", "hv2", mac="02:00:0a:00:00:0c")])


class Counting:
    """The twins compiled; packets sent through the fabric; every flow a packet hits on
    a host counted (packets, and 100 bytes each), as a switch's flow stats would."""

    def __init__(self):
        self.net = Net(world(twin("blue"), twin("red")))
        self.hits = {h: Counter() for h in self.net.hosts}

    def send(self, tenant, port, packet, times=1):
        for _ in range(times):
            self.net.fabric.hops.clear()
            self.net.send(tenant, port, packet)
            for host, _in, _pkt, fate in self.net.fabric.hops:
                for hop in fate.path:
                    if hop.flow is not None:
                        self.hits[host][hop.flow.cookie] += 1

    def readings(self, meters=None):
        return {h: stats.Reading([(c, n, n * 100) for c, n in hits.items()], (meters or {}).get(h, {}), {})
                for h, hits in self.hits.items()}

    def flows(self, tenant):
        """{host: [Flow]} of one tenant, as the core keeps them."""
        _, a = self.net.tenants[tenant]
        return {h: [f for f in fl.values() if f.tenant_id == a.tenant_id] for h, fl in self.net.flows.items()}

    def report(self, tenant, book=None, meters=None):
        t, a = self.net.tenants[tenant]
        return stats.report(t, a, self.flows(tenant), self.readings(meters), book)


def _port(r, name):
    return next(p for p in r["ports"] if p["name"] == name)


def _acl(r, name):
    return next(a for a in r["acls"] if a["name"] == name)


def test_packets_count_on_their_rules_and_ports_and_never_on_the_twin():
    c = Counting()
    syn = tcp("02:00:0a:00:00:0b", "02:00:0a:00:00:0c", "10.0.0.11", "10.0.0.12", 40000, 80)
    c.send("blue", "vm1", syn, times=5)  # one connection: 1 new, 4 established
    ssh = tcp("02:00:0a:00:00:0b", "02:00:0a:00:00:0c", "10.0.0.11", "10.0.0.12", 40001, 22)
    c.send("blue", "vm1", ssh, times=3)
    blue, red = c.report("blue"), c.report("red")
    assert _acl(blue, "web-in")["packets"] == 5 and _acl(blue, "web-in")["bytes"] == 500
    assert _acl(blue, "no-ssh")["packets"] == 3
    assert _port(blue, "vm1")["sent"]["packets"] == 8
    assert _port(blue, "vm2")["received"]["packets"] == 5
    assert _port(blue, "vm2")["dropped"]["acl"]["packets"] == 3
    assert _port(blue, "vm1")["dropped"]["acl"]["packets"] == 0
    # the same counts read from the same hosts, attributed to red's (identical) spec: none
    assert all(a["packets"] == 0 for a in red["acls"])
    assert all(p["sent"]["packets"] == p["received"]["packets"] == 0 for p in red["ports"])
    rows = stats.drops(blue)
    assert [(r["reason"], r["name"], r["packets"]) for r in rows] == [("acl", "no-ssh", 3)]


def test_spoofed_source_is_a_port_security_drop_of_the_sender():
    c = Counting()
    c.send("blue", "vm1", tcp("02:00:0a:00:00:0b", "02:00:0a:00:00:0c", "10.0.0.99", "10.0.0.12", 1, 80), times=4)
    blue = c.report("blue")
    assert _port(blue, "vm1")["dropped"]["portSecurity"]["packets"] == 4
    assert _port(blue, "vm1")["sent"]["packets"] == 4
    assert _port(blue, "vm2")["received"]["packets"] == 0


def test_meter_drops_are_the_ports_bum_drops_on_its_host_only():
    c = Counting()
    _, a = c.net.tenants["blue"]
    bum = BUM_METER_BASE
    meters = {"hv1": {bum + a.ofport["vm1"]: (42, 4200)}, "hv2": {bum + a.ofport["vm1"]: (999, 0)}}
    blue = c.report("blue", meters=meters)
    assert _port(blue, "vm1")["dropped"]["bum"] == {"packets": 42, "bytes": 4200}
    assert _port(blue, "vm1")["dropped"]["rateLimit"]["packets"] == 0  # no rateLimitMbps: no meter of its own


def test_book_keeps_the_counts_of_flows_that_left_but_not_of_flows_changed_in_place():
    c = Counting()
    c.send("blue", "vm1", tcp("02:00:0a:00:00:0b", "02:00:0a:00:00:0c", "10.0.0.11", "10.0.0.12", 40000, 80),
           times=6)
    t, a = c.net.tenants["blue"]
    flows = c.flows("blue")
    book = stats.Book()
    first = stats.report(t, a, flows, c.readings(), book)
    assert _port(first, "vm2")["received"]["packets"] == 6
    # vm2 left hv2 (migrated): hv2 holds none of blue's flows and reports none
    moved = {h: fl for h, fl in flows.items() if h != "hv2"}
    r = c.readings()
    r["hv2"] = stats.Reading([])
    again = stats.report(t, a, moved, {h: r[h] for h in moved}, book)
    assert _port(again, "vm2")["received"]["packets"] == 6  # kept, from the last reading
    # a flow modified in place: its cookie changes, its counts carry on on the switch
    book2 = stats.Book()
    stats.report(t, a, flows, c.readings(), book2)
    deliver = next(f for f in flows["hv2"] if ("port", "vm2", "received") in f.stat)
    renamed = {h: list(fl) for h, fl in flows.items()}
    same_identity = type(deliver)(deliver.table, deliver.priority, deliver.match, deliver.actions + (),
                                  deliver.layer_id, deliver.tenant_id, "changed", deliver.stat)
    same_identity.cookie ^= 1  # as if its actions changed: a new cookie, the same identity
    renamed["hv2"] = [same_identity if f is deliver else f for f in flows["hv2"]]
    r = c.readings()
    r["hv2"].flows = [(same_identity.cookie if ck == deliver.cookie else ck, n, b) for ck, n, b in r["hv2"].flows]
    third = stats.report(t, a, renamed, r, book2)
    assert _port(third, "vm2")["received"]["packets"] == 6  # not 12


def test_logged_rules_copy_to_their_tenants_meter():
    c = Counting()
    _, blue = c.net.tenants["blue"]
    _, red = c.net.tenants["red"]
    logs = {h: {a.meter_id for f in fl.values() for a in f.actions if isinstance(a, Log)}
            for h, fl in c.net.flows.items()}
    assert logs["hv2"] == {ACL_LOG_METER_BASE + blue.tenant_id, ACL_LOG_METER_BASE + red.tenant_id}
    assert meters_of(c.net.flows["hv2"].values())[ACL_LOG_METER_BASE + blue.tenant_id] == (50, 50, "pktps")


def test_the_log_action_encodes_as_ovs_controller_with_meter_and_reads_back():
    buf = bytearray()
    NXActionControllerMeter(33554433).serialize(buf, 0)
    assert len(buf) == 24 and struct.unpack_from("!HHIH", buf, 0) == (0xFFFF, 24, 0x2320, 37)
    assert struct.unpack_from("!HHI", buf, 16) == (5, 8, 33554433)  # NXAC2PT_METER_ID
    back = parser.OFPAction.parser(bytes(buf), 0)
    assert from_action(back, PIPELINE) == Log(33554433)
    # another controller action (with a property we never write) is not ours
    other = bytes(buf[:16]) + struct.pack("!HHH2x", 0, 8, 128)  # NXAC2PT_MAX_LEN
    assert type(from_action(parser.OFPAction.parser(other, 0), PIPELINE)).__name__ == "Opaque"


def test_five_tuple_and_log_lines():
    from scapy.all import ICMP, IP, TCP, UDP, Ether, IPv6
    f = five_tuple(bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1234, dport=80)))
    assert f == {"proto": "tcp", "src": "10.0.0.1", "dst": "10.0.0.2", "sport": 1234, "dport": 80}
    assert five_tuple(bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP()))["sport"] == 8
    assert five_tuple(bytes(Ether() / IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=5, dport=53)))["dport"] == 53
    assert five_tuple(b"\x00" * 12 + b"\x08\x06" + b"\x00" * 28) is None  # ARP
    t = load_tenant(twin("blue"), ["hv1", "hv2"])
    log = AclLog(clock=lambda: 1000.0, keep=3)
    for i in range(5):
        log.add("blue", "hv2", t.acls[0], "vm2", bytes(Ether() / IP(src="10.0.0.11", dst="10.0.0.12") /
                                                      TCP(sport=4000 + i, dport=22)))
    got = log.since("blue", 0, 0)
    assert [e["seq"] for e in got] == [3, 4, 5] and log.written["blue"] == 5  # the last 3 kept
    assert log.since("blue", 4, 0)[0]["sport"] == 4004 and log.since("red") == []
    assert "blue no-ssh (to-port, port vm2) DENY  tcp 10.0.0.11:4004 -> 10.0.0.12:22 on hv2" in line(got[-1])


@pytest.mark.parametrize("bad,where", [
    ("{name: a, priority: 1, direction: to-port, action: deny, log: yes-please}", "spec.acls[0].log"),
    ("{name: Bad_Name, priority: 1, direction: to-port, action: deny}", "spec.acls[0].name"),
])
def test_acl_name_and_log_are_checked(bad, where):
    doc = tenant_yaml("blue", "web", [("vm1", "10.0.0.11", "hv1")]).replace(
        "  ports:\n", f"  acls:\n    - {bad}\n  ports:\n", 1)
    with pytest.raises(ValidationError) as e:
        load_tenant(doc, ["hv1"])
    assert where in [p for p, _ in e.value.errors], e.value.errors


def test_two_rules_may_not_share_a_name():
    doc = tenant_yaml("blue", "web", [("vm1", "10.0.0.11", "hv1")]).replace("  ports:\n", """  acls:
    - {name: same, priority: 1, direction: to-port, action: deny}
    - {name: same, priority: 2, direction: to-port, action: deny}
  ports:
""", 1)
    with pytest.raises(ValidationError) as e:
        load_tenant(doc, ["hv1"])
    assert ("spec.acls[1].name", "'same' is also the name of spec.acls[0]") in e.value.errors


def test_a_slow_reading_settling_after_a_newer_one_changes_nothing_kept():
    """A scrape read the switches before vm2 moved and finishes after a quick `stats`
    that read them after: its late settle must not bring the moved flows back, or the
    next read retires them a second time."""
    c = Counting()
    c.send("blue", "vm1", tcp("02:00:0a:00:00:0b", "02:00:0a:00:00:0c", "10.0.0.11", "10.0.0.12", 40000, 80),
           times=6)
    t, a = c.net.tenants["blue"]
    flows = c.flows("blue")
    book = stats.Book()
    stats.report(t, a, flows, c.readings(), book, stamp=book.stamp())
    slow = book.stamp()
    slow_readings = c.readings()  # read before the move
    moved = {h: fl for h, fl in flows.items() if h != "hv2"}
    after = {h: r for h, r in c.readings().items() if h != "hv2"}
    quick = stats.report(t, a, moved, after, book, stamp=book.stamp())
    late = stats.report(t, a, flows, slow_readings, book, stamp=slow)
    again = stats.report(t, a, moved, after, book, stamp=book.stamp())
    for r in (quick, late, again):
        assert _port(r, "vm2")["received"]["packets"] == 6, r["ports"]


def test_a_host_not_read_this_time_counts_as_last_read():
    c = Counting()
    c.send("blue", "vm1", tcp("02:00:0a:00:00:0b", "02:00:0a:00:00:0c", "10.0.0.11", "10.0.0.12", 40000, 80),
           times=4)
    t, a = c.net.tenants["blue"]
    flows = c.flows("blue")
    book = stats.Book()
    full = stats.report(t, a, flows, c.readings(), book, stamp=book.stamp())
    partial = {h: r for h, r in c.readings().items() if h != "hv2"}  # hv2 did not answer
    r = stats.report(t, a, flows, partial, book, errors={"hv2": "no answer"}, stamp=book.stamp())
    assert _port(r, "vm2")["received"] == _port(full, "vm2")["received"]  # vm2 is on hv2
    assert _port(r, "vm1")["sent"] == _port(full, "vm1")["sent"]
    assert r["unread"] == {"hv2": "no answer"}


def test_the_controller_caps_each_tenants_log_lines_and_not_the_twins():
    from controller.packetin import acl_log
    from scapy.all import IP, TCP, Ether
    t = load_tenant(twin("blue"), ["hv1", "hv2"])
    now = [1000.0]
    log = AclLog(clock=lambda: now[0])
    frame = bytes(Ether() / IP(src="10.0.0.11", dst="10.0.0.12") / TCP(sport=1, dport=22))
    for i in range(acl_log.TENANT_LOG_BURST + 300):  # a burst from many hosts at once
        log.add("blue", f"hv{i % 100}", t.acls[0], "vm2", frame)
    assert log.written["blue"] == acl_log.TENANT_LOG_BURST and log.suppressed["blue"] == 300
    assert log.add("red", "hv1", t.acls[0], "vm2", frame) is not None  # the twin has its own budget
    now[0] += 0.1
    got = sum(1 for _ in range(200) if log.add("blue", "hv1", t.acls[0], "vm2", frame))
    assert got == acl_log.TENANT_LOG_PPS // 10  # refilled at the rate


POLICY = {"name": "web-in", "podSelector": {"matchLabels": {"role": "server"}}, "log": True,
          "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                       "ports": [{"protocol": "TCP", "port": 80}]}]}


def policy_twin(name):
    """Twins: vm1 (client, hv1) and vm2 (server, hv2); vm2 takes TCP 80 from clients only, logged."""
    return tenant_doc(name, switches=[{"name": "web", "cidr": "10.0.0.0/24"}], networkPolicies=[POLICY],
                      ports=[port("vm1", "web", "10.0.0.11", "hv1", mac="02:00:0a:00:00:0b", labels={"role": "client"}),
                             port("vm2", "web", "10.0.0.12", "hv2", mac="02:00:0a:00:00:0c", labels={"role": "server"})])


def test_policy_rules_count_connections_and_isolated_ports_count_drops_each_twin_its_own():
    from types import SimpleNamespace
    from controller.server.counters import CountersMixin
    c = Counting.__new__(Counting)
    c.net = Net(world(policy_twin("blue"), policy_twin("red")))
    c.hits = {h: Counter() for h in c.net.hosts}
    allowed = tcp("02:00:0a:00:00:0b", "02:00:0a:00:00:0c", "10.0.0.11", "10.0.0.12", 40000, 80)
    denied = tcp("02:00:0a:00:00:0b", "02:00:0a:00:00:0c", "10.0.0.11", "10.0.0.12", 40001, 22)
    c.send("blue", "vm1", allowed)
    c.send("blue", "vm1", denied, times=3)
    c.send("red", "vm1", denied)
    blue, red = c.report("blue"), c.report("red")
    assert blue["networkPolicies"][0]["rules"] == [{"kind": "Ingress", "index": 0, "connections": 1}]
    vm2 = {p["name"]: p for p in blue["ports"]}["vm2"]
    assert vm2["dropped"]["policy"]["packets"] == 3
    assert {p["name"]: p for p in red["ports"]}["vm2"]["dropped"]["policy"]["packets"] == 1
    assert red["networkPolicies"][0]["connections"] == 0
    assert stats.drops(blue)[0] == {"reason": "network policy (isolated, no rule allows)", "kind": "port",
                                   "name": "vm2", "packets": 3, "host": "hv2"}
    # the log lines: what the allowing rule and the isolated port's drop sent to the controller
    t, a = c.net.tenants["blue"]
    flows = c.flows("blue")
    core = SimpleNamespace(tenants={"blue": SimpleNamespace(tenant=t, flows=flows)},
                           _tid_name={a.tenant_id: "blue"}, _log_index={}, acl_log=AclLog())
    core._log_policy = CountersMixin._log_policy.__get__(core)
    from scapy.all import IP, TCP, Ether
    for pkt, dport in ((dict(allowed, tcp_src=40010), 80), (dict(denied, tcp_src=40011), 22)):  # new connections
        c.net.fabric.hops.clear()
        c.net.send("blue", "vm1", pkt)
        logged = [hop.flow for host, _i, _p, fate in c.net.fabric.hops if host == "hv2" for hop in fate.path
                  if hop.flow is not None and any(isinstance(x, Log) for x in hop.flow.actions)]
        assert len(logged) == 1
        frame = bytes(Ether() / IP(src="10.0.0.11", dst="10.0.0.12") / TCP(sport=40002, dport=dport))
        CountersMixin._log_acl(core, "hv2", logged[0].cookie, frame)
    got = core.acl_log.since("blue")
    assert [(e["rule"], e["verdict"], e["port"], e["direction"]) for e in got] == [
        ("policy web-in ingress[0]", "allow", "vm2", "to-port"),
        ("ingress isolation (web-in)", "deny", "vm2", "to-port")]
    assert "policy web-in ingress[0]" in line(got[0]) and "ALLOW" in line(got[0])
