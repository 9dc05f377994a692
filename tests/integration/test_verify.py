"""`nvctl verify` on real switches: clean on twin tenants with every feature; each leak
made by hand with ovs-ofctl is caught with a counterexample; `nvctl hosts` undoes it."""
import json
import os
import re
import subprocess

import pytest

from tests.integration.helpers import ROOT, apply_yaml, nvctl, nvctl_json

TWINS = {n: open(os.path.join(ROOT, "examples", "twins", f"{n}.yaml")).read() for n in ("twin-a", "twin-b")}


@pytest.fixture(scope="module")
def twins(lab):
    for name in ("twin-a", "twin-b"):
        apply_yaml(lab, TWINS[name], op="create")
    lab.wait_synced(60)
    return {n: nvctl_json(lab, "tenant", "show", n) for n in TWINS}


def ofctl(lab, host, *args):
    p = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", *args], capture_output=True, text=True,
                       env=lab.ovs_env(host), timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout


def verify(lab, *args):
    p = nvctl(lab, "verify", "--json", *args, check=False)
    assert p.returncode in (0, 1), f"verify could not run ({p.returncode}): {p.stderr}{p.stdout}"
    return p.returncode, json.loads(p.stdout)


def port(t, name):
    return next(p for p in t["ports"] if p["name"] == name)


def desired_flow(lab, host, tenant, table, contains):
    rows = nvctl_json(lab, "flows", host)["flows"]
    return next(r["flow"] for r in rows if r["tenant"] == tenant and r["table"] == table and contains in r["flow"])


def repaired(lab):
    """`nvctl hosts` re-reads every switch and puts the desired flows back."""
    hosts = nvctl_json(lab, "hosts")
    assert all(h["in_sync"] for h in hosts), hosts
    rc, r = verify(lab)
    assert rc == 0 and r["ok"], r["text"]


def test_twins_with_every_feature_verify_clean(lab, twins):
    rc, r = verify(lab)
    assert rc == 0 and r["ok"] and r["violations"] == [], r["text"]
    assert r["checked"]["port_starts"] == 14 and r["flows_read"] > 400, r["checked"]
    p = nvctl(lab, "verify", "--tenant", "twin-a", check=False)
    assert p.returncode == 0 and "verify: OK" in p.stdout


def test_a_flow_sending_one_twins_packets_to_the_others_port_is_caught(lab, twins):
    a, b = port(twins["twin-a"], "web1"), port(twins["twin-b"], "web1")
    assert a["host"] == b["host"] == "hv1"
    ofctl(lab, "hv1", "add-flow", "br-int", f"table=0,priority=300,in_port={a['ofport']},actions=output:{b['ofport']}")
    rc, r = verify(lab)
    leak = [v for v in r["violations"] if v["kind"] == "isolation_port"]
    assert rc == 1 and leak, r["text"]
    assert leak[0]["tenants"] == ["twin-a", "twin-b"] and leak[0]["in_port"] == a["ofport"]
    assert leak[0]["cookie"] == "0x0" and f"output:{b['ofport']}" in leak[0]["flow"]
    assert leak[0]["path"][-1]["rule"].endswith("not made by the controller")
    repaired(lab)


def test_a_flow_rewriting_one_twins_traffic_to_the_others_vni_is_caught(lab, twins):
    vni_a, vni_b = twins["twin-a"]["ids"]["vni"]["web"], twins["twin-b"]["ids"]["vni"]["web"]
    mig = port(twins["twin-a"], "mig1")  # on hv2: web1's traffic to it is tunnelled
    remote = desired_flow(lab, "hv1", "twin-a", "dispatch", f"is on {mig['host']}" and f"->tun_id")
    identity = remote.split(",actions=")[0]
    evil = identity.replace("priority=100", "priority=250") + \
        f",actions=set_field:{vni_b}->tun_id,set_field:192.0.2.12->tun_dst,output:1"
    ofctl(lab, "hv1", "add-flow", "br-int", evil)
    rc, r = verify(lab)
    leak = [v for v in r["violations"] if v["kind"] == "isolation_vni"]
    assert rc == 1 and leak, r["text"]
    assert leak[0]["tenants"] == ["twin-a", "twin-b"] and str(vni_b) in leak[0]["message"], leak[0]
    assert vni_a != vni_b
    repaired(lab)


def test_one_twins_lb_reply_replaced_by_the_others_is_caught(lab, twins):
    """The old bug, made by hand: twin-a's lb_reply flow on hv1 given twin-b's actions
    (its conntrack zone), as OVS did when both had the same (table, priority, match)."""
    a = desired_flow(lab, "hv1", "twin-a", "lb_reply", "tcp_src=8080")
    b_zone = desired_flow(lab, "hv1", "twin-b", "lb_reply", "tcp_src=8080").split("zone=")[1].split(",")[0]
    identity, actions = a.split(",actions=")
    ofctl(lab, "hv1", "mod-flows", "--strict", "br-int", f"{identity},actions={re.sub(r'zone=[0-9]+', 'zone=' + b_zone, actions)}")
    rc, r = verify(lab)
    shared = [v for v in r["violations"] if v["kind"] == "shared_zone"]
    assert rc == 1 and shared and shared[0]["tenants"] == ["twin-a", "twin-b"], r["text"]
    assert "differs from the controller's" in shared[0]["path"][-1]["rule"]
    repaired(lab)


def test_snat_to_the_other_twins_address_is_caught(lab, twins):
    snat = desired_flow(lab, "hv1", "twin-a", "ext_snat", "nat(src=203.0.113.20)")
    ofctl(lab, "hv1", "mod-flows", "--strict", "br-int", snat.replace("203.0.113.20", "203.0.113.30"))
    rc, r = verify(lab)
    out = [v for v in r["violations"] if v["kind"] == "isolation_external"]
    assert rc == 1 and out and out[0]["tenants"][0] == "twin-a", r["text"]
    assert "203.0.113.30" in out[0]["message"] and out[0]["host"] == "hv1", out[0]
    repaired(lab)


def test_verify_of_an_unknown_tenant_is_an_error(lab, twins):
    p = nvctl(lab, "verify", "--tenant", "nobody", check=False)
    assert p.returncode == 2 and "no tenant 'nobody'" in p.stderr
