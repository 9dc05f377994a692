"""The controller core: intent (parse, allocate, compile, store), hosts, and workloads.

Intent changes (`create`, `apply`, `delete`) are serialized by one mutex. Each one:
validates (nothing changes if anything is wrong), checks that the tenant owns the
provider addresses it names, allocates, recompiles only the tenant that changed,
refuses the change if any of its flows would take the identity of another's
(`controller.compile.desired`), persists in one store transaction, attaches or detaches
workloads, and then has the hosts whose flow sets changed reconciled
(`controller.switch.reconciler`: by identity, against the flows read back from the switch).

The core never imports os-ken: it talks to a `Switch` (see reconciler) per host.
"""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import hmac
import ipaddress
import itertools
import json
import logging
import re
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

from dataplane.match_action import COOKIE_TENANT_MAX, COOKIE_TENANT_SHIFT, Flow, cookie_layer, cookie_tenant
from topology import schema
from topology.model import Tenant
from controller.compile.allocator import Allocation, InUse, allocate, provider_addresses
from controller.compile import compiler
from controller.compile.compiler import DEFAULT_UPLINK_MTU, VXLAN_OVERHEAD, Host, compile_host, compile_tenant, paused_gc
from controller.compile.desired import DesiredState
from controller.compile.pipeline import LAYER_BY_ID
from controller.client.progress import Changes
from controller.packetin.punt import Punt
from controller.analysis import stats as stats_mod
from controller.packetin.acl_log import AclLog
from controller.analysis.metrics import Metrics
from controller.layers.acl import FromPortAcl, ToPortAcl
from controller.switch import reconciler
from controller.switch.reconciler import HostState
from controller.state.store import HostRecord, Store
from controller.server.errors import ApiError
from tep.driver import Attachment, LabDriver, attachments_of
from tep.ovs import DPID_PREFIX, INTEGRATION_BRIDGE, OVSDB_PORT, TUNNEL_PORT_NAME, Ovsdb, OvsError

HOST_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")

LOG = logging.getLogger("nvctl.core")
PLUG_WORKERS = 8  # workloads plugged at once
RECONCILE_WORKERS = 16  # hosts reconciled at once
HOLD_SECONDS = 60.0  # how long an address held for a runtime waits for its port
ACL_RULE_TABLES = frozenset({FromPortAcl.rules_table, ToPortAcl.rules_table})  # logged rules' packet-ins
STATS_KEEP_SECONDS = 600.0  # readings kept for `nvctl drops` (what dropped recently)
SAMPLE_EVERY = 5.0  # at most one kept per this many seconds (every stats call reads)
SAMPLES_KEPT = 120


def freeze_heap() -> None:
    """For the controller process, once its state is loaded: move every object alive
    now (hundreds of thousands of flows) out of the cyclic collector's reach. They live
    as long as the process; without this, each full collection walks all of them again
    (tens of ms, in the middle of some change)."""
    gc.collect()
    gc.freeze()


@dataclass
class TenantEntry:
    tenant: Tenant
    alloc: Allocation
    revision: int
    flows: dict  # host -> list[Flow]


class Core:
    def __init__(self, store: Store, clock=time.monotonic):
        self.store = store
        self.clock = clock
        self.mutex = threading.Lock()
        self._reconcilers = ThreadPoolExecutor(max_workers=RECONCILE_WORKERS, thread_name_prefix="reconcile")
        self._readers = ThreadPoolExecutor(max_workers=RECONCILE_WORKERS, thread_name_prefix="counters")
        self.hosts: dict[str, HostRecord] = {h.name: h for h in store.hosts()}  # changed by _set_host only
        self._placement_cache: dict[str, Host] | None = None
        self.driver = LabDriver(self.hosts)
        self.state: dict[str, HostState] = {h: HostState() for h in self.hosts}
        self.tenants: dict[str, TenantEntry] = {}
        self.unclaimed: dict[int, object] = {}  # dpid -> session of a not-yet-registered switch
        self.pki = None  # controller.transport.pki.Pki when the controller accepts hosts over TLS
        self.endpoints: dict = {}  # where joining hosts reach us: ip, of_port, of_tls_port, api_port
        self.used = InUse()  # what all tenants hold, kept in step with self.tenants
        self.punt = Punt(self.switch_mtus)  # DHCP, DNS and path MTU, answered from the specs
        self.holds: dict[tuple[str, str], dict[str, float]] = {}  # (tenant, switch) -> {ip: until}
        self.cluster = None  # controller.state.cluster.Member in a cluster: then only its leader writes
        self.plugging = False  # ensure_workloads is running in the background
        self.book = stats_mod.Book()  # counts of flows gone from the switches (controller.analysis.stats)
        self.samples: dict[str, list] = {}  # tenant -> [(time, drop counts)], the last STATS_KEEP_SECONDS
        self._samples_lock = threading.Lock()
        self._incarnation: dict[str, int] = {}  # tenant -> which making of it (a name deleted and made again)
        self._incarnations = itertools.count(1)
        self._tid_name: dict[int, str] = {}  # tenant id -> name, for packet-ins
        self.acl_log = AclLog()  # main sets its file
        self._log_index: dict = {}  # (tenant id, host) -> (flows list, {cookie: Flow}) of logged rules
        self._cookie_index: dict = {}  # (tenant id, host) -> (flows list, {cookie: Flow}), for stats
        self.verified: dict = {}  # tenant ("" for all) -> (time, ok, violations): the last verify
        self.metrics = Metrics(self)
        self.changes = Changes()  # each create/apply's phase and counts, for the `progress` op (no mutex)
        for rec in store.tenants():
            t = schema.validate(rec.doc, None)
            self._replace_entry(rec.name, TenantEntry(t, Allocation.from_json(rec.alloc), rec.revision, {}))
        self._recompile_all()

    # ------------------------------------------------------------------------------
    # compilation
    # ------------------------------------------------------------------------------
    def _placement(self) -> dict[str, Host]:
        """Every host as the compiler sees it; kept until a host record changes
        (_set_host), since a change asks for it several times (at 100 hosts ~1.4 ms each)."""
        if self._placement_cache is None:
            out = {}
            for n, h in self.hosts.items():
                ext = h.info.get("external")
                out[n] = Host(n, h.pa, (ext["ofport"], ext["next_hop_mac"]) if ext else None, self.host_mtu(n))
            self._placement_cache = out
        return self._placement_cache

    def _set_host(self, rec: HostRecord) -> None:
        """The one place a host record changes, so the placement follows it."""
        self.hosts[rec.name] = rec
        self._placement_cache = None

    @paused_gc()
    def _recompile_all(self) -> None:
        hosts = self._placement()
        self.infra = {h: compile_host(h, hosts) for h in hosts}
        for e in self.tenants.values():
            e.flows = compile_tenant(e.tenant, e.alloc, hosts)
        self.desired, conflicts = DesiredState.build(self.infra, (e.flows for e in self.tenants.values()))
        names = self._tenant_names()
        for c in conflicts:  # stored by a version that did not refuse them: the first holder keeps it
            LOG.error("flow identity conflict in the stored tenants: %s", c.describe(names))

    def _tenant_names(self) -> dict[int, str]:
        return {e.alloc.tenant_id: n for n, e in self.tenants.items()}

    # ------------------------------------------------------------------------------
    # switches
    # ------------------------------------------------------------------------------
    def host_of_dpid(self, dpid: int) -> str | None:
        for name, h in self.hosts.items():
            if h.dpid == dpid:
                return name
        return None

    # ------------------------------------------------------------------------------
    # a cluster's leader and followers (controller.state.cluster)
    # ------------------------------------------------------------------------------
    def leading(self) -> bool:
        """Whether this controller may change switches: always, unless it is a
        follower in a cluster."""
        return self.cluster is None or self.cluster.is_leader

    def _claim_role(self, host: str, session) -> None:
        """A cluster member's OpenFlow role on one switch: master with the election's
        generation while leading, else slave (with the leader's generation, as known)."""
        c = self.cluster
        if c is None:
            return
        if not c.is_leader and c.leader is None:
            try:
                c.leader = c.read_leader()
            except Exception:  # noqa: BLE001 - etcd unreachable: claim with what we know
                pass
        gen = c.generation if c.is_leader else (c.leader or {}).get("generation") or 0
        role = "master" if c.is_leader else "slave"
        try:
            got = session.role(role, gen)
            LOG.info("host %s: role %s (generation %d)", host, got, gen)
        except Exception as e:  # noqa: BLE001 - a stale follower stays as the switch has it
            LOG.warning("host %s: role %s (generation %d) refused: %s", host, role, gen, e)

    def take_over(self, generation: int) -> dict:
        """Just elected: catch up with the store, take the master role on every switch,
        then bring every host to its desired state by reading it back (a diff: nothing
        is sent where nothing changed). Returns flow-mods sent per host."""
        t0 = self.clock()
        with self.mutex:
            self._catch_up()
            for host, st in self.state.items():
                if st.session is not None:
                    self._claim_role(host, st.session)
                    st.forget()
            results = self.reconcile_many(self.hosts)
        for h, n in results.items():
            st = self.state[h]
            if n is None:
                continue  # not connected yet: its connect-time sync will count
            st.syncs += 1
            st.last_sync_mods = n
            st.synced_session = st.session
        LOG.info("took over as leader (generation %d) in %.0f ms: flow-mods %s", generation,
                 (self.clock() - t0) * 1000, results)
        self.ensure_workloads_in_background()
        return results

    def _catch_up(self) -> None:
        """Make the in-memory intent the store's (a follower's watch may have missed some)."""
        for rec in self.store.hosts():
            if rec.name not in self.hosts or self.hosts[rec.name] != rec:
                self._follow_host(rec)
        stored = {rec.name: rec for rec in self.store.tenants()}
        for name in set(self.tenants) - set(stored):
            self._follow_tenant(name, None)
        for name, rec in stored.items():
            e = self.tenants.get(name)
            if e is None or e.revision != rec.revision or schema.to_doc(e.tenant) != rec.doc \
                    or e.alloc.to_json() != rec.alloc:
                self._follow_tenant(name, rec)

    def catch_up(self) -> None:
        with self.mutex:
            self._catch_up()

    def hand_over(self, generation: int) -> None:
        """No longer leading: stop writing; say slave to the switches that still listen."""
        for host, st in self.state.items():
            if st.session is not None:
                self._claim_role(host, st.session)

    def cluster_status(self) -> dict:
        """Members (name, pid, address, role, lease left), etcd's members and their
        health, and per host which controllers its br-int is connected to, in which
        OpenFlow role (read from the host's OVSDB)."""
        import os
        if self.cluster is not None:
            out = self.cluster.status()
        else:
            out = {"self": "controller", "leader": "controller", "generation": None, "etcd": [], "step_downs": [],
                   "members": [{"name": "controller", "pid": os.getpid(), "role": "leader", "lease_s": None,
                                "address": self.endpoints.get("ip")}]}
        by_address = {m.get("address"): m["name"] for m in out["members"]}
        hosts = []
        for name, rec in sorted(self.hosts.items()):
            conns = []
            try:
                rows = json.loads(Ovsdb(rec.info["ovsdb"]).vsctl(
                    "--format=json", "--columns=target,is_connected,role", "list", "Controller"))["data"]
            except Exception as e:  # noqa: BLE001 - a host we cannot read is reported so
                hosts.append({"name": name, "connections": [], "error": str(e)[:200]})
                continue
            for target, connected, role in rows:
                addr = target.split(":")[1] if ":" in target else target
                conns.append({"member": by_address.get(addr, target), "target": target,
                              "connected": connected is True, "role": role if isinstance(role, str) else None})
            hosts.append({"name": name, "connections": conns})
        out["hosts"] = hosts
        return out

    def member_probe(self, host: str) -> dict:
        """What a switch answers this member, as it is (a check that switches refuse a
        deposed leader): a master role request with this member's last generation, and
        a flow-mod that changes nothing (a strict delete of a flow no one has)."""
        st = self.state.get(host)
        if st is None or st.session is None:
            raise ApiError(f"host {host!r} is not connected to this controller")
        gen = (self.cluster.generation or 0) if self.cluster else 0
        out = {"host": host, "generation": gen}
        try:
            out["role"] = st.session.role("master", gen) if self.cluster else "equal"
        except Exception as e:  # noqa: BLE001 - the refusal is the answer
            out["role_error"] = str(e)
        from controller.compile.pipeline import PIPELINE
        from controller.spaces.registers import FLOOD_PORT_KEY, OUTPORT
        from dataplane.match_action import Match
        probe = Flow(PIPELINE.tables[0], 1, Match.of(**OUTPORT.m(FLOOD_PORT_KEY)), (), rule="probe")
        try:
            st.session.push([probe], [])
            out["flow_mod"] = "accepted"
        except Exception as e:  # noqa: BLE001
            out["flow_mod"] = f"refused: {e}"
        return out

    def _follow_tenant(self, name: str, rec) -> None:
        old = self.tenants.get(name)
        new = None
        if rec is not None:
            t = schema.validate(rec.doc, None)
            alloc = Allocation.from_json(rec.alloc)
            new = TenantEntry(t, alloc, rec.revision, compile_tenant(t, alloc, self._placement()))
        self._replace_entry(name, new)
        self.desired.swap(old.flows if old else {}, new.flows if new else {})

    def follow_tenant(self, name: str, value: dict | None, version: int) -> None:
        """A follower: the leader stored this tenant (None: deleted); compile it, send nothing."""
        from controller.state.store import TenantRecord
        with self.mutex:
            self._follow_tenant(name, None if value is None else
                                TenantRecord(name, value["doc"], value["alloc"], version))

    def _follow_host(self, rec: HostRecord) -> None:
        self._set_host(rec)
        self.state.setdefault(rec.name, HostState())
        self._recompile_all()
        waiting = self.unclaimed.pop(rec.dpid, None)
        if waiting is not None and waiting.alive:
            threading.Thread(target=self.switch_connected, args=(waiting,), daemon=True).start()

    def follow_host(self, name: str, pa: str, dpid: int, info: dict) -> None:
        with self.mutex:
            self._follow_host(HostRecord(name, pa, dpid, info))

    def switch_connected(self, session) -> None:
        host = self.host_of_dpid(session.dpid)
        if host is None:
            LOG.warning("switch %016x is not a registered host; holding it until it is", session.dpid)
            self.unclaimed[session.dpid] = session
            return
        st = self.state.setdefault(host, HostState())
        st.session = session
        st.forget()
        self._claim_role(host, session)
        if not self.leading():
            LOG.info("host %s connected (this controller follows: nothing sent)", host)
            return
        n = self.reconcile(host)
        st.syncs += 1
        st.last_sync_mods = n
        st.synced_session = session  # last: in_sync is not reported before the figures above
        LOG.info("host %s connected: sync sent %s flow-mods", host, n)

    def switch_disconnected(self, session) -> None:
        if self.unclaimed.get(session.dpid) is session:
            del self.unclaimed[session.dpid]
        host = self.host_of_dpid(session.dpid)
        st = self.state.get(host) if host else None
        if st is not None and st.session is session:
            st.session = None
            st.forget()
            LOG.info("host %s disconnected", host)

    def reconcile(self, host: str, delta: tuple | None = None) -> int | None:
        """Bring one host's switch to its desired state (see controller.switch.reconciler).
        Returns messages sent, or None when the host is not connected or refused.
        `delta` = (old flows, new flows) of the one tenant that changed on this host."""
        st = self.state.get(host)
        if st is None or not self.leading():
            return None
        t0 = time.perf_counter()
        with st.lock:
            n = reconciler.reconcile(st, self.desired.get(host, {}), delta)
        if n is not None:
            self.metrics.reconcile_seconds.labels(host).observe(time.perf_counter() - t0)
            self.metrics.flow_mods.labels(host).inc(n)
        return n

    def reconcile_many(self, hosts, old: dict | None = None, new: dict | None = None,
                       change=None) -> dict[str, int | None]:
        """Reconcile several hosts at once. With `old` and `new` (one tenant's flows per
        host, before and after), each host compares only that tenant's flows. `change`
        (controller.client.progress.Change) counts the hosts done."""
        hosts = sorted(hosts)
        results: dict[str, int | None] = {h: None for h in hosts}
        live = [h for h in hosts if h in self.state and self.state[h].session is not None]
        if change is not None:
            change.hosts(len(live))

        def one(h):
            results[h] = self.reconcile(h, None if old is None else (old.get(h, ()), new.get(h, ())))
            if change is not None:
                change.synced()
        if len(live) == 1:
            one(live[0])
        else:  # each waits on its own switch's barrier: overlap them
            list(self._reconcilers.map(one, live))
        return results

    # ------------------------------------------------------------------------------
    # hosts
    # ------------------------------------------------------------------------------
    def register_host(self, name: str, pa: str, dpid: int, info: dict) -> dict:
        with self.mutex:
            try:
                ipaddress.IPv4Address(pa)
            except ValueError:
                raise ApiError(f"host {name}: provider address {pa!r} is not IPv4") from None
            for other in self.hosts.values():
                if other.name != name and (other.pa == pa or other.dpid == dpid):
                    raise ApiError(f"host {name}: PA {pa} or dpid {dpid:#x} already used by {other.name}")
            rec = HostRecord(name, pa, dpid, info)
            self.store.put_host(rec)
            self._set_host(rec)
            self.state.setdefault(name, HostState())
            self._recompile_all()
            waiting = self.unclaimed.pop(dpid, None)
        if waiting is not None and waiting.alive:
            self.switch_connected(waiting)
        self.reconcile_many(self.hosts)
        return {"host": name}

    def invite_host(self, name: str, pa: str, tls: bool = True, workloads: dict | None = None) -> dict:
        """Allow one host to join: record its name, PA and datapath id, and return the
        join bundle it needs (a one-time token, and with TLS its own key and certificate
        signed by our switch CA plus the CA that signed ours). The bundle is a secret."""
        with self.mutex:
            if not HOST_NAME.match(name or ""):
                raise ApiError(f"host name {name!r}: use 1-32 of a-z, 0-9 and '-', starting with a letter")
            try:
                ipaddress.IPv4Address(pa)
            except ValueError:
                raise ApiError(f"host {name}: provider address (--pa) {pa!r} is not an IPv4 address") from None
            if name in self.hosts:
                raise ApiError(f"host {name} is already registered")
            invites = self.store.invites()
            for other, inv in invites.items():
                if other != name and inv["pa"] == pa:
                    raise ApiError(f"host {name}: PA {pa} is already invited as {other}")
            for h in self.hosts.values():
                if h.pa == pa:
                    raise ApiError(f"host {name}: PA {pa} is already used by {h.name}")
            if tls and self.pki is None:
                raise ApiError("this controller has no PKI (start it with --pki DIR), so it cannot "
                               "issue certificates; invite with --insecure for plain TCP")
            taken = {h.dpid for h in self.hosts.values()} | {i["dpid"] for i in invites.values()}
            dpid = DPID_PREFIX | int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "big")
            while dpid in taken:
                dpid += 1
            inv = {"name": name, "pa": pa, "dpid": dpid, "token": secrets.token_hex(16), "tls": bool(tls),
                   "workloads": workloads or None}
            bundle = {**inv, "controller": dict(self.endpoints)}
            if tls:
                key, cert = self.pki.sign_host(name)
                bundle.update(key=key, cert=cert, ca=self.pki.read(self.pki.controller_ca))
            self.store.put_invite(name, inv)
            return bundle

    def _invitation(self, token: str, peer_name: str | None) -> dict:
        inv = next((i for i in self.store.invites().values()
                    if hmac.compare_digest(i["token"], str(token or ""))), None)
        if inv is None:
            raise ApiError("refused: no invitation matches this join token "
                           "(the operator runs 'nvctl host invite NAME --pa PA' first)")
        if inv["tls"] and peer_name != inv["name"]:
            raise ApiError(f"refused: host {inv['name']} was invited with TLS, but this connection "
                           f"{'is plain TCP' if peer_name is None else 'presents a certificate for ' + repr(peer_name)}")
        return inv

    def join_host(self, token: str, peer_ip: str, peer_name: str | None, mtu: int | None = None) -> dict:
        """A host asks to join (called by the network API with the connection's facts).
        Refused unless an invitation matches its token and, with TLS, its certificate's
        name; then its OVS is checked over OVSDB before it is registered."""
        inv = self._invitation(token, peer_name)
        name = inv["name"]
        if name in self.hosts and self.hosts[name].info.get("mgmt") not in (None, peer_ip):
            raise ApiError(f"refused: host {name} has already joined from {self.hosts[name].info['mgmt']}")
        remote = f"{'ssl' if inv['tls'] else 'tcp'}:{peer_ip}:{OVSDB_PORT}"
        tls = [self.pki.ctl_key, self.pki.ctl_cert, self.pki.switch_ca] if inv["tls"] else None
        db = Ovsdb(remote, tuple(tls) if tls else None)
        try:
            got_dpid = db.vsctl("get", "bridge", INTEGRATION_BRIDGE, "other-config:datapath-id",
                                timeout=10).strip().strip('"')
            got_ip = db.vsctl("get", "interface", TUNNEL_PORT_NAME, "options:local_ip",
                              timeout=10).strip().strip('"')
        except OvsError as e:
            raise ApiError(f"host {name}: cannot read its OVS over OVSDB at {remote}: {e}") from None
        if int(got_dpid, 16) != inv["dpid"] or got_ip != inv["pa"]:
            raise ApiError(f"host {name}: its br-int has datapath-id {got_dpid} and tunnel IP {got_ip}, "
                           f"expected {inv['dpid']:016x} and {inv['pa']}")
        if mtu is not None and not (isinstance(mtu, int) and 1280 <= mtu <= 65535):
            raise ApiError(f"host {name}: uplink MTU {mtu!r} is not a number of bytes (1280..65535)")
        info = {"kind": "lab" if inv["workloads"] else "remote", "joined": True, "tls": inv["tls"],
                **({"mtu": mtu} if mtu else {}),
                "mgmt": peer_ip, "ovsdb": remote, **({"ovsdb_tls": tls} if tls else {}),
                **(inv["workloads"] or {})}
        self.register_host(name, inv["pa"], inv["dpid"], info)
        return {"host": name, "pa": inv["pa"], "dpid": f"{inv['dpid']:016x}", "ovsdb": remote}

    def admit(self, dpid: int, peer_name: str | None) -> bool:
        """May this OpenFlow connection speak for datapath `dpid`? A host that joined
        with TLS must present its own certificate; a certificate never speaks for
        another host's datapath."""
        host = self.host_of_dpid(dpid)
        if host is None:
            inv = next((i for i in self.store.invites().values() if i["dpid"] == dpid), None)
            return inv is None or not inv["tls"] or peer_name == inv["name"]
        if self.hosts[host].info.get("tls") or peer_name is not None:
            return peer_name == host
        return True

    def resync(self, name: str) -> dict:
        """Re-read one host's flows, meters and groups from the switch and repair any
        difference (flows deleted or added by hand), without reconnecting."""
        st = self.state.get(name)
        if st is None:
            raise ApiError(f"no host {name!r} (hosts: {', '.join(sorted(self.hosts))})")
        if st.session is None:
            raise ApiError(f"host {name} is not connected")
        t0 = self.clock()
        n, diff = self.audit(name)
        if n is None:
            raise ApiError(f"host {name}: {st.error or 'not connected'}")
        return {"host": name, "flow_mods": n, "found": diff, "ms": round((self.clock() - t0) * 1000, 1)}

    def audit(self, name: str) -> tuple[int | None, dict]:
        """Re-read a host's switch and correct whatever differs from its desired state."""
        st = self.state[name]
        with st.lock:
            n, diff = reconciler.audit(st, self.desired.get(name, {}))
        if diff and any(diff.values()):
            LOG.warning("host %s drifted from its desired state (%s); corrected with %s messages",
                        name, diff, n)
        return n, diff

    def audit_all(self) -> dict[str, dict]:
        """Audit every connected host (at once): the switches' own flows, not our memory."""
        live = sorted(h for h, st in self.state.items() if st.session is not None and h in self.hosts)
        out: dict[str, dict] = {}

        def one(h):
            n, diff = self.audit(h)
            out[h] = {"flow_mods": n, **diff}
        list(self._reconcilers.map(one, live))
        return out

    def host_self(self, token: str, peer_name: str | None) -> dict:
        """What a joined host may ask about itself."""
        name = self._invitation(token, peer_name)["name"]
        if name not in self.hosts:
            raise ApiError(f"host {name} is not registered")
        return {"name": name, **self.host_status(name)}

    # ------------------------------------------------------------------------------
    # tenants
    # ------------------------------------------------------------------------------
    def _port(self, tenant: str, port: str):
        """(tenant entry, port) or an ApiError naming what is missing."""
        e = self.tenants.get(tenant)
        if e is None:
            raise ApiError(f"no tenant {tenant!r}")
        try:
            return e, e.tenant.port(port)
        except KeyError:
            raise ApiError(f"tenant {tenant} has no port {port!r}") from None

    @contextmanager
    def _held_by_others(self, tenant: str):
        """Numbers every tenant but `tenant` holds, for the allocator: `self.used` with
        the tenant's own holdings taken out for the duration (numbers are never shared
        between tenants, so out and back in is exact)."""
        e = self.tenants.get(tenant)
        if e is not None:
            self.used.remove(e.tenant, e.alloc)
        try:
            yield self.used
        finally:
            if e is not None:
                self.used.add(e.tenant, e.alloc)

    def _commit(self, t: Tenant, old: TenantEntry | None) -> tuple[TenantEntry, set[str]]:
        """Allocate, compile and store a tenant's new intent, then swap it in (under the
        mutex). Returns the new entry and the hosts whose flow sets changed. Nothing in
        memory changes when allocation, compilation or the store refuses."""
        with self._held_by_others(t.name) as others:
            self._check_provider_addresses(t, others)
            alloc = allocate(t, old.tenant if old else None, old.alloc if old else None, others)
        flows = compile_tenant(t, alloc, self._placement())
        conflicts = self.desired.conflicts(old.flows if old else {}, flows)
        if conflicts:
            names = {**self._tenant_names(), alloc.tenant_id: t.name}
            raise ApiError(f"tenant {t.name}: {len(conflicts)} of its flows would replace flows "
                           "that are not its own (the same table, priority and match); nothing was changed",
                           [("flows", c.describe(names)) for c in conflicts[:20]])
        rev = self.store.put_tenant(t.name, schema.to_doc(t), alloc.to_json(), old.revision if old else None)
        new = TenantEntry(t, alloc, rev, flows)
        self._replace_entry(t.name, new)
        return new, self.desired.swap(old.flows if old else {}, flows)

    def _check_provider_addresses(self, t: Tenant, others: InUse) -> None:
        """Router external addresses and floating IPs belong to one tenant each, never
        to the provider's own gear, and lie on the provider network they are used on."""
        errors = []
        gateways = [h.info["external"] for h in self.hosts.values() if h.info.get("external")]
        for path, ip in provider_addresses(t):
            owner = others.addresses.get(ip)
            if owner is not None:
                errors.append((path, f"{ip} belongs to tenant {owner}"))
                continue
            for ext in gateways:
                net = ipaddress.IPv4Network(ext["network"]) if ext.get("network") else None
                addr = ipaddress.IPv4Address(ip)
                if ext.get("next_hop") == ip:
                    errors.append((path, f"{ip} is the provider network's gateway"))
                elif net is not None and addr not in net:
                    errors.append((path, f"{ip} is outside the provider network {net}"))
                elif net is not None and addr in (net.network_address, net.broadcast_address):
                    errors.append((path, f"{ip} is the provider network {net}'s "
                                         f"{'network' if addr == net.network_address else 'broadcast'} address"))
                else:
                    continue
                break
        if errors:
            raise ApiError(f"tenant {t.name} claims provider addresses it cannot have; nothing was changed",
                           errors)

    def _replace_entry(self, name: str, new: TenantEntry | None) -> None:
        """The one place self.tenants changes, so self.used follows it."""
        old = self.tenants.pop(name, None)
        if old is not None:
            self.used.remove(old.tenant, old.alloc)
        if new is not None:
            self.tenants[name] = new
            self.used.add(new.tenant, new.alloc)
        self.punt.update(name, new.tenant if new else None, new.alloc if new else None)
        if old is None and new is not None:
            self._incarnation[name] = next(self._incarnations)
        if old is not None:
            self._tid_name.pop(old.alloc.tenant_id, None)
        if new is not None:
            self._tid_name[new.alloc.tenant_id] = name
        if new is None:  # a tenant made again under this name starts from zero
            self.book.forget((name, self._incarnation.pop(name, None)))
            with self._samples_lock:
                self.samples.pop(name, None)
            self.acl_log.forget(name)
            self.verified.pop(name, None)
            if old is not None:
                for cache in (self._cookie_index, self._log_index):
                    for k in [k for k in cache if k[0] == old.alloc.tenant_id]:
                        cache.pop(k, None)

    def packet_in(self, session, table: str, regs: dict, in_port: int, data: bytes, cookie: int = 0) -> None:
        """A packet the pipeline sent us (DHCP, DNS, too big): answer it on that switch;
        or a logged ACL rule's copy: log it. Runs in the OpenFlow app's thread: no lock,
        no I/O but the answer."""
        host = self.host_of_dpid(session.dpid)
        if host is None or not self.leading():
            return
        if table in ACL_RULE_TABLES:
            self._log_acl(host, cookie, data)
            return
        for port, frame in self.punt.handle(host, table, regs, in_port, data):
            session.packet_out(port, frame)

    def _parse(self, text: str) -> Tenant:
        try:
            return schema.load_tenant(text, self.hosts.keys())
        except schema.ValidationError as e:
            raise ApiError("tenant is invalid; nothing was changed", e.errors) from None

    def validate(self, yaml: str) -> dict:
        t = self._parse(yaml)
        self._check_mtus(t)
        return {"tenant": t.name, "switches": len(t.switches), "ports": len(t.ports)}

    def create(self, yaml: str) -> dict:
        return self._put(yaml, must_exist=False)

    def apply(self, yaml: str) -> dict:
        return self._put(yaml, must_exist=None)

    def _attachments(self, name: str, e: TenantEntry | None) -> dict[str, Attachment]:
        return {} if e is None else attachments_of(e.tenant, e.alloc.ofport, self.switch_mtus(e.tenant))

    def host_mtu(self, host: str) -> int:
        """The largest frame a workload on `host` may send into the overlay: its uplink's
        MTU less the encapsulation (VXLAN over IPv4: 50 bytes)."""
        rec = self.hosts.get(host)
        uplink = (rec.info.get("mtu") if rec else None) or DEFAULT_UPLINK_MTU
        return uplink - VXLAN_OVERHEAD

    def underlay_mtus(self, t: Tenant) -> dict[str, tuple[int, list[str]]]:
        return compiler.underlay_mtus(t, self._placement())

    def switch_mtus(self, t: Tenant) -> dict[str, int]:
        return compiler.switch_mtus(t, self._placement())

    def _check_mtus(self, t: Tenant) -> None:
        under = self.underlay_mtus(t)
        errors = [(f"spec.switches[{i}].mtu",
                   f"{s.mtu} is more than the underlay carries: {', '.join(under[s.name][1])} "
                   f"carr{'ies' if len(under[s.name][1]) == 1 else 'y'} at most {under[s.name][0]} "
                   f"(uplink MTU less {VXLAN_OVERHEAD} bytes of VXLAN)")
                  for i, s in enumerate(t.switches) if s.mtu and s.mtu > under[s.name][0]]
        if errors:
            raise ApiError("tenant is invalid; nothing was changed", errors)

    def _put(self, text: str, must_exist: bool | None) -> dict:
        t = self._parse(text)
        with self.changes.track(t.name, "create" if must_exist is False else "apply") as change, self.mutex:
            change.phase("compiling")
            old = self.tenants.get(t.name)
            if must_exist is False and old is not None:
                raise ApiError(f"tenant {t.name} already exists (use 'nvctl tenant apply' to change it)")
            if old is not None:
                t = self._keep_api_ports(t, old.tenant)
            self._check_mtus(t)
            new, changed = self._commit(t, old)
            attach_errors = self._reattach(t.name, old, new, change)
            results = self.reconcile_many(changed, old.flows if old else {}, new.flows, change)
        return self._result(t.name, "updated" if old else "created", results, attach_errors)

    def _keep_api_ports(self, t: Tenant, old: Tenant) -> Tenant:
        """A YAML applied over a tenant keeps the ports the API made that it does not name
        (a YAML port of the same name replaces one)."""
        named = {p.name for p in t.ports}
        kept = [p for p in old.ports if p.made_by != "yaml" and p.name not in named and p.switch in
                {s.name for s in t.switches}]
        if not kept:
            return t
        doc = schema.to_doc(t)
        doc["spec"]["ports"] += schema.to_doc(dataclasses.replace(old, ports=tuple(kept)))["spec"]["ports"]
        return self._validated(doc, f"tenant {t.name}: the YAML conflicts with ports made by the API "
                                    f"({', '.join(p.name for p in kept)}); nothing was changed")

    def _validated(self, doc: dict, message: str) -> Tenant:
        try:
            return schema.validate(doc, self.hosts.keys())
        except schema.ValidationError as e:
            raise ApiError(message, e.errors) from None

    def _change(self, t: Tenant, old: TenantEntry, action: str) -> dict:
        """Commit t over old, attach, reconcile (under the mutex)."""
        self._check_mtus(t)
        new, changed = self._commit(t, old)
        attach_errors = self._reattach(t.name, old, new)
        results = self.reconcile_many(changed, old.flows, new.flows)
        return self._result(t.name, action, results, attach_errors)

    def _switch(self, tenant: str, switch: str):
        """(tenant entry, switch) or an ApiError naming what is missing."""
        e = self.tenants.get(tenant)
        if e is None:
            raise ApiError(f"no tenant {tenant!r}")
        names = [s.name for s in e.tenant.switches]
        if switch not in names:
            raise ApiError(f"tenant {tenant} has no switch {switch!r}", [("--switch", f"one of {', '.join(names)}")])
        return e, e.tenant.switch(switch)

    def _held(self, tenant: str, switch: str) -> dict[str, float]:
        """The switch's addresses held for runtimes, the expired ones dropped (under the mutex)."""
        now = self.clock()
        held = self.holds.setdefault((tenant, switch), {})
        for ip in [ip for ip, until in held.items() if until <= now]:
            del held[ip]
        return held

    def switch_info(self, tenant: str, switch: str) -> dict:
        """What a runtime's network needs to agree with: the switch's CIDRs, gateway, MTU."""
        with self.mutex:
            e, sw = self._switch(tenant, switch)
            svc = e.tenant.service(switch)
            return {"tenant": tenant, "switch": switch, "cidr": str(sw.cidr),
                    "cidr6": str(sw.cidr6) if sw.cidr6 else None, "mtu": self.switch_mtus(e.tenant)[switch],
                    "gateway": str(svc.router) if svc.router else None}

    def ipam_hold(self, tenant: str, switch: str, ip: str | None = None, seconds: float = HOLD_SECONDS) -> dict:
        """An address of the switch kept for a runtime that makes the port next (Docker asks
        its IPAM driver before its network driver makes the endpoint): no `port add` and no
        other hold gets it until a port takes it, it is released, or `seconds` pass."""
        from topology import ipam
        with self.mutex:
            e, sw = self._switch(tenant, switch)
            held = self._held(tenant, switch)
            if ip is None:
                try:
                    addr = ipam.next_ipv4(e.tenant, switch, held)
                except ipam.AddressesExhausted as ex:
                    raise ApiError(f"tenant {tenant}: no address held", [("ip", str(ex))]) from None
            else:
                try:
                    addr = ipaddress.ip_address(ip)
                except ValueError:
                    raise ApiError(f"{ip!r} is not an IP address", [("ip", "not an address")]) from None
                if addr not in sw.cidr:
                    raise ApiError(f"{addr} is not in switch {switch}'s {sw.cidr}", [("ip", "outside the switch")])
                if addr in ipam.used_addresses(e.tenant, switch) or str(addr) in held:
                    raise ApiError(f"{addr} is in use on {tenant}/{switch}", [("ip", "in use")])
            held[str(addr)] = self.clock() + seconds
            return {"tenant": tenant, "switch": switch, "ip": str(addr), "prefixlen": sw.cidr.prefixlen,
                    "seconds": seconds}

    def ipam_release(self, tenant: str, switch: str, ip: str) -> dict:
        """Give back a held address (a port that took it keeps it)."""
        with self.mutex:
            return {"released": self.holds.get((tenant, switch), {}).pop(ip, None) is not None}

    def port_add(self, tenant: str, switch: str, name: str | None = None, ip: str = "auto",
                 mac: str | None = None, host: str | None = None, workload: bool = True,
                 ip6: str | None = None, made_by: str = "api", container_id: str | None = None) -> dict:
        """A port made by the API: stored with the tenant (marked madeBy: api), with the
        lowest free address of the switch unless `ip` is given, on the least busy host
        unless `host` is, and every policy a YAML port of that switch gets."""
        from topology import ipam
        with self.mutex:
            e, _ = self._switch(tenant, switch)
            t = e.tenant
            held = self._held(tenant, switch)
            names = {p.name for p in t.ports}
            if name is None:
                name = next(f"{switch}-{k}" for k in range(1, len(names) + 2) if f"{switch}-{k}" not in names)
            elif name in names:
                raise ApiError(f"tenant {tenant} already has a port {name!r}", [("--name", "taken")])
            if host is None:
                if not self.hosts:
                    raise ApiError("no host is registered to put the port on")
                load = {h: 0 for h in self.hosts}
                for other in self.tenants.values():
                    for p in other.tenant.ports:
                        if p.host in load:
                            load[p.host] += 1
                host = min(sorted(load), key=load.get)
            if ip in (None, "auto"):
                try:
                    ip = str(ipam.next_ipv4(t, switch, held))
                except ipam.AddressesExhausted as ex:
                    raise ApiError(f"tenant {tenant}: no port added", [("--ip", str(ex))]) from None
            if made_by not in schema.MADE_BY or made_by == "yaml":
                raise ApiError(f"made_by {made_by!r}: one of {', '.join(schema.MADE_BY[1:])}")
            item = {"name": name, "switch": switch, "ip": ip, "host": host, "madeBy": made_by}
            if mac:
                item["mac"] = mac
            if ip6:
                item["ip6"] = ip6
            if not workload:
                item["workload"] = False
            if container_id:
                item["containerId"] = container_id
            doc = schema.to_doc(t)
            doc["spec"]["ports"].append(item)
            new_t = self._validated(doc, f"tenant {tenant}: port {name} is invalid; nothing was changed")
            out = self._change(new_t, e, f"added port {name}")
            held.pop(ip, None)  # a held address, taken by its port
        out["port"] = self.port_attachment(tenant, name)
        return out

    def port_attachment(self, tenant: str, port: str) -> dict:
        """All that plugging the port's interface needs (a CNI plugin on its host): where
        (host, its br-int's OVSDB and namespace in the lab, ofport, iface-id, the host-side
        interface name) and what (MAC, addresses, MTU, gateways, DNS)."""
        from tep.driver import host_ifname
        e, p = self._port(tenant, port)
        t = e.tenant
        sw, svc = t.switch(p.switch), t.service(p.switch)
        rr = t.router_of(p.switch)
        info = self.hosts[p.host].info if p.host in self.hosts else {}
        return {"tenant": tenant, "name": port, "switch": p.switch, "host": p.host, "ip": str(p.ip),
                "prefixlen": sw.cidr.prefixlen, "mac": p.mac, "mtu": self.switch_mtus(t)[p.switch],
                "gateway": str(svc.router) if svc.router else None,
                **({"ip6": str(p.ip6), "prefixlen6": sw.cidr6.prefixlen,
                    "gateway6": str(rr[1].ip6) if rr and rr[1].ip6 else None} if p.ip6 else {}),
                "dns": str(svc.ip) if sw.dhcp else None, "domain": t.domain,
                "ofport": e.alloc.ofport[port], "iface_id": f"{tenant}/{port}", "workload": p.workload,
                "made_by": p.made_by, "container_id": p.container_id, "host_ifname": host_ifname(tenant, port),
                "namespace": self.driver.namespace(tenant, port, p.host) if p.workload else None,
                "host_netns": info.get("netns"), "host_ovsdb": info.get("ovsdb") if info.get("netns") else None}

    def port_del(self, tenant: str, port: str) -> dict:
        """Remove a port (any port; one the YAML names comes back with the next apply)."""
        with self.mutex:
            e, p = self._port(tenant, port)
            doc = schema.to_doc(e.tenant)
            doc["spec"]["ports"] = [d for d in doc["spec"]["ports"] if d["name"] != port]
            new_t = self._validated(doc, f"tenant {tenant}: port {port} is still named by its policy; "
                                         f"nothing was changed")
            return self._change(new_t, e, f"deleted port {port}")

    def migrate(self, tenant: str, port: str, to: str) -> dict:
        """Move a port to another host, make-before-break: the destination gets the
        port's flows and a second attachment of the workload; then every other host
        switches to the new PA in one bundle each, then the source; only then does the
        old attachment go. While the hosts switch, both attachments deliver, so no
        packet needs a place that is not there yet."""
        with self.mutex:
            e, p = self._port(tenant, port)
            if to not in self.hosts:
                raise ApiError(f"no host {to!r} (hosts: {', '.join(sorted(self.hosts))})")
            if to == p.host:
                raise ApiError(f"{tenant}/{port} is already on {to}")
            src = p.host
            t = dataclasses.replace(e.tenant, ports=tuple(
                dataclasses.replace(q, host=to) if q.name == port else q for q in e.tenant.ports))
            new, changed = self._commit(t, e)
            flows = new.flows
            old_att = self._attachments(tenant, e)[port]
            new_att = self._attachments(tenant, new)[port]
            t0 = self.clock()
            first = self.reconcile_many({to} & changed, e.flows, flows)  # 1. the destination's flows
            self.driver.prepare_move(new_att)  # 2. and the workload attached there too
            t1 = self.clock()
            rest = self.reconcile_many(changed - {to, src}, e.flows, flows)  # 3. every other host: the new PA
            t2 = self.clock()
            rest.update(self.reconcile_many({src} & changed, e.flows, flows))  # 4. the source: local traffic too
            t3 = self.clock()
            self.driver.finish_move(old_att)  # 5. break: the old attachment goes
            t4 = self.clock()
        results = {**first, **rest}
        out = self._result(tenant, f"migrated {port} {src} -> {to}", results, [])
        out.update(port=port, src=src, dst=to, ofport=new.alloc.ofport[port], timings_ms={
            "destination_ready": round((t1 - t0) * 1000, 1), "other_hosts_switched": round((t2 - t1) * 1000, 1),
            "source_switched": round((t3 - t2) * 1000, 1), "old_attachment_removed": round((t4 - t3) * 1000, 1),
            "switch_window": round((t3 - t1) * 1000, 1)})
        return out

    def delete(self, name: str) -> dict:
        with self.mutex:
            old = self.tenants.get(name)
            if old is None:
                raise ApiError(f"no tenant {name!r}")
            self.store.delete_tenant(name, old.revision)
            self._replace_entry(name, None)
            changed = self.desired.swap(old.flows, {})
            attach_errors = self._reattach(name, old, None)
            results = self.reconcile_many(changed, old.flows, {})
        return self._result(name, "deleted", results, attach_errors)

    def _reattach(self, name: str, old: TenantEntry | None, new: TenantEntry | None, change=None) -> list[str]:
        if not self.leading():  # deposed since the write: the next leader attaches (ensure_workloads)
            return []
        before, after = self._attachments(name, old), self._attachments(name, new)
        errors = []
        moved = set()
        for port, a in before.items():
            b = after.get(port)
            if b is not None and b.host != a.host:
                try:
                    self.driver.move(a, b)
                    moved.add(port)
                except Exception as e:
                    errors.append(f"move {name}/{port} from {a.host} to {b.host}: {e}")
            elif b is None or b.ofport != a.ofport:  # else: updated in place
                try:
                    self.driver.unplug(a)
                except Exception as e:
                    errors.append(f"detach {name}/{port} from {a.host}: {e}")
        errors += self._plug_all([a for port, a in after.items() if before.get(port) != a], change)
        return errors

    def _plug_all(self, attachments: list, change=None) -> list[str]:
        """Plug workloads, several at once: each is a handful of netlink calls and OVSDB
        transactions that mostly wait (100 ports: 15 s one by one). `change` counts them."""
        if change is not None:
            change.workloads(len(attachments))
        if len(attachments) > 1 and hasattr(self.driver, "plug_many"):  # one OVSDB transaction per host
            return self.driver.plug_many(attachments, PLUG_WORKERS, change.plugged if change is not None else None)

        def plug(a):
            try:
                self.driver.plug(a)
                return None
            except Exception as e:
                return f"attach {a.tenant}/{a.port} to {a.host}: {e}"
            finally:
                if change is not None:
                    change.plugged()
        if len(attachments) <= 1:
            return [e for e in map(plug, attachments) if e]
        with ThreadPoolExecutor(max_workers=PLUG_WORKERS) as pool:
            return [e for e in pool.map(plug, attachments) if e]

    def ensure_workloads(self) -> list[str]:
        """At start (and on taking over): every wanted workload attached, no stale one
        left behind. What is in place is checked cheaply (the driver's `attached`: one
        OVSDB read and one link dump per host) and only the rest is plugged. Runs
        outside the core's lock: it reads a snapshot of the tenants."""
        with self.mutex:
            entries = list(self.tenants.items())
        wanted, atts = set(), []
        for name, e in entries:
            for a in self._attachments(name, e).values():
                ns = self.driver.namespace(a.tenant, a.port, a.host)
                if ns:
                    wanted.add(ns)
                atts.append(a)
        t0 = self.clock()
        ok = self.driver.attached(atts)
        todo = [a for a in atts if (a.tenant, a.port) not in ok]
        errors = self._plug_all(todo)
        self.driver.collect_garbage(wanted)
        LOG.info("workloads: %d in place, %d plugged, %d errors in %.0f ms", len(ok), len(todo), len(errors),
                 (self.clock() - t0) * 1000)
        return errors

    def ensure_workloads_in_background(self) -> None:
        self.plugging = True

        def run():
            try:
                for e in self.ensure_workloads():
                    LOG.error("workloads: %s", e)
            finally:
                self.plugging = False
        threading.Thread(target=run, name="ensure-workloads", daemon=True).start()

    def _result(self, name, action, results, attach_errors) -> dict:
        return {"tenant": name, "action": action,
                "hosts": {h: ("not connected" if n is None and self.state[h].session is None
                              else "left to the next leader (this controller stepped down)"
                              if n is None and not self.leading()
                              else self.state[h].error if n is None else f"{n} flow-mods")
                          for h, n in sorted(results.items())},
                "attach_errors": attach_errors}

    # ------------------------------------------------------------------------------
    # reading
    # ------------------------------------------------------------------------------
    def host_status(self, host: str) -> dict:
        st = self.state.get(host, HostState())
        want = self.desired.get(host, {})
        with st.lock:
            synced = reconciler.in_sync(st, want)
        return {
            "connected": st.session is not None,
            "flows_desired": len(want),
            "in_sync": synced,
            "workloads_ready": not self.plugging,  # the start-up (or take-over) check of workloads is done
            "drift_corrected": st.drift_corrected,
            "flow_mods_sent": st.flow_mods,
            "bundles": st.bundles,
            "syncs": st.syncs,
            "last_sync_flow_mods": st.last_sync_mods,
            "error": st.error,
        }

    def list_hosts(self, check: bool = False) -> list[dict]:
        """Every host and whether its switch holds exactly its desired state. With
        `check`, each switch is read again first (and any drift corrected), so the answer
        is about the switches, not the controller's memory of them."""
        found = self.audit_all() if check else {}
        return [{"name": h.name, "pa": h.pa, "dpid": f"{h.dpid:016x}", "uplink_mtu": h.info.get("mtu"),
                 "overlay_mtu": self.host_mtu(h.name), **self.host_status(h.name),
                 **({"drift": found[h.name]} if h.name in found else {})}
                for h in sorted(self.hosts.values(), key=lambda h: h.name)]

    def list_tenants(self) -> list[dict]:
        return [{"name": n, "revision": e.revision, "switches": len(e.tenant.switches),
                 "ports": len(e.tenant.ports), "tenant_id": e.alloc.tenant_id}
                for n, e in sorted(self.tenants.items())]

    def show(self, name: str) -> dict:
        e = self.tenants.get(name)
        if e is None:
            raise ApiError(f"no tenant {name!r}")
        ports = []
        for p in e.tenant.ports:
            st = self.state.get(p.host)
            bound = None
            if st is not None and st.session is not None:
                bound = st.session.ports().get(e.alloc.ofport[p.name]) is not None
            ports.append({"name": p.name, "switch": p.switch, "ip": str(p.ip), "mac": p.mac,
                          **({"ip6": str(p.ip6)} if p.ip6 is not None else {}),
                          "host": p.host, "ofport": e.alloc.ofport[p.name],
                          "up": p.host in self.hosts and bool(bound), "madeBy": p.made_by,
                          **({"containerId": p.container_id} if p.container_id else {}),
                          "namespace": self.driver.namespace(name, p.name, p.host) if p.workload else None})
        hosts = {}
        for h in sorted({p.host for p in e.tenant.ports} | set(e.flows)):
            if h not in self.hosts:
                hosts[h] = {"flows": 0, "installed": False, "note": "host is not registered"}
                continue
            st = self.state[h]
            mine = e.flows.get(h, ())
            with st.lock:
                have = st.installed
                installed = (st.session is not None and have is not None
                             and all(have.get(f.identity) == f for f in mine))
            hosts[h] = {"flows": len(set(mine)), "installed": installed, "connected": st.session is not None}
        return {"spec": schema.to_doc(e.tenant), "revision": e.revision,
                "ids": {"tenant_id": e.alloc.tenant_id, "vni": e.alloc.vni},
                "mtu": self.switch_mtus(e.tenant),
                "ports": ports, "hosts": hosts}

    def trace(self, tenant: str, port: str, packet: str, real: bool = False) -> dict:
        """Simulate `packet` sent by tenant/port through every host it crosses; with
        real=True also ask each host's OVS (ofproto/trace) and compare."""
        from controller.analysis import trace as tr
        e, p = self._port(tenant, port)
        if p.host not in self.hosts:
            raise ApiError(f"{tenant}/{port} is on {p.host}, which is not a registered host")
        try:
            proto, fields = tr.parse_spec(packet)
            pkt = tr.build_packet(e.tenant, p, proto, fields)
        except tr.TraceError as ex:
            raise ApiError(f"packet {packet!r}: {ex}") from None
        pas = {h: rec.pa for h, rec in self.hosts.items()}
        by_pa = {v: k for k, v in pas.items()}
        names = {e2.alloc.tenant_id: n for n, e2 in self.tenants.items()}
        where = {}
        for n, e2 in self.tenants.items():
            for q in e2.tenant.ports:
                where[(q.host, e2.alloc.ofport[q.name])] = f"{n}/{q.name}"
        fabric = tr.simulate(self.desired, pas, p.host, e.alloc.ofport[p.name], pkt)

        def label(host, item):
            if item[0] == "tunnel":
                return f"vxlan to {by_pa.get(item[1], item[1])} ({item[1]}) vni {item[2]}"
            return f"port {where.get((host, item[1]), item[1])} (ofport {item[1]})"

        hops = []
        for host, in_port, pkt_in, fate in fabric.hops:
            tables = []
            for h in fate.path:
                row = {"table": h.table}
                if h.flow is not None:
                    row.update(tr._flow_row(h.flow, names))
                tables.append(row)
            sim = tr.hop_outputs(fate)
            came = (f"vxlan from {by_pa.get(pkt_in.get('tun_ipv4_src'), '?')}"
                    if in_port == tr.TUNNEL_OFPORT else where.get((host, in_port), in_port))
            hop = {"host": host, "in_port": came, "tables": tables,
                   "outputs": [label(host, o) for o in sim]}
            if not sim:
                last = fate.decided_by()
                hop["dropped_by"] = tr._flow_row(last, names) if last else {"rule": "no flow"}
            if real:
                rundir = self.hosts[host].info.get("rundir")
                if not rundir:
                    hop["real"] = {"error": "host has no local OVS run directory"}
                else:
                    got, raw = tr.real_hop(rundir, in_port, pkt_in)
                    hop["real"] = {"outputs": [label(host, o) for o in got], "agree": got == sim,
                                   "flow": tr.ofctl_flow(in_port, pkt_in)}
                    if tr.DATAPATH_HASH in raw:
                        hop["real"].update(agree=None, note="OVS picks the select group's bucket by a "
                                           "datapath hash; ofproto/trace cannot follow it")
            hops.append(hop)
        delivered = [where.get((host, port_), f"{host}:{port_}")
                     for host, _i, _p, fate in fabric.hops for port_ in fate.ports()
                     if port_ != tr.TUNNEL_OFPORT]
        return {"packet": tr.ofctl_flow(e.alloc.ofport[p.name], pkt), "from": f"{tenant}/{port}",
                "host": p.host, "hops": hops, "delivered": delivered,
                "agree": all(h["real"].get("agree") is not False for h in hops) if real else None}

    def verify(self, tenant: str | None = None, host: str | None = None) -> dict:
        """`nvctl verify`: isolation and policy proved over the flows installed now."""
        if tenant is not None and tenant not in self.tenants:
            raise ApiError(f"no tenant {tenant!r}")
        if host is not None and host not in self.hosts:
            raise ApiError(f"no host {host!r} (hosts: {', '.join(sorted(self.hosts))})")
        from controller.analysis import installed
        r = installed.verify(self, tenant, host)
        if host is None:
            self.verified[tenant or ""] = (time.time(), bool(r.get("ok")), len(r.get("violations") or ()))
        return r

    # ------------------------------------------------------------------------------
    # counters, drops and ACL logs (controller.analysis.stats, controller.packetin.acl_log)
    # ------------------------------------------------------------------------------
    def _read_counters(self, entries: dict) -> dict:
        """{tenant: ({host: stats.Reading}, {host: why not read})} for the tenants in
        `entries` ({name: TenantEntry}): their flows' counters, the meters, the groups.
        For one tenant only its cookies cross the wire; for several, each host's whole
        flow table is read once and split by the cookies' tenant bits."""
        mask = COOKIE_TENANT_MAX << COOKIE_TENANT_SHIFT
        one_tid = next(iter(entries.values())).alloc.tenant_id if len(entries) == 1 else None
        want_groups = any(e.tenant.load_balancers for e in entries.values())
        hosts = sorted(set().union(*(e.flows for e in entries.values())) & set(self.hosts)) if entries else []
        got, failed = {}, {}

        def one(h):
            st = self.state.get(h)
            s = st.session if st is not None else None
            if s is None:
                failed[h] = "not connected"
                return
            try:
                fl = s.flow_counts(one_tid << COOKIE_TENANT_SHIFT, mask) if one_tid is not None else s.flow_counts()
                got[h] = (fl, s.meter_counts(), s.group_counts() if want_groups else {})
            except Exception as ex:  # noqa: BLE001 - one host's answer missing is reported, not fatal
                failed[h] = str(ex)
        if len(hosts) == 1:
            one(hosts[0])
        elif hosts:
            list(self._readers.map(one, hosts))  # not the reconcilers: a stuck read never delays a change
        split: dict = {}  # host -> tenant id -> its counts
        if one_tid is None:
            for h, (fl, _m, _g) in got.items():
                by = split[h] = {}
                for c in fl:
                    tid = (c[0] >> COOKIE_TENANT_SHIFT) & COOKIE_TENANT_MAX
                    lst = by.get(tid)
                    if lst is None:
                        lst = by[tid] = []
                    lst.append(c)
        out = {}
        for name, e in entries.items():
            tid = e.alloc.tenant_id
            readings, errors = {}, {}
            for h in e.flows:
                if h in failed:
                    errors[h] = failed[h]
                elif h in got:
                    fl, meters, groups = got[h]
                    readings[h] = stats_mod.Reading(fl if one_tid is not None else split[h].get(tid, []),
                                                    meters, groups)
            out[name] = (readings, errors)
        return out

    def _cookies(self, e: TenantEntry, host: str) -> dict:
        """{cookie: Flow} of a tenant's flows on a host, kept until they are recompiled."""
        flows = e.flows.get(host, ())
        key = (e.alloc.tenant_id, host)
        got = self._cookie_index.get(key)
        if got is None or got[0] is not flows:
            got = self._cookie_index[key] = (flows, {f.cookie: f for f in flows})
        return got[1]

    def _report(self, name: str, e: TenantEntry, inc, stamp: int, readings: dict, errors: dict) -> dict:
        """The stats report of one tenant from readings taken after `stamp` was. Kept
        counts and samples belong to the tenant's incarnation `inc`: a reading that
        finishes after the tenant was deleted (and maybe made again) changes neither."""
        same = inc is not None and self._incarnation.get(name) == inc
        rep = stats_mod.report(e.tenant, e.alloc, e.flows, readings, self.book if same else None, errors,
                               cookies=lambda h: self._cookies(e, h), key=(name, inc), stamp=stamp)
        if same:
            with self._samples_lock:
                keep = self.samples.setdefault(name, [])
                if not keep or rep["time"] - keep[-1][0] >= SAMPLE_EVERY:
                    keep.append((rep["time"], stats_mod.drop_counts(rep)))
                while keep and (keep[0][0] < rep["time"] - STATS_KEEP_SECONDS or len(keep) > SAMPLES_KEPT):
                    keep.pop(0)
        return rep

    def stats(self, tenant: str) -> dict:
        """`nvctl stats`: the tenant's counters by intent, summed over its hosts."""
        e = self.tenants.get(tenant)
        if e is None:
            raise ApiError(f"no tenant {tenant!r}")
        inc, stamp = self._incarnation.get(tenant), self.book.stamp()
        readings, errors = self._read_counters({tenant: e})[tenant]
        return self._report(tenant, e, inc, stamp, readings, errors)

    def stats_all(self) -> dict:
        """Every tenant's `stats` report, from one read of each host."""
        entries = dict(self.tenants)
        if not entries:
            return {}
        incs, stamp = dict(self._incarnation), self.book.stamp()
        return {n: self._report(n, entries[n], incs.get(n), stamp, *r)
                for n, r in self._read_counters(entries).items()}

    def metrics_text(self) -> dict:
        """The Prometheus exposition text (controller.analysis.metrics)."""
        return {"text": self.metrics.text()}

    def drops(self, tenant: str, window: float = 60.0) -> dict:
        """`nvctl drops`: the tenant's drops by reason and rule, with what dropped since
        the earliest reading within `window` seconds (taken by stats, drops, metrics or
        the web view), and the last denials its logged rules wrote."""
        before = None
        now = time.time()
        with self._samples_lock:
            for t, counts in self.samples.get(tenant, ()):
                if t >= now - window:
                    before = (t, counts)
                    break
        rep = self.stats(tenant)
        rows = stats_mod.drops(rep, before[1] if before else None)
        denied = [x for x in self.acl_log.since(tenant, 0, 0) if x["verdict"] == "deny"][-10:]
        return {"tenant": tenant, "time": rep["time"], "since": before[0] if before else None,
                "drops": rows, "logged": denied, "unread": rep["unread"]}

    def logs(self, tenant: str, after: int = 0, limit: int = 1000) -> dict:
        """`nvctl logs`: what the tenant's logged ACL rules wrote, after sequence `after`."""
        if tenant not in self.tenants:
            raise ApiError(f"no tenant {tenant!r}")
        got = self.acl_log.since(tenant, after, limit)
        return {"tenant": tenant, "entries": got, "last": got[-1]["seq"] if got else after,
                "epoch": self.acl_log.epoch,
                "logged": [r.label for r in self.tenants[tenant].tenant.acls if r.log]}

    def _log_acl(self, host: str, cookie: int, data: bytes) -> None:
        tid = cookie_tenant(cookie)
        name = self._tid_name.get(tid)
        e = self.tenants.get(name) if name is not None else None
        if e is None:
            return
        flows = e.flows.get(host, ())
        cached = self._log_index.get((tid, host))
        if cached is None or cached[0] is not flows:
            cached = (flows, {f.cookie: f for f in flows if any(t[0] == "aclPort" for t in f.stat)})
            self._log_index[(tid, host)] = cached
        f = cached[1].get(cookie)
        if f is None:
            return
        index = next(t[1] for t in f.stat if t[0] == "acl")
        port = next(t[1] for t in f.stat if t[0] == "aclPort")
        rule = next((r for r in e.tenant.acls if r.index == index), None)
        if rule is not None:
            self.acl_log.add(name, host, rule, port, data)

    def port_info(self, tenant: str, port: str) -> dict:
        e, p = self._port(tenant, port)
        return {"tenant": tenant, "port": port, "host": p.host, "ip": str(p.ip), "mac": p.mac,
                "namespace": self.driver.namespace(tenant, port, p.host)}

    def flows(self, host: str, read_switch: bool = True) -> dict:
        if host not in self.hosts:
            raise ApiError(f"no host {host!r} (hosts: {', '.join(sorted(self.hosts))})")
        st = self.state[host]
        on_switch = None
        if read_switch and st.session is not None:
            try:
                on_switch = {f.identity: f for f in st.session.flows()}
            except Exception as e:
                raise ApiError(f"host {host}: could not read flows: {e}") from None
        names = self._tenant_names()
        desired = self.desired.get(host, {})
        rows = []
        for f in sorted(desired.values(), key=lambda f: (f.table.number, -f.priority, f.body)):
            got = None if on_switch is None else on_switch.get(f.identity)
            rows.append({"table": f.table.name, "layer": f.table.layer, "cookie": f"{f.cookie:#x}",
                         "tenant": names.get(f.tenant_id, ""), "rule": f.rule, "flow": f.body,
                         "installed": None if on_switch is None else got == f,
                         **({"on_switch": got.ofctl()} if got is not None and got != f else {})})
        extra = []
        if on_switch is not None:
            for i, f in sorted(on_switch.items(), key=lambda kv: (kv[0][0], -kv[0][1], kv[1].body)):
                if i not in desired:
                    layer = LAYER_BY_ID.get(cookie_layer(f.cookie))
                    extra.append({"cookie": f"{f.cookie:#x}", "table": f.table.name,
                                  "layer": layer.name if layer else "?", "flow": f.body,
                                  "tenant": names.get(cookie_tenant(f.cookie), "")})
        return {"host": host, "flows": rows, "unexpected": extra,
                "connected": st.session is not None}
