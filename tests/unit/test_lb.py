"""Load balancers through the simulator: spread, consistency, replies, backend removal."""
from collections import Counter

from controller.compile.pipeline import PIPELINE
from tests.unit.fixtures import HOSTS, Net, routed_tenant, world
from tests.unit.packets import tcp

BACKENDS = ["web2:8080", "db1:8080", "db2:8080"]


def shop(backends=BACKENDS):
    lb = {"name": "web-lb", "vip": "10.0.0.100", "protocol": "tcp", "port": 80, "backends": backends}
    return Net(world(routed_tenant("shop", loadBalancers=[lb])))


def connect(n, sport, client="web1"):
    c, _ = n.port("shop", client)
    t, _ = n.tenants["shop"]
    lb = t.load_balancers[0]
    return n.send("shop", client, tcp(c.mac, lb.mac, str(c.ip), "10.0.0.100", sport, 80))


def test_connections_spread_over_every_backend_and_stay_put():
    n = shop()
    hits = Counter()
    for sport in range(41000, 41030):
        got = connect(n, sport)
        assert len(got) == 1, sport
        who = n.who(got)[0][1]
        hits[who] += 1
        d = got[0]
        backend, _ = n.port("shop", who)
        assert (d.packet["ipv4_dst"], d.packet["tcp_dst"]) == (str(backend.ip), 8080)
        assert n.who(connect(n, sport)) == [("shop", who)]  # the same connection, the same backend
    assert set(hits) == {"web2", "db1", "db2"}, hits


def test_replies_come_back_from_the_vip():
    n = shop()
    (d,) = connect(n, 42000)
    backend = n.who([d])[0][1]
    b, _ = n.port("shop", backend)
    c, _ = n.port("shop", "web1")
    t, _ = n.tenants["shop"]
    gw = t.router_of(b.switch)[1].mac if b.switch != c.switch else c.mac
    back = n.send("shop", backend, tcp(b.mac, gw, str(b.ip), str(c.ip), 8080, 42000))
    assert n.who(back) == [("shop", "web1")]
    assert (back[0].packet["ipv4_src"], back[0].packet["tcp_src"]) == ("10.0.0.100", 80)


def test_removing_a_backend_stops_new_connections_to_it_and_keeps_old_ones():
    n = shop()
    old = {}
    for sport in range(43000, 43030):
        old[sport] = n.who(connect(n, sport))[0][1]
    fewer = shop([b for b in BACKENDS if b != "db2:8080"])
    n.fabric.replace_flows(PIPELINE, {h: fewer.flows[h].values() for h in HOSTS})
    for sport in range(44000, 44030):
        assert n.who(connect(n, sport))[0][1] != "db2"
    kept = [s for s, who in old.items() if who == "db2"]
    assert kept and all(n.who(connect(n, s)) == [("shop", "db2")] for s in kept)
