"""A QEMU guest as a tenant workload (tep/vm.py): Debian's kernel and a busybox initramfs
the project builds, booted under TCG on a lab host, its virtio NIC on a tap in that
host's br-int carrying only the port's iface-id and MAC. The platform binds it, its DHCP
gives the guest its address, and the guest reaches a namespace workload on another
host; stopped, it leaves no process or tap."""
from __future__ import annotations

import os
import time

import pytest

from tep import vm
from tests.integration.conftest import running_lab
from tests.integration.helpers import apply_yaml, nvctl_json
from topology.builder import port, tenant_doc

MAC = "02:00:00:00:0b:11"


@pytest.fixture(scope="module")
def lab():
    yield from running_lab(2)


def test_a_guest_bound_by_iface_id_gets_its_lease_and_reaches_a_workload_on_another_host(lab):
    apply_yaml(lab, tenant_doc("vmt", switches=[{"name": "web", "cidr": "10.0.0.0/24"}],
                               ports=[port("vm1", "web", "10.0.0.11", "hv1", mac=MAC, workload=False),
                                      port("ns2", "web", "10.0.0.12", "hv2")]), op="create")
    ns, tap = lab.host_ns("hv1"), "tvmt1"
    guest = vm.Guest(os.path.join(lab.dir, "vms"), "vmt.vm1")
    vm.make_tap(ns, tap)
    try:
        lab.ovsdb("hv1").vsctl("--may-exist", "add-port", "br-int", tap, "--", "set", "interface", tap,
                               "external_ids:iface-id=vmt/vm1")
        guest.start(ns, tap, MAC)
        boot = guest.wait_console("nvctl guest lease 10.0.0.11", 90)
        rc, out = guest.run("ip -o -4 addr show eth0; cat /sys/class/net/eth0/mtu; cat /sys/class/net/eth0/address")
        assert rc == 0 and "10.0.0.11/24" in out and "1450" in out and MAC in out, out
        rc, out = guest.run("ping -c 3 -W 2 10.0.0.12", timeout=30)
        assert rc == 0 and " 0% packet loss" in out, out
        show = {p["name"]: p for p in nvctl_json(lab, "tenant", "show", "vmt")["ports"]}
        assert show["vm1"]["up"] and show["vm1"]["host"] == "hv1"
        print(f"guest: lease {boot:.1f} s after start")
    finally:
        guest.stop()
        lab.ovsdb("hv1").vsctl("--if-exists", "del-port", "br-int", tap)
        vm.remove_tap(ns, tap)
    assert guest.pid() is None and not os.path.exists(guest.path("agent"))
    time.sleep(0.5)
    assert tap not in lab.ovsdb("hv1").vsctl("list-ports", "br-int").split()
