"""QoS: a per-port limit on what a workload sends, with an OpenFlow meter (drop band).

The meter's id is the port's ofport (unique on its host); its band rides on the Meter
action, so the reconciler knows which meters a host needs from its flows alone.

Every port also has a limit on what it floods (broadcast, multicast and unknown
unicast: everything its switch copies to every member), `bumLimitPps`, default
DEFAULT_BUM_PPS. That meter (id BUM_METER_BASE + ofport, packets per second) is applied
where the copies are made, in `dispatch` (the encap layer), so one workload's flood
costs its neighbours and the other tenants on its hosts at most that many packets a
second.
"""
from __future__ import annotations

from dataplane.match_action import Match, Meter
from controller.layers.base import Layer, TableDecl
from controller.spaces.ids import BUM_METER_BASE
from controller.spaces.registers import INPORT, LOGICAL_SWITCH

# rate_limit: one flow per limited port (disjoint); the others miss (on, unmetered).
PRIO_RATE_LIMIT = 100

# Burst allowance, in seconds at the port's rate. Measured here (TCP over VXLAN through
# the userspace datapath, 50 Mbit/s drop meter, 4 s iperf3): 0.01 s -> 5.2 Mbit/s,
# 0.05 -> 14.3, 0.1 -> 24.4, 0.5 -> 48.1, 1.0 -> 53.1 (overshoots). TCP needs the burst
# to absorb a window's worth of packets the meter would otherwise drop.
BURST_SECONDS = 0.5


DEFAULT_BUM_PPS = 1000  # ARP, DHCP and ND of a busy VM stay far below this
BUM_BURST_SECONDS = 0.1


def bum_meter_for(ofport: int, pps: int | None) -> Meter:
    rate = pps or DEFAULT_BUM_PPS
    return Meter(BUM_METER_BASE + ofport, rate, max(10, int(rate * BUM_BURST_SECONDS)), "pktps")


def meter_for(ofport: int, mbps: float) -> Meter:
    kbps = max(1, int(mbps * 1000))
    return Meter(ofport, kbps, max(64, int(kbps * BURST_SECONDS)))


class Qos(Layer):
    name = "qos"
    id = 10
    tables = (
        TableDecl("rate_limit", frozenset({"reg13", "reg14"}), successors=("@next",), miss="@next",
                  doc="ports with rateLimitMbps pass through their meter"),
    )

    def tenant_flows(self, t, out):
        for p in t.tenant.ports:
            if p.rate_limit_mbps is None:
                continue
            out.to((p.host,), out.flow(
                "rate_limit", PRIO_RATE_LIMIT,
                Match.of(**LOGICAL_SWITCH.m(t.vni[p.switch]), **INPORT.m(t.port_key[p.name])),
                (meter_for(t.ofport[p.name], p.rate_limit_mbps), out.goto("@next")),
                rule=f"port {p.name} limited to {p.rate_limit_mbps:g} Mbit/s"))
