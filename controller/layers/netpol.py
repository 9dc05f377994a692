"""Network policies (Kubernetes NetworkPolicy v1 semantics; see topology.policy), in two
stages of their own, apart from the ACL layer's: the sender's Egress policies on its
host (after its from-port ACLs and the load balancer, so a connection to a VIP is
judged by the backend it went to, as Kubernetes does), the receiver's Ingress
policies on its host (before the load balancer puts a VIP back and before the to-port
ACLs). A packet must pass the ACL layer and this one; each keeps its own conntrack
state (a port's policy zone is not its ACL zone), so neither remembers a connection
the other refused.

Groups, so that flows grow with members plus rules, not their product:

  policy_sel    per tracked port (inport/outport): load the tenant's id into
                POLICY_TENANT and the bits of the policies of this direction selecting
                the port into POLICY_SELECTED, then conntrack in the port's policy zone.
                ARP is not IP; neighbour discovery passes before.
  policy_peer   per address a peer set names (a port's /32 or /128; an ipBlock's
                prefixes, the longest wins, with its excepts): load the bits of every
                rule's peer set the far address is in into POLICY_PEER. Once per tenant
                and host: POLICY_TENANT pins the flow's scope (only the tenant's own
                port flows write its id there), not each switch.
  policy        per switch: +inv drops, replies and related pass; per tenant, one flow
                per rule and port range: "selected by policy P" and "far address in rule
                R's peers" are two masked bit tests, so a rule costs the same for 3
                members or 3,000. +new goes to commit, +est (not a reply) on; per port:
                nothing matched, drop (isolated) or commit (tracked for replies only).
  policy_commit per isolated port: ct(commit) in its policy zone, on.

A policy with `log: true` sends a copy of each new connection one of its rules allows
to the controller (the tenant's log meter, as ACLs do), and of what its ports drop
for lack of an allowing rule. Each flow's stat tag names the policy and rule.

Bits are per tenant and direction: at most MAX_POLICIES policies of each type and
MAX_PEER_SETS distinct peer sets (the validator refuses more policies, or more rules
with peers, than that: topology.schema.MAX_POLICIES_PER_TYPE, MAX_PEER_RULES_PER_TYPE).
"""
from __future__ import annotations

import ipaddress
from functools import lru_cache

from dataplane.match_action import (ETH_TYPE_IP, ETH_TYPE_IPV6, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, ND_NA, ND_NS,
                                    Ct, Match, ct_state)
from controller.layers.acl import PRIO_INVALID, PRIO_REPLY, log_meter, range_masks, tracked_verdicts
from controller.layers.base import Layer, TableDecl
from controller.layers.port_security import ND_RA
from controller.layers.services import ND_RS
from controller.spaces.names import policy_zone_name
from controller.spaces.registers import INPORT, LOGICAL_SWITCH, OUTPORT, POLICY_PEER, POLICY_SELECTED, POLICY_TENANT
from topology.policy import addresses, peer_ports, selected
from topology.schema import MAX_PEER_RULES_PER_TYPE, MAX_POLICIES_PER_TYPE

WORD = 32
MAX_POLICIES = WORD * len(POLICY_SELECTED)
MAX_PEER_SETS = WORD * len(POLICY_PEER)
if MAX_POLICIES < MAX_POLICIES_PER_TYPE or MAX_PEER_SETS < MAX_PEER_RULES_PER_TYPE:
    raise ValueError("the schema admits more policies or peer sets than the registers hold")
ETH_TYPES = {4: ETH_TYPE_IP, 6: ETH_TYPE_IPV6}
PROTO = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP}
ND_TYPES = (ND_RS, ND_RA, ND_NS, ND_NA)  # a redirect is judged: only routers send them

# policy_sel: neighbour discovery passes before the per-port flows that track IP.
PRIO_ND = 200
PRIO_SELECTED = 100
# policy_peer: a prefix's flow at PRIO_PREFIX + its length (the longest wins); the
# switch's catch-all (no peer set) below.
PRIO_PREFIX = 100
PRIO_NO_PEER = 10
# policy: invalid (PRIO_INVALID), then replies/related (PRIO_REPLY): the ACL stages'
# flows and priorities; then rules (first listed first), then the isolated port's drop.
PRIO_RULE_TOP = 63000
MAX_RULES = 60000
PRIO_DENY = 1
# policy_commit: one flow per isolated port.
PRIO_COMMIT = 100
if not PRIO_DENY < PRIO_RULE_TOP - MAX_RULES < PRIO_RULE_TOP < PRIO_REPLY < PRIO_INVALID:
    raise ValueError("policy priorities: a rule could outrank replies, or fall below the drop")



def _bits(indices, slots) -> list:
    """SetField actions loading the bitmap of `indices` into `slots` (every word of it)."""
    words = [0] * len(slots)
    for i in indices:
        words[i // WORD] |= 1 << (i % WORD)
    return words


def _bit_match(slots, i) -> dict:
    slot = slots[i // WORD]
    bit = 1 << (i % WORD)
    return {slot.field: (bit, bit)}


_network = lru_cache(maxsize=1 << 16)(ipaddress.ip_network)  # an address as its own prefix, made once


# The last few tenants' plans by kind (both stages read both; a change compiles the
# tenant before and after it): a plan is a function of the tenant value alone.
_CACHE: dict = {}  # id(tenant) -> (tenant, {kind: Plan})
_CACHE_SIZE = 4


def plan_of(t, kind: str) -> "Plan":
    tn = t.tenant
    got = _CACHE.get(id(tn))
    if got is None or got[0] is not tn:
        got = (tn, {})
        _CACHE[id(tn)] = got
        while len(_CACHE) > _CACHE_SIZE:
            del _CACHE[next(iter(_CACHE))]
    plans = got[1]
    plan = plans.get(kind)
    if plan is None:
        plan = plans[kind] = Plan(t, kind)
    return plan


class Plan:
    """One tenant's policy groups for one direction ("Ingress" or "Egress")."""

    def __init__(self, t, kind: str):
        self.kind = kind
        self._prefixes = self._ports = None
        tn = t.tenant
        self.ports = {p.name: p for p in tn.ports}
        self.policies = [p for p in tn.network_policies if kind in p.types]
        self.sel_bit = {p.index: i for i, p in enumerate(self.policies)}
        self.selected: dict[str, list[int]] = {}  # port -> its policies' bits
        for p in self.policies:
            for name in selected(tn, p):
                self.selected.setdefault(name, []).append(self.sel_bit[p.index])
        # peer sets: each rule with peers gets the bit of its (ports, blocks) set
        self.peer_bit: dict[tuple, int] = {}  # (policy index, rule index) -> bit
        sets: dict[tuple, int] = {}
        self.set_ports: list[frozenset] = []
        self.set_blocks: list[tuple] = []
        for p in self.policies:
            for r in (p.ingress if kind == "Ingress" else p.egress):
                if not r.peers:
                    continue
                ports = frozenset(n for peer in r.peers for n in peer_ports(tn, p, peer))
                blocks = tuple(sorted({peer for peer in r.peers if peer.cidr is not None},
                                      key=lambda x: (x.cidr.version, str(x.cidr), tuple(map(str, x.except_)))))
                key = (ports, blocks)
                if key not in sets:
                    sets[key] = len(sets)
                    self.set_ports.append(ports)
                    self.set_blocks.append(blocks)
                self.peer_bit[(p.index, r.index)] = sets[key]
        self.n_sets = len(sets)

    def prefixes(self, tn) -> dict:
        """prefix (ip_network) -> the peer-set bits of every address whose longest
        listed prefix it is (see the module docstring)."""
        if self._prefixes is None:
            self._prefixes = self._make_prefixes()
        return self._prefixes

    def port_prefixes(self) -> set:
        """Every port's addresses, as prefixes (a port's own peer flows are its)."""
        if self._ports is None:
            self._ports = {_network(a) for p in self.ports.values() for a in addresses(p)}
        return self._ports

    def _make_prefixes(self) -> dict:
        by_addr: dict = {}
        for i, ports in enumerate(self.set_ports):
            for name in ports:
                for a in addresses(self.ports[name]):
                    by_addr.setdefault(a, set()).add(i)
        listed = {_network(a): set(bits) for a, bits in by_addr.items()}
        for blocks in self.set_blocks:
            for b in blocks:
                listed.setdefault(b.cidr, set())
                for e in b.except_:
                    listed.setdefault(e, set())
        def within(prefix, net) -> bool:  # prefix.subnet_of(net), on integers
            return prefix[0] == net[0] and prefix[2] >= net[2] and (prefix[1] & net[3]) == net[1]

        def key(n):  # (version, network as an int, prefix length, netmask as an int)
            return (n.version, int(n.network_address), n.prefixlen, int(n.netmask))
        sets = [[(key(b.cidr), [key(e) for e in b.except_]) for b in blocks] for blocks in self.set_blocks]
        for prefix, bits in listed.items():
            pk = key(prefix)
            for i, blocks in enumerate(sets):
                # every address of this region is in block b iff the prefix lies in b's
                # cidr and in none of its excepts (prefixes nest or are disjoint)
                if any(within(pk, cidr) and not any(within(pk, e) for e in excepts) for cidr, excepts in blocks):
                    bits.add(i)
        return listed


def _port_matches(rule, v) -> list[dict]:
    """L4 keyword sets for one rule and IP version: [{}] when it names no ports."""
    if not rule.ports:
        return [{}]
    out = []
    for proto in ("tcp", "udp"):
        ranges = sorted((1 if lo is None else lo, 65535 if lo is None else hi)
                        for pr, lo, hi in rule.ports if pr == proto)
        merged: list = []
        for lo, hi in ranges:  # disjoint ranges, so no two of a rule's flows overlap
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        for lo, hi in merged:
            if (lo, hi) == (1, 65535):
                out.append({"ip_proto": PROTO[proto]})
                continue
            for val, mask in range_masks(lo, hi):
                out.append({"ip_proto": PROTO[proto], f"{proto}_dst": val if mask == 0xFFFF else (val, mask)})
    return out


class _PolicyStage(Layer):
    kind = ""
    port_slot = INPORT
    far = "dst"  # the address a peer set is matched against
    sel_table = peer_table = rules_table = commit_table = ""

    sliced = True

    def _tracked(self, t) -> set:
        """The ports this stage tracks: a port isolated in either direction is tracked
        in both, so that the replies of what the other direction let in (or out) are
        known as replies here."""
        return t.once(("netpol.tracked",), lambda: set(plan_of(t, "Ingress").selected) |
                      set(plan_of(t, "Egress").selected))

    def port_inputs(self, t, p):
        tn = t.tenant
        tracked = self._tracked(t) if tn.network_policies else ()
        if not tracked:
            return (None, None), {}
        plan = plan_of(t, self.kind)
        versions = (4, 6) if tn.has_ipv6 else (4,)
        # its addresses as peers (when some peer set lists them), on every host with
        # tracked ports
        prefixes = plan.prefixes(tn)
        peer = tuple((net, tuple(sorted(prefixes[net]))) for net in map(_network, addresses(p))
                     if net in prefixes and net.version in versions)
        placement = {"tracked": t.once(("netpol.hosts",), lambda: frozenset(
            plan.ports[n].host for n in tracked))}
        if p.name not in tracked:
            return (None, (t.tenant_id, peer) if peer else None), placement
        by_index = {q.index: q for q in plan.policies}
        bits = tuple(plan.selected.get(p.name, []))
        names = ", ".join(by_index[p_i].name for p_i in sorted(
            k for k, b in plan.sel_bit.items() if b in bits)) or "nothing (tracked for replies)"
        log = any(by_index[k].log for k, b in plan.sel_bit.items() if b in bits)
        placement["own"] = (p.host,)
        return ((p.name, t.zone[policy_zone_name(p.name)], t.vni[p.switch], t.port_key[p.name],
                 versions, bits, names, log, t.tenant_id), (t.tenant_id, peer) if peer else None), placement

    def port_flows(self, content, out):
        """A tracked port's flows: its policies' bits and its zone, its commit, and
        what no rule allows; and its addresses' peer sets."""
        own, peer = content
        if peer is not None:
            tenant_id, prefixes = peer
            for prefix, bits in prefixes:
                out.put("tracked", self._peer_flow(out, tenant_id, prefix, bits))
        if own is None:
            return
        name, zone, vni, key, versions, bits, names, log, tenant_id = own
        me = {**LOGICAL_SWITCH.m(vni), **self.port_slot.m(key)}
        words = _bits(list(bits), POLICY_SELECTED)
        loads = (POLICY_TENANT.load(tenant_id),) + tuple(s.load(w) for s, w in zip(POLICY_SELECTED, words))
        for v in versions:
            out.put("own", out.flow(self.sel_table, PRIO_SELECTED, Match.of(**me, eth_type=ETH_TYPES[v]),
                                    loads + (Ct(zone=zone, table=out.table(self.peer_table)),),
                                    rule=f"port {name}: {self.kind.lower()} isolated by {names}"))
            out.put("own", out.flow(self.commit_table, PRIO_COMMIT, Match.of(**me, eth_type=ETH_TYPES[v]),
                                    (Ct(zone=zone, commit=True), out.goto("@next")),
                                    rule=f"port {name}: remember the allowed connection"))
        deny_log = (log_meter(tenant_id),) if log else ()
        for v in versions:
            if not bits:
                out.put("own", out.flow(self.rules_table, PRIO_DENY, Match.of(**me, eth_type=ETH_TYPES[v]),
                                        (out.goto(self.commit_table),),
                                        rule=f"port {name}: not {self.kind.lower()} isolated, allow"))
                continue
            out.put("own", out.flow(self.rules_table, PRIO_DENY, Match.of(**me, eth_type=ETH_TYPES[v]),
                                    deny_log, rule=f"port {name}: no {self.kind.lower()} rule allows",
                                    stat=(("port", name, "policy"), ("policyPort", name, self.kind))))

    def _peer_flow(self, out, tenant_id: int, prefix, bits):
        """The far address in `prefix` is in the peer sets `bits` (sorted)."""
        words = _bits(bits, POLICY_PEER)
        far = f"ipv{prefix.version}_{self.far}"
        return out.flow(self.peer_table, PRIO_PREFIX + prefix.prefixlen,
                        Match.of(**POLICY_TENANT.m(tenant_id), eth_type=ETH_TYPES[prefix.version], **{far: str(prefix)}),
                        tuple(s.load(w) for s, w in zip(POLICY_PEER, words)) + (out.goto(self.rules_table),),
                        rule=f"{self.far} {prefix}: in peer sets {list(bits) or 'none'}")

    def tenant_flows(self, t, out):
        tn = t.tenant
        if not tn.network_policies:
            return
        plan = plan_of(t, self.kind)
        tracked = self._tracked(t)
        if not tracked:
            return
        versions = (4, 6) if tn.has_ipv6 else (4,)
        hosts_of_switch: dict[str, set] = {}
        port_of = plan.ports
        for name in tracked:  # each tracked port's own flows: port_flows
            p = port_of[name]
            hosts_of_switch.setdefault(p.switch, set()).add(p.host)
        # per switch of tracked ports (reg13 scopes them): neighbour discovery passes
        # before tracking; invalid states drop; replies and related packets pass
        for sw, hosts in hosts_of_switch.items():
            ls = LOGICAL_SWITCH.m(t.vni[sw])
            if tn.has_ipv6:
                for nd in ND_TYPES:
                    out.to(hosts, out.flow(self.sel_table, PRIO_ND,
                                           Match.of(**ls, eth_type=ETH_TYPE_IPV6, ip_proto=IPPROTO_ICMPV6,
                                                    icmpv6_type=nd),
                                           (out.goto("@next"),), rule=f"switch {sw}: neighbour discovery"))
            for v in versions:
                tracked_verdicts(out, self.rules_table, hosts, sw, t.vni[sw], ETH_TYPES[v])
        # per tenant (the policy tenant register scopes them), on every host with
        # tracked ports: the peer sets of the far address, and the rules
        hosts = set().union(*hosts_of_switch.values())
        me = POLICY_TENANT.m(t.tenant_id)
        ports = plan.port_prefixes()
        for prefix, bits in sorted(plan.prefixes(tn).items(), key=lambda kv: (kv[0].version, str(kv[0]))):
            if prefix.version not in versions or prefix in ports:  # a port's address: port_flows
                continue
            out.to(hosts, self._peer_flow(out, t.tenant_id, prefix, sorted(bits)))
        for v in versions:
            out.to(hosts, out.flow(self.peer_table, PRIO_NO_PEER, Match.of(**me, eth_type=ETH_TYPES[v]),
                                   tuple(s.load(0) for s in POLICY_PEER) + (out.goto(self.rules_table),),
                                   rule=f"{self.far} in no peer set"))
        ordinal = 0
        for pol in plan.policies:
            sel = _bit_match(POLICY_SELECTED, plan.sel_bit[pol.index])
            log = (log_meter(t.tenant_id),) if pol.log else ()
            for rule in (pol.ingress if self.kind == "Ingress" else pol.egress):
                ordinal += 1
                prio = PRIO_RULE_TOP - ordinal
                peer = _bit_match(POLICY_PEER, plan.peer_bit[(pol.index, rule.index)]) if rule.peers else {}
                label = f"policy {pol.name} {self.kind.lower()}[{rule.index}] allow"
                stat = (("policy", pol.index, self.kind, rule.index),) + ((("policyLog", self.kind),) if pol.log else ())
                for v in versions:
                    for l4 in _port_matches(rule, v):
                        m = {**me, **sel, **peer, "eth_type": ETH_TYPES[v], **l4}
                        out.to(hosts, out.flow(self.rules_table, prio,
                                               Match.of(**m, ct_state=ct_state(trk=True, new=True)),
                                               log + (out.goto(self.commit_table),), rule=label, stat=stat))
                        out.to(hosts, out.flow(self.rules_table, prio,
                                               Match.of(**m, ct_state=ct_state(trk=True, est=True, rpl=False)),
                                               (out.goto("@next"),), rule=label))
        if ordinal > MAX_RULES:
            raise ValueError(f"{ordinal} {self.kind} policy rules; at most {MAX_RULES}")


_FIELDS = frozenset({"reg13", "eth_type", "ct_state", "ip_proto", "tcp_dst", "udp_dst"}) | \
    {s.field for s in POLICY_SELECTED + POLICY_PEER + (POLICY_TENANT,)}


def _stage_tables(short: str, port_reg: str, far: str, kind: str, whose: str) -> tuple:
    """The four tables of one direction's stage: policy_SHORT_sel/_peer/(rules)/_commit."""
    sel, peer, rules, commit = (f"policy_{short}_sel", f"policy_{short}_peer", f"policy_{short}",
                                f"policy_{short}_commit")
    return (
        TableDecl(sel, frozenset({"reg13", port_reg, "eth_type", "ip_proto", "icmpv6_type"}),
                  successors=(peer, "@next"), miss="@next",
                  doc=f"IP {whose} a port some {kind} policy selects -> its policies' bits, conntrack"),
        TableDecl(peer, frozenset({POLICY_TENANT.field, "eth_type", f"ipv4_{far}", f"ipv6_{far}"}),
                  successors=(rules,), doc=f"{far} address -> the peer sets it is in"),
        TableDecl(rules, _FIELDS | {port_reg}, successors=(commit, "@next"),
                  doc=f"{kind} rules: selected-by and peer-set bits, ports"),
        TableDecl(commit, frozenset({"reg13", port_reg, "eth_type"}), successors=("@next",),
                  doc="commit an allowed connection in the port's policy zone"),
    )


class EgressPolicy(_PolicyStage):
    name = "policy_egress"
    id = 16
    kind = "Egress"
    port_slot = INPORT
    far = "dst"
    tables = _stage_tables("eg", INPORT.field, far, kind, "from")
    sel_table, peer_table, rules_table, commit_table = (d.name for d in tables)


class IngressPolicy(_PolicyStage):
    name = "policy_ingress"
    id = 17
    kind = "Ingress"
    port_slot = OUTPORT
    far = "src"
    tables = _stage_tables("in", OUTPORT.field, far, kind, "to")
    sel_table, peer_table, rules_table, commit_table = (d.name for d in tables)
