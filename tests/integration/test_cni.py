"""Containers from podman (CNI backend, runc) on tenant switches through `nvctl-cni`:
they reach the tenant's lab workloads across hosts and not its twin's (same CAs), the
results are what the spec asks for, CHECK, STATUS and GC work when called as libcni
calls them, and containers that come and go leave no port, veth or namespace behind."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import running_lab
from tests.integration.helpers import ROOT, Capture, apply_yaml, in_ns, nvctl_json
from topology.builder import tenant_yaml

PLUGIN = os.path.join(os.path.dirname(sys.executable), "nvctl-cni")


def tenant(name):
    return tenant_yaml(name, "web", [("vm1", "10.0.0.11", "hv1")])


@pytest.fixture(scope="module")
def lab():
    yield from running_lab(hosts=2)


class Podman:
    """podman with its own storage, CNI configuration and plugin directory, all in one
    temporary directory; every container it starts is removed at close()."""

    def __init__(self, base, lab, host="hv2"):
        if shutil.which("podman") is None or shutil.which("runc") is None:
            pytest.fail("podman and runc are needed (make deps)")
        self.base, self.names = str(base), []
        for d in ("net", "plugins", "rootfs/bin", "storage", "run"):
            os.makedirs(os.path.join(self.base, d), exist_ok=True)
        os.symlink(PLUGIN, os.path.join(self.base, "plugins", "nvctl-cni"))
        busybox = shutil.which("busybox")
        shutil.copy(busybox, os.path.join(self.base, "rootfs/bin/busybox"))
        for tool in ("sh", "ping", "ip", "sleep", "cat"):
            os.symlink("busybox", os.path.join(self.base, "rootfs/bin", tool))
        with open(os.path.join(self.base, "containers.conf"), "w") as f:
            f.write('[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n'
                    f'[network]\nnetwork_backend = "cni"\ncni_plugin_dirs = ["{self.base}/plugins", "/usr/lib/cni"]\n'
                    f'network_config_dir = "{self.base}/net"\n[engine]\nruntime = "runc"\n')
        for t in ("blue", "red"):
            with open(os.path.join(self.base, "net", f"{t}-web.conflist"), "w") as f:
                json.dump({"cniVersion": "1.0.0", "name": f"{t}-web", "plugins": [
                    {"type": "nvctl-cni", "tenant": t, "switch": "web", "host": host, "stateDir": lab.dir}]}, f)

    def __call__(self, *args, check=True, timeout=60):
        env = {**os.environ, "CONTAINERS_CONF": os.path.join(self.base, "containers.conf")}
        p = subprocess.run(["podman", "--root", f"{self.base}/storage", "--runroot", f"{self.base}/run", *args],
                           capture_output=True, text=True, env=env, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {p.stderr}{p.stdout}")
        return p

    def run(self, name, network, *extra):
        self.names.append(name)
        self("run", "-d", "--name", name, "--network", network, *extra, "--rootfs", f"{self.base}/rootfs",
             "/bin/sleep", "600")
        return name

    def netns(self, name):
        return self("inspect", "--format", "{{.NetworkSettings.SandboxKey}}", name).stdout.strip()

    def close(self):
        for n in self.names:
            self("rm", "-f", "-t", "0", n, check=False)


@pytest.fixture(scope="module")
def podman(lab, tmp_path_factory):
    apply_yaml(lab, tenant("blue"), op="create")
    apply_yaml(lab, tenant("red"), op="create")
    pm = Podman(tmp_path_factory.mktemp("podman"), lab)
    try:
        yield pm
    finally:
        pm.close()


def container_ports(lab, t):
    return {p["name"]: p for p in nvctl_json(lab, "tenant", "show", t)["ports"] if p["name"] != "vm1"}


def test_a_podman_container_joins_the_tenant_and_reaches_its_workload_across_hosts(lab, podman):
    podman.run("cblue", "blue-web")
    podman.run("cred", "red-web")  # the twin: the same CIDR, so the same address
    blue, red = container_ports(lab, "blue"), container_ports(lab, "red")
    (b,), (r,) = blue.values(), red.values()
    assert b["ip"] == r["ip"] == "10.0.0.1" and b["host"] == "hv2" and b["up"]
    addr = podman("exec", "cblue", "ip", "-o", "-4", "addr", "show", "eth0").stdout
    assert "inet 10.0.0.1/24" in addr, addr
    mtu = podman("exec", "cblue", "cat", "/sys/class/net/eth0/mtu").stdout.strip()
    assert mtu == "1450"
    red_vm1 = {p["name"]: p for p in nvctl_json(lab, "tenant", "show", "red")["ports"]}["vm1"]
    # red's vm1 has the same CA and never hears blue's container
    assert pings_overheard(podman, "cblue", "10.0.0.11", red_vm1["namespace"], probe=777) == 0


def pings_overheard(podman, container: str, dst: str, listener_ns: str, probe: int) -> int:
    """`container` pings `dst` three times, every one answered; how many of those probes a
    capture in `listener_ns` saw. busybox ping has no payload pattern: the probes are
    tagged by their size (`probe` bytes of payload) instead."""
    cap = Capture(listener_ns, "eth0", f"icmp and ip[2:2] == {probe + 28}")
    try:
        got = podman("exec", container, "ping", "-c", "3", "-W", "2", "-s", str(probe), dst, check=False)
        assert " 0% packet loss" in got.stdout, got.stdout + got.stderr
        time.sleep(0.3)
    finally:
        heard = cap.stop()
    return heard


def test_the_ip_a_runtime_asks_for_is_honoured(lab, podman):
    podman.run("cfixed", "blue-web", "--ip", "10.0.0.50")
    assert podman("exec", "cfixed", "ip", "-o", "-4", "addr", "show", "eth0").stdout.count("10.0.0.50/24") == 1
    podman("rm", "-f", "-t", "0", "cfixed")
    assert "10.0.0.50" not in [p["ip"] for p in container_ports(lab, "blue").values()]


def plugin(command, cfg, **env):
    e = {**os.environ, "CNI_COMMAND": command, "CNI_PATH": "/usr/lib/cni", **env}
    return subprocess.run([PLUGIN], input=json.dumps(cfg), capture_output=True, text=True, env=e, cwd=ROOT,
                          timeout=60)


def test_check_status_and_gc_as_libcni_calls_them(lab, podman):
    cfg = {"cniVersion": "1.1.0", "name": "blue-web", "type": "nvctl-cni", "tenant": "blue", "switch": "web",
           "host": "hv2", "stateDir": lab.dir}
    cid = podman("inspect", "--format", "{{.Id}}", "cblue").stdout.strip()
    # podman passes the container's name as K8S_POD_NAME: the port is named after it
    env = dict(CNI_CONTAINERID=cid, CNI_NETNS=podman.netns("cblue"), CNI_IFNAME="eth0",
               CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=cblue")
    assert plugin("CHECK", cfg, **env).returncode == 0
    inside = ["nsenter", f"--net={env['CNI_NETNS']}", "ip", "link"]  # the container has no CAP_NET_ADMIN
    subprocess.run(inside + ["set", "eth0", "mtu", "1400"], check=True)
    bad = plugin("CHECK", cfg, **env)
    assert bad.returncode == 1 and json.loads(bad.stdout)["code"] == 100, bad.stdout
    subprocess.run(inside + ["set", "eth0", "mtu", "1450"], check=True)
    assert plugin("STATUS", cfg).returncode == 0
    down = plugin("STATUS", {**cfg, "stateDir": "/nonexistent"})
    assert down.returncode == 1 and json.loads(down.stdout)["code"] == 50
    # GC with cblue as the only valid attachment: an orphan port (its container gone
    # without DEL) goes, cblue's stays
    orphan = {**env, "CNI_CONTAINERID": "deadbeef" * 8, "CNI_ARGS": ""}
    add = plugin("ADD", cfg, **{**orphan, "CNI_IFNAME": "eth9"})
    assert add.returncode == 0, add.stdout
    assert len(container_ports(lab, "blue")) == 2
    subprocess.run(inside + ["del", "eth9"], check=True)
    gc = plugin("GC", {**cfg, "cni.dev/valid-attachments": [{"containerID": cid, "ifname": "eth0"}]})
    assert gc.returncode == 0, gc.stdout
    assert list(container_ports(lab, "blue")) == ["cblue"]


def test_containers_that_come_and_go_leave_nothing_behind(lab, podman):
    before_ns = set(os.listdir("/run/netns"))
    hv2 = f"{lab.prefix}hv2"
    before_links = in_ns(hv2, "ip", "-o", "link", check=True).stdout.count("\n")
    before_ovs = ovs_ports(lab)
    names = [podman.run(f"burst{i}", "blue-web") for i in range(20)]
    assert len(container_ports(lab, "blue")) == 21
    assert in_ns(hv2, "ip", "-o", "link", check=True).stdout.count("\n") == before_links + 20
    podman("rm", "-f", "-t", "0", *names, timeout=300)
    assert len(container_ports(lab, "blue")) == 1  # cblue's only
    assert in_ns(hv2, "ip", "-o", "link", check=True).stdout.count("\n") == before_links
    assert set(os.listdir("/run/netns")) == before_ns
    assert ovs_ports(lab) == before_ovs


def ovs_ports(lab):
    return sorted(subprocess.run(["ovs-vsctl", "list-ports", "br-int"], capture_output=True, text=True,
                                 env=lab.ovs_env("hv2")).stdout.split())


CNITOOL_SRC = os.path.join(ROOT, "tests", "integration", "cnitool")


@pytest.fixture(scope="module")
def cnitool(tmp_path_factory):
    """Our libcni runtime (tests/integration/cnitool), built offline against Debian's libcni."""
    if shutil.which("go") is None or not os.path.isdir("/usr/share/gocode/src/github.com/containernetworking/cni"):
        pytest.fail("go and golang-github-appc-cni-dev are needed (make deps)")
    out = tmp_path_factory.mktemp("cnitool")
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": "/usr/share/gocode", "GOCACHE": str(out / "cache"),
           "GOFLAGS": ""}
    subprocess.run(["go", "build", "-o", str(out / "cnitool"), "."], cwd=CNITOOL_SRC, env=env, check=True,
                   capture_output=True, timeout=300)
    conf = out / "net"
    os.makedirs(conf / "plugins")
    os.symlink(PLUGIN, conf / "plugins" / "nvctl-cni")
    return out


def assert_spec_result(r: dict, version: str) -> None:
    """An ADD result as CNI 1.0's "Success" section describes it."""
    import ipaddress
    assert r["cniVersion"] == version
    assert all(isinstance(i["name"], str) and i["name"] for i in r["interfaces"])
    for i in r["interfaces"]:
        assert set(i) <= {"name", "mac", "mtu", "sandbox", "socketPath", "pciID"}, i
    for ip in r["ips"]:
        assert set(ip) <= {"address", "gateway", "interface"}, ip
        ipaddress.ip_interface(ip["address"])
        assert 0 <= ip["interface"] < len(r["interfaces"]) and "sandbox" in r["interfaces"][ip["interface"]]
    for rt in r.get("routes", []):
        ipaddress.ip_network(rt["dst"])
        ipaddress.ip_address(rt["gw"])
    assert set(r.get("dns", {})) <= {"nameservers", "domain", "search", "options"}


def test_cnitool_through_libcni_adds_checks_and_deletes(lab, podman, cnitool):
    with open(cnitool / "net" / "blue-web.conflist", "w") as f:
        json.dump({"cniVersion": "1.0.0", "name": "blue-web", "plugins": [
            {"type": "nvctl-cni", "tenant": "blue", "switch": "web", "host": "hv2", "stateDir": lab.dir,
             "args": {"cni": {"labels": [{"key": "app", "value": "web"}, {"key": "tier", "value": "back"}]}}}]}, f)
    ns = f"nvt-cnitool-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    env = {**os.environ, "NETCONFPATH": str(cnitool / "net"), "CNI_PATH": str(cnitool / "net" / "plugins"),
           "CNI_CACHEDIR": str(cnitool / "cache"), "CNI_CONTAINERID": "cafe" * 16,
           "CNI_ARGS": "NVCTL_LABELS=tier=front,example.com/team=pay"}

    def tool(*args):
        return subprocess.run([str(cnitool / "cnitool"), *args, "blue-web", f"/run/netns/{ns}"], env=env,
                              capture_output=True, text=True, timeout=120)
    try:
        assert tool("validate").returncode == 0
        add = tool("add")
        assert add.returncode == 0, add.stderr
        r = json.loads(add.stdout)
        assert_spec_result(r, "1.0.0")
        ip = r["ips"][0]["address"].split("/")[0]
        assert "c" + "cafe" * 7 + "caf" in container_ports(lab, "blue")
        spec = {p["name"]: p for p in nvctl_json(lab, "tenant", "show", "blue")["spec"]["spec"]["ports"]}
        # the conflist's args.cni.labels, and CNI_ARGS's NVCTL_LABELS winning on tier
        assert spec["c" + "cafe" * 7 + "caf"]["labels"] == {"app": "web", "tier": "front", "example.com/team": "pay"}
        assert tool("check").returncode == 0  # libcni sends ADD's cached result as prevResult
        got = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "2", "-W", "2", "10.0.0.11"],
                             capture_output=True, text=True)
        assert " 0% packet loss" in got.stdout, got.stdout
        assert ip in [p["ip"] for p in container_ports(lab, "blue").values()]
        subprocess.run(["ip", "netns", "del", ns], check=True)  # the namespace goes first: DEL still works
        assert tool("del").returncode == 0
        assert tool("del").returncode == 0  # and again: idempotent
        assert ip not in [p["ip"] for p in container_ports(lab, "blue").values()]
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_a_podman_container_gets_the_network_policy_its_cni_labels_select(lab, podman):
    """No YAML edit for the containers: vm1 takes new connections only from ports labelled
    app=fe; a network whose conflist gives its containers app=fe (args.cni.labels, how
    podman passes labels to a CNI plugin) reaches it, the same switch without the label
    does not, and the twin is untouched."""
    policy = ("  networkPolicies:\n"
              "    - {name: vm1-from-fe, podSelector: {matchLabels: {role: vm1}},"
              " ingress: [{from: [{podSelector: {matchLabels: {app: fe}}}]}]}\n")
    labelled = tenant("blue").replace("  ports:\n", policy + "  ports:\n", 1) \
        .replace("host: hv1}", "host: hv1, labels: {role: vm1}}", 1)
    assert "vm1-from-fe" in labelled and "role: vm1" in labelled
    with open(os.path.join(podman.base, "net", "blue-web-fe.conflist"), "w") as f:
        json.dump({"cniVersion": "1.0.0", "name": "blue-web-fe", "plugins": [
            {"type": "nvctl-cni", "tenant": "blue", "switch": "web", "host": "hv2", "stateDir": lab.dir,
             "args": {"cni": {"labels": [{"key": "app", "value": "fe"}]}}}]}, f)
    apply_yaml(lab, labelled)
    try:
        podman.run("cfe", "blue-web-fe")
        podman.run("cplain", "blue-web")
        spec = {p["name"]: p for p in nvctl_json(lab, "tenant", "show", "blue")["ports"]}
        fe = [p for p in spec.values() if p.get("labels") == {"app": "fe"}]
        assert len(fe) == 1, spec
        ok = podman("exec", "cfe", "ping", "-c", "2", "-W", "2", "10.0.0.11", check=False)
        assert " 0% packet loss" in ok.stdout, ok.stdout + ok.stderr
        no = podman("exec", "cplain", "ping", "-c", "2", "-W", "1", "10.0.0.11", check=False)
        assert "100% packet loss" in no.stdout, no.stdout + no.stderr
        # the twin's vm1 (same address, no policy) answers red's containers as before
        podman.run("cred2", "red-web")
        red = podman("exec", "cred2", "ping", "-c", "2", "-W", "2", "10.0.0.11", check=False)
        assert " 0% packet loss" in red.stdout, red.stdout + red.stderr
    finally:
        podman("rm", "-f", "-t", "0", "cfe", "cplain", "cred2", check=False)
        apply_yaml(lab, tenant("blue"))
