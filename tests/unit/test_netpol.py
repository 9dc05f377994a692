"""Network policies (Kubernetes NetworkPolicy semantics, a switch as the namespace)
through the compiler and the strict simulator's conntrack: isolation per direction,
replies of allowed connections, selectors, ipBlocks, ports, and groups whose flows
grow with members plus rules."""
import pytest

from controller.layers.netpol import Plan
from tests.unit.fixtures import Net, world, routed_tenant, port
from tests.unit.packets import tcp
from topology.schema import ValidationError, load_tenant, to_doc, validate

WEB_DB = [{"name": "web", "cidr": "10.0.0.0/24", "labels": {"tier": "web"}},
          {"name": "db", "cidr": "10.0.1.0/24", "labels": {"tier": "db"}}]
PORTS = [port("web1", "web", "10.0.0.11", "hv1", labels={"app": "fe"}),
         port("web2", "web", "10.0.0.12", "hv2", labels={"app": "fe", "canary": "yes"}),
         port("db1", "db", "10.0.1.10", "hv2", labels={"app": "pg"}),
         port("db2", "db", "10.0.1.20", "hv3", labels={"app": "pg"}),
         port("db3", "db", "10.0.1.30", "hv1", labels={"app": "redis"})]


def doc(policies, name="shop", acls=None):
    from tests.unit.fixtures import tenant_doc, R1
    extra = {"acls": acls} if acls else {}
    return tenant_doc(name, switches=WEB_DB, routers=[R1], ports=PORTS, networkPolicies=policies, **extra)


class Conn:
    def __init__(self, net, a, b, sport, dport, tenant="shop"):
        self.net, self.a, self.b, self.sport, self.dport, self.tenant = net, a, b, sport, dport, tenant

    def _send(self, src, dst, sport, dport):
        s, _ = self.net.port(self.tenant, src)
        d, _ = self.net.port(self.tenant, dst)
        t, _ = self.net.tenants[self.tenant]
        gw = t.router_of(s.switch)[1].mac if s.switch != d.switch else d.mac
        return self.net.who(self.net.send(self.tenant, src, tcp(s.mac, gw, str(s.ip), str(d.ip), sport, dport)))

    def forward(self):
        return self._send(self.a, self.b, self.sport, self.dport)

    def reply(self):
        return self._send(self.b, self.a, self.dport, self.sport)


def reach(net, a, b, dport=5432, sport=40000, tenant="shop"):
    return Conn(net, a, b, sport, dport, tenant).forward() == [(tenant, b)]


DB_FROM_FE = {"name": "db-from-fe", "namespace": "db", "podSelector": {"matchLabels": {"app": "pg"}},
              "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"tier": "web"}},
                                     "podSelector": {"matchLabels": {"app": "fe"}}}],
                           "ports": [{"protocol": "TCP", "port": 5432}]}]}


def test_ingress_isolation_allows_only_what_a_rule_allows_and_replies():
    n = Net(world(doc([DB_FROM_FE])))
    c = Conn(n, "web1", "db1", 40000, 5432)
    assert c.forward() == [("shop", "db1")]
    assert c.reply() == [("shop", "web1")]
    assert not reach(n, "web1", "db1", dport=22)       # port not allowed
    assert not reach(n, "db3", "db1", dport=5432)       # db3 is not app=fe on a web switch
    assert reach(n, "db1", "db3", dport=5432)           # db3 is selected by nothing: not isolated
    assert reach(n, "db1", "web1", dport=80)            # Ingress-only: db1's egress is free


def test_egress_isolation_and_default_deny():
    deny_egress = {"name": "no-out", "namespace": "web", "podSelector": {}, "policyTypes": ["Egress"]}
    n = Net(world(doc([deny_egress])))
    assert not reach(n, "web1", "db1")
    assert not reach(n, "web1", "web2")
    assert reach(n, "db1", "web1", dport=80)  # web1 is not ingress-isolated; db1 is free
    c = Conn(n, "db1", "web1", 40001, 80)
    assert c.forward() == [("shop", "web1")]
    assert c.reply() == [("shop", "db1")]  # a reply leaves an egress-isolated port


def test_both_directions_must_allow():
    out_to_db = {"name": "fe-out", "namespace": "web", "podSelector": {"matchLabels": {"app": "fe"}},
                 "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"tier": "db"}}}]}]}
    n = Net(world(doc([out_to_db, DB_FROM_FE])))
    assert reach(n, "web1", "db1", dport=5432)
    assert not reach(n, "web1", "db1", dport=80)   # egress allows, db1's ingress does not
    assert reach(n, "web1", "db3", dport=80)       # db3 is not ingress-isolated
    assert not reach(n, "web1", "web2", dport=80)  # egress to web switch not allowed


def test_and_of_selectors_in_one_peer_against_or_of_two_peers():
    both = {**DB_FROM_FE, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"tier": "db"}},
                                                 "podSelector": {"matchLabels": {"app": "fe"}}}]}]}
    either = {**DB_FROM_FE, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"tier": "db"}}},
                                                  {"podSelector": {"matchLabels": {"app": "fe"}}}]}]}
    n = Net(world(doc([both])))
    assert not reach(n, "web1", "db1") and not reach(n, "db3", "db1")
    n = Net(world(doc([either])))
    assert reach(n, "db3", "db1")        # namespace tier=db
    assert not reach(n, "web1", "db1")   # app=fe, but a podSelector alone looks in the policy's namespace


def test_match_expressions():
    pol = {"name": "x", "namespace": "web", "podSelector": {}, "ingress": [{"from": [{
        "namespaceSelector": {}, "podSelector": {"matchExpressions": [
            {"key": "app", "operator": "In", "values": ["fe", "redis"]},
            {"key": "canary", "operator": "DoesNotExist"}]}}]}]}
    n = Net(world(doc([pol])))
    assert reach(n, "db3", "web1", dport=80)       # redis, no canary
    assert not reach(n, "db1", "web1", dport=80)   # pg
    assert not reach(n, "web2", "web1", dport=80)  # fe but canary
    assert reach(n, "web1", "web2", dport=80)      # fe, no canary


def test_ip_block_with_except():
    pol = {"name": "x", "namespace": "db", "podSelector": {"matchLabels": {"app": "pg"}},
           "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.12/32"]}}]}]}
    n = Net(world(doc([pol])))
    assert reach(n, "web1", "db1")
    assert not reach(n, "web2", "db1")
    assert reach(n, "db3", "db2")


def test_port_ranges():
    pol = {**DB_FROM_FE, "ingress": [{"ports": [{"port": 6000, "endPort": 6010}, {"protocol": "TCP", "port": 5432},
                                                {"protocol": "UDP"}]}]}
    n = Net(world(doc([pol])))
    assert [reach(n, "web1", "db1", dport=d) for d in (5431, 5432, 5999, 6000, 6005, 6010, 6011)] == \
        [False, True, False, True, True, True, False]


def test_policy_change_cuts_connections_it_no_longer_allows_and_keeps_the_rest():
    from controller.compile.compiler import compile_world
    from controller.compile.pipeline import PIPELINE
    wide = {**DB_FROM_FE, "ingress": [{"ports": [{"port": 5432}, {"port": 6000}]}]}
    n = Net(world(doc([wide])))
    keep, cut = Conn(n, "web1", "db1", 40000, 5432), Conn(n, "web1", "db1", 40001, 6000)
    assert keep.forward() == cut.forward() == [("shop", "db1")]
    narrow = world(doc([{**DB_FROM_FE, "ingress": [{"ports": [{"port": 5432}]}]}]))
    flows = compile_world(n.hosts, narrow)
    n.fabric.replace_flows(PIPELINE, {h: flows[h].values() for h in n.hosts})
    assert keep.forward() == [("shop", "db1")] and keep.reply() == [("shop", "web1")]
    assert cut.forward() == []  # no rule allows it any more: its next segment drops


def test_twins_with_identical_policies_stay_isolated_and_both_work():
    n = Net(world(doc([DB_FROM_FE], name="red"), doc([DB_FROM_FE], name="blue")))
    for t in ("red", "blue"):
        assert reach(n, "web1", "db1", tenant=t)
        assert not reach(n, "db3", "db1", tenant=t)


def test_groups_scale_with_members_plus_rules():
    """flows(members, rules) is a sum: what 20 more members cost does not depend on how
    many rules there are, and what 10 more rules cost not on how many members (a
    members x rules compilation would fail both)."""
    def count(n_ports, n_pols):
        ports = [port(f"p{i}", "web", f"10.0.0.{10 + i}", "hv1", labels={"app": f"a{i % 5}"})
                 for i in range(n_ports)]
        pols = [{"name": f"p{k}", "podSelector": {"matchLabels": {"app": f"a{k % 5}"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": f"a{(k + 1) % 5}"}}}],
                              "ports": [{"port": 1000 + k}]}]} for k in range(n_pols)]
        from tests.unit.fixtures import tenant_doc
        d = tenant_doc("t", switches=[WEB_DB[0]], ports=ports, networkPolicies=pols)
        flows = Net(world(d)).flows["hv1"].values()
        return sum(1 for f in flows if f.table.name.startswith("policy"))
    c = {(m, r): count(m, r) for m in (20, 40) for r in (10, 20)}
    assert c[40, 10] - c[20, 10] == c[40, 20] - c[20, 20] > 0
    assert c[20, 20] - c[20, 10] == c[40, 20] - c[40, 10] > 0


def test_schema_round_trip_and_errors():
    t = load_tenant(doc([DB_FROM_FE, {"name": "eg", "podSelector": {"matchExpressions": [
        {"key": "app", "operator": "Exists"}]}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8",
                                                                             "except": ["10.1.0.0/16"]}}]}]}]))
    assert t.network_policies[1].types == ("Ingress", "Egress")  # egress given: both (Kubernetes' default)
    assert t.network_policies[0].types == ("Ingress",)
    assert validate(to_doc(t)) == t
    bad = [({"name": "a", "podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]},
            "spec.networkPolicies[0].ingress[0].ports[0].port", "named ports"),
           ({"name": "a", "podSelector": {}, "ingress": [{"ports": [{"protocol": "SCTP"}]}]},
            "spec.networkPolicies[0].ingress[0].ports[0].protocol", "SCTP"),
           ({"name": "a", "podSelector": {"matchExpressions": [{"key": "k", "operator": "In"}]}},
            "spec.networkPolicies[0].podSelector.matchExpressions[0].values", "non-empty"),
           ({"name": "a", "podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"},
                                                                     "podSelector": {}}]}]},
            "spec.networkPolicies[0].ingress[0].from[0]", "cannot be combined"),
           ({"name": "a", "namespace": "nope", "podSelector": {}}, "spec.networkPolicies[0].namespace", "not a switch"),
           ({"name": "a", "podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]},
            "spec.networkPolicies[0].ingress[0].ports[0].endPort", "from port"),
           ({"name": "a", "podSelector": {}, "policyTypes": ["Egress"], "ingress": [{}]},
            "spec.networkPolicies[0].ingress", "never apply"),
           ({"name": "a", "podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8",
                                                                                "except": ["11.0.0.0/16"]}}]}]},
            "spec.networkPolicies[0].ingress[0].from[0].ipBlock.except[0]", "inside")]
    for pol, path, why in bad:
        with pytest.raises(ValidationError) as e:
            load_tenant(doc([pol]))
        assert any(p == path and why in r for p, r in e.value.errors), (path, e.value.errors)


def test_compiled_flows_agree_with_the_kubernetes_oracle_on_every_case():
    """The simulator over the compiled flows, new connections from every port to every
    other (TCP and UDP, ports 80 and 81), against the independent oracle's matrix."""
    from tests.k8s_oracle import matrix
    from tests.netpol_cases import CASES, SERVICES, base_tenant, with_policies
    import yaml
    for name, policies in CASES:
        d = with_policies(base_tenant("np"), policies)
        n = Net(world(yaml.safe_dump(d)))
        t, _ = n.tenants["np"]
        sport = 30000
        for proto, dport in SERVICES:
            want = matrix(d, proto, dport)
            for (a, b), ok in want.items():
                s, dd = t.port(a), t.port(b)
                gw = t.router_of(s.switch)[1].mac if s.switch != dd.switch else dd.mac
                sport += 1
                pkt = tcp(s.mac, gw, str(s.ip), str(dd.ip), sport, dport)
                if proto == "udp":
                    pkt = {k: v for k, v in pkt.items() if not k.startswith("tcp_")}
                    pkt.update(ip_proto=17, udp_src=sport, udp_dst=dport)
                got = n.who(n.send("np", a, pkt)) == [("np", b)]
                assert got == ok, f"case {name}: {a} -> {b} {proto}/{dport}: oracle {ok}, flows {got}"


def test_more_policies_or_peer_rules_than_the_registers_hold_are_refused_by_name():
    from topology.schema import MAX_PEER_RULES_PER_TYPE, MAX_POLICIES_PER_TYPE
    many = [{"name": f"p{i}", "podSelector": {}} for i in range(MAX_POLICIES_PER_TYPE + 1)]
    with pytest.raises(ValidationError) as e:
        load_tenant(doc(many))
    assert any(p == "spec.networkPolicies" and "129 policies of type Ingress" in r for p, r in e.value.errors)
    load_tenant(doc(many[:-1]))  # at the limit: fine, and it compiles
    Net(world(doc(many[:-1])))
    rules = [{"from": [{"podSelector": {"matchLabels": {"app": f"a{i}"}}}]} for i in range(MAX_PEER_RULES_PER_TYPE + 1)]
    with pytest.raises(ValidationError) as e:
        load_tenant(doc([{"name": "big", "podSelector": {}, "ingress": rules}]))
    assert any("129 ingress rules with from/to peers" in r for _, r in e.value.errors)
    Net(world(doc([{"name": "big", "podSelector": {}, "ingress": rules[:-1]}])))
