"""A neighbour's broadcast flood against a tenant's latency, with and without the BUM limit.

Two twin tenants on the same three hosts (same CAs, MACs, names; ports vm1 on hv2, vm2
on hv3, vm3 on hv1): `calm` pings vm1 -> vm2 (hv2 -> hv3) every 10 ms; `noisy` sends
IPv4 broadcasts from its vm3's own addresses (they pass port security) as fast as one
process can, so without a limit every frame is copied over VXLAN to hv2 and hv3, the
hosts calm's traffic crosses. Three
conditions, each repeated: no flood (the baseline, measured in the same run), flood
with the default per-port BUM meter, and flood with the limit lifted
(`bumLimitPps: 1000000`). Reported: calm's RTT p50 / p99 (median over repetitions,
with min and max) and the ratio of each flooded p99 to the baseline p99.

    python -m bench.flood [--repeats 3] [--seconds 3]      (root; starts its own lab)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

from controller.client.api import call
from scenarios.lab import Lab

TWIN = """apiVersion: nvctl/v1
kind: Tenant
metadata: {{name: {name}}}
spec:
  switches: [{{name: net, cidr: 10.0.0.0/24}}]
  ports:
    - {{name: vm1, switch: net, ip: 10.0.0.11, host: hv2}}
    - {{name: vm2, switch: net, ip: 10.0.0.12, host: hv3}}
    - {{name: vm3, switch: net, ip: 10.0.0.13, host: hv1{limit}}}
"""

FLOODER = r"""
import socket, struct, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
mac = bytes.fromhex(open("/sys/class/net/eth0/address").read().strip().replace(":", ""))
src = socket.inet_aton(sys.argv[2])
payload = b"nvctl-flood-probe".ljust(18, b".")
udp = struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0) + payload  # to the discard port
hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, src, b"\xff" * 4)
csum = sum(struct.unpack("!10H", hdr))
csum = (csum & 0xFFFF) + (csum >> 16)
hdr = hdr[:10] + struct.pack("!H", ~((csum & 0xFFFF) + (csum >> 16)) & 0xFFFF) + hdr[12:]
frame = b"\xff" * 6 + mac + b"\x08\x00" + hdr + udp  # IPv4 broadcast from the port's own addresses
end, n = time.monotonic() + float(sys.argv[1]), 0
while time.monotonic() < end:
    for _ in range(64):
        try:
            s.send(frame)
            n += 1
        except OSError:  # the queue is full: that is the point
            pass
print(n)
"""


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _med(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def _ping(ns: str, dst: str, seconds: float) -> tuple[list[float], int]:
    count = int(seconds / 0.01)
    p = subprocess.run(["ip", "netns", "exec", ns, "ping", "-n", "-i", "0.01", "-c", str(count), "-W", "1", dst],
                       capture_output=True, text=True, timeout=seconds + 30)
    rtts = [float(m) for m in re.findall(r"time=([\d.]+) ms", p.stdout)]
    return rtts, count


def _cpu(pid: int) -> int:
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])  # utime + stime, in clock ticks


def _condition(lab: Lab, calm: dict, noisy: dict | None, seconds: float) -> dict:
    pids = {h: _pid(lab, h) for h in ("hv1", "hv2", "hv3")}
    before = {h: _cpu(p) for h, p in pids.items()}
    t0 = time.monotonic()
    flood = None
    if noisy is not None:
        flood = subprocess.Popen(["ip", "netns", "exec", noisy["namespace"], sys.executable, "-c", FLOODER,
                                  str(seconds + 0.5), noisy["ip"]], stdout=subprocess.PIPE, text=True)
    try:
        rtts, sent = _ping(calm["namespace"], calm["dst"], seconds)
    finally:
        frames = None
        if flood is not None:
            out, _ = flood.communicate(timeout=seconds + 30)
            frames = int(out.strip() or 0)
    dt = time.monotonic() - t0
    tick = os.sysconf("SC_CLK_TCK")
    cpu = {h: round((_cpu(p) - before[h]) / tick / dt * 100) for h, p in pids.items()}
    return {"p50_ms": round(_pct(rtts, 0.5), 3), "p99_ms": round(_pct(rtts, 0.99), 3),
            "lost": sent - len(rtts), "sent": sent, "ovs_cpu_percent": cpu,
            **({"flood_frames_per_s": round(frames / (seconds + 0.5))} if frames is not None else {})}


def _pid(lab: Lab, host: str) -> int:
    with open(os.path.join(lab.host_dir(host), "ovs-vswitchd.pid")) as f:
        return int(f.read().strip())


def flood(lab: Lab, repeats: int = 3, seconds: float = 3.0, log=print) -> dict:
    api = lab.api_path
    call(api, "tenant.create", yaml=TWIN.format(name="calm", limit=""))
    call(api, "tenant.create", yaml=TWIN.format(name="noisy", limit=""))
    ports = {t: {p["name"]: p for p in call(api, "tenant.show", name=t)["ports"]} for t in ("calm", "noisy")}
    calm = {"namespace": ports["calm"]["vm1"]["namespace"], "dst": ports["calm"]["vm2"]["ip"]}
    noisy = {"namespace": ports["noisy"]["vm3"]["namespace"], "ip": ports["noisy"]["vm3"]["ip"]}
    _ping(calm["namespace"], calm["dst"], 0.3)  # ARP and the datapath's caches warm
    runs: dict[str, list[dict]] = {"no_flood": [], "flood_limited": [], "flood_unlimited": []}
    for r in range(repeats):
        call(api, "tenant.apply", yaml=TWIN.format(name="noisy", limit=""))
        runs["no_flood"].append(_condition(lab, calm, None, seconds))
        runs["flood_limited"].append(_condition(lab, calm, noisy, seconds))
        call(api, "tenant.apply", yaml=TWIN.format(name="noisy", limit=", bumLimitPps: 1000000"))
        runs["flood_unlimited"].append(_condition(lab, calm, noisy, seconds))
        log(f"[flood] repetition {r + 1}/{repeats}: " + ", ".join(
            f"{k} p50 {v[-1]['p50_ms']} p99 {v[-1]['p99_ms']} ms" for k, v in runs.items()))
    out: dict = {"repeats": repeats, "seconds": seconds, "ping_interval_ms": 10, "runs": runs}
    for k, v in runs.items():
        out[k] = {q: {"median": _med([x[q] for x in v]), "min": min(x[q] for x in v), "max": max(x[q] for x in v)}
                  for q in ("p50_ms", "p99_ms")}
        out[k]["lost_total"] = sum(x["lost"] for x in v)
        out[k]["ovs_cpu_percent_median"] = {h: _med([x["ovs_cpu_percent"][h] for x in v]) for h in v[0]["ovs_cpu_percent"]}
        if "flood_frames_per_s" in v[0]:
            out[k]["flood_frames_per_s_median"] = _med([x["flood_frames_per_s"] for x in v])
    base = out["no_flood"]["p99_ms"]["median"]
    out["ratio_p99_limited"] = round(out["flood_limited"]["p99_ms"]["median"] / base, 2)
    out["ratio_p99_unlimited"] = round(out["flood_unlimited"]["p99_ms"]["median"] / base, 2)
    out["target_ratio"] = 2.0
    call(api, "tenant.delete", name="noisy")
    call(api, "tenant.delete", name="calm")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args(argv)
    from bench.freshlab import on_fresh_lab
    res = on_fresh_lab(lambda lab: flood(lab, a.repeats, a.seconds))
    print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
