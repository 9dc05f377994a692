"""Policy layers owned by separate controllers (controller.server.owners, the layer:
role of controller.server.access): the owner writes its layer and nothing else; a
tenant's apply cannot change an owned layer, keeps it when it leaves it out, passes
when it repeats it; versions and expect_version; an invalid layer changes nothing;
refusals in the audit trail; ownership kept across a restart. Every request goes
through the API's one dispatcher, as over the network; switches are fake (OpenFlow's
semantics, no OVS) so "nothing changed" includes the flows the switches hold."""
import json
import os

import pytest
import yaml

from controller.server.access import ROOT, Principal, check_role, decide
from controller.server.api import ApiServer
from controller.server.core import Core
from controller.server.errors import ApiError
from controller.server.ops import OPS
from controller.server.owners import LAYERS
from tests.unit.fixtures import BLUE, BLUE_PORTS, RED, tenant_doc

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEC = Principal("security-controller", "layer:acls", "token", "198.51.100.21")
SEC_BLUE = Principal("sec-blue", "layer:acls@blue", "token", "198.51.100.22")
OTHER_SEC = Principal("other-sec", "layer:acls", "token", "198.51.100.23")
LB = Principal("lb-controller", "layer:loadBalancers", "token", "198.51.100.24")
BLUE_CI = Principal("blue-ci", "tenant:blue", "token", "198.51.100.11")

DENY_VM1 = [{"priority": 100, "direction": "to-port", "ports": ["vm1"], "action": "deny"}]
ALLOW_WEB = [{"priority": 200, "direction": "to-port", "ports": ["vm2"], "from": "10.0.0.0/24",
              "protocol": "tcp", "dstPorts": [80], "action": "allow"}]


def blue_with(**spec) -> str:
    """BLUE with these spec sections, written out even when empty (`acls: []` says "no
    ACLs"; a section left out says nothing)."""
    ports = [{"name": n, "switch": "web", "ip": ip, "host": h} for n, ip, h in BLUE_PORTS]
    return yaml.safe_dump({"apiVersion": "nvctl/v1", "kind": "Tenant", "metadata": {"name": "blue"},
                           "spec": {"switches": [{"name": "web", "cidr": "10.0.0.0/24"}], "ports": ports, **spec}})


@pytest.fixture
def api(switched_core, tmp_path):
    switched_core.create(BLUE)
    switched_core.create(RED)
    s = ApiServer(switched_core, str(tmp_path / "api.sock"))
    yield s
    s.sock.close()


def ask(api, who, op, **args):
    return api.dispatch(op, args, f"rid-{op}", principal=who)


def put(api, who, layer, content, tenant="blue", **kw):
    return ask(api, who, "layer.put", tenant=tenant, layer=layer,
               content=content if isinstance(content, str) else json.dumps(content), **kw)


def state(core, name="blue"):
    """What a change would alter: the stored record, the intent, the flows each switch holds."""
    rec = core.store.tenant(name)
    return (rec.revision, rec.doc, rec.layers, core.tenants[name].tenant,
            {h: sorted(map(str, sw.flows())) for h, sw in core.switches.items()})


def audit(api):
    api.core.audit_trail.flush()
    return api.core.store.audit_entries(100)


# the role ------------------------------------------------------------------------------

def test_layer_roles_parse_and_bad_ones_name_what_is_wrong():
    assert LAYERS == ("acls", "networkPolicies", "loadBalancers", "nat")
    for role in ("layer:acls", "layer:networkPolicies", "layer:nat@blue", "layer:loadBalancers@b-2"):
        assert check_role(role) == role
    assert Principal("x", "layer:networkPolicies@blue", "token").layer == ("networkPolicies", "blue")
    assert Principal("x", "layer:acls", "token").layer == ("acls", None)
    assert Principal("x", "tenant:blue", "token").layer is None
    for role, says in (("layer:ports", "'ports' is not one of acls"), ("layer:", "'' is not one of"),
                       ("layer:networkpolicies", "is not one of"), ("layer:acls@Blue", "TENANT 'Blue'"),
                       ("layer:acls@", "TENANT ''")):
        with pytest.raises(ApiError) as e:
            check_role(role)
        assert says in str(e.value) and e.value.errors[0][0] == "role", role


def test_a_layer_credential_is_issued(core):
    out = core.credential_issue("sec", "layer:networkPolicies@blue")
    assert out["role"] == "layer:networkPolicies@blue"
    assert core.store.credentials()["sec"]["role"] == "layer:networkPolicies@blue"
    with pytest.raises(ApiError):
        core.credential_issue("sec2", "layer:switches")


@pytest.mark.parametrize("op,args", [
    ("tenant.show", {"name": "blue"}), ("tenant.apply", {"yaml": BLUE}), ("tenant.delete", {"name": "blue"}),
    ("port.info", {"tenant": "blue", "port": "vm1"}), ("port.add", {"tenant": "blue", "switch": "web"}),
    ("verify", {}), ("stats", {"tenant": "blue"}), ("audit.list", {}), ("host.list", {}),
    ("layer.release", {"tenant": "blue", "layer": "acls"}), ("tenant.validate", {"yaml": BLUE}),
])
def test_a_layer_credential_does_nothing_but_its_layer(api, op, args):
    out = ask(api, SEC, op, **args)
    assert out["ok"] is False and out["error"].startswith("permission denied"), out
    assert "spec.acls" in out["error"] and "layer.put" in out["error"]  # it says what it may do
    assert "blue" in api.core.tenants and ask(api, ROOT, "tenant.show", name="blue")["ok"]


def test_a_layer_credential_lists_tenant_names_only(api):
    assert ask(api, SEC, "tenant.list")["result"] == [{"name": "blue"}, {"name": "red"}]
    assert ask(api, SEC_BLUE, "tenant.list")["result"] == [{"name": "blue"}]
    assert set(ask(api, ROOT, "tenant.list")["result"][0]) > {"name", "ports"}


# the owner's writes ------------------------------------------------------------------

def test_the_owner_writes_its_layer_and_not_another(api):
    core = api.core
    before_flows = state(core)[4]
    out = put(api, SEC, "acls", DENY_VM1)
    assert out["ok"], out
    r = out["result"]
    assert (r["version"], r["owner"], r["layer"]) == (1, "security-controller", "acls")
    assert [a.ports for a in core.tenants["blue"].tenant.acls] == [("vm1",)]
    assert state(core)[4] != before_flows  # installed on the switches, not only stored
    shown = ask(api, SEC, "layer.show", tenant="blue", layer="acls")["result"]
    assert (shown["version"], shown["owner"], shown["owner_role"]) == (1, "security-controller", "layer:acls")
    assert shown["content"][0]["ports"] == ["vm1"] and shown["content"][0]["action"] == "deny"

    before = state(core)
    for layer in ("nat", "loadBalancers", "networkPolicies"):
        out = put(api, SEC, layer, [])
        assert out["error"].startswith("permission denied") and f"spec.{layer}" in out["error"], out
        assert "read and write spec.acls" in out["error"]
        out = ask(api, SEC, "layer.show", tenant="blue", layer=layer)
        assert out["error"].startswith("permission denied")
    assert state(core) == before


def test_another_credential_even_of_the_same_role_is_refused_naming_the_owner(api):
    assert put(api, SEC, "acls", DENY_VM1)["ok"]
    before = state(api.core)
    for who in (OTHER_SEC, BLUE_CI, ROOT):
        out = put(api, who, "acls", ALLOW_WEB)
        assert out["ok"] is False and "owned by security-controller (layer:acls)" in out["error"], (who, out)
        assert out["denied"] is True  # 403 over HTTPS
    assert state(api.core) == before


def test_a_tenant_writes_an_unowned_layer_without_owning_it(api):
    out = put(api, BLUE_CI, "acls", ALLOW_WEB)
    assert out["ok"] and out["result"]["owner"] is None and out["result"]["version"] == 1
    # the security controller takes it over with its first write
    out = put(api, SEC, "acls", DENY_VM1)
    assert out["ok"] and out["result"]["owner"] == "security-controller" and out["result"]["version"] == 2


# the tenant's own apply --------------------------------------------------------------

def test_a_tenant_apply_that_changes_an_owned_layer_is_refused_naming_the_owner(api):
    core = api.core
    assert put(api, SEC, "acls", DENY_VM1)["ok"]
    before = state(core)
    for doc in (blue_with(acls=ALLOW_WEB), blue_with(acls=[])):
        out = ask(api, BLUE_CI, "tenant.apply", yaml=doc)
        assert out["ok"] is False and out["denied"] is True
        assert "spec.acls is owned by security-controller (layer:acls); ask it, or an admin" in out["error"]
        assert out["errors"][0][0] == "spec.acls"
    assert ask(api, BLUE_CI, "tenant.create", yaml=blue_with(acls=[]))["ok"] is False  # it exists anyway
    assert state(core) == before


def test_a_tenant_apply_that_leaves_an_owned_layer_out_keeps_it(api):
    core = api.core
    assert put(api, SEC, "acls", DENY_VM1)["ok"]
    moved = [(n, ip, "hv3" if n == "vm2" else h) for n, ip, h in BLUE_PORTS]  # vm2 to hv3
    yaml = tenant_doc("blue", switches=[{"name": "web", "cidr": "10.0.0.0/24"}],
                      ports=[{"name": n, "switch": "web", "ip": ip, "host": h} for n, ip, h in moved])
    out = ask(api, BLUE_CI, "tenant.apply", yaml=yaml)
    assert out["ok"], out
    t = core.tenants["blue"].tenant
    assert t.port("vm2").host == "hv3"  # the tenant's change made
    assert [(a.ports, a.action) for a in t.acls] == [(("vm1",), "deny")]  # the owner's layer kept
    assert core.store.tenant("blue").layers["acls"]["version"] == 1  # not a write of the layer
    assert core.store.tenant("blue").layers["acls"]["owner"] == "security-controller"


def test_a_tenant_apply_that_leaves_out_an_owned_layer_its_ports_need_names_the_conflict(api):
    assert put(api, SEC, "acls", DENY_VM1)["ok"]
    before = state(api.core)
    without_vm1 = tenant_doc("blue", switches=[{"name": "web", "cidr": "10.0.0.0/24"}],
                             ports=[{"name": n, "switch": "web", "ip": ip, "host": h}
                                    for n, ip, h in BLUE_PORTS if n != "vm1"])
    out = ask(api, BLUE_CI, "tenant.apply", yaml=without_vm1)
    assert out["ok"] is False and "owned spec.acls" in out["error"] and "security-controller" in out["error"]
    assert [list(e) for e in out["errors"]] == [["spec.acls[0].ports", "unknown port 'vm1'"]]
    assert state(api.core) == before


def test_a_tenant_apply_that_repeats_an_owned_layer_unchanged_passes(api):
    core = api.core
    assert put(api, SEC, "acls", DENY_VM1)["ok"]
    # as the tenant wrote it, and as `tenant show` prints it (defaults filled in): both the same layer
    shown = ask(api, ROOT, "layer.show", tenant="blue", layer="acls")["result"]["content"]
    for acls in (DENY_VM1, shown):
        out = ask(api, BLUE_CI, "tenant.apply", yaml=blue_with(acls=acls))
        assert out["ok"], out
    assert core.store.tenant("blue").layers["acls"]["version"] == 1


def test_a_tenant_apply_that_changes_an_unowned_layer_moves_its_version(api):
    assert ask(api, BLUE_CI, "tenant.apply", yaml=blue_with(acls=ALLOW_WEB))["ok"]
    rec = api.core.store.tenant("blue").layers["acls"]
    assert (rec["version"], rec["owner"], rec["written_by"]) == (1, None, "tenant.apply")
    # a writer that read version 0 is told someone wrote it since
    out = put(api, SEC, "acls", DENY_VM1, expect_version=0)
    assert out["ok"] is False and "at version 1, not 0" in out["error"]


# versions -----------------------------------------------------------------------------

def test_versions_go_up_per_write_and_a_stale_expect_version_changes_nothing(api):
    core = api.core
    assert ask(api, SEC, "layer.show", tenant="blue", layer="acls")["result"]["version"] == 0
    assert put(api, SEC, "acls", DENY_VM1, expect_version=0)["result"]["version"] == 1
    assert put(api, SEC, "acls", ALLOW_WEB, expect_version=1)["result"]["version"] == 2
    same = put(api, SEC, "acls", ALLOW_WEB)  # nothing to change: not a new version
    assert same["ok"] and same["result"]["action"] == "unchanged" and same["result"]["version"] == 2
    before = state(core)
    out = put(api, SEC, "acls", DENY_VM1, expect_version=1)
    assert out["ok"] is False and out["errors"][0][0] == "expect_version"
    assert "spec.acls is at version 2, not 1" in out["error"] and "nothing was changed" in out["error"]
    assert state(core) == before
    assert put(api, SEC, "acls", DENY_VM1, expect_version=2)["result"]["version"] == 3


def test_an_invalid_layer_is_refused_naming_the_field_and_changes_nothing(api):
    core = api.core
    assert put(api, SEC, "acls", DENY_VM1)["ok"]
    before = state(core)
    bad = [{"priority": 100, "direction": "to-port", "ports": ["nope"], "action": "deny"},
           {"priority": 100, "direction": "sideways", "action": "deny"}]
    out = put(api, SEC, "acls", bad)
    assert out["ok"] is False and "spec.acls is invalid; nothing was changed" in out["error"]
    fields = [e[0] for e in out["errors"]]
    assert "spec.acls[0].ports" in fields and "spec.acls[1].direction" in fields
    for content, field in (("{not: [valid", "content"), ("priority: 1", "content"), ("[]\n---\n[]", "content")):
        out = put(api, SEC, "acls", content)
        assert out["ok"] is False and out["errors"][0][0] == field, out
    out = ask(api, ROOT, "layer.put", tenant="blue", layer="ports", content="[]")
    assert out["ok"] is False and out["errors"][0][0] == "layer"
    assert state(core) == before


# one tenant only -----------------------------------------------------------------------

def test_a_layer_credential_for_one_tenant_does_not_see_another(api):
    assert put(api, SEC_BLUE, "acls", DENY_VM1)["ok"]
    about_red = ask(api, SEC_BLUE, "layer.show", tenant="red", layer="acls")
    about_ghost = ask(api, ROOT, "layer.show", tenant="ghost", layer="acls")
    assert json.dumps(about_red).replace("'red'", "'X'") == json.dumps(about_ghost).replace("'ghost'", "'X'")
    assert about_red["error"] == "no tenant 'red'"
    before = state(api.core, "red")
    wrote_red = put(api, SEC_BLUE, "acls", DENY_VM1, tenant="red")
    wrote_ghost = put(api, SEC_BLUE, "acls", DENY_VM1, tenant="ghost")
    assert wrote_red == wrote_ghost and wrote_red["error"] == "permission denied: sec-blue may only use tenant blue"
    assert state(api.core, "red") == before


# release, restart, audit -----------------------------------------------------------------

def test_an_admin_releases_the_owner_and_then_the_tenant_may_change_the_layer(api):
    assert put(api, SEC, "acls", DENY_VM1)["ok"]
    assert ask(api, BLUE_CI, "layer.release", tenant="blue", layer="acls")["error"].startswith("permission denied")
    out = ask(api, ROOT, "layer.release", tenant="blue", layer="acls")
    assert out["ok"] and out["result"]["was"] == "security-controller" and out["result"]["version"] == 2
    assert ask(api, BLUE_CI, "tenant.apply", yaml=blue_with(acls=ALLOW_WEB))["ok"]
    # release with a write: the admin's content, unowned, in one change
    assert put(api, SEC, "acls", DENY_VM1)["result"]["owner"] == "security-controller"
    out = put(api, ROOT, "acls", [], release=True)
    assert out["ok"] and out["result"]["owner"] is None and api.core.tenants["blue"].tenant.acls == ()
    assert put(api, SEC, "acls", DENY_VM1, release=True)["error"].startswith("permission denied")


def test_ownership_and_versions_survive_a_restart(api):
    assert put(api, SEC, "acls", DENY_VM1)["ok"]
    assert put(api, SEC, "acls", ALLOW_WEB)["ok"]
    again = Core(api.core.store)
    assert again.tenants["blue"].layers["acls"]["owner"] == "security-controller"
    assert again.layer_show("blue", "acls")["version"] == 2
    with pytest.raises(ApiError) as e:
        again.apply(blue_with(acls=[]))
    assert "owned by security-controller" in str(e.value)


def test_refusals_are_in_the_audit_trail_with_operation_principal_and_reason(api):
    assert put(api, SEC, "acls", DENY_VM1)["ok"]
    put(api, SEC, "nat", [])  # another layer: refused by role
    ask(api, BLUE_CI, "tenant.apply", yaml=blue_with(acls=[]))  # the owned layer: refused by the owner
    put(api, BLUE_CI, "acls", [])
    rows = [(e["who"], e["op"], e["scope"], e["result"]) for e in audit(api)]
    assert ("security-controller", "layer.put", "tenant:blue", "ok") in rows
    refused = [r for r in rows if r[3].startswith("refused: ")]
    assert [(w, op) for w, op, _, _ in refused] == [("security-controller", "layer.put"),
                                                    ("blue-ci", "tenant.apply"), ("blue-ci", "layer.put")]
    assert "may not touch spec.nat" in refused[0][3]
    assert all("owned by security-controller (layer:acls)" in r[3] for r in refused[1:])
    # the tenant sees its own refusals
    mine = ask(api, BLUE_CI, "audit.list")["result"]
    assert [e["op"] for e in mine if e["result"].startswith("refused")] == ["tenant.apply", "layer.put"]


def test_the_operations_are_declared_with_their_scope():
    assert OPS["layer.put"].kind == "change" and OPS["layer.show"].kind == "read"
    assert OPS["layer.put"].scope == "tenant" and "principal" in OPS["layer.put"].context
    d = decide(SEC, OPS["layer.put"], {"tenant": "blue", "layer": "acls", "content": "[]"})
    assert d.allow and d.scope == "tenant:blue"


# networkPolicies, the layer the example security controller owns ---------------------------

SEC_NP = Principal("security-controller", "layer:networkPolicies", "token", "198.51.100.21")
DEFAULT_POLICY = yaml.safe_load(open(os.path.join(REPO, "examples", "security-controller", "default-policy.yaml")))


def test_the_example_policy_owned_on_network_policies_and_the_tenant_kept_from_changing_it(api):
    core = api.core
    out = put(api, SEC_NP, "networkPolicies", DEFAULT_POLICY)
    assert out["ok"] and out["result"]["owner"] == "security-controller", out
    assert [p.name for p in core.tenants["blue"].tenant.network_policies] == ["tenant-internal-only"]
    before = state(core)
    mine = [{"name": "open", "podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]}]
    out = ask(api, BLUE_CI, "tenant.apply", yaml=blue_with(networkPolicies=mine, acls=ALLOW_WEB))
    assert out["ok"] is False and "spec.networkPolicies is owned by security-controller " \
        "(layer:networkPolicies); ask it, or an admin" in out["error"]
    assert state(core) == before  # the acls it also changed were not applied either
    # the tenant's own ACL layer beside it, and the owner's layer kept by an apply that leaves it out
    assert ask(api, BLUE_CI, "tenant.apply", yaml=blue_with(acls=ALLOW_WEB))["ok"]
    t = core.tenants["blue"].tenant
    assert [p.name for p in t.network_policies] == ["tenant-internal-only"] and len(t.acls) == 1
    # the owner may not touch the tenant's ACLs
    assert put(api, SEC_NP, "acls", [])["error"].startswith("permission denied: security-controller "
                                                            "(layer:networkPolicies) may not touch spec.acls")


@pytest.mark.parametrize("policy,field", [
    ({"name": "p", "podSelector": "x"}, "spec.networkPolicies[0].podSelector"),
    ({"name": "p"}, "spec.networkPolicies[0].podSelector"),
    ({"name": "p", "podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]},
     "spec.networkPolicies[0].ingress[0].ports[0].port"),
])
def test_an_invalid_network_policy_is_refused_naming_its_field_and_changes_nothing(api, policy, field):
    assert put(api, SEC_NP, "networkPolicies", DEFAULT_POLICY)["ok"]
    before = state(api.core)
    out = put(api, SEC_NP, "networkPolicies", [policy])
    assert out["ok"] is False and "spec.networkPolicies is invalid; nothing was changed" in out["error"]
    assert field in [e[0] for e in out["errors"]], out["errors"]
    assert state(api.core) == before


# the command line ---------------------------------------------------------------------------

def test_nvctl_layer_put_and_show(api, tmp_path, capsys):
    import threading
    from controller.client import cli
    server = ApiServer(api.core, str(tmp_path / "nvctl.sock"))  # root's socket, as nvctl finds it
    threading.Thread(target=server.serve_forever, daemon=True).start()
    f = tmp_path / "acls.yaml"
    f.write_text("acls:\n  - {priority: 100, direction: to-port, ports: [vm1], action: deny}\n")
    d = ["--state-dir", str(tmp_path)]
    assert cli.main(["layer", "put", "blue", "acls", "-f", str(f), "--expect-version", "0", *d]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tenant blue spec.acls at version 1\n") and "hv1:" in out
    assert cli.main(["layer", "show", "blue", "acls", *d]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tenant blue spec.acls: version 1, no owner; last written by root")
    assert "ports: [vm1]" in out
    assert cli.main(["layer", "show", "blue", "acls", "--json", *d]) == 0
    assert json.loads(capsys.readouterr().out)["content"][0]["ports"] == ["vm1"]
    assert cli.main(["layer", "put", "blue", "acls", "-f", str(f), "--expect-version", "0", *d]) == 1
    err = capsys.readouterr().err
    assert "spec.acls is at version 1, not 0" in err and "expect_version: the layer is at version 1" in err
    with pytest.raises(SystemExit):  # not a layer: argparse names the choices
        cli.main(["layer", "show", "blue", "ports", *d])
    assert "invalid choice: 'ports'" in capsys.readouterr().err
    server.sock.close()


def test_a_store_written_before_layers_had_owners_is_read_and_then_keeps_them(tmp_path):
    import sqlite3
    from controller.state.store import SqliteStore
    path = str(tmp_path / "old.db")
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE tenants (name TEXT PRIMARY KEY, doc TEXT NOT NULL, alloc TEXT NOT NULL, "
               "revision INTEGER NOT NULL)")
    db.execute("INSERT INTO tenants VALUES ('t', '{\"a\": 1}', '{}', 4)")
    db.commit()
    db.close()
    s = SqliteStore(path)
    assert (s.tenant("t").doc, s.tenant("t").revision, s.tenant("t").layers) == ({"a": 1}, 4, {})
    s.put_tenant("t", {"a": 2}, {}, 4, {"acls": {"version": 1, "owner": "sec"}})
    assert [(r.revision, r.layers) for r in s.tenants()] == [(5, {"acls": {"version": 1, "owner": "sec"}})]
    s.close()
