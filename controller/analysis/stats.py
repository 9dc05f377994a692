"""Counters by intent: what each port, ACL rule, load-balancer backend and NAT rule of a
tenant has seen, from the switches' own counters.

Every flow the compiler makes carries `stat` tags saying what its packets count as
(`("port", "vm1", "sent")`, `("acl", 3)`, ...). A switch reports per-flow packet and
byte counts by cookie; the cookie finds the compiled flow, the flow its tags. Meters
give the drops by rate limit and by the flood (BUM) limit, a load balancer's select
group its connections per backend (bucket). Everything is summed over the tenant's
hosts. One flow counts towards every tag it carries: a denied packet counts for its
rule and as an ACL drop of its port.

What counts where:
  port sent         packets the workload sent into br-int (classify)
  port received     packets delivered to it by the pipeline (ARP and ND answered by
                    the platform on its behalf are not)
  dropped           portSecurity: not its own MAC/IP (a DHCP answer from a
                    workload is its switch's drop, dhcpServer);
                    acl: a deny rule guarding it (either direction); rateLimit and
                    bum: over its meter's rate (the meter's drop band)
  acl rule          every packet the rule decided in its direction: the first packet
                    of each connection and the rest of it (replies pass by the
                    switch's "reply of an allowed connection" flow, not the rule)
  lb backend        connections: new connections sent to it (its bucket);
                    replyPackets/Bytes: what came back from it through the VIP;
                    health: its health check's state (up, down, unknown), since
                    when (wall clock), the last probe's result (None: not checked)
  nat               packets translated, per rule and direction

Counters survive reconcile: a flow modified in place (same table, priority and match)
keeps its counts on the switch. A flow that goes away (a port migrated, a rule removed)
takes its counts with it on the switch; `Book` keeps the last counts it read of such a
flow, so totals only go down when a switch restarted or nobody read the counters between
a flow's last packets and its removal.
"""
from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from controller.spaces.ids import BUM_METER_BASE

PORT_DROP_REASONS = ("portSecurity", "acl", "policy", "rateLimit", "bum")


@dataclass
class Reading:
    """What one host's switch said, for one tenant."""
    flows: list  # [(cookie, packets, bytes)]
    meters: dict = field(default_factory=dict)  # meter id -> (band packets, band bytes)
    groups: dict = field(default_factory=dict)  # group id -> [(packets, bytes) per bucket]


def _pb() -> list:
    return [0, 0]


def tag_counts(flows_by_host: dict, readings: dict, cookies=None) -> tuple[dict, dict]:
    """({tag: [packets, bytes]}, {(host, cookie): (flow, packets, bytes)}) from the
    tenant's compiled flows per host ({host: [Flow]}) and each host's Reading.
    `cookies(host)`, if given, returns {cookie: Flow} of those flows (a cached index)."""
    counts: dict = defaultdict(_pb)
    seen: dict = {}
    for host, r in readings.items():
        by_cookie = cookies(host) if cookies else {f.cookie: f for f in flows_by_host.get(host, ())}
        for cookie, pkts, nbytes in r.flows:
            f = by_cookie.get(cookie)
            if f is None:
                continue  # not ours (any more): the reconciler will remove it
            seen[(host, cookie)] = (f, pkts, nbytes)
            for tag in f.stat:
                c = counts[tag]
                c[0] += pkts
                c[1] += nbytes
    return counts, seen


class Book:
    """Keeps, per tenant, the counts of flows that left the switches (see above), and the
    last counts of hosts that could not be read this time (so totals do not drop while
    a host is briefly unreachable). Safe to call from several threads: readings settle
    under a lock, and a reading taken before one already settled (a slow scrape
    finishing after a quick `stats`) changes nothing kept and is answered with the
    newer state."""

    def __init__(self):
        self._lock = threading.Lock()
        self._last: dict = {}  # key -> {(host, cookie): (flow, packets, bytes)}
        self._retired: dict = {}  # key -> {tag: [packets, bytes]}
        self._stamp: dict = {}  # key -> the read stamp of the newest reading settled
        self._stamps = itertools.count(1)

    def stamp(self) -> int:
        """Take before reading the switches; pass to `settle`."""
        return next(self._stamps)

    def forget(self, key) -> None:
        with self._lock:
            self._last.pop(key, None)
            self._retired.pop(key, None)
            self._stamp.pop(key, None)

    def settle(self, key, flows_by_host: dict, readings: dict, counts: dict, seen: dict,
               stamp: int | None = None) -> dict:
        """Add to `counts` what flows no longer on a switch had counted when last read,
        and the last counts of the tenant's hosts not read now. A flow whose identity
        is still wanted on its host with the same tags was modified in place: its counts
        carry on under its new cookie and are not retired."""
        with self._lock:
            fresh = stamp is None or stamp > self._stamp.get(key, 0)
            if not fresh:  # older than what is kept: answer with the newer state instead
                counts.clear()
                for f, p, b in self._last.get(key, {}).values():
                    for tag in f.stat:
                        c = counts[tag]
                        c[0] += p
                        c[1] += b
                for tag, (p, b) in self._retired.get(key, {}).items():
                    c = counts[tag]
                    c[0] += p
                    c[1] += b
                return counts
            retired = self._retired.get(key)
            if retired is None:
                retired = self._retired[key] = defaultdict(_pb)
            last = self._last.get(key, {})
            wanted = {}
            unread = {}
            for (host, cookie), (f, pkts, nbytes) in last.items():
                if (host, cookie) in seen:
                    continue
                if host not in readings and host in flows_by_host:
                    unread[(host, cookie)] = (f, pkts, nbytes)  # not read this time: as last read
                    continue
                ids = wanted.get(host)
                if ids is None:
                    ids = wanted[host] = {(g.identity, g.stat) for g in flows_by_host.get(host, ())}
                if (f.identity, f.stat) in ids:
                    continue
                for tag in f.stat:
                    c = retired[tag]
                    c[0] += pkts
                    c[1] += nbytes
            self._last[key] = {**unread, **seen}
            if stamp is not None:
                self._stamp[key] = stamp
            for tag, (p, b) in list(retired.items()):
                c = counts[tag]
                c[0] += p
                c[1] += b
            for f, p, b in unread.values():
                for tag in f.stat:
                    c = counts[tag]
                    c[0] += p
                    c[1] += b
        return counts


def _pair(c) -> dict:
    return {"packets": c[0], "bytes": c[1]}


def report(tenant, alloc, flows_by_host: dict, readings: dict, book: Book | None = None,
           errors: dict | None = None, clock=time.time, cookies=None, key=None, stamp: int | None = None,
           health: dict | None = None) -> dict:
    """The `nvctl stats --json` document for one tenant (`key`: its entry in `book`,
    by default its name; `health`: its backends' health checks, {(load balancer, port,
    l4 port): {"state", "since", "last", ...}}, controller.packetin.health)."""
    counts, seen = tag_counts(flows_by_host, readings, cookies)
    if book is not None:
        book.settle(tenant.name if key is None else key, flows_by_host, readings, counts, seen, stamp)
    get = counts.get
    zero = (0, 0)
    meters = {h: r.meters for h, r in readings.items()}
    ports = []
    for p in tenant.ports:
        ofport = alloc.ofport.get(p.name)
        on = meters.get(p.host, {})
        dropped = {"portSecurity": _pair(get(("port", p.name, "portSecurity"), zero)),
                   "acl": _pair(get(("port", p.name, "acl"), zero)),
                   "policy": _pair(get(("port", p.name, "policy"), zero)),
                   "rateLimit": _pair(on.get(ofport, zero) if p.rate_limit_mbps is not None else zero),
                   "bum": _pair(on.get(BUM_METER_BASE + ofport, zero) if ofport is not None else zero)}
        ports.append({"name": p.name, "host": p.host, "switch": p.switch, "ip": str(p.ip),
                      "sent": _pair(get(("port", p.name, "sent"), zero)),
                      "received": _pair(get(("port", p.name, "received"), zero)),
                      "dropped": dropped})
    acls = [{"index": a.index, "name": a.label, "direction": a.direction, "action": a.action,
             "priority": a.priority, "log": a.log, **_pair(get(("acl", a.index), zero))}
            for a in tenant.acls]
    policies = []
    for pol in tenant.network_policies:
        rules = [{"kind": kind, "index": r.index,
                  "connections": _pair(get(("policy", pol.index, kind, r.index), zero))["packets"]}
                 for kind, rs in (("Ingress", pol.ingress), ("Egress", pol.egress)) if kind in pol.types
                 for r in rs]
        policies.append({"index": pol.index, "name": pol.name, "namespace": pol.namespace,
                         "types": list(pol.types), "log": pol.log, "rules": rules,
                         "connections": sum(r["connections"] for r in rules)})
    lbs = []
    for lb in tenant.load_balancers:
        gid = alloc.group.get(lb.name)
        live = lb.live  # the group's buckets, in order: a backend found down has none
        buckets = [[0, 0] for _ in live]
        for r in readings.values():
            for i, (bp, _bb) in enumerate(r.groups.get(gid, ())[:len(buckets)]):
                buckets[i][0] += bp
        by_backend = dict(zip(live, buckets))
        backends = []
        for pname, port in lb.backends:
            b = by_backend.get((pname, port), (0, 0))
            ip = str(tenant.port(pname).ip)
            reply = get(("lbReply", lb.protocol, ip, port), zero)
            h = (health or {}).get((lb.name, pname, port)) if lb.health_check is not None else None
            backends.append({"name": pname, "ip": ip, "port": port, "connections": b[0],
                             "replyPackets": reply[0], "replyBytes": reply[1],
                             "inService": (pname, port) not in lb.down,
                             "health": None if h is None else dict(h)})
        lbs.append({"name": lb.name, "vip": str(lb.vip), "port": lb.port, "protocol": lb.protocol,
                    "connections": _pair(get(("lb", lb.name), zero))["packets"], "backends": backends})
    nat = []
    for i, n in enumerate(tenant.nat):
        if n.type == "snat":
            nat.append({"index": i, "kind": "snat", "name": str(n.cidr), "router": n.router,
                        "externalIp": str(tenant.router(n.router).external_ip), "direction": "out",
                        **_pair(get(("nat", i, "out"), zero))})
        else:
            for d in ("out", "in"):
                nat.append({"index": i, "kind": "floating-ip", "name": n.port, "router": n.router,
                            "externalIp": str(n.external_ip), "direction": d,
                            **_pair(get(("nat", i, d), zero))})
    for r in tenant.routers:
        if r.external_ip is not None and any(n.type == "snat" and n.router == r.name for n in tenant.nat):
            nat.append({"index": None, "kind": "snat", "name": f"replies to {r.external_ip}", "router": r.name,
                        "externalIp": str(r.external_ip), "direction": "in",
                        **_pair(get(("snatReplies", r.name), zero))})
    switches = [{"name": s.name, "invalid": _pair(get(("switch", s.name, "invalid"), zero)),
                 "dhcpServer": _pair(get(("switch", s.name, "dhcpServer"), zero))}
                for s in tenant.switches]
    return {"tenant": tenant.name, "time": clock(), "hosts": sorted(readings),
            "unread": dict(sorted((errors or {}).items())),
            "ports": ports, "acls": acls, "networkPolicies": policies, "loadBalancers": lbs, "nat": nat,
            "switches": switches}


def drop_counts(r: dict) -> dict:
    """{(kind, name, reason): packets} of a stats report: what `drops` compares."""
    out = {}
    for p in r["ports"]:
        for reason, c in p["dropped"].items():
            if reason == "acl":
                continue  # by rule, below
            out[("port", p["name"], reason)] = c["packets"]
    for a in r["acls"]:
        if a["action"] == "deny":
            out[("acl", a["name"], "acl")] = a["packets"]
    for s in r.get("switches", ()):
        out[("switch", s["name"], "invalid")] = s["invalid"]["packets"]
        out[("switch", s["name"], "dhcpServer")] = s.get("dhcpServer", {}).get("packets", 0)
    return out


def drops(rep: dict, then: dict | None = None) -> list[dict]:
    """Every non-zero drop of a stats report by reason and rule, largest first; with
    `then` (drop_counts of an earlier report of the same tenant), also what dropped
    since then."""
    now = drop_counts(rep)
    where = {p["name"]: p["host"] for p in rep["ports"]}
    out = []
    for (kind, name, reason), n in now.items():
        if not n:
            continue
        row = {"reason": {"portSecurity": "port security", "rateLimit": "rate limit", "bum": "flood (BUM) limit",
                          "acl": "acl", "policy": "network policy (isolated, no rule allows)",
                          "invalid": "invalid connection state",
                          "dhcpServer": "a workload answering DHCP"}[reason],
               "kind": kind, "name": name, "packets": n}
        if kind == "port":
            row["host"] = where.get(name, "")
        if then is not None:
            row["recent"] = n - then.get((kind, name, reason), 0)
        out.append(row)
    out.sort(key=lambda r: (-r.get("recent", 0), -r["packets"], r["reason"], r["name"]))
    return out
