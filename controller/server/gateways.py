"""What the controller knows of gateway groups: which gateway is alive and active, and
the announcement when a gateway takes over.

The switches choose the active gateway themselves (controller.layers.gateway); the
controller only watches. Each switch reports its ports' OpenFlow LIVE bit, which for a
BFD tunnel port (controller.server.peers) follows the BFD session toward that peer, so
the controller sees what every fast-failover group sees, with no extra reads. From it:

- `port_liveness_changed`: a host's BFD session toward a peer came up or went down. If
  that makes the host the active gateway of a router, it announces the router's
  external address (and the floating IPs that go through the gateway) with gratuitous
  ARP out of its external port, so the provider's switches learn at once where the MAC
  is now. (Outbound traffic through the new gateway teaches them too; the announcement
  covers an address that only receives.)
- `gateway_status`: per router, its gateways in order, each alive or not (as the other
  hosts' BFD sessions see it) and which one is active; `tenant show` shows it.
- `liveness`: per host, the LIVE bit of its ports, for `trace` to follow the bucket a
  fast-failover group takes now.
"""
from __future__ import annotations

import logging
import threading

from controller.layers.gateway import distributed_host, external_mac, gateway_hosts
from controller.server.announce import garp
from controller.server.peers import assign_peer_port
from controller.spaces.ids import FIRST_PEER_TUNNEL_OFPORT, MAX_PEER_TUNNEL_OFPORT
from controller.state.store import HostRecord

LOG = logging.getLogger("nvctl.gateways")
FENCE_AFTER = 1.0  # seconds after losing a switch: its peers' BFD (about 0.3 s) has decided by then


class GatewaysMixin:
    def fence_later(self, host: str) -> None:
        """The controller lost `host`'s switch. If its peers' BFD sessions see it down too
        (its ovs-vswitchd or machine died, not only our connection), switch its own BFD
        off, so that when it comes back its peers do not choose it before its flows are
        in (switch_connected turns it on after the sync). A switch that still forwards
        (peers see it up) is left alone: fencing it would split its gateways."""
        def check():
            st = self.state.get(host)
            if st is None or st.session is not None or not self.leading():
                return
            if self._alive(host, self.liveness(), self._placement()):
                LOG.info("host %s: disconnected, but its peers' BFD sees it forwarding: left alone", host)
                return
            LOG.info("host %s: disconnected and down for its peers: its BFD off until its flows are back", host)
            self.ensure_peer_tunnels([host])
        t = threading.Timer(FENCE_AFTER, check)
        t.daemon = True
        t.start()

    def number_hosts(self) -> None:
        """Give a peer-tunnel number to hosts stored without one (registered by an older
        version), in one change: store, recompile, reconcile. Leader only."""
        if not self.leading():
            return
        with self.mutex:
            missing = [rec for rec in self.hosts.values() if not rec.info.get("peer_port")]
            if not missing:
                return
            for rec in missing:
                new = HostRecord(rec.name, rec.pa, rec.dpid, assign_peer_port(rec.info, rec.name, self.hosts))
                self.store.put_host(new)
                self._set_host(new)
            self._recompile_all()
        LOG.info("peer-tunnel numbers given to %s", ", ".join(r.name for r in missing))
        self.reconcile_many(self.hosts)
        self.ensure_peer_tunnels(list(self.hosts))

    def liveness(self) -> dict:
        """host -> {ofport: live} of every connected switch."""
        return {h: st.session.live() for h, st in self.state.items()
                if st.session is not None and hasattr(st.session, "live")}

    def bfd_view(self, host: str, live: dict | None = None) -> dict:
        """{peer: up} of `host`'s BFD sessions toward the possible gateways, as its
        switch reports them (empty while it is not connected)."""
        live = self.liveness() if live is None else live
        ports = live.get(host)
        if not ports:
            return {}
        return {h.name: ports[h.peer_port] for h in self._placement().values()
                if h.name != host and h.peer_port in ports}

    def _alive(self, host: str, live: dict, placement: dict) -> bool | None:
        """Is gateway `host` alive, as the other hosts' BFD sessions toward it say (any
        one up: yes)? Without such a session: whether its switch is connected."""
        port = placement[host].peer_port if host in placement else None
        seen = [ports[port] for h, ports in live.items() if h != host and port is not None and port in ports]
        if seen:
            return any(seen)
        st = self.state.get(host)
        return st is not None and st.session is not None

    def active_gateway(self, gws, live: dict, placement: dict) -> str | None:
        """The first of gateways `gws` that is alive: the one the switches choose."""
        return next((g for g in gws if self._alive(g, live, placement)), None)

    def gateway_status(self, t) -> list[dict]:
        """Per router with an external address: its gateways, alive and active."""
        placement = self._placement()
        live = self.liveness()
        out = []
        for r in t.routers:
            if r.external_ip is None:
                continue
            gws = gateway_hosts(r, placement)
            alive = {g: self._alive(g, live, placement) for g in gws}
            active = self.active_gateway(gws, live, placement)
            fips = []
            for n in t.nat:
                if n.type == "floating-ip" and n.router == r.name:
                    h = distributed_host(t, n, placement)
                    fips.append({"ip": str(n.external_ip), "port": n.port,
                                 "host": h or active, "distributed": h is not None})
            out.append({"router": r.name, "externalIp": str(r.external_ip),
                        "gateways": [{"host": g, "priority": i + 1, "alive": alive[g], "active": g == active}
                                     for i, g in enumerate(gws)],
                        "requested": list(r.gateways), "active": active, "floatingIps": fips})
        return out

    def port_liveness_changed(self, session, port: int, live: bool) -> None:
        """A host's BFD session toward a peer came up or went down (the OpenFlow app's
        thread: no I/O but packet-outs). Announce what it now carries as the active gateway."""
        host = self.host_of_dpid(session.dpid)
        if host is None or not FIRST_PEER_TUNNEL_OFPORT <= port <= MAX_PEER_TUNNEL_OFPORT:
            return
        placement = self._placement()
        peer = next((h.name for h in placement.values() if h.peer_port == port), None)
        LOG.info("host %s: BFD toward %s is %s", host, peer or f"port {port}", "up" if live else "down")
        me = placement.get(host)
        self.routes_changed()  # BGP's next hops follow the active gateways (routes.py)
        if not self.leading() or me is None or not me.external:
            return
        ports = session.live()
        sent = 0
        for name, e in list(self.tenants.items()):
            t = e.tenant
            for r in t.routers:
                gws = gateway_hosts(r, placement)
                if host not in gws:
                    continue
                before = gws[:gws.index(host)]
                if any(ports.get(placement[g].peer_port, True) for g in before):
                    continue  # a gateway before it is alive: it stays quiet
                mac = external_mac(r)
                addrs = [str(r.external_ip)] + [str(n.external_ip) for n in t.nat
                                                if n.type == "floating-ip" and n.router == r.name
                                                and distributed_host(t, n, placement) is None]
                for ip in addrs:
                    try:
                        session.packet_out(me.external[0], garp(mac, ip))
                        sent += 1
                    except Exception as ex:  # noqa: BLE001 - a lost announcement only delays learning
                        LOG.warning("gratuitous ARP for %s on %s: %s", ip, host, ex)
        if sent:
            LOG.info("host %s: active gateway, %d addresses announced", host, sent)
