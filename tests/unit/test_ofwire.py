"""The fast flow-mod encoder against os-ken's own serializer: byte for byte, for every
flow the compiler makes (every layer, NAT, load balancer, meters, ACLs)."""
from os_ken.ofproto import ofproto_v1_3 as ofp

from bench.synth import deployment
from controller import ofwire
from controller.compiler import compile_world
from controller.ofadapter import delete_cookie, to_flow_mod
from tests.unit.fixtures import world
from tests.unit.test_golden import DOC, HOSTS

DP = ofwire._DP


def oskn(msg, xid: int) -> bytes:
    msg.set_xid(xid)
    msg.serialize()
    return bytes(msg.buf)


def all_flows():
    flows = {}
    for fl in compile_world(HOSTS, world(DOC, hosts=HOSTS)).values():
        flows.update(fl)
    hs, w, _ = deployment(12, 10, 4)
    for fl in compile_world(hs, w).values():
        flows.update(fl)
    return list(flows.values())


def test_flow_mods_are_byte_identical_to_os_ken():
    flows = all_flows()
    assert len(flows) > 1000
    kinds = {type(a).__name__ for f in flows for a in f.actions}
    assert {"Ct", "Group", "Meter", "SetField", "Move", "Resubmit", "Goto", "Output", "DecTtl"} <= kinds
    for i, f in enumerate(flows):
        assert ofwire.flow_mod(f, 1000 + i) == oskn(to_flow_mod(DP, f), 1000 + i), f.ofctl()


def test_bundle_add_and_delete_are_byte_identical_to_os_ken():
    parser = DP.ofproto_parser
    flags = ofp.ONF_BF_ATOMIC | ofp.ONF_BF_ORDERED
    f = all_flows()[7]
    inner = to_flow_mod(DP, f)
    want = oskn(parser.ONFBundleAddMsg(DP, 42, flags, inner, []), 77)
    assert ofwire.bundle_add(42, flags, ofwire.flow_mod(f, 77)) == want
    cookie = f.cookie
    assert ofwire.delete_by_cookie(cookie, 9) == oskn(delete_cookie(DP, cookie), 9)
