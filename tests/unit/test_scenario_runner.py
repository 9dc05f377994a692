"""The scenario runner's verdicts: exit codes, result.json, teardown. The network is a
stand-in here (what is under test is the runner); tests/integration/test_scenarios.py
runs the real scenarios on the lab and under mininet."""
import json

import pytest

from scenarios import runner


class StandIn:
    kind = "stand-in"

    def __init__(self):
        self.downs = 0

    def down(self):
        self.downs += 1


@pytest.fixture
def registered():
    added = []

    def add(name, fn, mininet=False):
        runner.catalog()  # the real ones first, so ours are not overwritten by a later import
        runner.scenario(name, f"test scenario {name}", mininet=mininet)(fn)
        added.append(name)
    yield add
    for name in added:
        runner.SCENARIOS.pop(name, None)


def test_a_failed_claim_exits_1_and_says_which(registered, tmp_path):
    def fn(run):
        run.step("one step")
        run.claim("this holds", True, n=1)
        run.claim("this does not", False, seen=3)
    registered("t-fail", fn)
    env, lines = StandIn(), []
    code = runner.run_scenario("t-fail", out=str(tmp_path), log=lines.append, env=env)
    result = json.loads((tmp_path / "result.json").read_text())
    assert code == runner.EXIT_CLAIM_FAILED == 1
    assert result["ok"] is False and [c["ok"] for c in result["claims"]] == [True, False]
    assert result["claims"][1]["seen"] == 3
    assert any("FAIL  this does not" in ln for ln in lines)
    assert "failed: this does not" in lines[-1]
    assert env.downs == 1


def test_all_claims_holding_exits_0(registered, tmp_path):
    registered("t-ok", lambda run: run.claim("holds", True))
    env = StandIn()
    assert runner.run_scenario("t-ok", out=str(tmp_path), log=lambda *_: None, env=env) == 0
    assert json.loads((tmp_path / "result.json").read_text())["ok"] is True


def test_no_claims_is_not_a_pass(registered, tmp_path):
    registered("t-empty", lambda run: run.step("nothing checked"))
    assert runner.run_scenario("t-empty", out=str(tmp_path), log=lambda *_: None, env=StandIn()) == 1


def test_an_exception_exits_2_and_the_network_still_goes(registered, tmp_path):
    def fn(run):
        run.claim("held before the crash", True)
        raise RuntimeError("iperf3 vanished")
    registered("t-crash", fn)
    env = StandIn()
    code = runner.run_scenario("t-crash", out=str(tmp_path), log=lambda *_: None, env=env)
    result = json.loads((tmp_path / "result.json").read_text())
    assert code == runner.EXIT_ERROR == 2
    assert result["error"] == "RuntimeError: iperf3 vanished" and env.downs == 1


def test_unknown_names_and_mininet_only_where_supported(tmp_path):
    with pytest.raises(KeyError, match="isolation"):
        runner.run_scenario("no-such", out=str(tmp_path))
    with pytest.raises(ValueError, match="does not run under --mininet.*link-failure"):
        runner.run_scenario("nat", mininet=True, out=str(tmp_path))


def test_every_catalog_scenario_states_its_claims():
    for sc in runner.catalog().values():
        assert sc.fn.__doc__ and "Claims:" in sc.fn.__doc__, sc.name
