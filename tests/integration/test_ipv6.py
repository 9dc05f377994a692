"""Dual stack on real OVS: ping6 across hosts and through the router, an IPv6 ACL, SLAAC
from the platform's router advertisement, neighbour discovery that a spoofed NA cannot
poison, duplicate address detection, AAAA names; all of it with twin tenants whose
IPv6 prefixes, names and MACs are identical (the module ends with `nvctl verify`, IPv6
in the header space)."""
import os
import re
import time

import pytest

from scenarios.netutil import TcpServer, tagged, tcp_connect
from tests.integration.conftest import running_lab
from tests.integration.helpers import ROOT, Capture, apply_yaml, in_ns, nvctl_json

TWIN = open(os.path.join(ROOT, "examples", "dual-stack.yaml")).read().replace("name: dual}", "name: NAME}")


@pytest.fixture(scope="module")
def lab():
    yield from running_lab(hosts=2)


@pytest.fixture(scope="module")
def twins(lab):
    out = {}
    for name in ("twin-a", "twin-b"):
        apply_yaml(lab, TWIN.replace("NAME", name), op="create")
        out[name] = {p["name"]: p for p in nvctl_json(lab, "tenant", "show", name)["ports"]}
    return out


def ping6(ns: str, dst: str, count: int = 3, **kw):
    return in_ns(ns, "ping", "-6", "-c", str(count), "-i", "0.2", "-W", "2", dst, **kw)


def test_show_lists_each_ports_ip6_and_the_twins_have_the_same(twins):
    a, b = twins["twin-a"], twins["twin-b"]
    assert a["w2"]["ip6"] == "fd00:0:0:1::12"
    assert a["w1"]["ip6"].startswith("fd00::1:")  # from its MAC
    assert {n: (p["ip6"], p["mac"]) for n, p in a.items()} == {n: (p["ip6"], p["mac"]) for n, p in b.items()}


def test_ping6_across_hosts_through_the_router_and_to_the_router(twins):
    t = twins["twin-a"]
    w1 = t["w1"]["namespace"]
    assert t["w1"]["host"] != t["w2"]["host"] and t["w1"]["host"] != t["d1"]["host"]
    for dst in (t["w2"]["ip6"], t["d1"]["ip6"], "fd00:0:0:1::1", "fd00:0:0:2::1"):
        r = ping6(w1, dst)
        assert " 0% packet loss" in r.stdout, (dst, r.stdout + r.stderr)
    hops = in_ns(w1, "ping", "-6", "-c", "1", "-W", "2", t["d1"]["ip6"], check=True).stdout
    assert "ttl=63" in hops, hops  # routed: one hop down


def test_twins_ping6_reaches_only_their_own_twin(twins):
    a, b = twins["twin-a"], twins["twin-b"]
    tag = b"nvctl-v6-twin-01"
    other, own = Capture(b["w2"]["namespace"], "eth0", "icmp6"), Capture(a["w2"]["namespace"], "eth0", "icmp6")
    try:
        r = in_ns(a["w1"]["namespace"], "ping", "-6", "-c", "3", "-i", "0.2", "-p", tag.hex(), a["w2"]["ip6"])
        assert " 0% packet loss" in r.stdout, r.stdout
        time.sleep(0.5)
    finally:
        got_other, got_own = other.packets(), own.packets()
    assert tagged(got_own, tag) >= 3
    assert tagged(got_other, tag) == 0


def test_an_ipv6_acl_lets_tcp_to_one_port_from_one_port_only(twins):
    t = twins["twin-a"]
    srv = [TcpServer(t["d1"]["namespace"], port) for port in (22, 80)]
    try:
        assert tcp_connect(t["w1"]["namespace"], t["d1"]["ip6"], 22) == "connected"
        assert tcp_connect(t["w1"]["namespace"], t["d1"]["ip6"], 80, timeout=1) == "timeout"
        assert tcp_connect(t["w2"]["namespace"], t["d1"]["ip6"], 22, timeout=1) == "timeout"
        assert tcp_connect(t["w2"]["namespace"], t["d1"]["ip"], 22, timeout=1) == "timeout"  # IPv4 alike
    finally:
        for s in srv:
            s.stop()


def neighbour(ns: str, ip6: str) -> str:
    return in_ns(ns, "ip", "-6", "neigh", "show", ip6, "dev", "eth0", check=True).stdout


SPOOF = """
import sys
from scapy.all import Ether, IPv6, ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, sendp
mac, victim_mac, target, victim = sys.argv[1:5]
sendp(Ether(src=mac, dst=victim_mac) / IPv6(src=target, dst=victim, hlim=255) /
      ICMPv6ND_NA(tgt=target, R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=mac), iface="eth0", count=3, verbose=False)
"""


def test_a_spoofed_neighbour_advertisement_changes_no_cache(twins):
    import sys
    t = twins["twin-a"]
    w1, w2, w3 = t["w1"], t["w2"], t["w3"]
    assert " 0% packet loss" in ping6(w1["namespace"], w2["ip6"], count=1).stdout
    assert w2["mac"] in neighbour(w1["namespace"], w2["ip6"])
    # w3 claims w2's address for its own MAC, with override, straight at w1
    in_ns(w3["namespace"], sys.executable, "-c", SPOOF, w3["mac"], w1["mac"], w2["ip6"], w1["ip6"], check=True)
    time.sleep(0.3)
    got = neighbour(w1["namespace"], w2["ip6"])
    assert w2["mac"] in got and w3["mac"] not in got, got


def test_duplicate_address_detection_passes_for_its_own_and_fails_for_anothers(twins):
    t = twins["twin-a"]
    ns = t["w3"]["namespace"]
    own, taken = t["w3"]["ip6"], t["w2"]["ip6"]
    in_ns(ns, "ip", "-6", "addr", "del", f"{own}/64", "dev", "eth0", check=True)
    in_ns(ns, "ip", "-6", "addr", "add", f"{own}/64", "dev", "eth0", check=True)  # with DAD
    in_ns(ns, "ip", "-6", "addr", "add", f"{taken}/64", "dev", "eth0", check=True)
    try:
        time.sleep(2.5)  # one DAD probe and its RetransTimer (1 s), with margin
        addrs = in_ns(ns, "ip", "-6", "addr", "show", "dev", "eth0", check=True).stdout
        mine = re.search(rf"inet6 {re.escape(own)}/64 (.*)", addrs).group(1)
        theirs = re.search(rf"inet6 {re.escape(taken)}/64 (.*)", addrs).group(1)
        assert "tentative" not in mine and "dadfailed" not in mine, addrs
        assert "dadfailed" in theirs, addrs
    finally:
        in_ns(ns, "ip", "-6", "addr", "del", f"{taken}/64", "dev", "eth0")


def test_slaac_from_the_routers_advertisement(twins):
    """A workload that configures itself: SLAAC gives it the address the spec derives
    from its MAC, the router as default route, and the switch's MTU."""
    t = twins["twin-b"]
    ns, want = t["w1"]["namespace"], t["w1"]["ip6"]
    in_ns(ns, "ip", "-6", "addr", "flush", "dev", "eth0", "scope", "global", check=True)
    in_ns(ns, "ip", "-6", "route", "flush", "dev", "eth0", check=True)
    in_ns(ns, "sysctl", "-qw", "net.ipv6.conf.eth0.accept_ra=2", "net.ipv6.conf.eth0.autoconf=1", check=True)
    in_ns(ns, "ip", "link", "set", "eth0", "down", check=True)
    in_ns(ns, "ip", "link", "set", "eth0", "up", check=True)  # router solicitation
    try:
        for _ in range(50):
            addrs = in_ns(ns, "ip", "-6", "addr", "show", "dev", "eth0", "scope", "global").stdout
            routes = in_ns(ns, "ip", "-6", "route", "show", "default").stdout
            if want in addrs and "tentative" not in addrs and "via fe80::" in routes:
                break
            time.sleep(0.2)
        assert f"inet6 {want}/64" in addrs, addrs
        assert "via fe80::1:aff:fe00:1 " in routes or "proto ra" in routes, routes
        assert " 0% packet loss" in ping6(ns, t["d1"]["ip6"], count=2).stdout
        mtu = in_ns(ns, "cat", "/proc/sys/net/ipv6/conf/eth0/mtu", check=True).stdout.strip()
        assert mtu == "1450", mtu
    finally:
        in_ns(ns, "sysctl", "-qw", "net.ipv6.conf.eth0.accept_ra=0", "net.ipv6.conf.eth0.autoconf=0")
        in_ns(ns, "ip", "-6", "route", "replace", "default", "via", "fd00:0:0:1::1", "dev", "eth0")


def dig(ns: str, server: str, name: str, qtype: str) -> tuple[str, list[str]]:
    out = in_ns(ns, "dig", "+time=2", "+tries=2", f"@{server}", name, qtype, check=True).stdout
    return re.search(r"status: (\w+)", out).group(1), re.findall(rf"\sIN\s+{qtype}\s+(\S+)$", out, re.M)


def test_aaaa_names_over_ipv4_and_ipv6_inside_each_twin(twins):
    a, b = twins["twin-a"], twins["twin-b"]
    ns = a["w1"]["namespace"]
    assert dig(ns, "10.0.0.1", "w2.twin-a.nvctl", "AAAA") == ("NOERROR", ["fd00:0:0:1::12"])
    assert dig(ns, "fd00:0:0:1::1", "d1.twin-a.nvctl", "AAAA") == ("NOERROR", [a["d1"]["ip6"]])
    assert dig(ns, "fd00:0:0:1::1", "d1.twin-a.nvctl", "A") == ("NOERROR", ["10.0.1.10"])
    assert dig(ns, "fd00:0:0:1::1", "d1.twin-b.nvctl", "AAAA") == ("NXDOMAIN", [])
    assert dig(b["w1"]["namespace"], "fd00:0:0:1::1", "d1.twin-b.nvctl", "AAAA") == ("NOERROR", [b["d1"]["ip6"]])


def test_trace_of_an_ipv6_packet_agrees_with_ovs(lab, twins):
    from controller.client.api import call
    d1 = twins["twin-a"]["d1"]["ip6"]
    r = call(lab.api_path, "trace", tenant="twin-a", port="w1", packet=f"tcp6,ipv6_dst={d1},tp_dst=22", real=True)
    assert r["agree"] is True and r["delivered"] == ["twin-a/d1"], r
    r = call(lab.api_path, "trace", tenant="twin-a", port="w1", packet=f"tcp6,ipv6_dst={d1},tp_dst=80", real=True)
    assert r["agree"] is True and r["delivered"] == [], r  # the ACL's deny, on d1's host


def test_a_too_big_ipv6_packet_gets_packet_too_big_with_the_switch_mtu(twins):
    t = twins["twin-a"]
    ns = t["w1"]["namespace"]
    in_ns(ns, "ip", "link", "set", "eth0", "mtu", "1500", check=True)
    try:
        big = in_ns(ns, "ping", "-6", "-c", "2", "-W", "2", "-M", "do", "-s", "1452", t["d1"]["ip6"])
        assert "Packet too big: mtu=1450" in big.stdout + big.stderr, big.stdout + big.stderr
        route = in_ns(ns, "ip", "-6", "route", "get", t["d1"]["ip6"], check=True).stdout
        assert "mtu 1450" in route, route
        fit = in_ns(ns, "ping", "-6", "-c", "2", "-W", "2", "-M", "do", "-s", "1402", t["d1"]["ip6"])
        assert "2 received" in fit.stdout, fit.stdout + fit.stderr
    finally:
        in_ns(ns, "ip", "-6", "route", "flush", "cache")
        in_ns(ns, "ip", "link", "set", "eth0", "mtu", "1450", check=True)
