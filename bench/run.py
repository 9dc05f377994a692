"""Run the benchmarks: `make bench` (= python -m bench.run). Root, as for the lab.

Writes DIR/results.json and one PNG per benchmark (BENCHMARKS.md shows them, with the
machine and how to reproduce). Every figure comes with a baseline measured in the same
run. `--only compile,change,memory,install,migration,versus,verify,flood,mtu,dhcp` picks some;
`versus` is nvctl against OVN on the same lab hosts, plus the two-flow pipeline and veth
floors; `verify` is `nvctl verify`'s proof at the compile benchmark's size; `observe` is what
the counters cost (a refresh in memory at the compile size, the controller's CPU at a
1 s refresh of a lab); `flood` is a
tenant's ping RTT during a neighbour's broadcast flood, with and without the BUM limit;
`vm` is QEMU guests: boot to lease, live migration against the same QEMU migration on a
plain Linux bridge (and a namespace's migration); `mtu` is TCP across hosts on a
1500-byte underlay against a 1600-byte one; `dhcp` is
DHCP answered by the controller (one port against the per-tenant control meter, the
controller's capacity over many tenants' meters, another tenant's DHCP under a flood);
`netpol` is network policies against the same allow-lists written as ACLs (no lab: flows
per host, the tenant's compile, one labelled port added through the change path);
`health` (opt-in, `--only health`) is load-balancer health checks: a backend that stops
listening to out of the select group, and back, against the protocol's window and a
`tenant apply` that takes the backend out by hand; `gateway` (opt-in, `--only gateway`) is
an HA gateway's failover: SNAT interrupted while the active gateway's switch dies, against
BFD's own detection in the same repetition, and what its return costs; `bgp` (opt-in,
`--only bgp`) is BGP with BIRD on the outside: how long after a gateway failover (against
BFD's detection) and a floating IP's migration BIRD's routes follow, and how long a
prefix BIRD withdraws or announces takes to become unreachable or reachable for a tenant.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from bench.freshlab import on_fresh_lab

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL = ("compile", "northd", "change", "memory", "install", "migration", "versus", "verify", "flood", "mtu", "dhcp",
       "cni", "cluster", "observe", "vm", "netpol")
EXTRA = ("scale",  # not in a plain `make bench`: `make bench-scale` (10 hosts, 1,000 ports; ~25 min)
         "health",  # load-balancer health checks' detection time (a lab, ~1 min): `--only health`
         "gateway",  # HA gateway failover against BFD's detection (a lab, ~2 min): `--only gateway`
         "bgp")  # BGP with BIRD: announcements following failover and migration, learned routes (~1 min)


def machine() -> dict:
    ovs = subprocess.run(["ovs-vswitchd", "--version"], capture_output=True, text=True).stdout.splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    mem = next((int(line.split()[1]) // 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal")), 0)
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_mb": mem, "kernel": platform.release(),
            "python": platform.python_version(), "ovs": ovs[0] if ovs else "?",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _get(res: dict, *path):
    for k in path:
        if not isinstance(res, dict) or k not in res:
            return None
        res = res[k]
    return res


def _median(x):
    return x.get("median") if isinstance(x, dict) else x


def ratios(res: dict) -> dict:
    """results.json's top-level `ratios`: every figure against its baseline of the same
    run, under names that stay the same from run to run (a figure not measured in the
    results is left out, never guessed). The versus benchmark's own names are kept."""
    out = dict(_get(res, "versus", "ratios") or {})
    pick = {
        "install_controller_over_ofctl_bundle": ("install", "ratio_controller_to_ofctl"),
        "change_one_port_over_full_recompile": ("change", "ratio_change_to_full"),
        "memory_loaded_over_after_imports": ("memory", "ratio_to_baseline"),
        "compile_largest_over_smallest": ("compile", "ratio_largest_to_smallest"),
        "verify_full_over_compile": ("verify", "ratio_full_to_compile"),
        "verify_recheck_over_compile": ("verify", "ratio_recheck_to_compile"),
        "flood_p99_limited_over_unflooded": ("flood", "ratio_p99_limited"),
        "flood_p99_unlimited_over_unflooded": ("flood", "ratio_p99_unlimited"),
        "mtu_1500_over_1600": ("mtu", "ratio_1500_to_1600"),
        "stats_refresh_over_audit": ("observe", "refresh", "ratio_refresh_all_over_audit"),
        "stats_parse_over_oskens": ("observe", "refresh", "wire_parse_one_host", "ratio_lazy_over_full"),
        "vm_lost_per_move_over_namespace": ("vm", "ratios", "vm_lost_per_move_over_namespace"),
        "vm_stream_after_over_before": ("vm", "ratios", "vm_stream_after_over_before"),
        "vm_lost_per_move_over_bridge": ("vm", "ratios", "vm_lost_per_move_over_bridge"),
        "vm_lost_total_over_bridge": ("vm", "ratios", "vm_lost_total_over_bridge"),
        "vm_excess_over_bridge": ("vm", "ratios", "vm_excess_over_bridge"),
        "vm_lost_per_move_minus_bridge_intervals": ("vm", "ratios", "vm_lost_per_move_minus_bridge_intervals"),
        "vm_excess_minus_bridge_intervals": ("vm", "ratios", "vm_excess_minus_bridge_intervals"),
        "vm_longest_gap_over_bridge": ("vm", "ratios", "vm_longest_gap_over_bridge"),
        "vm_qemu_downtime_over_bridge": ("vm", "ratios", "vm_qemu_downtime_over_bridge"),
        "vm_stream_lost_per_move_over_bridge_stream": ("vm", "ratios", "vm_stream_lost_per_move_over_bridge_stream"),
        "vm_stream_excess_minus_bridge_stream_intervals": ("vm", "ratios",
                                                           "vm_stream_excess_minus_bridge_stream_intervals"),
    }
    for name, path in pick.items():
        v = _get(res, *path)
        if isinstance(v, (int, float)):
            out[name] = v
    for name, path in {"compile_nvctl_over_northd": ("northd", "ratios", "compile_nvctl_over_northd"),
                       "change_one_port_nvctl_over_northd": ("northd", "ratios", "change_one_port_nvctl_over_northd")
                       }.items():
        v = _get(res, *path)
        if isinstance(v, (int, float)):
            out[name] = v
    sizes = _get(res, "scale", "sizes") or {}
    if sizes:
        big = max(sizes, key=int)
        for k, v in (sizes[big].get("ratios") or {}).items():
            if isinstance(v, (int, float)):
                out[f"scale{big}_{k}"] = v
        for k, v in (_get(res, "scale", "growth") or {}).items():
            if isinstance(v, (int, float)):
                out[f"scale{big}_growth_from_{min(sizes, key=int)}_hosts_{k}"] = v
    if _get(res, "change", "ports") == 10000:  # the target's size: the median, and its spread
        c = res["change"]
        if isinstance(c.get("change_ms_median"), (int, float)):
            out["change_one_port_ms_10k_ports"] = c["change_ms_median"]
            for k in ("min", "max"):
                if isinstance(c.get(f"change_ms_{k}"), (int, float)):
                    out[f"change_one_port_ms_10k_ports_{k}"] = c[f"change_ms_{k}"]
        g = c.get("verify_before_install") or {}
        if isinstance(g.get("proof_ms_median"), (int, float)):  # the proof's own cost on a one-port change
            out["verify_before_install_ms_one_port"] = g["proof_ms_median"]
            out["verify_before_install_ms_one_port_min"] = g["proof_ms_min"]
            out["verify_before_install_ms_one_port_max"] = g["proof_ms_max"]
            out["change_one_port_proved_over_unproved"] = g["over_unguarded"]
    if _get(res, "verify", "ports") == 10000:  # the target's size: medians, and their spread
        for name, path in (("verify_seconds_10k_ports", ("verify", "full_verify_s")),
                           ("verify_recheck_ms_10k_ports", ("verify", "recheck_ms"))):
            x = _get(res, *path)
            if isinstance(_median(x), (int, float)):
                out[name] = _median(x)
                if isinstance(x, dict) and isinstance(x.get("min"), (int, float)) and isinstance(x.get("max"), (int, float)):
                    out[name + "_min"], out[name + "_max"] = x["min"], x["max"]
        x = _get(res, "verify", "full_verify_every_tenant_itself_s")
        if isinstance(x, (int, float)):  # no tenant given its twin's verdict (one run)
            out["verify_seconds_10k_ports_every_tenant_itself"] = x
    for name, path in {
            "netpol_flows_per_host_max_policies_over_acls": ("netpol", "compile", "ratios", "flows_per_host_max"),
            "netpol_flows_per_host_mean_policies_over_acls": ("netpol", "compile", "ratios", "flows_per_host_mean"),
            "netpol_compile_policies_over_acls": ("netpol", "compile", "ratios", "compile"),
            "netpol_port_add_policies_over_acl_apply": ("netpol", "port_add", "ratios", "ms"),
            "netpol_port_add_flow_mods_policies_over_acls": ("netpol", "port_add", "ratios", "flow_mods"),
            "netpol_port_add_policies_over_no_policy": ("netpol", "port_add", "ratios", "ms_over_no_policy")}.items():
        v = _median(_get(res, *path))
        if isinstance(v, (int, float)):
            out[name] = v
    rs = _get(res, "cluster", "restart")  # a controller restart to every host in sync, at the target's size
    if isinstance(rs, dict) and rs.get("hosts") == 10 and rs.get("ports") == 1000:
        x = rs.get("restart_to_in_sync_s") or {}
        if isinstance(x.get("median"), (int, float)):
            out["restart_seconds_10_hosts_1000_ports"] = x["median"]
            for k in ("min", "max"):
                if isinstance(x.get(k), (int, float)):
                    out[f"restart_seconds_10_hosts_1000_ports_{k}"] = x[k]
    for name, path in (("gateway_snat_interruption_over_bfd_detection",
                        ("gateway", "ratio_interruption_over_bfd_detection")),
                       ("gateway_snat_interruption_s", ("gateway", "snat_interruption_s")),
                       ("bgp_failover_announced_over_bfd_detection", ("bgp", "ratio_announced_over_bfd_detection")),
                       ("bgp_failover_announced_s", ("bgp", "failover_announced_s")),
                       ("bgp_withdrawn_to_unreachable_s", ("bgp", "withdrawn_s")),
                       ("bgp_announced_to_reachable_s", ("bgp", "learned_s")),
                       ("bgp_migration_announced_s", ("bgp", "migration_announced_s")),
                       ("health_down_detected_over_protocol_window", ("health", "ratio_down_over_window_max")),
                       ("health_down_detected_s", ("health", "down_detected_s")),
                       ("health_up_detected_s", ("health", "up_detected_s"))):
        x = _get(res, *path)
        if isinstance(_median(x), (int, float)):
            out[name] = _median(x)
            if isinstance(x, dict) and isinstance(x.get("min"), (int, float)):
                out[name + "_min"], out[name + "_max"] = x["min"], x["max"]
    cpu = _median(_get(res, "observe", "cpu", "refresh_share"))
    if isinstance(cpu, (int, float)):
        out["controller_cpu_share_at_1s_stats_refresh"] = cpu
    return dict(sorted(out.items()))


def plots(res: dict, out: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    made = []
    if "compile" in res:
        rows = res["compile"]["rows"]
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        xs = [r["ports"] for r in rows]
        ax[0].loglog(xs, [r["seconds"] for r in rows], "o-", label=f"compile (k={res['compile']['exponent']})")
        ax[0].loglog(xs, [rows[0]["seconds"] * x / xs[0] for x in xs], "--", label="linear from smallest")
        ax[0].axhline(1.0, color="r", lw=0.8, label="target 1 s")
        ax[0].set_xlabel("ports (tenants x 10, hosts = tenants / 10)")
        ax[0].set_ylabel("full compile, s")
        ax[0].legend()
        ax[1].plot(xs, [r["flows_per_host_mean"] for r in rows], "o-", label="mean")
        ax[1].plot(xs, [r["flows_per_host_max"] for r in rows], "s-", label="max")
        ax[1].set_xlabel("ports")
        ax[1].set_ylabel("flows per host")
        ax[1].legend()
        fig.tight_layout()
        made.append(_save(fig, out, "compile.png"))
    if "change" in res or "memory" in res:
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        if "change" in res:
            c = res["change"]
            ax[0].bar(["one-port change\n(median)", "full recompile"], [c["change_ms_median"], c["full_recompile_ms"]])
            ax[0].set_yscale("log")
            ax[0].set_ylabel("ms")
            ax[0].set_title(f"{c['ports']} ports / {c['hosts']} hosts")
        if "memory" in res:
            m = res["memory"]
            ax[1].bar(["after imports", f"{m['ports']} ports loaded"], [m["baseline_mb"], m["loaded_mb"]])
            ax[1].axhline(m["target_mb"], color="r", lw=0.8, label="target")
            ax[1].set_ylabel("RSS, MB")
            ax[1].legend()
        fig.tight_layout()
        made.append(_save(fig, out, "change_memory.png"))
    if "install" in res:
        i = res["install"]
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.bar(["controller\n(reconnect resync)", "ovs-ofctl --bundle"],
               [i["controller_flows_per_s"], i["ofctl_flows_per_s"]])
        ax.set_ylabel("flows per second")
        ax.set_title(f"{i['flows']} flows into one OVS")
        fig.tight_layout()
        made.append(_save(fig, out, "install.png"))
    if "migration" in res:
        m = res["migration"]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(range(1, len(m["windows_ms"]) + 1), m["windows_ms"], "o-")
        ax.set_xlabel("migration")
        ax.set_ylabel("switch window, ms")
        ax.set_title(f"{m['pings_lost_during_moves']}/{m['pings_sent_during_moves']} pings lost "
                     f"(baseline {m['baseline_pings_lost']}/{m['baseline_pings_sent']})")
        fig.tight_layout()
        made.append(_save(fig, out, "migration.png"))
    if "versus" in res and "convergence" in res["versus"]:
        v = res["versus"]
        c, pth = v["convergence"], v["paths"]
        fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4))
        hosts = sorted(v["flows_per_host"]["nvctl"])
        x = range(len(hosts))
        a1.bar([i - 0.2 for i in x], [v["flows_per_host"]["nvctl"][h] for h in hosts], 0.4, label="nvctl (br-int)")
        a1.bar([i + 0.2 for i in x], [v["flows_per_host"]["ovn"][h] for h in hosts], 0.4, label="OVN (br-ovn)")
        a1.set_xticks(list(x), hosts)
        a1.set_ylabel("OpenFlow flows")
        a1.set_title(f"{v['ports']}-port topology, flows per host")
        a1.legend(fontsize=8)
        cases = [("plugged", "(a) workloads\nplugged first"), ("unplugged", "(b) plugging\nin the clock")]
        for off, side, color in ((-0.2, "nvctl", "tab:blue"), (0.2, "ovn", "tab:orange")):
            meds = [c[f"{side}_{k}"]["median"] for k, _ in cases] + [v["one_port"][side]["median"]]
            lo = [m - c[f"{side}_{k}"]["min"] for m, (k, _) in zip(meds, cases)] + \
                [meds[2] - v["one_port"][side]["min"]]
            hi = [c[f"{side}_{k}"]["max"] - m for m, (k, _) in zip(meds, cases)] + \
                [v["one_port"][side]["max"] - meds[2]]
            a2.bar([i + off for i in range(3)], meds, 0.4, yerr=[lo, hi], capsize=3, color=color,
                   label="nvctl" if side == "nvctl" else "OVN")
        a2.set_xticks(range(3), [lbl for _, lbl in cases] + ["one port\nadded"])
        a2.set_ylabel("seconds to every pair reachable")
        a2.set_title(f"convergence (median of {v['reps']}, min-max)")
        a2.legend(fontsize=8)
        names = [("nvctl", "nvctl full\npipeline"), ("ovn", "OVN"), ("two_flow", "two-flow\npipeline"),
                 ("veth", "veth")]
        vals = [pth[k]["mbps"]["median"] for k, _ in names]
        a3.bar([lbl for _, lbl in names], vals, color=["tab:blue", "tab:orange", "tab:gray", "tab:green"],
               yerr=[[pth[k]["mbps"]["median"] - pth[k]["mbps"]["min"] for k, _ in names],
                     [pth[k]["mbps"]["max"] - pth[k]["mbps"]["median"] for k, _ in names]], capsize=3)
        a3.set_yscale("log")
        a3.set_ylabel("iperf3 TCP Mbit/s (log)")
        a3.set_title("CA->CA across hosts (hv1 -> hv2)")
        for i, (k, _) in enumerate(names):
            a3.text(i, vals[i], f"{vals[i]:.0f}\np99 {pth[k]['rtt_ms_p99']['median']} ms", ha="center",
                    va="bottom", fontsize=7)
        fig.tight_layout()
        made.append(_save(fig, out, "versus.png"))
    if "northd" in res and res["northd"].get("sizes"):
        sizes = res["northd"]["sizes"]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        labels = [f"{z['tenants']} tenants\n{z['ports']} ports" for z in sizes]
        for off, side, key, color in ((-0.2, "nvctl", "compile", "tab:blue"), (0.2, "northd", "total", "tab:orange")):
            st = [z[side][key] for z in sizes]
            a1.bar([i + off for i in range(len(sizes))], [x["median"] for x in st], 0.4, color=color,
                   yerr=[[x["median"] - x["min"] for x in st], [x["max"] - x["median"] for x in st]], capsize=3,
                   label="nvctl: every host's OpenFlow" if side == "nvctl" else "ovn-northd: logical flows in SB")
        a1.set_xticks(range(len(sizes)), labels)
        a1.set_ylabel("full compile, s")
        a1.legend(fontsize=8)
        ch = [(z["nvctl"]["one_port_change"]["change_ms_median"], z["northd"]["one_port"]["change"]["median"] * 1000)
              for z in sizes]
        a2.bar([i - 0.2 for i in range(len(sizes))], [c[0] for c in ch], 0.4, color="tab:blue", label="nvctl")
        a2.bar([i + 0.2 for i in range(len(sizes))], [c[1] for c in ch], 0.4, color="tab:orange",
               label="ovn-northd (--wait=sb)")
        a2.set_yscale("log")
        a2.set_xticks(range(len(sizes)), labels)
        a2.set_ylabel("one-port change, ms (log)")
        a2.legend(fontsize=8)
        fig.tight_layout()
        made.append(_save(fig, out, "northd.png"))
    if "vm" in res and "bridge" in res["vm"]:
        v, b, n = res["vm"]["vm"], res["vm"]["bridge"], res["vm"]["namespace"]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        for off, x, label, color in ((-0.2, v, "nvctl VM (hv1<->hv2)", "tab:blue"),
                                     (0.2, b, "same QEMU, plain bridge", "tab:gray")):
            xs = [i + 1 + off for i in range(len(x["per_move"]))]
            a1.bar(xs, [p["lost"] for p in x["per_move"]], 0.4, color=color, label=f"{label}: pings lost")
            a1.plot(xs, [p["downtime_intervals"] for p in x["per_move"]], "_", color="k", ms=12)
        a1.plot([], [], "_", color="k", ms=12, label="QEMU's downtime, 10 ms intervals")
        a1.set_xlabel("migration")
        a1.set_ylabel("pings lost (10 ms interval)")
        a1.set_ylim(0, max(p["lost"] for x in (v, b) for p in x["per_move"]) * 1.5 + 1)
        a1.legend(fontsize=7, loc="upper right")
        groups = [(v, "nvctl VM"), (b, "plain\nbridge")]
        if "vm_stream" in res["vm"] and "bridge_stream" in res["vm"]:
            groups += [(res["vm"]["vm_stream"], "nvctl VM\n+ TCP stream"),
                       (res["vm"]["bridge_stream"], "plain bridge\n+ TCP stream")]
        groups.append((n, "nvctl\nnamespace"))
        for off, key, label in ((-0.2, "lost_per_move", "pings lost per move"),
                                (0.2, "excess_intervals", "excess over QEMU's downtime")):
            a2.bar([i + off for i, (x, _) in enumerate(groups) if key in x],
                   [x[key]["median"] for x, _ in groups if key in x], 0.4, label=label)
        a2.axhline(0, color="k", lw=0.5)
        a2.set_xticks(range(len(groups)), [name for _, name in groups], fontsize=8)
        a2.set_ylabel("10 ms intervals, median")
        a2.legend(fontsize=8)
        fig.tight_layout()
        made.append(_save(fig, out, "vm.png"))
    if "scale" in res and res["scale"].get("sizes"):
        sz = res["scale"]["sizes"]
        keys = sorted(sz, key=int)
        fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4))
        groups = [(h, k) for h in keys for k in ("plugged", "unplugged")]
        for off, side, color in ((-0.2, "nvctl", "tab:blue"), (0.2, "ovn", "tab:orange")):
            st = [sz[h]["convergence"][f"{side}_{k}"] for h, k in groups]
            a1.bar([i + off for i in range(len(groups))], [x["median"] for x in st], 0.4, color=color,
                   yerr=[[x["median"] - x["min"] for x in st], [x["max"] - x["median"] for x in st]], capsize=3,
                   label="nvctl" if side == "nvctl" else "OVN")
        a1.set_xticks(range(len(groups)), [f"{h} hosts\n({'a' if k == 'plugged' else 'b'}) {k}" for h, k in groups],
                      fontsize=8)
        a1.set_ylabel("s to every pair in every tenant")
        a1.set_title("convergence")
        a1.legend(fontsize=8)
        for off, side, color in ((-0.2, "nvctl", "tab:blue"), (0.2, "ovn", "tab:orange")):
            a2.bar([i + off for i in range(len(keys))], [sz[h]["flows_per_host"][side]["max"] for h in keys], 0.4,
                   color=color, label="nvctl" if side == "nvctl" else "OVN")
        a2.set_xticks(range(len(keys)), [f"{h} hosts\n{sz[h]['ports']} ports" for h in keys])
        a2.set_ylabel("OpenFlow flows, busiest host")
        a2.legend(fontsize=8)
        a3.bar([i - 0.2 for i in range(len(keys))], [sz[h]["memory"]["nvctl_controller_mb"] or 0 for h in keys], 0.4,
               color="tab:blue", label="nvctl controller")
        a3.bar([i + 0.2 for i in range(len(keys))], [sz[h]["memory"]["ovn_total_mb"] or 0 for h in keys], 0.4,
               color="tab:orange", label="northd + NB + SB + ovn-controllers")
        a3.set_xticks(range(len(keys)), [f"{h} hosts" for h in keys])
        a3.set_ylabel("resident memory, MB")
        a3.legend(fontsize=8)
        fig.tight_layout()
        made.append(_save(fig, out, "scale.png"))
    if "netpol" in res and "port_add" in res["netpol"]:
        n, c, p = res["netpol"], res["netpol"]["compile"], res["netpol"]["port_add"]
        fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4))
        for off, side, label, color in ((-0.2, "policies", "networkPolicies", "tab:blue"),
                                        (0.2, "acls", "the same as ACLs", "tab:orange")):
            f = c[side]["flows_per_host"]
            a1.bar([i + off for i in range(2)], [f["tenant_max"], f["tenant_mean"]], 0.4, color=color, label=label)
        a1.set_xticks(range(2), ["busiest host", "mean over hosts"])
        a1.set_ylabel("the tenant's OpenFlow flows per host")
        a1.set_title(f"{n['ports']} ports, {n['policies']} policies, {n['hosts']} hosts")
        a1.legend(fontsize=8)

        def bars(ax, stats, labels, colors):
            ax.bar(labels, [x["median"] for x in stats], color=colors, capsize=3,
                   yerr=[[x["median"] - x["min"] for x in stats], [x["max"] - x["median"] for x in stats]])
        bars(a2, [c["policies"]["compile_s"], c["acls"]["compile_s"]], ["networkPolicies", "ACLs"],
             ["tab:blue", "tab:orange"])
        a2.set_ylabel("compile of the tenant, s")
        a2.set_title(f"median of {n['reps']} (min-max)")
        bars(a3, [p["policies"]["ms"], p["acls"]["ms"], p["plain"]["ms"]],
             ["port.add\n(policies)", "tenant apply\n(ACLs rewritten)", "port.add\n(no policy)"],
             ["tab:blue", "tab:orange", "tab:gray"])
        a3.set_yscale("log")
        a3.set_ylabel("one labelled port added, ms (log)")
        for i, side in enumerate(("policies", "acls", "plain")):
            a3.text(i, p[side]["ms"]["median"], f"{p[side]['flow_mods']['median']:g} flow-mods\n"
                    f"{p[side]['hosts_touched']['median']:g} hosts", ha="center", va="bottom", fontsize=7)
        fig.tight_layout()
        made.append(_save(fig, out, "netpol.png"))
    return made


def _save(fig, out: str, name: str) -> str:
    path = os.path.join(out, name)
    fig.savefig(path, dpi=90)
    return name


class Suites:
    """The suites as steps of the run's progress: suite i of N, its name, its time."""

    def __init__(self, rep, total: int):
        self.task = rep.task("suites", total, lines="each")
        self.name, self.t = None, time.monotonic()

    def next(self, name: str | None) -> None:
        """The suite before is done (a step); `name` (None: no more) starts."""
        now = time.monotonic()
        if self.name is not None:
            self.task.advance(f"{self.name} done in {now - self.t:.1f}s")
        self.name, self.t = name, now
        if name is not None:
            self.task.update(text=f"{name} running")


def main(argv=None) -> int:
    from controller.client.progress import Reporter
    with Reporter("bench") as rep:  # bars on a terminal's stderr, else a line per suite
        return _main(argv, rep)


def _main(argv, rep) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"), help="results directory")
    ap.add_argument("--only", default=",".join(ALL),
                    help=f"comma-separated subset of {','.join(ALL + EXTRA)} (default: all but {','.join(EXTRA)})")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not for reporting)")
    ap.add_argument("--cpu-hog", nargs="?", const="any", default=None, metavar="CPU",
                    help="keep one core busy for the whole run: a busy-loop process of the bench's own (pinned to "
                         "CPU if given, as taskset -c CPU), stopped by its PID at the end; recorded in the results")
    a = ap.parse_args(argv)
    only = [x for x in a.only.split(",") if x]
    bad = [x for x in only if x not in ALL + EXTRA]
    if bad:
        ap.error(f"--only: unknown {', '.join(bad)} (choose from {', '.join(ALL + EXTRA)})")
    from bench.hog import CpuHog
    hog = CpuHog(None if a.cpu_hog == "any" else int(a.cpu_hog)).start() if a.cpu_hog is not None else None
    try:
        return _suites(a, only, rep, hog)
    finally:
        if hog:
            print(f"[bench] CPU hog stopped: {hog.stop()}", flush=True)


def _suites(a, only: list[str], rep, hog) -> int:
    os.makedirs(a.out, exist_ok=True)
    from bench import live, pure
    t0 = time.monotonic()
    res: dict = {"machine": machine()}
    big = (100, 10) if a.quick else (1000, 100)
    suites = Suites(rep, len(only))
    if "compile" in only:
        suites.next("compile")
        res["compile"] = pure.compile_scaling((12, 25, 50, 100) if a.quick else (62, 125, 250, 500, 1000))
    if "northd" in only:
        suites.next("northd")
        from bench import northd
        res["northd"] = northd.northd_compare(*(big if not a.quick else (100, 10)), reps=1 if a.quick else 3,
                                              change_reps=3 if a.quick else 10)
        print(northd.report(res["northd"]), flush=True)
    if "change" in only:
        suites.next("change")
        res["change"] = pure.one_port_change(*big)
    if "memory" in only:
        suites.next("memory")
        res["memory"] = pure.memory(*big)
    if {"install", "migration"} & set(only):
        from scenarios.lab import Lab
        d = tempfile.mkdtemp(prefix="nvbench-")
        lab = Lab(d, log=lambda m: print(m, flush=True))
        try:
            suites.next("migration" if "migration" in only else "install")  # with its lab's bring-up
            lab.up(hosts=3)
            if "migration" in only:
                res["migration"] = live.migration(lab, moves=6 if a.quick else 20)
            if "install" in only:
                if "migration" in only:
                    suites.next("install")
                res["install"] = live.install_rate(lab, tenants=10 if a.quick else 60)
        finally:
            lab.down(quiet=True)
            shutil.rmtree(d, ignore_errors=True)
    if "versus" in only:
        suites.next("versus")
        from bench.versus import versus
        res["versus"] = on_fresh_lab(lambda lab: versus(lab, ports=20 if a.quick else 100, reps=1 if a.quick else 3,
                                                         path_reps=1 if a.quick else 5))
        res["versus"]["cpu_hog"] = hog.info() if hog else None  # what else kept the machine busy
    if "verify" in only:
        suites.next("verify")
        from bench import verify_bench
        res["verify"] = verify_bench.main(["--tenants", "100" if a.quick else "1000",
                                           "--hosts", "10" if a.quick else "100"])
    if "flood" in only:
        suites.next("flood")
        from bench.flood import flood
        res["flood"] = on_fresh_lab(lambda lab: flood(lab, repeats=2 if a.quick else 3))
    if "mtu" in only:
        suites.next("mtu")
        from bench.mtu import mtu
        res["mtu"] = mtu(repeats=2 if a.quick else 3)
    if "dhcp" in only:
        suites.next("dhcp")
        from bench.dhcp import dhcp, report
        res["dhcp"] = on_fresh_lab(lambda lab: dhcp(lab, repeats=2 if a.quick else 3))
        print(report(res["dhcp"]), flush=True)
    if "cni" in only:
        suites.next("cni")
        from bench import cni
        res["cni"] = on_fresh_lab(lambda lab: cni.cni(lab, containers=10 if a.quick else 50))
        print(cni.report(res["cni"]), flush=True)
    if "cluster" in only:
        suites.next("cluster")
        from bench import cluster
        res["cluster"] = {"store": cluster.store(reps=5 if a.quick else 20),
                          "failover": cluster.failover(kills=2 if a.quick else 10),
                          "restart": cluster.restart(hosts=3 if a.quick else 10, ports=60 if a.quick else 1000)}
        print(cluster.report(res["cluster"]), flush=True)
    if "observe" in only:
        suites.next("observe")
        from bench import observe
        res["observe"] = {"refresh": observe.refresh(*big, reps=3 if a.quick else 5),
                          "cpu": on_fresh_lab(lambda lab: observe.cpu_share(lab, seconds=5 if a.quick else 15,
                                                                             reps=1 if a.quick else 3))}
        print(observe.report(res["observe"]), flush=True)
    if "vm" in only:
        suites.next("vm")
        from bench import vm
        res["vm"] = on_fresh_lab(lambda lab: vm.vm_bench(lab, boots=2 if a.quick else 5, moves=4 if a.quick else 10,
                                                         log=lambda m: print(m, flush=True)))
        print(vm.report(res["vm"]), flush=True)
    if "netpol" in only:
        suites.next("netpol")
        from bench import netpol
        res["netpol"] = netpol.netpol_bench(ports=200 if a.quick else 1000, reps=2 if a.quick else 5,
                                            samples=200 if a.quick else 300)
        print(netpol.report(res["netpol"]), flush=True)
    if "gateway" in only:
        suites.next("gateway")
        from bench import gateway
        res["gateway"] = on_fresh_lab(lambda lab: gateway.gateway_failover(lab, repeats=3 if a.quick else 10))
        print(gateway.report(res["gateway"]), flush=True)
    if "bgp" in only:
        suites.next("bgp")
        from bench import bgp
        res["bgp"] = on_fresh_lab(lambda lab: bgp.bgp_routes(lab, repeats=3 if a.quick else 5), bgp=True)
        print(bgp.report(res["bgp"]), flush=True)
    if "health" in only:
        suites.next("health")
        from bench import lb_health
        res["health"] = on_fresh_lab(lambda lab: lb_health.lb_health(lab, repeats=3 if a.quick else 7))
        print(lb_health.report(res["health"]), flush=True)
    if "scale" in only:
        suites.next("scale")
        from bench import scale
        res["scale"] = scale.run_sizes(((2, 2), (3, 3)) if a.quick else ((3, 15), (10, 50)), reps=1 if a.quick else 2,
                                       log=lambda m: print(m, flush=True))
        print(scale.report(res["scale"]), flush=True)
    suites.next(None)
    res["seconds"] = round(time.monotonic() - t0, 1)
    res["cpu_hog"] = hog.info() if hog else None
    path = os.path.join(a.out, "results.json")
    if set(only) != set(ALL + EXTRA) and os.path.exists(path):  # a partial run keeps the other figures
        with open(path) as f:
            kept = {k: v for k, v in json.load(f).items() if k in ALL + EXTRA and k not in only}
        res = {**kept, **res}
    res["ratios"] = ratios(res)
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    res["plots"] = plots(res, a.out)
    print(f"[bench] done in {res['seconds']}s: {a.out}/results.json, plots {', '.join(res['plots'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
