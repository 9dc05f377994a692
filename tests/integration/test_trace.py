"""nvctl trace against real OVS: named fates, and 200+ generated packets on which the
simulator and ofproto/trace must agree hop by hop."""
import json
import os
import random

import pytest

from controller.client.api import call
from tests.integration.helpers import ROOT, apply_yaml, nvctl, nvctl_json

SHOP = open(os.path.join(ROOT, "examples", "shop.yaml")).read().replace("  ports:\n", """  acls:
    - {priority: 200, direction: to-port, ports: [db1], from: web, protocol: tcp, dstPorts: [5432, "6000-6100"], action: allow}
    - {priority: 100, direction: to-port, ports: [db1], action: deny}
    - {priority: 150, direction: from-port, ports: [web2], protocol: udp, action: deny}
    - {priority: 100, direction: to-port, ports: [web1], from: db, action: deny}
  ports:
""", 1)


@pytest.fixture(scope="module")
def world(lab):
    for doc in ("blue.yaml", "red.yaml"):
        apply_yaml(lab, open(os.path.join(ROOT, "examples", doc)).read(), op="create")
    apply_yaml(lab, SHOP, op="create")
    return {n: nvctl_json(lab, "tenant", "show", n) for n in ("blue", "red", "shop")}


def trace(lab, sender, packet):
    p = nvctl(lab, "trace", sender, packet, "--real", "--json", check=False)
    assert p.stdout, f"trace {sender} {packet!r} failed: {p.stderr}"
    return json.loads(p.stdout)


def test_trace_names_the_deciding_rule_and_agrees_with_ovs(lab, world):
    ok = trace(lab, "shop/web1", "tcp,nw_dst=10.0.1.10,tp_dst=5432")
    assert ok["delivered"] == ["shop/db1"] and ok["agree"] is True
    assert [h["host"] for h in ok["hops"]] == ["hv1", "hv2"]
    denied = trace(lab, "shop/web1", "tcp,nw_dst=10.0.1.10,tp_dst=22")
    assert denied["delivered"] == [] and denied["agree"] is True
    assert denied["hops"][-1]["dropped_by"]["rule"] == "acl[1] to-port deny (port db1)"
    assert denied["hops"][-1]["dropped_by"]["layer"] == "acl_to_port"
    forged = trace(lab, "blue/vm1", "icmp,nw_dst=10.0.0.12,nw_src=10.0.0.99")
    assert forged["hops"][0]["dropped_by"]["layer"] == "port_security" and forged["agree"] is True


def generate(world, n, seed=1):
    rng = random.Random(seed)
    ips = sorted({p["ip"] for t in world.values() for p in t["ports"]} |
                 {"10.0.0.1", "10.0.1.1", "10.0.0.77", "10.0.1.99", "10.0.0.255", "172.16.5.5"})
    out = []
    while len(out) < n:
        tname = rng.choice(sorted(world))
        t = world[tname]
        src = rng.choice(t["ports"])
        subnet = {"10.0.0": "10.0.0", "10.0.1": "10.0.1"}[src["ip"].rsplit(".", 1)[0]]
        dst = rng.choice(ips)
        on_switch = dst.startswith(subnet + ".")
        known = any(p["ip"] == dst and p["ip"].startswith(subnet) for p in t["ports"]) or \
            dst in ("10.0.0.1", "10.0.1.1") and tname == "shop" or dst.endswith(".255")
        kind = rng.choice(["icmp", "tcp", "udp", "arp", "ip"])
        if kind == "arp":
            spec = f"arp,arp_tpa={dst}"
        else:
            spec = f"{kind},nw_dst={dst}"
            if kind in ("tcp", "udp"):
                spec += f",tp_dst={rng.choice([22, 80, 5432, 6050, 6101, 8080])},tp_src={rng.randint(1024, 65000)}"
            if on_switch and not known:
                spec += ",dl_dst=02:00:00:00:99:99"  # nobody's MAC
            if not on_switch and tname != "shop":
                continue  # blue and red have no router: nothing to send off-switch
            if rng.random() < 0.1:
                spec += ",nw_src=10.0.0.200"  # forged
            if rng.random() < 0.05:
                spec += ",nw_ttl=1"
        out.append((f"{tname}/{src['name']}", spec))
    return out


def test_simulator_and_ovs_agree_on_generated_packets(lab, world):
    packets = generate(world, 210)
    disagreements, hops, delivered, dropped = [], 0, 0, 0
    for sender, spec in packets:
        tenant, port = sender.split("/")
        r = call(lab.api_path, "trace", tenant=tenant, port=port, packet=spec, real=True)
        assert "hops" in r, (sender, spec, r)
        hops += len(r["hops"])
        delivered += bool(r["delivered"])
        dropped += not r["delivered"]
        for h in r["hops"]:
            if h["real"]["agree"] is not True:
                disagreements.append((sender, spec, h["host"], h["outputs"], h["real"]))
    print(f"\n{len(packets)} packets, {hops} hops traced, {delivered} delivered, {dropped} dropped, "
          f"{len(disagreements)} disagreements")
    assert delivered > 30 and dropped > 30, "the generator must exercise both fates"
    assert not disagreements, disagreements[:5]
