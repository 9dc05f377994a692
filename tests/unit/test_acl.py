"""Stateful ACLs through the simulator's conntrack: allowed connections and their
replies pass, other directions are refused, and policy changes act on live connections."""
from controller.compile.compiler import TUNNEL_OFPORT, compile_world
from controller.layers.acl import range_masks
from controller.compile.pipeline import PIPELINE
from tests.unit.fixtures import HOSTS, Net, routed_tenant, world
from tests.unit.packets import tcp

ALLOW_WEB_TO_DB1 = {"priority": 200, "direction": "to-port", "ports": ["db1"], "from": "web", "protocol": "tcp",
                    "dstPorts": [5432], "action": "allow"}
ACLS = [ALLOW_WEB_TO_DB1,
        {"priority": 100, "direction": "to-port", "ports": ["db1"], "action": "deny"},
        {"priority": 100, "direction": "to-port", "ports": ["web1"], "from": "db", "action": "deny"}]


def shop(acls=ACLS):
    return Net(world(routed_tenant("shop", acls=acls)))


def first_allow_as(action):
    """ACLS with web -> db1:5432 given another action."""
    return [dict(ALLOW_WEB_TO_DB1, action=action), *ACLS[1:]]


class Conn:
    """Send TCP segments between two ports through the routed fabric."""

    def __init__(self, net, a, b, sport, dport):
        self.net, self.a, self.b, self.sport, self.dport = net, a, b, sport, dport

    def _send(self, src, dst, sport, dport):
        s, _ = self.net.port("shop", src)
        d, _ = self.net.port("shop", dst)
        t, _ = self.net.tenants["shop"]
        gw = t.router_of(s.switch)[1].mac if s.switch != d.switch else d.mac
        got = self.net.send("shop", src, tcp(s.mac, gw, str(s.ip), str(d.ip), sport, dport))
        return [x for x in self.net.who(got)]

    def forward(self):
        return self._send(self.a, self.b, self.sport, self.dport)

    def reply(self):
        return self._send(self.b, self.a, self.dport, self.sport)


def test_range_masks_cover_exactly():
    for lo, hi in [(1, 65535), (5432, 5432), (8000, 8080), (1024, 2047), (3, 17)]:
        covered = {v for val, mask in range_masks(lo, hi) for v in range(65536) if v & mask == val}
        assert covered == set(range(lo, hi + 1)), (lo, hi)


def test_allowed_connection_and_its_replies_pass():
    n = shop()
    c = Conn(n, "web1", "db1", 40000, 5432)
    assert c.forward() == [("shop", "db1")]
    assert c.reply() == [("shop", "web1")]  # web1 denies "from db", but this is a reply
    assert c.forward() == [("shop", "db1")]


def test_new_connections_the_rules_do_not_allow_are_dropped():
    n = shop()
    assert Conn(n, "web1", "db1", 40001, 22).forward() == []  # db1: only 5432 from web
    assert Conn(n, "db1", "web1", 40002, 80).forward() == []  # web1: nothing new from db
    assert Conn(n, "web2", "db1", 40003, 5432).forward() == [("shop", "db1")]  # any web port


def test_the_deciding_rule_is_named():
    n = shop()
    db1, _ = n.port("shop", "db1")
    t, alloc = n.tenants["shop"]
    # web1 -> db1:22 as it arrives at db1's host (hv2) from the tunnel
    pkt = tcp(t.router_of("db")[1].mac, db1.mac, "10.0.0.11", "10.0.1.10", 40011, 22)
    pkt.update(tunnel_id=alloc.vni["db"], tun_ipv4_src=HOSTS["hv1"].pa)
    fate = n.fabric.sims["hv2"].run(pkt, TUNNEL_OFPORT)
    assert fate.dropped and fate.decided_by().rule == "acl[1] to-port deny (port db1)"


def test_unguarded_ports_skip_conntrack():
    n = shop()
    web2, ofport = n.port("shop", "web2")
    db2, _ = n.port("shop", "db2")
    t, _ = n.tenants["shop"]
    fate = n.fabric.sims["hv3"].run(tcp(web2.mac, t.router_of("web")[1].mac, "10.0.0.12",
                                        "10.0.1.20", 40020, 80), ofport)
    assert "acl_in" not in [h.table for h in fate.path]
    assert Conn(n, "web2", "db2", 40021, 80).forward() == [("shop", "db2")]


def test_policy_change_keeps_allowed_connections_and_cuts_the_rest():
    n = shop()
    kept = Conn(n, "web1", "db1", 40100, 5432)
    assert kept.forward() and kept.reply()
    # unrelated change: a new rule for another port; the connection survives
    unrelated = ACLS + [{"priority": 300, "direction": "to-port", "ports": ["db2"], "action": "deny"}]
    n2 = shop(unrelated)
    n.fabric.replace_flows(PIPELINE, {h: n2.flows[h].values() for h in HOSTS})
    assert kept.forward() == [("shop", "db1")] and kept.reply() == [("shop", "web1")]
    # the allow goes: the same established connection is now cut by the deny-all
    n3 = shop(first_allow_as("deny"))
    n.fabric.replace_flows(PIPELINE, {h: n3.flows[h].values() for h in HOSTS})
    assert kept.forward() == []


def test_allow_stateless_lets_replies_be_judged_on_their_own():
    n = shop(first_allow_as("allow-stateless"))
    c = Conn(n, "web1", "db1", 40200, 5432)
    assert c.forward() == [("shop", "db1")]
    # db1's zone never committed it (stateless) and web1's zone did (default allow on
    # its way out), so the reply is a reply in web1's zone: it passes.
    assert c.reply() == [("shop", "web1")]


def test_compile_is_deterministic_with_acls():
    a = compile_world(HOSTS, shop().tenants)
    b = compile_world(HOSTS, shop().tenants)
    assert {h: sorted(f.ofctl() for f in a[h].values()) for h in HOSTS} == \
           {h: sorted(f.ofctl() for f in b[h].values()) for h in HOSTS}
