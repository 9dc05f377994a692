"""Tenant YAML: parse and validate into `topology.model.Tenant`.

Every problem is reported with the path of the field and the reason, all at once:

    spec.ports[2].ip: 10.0.1.5 is outside switch web's cidr 10.0.0.0/24

A document with any error produces no Tenant at all, so nothing can be half-applied.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any, Iterable

import yaml

from topology.model import Port, Switch, Tenant, derived_mac

API_VERSION = "nvctl/v1"
KIND = "Tenant"
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$|^[a-z]$")
MAC_RE = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")

TOP_KEYS = {"apiVersion": True, "kind": True, "metadata": True, "spec": True}
METADATA_KEYS = {"name": True}
SPEC_KEYS = {"switches": False, "ports": False}
SWITCH_KEYS = {"name": True, "cidr": True}
PORT_KEYS = {"name": True, "switch": True, "ip": True, "mac": False, "host": True}


class ValidationError(ValueError):
    """All problems found in one document; `errors` is a list of (path, reason)."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("\n".join(f"{p}: {r}" if p else r for p, r in errors))


class _Errors:
    def __init__(self):
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, reason: str) -> None:
        self.items.append((path, reason))


def _keys(obj: Any, path: str, allowed: dict[str, bool], errs: _Errors, what: str) -> bool:
    """Check obj is a mapping with the required keys and no unknown ones."""
    if not isinstance(obj, dict):
        errs.add(path, f"must be a mapping ({what}), got {type(obj).__name__}")
        return False
    for k in obj:
        if k not in allowed:
            known = ", ".join(sorted(allowed))
            errs.add(f"{path}.{k}" if path else str(k), f"unknown key (allowed: {known})")
    for k, required in allowed.items():
        if required and k not in obj:
            errs.add(f"{path}.{k}" if path else k, "is required")
    return True


def _name(value: Any, path: str, errs: _Errors) -> str | None:
    if not isinstance(value, str) or not NAME_RE.match(value):
        errs.add(path, f"{value!r} is not a valid name (lowercase letters, digits and '-', "
                       "starting with a letter, at most 32 characters)")
        return None
    return value


def parse_yaml(text: str) -> Any:
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as e:
        raise ValidationError([("", f"not valid YAML: {e}")]) from None
    docs = [d for d in docs if d is not None]
    if len(docs) != 1:
        raise ValidationError([("", f"expected exactly one YAML document, found {len(docs)}")])
    return docs[0]


def load_tenant(text: str, known_hosts: Iterable[str] | None = None) -> Tenant:
    return validate(parse_yaml(text), known_hosts)


def validate(doc: Any, known_hosts: Iterable[str] | None = None) -> Tenant:
    """Validate a parsed document. `known_hosts`: host names ports may be placed on
    (None skips that check, for offline linting)."""
    errs = _Errors()
    hosts = set(known_hosts) if known_hosts is not None else None
    if not _keys(doc, "", TOP_KEYS, errs, "a Tenant object"):
        raise ValidationError(errs.items)
    if "apiVersion" in doc and doc["apiVersion"] != API_VERSION:
        errs.add("apiVersion", f"{doc['apiVersion']!r} is not supported (use {API_VERSION})")
    if "kind" in doc and doc["kind"] != KIND:
        errs.add("kind", f"{doc['kind']!r} is not supported (use {KIND})")
    name = None
    md = doc.get("metadata")
    if md is not None and _keys(md, "metadata", METADATA_KEYS, errs, "with a name"):
        if "name" in md:
            name = _name(md["name"], "metadata.name", errs)
    spec = doc.get("spec")
    switches: list[Switch] = []
    ports: list[Port] = []
    if spec is not None and _keys(spec, "spec", SPEC_KEYS, errs, "switches and ports"):
        switches = _switches(spec.get("switches", []), errs)
        ports = _ports(spec.get("ports", []), {s.name: s for s in switches}, hosts, errs)
    if errs.items:
        raise ValidationError(errs.items)
    return Tenant(name=name, switches=tuple(switches), ports=tuple(ports))


def _list(value: Any, path: str, errs: _Errors) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        errs.add(path, f"must be a list, got {type(value).__name__}")
        return []
    return value


def _switches(raw: Any, errs: _Errors) -> list[Switch]:
    out: list[Switch] = []
    seen: dict[str, str] = {}
    cidrs: list[tuple[ipaddress.IPv4Network, str]] = []
    for i, item in enumerate(_list(raw, "spec.switches", errs)):
        path = f"spec.switches[{i}]"
        if not _keys(item, path, SWITCH_KEYS, errs, "name and cidr"):
            continue
        name = _name(item.get("name"), f"{path}.name", errs) if "name" in item else None
        if name is not None and name in seen:
            errs.add(f"{path}.name", f"duplicate switch name {name!r} (also {seen[name]})")
            name = None
        cidr = None
        if "cidr" in item:
            try:
                cidr = ipaddress.IPv4Network(str(item["cidr"]), strict=True)
            except ValueError as e:
                errs.add(f"{path}.cidr", f"{item['cidr']!r} is not an IPv4 network: {e}")
            else:
                if cidr.prefixlen > 30:
                    errs.add(f"{path}.cidr", f"{cidr} leaves no room for hosts (use /30 or wider)")
                    cidr = None
        if cidr is not None:
            for other, oname in cidrs:
                if cidr.overlaps(other):
                    errs.add(f"{path}.cidr", f"{cidr} overlaps switch {oname}'s {other}")
            cidrs.append((cidr, name or f"#{i}"))
        if name is not None:
            seen[name] = path
            if cidr is not None:
                out.append(Switch(name, cidr))
    return out


def _ports(raw: Any, switches: dict[str, Switch], hosts: set[str] | None,
           errs: _Errors) -> list[Port]:
    out: list[Port] = []
    names: dict[str, str] = {}
    ips: dict[tuple[str, ipaddress.IPv4Address], str] = {}
    macs: dict[tuple[str, str], str] = {}
    for i, item in enumerate(_list(raw, "spec.ports", errs)):
        path = f"spec.ports[{i}]"
        if not _keys(item, path, PORT_KEYS, errs, "name, switch, ip, host"):
            continue
        ok = True
        name = _name(item.get("name"), f"{path}.name", errs) if "name" in item else None
        if name is not None and name in names:
            errs.add(f"{path}.name", f"duplicate port name {name!r} (also {names[name]})")
            ok = False
        ok &= name is not None
        sw = None
        if "switch" in item:
            sw = switches.get(item["switch"])
            if sw is None:
                known = ", ".join(sorted(switches)) or "none defined"
                errs.add(f"{path}.switch", f"unknown switch {item['switch']!r} (switches: {known})")
        ok &= sw is not None
        ip = None
        if "ip" in item:
            try:
                ip = ipaddress.IPv4Address(str(item["ip"]))
            except ValueError:
                errs.add(f"{path}.ip", f"{item['ip']!r} is not an IPv4 address")
        if ip is not None and sw is not None:
            if ip not in sw.cidr:
                errs.add(f"{path}.ip", f"{ip} is outside switch {sw.name}'s cidr {sw.cidr}")
                ip = None
            elif ip in (sw.cidr.network_address, sw.cidr.broadcast_address):
                which = "network" if ip == sw.cidr.network_address else "broadcast"
                errs.add(f"{path}.ip", f"{ip} is the {which} address of {sw.cidr}")
                ip = None
            elif (sw.name, ip) in ips:
                errs.add(f"{path}.ip", f"{ip} is already used on switch {sw.name} by {ips[(sw.name, ip)]}")
                ip = None
        ok &= ip is not None
        mac = None
        if "mac" in item:
            m = item["mac"]
            if not isinstance(m, str) or not MAC_RE.match(m):
                errs.add(f"{path}.mac", f"{m!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
            elif int(m.split(":")[0], 16) & 1:
                errs.add(f"{path}.mac", f"{m} is a multicast address")
            elif m.lower() == "00:00:00:00:00:00":
                errs.add(f"{path}.mac", "the all-zero MAC is not a port address")
            else:
                mac = m.lower()
        elif ip is not None:
            mac = derived_mac(ip)
        if mac is not None and sw is not None:
            if (sw.name, mac) in macs:
                errs.add(f"{path}.mac", f"{mac} is already used on switch {sw.name} by {macs[(sw.name, mac)]}")
                mac = None
        ok &= mac is not None
        host = item.get("host")
        if "host" in item:
            if not isinstance(host, str) or not host:
                errs.add(f"{path}.host", f"{host!r} is not a host name")
                host = None
            elif hosts is not None and host not in hosts:
                known = ", ".join(sorted(hosts)) or "none registered"
                errs.add(f"{path}.host", f"unknown host {host!r} (hosts: {known})")
                host = None
        ok &= host is not None
        if name is not None:
            names[name] = path
        if sw is not None and ip is not None:
            ips[(sw.name, ip)] = name or path
        if sw is not None and mac is not None:
            macs[(sw.name, mac)] = name or path
        if ok:
            out.append(Port(name, sw.name, ip, mac, host))
    return out


def to_doc(t: Tenant) -> dict:
    """The canonical document for a tenant (what `tenant show` prints)."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": t.name},
        "spec": {
            "switches": [{"name": s.name, "cidr": str(s.cidr)} for s in t.switches],
            "ports": [{"name": p.name, "switch": p.switch, "ip": str(p.ip), "mac": p.mac,
                       "host": p.host} for p in t.ports],
        },
    }
