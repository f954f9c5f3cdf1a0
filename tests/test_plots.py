"""The matplotlib plots answer their questions: shared y-axis, a legend for few colours, line
styles for a second parameter, freeze and stop marks per panel, and a freeze timeline whose
markers do not hide each other. Hand-written experiment files, no Ray."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.colors import to_rgba

from ikkuna_tune import compare
from tests.experiment_files import handmade, report, write_trial

TRIALS = ["aaaaa_00000", "aaaaa_00001", "aaaaa_00002"]


@pytest.fixture(scope="module")
def df(tmp_path_factory) -> pd.DataFrame:
    return compare.load(handmade(tmp_path_factory.mktemp("plots")))


def _value(df: pd.DataFrame, trial_id: str, layer: str, iteration: int) -> float:
    rows = df[
        (df["trial_id"] == trial_id)
        & (df["metric"] == "sim")
        & (df["layer"] == layer)
        & (df["training_iteration"] == iteration)
    ]
    (value,) = rows["value"]
    return float(value)


def _marks(ax, gid: str) -> list[tuple[float, float]]:
    found = [c for c in ax.collections if isinstance(c, PathCollection) and c.get_gid() == gid]
    if not found:
        return []
    (collection,) = found
    return [tuple(map(float, point)) for point in collection.get_offsets()]


def test_layer_panels_share_one_y_axis_unless_freed(df) -> None:
    shared = compare.plot_layers(df, metric="sim", color_by="lr")
    limits = {ax.get_title(): ax.get_ylim() for ax in shared.axes}
    assert len(set(limits.values())) == 1  # one y-axis for every panel
    low, high = next(iter(limits.values()))
    sim = df[df["metric"] == "sim"]["value"]
    assert low <= sim.min() and high >= sim.max()  # it holds every layer's values

    free = compare.plot_layers(df, metric="sim", color_by="lr", sharey=False)
    limits = {ax.get_title(): ax.get_ylim() for ax in free.axes}
    stem = df[(df["metric"] == "sim") & (df["layer"] == "stem")]["value"]
    assert set(stem) == {0.9}  # stem's panel zooms in on its own values
    assert limits["stem"][0] > 0.8 and limits["stem"][1] < 1.0
    assert limits["head"] != limits["stem"]
    assert [ax.get_ylabel() for ax in free.axes] == ["sim"] * 3


def test_trials_of_one_colour_differ_in_line_style(df) -> None:
    # width 8 colours aaaaa_00000 and aaaaa_00002 alike; lr tells them apart
    assert compare.auto_style_by(df, "model/width") == "lr"
    assert compare.auto_style_by(df, "lr") is None  # each lr is one trial: colours suffice
    figure = compare.plot_layers(df, metric="sim", color_by="model/width")
    styles = {line.get_gid(): line.get_linestyle() for line in figure.axes[0].get_lines()}
    assert styles == {"aaaaa_00000": "-", "aaaaa_00001": "--", "aaaaa_00002": ":"}
    (legend,) = figure.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts[:7] == ["model/width", "8", "16", "lr", "0.01", "0.1", "1"]
    handles = legend.legend_handles
    assert [h.get_linestyle() for h in handles[4:7]] == ["-", "--", ":"]

    by_width = compare.plot_layers(df, metric="sim", color_by="lr", style_by="model/width")
    styles = {line.get_gid(): line.get_linestyle() for line in by_width.axes[0].get_lines()}
    assert styles == {"aaaaa_00000": "-", "aaaaa_00001": "--", "aaaaa_00002": "-"}
    plain = compare.plot_layers(df, metric="sim", color_by="model/width", style_by=None)
    assert {line.get_linestyle() for line in plain.axes[0].get_lines()} == {"-"}
    with pytest.raises(ValueError, match=r"^Unknown style_by parameter 'x'; config columns: lr"):
        compare.plot_layers(df, metric="sim", style_by="x")


def test_each_panel_marks_where_the_layer_froze_and_where_trials_stopped(df) -> None:
    figure = compare.plot_layers(df, metric="sim", color_by="lr")
    panels = {ax.get_title(): ax for ax in figure.axes}
    # aaaaa_00000 reports stem frozen from iteration 3: a star on its stem line there
    assert _marks(panels["stem"], "frozen") == [(3.0, _value(df, "aaaaa_00000", "stem", 3))]
    assert _marks(panels["block.0"], "frozen") == [] and _marks(panels["head"], "frozen") == []
    (star,) = [c for c in panels["stem"].collections if c.get_gid() == "frozen"]
    (line,) = [ln for ln in panels["stem"].get_lines() if ln.get_gid() == "aaaaa_00000"]
    assert to_rgba(star.get_facecolor()[0]) == pytest.approx(to_rgba(line.get_color()))
    for name, ax in panels.items():  # aaaaa_00001 was stopped early after iteration 2
        assert _marks(ax, "stopped early") == [(2.0, _value(df, "aaaaa_00001", name, 2))]
        assert _marks(ax, "failed") == []


def test_a_failed_trial_is_marked_where_it_ended(tmp_path) -> None:
    experiment = tmp_path / "sweep"
    for number, iterations in ((0, 3), (1, 2)):
        config = {"lr": 0.1 * (number + 1)}
        trial_id = f"bbbbb_0000{number}"
        results = [report(trial_id, config, i) for i in range(1, iterations + 1)]
        write_trial(experiment, f"train_{trial_id}", config, results, error=number == 1)
    df = compare.load(experiment)
    figure = compare.plot_layers(df, metric="sim", color_by="lr")
    for ax in figure.axes:
        last = _value(df, "bbbbb_00001", ax.get_title(), 2)
        assert _marks(ax, "failed") == [(2.0, last)]
        assert _marks(ax, "stopped early") == []
    (legend,) = figure.legends
    assert [t.get_text() for t in legend.get_texts()][-2:] == ["marks", "failed"]


def _numeric_frame(count: int) -> pd.DataFrame:
    rows = [
        (f"t{k}", float(k + 1), iteration, "sim", "a", 0.1 * k + 0.01 * iteration)
        for k in range(count)
        for iteration in (1, 2)
    ]
    columns = ["trial_id", "lr", "training_iteration", "metric", "layer", "value"]
    return pd.DataFrame(rows, columns=columns)


def test_few_colour_values_get_a_legend_many_a_colorbar() -> None:
    few = compare.plot_layers(_numeric_frame(compare.MAX_LEGEND_COLOURS), metric="sim")
    assert [ax.get_label() for ax in few.axes] == [""]  # no colorbar
    (legend,) = few.legends
    assert [t.get_text() for t in legend.get_texts()] == ["lr", "1", "2", "3", "4", "5", "6"]
    many = compare.plot_layers(_numeric_frame(compare.MAX_LEGEND_COLOURS + 1), metric="sim")
    assert [ax.get_label() for ax in many.axes] == ["", "<colorbar>"]
    assert many.legends == []


@pytest.mark.parametrize("count", [2, compare.MAX_LEGEND_COLOURS + 1])
def test_an_infinite_colour_value_is_drawn_off_the_scale(count: int) -> None:
    """``max_grad_norm=inf`` (no clipping): the finite values keep the scale (with [0, 1, inf]
    0 and 1 had one colour and inf none at all; with [1, 5, inf] matplotlib failed), and inf is
    drawn in a colour of its own with a legend entry, beside a colorbar when there is one."""
    frame = _numeric_frame(count + 1)
    frame.loc[frame["trial_id"] == "t0", "lr"] = 0.0
    frame.loc[frame["trial_id"] == f"t{count}", "lr"] = np.inf
    figure = compare.plot_layers(frame, metric="sim", color_by="lr")
    lines = {line.get_label(): line.get_color() for line in figure.axes[0].get_lines()}
    colours = [to_rgba(c) for c in lines.values()]
    assert len(set(colours)) == count + 1  # every trial its own, visible colour
    assert all(c[3] == 1.0 for c in colours)
    assert (0.0, 0.0, 0.0, 1.0) in colours  # inf
    texts = [t.get_text() for legend in figure.legends for t in legend.get_texts()]
    assert "inf" in texts
    colorbar = [ax for ax in figure.axes if ax.get_label() == "<colorbar>"]
    assert len(colorbar) == (count > compare.MAX_LEGEND_COLOURS - 1)


def _timeline_experiment(root: Path) -> Path:
    """cccc_00000 freezes stem and block.0 at once (reported from iteration 3) and is stopped
    there; cccc_00001 runs 5 iterations and freezes nothing; head never freezes."""
    experiment = root / "sweep"
    config = {"lr": 0.1}
    both = ("stem", "block.0")
    results = [report("ccccc_00000", config, i) for i in (1, 2)]
    results.append(report("ccccc_00000", config, 3, both, done=True))
    write_trial(experiment, "train_ccccc_00000", config, results)
    config = {"lr": 0.2}
    results = [report("ccccc_00001", config, i) for i in range(1, 6)]
    write_trial(experiment, "train_ccccc_00001", config, results)
    return experiment


def test_freeze_timeline_markers_of_one_iteration_do_not_hide_each_other(tmp_path) -> None:
    df = compare.load(_timeline_experiment(tmp_path))
    assert compare.freezable_layers(df) == ["stem", "block.0"]
    figure = compare.plot_freeze_timeline(df, color_by="lr")
    figure.draw_without_rendering()  # lays the figure out: the axes' final size
    (ax,) = figure.axes
    marks = {line.get_label(): line for line in ax.get_lines()}
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "stem",
        "block.0",
        "stopped early",
    ]  # head cannot freeze: no entry
    assert "head" not in marks
    stem, block, stop = marks["stem"], marks["block.0"], marks["stopped early"]
    assert list(stem.get_xdata()) == list(block.get_xdata()) == [3]
    (y_stem,), (y_block,) = stem.get_ydata(), block.get_ydata()
    assert -0.5 < y_stem < y_block < 0.5  # both within trial 0's row, stem (input side) on top
    row_points = 72 * figure.get_figheight() * _axes_height(ax) / len(ax.get_yticks())
    apart = (y_block - y_stem) * row_points  # in points
    assert apart >= stem.get_markersize()  # the markers do not overlap
    assert list(stop.get_xdata()) == [3] and list(stop.get_ydata()) == [0]
    assert stop.get_zorder() < min(stem.get_zorder(), block.get_zorder())  # drawn beneath


def _axes_height(ax) -> float:
    return float(ax.get_position().height)


def test_freeze_timeline_offsets_are_spread_evenly() -> None:
    assert compare.plots.timeline_offsets(0) == []
    assert compare.plots.timeline_offsets(1) == [0.0]
    offsets = compare.plots.timeline_offsets(4)
    assert offsets == pytest.approx(np.linspace(-0.28, 0.28, 4))


def test_the_iteration_where_a_value_became_infinite_is_marked() -> None:
    """A loss that diverged to inf at iteration 2: the line cannot show it, so a mark stands
    at iteration 2 on the last finite value (it looked as if the trial had just ended)."""
    rows = [("a", 0.1, i, "loss", None, v) for i, v in [(1, 1.0), (2, 0.8), (3, 0.6)]]
    rows += [("b", 1.0, i, "loss", None, v) for i, v in [(1, 1.0), (2, np.inf), (3, np.inf)]]
    frame = pd.DataFrame(
        rows, columns=["trial_id", "lr", "training_iteration", "metric", "layer", "value"]
    )
    figure = compare.plot_layers(frame, metric="loss")
    (marks,) = [c for c in figure.axes[0].collections if c.get_gid() == "not finite"]
    assert marks.get_offsets().tolist() == [[2.0, 1.0]]
    texts = [t.get_text() for legend in figure.legends for t in legend.get_texts()]
    assert "not finite (NaN or inf) from here" in texts
    from ikkuna_tune.compare.plotly_figures import layers_figure

    traces = [t for t in layers_figure(frame, metric="loss").data if t.marker.symbol]
    assert [(t.x[0], t.y[0]) for t in traces if t.marker.symbol == "triangle-up"] == [(2.0, 1.0)]


def test_each_stretch_of_values_that_are_not_finite_is_marked() -> None:
    """A NaN at iteration 2 (one overflowed batch), finite values again, then inf from
    iteration 5 on: a mark at the start of each stretch, on the last finite value before it
    (only the first was marked, and the later inf was on no figure)."""
    values = [(1, 1.0), (2, np.nan), (3, 3.0), (4, 2.0), (5, np.inf), (6, np.inf)]
    rows = [("a", 0.1, i, "loss", None, v) for i, v in values]
    frame = pd.DataFrame(
        rows, columns=["trial_id", "lr", "training_iteration", "metric", "layer", "value"]
    )
    figure = compare.plot_layers(frame, metric="loss")
    (marks,) = [c for c in figure.axes[0].collections if c.get_gid() == "not finite"]
    assert marks.get_offsets().tolist() == [[2.0, 1.0], [5.0, 2.0]]
    from ikkuna_tune.compare.plotly_figures import layers_figure

    traces = [t for t in layers_figure(frame, metric="loss").data if t.marker.symbol]
    up = [t for t in traces if t.marker.symbol == "triangle-up"]
    assert [(t.x[0], t.y[0]) for t in up] == [(2.0, 1.0), (5.0, 2.0)]
    hovers = " ".join(t.hovertemplate for t in up)
    assert "not finite (nan) at iteration 2" in hovers
    assert "not finite (inf) at iteration 5 to 6" in hovers


def test_the_automatic_line_style_tells_apart_drawn_trials_only(tmp_path) -> None:
    # two trials failed before their first report (no line): "broken" separates them from the
    # drawn ones, but tells no drawn line apart; "case" does
    experiment = tmp_path / "sweep"
    drawn = [(8, "x"), (8, "y"), (16, "x"), (16, "y")]
    for index, (width, case) in enumerate(drawn):
        config = {"lr": 0.1, "width": width, "case": case, "broken": False}
        rows = [report(f"bbbbb_0000{index}", config, i) for i in (1, 2)]
        write_trial(experiment, f"train_bbbbb_0000{index}_{index}", config, rows)
    for index, width in enumerate([8, 16], start=len(drawn)):
        config = {"lr": 0.1, "width": width, "case": "x", "broken": True}
        write_trial(experiment, f"train_bbbbb_0000{index}_{index}", config, [], error=True)
    df = compare.load(experiment)
    assert len(df.attrs["trials"]) == 6 and df["trial_id"].nunique() == 4
    assert compare.auto_style_by(df, "width") == "case"


def test_a_stopped_trial_is_marked_at_its_last_iteration_where_a_layer_line_ends_sooner(
    tmp_path,
) -> None:
    """The stem's values stop at its freeze (a frozen prefix is no longer measured); the trial
    goes on to iteration 4, where the scheduler stops it: the square is at 4 in both
    renderings, on the last value the stem's line shows."""
    experiment = tmp_path / "sweep"
    for number, lr in enumerate((0.1, 0.2)):
        trial_id = f"ccccc_0000{number}"
        iterations = 6 if number == 0 else 4
        results = [
            report(trial_id, {"lr": lr}, i, done=number == 1 and i == iterations)
            for i in range(1, iterations + 1)
        ]
        if number == 1:
            for result in results[2:]:
                result["sim"]["stem"] = None
        write_trial(experiment, f"train_{trial_id}", {"lr": lr}, results)
    df = compare.load(experiment)
    stem = _value(df, "ccccc_00001", "stem", 2)
    figure = compare.plot_layers(df, metric="sim", color_by="lr")
    panels = {ax.get_title(): ax for ax in figure.axes}
    assert _marks(panels["stem"], "stopped early") == [(4.0, stem)]
    assert _marks(panels["head"], "stopped early") == [(4.0, _value(df, "ccccc_00001", "head", 4))]
    html = compare.layers_figure(df, metric="sim", color_by="lr")
    squares = [t for t in html.data if t.mode == "markers" and t.marker.symbol == "square"]
    assert len(squares) == 3 and ([4], [stem]) in [(list(t.x), list(t.y)) for t in squares]
    assert all(list(t.x) == [4] for t in squares)


def test_a_trial_stopped_before_its_first_value_is_marked_and_in_the_legend(tmp_path) -> None:
    """Self-similarity has no value at report 1 (in any trial): a trial stopped there has no
    line in any panel. It keeps its colour in the legend, and its square stands at iteration 1
    at the top of each panel, in view, in both renderings (it was left out of the figure)."""
    experiment = tmp_path / "sweep"
    for number, lr in enumerate((0.1, 0.2, 0.4)):
        trial_id = f"ddddd_0000{number}"
        iterations = 1 if number == 2 else 4
        results = [
            report(trial_id, {"lr": lr}, i, done=number == 2) for i in range(1, iterations + 1)
        ]
        results[0]["sim"] = dict.fromkeys(results[0]["sim"])  # None: not measured at report 1
        write_trial(experiment, f"train_{trial_id}", {"lr": lr}, results)
    df = compare.load(experiment)
    assert "ddddd_00002" not in set(df[df["metric"] == "sim"]["trial_id"])
    figure = compare.plot_layers(df, metric="sim", color_by="lr")
    panels = {ax.get_title(): ax for ax in figure.axes if ax.get_title()}
    for ax in panels.values():
        ((x, y),) = _marks(ax, "stopped early")
        highest = max(float(np.nanmax(line.get_ydata())) for line in ax.lines)
        assert x == 1.0 and y >= highest  # at the top
    legend_labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert "0.4" in legend_labels
    html = compare.layers_figure(df, metric="sim", color_by="lr")
    squares = [t for t in html.data if t.meta == "ddddd_00002"]
    assert len(squares) == len(panels) and all(list(t.x) == [1] for t in squares)
    assert [t.showlegend for t in squares].count(True) == 1
    low, high = html.layout.xaxis.range  # the lines start at 2: the marks at 1 are in view
    assert low < 1 < high


def test_every_trial_of_two_families_has_one_legend_entry_in_the_html_figure(tmp_path) -> None:
    """Two model families, each with its own layers: the second family's trial has no trace in
    the first panel, and had no legend entry (the legend is how a trial is hidden or
    isolated); now each trial has exactly one."""
    experiment = tmp_path / "sweep"
    for number, lr in enumerate((0.1, 0.2)):
        trial_id = f"eeeee_0000{number}"
        results = [report(trial_id, {"lr": lr}, i) for i in range(1, 4)]
        if number == 1:
            for result in results:
                for key in ("sim", "frozen"):
                    result[key] = {f"other_{k}": v for k, v in result[key].items()}
        write_trial(experiment, f"train_{trial_id}", {"lr": lr}, results)
    df = compare.load(experiment)
    html = compare.layers_figure(df, metric="sim", color_by="lr")
    entries = [t.meta for t in html.data if t.showlegend]
    assert sorted(entries) == ["eeeee_00000", "eeeee_00001"]


def test_a_legend_of_many_trials_is_cut_to_the_figure_with_a_warning(caplog) -> None:
    """30 trials told apart by their ids: the legend ran off the bottom of the saved figure
    (13 entries visible, nothing said) and tab20's 20 colours repeated unsaid. Now every
    entry left in the legend lies inside the figure, the last names how many were left out,
    and both are warned of."""
    rows = [(f"t{t:02d}", it, "loss", None, 1.0 / (it + t)) for t in range(30) for it in (1, 2)]
    frame = pd.DataFrame(
        rows, columns=["trial_id", "training_iteration", "metric", "layer", "value"]
    )
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune"):
        figure = compare.plot_layers(frame, metric="loss")  # coloured by trial
    figure.canvas.draw()
    renderer, box = figure.canvas.get_renderer(), figure.bbox
    (legend,) = figure.legends
    texts = legend.get_texts()
    for text in texts:
        extent = text.get_window_extent(renderer)
        assert box.y0 <= extent.y0 and extent.y1 <= box.y1, text.get_text()
    labels = [t.get_text() for t in texts]
    shown = [label for label in labels if re.fullmatch(r"t\d\d", label)]
    assert labels[-1] == f"... and {30 - len(shown)} more (summary.csv, report.html)"
    assert shown == [f"t{i:02d}" for i in range(len(shown))] and len(shown) >= 5
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert f"legend shows {len(shown)} of 30 entries" in messages
    assert "30 values to tell apart by colour but only 20 colours" in messages
    # a legend that fits is left whole: 13 trials in one panel's height (14 entries)
    caplog.clear()
    few = frame[frame["trial_id"] < "t13"]
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune"):
        figure = compare.plot_layers(few, metric="loss")
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert labels == ["trial", *[f"t{i:02d}" for i in range(13)]]
    assert not [r for r in caplog.records if "legend shows" in r.getMessage()]


def test_a_legend_with_two_long_sections_is_cut_in_both_to_fit(caplog) -> None:
    """12 trials coloured by one parameter and styled by another, 12 values each: cutting the
    longest section alone left the legend running off the figure; both are cut, each saying
    how many it left out."""
    rows = [
        (f"t{t:02d}", f"o{t:02d}", f"a{t:02d}", it, "loss", None, 1.0 / (it + t))
        for t in range(12)
        for it in (1, 2)
    ]
    columns = ["trial_id", "opt", "arch", "training_iteration", "metric", "layer", "value"]
    frame = pd.DataFrame(rows, columns=columns)
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune"):
        figure = compare.plot_layers(frame, metric="loss", color_by="opt", style_by="arch")
    figure.canvas.draw()
    renderer, box = figure.canvas.get_renderer(), figure.bbox
    texts = figure.legends[0].get_texts()
    for text in texts:
        extent = text.get_window_extent(renderer)
        assert box.y0 <= extent.y0 and extent.y1 <= box.y1, text.get_text()
    labels = [t.get_text() for t in texts]
    assert sum(label.startswith("... and") for label in labels) == 2
    messages = [r.getMessage() for r in caplog.records if "legend shows" in r.getMessage()]
    assert len(messages) == 2 and "'opt'" in messages[0] and "'arch'" in messages[1]


def test_the_interactive_figure_shows_configs_and_layer_names_as_written() -> None:
    """plotly.js decodes no ``&quot;`` and reads ``%{...}`` in a hovertemplate as a
    placeholder: a config's list of strings and a ``%{y}`` in its value are shown as written
    (``"`` plain, ``%{`` as its entity), and a layer's name is no markup in its panel title."""
    from ikkuna_tune.compare.plotly_figures import layers_figure, timeline_figure

    rows = [("a", '["conv", "fc"]', "%{y}", i, "sim", "x<br>y", 0.5 + 0.1 * i) for i in (1, 2)]
    rows += [("b", '["fc"]', "p", i, "sim", "x<br>y", 0.4) for i in (1, 2)]
    rows += [(t, c, f, i, "frozen", "x<br>y", 0.0) for t, c, f, i, *_ in rows]
    columns = ["trial_id", "freeze_list", "fmt", "training_iteration", "metric", "layer", "value"]
    frame = pd.DataFrame(rows, columns=columns)
    figure = layers_figure(frame, metric="sim", color_by="freeze_list")
    (line, _) = [t for t in figure.data if t.mode == "lines+markers"]
    assert line.name == 'a (freeze_list=["conv", "fc"])'
    assert 'freeze_list=["conv", "fc"]' in line.hovertemplate
    assert "fmt=%&#123;y}" in line.hovertemplate and "&quot;" not in line.hovertemplate
    assert [a.text for a in figure.layout.annotations] == ["x&lt;br&gt;y"]
    timeline = timeline_figure(frame, color_by="freeze_list")
    ticks = ['a (freeze_list=["conv", "fc"])', 'b (freeze_list=["fc"])']
    assert list(timeline.layout.yaxis.ticktext) == ticks


def test_a_failed_trial_with_no_finite_value_is_marked_at_the_panel_top(tmp_path) -> None:
    """Every value of the trial's metric is NaN (diverged from its first report), and it
    failed: the interactive figure marks its end at the panel's top, as the matplotlib one
    does, instead of leaving the mark out."""
    from ikkuna_tune.compare.plotly_figures import layers_figure

    experiment = tmp_path / "sweep"
    for number in (0, 1):
        config = {"lr": 0.1 * (number + 1)}
        trial_id = f"ddddd_0000{number}"
        results = [report(trial_id, config, i) for i in (1, 2)]
        if number == 1:
            for result in results:
                result["sim"] = {name: float("nan") for name in result["sim"]}
        write_trial(experiment, f"train_{trial_id}", config, results, error=number == 1)
    df = compare.load(experiment)
    figure = compare.plot_layers(df, metric="sim", color_by="lr")
    interactive = layers_figure(df, metric="sim", color_by="lr")
    panels = {a.text: a for a in interactive.layout.annotations}
    for ax in figure.axes:
        assert [x for x, _ in _marks(ax, "failed")] == [2.0]
    failed = [t for t in interactive.data if t.mode == "markers" and t.marker.symbol == "x"]
    assert [(t.meta, t.x[0]) for t in failed] == [("ddddd_00001", 2.0)] * len(panels)
    for trace in failed:  # at the top of its own panel
        top = max(
            v
            for t in interactive.data
            if t.mode == "lines+markers" and t.yaxis == trace.yaxis
            for v in t.y
            if np.isfinite(v)
        )
        assert trace.y[0] == top
