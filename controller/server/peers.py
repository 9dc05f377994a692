"""BFD between hosts and the gateways they may use: one VXLAN port per such peer.

A router's gateway group is chosen by the switches themselves (controller.layers.gateway):
fast-failover groups watch, on each host, a port per gateway host whose liveness is the
BFD session toward it. OVS runs BFD only on a tunnel port with a fixed remote_ip, so
every host gets, beside its flow-based VXLAN port, one port per other host that has the
provider network (a possible gateway); and since a session needs both ends, a host with
the provider network has one toward every other host:

  bfd<N>  type=vxlan  remote_ip=<the peer's PA>  key=BFD_VNI  bfd:enable=true
          ofport_request = the peer's `peer_port` (the same number on every host)

With G possible gateways among H hosts that is G * (H - 1) sessions per direction, not
H * (H - 1): hosts without the provider network do not watch each other.

Tenant traffic does not use these ports: it leaves through the flow-based port, and
arrives there too, since these ports take only VNI BFD_VNI (which no switch has).

A host's own BFD goes off when the controller loses its switch (its OVSDB usually
stays), and on again once its flows are installed after it comes back: so a gateway
that restarts is not chosen again by its peers before it can carry the traffic.
"""
from __future__ import annotations

import ipaddress

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from controller.server.errors import ApiError
from controller.spaces.ids import BFD_VNI, FIRST_PEER_TUNNEL_OFPORT, MAX_PEER_TUNNEL_OFPORT
from tep.driver import host_db
from tep.ovs import INTEGRATION_BRIDGE

LOG = logging.getLogger("nvctl.peers")

ROLE = "peer-tunnel"  # external_ids:nvctl-role of the ports this module owns
BFD_INTERVAL_MS = 100  # min_tx = min_rx: a peer is down after 3 missed (OVS's multiplier), ~300 ms


def port_name(peer_port: int) -> str:
    return f"bfd{peer_port - FIRST_PEER_TUNNEL_OFPORT}"


def assign_peer_port(info: dict, name: str, hosts: dict) -> dict:
    """`info` with the host's peer_port: the one it had, else the lowest number no other
    host holds. Every host has one (a gateway's BFD port toward any host that may use it
    has that host's number), the same on every host."""
    old = hosts.get(name)
    keep = old.info.get("peer_port") if old is not None else None
    taken = {h.info.get("peer_port") for n, h in hosts.items() if n != name}
    if keep is not None and keep not in taken:
        return {**info, "peer_port": keep}
    n = FIRST_PEER_TUNNEL_OFPORT
    while n in taken:
        n += 1
    if n > MAX_PEER_TUNNEL_OFPORT:
        raise ValueError(f"no peer-tunnel ofport left ({FIRST_PEER_TUNNEL_OFPORT}..{MAX_PEER_TUNNEL_OFPORT})")
    return {**info, "peer_port": n}


def wanted(host: str, hosts: dict) -> dict[str, tuple[str, int]]:
    """port name -> (the peer's PA, ofport) of the BFD ports `host` should have: toward
    every possible gateway, and, on a possible gateway, toward every other host (a BFD
    session needs both ends)."""
    me = hosts.get(host)
    gateway = me is not None and bool(me.info.get("external"))
    return {port_name(h.info["peer_port"]): (h.pa, h.info["peer_port"])
            for n, h in hosts.items()
            if n != host and h.info.get("peer_port") and (gateway or h.info.get("external"))}


class PeerTunnels:
    """Keeps each host's BFD ports as `wanted` says, in the background (OVSDB calls
    take tens of ms; one at a time per host, the latest wish winning)."""

    def __init__(self):
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._pending: dict[str, tuple] = {}  # host -> (info, pa, wanted, bfd on) still to apply
        self._busy: set[str] = set()
        self.errors: dict[str, str] = {}  # host -> the last failure to configure it

    def ensure(self, host: str, rec, hosts: dict, bfd: bool) -> None:
        if rec is None or not rec.info.get("ovsdb"):
            return  # a host whose OVSDB we do not reach configures itself
        want = wanted(host, hosts)
        with self._lock:
            self._pending[host] = (rec.info, rec.pa, want, bfd)
            if host in self._busy:
                return
            self._busy.add(host)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="peer-tunnels")
        self._pool.submit(self._run, host)

    def _run(self, host: str) -> None:
        while True:
            with self._lock:
                job = self._pending.pop(host, None)
                if job is None:
                    self._busy.discard(host)
                    return
            try:
                apply(*job)
                self.errors.pop(host, None)
            except Exception as e:  # noqa: BLE001 - logged and kept for status; the next change retries
                self.errors[host] = str(e)
                LOG.warning("host %s: BFD ports: %s", host, e)


def _ours(db) -> dict[str, dict]:
    """name -> {options, bfd, ofport_request} of the ports this module made on a host."""
    import json
    raw = json.loads(db.vsctl("--format=json", "--columns=name,options,bfd,ofport_request", "find", "Interface",
                              f"external_ids:nvctl-role={ROLE}"))
    out = {}
    for name, options, bfd, req in raw["data"]:
        out[name] = {"options": dict(options[1]), "bfd": dict(bfd[1]),
                     "ofport_request": req if isinstance(req, int) else None}
    return out


def apply(info: dict, pa: str, want: dict[str, tuple[str, int]], bfd: bool) -> None:
    """One OVSDB transaction: add or fix the wanted ports, remove ours that are not. A
    port already as wanted is not written again (a write makes ovs-vswitchd reconfigure
    the bridge, and a port added to a userspace datapath now and then costs a packet)."""
    db = host_db(info)
    have = _ours(db)
    cmds = []
    on = "true" if bfd else "false"
    for name, (remote, ofport) in sorted(want.items()):
        got = have.get(name)
        if got is not None and got["ofport_request"] == ofport and got["bfd"].get("enable") == on \
                and got["options"] == {"remote_ip": remote, "local_ip": pa, "key": str(BFD_VNI)} \
                and got["bfd"].get("min_tx") == str(BFD_INTERVAL_MS) and got["bfd"].get("min_rx") == str(BFD_INTERVAL_MS):
            continue
        if got is None:
            cmds.append(["--may-exist", "add-port", INTEGRATION_BRIDGE, name])
        cmds.append(["set", "interface", name, "type=vxlan", f"options:remote_ip={remote}",
                     f"options:local_ip={pa}", f"options:key={BFD_VNI}", f"ofport_request={ofport}",
                     f"bfd:enable={on}", f"bfd:min_tx={BFD_INTERVAL_MS}", f"bfd:min_rx={BFD_INTERVAL_MS}",
                     f"external_ids:nvctl-role={ROLE}"])
    for name in sorted(set(have) - set(want)):
        cmds.append(["--if-exists", "del-port", INTEGRATION_BRIDGE, name])
    if cmds:  # one transaction; not waiting for ovs-vswitchd, which may be the one that died
        args: list[str] = []
        for c in cmds:
            args += ["--", *c]
        db.vsctl("--no-wait", *args)


def check_host_address(info: dict, host: str, hosts: dict, held: dict | None = None) -> None:
    """A host's provider-network address (`external.address`): on the network, not its
    gateway, not another host's, not a tenant's (`held`: address -> tenant). Raises
    ApiError naming the field."""
    ext = info.get("external") or {}
    addr = ext.get("address")
    if addr is None:
        return
    try:
        a = ipaddress.IPv4Address(str(addr))
    except ValueError:
        raise ApiError(f"host {host}: external.address {addr!r} is not an IPv4 address",
                       [("external.address", "not IPv4")]) from None
    net = ipaddress.IPv4Network(ext["network"]) if ext.get("network") else None
    if net is not None and (a not in net or a in (net.network_address, net.broadcast_address)):
        raise ApiError(f"host {host}: external.address {a} is not a host address of the provider network {net}",
                       [("external.address", f"outside {net}")])
    if str(a) == ext.get("next_hop"):
        raise ApiError(f"host {host}: external.address {a} is the provider network's gateway",
                       [("external.address", "the gateway's")])
    owner = (held or {}).get(str(a))
    if owner is not None:
        raise ApiError(f"host {host}: external.address {a} belongs to tenant {owner}",
                       [("external.address", f"tenant {owner}'s")])
    for name, rec in hosts.items():
        o = rec.info.get("external") or {}
        if name != host and o.get("address") == str(a):
            raise ApiError(f"host {host}: external.address {a} is host {name}'s",
                           [("external.address", f"host {name}'s")])

