"""Layers of a tenant's policy owned by separate controllers (as in VFP, where the
virtual-network, load-balancer and ACL controllers each program their own layers of a
port's policy and none can edit another's).

A tenant's spec has four policy sections, its layers (LAYERS): `acls`,
`networkPolicies`, `loadBalancers`, `nat`. Each is written either with the whole spec
(`tenant.apply`) or alone (`layer.put`), and has a record stored with the tenant's spec,
in the same write (TenantRecord.layers, TenantEntry.layers):

    {"version": 3,                        # +1 at every write that changes its content or owner
     "owner": "security-controller",      # the credential that owns it, or None
     "owner_role": "layer:networkPolicies",
     "written_by": "security-controller", # who wrote it last (or "tenant.apply")
     "written_at": 1700000000.0}

A layer nobody wrote apart has no record: version 0, no owner.

Ownership. The first `layer.put` by a `layer:LAYER[@TENANT]` credential makes that
credential (by name) the layer's owner. From then on:
  - only the owner writes the layer (`layer.put`); a tenant's or another credential's
    `layer.put` is refused naming the owner;
  - a `tenant.apply` (whoever sends it) that would change an owned section is refused
    naming the owner; one that leaves the section out keeps the owner's content (the
    tenant need not know it); one that repeats it unchanged passes;
  - an admin releases the owner: `layer.release`, or `layer.put` with `release: true`
    (writes the given content and leaves the layer unowned, in one change).
The owner's role lets it do nothing but list tenants and read and write its layer
(controller.server.access).

A layer write is one change through the change path (controller.server.change): the
tenant's whole spec with the section replaced is validated as a `tenant.apply` is
(errors name the field, e.g. `spec.networkPolicies[0].podSelector`), then allocated,
compiled, stored (with the new record) and installed, or nothing changes.
`expect_version` makes it conditional: refused, with nothing changed, when the layer is
at another version (someone wrote it since the writer read it).
"""
from __future__ import annotations

import time

import yaml as yamllib

from topology import schema
from topology.model import Tenant
from controller.server import change as change_path
from controller.server.change import TenantChange
from controller.server.entry import TenantEntry
from controller.server.errors import ApiError, Refused, unknown_tenant

LAYERS = ("acls", "networkPolicies", "loadBalancers", "nat")  # the spec's sections that are layers
APPLY = "tenant.apply"  # who wrote a layer changed with the whole spec


def check_layer(layer, arg: str = "layer") -> str:
    if layer not in LAYERS:
        raise ApiError(f"{arg} {layer!r}: a policy layer is one of {', '.join(LAYERS)}",
                       [[arg, f"one of {', '.join(LAYERS)}"]])
    return layer


def section(t: Tenant, layer: str) -> list:
    """The layer's canonical content (what `tenant show` prints under spec.LAYER)."""
    return schema.to_doc(t)["spec"].get(layer) or []


def parse_content(layer: str, content) -> list:
    """A layer's content: a list, or YAML/JSON text of one (an empty document: [])."""
    if isinstance(content, str):
        try:
            docs = [d for d in yamllib.safe_load_all(content) if d is not None]
        except yamllib.YAMLError as e:
            raise ApiError(f"content: not valid YAML or JSON: {e}", [["content", "not YAML or JSON"]]) from None
        if len(docs) > 1:
            raise ApiError(f"content: expected one YAML document, found {len(docs)}",
                           [["content", "one document"]])
        content = docs[0] if docs else []
    if isinstance(content, dict) and list(content) == [layer]:  # `LAYER: [...]`, as in a spec
        content = content[layer] if content[layer] is not None else []
    if not isinstance(content, list):
        raise ApiError(f"content: spec.{layer} is a list of items, not {type(content).__name__}",
                       [["content", f"a list (the items of spec.{layer})"]])
    return content


def owner_text(rec: dict) -> str:
    return f"{rec['owner']} ({rec.get('owner_role') or 'layer'})"


def _caller(principal: dict | None) -> tuple[str, str]:
    """(name, role) of who asks; in-process callers (tests, the lab) are root."""
    if not principal:
        return "root", "admin"
    return str(principal.get("name")), str(principal.get("role"))


class OwnersMixin:
    """Core's operations on layers (a piece of Core)."""

    def layer_show(self, tenant: str, layer: str) -> dict:
        e = self.tenants.get(tenant)
        if e is None:
            raise unknown_tenant(tenant)
        check_layer(layer)
        rec = e.layers.get(layer) or {}
        return {"tenant": tenant, "layer": layer, "content": section(e.tenant, layer),
                "version": rec.get("version", 0), "owner": rec.get("owner"), "owner_role": rec.get("owner_role"),
                "written_by": rec.get("written_by"), "written_at": rec.get("written_at")}

    def layers_of(self, tenant: str) -> dict:
        """Every layer's record of a tenant (no content), for `tenant show`."""
        e = self.tenants.get(tenant)
        if e is None:
            raise unknown_tenant(tenant)
        return {layer: dict(e.layers.get(layer) or {"version": 0, "owner": None}) for layer in LAYERS}

    def layer_put(self, tenant: str, layer: str, content: str | list, expect_version: int | None = None,
                  release: bool = False, principal: dict | None = None) -> dict:
        """Replace one layer of a tenant's spec, as one change; its owner becomes the
        caller when the caller's role is layer:LAYER (release: an admin leaves it unowned)."""
        who, role = _caller(principal)
        check_layer(layer)
        items = parse_content(layer, content)
        if release and role != "admin":
            raise Refused(f"permission denied: only an admin releases a layer's owner ({who} is {role})",
                          [["release", "admin only"]])
        with self.changes.track(tenant, "layer put") as progress, self.mutex:
            progress.phase("compiling")
            old = self.tenants.get(tenant)
            if old is None:
                raise unknown_tenant(tenant)
            rec = old.layers.get(layer) or {}
            owner = rec.get("owner")
            if owner is not None and owner != who and not release:
                raise Refused(f"permission denied: spec.{layer} of tenant {tenant} is owned by {owner_text(rec)}; "
                              f"ask it, or an admin (who may release it: nvctl layer release {tenant} {layer})",
                              [[f"spec.{layer}", f"owned by {owner_text(rec)}"]])
            self._check_version(tenant, layer, rec, expect_version)
            doc = schema.to_doc(old.tenant)
            doc["spec"][layer] = items
            t = self._validated(doc, f"tenant {tenant}: spec.{layer} is invalid; nothing was changed")
            new_owner, new_role = (who, role) if role.startswith("layer:") else (None, None) if release else \
                (owner, rec.get("owner_role"))
            if section(t, layer) == section(old.tenant, layer) and new_owner == owner:
                return {**self.layer_show(tenant, layer), "action": "unchanged", "hosts": {},
                        "attach_errors": []}
            version = rec.get("version", 0) + 1
            layers = {**old.layers, layer: {"version": version, "owner": new_owner, "owner_role": new_role,
                                            "written_by": who, "written_at": time.time()}}
            action = f"spec.{layer} at version {version}" + (
                f", owned by {new_owner}" if new_owner and new_owner != owner else
                f", released by {who} (was {owner})" if owner and new_owner is None else "")
            out = change_path.run(self, TenantChange(old, t, action, layers=layers), progress)
        return {**out, "layer": layer, "version": version, "owner": new_owner}

    def layer_release(self, tenant: str, layer: str, principal: dict | None = None) -> dict:
        """Leave a layer unowned (admin): its content stays as it is."""
        who, role = _caller(principal)
        check_layer(layer)
        if role != "admin":
            raise Refused(f"permission denied: only an admin releases a layer's owner ({who} is {role})")
        with self.mutex:
            old = self.tenants.get(tenant)
            if old is None:
                raise unknown_tenant(tenant)
            rec = old.layers.get(layer) or {}
            if rec.get("owner") is None:
                return {"tenant": tenant, "layer": layer, "action": "unchanged (it has no owner)",
                        "version": rec.get("version", 0), "owner": None, "hosts": {}, "attach_errors": []}
            version = rec.get("version", 0) + 1
            layers = {**old.layers, layer: {**rec, "version": version, "owner": None, "owner_role": None,
                                            "written_by": who, "written_at": time.time()}}
            out = change_path.run(self, TenantChange(old, old.tenant, f"spec.{layer} released by {who} "
                                                     f"(was {rec['owner']})", layers=layers))
        return {**out, "layer": layer, "version": version, "owner": None, "was": rec["owner"]}

    def _check_version(self, tenant: str, layer: str, rec: dict, expect) -> None:
        have = rec.get("version", 0)
        if expect is not None and expect != have:
            raise ApiError(f"tenant {tenant}: spec.{layer} is at version {have}, not {expect} (written since "
                           f"by {rec.get('written_by') or 'someone'}); read it again (nvctl layer show "
                           f"{tenant} {layer}); nothing was changed",
                           [["expect_version", f"the layer is at version {have}"]])

    def _owned_layers_kept(self, text: str, t: Tenant, old: TenantEntry) -> tuple[Tenant, dict]:
        """A whole spec applied over a tenant (`tenant.apply`): its owned layers kept.
        A section that is owned and left out of the YAML keeps the owner's content; one
        given equal to it passes; one given otherwise is refused naming the owner. The
        layers whose content changes (none owned) go up a version. Returns the tenant
        to commit and its layers' record."""
        owned = {n: r for n, r in old.layers.items() if r.get("owner")}
        given = (schema.parse_yaml(text).get("spec") or {}) if owned else {}
        kept = []
        for layer, rec in sorted(owned.items()):
            if layer not in given:
                kept.append(layer)
            elif section(t, layer) != section(old.tenant, layer):
                raise Refused(f"permission denied: spec.{layer} is owned by {owner_text(rec)}; ask it, or an "
                              f"admin; leave spec.{layer} out of the YAML to keep it as it is "
                              f"(nvctl layer show {t.name} {layer}); nothing was changed",
                              [[f"spec.{layer}", f"owned by {owner_text(rec)}"]])
        if kept:
            doc = schema.to_doc(t)
            for layer in kept:
                doc["spec"][layer] = section(old.tenant, layer)
            t = self._validated(doc, f"tenant {t.name}: the YAML conflicts with the owned "
                                     f"{', '.join('spec.' + n for n in kept)}, which it keeps "
                                     f"({', '.join(owner_text(owned[n]) for n in kept)}); nothing was changed")
        layers = dict(old.layers)
        now, before = schema.to_doc(t)["spec"], schema.to_doc(old.tenant)["spec"]  # once, not per layer
        for layer in LAYERS:
            if (now.get(layer) or []) != (before.get(layer) or []):
                rec = layers.get(layer) or {}
                layers[layer] = {**rec, "version": rec.get("version", 0) + 1, "owner": None, "owner_role": None,
                                 "written_by": APPLY, "written_at": time.time()}
        return t, layers
