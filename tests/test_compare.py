"""ikkuna_tune.compare on hand-written experiment files (no Ray); see tests/experiment_files.py.

The same functions on a real Tune run: tests/tune/test_compare_experiment.py.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from matplotlib import colormaps
from matplotlib.colors import LogNorm, to_rgba

from ikkuna_tune import compare
from tests.experiment_files import LAYERS, handmade, write_trial

LRS = {"aaaaa_00000": 0.01, "aaaaa_00001": 0.1, "aaaaa_00002": 1.0}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    return handmade(tmp_path_factory.mktemp("handmade"))


@pytest.fixture(scope="module")
def df(experiment) -> pd.DataFrame:
    return compare.load(experiment)


def _rows(df: pd.DataFrame, trial_id: str, metric: str, layer: str | None = None) -> pd.DataFrame:
    rows = df[(df["trial_id"] == trial_id) & (df["metric"] == metric)]
    return rows[rows["layer"] == layer] if layer else rows[rows["layer"].isna()]


def test_load_makes_one_tidy_row_per_reported_number(df) -> None:
    assert list(df.columns) == [
        "trial_id",
        "lr",
        "model/width",
        "training_iteration",
        "metric",
        "layer",
        "value",
    ]
    assert compare.config_columns(df) == ["lr", "model/width"]
    assert compare.metrics(df, per_layer=True) == ["frozen", "sim"]
    assert compare.metrics(df, per_layer=False) == [
        "frozen_fraction",
        "loss",
        "step_seconds",
        "step_seconds_unfrozen",
        "time_this_iter_s",
    ]
    # 4 + 2 + 3 reports (the repeated iteration counts once), 5 network-wide + 6 per-layer each
    assert len(df) == (4 + 2 + 3) * (5 + 2 * len(LAYERS))
    assert df.groupby("trial_id")["lr"].first().to_dict() == LRS
    assert df.groupby("trial_id")["model/width"].first().tolist() == [8, 16, 8]
    loss = _rows(df, "aaaaa_00000", "loss")
    assert loss["training_iteration"].tolist() == [1, 2, 3, 4]
    assert loss["value"].tolist() == pytest.approx([2 / i + 0.01 for i in range(1, 5)])
    sim = _rows(df, "aaaaa_00001", "sim", "block.0")
    assert sim["value"].tolist() == pytest.approx([0.08, 0.08])
    frozen = _rows(df, "aaaaa_00000", "frozen", "stem")
    assert frozen["value"].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert df["value"].dtype == float and df["training_iteration"].dtype == "int64"


def test_layers_follow_the_reported_network_order(df) -> None:
    assert compare.layers(df) == LAYERS  # not alphabetical, not the order `sim` reports
    assert compare.layers(df, "sim") == LAYERS
    first = df[(df["trial_id"] == "aaaaa_00000") & (df["training_iteration"] == 1)]
    assert first.loc[first["metric"] == "sim", "layer"].tolist() == ["head", "stem", "block.0"]


def test_repeated_iterations_and_half_written_lines(experiment, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.compare"):
        df = compare.load(experiment)
    assert "Skipping unreadable line 5" in caplog.text
    loss = _rows(df, "aaaaa_00002", "loss")
    assert loss["training_iteration"].tolist() == [1, 2, 3]
    assert loss["value"].tolist() == pytest.approx([3.0, 0.25, 2 / 3 + 1.0])  # the restored 2


def test_trial_facts_in_attrs(df, experiment) -> None:
    trials = df.attrs["trials"]
    assert list(trials) == list(LRS)
    assert trials["aaaaa_00000"] == {
        "config": {"lr": 0.01, "model/width": 8},
        "status": None,  # no experiment_state file and no error file: unknown
        "failed": False,
        "stopped_by_tune": False,
        "path": str(experiment / "train_aaaaa_00000_0_lr=0.01"),
        "results": 4,
    }
    assert trials["aaaaa_00001"]["stopped_by_tune"]
    assert trials["aaaaa_00002"]["results"] == 3


def test_frames_derived_from_the_loaded_one_share_its_attrs(df) -> None:
    # pandas deep-copies attrs into every frame an operation returns (each selection, each
    # group); the loaded entries are shared instead, and still equal plain dicts and lists
    import copy

    selected = df[df["metric"] == "frozen"]
    groups = [group for _, group in df.groupby("trial_id")]
    for name in ("trials", "decisions", "empty_metrics"):
        entry = df.attrs[name]
        assert selected.attrs[name] is entry
        assert all(group.attrs[name] is entry for group in groups)
        assert copy.deepcopy(entry) is entry
        assert entry == json.loads(json.dumps(entry))  # the same contents as plain JSON types
    assert isinstance(df.attrs["trials"], dict) and isinstance(df.attrs["decisions"], list)
    # the frame's own attrs dict is still the frame's: assigning an entry changes one frame
    selected.attrs["trials"] = {}
    assert len(df.attrs["trials"]) == len(LRS)


def test_failed_trials_with_and_without_results(tmp_path) -> None:
    experiment = handmade(tmp_path)
    config = {"lr": 0.5, "model": {"width": 8}}
    write_trial(experiment, "train_bbbbb_00000_3", config, [], error=True)
    from tests.experiment_files import report

    write_trial(experiment, "train_bbbbb_00001_4", config, [report("x_1", config, 1)], error=True)
    df = compare.load(experiment)
    assert df.attrs["trials"]["bbbbb_00000"]["results"] == 0  # trial id from the directory name
    assert set(df["trial_id"]) == {*LRS, "x_1"}
    table = compare.summary(df, metric="loss", mode="min").set_index("trial_id")
    assert table.loc["bbbbb_00000", "iterations_run"] == 0
    assert math.isnan(table.loc["bbbbb_00000", "best_loss"])
    for trial_id in ("bbbbb_00000", "x_1"):
        assert table.loc[trial_id, "status"] == "ERROR" and table.loc[trial_id, "failed"]
        assert not table.loc[trial_id, "stopped_early"]
    assert table.loc["x_1", "iterations_run"] == 1


def test_summary_matches_hand_computation(df) -> None:
    table = compare.summary(df, metric="loss", mode="min")
    assert list(table.columns) == [
        "trial_id",
        "lr",
        "model/width",
        "status",
        "failed",
        "iterations_run",
        "best_loss",
        "best_iteration",
        "stopped_early",
        "stopped_by",
        "frozen_layers",
        "freeze_reasons",
        "frozen_fraction",
        "compute_saved",
    ]
    table = table.set_index("trial_id")
    assert table["iterations_run"].tolist() == [4, 2, 3]
    assert table["best_loss"].tolist() == pytest.approx([2 / 4 + 0.01, 2 / 2 + 0.1, 0.25])
    assert table["best_iteration"].tolist() == [4, 2, 2]
    # only the trial Tune stopped before the longest trial's 4 iterations; lr=1.0 ended itself
    assert table["stopped_early"].tolist() == [False, True, False]
    assert table["frozen_layers"].tolist() == [["stem"], [], []]
    assert table["frozen_fraction"].tolist() == [0.25, 0.0, 0.0]
    # the work skipped, of the full budget: aaaaa_00000 ran its 4 iterations with a quarter of
    # the parameters frozen in the last two; aaaaa_00001 was stopped after 2 of the longest
    # trial's 4 iterations; aaaaa_00002 ended its own loop after 3 and froze nothing
    assert table["compute_saved"].tolist() == [(0.25 + 0.25) / 4, (4 - 2) / 4, 0.0]
    highest = compare.summary(df, metric="loss", mode="max").set_index("trial_id")
    assert highest["best_loss"].tolist() == pytest.approx([2.01, 2.1, 3.0])
    assert highest["best_iteration"].tolist() == [1, 1, 1]
    assert "best_iteration" not in compare.summary(df).columns


def test_compute_saved_of_a_hand_computed_example() -> None:
    # 4 of a budget of 6 iterations run, a quarter then half of the parameters frozen in the
    # last two: (6 - 4) iterations not run + 0.25 + 0.5 iterations' updates skipped, of 6
    assert compare.compute_saved([0.0, 0.0, 0.25, 0.5], budget=6) == 0.458
    assert compare.compute_saved([0.0] * 5, budget=5) == 0.0
    assert compare.compute_saved([1 / 3] * 3, budget=3) == 0.333
    assert compare.compute_saved([1.0, 1.0], budget=2) == 1.0
    with pytest.raises(ValueError, match=r"Expected frozen fractions in \[0, 1\] but got 1.5"):
        compare.compute_saved([0.0, 1.5], budget=2)
    with pytest.raises(ValueError, match=r"in \[0, 1\] but got nan"):
        compare.compute_saved([math.nan], budget=2)
    with pytest.raises(
        ValueError, match="at least the 3 iteration.s. run .and at least 1. but got 2"
    ):
        compare.compute_saved([0.0] * 3, budget=2)
    with pytest.raises(ValueError, match="but got True"):
        compare.compute_saved([], budget=True)


def test_compute_saved_does_not_depend_on_step_timings(experiment, tmp_path) -> None:
    """The same decisions give the same figure, however noisy the step timings."""
    copy = tmp_path / "sweep"
    shutil.copytree(experiment, copy)
    noise = random.Random(0)
    for path in copy.glob("*/result.json"):
        lines = path.read_text().splitlines(keepends=True)
        changed = []
        for line in lines:
            try:
                result = json.loads(line)
            except ValueError:  # the half-written last line stays as it is
                changed.append(line)
                continue
            result["step_seconds"] = noise.uniform(0.05, 0.5)
            result["step_seconds_unfrozen"] = noise.uniform(0.05, 0.5)
            changed.append(json.dumps(result) + "\n")
        path.write_text("".join(changed))
    original = compare.summary(compare.load(experiment))["compute_saved"].tolist()
    noisy = compare.summary(compare.load(copy))["compute_saved"].tolist()
    assert noisy == original == [0.125, 0.5, 0.0]


def test_summary_with_a_budget(df) -> None:
    table = compare.summary(df, budget=10).set_index("trial_id")
    # aaaaa_00001, stopped by Tune, skipped 8 of 10 iterations; the others ended by themselves
    assert table["stopped_early"].tolist() == [False, True, False]
    assert table["compute_saved"].tolist() == [0.125, (10 - 2) / 10, 0.0]
    # a budget below what the other trials ran is no budget: aaaaa_00001 would read as
    # having run its whole budget, not stopped, with nothing saved
    with pytest.raises(ValueError, match="got 2, while trial aaaaa_00000 ran 4"):
        compare.summary(df, budget=2)
    with pytest.raises(ValueError, match="Expected `budget` to be a positive integer or None but"):
        compare.summary(df, budget=0)


def test_summary_of_a_hand_made_frame_without_trial_facts() -> None:
    """A tidy frame built by hand (no ``attrs``); a config parameter named like a column."""
    rows = [
        ("a", "x", 1, "acc", None, 0.5),
        ("a", "x", 2, "acc", None, 0.7),
        ("a", "x", 1, "frozen", "l1", 0.0),
        ("a", "x", 2, "frozen", "l1", 1.0),
        ("a", "x", 2, "frozen", "l2", 0.0),
        ("b", "y", 1, "acc", None, 0.9),
    ]
    df = pd.DataFrame(
        rows, columns=["trial_id", "status", "training_iteration", "metric", "layer", "value"]
    )
    table = compare.summary(df, metric="acc").set_index("trial_id")
    assert table.loc["a", "config/status"] == "x" and table.loc["a", "status"] is None
    assert table.loc["a", "best_acc"] == 0.7 and table.loc["a", "best_iteration"] == 2
    assert table.loc["b", "best_acc"] == 0.9 and table.loc["b", "iterations_run"] == 1
    assert table.loc["a", "frozen_layers"] == ["l1"] and table.loc["b", "frozen_layers"] == []
    assert not table["stopped_early"].any() and not table["failed"].any()
    assert math.isnan(table.loc["a", "compute_saved"])


def test_summary_best_ignores_non_finite_values() -> None:
    """A loss that diverged to -inf (or a score of inf) is not the trial's best value."""
    rows = [
        ("a", 1, "loss", None, 0.9),
        ("a", 2, "loss", None, 0.4),
        ("a", 3, "loss", None, -math.inf),
        ("b", 1, "loss", None, math.inf),
        ("b", 2, "score", None, math.inf),
        ("b", 3, "score", None, 2.0),
    ]
    df = pd.DataFrame(rows, columns=["trial_id", "training_iteration", "metric", "layer", "value"])
    lowest = compare.summary(df, metric="loss", mode="min").set_index("trial_id")
    assert lowest.loc["a", "best_loss"] == 0.4 and lowest.loc["a", "best_iteration"] == 2
    assert math.isnan(lowest.loc["b", "best_loss"]) and pd.isna(lowest.loc["b", "best_iteration"])
    highest = compare.summary(df, metric="score").set_index("trial_id")
    assert highest.loc["b", "best_score"] == 2.0 and highest.loc["b", "best_iteration"] == 3


# ----------------------------------------------------------------------------------- plots
def test_two_model_families_keep_their_own_network_order(tmp_path) -> None:
    """An MLP trial sorts first, a CNN trial second: the layers are in an order that keeps
    each model's own (the CNN's convolutions before the layers it shares names with the MLP),
    and each trial's frozen layers are in its own network order."""
    experiment = tmp_path / "two_families"
    families = {
        "bbbbb_00000": ("mlp", ["fc1", "fc2"], ("fc1",)),
        "bbbbb_00001": ("cnn", ["conv1", "conv2", "fc1", "fc2"], ("conv1", "conv2", "fc1")),
    }
    for index, (trial_id, (model, names, frozen)) in enumerate(families.items()):
        config = {"model": model}
        results = [
            {
                "acc": 0.1 * i,
                "frozen": {n: int(i == 2 and n in frozen) for n in names},
                "training_iteration": i,
                "trial_id": trial_id,
                "config": config,
            }
            for i in (1, 2)
        ]
        write_trial(experiment, f"train_{trial_id}_{index}_model={model}", config, results)
    df = compare.load(experiment)
    assert compare.layers(df) == ["conv1", "conv2", "fc1", "fc2"]
    table = compare.summary(df, metric="acc").set_index("trial_id")
    assert table.loc["bbbbb_00001", "frozen_layers"] == ["conv1", "conv2", "fc1"]
    assert table.loc["bbbbb_00000", "frozen_layers"] == ["fc1"]


def test_plot_layers_one_axes_per_layer_in_network_order(df) -> None:
    figure = compare.plot_layers(df, metric="sim", color_by="lr")
    panels = figure.axes  # three lr values: a legend of them, no colorbar
    assert [ax.get_title() for ax in panels] == LAYERS
    norm = LogNorm(0.01, 1.0)  # positive and spanning a factor >= 10: log scale
    for ax, layer in zip(panels, LAYERS):
        assert ax.get_xlabel() == "training_iteration"
        assert ax.get_ylabel() == ("sim" if ax is panels[0] else "")  # one shared y-axis
        lines = ax.get_lines()
        assert [line.get_gid() for line in lines] == list(LRS)
        for line in lines:
            rows = _rows(df, line.get_gid(), "sim", layer)
            assert list(line.get_xdata()) == rows["training_iteration"].tolist()
            assert list(line.get_ydata()) == rows["value"].tolist()
            expected = colormaps["viridis"](norm(LRS[line.get_gid()]))
            assert to_rgba(line.get_color()) == pytest.approx(expected)
    (legend,) = figure.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts == ["lr", "0.01", "0.1", "1", "marks", "layer frozen", "stopped early"]
    colours = [to_rgba(h.get_color()) for h in legend.legend_handles[1:4]]
    assert colours == [pytest.approx(colormaps["viridis"](norm(lr))) for lr in (0.01, 0.1, 1.0)]


def test_plot_layers_linear_and_categorical_colours(df) -> None:
    figure = compare.plot_layers(df, metric="sim", color_by="model/width", columns=2)
    assert len(figure.axes) == 3  # 2 x 2 grid less the unused one; two widths: no colorbar
    colours = {line.get_gid(): to_rgba(line.get_color()) for line in figure.axes[0].get_lines()}
    viridis = colormaps["viridis"]
    assert colours["aaaaa_00000"] == pytest.approx(viridis(0.0))  # width 8 of 8..16
    assert colours["aaaaa_00001"] == pytest.approx(viridis(1.0))
    assert colours["aaaaa_00002"] == colours["aaaaa_00000"]

    categorical = df.assign(optimizer=df["trial_id"].map({"aaaaa_00000": "adam"}))
    figure = compare.plot_layers(categorical, metric="loss", color_by="optimizer", style_by=None)
    (ax,) = figure.axes
    assert figure._suptitle.get_text() == "loss" and ax.get_title() == ""  # named once
    assert len(ax.get_lines()) == 3
    (legend,) = figure.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts == ["optimizer", "adam", "(missing)", "marks", "stopped early"]
    colours = [to_rgba(line.get_color()) for line in ax.get_lines()]
    assert colours[0] == pytest.approx(colormaps["tab10"](0)) and colours[1] == colours[2]


def test_freeze_timeline(df) -> None:
    figure = compare.plot_freeze_timeline(df)
    (ax,) = figure.axes
    assert ax.get_title() == "Layer freeze timeline"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("training_iteration", "trial")
    assert [t.get_text() for t in ax.get_yticklabels()] == list(LRS)
    marks = {line.get_label(): line for line in ax.get_lines()}
    # only stem ever froze: block.0 and head have no entry
    assert [name for name in marks if not name.startswith("_")] == ["stem", "stopped early"]
    assert list(marks["stem"].get_xdata()) == [3] and list(marks["stem"].get_ydata()) == [0]
    assert list(marks["stopped early"].get_xdata()) == [2]
    assert list(marks["stopped early"].get_ydata()) == [1]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["stem", "stopped early"]
    spans = [line for name, line in marks.items() if name.startswith("_")]
    assert [list(line.get_xdata()) for line in spans] == [[0.5, 4.5], [0.5, 2.5], [0.5, 3.5]]
    assert compare.freeze_iterations(df) == {"aaaaa_00000": {"stem": 3}}

    by_width = compare.plot_freeze_timeline(df, color_by="model/width")
    labels = [t.get_text() for t in by_width.axes[0].get_yticklabels()]
    assert labels == [
        "aaaaa_00000 (model/width=8)",
        "aaaaa_00002 (model/width=8)",
        "aaaaa_00001 (model/width=16)",
    ]


# ---------------------------------------------------------------------------------- errors
def test_load_errors_are_one_clear_line(experiment, tmp_path) -> None:
    file = tmp_path / "file.txt"
    file.write_text("x")
    cases = [
        (tmp_path / "nowhere", "Experiment directory .*nowhere does not exist"),
        (file, "Expected an experiment directory but .*file.txt is not a directory"),
        (tmp_path, "is not a Tune experiment directory .no trial directories with params"),
        (experiment.parent, "it holds the experiments sweep: pass one of them"),
        (
            next(p for p in experiment.iterdir() if p.is_dir()),
            f"it is a trial directory: pass its experiment, {re.escape(str(experiment))}$",
        ),
    ]
    for path, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            compare.load(path)
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="ExperimentAnalysis or a ray.tune.ResultGrid but got int"):
        compare.load(42)

    empty = tmp_path / "empty"
    write_trial(empty, "train_ccccc_00000_0", {"lr": 0.1}, [])
    write_trial(empty, "train_ccccc_00001_1", {"lr": 0.2}, [], error=True)
    (empty / "train_ccccc_00002_2").mkdir()
    (empty / "train_ccccc_00002_2" / "params.json").write_text(json.dumps({"lr": 0.3}))
    with pytest.raises(ValueError, match=r"has no results: 3 trial\(s\), none reported a result"):
        compare.load(empty)


def test_unknown_metric_and_color_by_name_what_is_available(df) -> None:
    message = (
        r"Unknown metric 'nope'; per-layer metrics: frozen, sim; network-wide metrics: "
        r"frozen_fraction, loss, step_seconds, step_seconds_unfrozen, time_this_iter_s$"
    )
    with pytest.raises(ValueError, match=message):
        compare.plot_layers(df, metric="nope")
    with pytest.raises(ValueError, match=message):
        compare.summary(df, metric="nope")
    message = r"^Unknown color_by parameter 'x'; config columns: lr, model/width$"
    with pytest.raises(ValueError, match=message):
        compare.plot_layers(df, metric="sim", color_by="x")
    with pytest.raises(ValueError, match=message):
        compare.plot_freeze_timeline(df, color_by="x")
    with pytest.raises(ValueError, match="'sim' is reported per layer; pick a network-wide"):
        compare.summary(df, metric="sim")
    with pytest.raises(ValueError, match="Expected `mode` to be 'max' or 'min' but got 'best'"):
        compare.summary(df, metric="loss", mode="best")
    with pytest.raises(ValueError, match="Expected `columns` to be a positive integer"):
        compare.plot_layers(df, metric="sim", columns=0)
    with pytest.raises(ValueError, match="tidy DataFrame of compare.load"):
        compare.plot_layers(pd.DataFrame({"a": [1]}))
    # the helpers check what they are given too (a KeyError or AttributeError came out of them)
    lacking = df.drop(columns=["metric"])
    for helper in (compare.layers, compare.metrics, compare.config_columns):
        with pytest.raises(ValueError, match="but got a DataFrame without metric$"):
            helper(lacking)
        with pytest.raises(ValueError, match="tidy DataFrame of compare.load .* but got NoneType"):
            helper(None)
    with pytest.raises(ValueError, match="Unknown metric 'simm'; per-layer metrics: "):
        compare.layers(df, metric="simm")
    with pytest.raises(ValueError, match="No frozen/<layer> metrics in the results"):
        compare.plot_freeze_timeline(df[df["metric"] != "frozen"])


def test_write_report_of_a_loaded_frame(df, tmp_path) -> None:
    out = tmp_path / "report"
    files = compare.write_report(df, out, metric="loss", color_by=None, summary_metric="loss")
    assert files == [
        out / "layers_loss.png",
        out / "freeze_timeline.png",
        out / "summary.csv",
        out / "decisions.csv",  # the experiment's scheduler decisions
        out / "report.html",
    ]
    assert all(path.stat().st_size for path in files)
    written = pd.read_csv(out / "summary.csv")
    assert written["frozen_layers"].tolist() == ['["stem"]', "[]", "[]"]
    assert written["best_loss"].tolist() == pytest.approx([2.01, 2.1, 3.0])  # mode="max"
    without_frozen = df[df["metric"] != "frozen"]
    files = compare.write_report(without_frozen, tmp_path / "plain", metric="sim")
    assert [path.name for path in files] == [
        "layers_sim.png",
        "summary.csv",
        "decisions.csv",
        "report.html",
    ]
    with pytest.raises(ValueError, match="Unknown metric 'x'"):
        compare.write_report(df, tmp_path / "never", metric="x")
    assert not (tmp_path / "never").exists()


def test_the_default_colour_is_a_learning_rate_or_the_parameter_that_varies(tmp_path) -> None:
    """Without ``--color-by`` the comparison does not require a parameter called ``lr``: a
    learning rate under another name colours the trials, else the parameter with the most
    values, else the trial."""
    import json

    from ikkuna_tune.compare import compare_experiment

    for config, expected in [
        ({"learning_rate": [0.1, 0.01], "width": [8, 16]}, "learning_rate"),
        ({"width": [8, 16], "seed": [0, 0]}, "width"),
        ({"seed": [0, 0]}, None),
    ]:
        sweep = tmp_path / f"sweep_{len(list(tmp_path.iterdir()))}"
        for i in range(2):
            trial = sweep / f"train_abcde_0000{i}"
            trial.mkdir(parents=True)
            params = {name: values[i] for name, values in config.items()}
            (trial / "params.json").write_text(json.dumps(params))
            result = {"training_iteration": 1, "loss": 0.5 + i, "frozen": {"fc": 0}}
            (trial / "result.json").write_text(json.dumps(result))
        made = compare_experiment(sweep, tmp_path / f"out_{sweep.name}", metric="loss", html=False)
        assert made.summary["trial_id"].tolist() == ["abcde_00000", "abcde_00001"]
        from ikkuna_tune.compare import load
        from ikkuna_tune.compare.styles import auto_color_by

        assert auto_color_by(load(sweep)) == expected
