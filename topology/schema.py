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

from topology.model import (AclRule, HealthCheck, LoadBalancer, NatRule, NetworkPolicy, PolicyPeer, PolicyRule, Port,
                            Route, Router, RouterPort, Selector, Switch, Tenant, derived_mac, eui64,
                            service_address)

API_VERSION = "nvctl/v1"
KIND = "Tenant"
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$|^[a-z]$")
MAC_RE = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")

TOP_KEYS = {"apiVersion": True, "kind": True, "metadata": True, "spec": True}
METADATA_KEYS = {"name": True}
SPEC_KEYS = {"switches": False, "ports": False, "routers": False, "acls": False, "nat": False,
             "loadBalancers": False, "networkPolicies": False}
LB_KEYS = {"name": True, "vip": True, "protocol": True, "port": True, "backends": True, "healthCheck": False}
HEALTH_KEYS = {"interval": False, "timeout": False, "successCount": False, "failureCount": False}
MAX_HEALTH_SECONDS = 3600
MAX_HEALTH_COUNT = 100
NAT_KEYS = {"type": True, "router": False, "cidr": False, "port": False, "externalIp": False}
SWITCH_KEYS = {"name": True, "cidr": True, "mtu": False, "dhcp": False, "cidr6": False, "labels": False}
MIN_MTU, MAX_MTU = 576, 9000
PORT_KEYS = {"name": True, "switch": True, "ip": True, "mac": False, "host": True,
             "rateLimitMbps": False, "bumLimitPps": False, "ip6": False, "madeBy": False, "workload": False,
             "containerId": False, "labels": False}
MADE_BY = ("yaml", "api", "cni", "docker")
ROUTER_KEYS = {"name": True, "ports": True, "routes": False, "external": False}
ROUTER_PORT_KEYS = {"switch": True, "ip": True, "mac": False, "ip6": False}
ROUTE_KEYS = {"prefix": True, "nextHop": True}
EXTERNAL_KEYS = {"ip": True, "gateways": False, "importRoutes": False}
ACL_KEYS = {"priority": True, "direction": True, "ports": False, "from": False, "to": False,
            "protocol": False, "srcPorts": False, "dstPorts": False, "action": True,
            "name": False, "log": False}
ACL_DIRECTIONS = ("to-port", "from-port")
ACL_ACTIONS = ("allow", "allow-stateless", "deny")
ACL_PROTOCOLS = ("tcp", "udp", "icmp", "any")
MAX_ACL_PRIORITY = 32767
NETPOL_KEYS = {"name": True, "namespace": False, "podSelector": True, "policyTypes": False, "ingress": False,
               "egress": False, "log": False}
SELECTOR_KEYS = {"matchLabels": False, "matchExpressions": False}
EXPRESSION_KEYS = {"key": True, "operator": True, "values": False}
SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
PEER_KEYS = {"podSelector": False, "namespaceSelector": False, "ipBlock": False}
IPBLOCK_KEYS = {"cidr": True, "except": False}
POLICY_PORT_KEYS = {"protocol": False, "port": False, "endPort": False}
POLICY_TYPES = ("Ingress", "Egress")
# The policy layers keep a bit per policy of a type and per peer set (rule with peers) of
# a type in four 32-bit registers each (controller.layers.netpol).
MAX_POLICIES_PER_TYPE = 128
MAX_PEER_RULES_PER_TYPE = 128
POLICY_PROTOCOLS = ("TCP", "UDP")
MAX_RATE_MBPS = 100_000
MAX_BUM_PPS = 1_000_000


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


# libyaml's parser when PyYAML has it (10x the pure-Python one: most of a one-port
# change used to be parsing the tenant's YAML); the same safe subset either way.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(text: str) -> Any:
    try:
        docs = list(yaml.load_all(text, Loader=_SAFE_LOADER))
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
    routers: list[Router] = []
    acls: list[AclRule] = []
    if spec is not None and _keys(spec, "spec", SPEC_KEYS, errs, "switches and ports"):
        switches = _switches(spec.get("switches", []), errs)
        by_switch = {s.name: s for s in switches}
        ports = _ports(spec.get("ports", []), by_switch, hosts, errs)
        routers = _routers(spec.get("routers", []), by_switch, ports, errs)
        _service_addresses(switches, ports, routers, errs)
        acls = _acls(spec.get("acls", []), by_switch, ports, errs)
        nat = _nat(spec.get("nat", []), routers, ports, errs)
        lbs = _load_balancers(spec.get("loadBalancers", []), switches, routers, ports, errs)
        policies = _network_policies(spec.get("networkPolicies", []), by_switch, errs)
    if errs.items:
        raise ValidationError(errs.items)
    return Tenant(name=name, switches=tuple(switches), ports=tuple(ports), routers=tuple(routers),
                  acls=tuple(acls), nat=tuple(nat) if spec is not None else (),
                  load_balancers=tuple(lbs) if spec is not None else (),
                  network_policies=tuple(policies) if spec is not None else ())


def _service_addresses(switches: list[Switch], ports: list[Port], routers: list[Router],
                       errs: _Errors) -> None:
    """A switch with DHCP and no router answers DHCP and DNS at its last address: no
    port may have it."""
    routed = {rp.switch for r in routers for rp in r.ports}
    service = {s.name: service_address(s.cidr) for s in switches if s.dhcp and s.name not in routed}
    for i, p in enumerate(ports):
        if service.get(p.switch) == p.ip:
            errs.add(f"spec.ports[{i}].ip", f"{p.ip} is switch {p.switch}'s DHCP and DNS address (its last "
                     f"address, taken when it has dhcp and no router): pick another, or set dhcp: false")


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
    cidrs6: list[tuple[ipaddress.IPv6Network, str]] = []
    for i, item in enumerate(_list(raw, "spec.switches", errs)):
        path = f"spec.switches[{i}]"
        if not _keys(item, path, SWITCH_KEYS, errs, "name and cidr"):
            continue
        name = _name(item.get("name"), f"{path}.name", errs) if "name" in item else None
        if name is not None and name in seen:
            errs.add(f"{path}.name", f"duplicate switch name {name!r} (also {seen[name]})")
            name = None
        cidr = _subnet(item, path, "cidr", ipaddress.IPv4Network, cidrs, name or f"#{i}", errs)
        mtu = item.get("mtu")
        if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int) or not MIN_MTU <= mtu <= MAX_MTU):
            errs.add(f"{path}.mtu", f"{mtu!r} is not an MTU in bytes ({MIN_MTU} <= mtu <= {MAX_MTU})")
            cidr = None
        dhcp = _flag(item, "dhcp", path, errs)
        labels = labels_of(item.get("labels"), f"{path}.labels", errs)
        if labels is None:
            cidr = None
        cidr6 = _subnet(item, path, "cidr6", ipaddress.IPv6Network, cidrs6, name or f"#{i}", errs)
        if cidr6 is False:
            cidr = None
        if name is not None:
            seen[name] = path
            if cidr is not None:
                out.append(Switch(name, cidr, mtu, dhcp is not False, cidr6 or None, labels))
    return out


def _flag(item: dict, key: str, path: str, errs: _Errors, default: bool = True) -> bool | None:
    """A true/false key; None (reported) when it is something else."""
    v = item.get(key, default)
    if not isinstance(v, bool):
        errs.add(f"{path}.{key}", f"{v!r} is not true or false")
        return None
    return v


# Kubernetes' label syntax and limits: a key is an optional DNS-subdomain prefix (at most
# 253 characters) and '/', then a name of at most 63 characters: alphanumerics, '-', '_'
# and '.', beginning and ending with an alphanumeric; a value is such a name, or empty.
LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
MAX_LABELS = 64  # per port or switch


def label_problem(key: Any, value: Any) -> tuple[str, str] | None:
    """(what, why) when `key: value` is not a Kubernetes label; None when it is.
    `what` is "key" or "value"."""
    if not isinstance(key, str):
        return "key", f"{key!r} is not a string"
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not LABEL_PREFIX.match(prefix)):
        return "key", (f"{key!r}: the prefix {prefix!r} is not a DNS subdomain (lowercase letters, digits, "
                       f"'-' and '.', at most 253 characters)")
    if not LABEL_NAME.match(name):
        return "key", (f"{key!r}: the name {name!r} must be 1 to 63 characters, letters, digits, '-', '_' "
                       f"and '.', beginning and ending with a letter or digit")
    if not isinstance(value, str):
        if isinstance(value, (bool, int, float)):  # YAML read `true`, `2` or `1.5`: a label is text
            shown = str(value).lower() if isinstance(value, bool) else str(value)
            return "value", f"{value!r} is not a string (quote it: \"{shown}\")"
        return "value", f"{value!r} is not a string"
    if value and not LABEL_NAME.match(value):
        return "value", (f"{value!r} must be empty or 1 to 63 characters, letters, digits, '-', '_' and '.', "
                         f"beginning and ending with a letter or digit")
    return None


def labels_of(raw: Any, path: str, errs: _Errors) -> tuple | None:
    """`labels:` of a port or switch as sorted ((key, value), ...); () when absent; None
    (each problem reported under `path`.KEY) when it is wrong."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        errs.add(path, f"must be a mapping of key: value, got {type(raw).__name__}")
        return None
    if len(raw) > MAX_LABELS:
        errs.add(path, f"{len(raw)} labels; at most {MAX_LABELS}")
        return None
    ok = True
    for k, v in raw.items():
        bad = label_problem(k, v)
        if bad is not None:
            errs.add(f"{path}.{k}", bad[1])
            ok = False
    return tuple(sorted(raw.items())) if ok else None


WORKLOADS = {True: (True, False), "namespace": (True, False), "vm": (True, True), False: (False, False),
             "none": (False, False)}


def _workload(item: dict, path: str, errs: _Errors) -> tuple[bool | None, bool]:
    """`workload:` of a port: (the platform makes one, it is a VM). true or `namespace`
    (the default): a network namespace; `vm`: a QEMU guest; false or `none`: nothing,
    something else plugs the port (a container runtime, a hypervisor)."""
    v = item.get("workload", True)
    if isinstance(v, (bool, str)) and v in WORKLOADS:
        return WORKLOADS[v]
    errs.add(f"{path}.workload", f"{v!r} is not one of namespace (or true), vm, none (or false)")
    return None, False


def _subnet(item: dict, path: str, key: str, kind, seen: list, name: str, errs: _Errors):
    """switches[i].cidr or .cidr6: a network for hosts, overlapping no other switch's
    (added to `seen`). None when absent, False (cidr6) or None (cidr) when wrong."""
    if key not in item:
        return None
    version = 4 if kind is ipaddress.IPv4Network else 6
    try:
        net = kind(str(item[key]), strict=True)
    except ValueError as e:
        errs.add(f"{path}.{key}", f"{item[key]!r} is not an IPv{version} network: {e}")
        return None if version == 4 else False
    if version == 4 and net.prefixlen > 30:
        errs.add(f"{path}.{key}", f"{net} leaves no room for hosts (use /30 or wider)")
        return None
    if version == 6 and (net.prefixlen > 120 or net.is_link_local or net.is_multicast):
        errs.add(f"{path}.{key}", f"{net} is not a prefix for hosts (a unicast /120 or wider, not "
                                  f"link-local or multicast)")
        return False
    for other, oname in seen:
        if net.overlaps(other):
            errs.add(f"{path}.{key}", f"{net} overlaps switch {oname}'s {other}")
    seen.append((net, name))
    return net


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
        rate = item.get("rateLimitMbps")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float))
                                 or not 0 < rate <= MAX_RATE_MBPS):
            errs.add(f"{path}.rateLimitMbps", f"{rate!r} is not a rate in Mbit/s (0 < rate <= {MAX_RATE_MBPS})")
            ok = False
        bum = item.get("bumLimitPps")
        if bum is not None and (isinstance(bum, bool) or not isinstance(bum, int) or not 0 < bum <= MAX_BUM_PPS):
            errs.add(f"{path}.bumLimitPps", f"{bum!r} is not a whole number of packets per second "
                                            f"(1 <= pps <= {MAX_BUM_PPS})")
            ok = False
        ip6 = _port_ip6(item, path, sw, mac, ips, errs) if sw is not None else None
        ok &= ip6 is not False
        made_by = item.get("madeBy", "yaml")
        if made_by not in MADE_BY:
            errs.add(f"{path}.madeBy", f"{made_by!r} is not one of {', '.join(MADE_BY)}")
            ok = False
        workload, vm = _workload(item, path, errs)
        ok &= workload is not None
        labels = labels_of(item.get("labels"), f"{path}.labels", errs)
        ok &= labels is not None
        cid = item.get("containerId")
        if cid is not None and (not isinstance(cid, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", cid)):
            errs.add(f"{path}.containerId", f"{cid!r} is not a container id (letters, digits, _ . -; <= 128)")
            ok = False
        if name is not None:
            names[name] = path
        if sw is not None and ip is not None:
            ips[(sw.name, ip)] = name or path
        if sw is not None and ip6:
            ips[(sw.name, ip6)] = name or path
        if sw is not None and mac is not None:
            macs[(sw.name, mac)] = name or path
        if ok:
            out.append(Port(name, sw.name, ip, mac, host, float(rate) if rate is not None else None, bum,
                            ip6 or None, made_by, workload, cid, vm, labels=labels))
    return out


def _port_ip6(item: dict, path: str, sw: Switch, mac: str | None, used: dict, errs: _Errors):
    """The port's IPv6 CA: `ip6`, or (on a /64) the one SLAAC gives its MAC; None on a
    switch without cidr6; False when it is wrong (reported)."""
    if "ip6" not in item:
        if sw.cidr6 is None or mac is None:
            return None
        if sw.cidr6.prefixlen != 64:
            errs.add(f"{path}.ip6", f"is required: switch {sw.name}'s cidr6 {sw.cidr6} is not a /64, so no "
                                    f"address follows from the MAC")
            return False
        ip6 = eui64(sw.cidr6, mac)
    else:
        if sw.cidr6 is None:
            errs.add(f"{path}.ip6", f"switch {sw.name} has no cidr6")
            return False
        try:
            ip6 = ipaddress.IPv6Address(str(item["ip6"]))
        except ValueError:
            errs.add(f"{path}.ip6", f"{item['ip6']!r} is not an IPv6 address")
            return False
        if ip6 not in sw.cidr6 or ip6 == sw.cidr6.network_address:
            errs.add(f"{path}.ip6", f"{ip6} is not a host address of switch {sw.name}'s cidr6 {sw.cidr6}")
            return False
    if (sw.name, ip6) in used:
        errs.add(f"{path}.ip6", f"{ip6} is already used on switch {sw.name} by {used[(sw.name, ip6)]}")
        return False
    return ip6


def _ip(value: Any, path: str, errs: _Errors) -> ipaddress.IPv4Address | None:
    try:
        return ipaddress.IPv4Address(str(value))
    except ValueError:
        errs.add(path, f"{value!r} is not an IPv4 address")
        return None


def _routers(raw: Any, switches: dict[str, Switch], ports: list[Port], errs: _Errors) -> list[Router]:
    out: list[Router] = []
    names: set[str] = set()
    attached: dict[str, str] = {}  # switch -> router that has a port on it
    used_ips = {(p.switch, p.ip): p.name for p in ports}
    used_ips.update({(p.switch, p.ip6): p.name for p in ports if p.ip6 is not None})
    used_macs = {(p.switch, p.mac): p.name for p in ports}
    for i, item in enumerate(_list(raw, "spec.routers", errs)):
        path = f"spec.routers[{i}]"
        if not _keys(item, path, ROUTER_KEYS, errs, "name, ports"):
            continue
        ok = True
        name = _name(item.get("name"), f"{path}.name", errs) if "name" in item else None
        if name is not None and name in names:
            errs.add(f"{path}.name", f"duplicate router name {name!r}")
            name = None
        ok &= name is not None
        rports: list[RouterPort] = []
        rpl = _list(item.get("ports"), f"{path}.ports", errs)
        if "ports" in item and not rpl:
            errs.add(f"{path}.ports", "a router needs at least one port")
            ok = False
        for j, rp in enumerate(rpl):
            pp = f"{path}.ports[{j}]"
            if not _keys(rp, pp, ROUTER_PORT_KEYS, errs, "switch and ip"):
                ok = False
                continue
            sw = switches.get(rp.get("switch"))
            if "switch" in rp and sw is None:
                errs.add(f"{pp}.switch", f"unknown switch {rp['switch']!r}")
            elif sw is not None and sw.name in attached:
                errs.add(f"{pp}.switch", f"switch {sw.name} is already attached to router {attached[sw.name]}")
                sw = None
            ip = _ip(rp["ip"], f"{pp}.ip", errs) if "ip" in rp else None
            if ip is not None and sw is not None:
                if ip not in sw.cidr or ip in (sw.cidr.network_address, sw.cidr.broadcast_address):
                    errs.add(f"{pp}.ip", f"{ip} is not a host address of switch {sw.name}'s cidr {sw.cidr}")
                    ip = None
                elif (sw.name, ip) in used_ips:
                    errs.add(f"{pp}.ip", f"{ip} is already used on switch {sw.name} by {used_ips[(sw.name, ip)]}")
                    ip = None
            mac = None
            if ip is not None:
                mac = str(rp.get("mac", derived_mac(ip, 1))).lower()
                if not MAC_RE.match(mac) or int(mac.split(":")[0], 16) & 1:
                    errs.add(f"{pp}.mac", f"{rp.get('mac')!r} is not a unicast MAC address")
                    mac = None
                elif sw is not None and (sw.name, mac) in used_macs:
                    errs.add(f"{pp}.mac", f"{mac} is already used on switch {sw.name} by {used_macs[(sw.name, mac)]}")
                    mac = None
            ip6 = None
            if "ip6" in rp and sw is not None:
                try:
                    ip6 = ipaddress.IPv6Address(str(rp["ip6"]))
                except ValueError:
                    errs.add(f"{pp}.ip6", f"{rp['ip6']!r} is not an IPv6 address")
                    ok = False
                else:
                    if sw.cidr6 is None or ip6 not in sw.cidr6 or ip6 == sw.cidr6.network_address:
                        errs.add(f"{pp}.ip6", f"{ip6} is not a host address of switch {sw.name}'s cidr6 "
                                              f"{sw.cidr6 or '(none)'}")
                        ok, ip6 = False, None
                    elif (sw.name, ip6) in used_ips:
                        errs.add(f"{pp}.ip6", f"{ip6} is already used on switch {sw.name} by "
                                              f"{used_ips[(sw.name, ip6)]}")
                        ok, ip6 = False, None
            if sw is None or ip is None or mac is None:
                ok = False
                continue
            attached[sw.name] = name or path
            used_ips[(sw.name, ip)] = f"router {name}"
            if ip6 is not None:
                used_ips[(sw.name, ip6)] = f"router {name}"
            used_macs[(sw.name, mac)] = f"router {name}"
            rports.append(RouterPort(sw.name, ip, mac, ip6))
        routes: list[Route] = []
        connected = {rp.switch for rp in rports}
        port_ips = {p.ip: p for p in ports}
        for j, rt in enumerate(_list(item.get("routes"), f"{path}.routes", errs)):
            rp_path = f"{path}.routes[{j}]"
            if not _keys(rt, rp_path, ROUTE_KEYS, errs, "prefix and nextHop"):
                ok = False
                continue
            try:
                prefix = ipaddress.IPv4Network(str(rt["prefix"]), strict=True)
            except ValueError as e:
                errs.add(f"{rp_path}.prefix", f"{rt['prefix']!r} is not an IPv4 network: {e}")
                ok = False
                continue
            nh = _ip(rt["nextHop"], f"{rp_path}.nextHop", errs)
            if nh is None:
                ok = False
                continue
            target = port_ips.get(nh)
            if target is None or target.switch not in connected:
                errs.add(f"{rp_path}.nextHop", f"{nh} is not a port on a switch of router {name} "
                                               f"({', '.join(sorted(connected)) or 'none'})")
                ok = False
                continue
            routes.append(Route(prefix, nh))
        ext, gateways, imports = None, (), None
        if "external" in item:
            if _keys(item["external"], f"{path}.external", EXTERNAL_KEYS, errs, "ip"):
                ext = _ip(item["external"].get("ip"), f"{path}.external.ip", errs) if "ip" in item["external"] else None
                gateways = _gateways(item["external"].get("gateways", []), f"{path}.external.gateways", errs)
                ok &= gateways is not None
                if "importRoutes" in item["external"]:
                    imports = _import_routes(item["external"]["importRoutes"], f"{path}.external.importRoutes", errs)
                    ok &= imports is not None
            ok &= ext is not None
        if name is not None:
            names.add(name)
        if ok:
            out.append(Router(name, tuple(rports), tuple(routes), ext, gateways, imports))
    return out


MAX_GATEWAYS = 8  # a gateway group larger than this buys nothing but BFD sessions


def _gateways(raw: Any, path: str, errs: "_Errors") -> tuple[str, ...] | None:
    """`external.gateways`: host names, most preferred first, each once."""
    if not isinstance(raw, list) or not all(isinstance(h, str) and h for h in raw):
        errs.add(path, "must be a list of host names (most preferred first)")
        return None
    if len(set(raw)) != len(raw):
        dup = next(h for h in raw if raw.count(h) > 1)
        errs.add(path, f"host {dup} is listed twice")
        return None
    if len(raw) > MAX_GATEWAYS:
        errs.add(path, f"{len(raw)} hosts: at most {MAX_GATEWAYS}")
        return None
    return tuple(raw)


MAX_IMPORT_FILTERS = 64


def _import_routes(raw: Any, path: str, errs: "_Errors") -> tuple | None:
    """`external.importRoutes`: IPv4 prefixes; a route learned from the provider is taken
    in when its prefix lies inside one of them ("0.0.0.0/0": every route)."""
    if not isinstance(raw, list):
        errs.add(path, "must be a list of IPv4 prefixes (e.g. [198.18.0.0/15]): learned routes inside them "
                       "are imported")
        return None
    out = []
    for i, v in enumerate(raw):
        try:
            net = ipaddress.IPv4Network(str(v), strict=True)
        except ValueError as e:
            errs.add(f"{path}[{i}]", f"{v!r} is not an IPv4 prefix: {e}")
            return None
        if net in out:
            errs.add(f"{path}[{i}]", f"{net} is listed twice")
            return None
        out.append(net)
    if len(out) > MAX_IMPORT_FILTERS:
        errs.add(path, f"{len(out)} prefixes: at most {MAX_IMPORT_FILTERS}")
        return None
    return tuple(out)


def _nat(raw: Any, routers: list[Router], ports: list[Port], errs: _Errors) -> list[NatRule]:
    out: list[NatRule] = []
    by_router = {r.name: r for r in routers}
    by_port = {p.name: p for p in ports}
    used_ext = {r.external_ip: f"router {r.name}" for r in routers if r.external_ip}
    fip_ports: set[str] = set()
    for i, item in enumerate(_list(raw, "spec.nat", errs)):
        path = f"spec.nat[{i}]"
        if not _keys(item, path, NAT_KEYS, errs, "type and its fields"):
            continue
        kind = item.get("type")
        if kind == "snat":
            extra = [k for k in ("port", "externalIp") if k in item]
            for k in extra:
                errs.add(f"{path}.{k}", "not used by type snat (it takes router and cidr)")
            r = by_router.get(item.get("router"))
            if "router" not in item:
                errs.add(f"{path}.router", "is required for type snat")
            elif r is None:
                errs.add(f"{path}.router", f"unknown router {item['router']!r}")
            elif r.external_ip is None:
                errs.add(f"{path}.router", f"router {r.name} has no external address (set external.ip)")
                r = None
            cidr = None
            if "cidr" not in item:
                errs.add(f"{path}.cidr", "is required for type snat")
            else:
                try:
                    cidr = ipaddress.IPv4Network(str(item["cidr"]), strict=True)
                except ValueError as e:
                    errs.add(f"{path}.cidr", f"{item['cidr']!r} is not an IPv4 network: {e}")
            if r is not None and cidr is not None and not extra:
                out.append(NatRule("snat", r.name, cidr=cidr))
        elif kind == "floating-ip":
            for k in ("router", "cidr"):
                if k in item:
                    errs.add(f"{path}.{k}", "not used by type floating-ip (it takes port and externalIp)")
            p = by_port.get(item.get("port"))
            r = None
            if "port" not in item:
                errs.add(f"{path}.port", "is required for type floating-ip")
            elif p is None:
                errs.add(f"{path}.port", f"unknown port {item['port']!r}")
            elif p.name in fip_ports:
                errs.add(f"{path}.port", f"port {p.name} already has a floating IP")
            else:
                r = next((x for x in routers if x.port_on(p.switch)), None)
                if r is None or r.external_ip is None:
                    errs.add(f"{path}.port", f"port {p.name}'s switch {p.switch} has no router with an "
                                             "external address")
                    r = None
            ext = _ip(item["externalIp"], f"{path}.externalIp", errs) if "externalIp" in item else None
            if "externalIp" not in item:
                errs.add(f"{path}.externalIp", "is required for type floating-ip")
            elif ext is not None and ext in used_ext:
                errs.add(f"{path}.externalIp", f"{ext} is already used by {used_ext[ext]}")
                ext = None
            if p is not None and r is not None and ext is not None:
                used_ext[ext] = f"the floating IP of {p.name}"
                fip_ports.add(p.name)
                out.append(NatRule("floating-ip", r.name, port=p.name, external_ip=ext))
        else:
            errs.add(f"{path}.type", f"{kind!r} is not one of snat, floating-ip")
    return out


def _load_balancers(raw: Any, switches: list[Switch], routers: list[Router], ports: list[Port],
                    errs: _Errors) -> list[LoadBalancer]:
    out: list[LoadBalancer] = []
    by_port = {p.name: p for p in ports}
    taken = {p.ip: f"port {p.name}" for p in ports}
    taken.update({rp.ip: f"router {r.name}" for r in routers for rp in r.ports})
    names: set[str] = set()
    vips: dict = {}
    for i, item in enumerate(_list(raw, "spec.loadBalancers", errs)):
        path = f"spec.loadBalancers[{i}]"
        if not _keys(item, path, LB_KEYS, errs, "name, vip, protocol, port, backends"):
            continue
        ok = True
        name = _name(item.get("name"), f"{path}.name", errs) if "name" in item else None
        if name is not None and name in names:
            errs.add(f"{path}.name", f"duplicate load balancer name {name!r}")
            name = None
        ok &= name is not None
        vip = _ip(item["vip"], f"{path}.vip", errs) if "vip" in item else None
        if vip is not None and vip in taken:
            errs.add(f"{path}.vip", f"{vip} is already the address of {taken[vip]}")
            vip = None
        ok &= vip is not None
        proto = item.get("protocol")
        if "protocol" in item and proto not in ("tcp", "udp"):
            errs.add(f"{path}.protocol", f"{proto!r} is not tcp or udp")
            ok = False
        port = item.get("port")
        if "port" in item and (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535):
            errs.add(f"{path}.port", f"{port!r} is not a port number 1-65535")
            ok = False
        if ok and (vip, proto, port) in vips:
            errs.add(f"{path}.port", f"{vip}:{port}/{proto} is already load balancer {vips[(vip, proto, port)]}")
            ok = False
        backends = []
        lst = _list(item.get("backends"), f"{path}.backends", errs)
        if "backends" in item and not lst:
            errs.add(f"{path}.backends", "a load balancer needs at least one backend")
            ok = False
        for k, b in enumerate(lst):
            m = re.fullmatch(r"([a-z][a-z0-9-]*):(\d+)", str(b))
            if not m or m.group(1) not in by_port or not 1 <= int(m.group(2)) <= 65535:
                why = "unknown port" if m and m.group(1) not in by_port else "is not PORT:NUMBER"
                errs.add(f"{path}.backends[{k}]", f"{b!r} {why} (e.g. vm1:8080, vm1 a port of this tenant)")
                ok = False
                continue
            backends.append((m.group(1), int(m.group(2))))
        if len(set(backends)) != len(backends):
            errs.add(f"{path}.backends", "a backend is listed twice")
            ok = False
        hc = None
        if "healthCheck" in item:
            hc = _health_check(item["healthCheck"], f"{path}.healthCheck", errs)
            ok &= hc is not None
        if ok:
            names.add(name)
            vips[(vip, proto, port)] = name
            out.append(LoadBalancer(name, vip, proto, port, tuple(backends), hc))
    return out


def _health_check(raw: Any, path: str, errs: _Errors) -> HealthCheck | None:
    """A load balancer's healthCheck ({} takes every default); None when wrong (reported)."""
    if raw is None:
        raw = {}
    if not _keys(raw, path, HEALTH_KEYS, errs, "interval, timeout, successCount, failureCount"):
        return None
    d = HealthCheck()
    ok = True
    got = {}
    for key, attr in (("interval", "interval"), ("timeout", "timeout")):
        v = raw.get(key, getattr(d, attr))
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            errs.add(f"{path}.{key}", f"{v!r} must be > 0 (seconds)")
            ok = False
        elif v > MAX_HEALTH_SECONDS:
            errs.add(f"{path}.{key}", f"{v!r} must be at most {MAX_HEALTH_SECONDS} (seconds)")
            ok = False
        else:
            got[attr] = float(v)
    for key, attr in (("successCount", "success_count"), ("failureCount", "failure_count")):
        v = raw.get(key, getattr(d, attr))
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_HEALTH_COUNT:
            errs.add(f"{path}.{key}", f"{v!r} must be an integer from 1 to {MAX_HEALTH_COUNT}")
            ok = False
        else:
            got[attr] = v
    if ok and got["timeout"] > got["interval"]:
        errs.add(f"{path}.timeout", f"{raw.get('timeout', d.timeout)!r} must be at most the interval "
                                    f"({got['interval']:g}): one probe at a time per backend")
        ok = False
    return HealthCheck(**got) if ok else None


def _health_doc(hc: HealthCheck) -> dict:
    return {"interval": _num(hc.interval), "timeout": _num(hc.timeout), "successCount": hc.success_count,
            "failureCount": hc.failure_count}


def _num(x: float):
    return int(x) if float(x).is_integer() else x


def _port_range(value: Any, path: str, errs: _Errors) -> tuple[int, int] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        lo = hi = value
    elif isinstance(value, str) and re.fullmatch(r"\d+-\d+", value):
        lo, hi = (int(x) for x in value.split("-"))
    else:
        errs.add(path, f"{value!r} is not a port or range (5432 or \"8000-8080\")")
        return None
    if not 1 <= lo <= hi <= 65535:
        errs.add(path, f"{value!r} is not within 1-65535 with low <= high")
        return None
    return lo, hi


def _peers(value: Any, path: str, switches: dict[str, Switch], ports: dict[str, Port],
           errs: _Errors) -> tuple[ipaddress.IPv4Network, ...] | None:
    items = value if isinstance(value, list) else [value]
    out = []
    for k, v in enumerate(items):
        pp = f"{path}[{k}]" if isinstance(value, list) else path
        if isinstance(v, str) and v in ports:
            out.append(ipaddress.IPv4Network(f"{ports[v].ip}/32"))
            if ports[v].ip6 is not None:
                out.append(ipaddress.IPv6Network(f"{ports[v].ip6}/128"))
        elif isinstance(v, str) and v in switches:
            out.append(switches[v].cidr)
            if switches[v].cidr6 is not None:
                out.append(switches[v].cidr6)
        else:
            try:
                out.append(ipaddress.ip_network(str(v), strict=True))
            except ValueError:
                errs.add(pp, f"{v!r} is not a port, a switch or an IPv4 or IPv6 CIDR of this tenant")
                return None
    return tuple(out)


def _acls(raw: Any, switches: dict[str, Switch], ports: list[Port], errs: _Errors) -> list[AclRule]:
    out: list[AclRule] = []
    by_name = {p.name: p for p in ports}
    prio_seen: dict[tuple[str, int], list] = {}
    names_seen: dict[str, int] = {}
    for i, item in enumerate(_list(raw, "spec.acls", errs)):
        path = f"spec.acls[{i}]"
        if not _keys(item, path, ACL_KEYS, errs, "priority, direction, action"):
            continue
        ok = True
        prio = item.get("priority")
        if "priority" in item and (isinstance(prio, bool) or not isinstance(prio, int)
                                   or not 0 <= prio <= MAX_ACL_PRIORITY):
            errs.add(f"{path}.priority", f"{prio!r} is not an integer 0-{MAX_ACL_PRIORITY}")
            ok = False
        direction = item.get("direction")
        if "direction" in item and direction not in ACL_DIRECTIONS:
            errs.add(f"{path}.direction", f"{direction!r} is not one of {', '.join(ACL_DIRECTIONS)}")
            ok = False
        action = item.get("action")
        if "action" in item and action not in ACL_ACTIONS:
            errs.add(f"{path}.action", f"{action!r} is not one of {', '.join(ACL_ACTIONS)}")
            ok = False
        guarded: tuple = ()  # empty: every port of the tenant, now and later
        if "ports" in item:
            lst = _list(item["ports"], f"{path}.ports", errs)
            unknown = [x for x in lst if x not in by_name]
            for x in unknown:
                errs.add(f"{path}.ports", f"unknown port {x!r}")
            if unknown or not lst:
                if not lst and not unknown:
                    errs.add(f"{path}.ports", "an empty list guards nothing (leave it out for all ports)")
                ok = False
            guarded = tuple(lst)
        src = _peers(item["from"], f"{path}.from", switches, by_name, errs) if "from" in item else ()
        dst = _peers(item["to"], f"{path}.to", switches, by_name, errs) if "to" in item else ()
        ok &= src is not None and dst is not None
        proto = item.get("protocol", "any")
        if proto not in ACL_PROTOCOLS:
            errs.add(f"{path}.protocol", f"{proto!r} is not one of {', '.join(ACL_PROTOCOLS)}")
            ok = False
        ranges = {}
        for key in ("srcPorts", "dstPorts"):
            ranges[key] = ()
            if key in item:
                if proto not in ("tcp", "udp"):
                    errs.add(f"{path}.{key}", f"needs protocol tcp or udp (protocol is {proto})")
                    ok = False
                    continue
                got = [_port_range(v, f"{path}.{key}[{k}]", errs)
                       for k, v in enumerate(_list(item[key], f"{path}.{key}", errs))]
                if None in got:
                    ok = False
                ranges[key] = tuple(g for g in got if g)
        name = ""
        if "name" in item:
            name = _name(item["name"], f"{path}.name", errs)
            if name is None:
                ok = False
            elif name in names_seen:
                errs.add(f"{path}.name", f"{name!r} is also the name of spec.acls[{names_seen[name]}]")
                ok = False
            else:
                names_seen[name] = i
        log = item.get("log", False)
        if not isinstance(log, bool):
            errs.add(f"{path}.log", f"{log!r} is not true or false")
            ok = False
        if ok:
            # Rules that guard a common port in one direction must not share a priority:
            # which of them decides would be up to the switch.
            for other_i, other_ports in prio_seen.get((direction, prio), []):
                if not guarded or not other_ports or set(guarded) & set(other_ports):
                    errs.add(f"{path}.priority", f"{prio} is also the priority of spec.acls[{other_i}], "
                                                 f"which guards the same port(s) {direction}")
                    ok = False
                    break
            prio_seen.setdefault((direction, prio), []).append((i, guarded))
        if ok:
            out.append(AclRule(i, prio, direction, guarded, action, None if proto == "any" else proto,
                               src, dst, ranges["srcPorts"], ranges["dstPorts"], name or "", log))
    return out


def _selector(raw: Any, path: str, errs: _Errors) -> Selector | None:
    """A Kubernetes label selector ({} selects everything); None when wrong (reported)."""
    if raw is None:
        raw = {}
    if not _keys(raw, path, SELECTOR_KEYS, errs, "matchLabels and/or matchExpressions"):
        return None
    ok = True
    labels = labels_of(raw.get("matchLabels"), f"{path}.matchLabels", errs)
    ok &= labels is not None
    exprs = []
    for k, e in enumerate(_list(raw.get("matchExpressions", []), f"{path}.matchExpressions", errs)):
        ep = f"{path}.matchExpressions[{k}]"
        if not _keys(e, ep, EXPRESSION_KEYS, errs, "key, operator, values"):
            ok = False
            continue
        key, op = e.get("key"), e.get("operator")
        bad = label_problem(key, "") if "key" in e else None
        if bad is not None:
            errs.add(f"{ep}.key", bad[1])
            ok = False
        if "operator" in e and op not in SELECTOR_OPERATORS:
            errs.add(f"{ep}.operator", f"{op!r} is not one of {', '.join(SELECTOR_OPERATORS)}")
            ok = False
            continue
        values = e.get("values")
        if op in ("In", "NotIn"):
            if not isinstance(values, list) or not values:
                errs.add(f"{ep}.values", f"{op} needs a non-empty list of values")
                ok = False
                continue
            for j, v in enumerate(values):
                bad = label_problem("k", v)
                if bad is not None:
                    errs.add(f"{ep}.values[{j}]", bad[1])
                    ok = False
        elif values not in (None, []):
            errs.add(f"{ep}.values", f"{op} takes no values")
            ok = False
        if ok:
            exprs.append((key, op, tuple(sorted(set(values or ())))))
    return Selector(labels, tuple(exprs)) if ok else None


def _policy_peer(raw: Any, path: str, errs: _Errors) -> PolicyPeer | None:
    if not _keys(raw, path, PEER_KEYS, errs, "podSelector, namespaceSelector or ipBlock"):
        return None
    if not raw:
        errs.add(path, "an empty peer selects nothing; give podSelector, namespaceSelector or ipBlock "
                       "(leave the whole list out to allow every peer)")
        return None
    if "ipBlock" in raw:
        if len(raw) > 1:
            errs.add(path, "ipBlock cannot be combined with podSelector or namespaceSelector in one peer "
                           "(make them two peers)")
            return None
        ib, ip_path = raw["ipBlock"], f"{path}.ipBlock"
        if not _keys(ib, ip_path, IPBLOCK_KEYS, errs, "cidr and except"):
            return None
        try:
            cidr = ipaddress.ip_network(str(ib["cidr"]), strict=True)
        except ValueError:
            errs.add(f"{ip_path}.cidr", f"{ib['cidr']!r} is not an IPv4 or IPv6 CIDR (host bits must be zero)")
            return None
        excepts = []
        for j, x in enumerate(_list(ib.get("except", []), f"{ip_path}.except", errs)):
            try:
                n = ipaddress.ip_network(str(x), strict=True)
            except ValueError:
                errs.add(f"{ip_path}.except[{j}]", f"{x!r} is not a CIDR (host bits must be zero)")
                return None
            if n.version != cidr.version or not n.subnet_of(cidr) or n == cidr:
                errs.add(f"{ip_path}.except[{j}]", f"{x} is not strictly inside {cidr}")
                return None
            excepts.append(n)
        return PolicyPeer(cidr=cidr, except_=tuple(excepts))
    pod = _selector(raw["podSelector"], f"{path}.podSelector", errs) if "podSelector" in raw else None
    ns = _selector(raw["namespaceSelector"], f"{path}.namespaceSelector", errs) \
        if "namespaceSelector" in raw else None
    if ("podSelector" in raw and pod is None) or ("namespaceSelector" in raw and ns is None):
        return None
    return PolicyPeer(pod=pod, namespace=ns)


def _policy_ports(raw: Any, path: str, errs: _Errors) -> tuple | None:
    out = []
    for j, item in enumerate(_list(raw, path, errs)):
        pp = f"{path}[{j}]"
        if not _keys(item, pp, POLICY_PORT_KEYS, errs, "protocol, port, endPort"):
            return None
        proto = item.get("protocol", "TCP")
        if proto == "SCTP":
            errs.add(f"{pp}.protocol", "SCTP is not supported yet (TCP or UDP)")
            return None
        if proto not in POLICY_PROTOCOLS:
            errs.add(f"{pp}.protocol", f"{proto!r} is not one of {', '.join(POLICY_PROTOCOLS)}")
            return None
        port, end = item.get("port"), item.get("endPort")
        if isinstance(port, str):
            errs.add(f"{pp}.port", f"{port!r}: named ports are not supported (give the number)")
            return None
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535):
            errs.add(f"{pp}.port", f"{port!r} is not a port number 1-65535")
            return None
        if end is not None:
            if port is None:
                errs.add(f"{pp}.endPort", "needs port (the start of the range)")
                return None
            if isinstance(end, bool) or not isinstance(end, int) or not port <= end <= 65535:
                errs.add(f"{pp}.endPort", f"{end!r} is not a port number from port ({port}) to 65535")
                return None
        out.append((proto.lower(), port, end if end is not None else port))
    return tuple(out)


def _policy_rules(raw: Any, path: str, peer_key: str, errs: _Errors) -> tuple | None:
    out, ok = [], True
    for k, item in enumerate(_list(raw, path, errs)):
        rp = f"{path}[{k}]"
        if item is None:
            item = {}
        if not _keys(item, rp, {peer_key: False, "ports": False}, errs, f"{peer_key} and ports"):
            ok = False
            continue
        peers = [_policy_peer(x, f"{rp}.{peer_key}[{j}]", errs)
                 for j, x in enumerate(_list(item.get(peer_key) or [], f"{rp}.{peer_key}", errs))]
        ports = _policy_ports(item.get("ports") or [], f"{rp}.ports", errs)
        if None in peers or ports is None:
            ok = False
            continue
        out.append(PolicyRule(k, tuple(peers), ports))
    return tuple(out) if ok else None


def _network_policies(raw: Any, switches: dict[str, Switch], errs: _Errors) -> list[NetworkPolicy]:
    out: list[NetworkPolicy] = []
    names: dict[str, int] = {}
    for i, item in enumerate(_list(raw, "spec.networkPolicies", errs)):
        path = f"spec.networkPolicies[{i}]"
        if not _keys(item, path, NETPOL_KEYS, errs, "name, podSelector, ingress/egress"):
            continue
        ok = True
        name = _name(item.get("name"), f"{path}.name", errs) if "name" in item else None
        if name is not None and name in names:
            errs.add(f"{path}.name", f"{name!r} is also the name of spec.networkPolicies[{names[name]}]")
            ok = False
        elif name is not None:
            names[name] = i
        ok &= name is not None
        ns = item.get("namespace")
        if ns is not None and ns not in switches:
            errs.add(f"{path}.namespace", f"{ns!r} is not a switch of this tenant (a switch plays the namespace)")
            ok = False
        sel = _selector(item.get("podSelector"), f"{path}.podSelector", errs) if "podSelector" in item else None
        ok &= sel is not None
        ingress = _policy_rules(item.get("ingress") or [], f"{path}.ingress", "from", errs)
        egress = _policy_rules(item.get("egress") or [], f"{path}.egress", "to", errs)
        ok &= ingress is not None and egress is not None
        if "policyTypes" in item:
            types = _list(item["policyTypes"], f"{path}.policyTypes", errs)
            bad = [x for x in types if x not in POLICY_TYPES]
            if bad or not types or len(set(types)) != len(types):
                errs.add(f"{path}.policyTypes", f"{types!r}: a non-empty list of distinct {' and '.join(POLICY_TYPES)}")
                ok = False
            for key, kind in (("ingress", "Ingress"), ("egress", "Egress")):
                if item.get(key) and kind not in types:
                    errs.add(f"{path}.{key}", f"rules for {kind}, but policyTypes ({', '.join(map(str, types))}) "
                                              f"leaves {kind} out, so they would never apply")
                    ok = False
        else:
            types = ["Ingress"] + (["Egress"] if item.get("egress") else [])
        log = item.get("log", False)
        if not isinstance(log, bool):
            errs.add(f"{path}.log", f"{log!r} is not true or false")
            ok = False
        if ok:
            out.append(NetworkPolicy(i, name, ns, sel, tuple(t for t in POLICY_TYPES if t in types),
                                     ingress, egress, log))
    for kind in POLICY_TYPES:
        of_kind = [p for p in out if kind in p.types]
        rules = [r for p in of_kind for r in (p.ingress if kind == "Ingress" else p.egress) if r.peers]
        if len(of_kind) > MAX_POLICIES_PER_TYPE:
            errs.add("spec.networkPolicies", f"{len(of_kind)} policies of type {kind}; at most "
                                             f"{MAX_POLICIES_PER_TYPE} per tenant (merge some)")
        if len(rules) > MAX_PEER_RULES_PER_TYPE:
            errs.add("spec.networkPolicies", f"{len(rules)} {kind.lower()} rules with from/to peers; at most "
                                             f"{MAX_PEER_RULES_PER_TYPE} per tenant (rules with the same peers "
                                             f"can share one, listing more ports)")
    return out


def _selector_doc(s: Selector) -> dict:
    d: dict = {}
    if s.match_labels:
        d["matchLabels"] = dict(s.match_labels)
    if s.expressions:
        d["matchExpressions"] = [{"key": k, "operator": op, **({"values": list(v)} if v else {})}
                                 for k, op, v in s.expressions]
    return d


def _policy_doc(p: NetworkPolicy) -> dict:
    def peer(x: PolicyPeer) -> dict:
        if x.cidr is not None:
            return {"ipBlock": {"cidr": str(x.cidr), **({"except": [str(e) for e in x.except_]}
                                                         if x.except_ else {})}}
        d = {}
        if x.pod is not None:
            d["podSelector"] = _selector_doc(x.pod)
        if x.namespace is not None:
            d["namespaceSelector"] = _selector_doc(x.namespace)
        return d

    def rules(rs, key):
        out = []
        for r in rs:
            d = {}
            if r.peers:
                d[key] = [peer(x) for x in r.peers]
            if r.ports:
                d["ports"] = [{"protocol": proto.upper(), **({"port": lo} if lo is not None else {}),
                               **({"endPort": hi} if lo is not None and hi != lo else {})}
                              for proto, lo, hi in r.ports]
            out.append(d)
        return out
    d = {"name": p.name}
    if p.namespace is not None:
        d["namespace"] = p.namespace
    d["podSelector"] = _selector_doc(p.selector)
    d["policyTypes"] = list(p.types)
    if p.ingress:
        d["ingress"] = rules(p.ingress, "from")
    if p.egress:
        d["egress"] = rules(p.egress, "to")
    if p.log:
        d["log"] = True
    return d


def _range_doc(r: tuple[int, int]):
    return r[0] if r[0] == r[1] else f"{r[0]}-{r[1]}"


def to_doc(t: Tenant) -> dict:
    """The canonical document for a tenant (what `tenant show` prints); validate(to_doc(t))
    gives t back."""
    ports = []
    for p in t.ports:
        d = {"name": p.name, "switch": p.switch, "ip": str(p.ip), "mac": p.mac, "host": p.host}
        if p.rate_limit_mbps is not None:
            d["rateLimitMbps"] = p.rate_limit_mbps
        if p.bum_limit_pps is not None:
            d["bumLimitPps"] = p.bum_limit_pps
        if p.ip6 is not None:
            d["ip6"] = str(p.ip6)
        if p.made_by != "yaml":
            d["madeBy"] = p.made_by
        if not p.workload:
            d["workload"] = False
        elif p.vm:
            d["workload"] = "vm"
        if p.container_id:
            d["containerId"] = p.container_id
        if p.labels:
            d["labels"] = dict(p.labels)
        ports.append(d)
    spec: dict = {"switches": [{"name": s.name, "cidr": str(s.cidr), **({"mtu": s.mtu} if s.mtu else {}),
                                **({"cidr6": str(s.cidr6)} if s.cidr6 else {}),
                                **({} if s.dhcp else {"dhcp": False}),
                                **({"labels": dict(s.labels)} if s.labels else {})}
                               for s in t.switches],
                  "ports": ports}
    if t.routers:
        spec["routers"] = []
        for r in t.routers:
            d = {"name": r.name, "ports": [{"switch": rp.switch, "ip": str(rp.ip), "mac": rp.mac,
                                            **({"ip6": str(rp.ip6)} if rp.ip6 else {})}
                                           for rp in r.ports]}
            if r.routes:
                d["routes"] = [{"prefix": str(x.prefix), "nextHop": str(x.next_hop)} for x in r.routes]
            if r.external_ip is not None:
                d["external"] = {"ip": str(r.external_ip)}
                if r.gateways:
                    d["external"]["gateways"] = list(r.gateways)
                if r.import_routes is not None:
                    d["external"]["importRoutes"] = [str(n) for n in r.import_routes]
            spec["routers"].append(d)
    if t.nat:
        spec["nat"] = []
        for n in t.nat:
            if n.type == "snat":
                spec["nat"].append({"type": "snat", "router": n.router, "cidr": str(n.cidr)})
            else:
                spec["nat"].append({"type": "floating-ip", "port": n.port, "externalIp": str(n.external_ip)})
    if t.load_balancers:
        spec["loadBalancers"] = [{"name": lb.name, "vip": str(lb.vip), "protocol": lb.protocol,
                                  "port": lb.port, "backends": [f"{p}:{n}" for p, n in lb.backends],
                                  **({"healthCheck": _health_doc(lb.health_check)} if lb.health_check else {})}
                                 for lb in t.load_balancers]
    if t.acls:
        spec["acls"] = []
        for a in t.acls:
            d = {"priority": a.priority, "direction": a.direction,
                 "protocol": a.protocol or "any", "action": a.action}
            if a.ports:
                d["ports"] = list(a.ports)
            if a.src:
                d["from"] = [str(n) for n in a.src]
            if a.dst:
                d["to"] = [str(n) for n in a.dst]
            if a.src_ports:
                d["srcPorts"] = [_range_doc(r) for r in a.src_ports]
            if a.dst_ports:
                d["dstPorts"] = [_range_doc(r) for r in a.dst_ports]
            if a.name:
                d["name"] = a.name
            if a.log:
                d["log"] = True
            spec["acls"].append(d)
    if t.network_policies:
        spec["networkPolicies"] = [_policy_doc(p) for p in t.network_policies]
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": t.name}, "spec": spec}
