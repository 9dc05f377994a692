"""The scenarios `nvctl scenario run NAME` knows. Each states its claims up front (the
docstring) and checks them against real packets; a claim that does not hold makes the
command exit 1."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter

from controller.client.api import call
from scenarios.netutil import (Capture, Dhclient, PingTimeline, TcpServer, eth0_addresses, in_ns, iperf3, ping_many,
                               tcp_connect, tcp_stream, tcp_whois, wait_listening)
from scenarios.registry import example, scenario


def _plt():
    import matplotlib.pyplot as plt
    return plt


def _stream_report(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=120)
    lines = [ln for ln in out.strip().splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": f"no report: {out[-300:]}", "sent": 0, "echoed": 0}


def _timeline_axes(ax, timeline: dict, label: str, color: str) -> None:
    ok = [(t, r) for t, r in timeline["samples"] if r is not None]
    lost = [t for t, r in timeline["samples"] if r is None]
    if ok:
        ax.plot([t for t, _ in ok], [r for _, r in ok], ".", ms=2, color=color,
                label=f"{label}: {timeline['received']}/{timeline['sent']} replies")
    if lost:
        ax.plot(lost, [0] * len(lost), "x", color="red", ms=6, label=f"{label}: {len(lost)} lost")


# 1 -------------------------------------------------------------------------------------------
@scenario("isolation", "two tenants on the same addresses: every port reaches all of its own tenant "
          "and nothing of the other", mininet=True)
def isolation(run):
    """Claims: every same-tenant pair exchanges pings; not one echo request crosses to the
    other tenant, although both use 10.0.0.11-14 on the same hosts. Every source tags its
    pings with its own index (ping -p), so each workload's capture says who reached it."""
    env = run.env
    run.step("network up; tenants blue and red, both on 10.0.0.0/24, spread over 3 hosts")
    env.up([example("blue"), example("red")])
    ports = [(t, n, p) for t in sorted(env.ports) for n, p in sorted(env.ports[t].items())]
    labels = [f"{t}/{n}@{p['host']}" for t, n, p in ports]
    targets = sorted({p["ip"] for _, _, p in ports} | {"10.0.0.99"})
    run.step(f"{len(ports)} workloads capture; each pings {len(targets)} addresses "
             f"({', '.join(targets)}), its pings tagged with its index")
    caps = [Capture(p["namespace"], p["iface"], "icmp[icmptype] == icmp-echo", inbound_only=True)
            for _, _, p in ports]
    try:
        pings = []
        for i, (t, n, p) in enumerate(ports):
            for ip in targets:
                if ip != p["ip"]:
                    pings.append((i, ip, subprocess.Popen(
                        ["ip", "netns", "exec", p["namespace"], "ping", "-n", "-c", "3", "-i", "0.2", "-W", "1",
                         "-p", f"c0ffee{i:02x}", ip], stdout=subprocess.PIPE, text=True)))
        replies = {}
        for i, ip, proc in pings:
            out, _ = proc.communicate(timeout=60)
            m = re.search(r"(\d+) received", out)
            replies[(i, ip)] = int(m.group(1)) if m else 0
        time.sleep(0.3)
    finally:
        packets = [c.packets() for c in caps]
    from scapy.layers.inet import ICMP
    matrix = [[0] * len(ports) for _ in ports]  # [source][destination] echo requests seen
    for d, pkts in enumerate(packets):
        for pkt in pkts:
            if ICMP in pkt:
                m = re.search(rb"\xc0\xff\xee(.)", bytes(pkt[ICMP].payload), re.S)
                if m and m.group(1)[0] < len(ports):
                    matrix[m.group(1)[0]][d] += 1
    expected = [[ports[s][0] == ports[d][0] and s != d for d in range(len(ports))] for s in range(len(ports))]
    missing = [f"{labels[s]}->{labels[d]}" for s in range(len(ports)) for d in range(len(ports))
               if expected[s][d] and matrix[s][d] == 0]
    crossed = [f"{labels[s]}->{labels[d]}: {matrix[s][d]}" for s in range(len(ports)) for d in range(len(ports))
               if ports[s][0] != ports[d][0] and matrix[s][d]]
    own_pings = {(i, ip): n for (i, ip), n in replies.items()
                 if ip in {p["ip"] for t, _, p in ports if t == ports[i][0]}}
    run.data.update({"ports": labels, "targets": targets, "delivered_matrix": matrix,
                     "replies": {f"{labels[i]}->{ip}": n for (i, ip), n in replies.items()}})
    run.claim("every workload's pings reach each of its own tenant's ports", not missing,
              pairs=sum(map(sum, expected)), missing=missing)
    run.claim("every ping to an own-tenant address is answered (3 of 3)", all(n == 3 for n in own_pings.values()),
              answered=sum(own_pings.values()), of=3 * len(own_pings))
    run.claim("no echo request crosses between tenants", not crossed,
              cross_pairs=sum(1 for s in range(len(ports)) for d in range(len(ports))
                              if ports[s][0] != ports[d][0]), crossed=crossed)
    run.claim("the unused address 10.0.0.99 answers nobody",
              all(n == 0 for (i, ip), n in replies.items() if ip == "10.0.0.99"))

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(matrix, cmap="Blues")
    peak = max(map(max, matrix)) or 1
    ax.set_xticks(range(len(ports)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(ports)), labels, fontsize=8)
    for s in range(len(ports)):
        for d in range(len(ports)):
            ax.text(d, s, matrix[s][d], ha="center", va="center", fontsize=7,
                    color="red" if (ports[s][0] != ports[d][0] and matrix[s][d])
                    else "white" if matrix[s][d] > peak / 2 else "black")
    half = sum(1 for t, _, _ in ports if t == ports[0][0]) - 0.5
    ax.axhline(half, color="k", lw=1)
    ax.axvline(half, color="k", lw=1)
    ax.set_xlabel("received by")
    ax.set_ylabel("sent by")
    ax.set_title(f"Echo requests delivered ({run.env.kind}): tenants only reach themselves")
    fig.colorbar(im, ax=ax, shrink=0.7)
    run.figure("isolation_matrix", fig)


# 2 -------------------------------------------------------------------------------------------
@scenario("migration", "live migration under load: blue/vm1 moves hv1->hv3->hv1->hv3 while it is pinged "
          "every 10 ms, holds a TCP echo stream and receives an iperf3 stream")
def migration(run, moves: int = 4, spacing: float = 1.5):
    """Claims: at most 1 ping lost per migration; the TCP echo stream and the iperf3
    connection survive, and no 250 ms iperf3 interval is empty; the workload keeps its
    CA and MAC; the port ends up on the last destination."""
    env = run.env
    run.step("network up; tenant blue (vm1 on hv1, vm2 on hv2, vm3 on hv3)")
    env.up([example("blue")])
    vm1, vm2, vm3 = (env.ports["blue"][n] for n in ("vm1", "vm2", "vm3"))
    before = eth0_addresses(vm1["namespace"])
    seconds = 1.5 + moves * spacing + 1.0
    run.step(f"load on: ping vm2->vm1 every 10 ms, TCP echo vm2->vm1 every 10 ms, "
             f"iperf3 vm3->vm1 at 100 Mbit/s, for {seconds:.1f}s")
    echo = TcpServer(vm1["namespace"], 9000)
    iperf_srv = subprocess.Popen(["ip", "netns", "exec", vm1["namespace"], "iperf3", "-s", "-1", "-p", "5201"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    timings, marks = [], []
    try:
        wait_listening(vm1["namespace"], 5201)
        iperf = subprocess.Popen(["ip", "netns", "exec", vm3["namespace"], "iperf3", "-c", vm1["ip"], "-p", "5201",
                                  "-t", str(seconds), "-b", "100M", "-i", "0.25", "-J"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ping = PingTimeline(vm2["namespace"], vm1["ip"], seconds)
        stream = tcp_stream(vm2["namespace"], vm1["ip"], 9000, seconds=seconds, interval=0.01)
        time.sleep(1.5)
        for i in range(moves):
            to = "hv3" if i % 2 == 0 else "hv1"
            t = time.time() - ping.started
            r = call(env.api_path, "port.migrate", tenant="blue", port="vm1", to=to)
            marks.append((round(t, 3), to))
            timings.append(r["timings_ms"])
            run.step(f"migration {i + 1}/{moves} to {to}: switch window {r['timings_ms']['switch_window']} ms")
            time.sleep(spacing)
        timeline = ping.result()
        report = _stream_report(stream)
        iout, ierr = iperf.communicate(timeout=120)
    finally:
        echo.stop()
        if iperf_srv.poll() is None:
            iperf_srv.terminate()
        iperf_srv.wait(timeout=10)
    doc = json.loads(iout) if iout.strip().startswith("{") else {"error": ierr or "no output"}
    intervals = [(round(iv["sum"]["start"], 2), round(iv["sum"]["bits_per_second"] / 1e6, 1))
                 for iv in doc.get("intervals", [])]
    shown = {p["name"]: p for p in call(env.api_path, "tenant.show", name="blue")["ports"]}
    run.data.update({"moves": marks, "timings_ms": timings, "ping": timeline, "tcp_stream": report,
                     "iperf3_mbps": intervals, "iperf3_error": doc.get("error")})
    run.claim(f"at most 1 ping lost per migration ({moves} migrations at a 10 ms interval)",
              timeline["lost"] <= moves, lost=timeline["lost"], sent=timeline["sent"])
    run.claim("the TCP echo stream survives every migration",
              report.get("error") is None and report.get("echoed") == report.get("sent") > 100,
              sent=report.get("sent"), echoed=report.get("echoed"), max_gap_s=report.get("max_gap_s"))
    run.claim("the iperf3 connection survives and no 250 ms interval is empty",
              not doc.get("error") and len(intervals) >= 4 and all(m > 0 for _, m in intervals),
              error=doc.get("error"), intervals=len(intervals),
              min_mbps=min((m for _, m in intervals), default=None))
    run.claim("vm1 keeps its CA and MAC", eth0_addresses(vm1["namespace"]) == before, before=list(before))
    last = marks[-1][1]
    run.claim(f"vm1 ends on {last}, up", shown["vm1"]["host"] == last and shown["vm1"]["up"],
              host=shown["vm1"]["host"])

    plt = _plt()
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    _timeline_axes(a1, timeline, "vm2->vm1 ping", "tab:blue")
    a1.set_ylabel("RTT (ms)")
    a1.set_title(f"{moves} live migrations under load: {timeline['lost']} of {timeline['sent']} pings lost")
    if intervals:
        a2.step([t for t, _ in intervals], [m for _, m in intervals], where="post", color="tab:green",
                label="iperf3 vm3->vm1")
    a2.set_ylabel("Mbit/s (250 ms intervals)")
    a2.set_xlabel("seconds")
    for ax in (a1, a2):
        for t, to in marks:
            ax.axvline(t, color="gray", ls="--", lw=1)
        ax.legend(loc="lower right", fontsize=8)
    for t, to in marks:
        a1.annotate(f"->{to}", (t, a1.get_ylim()[1]), fontsize=8, ha="left", va="top")
    run.figure("migration_timeline", fig)


# 3 -------------------------------------------------------------------------------------------
def _shop_with_nat() -> str:
    text = example("shop")
    text = text.replace("      ports: [{switch: web, ip: 10.0.0.1}, {switch: db, ip: 10.0.1.1}]\n",
                        "      ports: [{switch: web, ip: 10.0.0.1}, {switch: db, ip: 10.0.1.1}]\n"
                        "      external: {ip: 203.0.113.10}\n")
    return text.replace("  ports:\n", "  nat:\n    - {type: snat, router: r1, cidr: 10.0.0.0/24}\n"
                        "    - {type: floating-ip, port: db1, externalIp: 203.0.113.11}\n  ports:\n", 1)


@scenario("nat", "NAT and a floating IP seen from the outside network: SNAT for the web subnet, "
          "a floating IP for db1, nothing else reachable")
def nat(run):
    """Claims: the outside host connects to db1's floating IP; what web2 sends out arrives
    from the router's external address and what db1 sends from its floating IP; the
    outside reaches no other address, inside ones included."""
    env = run.env
    run.step("network up; tenant shop with router r1 (external 203.0.113.10), SNAT for 10.0.0.0/24, "
             "floating IP 203.0.113.11 for db1")
    env.up([_shop_with_nat()])
    ports = env.ports["shop"]
    outside = env.outside_ns
    server = TcpServer(ports["db1"]["namespace"], 22)
    try:
        run.step("outside -> floating IP 203.0.113.11: TCP 22 and 20 pings")
        fip_tcp = tcp_connect(outside, "203.0.113.11", 22)
        fip_rtt = _rtts(outside, "203.0.113.11")
        run.step("web2 (on hv3, SNAT) and db1 (floating IP) ping the outside host; the outside captures")
        sources = {}
        rtts = {}
        for name in ("web2", "db1"):
            cap = Capture(outside, "br-ext", "icmp[icmptype] == icmp-echo", inbound_only=True)
            try:
                rtts[name] = _rtts(ports[name]["namespace"], "203.0.113.1")
            finally:
                pkts = cap.packets()
            from scapy.layers.inet import IP
            sources[name] = sorted({p[IP].src for p in pkts if IP in p})
        run.step("outside -> the router's address, an unassigned address and web1's inside address")
        stray = {"router 203.0.113.10:22": tcp_connect(outside, "203.0.113.10", 22, timeout=1.5),
                 "unassigned 203.0.113.12:22": tcp_connect(outside, "203.0.113.12", 22, timeout=1.5)}
        in_ns(outside, "ip", "route", "replace", "10.0.0.0/16", "via", "203.0.113.10", check=True)
        try:
            stray["inside 10.0.0.11 via the router"] = (
                "answered" if ping_many([(outside, ports["web1"]["ip"], "x")], count=2)["x"][0] else "no answer")
        finally:
            in_ns(outside, "ip", "route", "del", "10.0.0.0/16")
    finally:
        server.stop()
    run.data.update({"fip_tcp": fip_tcp, "rtt_ms": {"outside->fip": fip_rtt, **{f"{k}->outside": v
                                                                              for k, v in rtts.items()}},
                     "sources_seen_outside": sources, "stray": stray})
    run.claim("the outside host connects to db1 through its floating IP", fip_tcp == "connected", tcp=fip_tcp)
    run.claim("the floating IP answers pings from outside", len(fip_rtt) >= 18, replies=len(fip_rtt), of=20)
    run.claim("web2's packets arrive from the router's external address (SNAT)",
              sources["web2"] == ["203.0.113.10"] and len(rtts["web2"]) >= 18, seen=sources["web2"])
    run.claim("db1's packets arrive from its floating IP", sources["db1"] == ["203.0.113.11"]
              and len(rtts["db1"]) >= 18, seen=sources["db1"])
    run.claim("the outside reaches nothing else", all(v in ("timeout", "no answer") for v in stray.values()),
              **{k.split()[0]: v for k, v in stray.items()})

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    data = [fip_rtt or [0], rtts["web2"] or [0], rtts["db1"] or [0]]
    ax.boxplot(data)
    ax.set_xticks([1, 2, 3], ["outside -> 203.0.113.11\n(DNAT to db1)",
                             f"web2 -> outside\nseen as {', '.join(sources['web2']) or 'nothing'}",
                             f"db1 -> outside\nseen as {', '.join(sources['db1']) or 'nothing'}"])
    ax.set_ylabel("RTT (ms), 20 pings")
    ax.set_title("NAT paths: SNAT through the gateway hv1, the floating IP on its port's host")
    run.figure("nat_paths", fig)


def _rtts(ns: str, ip: str, count: int = 20) -> list[float]:
    p = subprocess.run(["ip", "netns", "exec", ns, "ping", "-n", "-c", str(count), "-i", "0.02", "-W", "1", ip],
                       capture_output=True, text=True, timeout=60)
    return [float(x) for x in re.findall(r"time=([\d.]+) ms", p.stdout)]


# 4 -------------------------------------------------------------------------------------------
LB_BACKENDS = ["web2:8080", "db1:8080", "db2:8080"]


def _shop_with_lb(backends) -> str:
    lb = "  loadBalancers:\n    - {name: web-lb, vip: 10.0.0.100, protocol: tcp, port: 80, backends: [%s]}\n"
    return example("shop").replace("  ports:\n", lb % ", ".join(backends) + "  ports:\n", 1)


@scenario("lb", "load balancer spread: 90 connections to a VIP over 3 backends on 3 hosts, then one "
          "backend removed", mininet=True)
def lb(run, connections: int = 90):
    """Claims: every connection is answered; each backend gets at least 15 % of them; after
    a backend is removed, no new connection reaches it and all are still answered."""
    env = run.env
    run.step(f"network up; tenant shop with VIP 10.0.0.100:80 over {', '.join(LB_BACKENDS)}")
    env.up([_shop_with_lb(LB_BACKENDS)])
    ports = env.ports["shop"]
    servers = [TcpServer(ports[b.split(":")[0]]["namespace"], 8080, name=b.split(":")[0]) for b in LB_BACKENDS]
    try:
        run.step(f"web1 opens {connections} connections to the VIP, one after another")
        first = Counter(tcp_whois(ports["web1"]["namespace"], "10.0.0.100", 80, count=connections))
        run.step("db2 removed from the pool (tenant apply)")
        call(env.api_path, "tenant.apply", yaml=_shop_with_lb(LB_BACKENDS[:2]))
        second = Counter(tcp_whois(ports["web1"]["namespace"], "10.0.0.100", 80, count=connections))
    finally:
        for s in servers:
            s.stop()
    names = [b.split(":")[0] for b in LB_BACKENDS]
    run.data.update({"connections": connections, "before": {str(k): v for k, v in first.items()},
                     "after_removing_db2": {str(k): v for k, v in second.items()}})
    run.claim(f"all {connections} connections are answered", first[None] == 0, unanswered=first[None])
    run.claim("each backend gets at least 15 % of the connections",
              all(first[n] >= 0.15 * connections for n in names), spread={n: first[n] for n in names})
    run.claim("after removing db2, no new connection reaches it and all are answered",
              second["db2"] == 0 and second[None] == 0 and second["web2"] > 0 and second["db1"] > 0,
              spread={n: second[n] for n in names}, unanswered=second[None])

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [first[n] for n in names], 0.4, label="3 backends")
    ax.bar([i + 0.2 for i in x], [second[n] for n in names], 0.4, label="db2 removed")
    ax.axhline(connections / 3, color="gray", ls=":", lw=1, label="even share of 3")
    ax.set_xticks(list(x), [f"{n}@{ports[n]['host']}" for n in names])
    ax.set_ylabel(f"connections of {connections}")
    ax.set_title(f"VIP 10.0.0.100:80 spread ({run.env.kind})")
    ax.legend(fontsize=8)
    run.figure("lb_spread", fig)


# 5 -------------------------------------------------------------------------------------------
@scenario("link-failure", "underlay link failure: hv1's uplink is cut for 1.5 s while vm1 (hv1) pings "
          "vm2 (hv2) and vm3 (hv3) pings vm2", mininet=True)
def link_failure(run, cut_at: float = 2.0, cut_for: float = 1.5, after: float = 2.5):
    """Claims: the cut is real (hv1's pings stop); traffic between the other hosts loses
    nothing; hv1's traffic is back within 1 s of the link coming back, with no help from
    the controller (every host stays connected and in sync); a TCP connection across the
    cut link survives."""
    env = run.env
    run.step("network up; tenant blue (vm1 and vm4 on hv1, vm2 on hv2, vm3 on hv3)")
    env.up([example("blue")])
    vm1, vm2, vm3 = (env.ports["blue"][n] for n in ("vm1", "vm2", "vm3"))
    seconds = cut_at + cut_for + after
    hosts_before = {h["name"]: h["flows_desired"] for h in call(env.api_path, "host.list")}
    run.step(f"ping every 10 ms vm1->vm2 (crosses hv1's link) and vm3->vm2 (does not), and a TCP echo "
             f"stream vm1->vm2, for {seconds:.1f}s")
    server = TcpServer(vm2["namespace"], 9000)
    try:
        across = PingTimeline(vm1["namespace"], vm2["ip"], seconds)
        other = PingTimeline(vm3["namespace"], vm2["ip"], seconds)
        stream = tcp_stream(vm1["namespace"], vm2["ip"], 9000, seconds=seconds, interval=0.02)
        time.sleep(cut_at)
        t_cut = time.time() - across.started
        env.set_underlay_link("hv1", False)
        run.step(f"hv1's underlay link cut ({env.kind}) at t={t_cut:.2f}s")
        time.sleep(cut_for)
        t_up = time.time() - across.started
        env.set_underlay_link("hv1", True)
        run.step(f"hv1's underlay link restored at t={t_up:.2f}s")
        a, o = across.result(), other.result()
        report = _stream_report(stream)
    finally:
        server.stop()
        env.set_underlay_link("hv1", True)
    hosts_after = call(env.api_path, "host.list")
    in_cut = [r for t, r in a["samples"] if t_cut + 0.05 <= t <= t_up - 0.05]
    first_back = next((t for t, r in a["samples"] if t >= t_up and r is not None), None)
    late_lost = [t for t, r in a["samples"] if r is None and t > t_up + 1.0]
    recovery = None if first_back is None else round(first_back - t_up, 3)
    run.data.update({"cut_s": [round(t_cut, 3), round(t_up, 3)], "across": a, "other": o,
                     "tcp_stream": report, "recovery_s": recovery})
    run.claim("the cut is real: vm1's pings across it go unanswered",
              len(in_cut) > 50 and sum(r is None for r in in_cut) >= 0.9 * len(in_cut),
              due_during_cut=len(in_cut), lost=sum(r is None for r in in_cut))
    run.claim("vm3->vm2 (hv3 to hv2) loses nothing", o["lost"] == 0, lost=o["lost"], sent=o["sent"])
    run.claim("vm1's traffic is back within 1 s of the link coming back, and stays",
              recovery is not None and recovery <= 1.0 and not late_lost,
              recovery_s=recovery, lost_later=len(late_lost))
    run.claim("the TCP connection across the cut survives",
              report.get("error") is None and report.get("echoed") == report.get("sent") > 50,
              sent=report.get("sent"), echoed=report.get("echoed"), max_gap_s=report.get("max_gap_s"))
    run.claim("the controller had nothing to do: every host connected and in sync, flows unchanged",
              all(h["connected"] and h["in_sync"] and h["flows_desired"] == hosts_before[h["name"]]
                  for h in hosts_after))

    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.axvspan(t_cut, t_up, color="orange", alpha=0.25, label="hv1 underlay link down")
    _timeline_axes(ax, a, "vm1@hv1 -> vm2@hv2", "tab:blue")
    _timeline_axes(ax, o, "vm3@hv3 -> vm2@hv2", "tab:green")
    ax.set_xlabel("seconds")
    ax.set_ylabel("RTT (ms)")
    ax.set_title(f"Underlay link failure ({env.kind}): back {recovery} s after the link returns")
    ax.legend(fontsize=8, loc="upper right")
    run.figure("link_failure_timeline", fig)


# 6 -------------------------------------------------------------------------------------------


def _kernel_view(ns: str, ifname: str = "eth0") -> dict:
    """What the workload's kernel has on its interface: address/prefix, gateway, MTU."""
    addr = in_ns(ns, "ip", "-4", "-o", "addr", "show", "dev", ifname, check=True).stdout
    route = in_ns(ns, "ip", "-4", "route", "show", "default", check=True).stdout
    link = in_ns(ns, "ip", "-o", "link", "show", ifname, check=True).stdout
    a, g = re.search(r"inet (\S+)", addr), re.search(r"default via (\S+)", route)
    return {"addr": a.group(1) if a else None, "gateway": g.group(1) if g else None,
            "mtu": int(re.search(r" mtu (\d+) ", link).group(1))}


def _dig(ns: str, server: str, name: str, qtype: str = "A") -> tuple[str | None, list[str]]:
    p = in_ns(ns, "dig", "+time=2", "+tries=2", f"@{server}", name, qtype)
    status = re.search(r"status: (\w+)", p.stdout)
    return (status.group(1) if status else None,
            re.findall(rf"^\S+\s+\d+\s+IN\s+{qtype}\s+(\S+)$", p.stdout, re.M))


def _slaac_view(ns: str, ifname: str = "eth0") -> dict:
    """The workload's global IPv6 addresses (not tentative) and its IPv6 default route."""
    addr = in_ns(ns, "ip", "-6", "-o", "addr", "show", "dev", ifname, "scope", "global", check=True).stdout
    route = in_ns(ns, "ip", "-6", "route", "show", "default", check=True).stdout
    g = re.search(r"default via (\S+)", route)
    return {"addrs": sorted(re.findall(r"inet6 (\S+)", addr)), "tentative": "tentative" in addr,
            "gateway": g.group(1) if g else None}


BOOT_TENANT = """apiVersion: nvctl/v1
kind: Tenant
metadata: {name: boot}
spec:
  switches:
    - {name: web, cidr: 10.0.0.0/24, cidr6: "fd00:0:0:1::/64"}
    - {name: db, cidr: 10.0.1.0/24, cidr6: "fd00:0:0:2::/64"}
    - {name: lab, cidr: 10.0.2.0/24}
  routers:
    - name: r1
      ports: [{switch: web, ip: 10.0.0.1, ip6: "fd00:0:0:1::1"}, {switch: db, ip: 10.0.1.1, ip6: "fd00:0:0:2::1"}]
  ports:
    - {name: web1, switch: web, ip: 10.0.0.11, host: hv1}
    - {name: web2, switch: web, ip: 10.0.0.12, host: hv2}
    - {name: db1, switch: db, ip: 10.0.1.13, host: hv3}
    - {name: lab1, switch: lab, ip: 10.0.2.14, host: hv1}
    - {name: lab2, switch: lab, ip: 10.0.2.15, host: hv3}
"""


@scenario("dhcp", "workloads boot with no address and get CA, MTU, gateway and DNS from the platform's "
          "DHCP (dhclient) and, on dual-stack switches, their IPv6 address by SLAAC from its router "
          "advertisements; then reach each other by name, over IPv4 and IPv6")
def dhcp(run):
    """Claims: five workloads of tenant boot (web1, web2 on switch web and db1 on db, joined
    by router r1; lab1, lab2 on switch lab, which has no router) start with no address and
    MTU 1500; dhclient gets each its spec's CA, its switch's MTU (1450 on the 1500-byte
    underlay), its gateway (the router port; none on lab) and its DNS server (the router
    port; lab's last address, 10.0.2.254) with domain boot.nvctl; each resolves every
    workload it can reach as <port>.boot.nvctl at the server it was given, to that port's
    CA, and pings it at that address (across the router too); a name that is no port's is
    NXDOMAIN and a name outside nvctl REFUSED. IPv6 (web and db are dual stack, lab is
    not): with its IPv6 addresses flushed and SLAAC on, each of web1, web2 and db1 gets from
    the router's advertisement the address the spec derives from its MAC and the router as
    default route, resolves its dual-stack peers' AAAA names and pings6 them."""
    env = run.env
    run.step("network up; tenant boot: web1@hv1, web2@hv2 (web), db1@hv3 (db), router r1; "
             "lab1@hv1, lab2@hv3 (lab, no router)")
    env.up([BOOT_TENANT])
    ports = env.ports["boot"]
    shown = call(env.api_path, "tenant.show", name="boot")
    names = sorted(ports)
    gateway = {"web": "10.0.0.1", "db": "10.0.1.1", "lab": None}
    dns = {"web": "10.0.0.1", "db": "10.0.1.1", "lab": "10.0.2.254"}
    component = {"web": "r1", "db": "r1", "lab": "lab"}
    work = tempfile.mkdtemp(prefix="nvctl-dhcp-")
    clients: dict[str, Dhclient] = {}
    try:
        run.step(f"boot: every workload's eth0 flushed (no address, no route) and at MTU 1500; "
                 f"SLAAC on the dual-stack ones; dhclient on all {len(names)} at once")
        booted = {}
        dual = [n for n in names if ports[n].get("ip6")]
        for n in names:
            in_ns(ports[n]["namespace"], "ip", "addr", "flush", "dev", "eth0", check=True)
            in_ns(ports[n]["namespace"], "ip", "link", "set", "eth0", "mtu", "1500", check=True)
            booted[n] = _kernel_view(ports[n]["namespace"])
        for n in dual:  # SLAAC on, and a link going up: the kernel solicits a router
            ns = ports[n]["namespace"]
            in_ns(ns, "ip", "-6", "route", "flush", "dev", "eth0")
            in_ns(ns, "sysctl", "-qw", "net.ipv6.conf.eth0.accept_ra=2", "net.ipv6.conf.eth0.autoconf=1",
                  check=True)
            in_ns(ns, "ip", "link", "set", "eth0", "down", check=True)
            in_ns(ns, "ip", "link", "set", "eth0", "up", check=True)
            booted[n]["ipv6"] = _slaac_view(ns)  # before the router answers
        for n in names:
            clients[n] = Dhclient(ports[n]["namespace"], "eth0", os.path.join(work, n))
        leases = {n: c.wait() for n, c in clients.items()}
        got = {n: _kernel_view(ports[n]["namespace"]) for n in names}

        for n in names:
            run.step(f"{n}: {got[n]['addr']} gw {got[n]['gateway']} mtu {got[n]['mtu']} dns "
                     f"{(leases[n]['lease'] or {}).get('dns')} in {leases[n]['seconds']} s")
        peers = [(a, b) for a in names for b in names
                 if a != b and component[ports[a]["switch"]] == component[ports[b]["switch"]]]
        run.step(f"each workload asks the DNS server it was given for each peer it can reach "
                 f"({len(peers)} pairs), then pings the answer")
        answers = {}
        for a, b in peers:
            server = (leases[a]["lease"] or {}).get("dns") or dns[ports[a]["switch"]]
            answers[(a, b)] = _dig(ports[a]["namespace"], server, f"{b}.boot.nvctl")
        pinged = ping_many([(ports[a]["namespace"], ans[1][0], f"{a}->{b}")
                            for (a, b), ans in answers.items() if ans[1]], count=2)
        nx = _dig(ports["web1"]["namespace"], "10.0.0.1", "nobody.boot.nvctl")
        refused = _dig(ports["lab1"]["namespace"], "10.0.2.254", "example.com")
        deadline = time.monotonic() + 10
        slaac = {}
        while time.monotonic() < deadline:
            slaac = {n: _slaac_view(ports[n]["namespace"]) for n in dual}
            if all(v["addrs"] and not v["tentative"] and v["gateway"] for v in slaac.values()):
                break
            time.sleep(0.2)
        for n in dual:
            run.step(f"{n}: SLAAC {', '.join(slaac[n]['addrs']) or 'no address'} via {slaac[n]['gateway']}")
        peers6 = [(a, b) for a in dual for b in dual if a != b]
        run.step(f"each dual-stack workload asks for each other's AAAA ({len(peers6)} pairs), then pings6 it")
        answers6 = {(a, b): _dig(ports[a]["namespace"], "10.0.0.1" if ports[a]["switch"] == "web" else "10.0.1.1",
                                 f"{b}.boot.nvctl", "AAAA") for a, b in peers6}
        pinged6 = {}
        for (a, b), ans in answers6.items():
            if ans[1]:
                r = in_ns(ports[a]["namespace"], "ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", ans[1][0])
                pinged6[f"{a}->{b}"] = int(re.search(r"(\d+) received", r.stdout).group(1)) if "received" in r.stdout else 0
    finally:
        for n in [n for n in names if ports[n].get("ip6")]:  # back as the platform configured it
            ns = ports[n]["namespace"]
            in_ns(ns, "sysctl", "-qw", "net.ipv6.conf.eth0.accept_ra=0", "net.ipv6.conf.eth0.autoconf=0")
        for c in clients.values():
            c.stop()
        shutil.rmtree(work, ignore_errors=True)

    def want(n):
        p = ports[n]
        return {"addr": f"{p['ip']}/24", "gateway": gateway[p["switch"]], "mtu": shown["mtu"][p["switch"]]}
    run.data.update({"booted": booted, "leases": leases, "kernel": got,
                     "dns": {f"{a}->{b}": v for (a, b), v in answers.items()},
                     "pings": {k: list(v) for k, v in pinged.items()}, "nxdomain": nx, "refused": refused})
    run.claim("every workload booted with no address and MTU 1500",
              all(v["addr"] is None and v["gateway"] is None and v["mtu"] == 1500 for v in booted.values()),
              booted=booted)
    run.claim("dhclient succeeded on every workload", all(v["ok"] for v in leases.values()),
              failed={n: v["log"][-300:] for n, v in leases.items() if not v["ok"]})
    wrong = {n: got[n] for n in names if got[n] != want(n)}
    run.claim("each got its spec's CA, its switch's MTU (1450 on a 1500-byte underlay) and its gateway "
              "(none on lab)", not wrong and set(shown["mtu"].values()) == {1450},
              wrong=wrong, mtu=shown["mtu"])
    bad_dns = {n: (v["lease"] or {}).get("dns") for n, v in leases.items()
               if (v["lease"] or {}).get("dns") != dns[ports[n]["switch"]]
               or (v["lease"] or {}).get("domain") != "boot.nvctl"}
    run.claim("each was given its switch's DNS server (router port; 10.0.2.254 on lab) and domain boot.nvctl",
              not bad_dns, wrong=bad_dns)
    unresolved = {f"{a}->{b}": v for (a, b), v in answers.items() if v != ("NOERROR", [ports[b]["ip"]])}
    run.claim("every workload resolves every peer it can reach to that peer's CA",
              not unresolved, pairs=len(answers), wrong=unresolved)
    unreached = sorted(f"{a}->{b}" for a, b in answers if pinged.get(f"{a}->{b}", (0, 0))[0] == 0)
    run.claim("every workload pings every peer at the address DNS gave (across the router too)",
              not unreached, pairs=len(answers), unanswered=unreached)
    run.claim("a name that is no port's is NXDOMAIN; one outside nvctl is REFUSED",
              nx[0] == "NXDOMAIN" and refused[0] == "REFUSED", nobody=nx[0], example_com=refused[0])
    run.data.update({"slaac": slaac, "dns6": {f"{a}->{b}": v for (a, b), v in answers6.items()},
                     "pings6": pinged6})
    wrong6 = {n: v for n, v in slaac.items()
              if v["addrs"] != [f"{ports[n]['ip6']}/64"] or not (v["gateway"] or "").startswith("fe80::")}
    run.claim("each dual-stack workload got by SLAAC the IPv6 address the spec has for it, and the router "
              "(link-local) as default route", bool(dual) and not wrong6, wrong=wrong6)
    bad6 = {f"{a}->{b}": v for (a, b), v in answers6.items() if v != ("NOERROR", [ports[b]["ip6"]])}
    run.claim("every dual-stack workload resolves its peers' AAAA names to their IPv6 CAs", not bad6, wrong=bad6)
    unreached6 = sorted(k for k, v in pinged6.items() if v == 0) + sorted(
        f"{a}->{b}" for a, b in answers6 if f"{a}->{b}" not in pinged6)
    run.claim("every dual-stack workload pings6 every peer at its AAAA (across the router too)",
              not unreached6, unanswered=unreached6)

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    secs = [leases[n]["seconds"] or 0 for n in names]
    bars = ax.bar([f"{n}@{ports[n]['host']}" for n in names], secs,
                  color=["tab:blue" if leases[n]["ok"] else "tab:red" for n in names])
    for bar, n in zip(bars, names):
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), got[n]["addr"] or "no address",
                ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("seconds, dhclient start (bare eth0) to address")
    ax.set_title("DHCP from the platform: boot to address, per workload (IPv4; IPv6 by SLAAC)")
    run.figure("dhcp_boot_to_address", fig)


# 7 -------------------------------------------------------------------------------------------
PMTU_TENANT = """apiVersion: nvctl/v1
kind: Tenant
metadata: {name: pmtu}
spec:
  switches:
    - {name: front, cidr: 10.0.5.0/24}
    - {name: back, cidr: 10.0.6.0/24}
  routers:
    - name: r1
      ports: [{switch: front, ip: 10.0.5.1}, {switch: back, ip: 10.0.6.1}]
  ports:
    - {name: a, switch: front, ip: 10.0.5.11, host: hv1}
    - {name: b, switch: front, ip: 10.0.5.12, host: hv2}
    - {name: c, switch: back, ip: 10.0.6.13, host: hv3}
"""
FRAG_NEEDED = "icmp[icmptype] == 3 and icmp[icmpcode] == 4"


def _frag_needed(packets) -> list[tuple[str, int]]:
    """(source, next-hop MTU) of each ICMP "fragmentation needed" captured."""
    from scapy.layers.inet import ICMP, IP
    return [(p[IP].src, p[ICMP].nexthopmtu) for p in packets
            if IP in p and ICMP in p and p[ICMP].type == 3 and p[ICMP].code == 4]


def _route_mtu(ns: str, dst: str) -> int | None:
    m = re.search(r"\bmtu (\d+)", in_ns(ns, "ip", "route", "get", dst, check=True).stdout)
    return int(m.group(1)) if m else None


@scenario("mtu", "path MTU discovery on a 1500-byte underlay: a workload at MTU 1500 (not the 1450 it is "
          "given) is told 'frag needed, mtu 1450' by the platform, learns it, and TCP works, switched and routed")
def mtu(run, seconds: float = 2.0):
    """Claims: on a 1500-byte underlay the platform gives workloads MTU 1450; a workload
    whose eth0 is set to 1500 that pings with -M do -s 1472 a workload on another host
    (switched: same switch; routed: through router r1) gets ICMP "fragmentation needed"
    with MTU 1450, captured in its own namespace; its kernel learns it (`ip route get`
    shows mtu 1450) and a 1450-byte ping then gets through; TCP with default settings
    (iperf3) between workloads that both ignore their MTU (1500, so each advertises MSS
    1460 and the receiver's MSS hides nothing) moves data, with the platform's ICMP seen
    during the connection, at no less than half the throughput of workloads at 1450."""
    env = run.env
    run.step("network up (1500-byte underlay); tenant pmtu: a@hv1 and b@hv2 on switch front, c@hv3 on back, "
             "router r1")
    env.up([PMTU_TENANT])
    ports = env.ports["pmtu"]
    a = ports["a"]
    ns = a["namespace"]
    shown = call(env.api_path, "tenant.show", name="pmtu")
    underlay = env.lab.underlay_mtu if hasattr(env, "lab") else None
    given = {n: _kernel_view(p["namespace"])["mtu"] for n, p in ports.items()}
    cases = {"switched": ports["b"], "routed": ports["c"]}
    tput, probes = {}, {}
    run.step(f"TCP (iperf3, {seconds:g} s, default settings) at the MTU the platform gives: a->b, a->c")
    for case, dst in cases.items():
        tput[f"MTU {given['a']} (platform)\n{case}"] = iperf3(ns, dst["namespace"], dst["ip"], seconds=seconds)
    run.step("a, b and c set eth0 to MTU 1500, as a workload that ignores its MTU would")
    for p in ports.values():
        in_ns(p["namespace"], "ip", "link", "set", "eth0", "mtu", "1500", check=True)
    try:
        for case, dst in cases.items():
            run.step(f"{case}: a (hv1) ping -M do -s 1472 {dst['ip']} ({dst['host']}), capturing "
                     f"'{FRAG_NEEDED}' in a's namespace; then ip route get; then a 1450-byte ping")
            in_ns(ns, "ip", "route", "flush", "cache")
            before = _route_mtu(ns, dst["ip"])
            cap = Capture(ns, "eth0", FRAG_NEEDED, inbound_only=True)
            try:
                big = in_ns(ns, "ping", "-n", "-c", "2", "-W", "2", "-M", "do", "-s", "1472", dst["ip"])
                time.sleep(0.2)
            finally:
                icmp = _frag_needed(cap.packets())
            learnt = _route_mtu(ns, dst["ip"])
            fit = in_ns(ns, "ping", "-n", "-c", "2", "-W", "2", "-M", "do", "-s", "1422", dst["ip"])
            m = re.search(r"(\d+) received", fit.stdout)
            run.step(f"{case}: TCP a->{dst['ip']} at MTU 1500 from a fresh route cache (a and {dst['host']}'s "
                     f"workload): iperf3 {seconds:g} s, capturing frag needed meanwhile")
            for p in (a, dst):
                in_ns(p["namespace"], "ip", "route", "flush", "cache")
            cap = Capture(ns, "eth0", FRAG_NEEDED, inbound_only=True)
            try:
                tput[f"MTU 1500 + PMTUD\n{case}"] = iperf3(ns, dst["namespace"], dst["ip"], seconds=seconds)
            finally:
                during_tcp = _frag_needed(cap.packets())
            probes[case] = {"route_mtu_before": before, "icmp": sorted(set(icmp)), "icmp_count": len(icmp),
                            "ping_output": (big.stdout + big.stderr)[-600:], "route_mtu_learnt": learnt,
                            "fit_received": int(m.group(1)) if m else 0, "icmp_during_tcp": len(during_tcp),
                            "icmp_during_tcp_mtus": sorted({mtu for _, mtu in during_tcp}),
                            "route_mtu_after_tcp": _route_mtu(ns, dst["ip"])}
    finally:
        for p in ports.values():
            in_ns(p["namespace"], "ip", "route", "flush", "cache")
            in_ns(p["namespace"], "ip", "link", "set", "eth0", "mtu", str(shown["mtu"][p["switch"]]))
    run.data.update({"underlay_mtu": underlay, "switch_mtu": shown["mtu"], "eth0_mtu_given": given,
                     "probes": probes, "iperf3": {k.replace("\n", " "): v for k, v in tput.items()}})
    run.claim("on a 1500-byte underlay the platform gives every workload MTU 1450",
              underlay == 1500 and set(shown["mtu"].values()) == {1450} and set(given.values()) == {1450},
              underlay=underlay, switches=shown["mtu"], eth0=given)
    for case, pr in probes.items():
        run.claim(f"{case}: ping -M do -s 1472 from MTU 1500 gets ICMP frag needed with mtu 1450 "
                  f"(captured in the sender's namespace, and ping says so)",
                  pr["icmp_count"] >= 1 and {m for _, m in pr["icmp"]} == {1450}
                  and "mtu = 1450" in pr["ping_output"], icmp=pr["icmp"],
                  ping=re.findall(r"[^\n]*mtu ?= ?\d+[^\n]*", pr["ping_output"]))
        run.claim(f"{case}: the sender's kernel learnt it (ip route get: mtu 1450), and a 1450-byte ping "
                  f"gets through", pr["route_mtu_before"] is None and pr["route_mtu_learnt"] == 1450
                  and pr["fit_received"] == 2, before=pr["route_mtu_before"], learnt=pr["route_mtu_learnt"],
                  fit=pr["fit_received"])
        base, pmtud = tput[f"MTU 1450 (platform)\n{case}"], tput[f"MTU 1500 + PMTUD\n{case}"]
        ratio = round(pmtud["mbps"] / base["mbps"], 2) if base["mbps"] else None
        run.claim(f"{case}: TCP between workloads at MTU 1500 moves data, PMTUD within the connection "
                  f"(frag needed seen, route mtu 1450), at >= 0.5x the throughput at the platform's MTU",
                  pmtud["mbps"] > 10 and pr["icmp_during_tcp"] >= 1 and pr["icmp_during_tcp_mtus"] == [1450]
                  and pr["route_mtu_after_tcp"] == 1450 and ratio is not None and ratio >= 0.5,
                  mbps=pmtud["mbps"], at_1450_mbps=base["mbps"], ratio=ratio,
                  icmp_during_tcp=pr["icmp_during_tcp"], retransmits=pmtud["retransmits"])

    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    labels = list(tput)
    vals = [tput[k]["mbps"] for k in labels]
    bars = ax.bar(labels, vals, color=["tab:gray", "tab:gray", "tab:blue", "tab:blue"][:len(labels)])
    ax.tick_params(axis="x", labelsize=8)
    for bar, v in zip(bars, vals):
        ax.text(bar.get_x() + bar.get_width() / 2, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(f"iperf3 TCP Mbit/s ({seconds:g} s, default settings)")
    ax.set_title("TCP across hosts on a 1500-byte underlay: at the platform's MTU, and at 1500 with PMTUD")
    run.figure("mtu_throughput", fig)
