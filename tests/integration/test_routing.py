"""Distributed routing on real OVS: two tenants with the same routed topology."""
import os
import time

import pytest

from tests.integration.helpers import ROOT, Capture, apply_yaml, nvctl_json, ping_many

SHOP = open(os.path.join(ROOT, "examples", "shop.yaml")).read()
MALL = SHOP.replace("name: shop", "name: mall")  # same addresses, another tenant


@pytest.fixture(scope="module")
def routed(lab):
    apply_yaml(lab, SHOP, op="create")
    apply_yaml(lab, MALL, op="create")
    return {n: {p["name"]: p for p in nvctl_json(lab, "tenant", "show", n)["ports"]}
            for n in ("shop", "mall")}


def test_cross_subnet_ping_between_hosts_and_ttl_is_one_less(lab, routed):
    from scapy.layers.inet import ICMP, IP
    shop = routed["shop"]
    web1, db1 = shop["web1"], shop["db1"]
    assert web1["host"] != db1["host"]
    cap = Capture(db1["namespace"], "eth0", "icmp", inbound_only=True)
    try:
        res = ping_many([(web1["namespace"], db1["ip"], "x")], count=3)
    finally:
        pkts = cap.packets()
    assert res["x"] == (3, 3)
    requests = [p[IP] for p in pkts if ICMP in p and p[ICMP].type == 8]
    assert len(requests) == 3
    assert {p.ttl for p in requests} == {63}, "the router decrements TTL once"
    assert {p.src for p in requests} == {web1["ip"]}


def test_every_cross_subnet_pair_and_the_gateway_addresses_answer(lab, routed):
    pairs = []
    for name, ports in routed.items():
        for a in ports.values():
            for b in ports.values():
                if a is not b:
                    pairs.append((a["namespace"], b["ip"], f"{name}:{a['name']}->{b['name']}"))
            for gw in ("10.0.0.1", "10.0.1.1"):
                pairs.append((a["namespace"], gw, f"{name}:{a['name']}->gw {gw}"))
    res = ping_many(pairs, count=2)
    bad = {k: v for k, v in res.items() if v[0] != v[1]}
    assert not bad, bad


def test_the_other_tenant_with_the_same_addresses_sees_nothing(lab, routed):
    shop, mall = routed["shop"], routed["mall"]
    caps = {n: Capture(p["namespace"], "eth0", inbound_only=True) for n, p in mall.items()}
    control = Capture(shop["db1"]["namespace"], "eth0", "icmp", inbound_only=True)
    try:
        ping_many([(shop["web1"]["namespace"], ip, ip) for ip in
                   ("10.0.1.10", "10.0.1.20", "10.0.0.12", "10.0.1.99", "10.0.0.1")], count=2)
        time.sleep(0.3)
    finally:
        leaked = {n: c.discard() for n, c in caps.items()}
        seen = control.discard()
    assert seen >= 2, "control: shop db1 must see shop web1's pings"
    assert not any(leaked.values()), leaked


def test_trace_predicts_routed_fates(lab, routed):
    from controller.client.api import call
    r = call(lab.api_path, "trace", tenant="shop", port="web1", packet="icmp,nw_dst=10.0.1.10", real=True)
    assert r["agree"] is True and r["delivered"] == ["shop/db1"], r
    gw = call(lab.api_path, "trace", tenant="shop", port="web1", packet="icmp,nw_dst=10.0.1.1", real=True)
    assert gw["agree"] is True and gw["delivered"] == ["shop/web1"]  # the router's echo reply
