"""Containers from Debian's dockerd on tenant switches through `nvctl docker-plugin` (a
remote network driver and IPAM driver): a Docker container, a podman container and a lab
workload of one tenant reach each other across hosts; the twin's containers, with the
same addresses, hear none of it; the gateway comes from the switch's router (one NIC);
ACLs apply; a container's port carries the labels given as driver options; bad networks
are refused with what to do; containers that come and go leave nothing behind, also
across a restart of the plugin."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from controller.client.api import call
from tests.integration.conftest import running_lab, verify_lab
from tests.integration.helpers import ROOT, Capture, Dockerd, apply_yaml, in_ns, nvctl_json
from tests.integration.test_cni import Podman

TENANT = """apiVersion: nvctl/v1
kind: Tenant
metadata: {name: NAME}
spec:
  switches:
    - {name: web, cidr: 10.0.0.0/24}
    - {name: db, cidr: 10.0.1.0/24}
  routers:
    - {name: r1, ports: [{switch: web, ip: 10.0.0.1}, {switch: db, ip: 10.0.1.1}]}
  ports:
    - {name: vm1, switch: web, ip: 10.0.0.11, host: hv1}
    - {name: vm2, switch: db, ip: 10.0.1.11, host: hv1}
  acls:
    - {priority: 20, direction: to-port, ports: [vm2], from: 10.0.0.200/32, action: deny}
    - {priority: 10, direction: to-port, ports: [vm2], action: allow}
"""
PROBE = 777  # busybox ping has no payload pattern: probes are tagged by their size


class Plugin:
    """`nvctl docker-plugin` on a socket of its own (driver name nvt<pid>), stopped by PID."""

    def __init__(self, lab, base):
        self.lab, self.name = lab, f"nvt{os.getpid()}"
        self.sock = f"/run/docker/plugins/{self.name}.sock"
        self.log_path = os.path.join(base, "plugin.log")
        self.start()

    def start(self):
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "controller.client.cli", "--state-dir", self.lab.dir,
                                      "docker-plugin", "--socket", self.sock, "--host", "hv2"],
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.sock):
            assert self.proc.poll() is None and time.monotonic() < deadline, open(self.log_path).read()
            time.sleep(0.1)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        self.log.close()
        assert not os.path.exists(self.sock)

    def state(self):
        with open(os.path.join(self.lab.dir, f"docker-{self.name}.json")) as f:
            return json.load(f)


@pytest.fixture(scope="module")
def lab():
    yield from running_lab(hosts=2)


@pytest.fixture(scope="module")
def docker(lab, tmp_path_factory):
    for t in ("blue", "red"):
        apply_yaml(lab, TENANT.replace("NAME", t), op="create")
    base = str(tmp_path_factory.mktemp("docker"))
    dk = Dockerd(base)
    plugin = None
    try:
        plugin = Plugin(lab, base)
        dk.plugin = plugin
        for t in ("blue", "red"):
            dk("network", "create", "-d", plugin.name, "--ipam-driver", plugin.name, "-o", f"tenant={t}",
               "-o", "switch=web", "--subnet", "10.0.0.0/24", "--gateway", "10.0.0.1", f"{t}-web")
        yield dk
    finally:
        dk.close()
        if plugin is not None:
            plugin.stop()


def run(dk, name, network, *extra):
    dk("run", "-d", "--name", name, "--network", network, *extra, "nvt-busybox", "sleep", "600")
    return name


def port_of(dk, name, network):
    eid = dk("inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{network}").EndpointID}}}}', name).stdout
    return "d" + eid.strip()[:12]


def docker_ports(lab, tenant):
    return {p["name"]: p for p in nvctl_json(lab, "tenant", "show", tenant)["ports"] if p.get("madeBy") == "docker"}


def pings(result) -> bool:
    return " 0% packet loss" in result.stdout


def test_docker_podman_and_lab_workload_of_one_tenant_reach_each_other_and_not_the_twin(lab, docker):
    run(docker, "dblue", "blue-web")
    run(docker, "dred", "red-web")  # the twin's: the same address from the same spec
    b, r = docker_ports(lab, "blue"), docker_ports(lab, "red")
    assert list(b) == [port_of(docker, "dblue", "blue-web")] and list(r) == [port_of(docker, "dred", "red-web")]
    (bp,), (rp,) = b.values(), r.values()
    assert bp["ip"] == rp["ip"] == "10.0.0.2" and bp["host"] == "hv2" and bp["up"]
    base = tempfile.mkdtemp(prefix="nvp-")  # podman wants a short runroot
    pm = Podman(base, lab, host="hv1")
    try:
        pm.run("pblue", "blue-web")
        pod_ip = {p["name"]: p for p in nvctl_json(lab, "tenant", "show", "blue")["ports"]}["pblue"]["ip"]
        assert pod_ip == "10.0.0.3"  # nvctl's IPAM serves both runtimes
        ports = {p["name"]: p for p in nvctl_json(lab, "tenant", "show", "red")["ports"]}
        red_docker = call(lab.api_path, "port.attachment", tenant="red", port=rp["name"])
        caps = [Capture(ports["vm1"]["namespace"], "eth0", f"icmp and ip[2:2] == {PROBE + 28}"),
                Capture(f"{lab.prefix}hv2", red_docker["host_ifname"], f"icmp and ip[2:2] == {PROBE + 28}")]
        try:
            ping = ["ping", "-c", "3", "-W", "2", "-s", str(PROBE)]
            assert pings(docker("exec", "dblue", *ping, "10.0.0.11", check=False))  # docker -> lab workload
            assert pings(docker("exec", "dblue", *ping, pod_ip, check=False))  # docker (hv2) -> podman (hv1)
            assert pings(pm("exec", "pblue", *ping, "10.0.0.2", check=False))  # podman -> docker
            vm1 = {p["name"]: p for p in nvctl_json(lab, "tenant", "show", "blue")["ports"]}["vm1"]["namespace"]
            assert pings(in_ns(vm1, *ping, "10.0.0.2"))  # lab workload -> docker
            assert pings(docker("exec", "dblue", *ping, "10.0.1.11", check=False))  # routed, by the gateway
            time.sleep(0.3)
        finally:
            heard = [c.stop() for c in caps]
        assert heard == [0, 0]  # red's vm1 and red's container share the CAs and hear nothing
        proof = verify_lab(lab)
        assert proof["ok"], proof["text"]
        assert "checked 7 ports" in proof["text"]  # 2x vm1, vm2, the docker port; podman's
    finally:
        pm.close()
        shutil.rmtree(base, ignore_errors=True)


def test_the_container_has_one_nic_the_switch_mtu_and_the_routers_gateway(docker):
    links = docker("exec", "dblue", "ip", "-o", "link").stdout
    assert [line.split(": ")[1].split("@")[0] for line in links.splitlines()] == ["lo", "eth0"]
    assert "mtu 1450" in links
    assert docker("exec", "dblue", "ip", "route").stdout.startswith("default via 10.0.0.1 dev eth0")


def test_acls_apply_to_docker_containers(lab, docker):
    run(docker, "ddenied", "blue-web", "--ip", "10.0.0.200")
    assert docker_ports(lab, "blue")[port_of(docker, "ddenied", "blue-web")]["ip"] == "10.0.0.200"
    ping = ["ping", "-c", "2", "-W", "1"]
    assert not pings(docker("exec", "ddenied", *ping, "10.0.1.11", check=False))  # denied by its CIDR
    assert pings(docker("exec", "ddenied", *ping, "10.0.0.11", check=False))  # vm1 has no such rule
    docker("rm", "-f", "ddenied")


def test_a_containers_port_carries_the_labels_docker_passes_as_driver_options(lab, docker):
    """A network's `-o nvctl.label.K=V` / `-o nvctl.labels=K=V,...` label every container
    on it; a container's own driver options (`docker run --network name=NET,driver-opt=...`,
    `docker network connect --driver-opt ...`) win on a key; a bad label is refused, named."""
    name = docker.plugin.name
    docker("network", "create", "-d", name, "--ipam-driver", name, "-o", "tenant=blue", "-o", "switch=db",
           "-o", "nvctl.label.app=shop", "-o", "nvctl.labels=tier=back,env=prod", "--subnet", "10.0.1.0/24",
           "--gateway", "10.0.1.1", "blue-db")
    try:
        run(docker, "lfront", "name=blue-db,driver-opt=nvctl.label.tier=front")
        run(docker, "lplain", "blue-db")
        # connected before it starts (Docker 20.10 never tells the driver to Leave an endpoint it
        # connected to a running container of network mode none, the default without docker0)
        docker("create", "--name", "lconn", "--network", "none", "nvt-busybox", "sleep", "600")
        docker("network", "disconnect", "none", "lconn")
        docker("network", "connect", "--driver-opt", "nvctl.label.role=batch", "blue-db", "lconn")
        docker("start", "lconn")
        ports = docker_ports(lab, "blue")
        labels = {c: ports[port_of(docker, c, "blue-db")]["labels"] for c in ("lfront", "lplain", "lconn")}
        assert labels == {"lfront": {"app": "shop", "tier": "front", "env": "prod"},
                          "lplain": {"app": "shop", "tier": "back", "env": "prod"},
                          "lconn": {"app": "shop", "tier": "back", "env": "prod", "role": "batch"}}, labels
        assert all(ports[port_of(docker, c, "blue-db")]["switch"] == "db" for c in labels)
        assert pings(docker("exec", "lfront", "ping", "-c", "2", "-W", "2", "10.0.1.11", check=False))  # vm2
        bad = docker("run", "-d", "--name", "lbad", "--network", "name=blue-db,driver-opt=nvctl.label.tier=-x",
                     "nvt-busybox", "sleep", "600", check=False)
        assert bad.returncode != 0 and "label tier=-x: the value '-x'" in bad.stderr, bad.stderr
        bad = docker("network", "create", "-d", name, "-o", "tenant=blue", "-o", "switch=db",
                     "-o", "nvctl.label.Bad!=x", "--subnet", "10.0.1.0/24", "--gateway", "10.0.1.1", "bad", check=False)
        assert bad.returncode != 0 and "label Bad!=x: the key 'Bad!'" in bad.stderr, bad.stderr
    finally:
        docker("rm", "-f", "lfront", "lplain", "lconn", "lbad", check=False)
        docker("network", "rm", "blue-db", check=False)
    assert [p for p in docker_ports(lab, "blue").values() if p["switch"] == "db"] == []


def test_a_docker_container_gets_the_network_policy_its_labels_select(lab, docker):
    """No YAML edit for the containers: vm2 takes new connections only from ports
    labelled app=fe (a policy beside its ACLs: a packet must pass both); a container
    given app=fe as a driver option reaches it, one without does not; relabelling the
    plain one's port lets it in."""
    policy = ("  networkPolicies:\n"
              "    - {name: vm2-from-fe, namespace: db, podSelector: {},"
              " ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: fe}}}]}]}\n")
    apply_yaml(lab, TENANT.replace("NAME", "blue") + policy)
    try:
        run(docker, "pfe", "name=blue-web,driver-opt=nvctl.label.app=fe")
        run(docker, "pplain", "blue-web")
        ping = ["ping", "-c", "2", "-W", "1"]
        assert pings(docker("exec", "pfe", *ping, "10.0.1.11", check=False))
        assert not pings(docker("exec", "pplain", *ping, "10.0.1.11", check=False))
        assert pings(docker("exec", "pplain", *ping, "10.0.0.11", check=False))  # vm1: no policy
        plain = port_of(docker, "pplain", "blue-web")
        call(lab.api_path, "port.label", tenant="blue", port=plain, set={"app": "fe"})
        assert pings(docker("exec", "pplain", *ping, "10.0.1.11", check=False))
    finally:
        docker("rm", "-f", "pfe", "pplain", check=False)
        apply_yaml(lab, TENANT.replace("NAME", "blue"))


def test_networks_that_disagree_with_the_switch_are_refused_and_say_what_to_do(lab, docker):
    name = docker.plugin.name
    bad = docker("network", "create", "-d", name, "--ipam-driver", name, "-o", "tenant=blue", "-o", "switch=web",
                 "--subnet", "10.9.0.0/24", "bad", check=False)
    assert bad.returncode != 0 and "--subnet 10.0.0.0/24" in bad.stderr, bad.stderr
    bad = docker("network", "create", "-d", name, "-o", "tenant=blue", "-o", "switch=web", "--subnet",
                 "10.0.0.0/24", "--gateway", "10.0.0.254", "bad", check=False)
    assert bad.returncode != 0 and "--gateway 10.0.0.1" in bad.stderr, bad.stderr
    bad = docker("network", "create", "-d", name, "-o", "tenant=blue", "bad", check=False)
    assert bad.returncode != 0 and "-o switch=" in bad.stderr, bad.stderr
    # Docker's own IPAM: fine while its address is free; one a port has is refused, naming the fix
    docker("network", "create", "-d", name, "-o", "tenant=blue", "-o", "switch=web", "--subnet", "10.0.0.0/24",
           "--gateway", "10.0.0.1", "blue-web-own")
    try:
        taken = docker("run", "-d", "--name", "dtaken", "--network", "blue-web-own", "--ip", "10.0.0.11",
                       "nvt-busybox", "sleep", "600", check=False)
        assert taken.returncode != 0 and "already used" in taken.stderr and f"--ipam-driver {name}" in taken.stderr, taken.stderr
        docker("rm", "-f", "dtaken", check=False)
        run(docker, "down", "blue-web-own", "--ip", "10.0.0.99")
        assert pings(docker("exec", "down", "ping", "-c", "2", "-W", "2", "10.0.0.11", check=False))
        docker("rm", "-f", "down")
    finally:
        docker("network", "rm", "blue-web-own")
    assert sorted(p["ip"] for p in docker_ports(lab, "blue").values()) == ["10.0.0.2"]


def hv2_links(lab):
    return in_ns(f"{lab.prefix}hv2", "ip", "-o", "link", check=True).stdout.count("\n")


def ovs_ports(lab):
    return sorted(subprocess.run(["ovs-vsctl", "list-ports", "br-int"], capture_output=True, text=True,
                                 env=lab.ovs_env("hv2")).stdout.split())


def root_veths():
    return [line for line in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout.splitlines()
            if ": nvd" in line]


def test_containers_that_come_and_go_leave_nothing_behind_across_a_plugin_restart(lab, docker):
    before = (hv2_links(lab), ovs_ports(lab), len(docker.plugin.state()["endpoints"]))
    names = [run(docker, f"burst{i}", "blue-web" if i % 2 else "red-web") for i in range(20)]
    assert len(docker_ports(lab, "blue")) == 11 and len(docker_ports(lab, "red")) == 11
    assert hv2_links(lab) == before[0] + 20 and len(docker.plugin.state()["endpoints"]) == before[2] + 20
    docker.plugin.stop()  # a restarted plugin knows Docker's networks and endpoints from its record
    docker.plugin.start()
    assert pings(docker("exec", "burst1", "ping", "-c", "2", "-W", "2", "10.0.0.11", check=False))
    docker("rm", "-f", *names, timeout=300)
    assert len(docker_ports(lab, "blue")) == 1 and len(docker_ports(lab, "red")) == 1
    assert (hv2_links(lab), ovs_ports(lab), len(docker.plugin.state()["endpoints"])) == before
    assert root_veths() == []
