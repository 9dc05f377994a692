"""nvctl's full compile against OVN's compiler, ovn-northd, on the same topology in the same run.

The topology is bench/synth's: N tenants, each two switches (10.0.1.0/24, 10.0.2.0/24) joined by
a distributed router, 10 ports and two ACL rules on the back ports. It is translated to one OVN
northbound (NB) transaction (`nb_transaction`, a pure function, unit-tested): per tenant two
Logical_Switch rows, a Logical_Router with two Logical_Router_Ports, a router-type
Logical_Switch_Port per switch, a Logical_Switch_Port per workload port (addresses and port
security "MAC IP" with the MAC nvctl derives) and per ACL rule one ACL row on each switch holding a
guarded port, referenced from Logical_Switch.acls. Names are prefixed with the tenant ("t0-front",
"t0-p0"); every tenant reuses the same addresses, which OVN allows (each switch is a datapath).

What is measured (every figure: median and min-max of several repetitions, the two sides
interleaved, alternating which goes first):

* Full compile. nvctl: `controller.compile.compiler.compile_world(hosts, world)`, every host's OpenFlow
  flows. northd: a fresh NB, SB and ovn-northd in a temp dir (no lab, no namespace); the whole
  topology in ONE NB transaction sent as JSON-RPC on the NB unix socket, then `ovn-nbctl --wait=sb
  sync`. The clock starts before the transaction is sent and stops when the sync returns: northd
  has read the NB, built its logical flows, the SB ovsdb-server has committed them and northd has
  seen that and said so (NB_Global.sb_cfg). The transaction's round trip and the sync are reported
  separately too. (Putting the nb_cfg increment into the big transaction and waiting for sb_cfg
  with an OVSDB "wait" gave the same total when tried: the sync's increment is absorbed by the
  recompute northd does anyway when the SB commit comes back.) Why not the CLIs: as one
  ovn-nbctl the 10,000-port topology is ~187,000 arguments, 3.8 MB with the pointers execve
  counts, over the kernel's ARG_MAX (2 MB; tried: E2BIG); ovsdb-client transact takes the
  transaction as ONE argument (~4 MB here; the limit per argument is 128 KiB). The
  single-ovn-nbctl load is timed once where it fits (the small size), beside the JSON-RPC one.
* One-port change. northd: with the topology loaded and synced, `ovn-nbctl --wait=sb lsp-add ...
  -- lsp-set-addresses ... -- lsp-set-port-security ...` adding one port to one tenant's front
  switch, until it returns. nvctl: `bench.pure.one_port_change` (one port moved to another host
  in a controller core holding the deployment, in-memory switches).
* Both at a tenth of the size as well, for growth.

NOT the same work: nvctl's figure is the per-host OpenFlow of every host (100 hosts at full
size, placement included); northd's is logical flows only, independent of hosts and placement
(the NB has none). Turning logical flows into OpenFlow is ovn-controller's job on each chassis,
not measured here (bench/versus.py measures OVN end to end on a small lab). northd's time also
includes two ovsdb-servers (NB parsing and committing the transaction, SB committing northd's
output) and ovn-nbctl's client (it downloads the NB), on the same 2 cores. ovn-northd runs
single-threaded, its defaults; OVN 23.03 has no incremental path for a new port, so each change
is a full recompute of northd's engine (its recompute counters are recorded to show it).
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

from bench.stats import spread
from topology.model import derived_mac

OVN_SCHEMAS = "/usr/share/ovn"
PORTS_PER_TENANT = 10
NB_DB = "OVN_Northbound"
SB_DB = "OVN_Southbound"
ACL_ACTIONS = {"allow": "allow-related", "allow-stateless": "allow-stateless", "deny": "drop"}
ACL_DIRECTIONS = {"to-port": ("to-lport", "outport"), "from-port": ("from-lport", "inport")}
ACL_PROTOCOLS = {"tcp": "tcp", "udp": "udp", "icmp": "icmp4"}
SUPPORTED_SPEC = {"switches", "routers", "ports", "acls"}


# the translation: synth tenant docs -> one NB transaction (pure) ------------------------------

def _set(items: list) -> list:
    return ["set", list(items)]


def _map(d: dict) -> list:
    return ["map", [[k, v] for k, v in d.items()]]


def _peers(value, spec: dict) -> list[str]:
    """An ACL's from/to (port names, switch names, CIDRs) as IPv4 networks, as nvctl reads them."""
    switches = {s["name"]: s["cidr"] for s in spec["switches"]}
    ports = {p["name"]: p["ip"] for p in spec["ports"]}
    out = []
    for v in value if isinstance(value, list) else [value]:
        if v in ports:
            out.append(f"{ports[v]}/32")
        elif v in switches:
            out.append(str(ipaddress.IPv4Network(switches[v])))
        else:
            out.append(str(ipaddress.IPv4Network(str(v))))  # ValueError for IPv6 / junk
    return out


def _port_ranges(field: str, values: list) -> str:
    parts = []
    for v in values:
        lo, _, hi = str(v).partition("-")
        parts.append(f"{field} == {int(lo)}" if not hi or int(hi) == int(lo) else
                     f"({field} >= {int(lo)} && {field} <= {int(hi)})")
    return parts[0] if len(parts) == 1 else "(" + " || ".join(parts) + ")"


def acl_match(acl: dict, spec: dict, guarded: list[str]) -> str:
    """OVN match text for one nvctl ACL rule on the given (tenant-prefixed) ports."""
    _, port_field = ACL_DIRECTIONS[acl["direction"]]
    names = ", ".join(f'"{n}"' for n in guarded)
    terms = [f"{port_field} == {{{names}}}" if len(guarded) > 1 else f'{port_field} == "{guarded[0]}"', "ip4"]
    for key, field in (("from", "ip4.src"), ("to", "ip4.dst")):
        if key in acl:
            nets = _peers(acl[key], spec)
            terms.append(f"{field} == {nets[0]}" if len(nets) == 1 else f"{field} == {{{', '.join(nets)}}}")
    proto = acl.get("protocol", "any")
    if proto != "any":
        terms.append(ACL_PROTOCOLS[proto])
        for key, side in (("srcPorts", "src"), ("dstPorts", "dst")):
            if acl.get(key):
                terms.append(_port_ranges(f"{proto}.{side}", acl[key]))
    return " && ".join(terms)


class _Ids:
    """named-uuids for one transaction: [a-z]+digits, unique, independent of tenants' names."""

    def __init__(self):
        self.n = 0

    def __call__(self, kind: str) -> str:
        self.n += 1
        return f"{kind}{self.n}"


def tenant_ops(doc: dict, ids: _Ids | None = None) -> list[dict]:
    """The NB insert operations for one tenant document (bench/synth's shape)."""
    ids = ids or _Ids()
    t = doc["metadata"]["name"]
    spec = doc["spec"]
    extra = set(spec) - SUPPORTED_SPEC
    if extra:
        raise ValueError(f"tenant {t}: {sorted(extra)} not translated to OVN by this benchmark")
    ops: list[dict] = []
    sw_ports: dict[str, list[str]] = {s["name"]: [] for s in spec["switches"]}
    sw_acls: dict[str, list[str]] = {s["name"]: [] for s in spec["switches"]}
    cidrs = {s["name"]: ipaddress.IPv4Network(s["cidr"]) for s in spec["switches"]}
    port_switch = {}
    for p in spec["ports"]:
        if "ip6" in p:
            raise ValueError(f"tenant {t}: port {p['name']}: IPv6 not translated by this benchmark")
        mac = p.get("mac") or derived_mac(ipaddress.IPv4Address(p["ip"]), 0)
        u = ids("lsp")
        ops.append({"op": "insert", "table": "Logical_Switch_Port", "uuid-name": u,
                    "row": {"name": f"{t}-{p['name']}", "addresses": _set([f"{mac} {p['ip']}"]),
                            "port_security": _set([f"{mac} {p['ip']}"])}})
        sw_ports[p["switch"]].append(u)
        port_switch[p["name"]] = p["switch"]
    for r in spec.get("routers", []):
        if r.get("routes") or r.get("external"):
            raise ValueError(f"tenant {t}: router {r['name']}: routes/external not translated by this benchmark")
        lrps = []
        for rp in r["ports"]:
            sw = rp["switch"]
            lrp_name = f"{t}-{r['name']}-{sw}"
            mac = rp.get("mac") or derived_mac(ipaddress.IPv4Address(rp["ip"]), 1)
            u = ids("lrp")
            ops.append({"op": "insert", "table": "Logical_Router_Port", "uuid-name": u,
                        "row": {"name": lrp_name, "mac": mac,
                                "networks": _set([f"{rp['ip']}/{cidrs[sw].prefixlen}"])}})
            lrps.append(u)
            u = ids("lsp")
            ops.append({"op": "insert", "table": "Logical_Switch_Port", "uuid-name": u,
                        "row": {"name": f"{t}-{sw}-{r['name']}", "type": "router", "addresses": "router",
                                "options": _map({"router-port": lrp_name})}})
            sw_ports[sw].append(u)
        ops.append({"op": "insert", "table": "Logical_Router", "uuid-name": ids("lr"),
                    "row": {"name": f"{t}-{r['name']}", "ports": _set([["named-uuid", u] for u in lrps])}})
    for acl in spec.get("acls", []):
        direction, _ = ACL_DIRECTIONS[acl["direction"]]
        guarded = acl.get("ports") or [p["name"] for p in spec["ports"]]  # none listed: every port
        for sw in sw_ports:  # one row per switch holding guarded ports: OVN ACLs are per switch
            here = [f"{t}-{n}" for n in guarded if port_switch[n] == sw]
            if not here:
                continue
            u = ids("acl")
            ops.append({"op": "insert", "table": "ACL", "uuid-name": u,
                        "row": {"priority": acl["priority"], "direction": direction,
                                "action": ACL_ACTIONS[acl["action"]],
                                "match": acl_match(acl, spec, here)}})
            sw_acls[sw].append(u)
    for s in spec["switches"]:
        ops.append({"op": "insert", "table": "Logical_Switch", "uuid-name": ids("ls"),
                    "row": {"name": f"{t}-{s['name']}",
                            "ports": _set([["named-uuid", u] for u in sw_ports[s["name"]]]),
                            "acls": _set([["named-uuid", u] for u in sw_acls[s["name"]]])}})
    return ops


def nb_transaction(docs: dict[str, dict]) -> list:
    """The JSON-RPC `transact` params inserting every tenant: [db, op, op, ...]."""
    ids = _Ids()
    ops: list = [NB_DB]
    for doc in docs.values():
        ops += tenant_ops(doc, ids)
    return ops


def port_cmds(tenant: str, switch: str, name: str, ip: str) -> list[str]:
    """ovn-nbctl arguments adding one workload port (the one-port change)."""
    lsp = f"{tenant}-{name}"
    addr = f"{derived_mac(ipaddress.IPv4Address(ip), 0)} {ip}"
    return ["lsp-add", f"{tenant}-{switch}", lsp, "--", "lsp-set-addresses", lsp, addr,
            "--", "lsp-set-port-security", lsp, addr]


def nbctl_args(docs: dict[str, dict]) -> list[str]:
    """The same rows as ovn-nbctl commands (one invocation, one transaction), derived from the
    transaction so that both describe one topology: to check what the nbctl route costs."""
    out: list[str] = []
    for doc in docs.values():
        ops = tenant_ops(doc)
        by_id = {o["uuid-name"]: o for o in ops}
        for o in ops:
            if o["table"] == "Logical_Switch":
                out += ["--", "ls-add", o["row"]["name"]]
        for o in ops:
            row = o["row"]
            if o["table"] == "Logical_Router":
                out += ["--", "lr-add", row["name"]]
                for _, u in row["ports"][1]:
                    lrp = by_id[u]["row"]
                    out += ["--", "lrp-add", row["name"], lrp["name"], lrp["mac"], *lrp["networks"][1]]
        for o in ops:
            if o["table"] != "Logical_Switch":
                continue
            ls = o["row"]["name"]
            for _, u in o["row"]["ports"][1]:
                row = by_id[u]["row"]
                out += ["--", "lsp-add", ls, row["name"]]
                if row.get("type") == "router":
                    out += ["--", "lsp-set-type", row["name"], "router", "--", "lsp-set-addresses", row["name"],
                            "router", "--", "lsp-set-options", row["name"],
                            *(f"{k}={v}" for k, v in row["options"][1])]
                else:
                    out += ["--", "lsp-set-addresses", row["name"], *row["addresses"][1],
                            "--", "lsp-set-port-security", row["name"], *row["port_security"][1]]
            for _, u in o["row"]["acls"][1]:
                row = by_id[u]["row"]
                out += ["--", "acl-add", ls, row["direction"], str(row["priority"]), row["match"], row["action"]]
    return out[1:]


def exec_bytes(args: list[str]) -> int:
    """What execve needs for these arguments and this environment (pointers included), against
    the kernel's ARG_MAX."""
    env = [f"{k}={v}" for k, v in os.environ.items()]
    return sum(len(a) + 1 + 8 for a in args) + sum(len(e) + 1 + 8 for e in env)


# OVN central processes --------------------------------------------------------------------------

class Rpc:
    """A minimal OVSDB JSON-RPC client on a unix socket (transact only)."""

    def __init__(self, path: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf = ""
        self.dec = json.JSONDecoder()
        self.next_id = 0

    def _recv(self) -> dict:
        while True:
            s = self.buf.lstrip()
            if s:
                try:
                    msg, end = self.dec.raw_decode(s)
                    self.buf = s[end:]
                    return msg
                except json.JSONDecodeError:
                    pass
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("ovsdb-server closed the connection")
            self.buf += chunk.decode()

    def send(self, data: bytes) -> int:
        self.sock.sendall(data)
        return self.next_id - 1

    def encode(self, params: list) -> bytes:
        msg = {"method": "transact", "params": params, "id": self.next_id}
        self.next_id += 1
        return json.dumps(msg, separators=(",", ":")).encode()

    def wait_reply(self, want: int) -> list:
        while True:
            msg = self._recv()
            if msg.get("method") == "echo":
                self.sock.sendall(json.dumps({"result": msg["params"], "error": None, "id": msg["id"]}).encode())
                continue
            if msg.get("id") != want:
                continue
            if msg.get("error"):
                raise RuntimeError(f"ovsdb transact failed: {msg['error']}")
            errs = [r for r in msg["result"] if isinstance(r, dict) and "error" in r]
            if errs:
                raise RuntimeError(f"ovsdb transact failed: {errs[:3]}")
            return msg["result"]

    def transact(self, params: list) -> list:
        data = self.encode(params)
        return self.wait_reply(self.send(data))

    def close(self) -> None:
        self.sock.close()


def _run(cmd: list[str], env: dict, timeout: float = 600) -> str:
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... exited {p.returncode}: {p.stderr.strip()[-500:]}")
    return p.stdout


def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


class Central:
    """NB and SB ovsdb-servers and ovn-northd on unix sockets in a directory of their own; every
    process ended by its pid file (never by name)."""

    def __init__(self, root: str):
        self.dir = root
        self.env = {**os.environ, "OVS_RUNDIR": root, "OVS_LOGDIR": root, "OVN_RUNDIR": root,
                    "OVN_LOGDIR": root, "OVS_DBDIR": root, "OVN_DBDIR": root}
        self.nb_sock, self.sb_sock = f"{root}/nb.sock", f"{root}/sb.sock"
        self.pidfiles: list[tuple[str, str]] = []

    def start(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        for db in ("nb", "sb"):
            _run(["ovsdb-tool", "create", f"{self.dir}/{db}.db", f"{OVN_SCHEMAS}/ovn-{db}.ovsschema"], self.env)
            pid = f"{self.dir}/{db}-ovsdb-server.pid"
            self.pidfiles.append((pid, "ovsdb-server"))
            _run(["ovsdb-server", f"{self.dir}/{db}.db", f"--remote=punix:{self.dir}/{db}.sock",
                  f"--unixctl={self.dir}/{db}-ovsdb-server.ctl", f"--pidfile={pid}",
                  f"--log-file={self.dir}/{db}-ovsdb-server.log", "--detach"], self.env, 30)
        pid = f"{self.dir}/ovn-northd.pid"
        self.pidfiles.append((pid, "ovn-northd"))
        _run(["ovn-northd", f"--ovnnb-db=unix:{self.nb_sock}", f"--ovnsb-db=unix:{self.sb_sock}",
              f"--unixctl={self.dir}/ovn-northd.ctl", f"--pidfile={pid}",
              f"--log-file={self.dir}/ovn-northd.log", "--detach"], self.env, 30)
        self.nbctl("--wait=sb", "--timeout=60", "sync")  # northd connected, active, NB_Global exists

    def stop(self) -> None:
        from scenarios.lab import _kill_pidfile
        for path, name in reversed(self.pidfiles):
            _kill_pidfile(path, name)
        self.pidfiles = []

    def pid(self, which: str) -> int:
        path = {"northd": "ovn-northd.pid", "nb": "nb-ovsdb-server.pid", "sb": "sb-ovsdb-server.pid"}[which]
        with open(f"{self.dir}/{path}") as f:
            return int(f.read().strip())

    def rss_mb(self) -> dict:
        out = {}
        for which in ("northd", "nb", "sb"):
            p = self.pid(which)
            out[which] = round(_status_kb(p, "VmRSS") / 1024, 1)
            out[f"{which}_peak"] = round(_status_kb(p, "VmHWM") / 1024, 1)
        return out

    def nbctl(self, *args: str, timeout: float = 600) -> str:
        return _run(["ovn-nbctl", f"--db=unix:{self.nb_sock}", *args], self.env, timeout)

    def appctl(self, target: str, *args: str) -> str:
        return _run(["ovn-appctl", "-t", f"{self.dir}/{target}.ctl", *args], self.env, 60)

    def count(self, sock: str, db: str, table: str) -> int:
        rpc = Rpc(sock)
        try:
            res = rpc.transact([db, {"op": "select", "table": table, "where": [], "columns": ["_uuid"]}])
        finally:
            rpc.close()
        return len(res[0]["rows"])


# measurements -------------------------------------------------------------------------------------

def parse_engine_stats(text: str) -> dict:
    """inc-engine/show-stats text -> {node: {"recompute": n, "compute": n, "abort": n}}."""
    out, node = {}, None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Node:"):
            node = line.split(":", 1)[1].strip()
            out[node] = {}
        elif node:
            m = re.match(r"-\s*(\w+):\s*(\d+)$", line)
            if m:
                out[node][m.group(1)] = int(m.group(2))
    return out


def parse_stopwatch(text: str) -> dict:
    """stopwatch/show text -> {name: {"samples": n, "max_ms": x, "p95_ms": x}}."""
    out, name = {}, None
    keys = {"Total samples": "samples", "Maximum": "max_ms", "95th percentile": "p95_ms"}
    for line in text.splitlines():
        m = re.match(r"Statistics for '(.+)'", line.strip())
        if m:
            name = m.group(1)
            out[name] = {}
            continue
        k, _, v = line.strip().partition(":")
        if name and k in keys:
            out[name][keys[k]] = float(v.split()[0])
    return out


LOG_EVENTS = re.compile(r"took \d+ms|Unreasonably long|IDL run:|commit failed")


def log_events(path: str) -> list[str]:
    """The lines of an OVS/OVN daemon log that say where time went (time of day, message)."""
    try:
        with open(path) as f:
            return [f"{ln[11:23]} {ln.split('|', 4)[-1].strip()}" for ln in f if LOG_EVENTS.search(ln)]
    except FileNotFoundError:
        return []


def _engine_recomputes(before: dict, after: dict) -> dict:
    """Recomputes per engine node between two snapshots, input nodes (NB_*, SB_*) left out."""
    return {n: v.get("recompute", 0) - before.get(n, {}).get("recompute", 0)
            for n, v in after.items() if not n.startswith(("NB_", "SB_"))}


def northd_full(docs: dict, root: str, keep: bool = False, log=print):
    """One repetition: a fresh central, the topology in one NB transaction, then a sync.
    Returns (figures, the Central still running if `keep`, else None)."""
    c = Central(root)
    ok = False
    try:
        c.start()
        engine0 = parse_engine_stats(c.appctl("ovn-northd", "inc-engine/show-stats"))
        rpc = Rpc(c.nb_sock)
        params = nb_transaction(docs)
        t0 = time.perf_counter()
        data = rpc.encode(params)
        encode_s = time.perf_counter() - t0
        t0 = time.perf_counter()  # the clock: from sending the transaction ...
        rpc.wait_reply(rpc.send(data))
        t1 = time.perf_counter()
        c.nbctl("--wait=sb", "sync")  # ... until northd has written the SB and said so
        t2 = time.perf_counter()
        rpc.close()
        fig = {"total_s": t2 - t0, "transact_s": t1 - t0, "sync_s": t2 - t1, "encode_s": encode_s,
               "ops": len(params) - 1, "bytes": len(data), "rss_mb": c.rss_mb(),
               "lflows": c.count(c.sb_sock, SB_DB, "Logical_Flow"),
               "dp_groups": c.count(c.sb_sock, SB_DB, "Logical_DP_Group"),
               "datapaths": c.count(c.sb_sock, SB_DB, "Datapath_Binding"),
               "port_bindings": c.count(c.sb_sock, SB_DB, "Port_Binding"),
               "nb_rows": {t: c.count(c.nb_sock, NB_DB, t) for t in
                           ("Logical_Switch", "Logical_Switch_Port", "Logical_Router", "Logical_Router_Port", "ACL")},
               "engine_recomputes": _engine_recomputes(
                   engine0, parse_engine_stats(c.appctl("ovn-northd", "inc-engine/show-stats"))),
               "stopwatch": parse_stopwatch(c.appctl("ovn-northd", "stopwatch/show")),
               "log_events": {"northd": log_events(f"{c.dir}/ovn-northd.log"),
                              "nb_ovsdb": log_events(f"{c.dir}/nb-ovsdb-server.log"),
                              "sb_ovsdb": log_events(f"{c.dir}/sb-ovsdb-server.log")}}
        t0 = time.perf_counter()
        c.nbctl("--wait=sb", "sync")  # nothing changed: ovn-nbctl's own cost plus northd's loop on nb_cfg
        fig["idle_sync_s"] = time.perf_counter() - t0
        log(f"[bench] northd: {len(docs)} tenants: transaction {fig['transact_s']:.2f}s "
            f"({fig['ops']} rows, {fig['bytes'] / 1e6:.1f} MB), sync {fig['sync_s']:.2f}s, total "
            f"{fig['total_s']:.2f}s; {fig['lflows']} logical flows; RSS northd {fig['rss_mb']['northd']} MB, "
            f"SB {fig['rss_mb']['sb']} MB; idle sync {fig['idle_sync_s']:.2f}s")
        ok = True
        return fig, (c if keep else None)
    finally:
        if not (ok and keep):
            c.stop()


def nbctl_load(docs: dict, root: str, log=print) -> dict:
    """The same topology as ONE ovn-nbctl invocation (--wait=none: client and NB commit only),
    when the kernel lets that many arguments through; a single run, on a fresh central."""
    args = nbctl_args(docs)
    need, arg_max = exec_bytes(args), os.sysconf("SC_ARG_MAX")
    out = {"args": len(args), "exec_bytes": need, "arg_max": arg_max, "possible": need < arg_max}
    if not out["possible"]:
        log(f"[bench] northd: {len(docs)} tenants as one ovn-nbctl: {len(args)} arguments, {need / 1e6:.2f} MB, "
            f"over ARG_MAX ({arg_max / 1e6:.2f} MB): not run")
        return out
    c = Central(root)
    try:
        c.start()
        t0 = time.perf_counter()
        c.nbctl("--wait=none", *args)
        out["nbctl_s"] = round(time.perf_counter() - t0, 4)
        out["lsps"] = c.count(c.nb_sock, NB_DB, "Logical_Switch_Port")
    finally:
        c.stop()
    log(f"[bench] northd: {len(docs)} tenants as one ovn-nbctl --wait=none: {out['nbctl_s']:.2f}s "
        f"({len(args)} arguments)")
    return out


def northd_changes(c: Central, tenants: int, reps: int, log=print) -> dict:
    """Add one port to one tenant's front switch, `reps` times, each until northd has written SB."""
    c.appctl("ovn-northd", "stopwatch/reset")
    before = parse_engine_stats(c.appctl("ovn-northd", "inc-engine/show-stats"))
    times = []
    for r in range(reps):
        cmds = port_cmds(f"t{(r * 37) % tenants}", "front", f"x{r}", f"10.0.1.{100 + r}")
        t0 = time.perf_counter()
        c.nbctl("--wait=sb", *cmds)
        times.append(time.perf_counter() - t0)
    after = parse_engine_stats(c.appctl("ovn-northd", "inc-engine/show-stats"))
    stopwatch = parse_stopwatch(c.appctl("ovn-northd", "stopwatch/show"))
    bare = []
    for r in range(3):  # the same client without waiting for northd: its own and the NB's share
        cmds = port_cmds(f"t{(r * 53 + 1) % tenants}", "front", f"y{r}", f"10.0.1.{200 + r}")
        t0 = time.perf_counter()
        c.nbctl("--wait=none", *cmds)
        bare.append(time.perf_counter() - t0)
    c.nbctl("--wait=sb", "sync")
    out = {"change_s": times, "change": spread(times), "nbctl_wait_none_s": bare, "nbctl_wait_none": spread(bare),
           "engine_recomputes": _engine_recomputes(before, after), "stopwatch": stopwatch,
           "lflows_after": c.count(c.sb_sock, SB_DB, "Logical_Flow")}
    log(f"[bench] northd: one-port add: median {out['change']['median'] * 1000:.0f} ms "
        f"({out['change']['min'] * 1000:.0f}-{out['change']['max'] * 1000:.0f}); ovn-nbctl without waiting "
        f"{out['nbctl_wait_none']['median'] * 1000:.0f} ms; northd recomputes {out['engine_recomputes'].get('northd')}")
    return out


def one_size(tenants: int, hosts: int, reps: int, change_reps: int, root: str, log=print) -> dict:
    """Full compile `reps` times each side, interleaved (the order alternating), then the
    one-port change on the last northd's loaded central, then nvctl's."""
    from bench.pure import one_port_change
    from bench.synth import deployment
    from controller.compile.compiler import compile_world

    hs, world, docs = deployment(tenants, PORTS_PER_TENANT, hosts)
    nv, nd, central, flows = [], [], None, None
    try:
        for r in range(reps):
            for side in (("nvctl", "northd") if r % 2 == 0 else ("northd", "nvctl")):
                if side == "nvctl":
                    t0 = time.perf_counter()
                    out = compile_world(hs, world)
                    nv.append(time.perf_counter() - t0)
                    flows = sum(len(v) for v in out.values())
                    del out
                    log(f"[bench] northd: {tenants} tenants: nvctl compile_world {nv[-1]:.2f}s, {flows} flows "
                        f"on {hosts} hosts")
                else:
                    fig, c = northd_full(docs, os.path.join(root, f"{tenants}-{r}"), keep=r == reps - 1, log=log)
                    nd.append(fig)
                    central = c or central
        ch = northd_changes(central, tenants, change_reps, log)
    finally:
        if central is not None:
            central.stop()
    nbctl = nbctl_load(docs, os.path.join(root, f"{tenants}-nbctl"), log)
    nv_change = one_port_change(tenants, hosts, repeats=change_reps, log=log)
    last = nd[-1]
    col = lambda k: [f[k] for f in nd]  # noqa: E731
    northd = {
        "total_s": col("total_s"), "transact_s": col("transact_s"), "sync_s": col("sync_s"),
        "idle_sync_s": col("idle_sync_s"), "total": spread(col("total_s")), "transact": spread(col("transact_s")),
        "sync": spread(col("sync_s")), "idle_sync": spread(col("idle_sync_s")),
        "encode_s": round(statistics.median(col("encode_s")), 4), "txn_rows": last["ops"], "txn_bytes": last["bytes"],
        "nb_rows": last["nb_rows"], "lflows": last["lflows"], "dp_groups": last["dp_groups"],
        "datapaths": last["datapaths"], "port_bindings": last["port_bindings"],
        "rss_mb": {k: statistics.median(f["rss_mb"][k] for f in nd) for k in last["rss_mb"]},
        "compile_engine_recomputes": last["engine_recomputes"], "compile_stopwatch": last["stopwatch"],
        "compile_log_events": last["log_events"], "one_port": ch, "nbctl_load": nbctl}
    nvctl = {"compile_s": nv, "compile": spread(nv), "flows": flows, "one_port_change": nv_change}
    ratios = {"compile_nvctl_over_northd": round(statistics.median(nv) / statistics.median(col("total_s")), 4),
              "change_one_port_nvctl_over_northd": round(nv_change["change_ms_median"] / 1000 /
                                                         ch["change"]["median"], 5)}
    log(f"[bench] northd: {tenants} tenants: ratios {ratios}")
    return {"tenants": tenants, "ports": tenants * PORTS_PER_TENANT, "hosts": hosts, "reps": reps,
            "change_reps": change_reps, "nvctl": nvctl, "northd": northd, "ratios": ratios}


def _versions() -> dict:
    out = {}
    for name, cmd in (("ovn_northd", ["ovn-northd", "--version"]), ("ovsdb_server", ["ovsdb-server", "--version"])):
        try:
            out[name] = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            out[name] = None
    return out


def northd_compare(tenants: int = 1000, hosts: int = 100, reps: int = 3, change_reps: int = 10,
                   log=print) -> dict:
    """A tenth of the size, then the full size, nvctl and northd interleaved at each; see the
    module docstring. Every OVN process is started in, and ended from, one temp dir."""
    for tool in ("ovsdb-tool", "ovsdb-server", "ovn-northd", "ovn-nbctl", "ovn-appctl"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found (apt-get install ovn-central)")
    small = (max(1, tenants // 10), max(2, hosts // 10))
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    root = tempfile.mkdtemp(prefix="nvctl-northd-")
    log(f"[bench] northd: sizes {small[0]} and {tenants} tenants, {reps} reps, {change_reps} one-port changes; "
        f"OVN processes in {root}")
    try:
        sizes = [one_size(n, h, reps, change_reps, root, log) for n, h in (small, (tenants, hosts))]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    lo, hi = sizes

    def grow(f):
        return round(f(hi) / f(lo), 2)
    growth = {"ports_factor": hi["ports"] / lo["ports"],
              "nvctl_compile": grow(lambda s: s["nvctl"]["compile"]["median"]),
              "northd_compile": grow(lambda s: s["northd"]["total"]["median"]),
              "nvctl_change": grow(lambda s: s["nvctl"]["one_port_change"]["change_ms_median"]),
              "northd_change": grow(lambda s: s["northd"]["one_port"]["change"]["median"]),
              "lflows": grow(lambda s: s["northd"]["lflows"]), "nvctl_flows": grow(lambda s: s["nvctl"]["flows"])}
    return {"sizes": sizes, "ratios": hi["ratios"], "growth": growth, "versions": _versions(),
            "method": {
                "nb_load": "one JSON-RPC transact on the NB unix socket (named-uuid rows), then ovn-nbctl "
                           "--wait=sb sync; clock from before sending to the sync's return",
                "acl": "one ACL row per rule and switch in Logical_Switch.acls: outport == {guarded ports} "
                       "&& ip4 [&& ip4.src == CIDR && tcp && tcp.dst == N]; allow -> allow-related, deny -> drop",
                "change": "northd: ovn-nbctl --wait=sb lsp-add + lsp-set-addresses + lsp-set-port-security, a "
                          "port added; nvctl: bench.pure.one_port_change, a port moved to another host",
                "nvctl_output": "per-host OpenFlow for every host", "northd_output": "SB logical flows only",
                "interleaving": "per rep both sides, order alternating; a fresh NB/SB/northd per northd rep"},
            "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
            "wall_s": round(time.perf_counter() - t_start, 1)}


def _ms(x: float) -> str:
    return f"{x * 1000:.0f}"


def report(res: dict) -> str:
    lines = []
    for s in res["sizes"]:
        nv, nd = s["nvctl"], s["northd"]
        c, t, op = nv["compile"], nd["total"], nd["one_port"]
        lines.append(f"{s['tenants']} tenants / {s['ports']} ports / {s['hosts']} hosts: median (min-max) of "
                     f"{s['reps']} (compile), {s['change_reps']} (one port)")
        lines.append(f"  full compile  nvctl  {c['median']:.2f}s ({c['min']:.2f}-{c['max']:.2f}): {nv['flows']} "
                     f"OpenFlow flows for {s['hosts']} hosts")
        lines.append(f"                northd {t['median']:.2f}s ({t['min']:.2f}-{t['max']:.2f}) = NB transaction "
                     f"{nd['transact']['median']:.2f}s ({nd['txn_rows']} rows, {nd['txn_bytes'] / 1e6:.1f} MB JSON) "
                     f"+ until ovn-nbctl --wait=sb sync returns {nd['sync']['median']:.2f}s: {nd['lflows']} logical "
                     f"flows, {nd['dp_groups']} datapath groups, {nd['datapaths']} datapaths")
        rec = nd["compile_engine_recomputes"]
        sw = nd["compile_stopwatch"]
        lines.append(f"                northd engine recomputes in it: northd {rec.get('northd')}, lflow "
                     f"{rec.get('lflow')}; longest loop {sw.get('ovn-northd-loop', {}).get('max_ms', 0):.0f} ms, "
                     f"build_lflows {sw.get('build_lflows', {}).get('max_ms', 0):.0f} ms, lflows_to_sb "
                     f"{sw.get('lflows_to_sb', {}).get('max_ms', 0):.0f} ms")
        rss = nd["rss_mb"]
        lines.append(f"                RSS after sync: northd {rss['northd']} MB (peak {rss['northd_peak']}), "
                     f"NB ovsdb-server {rss['nb']} MB, SB ovsdb-server {rss['sb']} MB (peak {rss['sb_peak']}); "
                     f"an idle ovn-nbctl --wait=sb sync {nd['idle_sync']['median']:.2f}s")
        nb = nd["nbctl_load"]
        lines.append("                as one ovn-nbctl instead: " +
                     (f"{nb['nbctl_s']:.2f}s (client + NB commit, --wait=none; {nb['args']} arguments), "
                      f"JSON-RPC {nd['transact']['median']:.2f}s" if nb["possible"] else
                      f"impossible, {nb['args']} arguments need {nb['exec_bytes'] / 1e6:.2f} MB > ARG_MAX "
                      f"{nb['arg_max'] / 1e6:.2f} MB"))
        och = nv["one_port_change"]
        lines.append(f"  one port      nvctl  {och['change_ms_median']} ms (max {och['change_ms_max']}), a port moved, "
                     f"flow-mods to {och['hosts_touched_median']} hosts")
        lines.append(f"                northd {_ms(op['change']['median'])} ms ({_ms(op['change']['min'])}-"
                     f"{_ms(op['change']['max'])}), a port added with ovn-nbctl --wait=sb (the client alone, "
                     f"--wait=none: {_ms(op['nbctl_wait_none']['median'])} ms); northd engine recomputes "
                     f"northd {op['engine_recomputes'].get('northd')}, lflow {op['engine_recomputes'].get('lflow')} "
                     f"in {len(op['change_s'])} changes")
        r = s["ratios"]
        lines.append(f"  ratios        compile nvctl/northd {r['compile_nvctl_over_northd']}, one-port change "
                     f"nvctl/northd {r['change_one_port_nvctl_over_northd']}")
    g = res["growth"]
    lines.append(f"growth for x{g['ports_factor']:.0f} ports: compile nvctl x{g['nvctl_compile']}, northd "
                 f"x{g['northd_compile']}; one-port change nvctl x{g['nvctl_change']}, northd x{g['northd_change']}; "
                 f"flows nvctl x{g['nvctl_flows']}, logical flows x{g['lflows']}")
    lines.append(f"{res['versions'].get('ovn_northd')}; load average before {res['loadavg_before'][0]:.2f}, "
                 f"after {res['loadavg_after'][0]:.2f}; wall {res['wall_s']}s")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tenants", type=int, default=1000)
    ap.add_argument("--hosts", type=int, default=100)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--change-reps", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="10 and 100 tenants (2 and 10 hosts), 2 reps, 3 changes")
    a = ap.parse_args()
    if a.quick:
        a.tenants, a.hosts, a.reps, a.change_reps = 100, 10, 2, 3
    res = northd_compare(a.tenants, a.hosts, a.reps, a.change_reps)
    print(report(res))
    print(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
