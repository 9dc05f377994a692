"""Desired state, persisted: tenants (spec + allocation + who owns which policy layer)
and registered hosts.

`Store` is the interface the controller uses; `SqliteStore` is the embedded default.
A replicated controller can implement the same few methods over etcd (a compare-and-
swap on a revision per key gives the same all-or-nothing writes).

Every write is one transaction: a controller killed mid-write leaves the old state or
the new one, never a mix.
"""
from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from typing import Iterator, Protocol


@dataclass(frozen=True)
class TenantRecord:
    name: str
    doc: dict  # the canonical tenant document (topology.schema.to_doc)
    alloc: dict  # Allocation.to_json()
    revision: int
    # per policy layer written apart from the spec: {"acls": {"version", "owner", ...}}
    # (controller.server.owners); stored with the spec, in the same transaction
    layers: dict = field(default_factory=dict)


@dataclass(frozen=True)
class HostRecord:
    name: str
    pa: str
    dpid: int
    info: dict  # driver-specific (lab: namespace and OVSDB socket)


class Conflict(RuntimeError):
    """The stored revision is not the one the writer started from."""


class Store(Protocol):
    def tenants(self) -> Iterator[TenantRecord]: ...
    def tenant(self, name: str) -> TenantRecord | None: ...
    def put_tenant(self, name: str, doc: dict, alloc: dict, expect_revision: int | None,
                   layers: dict | None = None) -> int: ...
    def delete_tenant(self, name: str, expect_revision: int | None) -> None: ...
    def hosts(self) -> Iterator[HostRecord]: ...
    def put_host(self, h: HostRecord) -> None: ...
    def invites(self) -> dict[str, dict]: ...
    def put_invite(self, name: str, doc: dict) -> None: ...
    def credentials(self) -> dict[str, dict]: ...
    def put_credential(self, name: str, doc: dict) -> None: ...
    def append_audit(self, entries: list[dict]) -> None: ...
    def audit_entries(self, limit: int) -> list[dict]: ...
    # operational state the leader keeps for whoever leads next (not intent: e.g. the
    # routes BGP learned, controller.server.routes)
    def runtime_state(self, name: str) -> dict | None: ...
    def put_runtime_state(self, name: str, doc: dict) -> None: ...


AUDIT_KEEP = 20000  # audit entries kept (the oldest go first)


SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY,
    doc TEXT NOT NULL,
    alloc TEXT NOT NULL,
    revision INTEGER NOT NULL,
    layers TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS hosts (
    name TEXT PRIMARY KEY,
    pa TEXT NOT NULL UNIQUE,
    dpid INTEGER NOT NULL UNIQUE,
    info TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS invites (
    name TEXT PRIMARY KEY,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS credentials (
    name TEXT PRIMARY KEY,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runtime_state (
    name TEXT PRIMARY KEY,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    doc TEXT NOT NULL
);
"""


class SqliteStore:
    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(tenants)")}
        if "layers" not in columns:  # a store written before layers had owners
            self._db.execute("ALTER TABLE tenants ADD COLUMN layers TEXT NOT NULL DEFAULT '{}'")

    def close(self) -> None:
        self._db.close()

    # tenants -------------------------------------------------------------------------
    def tenants(self) -> Iterator[TenantRecord]:
        with self._lock:
            rows = self._db.execute("SELECT name, doc, alloc, revision, layers FROM tenants ORDER BY name").fetchall()
        for r in rows:
            yield TenantRecord(r[0], json.loads(r[1]), json.loads(r[2]), r[3], json.loads(r[4]))

    def tenant(self, name: str) -> TenantRecord | None:
        with self._lock:
            r = self._db.execute("SELECT name, doc, alloc, revision, layers FROM tenants WHERE name=?",
                                 (name,)).fetchone()
        return TenantRecord(r[0], json.loads(r[1]), json.loads(r[2]), r[3], json.loads(r[4])) if r else None

    def put_tenant(self, name: str, doc: dict, alloc: dict, expect_revision: int | None,
                   layers: dict | None = None) -> int:
        """Create (expect_revision=None: must not exist) or replace (must be at that revision).
        `layers`: the record of its policy layers' versions and owners (None: none)."""
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                row = cur.execute("SELECT revision FROM tenants WHERE name=?", (name,)).fetchone()
                have = row[0] if row else None
                if have != expect_revision:
                    raise Conflict(f"tenant {name}: stored revision {have}, expected {expect_revision}")
                rev = (have or 0) + 1
                cur.execute("INSERT OR REPLACE INTO tenants(name, doc, alloc, revision, layers) VALUES (?,?,?,?,?)",
                            (name, json.dumps(doc, sort_keys=True), json.dumps(alloc, sort_keys=True), rev,
                             json.dumps(layers or {}, sort_keys=True)))
                cur.execute("COMMIT")
                return rev
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def delete_tenant(self, name: str, expect_revision: int | None) -> None:
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                row = cur.execute("SELECT revision FROM tenants WHERE name=?", (name,)).fetchone()
                if row is None or (expect_revision is not None and row[0] != expect_revision):
                    raise Conflict(f"tenant {name}: not at revision {expect_revision}")
                cur.execute("DELETE FROM tenants WHERE name=?", (name,))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    # hosts ---------------------------------------------------------------------------
    def hosts(self) -> Iterator[HostRecord]:
        with self._lock:
            rows = self._db.execute("SELECT name, pa, dpid, info FROM hosts ORDER BY name").fetchall()
        for r in rows:
            yield HostRecord(r[0], r[1], r[2], json.loads(r[3]))

    def put_host(self, h: HostRecord) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO hosts(name, pa, dpid, info) VALUES (?,?,?,?)",
                             (h.name, h.pa, h.dpid, json.dumps(h.info, sort_keys=True)))

    # invitations (hosts allowed to join) ----------------------------------------------
    def invites(self) -> dict[str, dict]:
        with self._lock:
            rows = self._db.execute("SELECT name, doc FROM invites ORDER BY name").fetchall()
        return {r[0]: json.loads(r[1]) for r in rows}

    def put_invite(self, name: str, doc: dict) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO invites(name, doc) VALUES (?,?)",
                             (name, json.dumps(doc, sort_keys=True)))

    # operational state for the next leader (controller.server.routes) -----------------
    def runtime_state(self, name: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT doc FROM runtime_state WHERE name = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else None

    def put_runtime_state(self, name: str, doc: dict) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO runtime_state(name, doc) VALUES (?,?)",
                             (name, json.dumps(doc, sort_keys=True)))

    # credentials (who may call the network API; only a hash of each secret) ------------
    def credentials(self) -> dict[str, dict]:
        with self._lock:
            rows = self._db.execute("SELECT name, doc FROM credentials ORDER BY name").fetchall()
        return {r[0]: json.loads(r[1]) for r in rows}

    def put_credential(self, name: str, doc: dict) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO credentials(name, doc) VALUES (?,?)",
                             (name, json.dumps(doc, sort_keys=True)))

    # the audit trail: every API request, allowed or refused -----------------------------
    def append_audit(self, entries: list[dict]) -> None:
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.executemany("INSERT INTO audit(doc) VALUES (?)", [(json.dumps(e, sort_keys=True),) for e in entries])
                cur.execute("DELETE FROM audit WHERE seq <= (SELECT MAX(seq) FROM audit) - ?", (AUDIT_KEEP,))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    def audit_entries(self, limit: int) -> list[dict]:
        """The newest `limit` entries, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT doc FROM audit ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [json.loads(r[0]) for r in reversed(rows)]
