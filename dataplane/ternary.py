"""Ternary packet sets for header-space analysis: terms, their intersection and
difference, and a witness solver. A *term* is a conjunction of ternary constraints on
variables (`cons`: var -> (value, care mask)) minus a union of ternary cubes (`negs`).
Variables name the bits of one header field (`INPUT` for the packet as it arrived;
`dataplane.headerspace` makes fresh ones as actions rebind fields).

This module imports nothing else of ours but `dataplane.match_action` (STYLE.md walls).
"""
from __future__ import annotations

import ipaddress
from functools import lru_cache

from dataplane.match_action import ETH_TYPE_IP, FIELDS, IPPROTO_TCP, IPPROTO_UDP, Unsupported

NAMES: tuple[str, ...] = tuple(FIELDS)
NF = len(NAMES)
BITS = {n: FIELDS[n].bits for n in NAMES}
VAR_SHIFT = 8  # a variable is serial << VAR_SHIFT | its width in bits (up to 128: IPv6)
WIDTH = (1 << VAR_SHIFT) - 1
INPUT = {n: (i << VAR_SHIFT) | BITS[n] for i, n in enumerate(NAMES)}
FULL = {n: (1 << BITS[n]) - 1 for n in NAMES}
_ETH_TYPE_FULL = FULL["eth_type"]

# Constants are not variables: a field bound to a constant is bound to the 1-tuple (value,).


def full_of(var) -> int:
    return (1 << (var & WIDTH)) - 1


@lru_cache(maxsize=1 << 18)
def to_int(name: str, value) -> int:
    kind = FIELDS[name].kind
    if kind == "int":
        return value
    if kind == "mac":
        return int(value.replace(":", ""), 16)
    if kind == "ipv6":
        return int(ipaddress.IPv6Address(value))
    return int(ipaddress.IPv4Address(value))


def from_int(name: str, n: int):
    kind = FIELDS[name].kind
    if kind == "int":
        return n
    if kind == "mac":
        return ":".join(f"{(n >> s) & 0xFF:02x}" for s in range(40, -1, -8))
    if kind == "ipv6":
        return str(ipaddress.IPv6Address(n))
    return str(ipaddress.IPv4Address(n))


@lru_cache(maxsize=1 << 18)
def _item(name: str, value, mask) -> tuple:
    v = to_int(name, value)
    m = FULL[name] if mask is None else to_int(name, mask)
    return (name, v & m, m)


_MATCH_CACHE: dict[int, tuple] = {}


def match_items(match) -> tuple:
    """A Match as ((field, value int, mask int), ...), cached per Match object."""
    hit = _MATCH_CACHE.get(id(match))
    if hit is not None and hit[0] is match:
        return hit[1]
    items = tuple([_item(n, v, m) for n, v, m, _ in match.items])
    if len(_MATCH_CACHE) > 1 << 20:
        _MATCH_CACHE.clear()
    _MATCH_CACHE[id(match)] = (match, items)
    return items


# --------------------------------------------------------------------------------------
# Terms: conjunction of ternary constraints minus a union of cubes
# --------------------------------------------------------------------------------------


def conj(cons: dict, negs: tuple, items) -> tuple | None:
    """(cons, negs) AND the cube `items` ((var-or-const, value, mask)...); None if empty."""
    new = None
    for var, v, m in items:
        if var.__class__ is tuple:
            if (var[0] ^ v) & m:
                return None
            continue
        c = (cons if new is None else new).get(var)
        if c is None:
            if new is None:
                new = dict(cons)
            new[var] = (v, m)
        else:
            cv, cm = c
            if (cv ^ v) & cm & m:
                return None
            if m & ~cm:
                if new is None:
                    new = dict(cons)
                new[var] = (cv | v, cm | m)
    if new is None:
        return cons, negs
    if not negs:
        return new, negs
    return _prune(new, negs)


def _reduce(cons: dict, neg) -> tuple | None | bool:
    """A cube restricted to what `cons` does not already imply: False if disjoint from
    cons, () if cons lies inside it, else the remaining items."""
    rest = []
    changed = False
    for it in neg:
        var, v, m = it
        if var.__class__ is tuple:
            if (var[0] ^ v) & m:
                return False
            changed = True
            continue
        c = cons.get(var)
        if c is None:
            rest.append(it)
            continue
        cv, cm = c
        if (cv ^ v) & cm & m:
            return False
        r = m & ~cm
        if r:
            if r != m:
                rest.append((var, v & r, r))
                changed = True
            else:
                rest.append(it)
        else:
            changed = True
    return tuple(rest) if changed else neg


def _prune(cons: dict, negs: tuple) -> tuple | None:
    out = []
    for neg in negs:
        r = _reduce(cons, neg)
        if r is False:
            continue
        if not r:
            return None
        if len(r) == 1 and _single_bit(r[0][2]):  # not (x bit = b)  ==  x bit = !b
            var, v, m = r[0]
            cons = dict(cons)
            cv, cm = cons.get(var, (0, 0))
            cons[var] = (cv | (~v & m), cm | m)
            return _prune(cons, negs)
        out.append(r)
    return cons, tuple(out)


def _single_bit(m: int) -> bool:
    return m & (m - 1) == 0


def minus(cons: dict, negs: tuple, items) -> tuple | None:
    """(cons, negs) AND NOT the cube `items`; None if empty."""
    r = _reduce(cons, tuple(items))
    if r is False:
        return cons, negs
    if not r:
        return None
    if len(r) == 1 and _single_bit(r[0][2]):
        var, v, m = r[0]
        return conj(cons, negs, ((var, ~v & m, m),))
    if r in negs:  # already excluded (repeated outputs to one port, say)
        return cons, negs
    return cons, negs + (r,)


_PREF = {"eth_type": ETH_TYPE_IP, "ip_proto": IPPROTO_TCP, "ip_ttl": 64, "tcp_src": 40000,
         "tcp_dst": 80, "udp_src": 40000, "udp_dst": 53, "icmpv4_type": 8}


def _pref(var) -> int:
    serial = var >> VAR_SHIFT
    if serial < NF:
        return _PREF.get(NAMES[serial], 0) & full_of(var)
    return 0


def solve(cons: dict, negs: tuple, budget: int = 20000) -> dict | None:
    """A concrete value for every variable of (cons, negs), or None if the set is empty.
    Complete (escapes every cube bit by bit, depth first), within `budget` steps."""
    steps = [0]

    def value(cons, var):
        cv, cm = cons.get(var, (0, 0))
        return cv | (_pref(var) & ~cm)

    def rec(cons, negs):
        steps[0] += 1
        if steps[0] > budget:
            raise Unsupported("witness search budget exhausted")
        for i, neg in enumerate(negs):
            if all(not ((value(cons, var) ^ v) & m) for var, v, m in neg):
                break  # the preferred point lies in this cube: escape it
        else:
            vals = {var: value(cons, var) for var in cons}
            for neg in negs:
                for var, _v, _m in neg:
                    vals.setdefault(var, value(cons, var))
            return vals
        for var, v, m in neg:
            cv, cm = cons.get(var, (0, 0))
            free = m & ~cm
            while free:
                bit = free & -free
                free ^= bit
                r = conj(cons, negs, ((var, ~v & bit, bit),))
                if r is not None:
                    got = rec(*r)
                    if got is not None:
                        return got
        return None

    r = _prune(cons, negs) if negs else (cons, negs)
    if r is None:
        return None
    try:
        return rec(*r)
    finally:
        rec = None  # it calls itself through this cell: a cycle the collector would have to find
