"""The `ikkuna-tune` command line without Ray (hand-written experiment files).

End to end on a real Tune run: tests/tune/test_compare_experiment.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from ikkuna_tune import compare
from ikkuna_tune.cli import main
from tests.experiment_files import handmade, write_trial


def _one_error_line(capsys: pytest.CaptureFixture[str], command: str, *fragments: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ikkuna-tune {command}: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_compare_end_to_end(tmp_path, capsys) -> None:
    experiment = handmade(tmp_path)
    out = tmp_path / "out"
    argv = ["compare", str(experiment), "--metric", "sim", "--color-by", "model/width"]
    assert main([*argv, "--summary-metric", "loss", "--mode", "min", "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".ikkuna_compare.json",  # what this comparison wrote (a later one removes only those)
        "decisions.csv",
        "freeze_timeline.png",
        "layers_sim.png",
        "report.html",
        "summary.csv",
    ]
    table = pd.read_csv(out / "summary.csv")
    assert table["trial_id"].tolist() == ["aaaaa_00000", "aaaaa_00001", "aaaaa_00002"]
    assert table["best_loss"].tolist() == pytest.approx([0.51, 1.1, 0.25])
    printed = capsys.readouterr().out
    assert "best_loss" in printed and "aaaaa_00002" in printed and "stem" in printed


def test_compare_prints_the_schedulers_decisions(tmp_path, capsys) -> None:
    experiment = handmade(tmp_path)
    assert main(["compare", str(experiment), "--metric", "sim", "-o", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out.splitlines()
    header = printed.index("scheduler decisions:")
    summary_header = printed[0].split()
    assert summary_header[summary_header.index("stopped_early") :] == [
        "stopped_early",
        "stopped_by",
        "frozen_layers",
        "frozen_fraction",
        "compute_saved",
    ]  # each freeze's reason is in the decisions below
    assert "stuck: no progress and no layer moving at report 2 (progress=0.004)" in printed[2]
    assert printed[header + 1].split() == [
        "trial_id",
        "iteration",
        "action",
        "layer",
        "rule",
        "values",
        "in_force",
        "carried_out",
    ]
    assert printed[header + 2].split() == [
        "aaaaa_00000",
        "2",
        "freeze",
        "stem",
        "converged",
        "similarity=0.995,",
        "distance_from_init=0.12,",
        "live_fraction=1,",
        "metric_gain=0",
        "True",
        "True",
    ]
    stop = " ".join(printed[header + 3].split())
    assert (
        stop == "aaaaa_00001 2 stop - stuck: no progress and no layer moving progress=0.004 True -"
    )
    assert printed[header + 4] == f"wrote {tmp_path / 'o' / 'layers_sim.png'}"


def test_compare_options_reach_compare_experiment(monkeypatch, tmp_path) -> None:
    calls: list[dict[str, Any]] = []

    def fake(experiment: str, out: str, **kwargs: Any) -> compare.Comparison:
        calls.append(kwargs)
        return compare.Comparison(summary=pd.DataFrame({"frozen_layers": []}), files=[])

    monkeypatch.setattr(compare, "compare_experiment", fake)
    assert main(["compare", str(tmp_path)]) == 0
    assert {k: calls[-1][k] for k in ("style_by", "sharey", "budget", "html")} == {
        "style_by": "auto",
        "sharey": True,
        "budget": None,
        "html": True,
    }
    argv = ["compare", str(tmp_path), "--style-by", "none", "--free-y", "--budget", "10"]
    assert main([*argv, "--no-html"]) == 0
    assert {k: calls[-1][k] for k in ("style_by", "sharey", "budget", "html")} == {
        "style_by": None,
        "sharey": False,
        "budget": 10,
        "html": False,
    }
    assert main(["compare", str(tmp_path), "--style-by", "model/width"]) == 0
    assert calls[-1]["style_by"] == "model/width"


def test_compare_with_a_budget_and_without_html(tmp_path, capsys) -> None:
    experiment = handmade(tmp_path)
    out = tmp_path / "out"
    argv = ["compare", str(experiment), "--metric", "sim", "--budget", "10", "--no-html"]
    assert main([*argv, "-o", str(out)]) == 0
    assert not (out / "report.html").exists()
    table = pd.read_csv(out / "summary.csv").set_index("trial_id")
    # aaaaa_00001 stopped after 2 of 10 iterations; aaaaa_00000 froze a quarter for 2 of 4
    assert table["compute_saved"].tolist() == [0.125, 0.8, 0.0]
    assert main(["compare", str(experiment), "--budget", "0"]) == 2
    assert "--budget: expected a positive integer but got '0'" in capsys.readouterr().err


def test_compare_a_metric_without_values_is_one_line(tmp_path, capsys) -> None:
    experiment = tmp_path / "sweep"
    write_trial(
        experiment, "train_t0", {"lr": 0.1}, [{"training_iteration": 1, "acc": None, "loss": 1.0}]
    )
    assert main(["compare", str(experiment), "--metric", "acc", "-o", str(tmp_path / "o")]) == 2
    _one_error_line(capsys, "compare", "Metric 'acc' was reported but has no values in any trial")


def test_compare_run_inside_the_experiment_titles_the_report_with_its_name(
    tmp_path, monkeypatch
) -> None:
    experiment = handmade(tmp_path)
    monkeypatch.chdir(experiment)
    assert main(["compare", ".", "--metric", "sim", "-o", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "report.html").read_text()
    assert f"<title>ikkuna_tune comparison: {experiment.name}</title>" in page


def test_compare_color_by_none_and_default_out_dir(tmp_path, monkeypatch) -> None:
    experiment = handmade(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["compare", str(experiment), "--metric", "loss", "--color-by", "none"]) == 0
    assert (tmp_path / "layers_loss.png").exists() and (tmp_path / "summary.csv").exists()
    assert "best_iteration" not in pd.read_csv(tmp_path / "summary.csv").columns


def test_compare_errors_are_one_line_with_exit_code_2(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main(["compare", str(tmp_path / "missing"), "-o", str(out)]) == 2
    _one_error_line(capsys, "compare", "missing does not exist")

    assert main(["compare", str(tmp_path), "-o", str(out)]) == 2
    _one_error_line(capsys, "compare", "is not a Tune experiment directory")

    experiment = handmade(tmp_path)
    assert main(["compare", str(experiment), "--metric", "nope", "-o", str(out)]) == 2
    _one_error_line(capsys, "compare", "Unknown metric 'nope'; per-layer metrics: frozen, sim;")

    argv = ["compare", str(experiment), "--metric", "sim", "--color-by", "x", "-o", str(out)]
    assert main(argv) == 2
    line = _one_error_line(capsys, "compare", "config columns: lr, model/width")
    assert "error: --color-by x: Unknown color_by parameter 'x'" in line

    argv = ["compare", str(experiment), "--metric", "sim", "--summary-metric", "sim"]
    assert main([*argv, "-o", str(out)]) == 2
    line = _one_error_line(capsys, "compare", "'sim' is reported per layer")
    assert "error: --summary-metric sim: Metric 'sim'" in line  # the option that named it

    # the default --metric, which the user never typed, is named as such
    assert main(["compare", str(experiment), "--color-by", "lr", "-o", str(out)]) == 2
    line = _one_error_line(capsys, "compare", "Unknown metric 'self_similarity'")
    assert "error: --metric self_similarity (the default): Unknown metric" in line

    empty = tmp_path / "empty"
    write_trial(empty, "train_ccccc_00000_0", {"lr": 0.1}, [])
    assert main(["compare", str(empty), "-o", str(out)]) == 2
    _one_error_line(capsys, "compare", "has no results: 1 trial(s), none reported a result")
    assert not out.exists()  # nothing is written when the arguments are wrong

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the output directory should be")
    assert main(["compare", str(experiment), "--metric", "sim", "-o", str(blocked)]) == 2
    _one_error_line(capsys, "compare", "blocked")


def test_usage_errors_exit_with_2(capsys) -> None:
    assert main([]) == 2
    assert "compare" in capsys.readouterr().err
    assert main(["compare"]) == 2
    assert "EXPERIMENT_DIR" in capsys.readouterr().err
    assert main(["compare", "x", "--mode", "best"]) == 2
    assert "invalid choice: 'best'" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out


def test_verbose_shows_the_traceback(tmp_path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        main(["-v", "compare", str(tmp_path / "missing")])


@pytest.fixture
def fake_demo(monkeypatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def run_demo(**kwargs: Any) -> Any:
        calls.append(kwargs)
        if kwargs["address"] == "bad:1":
            raise ConnectionError("Could not connect to Ray at bad:1\nmore detail")
        if kwargs["address"] == "no-extra:1":
            raise ImportError('needs scikit-learn: pip install "ikkuna_tune[examples]"')
        if kwargs["quick"]:
            return "the demo summary"
        table = pd.DataFrame({"trial_id": ["t1"], "frozen_layers": [["conv1", "conv2"]]})
        return {"experiment": "/r/ikkuna_demo", "summary": table, "files": ["o/summary.csv"]}

    module = types.ModuleType("ikkuna_tune.examples.demo")
    module.run_demo = run_demo  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ikkuna_tune.examples.demo", module)
    return calls


def test_demo_passes_its_arguments(fake_demo, monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert main(["demo", "--quick", "--storage-path", str(tmp_path), "-o", "plots"]) == 0
    assert fake_demo == [
        {
            "address": "ray://head:10001",
            "quick": True,
            "storage_path": str(tmp_path),
            "out_dir": "plots",
        }
    ]
    assert "the demo summary" in capsys.readouterr().out
    monkeypatch.delenv("RAY_ADDRESS")
    assert main(["demo"]) == 0
    assert fake_demo[-1] == {
        "address": None,
        "quick": False,
        "storage_path": None,
        "out_dir": "ikkuna_demo",
    }
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].split() == ["t1", "conv1,", "conv2"]  # the summary table
    assert printed[2:] == [
        "wrote o/summary.csv",
        "experiment: /r/ikkuna_demo",
        "TensorBoard logs: tensorboard --logdir /r/ikkuna_demo",
    ]
    assert main(["demo", "--address", "bad:1"]) == 2
    _one_error_line(capsys, "demo", "Could not connect to Ray at bad:1")
    # without the examples extra: what to install, in one line
    assert main(["demo", "--address", "no-extra:1"]) == 2
    _one_error_line(capsys, "demo", 'pip install "ikkuna_tune[examples]"')


@pytest.mark.parametrize("missing", ["ikkuna_tune.examples", "ikkuna_tune.examples.demo"])
def test_demo_missing_is_one_line(missing: str, monkeypatch, capsys) -> None:
    monkeypatch.delitem(sys.modules, "ikkuna_tune.examples.demo", raising=False)
    monkeypatch.setitem(sys.modules, missing, None)
    assert main(["demo"]) == 2
    _one_error_line(capsys, "demo", "the demo is not available")


# ------------------------------------------------------------------------------- start-up
HEAVY = ("torch", "ray", "pandas", "matplotlib", "plotly")
ROOT = Path(__file__).resolve().parents[1]
#: Puts a bare ``ikkuna_tune`` package in sys.modules, so that its __init__ does not run.
BARE_PACKAGE = (
    "import types\n"
    "package = types.ModuleType('ikkuna_tune')\n"
    f"package.__path__ = [{str(ROOT / 'ikkuna_tune')!r}]\n"
    "sys.modules['ikkuna_tune'] = package\n"
)


def _heavy_after_help(argv: list[str], prelude: str = "") -> list[str]:
    """The HEAVY packages imported by a fresh interpreter that prints ``ikkuna-tune`` help."""
    probe = (
        "import contextlib, io, json, sys\n"
        f"{prelude}"
        "from ikkuna_tune import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        f"    code = cli.main({argv!r})\n"
        "assert code == 0 and out.getvalue().startswith('usage: ikkuna-tune'), out.getvalue()\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_probe_sees_a_heavy_import() -> None:
    assert _heavy_after_help(["--help"], BARE_PACKAGE + "import pandas\n") == ["pandas"]


@pytest.mark.parametrize("argv", [["--help"], ["compare", "--help"], ["demo", "--help"]])
def test_the_cli_module_imports_nothing_heavy_for_help(argv: list[str]) -> None:
    """cli.py itself: its commands import what they need when they run."""
    assert _heavy_after_help(argv, BARE_PACKAGE) == []


@pytest.mark.parametrize("argv", [["--help"], ["compare", "--help"]])
def test_help_imports_nothing_heavy(argv: list[str]) -> None:
    """``ikkuna-tune --help`` as installed: the package's __init__ runs first."""
    assert _heavy_after_help(argv) == []


def test_demo_at_an_address_where_nothing_listens_is_one_line(tmp_path, capsys) -> None:
    """A host:port where no Ray cluster answers: one line and exit code 2 at once (ray.init
    waited for it without end)."""
    code = main(["demo", "--quick", "--address", "127.0.0.1:1", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("ikkuna-tune demo: error: Cannot reach a Ray cluster at 127.0.0.1:1")
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_demo_into_a_file_is_one_line(tmp_path, capsys) -> None:
    """``-o`` naming a file (or a path under one): one line and exit code 2 before Ray starts
    (it was ``[Errno 17] File exists``, from deep inside)."""
    blocking = tmp_path / "summary.csv"
    blocking.write_text("x\n")
    code = main(["demo", "--quick", "-o", str(blocking / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("ikkuna-tune demo: error: Expected the output directory")
    assert "is a file" in err and len(err.strip().splitlines()) == 1
