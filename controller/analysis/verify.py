"""`nvctl verify`: tenant isolation proved over the whole header space of the flows that
are installed, by header-space analysis (`dataplane.headerspace`), not by sampling.

Start points: every tenant port (all packets it could send) and every tunnel entry
(all packets arriving over VXLAN with one of a tenant's VNIs on a host that has a flow
for it). Each start runs symbolically through its host's tables; tunnel outputs are
checked where they leave and continue as the peer's tunnel entry (composition).

Checks, each violation with a concrete counterexample packet and its path:
  isolation_port       a packet of tenant A is output to another tenant's port
  isolation_vni        ... is tunnelled with a VNI that is not A's
  isolation_external   ... leaves on the external port with an IPv4 source A does not own
  shared_zone / shared_meter / shared_group
                       ... goes through a conntrack zone / meter / group that is not A's
  overlap              two flows of equal priority match one packet (the compiler's bug:
                       OVS keeps one of them, which one is not ours to choose)
  loop                 a packet re-enters a (host, table) in one chain of nested lookups
                       (LOOP_BOUND times); loops through tunnels are not followed yet
  undeclared_drop      a packet ends without output other than by a declared drop
  unknown_port / tunnel_lost
                       output to an ofport nobody owns / tunnelled to an unknown PA
  unreachable          a pair of A's ports its topology connects and its ACLs do not
                       necessarily separate, and no packet from one reaches the other

Declared drop: the deciding flow (the last one on the packet's path) has an empty action
list and is not the priority-0 miss flow of a table whose declared miss continues
(`Table.miss` != "drop"); or dec_ttl expired; or output to the ingress port (OVS drops
it). Everything else that produces no output is undeclared: no flow matched at all (the
OpenFlow table-miss drop that `miss_flows` exists to prevent), a priority-0 drop in a
table whose miss is "continue", a flow with actions but no output.

Pure: no I/O, no sockets; the clock is an argument (`clock=time.perf_counter`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from dataplane import headerspace as hs
from dataplane.match_action import (CONTROLLER, ETH_TYPE_ARP, ETH_TYPE_IP, IPPROTO_ICMP, IPPROTO_TCP,
                                    IPPROTO_UDP, Log, Meter, Simulator, Unsupported, cookie_layer, cookie_tenant)

from controller.spaces.ids import TUNNEL_OFPORT  # noqa: E402
_STATE_ZERO = {**{f"reg{i}": 0 for i in range(16)}, "metadata": 0, "ct_state": 0, "ct_zone": 0}


from controller.analysis.verify_model import (  # noqa: F401  (the values verify takes and gives)
    PortRef, Endpoint, HostTables, TenantFacts, Network, _as_flow_list,
    _carriers, _carries_groups, host_tables, network_from_compiled, tenant_facts, _port_meters,
    reach_pairs, _separated, Violation, Report)


# --------------------------------------------------------------------------------------
# The verifier
# --------------------------------------------------------------------------------------


@dataclass
class _Result:
    tenant: str
    violations: list
    deps: frozenset  # (table, key value) looked up on the start's host
    targets: frozenset  # (host, port) it outputs to
    branches: int
    local: dict  # port start: dst port -> [State] (fresh, reaching it)
    tunnels: list  # [(peer host, vni, State, env at output)] fresh
    delivered: dict  # tunnel entry: dst port -> [State] (fresh)
    pend: list = field(default_factory=list)  # (fresh State, _Scan): its local/tunnel chains after it
    lazy: dict = field(default_factory=dict)  # what _arrivals / _tunnels_to built


@dataclass
class _Scan:
    """A summary's branches for one tenant on one host, its calls resolved there: each
    flat branch is a *chain* (b1, ..., bk) of summary branches, composed in order (a
    chain in `compose` may end with ("run", key): go on exactly at that memo table)."""
    compose: list  # chains to compose and check
    local: list  # (own port name, chain): fresh, delivered there, nothing to report
    tunnels: list  # (peer host, vni, chain, event index in its last): fresh, own VNI, known peer
    targets: set  # (host, ofport) output to
    deps: set = field(default_factory=set)  # lookups of the summaries called (transitively)
    subs: list = field(default_factory=list)  # (key, Summary) called: valid while still memoized
    count: int = 0  # flat branches
    by_port: dict = field(default_factory=dict)  # local, by port: port -> [chain]
    by_peer: dict = field(default_factory=dict)  # tunnels, by peer: peer -> [(vni, chain, evi)]


class _Lazy:
    """The chain composed after p, computed when first needed; `evi`: an event of the
    chain's last branch (a tunnel output)."""
    __slots__ = ("p", "chain", "evi", "_c")

    def __init__(self, p, chain, evi=None):
        self.p, self.chain, self.evi, self._c = p, chain, evi, False

    def state(self):
        if self._c is False:
            c = self.p
            for b in self.chain:
                c = hs.compose(c, b)
                if c is None:
                    break
            self._c = c
        return self._c

    def env(self):
        c = self.state()
        return None if c is None else c.events[len(c.events) - len(self.chain[-1].events) + self.evi][3]


def _state(x):
    return x.state() if x.__class__ is _Lazy else x


_MEMO_KEYS = ("reg13", "reg15")  # scope registers summaries are keyed by
_RES_KINDS = frozenset({"zone", "group", "meter"})
_L4 = {IPPROTO_TCP: ("tcp_src", "tcp_dst"), IPPROTO_UDP: ("udp_src", "udp_dst"),
       IPPROTO_ICMP: ("icmpv4_type", "icmpv4_code")}
_ARP_FIELDS = ("arp_op", "arp_spa", "arp_tpa", "arp_sha", "arp_tha")
_IP_FIELDS = ("ipv4_src", "ipv4_dst", "ip_proto", "ip_ttl")


class Verifier:
    """Holds per-start results so that a change re-runs only the affected starts.

    `memo_tables`: table names where runs are summarized and reused (default: where
    tunnelled packets enter, dispatch, and the egress stage). Summaries call the next
    memo table's summary rather than composing it, each call resolved on the start's
    host (`_scan`), and are shared between hosts whose flows looked up are the same
    (`hs.SummaryPool`): a switch's L2 and routing part is computed once for all the
    hosts it spans, its dispatch and egress per host."""

    def __init__(self, net: Network, *, tenant: str | None = None, host: str | None = None,
                 memo_tables: Iterable[str] | None = None, clock: Callable[[], float] | None = None):
        self.net = net
        self.only_tenant, self.only_host = tenant, host
        self.clock = clock
        self.memo_names = tuple(memo_tables) if memo_tables is not None else _default_memo()
        self.results: dict = {}  # sid -> _Result; only through _put / _pop (indexes below)
        self._by_tenant: dict = {}  # tenant -> {sid}
        self._by_host: dict = {}  # host -> {sid}
        self._by_target: dict = {}  # (host, ofport) -> {sid} outputting there
        self._viol: set = set()  # sids with violations
        self._branch_sum = 0
        self._extra: set = set()  # results that are not starts (tunnel entries reach needed)
        self._kinds = {"port": 0, "tunnel": 0}
        self._starts = None  # starts() until the next update: (list, {sid: position})
        self._ports_of = None  # tenant -> its keys in net.ports, once first needed
        self._pa_cache = None
        self.engines: dict = {}
        self._reach_cache: dict = {}  # tenant -> (violations, pairs checked)
        self._epoch = 0  # bumped when facts or ports change: summaries' scans are keyed by it
        self._entries: dict = {}  # host -> _entry_vnis(host)
        self._by_cookie: dict = {}  # host -> {cookie: Flow} as of the last update
        self._carriers: dict = {}  # host -> cookies of its flows with a group or meter action
        self.pool = hs.SummaryPool()  # summaries shared by hosts whose flows looked up agree
        self._index_facts()

    # ---- setup -----------------------------------------------------------------------

    def _index_facts(self) -> None:
        self.vni_owner = {v: n for n, f in self.net.tenants.items() for v in f.vnis}
        self.zone_owner = {z: n for n, f in self.net.tenants.items() for z in f.zones}
        self.group_owner = {g: n for n, f in self.net.tenants.items() for g in f.groups}
        self.meter_owner = {m: n for n, f in self.net.tenants.items() for m in f.meters}
        self.tid_name = {f.tenant_id: n for n, f in self.net.tenants.items()}
        self.pa_host = {h.pa: n for n, h in self.net.hosts.items()}
        self.static = []  # one number allocated to two tenants
        for what, attr in (("vni", "vnis"), ("zone", "zones"), ("group", "groups"), ("meter", "meters")):
            seen: dict = {}
            for n in sorted(self.net.tenants):
                for x in getattr(self.net.tenants[n], attr):
                    if x in seen and seen[x] != n:
                        kind = "isolation_vni" if what == "vni" else f"shared_{what}"
                        self.static.append(Violation(kind, [seen[x], n], f"{what} {x} is allocated to "
                                                     f"both {seen[x]} and {n}"))
                    seen.setdefault(x, n)

    def _pa_int(self) -> dict:
        """pa_host keyed by the address as an int (what tun_ipv4_dst holds)."""
        hit = self._pa_cache
        if hit is None or hit[0] is not self.pa_host:
            hit = self._pa_cache = (self.pa_host, {hs.to_int("tun_ipv4_dst", pa): h
                                                   for pa, h in self.pa_host.items()})
        return hit[1]

    def _tenant_ports(self, tenant: str) -> set:
        """The (host, ofport) keys of `tenant`'s ports in net.ports (indexed once)."""
        if self._ports_of is None:
            self._ports_of = {}
            for k, ref in self.net.ports.items():
                self._ports_of.setdefault(ref.tenant, set()).add(k)
        return self._ports_of.get(tenant, set())

    def _reindex_tenant(self, tenant: str, old, new) -> bool:
        """_index_facts for one tenant's new facts, when no number is shared before or
        after (the usual case); False (nothing changed) when it must be recomputed."""
        if self.static or old is None:
            return False
        maps = ((self.vni_owner, "vnis"), (self.zone_owner, "zones"), (self.group_owner, "groups"),
                (self.meter_owner, "meters"))
        for owner, attr in maps:
            for x in getattr(new, attr):
                if owner.get(x, tenant) != tenant:
                    return False
        for owner, attr in maps:
            for x in getattr(old, attr):
                if owner.get(x) == tenant:
                    del owner[x]
            for x in getattr(new, attr):
                owner[x] = tenant
        if self.tid_name.get(old.tenant_id) == tenant:
            del self.tid_name[old.tenant_id]
        self.tid_name[new.tenant_id] = tenant
        self.pa_host = {h.pa: n for n, h in self.net.hosts.items()}
        return True

    def engine(self, host: str) -> hs.Engine:
        eng = self.engines.get(host)
        if eng is None:
            ht = self.net.hosts[host]
            idx = hs.IndexedHost(host, ht.flows, ht.groups)
            self._carriers[host] = _carriers(ht.flows)  # so that a change need not scan them all
            memo = []
            for t in idx.table_of.values():
                if t.name in self.memo_names:
                    memo.append(t.number)
            # reg10 (the from-tunnel flag) is left symbolic: one summary per logical switch
            # serves both its local ports and its tunnel entry on this host
            eng = self.engines[host] = hs.Engine(idx, self.net.tunnel_ofport, memo, _MEMO_KEYS,
                                                 nested=True, pool=self.pool)
        return eng

    def starts(self) -> list:
        if self._starts is None:
            lst = self._compute_starts()
            self._starts = (lst, {sid: i for i, sid in enumerate(lst)})
        return self._starts[0]

    def _compute_starts(self) -> list:
        out = []
        for (h, ofport), ref in sorted(self.net.ports.items()):
            if h in self.net.hosts and self._wanted(ref.tenant, h):
                out.append(("port", h, ofport))
        for h in sorted(self.net.hosts):
            if self.only_host is not None and h != self.only_host:
                continue
            for vni in sorted(self._entry_vnis(h)):
                if self._wanted(self.vni_owner[vni], h):
                    out.append(("tunnel", h, vni))
        return out

    def _wanted(self, tenant: str, host: str) -> bool:
        return (self.only_tenant is None or tenant == self.only_tenant) and \
            (self.only_host is None or host == self.only_host)

    def _entry_vnis(self, host: str) -> set:
        """VNIs some flow of this host matches exactly (where a tunnel entry can lead).
        The values matched are cached per host until its flows change."""
        raw = self._entries.get(host)
        if raw is None:
            raw = set()
            for ti in self.engine(host).host.tables.values():
                if ti.key == "tunnel_id":
                    raw |= {v for v in ti.buckets if ti.buckets[v]}
                    continue
                if not ti.tunnel_matches:
                    continue
                for lst in list(ti.buckets.values()) + [ti.wild]:
                    for _p, items, _f in lst:
                        for n, v, m in items:
                            if n == "tunnel_id":
                                raw.add(v)
            self._entries[host] = raw
        return {v for v in raw if v in self.vni_owner}

    def _peer_pa(self, host: str) -> str | None:
        """A representative peer PA for tunnel entries (no table after classify reads
        tun_src, so one accepted peer stands for all; every one if some table does)."""
        for h in sorted(self.net.hosts):
            if h != host:
                return self.net.hosts[h].pa
        return None

    # ---- running ---------------------------------------------------------------------

    def run(self) -> Report:
        with _paused_gc():
            return self._run()

    def _run(self) -> Report:
        t0 = self.clock() if self.clock else 0.0
        self._starts = None
        for sid in self.starts():
            if sid not in self.results:
                self._put(sid, self._run_start(sid))
        return self._report(t0)

    def _put(self, sid, r: _Result, start: bool = True) -> None:
        self.results[sid] = r
        if not start:
            self._extra.add(sid)
        self._kinds[sid[0]] += 1
        self._by_tenant.setdefault(r.tenant, set()).add(sid)
        self._by_host.setdefault(sid[1], set()).add(sid)
        for t in r.targets:
            self._by_target.setdefault(t, set()).add(sid)
        if r.violations:
            self._viol.add(sid)
        self._branch_sum += r.branches

    def _pop(self, sid) -> _Result:
        r = self.results.pop(sid)
        self._extra.discard(sid)
        self._kinds[sid[0]] -= 1
        self._by_tenant[r.tenant].discard(sid)
        self._by_host[sid[1]].discard(sid)
        for t in r.targets:
            self._by_target[t].discard(sid)
        self._viol.discard(sid)
        self._branch_sum -= r.branches
        return r

    def update(self, tenant: str, flows: Mapping, facts: TenantFacts | None = None,
               ports: Mapping | None = None) -> Report:
        with _paused_gc():
            return self._update(tenant, flows, facts, ports)

    def _update(self, tenant: str, flows: Mapping, facts: TenantFacts | None = None,
                ports: Mapping | None = None) -> Report:
        """After `tenant` changed: `flows` = the new flow sets of the changed hosts
        ({host: HostTables | {cookie: Flow} | [Flow]}), `facts`/`ports` = its new facts
        and {(host, ofport): PortRef} (None: unchanged). Re-runs the starts that looked
        at a changed (host, table, key), the tenant's own, and those that output to a
        port whose owner changed."""
        t0 = self.clock() if self.clock else 0.0
        touched: dict[str, set] = {}
        for h, new in flows.items():
            old = self.net.hosts.get(h)
            self._entries.pop(h, None)
            if h not in self.engines or old is None:
                ht = new if isinstance(new, HostTables) else host_tables(self.net.hosts[h].pa, new)
                self.net.hosts[h] = ht
                self._by_cookie.pop(h, None)
                self._carriers.pop(h, None)
                self.engines.pop(h, None)
                touched[h] = {("*", "*")}
                continue
            eng = self.engines[h]
            old_set = self._by_cookie.get(h)
            if old_set is None:
                old_set = {f.cookie: f for f in old.flows}  # the cookie hashes the flow's text
            new_set = {f.cookie: f for f in (new.flows if isinstance(new, HostTables)
                                             else _as_flow_list(new))}
            removed = [old_set[k] for k in old_set.keys() - new_set.keys()]
            added = [new_set[k] for k in new_set.keys() - old_set.keys()]
            if isinstance(new, HostTables):
                ht = new
                self._carriers.pop(h, None)
            elif _carries_groups(removed) or _carries_groups(added):
                carriers = self._carriers.get(h)
                if carriers is None:
                    carriers = _carriers(old.flows)
                carriers = (carriers - {f.cookie for f in removed}) | \
                    {f.cookie for f in added if _carries_groups((f,))}
                self._carriers[h] = carriers
                fl = _as_flow_list(new)
                # as host_tables(old.pa, fl), looking only at the flows that carry them
                ht = host_tables(old.pa, [f for f in fl if f.cookie in carriers])
                ht.flows = fl
            else:  # the flows with groups or meters are the same ones (same text): so are these
                ht = HostTables(old.pa, _as_flow_list(new), dict(old.groups), dict(old.meters))
            self.net.hosts[h] = ht
            self._by_cookie[h] = new_set
            eng.host.groups = dict(ht.groups)
            t = eng.host.change(removed, added)
            if old.groups != ht.groups:
                t.add(("*", "*"))
                eng.summaries.clear()
            memo = {tb.number for tb in eng.host.table_of.values() if tb.name in self.memo_names}
            eng.memo_tables = frozenset(memo)
            eng.invalidate(t)
            touched[h] = t
        moved = set()
        old_facts = None
        if ports is not None:
            for k in [k for k in self._tenant_ports(tenant) if k not in ports]:
                if self.net.ports.get(k) is not None and self.net.ports[k].tenant == tenant:
                    del self.net.ports[k]
                    moved.add(k)
            self._ports_of[tenant] = set(ports)
            for k, ref in ports.items():
                if self.net.ports.get(k) != ref:
                    moved.add(k)
                self.net.ports[k] = ref
        if facts is not None:
            old_facts = self.net.tenants.get(tenant)
            self.net.tenants[tenant] = facts
            if not self._reindex_tenant(tenant, old_facts, facts):
                self._index_facts()
        if facts is not None or ports is not None:
            self._epoch += 1
        stale = set(self._by_tenant.get(tenant, ()))
        for k in moved:
            stale |= self._by_target.get(k, set())
        for h, t in touched.items():
            if not t:
                continue
            tables = {tb for tb, _ in t}
            star = {tb for tb, k in t if k == "*"}
            everything = ("*", "*") in t
            for sid in self._by_host.get(h, ()):
                if sid not in stale and (everything or _result_affected(self.results[sid], t, tables, star)):
                    stale.add(sid)
        for sid in stale:
            r = self._pop(sid)
            self._reach_cache.pop(r.tenant, None)
        self._reach_cache.pop(tenant, None)
        self._starts = None
        # the starts that may lack a result: the stale ones, the tenant's ports, tunnel
        # entries on the hosts whose flows changed, and entries of VNIs that became owned
        todo = set(stale)
        if ports is not None:
            todo |= {("port", h, o) for h, o in ports}
        for h in flows:
            if h in self.net.hosts:
                todo |= {("tunnel", h, v) for v in self._entry_vnis(h)}
        if facts is not None:
            new_vnis = facts.vnis - (old_facts.vnis if old_facts is not None else frozenset())
            if new_vnis:
                for h in self.net.hosts:
                    todo |= {("tunnel", h, v) for v in self._entry_vnis(h) & new_vnis}
        for sid in sorted(todo, key=lambda x: (x[0] != "port", x)):
            if sid not in self.results and self._is_start(sid):
                self._put(sid, self._run_start(sid))
        return self._report(t0)

    def _is_start(self, sid) -> bool:
        kind, h, x = sid
        if h not in self.net.hosts:
            return False
        if kind == "port":
            ref = self.net.ports.get((h, x))
            return ref is not None and self._wanted(ref.tenant, h)
        return (self.only_host is None or h == self.only_host) and x in self._entry_vnis(h) \
            and self._wanted(self.vni_owner[x], h)

    def _run_start(self, sid) -> _Result:
        kind, host, x = sid
        eng = self.engine(host)
        eng.deps = set()
        net = self.net
        if kind == "port":
            ref = net.ports[(host, x)]
            tenant = ref.tenant
            st = hs.start_state({**_STATE_ZERO, "in_port": x, "tunnel_id": 0,
                                 "tun_ipv4_src": 0, "tun_ipv4_dst": 0})
        else:
            tenant = self.vni_owner[x]
            peer = self._peer_pa(host)
            st = hs.start_state({**_STATE_ZERO, "in_port": net.tunnel_ofport, "tunnel_id": x,
                                 "tun_ipv4_src": peer or "0.0.0.0", "tun_ipv4_dst": net.hosts[host].pa})
        finals, pending = eng.run_lazy(st, 0)
        deps = eng.deps
        res = _Result(tenant, [], frozenset(), frozenset(), len(finals), {}, [], {})
        self._check(sid, tenant, finals, res, pending)
        res.deps = frozenset(deps | eng.deps)
        return res

    # ---- checks ----------------------------------------------------------------------

    def _check(self, sid, tenant: str, finals: list, res: _Result, pending=()) -> None:
        """Check every final state, and each pending (state, summary) pair: the summary's
        branches are scanned once per (summary, tenant) (`_scan`), and only those whose
        events could be a violation for this tenant are composed and checked; the others
        are kept uncomposed (`_Lazy`) for reachability."""
        kind, host, x = sid
        net = self.net
        facts = net.tenants[tenant]
        seen = set()
        targets = set()
        ext_port = net.external.get(host)

        def report(vkind, others, msg, s, hop, flow=None, sol=None):
            key = (vkind, tuple(others), msg)
            if key in seen:
                return
            if sol is None:
                sol = s.witness()
                if sol is None:
                    return
            seen.add(key)
            res.violations.append(self._violation(vkind, [tenant] + [o for o in others if o != tenant],
                                                  msg, sid, s, sol, hop, flow))

        def check(s, final=True):
            for ev in s.events:
                k = ev[0]
                if k == "out":
                    port = ev[2]
                    env = ev[3]
                    if port.__class__ is tuple:
                        port = s.concrete(port[1])
                    if port is None:
                        report("unknown_port", [], "output to a port that depends on the packet", s, ev[4])
                        continue
                    if port == CONTROLLER:
                        continue  # a packet-in: the controller answers from the tenant's spec
                    targets.add((ev[1], port))
                    if port == net.tunnel_ofport:
                        self._check_tunnel(s, env, ev, facts, tenant, report, res)
                    elif port == ext_port:
                        self._check_external(s, env, ev, facts, report)
                    else:
                        ref = net.ports.get((ev[1], port))
                        if ref is None:
                            report("unknown_port", [], f"output to ofport {port} on {ev[1]}, which no "
                                   f"port owns", s, ev[4])
                        elif ref.tenant != tenant:
                            report("isolation_port", [ref.tenant],
                                   f"{tenant}'s packet is output to {ref.tenant}'s port {ref.port} "
                                   f"({ev[1]} ofport {port})", s, ev[4])
                        elif s.fresh:
                            reached.setdefault(ref.port, []).append(s)
                elif k == "res":
                    _, rk, h, rid, hop = ev
                    if rk == "zone" and rid not in facts.zones:
                        other = self.zone_owner.get(rid, "?")
                        report("shared_zone", [other], f"{tenant}'s packet uses conntrack zone {rid} "
                               f"({'of ' + other if other != '?' else 'allocated to nobody'})", s, hop)
                    elif rk == "group" and rid not in facts.groups:
                        other = self.group_owner.get(rid, "?")
                        report("shared_group", [other], f"{tenant}'s packet goes to group {rid} "
                               f"({'of ' + other if other != '?' else 'allocated to nobody'})", s, hop)
                    elif rk == "meter" and (h, rid) not in facts.meters:
                        other = self.meter_owner.get((h, rid), "?")
                        report("shared_meter", [other], f"{tenant}'s packet passes meter {rid} on {h} "
                               f"({'of ' + other if other != '?' else 'allocated to nobody'})", s, hop)
                elif k == "overlap":
                    _, h, tname, fa, fb, hop = ev
                    names = sorted({self.tid_name.get(cookie_tenant(f.cookie), "") for f in (fa, fb)} - {""})
                    report("overlap", names, f"table {tname} on {h}: two flows of priority {fa.priority} "
                           f"match one packet: {fa.ofctl()} / {fb.ofctl()}", s, hop + 1, fb)
                elif k == "loop":
                    report("loop", [], f"the packet enters {ev[2]} on {ev[1]} again (a loop)", s, ev[3])
                elif k == "unsupported":
                    report("unsupported", [], ev[2], s, ev[3])
            if final and not s.emitted and not s.halted:
                why = _undeclared(s)
                if why:
                    hop = len(s.path)
                    report("undeclared_drop", [], why, s, hop)

        reached = res.local if kind == "port" else res.delivered
        eng = self.engine(host)
        for s in finals:
            check(s)
        for p, summ in pending:
            if any(ev[0] != "res" for ev in p.events):  # not the pipeline's shape: compose all
                for c in eng.expand(p, summ):
                    check(c)
                    res.branches += 1
                continue
            check(p, final=False)  # its own events: every packet of p goes on into summ
            scan = self._scan(summ, tenant, host)
            eng.deps |= scan.deps
            res.branches += scan.count
            for chain in scan.compose:
                for c in _composed(eng, p, chain):
                    check(c)
            targets.update(scan.targets)
            if p.fresh and (scan.local or scan.tunnels):
                res.pend.append((p, scan))  # its chains to ports and tunnels: see _arrivals
        res.targets = frozenset(targets)

    def _scan(self, summ, tenant: str, host: str, stack: tuple = ()) -> "_Scan":
        """Which of a summary's branches need composing for `tenant`'s starts on `host`:
        any whose events (output port, VNI, tunnel destination, zone/meter/group ids:
        constants in the summary) could be a violation, or that are not decided by the
        summary alone (packet-dependent values, drops). Its calls are resolved on `host`
        and their summaries scanned the same way (a flat branch is a chain of branches:
        each chain is judged by its links' events, each enough to flag it). Cached on
        the summary until the facts or ports change (the epoch), or a summary it called
        is no longer the one memoized."""
        key = (self._epoch, tenant, host)
        eng = self.engine(host)
        scan = summ.notes.get(key)
        if scan is not None and all(eng.summaries.get(k) is s for k, s in scan.subs):
            return scan
        net = self.net
        facts = net.tenants[tenant]
        ext_port = net.external.get(host)
        tunnel = net.tunnel_ofport
        pa_int = self._pa_int()
        scan = _Scan([], [], [], set())
        scan.count = len(summ.states)
        for b in summ.states:
            bad = False
            local, tunnels = [], []
            for evi, ev in enumerate(b.events):
                k = ev[0]
                if k == "out":
                    port = ev[2]
                    if port.__class__ is tuple:
                        bad = True
                        continue
                    if port == CONTROLLER:
                        continue
                    scan.targets.add((ev[1], port))
                    if port == tunnel:
                        env = ev[3]
                        tid, dst = env.get("tunnel_id"), env.get("tun_ipv4_dst")
                        if tid.__class__ is not tuple or dst.__class__ is not tuple or \
                                tid[0] not in facts.vnis:
                            bad = True
                            continue
                        peer = pa_int.get(dst[0])
                        if peer is None:
                            bad = True
                        elif b.fresh:
                            tunnels.append((peer, tid[0], (b,), evi))
                    elif port == ext_port:
                        bad = True
                    else:
                        ref = net.ports.get((ev[1], port))
                        if ref is None or ref.tenant != tenant:
                            bad = True
                        elif b.fresh:
                            local.append((ref.port, (b,)))
                elif k == "res":
                    if not self._own_res(ev, facts):
                        bad = True
                elif k != "hairpin":
                    bad = True  # overlap, loop, unsupported: reported with a composed witness
            if not bad and not b.emitted and not b.halted:
                # the composed path ends with b's path, and p has no events but "res": the
                # verdict is b's own, unless b's path holds only group hops
                if not any(note != "group" for _h, _t, _f, note in b.path) or _undeclared(b):
                    bad = True
            if bad:
                scan.compose.append((b,))
            else:
                scan.local.extend(local)
                scan.tunnels.extend(tunnels)
        for b, k2 in summ.calls:
            sub = eng.summary(k2)
            if sub is summ or sub in stack or len(stack) > 16 or \
                    any(ev[0] != "res" or not self._own_res(ev, facts) for ev in b.events):
                scan.compose.append((b, ("run", k2)))  # exactly, on the host: loops, odd shapes
                scan.count += 1
                continue
            sc = self._scan(sub, tenant, host, stack + (summ,))
            scan.subs.append((k2, sub))
            scan.subs.extend(sc.subs)
            scan.deps |= sub.deps
            scan.deps |= sc.deps
            scan.count += sc.count
            scan.targets |= sc.targets
            scan.compose.extend((b,) + ch for ch in sc.compose)
            if b.fresh:
                scan.local.extend((port, (b,) + ch) for port, ch in sc.local)
                scan.tunnels.extend((peer, vni, (b,) + ch, evi) for peer, vni, ch, evi in sc.tunnels)
        for port, chain in scan.local:
            scan.by_port.setdefault(port, []).append(chain)
        for peer, vni, chain, evi in scan.tunnels:
            scan.by_peer.setdefault(peer, []).append((vni, chain, evi))
        summ.notes[key] = scan
        return scan

    @staticmethod
    def _own_res(ev, facts) -> bool:
        _, rk, h, rid, _hop = ev
        return not ((rk == "zone" and rid not in facts.zones) or
                    (rk == "group" and rid not in facts.groups) or
                    (rk == "meter" and (h, rid) not in facts.meters) or rk not in _RES_KINDS)

    def _check_tunnel(self, s, env, ev, facts, tenant, report, res) -> None:
        tid_var = env.get("tunnel_id") or hs.INPUT["tunnel_id"]
        tid = s.concrete(tid_var)
        if tid is None:
            t = s
            for v in facts.vnis:
                t = t and _exclude_var(t, tid_var, v, hs.FULL["tunnel_id"])
            if t is not None:
                sol = t.witness()
                if sol is not None:
                    bad = t.value_at(sol, tid_var)
                    other = self.vni_owner.get(bad, "?")
                    report("isolation_vni", [other], f"{tenant}'s packet is tunnelled with VNI {bad}, "
                           f"not one of its own", t, ev[4], sol=sol)
            return
        if tid not in facts.vnis:
            other = self.vni_owner.get(tid, "?")
            report("isolation_vni", [other], f"{tenant}'s packet is tunnelled with VNI {tid} "
                   f"({'of ' + other if other != '?' else 'allocated to nobody'})", s, ev[4])
            return
        dst_var = env.get("tun_ipv4_dst") or hs.INPUT["tun_ipv4_dst"]
        dst = s.concrete(dst_var)
        peer = self.pa_host.get(hs.from_int("tun_ipv4_dst", dst)) if dst is not None else None
        if peer is None:
            report("tunnel_lost", [], f"tunnelled to {hs.from_int('tun_ipv4_dst', dst) if dst is not None else 'a packet-dependent address'}, "
                   f"which is no host's PA", s, ev[4])
            return
        if s.fresh:
            res.tunnels.append((peer, tid, s, env))

    def _check_external(self, s, env, ev, facts, report) -> None:
        et = env.get("eth_type") or hs.INPUT["eth_type"]
        t = _restrict_var(s, et, ETH_TYPE_IP, 0xFFFF)
        src = env.get("ipv4_src") or hs.INPUT["ipv4_src"]
        for ip in facts.owned_external:
            if t is None:
                return
            t = _exclude_var(t, src, hs.to_int("ipv4_src", ip), 0xFFFFFFFF)
        if t is None:
            return
        sol = t.witness()
        if sol is None:
            return
        bad = hs.from_int("ipv4_src", t.value_at(sol, src))
        report("isolation_external", [], f"a packet leaves on the external port of {ev[1]} with "
               f"source {bad}, which the tenant does not own", t, ev[4], sol=sol)

    # ---- reachability ----------------------------------------------------------------

    def _reach(self, tenant: str) -> tuple[list, int]:
        facts = self.net.tenants[tenant]
        out, n = [], 0
        by_port = {}
        for sid in self._by_tenant.get(tenant, ()):
            if sid[0] == "port":
                ref = self.net.ports[(sid[1], sid[2])]
                by_port[ref.port] = (sid, self.results[sid])
        for a, b in sorted(facts.reach_pairs):
            ea, eb = facts.endpoints.get(a), facts.endpoints.get(b)
            if ea is None or eb is None or a not in by_port:
                continue
            if self.only_host is not None and ea.host != self.only_host:
                continue
            n += 1
            sid, r = by_port[a]
            if self._reaches(r, b, eb):
                continue
            out.append(self._unreachable(tenant, a, b, ea, eb, facts))
        return out, n

    @staticmethod
    def _arrivals(r: _Result, port: str) -> list:
        """r's fresh states (or _Lazy) delivered to `port`: those composed by _check, and
        the chains of its pending scans, composed when first needed."""
        k = ("arr", port)
        got = r.lazy.get(k)
        if got is None:
            got = list(r.local.get(port, ())) + list(r.delivered.get(port, ()))
            for p, scan in r.pend:
                got.extend(_Lazy(p, chain) for chain in scan.by_port.get(port, ()))
            r.lazy[k] = got
        return got

    @staticmethod
    def _tunnels_to(r: _Result, host: str) -> list:
        """r's fresh tunnel outputs to `host`: [(vni, State or _Lazy, env or None)]."""
        k = ("tun", host)
        got = r.lazy.get(k)
        if got is None:
            got = [(vni, s, env) for peer, vni, s, env in r.tunnels if peer == host]
            for p, scan in r.pend:
                got.extend((vni, _Lazy(p, chain, evi), None)
                           for vni, chain, evi in scan.by_peer.get(host, ()))
            r.lazy[k] = got
        return got

    def _reaches(self, r: _Result, b: str, eb: Endpoint) -> bool:
        for s in self._arrivals(r, b):
            s = _state(s)
            if s is not None and s.witness() is not None:
                return True
        for vni, s, env in self._tunnels_to(r, eb.host):
            peer = eb.host
            sid = ("tunnel", peer, vni)
            entry = self.results.get(sid)
            if entry is None:
                entry = self._run_start(sid)
                self._put(sid, entry, self._is_start(sid))
            ts = self._arrivals(entry, b)
            if not ts:
                continue
            if s.__class__ is _Lazy:
                env = s.env()
                s = s.state()
                if s is None:
                    continue
            for t in ts:
                t = _state(t)
                if t is None:
                    continue
                c = hs.compose(s, t, env_map=env)
                if c is not None and c.witness() is not None:
                    return True
        return False

    def _unreachable(self, tenant, a, b, ea: Endpoint, eb: Endpoint, facts) -> Violation:
        dst_mac = eb.mac if ea.switch == eb.switch else facts.router_macs.get(ea.switch, eb.mac)
        pkt = {"eth_src": ea.mac, "eth_dst": dst_mac, "eth_type": ETH_TYPE_IP, "ipv4_src": ea.ip,
               "ipv4_dst": eb.ip, "ip_proto": IPPROTO_TCP, "ip_ttl": 64, "tcp_src": 40000, "tcp_dst": 80}
        path, flow = self._concrete_path(ea.host, ea.ofport, pkt)
        return Violation("unreachable", [tenant], f"no packet from {a} ({ea.host}) reaches {b} "
                         f"({eb.host}); e.g. tcp to {eb.ip}:80 ends as shown", ea.host, ea.ofport, pkt,
                         path, flow.ofctl() if flow else "", f"{flow.cookie:#x}" if flow else "")

    def _concrete_path(self, host, in_port, pkt, hops: int = 8):
        """The concrete simulator's path for one packet (for unreachable witnesses)."""
        path, last = [], None
        sims = {}
        todo = [(host, in_port, dict(pkt))]
        while todo and hops > 0:
            hops -= 1
            h, port, p = todo.pop(0)
            sim = sims.get(h)
            if sim is None:
                ht = self.net.hosts[h]
                tables = {f.table.number: f.table for f in ht.flows}
                sim = sims[h] = Simulator(_Tables(tables), ht.flows, ht.groups)
            try:
                fate = sim.run(p, port)
            except Unsupported as e:
                path.append({"host": h, "table": "(simulator)", "note": str(e)})
                break
            for hop in fate.path:
                path.append(self._hop(h, hop.table, hop.flow, "" if hop.flow else "miss"))
                last = hop.flow or last
            for e in fate.outputs:
                if e.port == self.net.tunnel_ofport:
                    peer = self.pa_host.get(e.packet.get("tun_ipv4_dst"))
                    if peer is not None:
                        inner = {k: v for k, v in e.packet.items() if not k.startswith("tun")}
                        inner.update(tunnel_id=e.packet.get("tunnel_id", 0),
                                     tun_ipv4_src=self.net.hosts[h].pa, tun_ipv4_dst=e.packet["tun_ipv4_dst"])
                        todo.append((peer, self.net.tunnel_ofport, inner))
        return path, last

    # ---- report ----------------------------------------------------------------------

    def _report(self, t0: float) -> Report:
        vs, seen = [], set()
        counts = {"port_starts": 0, "tunnel_starts": 0, "branches": 0, "reach_pairs": 0,
                  "hosts": len(self.net.hosts), "tenants": len(self.net.tenants),
                  "flows": sum(len(h.flows) for h in self.net.hosts.values())}
        tenants = set()
        if not self._extra:  # every result is a start, and every start has one: the tallies
            counts["port_starts"], counts["tunnel_starts"] = self._kinds["port"], self._kinds["tunnel"]
            counts["branches"] = self._branch_sum
            tenants = {t for t, sids in self._by_tenant.items() if sids}
            order = []
            if self._viol:
                self.starts()
                order = sorted(self._viol, key=self._starts[1].__getitem__)
        else:
            order = []
            for sid in self.starts():
                r = self.results[sid]
                counts["port_starts" if sid[0] == "port" else "tunnel_starts"] += 1
                counts["branches"] += r.branches
                tenants.add(r.tenant)
                if r.violations:
                    order.append(sid)
        for sid in order:  # port starts first: their counterexamples read best
            for v in self.results[sid].violations:
                if v.key() not in seen:
                    seen.add(v.key())
                    vs.append(v)
        for v in self.static:
            if self.only_tenant is None or self.only_tenant in v.tenants:
                if v.key() not in seen:
                    seen.add(v.key())
                    vs.append(v)
        for t in sorted(tenants):
            hit = self._reach_cache.get(t)
            if hit is None:
                hit = self._reach_cache[t] = self._reach(t)
            more, n = hit
            counts["reach_pairs"] += n
            for v in more:
                if v.key() not in seen:
                    seen.add(v.key())
                    vs.append(v)
        vs.sort(key=lambda v: (v.kind, v.tenants, v.host, v.message))
        secs = (self.clock() - t0) if self.clock else 0.0
        return Report(not vs, vs, counts, secs)

    def _hop(self, host, table, flow, note="") -> dict:
        if flow is None:
            return {"host": host, "table": table, "note": "table miss: no flow matched" if note == "miss" else note}
        layer = _layer_name(cookie_layer(flow.cookie))
        owner = self.tid_name.get(cookie_tenant(flow.cookie), "")
        rule = f"[{layer}] {owner + ': ' if owner else ''}{flow.rule}"
        return {"host": host, "table": table, "priority": flow.priority, "rule": rule,
                "flow": flow.ofctl(), "cookie": f"{flow.cookie:#x}", "note": note}

    def _violation(self, kind, tenants, msg, sid, s, sol, hop, flow=None) -> Violation:
        skind, host, x = sid
        pkt = _packet(s, sol, tunnel=skind == "tunnel")
        if skind == "tunnel":
            pkt.update(tunnel_id=x, tun_ipv4_src=self._peer_pa(host), tun_ipv4_dst=self.net.hosts[host].pa)
        path = [self._hop(h, t, f, note) for h, t, f, note in s.path[:max(hop, 0)]]
        if skind == "tunnel":
            src = self.pa_host.get(pkt.get("tun_ipv4_src"), "?")
            path.insert(0, {"host": host, "table": "(vxlan)", "note": f"in from {src} vni {x}"})
        if flow is None:
            for h, t, f, note in reversed(s.path[:max(hop, 0)]):
                if f is not None:
                    flow = f
                    break
        in_port = x if skind == "port" else self.net.tunnel_ofport
        cts = s.value_at(sol, s.var("ct_state")) if hop else 0
        if cts:
            msg += f" (conntrack said {_ct_text(cts)})"
        return Violation(kind, tenants, msg, host, in_port, pkt, path,
                         flow.ofctl() if flow else "", f"{flow.cookie:#x}" if flow else "")


def _paused_gc():
    """Symbolic runs allocate many small acyclic objects; see compiler.paused_gc."""
    from controller.compile.compiler import paused_gc
    return paused_gc()


class _Tables:
    """What the concrete Simulator needs of a pipeline: tables by number."""

    def __init__(self, by_number):
        self.by_number = by_number


def _ct_text(v: int) -> str:
    from dataplane.match_action import CT_FLAGS
    return "".join(f"+{n}" for n, bit in CT_FLAGS.items() if v & bit)


def _layer_name(layer_id: int) -> str:
    try:
        from controller.compile.pipeline import LAYER_BY_ID
    except ImportError:  # pragma: no cover
        return str(layer_id)
    layer = LAYER_BY_ID.get(layer_id)
    return layer.name if layer else "?"


def _default_memo() -> tuple:
    from controller.compile.pipeline import EGRESS, PIPELINE, TUNNEL_ENTRY, LAYERS
    names = [layer.tables[0].name for layer in LAYERS if layer.name == TUNNEL_ENTRY]
    names.append("dispatch")  # where a switch's ingress ends: per host (local or remote)
    names.append(EGRESS[0].tables[0].name)
    return tuple(n for n in names if n in PIPELINE.by_name)


def _result_affected(r: _Result, touched: set, tables: set, star: set) -> bool:
    """_affected(r.deps, touched) with r's tables looked up (all, and with no key value)
    kept on r: set operations instead of a loop over its lookups."""
    if not r.deps.isdisjoint(touched):
        return True
    dt = r.lazy.get("deptables")
    if dt is None:
        dt = r.lazy["deptables"] = (frozenset(t for t, _ in r.deps),
                                    frozenset(t for t, v in r.deps if v is None))
    return not dt[0].isdisjoint(star) or not dt[1].isdisjoint(tables)


def _composed(eng, p, chain) -> list:
    """p followed by a scan's chain (exactly; a ("run", key) link goes on on the host)."""
    c = p
    for x in chain:
        if x.__class__ is tuple:
            return eng.continue_at(c, x[1])
        c = hs.compose(c, x)
        if c is None:
            return []
    return [c]


def _restrict_var(s, var, value, mask):
    r = hs.conj(s.cons, s.negs, ((var, value & mask, mask),))
    if r is None:
        return None
    c = s.copy()
    c.cons, c.negs = r
    return c


def _exclude_var(s, var, value, mask):
    r = hs.minus(s.cons, s.negs, ((var, value & mask, mask),))
    if r is None:
        return None
    c = s.copy()
    c.cons, c.negs = r
    return c


def _undeclared(s) -> str:
    for h, t, f, note in reversed(s.path):
        if note == "group":
            continue
        if note == "ttl":
            return ""
        if note == "miss":
            return f"no flow matched in {t} on {h} (table-miss drop without an explicit miss flow)"
        if any(ev[0] == "hairpin" for ev in s.events):
            return ""
        if all(type(a) in (Log, Meter) for a in f.actions):  # a drop (metered, or logged: a copy is no output)
            if f.priority == 0 and f.table.miss != "drop":
                return (f"{t} on {h}: its priority-0 flow drops, but the table's declared miss is "
                        f"to continue at {f.table.miss}")
            return ""
        return f"{t} on {h}: the deciding flow has actions but the packet is not output"
    return "no table was run"


def _packet(s, sol, tunnel: bool) -> dict:
    """The counterexample's input header values, as a well-formed packet."""
    val = s.input_packet(sol)
    pkt = {"eth_src": hs.from_int("eth_src", val["eth_src"]),
           "eth_dst": hs.from_int("eth_dst", val["eth_dst"]), "eth_type": val["eth_type"]}
    if val["eth_type"] == ETH_TYPE_IP:
        for f in _IP_FIELDS:
            pkt[f] = hs.from_int(f, val[f])
        for f in _L4.get(val["ip_proto"], ()):
            pkt[f] = val[f]
    elif val["eth_type"] == ETH_TYPE_ARP:
        for f in _ARP_FIELDS:
            pkt[f] = hs.from_int(f, val[f])
    return pkt


def verify(net: Network, *, tenant: str | None = None, host: str | None = None,
           clock: Callable[[], float] | None = None) -> Report:
    """One full check (see the module docstring)."""
    return Verifier(net, tenant=tenant, host=host, clock=clock).run()

