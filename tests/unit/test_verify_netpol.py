"""`nvctl verify` and network policies: the pairs the policies separate are not required
to reach each other, those they allow must reach with a packet they allow, and no first
packet of a connection the policies deny (fresh: +trk+new in every conntrack zone on its
way) is delivered, proved over the installed flows. Leaks are planted in compiled flows;
every counterexample is replayed in the concrete simulator (its conntrack sees a new
connection) and really delivers."""
import itertools

import pytest

from controller.analysis.verify import Verifier, network_from_compiled, verify
from controller.analysis.verify_model import policy_allows, policy_pairs
from controller.compile.pipeline import PIPELINE
from controller.spaces.registers import INPORT, LOGICAL_SWITCH, OUTPORT
from dataplane.match_action import Flow, Goto, Match
from tests.unit.fixtures import BLUE, HOSTS, RED, world
from tests.unit.test_netpol import DB_FROM_FE, doc
from tests.unit.test_verify import flows_of, injected, replay
from topology.policy import allows

NO_EGRESS = {"name": "web-no-out", "namespace": "web", "podSelector": {"matchLabels": {"app": "fe"}},
             "policyTypes": ["Egress"],
             "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"tier": "db"}}}],
                         "ports": [{"protocol": "UDP", "port": 53}]}]}


def compiled(*docs):
    w = world(*docs)
    return w, flows_of(HOSTS, w)


def planted_allow(w, tenant, stage, port, **match):
    """A flow above every rule of `stage` ("policy_in"/"policy_eg"; below its +inv drop
    and its replies) that lets every connection of `port` through to the commit table:
    what a bug or a hand would add."""
    t, a = w[tenant]
    p = t.port(port)
    slot = OUTPORT if stage == "policy_in" else INPORT
    m = {**LOGICAL_SWITCH.m(a.vni[p.switch]), **slot.m(a.port_key[port]), "eth_type": 0x0800, **match}
    return p.host, Flow(PIPELINE[stage], 63500, Match.of(**m), (Goto(PIPELINE[f"{stage}_commit"]),),
                        layer_id=17 if stage == "policy_in" else 16, tenant_id=a.tenant_id, rule="planted")


def delivered(flows, v):
    return [(d.host, d.port) for d in replay(HOSTS, flows, v)]


def test_a_correct_compile_verifies_clean_with_the_policies_expectations():
    w, flows = compiled(doc([DB_FROM_FE]))
    r = verify(network_from_compiled(HOSTS, w, flows))
    assert r.ok, r.format()
    # 5 ports routed: 20 ordered pairs, less the 4 into db1 and db2 (app=pg) from other than web's app=fe
    assert r.checked["reach_pairs"] == 16
    assert r.checked["policy_pairs"] == 8  # every pair into db1 or db2 is limited (to tcp 5432 at most)
    assert "16 reachable pairs, 8 pairs against network policies," in r.format()
    facts = network_from_compiled(HOSTS, w, flows).tenants["shop"]
    assert ("db3", "db1") not in facts.reach_pairs and ("web1", "db1") in facts.reach_pairs
    assert facts.policy[("web1", "db1")].allowed == (("tcp", 5432, 5432),)
    assert facts.policy[("db3", "db1")].allowed == ()


def test_egress_and_ingress_both_limit_and_verify_clean():
    w, flows = compiled(doc([DB_FROM_FE, NO_EGRESS]))
    net = network_from_compiled(HOSTS, w, flows)
    facts = net.tenants["shop"]
    assert facts.policy[("web1", "db3")].allowed == (("udp", 53, 53),)
    assert facts.policy[("web1", "db1")].allowed == ()  # egress udp 53 AND ingress tcp 5432
    # web1 and web2 are both app=fe: neither may open anything to the other; db1 to web1 is free
    assert ("web1", "web2") not in facts.reach_pairs and ("web2", "web1") not in facts.reach_pairs
    assert ("db1", "web1") in facts.reach_pairs and ("db1", "web1") not in facts.policy
    r = verify(net)
    assert r.ok, r.format()


def test_an_allowed_pair_must_reach_with_a_packet_the_policies_allow():
    """The allow rule for tcp 5432 removed from the flows: web1 still reaches db1 by ARP
    and by nothing else; the pair is reported with an example the policies allow."""
    w, flows = compiled(doc([DB_FROM_FE]))
    cut = {h: [f for f in fl if not (f.table.name == "policy_in" and "db-from-fe" in f.rule)]
           for h, fl in flows.items()}
    r = verify(network_from_compiled(HOSTS, w, cut))
    got = {v.message.split(";")[0] for v in r.violations if v.kind == "unreachable"}
    assert "no packet from web1 (hv1) reaches db1 (hv2)" in got
    (v,) = [v for v in r.violations if v.kind == "unreachable" and v.message.startswith("no packet from web1 (hv1) reaches db1")]
    assert "tcp to 10.0.1.10:5432" in v.message and v.packet["tcp_dst"] == 5432
    assert {v.kind for v in r.violations} == {"unreachable"}


def test_a_planted_ingress_allow_all_is_a_policy_leak_with_a_counterexample_that_delivers():
    w, flows = compiled(doc([DB_FROM_FE]))
    host, bad = planted_allow(w, "shop", "policy_in", "db1")
    flows = injected(flows, host, bad)
    r = verify(network_from_compiled(HOSTS, w, flows))
    leaks = [v for v in r.violations if v.kind == "policy_leak"]
    assert {v.message.split(" (")[0] for v in leaks} == {
        f"a new connection from {x}" for x in ("web1", "web2", "db2", "db3")}, r.format()
    assert not r.ok and {v.kind for v in r.violations} == {"policy_leak"}
    t, a = w["shop"]
    for v in leaks:
        assert v.cookie == f"{bad.cookie:#x}", v.format()
        assert "db1's Ingress policies do not allow it" in v.message
        assert "policy_in" in [h["table"] for h in v.path] and v.path[-1]["table"] == "deliver"
        assert "(conntrack said +new+trk)" in v.message
        assert (t.port("db1").host, a.ofport["db1"]) in delivered(flows, v), v.format()
        assert v.packet["eth_type"] == 0x0800 and v.packet["ipv4_dst"] == "10.0.1.10"
    # web1 may open tcp 5432 to db1: its leak is another port or protocol
    (v,) = [v for v in leaks if v.message.startswith("a new connection from web1")]
    assert not (v.packet["ip_proto"] == 6 and v.packet["tcp_dst"] == 5432)
    assert "VIOLATION policy_leak [shop]" in v.format() and "deciding flow" in v.format()


def test_a_planted_allow_of_one_more_port_is_found_for_that_port_only():
    w, flows = compiled(doc([DB_FROM_FE]))
    host, bad = planted_allow(w, "shop", "policy_in", "db1", ip_proto=6, tcp_dst=22)
    flows = injected(flows, host, bad)
    r = verify(network_from_compiled(HOSTS, w, flows))
    leaks = [v for v in r.violations if v.kind == "policy_leak"]
    assert len(leaks) == 4 and all(", tcp port 22," in v.message for v in leaks), r.format()
    for v in leaks:
        assert v.packet["tcp_dst"] == 22 and delivered(flows, v)


def test_a_planted_egress_allow_all_is_a_policy_leak_across_hosts():
    w, flows = compiled(doc([NO_EGRESS]))
    assert verify(network_from_compiled(HOSTS, w, flows)).ok
    host, bad = planted_allow(w, "shop", "policy_eg", "web1")
    flows = injected(flows, host, bad)
    r = verify(network_from_compiled(HOSTS, w, flows))
    leaks = [v for v in r.violations if v.kind == "policy_leak"]
    got = {v.message.split(",")[0] for v in leaks}
    assert got == {f"a new connection from web1 (10.0.0.11) to {p}" for p in (
        "web2 (10.0.0.12)", "db1 (10.0.1.10)", "db2 (10.0.1.20)", "db3 (10.0.1.30)")}, r.format()
    t, a = w["shop"]
    for v in leaks:
        assert "web1's Egress policies do not allow it" in v.message and v.cookie == f"{bad.cookie:#x}"
        dst = [p for p in ("web2", "db1", "db2", "db3") if f" to {p} " in v.message][0]
        assert (t.port(dst).host, a.ofport[dst]) in delivered(flows, v), v.format()
    # db1 is on hv2: the counterexample's path crosses the tunnel
    (v,) = [v for v in leaks if " to db1 " in v.message]
    assert [h["host"] for h in v.path][0] == "hv1" and v.path[-1]["host"] == "hv2"


def test_twins_with_identical_policies_verify_clean_and_isolated():
    w, flows = compiled(doc([DB_FROM_FE], name="red"), doc([DB_FROM_FE], name="blue"))
    r = verify(network_from_compiled(HOSTS, w, flows))
    assert r.ok, r.format()
    assert r.checked["policy_pairs"] == 16 and r.checked["reach_pairs"] == 32
    # a leak planted in one twin is that twin's alone
    host, bad = planted_allow(w, "red", "policy_in", "db1")
    r = verify(network_from_compiled(HOSTS, w, injected(flows, host, bad)))
    assert {tuple(v.tenants) for v in r.violations} == {("red",)}
    assert {v.kind for v in r.violations} == {"policy_leak"}


def test_tenants_without_policies_carry_no_policy_work():
    w, flows = compiled(BLUE, RED)
    net = network_from_compiled(HOSTS, w, flows)
    assert all(f.policy == {} for f in net.tenants.values())
    r = Verifier(net).run()
    assert r.ok and "policy_pairs" not in r.checked and "network policies" not in r.format()


def test_pair_expectations_agree_with_the_policy_selection_for_every_protocol_and_port():
    """policy_pairs' cubes against topology.policy.allows (what the compiler reads)."""
    pols = [DB_FROM_FE, NO_EGRESS,
            {"name": "ranges", "podSelector": {"matchLabels": {"app": "redis"}},
             "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.12/32"]}}],
                          "ports": [{"port": 6000, "endPort": 6010}, {"protocol": "UDP"}]},
                         {"from": [{"podSelector": {"matchLabels": {"app": "pg"}}}]}]}]
    w = world(doc(pols))
    t, _a = w["shop"]
    pairs = policy_pairs(t)
    for a, b in itertools.permutations([p.name for p in t.ports], 2):
        pa, pb = t.port(a), t.port(b)
        pp = pairs.get((a, b))
        for proto, dport in itertools.product(("tcp", "udp"), (0, 1, 22, 53, 5432, 5999, 6000, 6010, 6011, 65535)):
            want = allows(t, "Egress", a, pb.ip, proto, dport) and allows(t, "Ingress", b, pa.ip, proto, dport)
            got = pp is None or policy_allows(pp.allowed, proto, dport)
            assert got == want, (a, b, proto, dport, pp)
        want_icmp = allows(t, "Egress", a, pb.ip, "icmp", 0) and allows(t, "Ingress", b, pa.ip, "icmp", 0)
        assert (pp is None or pp.allowed is None) == want_icmp, (a, b, pp)


def _case_ids():
    from tests.netpol_cases import CASES
    return [name for name, _ in CASES]


@pytest.mark.parametrize("case", _case_ids())
def test_the_oracle_cases_expectations_agree_with_the_oracle_and_verify_clean(case):
    """tests/netpol_cases.py's policy sets on the x/y/z x a/b/c tenant (dual stack, routed,
    ports on three hosts): the expectations verify derives, over IPv4 and over IPv6,
    agree with the independent Kubernetes oracle (tests/k8s_oracle.py) on the probed
    services, and the compiled flows verify clean: every allowed pair reaches with an
    allowed packet of each version, nothing denied leaks over either."""
    import yaml
    from tests import k8s_oracle as oracle
    from tests.netpol_cases import CASES, SERVICES, base_tenant, with_policies
    d = with_policies(base_tenant("np"), dict(CASES)[case])
    w, flows = compiled(yaml.safe_dump(d))
    net = network_from_compiled(HOSTS, w, flows)
    facts = net.tenants["np"]
    for family, pol, reach in ((4, facts.policy, facts.reach_pairs), (6, facts.policy6, facts.reach_pairs6)):
        assert pol, family
        for proto, dport in SERVICES + [("udp", 1), ("tcp", 65535)]:
            for (a, b), want in oracle.matrix(d, proto, dport, family=family).items():
                pp = pol.get((a, b))
                assert (pp is None or policy_allows(pp.allowed, proto, dport)) == want, \
                    (family, a, b, proto, dport, pp)
                if want:  # some new connection allowed: a pair verify must see reach
                    assert (a, b) in reach, (family, a, b)
        assert all(pp.family == family and (":" in pp.src) == (family == 6) for pp in pol.values())
    r = verify(net)
    assert r.ok, r.format()
    assert r.checked["reach_pairs6"] == len(facts.reach_pairs6) and \
        r.checked.get("policy_pairs6", 0) == sum(pp.allowed is not None for pp in facts.policy6.values())


# ---------------------------------------------------------------------------------------
# IPv6: the same expectations over the ports' ip6, proved with IPv6 packets
# ---------------------------------------------------------------------------------------

def np_world(case, *names):
    """The oracle's dual-stack tenant under one of tests/netpol_cases.py's policy sets, as
    each of `names` (twins: the same addresses)."""
    import yaml
    from tests.netpol_cases import CASES, base_tenant, with_policies
    return compiled(*[yaml.safe_dump(with_policies(base_tenant(n), dict(CASES)[case])) for n in names])


def test_a_planted_ipv6_ingress_allow_all_is_a_policy_leak_with_an_ipv6_counterexample_that_delivers():
    """port-only: xa takes TCP 80 only. A flow above its ingress rules passing every IPv6
    connection to the commit table: every other port leaks into xa over IPv6 (each
    counterexample an IPv6 first packet the simulator delivers), nothing over IPv4."""
    w, flows = np_world("port-only", "np")
    assert verify(network_from_compiled(HOSTS, w, flows)).ok
    host, bad = planted_allow(w, "np", "policy_in", "xa", eth_type=0x86DD)
    flows = injected(flows, host, bad)
    r = verify(network_from_compiled(HOSTS, w, flows))
    assert not r.ok and {v.kind for v in r.violations} == {"policy_leak"}, r.format()
    t, a = w["np"]
    others = [p.name for p in t.ports if p.name != "xa"]
    assert {v.message.split(",")[0] for v in r.violations} == {
        f"a new connection from {o} ({t.port(o).ip6}) to xa (fd00:70:0:1::10)" for o in others}
    for v in r.violations:
        assert v.packet["eth_type"] == 0x86DD and v.packet["ipv6_dst"] == "fd00:70:0:1::10"
        assert "ipv4_dst" not in v.packet
        assert not (v.packet["ip_proto"] == 6 and v.packet["tcp_dst"] == 80), v.format()
        assert v.cookie == f"{bad.cookie:#x}" and "xa's Ingress policies do not allow it" in v.message
        assert "(conntrack said +new+trk)" in v.message and v.path[-1]["table"] == "deliver"
        assert (t.port("xa").host, a.ofport["xa"]) in delivered(flows, v), v.format()
    assert r.checked["policy_pairs6"] == 8 and r.checked["policy_pairs"] == 8
    # across hosts: yc is on hv1 with xa, ya on hv2
    (v,) = [v for v in r.violations if v.message.startswith("a new connection from ya ")]
    assert v.path[0]["host"] == "hv2" and v.path[-1]["host"] == "hv1"


def test_an_allowed_pair_must_reach_over_ipv6_with_an_ipv6_packet_the_policies_allow():
    """The IPv6 flows of xa's TCP 80 rule removed: every pair into xa still reaches over
    IPv4 and by IPv6 neighbour discovery, and each is reported unreachable over IPv6 with
    an IPv6 TCP 80 example that the simulator indeed does not deliver."""
    w, flows = np_world("port-only", "np")
    cut = {h: [f for f in fl if not (f.table.name == "policy_in" and "xa-tcp-80" in f.rule
                                     and f.match.get("eth_type") == 0x86DD)] for h, fl in flows.items()}
    assert sum(map(len, cut.values())) < sum(map(len, flows.values()))
    r = verify(network_from_compiled(HOSTS, w, cut))
    assert {v.kind for v in r.violations} == {"unreachable"}, r.format()
    t, a = w["np"]
    assert len(r.violations) == 8
    for v in r.violations:
        src = v.message.split()[4]
        assert v.message.startswith(f"no IPv6 packet from {src} ({t.port(src).host}) reaches xa (hv1)")
        assert "e.g. tcp to [fd00:70:0:1::10]:80 (one the network policies allow)" in v.message
        assert v.packet["eth_type"] == 0x86DD and v.packet["tcp_dst"] == 80
        assert (t.port("xa").host, a.ofport["xa"]) not in delivered(cut, v)


def test_ipv6_expectations_follow_the_ipv6_addresses_and_blocks():
    """An ipBlock of IPv4 only: zb takes anything from 10.70.0.0/16 and, over IPv6, nothing;
    verify expects exactly that of each version (the oracle agrees) and the flows prove it."""
    import yaml
    from tests import k8s_oracle as oracle
    from tests.netpol_cases import base_tenant, with_policies
    pol = {"name": "zb-v4-block", "namespace": "z", "podSelector": {"matchLabels": {"pod": "b"}},
           "ingress": [{"from": [{"ipBlock": {"cidr": "10.70.0.0/16"}}]}]}
    d = with_policies(base_tenant("np"), [pol])
    w, flows = compiled(yaml.safe_dump(d))
    net = network_from_compiled(HOSTS, w, flows)
    facts = net.tenants["np"]
    assert facts.policy[("xa", "zb")].allowed is None and ("xa", "zb") in facts.reach_pairs
    assert facts.policy6[("xa", "zb")].allowed == () and ("xa", "zb") not in facts.reach_pairs6
    assert facts.policy6[("xa", "zb")].src == "fd00:70:0:1::10"
    for proto, dport in (("tcp", 80), ("udp", 53)):
        m4, m6 = oracle.matrix(d, proto, dport), oracle.matrix(d, proto, dport, family=6)
        assert m4[("xa", "zb")] and not m6[("xa", "zb")]
    r = verify(net)
    assert r.ok, r.format()
    assert r.checked["reach_pairs6"] == 64 and r.checked["policy_pairs6"] == 8
    assert "over IPv6 64 reachable pairs and 8 against network policies" in r.format()


def test_dual_stack_twins_with_policies_verify_clean_and_an_ipv6_leak_is_one_twins():
    w, flows = np_world("port-only", "red", "blue")
    r = verify(network_from_compiled(HOSTS, w, flows))
    assert r.ok, r.format()
    assert r.checked["policy_pairs6"] == 16 and r.checked["reach_pairs6"] == 144
    host, bad = planted_allow(w, "blue", "policy_in", "xa", eth_type=0x86DD)
    flows = injected(flows, host, bad)
    r = verify(network_from_compiled(HOSTS, w, flows))
    assert {v.kind for v in r.violations} == {"policy_leak"} and len(r.violations) == 8, r.format()
    assert {tuple(v.tenants) for v in r.violations} == {("blue",)}
    t, a = w["blue"]
    for v in r.violations:
        got = delivered(flows, v)
        assert (t.port("xa").host, a.ofport["xa"]) in got and (t.port("xa").host, w["red"][1].ofport["xa"]) not in got


def test_dual_stack_tenants_without_policies_carry_no_ipv6_policy_work_but_reach_over_ipv6():
    from tests.unit.test_ipv6 import dual
    w, flows = compiled(dual("d6"))
    net = network_from_compiled(HOSTS, w, flows)
    facts = net.tenants["d6"]
    assert facts.policy6 == {} and facts.reach_pairs6 and facts.reach_pairs6 <= facts.reach_pairs
    r = verify(net)
    assert r.ok and r.checked["reach_pairs6"] == len(facts.reach_pairs6) and "policy_pairs6" not in r.checked
    assert "against network policies" not in r.format()
    # a drop above one port's deliver flow for IPv6 only: pairs to it are unreachable over
    # IPv6 (a pair without policies was not checked over IPv6 before), not over IPv4
    t, a = w["d6"]
    (host, dl), = [(h, f) for h, fl in flows.items() for f in fl
                   if f.table.name == "deliver" and f.tenant_id == a.tenant_id and f.rule == "port w1"]
    cut = Flow(dl.table, dl.priority + 1, Match.of(reg13=a.vni["web"], reg15=a.port_key["w1"], eth_type=0x86DD),
               (), dl.layer_id, dl.tenant_id, "planted: no IPv6 to w1")
    r = verify(network_from_compiled(HOSTS, w, injected(flows, host, cut)))
    un = [v for v in r.violations if v.kind == "unreachable"]
    assert un and all("IPv6" in v.message and "reaches w1" in v.message for v in un), r.format()
    assert {v.kind for v in r.violations} == {"unreachable"}
