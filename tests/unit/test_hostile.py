"""Hostile workloads: no rogue DHCP server, and floods pass a per-port meter."""
import pytest

from controller.layers.qos import BUM_METER_BASE, DEFAULT_BUM_PPS
from controller.layers.services import CONTROL_METER_BASE
from dataplane.match_action import BROADCAST_MAC, ETH_TYPE_IP, Meter, meters_of
from topology.schema import ValidationError, load_tenant
from tests.unit.fixtures import HOSTS, Net, port, tenant_doc, world
from tests.unit.packets import arp_request


def green(name="green", switch=None, c=None):
    """Switch g: a and b on hv1, c on hv2; `switch` and `c` add fields to g and to port c."""
    return tenant_doc(name, switches=[{"name": "g", "cidr": "10.0.0.0/24", **(switch or {})}],
                      ports=[port("a", "g", "10.0.0.11", "hv1"), port("b", "g", "10.0.0.12", "hv1"),
                             port("c", "g", "10.0.0.13", "hv2", **(c or {}))])


GREEN = green()


def dhcp_offer(src_mac, src_ip):
    return {"eth_src": src_mac, "eth_dst": BROADCAST_MAC, "eth_type": ETH_TYPE_IP, "ip_ttl": 64,
            "ipv4_src": src_ip, "ipv4_dst": "255.255.255.255", "ip_proto": 17,
            "udp_src": 67, "udp_dst": 68}


def test_a_workloads_dhcp_offer_reaches_nobody_and_the_drop_says_why():
    n = Net(world(GREEN))
    a, ofport = n.port("green", "a")
    assert n.send("green", "a", dhcp_offer(a.mac, str(a.ip))) == []
    fate = n.fabric.sims["hv1"].run(dhcp_offer(a.mac, str(a.ip)), ofport)
    assert fate.decided_by().table.name == "port_security"
    assert "may not answer DHCP" in fate.decided_by().rule
    # the same port's DHCP client traffic (from port 68) is not caught by that rule: on a
    # switch with DHCP (the default) it goes to the controller, and to nobody else
    client = {**dhcp_offer(a.mac, str(a.ip)), "udp_src": 68, "udp_dst": 67}
    assert [d.port for d in n.send("green", "a", client)] == ["CONTROLLER"]
    fate = n.fabric.sims["hv1"].run(client, ofport)
    assert [e.port for e in fate.outputs] == ["CONTROLLER"]
    assert fate.decided_by().table.name == "services"
    # without DHCP, it is an ordinary broadcast
    n = Net(world(green(switch={"dhcp": False})))
    assert {d for d in n.who(n.send("green", "a", client))} == {("green", "b"), ("green", "c")}


def test_every_flood_from_a_port_passes_that_ports_own_packet_meter():
    n = Net(world(green(c={"bumLimitPps": 50})))
    for name, host in (("a", "hv1"), ("c", "hv2")):
        p, ofport = n.port("green", name)
        fate = n.fabric.sims[host].run(arp_request(p.mac, str(p.ip), "10.0.0.99"), ofport)
        meters = [a for h in fate.path if h.flow is not None for a in h.flow.actions if isinstance(a, Meter)]
        assert [m.meter_id for m in meters] == [BUM_METER_BASE + ofport], fate.path
        assert meters[0].unit == "pktps"
        assert meters[0].rate_kbps == (50 if name == "c" else DEFAULT_BUM_PPS)
    bands = meters_of(n.flows["hv2"].values())
    assert bands[BUM_METER_BASE + n.port("green", "c")[1]][:1] == (50,)


def test_twins_have_meters_of_their_own():
    n = Net(world(GREEN, green("twin")))
    ids = set(meters_of(n.flows["hv1"].values()))
    bum = {m for m in ids if m < CONTROL_METER_BASE}
    control = ids - bum
    assert len(bum) == 4  # a and b of each twin on hv1, each its own meter
    assert len(control) == 2  # each twin its own control-plane meter (DHCP, DNS, path MTU)


@pytest.mark.parametrize("value", [0, -3, 1.5, "many", True, 2_000_000])
def test_bum_limit_must_be_a_whole_positive_rate(value):
    with pytest.raises(ValidationError) as e:
        load_tenant(green(c={"bumLimitPps": value}), HOSTS.keys())
    assert any(path == "spec.ports[2].bumLimitPps" and "packets per second" in why for path, why in e.value.errors)
