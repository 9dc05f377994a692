"""Addresses for ports made by the API (`nvctl port add`, the CNI plugin): from the
switch's CIDR, never its network or broadcast address, a router port's address, the
DHCP/DNS service address, a load balancer's VIP, or an address a port has. Pure: the
tenant's spec is the only record of what is used, so the controller's mutex (one change
at a time) is all that keeps two concurrent requests from getting the same address.
"""
from __future__ import annotations

import ipaddress

from topology.model import Tenant, service_address


class AddressesExhausted(ValueError):
    """The switch has no address left."""


def used_addresses(t: Tenant, switch: str) -> set:
    """Every IPv4 and IPv6 address of the switch that is taken or reserved."""
    sw = t.switch(switch)
    used = {sw.cidr.network_address, sw.cidr.broadcast_address}
    used |= {p.ip for p in t.ports if p.switch == switch}
    used |= {p.ip6 for p in t.ports if p.switch == switch and p.ip6 is not None}
    rr = t.router_of(switch)
    if rr is not None:
        used.add(rr[1].ip)
        if rr[1].ip6 is not None:
            used.add(rr[1].ip6)
    elif sw.dhcp:
        used.add(service_address(sw.cidr))
    used |= {lb.vip for lb in t.load_balancers if lb.vip in sw.cidr}
    if sw.cidr6 is not None:
        used.add(sw.cidr6.network_address)
    return used


def next_ipv4(t: Tenant, switch: str, exclude=()) -> ipaddress.IPv4Address:
    """The lowest free IPv4 address of the switch (and not in `exclude`: addresses held
    for a runtime that has not made its port yet)."""
    sw = t.switch(switch)
    used = used_addresses(t, switch) | {ipaddress.ip_address(a) for a in exclude}
    for ip in sw.cidr.hosts():
        if ip not in used:
            return ip
    raise AddressesExhausted(f"switch {switch} ({sw.cidr}) has no free address: "
                             f"{sw.cidr.num_addresses - 2} host addresses, all taken or reserved")
