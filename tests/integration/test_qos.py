"""Per-port rate limits with OpenFlow meters, measured with iperf3."""
import os
import subprocess

import pytest

from controller.layers.qos import BUM_METER_BASE
from scenarios.netutil import iperf3
from tests.integration.helpers import ROOT, apply_yaml, nvctl_json

LIMIT_MBPS = 50
BLUE = open(os.path.join(ROOT, "examples", "blue.yaml")).read().replace(
    "{name: vm1, switch: web, ip: 10.0.0.11, host: hv1}",
    f"{{name: vm1, switch: web, ip: 10.0.0.11, host: hv1, rateLimitMbps: {LIMIT_MBPS}}}")


@pytest.fixture(scope="module")
def blue(lab):
    apply_yaml(lab, BLUE, op="create")
    return {p["name"]: p for p in nvctl_json(lab, "tenant", "show", "blue")["ports"]}


def test_the_meter_is_on_the_switch(lab, blue):
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-meters", "br-int"], capture_output=True,
                         text=True, env=lab.ovs_env("hv1"), check=True).stdout
    assert f"meter={blue['vm1']['ofport']} kbps burst" in out and f"rate={LIMIT_MBPS * 1000}" in out


def test_a_limited_port_stays_near_its_limit_and_far_below_an_unlimited_one(lab, blue):
    vm1, vm4, vm2 = blue["vm1"], blue["vm4"], blue["vm2"]
    assert vm1["host"] == vm4["host"] != vm2["host"]
    limited = iperf3(vm1["namespace"], vm2["namespace"], vm2["ip"], seconds=4)
    unlimited = iperf3(vm4["namespace"], vm2["namespace"], vm2["ip"], seconds=4)
    print(f"\nTCP through VXLAN, same run: limited ({LIMIT_MBPS} Mbit/s meter) {limited['mbps']} Mbit/s, "
          f"unlimited {unlimited['mbps']} Mbit/s")
    assert limited["mbps"] <= LIMIT_MBPS * 1.1, limited
    assert limited["mbps"] >= LIMIT_MBPS * 0.3, limited  # limited, not broken
    assert unlimited["mbps"] >= 3 * limited["mbps"], (limited, unlimited)


def test_removing_the_limit_removes_the_meter(lab, blue):
    apply_yaml(lab, BLUE.replace(f", rateLimitMbps: {LIMIT_MBPS}", ""))
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-meters", "br-int"], capture_output=True,
                         text=True, env=lab.ovs_env("hv1"), check=True).stdout
    assert f"meter={blue['vm1']['ofport']} " not in out  # the ports' BUM meters (pktps) stay
    assert f"meter={BUM_METER_BASE + blue['vm1']['ofport']} pktps" in out
    hosts = nvctl_json(lab, "hosts")
    assert all(h["in_sync"] for h in hosts), hosts


def test_trace_passes_the_meter_and_agrees(lab, blue):
    from controller.client.api import call
    apply_yaml(lab, BLUE)  # the limit back on
    r = call(lab.api_path, "trace", tenant="blue", port="vm1", packet="tcp,nw_dst=10.0.0.12,tp_dst=5201",
             real=True)
    assert r["agree"] is True and r["delivered"] == ["blue/vm2"], r
    assert any(t["table"] == "rate_limit" and t.get("layer") == "qos" for t in r["hops"][0]["tables"])
