"""Benchmarks on a real lab (OVS per host namespace): flow installation through the
controller against `ovs-ofctl --bundle add-flows` of the same flows into the same OVS,
and live migration under a 10 ms ping."""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time

import yaml

from bench.synth import tenant_doc
from controller.client.api import call
from controller.compile.compiler import TUNNEL_OFPORT
from scenarios.lab import CONTROLLER_IP, OF_PORT, Lab
from tep.ovs import INTEGRATION_BRIDGE

BENCH_HOST = 9  # a bare lab host registered as kind "bench": flows only, no workloads


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def _host(lab: Lab, name: str) -> dict:
    return next(h for h in call(lab.api_path, "host.list") if h["name"] == name)


def _wait(pred, timeout: float, what: str, step: float = 0.002):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(step)


def install_rate(lab: Lab, tenants: int = 60, repeats: int = 3, log=print) -> dict:
    p = lab.add_bare_host(BENCH_HOST)
    db = lab.ovsdb(p.name)
    target = f"tcp:{CONTROLLER_IP}:{OF_PORT}"
    db.ensure_integration_bridge(p.dpid, target, p.pa, TUNNEL_OFPORT)
    call(lab.api_path, "host.register", name=p.name, pa=p.pa, dpid=p.dpid, info={"kind": "bench"})
    for i in range(tenants):
        doc = tenant_doc(i, 10, [p.name])
        doc["metadata"]["name"] = f"b{i}"
        call(lab.api_path, "tenant.create", yaml=yaml.safe_dump(doc))
    _wait(lambda: _host(lab, p.name)["in_sync"], 120, "the bench host in sync", 0.05)
    n = _host(lab, p.name)["flows_desired"]
    env = lab.ovs_env(p.name)

    def ofctl(*args):
        p = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", *args], env=env,
                           capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            raise RuntimeError(f"ovs-ofctl {' '.join(args)}: {p.stderr.strip()}")
        return p.stdout

    rows = call(lab.api_path, "flows", host=p.name, read_switch=False)["flows"]
    from controller.layers.qos import BUM_METER_BASE, bum_meter_for
    meters = {}
    for r in rows:  # the BUM meters the bench tenants' flood flows use (no rate limits here)
        for part in r["flow"].split("meter:")[1:]:
            mid = int(part.split(",")[0])
            m = bum_meter_for(mid - BUM_METER_BASE, None)
            meters[mid] = (m.rate_kbps, m.burst_kb, m.unit)
    text = "".join(f"cookie={r['cookie']},{r['flow']}\n" for r in rows)
    ctl_times, ofctl_times = [], []
    with tempfile.NamedTemporaryFile("w", suffix=".flows", delete=False) as f:
        f.write(text)
    try:
        for _ in range(repeats):
            # the controller: the switch lost every flow; `host resync` re-reads it and
            # repairs it in one bundle (the time is the controller's, measured around it)
            ofctl("del-flows", INTEGRATION_BRIDGE)
            r = call(lab.api_path, "host.resync", name=p.name)
            assert r["flow_mods"] >= n, r
            ctl_times.append(r["ms"] / 1000)
            assert len(ofctl("dump-flows", INTEGRATION_BRIDGE).splitlines()) >= n
            # the baseline: the same flows, one ovs-ofctl bundle, while no controller is attached
            db.vsctl("del-controller", INTEGRATION_BRIDGE)
            _wait(lambda: not _host(lab, p.name)["connected"], 30, "disconnect", 0.02)
            ofctl("del-flows", INTEGRATION_BRIDGE)
            have = ofctl("dump-meters", INTEGRATION_BRIDGE)
            for mid, (rate, burst, unit) in meters.items():  # the flows' meters, as the controller makes them
                if f"meter={mid} " not in have:
                    ofctl("add-meter", INTEGRATION_BRIDGE,
                          f"meter={mid},{unit},burst,bands=type=drop,rate={rate},burst_size={burst}")
            t0 = time.perf_counter()
            ofctl("--bundle", "add-flows", INTEGRATION_BRIDGE, f.name)
            ofctl_times.append(time.perf_counter() - t0)
            db.vsctl("set-controller", INTEGRATION_BRIDGE, target)
            _wait(lambda: _host(lab, p.name)["in_sync"], 120, "the controller back", 0.05)
    finally:
        os.unlink(f.name)
    ctl, base = _median(ctl_times), _median(ofctl_times)
    out = {"flows": n, "controller_s": round(ctl, 3), "ofctl_bundle_s": round(base, 3),
           "controller_flows_per_s": round(n / ctl), "ofctl_flows_per_s": round(n / base),
           "ratio_controller_to_ofctl": round(base / ctl, 2), "target_ratio": 0.8,
           "controller_runs_s": [round(x, 3) for x in ctl_times],
           "ofctl_runs_s": [round(x, 3) for x in ofctl_times],
           "note": "controller = `nvctl host resync` after del-flows: read the table, send one "
                   "bundle, wait for the barrier; ofctl = one process, one bundle, no controller attached"}
    log(f"[bench] install {n} flows: controller {ctl:.3f}s ({n / ctl:.0f}/s), ovs-ofctl --bundle "
        f"{base:.3f}s ({n / base:.0f}/s): ratio {base / ctl:.2f}")
    return out


BLUE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "blue.yaml")


def migration(lab: Lab, moves: int = 20, log=print) -> dict:
    """20 live migrations of blue/vm1 between hv1 and hv3 while vm2 pings it every 10 ms;
    the baseline is the same ping for the same time without migrations."""
    with open(BLUE) as f:
        call(lab.api_path, "tenant.create", yaml=f.read())
    ports = {p["name"]: p for p in call(lab.api_path, "tenant.show", name="blue")["ports"]}
    vm1, vm2 = ports["vm1"], ports["vm2"]

    def ping(seconds: float):
        count = int(seconds / 0.01)
        return subprocess.Popen(["ip", "netns", "exec", vm2["namespace"], "ping", "-q", "-n", "-c", str(count),
                                 "-i", "0.01", vm1["ip"]], stdout=subprocess.PIPE, text=True)

    def lost(proc) -> tuple[int, int]:
        out, _ = proc.communicate(timeout=300)
        sent, got = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", out).groups())
        return sent - got, sent

    t0 = time.monotonic()
    windows = []
    pinger = ping(1 + moves * 0.5)
    time.sleep(0.5)
    for i in range(moves):
        r = call(lab.api_path, "port.migrate", tenant="blue", port="vm1", to="hv3" if i % 2 == 0 else "hv1")
        windows.append(r["timings_ms"]["switch_window"])
        time.sleep(max(0.0, 0.5 + 0.5 * (i + 1) - (time.monotonic() - t0)))
    lost_moving, sent_moving = lost(pinger)
    lost_base, sent_base = lost(ping(1 + moves * 0.5))
    out = {"moves": moves, "switch_window_ms_median": _median(windows), "switch_window_ms_max": max(windows),
           "pings_lost_during_moves": lost_moving, "pings_sent_during_moves": sent_moving,
           "pings_lost_per_move": round(lost_moving / moves, 2),
           "baseline_pings_lost": lost_base, "baseline_pings_sent": sent_base, "target_lost_per_move": 1,
           "windows_ms": windows}
    log(f"[bench] {moves} migrations: {lost_moving}/{sent_moving} pings lost at 10 ms (baseline without "
        f"moves {lost_base}/{sent_base}); switch window median {out['switch_window_ms_median']} ms, "
        f"max {out['switch_window_ms_max']} ms")
    return out

