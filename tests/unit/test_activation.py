"""A migrating port bound twice: compiled flows, run in the strict simulator.

blue/vm1 runs on hv1 and is pending on hv2 (its guest is being copied there). The
other hosts send its traffic to both; hv2 drops its copy and lets only the guest's own
announcement (RARP, or a gratuitous ARP for its address) from the pending interface
reach the controller; after activation (vm1 placed on hv2) hv2 delivers at the number
the pending interface already had. Twins with identical specs stay apart throughout."""
import dataclasses

from controller.compile.allocator import InUse, allocate
from controller.spaces.names import pending_name
from dataplane.match_action import BROADCAST_MAC, CONTROLLER
from tests.unit.fixtures import BLUE, HOSTS, Net, world
from tests.unit.packets import arp_request, icmp

RARP = 0x8035


def _pending(tenants, name="blue", port="vm1", to="hv2"):
    """The world with `port` pending on `to`, allocated as the controller would."""
    used = InUse()
    for n, (t, a) in tenants.items():
        if n != name:
            used.add(t, a)
    t, a = tenants[name]
    t2 = dataclasses.replace(t, ports=tuple(dataclasses.replace(p, pending=to) if p.name == port else p
                                            for p in t.ports))
    return {**tenants, name: (t2, allocate(t2, t, a, used))}, used


def _activated(tenants, used, name="blue", port="vm1"):
    t, a = tenants[name]
    p = t.port(port)
    t2 = dataclasses.replace(t, ports=tuple(dataclasses.replace(q, host=p.pending, pending=None)
                                            if q.name == port else q for q in t.ports))
    return {**tenants, name: (t2, allocate(t2, t, a, used))}


def _rarp(mac):
    return {"eth_src": mac, "eth_dst": BROADCAST_MAC, "eth_type": RARP}


def test_pending_port_gets_its_own_number_on_the_destination_and_keeps_it_when_activated():
    before = world(BLUE)
    pend, used = _pending(before)
    t, a = pend["blue"]
    n = a.ofport[pending_name("vm1")]
    hv2_numbers = [a.ofport[p.name] for p in t.ports if p.host == "hv2"]
    assert n not in hv2_numbers and a.ofport["vm1"] == before["blue"][1].ofport["vm1"]
    after = _activated(pend, used)
    assert after["blue"][1].ofport["vm1"] == n and pending_name("vm1") not in after["blue"][1].ofport


def test_traffic_reaches_both_bindings_but_only_the_source_delivers_until_activation():
    pend, used = _pending(world(BLUE))
    net = Net(pend)
    t, a = pend["blue"]
    vm1, vm3 = t.port("vm1"), t.port("vm3")
    got = net.send("blue", "vm3", icmp(vm3.mac, vm1.mac, str(vm3.ip), str(vm1.ip)))
    assert net.who(got) == [("blue", "vm1")] and got[0].host == "hv1"
    reached = {h for h, _port, pkt, _f in net.fabric.hops if pkt.get("tun_ipv4_src")}
    assert reached == {"hv1", "hv2"}  # the copy went to the pending host too, which dropped it
    # the source host's own ports send to the pending binding too (split horizon: what came
    # from a tunnel is not sent on)
    net.fabric.hops.clear()
    vm4 = t.port("vm4")
    got = net.send("blue", "vm4", icmp(vm4.mac, vm1.mac, str(vm4.ip), str(vm1.ip)))
    assert [d.host for d in got] == ["hv1"]
    assert [h for h, _p, pkt, _f in net.fabric.hops if pkt.get("tun_ipv4_src")] == ["hv2"]


def test_only_the_guest_announcement_from_the_pending_interface_reaches_the_controller():
    pend, _ = _pending(world(BLUE))
    net = Net(pend)
    t, a = pend["blue"]
    vm1, vm2 = t.port("vm1"), t.port("vm2")
    pending = a.ofport[pending_name("vm1")]
    hv2 = net.fabric.sims["hv2"]
    assert hv2.run(_rarp(vm1.mac), pending).ports() == [CONTROLLER]
    assert hv2.run(arp_request(vm1.mac, str(vm1.ip), str(vm1.ip)), pending).ports() == [CONTROLLER]
    # anything else from the pending interface drops: traffic, an ARP for another address,
    # an announcement with another port's MAC
    assert hv2.run(icmp(vm1.mac, vm2.mac, str(vm1.ip), str(vm2.ip)), pending).dropped
    assert hv2.run(arp_request(vm1.mac, str(vm1.ip), str(vm2.ip)), pending).dropped
    assert hv2.run(_rarp(vm2.mac), pending).dropped
    # the same announcement from vm1's interface on its own host, or from vm2's, is no activation
    assert CONTROLLER not in net.fabric.sims["hv1"].run(_rarp(vm1.mac), a.ofport["vm1"]).ports()
    assert CONTROLLER not in hv2.run(_rarp(vm1.mac), a.ofport["vm2"]).ports()


def test_after_activation_the_destination_delivers_at_the_pending_number():
    pend, used = _pending(world(BLUE))
    n = pend["blue"][1].ofport[pending_name("vm1")]
    net = Net(_activated(pend, used))
    t, _ = net.tenants["blue"]
    vm1, vm3 = t.port("vm1"), t.port("vm3")
    got = net.send("blue", "vm3", icmp(vm3.mac, vm1.mac, str(vm3.ip), str(vm1.ip)))
    assert [(d.host, d.port) for d in got] == [("hv2", n)]


def test_twins_migrating_at_once_stay_apart():
    red = BLUE.replace("name: blue", "name: red")
    pend, used = _pending(world(BLUE, red))
    pend, used2 = _pending(pend, "red")
    net = Net(pend)
    for name in ("blue", "red"):
        t, a = net.tenants[name]
        vm1, vm3 = t.port("vm1"), t.port("vm3")
        got = net.send(name, "vm3", icmp(vm3.mac, vm1.mac, str(vm3.ip), str(vm1.ip)))
        assert net.who(got) == [(name, "vm1")]
    ba, ra = net.tenants["blue"][1], net.tenants["red"][1]
    assert ba.ofport[pending_name("vm1")] != ra.ofport[pending_name("vm1")]
    # each pending interface activates only its own tenant's port: the packet-in's cookie
    # names the tenant
    hv2 = net.fabric.sims["hv2"]
    for a in (ba, ra):
        fate = hv2.run(_rarp(net.tenants["blue"][0].port("vm1").mac), a.ofport[pending_name("vm1")])
        assert fate.ports() == [CONTROLLER]
        assert fate.decided_by().tenant_id == a.tenant_id


def test_a_pending_binding_on_a_gone_host_is_dropped():
    pend, _ = _pending(world(BLUE))
    hosts = {h: v for h, v in HOSTS.items() if h != "hv2"}
    net = Net(pend, hosts=hosts)
    assert all("activation" != f.table.name or f.priority == 0 for fl in net.flows.values() for f in fl.values())


def test_verify_holds_during_the_dual_binding_for_twins():
    from controller.analysis.verify import verify
    from controller.analysis.verify_model import network_from_compiled
    red = BLUE.replace("name: blue", "name: red")
    pend, _ = _pending(world(BLUE, red))
    pend, _ = _pending(pend, "red")
    net = Net(pend)
    r = verify(network_from_compiled(HOSTS, pend, {h: list(f.values()) for h, f in net.flows.items()}))
    assert r.ok, r.format()
    assert r.checked["port_starts"] == 10  # 4 ports each, and each pending interface


def test_verify_finds_a_pending_interface_that_reaches_the_twin():
    """The leak a dual binding could make: the pending interface's activation flow
    delivering to the other tenant's port. verify starts from the pending interface too."""
    from controller.analysis.verify import verify
    from controller.analysis.verify_model import network_from_compiled
    from dataplane.match_action import Flow, Output
    red = BLUE.replace("name: blue", "name: red")
    pend, _ = _pending(world(BLUE, red))
    net = Net(pend)
    n = pend["blue"][1].ofport[pending_name("vm1")]
    flows = {h: list(f.values()) for h, f in net.flows.items()}
    f = next(x for x in flows["hv2"] if x.table.name == "activation" and f"in_port={n}," in x.ofctl()
             and "arp" not in x.ofctl())
    planted = Flow(f.table, f.priority, f.match, (Output(pend["red"][1].ofport["vm2"]),), f.layer_id,
                   f.tenant_id, "planted: to red's vm2")
    flows["hv2"] = [planted if x is f else x for x in flows["hv2"]]
    r = verify(network_from_compiled(HOSTS, pend, flows))
    assert not r.ok and r.violations[0].tenants == ["blue", "red"], r.format()
    assert r.violations[0].in_port == n and r.violations[0].host == "hv2"
