"""The provider's router in the lab: BIRD 2 in the outside's namespace, peered with the
platform over BGP (`nvctl lab up --bgp`).

- BIRD runs in the external namespace on br-ext (OUTSIDE_IP, AS PROVIDER_ASN), the
  provider network's gateway. It installs what it learns from the platform (a /32 per
  router address and floating IP, next hop the address of the host that carries it) in
  that namespace's kernel table, so the outside really sends the traffic where BGP says.
- It announces the outside prefix OUTSIDE_PREFIX (its first address is on the
  namespace's loopback), from a static protocol named `outside` that a test can disable
  (`birdc disable outside`: withdrawn) and enable again.
- The controller's machine gets a leg on the provider network (`prov0`, CONTROLLER_
  PROVIDER_IP): the platform's speaker peers from there (AS PLATFORM_ASN), as a route
  server would. Its configuration is written to LAB_DIR/bgp.yaml (the controller's --bgp).
Everything is stopped by its PID file and removed with the lab.
"""
from __future__ import annotations

import os
import re
import subprocess
import time

PROVIDER_ASN = 65001
PLATFORM_ASN = 65000
OUTSIDE_PREFIX = "198.18.0.0/24"  # benchmarking range (RFC 2544): nothing real
OUTSIDE_PREFIX_HOST = "198.18.0.1"
CONTROLLER_PROVIDER_IP = "203.0.113.253"
FILES = ("bird.conf", "bird.ctl", "bird.pid", "bird.log", "bgp.yaml")


def config(outside_ip: str) -> str:
    return f"""# the provider's router (nvctl lab): written by scenarios/provider_router.py
log stderr all;
router id {outside_ip};
protocol device {{ scan time 1; }}
protocol direct {{ ipv4; interface "br-ext"; }}
# what the platform announces goes into this namespace's kernel table: the outside then
# sends a floating IP's packets to the host BGP named
protocol kernel {{ ipv4 {{ import none; export where source = RTS_BGP; }}; }}
protocol static outside {{ ipv4; route {OUTSIDE_PREFIX} blackhole; }}  # announced only (its host is on lo)
protocol bgp platform {{
  local {outside_ip} as {PROVIDER_ASN};
  neighbor {CONTROLLER_PROVIDER_IP} as {PLATFORM_ASN};
  hold time 9;
  connect retry time 1;
  error wait time 1, 5;
  graceful restart on;
  ipv4 {{ import all; export where proto = "outside"; }};
}}
"""


def platform_config(outside_ip: str, network: str) -> str:
    return (f"# the platform's BGP (the controller's --bgp), written by scenarios/provider_router.py\n"
            f"bgp:\n  {network}:\n    asn: {PLATFORM_ASN}\n    routerId: {CONTROLLER_PROVIDER_IP}\n"
            f"    peers:\n      - {{address: {outside_ip}, asn: {PROVIDER_ASN}}}\n")


def start(lab_dir: str, ext_ns: str, outside_ip: str) -> int:
    """BIRD in `ext_ns` (the outside prefix on a dummy interface first); its PID."""
    # (no dummy interfaces on every kernel: the address lives on the namespace's loopback)
    subprocess.run(["ip", "netns", "exec", ext_ns, "ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "netns", "exec", ext_ns, "ip", "addr", "add", f"{OUTSIDE_PREFIX_HOST}/32", "dev", "lo"],
                   check=True)
    conf = os.path.join(lab_dir, "bird.conf")
    with open(conf, "w") as f:
        f.write(config(outside_ip))
    log = open(os.path.join(lab_dir, "bird.log"), "ab")
    # -f: in the foreground as our child (its own session), so its PID is ours to stop
    proc = subprocess.Popen(["ip", "netns", "exec", ext_ns, "bird", "-f", "-c", conf, "-s", ctl(lab_dir),
                             "-P", os.path.join(lab_dir, "bird.pid")],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bird exited with {proc.returncode}; see {lab_dir}/bird.log")
        if os.path.exists(ctl(lab_dir)) and birdc(lab_dir, "show status", check=False).returncode == 0:
            return proc.pid
        time.sleep(0.1)
    raise RuntimeError(f"bird did not answer on {ctl(lab_dir)} in 10 s; see {lab_dir}/bird.log")


def ctl(lab_dir: str) -> str:
    return os.path.join(lab_dir, "bird.ctl")


def birdc(lab_dir: str, command: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["birdc", "-s", ctl(lab_dir), *command.split()], capture_output=True, text=True,
                          check=check, timeout=10)


ROUTE = re.compile(r"^(?P<prefix>\d+\.\d+\.\d+\.\d+/\d+)?\s+(?P<kind>unicast|unreachable|blackhole)\s+\[(?P<proto>\S+) ")
VIA = re.compile(r"^\s+via (?P<via>\d+\.\d+\.\d+\.\d+) on (?P<dev>\S+)")


def routes(lab_dir: str, protocol: str = "platform") -> dict[str, dict]:
    """{prefix: {"via": next hop}} of the routes BIRD holds from `protocol`
    (birdc show route protocol P)."""
    out = birdc(lab_dir, f"show route protocol {protocol}").stdout
    got: dict = {}
    cur = None
    for line in out.splitlines():
        m = ROUTE.match(line)
        if m:
            cur = m.group("prefix") or cur
            got.setdefault(cur, {"via": None})
            continue
        v = VIA.match(line)
        if v and cur is not None and got[cur]["via"] is None:
            got[cur]["via"] = v.group("via")
    return got


def graceful_restart_active(lab_dir: str, protocol: str = "platform") -> bool:
    """Is BIRD holding our routes for a peer that went away under graceful restart? (Its
    `show route` does not mark them stale; `show protocols all` says so.)"""
    return "Neighbor graceful restart active" in birdc(lab_dir, f"show protocols all {protocol}").stdout


def session_state(lab_dir: str, protocol: str = "platform") -> str:
    """BIRD's view of the session: e.g. 'Established', 'Active', 'Connect'."""
    out = birdc(lab_dir, f"show protocols {protocol}").stdout
    for line in out.splitlines():
        if line.startswith(protocol + " "):
            return line.split()[-1]
    return "?"
