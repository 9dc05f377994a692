"""DHCP answered by the controller: how fast, against the per-tenant control meter, and
what one tenant's DHCP flood does to another tenant on the same host.

The client is one process (`_client`) holding a raw AF_PACKET socket on eth0 of each
workload it drives (it enters each namespace once, opens the socket, and comes back).
Each workload's address is flushed first, as a booting VM's is. An exchange is a
DISCOVER from 0.0.0.0 (Ether source and chaddr the port's own MAC, a new xid per
exchange), then, on the OFFER, the REQUEST for the offered address to the offering
server (the same xid, as RFC 2131 asks; OFFER and ACK are told apart by their message
type), then the ACK. Its latency is DISCOVER sent to ACK received; an exchange with no
ACK within its timeout is unanswered. "Answers" are OFFERs plus ACKs.

A fresh 3-host lab (bench.run's helper) and, in one run:

  (a) one port (tenant c1 on hv1), DISCOVER/REQUEST as fast as it can: a closed loop
      keeping 16 exchanges in flight (one dropped by the meter is given up after
      0.1 s); answers per second against CONTROL_PPS (the tenant's meter on that host),
      latency p50/p99. Baseline, same run: the same port at 20 exchanges/s (40 packets/s,
      under the meter).
      Controller capacity: 3, 15 and 30 ports at once, each of another (tenant, host)
      pair so that each has a meter of its own, each at 45 exchanges/s (90 packets/s,
      under its meter): answers per second in all, against what was offered and against
      N times the single port's figure. Also the handler alone (`Punt.handle`, in this
      process, no OpenFlow) per DHCP message, as the ceiling of the Python code.
  (b) tenant `noisy`'s port a1 on hv1 floods DISCOVERs at 5000 packets/s (a raw-socket
      loop in another process), while tenant `calm`'s b1 on hv1 does 10 exchanges/s and
      noisy's own a2 on hv1 (it shares noisy's meter) 10 exchanges/s: b1's answered
      fraction and latency p99 with and without the flood (ratio), a2's answered
      fraction with and without.

Paced ports (all but (a)'s closed loop) give an exchange 1 s, so their latencies stop
at 1 s: past the controller's capacity p99 says "the timeout", not how long answers
took. Before each condition the controller is let work off what the previous one
queued (its CPU under 10 %). Every condition is repeated; figures are the median over
repetitions with min and max, and each condition's CPU of the controller and of every
host's ovs-vswitchd.

    python -m bench.dhcp [--repeats 3] [--seconds 2.5] [--json]   (root; starts its own lab)
    python -m bench.run --only dhcp        (the same, into bench/results/results.json)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import select
import socket
import struct
import subprocess
import sys
import time

from controller.client.api import call
from controller.layers.services import CONTROL_BURST, CONTROL_PPS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ETH_P_IP = 0x0800
DISCOVER, OFFER, REQUEST, ACK, NAK = 1, 2, 3, 5, 6
COOKIE = b"\x63\x82\x53\x63"
CAP_TENANTS = 10  # x 3 hosts = 30 (tenant, host) meters
CAP_STEPS = (3, 15, 30)  # ports driven at once
CAP_RATE = 45  # exchanges/s per port: 90 packets/s, under the meter's 100
GREEDY_WINDOW, GREEDY_TIMEOUT = 16, 0.1
BASELINE_RATE = 20
FLOOD_PPS, CALM_RATE = 5000, 10

CAP = """apiVersion: nvctl/v1
kind: Tenant
metadata: {{name: {name}}}
spec:
  switches: [{{name: net, cidr: 10.0.0.0/24}}]
  ports:
    - {{name: p1, switch: net, ip: 10.0.0.11, host: hv1}}
    - {{name: p2, switch: net, ip: 10.0.0.12, host: hv2}}
    - {{name: p3, switch: net, ip: 10.0.0.13, host: hv3}}
"""
NOISY = """apiVersion: nvctl/v1
kind: Tenant
metadata: {name: noisy}
spec:
  switches: [{name: net, cidr: 10.0.0.0/24}]
  ports:
    - {name: a1, switch: net, ip: 10.0.0.11, host: hv1}
    - {name: a2, switch: net, ip: 10.0.0.12, host: hv1}
"""
CALM = """apiVersion: nvctl/v1
kind: Tenant
metadata: {name: calm}
spec:
  switches: [{name: net, cidr: 10.0.0.0/24}]
  ports:
    - {name: b1, switch: net, ip: 10.0.0.11, host: hv1}
"""


# the client (runs in its own process: python -c "from bench.dhcp import _client_main; ...") --------

def _checksum(data: bytes) -> int:
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def dhcp_frame(mac: bytes, xid: int, kind: int, requested: bytes | None = None,
               server: bytes | None = None) -> bytes:
    """A client's DISCOVER or REQUEST from 0.0.0.0 to 255.255.255.255, chaddr = mac."""
    opts = bytes([53, 1, kind])
    if requested:
        opts += bytes([50, 4]) + requested
    if server:
        opts += bytes([54, 4]) + server
    opts += bytes([55, 4, 1, 3, 6, 26]) + b"\xff"
    bootp = struct.pack("!4BIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0, bytes(4), bytes(4), bytes(4),
                        bytes(4), mac.ljust(16, b"\0"), b"", b"") + COOKIE + opts
    bootp = bootp.ljust(300, b"\0")
    udp = struct.pack("!HHHH", 68, 67, 8 + len(bootp), 0) + bootp  # checksum 0: none (IPv4)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes(4), b"\xff" * 4)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return b"\xff" * 6 + mac + b"\x08\x00" + ip + udp


def parse_reply(frame: bytes, mac: bytes):
    """(xid, message type, yiaddr, server id) of a server's DHCP message to `mac`, or None."""
    if len(frame) < 14 + 20 + 8 + 240 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        return None
    u = 14 + (frame[14] & 0x0F) * 4
    if frame[u:u + 4] != b"\x00\x43\x00\x44":  # from 67 to 68
        return None
    b = u + 8
    if frame[b] != 2 or frame[b + 28:b + 34] != mac or frame[b + 236:b + 240] != COOKIE:
        return None
    xid = struct.unpack_from("!I", frame, b + 4)[0]
    kind, server, i = None, None, b + 240
    while i + 1 < len(frame) and frame[i] != 255:
        if frame[i] == 0:
            i += 1
            continue
        code, n = frame[i], frame[i + 1]
        if code == 53 and n == 1:
            kind = frame[i + 2]
        elif code == 54 and n == 4:
            server = frame[i + 2:i + 6]
        i += 2 + n
    return xid, kind, frame[b + 16:b + 20], server


class _Port:
    def __init__(self, index: int, p: dict):
        self.mac = bytes.fromhex(p["mac"].replace(":", ""))
        self.rate = p.get("rate")  # exchanges started per second (open loop), or
        self.window = p.get("window")  # exchanges kept in flight (closed loop)
        self.listen = p.get("listen", True)
        self.timeout = p.get("timeout", 1.0)
        self.xid = (index + 1) << 24 | (os.getpid() & 0xFFF) << 12
        from pyroute2.netns import popns, pushns  # os.setns arrives only with Python 3.12
        pushns(p["ns"])
        try:
            proto = ETH_P_IP if self.listen else 0  # 0: a socket that only sends
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
            self.sock.bind(("eth0", proto))
        finally:
            popns()
        self.sock.setblocking(False)
        if self.listen:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.pending: dict[int, float] = {}  # xid -> when its DISCOVER went
        self.c = {"discover": 0, "request": 0, "offer": 0, "ack": 0, "nak": 0, "exchanges": 0, "late": 0,
                  "send_errors": 0, "answers_in_window": 0, "exchanges_in_window": 0}
        self.latency_ms: list[float] = []

    def send(self, frame: bytes, kind: str) -> bool:
        try:
            self.sock.send(frame)
        except OSError:  # the queue is full (a flood's point)
            self.c["send_errors"] += 1
            return False
        self.c[kind] += 1
        return True

    def start(self, now: float) -> None:
        self.xid = (self.xid + 1) & 0xFFFFFFFF
        if self.send(dhcp_frame(self.mac, self.xid, DISCOVER), "discover") and self.listen:
            self.pending[self.xid] = now

    def expire(self, now: float) -> None:
        for xid in [x for x, t in self.pending.items() if now - t > self.timeout]:
            del self.pending[xid]

    def drain(self, now: float, end: float) -> None:
        while True:
            try:
                frame = self.sock.recv(2048)
            except BlockingIOError:
                return
            r = parse_reply(frame, self.mac)
            if r is None:
                continue
            xid, kind, yiaddr, server = r
            sent = self.pending.get(xid)
            if kind in (OFFER, ACK, NAK):
                self.c[{OFFER: "offer", ACK: "ack", NAK: "nak"}[kind]] += 1
                if now <= end:
                    self.c["answers_in_window"] += 1
            if sent is None:
                self.c["late"] += 1
            elif kind == OFFER:
                self.send(dhcp_frame(self.mac, xid, REQUEST, yiaddr, server), "request")
            elif kind == ACK:
                del self.pending[xid]
                self.c["exchanges"] += 1
                if now <= end:
                    self.c["exchanges_in_window"] += 1
                self.latency_ms.append(round((now - sent) * 1000, 3))


def _client(spec: dict) -> dict:
    """Drive spec["ports"] for spec["seconds"], then wait for the last answers."""
    ports = [_Port(i, p) for i, p in enumerate(spec["ports"])]
    seconds = float(spec["seconds"])
    poller = select.poll()
    by_fd = {}
    for p in ports:
        if p.listen:
            poller.register(p.sock, select.POLLIN)
            by_fd[p.sock.fileno()] = p
    t0 = time.monotonic()
    end = t0 + seconds
    stop = end + max(p.timeout for p in ports)
    while True:
        now = time.monotonic()
        if now >= stop:
            break
        wait = stop - now
        for p in ports:
            p.expire(now)
            if now < end and p.window:
                while len(p.pending) < p.window:
                    p.start(now)
            elif now < end:
                due = int((now - t0) * p.rate) + 1 - p.c["discover"] - p.c["send_errors"]
                for _ in range(min(due, 1000)):
                    p.start(now)
                wait = min(wait, t0 + (p.c["discover"] + p.c["send_errors"]) / p.rate - now)
            if p.pending:  # wake up to give up on the oldest exchange in time
                wait = min(wait, min(p.pending.values()) + p.timeout - now)
        wait = min(max(wait, 0.0), 0.1)
        if by_fd:
            for fd, _ in poller.poll(math.ceil(wait * 1000)):
                by_fd[fd].drain(time.monotonic(), end)
        else:
            time.sleep(wait)
    return {"seconds": seconds, "ports": [{**p.c, "latency_ms": p.latency_ms} for p in ports]}


def _client_main(arg: str) -> int:
    print(json.dumps(_client(json.loads(arg))), flush=True)
    return 0


# the bench -------------------------------------------------------------------------------

def _client_cmd(spec: dict) -> list[str]:
    return [sys.executable, "-c", "import sys; from bench.dhcp import _client_main; "
            "sys.exit(_client_main(sys.argv[1]))", json.dumps(spec)]


def drive(ports: list[dict], seconds: float) -> list[dict]:
    p = subprocess.run(_client_cmd({"ports": ports, "seconds": seconds}), cwd=ROOT, capture_output=True,
                       text=True, timeout=seconds + 60)
    if p.returncode != 0:
        raise RuntimeError(f"DHCP client failed ({p.returncode}): {p.stderr[-2000:]}")
    return json.loads(p.stdout)["ports"]


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _spread(xs: list) -> dict:
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return {"median": None, "min": None, "max": None}
    return {"median": xs[len(xs) // 2], "min": xs[0], "max": xs[-1]}


def _summary(results: list[dict], seconds: float) -> dict:
    """One condition's figures over the ports it drove (summed; latencies pooled)."""
    lat = [x for r in results for x in r["latency_ms"]]
    tot = {k: sum(r[k] for r in results) for k in results[0] if k != "latency_ms"}
    return {"answers_per_s": round(tot["answers_in_window"] / seconds, 1),
            "exchanges_per_s": round(tot["exchanges_in_window"] / seconds, 1),
            "sent_per_s": round((tot["discover"] + tot["request"]) / seconds, 1),
            "answered_fraction": round(tot["exchanges"] / tot["discover"], 4) if tot["discover"] else None,
            "p50_ms": _pct(lat, 0.5), "p99_ms": _pct(lat, 0.99), "counts": tot}


def _cpu(pid: int) -> int:
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])


def _pids(lab) -> dict:
    out = {}
    for name, path in [("controller", os.path.join(lab.dir, "controller.pid"))] + [
            (h, os.path.join(lab.host_dir(h), "ovs-vswitchd.pid")) for h in ("hv1", "hv2", "hv3")]:
        with open(path) as f:
            out[name] = int(f.read().strip())
    return out


def _settle(lab, quiet_percent: float = 10, timeout: float = 20) -> float:
    """Wait until the controller has worked off what earlier conditions queued for it (its
    CPU under quiet_percent over 0.25 s), so that no condition pays for the one before."""
    pid = _pids(lab)["controller"]
    tick = os.sysconf("SC_CLK_TCK")
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        before = _cpu(pid)
        time.sleep(0.25)
        if (_cpu(pid) - before) / tick / 0.25 * 100 < quiet_percent:
            break
    return round(time.monotonic() - t0, 2)


def _measured(lab, fn):
    """fn() with the CPU the controller and each host's ovs-vswitchd used meanwhile (% of a
    core), after the controller has settled."""
    settled = _settle(lab)
    pids = _pids(lab)
    before = {k: _cpu(p) for k, p in pids.items()}
    t0 = time.monotonic()
    out = fn()
    dt = time.monotonic() - t0
    tick = os.sysconf("SC_CLK_TCK")
    return out, {**{k: round((_cpu(p) - before[k]) / tick / dt * 100) for k, p in pids.items()},
                 "settle_s": settled}


def handler_cost(n: int = 300) -> dict:
    """Punt.handle for a DISCOVER and a REQUEST, in this process: the Python alone."""
    import yaml
    from controller.compile.allocator import InUse, allocate
    from controller.packetin.punt import Punt
    from topology import schema
    t = schema.validate(yaml.safe_load(CAP.format(name="c1")), ["hv1", "hv2", "hv3"])
    a = allocate(t, None, None, InUse())
    punt = Punt(lambda _t: {"net": 1450})
    punt.update(t.name, t, a)
    p = t.port("p1")
    mac = bytes.fromhex(p.mac.replace(":", ""))
    regs = {"reg13": a.vni["net"], "reg14": a.port_key["p1"]}
    out = {}
    for kind, frame in (("discover", dhcp_frame(mac, 7, DISCOVER)),
                        ("request", dhcp_frame(mac, 7, REQUEST, p.ip.packed, b"\x0a\x00\x00\xfe"))):
        assert punt.handle("hv1", "services", regs, a.ofport["p1"], frame), kind
        t0 = time.perf_counter()
        for _ in range(n):
            punt.handle("hv1", "services", regs, a.ofport["p1"], frame)
        out[f"{kind}_us"] = round((time.perf_counter() - t0) / n * 1e6, 1)
    out["messages_per_s_one_core"] = round(2e6 / (out["discover_us"] + out["request_us"]))
    return out


def dhcp(lab, repeats: int = 3, seconds: float = 2.5, log=print) -> dict:
    api = lab.api_path
    t_setup = time.monotonic()
    names = [f"c{i}" for i in range(1, CAP_TENANTS + 1)]
    for n in names:
        call(api, "tenant.create", yaml=CAP.format(name=n))
    call(api, "tenant.create", yaml=NOISY)
    call(api, "tenant.create", yaml=CALM)
    shown = {n: {p["name"]: p for p in call(api, "tenant.show", name=n)["ports"]} for n in names + ["noisy", "calm"]}
    for ports in shown.values():
        for p in ports.values():
            subprocess.run(["ip", "netns", "exec", p["namespace"], "ip", "addr", "flush", "dev", "eth0"], check=True)

    def port(t, n, **kw):
        p = shown[t][n]
        return {"ns": p["namespace"], "mac": p["mac"], **kw}

    # every (tenant, host) pair once: hv1, hv2, hv3 of c1, then of c2, ...
    cap_ports = [port(n, f"p{h}", rate=CAP_RATE, timeout=1.0) for n in names for h in (1, 2, 3)]
    drive([dict(p, rate=5) for p in cap_ports] + [port("noisy", "a2", rate=5), port("calm", "b1", rate=5)],
          1.0)  # warm: ARP-free, but the datapath's flow caches and the controller's lookups
    log(f"[dhcp] {len(names) + 2} tenants, {len(cap_ports) + 3} workloads ready in "
        f"{time.monotonic() - t_setup:.1f}s")

    single = port("c1", "p1")
    runs: dict[str, list] = {"baseline": [], "greedy": [], **{f"cap_{n}": [] for n in CAP_STEPS},
                             "b_quiet": [], "b_flood": []}
    cpu: dict[str, list] = {k: [] for k in runs}
    for r in range(repeats):
        res, c = _measured(lab, lambda: drive([dict(single, rate=BASELINE_RATE, timeout=1.0)], seconds))
        runs["baseline"].append(_summary(res, seconds))
        cpu["baseline"].append(c)
        res, c = _measured(lab, lambda: drive([dict(single, window=GREEDY_WINDOW, timeout=GREEDY_TIMEOUT)],
                                              seconds))
        runs["greedy"].append(_summary(res, seconds))
        cpu["greedy"].append(c)
        for n in CAP_STEPS:
            res, c = _measured(lab, lambda: drive(cap_ports[:n], seconds))
            runs[f"cap_{n}"].append(_summary(res, seconds))
            cpu[f"cap_{n}"].append(c)
        calm = [port("calm", "b1", rate=CALM_RATE, timeout=1.0), port("noisy", "a2", rate=CALM_RATE, timeout=1.0)]
        res, c = _measured(lab, lambda: drive(calm, seconds))
        runs["b_quiet"].append({"b1": _summary(res[:1], seconds), "a2": _summary(res[1:], seconds)})
        cpu["b_quiet"].append(c)

        def flooded():
            flood = subprocess.Popen(_client_cmd({"ports": [port("noisy", "a1", rate=FLOOD_PPS, listen=False,
                                                                 timeout=0)], "seconds": seconds + 1.0}),
                                     cwd=ROOT, stdout=subprocess.PIPE, text=True)
            try:
                time.sleep(0.5)  # the flood is on before the first exchange
                res = drive(calm, seconds)
            finally:
                out, _ = flood.communicate(timeout=seconds + 60)
            sent = json.loads(out)["ports"][0] if out.strip() else {"discover": 0, "send_errors": 0}
            return res, round(sent["discover"] / (seconds + 1.0)), sent["send_errors"]
        (res, fpps, ferr), c = _measured(lab, flooded)
        runs["b_flood"].append({"b1": _summary(res[:1], seconds), "a2": _summary(res[1:], seconds),
                                "flood_sent_per_s": fpps, "flood_send_errors": ferr})
        cpu["b_flood"].append(c)
        log(f"[dhcp] repetition {r + 1}/{repeats}: one port {runs['greedy'][-1]['answers_per_s']} answers/s "
            f"(meter {CONTROL_PPS}/s), baseline p99 {runs['baseline'][-1]['p99_ms']} ms; "
            + ", ".join(f"{n} ports {runs[f'cap_{n}'][-1]['answers_per_s']}/s" for n in CAP_STEPS)
            + f"; calm p99 {runs['b_quiet'][-1]['b1']['p99_ms']} -> {runs['b_flood'][-1]['b1']['p99_ms']} ms "
              f"under {fpps} pps, answered {runs['b_flood'][-1]['b1']['answered_fraction']}; "
              f"noisy/a2 answered {runs['b_flood'][-1]['a2']['answered_fraction']}")

    def agg(rows, *keys):
        return {k: _spread([row[k] for row in rows]) for k in keys}

    fig = ("answers_per_s", "exchanges_per_s", "sent_per_s", "answered_fraction", "p50_ms", "p99_ms")
    med_cpu = {k: {p: _spread([c[p] for c in v])["median"] for p in v[0] if p != "settle_s"}
               for k, v in cpu.items()}
    out: dict = {"repeats": repeats, "seconds": seconds, "control_pps": CONTROL_PPS, "control_burst": CONTROL_BURST,
                 "handler": handler_cost()}
    base, greedy = agg(runs["baseline"], *fig), agg(runs["greedy"], *fig)
    out["single_port"] = {
        "baseline": {"rate_exchanges_per_s": BASELINE_RATE, **base},
        "greedy": {"window": GREEDY_WINDOW, "timeout_s": GREEDY_TIMEOUT, **greedy},
        "ratio_answers_to_control_pps": round(greedy["answers_per_s"]["median"] / CONTROL_PPS, 2),
        # what the meter lets through in `seconds` from a full bucket: the rate plus the burst
        "meter_allows_per_s": round(CONTROL_PPS + CONTROL_BURST / seconds, 1),
        "ratio_p99_greedy_to_baseline": round(greedy["p99_ms"]["median"] / base["p99_ms"]["median"], 2),
    }
    one = greedy["answers_per_s"]["median"]
    cap = {}
    for n in CAP_STEPS:
        a = agg(runs[f"cap_{n}"], *fig)
        cap[str(n)] = {"ports": n, "offered_per_s": round(n * CAP_RATE * 2, 1), **a,
                       "ratio_answers_to_offered": round(a["answers_per_s"]["median"] / (n * CAP_RATE * 2), 3),
                       "ratio_answers_to_n_single_port": round(a["answers_per_s"]["median"] / (n * one), 2),
                       "cpu_percent_median": med_cpu[f"cap_{n}"]}
    out["capacity"] = {"rate_exchanges_per_port": CAP_RATE, "steps": cap,
                       "max_answers_per_s": max(c["answers_per_s"]["median"] for c in cap.values()),
                       "ratio_max_to_control_pps": round(max(c["answers_per_s"]["median"] for c in cap.values())
                                                         / CONTROL_PPS, 1)}
    q = {k: agg([row[k] for row in runs["b_quiet"]], *fig) for k in ("b1", "a2")}
    f = {k: agg([row[k] for row in runs["b_flood"]], *fig) for k in ("b1", "a2")}
    out["flood"] = {
        "flood_pps_asked": FLOOD_PPS, "flood_sent_per_s": _spread([row["flood_sent_per_s"] for row in runs["b_flood"]]),
        "rate_exchanges_per_s": CALM_RATE,
        "calm_b1": {"quiet": q["b1"], "flood": f["b1"]},
        "noisy_a2": {"quiet": q["a2"], "flood": f["a2"]},
        "ratio_b1_p99_flood_to_quiet": round(f["b1"]["p99_ms"]["median"] / q["b1"]["p99_ms"]["median"], 2),
        "ratio_b1_answered_flood_to_quiet": round(f["b1"]["answered_fraction"]["median"]
                                                  / q["b1"]["answered_fraction"]["median"], 3),
        "cpu_percent_median": {"quiet": med_cpu["b_quiet"], "flood": med_cpu["b_flood"]},
    }
    out["cpu_percent_median"] = med_cpu
    # how long the controller took to work off the condition before (at most, per condition)
    out["settle_s_max"] = {k: max(c["settle_s"] for c in v) for k, v in cpu.items()}
    out["bench_seconds"] = round(time.monotonic() - t_setup, 1)
    out["runs"] = runs
    for n in names + ["noisy", "calm"]:
        call(api, "tenant.delete", name=n)
    return out


def report(res: dict) -> str:
    """The figures in a few lines: median (min-max) over the repetitions."""
    def f(s, unit=""):
        return "-" if s["median"] is None else f"{s['median']}{unit} ({s['min']}-{s['max']})"
    sp, cap, fl, h = res["single_port"], res["capacity"], res["flood"], res["handler"]
    g, b = sp["greedy"], sp["baseline"]
    lines = [
        f"handler alone (Punt.handle, this process): DISCOVER {h['discover_us']} us, REQUEST {h['request_us']} us "
        f"= {h['messages_per_s_one_core']} messages/s on one core",
        f"one port, as fast as it can ({g['window']} in flight): {f(g['answers_per_s'])} answers/s = "
        f"{sp['ratio_answers_to_control_pps']}x CONTROL_PPS {res['control_pps']} (the meter lets "
        f"{sp['meter_allows_per_s']}/s through from a full bucket); {f(g['exchanges_per_s'])} "
        f"exchanges/s; sent {f(g['sent_per_s'])}/s; p50 {f(g['p50_ms'], ' ms')}, p99 {f(g['p99_ms'], ' ms')}",
        f"  baseline {b['rate_exchanges_per_s']} exchanges/s: answered {f(b['answered_fraction'])}, "
        f"p50 {f(b['p50_ms'], ' ms')}, p99 {f(b['p99_ms'], ' ms')}; greedy p99 = "
        f"{sp['ratio_p99_greedy_to_baseline']}x baseline"]
    for c in cap["steps"].values():
        lines.append(f"{c['ports']:>3} ports x {cap['rate_exchanges_per_port']} exchanges/s (offered "
                     f"{c['offered_per_s']}/s): {f(c['answers_per_s'])} answers/s = {c['ratio_answers_to_offered']}x "
                     f"offered; answered {f(c['answered_fraction'])}; p99 {f(c['p99_ms'], ' ms')}; "
                     f"controller CPU {c['cpu_percent_median']['controller']}%")
    cb, na = fl["calm_b1"], fl["noisy_a2"]
    lines += [
        f"flood from noisy/a1 at {f(fl['flood_sent_per_s'])} DISCOVER/s (hv1):",
        f"  calm/b1 ({fl['rate_exchanges_per_s']}/s): answered {f(cb['quiet']['answered_fraction'])} -> "
        f"{f(cb['flood']['answered_fraction'])}; p99 {f(cb['quiet']['p99_ms'], ' ms')} -> "
        f"{f(cb['flood']['p99_ms'], ' ms')} = {fl['ratio_b1_p99_flood_to_quiet']}x",
        f"  noisy/a2 ({fl['rate_exchanges_per_s']}/s, shares a1's meter): answered "
        f"{f(na['quiet']['answered_fraction'])} -> {f(na['flood']['answered_fraction'])}",
        f"  hv1 ovs-vswitchd CPU {fl['cpu_percent_median']['quiet']['hv1']}% -> "
        f"{fl['cpu_percent_median']['flood']['hv1']}%, controller {fl['cpu_percent_median']['quiet']['controller']}%"
        f" -> {fl['cpu_percent_median']['flood']['controller']}%",
        f"({res['bench_seconds']} s, lab up not counted)"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.5)
    ap.add_argument("--json", action="store_true", help="everything, as JSON (bench.run stores it)")
    a = ap.parse_args(argv)
    from bench.freshlab import on_fresh_lab
    res = on_fresh_lab(lambda lab: dhcp(lab, a.repeats, a.seconds))
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=1) if a.json else report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
