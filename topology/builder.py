"""A small tenant builder for tests, benches and examples: one switch, its ports, as YAML.

`tenant_yaml("blue", "web", [("vm1", "10.0.0.11", "hv1"), ...])` gives the text
`nvctl tenant create -f` takes; a port tuple may add a MAC as its fourth item.
"""
from __future__ import annotations


def tenant_yaml(name: str, switch: str, ports, cidr: str = "10.0.0.0/24") -> str:
    lines = ["apiVersion: nvctl/v1", "kind: Tenant", f"metadata: {{name: {name}}}", "spec:",
             "  switches:", f"    - {{name: {switch}, cidr: {cidr}}}", "  ports:"]
    for pname, ip, host, *mac in ports:
        extra = f', mac: "{mac[0]}"' if mac else ""
        lines.append(f"    - {{name: {pname}, switch: {switch}, ip: {ip}, host: {host}{extra}}}")
    return "\n".join(lines) + "\n"
