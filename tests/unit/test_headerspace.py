"""The symbolic engine against the concrete simulator: for random concrete packets, what
the simulator does is inside what the symbolic run says (soundness), and the basic set
operations are exact on small cases."""
import random

import pytest

from controller.compile.compiler import TUNNEL_OFPORT, compile_world
from controller.compile.pipeline import PIPELINE
from dataplane import headerspace as hs
from dataplane.match_action import (CT_EST, ETH_TYPE_ARP, ETH_TYPE_IP, ETH_TYPE_IPV6, FIELDS, Fabric, Match,
                                    Simulator)
from tests.unit.fixtures import GW_HOSTS as HOSTS

REGS0 = {**{f"reg{i}": 0 for i in range(16)}, "metadata": 0, "ct_state": 0, "ct_zone": 0}


def test_subtracting_every_value_of_a_bit_leaves_nothing():
    st = hs.start_state({})
    a = st.exclude((("reg10", 0, 1),))
    assert a is not None and a.value_of("reg10") is None
    assert a.exclude((("reg10", 1, 1),)) is None  # not 0 and not 1: empty


def test_witness_escapes_every_subtracted_cube():
    st = hs.start_state({"eth_type": ETH_TYPE_IP})
    for ip in ("10.0.0.0", "10.0.0.1", "10.0.0.2"):
        st = st.exclude((hs._item("ipv4_dst", ip, None),))
    st = st.restrict((hs._item("ipv4_dst", "10.0.0.0", "255.255.255.252"),))
    sol = st.witness()
    assert hs.from_int("ipv4_dst", st.value_at(sol, st.var("ipv4_dst"))) == "10.0.0.3"
    assert st.exclude((hs._item("ipv4_dst", "10.0.0.3", None),)).witness() is None


def test_move_keeps_the_equality():
    from dataplane.match_action import Move
    eng = hs.Engine(hs.IndexedHost("h", []), TUNNEL_OFPORT)
    st = hs.start_state({})
    (st,) = eng.act(Move("ipv4_dst", "reg12"), st, 0)
    st = st.restrict((("reg12", hs.to_int("ipv4_dst", "10.0.1.10"), 0xFFFFFFFF),))
    assert st.value_of("ipv4_dst") == hs.to_int("ipv4_dst", "10.0.1.10")


# ---------------------------------------------------------------------------------------
# Property: the concrete fate is contained in the symbolic result
# ---------------------------------------------------------------------------------------

def _admits(s: hs.State, inp: dict) -> bool:
    """Could this symbolic branch have started from input packet `inp` (field -> int)?
    Variables the run made up (ct_state, NAT, TTL) are existential."""
    def val(var):
        if var.__class__ is tuple:
            return var[0]
        serial = var >> hs.VAR_SHIFT
        return inp.get(hs.NAMES[serial], 0) if serial < hs.NF else None
    for var, (v, m) in s.cons.items():
        x = val(var)
        if x is not None and (x ^ v) & m:
            return False
    for neg in s.negs:
        inside = True
        for var, v, m in neg:
            x = val(var)
            if x is None or (x ^ v) & m:
                inside = False
                break
        if inside:
            return False
    return True


def _out_matches(s, env, inp, packet) -> bool:
    for name, value in packet.items():
        var = env.get(name) or hs.INPUT[name]
        want = hs.to_int(name, value)
        if var.__class__ is tuple:
            if var[0] != want:
                return False
            continue
        serial = var >> hs.VAR_SHIFT
        if serial < hs.NF:
            if inp.get(hs.NAMES[serial], 0) != want:
                return False
        else:
            c = s.cons.get(var)
            if c is not None and (c[0] ^ want) & c[1]:
                return False
    return True


def _random_packet(rng, macs, ips, own_mac, own_ip):
    pkt = {"eth_src": own_mac if rng.random() < 0.8 else rng.choice(macs),
           "eth_dst": rng.choice(macs + ["ff:ff:ff:ff:ff:ff", "02:99:00:00:00:01"])}
    kind = rng.random()
    if kind < 0.15:
        pkt.update(eth_type=ETH_TYPE_ARP, arp_op=rng.choice([1, 2]), arp_sha=pkt["eth_src"],
                   arp_spa=own_ip if rng.random() < 0.8 else rng.choice(ips),
                   arp_tha="00:00:00:00:00:00", arp_tpa=rng.choice(ips))
        return pkt
    if kind < 0.2:
        pkt["eth_type"] = 0x86DD
        return pkt
    pkt.update(eth_type=ETH_TYPE_IP, ipv4_src=own_ip if rng.random() < 0.85 else rng.choice(ips),
               ipv4_dst=rng.choice(ips), ip_ttl=rng.choice([1, 2, 64]))
    proto = rng.choice([1, 6, 17, 6])
    pkt["ip_proto"] = proto
    if proto == 1:
        pkt.update(icmpv4_type=rng.choice([0, 8]), icmpv4_code=0)
    else:
        l4 = "tcp" if proto == 6 else "udp"
        pkt[f"{l4}_src"] = rng.choice([40000, 8080, 80, 5432])
        pkt[f"{l4}_dst"] = rng.choice([80, 8080, 5432, 6005, 22])
    return pkt


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_concrete_fate_is_inside_the_symbolic_result(seed, shop_world):
    rng = random.Random(seed)
    tenants = shop_world
    flows = compile_world(HOSTS, tenants)
    t, a = tenants["shop"]
    macs = [p.mac for p in t.ports] + [rp.mac for r in t.routers for rp in r.ports] + \
        [lb.mac for lb in t.load_balancers]
    ips = [str(p.ip) for p in t.ports] + ["10.0.0.1", "10.0.1.1", "10.0.0.100", "203.0.113.1",
                                          "203.0.113.11", "192.168.50.7", "10.0.1.200"]
    engines = {h: hs.Engine(hs.IndexedHost(h, flows[h].values()), TUNNEL_OFPORT,
                            [PIPELINE["l2_lookup"].number, PIPELINE["lb_reply"].number]) for h in HOSTS}
    results = {}
    checked = 0
    for _ in range(150):
        tunnel = rng.random() < 0.3
        p = rng.choice(t.ports)
        host = p.host
        pkt = _random_packet(rng, macs, ips, p.mac, str(p.ip))
        if tunnel:
            host = rng.choice(sorted(HOSTS))
            peer = next(h for h in sorted(HOSTS) if h != host)
            vni = rng.choice(sorted(a.vni.values()))
            consts = {**REGS0, "in_port": TUNNEL_OFPORT, "tunnel_id": vni,
                      "tun_ipv4_src": HOSTS[peer].pa, "tun_ipv4_dst": HOSTS[host].pa}
            in_port = TUNNEL_OFPORT
        else:
            in_port = a.ofport[p.name]
            consts = {**REGS0, "in_port": in_port, "tunnel_id": 0, "tun_ipv4_src": 0, "tun_ipv4_dst": 0}
        key = (host, tuple(sorted(consts.items())))
        if key not in results:
            results[key] = engines[host].run(hs.start_state(consts))
        finals = results[key]
        concrete = dict(pkt)
        if tunnel:
            concrete.update(tunnel_id=consts["tunnel_id"], tun_ipv4_src=consts["tun_ipv4_src"],
                            tun_ipv4_dst=consts["tun_ipv4_dst"])
        fate = Simulator(PIPELINE, flows[host].values()).run(concrete, in_port)
        _assert_inside(finals, fate, consts, concrete)
        checked += 1
    assert checked == 150


def _assert_inside(finals, fate, consts, concrete) -> None:
    """The concrete fate of `concrete` (started with `consts`) is among the symbolic
    branches `finals`: some branch admits the input, each output is one of an admitting
    branch's, and a drop is a non-emitting admitting branch's through the same flow."""
    inp = {n: hs.to_int(n, v) for n, v in {**consts, **concrete}.items()}
    admitted = [s for s in finals if _admits(s, inp)]
    assert admitted, f"no symbolic branch admits {concrete}"
    for e in fate.outputs:
        ok = any(ev[0] == "out" and ev[2] == e.port and _out_matches(s, ev[3], inp, e.packet)
                 for s in admitted for ev in s.events)
        assert ok, f"{concrete} -> port {e.port} {e.packet}: not in the symbolic result"
    if fate.dropped:
        last = fate.decided_by()
        assert any(not s.emitted and any(f is last for _h, _t, f, _n in s.path) for s in admitted), \
            f"{concrete}: dropped by {last} concretely, no symbolic drop there"


def _random_packet6(rng, t, p):
    """Mostly a well-addressed IPv6 packet from port p to another port of tenant t."""
    q = rng.choice([x for x in t.ports if x is not p and x.ip6 is not None])
    gw = t.router_of(p.switch)
    mac = q.mac if q.switch == p.switch or gw is None else gw[1].mac
    pkt = {"eth_src": p.mac if rng.random() < 0.95 else q.mac,
           "eth_dst": mac if rng.random() < 0.9 else rng.choice([q.mac, "33:33:ff:00:00:10"]),
           "eth_type": ETH_TYPE_IPV6, "ipv6_src": str(p.ip6) if rng.random() < 0.9 else str(q.ip6),
           "ipv6_dst": str(q.ip6) if rng.random() < 0.9 else "fd00:70:0:9::1", "ip_ttl": rng.choice([1, 2, 64, 64])}
    proto = rng.choice([58, 6, 17, 6, 17])
    pkt["ip_proto"] = proto
    if proto == 58:
        kind = rng.choice([128, 129, 135, 136])
        pkt.update(icmpv6_type=kind, icmpv6_code=0)
        if kind in (135, 136):
            pkt["ipv6_nd_target"] = rng.choice([str(p.ip6), str(q.ip6)])
            pkt["ipv6_nd_sll" if kind == 135 else "ipv6_nd_tll"] = pkt["eth_src"]
    else:
        l4 = "tcp" if proto == 6 else "udp"
        pkt[f"{l4}_src"] = rng.choice([40000, 80, 81])
        pkt[f"{l4}_dst"] = rng.choice([80, 81, 81, 22, 53, 40000])
    return pkt


def _reply(pkt: dict) -> dict:
    r = {k: v for k, v in pkt.items() if not k.startswith(("tun", "reg", "ct_", "metadata", "in_port"))}
    r.update(eth_src=pkt["eth_dst"], eth_dst=pkt["eth_src"], ipv6_src=pkt["ipv6_dst"],
             ipv6_dst=pkt["ipv6_src"], ip_ttl=64)
    for l4 in ("tcp", "udp"):
        if f"{l4}_src" in pkt:
            r[f"{l4}_src"], r[f"{l4}_dst"] = pkt[f"{l4}_dst"], pkt[f"{l4}_src"]
    return r


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_concrete_ipv6_fate_under_conntrack_is_inside_the_symbolic_result(seed):
    """IPv6 through conntrack (ACLs and network policies of dual-stack tenants): random
    IPv6 packets and replies of earlier ones, each host's simulator keeping its
    connections (so later packets are +est, +rpl), land inside the symbolic result."""
    import yaml
    from tests.netpol_cases import CASES, base_tenant, with_policies
    from tests.unit.fixtures import world
    from tests.unit.test_ipv6 import dual
    rng = random.Random(seed)
    tenants = world(yaml.safe_dump(with_policies(base_tenant("np"), dict(CASES)["several-policies"])),
                    dual("d6"), hosts=HOSTS)
    flows = compile_world(HOSTS, tenants)
    ports = [(name, t, a, p) for name, (t, a) in tenants.items() for p in t.ports if p.ip6 is not None]
    by_ofport = {(p.host, a.ofport[p.name]): (t, a, p) for _n, t, a, p in ports}
    engines = {h: hs.Engine(hs.IndexedHost(h, flows[h].values()), TUNNEL_OFPORT,
                            [PIPELINE["l2_lookup"].number, PIPELINE["lb_reply"].number]) for h in HOSTS}
    fabric = Fabric(PIPELINE, {h: (flows[h].values(), HOSTS[h].pa) for h in HOSTS}, TUNNEL_OFPORT)
    results, sent = {}, []
    est = hops = 0
    for _ in range(150):
        if sent and rng.random() < 0.35:  # a reply from where an earlier packet was delivered
            t, a, p, pkt = rng.choice(sent)
            pkt = _reply(pkt)
        else:
            _n, t, a, p = rng.choice(ports)
            pkt = _random_packet6(rng, t, p)
        fabric.hops.clear()
        for d in fabric.send(p.host, a.ofport[p.name], pkt):
            got = by_ofport.get((d.host, d.port))
            if got is not None and d.packet.get("ipv6_dst") == str(got[2].ip6):
                sent.append(got + (d.packet,))
        for host, in_port, arrived, fate in fabric.hops:  # the sender's host and every tunnel entry
            tun = {k: arrived.get(k, 0) for k in ("tunnel_id", "tun_ipv4_src", "tun_ipv4_dst")}
            consts = {**REGS0, "in_port": in_port, **tun}
            key = (host, tuple(sorted(consts.items())))
            if key not in results:
                results[key] = engines[host].run(hs.start_state(consts))
            concrete = {k: v for k, v in arrived.items() if k not in consts}
            _assert_inside(results[key], fate, consts, concrete)
            hops += 1
            est += any(h.flow is not None and any(n == "ct_state" and v & m & CT_EST
                                                  for n, v, m in hs.match_items(h.flow.match))
                       for h in fate.path)
    assert hops > 150 and est > 0  # tunnel entries too; some met an established connection


def test_match_items_agree_with_match_matches():
    m = Match.of(eth_type=ETH_TYPE_IP, ipv4_dst="10.0.1.0/24", reg13=1000)
    items = hs.match_items(m)
    st = hs.start_state({})
    inside = {"eth_type": ETH_TYPE_IP, "ipv4_dst": "10.0.1.77", "reg13": 1000}
    outside = dict(inside, ipv4_dst="10.0.2.1")
    for pkt, want in ((inside, True), (outside, False)):
        assert m.matches(pkt) is want
        s = st.restrict(items)
        ok = _admits(s, {n: hs.to_int(n, v) for n, v in pkt.items()})
        assert ok is want
    assert set(FIELDS) == set(hs.NAMES)


def test_lazy_run_composed_is_the_eager_run(shop_world):
    """run_lazy's finals plus every pending (state, summary) composed are exactly run's
    branches: same sets, same events, same paths, in the same order of summaries."""
    tenants = shop_world
    flows = compile_world(HOSTS, tenants)
    t, a = tenants["shop"]
    memo = [PIPELINE["l2_lookup"].number, PIPELINE["lb_reply"].number]
    starts = [(p.host, {**REGS0, "in_port": a.ofport[p.name], "tunnel_id": 0, "tun_ipv4_src": 0,
                        "tun_ipv4_dst": 0}) for p in t.ports]
    for h in sorted(HOSTS):
        peer = next(x for x in sorted(HOSTS) if x != h)
        for vni in sorted(a.vni.values()):
            starts.append((h, {**REGS0, "in_port": TUNNEL_OFPORT, "tunnel_id": vni,
                               "tun_ipv4_src": HOSTS[peer].pa, "tun_ipv4_dst": HOSTS[h].pa}))
    lazy_used = 0
    for host, consts in starts:
        def shape(s):
            evs = tuple((ev[0],) + tuple(x for x in ev[1:] if not isinstance(x, dict)) for ev in s.events)
            return (sorted(s.cons.items()), s.negs, evs, tuple(s.path), s.emitted, s.fresh, s.halted)
        eager = hs.Engine(hs.IndexedHost(host, flows[host].values()), TUNNEL_OFPORT, memo)
        lazy = hs.Engine(hs.IndexedHost(host, flows[host].values()), TUNNEL_OFPORT, memo)
        want = eager.run(hs.start_state(consts))
        finals, pending = lazy.run_lazy(hs.start_state(consts))
        lazy_used += len(pending)
        got = list(finals)
        for p, summ in pending:
            got.extend(c for c in (hs.compose(p, b) for b in summ.states) if c is not None)
        assert sorted(map(repr, map(shape, got))) == sorted(map(repr, map(shape, want)))
        assert lazy.deps == eager.deps
    assert lazy_used > 0


def _shop_starts(t, a):
    starts = [(p.host, {**REGS0, "in_port": a.ofport[p.name], "tunnel_id": 0, "tun_ipv4_src": 0,
                        "tun_ipv4_dst": 0}) for p in t.ports]
    for h in sorted(HOSTS):
        peer = next(x for x in sorted(HOSTS) if x != h)
        for vni in sorted(a.vni.values()):
            starts.append((h, {**REGS0, "in_port": TUNNEL_OFPORT, "tunnel_id": vni,
                               "tun_ipv4_src": HOSTS[peer].pa, "tun_ipv4_dst": HOSTS[h].pa}))
    return starts


def _shape(s):
    evs = tuple((ev[0],) + tuple(x for x in ev[1:] if not isinstance(x, dict)) for ev in s.events)
    return (tuple(s.path), evs, s.emitted, s.fresh, s.halted)


def test_nested_shared_summaries_expand_to_the_eager_run(shop_world):
    """Summaries that call other summaries (resolved per host) and are shared between
    hosts through a pool give, expanded, the branches of the eager run on every host:
    same paths (host names included), events and verdicts, and the same packets."""
    tenants = shop_world
    flows = compile_world(HOSTS, tenants)
    t, a = tenants["shop"]
    memo = [PIPELINE["l2_lookup"].number, PIPELINE["dispatch"].number, PIPELINE["lb_reply"].number]
    pool = hs.SummaryPool()
    nested = {h: hs.Engine(hs.IndexedHost(h, flows[h].values()), TUNNEL_OFPORT, memo,
                           ("reg13", "reg15"), nested=True, pool=pool) for h in sorted(HOSTS)}
    calls = 0
    for host, consts in _shop_starts(t, a):
        eager = hs.Engine(hs.IndexedHost(host, flows[host].values()), TUNNEL_OFPORT)
        want = eager.run(hs.start_state(consts))
        eng = nested[host]
        finals, pending = eng.run_lazy(hs.start_state(consts))
        got = list(finals)
        for p, summ in pending:
            calls += len(summ.calls)
            got.extend(eng.expand(p, summ))
        assert sorted(map(repr, map(_shape, got))) == sorted(map(repr, map(_shape, want)))
        for s in want:  # each eager branch's witness input lies in a nested branch with its shape
            sol = s.witness()
            if sol is None:
                continue
            inp = s.input_packet(sol)
            assert any(_shape(g) == _shape(s) and _admits(g, inp) for g in got), _shape(s)
    assert calls > 0 and pool.reused > 0


def test_pool_does_not_share_a_summary_whose_flows_differ(shop_world):
    """A summary is reused on another host only if every lookup it made offers the same
    flows there: one planted flow in a consulted table makes the host compute its own."""
    from dataplane.match_action import Flow, Output
    tenants = shop_world
    flows = compile_world(HOSTS, tenants)
    t, a = tenants["shop"]
    l2 = PIPELINE["l2_lookup"]
    memo = [l2.number, PIPELINE["dispatch"].number, PIPELINE["lb_reply"].number]
    h1, h2 = sorted(HOSTS)[:2]
    sw = t.ports[0].switch
    planted = Flow(l2, 300, Match.of(reg13=a.vni[sw], eth_dst="02:99:00:00:00:01"),
                   (Output(77),), layer_id=4, tenant_id=a.tenant_id, rule="planted")
    pool = hs.SummaryPool()
    e1 = hs.Engine(hs.IndexedHost(h1, flows[h1].values()), TUNNEL_OFPORT, memo, ("reg13", "reg15"),
                   nested=True, pool=pool)
    e2 = hs.Engine(hs.IndexedHost(h2, list(flows[h1].values()) + [planted]), TUNNEL_OFPORT, memo,
                   ("reg13", "reg15"), nested=True, pool=pool)
    e3 = hs.Engine(hs.IndexedHost(h2, flows[h1].values()), TUNNEL_OFPORT, memo, ("reg13", "reg15"),
                   nested=True, pool=pool)
    key = (l2.number, (a.vni[sw], 0))
    s1 = e1.summary(key)
    s2 = e2.summary(key)
    assert any(f is planted for b in s2.states for _h, _t, f, _n in b.path)
    assert not any(f is planted for b in s1.states for _h, _t, f, _n in b.path)
    s3 = e3.summary(key)  # the same flows as h1: shared, with h2's name in every hop
    assert pool.reused == 1 and len(s3.states) == len(s1.states)
    assert all(hh == h2 for b in s3.states + tuple(b for b, _k in s3.calls) for hh, *_ in b.path)


def test_a_witness_search_out_of_budget_says_so():
    """solve() gives up with Unsupported (which verify reports), not a NameError."""
    from dataplane import ternary
    from dataplane.match_action import Unsupported
    with pytest.raises(Unsupported, match="budget"):
        ternary.solve({}, (), budget=0)
