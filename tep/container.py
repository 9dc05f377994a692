"""A container's interface in a namespace someone else made (a CNI runtime's): a veth
from it to a host's namespace, for br-int. Processes only (ip, nsenter, ethtool), no
netlink library: the CNI plugin runs once per container and starts fast.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess

from tep.ovs import run

VETH_MTU = 1500  # the attachment veths carry a full 1500-byte frame, whatever the workload's MTU:
# a workload that ignores its MTU still gets its frames into br-int, where the pipeline decides
# eth0 only (its veths stay IPv4-only); addresses are the platform's, not SLAAC's
IPV6_ON = ("sysctl -qw net.ipv6.conf.{i}.disable_ipv6=0 net.ipv6.conf.{i}.accept_ra=0 "
           "net.ipv6.conf.{i}.autoconf=0")


def _in_netns(netns: str, script: str) -> None:
    run(["nsenter", f"--net={netns}", "sh", "-ec", script])


def plug_container(netns: str, ifname: str, host_ns: str | None, host_ifname: str, mac: str, mtu: int,
                   ip: str, prefixlen: int, gateway: str | None = None, ip6: str | None = None,
                   prefixlen6: int = 64, gateway6: str | None = None) -> None:
    """A veth from the container's namespace (a path: /run/netns/X, /proc/PID/ns/net) to
    the host's (`host_ns`, a name; None: this one): `ifname` inside, with the port's MAC,
    MTU, addresses and default routes; `host_ifname` outside, for br-int. Made in the
    host's namespace and moved in (iproute2 takes any namespace path)."""
    tmp = "t" + hashlib.blake2b(f"{netns}/{ifname}".encode(), digest_size=5).hexdigest()
    on_host = ["-n", host_ns] if host_ns else []
    run(["ip", *on_host, "link", "add", tmp, "mtu", str(max(VETH_MTU, mtu)), "type", "veth",
         "peer", "name", host_ifname])
    try:
        run(["ip", *on_host, "link", "set", tmp, "netns", netns])  # iproute2 takes a path
        if ip6:
            v6 = [IPV6_ON.format(i=ifname), f"ip -6 addr add {ip6}/{prefixlen6} dev {ifname} nodad"]
            if gateway6:
                v6.append(f"ip -6 route replace default via {gateway6} dev {ifname}")
        else:
            v6 = [f"sysctl -qw net.ipv6.conf.{ifname}.disable_ipv6=1 2>/dev/null || true"]
        _in_netns(netns, "; ".join([
            f"ip link set {tmp} name {ifname} address {mac} mtu {mtu}",
            f"ethtool -K {ifname} tx off >/dev/null",  # the userspace datapath fills in no checksums
            *v6,
            f"ip addr add {ip}/{prefixlen} dev {ifname}",
            f"ip link set {ifname} up",
            *([f"ip route replace default via {gateway} dev {ifname}"] if gateway else [])]))
    except Exception:
        subprocess.run(["ip", *on_host, "link", "del", host_ifname], capture_output=True)
        raise
    run(["ip", *on_host, "link", "set", host_ifname, "up"])


def veth_for_runtime(host_ns: str | None, host_ifname: str, name: str, mac: str, mtu: int) -> None:
    """A veth from the host's namespace (`host_ifname`, for br-int) to this process's
    (`name`, with the port's MAC and MTU) for a runtime that moves it into its container
    itself (Docker's Join). Gone on failure."""
    on_host = ["-n", host_ns] if host_ns else []
    run(["ip", *on_host, "link", "add", name, "mtu", str(max(VETH_MTU, mtu)), "type", "veth",
         "peer", "name", host_ifname])
    try:
        if host_ns:
            run(["ip", "-n", host_ns, "link", "set", name, "netns", f"/proc/{os.getpid()}/ns/net"])
        run(["ip", "link", "set", name, "address", mac, "mtu", str(mtu)])
        run(["ethtool", "-K", name, "tx", "off"])  # the userspace datapath fills in no checksums
        run(["ip", *on_host, "link", "set", host_ifname, "up"])
    except Exception:
        subprocess.run(["ip", *on_host, "link", "del", host_ifname], capture_output=True)
        raise


def container_interface(netns: str, ifname: str) -> dict | None:
    """{"mac", "mtu", "addresses": [cidr, ...]} of the container's interface, or None."""
    if not os.path.exists(netns):
        return None
    p = subprocess.run(["nsenter", f"--net={netns}", "ip", "-j", "addr", "show", "dev", ifname],
                       capture_output=True, text=True)
    if p.returncode != 0:
        return None
    (link,) = json.loads(p.stdout)
    return {"mac": link["address"], "mtu": link["mtu"],
            "addresses": [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                          if a.get("scope") == "global"]}


def unplug_container(netns: str, ifname: str, host_ns: str | None, host_ifname: str) -> None:
    """Remove the veth (either end takes the other); nothing to do if it is gone, or
    the namespace is (a namespace's veths go with it)."""
    if os.path.exists(netns):
        subprocess.run(["nsenter", f"--net={netns}", "ip", "link", "del", ifname], capture_output=True)
    subprocess.run(["ip", *(["-n", host_ns] if host_ns else []), "link", "del", host_ifname], capture_output=True)
