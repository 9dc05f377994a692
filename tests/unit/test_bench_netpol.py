"""bench/netpol.py's baseline is fair: the policies written out as ACLs allow the same new
TCP connections as the policies themselves, on the strict simulator (at a smaller size
than the benchmark's), and the ACLs are a valid tenant (priorities, no empty lists)."""
from bench import netpol
from bench.synth import hosts
from topology.schema import load_tenant


def small():
    return netpol.spec(ports=100, hosts=4, policies=20, seed=7)


def test_policies_and_their_acls_allow_the_same_connections():
    sp = small()
    got = netpol.equivalence(sp, samples=240, hosts=hosts(4))
    assert got["disagree"] == [] and got["agree"] == got["samples"] == 240
    assert got["allowed"] >= 40 and got["denied"] >= 40  # both verdicts are exercised


def test_the_check_catches_one_acl_left_out(monkeypatch):
    sp = small()
    full = netpol.acls(sp)
    caught = 0
    for k in (0, 1, 4, 6):  # allow rules of different shapes
        monkeypatch.setattr(netpol, "acls", lambda s, k=k: [a for i, a in enumerate(full) if i != k])
        caught += netpol.equivalence(sp, samples=240, hosts=hosts(4))["agree"] < 240
    assert caught >= 3


def test_the_acl_tenant_is_valid_and_follows_a_new_port():
    sp = small()
    pol_doc, acl_doc = netpol.docs(sp)
    hs = hosts(4)
    t = load_tenant(acl_doc, hs.keys())
    assert {a.action for a in t.acls} == {"allow", "deny"}
    assert all(a.priority == 0 for a in t.acls if a.action == "deny")
    item, why = netpol.new_port(sp)
    assert why["policies_selecting"] >= 2 and why["peer_of_rules"] >= 2
    sp2 = netpol.with_port(sp, item)
    t2 = load_tenant(netpol.docs(sp2)[1], hs.keys())
    assert any(netpol.NEW_PORT in a.ports for a in t2.acls)  # guarded: the port's own rules
    assert len(load_tenant(pol_doc, hs.keys()).network_policies) == 20
