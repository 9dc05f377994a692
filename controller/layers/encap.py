"""Encapsulation: deliver the logical output port where it lives.

Local port -> egress stage. Remote port -> VXLAN to its host's PA with the switch's
VNI. FLOOD -> a copy through egress for every local port, and one tunnel copy to each
other host of the switch's span. Packets that came from a tunnel are never sent back
into it (split horizon). A flood from a workload first passes that port's BUM meter
(see the qos layer), so no port can flood faster than its limit.

Path MTU: a unicast packet for a remote port is measured first (check_pkt_larger, as
OVN does) against its switch's MTU. One that would not fit the underlay once
encapsulated is not sent: `tunnel_out` hands it to the controller (through the
tenant's control-plane meter), which answers the sender with ICMP "fragmentation
needed" and the switch's MTU, so path MTU discovery works for a workload that ignores
its MTU. Switched and routed packets alike: routing happens before dispatch.
"""
from __future__ import annotations

from dataplane.match_action import ETH_TYPE_IP, ETH_TYPE_IPV6, CheckPktLarger, Group, Match, Output, SetField
from controller.layers.base import Layer, TableDecl
from controller.layers.qos import bum_meter_for
from controller.layers.services import to_controller
from controller.layers.gateway import distributed
from controller.spaces.ids import FLOOD_PORT_KEY, GATEWAY_GROUP_BASE
from controller.spaces.names import transit_name
from controller.spaces.registers import FROM_TUNNEL, INPORT, LOGICAL_SWITCH, OUTPORT, PKT_LARGER

ETH_HEADER = 14  # check_pkt_larger counts the Ethernet header; an MTU does not

# dispatch. A unicast port's flow is local on its host and remote (from_tunnel=0 only:
# split horizon) on the others, so they never meet; a router's transit key is its own
# logical_switch value. A flood from a workload port (its BUM meter, not back to it)
# outranks the switch's flood from any other local sender; a flood from the tunnel is
# told apart by from_tunnel. Anything else (from the tunnel to a port not here) drops.
PRIO_UNICAST = 100
PRIO_TRANSIT = 100
PRIO_FLOATING = 110  # a distributed floating IP's port leaves here, not through the gateway
PRIO_FLOOD_FROM_PORT = 100
PRIO_FLOOD_FROM_TUNNEL = 100
PRIO_FLOOD_LOCAL = 90
# tunnel_out: too big for the switch's MTU goes to the controller, before what fits
# goes into the tunnel.
PRIO_TOO_BIG = 100
PRIO_FITS = 10


def _local_keys(t) -> dict:
    """(switch, host) -> [(port, its key)] of the ports there, in the tenant's order."""
    out: dict = {}
    for p in t.tenant.ports:
        out.setdefault((p.switch, p.host), []).append((p.name, t.port_key[p.name]))
    return out


def _to_gateway(t, gws: tuple, h: str, transit: int, out) -> tuple:
    """On host `h`: a router's external traffic to the first of its gateways `gws` that
    is alive, as `h`'s BFD session toward it says (a fast-failover group), or handled
    here when `h` is that gateway. A single choice needs no group."""
    buckets, watch = [], []
    for g in gws:
        if g == h:  # watching the flow-based tunnel port (no BFD: always live) = always taken
            buckets.append((out.resubmit("ext_snat"),))
            watch.append(t.tunnel_port)
            break
        buckets.append((SetField("tunnel_id", transit), SetField("tun_ipv4_dst", t.pa[g]), Output(t.tunnel_port)))
        watch.append(t.peer_port.get(g, t.tunnel_port))
        if watch[-1] == t.tunnel_port:  # no BFD toward it: never known down, so nothing after it counts
            break
    else:  # the last gateway is tried whatever its BFD says: a group with no live bucket would drop
        watch[-1] = t.tunnel_port  # everything, also when a BFD port is missing (not made yet, no OVSDB)
    if len(buckets) == 1:
        return buckets[0]
    return (Group(GATEWAY_GROUP_BASE + transit, tuple(buckets), kind="ff", watch=tuple(watch)),)


class Encap(Layer):
    name = "encap"
    id = 5
    tables = (
        TableDecl("dispatch", frozenset({"reg13", "reg14", "reg15", "reg10", "eth_type", "ipv4_src"}),
                  successors=("@egress", "ext_snat", "tunnel_out"),
                  doc="outport -> local egress, VXLAN to the owner's PA, or flood"),
        TableDecl("tunnel_out", frozenset({"reg13", "reg9", "eth_type"}), successors=(), miss="drop",
                  doc="too big for the switch's MTU: to the controller (ICMP frag needed); else the tunnel"),
    )

    def host_flows(self, h, out):
        out.to((h.name,), out.flow("tunnel_out", PRIO_FITS, Match(), (Output(h.tunnel_port),),
                                   rule="fits: into the tunnel"))

    sliced = True

    def port_inputs(self, t, p):
        pending = p.pending if p.pending in t.pa else None
        local = t.once("encap.local", lambda: _local_keys(t))
        members = t.members[p.switch]
        hosts = t.span[p.switch]
        content = (p.name, p.host, pending, bool(hosts), pending in hosts, t.vni[p.switch], t.port_key[p.name],
                   t.mtu[p.switch], t.pa[p.host], t.pa[pending] if pending else None, t.tunnel_port,
                   # its flood: the other ports on its switch and host, every other member's PA
                   p.switch, t.ofport[p.name], p.bum_limit_pps,
                   tuple(k for n, k in local[p.switch, p.host] if n != p.name),
                   tuple(t.pa[o] for o in sorted(members - {p.host})) if p.host in members else None)
        return content, {"own": (p.host,), "pending": (pending,) if pending else (),
                         "remote": tuple(h for h in hosts if h not in (p.host, pending))}

    def _port_flows(self, content, out):
        """Unicast to the port: local on its host, through the tunnel from the others;
        and a flood from the port: to the switch's other ports on its host and every
        other member host, through its BUM meter."""
        (name, host, pending, spans, pending_spanned, vni, key, mtu, pa, pending_pa, tunnel_port,
         switch, ofport, bum_pps, others, member_pas) = content
        if not spans:
            return
        if member_pas is not None:
            tunnels = [SetField("tunnel_id", vni)]
            for other_pa in member_pas:
                tunnels += [SetField("tun_ipv4_dst", other_pa), Output(tunnel_port)]
            copies = [a for k in others for a in (OUTPORT.load(k), out.resubmit("@egress"))]
            out.put("own", out.flow(
                "dispatch", PRIO_FLOOD_FROM_PORT, Match.of(**LOGICAL_SWITCH.m(vni), **OUTPORT.m(FLOOD_PORT_KEY),
                                                           **FROM_TUNNEL.m(0), **INPORT.m(key)),
                [bum_meter_for(ofport, bum_pps)] + copies + (tunnels if len(tunnels) > 1 else []),
                rule=f"switch {switch} flood from port {name}, "
                     f"at most {bum_pps or 'the default'} pps"))
        ls = LOGICAL_SWITCH.m(vni)
        check = CheckPktLarger(mtu + ETH_HEADER, PKT_LARGER.field, PKT_LARGER.lo)
        pas = {host: pa, pending: pending_pa}

        def tunnel_copies(dests, then):
            """Actions sending the packet to each of `dests`' PAs, then `then` (the last
            copy's own goto, or what comes after the copies)."""
            acts = [SetField("tunnel_id", vni)]
            for h in dests:
                acts += [SetField("tun_ipv4_dst", pas[h]), check, out.resubmit("tunnel_out")]
            if then is None:
                acts[-1] = out.goto("tunnel_out")
            else:
                acts.append(then)
            return acts
        key = OUTPORT.m(key)
        # a migrating port's traffic goes to both bindings; the pending one drops
        # its copy until the guest announces itself there (activation layer)
        if pending is None:
            out.put("own", out.flow(
                "dispatch", PRIO_UNICAST, Match.of(**ls, **key), (out.goto("@egress"),),
                rule=f"port {name} is local"))
        else:  # what its host's own ports send goes to the pending binding too
            out.put("own", out.flow(
                "dispatch", PRIO_UNICAST, Match.of(**ls, **key, **FROM_TUNNEL.m(1)),
                (out.goto("@egress"),), rule=f"port {name} is local"))
            out.put("own", out.flow(
                "dispatch", PRIO_UNICAST, Match.of(**ls, **key, **FROM_TUNNEL.m(0)),
                tunnel_copies((pending,), out.goto("@egress")),
                rule=f"port {name} is local, and pending on {pending} (migrating)"))
        remote = Match.of(**ls, **key, **FROM_TUNNEL.m(0))
        out.put("remote", out.flow(
            "dispatch", PRIO_UNICAST, remote, tunnel_copies((host,) + ((pending,) if pending else ()), None),
            rule=f"port {name} is on {host}" + (f", and pending on {pending}" if pending else "")))
        if pending_spanned:
            out.put("pending", out.flow("dispatch", PRIO_UNICAST, remote, tunnel_copies((host,), None),
                                        rule=f"port {name} is on {host}"))

    def tenant_flows(self, t, out):
        for r in t.tenant.routers:
            group = t.gateways.get(r.name)
            if not group:
                continue
            transit = t.vni[transit_name(r.name)]
            hosts = frozenset().union(*(t.span[rp.switch] for rp in r.ports))
            m = Match.of(**LOGICAL_SWITCH.m(transit))
            gws = tuple(h for h, _, _ in group)
            for h in sorted(hosts):
                out.to((h,), out.flow(
                    "dispatch", PRIO_TRANSIT, m, _to_gateway(t, gws, h, transit, out),
                    rule=f"router {r.name}: " + (
                        "this host is the gateway" if h == gws[0] else f"to the gateway {gws[0]}" if len(gws) == 1
                        else f"to the first live gateway of {', '.join(gws)}")))
            for n in t.tenant.nat:  # a distributed floating IP leaves from its port's host
                if n.type == "floating-ip" and n.router == r.name and distributed(t, n) is not None:
                    p = t.tenant.port(n.port)
                    out.to((p.host,), out.flow(
                        "dispatch", PRIO_FLOATING,
                        Match.of(**LOGICAL_SWITCH.m(transit), eth_type=ETH_TYPE_IP, ipv4_src=str(p.ip)),
                        (out.resubmit("ext_snat"),),
                        rule=f"floating IP {n.external_ip} of {p.name}: out from this host"))
        # per switch, too big for its MTU (from every host that sends into the tunnel),
        # and the floods of each member host: units

    def units(self, t):
        """Each port (its unicast and its own flood); each switch's too-big flows; each
        member host's floods on a switch (from its local ports, from the tunnel)."""
        yield from super().units(t)
        tn = t.tenant
        local = t.once("encap.local", lambda: _local_keys(t))
        for s in tn.switches:
            hosts, members = t.span[s.name], t.members[s.name]
            if not hosts:
                continue
            vni = t.vni[s.name]
            ports = tn.ports_on(s.name)
            senders = frozenset(h for h in hosts if any(p.host != h for p in ports))
            yield (f"mtu:{s.name}", ("mtu", s.name, vni, t.mtu[s.name], tn.has_ipv6, t.tenant_id, bool(senders)),
                   {"senders": senders})
            for h in members:
                yield (f"flood:{s.name}:{h}",
                       ("flood", s.name, vni, tuple(k for _, k in local.get((s.name, h), ())),
                        tuple(t.pa[o] for o in sorted(members - {h})), t.tunnel_port), {"own": (h,)})

    def port_flows(self, content, out):
        kind = content[0]
        if kind == "mtu":
            _, name, vni, mtu, ipv6, tenant_id, senders = content
            for eth_type in (ETH_TYPE_IP, ETH_TYPE_IPV6) if senders else ():
                if eth_type == ETH_TYPE_IPV6 and not ipv6:
                    continue
                out.put("senders", out.flow(
                    "tunnel_out", PRIO_TOO_BIG, Match.of(**LOGICAL_SWITCH.m(vni), **PKT_LARGER.m(1), eth_type=eth_type),
                    to_controller(tenant_id),
                    rule=f"switch {name}: longer than its MTU {mtu}: ICMP"
                         f"{'v6 packet too big' if eth_type == ETH_TYPE_IPV6 else ' frag needed'}, by the controller"))
        elif kind == "flood":
            _, name, vni, keys, pas, tunnel_port = content
            ls, flood = LOGICAL_SWITCH.m(vni), OUTPORT.m(FLOOD_PORT_KEY)
            local = [a for k in keys for a in (OUTPORT.load(k), out.resubmit("@egress"))]
            tunnels = [SetField("tunnel_id", vni)]
            for pa in pas:
                tunnels += [SetField("tun_ipv4_dst", pa), Output(tunnel_port)]
            out.put("own", out.flow(
                "dispatch", PRIO_FLOOD_LOCAL, Match.of(**ls, **flood, **FROM_TUNNEL.m(0)),
                local + (tunnels if len(tunnels) > 1 else []), rule=f"switch {name} flood from a local port"))
            # each local port's own flood (not back to the sender: OVS would drop that
            # copy at the end, after its egress ACLs and delivery counted it as the
            # sender's own) is the port's
            out.put("own", out.flow(
                "dispatch", PRIO_FLOOD_FROM_TUNNEL, Match.of(**ls, **flood, **FROM_TUNNEL.m(1)),
                local, rule=f"switch {name} flood from the tunnel"))
        else:
            self._port_flows(content, out)
