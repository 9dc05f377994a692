"""External network on real OVS: SNAT, floating IP, and nothing else reachable."""
import os

import pytest

from scenarios.lab import EXTERNAL_OFPORT
from scenarios.netutil import Capture, TcpServer, in_ns, ping_many, tcp_connect
from tests.integration.helpers import ROOT, apply_yaml, nvctl_json

OUTSIDE = "203.0.113.1"
SHOP = open(os.path.join(ROOT, "examples", "shop.yaml")).read().replace(
    "      ports: [{switch: web, ip: 10.0.0.1}, {switch: db, ip: 10.0.1.1}]\n",
    "      ports: [{switch: web, ip: 10.0.0.1}, {switch: db, ip: 10.0.1.1}]\n"
    "      external: {ip: 203.0.113.10}\n").replace("  ports:\n", """  nat:
    - {type: snat, router: r1, cidr: 10.0.0.0/24}
    - {type: floating-ip, port: db1, externalIp: 203.0.113.11}
  ports:
""", 1)


@pytest.fixture(scope="module")
def shop(lab):
    apply_yaml(lab, SHOP, op="create")
    ports = {p["name"]: p for p in nvctl_json(lab, "tenant", "show", "shop")["ports"]}
    server = TcpServer(ports["db1"]["namespace"], 22)
    web_server = TcpServer(ports["web1"]["namespace"], 8080)
    try:
        yield ports
    finally:
        server.stop()
        web_server.stop()


def test_snat_the_outside_host_sees_the_router_address(lab, shop):
    from scapy.layers.inet import ICMP, IP
    web = shop["web2"]  # not on the gateway host: crosses to hv1 first
    assert web["host"] != "hv1"
    before = _quiet(lab)
    cap = Capture(lab.ext_ns, "br-ext", "icmp", inbound_only=True)
    try:
        res = ping_many([(web["namespace"], OUTSIDE, "out")], count=3)
    finally:
        pkts = cap.packets()
    assert res["out"] == (3, 3)
    sources = {p[IP].src for p in pkts if ICMP in p and p[ICMP].type == 8}
    assert sources == {"203.0.113.10"}, sources
    # nvctl stats: the SNAT rule translated the 3 requests, the router's replies flow the 3 answers
    want = {("snat", "10.0.0.0/24", "out"): 3, ("snat", "replies to 203.0.113.10", "in"): 3}
    got = _settled_delta(lab, before, want)
    assert {k: got[k] for k in want} == want, got
    assert got[("floating-ip", "db1", "out")] == got[("floating-ip", "db1", "in")] == 0, got


def _nat(lab):
    from controller.client.api import call
    return {(n["kind"], n["name"], n["direction"]): n["packets"]
            for n in call(lab.api_path, "stats", tenant="shop")["nat"]}


def _quiet(lab, timeout=6.0):
    """The NAT counters once earlier traffic has been credited (OVS pushes datapath
    counts to its flows about once a second): two reads a second apart that agree."""
    import time
    last, deadline = _nat(lab), time.monotonic() + timeout
    while True:
        time.sleep(1.0)
        now = _nat(lab)
        if now == last or time.monotonic() > deadline:
            return now
        last = now


def _settled_delta(lab, before, want, timeout=8.0):
    import time
    deadline = time.monotonic() + timeout
    while True:
        now = _nat(lab)
        got = {k: now[k] - before[k] for k in now}
        if all(got[k] >= v for k, v in want.items()) or time.monotonic() > deadline:
            time.sleep(1.0)  # an excess would show too
            now = _nat(lab)
            return {k: now[k] - before[k] for k in now}
        time.sleep(0.3)


def test_floating_ip_the_outside_host_reaches_db1(lab, shop):
    assert tcp_connect(lab.ext_ns, "203.0.113.11", 22) == "connected"
    res = ping_many([(lab.ext_ns, "203.0.113.11", "fip")], count=2)
    assert res["fip"] == (2, 2)
    from scapy.layers.inet import ICMP, IP
    before = _quiet(lab)
    cap = Capture(lab.ext_ns, "br-ext", "icmp", inbound_only=True)
    try:
        ping_many([(shop["db1"]["namespace"], OUTSIDE, "db1-out")], count=2)
    finally:
        pkts = cap.packets()
    assert {p[IP].src for p in pkts if ICMP in p and p[ICMP].type == 8} == {"203.0.113.11"}
    got = _settled_delta(lab, before, {("floating-ip", "db1", "out"): 2})
    assert got[("floating-ip", "db1", "out")] == 2 and got[("snat", "10.0.0.0/24", "out")] == 0, got


def test_the_outside_host_reaches_nothing_else(lab, shop):
    assert tcp_connect(lab.ext_ns, "203.0.113.10", 22, timeout=2) == "timeout"
    res = ping_many([(lab.ext_ns, ip, ip) for ip in ("203.0.113.10", "203.0.113.12")], count=2)
    assert res["203.0.113.12"] == (0, 2)
    # inside addresses, even sent straight at the router's MAC, go nowhere
    in_ns(lab.ext_ns, "ip", "route", "replace", "10.0.0.0/16", "via", "203.0.113.10", check=True)
    try:
        assert tcp_connect(lab.ext_ns, shop["web1"]["ip"], 8080, timeout=2) == "timeout"
        assert ping_many([(lab.ext_ns, shop["web1"]["ip"], "in")], count=2)["in"] == (0, 2)
    finally:
        in_ns(lab.ext_ns, "ip", "route", "del", "10.0.0.0/16", check=True)


def test_trace_predicts_the_nat_fates(lab, shop):
    from controller.client.api import call
    out = call(lab.api_path, "trace", tenant="shop", port="web2", packet=f"icmp,nw_dst={OUTSIDE}", real=True)
    assert out["agree"] is True and out["delivered"] == [f"hv1:{EXTERNAL_OFPORT}"], out
    none = call(lab.api_path, "trace", tenant="shop", port="db2", packet=f"icmp,nw_dst={OUTSIDE}", real=True)
    assert none["agree"] is True and none["delivered"] == []
