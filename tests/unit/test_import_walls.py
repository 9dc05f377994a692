"""The walls between the project's rooms, checked over the import graph.

Every `import` and `from ... import` in the project's sources counts, at module level or
inside a function: a lazy import still ties two rooms together. A room is a sub-package of
controller/ (controller/compile, controller/server, ...) or a top-level package (tep,
topology, dataplane, scenarios, bench, tests).
"""
from __future__ import annotations

import ast
import os

import networkx as nx

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("controller", "tep", "topology", "dataplane", "scenarios", "bench", "tests")

# What each room may import (besides itself and the standard library / third parties).
BASE = {"dataplane", "topology"}
MAY_IMPORT = {
    "dataplane": set(),
    "topology": {"dataplane"},
    "controller.spaces": BASE,
    "controller.layers": BASE | {"controller.spaces"},
    "controller.compile": BASE | {"controller.spaces", "controller.layers"},
}
BELOW_SERVER = ("controller.spaces", "controller.layers", "controller.compile", "controller.switch",
                "controller.state", "controller.packetin", "controller.analysis", "controller.transport",
                "controller.bgp")
ABOVE = ("controller.server", "controller.client", "controller.runtimes")
# The client reaches the server only through the API: none of the server's rooms.
CLIENT_MUST_NOT = ("controller.server", "controller.state", "controller.switch", "controller.packetin",
                   "controller.compile")


def room(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "controller" and len(parts) > 2:
        return ".".join(parts[:2])
    if parts[0] == "controller" and len(parts) == 2 and os.path.isdir(os.path.join(ROOT, *parts)):
        return module
    return parts[0]


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def _resolve(name: str, known: set[str]) -> str | None:
    """The project module an imported name lands in (a package's submodule when
    `from pkg import mod` names one), else None for outside code."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, list[tuple[str, int, bool]]]:
    """{module: [(imported project module, line, at module level)]} over the sources."""
    files = {}
    for pkg in PACKAGES:
        for d, dirs, names in os.walk(os.path.join(ROOT, pkg)):
            dirs[:] = [x for x in dirs if not x.startswith((".", "__pycache__"))]
            for n in names:
                if n.endswith(".py"):
                    files[_module_name(os.path.join(d, n))] = os.path.join(d, n)
    known = set(files)
    graph: dict[str, list] = {}
    for mod, path in files.items():
        tree = ast.parse(open(path).read(), path)
        top = {id(n) for n in tree.body}
        out = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                got = _resolve(t, known)
                if got is not None and got != mod:
                    out.append((got, node.lineno, id(node) in top))
        graph[mod] = out
    return graph


def violations(graph: dict) -> list[str]:
    """Every arrow that crosses a wall, as 'module:line -> module (rule)'."""
    bad = []
    for mod, edges in graph.items():
        src = room(mod)
        for dst_mod, line, at_top in edges:
            dst = room(dst_mod)
            if dst == src:
                continue
            where = f"{mod}:{line} -> {dst_mod}"
            if src in MAY_IMPORT and dst not in MAY_IMPORT[src]:
                bad.append(f"{where} ({src} may import only {sorted(MAY_IMPORT[src])})")
            if src in BELOW_SERVER and dst in ABOVE:
                bad.append(f"{where} (nothing below the server imports {dst})")
            if src == "controller.client" and dst in CLIENT_MUST_NOT:
                bad.append(f"{where} (the client reaches the server only through the API)")
            if src in ("tep",) and dst.startswith("controller") and dst != "controller.spaces":
                bad.append(f"{where} (a host's side uses only the controller's number spaces)")
            if dst == "tests" and src != "tests":
                bad.append(f"{where} (nothing imports tests/)")
            if dst == "scenarios" and src not in ("scenarios", "tests", "bench"):
                if not (room(mod) == "controller.client" and not at_top):
                    bad.append(f"{where} (only the CLI's lab commands import scenarios/, where they run)")
    return bad


def cycles(graph: dict) -> list[list[str]]:
    g = nx.DiGraph()
    for mod, edges in graph.items():
        g.add_node(mod)
        for dst, _line, _top in edges:
            g.add_edge(mod, dst)
    return [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]


def test_no_arrow_crosses_a_wall():
    assert violations(import_graph()) == []


def test_no_import_cycle_anywhere():
    assert cycles(import_graph()) == []


def test_the_walls_catch_planted_arrows_and_cycles():
    """The checks themselves: each planted mistake is reported."""
    planted = {
        "controller.compile.compiler": [("controller.server.core", 3, True), ("tep.ovs", 4, True)],
        "controller.layers.acl": [("controller.compile.allocator", 5, True)],
        "controller.switch.reconciler": [("controller.client.cli", 6, False)],
        "controller.client.cli": [("controller.state.store", 7, True), ("scenarios.lab", 8, True),
                                  ("scenarios.demo", 9, False)],
        "bench.pure": [("tests.unit.fixtures", 10, True)],
        "bench.run": [("bench.cni", 11, True)],
        "bench.cni": [("bench.run", 12, False)],
    }
    bad = violations(planted)
    for arrow in ("controller.compile.compiler:3 -> controller.server.core",
                  "controller.compile.compiler:4 -> tep.ovs",
                  "controller.layers.acl:5 -> controller.compile.allocator",
                  "controller.switch.reconciler:6 -> controller.client.cli",
                  "controller.client.cli:7 -> controller.state.store",
                  "controller.client.cli:8 -> scenarios.lab",
                  "bench.pure:10 -> tests.unit.fixtures"):
        assert any(b.startswith(arrow) for b in bad), arrow
    assert not any("scenarios.demo" in b for b in bad)  # the CLI's lab command, imported where it runs
    assert cycles(planted) == [["bench.cni", "bench.run"]]


def test_every_room_says_what_lives_there():
    for d in sorted(os.listdir(os.path.join(ROOT, "controller"))):
        init = os.path.join(ROOT, "controller", d, "__init__.py")
        if os.path.isfile(init):
            doc = ast.get_docstring(ast.parse(open(init).read()))
            assert doc and "import" in doc, f"controller/{d}/__init__.py: say what lives here and what it may import"
