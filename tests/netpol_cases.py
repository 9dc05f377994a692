"""Policy sets for `networkPolicies:` on one standard tenant, in the style of the upstream
network-policy e2e model: switches x, y, z play namespaces, each with ports a, b, c.

    base_tenant("np")      the tenant document (a dict, as yaml.safe_load gives)
    CASES                  [(name, [policy, ...]), ...]: put one list under
                           doc["spec"]["networkPolicies"]

The tenant: switches x, y, z (labels {ns: x} ...; x and y also carry env: prod, so that
Exists and DoesNotExist have something to tell apart), CIDRs 10.70.1.0/24, 10.70.2.0/24,
10.70.3.0/24 with IPv6 fd00:70:0:1::/64 ... (dual stack), joined by router r1 (.1 and
::1 on each), so every port reaches every other. Each switch has ports a, b, c (xa, xb,
xc, ...; labels {pod: a} ...) at .10, .20, .30 (::10, ::20, ::30), each of a switch's
three on another host: xa hv1, xb hv2, xc hv3; ya hv2, yb hv3, yc hv1; za hv3, zb hv1,
zc hv2. The services the tests probe: TCP and UDP on ports 80 and 81.

Every case's matrix (tests/k8s_oracle.py) differs from everything-allowed except
"allow-all-ingress", whose point is that an allow-all rule undoes a default deny.
"""
from __future__ import annotations

import copy

SWITCHES = ("x", "y", "z")
PODS = ("a", "b", "c")
SERVICES = [(proto, dport) for proto in ("tcp", "udp") for dport in (80, 81)]
HOST_OFFSET = {"x": 0, "y": 1, "z": 2}  # a switch's ports start on hosts[offset]


def ip(sw: str, pod: str) -> str:
    return f"10.70.{SWITCHES.index(sw) + 1}.{(PODS.index(pod) + 1) * 10}"


def ip6(sw: str, pod: str) -> str:
    return f"fd00:70:0:{SWITCHES.index(sw) + 1}::{(PODS.index(pod) + 1) * 10}"


def base_tenant(name: str, hosts=("hv1", "hv2", "hv3")) -> dict:
    """The standard tenant `name` on `hosts` (three, or fewer: then ports share them)."""
    switches = [{"name": sw, "cidr": f"10.70.{i + 1}.0/24", "cidr6": f"fd00:70:0:{i + 1}::/64",
                 "labels": {"ns": sw, **({"env": "prod"} if sw in ("x", "y") else {})}}
                for i, sw in enumerate(SWITCHES)]
    router = {"name": "r1", "ports": [{"switch": sw, "ip": f"10.70.{i + 1}.1", "ip6": f"fd00:70:0:{i + 1}::1"}
                                      for i, sw in enumerate(SWITCHES)]}
    ports = [{"name": sw + pod, "switch": sw, "ip": ip(sw, pod), "ip6": ip6(sw, pod),
              "host": hosts[(HOST_OFFSET[sw] + j) % len(hosts)], "labels": {"pod": pod}}
             for sw in SWITCHES for j, pod in enumerate(PODS)]
    return {"apiVersion": "nvctl/v1", "kind": "Tenant", "metadata": {"name": name},
            "spec": {"switches": switches, "routers": [router], "ports": ports}}


def with_policies(doc: dict, policies: list) -> dict:
    """A copy of `doc` with `policies` as its networkPolicies."""
    d = copy.deepcopy(doc)
    d["spec"]["networkPolicies"] = copy.deepcopy(policies)
    return d


# -- building blocks ------------------------------------------------------------------------

def pods(*values: str) -> dict:
    return {"matchLabels": {"pod": values[0]}} if len(values) == 1 else \
        {"matchExpressions": [{"key": "pod", "operator": "In", "values": list(values)}]}


def nss(*values: str) -> dict:
    return {"matchLabels": {"ns": values[0]}} if len(values) == 1 else \
        {"matchExpressions": [{"key": "ns", "operator": "In", "values": list(values)}]}


ALL: dict = {}


def deny_ingress(ns: str, name: str | None = None) -> dict:
    return {"name": name or f"deny-in-{ns}", "namespace": ns, "podSelector": {}, "policyTypes": ["Ingress"]}


CASES: list[tuple[str, list[dict]]] = [
    # default deny: every port of x takes nothing in; x still sends
    ("deny-ingress", [{"name": "deny-in", "namespace": "x", "podSelector": ALL}]),
    # default deny egress: x's ports open nothing (they still answer: only replies)
    ("deny-egress", [{"name": "deny-out", "namespace": "x", "podSelector": ALL, "policyTypes": ["Egress"]}]),
    # y isolated both ways, nothing allowed
    ("deny-all-both", [{"name": "deny-all", "namespace": "y", "podSelector": ALL,
                        "policyTypes": ["Ingress", "Egress"]}]),
    # a default deny undone by an allow-all rule (`ingress: [{}]`): everything passes
    ("allow-all-ingress", [deny_ingress("x"),
                           {"name": "allow-all-in", "namespace": "x", "podSelector": ALL, "ingress": [{}]}]),
    # x/b takes only x/a (a podSelector peer alone is the policy's namespace)
    ("allow-by-pod-label", [{"name": "b-from-a", "namespace": "x", "podSelector": pods("b"),
                             "ingress": [{"from": [{"podSelector": pods("a")}]}]}]),
    # x/a takes every port of y
    ("allow-by-namespace-label", [{"name": "a-from-y", "namespace": "x", "podSelector": pods("a"),
                                   "ingress": [{"from": [{"namespaceSelector": nss("y")}]}]}]),
    # one peer with both selectors: AND (only y/c)
    ("pod-and-namespace-one-peer", [{"name": "a-from-yc", "namespace": "x", "podSelector": pods("a"),
                                     "ingress": [{"from": [{"namespaceSelector": nss("y"),
                                                            "podSelector": pods("c")}]}]}]),
    # the same selectors as two peers: OR (all of y, and x/c)
    ("pod-or-namespace-two-peers", [{"name": "a-from-y-or-c", "namespace": "x", "podSelector": pods("a"),
                                     "ingress": [{"from": [{"namespaceSelector": nss("y")},
                                                           {"podSelector": pods("c")}]}]}]),
    # In: every port of y takes a and b of x and z
    ("match-expressions-in", [{"name": "y-from-xz-ab", "namespace": "y", "podSelector": ALL,
                               "ingress": [{"from": [{"namespaceSelector": nss("x", "z"),
                                                      "podSelector": pods("a", "b")}]}]}]),
    # NotIn: z's a and b (not c) take only switches other than x
    ("match-expressions-notin", [{"name": "z-not-from-x", "namespace": "z",
                                  "podSelector": {"matchExpressions": [{"key": "pod", "operator": "NotIn",
                                                                        "values": ["c"]}]},
                                  "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
                                      {"key": "ns", "operator": "NotIn", "values": ["x"]}]}}]}]}]),
    # Exists: z/c takes the switches with an env label (x, y), any port with a pod label
    ("match-expressions-exists", [{"name": "zc-from-env", "namespace": "z", "podSelector": pods("c"),
                                   "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
                                       {"key": "env", "operator": "Exists"}]},
                                       "podSelector": {"matchExpressions": [
                                           {"key": "pod", "operator": "Exists"}]}}]}]}]),
    # DoesNotExist: x/a takes only the switch without env (z)
    ("match-expressions-doesnotexist", [{"name": "xa-from-no-env", "namespace": "x", "podSelector": pods("a"),
                                         "ingress": [{"from": [{"namespaceSelector": {"matchExpressions": [
                                             {"key": "env", "operator": "DoesNotExist"}]}}]}]}]),
    # ipBlock with except, both families: z/b takes the tenant's addresses but x/b's
    ("ipblock-except", [{"name": "zb-from-block", "namespace": "z", "podSelector": pods("b"),
                         "ingress": [{"from": [
                             {"ipBlock": {"cidr": "10.70.0.0/16", "except": [f"{ip('x', 'b')}/32"]}},
                             {"ipBlock": {"cidr": "fd00:70::/32", "except": [f"{ip6('x', 'b')}/128"]}}]}]}]),
    # a port and no peer: x/a takes TCP 80 (the default protocol) from anyone, nothing else
    ("port-only", [{"name": "xa-tcp-80", "namespace": "x", "podSelector": pods("a"),
                    "ingress": [{"ports": [{"port": 80}]}]}]),
    # a range covering both probed ports: y/b takes TCP 80-81, no UDP
    ("endport-80-81", [{"name": "yb-tcp-80-81", "namespace": "y", "podSelector": pods("b"),
                        "ingress": [{"ports": [{"protocol": "TCP", "port": 80, "endPort": 81}]}]}]),
    # a range covering 81 only of the probed: y/b takes TCP 81-90, not 80
    ("endport-81-only", [{"name": "yb-tcp-81-90", "namespace": "y", "podSelector": pods("b"),
                          "ingress": [{"ports": [{"protocol": "TCP", "port": 81, "endPort": 90}]}]}]),
    # a protocol and no port: z/c takes every UDP port, no TCP
    ("udp-only", [{"name": "zc-udp", "namespace": "z", "podSelector": pods("c"),
                   "ingress": [{"ports": [{"protocol": "UDP"}]}]}]),
    # egress to a namespace: x's ports may open connections to y only (policyTypes by default)
    ("egress-to-namespace", [{"name": "x-to-y", "namespace": "x", "podSelector": ALL,
                              "egress": [{"to": [{"namespaceSelector": nss("y")}]}]}]),
    # egress to an ipBlock: z's ports reach x's switch but x/a, and UDP 81 anywhere
    ("egress-ipblock", [{"name": "z-to-x-block", "namespace": "z", "podSelector": ALL,
                         "policyTypes": ["Egress"],
                         "egress": [{"to": [{"ipBlock": {"cidr": "10.70.1.0/24", "except": [f"{ip('x', 'a')}/32"]}},
                                            {"ipBlock": {"cidr": "fd00:70:0:1::/64",
                                                         "except": [f"{ip6('x', 'a')}/128"]}}]},
                                    {"ports": [{"protocol": "UDP", "port": 81}]}]}]),
    # no namespace: every a of the tenant takes only b's, of every switch
    ("tenant-wide", [{"name": "a-from-b", "podSelector": pods("a"),
                      "ingress": [{"from": [{"podSelector": pods("b")}]}]}]),
    # the classic: x takes only from x
    ("allow-same-namespace", [{"name": "x-from-x", "namespace": "x", "podSelector": ALL,
                               "ingress": [{"from": [{"podSelector": ALL}]}]}]),
    # several policies on one port: their rules add up (x/a: TCP 80 from b's, UDP from z)
    ("several-policies", [{"name": "xa-tcp80-from-b", "namespace": "x", "podSelector": pods("a"),
                           "ingress": [{"from": [{"namespaceSelector": ALL, "podSelector": pods("b")}],
                                        "ports": [{"protocol": "TCP", "port": 80}]}]},
                          {"name": "xa-udp-from-z", "namespace": "x", "podSelector": pods("a"),
                           "ingress": [{"from": [{"namespaceSelector": nss("z")}],
                                        "ports": [{"protocol": "UDP"}]}]},
                          {"name": "yc-from-x", "namespace": "y", "podSelector": pods("c"),
                           "ingress": [{"from": [{"namespaceSelector": nss("x")}]}]}]),
    # a policy that selects nothing opens nothing: the allow-alls of selectors no port
    # matches do not reach y/b, which another policy isolates (it takes y/a only)
    ("selects-nothing", [{"name": "nobody", "podSelector": {"matchExpressions": [
                             {"key": "pod", "operator": "DoesNotExist"}]}, "ingress": [{}],
                          "egress": [{}]},
                         {"name": "pod-d", "namespace": "y", "podSelector": pods("d"), "ingress": [{}]},
                         {"name": "yb-from-ya", "namespace": "y", "podSelector": pods("b"),
                          "ingress": [{"from": [{"podSelector": pods("a")}]}]}]),
    # ingress and egress in one policy: y/c takes TCP 80 from x and may open only to z
    ("ingress-and-egress", [{"name": "yc-both", "namespace": "y", "podSelector": pods("c"),
                             "policyTypes": ["Ingress", "Egress"],
                             "ingress": [{"from": [{"namespaceSelector": nss("x")}],
                                          "ports": [{"protocol": "TCP", "port": 80}]}],
                             "egress": [{"to": [{"namespaceSelector": nss("z")}]}]}]),
    # an Egress-only policy leaves ingress open: x/b may open only to a's, and everyone
    # reaches x/b (Kubernetes would ignore ingress rules here; nvctl refuses them)
    ("egress-only-keeps-ingress-open", [{"name": "xb-out", "namespace": "x", "podSelector": pods("b"),
                                         "policyTypes": ["Egress"],
                                         "egress": [{"to": [{"namespaceSelector": ALL, "podSelector": pods("a")}]}]}]),
    # default deny in every switch, then a path x/a -> y/b -> z/c: egress and ingress
    # must both allow each hop
    ("deny-all-then-a-chain", [{"name": "deny-everything", "podSelector": ALL, "policyTypes": ["Ingress", "Egress"]},
                               {"name": "xa-out", "namespace": "x", "podSelector": pods("a"),
                                "egress": [{"to": [{"namespaceSelector": nss("y"), "podSelector": pods("b")}]}]},
                               {"name": "yb-in", "namespace": "y", "podSelector": pods("b"),
                                "ingress": [{"from": [{"namespaceSelector": nss("x"), "podSelector": pods("a")}]}],
                                "egress": [{"to": [{"namespaceSelector": nss("z"), "podSelector": pods("c")}],
                                            "ports": [{"protocol": "UDP"}]}]},
                               {"name": "zc-in", "namespace": "z", "podSelector": pods("c"),
                                "ingress": [{"from": [{"namespaceSelector": ALL}]}]}]),
]
