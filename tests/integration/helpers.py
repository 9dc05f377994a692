"""Driving a lab from tests: the real CLI, captures, crafted packets, flow dumps."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

from scenarios.netutil import Capture, in_ns, ping_many  # noqa: F401  (re-exported for tests)

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
