"""VMs as tenant workloads and their live migration, on the lab's real OVS.

Two tenants with identical specs (blue and red: the same CAs, MACs, names) each have a
VM (`workload: vm`, a QEMU guest the lab boots on hv1) and a namespace workload on hv3,
with a stateful ACL in front of the VM. The guests get everything by DHCP; `nvctl exec`
and `nvctl console` reach them. QEMU migrates them live (both tenants at once) while
their namespace pings them every 10 ms and holds a TCP echo stream to them; the network
follows each guest's own announcement from its new host. A pending binding verifies
clean and is activated by nothing but that announcement; a cancelled migration leaves
the VM where it was; deleting the tenants leaves no QEMU, tap or file.
"""
from __future__ import annotations

import glob
import json
import math
import os
import subprocess
import sys
import threading
import time

import pytest

from controller.client.api import call
from scenarios.netutil import PingTimeline, in_ns, tcp_stream
from scenarios.vms import RESUME_SLACK_INTERVALS, echo_server, guest
from tep import vm
from tep.driver import host_ifname
from tests.integration.conftest import running_lab, verify_lab
from tests.integration.helpers import ROOT, apply_yaml, nvctl, nvctl_json
from topology.builder import port, tenant_doc

pytestmark = pytest.mark.skipif(not glob.glob("/boot/vmlinuz-*") or not os.path.exists(vm.BUSYBOX),
                                reason="needs a kernel in /boot and busybox-static (make deps)")

ECHO = 9000
ACLS = [{"priority": 210, "direction": "to-port", "ports": ["vm1"], "protocol": "icmp", "action": "allow"},
        {"priority": 200, "direction": "to-port", "ports": ["vm1"], "protocol": "tcp", "dstPorts": [ECHO],
         "action": "allow"},
        {"priority": 100, "direction": "to-port", "ports": ["vm1"], "action": "deny"}]


def doc(name: str) -> str:
    return tenant_doc(name, switches=[{"name": "web", "cidr": "10.0.0.0/24"}],
                      ports=[port("vm1", "web", "10.0.0.11", "hv1", workload="vm"),
                             port("ns2", "web", "10.0.0.12", "hv3")], acls=ACLS)


def guest_of(lab, tenant: str, name: str = "vm1") -> vm.Guest:
    return guest(lab.api(), tenant, name)


@pytest.fixture(scope="module")
def lab():
    yield from running_lab(3)


@pytest.fixture(scope="module")
def twins(lab):
    for t in ("blue", "red"):
        apply_yaml(lab, doc(t), op="create")
    leases = {t: guest_of(lab, t).wait_console("nvctl guest lease 10.0.0.11", 120) for t in ("blue", "red")}
    print(f"guests up with their lease: {leases}")
    yield lab


def _ports(lab, tenant):
    return {p["name"]: p for p in nvctl_json(lab, "tenant", "show", tenant)["ports"]}


def test_guests_get_address_mtu_and_dns_by_dhcp_and_exec_and_console_reach_them(twins):
    lab = twins
    for t in ("blue", "red"):
        out = nvctl(lab, "exec", f"{t}/vm1", "--", "sh", "-c",
                    "ip -o -4 addr show eth0; cat /sys/class/net/eth0/mtu /sys/class/net/eth0/address "
                    "/etc/resolv.conf").stdout
        assert "10.0.0.11/24" in out and "\n1450\n" in out and "02:00:0a:00:00:0b" in out, out
        assert "nameserver 10.0.0." in out, out
        assert _ports(lab, t)["vm1"]["up"]
        assert nvctl(lab, "exec", f"{t}/vm1", "--", "ping", "-c", "2", "-W", "2", "10.0.0.12").returncode == 0
    failed = nvctl(lab, "exec", "blue/vm1", "--", "sh", "-c", "exit 3", check=False)
    assert failed.returncode == 3  # the guest command's own exit code
    log = nvctl(lab, "console", "blue/vm1", "--log").stdout
    assert "nvctl guest lease 10.0.0.11" in log
    shell = subprocess.run([sys.executable, "-m", "controller.client.cli", "--state-dir", lab.dir, "console",
                            "red/vm1"], input="echo con$((6*7))sole\n", capture_output=True, text=True,
                           timeout=60, cwd=ROOT)
    assert "con42sole" in shell.stdout, shell  # the guest's shell on its serial console worked it out
    assert "not a VM" in nvctl(lab, "console", "blue/ns2", check=False).stderr


def _spoof(ns: str, mac: str, ip: str) -> None:
    """A RARP and a gratuitous ARP claiming `mac` (and `ip`), from a namespace workload."""
    script = ("import sys\nfrom scapy.all import Ether, ARP, sendp\n"
              "mac, ip = sys.argv[1], sys.argv[2]\n"
              "sendp(Ether(src=mac, dst='ff:ff:ff:ff:ff:ff', type=0x8035) / bytes(28), iface='eth0', count=3,"
              " inter=0.05, verbose=False)\n"
              "sendp(Ether(src=mac, dst='ff:ff:ff:ff:ff:ff') / ARP(op=1, hwsrc=mac, psrc=ip, pdst=ip),"
              " iface='eth0', count=3, inter=0.05, verbose=False)\n")
    in_ns(ns, sys.executable, "-c", script, mac, ip, check=True, timeout=60)


def test_a_pending_binding_verifies_and_only_the_guest_announcing_from_there_activates_it(twins):
    lab = twins
    out = nvctl_json(lab, "port", "migrate", "blue/vm1", "--to", "hv3", "--prepare")
    assert out["pending"] == "hv3"
    proof = verify_lab(lab)
    assert proof["ok"], proof["text"]
    ns2 = _ports(lab, "blue")["ns2"]["namespace"]
    _spoof(ns2, "02:00:0a:00:00:0b", "10.0.0.11")  # vm1's MAC from a namespace on the destination
    for t in ("blue", "red"):  # the guests' own announcements from hv1: blue's source, red is not moving
        rc, text = guest_of(lab, t).run("arping -U -c 2 -I eth0 10.0.0.11", timeout=30)
        assert "Sent 2 probe" in text, (rc, text)  # the announcements did go out
    time.sleep(1.0)
    blue = _ports(lab, "blue")["vm1"]
    red = _ports(lab, "red")["vm1"]
    assert blue["host"] == "hv1" and blue["up"] and red["host"] == "hv1"
    assert call(lab.api(), "port.info", tenant="blue", port="vm1")["pending"] == "hv3"
    cancelled = nvctl_json(lab, "port", "migrate", "blue/vm1", "--cancel")
    assert cancelled["cancelled"]
    assert "pending" not in call(lab.api(), "port.info", tenant="blue", port="vm1")
    assert nvctl(lab, "exec", "blue/ns2", "--", "ping", "-c", "2", "-W", "2", "10.0.0.11").returncode == 0


def _migrate_both(lab, to: str) -> dict:
    results, errors = {}, []

    def one(t):
        try:
            results[t] = call(lab.api(), "port.migrate", tenant=t, port="vm1", to=to, timeout=180)
        except Exception as e:  # noqa: BLE001
            errors.append(f"{t}: {e}")
    threads = [threading.Thread(target=one, args=(t,)) for t in ("blue", "red")]
    for th in threads:
        th.start()
    for th in threads:
        th.join(200)
    assert not errors, errors
    return results


def test_twins_migrate_live_at_once_under_ping_and_tcp_and_keep_their_addresses(twins):
    lab = twins
    seconds = 14.0
    loads = {}
    for t in ("blue", "red"):
        echo_server(guest_of(lab, t), ECHO)
        ns = _ports(lab, t)["ns2"]["namespace"]
        loads[t] = (PingTimeline(ns, "10.0.0.11", seconds), tcp_stream(ns, "10.0.0.11", ECHO, seconds, 0.01))
    time.sleep(1.5)
    moves = []
    for to in ("hv2", "hv1"):
        r = _migrate_both(lab, to)
        moves.append(r)
        time.sleep(1.5)
    pings = {t: loads[t][0].result() for t in loads}
    streams = {}
    for t, (_, proc) in loads.items():
        out, _ = proc.communicate(timeout=120)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        streams[t] = json.loads(lines[-1]) if lines else {"error": out[-300:]}
    for t in ("blue", "red"):
        rs = [m[t] for m in moves]
        downs = [r["qemu"]["downtime_ms"] for r in rs]
        allowed = sum(math.ceil(d / 10) + RESUME_SLACK_INTERVALS for d in downs)
        print(f"{t}: {pings[t]['lost']} of {pings[t]['sent']} pings lost over 2 migrations; QEMU downtime {downs} ms; "
              f"network {[r['timings_ms'].get('announcement_to_destination_ready') for r in rs]} ms; "
              f"activated by {[r['activated_by'] for r in rs]}; stream {streams[t]}")
        assert all(r["activated_by"] in ("its RARP", "its gratuitous ARP") for r in rs), rs
        assert [r["dst"] for r in rs] == ["hv2", "hv1"]
        assert pings[t]["lost"] <= allowed, (pings[t]["lost"], downs)
        assert streams[t].get("error") is None and streams[t]["echoed"] == streams[t]["sent"] > 300, streams[t]
        out = nvctl(lab, "exec", f"{t}/vm1", "--", "sh", "-c",
                    "ip -o -4 addr show eth0; cat /sys/class/net/eth0/address").stdout
        assert "10.0.0.11/24" in out and "02:00:0a:00:00:0b" in out, out
        p = _ports(lab, t)["vm1"]
        assert p["host"] == "hv1" and p["up"]
    # the source guests are gone from hv2, the destination's from hv1 are the running ones
    hv2 = os.path.join(lab.host_dir("hv2"), "vm")
    assert not [f for f in os.listdir(hv2) if f.endswith(".pid")] if os.path.isdir(hv2) else True


def test_a_cancelled_migration_leaves_the_vm_running_where_it_was(twins):
    lab = twins
    g = guest_of(lab, "blue")
    assert g.run("dd if=/dev/urandom of=/tmp/fill bs=1M count=24 2>/dev/null; echo done")[1].strip() == "done"
    out = {}

    def move():
        out["p"] = nvctl(lab, "port", "migrate", "blue/vm1", "--to", "hv2", "--bandwidth", "16", check=False,
                         timeout=180)
    th = threading.Thread(target=move)
    th.start()
    time.sleep(2.0)
    cancel = nvctl(lab, "port", "migrate", "blue/vm1", "--cancel")
    th.join(180)
    p = out["p"]
    assert p.returncode != 0 and "cancelled" in p.stderr and "the VM runs on hv1, bound there" in p.stderr, \
        (p.stdout, p.stderr, cancel.stdout)
    info = call(lab.api(), "port.info", tenant="blue", port="vm1")
    assert info["host"] == "hv1" and "pending" not in info and info["vm"]["running"]
    assert g.state() == "running"
    hv2 = os.path.join(lab.host_dir("hv2"), "vm")
    assert not os.path.isdir(hv2) or not [f for f in os.listdir(hv2) if f.endswith(".pid")]
    links = in_ns(lab.host_ns("hv2"), "ip", "-o", "link", "show").stdout
    assert host_ifname("blue", "vm1") not in links
    assert nvctl(lab, "exec", "blue/ns2", "--", "ping", "-c", "2", "-W", "2", "10.0.0.11").returncode == 0
    g.run("rm -f /tmp/fill")


def test_deleting_the_tenants_stops_their_guests_and_leaves_no_tap_or_file(twins):
    lab = twins
    pids = {t: guest_of(lab, t).pid() for t in ("blue", "red")}
    assert all(pids.values()), pids
    for t in ("blue", "red"):
        nvctl(lab, "tenant", "delete", t)
    for t, pid in pids.items():
        assert not vm._running(pid), f"{t}'s QEMU {pid} still runs"
    for h in ("hv1", "hv2", "hv3"):
        d = os.path.join(lab.host_dir(h), "vm")
        assert not os.path.isdir(d) or not os.listdir(d), (h, os.listdir(d))
        links = in_ns(lab.host_ns(h), "ip", "-o", "link", "show").stdout
        ports = lab.ovsdb(h).vsctl("list-ports", "br-int").split()
        for t in ("blue", "red"):
            assert host_ifname(t, "vm1") not in links and host_ifname(t, "vm1") not in ports
    assert not subprocess.run(["pgrep", "-f", f"qemu-system.*{lab.dir}"], capture_output=True).stdout
