"""The command line's layer commands: `nvctl layer show|put|release`, one policy layer of a
tenant's spec written apart from the rest, by the controller that owns it."""
from __future__ import annotations

import time

import yaml

from controller.client.api import call
from controller.client.common import api_socket, read_input, show

LAYERS = ("acls", "networkPolicies", "loadBalancers", "nat")  # the controller's list; it refuses others


def _owner(r: dict) -> str:
    return f"owned by {r['owner']}" + (f" ({r['owner_role']})" if r.get("owner_role") else "") \
        if r.get("owner") else "no owner"


def _when(t) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def cmd_layer_show(a):
    r = call(api_socket(a), "layer.show", tenant=a.tenant, layer=a.layer)
    if a.json:
        return show(r, True)
    print(f"tenant {r['tenant']} spec.{r['layer']}: version {r['version']}, {_owner(r)}"
          + (f"; last written by {r['written_by']} at {_when(r['written_at'])}" if r.get("written_by") else ""))
    if r["content"]:
        print(yaml.safe_dump(r["content"], sort_keys=False, default_flow_style=None, width=120), end="")
    else:
        print("[]")


def _report(r: dict, as_json: bool) -> None:
    if as_json:
        return show(r, True)
    if r.get("action", "").startswith("unchanged"):
        print(f"tenant {r['tenant']} spec.{r['layer']} {r['action']}: version {r['version']}, {_owner(r)}")
        return
    print(f"tenant {r['tenant']} {r['action']}")
    for h, what in r.get("hosts", {}).items():
        print(f"  {h}: {what}")
    for e in r.get("attach_errors", []):
        print(f"  warning: {e}")


def cmd_layer_put(a):
    r = call(api_socket(a), "layer.put", tenant=a.tenant, layer=a.layer, content=read_input(a.file),
             expect_version=a.expect_version, release=a.release)
    _report(r, a.json)


def cmd_layer_release(a):
    _report(call(api_socket(a), "layer.release", tenant=a.tenant, layer=a.layer), a.json)


def add_parsers(sub, common) -> None:
    import argparse
    p = sub.add_parser(
        "layer", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="one policy layer of a tenant (acls, networkPolicies, loadBalancers, nat): show, put, release",
        description="A tenant's policy comes in layers, the spec's sections acls, networkPolicies, "
                    "loadBalancers and nat.\nEach can be written alone, by a separate controller with a "
                    "layer:LAYER[@TENANT] credential\n(nvctl credential issue sec --role "
                    "layer:networkPolicies). Its first write makes it the layer's owner:\n"
                    "  - only the owner writes the layer from then on; another credential's write is refused\n"
                    "  - the tenant's own 'tenant apply' may leave the section out (the owner's content is\n"
                    "    kept) or repeat it unchanged; one that changes it is refused, naming the owner\n"
                    "  - an admin releases it: nvctl layer release, or layer put --release\n"
                    "A write replaces the whole section; the spec with it is validated, compiled and "
                    "installed as one change,\nor nothing changes. Each layer has a version, one up per "
                    "write; --expect-version N writes only if it is\nstill at N (someone else's write "
                    "in between is refused, not lost).",
        epilog="examples:\n"
               "  nvctl layer show blue networkPolicies\n"
               "  nvctl --credential sec.cred layer put blue networkPolicies -f default-deny.yaml\n"
               "  nvctl layer put blue acls -f acls.yaml --expect-version 3\n"
               "  nvctl layer release blue networkPolicies          # admin: no owner any more\n"
               "the file holds the section's items, a YAML or JSON list (or 'LAYER: [...]'), e.g.\n"
               "  - {priority: 100, direction: to-port, ports: [vm1], action: deny}")
    ls = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def target(q):
        q.add_argument("tenant", help="the tenant's name")
        q.add_argument("layer", choices=LAYERS, metavar="LAYER", help=f"one of {', '.join(LAYERS)}")

    q = ls.add_parser("show", parents=[common], help="a layer's content, version and owner")
    target(q)
    q.set_defaults(fn=cmd_layer_show)
    q = ls.add_parser("put", parents=[common], help="replace a layer's content (its owner, or anyone while unowned)")
    target(q)
    q.add_argument("-f", "--file", required=True, help="the layer's items, a YAML or JSON list ('-' for stdin)")
    q.add_argument("--expect-version", type=int, metavar="N",
                   help="write only if the layer is still at version N (as 'layer show' said)")
    q.add_argument("--release", action="store_true", help="admin: write it and leave it without an owner")
    q.set_defaults(fn=cmd_layer_put)
    q = ls.add_parser("release", parents=[common], help="admin: leave a layer without an owner (content kept)")
    target(q)
    q.set_defaults(fn=cmd_layer_release)
