"""ikkuna_tune.compare and `ikkuna-tune compare` on one real, tiny Tune experiment.

One ``tune.run`` for the module: four trials of ``train_tiny`` (TinyNet: ``conv``, ``fc``):

- lr=0.01: 4 iterations, ``conv`` frozen after iteration 1 (reported frozen from iteration 2);
- lr=0.03: 3 iterations, ends by itself (shorter, but not stopped early);
- lr=0.1: 4 iterations planned, stopped by Tune after iteration 2 (a stopper: ``done``);
- lr=0.3: ``conv`` frozen before its first report, crashes after 2 reports (ERROR).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from matplotlib import colormaps
from matplotlib.colors import LogNorm, to_rgba

from ikkuna_tune import compare
from ikkuna_tune.cli import main
from tests.tune.conftest import ROOT

LRS = (0.01, 0.03, 0.1, 0.3)
ITERATIONS = {0.01: 4, 0.03: 3, 0.1: 4, 0.3: 4}
FREEZE_AT = {0.01: 1, 0.3: 0}
STOPPED_LR = 0.1
CRASHED_LR = 0.3
LAYERS = ["conv", "fc"]


def _stop(trial_id: str, result: dict[str, Any]) -> bool:
    return result.get("config", {}).get("lr") == STOPPED_LR and result["training_iteration"] >= 2


@pytest.fixture(scope="module")
def experiment(ray_session, tmp_path_factory) -> tuple[Path, Any]:
    """``(experiment directory, the ExperimentAnalysis tune.run returned)``."""
    from ray import tune

    import ikkuna_tune as ik
    from tests.tune.trainables import WeightSum, train_tiny

    root = tmp_path_factory.mktemp("compare_experiment")
    marker = str(root / "crashed")
    config = {
        "lr": tune.grid_search(list(LRS)),
        "iterations": tune.sample_from(lambda spec: ITERATIONS[spec.config.lr]),
        "freeze_at_iteration": tune.sample_from(lambda spec: FREEZE_AT.get(spec.config.lr)),
        "crash_marker": tune.sample_from(
            lambda spec: marker if spec.config.lr == CRASHED_LR else None
        ),
    }
    analysis = tune.run(
        ik.instrument(train_tiny, [WeightSum()]),
        config=config,
        name="tiny",
        storage_path=str(root / "storage"),
        stop=_stop,
        max_failures=0,
        raise_on_failed_trial=False,
        reuse_actors=True,
        verbose=0,
    )
    return root / "storage" / "tiny", analysis


@pytest.fixture(scope="module")
def df(experiment) -> pd.DataFrame:
    return compare.load(experiment[0])


def _results(experiment_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Each trial's reports, read straight from its result.json."""
    results = {}
    for path in sorted(experiment_dir.glob("*/result.json")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        results[rows[0]["trial_id"]] = rows
    return results


def _by_lr(df: pd.DataFrame) -> dict[float, str]:
    return {lr: t for t, lr in df.drop_duplicates("trial_id")[["trial_id", "lr"]].values}


# ------------------------------------------------------------------------------------ load
def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def test_load_holds_every_reported_number(experiment, df) -> None:
    results = _results(experiment[0])
    assert sorted(results) == sorted(set(df["trial_id"]))
    expected = []
    for trial_id, rows in results.items():
        for row in rows:
            for key, value in row.items():
                if key in compare.BOOKKEEPING or key == "config":
                    continue
                iteration = row["training_iteration"]
                # the numbers reported: a reason ("" before a freeze) or a step time not
                # measured yet (NaN) is no number of the frame
                if isinstance(value, dict):
                    expected += [
                        (trial_id, iteration, key, k, float(v))
                        for k, v in value.items()
                        if _number(v)
                    ]
                elif _number(value):
                    expected.append((trial_id, iteration, key, None, float(value)))
    got = [
        (t, i, m, layer if isinstance(layer, str) else None, v)
        for t, i, m, layer, v in df[["trial_id", "training_iteration", "metric", "layer", "value"]]
        .astype(object)
        .itertuples(index=False)
    ]
    assert sorted(got, key=str) == sorted(expected, key=str)
    assert set(compare.metrics(df, per_layer=True)) == {"weight_sum", "frozen", "trainable"}
    assert {"loss", "frozen_fraction", "step_seconds"} <= set(compare.metrics(df, per_layer=False))
    assert compare.layers(df) == LAYERS
    assert compare.config_columns(df) == ["crash_marker", "freeze_at_iteration", "iterations", "lr"]
    assert sorted(set(df["lr"])) == list(LRS)
    for trial_id, rows in results.items():
        assert set(df.loc[df["trial_id"] == trial_id, "iterations"]) == {
            rows[0]["config"]["iterations"]
        }


def test_load_matches_trial_dataframes(experiment, df) -> None:
    _, analysis = experiment
    for trial_id, frame in analysis.trial_dataframes.items():
        frame = frame.sort_values("training_iteration")
        for column in ("weight_sum/conv", "weight_sum/fc", "frozen/conv", "loss"):
            metric, _, layer = column.partition("/")
            rows = df[(df["trial_id"] == trial_id) & (df["metric"] == metric)]
            rows = rows[rows["layer"] == layer] if layer else rows[rows["layer"].isna()]
            assert rows["training_iteration"].tolist() == frame["training_iteration"].tolist()
            assert rows["value"].tolist() == pytest.approx(frame[column].astype(float).tolist())


def test_loading_the_directory_equals_loading_the_analysis_and_result_grid(experiment, df) -> None:
    from ray.tune import ExperimentAnalysis, ResultGrid

    experiment_dir, analysis = experiment
    from_disk = ExperimentAnalysis(str(experiment_dir))  # as after the run, in a new session
    for other in (analysis, ResultGrid(analysis), from_disk, ResultGrid(from_disk)):
        loaded = compare.load(other)
        pd.testing.assert_frame_equal(loaded, df)
        assert loaded.attrs == df.attrs, type(other).__name__


def test_a_result_grid_gives_tunes_status_not_a_made_up_one(experiment) -> None:
    """A Result carries no status; the grid's analysis does: a trial Tune left paused (as
    HyperBand leaves one) loads as PAUSED from the grid as from the analysis (it was
    TERMINATED, so the rule that a paused trial was stopped by Tune never applied)."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    analysis = ExperimentAnalysis(str(experiment[0]))
    paused = next(t for t in analysis.trials if t.status == "TERMINATED")  # (not one that failed)
    paused.status = "PAUSED"
    for other in (analysis, ResultGrid(analysis)):
        trials = compare.load(other).attrs["trials"]
        assert trials[str(paused.trial_id)]["status"] == "PAUSED", type(other).__name__


def test_failed_and_stopped_trials_keep_what_they_reported(df) -> None:
    trials = df.attrs["trials"]
    by_lr = _by_lr(df)
    crashed, stopped = trials[by_lr[CRASHED_LR]], trials[by_lr[STOPPED_LR]]
    assert crashed["status"] == "ERROR" and crashed["failed"] and crashed["results"] == 2
    assert stopped["stopped_by_tune"] and not stopped["failed"] and stopped["results"] == 2
    for lr in (0.01, 0.03):
        info = trials[by_lr[lr]]
        assert info["status"] == "TERMINATED" and not info["stopped_by_tune"]
        assert info["results"] == ITERATIONS[lr]


@pytest.fixture
def copied(experiment, tmp_path) -> Path:
    """A copy of the experiment elsewhere (as a user's finished experiment on disk)."""
    target = tmp_path / "moved" / "tiny"
    shutil.copytree(experiment[0], target)
    return target


def test_a_moved_experiment_with_a_trial_that_never_reported(df, copied) -> None:
    trial = copied / "train_tiny_abcde_00009_9_lr=0.5"
    trial.mkdir()
    (trial / "params.json").write_text(json.dumps({"lr": 0.5, "iterations": 4}))
    (trial / "result.json").write_text("")
    (trial / "progress.csv").write_text("")
    (trial / "error.txt").write_text("Failure # 1\nRuntimeError: boom\n")
    moved = compare.load(copied)
    assert moved.attrs["trials"]["abcde_00009"] == {
        "config": {"lr": 0.5, "iterations": 4},
        "status": "ERROR",
        "failed": True,
        "stopped_by_tune": False,
        "path": str(trial),
        "results": 0,
    }
    pd.testing.assert_frame_equal(moved, df)  # the new trial adds no rows
    row = compare.summary(moved, metric="loss", mode="min").set_index("trial_id").loc["abcde_00009"]
    assert row["iterations_run"] == 0 and row["failed"] and not row["stopped_early"]
    assert math.isnan(row["best_loss"]) and row["frozen_layers"] == []


def test_progress_csv_is_read_when_result_json_is_missing(df, copied) -> None:
    for path in copied.glob("*/result.json"):
        path.unlink()
    from_csv = compare.load(copied)
    keys = ["trial_id", "training_iteration", "metric", "layer"]
    merged = df.merge(from_csv, on=keys, suffixes=("", "_csv"))
    assert len(merged) == len(df) == len(from_csv)
    assert merged["value"].tolist() == pytest.approx(merged["value_csv"].tolist())


# ----------------------------------------------------------------------------------- plots
def test_plot_layers_draws_one_axes_per_layer_and_one_line_per_trial(df) -> None:
    figure = compare.plot_layers(df, metric="weight_sum", color_by="lr")
    lr_of = {t: lr for lr, t in _by_lr(df).items()}
    panels = figure.axes
    # a few learning rates: a legend of their values, no colorbar
    assert [ax.get_title() for ax in panels] == LAYERS
    norm = LogNorm(min(LRS), max(LRS))
    legend_labels = [t.get_text() for legend in figure.legends for t in legend.get_texts()]
    assert {f"{lr:g}" for lr in LRS} <= set(legend_labels)
    for i, (ax, layer) in enumerate(zip(panels, LAYERS)):
        # one shared y-axis: the metric's name on the first panel only
        assert ax.get_xlabel() == "training_iteration"
        assert ax.get_ylabel() == ("weight_sum" if i == 0 else "")
        assert ax.get_ylim() == panels[0].get_ylim()
        lines = ax.get_lines()
        assert sorted(line.get_gid() for line in lines) == sorted(lr_of)
        for line in lines:
            rows = df[
                (df["trial_id"] == line.get_gid())
                & (df["metric"] == "weight_sum")
                & (df["layer"] == layer)
            ]
            assert list(line.get_xdata()) == rows["training_iteration"].tolist()
            assert list(line.get_ydata()) == pytest.approx(rows["value"].tolist())
            expected = colormaps["viridis"](norm(lr_of[line.get_gid()]))
            assert to_rgba(line.get_color()) == pytest.approx(expected)


def test_freeze_timeline_marks_each_layers_freeze_per_trial(df) -> None:
    by_lr = _by_lr(df)
    assert compare.freeze_iterations(df) == {by_lr[0.01]: {"conv": 2}, by_lr[0.3]: {"conv": 1}}
    figure = compare.plot_freeze_timeline(df, color_by="lr")
    (ax,) = figure.axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("training_iteration", "trial")
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == [f"{by_lr[lr]} (lr={lr:g})" for lr in LRS]  # sorted by lr
    row = {lr: i for i, lr in enumerate(LRS)}
    marks = {line.get_label(): line for line in ax.get_lines()}
    # only the layers some trial froze are listed (fc never froze)
    assert [name for name in marks if not name.startswith("_")] == [
        "conv",
        "failed",
        "stopped early",
    ]
    conv = marks["conv"]
    assert list(zip(conv.get_xdata(), conv.get_ydata())) == [(2, row[0.01]), (1, row[0.3])]
    failed = marks["failed"]
    assert list(zip(failed.get_xdata(), failed.get_ydata())) == [(2, row[CRASHED_LR])]
    stopped = marks["stopped early"]
    assert list(zip(stopped.get_xdata(), stopped.get_ydata())) == [(2, row[STOPPED_LR])]
    spans = [line for name, line in marks.items() if name.startswith("_")]
    # each trial's band covers its iterations: from 0.5 to the last one + 0.5
    assert sorted(max(line.get_xdata()) for line in spans) == [2.5, 2.5, 3.5, 4.5]


# --------------------------------------------------------------------------------- summary
def test_summary_matches_hand_computation(experiment, df) -> None:
    results = _results(experiment[0])
    table = compare.summary(df, metric="loss", mode="min")
    assert table["trial_id"].tolist() == sorted(results)
    for _, row in table.iterrows():
        rows = results[row["trial_id"]]
        lr = rows[0]["config"]["lr"]
        losses = [r["loss"] for r in rows]
        assert row["lr"] == lr and row["iterations"] == ITERATIONS[lr]  # config parameters
        assert row["iterations_run"] == rows[-1]["training_iteration"] == len(rows)
        assert row["best_loss"] == pytest.approx(min(losses))
        assert row["best_iteration"] == rows[losses.index(min(losses))]["training_iteration"]
        assert row["failed"] == (lr == CRASHED_LR)
        assert row["status"] == ("ERROR" if lr == CRASHED_LR else "TERMINATED")
        assert row["stopped_early"] == (lr == STOPPED_LR)  # lr=0.03 ended by itself
        last = rows[-1]
        assert row["frozen_layers"] == [name for name in LAYERS if last["frozen"][name]]
        assert row["frozen_fraction"] == pytest.approx(last["frozen_fraction"])
        # the work skipped: iterations not run (only for a trial stopped early: its budget is
        # the longest trial's), plus the parameters frozen during each iteration it ran
        budget = max(ITERATIONS.values()) if lr == STOPPED_LR else len(rows)
        fractions = [r["frozen_fraction"] for r in rows]
        saved = (budget - len(rows) + sum(fractions)) / budget
        assert row["compute_saved"] == pytest.approx(round(saved, 3))
    by_lr = table.set_index("lr")
    assert by_lr.loc[0.01, "frozen_layers"] == ["conv"] and by_lr.loc[0.03, "frozen_layers"] == []
    assert by_lr.loc[0.01, "frozen_fraction"] == pytest.approx(30 / 275)


# ------------------------------------------------------------------------------------- CLI
def test_cli_compare_writes_plots_and_summary(experiment, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    argv = ["compare", str(experiment[0]), "--metric", "weight_sum", "--color-by", "lr"]
    assert main([*argv, "--summary-metric", "loss", "--mode", "min", "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir() if p.name != ".ikkuna_compare.json") == [
        "freeze_timeline.png",
        "layers_weight_sum.png",
        "report.html",
        "summary.csv",
    ]
    for name in ("freeze_timeline.png", "layers_weight_sum.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(out / "summary.csv").set_index("lr")
    assert sorted(table.index) == list(LRS)
    assert table.loc[0.01, "frozen_layers"] == '["conv"]'  # a JSON list
    assert table["stopped_early"].to_dict() == {lr: lr == STOPPED_LR for lr in LRS}
    assert "best_loss" in table.columns
    printed = capsys.readouterr().out
    for trial_id in table["trial_id"]:
        assert trial_id in printed
    assert f"wrote {out / 'summary.csv'}" in printed


def test_cli_compare_in_a_fresh_process_without_ray(experiment, tmp_path) -> None:
    """As a user runs it after the sweep: a new process that never starts Ray."""
    script = (
        "import sys\n"
        "from ikkuna_tune.cli import main\n"
        f"code = main(['compare', {str(experiment[0])!r}, '--metric', 'frozen'])\n"
        "ray = sys.modules.get('ray')\n"
        "assert ray is None or not ray.is_initialized(), 'Ray was started'\n"
        "sys.exit(code)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert {"layers_frozen.png", "freeze_timeline.png", "summary.csv"} <= {
        p.name for p in tmp_path.iterdir()
    }


def test_cli_compare_unknown_names_are_one_line(experiment, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    argv = ["compare", str(experiment[0]), "-o", str(out)]
    assert main(argv) == 2  # the default metric, self_similarity, was not reported
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(
        "ikkuna-tune compare: error: --metric self_similarity (the default): "
        "Unknown metric 'self_similarity'; "
    )
    assert "per-layer metrics: frozen, trainable, weight_sum;" in err
    assert main([*argv, "--metric", "weight_sum", "--color-by", "momentum"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "Unknown color_by parameter 'momentum'; config columns: crash_marker, " in err
    assert not out.exists()


def test_two_reports_of_one_iteration_without_a_restore_are_both_kept(ray_session, tmp_path):
    """A trainable that names the epoch as ``training_iteration`` and reports twice in it
    (training loss, then validation accuracy) made no restore: both reports' values are the
    trial's, as Tune's own results hold them (before, the first report of each epoch was
    dropped as if a restore had replaced it, and `train_loss` read as never reported)."""
    from ray import tune

    from tests.tune.trainables import two_reports_per_epoch

    grid = tune.Tuner(
        two_reports_per_epoch,
        param_space={"epochs": 3},
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="twice", verbose=0),
    ).fit()
    reference = grid[0].metrics_dataframe
    assert len(reference) == 6  # Tune holds all six reports
    expected = {
        metric: reference.dropna(subset=[metric]).set_index("training_iteration")[metric]
        for metric in ("train_loss", "val_acc")
    }
    df = compare.load(tmp_path / "twice")
    for metric, values in expected.items():
        rows = df[df["metric"] == metric].set_index("training_iteration")["value"]
        assert rows.to_dict() == pytest.approx(values.to_dict()), metric
    row = compare.summary(df, metric="train_loss", mode="min").iloc[0]
    assert row["best_train_loss"] == pytest.approx(1 / 3) and row["best_iteration"] == 3
