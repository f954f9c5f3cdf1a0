"""The matplotlib plots of a compared experiment: per-layer small multiples and the freeze
timeline. How trials are coloured and styled is in :mod:`~ikkuna_tune.compare.styles`, what the
timeline shows in :mod:`~ikkuna_tune.compare.timeline` (both shared with the HTML report)."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ikkuna_tune.compare.frame import (
    trial_label,
)
from ikkuna_tune.compare.panels import last_finite, layer_panels, nonfinite_runs
from ikkuna_tune.compare.styles import (
    AUTO,
    LINESTYLES,
    MAX_LEGEND_COLOURS,
    auto_style_by,
    resolve_color_by,
)
from ikkuna_tune.compare.timeline import freezable_layers, timeline_data
from ikkuna_tune.compare.timeline import timeline_offsets as timeline_offsets  # reachable here too

__all__ = [
    "AUTO",
    "LINESTYLES",
    "MAX_LEGEND_COLOURS",
    "auto_style_by",
    "freezable_layers",
    "plot_freeze_timeline",
    "plot_layers",
]

logger = logging.getLogger(__name__)

_FROZEN_MARK = {"marker": "*", "s": 130, "edgecolors": "black", "linewidths": 0.7}
_STOPPED_MARK = {"marker": "s", "s": 42, "edgecolors": "black", "linewidths": 1.2}
_FAILED_MARK = {"marker": "X", "s": 70, "color": "tab:red", "edgecolors": "white"}
_NONFINITE_MARK = {"marker": "^", "s": 60, "edgecolors": "tab:red", "linewidths": 1.5}


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _as_written(figure: Figure, *categorical: Any) -> Figure:
    """Show the figure's words (config values and names, layer and trial names, the metric) as
    written: matplotlib reads text between two ``$`` as math, which drew ``$5-$10`` in italics
    and failed on ``$HOME_$USER``. The tick labels of ``categorical`` axes (trials) are words
    too; numeric tick labels are left to matplotlib's formatters."""
    texts = []
    for legend in [*figure.legends, *(ax.get_legend() for ax in figure.axes)]:
        if legend is not None:
            texts += [legend.get_title(), *legend.get_texts()]
    for ax in figure.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
    for ax in categorical:
        texts += ax.get_yticklabels()
    for text in texts:
        if text:
            text.set_parse_math(False)
    return figure


def _value_at(xs: np.ndarray, ys: np.ndarray, x: float) -> float:
    """A line's height at ``x`` (between points: interpolated; outside: the nearest end)."""
    return float(np.interp(x, xs, ys))


# ----------------------------------------------------------------------------------- layers
def _end_kind(trial_id: str, failed: set[str], early: dict[str, bool]) -> str:
    """The mark at a trial's end: ``'failed'``, ``'stopped early'`` or none (``''``)."""
    return "failed" if trial_id in failed else "stopped early" if early.get(trial_id) else ""


def plot_layers(
    df: pd.DataFrame,
    metric: str = "self_similarity",
    color_by: str | None = AUTO,
    *,
    style_by: str | None = AUTO,
    sharey: bool = True,
    columns: int = 4,
    cmap: str = "viridis",
    budget: int | None = None,
) -> Figure:
    """Small multiples of a per-layer metric: one Axes per layer, one line per trial.

    Axes come in network order (see :func:`layers`), titled with the layer's name, x =
    ``training_iteration``, y = ``metric``, on one shared y-axis (``sharey=False`` frees each
    panel's). Each trial's line (its ``gid`` is the trial id) is coloured by its value of the
    config parameter ``color_by``: numbers through ``cmap``, on a log scale when all are
    positive and span a factor of 10 or more, with a colorbar, or with a legend of the
    values when there are at most :data:`MAX_LEGEND_COLOURS`; other values one colour each,
    with a legend. ``color_by=None`` colours by trial. The line style follows ``style_by``,
    another config parameter (``"auto"``: the one that tells apart trials of one colour, see
    :func:`auto_style_by`; None: all solid).

    In each layer's panel a star on a trial's line marks the iteration that layer was first
    reported frozen in it, and at the trial's last point a square marks a trial stopped early
    (before ``budget`` iterations, default: the longest trial's; see :func:`summary`) and an
    ``X`` a failed one, and a triangle the first iteration at which a trial's value is not
    finite (an infinite loss: the line cannot show it), at its last finite value (scatter
    collections with ``gid`` ``"frozen"``, ``"stopped early"``, ``"failed"`` and ``"not
    finite"``). One legend on the right explains colours, styles and marks. A
    network-wide metric gets one Axes titled with the metric's name, with stop marks only.

    Raises:
        ValueError: ``metric``, ``color_by`` or ``style_by`` is not in ``df``.

    Examples:
        >>> from ikkuna_tune.compare.frame import TIDY_COLUMNS
        >>> rows = [(t, lr, i, "self_similarity", "fc", 0.9 + i / 100)
        ...         for t, lr in [("a", 0.1), ("b", 0.01)] for i in (1, 2)]
        >>> df = pd.DataFrame(rows, columns=["trial_id", "lr", *TIDY_COLUMNS[1:]])
        >>> figure = plot_layers(df, metric="self_similarity", color_by="lr")
        >>> [ax.get_title() for ax in figure.axes], [l.get_gid() for l in figure.axes[0].lines]
        (['fc'], ['a', 'b'])
    """
    color_by = resolve_color_by(df, color_by)
    plan = layer_panels(df, metric, color_by, style_by, budget, columns, cmap)
    rows, panels, trial_ids, style_by = plan.rows, plan.panels, plan.trial_ids, plan.style_by
    nrows, ncols, colours, styles = plan.nrows, plan.ncols, plan.colours, plan.styles
    style_legend, early, frozen_at = plan.style_legend, plan.early, plan.frozen_at
    failed = {t for t in trial_ids if plan.infos.get(t, {}).get("failed")}

    figure = _new_figure(3.2 * ncols + 2.4, 2.6 * nrows + 0.6)
    grid = figure.subplots(nrows, ncols, sharex=True, sharey=sharey, squeeze=False)
    for ax in grid.flat[len(panels) :]:
        figure.delaxes(ax)
    marks_used: set[str] = set()
    measured = set(rows["trial_id"].unique())
    for index, (ax, layer) in enumerate(zip(grid.flat, panels)):
        selected = rows[rows["layer"] == layer] if layer is not None else rows
        marks: dict[str, list[tuple[float, float, Any]]] = {}
        for trial_id in trial_ids:
            trial = selected[selected["trial_id"] == trial_id]
            if not len(trial):
                kind = _end_kind(trial_id, failed, early)
                if trial_id not in measured and kind and trial_id in plan.last:
                    # ended before its first value of the metric: its end mark, at the top
                    colour = colours.colour[trial_id]
                    marks.setdefault(kind, []).append((plan.last[trial_id], math.nan, colour))
                continue
            xs = trial["training_iteration"].to_numpy(dtype=float)
            ys = trial["value"].to_numpy(dtype=float)
            colour = colours.colour[trial_id]
            ax.plot(
                xs,
                ys,
                color=colour,
                linestyle=LINESTYLES[styles[trial_id]][0],
                gid=trial_id,
                label=trial_id,
                linewidth=1.4,
                marker="." if len(trial) < 30 else None,
            )
            if layer is not None and layer in frozen_at.get(trial_id, {}):
                x = frozen_at[trial_id][layer]
                marks.setdefault("frozen", []).append((x, _value_at(xs, ys, x), colour))
            for first, _ in nonfinite_runs(ys):  # values the line cannot show (NaN, inf)
                marks.setdefault("not finite", []).append(
                    (xs[first], last_finite(ys, first), colour)
                )
            kind = _end_kind(trial_id, failed, early)
            if kind:  # at the trial's last iteration (a layer's line can end before, at its
                # freeze), on the last value the line shows
                stop_x = plan.last.get(trial_id, xs[-1])
                marks.setdefault(kind, []).append((stop_x, last_finite(ys), colour))
        top = ax.get_ylim()[1]
        for kind, style in (
            ("frozen", _FROZEN_MARK),
            ("stopped early", _STOPPED_MARK),
            ("failed", _FAILED_MARK),
            ("not finite", _NONFINITE_MARK),
        ):
            # a point without a finite value to stand on goes to the top of the panel
            points = [(x, top if math.isnan(y) else y, c) for x, y, c in marks.get(kind, [])]
            if not points:
                continue
            marks_used.add(kind)
            colour_of = {} if kind == "failed" else {"c": [p[2] for p in points]}
            ax.scatter(
                [p[0] for p in points],
                [p[1] for p in points],
                gid=kind,
                label=f"_{kind}",
                zorder=4,
                clip_on=False,
                **colour_of,
                **style,
            )
        if layer is not None:  # (a network-wide metric's one panel: the figure's title names it)
            ax.set_title(layer)
        ax.set_xlabel("training_iteration")
        if not sharey or index % ncols == 0:
            ax.set_ylabel(metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    used = list(grid.flat[: len(panels)])
    if colours.mappable is not None:
        figure.colorbar(colours.mappable, ax=used, label=color_by or "trial")
    sections: list[tuple[str, list[tuple[Any, str]]]] = []
    if colours.legend:
        sections.append(
            (color_by or "trial", [(Line2D([], [], color=c), label) for label, c in colours.legend])
        )
    if style_legend:
        handles = [
            (Line2D([], [], color="black", linestyle=LINESTYLES[i][0]), label)
            for label, i in style_legend
        ]
        sections.append((str(style_by), handles))
    mark_entries = [
        (_mark_handle(style, kind), label)
        for kind, style, label in (
            ("frozen", _FROZEN_MARK, "layer frozen"),
            ("stopped early", _STOPPED_MARK, "stopped early"),
            ("failed", _FAILED_MARK, "failed"),
            ("not finite", _NONFINITE_MARK, "not finite (NaN or inf) from here"),
        )
        if kind in marks_used
    ]
    if mark_entries:
        sections.append(("marks", mark_entries))
    _sectioned_legend(figure, sections)
    figure.suptitle(f"{metric} per layer" if panels[0] is not None else metric, parse_math=False)
    return _as_written(figure)


def _mark_handle(style: dict[str, Any], kind: str) -> Line2D:
    face = style.get("color", "0.7")
    return Line2D(
        [],
        [],
        linestyle="none",
        marker=style["marker"],
        markersize=math.sqrt(style["s"]),
        markerfacecolor=face,
        markeredgecolor=style.get("edgecolors", face),
        markeredgewidth=style.get("linewidths", 0.8),
        label=kind,
    )


def _cut_sections(
    sections: list[tuple[str, list[tuple[Any, str]]]], fits: int
) -> tuple[list[tuple[str, list[tuple[Any, str]]]], list[tuple[str, int, int]]]:
    """``sections`` cut, the longest first, so that ``fits`` entries (titles included) hold
    them, each cut section's rest named in one last entry; and what was cut (each cut
    section's title, the entries kept, all of them).

    Examples:
        >>> entries = [(None, f"t{i}") for i in range(30)]
        >>> cut, what = _cut_sections([("trial", entries), ("marks", [(None, "failed")])], 11)
        >>> [len(e) for _, e in cut], cut[0][1][-1][1], what
        ([8, 1], '... and 23 more (summary.csv, report.html)', [('trial', 7, 30)])
        >>> styles = [(None, f"s{i}") for i in range(12)]
        >>> cut, what = _cut_sections([("trial", entries[:12]), ("opt", styles)], 14)
        >>> [len(e) for _, e in cut], what
        ([6, 6], [('trial', 5, 12), ('opt', 5, 12)])
    """
    kept = [len(entries) for _, entries in sections]
    cut = [False] * len(sections)
    while sum(1 + k + c for k, c in zip(kept, cut)) > fits:
        longest = max(range(len(kept)), key=lambda i: kept[i])
        if kept[longest] <= 1:
            break
        kept[longest] -= 1
        cut[longest] = True
    shown, what = [], []
    for (title, entries), keep, was_cut in zip(sections, kept, cut):
        if not was_cut:
            shown.append((title, entries))
            continue
        more = (
            Line2D([], [], linestyle="none"),
            f"... and {len(entries) - keep} more (summary.csv, report.html)",
        )
        shown.append((title, [*entries[:keep], more]))
        what.append((title, keep, len(entries)))
    return shown, what


def _sectioned_legend(figure: Figure, sections: list[tuple[str, list[tuple[Any, str]]]]) -> None:
    """One legend right of the panels, each section under its title in bold. A legend taller
    than the figure (200 trials ran off it, cut unseen) is cut to what fits, measured, the
    longest sections first, the last entry of each cut section naming how many were left out,
    with a warning."""
    if not sections:
        return
    total = sum(1 + len(entries) for _, entries in sections)
    renderer = figure.canvas.get_renderer()
    room = 0.97 * figure.bbox.height  # (the legend's own padding from the figure's edge)
    fits = total
    while True:
        shown, what = _cut_sections(sections, fits)
        legend = _legend(figure, shown)
        height = legend.get_window_extent(renderer).height
        if height <= room or fits <= 3 * len(sections):
            break
        legend.remove()
        entries = sum(1 + len(e) for _, e in shown)
        fits = min(fits - 1, int(room / (height / entries)))
    for title, keep, count in what:
        logger.warning(
            "The figure's legend shows %d of %d entries under %r (they do not fit its "
            "height): summary.csv and report.html list them all",
            keep,
            count,
            title,
        )


def _legend(figure: Figure, sections: list[tuple[str, list[tuple[Any, str]]]]) -> Any:
    handles, labels, titles = [], [], []
    for title, entries in sections:
        titles.append(len(labels))
        handles.append(Line2D([], [], linestyle="none"))
        labels.append(title)
        for handle, label in entries:
            handles.append(handle)
            labels.append(label)
    legend = figure.legend(handles, labels, loc="outside right upper", handlelength=2.6)
    texts = legend.get_texts()
    for text in texts:  # as written (see _as_written): it is measured before that runs
        text.set_parse_math(False)
    for position in titles:
        texts[position].set_fontweight("bold")
    return legend


# --------------------------------------------------------------------------- freeze timeline
def plot_freeze_timeline(
    df: pd.DataFrame,
    color_by: str | None = None,
    *,
    cmap: str = "viridis",
    budget: int | None = None,
) -> Figure:
    """When each layer froze in each trial.

    One row per trial (labelled ``trial_id``, plus ``color_by``'s value when given, and
    sorted by it), x = ``training_iteration``. A light band spans the iterations a trial ran
    (from 0.5 to its last iteration + 0.5).
    One marker per layer at the first iteration reporting it frozen, for the layers some trial
    froze (:func:`freezable_layers`): a colour and shape per layer (input side darkest,
    following ``cmap``), each layer at its own height within the trial's row
    (:func:`timeline_offsets`: the first on top), so layers frozen at the same iteration are
    all seen; each layer is one ``Line2D`` labelled with its name, holding every trial's
    point, and one legend entry, in network order. A red ``x`` marks the last iteration of
    a failed trial and a black ``|`` that of a trial stopped early (before ``budget``
    iterations, see :func:`summary`),
    drawn beneath the layer markers.

    Raises:
        ValueError: ``df`` has no ``frozen/<layer>`` metrics (not reported through
            :func:`ikkuna_tune.report`) or ``color_by`` is unknown.

    Examples:
        >>> from ikkuna_tune.compare.frame import TIDY_COLUMNS
        >>> rows = [(t, lr, i, "frozen", "fc", float(t == "a" and i == 2))
        ...         for t, lr in [("a", 0.1), ("b", 0.01)] for i in (1, 2)]
        >>> df = pd.DataFrame(rows, columns=["trial_id", "lr", *TIDY_COLUMNS[1:]])
        >>> ax = plot_freeze_timeline(df, color_by="lr").axes[0]
        >>> [label.get_text() for label in ax.get_yticklabels()]  # sorted by lr
        ['b (lr=0.01)', 'a (lr=0.1)']
        >>> fc = ax.lines[-1]  # one marker per trial that froze fc, at the iteration it did
        >>> fc.get_label(), fc.get_xdata().tolist(), fc.get_ydata().tolist()
        ('fc', [2], [1.0])
    """
    color_by = resolve_color_by(df, color_by)
    t = timeline_data(df, color_by, budget)
    infos, iterations, trial_ids, values = t.infos, t.iterations, t.trial_ids, t.values
    early, names, frozen_at, offsets = t.early, t.names, t.frozen_at, t.offsets

    row_inches = max(0.45, 0.16 * len(names))
    row_points = 72 * row_inches
    spacing = (offsets[1] - offsets[0]) * row_points if len(names) > 1 else row_points / 2
    marker_size = min(8.0, max(4.0, 0.85 * spacing))
    figure = _new_figure(8.5, 1.3 + row_inches * len(trial_ids))
    ax = figure.subplots()
    positions = {t: i for i, t in enumerate(trial_ids)}
    for trial_id in trial_ids:
        y = positions[trial_id]
        last = int(iterations.get(trial_id, 0))
        if last:
            ax.plot(  # iteration i is drawn from i - 0.5 to i + 0.5
                [0.5, last + 0.5],
                [y, y],
                color="0.9",
                linewidth=0.7 * row_points,
                solid_capstyle="butt",
                zorder=1,
            )
    layer_colours = colormaps[cmap](np.linspace(0.0, 0.9, max(len(names), 1)))
    markers = "osD^v<>ph*"
    for index, layer in enumerate(names):
        points = [
            (frozen_at[t][layer], positions[t] + offsets[index])
            for t in trial_ids
            if layer in frozen_at.get(t, {})
        ]
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            linestyle="none",
            marker=markers[index % len(markers)],
            markersize=marker_size,
            markeredgecolor="white",
            markeredgewidth=0.6,
            color=layer_colours[index],
            label=layer,
            zorder=3,
        )
    failed = [t for t in trial_ids if infos[t].get("failed")]
    stopped = [t for t in trial_ids if early.get(t)]
    for trials, marker, colour, size, label in (
        (failed, "x", "tab:red", 0.5 * row_points, "failed"),
        (stopped, "|", "black", 0.8 * row_points, "stopped early"),
    ):
        if trials:
            ax.plot(
                [int(iterations.get(t, 0)) for t in trials],
                [positions[t] for t in trials],
                linestyle="none",
                marker=marker,
                markersize=size,
                markeredgewidth=2,
                color=colour,
                label=label,
                zorder=2,
            )
    ax.set_yticks(range(len(trial_ids)))
    ax.set_yticklabels([trial_label(t, color_by, values.get(t)) for t in trial_ids])
    ax.set_ylim(len(trial_ids) - 0.5, -0.5)
    ax.set_xlim(0.3, max(iterations.values(), default=1) + 0.7)
    ax.set_xlabel("training_iteration")
    ax.set_ylabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Layer freeze timeline")
    ax.grid(True, axis="x", alpha=0.3)
    if not names:
        ax.text(0.5, 0.5, "no layer was frozen", transform=ax.transAxes, ha="center", va="center")
    if ax.get_legend_handles_labels()[0]:
        legend = ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="layer frozen")
        for handle in legend.legend_handles:  # the legend shows markers at a readable size
            if isinstance(handle, Line2D) and handle.get_marker() not in ("|", "x"):
                handle.set_markersize(8)
            elif isinstance(handle, Line2D):
                handle.set_markersize(10)
    return _as_written(figure, ax)
