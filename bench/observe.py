"""What the counters cost (`python -m bench.run --only observe`).

1. Per refresh, in memory: a controller core holding the bench deployment (1,000 tenants,
   10,000 ports, 100 hosts), every host an in-memory switch with per-flow counters; one
   `stats` refresh of every tenant (`Core.stats_all`: one read per switch, split by
   cookie, attributed) and of one tenant, against the reconciler's read-back audit of
   the same switches in the same run (the baseline: what the controller already does
   on every connect and resync). Plus what os-ken's parsing of a real flow-stats reply
   adds per host (the in-memory switches skip the wire).
2. On a lab: the controller's CPU share (utime + stime from /proc) with nothing asked,
   then with a 1 s refresh of every tenant's `stats` and a `metrics` scrape, on a
   3-host lab with two 15-port tenants. Target: under 5 % of a core.
"""
from __future__ import annotations

import os
import statistics
import struct
import tempfile
import time

from bench.pure import PORTS_PER_TENANT, RecordingSwitch, stored_deployment
from bench.synth import deployment

CPU_TARGET = 0.05


class CountingSwitch(RecordingSwitch):
    """An in-memory br-int that also answers the counter reads, with a packet count per
    flow (kept across modify-in-place, as FakeSwitch keeps them)."""

    def flow_counts(self, cookie: int = 0, cookie_mask: int = 0):
        out = []
        for ident, f in self.table.items():
            if f.cookie & cookie_mask == cookie & cookie_mask:
                n = self.packets.get(ident, 0)
                out.append((f.cookie, n, n * 100))
        return out

    def meter_counts(self):
        return {m: (0, 0) for m in self.meter_bands}

    def group_counts(self):
        return {g: [(0, 0)] * len(obj.buckets) for g, obj in self.group_objs.items()}


def _spread(xs):
    xs = sorted(xs)
    return {"median": round(statistics.median(xs), 4), "min": round(xs[0], 4), "max": round(xs[-1], 4)}


def _stats_reply_bytes(flows) -> bytes:
    """An OFPMP_FLOW reply body for these flows, as OVS sends it (ofp_flow_stats entries
    with the match and instructions our flow-mods carry)."""
    from controller.switch import ofwire
    out = bytearray()
    for i, f in enumerate(flows):
        tail = ofwire.match_bytes(f.match) + ofwire.instructions_bytes(f.actions)
        length = 48 + len(tail)
        out += struct.pack("!HBxIIHHHH4xQQQ", length, f.table.number, 10, 0, f.priority, 0, 0, 0,
                           f.cookie, i, i * 100) + tail
    return bytes(out)


def parse_cost(flows, reps: int = 5) -> dict:
    """Seconds to parse one host's flow-stats reply of these flows for its counters: the
    entries as our reply parser leaves them (`ofcodec.LazyFlowStats`: header only), against
    os-ken's full parse of every match and instruction (the baseline, same bytes)."""
    from os_ken.ofproto import ofproto_v1_3_parser as parser
    from controller.switch.ofcodec import LazyFlowStats
    buf = _stats_reply_bytes(flows)
    got = {}
    for name, cls in (("lazy", LazyFlowStats), ("full", parser.OFPFlowStats)):
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            off, n, pk = 0, 0, 0
            while off < len(buf):
                st = cls.parser(buf, off)
                off += st.length
                pk += st.packet_count
                n += 1
            times.append(time.perf_counter() - t0)
        assert n == len(flows)
        got[name] = _spread([x * 1000 for x in times])
    return {"flows": len(flows), "lazy_ms": got["lazy"], "full_ms": got["full"],
            "ratio_lazy_over_full": round(got["lazy"]["median"] / got["full"]["median"], 4)}


def refresh(tenants: int = 1000, host_count: int = 100, reps: int = 5, log=print) -> dict:
    from controller.server.core import Core, freeze_heap
    hs, world, _ = deployment(tenants, PORTS_PER_TENANT, host_count)
    with tempfile.TemporaryDirectory() as tmp:
        store = stored_deployment(tmp, hs, world)
        core = Core(store)
        freeze_heap()  # as the controller process does once it has loaded its state
        switches = {name: CountingSwitch(rec.dpid) for name, rec in core.hosts.items()}
        for sw in switches.values():
            core.switch_connected(sw)
        for sw in switches.values():  # some traffic everywhere: counts are not all zero
            for i, ident in enumerate(sw.packets):
                sw.packets[ident] = i % 7
        all_t, one_t, audit_t = [], [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            reps_all = core.stats_all()
            all_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            core.stats("t7")
            one_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            core.audit_all()
            audit_t.append(time.perf_counter() - t0)
        flows_per_host = max(len(sw.table) for sw in switches.values())
        big = max(switches.values(), key=lambda sw: len(sw.table))
        parse = parse_cost(list(big.table.values()))
        counted = sum(p["sent"]["packets"] + p["received"]["packets"] for r in reps_all.values() for p in r["ports"])
        store.close()
    out = {"tenants": tenants, "ports": tenants * PORTS_PER_TENANT, "hosts": host_count,
           "flows_per_host_max": flows_per_host, "reports": len(reps_all), "port_packets_counted": counted,
           "refresh_all_seconds": _spread(all_t), "refresh_one_tenant_ms": _spread([x * 1000 for x in one_t]),
           "audit_all_seconds": _spread(audit_t),
           "ratio_refresh_all_over_audit": round(statistics.median(all_t) / statistics.median(audit_t), 3),
           "wire_parse_one_host": parse,
           "wire_parse_all_hosts_seconds_estimate": round(parse["lazy_ms"]["median"] * host_count / 1000, 3)}
    log(f"[bench] stats refresh of {tenants} tenants on {host_count} in-memory switches: "
        f"{out['refresh_all_seconds']['median']}s median ({out['refresh_all_seconds']['min']}-"
        f"{out['refresh_all_seconds']['max']}), one tenant {out['refresh_one_tenant_ms']['median']} ms; "
        f"audit of the same switches {out['audit_all_seconds']['median']}s "
        f"(ratio {out['ratio_refresh_all_over_audit']}); reply parse of {parse['flows']} flows per host: "
        f"{parse['lazy_ms']['median']:.1f} ms, os-ken's full parse {parse['full_ms']['median']:.1f} ms "
        f"({parse['ratio_lazy_over_full']}x)")
    return out


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu(pid: int) -> float:
    """CPU seconds of the controller and its children still alive (pyroute2 helpers)."""
    total = _cpu_seconds(pid)
    for d in os.listdir("/proc"):
        if d.isdigit() and d != str(pid):
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                if ppid == pid:
                    total += _cpu_seconds(int(d))
            except (OSError, ValueError, IndexError):
                continue
    return total


def cpu_share(lab, seconds: float = 15.0, reps: int = 3, log=print) -> dict:
    """The controller's CPU share idle and at a 1 s refresh (see the module's doc)."""
    from controller.client.api import call
    from scenarios.lab import _read_pid
    from topology.builder import tenant_yaml
    for name in ("blue", "red"):
        doc = tenant_yaml(name, "web", [(f"vm{i}", f"10.0.0.{10 + i}", f"hv{1 + i % 3}") for i in range(15)])
        doc = doc.replace("  ports:\n", "  acls:\n    - {name: no-ssh, priority: 10, direction: to-port, "
                                        "protocol: tcp, dstPorts: [22], action: deny}\n  ports:\n", 1)
        call(lab.api_path, "tenant.create", yaml=doc)
    lab.wait_synced(60)
    pid = _read_pid(os.path.join(lab.dir, "controller.pid"))
    idle, busy, per = [], [], []
    for _ in range(reps):
        c0, t0 = _tree_cpu(pid), time.monotonic()
        time.sleep(seconds)
        idle.append((_tree_cpu(pid) - c0) / (time.monotonic() - t0))
        c0, t0 = _tree_cpu(pid), time.monotonic()
        n = 0
        while time.monotonic() - t0 < seconds:
            tick = time.monotonic()
            for name in ("blue", "red"):
                call(lab.api_path, "stats", tenant=name)
            call(lab.api_path, "metrics")
            n += 1
            per.append(time.monotonic() - tick)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
        busy.append((_tree_cpu(pid) - c0) / (time.monotonic() - t0))
    out = {"hosts": 3, "tenants": 2, "ports": 30, "seconds_each": seconds, "reps": reps,
           "idle_share": _spread(idle), "refresh_share": _spread(busy),
           "added_share_median": round(statistics.median(busy) - statistics.median(idle), 4),
           "refresh_wall_ms": _spread([x * 1000 for x in per]), "target_share": CPU_TARGET,
           "met": statistics.median(busy) < CPU_TARGET}
    log(f"[bench] controller CPU at a 1 s stats+metrics refresh (3 hosts, 30 ports): "
        f"{out['refresh_share']['median'] * 100:.2f}% of a core (idle {out['idle_share']['median'] * 100:.2f}%); "
        f"one refresh {out['refresh_wall_ms']['median']:.0f} ms; target < {CPU_TARGET * 100:.0f}%")
    return out


def report(res: dict) -> str:
    r, c = res.get("refresh"), res.get("cpu")
    lines = []
    if r:
        lines.append(f"stats refresh, {r['tenants']} tenants / {r['hosts']} in-memory switches: "
                     f"{r['refresh_all_seconds']['median']} s ({r['ratio_refresh_all_over_audit']}x the audit "
                     f"of the same switches); one tenant {r['refresh_one_tenant_ms']['median']} ms")
    if c:
        lines.append(f"controller CPU at a 1 s refresh: {c['refresh_share']['median'] * 100:.2f}% "
                     f"(idle {c['idle_share']['median'] * 100:.2f}%), target < 5%: {'met' if c['met'] else 'MISSED'}")
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps({"refresh": refresh(*(map(int, sys.argv[1:3])) if len(sys.argv) > 2 else ())}, indent=1))
