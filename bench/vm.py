"""VMs (`workload: vm`) on the lab: boot to DHCP lease, and live migration by QEMU
against the same QEMU migration on a plain Linux bridge, with a namespace workload's
migration as a second comparison.

  boot           `port add --vm` to the guest's DHCP lease on its console, N times
  vm             M migrations of a VM hv1<->hv2 under a 10 ms ping from a namespace on
                 hv3: per migration, pings lost against QEMU's reported downtime of that
                 same migration (excess = lost - ceil(downtime / 10 ms)), the longest gap
                 between answered pings, the network's switch (announcement ->
                 destination delivering) and what activated the port
  bridge         the baseline: the same QEMU guest migrated A<->B M times on
                 scenarios/vmbridge.py (two namespaces, a Linux bridge each, one L2
                 segment, no platform) under a 10 ms ping from A's br0: the same figures.
                 QEMU's reported downtime is shorter than what a guest is unreachable for
                 even here, so what nvctl adds is its excess over the bridge's, not over 0
  vm_stream,     both again with a TCP stream as fast as it goes into the guest (from
  bridge_stream  ns3, from A): the same figures under load, and the stream's bytes in
                 the second before each migration and the second after it
  namespace      the same pings over M make-before-break migrations of a namespace
                 workload between the same hosts, in the same run

A migration's pings are those sent from 0.2 s before its start (the destination QEMU's
start included, on both sides) to 0.5 s after its end; 1 s of quiet follows each (2.5 s
under a stream). The bridge runs after the tenant is deleted, with the lab up and idle.

Run: `python -m bench.run --only vm` (root, a lab of its own, ~6 min).
"""
from __future__ import annotations

import math
import signal
import statistics
import subprocess
import sys
import threading
import time

from controller.client.api import ApiClientError, call
from scenarios.netutil import PingTimeline
from scenarios.vms import LEASE_WAIT, guest, lost_between
from tep import vm
from tep.vm import VmError
from topology.builder import port, tenant_doc

SINK = 9001
INTERVAL_MS = 10
SPACING = 1.0  # seconds of quiet after each migration
# a TCP sender in a namespace: writes 16 KiB chunks until SIGINT, prints a line per
# 100 ms with the bytes the socket took by then (what the guest's window let through)
SENDER = r"""
import socket, sys, time
ip, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((ip, port), timeout=5)
s.settimeout(60)
chunk = b"x" * 16384
sent = 0; mark = time.time()
try:
    while True:
        sent += s.send(chunk)
        now = time.time()
        if now - mark >= 0.1:
            print(f"{now:.3f} {sent}", flush=True); mark = now
except KeyboardInterrupt:
    pass
except OSError as e:
    print(f"error {e}", flush=True)
print(f"{time.time():.3f} {sent}", flush=True)
"""


class _Ping(PingTimeline):
    """PingTimeline for as long as it takes: started with room to spare, ended by
    done() (then result() does not wait for the time it was given)."""

    def __init__(self, ns: str, ip: str, most: float = 900.0):
        super().__init__(ns, ip, most, interval=INTERVAL_MS / 1000)

    def done(self) -> dict:
        self.seconds = time.time() - self.started
        return self.result()


def _spread(xs) -> dict:
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"median": None}
    return {"median": round(statistics.median(xs), 2), "mean": round(statistics.fmean(xs), 2),
            "min": round(min(xs), 2), "max": round(max(xs), 2), "n": len(xs)}


def _longest_gap_ms(timeline: dict, start: float, end: float) -> float | None:
    """The longest time between two answered probes (their send times) around [start, end)."""
    got = [t for t, rtt in timeline["samples"] if rtt is not None]
    before = [t for t in got if t < start]
    inside = [t for t in got if start <= t < end]
    after = [t for t in got if t >= end]
    ts = before[-1:] + inside + after[:1]
    return round(max((b - a for a, b in zip(ts, ts[1:])), default=0.0) * 1000, 1) if len(ts) > 1 else None


def _under_ping(ns: str, ip: str, moves: int, move, spacing: float = SPACING,
                lead: float = 1.5) -> tuple[dict, list, list]:
    """`move(i)` `moves` times under a 10 ms ping from namespace `ns` to `ip`, `spacing`
    s of quiet after each: (the ping's timeline, [(start, end) in the ping's seconds,
    (start, end) wall clock], [what each move returned])."""
    ping = _Ping(ns, ip)
    try:
        time.sleep(lead)
        marks, results = [], []
        for i in range(moves):
            w0 = time.time()
            r = move(i)
            w1 = time.time()
            marks.append((w0 - ping.started, w1 - ping.started, w0, w1))
            results.append(r)
            time.sleep(spacing)
        return ping.done(), marks, results
    finally:
        ping.stop()


def _loss(timeline: dict, a: float, b: float, downtime_ms: float | None) -> dict:
    lost = lost_between(timeline, a - 0.2, b + 0.5)
    row = {"lost": lost, "longest_gap_ms": _longest_gap_ms(timeline, a - 0.2, b + 0.5)}
    if downtime_ms is not None:
        down = math.ceil(downtime_ms / INTERVAL_MS)
        row.update(qemu_downtime_ms=downtime_ms, downtime_intervals=down, excess_intervals=lost - down)
    return row


def _summary(timeline: dict, per: list[dict], moves: int) -> dict:
    out = {"moves": moves, "pings_sent": timeline["sent"], "pings_lost": timeline["lost"],
           "lost_in_windows": sum(p["lost"] for p in per), "lost_per_move": _spread([p["lost"] for p in per]),
           "longest_gap_ms": _spread([p["longest_gap_ms"] for p in per])}
    if per and "qemu_downtime_ms" in per[0]:
        out.update(qemu_downtime_ms=_spread([p["qemu_downtime_ms"] for p in per]),
                   qemu_total_ms=_spread([p.get("qemu_total_ms") for p in per]),
                   excess_intervals=_spread([p["excess_intervals"] for p in per]),
                   target="pings lost per migration <= QEMU's downtime in 10 ms intervals + 1",
                   within_target=sum(1 for p in per if p["excess_intervals"] <= 1))
    ups = [p.get("guest_uptime_s") for p in per]
    if any(u is not None for u in ups):
        # the guest's kernel started again (a panic reboots it: panic=1) where its uptime
        # went down: at the first move after its last reading before that (its agent may
        # not answer in between: `guest_silent_after_moves`)
        restarts, last = [], None
        for i, u in enumerate(ups):
            if u is None:
                continue
            if last is not None and u < last[1]:
                restarts.append(last[0] + 2)
            last = (i, u)
        out["guest_restarted_at_moves"] = restarts
        out["guest_silent_after_moves"] = [i + 1 for i, u in enumerate(ups) if u is None]
    out["retried_moves"] = [i + 1 for i, p in enumerate(per) if "retried_after" in p]
    return out


def _doc() -> str:
    return tenant_doc("bv", switches=[{"name": "web", "cidr": "10.0.0.0/24"}],
                      ports=[port("vm1", "web", "10.0.0.11", "hv1", workload="vm"),
                             port("ns2", "web", "10.0.0.12", "hv1"),
                             port("ns3", "web", "10.0.0.13", "hv3")])


def boot(lab, reps: int = 5, log=print) -> dict:
    """`port add --vm` to the lease on the guest's console, `reps` times (one guest at a time)."""
    api = lab.api_path
    times = []
    for i in range(reps):
        t0 = time.monotonic()
        call(api, "port.add", tenant="bv", switch="web", name=f"boot{i}", host="hv2", workload="vm")
        g = guest(api, "bv", f"boot{i}")
        g.wait_console("nvctl guest lease", LEASE_WAIT)
        times.append(time.monotonic() - t0)
        call(api, "port.del", tenant="bv", port=f"boot{i}")
        log(f"[bench] vm boot {i + 1}/{reps}: lease after {times[-1]:.2f} s")
    return {"seconds": _spread(times), "all": [round(t, 2) for t in times]}


class _Stream:
    """A TCP stream as fast as it goes from namespace `ns` into a sink in guest `g` at
    `ip` (busybox nc, one `cat >/dev/null` per connection): the sender's progress
    reports, read as they come; stop() ends the sender (by its pid) whatever happens."""

    def __init__(self, ns: str, ip: str, g):
        rc, out = g.run("printf '#!/bin/sh\\nexec cat >/dev/null\\n' >/tmp/sink && chmod +x /tmp/sink && "
                        "cat /tmp/sink")
        if rc != 0 or "exec cat" not in out:
            raise RuntimeError(f"{g.name}: the sink script: {out}")
        g.spawn(f"nc -ll -p {SINK} -e /tmp/sink")
        deadline = time.monotonic() + 10
        while g.run(f"netstat -ltn | grep -q ':{SINK} '")[0] != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{g.name}: nothing listens on {SINK}")
            time.sleep(0.1)
        self.out: list[str] = []
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SENDER, ip, str(SINK)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.reader = threading.Thread(target=lambda: self.out.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # it prints its total and ends
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(5)

    def lines(self) -> list[tuple[float, int]]:
        return [(float(a), int(b)) for a, b in (ln.split() for ln in self.out if ln[:1].isdigit())]

    def error(self) -> str | None:
        errors = [ln.strip() for ln in self.out if ln.strip() and not ln[:1].isdigit()]
        return errors[-1] if errors else None

    def around(self, row: dict, w0: float, w1: float) -> None:
        """The bytes in the second before a migration began and the second after it ended."""
        lines = self.lines()
        row.update(stream_bytes_before=_bytes_between(lines, w0 - 1.0, w0),
                   stream_bytes_after=_bytes_between(lines, w1, w1 + 1.0))

    def summary(self, per: list[dict]) -> dict:
        lines = self.lines()
        return {"stream_bytes_total": lines[-1][1] if lines else 0, "stream_error": self.error(),
                "stream_kbytes_per_s_before": _spread([p["stream_bytes_before"] / 1e3 for p in per
                                                       if p["stream_bytes_before"] is not None]),
                "stream_kbytes_per_s_after": _spread([p["stream_bytes_after"] / 1e3 for p in per
                                                      if p["stream_bytes_after"] is not None])}


def _settled(g, timeout: float = 30) -> dict:
    """query-migrate on a source once its migration is no longer under way."""
    deadline = time.monotonic() + timeout
    info: dict = {}
    while time.monotonic() < deadline:
        try:
            info = g.qmp("query-migrate")
            if info.get("status") not in ("setup", "active", "pre-switchover", "device", "cancelling"):
                return info
        except (OSError, VmError):
            pass
        time.sleep(0.05)
    return info


def _uptime(g) -> float | None:
    """The guest kernel's uptime (s) by its agent, None if it does not answer."""
    try:
        rc, out = g.run("cat /proc/uptime", timeout=5)
        return float(out.split()[0]) if rc == 0 else None
    except (OSError, ValueError, IndexError, VmError):
        return None


def _bytes_between(lines: list[tuple[float, int]], t0: float, t1: float) -> int | None:
    """Bytes the sender got through between two times (its last report at or before each)."""
    def at(x):
        best = None
        for ts, n in lines:
            if ts <= x:
                best = n
        return best
    a, b = at(t0), at(t1)
    return None if a is None or b is None else b - a


def migrations(lab, moves: int = 10, port_name: str = "vm1", stream: bool = False, log=print) -> dict:
    """`moves` migrations of `port_name` hv1<->hv2 under a 10 ms ping from ns3 (hv3)
    and, with `stream` (a VM only), a TCP stream from ns3 into it (then 2.5 s apart,
    so that one migration's second after is not the next one's second before)."""
    api = lab.api_path
    ports = {p["name"]: p for p in call(api, "tenant.show", name="bv")["ports"]}
    ns3 = ports["ns3"]["namespace"]
    is_vm = port_name == "vm1"
    ip = ports[port_name]["ip"]
    if ports[port_name]["host"] != "hv1":
        call(api, "port.migrate", tenant="bv", port=port_name, to="hv1", timeout=180)
    tcp = _Stream(ns3, ip, guest(api, "bv", port_name)) if stream else None

    def move(i):
        to = "hv2" if i % 2 == 0 else "hv1"
        try:
            r = call(api, "port.migrate", tenant="bv", port=port_name, to=to, timeout=180)
        except ApiClientError as e:  # a failed copy leaves the VM where it was: once more
            log(f"[bench] {port_name} migration {i + 1} to {to} failed, again: {e}")
            time.sleep(0.5)
            r = {**call(api, "port.migrate", tenant="bv", port=port_name, to=to, timeout=180), "retried": str(e)}
        if is_vm:
            g = guest(api, "bv", port_name)
            r["guest_uptime_s"] = _uptime(g)
            if r["guest_uptime_s"] is None:  # the guest's agent is silent: what its console says
                r["console_tail"] = g.console_text()[-3000:]
        return r

    try:
        timeline, marks, results = _under_ping(ns3, ip, moves, move, spacing=2.5 if stream else SPACING)
    finally:
        if tcp is not None:
            tcp.stop()
    per = []
    label = f"{port_name}{' under a TCP stream' if stream else ''}"
    for (a, b, w0, w1), r in zip(marks, results):
        row = _loss(timeline, a, b, r["qemu"]["downtime_ms"] if is_vm else None)
        if is_vm:
            row.update(qemu_total_ms=r["qemu"]["total_ms"], copy_ms=r["timings_ms"].get("copy"),
                       network_ms=r["timings_ms"].get("announcement_to_destination_ready"),
                       activated_by=r["activated_by"], guest_uptime_s=r["guest_uptime_s"])
        if "retried" in r:
            row["retried_after"] = r["retried"]
        if "console_tail" in r:
            row["console_tail"] = r["console_tail"]
        else:
            row.update(switch_window_ms=r["timings_ms"]["switch_window"])
        if tcp is not None:
            tcp.around(row, w0, w1)
        per.append(row)
        log(f"[bench] {label} migration {len(per)}/{moves}: {row}")
    out = {**_summary(timeline, per, moves), "per_move": per}
    if is_vm:
        out.update(network_ms=_spread([p["network_ms"] for p in per]),
                   activated_by=sorted({str(p["activated_by"]) for p in per}))
    else:
        out["switch_window_ms"] = _spread([p["switch_window_ms"] for p in per])
    if tcp is not None:
        out.update(tcp.summary(per))
    return out


def bridge(moves: int = 10, stream: bool = False, log=print) -> dict:
    """The baseline: one guest migrated A->B->A... `moves` times on the plain bridge
    testbed (scenarios/vmbridge.py) under a 10 ms ping from A's br0 and, with `stream`,
    a TCP stream from A into it (as migrations() does); everything it made removed
    afterwards."""
    from scenarios import vmbridge as vb
    h = vb.Hosts(prefix="vmb")
    tcp = None
    try:
        h.setup()
        t0 = time.monotonic()
        cur = {"g": vb.boot(h, "g0"), "ns": h.a}
        booted = time.monotonic() - t0
        if stream:
            tcp = _Stream(h.a, vb.GUEST_IP, cur["g"])

        def move(i):
            dst_ns = h.b if cur["ns"] == h.a else h.a
            uri = h.uri(dst_ns)
            retried = None
            for attempt in (1, 2):  # a failed copy leaves the source running: once more
                dst = h.guest(f"g{i + 1}" + ("" if attempt == 1 else "-again"))
                dst.start(dst_ns, "tap0", vb.MAC, incoming=uri)
                try:
                    r = cur["g"].migrate(uri)
                    break
                except VmError as e:
                    # (the error may be the poll's, not the copy's: wait for the copy's end)
                    info = _settled(cur["g"])
                    if info.get("status") == "completed":
                        r = {**vm._migration_summary(info), "retried": f"(completed after) {e}"}
                        break
                    dst.stop()
                    if attempt == 2 or cur["g"].state() != "running":
                        raise
                    retried = str(e)
                    log(f"[bench] bridge migration {i + 1} failed, again: {e}")
                    time.sleep(0.5)
            cur["g"].stop()  # the paused source, as the lab's driver does after a completed copy
            cur.update(g=dst, ns=dst_ns)
            up = _uptime(dst)
            return {**r, "guest_uptime_s": up, **({"console_tail": dst.console_text()[-3000:]} if up is None else {}),
                    **({"retried": retried} if retried else {})}

        try:
            timeline, marks, results = _under_ping(h.a, vb.GUEST_IP, moves, move, spacing=2.5 if stream else SPACING)
        finally:
            if tcp is not None:
                tcp.stop()
        rc, out = cur["g"].run(f"ip -o -4 addr show eth0 | grep -c {vb.GUEST_IP}/24")
        if rc != 0 or cur["g"].state() != "running":
            raise RuntimeError(f"the bridge guest after {moves} migrations: {cur['g'].state()}, {out}")
    finally:
        h.close()
    per = []
    label = f"bridge{' under a TCP stream' if stream else ''}"
    for (a, b, w0, w1), r in zip(marks, results):
        row = _loss(timeline, a, b, r["downtime_ms"])
        row.update(qemu_total_ms=r["total_ms"], mb_sent=round((r["ram_transferred"] or 0) / 1e6, 1),
                   guest_uptime_s=r["guest_uptime_s"])
        if "retried" in r:
            row["retried_after"] = r["retried"]
        if "console_tail" in r:
            row["console_tail"] = r["console_tail"]
        if tcp is not None:
            tcp.around(row, w0, w1)
        per.append(row)
        log(f"[bench] {label} migration {len(per)}/{moves}: {row}")
    out = {**_summary(timeline, per, moves), "boot_to_agent_s": round(booted, 2), "per_move": per}
    if tcp is not None:
        out.update(tcp.summary(per))
    return out


def _ratio(a, b, digits: int = 2):
    return round(a / b, digits) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def _diff(a, b):
    return round(a - b, 2) if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None


def _med(d: dict, k: str):
    return (d.get(k) or {}).get("median")


def vm_bench(lab, boots: int = 5, moves: int = 10, bridge_moves: int | None = None, log=print) -> dict:
    """Boot, then the VM's migrations (ping only, then under a TCP stream) and the
    namespace's on the lab; the tenant deleted, the bridge baseline (ping only, then
    under a stream) with the lab up but idle (no guest, no workload: the same machine)."""
    bm = moves if bridge_moves is None else bridge_moves
    call(lab.api_path, "tenant.create", yaml=_doc())
    g = guest(lab.api_path, "bv", "vm1")
    g.wait_console("nvctl guest lease", LEASE_WAIT)
    res = {"boot": boot(lab, boots, log), "vm": migrations(lab, moves, "vm1", log=log),
           "vm_stream": migrations(lab, moves, "vm1", stream=True, log=log),
           "namespace": migrations(lab, moves, "ns2", log=log)}
    call(lab.api_path, "tenant.delete", name="bv")
    res["bridge"] = bridge(bm, log=log)
    res["bridge_stream"] = bridge(bm, stream=True, log=log)
    v, vs, n, b, bs = res["vm"], res["vm_stream"], res["namespace"], res["bridge"], res["bridge_stream"]
    res["ratios"] = {
        "vm_lost_per_move_over_namespace": _ratio(_med(v, "lost_per_move"), _med(n, "lost_per_move")),
        "vm_stream_after_over_before": _ratio(_med(vs, "stream_kbytes_per_s_after"),
                                              _med(vs, "stream_kbytes_per_s_before")),
        # against the same QEMU migration on a plain bridge (medians per migration; a
        # ratio is left out when the bridge's figure is 0, the difference never is)
        "vm_lost_per_move_over_bridge": _ratio(_med(v, "lost_per_move"), _med(b, "lost_per_move")),
        "vm_lost_total_over_bridge": _ratio(v["lost_in_windows"], b["lost_in_windows"]),
        "vm_excess_over_bridge": _ratio(_med(v, "excess_intervals"), _med(b, "excess_intervals")),
        "vm_lost_per_move_minus_bridge_intervals": _diff(_med(v, "lost_per_move"), _med(b, "lost_per_move")),
        "vm_excess_minus_bridge_intervals": _diff(_med(v, "excess_intervals"), _med(b, "excess_intervals")),
        "vm_longest_gap_over_bridge": _ratio(_med(v, "longest_gap_ms"), _med(b, "longest_gap_ms")),
        "vm_qemu_downtime_over_bridge": _ratio(_med(v, "qemu_downtime_ms"), _med(b, "qemu_downtime_ms")),
        # the same under a TCP stream into the guest, on both sides
        "vm_stream_lost_per_move_over_bridge_stream": _ratio(_med(vs, "lost_per_move"), _med(bs, "lost_per_move")),
        "vm_stream_excess_minus_bridge_stream_intervals": _diff(_med(vs, "excess_intervals"),
                                                                _med(bs, "excess_intervals")),
        "bridge_stream_after_over_before": _ratio(_med(bs, "stream_kbytes_per_s_after"),
                                                  _med(bs, "stream_kbytes_per_s_before")),
    }
    return res


def _signed(x) -> str:
    return "n/a" if x is None else f"{x:+g}"


def _fmt(s: dict | None, unit: str = "") -> str:
    if not s or s.get("median") is None:
        return "n/a"
    return f"{s['median']}{unit} ({s['min']}-{s['max']}, n={s['n']})"


def report(res: dict) -> str:
    b, n, r = res["boot"]["seconds"], res["namespace"], res["ratios"]
    lines = [f"[bench] VM boot to DHCP lease: median {_fmt(b, ' s')}"]
    for name, x in (("nvctl VM", res["vm"]), ("plain bridge", res["bridge"]),
                    ("nvctl VM under a TCP stream", res["vm_stream"]),
                    ("plain bridge under a TCP stream", res["bridge_stream"])):
        lines.append(
            f"[bench] {name}, migration x{x['moves']}: pings lost per move {_fmt(x['lost_per_move'])} "
            f"({x['lost_in_windows']} in all); QEMU downtime {_fmt(x['qemu_downtime_ms'], ' ms')}; excess "
            f"(lost - ceil(downtime/10 ms)) {_fmt(x['excess_intervals'])}; longest reply gap "
            f"{_fmt(x['longest_gap_ms'], ' ms')}; QEMU total {_fmt(x['qemu_total_ms'], ' ms')}; within target "
            f"{x['within_target']}/{x['moves']}"
            + (f"; stream {_med(x, 'stream_kbytes_per_s_before')} kB/s in the second before, "
               f"{_med(x, 'stream_kbytes_per_s_after')} in the second after"
               + (f" (sender: {x['stream_error']})" if x.get("stream_error") else "") if "stream_bytes_total" in x
               else "")
            + (f"; THE GUEST RESTARTED at move(s) {x['guest_restarted_at_moves']}"
               if x.get("guest_restarted_at_moves") else "")
            + (f"; its agent silent after move(s) {x['guest_silent_after_moves']}"
               if x.get("guest_silent_after_moves") else "")
            + (f"; retried move(s) {x['retried_moves']}" if x.get("retried_moves") else ""))
    lines += [
        f"[bench] nvctl against the bridge: lost per move x{r['vm_lost_per_move_over_bridge']} "
        f"({_signed(r['vm_lost_per_move_minus_bridge_intervals'])} intervals), "
        f"total lost x{r['vm_lost_total_over_bridge']}, "
        f"excess x{r['vm_excess_over_bridge']} ({_signed(r['vm_excess_minus_bridge_intervals'])} intervals); "
        f"under a stream: lost per move x{r['vm_stream_lost_per_move_over_bridge_stream']}, excess "
        f"{_signed(r['vm_stream_excess_minus_bridge_stream_intervals'])} intervals; network switch "
        f"{_fmt(res['vm']['network_ms'], ' ms')}; activated by {', '.join(res['vm']['activated_by'])}",
        f"[bench] namespace migration x{n['moves']}: pings lost per move {_fmt(n['lost_per_move'])}; switch window "
        f"{_fmt(n['switch_window_ms'], ' ms')}"]
    return "\n".join(lines)
