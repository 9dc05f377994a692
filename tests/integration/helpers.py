"""Driving a lab from tests: the real CLI, captures, crafted packets, flow dumps."""
from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def nvctl(lab, *args, check=True, timeout=120) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "controller.cli", "--state-dir", lab.dir, *args],
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


def in_ns(ns: str, *cmd, timeout=60, check=False) -> subprocess.CompletedProcess:
    p = subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} in {ns} failed: {p.stderr}{p.stdout}")
    return p


def ping_many(pairs, count=3, interval=0.2):
    """pairs: [(ns, dst_ip, label)] run at once -> {label: (received, transmitted)}."""
    procs = {label: subprocess.Popen(["ip", "netns", "exec", ns, "ping", "-n", "-c", str(count),
                                      "-i", str(interval), "-W", "2", ip],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for ns, ip, label in pairs}
    out = {}
    for label, p in procs.items():
        text, _ = p.communicate(timeout=60)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", text)
        out[label] = (int(m.group(2)), int(m.group(1))) if m else (0, count)
    return out


class Capture:
    """tcpdump in a namespace, written to a pcap; stop() returns scapy packets."""

    def __init__(self, ns: str, iface: str, bpf: str = "", inbound_only=False):
        fd, self.path = tempfile.mkstemp(suffix=".pcap")
        os.close(fd)
        # --immediate-mode: otherwise packets wait in the ring for a block timeout, and
        # SIGINT ends tcpdump without writing them ("N received by filter, 0 captured")
        cmd = ["ip", "netns", "exec", ns, "tcpdump", "--immediate-mode", "-i", iface, "-n", "-U", "-w", self.path]
        if inbound_only:
            cmd[8:8] = ["-Q", "in"]
        if bpf:
            cmd += bpf.split()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        said = ""
        while "listening on" not in said:
            ready, _, _ = select.select([self.proc.stderr], [], [], 10)
            line = self.proc.stderr.readline().decode() if ready else ""
            if not line:
                self.proc.kill()
                raise RuntimeError(f"tcpdump in {ns} did not start: {said}")
            said += line

    def stop(self):
        from scapy.all import rdpcap  # registers every link type and layer
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        try:
            return list(rdpcap(self.path))
        finally:
            os.unlink(self.path)


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
