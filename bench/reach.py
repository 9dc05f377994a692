"""All-pairs reachability from one process: an ICMP socket per workload namespace.

A socket keeps the network namespace it was created in, so this process enters each
workload's namespace once (setns), opens a raw ICMP socket there, and comes back. Then
it sends echo requests for the (source, target) pairs not yet answered and reads the
replies. 10,000 pairs cost one process, not 10,000 pings.

The probe is paced (Pacer), so that what it offers stays bounded whatever the machine
is doing: each pending pair is probed again after an interval that doubles from
FIRST_S up to CAP_S, and all pairs together never exceed RATE_PPS echo requests a
second (a token bucket: a burst of at most BURST_S of the rate). Unpaced (one echo for
every pending pair every 100 ms), 9,900 pairs offered up to ~99,000 packets/s to three
userspace switches on 2 cores: once the machine was busy the probe saturated what it
measured and never converged. The convergence time keeps its meaning: the time until
every pair has answered. What pacing costs is resolution: a pair is seen at most
max(CAP_S, pending / RATE_PPS) after it starts to answer, and no convergence can be
measured below pairs / RATE_PPS (each pair needs one answered request): `load()` says
that floor, the probes sent, the mean and peak rates offered, and the last pair's gap
between its two last probes. At 6,000/s (a first choice) the floor, 1.65 s for 9,900
pairs, was most of what bench versus measured: 1.86-1.88 s for nvctl with its workloads
plugged first, every pair answering its first request, no loss with a core kept busy.
"""
from __future__ import annotations

import heapq
import math
import os
import random
import select
import socket
import struct
import time

RATE_PPS = 20000.0  # echo requests a second, all pairs together: 9,900 pairs in 0.5 s
BURST_S = 0.01      # the token bucket's depth, in seconds of the rate (200 requests at 20,000/s)
FIRST_S = 0.1      # a pair unanswered is probed again after 0.1 s, 0.2, 0.4, 0.8, then every
CAP_S = 1.0        # CAP_S


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _echo(ident: int, seq: int) -> bytes:
    head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    payload = b"nvctl-reach"
    return struct.pack("!BBHHH", 8, 0, _checksum(head + payload), ident, seq) + payload


def _socket_in(ns: str) -> socket.socket:
    from pyroute2.netns import popns, pushns  # os.setns arrives only with Python 3.12
    pushns(ns)
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        s.setblocking(False)
        return s
    finally:
        popns()


def pairs(own: list[str], targets: list[str], groups: list | None = None) -> set[tuple[int, int]]:
    """(source index, target index) to be answered. Without groups every source reaches
    every target but its own address; with groups (targets = the sources) each source
    reaches the other members of its group only."""
    if groups is None:
        return {(i, j) for i, ip in enumerate(own) for j, t in enumerate(targets) if t != ip}
    members: dict = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    return {(i, j) for m in members.values() for i in m for j in m if i != j}


class Pacer:
    """When to probe which pair, on a clock it is given (unit-testable without one).

    Every pending pair is due at `now` at first, in a random order (so the first
    requests spread over every source and target, not source 0's first). A pair sent
    is due again `interval` later, and its interval doubles up to `cap`; `take(now)`
    returns the pairs to send now, due ones oldest first, as many as the token bucket
    holds (`rate` tokens a second, at most `burst`). An answered pair is never
    returned again. When the rate binds, the pairs wait their turn in due order: every
    pending pair is probed once per pending / rate seconds."""

    def __init__(self, pending, now: float, rate: float = RATE_PPS, first: float = FIRST_S,
                 cap: float = CAP_S, burst: float | None = None, factor: float = 2.0, seed: int | None = None):
        if rate <= 0 or first <= 0 or cap < first or factor < 1:
            raise ValueError("pacing: rate > 0, 0 < first <= cap, factor >= 1")
        self.rate, self.first, self.cap, self.factor = float(rate), first, cap, factor
        self.burst = max(1.0, burst if burst is not None else rate * BURST_S)
        self.tokens, self.t = self.burst, now
        self.pending = set(pending)
        order = sorted(self.pending)
        random.Random(seed).shuffle(order)
        self.rank = {p: k for k, p in enumerate(order)}
        self.heap = [(now, k, p) for k, p in enumerate(order)]  # sorted already: a heap
        self.interval: dict = {}  # pair -> the interval it waits after its next send
        self.last: dict = {}      # pair -> [time of the send before the last, time of the last]
        self.sent = 0

    def _refill(self, now: float) -> None:
        if now > self.t:
            self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
            self.t = now

    def take(self, now: float) -> list:
        """The pairs to probe at `now` (each counted as sent)."""
        self._refill(now)
        out = []
        while self.heap and self.tokens >= 1:
            due, k, p = self.heap[0]
            if p not in self.pending:
                heapq.heappop(self.heap)
                continue
            if due > now:
                break
            heapq.heappop(self.heap)
            iv = self.interval.get(p, self.first)
            self.interval[p] = min(iv * self.factor, self.cap)
            heapq.heappush(self.heap, (now + iv, k, p))
            prev = self.last.get(p)
            self.last[p] = [prev[1] if prev else None, now]
            self.tokens -= 1
            self.sent += 1
            out.append(p)
        return out

    def answered(self, p) -> bool:
        """`p` answered: never probed again. False if it was not pending."""
        if p in self.pending:
            self.pending.discard(p)
            return True
        return False

    def wake(self, now: float) -> float | None:
        """When take() may next return something (None: nothing pending)."""
        while self.heap and self.heap[0][2] not in self.pending:
            heapq.heappop(self.heap)
        if not self.heap:
            return None
        due = self.heap[0][0]
        self._refill(now)
        token = now if self.tokens >= 1 else now + (1 - self.tokens) / self.rate
        return max(due, token)


class Reach:
    """sources: [(namespace, own IP)]; targets: IPs every source must reach (itself excluded).
    groups (one per source, e.g. its tenant): then each source must reach the other
    sources of its own group, and targets are the sources' IPs (tenants may share CAs).
    rate, first, cap: the pacing (Pacer)."""

    def __init__(self, sources: list[tuple[str, str]], targets: list[str] | None = None,
                 groups: list | None = None, rate: float = RATE_PPS, first: float = FIRST_S,
                 cap: float = CAP_S):
        self.sources = sources
        self.targets = targets if targets is not None else [ip for _, ip in sources]
        self.socks = [_socket_in(ns) for ns, _ in sources]
        self.by_fd = {s.fileno(): i for i, s in enumerate(self.socks)}
        if groups is not None:
            self.targets = [ip for _, ip in sources]
        self.pending = pairs([ip for _, ip in sources], self.targets, groups)
        # the ICMP id is part of conntrack's key: two probes of the same pairs (nvctl's and
        # OVN's, on one datapath) must not send the same tuples
        self.base = random.randrange(1 << 16)
        self.total = len(self.pending)
        self.pacing = {"rate": rate, "first": first, "cap": cap}
        self.pacer: Pacer | None = None
        self.send_errors = 0
        self.per_second: list[int] = []  # requests sent in each second of the clock
        self.elapsed = None
        self.gap = None  # the last pair answered: seconds between its two last requests

    def close(self) -> None:
        for s in self.socks:
            s.close()

    def _read(self, s: socket.socket) -> None:
        while True:
            try:
                pkt = s.recv(2048)
            except BlockingIOError:
                return
            ihl = (pkt[0] & 0x0F) * 4
            if len(pkt) >= ihl + 8 and pkt[ihl] == 0:  # echo reply
                ident, seq = struct.unpack("!HH", pkt[ihl + 4:ihl + 8])
                p = ((ident - self.base) & 0xFFFF, seq)
                if self.pacer.answered(p):
                    self.pending.discard(p)
                    if not self.pending:
                        before, last = self.pacer.last.get(p, (None, None))
                        self.gap = round(last - before, 3) if before is not None else 0.0

    def wait(self, timeout: float = 60) -> float | None:
        """Seconds until every pair answered, or None at the timeout (then .pending says which)."""
        t0 = time.monotonic()
        self.pacer = pacer = Pacer(self.pending, t0, **self.pacing)
        poller = select.poll()
        for s in self.socks:
            poller.register(s, select.POLLIN)
        while self.pending:
            now = time.monotonic()
            if now - t0 > timeout:
                self.elapsed = now - t0
                return None
            batch = pacer.take(now)
            if batch:
                sec = int(now - t0)
                self.per_second.extend([0] * (sec + 1 - len(self.per_second)))
                self.per_second[sec] += len(batch)
            for i, j in batch:
                try:
                    self.socks[i].sendto(_echo((self.base + i) & 0xFFFF, j), (self.targets[j], 0))
                except OSError:  # no route/neighbour yet: a later request
                    self.send_errors += 1
            nxt = pacer.wake(time.monotonic())
            wait_ms = 0 if nxt is None else max(0, math.ceil((nxt - time.monotonic()) * 1000))
            for fd, _ in poller.poll(min(wait_ms, 100)):
                self._read(self.socks[self.by_fd[fd]])
        self.elapsed = time.monotonic() - t0
        return self.elapsed

    def load(self) -> dict:
        """What the probe offered: echo requests sent (each also makes a reply), their
        mean rate over the clock and the busiest second's, the pacing, the pairs, and the
        last pair's gap between its two last requests (how late it may have been seen)."""
        sent = self.pacer.sent if self.pacer else 0
        el = self.elapsed or 0.0
        return {"requests": sent, "pairs": self.total,
                "requests_per_pair": round(sent / self.total, 2) if self.total else None,
                "mean_pps": round(sent / el) if el > 0 else None, "peak_pps": max(self.per_second, default=0),
                "rate_cap_pps": self.pacing["rate"], "interval_s": [self.pacing["first"], self.pacing["cap"]],
                "floor_s": round(self.total / self.pacing["rate"], 3),
                "send_errors": self.send_errors, "last_pair_gap_s": self.gap}

    def workload_drops(self) -> dict:
        """Drops on the workloads' side, summed over the source namespaces (each counted
        since it was made, so fresh namespaces give this run's): the probe's own receive
        queues (raw sockets' drops), the workloads' eth0 rx/tx drops, IP discards (an
        output discard: e.g. no neighbour entry could be made, see tep/neigh.py), ICMP
        input errors and replies the kernel's ICMP rate limit held back. (The ARP
        table's own counters are the machine's: drops.snapshot.)"""
        from pyroute2.netns import popns, pushns
        inodes = {os.fstat(s.fileno()).st_ino for s in self.socks}
        out = {"raw_socket_drops": 0, "eth_rx_dropped": 0, "eth_tx_dropped": 0, "ip_in_discards": 0, "ip_out_discards": 0, "icmp_in_errors": 0,
               "icmp_out_rate_limited": 0}
        for ns, _ in dict.fromkeys(self.sources):
            pushns(ns)
            try:
                read = {k: _read_proc(f"/proc/thread-self/net/{k}") for k in ("raw", "dev", "snmp")}
            finally:
                popns()
            for k, v in parse_workload_counters(read, inodes).items():
                out[k] += v
        return out


def _read_proc(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def parse_workload_counters(read: dict, inodes: set) -> dict:
    """One workload namespace's drop counters from its /proc/net files (raw, dev, snmp)."""
    out = {}
    drops = 0
    for ln in read.get("raw", "").splitlines()[1:]:
        f = ln.split()
        if len(f) >= 13 and f[9].isdigit() and int(f[9]) in inodes:
            drops += int(f[-1])
    out["raw_socket_drops"] = drops
    for ln in read.get("dev", "").splitlines()[2:]:
        name, _, rest = ln.partition(":")
        if name.strip() == "eth0":
            f = rest.split()
            out["eth_rx_dropped"], out["eth_tx_dropped"] = int(f[3]), int(f[11])
    snmp = read.get("snmp", "").splitlines()
    for a, b in zip(snmp, snmp[1:]):
        ka, kb = a.split(), b.split()
        if ka and kb and ka[0] == kb[0] and not kb[1].lstrip("-").isalpha():
            row = dict(zip(ka[1:], kb[1:]))
            if ka[0] == "Ip:":
                out["ip_in_discards"], out["ip_out_discards"] = int(row["InDiscards"]), int(row["OutDiscards"])
            elif ka[0] == "Icmp:":
                out["icmp_in_errors"] = int(row["InErrors"])
                out["icmp_out_rate_limited"] = int(row.get("OutRateLimitGlobal", 0)) + int(row.get("OutRateLimitHost", 0))
    return out
