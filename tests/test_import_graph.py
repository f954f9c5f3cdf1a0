"""The package's import graph: which module may import which (read from the source, no imports).

Edges are the imports a module makes when it is imported (top level, not inside functions or
``if TYPE_CHECKING:``), with the packages above each imported module. The library never imports
its examples (:mod:`ikkuna_tune.examples`) at all, not even inside a function, but for the
``demo`` command of the command line.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ikkuna_tune"
#: modules that import nothing of the package (what everything else may build on)
LEAVES = (
    "ikkuna_tune.checks",
    "ikkuna_tune.keys",
    "ikkuna_tune.freezing",
    "ikkuna_tune.messages",  # the message types
    "ikkuna_tune.model_access",
)
EXAMPLES = "ikkuna_tune.examples"
#: (module, function) of the library that may import the examples: the demo command, as it runs
IMPORTS_EXAMPLES = {("ikkuna_tune.cli", "_demo")}


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


def _imports_anywhere(module: str, tree: ast.AST) -> set[tuple[str, str]]:
    """(enclosing function or '', imported module) for every import in ``tree``, at any depth:
    ``import``, ``from ... import`` (relative ones resolved) and ``importlib.import_module`` or
    ``__import__`` of a literal name."""
    package = module.split(".") if _is_package(module) else module.split(".")[:-1]
    found: set[tuple[str, str]] = set()

    def visit(node: ast.AST, function: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        if isinstance(node, ast.Import):
            found.update((function, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            source = ".".join([*base, *([node.module] if node.module else [])])
            found.add((function, source))
            found.update((function, f"{source}.{alias.name}") for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and ast.unparse(node.func) in ("importlib.import_module", "import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add((function, node.args[0].value))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, "")
    return found


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


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


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if m != EXAMPLES and not m.startswith(EXAMPLES + "."))
)
def test_the_library_never_imports_its_examples(module: str) -> None:
    imports = _imports_anywhere(module, ast.parse(MODULES[module].read_text()))
    found = {
        (function, name)
        for function, name in imports
        if name == EXAMPLES or name.startswith(EXAMPLES + ".")
    }
    assert {(module, function) for function, _ in found} <= IMPORTS_EXAMPLES, sorted(found)


def test_the_examples_check_sees_every_kind_of_import() -> None:
    source = (
        "import ikkuna_tune.examples.models\n"
        "def f():\n"
        "    from .. import examples\n"
        "    from ..examples.data import load_dataset\n"
        "    importlib.import_module('ikkuna_tune.examples.demo')\n"
    )
    found = _imports_anywhere("ikkuna_tune.tune.session", ast.parse(source))
    assert {(f, n) for f, n in found if n.startswith(EXAMPLES)} == {
        ("", "ikkuna_tune.examples.models"),
        ("f", "ikkuna_tune.examples"),
        ("f", "ikkuna_tune.examples.data"),
        ("f", "ikkuna_tune.examples.data.load_dataset"),
        ("f", "ikkuna_tune.examples.demo"),
    }
    # the demo command does import them, as it runs
    cli = _imports_anywhere("ikkuna_tune.cli", ast.parse(MODULES["ikkuna_tune.cli"].read_text()))
    assert ("_demo", "ikkuna_tune.examples.demo") in cli


def test_the_data_flows_one_way() -> None:
    """The bus knows neither the Exporter nor the subscribers; subscribers do not know the
    Exporter (they get a ModelAccess); the Exporter does not import the subscribers."""
    assert not GRAPH["ikkuna_tune.bus"] & {"ikkuna_tune.exporter", "ikkuna_tune.subscribers"}
    for module in MODULES:
        if module.startswith("ikkuna_tune.subscribers"):
            assert "ikkuna_tune.exporter" not in GRAPH[module], module
    assert not any(m.startswith("ikkuna_tune.subscribers") for m in GRAPH["ikkuna_tune.exporter"])


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


_IMPORT_ALONE = """
import importlib, json, sys
failed = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m.split(".")[0] == "ikkuna_tune"]:
        del sys.modules[loaded]  # each module starts from a package not yet imported
    try:
        importlib.import_module(name)
    except Exception as error:
        failed[name] = repr(error)
print(json.dumps(failed))
"""


def test_each_module_imports_alone() -> None:
    """An import circle shows up as an ImportError when its modules are imported in the wrong
    order: every module is imported first, on its own, in one fresh interpreter."""
    names = sorted(MODULES)
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALONE, json.dumps(names)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}
