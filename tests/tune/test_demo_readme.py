"""The demo as the README describes it: its output folder, one experiment per run, and the
README's compare command run on what it wrote."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tune.conftest import ROOT


def _readme_compare_command() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    lines = [line for block in blocks for line in block.splitlines()]
    (command,) = [line for line in lines if line.startswith("ikkuna-tune compare ")]
    return shlex.split(command)


def test_the_demo_writes_under_its_folder_and_the_readme_compare_command_reads_it(
    ray_session, tmp_path, monkeypatch
) -> None:
    from ikkuna_tune.cli import build_parser
    from ikkuna_tune.examples.demo import run_demo

    monkeypatch.chdir(tmp_path)
    # `ikkuna-tune demo` passes its defaults on: the same folder as run_demo's own default
    args = build_parser().parse_args(["demo", "--quick"])
    assert (args.out, args.storage_path) == ("ikkuna_demo", None)
    first = run_demo(quick=True, out_dir=args.out, storage_path=args.storage_path)
    # everything under ikkuna_demo/, Tune's results in ikkuna_demo/ray_results/ikkuna_demo
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ikkuna_demo"]
    assert Path(first["experiment"]) == tmp_path / "ikkuna_demo" / "ray_results" / "ikkuna_demo"
    assert {Path(f).parent for f in first["files"]} == {tmp_path / "ikkuna_demo"}
    assert len(first["summary"]) == 2
    # the README's compare command, run as written, from the same folder
    command = _readme_compare_command()
    assert command[0] == "ikkuna-tune"
    done = subprocess.run(
        [sys.executable, "-m", "ikkuna_tune.cli", *command[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = command[command.index("-o") + 1] if "-o" in command else "."
    assert (tmp_path / out / "summary.csv").is_file()
    # a second run is a new experiment: the first is never compared together with it (the
    # sweep itself is the one above: stopped where it would start)
    from ray import tune

    class StartedError(Exception):
        pass

    def started(*args: object, name: str, storage_path: str, **kwargs: object) -> None:
        raise StartedError(Path(storage_path) / name)

    monkeypatch.setattr(tune, "run", started)
    with pytest.raises(StartedError) as second:
        run_demo(quick=True)
    (experiment,) = second.value.args
    assert experiment == tmp_path / "ikkuna_demo" / "ray_results" / "ikkuna_demo_2"
