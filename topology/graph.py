"""The tenant's logical graph: switches, ports and the hosts they are placed on.

The compiler asks it one question: which hosts must carry a logical switch's flows
(its *span*): every host with a port on that switch. Routers (a later layer) join
switches, and the span then grows to every host of the connected switches; the
question and its callers stay the same.
"""
from __future__ import annotations

import networkx as nx

from topology.model import Tenant


def logical_graph(t: Tenant) -> nx.Graph:
    g = nx.Graph()
    for s in t.switches:
        g.add_node(("switch", s.name))
    for p in t.ports:
        g.add_edge(("port", p.name), ("switch", p.switch))
        g.add_edge(("port", p.name), ("host", p.host))
    return g


def switch_spans(t: Tenant) -> dict[str, frozenset[str]]:
    """switch name -> hosts that carry its flows."""
    spans: dict[str, set[str]] = {s.name: set() for s in t.switches}
    for p in t.ports:
        spans[p.switch].add(p.host)
    return {k: frozenset(v) for k, v in spans.items()}
