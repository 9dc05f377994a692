"""Small worlds for compiler tests: hosts, tenants and their allocations.

The data and helpers the unit tests import (tenants as YAML text, `world`, `Net`); the
pytest fixtures built on them are in conftest.py. Tenants are made by the builders of
topology/builder.py; to vary one, pass other Python values, not edited text.
"""
from controller.compile.allocator import InUse, allocate
from controller.compile.compiler import Host, TUNNEL_OFPORT, compile_world
from dataplane.match_action import Fabric
from controller.compile.pipeline import PIPELINE
from topology.builder import port, tenant_doc, tenant_yaml, with_item  # noqa: F401  (tests take them from here)
from topology.schema import load_tenant

HOSTS = {f"hv{i}": Host(f"hv{i}", f"192.0.2.{10 + i}") for i in (1, 2, 3)}

BLUE_PORTS = [("vm1", "10.0.0.11", "hv1"), ("vm2", "10.0.0.12", "hv2"),
              ("vm3", "10.0.0.13", "hv3"), ("vm4", "10.0.0.14", "hv1")]
BLUE = tenant_yaml("blue", "web", BLUE_PORTS)
RED = tenant_yaml("red", "app", [("vm1", "10.0.0.11", "hv2"), ("vm2", "10.0.0.12", "hv3"),
                                 ("vm3", "10.0.0.13", "hv1"), ("vm4", "10.0.0.14", "hv3", "02:00:00:00:0e:04")])

# -- a routed tenant: switches web and db joined by router r1 ----------------------------
WEB_DB = [{"name": "web", "cidr": "10.0.0.0/24"}, {"name": "db", "cidr": "10.0.1.0/24"}]
R1 = {"name": "r1", "ports": [{"switch": "web", "ip": "10.0.0.1"}, {"switch": "db", "ip": "10.0.1.1"}],
      "routes": [{"prefix": "192.168.50.0/24", "nextHop": "10.0.1.20"},
                 {"prefix": "10.0.1.128/25", "nextHop": "10.0.1.20"}]}
ROUTED_PORTS = [port("web1", "web", "10.0.0.11", "hv1"), port("web2", "web", "10.0.0.12", "hv2"),
                port("db1", "db", "10.0.1.10", "hv2"), port("db2", "db", "10.0.1.20", "hv3"),
                port("db3", "db", "10.0.1.30", "hv1")]


def routed_tenant(name: str, *, router: dict = R1, ports=ROUTED_PORTS, **spec) -> str:
    """web 10.0.0.0/24 (web1 hv1, web2 hv2) and db 10.0.1.0/24 (db1 hv2, db2 hv3, db3 hv1)
    joined by r1 (.1 on each), with static routes 192.168.50.0/24 and 10.0.1.128/25 via
    db2; `spec` adds acls, loadBalancers, nat."""
    return tenant_doc(name, switches=WEB_DB, routers=[router], ports=ports, **spec)


# -- the same behind a gateway: hv1 reaches the outside ---------------------------------
EXT_PORT, NEXT_HOP_MAC, OUTSIDE = 2, "02:aa:00:00:00:01", "203.0.113.1"
GW_HOSTS = {"hv1": Host("hv1", "192.0.2.11", (EXT_PORT, NEXT_HOP_MAC)),
            "hv2": Host("hv2", "192.0.2.12"), "hv3": Host("hv3", "192.0.2.13")}
R1_EXTERNAL = {**R1, "external": {"ip": "203.0.113.10"}}
NAT = [{"type": "snat", "router": "r1", "cidr": "10.0.0.0/24"},
       {"type": "floating-ip", "port": "db1", "externalIp": "203.0.113.11"}]


def shop(name: str = "shop") -> str:
    """Every layer in one tenant (on GW_HOSTS): the routed tenant, r1 external at
    203.0.113.10 with SNAT for web and db1's floating IP 203.0.113.11, stateful ACLs
    guarding db1, a load balancer, and a rate limit on web1."""
    acls = [{"priority": 200, "direction": "to-port", "ports": ["db1"], "from": "web", "protocol": "tcp",
             "dstPorts": [5432, "6000-6010"], "action": "allow"},
            {"priority": 100, "direction": "to-port", "ports": ["db1"], "action": "deny"}]
    lbs = [{"name": "web-lb", "vip": "10.0.0.100", "protocol": "tcp", "port": 80,
            "backends": ["web2:8080", "db1:8080"]}]
    return routed_tenant(name, router=R1_EXTERNAL, acls=acls, loadBalancers=lbs, nat=NAT,
                  ports=with_item(ROUTED_PORTS, "web1", rateLimitMbps=20))


SHOP = shop()


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
