"""`nvctl verify`: tenant isolation proved over the whole header space of the flows that
are installed, by header-space analysis (`dataplane.headerspace`), not by sampling.

Start points: every tenant port (all packets it could send) and every tunnel entry
(all packets arriving over VXLAN with one of a tenant's VNIs on a host that has a flow
for it). Each start runs symbolically through its host's tables; tunnel outputs are
checked where they leave and continue as the peer's tunnel entry (composition).

Checks, each violation with a concrete counterexample packet and its path:
  isolation_port       a packet of tenant A is output to another tenant's port
  isolation_vni        ... is tunnelled with a VNI that is not A's
  isolation_external   ... leaves on the external port with an IPv4 source A does not own
  shared_zone / shared_meter / shared_group
                       ... goes through a conntrack zone / meter / group that is not A's
  overlap              two flows of equal priority match one packet (the compiler's bug:
                       OVS keeps one of them, which one is not ours to choose)
  loop                 a packet re-enters a (host, table) in one chain of nested lookups
                       (LOOP_BOUND times); loops through tunnels are not followed yet
  undeclared_drop      a packet ends without output other than by a declared drop
  unknown_port / tunnel_lost
                       output to an ofport nobody owns / tunnelled to an unknown PA
  unreachable          a pair of A's ports its topology connects, its ACLs do not
                       necessarily separate and its network policies let open some new
                       connection, and no packet from one reaches the other (with
                       policies: no new connection of a protocol/port they allow, over
                       IPv4, and over IPv6 for ports with an ip6)
  policy_leak          a first packet of a connection (fresh: +trk+new in every conntrack
                       zone on its way) from one of A's ports to another, IPv4 or IPv6,
                       of a protocol/port A's network policies do not allow, is delivered

Declared drop: the deciding flow (the last one on the packet's path) has an empty action
list and is not the priority-0 miss flow of a table whose declared miss continues
(`Table.miss` != "drop"); or dec_ttl expired; or output to the ingress port (OVS drops
it). Everything else that produces no output is undeclared: no flow matched at all (the
OpenFlow table-miss drop that `miss_flows` exists to prevent), a priority-0 drop in a
table whose miss is "continue", a flow with actions but no output.

The proof is sliced by tenant (`verify_slice`): a shared proof over the flows no tenant
owns (no packet changes scope but through declared paths), then each tenant's flows with
the shared ones, alone, in worker processes for a large network; a packet that could
leave its tenant's slice has that tenant checked over the whole tables. A tenant whose
slice is another's with other numbers (VNIs, ofports, MACs, zones...: `verify_twins`
checks the renaming flow by flow) is given that one's verdict when it is clean; a
change re-checks through `Sliced.update_delta` (the compiler's diff). `verify_run`'s
Verifier runs the starts through the tables (symbolically, with `hs.Engine`) and keeps
their results up to date as flows, facts and ports change; `verify_checks` checks each
start's final states; `verify_report` checks reachability, builds the report and the
counterexamples. The values it takes and gives are in `verify_model`; all of them, and
the names of the parts, can be imported from here.

Pure: no I/O, no sockets; the clock is an argument (`clock=time.perf_counter`).
"""
from __future__ import annotations

from typing import Callable

from controller.spaces.ids import TUNNEL_OFPORT
from controller.analysis.verify_run import (
    Verifier, _STATE_ZERO, _MEMO_KEYS, _paused_gc, _default_memo, _result_affected)
from controller.analysis.verify_model import (
    PortRef, Endpoint, HostTables, TenantFacts, Network, _as_flow_list,
    _carriers, _carries_groups, host_tables, network_from_compiled, tenant_facts, _port_meters,
    reach_pairs, _separated, Violation, Report)
from controller.analysis.verify_checks import (
    Checks, _Result, _Scan, _RES_KINDS, _composed, _restrict_var, _exclude_var, _undeclared)
from controller.analysis.verify_report import (
    Reporting, _Lazy, _state, _L4, _ARP_FIELDS, _IP_FIELDS, _Tables, _ct_text, _layer_name, _packet)

__all__ = [
    # the entry points, and the values verify takes and gives (verify_model)
    "verify", "Verifier", "Network", "HostTables", "TenantFacts", "PortRef", "Endpoint",
    "Violation", "Report", "network_from_compiled", "tenant_facts", "host_tables", "reach_pairs",
    "TUNNEL_OFPORT",
    # importable from here before the Verifier was split into its parts
    "_as_flow_list", "_carriers", "_carries_groups", "_port_meters", "_separated",
    "_Result", "_Scan", "_RES_KINDS", "_composed", "_restrict_var", "_exclude_var",
    "_undeclared", "_Lazy", "_state", "_L4", "_ARP_FIELDS", "_IP_FIELDS", "_Tables",
    "_ct_text", "_layer_name", "_packet", "Checks", "Reporting",
    # and since it moved to verify_run (verify_slice builds on it)
    "_STATE_ZERO", "_MEMO_KEYS", "_paused_gc", "_default_memo", "_result_affected",
]


def verify(net: Network, *, tenant: str | None = None, host: str | None = None,
           clock: Callable[[], float] | None = None, workers: int | None = None) -> Report:
    """One full check (see the module docstring): sliced by tenant (`verify_slice`), in
    worker processes for a large network; restricted to a host, over the whole tables."""
    if host is not None:
        return Verifier(net, tenant=tenant, host=host, clock=clock).run()
    from controller.analysis.verify_slice import Sliced
    return Sliced(net, tenant=tenant, clock=clock, workers=workers).run()

