"""BGP on a lab with the provider's router (BIRD 2): how fast the routes follow the data
plane (`python -m bench.run --only bgp`; not in a plain run).

One tenant whose router r1 has `external: {gateways: [hv1, hv2], importRoutes:
[198.18.0.0/15]}`, SNAT for its web switch and a floating IP on db1; web1 and db1 run
on hv3. BIRD (AS 65001) announces 198.18.0.0/24 and holds what the platform announces.
Each repetition measures:

- failover: hv1's ovs-vswitchd is killed; from the kill, BFD's own detection (hv3's
  session toward hv1 down in OVSDB: the baseline any failover waits for) and the moment
  BIRD's route for the router's address names hv2's address (birdc polled every 10 ms);
  the ratio is the second over the first. hv1 is started again and BIRD's route
  returns to it;
- withdraw and learn: `birdc disable outside`, then `enable outside`; the time until
  web1's pings to 198.18.0.1 (every 10 ms) stop being answered, then are answered again
  (BIRD's update, our session, the tenant's recompile and its flows on three switches);
- migration: `nvctl port migrate` of db1 to hv2 and back; from the command's return to
  BIRD's route for its floating IP naming the new host.
Figures: median, min and max over the repetitions.
"""
from __future__ import annotations

import threading
import time

from bench.gateway import _bfd_down_after, _bfd_port, _spread
from scenarios import provider_router as pr
from scenarios.lab import HostPlan
from scenarios.netutil import PingTimeline

TENANT = """apiVersion: nvctl/v1
kind: Tenant
metadata: {name: bgpb}
spec:
  switches:
    - {name: web, cidr: 10.0.0.0/24}
    - {name: db, cidr: 10.0.1.0/24}
  routers:
    - name: r1
      ports: [{switch: web, ip: 10.0.0.1}, {switch: db, ip: 10.0.1.1}]
      external: {ip: 203.0.113.20, gateways: [hv1, hv2], importRoutes: [198.18.0.0/15]}
  nat:
    - {type: snat, router: r1, cidr: 10.0.0.0/24}
    - {type: floating-ip, port: db1, externalIp: 203.0.113.21}
  ports:
    - {name: web1, switch: web, ip: 10.0.0.11, host: hv3}
    - {name: db1, switch: db, ip: 10.0.1.10, host: hv3}
"""
RIP, FIP = "203.0.113.20/32", "203.0.113.21/32"
ADDR = {f"hv{i}": HostPlan(i).provider_address for i in (1, 2, 3)}
INTERVAL = 0.01


def _until(check, limit: float, every: float = 0.01):
    """Seconds until check() is true (polled every `every`), or None after `limit`."""
    t0 = time.time()
    while time.time() - t0 < limit:
        if check():
            return time.time() - t0
        time.sleep(every)
    return None


def _via(lab, prefix: str):
    return pr.routes(lab.dir).get(prefix, {}).get("via")


def bgp_routes(lab, repeats: int = 5) -> dict:
    from controller.client.api import call
    call(lab.api_path, "tenant.create", yaml=TENANT)
    ports = {p["name"]: p for p in call(lab.api_path, "tenant.show", name="bgpb")["ports"]}
    peer = _bfd_port(lab, "hv3", "hv1")
    if _until(lambda: _via(lab, RIP) == ADDR["hv1"] and _via(lab, FIP) == ADDR["hv3"], 20) is None:
        raise RuntimeError("BIRD never held the tenant's routes")
    moved, detect, withdraw, learn, migrate = [], [], [], [], []
    try:
        for i in range(repeats):
            seen, stop = [], threading.Event()
            killed = time.time()
            poll = threading.Thread(target=_bfd_down_after, args=(lab, "hv3", peer, killed, seen, stop), daemon=True)
            poll.start()
            lab.kill_vswitchd("hv1")
            moved.append(_until(lambda: _via(lab, RIP) == ADDR["hv2"], 10))
            time.sleep(0.5)
            stop.set()
            poll.join()
            detect.append(seen[0] if seen else None)
            lab.start_vswitchd("hv1")
            lab.wait_synced(60)
            if _until(lambda: _via(lab, RIP) == ADDR["hv1"], 20) is None:
                raise RuntimeError("the router's address did not return to hv1")

            ping = PingTimeline(ports["web1"]["namespace"], pr.OUTSIDE_PREFIX_HOST, 5.0, INTERVAL)
            time.sleep(1.0)
            off = time.time() - ping.started
            pr.birdc(lab.dir, "disable outside")
            time.sleep(1.5)
            on = time.time() - ping.started
            pr.birdc(lab.dir, "enable outside")
            r = ping.result()
            last = max((t for t, rtt in r["samples"] if rtt is not None and off <= t < on), default=off)
            first = min((t for t, rtt in r["samples"] if rtt is not None and t >= on), default=None)
            withdraw.append(last - off + INTERVAL)
            learn.append(first - on if first is not None else None)

            call(lab.api_path, "port.migrate", tenant="bgpb", port="db1", to="hv2")
            migrate.append(_until(lambda: _via(lab, FIP) == ADDR["hv2"], 10))
            call(lab.api_path, "port.migrate", tenant="bgpb", port="db1", to="hv3")
            _until(lambda: _via(lab, FIP) == ADDR["hv3"], 10)
            print(f"[bgp] {i + 1}/{repeats}: failover announced in {_ms(moved[-1])} ms (BFD {_ms(detect[-1])} ms); "
                  f"withdrawn in {_ms(withdraw[-1])} ms, learned in {_ms(learn[-1])} ms; "
                  f"migration announced {_ms(migrate[-1])} ms after the command", flush=True)
    finally:
        call(lab.api_path, "tenant.delete", name="bgpb")
    ratios = [m / d for m, d in zip(moved, detect) if m is not None and d]
    return {"repeats": repeats, "failover_announced_s": _spread(moved), "bfd_detection_s": _spread(detect),
            "ratio_announced_over_bfd_detection": _spread(ratios), "withdrawn_s": _spread(withdraw),
            "learned_s": _spread(learn), "migration_announced_s": _spread(migrate)}


def _ms(s) -> str:
    return "-" if s is None else f"{s * 1000:.0f}"


def report(r: dict) -> str:
    f, d, q = r["failover_announced_s"], r["bfd_detection_s"], r["ratio_announced_over_bfd_detection"]
    w, ln, m = r["withdrawn_s"], r["learned_s"], r["migration_announced_s"]
    return (f"BGP with BIRD ({r['repeats']} repetitions):\n"
            f"  failover: the router's address announced via the new gateway {_ms(f['median'])} ms after the "
            f"kill (min {_ms(f['min'])}, max {_ms(f['max'])}); BFD's detection {_ms(d['median'])} ms; "
            f"ratio median {q['median']} (min {q['min']}, max {q['max']})\n"
            f"  withdrawn by BIRD -> unreachable: median {_ms(w['median'])} ms (min {_ms(w['min'])}, max {_ms(w['max'])})\n"
            f"  announced by BIRD -> reachable: median {_ms(ln['median'])} ms (min {_ms(ln['min'])}, max {_ms(ln['max'])})\n"
            f"  floating IP migrated -> announced from the new host: median {_ms(m['median'])} ms after the "
            f"command returned (min {_ms(m['min'])}, max {_ms(m['max'])})")


def main(argv=None) -> int:
    """`python -m bench.bgp [REPEATS]` on a lab of its own (root)."""
    import sys
    from bench.freshlab import on_fresh_lab
    args = sys.argv[1:] if argv is None else argv
    r = on_fresh_lab(lambda lab: bgp_routes(lab, repeats=int(args[0]) if args else 5), bgp=True)
    print(report(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
