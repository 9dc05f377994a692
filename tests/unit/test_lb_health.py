"""Load-balancer health checks without root: the schema, the state machine, the probes
and their answers, the compiled groups without a down backend, and a backend found down
(and up again) taken through the change path on fake switches."""
import ipaddress
import struct

import pytest

from controller.compile.compiler import compile_tenant
from controller.layers.lb import monitor_address
from controller.packetin import health
from controller.packetin.health import DOWN, UNKNOWN, UP, Monitor, parse_answer, refusal, step, tcp_frame
from dataplane.match_action import CONTROLLER, Group, Output, groups_of
from topology import schema
from topology.model import HealthCheck
from tests.unit.fixtures import HOSTS, Net, routed_tenant, world
from tests.unit.packets import tcp

BACKENDS = ["web2:8080", "db1:8080", "db2:8080"]
CHECK = {"interval": 1, "timeout": 0.5, "successCount": 2, "failureCount": 2}


def lb_doc(name="shop", backends=BACKENDS, check=CHECK, protocol="tcp"):
    lb = {"name": "web-lb", "vip": "10.0.0.100", "protocol": protocol, "port": 80, "backends": backends}
    if check is not None:
        lb["healthCheck"] = check
    return routed_tenant(name, loadBalancers=[lb])


# --- schema ---------------------------------------------------------------------------

def errors_of(check):
    with pytest.raises(schema.ValidationError) as e:
        schema.load_tenant(lb_doc(check=check))
    return dict(e.value.errors)


def test_health_check_is_parsed_with_defaults_and_kept_by_to_doc():
    t = schema.load_tenant(lb_doc(check={"interval": 0.5, "timeout": 0.25}))
    hc = t.load_balancers[0].health_check
    d = HealthCheck()
    assert hc == HealthCheck(0.5, 0.25, d.success_count, d.failure_count)
    again = schema.validate(schema.to_doc(t))
    assert again == t
    assert schema.load_tenant(lb_doc(check={})).load_balancers[0].health_check == HealthCheck()
    assert schema.load_tenant(lb_doc(check=None)).load_balancers[0].health_check is None


@pytest.mark.parametrize("check,path,words", [
    ({"interval": 0}, "interval", "must be > 0"),
    ({"interval": -1}, "interval", "must be > 0"),
    ({"interval": "5s"}, "interval", "must be > 0"),
    ({"timeout": 0}, "timeout", "must be > 0"),
    ({"interval": 1, "timeout": 2}, "timeout", "at most the interval"),
    ({"successCount": 0}, "successCount", "integer from 1"),
    ({"failureCount": 1.5}, "failureCount", "integer from 1"),
    ({"failureCount": True}, "failureCount", "integer from 1"),
    ({"interval": 99999}, "interval", "at most 3600"),
    ({"retries": 3}, "retries", "unknown key"),
])
def test_bad_health_check_values_name_the_field(check, path, words):
    errs = errors_of(check)
    key = f"spec.loadBalancers[0].healthCheck.{path}"
    assert key in errs, errs
    assert words in errs[key], errs


def test_a_health_check_that_is_not_a_mapping_is_refused():
    errs = errors_of([1, 2])
    assert "must be a mapping" in errs["spec.loadBalancers[0].healthCheck"], errs


def test_backends_found_down_are_not_in_the_spec():
    import dataclasses
    t = schema.load_tenant(lb_doc())
    lb = t.load_balancers[0]
    down = dataclasses.replace(t, load_balancers=(dataclasses.replace(lb, down=(("db2", 8080),)),))
    assert schema.to_doc(down) == schema.to_doc(t)
    assert down.load_balancers[0].live == (("web2", 8080), ("db1", 8080))


# --- the state machine -------------------------------------------------------------------

def run(results, s=2, f=3):
    state, ok_n, bad_n, seen = UNKNOWN, 0, 0, []
    for ok in results:
        state, ok_n, bad_n = step(state, ok_n, bad_n, ok, s, f)
        seen.append(state)
    return seen


def test_state_machine_needs_failure_count_failures_in_a_row_to_go_down():
    assert run([False, False, True, False, False]) == [UNKNOWN] * 5  # a success in between starts again
    assert run([False, False, False]) == [UNKNOWN, UNKNOWN, DOWN]
    assert run([False, False, False, False]) == [UNKNOWN, UNKNOWN, DOWN, DOWN]


def test_state_machine_needs_success_count_successes_to_come_back():
    seen = run([False] * 3 + [True, False, True, True])
    assert seen[2] == DOWN
    assert seen[3:] == [DOWN, DOWN, DOWN, UP]  # one success, a failure, then two in a row
    assert run([True, True]) == [UNKNOWN, UP]
    assert run([True], s=1) == [UP]


# --- probes and answers ----------------------------------------------------------------------

def mon_world(*names, check=CHECK, protocol="tcp"):
    return world(*(lb_doc(n, check=check, protocol=protocol) for n in names))


def synced(m, w):
    m.sync({n: t for n, (t, _) in w.items()})
    return {n: a.ofport for n, (_, a) in w.items()}


def syn_ack_for(frame, ack_bump=1):
    """The backend's SYN-ACK to a probe (a TCP SYN frame)."""
    ip = 14
    src, dst = frame[ip + 12:ip + 16], frame[ip + 16:ip + 20]
    sport, dport, seq = struct.unpack_from("!HHI", frame, ip + 20)
    return tcp_frame(":".join(f"{b:02x}" for b in frame[0:6]), ":".join(f"{b:02x}" for b in frame[6:12]),
                     str(ipaddress.IPv4Address(dst)), str(ipaddress.IPv4Address(src)), dport, sport,
                     12345, seq + ack_bump, health.TCP_SYN | health.TCP_ACK)


def test_a_probe_is_a_syn_from_the_monitor_address_to_the_backend_on_its_host():
    w = mon_world("shop")
    m = Monitor()
    ofports = synced(m, w)
    probes = m.due(0.0, ofports, set(HOSTS))
    t, a = w["shop"]
    assert sorted((p.host, p.ofport) for p in probes) == sorted(
        (t.port(n).host, a.ofport[n]) for n in ("web2", "db1", "db2"))
    for p in probes:
        f = p.frame
        dst_ip = str(ipaddress.IPv4Address(f[30:34]))
        port = next(q for q in t.ports if str(q.ip) == dst_ip)
        mon_ip, mon_mac = monitor_address(t, port.switch)
        assert f[0:6] == bytes(int(x, 16) for x in port.mac.split(":"))
        assert f[6:12] == bytes(int(x, 16) for x in mon_mac.split(":"))
        assert str(ipaddress.IPv4Address(f[26:30])) == str(mon_ip)
        sport, dport, _seq, _ack, _off, flags = struct.unpack_from("!HHIIBB", f, 34)
        assert dport == 8080 and flags == health.TCP_SYN
        assert health._csum(f[14:34]) == 0  # a valid IPv4 header checksum
    assert m.due(0.1, ofports, set(HOSTS)) == []  # one probe at a time per backend
    assert Monitor().due(0.0, ofports, set()) == []  # no switch to send from: no probe


def test_answers_decide_and_a_syn_ack_is_reset():
    w = mon_world("shop")
    m = Monitor()
    ofports = synced(m, w)
    for rnd in range(2):
        now = rnd * 1.0
        probes = m.due(now, ofports, set(HOSTS))
        assert len(probes) == 3
        for p in probes:
            if p.frame[30:34] == ipaddress.IPv4Address("10.0.1.20").packed:  # db2 says nothing
                continue
            sa = syn_ack_for(p.frame)
            (rst,) = m.answer("shop", sa, wall=100.0 + now)
            assert struct.unpack_from("!B", rst, 47)[0] == health.TCP_RST
            assert struct.unpack_from("!I", rst, 38)[0] == struct.unpack_from("!I", sa, 42)[0]  # seq = their ack
            assert m.answer("shop", sa, wall=100.0) == []  # a retransmission decides nothing
        m.expire(now + 0.6, wall=100.6 + now)
    rep = m.report("shop")
    assert rep[("web-lb", "db2", 8080)]["state"] == DOWN
    assert rep[("web-lb", "db2", 8080)]["since"] == 101.6
    assert rep[("web-lb", "web2", 8080)]["state"] == UP
    assert m.down("shop") == {"web-lb": (("db2", 8080),)}


def test_a_reset_is_a_failure():
    w = mon_world("shop")
    m = Monitor()
    ofports = synced(m, w)
    for rnd in range(2):
        for p in m.due(rnd * 1.0, ofports, set(HOSTS)):
            sport, dport, seq = struct.unpack_from("!HHI", p.frame, 34)
            src, dst = p.frame[26:30], p.frame[30:34]
            rst = tcp_frame("02:00:00:00:00:01", "02:00:00:00:00:02", str(ipaddress.IPv4Address(dst)),
                            str(ipaddress.IPv4Address(src)), dport, sport, 0, seq + 1,
                            health.TCP_RST | health.TCP_ACK)
            assert parse_answer(rst)[0] == "rst"
            assert m.answer("shop", rst, 0.0) == []
    assert m.down("shop") == {"web-lb": (("db1", 8080), ("db2", 8080), ("web2", 8080))}


def test_udp_a_port_unreachable_is_a_failure_and_silence_a_success():
    w = mon_world("shop", protocol="udp")
    m = Monitor()
    ofports = synced(m, w)
    for rnd in range(2):
        for p in m.due(rnd * 1.0, ofports, set(HOSTS)):
            if p.frame[30:34] == ipaddress.IPv4Address("10.0.0.12").packed:  # web2: nothing listens
                quoted = p.frame[14:14 + 28]
                icmp = struct.pack("!BBHI", 3, 3, 0, 0) + quoted
                frame = p.frame[6:12] + p.frame[0:6] + b"\x08\x00" + health._ipv4(
                    p.frame[30:34], p.frame[26:30], 1, icmp)
                assert parse_answer(frame)[0] == "unreachable"
                m.answer("shop", frame, 0.0)
        m.expire(rnd * 1.0 + 0.6, 0.0)
    states = {k[1]: v["state"] for k, v in m.report("shop").items()}
    assert states == {"web2": DOWN, "db1": UP, "db2": UP}


def test_twins_keep_their_own_health():
    """Two tenants with the same spec: the same addresses, names and ports. Tenant
    blue's db2 stays silent; red's answers: only blue's goes down."""
    w = mon_world("blue", "red")
    m = Monitor()
    ofports = synced(m, w)
    for rnd in range(2):
        probes = m.due(rnd * 1.0, ofports, set(HOSTS))
        assert len(probes) == 6
        assert len({(p.host, p.ofport) for p in probes}) == 6  # each to its own workload
        for p in probes:
            silent = p.tenant == "blue" and p.frame[30:34] == ipaddress.IPv4Address("10.0.1.20").packed
            if not silent:
                m.answer(p.tenant, syn_ack_for(p.frame), 0.0)
        m.expire(rnd * 1.0 + 0.6, 0.0)
    assert m.down("blue") == {"web-lb": (("db2", 8080),)}
    assert m.down("red") == {}
    # an answer on red's switch to blue's probe (the same addresses) decides nothing of blue's
    p = next(p for p in m.due(2.0, ofports, set(HOSTS)) if p.tenant == "blue")
    assert m.answer("red", syn_ack_for(p.frame), 0.0) == []
    waiting = [k for k, b in m.backends.items() if k[0] == "blue" and b.outstanding is not None]
    assert len(waiting) == 3  # red's answer took none of blue's probes


def test_backends_removed_from_the_spec_are_forgotten():
    m = Monitor()
    synced(m, mon_world("shop"))
    assert len(m.report("shop")) == 3
    synced(m, world(lb_doc(backends=BACKENDS[:2])))
    assert {k[1] for k in m.report("shop")} == {"web2", "db1"}
    m.sync({})
    assert m.report("shop") == {}


# --- refusing a connection when every backend is down ---------------------------------------

def test_every_backend_down_a_syn_gets_a_reset_from_the_vip():
    syn = tcp_frame("02:00:0a:00:00:0b", "02:02:0a:00:00:64", "10.0.0.11", "10.0.0.100", 41000, 80, 1000, 0,
                    health.TCP_SYN)
    rst = refusal(syn)
    assert rst[0:6] == syn[6:12] and rst[6:12] == syn[0:6]
    assert rst[26:30] == syn[30:34] and rst[30:34] == syn[26:30]
    sport, dport, seq, ack, _off, flags = struct.unpack_from("!HHIIBB", rst, 34)
    assert (sport, dport, seq, ack, flags) == (80, 41000, 0, 1001, health.TCP_RST | health.TCP_ACK)
    assert health._l4_csum(rst[26:30], rst[30:34], 6, rst[34:]) == 0  # a valid TCP checksum
    assert refusal(rst) is None  # never a reset for a reset


def test_every_backend_down_a_udp_datagram_gets_port_unreachable_from_the_vip():
    dgram = health.udp_frame("02:00:0a:00:00:0b", "02:02:0a:00:00:64", "10.0.0.11", "10.0.0.100", 41000, 53,
                             b"query")
    icmp = refusal(dgram)
    assert icmp[0:6] == dgram[6:12] and icmp[23] == 1  # back to the sender, ICMP
    assert icmp[26:30] == dgram[30:34] and icmp[30:34] == dgram[26:30]
    assert (icmp[34], icmp[35]) == (3, 3)  # destination unreachable, port unreachable
    assert health._csum(icmp[34:]) == 0
    assert icmp[42:42 + 28] == dgram[14:14 + 28]  # the datagram's IP header and 8 bytes, quoted
    # what a backend says the same way is a health probe's failure
    kind, ip, l4, sport, _ = parse_answer(icmp[:26] + dgram[30:34] + icmp[30:])
    assert (kind, l4, sport) == ("unreachable", 53, 41000)


# --- the compiler ---------------------------------------------------------------------------

def _lb_dnat(flows):
    return [f for fl in flows.values() for f in fl if f.table.name == "lb_dnat" and f.priority == 100]


def compiled(down=(), check=CHECK):
    import dataclasses
    (t, a), = world(lb_doc(check=check)).values()
    lb = t.load_balancers[0]
    t = dataclasses.replace(t, load_balancers=(dataclasses.replace(lb, down=tuple(down)),))
    return t, a, compile_tenant(t, a, HOSTS)


def test_compiled_group_leaves_out_a_backend_found_down():
    t, a, flows = compiled()
    for f in _lb_dnat(flows):
        (g,) = [x for x in f.actions if isinstance(x, Group)]
        assert len(g.buckets) == 3
    t, a, flows = compiled(down=[("db2", 8080)])
    db2 = str(t.port("db2").ip)
    for f in _lb_dnat(flows):
        (g,) = [x for x in f.actions if isinstance(x, Group)]
        assert len(g.buckets) == 2
        assert db2 not in g.buckets_text()
        assert "db2:8080 down" in f.rule
    # every flow is what it was (the same body): only the group's buckets changed
    _, _, before = compiled()
    assert {h: sorted(f.body for f in fl) for h, fl in flows.items()} == \
        {h: sorted(f.body for f in fl) for h, fl in before.items()}
    assert {h: groups_of(fl)[a.group["web-lb"]].buckets_text() for h, fl in flows.items()} != \
        {h: groups_of(fl)[a.group["web-lb"]].buckets_text() for h, fl in before.items()}


def test_every_backend_down_new_connections_go_to_the_controller():
    _, _, flows = compiled(down=[("web2", 8080), ("db1", 8080), ("db2", 8080)])
    for f in _lb_dnat(flows):
        assert not any(isinstance(x, Group) for x in f.actions)
        assert Output(CONTROLLER) in f.actions
        assert "TCP reset" in f.rule


def test_monitor_flows_take_answers_to_the_controller_on_the_backends_hosts():
    t, a, flows = compiled()
    where = {}
    for h, fl in flows.items():
        for f in fl:
            if f.table.name == "lb_monitor":
                where.setdefault(h, []).append(f)
    assert set(where) == {t.port(n).host for n in ("web2", "db1", "db2")}
    _, _, none = compiled(check=None)
    assert not [f for fl in none.values() for f in fl if f.table.name == "lb_monitor"]


def test_simulated_connections_never_reach_a_backend_found_down():
    import dataclasses
    w = world(lb_doc())
    t, a = w["shop"]
    lb = t.load_balancers[0]
    n = Net({"shop": (dataclasses.replace(t, load_balancers=(dataclasses.replace(lb, down=(("db2", 8080),)),)), a)})
    c, _ = n.port("shop", "web1")
    seen = set()
    for sport in range(41000, 41030):
        got = n.send("shop", "web1", tcp(c.mac, lb.mac, str(c.ip), "10.0.0.100", sport, 80))
        seen.add(n.who(got)[0][1])
    assert seen == {"web2", "db1"}, seen


# --- the server: a backend found down goes through the change path, and only there -----

class ProbedSwitch:
    """A fake switch that keeps the packets the controller sends out."""

    def __new__(cls, dpid):
        from controller.switch.fake import FakeSwitch

        class _S(FakeSwitch):
            def __init__(self, dpid):
                super().__init__(dpid)
                self.sent = []

            def packet_out(self, port, frame):
                self.sent.append((port, frame))
        return _S(dpid)


@pytest.fixture
def probed(core):
    now = [0.0]
    core.clock = lambda: now[0]
    core.switches = {}
    for i in (1, 2, 3):
        sw = core.switches[f"hv{i}"] = ProbedSwitch(0x100 + i)
        core.switch_connected(sw)
    return core, now


def _round(core, now, t, silent=(), wall=lambda: 0.0):
    """One probe round at `t`: every probe answered but those to ports in `silent`;
    then the timeouts at t + 0.6."""
    now[0] = t
    for sw in core.switches.values():
        sw.sent.clear()
    core.health_tick(wall)
    for host, sw in core.switches.items():
        for ofport, frame in list(sw.sent):
            if struct.unpack_from("!B", frame, 47)[0] != health.TCP_SYN:
                continue
            name, port = next((n, p) for n, e in core.tenants.items() for p in e.tenant.ports
                              if p.host == host and e.alloc.ofport[p.name] == ofport)
            e = core.tenants[name]
            if (name, port.name) in silent:
                continue
            core.packet_in(sw, "lb_monitor", {"reg13": e.alloc.vni[port.switch]}, ofport, syn_ack_for(frame))
    now[0] = t + 0.6
    core.health_tick(wall)


def _buckets(core, name):
    e = core.tenants[name]
    gid = e.alloc.group["web-lb"]
    return {h: len(sw.group_buckets().get(gid, [])) for h, sw in core.switches.items()
            if gid in sw.group_buckets()}


def test_a_backend_found_down_leaves_the_group_without_touching_the_spec(probed):
    core, now = probed
    core.create(lb_doc())
    rev, doc = core.tenants["shop"].revision, core.store.tenant("shop").doc
    assert set(_buckets(core, "shop").values()) == {3}
    _round(core, now, 0.0, silent={("shop", "db2")})
    assert core.tenants["shop"].tenant.load_balancers[0].down == ()
    _round(core, now, 1.0, silent={("shop", "db2")})
    e = core.tenants["shop"]
    assert e.tenant.load_balancers[0].down == (("db2", 8080),)
    assert set(_buckets(core, "shop").values()) == {2}
    assert e.revision == rev  # nothing stored: health is not intent
    assert core.store.tenant("shop").doc == doc
    # the incremental result is what a full compile of the same tenant gives
    full = compile_tenant(e.tenant, e.alloc, core._placement())
    assert {h: sorted(f.body for f in fl) for h, fl in full.items()} == \
        {h: sorted(f.body for f in fl) for h, fl in e.flows.items()}
    # applying the spec again keeps the backend out
    core.apply(lb_doc())
    assert core.tenants["shop"].tenant.load_balancers[0].down == (("db2", 8080),)
    # stats say so
    (lb,) = core.stats("shop")["loadBalancers"]
    states = {b["name"]: (b["health"]["state"], b["inService"]) for b in lb["backends"]}
    assert states == {"web2": (UP, True), "db1": (UP, True), "db2": (DOWN, False)}
    # it answers again: after successCount answers it is back
    _round(core, now, 2.0)
    assert core.tenants["shop"].tenant.load_balancers[0].down == (("db2", 8080),)
    _round(core, now, 3.0)
    assert core.tenants["shop"].tenant.load_balancers[0].down == ()
    assert set(_buckets(core, "shop").values()) == {3}


def test_a_health_change_that_fails_is_tried_again_later_not_every_tick(probed, monkeypatch):
    from controller.server import change as change_path
    from controller.server.health import RETRY
    core, now = probed
    core.create(lb_doc())
    runs = []
    real = change_path.run

    def refused(c, change, *a, **kw):
        runs.append(now[0])
        raise RuntimeError("refused")
    monkeypatch.setattr(change_path, "run", refused)
    _round(core, now, 0.0, silent={("shop", "db2")})
    _round(core, now, 1.0, silent={("shop", "db2")})  # down at 1.6: the change is refused
    assert runs == [1.6]
    now[0] = 1.6 + RETRY / 2
    core.health_tick(lambda: 0.0)
    assert runs == [1.6]  # not again at once
    monkeypatch.setattr(change_path, "run", real)
    now[0] = 1.6 + RETRY
    core.health_tick(lambda: 0.0)
    assert core.tenants["shop"].tenant.load_balancers[0].down == (("db2", 8080),)


def test_twins_on_the_same_hosts_each_their_own_health(probed):
    core, now = probed
    core.create(lb_doc("blue"))
    core.create(lb_doc("red"))
    for r in range(2):
        _round(core, now, float(r), silent={("blue", "db2")})
    assert core.tenants["blue"].tenant.load_balancers[0].down == (("db2", 8080),)
    assert core.tenants["red"].tenant.load_balancers[0].down == ()
    assert set(_buckets(core, "blue").values()) == {2}
    assert set(_buckets(core, "red").values()) == {3}
