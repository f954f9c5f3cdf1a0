"""What the per-layer figures draw, prepared once for both renderings (matplotlib's
:func:`~ikkuna_tune.compare.plots.plot_layers` and plotly's
:func:`~ikkuna_tune.compare.plotly_figures.layers_figure`): the arguments checked, one panel per
layer, each trial's colour and line style, and which trials froze, stopped early or failed."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ikkuna_tune.compare.frame import (
    check_budget,
    check_color_by,
    check_metric,
    check_tidy,
    freeze_iterations,
    iterations_run,
    layers,
    stopped_early,
    trial_infos,
    trial_values,
    with_recorded_stops,
)
from ikkuna_tune.compare.styles import Colours, resolve_style_by, trial_colours, trial_styles

__all__ = ["LayerPanels", "last_finite", "layer_panels", "nonfinite_runs"]


@dataclass(frozen=True)
class LayerPanels:
    """The data of a per-layer figure (see :func:`layer_panels`).

    Examples:
        >>> from ikkuna_tune.compare.frame import TIDY_COLUMNS
        >>> rows = [("a", 0.1, 1, "loss", None, 0.5), ("b", 0.01, 1, "loss", None, 0.7)]
        >>> df = pd.DataFrame(rows, columns=["trial_id", "lr", *TIDY_COLUMNS[1:]])
        >>> plan = layer_panels(df, "loss", None, None, None, 4, "viridis")
        >>> plan.panels, plan.trial_ids, plan.styles  # a network-wide metric: one panel
        ([None], ['a', 'b'], {'a': 0, 'b': 0})
    """

    rows: pd.DataFrame  # the metric's rows
    panels: list[str | None]  # layer names in network order; [None]: one network-wide panel
    nrows: int
    ncols: int
    trial_ids: list[str]
    style_by: str | None  # resolved ("auto" replaced)
    colour_values: dict[str, Any]  # each trial's value of color_by (its id without one)
    colours: Colours
    style_values: dict[str, Any]
    styles: dict[str, int]  # index into LINESTYLES
    style_legend: list[tuple[str, int]]
    infos: dict[str, dict[str, Any]]
    early: dict[str, bool]  # stopped before the budget
    frozen_at: dict[str, dict[str, Any]]  # trial -> layer -> first iteration reported frozen
    #: each trial's last training_iteration (where it stopped or failed; a layer's line can end
    #: before it, a layer whose values stop at its freeze)
    last: dict[str, int]


def layer_panels(
    df: pd.DataFrame,
    metric: str,
    color_by: str | None,
    style_by: str | None,
    budget: int | None,
    columns: int,
    cmap: str,
) -> LayerPanels:
    """Check the arguments of a per-layer figure and prepare what it draws.

    Raises:
        ValueError: ``df`` is not tidy, or ``metric``, ``color_by`` or ``style_by`` is not in
            it, or ``budget`` or ``columns`` is not a positive integer.

    Examples:
        >>> from ikkuna_tune.compare.frame import TIDY_COLUMNS
        >>> rows = [(t, lr, i, "self_similarity", layer, 0.9)
        ...         for t, lr in [("a", 0.1), ("b", 0.01)] for i in (1, 2) for layer in "xyz"]
        >>> df = pd.DataFrame(rows, columns=["trial_id", "lr", *TIDY_COLUMNS[1:]])
        >>> plan = layer_panels(df, "self_similarity", "lr", None, None, 2, "viridis")
        >>> plan.panels, (plan.nrows, plan.ncols), plan.colour_values
        (['x', 'y', 'z'], (2, 2), {'a': 0.1, 'b': 0.01})
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
    # every trial, measured or not: one stopped (or failed) before its first value of the
    # metric (self-similarity has none at report 1) still gets its colour and its end mark
    trial_ids = sorted(set(df["trial_id"].unique()))
    colour_values = trial_values(df, color_by) if color_by else {t: t for t in trial_ids}
    colours = trial_colours({t: colour_values.get(t) for t in trial_ids}, cmap)
    style_values = trial_values(df, style_by)
    styles: dict[str, int] = dict.fromkeys(trial_ids, 0)
    style_legend: list[tuple[str, int]] = []
    if style_by is not None:
        styles, style_legend = trial_styles({t: style_values.get(t) for t in trial_ids})
    infos = trial_infos(df)
    last = iterations_run(df)
    ncols = min(columns, len(panels))
    return LayerPanels(
        rows=rows,
        panels=panels,
        nrows=math.ceil(len(panels) / ncols),
        ncols=ncols,
        trial_ids=trial_ids,
        style_by=style_by,
        colour_values=colour_values,
        colours=colours,
        style_values=style_values,
        styles=styles,
        style_legend=style_legend,
        infos=infos,
        early=stopped_early(with_recorded_stops(df, infos), last, budget),
        frozen_at=freeze_iterations(df),
        last=last,
    )


def nonfinite_runs(ys: np.ndarray) -> list[tuple[int, int]]:
    """The stretches of values a line cannot show (NaN, inf), as (first, last) positions: a
    mark stands at the start of each, since finite values may follow one (a NaN loss of one
    overflowed batch, training going on) and a later stretch must not go unseen.

    Examples:
        >>> nonfinite_runs(np.array([1.0, np.nan, 3.0, np.inf, np.inf]))
        [(1, 1), (3, 4)]
        >>> nonfinite_runs(np.array([1.0, 2.0]))
        []
    """
    bad = ~np.isfinite(ys)
    if not bad.any():
        return []
    edges = np.diff(np.concatenate(([0], bad.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    return [(int(a), int(b)) for a, b in zip(starts, ends)]


def last_finite(ys: np.ndarray, end: int | None = None) -> float:
    """The last finite value of ``ys[:end]`` (NaN if there is none): where a mark at the end of
    a line that the line cannot show (an infinite value) stands.

    Examples:
        >>> last_finite(np.array([0.5, 0.4, np.inf])), last_finite(np.array([0.5, 0.4]), 1)
        (0.4, 0.5)
    """
    finite = ys[:end][np.isfinite(ys[:end])]
    return float(finite[-1]) if len(finite) else math.nan
