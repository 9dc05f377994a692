"""The Verifier: `nvctl verify`'s starts run symbolically through the whole tables of
their hosts (`hs.Engine`), kept up to date as flows, facts and ports change. The
checks of a start's final states are `verify_checks`'; reachability, the report and
the counterexamples `verify_report`'s. `controller.analysis.verify` (the entry point
and the full description of what is proved) slices the proof by tenant with it
(`verify_slice`).

Pure: no I/O, no sockets; the clock is an argument (`clock=time.perf_counter`).
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

from dataplane import headerspace as hs
from dataplane.match_action import ETH_TYPE_ARP, ETH_TYPE_IP

from controller.analysis.verify_model import (
    HostTables, TenantFacts, Network, _as_flow_list, _carriers, _carries_groups, host_tables)
from controller.analysis.verify_checks import Checks, _Result
from controller.analysis.verify_report import Reporting
from controller.analysis.verify_model import Report, Violation

START_KINDS = ("port", "tunnel", "external")  # tenant ports, tunnel entries, the provider network
_STATE_ZERO = {**{f"reg{i}": 0 for i in range(16)}, "metadata": 0, "ct_state": 0, "ct_zone": 0}
_MEMO_KEYS = ("reg13", "reg15")  # scope registers summaries are keyed by


class Verifier(Checks, Reporting):
    """Holds per-start results so that a change re-runs only the affected starts.

    `memo_tables`: table names where runs are summarized and reused (default: where
    tunnelled packets enter, dispatch, and the egress stage). Summaries call the next
    memo table's summary rather than composing it, each call resolved on the start's
    host (`_scan`), and are shared between hosts whose flows looked up are the same
    (`hs.SummaryPool`): a switch's L2 and routing part is computed once for all the
    hosts it spans, its dispatch and egress per host."""

    def __init__(self, net: Network, *, tenant: str | None = None, host: str | None = None,
                 memo_tables: Iterable[str] | None = None, clock: Callable[[], float] | None = None,
                 kinds: Iterable[str] = START_KINDS):
        self.net = net
        self.only_tenant, self.only_host = tenant, host
        self.start_kinds = frozenset(kinds)  # which starts: "port", "tunnel", "external"
        self.clock = clock
        self.memo_names = tuple(memo_tables) if memo_tables is not None else _default_memo()
        self.results: dict = {}  # sid -> _Result; only through _put / _pop (indexes below)
        self._by_tenant: dict = {}  # tenant -> {sid}
        self._by_host: dict = {}  # host -> {sid}
        self._by_target: dict = {}  # (host, ofport) -> {sid} outputting there
        self._viol: set = set()  # sids with violations
        self._branch_sum = 0
        self._extra: set = set()  # results that are not starts (tunnel entries reach needed)
        self._kinds = {"port": 0, "tunnel": 0, "external": 0}
        self._starts = None  # starts() until the next update: (list, {sid: position})
        self._ports_of = None  # tenant -> its keys in net.ports, once first needed
        self._pa_cache = None
        self.engines: dict = {}
        self._reach_cache: dict = {}  # tenant -> (violations, pairs checked, policy pairs checked, both over IPv6)
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
        self.addr_owner = {ip: n for n, f in self.net.tenants.items() for ip in f.owned_external}
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
        seen = {}
        for n in sorted(self.net.tenants):  # a provider address is one tenant's at a time
            for ip in sorted(self.net.tenants[n].owned_external):
                if ip in seen and seen[ip] != n:
                    self.static.append(Violation("isolation_external", [seen[ip], n], f"external address {ip} "
                                                 f"is owned by both {seen[ip]} and {n}: the provider network's "
                                                 f"packets to it reach either"))
                seen.setdefault(ip, n)

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
        for ip in old.owned_external:
            if self.addr_owner.get(ip) == tenant:
                del self.addr_owner[ip]
        for ip in new.owned_external:
            self.addr_owner.setdefault(ip, tenant)
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
        kinds = self.start_kinds
        if "port" in kinds:
            for (h, ofport), ref in sorted(self.net.ports.items()):
                if h in self.net.hosts and self._wanted(ref.tenant, h):
                    out.append(("port", h, ofport))
        for h in sorted(self.net.hosts):
            if self.only_host is not None and h != self.only_host:
                continue
            if "tunnel" in kinds:
                for vni in sorted(self._entry_vnis(h)):
                    if self._wanted(self.vni_owner[vni], h):
                        out.append(("tunnel", h, vni))
        if "external" in kinds:
            out.extend(self._external_starts())
        return out

    def _external_starts(self) -> list:
        """Packets from the provider network, on each host with an external port: for each
        tenant's external address, those addressed to it (IPv4, ARP); and all the others
        (to no tenant's address, IPv6 and everything else too), which belong to nobody."""
        out = []
        for h in sorted(self.net.external):
            if h not in self.net.hosts or (self.only_host is not None and h != self.only_host):
                continue
            for ip in sorted(self.addr_owner):
                if self._wanted(self.addr_owner[ip], h):
                    out.append(("external", h, ip))
            if self.only_tenant is None:
                out.append(("external", h, ""))
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
        if facts is not None and (old_facts is None or old_facts.owned_external != facts.owned_external):
            for sid in [sid for sid in self.results if sid[0] == "external"]:
                self._pop(sid)  # the addresses changed: who a provider packet is for
            todo |= set(self._external_starts())
        for h in flows:
            if h in self.net.external:
                todo |= {sid for sid in self._external_starts() if sid[1] == h}
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
        if h not in self.net.hosts or kind not in self.start_kinds:
            return False
        if kind == "external":
            return self.net.external.get(h) is not None and (self.only_host is None or h == self.only_host) and \
                (self.only_tenant is None if x == "" else x in self.addr_owner and self._wanted(self.addr_owner[x], h))
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
        if kind == "external":
            return self._run_external(sid)
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


    def _run_external(self, sid) -> _Result:
        """A provider-network start (`_external_starts`): its packet sets run one after the
        other, their outcomes checked together as the addressee tenant's ("" for nobody)."""
        _kind, host, ip = sid
        eng = self.engine(host)
        eng.deps = set()
        st = hs.start_state({**_STATE_ZERO, "in_port": self.net.external[host], "tunnel_id": 0,
                             "tun_ipv4_src": 0, "tun_ipv4_dst": 0})
        if ip:
            tenant = self.addr_owner[ip]
            sets = [st.restrict(_addressed(ip, ETH_TYPE_IP, "ipv4_dst")),
                    st.restrict(_addressed(ip, ETH_TYPE_ARP, "arp_tpa"))]
        else:
            tenant = ""
            for a in sorted(self.addr_owner):
                for et, fld in ((ETH_TYPE_IP, "ipv4_dst"), (ETH_TYPE_ARP, "arp_tpa")):
                    st = st.exclude(_addressed(a, et, fld)) if st is not None else None
            sets = [st]
        finals, pending = [], []
        for s in sets:
            if s is not None:
                f, p = eng.run_lazy(s, 0)
                finals.extend(f)
                pending.extend(p)
        deps = eng.deps
        res = _Result(tenant, [], frozenset(), frozenset(), len(finals), {}, [], {})
        self._check(sid, tenant, finals, res, pending)
        res.deps = frozenset(deps | eng.deps)
        return res


def _addressed(ip: str, eth_type: int, fld: str) -> tuple:
    """The field tests of a packet of `eth_type` whose `fld` is the address `ip`."""
    return (("eth_type", eth_type, hs.FULL["eth_type"]), (fld, hs.to_int(fld, ip), hs.FULL[fld]))


def _paused_gc():
    """Symbolic runs allocate many small acyclic objects; see compiler.paused_gc."""
    from controller.compile.compiler import paused_gc
    return paused_gc()


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
