"""The command line's lab commands: `nvctl lab`, `nvctl controller`, `nvctl demo`,
`nvctl scenario`. They drive the lab of simulated hosts on this machine (scenarios/), which
only these commands import, where they run."""
from __future__ import annotations

import sys

from controller.client.api import call
from controller.client.common import CommandError, api_socket, show


def _lab(state_dir, **kw):
    from scenarios.lab import Lab
    return Lab(state_dir, **kw)


def lab_command(fn):
    """A lab command: the lab's own errors are said as a command's."""
    def run(a):
        from scenarios.lab import LabError
        try:
            return fn(a)
        except LabError as e:
            raise CommandError(str(e)) from None
    run.__name__, run.__doc__ = fn.__name__, fn.__doc__
    return run



@lab_command
def cmd_lab_up(a):
    from controller.client.progress import Reporter
    with Reporter("lab up") as rep:  # progress and the lab's own lines on stderr: stdout is the status
        lab = _lab(a.state_dir, log=rep.note)
        lab.up(hosts=a.hosts, underlay_mtu=a.underlay_mtu, controllers=a.controllers, progress=rep,
               isolated=a.isolated, bgp=a.bgp)
    _lab_status(lab, a.json)


@lab_command
def cmd_lab_status(a):
    _lab_status(_lab(a.state_dir), a.json)


def _lab_status(lab, as_json: bool):
    st = lab.status()
    if as_json:
        return show(st, True)
    print(f"lab: {st['status']}   state: {st['state_dir']}")
    if st["status"] == "down":
        return
    c = st["controller"]
    if st.get("controllers"):
        for m in st["controllers"]:
            print(f"controller {m['name']}: {'running' if m['alive'] else 'NOT RUNNING'} (pid {m['pid'] or '-'}) "
                  f"in netns {m['netns']} at {m['address']}")
        if c.get("error"):
            print(f"  {c['error']}")
    else:
        print(f"controller: {'running' if c['alive'] else 'NOT RUNNING'} (pid {c['pid']}) "
              f"in netns {lab.ctl_ns}{'  ' + c['error'] if c.get('error') else ''}")
    print(f"{'HOST':6} {'NETNS':14} {'PA':14} {'OVS':5} {'OPENFLOW':10} {'FLOWS':>6}  SYNC")
    for h in st["hosts"]:
        conn = "connected" if h.get("connected") else "down"
        sync = "in sync" if h.get("in_sync") else (h.get("error") or "pending")
        print(f"{h['name']:6} {h['netns']:14} {h.get('pa', '?'):14} "
              f"{'up' if h['vswitchd_alive'] else 'DOWN':5} {conn:10} {h.get('flows_desired', '-'):>6}  {sync}")


@lab_command
def cmd_lab_down(a):
    _lab(a.state_dir).down()


@lab_command
def cmd_controller(a):
    if a.action == "status":
        return _controller_status(a)
    lab = _lab(a.state_dir)
    if lab.manifest() is None:
        raise CommandError(f"no lab in {lab.dir}")
    if lab.clustered:
        if a.action in ("stop", "restart"):
            lab.stop_members()
            print("controllers and etcd stopped")
        if a.action in ("start", "restart"):
            pids = lab.start_members()
            lab.wait_synced()
            print(f"controllers running ({', '.join(f'{n} pid {p}' for n, p in pids.items())}); "
                  "all hosts connected and in sync")
        return
    if a.action in ("stop", "restart"):
        lab.stop_controller()
        print("controller stopped")
    if a.action in ("start", "restart"):
        pid = lab.start_controller()
        lab.wait_synced()
        print(f"controller running (pid {pid}); all hosts connected and in sync")


def _controller_status(a):
    st = call(api_socket(a), "cluster.status", timeout=30)
    lab = _lab(a.state_dir)
    if lab.clustered:  # the lab knows its etcd members' PIDs
        cluster = lab.etcd()
        for e in st["etcd"]:
            e["pid"] = cluster.pid(e["name"]) if e.get("name") else None
    out = {"members": st["members"], "etcd": st["etcd"], "hosts": st["hosts"], "leader": st["leader"],
           "generation": st["generation"]}
    if a.json:
        return show(out, True)
    print(f"leader: {st['leader'] or 'NONE (an election is under way)'}"
          + (f"   generation {st['generation']}" if st["generation"] else ""))
    print(f"  {'MEMBER':8} {'PID':>7} {'ADDRESS':16} {'ROLE':9} LEASE")
    for m in st["members"]:
        lease = "-" if m["lease_s"] is None else f"{m['lease_s']}s"
        print(f"  {m['name']:8} {m['pid']:>7} {m.get('address') or '-':16} {m['role']:9} {lease}")
    if st["etcd"]:
        print(f"  {'ETCD':8} {'PID':>7} {'ADDRESS':26} HEALTH")
        for e in st["etcd"]:
            print(f"  {e['name'] or '?':8} {e.get('pid') or '-':>7} {e['address']:26} "
                  f"{'healthy' if e['healthy'] else 'UNHEALTHY'}{'  (raft leader)' if e.get('raft_leader') else ''}")
    print(f"  {'HOST':8} CONTROLLERS (OpenFlow role)")
    for h in st["hosts"]:
        conns = ", ".join(f"{c['member']} {c['role'] or '-'}{'' if c['connected'] else ' (not connected)'}"
                          for c in h["connections"])
        print(f"  {h['name']:8} {conns or h.get('error', '-')}")


@lab_command
def cmd_demo(a):
    from scenarios.demo import run_demo
    sys.exit(run_demo(a.state_dir, hosts=a.hosts, keep=a.keep))


@lab_command
def cmd_scenario_list(a):
    from scenarios.runner import catalog
    scenarios = catalog()
    if a.json:
        return show([{"name": s.name, "summary": s.summary, "hosts": s.hosts, "mininet": s.mininet}
                       for s in scenarios.values()], True)
    for s in scenarios.values():
        print(f"  {s.name:13} {'lab, mininet' if s.mininet else 'lab':13} {s.summary}")


@lab_command
def cmd_scenario_run(a):
    from scenarios.runner import run_scenario
    from controller.client.progress import Reporter
    try:
        with Reporter(f"scenario {a.name}") as rep:
            code = run_scenario(a.name, mininet=a.mininet, out=a.out, progress=rep)
    except (KeyError, ValueError) as e:
        raise CommandError(str(e).strip("'\"")) from None
    sys.exit(code)
