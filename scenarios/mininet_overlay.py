"""nvctl under mininet: hypervisors are mininet nodes with their own Open vSwitch.

    from scenarios.mininet_overlay import Overlay, OverlayTopo

    topo = OverlayTopo(hosts=3, tenants=[open("examples/blue.yaml").read()], underlay={"bw": 200})
    with Overlay(topo) as ov:           # try/finally net.stop() inside
        vm1 = ov.workload("blue", "vm1")  # a mininet Host with blue/vm1's CA and MAC
        print(vm1.cmd("ping -c 3 10.0.0.12"))
        ov.net.configLinkStatus("hv1", "ul", "down")   # cut hv1's underlay link

The network mininet builds (node names as mininet sees them):

    ul      the underlay: a Linux bridge in its own namespace; every hypervisor has a
            TCLink to it (shape it with `underlay={"bw": Mbit/s, ...}`, cut it with
            net.configLinkStatus(hvN, "ul", "down"))
    mg      the management network: a Linux bridge joining c0 and every hypervisor
    c0      our controller (NvctlController), in its own namespace on mg: 198.51.100.1
    hvN     a Hypervisor: its own namespace running its own ovsdb-server + ovs-vswitchd
            (userspace datapath), br-phy on its underlay link with the PA, br-int with
            the VXLAN port and c0 as its controller
    T-P     a workload: a plain mininet Host for tenant T's port P, linked to the
            hypervisor the tenant YAML puts it on; its link is plugged into br-int with
            the ofport the controller allocated, it gets the port's MAC, and then its CA,
            MTU and gateway by DHCP from the platform, as a VM would (dhclient once, with
            its own lease, pid and script files; see Overlay.configure_addresses)

Only mininet's Python API is used, always inside try/finally net.stop(); never the `mn`
command or mininet's global cleanup (they kill processes by broad names). What we start
ourselves (OVS daemons, the controller) we end by PID. Each node's namespace also gets
a name (`ip netns attach`) so `ip netns exec` and every lab helper reach it.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import yaml

from controller.client.api import call
from controller.compile.compiler import TUNNEL_OFPORT
from scenarios.lab import (CONTROLLER_CMD, CONTROLLER_IP, OF_PORT, UNDERLAY_MTU, HostPlan, LabError,
                           _kill_pidfile, spawn_controller, wait_synced, warm_underlay)
from tep.driver import Attachment, attachments_of, external_ids
from tep.ovs import INTEGRATION_BRIDGE, PHYSICAL_BRIDGE, Ovsdb, quiet_uplink, run, start_instance
from tep.rxqueue import deepen_instance
from tep.workload import IPV4_ONLY
from topology.schema import validate

DEBIAN_DIST = "/usr/lib/python3/dist-packages"  # where Debian's `mininet` package puts it
MAX_NODE_NAME = 10  # mininet names interfaces NAME-ethN; Linux allows 15 characters


def import_mininet():
    """Import Debian's mininet (apt package `mininet`) into this interpreter, whose venv
    does not see the system's site-packages. Only the `mininet` package is added."""
    try:
        import mininet  # noqa: F401
    except ImportError:
        spec = importlib.machinery.PathFinder.find_spec("mininet", [DEBIAN_DIST])
        if spec is None:
            raise LabError("mininet is not installed: run 'make deps' (Debian package mininet)") from None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["mininet"] = mod
        spec.loader.exec_module(mod)
    import mininet.link
    import mininet.net
    import mininet.node
    import mininet.nodelib
    import mininet.log
    import mininet.topo

    class _Quiet(logging.Filter):  # the kernel's advice on htb quanta is not an error
        def filter(self, record):
            return "quantum of class" not in str(record.msg)

    mininet.log.lg.addFilter(_Quiet())
    return mininet


mn = import_mininet()
Topo = mn.topo.Topo


def workload_name(tenant: str, port: str) -> str:
    """The mininet host name of tenant/port: 'T-P' when it fits an interface name."""
    name = f"{tenant}-{port}"
    if len(name) <= MAX_NODE_NAME:
        return name
    return "w" + hashlib.blake2b(f"{tenant}/{port}".encode(), digest_size=4).hexdigest()


def _in(node, *cmd: str) -> str:
    """Run a command in a mininet node's namespace; raise with its stderr if it fails
    (mininet's node.cmd() returns the output and drops the exit code)."""
    return run(["nsenter", f"--net=/proc/{node.pid}/ns/net", *map(str, cmd)])


def _peer(intf):
    link = intf.link
    return link.intf2 if link.intf1 is intf else link.intf1


class Underlay(mn.nodelib.LinuxBridge):
    """The physical network between hypervisors: a Linux bridge in its own namespace."""

    def __init__(self, name, **kw):
        kw.setdefault("dpid", "1")
        kw.pop("inNamespace", None)
        super().__init__(name, inNamespace=True, **kw)

    def start(self, controllers):
        super().start(controllers)
        for intf in self.intfList():
            if intf.name != "lo":
                _in(self, "ip", "link", "set", "dev", intf.name, "mtu", UNDERLAY_MTU)
        _in(self, "ip", "link", "set", "dev", self.name, "mtu", UNDERLAY_MTU)


class Management(mn.nodelib.LinuxBridge):
    """The management network: controller to every hypervisor's OVS."""

    def __init__(self, name, **kw):
        kw.setdefault("dpid", "2")
        kw.pop("inNamespace", None)
        super().__init__(name, inNamespace=True, **kw)


class NvctlController(mn.node.Controller):
    """Our controller as mininet's remote controller: it runs in its own namespace on the
    management network (hypervisors live in namespaces and cannot reach 127.0.0.1)."""

    def __init__(self, name, state_dir: str, ip: str = CONTROLLER_IP, port: int = OF_PORT, **kw):
        self.state_dir = state_dir
        kw.pop("inNamespace", None)
        super().__init__(name, inNamespace=True, ip=ip, port=port, **kw)

    def checkListening(self):  # mininet's check looks in the root namespace: not ours
        pass

    def start(self):
        intf = self.defaultIntf()
        _in(self, "ip", "addr", "flush", "dev", intf.name)
        _in(self, "ip", "addr", "add", f"{self.ip}/24", "dev", intf.name)
        _in(self, "ip", "link", "set", "dev", intf.name, "up")
        spawn_controller(f"/proc/{self.pid}/ns/net", self.state_dir, self.ip, self.port)

    def stop(self, *args, **kw):
        _kill_pidfile(os.path.join(self.state_dir, "controller.pid"), CONTROLLER_CMD)
        super().stop(*args, **kw)

    @property
    def api_path(self) -> str:
        return os.path.join(self.state_dir, "nvctl.sock")


class Hypervisor(mn.node.Switch):
    """A hypervisor that runs its own Open vSwitch in its own namespace, as the lab does.

    Mininet sees a switch (it is one: the tunnel endpoint). Its interfaces are told apart
    by what they lead to: the Underlay bridge (br-phy's uplink, holds the PA), the
    Management bridge (the OpenFlow connection) and workload hosts (plugged into br-int
    when the controller has allocated their ofports, see Overlay)."""

    def __init__(self, name, index: int, state_dir: str, ns_name: str, **kw):
        self.plan = HostPlan(index)
        self.rundir = os.path.join(state_dir, "hosts", name)
        self.ns_name = ns_name
        kw.setdefault("dpid", f"{self.plan.dpid:016x}")
        kw.pop("inNamespace", None)
        super().__init__(name, inNamespace=True, **kw)

    @property
    def pa(self) -> str:
        return self.plan.pa

    @property
    def ovsdb(self) -> Ovsdb:
        return Ovsdb(f"unix:{self.rundir}/db.sock")

    def role_intfs(self) -> dict[str, list]:
        out = {"underlay": [], "management": [], "workload": []}
        for intf in self.intfList():
            if intf.link is None:
                continue
            node = _peer(intf).node
            role = ("underlay" if isinstance(node, Underlay) else
                    "management" if isinstance(node, Management) else "workload")
            out[role].append(intf)
        return out

    def workload_intf(self, host_name: str):
        for intf in self.role_intfs()["workload"]:
            if _peer(intf).node.name == host_name:
                return intf
        raise LabError(f"{self.name} has no link to mininet host {host_name}")

    def start(self, controllers):
        roles = self.role_intfs()
        if len(roles["underlay"]) != 1 or len(roles["management"]) != 1:
            raise LabError(f"{self.name}: a hypervisor needs one link to the Underlay and one to "
                           f"Management, has {len(roles['underlay'])} and {len(roles['management'])}")
        run(["ip", "netns", "attach", self.ns_name, str(self.pid)])
        uplink, mgmt = roles["underlay"][0], roles["management"][0]
        _in(self, "ip", "link", "set", "dev", uplink.name, "mtu", UNDERLAY_MTU)
        _in(self, "ip", "addr", "flush", "dev", uplink.name)
        _in(self, "ip", "addr", "flush", "dev", mgmt.name)
        _in(self, "ip", "addr", "add", f"{self.plan.mgmt_ip}/24", "dev", mgmt.name)
        _in(self, "sh", "-ec", IPV4_ONLY)
        start_instance(self.ns_name, self.rundir)
        db = self.ovsdb
        db.ensure_physical_bridge(uplink.name, UNDERLAY_MTU)
        quiet_uplink(uplink.name, self.ns_name)
        deadline = time.monotonic() + 10
        while subprocess.run(["ip", "netns", "exec", self.ns_name, "ip", "link", "show", PHYSICAL_BRIDGE],
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise LabError(f"{self.name}: {PHYSICAL_BRIDGE} did not appear")
            time.sleep(0.05)
        _in(self, "ip", "addr", "add", f"{self.pa}/24", "dev", PHYSICAL_BRIDGE)
        _in(self, "ip", "link", "set", "dev", PHYSICAL_BRIDGE, "up")
        ctl = controllers[0] if controllers else None
        target = f"tcp:{ctl.ip}:{ctl.port}" if ctl else f"tcp:{CONTROLLER_IP}:{OF_PORT}"
        db.ensure_integration_bridge(self.plan.dpid, target, self.pa, TUNNEL_OFPORT)
        db.vsctl("set", "controller", INTEGRATION_BRIDGE, "max_backoff=1000", "inactivity_probe=5000")

    def stop(self, deleteIntfs=True):
        for proc in ("ovs-vswitchd", "ovsdb-server"):
            _kill_pidfile(os.path.join(self.rundir, f"{proc}.pid"), proc)
        subprocess.run(["ip", "netns", "delete", self.ns_name], capture_output=True)
        super().stop(deleteIntfs)

    def connected(self):
        return True


class OverlayTopo(Topo):
    """hypervisors hv1..hvN on one underlay switch, a management switch, and one mininet
    host per port of each tenant, linked to the hypervisor its YAML names.

    underlay: TCLink parameters for every hypervisor's underlay link (bw in Mbit/s;
    delay/loss need the kernel's sch_netem, which not every kernel has)."""

    def build(self, hosts: int = 3, tenants: list[str] = (), underlay: dict | None = None):
        self.tenant_docs = [yaml.safe_load(t) for t in tenants]
        self.tenant_yaml = list(tenants)
        self.hypervisors = [f"hv{i}" for i in range(1, hosts + 1)]
        self.addSwitch("ul", cls=Underlay)
        self.addSwitch("mg", cls=Management)
        for i, name in enumerate(self.hypervisors, 1):
            self.addSwitch(name, cls=Hypervisor, index=i)
            self.addLink(name, "ul", cls=mn.link.TCLink, **(underlay or {}))
            self.addLink(name, "mg")
        for doc in self.tenant_docs:
            tenant = doc["metadata"]["name"]
            for p in doc["spec"]["ports"]:
                if p["host"] not in self.hypervisors:
                    raise LabError(f"tenant {tenant}: port {p['name']} is on {p['host']}, "
                                   f"but the topology has only {', '.join(self.hypervisors)}")
                h = workload_name(tenant, p["name"])
                self.addHost(h, ip=None)
                self.addLink(h, p["host"])


def netem_available() -> bool:
    """Does this kernel have sch_netem (mininet's delay, jitter and loss)?"""
    ns = f"nvnetem{os.getpid()}"
    try:
        run(["ip", "netns", "add", ns])
        run(["ip", "netns", "exec", ns, "ip", "link", "add", "name", "t0", "type", "dummy"])
        p = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "t0", "root", "netem",
                            "delay", "1ms"], capture_output=True)
        return p.returncode == 0
    finally:
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


class Overlay:
    """Build and start the mininet network for an OverlayTopo with our controller, then
    register the hypervisors, create the tenants and attach each workload host. Use as a
    context manager: leaving it stops mininet (net.stop()) and removes what we made."""

    def __init__(self, topo: OverlayTopo, state_dir: str | None = None, log=print, timeout: float = 60):
        self.topo = topo
        self.log = log
        self.timeout = timeout
        self.dir = state_dir or tempfile.mkdtemp(prefix="nvctl-mininet-")
        self.prefix = "mn" + hashlib.sha1(self.dir.encode()).hexdigest()[:4] + "-"
        self.net = None
        self.ports: dict[str, dict[str, dict]] = {}
        self._attached: list[str] = []
        self._plugged: list[tuple] = []  # (Attachment, port dict, switch has dhcp), in plug order
        self.dhcp_failures: dict[str, str] = {}  # "T/P" -> why DHCP did not configure it

    def ns_name(self, node: str) -> str:
        return self.prefix + node

    @property
    def api_path(self) -> str:
        return os.path.join(self.dir, "nvctl.sock")

    def __enter__(self) -> "Overlay":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if os.geteuid() != 0:
            raise LabError("mininet needs root")
        for _, _, info in self.topo.links(withInfo=True):
            if any(info.get(k) for k in ("delay", "jitter", "loss")) and not netem_available():
                raise LabError("underlay delay/jitter/loss need the kernel's sch_netem qdisc, which this "
                               "kernel does not have; bandwidth (bw) works")
        os.makedirs(self.dir, exist_ok=True)
        t0 = time.monotonic()
        for h in self.topo.hypervisors:
            self.topo.setNodeInfo(h, {**self.topo.nodeInfo(h), "state_dir": self.dir, "ns_name": self.ns_name(h)})
        net = mn.net.Mininet(topo=None, controller=None, build=False, autoSetMacs=False,
                             autoStaticArp=False, waitConnected=False)
        self.net = net
        c0 = net.addController("c0", controller=NvctlController, state_dir=self.dir)
        net.buildFromTopo(self.topo)
        net.addLink(c0, net["mg"])
        net.start()
        self.log(f"[mininet] {len(self.topo.hypervisors)} hypervisors, controller c0 at {c0.ip}, "
                 f"{len(net.hosts)} workload hosts")
        for h in self.topo.hypervisors:
            hv = net[h]
            call(self.api_path, "host.register", name=h, pa=hv.pa, dpid=hv.plan.dpid,
                 info={"kind": "mininet", "ovsdb": f"unix:{hv.rundir}/db.sock", "rundir": hv.rundir,
                       "mtu": UNDERLAY_MTU})
        wait_synced(self.api_path, self.timeout)
        warm_underlay([(h, self.ns_name(h), net[h].pa) for h in self.topo.hypervisors])
        for text, doc in zip(self.topo.tenant_yaml, self.topo.tenant_docs):
            model = validate(doc, self.topo.hypervisors)
            call(self.api_path, "tenant.create", yaml=text)
            self.ports[model.name] = {p["name"]: p for p in call(self.api_path, "tenant.show",
                                                                  name=model.name)["ports"]}
            shown = call(self.api_path, "tenant.show", name=model.name)
            wanted = attachments_of(model, {n: p["ofport"] for n, p in self.ports[model.name].items()},
                                    shown["mtu"])
            for name, a in wanted.items():
                dhcp = model.switch(model.port(name).switch).dhcp
                self._attach(a, self.ports[model.name][name])
                self._plugged.append((a, self.ports[model.name][name], dhcp))
        wait_synced(self.api_path, self.timeout)
        for h in self.topo.hypervisors:  # every port is open now: a NIC's queue, not 92 frames
            deepen_instance(self.net[h].rundir)
        self.configure_addresses()
        self.log(f"[mininet] overlay up in {time.monotonic() - t0:.1f}s (state {self.dir})")

    def _attach(self, a: Attachment, p: dict) -> None:
        """Plug the workload host's link into br-int with the port's ofport and give the
        host the port's MAC; its link comes up bare (no address, MTU 1500), as a booting
        VM's does. Addresses come after, from configure_addresses()."""
        host = self.net[workload_name(a.tenant, a.port)]
        hv = self.net[a.host]
        hv_intf = hv.workload_intf(host.name)
        hv.ovsdb.plug(hv_intf.name, a.ofport, external_ids(a))
        _in(hv, "ethtool", "-K", hv_intf.name, "tx", "off")
        intf = host.defaultIntf()
        ns = self.ns_name(host.name)
        run(["ip", "netns", "attach", ns, str(host.pid)])
        self._attached.append(ns)
        _in(host, "sh", "-ec", IPV4_ONLY)
        _in(host, "ethtool", "-K", intf.name, "tx", "off")
        host.setMAC(a.mac)
        _in(host, "ip", "addr", "flush", "dev", intf.name)
        _in(host, "ip", "link", "set", "dev", intf.name, "up")
        p.update({"namespace": ns, "iface": intf.name, "mininet_host": host.name})

    def configure_addresses(self) -> None:
        """Every workload host asks the platform by DHCP (dhclient -1 in the host, all at
        once, each with its own lease, pid and script files under the state directory; the
        daemon dhclient leaves is ended by its PID) and must end up with exactly its port's
        CA, its switch's MTU and gateway. A switch with `dhcp: false` has no DHCP server:
        its hosts are configured by hand from the spec. If DHCP fails for a host, or gives
        it anything else, it is configured by hand too, but loudly: a DHCP FAILED line
        naming the host and why, `dhcp_failures`, and the port's `address_by`."""
        from scenarios.netutil import Dhclient
        t0 = time.monotonic()
        clients = {}
        try:
            for a, p, dhcp in self._plugged:
                if dhcp:
                    clients[(a.tenant, a.port)] = Dhclient(p["namespace"], p["iface"],
                                                           os.path.join(self.dir, "dhcp", p["mininet_host"]))
            results = {k: c.wait() for k, c in clients.items()}
        finally:
            for c in clients.values():
                c.stop()
        by_hand = []
        for a, p, dhcp in self._plugged:
            if not dhcp:
                self._static(a, p)
                p["address_by"] = "spec (switch has dhcp: false)"
                continue
            r = results[(a.tenant, a.port)]
            got = self._kernel(p)
            want = {"addr": f"{a.ip}/{a.prefixlen}", "mtu": a.mtu, "gateway": a.gateway}
            if r["ok"] and got == want:
                p["address_by"] = "dhcp"
                p["dhcp_seconds"] = r["seconds"]
                continue
            last = (r["log"].strip().splitlines() or ["no output"])[-1]
            why = (f"dhclient exit {r['exit']}: {last}" if not r["ok"]
                   else f"DHCP gave {got}, the spec says {want}")
            self.dhcp_failures[f"{a.tenant}/{a.port}"] = why
            self.log(f"[mininet] DHCP FAILED for {a.tenant}/{a.port} (host {p['mininet_host']}): {why}; "
                     f"configuring it by hand from the spec instead")
            self._static(a, p)
            p["address_by"] = f"by hand: DHCP failed: {why}"
            by_hand.append(f"{a.tenant}/{a.port}")
        done = [p["dhcp_seconds"] for _, p, _ in self._plugged if p["address_by"] == "dhcp"]
        spec_only = sum(1 for _, _, dhcp in self._plugged if not dhcp)
        self.log(f"[mininet] {len(done)} of {len(clients)} workloads got address, MTU and gateway by DHCP "
                 f"in {time.monotonic() - t0:.1f}s (slowest {max(done, default=0):.2f}s)"
                 + (f"; {spec_only} on switches with dhcp: false set from the spec" if spec_only else "")
                 + (f"; DHCP FAILED for {', '.join(by_hand)}" if by_hand else ""))

    def _static(self, a: Attachment, p: dict) -> None:
        """The port's CA, its switch's MTU and gateway, set by hand."""
        host = self.net[p["mininet_host"]]
        _in(host, "ip", "addr", "flush", "dev", p["iface"])
        host.setIP(a.ip, prefixLen=a.prefixlen)
        _in(host, "ip", "link", "set", "dev", p["iface"], "mtu", a.mtu)  # its switch's MTU
        if a.gateway:
            _in(host, "ip", "route", "replace", "default", "via", a.gateway)

    @staticmethod
    def _kernel(p: dict) -> dict:
        """The host's address/prefix, MTU and default gateway, as its kernel has them."""
        ns, ifname = p["namespace"], p["iface"]
        addr = run(["ip", "netns", "exec", ns, "ip", "-4", "-o", "addr", "show", "dev", ifname])
        link = run(["ip", "netns", "exec", ns, "ip", "-o", "link", "show", ifname])
        route = run(["ip", "netns", "exec", ns, "ip", "-4", "route", "show", "default"])
        a, g = re.search(r"inet (\S+)", addr), re.search(r"default via (\S+)", route)
        return {"addr": a.group(1) if a else None, "mtu": int(re.search(r" mtu (\d+) ", link).group(1)),
                "gateway": g.group(1) if g else None}

    def workload(self, tenant: str, port: str):
        """The mininet Host that is tenant/port."""
        return self.net[workload_name(tenant, port)]

    def stop(self) -> None:
        try:
            if self.net is not None:
                self.net.stop()
        finally:
            self.net = None
            for ns in self._attached:
                subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
            self._attached = []
            _kill_pidfile(os.path.join(self.dir, "controller.pid"), CONTROLLER_CMD)
            for h in getattr(self.topo, "hypervisors", []):
                d = os.path.join(self.dir, "hosts", h)
                for proc in ("ovs-vswitchd", "ovsdb-server"):
                    _kill_pidfile(os.path.join(d, f"{proc}.pid"), proc)
                subprocess.run(["ip", "netns", "delete", self.ns_name(h)], capture_output=True)
            shutil.rmtree(self.dir, ignore_errors=True)

