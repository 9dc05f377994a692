"""A planted compiler bug, for the tests of verify before install (controller.server.guard):
a tenant port whose name starts with "planted" gets one extra flow on its host that
sends its packets to `ofport` there, a port of another tenant. The guard must refuse
the change that makes such a port, with nothing stored or installed.

Unit tests call `plant(host, ofport)` (it returns the undo); the integration test starts
the lab's controller with this module imported first and NVCTL_PLANT=HOST:OFPORT in its
environment (scenarios.lab.spawn_controller's `preamble`)."""
import os

from controller.compile.pipeline import PIPELINE
from controller.layers.switching import Switching
from controller.server import intent
from dataplane.match_action import Flow, Match, Output

_real = intent.compile_tenant


def planted_compile(host: str, ofport: int):
    def compile_tenant(t, alloc, hosts, previous=None):
        flows = _real(t, alloc, hosts, previous)
        for p in t.ports:
            if p.name.startswith("planted") and p.host == host:
                leak = Flow(PIPELINE["l2_lookup"], 200, Match.of(reg13=alloc.vni[p.switch], eth_src=p.mac),
                            (Output(ofport),), layer_id=Switching.id, tenant_id=alloc.tenant_id, rule="planted: a compiler bug")
                flows = {**flows, host: [*flows.get(host, ()), leak]}
        return flows
    return compile_tenant


def plant(host: str, ofport: int):
    intent.compile_tenant = planted_compile(host, ofport)

    def undo():
        intent.compile_tenant = _real
    return undo


if os.environ.get("NVCTL_PLANT"):
    _h, _o = os.environ["NVCTL_PLANT"].rsplit(":", 1)
    plant(_h, int(_o))
