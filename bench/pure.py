"""Benchmarks of the controller without switches: compile scaling, a one-port change in a
large deployment, and memory. Each reports raw figures and a ratio to a baseline
measured in the same run."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time

from bench.synth import deployment
from controller.compile.compiler import compile_world
from controller.switch.fake import FakeSwitch

PORTS_PER_TENANT = 10


def _fit_exponent(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) over log(x): y ~ x^k."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def compile_scaling(sizes=(62, 125, 250, 500, 1000), log=print) -> dict:
    """Full compile of N tenants x 10 ports on N/10 hosts, N up to 1,000 (10,000 ports)."""
    rows = []
    for n in sizes:
        host_count = max(2, n // 10)
        hs, world, _ = deployment(n, PORTS_PER_TENANT, host_count)
        t0 = time.perf_counter()
        flows = compile_world(hs, world)
        dt = time.perf_counter() - t0
        per_host = [len(v) for v in flows.values()]
        rows.append({"tenants": n, "ports": n * PORTS_PER_TENANT, "hosts": host_count,
                     "seconds": round(dt, 3), "flows": sum(per_host),
                     "flows_per_host_mean": round(sum(per_host) / len(per_host)),
                     "flows_per_host_max": max(per_host)})
        log(f"[bench] compile {n} tenants / {n * PORTS_PER_TENANT} ports / {host_count} hosts: "
            f"{dt:.2f}s, {sum(per_host)} flows, {max(per_host)} max per host")
    k = _fit_exponent([r["ports"] for r in rows], [r["seconds"] for r in rows])
    base = rows[0]
    return {"rows": rows, "exponent": round(k, 2),
            "ratio_largest_to_smallest": round(rows[-1]["seconds"] / base["seconds"], 1),
            "size_ratio": rows[-1]["ports"] / base["ports"],
            "target_seconds": 1.0, "largest_seconds": rows[-1]["seconds"]}


def _yaml(doc: dict) -> str:
    import yaml
    return yaml.safe_dump(doc, sort_keys=False)


class RecordingSwitch(FakeSwitch):
    """An in-memory stand-in for one br-int (OpenFlow's replace-on-ADD semantics, from the
    tests), for timing the controller's own work; it counts what it was sent. What OVS
    does with the messages is measured elsewhere (bench/live.py)."""


def stored_deployment(tmp: str, hs: dict, world: dict):
    """A SQLite store in `tmp` holding these hosts and tenants, as a controller finds them."""
    from controller.state.store import HostRecord, SqliteStore
    from topology import schema
    store = SqliteStore(os.path.join(tmp, "desired.db"))
    for i, h in enumerate(hs.values()):
        store.put_host(HostRecord(h.name, h.pa, 0x1000 + i, {"kind": "bench"}))
    for name, (t, a) in world.items():
        store.put_tenant(name, schema.to_doc(t), a.to_json(), None)
    return store


def one_port_change(tenants: int = 1000, host_count: int = 100, repeats: int = 20, log=print) -> dict:
    """A controller core holding the whole deployment, every host connected (an
    in-memory switch per host, synced first); move one port of one tenant to another
    host, `repeats` times. Time per change, from the YAML text to the flow-mods handed
    to the switches, and the hosts that were sent any, against a full recompile in the
    same process."""
    from controller.server.core import Core, freeze_heap

    hs, world, docs = deployment(tenants, PORTS_PER_TENANT, host_count)
    with tempfile.TemporaryDirectory() as tmp:
        store = stored_deployment(tmp, hs, world)
        t0 = time.perf_counter()
        core = Core(store)  # a full compile from the store, as at controller start
        full_start = time.perf_counter() - t0
        core.guard.enabled = False  # the change path alone first; verify before install after
        switches = {name: RecordingSwitch(rec.dpid) for name, rec in core.hosts.items()}
        t0 = time.perf_counter()
        for sw in switches.values():
            core.switch_connected(sw)  # the first sync sends each host everything
        first_sync = time.perf_counter() - t0
        t0 = time.perf_counter()
        core._recompile_all()
        full = time.perf_counter() - t0
        freeze_heap()  # as the controller process does once it has loaded its state
        names = sorted(hs, key=lambda h: int(h[2:]))
        times, touched, mods = [], [], []

        def move(r):
            tname = f"t{(r * 37) % tenants}"
            doc = docs[tname]
            port = doc["spec"]["ports"][r % PORTS_PER_TENANT]
            port["host"] = names[(names.index(port["host"]) + 1 + r) % len(names)]
            return _yaml(doc)
        for r in range(repeats):
            text = move(r)
            sent = {h: sw.flow_mods for h, sw in switches.items()}
            t0 = time.perf_counter()
            core.apply(text)
            times.append(time.perf_counter() - t0)
            got = {h: sw.flow_mods - sent[h] for h, sw in switches.items() if sw.flow_mods != sent[h]}
            touched.append(len(got))
            mods.append(sum(got.values()))
        # verify before install (controller.server.guard, on by default in the controller):
        # its proof of the whole desired state, built once, then the same kind of changes
        core.guard.enabled = True
        t0 = time.perf_counter()
        core.guard._build(core)
        proof_build = time.perf_counter() - t0
        guarded, proof_ms, refused = [], [], 0
        for r in range(repeats, 2 * repeats):
            text = move(r)
            t0 = time.perf_counter()
            out = core.apply(text)
            guarded.append(time.perf_counter() - t0)
            proof_ms.append(out["verified"]["ms"])
            refused += out["verified"]["result"] != "ok"
        in_sync = all(sw.table == core.desired[h] for h, sw in switches.items())
        store.close()
    times.sort()
    med = times[len(times) // 2]
    out = {"tenants": tenants, "ports": tenants * PORTS_PER_TENANT, "hosts": host_count,
           "change_ms_median": round(med * 1000, 2), "change_ms_min": round(times[0] * 1000, 2),
           "change_ms_p90": round(times[int(len(times) * 0.9)] * 1000, 2), "change_ms_max": round(times[-1] * 1000, 2),
           "repeats": repeats,
           "hosts_touched_median": sorted(touched)[len(touched) // 2], "hosts_touched_max": max(touched),
           "flow_changes_median": sorted(mods)[len(mods) // 2],
           "switches_in_sync_after": in_sync, "first_sync_all_hosts_ms": round(first_sync * 1000, 1),
           "full_recompile_ms": round(full * 1000, 1), "controller_start_ms": round(full_start * 1000, 1),
           "ratio_change_to_full": round(med / full, 4), "target_ms": 5.0}
    guarded.sort()
    proof_ms.sort()
    gmed = guarded[len(guarded) // 2]
    out["verify_before_install"] = {
        "change_ms_median": round(gmed * 1000, 2), "change_ms_min": round(guarded[0] * 1000, 2),
        "change_ms_max": round(guarded[-1] * 1000, 2),
        "proof_ms_median": proof_ms[len(proof_ms) // 2], "proof_ms_min": proof_ms[0], "proof_ms_max": proof_ms[-1],
        "over_unguarded": round(gmed / med, 2), "refused": refused,
        "proof_build_s": round(proof_build, 2)}
    log(f"[bench] one-port change: median {out['change_ms_median']} ms ({out['change_ms_min']}-{out['change_ms_max']}), "
        f"flow-mods sent to {out['hosts_touched_median']} of {host_count} hosts, {out['flow_changes_median']} "
        f"flow-mods; switches in sync after: {in_sync}; full recompile {out['full_recompile_ms']} ms")
    g = out["verify_before_install"]
    log(f"[bench] the same changes proved before install: median {g['change_ms_median']} ms "
        f"({g['change_ms_min']}-{g['change_ms_max']}), of it the proof {g['proof_ms_median']} ms "
        f"({g['proof_ms_min']}-{g['proof_ms_max']}); {g['over_unguarded']}x the change alone; "
        f"{g['refused']} refused; the proof built once in {g['proof_build_s']} s")
    return out


MEMORY_SCRIPT = """
import json, os, sys, tempfile
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
from bench.synth import deployment
from controller.server.core import Core
from controller.state.store import HostRecord, SqliteStore
from topology import schema
base = rss()
tenants, hosts = int(sys.argv[1]), int(sys.argv[2])
hs, world, docs = deployment(tenants, 10, hosts)
tmp = tempfile.mkdtemp()
store = SqliteStore(os.path.join(tmp, "desired.db"))
for i, h in enumerate(hs.values()):
    store.put_host(HostRecord(h.name, h.pa, 0x1000 + i, {"kind": "bench"}))
for name, (t, a) in world.items():
    store.put_tenant(name, schema.to_doc(t), a.to_json(), None)
del hs, world, docs
core = Core(store)
flows = sum(len(d) for d in core.desired.values())
print(json.dumps({"baseline_mb": round(base, 1), "loaded_mb": round(rss(), 1), "flows": flows}))
store.close()
import shutil; shutil.rmtree(tmp)
"""


def memory(tenants: int = 1000, host_count: int = 100, log=print) -> dict:
    """RSS of a fresh process holding the controller core for the deployment, against
    the same process after its imports (the baseline)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tenants), str(host_count)],
                       capture_output=True, text=True, cwd=root, timeout=600, check=True)
    import json
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r.update(tenants=tenants, ports=tenants * PORTS_PER_TENANT, hosts=host_count, target_mb=300,
             ratio_to_baseline=round(r["loaded_mb"] / r["baseline_mb"], 1))
    log(f"[bench] memory with {r['ports']} ports: {r['loaded_mb']} MB RSS "
        f"(baseline after imports {r['baseline_mb']} MB), {r['flows']} desired flows")
    return r

