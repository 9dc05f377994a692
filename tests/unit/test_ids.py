"""The number spaces (controller.spaces.ids) do not meet, and the layers name their
flow priorities instead of writing numbers."""
import ast
import glob
import os

import pytest

from controller.spaces import ids
from controller.spaces.ids import SPACES, Space, check_spaces

LAYERS_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "controller", "layers")


def test_real_spaces_do_not_overlap():
    check_spaces(SPACES)  # also done at import; here it is the test's own claim
    by_kind = {}
    for s in SPACES:
        by_kind.setdefault(s.kind, []).append(s)
    for kind, spaces in by_kind.items():
        for i, a in enumerate(spaces):
            for b in spaces[i + 1:]:
                assert a.last < b.first or b.last < a.first, (kind, a, b)
    meters = {s.name for s in by_kind["meter"]}
    assert {"port rate meters", "BUM meters", "control-plane meters", "ACL log meters"} <= meters


def test_planted_overlap_raises():
    bum = next(s for s in SPACES if s.name == "BUM meters")
    planted = Space("meter", "planted", bum.last, bum.last + 10)
    with pytest.raises(ValueError, match="overlaps"):
        check_spaces(SPACES + (planted,))
    with pytest.raises(ValueError, match="overlaps"):
        check_spaces([Space("zone", "a", 1, 10), Space("zone", "b", 10, 20)])
    # adjacent is not overlapping, and another kind's number is another number
    check_spaces([Space("zone", "a", 1, 10), Space("zone", "b", 11, 20), Space("group", "c", 1, 10)])


def test_range_beyond_the_protocol_or_empty_raises():
    with pytest.raises(ValueError, match="beyond"):
        check_spaces([Space("zone", "too big", 1, 0x10000)])
    with pytest.raises(ValueError, match="empty"):
        check_spaces([Space("meter", "backwards", 10, 9)])


def test_meter_bases_are_the_ones_the_layers_use():
    from controller.layers.acl import log_meter
    from controller.layers.qos import bum_meter_for, meter_for
    from controller.layers.services import control_meter

    spaces = {s.name: s for s in SPACES}
    assert bum_meter_for(ids.MAX_OFPORT, None).meter_id in spaces["BUM meters"]
    assert bum_meter_for(ids.FIRST_OFPORT, None).meter_id in spaces["BUM meters"]
    assert meter_for(ids.MAX_OFPORT, 1).meter_id in spaces["port rate meters"]
    assert control_meter(ids.MAX_TENANT_ID).meter_id in spaces["control-plane meters"]
    assert log_meter(ids.MAX_TENANT_ID).meter_id in spaces["ACL log meters"]
    assert ids.TUNNEL_OFPORT in spaces["infrastructure ports"]


def _priority_args():
    """(file, line, priority expression) of every flow a layer module builds: calls of
    `<emitter>.flow(table, priority, match, ...)` and `Flow(table, priority, ...)`."""
    out = []
    for path in sorted(glob.glob(os.path.join(LAYERS_DIR, "*.py"))):
        tree = ast.parse(open(path).read(), path)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if name not in ("flow", "Flow"):
                continue
            prio = node.args[1] if len(node.args) > 1 else \
                next((k.value for k in node.keywords if k.arg == "priority"), None)
            assert prio is not None, f"{os.path.basename(path)}:{node.lineno}: a flow without a priority"
            out.append((os.path.basename(path), node.lineno, prio))
    return out


def test_layers_name_their_priorities():
    found = _priority_args()
    assert len(found) >= 50, f"found only {len(found)} flow calls in the layers: is the scan still right?"
    bare = []
    for path, line, prio in found:
        names = [n for n in ast.walk(prio) if isinstance(n, (ast.Name, ast.Attribute, ast.Call))]
        if not names:  # a literal, or arithmetic on literals only
            bare.append(f"{path}:{line}: priority {ast.unparse(prio)}")
    assert not bare, "flow priorities in controller/layers must be named constants:\n" + "\n".join(bare)


def test_layers_import_only_lower_rooms():
    """Layers take from dataplane/, topology/, controller/spaces/ and each other: never
    from the compiler (which imports them) or anything above it."""
    wrong = []
    for path in sorted(glob.glob(os.path.join(LAYERS_DIR, "*.py"))):
        tree = ast.parse(open(path).read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            else:
                continue
            for m in modules:
                parts = m.split(".")
                if parts[0] in ("tep", "scenarios", "bench", "tests") or \
                        parts[0] == "controller" and parts[1:2] not in (["spaces"], ["layers"]):
                    wrong.append(f"{os.path.basename(path)}:{node.lineno}: {m}")
    assert not wrong, "layers import from above their room:\n" + "\n".join(wrong)
