"""The reconciler against a switch with OpenFlow's semantics (replace on ADD, strict
delete by identity): twins, drift, modify in place, refused bundles, conflicts."""
import pytest

from controller.server.errors import ApiError
from controller.compile.desired import DesiredState
from controller.switch.reconciler import differences
from dataplane.match_action import Flow, Output, meters_of
from tests.unit.fixtures import BLUE
from tests.unit.test_golden import DOC as SHOP


@pytest.fixture
def core(switched_core):
    return switched_core


def twin(doc: str, name: str, ext: int) -> str:
    """The same tenant under another name, with provider addresses of its own."""
    return (doc.replace("metadata: {name: shop}", f"metadata: {{name: {name}}}")
            .replace("203.0.113.10", f"203.0.113.{ext}").replace("203.0.113.11", f"203.0.113.{ext + 1}"))


def exact(core) -> dict:
    """host -> does the switch hold exactly the desired flows (by identity and content)?"""
    return {h: sw.table == core.desired[h] for h, sw in core.switches.items()}


def test_twin_tenants_with_one_load_balancer_spec_each_keep_their_own_flows(core):
    a, b = twin(SHOP, "twin-a", 20), twin(SHOP, "twin-b", 30)
    core.create(a)
    a_flows = {h: set(fl) for h, fl in core.tenants["twin-a"].flows.items()}
    core.create(b)
    assert all(exact(core).values())
    for h, fl in a_flows.items():  # every one of a's flows is still on the switch, unchanged
        sw = core.switches[h].table
        assert all(sw.get(f.identity) == f for f in fl), h
    assert all(core.host_status(h)["in_sync"] for h in core.switches)
    core.delete("twin-b")
    for h, fl in a_flows.items():
        assert all(core.switches[h].table.get(f.identity) == f for f in fl), h
    assert all(exact(core).values())


def test_a_flow_changed_behind_our_back_is_seen_and_corrected(core):
    core.create(BLUE)
    sw = core.switches["hv1"]
    f = next(f for f in core.tenants["blue"].flows["hv1"] if f.table.name == "deliver")
    evil = Flow(f.table, f.priority, f.match, (Output(99),), f.layer_id, f.tenant_id, f.rule)
    evil.cookie = f.cookie  # same identity and cookie, other actions: invisible to a cookie diff
    sw.ofctl_add(evil)
    assert core.host_status("hv1")["in_sync"]  # memory alone cannot know...
    hosts = {h["name"]: h for h in core.list_hosts(check=True)}  # ...a fresh read does
    assert hosts["hv1"]["drift"]["changed"] == 1
    assert sw.table[f.identity] == f and hosts["hv1"]["in_sync"]
    assert all(exact(core).values())


def test_extra_and_missing_flows_are_corrected_by_identity(core):
    core.create(BLUE)
    sw = core.switches["hv2"]
    victim = next(iter(core.tenants["blue"].flows["hv2"]))
    sw.ofctl_del(victim)
    stray = next(f for f in core.tenants["blue"].flows["hv1"] if f.identity not in core.desired["hv2"])
    sw.ofctl_add(stray)
    assert differences(sw.table, core.desired["hv2"])["missing"] == 1
    r = core.resync("hv2")
    assert r["found"] == {"missing": 1, "unexpected": 1, "changed": 0} and r["flow_mods"] == 2
    assert sw.table == core.desired["hv2"]


def test_a_changed_flow_is_modified_in_place_and_keeps_its_counters(core):
    core.create(SHOP)
    sw = core.switches["hv1"]
    for i in sw.packets:
        sw.packets[i] = 7
    before = dict(sw.table)
    r = core.apply(SHOP.replace("rateLimitMbps: 20", "rateLimitMbps: 30"))  # only the meter's band
    assert r["hosts"] == {"hv1": "1 flow-mods"}, r  # one meter-mod; the flow's text is the same
    assert sw.meter_bands[10] == (30000, 15000, "kbps")
    core.apply(SHOP.replace("backends: [web2:8080, db1:8080]", "backends: [web2:8080]"))  # a group
    core.apply(SHOP.replace("nextHop: 10.0.1.20", "nextHop: 10.0.1.30"))  # a route's actions
    assert sw.meter_bands == meters_of(core.desired["hv1"].values())
    same = [i for i in before if i in sw.table and sw.table[i] != before[i]]
    assert same, "the route change should have changed some flow's actions at the same identity"
    assert all(sw.packets[i] == 7 for i in same)  # ADD over the identity: counters kept
    assert sw.table == core.desired["hv1"]


def test_a_refused_bundle_changes_nothing_and_is_retried_from_a_fresh_read(core):
    core.create(BLUE)
    sw = core.switches["hv3"]
    before = dict(sw.table)
    sw.refuse = "OFPBRC_EPERM"
    r = core.apply(BLUE.replace("ip: 10.0.0.13", "ip: 10.0.0.33"))
    assert "OFPBRC_EPERM" in r["hosts"]["hv3"]
    assert sw.table == before and not core.host_status("hv3")["in_sync"]
    assert core.reconcile("hv3") > 0 and sw.table == core.desired["hv3"]
    assert core.host_status("hv3")["in_sync"]


def test_a_flow_identity_conflict_is_refused_naming_both_tenants_and_nothing_is_stored(core):
    core.create(BLUE)
    theirs = next(f for f in core.tenants["blue"].flows["hv1"] if f.table.name == "deliver")
    # a twin whose compile would make a different flow with the same identity
    clash = Flow(theirs.table, theirs.priority, theirs.match, (Output(42),), theirs.layer_id, 2, "port vm9")
    d = core.desired
    assert DesiredState.conflicts(d, {}, {"hv1": [clash]})[0].held is theirs
    c = d.conflicts({}, {"hv1": [clash]})[0]
    text = c.describe({1: "blue", 2: "green"})
    assert "tenant green" in text and "tenant blue" in text and "port vm9" in text and theirs.rule in text
    # and through the core: a compile that collides is refused like invalid YAML
    import controller.server.intent as core_mod
    real = core_mod.compile_tenant
    core_mod.compile_tenant = lambda t, a, h, *previous: {**real(t, a, h), "hv1": real(t, a, h).get("hv1", []) + [
        Flow(theirs.table, theirs.priority, theirs.match, (Output(42),), theirs.layer_id, a.tenant_id, "evil")]}
    try:
        with pytest.raises(ApiError) as e:
            core.create(BLUE.replace("name: blue", "name: green"))
    finally:
        core_mod.compile_tenant = real
    assert "nothing was changed" in str(e.value)
    assert any("tenant blue" in reason and "tenant green" in reason for _, reason in e.value.errors)
    assert "green" not in core.tenants and [t.name for t in core.store.tenants()] == ["blue"]
    assert all(exact(core).values())


def test_a_new_port_that_takes_a_removed_ports_ofport_starts_its_counters_from_zero(core):
    """One apply removes web1 and adds web9 on the same host: the allocator gives web9
    web1's ofport and key, so its flows have web1's text. They count for another port
    now: the ADD resets their counters (an in-place change of one port's flows does not)."""
    core.create(SHOP)
    sw = core.switches["hv1"]
    for i in sw.packets:
        sw.packets[i] = 7
    e = core.tenants["shop"]
    old = {f.identity: f for f in e.flows["hv1"] if ("port", "web1", "sent") in f.stat}
    assert len(old) == 1
    core.apply(SHOP.replace("{name: web1, switch: web, ip: 10.0.0.11, host: hv1",
                            "{name: web9, switch: web, ip: 10.0.0.11, host: hv1"))
    e = core.tenants["shop"]
    new = [f for f in e.flows["hv1"] if ("port", "web9", "sent") in f.stat]
    assert [f.identity for f in new] == list(old), "web9 should have taken web1's ofport (the premise)"
    assert new[0].cookie != next(iter(old.values())).cookie  # whose counts they are is in the cookie
    assert sw.packets[new[0].identity] == 0
    assert sw.table == core.desired["hv1"]
    kept = [i for i, f in sw.table.items() if sw.packets[i] == 7]
    assert kept, "flows no port changed keep their counters"
