"""Faults: the controller or a host's vswitchd dying, a host gone, a controller killed
in the middle of a change, and two commands at once."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from scenarios.netutil import ping_many
from tests.integration.helpers import ROOT, apply_yaml, installed_cookies, nvctl, nvctl_json
from topology.builder import tenant_yaml

BLUE = open(os.path.join(ROOT, "examples", "blue.yaml")).read()
HOSTS = ("hv1", "hv2", "hv3")


@pytest.fixture(scope="module")
def blue(lab):
    apply_yaml(lab, BLUE, op="create")
    return {p["name"]: p for p in nvctl_json(lab, "tenant", "show", "blue")["ports"]}


def pings(blue, a, b, count=5):
    return ping_many([(blue[a]["namespace"], blue[b]["ip"], "x")], count=count)["x"]


def test_controller_sigkill_traffic_keeps_flowing_and_restart_sends_nothing(lab, blue):
    before = {h: installed_cookies(lab, h) for h in HOSTS}
    lab.stop_controller(signal.SIGKILL)
    try:
        assert pings(blue, "vm1", "vm3") == (5, 5)
    finally:
        lab.start_controller()
    for h in lab.wait_synced(30):
        assert h["last_sync_flow_mods"] == 0, h
    assert {h: installed_cookies(lab, h) for h in HOSTS} == before


def test_host_resync_repairs_flows_removed_by_hand(lab, blue):
    want = installed_cookies(lab, "hv2")
    gone = sorted(want)[:7]
    for c in gone:
        subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "del-flows", "br-int", f"cookie={c:#x}/-1"],
                       env=lab.ovs_env("hv2"), check=True, capture_output=True, timeout=30)
    assert len(installed_cookies(lab, "hv2")) == len(want) - 7
    r = nvctl_json(lab, "host", "resync", "hv2")
    assert r["flow_mods"] == 7, r
    assert installed_cookies(lab, "hv2") == want
    assert nvctl_json(lab, "host", "resync", "hv2")["flow_mods"] == 0


def _count(lab, host, what, mark) -> int:
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", what, "br-int"], capture_output=True, text=True,
                         env=lab.ovs_env(host), check=True).stdout
    return out.count(mark)


def _synced_again(lab, host: str, syncs: int, timeout: float = 30) -> list[dict]:
    """The hosts once `host`'s switch has connected again and been synced: until the
    controller has seen the old connection go (a loaded machine notices late), the old
    session still looks connected and in sync."""
    deadline = time.monotonic() + timeout
    while True:
        hosts = lab.wait_synced(timeout)
        if next(h for h in hosts if h["name"] == host)["syncs"] > syncs:
            return hosts
        assert time.monotonic() < deadline, f"{host} was not synced again within {timeout}s"
        time.sleep(0.1)


def _all_up(lab, tenant: str, timeout: float = 15) -> dict:
    """`tenant show` once every port is up: a workload plugged at start-up is up when OVS
    has told the controller about its port, a moment after the plugging is done."""
    deadline = time.monotonic() + timeout
    while True:
        shown = nvctl_json(lab, "tenant", "show", tenant)
        if all(p["up"] for p in shown["ports"]) or time.monotonic() > deadline:
            return shown
        time.sleep(0.2)


def test_a_restarted_vswitchd_gets_its_flows_back(lab, blue):
    want = installed_cookies(lab, "hv2")
    syncs = next(h for h in nvctl_json(lab, "hosts") if h["name"] == "hv2")["syncs"]
    assert lab.kill_vswitchd("hv2")
    t0 = time.monotonic()
    lab.start_vswitchd("hv2")
    hosts = _synced_again(lab, "hv2", syncs)
    recovered = time.monotonic() - t0
    print(f"\nhv2 vswitchd restarted: flows restored {recovered * 1000:.0f} ms after it started")
    assert installed_cookies(lab, "hv2") == want
    meters = _count(lab, "hv2", "dump-meters", "meter=")  # the ports' BUM meters come back too
    assert meters >= 1
    assert next(h for h in hosts if h["name"] == "hv2")["last_sync_flow_mods"] == len(want) + meters
    got, sent = pings(blue, "vm1", "vm2")
    assert got >= sent - 1, (got, sent)  # the first may go while OVS re-learns the peer's MAC


def test_a_host_that_is_gone_shows_its_ports_down_and_the_others_work(lab, blue):
    assert lab.kill_vswitchd("hv3")
    try:
        deadline = time.monotonic() + 20
        while True:
            shown = {p["name"]: p for p in nvctl_json(lab, "tenant", "show", "blue")["ports"]}
            if not shown["vm3"]["up"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert not shown["vm3"]["up"]
        assert all(shown[n]["up"] for n in ("vm1", "vm2", "vm4"))
        hosts = {h["name"]: h for h in nvctl_json(lab, "hosts")}
        assert not hosts["hv3"]["connected"] and hosts["hv1"]["connected"]
        assert pings(blue, "vm1", "vm2") == (5, 5)
    finally:
        lab.start_vswitchd("hv3")
    lab.wait_synced(30)
    assert pings(blue, "vm1", "vm3")[0] >= 4


def test_controller_killed_during_apply_leaves_old_or_new_and_flows_match(lab, blue):
    old_doc = tenant_yaml("bulk", "s", [(f"p{i}", f"10.0.0.{10 + i}", HOSTS[i % 3]) for i in range(4)])
    new_doc = tenant_yaml("bulk", "s", [(f"p{i}", f"10.0.0.{10 + i}", HOSTS[i % 3]) for i in range(40)])
    apply_yaml(lab, old_doc, op="create")
    old_rev = nvctl_json(lab, "tenant", "show", "bulk")["revision"]
    path = os.path.join(lab.dir, "bulk-new.yaml")
    with open(path, "w") as f:
        f.write(new_doc)
    proc = subprocess.Popen([sys.executable, "-m", "controller.client.cli", "--state-dir", lab.dir, "tenant", "apply",
                             "-f", path], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.6)  # attaching 36 workloads takes seconds: kill in the middle
    lab.stop_controller(signal.SIGKILL)
    proc.communicate(timeout=60)
    lab.start_controller()
    lab.wait_synced(60)
    shown = _all_up(lab, "bulk")
    n_ports = len(shown["spec"]["spec"]["ports"])
    print(f"\nkilled mid-apply: stored state has {n_ports} ports (revision {shown['revision']})")
    assert (shown["revision"], n_ports) in ((old_rev, 4), (old_rev + 1, 40))
    assert all(p["up"] for p in shown["ports"]), [p["name"] for p in shown["ports"] if not p["up"]]
    for h in HOSTS:
        flows = nvctl_json(lab, "flows", h)
        assert not flows["unexpected"] and all(f["installed"] for f in flows["flows"]), h
    nvctl(lab, "tenant", "delete", "bulk")


def test_two_commands_at_once_are_serialized(lab, blue):
    docs = [tenant_yaml("twin", "s", [("a", "10.0.0.11", "hv1")]),
            tenant_yaml("twin", "s", [("b", "10.0.0.12", "hv2")])]
    results = [None, None]

    def run(i, op):
        results[i] = apply_yaml(lab, docs[i], op=op, check=False)

    threads = [threading.Thread(target=run, args=(i, "create")) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 1], [(r.returncode, r.stderr) for r in results]
    assert any("already exists" in r.stderr for r in results)
    rev = nvctl_json(lab, "tenant", "show", "twin")["revision"]
    threads = [threading.Thread(target=run, args=(i, "apply")) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.returncode == 0 for r in results)
    shown = nvctl_json(lab, "tenant", "show", "twin")
    assert shown["revision"] == rev + 2  # both applied, one after the other
    assert [p["name"] for p in shown["spec"]["spec"]["ports"]] in (["a"], ["b"])  # never a mix
    nvctl(lab, "tenant", "delete", "twin")
