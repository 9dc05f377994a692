"""The views the server derives from its inputs and keeps, declared once.

In the spirit of OVN's incremental-processing engine nodes: each view says what it is
computed from and which of Core's methods bring it up to date (recompute or invalidate).
Someone adding an input (a new field of a host record, a new kind of intent) reads down
the `inputs` column to find every view that must follow it, and makes the change through
the methods in `kept_by`, never by writing the view directly.

The inputs are the store's records: host records (`hosts`) and tenants' intent with their
allocations (`tenants`); what switches report (`switches`); and what the provider's
routers announce over BGP (`bgp`).
"""
from __future__ import annotations

from dataclasses import dataclass

INPUTS = ("hosts", "tenants", "switches", "bgp")


@dataclass(frozen=True)
class View:
    name: str
    attr: str  # where Core keeps it (dotted for a part of something else)
    inputs: tuple[str, ...]  # base inputs or other views
    kept_by: tuple[str, ...]  # Core's methods that recompute or invalidate it
    what: str


VIEWS = (
    View("placement", "_placement_cache", ("hosts",), ("_set_host", "_placement"),
         "every host as the compiler sees it (PA, gateway port, MTU); dropped when a host record changes"),
    View("infra", "infra", ("placement",), ("_recompile_all",),
         "each host's own flows (classify, tunnel, gateway), recompiled when the placement changes"),
    View("tenant_flows", "tenants", ("tenants", "placement"),
         ("_commit", "_follow_tenant", "_recompile_all", "_replace_entry", "_bind"),
         "each tenant's compiled flows per host: only the changed tenant is recompiled, all on a host change; "
         "a rebinding (_bind: change.Rebinding) takes only the rebound host's flows of the compile"),
    View("desired", "desired", ("infra", "tenant_flows"), ("_commit", "_follow_tenant", "_recompile_all", "_bind"),
         "per host, every flow by identity: swapped one tenant at a time (DesiredState.swap), rebuilt on a host change"),
    View("in_use", "used", ("tenants",), ("_replace_entry",),
         "every number and provider address any tenant holds, for the allocator"),
    View("tenant_names", "_tid_name", ("tenants",), ("_replace_entry",),
         "tenant id -> name, for packet-ins and counters"),
    View("punt_specs", "punt", ("tenants", "placement"), ("_replace_entry",),
         "what DHCP, DNS and path-MTU answers need of each tenant"),
    View("cookie_index", "_cookie_index", ("tenant_flows",), ("_cookies", "_replace_entry"),
         "{cookie: flow} per tenant and host for counters; rebuilt when the tenant's flow list is a new one"),
    View("log_index", "_log_index", ("tenant_flows",), ("_log_acl", "_replace_entry"),
         "{cookie: flow} of logged ACL rules per tenant and host; rebuilt like cookie_index"),
    View("installed", "state", ("switches", "desired"), ("reconcile", "audit", "switch_connected", "switch_disconnected"),
         "per host, the flows the switch was last read or told to hold (HostState.installed); forgotten on reconnect"),
    View("interfaces", "watch.interfaces", ("switches",), ("observe_interfaces",),
         "per host, the interfaces on its br-int (ofport, name, iface-id): read from its OVSDB on port events, "
         "or reported by the host; a port's allocated ofport (an input: tenants) follows its interface "
         "through _bind's Rebinding change"),
    View("change_proof", "guard", ("placement", "tenants", "desired"), ("_commit",),
         "verify before install: one proof over the desired flows, updated by each tenant change it lets "
         "through; rebuilt on its next check when the desired state moved by another path (its generation)"),
    View("proved", "proved", ("change_proof",), ("_commit",),
         "the guard's entry for the change being committed, read by the change's report"),
    View("lb_health", "health", ("tenants", "switches"), ("health_tick", "apply_health"),
         "each health-checked load-balancer backend's state (up, down, unknown) from its probes' answers; "
         "what is down is compiled into the tenant through a HealthChange (never stored)"),
    View("bgp_routes", "bgp", ("bgp", "tenants", "placement", "switches"), ("routes_tick", "apply_learned"),
         "what each BGP speaker announces (every provider address, next hop: the host that carries it, "
         "as BFD says) and the routes tenant routers import, compiled in through a RoutesChange (never stored)"),
    View("verified", "verified", ("switches", "desired"), ("verify", "_replace_entry"),
         "the last verify result per tenant, shown by the web view and metrics; dropped with its tenant"),
)


def problems(core_cls) -> list[str]:
    """What is wrong with the table against Core itself: a view kept by a method Core
    lacks, an input that is neither a base input nor a view, a cycle."""
    names = {v.name for v in VIEWS}
    out = []
    for v in VIEWS:
        for m in v.kept_by:
            if not callable(getattr(core_cls, m, None)):
                out.append(f"{v.name}: kept by {m}, which Core does not have")
        for i in v.inputs:
            if i not in INPUTS and i not in names:
                out.append(f"{v.name}: input {i} is neither a base input nor a view")
    order, seen = {}, set()

    def depth(name, path=()):
        if name in path:
            out.append(f"cycle: {' -> '.join(path + (name,))}")
            return 0
        if name in order:
            return order[name]
        v = next((x for x in VIEWS if x.name == name), None)
        d = 0 if v is None else 1 + max((depth(i, path + (name,)) for i in v.inputs), default=0)
        order[name] = d
        return d
    for v in VIEWS:
        if v.name not in seen:
            seen.add(v.name)
            depth(v.name)
    return out
