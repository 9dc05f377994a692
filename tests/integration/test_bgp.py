"""BGP with a real router from Debian: BIRD 2 on the lab's outside network, peered with
the controller (`nvctl lab up --bgp`, scenarios/provider_router.py).

Tenant `bgp` and its twin `bgp-twin` have the same switches, ports, CAs, MACs and names;
only their provider addresses differ. Router r1's gateways are [hv1, hv2]; web1 and db1
run on hv3 (db1 has a floating IP, distributed on hv3). r1 imports routes inside
198.18.0.0/15, so it has no default route: the outside prefix BIRD announces,
198.18.0.0/24 (198.18.0.1 lives in the outside's namespace), is reachable only while
it is learned. Each host's own provider-network address (hvN: 203.0.113.(100+N)) is the
next hop BGP announces for what that host carries.
"""
import time

import pytest

from scenarios import provider_router as pr
from scenarios.lab import EXTERNAL_OFPORT, HostPlan
from scenarios.netutil import Capture, ping_many, tagged
from tests.integration.conftest import running_lab
from tests.integration.helpers import apply_yaml, nvctl, nvctl_json
from tests.waiting import wait_for

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
      external: {{ip: {ext}, gateways: [hv1, hv2], importRoutes: [198.18.0.0/15]}}
  nat:
    - {{type: snat, router: r1, cidr: 10.0.0.0/24}}
    - {{type: floating-ip, port: db1, externalIp: {fip}}}
  ports:
    - {{name: web1, switch: web, ip: 10.0.0.11, mac: "02:00:0a:00:00:0b", host: hv3}}
    - {{name: db1, switch: db, ip: 10.0.1.10, mac: "02:00:0a:00:01:0a", host: hv3}}
"""
TWINS = {"bgp": ("203.0.113.40", "203.0.113.41"), "bgp-twin": ("203.0.113.50", "203.0.113.51")}
ADDR = {f"hv{i}": HostPlan(i).provider_address for i in (1, 2, 3)}
TAG = "6e766267702d7072"  # "nvbgp-pr": the probes' payload
OUT = pr.OUTSIDE_PREFIX_HOST


@pytest.fixture(scope="module")
def lab():
    yield from running_lab(3, bgp=True)


@pytest.fixture(scope="module")
def twins(lab):
    for name, (ext, fip) in TWINS.items():
        apply_yaml(lab, TENANT.format(name=name, ext=ext, fip=fip), op="create")
    return {name: {p["name"]: p for p in nvctl_json(lab, "tenant", "show", name)["ports"]} for name in TWINS}


def bird_routes(lab):
    return pr.routes(lab.dir)




def expected(ext_host="hv1", fip_host=("hv3", "hv3")):
    out = {}
    for (name, (ext, fip)), fh in zip(TWINS.items(), fip_host):
        out[f"{ext}/32"] = ADDR[ext_host]
        out[f"{fip}/32"] = ADDR[fh]
    return out


def announced_as(lab, want):
    got = {p: r["via"] for p, r in bird_routes(lab).items()}
    return got if got == want else None


def learned_in(lab, tenant):
    rt = next(x for x in nvctl_json(lab, "tenant", "show", tenant)["routes"] if x["router"] == "r1")
    return [(x["prefix"], x["peer"], x["peerAsn"]) for x in rt["learned"]]


def test_the_router_learns_the_platforms_addresses_with_the_hosts_that_carry_them(lab, twins):
    wait_for("session up", lambda: pr.session_state(lab.dir) == "Established", 20)
    # exactly the twins' own addresses: routers' on their first gateway hv1, floating IPs on hv3
    wait_for("BIRD's table", lambda: announced_as(lab, expected()))
    st = nvctl_json(lab, "bgp")
    (n,) = st["networks"]
    assert [(s["peer"], s["state"]) for s in n["sessions"]] == [("203.0.113.1", "established")], n
    assert {x["prefix"]: x["nextHop"] for x in n["announced"]} == expected()
    # the outside's kernel follows BGP: a floating IP's packets go to hv3's link only
    caps = {h: Capture(lab.ext_ns, h, "") for h in ("hv1", "hv2", "hv3")}
    try:
        res = ping_many([(lab.ext_ns, fip, name) for name, (_, fip) in TWINS.items()], count=4, interval=0.1,
                        pattern=TAG)
    finally:
        seen = {h: tagged(c.packets(), bytes.fromhex(TAG)) for h, c in caps.items()}
    assert res == {name: (4, 4) for name in TWINS}, res
    assert seen == {"hv1": 0, "hv2": 0, "hv3": 2 * 2 * 4}, seen


def test_an_outside_prefix_is_reachable_only_while_it_is_learned(lab, twins):
    for name in TWINS:
        assert wait_for("learned", lambda: learned_in(lab, name)) == [("198.18.0.0/24", "203.0.113.1", 65001)]
    res = ping_many([(twins[n]["web1"]["namespace"], OUT, n) for n in TWINS], count=3, interval=0.1, pattern=TAG)
    assert res == {n: (3, 3) for n in TWINS}, res
    trace = nvctl(lab, "trace", "bgp/web1", f"icmp,nw_dst={OUT}").stdout
    assert "198.18.0.0/24 learned from 203.0.113.1 (AS 65001)" in trace, trace
    assert f"delivered to: hv1:{EXTERNAL_OFPORT}" in trace, trace  # SNAT at the first gateway
    proof = nvctl_json(lab, "verify")
    assert proof["ok"], proof["text"]

    pr.birdc(lab.dir, "disable outside")  # the provider withdraws it
    for name in TWINS:
        wait_for("withdrawn", lambda: learned_in(lab, name) == [])
    res = ping_many([(twins[n]["web1"]["namespace"], OUT, n) for n in TWINS], count=3, interval=0.1, pattern=TAG)
    assert res == {n: (0, 3) for n in TWINS}, res  # (received, sent)
    shown = nvctl(lab, "tenant", "show", "bgp").stdout
    assert "nothing learned" in shown, shown

    pr.birdc(lab.dir, "enable outside")
    for name in TWINS:
        wait_for("learned again", lambda: learned_in(lab, name))
    res = ping_many([(twins[n]["web1"]["namespace"], OUT, n) for n in TWINS], count=3, interval=0.1, pattern=TAG)
    assert res == {n: (3, 3) for n in TWINS}, res


def test_the_announcement_follows_a_gateway_failover_and_a_floating_ips_migration(lab, twins):
    wait_for("BIRD's table", lambda: announced_as(lab, expected()))
    t0 = time.monotonic()
    assert lab.kill_vswitchd("hv1")
    try:
        wait_for("routers' addresses via hv2", lambda: announced_as(lab, expected("hv2")), 10)
        moved = time.monotonic() - t0
        print(f"\nrouter addresses announced via hv2 {moved:.2f} s after hv1's vswitchd died")
        res = ping_many([(twins[n]["web1"]["namespace"], OUT, n) for n in TWINS], count=3, interval=0.1,
                        pattern=TAG)
        assert res == {n: (3, 3) for n in TWINS}, res
    finally:
        lab.start_vswitchd("hv1")
    lab.wait_synced(60)
    wait_for("back via hv1", lambda: announced_as(lab, expected()), 15)

    nvctl(lab, "port", "migrate", "bgp/db1", "--to", "hv2")
    wait_for("bgp's floating IP via hv2, the twin's still via hv3",
             lambda: announced_as(lab, expected(fip_host=("hv2", "hv3"))))
    res = ping_many([(lab.ext_ns, fip, name) for name, (_, fip) in TWINS.items()], count=3, interval=0.1,
                    pattern=TAG)
    assert res == {name: (3, 3) for name in TWINS}, res
    nvctl(lab, "port", "migrate", "bgp/db1", "--to", "hv3")
    wait_for("back via hv3", lambda: announced_as(lab, expected()))


def test_a_controller_restart_withdraws_nothing(lab, twins):
    """Graceful restart: while the controller is away, BIRD keeps our routes (stale) and
    the data plane keeps carrying them both ways; the restarted controller takes its
    learned routes from before (nothing is sent to the switches) and the session comes back."""
    wait_for("BIRD's table", lambda: announced_as(lab, expected()))
    lab.stop_controller(sig=9)
    try:
        time.sleep(2)
        held = bird_routes(lab)
        assert {p: r["via"] for p, r in held.items()} == expected(), held
        assert pr.graceful_restart_active(lab.dir) and pr.session_state(lab.dir) != "Established"
        res = ping_many([(twins[n]["web1"]["namespace"], OUT, n) for n in TWINS]
                        + [(lab.ext_ns, fip, f"in-{n}") for n, (_, fip) in TWINS.items()],
                        count=3, interval=0.1, pattern=TAG)
        assert all(v == (3, 3) for v in res.values()), res
    finally:
        lab.start_controller()
    hosts = lab.wait_synced(60)
    assert [h["last_sync_flow_mods"] for h in hosts] == [0, 0, 0], hosts
    wait_for("session back", lambda: pr.session_state(lab.dir) == "Established", 20)
    wait_for("fresh routes", lambda: not pr.graceful_restart_active(lab.dir) and announced_as(lab, expected()))
    for name in TWINS:
        assert learned_in(lab, name) == [("198.18.0.0/24", "203.0.113.1", 65001)]
