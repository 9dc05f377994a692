"""The server's one change path and its declared derived views."""
import pytest

from controller.server import change as change_path
from controller.server import derived
from controller.server.core import Core
from controller.server.errors import ApiError
from tests.unit.fixtures import BLUE, RED


def test_the_derived_views_table_matches_core():
    assert derived.problems(Core) == []
    core_attrs = {v.attr for v in derived.VIEWS}
    assert {"_placement_cache", "desired", "used", "infra"} <= core_attrs


def test_the_table_check_reports_a_missing_method_and_a_cycle(monkeypatch):
    views = derived.VIEWS + (derived.View("a", "x", ("b",), ("no_such_method",), ""),
                             derived.View("b", "y", ("a",), ("_placement",), ""))
    monkeypatch.setattr(derived, "VIEWS", views)
    got = derived.problems(Core)
    assert "a: kept by no_such_method, which Core does not have" in got
    assert any(p.startswith("cycle: a -> b -> a") or p.startswith("cycle: b -> a -> b") for p in got)


def test_a_host_record_change_reaches_the_placement(core):
    before = core._placement()["hv1"]
    core.register_host("hv1", "192.0.2.99", 0x101, {"kind": "test"})
    assert core._placement()["hv1"].pa == "192.0.2.99" != before.pa


def test_every_change_goes_through_the_one_path(core, monkeypatch):
    seen = []
    real = change_path.run

    def spy(c, ch, progress=None, **kw):
        seen.append((type(ch).__name__, ch.action))
        return real(c, ch, progress, **kw)
    for mod in ("intent", "ports", "hosts"):
        monkeypatch.setattr(f"controller.server.{mod}.change_path.run", spy)
    core.create(BLUE)
    core.apply(BLUE.replace("10.0.0.14", "10.0.0.24"))
    core.port_add("blue", "web", name="extra", host="hv1")
    core.migrate("blue", "extra", "hv2")
    core.port_del("blue", "extra")
    core.register_host("hv4", "192.0.2.14", 0x104, {"kind": "test"})
    core.delete("blue")
    kinds = [k for k, _ in seen]
    assert kinds == ["TenantChange", "TenantChange", "TenantChange", "Migration", "TenantChange",
                     "HostRegistration", "TenantChange"]
    assert [a for _, a in seen][:3] == ["created", "updated", "added port extra"]
    assert seen[3][1].startswith("migrated extra ") and seen[3][1].endswith(" -> hv2")
    assert [a for _, a in seen][4:] == ["deleted port extra", "registered", "deleted"]


def test_a_refused_check_changes_nothing(core):
    core.create(BLUE)
    before = (dict(core.tenants), {h: dict(d) for h, d in core.desired.items()}, [(r.name, r.revision) for r in core.store.tenants()])
    with pytest.raises(ApiError, match="already on hv1"):
        core.migrate("blue", "vm1", "hv1")
    with pytest.raises(ApiError, match="no host 'hv9'"):
        core.migrate("blue", "vm1", "hv9")
    after = (dict(core.tenants), {h: dict(d) for h, d in core.desired.items()}, [(r.name, r.revision) for r in core.store.tenants()])
    assert before == after


def test_the_path_runs_only_under_the_change_lock(core):
    with pytest.raises(RuntimeError, match="mutex"):
        change_path.run(core, change_path.TenantChange(None, None, "deleted", "nobody"))


def test_twins_through_the_path_keep_their_own_flows(core):
    core.create(BLUE)
    core.create(RED)  # the same CIDR, port names and addresses
    tids = {e.alloc.tenant_id for e in core.tenants.values()}
    for h, flows in core.desired.items():
        owners = {f.tenant_id for f in flows.values()} - {0}
        assert owners <= tids
    out = core.delete("red")
    assert out["action"] == "deleted" and "red" not in core.tenants
    assert {f.tenant_id for d in core.desired.values() for f in d.values()} - {0} == \
        {core.tenants["blue"].alloc.tenant_id}


def test_a_join_is_rolled_out_after_the_change_lock_is_released(core):
    """Registering a host reconciles every switch, but not while holding the lock every
    other change waits on (as before the change path)."""
    from controller.switch.fake import FakeSwitch
    held = []

    class Recording(FakeSwitch):
        def push(self, *a, **kw):
            held.append(core.mutex.locked())
            return super().push(*a, **kw)
    core.create(BLUE)
    for i in (1, 2, 3):
        core.switch_connected(Recording(0x100 + i))
    held.clear()
    early = Recording(0x104)
    core.switch_connected(early)  # a switch that connects before its host is known waits
    core.register_host("hv4", "192.0.2.14", 0x104, {"kind": "test"})
    assert held and not any(held)
    assert core.host_status("hv4")["in_sync"]


def test_a_port_without_a_workload_migrates(core):
    doc = BLUE.replace("{name: vm4, switch: web, ip: 10.0.0.14, host: hv1}",
                       "{name: vm4, switch: web, ip: 10.0.0.14, host: hv1, workload: false}")
    assert "workload: false" in doc
    core.create(doc)
    out = core.migrate("blue", "vm4", "hv2")
    assert out["src"] == "hv1" and out["dst"] == "hv2"
    assert core.tenants["blue"].tenant.port("vm4").host == "hv2"


def test_a_host_with_a_bad_mtu_is_refused_and_nothing_is_stored(core):
    for bad in ("big", 900, True):
        with pytest.raises(ApiError, match="uplink MTU"):
            core.register_host("hv5", "192.0.2.15", 0x105, {"kind": "test", "mtu": bad})
    assert "hv5" not in core.hosts and "hv5" not in {h.name for h in core.store.hosts()}
    core.register_host("hv5", "192.0.2.15", 0x105, {"kind": "test", "mtu": 9000})
    assert core.host_mtu("hv5") == 9000 - 50


def test_running_out_of_numbers_is_the_callers_error_and_changes_nothing(core, monkeypatch):
    import controller.compile.allocator as allocator
    monkeypatch.setattr(allocator, "MAX_OFPORT", 11)  # two workload ofports per host: 10 and 11
    core.create(BLUE)  # vm1 and vm4 take hv1's two
    before = [(r.name, r.revision) for r in core.store.tenants()]
    with pytest.raises(ApiError, match="no free ofport on hv1.*nothing was changed"):
        core.create(RED)  # red's vm3 wants a third on hv1
    assert "red" not in core.tenants and [(r.name, r.revision) for r in core.store.tenants()] == before
