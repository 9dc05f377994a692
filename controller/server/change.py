"""The one change path. Every change the server makes (tenant create, apply and delete,
port add and delete, a port's migration, a host's registration or join, ports rebound
to the ofports OVS gave their interfaces) is a `Change`
handed to `run`, which takes it through the same five steps under the core's mutex:

    check    raises ApiError when the change cannot be made; nothing has changed yet
    commit   the store first, then memory (allocation, compiled flows, desired state);
             returns the hosts whose flows changed
    attach   workloads plugged, moved or unplugged through the driver
    rollout  the changed hosts reconciled: all at once, or in a migration's order
    report   the answer the API gives

A new kind of change subclasses `Change` and overrides the steps it does differently;
it never writes its own sequence.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import logging
from contextlib import nullcontext

from topology import schema
from topology.model import Tenant
from controller.compile.compiler import compile_tenant
from controller.compile.desired import tenant_delta
from controller.server.errors import ApiError, unknown_host
from controller.server.announce import announce
from controller.server.peers import assign_peer_port, check_host_address
from controller.spaces.names import pending_name
from controller.server.entry import TenantEntry
from controller.state.store import HostRecord
from controller.switch.reconciler import HostState

LOG = logging.getLogger("nvctl.change")
UPLINK_MTU = (1280, 65535)  # what a host may say its uplink carries, in bytes (IPv6's minimum up)


def run(core, change: "Change", progress=None, lock=None) -> dict:
    """Make one change: check -> commit -> attach -> rollout -> report, serialized by
    `core.mutex`: the caller holds it, or passes it as `lock` for run to take. With
    `lock`, a change whose rollout only talks to switches (`rollout_unlocked`) is rolled
    out after the lock is released, so other changes need not wait for every switch.
    `progress` (controller.server.progress.Change) counts workloads plugged and hosts
    synced for `nvctl` to show."""
    with lock if lock is not None else nullcontext():
        if not core.mutex.locked():
            raise RuntimeError("a change runs under the core's mutex")
        change.check(core)
        changed = change.commit(core)
        attach_errors = change.attach(core, progress)
        if lock is None or not change.rollout_unlocked:
            return change.report(core, change.rollout(core, changed, progress), attach_errors)
    return change.report(core, change.rollout(core, changed, progress), attach_errors)


def result(core, name: str, action: str, results: dict, attach_errors: list) -> dict:
    """What the API answers for a change: per host, flow-mods sent or why none were."""
    return {"tenant": name, "action": action,
            "hosts": {h: ("not connected" if n is None and core.state[h].session is None
                          else "left to the next leader (this controller stepped down)"
                          if n is None and not core.leading()
                          else core.state[h].error if n is None else f"{n} flow-mods")
                      for h, n in sorted(results.items())},
            "attach_errors": attach_errors}


class Change:
    """One change; subclasses override the steps they do differently."""
    name = ""
    action = ""
    rollout_unlocked = False  # its rollout may run after the core's mutex is released

    def check(self, core) -> None:
        pass

    def commit(self, core) -> set[str]:
        raise NotImplementedError

    def attach(self, core, progress) -> list[str]:
        return []

    def rollout(self, core, changed: set[str], progress) -> dict:
        return core.reconcile_many(changed, change=progress)

    def report(self, core, results: dict, attach_errors: list) -> dict:
        return result(core, self.name, self.action, results, attach_errors)


def with_pending(old: Tenant, new: Tenant) -> Tenant:
    """`new`, its ports still pending where they were in `old` (a live migration under
    way is not undone by an unrelated change: an apply, a port added, a rebinding), as
    long as the port stays on the same host."""
    pending = {p.name: p for p in old.ports if p.pending}
    if not pending:
        return new
    ports = tuple(dataclasses.replace(p, pending=pending[p.name].pending)
                  if p.name in pending and p.pending is None and p.host == pending[p.name].host else p
                  for p in new.ports)
    return dataclasses.replace(new, ports=ports) if ports != new.ports else new


def with_health(old: Tenant, new: Tenant) -> Tenant:
    """`new`, each load balancer still without the backends health checks found down in
    `old` (controller.server.health): health is not intent, so a change of the spec
    keeps it, for the backends and health checks the new spec still has."""
    was = {lb.name: lb.down for lb in old.load_balancers if lb.down}
    if not was:
        return new
    lbs = tuple(dataclasses.replace(lb, down=tuple(b for b in was[lb.name] if b in lb.backends))
                if lb.name in was and lb.health_check is not None and not lb.down else lb
                for lb in new.load_balancers)
    return dataclasses.replace(new, load_balancers=lbs) if lbs != new.load_balancers else new


class TenantChange(Change):
    """A tenant's new intent over its old one (None: the tenant is deleted): create,
    apply, port add and port delete."""

    keeps_pending = True  # a VM's pending binding (a live migration under way) outlives the change
    keeps_health = True  # so do the backends its load balancers' health checks found down

    def __init__(self, old: TenantEntry | None, new: Tenant | None, action: str, name: str | None = None,
                 layers: dict | None = None):
        """`layers`: the tenant's layer record to store with it (None: the old one's,
        controller.server.owners)."""
        if self.keeps_pending and old is not None and new is not None:
            new = with_pending(old.tenant, new)
        if self.keeps_health and old is not None and new is not None:
            new = with_health(old.tenant, new)
        self.old, self.new, self.action, self.layers = old, new, action, layers
        self.name = name or (new.name if new is not None else old.tenant.name)
        self.entry: TenantEntry | None = None
        self.delta: dict = {}  # host -> HostDelta, once committed
        self.proved: dict | None = None  # verify before install's entry (controller.server.guard)

    def check(self, core) -> None:
        if self.new is not None:
            core._check_mtus(self.new)

    def commit(self, core) -> set[str]:
        old = self.old
        if self.new is None:
            core.store.delete_tenant(self.name, old.revision)
            core._replace_entry(self.name, None)
            self.delta = tenant_delta(old.flows, {})
            return core.desired.apply_delta(self.delta)
        self.entry, changed, self.delta = core._commit(self.new, old, self.layers, self.action)
        self.proved = core.proved
        return changed

    def attach(self, core, progress) -> list[str]:
        return core._reattach(self.name, self.old, self.entry, progress)

    def rollout(self, core, changed: set[str], progress) -> dict:
        out = core.reconcile_many(changed, self.delta, progress)
        self.announce(core)
        return out

    def announce(self, core) -> None:
        """Floating IPs now on another host: that host says so (controller.server.announce),
        and BGP's announcements follow (controller.server.routes)."""
        core.routes_changed()
        announce(core, self.old.tenant if self.old is not None else None,
                 self.entry.tenant if self.entry is not None else None)

    def report(self, core, results: dict, attach_errors: list) -> dict:
        out = super().report(core, results, attach_errors)
        if self.proved is not None:  # verify before install: how long, and what it noted
            out["verified"] = {"ms": self.proved["ms"], "result": self.proved["result"],
                               "warnings": self.proved["warnings"],
                               **({"note": self.proved["note"]} if self.proved.get("note") else {})}
        return out


class HealthChange(TenantChange):
    """Load-balancer backends found down or up again by their health checks
    (controller.server.health): `down` is {load balancer: ((port, l4 port), ...)} for
    the whole tenant. Operational state, not intent: the tenant is compiled and rolled
    out as for any change (only its flows that differ are sent: the load balancers'
    select groups), and nothing is stored: its spec and revision stay."""

    keeps_health = False

    def __init__(self, old: TenantEntry, down: dict):
        t = old.tenant
        lbs = tuple(dataclasses.replace(lb, down=tuple(down.get(lb.name, ()))) for lb in t.load_balancers)
        words = []
        for was, now in zip(t.load_balancers, lbs):
            gone = [f"{p}:{n}" for p, n in now.down if (p, n) not in was.down]
            back = [f"{p}:{n}" for p, n in was.down if (p, n) not in now.down]
            if gone:
                words.append(f"{was.name}: {', '.join(gone)} down")
            if back:
                words.append(f"{was.name}: {', '.join(back)} up")
        super().__init__(old, dataclasses.replace(t, load_balancers=lbs),
                         "health: " + ("; ".join(words) or "unchanged"))

    def commit(self, core) -> set[str]:
        self.entry, changed, self.delta = core._commit(self.new, self.old, None, self.action, stored=False)
        self.proved = core.proved
        return changed

    def attach(self, core, progress) -> list[str]:
        return []  # no workload changes


class RoutesChange(TenantChange):
    """The routes a tenant's routers learn from the provider changed (controller.server.
    routes): the tenant is compiled again with them (IntentMixin._commit takes them in for
    every change) and rolled out; nothing is stored: learned routes are state, not intent."""

    def __init__(self, old: TenantEntry):
        super().__init__(old, old.tenant, "learned routes")

    def commit(self, core) -> set[str]:
        self.entry, changed, self.delta = core._commit(self.new, self.old, None, self.action, stored=False)
        self.proved = core.proved
        new = {r.name: r.learned for r in self.entry.tenant.routers}
        words = []
        for r in self.old.tenant.routers:
            gone = [str(x.prefix) for x in r.learned if x not in new.get(r.name, ())]
            came = [str(x.prefix) for x in new.get(r.name, ()) if x not in r.learned]
            if came:
                words.append(f"{r.name}: learned {', '.join(came)}")
            if gone:
                words.append(f"{r.name}: withdrawn {', '.join(gone)}")
        self.action = "routes: " + ("; ".join(words) or "unchanged")
        return changed

    def attach(self, core, progress) -> list[str]:
        return []  # no workload changes


class Migration(TenantChange):
    """A port moved to another host, make-before-break: the destination gets the port's
    flows and a second attachment of the workload; then every other host switches to
    the new PA in one bundle each, then the source; only then does the old attachment
    go. While the hosts switch, both attachments deliver."""

    def __init__(self, old: TenantEntry, port: str, to: str):
        self.port, self.src, self.dst = port, old.tenant.port(port).host, to
        t = dataclasses.replace(old.tenant, ports=tuple(
            dataclasses.replace(q, host=to, pending=None) if q.name == port else q for q in old.tenant.ports))
        super().__init__(old, t, f"migrated {port} {self.src} -> {to}")
        self.timings: dict[str, float] = {}

    def check(self, core) -> None:
        if self.dst not in core.hosts:
            raise unknown_host(self.dst, core.hosts)
        if self.dst == self.src:
            raise ApiError(f"{self.name}/{self.port} is already on {self.dst}")

    def attach(self, core, progress) -> list[str]:
        return []  # the workload moves during the rollout, between its steps

    def rollout(self, core, changed: set[str], progress) -> dict:
        old, new, to, src = self.old, self.entry, self.dst, self.src
        old_att = core._attachments(self.name, old).get(self.port)  # None: not ours to plug
        new_att = core._attachments(self.name, new).get(self.port)
        t0 = core.clock()
        first = core.reconcile_many({to} & changed, self.delta)  # 1. the destination's flows
        if new_att is not None:
            core.driver.prepare_move(new_att)  # 2. and the workload attached there too
        t1 = core.clock()
        rest = core.reconcile_many(changed - {to, src}, self.delta)  # 3. every other host: the new PA
        t2 = core.clock()
        rest.update(core.reconcile_many({src} & changed, self.delta))  # 4. the source: local traffic too
        t3 = core.clock()
        if old_att is not None:
            core.driver.finish_move(old_att)  # 5. break: the old attachment goes
        t4 = core.clock()
        ms = lambda a, b: round((b - a) * 1000, 1)  # noqa: E731
        self.timings = {"destination_ready": ms(t0, t1), "other_hosts_switched": ms(t1, t2),
                        "source_switched": ms(t2, t3), "old_attachment_removed": ms(t3, t4),
                        "switch_window": ms(t1, t3)}
        self.announce(core)
        return {**first, **rest}

    def report(self, core, results: dict, attach_errors: list) -> dict:
        out = super().report(core, results, attach_errors)
        out.update(port=self.port, src=self.src, dst=self.dst, ofport=self.entry.alloc.ofport[self.port],
                   timings_ms=self.timings)
        return out


class PendingBinding(TenantChange):
    """A VM's port bound a second time, pending on the host it migrates to (`to`), or
    that binding dropped (`to=None`: the migration failed or was cancelled). Pending,
    the port's traffic goes to both hosts and the destination passes only the guest's
    announcement, to the controller (controller.layers.activation)."""

    keeps_pending = False

    def __init__(self, old: TenantEntry, port: str, to: str | None):
        self.port, self.dst = port, to
        p = old.tenant.port(port)
        self.src = p.host
        t = dataclasses.replace(old.tenant, ports=tuple(
            dataclasses.replace(q, pending=to) if q.name == port else q for q in old.tenant.ports))
        super().__init__(old, t, f"{port} pending on {to} (migrating from {p.host})" if to
                         else f"{port}: pending binding on {p.pending} dropped; it stays on {p.host}")

    def check(self, core) -> None:
        super().check(core)
        if self.dst is not None and self.dst not in core.hosts:
            raise unknown_host(self.dst, core.hosts, "to")
        if self.dst == self.src:
            raise ApiError(f"{self.name}/{self.port} is already on {self.dst}", [("to", "the port's own host")])

    def attach(self, core, progress) -> list[str]:
        return []  # the hypervisor makes (or removes) the destination's interface

    def report(self, core, results: dict, attach_errors: list) -> dict:
        out = super().report(core, results, attach_errors)
        if self.dst is not None:
            out.update(port=self.port, src=self.src, pending=self.dst,
                       pending_ofport=self.entry.alloc.ofport[pending_name(self.port)])
        return out


class Activation(Migration):
    """A pending binding taken up: the guest announced itself from the destination
    (or its migration completed without a word). The port's placement moves there, the
    destination's flows first, as any migration's; the interfaces are the hypervisor's."""

    def __init__(self, old: TenantEntry, port: str, by: str, seen_at: float | None):
        super().__init__(old, port, old.tenant.port(port).pending)
        self.action = f"activated {port} on {self.dst} ({by})"
        self.by, self.seen_at = by, seen_at

    def check(self, core) -> None:
        TenantChange.check(self, core)

    def rollout(self, core, changed: set[str], progress) -> dict:
        start = core.clock()
        out = super().rollout(core, changed, progress)
        if self.seen_at is not None:  # the network's part: from the announcement to the destination delivering
            self.timings["announcement_to_destination_ready"] = round(
                (start - self.seen_at) * 1000 + self.timings["destination_ready"], 1)
        return out


class HostRegistration(Change):
    """A host (its name, provider address, datapath id and facts) registered or updated:
    every tenant is compiled again for the new placement, a switch that connected before
    its host was known is taken in, and every host is reconciled."""

    rollout_unlocked = True  # switches only: a join does not hold every other change back

    def __init__(self, rec: HostRecord):
        self.rec, self.name, self.action = rec, rec.name, "registered"
        self.waiting = None

    def check(self, core) -> None:
        rec = self.rec
        try:
            ipaddress.IPv4Address(rec.pa)
        except ValueError:
            raise ApiError(f"host {rec.name}: provider address {rec.pa!r} is not IPv4") from None
        for other in core.hosts.values():
            if other.name != rec.name and (other.pa == rec.pa or other.dpid == rec.dpid):
                raise ApiError(f"host {rec.name}: PA {rec.pa} or dpid {rec.dpid:#x} already used by {other.name}")
        mtu = rec.info.get("mtu")
        low, high = UPLINK_MTU
        if mtu is not None and not (isinstance(mtu, int) and not isinstance(mtu, bool) and low <= mtu <= high):
            raise ApiError(f"host {rec.name}: uplink MTU {mtu!r} is not a number of bytes ({low}..{high})",
                           [("info.mtu", f"an integer from {low} to {high}")])
        check_host_address(rec.info, rec.name, core.hosts, core.used.addresses)
        try:  # a possible gateway: the number of the BFD port toward it, on every other host
            self.rec = HostRecord(rec.name, rec.pa, rec.dpid, assign_peer_port(rec.info, rec.name, core.hosts))
        except ValueError as e:
            raise ApiError(f"host {rec.name}: {e}", [("info.external", str(e))]) from None

    def commit(self, core) -> set[str]:
        core.store.put_host(self.rec)
        core._set_host(self.rec)
        core.state.setdefault(self.rec.name, HostState())
        core._recompile_all()
        self.waiting = core.unclaimed.pop(self.rec.dpid, None)
        return set(core.hosts)

    def rollout(self, core, changed: set[str], progress) -> dict:
        if self.waiting is not None and self.waiting.alive:
            core.switch_connected(self.waiting)
        out = core.reconcile_many(changed)
        core.ensure_peer_tunnels(changed)  # a new possible gateway: every host watches it
        core.routes_changed()  # a new provider-network address: BGP's next hops may change
        return out

    def report(self, core, results: dict, attach_errors: list) -> dict:
        return {"host": self.name}


class Rebinding(Change):
    """Ports of one host whose interfaces OVS numbered otherwise than the allocation
    said (controller.server.bindings): each port's allocated ofport becomes the one its
    interface has, and a port that held that number in the allocation (of any tenant:
    ofports are unique per host) moves to a free one. Only that host's flows change (an
    ofport appears only in its own host's flows: classify, delivery, meters); the
    allocation is stored like any other, so a restart compiles the same flows.

    `moves` is {tenant: {port: ofport}}. Tenants are written one at a time, each when
    the numbers it takes are free of other tenants' ports, so no number is ever held
    twice on the host, in the store or in memory (the numbers in use are a set per
    host); when tenants wait on each other (two ports swapping numbers), one port steps
    aside to a free number first."""

    def __init__(self, host: str, moves: dict[str, dict[str, int]]):
        self.host, self.moves = host, moves
        self.name, self.action = host, "rebound"
        self.before: dict[str, dict[str, int]] = {}

    def check(self, core) -> None:
        if self.host not in core.hosts:
            raise ApiError(f"no host {self.host!r}")
        for name, ports in self.moves.items():
            if name not in core.tenants:
                raise ApiError(f"no tenant {name!r}")
            for port in ports:
                if core._port(name, port)[1].host != self.host:
                    raise ApiError(f"{name}/{port} is not on {self.host}")
        numbers: dict[int, str] = {}
        for name, e in core.tenants.items():
            for p in e.tenant.ports:
                if p.host == self.host:
                    n = self.moves.get(name, {}).get(p.name, e.alloc.ofport[p.name])
                    if n in numbers:
                        raise ApiError(f"host {self.host}: ofport {n} would be both {numbers[n]}'s and "
                                       f"{name}/{p.name}'s; nothing was changed")
                    numbers[n] = f"{name}/{p.name}"

    def commit(self, core) -> set[str]:
        h = self.host
        pending = {name: dict(ports) for name, ports in self.moves.items()}
        self.before = {name: {port: core.tenants[name].alloc.ofport[port] for port in ports}
                       for name, ports in pending.items()}
        changed: set[str] = set()
        while pending:
            holder = {e.alloc.ofport[p.name]: (name, p.name)
                      for name, e in core.tenants.items() for p in e.tenant.ports if p.host == h}
            ready = next((name for name in sorted(pending)
                          if all(holder.get(n, (name,))[0] == name for n in pending[name].values())), None)
            if ready is not None:
                changed |= self._write(core, ready, pending.pop(ready))
                continue
            # every tenant waits on another's number: one port steps aside to a number no
            # port has and none is to take (its own move, still pending, follows)
            name = min(pending)
            blocker, port = holder[min(n for n in pending[name].values() if holder.get(n, (name,))[0] != name)]
            taken = set(holder) | {n for ports in pending.values() for n in ports.values()}
            aside = min(set(range(min(taken), max(taken) + 2)) - taken)
            changed |= self._write(core, blocker, {port: aside})
        return changed

    def _write(self, core, name: str, ports: dict[str, int]) -> set[str]:
        """One tenant's ports to new numbers: stored, then in memory; the host's flows only."""
        h, old = self.host, core.tenants[name]
        alloc = dataclasses.replace(old.alloc, ofport={**old.alloc.ofport, **ports})
        mine = compile_tenant(old.tenant, alloc, core._placement()).get(h, [])
        rev = core.store.put_tenant(name, schema.to_doc(old.tenant), alloc.to_json(), old.revision, old.layers)
        core._replace_entry(name, TenantEntry(old.tenant, alloc, rev, {**old.flows, h: mine}, old.layers))
        return core.desired.swap({h: old.flows.get(h, [])}, {h: mine})

    def attach(self, core, progress) -> list[str]:
        """The workloads stay as they are (their interfaces are where the flows now
        point); the driver only keeps its hints in step."""
        errors = []
        for name, ports in self.moves.items():
            atts = core._attachments(name, core.tenants[name])
            for port in ports:
                a = atts.get(port)
                if a is None:
                    continue
                try:
                    core.driver.rebind(a)
                except Exception as e:  # noqa: BLE001 - reported with the change
                    errors.append(f"rebind {name}/{port} on {self.host}: {e}")
        return errors

    def rollout(self, core, changed: set[str], progress) -> dict:
        return core.reconcile_many(changed)

    def report(self, core, results: dict, attach_errors: list) -> dict:
        out = result(core, self.name, self.action, results, attach_errors)
        out.pop("tenant")
        out.update(host=self.host, moved={f"{name}/{port}": {"from": self.before[name][port], "to": n}
                                          for name, ports in sorted(self.moves.items())
                                          for port, n in sorted(ports.items())})
        return out
