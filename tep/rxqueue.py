"""The receive queue of a userspace-datapath switch's ports.

ovs-vswitchd (netdev datapath, no DPDK) reads every Linux port (veths here) through an
AF_PACKET socket, and a socket holds what its receive buffer allows: the default
net.core.rmem_default, 212992 bytes, at 2304 bytes of truesize per frame up to 1.6 KB,
is 92 frames. Any burst longer than that between two polls of the switch's thread is
dropped in the kernel (`ss -0 -m`: skmem d<N>), whatever the frames carry: e.g. one
128 KB write of TCP is 94 segments at MSS 1398 (1500-byte underlay) and 88 at 1498
(1600). A NIC's ring holds thousands of frames, so this queue is a lab artifact.

OVS sets no SO_RCVBUF of its own, and on this kernel rmem_default is not per network
namespace, so the lab deepens the queues of its own switches only: it takes a copy of
each packet socket of one ovs-vswitchd (pidfd_getfd(2), root) and sets SO_RCVBUFFORCE.
"""
from __future__ import annotations

import ctypes
import os
import socket

RX_QUEUE_BYTES = 4 << 20  # ~1800 frames of up to 1.6 KB: a NIC ring's order of magnitude
SO_RCVBUFFORCE = 33
_SYS_PIDFD_GETFD = 438  # x86_64, arm64 and every architecture with the generic table
_libc = ctypes.CDLL(None, use_errno=True)


def _pidfd_getfd(pidfd: int, fd: int) -> int:
    r = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
    if r < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return r


def deepen(pid: int, nbytes: int = RX_QUEUE_BYTES) -> int:
    """Give every AF_PACKET socket of process `pid` a receive buffer of at least
    `nbytes`; returns how many were changed. Sockets it opens later (new ports) need
    another call. Best effort: a process that is gone changes nothing."""
    changed = 0
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return 0
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
                dup = _pidfd_getfd(pidfd, int(name))
            except OSError:
                continue
            s = socket.socket(fileno=dup)
            try:
                if s.family == socket.AF_PACKET and s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < nbytes:
                    # the kernel doubles what it is given (bookkeeping overhead)
                    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, nbytes // 2)
                    changed += 1
            except OSError:
                pass
            finally:
                s.close()
    finally:
        os.close(pidfd)
    return changed


def deepen_instance(rundir: str, nbytes: int = RX_QUEUE_BYTES) -> int:
    """deepen() the ovs-vswitchd whose pid file is in `rundir` (one lab host).
    NVCTL_LAB_RXQUEUE=0 leaves the kernel's default (to measure what it changes)."""
    if os.environ.get("NVCTL_LAB_RXQUEUE") == "0":
        return 0
    try:
        with open(f"{rundir}/ovs-vswitchd.pid") as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return 0
    return deepen(pid, nbytes)
