"""The main job (`make demo` / `nvctl demo`): the platform end to end on this machine.

1. lab up: N simulated hypervisors with their own Open vSwitch, and the controller
2. two tenants, blue and red, both on 10.0.0.0/24, ports spread over every host
3. every intra-tenant pair pings (same host and across hosts, over VXLAN)
4. isolation: while blue pings every address with a tagged payload, captures on all of
   red's workloads receive none of blue's tagged packets, while a capture on blue's own
   vm2 receives them (the control). Only the tag counts: a workload's own IGMP, ND or
   ARP chatter is not a leak.
5. the underlay carries VXLAN between provider addresses with each tenant's VNI
6. policy by labels: tenant shop (examples/policies.yaml) lets only ports labelled
   app=shop on its web switch open connections to its databases' port 5432; a frontend
   without the label gets nothing through until `port label` gives it the label
7. `nvctl verify`: over the flows read back from every switch, no packet of one tenant
   can reach the other, over the whole header space (not just the packets sent above),
   and the network policies allow what they say and nothing more
8. lab down (unless --keep)

Exits non-zero if any claim fails.
"""
from __future__ import annotations

import os

from controller.client.api import call
from scenarios.lab import Lab
from scenarios.netutil import Capture, TcpServer, ping_many, tagged, tcp_connect

TAG = b"\xb1\x0e\xde\x30"  # blue's probe payload pattern (ping -p): what counts as a leak

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(os.path.dirname(HERE), "examples")


def _step(n: int, text: str) -> None:
    print(f"\n[{n}] {text}", flush=True)


def run_demo(state_dir: str | None = None, hosts: int = 3, keep: bool = False) -> int:
    lab = Lab(state_dir)
    failures: list[str] = []
    try:
        _step(1, f"lab up: {hosts} hypervisors, one OVS each, controller in its own namespace")
        lab.up(hosts=hosts)

        _step(2, "tenants blue and red, both 10.0.0.0/24")
        for name in ("blue", "red"):
            with open(os.path.join(EXAMPLES, f"{name}.yaml")) as f:
                r = call(lab.api_path, "tenant.create", yaml=f.read())
            print(f"    {name}: " + ", ".join(f"{h} {w}" for h, w in r["hosts"].items()))
        shown = {n: call(lab.api_path, "tenant.show", name=n) for n in ("blue", "red")}
        for n, t in shown.items():
            print(f"    {n}: VNI {t['ids']['vni']}, ports " +
                  ", ".join(f"{p['name']}={p['ip']}@{p['host']}" for p in t["ports"]))

        _step(3, "every intra-tenant pair pings (3 pings each, all at once)")
        pairs = []
        for n, t in shown.items():
            for a in t["ports"]:
                for b in t["ports"]:
                    if a is not b:
                        where = "same host" if a["host"] == b["host"] else f"{a['host']}->{b['host']}"
                        pairs.append((a["namespace"], b["ip"], f"{n} {a['name']}->{b['name']} ({where})"))
        res = ping_many(pairs)
        for label, (got, sent) in res.items():
            print(f"    {label:38} {got}/{sent}")
            if got != sent:
                failures.append(f"ping {label}: {got}/{sent}")

        _step(4, "isolation: blue pings every address (payload tagged) while red's workloads capture")
        blue = {p["name"]: p for p in shown["blue"]["ports"]}
        red_caps = {p["name"]: Capture(p["namespace"], "eth0", "icmp", inbound_only=True)
                    for p in shown["red"]["ports"]}
        control = Capture(blue["vm2"]["namespace"], "eth0", "icmp", inbound_only=True)
        try:
            targets = [p["ip"] for p in shown["red"]["ports"]] + ["10.0.0.99", "10.0.0.255"]
            ping_many([(blue["vm1"]["namespace"], ip, ip) for ip in dict.fromkeys(targets)], count=2,
                      pattern=TAG.hex())
        finally:
            leaked = {n: tagged(c.packets(), TAG) for n, c in red_caps.items()}
            seen = tagged(control.packets(), TAG)
        print(f"    blue's tagged packets received by red's workloads: {leaked}")
        print(f"    control: blue vm2 received {seen} of blue's tagged packets in the same window")
        if any(leaked.values()):
            failures.append(f"isolation broken: red received blue's tagged packets {leaked}")
        if seen == 0:
            failures.append("control failed: blue vm2 saw none of blue's tagged packets, "
                            "the capture proves nothing")

        _step(5, "the underlay: VXLAN between provider addresses, one VNI per tenant switch")
        red = {p["name"]: p for p in shown["red"]["ports"]}
        caps = [Capture(lab.ul_ns, h["name"], "udp port 4789") for h in call(lab.api_path, "host.list")]
        try:
            ping_many([(blue["vm1"]["namespace"], blue["vm2"]["ip"], "b"),
                       (red["vm3"]["namespace"], red["vm1"]["ip"], "r")], count=2)
        finally:
            counts = [c.discard() for c in caps]
        print(f"    VXLAN packets seen on the underlay ports: {sum(counts)}")
        if not sum(counts):
            failures.append("no VXLAN seen on the underlay")

        _step(6, "policy by labels: shop's databases take port 5432 only from ports labelled app=shop")
        with open(os.path.join(EXAMPLES, "policies.yaml")) as f:
            call(lab.api_path, "tenant.create", yaml=f.read())
        shop = {p["name"]: p for p in call(lab.api_path, "tenant.show", name="shop")["ports"]}
        server = TcpServer(shop["db1"]["namespace"], 5432)
        try:
            seen = {}
            for label, who in (("web1 (app=shop)", "web1"), ("web2 (app=blog)", "web2")):
                seen[label] = tcp_connect(shop[who]["namespace"], shop["db1"]["ip"], 5432)
            call(lab.api_path, "port.label", tenant="shop", port="web2", set={"app": "shop"})
            seen["web2 relabelled app=shop"] = tcp_connect(shop["web2"]["namespace"], shop["db1"]["ip"], 5432)
        finally:
            server.stop()
        want = {"web1 (app=shop)": "connected", "web2 (app=blog)": "timeout", "web2 relabelled app=shop": "connected"}
        for label, got in seen.items():
            print(f"    {label:26} -> db1:5432  {got}")
            if got != want[label]:
                failures.append(f"policy: {label} -> db1:5432 {got}, expected {want[label]}")

        _step(7, "nvctl verify: isolation and policy proved over the flows installed on every switch")
        v = call(lab.api_path, "verify")
        print("    " + v["text"].splitlines()[0])
        if not v["ok"]:
            failures.append("nvctl verify found violations:\n" + v["text"])

        print("\n" + ("demo: all claims hold" if not failures else "demo FAILED:\n  " + "\n  ".join(failures)))
        if keep:
            print(f"lab left running (state {lab.dir}); try:\n"
                  f"  nvctl --state-dir {lab.dir} exec blue/vm1 -- ping -c 2 10.0.0.13\n"
                  f"  nvctl --state-dir {lab.dir} flows hv1\n"
                  f"  nvctl --state-dir {lab.dir} lab down")
        return 1 if failures else 0
    finally:
        if not keep:
            print()
            lab.down()
