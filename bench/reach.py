"""All-pairs reachability from one process: an ICMP socket per workload namespace.

A socket keeps the network namespace it was created in, so this process enters each
workload's namespace once (setns), opens a raw ICMP socket there, and comes back. Then
every round it sends one echo request for every (source, target) pair not yet answered,
and reads replies until the round ends. 10,000 pairs cost one process, not 10,000 pings.
"""
from __future__ import annotations

import random
import select
import socket
import struct
import time


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


class Reach:
    """sources: [(namespace, own IP)]; targets: IPs every source must reach (itself excluded).
    groups (one per source, e.g. its tenant): then each source must reach the other
    sources of its own group, and targets are the sources' IPs (tenants may share CAs)."""

    def __init__(self, sources: list[tuple[str, str]], targets: list[str] | None = None,
                 groups: list | None = None):
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

    def close(self) -> None:
        for s in self.socks:
            s.close()

    def wait(self, timeout: float = 60, round_s: float = 0.1) -> float | None:
        """Seconds until every pair answered, or None at the timeout (then .pending says which)."""
        t0 = time.monotonic()
        poller = select.poll()
        for s in self.socks:
            poller.register(s, select.POLLIN)
        while self.pending:
            now = time.monotonic()
            if now - t0 > timeout:
                return None
            for i, j in list(self.pending):
                try:
                    self.socks[i].sendto(_echo((self.base + i) & 0xFFFF, j), (self.targets[j], 0))
                except OSError:  # no route/neighbour yet: next round
                    pass
            end = time.monotonic() + round_s
            while self.pending and time.monotonic() < end:
                for fd, _ in poller.poll(max(1, int((end - time.monotonic()) * 1000))):
                    s = self.socks[self.by_fd[fd]]
                    while True:
                        try:
                            pkt = s.recv(2048)
                        except BlockingIOError:
                            break
                        ihl = (pkt[0] & 0x0F) * 4
                        if len(pkt) >= ihl + 8 and pkt[ihl] == 0:  # echo reply
                            ident, seq = struct.unpack("!HH", pkt[ihl + 4:ihl + 8])
                            self.pending.discard(((ident - self.base) & 0xFFFF, seq))
        return time.monotonic() - t0
