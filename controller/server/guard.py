"""Verify before install (`controller --verify-changes`, the default): a tenant's change
is proved over the flows it would leave on every host before anything is stored or sent.

The guard keeps one sliced proof (controller.analysis.verify_slice.Sliced) over the
desired state, the flows the compiler wants on every host, not over what the switches
hold (that is `nvctl verify`'s job). A change's compiled flows go into the proof as the
tenant's update: only its slice, the shared proof and the tenants whose flows it
touches are checked again. A violation of a kind in `BLOCKING` that the proof did not
have before the change refuses the change like invalid YAML, with the counterexample,
and nothing is stored, installed or plugged; other new findings (a pair that no longer
reaches, an undeclared drop) are the tenant's own business and come back as warnings
in the change's answer.

The proof is rebuilt from the desired state (a full run) when the state changed by
another path (a host registered, ports rebound, a tenant deleted, a store write that
failed after the check): `stale()` marks it, the next check rebuilds it first.

A piece of `Core`: `core.guard` (controller.server.derived lists it)."""
from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections import deque

from controller.analysis import verify as vf
from controller.analysis.verify_slice import Sliced
from controller.server.errors import ApiError

LOG = logging.getLogger("nvctl.guard")

# what refuses a change: one tenant's packet reaching another's port, VNI, conntrack zone,
# meter or group, the provider network with an address it does not own, a shared table
# changing a packet's tenant, or a connection its network policies deny
BLOCKING = frozenset({"isolation_port", "isolation_vni", "isolation_external", "shared_zone",
                      "shared_meter", "shared_group", "scope_change", "policy_leak"})
HISTORY = 200  # the results `verify.changes` can return (nvctl verify --watch)
# a tenant's proof grows with the square of its ports on one switch (each port's packets
# branch once per destination on the switch): above this sum of squares over its switches
# (one 40-port switch: 1,600; its proof took 0.14 s here) a change is let through unproved,
# said so in its answer and in `verify --watch` (`nvctl verify` proves it once installed)
BUDGET = 1600


class Guard:
    def __init__(self, enabled: bool = True, clock=time.perf_counter):
        self.enabled = enabled
        self.clock = clock
        self.proof: Sliced | None = None
        self._desired = None  # (the DesiredState object, its generation) the proof stands for
        self._known: set = set()  # keys of the violations the proof holds now
        self.lock = threading.Lock()  # the history, read without the core's mutex
        self.history: deque = deque(maxlen=HISTORY)
        self.seq = 0
        self.counts = {"checked": 0, "refused": 0, "rebuilt": 0, "unproved": 0}
        self.budget = BUDGET
        self.last: dict | None = None  # the newest entry

    # ---- the proof over the desired state -------------------------------------------------

    def stale(self) -> None:
        """The desired state changed other than through `check`: rebuild before the next."""
        self.proof = None

    def _build(self, core) -> None:
        t0 = self.clock()
        placement = core._placement()
        tenants = {n: (e.tenant, e.alloc) for n, e in core.tenants.items()}
        flows = {h: list(core.desired.get(h, {}).values()) for h in placement}
        net = vf.network_from_compiled(placement, tenants, flows)
        net.tenants = {n: _unpaired(f) for n, f in net.tenants.items()}
        self.proof = Sliced(net, workers=1, clock=self.clock)
        for n, (t, _a) in tenants.items():
            if size(t) > self.budget:
                self.proof.skip_tenant(n)
        rep = self.proof.run()
        self._desired = (core.desired, core.desired.generation)
        self._known = {v.key() for v in rep.violations}
        self.counts["rebuilt"] += 1
        LOG.info("change proof built over %d hosts, %d tenants, %d flows in %.0f ms (%d findings kept)",
                 len(placement), len(tenants), sum(len(x) for x in flows.values()),
                 (self.clock() - t0) * 1000, len(self._known))

    # ---- a change -----------------------------------------------------------------------

    def check(self, core, name: str, tenant, alloc, delta: dict, action: str = "") -> dict | None:
        """Prove the tenant `name`'s new intent (`tenant`, `alloc`, and its flows as
        `delta`: host -> HostDelta) before it is committed. Raises ApiError (naming each violation as `verify.KIND`); returns the
        entry recorded (with warnings), or None when the guard is off."""
        if not self.enabled:
            return None
        if self.proof is None or self._desired != (core.desired, core.desired.generation):
            self._build(core)
        t0 = self.clock()
        placement = core._placement()
        deltas = {h: d for h, d in delta.items() if d.removed or d.added or d.renamed or d.extras_changed}
        facts, ports = vf.tenant_facts(tenant, alloc, placement)
        facts = _unpaired(facts)
        cost = size(tenant)
        too_large = cost > self.budget
        self.proof.skip_tenant(name, too_large)
        try:
            rep = self.proof.update_delta(name, deltas, facts, ports)  # the compiler's diff, as it is
        except Exception:  # noqa: BLE001 - the proof cannot say: the change is not held back by its bug
            LOG.exception("verify before install of %s failed; the change goes ahead unproved", name)
            self.stale()
            return self._record(name, action, "error", self.clock() - t0, [], [])
        new = [v for v in rep.violations if v.key() not in self._known]
        blocking = [v for v in new if v.kind in BLOCKING]
        warnings = [v for v in new if v.kind not in BLOCKING]
        secs = self.clock() - t0
        if blocking:
            self.stale()  # the proof holds the refused flows: built again from the desired state
            others = {t for v in blocking for t in v.tenants if t != name}
            self._record(name, action, "refused", secs, blocking, warnings, others)
            raise ApiError(
                f"tenant {name}: the change would break isolation ({len(blocking)} violation(s) found by verify "
                "before install); nothing was changed",
                [(f"verify.{v.kind}", _redact(v.format(), others)) for v in blocking[:5]]) from None
        self._known = {v.key() for v in rep.violations}
        if too_large:
            return self._record(name, action, "unproved", secs, [], warnings,
                                note=f"not proved before install: {cost} (ports per switch, squared and "
                                     f"summed) is over the budget of {self.budget}; `nvctl verify` proves it "
                                     "once installed")
        return self._record(name, action, "ok", secs, [], warnings)

    def committed(self, core) -> None:
        """The change the last `check` passed is in the desired state now."""
        if self.proof is not None:
            self._desired = (core.desired, core.desired.generation)

    def _record(self, name, action, result, secs, blocking, warnings, others=frozenset(), note=None) -> dict:
        with self.lock:
            self.seq += 1
            self.counts["checked"] += 1
            if result in ("refused", "unproved"):
                self.counts[result] += 1
            e = {"seq": self.seq, "time": time.time(), "tenant": name, "action": action, "result": result,
                 "ms": round(secs * 1000, 2), "violations": [v.to_json() for v in blocking],
                 "warnings": [{"kind": v.kind, "message": v.message} for v in warnings],
                 **({"note": note} if note else {}),
                 "_others": frozenset(others)}
            self.history.append(e)
            self.last = e
            return {k: v for k, v in e.items() if k != "_others"}

    def since(self, after: int = 0, tenant: str | None = None) -> dict:
        """The results after sequence `after` (of `tenant` only, when given)."""
        with self.lock:
            rows = [e for e in self.history if e["seq"] > after and (tenant is None or e["tenant"] == tenant)]
            seq, counts = self.seq, dict(self.counts)
        out = []
        for e in rows:
            others = e["_others"]
            e = {k: v for k, v in e.items() if k != "_others"}
            if tenant is not None:  # a tenant's view: the other tenants a counterexample names are not named
                e["violations"] = [_redact_json(v, others) for v in e["violations"]]
            out.append(e)
        return {"enabled": self.enabled, "seq": seq, "changes": out, "counts": counts if tenant is None else None}


def size(tenant) -> int:
    """What a tenant's proof grows with: its ports per switch, squared and summed."""
    per: dict = {}
    for p in tenant.ports:
        per[p.switch] = per.get(p.switch, 0) + 1 + (p.pending is not None)
    return sum(n * n for n in per.values())


def _unpaired(facts):
    """A tenant's facts without its reachable pairs: the guard proves what refuses a
    change (no packet leaves its tenant, no shared state, no connection its policies
    deny); whether each pair of its ports still reaches the other is `nvctl verify`'s,
    and costs a composition per ordered pair (~1-2 ms each: 9,900 pairs, ~12 s, for a
    100-port switch)."""
    if not facts.reach_pairs and not facts.reach_pairs6:
        return facts
    return dataclasses.replace(facts, reach_pairs=frozenset(), reach_pairs6=frozenset())


def _redact(text: str, others: set) -> str:
    """A counterexample as the changing tenant may read it: other tenants unnamed (as
    whole names: a tenant called "s" leaves the word "ports" alone)."""
    for o in sorted(others, key=len, reverse=True):
        text = re.sub(rf"(?<![\w.'-]){re.escape(o)}(?![\w.-])", "(another tenant)", text)
    return text


def _redact_json(d: dict, others: set) -> dict:
    d = dict(d)
    d["tenants"] = [t if t not in others else "(another tenant)" for t in d["tenants"]]
    d["message"] = _redact(d["message"], others)
    return d
