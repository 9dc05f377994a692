"""The tenant's logical graph: switches joined by routers, and the hosts of their ports.

The compiler asks it one question: which hosts must carry a logical switch's flows
(its *span*): every host with a port on that switch. Routers (a later layer) join
switches, and the span then grows to every host of the connected switches; the
question and its callers stay the same.
"""
from __future__ import annotations

import networkx as nx

from topology.model import Tenant


def _per_tenant(fn):
    """`fn(t)` kept for the last few tenant values (a change asks several times about
    the same one: its MTU check, its compile, its workloads). Tenants are immutable, so
    the answer is too; callers must not change it."""
    cache: dict = {}  # id(tenant) -> (tenant, answer)

    def cached(t: Tenant):
        got = cache.get(id(t))
        if got is not None and got[0] is t:
            return got[1]
        out = fn(t)
        cache[id(t)] = (t, out)
        while len(cache) > 8:
            del cache[next(iter(cache))]
        return out
    cached.__doc__, cached.__name__ = fn.__doc__, fn.__name__
    return cached


@_per_tenant
def switch_members(t: Tenant) -> dict[str, frozenset[str]]:
    """switch name -> hosts with a port on it (where its broadcast goes)."""
    members: dict[str, set[str]] = {s.name: set() for s in t.switches}
    for p in t.ports:
        members[p.switch].add(p.host)
    return {k: frozenset(v) for k, v in members.items()}


@_per_tenant
def switch_spans(t: Tenant) -> dict[str, frozenset[str]]:
    """switch name -> hosts that may send to it: the members of every switch routed to
    it (its connected component through routers; hosts are not part of the path)."""
    members = switch_members(t)
    if not t.routers:
        return members
    g = nx.Graph()
    g.add_nodes_from(s.name for s in t.switches)
    for r in t.routers:
        for a, b in zip(r.ports, r.ports[1:]):
            g.add_edge(a.switch, b.switch)
    spans: dict[str, frozenset[str]] = {}
    for comp in nx.connected_components(g):
        hosts = frozenset().union(*(members[s] for s in comp))
        for s in comp:
            spans[s] = hosts
    return spans
