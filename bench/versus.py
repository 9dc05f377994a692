"""nvctl and OVN side by side on the same lab hosts, plus the data-path baselines.

One lab of 3 hosts (each its own OVS instance). On those same OVS instances, with the
same 100-port topology (two switches, a router with SNAT to the outside, a stateful ACL
guarding one switch):

- **Convergence, both ways, repeated and interleaved.** The clock runs from the change
  (`tenant create` for nvctl, one ovn-nbctl transaction for OVN) until every one of the
  9,900 ordered port pairs answers a ping (bench/reach.py).
  (a) plugged: every workload interface exists before the clock starts, as a CMS has
      its VIFs plugged. For OVN: namespaces on br-ovn with iface-id. For nvctl: the
      bench plugs the workloads itself with the ofports the controller will allocate
      (computed offline with the controller's allocator, checked against what it did
      allocate), and the tenant's ports say `workload: false`; the clock has only
      compile, store and flows.
  (b) unplugged: the clock includes making the 100 workloads. nvctl's controller plugs
      them (its lab driver); for OVN the bench plugs the VIFs right after the NB
      transaction with the very same code (in-process netlink, 8 at once, one OVSDB
      transaction per host), as a CMS would.
  Every repetition starts from fresh namespaces (no warm ARP caches).
- Flows per host, and one port added (plugged first on both sides).
- TCP throughput (iperf3) and ping RTT (p50/p99 of 200 pings at 10 ms) hv1 -> hv2 through
  nvctl's full pipeline, OVN's, a minimal two-flow pipeline on the same OVS instances
  (in_port -> tunnel, tunnel -> port, a bridge of its own) and a plain veth pair,
  all four set up at once and measured in turns, every other workload unplugged first
  (the flows stay): this datapath polls every port in one thread, so idle ports cost
  every pipeline alike and would hide what the pipelines themselves cost. One run of each pipeline also has its
  datapath read (`dpif-netdev/pmd-stats-show`: packets, recirculations, megaflow hits,
  upcalls, cycles per packet; `dpctl/dump-flows`: megaflows) on both hosts.
"""
from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from bench import drops
from bench.reach import Reach
from bench.stats import percentile, ratio, spread
from controller.client.api import call
from controller.compile.compiler import VXLAN_OVERHEAD
from controller.server.workloads import PLUG_WORKERS  # the bench plugs as the controller does
from scenarios.lab import CONTROLLER_IP, HostPlan, Lab, _kill_pidfile
from scenarios.netutil import iperf3
from tep import rxqueue, workload
from tep.driver import LabDriver, attachments_of, workload_namespace
from tep.ovs import INTEGRATION_BRIDGE, run
from topology.model import derived_mac

OVN_SCHEMAS = "/usr/share/ovn"
FRONT, BACK = "10.0.1", "10.0.2"
OVN_BRIDGE = "br-ovn"  # each host's bridge for ovn-controller, beside our br-int
MIN_BRIDGE = "br-min"  # the two-flow pipeline's bridge
TENANT = "bench"


def _mac(ip: str, kind: int = 0) -> str:
    """The MAC nvctl gives a port (kind 1: a router port), so OVN's ports get the same."""
    return derived_mac(ipaddress.IPv4Address(ip), kind)


def _hosts(ports: list[dict]) -> list[str]:
    return sorted({p["host"] for p in ports})


def extra_ports(ports: list[dict], n: int, host: str = "hv2") -> list[dict]:
    """The ports one-port changes add, one each: next in the same scheme, on `host`."""
    return [{**p, "host": host} for p in topology(len(ports) + n, _hosts(ports))[len(ports):]]


def topology(ports: int, hosts: list[str]) -> list[dict]:
    """[{name, switch, ip, mac, host}] alternating front/back, round-robin over hosts."""
    out = []
    for j in range(ports):
        sw = "front" if j % 2 == 0 else "back"
        ip = f"{FRONT if sw == 'front' else BACK}.{10 + j // 2}"
        out.append({"name": f"p{j}", "switch": sw, "ip": ip, "mac": _mac(ip), "host": hosts[j % len(hosts)]})
    return out


def nvctl_doc(ports: list[dict], name: str = TENANT, workloads: bool = True,
              external_ip: str = "203.0.113.10") -> dict:
    back = [p["name"] for p in ports if p["switch"] == "back"]
    return {"apiVersion": "nvctl/v1", "kind": "Tenant", "metadata": {"name": name}, "spec": {
        "switches": [{"name": "front", "cidr": f"{FRONT}.0/24"}, {"name": "back", "cidr": f"{BACK}.0/24"}],
        "routers": [{"name": "r", "ports": [{"switch": "front", "ip": f"{FRONT}.1"},
                                            {"switch": "back", "ip": f"{BACK}.1"}],
                     "external": {"ip": external_ip}}],
        "nat": [{"type": "snat", "router": "r", "cidr": f"{FRONT}.0/24"}],
        "acls": [{"priority": 200, "direction": "to-port", "ports": back, "protocol": "icmp", "action": "allow"},
                 {"priority": 201, "direction": "to-port", "ports": back, "protocol": "tcp", "dstPorts": [5432],
                  "action": "allow"},
                 {"priority": 100, "direction": "to-port", "ports": back, "action": "deny"}],
        "ports": [{**{k: p[k] for k in ("name", "switch", "ip", "host")}, **({} if workloads else {"workload": False})}
                  for p in ports]}}


def nvctl_yaml(ports: list[dict], name: str = TENANT, workloads: bool = True,
               external_ip: str = "203.0.113.10") -> str:
    import yaml
    return yaml.safe_dump(nvctl_doc(ports, name, workloads, external_ip), sort_keys=False)


def count_flows(lab: Lab, host: str, bridge: str) -> int:
    proto = "OpenFlow13" if bridge == INTEGRATION_BRIDGE else "OpenFlow15"
    out = subprocess.run(["ovs-ofctl", "-O", proto, "dump-flows", bridge], env=lab.ovs_env(host),
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return sum(1 for ln in out.splitlines() if "cookie=" in ln)


def _ping(src_ns: str, dst_ip: str, count: int = 200) -> dict:
    p = subprocess.run(["ip", "netns", "exec", src_ns, "ping", "-n", "-c", str(count), "-i", "0.01", dst_ip],
                       capture_output=True, text=True, timeout=60)
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", p.stdout)]
    if not rtts:
        return {"rtt_ms_p50": None, "rtt_ms_p99": None, "lost": count}
    return {"rtt_ms_p50": round(percentile(rtts, 0.5), 3), "rtt_ms_p99": round(percentile(rtts, 0.99), 3),
            "lost": count - len(rtts)}


def _path(src: dict, dst: dict, seconds: float = 3) -> dict:
    """iperf3 TCP (port 5432: the ACL lets it through) and 200 pings at 10 ms, src -> dst."""
    r = iperf3(src["namespace"], dst["namespace"], dst["ip"], seconds=seconds, port=5432)
    return {"mbps": r["mbps"], "retransmits": r["retransmits"], **_ping(src["namespace"], dst["ip"])}


def probe(sources: list[tuple[str, str]], targets=None, timeout: float = 120, groups=None) -> dict:
    """{"s": seconds until every pair answers, "load": what the paced probe offered
    (Reach.load), "workloads": the workloads' own drop counters}; a timeout is an error
    (which pairs, what was offered, what the workloads dropped), never a figure."""
    r = Reach(sources, targets, groups)
    try:
        t = r.wait(timeout)
        if t is None:
            some = sorted(r.pending)[:5]
            raise RuntimeError(f"{len(r.pending)} of {r.total} pairs still unanswered after {timeout:.0f}s, e.g. "
                               + ", ".join(f"{sources[i][1]}@{sources[i][0]} -> {r.targets[j]}" for i, j in some)
                               + f"; offered {r.load()}; workloads dropped {r.workload_drops()}")
        return {"s": round(t, 3), "load": r.load(), "workloads": r.workload_drops()}
    finally:
        r.close()


def reach(sources: list[tuple[str, str]], targets=None, timeout: float = 120, groups=None) -> float:
    """Seconds until every pair answers (probe(), the figure alone)."""
    return probe(sources, targets, timeout, groups)["s"]


def load_text(load: dict) -> str:
    """The offered load, to print beside a convergence figure."""
    return (f"{load['requests']} echo requests ({load['requests_per_pair']} per pair), mean {load['mean_pps']}/s, "
            f"peak {load['peak_pps']}/s (cap {load['rate_cap_pps']:.0f}/s: no figure below {load['floor_s']}s); "
            f"last pair's requests "
            f"{load['last_pair_gap_s']}s apart")


def flush_conntrack(lab: Lab) -> None:
    """Every host's connection tracker emptied. nvctl and OVN share each host's datapath,
    so its conntrack too, and their zone numbers overlap: each side starts clean. (OVS
    3.1's userspace conntrack aborts ovs-vswitchd, "assertion conn->conn_type ==
    CT_CONN_TYPE_DEFAULT failed in conn_update_state()", when OVN's probes met entries
    nvctl's identical probes had left in the same zone: seen on all three hosts.)"""
    for h in lab.manifest()["hosts"]:
        _appctl(lab, h, "dpctl/flush-conntrack")


# plugging, the same code for both sides ----------------------------------------------------

def lab_driver(lab: Lab) -> LabDriver:
    """The controller's own lab driver on this lab's hosts (what the bench plugs with)."""
    return LabDriver({h: SimpleNamespace(info=lab.host_info(h)) for h in lab.manifest()["hosts"]})


class Offline:
    """The controller's allocator, run by the bench on what it will ask the controller
    (the lab holds no other tenants): the ofports a tenant's ports will get, so the
    bench can plug its workloads before the clock. Checked against what the controller
    did allocate (check())."""

    def __init__(self, lab: Lab):
        from controller.compile.allocator import InUse
        self.lab, self.used, self.held = lab, InUse(), {}

    def put(self, name: str, text: str, only: set[str] | None = None) -> list:
        """Allocate as tenant create/apply of `text` will; the attachments to plug."""
        from controller.compile.allocator import allocate
        from topology import schema
        t = schema.load_tenant(text, self.lab.manifest()["hosts"])
        prev = self.held.get(name)
        if prev:
            self.used.remove(*prev)
        alloc = allocate(t, prev[0] if prev else None, prev[1] if prev else None, self.used)
        self.used.add(t, alloc)
        self.held[name] = (t, alloc)
        mtu = self.lab.underlay_mtu - VXLAN_OVERHEAD
        return [a for n, a in attachments_of(t, alloc.ofport, {s.name: mtu for s in t.switches}).items()
                if only is None or n in only]

    def drop(self, name: str) -> None:
        if name in self.held:
            self.used.remove(*self.held.pop(name))

    def check(self, name: str) -> None:
        got = {p["name"]: p["ofport"] for p in call(self.lab.api_path, "tenant.show", name=name)["ports"]}
        want = dict(self.held[name][1].ofport)
        if got != want:
            bad = sorted(n for n in want if got.get(n) != want[n])
            raise RuntimeError(f"{name}: the controller allocated other ofports than the bench plugged "
                               f"({', '.join(bad[:5])})")


def plug(lab: Lab, atts: list) -> None:
    errors = lab_driver(lab).plug_many(atts, PLUG_WORKERS)
    if errors:
        raise RuntimeError(f"plugging nvctl's workloads: {len(errors)} failed, e.g. {errors[:3]}")


def unplug(lab: Lab, bridge: str, ifnames_by_host: dict[str, list[str]], namespaces: list[str]) -> None:
    """Workload interfaces off `bridge` (one OVSDB transaction per host), namespaces gone."""
    for host, names in ifnames_by_host.items():
        if names:
            lab.ovsdb(host).txn(*[["--if-exists", "del-port", bridge, n] for n in names], timeout=60)
    for ns in namespaces:
        workload.delete_namespace(ns)


def nvctl_ifnames(ports: list[dict], name: str = TENANT) -> dict[str, list[str]]:
    from tep.driver import host_ifname
    out: dict[str, list[str]] = {}
    for p in ports:
        out.setdefault(p["host"], []).append(host_ifname(name, p["name"]))
    return out


def _ovn_ifname(lab: Lab, p: dict) -> str:
    return f"o{lab.prefix[2:6]}{p['name']}"[:15]


def plug_ovn(lab: Lab, ports: list[dict]) -> dict[str, dict]:
    """OVN's VIFs: a workload namespace per port (the same in-process code as nvctl's),
    8 at once, then one OVSDB transaction per host putting them on br-ovn with
    iface-id = the logical port: VIFs as a CMS plugs them."""
    def make(p):
        gw = p["ip"].rsplit(".", 1)[0] + ".1"  # the router's port on the port's /24
        workload.create_workload(ovn_ns(lab, p), lab.host_ns(p["host"]), _ovn_ifname(lab, p), p["ip"], 24,
                                 p["mac"], gw, lab.underlay_mtu - GENEVE_OVERHEAD)
    with ThreadPoolExecutor(max_workers=PLUG_WORKERS) as pool:
        list(pool.map(make, ports))
    by_host: dict[str, list[dict]] = {}
    for p in ports:
        by_host.setdefault(p["host"], []).append(p)

    def ovsdb(item):
        host, ps = item
        cmds = []
        for p in ps:
            n = _ovn_ifname(lab, p)
            cmds += [["--may-exist", "add-port", OVN_BRIDGE, n],
                     ["set", "interface", n, f"external_ids:iface-id={p['name']}"]]
        lab.ovsdb(host).txn(*cmds, timeout=60)
        rxqueue.deepen_instance(lab.host_dir(host))
    with ThreadPoolExecutor(max_workers=len(by_host)) as pool:
        list(pool.map(ovsdb, by_host.items()))
    return {p["name"]: {**p, "namespace": ovn_ns(lab, p)} for p in ports}


def ovn_ns(lab: Lab, p: dict) -> str:
    return f"{lab.prefix}o-{p['name']}"


def unplug_ovn(lab: Lab, ports: list[dict]) -> None:
    by_host: dict[str, list[str]] = {}
    for p in ports:
        by_host.setdefault(p["host"], []).append(_ovn_ifname(lab, p))
    unplug(lab, OVN_BRIDGE, by_host, [ovn_ns(lab, p) for p in ports])


# nvctl -------------------------------------------------------------------------------------

def nvctl_converge(lab: Lab, ports: list[dict], plugged: bool, log=print) -> dict:
    """One convergence run; the tenant is left in place (nvctl_remove takes it away).
    Returns the figures and the Offline allocator that plugged it (None: unplugged)."""
    off = None
    if plugged:
        off = Offline(lab)
        plug(lab, off.put(TENANT, nvctl_yaml(ports)))
    cpu0 = datapath_clear(lab)
    d0 = drops.snapshot(lab)
    t0 = time.monotonic()
    call(lab.api_path, "tenant.create", yaml=nvctl_yaml(ports, workloads=not plugged), timeout=300)
    t_create = time.monotonic() - t0
    spaces = {p["name"]: workload_namespace(lab.prefix, TENANT, p["name"]) for p in ports}
    pr = probe([(spaces[p["name"]], p["ip"]) for p in ports])
    converge = round(time.monotonic() - t0, 3)
    dp = datapath_read(lab, cpu0)
    lost = {**drops.delta(d0, drops.snapshot(lab)), "workloads": pr["workloads"]}
    if off:
        off.check(TENANT)
    log(f"[bench] nvctl, workloads {'plugged before the clock' if plugged else 'made by the controller'}: "
        f"create {t_create:.2f}s, every pair reachable after {converge}s; probe: {load_text(pr['load'])}; "
        f"dropped: {drops.brief(lost)}")
    return {"create_s": round(t_create, 3), "converge_s": converge, "offline": off, "datapath": dp,
            "load": pr["load"], "drops": lost}


def nvctl_remove(lab: Lab, ports: list[dict], plugged: bool, name: str = TENANT) -> None:
    call(lab.api_path, "tenant.delete", name=name, timeout=300)
    flush_conntrack(lab)
    if plugged:  # the bench's own workloads: the controller leaves `workload: false` ports alone
        unplug(lab, INTEGRATION_BRIDGE, nvctl_ifnames(ports, name),
               [workload_namespace(lab.prefix, name, p["name"]) for p in ports])


def nvctl_one_port(lab: Lab, off: Offline, ports: list[dict], extra: dict, name: str = TENANT,
                   external_ip: str = "203.0.113.10") -> float | None:
    """`extra` plugged (as in (a)), then added by `tenant apply`; the clock runs until the
    tenant's first port (on hv1) and the new port reach each other."""
    text = nvctl_yaml(ports + [extra], name, True, external_ip)
    plug(lab, off.put(name, text, only={extra["name"]}))
    t0 = time.monotonic()
    call(lab.api_path, "tenant.apply", yaml=nvctl_yaml(ports + [extra], name, False, external_ip))
    ns = {p["name"]: workload_namespace(lab.prefix, name, p["name"]) for p in (ports[0], extra)}
    reach([(ns[ports[0]["name"]], ports[0]["ip"]), (ns[extra["name"]], extra["ip"])])
    dt = round(time.monotonic() - t0, 3)
    off.check(name)
    return dt


# OVN ---------------------------------------------------------------------------------------

class Ovn:
    """OVN central (NB, SB, northd) in the lab's controller namespace and an ovn-controller
    per host; every process ended by its pid file."""

    def __init__(self, lab: Lab, hosts: list[str]):
        self.lab = lab
        self.hosts = hosts
        self.dir = os.path.join(lab.dir, "ovn")
        self.pids: list[tuple[str, str]] = []

    def _env(self, sub: str) -> dict:
        d = os.path.join(self.dir, sub)
        os.makedirs(d, exist_ok=True)
        return {**os.environ, "OVS_RUNDIR": d, "OVS_LOGDIR": d, "OVN_RUNDIR": d, "OVN_LOGDIR": d, "OVS_DBDIR": d}

    def start(self) -> None:
        ctl = self.lab.ctl_ns
        for db, port in (("nb", 6641), ("sb", 6642)):
            d = os.path.join(self.dir, db)
            env = self._env(db)
            run(["ovsdb-tool", "create", f"{d}/{db}.db", f"{OVN_SCHEMAS}/ovn-{db}.ovsschema"])
            run(["ip", "netns", "exec", ctl, "ovsdb-server", f"{d}/{db}.db", f"--remote=punix:{d}/{db}.sock",
                 f"--remote=ptcp:{port}:{CONTROLLER_IP}", f"--pidfile={d}/ovsdb-server.pid",
                 f"--log-file={d}/ovsdb-server.log", "--detach"], env=env)
            self.pids.append((f"{d}/ovsdb-server.pid", "ovsdb-server"))
        d = os.path.join(self.dir, "northd")
        run(["ip", "netns", "exec", ctl, "ovn-northd", f"--ovnnb-db=unix:{self.dir}/nb/nb.sock",
             f"--ovnsb-db=unix:{self.dir}/sb/sb.sock", f"--pidfile={d}/ovn-northd.pid",
             f"--log-file={d}/ovn-northd.log", "--detach"], env=self._env("northd"))
        self.pids.append((f"{d}/ovn-northd.pid", "ovn-northd"))
        for h in self.hosts:
            plan = HostPlan(int(h[2:]))
            db = self.lab.ovsdb(h)
            db.vsctl("--may-exist", "add-br", OVN_BRIDGE, "--", "set", "bridge", OVN_BRIDGE, "datapath_type=netdev",
                     "fail-mode=secure")
            db.vsctl("set", "open", ".", f"external_ids:system-id={h}",
                     f"external_ids:ovn-remote=tcp:{CONTROLLER_IP}:6642", "external_ids:ovn-encap-type=geneve",
                     f"external_ids:ovn-encap-ip={plan.pa}", f"external_ids:ovn-bridge={OVN_BRIDGE}",
                     "external_ids:ovn-bridge-datapath-type=netdev")
            d = os.path.join(self.dir, h)
            run(["ip", "netns", "exec", self.lab.host_ns(h), "ovn-controller",
                 f"unix:{self.lab.host_dir(h)}/db.sock", f"--pidfile={d}/ovn-controller.pid",
                 f"--log-file={d}/ovn-controller.log", "--detach"],
                env={**self._env(h), "OVS_RUNDIR": self.lab.host_dir(h)})  # br-ovn.mgmt lives with the OVS
            self.pids.append((f"{d}/ovn-controller.pid", "ovn-controller"))
        deadline = time.monotonic() + 30
        while len(self.sbctl("--bare", "--columns=name", "list", "chassis").split()) < len(self.hosts):
            if time.monotonic() > deadline:
                raise RuntimeError("OVN: not every ovn-controller registered its chassis in 30 s")
            time.sleep(0.1)

    def nbctl(self, *args: str) -> str:
        return run(["ovn-nbctl", f"--db=unix:{self.dir}/nb/nb.sock", *args], timeout=120)

    def sbctl(self, *args: str) -> str:
        return run(["ovn-sbctl", f"--db=unix:{self.dir}/sb/sb.sock", *args], timeout=60)

    def stop(self) -> None:
        for path, name in reversed(self.pids):
            _kill_pidfile(path, name)
        for h in self.hosts:
            try:
                db = self.lab.ovsdb(h)
                db.vsctl("--if-exists", "del-br", OVN_BRIDGE)
                db.vsctl("remove", "open", ".", "external_ids", "ovn-remote")
            except Exception:  # the lab goes next anyway
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


# Every side gets the MTU its encapsulation leaves on the lab's underlay, as nvctl's own
# workloads do: VXLAN over IPv4 50 bytes; OVN's Geneve with its option 58 (what OVN's
# own documentation has a VM use on a 1500-byte network: 1442).
GENEVE_OVERHEAD = 58


def _ovn_port_cmds(p: dict) -> list[str]:
    return ["--", "lsp-add", p["switch"], p["name"], "--", "lsp-set-addresses", p["name"], f"{p['mac']} {p['ip']}",
            "--", "lsp-set-port-security", p["name"], f"{p['mac']} {p['ip']}"]


def ovn_topology_cmds(ports: list[dict], prefix: str = "") -> list[str]:
    """The same topology as nvctl_doc, as one ovn-nbctl transaction. With a prefix (a
    tenant's), its switches are PREFIXfront and PREFIXback, its router PREFIXr; the
    ports' names and switches must carry it already."""
    r = f"{prefix}r"
    cmds = ["ls-add", f"{prefix}front", "--", "ls-add", f"{prefix}back", "--", "lr-add", r]
    for sw, net in ((f"{prefix}front", FRONT), (f"{prefix}back", BACK)):
        cmds += ["--", "lrp-add", r, f"{r}-{sw}", _mac(f"{net}.1", kind=1), f"{net}.1/24",
                 "--", "lsp-add", sw, f"{sw}-r", "--", "lsp-set-type", f"{sw}-r", "router",
                 "--", "lsp-set-addresses", f"{sw}-r", "router",
                 "--", "lsp-set-options", f"{sw}-r", f"router-port={r}-{sw}"]
    back = f"{prefix}back"
    cmds += ["--", "acl-add", back, "to-lport", "200", "ip4 && icmp4", "allow-related",
             "--", "acl-add", back, "to-lport", "201", "ip4 && tcp.dst == 5432", "allow-related",
             # nvctl's deny guards the back ports, not the router's port on the switch
             "--", "acl-add", back, "to-lport", "100", f'outport != "{back}-r" && ip4', "drop"]
    for p in ports:
        cmds += _ovn_port_cmds(p)
    return cmds


def ovn_converge(ovn: Ovn, lab: Lab, ports: list[dict], plugged: bool, log=print) -> dict:
    """One convergence run of OVN; its topology and VIFs are left in place (ovn_remove)."""
    vifs = plug_ovn(lab, ports) if plugged else None
    cpu0 = datapath_clear(lab)
    d0 = drops.snapshot(lab)
    t0 = time.monotonic()
    ovn.nbctl(*ovn_topology_cmds(ports))
    if vifs is None:
        vifs = plug_ovn(lab, ports)
    pr = probe([(vifs[p["name"]]["namespace"], p["ip"]) for p in ports])
    converge = round(time.monotonic() - t0, 3)
    dp = datapath_read(lab, cpu0)
    lost = {**drops.delta(d0, drops.snapshot(lab)), "workloads": pr["workloads"]}
    log(f"[bench] OVN, VIFs {'plugged before the clock' if plugged else 'plugged after the NB transaction'}: "
        f"every pair reachable after {converge}s; probe: {load_text(pr['load'])}; dropped: {drops.brief(lost)}")
    return {"converge_s": converge, "datapath": dp, "load": pr["load"], "drops": lost}


def ovn_remove(ovn: Ovn, lab: Lab, ports: list[dict], prefixes: list[str] = ("",)) -> None:
    cmds = ["--wait=hv"]
    for x in prefixes:
        cmds += ["--", "ls-del", f"{x}front", "--", "ls-del", f"{x}back", "--", "lr-del", f"{x}r"]
    ovn.nbctl(*cmds)
    unplug_ovn(lab, ports)
    flush_conntrack(lab)


def ovn_one_port(ovn: Ovn, lab: Lab, ports: list[dict], extra: dict) -> float | None:
    vif = plug_ovn(lab, [extra])[extra["name"]]  # plugged before the clock, as all of OVN's were
    t0 = time.monotonic()
    ovn.nbctl(*_ovn_port_cmds(extra)[1:])
    p0 = ports[0]
    reach([(ovn_ns(lab, p0), p0["ip"]), (vif["namespace"], extra["ip"])])
    return round(time.monotonic() - t0, 3)


# data-path floors ----------------------------------------------------------------------------

def two_flow_up(lab: Lab) -> tuple[dict, dict]:
    """Two flows per host on a bridge of its own (br-min, VXLAN on UDP 4790) on hv1 and hv2
    of the same OVS instances: in_port=workload -> tunnel to the peer, tunnel -> workload."""
    a = {"host": "hv1", "ip": "10.9.0.1", "name": "min-a"}
    b = {"host": "hv2", "ip": "10.9.0.2", "name": "min-b"}
    for me, peer in ((a, b), (b, a)):
        h = me["host"]
        db = lab.ovsdb(h)
        pa, peer_pa = HostPlan(int(h[2:])).pa, HostPlan(int(peer["host"][2:])).pa
        db.vsctl("--may-exist", "add-br", MIN_BRIDGE, "--", "set", "bridge", MIN_BRIDGE, "datapath_type=netdev",
                 "fail-mode=secure", "protocols=OpenFlow13",
                 "--", "--may-exist", "add-port", MIN_BRIDGE, "vxmin", "--", "set", "interface", "vxmin",
                 "type=vxlan", "ofport_request=100", f"options:local_ip={pa}", "options:remote_ip=flow",
                 "options:key=flow", "options:dst_port=4790")
        me["namespace"] = f"{lab.prefix}b-{me['name']}"
        ifname = f"{lab.prefix[2:6]}{me['name']}"
        workload.create_workload(me["namespace"], lab.host_ns(h), ifname, me["ip"], 24, _mac(me["ip"]),
                                 mtu=lab.underlay_mtu - VXLAN_OVERHEAD)
        db.vsctl("--may-exist", "add-port", MIN_BRIDGE, ifname, "--", "set", "interface", ifname, "ofport_request=1")
        rxqueue.deepen_instance(lab.host_dir(h))
        flows = (f"in_port=1,actions=set_field:{peer_pa}->tun_dst,set_field:9->tun_id,output:100\n"
                 "in_port=100,actions=output:1\n")
        subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "replace-flows", MIN_BRIDGE, "-"], input=flows, text=True,
                       env=lab.ovs_env(h), check=True, capture_output=True, timeout=30)
    return a, b


def two_flow_down(lab: Lab) -> None:
    for h in ("hv1", "hv2"):
        lab.ovsdb(h).vsctl("--if-exists", "del-br", MIN_BRIDGE)


def veth_up(lab: Lab) -> tuple[dict, dict]:
    """Two namespaces joined by one veth (TX checksum offload off, as in the workloads)."""
    a, b = f"{lab.prefix}b-va", f"{lab.prefix}b-vb"
    for ns in (a, b):
        workload.ensure_namespace(ns)
    run(["ip", "netns", "exec", a, "ip", "link", "add", "name", "eth0", "type", "veth", "peer", "name", "eth0",
         "netns", b])
    for ns, ip in ((a, "10.8.0.1"), (b, "10.8.0.2")):
        run(["ip", "netns", "exec", ns, "ip", "addr", "add", f"{ip}/24", "dev", "eth0"])
        run(["ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up"])
        run(["ip", "netns", "exec", ns, "ethtool", "-K", "eth0", "tx", "off"])
    return {"namespace": a, "ip": "10.8.0.1"}, {"namespace": b, "ip": "10.8.0.2"}


def _appctl(lab: Lab, host: str, *args: str) -> str:
    """ovs-appctl on one host's ovs-vswitchd; a failure (a switch that is gone) raises."""
    return run(["ovs-appctl", *args], env=lab.ovs_env(host))


def _pmd_stats(text: str) -> dict:
    """The main thread's counters from dpif-netdev/pmd-stats-show (no PMD threads here)."""
    out = {}
    for key, label in (("packets", "packets received"), ("recirculations", "packet recirculations"),
                       ("emc_hits", "emc hits"), ("smc_hits", "smc hits"), ("megaflow_hits", "megaflow hits"),
                       ("upcalls", "miss with success upcall"), ("lost", "miss with failed upcall"),
                       ("cycles_per_packet", "avg cycles per packet"),
                       ("subtable_lookups", "avg subtable lookups per megaflow hit")):
        m = re.search(rf"{label}:\s*([\d.]+)", text)
        if m:
            out[key] = float(m.group(1))
    return out


def _vswitchd_cpu_s(lab: Lab, host: str) -> float | None:
    try:
        with open(f"{lab.host_dir(host)}/ovs-vswitchd.pid") as f:
            pid = int(f.read())
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None


def datapath_clear(lab: Lab) -> dict:
    """Counters zeroed on every host; returns each ovs-vswitchd's CPU seconds so far."""
    cpu = {}
    for h in lab.manifest()["hosts"]:
        _appctl(lab, h, "dpif-netdev/pmd-stats-clear")
        cpu[h] = _vswitchd_cpu_s(lab, h)
    return cpu


def datapath_read(lab: Lab, since: dict) -> dict:
    """Since datapath_clear (which returned `since`): per host, packets, upcalls (first
    packets of a megaflow, handled by the slow path in ovs-vswitchd's main thread),
    recirculations, and ovs-vswitchd's CPU seconds (utime + stime)."""
    out = {}
    for h in sorted(lab.manifest()["hosts"]):
        st = _pmd_stats(_appctl(lab, h, "dpif-netdev/pmd-stats-show"))
        out[h] = {k: st.get(k) for k in ("packets", "upcalls", "lost", "recirculations")}
        now = _vswitchd_cpu_s(lab, h)
        if now is not None and since.get(h) is not None:
            out[h]["vswitchd_cpu_s"] = round(now - since[h], 2)
    return out


def datapath_profile(lab: Lab, src: dict, dst: dict, seconds: float = 3) -> dict:
    """One iperf3 run with both hosts' datapaths read: per host, what the main thread
    did per packet (recirculations per packet: conntrack and other passes through the
    datapath; cycles per packet), and the megaflows installed at the end of the run."""
    hosts = ("hv1", "hv2")
    for h in hosts:
        _appctl(lab, h, "dpif-netdev/pmd-stats-clear")
    r = iperf3(src["namespace"], dst["namespace"], dst["ip"], seconds=seconds, port=5432)
    out = {"mbps": r["mbps"]}
    for h in hosts:
        st = _pmd_stats(_appctl(lab, h, "dpif-netdev/pmd-stats-show"))
        flows = [ln for ln in _appctl(lab, h, "dpctl/dump-flows").splitlines() if ln.strip()]
        pkts = st.get("packets") or 0
        out[h] = {**st, "megaflows": len(flows),
                  "passes_per_packet": round((pkts + st.get("recirculations", 0)) / pkts, 3) if pkts else None}
    return out


# the whole comparison ----------------------------------------------------------------------

def load_summary(loads: list[dict]) -> dict:
    """The probe's offered load over a case's repetitions: each figure's median and spread."""
    out = {k: spread([x[k] for x in loads], 3) for k in ("requests", "requests_per_pair", "mean_pps", "peak_pps",
                                                          "last_pair_gap_s")}
    out["rate_cap_pps"] = loads[0]["rate_cap_pps"] if loads else None
    out["floor_s"] = loads[0].get("floor_s") if loads else None
    out["interval_s"] = loads[0]["interval_s"] if loads else None
    out["send_errors"] = sum(x["send_errors"] for x in loads)
    return out


def drops_summary(ds: list[dict]) -> dict:
    """A case's drop counters: every repetition's sums over the hosts (and the machine's
    and workloads'), and the last repetition per host."""
    reps = [{**{k: v for k, v in d["all"].items()}, "machine": d["machine"], "workloads": d["workloads"]}
            for d in ds]
    return {"runs": reps, "last_per_host": ds[-1]["hosts"] if ds else None}


def versus(lab: Lab, ports: int = 100, reps: int = 3, path_reps: int = 5, log=print) -> dict:
    """Everything above on one lab (already up with 3 hosts)."""
    hosts = sorted(lab.manifest()["hosts"])
    topo = topology(ports, hosts)
    extras = extra_ports(topo, reps)
    runs = {k: [] for k in ("nvctl_plugged", "ovn_plugged", "nvctl_unplugged", "ovn_unplugged")}
    creates = {"plugged": [], "unplugged": []}
    loads: dict = {k: [] for k in runs}
    lost: dict = {k: [] for k in runs}
    dps: dict = {}
    ovn = Ovn(lab, hosts)
    out: dict = {"ports": ports, "hosts": len(hosts), "reps": reps}
    try:
        t0 = time.monotonic()
        ovn.start()
        log(f"[bench] OVN: NB, SB, northd and {len(hosts)} ovn-controllers up in {time.monotonic() - t0:.1f}s")
        for r in range(reps):
            last = r == reps - 1
            for plugged in (False, True):  # the last repetition leaves (a) in place for what follows
                key = "plugged" if plugged else "unplugged"
                n = nvctl_converge(lab, topo, plugged, log)
                off = n["offline"]
                runs[f"nvctl_{key}"].append(n["converge_s"])
                loads[f"nvctl_{key}"].append(n["load"])
                lost[f"nvctl_{key}"].append(n["drops"])
                creates[key].append(n["create_s"])
                if not (last and plugged):
                    nvctl_remove(lab, topo, plugged)
                o = ovn_converge(ovn, lab, topo, plugged, log)
                runs[f"ovn_{key}"].append(o["converge_s"])
                loads[f"ovn_{key}"].append(o["load"])
                lost[f"ovn_{key}"].append(o["drops"])
                if last:
                    dps[f"nvctl_{key}"], dps[f"ovn_{key}"] = n["datapath"], o["datapath"]
                if not (last and plugged):
                    ovn_remove(ovn, lab, topo)
        conv = {k: spread(v) for k, v in runs.items()}
        conv["nvctl_create_s"] = {k: spread(v) for k, v in creates.items()}
        out["convergence"] = conv
        out["convergence_datapath"] = dps  # the last repetition's, per host
        out["convergence_load"] = {k: load_summary(v) for k, v in loads.items()}
        out["convergence_drops"] = {k: drops_summary(v) for k, v in lost.items()}
        time.sleep(0.5)  # every host done installing before counting
        out["flows_per_host"] = {"nvctl": {h: count_flows(lab, h, INTEGRATION_BRIDGE) for h in hosts},
                                 "ovn": {h: count_flows(lab, h, OVN_BRIDGE) for h in hosts}}
        log(f"[bench] flows per host: {out['flows_per_host']}")
        one = {"nvctl": [], "ovn": []}
        for i, extra in enumerate(extras):
            one["nvctl"].append(nvctl_one_port(lab, off, topo + extras[:i], extra))
            one["ovn"].append(ovn_one_port(ovn, lab, topo, extra))
        out["one_port"] = {k: spread(v) for k, v in one.items()}
        log(f"[bench] one port added on hv2, reachable from hv1: nvctl {out['one_port']['nvctl']}, "
            f"OVN {out['one_port']['ovn']}")
        # the four paths, all up at once, measured in turns: p0 (front, hv1) -> a back port on hv2.
        # Every other workload is unplugged first (its flows stay): a userspace datapath
        # without PMD threads polls every port in one thread, and ~70 idle ports per host
        # halve what any pipeline moves, hiding the pipelines' own costs.
        dst = next(p for p in topo if p["switch"] == "back" and p["host"] == "hv2")
        keep = {topo[0]["name"], dst["name"]}
        rest = [p for p in topo + extras if p["name"] not in keep]
        unplug(lab, INTEGRATION_BRIDGE, nvctl_ifnames(rest), [workload_namespace(lab.prefix, TENANT, p["name"])
                                                                for p in rest])
        unplug_ovn(lab, rest)
        ns_nv = {p["name"]: workload_namespace(lab.prefix, TENANT, p["name"]) for p in topo}
        paths = {"nvctl": ({**topo[0], "namespace": ns_nv["p0"]}, {**dst, "namespace": ns_nv[dst["name"]]}),
                 "ovn": ({**topo[0], "namespace": ovn_ns(lab, topo[0])}, {**dst, "namespace": ovn_ns(lab, dst)}),
                 "two_flow": two_flow_up(lab), "veth": veth_up(lab)}
        got = {k: [] for k in paths}
        for _ in range(path_reps):
            for k, (a, b) in paths.items():
                got[k].append(_path(a, b))
        out["paths"] = {k: {m: spread([g[m] for g in v], 3) for m in ("mbps", "rtt_ms_p50", "rtt_ms_p99")}
                        for k, v in got.items()}
        out["paths_lost_pings"] = {k: sum(g["lost"] for g in v) for k, v in got.items()}
        out["datapath"] = {k: datapath_profile(lab, *paths[k]) for k in ("nvctl", "ovn", "two_flow")}
        for k in paths:
            log(f"[bench] path {k}: {out['paths'][k]['mbps']['median']} Mbit/s "
                f"({out['paths'][k]['mbps']['min']}-{out['paths'][k]['mbps']['max']}), RTT p50 "
                f"{out['paths'][k]['rtt_ms_p50']['median']} p99 {out['paths'][k]['rtt_ms_p99']['median']} ms")
        log(f"[bench] datapath: {out['datapath']}")
    finally:
        two_flow_down(lab)
        ovn.stop()
    c, f, pth = out["convergence"], out["flows_per_host"], out["paths"]
    out["ratios"] = {
        "flows_per_host_nvctl_over_ovn": round(max(f["nvctl"].values()) / max(f["ovn"].values()), 3),
        "convergence_plugged_nvctl_over_ovn": ratio(c["nvctl_plugged"], c["ovn_plugged"]),
        "convergence_unplugged_nvctl_over_ovn": ratio(c["nvctl_unplugged"], c["ovn_unplugged"]),
        # the name of before, for run-to-run tracking: nvctl making its workloads, OVN's plugged first
        "convergence_nvctl_over_ovn": ratio(c["nvctl_unplugged"], c["ovn_plugged"]),
        "one_port_nvctl_over_ovn": ratio(out["one_port"]["nvctl"], out["one_port"]["ovn"]),
        "throughput_full_over_two_flow": ratio(pth["nvctl"]["mbps"], pth["two_flow"]["mbps"]),
        "throughput_ovn_over_two_flow": ratio(pth["ovn"]["mbps"], pth["two_flow"]["mbps"]),
        "throughput_full_over_veth": ratio(pth["nvctl"]["mbps"], pth["veth"]["mbps"]),
        "rtt_p99_full_over_two_flow": ratio(pth["nvctl"]["rtt_ms_p99"], pth["two_flow"]["rtt_ms_p99"]),
        "rtt_p99_ovn_over_two_flow": ratio(pth["ovn"]["rtt_ms_p99"], pth["two_flow"]["rtt_ms_p99"]),
    }
    log(f"[bench] ratios: {out['ratios']}")
    return out
