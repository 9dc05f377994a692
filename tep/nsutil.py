"""Network namespaces from inside this process, with no helper process.

pyroute2's NetNS forks a process per namespace (about 20 ms each, and a workload needs
two), `ip netns add` and `ip netns exec ... sh` cost one process per command. Here the
calling thread enters a namespace with setns(2) (which moves only that thread), opens
what it needs there (a netlink socket, an ioctl socket, a sysctl file: each keeps the
namespace it was opened in) and returns. So a workload is made by netlink calls and
ioctls on sockets, from any thread of a thread pool.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
from contextlib import contextmanager

from pyroute2 import IPRoute, netns as pr_netns

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
MS_BIND = 4096
SIOCETHTOOL, ETHTOOL_STXCSUM = 0x8946, 0x17
_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def path(name: str) -> str:
    return f"{NETNS_DIR}/{name}"


def exists(name: str) -> bool:
    """Whether namespace `name` is there: its file under /run/netns has a network
    namespace mounted on it. A file alone is what a process killed between making the
    file and mounting the namespace leaves behind; `create` replaces it."""
    try:
        return os.stat(path(name)).st_dev == os.stat("/proc/self/ns/net").st_dev
    except FileNotFoundError:
        return False


@contextmanager
def entered(name: str):
    """This thread in network namespace `name` for the block, then back where it was."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        fd = os.open(path(name), os.O_RDONLY)
        try:
            _check(_libc.setns(fd, CLONE_NEWNET), f"setns {name}")
        finally:
            os.close(fd)
        try:
            yield
        finally:
            _check(_libc.setns(own, CLONE_NEWNET), "setns back")
    finally:
        os.close(own)


_rundir_mounted = False


def _rundir_ready() -> bool:
    """Whether /run/netns is already the shared mount `ip netns add` makes of it (then a
    namespace is one bind mount; else pyroute2 sets the directory up, once). Read from
    mountinfo until it is; it stays so."""
    global _rundir_mounted
    if not _rundir_mounted:
        with open("/proc/self/mountinfo") as f:
            _rundir_mounted = any(line.split()[4] == NETNS_DIR for line in f)
    return _rundir_mounted


def create(name: str, sysctls: dict[str, str] | None = None) -> None:
    """A new named network namespace, as `ip netns add` makes it, with lo up and these
    sysctls (paths under /proc/sys/net, e.g. {"ipv6/conf/all/disable_ipv6": "1"})."""
    if not _rundir_ready():
        pr_netns.create(name)
    else:
        p = path(name)
        if os.path.exists(p) and not exists(name):  # a file without a namespace: left by a kill
            os.unlink(p)
        os.close(os.open(p, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            _check(_libc.unshare(CLONE_NEWNET), "unshare")
            try:
                _check(_libc.mount(b"/proc/thread-self/ns/net", p.encode(), b"none", MS_BIND, None),
                       f"mount {p}")
            finally:
                _check(_libc.setns(own, CLONE_NEWNET), "setns back")
        except Exception:
            os.unlink(p)
            raise
        finally:
            os.close(own)
    with entered(name):
        for key, value in (sysctls or {}).items():
            with open(f"/proc/sys/net/{key}", "w") as f:
                f.write(value)
        with IPRoute() as ip:
            ip.link("set", index=ip.link_lookup(ifname="lo")[0], state="up")


def iproute(name: str) -> IPRoute:
    """A netlink socket in namespace `name` (close it when done)."""
    with entered(name):
        return IPRoute()


def ioctl_socket(name: str) -> socket.socket:
    """A datagram socket in namespace `name`, for interface ioctls there."""
    with entered(name):
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def tx_checksum_off(sock: socket.socket, ifname: str) -> None:
    """`ethtool -K IFNAME tx off` (ETHTOOL_STXCSUM) through a socket of the interface's
    namespace: the userspace datapath does not fill in checksums left to offload."""
    value = ctypes.create_string_buffer(struct.pack("II", ETHTOOL_STXCSUM, 0))
    ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(value)).ljust(40, b"\0")
    fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
