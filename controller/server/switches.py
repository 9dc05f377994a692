"""Switch sessions, OpenFlow roles, a cluster's take-over, reconcile and audit.

A piece of `Core` (controller/server/core.py): the state it uses is made in
`Core.__init__`."""
from __future__ import annotations

import json
import logging
import threading
import time

from dataplane.match_action import Flow
from topology import schema
from controller.compile.allocator import Allocation
from controller.compile.compiler import compile_tenant
from controller.layers.acl import FromPortAcl, ToPortAcl
from controller.layers.netpol import EgressPolicy, IngressPolicy
from controller.switch import reconciler
from controller.switch.reconciler import HostState
from controller.compile.desired import HostDelta
from controller.state.store import HostRecord
from controller.server.errors import ApiError, unknown_host
from controller.server.entry import TenantEntry
from tep.ovs import Ovsdb

LOG = logging.getLogger("nvctl.core")
_NOTHING = HostDelta((), ())  # a host the change did not touch
# logged rules' packet-ins: ACLs' and network policies'
ACL_RULE_TABLES = frozenset({FromPortAcl.rules_table, ToPortAcl.rules_table,
                             EgressPolicy.rules_table, IngressPolicy.rules_table})


class SwitchesMixin:
    def host_of_dpid(self, dpid: int) -> str | None:
        for name, h in self.hosts.items():
            if h.dpid == dpid:
                return name
        return None

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
            self.load_learned()  # what the last leader learned over BGP: its flows stay (routes.py)
            for host, st in self.state.items():
                if st.session is not None:
                    self._claim_role(host, st.session)
                    st.forget()
            results = self.reconcile_many(self.hosts)
        for h in results:  # bind what a follower only watched
            self.watch_interfaces(h)
        for h, n in results.items():
            st = self.state[h]
            if n is None:
                continue  # not connected yet: its connect-time sync will count
            st.syncs += 1
            st.last_sync_mods = n
            st.synced_session = st.session
        LOG.info("took over as leader (generation %d) in %.0f ms: flow-mods %s", generation,
                 (self.clock() - t0) * 1000, results)
        self.number_hosts()  # hosts stored before peer-tunnel numbers existed
        self.ensure_peer_tunnels(list(self.hosts))  # what the last leader left half-done (a host fenced)
        self.ensure_workloads_in_background()
        self.start_bgp()  # the leader speaks BGP for the platform (routes.py)
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
                    or e.alloc.to_json() != rec.alloc or e.layers != rec.layers:
                self._follow_tenant(name, rec)

    def catch_up(self) -> None:
        with self.mutex:
            self._catch_up()

    def hand_over(self, generation: int) -> None:
        """No longer leading: stop writing; say slave to the switches that still listen."""
        self.stop_bgp(graceful=True)  # the peers keep our routes until the next leader speaks
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
            new = TenantEntry(t, alloc, rec.revision, compile_tenant(t, alloc, self._placement()), rec.layers)
        self._replace_entry(name, new)
        self.desired.swap(old.flows if old else {}, new.flows if new else {})

    def follow_tenant(self, name: str, value: dict | None, version: int) -> None:
        """A follower: the leader stored this tenant (None: deleted); compile it, send nothing."""
        from controller.state.store import TenantRecord
        with self.mutex:
            self._follow_tenant(name, None if value is None else
                                TenantRecord(name, value["doc"], value["alloc"], version,
                                             value.get("layers") or {}))

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
        self.watch_interfaces(host)  # its port descriptions are in: which iface-id is where
        self._claim_role(host, session)
        if not self.leading():
            LOG.info("host %s connected (this controller follows: nothing sent)", host)
            return
        t0 = time.perf_counter()
        n = self.reconcile(host)
        st.syncs += 1
        st.last_sync_mods = n
        st.synced_session = session  # last: in_sync is not reported before the figures above
        LOG.info("host %s connected: sync sent %s flow-mods in %.0f ms", host, n, (time.perf_counter() - t0) * 1000)
        if n is not None:  # its flows are in: its peers may choose it again (peers.py)
            self.ensure_peer_tunnels([host])

    def ensure_peer_tunnels(self, hosts) -> None:
        """Each of `hosts`' BFD ports toward the possible gateways, BFD on where the
        host's switch is connected and in sync (leader only)."""
        if not self.leading():
            return
        for h in hosts:
            st = self.state.get(h)
            on = st is not None and st.session is not None and st.synced_session is st.session
            self.peers.ensure(h, self.hosts.get(h), self.hosts, on)

    def switch_disconnected(self, session) -> None:
        if self.unclaimed.get(session.dpid) is session:
            del self.unclaimed[session.dpid]
        host = self.host_of_dpid(session.dpid)
        st = self.state.get(host) if host else None
        if st is not None and st.session is session:
            st.session = None
            st.forget()
            LOG.info("host %s disconnected", host)
            self.fence_later(host)  # if its switch died: BFD off, not chosen again before its flows are back

    def reconcile(self, host: str, delta=None) -> int | None:
        """Bring one host's switch to its desired state (see controller.switch.reconciler).
        Returns messages sent, or None when the host is not connected or refused.
        `delta` (controller.compile.desired.HostDelta): the one tenant's change on this host."""
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

    def reconcile_many(self, hosts, deltas: dict | None = None, change=None) -> dict[str, int | None]:
        """Reconcile several hosts at once. With `deltas` (host -> HostDelta of one
        tenant's change), each host compares only what that change took away and brought.
        `change` (controller.server.progress.Change) counts the hosts done. Switches that
        answer in memory (`inline`) are handed their changes one after another on this
        thread; real ones in the pool, so that their barrier waits overlap."""
        hosts = sorted(hosts)
        results: dict[str, int | None] = {h: None for h in hosts}
        live = [h for h in hosts if h in self.state and self.state[h].session is not None]
        if change is not None:
            change.hosts(len(live))

        def one(h):
            results[h] = self.reconcile(h, None if deltas is None else deltas.get(h, _NOTHING))
            if change is not None:
                change.synced()
        if len(live) == 1 or all(getattr(self.state[h].session, "inline", False) for h in live):
            for h in live:
                one(h)
        else:  # each waits on its own switch's barrier: overlap them
            list(self._reconcilers.map(one, live))
        return results

    def resync(self, name: str) -> dict:
        """Re-read one host's flows, meters and groups from the switch and repair any
        difference (flows deleted or added by hand), without reconnecting."""
        st = self.state.get(name)
        if st is None:
            raise unknown_host(name, self.hosts)
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
        if table == "activation":  # a migrating VM's announcement from its new host
            self.activation_seen(host, in_port, data)
            return
        if table == "lb_monitor":  # a backend's answer to a health probe (health.py)
            for frame in self.health_answer(host, regs, data):
                session.packet_out(in_port, frame)
            return
        for port, frame in self.punt.handle(host, table, regs, in_port, data):
            session.packet_out(port, frame)
