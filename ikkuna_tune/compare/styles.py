"""How trials look in the comparison's figures, the matplotlib and the plotly ones alike: a
colour per trial by one config parameter, a line style by another (``style_by="auto"``: the one
that tells apart trials of one colour)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize

from ikkuna_tune.compare.frame import (
    check_color_by,
    check_tidy,
    config_columns,
    shown_value,
    sort_key,
    trial_values,
)

__all__ = [
    "AUTO",
    "LINESTYLES",
    "MAX_LEGEND_COLOURS",
    "auto_color_by",
    "auto_style_by",
    "resolve_color_by",
]

logger = logging.getLogger(__name__)

#: ``style_by="auto"``: pick the parameter that tells trials of one colour apart;
#: ``color_by="auto"``: the learning rate, or else the parameter that varies most.
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
#: Colours of numeric values off any colour scale, by how they are shown.
_OFF_SCALE = {
    "inf": (0.0, 0.0, 0.0, 1.0),
    "-inf": (0.55, 0.27, 0.07, 1.0),
    "nan": (0.35, 0.35, 0.35, 1.0),
}


def _ordered(labels: dict[str, str]) -> list[str]:
    """The distinct off-scale labels, in a fixed order."""
    return [label for label in ("-inf", "inf", "nan") if label in labels.values()]


@dataclass
class Colours:
    """How trials are coloured by a config parameter: a colour per trial, and either a
    ``mappable`` for a colorbar or ``legend`` entries ``(label, colour)``.

    Examples:
        >>> colours = trial_colours({"a": "relu", "b": "elu", "c": "relu"}, "viridis")
        >>> colours.colour["a"] == colours.colour["c"] != colours.colour["b"]
        True
        >>> [label for label, _ in colours.legend], colours.mappable
        (['elu', 'relu'], None)
    """

    colour: dict[str, Any]
    mappable: ScalarMappable | None = None
    legend: list[tuple[str, Any]] = field(default_factory=list)


def trial_colours(values: dict[str, Any], cmap: str) -> Colours:
    """Numbers map through ``cmap`` (log scale when all positive and spanning a factor >= 10),
    with a colorbar, or a legend of their values when there are at most
    :data:`MAX_LEGEND_COLOURS` of them; anything else gets one qualitative colour per distinct
    value and a legend.

    Examples:
        >>> colours = trial_colours({"a": 0.001, "b": 0.1, "c": None}, "viridis")
        >>> [label for label, _ in colours.legend], colours.colour["c"]  # grey: missing
        (['0.001', '0.1', '(missing)'], (0.6, 0.6, 0.6, 1.0))
        >>> unlimited = trial_colours({"a": 1.0, "b": 5.0, "c": math.inf}, "viridis")
        >>> [label for label, _ in unlimited.legend], unlimited.colour["c"]  # off the scale
        (['1', '5', 'inf'], (0.0, 0.0, 0.0, 1.0))
        >>> many = trial_colours({str(i): 10.0**i for i in range(8)}, "viridis")
        >>> many.legend, isinstance(many.mappable, ScalarMappable), type(many.mappable.norm)
        ([], True, <class 'matplotlib.colors.LogNorm'>)
    """
    present = {k: v for k, v in values.items() if v is not None}
    numeric = present and all(
        isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_))
        for v in present.values()
    )
    if numeric:
        # the scale spans the finite values; inf (no limit, say), -inf and NaN get colours of
        # their own, off the scale, each with a legend entry
        finite = {k: float(v) for k, v in present.items() if math.isfinite(float(v))}
        off_scale = {k: shown_value(v) for k, v in present.items() if k not in finite}
        numbers = np.array(list(finite.values()) or [0.0])
        low, high = float(numbers.min()), float(numbers.max())
        if low > 0 and high / low >= 10:
            norm: Normalize = LogNorm(low, high)
        else:
            norm = Normalize(low, high if high > low else low + 1)
        colour_map = colormaps[cmap]
        colour = {k: colour_map(norm(x)) for k, x in finite.items()}
        colour.update({k: _OFF_SCALE.get(label, _MISSING_COLOUR) for k, label in off_scale.items()})
        colour.update({k: _MISSING_COLOUR for k in values if k not in present})
        extra = [(label, _OFF_SCALE.get(label, _MISSING_COLOUR)) for label in _ordered(off_scale)]
        if len(present) < len(values):
            extra.append(("(missing)", _MISSING_COLOUR))
        distinct = sorted({x: present[k] for k, x in finite.items()}.items())
        if len(distinct) + len(set(off_scale.values())) <= MAX_LEGEND_COLOURS:
            legend = [(shown_value(v), colour_map(norm(x))) for x, v in distinct]
            return Colours(colour, legend=legend + extra)
        mappable = ScalarMappable(norm=norm, cmap=colour_map)
        return Colours(colour, mappable=mappable, legend=extra)
    distinct_text = sorted({str(v) for v in present.values()})
    palette = colormaps["tab10" if len(distinct_text) <= 10 else "tab20"]
    if len(distinct_text) > palette.N:
        logger.warning(
            "%d values to tell apart by colour but only %d colours: colours repeat in the PNG "
            "figures (report.html names each trial where the pointer rests)",
            len(distinct_text),
            palette.N,
        )
    by_value = {v: palette(i % palette.N) for i, v in enumerate(distinct_text)}
    colour = {k: by_value[str(v)] if v is not None else _MISSING_COLOUR for k, v in values.items()}
    legend = [(v, by_value[v]) for v in distinct_text]
    if len(present) < len(values):
        legend.append(("(missing)", _MISSING_COLOUR))
    return Colours(colour, legend=legend)


def auto_style_by(df: pd.DataFrame, color_by: str | None) -> str | None:
    """The config parameter that best tells apart trials ``color_by`` gives one colour.

    Of the parameters every trial with rows in ``df`` has a value of (a trial that failed
    before its first report draws no line to tell apart), with 2 to ``len(LINESTYLES)``
    distinct values among those trials, and not the same grouping of them as ``color_by``'s
    (then it adds nothing): the one with the fewest values (ties: by name). None if there is
    none.

    Examples:
        >>> from ikkuna_tune.compare.frame import TIDY_COLUMNS
        >>> trials = zip("abcd", [0.1, 0.1, 0.01, 0.01], ["sgd", "adam", "sgd", "adam"])
        >>> rows = [(*trial, 1, "loss", None, 0.5) for trial in trials]
        >>> df = pd.DataFrame(rows, columns=["trial_id", "lr", "optimizer", *TIDY_COLUMNS[1:]])
        >>> auto_style_by(df, "lr"), auto_style_by(df, None)
        ('optimizer', None)
    """
    check_tidy(df)
    if color_by is None:
        return None
    drawn = {str(t) for t in df["trial_id"].unique()}
    colour = {t: v for t, v in trial_values(df, color_by).items() if t in drawn}
    candidates = []
    for name in config_columns(df):
        if name == color_by:
            continue
        values = {t: v for t, v in trial_values(df, name).items() if t in drawn}
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
    entries ``(value, index)``; styles repeat, with a warning, beyond ``len(LINESTYLES)``.

    Examples:
        >>> index, legend = trial_styles({"a": "sgd", "b": "adam", "c": "sgd"})
        >>> index, legend, LINESTYLES[index["a"]]
        ({'a': 1, 'b': 0, 'c': 1}, [('adam', 0), ('sgd', 1)], ('--', 'dash'))
    """
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
    """``style_by`` checked, with ``"auto"`` resolved (see :func:`auto_style_by`).

    Examples:
        >>> from ikkuna_tune.compare.frame import TIDY_COLUMNS
        >>> trials = zip("abcd", [0.1, 0.1, 0.01, 0.01], ["sgd", "adam", "sgd", "adam"])
        >>> rows = [(*trial, 1, "loss", None, 0.5) for trial in trials]
        >>> df = pd.DataFrame(rows, columns=["trial_id", "lr", "optimizer", *TIDY_COLUMNS[1:]])
        >>> resolve_style_by(df, "lr", AUTO), resolve_style_by(df, "lr", "lr")
        ('optimizer', 'lr')
    """
    if style_by == AUTO and AUTO not in config_columns(df):
        return auto_style_by(df, color_by)
    check_color_by(df, style_by, what="style_by")
    return style_by


def _is_learning_rate(name: str) -> bool:
    leaf = name.rsplit("/", 1)[-1].lower()
    return leaf in ("lr", "learning_rate") or leaf.endswith(("_lr", "-lr"))


def auto_color_by(df: pd.DataFrame) -> str | None:
    """The config parameter that colours the trials when none is named: ``lr`` if the trials
    have one, else a learning rate under another name (``learning_rate``, ``opt/lr``), else
    the parameter with the most distinct values among the trials (ties: by name), else None
    (colour by trial). Only parameters that take at least 2 values count.

    Examples:
        >>> from ikkuna_tune.compare.frame import TIDY_COLUMNS
        >>> trials = zip("abcd", [0.1, 0.1, 0.01, 0.01], [8, 16, 32, 64])
        >>> rows = [(*trial, 1, "loss", None, 0.5) for trial in trials]
        >>> df = pd.DataFrame(rows, columns=["trial_id", "opt/lr", "width", *TIDY_COLUMNS[1:]])
        >>> auto_color_by(df), auto_color_by(df.drop(columns="opt/lr"))
        ('opt/lr', 'width')
    """
    counts: dict[str, int] = {}
    for name in config_columns(df):
        values = trial_values(df, name)
        distinct = {str(v) for v in values.values() if v is not None}
        if len(distinct) >= 2:
            counts[name] = len(distinct)
    if "lr" in counts:
        return "lr"
    rates = sorted(name for name in counts if _is_learning_rate(name))
    if rates:
        return rates[0]
    if not counts:
        return None
    return min(counts, key=lambda name: (-counts[name], name))


def resolve_color_by(df: pd.DataFrame, color_by: str | None) -> str | None:
    """``color_by`` checked, with ``"auto"`` resolved (see :func:`auto_color_by`).

    Examples:
        >>> from ikkuna_tune.compare.frame import TIDY_COLUMNS
        >>> rows = [(t, lr, 1, "loss", None, 0.5) for t, lr in [("a", 0.1), ("b", 0.01)]]
        >>> df = pd.DataFrame(rows, columns=["trial_id", "learning_rate", *TIDY_COLUMNS[1:]])
        >>> resolve_color_by(df, AUTO), resolve_color_by(df, None)
        ('learning_rate', None)
    """
    if color_by == AUTO and AUTO not in config_columns(df):
        return auto_color_by(df)
    check_color_by(df, color_by)
    return color_by
