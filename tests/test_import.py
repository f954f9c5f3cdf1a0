"""``import ikkuna_tune`` loads nothing heavy, not even torch (its names load on first use); the
training side loads torch and nothing heavy besides (Ray only in trials and the scheduler,
plotting and data frames only where they are used)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("ray", "pandas", "matplotlib", "plotly", "tensorboardX", "sklearn")
TORCH_TOO = ("torch", *HEAVY)


def _heavy_modules_after(code: str) -> list[str]:
    """The HEAVY packages in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = (
        f"{code}\nimport json, sys\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_of_the_package_loads_not_even_torch() -> None:
    probe = (
        "import sys, ikkuna_tune as ik\n"
        f"print(sorted(m for m in {TORCH_TOO!r} if m in sys.modules))\n"
        "ik.tune, ik.compare\n"  # submodules stay reachable as attributes
        "assert callable(ik.watch) and 'torch' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_probe_sees_a_heavy_import() -> None:
    assert _heavy_modules_after("import ikkuna_tune, tensorboardX") == ["tensorboardX"]


@pytest.mark.parametrize(
    "code",
    [
        "import ikkuna_tune",
        "import ikkuna_tune.tune.instrument",
        "import ikkuna_tune as ik; ik.NormSubscriber('weights'); ik.Exporter",
    ],
)
def test_import_loads_nothing_heavy(code: str) -> None:
    assert _heavy_modules_after(code) == []
