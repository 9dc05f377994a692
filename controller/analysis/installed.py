"""What is really on the hosts, for `nvctl verify`: flows, groups and meters read over
OpenFlow from every switch; ports and the tunnel read over OVSDB. The proof itself is
`controller.analysis.verify` (pure); this module only gathers its input, and checks what the
flow tables cannot show: that each ofport a tenant's flows name is that tenant's
workload, and that the tunnel port is the one the flows assume.
"""
from __future__ import annotations

import time
from controller.spaces.names import pending_name
from dataclasses import dataclass
from concurrent.futures import ThreadPoolExecutor

from controller.analysis import verify as vf
from controller.spaces.ids import TUNNEL_OFPORT
from tep.driver import host_db
from tep.ovs import TUNNEL_PORT_NAME, OvsError


def read_host(session) -> dict:
    """One switch's tables as values (three OpenFlow requests)."""
    return {"flows": session.flows(), "groups": session.group_buckets(), "meters": session.meters()}


def check_interfaces(host: str, pa: str, interfaces: list[dict], expected: dict) -> list[dict]:
    """Problems with one host's br-int ports. `expected`: ofport -> (tenant, port) that
    the controller's flows deliver to there."""
    problems = []
    by_ofport = {i["ofport"]: i for i in interfaces}
    tun = by_ofport.get(TUNNEL_OFPORT)
    if tun is None or tun["name"] != TUNNEL_PORT_NAME or tun["type"] != "vxlan":
        problems.append({"host": host, "ofport": TUNNEL_OFPORT,
                         "problem": f"ofport {TUNNEL_OFPORT} is not the VXLAN port {TUNNEL_PORT_NAME} "
                                    f"(found {tun['name'] + ' type ' + tun['type'] if tun else 'nothing'})"})
    elif (tun["options"].get("local_ip"), tun["options"].get("remote_ip"), tun["options"].get("key")) != (pa, "flow", "flow"):
        problems.append({"host": host, "ofport": TUNNEL_OFPORT,
                         "problem": f"the VXLAN port's options are {tun['options']}, expected local_ip={pa}, "
                                    "remote_ip=flow, key=flow"})
    for ofport, (tenant, port) in sorted(expected.items()):
        i = by_ofport.get(ofport)
        if i is None:
            continue  # not plugged (yet): the port is down, which `tenant show` says
        got = i["external_ids"].get("iface-id")
        if got != f"{tenant}/{port}":
            problems.append({"host": host, "ofport": ofport, "tenant": tenant,
                             "problem": f"ofport {ofport} ({i['name']}) belongs to {got or 'nobody nvctl knows'}, "
                                        f"but {tenant}/{port}'s flows deliver there"})
    return problems


@dataclass
class View:
    """What verify needs of the controller, taken in one consistent moment: where the
    hosts are, every tenant's intent and numbers, each host's record (its OVSDB),
    its switch session and its desired flows."""
    placement: dict  # host -> compiler.Host
    tenants: dict  # name -> (Tenant, Allocation)
    records: dict  # host -> state.store.HostRecord
    sessions: dict  # host -> switch session or None
    desired: dict  # host -> {identity: Flow}


def gather(view: View, hosts: list[str]) -> tuple[dict, list[dict], list[str]]:
    """(tables per host, interface problems, errors) read from the hosts at once."""
    tables, problems, errors = {}, [], []
    expected: dict[str, dict] = {h: {} for h in hosts}
    for name, (t, a) in view.tenants.items():
        for p in t.ports:
            if p.host in expected:
                expected[p.host][a.ofport[p.name]] = (name, p.name)
            if p.pending in expected and pending_name(p.name) in a.ofport:  # a VM migrating there
                expected[p.pending][a.ofport[pending_name(p.name)]] = (name, p.name)

    def one(h):
        session = view.sessions.get(h)
        if session is None:
            errors.append(f"{h}: not connected, its flows cannot be read")
            return
        try:
            tables[h] = read_host(session)
        except Exception as ex:
            errors.append(f"{h}: reading its flows failed: {ex}")
            return
        info = view.records[h].info
        if info.get("ovsdb"):
            try:
                problems.extend(check_interfaces(h, view.records[h].pa, host_db(info).interfaces(), expected[h]))
            except OvsError as ex:
                errors.append(f"{h}: reading its ports over OVSDB failed: {ex}")
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(one, hosts))
    return tables, problems, errors


def explain(flows: list, desired: dict) -> list:
    """The switch's flows, each that equals a desired one replaced by it (so a path names
    the rule that made it); the others are marked as not the controller's."""
    out = []
    for f in flows:
        d = desired.get(f.identity)
        if d is not None and d == f:
            out.append(d)
            continue
        f.rule = ("differs from the controller's: " + d.rule) if d is not None else "not made by the controller"
        out.append(f)
    return out


def read(view: View) -> tuple[dict, list[dict], list[str], float]:
    """Read every host of the view: (tables, interface problems, errors, seconds). The
    caller holds its change lock meanwhile, so intent and switches are one moment."""
    t0 = time.perf_counter()
    tables, problems, errors = gather(view, sorted(view.placement))
    return tables, problems, errors, time.perf_counter() - t0


def verify(view: View, got: tuple, tenant: str | None = None, host: str | None = None) -> dict:
    """Prove isolation and policy over what `read(view)` found installed."""
    tables, problems, errors, read_s = got
    placement = view.placement
    net = vf.network_from_compiled(placement, view.tenants, {})
    for h, t in tables.items():
        net.hosts[h] = vf.HostTables(placement[h].pa, explain(t["flows"], view.desired.get(h, {})),
                                     t["groups"], t["meters"])
    rep = vf.verify(net, tenant=tenant, host=host, clock=time.perf_counter)
    if tenant is not None:
        problems = [p for p in problems if p.get("tenant") in (None, tenant)]
    if host is not None:
        problems = [p for p in problems if p["host"] == host]
    out = rep.to_json()
    out.update(ok=rep.ok and not problems and not errors, interfaces=problems, errors=errors,
               read_seconds=round(read_s, 3), text=rep.format(),
               flows_read=sum(len(t["flows"]) for t in tables.values()))
    return out
