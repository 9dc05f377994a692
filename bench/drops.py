"""Where packets are dropped during a convergence run: counters read before and after
on every lab host, and their difference.

Per host (each its own ovs-vswitchd in its own namespace):
- the userspace datapath: `dpif-netdev/pmd-stats-show` (packets, upcalls, "miss with
  failed upcall" = lost), `dpctl/show -s` (lookups lost; every port's RX/TX dropped and
  errors as the datapath counts them), `coverage/show` (every counter about drops,
  lost or failed upcalls, overflows);
- the kernel under it: its AF_PACKET sockets' drops (`ss -0 -m`: skmem d<N>, a receive
  queue that was full when the kernel had a frame for it) and the host-side veths'
  rx/tx dropped (`ip -s link`);
- machine-wide: /proc/net/softnet_stat (frames dropped from a CPU's backlog queue,
  netdev_max_backlog, and its time squeezes) and the neighbour tables' counters
  (/proc/net/stat/arp_cache: one table for every namespace, see tep/neigh.py), shared
  with whatever else runs.
"""
from __future__ import annotations

import json
import re
import subprocess

# coverage counters worth keeping: the ones that count something lost
_COVERAGE = re.compile(r"drop|lost|fail|overflow|full|error|limit", re.I)


def parse_coverage(text: str) -> dict[str, int]:
    """coverage/show's totals of the counters about losses."""
    out = {}
    for ln in text.splitlines():
        m = re.match(r"(\S+)\s+.*total:\s*(\d+)", ln.strip())
        if m and _COVERAGE.search(m.group(1)):
            out[m.group(1)] = int(m.group(2))
    return out


def parse_dpctl(text: str) -> dict[str, int]:
    """dpctl/show -s: the datapath's lookups lost, and its ports' drops and errors summed."""
    out = {"lookups_lost": 0, "lookups_missed": 0, "port_rx_dropped": 0, "port_tx_dropped": 0,
           "port_rx_errors": 0, "port_tx_errors": 0}
    for m in re.finditer(r"lookups: hit:(\d+) missed:(\d+) lost:(\d+)", text):
        out["lookups_missed"] += int(m.group(2))
        out["lookups_lost"] += int(m.group(3))
    for m in re.finditer(r"(RX|TX) packets:\S+ errors:(\d+) dropped:(\d+)", text):
        d = m.group(1).lower()
        out[f"port_{d}_errors"] += int(m.group(2))
        out[f"port_{d}_dropped"] += int(m.group(3))
    return out


def parse_pmd(text: str) -> dict[str, int]:
    out = {}
    for key, label in (("dp_packets", "packets received"), ("dp_upcalls", "miss with success upcall"),
                       ("dp_upcalls_failed", "miss with failed upcall")):
        m = re.search(rf"{label}:\s*(\d+)", text)
        out[key] = int(m.group(1)) if m else 0
    return out


def parse_ss_packet(text: str) -> dict[str, int]:
    """`ss -0 -a -m -e -n`: each AF_PACKET socket's drops (skmem d<N>), by socket inode
    (or by position when ss shows none)."""
    out: dict[str, int] = {}
    key = None
    for ln in text.splitlines():
        m = re.search(r"\bino:(\d+)", ln)
        if m:
            key = m.group(1)
        elif ln and not ln[0].isspace() and not ln.startswith("Netid"):
            key = f"#{len(out)}"
        d = re.search(r"skmem:\([^)]*\bd(\d+)\)", ln)
        if d:
            out[key or f"#{len(out)}"] = int(d.group(1))
            key = None
    return out


def parse_links(text: str) -> dict[str, dict[str, int]]:
    """`ip -j -s link show`: each interface's rx/tx dropped (and rx missed)."""
    out = {}
    for link in json.loads(text or "[]"):
        st = link.get("stats64") or link.get("stats") or {}
        rx, tx = st.get("rx", {}), st.get("tx", {})
        out[link["ifname"]] = {"rx_dropped": rx.get("dropped", 0), "tx_dropped": tx.get("dropped", 0),
                               "rx_missed": rx.get("missed", 0) or rx.get("over_errors", 0) or 0}
    return out


def parse_softnet(text: str) -> dict[str, int]:
    """/proc/net/softnet_stat summed over CPUs: frames processed, dropped (backlog full),
    time squeezes (the softirq ran out of budget with work left)."""
    out = {"softnet_processed": 0, "softnet_dropped": 0, "softnet_time_squeeze": 0}
    for ln in text.splitlines():
        f = ln.split()
        if len(f) >= 3:
            out["softnet_processed"] += int(f[0], 16)
            out["softnet_dropped"] += int(f[1], 16)
            out["softnet_time_squeeze"] += int(f[2], 16)
    return out


def parse_neigh_stat(text: str, prefix: str) -> dict[str, int]:
    """/proc/net/stat/arp_cache (or ndisc_cache) summed over CPUs: one table for every
    namespace, so the machine's: new entries refused because the table was full
    (table_fulls: the packet that needed one is dropped), packets dropped waiting for
    resolution (unresolved_discards), forced garbage collections."""
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    out = {f"{prefix}_table_fulls": 0, f"{prefix}_unresolved_discards": 0, f"{prefix}_forced_gc_runs": 0}
    if not lines:
        return out
    head = lines[0]
    for row in lines[1:]:
        for col in ("table_fulls", "unresolved_discards", "forced_gc_runs"):
            if col in head:
                out[f"{prefix}_{col}"] += int(row[head.index(col)], 16)
    return out


def _run(cmd: list[str], env=None) -> str:
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def host_snapshot(lab, host: str) -> dict:
    env = lab.ovs_env(host)
    ns = lab.host_ns(host)
    return {"pmd": parse_pmd(_run(["ovs-appctl", "dpif-netdev/pmd-stats-show"], env)),
            "dpctl": parse_dpctl(_run(["ovs-appctl", "dpctl/show", "-s"], env)),
            "coverage": parse_coverage(_run(["ovs-appctl", "coverage/show"], env)),
            "af_packet": parse_ss_packet(_run(["ip", "netns", "exec", ns, "ss", "-0", "-a", "-m", "-e", "-n"])),
            "links": parse_links(_run(["ip", "-n", ns, "-j", "-s", "link", "show"]))}


def snapshot(lab) -> dict:
    with open("/proc/net/softnet_stat") as f:
        softnet = parse_softnet(f.read())
    for name, prefix in (("arp_cache", "arp"), ("ndisc_cache", "nd")):
        try:
            with open(f"/proc/net/stat/{name}") as f:
                softnet.update(parse_neigh_stat(f.read(), prefix))
        except OSError:
            pass
    return {"hosts": {h: host_snapshot(lab, h) for h in sorted(lab.manifest()["hosts"])}, "softnet": softnet}


def host_delta(a: dict, b: dict) -> dict[str, int]:
    """What one host counted between snapshots a and b (things that appeared in between
    count from zero; things gone are left out)."""
    out = {k: b["pmd"][k] - a["pmd"].get(k, 0) for k in b["pmd"]}
    out.update({k: b["dpctl"][k] - a["dpctl"].get(k, 0) for k in b["dpctl"]})
    out["af_packet_drops"] = sum(v - a["af_packet"].get(s, 0) for s, v in b["af_packet"].items())
    for k in ("rx_dropped", "tx_dropped", "rx_missed"):
        out[f"veth_{k}"] = sum(v[k] - a["links"].get(n, {}).get(k, 0) for n, v in b["links"].items())
    cov = {k: v - a["coverage"].get(k, 0) for k, v in b["coverage"].items()}
    out["coverage"] = {k: v for k, v in sorted(cov.items()) if v}
    return out


def delta(a: dict, b: dict) -> dict:
    """Per host, every host summed (`all`), and the machine's softnet counters."""
    hosts = {h: host_delta(a["hosts"][h], b["hosts"][h]) for h in b["hosts"] if h in a["hosts"]}
    total: dict = {}
    for d in hosts.values():
        for k, v in d.items():
            if k == "coverage":
                for c, n in v.items():
                    total.setdefault("coverage", {})[c] = total.get("coverage", {}).get(c, 0) + n
            else:
                total[k] = total.get(k, 0) + v
    total.setdefault("coverage", {})
    return {"all": total, "hosts": hosts,
            "machine": {k: b["softnet"][k] - a["softnet"].get(k, 0) for k in b["softnet"]}}


def brief(d: dict) -> str:
    """One line: the non-zero drop counters of a delta."""
    a = d["all"]
    keys = ("dp_upcalls_failed", "lookups_lost", "port_rx_dropped", "port_tx_dropped", "af_packet_drops",
            "veth_rx_dropped", "veth_tx_dropped")
    parts = [f"{k}={a[k]}" for k in keys if a.get(k)]
    parts += [f"{k}={v}" for k, v in a.get("coverage", {}).items()]
    parts += [f"{k}={v}" for k, v in d["machine"].items() if k != "softnet_processed" and v]
    return ", ".join(parts) or "no drops counted"
