"""Progress of long work: plain lines when not on a terminal, rich bars on one, the
controller's record of a change as it runs, and the command line following it."""
import io
import re
import threading
import time

import pytest
from rich.console import Console

from controller.server.api import ApiServer
from controller.client.api import call
from controller.client.progress import Reporter, follow_change
from controller.server.progress import Changes
from tep.driver import NoDriver
from tests.unit.fixtures import BLUE


def plain():
    out = io.StringIO()  # not a tty
    return Reporter("lab up", stream=out), out


def test_plain_steps_are_one_line_each_and_sub_steps_none():
    rep, out = plain()
    with rep:
        assert not rep.terminal
        hosts = rep.task("hosts", 3, lines="each")
        for i in (1, 2, 3):
            hosts.update(text=f"hv{i}: starting OVS")  # sub-steps: for a terminal only
            hosts.update(text=f"hv{i}: br-int")
            hosts.advance(f"hv{i} ready")
    assert out.getvalue().splitlines() == ["lab up: hv1 ready (1/3)", "lab up: hv2 ready (2/3)",
                                           "lab up: hv3 ready (3/3)"]


def test_plain_counts_give_a_line_per_tenth_and_one_at_the_end():
    rep, out = plain()
    with rep:
        ports = rep.task("blue: workloads plugged", 30)
        for done in range(31):
            ports.update(completed=done)
        ports.update(completed=30)  # the end again: no second line
        jumps = rep.task("red: workloads plugged", 30)
        for done in (0, 1, 12, 12, 25, 30):
            jumps.update(completed=done)
        synced = rep.task("hosts synced", 2, lines="end")
        synced.update(completed=1)
        synced.update(completed=2)
    lines = out.getvalue().splitlines()
    assert lines[:10] == [f"lab up: blue: workloads plugged {n}/30" for n in range(3, 31, 3)]
    assert lines[10:] == ["lab up: red: workloads plugged 12/30", "lab up: red: workloads plugged 25/30",
                          "lab up: red: workloads plugged 30/30", "lab up: hosts synced 2/2"]


def test_a_step_without_a_total_says_its_number():
    rep, out = plain()
    with rep:
        steps = rep.task("steps", None, lines="each")
        steps.advance("tenants created")
        steps.advance("pinging")
    assert re.fullmatch(r"lab up: tenants created \(step 1 at \d+\.\ds\)\nlab up: pinging \(step 2 at \d+\.\ds\)\n",
                        out.getvalue())


def test_a_terminal_console_gets_bars_not_lines():
    buf = io.StringIO()
    rep = Reporter("tenant create", console=Console(file=buf, force_terminal=True, width=120))
    with rep:
        assert rep.terminal
        ports = rep.task("blue: workloads plugged", 30)
        for done in range(0, 31, 5):
            ports.update(completed=done, text="plugging workloads")
        rep.note("[lab] a line above the bars")  # not rich markup: shown as written
    shown = buf.getvalue()
    assert "tenant create: blue: workloads plugged" in shown and "30/30" in shown
    assert "━" in shown  # the bar
    assert "\x1b[" in shown  # drawn with terminal control sequences
    assert "[lab] a line above the bars" in shown
    assert "workloads plugged 30/30" not in shown  # no plain line


def test_a_console_that_is_not_a_terminal_gets_plain_lines():
    buf = io.StringIO()
    rep = Reporter("bench", console=Console(file=buf, force_terminal=False))
    with rep:
        assert not rep.terminal
        rep.task("suites", 2, lines="each").advance("compile done in 1.0s")
    assert buf.getvalue() == "bench: compile done in 1.0s (1/2)\n"


def test_changes_count_a_change_from_many_threads():
    board = Changes()
    with board.track("blue", "create") as c:
        assert board.snapshot("blue")["phase"] == "waiting for the change ahead"
        c.phase("compiling")
        c.workloads(40)
        threads = [threading.Thread(target=lambda: [c.plugged() for _ in range(10)]) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        mid = board.snapshot("blue")
        c.hosts(3)
        c.synced()
        c.synced()
        before_end = board.snapshot()
    assert mid["workloads"] == {"done": 40, "total": 40} and mid["phase"] == "plugging workloads"
    assert mid["finished"] is False and mid["ok"] is None
    assert before_end["hosts"] == {"done": 2, "total": 3} and before_end["phase"] == "pushing flows"
    end = board.snapshot("blue")
    assert end["finished"] and end["ok"] and end["phase"] == "done"
    try:
        with board.track("red", "apply") as c:
            c.workloads(5)
            c.plugged()
            raise ValueError("refused")
    except ValueError:
        pass
    red = board.snapshot()
    assert red["tenant"] == "red" and red["ok"] is False and red["phase"] == "failed"
    assert red["workloads"] == {"done": 1, "total": 5} and red["seq"] == end["seq"] + 1
    assert board.snapshot("blue", after=end["seq"]) is None  # nothing of blue's newer than that
    assert board.snapshot("blue")["seq"] == end["seq"]


def test_the_core_counts_the_workloads_it_plugs(core):
    seen = []

    class Driver(NoDriver):  # records what the change's progress said at each plug
        def plug(self, a):
            seen.append(core.changes.snapshot("blue"))

        def namespace(self, *a):
            return None
    core.driver = Driver()
    core.create(BLUE)
    assert len(seen) == 4 and {s["workloads"]["total"] for s in seen} == {4}
    assert all(s["phase"] == "plugging workloads" and not s["finished"] for s in seen)
    end = core.changes.snapshot("blue")
    assert end["action"] == "create" and end["finished"] and end["ok"]
    assert end["workloads"] == {"done": 4, "total": 4}
    assert end["hosts"] == {"done": 0, "total": 0}  # no switch connected in a unit test
    core.apply(BLUE + "    - {name: vm5, switch: web, ip: 10.0.0.15, host: hv2}\n")
    again = core.changes.snapshot("blue")
    assert again["action"] == "apply" and again["seq"] == end["seq"] + 1
    assert again["workloads"] == {"done": 1, "total": 1}  # only the new port is plugged


def progress_while_a_change_holds_the_core(core, tmp_path):
    """Ask the API for blue's progress while a change of blue holds the core's lock (as
    _put holds it), then for a tenant with no change: (blue's answer, seconds it took,
    the other answer). A `progress` that waited for the lock would time out (5 s)."""
    server = ApiServer(core, str(tmp_path / "api.sock"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with core.changes.track("blue", "create") as c, core.mutex:
            c.workloads(30)
            c.plugged()
            t0 = time.monotonic()
            snap = call(server.path, "progress", tenant="blue", timeout=5)
            took = time.monotonic() - t0
        return snap, took, call(server.path, "progress", tenant="nobody", timeout=5)
    finally:
        server.sock.close()


def test_progress_is_answered_while_a_change_holds_the_core(core, tmp_path):
    snap, _took, nobody = progress_while_a_change_holds_the_core(core, tmp_path)
    assert snap["workloads"] == {"done": 1, "total": 30} and not snap["finished"]
    assert nobody is None


@pytest.mark.slo
def test_slo_progress_answers_within_2_s_while_a_change_holds_the_core(core, tmp_path):
    _snap, took, _nobody = progress_while_a_change_holds_the_core(core, tmp_path)
    assert took < 2, f"progress answered in {took:.2f} s while a change held the core (SLO: < 2 s)"


def test_follow_change_shows_its_change_and_ends_at_the_total():
    board = Changes()
    with board.track("blue", "create") as old:  # an earlier change of blue's: not ours
        old.workloads(5)
        for _ in range(5):
            old.plugged()
    ran = []

    def run():  # the change's own request: blocks while the core plugs
        with board.track("blue", "apply") as c:
            c.phase("compiling")
            c.workloads(30)
            for _ in range(30):
                time.sleep(0.01)
                c.plugged()
            c.hosts(2)
            c.synced()
            c.synced()
        ran.append(True)
        return {"tenant": "blue", "action": "updated"}
    out = io.StringIO()
    with Reporter("tenant apply", stream=out) as rep:
        result = follow_change(run, lambda after: board.snapshot("blue", after), rep, "blue", interval=0.05)
    assert result == {"tenant": "blue", "action": "updated"} and ran
    lines = out.getvalue().splitlines()
    counts = [int(m.group(1)) for m in (re.fullmatch(r"tenant apply: blue: workloads plugged (\d+)/30", ln)
                                        for ln in lines[:-1]) if m]
    assert len(counts) == len(lines) - 1, lines  # every line but the last is a workloads line of ours
    assert 2 <= len(counts) <= 10 and counts == sorted(counts) and counts[-1] == 30, lines
    assert lines[-1] == "tenant apply: blue: hosts synced 2/2"


def test_follow_change_without_a_progress_op_just_runs():
    def poll(after):
        raise RuntimeError("unknown operation 'progress'")
    out = io.StringIO()
    with Reporter("tenant create", stream=out) as rep:
        assert follow_change(lambda: 7, poll, rep, "blue") == 7
    assert out.getvalue() == ""


def test_a_scenario_run_reports_each_of_its_steps(tmp_path):
    from scenarios import runner
    from tests.unit.test_scenario_runner import StandIn

    def fn(run):
        run.step("tenants created")
        run.step("pinging every pair")
        run.claim("holds", True)
    runner.catalog()  # the real ones first
    runner.scenario("t-progress", "a test scenario")(fn)
    out = io.StringIO()
    try:
        with Reporter("scenario t-progress", stream=out) as rep:
            code = runner.run_scenario("t-progress", out=str(tmp_path), log=lambda *_: None, env=StandIn(),
                                       progress=rep)
    finally:
        runner.SCENARIOS.pop("t-progress", None)
    assert code == 0
    steps = [re.fullmatch(r"scenario t-progress: (.+) \(step (\d) at \d+\.\ds\)", ln)
             for ln in out.getvalue().splitlines()]
    assert all(steps) and [(m.group(1), m.group(2)) for m in steps] == [
        ("tenants created", "1"), ("pinging every pair", "2"), ("tearing the network down", "3")]
