"""The validated tenant model: plain frozen values, nothing of OpenFlow here."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class Switch:
    name: str
    cidr: ipaddress.IPv4Network
    mtu: int | None = None  # None: the largest the underlay of its hosts carries
    dhcp: bool = True  # the platform answers DHCP (and DNS) for this switch's ports
    cidr6: ipaddress.IPv6Network | None = None  # its IPv6 prefix (dual stack), if any
    labels: tuple = ()  # ((key, value), ...) sorted by key: Kubernetes-style labels (a switch plays a namespace)


DEFAULT_LEASE_SECONDS = 3600
DNS_SUFFIX = "nvctl"  # a port answers to <port>.<tenant>.nvctl


@dataclass(frozen=True)
class Service:
    """Where a switch's DHCP server and DNS server answer: its router port if it has
    one (that is also the clients' gateway), else the last address of its CIDR."""

    ip: ipaddress.IPv4Address
    mac: str
    router: ipaddress.IPv4Address | None  # the gateway DHCP hands out


@dataclass(frozen=True)
class Port:
    name: str
    switch: str
    ip: ipaddress.IPv4Address
    mac: str
    host: str
    rate_limit_mbps: float | None = None
    bum_limit_pps: int | None = None  # broadcast/multicast/unknown unicast; None: the default
    ip6: ipaddress.IPv6Address | None = None  # on a switch with cidr6: given, or from the MAC
    made_by: str = "yaml"  # "api": added by `nvctl port add` (kept by a `tenant apply` that omits it)
    workload: bool = True  # False: the platform makes no workload; something else plugs it (CNI)
    container_id: str | None = None  # the container a CNI plugin made it for
    vm: bool = False  # `workload: vm`: the platform's workload is a QEMU guest, not a namespace
    labels: tuple = ()  # ((key, value), ...) sorted by key: Kubernetes-style labels
    # A live migration under way: the host where a second binding waits for the guest's
    # announcement (RARP/GARP) to take over. Controller state, never in the YAML.
    pending: str | None = None

    @property
    def link_local(self) -> ipaddress.IPv6Address:
        return link_local(self.mac)


@dataclass(frozen=True)
class RouterPort:
    switch: str
    ip: ipaddress.IPv4Address
    mac: str
    ip6: ipaddress.IPv6Address | None = None  # without it, the switch's IPv6 is not routed

    @property
    def link_local(self) -> ipaddress.IPv6Address:
        return link_local(self.mac)


@dataclass(frozen=True)
class Route:
    prefix: ipaddress.IPv4Network
    next_hop: ipaddress.IPv4Address


@dataclass(frozen=True)
class LearnedRoute:
    """A route a routing protocol brought in (controller.bgp): controller state, never in
    the YAML. Traffic to `prefix` leaves through the router's gateway, like its default
    route; `peer` (AS `peer_asn`) announced it with next hop `next_hop`."""

    prefix: ipaddress.IPv4Network
    next_hop: ipaddress.IPv4Address
    peer: str
    peer_asn: int


@dataclass(frozen=True)
class Router:
    name: str
    ports: tuple[RouterPort, ...]
    routes: tuple[Route, ...] = ()
    external_ip: ipaddress.IPv4Address | None = None
    # the hosts that may carry its external port, most preferred first (`external.gateways`);
    # empty: the controller places it on hosts with the provider network
    gateways: tuple[str, ...] = ()
    # `external.importRoutes`: prefixes inside which routes learned from the provider (BGP)
    # are taken in. None: no import, the router has a default route to the external
    # network; a tuple (even empty): its external routes are exactly the learned ones.
    import_routes: tuple[ipaddress.IPv4Network, ...] | None = None
    # the learned routes its filters let in (controller state, like a load balancer's `down`)
    learned: tuple[LearnedRoute, ...] = ()

    def imports(self, prefix: ipaddress.IPv4Network) -> bool:
        """Does `external.importRoutes` let a learned route for `prefix` in?"""
        return self.import_routes is not None and any(prefix.subnet_of(f) for f in self.import_routes)

    def port_on(self, switch: str) -> RouterPort | None:
        for rp in self.ports:
            if rp.switch == switch:
                return rp
        return None


@dataclass(frozen=True)
class AclRule:
    """One ACL rule. `ports`: the tenant ports it guards; `src`/`dst`: networks the
    packet's source/destination must be in (empty: any); port ranges are inclusive."""

    index: int
    priority: int
    direction: str  # "to-port" or "from-port"
    ports: tuple[str, ...]  # empty: every port of the tenant
    action: str  # "allow", "allow-stateless" or "deny"
    protocol: str | None = None  # "tcp", "udp", "icmp" or None (any)
    src: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    dst: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    src_ports: tuple[tuple[int, int], ...] = ()
    dst_ports: tuple[tuple[int, int], ...] = ()
    name: str = ""  # what logs, stats and drops call it ("" -> "acl[INDEX]")
    log: bool = False  # one log line per connection attempt it decides (metered per host)

    @property
    def label(self) -> str:
        return self.name or f"acl[{self.index}]"


@dataclass(frozen=True)
class Selector:
    """A Kubernetes label selector: every term must hold; no terms select everything.
    `match_labels`: ((key, value), ...); `expressions`: ((key, operator, (values...)), ...)
    with operator In, NotIn, Exists or DoesNotExist."""

    match_labels: tuple = ()
    expressions: tuple = ()

    def selects(self, labels) -> bool:
        have = dict(labels)
        for k, v in self.match_labels:
            if have.get(k) != v:
                return False
        for k, op, values in self.expressions:
            if op == "In" and have.get(k) not in values:
                return False
            if op == "NotIn" and k in have and have[k] in values:
                return False
            if op == "Exists" and k not in have:
                return False
            if op == "DoesNotExist" and k in have:
                return False
        return True


@dataclass(frozen=True)
class PolicyPeer:
    """One `from`/`to` entry: ports by selectors, or an ipBlock (cidr minus except)."""

    pod: Selector | None = None
    namespace: Selector | None = None
    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    except_: tuple = ()


@dataclass(frozen=True)
class PolicyRule:
    """One ingress or egress rule: peers (empty: any address) and ports (empty: any
    port and protocol): ((protocol, low, high), ...), low None for every port."""

    index: int
    peers: tuple[PolicyPeer, ...] = ()
    ports: tuple = ()


@dataclass(frozen=True)
class NetworkPolicy:
    """Kubernetes NetworkPolicy v1 semantics, a switch playing the namespace."""

    index: int
    name: str
    namespace: str | None  # the switch it lives in; None: every switch of the tenant
    selector: Selector
    types: tuple[str, ...]  # "Ingress", "Egress"
    ingress: tuple[PolicyRule, ...] = ()
    egress: tuple[PolicyRule, ...] = ()
    log: bool = False


@dataclass(frozen=True)
class NatRule:
    """type "snat": the router's external address for sources in `cidr`;
    type "floating-ip": `external_ip` is `port`'s, both ways."""

    type: str
    router: str
    cidr: ipaddress.IPv4Network | None = None
    port: str | None = None
    external_ip: ipaddress.IPv4Address | None = None


@dataclass(frozen=True)
class HealthCheck:
    """A load balancer's backend probes (controller.packetin.health): every `interval`
    seconds a TCP SYN (UDP: a datagram) from the backend's host; no answer within
    `timeout` seconds (UDP: an ICMP port unreachable) is a failure. `failure_count`
    failures in a row take a backend out, `success_count` successes put it back."""

    interval: float = 5.0
    timeout: float = 2.0
    success_count: int = 2
    failure_count: int = 3


@dataclass(frozen=True)
class LoadBalancer:
    name: str
    vip: ipaddress.IPv4Address
    protocol: str  # "tcp" or "udp"
    port: int
    backends: tuple[tuple[str, int], ...]  # (tenant port name, its listening port)
    health_check: HealthCheck | None = None
    # Backends its health checks found down, taken out of the select group. Controller
    # state (operational, like Port.pending), never in the YAML: it does not change the
    # tenant's spec, and a change of the spec keeps it (controller.server.health).
    down: tuple[tuple[str, int], ...] = ()

    @property
    def live(self) -> tuple[tuple[str, int], ...]:
        """The backends new connections may go to: all but those found down."""
        return tuple(b for b in self.backends if b not in self.down) if self.down else self.backends

    @property
    def mac(self) -> str:
        """What ARP answers for the VIP on its switch."""
        return derived_mac(self.vip, 2)


@dataclass(frozen=True)
class Tenant:
    name: str
    switches: tuple[Switch, ...]
    ports: tuple[Port, ...]
    routers: tuple[Router, ...] = ()
    acls: tuple[AclRule, ...] = ()
    nat: tuple[NatRule, ...] = ()
    load_balancers: tuple[LoadBalancer, ...] = ()
    network_policies: tuple[NetworkPolicy, ...] = ()

    def router(self, name: str) -> Router:
        for r in self.routers:
            if r.name == name:
                return r
        raise KeyError(name)

    def router_of(self, switch: str) -> tuple[Router, RouterPort] | None:
        for r in self.routers:
            rp = r.port_on(switch)
            if rp is not None:
                return r, rp
        return None

    def switch(self, name: str) -> Switch:
        for s in self.switches:
            if s.name == name:
                return s
        raise KeyError(name)

    def port(self, name: str) -> Port:
        for p in self.ports:
            if p.name == name:
                return p
        raise KeyError(name)

    def ports_on(self, switch: str) -> list[Port]:
        return [p for p in self.ports if p.switch == switch]

    def hosts(self) -> set[str]:
        return {p.host for p in self.ports}

    @property
    def has_ipv6(self) -> bool:
        return any(s.cidr6 is not None for s in self.switches)

    def service(self, switch: str) -> Service:
        rr = self.router_of(switch)
        if rr is not None:
            return Service(rr[1].ip, rr[1].mac, rr[1].ip)
        ip = service_address(self.switch(switch).cidr)
        return Service(ip, derived_mac(ip, 3), None)

    @property
    def domain(self) -> str:
        return f"{self.name}.{DNS_SUFFIX}"


def eui64(prefix: ipaddress.IPv6Network, mac: str) -> ipaddress.IPv6Address:
    """The address SLAAC gives `mac` in a /64 (RFC 4291 appendix A: modified EUI-64)."""
    b = bytes(int(x, 16) for x in mac.split(":"))
    iid = bytes([b[0] ^ 0x02]) + b[1:3] + b"\xff\xfe" + b[3:6]
    return ipaddress.IPv6Address(int(prefix.network_address) | int.from_bytes(iid, "big"))


def link_local(mac: str) -> ipaddress.IPv6Address:
    return eui64(ipaddress.IPv6Network("fe80::/64"), mac)


def service_address(cidr: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    """The DHCP/DNS address of a switch without a router: its last usable address."""
    return cidr.broadcast_address - 1


def derived_mac(ip: ipaddress.IPv4Address, kind: int = 0) -> str:
    """A locally administered unicast MAC from the IP: unique within a switch because
    IPs are, and stable when the port moves between hosts. kind 0: workload ports,
    kind 1: router ports, 2: load balancers, 3: a switch's DHCP/DNS service address,
    4: a host's own address on a provider network."""
    b = ip.packed
    return f"02:{kind:02x}:" + ":".join(f"{x:02x}" for x in b)
