"""The desired state in etcd, for a cluster of controllers (`--store etcd://H:P,H:P`).

Keys under one prefix (default /nvctl):

    tenants/NAME    {"doc", "alloc", "layers"}: the tenant's revision is the key's etcd version
    hosts/NAME      {"pa", "dpid", "info"}
    invites/NAME    the invitation
    credentials/NAME  a credential of the network API (a hash of its secret, its role)
    audit/T-MEMBER-N  one API request answered by MEMBER at time T (ns), allowed or refused
    requests/ID     a write that was done (so a retried request is not done twice)
    leader          the elected controller, on its lease (controller.state.cluster)
    members/NAME    every live controller, on its own lease

Every change is one etcd transaction that compares the revision it read (a tenant's
version), so a write is all or nothing and two writers cannot interleave; a leader's
writes also compare the election key it won (fencing: a deposed leader's write fails).

`EtcdClient` speaks etcd's v3 JSON gateway through etcd3gw's HTTP client, one per
member, and fails over between members itself: a request that cannot reach one member
goes to the next.
"""
from __future__ import annotations

import base64
import json
import logging
import threading
import time
from typing import Iterator
from urllib.parse import urlparse

import warnings

import requests

with warnings.catch_warnings():  # etcd3gw's futurist warns that eventlet (os-ken's) is deprecated
    warnings.simplefilter("ignore")
    from etcd3gw.client import Etcd3Client
    from etcd3gw import exceptions as etcd_errors

from controller.state.store import Conflict, HostRecord, TenantRecord

LOG = logging.getLogger("nvctl.etcd")
REQUEST_TIMEOUT = 2.0  # seconds per member before trying the next


class EtcdUnavailable(RuntimeError):
    """No member of the cluster answered."""


class NotLeader(Conflict):
    """The election key is no longer the one this writer won: it was deposed."""


def b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def unb64(s: str) -> str:
    return base64.b64decode(s).decode()


def prefix_end(prefix: str) -> str:
    """The range_end that covers every key starting with prefix."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return b64(bytes(raw))


def parse_endpoints(url: str) -> list[tuple[str, int]]:
    """'etcd://10.0.0.1:2379,10.0.0.2:2379' -> [(host, port), ...]."""
    if not url.startswith("etcd://"):
        raise ValueError(f"{url!r}: an etcd store is etcd://HOST:PORT[,HOST:PORT...]")
    out = []
    for part in url[len("etcd://"):].split(","):
        p = urlparse(f"//{part}")
        if not p.hostname:
            raise ValueError(f"{url!r}: {part!r} is not HOST:PORT")
        out.append((p.hostname, p.port or 2379))
    return out


class EtcdClient:
    """etcd's v3 gateway on several members, failing over between them."""

    def __init__(self, endpoints: list[tuple[str, int]], timeout: float = REQUEST_TIMEOUT):
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self._clients = [Etcd3Client(host=h, port=p, timeout=timeout, api_path="/v3/") for h, p in endpoints]
        self._current = 0
        self._lock = threading.Lock()

    @property
    def current(self) -> str:
        h, p = self.endpoints[self._current]
        return f"{h}:{p}"

    def post(self, path: str, body: dict) -> dict:
        """POST to the current member; on a connection failure or timeout, to the next,
        once around the cluster. Errors etcd itself answers are not retried."""
        with self._lock:
            start = self._current
        errors = []
        for k in range(len(self._clients)):
            i = (start + k) % len(self._clients)
            c = self._clients[i]
            try:
                out = c.post(c.get_url(path), json=body)
            except (etcd_errors.ConnectionFailedError, etcd_errors.ConnectionTimeoutError) as e:
                errors.append(f"{self.endpoints[i][0]}:{self.endpoints[i][1]}: {str(e)[:120]}")
                continue
            if i != start:
                with self._lock:
                    self._current = i
                LOG.info("etcd: now using member %s", self.current)
            return out
        raise EtcdUnavailable("no etcd member answers: " + "; ".join(errors))

    # key-value ------------------------------------------------------------------------
    def range(self, key: str, prefix: bool = False, limit: int = 0, newest_first: bool = False,
              keys_only: bool = False) -> tuple[list[dict], int]:
        """(kvs with decoded key and value, the store's revision). `limit` > 0: that many
        at most, in key order (`newest_first`: the last keys first)."""
        body = {"key": b64(key)}
        if prefix:
            body["range_end"] = prefix_end(key)
        if limit:
            body["limit"] = limit
        if newest_first:
            body.update(sort_order="DESCEND", sort_target="KEY")
        if keys_only:
            body["keys_only"] = True
        out = self.post("kv/range", body)
        kvs = [{"key": unb64(kv["key"]), "value": unb64(kv.get("value", "")),
                "version": int(kv.get("version", 0)), "create_revision": int(kv.get("create_revision", 0)),
                "mod_revision": int(kv.get("mod_revision", 0)), "lease": int(kv.get("lease", 0))}
               for kv in out.get("kvs", [])]
        return kvs, int(out["header"]["revision"])

    def txn(self, compare: list[dict], success: list[dict], failure: list[dict] | None = None) -> tuple[bool, dict]:
        out = self.post("kv/txn", {"compare": compare, "success": success, "failure": failure or []})
        return bool(out.get("succeeded")), out

    # leases ---------------------------------------------------------------------------
    def grant(self, ttl: int) -> int:
        return int(self.post("lease/grant", {"TTL": ttl})["ID"])

    def keepalive(self, lease: int) -> int:
        """The lease's TTL after the refresh; <= 0 if it has expired."""
        return int(self.post("lease/keepalive", {"ID": lease}).get("result", {}).get("TTL", -1))

    def revoke(self, lease: int) -> None:
        self.post("kv/lease/revoke", {"ID": lease})

    def time_to_live(self, lease: int) -> int:
        return int(self.post("kv/lease/timetolive", {"ID": lease}).get("TTL", -1))

    # cluster --------------------------------------------------------------------------
    def members(self) -> list[dict]:
        return self.post("cluster/member/list", {}).get("members", [])

    def watch(self, prefix: str, start_revision: int, stop: threading.Event) -> Iterator[tuple[str, dict]]:
        """("PUT"|"DELETE", kv) for every change under prefix from start_revision on,
        across member failures (the watch resumes on another member where it left)."""
        rev = start_revision
        while not stop.is_set():
            with self._lock:
                i = self._current
            h, p = self.endpoints[i]
            body = {"create_request": {"key": b64(prefix), "range_end": prefix_end(prefix), "start_revision": rev}}
            try:
                with requests.post(f"http://{h}:{p}/v3/watch", json=body, stream=True, timeout=(self.timeout, 5)) as r:
                    for line in r.iter_lines():
                        if stop.is_set():
                            return
                        if not line:
                            continue
                        msg = json.loads(line).get("result", {})
                        if msg.get("compact_revision"):
                            raise EtcdUnavailable(f"watch compacted at {msg['compact_revision']}")
                        for ev in msg.get("events", []):
                            kv = ev["kv"]
                            rev = max(rev, int(kv["mod_revision"]) + 1)
                            yield ev.get("type", "PUT"), {"key": unb64(kv["key"]),
                                                          "value": unb64(kv.get("value", "")),
                                                          "version": int(kv.get("version", 0)),
                                                          "mod_revision": int(kv["mod_revision"])}
            except requests.exceptions.ReadTimeout:
                continue  # no event for a while: watch again from where we are
            except (requests.exceptions.RequestException, ValueError):
                with self._lock:
                    if self._current == i:
                        self._current = (i + 1) % len(self.endpoints)
                time.sleep(0.1)


def compare_version(key: str, version: int) -> dict:
    return {"key": b64(key), "result": "EQUAL", "target": "VERSION", "version": str(version)}


def compare_create(key: str, revision: int) -> dict:
    return {"key": b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": str(revision)}


def put(key: str, value: str, lease: int | None = None) -> dict:
    return {"request_put": {"key": b64(key), "value": b64(value), **({"lease": str(lease)} if lease else {})}}


def delete(key: str, range_end: str | None = None) -> dict:
    return {"request_delete_range": {"key": b64(key), **({"range_end": b64(range_end)} if range_end else {})}}


class EtcdStore:
    """The controller's Store in etcd (see controller.state.store.Store)."""

    def __init__(self, client: EtcdClient, prefix: str = "/nvctl"):
        self.client, self.prefix = client, prefix.rstrip("/")
        self.fence: tuple[str, int] | None = None  # (leader key, its create revision) while we lead
        self.read_only = False  # a cluster's follower: it never writes (the leader does)
        self.request_id = threading.local()  # the API request being served, for requests/ID
        self._audit_seq = 0

    def key(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts])

    def close(self) -> None:
        pass

    def _guards(self) -> list[dict]:
        return [compare_create(*self.fence)] if self.fence else []

    def _request_marks(self, what: str) -> list[dict]:
        rid = getattr(self.request_id, "value", None)
        return [put(self.key("requests", rid), json.dumps({"what": what, "at": time.time()}))] if rid else []

    def request_done(self, rid: str) -> dict | None:
        kvs, _ = self.client.range(self.key("requests", rid))
        return json.loads(kvs[0]["value"]) if kvs else None

    def _write(self, compare: list[dict], ops: list[dict], what: str) -> dict:
        if self.read_only:
            raise NotLeader(f"{what}: this controller follows; changes are made by the leader")
        ok, out = self.client.txn(compare + self._guards(), ops + self._request_marks(what))
        if ok:
            return out
        if self.fence:
            kvs, _ = self.client.range(self.fence[0])
            if not kvs or kvs[0]["create_revision"] != self.fence[1]:
                raise NotLeader(f"{what}: this controller is no longer the leader; nothing was written")
        raise Conflict(f"{what}: the stored revision is not the one this write started from")

    # tenants --------------------------------------------------------------------------
    def _tenant(self, kv: dict) -> TenantRecord:
        d = json.loads(kv["value"])
        return TenantRecord(kv["key"].rsplit("/", 1)[1], d["doc"], d["alloc"], kv["version"], d.get("layers") or {})

    def tenants(self) -> Iterator[TenantRecord]:
        kvs, _ = self.client.range(self.key("tenants", ""), prefix=True)
        return iter([self._tenant(kv) for kv in sorted(kvs, key=lambda kv: kv["key"])])

    def tenant(self, name: str) -> TenantRecord | None:
        kvs, _ = self.client.range(self.key("tenants", name))
        return self._tenant(kvs[0]) if kvs else None

    def put_tenant(self, name: str, doc: dict, alloc: dict, expect_revision: int | None,
                   layers: dict | None = None) -> int:
        k = self.key("tenants", name)
        value = json.dumps({"doc": doc, "alloc": alloc, **({"layers": layers} if layers else {})}, sort_keys=True)
        self._write([compare_version(k, expect_revision or 0)], [put(k, value)], f"tenant {name}")
        return (expect_revision or 0) + 1

    def delete_tenant(self, name: str, expect_revision: int | None) -> None:
        k = self.key("tenants", name)
        if expect_revision is None:
            kvs, _ = self.client.range(k)
            if not kvs:
                raise Conflict(f"tenant {name}: not stored")
            expect_revision = kvs[0]["version"]
        self._write([compare_version(k, expect_revision)], [delete(k)], f"tenant {name}")

    # hosts and invitations --------------------------------------------------------------
    def hosts(self) -> Iterator[HostRecord]:
        kvs, _ = self.client.range(self.key("hosts", ""), prefix=True)
        out = []
        for kv in sorted(kvs, key=lambda kv: kv["key"]):
            d = json.loads(kv["value"])
            out.append(HostRecord(kv["key"].rsplit("/", 1)[1], d["pa"], d["dpid"], d["info"]))
        return iter(out)

    def put_host(self, h: HostRecord) -> None:
        value = json.dumps({"pa": h.pa, "dpid": h.dpid, "info": h.info}, sort_keys=True)
        self._write([], [put(self.key("hosts", h.name), value)], f"host {h.name}")

    def invites(self) -> dict[str, dict]:
        kvs, _ = self.client.range(self.key("invites", ""), prefix=True)
        return {kv["key"].rsplit("/", 1)[1]: json.loads(kv["value"]) for kv in kvs}

    def put_invite(self, name: str, doc: dict) -> None:
        self._write([], [put(self.key("invites", name), json.dumps(doc, sort_keys=True))], f"invite {name}")

    # operational state for the next leader (controller.server.routes) -------------------
    def runtime_state(self, name: str) -> dict | None:
        kvs, _ = self.client.range(self.key("runtime", name))
        return json.loads(kvs[0]["value"]) if kvs else None

    def put_runtime_state(self, name: str, doc: dict) -> None:
        self._write([], [put(self.key("runtime", name), json.dumps(doc, sort_keys=True))], f"runtime state {name}")

    # credentials and the audit trail ------------------------------------------------------
    def credentials(self) -> dict[str, dict]:
        kvs, _ = self.client.range(self.key("credentials", ""), prefix=True)
        return {kv["key"].rsplit("/", 1)[1]: json.loads(kv["value"]) for kv in kvs}

    def put_credential(self, name: str, doc: dict) -> None:
        self._write([], [put(self.key("credentials", name), json.dumps(doc, sort_keys=True))], f"credential {name}")

    def append_audit(self, entries: list[dict]) -> None:
        """Every member writes its own entries, leader or not (a follower answers and
        refuses requests too): no fence, keys that never collide."""
        ops = []
        for e in entries:
            self._audit_seq += 1
            ops.append(put(self.key("audit", f"{int(e['time'] * 1e9):020d}-{e.get('member', '')}-{self._audit_seq}"),
                           json.dumps(e, sort_keys=True)))
        self.client.txn([], ops)
        if self._audit_seq % 500 < len(entries):  # now and then: drop what is past AUDIT_KEEP
            from controller.state.store import AUDIT_KEEP
            kvs, _ = self.client.range(self.key("audit", ""), prefix=True, limit=AUDIT_KEEP + 1,
                                       newest_first=True, keys_only=True)
            if len(kvs) > AUDIT_KEEP:
                self.client.txn([], [delete(self.key("audit", ""), kvs[-1]["key"])])

    def audit_entries(self, limit: int) -> list[dict]:
        kvs, _ = self.client.range(self.key("audit", ""), prefix=True, limit=limit, newest_first=True)
        return [json.loads(kv["value"]) for kv in reversed(kvs)]
