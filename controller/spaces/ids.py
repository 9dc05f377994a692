"""Every number space the controller hands out or reserves, in one place.

An OpenFlow switch has one meter table, one group table, one ofport numbering and one
set of conntrack zones, shared by every layer and every tenant on the host. Two uses of
the same space (the port rate meters and the BUM meters, say) stay apart only because
their ranges do not meet; the ranges are declared here once, as (name, first, last),
and an overlap, or a range beyond what the protocol allows, is refused at import time,
as `controller.spaces.registers` refuses overlapping registers.

Everything else takes these names from here; a new use of a space is a new `Space`
line below, and the check tells at once whether it fits.
"""
from __future__ import annotations

from dataclasses import dataclass

from dataplane.match_action import COOKIE_TENANT_MAX

# --- ofports on br-int -------------------------------------------------------------
TUNNEL_OFPORT = 1  # the flow-based VXLAN port's ofport on every br-int
FIRST_OFPORT = 10  # below: reserved for infrastructure ports (the tunnel is 1)
MAX_OFPORT = 0xEFFF  # the largest workload ofport; above it, up to what OVS lets one request, peer tunnels
# a host with the provider network gets one number here (HostRecord.info["peer_port"]): on every
# other host, the VXLAN port with a fixed remote_ip toward it, which runs BFD (gateway liveness)
FIRST_PEER_TUNNEL_OFPORT, MAX_PEER_TUNNEL_OFPORT = 0xF000, 0xFEFF  # OFPP_MAX is 0xff00

# --- tenants ------------------------------------------------------------------------
FIRST_TENANT_ID = 1  # 0 in a cookie means "no tenant" (infrastructure flows)
MAX_TENANT_ID = COOKIE_TENANT_MAX  # a tenant id rides in every flow's cookie

# --- logical switches (VNI = the logical_switch register's value) ----------------------
FIRST_VNI = 1000
BFD_VNI = 1  # the key of the BFD ports between hosts (controller.server.peers): below every switch's VNI
MAX_VNI = (1 << 24) - 1  # VXLAN's VNI is 24 bits
EXTERNAL_NET_KEY = 1 << 24  # logical_switch value of the provider's external network (no VNI is this big)

# --- logical port keys (the inport/outport registers' value, within a switch) -----------
FIRST_PORT_KEY = 1
FLOOD_PORT_KEY = 0xFFFF  # outport value meaning "every port of the switch"
MAX_PORT_KEY = FLOOD_PORT_KEY - 1

# --- conntrack zones, OpenFlow groups -------------------------------------------------
FIRST_ZONE, MAX_ZONE = 1, 0xFFFF
FIRST_GROUP = 1
MAX_GROUP = 0x0FFFFFFF  # load balancers' (allocated)
# a router's gateway groups are its transit VNI's, in two ranges: on every host of the
# router, the fast-failover choice of its active gateway; on a standby gateway, whether
# the gateways before it are alive (then it stays quiet)
GATEWAY_GROUP_BASE = 0x10000000
STANDBY_GROUP_BASE = 0x20000000

# --- meters: one table per host, four uses -------------------------------------------
# port rate limit (qos):  id = the port's ofport
BUM_METER_BASE = 1 << 16  # qos: a port's flood limit, id = base + ofport
CONTROL_METER_BASE = 1 << 24  # services: a tenant's packets to the controller, id = base + tenant id
ACL_LOG_METER_BASE = 1 << 25  # acl: a tenant's logged-rule copies, id = base + tenant id


@dataclass(frozen=True)
class Space:
    kind: str  # which number: ranges of one kind must not meet
    name: str
    first: int
    last: int  # inclusive
    doc: str = ""

    def __contains__(self, n: int) -> bool:
        return self.first <= n <= self.last


# What the protocol (or the field that carries the number) allows, per kind.
LIMITS: dict[str, tuple[int, int]] = {
    "ofport": (1, 0xFEFF),  # OVS ofport_request
    "tenant_id": (1, COOKIE_TENANT_MAX),  # the cookie's tenant field
    "vni": (0, (1 << 24) - 1),  # VXLAN
    "logical_switch": (0, (1 << 32) - 1),  # reg13
    "port_key": (0, 0xFFFF),  # FLOOD_PORT_KEY is the top of it
    "zone": (0, 0xFFFF),  # ct(zone=) is 16 bits
    "group": (0, 0xFFFFFF00),  # OFPG_MAX
    "meter": (1, 0xFFFF0000),  # OFPM_MAX
}


def _offset(kind: str, name: str, base: int, of: Space, doc: str) -> Space:
    """The ids `base + n` for every n of space `of`."""
    return Space(kind, name, base + of.first, base + of.last, doc)


INFRA_OFPORTS = Space("ofport", "infrastructure ports", 1, FIRST_OFPORT - 1,
                      "the VXLAN tunnel (TUNNEL_OFPORT) and a gateway host's external port")
WORKLOAD_OFPORTS = Space("ofport", "workload ports", FIRST_OFPORT, MAX_OFPORT, "handed out per host by the allocator")
PEER_TUNNEL_OFPORTS = Space("ofport", "peer tunnels", FIRST_PEER_TUNNEL_OFPORT, MAX_PEER_TUNNEL_OFPORT,
                            "a VXLAN port with BFD toward each host with the provider network")
TENANT_IDS = Space("tenant_id", "tenant ids", FIRST_TENANT_ID, MAX_TENANT_ID)
VNIS = Space("vni", "VNIs", FIRST_VNI, MAX_VNI, "a switch's, and a router's transit path to its gateway")

SPACES: tuple[Space, ...] = (
    INFRA_OFPORTS,
    WORKLOAD_OFPORTS,
    PEER_TUNNEL_OFPORTS,
    TENANT_IDS,
    VNIS,
    Space("vni", "BFD between hosts", BFD_VNI, BFD_VNI, "the peer tunnels' key: BFD only"),
    Space("logical_switch", "switch VNIs", FIRST_VNI, MAX_VNI, "a switch's logical_switch value is its VNI"),
    Space("logical_switch", "external network", EXTERNAL_NET_KEY, EXTERNAL_NET_KEY),
    Space("port_key", "logical ports", FIRST_PORT_KEY, MAX_PORT_KEY, "unique within a switch"),
    Space("port_key", "flood", FLOOD_PORT_KEY, FLOOD_PORT_KEY, "outport: every port of the switch"),
    Space("zone", "conntrack zones", FIRST_ZONE, MAX_ZONE, "a guarded port's, a router's NAT, a tenant's LB"),
    Space("group", "load balancer groups", FIRST_GROUP, MAX_GROUP),
    _offset("group", "gateway groups", GATEWAY_GROUP_BASE, VNIS, "id = GATEWAY_GROUP_BASE + transit VNI"),
    _offset("group", "standby gateway groups", STANDBY_GROUP_BASE, VNIS, "id = STANDBY_GROUP_BASE + transit VNI"),
    Space("meter", "port rate meters", WORKLOAD_OFPORTS.first, WORKLOAD_OFPORTS.last, "id = ofport"),
    _offset("meter", "BUM meters", BUM_METER_BASE, WORKLOAD_OFPORTS, "id = BUM_METER_BASE + ofport"),
    _offset("meter", "control-plane meters", CONTROL_METER_BASE, TENANT_IDS, "id = CONTROL_METER_BASE + tenant id"),
    _offset("meter", "ACL log meters", ACL_LOG_METER_BASE, TENANT_IDS, "id = ACL_LOG_METER_BASE + tenant id"),
)


def check_spaces(spaces, limits=LIMITS) -> None:
    """Raise ValueError if two ranges of one kind meet, or a range is empty or beyond
    what its kind allows."""
    by_kind: dict[str, list[Space]] = {}
    for s in spaces:
        if s.kind not in limits:
            raise ValueError(f"id space {s.name}: unknown kind {s.kind!r}")
        lo, hi = limits[s.kind]
        if s.first > s.last:
            raise ValueError(f"id space {s.name}: empty ({s.first}..{s.last})")
        if s.first < lo or s.last > hi:
            raise ValueError(f"id space {s.name}: {s.first}..{s.last} is beyond the {s.kind} range {lo}..{hi}")
        by_kind.setdefault(s.kind, []).append(s)
    for kind, ranges in by_kind.items():
        ranges.sort(key=lambda s: (s.first, s.last))
        for a, b in zip(ranges, ranges[1:]):
            if b.first <= a.last:
                raise ValueError(f"{kind} ids: {b.name} ({b.first}..{b.last}) overlaps "
                                 f"{a.name} ({a.first}..{a.last})")


check_spaces(SPACES)
if TUNNEL_OFPORT not in INFRA_OFPORTS:
    raise ValueError(f"TUNNEL_OFPORT {TUNNEL_OFPORT} is not an infrastructure ofport")
