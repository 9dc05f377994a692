"""Load balancer on real OVS: select groups + conntrack DNAT."""
import os
import time
from collections import Counter

import pytest

from scenarios.netutil import TcpServer, tcp_whois
from tests.integration.helpers import ROOT, apply_yaml, nvctl_json

LB = "  loadBalancers:\n    - {name: web-lb, vip: 10.0.0.100, protocol: tcp, port: 80, backends: [%s]}\n"
BACKENDS = ["web2:8080", "db1:8080", "db2:8080"]
SHOP = open(os.path.join(ROOT, "examples", "shop.yaml")).read()


def shop_with(backends):
    return SHOP.replace("  ports:\n", LB % ", ".join(backends) + "  ports:\n", 1)


@pytest.fixture(scope="module")
def shop(lab):
    apply_yaml(lab, shop_with(BACKENDS), op="create")
    ports = {p["name"]: p for p in nvctl_json(lab, "tenant", "show", "shop")["ports"]}
    servers = [TcpServer(ports[b.split(":")[0]]["namespace"], 8080, name=b.split(":")[0]) for b in BACKENDS]
    try:
        yield ports
    finally:
        for s in servers:
            s.stop()


def _backends(lab):
    from controller.client.api import call
    (lb,) = call(lab.api_path, "stats", tenant="shop")["loadBalancers"]
    return {b["name"]: (b["connections"], b["replyPackets"]) for b in lb["backends"]}


def test_thirty_connections_reach_every_backend(lab, shop):
    before = _backends(lab)
    names = tcp_whois(shop["web1"]["namespace"], "10.0.0.100", 80, count=30)
    hits = Counter(names)
    print(f"\n30 connections to the VIP: {dict(hits)}")
    assert None not in hits, names
    assert set(hits) == {"web2", "db1", "db2"}, hits
    # nvctl stats counts them per backend, from the select group's bucket counters
    deadline = time.monotonic() + 8
    while True:
        now = _backends(lab)
        got = {b: now[b][0] - before[b][0] for b in now}
        if sum(got.values()) >= 30 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert got == dict(hits), (got, hits)
    assert all(now[b][1] > before[b][1] for b in hits), (before, now)  # replies came back through the VIP


def test_after_removing_a_backend_new_connections_never_reach_it(lab, shop):
    apply_yaml(lab, shop_with(BACKENDS[:2]))
    assert all(h["in_sync"] for h in nvctl_json(lab, "hosts"))
    names = tcp_whois(shop["web1"]["namespace"], "10.0.0.100", 80, count=30)
    hits = Counter(names)
    print(f"\nafter removing db2: {dict(hits)}")
    assert None not in hits and "db2" not in hits and set(hits) == {"web2", "db1"}, hits


def test_a_reconnect_with_nothing_changed_sends_nothing(lab, shop):
    lab.stop_controller()
    lab.start_controller()
    for h in lab.wait_synced(30):
        assert h["last_sync_flow_mods"] == 0, h


def test_trace_sends_a_new_connection_to_a_backend(lab, shop):
    """The select group's bucket is chosen by a hash, OVS's and the simulator's differ:
    both must pick a current backend, not necessarily the same one."""
    from controller.client.api import call
    r = call(lab.api_path, "trace", tenant="shop", port="web1", packet="tcp,nw_dst=10.0.0.100,tp_dst=80",
             real=True)
    assert r["delivered"] and r["delivered"][0] in ("shop/web2", "shop/db1"), r
    first = r["hops"][0]
    assert any(t["table"].startswith("(group") for t in first["tables"])
    assert first["real"]["agree"] is None and "select group" in first["real"]["note"], first["real"]
    assert r["agree"] is True  # nothing that could be compared disagreed
