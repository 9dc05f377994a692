"""Workloads made from this process's threads (setns), no helper processes: each thread
comes back to its own namespace, each namespace gets what was asked, and a workload made
fresh is what the full (idempotent) path would make."""
import os
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor

from tep import nsutil, workload


def _own_ns() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def _in(ns: str, *cmd: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, check=True).stdout


def test_eight_threads_make_namespaces_at_once_and_each_comes_back_home():
    tag = uuid.uuid4().hex[:6]
    names = [f"nvt{tag}-{i}" for i in range(16)]
    home = _own_ns()

    def make(name):
        workload.ensure_namespace(name)
        return _own_ns(), os.stat(nsutil.path(name)).st_ino
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            got = list(pool.map(make, names))
        assert {back for back, _ in got} == {home}  # every thread is back in our namespace
        assert len({made for _, made in got}) == len(names) and home not in {made for _, made in got}
        for name in names:
            assert "UP" in _in(name, "ip", "-br", "link", "show", "lo")
            assert _in(name, "sysctl", "-n", "net.ipv6.conf.all.disable_ipv6").strip() == "1"
            assert _in(name, "sysctl", "-n", "net.ipv6.conf.default.disable_ipv6").strip() == "1"
    finally:
        for name in names:
            workload.delete_namespace(name)


def _state(ns: str, host_ns: str, host_if: str) -> dict:
    links = _in(ns, "ip", "-d", "-o", "link", "show")
    return {"eth0": _in(ns, "ip", "-o", "link", "show", "eth0").split(": ", 2)[2].split(" link/")[0],
            "addr": _in(ns, "ip", "-o", "-4", "addr", "show", "dev", "eth0").split()[3],
            "route": _in(ns, "ip", "route", "show", "default").strip(),
            "isolated": "isolated on" in links, "tx": [ln for ln in _in(ns, "ethtool", "-k", "eth0").splitlines()
                                                      if ln.startswith("tx-checksumming")],
            "host_end_up": ",UP" in subprocess.run(["ip", "-n", host_ns, "-o", "link", "show", host_if],
                                                   capture_output=True, text=True).stdout,
            "indexes": sorted(ln.split(":")[0] for ln in links.splitlines())}


def test_a_fresh_workload_is_what_the_full_path_makes_and_a_second_call_changes_nothing():
    tag = uuid.uuid4().hex[:6]
    host, ns, host_if = f"nvt{tag}-host", f"nvt{tag}-vm", f"w{tag}"
    try:
        workload.ensure_namespace(host)
        workload.create_workload(ns, host, host_if, "10.77.0.5", 24, "02:00:0a:4d:00:05", "10.77.0.1", 1450)
        fresh = _state(ns, host, host_if)
        assert fresh["addr"] == "10.77.0.5/24" and fresh["route"].startswith("default via 10.77.0.1 dev eth0")
        assert "mtu 1450" in fresh["eth0"] and ",UP" in fresh["eth0"]
        assert fresh["isolated"] and fresh["tx"] == ["tx-checksumming: off"] and fresh["host_end_up"]
        workload.create_workload(ns, host, host_if, "10.77.0.5", 24, "02:00:0a:4d:00:05", "10.77.0.1", 1450)
        assert _state(ns, host, host_if) == fresh  # the same links, nothing made again
        # the full path does change what differs: a new address and MTU, in place
        workload.create_workload(ns, host, host_if, "10.77.0.6", 24, "02:00:0a:4d:00:05", "10.77.0.1", 1400)
        moved = _state(ns, host, host_if)
        assert moved["addr"] == "10.77.0.6/24" and "mtu 1400" in moved["eth0"]
        assert moved["indexes"] == fresh["indexes"]
    finally:
        workload.delete_namespace(ns)
        workload.delete_namespace(host)


def test_a_namespace_file_left_by_a_kill_is_no_namespace_and_a_workload_is_made_over_it():
    """A controller killed between making /run/netns/NAME and mounting the namespace on it
    leaves an empty file; that is not a namespace, and plugging the workload again makes
    it (it failed with EINVAL from setns on the file, and the port stayed down)."""
    tag = uuid.uuid4().hex[:6]
    host, ns, host_if = f"nvt{tag}-host", f"nvt{tag}-vm", f"w{tag}"
    try:
        workload.ensure_namespace(host)
        open(nsutil.path(ns), "w").close()  # what the kill leaves
        assert os.path.exists(nsutil.path(ns)) and not nsutil.exists(ns)
        workload.create_workload(ns, host, host_if, "10.77.0.5", 24, "02:00:0a:4d:00:05", "10.77.0.1", 1450)
        assert nsutil.exists(ns)
        assert _state(ns, host, host_if)["addr"] == "10.77.0.5/24"
    finally:
        workload.delete_namespace(ns)
        workload.delete_namespace(host)
        if os.path.exists(nsutil.path(ns)):
            os.unlink(nsutil.path(ns))
