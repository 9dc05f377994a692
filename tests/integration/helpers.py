"""Driving a lab from tests: the real CLI, captures, crafted packets, flow dumps."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

import pytest

from scenarios.netutil import Capture, in_ns, ping_many  # noqa: F401  (re-exported for tests)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def ctrl_c_works() -> None:
    """preexec_fn for a child a test stops with SIGINT, as Ctrl-C would: a run started in
    the background by a non-interactive shell (`bash .ci/run &`) ignores SIGINT, the
    child would inherit that, and Python would then not turn SIGINT into KeyboardInterrupt."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Measured:
    """Numbers a functional test (marked `measures`) takes in its lab run, for the `slo`
    test after it to assert: a missed number then fails the slo test, not the feature's."""

    def __init__(self):
        self._got = {}

    def record(self, key, value) -> None:
        self._got[key] = value

    def read(self, key):
        """The recorded value, or a skip: its functional test failed before measuring
        (its own failure says why) or was not selected (run `-m "slo or measures"`)."""
        if key not in self._got:
            pytest.skip(f"nothing measured for {key!r}: the functional test that measures it did not record it")
        return self._got[key]


def nvctl(lab, *args, check=True, timeout=120) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "controller.client.cli", "--state-dir", lab.dir, *args],
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if check and p.returncode != 0:
        raise AssertionError(f"nvctl {' '.join(args)} failed ({p.returncode}): {p.stderr}{p.stdout}")
    return p


def nvctl_json(lab, *args):
    return json.loads(nvctl(lab, *args, "--json").stdout)


def apply_yaml(lab, text: str, op="apply", check=True):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    try:
        return nvctl(lab, "tenant", op, "-f", f.name, check=check)
    finally:
        os.unlink(f.name)


SEND_SCRIPT = """
import sys, json
from scapy.all import Ether, IP, ICMP, ARP, Raw, sendp
spec = json.loads(sys.argv[1])
for p in spec:
    if p["kind"] == "icmp":
        pkt = Ether(src=p["src_mac"], dst=p["dst_mac"]) / IP(src=p["src_ip"], dst=p["dst_ip"]) / ICMP() / Raw(p["tag"].encode())
    else:
        pkt = Ether(src=p["src_mac"], dst="ff:ff:ff:ff:ff:ff") / ARP(op=p.get("op", 1), hwsrc=p["hwsrc"], psrc=p["psrc"], pdst=p["pdst"])
    sendp(pkt, iface="eth0", count=p.get("count", 3), inter=0.05, verbose=False)
"""


def send_frames(ns: str, frames: list[dict]) -> None:
    in_ns(ns, sys.executable, "-c", SEND_SCRIPT, json.dumps(frames), check=True, timeout=120)


def installed_cookies(lab, host: str) -> dict[int, str]:
    """cookie -> flow text, read from the host's OVS with ovs-ofctl (not via the controller)."""
    p = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", "br-int"], capture_output=True,
                       text=True, env=lab.ovs_env(host), timeout=30)
    if p.returncode != 0:
        raise AssertionError(f"dump-flows on {host}: {p.stderr}")
    out = {}
    for line in p.stdout.splitlines():
        m = re.search(r"cookie=(0x[0-9a-f]+)", line)
        if m:
            text = re.sub(r"(duration|n_packets|n_bytes|idle_age|hard_age)=[^,]*, ?", "", line.strip())
            out[int(m.group(1), 16)] = text
    return out


DOCKER = "/usr/bin/docker"  # Debian's docker.io client (another docker earlier on PATH may be newer)
DOCKERD = "/usr/sbin/dockerd"


class Dockerd:
    """Debian's dockerd with its own data-root, exec-root, pidfile and socket in `base`,
    iptables, forwarding, masquerading and docker0 off, so it touches nothing of this
    machine's; an image `nvt-busybox` imported from a busybox-static rootfs. close()
    removes its containers and networks and stops it by its PID."""

    def __init__(self, base: str, timeout: float = 60):
        import shutil
        import time
        if not (os.path.exists(DOCKERD) and os.path.exists(DOCKER)):
            raise AssertionError("dockerd and docker are needed: Debian's docker.io (make deps)")
        self.base = base
        self.sock = f"unix://{base}/docker.sock"
        cfg = {"iptables": False, "ip-forward": False, "ip-masq": False, "bridge": "none",
               "data-root": f"{base}/data", "exec-root": f"{base}/exec", "pidfile": f"{base}/docker.pid",
               "hosts": [self.sock], "storage-driver": "vfs"}
        with open(f"{base}/daemon.json", "w") as f:
            json.dump(cfg, f)
        self.log = open(f"{base}/dockerd.log", "w")
        self.proc = subprocess.Popen([DOCKERD, "--config-file", f"{base}/daemon.json"], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while self("version", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"dockerd did not start: {open(f'{base}/dockerd.log').read()[-2000:]}")
            time.sleep(0.3)
        rootfs = f"{base}/rootfs"
        os.makedirs(f"{rootfs}/bin")
        shutil.copy(shutil.which("busybox"), f"{rootfs}/bin/busybox")
        for tool in ("sh", "ping", "ip", "sleep", "cat", "nc"):
            os.symlink("busybox", f"{rootfs}/bin/{tool}")
        tar = subprocess.run(["tar", "-C", rootfs, "-c", "."], capture_output=True, check=True).stdout
        self("import", "-", "nvt-busybox", input=tar)

    def __call__(self, *args, check=True, timeout=120, input=None):
        p = subprocess.run([DOCKER, "-H", self.sock, *args], capture_output=True, timeout=timeout, input=input,
                           text=input is None)
        if check and p.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: {p.stderr}{p.stdout}")
        return p

    def close(self):
        import shutil
        if self.proc.poll() is None:
            ids = self("ps", "-aq", check=False).stdout.split()
            if ids:
                self("rm", "-f", *ids, check=False, timeout=300)
            nets = [n for n in self("network", "ls", "-q", "--filter", "type=custom", check=False).stdout.split()]
            if nets:
                self("network", "rm", *nets, check=False)
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        subprocess.run(["umount", "-R", f"{self.base}/exec"], capture_output=True)
        shutil.rmtree(f"{self.base}/data", ignore_errors=True)
