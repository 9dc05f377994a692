"""Routes from routing protocols: the platform's BGP sessions with the provider's routers.

The provider owns its routing, so BGP is configured on the controller (`--bgp FILE`, see
`load_config`), per provider network: the platform's AS and the provider's routers to
peer with. The leader runs one speaker per network (controller.bgp.speaker); a follower
runs none.

**What the platform announces.** Every provider address it carries on that network, as
a /32: a router's external address, and its floating IPs. The next hop is the provider-
network address of the host that carries it now (the host's `external.address`, which
only that host answers ARP for: controller.layers.gateway), so the provider's routers
send the traffic in where the flows for it are:

- a router's address, and the floating IPs that go through its gateway: the active
  gateway, as the BFD sessions say (controller.server.gateways); when it fails over, the
  announcement moves with it;
- a distributed floating IP: its port's host; it moves with the port.

What is announced is recomputed whenever something that decides it changes (a tenant
change rolled out, a BFD session up or down, a host) and once a second regardless; the
speaker sends only the difference. An address whose host has no provider-network
address is not announced (it is still answered by ARP on the link, as before BGP).

**What the platform learns.** The peers' routes. A router takes in those its
`external.importRoutes` allow (`learned_for`), and only if:

- the route does not cover an address the platform carries (another tenant's floating IP,
  say): no tenant can learn a route that takes another tenant's address elsewhere;
- its next hop is the provider network's gateway (our way out sends there, as for the
  default route).

Learned routes are controller state, like a load balancer's backends found down: they
are compiled into the tenant by every change (intent.IntentMixin._commit asks
`with_learned`), a `RoutesChange` recompiles the tenants whose routes moved, and they
are not in the store. `nvctl verify` sees them as it sees every compiled route.

**Restarts.** Our speaker advertises graceful restart: when the controller restarts (or
a new leader takes over), the provider's routers keep our routes as stale until the new
session's End-of-RIB, so nothing the data plane still carries is withdrawn. On our side
the controller keeps what it learned in STATE_DIR/bgp-learned.json, compiles tenants
with those routes at start (the switches keep their flows: nothing is sent to them), and
uses them until a session of that network is back and its peer has sent End-of-RIB
(or CACHE_HOLD passes).
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import os
import threading
import time

from controller.compile.allocator import provider_addresses
from controller.layers.gateway import distributed_host, gateway_hosts
from topology.model import LearnedRoute, Tenant

LOG = logging.getLogger("nvctl.routes")
TICK = 1.0  # seconds between recomputations when nothing asked for one
RETRY = 5.0  # a routes change that failed is tried again after this long
CACHE_HOLD = 120.0  # seconds the routes learned before a restart stand in for a session not back yet
EOR_GRACE = 3.0  # a session up this long counts as complete when its peer sends no End-of-RIB
CONFIG_KEYS = {"asn", "routerId", "holdTime", "peers"}
PEER_KEYS = {"address", "asn", "port"}


def load_config(doc) -> dict:
    """`--bgp FILE`'s document, checked: {network: {asn, routerId, holdTime, peers: [{address,
    asn, port}]}}. The file is YAML:

        bgp:
          external:              # the provider network's name (`nvctl hosts`: PROVIDER)
            asn: 65000           # the platform's AS on it
            routerId: 203.0.113.250   # optional: else the first peer's local address
            peers:
              - {address: 203.0.113.1, asn: 65001}

    Raises ValueError naming the field and the reason."""
    if not isinstance(doc, dict) or not isinstance(doc.get("bgp"), dict) or not doc["bgp"]:
        raise ValueError("bgp: must map provider network names to {asn, peers}")
    out = {}
    for net, c in doc["bgp"].items():
        path = f"bgp.{net}"
        if not isinstance(c, dict):
            raise ValueError(f"{path}: must be a mapping with asn and peers")
        extra = set(c) - CONFIG_KEYS
        if extra:
            raise ValueError(f"{path}: unknown key(s) {', '.join(sorted(extra))} (known: {', '.join(sorted(CONFIG_KEYS))})")
        asn = _asn(c.get("asn"), f"{path}.asn")
        rid = c.get("routerId")
        if rid is not None:
            _ipv4(rid, f"{path}.routerId")
        hold = c.get("holdTime", 9)
        if not isinstance(hold, int) or not (hold == 0 or 3 <= hold <= 65535):
            raise ValueError(f"{path}.holdTime: {hold!r} is not 0 or 3..65535 seconds")
        peers = c.get("peers")
        if not isinstance(peers, list) or not peers:
            raise ValueError(f"{path}.peers: must list the provider's routers ({{address, asn}})")
        ps = []
        for i, p in enumerate(peers):
            pp = f"{path}.peers[{i}]"
            if not isinstance(p, dict) or set(p) - PEER_KEYS or "address" not in p or "asn" not in p:
                raise ValueError(f"{pp}: must be {{address, asn}} (and optionally port)")
            port = p.get("port", 179)
            if not isinstance(port, int) or not 1 <= port <= 65535:
                raise ValueError(f"{pp}.port: {port!r} is not a TCP port")
            ps.append({"address": _ipv4(p["address"], f"{pp}.address"), "asn": _asn(p["asn"], f"{pp}.asn"),
                       "port": port})
        if len({p["address"] for p in ps}) != len(ps):
            raise ValueError(f"{path}.peers: a router is listed twice")
        out[str(net)] = {"asn": asn, "routerId": rid, "holdTime": hold, "peers": ps}
    return out


def _asn(v, path: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 4294967294:
        raise ValueError(f"{path}: {v!r} is not an AS number (1..4294967294)")
    return v


def _ipv4(v, path: str) -> str:
    try:
        return str(ipaddress.IPv4Address(str(v)))
    except ValueError:
        raise ValueError(f"{path}: {v!r} is not an IPv4 address") from None


class Bgp:
    """The speakers and what they were last told; the Core's `bgp`."""

    def __init__(self):
        self.config: dict = {}  # network -> load_config's entry
        self.speakers: dict = {}  # network -> controller.bgp.speaker.Speaker
        self.announced: dict = {}  # network -> {prefix: next hop} last handed to the speaker
        self.wake = threading.Event()
        self.running = False
        self.retry: dict = {}  # tenant -> not before (clock)
        self.cache: dict = {}  # network -> [Learned] learned before a restart (bgp-learned.json)
        self.cache_until = 0.0  # clock: after this the cache no longer stands in
        self.cache_path: str | None = None
        self.saved: dict | None = None  # what the cache file holds


class RoutesMixin:
    def start_bgp(self, config: dict | None = None) -> None:
        """Start a speaker per configured provider network (the leader, or a standalone
        controller, at start). `config`: load_config's result (None: the one kept)."""
        from controller.bgp.speaker import PeerConfig, Speaker
        b = self.bgp
        if config is not None:
            b.config = config
        if b.running or not b.config:
            return
        for net, c in b.config.items():
            peers = [PeerConfig(p["address"], p["asn"], p["port"]) for p in c["peers"]]
            rid = c["routerId"] or self._router_id(net)
            sp = Speaker(c["asn"], rid, peers, on_learned=self.routes_changed, hold_time=c["holdTime"],
                         name=f"bgp-{net}")
            b.speakers[net] = sp
            b.announced[net] = None
            sp.start()
            LOG.info("bgp %s: AS %d, router id %s, peers %s", net, c["asn"], rid,
                     ", ".join(f"{p.address} (AS {p.asn})" for p in peers))
        b.running = True
        threading.Thread(target=self._routes_loop, name="bgp-routes", daemon=True).start()

    def stop_bgp(self, graceful: bool = True) -> None:
        """Stop every speaker: `graceful` (a restart, a new leader coming) closes the
        sessions as a crash would, so the peers keep our routes under graceful restart."""
        b = self.bgp
        b.running = False
        b.wake.set()
        for sp in b.speakers.values():
            sp.stop(graceful=graceful)
        b.speakers.clear()

    def _router_id(self, net: str) -> str:
        """A router id when none is configured: the first peer's address with its last
        octet's low bit flipped would collide in a lab; use a fixed private id from the
        controller's name instead (stable across restarts)."""
        import zlib
        n = zlib.crc32(f"{getattr(self, 'name', 'nvctl')}/{net}".encode())
        return str(ipaddress.IPv4Address((10 << 24) | (n & 0xFFFFFF)))

    def routes_changed(self) -> None:
        """Something that decides announcements or learned routes changed: recompute soon."""
        self.bgp.wake.set()

    def _routes_loop(self) -> None:
        b = self.bgp
        while b.running:
            b.wake.wait(TICK)
            b.wake.clear()
            if not b.running:
                return
            try:
                self.routes_tick()
            except Exception:  # noqa: BLE001 - a tick's trouble must not end routing
                LOG.exception("bgp: routes tick failed")

    def routes_tick(self) -> list[str]:
        """Hand each speaker what to announce; recompile the tenants whose learned routes
        moved. Returns those tenants' names."""
        b = self.bgp
        if not self.leading():
            return []
        wanted = self.announcements()
        for net, sp in list(b.speakers.items()):
            want = wanted.get(net, {})
            if want != b.announced.get(net):
                sp.announce(want)
                b.announced[net] = want
        return self.apply_learned()

    # -- what we announce -------------------------------------------------------------

    def announcements(self) -> dict:
        """{network: {"a.b.c.d/32": next hop}} of every provider address the platform
        carries now, from the host that carries it."""
        placement = self._placement()
        live = self.liveness()
        net_of, addr_of = {}, {}
        for name, rec in self.hosts.items():
            ext = rec.info.get("external")
            if ext:
                net_of[name] = ext.get("name", "external")
                addr_of[name] = ext.get("address")
        out: dict = {}
        for e in list(self.tenants.values()):
            for ip, host in self.carriers(e.tenant, placement, live):
                if host is not None and addr_of.get(host):
                    out.setdefault(net_of[host], {})[f"{ip}/32"] = addr_of[host]
        return out

    def carriers(self, t: Tenant, placement: dict, live: dict) -> list[tuple[str, str | None]]:
        """(provider address, the host that carries it now or None) of a tenant: a
        router's address and its central floating IPs on its active gateway, a
        distributed floating IP on its port's host."""
        out = []
        for r in t.routers:
            if r.external_ip is None:
                continue
            gws = gateway_hosts(r, placement)
            active = next((g for g in gws if self._alive(g, live, placement)), None)
            out.append((str(r.external_ip), active))
            for n in t.nat:
                if n.type == "floating-ip" and n.router == r.name:
                    out.append((str(n.external_ip), distributed_host(t, n, placement) or active))
        return out

    # -- what we learn ----------------------------------------------------------------

    def load_learned(self, path: str) -> None:
        """At start, before the switches are synced: the routes learned before the restart
        (written by apply_learned), compiled into the tenants that import them."""
        from controller.bgp.speaker import Learned
        from controller.server.entry import TenantEntry
        b = self.bgp
        b.cache_path = path
        try:
            with open(path) as f:
                doc = json.load(f)
            b.cache = {net: [Learned(x["prefix"], x["next_hop"], x["peer"], x["peer_asn"], tuple(x["as_path"]), True)
                             for x in rows] for net, rows in doc.items() if net in b.config}
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as e:
            LOG.warning("bgp: %s unreadable (%s): learned routes come with the sessions", path, e)
            return
        b.saved = doc
        b.cache_until = self.clock() + CACHE_HOLD
        with self.mutex:
            changed = False
            for name, e in list(self.tenants.items()):
                t = self.with_learned(e.tenant)
                if t is not e.tenant:
                    self._replace_entry(name, TenantEntry(t, e.alloc, e.revision, {}, e.layers))
                    changed = True
            if changed:
                self._recompile_all()
        LOG.info("bgp: %d routes learned before the restart stand in until the sessions are back",
                 sum(len(v) for v in b.cache.values()))

    def _complete(self, sp) -> bool:
        """Has a session of this speaker given us its whole table (End-of-RIB, or up a while)?"""
        now = time.time()
        return any(s.get("eor_received") or (s.get("state") == "established" and s.get("since")
                                             and now - s["since"] >= EOR_GRACE) for s in sp.status())

    def _rib(self) -> dict:
        """network -> [Learned] from its speaker (best per prefix: shortest AS path, then
        the lowest peer address); the routes learned before a restart while its sessions
        are not complete yet."""
        out = {}
        b = self.bgp
        for net in b.config:
            sp = b.speakers.get(net)
            if net in b.cache and self.clock() < b.cache_until and (sp is None or not self._complete(sp)):
                out[net] = list(b.cache[net])
                continue
            b.cache.pop(net, None)
            if sp is None:
                continue
            best: dict = {}
            for lr in sp.learned():
                cur = best.get(lr.prefix)
                key = (len(lr.as_path), ipaddress.IPv4Address(lr.peer))
                if cur is None or key < (len(cur.as_path), ipaddress.IPv4Address(cur.peer)):
                    best[lr.prefix] = lr
            out[net] = [best[p] for p in sorted(best, key=lambda p: ipaddress.IPv4Network(p))]
        return out

    def _carried(self) -> set:
        """Every provider address the platform holds: tenants' and hosts' own."""
        out = {ipaddress.IPv4Address(ip) for e in list(self.tenants.values()) for _, ip in provider_addresses(e.tenant)}
        for rec in self.hosts.values():
            addr = (rec.info.get("external") or {}).get("address")
            if addr:
                out.add(ipaddress.IPv4Address(addr))
        return out

    def learned_for(self, t: Tenant, rib: dict | None = None, carried: set | None = None) -> dict:
        """{router: (LearnedRoute, ...)} a tenant's routers take in now, and {router:
        [(prefix, why not)]} of the routes its filters matched but that were refused."""
        rib = self._rib() if rib is None else rib
        carried = self._carried() if carried is None else carried
        placement = self._placement()
        taken, refused = {}, {}
        for r in t.routers:
            if r.import_routes is None or r.external_ip is None:
                continue
            gws = gateway_hosts(r, placement)
            ext = self.hosts[gws[0]].info.get("external") if gws else None
            if not ext:
                continue
            got = []
            for lr in rib.get(ext.get("name", "external"), ()):
                prefix = ipaddress.IPv4Network(lr.prefix)
                if not r.imports(prefix):
                    continue
                why = None
                if any(a in prefix for a in carried):
                    why = "covers an address the platform carries"
                elif lr.next_hop != ext.get("next_hop"):
                    why = f"next hop {lr.next_hop} is not the provider network's gateway {ext.get('next_hop')}"
                if why:
                    refused.setdefault(r.name, []).append((lr.prefix, why))
                    continue
                got.append(LearnedRoute(prefix, ipaddress.IPv4Address(lr.next_hop), lr.peer, lr.peer_asn))
            taken[r.name] = tuple(got)
        return {"taken": taken, "refused": refused}

    def with_learned(self, t: Tenant) -> Tenant:
        """`t` with the learned routes its routers take in now (every change compiles this)."""
        if not any(r.import_routes is not None for r in t.routers):
            return t if not any(r.learned for r in t.routers) else dataclasses.replace(
                t, routers=tuple(dataclasses.replace(r, learned=()) for r in t.routers))
        taken = self.learned_for(t)["taken"] if self.bgp.speakers or self.bgp.cache else {}
        routers = tuple(dataclasses.replace(r, learned=taken.get(r.name, ())) if r.learned != taken.get(r.name, ())
                        else r for r in t.routers)
        return dataclasses.replace(t, routers=routers) if routers != t.routers else t

    def apply_learned(self) -> list[str]:
        """Recompile (a RoutesChange each) the tenants whose learned routes differ from
        what they were compiled with."""
        from controller.server import change as change_path
        done = []
        b = self.bgp
        rib = self._rib()
        self._save_learned(rib)
        importers = [n for n, e in list(self.tenants.items())
                     if any(r.import_routes is not None for r in e.tenant.routers)]
        if not importers:
            return done
        carried = self._carried()
        for name in importers:
            e = self.tenants.get(name)
            if e is None or self.clock() < b.retry.get(name, 0.0):
                continue
            want = self.learned_for(e.tenant, rib, carried)["taken"]
            if all(r.learned == want.get(r.name, ()) for r in e.tenant.routers if r.import_routes is not None):
                continue
            with self.mutex:
                e = self.tenants.get(name)
                if e is None:
                    continue
                try:
                    r = change_path.run(self, change_path.RoutesChange(e))
                except Exception as ex:  # noqa: BLE001 - tried again later
                    LOG.warning("tenant %s: learned routes not taken in (again in %g s): %s", name, RETRY, ex)
                    b.retry[name] = self.clock() + RETRY
                    continue
            b.retry.pop(name, None)
            LOG.info("tenant %s: %s (%s)", name, r.get("action"), r.get("hosts"))
            done.append(name)
        return done

    def _save_learned(self, rib: dict) -> None:
        """Keep what the sessions gave us for the next start (load_learned)."""
        b = self.bgp
        if b.cache_path is None or b.cache:
            return
        doc = {net: [{"prefix": x.prefix, "next_hop": x.next_hop, "peer": x.peer, "peer_asn": x.peer_asn,
                      "as_path": list(x.as_path)} for x in rows] for net, rows in rib.items()}
        if doc == b.saved:
            return
        tmp = b.cache_path + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(doc, f)
            os.replace(tmp, b.cache_path)
            b.saved = doc
        except OSError as e:
            LOG.warning("bgp: learned routes not kept in %s: %s", b.cache_path, e)

    # -- what the operator and the tenant see -----------------------------------------

    def bgp_status(self) -> dict:
        """Per network: the AS, each session, what is announced and what was learned."""
        b = self.bgp
        out = {"configured": bool(b.config), "leading": self.leading(), "networks": []}
        rib = self._rib()
        for net, c in sorted(b.config.items()):
            sp = b.speakers.get(net)
            out["networks"].append({
                "network": net, "asn": c["asn"],
                "sessions": sp.status() if sp is not None else [],
                "announced": [{"prefix": p, "nextHop": nh} for p, nh in sorted(
                    (b.announced.get(net) or {}).items(), key=lambda x: ipaddress.IPv4Network(x[0]))],
                "learned": [{"prefix": lr.prefix, "nextHop": lr.next_hop, "peer": lr.peer, "peerAsn": lr.peer_asn,
                             "asPath": list(lr.as_path), "stale": lr.stale} for lr in rib.get(net, ())]})
        return out

    def routes_view(self, t: Tenant) -> list[dict]:
        """Per router that imports: its filters, the learned routes it holds and those
        refused, and what the platform announces for it (tenant show)."""
        if not any(r.import_routes is not None for r in t.routers) and not self.bgp.config:
            return []
        placement, live = self._placement(), self.liveness()
        refused = self.learned_for(t)["refused"] if self.bgp.speakers or self.bgp.cache else {}
        addr_of = {n: (rec.info.get("external") or {}).get("address") for n, rec in self.hosts.items()}
        carriers = dict(self.carriers(t, placement, live))
        out = []
        for r in t.routers:
            if r.external_ip is None:
                continue
            mine = [str(r.external_ip)] + [str(n.external_ip) for n in t.nat
                                           if n.type == "floating-ip" and n.router == r.name]
            out.append({
                "router": r.name,
                "importRoutes": None if r.import_routes is None else [str(p) for p in r.import_routes],
                "learned": [{"prefix": str(lr.prefix), "nextHop": str(lr.next_hop), "peer": lr.peer,
                             "peerAsn": lr.peer_asn} for lr in r.learned],
                "refused": [{"prefix": p, "why": w} for p, w in refused.get(r.name, [])],
                "announced": [{"prefix": f"{ip}/32", "host": carriers.get(ip),
                               "nextHop": addr_of.get(carriers.get(ip)) if self.bgp.config else None}
                              for ip in mine]})
        return out
