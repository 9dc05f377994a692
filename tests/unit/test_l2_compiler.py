"""The L2 pipeline, checked by sending packets through the compiled flows of all hosts."""
from controller.compile.compiler import TUNNEL_OFPORT, compile_world
from controller.compile.pipeline import PIPELINE
from dataplane.match_action import BROADCAST_MAC, Fabric, cookie_layer
from controller.compile.pipeline import LAYER_BY_ID
from tests.unit.fixtures import BLUE, HOSTS, RED, Net, tenant_yaml, world
from tests.unit.packets import arp_request, icmp


def net():
    return Net(world(BLUE, RED))


def ping(n, tenant, src, dst):
    s, _ = n.port(tenant, src)
    d, _ = n.port(tenant, dst)
    return n.send(tenant, src, icmp(s.mac, d.mac, str(s.ip), str(d.ip)))


def test_unicast_same_host_and_across_hosts_reaches_exactly_the_destination():
    n = net()
    for tenant in ("blue", "red"):
        t, _ = n.tenants[tenant]
        for src in t.ports:
            for dst in t.ports:
                if src is dst:
                    continue
                got = ping(n, tenant, src.name, dst.name)
                assert n.who(got) == [(tenant, dst.name)], (tenant, src.name, dst.name)


def test_across_hosts_the_packet_rides_vxlan_with_the_switch_vni_to_the_owner_pa():
    n = net()
    got = ping(n, "blue", "vm1", "vm2")  # hv1 -> hv2
    (d,) = got
    src_host, first = d.hops[0]
    assert src_host == "hv1" and first.ports() == [TUNNEL_OFPORT]
    wire = first.outputs[0].packet
    _, alloc = n.tenants["blue"]
    assert wire["tunnel_id"] == alloc.vni["web"]
    assert wire["tun_ipv4_dst"] == HOSTS["hv2"].pa
    assert [h for h, _ in d.hops] == ["hv1", "hv2"]


def test_tenants_with_the_same_addresses_never_reach_each_other():
    n = net()
    blue_vm1, _ = n.port("blue", "vm1")
    red_vm4, _ = n.port("red", "vm4")  # the one MAC only red has
    got = n.send("blue", "vm1", icmp(blue_vm1.mac, red_vm4.mac, "10.0.0.11", "10.0.0.14"))
    assert all(t == "blue" for t, _ in n.who(got))
    # broadcast from blue reaches all of blue and nothing of red
    b = n.send("blue", "vm1", {**icmp(blue_vm1.mac, BROADCAST_MAC, "10.0.0.11", "10.0.0.255")})
    assert n.who(b) == [("blue", "vm2"), ("blue", "vm3"), ("blue", "vm4")]


def test_arp_for_a_known_address_is_answered_at_the_source_host():
    n = net()
    vm1, ofport = n.port("blue", "vm1")
    vm3, _ = n.port("blue", "vm3")
    got = n.send("blue", "vm1", arp_request(vm1.mac, "10.0.0.11", "10.0.0.13"))
    (d,) = got
    assert d.host == "hv1" and d.port == ofport and len(d.hops) == 1  # never left hv1
    reply = d.packet
    assert reply["arp_op"] == 2 and reply["arp_sha"] == vm3.mac and reply["arp_spa"] == "10.0.0.13"
    assert reply["eth_src"] == vm3.mac and reply["eth_dst"] == vm1.mac
    assert reply["arp_tha"] == vm1.mac and reply["arp_tpa"] == "10.0.0.11"


def test_arp_for_an_unknown_address_floods_only_to_hosts_of_the_switch():
    tenants = world(tenant_yaml("green", "g", [("a", "10.0.0.11", "hv1"), ("b", "10.0.0.12", "hv2")]))
    n = Net(tenants)
    a, _ = n.port("green", "a")
    got = n.send("green", "a", arp_request(a.mac, "10.0.0.11", "10.0.0.99"))
    assert n.who(got) == [("green", "b")]
    hv1 = n.fabric.sims["hv1"].run({**arp_request(a.mac, "10.0.0.11", "10.0.0.99")}, 10)
    tunnel_copies = [e.packet["tun_ipv4_dst"] for e in hv1.outputs if e.port == TUNNEL_OFPORT]
    assert tunnel_copies == [HOSTS["hv2"].pa]  # hv3 has no port of switch g: no copy
    assert not n.fabric.lost


def test_flood_from_the_tunnel_is_not_sent_back_into_the_tunnel():
    n = net()
    _, alloc = n.tenants["blue"]
    pkt = {**icmp("02:00:0a:00:00:0c", BROADCAST_MAC, "10.0.0.12", "10.0.0.255"),
           "tunnel_id": alloc.vni["web"], "tun_ipv4_src": HOSTS["hv2"].pa}
    fate = n.fabric.sims["hv1"].run(pkt, TUNNEL_OFPORT)
    assert TUNNEL_OFPORT not in fate.ports()
    assert sorted(fate.ports()) == sorted([alloc.ofport["vm1"], alloc.ofport["vm4"]])


def dropped_by(fate):
    f = fate.decided_by()
    return f.table.name, LAYER_BY_ID[cookie_layer(f.cookie)].name


def test_port_security_drops_forged_mac_ip_and_arp():
    n = net()
    vm1, ofport = n.port("blue", "vm1")
    vm2, _ = n.port("blue", "vm2")
    sim = n.fabric.sims["hv1"]
    forged = [
        icmp("02:00:de:ad:be:ef", vm2.mac, "10.0.0.11", "10.0.0.12"),  # wrong MAC
        icmp(vm1.mac, vm2.mac, "10.0.0.99", "10.0.0.12"),  # wrong IP
        {**arp_request(vm1.mac, "10.0.0.12", "10.0.0.13")},  # ARP claiming vm2's IP
        {**arp_request(vm1.mac, "10.0.0.11", "10.0.0.13"), "arp_sha": "02:00:de:ad:be:ef"},
        {"eth_src": vm1.mac, "eth_dst": vm2.mac, "eth_type": 0x86DD},  # IPv6: not allowed
    ]
    for pkt in forged:
        fate = sim.run(pkt, ofport)
        assert fate.dropped, pkt
        assert dropped_by(fate) == ("port_security", "port_security"), pkt
    ok = sim.run(icmp(vm1.mac, vm2.mac, "10.0.0.11", "10.0.0.12"), ofport)
    assert not ok.dropped


def test_tunnel_packets_only_from_known_provider_addresses_and_vnis():
    n = net()
    _, alloc = n.tenants["blue"]
    vm1, ofport = n.port("blue", "vm1")
    base = icmp("02:00:0a:00:00:0c", vm1.mac, "10.0.0.12", "10.0.0.11")
    sim = n.fabric.sims["hv1"]
    good = sim.run({**base, "tunnel_id": alloc.vni["web"], "tun_ipv4_src": HOSTS["hv2"].pa}, TUNNEL_OFPORT)
    assert good.ports() == [ofport]
    stranger = sim.run({**base, "tunnel_id": alloc.vni["web"], "tun_ipv4_src": "192.0.2.99"}, TUNNEL_OFPORT)
    assert stranger.dropped and dropped_by(stranger) == ("classify", "classify")
    unknown_vni = sim.run({**base, "tunnel_id": 4242, "tun_ipv4_src": HOSTS["hv2"].pa}, TUNNEL_OFPORT)
    assert unknown_vni.dropped and dropped_by(unknown_vni) == ("tunnel_vni", "classify")


def test_hosts_without_ports_of_a_tenant_get_none_of_its_flows():
    tenants = world(tenant_yaml("solo", "s", [("a", "10.0.0.11", "hv1"), ("b", "10.0.0.12", "hv1")]))
    flows = compile_world(HOSTS, tenants)
    _, alloc = tenants["solo"]
    from dataplane.match_action import cookie_tenant
    assert any(cookie_tenant(c) == alloc.tenant_id for c in flows["hv1"])
    for h in ("hv2", "hv3"):
        assert not any(cookie_tenant(c) == alloc.tenant_id for c in flows[h])
    # and hv1 sends nothing into the tunnel for this switch: a flood stays local
    a = tenants["solo"][0].port("a")
    fab = Fabric(PIPELINE, {h: (flows[h].values(), HOSTS[h].pa) for h in HOSTS}, TUNNEL_OFPORT)
    fate = fab.sims["hv1"].run(arp_request(a.mac, "10.0.0.11", "10.0.0.99"), alloc.ofport["a"])
    assert fate.ports() == [alloc.ofport["b"]]


def test_compiling_twice_gives_the_same_flow_text():
    a = compile_world(HOSTS, world(BLUE, RED))
    b = compile_world(HOSTS, world(BLUE, RED))
    for h in HOSTS:
        assert sorted(f.ofctl() for f in a[h].values()) == sorted(f.ofctl() for f in b[h].values())
