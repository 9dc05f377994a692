"""Running a scenario: a fresh lab (or mininet network), steps with progress lines,
claims that decide the exit code, and a JSON result plus PNG plots in --out.

A scenario is a function registered with @scenario in scenarios/catalog.py. It gets a
Run: `run.env` (the network: its API socket and the tenants' ports with the namespace
of each workload), `run.step(text)`, `run.claim(text, ok, **evidence)`, `run.data`
(goes into the JSON) and `run.figure(name)` (a matplotlib figure saved as NAME.png).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import yaml

from controller.client.api import call
from scenarios import catalog as _  # noqa: F401  (registers the scenarios)
from scenarios import vms as _vms  # noqa: F401  (and those with VMs)
from scenarios.registry import SCENARIOS, Scenario, scenario  # noqa: F401  (scenario: for callers)

EXIT_OK, EXIT_CLAIM_FAILED, EXIT_ERROR = 0, 1, 2


def catalog() -> dict[str, Scenario]:
    return SCENARIOS


# the network a scenario runs on -------------------------------------------------------------

class LabEnv:
    """The embedded lab, fresh, in a state directory of its own (so it never touches a
    lab the user has up)."""

    kind = "lab"

    def __init__(self, hosts: int, log):
        from scenarios.lab import Lab
        self.lab = Lab(tempfile.mkdtemp(prefix="nvctl-scenario-"), log=log)
        self.hosts = [f"hv{i}" for i in range(1, hosts + 1)]
        self.ports: dict[str, dict[str, dict]] = {}
        self._n = hosts

    @property
    def api_path(self) -> str:
        return self.lab.api_path

    @property
    def outside_ns(self) -> str:
        return self.lab.ext_ns

    def up(self, tenants: list[str]) -> None:
        self.lab.up(hosts=self._n)
        for text in tenants:
            call(self.api_path, "tenant.create", yaml=text)
            name = yaml.safe_load(text)["metadata"]["name"]
            self.ports[name] = {p["name"]: {**p, "iface": "eth0"}
                                for p in call(self.api_path, "tenant.show", name=name)["ports"]}

    def set_underlay_link(self, host: str, up: bool) -> None:
        self.lab.set_underlay_link(host, up)

    def down(self) -> None:
        self.lab.down(quiet=True)


class MininetEnv:
    """The same, built by mininet: Hypervisor nodes, workload hosts, a TCLink underlay."""

    kind = "mininet"
    outside_ns = None

    def __init__(self, hosts: int, log, underlay: dict | None = None):
        self.n = hosts
        self.log = log
        self.underlay = underlay if underlay is not None else {"bw": 500}
        self.overlay = None
        self.hosts = [f"hv{i}" for i in range(1, hosts + 1)]
        self.ports: dict[str, dict[str, dict]] = {}

    @property
    def api_path(self) -> str:
        return self.overlay.api_path

    def up(self, tenants: list[str]) -> None:
        from scenarios.mininet_overlay import Overlay, OverlayTopo
        topo = OverlayTopo(hosts=self.n, tenants=tenants, underlay=self.underlay)
        self.overlay = Overlay(topo, log=self.log)
        self.overlay.start()  # a failure here is cleaned up by down(), which the runner always calls
        self.ports = self.overlay.ports

    def set_underlay_link(self, host: str, up: bool) -> None:
        self.overlay.net.configLinkStatus(host, "ul", "up" if up else "down")

    def down(self) -> None:
        if self.overlay is not None:
            self.overlay.stop()


# one run -------------------------------------------------------------------------------------

@dataclass
class Run:
    scenario: Scenario
    env: object
    out: str
    log: Callable = print
    steps: list = field(default_factory=list)
    claims: list = field(default_factory=list)
    data: dict = field(default_factory=dict)
    plots: list = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)
    progress: object = None  # a controller.client.progress.Task: one step each

    def step(self, text: str) -> None:
        self.steps.append({"t": round(time.monotonic() - self.t0, 2), "step": text})
        self.log(f"[{self.scenario.name} {len(self.steps)}] {text}")
        if self.progress is not None:
            self.progress.advance(text)

    def claim(self, text: str, ok: bool, **evidence) -> bool:
        self.claims.append({"claim": text, "ok": bool(ok), **evidence})
        shown = ", ".join(f"{k}={v}" for k, v in evidence.items())
        self.log(f"    {'PASS' if ok else 'FAIL'}  {text}" + (f"  ({shown})" if shown else ""))
        return bool(ok)

    def figure(self, name: str, fig) -> str:
        path = os.path.join(self.out, f"{name}.png")
        fig.savefig(path, dpi=110, bbox_inches="tight")
        import matplotlib.pyplot as plt
        plt.close(fig)
        self.plots.append(os.path.basename(path))
        self.log(f"    plot {path}")
        return path


def run_scenario(name: str, mininet: bool = False, out: str | None = None, log=print, env=None,
                 progress=None) -> int:
    """Run one scenario on a fresh network; 0 if every claim held, 1 if one failed,
    2 if the scenario could not run. Writes OUT/result.json and OUT/*.png.
    `env` replaces the network (the runner's own tests use that); `progress`, a
    controller.client.progress.Reporter, gets one step each (the log lines stay on `log`)."""
    import matplotlib
    matplotlib.use("Agg")
    scenarios = catalog()
    sc = scenarios.get(name)
    if sc is None:
        raise KeyError(f"no scenario {name!r}; there are: {', '.join(scenarios)}")
    if mininet and not sc.mininet:
        raise ValueError(f"scenario {name} does not run under --mininet "
                         f"(those that do: {', '.join(n for n, s in scenarios.items() if s.mininet)})")
    out = os.path.abspath(out or os.path.join("scenario-results", name))
    os.makedirs(out, exist_ok=True)
    if env is None:
        env = MininetEnv(sc.hosts, log) if mininet else LabEnv(sc.hosts, log)
    run = Run(sc, env, out, log, progress=progress.task("steps", None, lines="each") if progress else None)
    error = None
    started = time.time()
    log(f"[{name}] {sc.summary} ({env.kind}, {sc.hosts} hosts; results in {out})")
    try:
        sc.fn(run)
    except Exception as e:  # the scenario could not finish: say where
        error = f"{type(e).__name__}: {e}"
        log(f"[{name}] ERROR {error}")
        traceback.print_exc()
    finally:
        run.step("tearing the network down")
        env.down()
    failed = [c["claim"] for c in run.claims if not c["ok"]]
    result = {"scenario": name, "summary": sc.summary, "env": env.kind, "hosts": sc.hosts,
              "started": started, "seconds": round(time.monotonic() - run.t0, 1),
              "ok": error is None and not failed and bool(run.claims), "error": error,
              "claims": run.claims, "steps": run.steps, "plots": run.plots, "data": run.data}
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    verdict = ("ERROR" if error else "FAILED" if failed or not run.claims else "PASSED")
    log(f"[{name}] {verdict}: {sum(c['ok'] for c in run.claims)}/{len(run.claims)} claims held "
        f"in {result['seconds']}s; {out}/result.json" + (f"; failed: {'; '.join(failed)}" if failed else ""))
    return EXIT_ERROR if error else EXIT_OK if result["ok"] else EXIT_CLAIM_FAILED
