"""nvctl: the command line of the nvctl network virtualization platform.

Typical session (as root):

  nvctl lab up --hosts 3              # 3 simulated hypervisors + the controller
  nvctl tenant create -f examples/blue.yaml
  nvctl exec blue/vm1 -- ping -c 3 10.0.0.12
  nvctl flows hv1                     # that host's OpenFlow rules, by table name
  nvctl tenant show blue              # where each port is, whether flows are installed
  nvctl lab down                      # removes everything the lab made

Every command takes --state-dir (or NVCTL_STATE_DIR; default /var/lib/nvctl): the lab,
its controller and its store live there, so several labs can run side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time

from controller.client.api import ApiClientError, call
from tep.join import DEFAULT_DB
from controller.client.common import CommandError, api_socket, read_input, show, state_dir_from
from controller.client.render import change_proof_lines, trace_lines, verify_lines
from controller.client import accesscmd, hostcmd, labcmd, layercmd

EXEC_TIMEOUT = 600  # seconds a command in a VM may run (nvctl exec)
CONSOLE_DRAIN = 1.0  # seconds of a guest's console output still shown after piped input ends


def _observe(name: str):
    """A command of controller.client.observe, run with the API socket found as for every command."""
    def run(a):
        from controller.client import observe
        a.api_path = api_socket(a)
        return getattr(observe, name)(a)
    return run


def _tenant_port(target: str, command: str) -> tuple[str, str]:
    tenant, sep, port = target.partition("/")
    if not (sep and tenant and port):
        raise SystemExit(f"nvctl {command}: give the port as TENANT/PORT, e.g. blue/vm1 (got {target!r})")
    return tenant, port





# tenants -----------------------------------------------------------------------------

def _report_change(r: dict, as_json: bool):
    if as_json:
        return show(r, True)
    print(f"tenant {r['tenant']} {r['action']}")
    for h, what in r["hosts"].items():
        print(f"  {h}: {what}")
    for e in r.get("attach_errors", []):
        print(f"  warning: {e}")


def _put_tenant(a, verb: str) -> dict:
    """tenant.create / tenant.apply, with its progress (workloads plugged, hosts synced)
    polled from the controller on a second connection while the request runs."""
    from controller.client.progress import Reporter, follow_change
    text = read_input(a.file)
    try:
        import yaml
        name = yaml.safe_load(text)["metadata"]["name"]
    except Exception:  # the controller says what is wrong with it
        name = None
    run = lambda: call(api_socket(a), f"tenant.{verb}", yaml=text)  # noqa: E731
    if not isinstance(name, str):
        return run()
    with Reporter(f"tenant {verb}") as rep:
        return follow_change(run, lambda after: call(api_socket(a), "progress", tenant=name, after=after, timeout=5),
                             rep, name)


def cmd_tenant_create(a):
    _report_change(_put_tenant(a, "create"), a.json)


def cmd_tenant_apply(a):
    _report_change(_put_tenant(a, "apply"), a.json)


def cmd_tenant_validate(a):
    r = call(api_socket(a), "tenant.validate", yaml=read_input(a.file))
    if a.json:
        return show(r, True)
    print(f"tenant {r['tenant']} is valid: {r['switches']} switches, {r['ports']} ports")


def cmd_tenant_delete(a):
    _report_change(call(api_socket(a), "tenant.delete", name=a.name), a.json)


def cmd_tenant_list(a):
    rows = call(api_socket(a), "tenant.list")
    if a.json:
        return show(rows, True)
    print(f"{'NAME':20} {'ID':>5} {'SWITCHES':>8} {'PORTS':>6} {'REV':>4}")
    for r in rows:  # a layer credential is told the names only
        print(f"{r['name']:20} {r.get('tenant_id', '-'):>5} {r.get('switches', '-'):>8} {r.get('ports', '-'):>6} "
              f"{r.get('revision', '-'):>4}")


def cmd_tenant_show(a):
    r = call(api_socket(a), "tenant.show", name=a.name)
    if a.json:
        return show(r, True)
    import yaml
    print(yaml.safe_dump(r["spec"], sort_keys=False).rstrip())
    print("status:")
    print(f"  revision: {r['revision']}   tenant id: {r['ids']['tenant_id']}   "
          f"VNIs: {', '.join(f'{k}={v}' for k, v in r['ids']['vni'].items())}")
    print(f"  MTU: {', '.join(f'{k}={v}' for k, v in r['mtu'].items())}")
    width = max([12] + [len(p["name"]) for p in r["ports"]])
    spec = {p["name"]: p for p in r["spec"]["spec"]["ports"]}
    print(f"  {'PORT':{width}} {'HOST':6} {'OFPORT':>6} {'STATE':6} {'MADE BY':7} {'WORKLOAD':24} LABELS")
    for p in r["ports"]:
        s = spec.get(p["name"], {})
        what = ("vm" if s.get("workload") == "vm" else p["namespace"]) or "-"
        labels = ",".join(f"{k}={v}" for k, v in sorted((s.get("labels") or {}).items())) or "-"
        print(f"  {p['name']:{width}} {p['host']:6} {p['ofport']:>6} {'up' if p['up'] else 'DOWN':6} "
              f"{p['madeBy']:7} {what:24} {labels}")
    print(f"  {'HOST':6} {'FLOWS':>6} INSTALLED")
    for h, s in r["hosts"].items():
        print(f"  {h:6} {s['flows']:>6} {'yes' if s['installed'] else 'NO'}{'  ' + s['note'] if s.get('note') else ''}")
    for g in r.get("gateways", ()):
        group = ", ".join(f"{x['host']}{'*' if x['active'] else ''}{'' if x['alive'] else ' (down)'}"
                          for x in g["gateways"]) or "none: no host with the provider network"
        print(f"  router {g['router']} {g['externalIp']}: gateways {group}   (* active)")
        for f in g["floatingIps"]:
            how = f"distributed, on {f['host']}" if f["distributed"] else f"through the gateway {f['host'] or '-'}"
            print(f"    floating IP {f['ip']} -> {f['port']}: {how}")
    for rt in r.get("routes", ()):
        if rt["importRoutes"] is not None:
            print(f"  router {rt['router']}: imports routes inside {', '.join(rt['importRoutes']) or 'nothing'}")
            for x in rt["learned"]:
                print(f"    learned {x['prefix']} via {x['nextHop']} from {x['peer']} (AS {x['peerAsn']})")
            for x in rt["refused"]:
                print(f"    refused {x['prefix']}: {x['why']}")
            if not rt["learned"] and not rt["refused"]:
                print("    nothing learned (no route inside the filters, or no BGP session)")
        for x in rt["announced"]:
            if x["nextHop"]:
                print(f"  router {rt['router']}: announces {x['prefix']} via {x['nextHop']} ({x['host']})")


def cmd_bgp(a):
    r = call(api_socket(a), "bgp.status")
    if a.json:
        return show(r, True)
    if not r["configured"]:
        print("BGP is not configured (the controller's --bgp FILE; see docs/bgp.md)")
        return 0
    if not r["leading"]:
        print("this controller is not the leader: the leader speaks BGP")
    for n in r["networks"]:
        print(f"provider network {n['network']}, AS {n['asn']}")
        print(f"  {'PEER':16} {'AS':>10} {'STATE':12} {'SINCE':>8} {'RECEIVED':>8} {'SENT':>6}  GR   ERROR")
        for s in n["sessions"]:
            since = f"{max(0, time.time() - s['since']):.0f}s" if s.get("since") else "-"
            print(f"  {s['peer']:16} {s['asn']:>10} {s['state']:12} {since:>8} {s['received']:>8} {s['sent']:>6}  "
                  f"{'yes' if s.get('graceful_restart') else 'no ':4} {s.get('error') or ''}")
        print(f"  announced ({len(n['announced'])}):")
        for x in n["announced"]:
            print(f"    {x['prefix']:20} via {x['nextHop']}")
        print(f"  learned ({len(n['learned'])}):")
        for x in n["learned"]:
            path = " ".join(str(a) for a in x["asPath"]) or "-"
            print(f"    {x['prefix']:20} via {x['nextHop']:15} from {x['peer']} AS path {path}"
                  f"{'  (stale: the peer restarts)' if x['stale'] else ''}")
    return 0


# flows, exec ---------------------------------------------------------------------------

def cmd_flows(a):
    r = call(api_socket(a), "flows", host=a.host)
    if a.tenant:
        r["flows"] = [f for f in r["flows"] if f["tenant"] == a.tenant]
        r["unexpected"] = [u for u in r["unexpected"] if u["tenant"] == a.tenant]
    if a.json:
        return show(r, True)
    table = None
    for f in r["flows"]:
        if a.tenant and f["tenant"] != a.tenant:
            continue
        if f["table"] != table:
            table = f["table"]
            print(f"# {table} (layer {f['layer']})")
        mark = {True: " ", False: "!", None: "?"}[f["installed"]]
        who = f"{f['tenant']}: " if f["tenant"] else ""
        print(f"{mark} {f['flow']}   # {who}{f['rule']}")
    missing = sum(1 for f in r["flows"] if f["installed"] is False)
    print(f"# {len(r['flows'])} flows desired on {a.host}; "
          + ("host not connected, installed state unknown" if not r["connected"] else
             f"{missing} missing (!), {len(r['unexpected'])} unexpected on the switch"))
    for u in r["unexpected"]:
        print(f"# unexpected: cookie={u['cookie']} table={u['table']} layer={u['layer']}")


def cmd_verify(a):
    """Exit 0: every check holds; 1: a violation (with its counterexample); 2: could not verify."""
    if a.watch:
        return _watch_changes(a)
    try:
        r = call(api_socket(a), "verify", tenant=a.tenant, host=a.host)
    except ApiClientError as e:
        print(f"nvctl verify: {e}", file=sys.stderr)
        sys.exit(2)
    if a.json:
        show(r, True)
    else:
        print("\n".join(verify_lines(r)))
    if r["errors"]:
        sys.exit(2)
    sys.exit(0 if r["ok"] else 1)


def _watch_changes(a):
    """`nvctl verify --watch`: every change's verify-before-install result as it comes
    (the last one first), until interrupted; --json: one object per line."""
    import time
    after, first = 0, True
    try:
        while True:
            try:
                r = call(api_socket(a), "verify.changes", after=after, tenant=a.tenant)
            except ApiClientError as e:
                print(f"nvctl verify --watch: {e}", file=sys.stderr)
                sys.exit(2)
            if first:
                if not r["enabled"]:
                    print("nvctl verify --watch: the controller runs with --no-verify-changes; changes are not "
                          "proved before install (run `nvctl verify` to prove what is installed)", file=sys.stderr)
                    sys.exit(2)
                rows = r["changes"][-1:]  # the newest first, then what follows
                if not a.json:
                    print(f"# verify before install: {r['seq']} change(s) proved so far; following "
                          f"{'tenant ' + a.tenant if a.tenant else 'every tenant'} (Ctrl-C ends)", flush=True)
                first = False
            else:
                rows = r["changes"]
            for e in rows:
                print(json.dumps(e) if a.json else "\n".join(change_proof_lines(e)), flush=True)
            after = r["seq"]
            time.sleep(a.interval)
    except KeyboardInterrupt:
        sys.exit(0)


def cmd_exec(a):
    tenant, port = _tenant_port(a.target, "exec")
    info = call(api_socket(a), "port.info", tenant=tenant, port=port)
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    if not cmd:
        raise SystemExit("nvctl exec: no command given (nvctl exec TENANT/PORT -- CMD ...)")
    if info.get("vm"):
        return _exec_in_guest(a.target, info["vm"], cmd)
    if not info["namespace"]:
        raise SystemExit(f"nvctl exec: {a.target} is on {info['host']}, which is not a lab host")
    os.execvp("ip", ["ip", "netns", "exec", info["namespace"], *cmd])


def _exec_in_guest(target: str, guest: dict, cmd: list[str]) -> None:
    """A command in a VM, through its agent (tep.vm): its output, and its exit code as ours."""
    import shlex
    from tep.vm import Guest, VmError
    if not guest.get("running"):
        raise SystemExit(f"nvctl exec: {target}'s guest is not running (see nvctl console {target} --log)")
    g = Guest(os.path.dirname(guest["agent"]), guest["name"])
    try:
        rc, out = g.run(" ".join(shlex.quote(c) for c in cmd), timeout=EXEC_TIMEOUT)
    except (VmError, OSError) as e:
        raise SystemExit(f"nvctl exec: {target}: {e}") from None
    sys.stdout.write(out)
    sys.stdout.flush()
    sys.exit(rc)


def cmd_console(a):
    """A VM's serial console: its log so far (--log), or the console itself, attached
    until Ctrl-] (the guest's shell on ttyS0)."""
    tenant, port = _tenant_port(a.target, "console")
    info = call(api_socket(a), "port.info", tenant=tenant, port=port)
    guest = info.get("vm")
    if not guest:
        raise SystemExit(f"nvctl console: {a.target} is not a VM (workload: vm) on a lab host; "
                         f"for a namespace use nvctl exec {a.target} -- sh")
    if a.log:
        try:
            sys.stdout.write(open(guest["log"], errors="replace").read())
        except FileNotFoundError:
            raise SystemExit(f"nvctl console: {a.target} has no console log yet") from None
        return
    if not guest.get("running"):
        raise SystemExit(f"nvctl console: {a.target}'s guest is not running (nvctl console {a.target} --log)")
    _attach_console(guest["console"])


def _attach_console(path: str) -> None:
    import select
    import socket
    import termios
    import tty
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    fd = sys.stdin.fileno()
    raw = os.isatty(fd)
    saved = termios.tcgetattr(fd) if raw else None
    if raw:
        print("connected to the guest's serial console; Ctrl-] leaves", file=sys.stderr)
        tty.setraw(fd)
    inputs = [s, fd]
    try:
        s.sendall(b"\n")
        while True:
            # input from a pipe: once it ends, what the guest still prints for a second is shown
            ready, _, _ = select.select(inputs, [], [], None if fd in inputs else CONSOLE_DRAIN)
            if not ready:
                break
            if s in ready:
                data = s.recv(4096)
                if not data:
                    break
                os.write(sys.stdout.fileno(), data)
            if fd in ready:
                data = os.read(fd, 1024)
                if raw and (not data or b"\x1d" in data):
                    break
                if not data:
                    inputs.remove(fd)
                    continue
                s.sendall(data)
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        s.close()


def cmd_trace(a):
    tenant, port = _tenant_port(a.target, "trace")
    r = call(api_socket(a), "trace", tenant=tenant, port=port, packet=a.packet, real=a.real)
    if a.json:
        return show(r, True)
    print("\n".join(trace_lines(r)))
    if r["agree"] is False:
        sys.exit(2)


def cmd_port_migrate(a):
    tenant, port = _tenant_port(a.target, "port migrate")
    if a.cancel:
        r = call(api_socket(a), "port.migrate_cancel", tenant=tenant, port=port)
        return show(r, True) if a.json else print(f"{tenant}/{port}: {r['action']}")
    if not a.to:
        raise SystemExit("nvctl port migrate: --to HOST is needed (or --cancel)")
    r = call(api_socket(a), "port.migrate", tenant=tenant, port=port, to=a.to, prepare=a.prepare,
             bandwidth_mbps=a.bandwidth)
    if a.json:
        return show(r, True)
    if a.prepare:
        print(f"{tenant}/{port}: bound on {r['src']}, and pending on {r['pending']} at ofport "
              f"{r['pending_ofport']}: its traffic goes to both; {r['pending']} takes over at the guest's "
              f"first RARP or gratuitous ARP there. Plug the destination's interface with "
              f"external_ids:iface-id={tenant}/{port}, then migrate.")
        return
    t = r["timings_ms"]
    if r.get("vm"):
        print(f"{tenant}/{port}: VM {r['src']} -> {r['dst']} (ofport {r['ofport']} on {r['dst']}), "
              f"{t['total']} ms in all")
        for k, step in enumerate(r["steps"], 1):
            print(f"  {k}. {step['step']}: {step['ms']} ms")
        for h, what in r["hosts"].items():
            print(f"     {h}: {what}")
        print(f"  QEMU's downtime (the guest paused): {t['qemu_downtime']} ms")
        if "announcement_to_destination_ready" in t:
            print(f"  network switch (announcement -> {r['dst']} delivering; the other hosts already sent "
                  f"to both): {t['announcement_to_destination_ready']} ms")
        return
    print(f"{tenant}/{port}: {r['src']} -> {r['dst']} (ofport {r['ofport']} on {r['dst']})")
    print(f"  1. {r['dst']} ready (its flows, workload attached there too): {t['destination_ready']} ms")
    print(f"  2. other hosts switched to {r['dst']}'s PA, one bundle each: {t['other_hosts_switched']} ms")
    for h, what in r["hosts"].items():
        print(f"     {h}: {what}")
    print(f"  3. {r['src']} switched: {t['source_switched']} ms")
    print(f"  4. attachment on {r['src']} removed: {t['old_attachment_removed']} ms")
    print(f"  switch window (both attachments live while hosts switch): {t['switch_window']} ms")


def cmd_port_add(a):
    if a.vm and a.no_workload:
        raise SystemExit("nvctl port add: --vm and --no-workload exclude each other")
    labels = {}
    for kv in a.label or ():
        k, eq, v = kv.partition("=")
        if not eq:
            raise SystemExit(f"nvctl port add: --label {kv!r}: KEY=VALUE (the value may be empty: KEY=)")
        labels[k] = v
    r = call(api_socket(a), "port.add", tenant=a.tenant, switch=a.switch, name=a.name, ip=a.ip, mac=a.mac,
             host=a.host, workload="vm" if a.vm else not a.no_workload, ip6=a.ip6, labels=labels or None)
    if a.json:
        return show(r, True)
    p = r["port"]
    v6 = f", {p['ip6']}/{p['prefixlen6']}" if p.get("ip6") else ""
    print(f"{r['tenant']}/{p['name']}: {p['ip']}/{p['prefixlen']}{v6} {p['mac']} on {p['host']} "
          f"(ofport {p['ofport']}, MTU {p['mtu']}" + (f", gateway {p['gateway']})" if p["gateway"] else ")"))
    if p.get("vm"):
        print(f"  workload: a VM booting on {p['host']} (DHCP gives it its address); "
              f"nvctl exec {r['tenant']}/{p['name']} -- CMD, nvctl console {r['tenant']}/{p['name']}")
    elif p["workload"] and p["namespace"]:
        print(f"  workload: namespace {p['namespace']}")
    else:
        print(f"  no workload made: plug an interface into {p['host']}'s br-int with "
              f"external_ids:iface-id={p['iface_id']} (any ofport: the port is bound where OVS puts it)")
    for h, what in r["hosts"].items():
        print(f"  {h}: {what}")
    for e in r.get("attach_errors", []):
        print(f"  warning: {e}")


def cmd_port_label(a):
    tenant, port = _tenant_port(a.target, "port label")
    put, remove = {}, []
    for item in a.labels:
        if item.endswith("-") and "=" not in item:
            remove.append(item[:-1])
            continue
        k, eq, v = item.partition("=")
        if not eq:
            raise SystemExit(f"nvctl port label: {item!r}: KEY=VALUE to set, KEY- to remove")
        put[k] = v
    r = call(api_socket(a), "port.label", tenant=tenant, port=port, set=put or None, remove=remove or None)
    if a.json:
        return show(r, True)
    labels = ",".join(f"{k}={v}" for k, v in sorted(r["labels"].items())) or "(none)"
    if not r["changed"]:
        print(f"{tenant}/{port}: labels unchanged: {labels}")
        return
    print(f"{tenant}/{port}: labels {labels}")
    for h, what in r.get("hosts", {}).items():
        print(f"  {h}: {what}")


def cmd_port_del(a):
    tenant, port = _tenant_port(a.target, "port del")
    _report_change(call(api_socket(a), "port.del", tenant=tenant, port=port), a.json)


def cmd_docker_plugin(a):
    from controller.runtimes import docker_plugin
    docker_plugin.run(a, state_dir_from(a.state_dir))


def cmd_api(a):
    ops = call(api_socket(a), "api.operations")
    if a.op:
        ops = [o for o in ops if o["name"] == a.op]
        if not ops:
            raise CommandError(f"no operation {a.op!r} (nvctl api lists them)")
    if a.json:
        return show(ops, True)
    for o in ops:
        scope = o["scope"]["kind"] + (f" ({o['scope']['arg']})" if o["scope"].get("arg") else "")
        args = ", ".join(f"{n}: {'|'.join(x['types'])}"
                         + ("" if x["required"] else f" = {json.dumps(x['default'])}") for n, x in o["args"].items())
        print(f"{o['name']:18} {o['kind']:6} {scope:22} {args}")
        if a.op:
            print(textwrap.fill(o["doc"], 88, initial_indent="  ", subsequent_indent="  "))
            if o["over"] != ["unix"]:
                print(f"  offered over: {', '.join(o['over'])}")


def cmd_ui(a):
    from controller.client.ui import serve
    sys.exit(serve(a.api or api_socket(a), listen=a.listen, port=a.port))


# parser ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from scenarios.lab import UNDERLAY_MTU  # the lab's default, shown in lab up's help
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: an option given before the subcommand is not overwritten by its default
    common.add_argument("--state-dir", default=argparse.SUPPRESS,
                        help="lab and controller state (env NVCTL_STATE_DIR; default /var/lib/nvctl)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output")
    common.add_argument("--credential", metavar="FILE", default=argparse.SUPPRESS,
                        help="talk to the controller's network API with this credential (env "
                             "NVCTL_CREDENTIAL; see 'nvctl credential'); default: the unix socket")
    common.add_argument("--server", metavar="URL", default=argparse.SUPPRESS,
                        help="with a credential: this server (https://HOST:PORT) instead of its list")
    ap = argparse.ArgumentParser(prog="nvctl", description=__doc__, parents=[common],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    lab = sub.add_parser("lab", help="the embedded lab of simulated hypervisors", parents=[common],
                         description="Simulated hypervisors on this machine: each a network namespace "
                                     "with its own Open vSwitch, VXLAN between provider addresses.")
    ls = lab.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = ls.add_parser("up", help="create hosts hv1..hvN and start the controller", parents=[common])
    p.add_argument("--hosts", type=int, default=3, help="number of hypervisors (default 3)")
    p.add_argument("--underlay-mtu", type=int, default=UNDERLAY_MTU, metavar="N",
                   help=f"MTU of every host's uplink and the underlay switch (default {UNDERLAY_MTU}, "
                        "as on real hosts); workloads get N - 50 (VXLAN over IPv4)")
    p.add_argument("--controllers", type=int, default=1, choices=[1, 3, 5],
                   help="1 (default): one controller on SQLite; 3 or 5: that many controllers, each in its own "
                        "namespace with an etcd member, one leader at a time; every br-int connects to all")
    p.add_argument("--isolated", action="store_true",
                   help="machines that share nothing but the network: every controller and every host in its "
                        "own network and mount namespace, hosts joined over the network (host invite/join), "
                        "the lab's own requests over the network API with STATE_DIR/admin.cred; no lab "
                        "workloads and no external network (the hosts' runtimes plug ports)")
    p.add_argument("--bgp", action="store_true",
                   help="the provider's router speaks BGP: BIRD 2 on the outside network (AS 65001, announcing "
                        "198.18.0.0/24), the controller peered with it (AS 65000) from a leg on that network; "
                        "`nvctl bgp` shows the sessions (one controller, not --isolated)")
    p.set_defaults(fn=labcmd.cmd_lab_up)
    ls.add_parser("status", help="processes, connections and flow sync per host",
                  parents=[common]).set_defaults(fn=labcmd.cmd_lab_status)
    ls.add_parser("down", help="remove every namespace, link, process and file the lab made",
                  parents=[common]).set_defaults(fn=labcmd.cmd_lab_down)

    c = sub.add_parser("controller", help="the controllers: status, or stop, start, restart the lab's",
                       parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="status: every controller (role, lease left), etcd's members and their "
                                   "health, and per host the controllers its br-int is connected to, in "
                                   "which OpenFlow role. stop/start/restart: the lab's controllers (a "
                                   "cluster's: every member and its etcd).")
    c.add_argument("action", choices=["status", "start", "stop", "restart"])
    c.set_defaults(fn=labcmd.cmd_controller)

    t = sub.add_parser("tenant", help="create, change, inspect and delete tenants", parents=[common],
                       description="Tenants are YAML documents (apiVersion nvctl/v1, kind Tenant); "
                                   "see README.md for the reference. Invalid documents change nothing.")
    ts = t.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, fn, hlp in (("create", cmd_tenant_create, "create a tenant (fails if it exists)"),
                          ("apply", cmd_tenant_apply, "create or update a tenant in place"),
                          ("validate", cmd_tenant_validate, "check a document without applying it")):
        p = ts.add_parser(name, help=hlp, parents=[common])
        p.add_argument("-f", "--file", required=True, help="tenant YAML file ('-' for stdin)")
        p.set_defaults(fn=fn)
    ts.add_parser("list", help="all tenants", parents=[common]).set_defaults(fn=cmd_tenant_list)
    p = ts.add_parser("show", help="spec plus status: port placement, flows installed per host",
                      parents=[common])
    p.add_argument("name")
    p.set_defaults(fn=cmd_tenant_show)
    p = ts.add_parser("delete", help="delete a tenant: its flows and workloads go", parents=[common])
    p.add_argument("name")
    p.set_defaults(fn=cmd_tenant_delete)

    pt = sub.add_parser("port", help="operate on one tenant port", parents=[common])
    pts = pt.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = pts.add_parser("migrate", parents=[common],
                       help="live-migrate a port to another host, keeping its addresses and connections",
                       description="A namespace, make-before-break: the destination gets the port's flows, "
                                   "the workload's attachment moves, then every other host switches to "
                                   "the new PA in one bundle each. A VM (workload: vm), live by QEMU: the "
                                   "port is bound pending on the destination (traffic to both hosts), QEMU "
                                   "copies the guest there, and the guest's first RARP/GARP from there "
                                   "activates it; then the source QEMU goes. Each step is printed with its "
                                   "time. A failed or cancelled migration leaves the VM where it was.",
                       epilog="examples:\n  nvctl port migrate blue/vm1 --to hv2\n"
                              "  nvctl port migrate blue/vm1 --cancel        (from another terminal)\n"
                              "  nvctl port migrate blue/db1 --to hv3 --prepare   (your hypervisor migrates)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", metavar="TENANT/PORT")
    p.add_argument("--to", metavar="HOST", help="destination host")
    p.add_argument("--prepare", action="store_true",
                   help="only bind the port pending on HOST, for a hypervisor that migrates the VM itself")
    p.add_argument("--cancel", action="store_true", help="cancel the port's migration under way")
    p.add_argument("--bandwidth", type=float, metavar="MBIT/S",
                   help="a VM's copy at most this fast (QEMU's default: 128 MiB/s)")
    p.set_defaults(fn=cmd_port_migrate)
    p = pts.add_parser("add", parents=[common], help="add a port to a tenant's switch (IPAM picks its address)",
                       description="The port is stored with the tenant, marked madeBy: api: it survives "
                                   "restarts, shows in 'tenant show', gets every policy a YAML port of "
                                   "the switch gets, and stays when a YAML that does not name it is "
                                   "applied. Example: nvctl port add blue --switch web --host hv2")
    p.add_argument("tenant")
    p.add_argument("--switch", required=True, help="the tenant's switch")
    p.add_argument("--name", help="port name (default: SWITCH-N, the lowest N free)")
    p.add_argument("--ip", default="auto", help="IPv4 address, or auto (default): the lowest free one "
                   "(never the network, broadcast, router, DHCP/DNS service or a VIP address)")
    p.add_argument("--ip6", help="IPv6 address (default on a /64 cidr6: from the MAC)")
    p.add_argument("--mac", help="MAC (default: derived from the IPv4 address)")
    p.add_argument("--host", help="host (default: the one with the fewest ports)")
    p.add_argument("--no-workload", action="store_true",
                   help="make no lab workload: something else (a CNI plugin) plugs the interface")
    p.add_argument("--vm", action="store_true",
                   help="the lab's workload is a QEMU guest (workload: vm) that gets its address by DHCP")
    p.add_argument("--label", action="append", metavar="KEY=VALUE",
                   help="a label (Kubernetes syntax: [prefix/]name=value), repeatable: --label app=web --label tier=front")
    p.set_defaults(fn=cmd_port_add)
    p = pts.add_parser("label", parents=[common], help="set or remove a port's labels (policies follow)",
                       description="Labels select ports for network policies: changing them moves the "
                                   "port into or out of the policies' selectors, as one change. "
                                   "A port from a tenant's YAML gets the YAML's labels back with the "
                                   "next apply of that YAML.",
                       epilog="examples:\n  nvctl port label shop/web3 app=fe tier=front\n"
                              "  nvctl port label shop/web3 tier-      (remove tier)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", metavar="TENANT/PORT")
    p.add_argument("labels", nargs="+", metavar="KEY=VALUE|KEY-")
    p.set_defaults(fn=cmd_port_label)
    p = pts.add_parser("del", parents=[common], help="remove a port: its flows and workload go")
    p.add_argument("target", metavar="TENANT/PORT")
    p.set_defaults(fn=cmd_port_del)

    p = sub.add_parser("flows", help="a host's flows by table name, checked against the switch",
                       parents=[common])
    p.add_argument("host")
    p.add_argument("--tenant", help="only this tenant's flows")
    p.set_defaults(fn=cmd_flows)

    p = sub.add_parser(
        "verify", parents=[common],
        help="prove isolation and policy over the flows installed on every host",
        description=textwrap.fill("Read every host's flows, groups and meters from its switch (and its ports from "
                    "OVSDB), then check over the whole header space, symbolically, from every tenant "
                    "port and every tunnel entry: no packet of one tenant reaches another's port, VNI, "
                    "conntrack zone, meter or group, or the provider network with an address it does "
                    "not own; the pairs a tenant's topology and ACLs connect can reach each other; no "
                    "loop; no drop that is not a declared drop. Exit 0 when everything holds, 1 with a "
                    "counterexample (header values and its path, table by table, with the deciding "
                    "flow and cookie), 2 when the check could not run.", 88),
        epilog="examples:\n  nvctl verify\n  nvctl verify --tenant blue --json\n  nvctl verify --host hv2\n"
               "  nvctl verify --watch            every change's proof before install, as it comes\n\n"
               "The controller also proves each tenant change before it installs it (--verify-changes,\n"
               "on by default): a change whose flows would break isolation is refused with its\n"
               "counterexample and nothing is installed. --watch follows those results.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tenant", help="only start points (ports, VNIs) of this tenant")
    p.add_argument("--host", help="only start points on this host")
    p.add_argument("--watch", action="store_true",
                   help="follow verify before install: one line per tenant change (OK, or REFUSED with "
                        "the violation), until Ctrl-C")
    p.add_argument("--interval", type=float, default=1.0, help="--watch: seconds between polls (default 1)")
    p.set_defaults(fn=cmd_verify)

    p = sub.add_parser("exec", help="run a command inside a workload: nvctl exec blue/vm1 -- ping 10.0.0.12",
                       parents=[common])
    p.add_argument("target", metavar="TENANT/PORT")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_exec)

    p = sub.add_parser("console", help="a VM's serial console (Ctrl-] leaves), or its log with --log",
                       parents=[common])
    p.add_argument("target", metavar="TENANT/PORT")
    p.add_argument("--log", action="store_true", help="print what the console has shown so far and exit")
    p.set_defaults(fn=cmd_console)

    p = sub.add_parser("trace", help="a packet's path through every host's flows, table by table",
                       parents=[common],
                       description="Simulate a packet sent by a tenant port through the compiled flows "
                                   "of every host it crosses (tunnel hops included), as the first "
                                   "packet of a connection. Examples:\n"
                                   "  nvctl trace shop/web1 'tcp,nw_dst=10.0.1.10,tp_dst=5432'\n"
                                   "  nvctl trace blue/vm1 'icmp,nw_dst=10.0.0.13' --real\n"
                                   "  nvctl trace blue/vm1 'arp,arp_tpa=10.0.0.12'",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", metavar="TENANT/PORT")
    p.add_argument("packet", help="ip|icmp|tcp|udp|arp plus fields: nw_dst, nw_src, tp_src, tp_dst, "
                                  "nw_ttl, icmp_type, dl_dst, arp_tpa ...")
    p.add_argument("--real", action="store_true",
                   help="also run ofproto/trace on each host's OVS and compare (exit 2 if they disagree)")
    p.set_defaults(fn=cmd_trace)

    p = sub.add_parser(
        "stats", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="a tenant's traffic by intent: per port, ACL rule, load-balancer backend, NAT rule",
        description=textwrap.dedent("""\
            What really flowed, from the switches' own counters, attributed to the intent
            that made each flow and summed over the tenant's hosts:
              ports           sent, received; dropped by port security, by an ACL, by its
                              rate limit (rateLimitMbps), by the flood limit (bumLimitPps)
              acl rules       every packet the rule decided in its direction (the first
                              packet of each connection and the rest of it)
              load balancers  new connections per backend, and what came back from it;
                              with a healthCheck, each backend's state (up, down,
                              unknown) and since when
              nat             packets translated per rule and direction
            Counters keep counting across tenant changes (a flow changed in place keeps
            its counts; a port's counts follow it when it migrates, as far as they were
            read before it moved).
            Examples:
              nvctl stats blue
              nvctl stats blue --watch        # refresh every second, rates per second
              nvctl stats blue --json | jq '.acls[] | {name, packets}'"""))
    p.add_argument("tenant")
    p.add_argument("--watch", nargs="?", type=float, const=1.0, default=None, metavar="SECONDS",
                   help="refresh every SECONDS (default 1) until Ctrl-C: in place on a terminal, "
                        "one report per interval otherwise (--json: one JSON document per line)")
    p.set_defaults(fn=_observe("cmd_stats"))

    p = sub.add_parser(
        "drops", parents=[common], help="what a tenant's traffic lost, by reason and rule",
        description="Drops by reason (port security, ACL rule, rate limit, flood limit, invalid connection "
                    "state), from the same counters as `nvctl stats`, with what dropped since the earliest "
                    "reading within --window seconds, and the last denials of rules with log: true.")
    p.add_argument("tenant")
    p.add_argument("--window", type=float, default=60.0, help="what counts as recent, in seconds (default 60)")
    p.set_defaults(fn=_observe("cmd_drops"))

    p = sub.add_parser(
        "logs", parents=[common], help="the connection attempts a tenant's logged ACL rules decided",
        description="One line per connection attempt decided by an ACL rule with `log: true`: time, "
                    "tenant, rule, direction and port, verdict, 5-tuple, host. Lines are sent to the "
                    "controller through a meter of 50 a second (burst 50) per tenant and host, and the "
                    "controller keeps at most 500 a second per tenant: a flood costs it no more than that. Kept in memory (the last 10,000 per tenant) "
                    "and in STATE_DIR/acl.log as JSON lines.")
    p.add_argument("tenant")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until Ctrl-C")
    p.add_argument("--last", type=int, default=100, help="how many of the latest lines first (default 100)")
    p.set_defaults(fn=_observe("cmd_logs"))

    sub.add_parser("hosts", help="registered hosts and their OpenFlow state",
                   parents=[common]).set_defaults(fn=hostcmd.cmd_hosts)
    sub.add_parser("bgp", parents=[common], help="BGP sessions with the provider's routers, announced and learned routes",
                   description="The BGP sessions the leader keeps with the provider's routers (the controller's "
                               "--bgp FILE), the /32s it announces for the platform's addresses (next hop: the "
                               "provider-network address of the host that carries each now) and the routes it "
                               "learned, which tenant routers with external.importRoutes take in. See docs/bgp.md."
                   ).set_defaults(fn=cmd_bgp)

    hp = sub.add_parser("host", help="invite a machine, or join this machine to a controller",
                        parents=[common],
                        description="Adding a real host takes two commands. On the controller's machine:\n"
                                    "  nvctl host invite hv4 --pa 192.0.2.14      # writes hv4-join.json\n"
                                    "then, on hv4 (Open vSwitch installed and running):\n"
                                    "  nvctl host join hv4-join.json --uplink eth1\n"
                                    "OpenFlow, OVSDB and the join API then run over TLS with certificates "
                                    "from the controller's ovs-pki CA; a host without an invitation, or "
                                    "with a certificate the controller did not sign, is refused.",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    hs = hp.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = hs.add_parser("invite", parents=[common], help="allow a host to join; writes its join bundle")
    p.add_argument("name", help="host name (a-z, 0-9, '-'; it becomes the certificate's CN)")
    p.add_argument("--pa", required=True, help="the host's provider address (its VXLAN endpoint)")
    p.add_argument("--out", metavar="FILE", help="where to write the bundle (default NAME-join.json)")
    p.add_argument("--insecure", action="store_true",
                   help="plain TCP for OpenFlow, OVSDB and the join API (trusted networks only); "
                        "the controller must run with --insecure")
    p.add_argument("--lab-netns", metavar="NS",
                   help="the host is a namespace on the controller's machine: the controller makes "
                        "workload namespaces for it (as for lab hosts)")
    p.set_defaults(fn=hostcmd.cmd_host_invite)
    p = hs.add_parser("join", parents=[common], help="run on the host: configure OVS and join")
    p.add_argument("bundle", help="the join bundle from 'nvctl host invite'")
    p.add_argument("--uplink", metavar="IFACE",
                   help="underlay interface: added to br-phy, which gets the PA (userspace datapath). "
                        "Without it the PA must already be on this host")
    p.add_argument("--prefixlen", type=int, default=24, help="PA prefix length with --uplink (default 24)")
    p.add_argument("--provider-network", metavar="NAME=IFACE[@ADDRESS]",
                   help="IFACE reaches provider network NAME (the one the other hosts call NAME, e.g. "
                        "external): it goes on br-int, and this host can carry floating IPs of its ports "
                        "and be a router's gateway. @ADDRESS: this host's own address on that network, "
                        "the next hop BGP announces for what it carries (see docs/bgp.md)")
    p.add_argument("--db", default=DEFAULT_DB,
                   help="this host's OVSDB (default %(default)s)")
    p.add_argument("--pki-dir", default="/etc/nvctl/pki", help="where the key and certificates go")
    p.add_argument("--credential-out", default="/etc/nvctl/host.cred", metavar="FILE",
                   help="where the host credential for this host's runtimes goes (default %(default)s)")
    p.add_argument("--datapath-type", choices=["system", "netdev"],
                   help="default: system if the openvswitch kernel module is loaded, else netdev")
    p.add_argument("--timeout", type=float, default=60, help="seconds to wait for flows (default 60)")
    p.set_defaults(fn=hostcmd.cmd_host_join)
    p = hs.add_parser("resync", parents=[common],
                      help="re-read a host's flows from its switch and repair any difference")
    p.add_argument("name")
    p.set_defaults(fn=hostcmd.cmd_host_resync)

    sc = sub.add_parser("scenario", help="runnable experiments with claims, JSON results and plots",
                        parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
                        description="Each scenario builds a fresh network of its own (the embedded lab, or "
                                    "mininet with --mininet), runs its steps with a progress line each, checks "
                                    "its claims against real packets and tears the network down. It writes "
                                    "OUT/result.json and PNG plots, and exits 0 if every claim held, 1 if one "
                                    "failed, 2 if it could not run.",
                        epilog="examples:\n  nvctl scenario list\n  nvctl scenario run isolation\n"
                               "  nvctl scenario run link-failure --mininet --out /tmp/lf")
    scs = sc.add_subparsers(dest="action", required=True, metavar="ACTION")
    scs.add_parser("list", help="the scenarios, where they run, what they claim",
                   parents=[common]).set_defaults(fn=labcmd.cmd_scenario_list)
    p = scs.add_parser("run", help="run one scenario on a fresh network", parents=[common])
    p.add_argument("name", help="a name from 'nvctl scenario list' (isolation, migration, nat, lb, link-failure)")
    p.add_argument("--mininet", action="store_true",
                   help="build the network with mininet (Hypervisor nodes, TCLink underlay) instead of the lab")
    p.add_argument("--out", metavar="DIR", help="where result.json and the plots go (default ./scenario-results/NAME)")
    p.set_defaults(fn=labcmd.cmd_scenario_run)

    from controller.runtimes import docker_plugin
    p = sub.add_parser("docker-plugin", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="serve Docker as a network and IPAM driver (foreground until stopped)",
                       description="A Docker remote network driver and IPAM driver: containers of a Docker "
                                   "network become ports of a tenant's switch.",
                       epilog="example:\n  nvctl docker-plugin &\n"
                              "  docker network create -d nvctl --ipam-driver nvctl -o tenant=blue -o switch=web \\\n"
                              "      --subnet 10.0.0.0/24 --gateway 10.0.0.1 blue-web\n"
                              "  docker run --network blue-web busybox ping 10.0.0.11")
    docker_plugin.add_arguments(p)
    p.set_defaults(fn=cmd_docker_plugin)

    p = sub.add_parser(
        "ui", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="a read-only web view: tenants, topology, counters, verify, trace (foreground until stopped)",
        description=textwrap.fill("Serve a read-only web view of the controller over HTTP, in the foreground "
                                  "until Ctrl-C or SIGTERM. It asks the controller through the same API "
                                  "socket as the command line and changes nothing.", 88) + "\nPages:\n"
                    "  /                 the tenants\n"
                    "  /tenant/NAME      its logical topology drawn (switches, routers, ports with their\n"
                    "                    CAs, load balancers), where each port runs, live counters\n"
                    "                    (every second), the last 'nvctl verify' of the tenant with a\n"
                    "                    button to run it again, and a trace form that shows what\n"
                    "                    'nvctl trace' prints\n"
                    "  /metrics          the controller's metrics, Prometheus text format\n"
                    "  /api/...          the JSON behind the page (tenants, tenant/NAME, .../stats)\n"
                    + textwrap.fill("It asks for a credential: sign in at /login with a token or a "
                                    "credential file's contents (nvctl credential issue); a program sends "
                                    "'Authorization: Bearer TOKEN'. Each person sees what their credential "
                                    "may see (a tenant's: that tenant only). The view itself is plain HTTP: "
                                    "keep the default 127.0.0.1 unless the network in front of it is "
                                    "trusted.", 88),
        epilog="examples:\n  nvctl ui                          # then open http://127.0.0.1:8080/\n"
               "  nvctl ui --port 9000 --listen 0.0.0.0\n"
               "  nvctl ui --api /var/lib/nvctl/nvctl.sock")
    p.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0 picks a free one)")
    p.add_argument("--listen", default="127.0.0.1", metavar="ADDR",
                   help="address to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--api", metavar="PATH",
                   help="the controller's API socket (default STATE_DIR/nvctl.sock, as the other commands)")
    p.set_defaults(fn=cmd_ui)

    p = sub.add_parser("api", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="the controller's API operations: arguments, read or change, what each touches",
                       description="List the operations the controller's API declares: for each, its "
                       "arguments with their JSON types (required, or the default), whether it reads or "
                       "changes, and what it touches (a tenant, a host, the cluster).",
                       epilog="examples:\n  nvctl api                   # every operation, one line each\n"
                       "  nvctl api tenant.create     # one operation in full\n"
                       "  nvctl api --json            # the table, for a program")
    p.add_argument("op", nargs="?", help="one operation's name, e.g. port.add")
    p.set_defaults(fn=cmd_api)

    accesscmd.add_parsers(sub, common)
    layercmd.add_parsers(sub, common)

    p = sub.add_parser("demo", help="lab up, two tenants with overlapping addresses, pings, isolation",
                       parents=[common])
    p.add_argument("--hosts", type=int, default=3)
    p.add_argument("--keep", action="store_true", help="leave the lab running afterwards")
    p.set_defaults(fn=labcmd.cmd_demo)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    a.state_dir = getattr(a, "state_dir", None)
    a.json = getattr(a, "json", False)
    a.credential = getattr(a, "credential", None)
    a.server = getattr(a, "server", None)
    try:
        a.fn(a)
    except ApiClientError as e:
        print(f"nvctl: {e}", file=sys.stderr)
        for path, reason in e.errors:
            print(f"  {path}: {reason}" if path else f"  {reason}", file=sys.stderr)
        return 1
    except CommandError as e:
        print(f"nvctl: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into head and closed
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
