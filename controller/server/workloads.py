"""Workloads: attaching, moving and detaching them through the compute driver
(tep.driver.Driver), a change's attach step, and the check of every workload at start.

A piece of `Core` (controller/server/core.py): the state it uses is made in
`Core.__init__`."""
from __future__ import annotations

import logging
import threading

from tep.driver import Attachment, attachments_of, host_ifname, vm_key
from controller.server.entry import TenantEntry

LOG = logging.getLogger("nvctl.core")
PLUG_WORKERS = 8  # workloads plugged at once


class WorkloadsMixin:
    def _attachments(self, name: str, e: TenantEntry | None) -> dict[str, Attachment]:
        return {} if e is None else attachments_of(e.tenant, e.alloc.ofport, self.switch_mtus(e.tenant))

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
        if len(attachments) > 1:  # the driver's batch: one OVSDB transaction per host
            return self.driver.plug_many(attachments, PLUG_WORKERS, change.plugged if change is not None else None)
        errors = []
        for a in attachments:
            try:
                self.driver.plug(a)
            except Exception as e:  # noqa: BLE001 - reported with the change, as plug_many does
                errors.append(f"attach {a.tenant}/{a.port} to {a.host}: {e}")
            if change is not None:
                change.plugged()
        return errors

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
                ns = (vm_key(a.host, host_ifname(a.tenant, a.port)) if a.vm
                      else self.driver.namespace(a.tenant, a.port, a.host))
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
