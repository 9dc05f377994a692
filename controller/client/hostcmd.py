"""The command line's host commands: `nvctl hosts`, `nvctl host invite|join|resync`."""
from __future__ import annotations

import json
import os
import sys

from controller.client.api import ApiClientError, call
from controller.client.common import api_socket, show


def _drift_note(d: dict | None) -> str:
    """What a fresh read of the switch found and corrected, for a person."""
    if not d or not any(d.get(k) for k in ("missing", "unexpected", "changed")):
        return ""
    return (f"  (corrected drift: {d['missing']} missing, {d['unexpected']} unexpected, "
            f"{d['changed']} changed flows)")


def cmd_hosts(a):
    rows = call(api_socket(a), "host.list", check=True)  # every switch read again, drift corrected
    if a.json:
        return show(rows, True)
    print(f"{'HOST':8} {'PA':14} {'DPID':18} {'OPENFLOW':10} {'FLOWS':>6} {'MODS SENT':>9}  {'PROVIDER':9} "
          f"{'BFD DOWN':9} SYNC")
    for h in rows:
        bfd = h.get("bfd") or {}
        down = ",".join(p for p, up in sorted(bfd.items()) if not up) or ("-" if not bfd else "none")
        print(f"{h['name']:8} {h['pa']:14} {h['dpid']:18} {'connected' if h['connected'] else 'down':10} "
              f"{h['flows_desired']:>6} {h['flow_mods_sent']:>9}  {h.get('provider_network') or '-':9} {down:9} "
              f"{'in sync' if h['in_sync'] else h['error'] or 'pending'}{_drift_note(h.get('drift'))}")


def cmd_host_invite(a):
    workloads = None
    if a.lab_netns:
        from scenarios.lab import Lab  # a lab host: its workloads are the lab's
        workloads = {"netns": a.lab_netns, "prefix": Lab(a.state_dir).prefix}
    b = call(api_socket(a), "host.invite", name=a.name, pa=a.pa, tls=not a.insecure, workloads=workloads)
    out = a.out or f"{a.name}-join.json"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(b, f, indent=1)
    if a.json:
        return show({k: v for k, v in b.items() if k not in ("key", "token")}, True)
    c = b["controller"]
    print(f"host {a.name} invited: PA {a.pa}, datapath id {b['dpid']:016x}, "
          f"{'TLS (certificate CN=' + a.name + ' signed by the switch CA)' if b['tls'] else 'plain TCP (--insecure)'}")
    print(f"join bundle: {out} (mode 0600; it holds the host's private key and one-time token, "
          f"copy it to the host over a trusted channel)")
    print(f"on the host:  nvctl host join {os.path.basename(out)} --uplink IFACE"
          f"    # controller {c.get('ip')}:{c.get('api_port')}")


def _join_api(ctl: dict):
    """connect(creds) -> api(op, **args): the controller's join API for tep.join."""
    from controller.client.api import remote_call
    from controller.transport.pki import client_context
    from tep.join import JoinError

    def connect(creds):
        ctx = client_context(*creds) if creds else None

        def api(op, **args):
            try:
                return remote_call(ctl["ip"], ctl["api_port"], op, ctx, **args)
            except ApiClientError as e:
                raise JoinError(str(e)) from None
        return api
    return connect


def cmd_host_join(a):
    from tep.join import JoinError, join, load_bundle
    provider = None
    if a.provider_network:
        net, eq, rest = a.provider_network.partition("=")
        iface, at, address = rest.partition("@")
        if not (net and eq and iface) or (at and not address):
            print(f"nvctl host join: --provider-network {a.provider_network!r}: expected NAME=IFACE[@ADDRESS] "
                  f"(e.g. external=eth2 or external=eth2@203.0.113.15)", file=sys.stderr)
            sys.exit(2)
        provider = (net, iface, address or None)
    try:
        b = load_bundle(a.bundle)
        r = join(b, connect=_join_api(b["controller"]), db_remote=a.db, uplink=a.uplink,
                 prefixlen=a.prefixlen, pki_dir=a.pki_dir, datapath_type=a.datapath_type,
                 timeout=a.timeout, credential_path=a.credential_out, provider=provider)
    except JoinError as e:
        print(f"nvctl host join: {e}", file=sys.stderr)
        sys.exit(1)
    show(r, a.json)


def cmd_host_resync(a):
    r = call(api_socket(a), "host.resync", name=a.name)
    if a.json:
        return show(r, True)
    print(f"{r['host']}: re-read the switch, sent {r['flow_mods']} flow-mods to repair it ({r['ms']} ms)")
