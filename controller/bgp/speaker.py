"""A small BGP-4 speaker: announces the controller's routes, learns its peers' routes.

What it is for. The controller tells the fabric's routers where tenant addresses live
(a /32 whose next hop is the hypervisor or gateway that holds it: a *third-party* next hop,
RFC 4271 5.1.3, never the controller's own address) and learns the routes the routers
announce. The controller is plain threads, so this is plain threads and blocking sockets
(no asyncio, no eventlet), with os-ken's message codec (os_ken.lib.packet.bgp) for the
bytes on the wire.

Why not os-ken's own BGPSpeaker: it sends no graceful-restart capability and no End-of-RIB,
and the controller restarts (upgrades, fail-over) must not take tenant routes out of the
fabric. With graceful restart (RFC 4724) a router keeps our routes, marked stale, while we
are away, and replaces them with what we send after we come back, up to our End-of-RIB.

The subset of BGP-4 spoken:
- one session per configured peer; we connect to it (active) and retry every
  connect_retry seconds; with ``listen=(host, port)`` the speaker instead accepts the
  peers' connections (passive only, so there is never a connection collision to resolve:
  RFC 4271 6.8 is not implemented). A new connection from a peer that has a session
  replaces it, as a restarting peer's would.
- OPEN with the capabilities multiprotocol IPv4 unicast, route refresh, 4-octet AS
  (AS_TRANS in the 2-octet field when our AS does not fit) and graceful restart (our
  restart time, "forwarding state preserved" for IPv4 unicast: the hypervisors keep
  forwarding while the controller is away).
- IPv4 unicast only, in the classic UPDATE fields. MP_REACH/MP_UNREACH are ignored except
  as an IPv4 End-of-RIB.
- what we send: ORIGIN IGP, AS_PATH [our AS] (AS_SEQUENCE), NEXT_HOP as given. Nothing
  else: eBGP only (no LOCAL_PREF), no policy, no MED.
- what we learn: every IPv4 route of every peer (one per (peer, prefix): a peer's newer
  announcement replaces its older one); a route whose AS_PATH holds our AS is not learned
  (a loop). No best path across peers: the caller decides.
- a peer's routes after its session ends: kept, marked stale, for the restart time it
  advertised when the session ended by TCP loss or hold timer expiry and it had advertised
  graceful restart; dropped at once otherwise (a NOTIFICATION means the peer wanted them
  gone). Stale routes it does not re-announce are dropped at its End-of-RIB, or when its
  restart time runs out.

Each peer has one thread that owns its socket and its session state; every message we
send is sent from that thread. Other threads (announce, stop) change shared state under
the speaker's lock and wake the peer's thread through a socketpair.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass

from os_ken.lib.packet import bgp

log = logging.getLogger("nvctl.bgp")

AFI_IPV4, SAFI_UNICAST = 1, 1
GR_FORWARDING_PRESERVED = 0x80  # per-AFI flag in the graceful-restart capability
HEADER_LEN, MAX_LEN = 19, 4096
PREFIXES_PER_UPDATE = 500  # 5 bytes each at most for a /32: an UPDATE stays under 4096 bytes
OPEN_WAIT = 30.0  # hold time before the peer's OPEN: RFC 4271 wants a "large value"
CONNECT_TIMEOUT = 5.0
TICK = 0.5  # longest sleep of a peer thread: stale-route expiry is checked at least this often


@dataclass(frozen=True)
class PeerConfig:
    address: str          # IPv4
    asn: int
    port: int = 179


@dataclass(frozen=True)
class Learned:
    prefix: str           # "198.18.0.0/24" (normalized ipaddress.IPv4Network str)
    next_hop: str
    peer: str             # the peer's address
    peer_asn: int
    as_path: tuple[int, ...]
    stale: bool = False   # kept under the peer's graceful restart


class _SessionEnd(Exception):
    """The session is over. `keep`: the peer's routes may be kept as stale (the session was
    lost, not closed on purpose)."""

    def __init__(self, why: str, keep: bool = False):
        super().__init__(why)
        self.keep = keep


class _Stopping(_SessionEnd):
    def __init__(self):
        super().__init__("speaker stopped")


class Speaker:
    def __init__(self, asn: int, router_id: str, peers: list[PeerConfig], on_learned=None,
                 hold_time: int = 9, restart_time: int = 120, connect_retry: float = 1.0,
                 local_address: str | None = None, name: str = "bgp",
                 listen: tuple[str, int] | None = None):
        """on_learned(): called (no args, from the speaker's thread, must not block long) whenever
        the set of learned routes changes.

        listen=(host, port): accept the peers' connections there instead of connecting to them
        (passive mode; a connection from an address that is not a configured peer is closed)."""
        if hold_time and hold_time < 3:
            raise ValueError("hold_time must be 0 or at least 3 s (RFC 4271 4.2)")
        self.asn, self.router_id, self.name = asn, router_id, name
        self.hold_time, self.restart_time = hold_time, min(restart_time, 0xFFF)
        self.connect_retry, self.local_address, self.listen = connect_retry, local_address, listen
        self.on_learned = on_learned
        self._lock = threading.Lock()
        self._desired: dict[str, str] = {}
        self._started = self._stopping = False
        self._graceful_stop = True
        self._peers = [_Peer(self, p) for p in peers]
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None

    # -- the API --

    def start(self) -> None:
        # once: stop() ends the peers' threads and closes their wake-up sockets; a restarted
        # controller makes a new Speaker (and that is what its peers see as a restart)
        if self._started:
            raise RuntimeError("a Speaker starts once")
        self._started = True
        if self.listen:
            self._listener = socket.create_server(self.listen, reuse_port=False)
            self._listener.settimeout(TICK)
            self._spawn(self._accept_loop, f"{self.name}-listen")
        for p in self._peers:
            self._spawn(p.run, f"{self.name}-{p.cfg.address}")

    def stop(self, graceful: bool = True) -> None:
        """graceful: close the connections without a NOTIFICATION, as a crash would, so peers
        that got our graceful-restart capability keep our routes (stale) until a new Speaker
        sends End-of-RIB; else a Cease (administrative shutdown) first: peers withdraw them.
        Returns within about a second; learned() is empty afterwards."""
        with self._lock:
            self._stopping, self._graceful_stop = True, graceful
        for p in self._peers:
            p.wake()
        deadline = time.monotonic() + 1.0
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if self._listener:
            self._listener.close()
            self._listener = None
        self._threads = [t for t in self._threads if t.is_alive()]
        if self._threads:
            log.warning("%s: threads still running after stop: %s", self.name, [t.name for t in self._threads])

    def announce(self, routes: dict[str, str]) -> None:
        desired = {str(ipaddress.IPv4Network(p)): str(ipaddress.IPv4Address(nh)) for p, nh in routes.items()}
        with self._lock:
            self._desired = desired
        for p in self._peers:
            p.wake()

    def learned(self) -> list[Learned]:
        with self._lock:
            return [r for p in self._peers for r in p.rib.values()]

    def status(self) -> list[dict]:
        with self._lock:
            return [p.status() for p in self._peers]

    # -- for the peers --

    def desired(self) -> dict[str, str]:
        with self._lock:
            return dict(self._desired)

    def changed(self) -> None:
        if self.on_learned is None:
            return
        try:
            self.on_learned()
        except Exception:  # the caller's bug must not end a session
            log.exception("%s: on_learned failed", self.name)

    def _spawn(self, target, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept_loop(self) -> None:
        by_address = {ipaddress.IPv4Address(p.cfg.address): p for p in self._peers}
        while not self._stopping:
            try:
                sock, (addr, _) = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return  # closed by stop()
            peer = by_address.get(ipaddress.ip_address(addr))
            if peer is None:
                log.warning("%s: connection from %s, not a peer: closed", self.name, addr)
                sock.close()
            else:
                peer.offer(sock)


class _Peer:
    """One peer: its session's thread, what we sent it, what we learned from it."""

    def __init__(self, speaker: Speaker, cfg: PeerConfig):
        self.sp, self.cfg = speaker, cfg
        self.state, self.since, self.error = "idle", time.time(), None
        self.rib: dict[str, Learned] = {}    # learned, guarded by the speaker's lock
        self.sent: dict[str, str] = {}       # what this session announced: prefix -> next hop
        self.peer_gr = False                 # the peer advertised graceful restart (last OPEN)
        self.eor = False                     # this session's peer sent End-of-RIB: its table is complete
        self.peer_restart_time = 0
        self.stale_until: float | None = None
        self.four_octet = False
        self.hold = 0
        self._sock: socket.socket | None = None
        self._buf = b""
        self._hold_deadline = 0.0
        self._next_keepalive = 0.0
        self._offered: socket.socket | None = None  # passive mode: the latest accepted connection
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)

    def wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # full: a wake-up is already pending; closed: the thread is gone

    def offer(self, sock: socket.socket) -> None:
        with self.sp._lock:
            old, self._offered = self._offered, sock
        if old:
            old.close()
        self.wake()

    def status(self) -> dict:
        return {"peer": self.cfg.address, "asn": self.cfg.asn, "state": self.state, "since": self.since,
                "received": len(self.rib), "sent": len(self.sent), "error": self.error,
                "graceful_restart": self.peer_gr, "eor_received": self.eor}

    # -- the thread --

    def run(self) -> None:
        try:
            while not self.sp._stopping:
                sock = self._transport()
                if sock is not None:
                    self._run_session(sock)
                if self._offered is None:  # a peer that reconnected is answered at once
                    self._wait(self.sp.connect_retry)
        except Exception:
            log.exception("%s: peer %s thread failed", self.sp.name, self.cfg.address)
        finally:
            self._set_state("idle")
            with self.sp._lock:
                dropped = bool(self.rib)
                self.rib.clear()
                offered, self._offered = self._offered, None
            if offered:
                offered.close()
            self._wake_r.close()
            self._wake_w.close()
            if dropped:
                self.sp.changed()

    def _run_session(self, sock: socket.socket) -> None:
        self._sock, self._buf = sock, b""
        keep = False
        try:
            self._session()
        except _SessionEnd as e:
            keep = e.keep
            if not isinstance(e, _Stopping):
                self.error = str(e)
                log.warning("%s: session with %s ended: %s", self.sp.name, self.cfg.address, e)
        except OSError as e:
            keep, self.error = True, f"socket: {e}"
            log.warning("%s: session with %s lost: %s", self.sp.name, self.cfg.address, e)
        except Exception as e:  # a bug here, or a message the codec chokes on: end this session only
            self.error = f"internal error: {e!r}"
            log.exception("%s: session with %s failed", self.sp.name, self.cfg.address)
        finally:
            sock.close()
            self._sock = None
            self.sent = {}
            self._set_state("idle")
        self._session_lost(keep)

    def _transport(self) -> socket.socket | None:
        """A connected TCP socket to the peer, or None (failed, or stopping)."""
        if self.sp.listen:
            self._wait(TICK)  # woken at once by offer()
            with self.sp._lock:
                sock, self._offered = self._offered, None
            return sock
        self._set_state("connect")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if self.sp.local_address:
                sock.bind((self.sp.local_address, 0))
            sock.setblocking(False)
            sock.connect_ex((self.cfg.address, self.cfg.port))
            # wait for the connect or for stop(): a blocking connect() could not be interrupted
            r, w, _ = select.select([self._wake_r], [sock], [], CONNECT_TIMEOUT)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if w else None
            if not w or err:
                raise OSError(err or 0, f"connect to {self.cfg.address}:{self.cfg.port}: "
                              + (os.strerror(err) if err else "no answer"))
        except OSError as e:
            sock.close()
            self.error = str(e)
            self._set_state("idle")
            return None
        return sock

    def _wait(self, seconds: float) -> None:
        """Sleep until woken or `seconds` passed, expiring stale routes meanwhile."""
        end = time.monotonic() + seconds
        while not self.sp._stopping and self._offered is None:
            left = end - time.monotonic()
            if left <= 0:
                break
            r, _, _ = select.select([self._wake_r], [], [], min(left, TICK))
            if r:
                self._drain_wake()
            self._expire_stale()

    def _drain_wake(self) -> None:
        try:
            self._wake_r.recv(4096)
        except OSError:
            pass

    # -- a session: OPEN, KEEPALIVE, then UPDATEs both ways --

    def _session(self) -> None:
        self._sock.settimeout(CONNECT_TIMEOUT)  # bounds sendall(); reads only after select()
        self.hold = 0
        self._send(self._open_message())
        self._set_state("opensent")
        self._restart_hold_timer()
        while True:
            self._step()

    def _step(self) -> None:
        timeout = min(TICK, max(0.0, self._hold_deadline - time.monotonic()))
        r, _, _ = select.select([self._sock, self._wake_r], [], [], timeout)
        if self._wake_r in r:
            self._drain_wake()
        if self.sp._stopping:
            if not self.sp._graceful_stop:
                self._notify(bgp.BGP_ERROR_CEASE, bgp.BGP_ERROR_SUB_ADMINISTRATIVE_SHUTDOWN)
            raise _Stopping()
        if self._offered is not None:
            raise _SessionEnd("the peer connected again", keep=True)
        if self._sock in r:
            self._receive()
        now = time.monotonic()
        if now >= self._hold_deadline:
            self._notify(bgp.BGP_ERROR_HOLD_TIMER_EXPIRED, bgp.BGP_ERROR_SUB_HOLD_TIMER_EXPIRED)
            raise _SessionEnd("hold timer expired", keep=True)
        if self.state in ("openconfirm", "established") and self.hold and now >= self._next_keepalive:
            self._send(bgp.BGPKeepAlive())
        if self.state == "established":
            self._sync()
        self._expire_stale()

    def _receive(self) -> None:
        data = self._sock.recv(65536)
        if not data:
            raise _SessionEnd("connection closed by the peer", keep=True)
        self._buf += data
        while len(self._buf) >= HEADER_LEN:
            marker, length, type_ = struct.unpack_from("!16sHB", self._buf)
            if marker != b"\xff" * 16:
                self._fail(bgp.BGP_ERROR_MESSAGE_HEADER_ERROR, bgp.BGP_ERROR_SUB_CONNECTION_NOT_SYNCHRONIZED,
                           "bad marker")
            if not HEADER_LEN <= length <= MAX_LEN:
                self._fail(bgp.BGP_ERROR_MESSAGE_HEADER_ERROR, bgp.BGP_ERROR_SUB_BAD_MESSAGE_LENGTH,
                           f"bad length {length}")
            if len(self._buf) < length:
                return
            raw, self._buf = self._buf[:length], self._buf[length:]
            self._restart_hold_timer()
            self._handle(type_, raw)

    def _restart_hold_timer(self) -> None:
        if self.state == "opensent":
            wait = OPEN_WAIT
        else:  # a negotiated hold time of 0: no hold timer, no KEEPALIVEs
            wait = self.hold or float("inf")
        self._hold_deadline = time.monotonic() + wait

    def _handle(self, type_: int, raw: bytes) -> None:
        if type_ not in (bgp.BGP_MSG_OPEN, bgp.BGP_MSG_UPDATE, bgp.BGP_MSG_NOTIFICATION,
                         bgp.BGP_MSG_KEEPALIVE, bgp.BGP_MSG_ROUTE_REFRESH):
            self._fail(bgp.BGP_ERROR_MESSAGE_HEADER_ERROR, bgp.BGP_ERROR_SUB_BAD_MESSAGE_TYPE, f"type {type_}")
        try:
            msg, _, _ = bgp.BGPMessage.parser(raw)
        except Exception as e:  # the codec raises whatever struct/indexing raises on bad bytes
            code = {bgp.BGP_MSG_OPEN: bgp.BGP_ERROR_OPEN_MESSAGE_ERROR,
                    bgp.BGP_MSG_UPDATE: bgp.BGP_ERROR_UPDATE_MESSAGE_ERROR}.get(type_, bgp.BGP_ERROR_MESSAGE_HEADER_ERROR)
            self._fail(code, 0, f"malformed message type {type_}: {e!r}")
        if type_ == bgp.BGP_MSG_NOTIFICATION:
            raise _SessionEnd(f"NOTIFICATION from the peer: {msg.reason or (msg.error_code, msg.error_subcode)}")
        if type_ == bgp.BGP_MSG_OPEN:
            self._expect("opensent")
            self._on_open(msg)
        elif type_ == bgp.BGP_MSG_KEEPALIVE:
            if self.state == "openconfirm":
                self._on_established()
            elif self.state != "established":
                self._expect("openconfirm")
        elif type_ == bgp.BGP_MSG_UPDATE:
            self._expect("established")
            self._on_update(msg, raw)
        elif (msg.afi, msg.safi) == (AFI_IPV4, SAFI_UNICAST):  # ROUTE-REFRESH (RFC 2918)
            self._expect("established")
            self._send_all()

    def _expect(self, state: str) -> None:
        if self.state != state:
            self._fail(bgp.BGP_ERROR_FSM_ERROR, 0, f"unexpected message in state {self.state}")

    def _fail(self, code: int, subcode: int, why: str):
        self._notify(code, subcode)
        raise _SessionEnd(why)

    def _notify(self, code: int, subcode: int) -> None:
        try:
            self._send(bgp.BGPNotification(code, subcode))
        except OSError:
            pass  # the session ends anyway

    def _send(self, msg) -> None:
        self._sock.sendall(bytes(msg.serialize()))
        if self.hold:  # any message restarts the peer's hold timer: the next KEEPALIVE can wait
            self._next_keepalive = time.monotonic() + self.hold / 3

    # -- OPEN --

    def _open_message(self) -> bgp.BGPOpen:
        asn = self.sp.asn
        caps = [bgp.BGPOptParamCapabilityMultiprotocol(afi=AFI_IPV4, safi=SAFI_UNICAST),
                bgp.BGPOptParamCapabilityRouteRefresh(),
                bgp.BGPOptParamCapabilityFourOctetAsNumber(as_number=asn),
                bgp.BGPOptParamCapabilityGracefulRestart(
                    flags=0, time=self.sp.restart_time,
                    tuples=[(AFI_IPV4, SAFI_UNICAST, GR_FORWARDING_PRESERVED)])]
        return bgp.BGPOpen(my_as=asn if asn <= 0xFFFF else bgp.AS_TRANS, bgp_identifier=self.sp.router_id,
                           hold_time=self.sp.hold_time, opt_param=caps)

    def _on_open(self, msg: bgp.BGPOpen) -> None:
        caps = msg.opt_param_cap_map
        as4 = caps.get(bgp.BGP_CAP_FOUR_OCTET_AS_NUMBER)
        peer_asn = as4.as_number if as4 else msg.my_as
        if msg.version != 4:
            self._fail(bgp.BGP_ERROR_OPEN_MESSAGE_ERROR, bgp.BGP_ERROR_SUB_UNSUPPORTED_VERSION_NUMBER,
                       f"BGP version {msg.version}")
        if peer_asn != self.cfg.asn:
            self._fail(bgp.BGP_ERROR_OPEN_MESSAGE_ERROR, bgp.BGP_ERROR_SUB_BAD_PEER_AS,
                       f"peer AS {peer_asn}, configured {self.cfg.asn}")
        if msg.hold_time in (1, 2):
            self._fail(bgp.BGP_ERROR_OPEN_MESSAGE_ERROR, bgp.BGP_ERROR_SUB_UNACCEPTABLE_HOLD_TIME,
                       f"hold time {msg.hold_time}")
        if msg.bgp_identifier == self.sp.router_id:
            self._fail(bgp.BGP_ERROR_OPEN_MESSAGE_ERROR, bgp.BGP_ERROR_SUB_BAD_BGP_IDENTIFIER,
                       "the peer has our router id")
        self.four_octet = as4 is not None
        self.hold = min(self.sp.hold_time, msg.hold_time)
        gr = caps.get(bgp.BGP_CAP_GRACEFUL_RESTART)
        preserved = bool(gr) and any((afi, safi) == (AFI_IPV4, SAFI_UNICAST) and flags & GR_FORWARDING_PRESERVED
                                     for afi, safi, flags in gr.tuples)
        with self.sp._lock:
            self.peer_gr = gr is not None
            self.peer_restart_time = gr.time if gr else 0
        # RFC 4724 4.2: the peer's routes kept from its last session go now unless it kept
        # its forwarding state (else it is forwarding with nothing, and so should we)
        if not preserved:
            self._drop_stale()
        self._send(bgp.BGPKeepAlive())
        self._set_state("openconfirm")
        self._restart_hold_timer()

    def _on_established(self) -> None:
        self.error = None
        self.eor = False
        self._set_state("established")
        self.sent = {}
        self._sync()
        self._send_eor()

    # -- what we send --

    def _sync(self) -> None:
        """Send the difference between what we want announced and what this session sent."""
        desired = self.sp.desired()
        gone = [p for p in self.sent if p not in desired]
        new = {p: nh for p, nh in desired.items() if self.sent.get(p) != nh}
        if not gone and not new:
            return
        for chunk in _chunks(gone):
            self._send(bgp.BGPUpdate(withdrawn_routes=[bgp.BGPWithdrawnRoute(*_nlri(p)) for p in chunk]))
        self._announce(new)
        for p in gone:
            del self.sent[p]
        self.sent.update(new)
        log.info("%s: to %s: %d announced, %d withdrawn", self.sp.name, self.cfg.address, len(new), len(gone))

    def _announce(self, routes: dict[str, str]) -> None:
        by_hop: dict[str, list[str]] = {}
        for prefix, nh in routes.items():
            by_hop.setdefault(nh, []).append(prefix)
        for nh, prefixes in by_hop.items():
            for chunk in _chunks(sorted(prefixes)):
                self._send(bgp.BGPUpdate(path_attributes=self._attributes(nh),
                                         nlri=[bgp.BGPNLRI(*_nlri(p)) for p in chunk]))

    def _attributes(self, next_hop: str) -> list:
        # a 2-octet-only peer gets AS_TRANS for a 4-octet AS (no AS4_PATH: such peers are not expected)
        asn = self.sp.asn if self.four_octet or self.sp.asn <= 0xFFFF else bgp.AS_TRANS
        return [bgp.BGPPathAttributeOrigin(bgp.BGP_ATTR_ORIGIN_IGP),
                bgp.BGPPathAttributeAsPath([[asn]], as_pack_str="!I" if self.four_octet else "!H"),
                bgp.BGPPathAttributeNextHop(next_hop)]

    def _send_all(self) -> None:
        self._sync()
        self._announce(self.sent)
        self._send_eor()

    def _send_eor(self) -> None:
        self._send(bgp.BGPUpdate())  # an UPDATE with nothing in it: End-of-RIB for IPv4 unicast

    # -- what we learn --

    def _on_update(self, msg: bgp.BGPUpdate, raw: bytes) -> None:
        attrs = msg.pathattr_map
        if not msg.withdrawn_routes and not msg.nlri and _is_ipv4_eor(attrs):
            self._drop_stale()
            self.eor = True
            self.sp.changed()  # a complete table: whoever waits for it (controller.server.routes) looks again
            return
        learned = {}
        if msg.nlri:
            nh, path = attrs.get(bgp.BGP_ATTR_TYPE_NEXT_HOP), attrs.get(bgp.BGP_ATTR_TYPE_AS_PATH)
            if nh is None or path is None:
                self._fail(bgp.BGP_ERROR_UPDATE_MESSAGE_ERROR, bgp.BGP_ERROR_SUB_MISSING_WELL_KNOWN_ATTRIBUTE,
                           "UPDATE without NEXT_HOP or AS_PATH")
            try:
                as_path = _as_numbers(raw, self.four_octet)
            except (struct.error, IndexError):
                self._fail(bgp.BGP_ERROR_UPDATE_MESSAGE_ERROR, bgp.BGP_ERROR_SUB_MALFORMED_AS_PATH, "bad AS_PATH")
            loop = self.sp.asn in as_path
            for n in msg.nlri:
                prefix = _prefix(n)
                learned[prefix] = None if loop else Learned(prefix, nh.value, self.cfg.address, self.cfg.asn, as_path)
        with self.sp._lock:
            before = dict(self.rib)
            for w in msg.withdrawn_routes:
                self.rib.pop(_prefix(w), None)
            for prefix, route in learned.items():
                if route is None:  # a loop: and the peer's earlier route for it is replaced by nothing
                    self.rib.pop(prefix, None)
                else:
                    self.rib[prefix] = route
            changed = self.rib != before
        if changed:
            self.sp.changed()

    def _session_lost(self, keep: bool) -> None:
        self.eor = False
        with self.sp._lock:
            if not self.rib:
                return
            if keep and self.peer_gr and self.peer_restart_time and not self.sp._stopping:
                if self.stale_until is None:  # a second loss during the restart does not extend it
                    self.stale_until = time.monotonic() + self.peer_restart_time
                self.rib = {p: _as_stale(r) for p, r in self.rib.items()}
                log.info("%s: %s: %d routes kept as stale for %d s", self.sp.name, self.cfg.address,
                         len(self.rib), self.peer_restart_time)
            else:
                self.rib, self.stale_until = {}, None
        self.sp.changed()

    def _drop_stale(self) -> None:
        with self.sp._lock:
            self.stale_until = None
            kept = {p: r for p, r in self.rib.items() if not r.stale}
            changed = len(kept) != len(self.rib)
            self.rib = kept
        if changed:
            log.info("%s: %s: stale routes dropped", self.sp.name, self.cfg.address)
            self.sp.changed()

    def _expire_stale(self) -> None:
        if self.stale_until is not None and time.monotonic() >= self.stale_until:
            self._drop_stale()

    def _set_state(self, state: str) -> None:
        if state != self.state:
            log.info("%s: %s: %s -> %s", self.sp.name, self.cfg.address, self.state, state)
            with self.sp._lock:
                self.state, self.since = state, time.time()


def _chunks(items: list, n: int = PREFIXES_PER_UPDATE):
    return [items[i:i + n] for i in range(0, len(items), n)]


def _nlri(prefix: str) -> tuple[int, str]:
    net = ipaddress.IPv4Network(prefix)
    return net.prefixlen, str(net.network_address)


def _prefix(n) -> str:
    return str(ipaddress.IPv4Network(f"{n.addr}/{n.length}", strict=False))


def _as_stale(r: Learned) -> Learned:
    return r if r.stale else Learned(r.prefix, r.next_hop, r.peer, r.peer_asn, r.as_path, stale=True)


def _is_ipv4_eor(attrs: dict) -> bool:
    """An UPDATE with no routes is End-of-RIB: for IPv4 unicast when it is empty, or carries
    only an empty MP_UNREACH_NLRI for IPv4 unicast (RFC 4724 2)."""
    if not attrs:
        return True
    unreach = attrs.get(bgp.BGP_ATTR_TYPE_MP_UNREACH_NLRI)
    return (len(attrs) == 1 and unreach is not None and not unreach.withdrawn_routes
            and (unreach.afi, unreach.safi) == (AFI_IPV4, SAFI_UNICAST))


def _raw_attribute(raw: bytes, type_: int) -> bytes | None:
    """The value bytes of path attribute `type_` in the UPDATE message `raw`."""
    at = HEADER_LEN + 2 + struct.unpack_from("!H", raw, HEADER_LEN)[0]
    end = at + 2 + struct.unpack_from("!H", raw, at)[0]
    at += 2
    while at < end:
        flags, t = raw[at], raw[at + 1]
        if flags & bgp.BGP_ATTR_FLAG_EXTENDED_LENGTH:
            length, at = struct.unpack_from("!H", raw, at + 2)[0], at + 4
        else:
            length, at = raw[at + 2], at + 3
        if t == type_:
            return raw[at:at + length]
        at += length
    return None


def _as_numbers(raw: bytes, four_octet: bool) -> tuple[int, ...]:
    """The AS numbers of the AS_PATH of the UPDATE `raw`, AS_SETs flattened. Decoded here
    from the bytes: os-ken guesses the width of an AS number from them, and a 4-octet path
    can also be a valid 2-octet one; the OPENs told us the width."""
    value, path = _raw_attribute(raw, bgp.BGP_ATTR_TYPE_AS_PATH) or b"", []
    width = 4 if four_octet else 2
    while value:
        seg_type, count = value[0], value[1]
        numbers = struct.unpack_from(f"!{count}{'I' if four_octet else 'H'}", value, 2)
        path.extend(numbers if seg_type == 2 else sorted(numbers))  # 2: AS_SEQUENCE, 1: AS_SET
        value = value[2 + count * width:]
    return tuple(path)
