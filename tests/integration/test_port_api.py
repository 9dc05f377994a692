"""Ports that come and go, on real OVS: `nvctl port add` makes a workload that reaches its
switch at once, 50 adds from 50 processes get 50 distinct addresses, a full subnet is
refused with a clear error, and `port del` leaves nothing behind; labels given on the
command line show in `tenant show`."""
import json
import subprocess
import sys

import pytest

from tests.integration.conftest import running_lab
from tests.integration.helpers import ROOT, apply_yaml, in_ns, nvctl, nvctl_json, ping_many
from topology.builder import tenant_yaml

BLUE = tenant_yaml("blue", "web", [("vm1", "10.0.0.11", "hv1"), ("vm2", "10.0.0.12", "hv2")], cidr="10.0.0.0/26")


@pytest.fixture(scope="module")
def lab():
    yield from running_lab(hosts=2)


@pytest.fixture(scope="module")
def blue(lab):
    apply_yaml(lab, BLUE, op="create")
    return lab


def test_an_added_port_gets_a_workload_that_reaches_its_switch(blue):
    r = json.loads(nvctl(blue, "port", "add", "blue", "--switch", "web", "--host", "hv2", "--json").stdout)
    p = r["port"]
    assert (p["name"], p["ip"], p["host"]) == ("web-1", "10.0.0.1", "hv2")  # the lowest free address
    shown = {q["name"]: q for q in nvctl_json(blue, "tenant", "show", "blue")["ports"]}
    assert shown["web-1"]["up"] and shown["web-1"]["ip"] == "10.0.0.1"
    vm1 = shown["vm1"]
    got = ping_many([(vm1["namespace"], p["ip"], "vm1->web-1"), (p["namespace"], vm1["ip"], "web-1->vm1")])
    assert all(rx == tx for rx, tx in got.values()), got
    nvctl(blue, "port", "del", "blue/web-1")
    left = in_ns(vm1["namespace"], "ping", "-c", "1", "-W", "1", p["ip"])
    assert left.returncode != 0
    assert p["namespace"] not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_labels_from_the_command_line_are_shown_and_a_bad_one_is_named(blue):
    nvctl(blue, "port", "add", "blue", "--switch", "web", "--name", "lbl", "--no-workload",
          "--label", "app=web", "--label", "example.com/tier=front", "--label", "canary=")
    out = nvctl(blue, "tenant", "show", "blue").stdout
    row = next(line for line in out.splitlines() if line.strip().startswith("lbl "))
    assert row.split()[-1] == "app=web,canary=,example.com/tier=front", row
    assert "labels:" in out and "example.com/tier: front" in out  # in the spec too
    bad = nvctl(blue, "port", "add", "blue", "--switch", "web", "--label", "Tier=front end", check=False)
    assert bad.returncode != 0 and "labels.Tier" in bad.stderr and "'front end'" in bad.stderr, bad.stderr
    malformed = nvctl(blue, "port", "add", "blue", "--switch", "web", "--label", "app", check=False)
    assert malformed.returncode != 0 and "KEY=VALUE" in malformed.stderr
    nvctl(blue, "port", "del", "blue/lbl")


def test_fifty_adds_from_fifty_processes_get_fifty_addresses(blue):
    cmd = [sys.executable, "-m", "controller.client.cli", "--state-dir", blue.dir, "port", "add", "blue",
           "--switch", "web", "--no-workload", "--json"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(50)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs if e][:3]
    ports = [json.loads(o)["port"] for o, _ in outs]
    assert len({p["ip"] for p in ports}) == 50 and len({p["name"] for p in ports}) == 50
    assert len({(p["host"], p["ofport"]) for p in ports}) == 50
    # the /26 has 62 host addresses, less the last (DHCP and DNS answer there, no router):
    # vm1, vm2 and these 50 leave 9
    for _ in range(61 - 52):
        nvctl(blue, "port", "add", "blue", "--switch", "web", "--no-workload")
    full = nvctl(blue, "port", "add", "blue", "--switch", "web", "--no-workload", check=False)
    assert full.returncode != 0
    assert "no free address" in full.stderr + full.stdout and "10.0.0.0/26" in full.stderr + full.stdout
    shown = nvctl_json(blue, "tenant", "show", "blue")["ports"]
    assert len([q for q in shown if q["name"].startswith("web-")]) == 59
    # the YAML applied again keeps them (they are the API's), and a restart too
    apply_yaml(blue, BLUE)
    blue.stop_controller()
    blue.start_controller()
    blue.wait_synced(60)
    assert len(nvctl_json(blue, "tenant", "show", "blue")["ports"]) == 61

