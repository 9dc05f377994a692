"""Every lab scenario, and link-failure and isolation under mininet (whose hosts get their
addresses by DHCP), run through `nvctl scenario run` from a fresh network: exit 0, every
claim held, plots written, nothing left behind."""
import json
import subprocess
import sys

import pytest
from pyroute2 import netns

from tests.integration.helpers import ROOT

LAB_SCENARIOS = ["isolation", "migration", "nat", "lb", "link-failure", "mtu", "dhcp", "vm-migration"]


def run_cli(tmp_path, *args):
    before = set(netns.listnetns())
    p = subprocess.run([sys.executable, "-m", "controller.client.cli", "scenario", "run", *args, "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    print(p.stdout[-4000:])
    result = json.loads((tmp_path / "result.json").read_text())
    left = set(netns.listnetns()) - before
    return p, result, left


def check(p, result, left, tmp_path, env):
    failed = [c for c in result["claims"] if not c["ok"]]
    assert p.returncode == 0, f"exit {p.returncode}; failed claims {failed}; error {result['error']}\n{p.stderr[-2000:]}"
    assert result["ok"] and result["env"] == env and len(result["claims"]) >= 3 and not failed
    assert result["plots"]
    for name in result["plots"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert not left, f"namespaces left behind: {left}"


@pytest.mark.parametrize("name", LAB_SCENARIOS)
def test_lab_scenario_holds_its_claims(name, tmp_path):
    check(*run_cli(tmp_path, name), tmp_path, "lab")


def by_dhcp(p, workloads: int) -> None:
    """Mininet's hosts got their address, MTU and gateway from the platform's DHCP, none by hand."""
    assert f"{workloads} of {workloads} workloads got address, MTU and gateway by DHCP" in p.stdout, p.stdout[-3000:]
    assert "DHCP FAILED" not in p.stdout, p.stdout[-3000:]


def test_link_failure_under_mininet(tmp_path):
    p, result, left = run_cli(tmp_path, "link-failure", "--mininet")
    check(p, result, left, tmp_path, "mininet")
    by_dhcp(p, 4)
    assert result["data"]["recovery_s"] is not None


def test_isolation_under_mininet_sees_the_same_matrix(tmp_path):
    p, result, left = run_cli(tmp_path, "isolation", "--mininet")
    check(p, result, left, tmp_path, "mininet")
    by_dhcp(p, 8)
    m = result["data"]["delivered_matrix"]
    assert sum(map(sum, m)) == 3 * 24  # 24 same-tenant pairs, 3 echo requests each, nothing else
