"""One controller of a cluster on etcd: membership, leader election, fencing, and
following the leader's changes.

Every member holds a lease (TTL `LEASE_TTL`) kept alive every TTL/4, and a key
members/NAME on it. Leadership is the key `leader`, created on the member's lease by a
transaction that succeeds only if no such key exists; its create revision is the
election's number. The leader:
  - takes the OpenFlow master role on every switch with that number as generation id,
    so a switch refuses a deposed leader (its connection is demoted to slave; a master
    request with an older generation is refused as stale);
  - writes to the store only while the leader key still has that create revision
    (every transaction compares it);
  - steps down when it has not renewed its lease for half the TTL (cut off from etcd:
    the lease cannot have expired at etcd yet, so no one else leads before it stops).
Followers keep their core current from the store's watch (compiled, not sent), stay
slave on every switch, and campaign when the leader key goes away.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time

from controller.state.etcd_store import EtcdClient, EtcdStore, EtcdUnavailable, compare_create, put

LOG = logging.getLogger("nvctl.cluster")
LEASE_TTL = 3  # seconds: a dead leader's lease ends this long after its last renewal (etcd's own
# leader election, 1 s and more, must fit in it: renewals wait for it)
STEP_DOWN_AFTER = LEASE_TTL / 2  # a leader that has not renewed for this long stops leading


class Member:
    def __init__(self, name: str, store: EtcdStore, core, info: dict, watch_from: int,
                 ttl: int = LEASE_TTL, clock=time.monotonic):
        self.name, self.store, self.core, self.ttl, self.clock = name, store, core, ttl, clock
        self.client = store.client
        self.info = {"name": name, "pid": os.getpid(), **info}
        self.watch_from = watch_from
        self.role = "follower"
        self.generation: int | None = None  # the election we won, while leader
        self.leader: dict | None = None  # the leader key's value and create revision, as last seen
        self.lease: int | None = None
        self.lease_renewed = 0.0
        self.stop = threading.Event()
        self.changed = threading.Event()  # the leader key changed: campaign now
        self.lock = threading.RLock()
        self.step_downs: list[str] = []
        self.claimed: int | None = None  # the leader generation our slave role was last claimed with
        store.read_only = True  # until elected

    @property
    def leader_key(self) -> str:
        return self.store.key("leader")

    @property
    def is_leader(self) -> bool:
        return self.role == "leader"

    # start ---------------------------------------------------------------------------
    def start(self) -> None:
        self._new_lease()
        for fn, name in ((self._keepalive, "keepalive"), (self._fence, "fence"), (self._follow, "follow"),
                         (self._campaign, "campaign")):
            threading.Thread(target=fn, name=f"cluster-{name}", daemon=True).start()

    def _new_lease(self) -> None:
        self.lease = self.client.grant(self.ttl)
        self.lease_renewed = self.clock()
        self.client.txn([], [put(self.store.key("members", self.name), json.dumps(self.info), self.lease)])
        LOG.info("member %s: lease %x (%d s)", self.name, self.lease, self.ttl)

    def close(self) -> None:
        """A clean stop: give up leadership at once (the lease goes, and the key on it)."""
        self.stop.set()
        with self.lock:
            if self.lease is not None:
                try:
                    self.client.revoke(self.lease)
                except EtcdUnavailable:
                    pass

    # the lease -----------------------------------------------------------------------
    def _fence(self) -> None:
        """The watchdog: a leader whose lease has not been renewed for half its TTL stops
        leading, whatever its keepalive requests are still waiting for."""
        while not self.stop.wait(0.05):
            silent = self.clock() - self.lease_renewed
            if self.is_leader and silent >= self.ttl * STEP_DOWN_AFTER / LEASE_TTL:
                self.step_down(f"cut off from etcd: lease not renewed for {silent:.1f}s; stepping down before "
                               f"its {self.ttl}s can run out and another member take over")

    def _keepalive(self) -> None:
        quick = EtcdClient(self.client.endpoints, timeout=self.ttl / 8)  # a renewal must not wait long
        failing = 0
        while not self.stop.wait(self.ttl / 4):
            try:
                left = quick.keepalive(self.lease)
            except Exception as e:  # noqa: BLE001 - keep renewing whatever etcd answered
                failing += 1
                if failing in (1, 4, 16):
                    LOG.warning("member %s: lease renewal failed (%d in a row): %s", self.name, failing, e)
                continue
            failing = 0
            if left <= 0 and self._expired():  # expired at etcd: whatever we held on it is gone
                if self.is_leader:
                    self.step_down("the lease expired at etcd")
                try:
                    self._new_lease()
                except Exception as e:  # noqa: BLE001 - try again at the next tick
                    LOG.warning("member %s: a new lease: %s", self.name, e)
                continue
            if left > 0:
                self.lease_renewed = self.clock()

    def _expired(self) -> bool:
        """A keepalive answered without a TTL: is the lease really gone? (A member in the
        middle of etcd's own election answers so too.)"""
        try:
            return self.client.time_to_live(self.lease) <= 0
        except Exception:  # noqa: BLE001 - cannot tell: not gone
            return False

    # leadership ----------------------------------------------------------------------
    def read_leader(self) -> dict | None:
        kvs, _ = self.client.range(self.leader_key)
        if not kvs:
            return None
        return {**json.loads(kvs[0]["value"]), "generation": kvs[0]["create_revision"], "lease": kvs[0]["lease"]}

    def _campaign(self) -> None:
        while not self.stop.is_set():
            try:
                if not self.is_leader:
                    self._try_lead()
                elif not self._still_leader():
                    self.step_down("the leader key is no longer ours")
            except Exception as e:  # noqa: BLE001 - etcd unavailable or refusing: campaign again
                LOG.warning("member %s: campaign: %s", self.name, e)
            self.changed.wait(0.5 if self.is_leader else 0.2)
            self.changed.clear()

    def _try_lead(self) -> None:
        value = json.dumps(self.info)
        ok, out = self.client.txn([compare_create(self.leader_key, 0)], [put(self.leader_key, value, self.lease)])
        if not ok:
            self.leader = cur = self.read_leader()
            if cur and cur["name"] == self.name and cur["lease"] == self.lease:
                if self.clock() - self.lease_renewed > self.ttl / 4:
                    return  # renew first
                generation = cur["generation"]  # still ours (we stepped down on a short silence): no one else led
            else:
                gen = (cur or {}).get("generation")
                if gen and gen != self.claimed:  # a new leader: be its slave on every switch
                    self.claimed = gen
                    threading.Thread(target=self.core.hand_over, args=(gen,), daemon=True).start()
                return
        else:
            generation = int(out["header"]["revision"])  # the revision that created the key
        with self.lock:
            self.role, self.generation = "leader", generation
            self.store.fence, self.store.read_only = (self.leader_key, generation), False
            self.leader = {**self.info, "generation": generation, "lease": self.lease}
        LOG.info("member %s: elected leader (generation %d)", self.name, generation)
        try:
            self.core.take_over(generation)
        except Exception:
            LOG.exception("member %s: taking over failed", self.name)

    def _still_leader(self) -> bool:
        cur = self.read_leader()
        self.leader = cur
        return cur is not None and cur["generation"] == self.generation

    def step_down(self, why: str) -> None:
        with self.lock:
            if not self.is_leader:
                return
            self.role, self.store.fence, self.store.read_only = "follower", None, True
            self.step_downs.append(why)
        LOG.warning("member %s: stepping down: %s", self.name, why)
        threading.Thread(target=self.core.hand_over, args=(self.generation,), daemon=True).start()

    # following -----------------------------------------------------------------------
    def _follow(self) -> None:
        """Every change in the store, into the core (as a follower: compiled, not sent)."""
        while not self.stop.is_set():
            try:
                for kind, kv in self.client.watch(self.store.key(""), self.watch_from, self.stop):
                    self.watch_from = kv["mod_revision"] + 1
                    self._followed(kind, kv)
            except Exception as e:  # noqa: BLE001 - a compacted or broken watch: catch up, watch again
                LOG.warning("member %s: watch: %s; reading the store again", self.name, e)
                self.stop.wait(0.5)
                if not self.is_leader:
                    _, self.watch_from = self.client.range(self.store.key("leader"))
                    self.core.catch_up()

    def _followed(self, kind: str, kv: dict) -> None:
        rel = kv["key"][len(self.store.key("")):]
        try:
            if rel == "leader":
                self.changed.set()
            elif self.is_leader:
                return  # the leader made this change itself
            elif rel.startswith("tenants/"):
                value = json.loads(kv["value"]) if kind == "PUT" else None
                self.core.follow_tenant(rel.split("/", 1)[1], value, kv["version"])
            elif rel.startswith("hosts/") and kind == "PUT":
                d = json.loads(kv["value"])
                self.core.follow_host(rel.split("/", 1)[1], d["pa"], d["dpid"], d["info"])
        except Exception:
            LOG.exception("member %s: following %s %s", self.name, kind, kv["key"])

    def member_infos(self) -> list[dict]:
        """What every live member published about itself (this one first)."""
        kvs, _ = self.client.range(self.store.key("members", ""), prefix=True)
        out = [json.loads(kv["value"]) for kv in sorted(kvs, key=lambda kv: kv["key"])]
        return sorted(out, key=lambda d: d.get("name") != self.name)

    def api_urls(self) -> list[str]:
        """Every live member's network API URL (this one's first): how a client that
        reached one member finds the others."""
        urls = [d.get("url") for d in self.member_infos()]
        mine = self.info.get("url")
        return ([mine] if mine else []) + [u for u in urls if u and u != mine]

    # status --------------------------------------------------------------------------
    def status(self) -> dict:
        kvs, _ = self.client.range(self.store.key("members", ""), prefix=True)
        leader = self.read_leader()
        members = []
        for kv in sorted(kvs, key=lambda kv: kv["key"]):
            d = json.loads(kv["value"])
            ttl = self.client.time_to_live(kv["lease"]) if kv["lease"] else -1
            members.append({"name": d["name"], "pid": d["pid"], "address": d.get("address"),
                            "api": d.get("api"), "url": d.get("url"),
                            "role": "leader" if leader and leader["name"] == d["name"] else "follower",
                            "lease_s": ttl})
        etcd = []
        for m in self.client.members():
            url = (m.get("clientURLs") or [""])[0]
            host, _, port = url.removeprefix("http://").partition(":")
            healthy, raft_leader = True, False
            try:
                st = EtcdClient([(host, int(port or 2379))], timeout=1).post("maintenance/status", {})
                raft_leader = st.get("leader") == st.get("header", {}).get("member_id")
            except Exception:  # noqa: BLE001 - any failure to answer is "not healthy"
                healthy = False
            etcd.append({"name": m.get("name"), "address": url, "healthy": healthy, "raft_leader": raft_leader})
        return {"self": self.name, "leader": leader and leader["name"], "generation": leader and leader["generation"],
                "members": members, "etcd": etcd, "step_downs": list(self.step_downs)}
