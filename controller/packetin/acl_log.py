"""ACL logging: one structured line per connection attempt a logged rule decides.

A rule with `log: true` sends a copy of the packet to the controller (see
`controller.layers.acl`, metered per tenant and host). The packet-in's cookie names
the flow, the flow its rule and port; the frame gives the 5-tuple. Lines are kept in
memory per tenant (the last LOG_KEEP) for `nvctl logs`, and appended as JSON lines to
a file when the controller has one (STATE_DIR/acl.log).
"""
from __future__ import annotations

import ipaddress
import json
import queue
import struct
import threading
import time
from collections import deque

from dataplane.match_action import ETH_TYPE_IP, ETH_TYPE_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP

LOG_KEEP = 10_000  # lines kept per tenant
# The switches' meters cap each tenant at ACL_LOG_PPS per host; a tenant on many hosts
# could still send hosts x that. The controller takes at most this many lines a second
# per tenant (a token bucket) and counts the rest as suppressed.
TENANT_LOG_PPS = 500
TENANT_LOG_BURST = 500
PROTO_NAMES = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp", IPPROTO_ICMP: "icmp", IPPROTO_ICMPV6: "icmp6"}


def five_tuple(frame: bytes) -> dict | None:
    """{"proto", "src", "dst", "sport", "dport"} of an Ethernet frame (IPv4 or IPv6,
    one VLAN tag at most); ICMP gives its type and code as sport/dport. None if the
    frame is not IP."""
    if len(frame) < 14:
        return None
    (et,) = struct.unpack_from("!H", frame, 12)
    off = 14
    if et == 0x8100 and len(frame) >= 18:
        (et,) = struct.unpack_from("!H", frame, 16)
        off = 18
    if et == ETH_TYPE_IP and len(frame) >= off + 20:
        ihl = (frame[off] & 0x0F) * 4
        proto = frame[off + 9]
        src, dst = ipaddress.IPv4Address(frame[off + 12:off + 16]), ipaddress.IPv4Address(frame[off + 16:off + 20])
        l4 = off + ihl
    elif et == ETH_TYPE_IPV6 and len(frame) >= off + 40:
        proto = frame[off + 6]
        src, dst = ipaddress.IPv6Address(frame[off + 8:off + 24]), ipaddress.IPv6Address(frame[off + 24:off + 40])
        l4 = off + 40
    else:
        return None
    sport = dport = None
    if proto in (IPPROTO_TCP, IPPROTO_UDP) and len(frame) >= l4 + 4:
        sport, dport = struct.unpack_from("!HH", frame, l4)
    elif proto in (IPPROTO_ICMP, IPPROTO_ICMPV6) and len(frame) >= l4 + 2:
        sport, dport = frame[l4], frame[l4 + 1]  # type, code
    return {"proto": PROTO_NAMES.get(proto, str(proto)), "src": str(src), "dst": str(dst),
            "sport": sport, "dport": dport}


class AclLog:
    def __init__(self, path: str | None = None, clock=time.time, keep: int = LOG_KEEP):
        self.path = path
        self.clock = clock
        self.keep = keep
        self.epoch = clock()  # which controller's sequence numbers these are
        self._lines: dict[str, deque] = {}
        self._seq = 0
        self._lock = threading.Lock()
        self.written: dict[str, int] = {}  # tenant -> lines logged since start (a metric)
        self._out: queue.SimpleQueue | None = None  # lines for the file, written by a thread of its own
        self._bucket: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, when)
        self.suppressed: dict[str, int] = {}  # tenant -> lines over TENANT_LOG_PPS, not kept

    def add(self, tenant: str, host: str, rule, port: str, frame: bytes) -> dict | None:
        """Log one packet of `rule` (an AclRule) from or to `port`. None if not IP."""
        return self._add(tenant, host, {"layer": "acl", "index": rule.index, "rule": rule.label,
                                        "direction": rule.direction, "port": port,
                                        "verdict": "deny" if rule.action == "deny" else "allow"}, frame)

    def add_policy(self, tenant: str, host: str, policy, kind: str, rule_index: int | None, port: str,
                   frame: bytes) -> dict | None:
        """Log one packet a network policy decided: a new connection rule `rule_index` of
        `policy`'s `kind` ("Ingress"/"Egress") rules allowed, or (rule_index None) one
        `port`, isolated for `kind`, dropped because no rule allows it. None if not IP."""
        if rule_index is None:
            rule, verdict = f"{kind.lower()} isolation ({policy})", "deny"
        else:
            rule, verdict = f"policy {policy.name} {kind.lower()}[{rule_index}]", "allow"
        return self._add(tenant, host, {"layer": "networkPolicies", "index": None if rule_index is None
                                        else policy.index, "rule": rule,
                                        "direction": "to-port" if kind == "Ingress" else "from-port",
                                        "port": port, "verdict": verdict}, frame)

    def _add(self, tenant: str, host: str, fields: dict, frame: bytes) -> dict | None:
        ft = five_tuple(frame)
        if ft is None:
            return None
        with self._lock:
            now = self.clock()
            tokens, when = self._bucket.get(tenant, (TENANT_LOG_BURST, now))
            tokens = min(TENANT_LOG_BURST, tokens + (now - when) * TENANT_LOG_PPS)
            if tokens < 1:
                self._bucket[tenant] = (tokens, now)
                self.suppressed[tenant] = self.suppressed.get(tenant, 0) + 1
                return None
            self._bucket[tenant] = (tokens - 1, now)
            self._seq += 1
            e = {"seq": self._seq, "time": now, "tenant": tenant, "host": host, **fields, **ft}
            q = self._lines.get(tenant)
            if q is None:
                q = self._lines[tenant] = deque(maxlen=self.keep)
            q.append(e)
            self.written[tenant] = self.written.get(tenant, 0) + 1
            if self.path:
                if self._out is None:
                    self._out = queue.SimpleQueue()
                    threading.Thread(target=self._write, args=(self.path, self._out), name="acl-log",
                                     daemon=True).start()
                self._out.put(e)
        return e

    def _write(self, path: str, q: "queue.SimpleQueue") -> None:
        """The file's writer: packet-ins (the OpenFlow thread) never wait on the disk."""
        f = None
        while True:
            e = q.get()
            if e is None:
                break
            try:
                if f is None:
                    f = open(path, "a", buffering=1)
                f.write(json.dumps(e, sort_keys=True) + "\n")
            except OSError:
                f = None  # the in-memory log still has it; try to open again next line
        if f is not None:
            f.close()

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until the file has every line logged so far (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._out is not None and not self._out.empty() and time.monotonic() < deadline:
            time.sleep(0.01)

    def since(self, tenant: str, after: int = 0, limit: int = 1000) -> list[dict]:
        """The tenant's entries with seq > after, oldest first, at most `limit` (the newest)."""
        with self._lock:
            got = [e for e in self._lines.get(tenant, ()) if e["seq"] > after]
        return got[-limit:] if limit else got

    def forget(self, tenant: str) -> None:
        with self._lock:
            self._lines.pop(tenant, None)
            self.written.pop(tenant, None)
            self.suppressed.pop(tenant, None)
            self._bucket.pop(tenant, None)
