"""The package's import graph: which module may import which (read from the source, no imports).

Edges are the imports a module makes when it is imported (top level, not inside functions or
``if TYPE_CHECKING:``), with the packages above each imported module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ikkuna_tune"
#: modules that import nothing of the package (what everything else may build on)
LEAVES = ("ikkuna_tune.checks", "ikkuna_tune.keys", "ikkuna_tune.freezing")


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in PACKAGE.rglob("*.py")}


def _imported(path: Path) -> set[str]:
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(node.orelse)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(ast.parse(path.read_text()).body)
    return found


def _edges(module: str) -> set[str]:
    """The package's modules that importing ``module`` imports (its own packages left out)."""
    out = set()
    for target in _imported(MODULES[module]):
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name in MODULES and not (module == name or module.startswith(name + ".")):
                out.add(name)
    out.discard("ikkuna_tune")  # the package __init__ imports nothing at its top
    return out


GRAPH = {module: _edges(module) for module in MODULES}


def test_no_import_cycle() -> None:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for other in sorted(GRAPH[module]):
            if state.get(other) == 1:
                cycles.append([*stack[stack.index(other) :], other])
            elif other not in state:
                visit(other)
        stack.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_package_init_imports_nothing_of_the_package() -> None:
    assert not {m for m in _imported(MODULES["ikkuna_tune"]) if m.startswith("ikkuna_tune.")}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_the_library_never_imports_experiments_or_tests(module: str) -> None:
    imported = _imported(MODULES[module])
    assert not {m for m in imported if m.split(".")[0] in ("experiments", "tests")}


@pytest.mark.parametrize("module", LEAVES)
def test_leaves_import_nothing_of_the_package(module: str) -> None:
    assert GRAPH[module] == set()


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if m.startswith("ikkuna_tune.functional"))
)
def test_the_maths_imports_only_maths_and_checks(module: str) -> None:
    allowed = {"ikkuna_tune.functional", "ikkuna_tune.checks"}
    assert {m for m in GRAPH[module] if not any(m.startswith(a) for a in allowed)} == set()


def test_the_check_sees_a_cycle(monkeypatch) -> None:
    keys, checks = "ikkuna_tune.keys", "ikkuna_tune.checks"
    monkeypatch.setitem(GRAPH, keys, {checks})
    monkeypatch.setitem(GRAPH, checks, {keys})
    with pytest.raises(AssertionError, match=f"{checks} -> {keys} -> {checks}"):
        test_no_import_cycle()
