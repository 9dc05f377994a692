"""Verify before install on real switches: a controller with a planted compiler bug
(tests/planted.py: a port named planted* gets a flow to another tenant's port) refuses
the change that would install it, with the counterexample, and nothing reaches any
switch, the store or the workloads; a clean change through the same controller passes;
`nvctl verify --watch` shows both."""
import json
import subprocess
import sys
import time

import pytest

from scenarios.netutil import ping_many
from tests.integration.helpers import ROOT, apply_yaml, installed_cookies, nvctl, nvctl_json
from topology.builder import tenant_yaml

pytestmark = pytest.mark.integration
HOSTS = ("hv1", "hv2", "hv3")
PORTS = [("p1", "10.0.0.11", "hv1"), ("p2", "10.0.0.12", "hv2")]


@pytest.fixture(scope="module")
def twins(lab):
    for name in ("twin-a", "twin-b"):
        apply_yaml(lab, tenant_yaml(name, "s", PORTS), op="create")
    lab.wait_synced(60)
    yield {n: nvctl_json(lab, "tenant", "show", n) for n in ("twin-a", "twin-b")}
    for name in ("twin-a", "twin-b"):
        nvctl(lab, "tenant", "delete", name, check=False)


@pytest.fixture
def planted_controller(lab, twins):
    """The lab's controller, restarted with the planted bug aimed at twin-b's p1 on hv1;
    the plain one again afterwards, whatever happened."""
    victim = next(p for p in twins["twin-b"]["ports"] if p["name"] == "p1")
    assert victim["host"] == "hv1"
    lab.stop_controller()
    try:
        lab.start_controller(preamble="import tests.planted", env={"NVCTL_PLANT": f"hv1:{victim['ofport']}"})
        lab.wait_synced(60)
        yield victim
    finally:
        lab.stop_controller()
        lab.start_controller()
        lab.wait_synced(60)


def namespaces() -> set:
    return set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())


def test_a_change_verify_refuses_installs_nothing(lab, twins, planted_controller):
    before = {h: installed_cookies(lab, h) for h in HOSTS}
    rev = nvctl_json(lab, "tenant", "show", "twin-a")["revision"]
    spaces = namespaces()
    watch = subprocess.Popen([sys.executable, "-m", "controller.client.cli", "--state-dir", lab.dir,
                              "verify", "--watch", "--json", "--interval", "0.2"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        time.sleep(1.0)  # its first poll: what follows is new
        p = nvctl(lab, "port", "add", "twin-a", "--switch", "s", "--name", "planted1", "--host", "hv1",
                  check=False)
        assert p.returncode != 0, p.stdout
        err = p.stderr + p.stdout
        assert "would break isolation" in err and "nothing was changed" in err, err
        assert "isolation_port" in err and "planted: a compiler bug" in err, err  # the counterexample's flow
        assert "twin-b" not in err and "(another tenant)" in err, err
        # nothing installed on any switch, nothing stored, no workload plugged
        assert {h: installed_cookies(lab, h) for h in HOSTS} == before
        show = nvctl_json(lab, "tenant", "show", "twin-a")
        assert show["revision"] == rev and [q["name"] for q in show["ports"]] == ["p1", "p2"]
        assert namespaces() == spaces
        # the same controller lets a clean change through, proved
        r = nvctl_json(lab, "port", "add", "twin-a", "--switch", "s", "--name", "p3", "--host", "hv3")
        assert r["verified"]["result"] == "ok", r
        lab.wait_synced(60)
        time.sleep(0.6)
    finally:
        watch.terminate()
        out, _err = watch.communicate(timeout=10)
    seen = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    mine = [(e["tenant"], e["result"]) for e in seen if e["tenant"] == "twin-a"]
    assert ("twin-a", "refused") in mine and mine[-1] == ("twin-a", "ok"), seen
    refused = next(e for e in seen if e["result"] == "refused")
    assert refused["violations"][0]["kind"] == "isolation_port" and "twin-b" in refused["violations"][0]["tenants"]
    # the installed flows prove clean, and both twins still carry traffic
    v = json.loads(nvctl(lab, "verify", "--json", check=False).stdout)
    assert v["ok"], v["text"]
    a = {q["name"]: q for q in nvctl_json(lab, "tenant", "show", "twin-a")["ports"]}
    b = {q["name"]: q for q in nvctl_json(lab, "tenant", "show", "twin-b")["ports"]}
    got = ping_many([(a["p1"]["namespace"], a["p2"]["ip"], "a"), (b["p1"]["namespace"], b["p2"]["ip"], "b"),
                      (a["p3"]["namespace"], a["p1"]["ip"], "a3")], count=3)
    assert got == {"a": (3, 3), "b": (3, 3), "a3": (3, 3)}, got
    nvctl(lab, "port", "del", "twin-a/p3")
