"""Benchmark of `nvctl verify`'s engine on the synthetic deployment (bench/synth.py:
N tenants x 10 ports on N/10 hosts): a full proof sliced by tenant in os.cpu_count()
worker processes (median of 3), the re-check after a one-tenant change (median of
several, given to `Sliced.update_delta` as the compiler's diff), where the time goes in both, and as baselines measured in the same run the
full compile of the same topology and one proof over the whole tables in one process
(the verifier as it was before slicing).

    .venv/bin/python -m bench.verify_bench [--tenants 1000] [--hosts 100] [--repeats 3] [--workers N] [--no-whole]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from bench.synth import deployment, tenant_doc
from controller.compile.allocator import InUse, allocate
from controller.compile.compiler import compile_tenant, compile_world, paused_gc
from controller.compile.desired import tenant_delta
from controller.analysis.verify import Verifier, network_from_compiled, tenant_facts
from controller.analysis.verify_slice import Sliced
from topology.schema import validate

PORTS_PER_TENANT = 10


def _stats(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 4), "min": round(min(xs), 4), "max": round(max(xs), 4)}


def _one_tenant_change(hs, world, docs, flows, name: str, step: int):
    """Move one port of `name` to the next host: (changed host flow lists, the compiler's
    diff {host: HostDelta} of the tenant's flows, facts, refs)."""
    names = sorted(hs, key=lambda h: int(h[2:]))
    doc = json.loads(json.dumps(docs[name]))
    port = doc["spec"]["ports"][step % PORTS_PER_TENANT]
    port["host"] = names[(names.index(port["host"]) + 1 + step) % len(names)]
    t_old, a_old = world[name]
    used = InUse()
    t = validate(doc, hs.keys())
    # others' holdings: only ofports on hosts matter for a move; the tenant keeps the rest
    for other, (ot, oa) in world.items():
        if other != name:
            for p in ot.ports:
                if p.host in (port["host"],):
                    used.ofports.setdefault(p.host, set()).add(oa.ofport[p.name])
    used.vnis |= set()
    a = allocate(t, t_old, a_old, used)
    old_f = compile_tenant(t_old, a_old, hs)
    new_f = compile_tenant(t, a, hs)
    deltas = {h: d for h, d in tenant_delta(old_f, new_f).items() if d.removed or d.added or d.renamed}
    changed = {}
    for h in set(old_f) | set(new_f):
        o = {f.cookie for f in old_f.get(h, [])}
        n = {f.cookie for f in new_f.get(h, [])}
        if o != n:
            keep = [f for f in flows[h] if f.tenant_id != a.tenant_id]
            changed[h] = keep + new_f.get(h, [])
    facts, refs = tenant_facts(t, a, hs)
    docs[name] = doc
    world[name] = (t, a)
    return changed, deltas, facts, refs


@paused_gc()
def _full(hs, world, flows, workers, twins=True):
    net = network_from_compiled(hs, world, flows)
    v = Sliced(net, clock=time.perf_counter, workers=workers, twins=twins)
    return v, v.run()


@paused_gc()
def _whole(hs, world, flows):
    """The proof over the whole tables in one process (the verifier before slicing)."""
    net = network_from_compiled(hs, world, flows)
    return Verifier(net, clock=time.perf_counter).run()


def _where(timings: list) -> dict:
    """The median of each phase of the full runs (Sliced.timing)."""
    if not timings:
        return {}
    out = {}
    for k in timings[0]:
        xs = [t[k] for t in timings if k in t]
        v = statistics.median(xs)
        out[k] = round(v, 4) if isinstance(v, float) else v
    return out


def main(argv=None, log=print) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenants", type=int, default=1000)
    ap.add_argument("--hosts", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--changes", type=int, default=7)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-whole", action="store_true", help="skip the whole-tables baseline")
    args = ap.parse_args(argv)
    hs, world, docs = deployment(args.tenants, PORTS_PER_TENANT, args.hosts)
    t0 = time.perf_counter()
    compiled = compile_world(hs, world)
    compile_s = time.perf_counter() - t0
    flows = {h: list(fl.values()) for h, fl in compiled.items()}
    nflows = sum(len(v) for v in flows.values())
    log(f"[verify-bench] {args.tenants} tenants / {args.tenants * PORTS_PER_TENANT} ports / "
        f"{args.hosts} hosts, {nflows} flows; compile_world {compile_s:.2f}s")
    whole = None
    if not args.no_whole:
        t0 = time.perf_counter()
        wr = _whole(hs, world, flows)
        whole = time.perf_counter() - t0
        log(f"[verify-bench] whole tables, one process (before slicing): {whole:.2f}s, ok={wr.ok}, "
            f"{wr.checked}")
    fulls, report, verifier, timings = [], None, None, []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        verifier, report = _full(hs, world, flows, args.workers)
        fulls.append(time.perf_counter() - t0)
        timings.append(dict(verifier.timing))
        log(f"[verify-bench] full proof {i + 1}: {fulls[-1]:.2f}s, ok={report.ok}, "
            f"{len(report.violations)} violations, {report.checked}; "
            + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in verifier.timing.items()))
    # the same proof with every tenant checked itself: what a deployment of tenants that
    # are all different shapes costs (the synthetic one repeats its shapes: twins)
    t0 = time.perf_counter()
    _v, distinct_report = _full(hs, world, flows, args.workers, twins=False)
    distinct = time.perf_counter() - t0
    log(f"[verify-bench] full proof, no tenant given its twin's verdict: {distinct:.2f}s, ok={distinct_report.ok}, "
        f"{len(distinct_report.violations)} violations")
    del _v
    rechecks, update_timings = [], []
    for step in range(args.changes):
        name = f"t{(step * 37) % args.tenants}"
        changed, deltas, facts, refs = _one_tenant_change(hs, world, docs, flows, name, step)
        flows.update(changed)
        t0 = time.perf_counter()
        r = verifier.update_delta(name, deltas, facts, refs)  # the compiler's diff, as the controller has it
        rechecks.append(time.perf_counter() - t0)
        ut = {k: v for k, v in verifier.timing.items() if k.startswith("update_")}
        update_timings.append(ut)
        log(f"[verify-bench] re-check after {name} moved a port ({len(changed)} hosts changed): "
            f"{rechecks[-1] * 1000:.1f} ms, ok={r.ok}; "
            + ", ".join(f"{k} {v * 1000:.1f} ms" if isinstance(v, float) else f"{k} {v}" for k, v in ut.items()))
    out = {
        "tenants": args.tenants, "ports": args.tenants * PORTS_PER_TENANT, "hosts": args.hosts,
        "flows": nflows, "baseline_compile_world_s": round(compile_s, 3),
        "full_verify_s": _stats(fulls), "recheck_ms": {k: round(v * 1000, 2) for k, v in _stats(rechecks).items()},
        "workers": args.workers,
        "full_verify_every_tenant_itself_s": round(distinct, 3),
        "twin_tenants": verifier.timing.get("twinned") if verifier is not None else None,
        "baseline_whole_tables_s": round(whole, 3) if whole is not None else None,
        "ratio_full_to_whole_tables": round(statistics.median(fulls) / whole, 4) if whole else None,
        "where_full": _where(timings),
        "where_recheck_ms": {k: round(statistics.median([u[k] for u in update_timings]) * (1000 if k != "update_tenants" else 1), 2)
                             for k in (update_timings[0] if update_timings else {})},
        "ratio_full_to_compile": round(statistics.median(fulls) / compile_s, 2),
        "ratio_recheck_to_compile": round(statistics.median(rechecks) / compile_s, 5),
        "violations": len(report.violations) if report else None, "checked": report.checked if report else None,
        "targets": {"full_verify_s": 5.0, "recheck_ms": 10.0},
    }
    w = out["where_full"]
    if w.get("slices_cpu"):
        fixed = statistics.median(fulls) - w["slices"]  # what the workers do not share
        # at this per-tenant CPU, how many cores a 1 s full proof takes (perfect scaling)
        out["one_second_needs"] = {"fixed_s": round(fixed, 3), "slices_cpu_s": w["slices_cpu"],
                                   "cores_at_this_cost": round(w["slices_cpu"] / max(1.0 - fixed, 1e-3), 1),
                                   "tenant_cpu_ms_on_these_cores": round((1.0 - fixed) * args.workers / args.tenants * 1000, 2)
                                   if fixed < 1.0 else None}
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
