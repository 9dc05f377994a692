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

    def spy(c, ch, progress=None):
        seen.append((type(ch).__name__, ch.action))
        return real(c, ch, progress)
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
