"""One host's Open vSwitch, driven over OVSDB.

Each call is one idempotent ovs-vsctl transaction (`--may-exist` / `--if-exists`), and
a failure raises `OvsError` with what ovs-vsctl said. Nothing here knows about tenants
beyond the external_ids a workload's interface carries.
"""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass

from controller.spaces.ids import TUNNEL_OFPORT  # noqa: F401  the VXLAN port's ofport on every br-int

TUNNEL_PORT_NAME = "vxlan0"
INTEGRATION_BRIDGE = "br-int"
PHYSICAL_BRIDGE = "br-phy"
DPID_PREFIX = 0x4E56_0000_0000  # "NV": every datapath id nvctl assigns starts so
OVSDB_PORT = 6640  # a joined host's ovsdb-server: pssl: (ptcp: only when insecure)


class OvsError(RuntimeError):
    pass


def run(cmd: list[str], timeout: float = 30, env: dict | None = None, cwd: str | None = None) -> str:
    """Run a command; raise with its stderr when it fails."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    except subprocess.TimeoutExpired:
        raise OvsError(f"{' '.join(cmd)}: timed out after {timeout}s") from None
    if p.returncode != 0:
        raise OvsError(f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr.strip() or p.stdout.strip()}")
    return p.stdout


DEFAULT_DB = "unix:/var/run/openvswitch/db.sock"  # a real host's own OVS (Debian's openvswitch-switch)


@dataclass(frozen=True)
class Ovsdb:
    """An OVS instance reached through its OVSDB socket (unix:PATH, tcp: or ssl:).
    For ssl:, `tls` is (private key, certificate, CA certificate) file paths."""

    remote: str
    tls: tuple[str, str, str] | None = None

    def vsctl(self, *args: str, timeout: float = 30) -> str:
        auth = []
        if self.tls:
            auth = [f"--private-key={self.tls[0]}", f"--certificate={self.tls[1]}",
                    f"--ca-cert={self.tls[2]}"]
        return run(["ovs-vsctl", f"--db={self.remote}", f"--timeout={int(timeout)}", *auth, *args],
                   timeout=timeout + 5)

    def txn(self, *commands: list[str], timeout: float = 30) -> str:
        """Several ovs-vsctl commands in one OVSDB transaction."""
        args: list[str] = []
        for c in commands:
            args += ["--", *c]
        return self.vsctl(*args, timeout=timeout)

    # bridges ----------------------------------------------------------------------
    def ensure_integration_bridge(self, dpid: int, controller: str | list[str], tunnel_local_ip: str,
                                  tunnel_ofport: int, datapath_type: str = "netdev") -> None:
        b = INTEGRATION_BRIDGE
        self.txn(
            ["--may-exist", "add-br", b],
            ["set", "bridge", b, f"datapath_type={datapath_type}", "fail_mode=secure",
             "protocols=OpenFlow13", f"other-config:datapath-id={dpid:016x}",
             "other-config:disable-in-band=true"],
            ["set-controller", b, *([controller] if isinstance(controller, str) else controller)],
            ["--may-exist", "add-port", b, TUNNEL_PORT_NAME],
            ["set", "interface", TUNNEL_PORT_NAME, "type=vxlan",
             f"options:local_ip={tunnel_local_ip}", "options:remote_ip=flow",
             "options:key=flow", f"ofport_request={tunnel_ofport}"],
        )

    def ensure_physical_bridge(self, uplink: str, mtu: int, datapath_type: str = "netdev") -> None:
        """br-phy on the uplink. Call quiet_uplink(uplink) on that machine as well."""
        b = PHYSICAL_BRIDGE
        self.txn(
            ["--may-exist", "add-br", b],
            ["set", "bridge", b, f"datapath_type={datapath_type}"],
            ["set", "interface", b, f"mtu_request={mtu}"],
            ["--may-exist", "add-port", b, uplink],
        )

    # workload ports ---------------------------------------------------------------
    def interfaces(self, bridge: str = INTEGRATION_BRIDGE) -> list[dict]:
        """Every interface on `bridge`, as OVSDB has it: name, type, ofport, external_ids
        and options (one read)."""
        import json
        ports = set(self.vsctl("list-ports", bridge).split())
        raw = json.loads(self.vsctl("--format=json", "--columns=name,type,ofport,external_ids,options",
                                    "list", "Interface"))
        out = []
        for name, typ, ofport, ext, opts in raw["data"]:
            if name not in ports:
                continue
            out.append({"name": name, "type": typ, "ofport": ofport if isinstance(ofport, int) else -1,
                        "external_ids": dict(ext[1]), "options": dict(opts[1])})
        return out

    def iface_ids(self) -> dict[str, str | None]:
        """Every interface's name -> its `external_ids:iface-id` (None without one), in
        one read: what the controller binds tenant ports by. Which of them are on br-int,
        and at which ofport, the switch itself says (OpenFlow port descriptions)."""
        import json
        raw = json.loads(self.vsctl("--format=json", "--columns=name,external_ids", "find", "Interface"))
        return {name: dict(ext[1]).get("iface-id") for name, ext in raw["data"]}

    def request_ofport(self, ifname: str, ofport: int) -> None:
        """Ask ovs-vswitchd to move an interface to `ofport` (it re-adds the port there;
        a port that holds that number without having asked for it gives way). Returns
        without waiting: the switch's port events say when it is done."""
        self.vsctl("--no-wait", "set", "interface", ifname, f"ofport_request={ofport}")

    def plug(self, ifname: str, ofport: int | None, external_ids: dict[str, str]) -> None:
        self.plug_many([(ifname, ofport, external_ids)])

    def plug_many(self, ports: list[tuple[str, int | None, dict[str, str]]]) -> None:
        """Ports (ifname, ofport, external_ids) onto br-int in one OVSDB transaction: one
        ovs-vsctl, and one wait for ovs-vswitchd to open them all. `ofport` is only a
        hint (ofport_request), None for none: the controller binds a port by the
        external_ids' iface-id at whatever ofport OVS gives it."""
        cmds = []
        for ifname, ofport, external_ids in ports:
            ids = [f"external_ids:{k}={v}" for k, v in sorted(external_ids.items())]
            hint = [f"ofport_request={ofport}"] if ofport is not None else []
            cmds.append(["--may-exist", "add-port", INTEGRATION_BRIDGE, ifname])
            if hint or ids:
                cmds.append(["set", "interface", ifname, *hint, *ids])
        if cmds:
            self.txn(*cmds, timeout=max(30, len(ports) // 10))

    def unplug(self, ifname: str, wait: bool = True) -> None:
        """Remove a port; wait=False returns without waiting for ovs-vswitchd to apply it."""
        self.vsctl(*([] if wait else ["--no-wait"]), "--if-exists", "del-port", INTEGRATION_BRIDGE, ifname)


def quiet_uplink(uplink: str, netns: str | None = None) -> None:
    """The kernel stops answering ARP on the uplink under br-phy. The PA lives on br-phy,
    but the uplink is a kernel interface of the same machine, and Linux answers ARP for
    any of its addresses on any interface (arp_ignore=0), with that interface's MAC. A
    peer whose tunnel neighbour entry learns the uplink's MAC instead of br-phy's sends
    frames br-phy does not take for itself: every tunnel from that peer goes dark, seen
    in a lab after OVS's neighbour entries aged out (15 min) and were learned again.
    OVS reads and writes the uplink's frames itself; nothing else needs its ARP."""
    run([*(["ip", "-n", netns] if netns else ["ip"]), "link", "set", "dev", uplink, "arp", "off"])


VSWITCH_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"


def instance_env(rundir: str) -> dict:
    """Environment under which ovs-vsctl / ovs-ofctl / ovs-appctl reach the OVS instance
    whose database, sockets, pid files and logs live in `rundir`."""
    return {**os.environ, "OVS_RUNDIR": rundir, "OVS_DBDIR": rundir, "OVS_LOGDIR": rundir}


def start_instance(netns: str, rundir: str, enter: list[str] | None = None, inside: str | None = None) -> None:
    """Start one host's ovsdb-server and ovs-vswitchd inside network namespace `netns`,
    with everything in `rundir`: one OVS instance per simulated host. `enter`: a command
    prefix that runs them inside a machine of their own instead (scenarios/machines.py),
    where `rundir` is seen as `inside`."""
    os.makedirs(rundir, exist_ok=True)
    d = inside or rundir
    if not os.path.exists(f"{rundir}/conf.db"):
        run(["ovsdb-tool", "create", f"{rundir}/conf.db", VSWITCH_SCHEMA])
    # Like Debian's ovs-ctl: managers and TLS settings come from the database, so
    # `ovs-vsctl set-manager pssl:6640` / `set-ssl` (what `nvctl host join` does) work.
    run([*(enter or ["ip", "netns", "exec", netns]), "ovsdb-server", f"{d}/conf.db", f"--remote=punix:{d}/db.sock",
         "--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
         "--private-key=db:Open_vSwitch,SSL,private_key", "--certificate=db:Open_vSwitch,SSL,certificate",
         "--ca-cert=db:Open_vSwitch,SSL,ca_cert",
         f"--pidfile={d}/ovsdb-server.pid", f"--log-file={d}/ovsdb-server.log", "--detach"], env=instance_env(d))
    run(["ovs-vsctl", f"--db=unix:{rundir}/db.sock", "--no-wait", "init"], env=instance_env(rundir))
    start_vswitchd(netns, rundir, enter, inside)


def start_vswitchd(netns: str, rundir: str, enter: list[str] | None = None, inside: str | None = None) -> None:
    d = inside or rundir
    run([*(enter or ["ip", "netns", "exec", netns]), "ovs-vswitchd", f"unix:{d}/db.sock",
         f"--pidfile={d}/ovs-vswitchd.pid", f"--log-file={d}/ovs-vswitchd.log", "--detach"],
        env=instance_env(d))


class OvsHost:
    """ovs-appctl on one host's ovs-vswitchd, found through its run directory."""

    def __init__(self, rundir: str):
        self.env = {**os.environ, "OVS_RUNDIR": rundir}

    def appctl(self, *args: str, timeout: float = 30) -> str:
        return run(["ovs-appctl", *args], timeout=timeout, env=self.env)

    def odp_ports(self, bridge: str = INTEGRATION_BRIDGE) -> dict[int, tuple[str, int, str]]:
        """datapath port number -> (bridge, ofport, name), from dpif/show."""
        out: dict[int, tuple[str, int, str]] = {}
        current = None
        for line in self.appctl("dpif/show").splitlines():
            m = re.match(r"^\s{2}(\S+):$", line)
            if m:
                current = m.group(1)
                continue
            m = re.match(r"^\s{4}(\S+) (\d+)/(\d+):", line)
            if m and current:
                out[int(m.group(3))] = (current, int(m.group(2)), m.group(1))
        return out

    def trace(self, flow: str, bridge: str = INTEGRATION_BRIDGE) -> str:
        return self.appctl("ofproto/trace", bridge, flow)
