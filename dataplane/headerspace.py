"""Header-space analysis over our flow tables: sets of packets, run symbolically.

A packet set is a *term*: a conjunction of ternary constraints on variables (`cons`:
var -> (value, care mask)) minus a union of ternary cubes (`negs`, the higher-priority
matches a packet did not hit: OpenFlow's "highest priority wins" as lazy subtraction).
Header fields are not constrained directly: each field is *bound* to a variable
(`env`), so actions only rebind and never rewrite constraints:

  set_field f:=c      f is bound to the constant c           (exact)
  move a->b           b is bound to a's variable              (exact: b == a stays known)
  dec_ttl             split ttl<2 (dropped) / ttl>=2, ttl bound to a fresh variable
  ct(...)             split IPv4 / IPv6 / neither; for IP, ct_state bound to each state
                      conntrack can give (+trk with +new, +est[+rpl], +rel[+rpl], +inv),
                      the rest +trk+inv; with nat the translated fields of the packet's
                      family are rebound (to the given address, or to fresh unconstrained
                      variables for ct(nat) of an existing connection)
  group               union over its buckets
  resubmit / goto     the packet set runs through that table and comes back (resubmit)

The variables a term starts with are the input packet's fields, so any point of a term
is a concrete input packet (`witness`) and the whole path condition is kept. The
semantics follow `dataplane.match_action.Simulator` (checked by a property test):
output to the ingress port is dropped, dec_ttl on TTL<=1 ends the current action list,
a table with no matching flow drops. Outputs are recorded, not followed: what happens
on the host behind a tunnel is the caller's business (`compose`).

Runs are memoized at chosen tables (`memo_tables`): the rest of the pipeline from such a
table is run once per concrete value of a few scope registers over the whole header
space, and composed with each caller's term (substitution + intersection).

Nested summaries (`Engine(nested=True)`): a summary that reaches another memo table in
tail position does not compose that table's summary but records a *call* (branch, key),
resolved on the host where the summary is used (`Engine.expand`, or a caller that walks
the calls itself). What a summary looked up is then only its own part of the pipeline
(for a logical switch: its L2 and routing tables, not the per-host dispatch), which is
mostly the same flow objects on every host of the switch: a `SummaryPool` lets engines
of several hosts share a summary when every lookup its run made (the candidate flows per
lookup, not only those that matched) and every group it used are the same on the host
asking (`Summary.trace`), renaming the host in its hops and events.

This module imports nothing else of ours but `dataplane.match_action` (STYLE.md walls).
"""
from __future__ import annotations

from typing import Iterable, Mapping

from dataplane.match_action import (CT_EST, CT_INV, CT_NEW, CT_REL, CT_RPL, CT_DNAT, CT_SNAT,
                                    CT_TRK, ETH_TYPE_IP, ETH_TYPE_IPV6, IN_PORT, IPPROTO_TCP,
                                    IPPROTO_UDP, CONTROLLER, CheckPktLarger, Ct, DecTtl, Flow, Goto,
                                    Group, Log, Meter, Move, Output, Resubmit, SetField, Unsupported)

from dataplane.ternary import (  # noqa: F401  (the terms this engine is built on)
    BITS, FULL, INPUT, NAMES, VAR_SHIFT, WIDTH,
    NF, _ETH_TYPE_FULL, _MATCH_CACHE, _PREF, _item, _pref,
    _prune, _reduce, _single_bit, conj, from_int, full_of,
    match_items, minus, solve, to_int)

LOOP_BOUND = 2  # a (host, table) entered this often in one chain of nested lookups: a loop
MAX_DEPTH = 64

# --------------------------------------------------------------------------------------
# States: one branch of a symbolic run
# --------------------------------------------------------------------------------------

# Hops: (host, table name, flow or None, note); note "" (a flow decided), "miss" (no
# flow matched: OpenFlow table-miss drop), "ttl" (dec_ttl expired), "group" (bucket),
# "group-drop" (an empty bucket: a declared drop).
# Events: ("out", host, port, env, hop), ("res", kind, host, id, hop),
# ("overlap", host, table, flow_a, flow_b, hop), ("loop", host, table, hop),
# ("hairpin", host, port, hop), ("unsupported", host, message, hop).


class State:
    __slots__ = ("cons", "negs", "env", "nvar", "path", "events", "emitted", "fresh", "halted",
                 "stop", "chain")

    def __init__(self, env: dict, cons: dict | None = None):
        self.cons = cons or {}
        self.negs = ()
        self.env = env
        self.nvar = NF
        self.path = ()
        self.events = ()
        self.emitted = False
        self.fresh = True  # every conntrack lookup so far said +new (a connection's first packet)
        self.halted = False  # a loop or something unmodelled: nothing further runs
        self.stop = False  # dec_ttl expired: the rest of this action list is skipped
        self.chain = ()

    def copy(self) -> "State":
        s = State.__new__(State)
        s.cons, s.negs, s.env, s.nvar, s.path, s.events = (self.cons, self.negs, self.env, self.nvar,
                                                          self.path, self.events)
        s.emitted, s.fresh, s.halted, s.stop, s.chain = (self.emitted, self.fresh, self.halted,
                                                         self.stop, self.chain)
        return s

    def var(self, name: str):
        return self.env.get(name) or INPUT[name]

    def concrete(self, var) -> int | None:
        if var.__class__ is tuple:
            return var[0]
        c = self.cons.get(var)
        if c is not None and c[1] == full_of(var):
            return c[0]
        return None

    def value_of(self, name: str) -> int | None:
        return self.concrete(self.var(name))

    def fresh_var(self, name: str) -> int:
        self.nvar += 1
        return (self.nvar << VAR_SHIFT) | BITS[name]

    def bind(self, name: str, var) -> None:
        env = dict(self.env)
        env[name] = var
        self.env = env

    def event(self, ev: tuple) -> None:
        self.events = self.events + (ev,)

    def hop(self, host, table, flow, note="") -> None:
        self.path = self.path + ((host, table, flow, note),)

    def items(self, compiled) -> tuple:
        env = self.env
        return tuple([(env.get(n) or INPUT[n], v, m) for n, v, m in compiled])

    def restrict(self, field_items) -> "State | None":
        """This state AND field tests ((field, value int, mask int), ...)."""
        r = conj(self.cons, self.negs, self.items(field_items))
        if r is None:
            return None
        s = self.copy()
        s.cons, s.negs = r
        return s

    def exclude(self, field_items) -> "State | None":
        r = minus(self.cons, self.negs, self.items(field_items))
        if r is None:
            return None
        s = self.copy()
        s.cons, s.negs = r
        return s

    def witness(self) -> dict | None:
        """var -> value for one point of this set (None: the set is empty)."""
        return solve(self.cons, self.negs)

    def input_packet(self, sol: dict, fields: Iterable[str] = NAMES) -> dict:
        """The input packet's fields at a solution (each field's input variable)."""
        out = {}
        for n in fields:
            var = INPUT[n]
            v = sol.get(var)
            if v is None:
                v = _pref(var)
            out[n] = v
        return out

    def value_at(self, sol: dict, var) -> int:
        if var.__class__ is tuple:
            return var[0]
        v = sol.get(var)
        return _pref(var) if v is None else v


def start_state(constants: Mapping[str, object]) -> State:
    """All packets, with the given fields fixed (OpenFlow-typed values or ints)."""
    env = {}
    for n, v in constants.items():
        env[n] = (v if isinstance(v, int) else to_int(n, v),)
    return State(env)


# --------------------------------------------------------------------------------------
# One host's tables, indexed
# --------------------------------------------------------------------------------------

KEY_FIELDS = ("in_port", "tunnel_id", "reg13")
KEY2_FIELDS = ("reg15", "reg14", "in_port", "tun_ipv4_src")  # within a bucket: a switch's ports, a tunnel's peers


class _TableIndex:
    """A table's flows by the value one field (`key`) must have exactly, and within a
    bucket by a second field (`key2`): a lookup with both values concrete is offered only
    the flows that can match them (a flow that pins either field to another value cannot
    match a packet whose field is that constant, so leaving it out changes nothing)."""
    __slots__ = ("table", "key", "key2", "buckets", "wild", "merged", "merged2", "all",
                 "tunnel_matches", "flat")

    def __init__(self, table, flows: list):
        self.table = table
        counts = {k: 0 for k in KEY_FIELDS}
        entries = []
        for f in flows:
            items = match_items(f.match)
            entries.append((f.priority, items, f))
            for n, _v, m in items:
                if n in counts and m == FULL[n]:
                    counts[n] += 1
        best = max(KEY_FIELDS, key=lambda k: counts[k])
        self.key = best if counts[best] * 2 >= len(flows) and counts[best] else None
        self.key2 = None
        if self.key is not None:
            c2 = {k: 0 for k in KEY2_FIELDS if k != self.key}
            for _p, items, _f in entries:
                for n, _v, m in items:
                    if n in c2 and m == FULL[n]:
                        c2[n] += 1
            best2 = max(c2, key=lambda k: c2[k])
            if c2[best2] * 2 >= len(flows):
                self.key2 = best2
        self.buckets: dict = {}
        self.wild: list = []
        self.tunnel_matches = 0  # flows added that match tunnel_id (not decremented)
        for e in entries:
            self.add(e)
        self.merged: dict = {}
        self.merged2: dict = {}  # key value -> key2 value -> groups
        self.all = None
        self.flat: dict = {}  # (key value, key2 value) -> the candidate flows, in order

    def with_flows(self, flows: list) -> "_TableIndex":
        """This index with `flows` added, as a new index (this one unchanged): the same key
        fields, the buckets copied. For a slice: a prebuilt index of the flows every slice
        shares, plus one tenant's few."""
        t = _TableIndex.__new__(_TableIndex)
        t.table, t.key, t.key2 = self.table, self.key, self.key2
        t.buckets = {k: list(v) for k, v in self.buckets.items()}
        t.wild = list(self.wild)
        t.tunnel_matches = self.tunnel_matches
        t.merged, t.merged2, t.all, t.flat = {}, {}, None, {}
        for f in flows:
            t.add((f.priority, match_items(f.match), f))
        return t

    def add(self, e) -> None:
        for it in e[1]:
            if it[0] == "tunnel_id":
                self.tunnel_matches += 1
                break
        k = self._key_of(e[1])
        (self.wild if k is None else self.buckets.setdefault(k, [])).append(e)

    def _key_of(self, items):
        if self.key is None:
            return None
        for n, v, m in items:
            if n == self.key and m == FULL[n]:
                return v
        return None

    def remove(self, flow) -> None:
        k = self._key_of(match_items(flow.match))
        lst = self.wild if k is None else self.buckets.get(k, [])
        for i, e in enumerate(lst):
            if e[2] is flow or (e[2].cookie == flow.cookie and e[2].body == flow.body):
                del lst[i]
                break

    def flows_for(self, value, value2=None) -> tuple:
        """The flows `groups_for` offers, in its order (what a lookup consults)."""
        k = (value, value2)
        hit = self.flat.get(k)
        if hit is None:
            hit = self.flat[k] = tuple([e[2] for _p, es in self.groups_for(value, value2) for e in es])
        return hit

    def groups_for(self, value, value2=None):
        """[(priority, [entries])] highest first, for a concrete key value (None: all),
        and if given a concrete key2 value: without the flows that pin key2 otherwise."""
        if value2 is not None and value is not None and self.key2 is not None:
            per = self.merged2.get(value)
            if per is None:
                per = self.merged2[value] = {}
            hit = per.get(value2)
            if hit is None:
                k2, full2 = self.key2, FULL[self.key2]
                hit = []
                for prio, es in self.groups_for(value):
                    keep = []
                    for e in es:
                        for n, v, m in e[1]:
                            if n == k2 and m == full2 and v != value2:
                                break
                        else:
                            keep.append(e)
                    if keep:
                        hit.append((prio, keep))
                per[value2] = hit
            return hit
        hit = self.merged.get(value) if value is not None else self.all
        if hit is not None:
            return hit
        if value is None:
            lst = list(self.wild)
            for b in self.buckets.values():
                lst.extend(b)
        else:
            lst = self.buckets.get(value, []) + self.wild
        lst.sort(key=lambda e: -e[0])
        out = []
        for e in lst:
            if out and out[-1][0] == e[0]:
                out[-1][1].append(e)
            else:
                out.append((e[0], [e]))
        if value is None:
            self.all = out
        else:
            self.merged[value] = out
        return out


class IndexedHost:
    """One host's flows (and its installed groups: id -> list of bucket action tuples),
    indexed for symbolic lookups."""

    def __init__(self, name: str, flows: Iterable[Flow], groups: Mapping | None = None):
        self.name = name
        self.groups = dict(groups or {})
        self.tables: dict[int, _TableIndex] = {}
        self.table_of: dict[int, object] = {}
        by: dict[int, list] = {}
        for f in flows:
            lst = by.get(f.table.number)
            if lst is None:
                lst = by[f.table.number] = []
                self.table_of[f.table.number] = f.table
            lst.append(f)
        for no, lst in by.items():
            self.tables[no] = _TableIndex(self.table_of[no], lst)

    @classmethod
    def overlay(cls, base: "IndexedHost", flows: Iterable[Flow], groups: Mapping | None = None) -> "IndexedHost":
        """`base`'s flows and `flows` (none of them in base), indexed: base's table indexes
        are reused as they are where `flows` add nothing, extended (`with_flows`) where
        they do. `groups` is kept as given (not copied)."""
        h = cls.__new__(cls)
        h.name = base.name
        h.groups = groups if groups is not None else base.groups
        h.tables = dict(base.tables)
        h.table_of = dict(base.table_of)
        by: dict[int, list] = {}
        for f in flows:
            lst = by.get(f.table.number)
            if lst is None:
                lst = by[f.table.number] = []
            lst.append(f)
        for no, lst in by.items():
            ti = base.tables.get(no)
            if ti is None:
                h.table_of[no] = lst[0].table
                h.tables[no] = _TableIndex(lst[0].table, lst)
            elif len(ti.wild) + sum(map(len, ti.buckets.values())) <= len(lst):
                # few of its own (a miss flow): indexed afresh, so that the key fits the new flows
                h.tables[no] = _TableIndex(ti.table, [e[2] for e in ti.wild] +
                                           [e[2] for b in ti.buckets.values() for e in b] + lst)
            else:
                h.tables[no] = ti.with_flows(lst)
        return h

    def change(self, removed: Iterable[Flow], added: Iterable[Flow]) -> set:
        """Apply a flow diff in place; returns the touched lookup keys (table, key value),
        with (table, "*") when a flow without a key value changed."""
        touched = set()
        for f, add in [(f, False) for f in removed] + [(f, True) for f in added]:
            no = f.table.number
            ti = self.tables.get(no)
            if ti is None:
                self.table_of[no] = f.table
                ti = self.tables[no] = _TableIndex(f.table, [])
            k = ti._key_of(match_items(f.match))
            if add:
                ti.add((f.priority, match_items(f.match), f))
            else:
                ti.remove(f)
            ti.all = None
            ti.flat.clear()
            if k is None:
                ti.merged.clear()
                ti.merged2.clear()
                touched.add((no, "*"))
            else:
                ti.merged.pop(k, None)
                ti.merged2.pop(k, None)
                touched.add((no, k))
        return touched


# --------------------------------------------------------------------------------------
# The symbolic run
# --------------------------------------------------------------------------------------

_IP_STATES = (  # what conntrack can say about an IP packet: (value, mask) over ct_state
    ("new", (CT_TRK | CT_NEW, FULL["ct_state"])),
    ("est", (CT_TRK | CT_EST, FULL["ct_state"] & ~(CT_RPL | CT_SNAT | CT_DNAT))),
    ("rel", (CT_TRK | CT_REL, FULL["ct_state"] & ~(CT_RPL | CT_SNAT | CT_DNAT))),
    ("inv", (CT_TRK | CT_INV, FULL["ct_state"])),
)
# conntrack's families: (eth_type, its field test, the address fields, what an existing
# connection's ct(nat) may rewrite). Anything else is +trk+inv (no tuple to track).
_CT_FAMILIES = tuple(
    (et, (("eth_type", et, _ETH_TYPE_FULL),), (f"{ip}_src", f"{ip}_dst"),
     (f"{ip}_src", f"{ip}_dst", "tcp_src", "tcp_dst", "udp_src", "udp_dst"))
    for et, ip in ((ETH_TYPE_IP, "ipv4"), (ETH_TYPE_IPV6, "ipv6")))
_NAT_FIELDS = _CT_FAMILIES[0][3]  # IPv4's


class Summary:
    """The rest of the pipeline from a memo table over all packets (`states`), the
    lookups it made (`deps`), and `notes`: what callers derived from it (e.g. a
    verifier's per-tenant scan of the branches' events), dropped with the summary.

    With nested summaries (`Engine(nested=True)`), `calls` holds (state, key): branches
    that go on, in tail position, into another memo table; each stands for that state
    followed by the summary `key` names *on the host where it is used* (resolved there,
    not composed here: `Engine.expand`). `trace` (with a `SummaryPool`): every lookup
    the summary's own run consulted, {(table, key value): (key field, candidate flows)}
    and {("G", group id): buckets}, so another host can tell whether the same run on
    its tables would consult exactly the same flows."""
    __slots__ = ("states", "deps", "notes", "calls", "trace", "_dtabs")

    def __init__(self, states, deps, calls=(), trace=None):
        self.states, self.deps = states, deps
        self.calls, self.trace = calls, trace
        self.notes = {}
        self._dtabs = None

    def affected(self, touched: set, tables: set, star: set) -> bool:
        """Did a change of these (table, key) lookups touch what this summary looked at?"""
        if not self.deps.isdisjoint(touched):
            return True
        dt = self._dtabs
        if dt is None:
            dt = self._dtabs = (frozenset(t for t, _ in self.deps),
                                frozenset(t for t, v in self.deps if v is None))
        return not dt[0].isdisjoint(star) or not dt[1].isdisjoint(tables)


class SummaryPool:
    """Summaries shared by the engines of several hosts. A summary computed on one host
    is reused on another when every lookup its run consulted (the table's key field,
    and the whole candidate list for the key value: the same flow objects, or flows
    equal by cookie and text, in the same order) and every group it used are the same
    there: the run is a function of those alone, so it would be the same run, up to
    the host's name (renamed). Sound by construction; checked on every reuse."""

    MAX_VARIANTS = 4  # kept per key: more means the key's flows are per host

    def __init__(self):
        self.by_key: dict = {}  # key -> [(origin host, engine shape, Summary)]
        self._same: dict = {}  # (id a, id b) -> (a, b): distinct flow objects found equal
        self.reused = 0

    def find(self, eng: "Engine", key) -> "Summary | None":
        shape = eng.shape()
        for origin, sh, summ in self.by_key.get(key, ()):
            if sh == shape and self._holds(eng.host, summ.trace):
                self.reused += origin != eng.host.name
                return summ if origin == eng.host.name else _renamed(summ, origin, eng.host.name)
        return None

    def add(self, eng: "Engine", key, summ: "Summary") -> None:
        lst = self.by_key.setdefault(key, [])
        if len(lst) < self.MAX_VARIANTS:
            lst.append((eng.host.name, eng.shape(), summ))

    def _holds(self, host: "IndexedHost", trace: dict) -> bool:
        same = self._same
        for k, rec in trace.items():
            if k[0] == "G":
                if host.groups.get(k[1]) != rec:
                    return False
                continue
            ti = host.tables.get(k[0])
            if rec is None:
                if ti is not None:
                    return False
                continue
            kf, kf2, flows = rec
            if ti is None or ti.key != kf or ti.key2 != kf2:
                return False
            got = ti.flows_for(k[1], k[2])
            if got is flows:
                continue
            if len(got) != len(flows):
                return False
            for a, b in zip(flows, got):
                if a is b:
                    continue
                if a.cookie != b.cookie:
                    return False
                pair = (id(a), id(b))
                if pair not in same:
                    if a.body != b.body or _buckets(a) != _buckets(b):
                        return False
                    same[pair] = (a, b)  # kept alive: the ids stay theirs
        return True


def _buckets(flow) -> list:
    """The buckets a flow's group actions carry (not in its text: used when the host
    has no such group installed)."""
    return [a.buckets for a in flow.actions if a.__class__ is Group]


def _renamed_state(s: State, old: str, new: str) -> State:
    c = s.copy()
    c.path = tuple([(new if h == old else h, t, f, n) for h, t, f, n in s.path])
    if s.events:
        evs = []
        for ev in s.events:
            i = 2 if ev[0] == "res" else 1
            if ev[i] == old:
                ev = ev[:i] + (new,) + ev[i + 1:]
            evs.append(ev)
        c.events = tuple(evs)
    if s.chain:
        c.chain = tuple([(new if h == old else h, t) for h, t in s.chain])
    return c


def _renamed(summ: Summary, old: str, new: str) -> Summary:
    """The same summary as seen from host `new` (host names in hops and events)."""
    return Summary(tuple([_renamed_state(b, old, new) for b in summ.states]), summ.deps,
                   tuple([(_renamed_state(b, old, new), k) for b, k in summ.calls]), summ.trace)


class Engine:
    """Symbolic runs over one host's tables. `memo_tables`: table numbers where the rest
    of the run is summarized per concrete value of `memo_keys` and reused."""

    def __init__(self, host: IndexedHost, tunnel_port: int, memo_tables: Iterable[int] = (),
                 memo_keys: tuple = ("reg13", "reg15", "reg10"), memo: bool = True,
                 nested: bool = False, pool: SummaryPool | None = None):
        self.host = host
        self.tunnel_port = tunnel_port
        self.memo_tables = frozenset(memo_tables) if memo else frozenset()
        self.memo_keys = memo_keys
        self.nested = nested  # summaries call other summaries (Summary.calls)
        self.pool = pool
        self.summaries: dict = {}
        self._busy: set = set()
        self.deps: set = set()  # (table, key value or None) looked up since last reset
        self.lookups = 0
        self._pending: list | None = None  # run_lazy: (state, Summary) not composed
        self._calls = False  # _pending collects a nested summary's (state, key) calls
        self._trace: dict | None = None  # the running summary's lookups (with a pool)
        self._by_dep: dict = {}  # (table, key value) -> summary keys that looked it up
        self._by_table: dict = {}  # table -> summary keys that looked it up
        # a slice's scope guard: `guard.fields` (the scope fields) and `guard.check(state,
        # field)`, called after every write of one of them (set_field, move, a masked
        # set); it raises to say that the packet left the slice (verify_slice)
        self.guard = None

    def _keep(self, key, summ: Summary) -> None:
        self.summaries[key] = summ
        for d in summ.deps:
            self._by_dep.setdefault(d, set()).add(key)
            self._by_table.setdefault(d[0], set()).add(key)

    def shape(self) -> tuple:
        """What, besides the flows looked up, decides the form of a summary."""
        return (self.memo_tables, self.memo_keys, self.nested)

    def summary(self, key) -> Summary:
        """The memoized summary for (memo table, memo key values), computed if needed."""
        summ = self.summaries.get(key)
        return summ if summ is not None else self._summarize(key)

    def expand(self, state: State, summ: Summary) -> list[State]:
        """compose(state, b) for every branch of `summ`, its calls resolved on this host
        and composed too: exactly what running on from `state` at summ's table gives."""
        out = [c for c in (compose(state, b) for b in summ.states) if c is not None]
        for b, key in summ.calls:
            c = compose(state, b)
            if c is not None:
                out.extend(self.continue_at(c, key))
        return out

    def continue_at(self, state: State, key, depth: int = 1) -> list[State]:
        """The rest of the run from `state` at the memo table of `key`, composed."""
        outer, self._pending = self._pending, None
        try:
            return self.table(state, key[0], depth)
        finally:
            self._pending = outer

    def invalidate(self, touched: set) -> None:
        """Forget summaries that looked at a changed (table, key)."""
        if not touched:
            return
        tables = {t for t, _ in touched}
        star = {t for t, k in touched if k == "*"}
        cand = set()
        for d in touched:
            cand |= self._by_dep.get(d, set())
        for t in tables:  # a lookup with no key value saw every flow of the table
            cand |= self._by_dep.get((t, None), set())
        for t in star:
            cand |= self._by_table.get(t, set())
        drop = [key for key in cand if key in self.summaries
                and self.summaries[key].affected(touched, tables, star)]
        for key in drop:
            del self.summaries[key]

    def run(self, state: State, table_no: int = 0) -> list[State]:
        return self.table(state, table_no, 0)

    def run_lazy(self, state: State, table_no: int = 0) -> tuple[list, list]:
        """`run`, except that a memo table entered in tail position (nothing of the run
        follows the lookup: the goto/resubmit/ct is the last action of every enclosing
        action list) is not composed: (finals, pending), where each pending
        (state, summary) stands for `compose(state, b)` for every b in summary.states.
        The union of those is exactly what `run` would return for them."""
        outer, self._pending = self._pending, []
        try:
            finals = self.table(state, table_no, 0, True)
            pending = self._pending
        finally:
            self._pending = outer
        return finals, pending

    # ---- tables ----------------------------------------------------------------------

    def table(self, st: State, tno: int, depth: int, tail: bool = False) -> list[State]:
        hname = self.host.name
        if tno in self.memo_tables and depth <= MAX_DEPTH:
            vals = []
            for k in self.memo_keys:
                vals.append(st.value_of(k))
            key = (tno, tuple(vals))
            if key not in self._busy:
                if tail and self._pending is not None:
                    if self._calls:  # a nested summary: resolved where it is used
                        self._pending.append((st, key))
                        return []
                    summ = self.summary(key)
                    self.deps |= summ.deps
                    self._pending.append((st, summ))
                    return []
                summ = self.summary(key)
                self.deps |= summ.deps
                if self._trace is not None:
                    self._trace.update(summ.trace)
                out = [c for c in (compose(st, b) for b in summ.states) if c is not None]
                for b, k2 in summ.calls:
                    c = compose(st, b)
                    if c is not None:
                        out.extend(self.table(c, k2[0], depth + 1))
                return out
        ti = self.host.tables.get(tno)
        tname = ti.table.name if ti is not None else f"table{tno}"
        ck = (hname, tno)
        if depth > MAX_DEPTH or st.chain.count(ck) >= LOOP_BOUND:
            s = st.copy()
            s.event(("loop", hname, tname, len(s.path)))
            s.halted = True
            return [s]
        if ti is None:
            if self._trace is not None:
                self._trace[(tno, None, None)] = None
            s = st.copy()
            s.hop(hname, tname, None, "miss")
            return [s]
        self.lookups += 1
        value = value2 = None
        if ti.key is not None:
            value = st.value_of(ti.key)
            if ti.key2 is not None and value is not None:
                value2 = st.value_of(ti.key2)
        self.deps.add((tno, value))
        groups = ti.groups_for(value, value2)
        if self._trace is not None:
            self._trace[(tno, value, value2)] = (ti.key, ti.key2, ti.flows_for(value, value2))
        cons, negs = st.cons, st.negs
        out: list[State] = []
        chain = st.chain + (ck,)
        env = st.env
        for _prio, entries in groups:
            matched = []
            for e in entries:
                items = tuple([(env.get(n) or INPUT[n], v, m) for n, v, m in e[1]])
                r = conj(cons, negs, items)
                if r is not None:
                    matched.append((e, items, r))
            if not matched:
                continue
            if len(matched) > 1:
                for i in range(len(matched)):
                    for j in range(i + 1, len(matched)):
                        c2, n2 = matched[i][2]
                        if conj(c2, n2, matched[j][1]) is not None:
                            s = st.copy()
                            s.cons, s.negs = conj(c2, n2, matched[j][1])
                            s.event(("overlap", hname, tname, matched[i][0][2], matched[j][0][2],
                                     len(s.path)))
                            s.hop(hname, tname, matched[i][0][2])
                            s.halted = True  # reported; both flows' outcomes still run below
                            out.append(s)
            for e, _items, (c2, n2) in matched:
                child = st.copy()
                child.cons, child.negs = c2, n2
                child.hop(hname, tname, e[2])
                child.chain = chain
                out.extend(self.actions(child, e[2].actions, depth + 1, tail))
            for _e, items, _r in matched:
                r = minus(cons, negs, items)
                if r is None:
                    cons = None
                    break
                cons, negs = r
            if cons is None:
                break
        if cons is not None:
            child = st.copy()
            child.cons, child.negs = cons, negs
            child.hop(hname, tname, None, "miss")
            out.append(child)
        for s in out:
            s.chain = st.chain
        return out

    def _summarize(self, key) -> Summary:
        if self.pool is not None:
            summ = self.pool.find(self, key)
            if summ is not None:
                self.deps |= summ.deps
                self._keep(key, summ)
                return summ
        tno, vals = key
        env = {k: (v,) for k, v in zip(self.memo_keys, vals) if v is not None}
        outer = self.deps
        outer_pending, outer_calls, outer_trace = self._pending, self._calls, self._trace
        self.deps = set()
        self._pending = [] if self.nested else None
        self._calls = self.nested
        self._trace = {} if self.pool is not None else None
        self._busy.add(key)
        try:
            states = self.table(State(env), tno, 0, self.nested)
            calls, trace = self._pending, self._trace
        finally:
            self._busy.discard(key)
            self._pending, self._calls, self._trace = outer_pending, outer_calls, outer_trace
            deps, self.deps = self.deps, outer | self.deps
        summ = Summary(tuple(states), frozenset(deps), tuple(calls or ()), trace)
        self._keep(key, summ)
        if self.pool is not None:
            self.pool.add(self, key, summ)
        return summ

    # ---- actions ---------------------------------------------------------------------

    def actions(self, st: State, actions, depth: int, tail: bool = False) -> list[State]:
        states = [st]
        last = len(actions) - 1
        for i, act in enumerate(actions):
            nxt = []
            t = tail and i == last
            for s in states:
                if s.halted or s.stop:
                    nxt.append(s)
                else:
                    nxt.extend(self.act(act, s, depth, t))
            states = nxt
        for s in states:
            s.stop = False
        return states

    def act(self, act, s: State, depth: int, tail: bool = False) -> list[State]:
        h = self.host.name
        cls = act.__class__
        if cls is Goto or cls is Resubmit:
            return self.table(s, act.table.number, depth + 1, tail)
        if cls is SetField:
            if act.mask is None:
                s.bind(act.field, (to_int(act.field, act.value),))
            else:
                s = self._masked_set(s, act)
            if self.guard is not None and act.field in self.guard.fields:
                self.guard.check(s, act.field)
            return [s]
        if cls is Output:
            return self._output(s, act)
        if cls is Move:
            s.bind(act.dst, s.var(act.src))
            if self.guard is not None and act.dst in self.guard.fields:
                self.guard.check(s, act.dst)
            return [s]
        if cls is Ct:
            return self._ct(s, act, depth, tail)
        if cls is DecTtl:
            return self._dec_ttl(s)
        if cls is CheckPktLarger:  # the length is not in the header space: both outcomes
            small = s.copy()
            out = [self._masked_set(small, SetField(act.field, 0, 1 << act.bit)),
                   self._masked_set(s, SetField(act.field, 1 << act.bit, 1 << act.bit))]
            if self.guard is not None and act.field in self.guard.fields:
                for c in out:
                    self.guard.check(c, act.field)
            return out
        if cls is Meter:
            s.event(("res", "meter", h, act.meter_id, len(s.path)))
            return [s]
        if cls is Log:  # a metered copy to the controller; the packet goes on unchanged
            s.event(("res", "meter", h, act.meter_id, len(s.path)))
            return [s]
        if cls is Group:
            s.event(("res", "group", h, act.group_id, len(s.path)))
            if self._trace is not None:
                self._trace[("G", act.group_id)] = self.host.groups.get(act.group_id)
            buckets = self.host.groups.get(act.group_id) or act.buckets
            if not buckets:
                s.event(("unsupported", h, f"group {act.group_id} is not installed", len(s.path)))
                s.halted = True
                return [s]
            out = []
            for i, b in enumerate(buckets):
                c = s.copy()
                c.hop(h, f"(group {act.group_id}: bucket {i} of {len(buckets)}"
                         + (", empty: a declared drop)" if not b else ")"), None, "group" if b else "group-drop")
                out.extend(self.actions(c, b, depth + 1, tail))
            return out
        s.event(("unsupported", h, f"action {act!r} is not modelled", len(s.path)))
        s.halted = True
        return [s]

    def _masked_set(self, s: State, act: SetField) -> State:
        name, m = act.field, act.mask
        v = to_int(name, act.value) & m
        old = s.var(name)
        full = FULL[name]
        if old.__class__ is tuple:
            s.bind(name, ((old[0] & ~m) | v,))
            return s
        cv, cm = s.cons.get(old, (0, 0))
        if (cm | m) & full == full:
            s.bind(name, (((cv & ~m) | v) & full,))
            return s
        new = s.fresh_var(name)  # the other bits' link to the old value is given up (sound)
        cons = dict(s.cons)
        cons[new] = ((cv & cm & ~m) | v, (cm & ~m) | m)
        s.cons = cons
        s.bind(name, new)
        return s

    def _output(self, s: State, act: Output) -> list[State]:
        h = self.host.name
        if act.port == CONTROLLER:
            s.event(("out", h, CONTROLLER, s.env, len(s.path)))
            s.emitted = True
            return [s]
        inv = s.var("in_port")
        if act.port == IN_PORT:
            p = s.concrete(inv)
            s.event(("out", h, p if p is not None else ("var", inv), s.env, len(s.path)))
            s.emitted = True
            return [s]
        port = act.port
        p = s.concrete(inv)
        if p is not None:
            if p == port:
                s.event(("hairpin", h, port, len(s.path)))
                return [s]
            s.event(("out", h, port, s.env, len(s.path)))
            s.emitted = True
            return [s]
        out = []
        same = s.restrict((("in_port", port, FULL["in_port"]),))
        if same is not None:
            same.event(("hairpin", h, port, len(same.path)))
            out.append(same)
        other = s.exclude((("in_port", port, FULL["in_port"]),))
        if other is not None:
            other.event(("out", h, port, other.env, len(other.path)))
            other.emitted = True
            out.append(other)
        return out

    def _dec_ttl(self, s: State) -> list[State]:
        h = self.host.name
        var = s.var("ip_ttl")
        if var.__class__ is tuple:
            if var[0] <= 1:
                s.hop(h, "(dec_ttl: TTL expired)", None, "ttl")
                s.stop = True
            else:
                s.bind("ip_ttl", (var[0] - 1,))
            return [s]
        out = []
        low = (("ip_ttl", 0, 0xFE),)
        dead = s.restrict(low)
        if dead is not None:
            dead.hop(h, "(dec_ttl: TTL expired)", None, "ttl")
            dead.stop = True
            out.append(dead)
        live = s.exclude(low)
        if live is not None:
            c = s.concrete(live.var("ip_ttl"))
            live.bind("ip_ttl", (c - 1,) if c is not None else live.fresh_var("ip_ttl"))
            out.append(live)
        return out

    def _ct(self, s: State, act: Ct, depth: int, tail: bool = False) -> list[State]:
        h = self.host.name
        s.event(("res", "zone", h, act.zone, len(s.path)))
        if act.table is None and act.nat is None:
            return [s]  # commit only: nothing the pipeline can observe changes
        branches = []
        etv = s.concrete(s.var("eth_type"))  # the flows that track pin it: one family runs
        for fam in _CT_FAMILIES:
            if etv is not None and etv != fam[0]:
                continue
            ip = s.restrict(fam[1])
            if ip is None:
                continue
            for name, cube in _IP_STATES:
                c = ip.copy()
                if name != "new":
                    c.fresh = False
                cs = self._nat(c, act, name, fam) if act.nat is not None else [c]
                for c2 in cs:
                    if act.table is not None:
                        if cube[1] == FULL["ct_state"]:
                            c2.bind("ct_state", (cube[0],))
                        else:
                            var = c2.fresh_var("ct_state")
                            cons = dict(c2.cons)
                            cons[var] = cube
                            c2.cons = cons
                            c2.bind("ct_state", var)
                    branches.append(c2)
        if etv is None or etv not in (ETH_TYPE_IP, ETH_TYPE_IPV6):
            other = s
            for fam in _CT_FAMILIES:
                other = other.exclude(fam[1]) if other is not None else None
            if other is not None:
                if act.table is not None:
                    other.bind("ct_state", (CT_TRK | CT_INV,))
                branches.append(other)
        if act.table is None:
            return branches
        out = []
        for b in branches:
            b.bind("ct_zone", (act.zone,))
            out.extend(self.table(b, act.table.number, depth + 1, tail))
        return out

    def _nat(self, s: State, act: Ct, state: str, fam: tuple = _CT_FAMILIES[0]) -> list[State]:
        nat = act.nat
        if not nat.kind:
            if state in ("est", "rel"):  # an existing connection's translation: anything
                for f in fam[3]:
                    s.bind(f, s.fresh_var(f))
            return [s]
        if not act.commit or state == "inv":
            return [s]
        src, dst = fam[2]
        field = src if nat.kind == "src" else dst
        if (":" in nat.ip) != (fam[0] == ETH_TYPE_IPV6):  # OVS refuses such a flow
            s.event(("unsupported", self.host.name, f"ct nat to {nat.ip} of a packet with "
                     f"eth_type {fam[0]:#06x}", len(s.path)))
            s.halted = True
            return [s]
        s.bind(field, (to_int(field, nat.ip),))
        if not nat.port:
            return [s]
        end = "src" if nat.kind == "src" else "dst"
        proto = s.value_of("ip_proto")
        out = []
        for p, l4 in ((IPPROTO_TCP, "tcp"), (IPPROTO_UDP, "udp")):
            if proto is not None and proto != p:
                continue
            c = s.restrict((("ip_proto", p, 0xFF),)) if proto is None else s.copy()
            if c is not None:
                c.bind(f"{l4}_{end}", (nat.port,))
                out.append(c)
        if proto is None or proto not in (IPPROTO_TCP, IPPROTO_UDP):
            rest = s
            for p in (IPPROTO_TCP, IPPROTO_UDP):
                rest = rest.exclude((("ip_proto", p, 0xFF),)) if rest is not None else None
            if rest is not None:
                out.append(rest)
        return out


# --------------------------------------------------------------------------------------
# Composition: a caller's state followed by a branch computed over all packets
# --------------------------------------------------------------------------------------


def compose(st: State, b: State, env_map: Mapping | None = None,
            keep_local: frozenset = frozenset()) -> State | None:
    """`st` followed by `b`, where `b` was run from variables that stand for the fields
    `st` had (env_map: field -> var, default st's env). Fields in `keep_local` keep `b`'s
    own meaning (not substituted). None if the result is empty."""
    env_in = st.env if env_map is None else env_map
    off = st.nvar - NF

    def m(var):
        if var.__class__ is tuple:
            return var
        serial = var >> VAR_SHIFT
        if serial < NF:
            name = NAMES[serial]
            if name in keep_local:
                return ((serial + off + b.nvar) << VAR_SHIFT) | (var & WIDTH)  # private to b
            return env_in.get(name) or INPUT[name]
        return ((serial + off) << VAR_SHIFT) | (var & WIDTH)

    items = [(m(var), v, mk) for var, (v, mk) in b.cons.items()]
    r = conj(st.cons, st.negs, items)
    if r is None:
        return None
    cons, negs = r
    for neg in b.negs:
        r = minus(cons, negs, [(m(var), v, mk) for var, v, mk in neg])
        if r is None:
            return None
        cons, negs = r
    c = st.copy()
    c.cons, c.negs = cons, negs
    c.nvar = st.nvar + (b.nvar - NF) + (b.nvar if keep_local else 0)
    if b.env:
        env = dict(st.env)
        for f, v in b.env.items():
            env[f] = v if v.__class__ is tuple else m(v)
        c.env = env
    base = len(st.path)
    if b.events:
        evs = []
        benv = b.env
        for ev in b.events:
            kind = ev[0]
            if kind == "out":
                if ev[3] is benv and benv:  # the env b ended with: mapped above (never mutated)
                    e2 = c.env
                else:
                    e2 = dict(st.env)
                    for f, v in ev[3].items():
                        e2[f] = v if v.__class__ is tuple else m(v)
                port = ev[2]
                if port.__class__ is tuple:
                    port = ("var", m(port[1]))
                    if port[1].__class__ is tuple:
                        port = port[1][0]
                evs.append(("out", ev[1], port, e2, ev[4] + base))
            else:
                evs.append(ev[:-1] + (ev[-1] + base,))
        c.events = st.events + tuple(evs)
    c.path = st.path + b.path
    c.emitted = st.emitted or b.emitted
    c.fresh = st.fresh and b.fresh
    c.halted = b.halted
    return c
