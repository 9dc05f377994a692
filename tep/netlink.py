"""Two rtnetlink requests, sent straight from this process: move a link to another
network namespace, and bring it up there.

This is the outage of a live migration, so it is worth doing without helpers: an
`ip -n` process per step cost 20-30 ms per move here, pyroute2's NetNS (a forked
helper per namespace) 30-80 ms. A netlink socket belongs to the namespace it was
created in, so we enter each namespace just long enough to open one (setns(2) on this
thread, then straight back) and talk to both kernels' views from here.
"""
from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct

CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0
RTM_SETLINK = 19
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
IFLA_IFNAME, IFLA_MTU, IFLA_NET_NS_FD = 3, 4, 28
IFF_UP = 0x1

_libc = ctypes.CDLL(None, use_errno=True)


class NetlinkError(OSError):
    pass


def _attr(kind: int, data: bytes) -> bytes:
    head = struct.pack("=HH", 4 + len(data), kind)
    return head + data + b"\0" * (-len(data) % 4)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise NetlinkError(e, f"setns: {os.strerror(e)}")


def socket_in(ns: str) -> socket.socket:
    """A NETLINK_ROUTE socket in namespace `ns` (by its name under /run/netns)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    except FileNotFoundError:
        os.close(own)
        raise NetlinkError(errno.ENOENT, f"no network namespace {ns}") from None
    try:
        _setns(target)
        try:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        finally:
            _setns(own)
        s.bind((0, 0))
        return s
    finally:
        os.close(target)
        os.close(own)


def _setlink(s: socket.socket, ifname: str, flags: int, change: int, attrs: bytes, seq: int) -> None:
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, flags, change)  # ifindex 0: by IFLA_IFNAME
    body += _attr(IFLA_IFNAME, ifname.encode() + b"\0") + attrs
    s.send(struct.pack("=LHHLL", 16 + len(body), RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body)
    while True:
        data = s.recv(65536)
        _, kind, _, rseq, _ = struct.unpack_from("=LHHLL", data)
        if kind == NLMSG_ERROR and rseq == seq:
            code = -struct.unpack_from("=i", data, 16)[0]
            if code:
                raise NetlinkError(code, f"RTM_SETLINK {ifname}: {os.strerror(code)}")
            return


def move_link(ifname: str, from_ns: str, to_ns: str, mtu: int) -> None:
    """Move `ifname` from one namespace to another and set it up there with `mtu`."""
    src, dst = socket_in(from_ns), socket_in(to_ns)
    fd = os.open(f"/run/netns/{to_ns}", os.O_RDONLY)
    try:
        _setlink(src, ifname, 0, 0, _attr(IFLA_NET_NS_FD, struct.pack("=I", fd)), 1)
        _setlink(dst, ifname, IFF_UP, IFF_UP, _attr(IFLA_MTU, struct.pack("=I", mtu)), 2)
    finally:
        os.close(fd)
        src.close()
        dst.close()
