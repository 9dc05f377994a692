"""The checks of one start's symbolic run, for `controller.analysis.verify`'s Verifier.

`Checks` (a part of `Verifier`, sharing its state) looks at every final state of a
start's run and at each pending (state, summary) pair: outputs to another tenant's port,
tunnels with a foreign VNI or to an unknown PA, packets leaving on the external port with
a source the tenant does not own, conntrack zones / meters / groups not the tenant's,
overlaps, loops and undeclared drops, each reported with a counterexample
(`Reporting._violation`). `_scan` decides which of a memoized summary's branches must be
composed to be checked; the others stay uncomposed for the reachability check.

Also here: what a start's run leaves behind (`_Result`, `_Scan`), and the helpers on
symbolic states the checks use (`_composed`, `_restrict_var`, `_exclude_var`,
`_undeclared`). Pure: no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from dataplane import headerspace as hs
from dataplane.match_action import CONTROLLER, ETH_TYPE_IP, ETH_TYPE_IPV6, Log, Meter, cookie_tenant

from controller.analysis.verify_model import TenantFacts


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
    # every tunnel output to a known peer with one of its VNIs, fresh or not (loops through
    # tunnels): (peer host, vni, State, index of the output event); and (State, _Scan) whose
    # scan has such outputs (_Scan.exits)
    exits: list = field(default_factory=list)
    pend_exits: list = field(default_factory=list)


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
    exits: list = field(default_factory=list)  # as tunnels, fresh or not: (peer host, vni, chain, evi)



_RES_KINDS = frozenset({"zone", "group", "meter"})
# whom a provider-network packet addressed to no tenant belongs to: nobody, owning nothing
_NOBODY = TenantFacts(0, frozenset(), frozenset(), frozenset(), frozenset(), frozenset(), frozenset())


def _who(sid, tenant: str) -> str:
    """The subject of a violation's message: whose packet it is."""
    if sid[0] != "external":
        return f"{tenant}'s packet"
    return f"a packet from the provider network to {sid[2]} ({tenant}'s address)" if sid[2] else \
        "a packet from the provider network, addressed to no tenant,"


class Checks:
    """The Verifier's checks over a start's final states (see the module docstring)."""

    def _check(self, sid, tenant: str, finals: list, res: _Result, pending=()) -> None:
        """Check every final state, and each pending (state, summary) pair: the summary's
        branches are scanned once per (summary, tenant) (`_scan`), and only those whose
        events could be a violation for this tenant are composed and checked; the others
        are kept uncomposed (`_Lazy`) for reachability."""
        kind, host, x = sid
        net = self.net
        facts = net.tenants.get(tenant) or _NOBODY
        who = _who(sid, tenant)
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
            names = [t for t in [tenant] + [o for o in others if o != tenant] if t]
            res.violations.append(self._violation(vkind, names, msg, sid, s, sol, hop, flow))

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
                        self._check_tunnel(s, env, ev, facts, who, report, res)
                    elif port == ext_port:
                        self._check_external(s, env, ev, facts, report)
                    else:
                        ref = net.ports.get((ev[1], port))
                        if ref is None:
                            report("unknown_port", [], f"output to ofport {port} on {ev[1]}, which no "
                                   f"port owns", s, ev[4])
                        elif ref.tenant != tenant:
                            report("isolation_port", [ref.tenant],
                                   f"{who} is output to {ref.tenant}'s port {ref.port} "
                                   f"({ev[1]} ofport {port})", s, ev[4])
                        elif s.fresh:
                            reached.setdefault(ref.port, []).append(s)
                elif k == "res":
                    _, rk, h, rid, hop = ev
                    if rk == "zone" and rid not in facts.zones:
                        other = self.zone_owner.get(rid, "?")
                        report("shared_zone", [other], f"{who} uses conntrack zone {rid} "
                               f"({'of ' + other if other != '?' else 'allocated to nobody'})", s, hop)
                    elif rk == "group" and rid not in facts.groups:
                        other = self.group_owner.get(rid, "?")
                        report("shared_group", [other], f"{who} goes to group {rid} "
                               f"({'of ' + other if other != '?' else 'allocated to nobody'})", s, hop)
                    elif rk == "meter" and (h, rid) not in facts.meters:
                        other = self.meter_owner.get((h, rid), "?")
                        report("shared_meter", [other], f"{who} passes meter {rid} on {h} "
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
            if scan.exits and kind == "tunnel":
                res.pend_exits.append((p, scan))  # loops through tunnels: see _tunnel_loops
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
        facts = net.tenants.get(tenant) or _NOBODY
        ext_port = net.external.get(host)
        tunnel = net.tunnel_ofport
        pa_int = self._pa_int()
        scan = _Scan([], [], [], set())
        scan.count = len(summ.states)
        for b in summ.states:
            bad = False
            local, tunnels, exits = [], [], []
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
                        else:
                            exits.append((peer, tid[0], (b,), evi))
                            if b.fresh:
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
                if not any(note not in ("group", "group-drop") for _h, _t, _f, note in b.path) or _undeclared(b):
                    bad = True
            if bad:
                scan.compose.append((b,))
            else:
                scan.local.extend(local)
                scan.tunnels.extend(tunnels)
                scan.exits.extend(exits)
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
            scan.exits.extend((peer, vni, (b,) + ch, evi) for peer, vni, ch, evi in sc.exits)
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

    def _check_tunnel(self, s, env, ev, facts, who, report, res) -> None:
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
                    report("isolation_vni", [other], f"{who} is tunnelled with VNI {bad}, "
                           f"not one of its own", t, ev[4], sol=sol)
            return
        if tid not in facts.vnis:
            other = self.vni_owner.get(tid, "?")
            report("isolation_vni", [other], f"{who} is tunnelled with VNI {tid} "
                   f"({'of ' + other if other != '?' else 'allocated to nobody'})", s, ev[4])
            return
        dst_var = env.get("tun_ipv4_dst") or hs.INPUT["tun_ipv4_dst"]
        dst = s.concrete(dst_var)
        peer = self.pa_host.get(hs.from_int("tun_ipv4_dst", dst)) if dst is not None else None
        if peer is None:
            report("tunnel_lost", [], f"tunnelled to {hs.from_int('tun_ipv4_dst', dst) if dst is not None else 'a packet-dependent address'}, "
                   f"which is no host's PA", s, ev[4])
            return
        res.exits.append((peer, tid, s, s.events.index(ev)))
        if s.fresh:
            res.tunnels.append((peer, tid, s, env))

    def _check_external(self, s, env, ev, facts, report) -> None:
        et = env.get("eth_type") or hs.INPUT["eth_type"]
        t6 = _restrict_var(s, et, ETH_TYPE_IPV6, 0xFFFF)  # no tenant owns an IPv6 external address
        sol = t6.witness() if t6 is not None else None
        if sol is not None:
            src = env.get("ipv6_src") or hs.INPUT["ipv6_src"]
            bad = hs.from_int("ipv6_src", t6.value_at(sol, src))
            report("isolation_external", [], f"an IPv6 packet leaves on the external port of {ev[1]} with "
                   f"source {bad}, which the tenant does not own", t6, ev[4], sol=sol)
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
        if note == "ttl" or note == "group-drop":  # an empty fast-failover bucket drops on purpose
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

