"""Who may do what (controller.server.access), through the one dispatcher the unix socket
and the network API share: roles decided from the operations' declared scope, a
tenant's view of another tenant word for word the view of a tenant that does not exist,
credentials kept as hashes, revocation and expiry, the audit trail, throttling."""
import json
import time

import pytest

from controller.server.access import (ROOT, Authenticator, Principal, Throttle, check_role, decide, digest,
                                      parse_token)
from controller.server.api import ApiServer
from controller.server.errors import ApiError
from controller.server.ops import OPS
from tests.unit.fixtures import BLUE, RED, tenant_yaml

BLUE_CI = Principal("blue-ci", "tenant:blue", "token", "198.51.100.11")
RED_CI = Principal("red-ci", "tenant:red", "token", "198.51.100.12")
HV1 = Principal("hv1", "host:hv1", "token", "198.51.100.11")
VIEWER = Principal("dash", "viewer", "token")


@pytest.fixture
def api(core, tmp_path):
    core.create(BLUE)
    core.create(RED)
    s = ApiServer(core, str(tmp_path / "api.sock"))
    yield s
    s.sock.close()


def ask(api, who, op, **args):
    return api.dispatch(op, args, "rid-" + op, principal=who)


# the reads a tenant credential may make of its own tenant, with arguments naming TENANT
READS = {
    "tenant.show": {"name": "TENANT"},
    "port.info": {"tenant": "TENANT", "port": "vm1"},
    "port.attachment": {"tenant": "TENANT", "port": "vm1"},
    "switch.info": {"tenant": "TENANT", "switch": "web"},
    "trace": {"tenant": "TENANT", "port": "vm1", "packet": "icmp to 10.0.0.12"},
    "verify": {"tenant": "TENANT"},
    "verify.changes": {"tenant": "TENANT"},
    "stats": {"tenant": "TENANT"},
    "drops": {"tenant": "TENANT"},
    "logs": {"tenant": "TENANT"},
    "progress": {"tenant": "TENANT"},
    "audit.list": {"tenant": "TENANT"},
    "layer.show": {"tenant": "TENANT", "layer": "acls"},
}


def with_tenant(args: dict, name: str) -> dict:
    return {k: (name if v == "TENANT" else v) for k, v in args.items()}


def test_every_tenant_scoped_read_is_listed():
    reads = {n for n, op in OPS.items() if op.scope == "tenant" and op.kind == "read" and op.scope_arg != "yaml"}
    assert reads == set(READS), "a new tenant read: add it to READS so its hiding is checked"


@pytest.mark.parametrize("op", sorted(READS))
def test_another_tenant_is_answered_as_one_that_does_not_exist(api, op):
    """blue's credential asking about red gets, word for word, what anyone gets asking
    about a tenant that does not exist (with the name in it): no existence leak."""
    about_red = ask(api, BLUE_CI, op, **with_tenant(READS[op], "red"))
    about_ghost = ask(api, ROOT, op, **with_tenant(READS[op], "ghost"))
    assert json.dumps(about_red).replace("'red'", "'X'") == json.dumps(about_ghost).replace("'ghost'", "'X'")
    # and its own tenant is answered (not refused), differently
    own = ask(api, BLUE_CI, op, **with_tenant(READS[op], "blue"))
    assert own != about_red and "permission denied" not in str(own.get("error"))


def test_nothing_of_red_in_what_blue_is_told(api):
    for op, args in READS.items():
        out = json.dumps(ask(api, BLUE_CI, op, **with_tenant(args, "red")))
        assert "app" not in out and "02:00:00:00:0e:04" not in out, (op, out)  # red's switch, red's MAC


@pytest.mark.parametrize("op,args", [
    ("tenant.delete", {"name": "red"}),
    ("tenant.apply", {"yaml": RED}),
    ("tenant.create", {"yaml": tenant_yaml("ghost", "web", [("a", "10.0.0.5", "hv1")])}),
    ("tenant.validate", {"yaml": RED}),
    ("port.add", {"tenant": "red", "switch": "app"}),
    ("port.add", {"tenant": "ghost", "switch": "app"}),
    ("port.del", {"tenant": "red", "port": "vm1"}),
    ("port.migrate", {"tenant": "red", "port": "vm1", "to": "hv3"}),
    ("ipam.hold", {"tenant": "red", "switch": "app"}),
])
def test_a_change_naming_another_tenant_is_refused_alike_whether_it_exists_or_not(api, op, args):
    before = {n: (e.revision, e.tenant.ports) for n, e in api.core.tenants.items()}
    out = ask(api, BLUE_CI, op, **args)
    assert out["ok"] is False and out["error"].startswith("permission denied")
    assert "red" not in out["error"] and "ghost" not in out["error"]
    assert {n: (e.revision, e.tenant.ports) for n, e in api.core.tenants.items()} == before


def test_a_tenant_lists_and_verifies_only_its_own(api):
    rows = ask(api, BLUE_CI, "tenant.list")["result"]
    assert [r["name"] for r in rows] == ["blue"]
    assert [r["name"] for r in ask(api, ROOT, "tenant.list")["result"]] == ["blue", "red"]
    v = ask(api, BLUE_CI, "verify")  # no switch is connected: every tenant's ports drop (a violation each)
    assert v["ok"] and '"red"' not in json.dumps(v["result"])
    assert {t for x in v["result"]["violations"] for t in x["tenants"]} == {"blue"}
    everyone = ask(api, ROOT, "verify")["result"]
    assert {t for x in everyone["violations"] for t in x["tenants"]} == {"blue", "red"}


def test_a_tenant_changes_its_own(api):
    out = ask(api, BLUE_CI, "port.add", tenant="blue", switch="web", host="hv2")
    assert out["ok"], out
    assert any(p.name == out["result"]["port"]["name"] for p in api.core.tenants["blue"].tenant.ports)


@pytest.mark.parametrize("op,args", [("host.list", {}), ("flows", {"host": "hv1"}), ("metrics", {}),
                                     ("host.resync", {"name": "hv1"}), ("credential.list", {}),
                                     ("credential.issue", {"name": "x", "role": "admin"})])
def test_a_tenant_is_refused_the_cluster(api, op, args):
    out = ask(api, BLUE_CI, op, **args)
    assert out["ok"] is False and out["error"].startswith("permission denied")


def test_a_viewer_reads_everything_and_changes_nothing(api):
    assert ask(api, VIEWER, "tenant.show", name="red")["ok"]
    assert ask(api, VIEWER, "host.list")["ok"]
    for op, args in (("tenant.delete", {"name": "red"}), ("credential.list", {}), ("audit.list", {}),
                     ("port.del", {"tenant": "red", "port": "vm1"})):
        out = ask(api, VIEWER, op, **args)
        assert out["error"].startswith("permission denied"), op
    assert "red" in api.core.tenants


def test_a_host_adds_and_removes_ports_on_itself_only(api):
    refused = ask(api, HV1, "port.add", tenant="blue", switch="web", host="hv2", name="c1")
    assert refused["error"].startswith("permission denied") and "hv2" not in refused["error"]
    assert ask(api, HV1, "port.add", tenant="blue", switch="web", name="c1")["error"].startswith("permission denied")
    ok = ask(api, HV1, "port.add", tenant="blue", switch="web", host="hv1", name="c1", workload=False)
    assert ok["ok"], ok
    # blue/vm2 is on hv2: neither its attachment nor its removal
    for op in ("port.attachment", "port.del", "port.info"):
        assert ask(api, HV1, op, tenant="blue", port="vm2")["error"].startswith("permission denied"), op
    assert ask(api, HV1, "port.attachment", tenant="blue", port="c1")["ok"]
    assert ask(api, HV1, "port.del", tenant="blue", port="c1")["ok"]
    for op, args in (("host.resync", {"name": "hv2"}), ("flows", {"host": "hv2"}), ("tenant.list", {}),
                     ("tenant.delete", {"name": "blue"})):
        assert ask(api, HV1, op, **args)["error"].startswith("permission denied"), op


def test_every_request_is_in_the_audit_trail_refused_ones_too(api):
    ask(api, BLUE_CI, "tenant.show", name="red")
    ask(api, BLUE_CI, "tenant.delete", name="red")
    ask(api, BLUE_CI, "tenant.show", name="blue")
    ask(api, ROOT, "no.such.op")
    api.core.audit_trail.flush()
    rows = api.core.store.audit_entries(10)
    got = [(r["who"], r["op"], r["scope"], r["result"].split(":")[0]) for r in rows]
    assert got == [("blue-ci", "tenant.show", "tenant:red", "refused"),
                   ("blue-ci", "tenant.delete", "tenant:red", "refused"),
                   ("blue-ci", "tenant.show", "tenant:blue", "ok"),
                   ("root", "no.such.op", "", "failed")]
    assert all(r["request_id"] for r in rows[:3])
    # a tenant reads the requests its own credentials made, nothing else
    mine = ask(api, BLUE_CI, "audit.list")["result"]
    assert {r["who"] for r in mine} == {"blue-ci"} and len(mine) >= 3
    assert ask(api, RED_CI, "audit.list")["result"] == []


# credentials ---------------------------------------------------------------------------

def test_a_credential_is_a_token_the_store_keeps_only_as_a_hash(core):
    r = core.credential_issue("blue-ci", "tenant:blue", None)
    name, secret = parse_token(r["token"])
    assert name == "blue-ci"
    stored = core.store.credentials()["blue-ci"]
    assert secret not in json.dumps(stored) and stored["hash"] == digest(secret)
    p, _ = core.authenticator.token(r["token"], "1.2.3.4")
    assert p == Principal("blue-ci", "tenant:blue", "token", "1.2.3.4")


def test_a_token_with_one_character_changed_or_revoked_or_expired_is_refused(core):
    tok = core.credential_issue("blue-ci", "tenant:blue", None)["token"]
    for i in (len("nvctl1."), len(tok) - 1, len(tok) // 2 + 5):  # in the name, at the end, in the middle
        bad = tok[:i] + ("A" if tok[i] != "A" else "B") + tok[i + 1:]
        assert core.authenticator.token(bad, None)[0] is None
    assert core.authenticator.token("", None) == (None, "no credential")
    core.credential_revoke("blue-ci")
    p, why = core.authenticator.token(tok, None)
    assert p is None and "revoked" in why
    short = core.credential_issue("brief", "viewer", 1.0)["token"]
    assert core.authenticator.token(short, None)[0] is not None
    core.authenticator.clock = lambda: time.time() + 2
    assert "expired" in core.authenticator.token(short, None)[1]


def test_a_revocation_on_another_member_holds_within_the_cache_time(core):
    """Two members share the store, not a cache: the other reads the revocation within
    CACHE_SECONDS."""
    tok = core.credential_issue("blue-ci", "tenant:blue", None)["token"]
    other = Authenticator(core.store)
    assert other.token(tok, None)[0] is not None
    core.credential_revoke("blue-ci")
    time.sleep(0.6)
    assert other.token(tok, None)[0] is None


@pytest.mark.parametrize("name,role,field", [("Blue", "admin", "name"), ("x", "tenant:", "role"),
                                             ("x", "root", "role"), ("x", "tenant:Blue", "role")])
def test_a_bad_credential_request_names_the_field(core, name, role, field):
    with pytest.raises(ApiError) as e:
        core.credential_issue(name, role, None)
    assert e.value.errors[0][0] == field
    assert core.store.credentials() == {}


def test_roles():
    assert check_role("tenant:blue") == "tenant:blue" and check_role("host:hv-1") == "host:hv-1"
    d = decide(BLUE_CI, OPS["verify"], {"tenant": None, "host": None})
    assert d.allow and d.args["tenant"] == "blue"
    assert decide(BLUE_CI, OPS["ping"], {}).allow


def test_failed_authentication_is_slowed_down_per_address():
    t = Throttle()
    delays = [t.failed("10.0.0.1") for _ in range(9)]
    assert delays[:5] == [0.0] * 5 and delays[5:] == sorted(delays[5:]) and delays[-1] > delays[5] > 0
    assert t.failed("10.0.0.2") == 0.0
