"""Small worlds for compiler tests: hosts, tenants and their allocations."""
from controller.compile.allocator import InUse, allocate
from controller.compile.compiler import Host, TUNNEL_OFPORT, compile_world
from dataplane.match_action import Fabric
from controller.compile.pipeline import PIPELINE
from topology.builder import tenant_yaml  # noqa: F401  (tests take it from here)
from topology.schema import load_tenant

HOSTS = {f"hv{i}": Host(f"hv{i}", f"192.0.2.{10 + i}") for i in (1, 2, 3)}


BLUE = tenant_yaml("blue", "web", [("vm1", "10.0.0.11", "hv1"), ("vm2", "10.0.0.12", "hv2"),
                                   ("vm3", "10.0.0.13", "hv3"), ("vm4", "10.0.0.14", "hv1")])
RED = tenant_yaml("red", "app", [("vm1", "10.0.0.11", "hv2"), ("vm2", "10.0.0.12", "hv3"),
                                 ("vm3", "10.0.0.13", "hv1"), ("vm4", "10.0.0.14", "hv3", "02:00:00:00:0e:04")])


def world(*docs, hosts=HOSTS):
    """{name: (Tenant, Allocation)} allocated in order, as the controller would."""
    used = InUse()
    out = {}
    for doc in docs:
        t = load_tenant(doc, hosts.keys())
        a = allocate(t, None, None, used)
        used.add(t, a)
        out[t.name] = (t, a)
    return out


class Net:
    """A compiled world plus a multi-host simulator and helpers to name things."""

    def __init__(self, tenants, hosts=HOSTS):
        self.tenants, self.hosts = tenants, hosts
        self.flows = compile_world(hosts, tenants)
        self.fabric = Fabric(PIPELINE, {h: (self.flows[h].values(), hosts[h].pa) for h in hosts},
                             TUNNEL_OFPORT)

    def port(self, tenant, port):
        t, a = self.tenants[tenant]
        return t.port(port), a.ofport[port]

    def send(self, tenant, port, packet):
        p, ofport = self.port(tenant, port)
        return self.fabric.send(p.host, ofport, packet)

    def who(self, deliveries):
        """Deliveries -> sorted [(tenant, port)] by (host, ofport)."""
        index = {}
        for name, (t, a) in self.tenants.items():
            for p in t.ports:
                index[(p.host, a.ofport[p.name])] = (name, p.name)
        return sorted(index.get((d.host, d.port), (d.host, d.port)) for d in deliveries)
