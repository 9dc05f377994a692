"""The BGP speaker against BIRD 2, each in its own network namespace joined by a veth:
BIRD takes our /32s with the third-party next hops we give, keeps them across our graceful
restart until our End-of-RIB, and we learn (and lose) BIRD's static route."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.integration.helpers import ROOT
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

BIRD_AS, OUR_AS = 65001, 65000
BIRD_IP, OUR_IP = "10.255.0.1", "10.255.0.2"
HOP1, HOP2 = "10.255.0.9", "10.255.0.10"  # on the veth's subnet, neither BIRD's nor ours

BIRD_CONF = """router id {bird_ip};
protocol device {{ scan time 1; }}
protocol direct {{ ipv4; interface "{veth}"; }}
protocol static st {{ ipv4; route 198.18.0.0/24 blackhole; }}
protocol bgp ctl {{
  local {bird_ip} as {bird_as};
  neighbor {our_ip} as {our_as};
  graceful restart on;
  hold time 9;
  connect retry time 1;
  ipv4 {{ import all; export where proto = "st"; }};
}}
"""

# the speaker in the controller's namespace, driven by one JSON command a line on stdin
CHILD = r"""
import dataclasses, json, logging, sys
from controller.bgp.speaker import PeerConfig, Speaker
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
cfg = json.loads(sys.argv[1])
sp = Speaker(cfg["asn"], cfg["router_id"], [PeerConfig(cfg["peer"], cfg["peer_asn"])], connect_retry=0.2)
sp.announce(cfg["routes"])
sp.start()
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "announce":
        out = sp.announce(cmd["routes"])
    elif cmd["op"] == "learned":
        out = [dataclasses.asdict(r) for r in sp.learned()]
    elif cmd["op"] == "status":
        out = sp.status()
    else:
        out = sp.stop(graceful=cmd["graceful"])
    print(json.dumps(out), flush=True)
    if cmd["op"] == "stop":
        break
"""


def run(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def wait_until(fn, timeout=15.0, what="condition"):
    return wait_for(what, fn, timeout)


class Net:
    """Two namespaces and a veth, BIRD in one; everything removed by close()."""

    def __init__(self, tmp):
        tag = uuid.uuid4().hex[:4]
        self.bird_ns, self.ctl_ns = f"nvbgpt-{tag}-bird", f"nvbgpt-{tag}-ctl"
        self.veth = f"nvbgpt{tag}b"
        self.sock, self.pidfile = os.path.join(tmp, "bird.ctl"), os.path.join(tmp, "bird.pid")
        self.conf = os.path.join(tmp, "bird.conf")

    def up(self):
        for ns in (self.bird_ns, self.ctl_ns):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "link", "add", self.veth, "netns", self.bird_ns, "type", "veth",
            "peer", "name", self.veth[:-1] + "c", "netns", self.ctl_ns)
        for ns, dev, ip in ((self.bird_ns, self.veth, BIRD_IP), (self.ctl_ns, self.veth[:-1] + "c", OUR_IP)):
            run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
        with open(self.conf, "w") as f:
            f.write(BIRD_CONF.format(bird_ip=BIRD_IP, our_ip=OUR_IP, bird_as=BIRD_AS, our_as=OUR_AS, veth=self.veth))
        run("ip", "netns", "exec", self.bird_ns, "bird", "-c", self.conf, "-s", self.sock, "-P", self.pidfile)

    def close(self):
        try:
            with open(self.pidfile) as f:
                os.kill(int(f.read()), signal.SIGTERM)
        except (OSError, ValueError):
            pass
        for ns in (self.bird_ns, self.ctl_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def birdc(self, *args):
        return run("birdc", "-s", self.sock, *args)

    def gr_active(self) -> bool:
        """BIRD keeps our routes as stale (it does not mark them in `show route`)."""
        return "Neighbor graceful restart active" in self.birdc("show", "protocols", "all", "ctl")

    def routes(self):
        """BIRD's BGP routes from us: prefix -> next hop."""
        out, routes, prefix = self.birdc("show", "route", "all", "protocol", "ctl"), {}, None
        for line in out.splitlines():
            m = re.match(r"^(\d+\.\d+\.\d+\.\d+/\d+)\s+unicast", line)
            if m:
                prefix = m.group(1)
            elif prefix and line.strip().startswith("BGP.next_hop:"):
                routes[prefix] = line.split(":", 1)[1].strip()
        return routes


class Child:
    """A Speaker in the controller's namespace (a process: a namespace is per thread, and
    the speaker's threads must all be in it)."""

    def __init__(self, net, routes):
        cfg = {"asn": OUR_AS, "router_id": OUR_IP, "peer": BIRD_IP, "peer_asn": BIRD_AS, "routes": routes}
        self.proc = subprocess.Popen(["ip", "netns", "exec", net.ctl_ns, sys.executable, "-c", CHILD,
                                      json.dumps(cfg)], cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def call(self, op, **kw):
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self, graceful):
        t0 = time.monotonic()
        self.call("stop", graceful=graceful)
        took = time.monotonic() - t0
        self.proc.wait(5)
        return took

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()  # this process only, by its handle
            self.proc.wait(5)


@pytest.fixture
def net(tmp_path):
    if shutil.which("bird") is None or shutil.which("birdc") is None:
        pytest.skip("needs BIRD 2 (bird, birdc)")
    n = Net(str(tmp_path))
    children = []
    n.child = lambda routes: children.append(Child(n, routes)) or children[-1]
    try:
        n.up()
        wait_until(lambda: os.path.exists(n.sock), what="BIRD's socket")
        yield n
    finally:
        for c in children:
            c.kill()
        n.close()


def test_bird_takes_our_routes_with_their_next_hops_and_withdrawals(net):
    sp = net.child({"203.0.113.1/32": HOP1, "203.0.113.2/32": HOP2})
    wait_until(lambda: len(net.routes()) == 2, what="both routes at BIRD")
    assert net.routes() == {"203.0.113.1/32": HOP1, "203.0.113.2/32": HOP2}
    assert "BGP.as_path: 65000\n" in net.birdc("show", "route", "all", "203.0.113.1/32")
    sp.call("announce", routes={"203.0.113.1/32": HOP2, "203.0.113.3/32": HOP1})
    wait_until(lambda: net.routes() == {"203.0.113.1/32": HOP2, "203.0.113.3/32": HOP1},
               what="the new set at BIRD")
    assert sp.call("status")[0]["sent"] == 2


def test_bird_keeps_our_routes_across_a_graceful_restart_until_end_of_rib(net):
    first = net.child({"203.0.113.1/32": HOP1, "203.0.113.2/32": HOP1})
    wait_until(lambda: len(net.routes()) == 2, what="both routes at BIRD")
    assert wait_until(lambda: first.call("status")[0]["graceful_restart"], what="BIRD's GR capability")
    assert first.stop(graceful=True) < 1.2
    wait_until(net.gr_active, what="BIRD in graceful restart for us")
    time.sleep(1)  # well after BIRD noticed the closed connection: the routes must still be there
    assert net.routes() == {"203.0.113.1/32": HOP1, "203.0.113.2/32": HOP1} and net.gr_active()
    second = net.child({"203.0.113.1/32": HOP2})
    wait_until(lambda: net.routes() == {"203.0.113.1/32": HOP2} and not net.gr_active(),
               what="only the re-announced route, after our End-of-RIB ended BIRD's graceful restart")
    second.stop(graceful=False)  # a Cease: BIRD drops everything at once
    wait_until(lambda: not net.routes(), timeout=3, what="routes withdrawn")


def test_we_learn_birds_route_and_lose_it_when_bird_withdraws_it(net):
    sp = net.child({})

    def learned():
        return [(r["prefix"], r["next_hop"], r["peer"], tuple(r["as_path"]), r["stale"]) for r in sp.call("learned")]
    wait_until(learned, what="a learned route")
    assert learned() == [("198.18.0.0/24", BIRD_IP, BIRD_IP, (BIRD_AS,), False)]
    net.birdc("disable", "st")
    wait_until(lambda: not learned(), what="the route withdrawn")
    net.birdc("enable", "st")
    wait_until(learned, what="the route back")
    assert sp.stop(graceful=False) < 1.2
