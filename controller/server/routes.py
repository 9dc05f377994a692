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
the leader keeps what it learned in the store (runtime state STATE_NAME, etcd in a
cluster); a restarted controller, or a new leader before it reconciles, compiles
tenants with those routes (the switches keep their flows: nothing is sent to them) and
uses them until a session of that network is complete (its peer's End-of-RIB), or
CACHE_HOLD passes.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import logging
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
            routerId: 203.0.113.250   # optional: else a fixed private id (_router_id)
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
        self.generation = 0  # each start_bgp's loop knows its own: a quick stop and start leaves one loop
        self.retry: dict = {}  # tenant -> not before (clock)
        self.cache: dict = {}  # network -> [Learned] the last leader learned (the store's STATE_NAME)
        self.cache_until = 0.0  # clock: after this the cache no longer stands in
        self.saved: dict | None = None  # what the store holds


STATE_NAME = "bgp-learned"  # the store's runtime state: {network: [learned route...]}


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
        b.generation += 1
        threading.Thread(target=self._routes_loop, args=(b.generation,), name="bgp-routes", daemon=True).start()

    def stop_bgp(self, graceful: bool = True) -> None:
        """Stop every speaker: `graceful` (a restart, a new leader coming) closes the
        sessions as a crash would, so the peers keep our routes under graceful restart."""
        b = self.bgp
        b.running = False
        b.generation += 1
        b.wake.set()
        for sp in list(b.speakers.values()):
            sp.stop(graceful=graceful)
        b.speakers.clear()

    def _router_id(self, net: str) -> str:
        """A router id when none is configured: a fixed private one from the member's
        name and the network (stable across restarts)."""
        import zlib
        n = zlib.crc32(f"{getattr(self, 'name', 'nvctl')}/{net}".encode())
        return str(ipaddress.IPv4Address((10 << 24) | (n & 0xFFFFFF)))

    def routes_changed(self) -> None:
        """Something that decides announcements or learned routes changed: recompute soon."""
        self.bgp.wake.set()

    def _routes_loop(self, generation: int) -> None:
        b = self.bgp
        while b.running and b.generation == generation:
            b.wake.wait(TICK)
            b.wake.clear()
            if not b.running or b.generation != generation:
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

    def _networks(self) -> dict:
        """provider network -> its facts (prefix, gateway), from the hosts on it."""
        out = {}
        for rec in list(self.hosts.values()):
            ext = rec.info.get("external")
            if ext:
                out.setdefault(ext.get("name", "external"), ext)
        return out

    def announcements(self) -> dict:
        """{network: {"a.b.c.d/32": next hop}} of every provider address the platform
        carries now, from the host that carries it (only addresses on the network)."""
        placement = self._placement()
        live = self.liveness()
        net_of, addr_of = {}, {}
        for name, rec in list(self.hosts.items()):
            ext = rec.info.get("external")
            if ext:
                net_of[name] = ext.get("name", "external")
                addr_of[name] = ext.get("address")
        prefixes = {n: ipaddress.IPv4Network(e["network"]) for n, e in self._networks().items() if e.get("network")}
        out: dict = {}
        for e in list(self.tenants.values()):
            for ip, host in self.carriers(e.tenant, placement, live):
                if host is None or not addr_of.get(host):
                    continue
                net = net_of[host]
                if net in prefixes and ipaddress.IPv4Address(ip) not in prefixes[net]:
                    continue  # never announce what is not on the network (ownership checks say so too)
                out.setdefault(net, {})[f"{ip}/32"] = addr_of[host]
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
            active = self.active_gateway(gws, live, placement)
            out.append((str(r.external_ip), active))
            for n in t.nat:
                if n.type == "floating-ip" and n.router == r.name:
                    out.append((str(n.external_ip), distributed_host(t, n, placement) or active))
        return out

    def bgp_reserved(self) -> dict:
        """address -> what it is, of the BGP configuration's own addresses on the provider
        networks (peers, router ids): no tenant may take one."""
        out = {}
        for net, c in self.bgp.config.items():
            for p in c["peers"]:
                out[p["address"]] = f"the BGP peer of provider network {net}"
            if c.get("routerId"):
                out[c["routerId"]] = f"the platform's BGP router id on provider network {net}"
        return out

    # -- what we learn ----------------------------------------------------------------

    def load_learned(self) -> None:
        """What the last leader learned (the store's runtime state), compiled into the
        tenants that import it, so the switches keep those flows while our sessions come
        back. Called with the mutex held (or before anything else runs): at start before
        the switches sync, and by take_over before it reconciles."""
        from controller.bgp.speaker import Learned
        from controller.server.entry import TenantEntry
        b = self.bgp
        if not b.config:
            return
        try:
            doc = self.store.runtime_state(STATE_NAME)
        except Exception as e:  # noqa: BLE001 - without it, learned routes come with the sessions
            LOG.warning("bgp: the routes learned before could not be read (%s)", e)
            return
        if not doc:
            return
        try:
            b.cache = {net: [Learned(x["prefix"], x["next_hop"], x["peer"], x["peer_asn"], tuple(x["as_path"]), True)
                             for x in rows] for net, rows in doc.items() if net in b.config}
        except (KeyError, TypeError, ValueError) as e:
            LOG.warning("bgp: the stored learned routes are unreadable (%s): they come with the sessions", e)
            return
        b.saved = doc
        b.cache_until = self.clock() + CACHE_HOLD
        changed = False
        for name, e in list(self.tenants.items()):
            t = self.with_learned(e.tenant)
            if t is not e.tenant:
                self._replace_entry(name, TenantEntry(t, e.alloc, e.revision, {}, e.layers))
                changed = True
        if changed:
            self._recompile_all()
        LOG.info("bgp: %d routes learned before stand in until the sessions are complete",
                 sum(len(v) for v in b.cache.values()))

    def _complete(self, sp) -> bool:
        """Has a session of this speaker given us its whole table? End-of-RIB received;
        a peer without graceful restart may send none: up EOR_GRACE seconds then."""
        now = time.time()
        return any(s.get("eor_received") or (s.get("state") == "established" and not s.get("graceful_restart")
                                             and now - (s.get("since") or now) >= EOR_GRACE)
                   for s in sp.status())

    def _rib(self) -> dict:
        """network -> [Learned] from every peer of its speaker; what the last leader
        learned while its sessions are not complete yet."""
        out = {}
        b = self.bgp
        for net in list(b.config):
            sp = b.speakers.get(net)
            if net in b.cache and self.clock() < b.cache_until and (sp is None or not self._complete(sp)):
                out[net] = list(b.cache[net])
                continue
            b.cache.pop(net, None)
            if sp is not None:
                out[net] = sorted(sp.learned(), key=lambda lr: (ipaddress.IPv4Network(lr.prefix), lr.peer))
        return out

    def _carried(self) -> set:
        """Every provider address the platform holds: tenants' and hosts' own."""
        out = {ipaddress.IPv4Address(ip) for e in list(self.tenants.values()) for _, ip in provider_addresses(e.tenant)}
        for rec in list(self.hosts.values()):
            addr = (rec.info.get("external") or {}).get("address")
            if addr:
                out.add(ipaddress.IPv4Address(addr))
        return out

    def learned_for(self, t: Tenant, rib: dict | None = None, carried: set | None = None) -> dict:
        """{"taken": {router: (LearnedRoute, ...)}, "refused": {router: [(prefix, why)]}}:
        the learned routes a tenant's routers take in now (per prefix, the best of those
        that may be taken: shortest AS path, then the lowest peer address), and those its
        filters matched but no candidate could be taken."""
        rib = self._rib() if rib is None else rib
        carried = self._carried() if carried is None else carried
        placement = self._placement()
        taken, refused = {}, {}
        for r in t.routers:
            if r.import_routes is None or r.external_ip is None:
                continue
            gws = gateway_hosts(r, placement)
            ext = self.hosts[gws[0]].info.get("external") if gws and gws[0] in self.hosts else None
            if not ext:
                continue
            net = ipaddress.IPv4Network(ext["network"]) if ext.get("network") else None
            inside = [(s.name, s.cidr) for s in t.switches if r.port_on(s.name) is not None]
            best, why = {}, {}
            for lr in rib.get(ext.get("name", "external"), ()):
                prefix = ipaddress.IPv4Network(lr.prefix)
                if not r.imports(prefix):
                    continue
                no = _refusal(prefix, lr, ext, net, carried, inside)
                if no:
                    why.setdefault(lr.prefix, no)
                    continue
                key = (len(lr.as_path), ipaddress.IPv4Address(lr.peer))
                cur = best.get(prefix)
                if cur is None or key < cur[0]:
                    best[prefix] = (key, lr)
            taken[r.name] = tuple(LearnedRoute(p, ipaddress.IPv4Address(lr.next_hop), lr.peer, lr.peer_asn)
                                  for p, (_, lr) in sorted(best.items()))
            no = [(p, w) for p, w in why.items() if ipaddress.IPv4Network(p) not in best]
            if no:
                refused[r.name] = no
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
                if e is None or not b.running or not self.leading():
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
        """Keep what the sessions gave us in the store, for the next start or leader
        (load_learned). Not while the cache stands in, nor once this member stopped leading."""
        b = self.bgp
        if b.cache or not b.running or not self.leading():
            return
        doc = {net: [{"prefix": x.prefix, "next_hop": x.next_hop, "peer": x.peer, "peer_asn": x.peer_asn,
                      "as_path": list(x.as_path)} for x in rows] for net, rows in rib.items()}
        if doc == b.saved:
            return
        try:
            self.store.put_runtime_state(STATE_NAME, doc)
            b.saved = doc
        except Exception as e:  # noqa: BLE001 - tried again at the next change
            LOG.warning("bgp: learned routes not kept in the store: %s", e)


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
        addr_of = {n: (rec.info.get("external") or {}).get("address") for n, rec in list(self.hosts.items())}
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


def _refusal(prefix, lr, ext: dict, net, carried: set, inside: list) -> str | None:
    """Why a learned route may not be taken into a router, or None."""
    if lr.next_hop != ext.get("next_hop"):
        return f"next hop {lr.next_hop} is not the provider network's gateway {ext.get('next_hop')}"
    # inside the provider network, a route would beat the network's connected route for
    # an address the platform carries (another tenant's floating IP, a host's own):
    # refused; a shorter one (a default route, an aggregate) takes nothing from anyone
    if (net is None or prefix.subnet_of(net)) and any(a in prefix for a in carried):
        return "covers an address the platform carries"
    for name, cidr in inside:  # longer than a connected network it lies in: it would take its traffic
        if prefix.subnet_of(cidr):
            return f"lies inside the router's connected network {cidr} ({name})"
    return None
