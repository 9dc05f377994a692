"""A 3-controller lab on a 3-member etcd cluster: one leader (master on every switch, the
others slave), SIGKILL of the leader under a 10 ms ping, a deposed leader refused by
the switches themselves, an etcd member lost, a change sent during a failover made
exactly once, and a full stop and start that sends nothing (the fixture's teardown)."""
import json
import os
import signal
import subprocess
import time

import pytest

from controller.transport.framing import request as _request
from tests.integration.conftest import running_lab
from tests.integration.helpers import Measured, apply_yaml, in_ns, nvctl, nvctl_json
from topology.builder import tenant_yaml

MEASURED = Measured()


def tenant(name):
    return tenant_yaml(name, "web", [("vm1", "10.0.0.11", "hv1"), ("vm2", "10.0.0.12", "hv2")])


@pytest.fixture(scope="module")
def lab():
    yield from running_lab(hosts=2, controllers=3)


@pytest.fixture(scope="module")
def cluster(lab):
    apply_yaml(lab, tenant("blue"), op="create")
    return lab


def status(lab):
    return nvctl_json(lab, "controller", "status")


def leader_of(lab, timeout=20, not_=None):
    """The leader's name once there is exactly one (and it is not `not_`)."""
    deadline = time.monotonic() + timeout
    while True:
        st = status(lab)
        leaders = [m["name"] for m in st["members"] if m["role"] == "leader"]
        if len(leaders) == 1 and leaders[0] != not_:
            return leaders[0], st
        assert time.monotonic() < deadline, st
        time.sleep(0.2)


def roles(st):
    return {h["name"]: {c["member"]: c["role"] for c in h["connections"] if c["connected"]} for h in st["hosts"]}


def roles_become(lab, want, timeout=20):
    """Wait until every host's OVSDB reports these roles (OVS refreshes the Controller
    table's status every few seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        st = status(lab)
        if all(r == want for r in roles(st).values()):
            return st
        assert time.monotonic() < deadline, roles(st)
        time.sleep(0.5)


def member_api(lab, name):
    return next(m["api"] for m in lab.member_plans() if m["name"] == name)


def port_ns(lab, t, p):
    return {x["name"]: x for x in nvctl_json(lab, "tenant", "show", t)["ports"]}[p]["namespace"]


def test_one_leader_is_master_on_every_switch_and_the_others_are_slaves(cluster):
    leader, st = leader_of(cluster)
    assert sorted(m["name"] for m in st["members"]) == ["ctl1", "ctl2", "ctl3"]
    assert all(m["pid"] == cluster.member_pid(m["name"]) for m in st["members"])
    assert [e["healthy"] for e in st["etcd"]] == [True] * 3 and all(e["pid"] for e in st["etcd"])
    roles_become(cluster, {n: ("master" if n == leader else "slave") for n in ("ctl1", "ctl2", "ctl3")})
    text = nvctl(cluster, "controller", "status").stdout
    assert f"leader: {leader}" in text and text.count(" follower ") == 2


def ping_during(lab, src_ns, dst_ip, count, action, after=1.0):
    """ping every 10 ms while `action` runs `after` seconds in; (sent, received)."""
    p = subprocess.Popen(["ip", "netns", "exec", src_ns, "ping", "-i", "0.01", "-c", str(count), "-W", "1",
                          dst_ip], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(after)
    action()
    out, _ = p.communicate(timeout=count * 0.05 + 30)
    line = next(x for x in out.splitlines() if "packets transmitted" in x)
    sent, got = int(line.split()[0]), int(line.split()[3])
    return sent, got


@pytest.mark.measures
def test_sigkill_of_the_leader_keeps_pings_flowing_and_the_new_leader_sends_nothing(cluster):
    old, _ = leader_of(cluster)
    new = {}

    def kill_and_wait():
        cluster.kill_member(old, signal.SIGKILL)
        new["name"], new["status"] = leader_of(cluster, not_=old)
    sent, got = ping_during(cluster, port_ns(cluster, "blue", "vm1"), "10.0.0.12", 700, kill_and_wait)
    MEASURED.record("pings across the failover", (sent, got))
    assert sent == 700 and got > 0, f"{got} of {sent} pings answered across the failover"
    hosts = nvctl_json(cluster, "hosts")
    assert all(h["in_sync"] and h["last_sync_flow_mods"] == 0 for h in hosts), hosts  # a diff: nothing changed
    # the new leader is master, the other survivor slave; the dead one is gone from the switches
    roles_become(cluster, {n: ("master" if n == new["name"] else "slave")
                           for n in ("ctl1", "ctl2", "ctl3") if n != old})
    cluster.start_members([old])  # it comes back as a follower
    leader, st = leader_of(cluster)
    assert leader == new["name"] and {m["name"] for m in st["members"]} == {"ctl1", "ctl2", "ctl3"}


@pytest.mark.slo
def test_slo_sigkill_of_the_leader_loses_none_of_700_pings_at_10_ms():
    sent, got = MEASURED.read("pings across the failover")
    assert got == sent, f"{sent - got} of {sent} pings lost across the failover (SLO: none)"


def test_a_deposed_leader_is_refused_by_the_switches(cluster):
    old, _ = leader_of(cluster)
    pid = cluster.member_pid(old)
    os.kill(pid, signal.SIGSTOP)  # cut off: its lease runs out, another is elected
    try:
        new, _ = leader_of(cluster, not_=old)
    finally:
        os.kill(pid, signal.SIGCONT)
    # at once, before it notices: OVS itself refuses it (the new leader's generation is newer)
    probe = _request(member_api(cluster, old), {"op": "member.probe", "args": {"host": "hv1"}}, 30)["result"]
    assert "type=11 code=0" in probe["role_error"], probe  # OFPET_ROLE_REQUEST_FAILED, OFPRRFC_STALE
    assert probe["flow_mod"].startswith("refused") and "code=10" in probe["flow_mod"], probe  # OFPBRC_IS_SLAVE
    deadline = time.monotonic() + 10
    log = os.path.join(next(m["state_dir"] for m in cluster.member_plans() if m["name"] == old), "controller.log")
    while "stepping down" not in open(log).read():
        assert time.monotonic() < deadline, "the deposed leader never said it stepped down"
        time.sleep(0.2)
    settle(cluster)


def settle(lab, quiet=4.0, timeout=60):
    """Wait for one leader that stays (no election for `quiet` s) with every host in sync."""
    deadline = time.monotonic() + timeout
    seen, since = None, time.monotonic()
    while True:
        st = status(lab)
        now = (st["leader"], st["generation"])
        if now != seen:
            seen, since = now, time.monotonic()
        elif st["leader"] and time.monotonic() - since >= quiet and \
                all(h["connected"] and h["in_sync"] for h in nvctl_json(lab, "hosts")):
            return st["leader"]
        assert time.monotonic() < deadline, f"no stable leader in {timeout}s: {now}"
        time.sleep(0.5)


def test_writes_go_on_with_an_etcd_member_killed(cluster):
    # a member that is not etcd's raft leader: killing that one costs etcd an election of its
    # own, during which leases may lapse and the controllers elect again (README)
    victim = next(e["name"] for e in status(cluster)["etcd"] if e["healthy"] and not e["raft_leader"])
    etcd = cluster.etcd()
    etcd.kill(victim, signal.SIGKILL)
    try:
        apply_yaml(cluster, tenant("red"), op="create")
        assert nvctl_json(cluster, "tenant", "show", "red")["revision"] == 1
        st = status(cluster)
        assert [e["healthy"] for e in st["etcd"]].count(False) == 1
        got = in_ns(port_ns(cluster, "red", "vm1"), "ping", "-c", "2", "-W", "2", "10.0.0.12")
        assert " 0% packet loss" in got.stdout
    finally:
        etcd.start([victim])


def test_a_change_sent_during_a_failover_is_made_exactly_once(cluster, tmp_path):
    old, _ = leader_of(cluster)
    path = tmp_path / "green.yaml"
    path.write_text(tenant("green"))
    cluster.kill_member(old, signal.SIGKILL)
    t0 = time.monotonic()
    r = nvctl(cluster, "tenant", "create", "-f", str(path), "--json")  # waits for the new leader
    took = time.monotonic() - t0
    assert json.loads(r.stdout)["action"] == "created", r.stdout
    show = nvctl_json(cluster, "tenant", "show", "green")
    assert show["revision"] == 1 and all(h["installed"] for h in show["hosts"].values()), show
    # the same request again (a client retrying after its answer was lost): not made twice
    new, _ = leader_of(cluster)
    req = {"op": "tenant.apply", "args": {"yaml": tenant("green").replace("10.0.0.12", "10.0.0.13")}, "id": "r-1"}
    first = _request(member_api(cluster, new), req, 60)
    again = _request(member_api(cluster, new), req, 60)
    assert first["ok"] and first["result"]["action"] == "updated"
    assert again["ok"] and again["result"]["retried"], again
    assert nvctl_json(cluster, "tenant", "show", "green")["revision"] == 2
    cluster.start_members([old])
    print(f"tenant create across a leader's SIGKILL took {took:.1f}s")


def _log_time(line: str) -> float:
    from datetime import datetime
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _first(path: str, text: str, after: float) -> float | None:
    for line in open(path, errors="replace"):
        if text in line and line[:4].isdigit() and _log_time(line) >= after:
            return _log_time(line)
    return None


def test_a_leader_cut_off_from_etcd_steps_down_before_another_is_elected(cluster):
    leader, _ = leader_of(cluster)
    if leader == "ctl1":  # ctl1's namespace holds the management bridge: hand leadership on first
        cluster.kill_member("ctl1", signal.SIGTERM)  # a clean stop gives the lease back at once
        leader, _ = leader_of(cluster, not_="ctl1")
        cluster.start_members(["ctl1"])
    m = next(m for m in cluster.member_plans() if m["name"] == leader)
    t0 = time.time()
    subprocess.run(["ip", "-n", m["netns"], "link", "set", "mgmt0", "down"], check=True)
    try:
        new, _ = leader_of(cluster, not_=leader)
    finally:
        subprocess.run(["ip", "-n", m["netns"], "link", "set", "mgmt0", "up"], check=True)
    logs = {p["name"]: os.path.join(p["state_dir"], "controller.log") for p in cluster.member_plans()}
    stepped = _first(logs[leader], "stepping down: cut off from etcd", t0)
    elected = _first(logs[new], "elected leader", t0)
    assert stepped is not None and elected is not None
    assert stepped < elected, f"{leader} stepped down {stepped - t0:.2f}s after the cut, {new} led at {elected - t0:.2f}s"
    deadline = time.monotonic() + 30  # it comes back as a follower, and the hosts are in sync again
    while not all(h["connected"] and h["in_sync"] for h in nvctl_json(cluster, "hosts")):
        assert time.monotonic() < deadline
        time.sleep(0.5)
