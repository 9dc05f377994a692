"""CNI ADD and DEL latency of `nvctl-cni` against Debian's stock `bridge` + `host-local`,
in the same run, and 50 concurrent ADDs to all-pairs reachability.

Each plugin is run the way libcni runs it (CNI_COMMAND and friends in the environment,
the network configuration on stdin) for containers that are network namespaces made
here (`ip netns add`), so the figures are the plugins' own, not a runtime's. The stock
pair gets a Linux bridge of its own in a namespace of its own (nothing in the root
namespace). Reported: median and p99 over N sequential ADDs, then N DELs, per plugin;
the ratio nvctl/stock; then N ADDs of nvctl-cni at once and the time until every
container pings every other (one ping per ordered pair, all at once).

    python -m bench.cni [--containers 50] [--json]      (root; starts its own lab)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

PLUGIN = os.path.join(os.path.dirname(sys.executable), "nvctl-cni")
STOCK_DIR = "/usr/lib/cni"
TENANT = """apiVersion: nvctl/v1
kind: Tenant
metadata: {name: bench}
spec:
  switches: [{name: net, cidr: 10.0.0.0/22}]
  ports: []
"""


def _run(plugin: str, command: str, cfg: dict, cid: str, netns: str, ifname: str = "eth0") -> tuple[float, str]:
    env = {**os.environ, "CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
           "CNI_IFNAME": ifname, "CNI_PATH": STOCK_DIR}
    t0 = time.perf_counter()
    p = subprocess.run([plugin], input=json.dumps(cfg), capture_output=True, text=True, env=env, timeout=120)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{os.path.basename(plugin)} {command} {cid}: {p.stdout}{p.stderr}")
    return dt, p.stdout


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _stats(xs: list[float]) -> dict:
    return {"median_ms": round(statistics.median(xs) * 1000, 1), "p99_ms": round(_pct(xs, 0.99) * 1000, 1),
            "min_ms": round(min(xs) * 1000, 1), "max_ms": round(max(xs) * 1000, 1), "n": len(xs)}


def _sequential(plugin: str, cfg: dict, names: list[str]) -> dict:
    adds, dels = [], []
    for n in names:
        adds.append(_run(plugin, "ADD", cfg, n, f"/run/netns/{n}")[0])
    for n in names:
        dels.append(_run(plugin, "DEL", cfg, n, f"/run/netns/{n}")[0])
    return {"add": _stats(adds), "del": _stats(dels)}


def cni(lab, containers: int = 50) -> dict:
    from controller.client.api import call
    call(lab.api_path, "tenant.create", yaml=TENANT)
    tag = f"nvcb{os.getpid() % 10000}"
    names = [f"{tag}c{i}" for i in range(containers)]
    stock_ns = f"{tag}br"
    made: list[str] = []
    try:
        for n in names + [stock_ns]:
            subprocess.run(["ip", "netns", "add", n], check=True)
            made.append(n)
        ours = {"cniVersion": "1.0.0", "name": "bench-net", "type": "nvctl-cni", "tenant": "bench",
                "switch": "net", "host": "hv2", "stateDir": lab.dir}
        # the stock pair: its bridge lives in a namespace of ours (the plugins work in the
        # namespace they run in), its leases in a directory of ours
        leases = tempfile.mkdtemp(prefix="nvcb-leases-")
        stock = {"cniVersion": "1.0.0", "name": "bench-bridge", "type": "bridge", "bridge": f"{tag}b0",
                 "isGateway": False, "ipMasq": False,
                 "ipam": {"type": "host-local", "subnet": "10.9.0.0/22", "dataDir": leases}}
        stock_plugin = os.path.join(STOCK_DIR, "bridge")
        wrapped = tempfile.mkdtemp(prefix="nvcb-wrap-")
        shim = os.path.join(wrapped, "bridge")
        with open(shim, "w") as f:  # run the stock bridge plugin inside our namespace
            f.write(f"#!/bin/sh\nexec ip netns exec {stock_ns} {stock_plugin}\n")
        os.chmod(shim, 0o755)
        rounds = {"nvctl-cni": [], "bridge+host-local": []}
        for plugin, cfg, key in ((PLUGIN, ours, "nvctl-cni"), (shim, stock, "bridge+host-local")):
            rounds[key] = _sequential(plugin, cfg, names)
        ratio = {k: round(rounds["nvctl-cni"][k]["median_ms"] / rounds["bridge+host-local"][k]["median_ms"], 2)
                 for k in ("add", "del")}
        # 50 at once, then every ordered pair pings once
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=containers) as pool:
            outs = list(pool.map(lambda n: _run(PLUGIN, "ADD", ours, n, f"/run/netns/{n}")[1], names))
        added = time.perf_counter() - t0
        ips = [json.loads(o)["ips"][0]["address"].split("/")[0] for o in outs]
        pairs = [(a, ip) for a in names for ip in ips if ip != ips[names.index(a)]]
        deadline, missing = time.perf_counter() + 60, pairs
        while missing and time.perf_counter() < deadline:
            with ThreadPoolExecutor(max_workers=32) as pool:
                ok = list(pool.map(lambda p: subprocess.run(
                    ["ip", "netns", "exec", p[0], "ping", "-c", "1", "-W", "1", p[1]],
                    capture_output=True).returncode == 0, missing))
            missing = [p for p, good in zip(missing, ok) if not good]
        reached = time.perf_counter() - t0
        for n in names:
            _run(PLUGIN, "DEL", ours, n, f"/run/netns/{n}")
        return {"containers": containers, "sequential": rounds, "ratio_nvctl_to_stock": ratio,
                "concurrent": {"adds_s": round(added, 2), "all_pairs_s": round(reached, 2), "pairs": len(pairs),
                               "unreached": len(missing)}}
    finally:
        for n in made:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
        for d in ("leases", "wrapped"):
            if d in locals():
                shutil.rmtree(locals()[d], ignore_errors=True)


def report(r: dict) -> str:
    s = r["sequential"]
    lines = [f"CNI over {r['containers']} containers (median / p99 ms):"]
    for k in ("nvctl-cni", "bridge+host-local"):
        lines.append(f"  {k:18} ADD {s[k]['add']['median_ms']} / {s[k]['add']['p99_ms']}   "
                     f"DEL {s[k]['del']['median_ms']} / {s[k]['del']['p99_ms']}")
    lines.append(f"  nvctl/stock: ADD {r['ratio_nvctl_to_stock']['add']}x, DEL {r['ratio_nvctl_to_stock']['del']}x")
    c = r["concurrent"]
    lines.append(f"  {r['containers']} ADDs at once: {c['adds_s']} s; all {c['pairs']} pairs answer after "
                 f"{c['all_pairs_s']} s ({c['unreached']} not)")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cni", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--containers", type=int, default=50)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    from bench.freshlab import on_fresh_lab
    r = on_fresh_lab(lambda lab: cni(lab, a.containers))
    print(json.dumps(r, indent=1) if a.json else report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
