"""Bring a switch to a host's desired state, by flow identity.

Written against `Switch`, a small protocol: the os-ken adapter's `Session` implements
it for a real br-int, and `controller/switch/fake.py` implements it with OpenFlow's own
semantics (an ADD replaces the flow with the same table, priority and match) for unit
tests.

The switch's flows are read back as values (match and actions, not just cookies) and
kept per host, keyed by identity. A reconcile deletes (strictly, by identity) what is
installed but not desired, and ADDs every desired flow that is missing or differs in
actions or cookie: an ADD over an existing identity modifies it in place, so its
counters survive. All of it goes in one atomic, ordered bundle. Meters and groups are
put before the flows that use them and removed after.

A host is "in sync" only when what was last read from (and since written to) the
switch equals the desired flows, meters and groups exactly. `audit` re-reads the
switch, so drift made behind the controller's back is seen and corrected.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Protocol

from dataplane.match_action import Flow, Group, groups_of, meters_of

LOG = logging.getLogger("nvctl.reconciler")


class Switch(Protocol):
    """What the reconciler needs of one connected br-int."""

    dpid: int
    alive: bool
    # True when the calls below finish in memory, with nothing to wait for (the fake
    # switch): several hosts are then reconciled one after another on the caller's
    # thread; a real session waits on each switch's barrier, so those waits overlap
    inline: bool

    def flows(self) -> list[Flow]:
        """Every flow on the switch, as values (cookies as the switch holds them)."""

    def push(self, delete: list[Flow], add: list[Flow], reset: frozenset = frozenset()) -> int:
        """One atomic ordered bundle: strict deletes by identity, then ADDs (which
        replace a flow with the same identity, keeping its counters unless its identity
        is in `reset`). Raises if the switch refused any."""

    def meters(self) -> dict[int, tuple]: ...

    def set_meters(self, put: dict, existing: set, delete: list) -> int: ...

    def groups(self) -> dict[int, bytes]: ...

    def group_buckets(self) -> dict[int, list[tuple]]:
        """For `nvctl verify`: each group's buckets as action tuples, as installed."""

    def group_signature(self, g: Group) -> bytes: ...

    def set_groups(self, put: dict, existing: set, delete: list) -> int: ...

    def ports(self) -> dict[int, str]: ...


@dataclass
class HostState:
    session: Switch | None = None
    installed: dict | None = None  # identity -> Flow on the switch; None: not read since connect
    meters: dict | None = None  # meter id -> band on the switch; None: not read since connect
    groups: dict | None = None  # group id -> bucket signature on the switch
    lock: threading.Lock = field(default_factory=threading.Lock)
    flow_mods: int = 0  # sent since the controller started
    bundles: int = 0
    syncs: int = 0
    last_sync_mods: int | None = None  # flow-mods the last (re)connect sync needed
    synced_session: object | None = None  # the session whose connect-time sync has finished
    drift_corrected: int = 0  # flow-mods audits needed to undo changes made behind our back
    error: str | None = None

    def forget(self) -> None:
        """What we know of the switch is no longer to be trusted: read it next time."""
        self.installed = self.meters = self.groups = None


def read_switch(st: HostState) -> None:
    s = st.session
    installed: dict = {}
    for f in s.flows():
        installed[f.identity] = f
    st.installed = installed
    st.meters = s.meters()
    st.groups = s.groups()


def plan(installed: dict, desired: dict, delta=None) -> tuple[list[Flow], list[Flow]]:
    """(strict deletes, adds) that take `installed` to `desired` (both identity -> Flow).
    With `delta` (controller.compile.desired.HostDelta: the flows one tenant's change
    takes away and brings), only those identities are compared: a change costs what it
    changed, not the size of the host or of the tenant."""
    if delta is None:
        dels = [f for i, f in installed.items() if i not in desired]
        adds = [f for i, f in desired.items() if installed.get(i) != f]
    else:
        dels, adds, seen = [], [], set()
        for f in delta.removed:
            i = f.identity
            if i not in desired and i in installed and i not in seen:
                seen.add(i)
                dels.append(installed[i])
        for f in delta.added:
            i = f.identity
            want = desired.get(i)
            if want is not None and installed.get(i) != want and i not in seen:
                seen.add(i)
                adds.append(want)
    return dels, adds  # in the desired state's own (compile) order: deterministic, and no sort


def reconcile(st: HostState, desired: dict, delta=None, found: dict | None = None) -> int | None:
    """Bring one host's switch to `desired` (identity -> Flow). Returns the OpenFlow
    messages sent (flow-, meter- and group-mods), or None when the host is not connected
    or refused the change (see st.error). `delta` (a HostDelta): only what one tenant's
    change took away and brought is compared. With `found`, the differences the plan saw
    are counted into it (missing, unexpected, changed flows). Call with st.lock held."""
    s = st.session
    if s is None:
        return None
    try:
        if st.installed is None:
            read_switch(st)
            delta = None
        if delta is None:  # a full sync runs outside the core's mutex: a snapshot, as intent may change
            desired = dict(desired)
        dels, adds = plan(st.installed, desired, delta)
        if found is not None:
            changed = sum(1 for f in adds if f.identity in st.installed)
            found.update(missing=len(adds) - changed, unexpected=len(dels), changed=changed)
        if delta is None:
            want_meters = meters_of(desired.values())
            want_groups = groups_of(desired.values())
            old_meters, old_groups = set(st.meters), set(st.groups)
        else:  # only this tenant's meters (per port) and groups (per LB) moved
            (old_m, old_g), (want_meters, new_g) = delta.old_extras, delta.new_extras
            want_groups = groups_of(f for f in delta.new.values() if f.extras) \
                if new_g else {}
            old_meters = set(old_m) & set(st.meters)
            old_groups = set(old_g) & set(st.groups)
        put = {m: b for m, b in want_meters.items() if st.meters.get(m) != b}
        n = s.set_meters(put, set(st.meters), []) if put else 0  # meters and groups before the flows using them
        st.meters.update(put)
        sigs = {gid: s.group_signature(g) for gid, g in want_groups.items()}
        gput = {gid: g for gid, g in want_groups.items() if st.groups.get(gid) != sigs[gid]}
        n += s.set_groups(gput, set(st.groups), []) if gput else 0
        st.groups.update({gid: sigs[gid] for gid in gput})
        # An ADD over an installed flow of the same text keeps its counters; if only its
        # cookie differs, it now counts for someone else (a new port with the ofport and
        # key of one removed): start it from zero.
        reset = frozenset(f.identity for f in adds if (old := st.installed.get(f.identity)) is not None
                          and old.cookie != f.cookie and old.body == f.body)
        n += s.push(dels, adds, reset) if reset else s.push(dels, adds)
        if delta is None:
            # the switch now holds exactly the snapshot: keep the desired objects, not the
            # equal ones read back, so that comparing with the desired state later (in_sync,
            # asked for every host.list) is by identity, not by rendering each flow's text
            st.installed = desired
        else:
            for f in dels:
                st.installed.pop(f.identity, None)
            for f in adds:
                st.installed[f.identity] = f
        gone = sorted(old_meters - set(want_meters))
        n += s.set_meters({}, set(st.meters), gone) if gone else 0  # and after the flows that used them
        for m in gone:
            del st.meters[m]
        ggone = sorted(old_groups - set(want_groups))
        n += s.set_groups({}, set(st.groups), ggone) if ggone else 0
        for g in ggone:
            del st.groups[g]
        st.flow_mods += n
        st.bundles += 1 if n else 0
        st.error = None
        return n
    except Exception as e:  # the switch refused, or went away: re-read next time
        st.forget()
        st.error = str(e)
        LOG.error("switch %s: %s", getattr(s, "dpid", "?"), e)
        return None


def in_sync(st: HostState, desired: dict) -> bool:
    """The switch (as last read, plus what we wrote since) equals `desired` exactly:
    every flow by identity, actions and cookie; meters; groups by their buckets."""
    if st.session is None or st.synced_session is not st.session or st.error is not None:
        return False
    if st.installed is None or st.meters is None or st.groups is None:
        return False
    if st.installed != desired:
        return False
    if st.meters != meters_of(desired.values()):
        return False
    want_groups = groups_of(desired.values())
    if set(st.groups) != set(want_groups):
        return False
    return all(st.groups[gid] == st.session.group_signature(g) for gid, g in want_groups.items())


def differences(installed: dict, desired: dict) -> dict:
    """Counts for a person: desired flows missing on the switch, flows there that are not
    desired, and flows whose actions or cookie differ."""
    missing = sum(1 for i in desired if i not in installed)
    unexpected = sum(1 for i in installed if i not in desired)
    changed = sum(1 for i, f in desired.items() if i in installed and installed[i] != f)
    return {"missing": missing, "unexpected": unexpected, "changed": changed}


def audit(st: HostState, desired: dict) -> tuple[int | None, dict]:
    """Re-read the switch, report how it differed from `desired`, and correct it.
    Returns (messages sent or None, differences found). Call with st.lock held."""
    if st.session is None:
        return None, {}
    try:
        read_switch(st)
    except Exception as e:
        st.forget()
        st.error = str(e)
        return None, {}
    diff: dict = {}
    n = reconcile(st, desired, found=diff)
    if n:
        st.drift_corrected += n
    return n, diff

