"""What real workloads expect of their network, with real clients on a 1500-byte underlay:
DHCP (isc-dhcp-client and busybox udhcpc), DNS, and path MTU discovery.

Two tenants share the hosts, and the port `a` of both has the same MAC: each DHCP client
must get its own tenant's address, and each name server must know only its own tenant.
"""
import re
import shutil
import subprocess

import pytest

from tests.integration.conftest import running_lab
from scenarios.netutil import Dhclient, iperf3
from tests.integration.helpers import apply_yaml, in_ns, nvctl_json

UNDERLAY_MTU = 1500
OVERLAY_MTU = UNDERLAY_MTU - 50
SAME_MAC = "02:aa:00:00:00:0a"


def tenant(name: str, a_ip: str) -> str:
    return f"""apiVersion: nvctl/v1
kind: Tenant
metadata: {{name: {name}}}
spec:
  switches:
    - {{name: front, cidr: 10.0.5.0/24}}
    - {{name: back, cidr: 10.0.6.0/24}}
    - {{name: flat, cidr: 10.0.7.0/24}}
  routers:
    - name: r1
      ports: [{{switch: front, ip: 10.0.5.1}}, {{switch: back, ip: 10.0.6.1}}]
  ports:
    - {{name: a, switch: front, ip: {a_ip}, host: hv1, mac: "{SAME_MAC}"}}
    - {{name: b, switch: front, ip: 10.0.5.12, host: hv2}}
    - {{name: c, switch: back, ip: 10.0.6.13, host: hv2}}
    - {{name: d, switch: flat, ip: 10.0.7.14, host: hv1}}
    - {{name: e, switch: flat, ip: 10.0.7.15, host: hv2}}
"""


@pytest.fixture(scope="module")
def lab():
    yield from running_lab(hosts=2, underlay_mtu=UNDERLAY_MTU)


@pytest.fixture(scope="module")
def tenants(lab):
    apply_yaml(lab, tenant("teal", "10.0.5.11"), op="create")
    apply_yaml(lab, tenant("plum", "10.0.5.21"), op="create")
    return {n: {p["name"]: p for p in nvctl_json(lab, "tenant", "show", n)["ports"]} for n in ("teal", "plum")}


def addresses(ns: str) -> dict:
    """eth0's IPv4 address/prefix, default gateway and MTU, as the kernel has them."""
    addr = in_ns(ns, "ip", "-4", "-o", "addr", "show", "dev", "eth0", check=True).stdout
    route = in_ns(ns, "ip", "-4", "route", "show", "default", check=True).stdout
    link = in_ns(ns, "ip", "-o", "link", "show", "eth0", check=True).stdout
    m = re.search(r"inet (\S+)", addr)
    g = re.search(r"default via (\S+)", route)
    return {"addr": m.group(1) if m else None, "gateway": g.group(1) if g else None,
            "mtu": int(re.search(r" mtu (\d+) ", link).group(1))}


def forget(ns: str, mtu: int = 1500) -> None:
    """The workload as a fresh VM sees it: no address, no route, the default MTU."""
    in_ns(ns, "ip", "addr", "flush", "dev", "eth0", check=True)
    in_ns(ns, "ip", "link", "set", "eth0", "mtu", str(mtu), check=True)
    assert addresses(ns)["addr"] is None


def restore(ns: str, p: dict, gateway: str | None) -> None:
    in_ns(ns, "ip", "addr", "flush", "dev", "eth0")
    in_ns(ns, "ip", "addr", "add", p["ip"] + "/24", "dev", "eth0", check=True)
    in_ns(ns, "ip", "link", "set", "eth0", "mtu", str(OVERLAY_MTU), check=True)
    if gateway:
        in_ns(ns, "ip", "route", "replace", "default", "via", gateway)


def dhclient(ns: str, tmp_path, tag: str) -> dict:
    """isc-dhcp-client once, with a private lease file, pid file and script (nothing
    outside the namespace changes); {ok, lease: what the script was given, log}."""
    return Dhclient(ns, "eth0", str(tmp_path / tag)).wait()


UDHCPC_SCRIPT = """#!/bin/sh
[ "$1" = bound ] || [ "$1" = renew ] || exit 0
ip addr flush dev "$interface"
ip addr add "$ip/$mask" dev "$interface"
[ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
for r in $router; do ip route replace default via "$r"; break; done
echo "$dns $domain" > "$(dirname "$0")/udhcpc-$ip"
"""


def test_dhclient_gets_the_ports_address_gateway_and_mtu(lab, tenants, tmp_path):
    p = tenants["teal"]["b"]
    forget(p["namespace"])
    try:
        run = dhclient(p["namespace"], tmp_path, "b")
        got = addresses(p["namespace"])
        assert got == {"addr": "10.0.5.12/24", "gateway": "10.0.5.1", "mtu": OVERLAY_MTU}, run["log"]
        assert (run["lease"]["dns"], run["lease"]["domain"]) == ("10.0.5.1", "teal.nvctl")
        assert "DHCPACK" in run["log"], run["log"]
    finally:
        restore(p["namespace"], p, "10.0.5.1")


def test_udhcpc_on_a_switch_without_router_gets_the_service_address_as_dns(lab, tenants, tmp_path):
    if shutil.which("busybox") is None:
        pytest.fail("busybox is not installed (make deps)")
    p = tenants["teal"]["d"]
    script = tmp_path / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    forget(p["namespace"])
    try:
        run = in_ns(p["namespace"], "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "5",
                    "-O", "mtu", "-s", str(script), timeout=60)
        got = addresses(p["namespace"])
        assert got == {"addr": "10.0.7.14/24", "gateway": None, "mtu": OVERLAY_MTU}, run.stdout + run.stderr
        # the switch has no router: DHCP and DNS answer at its last address
        assert (tmp_path / "udhcpc-10.0.7.14").read_text().split() == ["10.0.7.254", "teal.nvctl"]
    finally:
        restore(p["namespace"], p, None)


def test_the_same_mac_in_another_tenant_gets_that_tenants_address(lab, tenants, tmp_path):
    results = {}
    for name in ("teal", "plum"):
        p = tenants[name]["a"]
        assert p["mac"] == SAME_MAC
        forget(p["namespace"])
        try:
            dhclient(p["namespace"], tmp_path, name)
            results[name] = addresses(p["namespace"])["addr"]
        finally:
            restore(p["namespace"], p, "10.0.5.1")
    assert results == {"teal": "10.0.5.11/24", "plum": "10.0.5.21/24"}


def test_a_workloads_own_dhcp_server_is_not_heard(lab, tenants, tmp_path):
    """A rogue DHCP server on teal/e (busybox udhcpd offering 10.0.7.99) loses to the
    platform: the client on teal/d still gets its own address."""
    rogue, victim = tenants["teal"]["e"], tenants["teal"]["d"]
    conf = tmp_path / "udhcpd.conf"
    conf.write_text(f"start 10.0.7.90\nend 10.0.7.99\ninterface eth0\nlease_file {tmp_path}/udhcpd.leases\n"
                    f"pidfile {tmp_path}/udhcpd.pid\nopt router 10.0.7.15\n")
    (tmp_path / "udhcpd.leases").write_text("")
    srv = subprocess.Popen(["ip", "netns", "exec", rogue["namespace"], "busybox", "udhcpd", "-f", str(conf)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    forget(victim["namespace"])
    try:
        dhclient(victim["namespace"], tmp_path, "victim")
        assert addresses(victim["namespace"])["addr"] == "10.0.7.14/24"
    finally:
        srv.terminate()
        srv.wait(timeout=10)
        restore(victim["namespace"], victim, None)


def dig(ns: str, server: str, name: str, qtype: str = "A") -> tuple[str, list[str]]:
    out = in_ns(ns, "dig", "+time=2", "+tries=2", f"@{server}", name, qtype, check=True).stdout
    status = re.search(r"status: (\w+)", out).group(1)
    answers = re.findall(rf"^\S+\s+\d+\s+IN\s+{qtype}\s+(\S+)$", out, re.M)
    return status, answers


def test_names_resolve_inside_the_tenant_only(lab, tenants):
    teal, plum = tenants["teal"], tenants["plum"]
    ns = teal["b"]["namespace"]
    assert dig(ns, "10.0.5.1", "c.teal.nvctl") == ("NOERROR", ["10.0.6.13"])
    assert dig(ns, "10.0.5.1", "A.Teal.nvctl") == ("NOERROR", ["10.0.5.11"])  # names are case-blind
    assert dig(ns, "10.0.5.1", "nobody.teal.nvctl") == ("NXDOMAIN", [])
    assert dig(ns, "10.0.5.1", "c.plum.nvctl") == ("NXDOMAIN", [])  # the twin's names do not exist here
    assert dig(ns, "10.0.5.1", "example.com")[0] == "REFUSED"
    # the twin asks its own server the same question and gets its own answer
    assert dig(plum["b"]["namespace"], "10.0.5.1", "a.plum.nvctl") == ("NOERROR", ["10.0.5.21"])
    assert dig(plum["b"]["namespace"], "10.0.5.1", "a.teal.nvctl") == ("NXDOMAIN", [])
    # a switch without a router answers at its service address
    assert dig(teal["d"]["namespace"], "10.0.7.254", "e.teal.nvctl") == ("NOERROR", ["10.0.7.15"])


@pytest.mark.parametrize("dst,via", [("e", "switched"), ("c", "routed")])
def test_a_too_big_packet_gets_frag_needed_with_the_switch_mtu(lab, tenants, dst, via):
    """A workload left at MTU 1500 on a 1500-byte underlay: `ping -M do -s 1472` is told
    "frag needed (mtu 1450)" by the platform, and the next try with the MTU it learnt
    gets through (path MTU discovery)."""
    src = tenants["teal"]["d" if via == "switched" else "a"]
    dst = tenants["teal"][dst]
    assert src["host"] != dst["host"]
    ns = src["namespace"]
    in_ns(ns, "ip", "link", "set", "eth0", "mtu", "1500", check=True)
    try:
        big = in_ns(ns, "ping", "-c", "2", "-W", "2", "-M", "do", "-s", "1472", dst["ip"])
        assert f"mtu = {OVERLAY_MTU}" in big.stdout + big.stderr, big.stdout + big.stderr
        route = in_ns(ns, "ip", "route", "get", dst["ip"], check=True).stdout
        assert f"mtu {OVERLAY_MTU}" in route, route  # the kernel learnt the path MTU
        fit = in_ns(ns, "ping", "-c", "2", "-W", "2", "-M", "do", "-s", str(OVERLAY_MTU - 28), dst["ip"])
        assert "2 received" in fit.stdout, fit.stdout + fit.stderr
    finally:
        in_ns(ns, "ip", "route", "flush", "cache")
        in_ns(ns, "ip", "link", "set", "eth0", "mtu", str(OVERLAY_MTU), check=True)


def test_tcp_with_default_settings_moves_data_across_hosts(lab, tenants):
    """iperf3 with default MSS, between hosts: at the MTU DHCP hands out, and from a
    workload left at 1500 (path MTU discovery, through the router)."""
    teal = tenants["teal"]
    at_mtu = iperf3(teal["d"]["namespace"], teal["e"]["namespace"], teal["e"]["ip"], seconds=2)
    ns = teal["a"]["namespace"]
    in_ns(ns, "ip", "link", "set", "eth0", "mtu", "1500", check=True)
    try:
        pmtud = iperf3(ns, teal["c"]["namespace"], teal["c"]["ip"], seconds=2, port=5202)
    finally:
        in_ns(ns, "ip", "route", "flush", "cache")
        in_ns(ns, "ip", "link", "set", "eth0", "mtu", str(OVERLAY_MTU), check=True)
    assert at_mtu["mbps"] > 10, at_mtu
    assert pmtud["mbps"] > 10, pmtud
