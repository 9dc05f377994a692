"""Match-action tables as immutable values, and a strict packet simulator.

Everything the compiler produces and the reconciler installs is expressed with the
values here: `Match`, the `Action` classes, `Flow`, `Table` and `Pipeline`. They are
frozen, hashable and render to canonical `ovs-ofctl` text; a flow's cookie carries the
layer and tenant that made it plus a hash of that text, so installed flows can be diffed
by cookie alone.

`simulate()` runs a packet through a host's flow set the way OVS would (highest
priority wins, goto / resubmit, outputs snapshot the packet, output to the ingress
port is dropped) and raises `Unsupported` on anything it does not model, instead of
guessing.

This module imports nothing else of ours (see STYLE.md: the walls).
"""
from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable, Mapping

# --------------------------------------------------------------------------------------
# Fields
# --------------------------------------------------------------------------------------

ETH_TYPE_IP = 0x0800
ETH_TYPE_ARP = 0x0806
ETH_TYPE_IPV6 = 0x86DD
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"


@dataclass(frozen=True)
class FieldSpec:
    name: str  # our name == the OXM/NXM name os-ken uses
    kind: str  # "int", "mac", "ipv4" or "ipv6"
    bits: int
    ofctl: str  # the name ovs-ofctl prints
    prereq: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (field, allowed values)


def _regs() -> list[FieldSpec]:
    return [FieldSpec(f"reg{i}", "int", 32, f"reg{i}") for i in range(16)]


_IP = (("eth_type", (ETH_TYPE_IP,)),)
_IP6 = (("eth_type", (ETH_TYPE_IPV6,)),)
_ANY_IP = (("eth_type", (ETH_TYPE_IP, ETH_TYPE_IPV6)),)
_ARP = (("eth_type", (ETH_TYPE_ARP,)),)
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6 = 1, 6, 17, 58
_TCP = _ANY_IP + (("ip_proto", (IPPROTO_TCP,)),)
_UDP = _ANY_IP + (("ip_proto", (IPPROTO_UDP,)),)
_ICMP = _IP + (("ip_proto", (IPPROTO_ICMP,)),)
_ICMP6 = _IP6 + (("ip_proto", (IPPROTO_ICMPV6,)),)
ND_NS, ND_NA = 135, 136  # neighbour solicitation and advertisement (ICMPv6 types)

# ct_state bits (ovs-fields(7))
CT_NEW, CT_EST, CT_REL, CT_RPL, CT_INV, CT_TRK, CT_SNAT, CT_DNAT = (1 << i for i in range(8))
CT_FLAGS = {"new": CT_NEW, "est": CT_EST, "rel": CT_REL, "rpl": CT_RPL, "inv": CT_INV,
            "trk": CT_TRK, "snat": CT_SNAT, "dnat": CT_DNAT}


def ct_state(**flags: bool) -> tuple[int, int]:
    """A masked ct_state match: ct_state(trk=True, est=True, rpl=False) -> (value, mask)."""
    value = mask = 0
    for name, on in flags.items():
        bit = CT_FLAGS[name]
        mask |= bit
        value |= bit if on else 0
    return value, mask

FIELDS: dict[str, FieldSpec] = {
    f.name: f
    for f in [
        FieldSpec("in_port", "int", 32, "in_port"),
        FieldSpec("metadata", "int", 64, "metadata"),
        FieldSpec("eth_src", "mac", 48, "dl_src"),
        FieldSpec("eth_dst", "mac", 48, "dl_dst"),
        FieldSpec("eth_type", "int", 16, "dl_type"),
        FieldSpec("arp_op", "int", 16, "arp_op", _ARP),
        FieldSpec("arp_spa", "ipv4", 32, "arp_spa", _ARP),
        FieldSpec("arp_tpa", "ipv4", 32, "arp_tpa", _ARP),
        FieldSpec("arp_sha", "mac", 48, "arp_sha", _ARP),
        FieldSpec("arp_tha", "mac", 48, "arp_tha", _ARP),
        FieldSpec("ipv4_src", "ipv4", 32, "nw_src", _IP),
        FieldSpec("ipv4_dst", "ipv4", 32, "nw_dst", _IP),
        FieldSpec("ipv6_src", "ipv6", 128, "ipv6_src", _IP6),
        FieldSpec("ipv6_dst", "ipv6", 128, "ipv6_dst", _IP6),
        FieldSpec("ip_proto", "int", 8, "nw_proto", _ANY_IP),
        FieldSpec("ip_ttl", "int", 8, "nw_ttl", _ANY_IP),
        FieldSpec("tcp_src", "int", 16, "tcp_src", _TCP),
        FieldSpec("tcp_dst", "int", 16, "tcp_dst", _TCP),
        FieldSpec("udp_src", "int", 16, "udp_src", _UDP),
        FieldSpec("udp_dst", "int", 16, "udp_dst", _UDP),
        FieldSpec("icmpv4_type", "int", 8, "icmp_type", _ICMP),
        FieldSpec("icmpv4_code", "int", 8, "icmp_code", _ICMP),
        FieldSpec("icmpv6_type", "int", 8, "icmpv6_type", _ICMP6),
        FieldSpec("icmpv6_code", "int", 8, "icmpv6_code", _ICMP6),
        FieldSpec("ipv6_nd_target", "ipv6", 128, "nd_target", _ICMP6 + (("icmpv6_type", (ND_NS, ND_NA)),)),
        FieldSpec("ipv6_nd_sll", "mac", 48, "nd_sll", _ICMP6 + (("icmpv6_type", (ND_NS,)),)),
        FieldSpec("ipv6_nd_tll", "mac", 48, "nd_tll", _ICMP6 + (("icmpv6_type", (ND_NA,)),)),
        FieldSpec("ct_state", "int", 32, "ct_state"),
        FieldSpec("ct_zone", "int", 16, "ct_zone"),
        FieldSpec("tunnel_id", "int", 64, "tun_id"),
        FieldSpec("tun_ipv4_src", "ipv4", 32, "tun_src"),
        FieldSpec("tun_ipv4_dst", "ipv4", 32, "tun_dst"),
        *_regs(),
    ]
}


class Unsupported(Exception):
    """The simulator met something it does not model; it refuses to guess."""


def _norm_value(spec: FieldSpec, value):
    if spec.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{spec.name}: expected an integer, got {value!r}")
        if value < 0 or value >= 1 << spec.bits:
            raise ValueError(f"{spec.name}: {value} does not fit in {spec.bits} bits")
        return value
    if spec.kind == "mac":
        text = str(value).lower()
        parts = text.split(":")
        if len(parts) != 6 or not all(len(p) == 2 and int(p, 16) >= 0 for p in parts):
            raise ValueError(f"{spec.name}: bad MAC {value!r}")
        return text
    if spec.kind == "ipv4":
        return str(ipaddress.IPv4Address(value))
    if spec.kind == "ipv6":
        return str(ipaddress.IPv6Address(value))
    raise AssertionError(spec.kind)


_RENDER_RANK = {"in_port": 0, "tunnel_id": 1, "tun_ipv4_src": 1, "tun_ipv4_dst": 1,
                "eth_src": 2, "eth_dst": 2, "eth_type": 3, "ip_proto": 4}

_DECIMAL = {"in_port", "arp_op", "ip_proto", "ip_ttl", "tcp_src", "tcp_dst", "udp_src", "udp_dst",
            "icmpv4_type", "icmpv4_code", "icmpv6_type", "icmpv6_code", "ct_zone"}


def _value_int(spec: FieldSpec, value) -> int:
    if spec.kind == "int":
        return value
    if spec.kind == "mac":
        return int(value.replace(":", ""), 16)
    if spec.kind == "ipv6":
        return int(ipaddress.IPv6Address(value))
    return int(ipaddress.IPv4Address(value))


def _from_int(spec: FieldSpec, n: int):
    if spec.kind == "int":
        return n
    if spec.kind == "mac":
        return ":".join(f"{(n >> s) & 0xFF:02x}" for s in range(40, -1, -8))
    if spec.kind == "ipv6":
        return str(ipaddress.IPv6Address(n))
    return str(ipaddress.IPv4Address(n))


def _fmt_value(spec: FieldSpec, value, mask) -> str:
    if spec.name == "ct_state":
        m = (1 << 8) - 1 if mask is None else mask
        return "".join(("+" if value & bit else "-") + name for name, bit in CT_FLAGS.items()
                       if m & bit)
    if spec.kind == "int":
        if mask is not None:
            return f"{value:#x}/{mask:#x}"
        return str(value) if spec.name in _DECIMAL or value < 10 else f"{value:#x}"
    if mask is None:
        return str(value)
    if spec.kind == "ipv4":
        m = ipaddress.IPv4Address(mask)
        net = ipaddress.IPv4Network(f"0.0.0.0/{m}")
        return f"{value}/{net.prefixlen}"
    if spec.kind == "ipv6":
        m = int(ipaddress.IPv6Address(mask))
        plen = bin(m).count("1")
        if m == ((1 << 128) - 1) ^ ((1 << (128 - plen)) - 1):
            return f"{value}/{plen}"
    return f"{value}/{mask}"


# --------------------------------------------------------------------------------------
# Match
# --------------------------------------------------------------------------------------


class Match:
    """A conjunction of field tests. `items` is (field, value, mask, text) in canonical
    order: prerequisites first (OVS parsers check them left to right), then by name.
    `text` is the test in ovs-ofctl syntax; items are shared between matches.

    Build with `Match.of(in_port=3, eth_type=0x806, reg9=(1, 1),
    ipv4_src="10.0.0.0/24")`; a mask is given as a (value, mask) pair, an IPv4 prefix
    as "a.b.c.d/len". OpenFlow prerequisites (eth_type before arp_* or ipv4_*) are
    checked, as OVS would. Immutable by contract: one Match may sit in many flows.
    """

    __slots__ = ("items", "_hash")

    def __init__(self, items: tuple = ()):
        """From (field, value, mask) triples, already normalized; prefer `Match.of`."""
        items = [(n, v, m, _item_text(n, v, m)) for n, v, m, *_ in items]
        self.items = tuple(sorted(items, key=_render_key))
        self._hash = None

    @staticmethod
    def of(**fields) -> "Match":
        entries = [_match_entry(name, raw) for name, raw in fields.items()]
        if len(entries) > 1:
            entries.sort()  # by (rank, name); names are unique, so the rest is never compared
        m = Match.__new__(Match)
        m.items = items = tuple([e[1] for e in entries])
        m._hash = None
        for e in entries:
            if e[2]:  # this field has prerequisites: check them all, as OVS would
                _check_prereqs(items)
                break
        return m

    def __eq__(self, other):
        return self is other or (isinstance(other, Match) and self.items == other.items)

    def __hash__(self):
        h = self._hash
        if h is None:  # flows are indexed by identity (table, priority, match): hash once
            h = self._hash = hash(self.items)
        return h

    def __repr__(self):
        return f"Match({self.ofctl()!r})"

    def get(self, name):
        for n, v, m, _ in self.items:
            if n == name:
                return v if m is None else (v, m)
        return None

    def fields(self) -> frozenset[str]:
        return frozenset(it[0] for it in self.items)

    def matches(self, packet: Mapping) -> bool:
        for name, value, mask, _ in self.items:
            have = packet.get(name)
            if have is None:
                return False
            spec = FIELDS[name]
            if mask is None:
                if have != value:
                    return False
            else:
                m = _value_int(spec, mask)
                if _value_int(spec, have) & m != _value_int(spec, value) & m:
                    return False
        return True

    def ofctl(self) -> str:
        """ovs-ofctl syntax (the items are already in the order OVS parsers want)."""
        return ",".join([it[3] for it in self.items])


def _render_key(item: tuple) -> tuple:
    return (_RENDER_RANK.get(item[0], 9), item[0])


_PREREQ_FIELDS = frozenset(pre for spec in FIELDS.values() for pre, _ in spec.prereq)

# Compiling a large deployment builds hundreds of thousands of matches out of a few
# thousand distinct (field, value) pairs (tenants share CAs, ports, MACs): normalize,
# check and render each pair once.
_CACHE = 1 << 17


@lru_cache(maxsize=_CACHE)
def _match_entry(name: str, raw) -> tuple:
    """(sort key, (name, value, mask), has prerequisites) for one field test."""
    spec = FIELDS.get(name)
    if spec is None:
        raise ValueError(f"unknown match field {name!r}")
    mask = None
    if isinstance(raw, tuple):
        raw, mask = raw
    elif spec.kind in ("ipv4", "ipv6") and isinstance(raw, str) and "/" in raw:
        net = ipaddress.ip_network(raw, strict=True)
        if net.version != (4 if spec.kind == "ipv4" else 6):
            raise ValueError(f"{name}: {raw} is not an {spec.kind} network")
        if net.prefixlen < net.max_prefixlen:
            raw, mask = str(net.network_address), (int(net.netmask) if spec.kind == "ipv4"
                                                    else str(net.netmask))
        else:
            raw = str(net.network_address)
    value = _norm_value(spec, raw)
    if mask is not None:
        mask = _norm_mask(spec, mask)
        if _value_int(spec, value) & ~_value_int(spec, mask):
            raise ValueError(f"{name}: value {raw} has bits outside mask {mask}")
    item = (name, value, mask, _item_text(name, value, mask))
    return (_render_key(item), item, bool(spec.prereq))


def _check_prereqs(items: tuple) -> None:
    present = {it[0]: it[1] for it in items if it[0] in _PREREQ_FIELDS}
    for name, *_ in items:
        for pre, allowed in FIELDS[name].prereq:
            if present.get(pre) not in allowed:
                raise ValueError(f"match on {name} needs {pre} in {[hex(a) for a in allowed]}")


@lru_cache(maxsize=_CACHE)
def _norm_cached(name: str, value):
    return _norm_value(FIELDS[name], value)


@lru_cache(maxsize=_CACHE)
def _item_text(name: str, value, mask) -> str:
    return f"{FIELDS[name].ofctl}={_fmt_value(FIELDS[name], value, mask)}"


def _norm_mask(spec: FieldSpec, mask):
    if spec.kind == "int":
        return _norm_value(spec, mask)
    if spec.kind == "ipv4":
        return str(ipaddress.IPv4Address(mask))
    if spec.kind == "ipv6":
        return str(ipaddress.IPv6Address(mask))
    return _norm_value(spec, mask)


# --------------------------------------------------------------------------------------
# Actions
# --------------------------------------------------------------------------------------

IN_PORT = "in_port"  # Output(IN_PORT) sends back out of the ingress port
CONTROLLER = "CONTROLLER"  # Output(CONTROLLER): a packet-in to the controller (the whole packet)


class Action:
    """Base of all actions. Subclasses are frozen dataclasses with an `ofctl()`."""

    def ofctl(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Output(Action):
    port: int | str

    def ofctl(self):
        if self.port == IN_PORT:
            return "IN_PORT"
        return "CONTROLLER:65535" if self.port == CONTROLLER else f"output:{self.port}"


@dataclass(frozen=True)
class SetField(Action):
    """Set a whole field (or, with `mask`, some of its bits) to a value."""

    field: str
    value: object
    mask: int | None = None

    def __post_init__(self):
        spec = FIELDS.get(self.field)
        if spec is None:
            raise ValueError(f"unknown field {self.field!r}")
        object.__setattr__(self, "value", _norm_cached(self.field, self.value))
        if self.mask is not None and spec.kind != "int":
            raise ValueError("masked set only on integer fields")

    def bit_range(self) -> tuple[int, int]:
        """(first bit, last bit) covered by a contiguous mask."""
        return _bit_range(self.field, self.mask)

    def ofctl(self):
        return _set_text(self.field, self.value, self.mask)


def _bit_range(name: str, m: int) -> tuple[int, int]:
    lo = (m & -m).bit_length() - 1
    hi = m.bit_length() - 1
    if m != ((1 << (hi + 1)) - 1) ^ ((1 << lo) - 1):
        raise ValueError(f"mask {m:#x} on {name} is not contiguous")
    return lo, hi


@lru_cache(maxsize=1 << 16)
def _set_text(name: str, value, mask) -> str:
    spec = FIELDS[name]
    if mask is None:
        return f"set_field:{_fmt_value(spec, value, None)}->{spec.ofctl}"
    lo, hi = _bit_range(name, mask)
    return f"load:{value >> lo:#x}->NXM_NX_{spec.ofctl.upper()}[{lo}..{hi}]"


@dataclass(frozen=True)
class Move(Action):
    """Copy a whole field into another of the same width (NXAST_REG_MOVE)."""

    src: str
    dst: str

    def __post_init__(self):
        a, b = FIELDS[self.src], FIELDS[self.dst]
        if a.bits != b.bits:
            raise ValueError(f"move {self.src}->{self.dst}: widths differ")

    def ofctl(self):
        return f"move:{_nxm(self.src)}[]->{_nxm(self.dst)}[]"


_NXM_NAMES = {
    "eth_src": "NXM_OF_ETH_SRC", "eth_dst": "NXM_OF_ETH_DST",
    "arp_spa": "NXM_OF_ARP_SPA", "arp_tpa": "NXM_OF_ARP_TPA",
    "arp_sha": "NXM_NX_ARP_SHA", "arp_tha": "NXM_NX_ARP_THA",
    "ipv4_src": "NXM_OF_IP_SRC", "ipv4_dst": "NXM_OF_IP_DST",
}


def _nxm(name: str) -> str:
    if name.startswith("reg"):
        return f"NXM_NX_{name.upper()}"
    return _NXM_NAMES[name]


@dataclass(frozen=True)
class Resubmit(Action):
    table: "Table"

    def ofctl(self):
        return f"resubmit(,{self.table.number})"


@dataclass(frozen=True)
class Goto(Action):
    """goto_table; must be the last action, and only to a later table (OpenFlow 1.3)."""

    table: "Table"

    def ofctl(self):
        return f"goto_table:{self.table.number}"


@dataclass(frozen=True)
class Nat:
    """NAT inside ct(): kind "src" or "dst" with an address (and port) to translate to,
    or kind "" for ct(nat): apply an existing connection's translation (both ways)."""

    kind: str = ""
    ip: str | None = None
    port: int | None = None

    def __post_init__(self):
        if self.kind not in ("", "src", "dst"):
            raise ValueError(f"nat kind {self.kind!r}")
        if self.kind and self.ip is None:
            raise ValueError("nat(src/dst) needs an address")

    def ofctl(self) -> str:
        if not self.kind:
            return "nat"
        return f"nat({self.kind}={self.ip}{':' + str(self.port) if self.port else ''})"


@dataclass(frozen=True)
class Ct(Action):
    """Send through conntrack in `zone`. With `table`, continue there with ct_state set
    (must be the flow's last action); with `commit`, remember the connection."""

    zone: int
    commit: bool = False
    table: "Table | None" = None
    nat: Nat | None = None

    def __post_init__(self):
        if not 0 <= self.zone <= 0xFFFF:
            raise ValueError(f"ct zone {self.zone} out of range")

    def ofctl(self):
        return _ct_text(self)


@lru_cache(maxsize=1 << 16)
def _ct_text(ct: Ct) -> str:
    parts = (["commit"] if ct.commit else []) + \
            ([f"table={ct.table.number}"] if ct.table is not None else []) + \
            [f"zone={ct.zone}"] + ([ct.nat.ofctl()] if ct.nat else [])
    return f"ct({','.join(parts)})"


@dataclass(frozen=True)
class Opaque(Action):
    """An action read back from a switch that we never emit (someone else put it there).
    It equals nothing the compiler makes, so the reconciler replaces its flow, and the
    simulator refuses it (Unsupported) rather than guess what it does."""

    text: str

    def ofctl(self):
        return f"opaque({self.text})"


@dataclass(frozen=True)
class CheckPktLarger(Action):
    """OVS's check_pkt_larger: write 1 into bit `bit` of register `field` if the packet
    (L2 header and payload) is longer than `length` bytes, else 0. The simulator has no
    packet lengths: it takes a packet's `pkt_len` argument (default: small)."""

    length: int
    field: str
    bit: int = 0

    def __post_init__(self):
        if not self.field.startswith("reg") or not 0 <= self.bit < FIELDS[self.field].bits:
            raise ValueError(f"check_pkt_larger needs a register bit, got {self.field}[{self.bit}]")

    def ofctl(self):
        return f"check_pkt_larger({self.length})->{_nxm(self.field)}[{self.bit}]"


@dataclass(frozen=True)
class DecTtl(Action):
    """Decrement the IPv4 TTL; a packet whose TTL would reach 0 is dropped."""

    def ofctl(self):
        return "dec_ttl"


@dataclass(frozen=True)
class Meter(Action):
    """Pass the packet through a meter (OpenFlow 1.3 instruction; must come first).
    The band travels with the action so a host's meters follow from its flows; only
    the id is part of the flow's text."""

    meter_id: int
    rate_kbps: int = field(default=0, compare=False)  # with unit "pktps": packets per second
    burst_kb: int = field(default=0, compare=False)  # with unit "pktps": packets
    unit: str = field(default="kbps", compare=False)  # "kbps" or "pktps"

    def ofctl(self):
        return f"meter:{self.meter_id}"


@dataclass(frozen=True)
class Log(Action):
    """A copy of the packet to the controller through meter `meter_id` (in packets per
    second), while the packet itself goes on with the actions that follow: OVS's
    controller(meter_id=N). A copy over the meter's rate is dropped, the packet is not.
    Like Meter, the band travels with the action; only the id is in the flow's text."""

    meter_id: int
    rate_pps: int = field(default=0, compare=False)
    burst: int = field(default=0, compare=False)

    def ofctl(self):
        return f"controller(meter_id={self.meter_id})"


def meters_of(flows: Iterable["Flow"]) -> dict[int, tuple]:
    """meter id -> (rate, burst, unit) that these flows need: kbit/s and kbit, or
    packets per second and packets."""
    out: dict[int, tuple] = {}
    for f in flows:
        for a in f.actions:
            if isinstance(a, (Meter, Log)):
                want = (a.rate_kbps, a.burst_kb, a.unit) if isinstance(a, Meter) else (a.rate_pps, a.burst, "pktps")
                if out.setdefault(a.meter_id, want) != want:
                    raise ValueError(f"meter {a.meter_id} is used with two different bands")
    return out


@dataclass(frozen=True)
class Group(Action):
    """Send to a group; the buckets (tuples of actions) travel with the action, so a
    host's groups follow from its flows. Only the id is part of the flow's text.

    kind "select": one bucket per connection (a hash). kind "ff" (fast failover): the
    first live bucket, `watch[i]` being the ofport whose liveness bucket i follows (OVS
    wants one for every bucket: a port that is always live, such as a tunnel port
    without BFD, makes a bucket unconditional), as the switch itself decides, without
    the controller; an empty bucket drops."""

    group_id: int
    buckets: tuple = field(default=(), compare=False)
    kind: str = field(default="select", compare=False)
    watch: tuple = field(default=(), compare=False)

    def ofctl(self):
        return f"group:{self.group_id}"

    def buckets_text(self) -> str:
        text = ";".join(",".join(a.ofctl() for a in b) for b in self.buckets)
        if self.kind == "select":
            return text
        return f"{self.kind}[{','.join(str(w) for w in self.watch)}]:{text}"

    def live_bucket(self, live: Callable[[int], bool] | None = None) -> int | None:
        """A fast-failover group's chosen bucket, given which ofports are live (default:
        every one): the first whose watched port is, or None (the packet drops)."""
        for i in range(len(self.buckets)):
            w = self.watch[i] if i < len(self.watch) else None
            if w is None or live is None or live(w):
                return i
        return None


def groups_of(flows: Iterable["Flow"]) -> dict[int, "Group"]:
    """group id -> the Group (with its buckets) these flows send to."""
    out: dict[int, Group] = {}
    for f in flows:
        for a in f.actions:
            if isinstance(a, Group):
                old = out.setdefault(a.group_id, a)
                if old.buckets_text() != a.buckets_text():
                    raise ValueError(f"group {a.group_id} is used with two different bucket sets")
    return out


# --------------------------------------------------------------------------------------
# Tables and the pipeline
# --------------------------------------------------------------------------------------


class ContractError(ValueError):
    """A flow broke its table's declared contract."""


_UNCONSTRAINED = frozenset({Output, SetField, Move, DecTtl, Group, CheckPktLarger, Log})  # allowed anywhere in a table


@dataclass(frozen=True, eq=False)
class Table:
    """A named table: the match fields it accepts, where it may go, what a miss does.

    `miss` is "drop", or the name of the table a miss continues in ("next" for the one
    that follows in the pipeline). The number is assigned by the Pipeline; code and
    output use the name.
    """

    name: str
    fields: frozenset
    successors: tuple = ()  # names of tables this table may goto / resubmit to
    miss: str = "drop"
    number: int = -1
    layer: str = ""

    def __repr__(self):
        return f"Table({self.name}#{self.number})"

    def check(self, flow: "Flow") -> None:
        fields = self.fields
        for it in flow.match.items:
            if it[0] not in fields:
                extra = flow.match.fields() - fields
                raise ContractError(f"table {self.name}: match on undeclared field(s) {sorted(extra)}")
        for i, act in enumerate(flow.actions):
            if type(act) in _UNCONSTRAINED:
                continue
            if isinstance(act, Meter) and i != 0:
                raise ContractError(f"table {self.name}: meter must be the first action")
            if isinstance(act, Ct) and act.table is not None:
                if act.table.name not in self.successors:
                    raise ContractError(f"table {self.name}: ct to {act.table.name} is not a "
                                        f"declared successor {list(self.successors)}")
                if i != len(flow.actions) - 1:
                    raise ContractError(f"table {self.name}: ct(table=...) must be the last action")
            if isinstance(act, (Goto, Resubmit)):
                if act.table.name not in self.successors:
                    raise ContractError(
                        f"table {self.name}: {type(act).__name__.lower()} to {act.table.name} "
                        f"is not a declared successor {list(self.successors)}")
            if isinstance(act, Goto):
                if i != len(flow.actions) - 1:
                    raise ContractError(f"table {self.name}: goto must be the last action")
                if act.table.number <= self.number:
                    raise ContractError(f"table {self.name}: goto {act.table.name} goes backwards")


class Pipeline:
    """An ordered list of tables; numbers are their positions."""

    def __init__(self, tables: Iterable[Table]):
        self.tables: list[Table] = []
        self.by_name: dict[str, Table] = {}
        for i, t in enumerate(tables):
            if t.name in self.by_name:
                raise ValueError(f"duplicate table {t.name}")
            object.__setattr__(t, "number", i)
            self.tables.append(t)
            self.by_name[t.name] = t
        for t in self.tables:
            if t.miss == "next":
                if t.number + 1 >= len(self.tables):
                    raise ValueError(f"table {t.name}: miss=next but it is the last table")
                object.__setattr__(t, "miss", self.tables[t.number + 1].name)
            for s in t.successors:
                if s not in self.by_name:
                    raise ValueError(f"table {t.name}: unknown successor {s}")
            if t.miss != "drop":
                if t.miss not in self.by_name:
                    raise ValueError(f"table {t.name}: miss goes to unknown table {t.miss}")
                if t.miss not in t.successors:
                    object.__setattr__(t, "successors", t.successors + (t.miss,))
        self.by_number = {t.number: t for t in self.tables}
        # One shared, immutable Goto and Resubmit per table: compiling builds many.
        self.goto = {t.name: Goto(t) for t in self.tables}
        self.resubmit = {t.name: Resubmit(t) for t in self.tables}

    def __getitem__(self, name: str) -> Table:
        return self.by_name[name]


# --------------------------------------------------------------------------------------
# Flows and cookies
# --------------------------------------------------------------------------------------

COOKIE_LAYER_SHIFT = 56  # bits 63..56: layer id
COOKIE_TENANT_SHIFT = 36  # bits 55..36: tenant id (0 = infrastructure)
COOKIE_TENANT_MAX = (1 << 20) - 1
COOKIE_HASH_MASK = (1 << 36) - 1  # bits 35..0: hash of the flow's canonical text


def cookie_layer(cookie: int) -> int:
    return cookie >> COOKIE_LAYER_SHIFT


def cookie_tenant(cookie: int) -> int:
    return (cookie >> COOKIE_TENANT_SHIFT) & COOKIE_TENANT_MAX


class Flow:
    """One OpenFlow rule. Equality is by canonical text and cookie: two flows that would
    be installed identically are equal. For two flows compiled here the cookie decides
    (it carries a hash of the text); a flow read back from a switch (`reported`) is
    compared by its text, since its cookie is whatever the switch holds.

    `rule` says which piece of intent made the flow ("port vm1", "switch web flood"),
    for `nvctl flows`, traces and error messages; `stat`, what its packet counts are
    counted as (`controller.analysis.stats`). Neither is installed.

    Immutable by contract (the attributes are never assigned after __init__): one Flow
    object is shared by every host it is installed on. The cookie is computed once, here;
    the canonical text is rendered again when asked for, not kept (a controller holds
    hundreds of thousands of flows).
    """

    __slots__ = ("table", "priority", "match", "actions", "layer_id", "tenant_id", "rule", "cookie", "reported",
                 "identity", "stat", "extras", "unit", "where")

    def __init__(self, table: Table, priority: int, match: Match, actions: tuple = (),
                 layer_id: int = 0, tenant_id: int = 0, rule: str = "", stat: tuple = ()):
        if not 0 <= priority <= 0xFFFF:
            raise ValueError(f"priority {priority} out of range")
        if not 0 <= tenant_id <= COOKIE_TENANT_MAX:
            raise ValueError(f"tenant id {tenant_id} out of range")
        if type(actions) is not tuple:
            actions = tuple(actions)
        self.table = table
        self.priority = priority
        self.match = match
        self.actions = actions
        self.layer_id = layer_id
        self.tenant_id = tenant_id
        self.rule = rule
        # What its counters count, for `nvctl stats` (tags such as ("acl", 3) or
        # ("port", "vm1", "sent")); like `rule`, not installed and not in the cookie.
        self.stat = stat
        digest = _blake2b(_body(table.number, priority, match, actions).encode(), digest_size=8).digest()
        bits = int.from_bytes(digest, "big")
        if stat:  # whose counts they are: a flow that starts counting for another port is a new flow
            bits ^= _stat_bits(stat)
        self.cookie = ((layer_id << COOKIE_LAYER_SHIFT) | (tenant_id << COOKIE_TENANT_SHIFT)
                       | (bits & COOKIE_HASH_MASK))
        self.reported = False  # True: read from a switch, so the cookie says nothing of the text
        # What OVS keys a flow by: (table, priority, match). Two flows with one identity
        # cannot both be on a switch; an ADD of the second replaces the first. One tuple
        # per flow, shared by every host's index that holds the flow.
        self.identity = (table.number, priority, match)
        # Whether it uses a meter, a log copy or a group: what a host needs besides its
        # flows (meters_of, groups_of) comes from these flows alone.
        self.extras = not _EXTRA_ACTIONS.isdisjoint(map(type, actions))
        # Which part of a compile made it (the compiler's, not the switch's: a layer's
        # part, such as a port's, marks its flows with its name and the host set it put
        # them in, so that a change can keep the flows of the parts it did not touch);
        # not installed, not in the cookie. Two references to strings held anyway: no
        # object per flow.
        self.unit = self.where = None

    @property
    def body(self) -> str:
        """Canonical text without cookie: table, priority, match, actions."""
        return _body(self.table.number, self.priority, self.match, self.actions)

    def ofctl(self) -> str:
        """A line `ovs-ofctl add-flows` accepts."""
        return f"cookie={self.cookie:#x},{self.body}"

    def __eq__(self, other):
        if self is other:
            return True
        if not isinstance(other, Flow) or self.cookie != other.cookie:
            return False
        if not (self.reported or other.reported):
            return True  # both made here: the cookie hashes the text (a collision is refused)
        return self.body == other.body

    def __hash__(self):
        return hash(self.cookie)

    def __repr__(self):
        return f"Flow({self.table.name}: {self.body})"

    @staticmethod
    def from_switch(table: Table, priority: int, match: Match, actions: tuple, cookie: int) -> "Flow":
        """A flow as a switch reported it: its cookie is what the switch holds, which
        equals the one computed from its text only if nobody changed it behind our back."""
        f = Flow(table, priority, match, actions, cookie_layer(cookie),
                 cookie_tenant(cookie), "(read from the switch)")
        f.cookie = cookie
        f.reported = True
        return f


_blake2b = hashlib.blake2b
_EXTRA_ACTIONS = frozenset({Meter, Log, Group})


@lru_cache(maxsize=1 << 16)
def _stat_bits(stat: tuple) -> int:
    """A stable digest of a flow's stat tags (the same in every process), mixed into its
    cookie; tags repeat across tenants and hosts, so it is computed once per tag set."""
    return int.from_bytes(_blake2b(repr(stat).encode(), digest_size=8).digest(), "big")


def _body(table_no: int, priority: int, match: Match, actions: tuple) -> str:
    acts = ",".join([a.ofctl() for a in actions]) or "drop"
    m = match.ofctl()
    if m:
        return f"table={table_no},priority={priority},{m},actions={acts}"
    return f"table={table_no},priority={priority},actions={acts}"


def flows_by_cookie(flows: Iterable[Flow]) -> dict[int, Flow]:
    """Index a host's flows by cookie; two different flows with one cookie is an error
    (a 36-bit hash collision within one layer and tenant on one host, or a compiler bug).
    The same flow given twice is not."""
    flows = flows if isinstance(flows, list) else list(flows)
    out = {f.cookie: f for f in flows}
    if len(out) != len(flows):  # a cookie came twice: the same flow, or a collision?
        for f in flows:
            old = out[f.cookie]
            if old is not f and old.body != f.body:
                raise ValueError(f"cookie collision {f.cookie:#x}: {old.body!r} vs {f.body!r}")
    return out


# --------------------------------------------------------------------------------------
# Simulator
# --------------------------------------------------------------------------------------


@dataclass
class Emitted:
    """A packet leaving the bridge: the port and the packet's fields at that moment."""

    port: int
    packet: dict


@dataclass
class Hop:
    table: str
    flow: Flow | None  # None: table miss


@dataclass
class Fate:
    outputs: list[Emitted] = field(default_factory=list)
    path: list[Hop] = field(default_factory=list)

    @property
    def dropped(self) -> bool:
        return not self.outputs

    def ports(self) -> list[int]:
        return [e.port for e in self.outputs]

    def decided_by(self) -> Flow | None:
        """The last flow that acted on the packet (the one that dropped it, if it was)."""
        for hop in reversed(self.path):
            if hop.flow is not None:
                return hop.flow
        return None


MAX_RESUBMIT_DEPTH = 64


@dataclass
class Conn:
    zone: int
    orig: tuple  # (proto, src, sport, dst, dport) as the first packet had it
    reply: tuple  # what a reply looks like on the wire (after NAT), reversed
    nat: "Nat | None" = None
    natted: tuple | None = None  # the first packet's tuple after NAT


def _l4_ports(pkt: Mapping) -> tuple[int, int]:
    for proto in ("tcp", "udp"):
        if f"{proto}_src" in pkt:
            return pkt[f"{proto}_src"], pkt[f"{proto}_dst"]
    return 0, 0


def _tuple(pkt: Mapping) -> tuple | None:
    et = pkt.get("eth_type")
    if et not in (ETH_TYPE_IP, ETH_TYPE_IPV6):
        return None
    sport, dport = _l4_ports(pkt)
    ip = "ipv4" if et == ETH_TYPE_IP else "ipv6"
    return (pkt.get("ip_proto", 0), pkt[f"{ip}_src"], sport, pkt[f"{ip}_dst"], dport)


def _set_tuple(pkt: dict, t: tuple) -> None:
    proto, src, sport, dst, dport = t
    ip = "ipv6" if ":" in src else "ipv4"
    pkt[f"{ip}_src"], pkt[f"{ip}_dst"] = src, dst
    for l4 in ("tcp", "udp"):
        if f"{l4}_src" in pkt:
            pkt[f"{l4}_src"], pkt[f"{l4}_dst"] = sport, dport


def _reverse(t: tuple) -> tuple:
    proto, src, sport, dst, dport = t
    return (proto, dst, dport, src, sport)


class Conntrack:
    """One host's connection tracker, as far as the pipeline can observe it: a packet is
    +new until its connection is committed, +est after (+rpl in the reply direction);
    NAT set at commit is applied to later packets both ways by ct(nat)."""

    def __init__(self):
        self.index: dict[tuple, tuple[Conn, bool]] = {}  # (zone, tuple) -> (conn, is_reply)

    def lookup(self, zone: int, pkt: Mapping) -> tuple[int, Conn | None, bool]:
        t = _tuple(pkt)
        if t is None:
            return CT_TRK | CT_INV, None, False
        hit = self.index.get((zone, t))
        if hit is None:
            return CT_TRK | CT_NEW, None, False
        conn, rpl = hit
        state = CT_TRK | CT_EST | (CT_RPL if rpl else 0)
        if conn.nat is not None:
            state |= CT_SNAT if conn.nat.kind == "src" else CT_DNAT
        return state, conn, rpl

    def translate(self, conn: Conn, rpl: bool, pkt: dict) -> None:
        if conn.nat is None:
            return
        _set_tuple(pkt, _reverse(conn.orig) if rpl else conn.natted)

    def commit(self, zone: int, pkt: dict, nat: "Nat | None") -> Conn | None:
        t = _tuple(pkt)
        if t is None:
            raise Unsupported("ct(commit) of a non-IPv4 packet")
        hit = self.index.get((zone, t))
        if hit is not None:
            return hit[0]
        natted = t
        if nat is not None and nat.kind:
            proto, src, sport, dst, dport = t
            if nat.kind == "src":
                natted = (proto, nat.ip, nat.port or sport, dst, dport)
            else:
                natted = (proto, src, sport, nat.ip, nat.port or dport)
        conn = Conn(zone, t, _reverse(natted), nat if nat and nat.kind else None, natted)
        self.index[(zone, t)] = (conn, False)
        self.index[(zone, conn.reply)] = (conn, True)
        _set_tuple(pkt, natted)
        return conn


class Simulator:
    """Runs packets through one host's flow set. Strict: unknown actions raise."""

    def __init__(self, pipeline: Pipeline, flows: Iterable[Flow], groups: Mapping | None = None):
        self.pipeline = pipeline
        self.ct = Conntrack()
        self.pkt_len = 64
        flows = list(flows)
        self.kinds = groups_of(flows)  # id -> Group: its kind and watched ports
        self.groups = {gid: g.buckets for gid, g in self.kinds.items()}
        self.groups.update(groups or {})  # id -> list of buckets (action tuples)
        self.live: Callable[[int], bool] | None = None  # which watched ofports are live (None: all)
        self.by_table: dict[int, list[Flow]] = {}
        for f in flows:
            self.by_table.setdefault(f.table.number, []).append(f)
        for lst in self.by_table.values():
            lst.sort(key=lambda f: -f.priority)

    def lookup(self, table_no: int, pkt: Mapping) -> Flow | None:
        best = None
        for f in self.by_table.get(table_no, ()):
            if best is not None and f.priority < best.priority:
                break
            if f.match.matches(pkt):
                if best is not None:
                    raise Unsupported(
                        f"table {f.table.name}: two flows of priority {f.priority} match: "
                        f"{best.body} / {f.body}")
                best = f
        return best

    def run(self, packet: Mapping, in_port: int, pkt_len: int = 64) -> Fate:
        """`pkt_len`: the frame's length in bytes, for check_pkt_larger."""
        self.pkt_len = pkt_len
        pkt = {k: v for k, v in packet.items() if v is not None}
        for name in pkt:
            if name not in FIELDS:
                raise Unsupported(f"packet field {name!r} is not modelled")
        for r in range(16):
            pkt.setdefault(f"reg{r}", 0)
        pkt.setdefault("metadata", 0)
        pkt.setdefault("ct_state", 0)
        pkt.setdefault("ct_zone", 0)
        pkt["in_port"] = in_port
        fate = Fate()
        self._table(0, pkt, fate, 0)
        return fate

    def _table(self, table_no: int, pkt: dict, fate: Fate, depth: int) -> None:
        if depth > MAX_RESUBMIT_DEPTH:
            raise Unsupported("resubmit depth exceeded (a loop?)")
        table = self.pipeline.by_number.get(table_no)
        if table is None:
            raise Unsupported(f"no table number {table_no}")
        flow = self.lookup(table_no, pkt)
        fate.path.append(Hop(table.name, flow))
        if flow is None:
            return  # OpenFlow 1.3 table miss without a miss flow: drop
        self._actions(flow.actions, pkt, fate, depth)

    def _actions(self, actions, pkt: dict, fate: Fate, depth: int) -> None:
        for act in actions:
            if isinstance(act, Output):
                port = pkt["in_port"] if act.port == IN_PORT else act.port
                if act.port != IN_PORT and port == pkt["in_port"]:
                    continue  # OVS drops output to the ingress port
                fate.outputs.append(Emitted(port, _visible(pkt)))
            elif isinstance(act, SetField):
                if act.mask is None:
                    pkt[act.field] = act.value
                else:
                    old = pkt.get(act.field, 0)
                    pkt[act.field] = (old & ~act.mask) | (act.value & act.mask)
            elif isinstance(act, Move):
                if act.src not in pkt:
                    raise Unsupported(f"move from absent field {act.src}")
                pkt[act.dst] = _from_int(FIELDS[act.dst], _value_int(FIELDS[act.src], pkt[act.src]))
            elif isinstance(act, Resubmit):
                # OVS keeps whatever the resubmitted tables changed; so do we.
                self._table(act.table.number, pkt, fate, depth + 1)
            elif isinstance(act, Goto):
                self._table(act.table.number, pkt, fate, depth + 1)
            elif isinstance(act, Ct):
                state, conn, rpl = self.ct.lookup(act.zone, pkt)
                if act.nat is not None and not act.nat.kind and conn is not None:
                    self.ct.translate(conn, rpl, pkt)
                if act.commit:
                    if conn is None:
                        self.ct.commit(act.zone, pkt, act.nat)
                    elif act.nat is not None and act.nat.kind:
                        self.ct.translate(conn, rpl, pkt)
                if act.table is not None:
                    pkt["ct_state"], pkt["ct_zone"] = state, act.zone
                    self._table(act.table.number, pkt, fate, depth + 1)
            elif isinstance(act, CheckPktLarger):
                bit = 1 << act.bit
                old = pkt.get(act.field, 0) & ~bit
                pkt[act.field] = old | (bit if self.pkt_len > act.length else 0)
            elif isinstance(act, DecTtl):
                ttl = pkt.get("ip_ttl")
                if ttl is None:
                    raise Unsupported("dec_ttl on a packet without ip_ttl")
                if ttl <= 1:
                    fate.path.append(Hop("(dec_ttl: TTL expired)", None))
                    return
                pkt["ip_ttl"] = ttl - 1
            elif isinstance(act, (Meter, Log)):
                continue  # meters limit rate, not fate; a log copy is not the packet's fate
            elif isinstance(act, Group):
                buckets = self.groups.get(act.group_id)
                if not buckets:
                    raise Unsupported(f"group {act.group_id} is not known to the simulator")
                g = self.kinds.get(act.group_id)
                if g is not None and g.kind == "ff":
                    pick = g.live_bucket(self.live)
                    if pick is None:
                        fate.path.append(Hop(f"(group {act.group_id}: no live bucket, dropped)", None))
                        return
                    fate.path.append(Hop(f"(fast-failover group {act.group_id}: bucket {pick} of {len(buckets)}, "
                                         f"the first live)", None))
                    self._actions(buckets[pick], pkt, fate, depth + 1)
                    continue
                t = _tuple(pkt) or ()
                pick = int(hashlib.blake2b(repr(t).encode(), digest_size=4).hexdigest(), 16) % len(buckets)
                fate.path.append(Hop(f"(group {act.group_id}: bucket {pick} of {len(buckets)})", None))
                self._actions(buckets[pick], pkt, fate, depth + 1)
            else:
                raise Unsupported(f"action {act!r} is not modelled")


_PIPELINE_STATE = ("metadata", "in_port", "ct_state", "ct_zone")


def _visible(pkt: Mapping) -> dict:
    """The packet as it would be seen leaving: headers and tunnel metadata, no registers."""
    return {k: v for k, v in pkt.items() if not k.startswith("reg") and k not in _PIPELINE_STATE}


def simulate(pipeline: Pipeline, flows: Iterable[Flow], packet: Mapping, in_port: int) -> Fate:
    return Simulator(pipeline, flows).run(packet, in_port)


# --------------------------------------------------------------------------------------
# Several hosts joined by tunnels
# --------------------------------------------------------------------------------------

@dataclass
class Delivery:
    host: str
    port: int
    packet: dict
    hops: list  # [(host, Fate)] the packet went through, in order


class Fabric:
    """Hosts whose flow sets are joined by a flow-based tunnel port: a packet output on
    `tunnel_port` with tun_ipv4_dst = a host's PA arrives at that host's tunnel port with
    tun_ipv4_src = the sender's PA and its tunnel_id. A tunnel output to an address no
    host owns is reported as lost (`lost`), not silently dropped."""

    def __init__(self, pipeline: Pipeline, hosts: Mapping[str, tuple[Iterable[Flow], str]],
                 tunnel_port: int, max_hops: int = 8, live: Mapping[str, Mapping[int, bool]] | None = None):
        """`live`: host -> {ofport: live} as its switch holds them (fast-failover groups
        take the first bucket whose watched port is live; a port not listed is)."""
        self.sims = {h: Simulator(pipeline, flows) for h, (flows, _pa) in hosts.items()}
        for h, ports in (live or {}).items():
            if h in self.sims:
                self.sims[h].live = lambda port, ports=ports: ports.get(port, True)
        self.pa = {h: pa for h, (_f, pa) in hosts.items()}
        self.by_pa = {pa: h for h, pa in self.pa.items()}
        self.tunnel_port = tunnel_port
        self.max_hops = max_hops
        self.lost: list[tuple[str, dict]] = []
        self.hops: list[tuple[str, int, dict, Fate]] = []  # (host, in_port, packet in, fate)

    def replace_flows(self, pipeline: Pipeline, hosts: Mapping[str, Iterable[Flow]]) -> None:
        """Install new flow sets, keeping each host's conntrack state (a policy change
        on a running network)."""
        for h, flows in hosts.items():
            old = self.sims[h]
            self.sims[h] = Simulator(pipeline, flows)  # groups come with the new flows
            self.sims[h].ct = old.ct

    def send(self, host: str, in_port: int, packet: Mapping, pkt_len: int = 64) -> list[Delivery]:
        out: list[Delivery] = []
        self._run(host, in_port, dict(packet), [], out, pkt_len)
        return out

    def _run(self, host, in_port, packet, hops, out, pkt_len=64):
        if len(hops) >= self.max_hops:
            raise Unsupported("tunnel hop limit reached (a forwarding loop?)")
        arrived = dict(packet)
        fate = self.sims[host].run(packet, in_port, pkt_len)
        self.hops.append((host, in_port, arrived, fate))
        hops = hops + [(host, fate)]
        for e in fate.outputs:
            if e.port != self.tunnel_port:
                out.append(Delivery(host, e.port, e.packet, hops))
                continue
            dst = e.packet.get("tun_ipv4_dst")
            peer = self.by_pa.get(dst)
            if peer is None or "tunnel_id" not in e.packet:
                self.lost.append((host, e.packet))
                continue
            inner = {k: v for k, v in e.packet.items() if not k.startswith("tun")}
            inner["tunnel_id"] = e.packet["tunnel_id"]
            inner["tun_ipv4_src"] = self.pa[host]
            inner["tun_ipv4_dst"] = dst
            self._run(peer, self.tunnel_port, inner, hops, out, pkt_len)
