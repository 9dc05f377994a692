"""nvctl and OVN side by side on the same lab hosts, plus the data-path baselines.

One lab of 3 hosts (each its own OVS instance). In turn, on those same OVS instances:

1. nvctl: a 100-port tenant (two switches, a router with SNAT to the outside, a stateful
   ACL guarding one switch) created with one `tenant create`; time until every one of
   the 9,900 ordered port pairs answers a ping (bench/reach.py); OpenFlow flows per host;
   one port added (time until it and a port on another host reach each other); iperf3
   and ping across hosts through the full pipeline (ACL + routing + NAT tables).
2. OVN (Debian's ovn-central + ovn-host): NB/SB databases and ovn-northd in the
   controller's namespace, an ovn-controller per host on its own bridge br-ovn (Geneve),
   the same topology through one ovn-nbctl transaction, measured the same way. The
   workload interfaces are plugged into br-ovn before the clock starts (as a CMS would
   have them); nvctl's clock includes creating its 100 workloads.
3. A minimal two-flow pipeline on the same OVS instances (in_port -> tunnel, tunnel ->
   port, on a bridge of its own) and a plain veth pair: the throughput and latency floor.
"""
from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import time

from bench.reach import Reach
from controller.api import call
from scenarios.lab import CONTROLLER_IP, HostPlan, Lab, _kill_pidfile
from scenarios.netutil import iperf3
from tep import workload
from tep.ovs import INTEGRATION_BRIDGE, run
from topology.model import derived_mac

OVN_SCHEMAS = "/usr/share/ovn"
FRONT, BACK = "10.0.1", "10.0.2"
OVN_BRIDGE = "br-ovn"  # each host's bridge for ovn-controller, beside our br-int
MIN_BRIDGE = "br-min"  # the two-flow pipeline's bridge


def _mac(ip: str, kind: int = 0) -> str:
    """The MAC nvctl gives a port (kind 1: a router port), so OVN's ports get the same."""
    return derived_mac(ipaddress.IPv4Address(ip), kind)


def _hosts(ports: list[dict]) -> list[str]:
    return sorted({p["host"] for p in ports})


def _extra_port(ports: list[dict]) -> dict:
    """The port a one-port change adds: next in the same scheme, on hv2."""
    return {**topology(len(ports) + 1, _hosts(ports))[len(ports)], "host": "hv2"}


def topology(ports: int, hosts: list[str]) -> list[dict]:
    """[{name, switch, ip, mac, host}] alternating front/back, round-robin over hosts."""
    out = []
    for j in range(ports):
        sw = "front" if j % 2 == 0 else "back"
        ip = f"{FRONT if sw == 'front' else BACK}.{10 + j // 2}"
        out.append({"name": f"p{j}", "switch": sw, "ip": ip, "mac": _mac(ip), "host": hosts[j % len(hosts)]})
    return out


def nvctl_yaml(ports: list[dict], name: str = "bench") -> str:
    import yaml
    back = [p["name"] for p in ports if p["switch"] == "back"]
    doc = {"apiVersion": "nvctl/v1", "kind": "Tenant", "metadata": {"name": name}, "spec": {
        "switches": [{"name": "front", "cidr": f"{FRONT}.0/24"}, {"name": "back", "cidr": f"{BACK}.0/24"}],
        "routers": [{"name": "r", "ports": [{"switch": "front", "ip": f"{FRONT}.1"},
                                            {"switch": "back", "ip": f"{BACK}.1"}],
                     "external": {"ip": "203.0.113.10"}}],
        "nat": [{"type": "snat", "router": "r", "cidr": f"{FRONT}.0/24"}],
        "acls": [{"priority": 200, "direction": "to-port", "ports": back, "protocol": "icmp", "action": "allow"},
                 {"priority": 201, "direction": "to-port", "ports": back, "protocol": "tcp", "dstPorts": [5432],
                  "action": "allow"},
                 {"priority": 100, "direction": "to-port", "ports": back, "action": "deny"}],
        "ports": [{k: p[k] for k in ("name", "switch", "ip", "host")} for p in ports]}}
    return yaml.safe_dump(doc, sort_keys=False)


def _count_flows(lab: Lab, host: str, bridge: str) -> int:
    proto = "OpenFlow13" if bridge == INTEGRATION_BRIDGE else "OpenFlow15"
    out = subprocess.run(["ovs-ofctl", "-O", proto, "dump-flows", bridge], env=lab.ovs_env(host),
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return sum(1 for ln in out.splitlines() if "cookie=" in ln)


def _path(src: dict, dst: dict, seconds: float = 3) -> dict:
    """iperf3 TCP (port 5432: the ACL lets it through) and a 10 ms ping, src -> dst."""
    r = iperf3(src["namespace"], dst["namespace"], dst["ip"], seconds=seconds, port=5432)
    p = subprocess.run(["ip", "netns", "exec", src["namespace"], "ping", "-n", "-q", "-c", "100", "-i", "0.01",
                        dst["ip"]], capture_output=True, text=True, timeout=60)
    m = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)", p.stdout)
    return {"mbps": r["mbps"], "rtt_ms_avg": float(m.group(2)) if m else None}


def _reach(sources: list[tuple[str, str]], targets=None, timeout: float = 120) -> float | None:
    r = Reach(sources, targets)
    try:
        t = r.wait(timeout)
        return None if t is None else round(t, 3)
    finally:
        r.close()


# nvctl -------------------------------------------------------------------------------------

def nvctl_side(lab: Lab, ports: list[dict], log=print) -> dict:
    hosts = _hosts(ports)
    t0 = time.monotonic()
    call(lab.api_path, "tenant.create", yaml=nvctl_yaml(ports), timeout=300)
    t_create = time.monotonic() - t0
    shown = {p["name"]: p for p in call(lab.api_path, "tenant.show", name="bench")["ports"]}
    t_reach = _reach([(shown[p["name"]]["namespace"], p["ip"]) for p in ports])
    converge = None if t_reach is None else round(time.monotonic() - t0, 3)
    flows = {h: _count_flows(lab, h, INTEGRATION_BRIDGE) for h in hosts}
    log(f"[bench] nvctl: {len(ports)}-port tenant: create {t_create:.2f}s, every pair reachable after "
        f"{converge}s; flows per host {flows}")
    extra = _extra_port(ports)

    def add_extra():
        call(lab.api_path, "tenant.apply", yaml=nvctl_yaml(ports + [extra]))
        return {p["name"]: p for p in call(lab.api_path, "tenant.show", name="bench")["ports"]}
    rest = _one_port_then_path(lab, "nvctl", INTEGRATION_BRIDGE, ports, extra, add_extra, "routed, ACL, NAT tables", log)
    call(lab.api_path, "tenant.delete", name="bench")
    return {"create_s": round(t_create, 3), "converge_s": converge, "flows_per_host": flows, **rest}


def _one_port_then_path(lab: Lab, side: str, bridge: str, ports: list[dict], extra: dict, add_extra,
                        what: str, log, settle: float = 0.0) -> dict:
    """The same two measurements on either side: `add_extra()` adds port `extra` (on hv2)
    and returns the workloads by port name; the clock runs until p0 (on hv1) and the new
    port reach each other, then flows added per host are counted (after `settle` s).
    Then TCP and RTT from p0 (front, hv1) to a back port on hv2."""
    hosts = _hosts(ports)
    before = {h: _count_flows(lab, h, bridge) for h in hosts}
    t0 = time.monotonic()
    where = add_extra()
    p0, new = where["p0"], where[extra["name"]]
    t = _reach([(p0["namespace"], p0["ip"]), (new["namespace"], extra["ip"])])
    change = None if t is None else round(time.monotonic() - t0, 3)
    time.sleep(settle)
    delta = {h: _count_flows(lab, h, bridge) - before[h] for h in hosts}
    log(f"[bench] {side}: one port added on hv2: reachable from hv1 after {change}s; flows added per host {delta}")
    dst = next(where[p["name"]] for p in ports if p["switch"] == "back" and p["host"] == "hv2")
    path = _path(p0, dst)
    log(f"[bench] {side}: {p0['name']}@hv1 -> {dst['name']}@hv2 ({what}): {path['mbps']} Mbit/s, "
        f"RTT {path['rtt_ms_avg']} ms")
    return {"one_port_reachable_s": change, "one_port_flows_added": delta, **path}


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


from controller.core import VXLAN_OVERHEAD  # noqa: E402

# Every side gets the MTU its encapsulation leaves on the lab's underlay, as nvctl's own
# workloads do: VXLAN over IPv4 50 bytes; OVN's Geneve with its option 58 (what OVN's
# own documentation has a VM use on a 1500-byte network: 1442).
GENEVE_OVERHEAD = 58


def _ovn_port_cmds(p: dict) -> list[str]:
    return ["--", "lsp-add", p["switch"], p["name"], "--", "lsp-set-addresses", p["name"], f"{p['mac']} {p['ip']}",
            "--", "lsp-set-port-security", p["name"], f"{p['mac']} {p['ip']}"]


def _ovn_vif(lab: Lab, p: dict) -> dict:
    """A workload namespace plugged into br-ovn, iface-id = the logical port: a VIF the
    CMS has created, not yet bound to anything in the NB database."""
    ns = f"{lab.prefix}o-{p['name']}"
    ifname = f"o{lab.prefix[2:6]}{p['name']}"[:15]
    gw = f"{FRONT if p['switch'] == 'front' else BACK}.1"
    workload.create_workload(ns, lab.host_ns(p["host"]), ifname, p["ip"], 24, p["mac"], gw,
                             lab.underlay_mtu - GENEVE_OVERHEAD)
    lab.ovsdb(p["host"]).vsctl("--may-exist", "add-port", OVN_BRIDGE, ifname, "--", "set", "interface", ifname,
                               f"external_ids:iface-id={p['name']}")
    return {**p, "namespace": ns}


def ovn_side(lab: Lab, ports: list[dict], log=print) -> dict:
    hosts = _hosts(ports)
    ovn = Ovn(lab, hosts)
    try:
        t0 = time.monotonic()
        ovn.start()
        log(f"[bench] OVN: NB, SB, northd and 3 ovn-controllers up in {time.monotonic() - t0:.1f}s")
        vifs = {p["name"]: _ovn_vif(lab, p) for p in ports}
        cmds = ["ls-add", "front", "--", "ls-add", "back", "--", "lr-add", "r"]
        for sw, net in (("front", FRONT), ("back", BACK)):
            cmds += ["--", "lrp-add", "r", f"r-{sw}", _mac(f"{net}.1", kind=1), f"{net}.1/24",
                     "--", "lsp-add", sw, f"{sw}-r", "--", "lsp-set-type", f"{sw}-r", "router",
                     "--", "lsp-set-addresses", f"{sw}-r", "router",
                     "--", "lsp-set-options", f"{sw}-r", f"router-port=r-{sw}"]
        cmds += ["--", "acl-add", "back", "to-lport", "200", "ip4 && icmp4", "allow-related",
                 "--", "acl-add", "back", "to-lport", "201", "ip4 && tcp.dst == 5432", "allow-related",
                 "--", "acl-add", "back", "to-lport", "100", "ip4", "drop"]
        for p in ports:
            cmds += _ovn_port_cmds(p)
        t0 = time.monotonic()
        ovn.nbctl(*cmds)
        t_reach = _reach([(vifs[p["name"]]["namespace"], p["ip"]) for p in ports])
        converge = None if t_reach is None else round(time.monotonic() - t0, 3)
        flows = {h: _count_flows(lab, h, OVN_BRIDGE) for h in hosts}
        log(f"[bench] OVN: {len(ports)}-port topology: every pair reachable after {converge}s; "
            f"flows per host {flows}")
        extra = _extra_port(ports)
        vif = _ovn_vif(lab, extra)  # plugged before the clock, as all of OVN's were

        def add_extra():
            ovn.nbctl(*_ovn_port_cmds(extra)[1:])
            return {**vifs, extra["name"]: vif}
        # settle: let every host finish installing before counting
        rest = _one_port_then_path(lab, "OVN", OVN_BRIDGE, ports, extra, add_extra, "routed, ACL", log, settle=0.5)
        return {"converge_s": converge, "flows_per_host": flows, **rest}
    finally:
        ovn.stop()


# data-path floors ----------------------------------------------------------------------------

def minimal_pipeline(lab: Lab, log=print) -> dict:
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
        flows = (f"in_port=1,actions=set_field:{peer_pa}->tun_dst,set_field:9->tun_id,output:100\n"
                 "in_port=100,actions=output:1\n")
        subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "replace-flows", MIN_BRIDGE, "-"], input=flows, text=True,
                       env=lab.ovs_env(h), check=True, capture_output=True, timeout=30)
    try:
        path = _path(a, b)
    finally:
        for h in ("hv1", "hv2"):
            lab.ovsdb(h).vsctl("--if-exists", "del-br", MIN_BRIDGE)
    log(f"[bench] two-flow pipeline hv1 -> hv2: {path['mbps']} Mbit/s, RTT {path['rtt_ms_avg']} ms")
    return path


def veth_pair(lab: Lab, log=print) -> dict:
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
    path = _path({"namespace": a, "ip": "10.8.0.1"}, {"namespace": b, "ip": "10.8.0.2"})
    log(f"[bench] veth pair: {path['mbps']} Mbit/s, RTT {path['rtt_ms_avg']} ms")
    return path


def versus(lab: Lab, ports: int = 100, log=print) -> dict:
    """Everything above on one lab (already up with 3 hosts)."""
    hosts = sorted(lab.manifest()["hosts"])
    topo = topology(ports, hosts)
    out = {"ports": ports, "hosts": len(hosts)}
    out["nvctl"] = nvctl_side(lab, topo, log)
    out["ovn"] = ovn_side(lab, topo, log)
    out["two_flow"] = minimal_pipeline(lab, log)
    out["veth"] = veth_pair(lab, log)
    n, o, m = out["nvctl"], out["ovn"], out["two_flow"]
    out["ratios"] = {
        "flows_per_host_nvctl_over_ovn": round(max(n["flows_per_host"].values()) /
                                               max(o["flows_per_host"].values()), 3),
        "convergence_nvctl_over_ovn": (round(n["converge_s"] / o["converge_s"], 3)
                                       if n["converge_s"] and o["converge_s"] else None),
        "one_port_nvctl_over_ovn": (round(n["one_port_reachable_s"] / o["one_port_reachable_s"], 3)
                                    if n["one_port_reachable_s"] and o["one_port_reachable_s"] else None),
        "throughput_full_over_two_flow": round(n["mbps"] / m["mbps"], 3) if m["mbps"] else None,
        "throughput_ovn_over_two_flow": round(o["mbps"] / m["mbps"], 3) if m["mbps"] else None,
        "throughput_full_over_veth": round(n["mbps"] / out["veth"]["mbps"], 3) if out["veth"]["mbps"] else None,
    }
    log(f"[bench] ratios: {out['ratios']}")
    return out
