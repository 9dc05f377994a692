"""Gratuitous ARP on the provider network for addresses that moved to another host.

A distributed floating IP is answered on its port's host with a MAC of its own
(controller.layers.gateway): when the port moves, the provider's switches still send
that MAC's frames to the old host until something tells them otherwise. As OVN does,
the new host announces it: a gratuitous ARP (a request for the address, from the
address, broadcast) out of its external port, sent by the controller once the new
host's flows are in. Frames go by OpenFlow packet-out; nothing else changes.
"""
from __future__ import annotations

import ipaddress
import logging

from controller.layers.gateway import distributed_host, external_mac, floating_mac

LOG = logging.getLogger("nvctl.announce")
ETH_TYPE_ARP = 0x0806
REPEAT = 2  # a lost frame should not leave the address dark until the next change


def garp(mac: str, ip: str) -> bytes:
    """A gratuitous ARP request: who-has ip tell ip, from mac, to everyone."""
    m = bytes.fromhex(mac.replace(":", ""))
    a = ipaddress.IPv4Address(ip).packed
    return (b"\xff" * 6 + m + ETH_TYPE_ARP.to_bytes(2, "big")
            + bytes.fromhex("0001080006040001") + m + a + b"\x00" * 6 + a)


def _distributed(t, hosts) -> dict:
    """floating IP -> (host, external ofport, MAC) of a tenant's distributed floating IPs."""
    out = {}
    if t is None:
        return out
    for n in t.nat:
        if n.type != "floating-ip":
            continue
        h = distributed_host(t, n, hosts)
        if h is not None:
            out[str(n.external_ip)] = (h, hosts[h].external[0], floating_mac(n))
    return out


def moved(old, new, hosts) -> list[tuple[str, int, str, str]]:
    """(host, ofport, MAC, IP) to announce: new tenant `new`'s distributed floating IPs
    that were elsewhere (or nowhere) in `old`."""
    before, after = _distributed(old, hosts), _distributed(new, hosts)
    return [(h, port, mac, ip) for ip, (h, port, mac) in sorted(after.items()) if before.get(ip) != (h, port, mac)]


def centralized(old, new, hosts) -> list[tuple[str, str]]:
    """(router, IP) of new tenant `new`'s floating IPs that were distributed in `old` and
    now go through their router's gateway (the port moved to a host without the provider
    network): the provider must learn the router's MAC for them again."""
    before, after = _distributed(old, hosts), _distributed(new, hosts)
    return [(n.router, str(n.external_ip)) for n in (new.nat if new is not None else ())
            if n.type == "floating-ip" and str(n.external_ip) in before and str(n.external_ip) not in after]


def announce(core, old, new) -> list[tuple[str, str]]:
    """Send the gratuitous ARPs for what moved between tenants `old` and `new`; returns
    [(host, IP)] sent (a host not connected is skipped: its sync is the next chance)."""
    if not core.leading():
        return []
    placement = core._placement()
    todo = moved(old, new, placement)
    back = centralized(old, new, placement)
    if back:  # from the router's active gateway, with the router's MAC
        status = {g["router"]: g for g in core.gateway_status(new)}
        for router, ip in back:
            active = (status.get(router) or {}).get("active")
            if active is not None and placement[active].external:
                todo.append((active, placement[active].external[0], external_mac(new.router(router)), ip))
    sent = []
    for host, port, mac, ip in todo:
        st = core.state.get(host)
        if st is None or st.session is None:
            continue
        try:
            for _ in range(REPEAT):
                st.session.packet_out(port, garp(mac, ip))
            sent.append((host, ip))
        except Exception as e:  # noqa: BLE001 - a lost announcement is a delay, not a failure of the change
            LOG.warning("gratuitous ARP for %s on %s: %s", ip, host, e)
    return sent
