"""`nvctl verify`: isolation over the whole header space, on compiled worlds with bugs
planted in them. Every counterexample is replayed in the concrete simulator."""
import dataclasses

from controller.compile.allocator import InUse, allocate
from controller.compile.compiler import TUNNEL_OFPORT, compile_world
from controller.compile.pipeline import PIPELINE
from controller.analysis.verify import Verifier, network_from_compiled, tenant_facts, verify
from dataplane.match_action import Ct, Fabric, Flow, Match, Nat, Output, SetField
from tests.unit.fixtures import BLUE_PORTS, GW_HOSTS, HOSTS, SHOP, shop, tenant_yaml, world
from topology.schema import load_tenant

# shop's twin: the same spec but for its provider addresses (each is one tenant's at a
# time: InUse.addresses), so that packets from the provider network reach one twin only
SHOP2 = shop("shop2").replace("203.0.113.1", "203.0.113.2")
# Invalid packets (+inv) through the gateway's ct(commit,nat(src=...)) are not translated
# and ext_out does not look at ct_state: the verifier reports this leak for every tenant
# with an external router. Tests about other properties leave it aside.
KNOWN = {"isolation_external"}


def flows_of(hosts, tenants):
    return {h: list(fl.values()) for h, fl in compile_world(hosts, tenants).items()}


def net_of(hosts, tenants, flows):
    return network_from_compiled(hosts, tenants, flows)


def kinds(report, ignore=()):
    return sorted({v.kind for v in report.violations} - set(ignore))


def replay(hosts, flows, v):
    """Run a violation's counterexample through the concrete multi-host simulator."""
    fabric = Fabric(PIPELINE, {h: (flows[h], hosts[h].pa) for h in hosts}, TUNNEL_OFPORT)
    pkt = dict(v.packet)
    return fabric.send(v.host, v.in_port, pkt)


def injected(flows, host, flow):
    out = {h: list(fl) for h, fl in flows.items()}
    out[host].append(flow)
    return out


def replaced(flows, host, pred, make):
    out = {h: list(fl) for h, fl in flows.items()}
    out[host] = [make(f) if pred(f) else f for f in out[host]]
    return out


def test_blue_and_red_verify_clean(blue_red):
    w = blue_red
    r = verify(net_of(HOSTS, w, flows_of(HOSTS, w)))
    assert r.ok, r.format()
    assert r.checked["port_starts"] == 8 and r.checked["tunnel_starts"] > 0
    assert r.checked["reach_pairs"] == 24  # 4 ports on one switch each: 12 ordered pairs x 2
    assert r.exit_code == 0


def test_output_to_another_tenants_port_is_found_and_really_delivers(blue_red):
    w = blue_red
    flows = flows_of(HOSTS, w)
    blue, ba = w["blue"]
    red, ra = w["red"]
    victim = red.port("vm3")  # on hv1, like blue's vm1 and vm4
    bad = Flow(PIPELINE["l2_lookup"], 200, Match.of(reg13=ba.vni["web"], eth_dst=blue.port("vm3").mac),
               (Output(ra.ofport["vm3"]),), layer_id=4, tenant_id=ba.tenant_id, rule="planted")
    flows = injected(flows, "hv1", bad)
    r = verify(net_of(HOSTS, w, flows))
    (v,) = [v for v in r.violations if v.kind == "isolation_port"]
    assert v.tenants == ["blue", "red"]
    assert v.cookie == f"{bad.cookie:#x}" and "planted" in " ".join(h.get("rule", "") for h in v.path)
    assert [h["table"] for h in v.path][:2] == ["classify", "port_security"]
    got = replay(HOSTS, flows, v)
    assert ("hv1", ra.ofport["vm3"]) in [(d.host, d.port) for d in got], (v.format(), got)
    assert "l2_lookup" in v.format() and "VIOLATION isolation_port" in v.format()
    assert r.exit_code == 1 and r.to_json()["violations"][0]["kind"]


def test_rewriting_to_another_tenants_vni_is_found(blue_red):
    w = blue_red
    flows = flows_of(HOSTS, w)
    blue, ba = w["blue"]
    _red, ra = w["red"]
    bad = Flow(PIPELINE["dispatch"], 200,
               Match.of(reg13=ba.vni["web"], reg15=ba.port_key["vm2"]),
               (SetField("tunnel_id", ra.vni["app"]), SetField("tun_ipv4_dst", HOSTS["hv2"].pa),
                Output(TUNNEL_OFPORT)), layer_id=5, tenant_id=ba.tenant_id, rule="planted vni")
    flows = injected(flows, "hv1", bad)
    r = verify(net_of(HOSTS, w, flows))
    vs = [v for v in r.violations if v.kind == "isolation_vni"]
    assert vs and all(v.tenants == ["blue", "red"] for v in vs), r.format()
    assert vs[0].cookie == f"{bad.cookie:#x}"
    # the counterexample really arrives on hv2 inside red's VNI
    fabric = Fabric(PIPELINE, {h: (flows[h], HOSTS[h].pa) for h in HOSTS}, TUNNEL_OFPORT)
    fabric.send(vs[0].host, vs[0].in_port, dict(vs[0].packet))
    assert any(h == "hv2" and port == TUNNEL_OFPORT and p.get("tunnel_id") == ra.vni["app"]
               for h, port, p, _fate in fabric.hops), fabric.hops


def _install_replace_on_add(flows_in_order):
    """What OVS holds after adding these flows in order: one flow per (table, priority, match)."""
    held = {}
    for f in flows_in_order:
        held[(f.table.number, f.priority, f.match)] = f
    return list(held.values())


def _twins():
    w = world(SHOP, SHOP2, hosts=GW_HOSTS)
    per_tenant = {}
    from controller.compile.compiler import compile_host, compile_tenant
    host_flows = {h: compile_host(h, GW_HOSTS) for h in GW_HOSTS}
    for name, (t, a) in w.items():
        per_tenant[name] = compile_tenant(t, a, GW_HOSTS)
    return w, host_flows, per_tenant


def test_twins_with_a_load_balancer_replace_on_add():
    w, host_flows, per_tenant = _twins()
    # today's compiler: no two twin flows share an identity, so OVS keeps all of them
    installed = {h: _install_replace_on_add(host_flows[h] + per_tenant["shop"].get(h, []) +
                                            per_tenant["shop2"].get(h, [])) for h in GW_HOSTS}
    r = verify(net_of(GW_HOSTS, w, installed))
    assert kinds(r, KNOWN) == [], r.format()

    # the compiler as it was: lb_reply matched the backend's address and port only
    def unscoped(f):
        if f.table.name != "lb_reply" or f.priority == 0:
            return f
        items = {n: (v if m is None else (v, m)) for n, v, m, _ in f.match.items if n != "reg13"}
        return Flow(f.table, f.priority, Match.of(**items), f.actions, f.layer_id, f.tenant_id, f.rule)

    old = {name: {h: [unscoped(f) for f in fl] for h, fl in pt.items()} for name, pt in per_tenant.items()}
    both = {h: list({f.cookie: f for f in host_flows[h] + old["shop"].get(h, []) +
                     old["shop2"].get(h, [])}.values()) for h in GW_HOSTS}
    r = verify(net_of(GW_HOSTS, w, both))  # both held (as a keyed-by-cookie view would): overlap
    assert "overlap" in kinds(r), r.format()
    ov = [v for v in r.violations if v.kind == "overlap"]
    assert ov and all(set(v.tenants) == {"shop", "shop2"} and "lb_reply" in v.message for v in ov)
    installed = {h: _install_replace_on_add(both[h]) for h in GW_HOSTS}  # what OVS really holds
    r = verify(net_of(GW_HOSTS, w, installed))
    zs = [v for v in r.violations if v.kind == "shared_zone"]
    assert zs and zs[0].tenants == ["shop", "shop2"], r.format()
    assert all("lb_reply" in [h["table"] for h in z.path] for z in zs)
    direct = [z for z in zs if z.packet.get("ipv4_src") in ("10.0.0.12", "10.0.1.10")]
    assert direct and direct[0].packet["tcp_src"] == 8080  # a backend's own reply, untranslated
    fabric = Fabric(PIPELINE, {h: (installed[h], GW_HOSTS[h].pa) for h in GW_HOSTS}, TUNNEL_OFPORT)
    fabric.send(direct[0].host, direct[0].in_port, dict(direct[0].packet))
    zones = {hop.flow.actions[0].zone for _h, _p, _pk, fate in fabric.hops for hop in fate.path
             if hop.flow is not None and hop.table == "lb_reply" and hop.flow.actions
             and isinstance(hop.flow.actions[0], Ct)}
    assert w["shop2"][1].zone["lb:"] in zones, fabric.hops  # really through shop2's zone


def test_snat_to_an_address_the_tenant_does_not_own(shop_world):
    w = shop_world
    flows = flows_of(GW_HOSTS, w)

    def is_snat(f):
        return f.table.name == "ext_snat" and f.priority == 100 and f.rule.startswith("router r1: SNAT")

    def steal(f):
        ct = f.actions[0]
        return Flow(f.table, f.priority, f.match, (dataclasses.replace(ct, nat=Nat("src", "203.0.113.99")),),
                    f.layer_id, f.tenant_id, f.rule)

    assert any(is_snat(f) for f in flows["hv1"])
    bad = replaced(flows, "hv1", is_snat, steal)
    r = verify(net_of(GW_HOSTS, w, bad))
    hits = [v for v in r.violations if v.kind == "isolation_external" and "203.0.113.99" in v.message]
    assert hits, r.format()
    assert hits[0].tenants == ["shop"] and "ext_out" in [h["table"] for h in hits[0].path]
    clean = verify(net_of(GW_HOSTS, w, flows))
    assert not [v for v in clean.violations if "203.0.113.99" in v.message]


def test_a_shared_conntrack_zone_is_found():
    w = world(SHOP, SHOP2, hosts=GW_HOSTS)
    flows = flows_of(GW_HOSTS, w)
    _t, a1 = w["shop"]
    _t2, a2 = w["shop2"]

    def mine(f):
        return f.table.name == "acl_out_ct" and f.tenant_id == a2.tenant_id

    def borrow(f):
        return Flow(f.table, f.priority, f.match, (dataclasses.replace(f.actions[0], zone=a1.zone["db1"]),),
                    f.layer_id, f.tenant_id, f.rule)

    host = w["shop2"][0].port("db1").host
    r = verify(net_of(GW_HOSTS, w, replaced(flows, host, mine, borrow)))
    zs = [v for v in r.violations if v.kind == "shared_zone"]
    assert zs and zs[0].tenants == ["shop2", "shop"], r.format()
    assert f"zone {a1.zone['db1']}" in zs[0].message


def test_a_shared_group_is_found():
    used = InUse()
    out = {}
    for doc in (SHOP, SHOP2):
        t = load_tenant(doc, GW_HOSTS.keys())
        a = allocate(t, None, None, used)
        if out:  # the allocator's bug, planted: shop2 gets shop's group id
            first = next(iter(out.values()))[1]
            a = dataclasses.replace(a, group=dict(first.group))
        used.add(t, a)
        out[t.name] = (t, a)
    r = verify(net_of(GW_HOSTS, out, flows_of(GW_HOSTS, out)))
    assert "shared_group" in kinds(r), r.format()
    assert any(v.kind == "shared_group" and set(v.tenants) == {"shop", "shop2"} for v in r.violations)


def test_a_removed_deliver_flow_makes_pairs_unreachable(blue_red):
    w = blue_red
    flows = flows_of(HOSTS, w)
    _b, ba = w["blue"]
    gone = replaced(flows, "hv2", lambda f: f.table.name == "deliver" and f.tenant_id == ba.tenant_id,
                    lambda f: None)
    gone["hv2"] = [f for f in gone["hv2"] if f is not None]
    r = verify(net_of(HOSTS, w, gone))
    un = [v for v in r.violations if v.kind == "unreachable"]
    assert {v.message.split()[3] for v in un} == {"vm1", "vm3", "vm4"}, r.format()
    assert all("reaches vm2" in v.message and v.tenants == ["blue"] for v in un)
    assert un[0].path and un[0].path[-1]["table"] == "deliver"  # where the witness ends
    assert kinds(r) == ["unreachable"]


def test_a_miss_flow_that_drops_instead_of_continuing_is_an_undeclared_drop(blue_red):
    w = blue_red
    flows = flows_of(HOSTS, w)

    def miss(f):
        return f.table.name == "acl_in_ct" and f.priority == 0

    r = verify(net_of(HOSTS, w, replaced(flows, "hv1", miss,
                                         lambda f: Flow(f.table, 0, f.match, (), f.layer_id, 0, f.rule))))
    ds = [v for v in r.violations if v.kind == "undeclared_drop"]
    assert ds and "acl_in_ct" in ds[0].message and "continue" in ds[0].message, r.format()
    assert "unreachable" in kinds(r)  # hv1's ports reach nobody any more


def test_a_missing_miss_flow_is_an_undeclared_drop(blue_red):
    w = blue_red
    flows = flows_of(HOSTS, w)
    gone = {h: [f for f in fl if not (h == "hv3" and f.table.name == "arp_responder" and f.priority == 0)]
            for h, fl in flows.items()}
    r = verify(net_of(HOSTS, w, gone))
    ds = [v for v in r.violations if v.kind == "undeclared_drop"]
    assert ds and all(v.host == "hv3" for v in ds) and "no flow matched in arp_responder" in ds[0].message
    # the witness really is dropped there by the concrete simulator
    assert replay(HOSTS, gone, ds[0]) == []


def test_restricting_to_a_tenant_or_host(blue_red):
    w = blue_red
    net = net_of(HOSTS, w, flows_of(HOSTS, w))
    r = verify(net, tenant="red")
    assert r.ok and r.checked["port_starts"] == 4
    r = verify(net, host="hv1")
    assert r.ok and r.checked["port_starts"] == 3  # blue vm1, vm4, red vm3


def _blue_moved(port, host):
    """BLUE with `port` on another host."""
    return tenant_yaml("blue", "web", [(p, ip, host if p == port else h) for p, ip, h in BLUE_PORTS])


def test_incremental_recheck_equals_a_full_run(blue_red):
    w = blue_red
    flows = flows_of(HOSTS, w)
    _r, ra = w["red"]
    red = w["red"][0]
    plant = Flow(PIPELINE["l2_lookup"], 200, Match.of(reg13=ra.vni["app"], eth_dst=red.port("vm1").mac),
                 (Output(99),), layer_id=4, tenant_id=ra.tenant_id, rule="planted")
    flows = injected(flows, "hv3", plant)  # a violation that must survive the change
    v = Verifier(net_of(HOSTS, w, flows))
    before = v.run()
    assert not before.ok
    # blue's vm4 moves from hv1 to hv2
    t_old, a_old = w["blue"]
    used = InUse()
    used.add(*w["red"])
    t_new = load_tenant(_blue_moved("vm4", "hv2"), HOSTS.keys())
    a_new = allocate(t_new, t_old, a_old, used)
    w2 = dict(w, blue=(t_new, a_new))
    flows2 = flows_of(HOSTS, w2)
    flows2["hv3"].append(plant)
    changed = {h: flows2[h] for h in HOSTS if {f.cookie for f in flows2[h]} != {f.cookie for f in flows[h]}}
    assert changed
    facts, refs = tenant_facts(t_new, a_new, HOSTS)
    inc = v.update("blue", changed, facts, refs)
    full = Verifier(net_of(HOSTS, w2, flows2)).run()
    assert [x.key() for x in inc.violations] == [x.key() for x in full.violations]
    assert inc.checked == full.checked
    assert [x.kind for x in inc.violations] == ["unknown_port"]
    # and a change that breaks blue is seen by the incremental path too
    broken = {"hv2": [f for f in flows2["hv2"] if not (f.table.name == "deliver" and f.tenant_id == a_new.tenant_id
                                                       and f.rule == "port vm4")]}
    inc = v.update("blue", broken, None, None)
    flows3 = dict(flows2, **broken)
    full = Verifier(net_of(HOSTS, w2, flows3)).run()
    assert [x.key() for x in inc.violations] == [x.key() for x in full.violations]
    assert "unreachable" in [x.kind for x in inc.violations]
