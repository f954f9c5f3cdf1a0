"""What a freeze timeline shows, for the matplotlib and the plotly one alike: the trials in
row order, the layers some trial froze and when, and where each layer's marker sits in a row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ikkuna_tune.compare.frame import (
    FROZEN,
    check_budget,
    check_color_by,
    check_tidy,
    freeze_iterations,
    iterations_run,
    layers,
    sort_key,
    stopped_early,
    trial_infos,
    trial_values,
    with_recorded_stops,
)

__all__ = ["freezable_layers"]


def freezable_layers(df: pd.DataFrame) -> list[str]:
    """The layers, in network order, that some trial froze.

    Examples:
        >>> from ikkuna_tune.compare.frame import TIDY_COLUMNS
        >>> rows = [("a", 1, "frozen", "conv", 0.0), ("a", 1, "frozen", "fc", 0.0)]
        >>> rows += [("a", 2, "frozen", "conv", 1.0), ("a", 2, "frozen", "fc", 0.0)]
        >>> df = pd.DataFrame(rows, columns=TIDY_COLUMNS)
        >>> freezable_layers(df)
        ['conv']
    """
    frozen = {layer for per_trial in freeze_iterations(df).values() for layer in per_trial}
    return [name for name in layers(df, FROZEN) if name in frozen]


def timeline_offsets(count: int) -> list[float]:
    """Where, around its trial's row, each of ``count`` freezable layers' markers sit (first
    layer on top), so that layers frozen at the same iteration do not hide each other.

    Examples:
        >>> timeline_offsets(3), timeline_offsets(1)
        ([-0.28, 0.0, 0.28], [0.0])
    """
    if count <= 1:
        return [0.0] * count
    return [float(v) for v in np.linspace(-0.28, 0.28, count)]


@dataclass
class TimelineData:
    """What both freeze timelines (PNG and HTML) draw, checked and in row order.

    Examples:
        >>> from ikkuna_tune.compare.frame import TIDY_COLUMNS
        >>> rows = [("a", 1, "frozen", "conv", 0.0), ("a", 1, "frozen", "fc", 0.0)]
        >>> rows += [("a", 2, "frozen", "conv", 1.0), ("a", 2, "frozen", "fc", 0.0)]
        >>> df = pd.DataFrame(rows, columns=TIDY_COLUMNS)
        >>> data = timeline_data(df, color_by=None, budget=None)
        >>> data.trial_ids, data.iterations, data.names, data.frozen_at, data.early
        (['a'], {'a': 2}, ['conv'], {'a': {'conv': 2}}, {'a': False})
    """

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

    Examples:
        >>> from ikkuna_tune.compare.frame import TIDY_COLUMNS
        >>> rows = [("a", 0.1, 1, "frozen", "fc", 0.0), ("b", 0.01, 1, "frozen", "fc", 1.0)]
        >>> df = pd.DataFrame(rows, columns=["trial_id", "lr", *TIDY_COLUMNS[1:]])
        >>> data = timeline_data(df, color_by="lr", budget=None)
        >>> data.trial_ids, data.values, data.frozen_at
        (['b', 'a'], {'a': 0.1, 'b': 0.01}, {'b': {'fc': 1}})
    """
    check_tidy(df)
    check_color_by(df, color_by)
    check_budget(budget)
    if FROZEN not in set(df["metric"].unique()):
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
        stopped_early(with_recorded_stops(df, infos), iterations, budget),
        names,
        freeze_iterations(df),
        timeline_offsets(len(names)),
    )
