"""The matplotlib plots of a compared experiment: per-layer small multiples and the freeze
timeline, and the colours and line styles of trials that the HTML report shares."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from ikkuna_tune.compare.frame import (
    FROZEN,
    check_budget,
    check_color_by,
    check_metric,
    check_tidy,
    config_columns,
    freeze_iterations,
    iterations_run,
    layers,
    shown_value,
    sort_key,
    stopped_early,
    trial_infos,
    trial_label,
    trial_values,
)

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

#: ``style_by="auto"``: pick the parameter that tells trials of one colour apart.
AUTO = "auto"
#: Line styles for ``style_by``, as (matplotlib, plotly) names.
LINESTYLES: tuple[tuple[Any, str], ...] = (
    ("-", "solid"),
    ("--", "dash"),
    (":", "dot"),
    ("-.", "dashdot"),
    ((0, (8, 2)), "longdash"),
    ((0, (8, 2, 1, 2)), "longdashdot"),
)
#: A numeric colour parameter with at most this many values gets a legend, not a colorbar.
MAX_LEGEND_COLOURS = 6
_MISSING_COLOUR = (0.6, 0.6, 0.6, 1.0)
_FROZEN_MARK = {"marker": "*", "s": 130, "edgecolors": "black", "linewidths": 0.7}
_STOPPED_MARK = {"marker": "s", "s": 42, "edgecolors": "black", "linewidths": 1.2}
_FAILED_MARK = {"marker": "X", "s": 70, "color": "tab:red", "edgecolors": "white"}


# --------------------------------------------------------------------------- colours, styles
@dataclass
class Colours:
    """How trials are coloured by a config parameter: a colour per trial, and either a
    ``mappable`` for a colorbar or ``legend`` entries ``(label, colour)``."""

    colour: dict[str, Any]
    mappable: ScalarMappable | None = None
    legend: list[tuple[str, Any]] = field(default_factory=list)


def trial_colours(values: dict[str, Any], cmap: str) -> Colours:
    """Numbers map through ``cmap`` (log scale when all positive and spanning a factor >= 10),
    with a colorbar, or a legend of their values when there are at most
    :data:`MAX_LEGEND_COLOURS` of them; anything else gets one qualitative colour per distinct
    value and a legend."""
    present = {k: v for k, v in values.items() if v is not None}
    numeric = present and all(
        isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_))
        for v in present.values()
    )
    if numeric:
        numbers = np.array([float(v) for v in present.values()])
        low, high = float(numbers.min()), float(numbers.max())
        if low > 0 and high / low >= 10:
            norm: Normalize = LogNorm(low, high)
        else:
            norm = Normalize(low, high if high > low else low + 1)
        colour_map = colormaps[cmap]
        colour = {k: colour_map(norm(float(v))) for k, v in present.items()}
        colour.update({k: _MISSING_COLOUR for k in values if k not in present})
        distinct = sorted({float(v): v for v in present.values()}.items())
        if len(distinct) <= MAX_LEGEND_COLOURS:
            legend = [(shown_value(v), colour_map(norm(x))) for x, v in distinct]
            if len(present) < len(values):
                legend.append(("(missing)", _MISSING_COLOUR))
            return Colours(colour, legend=legend)
        return Colours(colour, mappable=ScalarMappable(norm=norm, cmap=colour_map))
    distinct_text = sorted({str(v) for v in present.values()})
    palette = colormaps["tab10" if len(distinct_text) <= 10 else "tab20"]
    by_value = {v: palette(i % palette.N) for i, v in enumerate(distinct_text)}
    colour = {k: by_value[str(v)] if v is not None else _MISSING_COLOUR for k, v in values.items()}
    legend = [(v, by_value[v]) for v in distinct_text]
    if len(present) < len(values):
        legend.append(("(missing)", _MISSING_COLOUR))
    return Colours(colour, legend=legend)


def auto_style_by(df: pd.DataFrame, color_by: str | None) -> str | None:
    """The config parameter that best tells apart trials ``color_by`` gives one colour.

    Of the parameters every trial has a value of, with 2 to ``len(LINESTYLES)`` distinct
    values, and not the same grouping of trials as ``color_by``'s (then it adds nothing):
    the one with the fewest values (ties: by name). None if there is none.
    """
    if color_by is None:
        return None
    colour = trial_values(df, color_by)
    candidates = []
    for name in config_columns(df):
        if name == color_by:
            continue
        values = trial_values(df, name)
        if any(v is None for v in values.values()):
            continue
        distinct = {str(v) for v in values.values()}
        if not 2 <= len(distinct) <= len(LINESTYLES):
            continue
        pairs = {(str(colour.get(t)), str(v)) for t, v in values.items()}
        if len(pairs) == len({str(c) for c in colour.values()}):
            continue  # each colour has one value of it: the colours already tell
        candidates.append((len(distinct), name))
    return min(candidates)[1] if candidates else None


def trial_styles(values: dict[str, Any]) -> tuple[dict[str, int], list[tuple[str, int]]]:
    """An index into :data:`LINESTYLES` per trial, by its value (sorted), and the legend
    entries ``(value, index)``; styles repeat, with a warning, beyond ``len(LINESTYLES)``."""
    distinct = sorted({str(v): v for v in values.values()}.values(), key=sort_key)
    if len(distinct) > len(LINESTYLES):
        logger.warning(
            "%d values to tell apart by line style but only %d styles: styles repeat",
            len(distinct),
            len(LINESTYLES),
        )
    index = {str(v): i % len(LINESTYLES) for i, v in enumerate(distinct)}
    return (
        {t: index[str(v)] for t, v in values.items()},
        [(shown_value(v), index[str(v)]) for v in distinct],
    )


def resolve_style_by(df: pd.DataFrame, color_by: str | None, style_by: str | None) -> str | None:
    """``style_by`` checked, with ``"auto"`` resolved (see :func:`auto_style_by`)."""
    if style_by == AUTO and AUTO not in config_columns(df):
        return auto_style_by(df, color_by)
    check_color_by(df, style_by, what="style_by")
    return style_by


def freezable_layers(df: pd.DataFrame) -> list[str]:
    """The layers, in network order, that some trial froze."""
    frozen = {layer for per_trial in freeze_iterations(df).values() for layer in per_trial}
    return [name for name in layers(df, FROZEN) if name in frozen]


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _value_at(xs: np.ndarray, ys: np.ndarray, x: float) -> float:
    """A line's height at ``x`` (between points: interpolated; outside: the nearest end)."""
    return float(np.interp(x, xs, ys))


# ----------------------------------------------------------------------------------- layers
def plot_layers(
    df: pd.DataFrame,
    metric: str = "self_similarity",
    color_by: str | None = "lr",
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
    ``X`` a failed one (scatter collections with ``gid`` ``"frozen"``, ``"stopped
    early"`` and ``"failed"``). One legend on the right explains colours, styles and marks. A
    network-wide metric gets one Axes titled with the metric's name, with stop marks only.

    Raises:
        ValueError: ``metric``, ``color_by`` or ``style_by`` is not in ``df``.
    """
    check_tidy(df)
    check_metric(df, metric)
    check_color_by(df, color_by)
    check_budget(budget)
    if not isinstance(columns, int) or columns < 1:
        raise ValueError(f"Expected `columns` to be a positive integer but got {columns!r}")
    style_by = resolve_style_by(df, color_by, style_by)
    rows = df[df["metric"] == metric]
    names = layers(df, metric)
    panels: list[str | None] = list(names) if names else [None]
    trial_ids = sorted(set(rows["trial_id"]))
    if color_by is None:
        colours = trial_colours({t: t for t in trial_ids}, cmap)
    else:
        values = trial_values(df, color_by)
        colours = trial_colours({t: values.get(t) for t in trial_ids}, cmap)
    styles, style_legend = dict.fromkeys(trial_ids, 0), []
    if style_by is not None:
        style_values = trial_values(df, style_by)
        styles, style_legend = trial_styles({t: style_values.get(t) for t in trial_ids})
    infos = trial_infos(df)
    early = stopped_early(infos, iterations_run(df), budget)
    failed = {t for t in trial_ids if infos.get(t, {}).get("failed")}
    frozen_at = freeze_iterations(df)

    ncols = min(columns, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    figure = _new_figure(3.2 * ncols + 2.4, 2.6 * nrows + 0.6)
    grid = figure.subplots(nrows, ncols, sharex=True, sharey=sharey, squeeze=False)
    for ax in grid.flat[len(panels) :]:
        figure.delaxes(ax)
    marks_used: set[str] = set()
    for index, (ax, layer) in enumerate(zip(grid.flat, panels)):
        selected = rows[rows["layer"] == layer] if layer is not None else rows
        marks: dict[str, list[tuple[float, float, Any]]] = {}
        for trial_id in trial_ids:
            trial = selected[selected["trial_id"] == trial_id]
            if not len(trial):
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
            kind = "failed" if trial_id in failed else "stopped early" if early[trial_id] else ""
            if kind:
                marks.setdefault(kind, []).append((xs[-1], ys[-1], colour))
        for kind, style in (
            ("frozen", _FROZEN_MARK),
            ("stopped early", _STOPPED_MARK),
            ("failed", _FAILED_MARK),
        ):
            points = marks.get(kind, [])
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
        ax.set_title(layer if layer is not None else metric)
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
        )
        if kind in marks_used
    ]
    if mark_entries:
        sections.append(("marks", mark_entries))
    _sectioned_legend(figure, sections)
    figure.suptitle(f"{metric} per layer" if names else metric)
    return figure


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


def _sectioned_legend(figure: Figure, sections: list[tuple[str, list[tuple[Any, str]]]]) -> None:
    """One legend right of the panels, each section under its title in bold."""
    if not sections:
        return
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
    for position in titles:
        texts[position].set_fontweight("bold")


# --------------------------------------------------------------------------- freeze timeline
def timeline_offsets(count: int) -> list[float]:
    """Where, around its trial's row, each of ``count`` freezable layers' markers sit (first
    layer on top), so that layers frozen at the same iteration do not hide each other."""
    if count <= 1:
        return [0.0] * count
    return [float(v) for v in np.linspace(-0.28, 0.28, count)]


@dataclass
class TimelineData:
    """What both freeze timelines (PNG and HTML) draw, checked and in row order."""

    infos: dict[str, dict[str, Any]]
    iterations: dict[str, int]
    trial_ids: list[str]
    values: dict[str, Any]
    early: dict[str, bool]
    names: list[str]
    frozen_at: dict[str, dict[str, int]]
    offsets: list[float]


def timeline_data(df: pd.DataFrame, color_by: str | None, budget: int | None) -> TimelineData:
    """Check ``df`` for a freeze timeline and gather its rows (sorted by ``color_by``).

    Raises:
        ValueError: ``df`` has no ``frozen/<layer>`` metrics (not reported through
            :func:`ikkuna_tune.report`) or ``color_by`` is unknown.
    """
    check_tidy(df)
    check_color_by(df, color_by)
    check_budget(budget)
    if FROZEN not in set(df["metric"]):
        raise ValueError(
            "No frozen/<layer> metrics in the results: was the trainable wrapped with "
            "ikkuna_tune.instrument and reporting through ikkuna_tune.report?"
        )
    infos = trial_infos(df)
    iterations = iterations_run(df)
    trial_ids = list(infos)
    values = trial_values(df, color_by)
    if color_by is not None:
        trial_ids.sort(key=lambda t: sort_key(values.get(t)))
    names = freezable_layers(df)
    return TimelineData(
        infos,
        iterations,
        trial_ids,
        values,
        stopped_early(infos, iterations, budget),
        names,
        freeze_iterations(df),
        timeline_offsets(len(names)),
    )


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
    """
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
    return figure
