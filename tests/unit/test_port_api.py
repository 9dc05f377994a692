"""Ports that come and go through the API: addresses from the switch's CIDR that no one
has or reserves, stored with the tenant, kept by a `tenant apply` that does not name
them, and every policy of their switch; twins get the same address each."""
import threading

import pytest

from controller.server.core import Core
from controller.server.errors import ApiError
from tests.unit.fixtures import BLUE, tenant_yaml
from tests.unit.test_core import desired, full

ROUTED = """apiVersion: nvctl/v1
kind: Tenant
metadata: {name: NAME}
spec:
  switches:
    - {name: web, cidr: 10.0.0.0/29}
  routers:
    - {name: r1, ports: [{switch: web, ip: 10.0.0.1}]}
  ports:
    - {name: a, switch: web, ip: 10.0.0.3, host: hv1}
  loadBalancers:
    - {name: lb, vip: 10.0.0.2, protocol: tcp, port: 80, backends: ["a:8080"]}
  acls:
    - {priority: 10, direction: to-port, from: web, protocol: tcp, action: allow}
    - {priority: 5, direction: to-port, action: deny}
"""


def test_addresses_skip_router_vip_and_used_and_a_full_subnet_is_refused(core):
    core.create(ROUTED.replace("NAME", "shop"))
    got = [core.port_add("shop", "web")["port"]["ip"] for _ in range(3)]
    assert got == ["10.0.0.4", "10.0.0.5", "10.0.0.6"]  # .1 router, .2 VIP, .3 port a; .7 broadcast
    with pytest.raises(ApiError) as e:
        core.port_add("shop", "web")
    assert e.value.errors[0][0] == "--ip" and "no free address" in e.value.errors[0][1]
    assert [p.name for p in core.tenants["shop"].tenant.ports] == ["a", "web-1", "web-2", "web-3"]
    assert desired(core) == full(core)


def test_a_switch_without_router_keeps_its_service_address(core):
    core.create(tenant_yaml("t", "s", [("a", "10.0.0.1", "hv1")], cidr="10.0.0.0/30"))
    with pytest.raises(ApiError) as e:  # .2 is DHCP/DNS's (last address of a /30)
        core.port_add("t", "s")
    assert "no free address" in e.value.errors[0][1]


def test_api_ports_get_the_switchs_policy_survive_restart_and_apply(core, tmp_path):
    core.create(ROUTED.replace("NAME", "shop"))
    r = core.port_add("shop", "web", name="c1", host="hv2")
    assert r["port"]["host"] == "hv2" and r["port"]["ofport"] > 0
    flows = [f for f in core.desired["hv2"].values() if "port c1" in f.rule]
    assert any(f.table.name == "acl_out_ct" for f in flows)  # guarded by the ACLs like port a
    # a YAML applied without it keeps it; a restart (fresh core on the store) too
    core.apply(ROUTED.replace("NAME", "shop").replace("ip: 10.0.0.3", "ip: 10.0.0.6"))
    assert {p.name: p.made_by for p in core.tenants["shop"].tenant.ports} == {"a": "yaml", "c1": "api"}
    again = Core(core.store)
    assert again.tenants["shop"].tenant.port("c1").made_by == "api"
    assert again.show("shop")["spec"]["spec"]["ports"][1]["madeBy"] == "api"
    # a YAML port that takes its address is refused, naming the conflict, and changes nothing
    before = desired(core)
    with pytest.raises(ApiError) as e:
        core.apply(ROUTED.replace("NAME", "shop").replace("ip: 10.0.0.3", f"ip: {r['port']['ip']}"))
    assert "ports made by the API" in str(e.value) and any("already used" in why for _, why in e.value.errors)
    assert desired(core) == before


def test_del_removes_it_and_refuses_a_port_its_policy_names(core):
    core.create(ROUTED.replace("NAME", "shop"))
    core.port_add("shop", "web", name="c1")
    core.port_del("shop", "c1")
    assert [p.name for p in core.tenants["shop"].tenant.ports] == ["a"]
    with pytest.raises(ApiError) as e:
        core.port_del("shop", "a")  # the load balancer's backend
    assert "still named" in str(e.value)
    with pytest.raises(ApiError):
        core.port_del("shop", "nope")
    assert desired(core) == full(core)


def test_bad_requests_name_the_option(core):
    core.create(BLUE)
    for kw, opt in ((dict(switch="nope"), "--switch"), (dict(switch="web", name="vm1"), "--name")):
        with pytest.raises(ApiError) as e:
            core.port_add("blue", **kw)
        assert e.value.errors[0][0] == opt
    with pytest.raises(ApiError) as e:
        core.port_add("blue", "web", ip="10.0.0.11")  # vm1's
    assert any("already used" in why for _, why in e.value.errors)


def test_concurrent_adds_get_distinct_addresses_and_twins_the_same(core):
    core.create(tenant_yaml("x", "s", [], cidr="10.0.0.0/24"))
    core.create(tenant_yaml("y", "s", [], cidr="10.0.0.0/24"))
    out, errors = [], []

    def add(t):
        try:
            out.append((t, core.port_add(t, "s")["port"]["ip"]))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=add, args=(t,)) for t in ["x"] * 25 + ["y"] * 25]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    for t in ("x", "y"):
        ips = sorted(ip for tt, ip in out if tt == t)
        assert len(set(ips)) == 25 and ips == sorted(f"10.0.0.{i}" for i in range(1, 26))
    assert desired(core) == full(core)


def test_labels_given_to_an_api_port_are_stored_shown_and_kept_and_twins_have_their_own(core):
    core.create(BLUE)
    core.create(BLUE.replace("name: blue", "name: red"))
    for t in ("blue", "red"):
        out = core.port_add(t, "web", name="c1", host="hv2", labels={"app": "web", "example.com/tier": "front"})
        assert out["port"]["name"] == "c1"
    for t in ("blue", "red"):
        p = core.tenants[t].tenant.port("c1")
        assert dict(p.labels) == {"app": "web", "example.com/tier": "front"}
        shown = {q["name"]: q for q in core.show(t)["spec"]["spec"]["ports"]}
        assert shown["c1"]["labels"] == {"app": "web", "example.com/tier": "front"}
    core.apply(BLUE.replace("10.0.0.14", "10.0.0.24"))  # a YAML that does not name c1 keeps it, labels too
    assert dict(core.tenants["blue"].tenant.port("c1").labels) == {"app": "web", "example.com/tier": "front"}
    restarted = Core(core.store)
    assert dict(restarted.tenants["red"].tenant.port("c1").labels) == {"app": "web", "example.com/tier": "front"}


def test_a_bad_label_is_refused_naming_it_and_nothing_is_added(core):
    core.create(BLUE)
    before = core.tenants["blue"].revision
    with pytest.raises(ApiError) as e:
        core.port_add("blue", "web", name="c1", labels={"app": "web server"})
    assert any(path.endswith(".labels.app") and "'web server' must be empty or 1 to 63" in why
               for path, why in e.value.errors), e.value.errors
    assert core.tenants["blue"].revision == before
    assert "c1" not in {p.name for p in core.tenants["blue"].tenant.ports}
