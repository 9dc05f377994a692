"""OpenFlow 1.3 wire bytes for our flows: the hot path of installing thousands at once.

os-ken builds a message object per flow-mod and serializes it field by field in Python
(about 130 us a flow here, 20 times what OVS takes to apply it). But a host's flows are
made of a few thousand distinct match tests and actions. So each distinct piece is
encoded once, by os-ken itself, and cached; a flow-mod is then two struct headers and a
concatenation of cached bytes, and a bundle of them is one buffer for one socket write.
`tests/unit/test_ofwire.py` checks the bytes equal os-ken's own for every flow the
compiler makes in the golden and benchmark tenants.
"""
from __future__ import annotations

import struct
from functools import lru_cache
from types import SimpleNamespace

from os_ken.ofproto import ofproto_common
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from controller.switch.ofcodec import to_action  # the one place an action's encoding is chosen
from dataplane.match_action import Flow, Goto, Meter

_DP = SimpleNamespace(ofproto=ofp, ofproto_parser=parser, id=0)  # what os-ken's encoders read

_HEADER = struct.Struct("!BBHI")  # version, type, length, xid
_FLOW_MOD = struct.Struct("!QQBBHHHIIIH2x")  # cookie .. flags (ofp_flow_mod after the header)
_MATCH_HEADER = struct.Struct("!HH")
_INSTRUCTION = struct.Struct("!HH")
_METER = struct.Struct("!HHI")
_GOTO = struct.Struct("!HHB3x")
_BUNDLE_ADD = struct.Struct("!IIIHH")  # experimenter, exp_type, bundle id, pad, flags
_EMPTY_MATCH = _MATCH_HEADER.pack(ofp.OFPMT_OXM, 4) + bytes(4)


@lru_cache(maxsize=1 << 17)
def _oxm(item: tuple) -> tuple[int, bytes]:
    """(os-ken's sort key, TLV bytes) of one match item (name, value, mask, text)."""
    name, value, mask, _ = item
    k, v = ofp.oxm_normalize_user(name, value if mask is None else (value, mask))
    n, v, m = ofp.oxm_from_user(k, v)
    buf = bytearray()
    ofp.oxm_serialize(n, v, m, buf, 0)
    return (n[0] if isinstance(n, tuple) else n), bytes(buf)


def match_bytes(match) -> bytes:
    """An ofp_match (OXM), padded to 8 bytes, fields in the order os-ken writes them."""
    tlvs = [_oxm(it) for it in match.items]
    if len(tlvs) > 1:
        tlvs.sort()  # by OXM type: os-ken's order (prerequisites first)
    body = b"".join([t[1] for t in tlvs])
    length = 4 + len(body)
    return _MATCH_HEADER.pack(ofp.OFPMT_OXM, length) + body + bytes(-length % 8)


@lru_cache(maxsize=1 << 16)
def _action(a) -> bytes:
    buf = bytearray()
    to_action(parser, ofp, a).serialize(buf, 0)
    return bytes(buf)


def instructions_bytes(actions: tuple) -> bytes:
    """Meter first, then apply-actions, then goto: what ofadapter.to_flow_mod builds."""
    out = b""
    body = []
    for a in actions:
        t = type(a)
        if t is Meter:
            out += _METER.pack(ofp.OFPIT_METER, 8, a.meter_id)
        elif t is not Goto:
            body.append(_action(a))
    if body:
        acts = b"".join(body)
        out += _INSTRUCTION.pack(ofp.OFPIT_APPLY_ACTIONS, 8 + len(acts)) + bytes(4) + acts
    if actions and type(actions[-1]) is Goto:
        out += _GOTO.pack(ofp.OFPIT_GOTO_TABLE, 8, actions[-1].table.number)
    return out


def flow_mod(f: Flow, xid: int, reset_counts: bool = False) -> bytes:
    """OFPT_FLOW_MOD, OFPFC_ADD, for one flow (OFPFF_RESET_COUNTS: replacing a flow of
    the same identity starts its counters from zero instead of keeping them)."""
    tail = match_bytes(f.match) + instructions_bytes(f.actions)
    length = 8 + _FLOW_MOD.size + len(tail)
    return (_HEADER.pack(ofp.OFP_VERSION, ofp.OFPT_FLOW_MOD, length, xid)
            + _FLOW_MOD.pack(f.cookie, 0, f.table.number, ofp.OFPFC_ADD, 0, 0, f.priority,
                             ofp.OFP_NO_BUFFER, ofp.OFPP_ANY, ofp.OFPG_ANY,
                             ofp.OFPFF_RESET_COUNTS if reset_counts else 0)
            + tail)


def delete_strict(f: Flow, xid: int) -> bytes:
    """OFPT_FLOW_MOD, OFPFC_DELETE_STRICT of the one flow with f's identity (table,
    priority, match), whatever cookie and actions it has on the switch."""
    tail = match_bytes(f.match)
    length = 8 + _FLOW_MOD.size + len(tail)
    return (_HEADER.pack(ofp.OFP_VERSION, ofp.OFPT_FLOW_MOD, length, xid)
            + _FLOW_MOD.pack(0, 0, f.table.number, ofp.OFPFC_DELETE_STRICT, 0, 0, f.priority,
                             ofp.OFP_NO_BUFFER, ofp.OFPP_ANY, ofp.OFPG_ANY, 0)
            + tail)


def delete_by_cookie(cookie: int, xid: int) -> bytes:
    """OFPT_FLOW_MOD, OFPFC_DELETE of every flow with this exact cookie, in all tables."""
    length = 8 + _FLOW_MOD.size + len(_EMPTY_MATCH)
    return (_HEADER.pack(ofp.OFP_VERSION, ofp.OFPT_FLOW_MOD, length, xid)
            + _FLOW_MOD.pack(cookie, 0xFFFFFFFFFFFFFFFF, ofp.OFPTT_ALL, ofp.OFPFC_DELETE, 0, 0,
                             ofp.OFP_DEFAULT_PRIORITY, ofp.OFP_NO_BUFFER, ofp.OFPP_ANY,
                             ofp.OFPG_ANY, 0)
            + _EMPTY_MATCH)


def bundle_add(bundle_id: int, flags: int, message: bytes) -> bytes:
    """ONF bundle-add (OpenFlow 1.3 extension 230) around one message; the outer xid
    is the inner message's, as the extension requires."""
    xid = message[4:8]
    length = 8 + _BUNDLE_ADD.size + len(message)
    return (struct.pack("!BBH", ofp.OFP_VERSION, ofp.OFPT_EXPERIMENTER, length) + xid
            + _BUNDLE_ADD.pack(ofproto_common.ONF_EXPERIMENTER_ID, ofp.ONF_ET_BUNDLE_ADD_MESSAGE, bundle_id, 0, flags)
            + message)
