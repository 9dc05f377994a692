"""What a tenant's network policies select, in logical terms (ports and addresses).

Kubernetes NetworkPolicy v1 semantics, a switch playing the namespace: a policy's
podSelector picks ports on its `namespace` switch (every switch of the tenant without
one); a peer's podSelector alone picks ports where the policy picks them, a
namespaceSelector alone every port on the switches it picks, both together the ports
of the one on the switches of the other; an ipBlock is addresses (cidr minus except).
The compiler (controller.layers.netpol) and verify's expectations both read it here.
"""
from __future__ import annotations

from topology.model import NetworkPolicy, PolicyPeer, Tenant

KINDS = ("Ingress", "Egress")


def _switch_ok(t: Tenant, namespace: str | None, switch: str) -> bool:
    return namespace is None or namespace == switch


def selected(t: Tenant, pol: NetworkPolicy) -> list[str]:
    """The ports `pol` applies to (its podSelector, in its namespace)."""
    return [p.name for p in t.ports if _switch_ok(t, pol.namespace, p.switch) and pol.selector.selects(p.labels)]


def peer_ports(t: Tenant, pol: NetworkPolicy, peer: PolicyPeer) -> list[str]:
    """The tenant ports a selector peer picks ([] for an ipBlock)."""
    if peer.cidr is not None:
        return []
    if peer.namespace is not None:
        switches = {s.name for s in t.switches if peer.namespace.selects(s.labels)}
    else:
        switches = {s.name for s in t.switches if _switch_ok(t, pol.namespace, s.name)}
    return [p.name for p in t.ports if p.switch in switches
            and (peer.pod is None or peer.pod.selects(p.labels))]


def in_block(peer: PolicyPeer, addr) -> bool:
    return (peer.cidr is not None and addr.version == peer.cidr.version and addr in peer.cidr
            and not any(addr in e for e in peer.except_))


def isolated(t: Tenant) -> dict[str, dict[str, list[NetworkPolicy]]]:
    """kind ("Ingress"/"Egress") -> port -> the policies of that kind selecting it.
    A port missing from a kind's map is not isolated for that direction."""
    out: dict[str, dict[str, list]] = {k: {} for k in KINDS}
    for pol in t.network_policies:
        sel = selected(t, pol)
        for kind in pol.types:
            for name in sel:
                out[kind].setdefault(name, []).append(pol)
    return out


def addresses(p) -> list:
    return [p.ip] + ([p.ip6] if p.ip6 is not None else [])


def allows(t: Tenant, kind: str, me: str, other_addr, proto: str, dport: int) -> bool:
    """Would the policies selecting port `me` for `kind` let a new connection with
    `other_addr` on the far side (the source for Ingress, the destination for Egress),
    protocol `proto` ("tcp"/"udp"/other) to `dport` through? True when `me` is not
    isolated for `kind`."""
    pols = isolated(t)[kind].get(me)
    if not pols:
        return True
    by_addr = {a: p.name for p in t.ports for a in addresses(p)}
    other = by_addr.get(other_addr)
    for pol in pols:
        for rule in (pol.ingress if kind == "Ingress" else pol.egress):
            if rule.ports and not any(pr == proto and (lo is None or lo <= dport <= hi)
                                      for pr, lo, hi in rule.ports):
                continue
            if not rule.peers:
                return True
            for peer in rule.peers:
                if peer.cidr is not None:
                    if in_block(peer, other_addr):
                        return True
                elif other is not None and other in peer_ports(t, pol, peer):
                    return True
    return False
