"""Reading switches back on (re)connect: the parse cache gives the same values as a
plain parse, shares them between hosts, keeps nothing once no switch is being read;
and after a full sync the controller compares what it wrote by identity."""
import struct

from controller.compile.pipeline import PIPELINE
from controller.switch import ofcodec, ofwire
from controller.switch.reconciler import HostState, in_sync, reconcile
from controller.switch.fake import FakeSwitch
from dataplane.match_action import Opaque
from tests.unit.test_ofwire import all_flows


def _reply(flows) -> bytes:
    """A flow-stats reply body for these flows, with the match and instructions our
    flow-mods carry (and counters that differ from entry to entry, as on a switch)."""
    out = bytearray()
    for i, f in enumerate(flows):
        tail = ofwire.match_bytes(f.match) + ofwire.instructions_bytes(f.actions)
        out += struct.pack("!HBxIIHHHH4xQQQ", 48 + len(tail), f.table.number, 10 + i, 0, f.priority, 0, 0, 0,
                           f.cookie, i, i * 100) + tail
    return bytes(out)


def _entries(buf: bytes) -> list:
    off, out = 0, []
    while off < len(buf):
        st = ofcodec.LazyFlowStats.parser(buf, off)
        off += st.length
        out.append(st)
    return out


def test_cached_read_back_equals_the_plain_parse_for_every_compiled_flow():
    flows = all_flows()
    buf = _reply(flows)
    plain = [ofcodec.flow_from_stats(st, PIPELINE) for st in _entries(buf)]
    with ofcodec.READBACK as cache:
        cached = [ofcodec.flow_from_entry(st, PIPELINE, cache) for st in _entries(buf)]
    assert len(cached) == len(flows) > 1000
    for f, a, b in zip(flows, plain, cached):
        assert b == a == f, f.ofctl()
        assert b.identity == f.identity and b.cookie == f.cookie and b.reported and b.body == a.body


def test_two_hosts_reporting_the_same_bytes_share_one_value_and_the_cache_empties_after():
    flows = all_flows()[:200]
    with ofcodec.READBACK as cache:
        one = [ofcodec.flow_from_entry(st, PIPELINE, cache) for st in _entries(_reply(flows))]
        with ofcodec.READBACK:  # a second switch read at the same time
            two = [ofcodec.flow_from_entry(st, PIPELINE, cache) for st in _entries(_reply(flows))]
        assert all(a is b for a, b in zip(one, two))
        assert len(cache.flows) == len({(f.table.number, f.priority, f.cookie, f.match, f.actions) for f in flows})
    assert not cache.flows and not cache.matches and not cache.actions  # nothing kept between reads


def test_an_entry_parsed_already_and_a_match_we_do_not_model_come_back_as_in_the_plain_parse():
    f = all_flows()[3]
    st = _entries(_reply([f]))[0]
    st.match  # asked for first (a counter read that looked): the parse is done, not done again
    with ofcodec.READBACK as cache:
        assert ofcodec.flow_from_entry(st, PIPELINE, cache) == f
    # a match on a field we never use (OXM vlan_pcp: class 0x8000, field 7, 1 byte)
    match = struct.pack("!HHIB", 1, 4 + 5, 0x80000E01, 3)
    match += bytes(-len(match) % 8)
    tail = match + ofwire.instructions_bytes(f.actions)
    raw = struct.pack("!HBxIIHHHH4xQQQ", 48 + len(tail), f.table.number, 1, 0, f.priority, 0, 0, 0,
                      f.cookie, 0, 0) + tail
    plain = ofcodec.flow_from_stats(_entries(raw)[0], PIPELINE)
    with ofcodec.READBACK as cache:
        got = ofcodec.flow_from_entry(_entries(raw)[0], PIPELINE, cache)
    assert isinstance(got.actions[0], Opaque) and got.body == plain.body and got != f


def test_after_a_full_sync_the_flows_written_are_compared_by_identity():
    flows = [f for f in all_flows() if not f.extras][:300]  # no meters or groups to count
    sw = FakeSwitch()
    for f in flows[:250]:  # most already there, as after a controller restart
        sw.table[f.identity] = f
    desired = {f.identity: f for f in flows}
    st = HostState(session=sw)
    assert reconcile(st, desired) == 50  # the 50 missing, nothing else
    assert st.installed == desired and all(st.installed[i] is f for i, f in desired.items())
    st.synced_session = sw
    assert in_sync(st, desired)
    del sw.table[flows[0].identity]  # drift behind our back is still seen by a fresh read
    st.forget()
    assert reconcile(st, desired) == 1 and sw.table == desired
