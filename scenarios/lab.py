"""The embedded lab: simulated hypervisors on this machine, with real Open vSwitch.

    {p}ul    underlay switch (Linux bridge br-ul); every host's uplink, PAs 192.0.2.0/24
    {p}ctl   the controller, and the management bridge br-mgmt 198.51.100.0/24
    {p}hvN   a hypervisor: its own ovsdb-server + ovs-vswitchd (userspace datapath),
             br-phy (uplink ul0, PA on its internal port), br-int (VXLAN port, controller)
    {p}T.P   a workload of tenant T, port P (made by the controller's lab driver)

`{p}` is derived from the state directory, so labs with different state directories
run side by side. Everything made is named with the prefix and recorded in lab.json
as it is made, so `down` removes it all, after a failed `up` too, and is idempotent.
Only processes this lab started are ended, by the PIDs it recorded.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from pyroute2 import IPRoute, netns

from tep.join import EXTERNAL_OFPORT  # noqa: F401 (tests take it from here)
from tep.ovs import (DPID_PREFIX, PHYSICAL_BRIDGE, Ovsdb, instance_env, quiet_uplink, run,
                     start_instance, start_vswitchd)
from tep.rxqueue import deepen_instance
from tep import nsutil, vm
from scenarios import provider_router
from tep.workload import IPV4_ONLY_SYSCTLS
from controller.client.common import DEFAULT_STATE_DIR, state_dir_from  # noqa: F401  (the lab's callers take them from here)
from controller.compile.compiler import TUNNEL_OFPORT

OF_PORT = 6653
API_PORT = 6443  # the network API (HTTPS) on each controller's management address
ADMIN_CREDENTIAL = "admin.cred"  # in the state directory: an admin credential for the network API
CONTROLLER_IP = "198.51.100.1"
MGMT_PREFIX = "198.51.100."
UNDERLAY_PREFIX = "192.0.2."
# As on real hosts: workloads get 1450. (A 1500-byte underlay once lost pings under TCP
# load where 1600 did not: not the MTU, but the 92-frame receive queue of ovs-vswitchd's
# sockets, which one 128 KB TCP write overflows at MSS 1398 and not at 1498; see
# tep/rxqueue.py. The lab's switches get deeper queues.)
UNDERLAY_MTU = 1500

# How the controller's process is told from others by its command line: the module it
# runs, and the one a lab started by an earlier version of nvctl runs (so `lab down` and
# `controller restart` still find it after an upgrade).
CONTROLLER_CMD = ("controller.server.main", "controller.main")
MIN_UNDERLAY_MTU, MAX_UNDERLAY_MTU = 1280, 9000
EXTERNAL_NET = "203.0.113.0/24"  # the provider's "outside" network (documentation range)
OUTSIDE_IP = "203.0.113.1"  # the outside host, also the external next hop
OUTSIDE_MAC = "02:cb:00:71:00:01"  # its MAC (br-ext's)
# EXTERNAL_OFPORT (tep.join): ext0 on each host's br-int: every lab host reaches the provider network
PROVIDER_NETWORK = "external"  # its name (`nvctl host join --provider-network external=ext0`)
MAX_HOSTS = 200


class LabError(RuntimeError):
    pass


@dataclass(frozen=True)
class HostPlan:
    index: int

    @property
    def name(self) -> str:
        return f"hv{self.index}"

    @property
    def pa(self) -> str:
        return f"{UNDERLAY_PREFIX}{10 + self.index}"

    @property
    def mgmt_ip(self) -> str:
        return f"{MGMT_PREFIX}{10 + self.index}"

    @property
    def dpid(self) -> int:
        return DPID_PREFIX + self.index

    @property
    def provider_address(self) -> str | None:
        """Its own address on the provider network (BGP's next hop toward it): hv1 .101
        up to hv100 .200; hosts beyond have none (BGP does not announce through them)."""
        return str(ipaddress.IPv4Network(EXTERNAL_NET)[100 + self.index]) if self.index <= 100 else None


class Lab:
    def __init__(self, state_dir: str | None = None, log=print):
        self.dir = state_dir_from(state_dir)
        self.prefix = "nv" + hashlib.sha1(self.dir.encode()).hexdigest()[:4] + "-"
        self.log = log
        self.manifest_path = os.path.join(self.dir, "lab.json")
        self.api_path = os.path.join(self.dir, "nvctl.sock")

    # naming -------------------------------------------------------------------------
    @property
    def ctl_ns(self) -> str:
        return self.prefix + "ctl"

    @property
    def ul_ns(self) -> str:
        return self.prefix + "ul"

    @property
    def ext_ns(self) -> str:
        """The outside world: one host at OUTSIDE_IP on the external network."""
        return self.prefix + "ext"

    def host_ns(self, h: HostPlan | str) -> str:
        return self.prefix + (h.name if isinstance(h, HostPlan) else h)

    @property
    def pki_dir(self) -> str:
        return os.path.join(self.dir, "pki")

    def host_dir(self, name: str) -> str:
        return os.path.join(self.dir, "hosts", name)

    def ovs_env(self, name: str) -> dict:
        """Environment under which ovs-ofctl / ovs-appctl / ovs-vsctl reach host `name`."""
        return instance_env(self.host_dir(name))

    def ovsdb(self, name: str) -> Ovsdb:
        return Ovsdb(f"unix:{self.host_dir(name)}/db.sock")

    # manifest -------------------------------------------------------------------------
    def manifest(self) -> dict | None:
        try:
            with open(self.manifest_path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def _save(self, m: dict) -> None:
        tmp = self.manifest_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(m, f, indent=1)
        os.replace(tmp, self.manifest_path)

    # up -------------------------------------------------------------------------------
    @property
    def underlay_mtu(self) -> int:
        m = self.manifest() or {}
        return m.get("underlay_mtu", UNDERLAY_MTU)

    # a cluster of controllers (--controllers 3) --------------------------------------
    def member_plans(self, n: int | None = None) -> list[dict]:
        """Controller members: ctl1 in the management namespace (state in the lab's
        directory, as a lone controller's), ctlN in namespaces of their own on br-mgmt."""
        n = n if n is not None else (self.manifest() or {}).get("controllers", 1)
        out = []
        for i in range(1, n + 1):
            d = self.dir if i == 1 else os.path.join(self.dir, f"ctl{i}")
            if self.isolated:  # its own machine: the state directory is the machine's
                d = os.path.join(self.machine(f"ctl{i}", "").dir, "state")
            out.append({"name": f"ctl{i}", "index": i, "address": f"{MGMT_PREFIX}{i}",
                        "netns": self.ctl_ns if i == 1 else f"{self.prefix}c{i}", "state_dir": d,
                        "api": os.path.join(d, "nvctl.sock")})
        return out

    def etcd(self):
        from scenarios.etcd import EtcdCluster, EtcdMember
        members = [EtcdMember(f"etcd{m['index']}", m["address"], netns=m["netns"]) for m in self.member_plans()]
        return EtcdCluster(os.path.join(self.dir, "etcd"), members, token=self.prefix)

    # isolated mode: machines that share nothing but the network (scenarios/machines.py)
    @property
    def isolated(self) -> bool:
        return bool((self.manifest() or {}).get("isolated"))

    def machine(self, name: str, netns: str | None = None):
        """The machine `name` (a controller member ctlN or a host hvN) of isolated mode."""
        from scenarios.machines import Machine
        if netns is None:
            netns = self.ctl_ns if name == "ctl1" else (f"{self.prefix}c{name[3:]}" if name.startswith("ctl")
                                                        else self.host_ns(name))
        binds = {"ovs": self.host_dir(name)} if name.startswith("hv") else {}
        return Machine(self.dir, name, netns, binds)

    def machines(self) -> list:
        d = os.path.join(self.dir, "machines")
        return [self.machine(n) for n in sorted(os.listdir(d))] if os.path.isdir(d) else []

    def api(self):
        """Where the lab's own requests go: the unix socket, or in isolated mode the
        network API with the lab's admin credential (as any operator's)."""
        if self.isolated and os.path.exists(self.admin_credential):
            from controller.client.api import load_credential
            return load_credential(self.admin_credential, netns=self.ctl_ns)  # never from this namespace
        return self.api_path

    def _provision_member(self, m: dict) -> None:
        """A controller machine's own /etc/nvctl/pki (controller.transport.pki.Pki.for_member)."""
        from controller.transport.pki import Pki
        Pki(self.pki_dir).ensure().for_member(os.path.join(self.machine(m["name"], m["netns"]).dir, "etc", "pki"),
                                              m["name"])
        os.makedirs(m["state_dir"], exist_ok=True)

    def _start_isolated_member(self, m: dict, store: str | None) -> int:
        from scenarios.machines import INSIDE
        self._provision_member(m)
        mach = self.machine(m["name"], m["netns"])
        mach.start()
        return spawn_controller(None, m["state_dir"], m["address"], OF_PORT, f"{INSIDE}/etc/pki", store=store,
                                name=m["name"], api_listen=f"{m['address']}:{API_PORT}", enter=mach.enter(),
                                inside_state_dir=f"{INSIDE}/state")

    def join_isolated_host(self, p: "HostPlan", via: dict) -> str:
        """Make host p a machine of its own and join it to the controller member `via`
        (one of member_plans()) over the network, as a real machine joins: invited by
        the operator (the lab's admin credential), bundle copied into the machine,
        `nvctl host join` run inside it. Its host credential stays inside
        (/mnt/nvctl/etc/host.cred). Returns join's output."""
        from controller.client.api import call, load_credential
        from scenarios.machines import INSIDE
        self._machine(p, ovs=False)
        mach = self.machine(p.name)
        mach.start()
        start_instance(self.host_ns(p), self.host_dir(p.name), mach.enter(), f"{INSIDE}/ovs")  # OVS in it
        admin = load_credential(self.admin_credential, server=f"https://{via['address']}:{API_PORT}",
                                netns=self.ctl_ns)
        bundle = call(admin, "host.invite", name=p.name, pa=p.pa, tls=True, workloads=None)
        path = os.path.join(mach.dir, "etc", "join.json")
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(bundle, f)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        r = mach.run([sys.executable, "-m", "controller.client.cli", "host", "join", f"{INSIDE}/etc/join.json",
                      "--uplink", "ul0", "--db", f"unix:{INSIDE}/ovs/db.sock", "--pki-dir", f"{INSIDE}/etc/pki",
                      "--credential-out", f"{INSIDE}/etc/host.cred", "--timeout", "60"],
                     capture_output=True, text=True, timeout=120, cwd=root,
                     env={**os.environ, "PYTHONPATH": root})
        if r.returncode != 0:
            raise LabError(f"{p.name}: host join via {via['name']} failed: {r.stderr.strip() or r.stdout.strip()}")
        deepen_instance(self.host_dir(p.name))
        return r.stdout

    def add_operator(self, name: str = "op", index: int = 99):
        """An operator's machine on the management network (MGMT_PREFIX + index), sharing
        nothing with the lab but the network and a copy of the admin credential
        (INSIDE/etc/admin.cred): where a person on a second machine types nvctl."""
        from scenarios.machines import INSIDE
        ns = f"{self.prefix}{name}"
        if not nsutil.exists(ns):
            _ns_create(ns)
            _veth_between(f"{self.prefix}o{index}", ns, "mgmt0", self.ctl_ns, name, "br-mgmt", 1500)
            with nsutil.iproute(ns) as n:
                n.addr("add", index=n.link_lookup(ifname="mgmt0")[0], address=f"{MGMT_PREFIX}{index}", prefixlen=24)
                n.link("set", index=n.link_lookup(ifname="lo")[0], state="up")
        mach = self.machine(name, ns)
        os.makedirs(os.path.join(mach.dir, "etc"), mode=0o700, exist_ok=True)
        shutil.copy(self.admin_credential, mach.outside(f"{INSIDE}/etc/admin.cred"))
        mach.start()
        return mach

    @property
    def clustered(self) -> bool:
        return (self.manifest() or {}).get("controllers", 1) > 1

    def _cluster_networks(self) -> None:
        for m in self.member_plans()[1:]:
            _ns_create(m["netns"])
            _veth_between(f"{self.prefix}k{m['index']}", m["netns"], "mgmt0", self.ctl_ns, f"ctl{m['index']}",
                          "br-mgmt", 1500)
            with nsutil.iproute(m["netns"]) as n:
                n.addr("add", index=n.link_lookup(ifname="mgmt0")[0], address=m["address"], prefixlen=24)
                n.link("set", index=n.link_lookup(ifname="lo")[0], state="up")
        if not self.isolated:  # (isolated: a client finds the members over the network, not in a file)
            with open(os.path.join(self.dir, "members.json"), "w") as f:
                json.dump([{k: m[k] for k in ("name", "address", "api", "state_dir")} for m in self.member_plans()],
                          f, indent=1)

    def start_members(self, names: list[str] | None = None) -> dict[str, int]:
        """Start the cluster's controllers (all, or those named), each with its etcd member."""
        cluster = self.etcd()
        cluster.start([f"etcd{m['index']}" for m in self.member_plans() if names is None or m["name"] in names])
        pids = {}
        for m in self.member_plans():
            if names is not None and m["name"] not in names:
                continue
            os.makedirs(m["state_dir"], exist_ok=True)
            if self.isolated:
                pids[m["name"]] = self._start_isolated_member(m, cluster.url)
                continue
            pids[m["name"]] = spawn_controller(f"/run/netns/{m['netns']}", m["state_dir"], m["address"], OF_PORT,
                                               self.pki_dir, store=cluster.url, name=m["name"],
                                               api_listen=f"{m['address']}:{API_PORT}")
        return pids

    def member_pid(self, name: str) -> int | None:
        m = next(m for m in self.member_plans() if m["name"] == name)
        pid = _read_pid(os.path.join(m["state_dir"], "controller.pid"))
        return pid if _alive(pid, CONTROLLER_CMD) else None

    def kill_member(self, name: str, sig=signal.SIGKILL) -> None:
        m = next(m for m in self.member_plans() if m["name"] == name)
        _kill_pidfile(os.path.join(m["state_dir"], "controller.pid"), CONTROLLER_CMD, sig, group=True)

    def stop_members(self) -> None:
        for m in self.member_plans():
            self.kill_member(m["name"], signal.SIGTERM)
        self.etcd().stop()

    def controller_targets(self) -> list[str]:
        return [f"tcp:{m['address']}:{OF_PORT}" for m in self.member_plans()]

    def up(self, hosts: int = 3, timeout: float = 60, underlay_mtu: int = UNDERLAY_MTU, controllers: int = 1,
           progress=None, isolated: bool = False, bgp: bool = False) -> dict:
        """`progress`: a controller.client.progress.Reporter; hosts built, registered, in sync and
        their underlay warmed are reported to it, host i of N (else one log line per host)."""
        if controllers not in (1, 3, 5):
            raise LabError(f"--controllers must be 1, 3 or 5 (an etcd cluster needs an odd size), got {controllers}")
        if bgp and (isolated or controllers != 1):
            raise LabError("--bgp: the lab's provider router peers with one controller (not --isolated, "
                           "not --controllers 3 or 5)")
        if not 1 <= hosts <= MAX_HOSTS:
            raise LabError(f"--hosts must be between 1 and {MAX_HOSTS}, got {hosts}")
        if not MIN_UNDERLAY_MTU <= underlay_mtu <= MAX_UNDERLAY_MTU:
            raise LabError(f"--underlay-mtu must be between {MIN_UNDERLAY_MTU} and {MAX_UNDERLAY_MTU}, "
                           f"got {underlay_mtu}")
        m = self.manifest()
        if m is not None:
            raise LabError(f"a lab already exists in {self.dir} (status {m.get('status')}); "
                           "run 'nvctl lab down' first")
        _check_tools()
        from tep.neigh import make_room
        make_room(self.log)  # one ARP table for every namespace: room for every workload's neighbours
        os.makedirs(self.dir, exist_ok=True)
        plans = [HostPlan(i) for i in range(1, hosts + 1)]
        m = {"prefix": self.prefix, "hosts": [p.name for p in plans], "status": "starting",
             "started": time.time(), "underlay_mtu": underlay_mtu, "controllers": controllers,
             "isolated": isolated, "bgp": bgp}
        self._save(m)
        t0 = time.monotonic()
        try:
            if isolated:
                self._up_isolated(m, plans, timeout)
            else:
                self._up_shared(m, plans, timeout, progress)
            m["status"] = "up"
            self._save(m)
        except BaseException:
            self.log("[lab] bring-up failed; removing what was made")
            self.down(quiet=True)
            raise
        self.log(f"[lab] up{' (isolated)' if isolated else ''}: {hosts} hosts in {time.monotonic() - t0:.1f}s "
                 f"(state {self.dir}; admin credential {self.admin_credential})")
        return m

    def _up_shared(self, m: dict, plans: list[HostPlan], timeout: float, progress=None) -> None:
        """The ordinary lab: the controllers and the hosts' OVS started from here, hosts
        registered by the lab, its workloads made by the controller's lab driver."""
        self._networks(m["underlay_mtu"])
        self.log(f"[lab] underlay {self.ul_ns} (MTU {m['underlay_mtu']}) and management {self.ctl_ns} ready")
        if m.get("bgp"):
            self._provider_router()
            self.log(f"[lab] provider router: BIRD in {self.ext_ns} (AS {provider_router.PROVIDER_ASN}, "
                     f"announcing {provider_router.OUTSIDE_PREFIX}), the controller's leg "
                     f"{provider_router.CONTROLLER_PROVIDER_IP}")
        if m["controllers"] == 1:
            self.start_controller()
            self.log(f"[lab] controller started in {self.ctl_ns} (OpenFlow {CONTROLLER_IP}:{OF_PORT})")
        else:
            self._cluster_networks()
            pids = self.start_members()
            self.log(f"[lab] {m['controllers']} etcd members and {m['controllers']} controllers started "
                     f"({', '.join(f'{n} pid {p}' for n, p in pids.items())})")
        built = progress.task("hosts", len(plans), lines="each") if progress else None
        for p in plans:
            self._host(p, (lambda what, p=p: built.update(text=f"{p.name}: {what}")) if built else None)
            done = f"{p.name}: OVS up, PA {p.pa}, br-int dpid {p.dpid:016x}"
            if built:
                built.advance(done)
            else:
                self.log(f"[lab] {done}")
        tasks = [progress.task(what, len(plans), lines="end") if progress else None
                 for what in ("hosts registered", "hosts connected and in sync", "underlay warmed")]
        self._register(plans, tasks[0] and tasks[0].advance)
        self.wait_synced(timeout, tasks[1] and (lambda hs: tasks[1].update(completed=sum(
            h["connected"] and h["in_sync"] and h.get("workloads_ready", True) for h in hs))))
        self.wait_bfd(len(plans) - 1, timeout)  # every host has the provider network: each watches every other
        self.warm_underlay(plans, tasks[2] and tasks[2].advance)
        self.write_admin_credential()

    def _up_isolated(self, m: dict, plans: list[HostPlan], timeout: float) -> None:
        """Every controller member and every host a machine of its own (scenarios/machines.py);
        the hosts join over the network, alternately through each member; the lab then
        speaks to the controllers only with its admin credential. No lab workloads (the
        hosts are joined machines: their runtimes plug ports) and no external network."""
        self._networks(m["underlay_mtu"])
        if m["controllers"] > 1:
            self._cluster_networks()
            self.start_members()
        else:
            self._start_isolated_member(self.member_plans()[0], None)
        members = self.member_plans()
        self.log(f"[lab] isolated: {len(members)} controller machine(s) up "
                 "(" + ", ".join(f"{x['name']} {x['address']}:{API_PORT}" for x in members) + ")")
        self.write_admin_credential(os.path.join(members[0]["state_dir"], "nvctl.sock"))  # on ctl1's machine, once
        for k, p in enumerate(plans):
            via = members[k % len(members)]
            self.join_isolated_host(p, via)
            self.log(f"[lab] {p.name}: its own machine, joined through {via['name']} over the network")
        self.wait_synced(timeout)
        self.warm_underlay(plans)

    def _networks(self, underlay_mtu: int) -> None:
        for ns in (self.ctl_ns, self.ul_ns, self.ext_ns):
            _ns_create(ns)
        with nsutil.iproute(self.ext_ns) as n:
            n.link("add", ifname="br-ext", kind="bridge")
            idx = n.link_lookup(ifname="br-ext")[0]
            # a fixed MAC: a bridge without one takes its ports' lowest, so a host's link
            # added later (a joined host's provider network) would change the next hop's
            # MAC under every host's flows
            n.link("set", index=idx, address=OUTSIDE_MAC)
            n.addr("add", index=idx, address=OUTSIDE_IP, prefixlen=24)
            n.link("set", index=idx, state="up")
        with nsutil.iproute(self.ul_ns) as n:
            n.link("add", ifname="br-ul", kind="bridge")
            n.link("set", index=n.link_lookup(ifname="br-ul")[0], mtu=underlay_mtu, state="up")
        with nsutil.iproute(self.ctl_ns) as n:
            n.link("add", ifname="br-mgmt", kind="bridge")
            idx = n.link_lookup(ifname="br-mgmt")[0]
            n.addr("add", index=idx, address=CONTROLLER_IP, prefixlen=24)
            n.link("set", index=idx, state="up")

    def _provider_router(self) -> None:
        """BIRD on the outside network, and the controller's leg there (scenarios.provider_router)."""
        _veth_between(f"{self.prefix}pr", self.ctl_ns, "prov0", self.ext_ns, "ctl", "br-ext", 1500)
        with nsutil.iproute(self.ctl_ns) as n:
            n.addr("add", index=n.link_lookup(ifname="prov0")[0], address=provider_router.CONTROLLER_PROVIDER_IP,
                   prefixlen=24)
        with open(os.path.join(self.dir, "bgp.yaml"), "w") as f:
            f.write(provider_router.platform_config(OUTSIDE_IP, PROVIDER_NETWORK))
        provider_router.start(self.dir, self.ext_ns, OUTSIDE_IP)

    def _machine(self, p: HostPlan, step=None, ovs: bool = True) -> str:
        """Namespace, underlay and management links, and a running OVS with an empty
        database: a freshly installed hypervisor. step(what): the sub-step under way."""
        step = step or (lambda what: None)
        ns = self.host_ns(p)
        step("namespace and links")
        _ns_create(ns)
        _veth_between(f"{self.prefix}u{p.index}", ns, "ul0", self.ul_ns, p.name, "br-ul", self.underlay_mtu)
        _veth_between(f"{self.prefix}m{p.index}", ns, "mgmt0", self.ctl_ns, p.name, "br-mgmt", 1500)
        with nsutil.iproute(ns) as n:
            idx = n.link_lookup(ifname="mgmt0")[0]
            n.addr("add", index=idx, address=p.mgmt_ip, prefixlen=24)
        if ovs:
            step("starting OVS")
            self.start_ovs(p.name)
        return ns

    def _host(self, p: HostPlan, step=None) -> None:
        step = step or (lambda what: None)
        ns = self._machine(p, step)
        db = self.ovsdb(p.name)
        step("br-phy and its PA")
        db.ensure_physical_bridge("ul0", self.underlay_mtu)
        quiet_uplink("ul0", ns)
        with nsutil.iproute(ns) as n:
            idx = _wait_link(n, PHYSICAL_BRIDGE)
            n.addr("add", index=idx, address=p.pa, prefixlen=24)
            n.link("set", index=idx, state="up")
        step("br-int, VXLAN port, controller")
        db.ensure_integration_bridge(p.dpid, self.controller_targets(), p.pa, TUNNEL_OFPORT)
        for uuid in db.vsctl("--bare", "--columns=_uuid", "list", "Controller").split():
            db.vsctl("set", "controller", uuid, "max_backoff=1000", "inactivity_probe=5000")
        # every host has the provider network: ext0, on br-ext (the outside's bridge)
        _veth_between(f"{self.prefix}x{p.index}", ns, "ext0", self.ext_ns, p.name, "br-ext", 1500)
        db.plug("ext0", EXTERNAL_OFPORT, {"nvctl-role": "external"})
        for dev in ("br-ext", p.name):  # the outside host's packets reach the userspace datapath
            run(["ip", "netns", "exec", self.ext_ns, "ethtool", "-K", dev, "tx", "off"])
        deepen_instance(self.host_dir(p.name))  # ul0 (and ext0): a NIC's queue, not 92 frames

    def add_bare_host(self, index: int, provider: bool = False) -> HostPlan:
        """A machine for `nvctl host join`: namespace hv{index} on the underlay and the
        management network, OVS running with an empty database, not registered. What
        it becomes is up to `nvctl host join` run inside it (`ip netns exec`). With
        `provider`, it also has a link ext0 to the provider network (not on OVS yet)."""
        m = self.manifest()
        if m is None or m.get("status") != "up":
            raise LabError("the lab is not up")
        p = HostPlan(index)
        if p.name in m["hosts"] or p.name in m.get("bare_hosts", []):
            raise LabError(f"{p.name} already exists in this lab")
        m.setdefault("bare_hosts", []).append(p.name)
        self._save(m)
        ns = self._machine(p)
        if provider:
            _veth_between(f"{self.prefix}x{p.index}", ns, "ext0", self.ext_ns, p.name, "br-ext", 1500)
            for dev in ("br-ext", p.name):
                run(["ip", "netns", "exec", self.ext_ns, "ethtool", "-K", dev, "tx", "off"])
        self.log(f"[lab] {p.name}: bare host (OVS running, nothing configured), management {p.mgmt_ip}"
                 + (", ext0 on the provider network" if provider else ""))
        return p

    def warm_underlay(self, plans: list[HostPlan], on_host=None) -> None:
        warm_underlay([(p.name, self.host_ns(p), p.pa) for p in plans], on_host)

    def start_ovs(self, name: str) -> None:
        start_instance(self.host_ns(name), self.host_dir(name))

    def set_underlay_link(self, name: str, up: bool) -> None:
        """Cut (or restore) host `name`'s underlay link: both ends of its veth go down,
        as when a cable is pulled. Management (OpenFlow, OVSDB) stays connected."""
        state = "up" if up else "down"
        with nsutil.iproute(self.host_ns(name)) as n:
            n.link("set", index=n.link_lookup(ifname="ul0")[0], state=state)
        with nsutil.iproute(self.ul_ns) as n:
            n.link("set", index=n.link_lookup(ifname=name)[0], state=state)

    def kill_vswitchd(self, name: str) -> bool:
        """SIGKILL one host's ovs-vswitchd (a crash); OVSDB and the namespace stay."""
        return _kill_pidfile(f"{self.host_dir(name)}/ovs-vswitchd.pid", "ovs-vswitchd", signal.SIGKILL)

    def start_vswitchd(self, name: str) -> None:
        """Start a host's ovs-vswitchd again. Its br-phy tap device is new, so the PA goes
        back on it; bridges, ports and the controller come back from OVSDB."""
        start_vswitchd(self.host_ns(name), self.host_dir(name))
        plan = HostPlan(int(name[2:]))
        with nsutil.iproute(self.host_ns(name)) as n:
            idx = _wait_link(n, PHYSICAL_BRIDGE)
            if not any(a.get_attr("IFA_ADDRESS") == plan.pa for a in n.get_addr(index=idx, family=2)):
                n.addr("add", index=idx, address=plan.pa, prefixlen=24)
            n.link("set", index=idx, state="up")
        deepen_instance(self.host_dir(name))  # its ports' sockets are new

    def start_controller(self, preamble: str | None = None, env: dict | None = None) -> int:
        """(Again) the lab's controller; `preamble`, `env`: see spawn_controller (tests)."""
        bgp = os.path.join(self.dir, "bgp.yaml")
        return spawn_controller(f"/run/netns/{self.ctl_ns}", self.dir, CONTROLLER_IP, OF_PORT, self.pki_dir,
                                api_listen=f"{CONTROLLER_IP}:{API_PORT}", preamble=preamble, env=env,
                                extra=["--bgp", bgp] if (self.manifest() or {}).get("bgp") else None)

    def stop_controller(self, sig=signal.SIGTERM) -> None:
        _kill_pidfile(os.path.join(self.dir, "controller.pid"), CONTROLLER_CMD, sig, group=True)

    def host_info(self, name: str) -> dict:
        """What the controller's lab driver is told about host `name` (host.register's info)."""
        return {"kind": "lab", "netns": self.host_ns(name), "prefix": self.prefix, "mtu": self.underlay_mtu,
                "ovsdb": f"unix:{self.host_dir(name)}/db.sock", "rundir": self.host_dir(name)}

    def _register(self, plans: list[HostPlan], on_host=None) -> None:
        from controller.client.api import call
        with nsutil.iproute(self.ext_ns) as n:
            outside_mac = n.get_links(n.link_lookup(ifname="br-ext")[0])[0].get_attr("IFLA_ADDRESS")
        for p in plans:
            info = self.host_info(p.name)  # every lab host has the provider network
            info["external"] = {"ofport": EXTERNAL_OFPORT, "name": PROVIDER_NETWORK, "network": EXTERNAL_NET,
                                "next_hop": OUTSIDE_IP, "next_hop_mac": outside_mac,
                                **({"address": p.provider_address} if p.provider_address else {})}
            call(self.api_path, "host.register", name=p.name, pa=p.pa, dpid=p.dpid, info=info)
            if on_host:
                on_host(p.name)

    def wait_synced(self, timeout: float = 60, on_poll=None) -> list[dict]:
        return wait_synced(self.api(), timeout, on_poll)

    def wait_bfd(self, peers: int, timeout: float = 60) -> None:
        """Until every host's BFD sessions toward `peers` others are up: the controller adds
        the ports after each host's sync, and a lab is not ready (gateway failover, a
        quiet bridge) before they are."""
        from controller.client.api import call
        deadline = time.monotonic() + timeout
        while True:
            hosts = call(self.api(), "host.list")
            if all(len(h.get("bfd") or {}) >= peers and all(h["bfd"].values()) for h in hosts):
                return
            if time.monotonic() > deadline:
                raise LabError("BFD sessions not up after {:.0f}s: {}".format(
                    timeout, {h["name"]: h.get("bfd") for h in hosts}))
            time.sleep(0.1)

    @property
    def admin_credential(self) -> str:
        return os.path.join(self.dir, ADMIN_CREDENTIAL)

    def write_admin_credential(self, api: str | None = None) -> str:
        """An admin credential for the network API (STATE_DIR/admin.cred, mode 0600): what
        an operator on another machine needs, issued as any other, through the unix
        socket `api` (default: the lab's) of a fresh controller."""
        from controller.client.accesscmd import issue, write_credential
        write_credential(self.admin_credential, issue(api or self.api_path, "lab-admin", "admin"))
        return self.admin_credential

    # status ---------------------------------------------------------------------------
    def status(self) -> dict:
        m = self.manifest()
        if m is None:
            return {"state_dir": self.dir, "status": "down"}
        out = {"state_dir": self.dir, "status": m["status"], "prefix": self.prefix, "hosts": []}
        ctl_pid = _read_pid(os.path.join(self.member_plans()[0]["state_dir"], "controller.pid"))
        out["controller"] = {"pid": ctl_pid, "alive": _alive(ctl_pid, CONTROLLER_CMD)}
        if m.get("controllers", 1) > 1:
            out["controllers"] = [{"name": c["name"], "netns": c["netns"], "address": c["address"],
                                   "pid": self.member_pid(c["name"]), "alive": self.member_pid(c["name"]) is not None}
                                  for c in self.member_plans()]
            out["controller"]["alive"] = any(c["alive"] for c in out["controllers"])
        live = {}
        if out["controller"]["alive"]:
            from controller.client.api import ApiClientError, call
            try:
                live = {h["name"]: h for h in call(self.api(), "host.list", check=True, timeout=10)}
            except ApiClientError as e:
                out["controller"]["error"] = str(e)
        for name in m["hosts"]:
            d = self.host_dir(name)
            pid = _read_pid(f"{d}/ovs-vswitchd.pid")
            h = {"name": name, "netns": self.host_ns(name), "vswitchd_alive": _alive(pid, "ovs-vswitchd")}
            h.update({k: live[name][k] for k in ("pa", "connected", "in_sync", "flows_desired", "error")}
                     if name in live else {})
            out["hosts"].append(h)
        return out

    # down -----------------------------------------------------------------------------
    def down(self, quiet: bool = False) -> list[str]:
        """Remove every process, namespace, link and file this lab made. Idempotent."""
        done = []
        m = self.manifest() or {}
        if _kill_pidfile(os.path.join(self.dir, "controller.pid"), CONTROLLER_CMD, group=True):
            done.append("controller")
        if _kill_pidfile(os.path.join(self.dir, "bird.pid"), "bird"):
            done.append("bird")
        for member in self.member_plans(m.get("controllers", 1))[0 if m.get("isolated") else 1:]:
            if _kill_pidfile(os.path.join(member["state_dir"], "controller.pid"), CONTROLLER_CMD, group=True):
                done.append(member["name"])
            shutil.rmtree(member["state_dir"], ignore_errors=True)
        for mach in self.machines():  # isolated mode: their holders (mounts made inside go with them)
            if mach.stop():
                done.append(f"machine {mach.name}")
        if m.get("controllers", 1) > 1 or os.path.isdir(os.path.join(self.dir, "etcd")):
            self.etcd().remove()
            done.append("etcd")
        hosts_dir = os.path.join(self.dir, "hosts")
        names = set(m.get("hosts", []))
        if os.path.isdir(hosts_dir):
            names |= set(os.listdir(hosts_dir))
        for name in sorted(names):
            d = self.host_dir(name)
            guests = os.path.join(d, "vm")  # the hosts' QEMU guests (tep.driver), each by its pid file
            for f in sorted(os.listdir(guests)) if os.path.isdir(guests) else ():
                if f.endswith(".pid") and vm.Guest(guests, f[:-4]).stop():
                    done.append(f"{name}/guest {f[:-4]}")
            for proc in ("ovs-vswitchd", "ovsdb-server"):
                if _kill_pidfile(f"{d}/{proc}.pid", proc):
                    done.append(f"{name}/{proc}")
        for ns in sorted(netns.listnetns()):
            if ns.startswith(self.prefix):
                netns.remove(ns)
                done.append(f"netns {ns}")
        with IPRoute() as ipr:  # veths left in this namespace by an interrupted up
            for link in ipr.get_links():
                name = link.get_attr("IFLA_IFNAME")
                if name and name.startswith(self.prefix):
                    ipr.link("del", index=link["index"])
                    done.append(f"link {name}")
        for entry in ("machines", "hosts", "pki", "controller.log", "controller.pid", "desired.db", "desired.db-wal",
                      "desired.db-shm", "nvctl.sock", "members.json", "lab.json", "lab.json.tmp", ADMIN_CREDENTIAL,
                      *provider_router.FILES):
            path = os.path.join(self.dir, entry)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                os.unlink(path)
        if os.path.isdir(self.dir) and not os.listdir(self.dir):
            os.rmdir(self.dir)
        if not quiet:
            self.log(f"[lab] down: removed {len(done)} items" + (": " + ", ".join(done) if done else ""))
        return done


# shared with the mininet overlay ----------------------------------------------------------

def spawn_controller(netns_path: str | None, state_dir: str, listen: str, port: int, pki: str | None = None,
                     store: str | None = None, name: str | None = None, api_listen: str | None = None,
                     enter: list[str] | None = None, inside_state_dir: str | None = None,
                     preamble: str | None = None, env: dict | None = None, extra: list[str] | None = None) -> int:
    """Start the controller inside a network namespace (given as a path: /run/netns/X or
    /proc/PID/ns/net), or inside a machine (`enter`: the command prefix that enters it;
    `inside_state_dir`: state_dir as the machine sees it); wait until its API answers.
    Its PID goes to state_dir/controller.pid. `preamble`: Python run before the
    controller's main in its process (a test's planted bug, tests/planted.py); `env`:
    added to its environment."""
    log = open(os.path.join(state_dir, "controller.log"), "ab")
    # nsenter, not `ip netns exec`: the latter gives the process a private mount
    # namespace, and workload namespaces it creates would be invisible to everyone else.
    prefix = enter if enter is not None else ["nsenter", f"--net={netns_path}"]
    main = (["-m", "controller.server.main"] if preamble is None else
            ["-c", f"{preamble}\nimport runpy; runpy.run_module('controller.server.main', run_name='__main__')"])
    cmd = [*prefix, sys.executable, *main,
           "--state-dir", inside_state_dir or state_dir, "--listen", listen, "--port", str(port)]
    if pki:
        cmd += ["--pki", pki]
    if store:
        cmd += ["--store", store]
    if name:
        cmd += ["--name", name]
    if api_listen and pki:
        cmd += ["--api-listen", api_listen]
    cmd += extra or []
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, **(env or {}), "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=env, cwd=root)
    log.close()
    with open(os.path.join(state_dir, "controller.pid"), "w") as f:
        f.write(str(proc.pid))
    deadline = time.monotonic() + 30
    from controller.client.api import ApiClientError
    from controller.transport.framing import request as _request
    api = os.path.join(state_dir, "nvctl.sock")
    while True:
        if proc.poll() is not None:
            raise LabError(f"controller exited with {proc.returncode}; see {state_dir}/controller.log")
        try:
            if not os.path.exists(api):
                raise FileNotFoundError(api)
            _request(api, {"op": "ping", "args": {}}, 2)  # this member itself, not the cluster
            return proc.pid
        except (ApiClientError, OSError):
            if time.monotonic() > deadline:
                raise LabError(f"controller did not answer in 30s; see {state_dir}/controller.log")
            time.sleep(0.1)


def wait_synced(api_path: str, timeout: float = 60, on_poll=None) -> list[dict]:
    """Wait until every host's br-int is connected and holds its desired flows.
    on_poll(hosts): each host.list answer on the way."""
    from controller.client.api import call
    deadline = time.monotonic() + timeout
    while True:
        hosts = call(api_path, "host.list")
        if on_poll:
            on_poll(hosts)
        if hosts and all(h["connected"] and h["in_sync"] and h.get("workloads_ready", True) for h in hosts):
            return hosts
        if time.monotonic() > deadline:
            bad = [f"{h['name']} ({'connected' if h['connected'] else 'not connected'}"
                   f"{', ' + h['error'] if h['error'] else ''})"
                   for h in hosts if not (h["connected"] and h["in_sync"])]
            raise LabError(f"hosts not in sync after {timeout:.0f}s: {', '.join(bad)}")
        time.sleep(0.1)


def warm_underlay(hosts: list[tuple[str, str, str]], on_host=None) -> None:
    """Teach every host's OVS the MAC of every peer PA before tenant traffic needs it.
    hosts: [(name, netns, PA)]; on_host(name) when one is done.

    The userspace datapath drops a tunnel packet while it resolves the remote PA, and
    it learns only by snooping ARP *replies* on br-phy. So one host at a time: flush
    its kernel's neighbours, then ping every peer; its kernel must ARP, and the
    replies pass through its br-phy. (All at once, a kernel would learn its peers
    from their requests, never ask, and its OVS would never learn.)"""
    for name, ns, pa in hosts:
        run(["ip", "netns", "exec", ns, "ip", "neigh", "flush", "dev", PHYSICAL_BRIDGE])
        peers = [q for _, _, q in hosts if q != pa]
        for i in range(0, len(peers), 64):  # bound the processes alive at once
            procs = [subprocess.Popen(["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "2", peer],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for peer in peers[i:i + 64]]
            failed = [peer for peer, pr in zip(peers[i:i + 64], procs) if pr.wait() != 0]
            if failed:
                raise LabError(f"underlay: {name} cannot reach {', '.join(failed)}")
        if on_host:
            on_host(name)


# helpers --------------------------------------------------------------------------------

def _check_tools() -> None:
    missing = [t for t in ("ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ethtool", "ip")
               if shutil.which(t) is None]
    if missing:
        raise LabError(f"missing {', '.join(missing)}: run 'make deps' (installs openvswitch-switch, "
                       "ethtool, iproute2)")
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces and OVS)")


def _ns_create(name: str) -> None:
    nsutil.create(name, IPV4_ONLY_SYSCTLS)  # lo up, no IPv6; in this process: no fork


def _veth_between(tmp: str, ns_a: str, name_a: str, ns_b: str, name_b: str, bridge_b: str,
                  mtu: int) -> None:
    """A veth with one end `name_a` in ns_a and the other `name_b` in ns_b, enslaved to
    bridge_b; created under temporary names that carry the lab prefix."""
    a, b = tmp + "a", tmp + "b"
    with IPRoute() as ipr:
        ipr.link("add", ifname=a, kind="veth", peer={"ifname": b})
        ipr.link("set", index=ipr.link_lookup(ifname=a)[0], net_ns_fd=ns_a)
        ipr.link("set", index=ipr.link_lookup(ifname=b)[0], net_ns_fd=ns_b)
    with nsutil.iproute(ns_a) as n:
        idx = n.link_lookup(ifname=a)[0]
        n.link("set", index=idx, ifname=name_a, mtu=mtu, state="up")
    with nsutil.iproute(ns_b) as n:
        idx = n.link_lookup(ifname=b)[0]
        br = n.link_lookup(ifname=bridge_b)[0]
        n.link("set", index=idx, ifname=name_b, mtu=mtu, master=br, state="up")


def _wait_link(n, ifname: str, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while True:
        found = n.link_lookup(ifname=ifname)
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise LabError(f"interface {ifname} did not appear")
        time.sleep(0.05)


def _read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (FileNotFoundError, ValueError):
        return None


def _alive(pid: int | None, expect: str | tuple[str, ...]) -> bool:
    """Is `pid` alive and still the process we started (its command line names `expect`,
    or one of them)?"""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return False
    if not any(e in cmdline for e in ((expect,) if isinstance(expect, str) else expect)):
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _gone(pid: int) -> bool:
    """Exited: no /proc entry, or a zombie waiting for its parent."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return True


def _kill_pidfile(path: str, expect: str | tuple[str, ...], sig=signal.SIGTERM, timeout: float = 5, group: bool = False) -> bool:
    """End the process in the pidfile. group=True: a process we started as a session
    leader (the controller) goes with the children it forked (pyroute2 forks helpers that
    hold its sockets: one left behind keeps the next controller from binding its ports)."""
    pid = _read_pid(path)
    if not _alive(pid, expect):
        return False
    group = group and os.getpgid(pid) == pid

    def send(s):
        try:
            os.killpg(pid, s) if group else os.kill(pid, s)
        except ProcessLookupError:
            pass
    send(sig)
    deadline = time.monotonic() + timeout
    while not _gone(pid):  # not _alive(): an exiting process's cmdline is already empty
        if time.monotonic() > deadline:
            send(signal.SIGKILL)
            deadline += timeout
        time.sleep(0.02)
    try:  # reap it if it is our child
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    if group:
        send(signal.SIGKILL)  # whatever it forked and left
    return True
