"""The lab itself: a failed up leaves nothing, down is idempotent, labs run side by side;
lab up and tenant create report their progress on stderr, plain lines when it is not a
terminal."""
import json
import os
import re
import tempfile

import pytest
from pyroute2 import netns

from scenarios.lab import Lab, LabError, _gone
from tests.integration.conftest import make_lab
from tests.integration.helpers import apply_yaml, nvctl, nvctl_json, ping_many
from topology.builder import tenant_yaml


def lab_namespaces(lab: Lab) -> list[str]:
    return [n for n in netns.listnetns() if n.startswith(lab.prefix)]


def test_a_failed_up_removes_everything_it_made_and_down_is_idempotent():
    lab = make_lab()
    started = []
    real_start_ovs = lab.start_ovs

    def start_ovs_and_remember(name):
        real_start_ovs(name)
        d = lab.host_dir(name)
        started.extend(int(open(f"{d}/{p}.pid").read()) for p in ("ovsdb-server", "ovs-vswitchd"))

    real_host = lab._host

    def host_then_fail(plan, *step):
        real_host(plan, *step)
        if plan.index == 2:
            raise RuntimeError("injected failure while bringing up hv2")

    lab.start_ovs, lab._host = start_ovs_and_remember, host_then_fail
    try:
        with pytest.raises(RuntimeError, match="injected failure"):
            lab.up(hosts=3)
        assert len(started) == 4  # hv1 and hv2 had their OVS started before the failure
        assert all(_gone(pid) for pid in started), "OVS processes survived the failed up"
        assert lab_namespaces(lab) == []
        assert not os.path.exists(lab.dir)
        assert lab.down(quiet=True) == []  # nothing left to do, and no error
        assert lab.status()["status"] == "down"
    finally:
        lab.down(quiet=True)


def test_up_refuses_a_second_lab_in_the_same_state_dir():
    lab = make_lab()
    try:
        lab.up(hosts=1)
        with pytest.raises(LabError, match="already exists"):
            Lab(lab.dir, log=lambda *a: None).up(hosts=1)
        assert lab.status()["status"] == "up"
    finally:
        lab.down(quiet=True)
    assert lab_namespaces(lab) == []


def test_two_labs_side_by_side_with_the_same_tenant():
    a, b = make_lab(), make_lab()
    assert a.prefix != b.prefix
    doc = tenant_yaml("blue", "web", [("vm1", "10.0.0.11", "hv1"), ("vm2", "10.0.0.12", "hv2")])
    try:
        a.up(hosts=2)
        b.up(hosts=2)
        for lab in (a, b):
            apply_yaml(lab, doc, op="create")
        for lab in (a, b):
            ports = {p["name"]: p for p in nvctl_json(lab, "tenant", "show", "blue")["ports"]}
            assert ports["vm1"]["namespace"].startswith(lab.prefix)
            res = ping_many([(ports["vm1"]["namespace"], "10.0.0.12", "x")])
            assert res["x"] == (3, 3), lab.prefix
        a.down(quiet=True)
        assert lab_namespaces(a) == [] and len(lab_namespaces(b)) > 0  # b untouched
        ports = {p["name"]: p for p in nvctl_json(b, "tenant", "show", "blue")["ports"]}
        assert ping_many([(ports["vm1"]["namespace"], "10.0.0.12", "x")])["x"] == (3, 3)
    finally:
        a.down(quiet=True)
        b.down(quiet=True)
    assert lab_namespaces(a) == [] and lab_namespaces(b) == []


def test_lab_up_and_a_30_port_tenant_create_show_plain_progress_on_a_pipe():
    lab = make_lab()
    ports = [(f"vm{i}", f"10.0.0.{10 + i}", f"hv{1 + i % 2}") for i in range(1, 31)]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(tenant_yaml("big", "web", ports))
    try:
        up = nvctl(lab, "lab", "up", "--hosts", "2", "--json", timeout=180)  # stdout, stderr: pipes
        assert json.loads(up.stdout)["status"] == "up"  # the lab's lines went to stderr, not into the JSON
        steps = [ln for ln in up.stderr.splitlines() if ln.startswith("lab up: ")]
        assert [re.sub(r"PA \S+, br-int dpid \S+", "PA, dpid", ln) for ln in steps] == [
            "lab up: hv1: OVS up, PA, dpid (1/2)", "lab up: hv2: OVS up, PA, dpid (2/2)",
            "lab up: hosts registered 2/2", "lab up: hosts connected and in sync 2/2",
            "lab up: underlay warmed 2/2"], up.stderr
        assert "\x1b[" not in up.stderr  # no terminal drawing on a pipe

        p = nvctl(lab, "tenant", "create", "-f", f.name, "--json", timeout=180)
        r = json.loads(p.stdout)
        assert r["action"] == "created" and sorted(r["hosts"]) == ["hv1", "hv2"] and not r["attach_errors"]
        lines = p.stderr.splitlines()
        plugged = [re.fullmatch(r"tenant create: big: workloads plugged (\d+)/(\d+)", ln) for ln in lines]
        counts = [int(m.group(1)) for m in plugged if m]
        assert counts and {m.group(2) for m in plugged if m} == {"30"}, p.stderr
        assert counts == sorted(counts) and counts[-1] == 30 and len(counts) <= 10, p.stderr  # ends 30/30
        assert lines[-1] == "tenant create: big: hosts synced 2/2", p.stderr
        assert len(lines) == len(counts) + 1, p.stderr  # nothing else: no line per poll
        shown = nvctl_json(lab, "tenant", "show", "big")
        assert len(shown["ports"]) == 30 and all(q["up"] for q in shown["ports"])  # 30 really plugged
    finally:
        os.unlink(f.name)
        lab.down(quiet=True)
    assert lab_namespaces(lab) == []
