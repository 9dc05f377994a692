"""Twins: a tenant whose slice is another's with its own numbers gets that one's verdict.

Tenants of one shape on the same hosts (the benchmark's deployment: every tenant has the
same switches, router, ACLs and addresses; one in ten has the same hosts as another)
have slices that differ only in the numbers allocated to each: VNIs, ofports, port keys,
MACs, conntrack zones, meter and group ids, the tenant id. `twin_map(sliced, rep, other)`
walks both tenants' own flows on each host side by side, flow by flow, and returns the
renaming `pi` (value in `rep`'s slice -> value in `other`'s, per class of fields) under
which `other`'s slice is exactly `rep`'s, or None. When it exists, and `rep`'s check
found nothing (no violation, no escape, no misfit), `other`'s check would find nothing
either, with the same counts, and its targets are `rep`'s renamed (`renamed_targets`).

Why that is a proof. The engine (`hs.Engine`) and the checks treat the values renamed
only through equality: lookups keyed by a value, matches of the whole field (a cube),
set_field and move of whole fields, output to a port, summaries keyed by reg13/reg15,
conntrack zones, meter and group ids looked up by id. A permutation of a field's values
that maps `rep`'s flows onto `other`'s therefore maps every symbolic run of `rep`'s slice
onto the run of `other`'s from the renamed start, state by state, provided that:

  - the relation is one-to-one in each class of fields (fields joined by a Move, and an
    output's port with in_port), so it extends to a permutation of the class's values;
  - every partial mask any flow of either slice (the shared flows included) tests or
    writes in the class is kept by each renamed pair (a & m == b & m), and no masked
    write (set_field with a mask, check_pkt_larger) touches a class with a renamed pair;
  - the values the engine and the checks use as constants are left alone: 0 (every
    register starts at 0), the shared flows' values, the tunnel and external ofports,
    the hosts' addresses;
  - a class with a renamed pair holds only identifier fields (registers, metadata,
    in_port, tunnel_id, MAC fields, ct_zone; not addresses, TTLs or conntrack state);
  - ownership is kept: a VNI, tenant id, port (per host), zone, group or meter is
    `rep`'s if and only if its image is `other`'s (so the scope guard, the isolation
    checks and the shared-resource checks decide alike);
  - both have the same hosts, port names on the same hosts, reach pairs and endpoints
    (host, switch, addresses), and no network policies or external addresses (those
    are checked directly).

Everything else (the order of starts, which summaries the pool reuses) changes only the
order in which the same facts are found. A violation's counterexample is concrete, so a
tenant whose twin has any violation is checked directly.
"""
from __future__ import annotations

from dataplane import headerspace as hs
from dataplane.match_action import (CONTROLLER, IN_PORT, CheckPktLarger, Ct, Goto, Group, Log, Meter,
                                    Move, Output, Resubmit, SetField)

from controller.layers.base import SCOPE_FIELDS

# fields whose values a renaming may move: identifiers compared only for equality
_IDS = frozenset([f"reg{i}" for i in range(16)] + ["metadata", "in_port", "tunnel_id", "eth_src", "eth_dst",
                                                  "arp_sha", "arp_tha", "ipv6_nd_sll", "ipv6_nd_tll", "ct_zone",
                                                  "group"])


class Mismatch(Exception):
    """The two slices are not one another's with other numbers."""


class _Walk:
    """What a side-by-side walk of two flow lists relates and requires."""

    def __init__(self):
        self.fwd: dict = {}  # (field, host for in_port else None, a) -> b: one image per value
        self.parent: dict = {}  # union-find over field names
        self.masks: dict = {}  # field -> {mask}: partial masks tested or written
        self.masked_writes: set = set()  # fields written with a mask
        self.meters: set = set()  # (host, a, b)
        self.groups: set = set()  # (host, a, b): group ids, their buckets compared

    def find(self, f):
        p = self.parent.get(f, f)
        while p != f:
            f, p = p, self.parent.get(p, p)
        return p

    def union(self, a, b) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[ra] = rb

    def rel(self, field: str, host, a, b) -> None:
        k = (field, host if field == "in_port" else None, a)
        got = self.fwd.get(k)
        if got is None:
            self.fwd[k] = b
        elif got != b:
            raise Mismatch

    def by_field(self) -> dict:
        """field -> [(host or None, a, b)]"""
        out: dict = {}
        for (f, h, a), b in self.fwd.items():
            out.setdefault(f, []).append((h, a, b))
        return out


def _same_match(w: _Walk, host: str, fa, fb) -> None:
    ia, ib = hs.match_items(fa.match), hs.match_items(fb.match)
    if len(ia) != len(ib):
        raise Mismatch
    full = hs.FULL
    fwd = w.fwd
    for (n, v, m), (n2, v2, m2) in zip(ia, ib):
        if n != n2 or m != m2:
            raise Mismatch
        if m == full[n]:
            k = (n, host if n == "in_port" else None, v)
            got = fwd.get(k)
            if got is None:
                fwd[k] = v2
            elif got != v2:
                raise Mismatch
        else:
            if v != v2:
                raise Mismatch
            w.masks.setdefault(n, set()).add(m)


def _same_actions(w: _Walk, host: str, groups_a: dict, groups_b: dict, aa, ab) -> None:
    if len(aa) != len(ab):
        raise Mismatch
    for a, b in zip(aa, ab):
        c = a.__class__
        if c is not b.__class__:
            raise Mismatch
        if c is Output:
            pa, pb = a.port, b.port
            if pa.__class__ is str or pb.__class__ is str:
                if pa != pb:
                    raise Mismatch
                if pa not in (IN_PORT, CONTROLLER):
                    w.union(pa, "in_port")
                continue
            w.rel("in_port", host, pa, pb)
        elif c is SetField:
            if a.field != b.field or a.mask != b.mask:
                raise Mismatch
            va, vb = hs.to_int(a.field, a.value), hs.to_int(b.field, b.value)
            if a.mask is None:
                w.rel(a.field, host, va, vb)
            else:
                if va != vb:
                    raise Mismatch
                w.masks.setdefault(a.field, set()).add(a.mask)
                w.masked_writes.add(a.field)
        elif c is Move:
            if a.src != b.src or a.dst != b.dst:
                raise Mismatch
            w.union(a.src, a.dst)
        elif c is Goto or c is Resubmit:
            if a.table.number != b.table.number:
                raise Mismatch
        elif c is Ct:
            if a.commit != b.commit or a.nat != b.nat or (a.table is None) != (b.table is None) or \
                    (a.table is not None and a.table.number != b.table.number):
                raise Mismatch
            w.rel("ct_zone", host, a.zone, b.zone)
        elif c is Meter:
            if (a.rate_kbps, a.burst_kb, a.unit) != (b.rate_kbps, b.burst_kb, b.unit):
                raise Mismatch
            w.meters.add((host, a.meter_id, b.meter_id))
        elif c is Log:
            if (a.rate_pps, a.burst) != (b.rate_pps, b.burst):
                raise Mismatch
            w.meters.add((host, a.meter_id, b.meter_id))
        elif c is Group:
            if (a.kind, a.watch) != (b.kind, b.watch):  # a fast-failover group: the same choices
                raise Mismatch
            w.rel("group", host, a.group_id, b.group_id)
            ba = groups_a.get(a.group_id) or a.buckets
            bb = groups_b.get(b.group_id) or b.buckets
            if len(ba) != len(bb):
                raise Mismatch
            for x, y in zip(ba, bb):
                _same_actions(w, host, groups_a, groups_b, tuple(x), tuple(y))
        elif c is CheckPktLarger:
            if a != b:
                raise Mismatch
            w.masks.setdefault(a.field, set()).add(1 << a.bit)
            w.masked_writes.add(a.field)
        elif a != b:  # DecTtl and the rest: equal, or no twins
            raise Mismatch


class SharedInfo:
    """What the shared flows of every host fix: the values they use (left alone by a
    renaming), their partial masks, masked writes and moves."""

    def __init__(self, sliced):
        w = _Walk()
        values: dict = {}  # field -> {value}
        for h in sliced.net.hosts:
            groups = sliced.net.hosts[h].groups
            for f in sliced.shared.get(h, ()):
                v = _Walk()
                try:
                    _same_match(v, h, f, f)
                    _same_actions(v, h, groups, groups, f.actions, f.actions)
                except Mismatch:  # pragma: no cover - a flow equals itself
                    raise
                for (fld, _h, a), _b in v.fwd.items():
                    values.setdefault(fld, set()).add(a)
                for fld, ms in v.masks.items():
                    w.masks.setdefault(fld, set()).update(ms)
                w.masked_writes |= v.masked_writes
                for a in list(v.parent):
                    w.union(a, v.find(a))
                for _h, a, _b in v.meters:
                    values.setdefault("meter", set()).add(a)
        values.setdefault("in_port", set()).update({sliced.net.tunnel_ofport, *sliced.net.external.values()})
        pas = {hs.to_int("tun_ipv4_dst", x.pa) for x in sliced.net.hosts.values() if x.pa}
        for f in ("tun_ipv4_src", "tun_ipv4_dst"):
            values.setdefault(f, set()).update(pas)
        self.walk, self.values = w, values


def twin_map(sliced, rep: str, other: str, shared: SharedInfo) -> dict | None:
    """{(field, host or None): {a: b}} renaming `rep`'s slice onto `other`'s (see the module
    docstring), None when there is none."""
    try:
        return _twin_map(sliced, rep, other, shared)
    except Mismatch:
        return None


def _twin_map(sliced, rep: str, other: str, shared: SharedInfo):
    net = sliced.net
    fa, fb = net.tenants[rep], net.tenants[other]
    for ff in (fa, fb):
        if ff.policy or ff.policy6 or ff.owned_external:
            raise Mismatch
    if fa.reach_pairs != fb.reach_pairs or fa.reach_pairs6 != fb.reach_pairs6:
        raise Mismatch
    ea, eb = fa.endpoints, fb.endpoints
    if ea.keys() != eb.keys():
        raise Mismatch
    for p, x in ea.items():
        y = eb[p]
        if (x.host, x.switch, x.ip, x.ip6) != (y.host, y.switch, y.ip, y.ip6):
            raise Mismatch
    hosts = sorted(sliced.hosts_of.get(rep, ()))
    if hosts != sorted(sliced.hosts_of.get(other, ())):
        raise Mismatch
    w = _Walk()
    # the starts: each port of rep's and other's of the same name, on the same host
    pa = {ref.port: k for k, ref in ((k, net.ports[k]) for k in sliced.base._tenant_ports(rep))}
    pb = {ref.port: k for k, ref in ((k, net.ports[k]) for k in sliced.base._tenant_ports(other))}
    if pa.keys() != pb.keys():
        raise Mismatch
    for name, (h, x) in pa.items():
        h2, y = pb[name]
        if h != h2:
            raise Mismatch
        w.rel("in_port", h, x, y)
    for h in hosts:
        la, lb = sliced.own_flows(rep, h), sliced.own_flows(other, h)
        if len(la) != len(lb):
            raise Mismatch
        groups = net.hosts[h].groups
        for x, y in zip(la, lb):
            if x.table.number != y.table.number or x.priority != y.priority:
                raise Mismatch
            _same_match(w, h, x, y)
            _same_actions(w, h, groups, groups, x.actions, y.actions)
    sw = shared.walk
    for a in list(sw.parent):
        w.union(a, sw.find(a))
    # the classes, and each one's relation: one-to-one, the constants left alone
    classes: dict = {}  # root -> {fields}
    pairs = w.by_field()
    for f in set(pairs) | set(w.masks) | set(sw.masks) | w.masked_writes | sw.masked_writes | \
            set(shared.values):
        classes.setdefault(w.find(f), set()).add(f)
    pi: dict = {}
    for root, fields in classes.items():
        fwd: dict = {}
        bwd: dict = {}
        moved = set()
        for f in fields:
            for h, a, b in pairs.get(f, ()):
                key = h if "in_port" in fields else None
                if fwd.setdefault((key, a), b) != b or bwd.setdefault((key, b), a) != a:
                    raise Mismatch
                if a != b:
                    moved.add((key, a))
                    moved.add((key, b))
        scope = fields & set(SCOPE_FIELDS)
        _owned_alike(sliced, rep, other, fields, scope, fwd)
        if not moved:
            continue
        if not fields <= _IDS or ("in_port" in fields and len(fields) > 1):
            raise Mismatch  # in_port's values are per host: renamed alone
        if fields & (w.masked_writes | sw.masked_writes):
            raise Mismatch
        masks = set()
        for f in fields:
            masks |= w.masks.get(f, set()) | sw.masks.get(f, set())
        fixed = {0}
        for f in fields:
            fixed |= shared.values.get(f, set())
        if len(scope) > 1 and not scope <= {"reg13", "tunnel_id"}:
            raise Mismatch
        for (key, a), b in fwd.items():
            if a == b:
                continue
            if a in fixed or b in fixed:
                raise Mismatch
            for m in masks:
                if a & m != b & m:
                    raise Mismatch
        for f in fields:
            pi[f] = {a: b for (key, a), b in fwd.items() if key is None}
        if "in_port" in fields:
            pi["in_port@"] = {(key, a): b for (key, a), b in fwd.items()}
    # the ones the classes above do not cover: a zone, group or meter seen without a pair
    for h, a, b in w.meters:
        if ((h, a) in fa.meters) != ((h, b) in fb.meters) or (a != b and a in shared.values.get("meter", ())):
            raise Mismatch
    mf: dict = {}
    mb: dict = {}
    for h, a, b in w.meters:
        if mf.setdefault((h, a), b) != b or mb.setdefault((h, b), a) != a:
            raise Mismatch
    for f, ok in (("ct_zone", fa.zones), ("group", fa.groups)):
        for _h, a, b in pairs.get(f, ()):
            if (a in ok) != (b in (fb.zones if f == "ct_zone" else fb.groups)):
                raise Mismatch
    return pi


def _owned_alike(sliced, rep: str, other: str, fields: set, scope: set, fwd: dict) -> None:
    """A value is rep's exactly when its image is other's; a value renamed is rep's."""
    net, own = sliced.net, sliced.own
    fa, fb = net.tenants[rep], net.tenants[other]
    for (key, a), b in fwd.items():
        if "in_port" in fields:
            ra, rb = net.ports.get((key, a)), net.ports.get((key, b))
            if (ra is not None and ra.tenant == rep) != (rb is not None and rb.tenant == other):
                raise Mismatch
            if a != b and (ra is None or ra.tenant != rep):
                raise Mismatch
            if a == b and ra is not rb:
                raise Mismatch
        for f in scope - {"in_port"}:
            oa, ob = own.owner(key, f, a), own.owner(key, f, b)
            if (oa == rep) != (ob == other) or (a != b and oa != rep) or (a == b and oa != ob):
                raise Mismatch
        if "ct_zone" in fields and (a in fa.zones) != (b in fb.zones):
            raise Mismatch
        if "group" in fields and (a in fa.groups) != (b in fb.groups):
            raise Mismatch


def renamed_targets(targets, pi: dict) -> frozenset:
    """A clean twin's targets ((host, ofport) its packets are output to) as the other's:
    every port of the twin's is related (its starts); the others are constants (the
    tunnel's)."""
    ports = pi.get("in_port@", {})
    return frozenset((h, ports.get((h, p), p)) for h, p in targets)
