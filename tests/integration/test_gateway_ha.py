"""Gateways without a single point of failure, on real OVS: distributed floating IPs,
an HA gateway group with BFD, twins with identical layouts.

Every lab host has the provider network (ext0 on the outside's bridge br-ext, where the
interface named after each host is that host's link). Tenant `ha` and its twin
`ha-twin` have the same switches, ports, CAs, MACs and names; only their provider
addresses differ (those belong to one tenant each). Both routers' gateway group is
[hv1, hv2]; their ports run on hv3.
"""
import json
import time

import pytest

from scenarios.lab import EXTERNAL_OFPORT, OUTSIDE_IP
from scenarios.netutil import Capture, PingTimeline, ping_many, tagged
from tests.integration.helpers import apply_yaml, nvctl, nvctl_json

TENANT = """apiVersion: nvctl/v1
kind: Tenant
metadata: {{name: {name}}}
spec:
  switches:
    - {{name: web, cidr: 10.0.0.0/24}}
    - {{name: db, cidr: 10.0.1.0/24}}
  routers:
    - name: r1
      ports: [{{switch: web, ip: 10.0.0.1}}, {{switch: db, ip: 10.0.1.1}}]
      external: {{ip: {ext}, gateways: [hv1, hv2]}}
  nat:
    - {{type: snat, router: r1, cidr: 10.0.0.0/24}}
    - {{type: floating-ip, port: db1, externalIp: {fip}}}
  ports:
    - {{name: web1, switch: web, ip: 10.0.0.11, mac: "02:00:0a:00:00:0b", host: hv3}}
    - {{name: db1, switch: db, ip: 10.0.1.10, mac: "02:00:0a:00:01:0a", host: hv3}}
"""
TWINS = {"ha": ("203.0.113.20", "203.0.113.21"), "ha-twin": ("203.0.113.30", "203.0.113.31")}
TAG = "6e76676174657761"  # "nvgatewa": the probes' payload, so captures count only them


@pytest.fixture(scope="module")
def twins(lab):
    for name, (ext, fip) in TWINS.items():
        apply_yaml(lab, TENANT.format(name=name, ext=ext, fip=fip), op="create")
    return {name: {p["name"]: p for p in nvctl_json(lab, "tenant", "show", name)["ports"]} for name in TWINS}


def _capture_ping(lab, pairs, links, count=5):
    """Run tagged pings `pairs` [(ns, ip, label)] while capturing on `links`
    [(ns, iface)]; returns (results, {iface label: tagged packets})."""
    caps = {f"{ns}:{iface}": Capture(ns, iface, "") for ns, iface in links}
    try:
        res = ping_many(pairs, count=count, interval=0.1, pattern=TAG)
    finally:
        seen = {k: tagged(c.packets(), bytes.fromhex(TAG)) for k, c in caps.items()}
    return res, seen


def _links(lab, *hosts):
    return [(lab.ext_ns, h) for h in hosts]


def test_a_floating_ip_enters_and_leaves_at_its_ports_host(lab, twins):
    ext, ul = lab.ext_ns, lab.ul_ns
    pairs = [(ext, fip, name) for name, (_, fip) in TWINS.items()]
    res, seen = _capture_ping(lab, pairs, _links(lab, "hv1", "hv2", "hv3") + [(ul, "hv1"), (ul, "hv3")])
    assert res == {name: (5, 5) for name in TWINS}, res
    # both tenants' requests and replies at hv3's provider link, nothing at hv1's or hv2's,
    # and nothing of theirs crossing the underlay (no hairpin through a gateway)
    assert seen[f"{ext}:hv3"] == 2 * 2 * 5, seen
    assert seen[f"{ext}:hv1"] == seen[f"{ext}:hv2"] == 0, seen
    assert seen[f"{ul}:hv1"] == seen[f"{ul}:hv3"] == 0, seen
    # outbound from the port: the outside sees its floating IP, from hv3 only
    for name, (_, fip) in TWINS.items():
        cap = Capture(ext, "hv3", f"icmp and src host {fip}", inbound_only=True)
        try:
            got = ping_many([(twins[name]["db1"]["namespace"], OUTSIDE_IP, "out")], count=3, pattern=TAG)
        finally:
            n = tagged(cap.packets(), bytes.fromhex(TAG))
        assert got["out"] == (3, 3) and n == 3, (name, got, n)


def test_the_floating_ip_follows_its_port_to_another_host(lab, twins):
    moved = json.loads(nvctl(lab, "port", "migrate", "ha/db1", "--to", "hv2", "--json").stdout)
    assert moved["dst"] == "hv2", moved
    ext = lab.ext_ns
    pairs = [(ext, fip, name) for name, (_, fip) in TWINS.items()]
    res, seen = _capture_ping(lab, pairs, _links(lab, "hv1", "hv2", "hv3"))
    assert res == {name: (5, 5) for name in TWINS}, res
    # ha's floating IP now enters at hv2 (its gratuitous ARP moved the outside's bridge);
    # the twin's, whose port stayed, still at hv3
    assert seen[f"{ext}:hv2"] == 2 * 5 and seen[f"{ext}:hv3"] == 2 * 5 and seen[f"{ext}:hv1"] == 0, seen
    proof = nvctl_json(lab, "verify")
    assert proof["ok"], proof


def _timeline_losses(r, start, end):
    return sum(1 for t, rtt in r["samples"] if rtt is None and start <= t < end)


@pytest.mark.measures
def test_snat_survives_its_active_gateway_dying_and_coming_back(lab, twins):
    ext = lab.ext_ns
    # before: SNAT leaves at hv1, the first gateway of both routers
    res, seen = _capture_ping(lab, [(twins[n]["web1"]["namespace"], OUTSIDE_IP, n) for n in TWINS],
                              _links(lab, "hv1", "hv2"), count=3)
    assert res == {n: (3, 3) for n in TWINS}, res
    assert seen[f"{ext}:hv1"] == 2 * 2 * 3 and seen[f"{ext}:hv2"] == 0, seen

    pings = {n: PingTimeline(twins[n]["web1"]["namespace"], OUTSIDE_IP, seconds=12, interval=0.01) for n in TWINS}
    t0 = min(p.started for p in pings.values())
    try:
        time.sleep(2)
        killed = time.time() - t0
        assert lab.kill_vswitchd("hv1")
        time.sleep(2)
        during = {n: _gateway_view(lab, n) for n in TWINS}
        time.sleep(2)
        back = time.time() - t0
        lab.start_vswitchd("hv1")
        results = {n: p.result() for n, p in pings.items()}
    finally:
        for p in pings.values():
            p.stop()
    lab.wait_synced(60)
    for n, (active, alive, delivered, agree) in during.items():
        # while hv1 was down: the controller saw it (the other hosts' BFD) and trace followed
        # the switches' fast-failover choice, as OVS's own trace of hv3 did
        assert active == "hv2" and alive == {"hv1": False, "hv2": True}, during
        assert delivered == [f"hv2:{EXTERNAL_OFPORT}"] and agree is True, during
    for n, r in results.items():
        lost_kill = _timeline_losses(r, killed, back)
        lost_back = _timeline_losses(r, back, 1e9)
        print(f"\n{n}: {r['lost']} of {r['sent']} pings lost at 10 ms: {lost_kill} when hv1's vswitchd died, "
              f"{lost_back} when it came back")
        assert r["received"] > 0.8 * r["sent"], r
        assert lost_kill * r["interval_s"] <= 1.0, (n, lost_kill)  # SNAT back within 1 s
        assert lost_back * r["interval_s"] <= 1.0, (n, lost_back)  # and no second outage over 1 s
    # hv1 is back and in sync: it is the active gateway again (preemption)
    time.sleep(1.5)
    res, seen = _capture_ping(lab, [(twins[n]["web1"]["namespace"], OUTSIDE_IP, n) for n in TWINS],
                              _links(lab, "hv1", "hv2"), count=3)
    assert res == {n: (3, 3) for n in TWINS}, res
    assert seen[f"{ext}:hv1"] == 2 * 2 * 3 and seen[f"{ext}:hv2"] == 0, seen
    for n in TWINS:
        active, alive, delivered, agree = _gateway_view(lab, n)
        assert active == "hv1" and alive == {"hv1": True, "hv2": True}, (n, active, alive)
        assert delivered == [f"hv1:{EXTERNAL_OFPORT}"] and agree is True, (n, delivered)
    proof = nvctl_json(lab, "verify")
    assert proof["ok"], proof


def _gateway_view(lab, tenant):
    """(active gateway, {gateway: alive}) of router r1 as `tenant show` has them, where
    trace says a ping from web1 to the outside leaves, and whether OVS's own trace of
    the first hop (hv3, where the fast-failover group chooses) agrees."""
    from controller.client.api import call
    g = next(x for x in nvctl_json(lab, "tenant", "show", tenant)["gateways"] if x["router"] == "r1")
    out = call(lab.api_path, "trace", tenant=tenant, port="web1", packet=f"icmp,nw_dst={OUTSIDE_IP}", real=True)
    assert out["hops"][0]["host"] == "hv3", out
    return g["active"], {x["host"]: x["alive"] for x in g["gateways"]}, out["delivered"], out["hops"][0]["real"]["agree"]
