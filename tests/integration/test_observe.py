"""Counters by intent, ACL logs, drops and metrics, on real OVS with real packets.

Two twin tenants (blue, red) with the same spec on the same two hosts: the same CAs,
MACs, rule names. Known traffic goes through blue; `nvctl stats` must count exactly
it on the right rules and ports, and red must count nothing of it.
"""
import json
import os
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from controller.client.api import call
from controller.layers.acl import ACL_LOG_BURST, ACL_LOG_PPS
from scenarios.netutil import in_ns
from tests.integration.conftest import running_lab
from tests.integration.helpers import apply_yaml, nvctl, nvctl_json, ping_many, send_frames

pytestmark = pytest.mark.integration

SPEC = """apiVersion: nvctl/v1
kind: Tenant
metadata: {name: NAME}
spec:
  switches:
    - {name: web, cidr: 10.0.0.0/24}
  acls:
    - {name: vm3-no-ping, priority: 200, direction: to-port, ports: [vm2], from: 10.0.0.13/32, protocol: icmp,
       action: deny, log: true}
    - {name: udp-9999, priority: 150, direction: to-port, ports: [vm2], protocol: udp, dstPorts: [9999],
       action: deny, log: true}
    - {name: ping-vm2, priority: 100, direction: to-port, ports: [vm2], protocol: icmp, action: allow, LOG}
  ports:
    - {name: vm1, switch: web, ip: 10.0.0.11, mac: "02:00:0a:00:00:0b", host: hv1}
    - {name: vm2, switch: web, ip: 10.0.0.12, mac: "02:00:0a:00:00:0c", host: hv2}
    - {name: vm3, switch: web, ip: 10.0.0.13, mac: "02:00:0a:00:00:0d", host: hv1}
"""


def spec(name, log=True, vm2_host="hv2"):
    out = SPEC.replace("NAME", name).replace("LOG", "log: true" if log else "log: false")
    return out.replace('mac: "02:00:0a:00:00:0c", host: hv2', f'mac: "02:00:0a:00:00:0c", host: {vm2_host}')


@pytest.fixture(scope="module")
def lab():
    yield from running_lab(2)


@pytest.fixture(scope="module")
def twins(lab):
    for t in ("blue", "red"):
        apply_yaml(lab, spec(t), op="create")
    ports = {t: {p["name"]: p for p in nvctl_json(lab, "tenant", "show", t)["ports"]} for t in ("blue", "red")}
    # resolve neighbours first, so the counted traffic below is only the probes
    ping_many([(ports[t]["vm1"]["namespace"], "10.0.0.12", t) for t in ports], count=1)
    ping_many([(ports[t]["vm3"]["namespace"], "10.0.0.12", t + "3") for t in ports], count=1)
    return ports


def stats(lab, tenant):
    return call(lab.api_path, "stats", tenant=tenant)


def flat(r):
    """Every counter of a report: {(kind, name, counter): value}."""
    out = {}
    for p in r["ports"]:
        for d in ("sent", "received"):
            out[("port", p["name"], d)] = p[d]["packets"]
        for reason, c in p["dropped"].items():
            out[("port", p["name"], "drop " + reason)] = c["packets"]
    for a in r["acls"]:
        out[("acl", a["name"], "packets")] = a["packets"]
    return out


def settle(lab, tenant, want: dict, before: dict, timeout=8.0):
    """The tenant's counters once OVS has credited its flows (revalidators push the
    datapath's counts to the OpenFlow rules about once a second): wait until every
    counter in `want` has at least its expected increase, then one more second, so an
    excess would show too."""
    deadline = time.monotonic() + timeout
    while True:
        now = flat(stats(lab, tenant))
        if all(now[k] - before[k] >= v for k, v in want.items()) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    time.sleep(1.2)
    return flat(stats(lab, tenant))


def delta(now, before):
    return {k: now[k] - before[k] for k in now}


def test_stats_count_exactly_the_known_traffic_on_its_rules_and_ports(lab, twins):
    blue, red0 = flat(stats(lab, "blue")), flat(stats(lab, "red"))
    res = ping_many([(twins["blue"]["vm1"]["namespace"], "10.0.0.12", "allowed"),
                     (twins["blue"]["vm3"]["namespace"], "10.0.0.12", "denied")], count=100, interval=0.01)
    assert res["allowed"] == (100, 100) and res["denied"][0] == 0, res
    now = settle(lab, "blue", {("acl", "ping-vm2", "packets"): 100, ("acl", "vm3-no-ping", "packets"): 100}, blue)
    d = delta(now, blue)
    assert d[("acl", "ping-vm2", "packets")] == 100, d  # 1 new + 99 of the same connection
    assert d[("acl", "vm3-no-ping", "packets")] == 100, d
    assert d[("acl", "udp-9999", "packets")] == 0, d
    assert d[("port", "vm2", "received")] == 100, d  # vm1's requests; vm3's never reach it
    assert d[("port", "vm2", "drop acl")] == 100, d
    assert d[("port", "vm1", "received")] == 100, d  # the replies
    assert 100 <= d[("port", "vm1", "sent")] <= 102, d  # the requests (and an ARP refresh at most)
    assert d[("port", "vm2", "sent")] >= 100 and d[("port", "vm1", "drop acl")] == 0, d
    assert d[("port", "vm1", "drop portSecurity")] == 0, d
    # the twin saw none of it
    red = delta(flat(stats(lab, "red")), red0)
    assert not any(red.values()), {k: v for k, v in red.items() if v}


def test_spoofed_frames_are_port_security_drops_of_their_port(lab, twins):
    ns = twins["blue"]["vm1"]["namespace"]
    before, red0 = flat(stats(lab, "blue")), flat(stats(lab, "red"))
    send_frames(ns, [{"kind": "icmp", "src_mac": "02:00:0a:00:00:0b", "dst_mac": "02:00:0a:00:00:0c",
                      "src_ip": "10.0.0.99", "dst_ip": "10.0.0.12", "tag": "spoof", "count": 7}])
    now = settle(lab, "blue", {("port", "vm1", "drop portSecurity"): 7}, before)
    d = delta(now, before)
    assert d[("port", "vm1", "drop portSecurity")] == 7, d
    assert d[("port", "vm2", "received")] == 0, d
    assert not any(delta(flat(stats(lab, "red")), red0).values())
    r = nvctl_json(lab, "drops", "blue")
    reasons = {(x["reason"], x["name"]) for x in r["drops"]}
    assert ("port security", "vm1") in reasons and ("acl", "vm3-no-ping") in reasons, r["drops"]
    text = nvctl(lab, "drops", "blue").stdout
    assert "port security" in text and "vm3-no-ping" in text, text


def _logs(lab, tenant, after=0):
    return call(lab.api_path, "logs", tenant=tenant, after=after, limit=0)


def test_a_logged_rule_writes_one_line_per_connection_attempt(lab, twins):
    b0, r0 = _logs(lab, "blue")["last"], _logs(lab, "red")["last"]
    for _ in range(5):  # five connections (each ping process has its own ICMP id)
        assert ping_many([(twins["blue"]["vm1"]["namespace"], "10.0.0.12", "a")], count=3, interval=0.05)["a"][0] == 3
    ping_many([(twins["blue"]["vm3"]["namespace"], "10.0.0.12", "d")], count=10, interval=0.1)
    time.sleep(0.5)
    got = _logs(lab, "blue", b0)["entries"]
    allowed = [e for e in got if e["rule"] == "ping-vm2"]
    denied = [e for e in got if e["rule"] == "vm3-no-ping"]
    assert len(allowed) == 5, allowed  # one per connection, not one per packet
    assert len(denied) == 10, denied  # a denial is decided for every packet
    e = allowed[0]
    assert (e["tenant"], e["verdict"], e["proto"], e["src"], e["dst"], e["host"], e["port"], e["direction"]) == \
        ("blue", "allow", "icmp", "10.0.0.11", "10.0.0.12", "hv2", "vm2", "to-port"), e
    assert e["sport"] == 8 and e["index"] == 2, e  # echo request; the rule's index in spec.acls
    assert all(x["verdict"] == "deny" and x["src"] == "10.0.0.13" for x in denied)
    assert _logs(lab, "red", r0)["entries"] == []  # the twin logged nothing
    lines = nvctl(lab, "logs", "blue", "--last", "3").stdout.strip().split("\n")
    assert len(lines) == 3 and all(" blue vm3-no-ping (to-port, port vm2) DENY  icmp 10.0.0.13 -> 10.0.0.12"
                                   in x for x in lines), lines
    on_disk = [json.loads(x) for x in open(f"{lab.dir}/acl.log")]
    assert {x["seq"] for x in got} <= {x["seq"] for x in on_disk}


FLOOD = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
n, t0 = int(sys.argv[1]), time.monotonic()
for i in range(n):
    s.sendto(b"nvctl-flood", ("10.0.0.12", 9999))
    if i % 100 == 99:
        time.sleep(0.02)
print(time.monotonic() - t0)
"""


def test_a_flood_of_logged_denials_is_capped_at_the_meter_rate(lab, twins):
    before = flat(stats(lab, "blue"))
    b0, r0 = _logs(lab, "blue")["last"], _logs(lab, "red")["last"]
    n = 3000
    t0 = time.monotonic()
    p = in_ns(twins["blue"]["vm1"]["namespace"], sys.executable, "-c", FLOOD, str(n), check=True)
    time.sleep(1.0)
    elapsed = time.monotonic() - t0
    got = [e for e in _logs(lab, "blue", b0)["entries"] if e["rule"] == "udp-9999"]
    cap = ACL_LOG_PPS * elapsed + ACL_LOG_BURST
    assert len(got) <= cap, (len(got), cap, p.stdout)
    assert len(got) >= ACL_LOG_BURST // 2, len(got)  # and the logging did work
    assert all(e["dport"] == 9999 and e["verdict"] == "deny" for e in got)
    # every packet was still denied and counted: the meter caps the copies, not the rule
    now = settle(lab, "blue", {("acl", "udp-9999", "packets"): n * 9 // 10}, before)
    assert n * 9 // 10 <= now[("acl", "udp-9999", "packets")] - before[("acl", "udp-9999", "packets")] <= n
    assert _logs(lab, "red", r0)["entries"] == []


def test_metrics_parse_and_carry_the_counters(lab, twins):
    r = stats(lab, "blue")
    text = call(lab.api_path, "metrics")["text"]
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    assert samples[("nvctl_hosts_connected", ())] == 2
    assert samples[("nvctl_hosts_in_sync", ())] == 2
    red = stats(lab, "red")
    got = {}
    for t, rep in (("blue", r), ("red", red)):
        key = ("nvctl_acl_packets_total", tuple(sorted({"tenant": t, "rule": "ping-vm2", "index": "2",
                                                        "action": "allow"}.items())))
        got[t] = samples[key]
        assert got[t] == next(a["packets"] for a in rep["acls"] if a["name"] == "ping-vm2"), (t, got)
    assert got["blue"] > 100 and got["red"] == 1, got  # red: only its warm-up ping; each twin its own series
    sent = [k for k in samples if k[0] == "nvctl_port_packets_total" and ("tenant", "blue") in k[1]]
    assert len(sent) == 6  # 3 ports x sent/received
    assert any(k[0] == "nvctl_api_request_seconds_count" and ("op", "stats") in k[1] for k in samples)
    assert any(k[0] == "nvctl_reconcile_seconds_count" for k in samples)
    assert samples[("nvctl_acl_log_lines_total", (("tenant", "blue"),))] > 0


def test_counters_survive_a_change_in_place_and_a_migration(lab, twins):
    before = stats(lab, "blue")
    rule = next(a for a in before["acls"] if a["name"] == "ping-vm2")
    apply_yaml(lab, spec("blue", log=False))  # the rule's flows change actions, not identity
    after = stats(lab, "blue")
    assert next(a for a in after["acls"] if a["name"] == "ping-vm2")["packets"] >= rule["packets"] > 0
    got = nvctl(lab, "port", "migrate", "blue/vm2", "--to", "hv1")
    assert got.returncode == 0
    moved = stats(lab, "blue")
    vm2 = next(p for p in moved["ports"] if p["name"] == "vm2")
    was = next(p for p in before["ports"] if p["name"] == "vm2")
    assert vm2["host"] == "hv1"
    assert vm2["received"]["packets"] >= was["received"]["packets"] > 0, (vm2, was)
    assert next(a for a in moved["acls"] if a["name"] == "ping-vm2")["packets"] >= rule["packets"]
    apply_yaml(lab, spec("blue", vm2_host="hv1"))
    out = nvctl(lab, "stats", "blue").stdout
    assert "vm2" in out and "ping-vm2" in out and "# acl rules" in out, out


def test_watch_refreshes_with_rates_on_a_terminal_and_prints_json_lines_on_a_pipe(lab, twins):
    import signal
    import subprocess
    from tests.integration.helpers import ROOT, ctrl_c_works
    cmd = [sys.executable, "-m", "controller.client.cli", "--state-dir", lab.dir, "stats", "blue", "--watch", "0.5"]
    p = subprocess.Popen(cmd + ["--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                         preexec_fn=ctrl_c_works)
    try:
        time.sleep(2.5)
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err  # Ctrl-C ends a watch cleanly
    docs = [json.loads(x) for x in out.strip().split("\n")]
    assert len(docs) >= 3 and all(d["tenant"] == "blue" for d in docs), (out, err)
    assert all(b["time"] > a["time"] for a, b in zip(docs, docs[1:]))
    # on a terminal (script gives it one): drawn in place, with rates per second
    p = subprocess.Popen(["script", "-qfec", " ".join(cmd), "/dev/null"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True, preexec_fn=ctrl_c_works)
    try:
        time.sleep(1.0)
        ping_many([(twins["blue"]["vm1"]["namespace"], "10.0.0.12", "w")], count=20, interval=0.05)
        time.sleep(2.0)
    finally:
        os.killpg(p.pid, signal.SIGINT)
        out, _ = p.communicate(timeout=20)
    assert "every 0.5s, Ctrl-C to stop" in out, out[-2000:]
    assert "\x1b[" in out and "/s)" in out, out[-2000:]  # redrawn with escapes; a rate beside a count


ARP_FLOOD = """
import sys
from scapy.all import ARP, Ether, sendp
mac, ip, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
sendp(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=mac, psrc=ip, pdst="10.0.0.250"),
      iface="eth0", count=n, inter=0, verbose=False)
"""
UDP_BURST = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[1])):
    s.sendto(b"r" * 1400, ("10.0.0.11", 7777))
"""


def test_meter_drops_are_the_ports_rate_limit_and_flood_limit_drops(lab, twins):
    limited = spec("blue", vm2_host="hv1").replace(
        'mac: "02:00:0a:00:00:0d", host: hv1}', 'mac: "02:00:0a:00:00:0d", host: hv1, rateLimitMbps: 1, bumLimitPps: 50}')
    apply_yaml(lab, limited)
    try:
        ns = twins["blue"]["vm3"]["namespace"]
        before, red0 = stats(lab, "blue"), flat(stats(lab, "red"))
        in_ns(ns, sys.executable, "-c", ARP_FLOOD, "02:00:0a:00:00:0d", "10.0.0.13", "600", check=True, timeout=120)
        time.sleep(1.5)
        mid = stats(lab, "blue")
        # a flood is not delivered back to its sender (nor counted as its own): vm1, on
        # the same host, received what the meter let through; vm3 nothing
        recv = {p["name"]: p["received"]["packets"] for p in mid["ports"]}
        was = {p["name"]: p["received"]["packets"] for p in before["ports"]}
        assert recv["vm3"] == was["vm3"] and recv["vm1"] > was["vm1"], (was, recv)
        # vm1's address resolved first: packets sent while it is not are held (and past
        # the kernel's unresolved queue, ~150 of them, dropped) before they reach the switch
        in_ns(ns, "ping", "-c", "1", "-W", "2", "10.0.0.11", check=True)
        in_ns(ns, sys.executable, "-c", UDP_BURST, "400", check=True)
        time.sleep(2.0)
        after = stats(lab, "blue")
        b = next(p for p in before["ports"] if p["name"] == "vm3")["dropped"]
        a = next(p for p in after["ports"] if p["name"] == "vm3")["dropped"]
        bum = a["bum"]["packets"] - b["bum"]["packets"]
        rate = a["rateLimit"]["packets"] - b["rateLimit"]["packets"]
        # 600 broadcasts in well under a few seconds against 50/s (burst 10); 400 x 1.4 kB
        # against 1 Mbit/s (a 0.5 s burst, ~45 packets): most of each dropped, by its meter
        assert 300 <= bum < 600, (bum, a, b)
        assert 200 <= rate < 400, (rate, a, b)
        assert a["portSecurity"] == b["portSecurity"] and a["acl"] == b["acl"]
        others = [p for p in after["ports"] if p["name"] != "vm3"]
        assert all(p["dropped"]["bum"]["packets"] == 0 and p["dropped"]["rateLimit"]["packets"] == 0 for p in others)
        red = delta(flat(stats(lab, "red")), red0)
        assert red[("port", "vm3", "drop bum")] == red[("port", "vm3", "drop rateLimit")] == 0, red
    finally:
        apply_yaml(lab, spec("blue", vm2_host="hv1"))
