"""A larger lab: nvctl and OVN side by side at 10 hosts / 1,000 ports in 50 tenants, and
the same density at 3 hosts (300 ports in 15 tenants) for growth (`make bench-scale`).

Each tenant is versus.py's topology at 20 ports: two switches, a router (for nvctl with
SNAT to the outside and its own external address), a stateful ACL guarding one switch.
Every tenant uses the same CAs; its ports are spread round-robin over the hosts, offset
per tenant. OVN gets the same logical topology (names prefixed by the tenant) without
SNAT: OVN's SNAT needs a gateway router port bound to a chassis, which versus.py does
not model either, so OVN is spared that work.

Per size, repeated and interleaved, the clock from the first change (50 `tenant create`
calls one after another for nvctl; 50 ovn-nbctl transactions for OVN) until every
ordered pair of ports within each tenant answers a ping (19,000 pairs at 1,000 ports):
(a) every workload plugged before the clock, (b) plugging in the clock (as versus.py).
Then flows per host, one port added (plugged first), and the resident memory of the
control planes: nvctl's controller against ovn-northd + the NB and SB ovsdb-servers +
every ovn-controller, with both topologies loaded (ovs-vswitchd's is reported apart).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time

from bench import versus as vs
from bench.stats import ratio, spread
from controller.client.api import call
from scenarios.lab import Lab, _read_pid
from tep.driver import workload_namespace
from tep.ovs import INTEGRATION_BRIDGE

PORTS_PER_TENANT = 20


def plan(tenants: int, hosts: list[str], ports: int = PORTS_PER_TENANT) -> list[dict]:
    """[{name, ports, external_ip, ovn_ports, prefix}] for each tenant."""
    out = []
    for i in range(tenants):
        rot = hosts[i % len(hosts):] + hosts[:i % len(hosts)]
        name = f"t{i}"
        ps = vs.topology(ports, rot)
        out.append({"name": name, "ports": ps, "external_ip": f"203.0.113.{10 + i}", "prefix": f"{name}-",
                    "ovn_ports": [{**p, "name": f"{name}-{p['name']}", "switch": f"{name}-{p['switch']}"}
                                  for p in ps]})
    return out


def _yaml(t: dict, workloads: bool, ports: list[dict] | None = None) -> str:
    return vs.nvctl_yaml(ports or t["ports"], t["name"], workloads, t["external_ip"])


def _reach_tenants(sources: list[tuple[str, str, str]], timeout: float = 300) -> float:
    return vs.reach([(ns, ip) for ns, ip, _ in sources], timeout=timeout, groups=[g for _, _, g in sources])


def nvctl_all(lab: Lab, tenants: list[dict], plugged: bool, log=print) -> tuple[dict, vs.Offline | None]:
    off = None
    if plugged:
        off = vs.Offline(lab)
        atts = []
        for t in tenants:
            atts += off.put(t["name"], _yaml(t, True))
        t0 = time.monotonic()
        vs.plug(lab, atts)
        log(f"[bench] scale: nvctl: {len(atts)} workloads plugged before the clock in {time.monotonic() - t0:.1f}s")
    t0 = time.monotonic()
    for t in tenants:
        call(lab.api_path, "tenant.create", yaml=_yaml(t, not plugged), timeout=600)
    t_create = time.monotonic() - t0
    _reach_tenants([(workload_namespace(lab.prefix, t["name"], p["name"]), p["ip"], t["name"])
                    for t in tenants for p in t["ports"]])
    converge = round(time.monotonic() - t0, 3)
    if off:
        for t in tenants:
            off.check(t["name"])
    log(f"[bench] scale: nvctl, workloads {'plugged before the clock' if plugged else 'made by the controller'}: "
        f"{len(tenants)} creates {t_create:.1f}s, every pair reachable after {converge}s")
    return {"create_s": round(t_create, 3), "converge_s": converge}, off


def nvctl_remove_all(lab: Lab, tenants: list[dict], plugged: bool) -> None:
    for t in tenants:
        call(lab.api_path, "tenant.delete", name=t["name"], timeout=600)
    vs.flush_conntrack(lab)
    if plugged:
        by_host: dict[str, list[str]] = {}
        for t in tenants:
            for h, names in vs.nvctl_ifnames(t["ports"], t["name"]).items():
                by_host.setdefault(h, []).extend(names)
        vs.unplug(lab, INTEGRATION_BRIDGE, by_host, [workload_namespace(lab.prefix, t["name"], p["name"])
                                                     for t in tenants for p in t["ports"]])


def ovn_all(ovn: vs.Ovn, lab: Lab, tenants: list[dict], plugged: bool, log=print) -> dict:
    every = [p for t in tenants for p in t["ovn_ports"]]
    if plugged:
        vs.plug_ovn(lab, every)
    t0 = time.monotonic()
    for t in tenants:
        ovn.nbctl(*vs.ovn_topology_cmds(t["ovn_ports"], t["prefix"]))
    if not plugged:
        vs.plug_ovn(lab, every)
    _reach_tenants([(vs.ovn_ns(lab, p), p["ip"], t["name"]) for t in tenants for p in t["ovn_ports"]])
    converge = round(time.monotonic() - t0, 3)
    log(f"[bench] scale: OVN, VIFs {'plugged before the clock' if plugged else 'plugged after the NB transactions'}"
        f": every pair reachable after {converge}s")
    return {"converge_s": converge}


def ovn_remove_all(ovn: vs.Ovn, lab: Lab, tenants: list[dict]) -> None:
    vs.ovn_remove(ovn, lab, [p for t in tenants for p in t["ovn_ports"]], [t["prefix"] for t in tenants])


def _rss_mb(pid: int | None) -> float | None:
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def memory(lab: Lab, ovn: vs.Ovn, hosts: list[str]) -> dict:
    """Resident memory (MB): nvctl's controller; OVN's northd, NB and SB servers and each
    ovn-controller; and each host's ovs-vswitchd (shared by both: reported apart)."""
    ctl = _rss_mb(_read_pid(os.path.join(lab.dir, "controller.pid")))
    parts = {f"{os.path.basename(os.path.dirname(path))}/{name}": _rss_mb(_read_pid(path)) for path, name in ovn.pids}
    ovn_total = round(sum(v for v in parts.values() if v), 1)
    vswitchd = [_rss_mb(_read_pid(f"{lab.host_dir(h)}/ovs-vswitchd.pid")) for h in hosts]
    return {"nvctl_controller_mb": ctl, "ovn_total_mb": ovn_total, "ovn_parts_mb": parts,
            "ovs_vswitchd_mb_per_host": spread([v for v in vswitchd if v], 1)}


def scale(lab: Lab, tenants: int, reps: int = 2, one_port_reps: int = 3, log=print) -> dict:
    """Everything above on one lab already up with its hosts."""
    hosts = sorted(lab.manifest()["hosts"], key=lambda h: int(h[2:]))
    ts = plan(tenants, hosts)
    out: dict = {"hosts": len(hosts), "tenants": tenants, "ports": tenants * PORTS_PER_TENANT, "reps": reps,
                 "pairs": tenants * PORTS_PER_TENANT * (PORTS_PER_TENANT - 1)}
    runs = {k: [] for k in ("nvctl_plugged", "ovn_plugged", "nvctl_unplugged", "ovn_unplugged")}
    creates = {"plugged": [], "unplugged": []}
    ovn = vs.Ovn(lab, hosts)
    off = None
    try:
        ovn.start()
        for r in range(reps):
            last = r == reps - 1
            for plugged in (False, True):  # the last repetition leaves (a) in place
                key = "plugged" if plugged else "unplugged"
                n, off = nvctl_all(lab, ts, plugged, log)
                runs[f"nvctl_{key}"].append(n["converge_s"])
                creates[key].append(n["create_s"])
                if not (last and plugged):
                    nvctl_remove_all(lab, ts, plugged)
                runs[f"ovn_{key}"].append(ovn_all(ovn, lab, ts, plugged, log)["converge_s"])
                if not (last and plugged):
                    ovn_remove_all(ovn, lab, ts)
        out["convergence"] = {k: spread(v) for k, v in runs.items()}
        out["convergence"]["nvctl_create_s"] = {k: spread(v) for k, v in creates.items()}
        time.sleep(1)
        fl = {"nvctl": [vs.count_flows(lab, h, INTEGRATION_BRIDGE) for h in hosts],
              "ovn": [vs.count_flows(lab, h, vs.OVN_BRIDGE) for h in hosts]}
        out["flows_per_host"] = {k: {"max": max(v), "mean": round(sum(v) / len(v)), "min": min(v)}
                                 for k, v in fl.items()}
        log(f"[bench] scale: flows per host {out['flows_per_host']}")
        out["memory"] = memory(lab, ovn, hosts)
        log(f"[bench] scale: memory {out['memory']}")
        t0 = ts[0]
        extras = vs.extra_ports(t0["ports"], one_port_reps)
        one = {"nvctl": [], "ovn": []}
        for i, extra in enumerate(extras):
            one["nvctl"].append(vs.nvctl_one_port(lab, off, t0["ports"] + extras[:i], extra, t0["name"],
                                                  t0["external_ip"]))
            oextra = {**extra, "name": f"{t0['prefix']}{extra['name']}", "switch": f"{t0['prefix']}{extra['switch']}"}
            one["ovn"].append(vs.ovn_one_port(ovn, lab, t0["ovn_ports"], oextra))
        out["one_port"] = {k: spread(v) for k, v in one.items()}
        log(f"[bench] scale: one port added: {out['one_port']}")
    finally:
        ovn.stop()
    c = out["convergence"]
    out["ratios"] = {
        "convergence_plugged_nvctl_over_ovn": ratio(c["nvctl_plugged"], c["ovn_plugged"]),
        "convergence_unplugged_nvctl_over_ovn": ratio(c["nvctl_unplugged"], c["ovn_unplugged"]),
        "flows_per_host_nvctl_over_ovn": round(out["flows_per_host"]["nvctl"]["max"] /
                                               out["flows_per_host"]["ovn"]["max"], 3),
        "one_port_nvctl_over_ovn": ratio(out["one_port"]["nvctl"], out["one_port"]["ovn"]),
        "memory_nvctl_over_ovn": (round(out["memory"]["nvctl_controller_mb"] / out["memory"]["ovn_total_mb"], 3)
                                  if out["memory"]["nvctl_controller_mb"] and out["memory"]["ovn_total_mb"]
                                  else None),
    }
    log(f"[bench] scale: {len(hosts)} hosts ratios {out['ratios']}")
    return out


def growth(small: dict, large: dict) -> dict:
    """large / small for each figure: what 10 hosts cost against 3 at the same density."""
    def g(a, b):
        return ratio(b, a, 2)
    out = {}
    for k in ("nvctl_plugged", "ovn_plugged", "nvctl_unplugged", "ovn_unplugged"):
        out[f"convergence_{k}"] = g(small["convergence"][k], large["convergence"][k])
    for side in ("nvctl", "ovn"):
        out[f"flows_per_host_{side}"] = g(small["flows_per_host"][side]["max"], large["flows_per_host"][side]["max"])
        out[f"one_port_{side}"] = g(small["one_port"][side], large["one_port"][side])
    out["memory_nvctl"] = g(small["memory"]["nvctl_controller_mb"], large["memory"]["nvctl_controller_mb"])
    out["memory_ovn"] = g(small["memory"]["ovn_total_mb"], large["memory"]["ovn_total_mb"])
    return out


def run_sizes(sizes=((3, 15), (10, 50)), reps: int = 2, log=print) -> dict:
    """scale() on a fresh lab of each (hosts, tenants), and the growth between the first and last."""
    res: dict = {"sizes": {}}
    for hosts, tenants in sizes:
        d = tempfile.mkdtemp(prefix="nvbench-")
        lab = Lab(d, log=lambda m: log(m))
        t0 = time.monotonic()
        try:
            lab.up(hosts=hosts)
            res["sizes"][str(hosts)] = {**scale(lab, tenants, reps=reps, log=log),
                                        "seconds": round(time.monotonic() - t0, 1)}
        finally:
            lab.down(quiet=True)
            shutil.rmtree(d, ignore_errors=True)
    keys = [str(h) for h, _ in sizes]
    if len(keys) > 1:
        res["growth"] = growth(res["sizes"][keys[0]], res["sizes"][keys[-1]])
    return res


def report(res: dict) -> str:
    lines = []
    for hosts, r in res["sizes"].items():
        c = r["convergence"]
        lines.append(f"{hosts} hosts / {r['ports']} ports / {r['tenants']} tenants ({r['pairs']} pairs, "
                     f"{r['seconds']} s):")
        for k in ("plugged", "unplugged"):
            lines.append(f"  convergence ({'a' if k == 'plugged' else 'b'}) {k}: nvctl {c[f'nvctl_{k}']['median']} s "
                         f"({c[f'nvctl_{k}']['min']}-{c[f'nvctl_{k}']['max']}), OVN {c[f'ovn_{k}']['median']} s "
                         f"({c[f'ovn_{k}']['min']}-{c[f'ovn_{k}']['max']})")
        f = r["flows_per_host"]
        lines.append(f"  flows per host: nvctl max {f['nvctl']['max']} (mean {f['nvctl']['mean']}), "
                     f"OVN max {f['ovn']['max']} (mean {f['ovn']['mean']})")
        lines.append(f"  one port added: nvctl {r['one_port']['nvctl']['median']} s, OVN {r['one_port']['ovn']['median']} s")
        m = r["memory"]
        lines.append(f"  memory: nvctl controller {m['nvctl_controller_mb']} MB, OVN {m['ovn_total_mb']} MB "
                     f"(northd + NB + SB + {r['hosts']} ovn-controllers); ovs-vswitchd "
                     f"{m['ovs_vswitchd_mb_per_host']['median']} MB per host")
        lines.append(f"  ratios: {r['ratios']}")
    if "growth" in res:
        lines.append(f"growth, {' -> '.join(res['sizes'])} hosts: {res['growth']}")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse
    import json
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", default="3,10", help="host counts (tenants = 5 per host)")
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    sizes = [(int(h), int(h) * 5) for h in a.hosts.split(",")]
    r = run_sizes(sizes, a.reps, log=lambda m: print(m, flush=True))
    print(report(r))
    print(json.dumps(r, indent=1))
