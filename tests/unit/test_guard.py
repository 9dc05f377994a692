"""Verify before install (controller.server.guard): a change whose compiled flows would
break isolation is refused before the store, the desired state or any switch sees it;
twins with identical specs pass; the proof follows changes made by other paths."""
import pytest

from controller.server.errors import ApiError
from controller.server.guard import BLOCKING
from tests.planted import plant
from tests.unit.fixtures import tenant_yaml
from tests.unit.test_core import desired, held, held_from_scratch

TWIN_PORTS = [("p1", "10.0.0.11", "hv1"), ("p2", "10.0.0.12", "hv2")]


def twins(core):
    for name in ("twin-a", "twin-b"):
        r = core.create(tenant_yaml(name, "s", TWIN_PORTS))
        assert r["verified"]["result"] == "ok", r
    return core.tenants["twin-b"].alloc.ofport["p1"]  # twin-b's p1 on hv1


def test_identical_twins_pass_and_each_change_is_proved(core):
    twins(core)
    r = core.port_add("twin-a", "s", name="p3", host="hv1")
    assert r["verified"]["result"] == "ok" and r["verified"]["warnings"] == []
    seen = core.guard.since(0)
    assert [(e["tenant"], e["result"]) for e in seen["changes"]] == \
        [("twin-a", "ok"), ("twin-b", "ok"), ("twin-a", "ok")]
    assert seen["counts"]["refused"] == 0


def test_a_planted_leak_is_refused_with_nothing_changed(core):
    victim = twins(core)
    before, rev = desired(core), core.store.tenant("twin-a").revision
    ports_before = [p.name for p in core.tenants["twin-a"].tenant.ports]
    undo = plant("hv1", victim)
    try:
        with pytest.raises(ApiError) as e:
            core.port_add("twin-a", "s", name="planted1", host="hv1")
    finally:
        undo()
    err = e.value
    assert "would break isolation" in str(err) and "nothing was changed" in str(err)
    fields = [f for f, _ in err.errors]
    assert fields and set(fields) <= {f"verify.{k}" for k in BLOCKING} and "verify.isolation_port" in fields
    text = "\n".join(m for _, m in err.errors)
    assert "planted: a compiler bug" in text  # the counterexample names the deciding flow
    assert "twin-b" not in text and "(another tenant)" in text  # the other tenant is not named to this one
    # nothing stored, nothing in memory, nothing for the switches
    assert desired(core) == before
    assert core.store.tenant("twin-a").revision == rev
    assert [p.name for p in core.tenants["twin-a"].tenant.ports] == ports_before
    assert held(core.used) == held_from_scratch(core)
    last = core.guard.since(0)["changes"][-1]
    assert last["result"] == "refused" and last["violations"][0]["kind"] == "isolation_port"
    assert "twin-b" in last["violations"][0]["tenants"]  # the operator's view names both
    mine = core.guard.since(0, tenant="twin-a")["changes"][-1]
    assert "twin-b" not in str(mine)
    # the proof was left for a rebuild: the next clean change is proved against the real state
    r = core.port_add("twin-a", "s", name="p3", host="hv1")
    assert r["verified"]["result"] == "ok"


def test_the_same_plant_goes_through_when_the_guard_is_off(core):
    victim = twins(core)
    core.guard.enabled = False
    undo = plant("hv1", victim)
    try:
        r = core.port_add("twin-a", "s", name="planted1", host="hv1")
    finally:
        undo()
    assert "verified" not in r
    assert any(f.rule == "planted: a compiler bug" for f in core.desired["hv1"].values())


def test_a_leak_planted_through_another_path_is_not_blamed_on_the_next_change(core):
    """The proof follows the desired state's generation: a change made by another path
    (here a tenant deleted) rebuilds it; findings it already had do not refuse others."""
    twins(core)
    rebuilt = core.guard.counts["rebuilt"]
    core.delete("twin-b")
    r = core.port_add("twin-a", "s", name="p3", host="hv2")
    assert r["verified"]["result"] == "ok"
    assert core.guard.counts["rebuilt"] == rebuilt + 1


def test_watch_lines_metrics_and_the_page_show_a_refusal(core):
    from controller.client.render import change_proof_lines
    from controller.client.ui import tenant_html
    victim = twins(core)
    undo = plant("hv1", victim)
    try:
        with pytest.raises(ApiError):
            core.port_add("twin-a", "s", name="planted1", host="hv1")
    finally:
        undo()
    mine = core.verify_changes(0, "twin-a")["changes"]
    lines = change_proof_lines(mine[-1])
    assert "REFUSED" in lines[0] and "twin-a" in lines[0]
    assert any(line.strip().startswith("VIOLATION isolation_port") for line in lines[1:])
    assert "twin-b" not in "\n".join(lines)
    text = core.metrics.text()
    assert 'nvctl_verify_changes_total{result="refused"} 1.0' in text
    assert "nvctl_verify_change_last_ok 0.0" in text
    show = core.show("twin-a")
    page = tenant_html("twin-a", show, "<svg></svg>", None, None, mine)
    assert page.count('class="bad">refused') == 1 and page.count('class="ok">ok') == 1
    with pytest.raises(ApiError):
        core.verify_changes(0, "ghost")


def test_other_tenants_are_unnamed_as_whole_names_only():
    from controller.server.guard import _redact
    assert _redact("s's packet is output to s's port ports-1 (hosts: s.x)", {"s"}) == \
        "(another tenant)'s packet is output to (another tenant)'s port ports-1 (hosts: s.x)"
    assert _redact("twin-b/p1 and twin-bb", {"twin-b"}) == "(another tenant)/p1 and twin-bb"


def test_the_proof_kept_by_changes_equals_one_built_from_scratch(core):
    """After changes of every kind the guard follows (creates, port adds and deletes,
    migrations, an apply that moves a port), its proof holds what a proof built from the
    desired state holds: the same violations and the same counts."""
    from controller.analysis import verify as vf
    from controller.analysis.verify_slice import Sliced
    from controller.server.guard import _unpaired
    twins(core)
    core.port_add("twin-a", "s", name="p3", host="hv3")
    core.migrate("twin-b", "p2", "hv3")
    core.port_del("twin-a", "p3")
    core.apply(tenant_yaml("twin-b", "s", [("p1", "10.0.0.11", "hv2"), ("p2", "10.0.0.12", "hv3")]))
    assert core.guard.counts["rebuilt"] == 1 and core.guard.counts["checked"] == 6
    kept = core.guard.proof._report(0.0)
    placement = core._placement()
    net = vf.network_from_compiled(placement, {n: (e.tenant, e.alloc) for n, e in core.tenants.items()},
                                   {h: list(core.desired.get(h, {}).values()) for h in placement})
    net.tenants = {n: _unpaired(f) for n, f in net.tenants.items()}  # as the guard proves: no pairs
    fresh = Sliced(net, workers=1).run()
    assert [v.key() for v in kept.violations] == [v.key() for v in fresh.violations]
    assert kept.checked == fresh.checked
    assert fresh.checked["port_starts"] == 4


def test_a_tenant_over_the_budget_goes_through_unproved_and_said_so(core):
    """A change to a tenant whose proof would cost too much (ports per switch, squared)
    is let through, marked unproved; the other tenants are still proved, and a leak the
    big tenant's flows would make into them is still refused (it is found from their side
    only when their packets meet it, so here: the big tenant is the victim)."""
    victim = twins(core)
    core.guard.budget = 9  # 3 ports on a switch (9) fit; 4 (16) do not
    assert core.port_add("twin-b", "s", name="p3", host="hv3")["verified"]["result"] == "ok"
    r = core.port_add("twin-b", "s", name="p4", host="hv3")
    assert r["verified"]["result"] == "unproved" and "16 (ports per switch" in r["verified"]["note"]
    assert core.guard.counts["unproved"] == 1
    assert 'nvctl_verify_changes_total{result="unproved"} 1.0' in core.metrics.text()
    undo = plant("hv1", victim)  # twin-a (proved) leaking into twin-b's p1 (unproved, too large)
    try:
        with pytest.raises(ApiError) as e:
            core.port_add("twin-a", "s", name="planted1", host="hv1")
    finally:
        undo()
    assert "verify.isolation_port" in [f for f, _ in e.value.errors]
    # the budget follows the tenant: back under it, it is proved again
    r = core.port_del("twin-b", "p4")
    assert r["verified"]["result"] == "ok"
    assert core.guard.proof.outcomes["twin-b"].counts["port_starts"] == 3
