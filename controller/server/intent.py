"""Tenants' intent: parse and validate, provider-address and MTU checks, allocate,
compile and store (the commit step of the change path).

A piece of `Core` (controller/server/core.py): the state it uses is made in
`Core.__init__`."""
from __future__ import annotations

import dataclasses
import ipaddress
from contextlib import contextmanager

from topology import schema
from topology.model import Tenant
from controller.compile.allocator import Exhausted, InUse, allocate, provider_addresses
from controller.compile import compiler
from controller.compile.compiler import VXLAN_OVERHEAD, compile_tenant
from controller.compile.desired import tenant_delta
from controller.server.errors import ApiError, unknown_tenant
from controller.server.entry import TenantEntry
from controller.server import change as change_path
from controller.server.change import TenantChange


class IntentMixin:
    def _port(self, tenant: str, port: str):
        """(tenant entry, port) or an ApiError naming what is missing."""
        e = self.tenants.get(tenant)
        if e is None:
            raise unknown_tenant(tenant)
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

    def _commit(self, t: Tenant, old: TenantEntry | None, layers: dict | None = None, action: str = "",
                stored: bool = True) -> tuple[TenantEntry, set[str], dict]:
        """Allocate, compile and store a tenant's new intent, then swap it in (under the
        mutex). Returns the new entry, the hosts whose flow sets changed, and the change
        per host (controller.compile.desired.HostDelta: what goes, what comes). Nothing
        in memory changes when allocation, compilation or the store refuses. `layers`:
        its layers' record (controller.server.owners), stored in the same write; None
        keeps the old one's. With the guard on (controller.server.guard), the change is
        proved over the flows it leaves before the store is written; `self.proved` is
        the guard's entry for it (None: the guard is off). `stored=False`: a change of
        controller state only (load-balancer health), not written to the store when the
        allocation is the stored one (the spec is: `schema.to_doc` has no such state)."""
        if layers is None:
            layers = old.layers if old is not None else {}
        t = self.with_learned(t)  # routes learned from the provider: state, compiled with every change
        with self._held_by_others(t.name) as others:
            self._check_provider_addresses(t, others)
            try:
                alloc = allocate(t, old.tenant if old else None, old.alloc if old else None, others)
            except Exhausted as ex:  # a number space full: the caller's change cannot be made
                raise ApiError(f"tenant {t.name}: {ex}; nothing was changed") from None
        # the ports the change did not touch keep their flows (compile_tenant's `previous`)
        flows = compile_tenant(t, alloc, self._placement(), (old.tenant, old.alloc, old.flows) if old else None)
        delta = tenant_delta(old.flows if old else {}, flows, old.extras if old else None)  # what changed only
        conflicts = self.desired.conflicts_in(delta)
        if conflicts:
            names = {**self._tenant_names(), alloc.tenant_id: t.name}
            raise ApiError(f"tenant {t.name}: {len(conflicts)} of its flows would replace flows "
                           "that are not its own (the same table, priority and match); nothing was changed",
                           [("flows", c.describe(names)) for c in conflicts[:20]])
        # verify before install: refused (an ApiError) before the store
        self.proved = self.guard.check(self, t.name, t, alloc, delta, action)
        try:
            if not stored and old is not None and alloc == old.alloc:
                rev = old.revision
            else:
                rev = self.store.put_tenant(t.name, schema.to_doc(t), alloc.to_json(),
                                            old.revision if old else None, layers)
        except BaseException:
            self.guard.stale()  # the proof holds a change that did not happen
            raise
        new = TenantEntry(t, alloc, rev, {h: d.flows for h, d in delta.items() if d.flows}, layers,
                          {h: d.new_extras for h, d in delta.items() if d.flows})
        self._replace_entry(t.name, new)
        changed = self.desired.apply_delta(delta)
        self.guard.committed(self)
        return new, changed, delta

    def _check_provider_addresses(self, t: Tenant, others: InUse) -> None:
        """Router external addresses and floating IPs belong to one tenant each, never
        to the provider's own gear, and lie on the provider network they are used on."""
        errors = []
        gateways = [h.info["external"] for h in self.hosts.values() if h.info.get("external")]
        host_addresses = {ext["address"]: h.name for h in self.hosts.values()
                          if (ext := h.info.get("external")) and ext.get("address")}
        reserved = self.bgp_reserved()
        for path, ip in provider_addresses(t):
            owner = others.addresses.get(ip)
            if owner is not None:
                errors.append((path, f"{ip} belongs to tenant {owner}"))
                continue
            if ip in host_addresses:
                errors.append((path, f"{ip} is host {host_addresses[ip]}'s own address on the provider network "
                                     "(the next hop BGP announces for it)"))
                continue
            if ip in reserved:
                errors.append((path, f"{ip} is {reserved[ip]}"))
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
            layers = None
            if old is not None:
                t, layers = self._owned_layers_kept(text, t, old)  # controller.server.owners
                t = self._keep_api_ports(t, old.tenant)
            return change_path.run(self, TenantChange(old, t, "updated" if old else "created", layers=layers),
                                   change)

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

    def delete(self, name: str) -> dict:
        with self.mutex:
            old = self.tenants.get(name)
            if old is None:
                raise unknown_tenant(name)
            return change_path.run(self, TenantChange(old, None, "deleted", name))
