"""Names of the things the allocator numbers on a tenant's behalf without the tenant
naming them: a router's port on a switch, its transit path to the gateway, the
conntrack zones of its NAT and of the tenant's load balancers.

They live in the allocator's tables next to the tenant's own names (switches, ports),
so each has a ':' in it, which no name in a tenant's spec may have. The allocator
hands them numbers and the layers look those numbers up by the same names, so both
take them from here.
"""
from __future__ import annotations


def router_port_name(router: str, switch: str) -> str:
    """The port_key name of a router's port on a switch (port names cannot contain ':')."""
    return f"{router}:{switch}"


def transit_name(router: str) -> str:
    """The vni name of a router's path to its gateway (names cannot contain ':')."""
    return f"{router}:external"


def lb_zone_name(port: str = "") -> str:
    """The zone where load-balanced connections are translated ("" for the tenant's)."""
    return f"lb:{port}"


def router_zone_name(router: str) -> str:
    """The zone name of a router's NAT connections on the gateway host."""
    return f"router:{router}"


def pending_name(port: str) -> str:
    """The ofport name of a port's second binding while it migrates: its number on the
    host it is moving to, held until the guest announces itself there (see
    controller.layers.activation)."""
    return f"pending:{port}"


def policy_zone_name(port: str) -> str:
    """The conntrack zone of a port's network-policy layer (its own state, apart from
    the ACL layer's, so each layer remembers only the connections it allowed)."""
    return f"policy:{port}"
