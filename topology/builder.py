"""Small tenant builders for tests, benches and examples: the YAML `nvctl tenant create -f` takes.

- `tenant_yaml("blue", "web", [("vm1", "10.0.0.11", "hv1"), ...])`: one switch and its
  ports, a port tuple may add a MAC as its fourth item. Its text is fixed (one flow
  mapping a line), so callers may edit it as text.
- `tenant_doc("shop", switches=[...], ports=[...], routers=[...], acls=[...], ...)`: any
  tenant, from the same lists of mappings the YAML has (keys spelled as in the YAML:
  `loadBalancers`, `dstPorts`), dumped with yaml.safe_dump. `port(...)` spells a port.
  To vary a tenant, vary the Python lists (`with_item`), not the text.
"""
from __future__ import annotations

import re

import yaml

# the order of spec's keys in the documents written by hand (ports last)
_SPEC_ORDER = ("switches", "routers", "acls", "loadBalancers", "nat")
_NAME_PORT = re.compile(r"[a-z][a-z0-9-]*:[0-9]+")  # a load balancer's backend: web2:8080


class _Dumper(yaml.SafeDumper):
    """PyYAML quotes every string with a colon inside a flow collection; a backend
    (web2:8080) reads back the same unquoted, so it is written as people write it:
    `backends: [web2:8080, db1:8080]`. (A string that would read back as another
    type, 10:20 say, is still quoted: the emitter checks that apart.)"""

    def analyze_scalar(self, scalar):
        analysis = super().analyze_scalar(scalar)
        if _NAME_PORT.fullmatch(scalar):
            analysis.allow_flow_plain = analysis.allow_block_plain = True
        return analysis


def tenant_yaml(name: str, switch: str, ports, cidr: str = "10.0.0.0/24") -> str:
    lines = ["apiVersion: nvctl/v1", "kind: Tenant", f"metadata: {{name: {name}}}", "spec:",
             "  switches:", f"    - {{name: {switch}, cidr: {cidr}}}", "  ports:"]
    for pname, ip, host, *mac in ports:
        extra = f', mac: "{mac[0]}"' if mac else ""
        lines.append(f"    - {{name: {pname}, switch: {switch}, ip: {ip}, host: {host}{extra}}}")
    return "\n".join(lines) + "\n"


def tenant_doc(name: str, *, switches, ports, **spec) -> str:
    """A Tenant document: `spec` takes routers, acls, loadBalancers, nat (and any other
    key, passed through for the schema to judge); empty or None ones are left out."""
    body = {"switches": list(switches)}
    for key in _SPEC_ORDER[1:] + tuple(k for k in spec if k not in _SPEC_ORDER):
        if spec.get(key):
            body[key] = list(spec[key])
    body["ports"] = list(ports)
    doc = {"apiVersion": "nvctl/v1", "kind": "Tenant", "metadata": {"name": name}, "spec": body}
    # flow style for mappings of scalars only: `metadata: {name: shop}`, a port a line
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=200)


def port(name: str, switch: str, ip: str, host: str, **fields) -> dict:
    """A port mapping: port("web1", "web", "10.0.0.11", "hv1", rateLimitMbps=20)."""
    return {"name": name, "switch": switch, "ip": ip, "host": host, **fields}


def with_item(items, name: str, **fields) -> list:
    """A copy of a list of named mappings (ports, switches, routers) with `name`'s fields
    changed or added; the item must exist."""
    if not any(x.get("name") == name for x in items):
        raise KeyError(f"no item named {name!r}")
    return [dict(x, **fields) if x.get("name") == name else x for x in items]
