"""`nvctl verify` sliced by tenant (controller/analysis/verify_slice.py) and what it
covers beyond the ports and tunnel entries: the shared proof, packets from the provider
network, loops through tunnels. The sliced proof must report what the whole tables do
(the same violations, counts and counterexamples), in this process or in workers."""
import dataclasses

import pytest

from controller.analysis import verify_slice
from controller.analysis.verify import Verifier, tenant_facts, verify
from controller.analysis.verify_slice import Sliced, flow_owner
from controller.compile.allocator import InUse, allocate
from controller.compile.compiler import TUNNEL_OFPORT
from controller.compile.pipeline import PIPELINE
from controller.spaces.ids import EXTERNAL_NET_KEY
from dataplane.match_action import IN_PORT, Fabric, Flow, Goto, Match, Output, SetField
from tests.unit.fixtures import EXT_PORT, GW_HOSTS, HOSTS, SHOP, shop, world
from tests.unit.test_verify import SHOP2, _blue_moved, _twins, _install_replace_on_add, flows_of, injected, net_of
from topology.schema import load_tenant


def keys(report, drop=("scope_change",)):
    return [v.key() for v in report.violations if v.kind not in drop]


def same_as_whole_tables(hosts, w, flows, **kw):
    """The sliced report and the whole tables' agree (the shared proof aside)."""
    whole = Verifier(net_of(hosts, w, flows), kinds=("port", "tunnel", "external")).run()
    sliced = Sliced(net_of(hosts, w, flows), **kw).run()
    assert keys(sliced) == keys(whole), (sliced.format(), whole.format())
    assert [v.format() for v in sliced.violations if v.kind != "scope_change"] == \
        [v.format() for v in whole.violations]
    assert sliced.checked == whole.checked
    return sliced


def test_every_flow_of_a_compiled_world_is_its_tenants_or_shared_by_design(blue_red):
    w = blue_red
    flows = flows_of(HOSTS, w)
    s = Sliced(net_of(HOSTS, w, flows), workers=1)
    names = {a.tenant_id: t for t, (_x, a) in w.items()}
    for h, fl in flows.items():
        for f in fl:
            o = flow_owner(f, h, s.own)
            assert o == names.get(f.tenant_id), (h, f.ofctl())
    shared = {f.table.name for fl in s.shared.values() for f in fl if f.priority}
    assert shared == {"classify", "tunnel_out"}  # tunnel acceptance, the tunnel output
    assert s.run().ok and not s.escaped


def test_the_slices_report_what_the_whole_tables_do(blue_red):
    w = blue_red
    flows = flows_of(HOSTS, w)
    same_as_whole_tables(HOSTS, w, flows)
    blue, ba = w["blue"]
    red, ra = w["red"]
    leak = Flow(PIPELINE["l2_lookup"], 200, Match.of(reg13=ba.vni["web"], eth_dst=blue.port("vm3").mac),
                (Output(ra.ofport["vm3"]),), layer_id=4, tenant_id=ba.tenant_id, rule="planted")
    r = same_as_whole_tables(HOSTS, w, injected(flows, "hv1", leak))
    assert [v.kind for v in r.violations] == ["isolation_port"]
    # by hand, without the controller's cookie: sorted into blue's slice by its scope
    bare = Flow(leak.table, leak.priority, leak.match, leak.actions, rule="by hand")
    assert flow_owner(bare, "hv1", Sliced(net_of(HOSTS, w, flows), workers=1).own) == "blue"
    r = same_as_whole_tables(HOSTS, w, injected(flows, "hv1", bare))
    assert [v.kind for v in r.violations] == ["isolation_port"] and r.violations[0].cookie == f"{bare.cookie:#x}"


def test_a_rewrite_into_another_tenants_scope_leaves_the_slice_for_the_whole_tables(blue_red):
    w = blue_red
    flows = flows_of(HOSTS, w)
    blue, ba = w["blue"]
    _red, ra = w["red"]
    bad = Flow(PIPELINE["dispatch"], 200, Match.of(reg13=ba.vni["web"], reg15=ba.port_key["vm2"]),
               (SetField("tunnel_id", ra.vni["app"]), SetField("tun_ipv4_dst", HOSTS["hv2"].pa),
                Output(TUNNEL_OFPORT)), layer_id=5, tenant_id=ba.tenant_id, rule="planted vni")
    s = Sliced(net_of(HOSTS, w, injected(flows, "hv1", bad)), workers=1)
    r = s.run()
    assert set(s.escaped) == {"blue"} and "tunnel_id" in s.escaped["blue"]
    vs = [v for v in r.violations if v.kind == "isolation_vni"]
    assert vs and all(v.tenants == ["blue", "red"] for v in vs) and vs[0].cookie == f"{bad.cookie:#x}"
    same_as_whole_tables(HOSTS, w, injected(flows, "hv1", bad))


def test_the_current_suites_leaks_are_still_caught_by_the_slices():
    # twins whose lb_reply flows lost their scope: shop and shop2 share a zone
    w, host_flows, per_tenant = _twins()

    def unscoped(f):
        if f.table.name != "lb_reply" or f.priority == 0:
            return f
        items = {n: (v if m is None else (v, m)) for n, v, m, _ in f.match.items if n != "reg13"}
        return Flow(f.table, f.priority, Match.of(**items), f.actions, f.layer_id, f.tenant_id, f.rule)

    old = {n: {h: [unscoped(f) for f in fl] for h, fl in pt.items()} for n, pt in per_tenant.items()}
    installed = {h: _install_replace_on_add(host_flows[h] + old["shop"].get(h, []) + old["shop2"].get(h, []))
                 for h in GW_HOSTS}
    r = same_as_whole_tables(GW_HOSTS, w, installed)
    assert any(v.kind == "shared_zone" and v.tenants == ["shop", "shop2"] for v in r.violations), r.format()
    # SNAT to an address the tenant does not own
    w = world(SHOP, hosts=GW_HOSTS)
    flows = flows_of(GW_HOSTS, w)
    from dataplane.match_action import Nat
    bad = {h: [Flow(f.table, f.priority, f.match, (dataclasses.replace(f.actions[0], nat=Nat("src", "203.0.113.99")),),
                    f.layer_id, f.tenant_id, f.rule)
               if f.table.name == "ext_snat" and f.priority == 100 and f.rule.startswith("router r1: SNAT") else f
               for f in fl] for h, fl in flows.items()}
    r = same_as_whole_tables(GW_HOSTS, w, bad)
    assert any(v.kind == "isolation_external" and "203.0.113.99" in v.message for v in r.violations)


def test_a_shared_flow_that_changes_a_packets_scope_is_caught_by_the_shared_proof(blue_red):
    w = blue_red
    flows = flows_of(HOSTS, w)
    _red, ra = w["red"]
    # in classify, a tunnel from hv2 is taken into red's switch, whatever its VNI
    bad = Flow(PIPELINE["classify"], 200, Match.of(in_port=TUNNEL_OFPORT, tun_ipv4_src=HOSTS["hv2"].pa),
               (SetField("reg13", ra.vni["app"]), Goto(PIPELINE["l2_lookup"])), rule="planted")
    s = Sliced(net_of(HOSTS, w, injected(flows, "hv1", bad)), workers=1)
    r = s.run()
    (sc,) = [v for v in r.violations if v.kind == "scope_change"]
    assert sc.tenants == ["red"] and sc.host == "hv1" and sc.cookie == f"{bad.cookie:#x}"
    assert "moves every packet it matches into red's scope" in sc.message and "classify" in sc.message
    assert sc.in_port == TUNNEL_OFPORT and sc.packet and sc.path[0]["table"] == "classify"
    assert "blue" in s.escaped  # blue's packets from hv2 reach red's flows: checked over the whole tables
    assert any(v.kind == "isolation_port" and v.tenants == ["blue", "red"] for v in r.violations), r.format()
    # the whole tables alone (no shared proof) do not name the flow as a scope change
    assert "scope_change" not in {v.kind for v in Verifier(net_of(HOSTS, w, injected(flows, "hv1", bad))).run().violations}


def test_a_leak_that_enters_from_the_provider_network():
    w = world(SHOP, hosts=GW_HOSTS)
    flows = flows_of(GW_HOSTS, w)
    t, a = w["shop"]
    assert verify(net_of(GW_HOSTS, w, flows)).ok
    db3 = t.port("db3")  # on hv1, the gateway
    assert db3.host == "hv1"
    # from outside, straight to db3's private address, bypassing the router's NAT
    bad = Flow(PIPELINE["ext_in"], 150, Match.of(reg13=EXTERNAL_NET_KEY, eth_type=0x800, ipv4_dst=str(db3.ip)),
               (SetField("reg13", a.vni["db"]), Goto(PIPELINE["l2_lookup"])), rule="planted")
    bad_flows = injected(flows, "hv1", bad)
    r = verify(net_of(GW_HOSTS, w, bad_flows))
    leaks = [v for v in r.violations if v.kind == "isolation_port" and v.in_port == EXT_PORT]
    assert leaks and leaks[0].tenants == ["shop"], r.format()
    assert "a packet from the provider network, addressed to no tenant, is output to shop's port db3" in leaks[0].message
    assert leaks[0].cookie == f"{bad.cookie:#x}" or any(h.get("cookie") == f"{bad.cookie:#x}" for h in leaks[0].path)
    fabric = Fabric(PIPELINE, {h: (bad_flows[h], GW_HOSTS[h].pa) for h in GW_HOSTS}, TUNNEL_OFPORT)
    got = fabric.send("hv1", EXT_PORT, dict(leaks[0].packet))
    assert ("hv1", a.ofport["db3"]) in [(d.host, d.port) for d in got], got
    assert any(v.kind == "scope_change" for v in r.violations)  # and the shared proof names the flow
    # only the provider-network starts see it: the ports and tunnel entries do not
    old = Verifier(net_of(GW_HOSTS, w, bad_flows), kinds=("port", "tunnel")).run()
    assert not [v for v in old.violations if v.kind == "isolation_port"], old.format()
    assert r.checked["external_starts"] == 3  # 203.0.113.10, .11, and everything else


def test_a_loop_through_two_hosts_tunnels(blue_red):
    w = blue_red
    flows = flows_of(HOSTS, w)
    _b, ba = w["blue"]
    vni = ba.vni["web"]

    def bounce(to):  # what arrives with blue's VNI is sent back out of the tunnel port to `to`
        return Flow(PIPELINE["tunnel_vni"], 200, Match.of(tunnel_id=vni),
                    (SetField("tun_ipv4_dst", HOSTS[to].pa), Output(IN_PORT)),
                    layer_id=1, tenant_id=ba.tenant_id, rule=f"planted: on to {to}")
    looped = injected(injected(flows, "hv1", bounce("hv2")), "hv2", bounce("hv1"))
    r = verify(net_of(HOSTS, w, looped))
    loops = [v for v in r.violations if v.kind == "loop"]
    assert loops and all(v.tenants == ["blue"] for v in loops), r.format()
    assert any("through the tunnels hv1 -> hv2 -> hv1" in v.message for v in loops)
    v = next(v for v in loops if v.host == "hv1")
    assert {h["host"] for h in v.path} == {"hv1", "hv2"} and v.in_port == TUNNEL_OFPORT
    # the concrete fabric goes round until its hop limit
    fabric = Fabric(PIPELINE, {h: (looped[h], HOSTS[h].pa) for h in HOSTS}, TUNNEL_OFPORT)
    from dataplane.match_action import Unsupported
    with pytest.raises(Unsupported, match="hop limit"):
        fabric.send("hv1", TUNNEL_OFPORT, dict(v.packet))
    # one bounce alone is no loop: hv2 delivers what hv1 sends on
    one = verify(net_of(HOSTS, w, injected(flows, "hv1", bounce("hv2"))))
    assert not [x for x in one.violations if x.kind == "loop"], one.format()


def test_a_change_rechecks_the_tenants_slice_and_equals_a_full_run(blue_red):
    w = blue_red
    flows = flows_of(HOSTS, w)
    s = Sliced(net_of(HOSTS, w, flows), workers=1)
    assert s.run().ok
    t_old, a_old = w["blue"]
    used = InUse()
    used.add(*w["red"])
    t_new = load_tenant(_blue_moved("vm4", "hv2"), HOSTS.keys())
    a_new = allocate(t_new, t_old, a_old, used)
    w2 = dict(w, blue=(t_new, a_new))
    flows2 = flows_of(HOSTS, w2)
    changed = {h: flows2[h] for h in HOSTS if {f.cookie for f in flows2[h]} != {f.cookie for f in flows[h]}}
    facts, refs = tenant_facts(t_new, a_new, HOSTS)
    red_before = s.outcomes["red"]
    inc = s.update("blue", changed, facts, refs)
    assert s.outcomes["red"] is red_before  # red's slice was not checked again
    full = Sliced(net_of(HOSTS, w2, flows2), workers=1).run()
    assert keys(inc, ()) == keys(full, ()) and inc.checked == full.checked
    # a shared flow changed: the shared proof and every slice on that host again
    _r, ra = w["red"]
    bad = Flow(PIPELINE["classify"], 200, Match.of(in_port=TUNNEL_OFPORT, tun_ipv4_src=HOSTS["hv3"].pa),
               (SetField("reg13", ra.vni["app"]), Goto(PIPELINE["l2_lookup"])), rule="planted")
    inc = s.update("blue", {"hv1": flows2["hv1"] + [bad]})
    full = Sliced(net_of(HOSTS, w2, injected(flows2, "hv1", bad)), workers=1).run()
    assert keys(inc, ()) == keys(full, ()) and "scope_change" in {v.kind for v in inc.violations}


def test_worker_processes_give_the_same_report(blue_red, monkeypatch):
    w = blue_red
    flows = flows_of(HOSTS, w)
    red, ra = w["red"]
    plant = Flow(PIPELINE["l2_lookup"], 200, Match.of(reg13=ra.vni["app"], eth_dst=red.port("vm1").mac),
                 (Output(99),), layer_id=4, tenant_id=ra.tenant_id, rule="planted")
    flows = injected(flows, "hv3", plant)
    monkeypatch.setattr(verify_slice, "MIN_TENANTS_FOR_WORKERS", 1)
    one = Sliced(net_of(HOSTS, w, flows), workers=1).run()
    two = Sliced(net_of(HOSTS, w, flows), workers=2).run()
    assert [v.format() for v in two.violations] == [v.format() for v in one.violations]
    assert two.checked == one.checked and [v.kind for v in two.violations] == ["unknown_port"]


def test_twins_under_every_layer_verify_clean_sliced():
    w = world(SHOP, SHOP2, hosts=GW_HOSTS)
    flows = flows_of(GW_HOSTS, w)
    r = same_as_whole_tables(GW_HOSTS, w, flows)
    assert r.ok and r.checked["external_starts"] == 5, r.format()  # 2 addresses each, and nobody's
    # twins that hold the same provider addresses (the controller refuses it): reported
    w = world(SHOP, shop("shop2"), hosts=GW_HOSTS)
    r = verify(net_of(GW_HOSTS, w, flows_of(GW_HOSTS, w)))
    assert any(v.kind == "isolation_external" and "owned by both shop and shop2" in v.message
               for v in r.violations), r.format()


def test_the_delta_entry_agrees_with_a_full_run_over_random_changes(blue_red):
    """`Sliced.update_delta` given the compiler's diff (HostDelta, or (removed, added))
    after each of a random series of changes (ports moved, a leak to the other twin's
    port planted and taken away, a scope change planted in a shared table) reports what a
    full run over the tables after the change reports: the same violations and counts."""
    import random
    from controller.compile.compiler import compile_tenant
    from controller.compile.desired import tenant_delta
    from tests.unit.fixtures import BLUE_PORTS, tenant_yaml

    rnd = random.Random(26)
    w = dict(blue_red)
    flows = flows_of(HOSTS, w)
    s = Sliced(net_of(HOSTS, w, flows), workers=1)
    assert s.run().ok
    placement = {p: h for p, _ip, h in BLUE_PORTS}
    planted = {}  # (host, what) -> Flow planted there
    seen = set()
    for step in range(16):
        what = ["move", "move", "leak", "shared"][rnd.randrange(4)] if step > 1 else ["leak", "move"][step]
        if what == "move":
            t_old, a_old = w["blue"]
            port = rnd.choice(sorted(placement))
            placement[port] = rnd.choice(sorted(set(HOSTS) - {placement[port]}))
            used = InUse()
            used.add(*w["red"])
            t_new = load_tenant(tenant_yaml("blue", "web", [(p, ip, placement[p]) for p, ip, _h in BLUE_PORTS]),
                                HOSTS.keys())
            a_new = allocate(t_new, t_old, a_old, used)
            old_f, new_f = compile_tenant(t_old, a_old, HOSTS), compile_tenant(t_new, a_new, HOSTS)
            deltas = tenant_delta(old_f, new_f)  # HostDelta per host
            w["blue"] = (t_new, a_new)
            facts, refs = tenant_facts(t_new, a_new, HOSTS)
            kw = dict(facts=facts, ports=refs)
            tenant = "blue"
            flows = flows_of(HOSTS, w)
            for (h, _w), f in planted.items():
                flows[h].append(f)
            if rnd.random() < 0.5:  # the same diff as (removed, added)
                deltas = {h: (d.removed, d.added) for h, d in deltas.items()}
        else:
            h = rnd.choice(sorted(HOSTS))
            blue, ba = w["blue"]
            red, ra = w["red"]
            if what == "leak":  # a flow of blue's to red's port (the other twin's)
                bad = Flow(PIPELINE["l2_lookup"], 200 + step, Match.of(reg13=ba.vni["web"], eth_dst=red.port("vm1").mac),
                           (Output(ra.ofport["vm3"]),), layer_id=4, tenant_id=ba.tenant_id, rule="planted")
                tenant = "blue"
            else:  # a shared flow that takes tunnelled packets into red's scope
                bad = Flow(PIPELINE["classify"], 200 + step, Match.of(in_port=TUNNEL_OFPORT, tun_ipv4_src=HOSTS["hv3"].pa),
                           (SetField("reg13", ra.vni["app"]), Goto(PIPELINE["l2_lookup"])), rule="planted")
                tenant = "red"
            old = planted.get((h, what))
            removed = [old] if old is not None and rnd.random() < 0.5 else []
            if removed:
                del planted[(h, what)]
                deltas = {h: (removed, [])}  # taken away
            else:
                deltas = {h: ([], [bad])}
                if old is not None:
                    deltas = {h: ([old], [bad])}
                planted[(h, what)] = bad
            flows = flows_of(HOSTS, w)
            for (x, _w), f in planted.items():
                flows[x].append(f)
            kw = {}
        inc = s.update_delta(tenant, deltas, **kw)
        full = Sliced(net_of(HOSTS, w, flows), workers=1).run()
        assert keys(inc, ()) == keys(full, ()), (step, what, inc.format(), full.format())
        assert [v.format() for v in inc.violations] == [v.format() for v in full.violations]
        assert inc.checked == full.checked, (step, what)
        seen |= {v.kind for v in inc.violations}
        if planted:
            assert not inc.ok
    assert {"isolation_port", "scope_change"} <= seen  # the leaks planted were caught by the delta entry


def _synth(tenants=30, hosts=10):
    from bench.synth import deployment
    from controller.compile.compiler import compile_world
    hs_, w, _docs = deployment(tenants, 10, hosts)
    return hs_, w, {h: list(fl.values()) for h, fl in compile_world(hs_, w).items()}


def _twins_agree(hs_, w, flows):
    """A full run that gives twins their twin's verdict reports what one that checks every
    tenant does: the same violations and counts, each tenant's counts and targets."""
    a = Sliced(net_of(hs_, w, flows), workers=1)
    b = Sliced(net_of(hs_, w, flows), workers=1, twins=False)
    ra, rb = a.run(), b.run()
    assert [v.format() for v in ra.violations] == [v.format() for v in rb.violations]
    assert ra.checked == rb.checked
    for n, o in a.outcomes.items():
        assert (o.counts, o.targets) == (b.outcomes[n].counts, b.outcomes[n].targets), n
    return a, ra


def test_twins_are_given_their_twins_verdict_and_it_is_the_same(monkeypatch):
    hs_, w, flows = _synth()
    s, r = _twins_agree(hs_, w, flows)
    assert r.ok and s.twinned == 20  # t0, t10, t20 are twins (same hosts, ports, shape): 10 groups of 3
    assert all(int(o.twin[1:]) % 10 == int(n[1:]) % 10 for n, o in s.outcomes.items() if o.twin)
    # in worker processes (a group stays in one): the same
    monkeypatch.setattr(verify_slice, "MIN_TENANTS_FOR_WORKERS", 1)
    two = Sliced(net_of(hs_, w, flows), workers=2)
    r2 = two.run()
    assert r2.checked == r.checked and r2.ok and two.twinned == 20
    assert {n: (o.counts, o.targets) for n, o in two.outcomes.items()} == \
        {n: (o.counts, o.targets) for n, o in s.outcomes.items()}


def _delivered_elsewhere(flows, host, tenant_id, ofport):
    """`flows` with the tenant's first delivery to a local port on `host` sent to `ofport`
    instead (a planted leak: same shape, same flow count)."""
    victim = next(f for f in flows[host] if f.tenant_id == tenant_id and any(
        act.__class__ is Output and act.port.__class__ is int and act.port != TUNNEL_OFPORT for act in f.actions))
    bad = Flow(victim.table, victim.priority, victim.match,
               tuple(Output(ofport) if act.__class__ is Output else act for act in victim.actions),
               victim.layer_id, victim.tenant_id, "planted")
    return {k: [bad if f is victim else f for f in fl] for k, fl in flows.items()}


def test_a_twin_that_leaks_is_checked_and_its_leak_caught():
    hs_, w, flows = _synth()
    t0, a0 = w["t0"]
    _t, a10 = w["t10"]
    (h, x), = [(k[0], k[1]) for k in [(p.host, a0.ofport[p.name]) for p in t0.ports if p.name == "p2"]]
    # t10's delivery to its own port on that host goes to t0's port instead: same shape, same count
    s, r = _twins_agree(hs_, w, _delivered_elsewhere(flows, h, a10.tenant_id, x))
    assert any(v.kind == "isolation_port" and v.tenants == ["t10", "t0"] for v in r.violations), r.format()
    assert not s.outcomes["t10"].twin and s.twinned == 19
    # the same leak in the group's first tenant: it is checked, its twins too (or given a clean one's verdict)
    _t, a20 = w["t20"]
    (y,) = [a20.ofport[p.name] for p in w["t20"][0].ports if p.name == "p2"]
    s, r = _twins_agree(hs_, w, _delivered_elsewhere(flows, h, a0.tenant_id, y))
    assert any(v.kind == "isolation_port" and v.tenants == ["t0", "t20"] for v in r.violations), r.format()
    assert not s.outcomes["t0"].twin


def test_a_twin_rewritten_into_its_twins_vni_is_not_given_its_verdict():
    hs_, w, flows = _synth()
    _t, a0 = w["t0"]
    _t, a10 = w["t10"]
    vni0, vni10 = sorted(a0.vni.values()), sorted(a10.vni.values())
    h = "hv1"
    mine = [f for f in flows[h] if f.tenant_id == a10.tenant_id and any(
        act.__class__ is SetField and act.field == "tunnel_id" for act in f.actions)]
    assert mine
    victim = mine[0]
    bad = Flow(victim.table, victim.priority, victim.match,
               tuple(SetField("tunnel_id", vni0[vni10.index(act.value)] if act.value in vni10 else act.value)
                     if act.__class__ is SetField and act.field == "tunnel_id" else act for act in victim.actions),
               victim.layer_id, victim.tenant_id, "planted")
    leaked = {k: [bad if f is victim else f for f in fl] for k, fl in flows.items()}
    s, r = _twins_agree(hs_, w, leaked)
    assert not r.ok and not s.outcomes["t10"].twin
    assert any("t10" in v.tenants and "t0" in v.tenants for v in r.violations), r.format()
