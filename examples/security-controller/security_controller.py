#!/usr/bin/env python3
"""A security controller: a separate program that owns one policy layer of every tenant.

It is what VFP calls a layer's controller: the virtual-network controller (the tenant,
with `nvctl tenant apply`) writes switches, ports and its own ACLs; this program, with
its own credential (role layer:networkPolicies), writes the `networkPolicies` layer of
every tenant it can see and nothing else. Its first write makes it the layer's owner:
from then on the tenant's applies keep its policies (or are refused if they try to
change them), and it cannot touch anything else of the tenant (the controller refuses,
and says so in the audit trail).

What it does, every --interval seconds (once with --once):
  tenant.list                      the tenants its credential may act on (a new tenant
                                   gets the policy within one interval)
  layer.put TENANT LAYER CONTENT   the policy file's content; the controller answers
                                   "unchanged" when it is already so (no new version),
                                   and refuses when another credential owns the layer
                                   (reported, left alone) or the layer is not this
                                   credential's (reported: the role says what it may do)
A reconciler that writes what it wants each round needs no expect_version; a program
that edits what it read (layer.show, then layer.put expect_version=VERSION) does.

It speaks only the network API over TLS, through the client library
(controller/client/api.py), as any program on another machine would:

  nvctl credential issue security-controller --role layer:networkPolicies -o sec.cred
  python3 examples/security-controller/security_controller.py --credential sec.cred \\
      --policy examples/security-controller/default-policy.yaml --interval 5

Exit status with --once: 0 when every tenant has the policy, 1 when one was refused
or failed (each is printed, one line per tenant).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import yaml

from controller.client.api import ApiClientError, call, load_credential


def load_policy(path: str) -> list:
    """The layer's items from a YAML/JSON file (a list, or `LAYER: [...]`)."""
    with open(path) as f:
        doc = yaml.safe_load(f)
    if isinstance(doc, dict) and len(doc) == 1:
        doc = next(iter(doc.values()))
    if not isinstance(doc, list):
        raise SystemExit(f"{path}: expected a list of the layer's items, not {type(doc).__name__}")
    return doc


def keep(remote, layer: str, content: list, log=print) -> dict[str, str]:
    """One round: every tenant's layer made `content`. {tenant: what happened}."""
    out = {}
    for t in call(remote, "tenant.list", timeout=30):
        name = t["name"]
        try:
            r = call(remote, "layer.put", tenant=name, layer=layer, content=content, timeout=120)
        except ApiClientError as e:
            out[name] = f"refused: {e}" if "permission denied" in str(e) else f"failed: {e}"
            for path, reason in e.errors or []:
                out[name] += f" [{path}: {reason}]"
        else:
            out[name] = (f"unchanged at version {r['version']}" if r.get("action") == "unchanged"
                         else f"written: version {r['version']}, owner {r['owner']}")
        log(f"{time.strftime('%H:%M:%S')} {name}: spec.{layer} {out[name]}")
    return out


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--credential", default=os.environ.get("NVCTL_CREDENTIAL"),
                    help="its own credential file, role layer:LAYER or layer:LAYER@TENANT (env NVCTL_CREDENTIAL)")
    ap.add_argument("--policy", default=os.path.join(here, "default-policy.yaml"),
                    help="the layer's content for every tenant (default: default-policy.yaml here)")
    ap.add_argument("--layer", default="networkPolicies",
                    help="the layer it keeps (default networkPolicies; its credential must own that role)")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between rounds (default 5)")
    ap.add_argument("--once", action="store_true", help="one round, then exit (0: every tenant has it)")
    a = ap.parse_args(argv)
    if not a.credential:
        ap.error("give --credential FILE (or NVCTL_CREDENTIAL)")
    remote = load_credential(a.credential)
    content = load_policy(a.policy)
    print(f"security controller {remote.name} ({remote.role}) keeping spec.{a.layer} from {a.policy} "
          f"on {', '.join(remote.servers)}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        try:
            results = keep(remote, a.layer, content, log=lambda line: print(line, flush=True))
        except ApiClientError as e:  # the controller away, or the credential refused: try again
            print(f"{time.strftime('%H:%M:%S')} round failed: {e}", flush=True)
            results = {"": "failed"}
        if a.once:
            return 0 if all(not r.startswith(("refused", "failed")) for r in results.values()) else 1
        time.sleep(a.interval)


if __name__ == "__main__":
    sys.exit(main())
