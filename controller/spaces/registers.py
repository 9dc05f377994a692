"""The one register map: which register bits carry which logical field.

Every layer that reads or writes pipeline state uses these names, never a raw register.
Overlaps are refused at import time (as OVN's logical-fields and Faucet's metadata do).
"""
from __future__ import annotations

from dataclasses import dataclass

from dataplane.match_action import FIELDS, SetField
from controller.spaces.ids import EXTERNAL_NET_KEY, FLOOD_PORT_KEY, MAX_PORT_KEY  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class Slot:
    name: str
    field: str  # "metadata" or "regN"
    lo: int  # first bit
    bits: int
    doc: str

    @property
    def mask(self) -> int:
        return ((1 << self.bits) - 1) << self.lo

    def match(self, value: int) -> tuple[str, object]:
        """(field, value-or-(value, mask)) for Match.of(**dict([slot.match(v)]))."""
        self.check(value)
        if self.lo == 0 and self.bits == FIELDS[self.field].bits:
            return self.field, value
        return self.field, (value << self.lo, self.mask)

    def m(self, value: int) -> dict:
        """Keyword arguments for Match.of: `Match.of(**OUTPORT.m(3), eth_type=...)`."""
        return dict([self.match(value)])

    def load(self, value: int) -> SetField:
        """The action that writes `value` into this slot."""
        field, v = self.match(value)
        return SetField(field, v[0], v[1]) if isinstance(v, tuple) else SetField(field, v)

    def check(self, value: int) -> None:
        if not 0 <= value < (1 << self.bits):
            raise ValueError(f"{self.name}: {value} does not fit in {self.bits} bits")


SLOTS: tuple[Slot, ...] = (
    Slot("logical_switch", "reg13", 0, 32, "the logical switch (its VNI) the packet is on"),
    Slot("inport", "reg14", 0, 32, "logical port key (within its switch) the packet came from"),
    Slot("outport", "reg15", 0, 32, "logical port key chosen by l2_lookup; FLOOD for broadcast"),
    Slot("from_tunnel", "reg10", 0, 1, "1 when the packet arrived over VXLAN from another host"),
    Slot("nexthop", "reg12", 0, 32, "IPv4 next hop chosen by ip_routing, resolved by ip_neighbor"),
    Slot("scratch", "reg11", 0, 32, "temporary for swapping fields within one flow's actions"),
    Slot("pkt_larger", "reg9", 0, 1, "1 when check_pkt_larger found the frame too big for the switch's MTU"),
    Slot("policy_tenant", "reg8", 0, 32, "network policies: the tenant id, loaded with the policies' bits by "
                                         "the tenant's own flows; scopes its peer and rule flows"),
) + tuple(Slot(f"policy_selected{i}", f"reg{i}", 0, 32,
               f"network policies: bits {32 * i}-{32 * i + 31} of the policies selecting the port") for i in range(4)) \
  + tuple(Slot(f"policy_peer{i}", f"reg{4 + i}", 0, 32,
               f"network policies: bits {32 * i}-{32 * i + 31} of the peer sets the far address is in")
          for i in range(4))

BY_NAME = {s.name: s for s in SLOTS}

# The values these registers carry (port keys, the flood key, VNIs, the external
# network's key) are number spaces, declared with the others in controller.spaces.ids.


def _check_overlaps(slots) -> None:
    seen: dict[str, list[Slot]] = {}
    for s in slots:
        if s.field not in FIELDS or s.field not in ("metadata",) and not s.field.startswith("reg"):
            raise ValueError(f"slot {s.name}: {s.field} is not a register or metadata")
        if s.lo + s.bits > FIELDS[s.field].bits:
            raise ValueError(f"slot {s.name} overflows {s.field}")
        for other in seen.get(s.field, []):
            if other.mask & s.mask:
                raise ValueError(f"register map: {s.name} overlaps {other.name} in {s.field}")
        seen.setdefault(s.field, []).append(s)


_check_overlaps(SLOTS)

LOGICAL_SWITCH = BY_NAME["logical_switch"]
INPORT = BY_NAME["inport"]
OUTPORT = BY_NAME["outport"]
POLICY_TENANT = BY_NAME["policy_tenant"]
POLICY_SELECTED = tuple(BY_NAME[f"policy_selected{i}"] for i in range(4))
POLICY_PEER = tuple(BY_NAME[f"policy_peer{i}"] for i in range(4))
FROM_TUNNEL = BY_NAME["from_tunnel"]
NEXTHOP = BY_NAME["nexthop"]
SCRATCH = BY_NAME["scratch"]
PKT_LARGER = BY_NAME["pkt_larger"]
