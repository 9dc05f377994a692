"""Live migration of VMs, as a hypervisor makes it, and the network following it.

A `workload: vm` port's guest is copied by QEMU's own migration; the network follows
the guest, not the other way round (`migrate_vm`, the lab's driver running QEMU):

  1. pending    the port is bound a second time, pending on the destination
                (change.PendingBinding): its traffic goes to both hosts, the
                destination drops its copy and passes only the guest's announcement
                (controller.layers.activation)
  2. incoming   the destination's tap, with the port's iface-id, and a QEMU waiting
                with -incoming on the destination host's provider address
  3. copy       QEMU migrates the guest over the hosts' network; its last step pauses
                the guest (QEMU's downtime) and resumes it at the destination
  4. activate   the guest's first packet there (QEMU's RARP or the guest's gratuitous
                ARP) reaches the controller, which moves the port's placement there
                (change.Activation: the destination's flows first). Not before: a
                guest that never announces itself is activated only when QEMU says
                the copy completed and ACTIVATION_WAIT passed, and the answer says so
  5. source     the paused source QEMU stops, its tap goes

A failed or cancelled copy (`cancel_migration`) drops the pending binding and the
destination QEMU: the guest runs on where it was, bound there.

On a host whose VMs someone else runs (libvirt on a joined machine), `port.migrate`
with `prepare` does step 1 only and returns; the hypervisor makes the destination's
interface with the same iface-id and migrates; step 4 is the same; `cancel` undoes 1.

A piece of `Core` (controller/server/core.py): the state it uses is made in
`Core.__init__` (`vm_moves`, `activating`).
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass, field

from controller.layers.activation import ETH_TYPE_RARP
from controller.server import change as change_path
from controller.server.change import Activation, PendingBinding
from controller.server.errors import ApiError
from controller.spaces.names import pending_name

LOG = logging.getLogger("nvctl.vmmigrate")
ACTIVATION_WAIT = 5.0  # seconds after a completed copy without an announcement before activating anyway
MIGRATION_PORT_BASE = 49152  # the destination QEMU listens on this + the pending ofport (unique on its host)


@dataclass
class VmMove:
    """One live migration under way (the lab's, run by `migrate_vm`)."""
    tenant: str
    port: str
    src: str
    dst: str
    activated: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False
    copying: bool = False
    activation: dict = field(default_factory=dict)


def _port_of(e, name: str):
    """A tenant entry's port by name; None when the entry or the port is gone (deleted
    while its migration ran)."""
    return next((p for p in e.tenant.ports if p.name == name), None) if e is not None else None


def _ms(a: float, b: float) -> float:
    return round((b - a) * 1000, 1)


class VmMigrationMixin:
    # -- the op ---------------------------------------------------------------------------
    def migrate_vm(self, tenant: str, port: str, to: str, prepare: bool = False,
                   bandwidth_mbps: float | None = None) -> dict:
        """Steps 1-5 above for a lab VM; with `prepare`, step 1 only (someone else's
        hypervisor migrates). Runs outside the core's mutex but for its changes."""
        key = (tenant, port)
        t0 = self.clock()
        with self.mutex:
            e, p = self._port(tenant, port)
            if p.pending:
                raise ApiError(f"{tenant}/{port} is already migrating to {p.pending}", [("port", "migrating")])
            if key in self.vm_moves:
                raise ApiError(f"{tenant}/{port} is already migrating", [("port", "migrating")])
            guest_src = self.driver.guest(tenant, port, p.host)
            guest_dst = self.driver.guest(tenant, port, to)
            if not prepare and (not p.vm or guest_src is None or guest_dst is None):
                raise ApiError(f"{tenant}/{port}: the platform runs no VM for it on both {p.host} and {to}; "
                               f"its hypervisor migrates it: ask with prepare (nvctl port migrate --prepare)",
                               [("prepare", "needed for a VM the platform does not run")])
            mv = VmMove(tenant, port, p.host, to)
            if not prepare:
                self.vm_moves[key] = mv
            try:
                pend = change_path.run(self, PendingBinding(e, port, to))
            except BaseException:
                self.vm_moves.pop(key, None)
                raise
            src_att = self._attachments(tenant, e).get(port)
            new = self.tenants[tenant]
        t1 = self.clock()
        if prepare:
            return {**pend, "steps": [{"step": "pending binding", "ms": _ms(t0, t1)}]}
        dst_att = dataclasses.replace(src_att, host=to, ofport=new.alloc.ofport[pending_name(port)])
        steps = [{"step": f"pending binding on {to} (ofport {dst_att.ofport}); traffic to both hosts",
                  "ms": _ms(t0, t1)}]
        try:
            uri = self.driver.vm_incoming(dst_att, MIGRATION_PORT_BASE + dst_att.ofport)
            t2 = self.clock()
            steps.append({"step": f"destination QEMU on {to} waiting at {uri}", "ms": _ms(t1, t2)})
            mv.copying = True
            if mv.cancelled:
                raise ApiError("cancelled before the copy began")
            qemu = self.driver.vm_migrate(src_att, uri, bandwidth_mbps)
            mv.copying = False
            t3 = self.clock()
        except Exception as ex:  # noqa: BLE001 - any failure: back to where it was
            mv.copying = False
            self._undo_vm_move(mv, dst_att)
            what = "cancelled" if mv.cancelled else "failed"
            raise ApiError(f"migration of {tenant}/{port} to {to} {what}: {ex}; the VM runs on {mv.src}, "
                           f"bound there", [("to", what)]) from None
        qemu = {k: v for k, v in qemu.items() if k != "info"}  # QEMU's figures, not its whole answer
        mb = round(qemu["ram_transferred"] / 1e6, 1) if qemu.get("ram_transferred") else "?"
        steps.append({"step": f"copy by QEMU ({mb} MB sent; the guest paused for {qemu.get('downtime_ms')} ms "
                              f"at its end)", "ms": _ms(t2, t3)})
        if not mv.activated.wait(ACTIVATION_WAIT):
            LOG.warning("%s/%s: no announcement from %s in %.0f s after the copy; activating", tenant, port, to,
                        ACTIVATION_WAIT)
            self.activate(tenant, port, to, by="the completed copy (no announcement seen)")
        t4 = self.clock()
        act = mv.activation
        steps.append({"step": f"activated on {to} by {act.get('by', '?')}", "ms": _ms(t3, t4)})
        try:
            self.driver.vm_finish(src_att)
        except Exception as ex:  # noqa: BLE001 - the guest runs at the destination; say what is left
            LOG.warning("%s/%s: the source guest on %s was not cleaned up: %s", tenant, port, mv.src, ex)
        finally:
            with self.mutex:
                self.vm_moves.pop(key, None)
        t5 = self.clock()
        steps.append({"step": f"source QEMU on {mv.src} stopped, its tap removed", "ms": _ms(t4, t5)})
        timings = dict(act.get("timings_ms", {}))
        timings.update(copy=_ms(t2, t3), qemu_downtime=qemu.get("downtime_ms"), total=_ms(t0, t5))
        return {"tenant": tenant, "action": f"migrated {port} {mv.src} -> {to}", "port": port, "src": mv.src,
                "dst": to, "vm": True, "ofport": dst_att.ofport, "steps": steps, "qemu": qemu,
                "timings_ms": timings, "activated_by": act.get("by"), "hosts": act.get("hosts", {}),
                "attach_errors": []}

    def _undo_vm_move(self, mv: VmMove, dst_att) -> None:
        try:
            self.driver.vm_abort(dst_att)
        except Exception as ex:  # noqa: BLE001
            LOG.warning("%s/%s: destination guest on %s not removed: %s", mv.tenant, mv.port, mv.dst, ex)
        with self.mutex:
            self.vm_moves.pop((mv.tenant, mv.port), None)
            e = self.tenants.get(mv.tenant)
            p = _port_of(e, mv.port)
            if p is not None and p.pending:
                change_path.run(self, PendingBinding(e, mv.port, None))

    def cancel_migration(self, tenant: str, port: str) -> dict:
        """Cancel a migration under way: QEMU's copy (the lab's), and the pending binding."""
        with self.mutex:
            e, p = self._port(tenant, port)
            mv = self.vm_moves.get((tenant, port))
            if mv is None and not p.pending:
                raise ApiError(f"{tenant}/{port} is not migrating", [("port", "not migrating")])
            if mv is None:  # prepared for another hypervisor: drop the pending binding
                out = change_path.run(self, PendingBinding(e, port, None))
                return {**out, "cancelled": True}
            mv.cancelled = True
            copying = mv.copying
        if copying:
            try:
                self.driver.vm_cancel(self._attachments(tenant, e)[port])
            except Exception as ex:  # noqa: BLE001
                raise ApiError(f"{tenant}/{port}: QEMU did not take the cancel: {ex}") from None
        return {"tenant": tenant, "port": port, "cancelled": True,
                "action": f"cancelling the migration of {port} to {mv.dst}"}

    # -- activation ------------------------------------------------------------------------
    def activation_seen(self, host: str, in_port: int, data: bytes) -> None:
        """A pending interface's announcement reached the controller (the OpenFlow
        app's thread: no lock, no I/O): the port it activates is looked up, and the
        activation runs in its own thread."""
        if len(data) < 14:
            return
        seen_at = self.clock()
        mac = ":".join(f"{b:02x}" for b in data[6:12])
        for name, e in list(self.tenants.items()):
            for p in e.tenant.ports:
                if (p.pending == host and p.mac == mac
                        and e.alloc.ofport.get(pending_name(p.name)) == in_port):
                    key = (name, p.name, host)
                    if key in self.activating:
                        return
                    self.activating.add(key)
                    kind = "RARP" if int.from_bytes(data[12:14], "big") == ETH_TYPE_RARP else "gratuitous ARP"
                    threading.Thread(target=self._activate_thread, args=(key, f"its {kind}", seen_at),
                                     name="activation", daemon=True).start()
                    return

    def _activate_thread(self, key, by: str, seen_at: float) -> None:
        try:
            self.activate(key[0], key[1], key[2], by=by, seen_at=seen_at)
        except Exception:  # noqa: BLE001 - said with its stack; the copy's end activates anyway
            LOG.exception("activation of %s/%s on %s", *key)
        finally:
            self.activating.discard(key)

    def activate(self, tenant: str, port: str, host: str, by: str, seen_at: float | None = None) -> dict | None:
        """The pending binding on `host` becomes the port's placement (change.Activation)."""
        with self.mutex:
            e = self.tenants.get(tenant)
            p = _port_of(e, port)
            if p is None or p.pending != host:
                return None  # activated already, cancelled, or the port (or tenant) deleted meanwhile
            r = change_path.run(self, Activation(e, port, by, seen_at))
            LOG.info("%s/%s activated on %s by %s: %s", tenant, port, host, by, r.get("timings_ms"))
            mv = self.vm_moves.get((tenant, port))
            if mv is not None:
                mv.activation = {"by": by, "timings_ms": r.get("timings_ms", {}), "hosts": r.get("hosts", {})}
                mv.activated.set()
            return r
