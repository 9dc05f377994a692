"""Progress of intent changes, the controller's side: for each change, its phase and how
many of its workloads are plugged and hosts synced. The `progress` API operation reads it
without the core's lock (so it answers while the change runs); the client's
`follow_change` (controller/client/progress.py) polls it.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager


class Change:
    """One intent change as it runs: updated by the core (from its worker threads too)."""

    def __init__(self, seq: int, tenant: str, action: str, clock=time.monotonic):
        self.seq, self.tenant, self.action, self.clock = seq, tenant, action, clock
        self.t0 = clock()
        self.ended: float | None = None
        self.ok: bool | None = None
        self._phase = "waiting for the change ahead"  # until the core's lock is ours
        self.workloads_total = self.workloads_done = 0
        self.hosts_total = self.hosts_done = 0
        self._lock = threading.Lock()

    def phase(self, name: str) -> None:
        self._phase = name

    def workloads(self, total: int) -> None:
        with self._lock:
            self.workloads_total += total
            self._phase = "plugging workloads"

    def plugged(self) -> None:
        """One more workload done (plugged, or failed: the change's answer says which)."""
        with self._lock:
            self.workloads_done += 1

    def hosts(self, total: int) -> None:
        with self._lock:
            self.hosts_total += total
            self._phase = "pushing flows"

    def synced(self) -> None:
        with self._lock:
            self.hosts_done += 1

    def end(self, ok: bool) -> None:
        self.ok, self.ended = ok, self.clock()
        self._phase = "done" if ok else "failed"

    def snapshot(self) -> dict:
        with self._lock:
            return {"seq": self.seq, "tenant": self.tenant, "action": self.action, "phase": self._phase,
                    "workloads": {"done": self.workloads_done, "total": self.workloads_total},
                    "hosts": {"done": self.hosts_done, "total": self.hosts_total},
                    "finished": self.ended is not None, "ok": self.ok,
                    "seconds": round((self.ended or self.clock()) - self.t0, 2)}


class Changes:
    """The last few intent changes, newest last. Its own small lock: never the core's."""

    KEEP = 32

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._lock = threading.Lock()
        self._seq = 0
        self._recent: deque[Change] = deque(maxlen=self.KEEP)

    @contextmanager
    def track(self, tenant: str, action: str):
        with self._lock:
            self._seq += 1
            c = Change(self._seq, tenant, action, self.clock)
            self._recent.append(c)
        try:
            yield c
        except BaseException:
            c.end(False)
            raise
        c.end(True)

    def snapshot(self, tenant: str | None = None, after: int = 0) -> dict | None:
        """The `progress` operation: the newest change (of `tenant`, if given) whose
        sequence number is above `after`, or None."""
        with self._lock:
            found = [c for c in self._recent if c.seq > after and (tenant is None or c.tenant == tenant)]
        return found[-1].snapshot() if found else None
