"""The BGP speaker against a BGP endpoint written here with os-ken's codec (so the test sees
every message on the wire), and against another Speaker, over 127.0.0.1: no root."""
import socket
import struct
import threading
import time

import pytest
from os_ken.lib.packet import bgp

from controller.bgp.speaker import Learned, PeerConfig, Speaker
from tests.waiting import wait_for

OUR_AS, THEIR_AS = 65000, 65001


def wait_until(fn, timeout=5.0, what="condition"):
    return wait_for(what, fn, timeout, 0.02)


class Endpoint:
    """A passive BGP peer: accepts the speaker's connection, answers its OPEN, records every
    message it gets (with its raw bytes), sends KEEPALIVEs every second unless told not to."""

    def __init__(self, gr_time: int | None = 60, asn: int = THEIR_AS):
        self.gr_time, self.asn = gr_time, asn
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.msgs: list[tuple[object, bytes]] = []
        self.closed = threading.Event()
        self.keepalives = True
        self.sock = None

    def accept(self, timeout=5.0) -> bgp.BGPOpen:
        self.server.settimeout(timeout)
        self.sock, _ = self.server.accept()
        self.sock.settimeout(timeout)
        self.msgs, self.buf = [], b""
        self.closed.clear()
        their_open = self._read(self.sock)
        caps = [bgp.BGPOptParamCapabilityMultiprotocol(afi=1, safi=1),
                bgp.BGPOptParamCapabilityFourOctetAsNumber(as_number=self.asn)]
        if self.gr_time is not None:
            caps.append(bgp.BGPOptParamCapabilityGracefulRestart(flags=0, time=self.gr_time, tuples=[(1, 1, 0x80)]))
        self.send(bgp.BGPOpen(my_as=self.asn, bgp_identifier="10.0.0.2", hold_time=9, opt_param=caps))
        self.send(bgp.BGPKeepAlive())
        assert isinstance(self._read(self.sock), bgp.BGPKeepAlive)
        self.sock.settimeout(None)
        threading.Thread(target=self._reader, args=(self.sock,), daemon=True).start()
        threading.Thread(target=self._keepalive, daemon=True).start()
        return their_open

    def _read(self, sock):
        while True:
            if len(self.buf) >= 19:
                length = struct.unpack_from("!H", self.buf, 16)[0]
                if len(self.buf) >= length:
                    raw, self.buf = self.buf[:length], self.buf[length:]
                    msg = bgp.BGPMessage.parser(raw)[0]
                    self.msgs.append((msg, raw))
                    return msg
            data = sock.recv(65536)
            if not data:
                return None
            self.buf += data

    def _reader(self, sock):  # this connection's: drop() and accept() replace self.sock
        try:
            while self._read(sock) is not None:
                pass
        except OSError:
            pass
        self.closed.set()

    def _keepalive(self):
        sock = self.sock
        while not self.closed.wait(1.0) and sock is self.sock:
            if self.keepalives:
                try:
                    self.send(bgp.BGPKeepAlive())
                except OSError:
                    return

    def send(self, msg):
        self.sock.sendall(bytes(msg.serialize()))

    def announce(self, prefixes, next_hop="127.0.0.1", as_path=(THEIR_AS,)):
        attrs = [bgp.BGPPathAttributeOrigin(0),
                 bgp.BGPPathAttributeAsPath([list(as_path)], as_pack_str="!I"),
                 bgp.BGPPathAttributeNextHop(next_hop)]
        nlri = [bgp.BGPNLRI(int(p.split("/")[1]), p.split("/")[0]) for p in prefixes]
        self.send(bgp.BGPUpdate(path_attributes=attrs, nlri=nlri))

    def withdraw(self, prefixes):
        self.send(bgp.BGPUpdate(withdrawn_routes=[bgp.BGPWithdrawnRoute(int(p.split("/")[1]), p.split("/")[0])
                                                  for p in prefixes]))

    def drop(self):
        """The TCP connection goes away without a NOTIFICATION: a crashed or restarting peer."""
        sock, self.sock = self.sock, None
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()

    def updates(self, start=0):
        return [(m, raw) for m, raw in self.msgs[start:] if isinstance(m, bgp.BGPUpdate)]

    def rib(self):
        """prefix -> next hop, from the UPDATEs received on this connection."""
        rib = {}
        for m, _ in self.updates():
            for w in m.withdrawn_routes:
                rib.pop(w.prefix, None)
            for n in m.nlri:
                rib[n.prefix] = m.get_path_attr(bgp.BGP_ATTR_TYPE_NEXT_HOP).value
        return rib

    def eors(self, start=0):
        return [i for i, (m, _) in enumerate(self.msgs) if i >= start and isinstance(m, bgp.BGPUpdate)
                and not m.nlri and not m.withdrawn_routes and not m.path_attributes]

    def close(self):
        if self.sock:
            self.sock.close()
        self.server.close()


@pytest.fixture
def world():
    made = []

    def make(routes=None, gr_time=60, speaker_as=OUR_AS, **kw):
        ep = Endpoint(gr_time=gr_time)
        calls = []
        sp = Speaker(speaker_as, "10.0.0.1", [PeerConfig("127.0.0.1", THEIR_AS, ep.port)],
                     on_learned=lambda: calls.append(1), connect_retry=0.1, **kw)
        sp.calls = calls
        if routes is not None:
            sp.announce(routes)
        made.append((sp, ep))
        sp.start()
        return sp, ep
    yield make
    for sp, ep in made:
        sp.stop(graceful=False)
        ep.close()


def established(sp):
    return wait_until(lambda: sp.status()[0]["state"] == "established", what="established")


def test_open_offers_graceful_restart_4_octet_as_and_as_trans(world):
    sp, ep = world(speaker_as=4200000000, restart_time=90)
    op = ep.accept()
    caps = op.opt_param_cap_map
    assert op.my_as == bgp.AS_TRANS and op.hold_time == 9 and op.bgp_identifier == "10.0.0.1"
    assert caps[bgp.BGP_CAP_FOUR_OCTET_AS_NUMBER].as_number == 4200000000
    gr = caps[bgp.BGP_CAP_GRACEFUL_RESTART]
    assert (gr.time, gr.tuples) == (90, [(1, 1, 0x80)])
    assert (caps[bgp.BGP_CAP_MULTIPROTOCOL].afi, caps[bgp.BGP_CAP_MULTIPROTOCOL].safi) == (1, 1)
    assert bgp.BGP_CAP_ROUTE_REFRESH in caps
    established(sp)
    st = sp.status()[0]
    assert st["graceful_restart"] is True and st["error"] is None and st["asn"] == THEIR_AS


def test_routes_go_out_with_the_given_next_hop_then_end_of_rib(world):
    routes = {"10.0.0.5/32": "192.0.2.77", "10.0.0.6/32": "192.0.2.77", "10.0.0.7/32": "192.0.2.78"}
    sp, ep = world(routes)
    ep.accept()
    wait_until(lambda: ep.eors(), what="End-of-RIB")
    assert ep.rib() == routes  # third-party next hops: not our address, not rewritten
    eor = ep.eors()[0]
    assert all(i < eor for i, (m, _) in enumerate(ep.msgs) if isinstance(m, bgp.BGPUpdate) and m.nlri)
    m, raw = next((m, raw) for m, raw in ep.updates() if m.nlri)
    assert m.get_path_attr(bgp.BGP_ATTR_TYPE_ORIGIN).value == bgp.BGP_ATTR_ORIGIN_IGP
    assert b"\x40\x02\x06\x02\x01" + struct.pack("!I", OUR_AS) in raw  # AS_SEQUENCE [65000], 4 octets
    assert sp.status()[0]["sent"] == 3


def test_a_new_desired_set_sends_only_the_difference(world):
    sp, ep = world({"10.0.0.1/32": "192.0.2.1", "10.0.0.2/32": "192.0.2.1", "10.0.0.3/32": "192.0.2.1"})
    ep.accept()
    wait_until(lambda: ep.eors(), what="End-of-RIB")
    mark = len(ep.msgs)
    sp.announce({"10.0.0.1/32": "192.0.2.1", "10.0.0.2/32": "192.0.2.9", "10.0.0.4/32": "192.0.2.1"})
    wait_until(lambda: ep.rib() == {"10.0.0.1/32": "192.0.2.1", "10.0.0.2/32": "192.0.2.9",
                                    "10.0.0.4/32": "192.0.2.1"}, what="the new set")
    new = ep.updates(mark)
    assert sorted(w.prefix for m, _ in new for w in m.withdrawn_routes) == ["10.0.0.3/32"]
    assert sorted(n.prefix for m, _ in new for n in m.nlri) == ["10.0.0.2/32", "10.0.0.4/32"]
    assert not ep.eors(mark)  # End-of-RIB only after a session's first full table
    assert sp.status()[0]["sent"] == 3


def test_route_refresh_resends_everything_and_end_of_rib(world):
    sp, ep = world({"10.0.0.1/32": "192.0.2.1"})
    ep.accept()
    wait_until(lambda: ep.eors(), what="End-of-RIB")
    mark = len(ep.msgs)
    ep.send(bgp.BGPRouteRefresh(afi=1, safi=1))
    wait_until(lambda: ep.eors(mark), what="End-of-RIB after ROUTE-REFRESH")
    assert [n.prefix for m, _ in ep.updates(mark) for n in m.nlri] == ["10.0.0.1/32"]


def test_learns_routes_withdrawals_and_not_loops(world):
    sp, ep = world()
    ep.accept()
    established(sp)
    # 33554944 is 02 00 02 00: the 4-octet path also parses as a 2-octet one ([0, 65001], two
    # empty segments), os-ken's guess; the speaker knows the width from the OPENs
    ep.announce(["198.18.0.0/24"], next_hop="127.0.0.9", as_path=(THEIR_AS, 33554944))
    ep.announce(["198.19.0.0/24"], as_path=(THEIR_AS, OUR_AS, 65002))  # has been through us: a loop
    ep.announce(["198.20.0.0/24"])
    wait_until(lambda: len(sp.learned()) == 2, what="two routes learned")
    assert sorted(sp.learned(), key=lambda r: r.prefix) == [
        Learned("198.18.0.0/24", "127.0.0.9", "127.0.0.1", THEIR_AS, (THEIR_AS, 33554944)),
        Learned("198.20.0.0/24", "127.0.0.1", "127.0.0.1", THEIR_AS, (THEIR_AS,))]
    assert sp.calls and sp.status()[0]["received"] == 2
    ep.announce(["198.20.0.0/24"], as_path=(THEIR_AS, OUR_AS))  # replaced by a looped one: gone
    ep.withdraw(["198.18.0.0/24"])
    wait_until(lambda: not sp.learned(), what="all gone")


def test_a_lost_session_of_a_gr_peer_keeps_its_routes_stale_until_its_end_of_rib(world):
    sp, ep = world()
    ep.accept()
    established(sp)
    ep.announce(["198.18.0.0/24", "198.18.1.0/24"])
    wait_until(lambda: len(sp.learned()) == 2, what="learned")
    ep.drop()
    wait_until(lambda: all(r.stale for r in sp.learned()), what="stale")
    assert len(sp.learned()) == 2
    ep.accept()  # the speaker reconnects: the peer is back
    established(sp)
    ep.announce(["198.18.0.0/24"])
    wait_until(lambda: not sp.learned()[0].stale if sp.learned()[0].prefix == "198.18.0.0/24" else
               not sp.learned()[1].stale, what="re-announced route fresh")
    assert len(sp.learned()) == 2  # the other is kept, stale, until End-of-RIB
    ep.send(bgp.BGPUpdate())
    wait_until(lambda: len(sp.learned()) == 1, what="stale route dropped at End-of-RIB")
    assert sp.learned() == [Learned("198.18.0.0/24", "127.0.0.1", "127.0.0.1", THEIR_AS, (THEIR_AS,))]


def test_stale_routes_go_when_the_peers_restart_time_runs_out(world):
    sp, ep = world(gr_time=1)
    ep.accept()
    established(sp)
    ep.announce(["198.18.0.0/24"])
    wait_until(sp.learned, what="learned")
    ep.drop()
    t0 = time.monotonic()
    wait_until(lambda: sp.learned() and sp.learned()[0].stale, what="stale")
    wait_until(lambda: not sp.learned(), timeout=3, what="expiry")
    assert time.monotonic() - t0 >= 0.9


def test_without_gr_or_after_a_notification_routes_go_at_once(world):
    for gr_time in (None, 60):
        sp, ep = world(gr_time=gr_time)
        ep.accept()
        established(sp)
        ep.announce(["198.18.0.0/24"])
        wait_until(sp.learned, what="learned")
        if gr_time is None:
            ep.drop()
        else:  # a peer that says why it goes means it
            ep.send(bgp.BGPNotification(6, 2))
        wait_until(lambda: not sp.learned(), what="routes dropped")
        assert sp.status()[0]["graceful_restart"] is (gr_time is not None)


@pytest.mark.parametrize("graceful", [True, False])
def test_stop_closes_with_or_without_a_cease(world, graceful):
    sp, ep = world({"10.0.0.1/32": "192.0.2.1"})
    ep.accept()
    established(sp)
    t0 = time.monotonic()
    sp.stop(graceful=graceful)
    assert time.monotonic() - t0 < 1.2
    assert ep.closed.wait(2)
    notes = [m for m, _ in ep.msgs if isinstance(m, bgp.BGPNotification)]
    if graceful:
        assert notes == []
    else:
        assert [(n.error_code, n.error_subcode) for n in notes] == [(6, 2)]
    assert not [t for t in threading.enumerate() if t.name.startswith("bgp-")]


def test_hold_timer_expiry_sends_a_notification_and_reconnects(world):
    sp, ep = world(hold_time=3)
    ep.accept()
    established(sp)
    ep.keepalives = False
    assert ep.closed.wait(5)
    assert [(m.error_code, m.error_subcode) for m, _ in ep.msgs if isinstance(m, bgp.BGPNotification)] == [(4, 1)]
    assert "hold timer" in sp.status()[0]["error"]
    ep.keepalives = True
    ep.accept()
    established(sp)


def test_two_speakers_graceful_restart_between_them():
    """A (active) announces to B (passive, listen=): B keeps A's routes stale across A's
    graceful stop and replaces them with what a new A sends; A's Cease withdraws at once."""
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    b = Speaker(THEIR_AS, "10.0.0.2", [PeerConfig("127.0.0.2", OUR_AS)], listen=("127.0.0.1", port), name="bgp-b")
    a1 = a2 = None
    try:
        b.start()

        def a(routes):
            s = Speaker(OUR_AS, "10.0.0.1", [PeerConfig("127.0.0.1", THEIR_AS, port)], connect_retry=0.1,
                        local_address="127.0.0.2", name="bgp-a")
            s.announce(routes)
            s.start()
            return s

        def b_has():
            return {(r.prefix, r.next_hop, r.stale) for r in b.learned()}
        a1 = a({"10.1.0.1/32": "192.0.2.10", "10.1.0.2/32": "192.0.2.11"})
        wait_until(lambda: b_has() == {("10.1.0.1/32", "192.0.2.10", False), ("10.1.0.2/32", "192.0.2.11", False)},
                   what="B learned A's routes")
        assert b.learned()[0].as_path == (OUR_AS,) and b.learned()[0].peer == "127.0.0.2"
        a1.stop(graceful=True)
        wait_until(lambda: b_has() == {("10.1.0.1/32", "192.0.2.10", True), ("10.1.0.2/32", "192.0.2.11", True)},
                   what="stale at B")
        a2 = a({"10.1.0.1/32": "192.0.2.12"})
        wait_until(lambda: b_has() == {("10.1.0.1/32", "192.0.2.12", False)}, what="B after A's End-of-RIB")
        a2.stop(graceful=False)
        wait_until(lambda: not b.learned(), what="withdrawn by the Cease")
    finally:
        for s in (a1, a2, b):
            if s:
                s.stop(graceful=False)
