"""Scenarios with QEMU guests as workloads (`workload: vm`): registered beside the
catalog's, run the same way (`nvctl scenario run vm-migration`)."""
from __future__ import annotations

import math
import os
import time

from controller.client.api import call
from scenarios.catalog import _plt, _stream_report, _timeline_axes
from scenarios.netutil import PingTimeline, tcp_stream
from scenarios.registry import scenario
from tep import vm
from topology.builder import port, tenant_doc

ECHO = 9000
LEASE_WAIT = 120  # seconds a guest may take from QEMU's start to its DHCP lease (TCG, a busy machine)
# QEMU's reported downtime leaves out the guest's resume at the destination: on a plain
# Linux bridge, with no platform at all (scenarios/vmbridge.py), a 10 ms ping loses up to
# 7 more intervals than the downtime says (BENCHMARKS.md, "VMs"). What a migration may
# lose here: its downtime's intervals plus this many.
RESUME_SLACK_INTERVALS = 6


def vm_tenant(name: str = "blue") -> str:
    """Two VMs (vm1 on hv1, vm2 on hv2) and a namespace workload (ns3 on hv3) on one
    switch; a stateful ACL lets only ICMP and TCP to port 9000 reach vm1."""
    acls = [{"priority": 210, "direction": "to-port", "ports": ["vm1"], "protocol": "icmp", "action": "allow"},
            {"priority": 200, "direction": "to-port", "ports": ["vm1"], "protocol": "tcp", "dstPorts": [ECHO],
             "action": "allow"},
            {"priority": 100, "direction": "to-port", "ports": ["vm1"], "action": "deny"}]
    return tenant_doc(name, switches=[{"name": "web", "cidr": "10.0.0.0/24"}],
                      ports=[port("vm1", "web", "10.0.0.11", "hv1", workload="vm"),
                             port("vm2", "web", "10.0.0.12", "hv2", workload="vm"),
                             port("ns3", "web", "10.0.0.13", "hv3")], acls=acls)


def guest(api, tenant: str, name: str) -> vm.Guest:
    """A VM port's guest, as `port.info` says where it is."""
    g = call(api, "port.info", tenant=tenant, port=name)["vm"]
    return vm.Guest(os.path.dirname(g["agent"]), g["name"])


def echo_server(g: vm.Guest, port: int = ECHO, timeout: float = 10) -> None:
    """A TCP echo server in the guest (busybox nc, one `cat` per connection), listening."""
    g.spawn(f"nc -ll -p {port} -e cat")
    deadline = time.monotonic() + timeout
    while g.run(f"netstat -ltn | grep -q ':{port} '")[0] != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{g.name}: nothing listens on {port} after {timeout:g} s")
        time.sleep(0.1)


def lost_between(timeline: dict, start: float, end: float) -> int:
    """Pings of a PingTimeline lost between two of its times (seconds since it started)."""
    return sum(1 for t, rtt in timeline["samples"] if rtt is None and start <= t < end)


@scenario("vm-migration", "QEMU live migration: blue/vm1, a VM, moves hv1<->hv2 ten times under a 10 ms ping "
          "and a TCP echo stream through a stateful ACL from a namespace on hv3; a second VM on hv2")
def vm_migration(run, moves: int = 10, spacing: float = 1.0):
    """Claims: each guest gets its lease; every migration is activated by the guest's own
    announcement from its new host; the pings lost over all migrations are at most QEMU's
    reported downtime plus the guest's resume (RESUME_SLACK_INTERVALS) for each; the TCP
    echo stream survives;
    vm1 keeps its CA and MAC and vm2 still reaches it; vm1 ends on the last destination."""
    env = run.env
    api = env.api_path
    run.step("network up; tenant blue: vm1 (VM, hv1), vm2 (VM, hv2), ns3 (namespace, hv3)")
    env.up([vm_tenant()])
    up = time.monotonic()
    g1, g2 = guest(api, "blue", "vm1"), guest(api, "blue", "vm2")
    boot = {}
    for n, g in (("vm1", g1), ("vm2", g2)):
        g.wait_console("nvctl guest lease", LEASE_WAIT)
        boot[n] = round(time.monotonic() - up, 1)
    run.step(f"guests up with their DHCP lease {boot['vm1']} s and {boot['vm2']} s after the tenant was made")
    leased = ("nvctl guest lease 10.0.0.11" in g1.console_text(), "nvctl guest lease 10.0.0.12" in g2.console_text())
    before = g1.run("ip -o -4 addr show eth0; cat /sys/class/net/eth0/address")[1]
    echo_server(g1)
    ns3 = env.ports["blue"]["ns3"]["namespace"]
    seconds = 2.0 + moves * (spacing + 1.0) + 2.0
    run.step(f"load on: ping ns3->vm1 every 10 ms and a TCP echo stream ns3->vm1 every 10 ms, for {seconds:.0f} s")
    ping = PingTimeline(ns3, "10.0.0.11", seconds)
    stream = tcp_stream(ns3, "10.0.0.11", ECHO, seconds=seconds, interval=0.01)
    time.sleep(1.5)
    results, marks = [], []
    for i in range(moves):
        to = "hv2" if i % 2 == 0 else "hv1"
        t0 = time.time() - ping.started
        r = call(api, "port.migrate", tenant="blue", port="vm1", to=to, timeout=180)
        t1 = time.time() - ping.started
        results.append(r)
        marks.append((round(t0, 3), round(t1, 3), to))
        run.step(f"migration {i + 1}/{moves} to {to}: copy {r['timings_ms']['copy']} ms, QEMU downtime "
                 f"{r['qemu']['downtime_ms']} ms, announcement -> {to} delivering "
                 f"{r['timings_ms'].get('announcement_to_destination_ready')} ms, by {r['activated_by']}")
        time.sleep(spacing)
    timeline = ping.result()
    report = _stream_report(stream)
    g1 = guest(api, "blue", "vm1")  # where it is now: its agent and console are that host's
    after = g1.run("ip -o -4 addr show eth0; cat /sys/class/net/eth0/address")[1]
    run.data["guest_dmesg_tail"] = g1.run("dmesg | tail -n 30")[1].splitlines()
    rc, _ = g2.run("ping -c 3 -W 2 10.0.0.11", timeout=30)
    shown = {p["name"]: p for p in call(api, "tenant.show", name="blue")["ports"]}
    per = [{"to": to, "lost": lost_between(timeline, a - 0.2, b + 0.5), "qemu_downtime_ms": r["qemu"]["downtime_ms"],
            "network_ms": r["timings_ms"].get("announcement_to_destination_ready"), "copy_ms": r["timings_ms"]["copy"],
            "activated_by": r["activated_by"]} for (a, b, to), r in zip(marks, results)]
    allowed = sum(math.ceil(p["qemu_downtime_ms"] / 10) + RESUME_SLACK_INTERVALS for p in per)
    run.data.update({"boot_to_lease_s": boot, "moves": marks, "migrations": per, "ping": timeline,
                     "tcp_stream": report})
    run.claim("both guests get their address by DHCP", all(leased), seconds=boot)
    run.claim("every migration is activated by the guest's own announcement from its new host",
              all(p["activated_by"] in ("its RARP", "its gratuitous ARP") for p in per),
              by=[p["activated_by"] for p in per])
    run.claim(f"pings lost (10 ms interval) at most QEMU's reported downtime plus {RESUME_SLACK_INTERVALS} "
              f"intervals per migration, the guest's resume ({allowed} in all)",
              timeline["lost"] <= allowed, lost=timeline["lost"], sent=timeline["sent"],
              downtime_ms=[p["qemu_downtime_ms"] for p in per], lost_per_migration=[p["lost"] for p in per],
              excess_intervals=[p["lost"] - math.ceil(p["qemu_downtime_ms"] / 10) for p in per])
    run.claim("the TCP echo stream through the stateful ACL survives every migration",
              report.get("error") is None and report.get("echoed") == report.get("sent") > 100,
              sent=report.get("sent"), echoed=report.get("echoed"), max_gap_s=report.get("max_gap_s"))
    run.claim("vm1 keeps its CA and MAC; vm2 still reaches it", before == after and rc == 0,
              before=before.split(), after=after.split())
    last = marks[-1][2]
    run.claim(f"vm1 ends on {last}, up", shown["vm1"]["host"] == last and shown["vm1"]["up"],
              host=shown["vm1"]["host"])

    plt = _plt()
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 6.5))
    _timeline_axes(a1, timeline, "ns3->vm1 ping", "tab:blue")
    for a, _b, to in marks:
        a1.axvline(a, color="gray", ls="--", lw=1)
        a1.annotate(f"->{to}", (a, a1.get_ylim()[1]), fontsize=8, ha="left", va="top")
    a1.set_ylabel("RTT (ms)")
    a1.set_xlabel("seconds")
    a1.set_title(f"{moves} QEMU live migrations of a VM: {timeline['lost']} of {timeline['sent']} pings lost")
    a1.legend(loc="upper right", fontsize=8)
    xs = range(1, len(per) + 1)
    a2.bar([x - 0.2 for x in xs], [p["qemu_downtime_ms"] for p in per], width=0.4, label="QEMU's downtime (ms)")
    a2.bar([x + 0.2 for x in xs], [p["lost"] * 10 for p in per], width=0.4, label="pings lost x 10 ms")
    a2.set_xlabel("migration")
    a2.set_ylabel("ms")
    a2.legend(fontsize=8)
    fig.tight_layout()
    run.figure("vm_migration_timeline", fig)
