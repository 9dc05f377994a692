"""verify's check of what OVSDB says is on each ofport the flows deliver to: a workload
plugged on the wrong ofport (another tenant's, a twin's with the same port name) is a
problem, the right one is not."""
from controller.compile.compiler import TUNNEL_OFPORT
from controller.analysis.installed import check_interfaces
from tep.ovs import TUNNEL_PORT_NAME

PA = "192.0.2.11"
TUNNEL = {"name": TUNNEL_PORT_NAME, "type": "vxlan", "ofport": TUNNEL_OFPORT,
          "options": {"local_ip": PA, "remote_ip": "flow", "key": "flow"}, "external_ids": {}}


def _port(ofport: int, iface_id: str) -> dict:
    return {"name": f"w{ofport}", "type": "", "ofport": ofport, "options": {}, "external_ids": {"iface-id": iface_id}}


def test_each_ofport_holding_the_port_its_flows_deliver_to_is_clean():
    got = check_interfaces("hv1", PA, [TUNNEL, _port(10, "blue/vm1"), _port(11, "red/vm1")],
                           {10: ("blue", "vm1"), 11: ("red", "vm1")})
    assert got == []


def test_a_twins_workload_on_the_other_twins_ofport_is_reported():
    got = check_interfaces("hv1", PA, [TUNNEL, _port(10, "red/vm1"), _port(11, "blue/vm1")],
                           {10: ("blue", "vm1"), 11: ("red", "vm1")})
    assert [(p["ofport"], p["tenant"]) for p in got] == [(10, "blue"), (11, "red")]
    assert "belongs to red/vm1, but blue/vm1's flows deliver there" in got[0]["problem"]


def test_a_port_not_plugged_yet_is_no_problem_but_a_wrong_tunnel_is():
    assert check_interfaces("hv1", PA, [TUNNEL], {10: ("blue", "vm1")}) == []
    wrong = {**TUNNEL, "options": {**TUNNEL["options"], "local_ip": "192.0.2.99"}}
    got = check_interfaces("hv1", PA, [wrong], {})
    assert len(got) == 1 and got[0]["ofport"] == TUNNEL_OFPORT and "local_ip=192.0.2.11" in got[0]["problem"]
