"""Attaching workloads to hosts: the lab's compute driver.

For a host registered by the lab (`info.kind == "lab"`), a tenant port is a workload
namespace plugged into that host's br-int with external_ids naming tenant and port
(`iface-id=TENANT/PORT`, by which the controller binds the port wherever OVS numbers
it) and the ofport the controller allocated as a hint (`ofport_request`: bring-up needs
no renumbering when OVS grants it, which it does unless another interface holds that
number). Other kinds of host (real machines) get their workloads from whoever runs
them; the driver leaves those alone.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol

from tep import rxqueue, vm, workload
from tep.ovs import Ovsdb, run


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
    mtu: int = 1500  # the workload's interface MTU: its switch's
    ip6: str | None = None  # dual stack: its IPv6 CA, prefix length and IPv6 gateway
    prefixlen6: int = 64
    gateway6: str | None = None
    vm: bool = False  # a QEMU guest on a tap (tep.vm), not a namespace on a veth


def host_db(info: dict) -> Ovsdb:
    """The host's OVSDB: a local socket for lab hosts, ssl: for hosts that joined."""
    tls = info.get("ovsdb_tls")
    return Ovsdb(info["ovsdb"], tuple(tls) if tls else None)


def attachments_of(tenant, ofports: dict[str, int], mtus: dict[str, int] | None = None) -> dict[str, Attachment]:
    """Every port of a tenant (topology.model.Tenant) as the attachment a host needs,
    given the ofports the controller allocated and each switch's MTU."""
    out = {}
    for p in tenant.ports:
        if not p.workload:
            continue  # plugged by someone else (a container runtime's CNI plugin)
        gw = tenant.router_of(p.switch)
        sw = tenant.switch(p.switch)
        gw6 = gw[1].ip6 if gw else None
        out[p.name] = Attachment(tenant.name, p.name, p.host, ofports[p.name], str(p.ip),
                                 sw.cidr.prefixlen, p.mac, str(gw[1].ip) if gw else None,
                                 (mtus or {}).get(p.switch, 1500),
                                 str(p.ip6) if p.ip6 else None, sw.cidr6.prefixlen if sw.cidr6 else 64,
                                 str(gw6) if gw6 else None, p.vm)
    return out


def fingerprint(a: Attachment) -> str:
    """A digest of everything the attachment was made with: in OVSDB beside the port, so
    a restarted controller can tell a workload made as wanted from one to redo."""
    return hashlib.blake2b(repr(a).encode(), digest_size=8).hexdigest()


def external_ids(a: Attachment) -> dict[str, str]:
    return {"iface-id": f"{a.tenant}/{a.port}", "nvctl-tenant": a.tenant, "nvctl-port": a.port,
            "attached-mac": a.mac, "nvctl-attachment": fingerprint(a)}


def workload_namespace(prefix: str, tenant: str, port: str) -> str:
    return f"{prefix}{tenant}.{port}"


def host_ifname(tenant: str, port: str) -> str:
    """The host end of the workload's veth: 15 characters at most, stable per port."""
    return "w" + hashlib.blake2b(f"{tenant}/{port}".encode(), digest_size=5).hexdigest()


def _make_workload(info: dict, a: Attachment) -> None:
    """The workload namespace of `a` on the lab host `info`, as `a` says (no OVSDB)."""
    workload.create_workload(workload_namespace(info["prefix"], a.tenant, a.port), info["netns"],
                             host_ifname(a.tenant, a.port), a.ip, a.prefixlen, a.mac, a.gateway, a.mtu,
                             a.ip6, a.prefixlen6, a.gateway6)


def _deepen(info: dict) -> None:
    """The lab host's switch reads its ports through sockets that hold 92 frames by
    default; give the ones it has opened by now a NIC's queue (tep/rxqueue.py)."""
    if info.get("rundir"):
        rxqueue.deepen_instance(info["rundir"])


# guests -------------------------------------------------------------------------------

def vm_key(host: str, guest_name: str) -> str:
    """How a guest is named among the workloads a controller wants (collect_garbage)."""
    return f"vm:{host}:{guest_name}"


def _guest(info: dict, tenant: str, port: str) -> vm.Guest:
    """A port's guest on a lab host: its files in the host's run directory, named like
    its tap (and its OVSDB interface): 15 characters, stable per port."""
    return vm.Guest(os.path.join(info["rundir"], "vm"), host_ifname(tenant, port))


def _start_vm(info: dict, a: Attachment, incoming: str | None = None) -> vm.Guest:
    """The guest's tap in the host's br-int, carrying the port's iface-id (and the
    allocated number as a hint), then QEMU on it with the port's MAC. Returns at once:
    the guest boots and asks for its lease on its own."""
    ifname = host_ifname(a.tenant, a.port)
    g = _guest(info, a.tenant, a.port)
    g.stop()
    vm.remove_tap(info["netns"], ifname)
    vm.make_tap(info["netns"], ifname, max(workload.VETH_MTU, a.mtu))
    try:
        host_db(info).plug(ifname, a.ofport, external_ids(a))
        g.start(info["netns"], ifname, a.mac, incoming=incoming)
    except Exception:
        host_db(info).unplug(ifname, wait=False)
        vm.remove_tap(info["netns"], ifname)
        raise
    _deepen(info)
    return g


def _stop_vm(info: dict, tenant: str, port: str) -> None:
    """The guest stopped, its tap and files gone (its OVSDB port is the caller's)."""
    g = _guest(info, tenant, port)
    g.stop()
    _remove_files(g)
    vm.remove_tap(info["netns"], host_ifname(tenant, port))


def _remove_files(g: vm.Guest) -> None:
    """What a stopped guest leaves: its console log."""
    try:
        os.unlink(g.path("log"))
    except FileNotFoundError:
        pass


class Driver(Protocol):
    """What the controller asks of a compute driver: make, move and remove the workload
    behind a tenant port on its host. The controller is given one (`Core(store,
    make_driver=...)`); it never builds or probes one itself."""

    def namespace(self, tenant: str, port: str, host: str) -> str | None: ...
    def plug(self, a: Attachment) -> None: ...
    def plug_many(self, atts: list[Attachment], workers: int = 8,
                  done: Callable[[], None] | None = None) -> list[str]: ...
    def attached(self, wanted: list[Attachment]) -> set[tuple[str, str]]: ...
    def prepare_move(self, new: Attachment, timeout: float = 10) -> None: ...
    def finish_move(self, old: Attachment) -> None: ...
    def move(self, old: Attachment, new: Attachment) -> None: ...
    def unplug(self, a: Attachment) -> None: ...
    def rebind(self, a: Attachment) -> None: ...
    def collect_garbage(self, wanted: set[str]) -> list[str]: ...
    # VMs (`workload: vm`): the guest of a port on a host, None where the driver runs none;
    # a live migration's destination, copy, cancel, and its two ends (controller.server.vmmigrate)
    def guest(self, tenant: str, port: str, host: str) -> vm.Guest | None: ...
    def vm_incoming(self, new: Attachment, port: int) -> str: ...
    def vm_migrate(self, old: Attachment, uri: str, bandwidth_mbps: float | None = None) -> dict: ...
    def vm_cancel(self, old: Attachment) -> None: ...
    def vm_abort(self, new: Attachment) -> None: ...
    def vm_finish(self, old: Attachment) -> None: ...


class NoDriver:
    """Hosts whose workloads someone else runs (a joined machine's VMs, a CNI runtime, a
    unit test): nothing to make or remove. Subclasses override what they do."""

    def __init__(self, hosts: Mapping | None = None):
        self.hosts = hosts

    def namespace(self, tenant: str, port: str, host: str) -> str | None:
        return None

    def plug(self, a: Attachment) -> None:
        pass

    def plug_many(self, atts: list[Attachment], workers: int = 8, done=None) -> list[str]:
        errors = []
        for a in atts:
            try:
                self.plug(a)
            except Exception as e:  # noqa: BLE001 - reported per attachment, as LabDriver does
                errors.append(f"attach {a.tenant}/{a.port} to {a.host}: {e}")
            if done is not None:
                done()
        return errors

    def attached(self, wanted: list[Attachment]) -> set[tuple[str, str]]:
        return set()

    def prepare_move(self, new: Attachment, timeout: float = 10) -> None:
        pass

    def finish_move(self, old: Attachment) -> None:
        pass

    def move(self, old: Attachment, new: Attachment) -> None:
        pass

    def unplug(self, a: Attachment) -> None:
        pass

    def rebind(self, a: Attachment) -> None:
        pass

    def collect_garbage(self, wanted: set[str]) -> list[str]:
        return []

    def guest(self, tenant: str, port: str, host: str):
        return None  # no VM of ours: `port migrate --prepare` binds it pending for its hypervisor

    def vm_incoming(self, new: Attachment, port: int) -> str:
        raise RuntimeError(f"{new.host}: this driver runs no VM")

    def vm_migrate(self, old: Attachment, uri: str, bandwidth_mbps: float | None = None) -> dict:
        raise RuntimeError(f"{old.host}: this driver runs no VM")

    def vm_cancel(self, old: Attachment) -> None:
        pass

    def vm_abort(self, new: Attachment) -> None:
        pass

    def vm_finish(self, old: Attachment) -> None:
        pass


class LabDriver:
    """The lab's hosts (`info.kind == "lab"`): a workload namespace per port."""

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

    def guest(self, tenant: str, port: str, host: str) -> vm.Guest | None:
        """The QEMU guest of a `workload: vm` port on a lab host (whether it runs or not)."""
        info = self._lab(host)
        return _guest(info, tenant, port) if info else None

    def plug(self, a: Attachment) -> None:
        info = self._lab(a.host)
        if info is None:
            return
        if a.vm:
            _start_vm(info, a)
            return
        host_db(info).plug(host_ifname(a.tenant, a.port), a.ofport, external_ids(a))
        _make_workload(info, a)
        _deepen(info)

    def plug_many(self, atts: list[Attachment], workers: int = 8, done=None) -> list[str]:
        """Plug a batch: every workload first (netlink calls, `workers` at once), then
        one OVSDB transaction per host for all of its ports (ovs-vswitchd opens veths
        that already exist), then the host's new sockets deepened once. Returns an error
        line per attachment that failed; `done()` is called as each workload is made."""
        mine = [a for a in atts if self._lab(a.host) and not a.vm]
        errors = []
        for a in atts:  # guests one by one: each is a QEMU that boots on its own afterwards
            if a.vm and self._lab(a.host):
                try:
                    self.plug(a)
                except Exception as e:  # noqa: BLE001 - reported per port
                    errors.append(f"attach {a.tenant}/{a.port} to {a.host}: {e}")
                if done is not None:
                    done()

        def make(a: Attachment) -> str | None:
            try:
                _make_workload(self._lab(a.host), a)
                return None
            except Exception as e:  # noqa: BLE001 - reported per port
                return f"attach {a.tenant}/{a.port} to {a.host}: {e}"
            finally:
                if done is not None:
                    done()
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            made = list(pool.map(make, mine))
        errors += [e for e in made if e]
        by_host: dict[str, list[Attachment]] = {}
        for a, err in zip(mine, made):
            if err is None:
                by_host.setdefault(a.host, []).append(a)

        def ovsdb(item) -> list[str]:
            host, batch = item
            info = self._lab(host)
            try:
                host_db(info).plug_many([(host_ifname(a.tenant, a.port), a.ofport, external_ids(a)) for a in batch])
            except Exception as e:  # noqa: BLE001
                return [f"attach {a.tenant}/{a.port} to {host}: {e}" for a in batch]
            _deepen(info)
            return []
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(by_host)))) as pool:
            for errs in pool.map(ovsdb, by_host.items()):
                errors += errs
        return errors

    def attached(self, wanted: list[Attachment]) -> set[tuple[str, str]]:
        """(tenant, port) of the wanted workloads that are in place as wanted, checked
        cheaply: one OVSDB read and one link dump per host, one namespace listing. In
        place: its namespace exists, its veth's host end too, and OVSDB has the port with
        its ofport and the fingerprint of this very attachment (written when it was made)."""
        by_host: dict[str, list[Attachment]] = {}
        for a in wanted:
            if self._lab(a.host):
                by_host.setdefault(a.host, []).append(a)
        spaces = workload.namespaces()
        ok = set()
        for host, atts in by_host.items():
            info = self._lab(host)
            try:
                rows = json.loads(host_db(info).vsctl("--format=json", "--columns=name,ofport,external_ids",
                                                      "list", "Interface"))
                links = {line.split(": ")[1].split("@")[0]
                         for line in run(["ip", "-n", info["netns"], "-o", "link", "show"]).splitlines()}
            except Exception:  # noqa: BLE001 - a host we cannot read: plug everything there
                continue
            have = {}
            for name, ofport, ids in rows["data"]:
                have[name] = (ofport, dict(ids[1]) if isinstance(ids, list) else {})
            for a in atts:
                ifname = host_ifname(a.tenant, a.port)
                got = have.get(ifname)
                if not (got and got[0] == a.ofport and got[1].get("nvctl-attachment") == fingerprint(a)
                        and ifname in links):
                    continue
                if (_guest(info, a.tenant, a.port).pid() is not None if a.vm else
                        workload_namespace(info["prefix"], a.tenant, a.port) in spaces):
                    ok.add((a.tenant, a.port))
        return ok

    def prepare_move(self, new: Attachment, timeout: float = 10) -> None:
        """Make: the workload gets a second attachment, into the destination's br-int
        (whose flows for it are already in place), and we wait until that OVS has
        opened the port. Both attachments now deliver; the old one still carries the
        traffic the other hosts send to the old PA."""
        dst = self._lab(new.host)
        if dst is None or new.vm:
            return
        ns = workload_namespace(dst["prefix"], new.tenant, new.port)
        ifname = host_ifname(new.tenant, new.port)
        db = host_db(dst)
        db.plug(ifname, new.ofport, external_ids(new))
        workload.attach(ns, dst["netns"], ifname, max(workload.VETH_MTU, new.mtu))
        deadline = time.monotonic() + timeout
        while db.vsctl("get", "interface", ifname, "ofport").strip() != str(new.ofport):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{new.host}: OVS did not open {ifname} as ofport {new.ofport} in {timeout:.0f}s")
            time.sleep(0.005)
        _deepen(dst)  # the new port's socket is open now

    def finish_move(self, old: Attachment) -> None:
        """Break: after every host forwards to the new place, the old attachment goes."""
        src = self._lab(old.host)
        if src is None or old.vm:
            return
        workload.detach(workload_namespace(src["prefix"], old.tenant, old.port), src["netns"])
        host_db(src).unplug(host_ifname(old.tenant, old.port), wait=False)

    def move(self, old: Attachment, new: Attachment) -> None:
        """Re-home a workload (a tenant apply that changed its host): attach, detach."""
        if self._lab(new.host) is None or self._lab(old.host) is None or old.vm or new.vm:
            # a guest moved by a tenant apply restarts there (a live move is `port migrate`)
            self.unplug(old)
            self.plug(new)
            return
        self.prepare_move(new)
        self.finish_move(old)

    def unplug(self, a: Attachment) -> None:
        info = self._lab(a.host)
        if info is None:
            return
        ifname = host_ifname(a.tenant, a.port)
        host_db(info).unplug(ifname)
        if a.vm:
            _stop_vm(info, a.tenant, a.port)
            return
        workload.delete_workload(workload_namespace(info["prefix"], a.tenant, a.port), info["netns"], ifname)

    # a guest's live migration (controller.server.vmmigrate) ------------------------------
    def vm_incoming(self, new: Attachment, port: int) -> str:
        """The destination: the guest's tap on `new.host` with the port's iface-id (at
        the pending binding's number), and QEMU waiting for the guest on that host's
        provider address. Returns the URI the source migrates to."""
        info = self._lab(new.host)
        uri = f"tcp:{self.hosts[new.host].pa}:{port}"
        _start_vm(info, new, incoming=uri)
        return uri

    def vm_migrate(self, old: Attachment, uri: str, bandwidth_mbps: float | None = None) -> dict:
        """QEMU's own migration of the running guest to `uri` (at most `bandwidth_mbps`);
        what QEMU reports."""
        return _guest(self._lab(old.host), old.tenant, old.port).migrate(
            uri, max_bandwidth=int(bandwidth_mbps * 1e6 / 8) if bandwidth_mbps else None)

    def vm_cancel(self, old: Attachment) -> None:
        _guest(self._lab(old.host), old.tenant, old.port).cancel_migration()

    def vm_abort(self, new: Attachment) -> None:
        """A migration that did not happen: the destination's QEMU and tap go."""
        self.unplug(new)

    def vm_finish(self, old: Attachment) -> None:
        """A migration that happened: the paused source QEMU and its tap go (QEMU first:
        nothing waits on OVS for a port nobody uses any more)."""
        info = self._lab(old.host)
        if info is None:
            return
        _stop_vm(info, old.tenant, old.port)
        host_db(info).unplug(host_ifname(old.tenant, old.port), wait=False)

    def rebind(self, a: Attachment) -> None:
        """The controller moved the port's allocation to `a.ofport`, where OVS put its
        interface (or away from a number another interface holds): the interface, if it
        is there, keeps its workload as it is, and only its hint and fingerprint follow,
        so a restarted vswitchd puts it back at the same number and a restarted
        controller finds the workload in place (`attached`) instead of making it again."""
        info = self._lab(a.host)
        if info is None:
            return
        host_db(info).vsctl("--no-wait", "--if-exists", "set", "interface", host_ifname(a.tenant, a.port),
                            f"ofport_request={a.ofport}", f"external_ids:nvctl-attachment={fingerprint(a)}")

    def collect_garbage(self, wanted: set[str]) -> list[str]:
        """Remove this lab's workload namespaces and guests that no tenant port wants any
        more (`wanted`: namespaces, and guests as `vm_key`)."""
        prefixes = {rec.info["prefix"] for rec in self.hosts.values()
                    if rec.info.get("kind") == "lab"}
        gone = []
        for name, rec in sorted(self.hosts.items()):
            info = rec.info
            if info.get("kind") != "lab" or not info.get("rundir"):
                continue
            rundir = os.path.join(info["rundir"], "vm")
            for f in sorted(os.listdir(rundir)) if os.path.isdir(rundir) else ():
                if f.endswith(".pid") and vm_key(name, f[:-4]) not in wanted:
                    g = vm.Guest(rundir, f[:-4])
                    g.stop()
                    _remove_files(g)
                    vm.remove_tap(info["netns"], f[:-4])
                    host_db(info).unplug(f[:-4], wait=False)
                    gone.append(vm_key(name, f[:-4]))
        for ns in workload.namespaces():
            if "." in ns and any(ns.startswith(p) for p in prefixes) and ns not in wanted:
                workload.delete_namespace(ns)
                gone.append(ns)
        return gone
