"""Synthetic deployments for benchmarks: many tenants with the same shape.

Each tenant has two switches joined by a router (distributed routing), ports split over
the switches and spread over the hosts round-robin (offset per tenant), and two ACL
rules. Every tenant uses the same customer addresses: overlap is the normal case.
"""
from __future__ import annotations

from controller.compile.allocator import InUse, allocate
from controller.compile.compiler import Host
from topology.schema import validate


def hosts(n: int) -> dict[str, Host]:
    return {f"hv{i}": Host(f"hv{i}", f"10.{200 + i // 250}.{i % 250}.{10}") for i in range(1, n + 1)}


def tenant_doc(index: int, ports: int, host_names: list[str]) -> dict:
    n = len(host_names)
    ps = []
    for j in range(ports):
        sw = "front" if j % 2 == 0 else "back"
        net = 1 if sw == "front" else 2
        ps.append({"name": f"p{j}", "switch": sw, "ip": f"10.0.{net}.{10 + j // 2}",
                   "host": host_names[(index + j) % n]})
    back = [p["name"] for p in ps if p["switch"] == "back"]
    return {
        "apiVersion": "nvctl/v1", "kind": "Tenant", "metadata": {"name": f"t{index}"},
        "spec": {
            "switches": [{"name": "front", "cidr": "10.0.1.0/24"}, {"name": "back", "cidr": "10.0.2.0/24"}],
            "routers": [{"name": "r", "ports": [{"switch": "front", "ip": "10.0.1.1"},
                                                {"switch": "back", "ip": "10.0.2.1"}]}],
            "ports": ps,
            "acls": [{"priority": 200, "direction": "to-port", "ports": back, "from": "front",
                      "protocol": "tcp", "dstPorts": [5432], "action": "allow"},
                     {"priority": 100, "direction": "to-port", "ports": back, "action": "deny"}],
        },
    }


def deployment(tenants: int, ports_per_tenant: int, host_count: int):
    """(hosts, {name: (Tenant, Allocation)}, docs) allocated in order, as the controller would."""
    hs = hosts(host_count)
    names = sorted(hs, key=lambda h: int(h[2:]))
    used = InUse()
    world, docs = {}, {}
    for i in range(tenants):
        doc = tenant_doc(i, ports_per_tenant, names)
        t = validate(doc, hs.keys())
        a = allocate(t, None, None, used)
        used.add(t, a)
        world[t.name] = (t, a)
        docs[t.name] = doc
    return hs, world, docs
