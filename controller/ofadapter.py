"""The os-ken adapter: with `ofwire` (its fast encoder), the only code that imports os-ken.

It turns our flow values into OpenFlow 1.3 messages (with Nicira extensions) at the
edge, and gives the controller core a `Session` per connected switch with three calls:
read the installed cookies, push a batch of deletes and adds in one atomic bundle, and
the list of ports. Event handlers unwrap events and hand them to the core; they never
block (waiting happens in the caller's green thread).
"""
from __future__ import annotations

import logging
import threading

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.lib import hub
from os_ken.ofproto import nicira_ext, ofproto_v1_3, ofproto_v1_3_parser

from controller import ofwire
from controller.pki import peer_name
from dataplane.match_action import (FIELDS, IN_PORT, Ct, DecTtl, Flow, Goto, Group, Match, Meter,
                                    Move, Output, Resubmit, SetField)

LOG = logging.getLogger("nvctl.ofadapter")
ALL_ONES64 = 0xFFFFFFFFFFFFFFFF
REPLY_TIMEOUT = 60.0
OFP10_IN_PORT = 0xFFF8
LIVENESS_INTERVAL = 0.25  # seconds between checks that each switch's connection is alive
NX_NAT_F_SRC, NX_NAT_F_DST = 1 << 0, 1 << 1  # OVS nx-match.h


class SwitchError(RuntimeError):
    """The switch refused something, or did not answer."""


class PaddedNAT(ofproto_v1_3_parser.NXActionNAT):
    """os-ken 4.2 leaves NXAST_NAT's body unpadded when a port range is present (28
    bytes), while the enclosing length says 32: OVS refuses such a group-mod with
    OFPBRC_BAD_LEN. Pad the body so header (10 bytes) + body is a multiple of 8."""

    def serialize_body(self):
        data = super().serialize_body()
        return data + bytes((-(10 + len(data))) % 8)


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
        port = ofp.OFPP_IN_PORT if a.port == IN_PORT else a.port
        return parser.OFPActionOutput(port, 0)
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
    return [parser.OFPBucket(weight=100, watch_port=ofp.OFPP_ANY, watch_group=ofp.OFPG_ANY,
                             actions=[to_action(parser, ofp, a) for a in bucket])
            for bucket in g.buckets]


def buckets_signature(buckets) -> bytes:
    """Bytes that identify a bucket list, for ours and for what the switch reports."""
    out = bytearray()
    for b in buckets:
        for a in b.actions:  # what the switch sent back parses as os-ken's unpadded NAT
            for inner in getattr(a, "actions", None) or ():
                if type(inner) is ofproto_v1_3_parser.NXActionNAT:
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


# --------------------------------------------------------------------------------------
# A connected switch
# --------------------------------------------------------------------------------------

class _Waiter:
    def __init__(self):
        self.event = hub.Event()
        self.replies: list = []
        self.errors: list = []


class Session:
    """One connected br-int. Methods block the calling green thread, never the app."""

    def __init__(self, dp):
        self.dp = dp
        self.dpid: int = dp.id
        getpeercert = getattr(dp.socket, "getpeercert", None)  # TLS: the verified certificate
        self.peer_name = peer_name(getpeercert()) if getpeercert else None
        self._waiters: dict[int, _Waiter] = {}
        self._bundle_ids = iter(range(1, 1 << 31))
        self._lock = threading.Lock()
        self.alive = True

    # replies, routed here by the app -------------------------------------------------
    def on_reply(self, msg, last: bool) -> None:
        w = self._waiters.get(msg.xid)
        if w is not None:
            w.replies.append(msg)
            if last:
                w.event.set()

    def on_error(self, msg) -> bool:
        w = self._waiters.get(msg.xid)
        if w is None:
            return False
        w.errors.append(f"type={msg.type} code={msg.code} data={bytes(msg.data)[:64].hex()}")
        return True

    def close(self) -> None:
        self.alive = False
        for w in list(self._waiters.values()):
            w.errors.append("switch disconnected")
            w.event.set()

    def _send(self, msg, waiter: _Waiter | None = None) -> int:
        if not self.alive:
            raise SwitchError("switch disconnected")
        self.dp.set_xid(msg)
        if waiter is not None:
            self._waiters[msg.xid] = waiter
        if not self.dp.send_msg(msg):
            raise SwitchError("switch disconnected")
        return msg.xid

    def _wait(self, waiter: _Waiter, xids: list[int], what: str) -> list:
        try:
            if not waiter.event.wait(timeout=REPLY_TIMEOUT):
                raise SwitchError(f"{what}: no answer in {REPLY_TIMEOUT:.0f}s")
            if waiter.errors:
                raise SwitchError(f"{what}: {'; '.join(waiter.errors[:3])}")
            return waiter.replies
        finally:
            for x in xids:
                self._waiters.pop(x, None)

    # the three calls -------------------------------------------------------------------
    def installed(self) -> dict[int, int]:
        """cookie -> table number of every flow on the switch (flow stats, all tables)."""
        ofp, parser = self.dp.ofproto, self.dp.ofproto_parser
        req = parser.OFPFlowStatsRequest(self.dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY,
                                         0, 0, parser.OFPMatch())
        w = _Waiter()
        xid = self._send(req, w)
        out: dict[int, int] = {}
        for reply in self._wait(w, [xid], "flow stats"):
            for st in reply.body:
                out[st.cookie] = st.table_id
        return out

    def push(self, delete: list[int], add: list[Flow]) -> int:
        """Delete flows by cookie, then add flows, in one atomic ordered bundle; returns the
        number of flow-mods sent. Raises SwitchError if the switch refused any of it.

        The bundle's contents are encoded by `ofwire` (cached pieces, byte-identical to
        os-ken's) and written as one buffer: a resync of 10,000 flows is one write."""
        n = len(delete) + len(add)
        if n == 0:
            return 0
        dp = self.dp
        with self._lock:
            ofp, parser = dp.ofproto, dp.ofproto_parser
            if not self.alive:
                raise SwitchError("switch disconnected")
            bid = next(self._bundle_ids)
            flags = ofp.ONF_BF_ATOMIC | ofp.ONF_BF_ORDERED
            w = _Waiter()
            # Encode everything before anything is sent: a value we cannot encode must
            # not leave a half-sent bundle on the switch.
            xids = self._reserve_xids(n)
            buf = bytearray()
            for c, x in zip(delete, xids):
                buf += ofwire.bundle_add(bid, flags, ofwire.delete_by_cookie(c, x))
            for f, x in zip(add, xids[len(delete):]):
                buf += ofwire.bundle_add(bid, flags, ofwire.flow_mod(f, x))
            for x in xids:
                self._waiters[x] = w
            try:
                xids.append(self._send(parser.ONFBundleCtrlMsg(dp, bid, ofp.ONF_BCT_OPEN_REQUEST, flags, []), w))
                if not dp.send(bytes(buf)):
                    raise SwitchError("switch disconnected")
                xids.append(self._send(parser.ONFBundleCtrlMsg(dp, bid, ofp.ONF_BCT_COMMIT_REQUEST, flags, []), w))
                # OVS answers in order: any error for the xids above arrives before the
                # barrier reply, which is the only reply that ends the wait.
                xids.append(self._send(parser.OFPBarrierRequest(dp), w))
            except Exception:
                for x in xids:
                    self._waiters.pop(x, None)
                raise
            self._wait(w, xids, f"bundle of {n} flow-mods")
            return n

    def _reserve_xids(self, n: int) -> list[int]:
        """The next n xids of the datapath's counter (wrapping), taken from it."""
        dp = self.dp
        top = dp.ofproto.MAX_XID
        xids = [(dp.xid + i) & top for i in range(1, n + 1)]
        dp.xid = (dp.xid + n) & top
        return xids

    def meters(self) -> dict[int, tuple[int, int]]:
        """meter id -> (rate kbit/s, burst kbit) of every meter on the switch."""
        ofp, parser = self.dp.ofproto, self.dp.ofproto_parser
        w = _Waiter()
        xid = self._send(parser.OFPMeterConfigStatsRequest(self.dp, 0, ofp.OFPM_ALL), w)
        out = {}
        for reply in self._wait(w, [xid], "meter config"):
            for m in reply.body:
                band = m.bands[0] if m.bands else None
                out[m.meter_id] = (band.rate, band.burst_size) if band else (0, 0)
        return out

    def set_meters(self, put: dict[int, tuple[int, int]], existing: set[int], delete: list[int]) -> int:
        """Add or modify meters in `put` (modify those in `existing`), delete `delete`;
        waits for a barrier. Returns the number of meter-mods."""
        if not put and not delete:
            return 0
        dp = self.dp
        ofp, parser = dp.ofproto, dp.ofproto_parser
        msgs = []
        for mid, (rate, burst) in sorted(put.items()):
            cmd = ofp.OFPMC_MODIFY if mid in existing else ofp.OFPMC_ADD
            msgs.append(parser.OFPMeterMod(dp, command=cmd, flags=ofp.OFPMF_KBPS | ofp.OFPMF_BURST,
                                           meter_id=mid, bands=[parser.OFPMeterBandDrop(rate, burst)]))
        for mid in sorted(delete):
            msgs.append(parser.OFPMeterMod(dp, command=ofp.OFPMC_DELETE, flags=0, meter_id=mid, bands=[]))
        with self._lock:
            w = _Waiter()
            xids = [self._send(m, w) for m in msgs]
            xids.append(self._send(parser.OFPBarrierRequest(dp), w))
            self._wait(w, xids, f"{len(msgs)} meter-mods")
        return len(msgs)

    def groups(self) -> dict[int, bytes]:
        """group id -> signature of its buckets, for every group on the switch."""
        parser = self.dp.ofproto_parser
        w = _Waiter()
        xid = self._send(parser.OFPGroupDescStatsRequest(self.dp, 0), w)
        out = {}
        for reply in self._wait(w, [xid], "group desc"):
            for g in reply.body:
                out[g.group_id] = buckets_signature(g.buckets)
        return out

    def group_signature(self, g: Group) -> bytes:
        return buckets_signature(to_buckets(self.dp, g))

    def set_groups(self, put: dict, existing: set[int], delete: list[int]) -> int:
        """Add or modify select groups in `put` (id -> Group), delete `delete`; waits for
        a barrier. Returns the number of group-mods."""
        if not put and not delete:
            return 0
        dp = self.dp
        ofp, parser = dp.ofproto, dp.ofproto_parser
        msgs = [parser.OFPGroupMod(dp, command=ofp.OFPGC_MODIFY if gid in existing else ofp.OFPGC_ADD,
                                   type_=ofp.OFPGT_SELECT, group_id=gid, buckets=to_buckets(dp, g))
                for gid, g in sorted(put.items())]
        msgs += [parser.OFPGroupMod(dp, command=ofp.OFPGC_DELETE, type_=ofp.OFPGT_SELECT, group_id=gid,
                                    buckets=[]) for gid in sorted(delete)]
        with self._lock:
            w = _Waiter()
            xids = [self._send(m, w) for m in msgs]
            xids.append(self._send(parser.OFPBarrierRequest(dp), w))
            self._wait(w, xids, f"{len(msgs)} group-mods")
        return len(msgs)

    def ports(self) -> dict[int, str]:
        """ofport -> interface name, as the switch reported them."""
        return {no: (p.name.decode() if isinstance(p.name, bytes) else p.name)
                for no, p in (self.dp.ports or {}).items()}


# --------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------

class NvApp(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.core = None
        self.sessions: dict[int, Session] = {}

    def attach(self, core) -> None:
        self.core = core
        hub.spawn(self._watch_liveness)

    def _watch_liveness(self) -> None:
        """os-ken 4.2 does not always emit the DEAD state change when a switch's
        connection drops (seen here: the socket closed, no event), so sessions whose
        datapath stopped serving are reaped here."""
        while True:
            hub.sleep(LIVENESS_INTERVAL)
            for dpid, s in list(self.sessions.items()):
                if not s.dp.is_active or getattr(s.dp, "socket", None) is None or s.dp.socket.fileno() < 0:
                    self._gone(dpid, s)

    def _gone(self, dpid: int, s: "Session") -> None:
        if self.sessions.get(dpid) is s:
            del self.sessions[dpid]
            LOG.info("switch %016x disconnected", dpid)
            s.close()
            hub.spawn(self.core.switch_disconnected, s)

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change(self, ev):
        dp = ev.datapath
        if dp.id is None:
            return
        if ev.state == MAIN_DISPATCHER:
            s = Session(dp)
            if not self.core.admit(dp.id, s.peer_name):
                LOG.warning("switch %016x refused: certificate %r does not belong to its host",
                            dp.id, s.peer_name)
                dp.close()
                return
            old = self.sessions.get(dp.id)
            if old is not None:
                old.close()
            self.sessions[dp.id] = s
            hub.spawn(self.core.switch_connected, s)
        elif ev.state == DEAD_DISPATCHER:
            s = self.sessions.get(dp.id)
            if s is not None and s.dp is dp:
                self._gone(dp.id, s)

    def _session(self, msg) -> Session | None:
        s = self.sessions.get(msg.datapath.id)
        return s if s is not None and s.dp is msg.datapath else None

    @set_ev_cls([ofp_event.EventOFPFlowStatsReply, ofp_event.EventOFPMeterConfigStatsReply,
                 ofp_event.EventOFPGroupDescStatsReply], MAIN_DISPATCHER)
    def _multipart_reply(self, ev):
        s = self._session(ev.msg)
        if s:
            s.on_reply(ev.msg, not ev.msg.flags & ev.msg.datapath.ofproto.OFPMPF_REPLY_MORE)

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _barrier(self, ev):
        s = self._session(ev.msg)
        if s:
            s.on_reply(ev.msg, True)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, MAIN_DISPATCHER)
    def _error(self, ev):
        s = self._session(ev.msg)
        if s is None or not s.on_error(ev.msg):
            LOG.warning("unsolicited error from %s: type=%s code=%s", ev.msg.datapath.id,
                        ev.msg.type, ev.msg.code)
