"""The package's layout: its modules import each other in one direction only, and the lower layers stay lower."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import gddim

PACKAGE = Path(gddim.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The package modules that a file imports anywhere in it (module level and inside functions alike)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            stem = ".".join(filter(None, [base if node.level else "", node.module or ""]))
            targets = [stem] + [f"{stem}.{alias.name}" for alias in node.names]  # `from . import x` imports x
        else:
            continue
        found.update(target for target in targets if target in known)
    found.discard(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: imported_modules(path, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of imports, as the list of modules along it (the first repeated at the end), or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once all it reaches is explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert {"gddim.training", "gddim.checkpoints", "gddim.generation", "gddim.cli.train"} <= set(graph)
    assert "gddim.checkpoints" in graph["gddim.evaluation"] and "gddim.generation" in graph["gddim.training"]
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("source, cycle", [
    ("from . import b", ["gddim.a", "gddim.b", "gddim.a"]),  # relative, `from . import name`
    ("import gddim.b", ["gddim.a", "gddim.b", "gddim.a"]),  # absolute
    ("def f():\n    from .b import x", ["gddim.a", "gddim.b", "gddim.a"]),  # inside a function
    ("from .c import x", None),
])
def test_the_circle_finder_sees_every_kind_of_import(tmp_path, monkeypatch, source, cycle):
    root = tmp_path / "gddim"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "a.py").write_text(source)
    (root / "b.py").write_text("from .a import y")
    (root / "c.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", root)
    assert find_cycle(import_graph()) == cycle


@pytest.mark.parametrize("module", ["gddim.checkpoints", "gddim.generation", "gddim.evaluation"])
def test_loading_or_sampling_a_model_does_not_import_training(module):
    source = str(PACKAGE.parent)
    code = f"import sys; import {module}; print(sorted(m for m in sys.modules if m.startswith('gddim.')))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": source, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = proc.stdout.strip()
    assert module in loaded and "'gddim.training'" not in loaded


MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60


def oversized(root: Path) -> list[str]:
    """Modules over MAX_MODULE_LINES lines and functions over MAX_FUNCTION_LINES lines (decorators not counted)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        name = path.relative_to(root.parent).as_posix()
        if (lines := len(source.splitlines())) > MAX_MODULE_LINES:
            found.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(source, str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    return found


def test_no_module_or_function_is_too_long():
    found = oversized(PACKAGE)
    assert not found, "too long, split by job: " + "; ".join(found)


def test_the_size_check_names_long_modules_and_functions(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))  # with its def line, one too many
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "long.py").write_text(f"def long():\n{body}\n\n\ndef short():\n    return 1\n")
    (tmp_path / "pkg" / "big.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    (tmp_path / "pkg" / "fits.py").write_text("x = 1\n" * MAX_MODULE_LINES)
    assert oversized(tmp_path / "pkg") == ["pkg/big.py: 451 lines", "pkg/long.py:1 long: 61 lines"]
