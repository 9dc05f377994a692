"""Network policies against the same allow-lists written as plain ACLs (`--only netpol`).

No lab: a pure compile, and the controller core's change path over in-memory switches
(bench.pure.RecordingSwitch), as the compile and one-port change benchmarks.

The tenant: PORTS ports (labels app in 20 values, tier in 3, env in 2) on 5 switches
with namespace labels (ns, team, stage), joined by one router, spread over 10 hosts,
under 50 NetworkPolicies with overlapping selectors (matchLabels, matchExpressions;
Ingress and Egress; podSelector, namespaceSelector, both, ipBlock with except; single
ports, port ranges, whole protocols, no ports).

The baseline, the same tenant with `acls:` instead: what an operator without selectors
must write. For each policy rule (and protocol) an allow ACL guarding the ports the
policy selects (to-port for Ingress, from-port for Egress), its peers spelled out: each
peer port by name, a switch a namespaceSelector takes whole by its name (its CIDR), an
ipBlock as the CIDRs of cidr minus its excepts (an entry inside another entry of the
same list is left out: the rule's flows must not overlap at one priority); the ports as
dstPorts. Then one deny per direction at priority 0 guarding every port isolated in that
direction. Every allow has a priority of its own (the schema refuses two rules of one
priority guarding a common port in one direction). The entries are grouped (one ACL per
rule guarding a list of ports, not one per port): the fewest lines, and the same flows
(the ACL layer compiles each guarded port's rules on its own).

The selectors are evaluated here, by this module's own reading of the format (not
topology.policy's), and `equivalence` checks with the strict simulator that both
tenants allow the same new TCP connections on sampled (src, dst, dport) triples.

Figures (each a median of REPS repetitions with min-max; ratios policies / ACLs per
repetition): flows per host; the tenant's compile; one labelled port added, through the
core's change path (`port.add` on the policy tenant; on the ACL tenant the tenant's YAML
with the port and its rules rewritten: `tenant apply`), with the flow-mods and hosts it
sent.
"""
from __future__ import annotations

import ipaddress
import itertools
import os
import random
import statistics
import tempfile
import time

SWITCHES = 5
HOSTS = 10
POLICIES = 50
APPS, TIERS, ENVS = [f"a{i}" for i in range(20)], ["web", "api", "db"], ["prod", "dev"]
NEW_PORT = "newp"


# -- the tenant ---------------------------------------------------------------------------

def spec(ports: int = 1000, switches: int = SWITCHES, hosts: int = HOSTS, policies: int = POLICIES,
         seed: int = 7) -> dict:
    """{"switches", "routers", "ports", "policies", "hosts"}: plain YAML values."""
    rng = random.Random(seed)
    host_names = [f"hv{i}" for i in range(1, hosts + 1)]
    sws = [{"name": f"ns{s}", "cidr": f"10.0.{s}.0/24",
            "labels": {"ns": f"ns{s}", "team": f"team{s % 2}", "stage": "prod" if s < 3 else "dev"}}
           for s in range(switches)]
    router = {"name": "r", "ports": [{"switch": s["name"], "ip": f"10.0.{k}.1"} for k, s in enumerate(sws)]}
    ps = []
    for i in range(ports):
        s = i % switches
        ps.append({"name": f"p{i}", "switch": f"ns{s}", "ip": f"10.0.{s}.{10 + i // switches}",
                   "host": host_names[rng.randrange(hosts)], "workload": False,
                   "labels": {"app": rng.choice(APPS), "tier": rng.choice(TIERS), "env": rng.choice(ENVS)}})
    return {"switches": sws, "routers": [router], "ports": ps, "hosts": host_names,
            "policies": [_policy(k, rng, switches) for k in range(policies)]}


def _policy(k: int, rng: random.Random, switches: int) -> dict:
    """The k-th policy: five shapes in turn, their labels drawn from `rng`."""
    ns = f"ns{rng.randrange(switches)}"
    app = rng.choice(APPS)
    apps = rng.sample(APPS, 3)
    shape = k % 5
    name = f"np{k}"
    if shape == 0:  # ingress within the namespace, from a tier, a port and a range
        return {"name": name, "namespace": ns, "podSelector": {"matchLabels": {"app": app}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": "web"}}}],
                             "ports": [{"protocol": "TCP", "port": 80}, {"port": 8000, "endPort": 8010}]}]}
    if shape == 1:  # tenant-wide, from web pods of prod namespaces (both selectors in one peer)
        return {"name": name, "podSelector": {"matchLabels": {"tier": rng.choice(["api", "db"])},
                                              "matchExpressions": [{"key": "app", "operator": "In",
                                                                    "values": apps}]},
                "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"stage": "prod"}},
                                       "podSelector": {"matchLabels": {"tier": "web", "env": "prod"}}}],
                             "ports": [{"protocol": "TCP", "port": 8080}, {"protocol": "UDP", "port": 53}]}]}
    if shape == 2:  # egress to whole namespaces (a namespaceSelector alone), and DNS anywhere
        sel = rng.sample([f"ns{s}" for s in range(switches)], 2)
        return {"name": name, "policyTypes": ["Egress"],
                "podSelector": {"matchLabels": {"tier": "db", "app": app}},
                "egress": [{"to": [{"namespaceSelector": {"matchExpressions": [
                                {"key": "ns", "operator": "In", "values": sel}]}}],
                            "ports": [{"protocol": "TCP", "port": 5432}, {"protocol": "TCP", "port": 6000,
                                                                          "endPort": 6100}]},
                           {"ports": [{"protocol": "UDP", "port": 53}]}]}
    if shape == 3:  # both types: ipBlock with except in, pods and a block out
        other = rng.randrange(switches)
        return {"name": name, "namespace": ns, "policyTypes": ["Ingress", "Egress"],
                "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": apps},
                                                     {"key": "env", "operator": "NotIn", "values": ["dev"]}]},
                "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16",
                                                   "except": [f"10.0.{other}.0/24"]}}],
                             "ports": [{"protocol": "TCP", "port": 443}]}],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"tier": "db"}}},
                                   {"ipBlock": {"cidr": f"10.0.{other}.128/25"}}]}]}
    # shape 4: Exists / DoesNotExist / NotIn peers; a second rule from anywhere to a range
    return {"name": name, "podSelector": {"matchLabels": {"app": app},
                                          "matchExpressions": [{"key": "tier", "operator": "Exists"}]},
            "ingress": [{"from": [{"podSelector": {"matchExpressions": [
                             {"key": "tier", "operator": "NotIn", "values": ["db"]},
                             {"key": "canary", "operator": "DoesNotExist"}]}},
                                  {"namespaceSelector": {"matchLabels": {"team": "team1"}}}],
                         "ports": [{"protocol": "TCP"}]},
                        {"ports": [{"port": 9000, "endPort": 9099}]}]}


def _selects(sel: dict | None, labels: dict) -> bool:
    sel = sel or {}
    if any(labels.get(k) != v for k, v in (sel.get("matchLabels") or {}).items()):
        return False
    for e in sel.get("matchExpressions") or []:
        key, op, vals = e["key"], e["operator"], e.get("values") or []
        ok = {"In": key in labels and labels[key] in vals,
              "NotIn": key not in labels or labels[key] not in vals,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def _types(pol: dict) -> list[str]:
    return pol.get("policyTypes") or (["Ingress"] + (["Egress"] if pol.get("egress") else []))


def selected(sp: dict, pol: dict) -> list[str]:
    ns = pol.get("namespace")
    return [p["name"] for p in sp["ports"]
            if (ns is None or p["switch"] == ns) and _selects(pol["podSelector"], p.get("labels", {}))]


def _peer(sp: dict, pol: dict, peer: dict) -> tuple[list[str], list[str], list]:
    """(port names, whole switches, networks) one peer names."""
    if "ipBlock" in peer:
        nets = [ipaddress.ip_network(peer["ipBlock"]["cidr"])]
        for e in peer["ipBlock"].get("except") or []:
            ex = ipaddress.ip_network(e)
            nets = [r for n in nets for r in ([n] if not ex.overlaps(n) else
                                              ([] if n.subnet_of(ex) else n.address_exclude(ex)))]
        return [], [], nets
    if "namespaceSelector" in peer:
        sws = [s["name"] for s in sp["switches"] if _selects(peer["namespaceSelector"], s.get("labels", {}))]
    else:
        ns = pol.get("namespace")
        sws = [s["name"] for s in sp["switches"] if ns is None or s["name"] == ns]
    if "podSelector" not in peer:
        return [], sws, []
    return [p["name"] for p in sp["ports"] if p["switch"] in sws
            and _selects(peer["podSelector"], p.get("labels", {}))], [], []


def peers(sp: dict, pol: dict, rule: dict, key: str) -> list | None:
    """A rule's peers as ACL from/to entries (port names, switch names, CIDRs), none
    inside another; None: no peers listed (anywhere); []: peers that name nothing."""
    if not rule.get(key):
        return None
    names, sws, nets = set(), set(), []
    for peer in rule[key]:
        n, s, c = _peer(sp, pol, peer)
        names.update(n)
        sws.update(s)
        nets.extend(c)
    cidr = {s["name"]: ipaddress.ip_network(s["cidr"]) for s in sp["switches"]}
    whole = {n: str(n) for n in nets}
    whole.update({cidr[s]: s for s in sorted(sws)})  # a switch by its name where a block is the same
    big = [n for n in whole if not any(n != o and n.subnet_of(o) for o in whole)]
    ip = {p["name"]: ipaddress.ip_address(p["ip"]) for p in sp["ports"]}
    by_index = sorted(names, key=lambda x: (x[0], int(x[1:])) if x[1:].isdigit() else (x, 0))
    return [x for x in by_index if not any(ip[x] in n for n in big)] + [whole[n] for n in sorted(big)]


def _port_groups(rule: dict) -> list[tuple[str | None, list]]:
    """[(protocol or None for any, dstPorts)] one rule's `ports` become."""
    if not rule.get("ports"):
        return [(None, [])]
    out = []
    for proto in ("TCP", "UDP"):
        entries = [e for e in rule["ports"] if e.get("protocol", "TCP") == proto]
        if not entries:
            continue
        if any("port" not in e for e in entries):
            out.append((proto.lower(), []))
            continue
        merged: list = []
        for lo, hi in sorted((e["port"], e.get("endPort", e["port"])) for e in entries):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        out.append((proto.lower(), [lo if lo == hi else f"{lo}-{hi}" for lo, hi in merged]))
    return out


def acls(sp: dict) -> list[dict]:
    """The policies of `sp` written out as ACLs (see the module docstring)."""
    out, prio = [], 0
    isolated: dict[str, set] = {"Ingress": set(), "Egress": set()}
    for pol in sp["policies"]:
        sel = selected(sp, pol)
        for kind in _types(pol):
            isolated[kind].update(sel)
            if not sel:
                continue
            key, direction, far = (("from", "to-port", "from") if kind == "Ingress" else ("to", "from-port", "to"))
            for rule in pol.get(kind.lower()) or []:
                who = peers(sp, pol, rule, key)
                if who == []:
                    continue  # peers that name nothing: the rule allows nothing
                for proto, dports in _port_groups(rule):
                    prio += 1
                    a = {"priority": prio, "direction": direction, "ports": sel}
                    if who is not None:
                        a[far] = who
                    if proto:
                        a["protocol"] = proto
                    if dports:
                        a["dstPorts"] = dports
                    a["action"] = "allow"
                    out.append(a)
    names = [p["name"] for p in sp["ports"]]
    for kind, direction in (("Ingress", "to-port"), ("Egress", "from-port")):
        if isolated[kind]:
            out.append({"priority": 0, "direction": direction, "ports": [n for n in names if n in isolated[kind]],
                        "action": "deny"})
    return out


def docs(sp: dict, name_pol: str = "pol", name_acl: str = "acl") -> tuple[str, str]:
    """(the policy tenant's YAML, the ACL tenant's YAML)."""
    from topology.builder import tenant_doc
    common = dict(switches=sp["switches"], routers=sp["routers"], ports=sp["ports"])
    return (tenant_doc(name_pol, networkPolicies=sp["policies"], **common),
            tenant_doc(name_acl, acls=acls(sp), **common))


def with_port(sp: dict, item: dict) -> dict:
    return {**sp, "ports": sp["ports"] + [item]}


def _names(sp: dict, pol: dict, rule: dict, key: str, item: dict) -> bool:
    """Does one of the rule's peers take the port `item`?"""
    for peer in rule.get(key) or []:
        if "ipBlock" in peer:
            if any(ipaddress.ip_address(item["ip"]) in n for n in _peer(sp, pol, peer)[2]):
                return True
            continue
        sw = next(s for s in sp["switches"] if s["name"] == item["switch"])
        if "namespaceSelector" in peer:
            ok = _selects(peer["namespaceSelector"], sw.get("labels", {}))
        else:
            ok = pol.get("namespace") in (None, item["switch"])
        if ok and ("podSelector" not in peer or _selects(peer["podSelector"], item["labels"])):
            return True
    return False


def new_port(sp: dict, switch: str = "ns1") -> tuple[dict, dict]:
    """(the port item, what selects it) for a port on `switch` whose labels put it into
    the most selectors (policies selecting it + rules naming it as a peer)."""
    s = next(k for k, x in enumerate(sp["switches"]) if x["name"] == switch)
    used = {p["ip"] for p in sp["ports"]}
    ip = next(f"10.0.{s}.{h}" for h in range(254, 1, -1) if f"10.0.{s}.{h}" not in used)
    best = None
    for app, tier, env in itertools.product(APPS, TIERS, ENVS):
        item = {"name": NEW_PORT, "switch": switch, "ip": ip, "host": sp["hosts"][1], "workload": False,
                "labels": {"app": app, "tier": tier, "env": env}}
        pols = [p["name"] for p in sp["policies"] if p.get("namespace") in (None, switch)
                and _selects(p["podSelector"], item["labels"])]
        rules = sum(1 for p in sp["policies"] for kind, key in (("ingress", "from"), ("egress", "to"))
                    if kind.capitalize() in _types(p) for r in p.get(kind) or [] if _names(sp, p, r, key, item))
        if best is None or len(pols) + rules > best[1]["policies_selecting"] + best[1]["peer_of_rules"]:
            best = (item, {"policies_selecting": len(pols), "peer_of_rules": rules, "selected_by": pols})
    return best


# -- equivalence on the simulator ----------------------------------------------------------

def _net(doc: str, hosts: dict):
    """(Tenant, Allocation, Fabric) of one tenant alone."""
    from controller.compile.allocator import InUse, allocate
    from controller.compile.compiler import TUNNEL_OFPORT, compile_world
    from controller.compile.pipeline import PIPELINE
    from dataplane.match_action import Fabric
    from topology.schema import load_tenant
    t = load_tenant(doc, hosts.keys())
    a = allocate(t, None, None, InUse())
    flows = compile_world(hosts, {t.name: (t, a)})
    return t, a, Fabric(PIPELINE, {h: (flows[h].values(), hosts[h].pa) for h in hosts}, TUNNEL_OFPORT)


def _connects(net, src: str, dst: str, sport: int, dport: int) -> bool:
    """Does a TCP SYN from port src to port dst's address reach dst?"""
    from dataplane.match_action import ETH_TYPE_IP
    t, a, fab = net
    s, d = t.port(src), t.port(dst)
    gw = t.router_of(s.switch)[1].mac if s.switch != d.switch else d.mac
    pkt = {"eth_src": s.mac, "eth_dst": gw, "eth_type": ETH_TYPE_IP, "ip_ttl": 64, "ipv4_src": str(s.ip),
           "ipv4_dst": str(d.ip), "ip_proto": 6, "tcp_src": sport, "tcp_dst": dport}
    got = fab.send(s.host, a.ofport[src], pkt)
    return any((x.host, x.port) == (d.host, a.ofport[dst]) for x in got)


def triples(sp: dict, n: int, seed: int = 11) -> list[tuple[str, str, int]]:
    """n (src, dst, dport): half aimed at a rule (a port it selects and one of its peers,
    a port it names), half at random (ports the policies name, and others)."""
    rng = random.Random(seed)
    names = [p["name"] for p in sp["ports"]]
    dports = sorted({e.get("port", 1) for p in sp["policies"] for k in ("ingress", "egress")
                     for r in p.get(k) or [] for e in r.get("ports") or []} |
                    {e.get("endPort", 1) for p in sp["policies"] for k in ("ingress", "egress")
                     for r in p.get(k) or [] for e in r.get("ports") or []} | {22, 5433, 7999, 8011, 40000})
    aimed = []
    for pol in sp["policies"]:
        sel = selected(sp, pol)
        for kind, key in (("ingress", "from"), ("egress", "to")):
            for r in pol.get(kind) or []:
                far = [x for x in (peers(sp, pol, r, key) or names) if x in set(names)] or names
                if sel:
                    aimed.append((sel, far, kind, r))
    out = []
    while len(out) < n:
        if len(out) % 2 == 0 and aimed:
            sel, far, kind, r = rng.choice(aimed)
            me, other = rng.choice(sel), rng.choice(far)
            src, dst = (other, me) if kind == "ingress" else (me, other)
            ports = r.get("ports") or []
            e = rng.choice(ports) if ports and rng.random() < 0.8 else None
            dport = rng.randint(e["port"], e.get("endPort", e["port"])) if e and "port" in e else rng.choice(dports)
        else:
            src, dst = rng.sample(names, 2)
            dport = rng.choice(dports)
        if src != dst:
            out.append((src, dst, dport))
    return out


def equivalence(sp: dict, samples: int = 300, seed: int = 11, hosts: dict | None = None) -> dict:
    """Both tenants on the strict simulator: the same verdict on every sampled new TCP
    connection. {"samples", "agree", "allowed", "denied", "disagree": [first few]}."""
    from bench.synth import hosts as make_hosts
    hs = hosts or make_hosts(len(sp["hosts"]))
    pol_doc, acl_doc = docs(sp)
    a, b = _net(pol_doc, hs), _net(acl_doc, hs)
    agree, allowed, bad = 0, 0, []
    for k, (src, dst, dport) in enumerate(triples(sp, samples, seed)):
        x, y = _connects(a, src, dst, 20000 + k, dport), _connects(b, src, dst, 20000 + k, dport)
        agree += x == y
        allowed += x
        if x != y and len(bad) < 10:
            bad.append({"src": src, "dst": dst, "dport": dport, "policies": x, "acls": y})
    return {"samples": samples, "agree": agree, "allowed": allowed, "denied": samples - allowed, "disagree": bad}


# -- the figures ---------------------------------------------------------------------------

def _stat(xs: list[float], nd: int | None = 2) -> dict:
    """median, min, max (rounded to nd places; None: whole numbers) and n."""
    def r(x):
        return round(x, nd) if nd is not None else int(round(x))
    return {"median": r(statistics.median(xs)), "min": r(min(xs)), "max": r(max(xs)), "n": len(xs)}


def _per_host(flows: dict, hosts, prefix: tuple) -> dict:
    total = {h: len(flows.get(h, [])) for h in hosts}
    own = {h: sum(1 for f in flows.get(h, []) if f.table.name.startswith(prefix)) for h in hosts}
    return {"tenant_max": max(total.values()), "tenant_mean": round(sum(total.values()) / len(total), 1),
            "layer_max": max(own.values()), "layer_mean": round(sum(own.values()) / len(own), 1),
            "tenant_total": sum(total.values())}


def compile_figures(sp: dict, reps: int, hs: dict, log=print) -> dict:
    """Flows per host and the tenant's compile (schema load + compile_tenant), both tenants
    in turns, `reps` times."""
    from controller.compile.allocator import InUse, allocate
    from controller.compile.compiler import compile_tenant, paused_gc
    from topology.schema import load_tenant
    pol_doc, acl_doc = docs(sp)
    sides = {"policies": (pol_doc, ("policy_",)), "acls": (acl_doc, ("acl_",))}
    got = {k: {"load_s": [], "compile_s": [], "flows": []} for k in sides}
    for r in range(reps):
        for side in (("policies", "acls") if r % 2 == 0 else ("acls", "policies")):
            doc, prefix = sides[side]
            with paused_gc():
                t0 = time.perf_counter()
                t = load_tenant(doc, hs.keys())
                t1 = time.perf_counter()
                a = allocate(t, None, None, InUse())
                t2 = time.perf_counter()
                flows = compile_tenant(t, a, hs)
                t3 = time.perf_counter()
            got[side]["load_s"].append(t1 - t0)
            got[side]["compile_s"].append(t3 - t2)
            got[side]["flows"].append(_per_host(flows, hs, prefix))
            del flows, t, a
    out = {}
    for side, g in got.items():
        if any(f != g["flows"][0] for f in g["flows"]):
            raise RuntimeError(f"{side}: the flow count changed between repetitions")
        out[side] = {"flows_per_host": g["flows"][0], "load_s": _stat(g["load_s"], 4),
                     "compile_s": _stat(g["compile_s"], 4), "yaml_bytes": len(sides[side][0])}
    p, a = got["policies"], got["acls"]
    out["ratios"] = {
        "flows_per_host_max": round(p["flows"][0]["tenant_max"] / a["flows"][0]["tenant_max"], 4),
        "flows_per_host_mean": round(p["flows"][0]["tenant_mean"] / a["flows"][0]["tenant_mean"], 4),
        "layer_flows_per_host_max": round(p["flows"][0]["layer_max"] / a["flows"][0]["layer_max"], 4),
        "compile": _stat([x / y for x, y in zip(p["compile_s"], a["compile_s"])], 4),
        "load_and_compile": _stat([(x1 + x2) / (y1 + y2) for x1, x2, y1, y2 in
                                   zip(p["load_s"], p["compile_s"], a["load_s"], a["compile_s"])], 4),
    }
    log(f"[bench] netpol flows per host: policies max {out['policies']['flows_per_host']['tenant_max']} "
        f"mean {out['policies']['flows_per_host']['tenant_mean']}; ACLs max {out['acls']['flows_per_host']['tenant_max']}"
        f" mean {out['acls']['flows_per_host']['tenant_mean']}; compile {out['policies']['compile_s']['median']} s "
        f"against {out['acls']['compile_s']['median']} s")
    return out


def port_add_figures(sp: dict, reps: int, hs: dict, log=print) -> dict:
    """A controller core (SQLite store on disk) holding the three tenants (twins: same
    CAs, same hosts): policies, ACLs, and neither ("plain", the change path's floor for a
    tenant of this size), every host an in-memory switch, synced. Then, `reps` times,
    their order rotating: the policy tenant gets the labelled port by `port_add`; the
    ACL tenant gets it by `apply` of its YAML with the port and the ACLs rewritten; the
    plain tenant by `port_add`. Each is undone (untimed) before the next. Time from the
    call to the flow-mods handed to the switches; the flow-mods and the hosts that were
    sent any."""
    from bench.pure import RecordingSwitch
    from controller.server.core import Core, freeze_heap
    from controller.state.store import HostRecord, SqliteStore
    item, why = new_port(sp)
    pol_doc, acl_doc = docs(sp)
    _, acl_doc_new = docs(with_port(sp, item))
    from topology.builder import tenant_doc
    plain_doc = tenant_doc("plain", switches=sp["switches"], routers=sp["routers"], ports=sp["ports"])
    got = {"policies": [], "acls": [], "plain": []}
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(os.path.join(tmp, "desired.db"))
        for i, h in enumerate(hs.values()):
            store.put_host(HostRecord(h.name, h.pa, 0x1000 + i, {"kind": "bench"}))
        core = Core(store)
        core.guard.enabled = False  # the change path of policies against ACLs; the proof's cost: --only change
        switches = {name: RecordingSwitch(rec.dpid) for name, rec in core.hosts.items()}
        for sw in switches.values():
            core.switch_connected(sw)
        core.create(pol_doc)
        core.create(acl_doc)
        core.create(plain_doc)
        freeze_heap()

        def timed(side, fn):
            sent = {h: sw.flow_mods for h, sw in switches.items()}
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            mods = {h: sw.flow_mods - sent[h] for h, sw in switches.items() if sw.flow_mods != sent[h]}
            got[side].append({"s": dt, "flow_mods": sum(mods.values()), "hosts": len(mods),
                              "host_max": max(mods.values(), default=0)})

        add = {k: v for k, v in item.items() if k not in ("name", "workload")}
        order = ("policies", "acls", "plain")
        for r in range(reps):
            for side in order[r % 3:] + order[:r % 3]:
                if side in ("policies", "plain"):
                    tn = "pol" if side == "policies" else "plain"
                    timed(side, lambda: core.port_add(tn, add["switch"], NEW_PORT, ip=add["ip"], host=add["host"],
                                                      workload=False, labels=add["labels"]))
                    core.port_del(tn, NEW_PORT)
                else:
                    timed(side, lambda: core.apply(acl_doc_new))
                    core.apply(acl_doc)
        in_sync = all(sw.table == core.desired[h] for h, sw in switches.items())
        store.close()
    out = {"port": item, **why, "switches_in_sync_after": in_sync}
    for side, rows in got.items():
        out[side] = {"ms": _stat([x["s"] * 1000 for x in rows], 1),
                     "flow_mods": _stat([x["flow_mods"] for x in rows], None),
                     "hosts_touched": _stat([x["hosts"] for x in rows], None),
                     "flow_mods_busiest_host": _stat([x["host_max"] for x in rows], None)}
    out["ratios"] = {"ms": _stat([x["s"] / y["s"] for x, y in zip(got["policies"], got["acls"])], 4),
                     "ms_over_no_policy": _stat([x["s"] / y["s"] for x, y in zip(got["policies"], got["plain"])], 4),
                     "flow_mods": round(out["policies"]["flow_mods"]["median"] /
                                        max(1, out["acls"]["flow_mods"]["median"]), 4)}
    log(f"[bench] netpol one labelled port added: policies {out['policies']['ms']['median']} ms, "
        f"{out['policies']['flow_mods']['median']} flow-mods on {out['policies']['hosts_touched']['median']} hosts; "
        f"ACLs (apply) {out['acls']['ms']['median']} ms, {out['acls']['flow_mods']['median']} flow-mods on "
        f"{out['acls']['hosts_touched']['median']} hosts; no policy (port_add) {out['plain']['ms']['median']} ms")
    return out


def netpol_bench(ports: int = 1000, reps: int = 5, samples: int = 300, log=print) -> dict:
    from bench.synth import hosts as make_hosts
    sp = spec(ports)
    hs = make_hosts(len(sp["hosts"]))
    t0 = time.monotonic()
    eq = equivalence(sp, samples, hosts=hs)
    log(f"[bench] netpol equivalence: {eq['agree']} of {eq['samples']} sampled connections agree "
        f"({eq['allowed']} allowed, {eq['denied']} denied) in {time.monotonic() - t0:.1f}s")
    if eq["agree"] != eq["samples"]:
        raise RuntimeError(f"policies and ACLs disagree: {eq['disagree']}")
    acl = acls(sp)
    out = {"ports": ports, "switches": len(sp["switches"]), "hosts": len(hs), "policies": len(sp["policies"]),
           "rules": sum(len(p.get("ingress") or []) + len(p.get("egress") or []) for p in sp["policies"]),
           "acl_entries": len(acl), "acl_peer_entries": sum(len(a.get("from", a.get("to", []))) for a in acl),
           "reps": reps, "equivalence": eq}
    out["compile"] = compile_figures(sp, reps, hs, log)
    out["port_add"] = port_add_figures(sp, reps, hs, log)
    return out


def report(r: dict) -> str:
    c, p = r["compile"], r["port_add"]

    def s(x, unit=""):
        return f"{x['median']:g}{unit} ({x['min']:g}-{x['max']:g})"
    lines = [f"netpol: {r['ports']} ports, {r['switches']} switches, {r['hosts']} hosts, {r['policies']} policies "
             f"({r['rules']} rules) against {r['acl_entries']} ACLs; {r['equivalence']['agree']}/"
             f"{r['equivalence']['samples']} sampled connections agree",
             f"  flows per host, max: {c['policies']['flows_per_host']['tenant_max']} against "
             f"{c['acls']['flows_per_host']['tenant_max']} ({c['ratios']['flows_per_host_max']}x); mean "
             f"{c['policies']['flows_per_host']['tenant_mean']} against {c['acls']['flows_per_host']['tenant_mean']} "
             f"({c['ratios']['flows_per_host_mean']}x)",
             f"  compile: {s(c['policies']['compile_s'], ' s')} against {s(c['acls']['compile_s'], ' s')}: "
             f"{s(c['ratios']['compile'], 'x')}",
             f"  one labelled port: port.add {s(p['policies']['ms'], ' ms')}, {p['policies']['flow_mods']['median']:g} "
             f"flow-mods on {p['policies']['hosts_touched']['median']:g} hosts; ACL apply {s(p['acls']['ms'], ' ms')}, "
             f"{p['acls']['flow_mods']['median']:g} flow-mods on {p['acls']['hosts_touched']['median']:g} hosts: "
             f"{s(p['ratios']['ms'], 'x')}; the same tenant without policies {s(p['plain']['ms'], ' ms')}"]
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse
    import json
    ap = argparse.ArgumentParser()
    ap.add_argument("--ports", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    res = netpol_bench(a.ports, a.reps, a.samples)
    print(json.dumps(res, indent=1) if a.json else report(res))
