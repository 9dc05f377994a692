"""The Kubernetes NetworkPolicy oracle (tests/k8s_oracle.py) on hand-worked cases, and the
policy sets of tests/netpol_cases.py: valid for the platform, and each one's matrix
telling something (none is everything-allowed but the allow-all one).

The small tenant of the hand-worked cases: switches p (ns=p, env=prod) and q (ns=q),
ports p1 (app=web) .11 and p2 (app=db) .12 on p 10.0.1.0/24, q1 (app=web, tier=front)
.11 and q2 (no labels) .12 on q 10.0.2.0/24; p has IPv6 fd00:1::/64, q none."""
import copy

import pytest
import yaml

from tests.k8s_oracle import (OracleError, allowed, allowed_from_address, allowed_to_address, isolated,
                              matrix, policy_types, port_address, selector_matches)
from tests.netpol_cases import CASES, SERVICES, base_tenant, with_policies

PORTS = ("p1", "p2", "q1", "q2")


def tenant(*policies) -> dict:
    return {"apiVersion": "nvctl/v1", "kind": "Tenant", "metadata": {"name": "t"}, "spec": {
        "switches": [{"name": "p", "cidr": "10.0.1.0/24", "cidr6": "fd00:1::/64", "labels": {"ns": "p", "env": "prod"}},
                     {"name": "q", "cidr": "10.0.2.0/24", "labels": {"ns": "q"}}],
        "ports": [{"name": "p1", "switch": "p", "ip": "10.0.1.11", "host": "hv1", "labels": {"app": "web"}},
                  {"name": "p2", "switch": "p", "ip": "10.0.1.12", "host": "hv2", "labels": {"app": "db"}},
                  {"name": "q1", "switch": "q", "ip": "10.0.2.11", "host": "hv1",
                   "labels": {"app": "web", "tier": "front"}},
                  {"name": "q2", "switch": "q", "ip": "10.0.2.12", "host": "hv2"}],
        "networkPolicies": list(policies)}}


def into(doc, dst, proto="tcp", dport=80) -> set:
    """The ports that may open `proto`/`dport` to `dst`."""
    return {s for s in PORTS if s != dst and allowed(doc, s, dst, proto, dport)}


def out_of(doc, src, proto="tcp", dport=80) -> set:
    return {d for d in PORTS if d != src and allowed(doc, src, d, proto, dport)}


def pol(name, podSelector=None, namespace="p", **kw) -> dict:
    out = {"name": name, "podSelector": podSelector if podSelector is not None else {}, **kw}
    if namespace is not None:
        out["namespace"] = namespace
    return out


WEB = {"matchLabels": {"app": "web"}}
DB = {"matchLabels": {"app": "db"}}
NS_Q = {"matchLabels": {"ns": "q"}}


def test_without_policies_everything_is_allowed():
    doc = tenant()
    assert all(matrix(doc, "tcp", 80).values()) and len(matrix(doc, "udp", 9)) == 12
    assert not isolated(doc, "p1", "Ingress") and not isolated(doc, "p1", "Egress")


def test_default_deny_ingress_closes_the_namespace_to_everyone_and_leaves_its_sending_alone():
    doc = tenant(pol("deny"))  # podSelector {} in p, no ingress rules, type Ingress by default
    assert into(doc, "p1") == into(doc, "p2") == set()
    assert into(doc, "q1") == {"p1", "p2", "q2"}  # p still sends
    assert isolated(doc, "p2", "Ingress") and not isolated(doc, "p2", "Egress")


def test_default_deny_egress_stops_the_namespace_opening_anything_but_not_receiving():
    doc = tenant(pol("deny-out", policyTypes=["Egress"]))
    assert out_of(doc, "p1") == out_of(doc, "p2") == set()
    assert into(doc, "p1") == {"q1", "q2"}  # q's reach p; p2 -> p1 is p2's egress
    assert not allowed(doc, "p2", "p1", "tcp", 80)


def test_both_directions_must_allow():
    doc = tenant(pol("p1-out", WEB, policyTypes=["Egress"], egress=[{"to": [{"namespaceSelector": NS_Q}]}]),
                 pol("q1-in", WEB, namespace="q", ingress=[{"from": [{"podSelector": {}}]}]))  # q1 from q only
    assert not allowed(doc, "p1", "q1", "tcp", 80)  # egress allows, q1's ingress does not
    assert allowed(doc, "p1", "q2", "tcp", 80)  # q2 is not isolated
    assert not allowed(doc, "p1", "p2", "tcp", 80)  # p1's egress does not allow p
    assert allowed(doc, "q2", "q1", "tcp", 80)


def test_allow_by_pod_label_is_within_the_policys_namespace():
    doc = tenant(pol("db-from-web", DB, ingress=[{"from": [{"podSelector": WEB}]}]))
    assert into(doc, "p2") == {"p1"}  # not q1, which is app=web too but on q
    assert into(doc, "p1") == {"p2", "q1", "q2"}  # p1 is not selected


def test_allow_by_namespace_label():
    doc = tenant(pol("db-from-q", DB, ingress=[{"from": [{"namespaceSelector": NS_Q}]}]))
    assert into(doc, "p2") == {"q1", "q2"}


def test_both_selectors_in_one_peer_are_an_and_in_two_peers_an_or():
    one = tenant(pol("and", DB, ingress=[{"from": [{"namespaceSelector": NS_Q, "podSelector": WEB}]}]))
    two = tenant(pol("or", DB, ingress=[{"from": [{"namespaceSelector": NS_Q}, {"podSelector": WEB}]}]))
    assert into(one, "p2") == {"q1"}
    assert into(two, "p2") == {"q1", "q2", "p1"}
    # an empty podSelector beside a namespaceSelector: every port of those namespaces
    every = tenant(pol("ns-all", DB, ingress=[{"from": [{"namespaceSelector": {}, "podSelector": {}}]}]))
    assert into(every, "p2") == {"p1", "q1", "q2"}


@pytest.mark.parametrize("expr, labels, want", [
    ({"key": "app", "operator": "In", "values": ["web", "db"]}, {"app": "db"}, True),
    ({"key": "app", "operator": "In", "values": ["web"]}, {}, False),
    ({"key": "app", "operator": "NotIn", "values": ["web"]}, {"app": "db"}, True),
    ({"key": "app", "operator": "NotIn", "values": ["web"]}, {"app": "web"}, False),
    ({"key": "app", "operator": "NotIn", "values": ["web"]}, {}, True),  # an absent key is not in
    ({"key": "tier", "operator": "Exists"}, {"tier": ""}, True),
    ({"key": "tier", "operator": "Exists"}, {"app": "web"}, False),
    ({"key": "tier", "operator": "DoesNotExist"}, {"app": "web"}, True),
    ({"key": "tier", "operator": "DoesNotExist"}, {"tier": "front"}, False),
])
def test_match_expressions(expr, labels, want):
    assert selector_matches({"matchExpressions": [expr]}, labels) is want


def test_selector_terms_are_anded_and_empty_matches_all():
    sel = {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "Exists"}]}
    assert selector_matches(sel, {"app": "web", "tier": "front"})
    assert not selector_matches(sel, {"app": "web"})
    assert selector_matches({}, {}) and selector_matches(None, {"a": "b"})


def test_expressions_in_policies_notin_exists_doesnotexist():
    notin = tenant(pol("not-web", {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]},
                       namespace=None, ingress=[]))  # selects p2 and q2 (no app label): deny into them
    assert {n for n in PORTS if isolated(notin, n, "Ingress")} == {"p2", "q2"}
    exists = tenant(pol("from-tiered", DB, ingress=[{"from": [{"namespaceSelector": {}, "podSelector": {
        "matchExpressions": [{"key": "tier", "operator": "Exists"}]}}]}]))
    assert into(exists, "p2") == {"q1"}
    no_env = tenant(pol("from-no-env", DB, ingress=[{"from": [{"namespaceSelector": {
        "matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]}}]}]))
    assert into(no_env, "p2") == {"q1", "q2"}  # q has no env label, p has


def test_ipblock_with_except_and_from_outside():
    doc = tenant(pol("block", DB, ingress=[{"from": [{"ipBlock": {"cidr": "10.0.0.0/16",
                                                                  "except": ["10.0.2.11/32"]}}]}]))
    assert into(doc, "p2") == {"p1", "q2"}  # q1's 10.0.2.11 is excepted
    assert allowed_from_address(doc, "10.0.9.9", "p2", "tcp", 80)
    assert not allowed_from_address(doc, "10.0.2.11", "p2", "tcp", 80)
    assert not allowed_from_address(doc, "192.168.1.1", "p2", "tcp", 80)
    assert allowed_from_address(doc, "192.168.1.1", "p1", "tcp", 80)  # p1 is not isolated
    with pytest.raises(OracleError):  # an except outside its cidr
        allowed(tenant(pol("bad", ingress=[{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}}]}])),
                "q1", "p1", "tcp", 80)


def test_egress_to_ipblock_and_to_outside():
    doc = tenant(pol("p1-out", WEB, policyTypes=["Egress"],
                     egress=[{"to": [{"ipBlock": {"cidr": "10.0.2.0/24", "except": ["10.0.2.12/32"]}}]}]))
    assert out_of(doc, "p1") == {"q1"}
    assert allowed_to_address(doc, "p1", "10.0.2.200", "udp", 53)
    assert not allowed_to_address(doc, "p1", "8.8.8.8", "udp", 53)


def test_ports_protocol_port_endport_and_no_ports_is_everything():
    doc = tenant(pol("db-ports", DB, ingress=[{"ports": [{"port": 80}, {"protocol": "UDP", "port": 81, "endPort": 90},
                                                         {"protocol": "TCP", "port": 443}]}]))
    p = lambda proto, dport: allowed(doc, "q1", "p2", proto, dport)  # noqa: E731
    assert p("tcp", 80) and not p("udp", 80)  # TCP is the default protocol
    assert not p("tcp", 81) and p("udp", 81) and p("udp", 90) and not p("udp", 91) and not p("udp", 80)
    assert p("tcp", 443) and not p("tcp", 444)
    any_port = tenant(pol("db-tcp", DB, ingress=[{"ports": [{"protocol": "TCP"}]}]))
    assert allowed(any_port, "q1", "p2", "tcp", 65535) and not allowed(any_port, "q1", "p2", "udp", 53)
    everything = tenant(pol("db-all", DB, ingress=[{"from": [{"podSelector": WEB}]}]))
    assert all(allowed(everything, "p1", "p2", proto, d) for proto in ("tcp", "udp") for d in (1, 80, 65535))


def test_a_policy_without_namespace_is_tenant_wide():
    doc = tenant(pol("web-from-web", WEB, namespace=None, ingress=[{"from": [{"podSelector": WEB}]}]))
    assert {n for n in PORTS if isolated(doc, n, "Ingress")} == {"p1", "q1"}
    assert into(doc, "p1") == {"q1"} and into(doc, "q1") == {"p1"}  # the peer spans every switch
    assert into(doc, "q2") == {"p1", "p2", "q1"}


def test_policy_types_default():
    assert policy_types({"podSelector": {}}) == {"Ingress"}
    assert policy_types({"podSelector": {}, "egress": [{}]}) == {"Ingress", "Egress"}
    assert policy_types({"podSelector": {}, "egress": []}) == {"Ingress"}
    assert policy_types({"podSelector": {}, "policyTypes": ["Egress"]}) == {"Egress"}
    # egress rules without policyTypes: Ingress too, with no rules, so nothing comes in
    doc = tenant(pol("p1-out", WEB, egress=[{"to": [{"namespaceSelector": NS_Q}]}]))
    assert into(doc, "p1") == set()
    assert out_of(doc, "p1") == {"q1", "q2"}


def test_an_egress_only_policy_does_not_isolate_ingress_and_its_ingress_rules_are_ignored():
    doc = tenant(pol("p1-out", WEB, policyTypes=["Egress"], ingress=[{"from": [{"podSelector": DB}]}],
                     egress=[{"to": [{"podSelector": DB}]}]))
    assert not isolated(doc, "p1", "Ingress")
    assert into(doc, "p1") == {"p2", "q1", "q2"}
    assert out_of(doc, "p1") == {"p2"}


def test_several_policies_add_up():
    doc = tenant(pol("a", DB, ingress=[{"from": [{"podSelector": WEB}], "ports": [{"port": 80}]}]),
                 pol("b", DB, ingress=[{"from": [{"namespaceSelector": NS_Q}], "ports": [{"protocol": "UDP"}]}]))
    assert into(doc, "p2", "tcp", 80) == {"p1"}
    assert into(doc, "p2", "udp", 80) == {"q1", "q2"}
    assert into(doc, "p2", "tcp", 81) == set()
    # an allow-all rule in another policy undoes a default deny; `from: []` is from anywhere
    assert into(tenant(pol("deny"), pol("all", ingress=[{}])), "p2") == {"p1", "q1", "q2"}
    assert into(tenant(pol("deny"), pol("all", DB, ingress=[{"from": []}])), "p2") == {"p1", "q1", "q2"}
    assert into(tenant(pol("deny"), pol("all", DB, ingress=[{"from": []}])), "p1") == set()


def test_ipv6_addresses_and_families():
    doc = tenant(pol("db-from-block", DB, ingress=[{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]))
    # p1 has no ip6: SLAAC's from its MAC 02:00:0a:00:01:0b in fd00:1::/64
    assert str(port_address(doc, "p1", 6)) == "fd00:1::aff:fe00:10b"  # modified EUI-64
    assert allowed(doc, "p1", "p2", "tcp", 80) and not allowed(doc, "p1", "p2", "tcp", 80, family=6)
    both = tenant(pol("db-from-both", DB, ingress=[{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}},
                                                             {"ipBlock": {"cidr": "fd00:1::/64"}}]}]))
    assert allowed(both, "p1", "p2", "tcp", 80, family=6)
    sel = tenant(pol("db-from-web", DB, ingress=[{"from": [{"podSelector": WEB}]}]))  # by its addresses, both
    assert allowed(sel, "p1", "p2", "udp", 81, family=6)
    with pytest.raises(OracleError, match="no IPv6"):
        allowed(sel, "q1", "p2", "tcp", 80, family=6)


@pytest.mark.parametrize("policy, says", [
    (pol("named", DB, ingress=[{"ports": [{"port": "http"}]}]), "named ports"),
    (pol("sctp", DB, ingress=[{"ports": [{"protocol": "SCTP"}]}]), "SCTP"),
    (pol("empty-peer", DB, ingress=[{"from": [{}]}]), "needs podSelector"),
    (pol("mixed", DB, ingress=[{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]), "alone"),
    (pol("endport", DB, ingress=[{"ports": [{"endPort": 90}]}]), "endPort"),
    (pol("op", {"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}), "operator"),
])
def test_what_the_rules_do_not_define_is_an_error(policy, says):
    with pytest.raises(OracleError, match=says):
        allowed(tenant(policy), "p1", "p2", "tcp", 80)


def test_the_oracle_imports_nothing_of_the_platform():
    import ast

    import tests.k8s_oracle as oracle
    tree = ast.parse(open(oracle.__file__).read())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | \
        {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert modules <= {"__future__", "ipaddress"}, modules


# -- the standard tenant and its policy sets --------------------------------------------------

def test_the_standard_tenant():
    d = base_tenant("np")
    ports = {p["name"]: p for p in d["spec"]["ports"]}
    assert sorted(ports) == [s + p for s in "xyz" for p in "abc"]
    assert ports["yc"] == {"name": "yc", "switch": "y", "ip": "10.70.2.30", "ip6": "fd00:70:0:2::30", "host": "hv1",
                           "labels": {"pod": "c"}}
    for sw in "xyz":
        assert len({ports[sw + p]["host"] for p in "abc"}) == 3  # a switch's ports on three hosts
    assert {s["name"]: s["labels"]["ns"] for s in d["spec"]["switches"]} == {"x": "x", "y": "y", "z": "z"}
    assert [p["host"] for p in base_tenant("np", hosts=("h1", "h2"))["spec"]["ports"]][:3] == ["h1", "h2", "h1"]
    assert base_tenant("np") == d and base_tenant("np") is not d


def test_the_cases_are_valid_tenants_for_the_platform():
    from topology.schema import validate  # the cases must be what the platform accepts
    assert len(CASES) >= 22 and len({n for n, _ in CASES}) == len(CASES)
    for name, policies in CASES:
        doc = yaml.safe_load(yaml.safe_dump(with_policies(base_tenant("np"), policies)))
        validate(doc, ["hv1", "hv2", "hv3"])


def test_each_case_tells_something():
    """Each case's matrix over TCP/UDP x 80/81 differs from everything-allowed, except the
    allow-all one's, which is exactly that; IPv6 gives the IPv4 matrix (the ipBlocks
    come in both families)."""
    for name, policies in CASES:
        doc = with_policies(base_tenant("np"), policies)
        ms = {s: matrix(doc, *s) for s in SERVICES}
        assert all(len(m) == 72 for m in ms.values())
        everything = all(all(m.values()) for m in ms.values())
        assert everything == (name == "allow-all-ingress"), name
        assert all(matrix(doc, *s, family=6) == ms[s] for s in SERVICES), name


def test_no_two_cases_have_the_same_matrices():
    seen = {}
    for name, policies in CASES:
        doc = with_policies(base_tenant("np"), policies)
        key = tuple(tuple(sorted(matrix(doc, *s).items())) for s in SERVICES)
        assert key not in seen, f"{name} has the matrices of {seen.get(key)}"
        seen[key] = name


def test_the_cases_cover_the_rules():
    text = repr(CASES)
    for needle in ("'ingress': [{}]", "'In'", "'NotIn'", "'Exists'", "'DoesNotExist'", "'except'", "'endPort'",
                   "'UDP'", "'policyTypes': ['Egress']", "'policyTypes': ['Ingress', 'Egress']"):
        assert needle in text, needle
    assert any(all("namespace" not in p for p in pols) for _, pols in CASES)  # tenant-wide
    assert any(len(pols) >= 3 for _, pols in CASES)


def _case(name):
    return with_policies(base_tenant("np"), dict(CASES)[name])


def denied(name, proto="tcp", dport=80) -> set:
    return {k for k, v in matrix(_case(name), proto, dport).items() if not v}


def test_hand_worked_case_matrices():
    others = lambda dst: {(s + p, dst) for s in "xyz" for p in "abc"} - {(dst, dst)}  # noqa: E731
    assert denied("pod-and-namespace-one-peer") == others("xa") - {("yc", "xa")}
    assert denied("pod-or-namespace-two-peers") == others("xa") - {("ya", "xa"), ("yb", "xa"), ("yc", "xa"),
                                                                   ("xc", "xa")}
    assert denied("ipblock-except") == {("xb", "zb")}
    assert denied("match-expressions-doesnotexist") == others("xa") - {("za", "xa"), ("zb", "xa"), ("zc", "xa")}
    assert denied("match-expressions-exists") == {("za", "zc"), ("zb", "zc")}
    assert denied("endport-81-only", "tcp", 81) == set() and denied("endport-81-only", "tcp", 80) == others("yb")
    assert denied("udp-only", "udp", 81) == set() and denied("udp-only", "tcp", 81) == others("zc")
    assert denied("egress-only-keeps-ingress-open") == {("xb", d) for d in ("xc", "yb", "yc", "zb", "zc")}
    alone = with_policies(base_tenant("np"), dict(CASES)["selects-nothing"][2:])
    assert all(matrix(_case("selects-nothing"), *s) == matrix(alone, *s) for s in SERVICES)
    assert denied("selects-nothing") == others("yb") - {("ya", "yb")}
    chain = {k for k, v in matrix(_case("deny-all-then-a-chain"), "udp", 80).items() if v}
    assert chain == {("xa", "yb"), ("yb", "zc")}
    assert {k for k, v in matrix(_case("deny-all-then-a-chain"), "tcp", 80).items() if v} == {("xa", "yb")}


def test_with_policies_copies():
    d = base_tenant("np")
    policies = copy.deepcopy(CASES[0][1])
    w = with_policies(d, policies)
    w["spec"]["networkPolicies"][0]["name"] = "changed"
    assert "networkPolicies" not in d["spec"] and policies[0]["name"] == CASES[0][1][0]["name"]
