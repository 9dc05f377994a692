"""A lab workload ("VM"): a network namespace whose eth0 is a veth into a host's br-int.

The workload keeps its namespace, addresses and sockets when it moves: only the host
end of the veth is re-created in the new host's namespace.
"""
from __future__ import annotations

import subprocess

from pyroute2 import IPRoute, NetNS, netns

from tep.ovs import OvsError, run

WORKLOAD_IFNAME = "eth0"


def namespaces() -> set[str]:
    return set(netns.listnetns())


def ensure_namespace(name: str) -> None:
    if name not in namespaces():
        netns.create(name)
        with NetNS(name) as ns:
            lo = ns.link_lookup(ifname="lo")[0]
            ns.link("set", index=lo, state="up")
        ipv4_only(name)


def ipv4_only(ns_name: str) -> None:
    """Links that arrive in this namespace from now on get no IPv6. The overlay carries
    IPv4 (port security drops IPv6), and kernel IPv6 chatter (MLD, router solicitations)
    on a veth goes straight to its peer, around OVS."""
    run(["ip", "netns", "exec", ns_name, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1",
         "net.ipv6.conf.all.disable_ipv6=1"])


def delete_namespace(name: str) -> None:
    if name in namespaces():
        netns.remove(name)


def create_workload(ns_name: str, host_ns: str, host_ifname: str, ip: str, prefixlen: int,
                    mac: str, mtu: int = 1500) -> None:
    """Create (or re-create) the workload namespace with eth0 <-> host_ifname in host_ns.
    Idempotent: an existing eth0 whose peer is already in place is left alone."""
    ensure_namespace(ns_name)
    with NetNS(ns_name) as ns:
        if ns.link_lookup(ifname=WORKLOAD_IFNAME):
            with NetNS(host_ns) as hns:
                if hns.link_lookup(ifname=host_ifname):
                    return
            idx = ns.link_lookup(ifname=WORKLOAD_IFNAME)[0]
            ns.link("del", index=idx)
    tmp = f"t{host_ifname[1:]}"[:15]
    with IPRoute() as ipr:
        ipr.link("add", ifname=host_ifname, kind="veth", peer={"ifname": tmp})
        try:
            ipr.link("set", index=ipr.link_lookup(ifname=tmp)[0], net_ns_fd=ns_name)
            ipr.link("set", index=ipr.link_lookup(ifname=host_ifname)[0], net_ns_fd=host_ns)
        except Exception:
            for name in (host_ifname, tmp):
                for idx in ipr.link_lookup(ifname=name):
                    ipr.link("del", index=idx)
            raise
    with NetNS(ns_name) as ns:
        idx = ns.link_lookup(ifname=tmp)[0]
        ns.link("set", index=idx, ifname=WORKLOAD_IFNAME, address=mac, mtu=mtu)
        ns.addr("add", index=idx, address=ip, prefixlen=prefixlen)
        ns.link("set", index=idx, state="up")
    with NetNS(host_ns) as hns:
        idx = hns.link_lookup(ifname=host_ifname)[0]
        hns.link("set", index=idx, mtu=mtu, state="up")
    # The userspace datapath does not fill in checksums left to offload.
    run(["ip", "netns", "exec", ns_name, "ethtool", "-K", WORKLOAD_IFNAME, "tx", "off"])



def delete_workload(ns_name: str, host_ns: str, host_ifname: str) -> None:
    if host_ns in namespaces():
        with NetNS(host_ns) as hns:
            for idx in hns.link_lookup(ifname=host_ifname):
                hns.link("del", index=idx)
    if ns_name:
        delete_namespace(ns_name)


def exec_in(ns_name: str, cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    if ns_name not in namespaces():
        raise OvsError(f"no workload namespace {ns_name}")
    return subprocess.run(["ip", "netns", "exec", ns_name, *cmd], capture_output=True,
                          text=True, timeout=timeout)
