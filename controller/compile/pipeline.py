"""The pipeline, declared once: which layers run, in which order.

Adding a layer is one module in controller/layers/ plus one line here. Table numbers
are positions in the resulting order; nothing else writes a table number.
"""
from __future__ import annotations

from dataplane.match_action import Match, Pipeline, Table
from controller.layers.acl import FromPortAcl, ToPortAcl
from controller.layers.activation import Activation
from controller.layers.arp_responder import ArpResponder
from controller.layers.base import MISS_PRIORITY, Emitter, Layer
from controller.layers.classify import Classify
from controller.layers.delivery import Delivery
from controller.layers.encap import Encap
from controller.layers.gateway import Gateway
from controller.layers.lb import LbEgress, LbIngress, LbMonitor
from controller.layers.netpol import EgressPolicy, IngressPolicy
from controller.layers.port_security import PortSecurity
from controller.layers.qos import Qos
from controller.layers.routing import Routing
from controller.layers.services import Services
from controller.layers.switching import Switching

# Ingress: a packet from a workload (or from the tunnel, entering at TUNNEL_ENTRY).
# The ACLs and the network policies are separate layers a packet must pass both of; the
# policies judge a load-balanced connection by its backend (after lb, before lb_reply).
INGRESS: tuple[Layer, ...] = (Classify(), Gateway(), PortSecurity(), Services(), LbMonitor(), Qos(), FromPortAcl(),
                              LbIngress(),
                              EgressPolicy(), ArpResponder(), Switching(), Routing(), Encap())
# Egress: towards a workload on this host.
EGRESS: tuple[Layer, ...] = (IngressPolicy(), LbEgress(), ToPortAcl(), Delivery())
# Side tables a packet reaches only by a goto from another layer: a migrating port's
# pending interface (classify -> activation).
SIDE: tuple[Layer, ...] = (Activation(),)
# Packets that arrive over VXLAN continue at this layer's first table.
TUNNEL_ENTRY = "switching"

LAYERS: tuple[Layer, ...] = INGRESS + EGRESS + SIDE


def _build():
    ids = [layer.id for layer in LAYERS]
    if len(set(ids)) != len(ids) or 0 in ids:
        raise ValueError(f"layer ids must be unique and non-zero: {ids}")
    order = [(layer, d) for layer in LAYERS for d in layer.tables]
    first = {layer.name: layer.tables[0].name for layer in LAYERS}
    symbols_of: dict[str, dict[str, str]] = {}
    for i, layer in enumerate(LAYERS):
        nxt = LAYERS[i + 1].tables[0].name if i + 1 < len(LAYERS) else None
        sym = {"@egress": first[EGRESS[0].name], "@tunnel_entry": first[TUNNEL_ENTRY]}
        if nxt is not None and layer is not INGRESS[-1] and layer is not EGRESS[-1] and layer not in SIDE:
            # ingress never falls into egress, nor egress into a side table
            sym["@next"] = nxt
        symbols_of[layer.name] = sym
    tables = []
    for layer, d in order:
        sym = symbols_of[layer.name]
        succ = []
        for s in d.successors:
            if s.startswith("@"):
                if s not in sym:
                    raise ValueError(f"table {d.name}: {s} means nothing for layer {layer.name}")
                s = sym[s]
            succ.append(s)
        miss = d.miss
        if miss.startswith("@"):
            if miss not in sym:
                raise ValueError(f"table {d.name}: miss {miss} means nothing for layer {layer.name}")
            miss = sym[miss]
        tables.append(Table(d.name, frozenset(d.fields), tuple(dict.fromkeys(succ)), miss,
                            layer=layer.name))
    return Pipeline(tables), symbols_of


PIPELINE, SYMBOLS = _build()
LAYER_BY_ID = {layer.id: layer for layer in LAYERS}


def emitter(layer: Layer, sink, tenant_id: int = 0) -> Emitter:
    return Emitter(layer, PIPELINE, SYMBOLS[layer.name], sink, tenant_id)


def miss_flows(sink_host: str, sink: dict) -> None:
    """Explicit priority-0 flows for every table's miss behaviour (drop or next), so a
    dropped packet always hits a flow whose cookie names the table's layer."""
    for layer in LAYERS:
        out = emitter(layer, sink)
        for d in layer.tables:
            t: Table = PIPELINE[d.name]
            actions = (out.goto(t.miss),) if t.miss != "drop" else ()
            what = "drop" if t.miss == "drop" else f"continue at {t.miss}"
            out.to((sink_host,), out.flow(d.name, MISS_PRIORITY, Match(), actions,
                                          rule=f"{d.name} miss: {what}"))
