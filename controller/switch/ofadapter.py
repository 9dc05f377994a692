"""The os-ken adapter: with `ofcodec` and `ofwire`, the only code that imports os-ken.

It turns our flow values into OpenFlow 1.3 messages (with Nicira extensions) at the
edge, and gives the controller a `Session` per connected switch that implements the
`Switch` protocol of `controller.switch.reconciler`: read the flows back as values, push strict
deletes and adds in one atomic bundle, meters, groups, ports. Event handlers unwrap
events and hand them to the core; they never block (waiting happens in the caller's
green thread).
"""
from __future__ import annotations

import logging
import threading

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_3
OFPPS_LIVE = ofproto_v1_3.OFPPS_LIVE  # a port state bit: fast failover may use it

from controller.switch import ofcodec
from controller.switch import ofwire
from controller.compile.pipeline import PIPELINE
from controller.transport.pki import peer_name
from dataplane.match_action import Flow, Group

LOG = logging.getLogger("nvctl.ofadapter")
REPLY_TIMEOUT = 60.0
COUNTER_TIMEOUT = 5.0  # a counter read gives up sooner: it only informs, and holds a reader while it waits
LIVENESS_INTERVAL = 0.25  # seconds between checks that each switch's connection is alive


class SwitchError(RuntimeError):
    """The switch refused something, or did not answer."""


# --------------------------------------------------------------------------------------
# A connected switch
# --------------------------------------------------------------------------------------

class _Waiter:
    def __init__(self):
        # A plain threading.Event: os-ken's hub runs native threads, and its Event's
        # wait(timeout) starts a threading.Timer thread per call (a thread per request
        # to a switch; measured: a third of the CPU of a counter read).
        self.event = threading.Event()
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
        # ofport -> name of every port on the switch: complete when the session is made
        # (os-ken reads the port descriptions before it calls the switch up), then kept
        # by our own PortStatus handler, in the order of this switch's other messages
        # (os-ken's own copy, dp.ports, is updated by another app's handler: not
        # ordered with ours).
        self._ports: dict[int, str] = {no: _port_name(p) for no, p in (dp.ports or {}).items()}
        # ofport -> OpenFlow's LIVE state bit (what a fast-failover bucket watching it sees;
        # a BFD tunnel's follows its session), kept the same way
        self._live: dict[int, bool] = {no: bool(p.state & OFPPS_LIVE) for no, p in (dp.ports or {}).items()}

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

    def _wait(self, waiter: _Waiter, xids: list[int], what: str, timeout: float = None) -> list:
        timeout = REPLY_TIMEOUT if timeout is None else timeout
        try:
            if not waiter.event.wait(timeout=timeout):
                raise SwitchError(f"{what}: no answer in {timeout:.0f}s")
            if waiter.errors:
                raise SwitchError(f"{what}: {'; '.join(waiter.errors[:3])}")
            return waiter.replies
        finally:
            for x in xids:
                self._waiters.pop(x, None)

    # the three calls -------------------------------------------------------------------
    def flows(self) -> list[Flow]:
        """Every flow on the switch (flow stats, all tables) as our values: match and
        actions as the switch reports them, with the cookie it holds."""
        ofp, parser = self.dp.ofproto, self.dp.ofproto_parser
        req = parser.OFPFlowStatsRequest(self.dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY,
                                         0, 0, parser.OFPMatch())
        w = _Waiter()
        with ofcodec.READBACK as cache:  # entries other switches report too are parsed once
            xid = self._send(req, w)
            out: list[Flow] = []
            for reply in self._wait(w, [xid], "flow stats"):
                for st in reply.body:
                    out.append(ofcodec.flow_from_entry(st, PIPELINE, cache))
        return out

    def flow_counts(self, cookie: int = 0, cookie_mask: int = 0) -> list[tuple[int, int, int]]:
        """(cookie, packets, bytes) of every flow whose cookie matches `cookie` under
        `cookie_mask` (a tenant's bits: only its flows cross the wire)."""
        ofp, parser = self.dp.ofproto, self.dp.ofproto_parser
        req = parser.OFPFlowStatsRequest(self.dp, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY,
                                         cookie, cookie_mask, parser.OFPMatch())
        w = _Waiter()
        xid = self._send(req, w)
        return [(st.cookie, st.packet_count, st.byte_count)
                for reply in self._wait(w, [xid], "flow stats", COUNTER_TIMEOUT) for st in reply.body]

    def meter_counts(self) -> dict[int, tuple[int, int]]:
        """meter id -> (packets, bytes) its drop band dropped, for every meter."""
        ofp, parser = self.dp.ofproto, self.dp.ofproto_parser
        w = _Waiter()
        xid = self._send(parser.OFPMeterStatsRequest(self.dp, 0, ofp.OFPM_ALL), w)
        out = {}
        for reply in self._wait(w, [xid], "meter stats", COUNTER_TIMEOUT):
            for m in reply.body:
                bands = m.band_stats or []
                out[m.meter_id] = (sum(b.packet_band_count for b in bands), sum(b.byte_band_count for b in bands))
        return out

    def group_counts(self) -> dict[int, list[tuple[int, int]]]:
        """group id -> [(packets, bytes)] per bucket, for every group."""
        ofp, parser = self.dp.ofproto, self.dp.ofproto_parser
        w = _Waiter()
        xid = self._send(parser.OFPGroupStatsRequest(self.dp, 0, ofp.OFPG_ALL), w)
        return {g.group_id: [(b.packet_count, b.byte_count) for b in g.bucket_stats]
                for reply in self._wait(w, [xid], "group stats", COUNTER_TIMEOUT) for g in reply.body}

    def push(self, delete: list[Flow], add: list[Flow], reset: frozenset = frozenset()) -> int:
        """Delete flows strictly by identity (table, priority, match), then ADD flows
        (replacing any with the same identity, counters kept), in one atomic ordered
        bundle; returns the number of flow-mods sent. Raises SwitchError if the switch
        refused any of it.

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
            for f, x in zip(delete, xids):
                buf += ofwire.bundle_add(bid, flags, ofwire.delete_strict(f, x))
            for f, x in zip(add, xids[len(delete):]):
                buf += ofwire.bundle_add(bid, flags, ofwire.flow_mod(f, x, f.identity in reset))
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

    def meters(self) -> dict[int, tuple]:
        """meter id -> (rate, burst, "kbps" or "pktps") of every meter on the switch."""
        ofp, parser = self.dp.ofproto, self.dp.ofproto_parser
        w = _Waiter()
        xid = self._send(parser.OFPMeterConfigStatsRequest(self.dp, 0, ofp.OFPM_ALL), w)
        out = {}
        for reply in self._wait(w, [xid], "meter config"):
            for m in reply.body:
                band = m.bands[0] if m.bands else None
                unit = "pktps" if m.flags & ofp.OFPMF_PKTPS else "kbps"
                out[m.meter_id] = (band.rate, band.burst_size, unit) if band else (0, 0, unit)
        return out

    def set_meters(self, put: dict[int, tuple[int, int]], existing: set[int], delete: list[int]) -> int:
        """Add or modify meters in `put` (modify those in `existing`), delete `delete`;
        waits for a barrier. Returns the number of meter-mods."""
        if not put and not delete:
            return 0
        dp = self.dp
        ofp, parser = dp.ofproto, dp.ofproto_parser
        msgs = []
        for mid, (rate, burst, unit) in sorted(put.items()):
            cmd = ofp.OFPMC_MODIFY if mid in existing else ofp.OFPMC_ADD
            per = ofp.OFPMF_PKTPS if unit == "pktps" else ofp.OFPMF_KBPS
            msgs.append(parser.OFPMeterMod(dp, command=cmd, flags=per | ofp.OFPMF_BURST,
                                           meter_id=mid, bands=[parser.OFPMeterBandDrop(rate, burst)]))
        for mid in sorted(delete):
            msgs.append(parser.OFPMeterMod(dp, command=ofp.OFPMC_DELETE, flags=0, meter_id=mid, bands=[]))
        with self._lock:
            w = _Waiter()
            xids = [self._send(m, w) for m in msgs]
            xids.append(self._send(parser.OFPBarrierRequest(dp), w))
            self._wait(w, xids, f"{len(msgs)} meter-mods")
        return len(msgs)

    def _group_descs(self) -> list:
        parser = self.dp.ofproto_parser
        w = _Waiter()
        xid = self._send(parser.OFPGroupDescStatsRequest(self.dp, 0), w)
        return [g for reply in self._wait(w, [xid], "group desc") for g in reply.body]

    def groups(self) -> dict[int, bytes]:
        """group id -> signature of its buckets, for every group on the switch."""
        return {g.group_id: ofcodec.buckets_signature(g.buckets) for g in self._group_descs()}

    def group_buckets(self) -> dict[int, list[tuple]]:
        """group id -> its buckets as our action tuples, as the switch holds them."""
        return {g.group_id: [tuple(ofcodec.from_action(a, PIPELINE) for a in b.actions) for b in g.buckets]
                for g in self._group_descs()}

    def group_signature(self, g: Group) -> bytes:
        return ofcodec.buckets_signature(ofcodec.to_buckets(self.dp, g))

    def set_groups(self, put: dict, existing: set[int], delete: list[int]) -> int:
        """Add or modify select groups in `put` (id -> Group), delete `delete`; waits for
        a barrier. Returns the number of group-mods."""
        if not put and not delete:
            return 0
        dp = self.dp
        ofp, parser = dp.ofproto, dp.ofproto_parser
        msgs = [parser.OFPGroupMod(dp, command=ofp.OFPGC_MODIFY if gid in existing else ofp.OFPGC_ADD,
                                   type_=ofcodec.group_type(ofp, g), group_id=gid, buckets=ofcodec.to_buckets(dp, g))
                for gid, g in sorted(put.items())]
        msgs += [parser.OFPGroupMod(dp, command=ofp.OFPGC_DELETE, type_=ofp.OFPGT_SELECT, group_id=gid,
                                    buckets=[]) for gid in sorted(delete)]
        with self._lock:
            w = _Waiter()
            xids = [self._send(m, w) for m in msgs]
            xids.append(self._send(parser.OFPBarrierRequest(dp), w))
            self._wait(w, xids, f"{len(msgs)} group-mods")
        return len(msgs)

    def role(self, role: str, generation: int) -> str:
        """Ask for an OpenFlow role ("master", "slave" or "equal") with this generation
        id; returns the role the switch gave. A master or slave request with an older
        generation than the switch has seen is refused (OFPRRFC_STALE): SwitchError."""
        ofp, parser = self.dp.ofproto, self.dp.ofproto_parser
        code = {"master": ofp.OFPCR_ROLE_MASTER, "slave": ofp.OFPCR_ROLE_SLAVE, "equal": ofp.OFPCR_ROLE_EQUAL}[role]
        what = f"role {role} (generation {generation})"
        w, wb = _Waiter(), _Waiter()
        xid = self._send(parser.OFPRoleRequest(self.dp, code, generation), w)
        bx = self._send(parser.OFPBarrierRequest(self.dp), wb)  # a refusal has no reply to wait for
        try:
            self._wait(wb, [bx], what)
        finally:
            self._waiters.pop(xid, None)
        if w.errors or not w.replies:
            raise SwitchError(f"{what}: {'; '.join(w.errors[:3]) or 'no answer'}")
        reply = w.replies[0]
        return {ofp.OFPCR_ROLE_MASTER: "master", ofp.OFPCR_ROLE_SLAVE: "slave",
                ofp.OFPCR_ROLE_EQUAL: "equal"}.get(reply.role, str(reply.role))

    def packet_out(self, port: int, data: bytes) -> None:
        """Send one frame out of `port`, from the controller (not through the pipeline)."""
        dp = self.dp
        ofp, parser = dp.ofproto, dp.ofproto_parser
        self._send(parser.OFPPacketOut(dp, buffer_id=ofp.OFP_NO_BUFFER, in_port=ofp.OFPP_CONTROLLER,
                                       actions=[parser.OFPActionOutput(port, 0)], data=data))

    def ports(self) -> dict[int, str]:
        """ofport -> interface name, as the switch reported them."""
        return dict(self._ports)

    def live(self) -> dict[int, bool]:
        """ofport -> whether the switch holds it live (fast-failover's view)."""
        return dict(self._live)

    def on_port_status(self, port_no: int, name: str, gone: bool, live: bool | None = None) -> bool:
        """Follow a port status; True when it changed the port's liveness."""
        if gone:
            if self._ports.get(port_no) == name:
                del self._ports[port_no]
                self._live.pop(port_no, None)
            return False
        self._ports[port_no] = name
        if live is None:
            return False
        was = self._live.get(port_no)
        self._live[port_no] = live
        return was is not None and was != live


def _port_name(desc) -> str:
    return desc.name.decode() if isinstance(desc.name, bytes) else desc.name


# --------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------

class NvApp(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.core = None
        self.sessions: dict[int, Session] = {}
        # switches that connected before the core was attached (it loads its state while
        # OpenFlow already listens): handed to it by attach, those still connected
        self.waiting: dict[int, Session] = {}

    def attach(self, core) -> None:
        self.core = core
        hub.spawn(self._watch_liveness)
        waiting, self.waiting = self.waiting, {}
        for dpid, s in waiting.items():
            if s.dp.is_active and getattr(s.dp, "socket", None) is not None:
                self._admit(s)

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
            if self.core is None:  # the core is still loading: attach hands it over
                self.waiting[dp.id] = s
                return
            self._admit(s)
        elif ev.state == DEAD_DISPATCHER:
            w = self.waiting.get(dp.id)
            if w is not None and w.dp is dp:
                del self.waiting[dp.id]
                w.close()
            s = self.sessions.get(dp.id)
            if s is not None and s.dp is dp:
                self._gone(dp.id, s)

    def _admit(self, s: "Session") -> None:
        dp = s.dp
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

    def _session(self, msg) -> Session | None:
        s = self.sessions.get(msg.datapath.id) or self.waiting.get(msg.datapath.id)  # waiting: its ports follow
        return s if s is not None and s.dp is msg.datapath else None

    @set_ev_cls([ofp_event.EventOFPFlowStatsReply, ofp_event.EventOFPMeterConfigStatsReply,
                 ofp_event.EventOFPGroupDescStatsReply, ofp_event.EventOFPMeterStatsReply,
                 ofp_event.EventOFPGroupStatsReply], MAIN_DISPATCHER)
    def _multipart_reply(self, ev):
        s = self._session(ev.msg)
        if s:
            s.on_reply(ev.msg, not ev.msg.flags & ev.msg.datapath.ofproto.OFPMPF_REPLY_MORE)

    @set_ev_cls(ofp_event.EventOFPRoleReply, MAIN_DISPATCHER)
    def _role_reply(self, ev):
        s = self._session(ev.msg)
        if s:
            s.on_reply(ev.msg, True)

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _barrier(self, ev):
        s = self._session(ev.msg)
        if s:
            s.on_reply(ev.msg, True)

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev):
        msg = ev.msg
        s = self._session(msg)
        table = PIPELINE.by_number.get(msg.table_id)
        if s is None or table is None or self.core is None:
            return
        m = msg.match
        regs = {k: m[k] for k in ("reg13", "reg14") if k in m}
        try:
            self.core.packet_in(s, table.name, regs, m.get("in_port", 0), bytes(msg.data), msg.cookie)
        except Exception:  # one bad packet must not stop the app's event loop
            LOG.exception("packet-in from %016x (table %s)", msg.datapath.id, table.name)

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def _port_status(self, ev):
        """A port added, deleted or changed on a switch: the session's port list follows
        at once (no I/O here), and an added or deleted one asks the core to read that
        host's interfaces again (in the background: controller.server.bindings)."""
        msg = ev.msg
        s = self._session(msg)
        if s is None:
            return
        ofp = msg.datapath.ofproto
        if msg.reason not in (ofp.OFPPR_ADD, ofp.OFPPR_DELETE, ofp.OFPPR_MODIFY):
            return
        state = getattr(msg.desc, "state", None)
        flipped = s.on_port_status(msg.desc.port_no, _port_name(msg.desc), msg.reason == ofp.OFPPR_DELETE,
                                   None if state is None else bool(state & OFPPS_LIVE))
        if self.core is not None and flipped:  # a BFD session came up or went down
            try:
                self.core.port_liveness_changed(s, msg.desc.port_no, s.live()[msg.desc.port_no])
            except Exception:  # one bad event must not stop the app's event loop
                LOG.exception("port liveness from %016x", msg.datapath.id)
        if self.core is not None and msg.reason != ofp.OFPPR_MODIFY:  # a link's state: not who is there
            try:
                self.core.switch_ports_changed(s)
            except Exception:  # one bad event must not stop the app's event loop
                LOG.exception("port status from %016x", msg.datapath.id)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, MAIN_DISPATCHER)
    def _error(self, ev):
        s = self._session(ev.msg)
        if s is None or not s.on_error(ev.msg):
            LOG.warning("unsolicited error from %s: type=%s code=%s", ev.msg.datapath.id,
                        ev.msg.type, ev.msg.code)
