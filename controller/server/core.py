"""The controller core: the server's state, and the pieces that work on it.

`Core` holds the state (host records, tenants' intent and compiled flows, desired state
per host, switch sessions) and is made of one piece per job: intent.py (parse, check,
allocate, compile, store), ports.py (ports, IPAM holds, migration), hosts.py (registration
and join), switches.py (sessions, roles, reconcile, audit), bindings.py (ports bound to
the interfaces OVS has, by iface-id), workloads.py (the driver), views.py and counters.py
(read-only answers), owners.py (policy layers written by separate controllers). Every change goes through one path,
change.py (check -> commit -> attach -> rollout -> report), serialized by `mutex`; the
views kept from the inputs, and what brings each up to date, are declared in derived.py.

The core never imports os-ken: it talks to a `Switch` (see controller/switch/reconciler.py)
per host, and to a compute driver (tep.driver.Driver) it is given.
"""
from __future__ import annotations

import gc
import itertools
import logging
import threading
import time
from typing import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

from topology import schema
from controller.compile.allocator import Allocation, InUse
from controller.compile.compiler import Host, compile_host, compile_tenant, paused_gc
from controller.compile.desired import DesiredState
from controller.server.guard import Guard
from controller.server.peers import PeerTunnels
from controller.server.gateways import GatewaysMixin
from controller.server.progress import Changes
from controller.packetin.punt import Punt
from controller.analysis import stats as stats_mod
from controller.packetin.acl_log import AclLog
from controller.analysis.metrics import Metrics
from controller.switch.reconciler import HostState
from controller.state.store import HostRecord, Store
from controller.server.entry import TenantEntry
from controller.server.intent import IntentMixin
from controller.server.switches import SwitchesMixin
from controller.server.hosts import HostsMixin
from controller.server.ports import PortsMixin
from controller.server.bindings import BindingsMixin, Watch
from controller.server.vmmigrate import VmMigrationMixin
from controller.server.workloads import WorkloadsMixin
from controller.server.views import ViewsMixin
from controller.server.counters import CountersMixin
from controller.server.access import AccessMixin, Authenticator, AuditTrail
from controller.server.owners import OwnersMixin
from controller.server.health import HealthMixin
from controller.server.routes import Bgp, RoutesMixin
from controller.packetin.health import Monitor
from tep.driver import Driver, NoDriver


LOG = logging.getLogger("nvctl.core")
RECONCILE_WORKERS = 16  # hosts reconciled at once


def freeze_heap() -> None:
    """For the controller process, once its state is loaded: move every object alive
    now (hundreds of thousands of flows) out of the cyclic collector's reach. They live
    as long as the process; without this, each full collection walks all of them again
    (tens of ms, in the middle of some change)."""
    gc.collect()
    gc.freeze()


class Core(SwitchesMixin, HostsMixin, GatewaysMixin, IntentMixin, PortsMixin, BindingsMixin, WorkloadsMixin,
           ViewsMixin, CountersMixin, AccessMixin, VmMigrationMixin, OwnersMixin, HealthMixin, RoutesMixin):
    def __init__(self, store: Store, make_driver: Callable[[Mapping[str, HostRecord]], Driver] = NoDriver,
                 clock=time.monotonic):
        """`make_driver(hosts)` gives the compute driver that plugs workloads (the lab's:
        tep.driver.LabDriver); `hosts` is the core's live view of the host records."""
        self.store = store
        self.clock = clock
        self.mutex = threading.Lock()
        self._reconcilers = ThreadPoolExecutor(max_workers=RECONCILE_WORKERS, thread_name_prefix="reconcile")
        self._readers = ThreadPoolExecutor(max_workers=RECONCILE_WORKERS, thread_name_prefix="counters")
        self.hosts: dict[str, HostRecord] = {h.name: h for h in store.hosts()}  # changed by _set_host only
        self._placement_cache: dict[str, Host] | None = None
        self.driver: Driver = make_driver(self.hosts)
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
        self.guard = Guard()  # verify before install (controller.server.guard); main may switch it off
        self.proved: dict | None = None  # the guard's entry for the change being committed
        self.metrics = Metrics(self)
        self.changes = Changes()  # each create/apply's phase and counts, for the `progress` op (no mutex)
        self.authenticator = Authenticator(store)  # network API tokens (controller.server.access)
        self.audit_trail = AuditTrail(store)  # every request, allowed or refused; main starts its writer
        self.watch = Watch()  # the interfaces on each host's br-int and the reads due (bindings.py; its own lock)
        self.vm_moves: dict = {}  # (tenant, port) -> VmMove: live migrations under way (vmmigrate.py; the mutex)
        self.peers = PeerTunnels()  # each host's BFD ports toward possible gateways (peers.py)
        self.activating: set = set()  # (tenant, port, host) whose announcement is being acted on (vmmigrate.py)
        self.health = Monitor()  # load balancers' backend health checks (health.py)
        self._health_retry: dict = {}  # tenant -> when a health change that failed may be tried again
        self.bgp = Bgp()  # BGP speakers toward the provider's routers (routes.py); main starts them
        for rec in store.tenants():
            t = schema.validate(rec.doc, None)
            self._replace_entry(rec.name, TenantEntry(t, Allocation.from_json(rec.alloc), rec.revision, {},
                                                      rec.layers))
        self._recompile_all()

    def _placement(self) -> dict[str, Host]:
        """Every host as the compiler sees it; kept until a host record changes
        (_set_host), since a change asks for it several times (at 100 hosts ~1.4 ms each)."""
        if self._placement_cache is None:
            out = {}
            for n, h in self.hosts.items():
                ext = h.info.get("external")
                out[n] = Host(n, h.pa, (ext["ofport"], ext["next_hop_mac"]) if ext else None, self.host_mtu(n),
                              h.info.get("peer_port") if ext else None, ext.get("address") if ext else None,
                              ext.get("network") if ext else None)
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
            e.extras = {}
        self.desired, conflicts = DesiredState.build(self.infra, (e.flows for e in self.tenants.values()))
        names = self._tenant_names()
        for c in conflicts:  # stored by a version that did not refuse them: the first holder keeps it
            LOG.error("flow identity conflict in the stored tenants: %s", c.describe(names))

    def _tenant_names(self) -> dict[int, str]:
        return {e.alloc.tenant_id: n for n, e in self.tenants.items()}
