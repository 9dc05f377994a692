"""A lab workload ("VM"): a network namespace whose eth0 reaches a host's br-int.

eth0 is a small bridge holding the workload's MAC and addresses; its ports are veths
into hosts. A live migration attaches the workload to the destination first, switches
the flows, then detaches it from the source (make-before-break, nothing moves between
namespaces), so the workload keeps its namespace, addresses and sockets.
"""
from __future__ import annotations

import hashlib
import os

from pyroute2 import netns

from tep import nsutil
from tep.container import IPV6_ON, VETH_MTU  # noqa: F401  (VETH_MTU: also the driver's)
from tep.ovs import run

WORKLOAD_IFNAME = "eth0"
IPV4_ONLY = "sysctl -qw net.ipv6.conf.default.disable_ipv6=1 net.ipv6.conf.all.disable_ipv6=1"
IPV4_ONLY_SYSCTLS = {"ipv6/conf/default/disable_ipv6": "1", "ipv6/conf/all/disable_ipv6": "1"}


def namespaces() -> set[str]:
    return set(netns.listnetns())


def ensure_namespace(name: str) -> None:
    """The namespace, made if missing: lo up, and no IPv6 on the links that arrive.
    In this process (setns), no `ip` or shell: see tep/nsutil.py."""
    if not nsutil.exists(name):
        nsutil.create(name, IPV4_ONLY_SYSCTLS)


def delete_namespace(name: str) -> None:
    if name in namespaces():
        netns.remove(name)


def attachment_name(host_ns: str) -> str:
    """The workload-side end of its veth into one host: 11 characters, stable per host."""
    return "h" + hashlib.blake2b(host_ns.encode(), digest_size=5).hexdigest()


def create_workload(ns_name: str, host_ns: str, host_ifname: str, ip: str, prefixlen: int,
                    mac: str, gateway: str | None = None, mtu: int = 1500, ip6: str | None = None,
                    prefixlen6: int = 64, gateway6: str | None = None) -> None:
    """Make the workload namespace look as asked: eth0 with this MAC, address and
    default gateway, attached to host_ns (host end host_ifname) and to no other host.
    Idempotent, and updates in place: an existing workload keeps its namespace (and
    its processes and sockets).

    eth0 is a Linux bridge (STP off, ports isolated from each other) whose ports are
    veths into hosts: one normally, two during a live migration. The workload's MAC
    and addresses belong to the bridge, so they stay while attachments come and go."""
    fresh = not nsutil.exists(ns_name)
    ensure_namespace(ns_name)
    # one netlink socket per namespace for the whole job, opened from this thread (setns)
    with nsutil.iproute(ns_name) as ns, nsutil.iproute(host_ns) as hns, nsutil.ioctl_socket(ns_name) as sk:
        if fresh:  # nothing to compare with: ten netlink calls instead of forty
            idx = _fresh(ns, hns, sk, ns_name, host_ns, host_ifname, ip, prefixlen, mac, gateway, mtu)
            if ip6:
                _ipv6(ns, ns_name, idx, ip6, prefixlen6, gateway6)
            return
        have = ns.link_lookup(ifname=WORKLOAD_IFNAME)
        if have and ns.get_links(have[0])[0].get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_KIND") != "bridge":
            ns.link("del", index=have[0])  # a workload from before eth0 was a bridge
            have = []
        if not have:
            ns.link("add", ifname=WORKLOAD_IFNAME, kind="bridge", br_stp_state=0, br_forward_delay=0,
                    address=mac, mtu=mtu)
            have = ns.link_lookup(ifname=WORKLOAD_IFNAME)
        idx = have[0]
        link = ns.get_links(idx)[0]
        if link.get_attr("IFLA_ADDRESS") != mac:
            ns.link("set", index=idx, state="down")
            ns.link("set", index=idx, address=mac)
        if link.get_attr("IFLA_MTU") != mtu:
            ns.link("set", index=idx, mtu=mtu)
        keep = attachment_name(host_ns)
        for name in _attachments(ns):
            if name != keep:
                _delete_in(ns, name)
        _attach(ns, hns, sk, ns_name, host_ns, host_ifname, max(VETH_MTU, mtu))
        ns.link("set", index=idx, mtu=mtu)  # a bridge follows its ports' MTU unless told
        want = (ip, prefixlen)
        for a in ns.get_addr(index=idx, family=2):
            if (a.get_attr("IFA_ADDRESS"), a["prefixlen"]) != want:
                ns.addr("del", index=idx, address=a.get_attr("IFA_ADDRESS"), prefixlen=a["prefixlen"])
        if want not in [(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ns.get_addr(index=idx, family=2)]:
            ns.addr("add", index=idx, address=ip, prefixlen=prefixlen)
        ns.link("set", index=idx, state="up")
        for r in ns.get_default_routes(family=2):
            ns.route("del", dst="0.0.0.0/0", gateway=r.get_attr("RTA_GATEWAY"))
        if gateway:
            ns.route("add", dst="0.0.0.0/0", gateway=gateway)
        if ip6:
            _ipv6(ns, ns_name, idx, ip6, prefixlen6, gateway6)




def _fresh(ns, hns, sk, ns_name: str, host_ns: str, host_ifname: str, ip: str, prefixlen: int, mac: str,
           gateway: str | None, mtu: int) -> int:
    """create_workload in a namespace just made: eth0 (the bridge) and one attachment."""
    ns.link("add", ifname=WORKLOAD_IFNAME, kind="bridge", br_stp_state=0, br_forward_delay=0, address=mac, mtu=mtu)
    idx = ns.link_lookup(ifname=WORKLOAD_IFNAME)[0]
    _delete_in(hns, host_ifname)  # a host end left by something else of that name
    _new_attachment(ns, hns, sk, ns_name, attachment_name(host_ns), host_ifname, max(VETH_MTU, mtu), idx)
    ns.link("set", index=idx, mtu=mtu, state="up")  # a bridge follows its ports' MTU unless told
    ns.addr("add", index=idx, address=ip, prefixlen=prefixlen)
    if gateway:
        ns.route("add", dst="0.0.0.0/0", gateway=gateway)
    return idx


def _ipv6(ns, ns_name: str, idx: int, ip6: str, prefixlen6: int, gateway6: str | None) -> None:
    """Dual stack on eth0: the CA as given (no duplicate address detection: the spec
    already makes it unique), and the router port as default route."""
    run(["ip", "netns", "exec", ns_name, "sh", "-ec", IPV6_ON.format(i=WORKLOAD_IFNAME)])
    have = [(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ns.get_addr(index=idx, family=10)
            if not a.get_attr("IFA_ADDRESS").startswith("fe80:")]
    for addr, plen in have:
        if (addr, plen) != (ip6, prefixlen6):
            ns.addr("del", index=idx, address=addr, prefixlen=plen)
    if (ip6, prefixlen6) not in have:
        run(["ip", "-n", ns_name, "-6", "addr", "add", f"{ip6}/{prefixlen6}", "dev", WORKLOAD_IFNAME, "nodad"])
    if gateway6:
        run(["ip", "-n", ns_name, "-6", "route", "replace", "default", "via", gateway6, "dev", WORKLOAD_IFNAME])


def _attachments(ns) -> list[str]:
    br = ns.link_lookup(ifname=WORKLOAD_IFNAME)
    if not br:
        return []
    return [lk.get_attr("IFLA_IFNAME") for lk in ns.get_links() if lk.get_attr("IFLA_MASTER") == br[0]]


def attachments(ns_name: str) -> list[str]:
    """The workload's current attachments (ports of its eth0 bridge)."""
    with nsutil.iproute(ns_name) as ns:
        return _attachments(ns)


def _delete_in(ns, ifname: str) -> None:
    for idx in ns.link_lookup(ifname=ifname):
        ns.link("del", index=idx)


def _attach(ns, hns, sk, ns_name: str, host_ns: str, host_ifname: str, mtu: int) -> None:
    name = attachment_name(host_ns)
    if name in _attachments(ns) and hns.link_lookup(ifname=host_ifname):
        return
    _delete_in(ns, name)
    _delete_in(hns, host_ifname)
    _new_attachment(ns, hns, sk, ns_name, name, host_ifname, mtu, ns.link_lookup(ifname=WORKLOAD_IFNAME)[0])


def _new_attachment(ns, hns, sk, ns_name: str, name: str, host_ifname: str, mtu: int, bridge: int) -> None:
    """A veth made in the host's namespace (its end `host_ifname` up) with its peer `name`
    directly in ours (nothing is moved), that peer a port of the eth0 bridge."""
    fd = os.open(nsutil.path(ns_name), os.O_RDONLY)
    try:
        hns.link("add", ifname=host_ifname, kind="veth", mtu=mtu, state="up",
                 peer={"ifname": name, "mtu": mtu, "net_ns_fd": fd})
    finally:
        os.close(fd)
    idx = ns.link_lookup(ifname=name)[0]
    ns.link("set", index=idx, master=bridge, state="up")
    # the attachments must not talk to each other inside the workload, and the userspace
    # datapath does not fill in checksums left to offload
    ns.link("set", index=idx, kind="bridge_slave", isolated=1)
    nsutil.tx_checksum_off(sk, name)
    nsutil.tx_checksum_off(sk, WORKLOAD_IFNAME)


def attach(ns_name: str, host_ns: str, host_ifname: str, mtu: int = 1500) -> None:
    """Plug the workload into one more host: a veth from its eth0 bridge to host_ns.
    Idempotent: an attachment whose host end is missing is made again."""
    with nsutil.iproute(ns_name) as ns, nsutil.iproute(host_ns) as hns, nsutil.ioctl_socket(ns_name) as sk:
        _attach(ns, hns, sk, ns_name, host_ns, host_ifname, mtu)


def detach(ns_name: str, host_ns: str) -> None:
    """Unplug the workload from one host (its veth goes, both ends)."""
    _delete_link(ns_name, attachment_name(host_ns))


def _delete_link(ns_name: str, ifname: str) -> None:
    if ns_name not in namespaces():
        return
    with nsutil.iproute(ns_name) as ns:
        for idx in ns.link_lookup(ifname=ifname):
            ns.link("del", index=idx)


def delete_workload(ns_name: str, host_ns: str, host_ifname: str) -> None:
    _delete_link(host_ns, host_ifname)
    delete_namespace(ns_name)
