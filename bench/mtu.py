"""TCP across hosts on a 1500-byte underlay (real hosts) against a 1600-byte one (what
the lab used to have so that 1500-byte workload frames fit in VXLAN).

On each underlay a fresh 3-host lab, one tenant with a port on hv1 and one on hv2, the
workloads at the MTU nvctl gives them (1450 and 1550), iperf3 TCP with default
settings (the kernel's MSS from that MTU). Reported: the median of the repetitions,
with min and max, and the ratio 1500 / 1600 (target: within 20 %).

    python -m bench.mtu [--repeats 3] [--seconds 3]      (root; starts its own labs)
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile

from controller.client.api import call
from scenarios.lab import Lab
from scenarios.netutil import iperf3

TENANT = """apiVersion: nvctl/v1
kind: Tenant
metadata: {name: mtu}
spec:
  switches: [{name: net, cidr: 10.0.0.0/24}]
  ports:
    - {name: a, switch: net, ip: 10.0.0.11, host: hv1}
    - {name: b, switch: net, ip: 10.0.0.12, host: hv2}
"""


def _on(underlay_mtu: int, repeats: int, seconds: float, log) -> dict:
    d = tempfile.mkdtemp(prefix="nvmtu-")
    lab = Lab(d, log=lambda m: None)
    try:
        lab.up(hosts=3, underlay_mtu=underlay_mtu)
        call(lab.api_path, "tenant.create", yaml=TENANT)
        shown = call(lab.api_path, "tenant.show", name="mtu")
        p = {q["name"]: q for q in shown["ports"]}
        runs = [iperf3(p["a"]["namespace"], p["b"]["namespace"], p["b"]["ip"], seconds=seconds)["mbps"]
                for _ in range(repeats)]
        log(f"[mtu] underlay {underlay_mtu}: workload MTU {shown['mtu']['net']}, TCP {runs} Mbit/s")
        return {"workload_mtu": shown["mtu"]["net"], "mbps": runs, "median_mbps": statistics.median(runs),
                "min_mbps": min(runs), "max_mbps": max(runs)}
    finally:
        lab.down(quiet=True)
        shutil.rmtree(d, ignore_errors=True)


def mtu(repeats: int = 3, seconds: float = 3.0, log=print) -> dict:
    out = {"1500": _on(1500, repeats, seconds, log), "1600": _on(1600, repeats, seconds, log)}
    out["ratio_1500_to_1600"] = round(out["1500"]["median_mbps"] / out["1600"]["median_mbps"], 2)
    out["target_ratio_at_least"] = 0.8
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args(argv)
    print(json.dumps(mtu(a.repeats, a.seconds), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
