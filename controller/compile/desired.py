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

    def swap(self, old: Mapping[str, Iterable[Flow]], new: Mapping[str, Iterable[Flow]]) -> set[str]:
        """Replace one tenant's flows (check `conflicts` first); returns the hosts whose
        desired flows changed."""
        changed = set()
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
