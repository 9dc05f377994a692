"""Every host's desired flows as a value, indexed the way OVS indexes flows.

OVS keeps at most one flow per identity (table, priority, match): an ADD of a second
replaces the first. So the desired state of a host is a map identity -> Flow, and two
different flows with one identity are not "both desired"; they are a conflict, which
is refused before anything is stored or installed (OVN's ofctrl resolves the same case
by logging "updating installed (conflict)"; we refuse it, naming both rules and both
tenants). The cookie is the link back to intent, never the key.

Pure: no I/O, no clock, no locks (the core serializes changes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from dataplane.match_action import Flow, groups_of, meters_of


@dataclass(frozen=True)
class Conflict:
    """Two different flows with one identity on one host."""

    host: str
    held: Flow  # the flow that holds the identity (another tenant's, or the same compile's)
    new: Flow  # the flow that would take it

    def describe(self, tenant_names: Mapping[int, str]) -> str:
        def who(f: Flow) -> str:
            return f"tenant {tenant_names.get(f.tenant_id, f.tenant_id)}" if f.tenant_id else "the host's own flows"
        return (f"on {self.host}, table {self.new.table.name} priority {self.new.priority} "
                f"match {self.new.match.ofctl() or '(any)'}: {who(self.new)} rule {self.new.rule!r} "
                f"would replace {who(self.held)} rule {self.held.rule!r}")


class FlowConflictError(ValueError):
    def __init__(self, conflicts: list[Conflict]):
        super().__init__(f"{len(conflicts)} flow identity conflict(s)")
        self.conflicts = conflicts


def index(host: str, flows: Iterable[Flow], into: dict | None = None,
          conflicts: list | None = None) -> dict:
    """identity -> Flow for one host's flows. The same flow twice is one flow; two
    different flows with one identity are recorded in `conflicts` (or raised)."""
    out = {} if into is None else into
    found = [] if conflicts is None else conflicts
    for f in flows:
        i = f.identity
        held = out.get(i)
        if held is None:
            out[i] = f
        elif held != f:
            found.append(Conflict(host, held, f))
    if conflicts is None and found:
        raise FlowConflictError(found)
    return out


class DesiredState:
    """host -> {identity: Flow}. Changed only through `build` and `swap`."""

    def __init__(self):
        self.hosts: dict[str, dict[tuple, Flow]] = {}
        self.generation = 0  # bumped by every apply_delta and swap: who holds a view of it knows it moved

    @staticmethod
    def build(infra: Mapping[str, Iterable[Flow]],
              tenants: Iterable[Mapping[str, Iterable[Flow]]]) -> tuple["DesiredState", list[Conflict]]:
        """The state of every host from the hosts' own flows and each tenant's flows."""
        d = DesiredState()
        conflicts: list[Conflict] = []
        for h, fl in infra.items():
            d.hosts[h] = index(h, fl, {}, conflicts)
        for per_host in tenants:
            for h, fl in per_host.items():
                index(h, fl, d.hosts.setdefault(h, {}), conflicts)
        return d, conflicts

    def get(self, host: str, default=None):
        return self.hosts.get(host, default)

    def __getitem__(self, host: str) -> dict:
        return self.hosts[host]

    def __contains__(self, host: str) -> bool:
        return host in self.hosts

    def __iter__(self):
        return iter(self.hosts)

    def items(self):
        return self.hosts.items()

    def values(self):
        return self.hosts.values()

    def conflicts(self, old: Mapping[str, Iterable[Flow]], new: Mapping[str, Iterable[Flow]]) -> list[Conflict]:
        """What replacing one tenant's flows `old` by `new` would clash with: an identity
        held by anyone else, or two different new flows with one identity."""
        found: list[Conflict] = []
        for h, fl in new.items():
            held = self.hosts.get(h, {})
            mine = {f.identity for f in old.get(h, ())}
            seen: dict[tuple, Flow] = {}
            for f in fl:
                i = f.identity
                prev = seen.get(i)
                if prev is not None:
                    if prev != f:
                        found.append(Conflict(h, prev, f))
                    continue
                seen[i] = f
                other = held.get(i)
                if other is not None and i not in mine:
                    found.append(Conflict(h, other, f))
        return found

    def conflicts_in(self, delta: Mapping[str, "HostDelta"]) -> list[Conflict]:
        """`conflicts` over a tenant's delta (`tenant_delta`): only the flows it adds are
        looked at. A flow it keeps held its identity alone before (the tenant's old flows
        were checked when they came in), so a clash needs an added flow: with another
        added one, with one it keeps, or with anyone else's."""
        found: list[Conflict] = []
        for h, d in delta.items():
            if not d.added:
                continue
            held = self.hosts.get(h, {})
            seen: dict[tuple, Flow] = {}
            mine = None
            for f in d.added:
                i = f.identity
                prev = seen.get(i)
                if prev is not None:
                    if prev != f:
                        found.append(Conflict(h, prev, f))
                    continue
                seen[i] = f
                other = held.get(i)
                if other is None:
                    continue
                c = other.cookie
                if c in d.old:  # the tenant's own (the cookie holds its id): replaced if it goes, a clash if it stays
                    if c in d.new and other != f:
                        found.append(Conflict(h, other, f))
                    continue
                if mine is None:
                    mine = {g.identity for g in d.old.values()}
                if i not in mine:
                    found.append(Conflict(h, other, f))
        return found

    def apply_delta(self, delta: Mapping[str, "HostDelta"]) -> set[str]:
        """`swap` by a tenant's delta (check `conflicts_in` first): only the flows that
        come and go are touched. Returns the hosts whose desired flows changed."""
        changed = set()
        self.generation += 1
        for h, dl in delta.items():
            d = self.hosts.setdefault(h, {})
            for f in dl.removed:
                if d.get(f.identity) == f:
                    del d[f.identity]
            for f in dl.added:
                d[f.identity] = f
            for f in dl.renamed:  # the same flow, made by a rule named otherwise: the new name
                if d.get(f.identity) == f:
                    d[f.identity] = f
            if dl.extras_changed:  # a meter's band or a group's buckets: the new flows carry them
                for f in dl.flows:
                    d[f.identity] = f
            if dl.removed or dl.added or dl.extras_changed:
                changed.add(h)
        return changed

    def swap(self, old: Mapping[str, Iterable[Flow]], new: Mapping[str, Iterable[Flow]]) -> set[str]:
        """Replace one tenant's flows (check `conflicts` first); returns the hosts whose
        desired flows changed."""
        changed = set()
        self.generation += 1
        for h in set(old) | set(new):
            before = old.get(h, ())
            after = new.get(h, ())
            d = self.hosts.setdefault(h, {})
            for f in before:
                if d.get(f.identity) == f:
                    del d[f.identity]
            for f in after:
                d[f.identity] = f
            if set(before) != set(after) or _extras(before) != _extras(after):
                changed.add(h)
        return changed


def _extras(flows) -> tuple:
    """What a flow's text does not show: the bands of its meters, the buckets of its
    groups. A change to only these changes the host all the same."""
    return (meters_of(flows), {gid: g.buckets_text() for gid, g in groups_of(flows).items()})


class HostDelta:
    """One tenant's flows on one host, before and after a change: by cookie (a compiled
    flow's cookie hashes its text, so equal cookies are equal flows), the flows that go,
    the flows that come, and whether the meters or groups they need changed (a band or
    a bucket is not in a flow's text)."""

    __slots__ = ("old", "new", "removed", "added", "renamed", "old_extras", "new_extras", "flows")

    def __init__(self, old: Iterable[Flow], new: Iterable[Flow], old_extras: tuple | None = None):
        ob = self.old = {f.cookie: f for f in old}
        nb: dict = {}
        kept = []
        for f in new:
            o = ob.get(f.cookie)
            kept.append(o if o is not None and o.rule == f.rule and o.unit == f.unit and o.where == f.where else f)
            nb[f.cookie] = f
        added, renamed = [], []
        for c, f in nb.items():
            o = ob.get(c)
            if o is None:
                added.append(f)
            elif o.rule != f.rule or o.unit != f.unit or o.where != f.where:  # kept, but as the new compile made it
                renamed.append(f)
        self.new = nb
        self.removed = [f for c, f in ob.items() if c not in nb]
        self.added, self.renamed = added, renamed
        self.old_extras = extras(ob.values()) if old_extras is None else old_extras
        self.new_extras = extras(nb.values())
        # the tenant's flows on the host from now on (every object the compile made, a
        # flow twice as twice): the objects already held where the flow stays (the
        # desired state and the switch's record share them), unless a meter's band or a
        # group's buckets moved (then the new objects carry them)
        self.flows = kept if self.old_extras == self.new_extras else list(new)

    @property
    def extras_changed(self) -> bool:
        return self.old_extras != self.new_extras

    def __repr__(self):
        return f"HostDelta(-{len(self.removed)} +{len(self.added)})"


def tenant_delta(old: Mapping[str, Iterable[Flow]], new: Mapping[str, Iterable[Flow]],
                 old_extras: Mapping[str, tuple] | None = None) -> dict[str, HostDelta]:
    """host -> HostDelta of one tenant's flows `old` and `new` (host -> flows);
    `old_extras`: host -> extras(old flows there), where known."""
    known = old_extras or {}
    return {h: HostDelta(old.get(h, ()), new.get(h, ()), known.get(h)) for h in set(old) | set(new)}


def extras(flows: Iterable[Flow]) -> tuple:
    """(meters, {group id: bucket text}) these flows need: `_extras` over only the flows
    with a meter, a log or a group (Flow.extras)."""
    some = [f for f in flows if f.extras]
    return _extras(some) if some else ({}, {})
