"""Ports bound by iface-id wherever OVS numbers their interfaces (controller.server.bindings),
on the core with fake switches: the allocation and flows follow an interface on its own
host only, the same iface-id elsewhere is seen but never bound, a port whose interface
goes is down, twins bind their own, a number another port held is given up."""
import time

import pytest

from controller.compile.allocator import InUse
from controller.compile.compiler import compile_world
from controller.server.bindings import Iface, plan
from controller.server.core import Core
from controller.server.errors import ApiError
from controller.spaces.ids import FIRST_OFPORT
from controller.switch.fake import FakeSwitch
from controller.state.store import SqliteStore
from tests.unit.fixtures import BLUE, RED, tenant_yaml


@pytest.fixture
def core(switched_core):
    return switched_core


def canon(flows) -> list[str]:
    return sorted(f.ofctl() for f in flows)


def desired(core) -> dict:
    return {h: canon(d.values()) for h, d in core.desired.items()}


def full(core) -> dict:
    """What a compile from scratch of the core's intent gives."""
    world = compile_world(core._placement(), {n: (e.tenant, e.alloc) for n, e in core.tenants.items()})
    return {h: canon(fl.values()) for h, fl in world.items()}


def ofport(core, tenant, port) -> int:
    return core.tenants[tenant].alloc.ofport[port]


def on_host(core, host) -> dict:
    """(tenant, port) -> allocated ofport of every port on `host`."""
    return {(n, p.name): e.alloc.ofport[p.name] for n, e in core.tenants.items()
            for p in e.tenant.ports if p.host == host}


def shown(core, tenant) -> dict:
    return {p["name"]: p for p in core.show(tenant)["ports"]}


def consistent(core) -> None:
    """Everything kept from the allocation agrees with it: flows with a full compile,
    the switches with the desired flows, the numbers in use, one ofport per port per host,
    and the store with memory."""
    assert desired(core) == full(core)
    for h, sw in core.switches.items():
        assert sw.table == core.desired[h], h
    scratch = InUse()
    for e in core.tenants.values():
        scratch.add(e.tenant, e.alloc)
    assert {h: v for h, v in core.used.ofports.items() if v} == {h: v for h, v in scratch.ofports.items() if v}
    for h in core.hosts:
        numbers = list(on_host(core, h).values())
        assert len(numbers) == len(set(numbers)), (h, numbers)
    for rec in core.store.tenants():
        assert rec.alloc == core.tenants[rec.name].alloc.to_json()


def test_an_interface_at_another_ofport_takes_the_allocation_and_flows_there_on_its_host_only(core):
    core.create(BLUE)
    core.create(RED)
    was = ofport(core, "blue", "vm1")
    other = {h: canon(d.values()) for h, d in core.desired.items() if h != "hv1"}
    red_before = {k: v for k, v in core.tenants["red"].alloc.ofport.items()}
    new = max(on_host(core, "hv1").values()) + 7
    out = core.observe_interfaces("hv1", [(new, "tap-vm1", "blue/vm1")], complete=True)
    assert out["moved"] == {"blue/vm1": {"from": was, "to": new}} and out["bound"] == ["blue/vm1"]
    assert ofport(core, "blue", "vm1") == new
    delivered = [f for f in core.tenants["blue"].flows["hv1"] if f.table.name == "deliver" and f.rule == "port vm1"]
    assert delivered and all(f"output:{new}" in f.ofctl() for f in delivered)
    classified = [f.ofctl() for f in core.tenants["blue"].flows["hv1"] if f.table.name == "classify"]
    assert any(f"in_port={new}," in c for c in classified) and not any(f"in_port={was}," in c for c in classified)
    assert {h: canon(d.values()) for h, d in core.desired.items() if h != "hv1"} == other  # hv1's flows only
    assert core.tenants["red"].alloc.ofport == red_before
    consistent(core)
    vm1 = shown(core, "blue")["vm1"]
    assert vm1["up"] and vm1["ofport"] == new
    assert vm1["seen"] == [{"host": "hv1", "ofport": new, "interface": "tap-vm1", "bound": True}]
    assert not shown(core, "blue")["vm4"]["up"]  # no interface says it is vm4
    again = core.observe_interfaces("hv1", [(new, "tap-vm1", "blue/vm1")], complete=True)
    assert again["moved"] == {}  # carried out: nothing more to do
    restarted = Core(core.store)  # the rebinding is stored: a restart compiles the same flows
    assert {h: canon(d.values()) for h, d in restarted.desired.items()} == desired(core)


def test_the_same_iface_id_on_another_host_is_seen_but_not_bound_and_changes_no_flow(core):
    core.create(BLUE)
    core.observe_interfaces("hv1", [(ofport(core, "blue", "vm1"), "tap-vm1", "blue/vm1")])
    before, alloc = desired(core), dict(core.tenants["blue"].alloc.ofport)
    mods = {h: sw.flow_mods for h, sw in core.switches.items()}
    out = core.observe_interfaces("hv2", [(17, "stray", "blue/vm1"), (FIRST_OFPORT + 1, "x", None)])
    assert out["moved"] == {} and out["bound"] == []
    assert desired(core) == before and core.tenants["blue"].alloc.ofport == alloc
    assert {h: sw.flow_mods for h, sw in core.switches.items()} == mods  # nothing sent to any switch
    vm1 = shown(core, "blue")["vm1"]
    assert vm1["up"] and vm1["host"] == "hv1"
    assert vm1["seen"] == [
        {"host": "hv1", "ofport": alloc["vm1"], "interface": "tap-vm1", "bound": True},
        {"host": "hv2", "ofport": 17, "interface": "stray", "bound": False, "reason": "the port is placed on hv1"}]
    info = core.port_info("blue", "vm1")
    assert info["up"] and info["seen"] == vm1["seen"] and info["ofport"] == alloc["vm1"]
    # alone on the wrong host: still not bound, the port is down
    core.observe_interfaces("hv1", [])
    vm1 = shown(core, "blue")["vm1"]
    assert not vm1["up"] and [s["host"] for s in vm1["seen"]] == ["hv2"] and desired(core) == before


def test_a_port_whose_interface_goes_is_down_and_keeps_its_flows(core):
    core.create(BLUE)
    n = ofport(core, "blue", "vm4")
    core.observe_interfaces("hv1", [(n, "tap-vm4", "blue/vm4")])
    assert shown(core, "blue")["vm4"]["up"]
    before = desired(core)
    core.observe_interfaces("hv1", [(None, "tap-vm4", None)], complete=False)  # a report of one gone
    vm4 = shown(core, "blue")["vm4"]
    assert not vm4["up"] and vm4["seen"] == [] and vm4["ofport"] == n
    assert desired(core) == before
    core.observe_interfaces("hv1", [(n, "tap-vm4", "blue/vm4")], complete=False)
    assert shown(core, "blue")["vm4"]["up"]
    core.observe_interfaces("hv1", [], complete=True)  # a complete read without it
    assert not shown(core, "blue")["vm4"]["up"] and desired(core) == before


def test_a_port_is_down_while_its_switch_is_not_connected(core):
    core.create(BLUE)
    core.observe_interfaces("hv1", [(ofport(core, "blue", "vm1"), "tap-vm1", "blue/vm1")])
    core.switch_disconnected(core.switches["hv1"])
    assert not shown(core, "blue")["vm1"]["up"]
    core.switch_connected(core.switches["hv1"])
    assert shown(core, "blue")["vm1"]["up"]


def test_twins_with_the_same_port_names_each_bind_their_own_even_swapping_numbers(core):
    ports = [("p1", "10.0.0.11", "hv1"), ("p2", "10.0.0.12", "hv1"), ("p3", "10.0.0.13", "hv2")]
    core.create(tenant_yaml("twin-a", "web", ports))
    core.create(tenant_yaml("twin-b", "web", ports))
    a1, b1 = ofport(core, "twin-a", "p1"), ofport(core, "twin-b", "p1")
    a2, b2 = ofport(core, "twin-a", "p2"), ofport(core, "twin-b", "p2")
    # OVS has each twin's p1 where the other's allocation said
    out = core.observe_interfaces("hv1", [(b1, "ta1", "twin-a/p1"), (a1, "tb1", "twin-b/p1"),
                                          (a2, "ta2", "twin-a/p2"), (b2, "tb2", "twin-b/p2")])
    assert out["moved"] == {"twin-a/p1": {"from": a1, "to": b1}, "twin-b/p1": {"from": b1, "to": a1}}
    assert (ofport(core, "twin-a", "p1"), ofport(core, "twin-b", "p1")) == (b1, a1)
    consistent(core)
    for t in ("twin-a", "twin-b"):
        s = shown(core, t)
        assert s["p1"]["up"] and s["p2"]["up"] and not s["p3"]["up"], t
        assert [x["interface"] for x in s["p1"]["seen"]] == [("ta1" if t == "twin-a" else "tb1")]
    tid = {n: e.alloc.tenant_id for n, e in core.tenants.items()}
    for f in core.desired["hv1"].values():  # each in_port's classify flow is its own tenant's
        if f.table.name == "classify" and f"in_port={b1}," in f.ofctl():
            assert f.tenant_id == tid["twin-a"]
        if f.table.name == "classify" and f"in_port={a1}," in f.ofctl():
            assert f.tenant_id == tid["twin-b"]


def test_a_port_that_held_the_number_moves_to_a_free_one_of_any_tenant(core):
    core.create(BLUE)  # vm1 and vm4 on hv1
    core.create(RED)  # vm3 on hv1
    vm4, red_vm3 = ofport(core, "blue", "vm4"), ofport(core, "red", "vm3")
    out = core.observe_interfaces("hv1", [(vm4, "tap-vm1", "blue/vm1"), (red_vm3 + 5, "foreign", None)])
    assert ofport(core, "blue", "vm1") == vm4
    moved_to = ofport(core, "blue", "vm4")
    assert moved_to not in (vm4, red_vm3, red_vm3 + 5)  # neither allocated now nor held by an interface
    assert set(out["moved"]) == {"blue/vm1", "blue/vm4"}
    consistent(core)
    # across tenants: blue's vm4 comes up where red's vm3 was allocated; vm3 gives way
    core.observe_interfaces("hv1", [(vm4, "tap-vm1", "blue/vm1"), (red_vm3, "tap-vm4", "blue/vm4")])
    assert ofport(core, "blue", "vm4") == red_vm3 and ofport(core, "red", "vm3") not in (red_vm3, vm4)
    assert shown(core, "blue")["vm4"]["up"] and not shown(core, "red")["vm3"]["up"]
    consistent(core)


def test_an_interface_at_an_infrastructure_number_is_asked_to_move_and_not_bound(core):
    core.create(BLUE)
    n = ofport(core, "blue", "vm1")
    before = desired(core)
    out = core.observe_interfaces("hv1", [(2, "cni0", "blue/vm1")])
    assert out["renumber"] == {"cni0": n} and out["moved"] == {} and desired(core) == before
    vm1 = shown(core, "blue")["vm1"]
    assert not vm1["up"] and vm1["seen"][0]["bound"] is False and "infrastructure" in vm1["seen"][0]["reason"]
    # its number held by some other interface: it is asked to a free one, and bound there when it is
    out = core.observe_interfaces("hv1", [(2, "cni0", "blue/vm1"), (n, "someone", None)])
    free = out["renumber"]["cni0"]
    assert free not in set(on_host(core, "hv1").values()) | {n}
    core.observe_interfaces("hv1", [(free, "cni0", "blue/vm1"), (n, "someone", None)])
    assert ofport(core, "blue", "vm1") == free and shown(core, "blue")["vm1"]["up"]
    consistent(core)


def test_the_plan_carried_out_is_empty_and_placed_ports_of_other_hosts_are_not_its_business():
    placed = {("a", "p"): 10, ("a", "q"): 11, ("b", "p"): 12}
    ifaces = [Iface(11, "i1", "a/p"), Iface(30, "i2", "b/p"), Iface(12, "i3", "a/elsewhere"), Iface(10, "i4", "x"),
              Iface(5, "i5", None)]
    got = plan(ifaces, placed)
    # q gave way to p, to a number no port has and no interface sits at (10 and 12 have interfaces)
    assert got.moves == {("a", "p"): 11, ("b", "p"): 30, ("a", "q"): 13}
    assert got.bound == {("a", "p"): 11, ("b", "p"): 30} and got.renumber == {}
    done = {**placed, **got.moves}
    assert plan(ifaces, done).moves == {} and plan(ifaces, done).renumber == {}


def test_a_host_report_is_checked_item_by_item(core):
    core.create(BLUE)
    with pytest.raises(ApiError) as e:
        core.report_interfaces("hv1", [{"name": "a", "ofport": 0}, "x", {"ofport": 12},
                                       {"name": "b", "ofport": 12, "iface_id": 7, "mtu": 1},
                                       {"name": "a", "ofport": 13}, {"name": "c"}, {"name": "d", "ofport": True}])
    fields = dict(e.value.errors)
    assert set(fields) == {"interfaces[0].ofport", "interfaces[1]", "interfaces[2].name", "interfaces[3].iface_id",
                           "interfaces[3].mtu", "interfaces[3].ofport", "interfaces[4].name", "interfaces[5].ofport",
                           "interfaces[6].ofport"}
    assert "from 1 to" in fields["interfaces[0].ofport"] and "twice" in fields["interfaces[4].name"]
    assert "twice" in fields["interfaces[3].ofport"] and "is required" in fields["interfaces[5].ofport"]
    assert "not True" in fields["interfaces[6].ofport"] and "object" in fields["interfaces[1]"]
    assert "nothing was changed" in str(e.value) and core.watch.interfaces.get("hv1", {}) == {}
    with pytest.raises(ApiError, match="no host 'hv9'"):
        core.report_interfaces("hv9", [])
    n = ofport(core, "blue", "vm1")
    out = core.report_interfaces("hv1", [{"name": "tap", "ofport": n + 20, "iface_id": "blue/vm1"}])
    assert out["moved"] == {"blue/vm1": {"from": n, "to": n + 20}} and shown(core, "blue")["vm1"]["up"]
    out = core.report_interfaces("hv1", [{"name": "vm4", "ofport": 3, "iface_id": "blue/vm4"}])
    assert out["renumber"] == {"vm4": ofport(core, "blue", "vm4")}  # the host is told where to move it


class FakeOvsdb:
    """A host's OVSDB as the watch reads it: iface-ids by interface name."""

    def __init__(self):
        self.ids: dict[str, str | None] = {}
        self.reads = 0
        self.asked: list[tuple[str, int]] = []

    def iface_ids(self):
        self.reads += 1
        return dict(self.ids)

    def request_ofport(self, name, n):
        self.asked.append((name, n))


def test_the_watch_reads_a_host_on_connect_and_on_port_events_in_the_background(tmp_path, monkeypatch):
    dbs = {f"unix:/hv{i}.sock": FakeOvsdb() for i in (1, 2)}
    monkeypatch.setattr("controller.server.bindings.host_db", lambda info: dbs[info["ovsdb"]])
    monkeypatch.setattr("controller.server.bindings.SWEEP_SECONDS", 3600)  # its sweep sleeps past the session
    store = SqliteStore(str(tmp_path / "w.db"))
    core = Core(store)
    for i in (1, 2):
        core.register_host(f"hv{i}", f"192.0.2.{10 + i}", 0x100 + i, {"kind": "test", "ovsdb": f"unix:/hv{i}.sock"})
    core.create(tenant_yaml("blue", "web", [("vm1", "10.0.0.11", "hv1"), ("vm2", "10.0.0.12", "hv2")]))
    n = ofport(core, "blue", "vm1")
    hv1, hv2 = FakeSwitch(0x101), FakeSwitch(0x102)
    hv1.port_names = {1: "vxlan0", n + 3: "tap1", 0xFFFFFFFE: "br-int"}
    dbs["unix:/hv1.sock"].ids = {"tap1": "blue/vm1", "vxlan0": None, "elsewhere": "blue/vm2"}
    core.switch_connected(hv1)
    core.switch_connected(hv2)
    assert core.interfaces_settled({"hv1", "hv2"}, timeout=5)
    assert ofport(core, "blue", "vm1") == n + 3 and hv1.table == core.desired["hv1"]  # bound and rolled out
    assert shown(core, "blue")["vm1"]["up"]
    assert set(core.watch.interfaces["hv1"]) == {1, n + 3}  # br-int's own port is not an interface to bind
    reads = dbs["unix:/hv1.sock"].reads
    del hv1.port_names[n + 3]  # its interface goes: one event, one read
    core.switch_ports_changed(hv1)
    assert core.interfaces_settled({"hv1"}, timeout=5)
    assert dbs["unix:/hv1.sock"].reads == reads + 1 and not shown(core, "blue")["vm1"]["up"]
    m = ofport(core, "blue", "vm2")
    hv2.port_names = {2: "cni-vm2"}  # plugged with no ofport_request: OVS gave it 2
    dbs["unix:/hv2.sock"].ids = {"cni-vm2": "blue/vm2"}
    core.switch_ports_changed(hv2)
    deadline = time.monotonic() + 5
    while not dbs["unix:/hv2.sock"].asked and time.monotonic() < deadline:
        time.sleep(0.01)
    assert dbs["unix:/hv2.sock"].asked == [("cni-vm2", m)]  # asked to move to its port's number
    assert not core.interfaces_settled({"hv2"}, timeout=0.05)  # views wait for it a moment
    hv2.port_names = {m: "cni-vm2"}  # OVS moved it
    core.switch_ports_changed(hv2)
    assert core.interfaces_settled({"hv2"}, timeout=5)
    assert shown(core, "blue")["vm2"]["up"] and ofport(core, "blue", "vm2") == m
    store.close()


def test_verify_checks_the_interfaces_where_the_rebound_flows_deliver(core):
    """`nvctl verify` reads each host's interfaces and checks that every ofport a tenant's
    flows deliver to carries that port's iface-id: after a rebinding it holds, and an
    interface with the port's iface-id left at the old number would not be the port's."""
    from controller.analysis.installed import check_interfaces
    from controller.spaces.ids import TUNNEL_OFPORT
    core.create(BLUE)
    was, new = ofport(core, "blue", "vm1"), 40
    core.observe_interfaces("hv1", [(new, "tap-vm1", "blue/vm1")])
    expected = {e.alloc.ofport[p.name]: (n, p.name) for n, e in core.tenants.items()
                for p in e.tenant.ports if p.host == "hv1"}
    tunnel = {"ofport": TUNNEL_OFPORT, "name": "vxlan0", "type": "vxlan", "external_ids": {},
              "options": {"local_ip": "192.0.2.11", "remote_ip": "flow", "key": "flow"}}
    tap = {"ofport": new, "name": "tap-vm1", "type": "", "external_ids": {"iface-id": "blue/vm1"}, "options": {}}
    assert check_interfaces("hv1", "192.0.2.11", [tunnel, tap], expected) == []
    stale = {**tap, "ofport": new, "external_ids": {"iface-id": "blue/vm4"}}
    assert check_interfaces("hv1", "192.0.2.11", [tunnel, stale], expected)  # someone else's at vm1's number
    assert was not in expected or expected[was] != ("blue", "vm1")


def test_three_tenants_rotating_numbers_never_hold_one_twice(core):
    for t in ("ta", "tb", "tc"):
        core.create(tenant_yaml(t, "web", [("p", "10.0.0.11", "hv1")]))
    x, y, z = (ofport(core, t, "p") for t in ("ta", "tb", "tc"))
    seen = []
    real = core.store.put_tenant

    def put(name, doc, alloc, rev, layers=None):  # every write leaves one number per port on the host
        seen.append(name)
        out = real(name, doc, alloc, rev, layers)
        numbers = [r.alloc["ofport"]["p"] for r in core.store.tenants()]
        assert len(numbers) == len(set(numbers)), numbers
        return out
    core.store.put_tenant = put
    core.observe_interfaces("hv1", [(y, "ia", "ta/p"), (z, "ib", "tb/p"), (x, "ic", "tc/p")])
    assert (ofport(core, "ta", "p"), ofport(core, "tb", "p"), ofport(core, "tc", "p")) == (y, z, x)
    assert len(seen) == 4  # one steps aside once
    consistent(core)


def test_a_migrating_ports_interface_on_its_destination_is_asked_to_its_pending_number(core):
    from controller.spaces.names import pending_name
    core.create(BLUE)
    core.migrate("blue", "vm1", "hv2", prepare=True)
    n = core.tenants["blue"].alloc.ofport[pending_name("vm1")]
    before = desired(core)
    out = core.observe_interfaces("hv2", [(n + 5, "vnet3", "blue/vm1")], complete=True)
    assert out["renumber"] == {"vnet3": n} and out["moved"] == {} and out["bound"] == []
    assert desired(core) == before  # asked to move, nothing rebound
    out = core.observe_interfaces("hv2", [(n, "vnet3", "blue/vm1")], complete=True)
    assert out["renumber"] == {}  # where it should be
    # a number another interface holds is not asked for
    out = core.observe_interfaces("hv2", [(n + 5, "vnet3", "blue/vm1"), (n, "other", None)], complete=True)
    assert "vnet3" not in out["renumber"]
