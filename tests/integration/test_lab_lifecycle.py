"""The lab itself: a failed up leaves nothing, down is idempotent, labs run side by side."""
import os

import pytest
from pyroute2 import netns

from scenarios.lab import Lab, LabError, _gone
from tests.integration.conftest import make_lab
from tests.integration.helpers import apply_yaml, nvctl_json, ping_many
from tests.unit.fixtures import tenant_yaml


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

    def host_then_fail(plan):
        real_host(plan)
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
