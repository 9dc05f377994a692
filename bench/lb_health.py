"""Load-balancer health checks on a lab: how long from a backend that stops listening
to the controller having it out of the select group, and from listening again to it
being back (`python -m bench.run --only health`; not in a plain run).

One tenant (examples/shop.yaml) with a TCP load balancer over three backends, each a
TCP server in its workload, and `healthCheck: {interval: 0.5, timeout: 0.4,
successCount: 2, failureCount: 2}`. Each repetition stops one backend's server (by
its PID) at a random point of the probes' cycle, polls `stats` every POLL seconds
until that backend is down and out of service, starts it again (again at a random
point) and polls until it is up; then checks that new connections reach it again. The
figures include the poll's granularity (POLL) and the stats call's own time.

What to compare them with: the protocol's own window. A closed port answers the next
probe with a reset at once, so detection takes the wait for the next probe (0 to one
interval) and failureCount - 1 intervals more: between (failureCount - 1) * interval
and failureCount * interval, plus the change path (compile, prove, send). Coming back
is the same with successCount. And the operator's way, measured in the same run: a
`tenant apply` that takes the backend out of the spec (its duration, from the call to
every host in sync).
"""
from __future__ import annotations

import os
import random
import time

from scenarios.netutil import TcpServer, tcp_whois, wait_listening

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INTERVAL, TIMEOUT, SUCCESS, FAILURE = 0.5, 0.4, 2, 2
BACKENDS = ["web2", "db1", "db2"]
POLL = 0.05


def _spec(backends=BACKENDS) -> str:
    shop = open(os.path.join(ROOT, "examples", "shop.yaml")).read()
    lb = ("  loadBalancers:\n    - {name: web-lb, vip: 10.0.0.100, protocol: tcp, port: 80, "
          f"backends: [{', '.join(b + ':8080' for b in backends)}],\n"
          f"       healthCheck: {{interval: {INTERVAL}, timeout: {TIMEOUT}, successCount: {SUCCESS}, "
          f"failureCount: {FAILURE}}}}}\n")
    return shop.replace("  ports:\n", lb + "  ports:\n", 1)


def _spread(xs: list) -> dict:
    xs = sorted(round(x, 3) for x in xs)
    if not xs:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": xs[len(xs) // 2], "min": xs[0], "max": xs[-1], "n": len(xs), "all": xs}


def _states(lab) -> dict:
    from controller.client.api import call
    (lb,) = call(lab.api_path, "stats", tenant="shop")["loadBalancers"]
    return {b["name"]: ((b["health"] or {}).get("state"), b["inService"]) for b in lb["backends"]}


def _wait(lab, backend: str, want: tuple, t0: float, limit: float = 20.0) -> float:
    while True:
        if _states(lab).get(backend) == want:
            return time.monotonic() - t0
        if time.monotonic() - t0 > limit:
            raise RuntimeError(f"{backend} not {want} after {limit:g} s: {_states(lab)}")
        time.sleep(POLL)


def _apply(lab, text: str) -> float:
    from controller.client.api import call
    t0 = time.monotonic()
    r = call(lab.api_path, "tenant.apply", yaml=text)
    took = time.monotonic() - t0
    if any(not str(v).endswith("flow-mods") for v in r["hosts"].values()):
        raise RuntimeError(f"apply: {r['hosts']}")
    return took


def lb_health(lab, repeats: int = 5) -> dict:
    from controller.client.api import call
    call(lab.api_path, "tenant.create", yaml=_spec())
    ports = {p["name"]: p for p in call(lab.api_path, "tenant.show", name="shop")["ports"]}
    servers = {b: TcpServer(ports[b]["namespace"], 8080, name=b) for b in BACKENDS}
    down, up, reached = [], [], []
    rng = random.Random(7)
    try:
        for b in BACKENDS:
            _wait(lab, b, ("up", True), time.monotonic())
        for i in range(repeats):
            victim = BACKENDS[i % len(BACKENDS)]
            time.sleep(rng.uniform(0, INTERVAL))  # at any point of the probes' cycle, not in step with it
            t0 = time.monotonic()
            servers[victim].stop()
            down.append(_wait(lab, victim, ("down", False), t0))
            servers[victim] = TcpServer(ports[victim]["namespace"], 8080, name=victim)
            wait_listening(ports[victim]["namespace"], 8080)
            time.sleep(rng.uniform(0, INTERVAL))
            t0 = time.monotonic()
            up.append(_wait(lab, victim, ("up", True), t0))
            hits = tcp_whois(ports["web1"]["namespace"], "10.0.0.100", 80, count=12)
            reached.append(victim in hits and None not in hits)
            print(f"[health] {i + 1}/{repeats}: {victim} down in {down[-1]:.2f} s, up again in {up[-1]:.2f} s",
                  flush=True)
        apply_out, apply_in = [], []
        for i in range(repeats):
            victim = BACKENDS[i % len(BACKENDS)]
            apply_out.append(_apply(lab, _spec([b for b in BACKENDS if b != victim])))
            apply_in.append(_apply(lab, _spec()))
    finally:
        for s in servers.values():
            s.stop()
        call(lab.api_path, "tenant.delete", name="shop")
    return {"interval_s": INTERVAL, "timeout_s": TIMEOUT, "success_count": SUCCESS, "failure_count": FAILURE,
            "poll_s": POLL, "repeats": repeats,
            "down_detected_s": _spread(down), "up_detected_s": _spread(up),
            "protocol_window_down_s": [(FAILURE - 1) * INTERVAL, FAILURE * INTERVAL],
            "protocol_window_up_s": [(SUCCESS - 1) * INTERVAL, SUCCESS * INTERVAL],
            "reached_again": sum(reached), "apply_remove_backend_s": _spread(apply_out),
            "apply_restore_backend_s": _spread(apply_in),
            "ratio_down_over_window_max": round(_spread(down)["median"] / (FAILURE * INTERVAL), 2) if down else None}


def report(r: dict) -> str:
    d, u, a = r["down_detected_s"], r["up_detected_s"], r["apply_remove_backend_s"]
    lo, hi = r["protocol_window_down_s"]
    return (f"health checks (interval {r['interval_s']} s, failureCount {r['failure_count']}, successCount "
            f"{r['success_count']}; {r['repeats']} repetitions, poll {r['poll_s']} s):\n"
            f"  backend down -> out of the group: median {d['median']} s (min {d['min']}, max {d['max']}); "
            f"the protocol's window {lo}-{hi} s\n"
            f"  listening again -> back in: median {u['median']} s (min {u['min']}, max {u['max']})\n"
            f"  for comparison, tenant apply without the backend: median {a['median']} s "
            f"(min {a['min']}, max {a['max']})\n"
            f"  new connections reached it again after {r['reached_again']}/{r['repeats']} recoveries")


def main(argv=None) -> int:
    """`python -m bench.lb_health [REPEATS]` on a lab of its own (root)."""
    import sys
    from bench.freshlab import on_fresh_lab
    args = sys.argv[1:] if argv is None else argv
    r = on_fresh_lab(lambda lab: lb_health(lab, repeats=int(args[0]) if args else 5))
    print(report(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
