"""Load-balancer health checks on real OVS: probes from each backend's host, a backend
that stops listening taken out of the select group (established connections to the
others untouched), put back when it listens again; twins keep their own health; with
every backend down a new connection is reset at once."""
import json
import os
import subprocess
import sys
import time
from collections import Counter

import pytest

from scenarios.netutil import TcpServer, tcp_connect, tcp_whois, wait_listening
from tests.integration.helpers import ROOT, apply_yaml, nvctl, nvctl_json

CHECK = "{interval: 0.5, timeout: 0.4, successCount: 2, failureCount: 2}"
LB = ("  loadBalancers:\n    - {name: web-lb, vip: 10.0.0.100, protocol: tcp, port: 80, backends: [%s],\n"
      "       healthCheck: " + CHECK + "}\n")
BACKENDS = ["web2", "db1", "db2"]
SHOP = open(os.path.join(ROOT, "examples", "shop.yaml")).read()
TWINS = ("shop", "twin")  # the same spec but the name: the same CAs, MACs, VIP, port names, hosts


def spec(name):
    text = SHOP.replace("  ports:\n", LB % ", ".join(f"{b}:8080" for b in BACKENDS) + "  ports:\n", 1)
    return text.replace("metadata: {name: shop}", f"metadata: {{name: {name}}}")


# one connection held open: the backend's greeting first, then an echo per line sent
CLIENT = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.settimeout(5)
f = s.makefile("rb")
print(f.readline().decode().strip(), flush=True)
for line in sys.stdin:
    s.sendall(line.encode())
    print(f.readline().decode().strip(), flush=True)
"""


class Held:
    def __init__(self, ns, ip, port):
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, ip, str(port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.backend = self.proc.stdout.readline().strip()

    def echo(self, word) -> bool:
        try:
            self.proc.stdin.write(word + "\n")
            self.proc.stdin.flush()
            return self.proc.stdout.readline().strip() == word
        except (BrokenPipeError, OSError):
            return False

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=5)


@pytest.fixture(scope="module")
def twins(lab):
    servers = {}
    try:
        for name in TWINS:
            apply_yaml(lab, spec(name), op="create")
        ports = {name: {p["name"]: p for p in nvctl_json(lab, "tenant", "show", name)["ports"]} for name in TWINS}
        for name in TWINS:
            for b in BACKENDS:
                servers[(name, b)] = TcpServer(ports[name][b]["namespace"], 8080, name=b)
        yield ports, servers
    finally:
        for s in servers.values():
            s.stop()


def health(lab, tenant, in_service=False) -> dict:
    """{backend: its health state}; with `in_service`, {backend: (state, in the group)}."""
    from controller.client.api import call
    (lb,) = call(lab.api_path, "stats", tenant=tenant)["loadBalancers"]
    return {b["name"]: ((b["health"] or {}).get("state"), b["inService"]) if in_service
            else (b["health"] or {}).get("state") for b in lb["backends"]}


def wait_health(lab, tenant, want: dict, timeout=20.0) -> float:
    """Seconds until the tenant's backends are in the states `want` names, and the
    select group follows (a backend up is in it, one down is not): the probes decide a
    state first, the change that follows it is made on the controller's next tick."""
    t0 = time.monotonic()
    while True:
        got = health(lab, tenant, in_service=True)
        if all(got.get(b) == (s, s != "down") for b, s in want.items()):
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{tenant}: backends {got}, waited {timeout:g} s for {want}")
        time.sleep(0.1)


def restart(servers, ports, tenant, b):
    ns = ports[tenant][b]["namespace"]
    servers[(tenant, b)] = TcpServer(ns, 8080, name=b)
    wait_listening(ns, 8080)


def test_every_backend_is_found_up(lab, twins):
    for name in TWINS:
        wait_health(lab, name, {b: "up" for b in BACKENDS})
    text = nvctl(lab, "stats", "shop").stdout
    assert "HEALTH" in text and "up since" in text, text


def test_a_backend_that_stops_listening_is_taken_out_and_put_back(lab, twins):
    ports, servers = twins
    client = ports["shop"]["web1"]["namespace"]
    held = Held(client, "10.0.0.100", 80)  # established before the failure, to some backend
    try:
        assert held.backend in BACKENDS, held.backend
        victim = next(b for b in ("db2", "db1") if b != held.backend)
        servers[("shop", victim)].stop()
        took = wait_health(lab, "shop", {victim: "down"}, timeout=15)
        print(f"\n{victim} stopped listening: found down in {took:.2f} s (2 failures at 0.5 s)")
        # the twin's backend of the same name and address is its own: still up
        assert health(lab, "twin")[victim] == "up"
        # no new connection goes to it; the established one to another backend carries on
        hits = Counter(tcp_whois(client, "10.0.0.100", 80, count=24))
        print(f"24 connections with {victim} down: {dict(hits)}")
        assert None not in hits and victim not in hits, hits
        assert set(hits) == set(BACKENDS) - {victim}, hits
        assert held.echo("still-there"), "the established connection broke"
        twin_hits = Counter(tcp_whois(ports["twin"]["web1"]["namespace"], "10.0.0.100", 80, count=24))
        assert set(twin_hits) == set(BACKENDS), twin_hits  # twin's traffic still reaches its own
        assert health(lab, "twin")[victim] == "up"
        r = nvctl_json(lab, "stats", "shop")
        (b,) = [x for x in r["loadBalancers"][0]["backends"] if x["name"] == victim]
        assert b["health"]["state"] == "down" and b["health"]["since"] and not b["inService"], b
        assert "down since" in nvctl(lab, "stats", "shop").stdout
        # trace takes a new connection to a backend in service, and says which is out
        from controller.client.api import call
        r = call(lab.api_path, "trace", tenant="shop", port="web1", packet="tcp,nw_dst=10.0.0.100,tp_dst=80")
        assert r["delivered"] and r["delivered"][0] != f"shop/{victim}", r["delivered"]
        assert f"{victim}:8080 down" in json.dumps(r["hops"]), "trace does not say the backend is out"
        # and verify proves the tenants isolated as ever
        proof = call(lab.api_path, "verify", timeout=300)
        assert proof["ok"], proof["text"]
        # it listens again: back after two successes
        restart(servers, ports, "shop", victim)
        took = wait_health(lab, "shop", {victim: "up"}, timeout=15)
        print(f"{victim} listens again: back up in {took:.2f} s")
        hits = Counter(tcp_whois(client, "10.0.0.100", 80, count=30))
        assert victim in hits and None not in hits, hits
        assert held.echo("and-still"), "the established connection broke"
    finally:
        held.close()


def test_a_tenant_s_health_changes_are_not_its_spec(lab, twins):
    before = nvctl_json(lab, "tenant", "show", "shop")
    assert "down" not in str(before.get("spec", {}).get("loadBalancers", ""))
    assert all(h["in_sync"] for h in nvctl_json(lab, "hosts"))


def test_every_backend_down_a_new_connection_is_reset(lab, twins):
    ports, servers = twins
    client = ports["shop"]["web1"]["namespace"]
    for b in BACKENDS:
        servers[("shop", b)].stop()
    try:
        wait_health(lab, "shop", {b: "down" for b in BACKENDS}, timeout=15)
        t0 = time.monotonic()
        got = tcp_connect(client, "10.0.0.100", 80, timeout=5)
        took = time.monotonic() - t0
        print(f"\nevery backend down: connect -> {got} in {took:.2f} s")
        assert got == "refused", got  # a reset from the controller, not a black hole
        from controller.client.api import call
        proof = call(lab.api_path, "verify", timeout=300)
        assert proof["ok"], proof["text"]
        assert health(lab, "twin") == {b: "up" for b in BACKENDS}
        assert tcp_whois(ports["twin"]["web1"]["namespace"], "10.0.0.100", 80, count=1)[0] in BACKENDS
    finally:
        for b in BACKENDS:
            if servers[("shop", b)].proc.poll() is not None:
                restart(servers, ports, "shop", b)
    wait_health(lab, "shop", {b: "up" for b in BACKENDS}, timeout=15)
    hits = Counter(tcp_whois(client, "10.0.0.100", 80, count=24))
    assert set(hits) == set(BACKENDS), hits
