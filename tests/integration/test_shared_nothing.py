"""Machines that share nothing but the network (`nvctl lab up --isolated`): 3 controller
members and 2 hypervisors, each in its own network and mount namespace, the hosts joined
with `host invite`/`host join` through different members; an operator on a machine of
its own holding only a credential file; a podman container on a joined hypervisor
attached by nvctl-cni with the host's credential; an interface plugged by hand with
only an iface-id; hostile clients refused and audited; the leader killed mid-way."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from scenarios.machines import INSIDE
from tep import workload
from tep.driver import host_ifname
from tests.integration.conftest import running_lab
from tests.integration.helpers import ROOT
from tests.integration.test_cni import PLUGIN, Podman, pings_overheard
from topology.builder import tenant_yaml

CLIENT = os.path.join(os.path.dirname(__file__), "netclient.py")


def twin(name: str) -> str:
    """blue and red: the same switch, CIDR, port names, addresses and MACs."""
    return tenant_yaml(name, "web", [("vm1", "10.0.0.11", "hv1", "02:00:00:00:01:11"),
                                     ("vm2", "10.0.0.12", "hv2", "02:00:00:00:01:12")])


@pytest.fixture(scope="module")
def iso():
    yield from running_lab(2, controllers=3, isolated=True)


@pytest.fixture(scope="module")
def op(iso):
    return iso.add_operator()


def nv(mach, cred: str, *args, check=True, timeout=120) -> subprocess.CompletedProcess:
    """`nvctl --credential CRED ARGS` run inside machine `mach`."""
    p = mach.run([sys.executable, "-m", "controller.client.cli", "--credential", cred, *args],
                 capture_output=True, text=True, timeout=timeout, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    if check and p.returncode != 0:
        raise AssertionError(f"nvctl {' '.join(args)} on {mach.name}: {p.returncode}\n{p.stderr}{p.stdout}")
    return p


def nvj(mach, cred, *args):
    return json.loads(nv(mach, cred, *args, "--json").stdout)


ADMIN = f"{INSIDE}/etc/admin.cred"


def raw(mach, *requests) -> list[dict]:
    """Requests made by hand (tests/integration/netclient.py) from inside a machine."""
    p = mach.run([sys.executable, CLIENT, json.dumps(list(requests))], capture_output=True, text=True,
                 timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def hand_plug(lab, tenant: str, port: str, ip: str, mac: str, host: str) -> str:
    """A workload namespace plugged into `host`'s br-int by hand, from inside that host's
    machine, with external_ids:iface-id=TENANT/PORT and nothing else (no ofport_request)."""
    ns, ifname = f"{lab.prefix}{tenant}.{port}", host_ifname(tenant, port)
    workload.create_workload(ns, lab.host_ns(host), ifname, ip, 24, mac, None, 1450)
    r = lab.machine(host).run(["ovs-vsctl", f"--db=unix:{INSIDE}/ovs/db.sock", "--", "--may-exist", "add-port",
                               "br-int", ifname, "--", "set", "interface", ifname,
                               f"external_ids:iface-id={tenant}/{port}"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return ns


def ping(ns: str, ip: str, count: int = 3, size: int = 56) -> bool:
    r = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", str(count), "-i", "0.2", "-W", "2", "-s", str(size),
                        ip], capture_output=True, text=True, timeout=60)
    return r.returncode == 0


def test_nothing_is_shared_but_the_network(iso, op):
    # the operator's machine sees its own directory and an empty lab directory
    seen = op.run(["sh", "-c", f"ls -A {iso.dir} && ls {INSIDE}/etc"], capture_output=True, text=True)
    assert seen.returncode == 0 and seen.stdout.split() == ["admin.cred"], seen
    for name in ("hv1", "hv2", "ctl1", "ctl2", "ctl3"):
        r = iso.machine(name).run(["ls", "-A", iso.dir], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout == "", (name, r)  # the lab's directory is there, and empty
        assert os.listdir(iso.dir), "outside the machines the lab's directory is not empty"
    assert not os.path.exists(os.path.join(iso.dir, "members.json"))
    # each joined host keeps its own host credential, naming every member
    for name in ("hv1", "hv2"):
        path = iso.machine(name).outside(f"{INSIDE}/etc/host.cred")
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        cred = json.load(open(path))
        assert cred["role"] == f"host:{name}" and len(cred["servers"]) == 3
    # and the hosts joined through different members
    hosts = {h["name"]: h for h in nvj(op, ADMIN, "hosts")}
    assert hosts["hv1"]["connected"] and hosts["hv2"]["connected"]


@pytest.fixture(scope="module")
def twins(iso, op):
    for t in ("blue", "red"):
        with open(iso.machine("op").outside(f"{INSIDE}/etc/{t}.yaml"), "w") as f:
            f.write(twin(t))
        out = nv(op, ADMIN, "tenant", "create", "-f", f"{INSIDE}/etc/{t}.yaml").stdout
        assert f"tenant {t} created" in out
    # vm1 of each twin plugged by hand on hv1, with only its iface-id
    return {t: hand_plug(iso, t, "vm1", "10.0.0.11", "02:00:00:00:01:11", "hv1") for t in ("blue", "red")}


def port_state(op, tenant: str, port: str) -> dict:
    return {p["name"]: p for p in nvj(op, ADMIN, "tenant", "show", tenant)["ports"]}[port]


def wait_up(op, tenant: str, port: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        p = port_state(op, tenant, port)
        if p["up"] or time.monotonic() > deadline:
            return p
        time.sleep(0.3)


def test_an_interface_plugged_by_hand_with_only_an_iface_id_is_bound(iso, op, twins):
    for t in ("blue", "red"):
        assert wait_up(op, t, "vm1")["up"], t
    # the same iface-id on the wrong host is not bound: blue/vm2 belongs on hv2
    stray = hand_plug(iso, "blue", "vm2", "10.0.0.12", "02:00:00:00:01:12", "hv1")
    try:
        time.sleep(2)
        p = port_state(op, "blue", "vm2")
        assert not p["up"] and p["host"] == "hv2"
        assert not ping(twins["blue"], "10.0.0.12", count=2)
    finally:
        iso.machine("hv1").run(["ovs-vsctl", f"--db=unix:{INSIDE}/ovs/db.sock", "--if-exists", "del-port",
                                host_ifname("blue", "vm2")], capture_output=True, timeout=30)
        workload.delete_workload(stray, iso.host_ns("hv1"), host_ifname("blue", "vm2"))


@pytest.fixture(scope="module")
def podman(iso, twins, tmp_path_factory):
    """podman inside hv2's machine, its CNI networks naming the host credential there."""
    hv2 = iso.machine("hv2")

    class InMachine(Podman):
        def __call__(self, *args, check=True, timeout=60):
            env = {**os.environ, "CONTAINERS_CONF": os.path.join(self.base, "containers.conf")}
            p = hv2.run(["podman", "--root", f"{self.base}/storage", "--runroot", f"{self.base}/run", *args],
                        capture_output=True, text=True, env=env, timeout=timeout)
            if check and p.returncode != 0:
                raise AssertionError(f"podman {' '.join(args)}: {p.stderr}{p.stdout}")
            return p

    pm = InMachine(tmp_path_factory.mktemp("podman"), iso)
    for t in ("blue", "red"):
        with open(os.path.join(pm.base, "net", f"{t}-web.conflist"), "w") as f:
            json.dump({"cniVersion": "1.0.0", "name": f"{t}-web", "plugins": [
                {"type": "nvctl-cni", "tenant": t, "switch": "web", "credential": f"{INSIDE}/etc/host.cred",
                 "ovsdb": f"unix:{INSIDE}/ovs/db.sock"}]}, f)
    try:
        yield pm
    finally:
        pm.close()


def test_a_podman_container_on_a_joined_host_is_attached_over_the_network(iso, op, twins, podman):
    assert os.path.exists(PLUGIN)
    podman.run("cblue", "blue-web")
    podman.run("cred", "red-web")
    ports = {t: [p for p in nvj(op, ADMIN, "tenant", "show", t)["ports"] if p["madeBy"] == "cni"]
             for t in ("blue", "red")}
    (b,), (r,) = ports["blue"], ports["red"]
    assert b["host"] == r["host"] == "hv2" and b["ip"] == r["ip"]  # twins: the same address
    assert wait_up(op, "blue", b["name"])["up"]
    # blue's container reaches blue's vm1 on hv1; red's vm1 (same CA, same MAC) never hears it
    assert pings_overheard(podman, "cblue", "10.0.0.11", twins["red"], probe=733) == 0
    # the plugin asked as host hv2: the audit trail says so
    audit = nvj(op, ADMIN, "audit", "--last", "500")
    assert any(e["who"] == "host-hv2" and e["op"] == "port.add" and e["result"] == "ok" for e in audit)


def test_hostile_clients_are_refused_change_nothing_reveal_nothing_and_are_audited(iso, op, twins):
    for name, role in (("blue-ci", "tenant:blue"), ("gone", "viewer")):
        nv(op, ADMIN, "credential", "issue", name, "--role", role, "-o", f"{INSIDE}/etc/{name}.cred")
    blue = f"{INSIDE}/etc/blue-ci.cred"
    red_before = nvj(op, ADMIN, "tenant", "show", "red")
    # tenant blue's credential against red: reading it answers as for a tenant that does not exist
    for args in (["tenant", "show", "{t}"], ["verify", "--tenant", "{t}"], ["trace", "{t}/vm1", "icmp to 10.0.0.12"],
                 ["stats", "{t}"]):
        about_red = nv(op, blue, *[a.format(t="red") for a in args], check=False)
        about_ghost = nv(op, blue, *[a.format(t="ghost") for a in args], check=False)
        assert about_red.returncode == about_ghost.returncode != 0, args
        assert about_red.stderr.replace("red", "X") == about_ghost.stderr.replace("ghost", "X"), args
    # changing, deleting or adding a port to red: refused the same way whether red exists or not
    for args in (["tenant", "delete", "red"], ["port", "add", "red", "--switch", "web"],
                 ["port", "migrate", "red/vm1", "--to", "hv2"], ["tenant", "apply", "-f", f"{INSIDE}/etc/red.yaml"]):
        out = nv(op, blue, *args, check=False)
        assert out.returncode == 1 and "permission denied" in out.stderr, (args, out.stderr)
        assert "02:00" not in out.stderr and "10.0.0" not in out.stderr
    assert [t["name"] for t in nvj(op, blue, "tenant", "list")] == ["blue"]
    # a host's credential: a port on another host
    hv1 = iso.machine("hv1")
    out = nv(hv1, f"{INSIDE}/etc/host.cred", "port", "add", "blue", "--switch", "web", "--host", "hv2", check=False)
    assert out.returncode == 1 and "permission denied" in out.stderr
    # ... or reporting another host's interfaces (its own it may)
    report = {"interfaces": [{"name": "tap9", "ofport": 40, "iface_id": "blue/vm2"}], "complete": False}
    other, own = raw(hv1, {"what": "other", "credential": f"{INSIDE}/etc/host.cred", "op": "host.interfaces",
                           "args": {"host": "hv2", **report}},
                     {"what": "own", "credential": f"{INSIDE}/etc/host.cred", "op": "host.interfaces",
                      "args": {"host": "hv1", "interfaces": [], "complete": False}})
    assert other["status"] == 403 and own["status"] == 200, (other, own)
    assert not port_state(op, "blue", "vm2")["up"]
    # no credential, a token with one character changed, a revoked one, another CA's certificate, plain HTTP
    nv(op, ADMIN, "credential", "revoke", "gone")
    time.sleep(1.0)
    got = raw(op, {"what": "no-token", "credential": ADMIN, "op": "tenant.list"},
              {"what": "one-char", "credential": blue, "op": "tenant.list", "mangle": True},
              {"what": "revoked", "credential": f"{INSIDE}/etc/gone.cred", "op": "tenant.list"},
              {"what": "foreign-ca", "credential": ADMIN, "op": "tenant.list", "foreign_cert": True},
              {"what": "plain-http", "credential": ADMIN, "op": "tenant.list", "plain": True})
    by = {g["what"]: g for g in got}
    for what in ("no-token", "one-char", "revoked"):
        assert by[what]["status"] == 401 and "result" not in by[what]["answer"], by[what]
    assert by["foreign-ca"]["status"] is None and by["foreign-ca"]["error"], by["foreign-ca"]
    assert by["plain-http"]["status"] is None and by["plain-http"]["bytes"] == 0, by["plain-http"]
    # nothing changed
    assert nvj(op, ADMIN, "tenant", "show", "red")["revision"] == red_before["revision"]
    # every one of them in the audit trail, refused
    audit = nvj(op, ADMIN, "audit", "--last", "1000")
    refused = [e for e in audit if e["result"].startswith("refused")]
    assert sum(e["who"] == "blue-ci" and e["scope"] == "tenant:red" for e in refused) >= 8
    assert any(e["who"] == "host-hv1" and e["op"] == "port.add" for e in refused)
    assert any(e["who"] == "host-hv1" and e["op"] == "host.interfaces" and e["scope"] == "host:hv2" for e in refused)
    assert sum(e["who"] == "(unauthenticated)" for e in refused) >= 3
    assert any("revoked" in e["result"] for e in refused) and any("no credential" in e["result"] for e in refused)
    assert sum(e["op"] == "(handshake)" for e in refused) >= 2  # another CA's certificate, plain HTTP
    # a tenant reads only what its own credentials did
    mine = nvj(op, blue, "audit", "--last", "1000")
    assert mine and {e["who"] for e in mine} == {"blue-ci"}


def test_the_leader_killed_mid_way_and_the_operators_next_command_works(iso, op, twins):
    leader = nvj(op, ADMIN, "controller", "status")["leader"]
    iso.kill_member(leader)
    t0 = time.monotonic()
    out = nv(op, ADMIN, "port", "add", "blue", "--switch", "web", "--name", "after", "--host", "hv1", "--no-workload")
    assert "after" in out.stdout
    took = time.monotonic() - t0
    st = nvj(op, ADMIN, "controller", "status")
    assert st["leader"] not in (None, leader), st
    assert "after" in [p["name"] for p in nvj(op, ADMIN, "tenant", "show", "blue")["ports"]]
    print(f"failover: the operator's change after killing {leader} took {took:.1f} s")
    iso.start_members([leader])  # back, as a follower, for the module's end (restart and verify)
