"""Stateful ACLs, in two stages: from-port (ingress, on the sender's host, right after
port security) and to-port (egress, on the receiver's host, right before delivery).

Every port guarded by any ACL is tracked in its own conntrack zone in both stages, so
its zone sees every connection it takes part in. In each stage:

  +inv                 drop
  replies (+est+rpl), related (+rel)      pass: an allowed connection's replies flow
  otherwise, the rules by priority, on every packet of the connection's direction:
    allow              +new: commit, pass;  +est: pass
    allow-stateless    pass, nothing remembered
    deny               drop (an ACL change thus cuts connections it no longer allows,
                       and leaves the ones it still allows alone)
  no rule matched      allowed: +new committed, +est passes

A rule with `log: true` sends a copy of each connection attempt it decides to the
controller (the first packet of an allowed connection; every packet it denies or lets
through statelessly), through the tenant's log meter on that host: ACL_LOG_PPS lines a
second per tenant and host, ACL_LOG_BURST at once. A copy over the rate is not sent;
the packet's own fate is unchanged.

Ports no ACL guards skip both stages without touching conntrack. IPv4 is tracked, and
IPv6 in tenants that have it (a rule whose from/to name only networks of one version
applies to that version; one with neither, to both; `icmp` means ICMPv6 for IPv6).
ARP passes (port security already pinned it to the port's addresses), and so does
neighbour discovery, which the platform answers before the ACLs.

Only packets of guarded ports reach a rules table (the conntrack table's miss skips
it), so the flows that do not depend on the port (+inv, replies, related, and the
no-rule +est pass) are per logical switch, not per port: a switch with 50 guarded ports
has 4 of them per stage, not 200. What names the port's zone (tracking, commit) and
the rules stay per port.
"""
from __future__ import annotations

import itertools

from dataplane.match_action import (ETH_TYPE_IP, ETH_TYPE_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
                                    IPPROTO_UDP, Ct, Log, Match, ct_state)
from controller.layers.base import MISS_PRIORITY, Layer, TableDecl
from controller.spaces.ids import ACL_LOG_METER_BASE
from controller.spaces.registers import INPORT, LOGICAL_SWITCH, OUTPORT
from topology.schema import MAX_ACL_PRIORITY

# acl_in_ct / acl_out_ct: a guarded port's IP is tracked; anything else misses (on).
PRIO_TRACK = 100
# acl_in / acl_out, highest first: an invalid state drops, then an allowed connection's
# replies and related packets pass, then the rules by their own priority, then the
# no-rule default (allow: +new committed, +est on); what none of them takes drops (miss).
PRIO_INVALID = 65000
PRIO_REPLY = 64000
PRIO_RULE_BASE = 100  # rule priority p becomes 100 + p (p <= MAX_ACL_PRIORITY)
PRIO_DEFAULT = 1
if not MISS_PRIORITY < PRIO_DEFAULT < PRIO_RULE_BASE <= PRIO_RULE_BASE + MAX_ACL_PRIORITY < PRIO_REPLY < PRIO_INVALID:
    raise ValueError("acl priorities: a rule could outrank replies, or fall to the default")
PROTO = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP, "icmp": IPPROTO_ICMP}
PROTO6 = {**PROTO, "icmp": IPPROTO_ICMPV6}
ETH_TYPES = {4: ETH_TYPE_IP, 6: ETH_TYPE_IPV6}
_L4_FIELDS = frozenset({"ip_proto", "tcp_src", "tcp_dst", "udp_src", "udp_dst"})
ACL_LOG_PPS = 50  # log lines a second, per tenant and host
ACL_LOG_BURST = 50


def log_meter(tenant_id: int) -> Log:
    """The copy to the controller of a logged rule's packet, through the tenant's log meter."""
    return Log(ACL_LOG_METER_BASE + tenant_id, ACL_LOG_PPS, ACL_LOG_BURST)


def range_masks(lo: int, hi: int, bits: int = 16) -> list[tuple[int, int]]:
    """Cover [lo, hi] exactly with (value, mask) prefixes, fewest first-fit blocks."""
    out = []
    full = (1 << bits) - 1
    while lo <= hi:
        size = lo & -lo if lo else 1 << bits
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, full & ~(size - 1)))
        lo += size
    return out


def guarded_ports(tenant) -> dict[str, dict[str, list]]:
    """port -> {"from-port": [rules], "to-port": [rules]} for every port any ACL guards."""
    out: dict[str, dict[str, list]] = {}
    for rule in tenant.acls:
        for name in rule.ports or [p.name for p in tenant.ports]:
            out.setdefault(name, {"from-port": [], "to-port": []})[rule.direction].append(rule)
    return out


def rule_matches(rule, versions=(4,)) -> list[dict]:
    """The match keyword sets one ACL rule expands to (cross product of its lists), for
    each IP version in `versions` its networks allow."""
    l4 = rule.protocol if rule.protocol in ("tcp", "udp") else None
    sports = [m for lo, hi in rule.src_ports for m in range_masks(lo, hi)] or [None]
    dports = [m for lo, hi in rule.dst_ports for m in range_masks(lo, hi)] or [None]
    out = []
    for v in versions:
        srcs = [str(n) for n in rule.src if n.version == v] or ([] if rule.src else [None])
        dsts = [str(n) for n in rule.dst if n.version == v] or ([] if rule.dst else [None])
        base: dict = {"eth_type": ETH_TYPES[v]}
        if rule.protocol:
            base["ip_proto"] = (PROTO if v == 4 else PROTO6)[rule.protocol]
        src_f, dst_f = ("ipv4_src", "ipv4_dst") if v == 4 else ("ipv6_src", "ipv6_dst")
        for src, dst, sp, dp in itertools.product(srcs, dsts, sports, dports):
            m = dict(base)
            if src and not src.endswith("/0"):
                m[src_f] = src
            if dst and not dst.endswith("/0"):
                m[dst_f] = dst
            if sp is not None:
                m[f"{l4}_src"] = sp if sp[1] != 0xFFFF else sp[0]
            if dp is not None:
                m[f"{l4}_dst"] = dp if dp[1] != 0xFFFF else dp[0]
            out.append(m)
    return out


def tracked_verdicts(out, table: str, hosts, switch: str, vni: int, eth_type: int) -> None:
    """The flows of a stateful rules table that do not depend on the port, per logical
    switch: an invalid state drops (counted for the switch), an allowed connection's
    replies and related packets pass. The ACL and network-policy stages share them."""
    ip = {**LOGICAL_SWITCH.m(vni), "eth_type": eth_type}
    out.to(hosts, out.flow(table, PRIO_INVALID, Match.of(**ip, ct_state=ct_state(trk=True, inv=True)), (),
                           rule=f"switch {switch}: invalid connection state", stat=(("switch", switch, "invalid"),)))
    for flags in (dict(est=True, rpl=True), dict(rel=True)):
        out.to(hosts, out.flow(table, PRIO_REPLY, Match.of(**ip, ct_state=ct_state(trk=True, **flags)),
                               (out.goto("@next"),), rule=f"switch {switch}: reply of an allowed connection"))


class _AclStage(Layer):
    direction = ""
    port_slot = INPORT
    ct_table = ""
    rules_table = ""

    sliced = True

    def port_inputs(self, t, p):
        guarded = t.once("acl.guarded", lambda: guarded_ports(t.tenant))
        by_dir = guarded.get(p.name)
        if by_dir is None:
            return None, {}
        return ((p.name, t.zone[p.name], t.vni[p.switch], t.port_key[p.name],
                 (4, 6) if t.tenant.has_ipv6 else (4,), tuple(by_dir[self.direction]), t.tenant_id),
                {"own": (p.host,)})

    def port_flows(self, content, out):
        """A guarded port's tracking, its rules and its default."""
        if content is None:
            return
        name, zone, vni, key, versions, rules, tenant_id = content
        me = {**LOGICAL_SWITCH.m(vni), **self.port_slot.m(key)}
        for v in versions:
            out.put("own", out.flow(self.ct_table, PRIO_TRACK, Match.of(**me, eth_type=ETH_TYPES[v]),
                                  (Ct(zone=zone, table=out.table(self.rules_table)),),
                                  rule=f"port {name}: track in zone {zone}"))
        commit = (Ct(zone=zone, commit=True), out.goto("@next"))
        for rule in rules:
            label = f"acl[{rule.index}]{' ' + rule.name if rule.name else ''} {rule.direction} " \
                    f"{rule.action} (port {name})"
            log = (log_meter(tenant_id),) if rule.log else ()
            stat = (("acl", rule.index), ("aclPort", name))  # aclPort: whose packet a log line is
            if rule.action == "deny":
                variants = [({}, log)]
                stat += (("port", name, "acl"),)
            elif rule.action == "allow-stateless":
                variants = [({}, log + (out.goto("@next"),))]
            else:
                variants = [(dict(new=True), log + commit),
                            (dict(est=True, rpl=False), (out.goto("@next"),))]
            prio = PRIO_RULE_BASE + rule.priority
            for m in rule_matches(rule, versions):
                for flags, actions in variants:
                    cs = {"ct_state": ct_state(trk=True, **flags)} if flags else {}
                    out.put("own", out.flow(self.rules_table, prio, Match.of(**me, **m, **cs),
                                          actions, rule=label, stat=stat))
        for v in versions:
            out.put("own", out.flow(self.rules_table, PRIO_DEFAULT,
                                  Match.of(**me, eth_type=ETH_TYPES[v],
                                           ct_state=ct_state(trk=True, new=True)), commit,
                                  rule=f"port {name}: no rule matched, allow"))

    def tenant_flows(self, t, out):
        tn = t.tenant
        versions = (4, 6) if tn.has_ipv6 else (4,)
        hosts_of_switch: dict[str, set] = {}
        for name in t.once("acl.guarded", lambda: guarded_ports(tn)):
            p = tn.port(name)
            hosts_of_switch.setdefault(p.switch, set()).add(p.host)
        for (sw, hosts), v in itertools.product(hosts_of_switch.items(), versions):
            tracked_verdicts(out, self.rules_table, hosts, sw, t.vni[sw], ETH_TYPES[v])
            ip = {**LOGICAL_SWITCH.m(t.vni[sw]), "eth_type": ETH_TYPES[v]}
            out.to(hosts, out.flow(self.rules_table, PRIO_DEFAULT,
                                   Match.of(**ip, ct_state=ct_state(trk=True, est=True, rpl=False)),
                                   (out.goto("@next"),),
                                   rule=f"switch {sw}: no rule matched, allow the rest of a connection"))


_RULE_FIELDS = frozenset({"reg13", "eth_type", "ct_state", "ipv4_src", "ipv4_dst", "ipv6_src",
                          "ipv6_dst"}) | _L4_FIELDS


class FromPortAcl(_AclStage):
    name = "acl_from_port"
    id = 8
    direction = "from-port"
    port_slot = INPORT
    ct_table, rules_table = "acl_in_ct", "acl_in"
    tables = (
        TableDecl("acl_in_ct", frozenset({"reg13", "reg14", "eth_type"}), successors=("acl_in",),
                  miss="@next", doc="IP from a guarded port -> conntrack in the port's zone"),
        TableDecl("acl_in", _RULE_FIELDS | {"reg14"}, successors=("@next",),
                  doc="from-port rules by priority, stateful"),
    )


class ToPortAcl(_AclStage):
    name = "acl_to_port"
    id = 9
    direction = "to-port"
    port_slot = OUTPORT
    ct_table, rules_table = "acl_out_ct", "acl_out"
    tables = (
        TableDecl("acl_out_ct", frozenset({"reg13", "reg15", "eth_type"}), successors=("acl_out",),
                  miss="@next", doc="IP to a guarded port -> conntrack in the port's zone"),
        TableDecl("acl_out", _RULE_FIELDS | {"reg15"}, successors=("@next",),
                  doc="to-port rules by priority, stateful"),
    )
