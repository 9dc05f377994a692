"""Twins: every YAML feature given to two tenants with identical specs on the same hosts.

twin-a and twin-b (examples/twins/) share switch names, CIDRs, port names, CAs, MACs,
hosts, the router and its static route, the stateful ACLs, SNAT, a floating IP, the load
balancer (VIP 10.0.0.100:80, the same backends on the same hosts) and a rate limit; only
their provider-network addresses differ, because each of those belongs to one tenant.

Every feature is checked with real traffic, for every twin that exists, in four phases
(a module-scoped parameter, so pytest runs all checks of one phase before the next):

  1-a-only      only twin-a exists
  2-b-created   twin-b created next to it
  3-b-changed   twin-b changed (ACL opens port 22, one LB backend gone, a lower rate
                limit); twin-a must not notice
  4-b-deleted   twin-b deleted; twin-a must not notice, b's addresses are free again

Probes are tagged with the tenant's name (the ICMP payload pattern, the TCP greeting
"<tenant>/<port>") so that every answer says which twin it came from.
"""
from __future__ import annotations

import copy
import os
import re
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from scenarios.netutil import Capture, PingTimeline, TcpServer, iperf3, ping_many, tcp_connect, tcp_whois
from tests.integration.helpers import ROOT, Measured, apply_yaml, nvctl, nvctl_json

A, B = "twin-a", "twin-b"
TWINS = (A, B)
EXAMPLES = os.path.join(ROOT, "examples", "twins")
TEXT = {t: open(os.path.join(EXAMPLES, f"{t}.yaml")).read() for t in TWINS}
EXT = {A: {"router": "203.0.113.20", "fip": "203.0.113.21"},
       B: {"router": "203.0.113.30", "fip": "203.0.113.31"}}
OUTSIDE = "203.0.113.1"
VIP, VIP_PORT, BACKEND_PORT = "10.0.0.100", 80, 8080
ROUTED_DST = "192.168.50.7"  # inside the static route 192.168.50.0/24 via db2 (10.0.1.20)
GATEWAYS = ("10.0.0.1", "10.0.1.1")
# the only paths at which the two documents may differ
OWN_PATHS = {"metadata.name", "spec.routers[0].external.ip", "spec.nat[1].externalIp"}
TAG = {t: t.encode().hex() for t in TWINS}  # ping -p pattern: the payload spells the tenant's name
TAG["outside"] = b"outside".hex()
MEASURED = Measured()  # per phase: what the migration test measured, for its slo test


def substituted(doc: dict, name: str, ext: dict) -> dict:
    """The one template: a document with another name and other external addresses."""
    d = copy.deepcopy(doc)
    d["metadata"]["name"] = name
    d["spec"]["routers"][0]["external"]["ip"] = ext["router"]
    fip, = [n for n in d["spec"]["nat"] if n["type"] == "floating-ip"]
    fip["externalIp"] = ext["fip"]
    return d


def changed(doc: dict) -> dict:
    """twin-b's change: port 22 also allowed to sec1, db1 no longer a backend, web2 limited harder."""
    d = copy.deepcopy(doc)
    d["spec"]["acls"][0]["dstPorts"] = [5432, 22]
    d["spec"]["loadBalancers"][0]["backends"] = ["web2:8080", "db2:8080"]
    web2, = [p for p in d["spec"]["ports"] if p["name"] == "web2"]
    web2["rateLimitMbps"] = 20
    return d


def diff_paths(x, y, path="") -> set[str]:
    if isinstance(x, dict) and isinstance(y, dict):
        out = set()
        for k in set(x) | set(y):
            p = f"{path}.{k}" if path else k
            out |= diff_paths(x.get(k), y.get(k), p) if k in x and k in y else {p}
        return out
    if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        return set().union(*(diff_paths(a, b, f"{path}[{i}]") for i, (a, b) in enumerate(zip(x, y))))
    return set() if x == y else {path}


DOC = {t: yaml.safe_load(TEXT[t]) for t in TWINS}
VARIANTS = {"base": lambda t: TEXT[t], "changed": lambda t: yaml.safe_dump(changed(DOC[t]), sort_keys=False)}
# what each variant promises, the checks' expectations
EXPECT = {"base": {"ssh_allowed": False, "backends": {"web2", "db1", "db2"}, "rate": 50},
          "changed": {"ssh_allowed": True, "backends": {"web2", "db2"}, "rate": 20}}
PHASES = {"1-a-only": {A: "base"},
          "2-b-created": {A: "base", B: "base"},
          "3-b-changed": {A: "base", B: "changed"},
          "4-b-deleted": {A: "base"}}


def parallel(*fns):
    """Run the callables at once; their results in order (exceptions re-raised)."""
    with ThreadPoolExecutor(max_workers=max(1, len(fns))) as ex:
        return [f.result() for f in [ex.submit(fn) for fn in fns]]


def tagged_pings(pairs, count=2, interval=0.2, wait=2) -> dict:
    """pairs: [(ns, dst_ip, tenant, label)]: ping at once with the tenant's payload tag
    -> {label: (received, transmitted)}."""
    procs = {label: subprocess.Popen(["ip", "netns", "exec", ns, "ping", "-n", "-c", str(count), "-i", str(interval),
                                      "-W", str(wait), "-p", TAG[t], ip],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for ns, ip, t, label in pairs}
    out = {}
    try:
        for label, p in procs.items():
            text, _ = p.communicate(timeout=60)
            m = re.search(r"(\d+) packets transmitted, (\d+) received", text)
            out[label] = (int(m.group(2)), int(m.group(1))) if m else (0, count)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def tag_of(pkt) -> str | None:
    raw = bytes(pkt)
    found = [t for t in TWINS if t.encode() in raw]
    return found[0] if len(found) == 1 else None


def echo_requests(pkts):
    from scapy.layers.inet import ICMP, IP
    return [p for p in pkts if IP in p and ICMP in p and p[ICMP].type == 8]


class World:
    """The lab's twins: which exist (and in which variant), their ports, their servers."""

    def __init__(self, lab):
        self.lab = lab
        self.name = ""
        self.variant: dict[str, str] = {}
        self.ports: dict[str, dict] = {}
        self.servers: dict[str, list[TcpServer]] = {}

    @property
    def live(self) -> list[str]:
        return sorted(self.variant)

    @property
    def absent(self) -> list[str]:
        return [t for t in TWINS if t not in self.variant]

    def ns(self, t: str, port: str) -> str:
        return self.ports[t][port]["namespace"]

    def ip(self, t: str, port: str) -> str:
        return self.ports[t][port]["ip"]

    def expect(self, t: str) -> dict:
        return EXPECT[self.variant[t]]

    def enter(self, phase: str) -> None:
        self.name = phase
        want = PHASES[phase]
        if phase == "3-b-changed" and B not in self.variant:
            self._set(B, "base")  # "changed" means: created first, then changed
        if phase == "4-b-deleted" and B not in self.variant:
            self._set(B, "base")
        for t in TWINS:
            self._set(t, want.get(t))
        hosts = self.lab.wait_synced(30)
        assert all(h["in_sync"] for h in hosts), f"every host in sync after entering {phase}: {hosts}"

    def _set(self, t: str, variant: str | None) -> None:
        if variant is None:
            if t in self.variant:
                self._stop_servers(t)
                nvctl(self.lab, "tenant", "delete", t)
                del self.variant[t], self.ports[t]
            return
        if t not in self.variant:
            apply_yaml(self.lab, VARIANTS[variant](t), op="create")
        else:
            apply_yaml(self.lab, VARIANTS[variant](t))  # unchanged: sends nothing
        self.variant[t] = variant
        self.ports[t] = {p["name"]: p for p in nvctl_json(self.lab, "tenant", "show", t)["ports"]}
        if t not in self.servers:
            self._start_servers(t)

    def _start_servers(self, t: str) -> None:
        specs = [(self.ns(t, p), BACKEND_PORT, f"{t}/{p}") for p in ("web2", "db1", "db2")]
        specs += [(self.ns(t, "sec1"), 5432, ""), (self.ns(t, "sec1"), 22, "")]
        with ThreadPoolExecutor(len(specs)) as ex:
            futs = [ex.submit(TcpServer, ns, port, name) for ns, port, name in specs]
        started = [f.result() for f in futs if f.exception() is None]
        self.servers[t] = started
        errors = [f.exception() for f in futs if f.exception() is not None]
        if errors:
            raise RuntimeError(f"servers of {t} did not start: {errors}")

    def _stop_servers(self, t: str) -> None:
        for s in self.servers.pop(t, []):
            s.stop()

    def close(self) -> None:
        for t in list(self.servers):
            self._stop_servers(t)


@pytest.fixture(scope="module")
def world(lab):
    w = World(lab)
    try:
        yield w
    finally:
        w.close()


@pytest.fixture(scope="module", params=list(PHASES))
def phase(request, world):
    world.enter(request.param)
    return world


# ----------------------------------------------------------------------------------
# the documents
# ----------------------------------------------------------------------------------
def test_the_twins_differ_only_in_their_name_and_external_addresses():
    a, b = DOC[A], DOC[B]
    assert substituted(a, B, EXT[B]) == b, "twin-b.yaml must be twin-a.yaml with its name and external addresses"
    assert diff_paths(a, b) == OWN_PATHS, f"expected the twins to differ exactly at {sorted(OWN_PATHS)}"
    assert set(EXT[A].values()).isdisjoint(EXT[B].values())
    assert a["spec"]["routers"][0]["external"]["ip"] == EXT[A]["router"]
    assert a["spec"]["nat"][1]["externalIp"] == EXT[A]["fip"]
    assert diff_paths(b, changed(b)) == {"spec.acls[0].dstPorts", "spec.loadBalancers[0].backends",
                                        "spec.ports[1].rateLimitMbps"}, "b's change: the ACL, the backends, the limit"


# ----------------------------------------------------------------------------------
# per phase, for every twin that exists
# ----------------------------------------------------------------------------------
def test_l2_same_host_and_across_hosts(phase):
    pairs = []
    for t in phase.live:
        p = phase.ports[t]
        assert p["web1"]["host"] == p["web3"]["host"] != p["web2"]["host"], p
        for src, dst in (("web1", "web3"), ("web1", "web2"), ("web3", "web2"), ("web2", "mig1")):
            label = f"{t}:{src}->{dst} ({p[src]['host']}->{p[dst]['host']})"
            pairs.append((phase.ns(t, src), phase.ip(t, dst), t, label))
    res = tagged_pings(pairs)
    bad = {k: v for k, v in res.items() if v != (2, 2)}
    assert not bad, f"expected every L2 ping answered (2 of 2): {bad}"


def test_routing_through_the_router_decrements_ttl_once(phase):
    caps = {t: Capture(phase.ns(t, "db1"), "eth0", "icmp", inbound_only=True) for t in phase.live}
    try:
        res = tagged_pings([(phase.ns(t, "web1"), phase.ip(t, "db1"), t, t) for t in phase.live]
                           + [(phase.ns(t, "db2"), gw, t, f"{t}:db2->{gw}") for t in phase.live for gw in GATEWAYS],
                           count=3)
    finally:
        pkts = {t: c.packets() for t, c in caps.items()}
    for t in phase.live:
        assert res[t] == (3, 3), f"{t}: web1 (hv1) -> db1 (hv2) routed ping: expected 3 of 3, got {res[t]}"
        assert all(res[f"{t}:db2->{gw}"] == (3, 3) for gw in GATEWAYS), res
        reqs = echo_requests(pkts[t])
        from scapy.layers.inet import IP
        tags = Counter(tag_of(p) for p in reqs)
        assert tags == Counter({t: 3}), f"{t}/db1 expected exactly its own twin's 3 requests, saw tags {tags}"
        assert {p[IP].ttl for p in reqs} == {63}, f"{t}: the router decrements TTL once: {[p[IP].ttl for p in reqs]}"
        assert {p[IP].src for p in reqs} == {phase.ip(t, "web1")}


def test_static_route_leads_to_its_next_hop(phase):
    """192.168.50.0/24 via db2: web1's pings to 192.168.50.7 arrive at db2 (its MAC, TTL 63);
    db2 does not answer (port security lets it send only from its own IP)."""
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether
    caps = {t: Capture(phase.ns(t, "db2"), "eth0", f"icmp and dst host {ROUTED_DST}", inbound_only=True)
            for t in phase.live}
    try:
        tagged_pings([(phase.ns(t, "web1"), ROUTED_DST, t, t) for t in phase.live], count=3, wait=1)
    finally:
        pkts = {t: echo_requests(c.packets()) for t, c in caps.items()}
    for t in phase.live:
        tags = Counter(tag_of(p) for p in pkts[t])
        assert tags == Counter({t: 3}), f"{t}/db2 (the next hop) expected its twin's 3 pings to {ROUTED_DST}: {tags}"
        assert {p[IP].ttl for p in pkts[t]} == {63}
        assert {p[Ether].dst for p in pkts[t]} == {phase.ports[t]["db2"]["mac"]}


def test_stateful_acls_allow_and_refuse(phase):
    checks = []
    for t in phase.live:
        ssh = "connected" if phase.expect(t)["ssh_allowed"] else "timeout"
        sec = phase.ip(t, "sec1")
        checks += [(t, "web1", sec, 5432, "connected"),  # allowed: from web, tcp 5432
                   (t, "web1", sec, 22, ssh),            # denied unless the variant allows 22
                   (t, "db2", sec, 5432, "timeout"),     # denied: not from web
                   (t, "sec1", "127.0.0.1", 22, "connected")]  # control: the server on 22 is there
    got = parallel(*[lambda c=c: tcp_connect(phase.ns(c[0], c[1]), c[2], c[3], timeout=1.5) for c in checks])
    bad = [f"{t}/{src} -> {ip}:{port}: expected {want}, got {g}" for (t, src, ip, port, want), g in zip(checks, got)
           if g != want]
    assert not bad, bad


def test_snat_the_outside_sees_each_twins_own_router_address(phase, lab):
    cap = Capture(lab.ext_ns, "br-ext", "icmp", inbound_only=True)
    try:
        res = tagged_pings([(phase.ns(t, w), OUTSIDE, t, f"{t}/{w}") for t in phase.live for w in ("web1", "web2")],
                           count=3)
    finally:
        reqs = echo_requests(cap.packets())
    from scapy.layers.inet import IP
    bad = {k: v for k, v in res.items() if v != (3, 3)}
    assert not bad, f"expected every SNATed ping to the outside answered: {bad}"
    for t in phase.live:
        src = Counter(p[IP].src for p in reqs if tag_of(p) == t)
        assert set(src) == {EXT[t]["router"]} and sum(src.values()) == 6, \
            f"{t}'s 6 pings must arrive from its router's external address {EXT[t]['router']}, got {dict(src)}"


def test_floating_ip_reaches_each_twins_own_workload(phase, lab):
    cap = Capture(lab.ext_ns, "br-ext", "icmp", inbound_only=True)
    try:
        whois = parallel(*[lambda t=t: tcp_whois(lab.ext_ns, EXT[t]["fip"], BACKEND_PORT, count=3, timeout=1.5)
                           for t in phase.live],
                         *[lambda t=t: tcp_connect(lab.ext_ns, EXT[t]["fip"], BACKEND_PORT, timeout=1.5)
                           for t in phase.absent],
                         lambda: tagged_pings([(lab.ext_ns, EXT[t]["fip"], "outside", f"in:{t}") for t in phase.live]
                                              + [(phase.ns(t, "db1"), OUTSIDE, t, f"out:{t}") for t in phase.live]))
    finally:
        reqs = echo_requests(cap.packets())
    from scapy.layers.inet import IP
    pings = whois[-1]
    for t, names in zip(phase.live, whois):
        assert names == [f"{t}/db1"] * 3, f"the outside -> {EXT[t]['fip']}:{BACKEND_PORT} must land in {t}/db1: {names}"
        assert pings[f"in:{t}"] == (2, 2) and pings[f"out:{t}"] == (2, 2), pings
        src = {p[IP].src for p in reqs if tag_of(p) == t}
        assert src == {EXT[t]["fip"]}, f"{t}/db1's pings must leave from its floating IP {EXT[t]['fip']}: {src}"
    for t, got in zip(phase.absent, whois[len(phase.live):-1]):
        assert got == "timeout", f"{t} does not exist: its floating IP {EXT[t]['fip']} must not answer, got {got}"


def test_load_balancer_answers_from_the_same_twin(phase):
    n = 16
    got = parallel(*[lambda t=t: tcp_whois(phase.ns(t, "web1"), VIP, VIP_PORT, count=n, timeout=1.0)
                     for t in phase.live])
    bad = []
    for t, names in zip(phase.live, got):
        hits = Counter(names)
        want = {f"{t}/{b}" for b in phase.expect(t)["backends"]}
        print(f"\n{phase.name} {t}: {n} connections to {VIP}:{VIP_PORT}: {dict(hits)}")
        if None in hits or not set(hits) <= want or len(hits) < 2:
            bad.append(f"{t}: expected {n} answers, all from {sorted(want)} (at least 2 of them), got {dict(hits)}")
    assert not bad, bad


def test_rate_limit_holds_in_each_twin(phase):
    """Both twins' web2 send at once. A meter lets BURST_SECONDS of its rate through on top,
    so a run of `seconds` may average at most rate * (1 + BURST_SECONDS / seconds)."""
    from controller.layers.qos import BURST_SECONDS
    live, seconds = phase.live, 2
    got = parallel(*[lambda t=t: iperf3(phase.ns(t, "web2"), phase.ns(t, "web3"), phase.ip(t, "web3"),
                                        seconds=seconds) for t in live])
    mbps = {t: g["mbps"] for t, g in zip(live, got)}
    limits = {t: phase.expect(t)["rate"] for t in live}
    print(f"\n{phase.name}: iperf3 web2 -> web3 ({seconds} s, at once): {mbps} Mbit/s, limits {limits}")
    for t in live:
        ceiling = limits[t] * (1 + BURST_SECONDS / seconds) * 1.05
        assert mbps[t] <= ceiling, f"{t}/web2 limited to {limits[t]} Mbit/s: expected <= {ceiling:.1f}, got {mbps[t]}"
        assert mbps[t] >= limits[t] * 0.4, f"{t}/web2 limited to {limits[t]} Mbit/s: only {mbps[t]}, broken?"
    lo = min(limits.values())
    for t in live:
        if limits[t] > lo:  # the other twin's lower limit must not apply here
            assert mbps[t] > lo * (1 + BURST_SECONDS / seconds) * 1.05, \
                f"{t} must keep its own {limits[t]} Mbit/s, not the other twin's {lo}: {mbps[t]}"


@pytest.mark.measures
def test_migration_of_twin_a_leaves_both_working(phase, lab):
    live = phase.live
    src, dst = phase.ports[A]["mig1"]["host"], "hv3"
    assert all(phase.ports[t]["mig1"]["host"] == src for t in live), "the twins' mig1 start on the same host"
    timelines = {t: PingTimeline(phase.ns(t, "web1"), phase.ip(t, "mig1"), seconds=2.5, interval=0.02) for t in live}
    marks, moved = {}, []
    try:
        time.sleep(0.6)
        marks["out"] = time.time()
        nvctl(lab, "port", "migrate", f"{A}/mig1", "--to", dst)
        moved.append(dst)
        hosts_mid = {t: {p["name"]: p for p in nvctl_json(lab, "tenant", "show", t)["ports"]}["mig1"]["host"]
                     for t in live}
        mid = ping_many([(phase.ns(t, "web2"), phase.ip(t, "mig1"), t) for t in live], count=2)
        marks["back"] = time.time()
        nvctl(lab, "port", "migrate", f"{A}/mig1", "--to", src)  # back, next to twin-b's mig1
        moved.append(src)
        res = {t: tl.result() for t, tl in timelines.items()}
        after = ping_many([(phase.ns(t, "web2"), phase.ip(t, "mig1"), t) for t in live], count=2)
    finally:
        for tl in timelines.values():
            tl.stop()
        if moved and moved[-1] != src:
            nvctl(lab, "port", "migrate", f"{A}/mig1", "--to", src, check=False)
    assert hosts_mid == {t: (dst if t == A else src) for t in live}, f"placement while moved: {hosts_mid}"
    summary = {}
    for t, r in res.items():
        at = [round(tm, 2) for tm, rtt in r["samples"] if rtt is None]
        moves = {k: round(v - timelines[t].started, 2) for k, v in marks.items()}
        summary[t] = f"{r['lost']} of {r['sent']} lost" + (f" at t={at} s (moves at {moves})" if at else "")
    print(f"\n{phase.name}: {A}/mig1 {src} -> {dst} -> {src}; pings every 20 ms: {summary}")
    MEASURED.record(phase.name, {t: (r["lost"], summary[t]) for t, r in res.items()})
    assert all(v == (2, 2) for v in mid.values()), f"with {A}/mig1 on {dst}: expected both twins' mig1 to answer: {mid}"
    assert all(v == (2, 2) for v in after.values()), f"after moving back: {after}"
    for t, r in res.items():
        assert r["sent"] > 60 and r["lost"] < r["sent"], f"{t}: expected the pings to mig1 to go on, got {summary[t]}"


@pytest.mark.slo
def test_slo_migration_of_twin_a_loses_at_most_two_pings_and_twin_b_one(phase):
    for t, (lost, summary) in MEASURED.read(phase.name).items():
        # The twin that did not move may lose at most one ping: removing ports from a host's
        # userspace datapath drops a packet of other ports there now and then, whoever owns
        # them (measured: 1 ping in 1,200 at 10 ms while 30 ports of the same tenant came
        # and went on the receiver's host, with or without the lab's deeper socket queues).
        allowed = 2 if t == A else 1
        assert lost <= allowed, f"{phase.name}: {t}: expected at most {allowed} pings lost, got {summary}"


def test_isolation_no_tagged_ping_reaches_the_other_twin(phase):
    """Every workload of every twin pings every address (its twin's ports, gateways, the
    static route, the VIP, the outside) with its twin's tag; captures on all workloads."""
    caps = {(t, p): Capture(phase.ns(t, p), "eth0", "icmp", inbound_only=True)
            for t in phase.live for p in phase.ports[t]}
    pairs, expected = [], {}
    try:
        for t in phase.live:
            for s in phase.ports[t]:
                for d in phase.ports[t]:
                    if d != s:
                        label = f"{t}:{s}->{d}"
                        pairs.append((phase.ns(t, s), phase.ip(t, d), t, label))
                        expected[label] = d != "sec1"  # sec1 lets only tcp 5432 (22) from web in
                for ip in GATEWAYS:
                    pairs.append((phase.ns(t, s), ip, t, f"{t}:{s}->{ip}"))
                    expected[f"{t}:{s}->{ip}"] = True
                for ip in (ROUTED_DST, VIP, OUTSIDE):
                    pairs.append((phase.ns(t, s), ip, t, f"{t}:{s}->{ip}"))
        res = tagged_pings(pairs, count=2, wait=1)
        time.sleep(0.2)
    finally:
        pkts = {k: c.packets() for k, c in caps.items()}
    wrong = {k: res[k] for k, ok in expected.items() if res[k] != ((2, 2) if ok else (0, 2))}
    assert not wrong, f"expected every port and gateway reachable except sec1 (ACL): {wrong}"
    leaks = {f"{t}/{p}": Counter(tag_of(x) for x in got if tag_of(x) not in (t, None))
             for (t, p), got in pkts.items()}
    leaks = {k: dict(v) for k, v in leaks.items() if v}
    assert not leaks, f"expected no packet tagged by one twin at the other's workloads: {leaks}"
    controls = {f"{t}/{p}": sum(tag_of(x) == t for x in got) for (t, p), got in pkts.items()}
    assert all(n >= 2 for n in controls.values()), f"control: every capture sees its own twin's pings: {controls}"


def claim_doc(router_ip: str, fip: str) -> str:
    return f"""apiVersion: nvctl/v1
kind: Tenant
metadata: {{name: twin-c}}
spec:
  switches: [{{name: web, cidr: 10.0.0.0/24}}]
  routers:
    - {{name: r1, ports: [{{switch: web, ip: 10.0.0.1}}], external: {{ip: {router_ip}}}}}
  ports: [{{name: c1, switch: web, ip: 10.0.0.11, host: hv2}}]
  nat: [{{type: floating-ip, port: c1, externalIp: {fip}}}]
"""


FREE = {"router": "203.0.113.40", "fip": "203.0.113.41"}


def test_a_third_tenant_cannot_claim_a_twins_external_address(phase, lab):
    """Last in each phase: should a claim be accepted, the lab is healed before the next."""
    cases = []
    for t in phase.live:
        r, f = EXT[t]["router"], EXT[t]["fip"]
        cases += [(t, r, "as its router's external ip", claim_doc(r, FREE["fip"])),
                  (t, f, "as its floating IP", claim_doc(FREE["router"], f)),
                  (t, r, "(a router's address) as its floating IP", claim_doc(FREE["router"], r))]
    accepted, wrong = [], []
    try:
        for owner, addr, how, doc in cases:
            p = apply_yaml(lab, doc, op="create", check=False)
            text = p.stderr + p.stdout
            if p.returncode == 0:
                accepted.append(f"twin-c claiming {owner}'s {addr} {how} was ACCEPTED: {text.strip()!r}")
                nvctl(lab, "tenant", "delete", "twin-c")
            elif phase.name == "2-b-created":
                print(f"\nrefused: twin-c claiming {owner}'s {addr} {how}: {text.strip()!r}")
            if p.returncode != 0 and (addr not in text or owner not in text):
                wrong.append(f"twin-c claiming {owner}'s {addr} {how}: refused, but the error must name {addr} "
                             f"and {owner}: {text.strip()!r}")
        # control: addresses nobody owns (any more) are free
        for t in phase.absent:
            p = apply_yaml(lab, claim_doc(EXT[t]["router"], EXT[t]["fip"]), op="create", check=False)
            if p.returncode != 0:
                wrong.append(f"{t} does not exist: twin-c must get its addresses: {(p.stderr + p.stdout).strip()!r}")
            else:
                nvctl(lab, "tenant", "delete", "twin-c")
        names = [r["name"] for r in nvctl_json(lab, "tenant", "list")]
    finally:
        if "twin-c" in [r["name"] for r in nvctl_json(lab, "tenant", "list")]:
            nvctl(lab, "tenant", "delete", "twin-c", check=False)
        if accepted:
            # a claimed address's flows may have replaced the owner's on the gateway host and
            # left with twin-c: a reconnect resyncs from the switch so the next phase starts clean
            lab.stop_controller()
            lab.start_controller()
            lab.wait_synced(30)
    assert sorted(names) == phase.live, f"only the twins remain: {names}"
    assert not accepted and not wrong, accepted + wrong
