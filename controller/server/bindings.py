"""Tenant ports bound to the interfaces that carry them, by `external_ids:iface-id`.

As OVN binds a logical port wherever an interface with its iface-id appears, a port is
bound on its own host at the ofport of the interface with `iface-id=TENANT/PORT` there,
whatever number OVS gave it. The allocator's ofport (controller.compile.allocator) is
where the flows point and the hint a driver may ask OVS for; when OVS numbered the
interface otherwise (a runtime that plugs without `ofport_request`, a number another
interface held), the allocation follows the interface through the change path
(change.Rebinding), never the other way round. The same iface-id on another host is
only reported (`seen` in `tenant show`), never bound: where a port runs is the
controller's placement, not whoever plugs an interface somewhere.

One exception to "whatever number": ofports below the workload range
(controller.spaces.ids) are kept for infrastructure ports (the tunnel, a gateway's
external port), and OVS hands out its own numbers from the bottom, so an interface
plugged without a hint usually lands there. Such an interface is asked, over its host's
OVSDB, to move to its port's allocated number (or a free one when an interface holds
that), and is bound once it has; a host that reports its own interfaces is told to.

Where interfaces are learned: from the switches. A switch's port descriptions at
connect and each PortStatus add or delete (controller.switch.ofadapter keeps the
session's port list, with no I/O on the event loop) mark the host to be read: one
`find Interface` over its OVSDB for the iface-ids, in a background worker, never under
the core's mutex; events that arrive during a read make one more read after it. A host
whose OVSDB the controller cannot read reports its own interfaces (the
`host.interfaces` operation). Both feed `observe_interfaces`.

A piece of `Core` (controller/server/core.py): the state it uses is made in
`Core.__init__` (`Watch`).
"""
from __future__ import annotations

import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Mapping

from controller.compile.allocator import Exhausted
from controller.spaces.ids import FIRST_OFPORT, MAX_OFPORT, WORKLOAD_OFPORTS
from controller.spaces.names import pending_name
from controller.server import change as change_path
from controller.server.change import Rebinding
from controller.server.errors import ApiError, unknown_host
from tep.driver import host_db
from tep.ovs import OvsError

LOG = logging.getLogger("nvctl.bindings")
READ_WORKERS = 4  # hosts read at once
SETTLE_SECONDS = 2.0  # how long a view waits for the reads of port events that arrived before it
RENUMBER_SECONDS = 3.0  # how long an interface asked to move is waited for (by views) and not asked again
SWEEP_SECONDS = 5.0  # a host with a port that is not up is read again this often: an iface-id set
                     # after its interface was added makes no port event
IFNAME = re.compile(r"^[!-~]{1,255}$")  # printable, no spaces: what OVS and ovs-vsctl take as a name


@dataclass(frozen=True)
class Iface:
    """One interface on a host's br-int: where OVS put it, and which port it says it carries."""
    ofport: int
    name: str
    iface_id: str | None = None


def port_of(iface_id: str | None) -> tuple[str, str] | None:
    """(tenant, port) an iface-id names, or None if it is not TENANT/PORT."""
    if not iface_id or iface_id.count("/") != 1:
        return None
    tenant, port = iface_id.split("/")
    return (tenant, port) if tenant and port else None


@dataclass(frozen=True)
class Plan:
    bound: dict  # (tenant, port) -> the ofport its interface has on the host
    moves: dict  # (tenant, port) -> its new ofport: bound elsewhere than allocated, or displaced by one that is
    renumber: dict  # interface name -> the ofport OVS is to move it to (it sits at an infrastructure number)


def plan(ifaces: Iterable[Iface], placed: Mapping[tuple[str, str], int]) -> Plan:
    """What one host's interfaces mean for the allocation. `placed`: (tenant, port) ->
    allocated ofport of every port placed on the host, of every tenant (ofports are
    unique per host). Pure: the same interfaces and allocation give the same plan, and
    a plan carried out gives an empty one next time.

    A port is bound at its interface's ofport when that is a workload number (its
    allocated one if it has an interface there, else the lowest); a port that held that
    number moves to the lowest number neither allocated nor held by any interface. A
    port whose interfaces all sit at infrastructure numbers is not bound: the first of
    them is to move to the port's number (a free one if an interface holds that)."""
    ifaces = list(ifaces)
    claims: dict[tuple[str, str], list[Iface]] = {}
    for i in ifaces:
        key = port_of(i.iface_id)
        if key in placed:
            claims.setdefault(key, []).append(i)
    bound, stranded = {}, {}
    for key, found in claims.items():
        usable = sorted(i.ofport for i in found if i.ofport in WORKLOAD_OFPORTS)
        if usable:
            bound[key] = placed[key] if placed[key] in usable else usable[0]
        else:
            stranded[key] = min(found, key=lambda i: i.ofport)
    new = {**placed, **bound}
    taken = {n: key for key, n in bound.items()}
    held = {i.ofport for i in ifaces}
    busy = set(new.values()) | held

    def free() -> int:
        n = FIRST_OFPORT
        while n in busy:
            n += 1
        if n > MAX_OFPORT:
            raise Exhausted(f"no free ofport left ({FIRST_OFPORT}..{MAX_OFPORT} all in use)")
        busy.add(n)
        return n
    moves = {key: n for key, n in bound.items() if n != placed[key]}
    for key in sorted(placed):
        if key not in bound and new[key] in taken:
            new[key] = moves[key] = free()
    renumber = {i.name: new[key] if new[key] not in held else free() for key, i in sorted(stranded.items())}
    return Plan(bound, moves, renumber)


class Watch:
    """What the controller knows of the hosts' interfaces, and which reads are due.
    `cond` guards all of it; never held while reading a host or taking the core's mutex."""

    def __init__(self):
        self.cond = threading.Condition()
        self.interfaces: dict[str, dict[int, Iface]] = {}  # host -> ofport -> interface on its br-int
        self.events: dict[str, int] = {}  # host -> port events that asked for a read
        self.covered: dict[str, int] = {}  # host -> events the last finished read began after
        self.busy: set[str] = set()  # hosts with a read loop running
        self.asked: dict[str, dict[str, tuple[int, float]]] = {}  # host -> interface -> (ofport asked, until)
        self.pool: ThreadPoolExecutor | None = None  # made with the first read: a core that reads nothing has none
        self.sweeping = False


class BindingsMixin:
    # -- what the switches say ----------------------------------------------------------
    def switch_ports_changed(self, session) -> None:
        """A port was added to or deleted from a switch (the OpenFlow app's thread: no
        I/O, no mutex): its host's interfaces are read again in the background."""
        host = self.host_of_dpid(session.dpid)
        if host is not None:
            self.watch_interfaces(host)

    def watch_interfaces(self, host: str) -> None:
        """Read `host`'s interfaces in the background: now, or once more after the read
        under way (it may have begun before whatever asks). A host whose OVSDB the
        controller does not know reports its own (`report_interfaces`)."""
        rec = self.hosts.get(host)
        if rec is None or not rec.info.get("ovsdb"):
            return
        w = self.watch
        with w.cond:
            w.events[host] = w.events.get(host, 0) + 1
            if host in w.busy:
                return
            w.busy.add(host)
            if w.pool is None:
                w.pool = ThreadPoolExecutor(max_workers=READ_WORKERS, thread_name_prefix="interfaces")
            sweep, w.sweeping = not w.sweeping, True
        w.pool.submit(self._read_loop, host)
        if sweep:
            threading.Thread(target=self._sweep, name="interfaces-sweep", daemon=True).start()

    def _read_loop(self, host: str) -> None:
        w = self.watch
        while True:
            with w.cond:
                began = w.events.get(host, 0)
            try:
                items = self._read_interfaces(host)
                if items is not None:
                    out = self.observe_interfaces(host, items, complete=True)
                    if out["renumber"]:
                        self._renumber(host, out["renumber"])
            except (OvsError, ApiError) as e:  # unreachable OVSDB, no free number: the next event or sweep tries again
                LOG.warning("host %s: interfaces not read or not bound: %s", host, e)
            except Exception:  # noqa: BLE001 - a bug: said with its stack, and the watch goes on
                LOG.exception("host %s: interfaces not read or not bound", host)
            with w.cond:
                w.covered[host] = max(w.covered.get(host, 0), began)
                w.cond.notify_all()
                if w.events.get(host, 0) == began:
                    w.busy.discard(host)
                    return

    def _read_interfaces(self, host: str) -> list[tuple] | None:
        """(ofport, name, iface-id) of every port on the host's br-int: which ports and
        where from the switch (its session's port list), their iface-ids from one read
        of the host's OVSDB. None when the switch is not connected."""
        rec, st = self.hosts.get(host), self.state.get(host)
        if rec is None or not rec.info.get("ovsdb") or st is None or st.session is None:
            return None
        on_switch = st.session.ports()
        ids = host_db(rec.info).iface_ids()
        return [(no, name, ids.get(name)) for no, name in sorted(on_switch.items()) if 1 <= no <= MAX_OFPORT]

    def _renumber(self, host: str, asks: dict[str, int]) -> None:
        """Ask the host's OVS to move interfaces off infrastructure numbers (outside the
        core's mutex). An ask is not repeated while OVS may still be carrying it out."""
        w, now = self.watch, time.monotonic()
        rec = self.hosts.get(host)
        if rec is None or not self.leading():
            return
        for name, n in sorted(asks.items()):
            with w.cond:
                mine = w.asked.setdefault(host, {})
                before, until = mine.get(name, (None, 0.0))
                if before == n and until > now:
                    continue
                mine[name] = (n, now + RENUMBER_SECONDS)
            try:
                host_db(rec.info).request_ofport(name, n)
                LOG.info("host %s: asked OVS to move %s to ofport %d (it sat at an infrastructure number)",
                         host, name, n)
            except Exception as e:  # noqa: BLE001 - asked again at the next read
                LOG.warning("host %s: could not ask OVS to move %s to ofport %d: %s", host, name, n, e)
                with w.cond:
                    w.asked.get(host, {}).pop(name, None)

    def _sweep(self) -> None:
        """Read again, now and then, the hosts where a port is not up (cheap: nothing
        is read while every port is up)."""
        while True:
            time.sleep(SWEEP_SECONDS)
            try:
                for host in sorted(self._hosts_waiting()):
                    self.watch_interfaces(host)
            except Exception:  # noqa: BLE001 - the sweep goes on
                LOG.exception("interfaces sweep")

    def _hosts_waiting(self) -> set[str]:
        claims = self._claims()
        out = set()
        for name, e in list(self.tenants.items()):
            for p in e.tenant.ports:
                st = self.state.get(p.host)
                if p.host in out or st is None or st.session is None:
                    continue
                if not any(h == p.host and i.ofport == e.alloc.ofport[p.name]
                           for h, i in claims.get(f"{name}/{p.name}", ())):
                    out.add(p.host)
        return out

    # -- the one entry point -------------------------------------------------------------
    def observe_interfaces(self, host: str, interfaces: Iterable[tuple], complete: bool = True) -> dict:
        """What is on `host`'s br-int: [(ofport, name, iface-id or None), ...]; an ofport
        of None says the interface of that name is gone. `complete`: these are all of
        them (any other is gone), else changes to what was known. Both the OVSDB watch
        and a host's own report come here. Ports are bound, and the allocation follows
        them (a Rebinding change) where OVS numbered them otherwise. Answers what is
        bound, what moved, and `renumber`: interfaces to move off infrastructure
        numbers (interface name -> ofport)."""
        if host not in self.hosts:
            raise unknown_host(host, self.hosts, "host")
        w = self.watch
        with w.cond:
            table = {} if complete else dict(w.interfaces.get(host, {}))
            for ofport, name, iface_id in interfaces:
                for no in [no for no, i in table.items() if i.name == name or no == ofport]:
                    del table[no]
                if ofport is not None:
                    table[ofport] = Iface(ofport, name, iface_id)
            w.interfaces[host] = table
            asked, now = w.asked.get(host, {}), time.monotonic()
            names = {i.name: i for i in table.values()}
            for name in [n for n, (_, until) in asked.items()
                         if n not in names or names[n].ofport in WORKLOAD_OFPORTS or until <= now]:
                del asked[name]
            w.cond.notify_all()
        return self._bind(host)

    def _bind(self, host: str) -> dict:
        """Bind `host`'s ports to its interfaces as known (under the mutex: it reads the
        allocation it may change). A follower in a cluster binds nothing: the leader's
        rebinding reaches it through the store."""
        with self.mutex:
            placed = {(name, p.name): e.alloc.ofport[p.name]
                      for name, e in self.tenants.items() for p in e.tenant.ports if p.host == host}
            with self.watch.cond:
                ifaces = list(self.watch.interfaces.get(host, {}).values())
            try:
                pl = plan(ifaces, placed)
            except Exhausted as ex:
                raise ApiError(f"host {host}: ports not rebound: {ex}; nothing was changed") from None
            out = {"host": host, "interfaces": len(ifaces),
                   "bound": sorted(f"{t}/{p}" for t, p in pl.bound), "moved": {},
                   "renumber": {**pl.renumber, **self._pending_renumber(host, ifaces)}}
            if pl.moves and self.leading():
                moves: dict[str, dict[str, int]] = {}
                for (t, p), n in pl.moves.items():
                    moves.setdefault(t, {})[p] = n
                r = change_path.run(self, Rebinding(host, moves))
                LOG.info("host %s: ports rebound to their interfaces' ofports: %s", host, r["moved"])
                out.update(moved=r["moved"], hosts=r["hosts"], attach_errors=r["attach_errors"])
            return out

    def _pending_renumber(self, host: str, ifaces: list[Iface]) -> dict[str, int]:
        """A migrating VM's interface on its destination is to sit at its pending
        binding's number (the activation flows match that in_port): interface name ->
        that number, for each one elsewhere while the number is free."""
        want = {(name, p.name): e.alloc.ofport.get(pending_name(p.name))
                for name, e in self.tenants.items() for p in e.tenant.ports if p.pending == host}
        if not want:
            return {}
        held = {i.ofport for i in ifaces}
        out = {}
        for i in ifaces:
            n = want.get(port_of(i.iface_id))
            if n is not None and i.ofport != n and n not in held:
                out[i.name] = n
        return out

    # -- a host's own report ---------------------------------------------------------------
    def report_interfaces(self, host: str, interfaces: list, complete: bool = False) -> dict:
        """`host.interfaces`: a host reports the interfaces on its br-int itself (when the
        controller cannot read its OVSDB). Each item is {"name": ..., "ofport": N or
        null (gone), "iface_id": ... (optional)}. The answer's `renumber` lists the
        interfaces the host should move (set their ofport_request) to be bound."""
        if host not in self.hosts:
            raise unknown_host(host, self.hosts, "host")
        return self.observe_interfaces(host, reported_items(host, interfaces), complete)

    # -- for the views ---------------------------------------------------------------------
    def interfaces_settled(self, hosts: Iterable[str], timeout: float = SETTLE_SECONDS) -> bool:
        """Wait (at most `timeout`) until every port event these hosts' switches had
        reported is read, and no interface is still moving as asked: a view right after
        a change sees its ports as OVS has them. False if it had to stop waiting."""
        w, hosts = self.watch, set(hosts)
        with w.cond:
            want = {h: w.events.get(h, 0) for h in hosts}

            def settled() -> bool:
                now = time.monotonic()
                return (all(w.covered.get(h, 0) >= n for h, n in want.items())
                        and not any(until > now for h in hosts for _, until in w.asked.get(h, {}).values()))
            return w.cond.wait_for(settled, timeout)

    def _claims(self) -> dict[str, list[tuple[str, Iface]]]:
        """iface-id -> [(host, interface)] over every host's known interfaces."""
        out: dict[str, list[tuple[str, Iface]]] = {}
        with self.watch.cond:
            for host, table in self.watch.interfaces.items():
                for i in table.values():
                    if i.iface_id:
                        out.setdefault(i.iface_id, []).append((host, i))
        return out

    def port_binding(self, tenant: str, e, p, claims: dict | None = None) -> dict:
        """`up` and `seen` of one port: up when an interface with its iface-id is at its
        allocated ofport on its host (whose switch is connected); seen: every interface
        with its iface-id on any host, bound or not and why not."""
        claims = self._claims() if claims is None else claims
        alloc = e.alloc.ofport[p.name]
        found = sorted(claims.get(f"{tenant}/{p.name}", ()), key=lambda hi: (hi[0] != p.host, hi[0], hi[1].ofport))
        bound = any(h == p.host and i.ofport == alloc for h, i in found)
        seen = []
        for h, i in found:
            row = {"host": h, "ofport": i.ofport, "interface": i.name, "bound": h == p.host and i.ofport == alloc}
            if row["bound"]:
                pass
            elif h != p.host:
                row["reason"] = f"the port is placed on {p.host}"
            elif i.ofport not in WORKLOAD_OFPORTS:
                row["reason"] = (f"ofport {i.ofport} is kept for infrastructure ports (below {FIRST_OFPORT}): "
                                 f"the interface is to move to a workload ofport")
            elif bound:
                row["reason"] = f"another interface with this iface-id is bound (ofport {alloc})"
            else:
                row["reason"] = f"not bound yet: the port's flows are at ofport {alloc}"
            seen.append(row)
        st = self.state.get(p.host)
        connected = p.host in self.hosts and st is not None and st.session is not None
        return {"up": connected and bound, "seen": seen}


def _json_name(value) -> str:
    return {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array",
            type(None): "null"}.get(type(value), type(value).__name__)


def reported_items(host: str, interfaces: list) -> list[tuple]:
    """A host's report as (ofport, name, iface-id) items, every item checked: an
    ApiError names each field that is wrong and why, and nothing is taken."""
    errors, out, names, ofports = [], [], {}, {}
    for k, item in enumerate(interfaces):
        at = f"interfaces[{k}]"
        if not isinstance(item, dict):
            errors.append((at, f"must be an object (name, ofport, iface_id), not {_json_name(item)}"))
            continue
        for extra in sorted(set(item) - {"name", "ofport", "iface_id"}):
            errors.append((f"{at}.{extra}", "is unknown (an interface has name, ofport and iface_id)"))
        name, ofport, iface_id = item.get("name"), item.get("ofport"), item.get("iface_id")
        if not isinstance(name, str) or not IFNAME.match(name):
            got = repr(name) if isinstance(name, str) else _json_name(name)
            errors.append((f"{at}.name", "is required: the interface's name, 1 to 255 printable characters, "
                                         f"no spaces (got {got})"))
        elif name in names:
            errors.append((f"{at}.name", f"{name!r} is reported twice (also interfaces[{names[name]}])"))
        else:
            names[name] = k
        if "ofport" not in item:
            errors.append((f"{at}.ofport", "is required: its ofport on br-int, or null when it is gone"))
        elif ofport is not None and (type(ofport) is not int or not 1 <= ofport <= MAX_OFPORT):
            errors.append((f"{at}.ofport", f"must be an integer from 1 to {MAX_OFPORT} or null, not {ofport!r}"))
        elif ofport is not None and ofport in ofports:
            errors.append((f"{at}.ofport", f"{ofport} is reported twice (also interfaces[{ofports[ofport]}])"))
        elif ofport is not None:
            ofports[ofport] = k
        if iface_id is not None and (not isinstance(iface_id, str) or not 1 <= len(iface_id) <= 255):
            errors.append((f"{at}.iface_id", f"must be a string of 1 to 255 characters or null, "
                                             f"not {_json_name(iface_id)}"))
        out.append((ofport, name, iface_id))
    if errors:
        raise ApiError(f"host {host}: {len(errors)} problem(s) with the reported interfaces; nothing was changed",
                       errors)
    return out
