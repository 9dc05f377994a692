"""The change path's delta (controller.compile.desired.HostDelta): conflicts and swap
over only the flows a tenant's change adds and removes give what the whole-tenant
`conflicts` and `swap` give."""
import random

from controller.compile.desired import DesiredState, HostDelta, tenant_delta
from controller.compile.pipeline import PIPELINE
from dataplane.match_action import Flow, Match, Meter, Output


T = PIPELINE.tables[3]


def flow(tid: int, key: int, out: int, rule: str = "r", rate: int = 0) -> Flow:
    acts = ((Meter(100 + key, rate, rate),) if rate else ()) + (Output(out),)
    return Flow(T, 100, Match.of(reg13=key), acts, 2, tid, rule)


def state(d: DesiredState) -> dict:
    return {h: sorted((f.ofctl(), f.rule, str(f.actions)) for f in fl.values()) for h, fl in d.items()}


def test_delta_conflicts_and_swap_equal_the_whole_tenant_ones():
    rng = random.Random(3)
    seen = {"conflicts": 0, "swaps": 0}
    for trial in range(300):
        infra = {"hv1": [flow(0, 900, 1)], "hv2": []}
        other = {h: [flow(1, k, rng.randint(1, 3)) for k in rng.sample(range(20), 4)] for h in ("hv1", "hv2")}
        a, _ = DesiredState.build(infra, [other])
        b, _ = DesiredState.build(infra, [other])

        def gen():
            rate = {k: rng.choice((5, 9)) for k in range(26)}  # a meter's band, the same wherever it is used

            def one():
                k = rng.randint(0, 25)
                return flow(2, k, rng.randint(1, 3), rng.choice("xy"), rate[k] if k % 3 == 0 else 0)
            return {h: [one() for _ in range(rng.randint(0, 6))]
                    for h in rng.sample(["hv1", "hv2", "hv3"], rng.randint(0, 3))}
        old = {}
        for step in range(4):
            new = gen()
            whole = a.conflicts(old, new)
            delta = tenant_delta(old, new)
            part = b.conflicts_in(delta)
            assert {(c.host, c.new.identity) for c in whole} == {(c.host, c.new.identity) for c in part}, (trial, step)
            seen["conflicts" if whole else "swaps"] += 1
            if whole:
                continue
            changed_a = a.swap(old, new)
            changed_b = b.apply_delta(delta)
            assert changed_a == changed_b, (trial, step)
            assert state(a) == state(b), (trial, step)
            old = {h: d.flows for h, d in delta.items() if d.flows}
    assert seen["conflicts"] > 100 and seen["swaps"] > 300, seen


def test_a_kept_flow_is_the_object_already_held_unless_its_band_or_rule_moved():
    o1, o2 = flow(2, 1, 1), flow(2, 2, 1, rate=5)
    d = HostDelta([o1, o2], [flow(2, 1, 1), flow(2, 2, 1, rate=5), flow(2, 3, 1)])
    assert d.flows[0] is o1 and d.flows[1] is o2 and [f.match for f in d.added] == [Match.of(reg13=3)]
    assert not d.removed and not d.extras_changed
    d = HostDelta([o1, o2], [flow(2, 1, 1, rule="renamed"), flow(2, 2, 1, rate=9)])
    assert d.extras_changed and d.flows[0] is not o1 and d.renamed[0].rule == "renamed"
    assert not d.added and not d.removed
