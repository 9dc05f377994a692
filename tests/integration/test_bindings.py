"""Ports bound by `external_ids:iface-id` wherever OVS numbers them, on real OVS: an
interface plugged by hand with only an iface-id (no ofport_request) on its port's host
carries the port's traffic; the same iface-id plugged on another host is seen there, not
bound, and changes no flow; an interface OVS numbers otherwise than the allocation takes
the allocation along, on its own host only; and one that goes leaves its port down."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from controller.client.api import call
from tests.integration.conftest import running_lab, verify_lab
from tests.integration.helpers import apply_yaml, in_ns, nvctl_json, ping_many

MAC = "02:00:0a:07:00:0c"
TENANT = f"""
apiVersion: nvctl/v1
kind: Tenant
metadata: {{name: hand}}
spec:
  switches: [{{name: s, cidr: 10.7.0.0/24}}]
  ports:
    - {{name: vm1, switch: s, ip: 10.7.0.11, host: hv1}}
    - {{name: byhand, switch: s, ip: 10.7.0.12, host: hv2, mac: "{MAC}", workload: false}}
"""


@pytest.fixture(scope="module")
def lab():
    yield from running_lab(hosts=2)


@pytest.fixture(scope="module")
def hand(lab):
    apply_yaml(lab, TENANT, op="create")
    return lab


def run(*cmd) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout.strip()


def vsctl(lab, host: str, *args) -> str:
    return run("ovs-vsctl", f"--db=unix:{lab.host_dir(host)}/db.sock", *args)


class Plugged:
    """Interfaces this test plugs into hosts' br-int by hand, as someone else's agent
    would: a veth whose far end is eth0 of a namespace of our own (named apart from the
    lab's, which its controller collects), with only an iface-id in OVSDB. Everything
    made is removed by `remove`, whatever state it got to."""

    def __init__(self, lab):
        self.lab, self.made = lab, []  # (host, host-side ifname, namespace)

    def plug(self, host: str, iface_id: str, ip: str | None = None, *set_extra: str) -> tuple[str, str]:
        tag = f"{os.getpid() % 100000}{len(self.made)}"
        ifname, ns = f"hb{tag}", f"nvbind-{tag}"
        hostns = self.lab.host_ns(host)
        self.made.append((host, ifname, ns))
        run("ip", "netns", "add", ns)
        run("ip", "-n", hostns, "link", "add", ifname, "mtu", "1500", "type", "veth", "peer", "name", "eth0",
            "netns", ns)
        run("ip", "-n", ns, "link", "set", "eth0", "address", MAC, "mtu", "1400")
        if ip:
            run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        in_ns(ns, "ethtool", "-K", "eth0", "tx", "off")  # the userspace datapath and TCP checksums
        run("ip", "-n", hostns, "link", "set", ifname, "up")
        vsctl(self.lab, host, "add-port", "br-int", ifname, "--", "set", "interface", ifname,
              f"external_ids:iface-id={iface_id}", *set_extra)
        return ifname, ns

    def unplug(self, host: str, ifname: str) -> None:
        vsctl(self.lab, host, "--if-exists", "del-port", "br-int", ifname)

    def remove(self) -> None:
        for host, ifname, ns in self.made:
            subprocess.run(["ovs-vsctl", f"--db=unix:{self.lab.host_dir(host)}/db.sock", "--if-exists", "del-port",
                            "br-int", ifname], capture_output=True, timeout=30)
            subprocess.run(["ip", "-n", self.lab.host_ns(host), "link", "del", ifname], capture_output=True,
                           timeout=30)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not [ns for _, _, ns in self.made if ns in left], left


@pytest.fixture
def plugged(hand):
    p = Plugged(hand)
    try:
        yield p
    finally:
        p.remove()


def port(lab, name: str) -> dict:
    return {p["name"]: p for p in nvctl_json(lab, "tenant", "show", "hand")["ports"]}[name]


def until(lab, name: str, test, timeout: float = 15) -> dict:
    """The port as `tenant show` has it, once `test(port)` holds (or the last seen)."""
    deadline = time.monotonic() + timeout
    while True:
        p = port(lab, name)
        if test(p) or time.monotonic() > deadline:
            return p
        time.sleep(0.2)


def flows(lab, host: str) -> list[str]:
    return sorted(f"{f['table']} {f['flow']}" for f in call(lab.api(), "flows", host=host)["flows"])


def test_a_hand_plugged_interface_with_only_an_iface_id_carries_its_port_and_another_host_is_not_bound(hand, plugged):
    before = port(hand, "byhand")
    assert not before["up"] and before["seen"] == [] and before["host"] == "hv2"
    ifname, ns = plugged.plug("hv2", "hand/byhand", "10.7.0.12")
    assert vsctl(hand, "hv2", "get", "interface", ifname, "ofport_request") == "[]"  # no hint given
    p = until(hand, "byhand", lambda p: p["up"])
    assert p["up"], p
    got = int(vsctl(hand, "hv2", "get", "interface", ifname, "ofport"))
    assert p["ofport"] == got  # the flows' ofport is where OVS has the interface
    assert p["seen"] == [{"host": "hv2", "ofport": got, "interface": ifname, "bound": True}]
    vm1 = port(hand, "vm1")
    pings = ping_many([(vm1["namespace"], "10.7.0.12", "vm1->byhand"), (ns, "10.7.0.11", "byhand->vm1")])
    assert all(rx == tx for rx, tx in pings.values()), pings

    # the same iface-id on hv1: seen there, never bound, no flow changes anywhere
    hv1, hv2 = flows(hand, "hv1"), flows(hand, "hv2")
    stray, _ = plugged.plug("hv1", "hand/byhand")
    p = until(hand, "byhand", lambda p: any(s["host"] == "hv1" for s in p["seen"]))
    elsewhere = [s for s in p["seen"] if s["host"] == "hv1"]
    assert elsewhere == [{"host": "hv1", "ofport": int(vsctl(hand, "hv1", "get", "interface", stray, "ofport")),
                          "interface": stray, "bound": False, "reason": "the port is placed on hv2"}], p["seen"]
    assert p["up"] and p["ofport"] == got and p["host"] == "hv2"
    time.sleep(1)  # a wrong rebinding or renumbering would have been made by now
    assert (flows(hand, "hv1"), flows(hand, "hv2")) == (hv1, hv2)
    assert vsctl(hand, "hv1", "get", "interface", stray, "ofport_request") == "[]"  # not asked to move either
    assert port(hand, "byhand")["ofport"] == got
    pings = ping_many([(vm1["namespace"], "10.7.0.12", "vm1->byhand")])
    assert all(rx == tx for rx, tx in pings.values()), pings
    proof = verify_lab(hand)
    assert proof["ok"], (proof.get("interfaces"), proof.get("errors"), proof.get("violations"))

    plugged.unplug("hv2", ifname)  # its interface goes: the port is down, seen only where it is not bound
    p = until(hand, "byhand", lambda p: not p["up"])
    assert not p["up"] and [s["host"] for s in p["seen"]] == ["hv1"]


def test_an_interface_numbered_otherwise_takes_the_allocation_along_on_its_host_only(hand, plugged):
    was = port(hand, "byhand")["ofport"]
    hv1 = flows(hand, "hv1")
    ifname, ns = plugged.plug("hv2", "hand/byhand", "10.7.0.12", f"ofport_request={was + 40}")
    p = until(hand, "byhand", lambda p: p["up"])
    assert p["up"] and p["ofport"] == was + 40 == int(vsctl(hand, "hv2", "get", "interface", ifname, "ofport")), p
    assert flows(hand, "hv1") == hv1  # the other host's flows do not name ofports: unchanged
    assert any(f"output:{was + 40}" in f for f in flows(hand, "hv2"))
    vm1 = port(hand, "vm1")
    pings = ping_many([(vm1["namespace"], "10.7.0.12", "vm1->byhand"), (ns, "10.7.0.11", "byhand->vm1")])
    assert all(rx == tx for rx, tx in pings.values()), pings
    proof = verify_lab(hand)
    assert proof["ok"], (proof.get("interfaces"), proof.get("errors"), proof.get("violations"))
