"""Every public class and function of the library shows how it is used in a runnable example.

Read from the source, without importing the modules: each class or function defined at module
level in ``ikkuna_tune/`` whose name does not start with ``_`` has ``>>>`` in its docstring,
which ``tests/test_doctests.py`` then runs. The demo and model zoo in ``ikkuna_tune/examples/``
and the command line (``ikkuna_tune/cli.py``, shown by ``--help``) are left out.
"""

from __future__ import annotations

import ast
import doctest
from collections.abc import Iterator
from pathlib import Path

import ikkuna_tune

PACKAGE = Path(ikkuna_tune.__file__).parent
ROOT = PACKAGE.parent

_LEFT_OUT_DIRS = ("ikkuna_tune/examples/",)
_LEFT_OUT_FILES = ("ikkuna_tune/cli.py",)

Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def _modules() -> list[str]:
    paths = (path.relative_to(ROOT).as_posix() for path in PACKAGE.rglob("*.py"))
    return sorted(
        path
        for path in paths
        if not path.startswith(_LEFT_OUT_DIRS) and path not in _LEFT_OUT_FILES
    )


def _is_overload(node: Definition) -> bool:
    return any(
        (isinstance(d, ast.Name) and d.id == "overload")
        or (isinstance(d, ast.Attribute) and d.attr == "overload")
        for d in node.decorator_list
    )


def _module_level(body: list[ast.stmt]) -> Iterator[Definition]:
    """The classes and functions of a module's body, also those inside top-level if/try/with."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for block in ("body", "orelse", "finalbody", "handlers"):
                for inner in getattr(node, block, []):
                    if isinstance(inner, ast.ExceptHandler):
                        yield from _module_level(inner.body)
                    else:
                        yield from _module_level([inner])


def _without_example(tree: ast.Module) -> list[Definition]:
    """The public classes and functions of ``tree`` with no ``>>>`` in their docstring."""
    return [
        node
        for node in _module_level(tree.body)
        if not node.name.startswith("_")
        and not _is_overload(node)
        and ">>>" not in (ast.get_docstring(node) or "")
    ]


def _offenders(path: str) -> list[str]:
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"), filename=path)
    return [f"{path}:{node.lineno} {node.name}" for node in _without_example(tree)]


def test_the_check_reads_the_package() -> None:
    modules = _modules()
    assert "ikkuna_tune/functional/stats.py" in modules
    assert "ikkuna_tune/cli.py" not in modules
    assert not any(path.startswith("ikkuna_tune/examples/") for path in modules)


def test_every_public_class_and_function_has_an_example() -> None:
    offenders = [offender for path in _modules() for offender in _offenders(path)]
    assert not offenders, (
        "Public classes and functions without an example (a '>>>' line in the docstring): "
        + ", ".join(offenders)
    )


def test_the_package_docstring_runs() -> None:
    # tests/test_doctests.py runs the submodules' examples; the package's own are run here
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(ikkuna_tune, optionflags=flags)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"


def test_the_check_finds_a_missing_example() -> None:
    source = (
        "from typing import overload\n"
        "def shown():\n"
        '    """Shown.\n\n    >>> shown()\n    """\n'
        "def hidden():\n"
        '    """Not shown."""\n'
        "def _private():\n"
        "    pass\n"
        "@overload\n"
        "def typed(x: int) -> int: ...\n"
        "if True:\n"
        "    class Nested:\n"
        '        """Not shown either."""\n'
    )
    names = [node.name for node in _without_example(ast.parse(source))]
    assert names == ["hidden", "Nested"]
