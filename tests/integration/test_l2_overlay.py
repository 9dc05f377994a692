"""Two tenants on the same 10.0.0.0/24, spread over three hosts with real OVS and VXLAN.

Tests run in file order against one lab; the last one deletes a tenant.
"""
import os
import time

import pytest

from controller.spaces.ids import BFD_VNI
from dataplane.match_action import cookie_tenant
from tests.integration.helpers import (ROOT, Capture, apply_yaml, in_ns, installed_cookies,
                                       nvctl, nvctl_json, ping_many, send_frames)

BLUE = open(os.path.join(ROOT, "examples", "blue.yaml")).read()
RED = open(os.path.join(ROOT, "examples", "red.yaml")).read()
HOSTS = ["hv1", "hv2", "hv3"]


@pytest.fixture(scope="module")
def tenants(lab):
    apply_yaml(lab, BLUE, op="create")
    apply_yaml(lab, RED, op="create")
    return {name: nvctl_json(lab, "tenant", "show", name) for name in ("blue", "red")}


def ports(t):
    return {p["name"]: p for p in t["ports"]}


def test_tenant_show_reports_every_port_up_and_flows_installed(lab, tenants):
    for name, t in tenants.items():
        assert {p["host"] for p in t["ports"]} == set(HOSTS), name
        assert all(p["up"] for p in t["ports"]), t["ports"]
        assert all(h["installed"] for h in t["hosts"].values()), t["hosts"]


def test_every_intra_tenant_pair_pings_same_host_and_across_hosts(lab, tenants):
    pairs = []
    for name, t in tenants.items():
        for a in t["ports"]:
            for b in t["ports"]:
                if a is not b:
                    pairs.append((a["namespace"], b["ip"], f"{name}:{a['name']}({a['host']})->{b['name']}({b['host']})"))
    assert any(a["host"] == b["host"] for t in tenants.values() for a in t["ports"] for b in t["ports"]
               if a is not b), "the topology must include a same-host pair"
    results = ping_many(pairs, count=3)
    lost = {k: v for k, v in results.items() if v[0] != v[1]}
    assert not lost, f"pings with loss (received, sent): {lost}"


def test_workloads_get_the_mtu_their_underlay_carries(lab, tenants):
    """Workloads get the underlay's MTU less VXLAN's 50 bytes, and a full-size packet of
    that MTU crosses hosts with DF set."""
    from controller.compile.compiler import VXLAN_OVERHEAD
    want = lab.underlay_mtu - VXLAN_OVERHEAD
    blue = ports(tenants["blue"])
    assert tenants["blue"]["mtu"] == {"web": want}
    link = in_ns(blue["vm1"]["namespace"], "ip", "-o", "link", "show", "eth0", check=True).stdout
    assert f" mtu {want} " in link, link
    src, dst = blue["vm1"], blue["vm2"]
    assert src["host"] != dst["host"]
    ok = in_ns(src["namespace"], "ping", "-c", "2", "-W", "2", "-M", "do", "-s", str(want - 28), dst["ip"])
    assert ok.returncode == 0 and "2 received" in ok.stdout, ok.stdout + ok.stderr


def test_no_packet_of_one_tenant_reaches_the_other(lab, tenants):
    blue, red = ports(tenants["blue"]), ports(tenants["red"])
    red_caps = {n: Capture(p["namespace"], "eth0", inbound_only=True) for n, p in red.items()}
    control = Capture(blue["vm2"]["namespace"], "eth0", inbound_only=True)
    try:
        src = blue["vm1"]
        pairs = [(src["namespace"], ip, ip) for ip in
                 ("10.0.0.12", "10.0.0.13", "10.0.0.14", "10.0.0.99")]  # .99: nobody, ARP floods
        ping_many(pairs, count=2)
        send_frames(src["namespace"], [  # straight at red's unique MAC, and a broadcast
            {"kind": "icmp", "src_mac": src["mac"], "dst_mac": red["vm4"]["mac"],
             "src_ip": src["ip"], "dst_ip": red["vm4"]["ip"], "tag": "blue-to-red-mac"},
            {"kind": "icmp", "src_mac": src["mac"], "dst_mac": "ff:ff:ff:ff:ff:ff",
             "src_ip": src["ip"], "dst_ip": "10.0.0.255", "tag": "blue-broadcast"},
        ])
        time.sleep(0.5)
    finally:
        got = {n: c.packets() for n, c in red_caps.items()}
        seen_by_blue_vm2 = control.packets()
    assert any(b"blue-broadcast" in bytes(p) for p in seen_by_blue_vm2), \
        "control failed: blue's own broadcast did not reach blue vm2, so the capture proves nothing"
    leaked = {n: [p.summary() for p in pk] for n, pk in got.items() if pk}
    assert not leaked, f"red workloads received packets while only blue sent: {leaked}"


BFD_PORT = 3784  # BFD control packets (RFC 5881)


def test_underlay_carries_vxlan_between_pas_with_each_tenants_vni(lab, tenants):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN
    blue, red = ports(tenants["blue"]), ports(tenants["red"])
    vni = {n: t["ids"]["vni"] for n, t in tenants.items()}
    pas = {h["name"]: h["pa"] for h in nvctl_json(lab, "hosts")}
    caps = [Capture(lab.ul_ns, h, "udp port 4789") for h in HOSTS]  # every host's underlay port
    try:
        assert blue["vm1"]["host"] != blue["vm2"]["host"] and red["vm3"]["host"] != red["vm1"]["host"]
        res = ping_many([(blue["vm1"]["namespace"], blue["vm2"]["ip"], "blue"),
                         (red["vm3"]["namespace"], red["vm1"]["ip"], "red")], count=3)
        assert res == {"blue": (3, 3), "red": (3, 3)}
    finally:
        pkts = [p for c in caps for p in c.packets()]
    seen = {}
    for p in pkts:
        if VXLAN not in p:
            continue
        outer, v, inner = p[IP], p[VXLAN].vni, p[VXLAN][Ether]
        assert outer.src in pas.values() and outer.dst in pas.values(), outer.summary()
        assert p[UDP].dport == 4789
        if v == BFD_VNI:  # the hosts' own BFD sessions (gateway liveness), never a tenant's frame
            assert inner.haslayer(UDP) and inner[UDP].dport == BFD_PORT, inner.summary()
            continue
        seen.setdefault(v, set()).add((outer.src, outer.dst, inner.src, inner.dst))
    assert set(seen) == {vni["blue"]["web"], vni["red"]["app"]}, seen
    blue_macs = {p["mac"] for p in blue.values()}
    red_macs = {p["mac"] for p in red.values()}
    for (_s, _d, isrc, idst) in seen[vni["blue"]["web"]]:
        assert {isrc, idst} <= blue_macs
    for (_s, _d, isrc, idst) in seen[vni["red"]["app"]]:
        assert {isrc, idst} <= red_macs
    assert (pas["hv1"], pas["hv2"]) in {(s, d) for s, d, *_ in seen[vni["blue"]["web"]]}


def test_a_pa_is_answered_by_br_phy_alone_never_by_the_uplink_under_it(lab, tenants):
    """ARP for a host's PA on the underlay gets one answer, br-phy's MAC: the kernel
    owns the uplink too and, left alone, answered with the uplink's MAC, which some
    peers then learned; their tunnels to that host went dark."""
    import subprocess
    from scenarios.lab import HostPlan
    for i, h in enumerate(HOSTS, start=1):
        pa = HostPlan(i).pa
        phy = in_ns(lab.host_ns(h), "cat", "/sys/class/net/br-phy/address").stdout.strip()
        ul0 = in_ns(lab.host_ns(h), "cat", "/sys/class/net/ul0/address").stdout.strip()
        probe = ("from scapy.all import ARP, Ether, srp, conf; conf.verb = 0\n"
                 f"ans, _ = srp(Ether(dst='ff:ff:ff:ff:ff:ff') / ARP(pdst='{pa}', psrc='192.0.2.250'), "
                 "iface='br-ul', timeout=1, multi=True)\n"
                 "print(sorted({r.hwsrc for _, r in ans}))")
        out = subprocess.run(["ip", "netns", "exec", lab.ul_ns, os.path.join(ROOT, ".venv", "bin", "python"), "-c",
                              probe], capture_output=True, text=True, timeout=30)
        assert out.stdout.strip() == repr([phy]), (h, out.stdout, out.stderr[-300:], ul0)
        assert "NOARP" in in_ns(lab.host_ns(h), "ip", "link", "show", "ul0").stdout


def test_forged_source_mac_or_ip_is_dropped(lab, tenants):
    blue = ports(tenants["blue"])
    src, dst, same_host = blue["vm1"], blue["vm2"], blue["vm4"]
    assert same_host["host"] == src["host"] != dst["host"]
    caps = {n: Capture(blue[n]["namespace"], "eth0", inbound_only=True) for n in ("vm2", "vm4")}
    frames = []
    for target in (dst, same_host):
        base = {"kind": "icmp", "dst_mac": target["mac"], "dst_ip": target["ip"]}
        frames += [
            {**base, "src_mac": src["mac"], "src_ip": src["ip"], "tag": "legit"},
            {**base, "src_mac": "02:00:de:ad:be:ef", "src_ip": src["ip"], "tag": "forged-mac"},
            {**base, "src_mac": src["mac"], "src_ip": "10.0.0.77", "tag": "forged-ip"},
            {**base, "src_mac": src["mac"], "src_ip": target["ip"], "tag": "forged-peer-ip"},
        ]
    frames.append({"kind": "arp", "src_mac": src["mac"], "hwsrc": src["mac"], "psrc": dst["ip"],
                   "pdst": same_host["ip"], "op": 2})  # ARP spoof: "vm2's IP is at vm1's MAC"
    try:
        send_frames(src["namespace"], frames)
        time.sleep(0.5)
    finally:
        got = {n: c.packets() for n, c in caps.items()}
    from scapy.layers.l2 import ARP
    for n, pk in got.items():
        raw = [bytes(p) for p in pk]
        assert any(b"legit" in r for r in raw), f"control: legit frame did not reach {n}"
        for tag in (b"forged-mac", b"forged-ip", b"forged-peer-ip"):
            assert not any(tag in r for r in raw), f"{tag.decode()} frame reached {n}"
        spoof = [p for p in pk if ARP in p and p[ARP].psrc == dst["ip"] and p[ARP].hwsrc == src["mac"]]
        assert not spoof, f"spoofed ARP reached {n}"


def test_flows_command_names_tables_and_matches_the_switch(lab, tenants):
    out = nvctl(lab, "flows", "hv1").stdout
    for table in ("classify", "port_security", "arp_responder", "l2_lookup", "dispatch", "deliver"):
        assert f"# {table} (layer " in out
    assert "0 missing (!), 0 unexpected on the switch" in out
    assert len(installed_cookies(lab, "hv1")) == sum(1 for line in out.splitlines()
                                                     if line.startswith("  table="))


def _ofctl(lab, host, *args):
    import subprocess
    p = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", *args], capture_output=True, text=True,
                       env=lab.ovs_env(host), timeout=30)
    assert p.returncode == 0, p.stderr


def test_drift_made_with_ovs_ofctl_is_seen_by_hosts_and_corrected(lab, tenants):
    """Changed actions under the same cookie, a deleted flow and a stray flow, made
    behind the controller's back with ovs-ofctl: `nvctl hosts` reads the switch again,
    says what it found, and puts the desired flows back exactly."""
    before = installed_cookies(lab, "hv2")
    rows = nvctl_json(lab, "flows", "hv2", "--tenant", "blue")["flows"]
    deliver = next(r["flow"] for r in rows if r["table"] == "deliver" and "output:" in r["flow"])
    match = deliver.split(",actions=")[0]  # table, priority and match: the flow's identity
    _ofctl(lab, "hv2", "mod-flows", "--strict", "br-int", f"{match},actions=output:99")
    _ofctl(lab, "hv2", "add-flow", "br-int", "table=0,priority=7,in_port=77,actions=output:1")
    hosts = {h["name"]: h for h in nvctl_json(lab, "hosts")}
    assert hosts["hv2"]["drift"] == {"flow_mods": 2, "missing": 0, "unexpected": 1, "changed": 1}, hosts["hv2"]
    assert hosts["hv2"]["in_sync"] and hosts["hv1"]["drift"]["flow_mods"] == 0
    assert installed_cookies(lab, "hv2") == before
    assert "in sync" in nvctl(lab, "hosts").stdout


def test_bad_yaml_is_refused_with_the_field_and_nothing_changes(lab, tenants):
    before_rev = nvctl_json(lab, "tenant", "show", "blue")["revision"]
    before = {h: installed_cookies(lab, h) for h in HOSTS}
    bad = BLUE.replace("ip: 10.0.0.12", "ip: 10.0.1.12")
    p = apply_yaml(lab, bad, check=False)
    assert p.returncode == 1
    assert "spec.ports[1].ip: 10.0.1.12 is outside switch web's cidr 10.0.0.0/24" in p.stderr
    p = apply_yaml(lab, BLUE.replace("kind: Tenant", "kind: Tenant\nextra: 1"), check=False)
    assert p.returncode == 1 and "extra: unknown key" in p.stderr
    assert nvctl_json(lab, "tenant", "show", "blue")["revision"] == before_rev
    assert {h: installed_cookies(lab, h) for h in HOSTS} == before


def test_controller_restart_sends_zero_flow_mods_and_traffic_flows_while_it_is_down(lab, tenants):
    blue = ports(tenants["blue"])
    before = {h: installed_cookies(lab, h) for h in HOSTS}
    lab.stop_controller()
    try:
        res = ping_many([(blue["vm1"]["namespace"], blue["vm3"]["ip"], "down")], count=5)
        assert res["down"] == (5, 5), "secure fail mode must keep forwarding with the controller down"
    finally:
        lab.start_controller()
    hosts = lab.wait_synced(30)
    for h in hosts:
        assert h["syncs"] == 1 and h["last_sync_flow_mods"] == 0 and h["flow_mods_sent"] == 0, h
    assert {h: installed_cookies(lab, h) for h in HOSTS} == before
    assert nvctl_json(lab, "tenant", "list")[0]["name"] == "blue"  # the store came back


def test_tenant_delete_leaves_no_flow_or_workload_of_that_tenant(lab, tenants):
    red_id = tenants["red"]["ids"]["tenant_id"]
    namespaces = [p["namespace"] for p in tenants["red"]["ports"]]
    assert any(cookie_tenant(c) == red_id for c in installed_cookies(lab, "hv1"))
    nvctl(lab, "tenant", "delete", "red")
    for h in HOSTS:
        left = [t for c, t in installed_cookies(lab, h).items() if cookie_tenant(c) == red_id]
        assert not left, f"{h} still has red's flows: {left}"
    existing = set(in_ns(lab.ctl_ns, "ip", "netns", "list").stdout.split())
    assert not existing & set(namespaces)
    blue = ports(tenants["blue"])
    assert ping_many([(blue["vm1"]["namespace"], blue["vm2"]["ip"], "b")])["b"] == (3, 3)
    assert [t["name"] for t in nvctl_json(lab, "tenant", "list")] == ["blue"]
