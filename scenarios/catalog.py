"""The scenarios `nvctl scenario run NAME` knows. Each states its claims up front (the
docstring) and checks them against real packets; a claim that does not hold makes the
command exit 1."""
from __future__ import annotations

import json
import re
import subprocess
import time
from collections import Counter

from controller.api import call
from scenarios.netutil import (Capture, PingTimeline, TcpServer, eth0_addresses, in_ns, ping_many, tcp_connect,
                               tcp_stream, tcp_whois, wait_listening)
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
    ax.set_title("NAT paths through the gateway host hv1")
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
