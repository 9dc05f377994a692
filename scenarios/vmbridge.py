"""A plain two-host L2 testbed for QEMU live migration without the platform.

No controller, no OVS, no tunnels: each "host" is a network namespace with a Linux
bridge br0 holding the guest's tap `tap0` and one end of a veth pair `d0` that joins the
two bridges into one L2 segment (A's br0 at .1, B's at .2, the guest at .10). A second
veth pair `m0` carries the migration stream (A_MIG - B_MIG). The guest (tep/vm.py) gets
its address from the agent (there is no DHCP server). A destination QEMU waits with
`incoming=f"tcp:{B_MIG}:{MIG_PORT}"` on B (or A_MIG on A, for the way back).

What it is for: the same QEMU migration as the platform's, on the simplest network
there is, so that what a migration costs the guest's traffic by QEMU alone (its pause,
its announcements, a learning bridge) can be told from what the network adds. Used by
tests/integration/test_vm_qemu.py and by the `bridge` baseline of bench/vm.py.

    h = Hosts()
    try:
        h.setup()
        g = boot(h, "g0")            # on A, answering at GUEST_IP
        ...
    finally:
        h.close()                   # guests (by their pid files), helpers, namespaces, files

Root, qemu-system-x86_64, a kernel in /boot and busybox-static (`missing()` says which
is not there).
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile

from tep import vm

MAC = "02:00:00:77:00:0a"
GUEST_IP, A_IP, B_IP = "192.168.77.10", "192.168.77.1", "192.168.77.2"
A_MIG, B_MIG = "10.77.0.1", "10.77.0.2"
MIG_PORT = 4444
MIG_URI = f"tcp:{B_MIG}:{MIG_PORT}"  # a destination on B


def missing() -> str | None:
    """Why the testbed cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("qemu-system-x86_64") is None:
        return "needs qemu-system-x86_64 (make deps)"
    if not glob.glob("/boot/vmlinuz-*"):
        return "needs a kernel in /boot (make deps: linux-image-amd64)"
    if not os.path.exists(vm.BUSYBOX):
        return "needs busybox-static"
    return None


def sh(*cmd: str, ns: str | None = None, check: bool = True) -> str:
    """A command (in namespace `ns`), its stdout; AssertionError if it fails and `check`."""
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    p = subprocess.run(full, capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(full)}: {p.stderr.strip()}")
    return p.stdout


class Hosts:
    """Two namespaces A and B as described above, with a tap `tap0` on each br0; the
    guests, helper processes and files made through it, all removed by close()."""

    def __init__(self, prefix: str = "vmq"):
        prefix = f"{prefix}-{os.getpid()}-"
        self.a, self.b = prefix + "a", prefix + "b"
        self.dir = tempfile.mkdtemp(prefix="vmq-")
        self.guests: list[vm.Guest] = []
        self.procs: list[subprocess.Popen] = []

    def setup(self) -> None:
        for ns in (self.a, self.b):
            sh("ip", "netns", "add", ns)
        for ns, br_ip in ((self.a, A_IP), (self.b, B_IP)):
            sh("ip", "link", "set", "lo", "up", ns=ns)
            sh("ip", "link", "add", "br0", "type", "bridge", "forward_delay", "0", ns=ns)
            sh("ip", "addr", "add", f"{br_ip}/24", "dev", "br0", ns=ns)
            sh("ip", "link", "set", "br0", "up", ns=ns)
        sh("ip", "-n", self.a, "link", "add", "d0", "type", "veth", "peer", "name", "d0", "netns", self.b)
        sh("ip", "-n", self.a, "link", "add", "m0", "type", "veth", "peer", "name", "m0", "netns", self.b)
        for ns, mig_ip in ((self.a, A_MIG), (self.b, B_MIG)):
            sh("ip", "link", "set", "d0", "master", "br0", "up", ns=ns)
            sh("ip", "addr", "add", f"{mig_ip}/24", "dev", "m0", ns=ns)
            sh("ip", "link", "set", "m0", "up", ns=ns)
            vm.make_tap(ns, "tap0")
            sh("ip", "link", "set", "tap0", "master", "br0", ns=ns)

    def uri(self, ns: str) -> str:
        """The -incoming URI of a destination QEMU in namespace `ns` (A or B)."""
        return f"tcp:{A_MIG if ns == self.a else B_MIG}:{MIG_PORT}"

    def guest(self, name: str) -> vm.Guest:
        g = vm.Guest(self.dir, name)
        self.guests.append(g)
        return g

    def popen(self, ns: str, *cmd: str, **kw) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kw)  # `ip netns exec` execs: p.pid is cmd's
        self.procs.append(p)
        return p

    def close(self) -> None:
        """Everything away, each step whatever became of the others."""
        for p in self.procs:
            try:
                if p.poll() is None:
                    p.kill()  # by its own pid
                p.wait(5)
            except Exception as e:
                print(f"cleanup: helper {p.pid}: {e!r}")
        for g in self.guests:
            try:
                g.stop()  # its QEMU by the pid in its pid file
            except Exception as e:
                print(f"cleanup: guest {g.name}: {e!r}")
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def boot(h: Hosts, name: str) -> vm.Guest:
    """A guest on A with the static address, up and answering."""
    g = h.guest(name)
    g.start(h.a, "tap0", MAC)
    g.wait_console("nvctl guest up", 90)
    # no DHCP server here: stop udhcpc (so no deconfig can flush what follows), then
    # the address by hand
    rc, out = g.run(f"kill $(pidof udhcpc); sleep 0.3; ip addr add {GUEST_IP}/24 dev eth0 && ip -o -4 addr show eth0")
    if not (rc == 0 and f"{GUEST_IP}/24" in out):
        raise AssertionError(f"{name}: no {GUEST_IP}/24 on eth0: {out}")
    state = g.state()
    if state != "running":
        raise AssertionError(f"{name}: {state}, not running")
    return g
