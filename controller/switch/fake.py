"""An in-memory br-int with OpenFlow's own semantics, for unit tests of the reconciler.

Flows are kept the way OVS keeps them: one per identity (table, priority, match). An
ADD with an identity already present replaces that flow (its counters carry over, as
OVS does without OFPFF_RESET_COUNTS); a strict delete removes exactly the flow with
that identity; a bundle is all or nothing. Nothing here knows about cookies beyond
storing them: a reconciler that keys by cookie is caught out, as it would be by OVS.
"""
from __future__ import annotations

from dataplane.match_action import Flow


class SwitchRefused(RuntimeError):
    pass


class FakeSwitch:
    inline = True  # its calls return when done, in memory: nothing to overlap (controller.switch.reconciler.Switch)

    def __init__(self, dpid: int = 1):
        self.dpid = dpid
        self.alive = True
        self.table: dict[tuple, Flow] = {}  # identity -> flow
        self.packets: dict[tuple, int] = {}  # identity -> counter (survives modify in place)
        self.meter_bands: dict = {}
        self.group_sigs: dict = {}
        self.group_objs: dict = {}
        self.flow_mods = 0
        self.bundles = 0
        self.refuse: str | None = None  # set to make the next bundle fail (atomically)
        self.port_names: dict[int, str] = {}  # ofport -> interface name: what port descriptions would say

    # the Switch protocol ----------------------------------------------------------------
    def flows(self) -> list[Flow]:
        """What a flow dump gives: each flow as the switch holds it (match, actions and
        cookie), a value of its own, not the object the controller sent."""
        return [Flow.from_switch(f.table, f.priority, f.match, f.actions, f.cookie) for f in self.table.values()]

    def push(self, delete: list[Flow], add: list[Flow], reset: frozenset = frozenset()) -> int:
        if not delete and not add:
            return 0
        if self.refuse:
            why, self.refuse = self.refuse, None
            raise SwitchRefused(why)
        # nothing below can fail, so applying in place is as atomic as a bundle
        for f in delete:  # OFPFC_DELETE_STRICT: identity only, whatever cookie and actions
            self.table.pop(f.identity, None)
            self.packets.pop(f.identity, None)
        for f in add:  # OFPFC_ADD: replaces the flow with the same identity, counters kept
            self.table[f.identity] = f
            self.packets.setdefault(f.identity, 0)
            if f.identity in reset:  # ... unless OFPFF_RESET_COUNTS
                self.packets[f.identity] = 0
        self.flow_mods += len(delete) + len(add)
        self.bundles += 1
        return len(delete) + len(add)

    def meters(self):
        return dict(self.meter_bands)

    def set_meters(self, put, existing, delete):
        self.meter_bands.update(put)
        for m in delete:
            self.meter_bands.pop(m, None)
        return len(put) + len(delete)

    def groups(self):
        return dict(self.group_sigs)

    def group_buckets(self):
        return {gid: list(g.buckets) for gid, g in self.group_objs.items()}

    def group_signature(self, g) -> bytes:
        return g.buckets_text().encode()

    def set_groups(self, put, existing, delete):
        self.group_sigs.update({gid: self.group_signature(g) for gid, g in put.items()})
        self.group_objs.update(put)
        for g in delete:
            self.group_sigs.pop(g, None)
            self.group_objs.pop(g, None)
        return len(put) + len(delete)

    def ports(self) -> dict[int, str]:
        return dict(self.port_names)

    # what a person with ovs-ofctl could do behind the controller's back ------------------
    def ofctl_add(self, f: Flow) -> None:
        self.table[f.identity] = f
        self.packets.setdefault(f.identity, 0)

    def ofctl_del(self, f: Flow) -> None:
        self.table.pop(f.identity, None)
