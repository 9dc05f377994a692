"""Network policies on real OVS conntrack, with real TCP and UDP: a labelled port added
at run time gets the policy its labels select, relabelling changes what reaches it,
and `nvctl verify` passes over the installed flows."""
import os

import pytest

from scenarios.netutil import TcpServer, tcp_connect
from tests.integration.helpers import ROOT, apply_yaml, nvctl, nvctl_json

pytestmark = pytest.mark.integration

SHOP = open(os.path.join(ROOT, "examples", "shop.yaml")).read() \
    .replace("{name: web, cidr: 10.0.0.0/24}", "{name: web, cidr: 10.0.0.0/24, labels: {tier: web}}") \
    .replace("{name: db, cidr: 10.0.1.0/24}", "{name: db, cidr: 10.0.1.0/24, labels: {tier: db}}") \
    .replace("host: hv1}", "host: hv1, labels: {app: fe}}", 1) \
    .replace("ip: 10.0.1.10, host: hv2}", "ip: 10.0.1.10, host: hv2, labels: {app: pg}}")
POLICIES = """  networkPolicies:
    - name: db-from-fe
      namespace: db
      podSelector: {matchLabels: {app: pg}}
      ingress:
        - from: [{namespaceSelector: {matchLabels: {tier: web}}, podSelector: {matchLabels: {app: fe}}}]
          ports: [{protocol: TCP, port: 5432}]
"""


def with_policies(text: str) -> str:
    return SHOP.replace("  ports:\n", text + "  ports:\n", 1)


@pytest.fixture(scope="module")
def shop(lab):
    apply_yaml(lab, with_policies(POLICIES), op="create")
    ports = {p["name"]: p for p in nvctl_json(lab, "tenant", "show", "shop")["ports"]}
    servers = [TcpServer(ports["db1"]["namespace"], 5432), TcpServer(ports["db1"]["namespace"], 22)]
    try:
        yield ports
    finally:
        for s in servers:
            s.stop()
        nvctl(lab, "tenant", "delete", "shop", check=False)


def test_only_labelled_frontends_reach_the_database_port(lab, shop):
    assert tcp_connect(shop["web1"]["namespace"], shop["db1"]["ip"], 5432) == "connected"
    assert tcp_connect(shop["web1"]["namespace"], shop["db1"]["ip"], 22) == "timeout"
    assert tcp_connect(shop["web2"]["namespace"], shop["db1"]["ip"], 5432) == "timeout"  # no app=fe
    assert tcp_connect(shop["db2"]["namespace"], shop["db1"]["ip"], 5432) == "timeout"


def test_a_port_added_with_a_label_gets_the_policy_and_relabelling_takes_it_away(lab, shop):
    nvctl(lab, "port", "add", "shop", "--name", "web3", "--switch", "web", "--host", "hv2", "--label", "app=fe")
    try:
        web3 = {p["name"]: p for p in nvctl_json(lab, "tenant", "show", "shop")["ports"]}["web3"]
        assert web3["labels"] == {"app": "fe"}
        ns = web3["namespace"]
        assert tcp_connect(ns, shop["db1"]["ip"], 5432) == "connected"
        nvctl(lab, "port", "label", "shop/web3", "app=batch")
        assert tcp_connect(ns, shop["db1"]["ip"], 5432) == "timeout"
    finally:
        nvctl(lab, "port", "del", "shop/web3", check=False)


def test_verify_passes_with_policies(lab, shop):
    res = nvctl(lab, "verify", "--json", check=False)
    assert res.returncode == 0, res.stdout[-2000:]


def test_verify_catches_a_hand_made_flow_that_lets_what_the_policies_deny_through(lab, shop):
    """Above db1's ingress rules, a flow (made with ovs-ofctl) that sends every new
    connection on to the commit table: web2 (not app=fe) really connects, and verify
    reports the leak with the hand-made flow as the deciding one; `nvctl hosts` undoes it."""
    import json
    import subprocess
    rows = nvctl_json(lab, "flows", "hv2")["flows"]
    deny = next(r["flow"] for r in rows if r["tenant"] == "shop" and r["table"] == "policy_in"
                and "actions=drop" in r["flow"] and ",priority=1," in r["flow"])
    commit = next(r["flow"] for r in rows if r["tenant"] == "shop" and r["table"] == "policy_in_commit")
    table = deny.split("table=")[1].split(",")[0]
    to = commit.split("table=")[1].split(",")[0]
    match = deny.split(",priority=1,")[1].split(",actions=")[0]
    p = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "add-flow", "br-int",
                        f"table={table},priority=63500,{match},actions=goto_table:{to}"],
                       capture_output=True, text=True, env=lab.ovs_env("hv2"), timeout=30)
    assert p.returncode == 0, p.stderr
    try:
        assert tcp_connect(shop["web2"]["namespace"], shop["db1"]["ip"], 5432) == "connected"
        res = nvctl(lab, "verify", "--json", check=False)
        assert res.returncode == 1, res.stdout[-2000:]
        leaks = [v for v in json.loads(res.stdout)["violations"] if v["kind"] == "policy_leak"]
        assert {v["message"].split(" (")[0] for v in leaks} >= {
            "a new connection from web2", "a new connection from db2"}, res.stdout[-3000:]
        for v in leaks:
            assert v["cookie"] == "0x0" and "db1's Ingress policies do not allow it" in v["message"], v
            assert v["path"][-1]["table"] == "deliver" and v["path"][-1]["host"] == "hv2"
    finally:
        assert all(h["in_sync"] for h in nvctl_json(lab, "hosts"))
    assert tcp_connect(shop["web2"]["namespace"], shop["db1"]["ip"], 5432) == "timeout"
    assert nvctl(lab, "verify", check=False).returncode == 0
