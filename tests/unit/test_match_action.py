"""Flow values, table contracts and the strict simulator."""
import pytest

from dataplane.match_action import (ContractError, Flow, Goto, Match, Move, Output, Pipeline,
                                    Resubmit, SetField, Simulator, Table, Unsupported, IN_PORT,
                                    cookie_layer, cookie_tenant, flows_by_cookie)


def pipeline():
    return Pipeline([
        Table("a", frozenset({"in_port", "eth_dst", "reg1"}), ("b", "c")),
        Table("b", frozenset({"eth_type", "ipv4_dst", "reg1"}), ("c",)),
        Table("c", frozenset({"reg1"}), ()),
    ])


def test_match_checks_openflow_prerequisites():
    with pytest.raises(ValueError, match="needs eth_type"):
        Match.of(arp_tpa="10.0.0.1")
    assert Match.of(eth_type=0x806, arp_tpa="10.0.0.1").get("arp_tpa") == "10.0.0.1"


def test_match_prefix_and_mask_render_like_ovs_ofctl():
    m = Match.of(eth_type=0x800, ipv4_dst="10.0.1.0/24", reg9=(1, 1))
    assert m.ofctl() == "dl_type=0x800,nw_dst=10.0.1.0/24,reg9=0x1/0x1"
    with pytest.raises(ValueError, match="outside mask"):
        Match.of(reg9=(3, 1))
    with pytest.raises(ValueError):
        Match.of(eth_type=0x800, ipv4_dst="10.0.1.1/24")  # host bits set


def test_masked_match_semantics():
    m = Match.of(eth_type=0x800, ipv4_dst="10.0.1.0/24")
    assert m.matches({"eth_type": 0x800, "ipv4_dst": "10.0.1.77"})
    assert not m.matches({"eth_type": 0x800, "ipv4_dst": "10.0.2.77"})
    assert not m.matches({"eth_type": 0x806})  # field absent: no match


def test_table_refuses_undeclared_field_and_successor_and_backward_goto():
    p = pipeline()
    with pytest.raises(ContractError, match="undeclared field"):
        p["c"].check(Flow(p["c"], 1, Match.of(in_port=1)))
    with pytest.raises(ContractError, match="not a declared successor"):
        p["b"].check(Flow(p["b"], 1, Match(), (Goto(p["a"]),)))
    with pytest.raises(ContractError, match="last action"):
        p["a"].check(Flow(p["a"], 1, Match(), (Goto(p["b"]), Output(1))))
    bad = Pipeline([Table("x", frozenset(), ("y",)), Table("y", frozenset(), ("x",))])
    with pytest.raises(ContractError, match="backwards"):
        bad["y"].check(Flow(bad["y"], 1, Match(), (Goto(bad["x"]),)))


def test_cookie_carries_layer_tenant_and_changes_with_content():
    p = pipeline()
    f1 = Flow(p["a"], 10, Match.of(in_port=1), (Output(2),), layer_id=3, tenant_id=77)
    f2 = Flow(p["a"], 10, Match.of(in_port=1), (Output(3),), layer_id=3, tenant_id=77)
    assert cookie_layer(f1.cookie) == 3 and cookie_tenant(f1.cookie) == 77
    assert f1.cookie != f2.cookie
    same = Flow(p["a"], 10, Match.of(in_port=1), (Output(2),), layer_id=3, tenant_id=77, rule="x")
    assert same == f1 and same.cookie == f1.cookie  # rule is a note, not content
    assert flows_by_cookie([f1, same]) == {f1.cookie: f1}


def test_simulator_priority_goto_resubmit_and_ingress_port_drop():
    p = pipeline()
    flows = [
        Flow(p["a"], 10, Match.of(in_port=1), (SetField("reg1", 5), Goto(p["b"]))),
        Flow(p["a"], 20, Match.of(in_port=1, eth_dst="02:00:00:00:00:09"), (Output(IN_PORT),)),
        Flow(p["b"], 10, Match.of(reg1=5), (Resubmit(p["c"]), Output(1), Output(4))),
        Flow(p["c"], 10, Match.of(reg1=5), (Output(3),)),
    ]
    sim = Simulator(p, flows)
    fate = sim.run({"eth_dst": "02:00:00:00:00:01"}, in_port=1)
    assert fate.ports() == [3, 4]  # output:1 == in_port is dropped, as OVS does
    assert [h.table for h in fate.path] == ["a", "b", "c"]
    hairpin = sim.run({"eth_dst": "02:00:00:00:00:09"}, in_port=1)
    assert hairpin.ports() == [1]  # explicit IN_PORT is allowed
    miss = sim.run({"eth_dst": "02:00:00:00:00:01"}, in_port=2)
    assert miss.dropped and miss.path[-1].flow is None


def test_simulator_refuses_what_it_does_not_model():
    p = pipeline()
    sim = Simulator(p, [Flow(p["a"], 1, Match(), (Move("eth_src", "eth_dst"),))])
    with pytest.raises(Unsupported, match="absent field"):
        sim.run({"eth_dst": "02:00:00:00:00:01"}, in_port=1)
    with pytest.raises(Unsupported, match="not modelled"):
        sim.run({"vlan_vid": 3}, in_port=1)
    twins = Simulator(p, [Flow(p["a"], 5, Match.of(in_port=1), (Output(2),)),
                          Flow(p["a"], 5, Match.of(eth_dst="02:00:00:00:00:01"), (Output(3),))])
    with pytest.raises(Unsupported, match="two flows of priority 5"):
        twins.run({"eth_dst": "02:00:00:00:00:01"}, in_port=1)


def test_masked_set_field_renders_as_load_and_needs_contiguous_mask():
    assert SetField("reg10", 1, 1).ofctl() == "load:0x1->NXM_NX_REG10[0..0]"
    assert SetField("reg10", 0x30, 0x30).ofctl() == "load:0x3->NXM_NX_REG10[4..5]"
    with pytest.raises(ValueError, match="contiguous"):
        SetField("reg10", 5, 5).bit_range()
