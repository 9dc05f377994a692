"""The command line's access commands: `nvctl credential issue|list|revoke`, `nvctl audit`."""
from __future__ import annotations

import json
import os
import re
import time

from controller.client.api import CREDENTIAL_KIND, call
from controller.client.common import CommandError, api_socket, show

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """'90s', '30m', '12h', '7d', '2w' or plain seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text or "")
    if not m or float(m.group(1)) <= 0:
        raise CommandError(f"--ttl {text!r}: give a duration like 90s, 30m, 12h, 7d or 2w")
    return float(m.group(1)) * UNITS[m.group(2) or "s"]


def write_credential(path: str, cred: dict) -> None:
    """The credential file, mode 0600 from the first byte (it holds a secret)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(cred, f, indent=1)
        f.write("\n")
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT


def issue(target, name: str, role: str, ttl: float | None = None) -> dict:
    """Ask the controller for a credential; the file's contents."""
    r = call(target, "credential.issue", name=name, role=role, ttl=ttl)
    return {"kind": CREDENTIAL_KIND, **{k: r[k] for k in ("name", "role", "servers", "ca", "token", "expires")}}


def _when(t) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def cmd_credential_issue(a):
    ttl = parse_duration(a.ttl) if a.ttl else None
    cred = issue(api_socket(a), a.name, a.role, ttl)
    if not cred["servers"]:
        raise CommandError("the controller has no network API to name in a credential "
                           "(start it with --pki DIR --api-listen ADDR:PORT)")
    out = a.output or f"{a.name}.cred"
    write_credential(out, cred)
    if a.json:
        return show({k: v for k, v in cred.items() if k not in ("token", "ca")} | {"file": out}, True)
    print(f"credential {cred['name']} ({cred['role']}) written to {out} (mode 0600; it holds the token, "
          f"which the controller keeps only as a hash)")
    print(f"  servers: {', '.join(cred['servers'])}")
    print(f"  expires: {_when(cred['expires']) if cred['expires'] else 'never (revoke it with nvctl credential revoke)'}")
    print(f"  use it:  nvctl --credential {out} tenant list     (or export NVCTL_CREDENTIAL={out})")


def cmd_credential_list(a):
    rows = call(api_socket(a), "credential.list")
    if a.json:
        return show(rows, True)
    print(f"{'NAME':24} {'ROLE':22} {'STATE':8} {'CREATED':19}  EXPIRES")
    for r in rows:
        print(f"{r['name']:24} {r['role']:22} {r['state']:8} {_when(r['created']):19}  {_when(r['expires'])}")


def cmd_credential_revoke(a):
    r = call(api_socket(a), "credential.revoke", name=a.name)
    if a.json:
        return show(r, True)
    print(f"credential {r['name']} revoked at {_when(r['revoked'])}: every member refuses it within a second")


def cmd_audit(a):
    rows = call(api_socket(a), "audit.list", tenant=a.tenant, last=a.last)
    if a.json:
        return show(rows, True)
    print(f"{'TIME':23} {'MEMBER':10} {'WHO':20} {'FROM':15} {'OPERATION':18} {'SCOPE':16} RESULT")
    for e in rows:
        t = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"])) + f".{int(e['time'] * 1000) % 1000:03d}"
        print(f"{t:23} {e.get('member') or '-':10} {e['who'][:20]:20} {e.get('peer') or e['via']:15} "
              f"{str(e['op'])[:18]:18} {e['scope'][:16]:16} {e['result'][:100]}")


def add_parsers(sub, common) -> None:
    import argparse
    c = sub.add_parser(
        "credential", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="credentials for the network API: issue, list, revoke (admin)",
        description="A credential lets a client reach the controller's network API (HTTPS, from any machine) "
                    "as one principal with one role:\n"
                    "  admin         everything\n"
                    "  viewer        read everything (but credentials and the audit trail)\n"
                    "  tenant:NAME   that tenant only: create/apply/delete it, show, stats, logs, drops,\n"
                    "                trace, verify, ports; other tenants look as if they did not exist\n"
                    "  host:NAME     what a hypervisor and its runtimes need: ports on that host only\n"
                    "  layer:LAYER[@TENANT]\n"
                    "                a controller that owns one policy layer (acls, networkPolicies,\n"
                    "                loadBalancers, nat) of every tenant, or of TENANT: it lists tenants and\n"
                    "                reads and writes that layer only (see 'nvctl layer --help')\n"
                    "The file holds every member's URL, the CA that signed them and the token; the "
                    "controller keeps only a hash of the token.",
        epilog="examples:\n"
               "  nvctl credential issue blue-ci --role tenant:blue --ttl 30d -o blue.cred\n"
               "  nvctl credential issue security-controller --role layer:networkPolicies -o sec.cred\n"
               "  nvctl --credential blue.cred tenant show blue\n"
               "  nvctl credential list\n"
               "  nvctl credential revoke blue-ci")
    cs = c.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = cs.add_parser("issue", parents=[common], help="make a credential and write its file (mode 0600)")
    p.add_argument("name", help="who it is for (a-z, 0-9, '-'); shown in the audit trail")
    p.add_argument("--role", required=True, help="admin, viewer, tenant:NAME, host:NAME or layer:LAYER[@TENANT]")
    p.add_argument("--ttl", metavar="DURATION", help="valid for this long: 90s, 30m, 12h, 7d, 2w (default: "
                                                    "until revoked)")
    p.add_argument("-o", "--output", metavar="FILE", help="where to write it (default NAME.cred)")
    p.set_defaults(fn=cmd_credential_issue)
    cs.add_parser("list", parents=[common], help="every credential: role, state, expiry (never a secret)"
                  ).set_defaults(fn=cmd_credential_list)
    p = cs.add_parser("revoke", parents=[common], help="refuse a credential from now on")
    p.add_argument("name")
    p.set_defaults(fn=cmd_credential_revoke)

    p = sub.add_parser("audit", parents=[common],
                       help="who asked what, allowed or refused (admin: all; a tenant: its own)",
                       description="The audit trail: every API request, allowed or refused, with its time, "
                                   "member, principal, address, operation, scope and result.")
    p.add_argument("--tenant", help="only requests made by that tenant's credentials")
    p.add_argument("--last", type=int, default=50, metavar="N", help="the newest N (default 50)")
    p.set_defaults(fn=cmd_audit)
