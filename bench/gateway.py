"""Gateway failover on a lab: SNAT through an HA gateway group while its active gateway's
switch dies and comes back (`python -m bench.run --only gateway`; not in a plain run).

One tenant whose router r1 has `external: {gateways: [hv1, hv2]}`, SNAT for its web
switch, and a floating IP on db1; web1 and db1 run on hv3. Each repetition:

- web1 pings the outside host every 10 ms (SNAT, through hv1), and the outside host
  pings db1's floating IP every 10 ms (distributed: on hv3, no gateway in the way);
- hv1's ovs-vswitchd is killed (SIGKILL) at a random point;
- measured: the SNAT interruption, from the kill to the first echo request sent after
  it that was answered (through hv2); BFD's own detection, from the kill to hv3's BFD
  session toward hv1 reading down in OVSDB (polled every 5 ms: the baseline, what any
  failover must wait for); the floating IP's lost pings;
- hv1's switch is started again; measured: the pings lost from then on (its BFD stays
  off until the controller has its flows back, then traffic returns to it).

The figures are medians with min and max over the repetitions; the ratio is the SNAT
interruption over BFD's detection in the same repetition.
"""
from __future__ import annotations

import random
import subprocess
import threading
import time

from controller.server.peers import BFD_INTERVAL_MS
from scenarios.lab import OUTSIDE_IP
from scenarios.netutil import PingTimeline

TENANT = """apiVersion: nvctl/v1
kind: Tenant
metadata: {name: gw}
spec:
  switches:
    - {name: web, cidr: 10.0.0.0/24}
    - {name: db, cidr: 10.0.1.0/24}
  routers:
    - name: r1
      ports: [{switch: web, ip: 10.0.0.1}, {switch: db, ip: 10.0.1.1}]
      external: {ip: 203.0.113.20, gateways: [hv1, hv2]}
  nat:
    - {type: snat, router: r1, cidr: 10.0.0.0/24}
    - {type: floating-ip, port: db1, externalIp: 203.0.113.21}
  ports:
    - {name: web1, switch: web, ip: 10.0.0.11, host: hv3}
    - {name: db1, switch: db, ip: 10.0.1.10, host: hv3}
"""
FIP = "203.0.113.21"
INTERVAL = 0.01
BEFORE, DOWN, AFTER = 1.5, 2.5, 3.0  # seconds of pinging around the kill and the restart


def _spread(xs: list) -> dict:
    xs = sorted(round(x, 4) for x in xs if x is not None)
    if not xs:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": xs[len(xs) // 2], "min": xs[0], "max": xs[-1], "n": len(xs), "all": xs}


def _bfd_down_after(lab, host: str, port: str, t0: float, out: list, stop: threading.Event) -> None:
    """Poll `host`'s BFD session on `port` until it reads down; out.append(seconds since t0)."""
    env = lab.ovs_env(host)
    while not stop.is_set():
        st = subprocess.run(["ovs-vsctl", "--timeout=2", "get", "interface", port, "bfd_status:state"],
                            capture_output=True, text=True, env=env).stdout.strip().strip('"')
        if st and st != "up":
            out.append(time.time() - t0)
            return
        time.sleep(0.005)


def _active(lab) -> str | None:
    from controller.client.api import call
    g = call(lab.api_path, "tenant.show", name="gw")["gateways"][0]
    return g["active"]


def gateway_failover(lab, repeats: int = 10) -> dict:
    from controller.client.api import call
    call(lab.api_path, "tenant.create", yaml=TENANT)
    ports = {p["name"]: p for p in call(lab.api_path, "tenant.show", name="gw")["ports"]}
    peer = _bfd_port(lab, "hv3", "hv1")
    rng = random.Random(11)
    cut, detect, fip_lost, back_lost, snat_lost = [], [], [], [], []
    try:
        for i in range(repeats):
            _wait_active(lab, "hv1")
            snat = PingTimeline(ports["web1"]["namespace"], OUTSIDE_IP, BEFORE + DOWN + AFTER, INTERVAL)
            fip = PingTimeline(lab.ext_ns, FIP, BEFORE + DOWN + AFTER, INTERVAL)
            time.sleep(BEFORE + rng.uniform(0, 0.1))
            seen, stop = [], threading.Event()
            killed = time.time()
            poll = threading.Thread(target=_bfd_down_after, args=(lab, "hv3", peer, killed, seen, stop), daemon=True)
            poll.start()
            lab.kill_vswitchd("hv1")
            time.sleep(DOWN)
            stop.set()
            poll.join()
            restarted = time.time()
            lab.start_vswitchd("hv1")
            r, f = snat.result(), fip.result()
            k, b = killed - snat.started, restarted - snat.started
            first = min((t for t, rtt in r["samples"] if rtt is not None and t >= k), default=None)
            cut.append(first - k if first is not None else None)
            detect.append(seen[0] if seen else None)
            snat_lost.append(sum(1 for t, rtt in r["samples"] if rtt is None and k <= t < b))
            back_lost.append(sum(1 for t, rtt in r["samples"] if rtt is None and t >= b))
            fip_lost.append(f["lost"])
            lab.wait_synced(60)
            print(f"[gateway] {i + 1}/{repeats}: SNAT back {cut[-1] * 1000 if cut[-1] else float('nan'):.0f} ms "
                  f"after the kill (BFD saw it in {detect[-1] * 1000 if detect[-1] else float('nan'):.0f} ms), "
                  f"{snat_lost[-1]} lost; {back_lost[-1]} lost when hv1 came back; floating IP {fip_lost[-1]} lost",
                  flush=True)
    finally:
        call(lab.api_path, "tenant.delete", name="gw")
    ratios = [c / d for c, d in zip(cut, detect) if c is not None and d]
    return {"repeats": repeats, "interval_s": INTERVAL, "bfd_interval_ms": BFD_INTERVAL_MS,
            "snat_interruption_s": _spread(cut), "bfd_detection_s": _spread(detect),
            "snat_lost_pings": _spread(snat_lost), "comeback_lost_pings": _spread(back_lost),
            "floating_ip_lost_pings": _spread(fip_lost),
            "ratio_interruption_over_bfd_detection": _spread(ratios)}


def _bfd_port(lab, host: str, peer: str, limit: float = 30.0) -> str:
    """The name of `host`'s BFD port toward `peer` (the controller adds it after the sync)."""
    from scenarios.lab import HostPlan
    pa = HostPlan(int(peer[2:])).pa
    t0 = time.monotonic()
    while True:
        for i in lab.ovsdb(host).interfaces():
            if i["external_ids"].get("nvctl-role") == "peer-tunnel" and i["options"].get("remote_ip") == pa:
                return i["name"]
        if time.monotonic() - t0 > limit:
            raise RuntimeError(f"{host} has no BFD port toward {peer} after {limit:g} s")
        time.sleep(0.2)


def _wait_active(lab, host: str, limit: float = 30.0) -> None:
    t0 = time.monotonic()
    while _active(lab) != host:
        if time.monotonic() - t0 > limit:
            raise RuntimeError(f"{host} is not the active gateway after {limit:g} s")
        time.sleep(0.1)
    time.sleep(0.5)  # the other hosts' groups follow their BFD within a few intervals


def report(r: dict) -> str:
    c, d, q = r["snat_interruption_s"], r["bfd_detection_s"], r["ratio_interruption_over_bfd_detection"]
    ms = lambda s: "-" if s is None else f"{s * 1000:.0f}"  # noqa: E731
    return (f"gateway failover ({r['repeats']} repetitions, pings every {r['interval_s'] * 1000:.0f} ms, "
            f"BFD every {r['bfd_interval_ms']} ms):\n"
            f"  SNAT back after the active gateway's switch died: median {ms(c['median'])} ms "
            f"(min {ms(c['min'])}, max {ms(c['max'])}); target 1000 ms\n"
            f"  BFD's own detection (the baseline): median {ms(d['median'])} ms (min {ms(d['min'])}, "
            f"max {ms(d['max'])}); interruption / detection: median {q['median']} (min {q['min']}, max {q['max']})\n"
            f"  pings lost when it came back: median {r['comeback_lost_pings']['median']} "
            f"(max {r['comeback_lost_pings']['max']}); floating IP pings lost: max {r['floating_ip_lost_pings']['max']}")


def main(argv=None) -> int:
    """`python -m bench.gateway [REPEATS]` on a lab of its own (root)."""
    import sys
    from bench.freshlab import on_fresh_lab
    args = sys.argv[1:] if argv is None else argv
    r = on_fresh_lab(lambda lab: gateway_failover(lab, repeats=int(args[0]) if args else 10))
    print(report(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
