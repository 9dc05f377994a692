"""A VM's live migration through the controller: the pending binding, activation by the
guest's announcement (and by nothing else), a failed or cancelled copy, and a change
made meanwhile. The hypervisor here is a stand-in driver that records what it is asked
and, as QEMU would, lets the guest announce itself from the destination when the copy
completes; the flows it acts on are tested in test_activation.py."""
import threading

import pytest

from controller.server import vmmigrate
from controller.server.core import Core
from controller.server.errors import ApiError
from controller.spaces.names import pending_name
from controller.state.store import SqliteStore
from tep.driver import NoDriver
from tests.unit.fixtures import BLUE

VM_BLUE = BLUE.replace("{name: vm1, switch: web, ip: 10.0.0.11, host: hv1}",
                       "{name: vm1, switch: web, ip: 10.0.0.11, host: hv1, workload: vm}")


def rarp(mac: str) -> bytes:
    m = bytes(int(x, 16) for x in mac.split(":"))
    return b"\xff" * 6 + m + b"\x80\x35" + b"\x00" * 28


class Hypervisor(NoDriver):
    """What the lab's driver does with QEMU, reduced to what the controller sees."""

    def __init__(self, hosts):
        super().__init__(hosts)
        self.core = None
        self.calls = []
        self.announce = True  # the guest announces itself at the destination after the copy
        self.fail = None  # an exception the copy raises
        self.copying = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def guest(self, tenant, port, host):
        return f"{host}:{tenant}/{port}"

    def vm_incoming(self, a, port):
        self.calls.append(("incoming", a.host, a.ofport, port))
        return f"tcp:{self.hosts[a.host].pa}:{port}"

    def vm_migrate(self, a, uri, bandwidth_mbps=None):
        self.calls.append(("migrate", a.host, uri))
        self.copying.set()
        self.release.wait(10)
        if self.fail is not None:
            raise self.fail
        if self.announce:
            e = self.core.tenants[a.tenant]
            p = e.tenant.port(a.port)
            self.core.activation_seen(p.pending, e.alloc.ofport[pending_name(a.port)], rarp(a.mac))
        return {"status": "completed", "downtime_ms": 42, "total_ms": 900}

    def vm_cancel(self, a):
        self.calls.append(("cancel", a.host))
        self.fail = RuntimeError("QEMU: migration cancelled")
        self.release.set()

    def vm_abort(self, a):
        self.calls.append(("abort", a.host, a.ofport))

    def vm_finish(self, a):
        self.calls.append(("finish", a.host, a.ofport))


@pytest.fixture
def vcore(tmp_path):
    store = SqliteStore(str(tmp_path / "desired.db"))
    made = []
    c = Core(store, make_driver=lambda hosts: made.append(Hypervisor(hosts)) or made[-1])
    for i in (1, 2, 3):
        c.register_host(f"hv{i}", f"192.0.2.{10 + i}", 0x100 + i, {"kind": "test"})
    c.driver.core = c
    yield c
    store.close()


def _tables(core, host, tenant="blue"):
    tid = core.tenants[tenant].alloc.tenant_id
    return sorted({f.table.name for f in core.desired[host].values() if f.tenant_id == tid})


def test_a_vm_migrates_and_is_activated_by_its_announcement(vcore):
    vcore.create(VM_BLUE)
    src_ofport = vcore.tenants["blue"].alloc.ofport["vm1"]
    out = vcore.migrate("blue", "vm1", "hv2")
    e = vcore.tenants["blue"]
    assert e.tenant.port("vm1").host == "hv2" and e.tenant.port("vm1").pending is None
    assert out["activated_by"] == "its RARP" and out["qemu"]["downtime_ms"] == 42
    kinds = [c[0] for c in vcore.driver.calls]
    assert kinds == ["incoming", "migrate", "finish"]
    incoming = vcore.driver.calls[0]
    assert incoming[1] == "hv2" and e.alloc.ofport["vm1"] == incoming[2]  # the pending number is kept
    assert incoming[3] == vmmigrate.MIGRATION_PORT_BASE + incoming[2]
    assert vcore.driver.calls[2] == ("finish", "hv1", src_ofport)
    assert "announcement_to_destination_ready" in out["timings_ms"]
    assert "activation" not in _tables(vcore, "hv2")  # nothing pending any more


def test_prepare_binds_pending_and_only_the_right_announcement_activates(vcore):
    vcore.create(VM_BLUE)
    out = vcore.migrate("blue", "vm1", "hv3", prepare=True)
    e = vcore.tenants["blue"]
    n = e.alloc.ofport[pending_name("vm1")]
    assert out["pending"] == "hv3" and out["pending_ofport"] == n
    assert e.tenant.port("vm1").host == "hv1" and e.tenant.port("vm1").pending == "hv3"
    assert "activation" in _tables(vcore, "hv3")
    vm1, vm2 = e.tenant.port("vm1"), e.tenant.port("vm2")
    # another port's MAC, the right MAC from another host, another ofport: nothing
    vcore.activation_seen("hv3", n, rarp(vm2.mac))
    vcore.activation_seen("hv2", n, rarp(vm1.mac))
    vcore.activation_seen("hv3", n + 1, rarp(vm1.mac))
    for t in threading.enumerate():
        if t.name == "activation":
            t.join(5)
    assert vcore.tenants["blue"].tenant.port("vm1").host == "hv1"
    # a change meanwhile keeps the migration's pending binding
    vcore.apply(VM_BLUE.replace("10.0.0.14", "10.0.0.24"))
    assert vcore.tenants["blue"].tenant.port("vm1").pending == "hv3"
    assert vcore.tenants["blue"].alloc.ofport[pending_name("vm1")] == n
    vcore.activation_seen("hv3", n, rarp(vm1.mac))
    for t in threading.enumerate():
        if t.name == "activation":
            t.join(5)
    p = vcore.tenants["blue"].tenant.port("vm1")
    assert (p.host, p.pending, vcore.tenants["blue"].alloc.ofport["vm1"]) == ("hv3", None, n)


def test_a_failed_copy_leaves_the_vm_bound_where_it_was(vcore):
    vcore.create(VM_BLUE)
    before = vcore.tenants["blue"].alloc.ofport["vm1"]
    flows_hv2 = dict(vcore.desired["hv2"])
    vcore.driver.fail = RuntimeError("QEMU: connection refused")
    with pytest.raises(ApiError, match=r"migration of blue/vm1 to hv2 failed: QEMU: connection refused; "
                                       r"the VM runs on hv1, bound there"):
        vcore.migrate("blue", "vm1", "hv2")
    p = vcore.tenants["blue"].tenant.port("vm1")
    assert (p.host, p.pending, vcore.tenants["blue"].alloc.ofport["vm1"]) == ("hv1", None, before)
    assert [c[0] for c in vcore.driver.calls] == ["incoming", "migrate", "abort"]
    assert dict(vcore.desired["hv2"]) == flows_hv2  # the pending binding's flows are gone again
    assert not vcore.vm_moves


def test_a_cancelled_copy_leaves_the_vm_bound_where_it_was(vcore):
    vcore.create(VM_BLUE)
    vcore.driver.release.clear()
    errors = []

    def move():
        try:
            vcore.migrate("blue", "vm1", "hv2")
        except ApiError as e:
            errors.append(str(e))
    t = threading.Thread(target=move)
    t.start()
    assert vcore.driver.copying.wait(5)
    out = vcore.cancel_migration("blue", "vm1")
    t.join(10)
    assert out["cancelled"] and errors and "cancelled" in errors[0]
    p = vcore.tenants["blue"].tenant.port("vm1")
    assert (p.host, p.pending) == ("hv1", None)
    with pytest.raises(ApiError, match="is not migrating"):
        vcore.cancel_migration("blue", "vm1")


def test_without_an_announcement_the_completed_copy_activates(vcore, monkeypatch):
    monkeypatch.setattr(vmmigrate, "ACTIVATION_WAIT", 0.2)
    vcore.create(VM_BLUE)
    vcore.driver.announce = False
    out = vcore.migrate("blue", "vm1", "hv2")
    assert out["activated_by"] == "the completed copy (no announcement seen)"
    assert vcore.tenants["blue"].tenant.port("vm1").host == "hv2"


def test_twins_migrate_their_own_vm(vcore):
    vcore.create(VM_BLUE)
    vcore.create(VM_BLUE.replace("name: blue", "name: red"))
    vcore.migrate("blue", "vm1", "hv3", prepare=True)
    vcore.migrate("red", "vm1", "hv3", prepare=True)
    b, r = vcore.tenants["blue"], vcore.tenants["red"]
    nb, nr = b.alloc.ofport[pending_name("vm1")], r.alloc.ofport[pending_name("vm1")]
    assert nb != nr
    vcore.activation_seen("hv3", nr, rarp(r.tenant.port("vm1").mac))  # the same MAC: red's interface
    for t in threading.enumerate():
        if t.name == "activation":
            t.join(5)
    assert vcore.tenants["red"].tenant.port("vm1").host == "hv3"
    assert vcore.tenants["blue"].tenant.port("vm1").host == "hv1"
    assert vcore.tenants["blue"].tenant.port("vm1").pending == "hv3"


def test_cancelling_what_is_not_migrating_is_an_error(vcore):
    vcore.create(BLUE)
    with pytest.raises(ApiError, match="is not migrating"):
        vcore.cancel_migration("blue", "vm1")


def test_an_announcement_for_a_port_deleted_meanwhile_activates_nothing(vcore):
    vcore.create(VM_BLUE)
    vcore.migrate("blue", "vm1", "hv3", prepare=True)
    vcore.port_del("blue", "vm1")
    assert vcore.activate("blue", "vm1", "hv3", by="its RARP") is None
    vcore.delete("blue")
    assert vcore.activate("blue", "vm1", "hv3", by="its RARP") is None
