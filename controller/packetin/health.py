"""Load-balancer health checks, probed from each backend's own host (OVN's service
monitor, not a central box).

Every `interval` seconds the controller sends each backend of a load balancer with a
`healthCheck` one probe, as a packet-out on the host where the backend's port is,
straight to its ofport: a TCP SYN (UDP: an empty datagram) from its switch's monitor
address (`controller.layers.lb.monitor_address`: the router port, else the DHCP/DNS
service address) to the backend's address and port. The backend's answer goes back
into that host's pipeline, and the `lb_monitor` table hands it to the controller
(packet-in, through the tenant's control-plane meter):

  TCP   SYN-ACK: a success (the controller sends a reset for it: no connection is
        left half open); reset: a failure; nothing within `timeout`: a failure
  UDP   ICMP port unreachable: a failure; nothing within `timeout`: a success

`failureCount` failures in a row take a backend down, `successCount` successes in a
row bring it up; until the first decides, its state is unknown and it stays in the
load balancer (as when it has no health check). The server compiles the backends
found down into the tenant's `LoadBalancer.down` (controller.server.health): out of
the select group for new connections; established connections keep their translation.

Everything is keyed by tenant, load balancer and backend: two tenants with the same
spec (the same addresses, ports and names) have their own probes (each to its own
workload's ofport), tell the answers apart by the VNI they arrive with, and keep their
own states. Pure apart from the lock: the clock is an argument (`now`: monotonic
seconds for timers, `wall`: what `nvctl stats` shows as the last change).
"""
from __future__ import annotations

import ipaddress
import itertools
import random
import struct
import threading
from dataclasses import dataclass, field

from controller.layers.lb import monitor_address

UNKNOWN, UP, DOWN = "unknown", "up", "down"
FIRST_SPORT, SPORTS = 49152, 16384  # the probes' source ports (the dynamic range)
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10


def step(state: str, successes: int, failures: int, ok: bool, success_count: int, failure_count: int
         ) -> tuple[str, int, int]:
    """One probe's result on a backend's (state, successes in a row, failures in a row)."""
    if ok:
        successes, failures = successes + 1, 0
        if state != UP and successes >= success_count:
            state = UP
    else:
        successes, failures = 0, failures + 1
        if state != DOWN and failures >= failure_count:
            state = DOWN
    return state, successes, failures


@dataclass
class Backend:
    """One backend of one load balancer of one tenant."""
    state: str = UNKNOWN
    successes: int = 0
    failures: int = 0
    changed: float | None = None  # wall clock of the last change of state
    last: str | None = None  # the last probe's result, in words
    probes: int = 0
    next_at: float = 0.0  # monotonic: when the next probe is due
    outstanding: tuple | None = None  # (source port, sent at) of the probe awaiting its answer
    check: object = None  # the HealthCheck it was made for
    info: dict = field(default_factory=dict)  # where it is: host, ofport, addresses


@dataclass(frozen=True)
class Probe:
    tenant: str
    host: str
    ofport: int
    frame: bytes


class Monitor:
    """Every health-checked backend's state, by (tenant, load balancer, port, l4 port)."""

    def __init__(self, rng: random.Random | None = None):
        self._lock = threading.Lock()
        self.backends: dict[tuple, Backend] = {}
        self._by_probe: dict[tuple, tuple] = {}  # (tenant, backend ip, l4 port, source port) -> key
        self._seen: dict[str, object] = {}  # tenant -> the Tenant value last synced (kept: compared by `is`)
        self._sports = itertools.count(random.Random().randrange(SPORTS))
        self._rng = rng or random.Random()
        self.transitions = 0  # how many changes of state, ever (tests and the benchmark wait on it)

    # kept in step with the tenants ----------------------------------------------------
    def sync(self, tenants: dict) -> None:
        """`tenants`: name -> Tenant. Backends no longer in a tenant's health-checked
        load balancers are forgotten; new ones start unknown; others keep their state."""
        with self._lock:
            for name in [n for n in self._seen if n not in tenants]:
                del self._seen[name]
                self._drop(lambda k, n=name: k[0] == n)
            for name, t in tenants.items():
                if self._seen.get(name) is t:
                    continue
                self._seen[name] = t
                want = {}
                for lb in t.load_balancers:
                    if lb.health_check is None:
                        continue
                    for pname, l4 in lb.backends:
                        p = t.port(pname)
                        mon_ip, mon_mac = monitor_address(t, p.switch)
                        want[(name, lb.name, pname, l4)] = (lb.health_check, {
                            "host": p.host, "port": pname, "switch": p.switch, "ip": str(p.ip), "mac": p.mac,
                            "mon_ip": str(mon_ip), "mon_mac": mon_mac, "protocol": lb.protocol, "l4": l4})
                self._drop(lambda k, n=name, w=want: k[0] == n and k not in w)
                for key, (hc, info) in want.items():
                    b = self.backends.get(key)
                    if b is None:
                        b = self.backends[key] = Backend()
                    if b.info != info or b.check != hc:
                        b.outstanding = None  # a probe from before answers nothing now
                        b.next_at = 0.0
                    b.check, b.info = hc, info

    def _drop(self, which) -> None:
        for key in [k for k in self.backends if which(k)]:
            del self.backends[key]
        for pk in [pk for pk, k in self._by_probe.items() if which(k)]:
            del self._by_probe[pk]

    # probes out -----------------------------------------------------------------------
    def due(self, now: float, ofports: dict, live_hosts) -> list[Probe]:
        """The probes to send now. `ofports`: tenant -> {port: ofport}; `live_hosts`:
        the hosts whose switch can take a packet-out (others are not probed: no news
        is not a failure of the backend)."""
        out = []
        with self._lock:
            for key, b in self.backends.items():
                if b.outstanding is not None or now < b.next_at:
                    continue
                i = b.info
                ofport = ofports.get(key[0], {}).get(i["port"])
                if ofport is None or i["host"] not in live_hosts:
                    continue
                sport = FIRST_SPORT + next(self._sports) % SPORTS
                if i["protocol"] == "tcp":
                    frame = tcp_frame(i["mon_mac"], i["mac"], i["mon_ip"], i["ip"], sport, i["l4"],
                                      self._rng.getrandbits(32), 0, TCP_SYN)
                else:
                    frame = udp_frame(i["mon_mac"], i["mac"], i["mon_ip"], i["ip"], sport, i["l4"])
                b.outstanding = (sport, now)
                b.next_at = now + b.check.interval
                b.probes += 1
                self._by_probe[(key[0], i["ip"], i["l4"], sport)] = key
                out.append(Probe(key[0], i["host"], ofport, frame))
        return out

    def expire(self, now: float, wall: float) -> None:
        """Probes unanswered for `timeout`: a failure (TCP) or a success (UDP)."""
        with self._lock:
            for key, b in self.backends.items():
                if b.outstanding is None or now - b.outstanding[1] < b.check.timeout:
                    continue
                self._by_probe.pop((key[0], b.info["ip"], b.info["l4"], b.outstanding[0]), None)
                b.outstanding = None
                udp = b.info["protocol"] == "udp"
                self._result(b, udp, "no answer (nothing listening would say so)" if udp else
                             f"no answer in {b.check.timeout:g} s", wall)

    # answers in -----------------------------------------------------------------------
    def answer(self, tenant: str, data: bytes, wall: float) -> list[bytes]:
        """A backend's answer to a probe, from tenant `tenant`'s lb_monitor table; the
        frames to send back out of the same port (a reset after a SYN-ACK)."""
        a = parse_answer(data)
        if a is None:
            return []
        kind, ip, l4, sport, seq_ack = a
        with self._lock:
            key = self._by_probe.pop((tenant, ip, l4, sport), None)
            b = self.backends.get(key) if key is not None else None
            if b is None or b.outstanding is None or b.outstanding[0] != sport:
                return []  # late, a retransmission, or not ours
            b.outstanding = None
            if kind == "synack":
                self._result(b, True, "SYN-ACK", wall)
                i = b.info
                return [tcp_frame(i["mon_mac"], i["mac"], i["mon_ip"], i["ip"], sport, l4, seq_ack, 0, TCP_RST)]
            self._result(b, False, "reset" if kind == "rst" else "ICMP port unreachable", wall)
            return []

    def _result(self, b: Backend, ok: bool, what: str, wall: float) -> None:
        state = b.state
        b.state, b.successes, b.failures = step(b.state, b.successes, b.failures, ok,
                                                b.check.success_count, b.check.failure_count)
        b.last = what
        if b.state != state:
            b.changed = wall
            self.transitions += 1

    # what the server reads --------------------------------------------------------------
    def down_all(self) -> dict[str, dict[str, tuple]]:
        """{tenant: {load balancer: ((port, l4 port), ...) found down}} of every tenant
        with a health-checked load balancer ({} for one with nothing down)."""
        with self._lock:
            out: dict[str, dict[str, list]] = {t: {} for t in self._seen}
            for (t, lb, port, l4), b in self.backends.items():
                if b.state == DOWN:
                    out.setdefault(t, {}).setdefault(lb, []).append((port, l4))
        return {t: {lb: tuple(sorted(v)) for lb, v in lbs.items()} for t, lbs in out.items()}

    def down(self, tenant: str) -> dict[str, tuple]:
        """{load balancer: ((port, l4 port), ...) found down}, of one tenant."""
        out: dict[str, list] = {}
        with self._lock:
            for (t, lb, port, l4), b in self.backends.items():
                if t == tenant and b.state == DOWN:
                    out.setdefault(lb, []).append((port, l4))
        return {lb: tuple(sorted(v)) for lb, v in out.items()}

    def report(self, tenant: str) -> dict:
        """{(load balancer, port, l4 port): {...}} of one tenant, for `nvctl stats`."""
        with self._lock:
            return {(lb, port, l4): {"state": b.state, "since": b.changed, "last": b.last, "probes": b.probes,
                                     "successes": b.successes, "failures": b.failures}
                    for (t, lb, port, l4), b in self.backends.items() if t == tenant}


# frames -------------------------------------------------------------------------------
def _mac(m: str) -> bytes:
    return bytes(int(x, 16) for x in m.split(":"))


def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _ipv4(src: bytes, dst: bytes, proto: int, payload: bytes) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0x4000, 64, proto, 0, src, dst)
    return hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:] + payload


def _l4_csum(src: bytes, dst: bytes, proto: int, seg: bytes) -> int:
    return _csum(src + dst + struct.pack("!BBH", 0, proto, len(seg)) + seg)


def tcp_frame(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, sport: int, dport: int, seq: int,
              ack: int, flags: int) -> bytes:
    s, d = ipaddress.IPv4Address(src_ip).packed, ipaddress.IPv4Address(dst_ip).packed
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags,
                      0 if flags & TCP_RST else 64240, 0, 0)
    c = _l4_csum(s, d, 6, seg)
    seg = seg[:16] + struct.pack("!H", c) + seg[18:]
    return _mac(dst_mac) + _mac(src_mac) + b"\x08\x00" + _ipv4(s, d, 6, seg)


def udp_frame(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, sport: int, dport: int,
              payload: bytes = b"") -> bytes:
    s, d = ipaddress.IPv4Address(src_ip).packed, ipaddress.IPv4Address(dst_ip).packed
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    c = _l4_csum(s, d, 17, seg) or 0xFFFF
    seg = seg[:6] + struct.pack("!H", c) + seg[8:]
    return _mac(dst_mac) + _mac(src_mac) + b"\x08\x00" + _ipv4(s, d, 17, seg)


def _ip_parts(data: bytes):
    """(IP header offset, header length, protocol, src, dst) of an IPv4 frame, else None."""
    if len(data) < 34 or data[12:14] != b"\x08\x00" or data[14] >> 4 != 4:
        return None
    ihl = (data[14] & 0x0F) * 4
    return 14, ihl, data[23], data[26:30], data[30:34]


def parse_answer(data: bytes):
    """("synack" | "rst" | "unreachable", backend ip, backend l4 port, probe's source
    port, the SYN-ACK's ack number) of a backend's answer to a probe, else None."""
    got = _ip_parts(data)
    if got is None:
        return None
    off, ihl, proto, src, _dst = got
    l4 = off + ihl
    if proto == 6 and len(data) >= l4 + 20:
        sport, dport, _seq, ack, _off, flags = struct.unpack_from("!HHIIBB", data, l4)
        ip = str(ipaddress.IPv4Address(src))
        if flags & TCP_RST:
            return "rst", ip, sport, dport, 0
        if flags & TCP_SYN and flags & TCP_ACK:
            return "synack", ip, sport, dport, ack
        return None
    if proto == 1 and len(data) >= l4 + 8 + 20 + 8 and data[l4] == 3 and data[l4 + 1] == 3:
        inner = l4 + 8
        iihl = (data[inner] & 0x0F) * 4
        if data[inner + 9] != 17 or len(data) < inner + iihl + 4:
            return None
        sport, dport = struct.unpack_from("!HH", data, inner + iihl)
        return "unreachable", str(ipaddress.IPv4Address(data[inner + 16:inner + 20])), dport, sport, 0
    return None


def refusal(data: bytes) -> bytes | None:
    """What a client is told of a new connection to a VIP whose backends are all down
    (the packet-in from `lb_dnat`): a TCP reset for TCP, an ICMP port unreachable for
    UDP, from the VIP back to the client, else None."""
    got = _ip_parts(data)
    if got is None:
        return None
    off, ihl, proto, src, dst = got
    l4 = off + ihl
    eth = data[6:12] + data[0:6] + b"\x08\x00"  # back to the sender, from whom it was addressed to
    if proto == 6 and len(data) >= l4 + 20:
        sport, dport, seq, ack, doff, flags = struct.unpack_from("!HHIIBB", data, l4)
        if flags & TCP_RST:
            return None  # never a reset for a reset
        total = struct.unpack_from("!H", data, off + 2)[0]
        payload = max(0, total - ihl - (doff >> 4) * 4)
        if flags & TCP_ACK:  # RFC 793: <SEQ=SEG.ACK><CTL=RST>
            seg_seq, seg_ack, out_flags = ack, 0, TCP_RST
        else:  # <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>
            seg_seq = 0
            seg_ack = seq + payload + (1 if flags & TCP_SYN else 0) + (1 if flags & TCP_FIN else 0)
            out_flags = TCP_RST | TCP_ACK
        seg = struct.pack("!HHIIBBHHH", dport, sport, seg_seq & 0xFFFFFFFF, seg_ack & 0xFFFFFFFF, 5 << 4,
                          out_flags, 0, 0, 0)
        seg = seg[:16] + struct.pack("!H", _l4_csum(dst, src, 6, seg)) + seg[18:]
        return eth + _ipv4(dst, src, 6, seg)
    if proto == 17:
        quoted = data[off:off + ihl + 8]
        icmp = struct.pack("!BBHI", 3, 3, 0, 0) + quoted
        icmp = icmp[:2] + struct.pack("!H", _csum(icmp)) + icmp[4:]
        return eth + _ipv4(dst, src, 1, icmp)
    return None
