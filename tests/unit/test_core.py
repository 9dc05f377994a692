"""The controller core without switches: incremental == full compile, nothing half-applied."""
import random

import pytest

from controller.compile.allocator import InUse
from controller.compile.compiler import Host, compile_world
from controller.server.core import Core
from controller.server.errors import ApiError
from controller.state.store import Conflict, SqliteStore
from tests.unit.fixtures import BLUE, RED, tenant_yaml


def full(core):
    """What a from-scratch compile of the core's current intent gives."""
    hosts = {n: Host(n, h.pa) for n, h in core.hosts.items()}
    tenants = {n: (e.tenant, e.alloc) for n, e in core.tenants.items()}
    return {h: sorted(f.ofctl() for f in fl.values()) for h, fl in compile_world(hosts, tenants).items()}


def held(used: InUse) -> tuple:
    return (used.tenant_ids, used.vnis, used.zones, used.groups, used.addresses,
            {h: v for h, v in used.ofports.items() if v})


def held_from_scratch(core) -> tuple:
    used = InUse()
    for e in core.tenants.values():
        used.add(e.tenant, e.alloc)
    return held(used)


def desired(core):
    return {h: sorted(f.ofctl() for f in fl.values()) for h, fl in core.desired.items()}


def test_create_apply_delete_keep_incremental_equal_to_full(core):
    core.create(BLUE)
    core.create(RED)
    assert desired(core) == full(core)
    core.apply(BLUE.replace("ip: 10.0.0.14, host: hv1", "ip: 10.0.0.44, host: hv3"))
    assert desired(core) == full(core)
    core.delete("red")
    assert desired(core) == full(core)


def test_apply_then_revert_restores_the_original_flows(core):
    core.create(BLUE)
    before = desired(core)
    core.apply(BLUE.replace("host: hv3", "host: hv2"))
    assert desired(core) != before
    core.apply(BLUE)
    assert desired(core) == before


def test_replaying_the_same_document_changes_nothing(core):
    core.create(BLUE)
    before = desired(core)
    r = core.apply(BLUE)
    assert desired(core) == before
    assert r["hosts"] == {}  # no host's flow set changed, so none was touched


def test_a_one_port_change_touches_only_hosts_whose_flows_change(core):
    core.create(tenant_yaml("a", "s", [("p1", "10.0.0.11", "hv1"), ("p2", "10.0.0.12", "hv1")]))
    core.create(tenant_yaml("b", "s", [("p1", "10.0.0.11", "hv2"), ("p2", "10.0.0.12", "hv3")]))
    r = core.apply(tenant_yaml("a", "s", [("p1", "10.0.0.11", "hv1"), ("p2", "10.0.0.13", "hv1")]))
    assert sorted(r["hosts"]) == ["hv1"]


def test_invalid_document_changes_nothing(core):
    core.create(BLUE)
    before, rev = desired(core), core.store.tenant("blue").revision
    bad = BLUE.replace("ip: 10.0.0.12", "ip: 10.0.1.12")
    with pytest.raises(ApiError) as e:
        core.apply(bad)
    assert ("spec.ports[1].ip", "10.0.1.12 is outside switch web's cidr 10.0.0.0/24") in e.value.errors
    assert desired(core) == before
    assert core.store.tenant("blue").revision == rev
    assert held(core.used) == held_from_scratch(core)


def test_create_refuses_an_existing_tenant(core):
    core.create(BLUE)
    with pytest.raises(ApiError, match="already exists"):
        core.create(BLUE)


def test_allocations_survive_changes_and_restarts(core, tmp_path):
    core.create(BLUE)
    a1 = core.tenants["blue"].alloc
    core.apply(BLUE.replace("    - {name: vm4, switch: web, ip: 10.0.0.14, host: hv1}\n", ""))
    a2 = core.tenants["blue"].alloc
    for p in ("vm1", "vm2", "vm3"):
        assert (a1.port_key[p], a1.ofport[p]) == (a2.port_key[p], a2.ofport[p])
    assert a1.vni == a2.vni and a1.tenant_id == a2.tenant_id
    reborn = Core(core.store)  # a restarted controller knows every tenant
    assert desired(reborn) == desired(core)


def with_lb(doc: str, ports: list, rng) -> str:
    """The same VIP 10.0.0.100:80 in every tenant that has one, backends among its ports."""
    backends = sorted({p for p, _, _ in rng.sample(ports, rng.randint(1, len(ports)))})
    return doc + "  loadBalancers:\n    - {name: lb, vip: 10.0.0.100, protocol: tcp, port: 80, backends: [" + \
        ", ".join(f"{b}:8080" for b in backends) + "]}\n"


def proved(core):
    """`nvctl verify` over the core's desired flows (the simulator's view of every host)."""
    from controller.analysis.verify import network_from_compiled, verify
    hosts = {n: Host(n, h.pa) for n, h in core.hosts.items()}
    tenants = {n: (e.tenant, e.alloc) for n, e in core.tenants.items()}
    return verify(network_from_compiled(hosts, tenants, core.desired.hosts))


def test_randomized_changes_incremental_equals_full(core):
    """Tenants that reuse each other's names, CIDR, CAs, MACs and LB VIP; after every
    step: incremental == full compile, holdings == a rebuild, and verify proves it."""
    rng = random.Random(7)
    names = ["t0", "t1", "t2", "t3"]
    for step in range(60):
        name = rng.choice(names)
        if name in core.tenants and rng.random() < 0.25:
            core.delete(name)
        else:
            n = rng.randint(1, 5)
            ports = [(f"p{i}", f"10.0.0.{10 + rng.randint(0, 40)}", f"hv{rng.randint(1, 3)}")
                     for i in range(n)]
            ports = list({ip: (p, ip, h) for p, ip, h in ports}.values())
            doc = tenant_yaml(name, "s", ports)
            core.apply(with_lb(doc, ports, rng) if rng.random() < 0.5 else doc)
        assert desired(core) == full(core), f"step {step}"
        assert held(core.used) == held_from_scratch(core), f"step {step}"
        if step % 5 == 0 or step == 59:
            rep = proved(core)
            assert rep.ok, f"step {step}:\n{rep.format()}"


POLICY_POOL = [
    {"name": "in-from-fe", "podSelector": {"matchLabels": {"app": "db"}},
     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "fe"}}}], "ports": [{"port": 5432}]}]},
    {"name": "deny-out", "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["fe"]}]},
     "policyTypes": ["Egress"]},
    {"name": "block", "podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/24",
                                                                           "except": ["10.0.0.32/28"]}}]}]},
    {"name": "ns", "namespace": "s", "podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]},
     "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"env": "prod"}}}]}],
     "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"protocol": "UDP"}]}]},
]


def test_randomized_policy_and_label_changes_incremental_equals_full(core):
    """Twins and near-twins with labelled ports under network policies; every step a new
    spec, a relabel of one port, or a delete: incremental == full compile, holdings ==
    a rebuild, and verify proves it (isolation, the policies' reach and no leak)."""
    from topology.builder import port as mkport, tenant_doc
    rng = random.Random(11)
    names = ["t0", "t1", "t2"]
    specs: dict = {}
    seen = {"relabels": 0, "with policies": 0}
    for step in range(40):
        name = rng.choice(names)
        r = rng.random()
        if name in core.tenants and r < 0.15:
            core.delete(name)
        elif name in core.tenants and r < 0.55:
            p = rng.choice([x.name for x in core.tenants[name].tenant.ports])
            if rng.random() < 0.3 and "app" in dict(core.tenants[name].tenant.port(p).labels):
                core.port_label(name, p, remove=["app"])  # out of every selector naming app
            else:
                core.port_label(name, p, set={"app": rng.choice(["fe", "db", "batch"])})
            seen["relabels"] += 1
        else:
            n = rng.randint(2, 5)
            ports = [mkport(f"p{i}", "s", f"10.0.0.{10 + rng.randint(0, 40)}", f"hv{rng.randint(1, 3)}",
                            labels={"app": rng.choice(["fe", "db", "batch"])}) for i in range(n)]
            ports = list({p["ip"]: p for p in ports}.values())
            pols = rng.sample(POLICY_POOL, rng.randint(0, len(POLICY_POOL)))
            specs[name] = tenant_doc(name, switches=[{"name": "s", "cidr": "10.0.0.0/24",
                                                      "labels": {"env": rng.choice(["prod", "dev"])}}],
                                     ports=ports, networkPolicies=pols)
            core.apply(specs[name])
            seen["with policies"] += bool(pols)
        assert desired(core) == full(core), f"step {step}"
        assert held(core.used) == held_from_scratch(core), f"step {step}"
        if step % 4 == 0 or step == 39:
            rep = proved(core)
            assert rep.ok, f"step {step}:\n{rep.format()}"
    assert seen["relabels"] >= 10 and seen["with policies"] >= 10, seen


def test_store_revisions_refuse_stale_writers(tmp_path):
    s = SqliteStore(str(tmp_path / "x.db"))
    r1 = s.put_tenant("t", {"a": 1}, {}, None)
    with pytest.raises(Conflict):
        s.put_tenant("t", {"a": 2}, {}, None)  # create over an existing one
    s.put_tenant("t", {"a": 2}, {}, r1)
    with pytest.raises(Conflict):
        s.put_tenant("t", {"a": 3}, {}, r1)  # stale revision
    assert s.tenant("t").doc == {"a": 2}
    s.close()


def test_invitations_admit_only_the_named_host(core):
    with pytest.raises(ApiError, match="no PKI"):
        core.invite_host("hv7", "192.0.2.17", tls=True)
    with pytest.raises(ApiError, match="already used by hv1"):
        core.invite_host("hv7", "192.0.2.11", tls=False)
    inv = core.invite_host("hv7", "192.0.2.17", tls=False)
    assert inv["dpid"] not in {h.dpid for h in core.hosts.values()} and len(inv["token"]) == 32
    with pytest.raises(ApiError, match="already invited as hv7"):
        core.invite_host("hv8", "192.0.2.17", tls=False)
    # OpenFlow admission: a certificate speaks only for its own host's datapath
    assert core.admit(0x101, None)  # lab host, plain TCP
    assert not core.admit(0x101, "hv2")  # hv2's certificate for hv1's datapath
    assert core.admit(0x102, "hv2")
    assert core.admit(inv["dpid"], None)  # invited without TLS: held until it joins
    tls_inv = {**inv, "name": "hv9", "dpid": 0x999, "tls": True, "token": "t" * 32}
    core.store.put_invite("hv9", tls_inv)
    assert not core.admit(0x999, None) and not core.admit(0x999, "hv7") and core.admit(0x999, "hv9")
    with pytest.raises(ApiError, match="no invitation matches"):
        core.join_host("x" * 32, "198.51.100.99", None)
    with pytest.raises(ApiError, match="is plain TCP"):
        core.join_host("t" * 32, "198.51.100.99", None)


def test_provider_addresses_belong_to_one_tenant_and_ownership_survives_restarts(tmp_path):
    from tests.unit.test_golden import DOC as SHOP
    store = SqliteStore(str(tmp_path / "desired.db"))
    c = Core(store)
    ext = {"ofport": 2, "network": "203.0.113.0/24", "next_hop": "203.0.113.1", "next_hop_mac": "02:aa:00:00:00:01"}
    for i in (1, 2, 3):
        c.register_host(f"hv{i}", f"192.0.2.{10 + i}", 0x100 + i, {"kind": "test", **({"external": ext} if i == 1 else {})})
    c.create(SHOP)  # router external 203.0.113.10, floating IP 203.0.113.11
    twin = SHOP.replace("metadata: {name: shop}", "metadata: {name: twin}")
    with pytest.raises(ApiError) as e:
        c.create(twin)
    errs = dict(e.value.errors)
    assert errs["spec.routers[0].external.ip"] == "203.0.113.10 belongs to tenant shop"
    assert errs["spec.nat[1].externalIp"] == "203.0.113.11 belongs to tenant shop"
    assert "twin" not in c.tenants and [t.name for t in store.tenants()] == ["shop"]
    only_fip = twin.replace("203.0.113.10", "203.0.113.30")
    with pytest.raises(ApiError) as e:
        c.create(only_fip)
    assert list(dict(e.value.errors)) == ["spec.nat[1].externalIp"]
    for bad, why in (("203.0.113.1", "the provider network's gateway"),
                     ("198.51.100.7", "outside the provider network 203.0.113.0/24"),
                     ("203.0.113.255", "broadcast address")):
        with pytest.raises(ApiError) as e:
            c.create(only_fip.replace("203.0.113.11", bad))
        assert why in dict(e.value.errors)["spec.nat[1].externalIp"], e.value.errors
    c2 = Core(store)  # a restart: ownership comes back from the store
    with pytest.raises(ApiError):
        c2.create(twin)
    c2.apply(SHOP.replace("203.0.113.11", "203.0.113.12"))  # the owner may change its own
    c2.create(only_fip)  # .11 is free again
    c2.delete("shop")
    c2.create(twin.replace("203.0.113.11", "203.0.113.12").replace("name: twin", "name: third"))
    assert c2.used.addresses == {"203.0.113.30": "twin", "203.0.113.11": "twin",
                                 "203.0.113.10": "third", "203.0.113.12": "third"}
    store.close()


def test_a_switchs_mtu_is_what_its_hosts_underlay_carries_and_mtu_beyond_it_is_refused(tmp_path):
    store = SqliteStore(str(tmp_path / "desired.db"))
    c = Core(store)
    for i, mtu in ((1, 1500), (2, 9000), (3, None)):  # hv3 did not say: 1500 is assumed
        c.register_host(f"hv{i}", f"192.0.2.{10 + i}", 0x100 + i, {"kind": "test", **({"mtu": mtu} if mtu else {})})
    two = tenant_yaml("two", "s", [("a", "10.0.0.11", "hv2"), ("b", "10.0.0.12", "hv2")])
    one = tenant_yaml("one", "s", [("a", "10.0.0.11", "hv1"), ("b", "10.0.0.12", "hv2")])
    c.create(two)
    c.create(one)
    assert c.show("two")["mtu"] == {"s": 8950} and c.show("one")["mtu"] == {"s": 1450}
    assert {a.mtu for a in c._attachments("one", c.tenants["one"]).values()} == {1450}
    with pytest.raises(ApiError) as e:
        c.apply(one.replace("cidr: 10.0.0.0/24}", "cidr: 10.0.0.0/24, mtu: 1500}"))
    assert e.value.errors == [("spec.switches[0].mtu", "1500 is more than the underlay carries: hv1 carries "
                                                       "at most 1450 (uplink MTU less 50 bytes of VXLAN)")]
    c.apply(two.replace("cidr: 10.0.0.0/24}", "cidr: 10.0.0.0/24, mtu: 1400}"))  # smaller is fine
    assert c.show("two")["mtu"] == {"s": 1400} and c.show("two")["spec"]["spec"]["switches"][0]["mtu"] == 1400
    store.close()
