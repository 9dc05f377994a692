"""Two controllers, one tenant's policy: the example security controller
(examples/security-controller/, its own process and credential, layer:networkPolicies,
over the network API's TLS) owns every tenant's networkPolicies layer; the tenant's own
credential, in another process, manages the rest of its spec and its acls layer with
nvctl. Each one's attempt on the other's layer is refused and found in the audit trail;
the owner's layer survives the tenant's applies and a controller restart; the tenant's
ACL layer acts on real packets."""
import json
import os
import subprocess
import sys

import pytest

from controller.client.api import call
from tests.integration.helpers import ROOT, nvctl, nvctl_json, ping_many
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

EXAMPLE = os.path.join(ROOT, "examples", "security-controller")
BLUE = open(os.path.join(ROOT, "examples", "blue.yaml")).read()
OTHER_POLICY = """  networkPolicies:
    - {name: mine, podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 0.0.0.0/0}}]}]}
"""
DENY_VM2 = "- {priority: 100, direction: to-port, ports: [vm2], action: deny}\n"


def in_mgmt(lab, *cmd, check=False, timeout=120, popen=False):
    """A process of its own on the management network (the controller's namespace),
    reaching the controller only over its network API with the credential it names."""
    argv = ["ip", "netns", "exec", lab.ctl_ns, sys.executable, *cmd]
    env = {**os.environ, "PYTHONPATH": ROOT}
    if popen:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}): {p.stderr}{p.stdout}")
    return p


def tenant_nvctl(lab, cred, *args, check=False):
    return in_mgmt(lab, "-m", "controller.client.cli", "--credential", cred, *args, check=check)


def security_controller(lab, cred, *args, **kw):
    return in_mgmt(lab, os.path.join(EXAMPLE, "security_controller.py"), "--credential", cred, *args, **kw)


def layer(lab, tenant, name):
    return call(lab.api_path, "layer.show", tenant=tenant, layer=name)


@pytest.fixture(scope="module")
def creds(lab, tmp_path_factory):
    d = tmp_path_factory.mktemp("creds")
    out = {}
    for name, role in (("security-controller", "layer:networkPolicies"), ("blue-ci", "tenant:blue")):
        path = str(d / f"{name}.cred")
        p = nvctl(lab, "credential", "issue", name, "--role", role, "-o", path)
        assert f"credential {name} ({role}) written to {path}" in p.stdout
        out[name] = path
    nvctl(lab, "tenant", "create", "-f", os.path.join(ROOT, "examples", "blue.yaml"))
    return out


def test_the_security_controller_keeps_its_layer_on_every_tenant_even_new_ones(lab, creds):
    sec = creds["security-controller"]
    proc = security_controller(lab, sec, "--interval", "1", popen=True)
    try:
        wait_for("blue's networkPolicies owned", lambda: layer(lab, "blue", "networkPolicies")["owner"])
        nvctl(lab, "tenant", "create", "-f", os.path.join(ROOT, "examples", "red.yaml"))  # a tenant appears
        red = wait_for("red's networkPolicies owned", lambda: (lambda r: r if r["owner"] else None)(
            layer(lab, "red", "networkPolicies")))
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert (red["owner"], red["owner_role"], red["version"]) == ("security-controller", "layer:networkPolicies", 1)
    assert [p["name"] for p in red["content"]] == ["tenant-internal-only"]
    assert "blue: spec.networkPolicies written: version 1, owner security-controller" in out
    # another round changes nothing: the controller answers unchanged, no new version
    once = security_controller(lab, sec, "--once")
    assert once.returncode == 0, once.stdout + once.stderr
    assert "blue: spec.networkPolicies unchanged at version 1" in once.stdout
    assert "red: spec.networkPolicies unchanged at version 1" in once.stdout
    # the policy allows the tenant's own ports: blue still reaches itself
    ports = {p["name"]: p for p in nvctl_json(lab, "tenant", "show", "blue")["ports"]}
    got = ping_many([(ports["vm1"]["namespace"], ports["vm2"]["ip"], "1-2"),
                     (ports["vm1"]["namespace"], ports["vm3"]["ip"], "1-3")], count=2)
    assert got == {"1-2": (2, 2), "1-3": (2, 2)}


def test_the_tenant_cannot_change_the_owned_layer_but_keeps_it_and_writes_its_own(lab, creds, tmp_path):
    blue = creds["blue-ci"]
    changed = tmp_path / "blue-own-policy.yaml"
    changed.write_text(BLUE.replace("  ports:\n", OTHER_POLICY + "  ports:\n", 1))
    refused = tenant_nvctl(lab, blue, "tenant", "apply", "-f", str(changed))
    assert refused.returncode == 1
    assert ("spec.networkPolicies is owned by security-controller (layer:networkPolicies); ask it, or an admin"
            in refused.stderr), refused.stderr
    assert [p["name"] for p in layer(lab, "blue", "networkPolicies")["content"]] == ["tenant-internal-only"]
    # the tenant's YAML without the section: applied, the owner's policies kept
    tenant_nvctl(lab, blue, "tenant", "apply", "-f", os.path.join(ROOT, "examples", "blue.yaml"), check=True)
    kept = layer(lab, "blue", "networkPolicies")
    assert kept["version"] == 1 and [p["name"] for p in kept["content"]] == ["tenant-internal-only"]
    # the tenant's own layer, written alone: on the wire, a deny in front of vm2
    acls = tmp_path / "acls.yaml"
    acls.write_text(DENY_VM2)
    put = tenant_nvctl(lab, blue, "layer", "put", "blue", "acls", "-f", str(acls), "--expect-version", "0", check=True)
    assert "tenant blue spec.acls at version 1" in put.stdout, put.stdout
    shown = json.loads(tenant_nvctl(lab, blue, "layer", "show", "blue", "acls", "--json", check=True).stdout)
    assert (shown["version"], shown["owner"], shown["content"][0]["ports"]) == (1, None, ["vm2"])
    ports = {p["name"]: p for p in nvctl_json(lab, "tenant", "show", "blue")["ports"]}
    got = ping_many([(ports["vm1"]["namespace"], ports["vm2"]["ip"], "1-2"),
                     (ports["vm1"]["namespace"], ports["vm3"]["ip"], "1-3")], count=2)
    assert got == {"1-2": (0, 2), "1-3": (2, 2)}
    # a stale version is refused and changes nothing
    stale = tenant_nvctl(lab, blue, "layer", "put", "blue", "acls", "-f", str(acls), "--expect-version", "0")
    assert stale.returncode == 1 and "spec.acls is at version 1, not 0" in stale.stderr


def test_the_security_controller_cannot_touch_the_tenants_layer(lab, creds):
    before = layer(lab, "blue", "acls")
    p = security_controller(lab, creds["security-controller"], "--layer", "acls", "--once")
    assert p.returncode == 1
    assert ("blue: spec.acls refused: permission denied: security-controller (layer:networkPolicies) may not "
            "touch spec.acls") in p.stdout, p.stdout
    assert layer(lab, "blue", "acls") == before


def test_each_refusal_is_in_the_audit_trail_and_ownership_survives_a_restart(lab, creds):
    rows = nvctl_json(lab, "audit", "--last", "500")
    refused = [(e["who"], e["op"], e["scope"], e["result"]) for e in rows if e["result"].startswith("refused")]
    assert any(w == "blue-ci" and op == "tenant.apply" and scope == "tenant:blue"
               and "owned by security-controller (layer:networkPolicies)" in r for w, op, scope, r in refused), refused
    assert any(w == "security-controller" and op == "layer.put" and scope == "tenant:blue"
               and "may not touch spec.acls" in r for w, op, scope, r in refused), refused
    # the tenant reads its own refusal over the network; it sees nothing of the other's
    mine = json.loads(tenant_nvctl(lab, creds["blue-ci"], "audit", "--json", check=True).stdout)
    assert {e["who"] for e in mine} == {"blue-ci"}
    assert any(e["op"] == "tenant.apply" and e["result"].startswith("refused") for e in mine)
    # the human-readable trail says the same
    text = nvctl(lab, "audit", "--last", "500").stdout
    assert "security-controller" in text and "refused: permission denied: security-controller" in text
    # the owner is stored with the tenant: a restarted controller still refuses the tenant
    lab.stop_controller()
    lab.start_controller()
    lab.wait_synced(60)
    assert layer(lab, "blue", "networkPolicies")["owner"] == "security-controller"
    again = tenant_nvctl(lab, creds["blue-ci"], "layer", "put", "blue", "networkPolicies", "-f", "/dev/null")
    assert again.returncode == 1 and "owned by security-controller" in again.stderr, again.stderr
