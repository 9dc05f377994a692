"""`nvctl verify` sliced by tenant: the same proof, tenant by tenant, in worker processes.

Every tenant flow pins its scope (`controller.layers.base.SCOPE_FIELDS`: the logical
switch register reg13, `in_port`, `tunnel_id`, or reg8, the network policies' tenant
register) to a value of its tenant. So the installed flows fall into one slice per
tenant and a *shared* part:

  - a flow belongs to tenant T when every scope value it pins exactly that is anybody's
    is T's (a VNI of T in reg13 or tunnel_id, one of T's ports as in_port on that host,
    T's id in reg8); or when it is one of T's *entrances* from the provider network: it
    pins the provider's scope (reg13 = EXTERNAL_NET_KEY, or in_port = the host's external
    port), matches one of T's external addresses exactly (ipv4_dst or arp_tpa), and writes
    no scope value but T's;
  - every other flow is shared (classify's tunnel acceptance, every table's miss flow,
    the tunnel output, the provider network's classify flow, flows added by hand that
    pin nothing): every slice holds them.

The shared proof (`shared_violations`), once over the shared flows of every host: no
shared flow moves a packet into a tenant's scope (writes a tenant's scope value, or a
packet field, into a scope field), outputs to a tenant's port, or puts a packet in the
provider's scope other than from the external port. Anything else a packet meets is its
own tenant's.

Each tenant's slice is then checked alone (`Verifier` over a `Network` whose hosts hold
the shared flows and the tenant's, its own starts only, its own summaries: its own
equivalence classes), with a guard on every write of a scope field (`_Guard`, called by
`hs.Engine`): the value written must be concrete and the tenant's or nobody's (not the
provider's). While that holds, no flow of another tenant can match the packet on any
lookup (each pins a value of its own tenant that the packet does not hold), so the slice
makes exactly the lookups, branches and counterexamples the whole tables would. When it
does not hold (a flow of the tenant rewrites the packet into another scope), the slice
is abandoned and that tenant is checked over the whole tables (`Verifier(net,
tenant=T)`), as before: slower, never wrong.

`Sliced` runs the shared proof, then the slices in `os.cpu_count()` worker processes
(fork: they read the flows the parent holds, and send back each tenant's violations and
counts), or in this process for small worlds (`verify` picks). `Sliced.update` re-checks
the changed tenant's slice, the slices of tenants that own a changed flow or output to a
port that changed hands, and the shared proof of a host whose shared flows changed (and
then every slice on it). Counterexamples are the whole-table ones: the same packets,
paths and deciding flows, in the same order.

Pure but for the worker processes; no I/O.
"""
from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from dataplane import headerspace as hs
from dataplane.match_action import (COOKIE_TENANT_MAX as _TENANT_MAX, COOKIE_TENANT_SHIFT as _TENANT_SHIFT,
                                    Group, IN_PORT, CONTROLLER, Meter, Move, Output, SetField, cookie_tenant)

from controller.layers.base import SCOPE_FIELDS
from controller.spaces.ids import EXTERNAL_NET_KEY
from controller.analysis.verify_run import Verifier, _MEMO_KEYS, _paused_gc
from controller.analysis.verify_model import (HostTables, Network, Report, TenantFacts, Violation,
                                               _as_flow_list, host_tables)
from controller.analysis.verify_report import _packet
from controller.analysis.verify_twins import SharedInfo, renamed_targets, twin_map

MIN_TENANTS_FOR_WORKERS = 64  # below this, forking costs more than it saves
_ADDR_FIELDS = ("ipv4_dst", "arp_tpa")


class ScopeEscape(Exception):
    """A packet of the slice's tenant may hold a scope value that is not its own."""


class Owners:
    """Who owns each scope value, and each external (provider) address."""

    def __init__(self, net: Network, vni_owner: dict, tid_name: dict):
        self.net = net
        self.vni = vni_owner  # reg13 and tunnel_id values
        self.tid = tid_name  # reg8 values
        self.addr = {hs.to_int("ipv4_dst", ip): n for n, f in net.tenants.items() for ip in f.owned_external}

    def owner(self, host: str, fld: str, value: int):
        if fld == "in_port":
            ref = self.net.ports.get((host, value))
            return ref.tenant if ref is not None else None
        if fld == "reg8":
            return self.tid.get(value)
        return self.vni.get(value)

    def provider(self, host: str, fld: str, value: int) -> bool:
        """Is this the provider network's scope (only an entrance flow may take it in)?"""
        if fld == "reg13":
            return value == EXTERNAL_NET_KEY
        if fld == "in_port":
            return value == self.net.external.get(host)
        return False


def flow_owner(f, host: str, own: Owners):
    """The tenant whose slice `f` is in, None for a shared flow (see the module docstring)."""
    full = hs.FULL
    o = None
    provider = False
    items = hs.match_items(f.match)
    for n, v, m in items:
        if n in SCOPE_FIELDS and m == full[n]:
            t = own.owner(host, n, v)
            if t is None:
                provider = provider or own.provider(host, n, v)
            elif o is None:
                o = t
            elif t != o:
                return None  # two tenants' values: it matches no packet that keeps its scope
    if o is not None or not provider:
        return o
    t = None
    for n, v, m in items:  # an entrance: one of a tenant's external addresses, exactly
        if n in _ADDR_FIELDS and m == full[n]:
            t = own.addr.get(v)
            if t is not None:
                break
    if t is None:
        return None
    for a in _all_actions(f.actions):
        c = a.__class__
        if c is Move and a.dst in SCOPE_FIELDS:
            return None
        if c is SetField and a.field in SCOPE_FIELDS:
            if a.mask is not None or own.owner(host, a.field, hs.to_int(a.field, a.value)) != t:
                return None
    return t


def _all_actions(actions):
    for a in actions:
        yield a
        if a.__class__ is Group:
            for b in a.buckets:
                yield from _all_actions(b)


# --------------------------------------------------------------------------------------
# The shared proof
# --------------------------------------------------------------------------------------


def shared_violations(v: Verifier, own: Owners, host: str, flows) -> list:
    """The shared flows of `host` that change a packet's scope (kind `scope_change`), each
    with a packet the flow matches as counterexample."""
    out = []
    ext = v.net.external.get(host)
    groups = v.net.hosts[host].groups if host in v.net.hosts else {}
    for f in flows:
        why, others = _scope_change(f, host, own, ext, groups)
        if why:
            out.append(_shared_violation(v, host, f, why, others))
    return out


def _scope_change(f, host, own: Owners, ext, groups) -> tuple:
    pins_ext = any(n == "in_port" and v == ext and m == hs.FULL[n] for n, v, m in hs.match_items(f.match))
    acts = list(_all_actions(f.actions))
    for a in list(acts):
        if a.__class__ is Group and groups.get(a.group_id):
            for b in groups[a.group_id]:
                acts.extend(_all_actions(b))
    for a in acts:
        c = a.__class__
        if c is Move and a.dst in SCOPE_FIELDS:
            return f"copies {a.src} into the scope field {a.dst}", []
        if c is SetField and a.field in SCOPE_FIELDS:
            if a.mask is not None:
                return f"sets bits of the scope field {a.field}", []
            val = hs.to_int(a.field, a.value)
            t = own.owner(host, a.field, val)
            if t is not None:
                return f"moves every packet it matches into {t}'s scope ({a.field} := {val:#x})", [t]
            if own.provider(host, a.field, val) and not pins_ext:
                return (f"moves packets that did not come from the provider network into its scope "
                        f"({a.field} := {val:#x})"), []
        if c is Output and a.port not in (IN_PORT, CONTROLLER):
            ref = own.net.ports.get((host, a.port))
            if ref is not None:
                return f"outputs every packet it matches to {ref.tenant}'s port {ref.port}", [ref.tenant]
    return "", []


def _shared_violation(v: Verifier, host: str, f, why: str, others: list) -> Violation:
    st = hs.State({}).restrict(hs.match_items(f.match))
    sol = st.witness() if st is not None else None
    pkt = _packet(st, sol, False) if sol is not None else {}
    in_port = st.value_at(sol, hs.INPUT["in_port"]) if sol is not None else None
    msg = f"the shared flow in {f.table.name} on {host} {why}"
    return Violation("scope_change", sorted(set(others)), msg, host, in_port, pkt,
                     [v._hop(host, f.table.name, f)], f.ofctl(), f"{f.cookie:#x}")


# --------------------------------------------------------------------------------------
# One tenant's slice
# --------------------------------------------------------------------------------------


class _Guard:
    """What a slice's engine calls after a write of a scope field (`hs.Engine.guard`)."""
    fields = SCOPE_FIELDS

    def __init__(self, tenant: str, host: str, own: Owners):
        self.tenant, self.host, self.own = tenant, host, own

    def check(self, s, fld: str) -> None:
        val = s.value_of(fld)
        if val is None:
            raise ScopeEscape(f"{fld} depends on the packet on {self.host}")
        t = self.own.owner(self.host, fld, val)
        if (t is not None and t != self.tenant) or self.own.provider(self.host, fld, val):
            raise ScopeEscape(f"{fld} := {val:#x} on {self.host}")


class _SliceVerifier(Verifier):
    """A Verifier over one tenant's slice: the fact indexes are borrowed from the whole
    network's (`base`), the starts are the tenant's own, and every engine is guarded."""

    def __init__(self, net: Network, sliced: "Sliced", tenant: str, ports):
        self.sliced, self.base, self.own, self._my_ports = sliced, sliced.base, sliced.own, ports
        base = self.base
        super().__init__(net, tenant=tenant, clock=None, memo_tables=base.memo_names, kinds=("port", "tunnel"))

    def _index_facts(self) -> None:
        b = self.base
        self.vni_owner, self.zone_owner, self.group_owner = b.vni_owner, b.zone_owner, b.group_owner
        self.meter_owner, self.tid_name, self.pa_host = b.meter_owner, b.tid_name, b.pa_host
        self.addr_owner = b.addr_owner
        self.static = []
        b._pa_int()
        self._pa_cache = b._pa_cache

    def _compute_starts(self) -> list:
        out = [("port", h, o) for h, o in sorted(self._my_ports) if h in self.net.hosts]
        for h in sorted(self.net.hosts):
            for vni in sorted(self._entry_vnis(h)):
                if self.vni_owner[vni] == self.only_tenant:
                    out.append(("tunnel", h, vni))
        return out

    def _peer_pa(self, host: str):
        return self.base._peer_pa(host)

    def engine(self, host: str) -> hs.Engine:
        eng = self.engines.get(host)
        if eng is None:
            s = self.sliced
            idx = hs.IndexedHost.overlay(s.shared_index(host), s.own_flows(self.only_tenant, host),
                                         s.net.hosts[host].groups)
            memo = [t.number for t in idx.table_of.values() if t.name in self.memo_names]
            eng = self.engines[host] = hs.Engine(idx, self.net.tunnel_ofport, memo, _MEMO_KEYS,
                                                 nested=True, pool=self.pool)
            eng.guard = _Guard(self.only_tenant, host, self.own)
        return eng


@dataclass
class Outcome:
    """What one tenant's check found: its starts' violations ((order key, [Violation]),
    in start order), its reachability and policy violations, the counts, the ports its
    packets are output to, and whether the slice was left for the whole tables."""
    tenant: str
    starts: list
    reach: list
    counts: dict
    targets: frozenset
    escaped: str = ""
    misfits: list = field(default_factory=list)  # (host, Flow, owner or None): flows of its cookie not its
    cpu: float = 0.0  # seconds of CPU its check took (where the time goes)
    twin: str = ""  # the tenant whose clean verdict it was given (verify_twins), "" if checked


_COUNT_KEYS = ("port_starts", "tunnel_starts", "external_starts", "branches", "reach_pairs", "policy_pairs",
               "reach_pairs6", "policy_pairs6")


def _order(sid) -> tuple:
    return ({"port": 0, "tunnel": 1}.get(sid[0], 2), sid[1], sid[2] if sid[2].__class__ is int else 0, str(sid[2]))


def _outcome(v: Verifier, tenant: str) -> Outcome:
    v.run()
    starts, targets = [], set()
    counts = dict.fromkeys(_COUNT_KEYS, 0)
    for sid, r in v.results.items():
        if r.tenant != tenant or sid in v._extra:
            continue
        counts[sid[0] + "_starts"] = counts.get(sid[0] + "_starts", 0) + 1
        counts["branches"] += r.branches
        targets |= r.targets
        if r.violations:
            starts.append((_order(sid), list(r.violations)))
    starts.sort(key=lambda x: x[0])
    more, n, m, n6, m6 = v._reach_cache.get(tenant) or ([], 0, 0, 0, 0)
    counts.update(reach_pairs=n, policy_pairs=m, reach_pairs6=n6, policy_pairs6=m6)
    return Outcome(tenant, starts, list(more), counts, frozenset(targets))


class Sliced:
    """`Verifier`'s interface (run, update), the proof sliced by tenant (module docstring).
    `workers`: processes for a full run (default os.cpu_count(); 1: this process only)."""

    def __init__(self, net: Network, *, workers: int | None = None, clock: Callable[[], float] | None = None,
                 tenant: str | None = None, twins: bool = True):
        self.net = net
        self.twins = twins  # a full run gives a tenant its twin's clean verdict (verify_twins)
        self._sinfo = None  # verify_twins.SharedInfo, until the shared flows change
        self.twinned = 0  # tenants of the last full run given their twin's verdict
        self.clock = clock
        self.only_tenant = tenant
        self.workers = workers if workers is not None else _default_workers()
        self.base = Verifier(net)  # the fact indexes, the memo tables, the reporting helpers
        self.own = Owners(net, self.base.vni_owner, self.base.tid_name)
        self.outcomes: dict = {}  # tenant -> Outcome
        self.shared_v: dict = {}  # host -> [Violation]
        self.escaped: dict = {}  # tenant -> why its slice was left (checked over the whole tables)
        self._misfit_flows: dict = {}  # host -> [(Flow, owner)]: flows whose cookie names another tenant
        self._has_misfits = False
        self._shared_idx: dict = {}  # host -> IndexedHost of its shared flows
        self.provider: Outcome | None = None  # the provider network's starts
        self.timing: dict = {}  # where the last run's / update's time went (seconds)
        self._totals: dict = {}  # the outcomes' counts, summed
        self._bad: set = set()  # tenants whose outcome has violations
        self.skip: set = set()  # tenants whose own starts are not run (skip_tenant); their flows stay
        t0 = time.perf_counter()
        self._group_all()
        self.timing["partition"] = time.perf_counter() - t0

    # ---- the partition -----------------------------------------------------------------

    def _group_all(self) -> None:
        """Each host's flows by the tenant id in their cookie (cheap); the cookie-less ones
        sorted into shared and owned at once, the others checked by their tenant's run."""
        name_of = self.base.tid_name
        self.groups: dict = {}  # host -> {tenant id: [Flow]}
        self.hosts_of: dict = {}  # tenant name -> {host}
        self.by_cookie: dict = {}  # host -> {cookie: Flow}: what update diffs against
        self._nflows: dict = {}  # host -> how many flows it holds (the report's count)
        for h, ht in self.net.hosts.items():
            self._nflows[h] = len(ht.flows)
            g: dict = {}
            bc = self.by_cookie[h] = {}
            for f in ht.flows:
                c = f.cookie
                bc[c] = f
                tid = (c >> _TENANT_SHIFT) & _TENANT_MAX
                lst = g.get(tid)
                if lst is None:
                    lst = g[tid] = []
                lst.append(f)
            self.groups[h] = g
            for tid in g:
                n = name_of.get(tid)
                if n is not None:
                    self.hosts_of.setdefault(n, set()).add(h)
        for (h, _o), ref in self.net.ports.items():
            if h in self.net.hosts:
                self.hosts_of.setdefault(ref.tenant, set()).add(h)
        self.shared: dict = {}  # host -> [Flow]
        self.extra: dict = {}  # tenant -> {host: [Flow]}: its flows without its cookie
        for h in self.net.hosts:
            self._sort_shared(h)

    def _sort_shared(self, h: str) -> None:
        own = self.own
        shared = []
        for tenant in list(self.extra):
            self.extra[tenant].pop(h, None)
        for tid, fl in self.groups[h].items():
            mine = self.base.tid_name.get(tid)
            for f in fl:
                if tid and mine is not None:
                    continue  # checked by its tenant's run (_misfits)
                o = flow_owner(f, h, own)
                if o is None:
                    shared.append(f)
                else:
                    self.extra.setdefault(o, {}).setdefault(h, []).append(f)
                    self.hosts_of.setdefault(o, set()).add(h)
        for f, o in self._misfit_flows.get(h, ()):
            if o is None:
                shared.append(f)
            else:
                self.extra.setdefault(o, {}).setdefault(h, []).append(f)
                self.hosts_of.setdefault(o, set()).add(h)
        self.shared[h] = shared
        self._shared_idx.pop(h, None)
        self._sinfo = None

    def _misfits(self, tenant: str) -> list:
        """The flows with `tenant`'s id in their cookie that are not in its slice."""
        facts = self.net.tenants.get(tenant)
        if facts is None:
            return []
        tid = facts.tenant_id
        out = []
        for h in sorted(self.hosts_of.get(tenant, ())):
            for f in self.groups.get(h, {}).get(tid, ()):
                o = flow_owner(f, h, self.own)
                if o != tenant:
                    out.append((h, f, o))
        return out

    def shared_index(self, h: str) -> hs.IndexedHost:
        """The shared flows of `h`, indexed once for every slice (`IndexedHost.overlay`)."""
        idx = self._shared_idx.get(h)
        if idx is None:
            idx = self._shared_idx[h] = hs.IndexedHost(h, self.shared[h], self.net.hosts[h].groups)
        return idx

    def own_flows(self, tenant: str, h: str) -> list:
        """`tenant`'s flows on `h` (its cookie's and those sorted to it), none shared."""
        fl = self.groups.get(h, {}).get(self.net.tenants[tenant].tenant_id, [])
        extra = self.extra.get(tenant, {}).get(h)
        if extra or self._has_misfits:
            shared = {id(f) for f in self.shared.get(h, ())}
            fl = [f for f in {id(f): f for f in fl + (extra or [])}.values() if id(f) not in shared]
        return fl

    def slice_network(self, tenant: str) -> Network:
        hosts = {}
        extra = self.extra.get(tenant, {})
        facts = self.net.tenants[tenant]
        for h in sorted(self.hosts_of.get(tenant, ())):
            full = self.net.hosts[h]
            fl = self.shared[h] + self.groups[h].get(facts.tenant_id, []) + extra.get(h, [])
            if extra.get(h) or self._has_misfits:
                fl = list({id(f): f for f in fl}.values())
            hosts[h] = HostTables(full.pa, fl, full.groups, full.meters)
        return Network(_SliceHosts(hosts, self, tenant), self.net.ports, self.net.tenants,
                       self.net.tunnel_ofport, self.net.external)

    def check_tenant(self, tenant: str) -> Outcome:
        """One tenant's check: its slice, or the whole tables if a packet leaves it."""
        c0 = time.process_time()
        ports = self.base._tenant_ports(tenant)
        sv = _SliceVerifier(self.slice_network(tenant), self, tenant, ports)
        try:
            out = _outcome(sv, tenant)
        except ScopeEscape as e:
            whole = Verifier(self.net, tenant=tenant, memo_tables=self.base.memo_names)
            out = _outcome(whole, tenant)
            out.escaped = str(e)
        out.misfits = self._misfits(tenant)
        out.cpu = time.process_time() - c0
        return out

    # ---- twins ---------------------------------------------------------------------------

    def twin_groups(self, names: list) -> list:
        """`names` in groups that may be twins (verify_twins): the same hosts, each port
        name on the same host, the same number of own flows on each host; each group in name order, the groups largest first.
        Without twins (or for a tenant alone), one group per tenant."""
        if not self.twins or self.base.static:  # a number allocated twice: owners are not one-to-one
            return [[n] for n in names]
        by: dict = {}
        for n in names:
            hosts = tuple(sorted(self.hosts_of.get(n, ())))
            tid = self.net.tenants[n].tenant_id
            places = tuple(sorted((self.net.ports[k].port, k[0]) for k in self.base._tenant_ports(n)))
            key = (hosts, places, tuple(len(self.groups.get(h, {}).get(tid, ())) for h in hosts))
            by.setdefault(key, []).append(n)
        return sorted(by.values(), key=lambda g: (-len(g), g[0]))

    def shared_info(self):
        if self._sinfo is None:
            self._sinfo = SharedInfo(self)
        return self._sinfo

    def check_group(self, names: list) -> list:
        """The Outcomes of a group of possible twins: the first checked; each other given
        the verdict of a clean one it is a twin of (`verify_twins.twin_map`), or checked."""
        outs, clean = [], []
        for n in names:
            got = None
            for o in clean[:2]:
                c0 = time.process_time()
                pi = twin_map(self, o.tenant, n, self.shared_info())
                if pi is not None:
                    got = Outcome(n, [], [], dict(o.counts), renamed_targets(o.targets, pi))
                    got.misfits = self._misfits(n)
                    got.twin = o.tenant
                    got.cpu = time.process_time() - c0
                    if got.misfits:
                        got = None
                    break
            if got is None:
                got = self.check_tenant(n)
                if not (got.starts or got.reach or got.escaped or got.misfits):
                    clean.append(got)
            outs.append(got)
        return outs

    # ---- running -----------------------------------------------------------------------

    def run(self) -> Report:
        t0 = self.clock() if self.clock else 0.0
        pc = time.perf_counter
        tm = self.timing
        with _paused_gc():
            t1 = pc()
            for h in sorted(self.net.hosts):
                self.shared_v[h] = shared_violations(self.base, self.own, h, self.shared[h])
                self.shared_index(h)  # before the fork: every worker reads it
            names = self._tenants()
            groups = self.twin_groups(names)
            if len(groups) < len(names):
                self.shared_info()  # before the fork: every worker reads it
            t2 = pc()
            if self.workers > 1 and len(names) >= MIN_TENANTS_FOR_WORKERS:
                outs = _in_workers(self, groups, self.workers)
            else:
                outs = [o for g in groups for o in self.check_group(g)]
            t3 = pc()
            self.twinned = sum(1 for o in outs if o.twin)
            for o in outs:
                self._keep(o)
            self._fix_misfits()
            t4 = pc()
            self.provider = self._provider()
            t5 = pc()
            rep = self._report(t0)
        cpu = sorted(o.cpu for o in outs)
        tm.update(shared_proof=t2 - t1, slices=t3 - t2, twinned=self.twinned, misfits=t4 - t3, provider=t5 - t4, report=pc() - t5,
                  slices_cpu=sum(cpu), tenant_cpu_median=cpu[len(cpu) // 2] if cpu else 0.0,
                  tenants=len(outs), escaped=len(self.escaped),
                  workers=self.workers if self.workers > 1 and len(names) >= MIN_TENANTS_FOR_WORKERS else 1)
        return rep

    def _provider(self) -> Outcome | None:
        """The provider network's starts (packets in from each external port), over the whole
        tables of the hosts that have one: they enter a tenant's scope only through its
        entrance flows, which pin the provider's scope, not the tenant's."""
        if not any(h in self.net.hosts for h in self.net.external):
            return None
        v = Verifier(self.net, tenant=self.only_tenant, kinds=("external",), memo_tables=self.base.memo_names)
        v.run()
        starts, targets = [], set()
        counts = dict.fromkeys(_COUNT_KEYS, 0)
        for sid, r in v.results.items():
            if sid[0] != "external" or sid in v._extra:
                continue
            counts["external_starts"] += 1
            counts["branches"] += r.branches
            targets |= r.targets
            if r.violations:
                starts.append((_order(sid), list(r.violations)))
        return Outcome("", sorted(starts, key=lambda x: x[0]), [], counts, frozenset(targets))

    def _tenants(self) -> list:
        if self.only_tenant is not None:
            return [self.only_tenant] if self.only_tenant in self.net.tenants and self.only_tenant not in self.skip else []
        return sorted(t for t in self.net.tenants if t not in self.skip)

    def skip_tenant(self, tenant: str, skip: bool = True) -> None:
        """Leave `tenant`'s own starts out of the runs and updates from now on (skip=False:
        take them back; the next update that names it checks it). Its flows stay in the
        tables: the other tenants' packets still meet them. What it held is dropped from
        the report."""
        if not skip:
            self.skip.discard(tenant)
            return
        self.skip.add(tenant)
        old = self.outcomes.pop(tenant, None)
        if old is not None:
            for k, n in old.counts.items():
                self._totals[k] = self._totals.get(k, 0) - n
        self._bad.discard(tenant)
        self.escaped.pop(tenant, None)

    def _keep(self, o: Outcome) -> None:
        old = self.outcomes.get(o.tenant)
        tot = self._totals
        if old is not None:
            for k, n in old.counts.items():
                tot[k] = tot.get(k, 0) - n
        for k, n in o.counts.items():
            tot[k] = tot.get(k, 0) + n
        if o.starts or o.reach:
            self._bad.add(o.tenant)
        else:
            self._bad.discard(o.tenant)
        self.outcomes[o.tenant] = o
        if o.escaped:
            self.escaped[o.tenant] = o.escaped
        else:
            self.escaped.pop(o.tenant, None)

    def _fix_misfits(self) -> None:
        """Flows a cookie put in the wrong slice: sort them where they belong and check again
        the tenants whose slice was missing them (every tenant of the host for a shared one)."""
        found: dict = {}
        for o in self.outcomes.values():
            for h, f, owner in o.misfits:
                found.setdefault(h, []).append((f, owner))
        if not found and not self._misfit_flows:
            return
        again = set()
        for h in set(found) | set(self._misfit_flows):
            old = {(id(f), o) for f, o in self._misfit_flows.get(h, ())}
            new = {(id(f), o) for f, o in found.get(h, ())}
            if old == new:
                continue
            self._misfit_flows[h] = found.get(h, [])
            self._has_misfits = True
            for _f, owner in found.get(h, ()):
                if owner is None:
                    again |= {t for t, hs_ in self.hosts_of.items() if h in hs_}
                else:
                    again.add(owner)
            self._sort_shared(h)
            self.shared_v[h] = shared_violations(self.base, self.own, h, self.shared[h])
        for t in sorted(again & set(self._tenants())):
            self._keep(self.check_tenant(t))

    def update(self, tenant: str, flows: Mapping, facts: TenantFacts | None = None,
               ports: Mapping | None = None) -> Report:
        """As `Verifier.update`: `tenant` changed; `flows` = the new flow sets of the hosts
        that changed ({host: HostTables | {cookie: Flow} | [Flow]}), `facts` / `ports` its
        new facts and ports (None: unchanged). Each list is diffed by cookie against the
        flows held, then checked as `update_delta` checks a delta."""
        with _paused_gc():
            u0 = time.perf_counter()
            t0 = self.clock() if self.clock else 0.0
            deltas, whole = {}, {}
            for h, new in flows.items():
                new_list = new.flows if isinstance(new, HostTables) else _as_flow_list(new)
                old_ht = self.net.hosts.get(h)
                if old_ht is None:
                    whole[h] = new if isinstance(new, HostTables) else host_tables("", new_list)
                    continue
                held = self._held(h)
                new_keys = {f.cookie for f in new_list}
                added = [f for f in new_list if f.cookie not in held]
                removed = [held[k] for k in held.keys() - new_keys]
                deltas[h] = (removed, added)
                if isinstance(new, HostTables):
                    whole[h] = new  # its groups and meters as given
                elif _with_groups(removed) or _with_groups(added):
                    whole[h] = host_tables(old_ht.pa, new_list)  # a group's buckets: as the flows carry them
            return self._apply(tenant, deltas, whole, facts, ports, u0, t0)

    def update_delta(self, tenant: str, deltas: Mapping, facts: TenantFacts | None = None,
                     ports: Mapping | None = None) -> Report:
        """`tenant` changed, given as the compiler's diff: `deltas` = {host: (removed, added)}
        (sequences of Flow) or {host: HostDelta} (`controller.compile.desired`: its
        `.removed` and `.added`; its `.renamed` flows and, when `.extras_changed`, those of
        its `.flows` that carry a group or meter, replace the held flows of their cookie).
        A flow is known by its cookie (it hashes the flow's text): a removed flow need not
        be the object held, an added flow whose cookie is held and not removed is ignored.
        `facts` / `ports`: the tenant's new facts and {(host, ofport): PortRef} (None:
        unchanged). A host not held yet takes `added` as its whole flow list. Re-checks
        what `update` re-checks (the tenant's slice, the slices of tenants that own a
        changed flow or output to a port that changed hands, the shared proof of a host
        whose shared flows changed and every slice on it) and returns the whole report,
        the same a full run over the changed tables gives. Nothing is copied per host:
        the cost is the change's, not the host's."""
        with _paused_gc():
            u0 = time.perf_counter()
            t0 = self.clock() if self.clock else 0.0
            out, whole = {}, {}
            for h, d in deltas.items():
                if isinstance(d, (tuple, list)):
                    removed, added = d
                    swap = ()
                else:
                    removed, added = d.removed, d.added
                    swap = list(getattr(d, "renamed", ()))
                    if getattr(d, "extras_changed", False):
                        swap += [f for f in _as_flow_list(d.flows) if _with_extras(f)]
                if h not in self.net.hosts:
                    whole[h] = host_tables("", list(added) + swap)
                    continue
                held = self._held(h)
                rem, gone = [], set()
                for f in removed:
                    x = held.get(f.cookie)
                    if x is not None and f.cookie not in gone:
                        gone.add(f.cookie)
                        rem.append(x)
                add, new = [], set()
                for f in added:
                    if f.cookie not in new and (f.cookie in gone or f.cookie not in held):
                        new.add(f.cookie)
                        add.append(f)
                for f in swap:
                    x = held.get(f.cookie)
                    if x is not None and x is not f and f.cookie not in gone:
                        gone.add(f.cookie)
                        rem.append(x)
                    if f.cookie not in new and (f.cookie in gone or f.cookie not in held):
                        new.add(f.cookie)
                        add.append(f)
                out[h] = (rem, add)
            return self._apply(tenant, out, whole, facts, ports, u0, t0)

    def _held(self, h: str) -> dict:
        """{cookie: Flow} of the flows held for `h`."""
        held = self.by_cookie.get(h)
        if held is None:
            held = self.by_cookie[h] = {f.cookie: f for f in self.net.hosts[h].flows}
        return held

    def _apply(self, tenant, deltas: dict, whole: dict, facts, ports, u0: float, t0: float) -> Report:
        """The core of `update` and `update_delta`: `deltas` = {host: (removed, added)}, the
        removed flows being the objects held; `whole` = {host: HostTables} for a host not
        held yet, or one whose tables are given whole (its groups and meters)."""
        base = self.base
        again = {tenant}
        resort = set()
        # the removed flows first, judged by who owned what before
        for h, (removed, added) in deltas.items():
            held = self.by_cookie[h]
            g = self.groups.setdefault(h, {})
            gone: dict = {}  # tenant id -> ids of its removed flows (the very objects the groups hold)
            for f in removed:
                if held.get(f.cookie) is f:
                    del held[f.cookie]
                tid = cookie_tenant(f.cookie)
                gone.setdefault(tid, set()).add(id(f))
                self._changed_flow(h, f, tid, again, resort)
            n = 0
            for tid, ids in gone.items():
                if tid in g:
                    before = len(g[tid])
                    g[tid] = [x for x in g[tid] if id(x) not in ids]
                    n += before - len(g[tid])
            for f in added:
                held[f.cookie] = f
            self._count(h, len(added) - n)
        moved = set()
        if ports is not None:
            for k in [k for k in base._tenant_ports(tenant) if k not in ports]:
                if self.net.ports.get(k) is not None and self.net.ports[k].tenant == tenant:
                    del self.net.ports[k]
                    moved.add(k)
            base._ports_of[tenant] = set(ports)
            for k, ref in ports.items():
                if self.net.ports.get(k) != ref:
                    moved.add(k)
                self.net.ports[k] = ref
            for h, _o in ports:
                self.hosts_of.setdefault(tenant, set()).add(h)
        provider = any(h in self.net.external for h in deltas) or any(h in self.net.external for h in whole) \
            or any(h in self.net.external for h, _o in moved)
        if facts is not None:
            old = self.net.tenants.get(tenant)
            provider = provider or old is None or old.owned_external != facts.owned_external
            self.net.tenants[tenant] = facts
            if not base._reindex_tenant(tenant, old, facts):
                base._index_facts()
                self.own.vni, self.own.tid = base.vni_owner, base.tid_name
            self.own.addr = {hs.to_int("ipv4_dst", ip): n for n, f in self.net.tenants.items()
                             for ip in f.owned_external}
            base._epoch += 1
        # then the new flows, judged by who owns what now
        for h, ht in whole.items():
            if h not in deltas:  # a host not held before
                self.net.hosts[h] = ht
                base.pa_host = {x.pa: n for n, x in self.net.hosts.items()}
                self.by_cookie[h] = {f.cookie: f for f in ht.flows}
                g = self.groups[h] = {}
                for f in ht.flows:
                    tid = cookie_tenant(f.cookie)
                    g.setdefault(tid, []).append(f)
                    n = base.tid_name.get(tid)
                    if n is not None:
                        self.hosts_of.setdefault(n, set()).add(h)
                self._nflows[h] = len(ht.flows)
                resort.add(h)
        for h, (removed, added) in deltas.items():
            old_ht = self.net.hosts[h]
            g = self.groups[h]
            if h in whole:
                ht = whole[h]
                self._nflows[h] = len(ht.flows)
            else:
                groups, meters = old_ht.groups, old_ht.meters
                for f in added:  # the groups and meters the new flows carry (an unused one is never looked at)
                    for a in _all_actions(f.actions):
                        c = a.__class__
                        if c is Group:
                            if groups is old_ht.groups:
                                groups = dict(groups)
                            groups[a.group_id] = list(a.buckets)
                        elif c is Meter:
                            if meters is old_ht.meters:
                                meters = dict(meters)
                            meters[a.meter_id] = (a.rate_kbps, a.burst_kb)
                ht = _HeldTables(old_ht.pa, g, groups, meters)
            self.net.hosts[h] = ht
            for f in added:
                tid = cookie_tenant(f.cookie)
                g.setdefault(tid, []).append(f)
                n = base.tid_name.get(tid)
                if n is not None:
                    self.hosts_of.setdefault(n, set()).add(h)
                self._changed_flow(h, f, tid, again, resort)
        for h in resort:
            self._sort_shared(h)
            self.shared_v[h] = shared_violations(base, self.own, h, self.shared[h])
            again |= {t for t, hs_ in self.hosts_of.items() if h in hs_}
        if moved:
            again |= {t for t, o in self.outcomes.items() if not o.targets.isdisjoint(moved)}
        u1 = time.perf_counter()
        for t in sorted(again & set(self._tenants())):
            self._keep(self.check_tenant(t))
        self._fix_misfits()
        u2 = time.perf_counter()
        if provider:
            self.provider = self._provider()
        u3 = time.perf_counter()
        rep = self._report(t0)
        self.timing.update(update_diff=u1 - u0, update_slices=u2 - u1, update_provider=u3 - u2,
                           update_report=time.perf_counter() - u3, update_tenants=len(again))
        return rep

    def _count(self, h: str, n: int) -> None:
        self._nflows[h] = self._nflows.get(h, 0) + n

    def _changed_flow(self, h, f, tid, again: set, resort: set) -> None:
        mine = self.base.tid_name.get(tid)
        o = flow_owner(f, h, self.own)
        if o is not None:
            again.add(o)
        if mine is not None:
            again.add(mine)
        if o is None or not tid or mine is None or o != mine:
            resort.add(h)  # the shared part, or who holds a flow besides its cookie's tenant

    # ---- the report ----------------------------------------------------------------------

    def _report(self, t0: float) -> Report:
        counts = dict.fromkeys(_COUNT_KEYS, 0)
        counts.update(self._totals)
        starts, reach = [], []
        for o in [self.outcomes[t] for t in sorted(self._bad)]:
            starts.extend(o.starts)
            reach.append(o.reach)
        if self.provider:
            for k, n in self.provider.counts.items():
                counts[k] = counts.get(k, 0) + n
            starts.extend(self.provider.starts)
        for k in ("external_starts", "policy_pairs", "reach_pairs6", "policy_pairs6"):
            if not counts.get(k):
                counts.pop(k, None)
        counts.update(hosts=len(self.net.hosts), tenants=len(self.net.tenants),
                      flows=sum(self._nflows.get(h, 0) for h in self.net.hosts))
        counts = {k: v for k, v in counts.items() if k in _COUNT_KEYS or k in ("hosts", "tenants", "flows")}
        vs, seen = [], set()

        def add(v):
            if v.key() not in seen:
                seen.add(v.key())
                vs.append(v)
        starts.sort(key=lambda x: x[0])
        for _k, lst in starts:
            for v in lst:
                add(v)
        for v in self.base.static:
            if self.only_tenant is None or self.only_tenant in v.tenants:
                add(v)
        for lst in reach:
            for v in lst:
                add(v)
        if self.only_tenant is None:
            for h in sorted(self.shared_v):
                for v in self.shared_v[h]:
                    add(v)
        vs.sort(key=lambda v: (v.kind, v.tenants, v.host, v.message))
        secs = (self.clock() - t0) if self.clock else 0.0
        return Report(not vs, vs, counts, secs)


def _with_extras(f) -> bool:
    """Does `f` carry a group or a meter (whose buckets or bands are not in its text)?"""
    for a in f.actions:
        if a.__class__ is Group or a.__class__ is Meter:
            return True
    return False


class _HeldTables(HostTables):
    """A host's tables after a delta: its flows are the ones `Sliced` holds for it by
    tenant id (`Sliced.groups[host]`), listed only when something asks for the whole list
    (the whole tables' check of a tenant that left its slice, the provider's starts)."""

    def __init__(self, pa: str, by_tenant: dict, groups: dict, meters: dict):
        self.pa, self.groups, self.meters = pa, groups, meters
        self._by_tenant, self._flows = by_tenant, None

    @property
    def flows(self) -> list:
        if self._flows is None:
            self._flows = [f for lst in self._by_tenant.values() for f in lst]
        return self._flows

    @flows.setter
    def flows(self, value) -> None:
        self._flows = value


def _with_groups(flows) -> bool:
    for f in flows:
        for a in f.actions:
            if a.__class__ is Group:
                return True
    return False


class _SliceHosts(dict):
    """A slice's hosts; a host the slice has no flow on (a tunnel's far end, followed by
    a counterexample's concrete path) is made when first asked for: the shared flows."""

    def __init__(self, hosts, sliced: Sliced, tenant: str):
        super().__init__(hosts)
        self.sliced, self.tenant = sliced, tenant

    def __missing__(self, h):
        s = self.sliced
        if h not in s.net.hosts:
            raise KeyError(h)
        full = s.net.hosts[h]
        return HostTables(full.pa, list(s.shared.get(h, [])), full.groups, full.meters)


# --------------------------------------------------------------------------------------
# Worker processes
# --------------------------------------------------------------------------------------

_ACTIVE: Sliced | None = None  # the Sliced a forked worker reads (inherited, never sent)


def _default_workers() -> int:
    env = os.environ.get("NVCTL_VERIFY_WORKERS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            pass
    return os.cpu_count() or 1


def _may_fork() -> bool:
    """Not under eventlet's monkey patching (os-ken's hub): a pool's helper threads would
    be green threads of a hub the children inherit half-way."""
    import sys
    patcher = sys.modules.get("eventlet.patcher")
    return patcher is None or not patcher.is_monkey_patched("thread")


def _work(chunk: list) -> list:
    gc.disable()  # the worker's objects live until it exits
    return [o for g in chunk for o in _ACTIVE.check_group(g)]


def _in_workers(sliced: Sliced, groups: list, workers: int) -> list:
    """Every tenant's Outcome, computed by `workers` forked processes from `groups` of
    possible twins (Sliced.twin_groups; a group stays in one process), the chunks dealt
    round robin so that each gets a share of every size."""
    import multiprocessing
    global _ACTIVE
    try:
        ctx = multiprocessing.get_context("fork")
    except ValueError:  # no fork on this platform: this process
        return [o for g in groups for o in sliced.check_group(g)]
    if not _may_fork():
        return [o for g in groups for o in sliced.check_group(g)]
    names = groups
    per = max(1, len(names) // (workers * 8))
    chunks = [names[i::len(names) // per or 1] for i in range(len(names) // per or 1)]
    _ACTIVE = sliced
    gc.freeze()  # the parent's heap is read, not collected, in the children
    try:
        with ctx.Pool(workers) as pool:
            outs = []
            for part in pool.imap_unordered(_work, chunks):
                outs.extend(part)
    finally:
        _ACTIVE = None
        gc.unfreeze()
    return outs
