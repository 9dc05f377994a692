"""Attaching workloads to hosts: the lab's compute driver.

For a host registered by the lab (`info.kind == "lab"`), a tenant port is a workload
namespace plugged into that host's br-int with the ofport the controller allocated and
external_ids naming tenant and port. Other kinds of host (real machines) get their
workloads from whoever runs them; the driver leaves those alone.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from tep import workload
from tep.ovs import Ovsdb


@dataclass(frozen=True)
class Attachment:
    """Everything needed to (re)create one workload: compared to decide what to redo."""

    tenant: str
    port: str
    host: str
    ofport: int
    ip: str
    prefixlen: int
    mac: str
    gateway: str | None = None


def _db(info: dict) -> Ovsdb:
    """The host's OVSDB: a local socket for lab hosts, ssl: for hosts that joined."""
    tls = info.get("ovsdb_tls")
    return Ovsdb(info["ovsdb"], tuple(tls) if tls else None)


def workload_namespace(prefix: str, tenant: str, port: str) -> str:
    return f"{prefix}{tenant}.{port}"


def host_ifname(tenant: str, port: str) -> str:
    """The host end of the workload's veth: 15 characters at most, stable per port."""
    return "w" + hashlib.blake2b(f"{tenant}/{port}".encode(), digest_size=5).hexdigest()


class LabDriver:
    def __init__(self, hosts: dict):
        self.hosts = hosts  # host name -> HostRecord (shared with the core)

    def _lab(self, host: str):
        rec = self.hosts.get(host)
        if rec is None or rec.info.get("kind") != "lab":
            return None
        return rec.info

    def namespace(self, tenant: str, port: str, host: str) -> str | None:
        info = self._lab(host)
        return workload_namespace(info["prefix"], tenant, port) if info else None

    def plug(self, a: Attachment) -> None:
        info = self._lab(a.host)
        if info is None:
            return
        ns = workload_namespace(info["prefix"], a.tenant, a.port)
        ifname = host_ifname(a.tenant, a.port)
        workload.create_workload(ns, info["netns"], ifname, a.ip, a.prefixlen, a.mac, a.gateway)
        _db(info).plug(ifname, a.ofport, {
            "iface-id": f"{a.tenant}/{a.port}", "nvctl-tenant": a.tenant, "nvctl-port": a.port,
            "attached-mac": a.mac})

    def prepare_move(self, new: Attachment) -> None:
        """Before a live move: the destination's br-int gets the port (its interface does
        not exist there yet; ovs-vswitchd opens it the moment it appears)."""
        dst = self._lab(new.host)
        if dst is not None:
            _db(dst).plug(host_ifname(new.tenant, new.port), new.ofport, {
                "iface-id": f"{new.tenant}/{new.port}", "nvctl-tenant": new.tenant,
                "nvctl-port": new.port, "attached-mac": new.mac})

    def move(self, old: Attachment, new: Attachment) -> None:
        """Live-move a workload to another host: the veth's host end goes from the old
        host's namespace into the new one (whose br-int already has the port, see
        prepare_move); the old br-int forgets it without being waited for. The workload
        keeps its namespace, addresses and open sockets."""
        src, dst = self._lab(old.host), self._lab(new.host)
        if src is None or dst is None:
            self.unplug(old)
            self.plug(new)
            return
        workload.move_attachment(host_ifname(new.tenant, new.port), src["netns"], dst["netns"])

    def finish_move(self, old: Attachment) -> None:
        """After a live move: the old br-int forgets the port (its device is gone)."""
        src = self._lab(old.host)
        if src is not None:
            _db(src).unplug(host_ifname(old.tenant, old.port), wait=False)

    def unplug(self, a: Attachment) -> None:
        info = self._lab(a.host)
        if info is None:
            return
        ifname = host_ifname(a.tenant, a.port)
        _db(info).unplug(ifname)
        workload.delete_workload(workload_namespace(info["prefix"], a.tenant, a.port), info["netns"], ifname)

    def collect_garbage(self, wanted: set[str]) -> list[str]:
        """Remove this lab's workload namespaces that no tenant port wants any more."""
        prefixes = {rec.info["prefix"] for rec in self.hosts.values()
                    if rec.info.get("kind") == "lab"}
        gone = []
        for ns in workload.namespaces():
            if "." in ns and any(ns.startswith(p) for p in prefixes) and ns not in wanted:
                workload.delete_namespace(ns)
                gone.append(ns)
        return gone
