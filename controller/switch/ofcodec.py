"""Our flow values <-> os-ken's OpenFlow 1.3 objects (with Nicira extensions), both ways.

Out: `to_flow_mod` and friends are the reference encoding (`ofwire` builds the same
bytes faster). Back: `flow_from_stats` turns what a switch reports (a flow-stats entry)
into the same values the compiler makes, so the reconciler compares the switch's flows
with the desired ones by identity (table, priority, match) and content, and `nvctl
verify` analyses what is really installed. An action we never emit comes back as
`Opaque`, which equals nothing we want (so it is replaced) and which the simulator and
the verifier refuse to guess about.
"""
from __future__ import annotations

import struct
import threading

from os_ken.ofproto import nicira_ext, ofproto_v1_3 as ofp, ofproto_v1_3_parser as parser

from dataplane.match_action import (CONTROLLER, FIELDS, IN_PORT, CheckPktLarger, Ct, DecTtl, Flow, Goto,
                                    Group, Log, Match, Meter, Move, Nat, Opaque, Output, Pipeline, Resubmit,
                                    SetField, Table)

ALL_ONES64 = 0xFFFFFFFFFFFFFFFF
OFP10_IN_PORT = 0xFFF8
NX_NAT_F_SRC, NX_NAT_F_DST = 1 << 0, 1 << 1  # OVS nx-match.h


class PaddedNAT(parser.NXActionNAT):
    """os-ken 4.2 leaves NXAST_NAT's body unpadded when a port range is present (28
    bytes), while the enclosing length says 32: OVS refuses such a group-mod with
    OFPBRC_BAD_LEN. Pad the body so header (10 bytes) + body is a multiple of 8."""

    def serialize_body(self):
        data = super().serialize_body()
        return data + bytes((-(10 + len(data))) % 8)


class NXActionCheckPktLarger(parser.NXAction):
    """NXAST_CHECK_PKT_LARGER (OVS 2.12+), which os-ken 4.2 does not know: after the
    Nicira header, pkt_len (16 bits), the result's bit offset (16 bits) and the
    destination's NXM header (32 bits), padded to 24 bytes in all. Registers only."""

    _subtype = 49
    _fmt_str = "!HHI6x"

    def __init__(self, pkt_len, dst, ofs, type_=None, len_=None, experimenter=None, subtype=None):
        super().__init__()
        self.pkt_len, self.dst, self.ofs = pkt_len, dst, ofs

    @classmethod
    def parser(cls, buf):
        pkt_len, ofs, header = struct.unpack_from(cls._fmt_str, buf, 0)
        cls_, field, length = header >> 16, (header >> 9) & 0x7F, header & 0xFF
        if cls_ != 0x0001 or length != 4 or field > 15:
            return cls(pkt_len, f"nxm:{header:08x}", ofs)
        return cls(pkt_len, f"reg{field}", ofs)

    def serialize_body(self):
        n = int(self.dst[3:])  # NXM_NX_REGn: class 0x0001, field n, 4 bytes
        return struct.pack(self._fmt_str, self.pkt_len, self.ofs, (0x0001 << 16) | (n << 9) | 4)


parser.NXAction.register(NXActionCheckPktLarger)

NXAC2PT_METER_ID = 5  # OVS 2.11+: the packet-in goes through this meter


class NXActionControllerMeter(parser.NXAction):
    """NXAST_CONTROLLER2 with the meter_id property, which os-ken 4.2 cannot encode
    (nor parse: it has no class for the property). Registered in place of os-ken's
    NXActionController2, so every NXAST_CONTROLLER2 a switch reports comes back here:
    properties other than the meter are kept in `others`, and such an action, which we
    never write, reads back as Opaque."""

    _subtype = nicira_ext.NXAST_CONTROLLER2
    _fmt_str = "!6x"

    def __init__(self, meter_id=None, others=(), type_=None, len_=None, experimenter=None, subtype=None):
        super().__init__()
        self.meter_id, self.others = meter_id, tuple(others)

    @classmethod
    def parser(cls, buf):
        meter, others, off = None, [], 6
        while off + 4 <= len(buf):
            ptype, plen = struct.unpack_from("!HH", buf, off)
            if plen < 4:
                break
            if ptype == NXAC2PT_METER_ID and plen == 8:
                (meter,) = struct.unpack_from("!I", buf, off + 4)
            else:
                others.append((ptype, bytes(buf[off + 4:off + plen])))
            off += (plen + 7) // 8 * 8
        return cls(meter, others)

    def serialize_body(self):
        return struct.pack("!6xHHI", NXAC2PT_METER_ID, 8, self.meter_id)


parser.NXAction.register(NXActionControllerMeter)


class LazyFlowStats:
    """One entry of a flow-stats reply, whose match and instructions are parsed when
    first asked for. Counter reads (`nvctl stats`) need only the cookie and the counts;
    parsing every entry's match and instructions is most of os-ken's cost (~80 us a flow
    here), paid now only by the reconciler's read-back, which asks for them."""

    __slots__ = ("length", "table_id", "duration_sec", "duration_nsec", "priority", "idle_timeout",
                 "hard_timeout", "flags", "cookie", "packet_count", "byte_count", "_buf", "_off", "_parsed")

    @classmethod
    def parser(cls, buf, offset):
        st = cls()
        (st.length, st.table_id, st.duration_sec, st.duration_nsec, st.priority, st.idle_timeout,
         st.hard_timeout, st.flags, st.cookie, st.packet_count, st.byte_count) = struct.unpack_from(
            ofp.OFP_FLOW_STATS_0_PACK_STR, buf, offset)
        st._buf, st._off, st._parsed = buf, offset, None
        return st

    def _parse(self):
        if self._parsed is None:
            full = parser.OFPFlowStats.parser(self._buf, self._off)
            self._parsed = (full.match, full.instructions)
            self._buf = None
        return self._parsed

    @property
    def match(self):
        return self._parse()[0]

    @property
    def instructions(self):
        return self._parse()[1]


parser.OFPFlowStatsReply.cls_stats_body_cls = LazyFlowStats


class ReadBack:
    """What the flow-stats entries read back from switches parse to, by their bytes,
    while some switch is being read (`with READBACK:`); emptied when the last read ends.

    A controller (re)connecting to its hosts reads every flow of every switch, and most
    entries are byte for byte the same on several hosts (a port's flows on every host
    its switch spans) or share their instructions with others: each distinct entry, match
    and instruction list is parsed once (at 10 hosts / 1,000 ports, 36,630 entries are
    10,100 distinct ones, 8,131 matches and 3,671 instruction lists). A reported Flow is
    immutable, so one object serves every host that reported those bytes."""

    def __init__(self):
        self._lock = threading.Lock()
        self._readers = 0
        self.flows: dict = {}  # (table, priority, cookie, match and instruction bytes) -> Flow
        self.matches: dict = {}  # match bytes -> Match, or the ValueError's text
        self.actions: dict = {}  # instruction bytes -> action tuple
        self.action: dict = {}  # one action's bytes -> our action (a flood's hundred outputs: each once)
        self.field: dict = {}  # one match field's bytes (OXM TLV) -> (os-ken's name, value)

    def __enter__(self) -> "ReadBack":
        with self._lock:
            self._readers += 1
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._readers -= 1
            if self._readers == 0:  # nothing kept between reads: memory only while reading
                self.flows, self.matches, self.actions, self.action, self.field = {}, {}, {}, {}, {}


READBACK = ReadBack()


def _match_from_bytes(mb: bytes, known: dict) -> Match:
    """`from_match` of an ofp_match's bytes, each field (OXM TLV) parsed once per
    distinct bytes (`known`: TLV bytes -> (os-ken's field name, value))."""
    fields = {}
    o, end = 4, struct.unpack_from("!H", mb, 2)[0]  # ofp_match: type, length (fields, no padding)
    while o < end:
        tlv = mb[o:o + 4 + mb[o + 3]]  # oxm header: class, field and has-mask, payload length
        kv = known.get(tlv)
        if kv is None:
            one = struct.pack("!HH", ofp.OFPMT_OXM, 4 + len(tlv)) + tlv
            got = parser.OFPMatch.parser(one + bytes(-len(one) % 8), 0)._fields2
            kv = known[tlv] = got[0]
        name = _field(kv[0])
        if name not in FIELDS:
            raise ValueError(f"match field {name} is not one we model")
        fields[name] = kv[1]
        o += len(tlv)
    return Match.of(**fields)


def _instructions_from_bytes(ib: bytes, pipeline: Pipeline, known: dict) -> tuple:
    """`from_instructions` of an instruction list's bytes, each applied action parsed
    once per distinct bytes (`known`: action bytes -> our action)."""
    meter, acts, goto = [], [], []
    o = 0
    while o < len(ib):
        itype, ilen = struct.unpack_from("!HH", ib, o)
        if itype == ofp.OFPIT_APPLY_ACTIONS:
            a, end = o + ofp.OFP_INSTRUCTION_ACTIONS_SIZE, o + ilen
            while a < end:
                ab = ib[a:a + struct.unpack_from("!H", ib, a + 2)[0]]  # ofp_action_header: type, len
                v = known.get(ab)
                if v is None:
                    v = known[ab] = from_action(parser.OFPAction.parser(ab, 0), pipeline)
                acts.append(v)
                a += len(ab)
        else:  # meter, goto or one we never write: as from_instructions sorts them
            for v in from_instructions([parser.OFPInstruction.parser(ib, o)], pipeline):
                (meter if type(v) is Meter else goto if type(v) is Goto else acts).append(v)
        o += ilen
    return tuple(meter + acts + goto)


def flow_from_entry(st, pipeline: Pipeline, cache: ReadBack) -> Flow:
    """`flow_from_stats` of a `LazyFlowStats` entry not parsed yet, through `cache`:
    the same Flow value, parsed once per distinct bytes."""
    buf, off = st._buf, st._off
    if buf is None:  # already parsed (someone asked for its match): nothing to save
        return flow_from_stats(st, pipeline)
    start = off + ofp.OFP_FLOW_STATS_0_SIZE
    tail = bytes(buf[start:off + st.length])
    key = (st.table_id, st.priority, st.cookie, tail)
    f = cache.flows.get(key)
    if f is not None:
        return f
    mlen = (struct.unpack_from("!H", tail, 2)[0] + 7) // 8 * 8  # ofp_match: type, length; padded to 8
    mb, ib = tail[:mlen], tail[mlen:]
    match = cache.matches.get(mb)
    if match is None:
        try:
            match = _match_from_bytes(mb, cache.field)
        except ValueError as e:
            match = f"match: {e}"
        cache.matches[mb] = match
    if isinstance(match, str):  # as flow_from_stats: a match we do not model
        match, actions = Match(), (Opaque(match),)
    else:
        actions = cache.actions.get(ib)
        if actions is None:
            actions = cache.actions[ib] = _instructions_from_bytes(ib, pipeline, cache.action)
    f = cache.flows[key] = Flow.from_switch(table_of(st.table_id, pipeline), st.priority, match, actions, st.cookie)
    return f


# --------------------------------------------------------------------------------------
# Values -> os-ken messages
# --------------------------------------------------------------------------------------

def to_match(parser, m: Match):
    kw = {}
    for name, value, mask, _ in m.items:
        kw[name] = value if mask is None else (value, mask)
    return parser.OFPMatch(**kw)


def to_action(parser, ofp, a):
    if isinstance(a, Output):
        if a.port == CONTROLLER:  # the whole packet, never buffered
            return parser.OFPActionOutput(ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER)
        port = ofp.OFPP_IN_PORT if a.port == IN_PORT else a.port
        return parser.OFPActionOutput(port, 0)
    if isinstance(a, CheckPktLarger):
        return NXActionCheckPktLarger(a.length, a.field, a.bit)
    if isinstance(a, Log):
        return NXActionControllerMeter(a.meter_id)
    if isinstance(a, SetField):
        if a.mask is None:
            return parser.OFPActionSetField(**{a.field: a.value})
        lo, hi = a.bit_range()
        return parser.NXActionRegLoad(ofs_nbits=nicira_ext.ofs_nbits(lo, hi), dst=a.field,
                                      value=a.value >> lo)
    if isinstance(a, Move):
        return parser.NXActionRegMove(src_field=a.src, dst_field=a.dst,
                                      n_bits=FIELDS[a.src].bits, src_ofs=0, dst_ofs=0)
    if isinstance(a, Resubmit):
        # NXAST_RESUBMIT_TABLE carries a 16-bit (OpenFlow 1.0) port: 0xfff8 is IN_PORT
        return parser.NXActionResubmitTable(in_port=OFP10_IN_PORT, table_id=a.table.number)
    if isinstance(a, DecTtl):
        return parser.OFPActionDecNwTtl()
    if isinstance(a, Group):
        return parser.OFPActionGroup(a.group_id)
    if isinstance(a, Ct):
        nat = []
        if a.nat is not None:
            if not a.nat.kind:
                nat = [PaddedNAT(flags=0)]
            else:
                kw = {"range_ipv4_min": a.nat.ip, "range_ipv4_max": a.nat.ip}
                if a.nat.port:
                    kw.update(range_proto_min=a.nat.port, range_proto_max=a.nat.port)
                flag = NX_NAT_F_SRC if a.nat.kind == "src" else NX_NAT_F_DST
                nat = [PaddedNAT(flags=flag, **kw)]
        return parser.NXActionCT(
            flags=nicira_ext.NX_CT_F_COMMIT if a.commit else 0, zone_src="",
            zone_ofs_nbits=a.zone,
            recirc_table=a.table.number if a.table is not None else nicira_ext.NX_CT_RECIRC_NONE,
            alg=0, actions=nat)
    raise TypeError(f"no OpenFlow encoding for {a!r}")


def to_flow_mod(dp, f: Flow):
    """The reference encoding of a flow as an os-ken OFPFlowMod. Bundles are built by
    `ofwire.flow_mod`, which must equal it byte for byte (tests/unit/test_ofwire.py)."""
    ofp, parser = dp.ofproto, dp.ofproto_parser
    acts = [to_action(parser, ofp, a) for a in f.actions if not isinstance(a, (Goto, Meter))]
    inst = [parser.OFPInstructionMeter(a.meter_id) for a in f.actions if isinstance(a, Meter)]
    if acts:
        inst.append(parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, acts))
    if f.actions and isinstance(f.actions[-1], Goto):
        inst.append(parser.OFPInstructionGotoTable(f.actions[-1].table.number))
    return parser.OFPFlowMod(dp, cookie=f.cookie, cookie_mask=0, table_id=f.table.number,
                             command=ofp.OFPFC_ADD, idle_timeout=0, hard_timeout=0,
                             priority=f.priority, buffer_id=ofp.OFP_NO_BUFFER,
                             out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY, flags=0,
                             match=to_match(parser, f.match), instructions=inst)


def to_buckets(dp, g: Group) -> list:
    ofp, parser = dp.ofproto, dp.ofproto_parser
    if g.kind == "ff":  # fast failover: no weights; each bucket watches a port (or none)
        return [parser.OFPBucket(weight=0, watch_port=ofp.OFPP_ANY if w is None else w,
                                 watch_group=ofp.OFPG_ANY, actions=[to_action(parser, ofp, a) for a in bucket])
                for bucket, w in zip(g.buckets, g.watch)]
    return [parser.OFPBucket(weight=100, watch_port=ofp.OFPP_ANY, watch_group=ofp.OFPG_ANY,
                             actions=[to_action(parser, ofp, a) for a in bucket])
            for bucket in g.buckets]


def group_type(ofp, g: Group) -> int:
    return ofp.OFPGT_FF if g.kind == "ff" else ofp.OFPGT_SELECT


def buckets_signature(buckets) -> bytes:
    """Bytes that identify a bucket list, for ours and for what the switch reports."""
    out = bytearray()
    for b in buckets:
        for a in b.actions:  # what the switch sent back parses as os-ken's unpadded NAT
            for inner in getattr(a, "actions", None) or ():
                if type(inner) is parser.NXActionNAT:
                    inner.__class__ = PaddedNAT
        buf = bytearray()
        b.serialize(buf, 0)
        out += bytes(buf)
    return bytes(out)


def delete_cookie(dp, cookie: int):
    """Reference for `ofwire.delete_by_cookie`: delete every flow with this cookie."""
    ofp, parser = dp.ofproto, dp.ofproto_parser
    return parser.OFPFlowMod(dp, cookie=cookie, cookie_mask=ALL_ONES64, table_id=ofp.OFPTT_ALL,
                             command=ofp.OFPFC_DELETE, out_port=ofp.OFPP_ANY,
                             out_group=ofp.OFPG_ANY, match=parser.OFPMatch())


def delete_strict(dp, f: Flow):
    """Reference for `ofwire.delete_strict`: delete the one flow with f's identity
    (table, priority, match), whatever its cookie and actions."""
    ofp_, parser_ = dp.ofproto, dp.ofproto_parser
    return parser_.OFPFlowMod(dp, cookie=0, cookie_mask=0, table_id=f.table.number,
                              command=ofp_.OFPFC_DELETE_STRICT, priority=f.priority,
                              out_port=ofp_.OFPP_ANY, out_group=ofp_.OFPG_ANY,
                              match=to_match(parser_, f.match))


# --------------------------------------------------------------------------------------
# os-ken objects -> values (what the switch reports)
# --------------------------------------------------------------------------------------

def from_match(m) -> Match:
    fields = {}
    for name, value in m._fields2:
        name = _field(name)
        if name not in FIELDS:
            raise ValueError(f"match field {name} is not one we model")
        fields[name] = value
    return Match.of(**fields)


def _field(name: str) -> str:
    """os-ken names a field by its NXM form when OVS sent it so ("eth_src_nxm")."""
    return name[:-4] if name.endswith("_nxm") else name


def from_action(a, pipeline: Pipeline):
    try:
        return _from_action(a, pipeline)
    except (KeyError, ValueError, TypeError) as e:  # a value we would never have written
        return Opaque(f"{type(a).__name__}: {e}")


def _from_action(a, pipeline: Pipeline):
    t = type(a)
    if t is parser.OFPActionOutput:
        if a.port == ofp.OFPP_CONTROLLER:
            return Output(CONTROLLER) if a.max_len == ofp.OFPCML_NO_BUFFER else Opaque(f"controller:{a.max_len}")
        return Output(IN_PORT if a.port == ofp.OFPP_IN_PORT else a.port)
    if t is NXActionCheckPktLarger:
        return CheckPktLarger(a.pkt_len, a.dst, a.ofs)
    if t is NXActionControllerMeter:
        if a.others or a.meter_id is None:
            return Opaque(f"controller({a.others})")
        return Log(a.meter_id)
    if t is parser.OFPActionSetField:
        return SetField(_field(a.key), a.value)
    if t is parser.NXActionRegLoad:
        lo, nbits = a.ofs_nbits >> 6, (a.ofs_nbits & 0x3F) + 1
        return SetField(_field(a.dst), a.value << lo, ((1 << nbits) - 1) << lo)
    if t is parser.NXActionRegLoad2:
        if isinstance(a.value, tuple):
            return SetField(_field(a.dst), a.value[0], a.value[1])
        return SetField(_field(a.dst), a.value)
    if t is parser.NXActionRegMove:
        src, dst = _field(a.src_field), _field(a.dst_field)
        if a.src_ofs or a.dst_ofs or src not in FIELDS or a.n_bits != FIELDS[src].bits:
            return Opaque(f"move:{a.src_field}[{a.src_ofs}+{a.n_bits}]->{a.dst_field}[{a.dst_ofs}]")
        return Move(src, dst)
    if t is parser.NXActionResubmitTable:
        if a.in_port != OFP10_IN_PORT or a.table_id not in pipeline.by_number:
            return Opaque(f"resubmit({a.in_port},{a.table_id})")
        return Resubmit(pipeline.by_number[a.table_id])
    if t is parser.OFPActionDecNwTtl:
        return DecTtl()
    if t is parser.OFPActionGroup:
        return Group(a.group_id)
    if t is parser.NXActionCT:
        nat = None
        for inner in a.actions or ():
            if not isinstance(inner, parser.NXActionNAT) or nat is not None:
                return Opaque(f"ct with {type(inner).__name__}")
            if not inner.flags & (NX_NAT_F_SRC | NX_NAT_F_DST):
                nat = Nat()
            else:
                kind = "src" if inner.flags & NX_NAT_F_SRC else "dst"
                nat = Nat(kind, inner.range_ipv4_min or None, inner.range_proto_min or None)
        if a.zone_src or a.alg:
            return Opaque(f"ct(zone_src={a.zone_src},alg={a.alg})")
        table = None
        if a.recirc_table != nicira_ext.NX_CT_RECIRC_NONE:
            if a.recirc_table not in pipeline.by_number:
                return Opaque(f"ct(table={a.recirc_table})")
            table = pipeline.by_number[a.recirc_table]
        return Ct(zone=a.zone_ofs_nbits, commit=bool(a.flags & nicira_ext.NX_CT_F_COMMIT), table=table, nat=nat)
    return Opaque(type(a).__name__)


def from_instructions(instructions, pipeline: Pipeline) -> tuple:
    """Our action tuple: meter first, then the applied actions, then goto (as built)."""
    meter, acts, goto = [], [], []
    for i in instructions:
        t = type(i)
        if t is parser.OFPInstructionMeter:
            meter.append(Meter(i.meter_id))
        elif t is parser.OFPInstructionActions and i.type == ofp.OFPIT_APPLY_ACTIONS:
            acts += [from_action(a, pipeline) for a in i.actions]
        elif t is parser.OFPInstructionGotoTable and i.table_id in pipeline.by_number:
            goto.append(Goto(pipeline.by_number[i.table_id]))
        else:
            acts.append(Opaque(f"instruction {t.__name__}"))
    return tuple(meter + acts + goto)


def table_of(number: int, pipeline: Pipeline) -> Table:
    """The pipeline's table with this number, or a stand-in for one we never use."""
    t = pipeline.by_number.get(number)
    if t is None:
        t = Table(f"table{number}", frozenset(), number=number, layer="?")
    return t


def flow_from_stats(st, pipeline: Pipeline) -> Flow:
    """A flow-stats entry as the switch reported it, as our value (cookie as reported)."""
    try:
        match = from_match(st.match)
    except ValueError as e:
        match, actions = Match(), (Opaque(f"match: {e}"),)
    else:
        actions = from_instructions(st.instructions, pipeline)
    return Flow.from_switch(table_of(st.table_id, pipeline), st.priority, match, actions, st.cookie)
