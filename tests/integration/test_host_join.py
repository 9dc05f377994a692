"""`nvctl host invite` + `nvctl host join`: a bare lab namespace (OVS running, nothing
configured) joins a running controller over TLS, exactly as a real machine would, and
carries tenant traffic. Hosts without an invitation or with a foreign certificate are
refused, on the join API and on OpenFlow."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

from controller.compile.compiler import VXLAN_OVERHEAD
from scenarios.lab import HostPlan
from tests.integration.conftest import fresh_compile_changes, running_lab
from tests.integration.helpers import ROOT, apply_yaml, in_ns, nvctl, nvctl_json, ping_many

TENANT = """
apiVersion: nvctl/v1
kind: Tenant
metadata: {name: j}
spec:
  switches: [{name: s, cidr: 10.9.0.0/24}]
  ports:
    - {name: a, switch: s, ip: 10.9.0.11, host: hv1}
    - {name: b, switch: s, ip: 10.9.0.12, host: hv2}
    - {name: c, switch: s, ip: 10.9.0.13, host: hv3}
"""


@pytest.fixture(scope="module")
def jlab():
    yield from running_lab(2)


def join_in(lb, index: int, bundle: str, *extra, check=True):
    """Run `nvctl host join` inside host namespace hv{index}, as its own root would."""
    name = f"hv{index}"
    p = subprocess.run(["ip", "netns", "exec", lb.host_ns(name), sys.executable, "-m", "controller.client.cli",
                        "host", "join", bundle, "--uplink", "ul0",
                        "--db", f"unix:{lb.host_dir(name)}/db.sock",
                        "--pki-dir", os.path.join(lb.host_dir(name), "pki"), "--timeout", "20", *extra],
                       capture_output=True, text=True, timeout=90, cwd=ROOT)
    if check and p.returncode != 0:
        raise AssertionError(f"join failed ({p.returncode}): {p.stderr}{p.stdout}")
    return p


def vsctl(lb, name: str, *args) -> str:
    return subprocess.run(["ovs-vsctl", f"--db=unix:{lb.host_dir(name)}/db.sock", *args],
                          capture_output=True, text=True, timeout=30, check=True).stdout.strip()


def invite(lb, name: str, pa: str, *extra) -> str:
    out = os.path.join(lb.dir, f"{name}-join.json")
    nvctl(lb, "host", "invite", name, "--pa", pa, "--out", out, "--lab-netns", lb.host_ns(name), *extra)
    return out


@pytest.fixture(scope="module")
def joined(jlab):
    lb = jlab
    lb.add_bare_host(3)
    bundle = invite(lb, "hv3", HostPlan(3).pa)
    assert oct(os.stat(bundle).st_mode & 0o777) == "0o600"
    p = join_in(lb, 3, bundle)
    lb.warm_underlay([HostPlan(i) for i in (1, 2, 3)])
    return lb, p.stdout


def test_join_registers_host_over_tls_and_installs_flows(joined):
    lb, out = joined
    assert "OpenFlow connected" in out
    hosts = {h["name"]: h for h in nvctl_json(lb, "hosts")}
    assert hosts["hv3"]["connected"] and hosts["hv3"]["in_sync"]
    assert hosts["hv3"]["flows_desired"] > 0
    # the OpenFlow channel is TLS, and OVS reports it connected
    assert vsctl(lb, "hv3", "get-controller", "br-int") == "ssl:198.51.100.1:6654"
    deadline = time.monotonic() + 15  # ovs-vswitchd refreshes the column every few seconds
    while vsctl(lb, "hv3", "get", "controller", "br-int", "is_connected") != "true":
        assert time.monotonic() < deadline, "OVS never reported its TLS controller connection"
        time.sleep(0.5)
    # OVSDB over TLS only: a client without a certificate gets nothing
    plain = subprocess.run(["ip", "netns", "exec", lb.ctl_ns, "ovs-vsctl", "--timeout=3",
                            f"--db=tcp:{HostPlan(3).mgmt_ip}:6640", "show"],
                           capture_output=True, text=True, timeout=30)
    assert plain.returncode != 0


def test_joined_host_carries_tenant_traffic(joined):
    lb, _ = joined
    apply_yaml(lb, TENANT, "create")
    # the workload on hv3 was plugged by the controller over OVSDB/TLS
    ports = vsctl(lb, "hv3", "--columns=name,external_ids", "find", "interface", "external_ids:iface-id=j/c")
    assert "j/c" in ports
    res = ping_many([(f"{lb.prefix}j.a", "10.9.0.13", "a->c"), (f"{lb.prefix}j.a", "10.9.0.12", "a->b"),
                     (f"{lb.prefix}j.c", "10.9.0.11", "c->a")], count=3)
    assert all(r == (3, 3) for r in res.values()), res
    # the join read hv3's uplink MTU, and its workload got what that underlay carries
    hv3 = next(h for h in nvctl_json(lb, "hosts") if h["name"] == "hv3")
    assert (hv3["uplink_mtu"], hv3["overlay_mtu"]) == (lb.underlay_mtu, lb.underlay_mtu - VXLAN_OVERHEAD), hv3
    assert f" mtu {lb.underlay_mtu - VXLAN_OVERHEAD} " in in_ns(f"{lb.prefix}j.c", "ip", "-o", "link", "show", "eth0",
                                                  check=True).stdout


def test_controller_restart_keeps_joined_host_with_no_changes(joined):
    lb, _ = joined
    assert fresh_compile_changes(lb) == []
    hosts = {h["name"]: h for h in nvctl_json(lb, "hosts")}
    assert hosts["hv3"]["connected"] and hosts["hv3"]["last_sync_flow_mods"] == 0


def test_uninvited_and_foreign_hosts_are_refused(joined):
    lb, _ = joined
    lb.add_bare_host(4)
    pa4 = HostPlan(4).pa
    good = json.load(open(invite(lb, "hv4", pa4)))

    def bundle(**change) -> str:
        fd, path = tempfile.mkstemp(suffix=".json", dir=lb.dir)
        with os.fdopen(fd, "w") as f:
            json.dump({**good, **change}, f)
        return path

    # 1. hv3's certificate with hv4's token: the certificate names another host. First,
    #    so hv4's OVS has never held a good TLS session (a new certificate does not end one)
    hv3 = json.load(open(os.path.join(lb.dir, "hv3-join.json")))
    p = join_in(lb, 4, bundle(key=hv3["key"], cert=hv3["cert"]), check=False)
    assert p.returncode == 1 and "certificate for 'hv3'" in p.stderr, p.stderr
    # hv4's OVS now tries OpenFlow with hv3's certificate and hv4's datapath id: turned away
    deadline = time.monotonic() + 20
    while True:
        with open(os.path.join(lb.dir, "controller.log")) as f:
            if "refused: certificate 'hv3' does not belong to its host" in f.read():
                break
        assert time.monotonic() < deadline, "the controller never refused hv3's certificate for hv4"
        time.sleep(0.5)
    # 2. a certificate from a CA the controller never saw: TLS itself refuses
    rogue = os.path.join(lb.dir, "rogue")
    os.makedirs(rogue)
    for args in (["init"], ["req+sign", "hv4", "switch"]):
        subprocess.run(["ovs-pki", f"--dir={rogue}/ca", f"--log={rogue}/log", "--force", *args],
                       cwd=rogue, check=True, capture_output=True, timeout=60)
    key, cert = (open(os.path.join(rogue, f"hv4-{w}.pem")).read() for w in ("privkey", "cert"))
    p = join_in(lb, 4, bundle(key=key, cert=cert), check=False)
    assert p.returncode == 1 and "refused" in p.stderr, p.stderr
    with open(os.path.join(lb.dir, "controller.log")) as f:
        assert f"join API: TLS refused {HostPlan(4).mgmt_ip}" in f.read()
    # 3. the right certificate, but a token no invitation has
    p = join_in(lb, 4, bundle(token="0" * 32), check=False)
    assert p.returncode == 1 and "no invitation matches" in p.stderr, p.stderr
    # none of this gave hv4 a flow or a place among the hosts
    time.sleep(2)
    hosts = {h["name"] for h in nvctl_json(lb, "hosts")}
    assert "hv4" not in hosts
    flows = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", "br-int"], env=lb.ovs_env("hv4"),
                           capture_output=True, text=True, timeout=30, check=True).stdout
    assert "cookie=" not in flows
    # 4. the genuine bundle still works afterwards
    p = join_in(lb, 4, bundle())
    assert "OpenFlow connected" in p.stdout
    assert {h["name"] for h in nvctl_json(lb, "hosts")} >= {"hv1", "hv2", "hv3", "hv4"}


def test_invite_refuses_bad_input(jlab):
    p = nvctl(jlab, "host", "invite", "Bad_Name", "--pa", "192.0.2.50", check=False)
    assert p.returncode == 1 and "host name 'Bad_Name'" in p.stderr
    p = nvctl(jlab, "host", "invite", "hv9", "--pa", "192.0.2.11", check=False)
    assert p.returncode == 1 and "already used by hv1" in p.stderr
    p = nvctl(jlab, "host", "invite", "hv9", "--pa", "not-an-ip", check=False)
    assert p.returncode == 1 and "--pa" in p.stderr


FIP_TENANT = """
apiVersion: nvctl/v1
kind: Tenant
metadata: {name: jf}
spec:
  switches: [{name: s, cidr: 10.8.0.0/24}]
  routers:
    - name: r
      ports: [{switch: s, ip: 10.8.0.1}]
      external: {ip: 203.0.113.40, gateways: [hv1]}
  nat:
    - {type: floating-ip, port: d, externalIp: 203.0.113.41}
  ports:
    - {name: d, switch: s, ip: 10.8.0.15, host: hv5}
"""
TAG = "6e76706e65747735"  # the probes' payload: captures count only them


def test_a_host_joins_with_its_provider_network_and_carries_a_floating_ip(joined):
    from scenarios.netutil import Capture, tagged
    lb, _ = joined
    lb.add_bare_host(5, provider=True)
    bundle = invite(lb, "hv5", HostPlan(5).pa)
    p = join_in(lb, 5, bundle, "--provider-network", "nope=ext0", check=False)
    assert p.returncode == 1 and "no host is on provider network 'nope'" in p.stderr, p.stderr
    p = join_in(lb, 5, bundle, "--provider-network", "external=ext0@203.0.113.101", check=False)
    assert p.returncode == 1 and "external.address 203.0.113.101 is host hv1's" in p.stderr, p.stderr
    # its own address on the provider network: BGP's next hop for what it carries
    p = join_in(lb, 5, bundle, "--provider-network", "external=ext0@203.0.113.105")
    assert "provider network external on ext0" in p.stdout, p.stdout
    lb.warm_underlay([HostPlan(i) for i in (1, 2, 5)])
    # every host watches hv5, now a possible gateway, with BFD; hv5 watches hv1 and hv2
    deadline = time.monotonic() + 30
    while True:
        hosts = {h["name"]: h for h in nvctl_json(lb, "hosts")}
        up = {n: h["bfd"] for n, h in hosts.items()}
        if all(up[n].get("hv5") for n in ("hv1", "hv2", "hv3")) and up["hv5"] == {"hv1": True, "hv2": True}:
            break
        assert time.monotonic() < deadline, up
        time.sleep(0.5)
    assert hosts["hv5"]["provider_network"] == "external" and hosts["hv3"]["provider_network"] is None
    assert hosts["hv5"]["provider_address"] == "203.0.113.105", hosts["hv5"]
    # only hv5 answers ARP for it, with its own MAC: the outside's bridge learned it on hv5's link
    in_ns(lb.ext_ns, "ping", "-c", "1", "-W", "1", "203.0.113.105")
    neigh = in_ns(lb.ext_ns, "ip", "neigh", "show", "203.0.113.105").stdout
    assert "lladdr 02:04:cb:00:71:69" in neigh, neigh
    fdb = in_ns(lb.ext_ns, "bridge", "fdb", "show", "br", "br-ext").stdout
    assert [ln.split()[2] for ln in fdb.splitlines() if ln.startswith("02:04:cb:00:71:69 ")] == ["hv5"], fdb
    apply_yaml(lb, FIP_TENANT, "create")
    t0 = time.monotonic()  # the workload on hv5 answers its first ping (its namespace is new)
    while ping_many([(lb.ext_ns, "203.0.113.41", "warm")], count=1)["warm"] != (1, 1):
        assert time.monotonic() - t0 < 15, "the floating IP never answered"
    print(f"\nfloating IP on the joined host answered after {time.monotonic() - t0:.1f} s")
    caps = {h: Capture(lb.ext_ns, h) for h in ("hv1", "hv5")}
    try:
        res = ping_many([(lb.ext_ns, "203.0.113.41", "fip")], count=3, pattern=TAG)
    finally:
        seen = {h: tagged(c.packets(), bytes.fromhex(TAG)) for h, c in caps.items()}
    assert res["fip"] == (3, 3), res
    assert seen == {"hv1": 0, "hv5": 6}, seen  # in and out at the joined host, not through the gateway
