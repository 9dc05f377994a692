"""Integration fixtures: a real lab (OVS per host namespace), torn down even on failure.

These tests need root and Open vSwitch. Without them they skip, unless
NVCTL_REQUIRE_INTEGRATION=1 (set by `make test` and CI): then they fail, so a machine
that cannot run them never passes silently.
"""
import os
import shutil
import tempfile

import pytest
from pyroute2 import netns

from scenarios.lab import Lab


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.integration)


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ovs-vswitchd", "ovsdb-server", "tcpdump", "ethtool"):
        if shutil.which(tool) is None:
            return f"needs {tool} (make deps)"
    return None


@pytest.fixture(scope="session", autouse=True)
def _integration_possible():
    why = _missing()
    if why:
        if os.environ.get("NVCTL_REQUIRE_INTEGRATION") == "1":
            pytest.fail(f"integration tests required but {why}")
        pytest.skip(why)


def make_lab(hosts: int = 3) -> Lab:
    d = tempfile.mkdtemp(prefix="nvt-")
    return Lab(d, log=lambda *a: None)


def fresh_compile_changes(lb: Lab) -> list[dict]:
    """Restart the controller (a full compile from the store) and return the hosts to
    which it had to send anything: after any sequence of incremental changes, none."""
    if lb.clustered:  # every controller and etcd member stopped and started again
        lb.stop_members()
        lb.start_members()
    else:
        lb.stop_controller()
        lb.start_controller()
    return [h for h in lb.wait_synced(60) if h["last_sync_flow_mods"] != 0]


def verify_lab(lb: Lab) -> dict:
    """`nvctl verify` over what the lab's switches hold."""
    from controller.client.api import call
    return call(lb.api(), "verify", timeout=300)


def running_lab(hosts: int = 3, **up):
    """A lab for one test module: up, yielded, then checked for drift (a fresh full
    compile must send nothing), proved isolated by `nvctl verify` over the installed
    flows, and removed with everything in its state directory."""
    lb = make_lab()
    drift = proof = None
    try:
        lb.up(hosts=hosts, **up)
        yield lb
        drift = fresh_compile_changes(lb)
        proof = verify_lab(lb)
    finally:
        keep = os.environ.get("NVCTL_KEEP_LOGS")  # a directory: the lab's logs are copied there first
        if keep:
            shutil.copytree(lb.dir, os.path.join(keep, os.path.basename(lb.dir)), dirs_exist_ok=True,
                            ignore=lambda d, names: [n for n in names if not n.endswith(".log")
                                                     and not os.path.isdir(os.path.join(d, n))])
        lb.down(quiet=True)
        left = [n for n in netns.listnetns() if n.startswith(lb.prefix)]
        shutil.rmtree(lb.dir, ignore_errors=True)
        assert not left, f"lab down left namespaces behind: {left}"
    assert not drift, f"incremental updates drifted from a full compile: {drift}"
    assert proof is None or proof["ok"], f"nvctl verify at the end of the module:\n{proof['text']}\n" \
        f"{proof['interfaces']} {proof['errors']}"


@pytest.fixture(scope="module")
def lab():
    yield from running_lab(3)
