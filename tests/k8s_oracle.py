"""An independent reference for `networkPolicies:`: which new connections Kubernetes'
NetworkPolicy v1 rules allow between a tenant's ports, for tests to compare with.

It reads the tenant document as parsed YAML (plain dicts and lists) and nothing of the
platform: no import from topology/ or controller/, so a mistake in the compiler's reading
of the rules cannot hide here by being shared. It is written from the Kubernetes rules
(kubernetes.io/docs/concepts/services-networking/network-policies/), with a switch
playing the namespace (its `labels` are the namespace's labels, a port's namespace is its
`switch`), as docs/tenant-yaml.md and docs/policies.md say:

- A port is isolated for ingress when some policy whose types include Ingress selects
  it, and for egress likewise; a port no policy of a type selects is open that way.
- An isolated port's new connection passes when some rule of some policy of that type
  selecting it allows it: the peer (any peer of `from`/`to`, or everyone without one)
  and the protocol/port (any entry of `ports`, or everything without one).
- A connection between two ports needs the sender's egress AND the receiver's ingress.
- policyTypes default: Ingress, plus Egress when `egress` has a rule; rules of a type
  the policy does not have are ignored.
- Peers: podSelector alone selects ports of the policy's namespace (of every switch for
  a policy without `namespace`); namespaceSelector alone every port of the switches it
  matches; both in one peer the ports matching podSelector on switches matching
  namespaceSelector (AND); two peers are an OR. ipBlock: addresses in `cidr` and in no
  `except`, tenant ports' addresses included. A peer selects a port by its addresses
  (IPv4, and IPv6 with dual stack), so the oracle judges an address against the ports
  a selector picks.
- Selectors: matchLabels and matchExpressions ANDed, {} matches everything; In needs
  the key with one of the values, NotIn the key absent or none of the values, Exists
  the key, DoesNotExist its absence.

Only the policies are judged: ACLs, routing (whether the two switches are joined at
all) and replies of allowed connections (which always pass) are the tests' business.
What the rules do not define (a named port, SCTP, an empty peer) raises OracleError.

    from tests.k8s_oracle import allowed, matrix
    allowed(doc, "xa", "yb", "tcp", 80)           # xa -> yb:80/tcp, IPv4
    matrix(doc, "udp", 81, family=6)              # {(src, dst): bool} of every ordered pair
"""
from __future__ import annotations

import ipaddress

__all__ = ["OracleError", "allowed", "allowed_from_address", "allowed_to_address", "matrix",
           "selector_matches", "selected_ports", "policy_types", "isolated", "port_address"]

PROTOCOLS = ("TCP", "UDP")
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


class OracleError(ValueError):
    """A policy or a question the Kubernetes rules (as the platform takes them) do not answer."""


# -- the tenant document ------------------------------------------------------------------

def _spec(doc: dict) -> dict:
    return doc.get("spec") or {}


def _switches(doc: dict) -> dict:
    """{switch name: its dict}."""
    return {s["name"]: s for s in _spec(doc).get("switches") or []}


def _ports(doc: dict) -> dict:
    """{port name: its dict}, in the document's order."""
    return {p["name"]: p for p in _spec(doc).get("ports") or []}


def _policies(doc: dict) -> list:
    return list(_spec(doc).get("networkPolicies") or [])


def _mac(port: dict) -> str:
    """The port's MAC: its own, or 02:00 and its IPv4 address's four bytes."""
    if port.get("mac"):
        return str(port["mac"]).lower()
    b = ipaddress.IPv4Address(port["ip"]).packed
    return "02:00:" + ":".join(f"{x:02x}" for x in b)


def port_address(doc: dict, name: str, family: int = 4):
    """The address of port `name` in IP version `family`: `ip`, or `ip6` (given, or what
    SLAAC makes of its MAC in its switch's /64 `cidr6`). OracleError when it has none."""
    ports = _ports(doc)
    if name not in ports:
        raise OracleError(f"no port {name!r} in the tenant")
    p = ports[name]
    if family == 4:
        return ipaddress.IPv4Address(p["ip"])
    if family != 6:
        raise OracleError(f"family {family!r}: 4 or 6")
    if p.get("ip6"):
        return ipaddress.IPv6Address(p["ip6"])
    cidr6 = (_switches(doc).get(p["switch"]) or {}).get("cidr6")
    if not cidr6:
        raise OracleError(f"port {name!r} has no IPv6 address (its switch has no cidr6)")
    net = ipaddress.IPv6Network(cidr6)
    if net.prefixlen != 64:
        raise OracleError(f"port {name!r} has no ip6 and its switch's cidr6 is not a /64")
    b = bytes(int(x, 16) for x in _mac(p).split(":"))
    iid = bytes([b[0] ^ 0x02]) + b[1:3] + b"\xff\xfe" + b[3:6]  # modified EUI-64
    return ipaddress.IPv6Address(int(net.network_address) | int.from_bytes(iid, "big"))


def _addresses(doc: dict, name: str) -> set:
    """Every address of a port (both families where it has both)."""
    out = {port_address(doc, name, 4)}
    try:
        out.add(port_address(doc, name, 6))
    except OracleError:
        pass
    return out


# -- selectors ----------------------------------------------------------------------------

def selector_matches(selector: dict | None, labels: dict | None) -> bool:
    """A Kubernetes LabelSelector against a label set: every matchLabels pair and every
    matchExpressions requirement must hold; {} (or None) matches everything."""
    labels = {str(k): str(v) for k, v in (labels or {}).items()}
    selector = selector or {}
    unknown = set(selector) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise OracleError(f"selector: unknown key {sorted(unknown)[0]!r}")
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(str(k)) != str(v):
            return False
    for req in selector.get("matchExpressions") or []:
        key, op, values = req.get("key"), req.get("operator"), req.get("values")
        if op not in OPERATORS:
            raise OracleError(f"matchExpressions: operator {op!r} is not one of {', '.join(OPERATORS)}")
        if op in ("In", "NotIn") and not values:
            raise OracleError(f"matchExpressions: {op} needs values")
        if op in ("Exists", "DoesNotExist") and values:
            raise OracleError(f"matchExpressions: {op} takes no values")
        present = key in labels
        if op == "In" and not (present and labels[key] in {str(v) for v in values}):
            return False
        if op == "NotIn" and present and labels[key] in {str(v) for v in values}:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def _in_namespace(doc: dict, policy: dict) -> list:
    """Ports of the policy's namespace (every port when it has none)."""
    ns = policy.get("namespace")
    if ns is not None and ns not in _switches(doc):
        raise OracleError(f"policy {policy.get('name')!r}: no switch {ns!r}")
    return [n for n, p in _ports(doc).items() if ns is None or p["switch"] == ns]


def selected_ports(doc: dict, policy: dict) -> set:
    """The ports a policy applies to: its podSelector within its namespace."""
    if "podSelector" not in policy:
        raise OracleError(f"policy {policy.get('name')!r}: podSelector is required")
    ports = _ports(doc)
    return {n for n in _in_namespace(doc, policy) if selector_matches(policy["podSelector"], ports[n].get("labels"))}


def _peer_ports(doc: dict, policy: dict, peer: dict) -> set:
    """The ports a selector peer picks (podSelector, namespaceSelector, or both ANDed)."""
    ports, switches = _ports(doc), _switches(doc)
    if "namespaceSelector" in peer:
        nss = {s for s, sw in switches.items() if selector_matches(peer["namespaceSelector"], sw.get("labels"))}
        candidates = [n for n, p in ports.items() if p["switch"] in nss]
    else:
        candidates = _in_namespace(doc, policy)
    if "podSelector" in peer:
        return {n for n in candidates if selector_matches(peer["podSelector"], ports[n].get("labels"))}
    return set(candidates)


def _in_ipblock(block: dict, addr) -> bool:
    try:
        cidr = ipaddress.ip_network(block["cidr"], strict=False)
    except (KeyError, ValueError) as e:
        raise OracleError(f"ipBlock: bad cidr: {e}") from None
    if cidr.version != addr.version or addr not in cidr:
        return False
    for ex in block.get("except") or []:
        exn = ipaddress.ip_network(ex, strict=False)
        if exn.version != cidr.version or not exn.subnet_of(cidr):
            raise OracleError(f"ipBlock: except {ex} is not inside {cidr}")
        if addr in exn:
            return False
    return True


def _peer_matches(doc: dict, policy: dict, peer: dict, addr) -> bool:
    """Does one `from`/`to` peer take the address `addr`?"""
    peer = peer or {}
    selects = "podSelector" in peer or "namespaceSelector" in peer
    unknown = set(peer) - {"podSelector", "namespaceSelector", "ipBlock"}
    if unknown:
        raise OracleError(f"peer: unknown key {sorted(unknown)[0]!r}")
    if "ipBlock" in peer:
        if selects:
            raise OracleError("peer: ipBlock goes alone, without a selector")
        return _in_ipblock(peer["ipBlock"], addr)
    if not selects:
        raise OracleError("peer: needs podSelector, namespaceSelector or ipBlock")
    return any(addr in _addresses(doc, n) for n in _peer_ports(doc, policy, peer))


def _port_matches(entries: list | None, protocol: str, dport: int) -> bool:
    """Does a rule's `ports` take protocol/dport? Absent or [] takes everything."""
    if not entries:
        return True
    for e in entries:
        proto = str(e.get("protocol", "TCP")).upper()
        if proto not in PROTOCOLS:
            raise OracleError(f"ports: protocol {e.get('protocol')!r} is not TCP or UDP")
        port, end = e.get("port"), e.get("endPort")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
            raise OracleError(f"ports: port {port!r}: named ports are not supported")
        if end is not None and (port is None or end < port):
            raise OracleError(f"ports: endPort {end!r} needs a port and must be >= it")
        if proto != protocol:
            continue
        if port is None or port <= dport <= (end if end is not None else port):
            return True
    return False


def policy_types(policy: dict) -> set:
    """The policy's types: as given, else Ingress, plus Egress when it has egress rules."""
    given = policy.get("policyTypes")
    if given:
        bad = set(given) - {"Ingress", "Egress"}
        if bad:
            raise OracleError(f"policyTypes: {sorted(bad)[0]!r} is not Ingress or Egress")
        return set(given)
    return {"Ingress"} | ({"Egress"} if policy.get("egress") else set())


def _applying(doc: dict, port: str, kind: str) -> list:
    """The policies of type `kind` ("Ingress"/"Egress") that select `port`."""
    if port not in _ports(doc):
        raise OracleError(f"no port {port!r} in the tenant")
    return [p for p in _policies(doc) if kind in policy_types(p) and port in selected_ports(doc, p)]


def isolated(doc: dict, port: str, kind: str) -> bool:
    """Is `port` isolated for `kind` ("Ingress" or "Egress")?"""
    return bool(_applying(doc, port, kind))


def _direction_allows(doc: dict, port: str, kind: str, peer_addr, protocol: str, dport: int) -> bool:
    """Does `port`'s `kind` side let a new connection with the other end at `peer_addr` through?"""
    policies = _applying(doc, port, kind)
    if not policies:
        return True  # not isolated that way
    rules_key, peers_key = ("ingress", "from") if kind == "Ingress" else ("egress", "to")
    for pol in policies:
        for rule in pol.get(rules_key) or []:
            rule = rule or {}
            peers = rule.get(peers_key)
            if peers and not any(_peer_matches(doc, pol, peer, peer_addr) for peer in peers):
                continue
            if _port_matches(rule.get("ports"), protocol, dport):
                return True
    return False


def _check(protocol: str, dport: int) -> str:
    proto = str(protocol).upper()
    if proto not in PROTOCOLS:
        raise OracleError(f"protocol {protocol!r}: tcp or udp")
    if not isinstance(dport, int) or not 1 <= dport <= 65535:
        raise OracleError(f"dport {dport!r}: 1-65535")
    return proto


# -- the questions --------------------------------------------------------------------------

def allowed(doc: dict, src_port: str, dst_port: str, protocol: str, dport: int, family: int = 4) -> bool:
    """Would a new connection from port `src_port` to port `dst_port`'s address of IP
    version `family`, `protocol` ('tcp'/'udp') to `dport`, pass the policies: the
    sender's egress and the receiver's ingress?"""
    proto = _check(protocol, dport)
    src_addr, dst_addr = port_address(doc, src_port, family), port_address(doc, dst_port, family)
    return (_direction_allows(doc, src_port, "Egress", dst_addr, proto, dport)
            and _direction_allows(doc, dst_port, "Ingress", src_addr, proto, dport))


def matrix(doc: dict, protocol: str, dport: int, family: int = 4) -> dict:
    """{(src, dst): allowed} for every ordered pair of distinct ports of the tenant."""
    names = list(_ports(doc))
    return {(a, b): allowed(doc, a, b, protocol, dport, family) for a in names for b in names if a != b}


def allowed_from_address(doc: dict, src_ip: str, dst_port: str, protocol: str, dport: int) -> bool:
    """A new connection from an address that is no port's (an outside host, through a
    floating IP): only the receiver's ingress judges it. (The address of one of the
    tenant's ports is taken as that port's, as the rules judge by addresses.)"""
    proto = _check(protocol, dport)
    addr = ipaddress.ip_address(src_ip)
    port_address(doc, dst_port, addr.version)  # the destination must have that family
    return _direction_allows(doc, dst_port, "Ingress", addr, proto, dport)


def allowed_to_address(doc: dict, src_port: str, dst_ip: str, protocol: str, dport: int) -> bool:
    """A new connection from port `src_port` to an address outside the tenant: only the
    sender's egress judges it."""
    proto = _check(protocol, dport)
    addr = ipaddress.ip_address(dst_ip)
    return _direction_allows(doc, src_port, "Egress", addr, proto, dport)
