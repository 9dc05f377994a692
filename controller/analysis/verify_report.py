"""What `controller.analysis.verify`'s Verifier reports, and the reachability check.

`Reporting` (a part of `Verifier`, sharing its state):
  - reachability: for each pair of a tenant's ports that should reach each other, is some
    packet from one delivered to the other, locally or composed through a tunnel entry on
    the peer host (`_reach`); the chains of summaries `Checks` left uncomposed are
    composed here when first needed (`_Lazy`);
  - the report: every start's violations, the static ones (a number allocated twice) and
    the unreachable pairs, deduplicated and sorted, with the counts (`_report`);
  - counterexamples: a violation's input packet (`_packet`), its path through the tables
    with each deciding flow's layer and owner (`_hop`), and for an unreachable pair the
    concrete simulator's path of one packet (`_concrete_path`).
Pure: no I/O.
"""
from __future__ import annotations

from dataplane import headerspace as hs
from dataplane.match_action import (ETH_TYPE_ARP, ETH_TYPE_IP, ETH_TYPE_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6,
                                    IPPROTO_TCP, IPPROTO_UDP, Simulator, Unsupported, cookie_layer,
                                    cookie_tenant)

from controller.analysis.verify_checks import _Result
from controller.analysis.verify_model import Endpoint, PairPolicy, Report, Violation


class _Lazy:
    """The chain composed after p, computed when first needed; `evi`: an event of the
    chain's last branch (a tunnel output). `pre`: {(id p, id of each link so far): p
    composed with them}, shared by the lazies of one result, so that chains with a
    common start compose it once (and an empty start ends them all at once)."""
    __slots__ = ("p", "chain", "evi", "_c", "pre")

    def __init__(self, p, chain, evi=None, pre=None):
        self.p, self.chain, self.evi, self._c, self.pre = p, chain, evi, False, pre

    def state(self):
        if self._c is False:
            self._c = _compose_chain(self.p, self.chain, self.pre)
        return self._c

    def env(self):
        c = self.state()
        return None if c is None else c.events[len(c.events) - len(self.chain[-1].events) + self.evi][3]


class _Replay:
    """An iterable over a generator's items that keeps them: each iteration replays those
    already made and draws the rest only as far as it goes (one that stops at its first
    witness composes no more than it needs)."""
    __slots__ = ("gen", "items")

    def __init__(self, gen):
        self.gen, self.items = gen, []

    def __iter__(self):
        i = 0
        while True:
            if i < len(self.items):
                yield self.items[i]
            elif self.gen is None:
                return
            else:
                try:
                    self.items.append(next(self.gen))
                except StopIteration:
                    self.gen = None
                    return
                continue
            i += 1


def _compose_chain(p, chain, pre=None):
    """p composed with each branch of `chain` in turn (None once empty); the prefixes
    kept in `pre` (see _Lazy)."""
    if pre is None:
        c = p
        for b in chain:
            c = hs.compose(c, b)
            if c is None:
                break
        return c
    c, k = p, (id(p),)
    for b in chain:
        k = k + (id(b),)
        got = pre.get(k, False)
        if got is False:
            got = pre[k] = hs.compose(c, b)
        c = got
        if c is None:
            break
    return c


def _prefixes(r) -> dict:
    """The prefix cache of r's lazies (_Lazy.pre): it holds p and the links, so ids stay theirs."""
    pre = r.lazy.get("pre")
    if pre is None:
        pre = r.lazy["pre"] = {}
    return pre


def _state(x):
    return x.state() if x.__class__ is _Lazy else x


_L4 = {IPPROTO_TCP: ("tcp_src", "tcp_dst"), IPPROTO_UDP: ("udp_src", "udp_dst"),
       IPPROTO_ICMP: ("icmpv4_type", "icmpv4_code")}
_ARP_FIELDS = ("arp_op", "arp_spa", "arp_tpa", "arp_sha", "arp_tha")
_IP_FIELDS = ("ipv4_src", "ipv4_dst", "ip_proto", "ip_ttl")
_IP6_FIELDS = ("ipv6_src", "ipv6_dst", "ip_proto", "ip_ttl")
_L4_6 = {IPPROTO_TCP: ("tcp_src", "tcp_dst"), IPPROTO_UDP: ("udp_src", "udp_dst"),
         IPPROTO_ICMPV6: ("icmpv6_type", "icmpv6_code")}
_ND6 = {135: ("ipv6_nd_target", "ipv6_nd_sll"), 136: ("ipv6_nd_target", "ipv6_nd_tll")}


class Reporting:
    """The Verifier's reachability check, report and counterexamples (see the module
    docstring)."""

    # ---- reachability ----------------------------------------------------------------

    def _reach(self, tenant: str) -> tuple[list, int, int, int, int]:
        """(violations, pairs checked for reachability, pairs checked against the network
        policies, the same two over IPv6): unreachable pairs, and policy leaks
        (`_policy_leaks`)."""
        facts = self.net.tenants[tenant]
        out, n = [], 0
        by_port = {}
        for sid in self._by_tenant.get(tenant, ()):
            if sid[0] == "port":
                ref = self.net.ports[(sid[1], sid[2])]
                by_port[ref.port] = (sid, self.results[sid])
        pols = facts.policy
        if facts.policy6 or facts.reach_pairs6:  # both families look at a pair's deliveries: composed once
            cache: dict = {}

            def deliveries(r, b, eb):
                k = (id(r), b)
                got = cache.get(k)
                if got is None:
                    got = cache[k] = (r, _Replay(self._deliveries(r, b, eb)))
                return got[1]
        else:
            deliveries = self._deliveries
        for a, b in sorted(facts.reach_pairs):
            ea, eb = facts.endpoints.get(a), facts.endpoints.get(b)
            if ea is None or eb is None or a not in by_port:
                continue
            if self.only_host is not None and ea.host != self.only_host:
                continue
            n += 1
            sid, r = by_port[a]
            pp = pols.get((a, b)) if pols else None
            if self._reaches(r, b, eb, pp, deliveries):
                continue
            out.append(self._unreachable(tenant, a, b, ea, eb, facts, pp))
        n6 = 0
        for a, b in sorted(facts.reach_pairs6):
            ea, eb = facts.endpoints.get(a), facts.endpoints.get(b)
            if ea is None or eb is None or a not in by_port or ea.ip6 is None or eb.ip6 is None:
                continue
            if self.only_host is not None and ea.host != self.only_host:
                continue
            n6 += 1
            sid, r = by_port[a]
            pp = facts.policy6.get((a, b))
            if self._reaches(r, b, eb, pp or PairPolicy(ea.ip6, eb.ip6, None, None, None, 6), deliveries):
                continue
            out.append(self._unreachable(tenant, a, b, ea, eb, facts, pp, family=6))
        m = m6 = 0
        out.extend(self._tunnel_loops(tenant))
        if pols:
            more, m = self._policy_leaks(tenant, facts, pols, by_port, deliveries)
            out.extend(more)
        if facts.policy6:
            more, m6 = self._policy_leaks(tenant, facts, facts.policy6, by_port, deliveries)
            out.extend(more)
        return out, n, m, n6, m6

    def _exits(self, r: _Result) -> list:
        """r's tunnel outputs to known peers with its tenant's VNIs, fresh or not, composed:
        [(peer, vni, State, index of the output event in it)]."""
        got = r.lazy.get("exits")
        if got is None:
            got = list(r.exits)
            pre = _prefixes(r)
            for p, scan in r.pend_exits:
                for peer, vni, chain, evi in scan.exits:
                    c = _compose_chain(p, chain, pre)
                    if c is not None:
                        got.append((peer, vni, c, len(c.events) - len(chain[-1].events) + evi))
            r.lazy["exits"] = got
        return got

    def _no_tunnel_loop(self, roots: list, limit: int) -> bool:
        """Can `_tunnel_loops` be skipped, finding nothing? Its walk follows each entry's tunnel
        exits (peer and VNI are known from the scans, before any composition) to the entry
        they reach: when the graph of those edges, from `roots`, has no cycle, no walk comes
        back to an entry it went through; and when the walk's compositions along every path
        (at most one per edge followed, an edge's composition may only prune) stay within
        `limit`, no fan-out is reported either. An edge's packets may be empty: the graph
        holds more than the walk follows, never less. False (walk) otherwise, and when an
        exit reaches an entry that has no result yet."""
        results = self.results
        cost: dict = {}  # sid -> compositions the walk makes below it; None while on the stack

        def edges(sid):
            r = results[sid]
            out = [(peer, vni) for peer, vni, _c, _e in r.exits]
            for _p, scan in r.pend_exits:
                out.extend((peer, vni) for peer, vni, _ch, _e in scan.exits)
            return [("tunnel", peer, vni) for peer, vni in out if peer != sid[1]]

        total = 0
        for root in roots:
            if root[1] not in self.net.hosts:
                continue
            stack = [(root, iter(edges(root)), 0)]
            cost[root] = None
            while stack:
                sid, it, n = stack[-1]
                nxt = next(it, False)
                if nxt is False:
                    stack.pop()
                    cost[sid] = n
                    if stack:
                        up, uit, un = stack[-1]
                        stack[-1] = (up, uit, un + 1 + n)
                    continue
                if nxt not in results:
                    return False
                if nxt in cost:
                    c = cost[nxt]
                    if c is None:
                        return False  # a cycle: the walk may find a loop
                    stack[-1] = (sid, it, n + 1 + c)
                    continue
                cost[nxt] = None
                stack.append((nxt, iter(edges(nxt)), 0))
            total += cost[root]
            if total > limit:
                return False
        return True

    def _tunnel_loops(self, tenant: str, limit: int = 4096) -> list:
        """Loops through tunnels: a packet that arrives on a host over a tunnel and, tunnelled
        on from host to host, comes back to a tunnel entry it went through. Followed from
        each of the tenant's tunnel entries, its tunnel outputs composed with the entry
        they reach on the peer (as reachability composes them), until an entry repeats
        (a loop, reported with a packet that makes it) or nothing goes on. `limit` bounds
        the compositions per tenant (a pathological fan-out is reported, not followed)."""
        out, seen = [], set()
        budget = [limit]
        roots = sorted(sid for sid in self._by_tenant.get(tenant, ()) if sid[0] == "tunnel")
        if self._no_tunnel_loop(roots, limit):
            return out

        def entry(sid):
            r = self.results.get(sid)
            if r is None:
                if sid[1] not in self.net.hosts or sid[2] not in self._entry_vnis(sid[1]):
                    return None
                r = self._run_start(sid)
                self._put(sid, r, self._is_start(sid))
            return r

        def walk(root, r, s, evi_of, trail):
            for peer, vni, t, evi in self._exits(r):
                if peer == trail[-1][1]:
                    continue  # to its own PA: no tunnel entry accepts it (classify accepts the peers')
                if budget[0] <= 0:
                    return
                budget[0] -= 1
                if s is None:
                    c, ci = t, evi
                else:
                    env = s.events[evi_of][3]
                    c = hs.compose(s, t, env_map=env)
                    if c is None:
                        continue
                    ci = len(s.events) + evi
                nxt = ("tunnel", peer, vni)
                if nxt in trail:
                    sol = c.witness()
                    if sol is None:
                        continue
                    hosts = " -> ".join([x[1] for x in trail[trail.index(nxt):]] + [peer])
                    key = (root, hosts)
                    if key not in seen:
                        seen.add(key)
                        out.append(self._violation(
                            "loop", [tenant], f"the packet comes back to {peer} with VNI {vni} through the "
                            f"tunnels {hosts} (a loop)", root, c, sol, len(c.path)))
                    continue
                r2 = entry(nxt)
                if r2 is not None and c.witness() is not None:
                    walk(root, r2, c, ci, trail + (nxt,))

        try:
            for root in roots:
                if root[1] in self.net.hosts:
                    walk(root, self.results[root], None, None, (root,))
        finally:
            walk = None  # walk calls itself through its cell, which holds self: a cycle
        if budget[0] <= 0:
            out.append(Violation("unsupported", [tenant], f"{tenant}'s tunnel outputs fan out beyond "
                                 f"{limit} compositions: loops through tunnels not followed to the end"))
        return out

    def _policy_leaks(self, tenant: str, facts, policy: dict, by_port: dict, deliveries) -> tuple[list, int]:
        """For each ordered pair (a, b) whose new connections the network policies limit
        (`policy`: `TenantFacts.policy`, or `.policy6` over IPv6): no first packet of a
        connection from a's address to b's (fresh: every conntrack lookup on its way said
        +trk+new) that they do not allow is delivered to b, locally or through a tunnel.
        Replies and established connections (the stateful part) are not looked at, nor
        IPv6 neighbour discovery, which passes the policy stages by design (as ARP does)."""
        out, m = [], 0
        for (a, b), pp in sorted(policy.items()):
            if pp.allowed is None:
                continue
            ea, eb = facts.endpoints.get(a), facts.endpoints.get(b)
            if ea is None or eb is None or a not in by_port:
                continue
            if self.only_host is not None and ea.host != self.only_host:
                continue
            m += 1
            sid, r = by_port[a]
            base, allowed, exempt = _policy_items(pp)
            for s in deliveries(r, b, eb):
                t = s.restrict(base)
                for items in allowed + exempt:
                    if t is None:
                        break
                    t = t.exclude(items)
                if t is None:
                    continue
                sol = t.witness()
                if sol is not None:
                    out.append(self._leak(tenant, a, b, eb, pp, sid, t, sol))
                    break
        return out, m

    def _leak(self, tenant, a, b, eb: Endpoint, pp, sid, t, sol) -> Violation:
        from controller.analysis.verify_model import policy_allows
        from controller.layers.netpol import EgressPolicy, IngressPolicy
        proto = t.value_at(sol, t.var("ip_proto"))
        name = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp"}.get(proto)
        dport = t.value_at(sol, t.var(f"{name}_dst")) if name else 0
        what = f"{name} port {dport}" if name else f"ip_proto {proto}"
        if not policy_allows(pp.egress, name, dport):
            who, stage = f"{a}'s Egress", EgressPolicy
        else:
            who, stage = f"{b}'s Ingress", IngressPolicy
        flow = None  # the flow that let it through: in the stage's rule table, else the stage's last
        for want in ((stage.rules_table,), tuple(d.name for d in stage.tables)):
            for _h, tname, f, _n in reversed(t.path):
                if f is not None and tname in want:
                    flow = f
                    break
            if flow is not None:
                break
        msg = (f"a new connection from {a} ({pp.src}) to {b} ({pp.dst}), {what}, is delivered to {b} "
               f"({eb.host} ofport {eb.ofport}); {who} policies do not allow it")
        return self._violation("policy_leak", [tenant], msg, sid, t, sol, len(t.path), flow)

    @staticmethod
    def _arrivals(r: _Result, port: str) -> list:
        """r's fresh states (or _Lazy) delivered to `port`: those composed by _check, and
        the chains of its pending scans, composed when first needed."""
        k = ("arr", port)
        got = r.lazy.get(k)
        if got is None:
            got = list(r.local.get(port, ())) + list(r.delivered.get(port, ()))
            pre = _prefixes(r)
            for p, scan in r.pend:
                got.extend(_Lazy(p, chain, None, pre) for chain in scan.by_port.get(port, ()))
            r.lazy[k] = got
        return got

    @staticmethod
    def _tunnels_to(r: _Result, host: str) -> list:
        """r's fresh tunnel outputs to `host`: [(vni, State or _Lazy, env or None)]."""
        k = ("tun", host)
        got = r.lazy.get(k)
        if got is None:
            got = [(vni, s, env) for peer, vni, s, env in r.tunnels if peer == host]
            pre = _prefixes(r)
            for p, scan in r.pend:
                got.extend((vni, _Lazy(p, chain, evi, pre), None)
                           for vni, chain, evi in scan.by_peer.get(host, ()))
            r.lazy[k] = got
        return got

    def _reaches(self, r: _Result, b: str, eb: Endpoint, pp=None, deliveries=None) -> bool:
        """Is some fresh packet of r delivered to b? With `pp` (a PairPolicy): some new
        connection of pp.family from a's address to b's that the policies allow (over
        IPv6 not neighbour discovery: it passes everything)."""
        deliveries = deliveries or self._deliveries
        if pp is None:
            for s in deliveries(r, b, eb):
                if s.witness() is not None:
                    return True
            return False
        base, allowed, exempt = _policy_items(pp)
        for s in deliveries(r, b, eb):
            t = s.restrict(base)
            for items in exempt:
                t = t.exclude(items) if t is not None else None
            if t is None:
                continue
            for items in allowed:
                c = t.restrict(items) if items else t
                if c is not None and c.witness() is not None:
                    return True
        return False

    def _deliveries(self, r: _Result, b: str, eb: Endpoint):
        """r's fresh states delivered to b (composed through the tunnel entry of b's
        host when r's packets are tunnelled there); possibly empty sets."""
        for s in self._arrivals(r, b):
            s = _state(s)
            if s is not None:
                yield s
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
                if c is not None:
                    yield c

    def _unreachable(self, tenant, a, b, ea: Endpoint, eb: Endpoint, facts, pp=None,
                     family: int = 4) -> Violation:
        dst_mac = eb.mac if ea.switch == eb.switch else facts.router_macs.get(ea.switch, eb.mac)
        proto, dport = _example(pp.allowed if pp is not None else None)
        l3 = {"eth_type": ETH_TYPE_IP, "ipv4_src": ea.ip, "ipv4_dst": eb.ip} if family == 4 else \
            {"eth_type": ETH_TYPE_IPV6, "ipv6_src": ea.ip6, "ipv6_dst": eb.ip6}
        pkt = {"eth_src": ea.mac, "eth_dst": dst_mac, **l3,
               "ip_proto": IPPROTO_UDP if proto == "udp" else IPPROTO_TCP, "ip_ttl": 64,
               f"{proto}_src": 40000, f"{proto}_dst": dport}
        path, flow = self._concrete_path(ea.host, ea.ofport, pkt)
        why = " (one the network policies allow)" if pp is not None else ""
        what, to = ("packet", eb.ip) if family == 4 else ("IPv6 packet", f"[{eb.ip6}]")
        return Violation("unreachable", [tenant], f"no {what} from {a} ({ea.host}) reaches {b} "
                         f"({eb.host}); e.g. {proto} to {to}:{dport}{why} ends as shown", ea.host,
                         ea.ofport, pkt, path, flow.ofctl() if flow else "", f"{flow.cookie:#x}" if flow else "")

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
        counts = {"port_starts": 0, "tunnel_starts": 0, "external_starts": 0, "branches": 0, "reach_pairs": 0,
                  "hosts": len(self.net.hosts), "tenants": len(self.net.tenants),
                  "flows": sum(len(h.flows) for h in self.net.hosts.values())}
        tenants = set()
        if not self._extra:  # every result is a start, and every start has one: the tallies
            counts["port_starts"], counts["tunnel_starts"] = self._kinds["port"], self._kinds["tunnel"]
            counts["external_starts"] = self._kinds["external"]
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
                counts[sid[0] + "_starts"] += 1
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
            if t not in self.net.tenants:
                continue  # "": provider-network packets addressed to nobody
            hit = self._reach_cache.get(t)
            if hit is None:
                hit = self._reach_cache[t] = self._reach(t)
            more, n, m, n6, m6 = hit
            counts["reach_pairs"] += n
            for key, k in (("policy_pairs", m), ("reach_pairs6", n6), ("policy_pairs6", m6)):
                if k:
                    counts[key] = counts.get(key, 0) + k
            for v in more:
                if v.key() not in seen:
                    seen.add(v.key())
                    vs.append(v)
        vs.sort(key=lambda v: (v.kind, v.tenants, v.host, v.message))
        if not counts["external_starts"]:
            del counts["external_starts"]
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
        in_port = x if skind == "port" else self.net.external.get(host) if skind == "external" \
            else self.net.tunnel_ofport
        cts = s.value_at(sol, s.var("ct_state")) if hop else 0
        if cts:
            msg += f" (conntrack said {_ct_text(cts)})"
        return Violation(kind, tenants, msg, host, in_port, pkt, path,
                         flow.ofctl() if flow else "", f"{flow.cookie:#x}" if flow else "")


def _policy_items(pp) -> tuple:
    """(field tests every packet of pp's connections has: IP of pp.family from pp.src to
    pp.dst, [field tests of each cube pp allows; () for all of them], [field tests of
    what the policy stages let pass unjudged: IPv6 neighbour discovery]); over the
    fields as delivered (after any DNAT: what the policy stages saw)."""
    from controller.layers.acl import range_masks
    full = hs.FULL
    ip = "ipv4" if pp.family == 4 else "ipv6"
    base = (("eth_type", ETH_TYPE_IP if pp.family == 4 else ETH_TYPE_IPV6, full["eth_type"]),
            (f"{ip}_src", hs.to_int(f"{ip}_src", pp.src), full[f"{ip}_src"]),
            (f"{ip}_dst", hs.to_int(f"{ip}_dst", pp.dst), full[f"{ip}_dst"]))
    exempt = _nd_items() if pp.family == 6 else []
    if pp.allowed is None:
        return base, [()], exempt
    allowed = []
    for proto, lo, hi in pp.allowed:
        num = IPPROTO_TCP if proto == "tcp" else IPPROTO_UDP
        for val, mask in range_masks(lo, hi):  # mask 0 (every port): no test of the port
            allowed.append((("ip_proto", num, full["ip_proto"]),) + (((f"{proto}_dst", val, mask),) if mask else ()))
    return base, allowed, exempt


def _nd_items() -> list:
    """IPv6 neighbour discovery's field tests: what policy_*_sel lets on untracked."""
    if not _ND_ITEMS:
        from controller.layers.netpol import ND_TYPES
        _ND_ITEMS.extend((("ip_proto", IPPROTO_ICMPV6, 0xFF), ("icmpv6_type", t, 0xFF)) for t in ND_TYPES)
    return _ND_ITEMS


_ND_ITEMS: list = []


def _example(allowed) -> tuple[str, int]:
    """A (protocol, destination port) the cubes allow, for an unreachable pair's witness."""
    for proto, lo, hi in allowed or ():
        return proto, 80 if lo <= 80 <= hi else lo
    return "tcp", 80


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
    elif val["eth_type"] == ETH_TYPE_IPV6:
        for f in _IP6_FIELDS:
            pkt[f] = hs.from_int(f, val[f])
        for f in _L4_6.get(val["ip_proto"], ()):
            pkt[f] = val[f]
        if val["ip_proto"] == IPPROTO_ICMPV6:
            for f in _ND6.get(val["icmpv6_type"], ()):
                pkt[f] = hs.from_int(f, val[f])
    elif val["eth_type"] == ETH_TYPE_ARP:
        for f in _ARP_FIELDS:
            pkt[f] = hs.from_int(f, val[f])
    return pkt
