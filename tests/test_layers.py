"""The package's layers only import downward, and no modules import each other in a circle.

Every ``import openovis.x`` / ``from openovis.x import y`` in the package (at module level or inside a
function) is read with ``ast``. A module may import a module of a lower layer, or one of its own
top-level package; never one of a higher layer or of a sibling package at the same layer. The layer
table below is the map of CONTRIBUTING.md: a new top-level module or package must be placed in it.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

import openovis

PACKAGE = Path(openovis.__file__).resolve().parent

LAYERS: list[tuple[str, ...]] = [
    ("constants", "options", "skips"),  # leaf modules: types and constants every layer shares
    ("configuration",),
    ("ops",),
    ("modeling",),
    ("builders",),
    ("processing",),
    ("data",),
    ("inference", "convert", "plots"),
    ("training", "evaluation"),
    ("experiments",),
    ("cli", "__main__"),
]
"""Bottom to top. Packages on one row may not import each other."""

RANK = {name: i for i, row in enumerate(LAYERS) for name in row}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> set[str]:
    """Every ``openovis.*`` module that ``path`` imports (relative imports resolved)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("openovis."))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target != "openovis" and not target.startswith("openovis."):
                continue
            for alias in node.names:  # `from openovis.pkg import module` names a module, else a name
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in _all_modules() else target)
    return found


@functools.cache
def _all_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _top(module: str) -> str:
    return module.split(".")[1]


def _graph() -> dict[str, set[str]]:
    modules = _all_modules()
    graph = {}
    for name, path in modules.items():
        if name == "openovis":  # the root re-exports the public API; it sits above everything
            continue
        targets = set()
        for target in _imports(path, name):
            while target not in modules and "." in target:  # `from openovis.a.b import name`
                target = target.rpartition(".")[0]
            if target not in ("openovis", name):
                targets.add(target)
        graph[name] = targets
    return graph


def test_every_top_level_module_has_a_layer():
    unplaced = sorted({_top(m) for m in _graph()} - set(RANK))
    assert not unplaced, f"place these in tests/test_layers.py LAYERS (and CONTRIBUTING.md): {unplaced}"


def test_imports_only_look_down():
    bad = []
    for module, targets in _graph().items():
        for target in targets:
            src, dst = _top(module), _top(target)
            if src == dst:
                continue
            if RANK.get(dst, -1) >= RANK.get(src, -1):
                bad.append(f"{module} -> {target}")
    assert not bad, "upward or sideways imports:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    graph = _graph()
    cycles = []
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from openovis.training.loop import x\n", {"openovis.training.loop"}),
        ("def f():\n    import openovis.data.datasets\n", {"openovis.data.datasets"}),
        ("from . import layout\n", {"openovis.processing.layout"}),
        ("from ..modeling import ovis\n", {"openovis.modeling.ovis"}),
    ],
)
def test_import_reader_sees_every_form(tmp_path, source, expected):
    """The walker itself: function-level and relative imports are found (so the checks above can fail)."""
    path = tmp_path / "mod.py"
    path.write_text(source)
    found = _imports(path, "openovis.processing.mod")
    assert found >= expected
