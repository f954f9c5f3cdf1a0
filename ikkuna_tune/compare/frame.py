"""Questions asked of the tidy DataFrame of :func:`ikkuna_tune.compare.load`, and its checks.

Shared by the tables, the matplotlib plots and the HTML report; nothing here draws or writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ikkuna_tune import keys
from ikkuna_tune.checks import check_bool

__all__ = [
    "FROZEN",
    "TIDY_COLUMNS",
    "SharedDict",
    "SharedList",
    "check_color_by",
    "check_metric",
    "check_mode",
    "check_tidy",
    "config_columns",
    "freeze_iterations",
    "iterations_run",
    "layers",
    "metrics",
    "missing",
    "sort_key",
    "stopped_early",
    "trial_infos",
    "trial_label",
    "trial_values",
    "with_recorded_stops",
]

#: The tidy columns besides the config columns.
TIDY_COLUMNS = ("trial_id", "training_iteration", "metric", "layer", "value")
#: The per-layer metric whose reported order is the network's order of layers.
FROZEN = keys.FROZEN


class SharedDict(dict):  # type: ignore[type-arg]
    """A ``dict`` in ``df.attrs`` that the frames derived from ``df`` share instead of copying.

    pandas deep-copies a frame's ``attrs`` into every frame an operation returns (a selection,
    a comparison, each group of a ``groupby``). For the trials and decisions of a sweep of 30
    trials, that copying took 159 of the 175 s of a comparison. :func:`load` stores its
    ``attrs`` entries as these, which ``copy.deepcopy`` returns as they are, so a frame
    selected from ``df`` holds the same objects. To change an entry for one frame only, assign
    a new object to it (``sub.attrs["trials"] = {...}``) rather than changing it in place.

    Examples:
        >>> import copy
        >>> shared = SharedDict(a={"lr": 0.1})
        >>> copy.deepcopy(shared) is shared
        True
        >>> shared == {"a": {"lr": 0.1}}
        True
    """

    __slots__ = ()

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedDict:
        return self


class SharedList(list):  # type: ignore[type-arg]
    """A ``list`` in ``df.attrs`` shared by the frames derived from ``df``, as
    :class:`SharedDict`.

    Examples:
        >>> import copy
        >>> rows = SharedList([{"action": "freeze"}])
        >>> copy.deepcopy(rows) is rows
        True
    """

    __slots__ = ()

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedList:
        return self


def config_columns(df: pd.DataFrame) -> list[str]:
    """The config parameters of a tidy DataFrame from :func:`load`.

    Examples:
        >>> rows = [("a", 0.1, 1, "frozen", "conv", 0.0), ("b", 0.01, 1, "loss", None, 0.7)]
        >>> df = pd.DataFrame(rows, columns=["trial_id", "lr", *TIDY_COLUMNS[1:]])
        >>> config_columns(df)
        ['lr']
    """
    check_tidy(df)
    return [c for c in df.columns if c not in TIDY_COLUMNS]


def metrics(df: pd.DataFrame, per_layer: bool | None = None) -> list[str]:
    """Metric names in ``df`` (sorted); only per-layer ones, or only network-wide ones.

    Examples:
        >>> rows = [("a", 0.1, 1, "frozen", "conv", 0.0), ("b", 0.01, 1, "loss", None, 0.7)]
        >>> df = pd.DataFrame(rows, columns=["trial_id", "lr", *TIDY_COLUMNS[1:]])
        >>> metrics(df), metrics(df, per_layer=True), metrics(df, per_layer=False)
        (['frozen', 'loss'], ['frozen'], ['loss'])
    """
    check_tidy(df)
    if per_layer is not None:
        check_bool("per_layer", per_layer)  # the string "False" is truthy
    if per_layer is None:
        names = df["metric"]
    elif per_layer:
        names = df.loc[df["layer"].notna(), "metric"]
    else:
        names = df.loc[df["layer"].isna(), "metric"]
    return sorted(set(names))


def layers(df: pd.DataFrame, metric: str | None = None) -> list[str]:
    """Layer names in network order (of ``metric``'s layers, if given; an unknown ``metric`` is
    a ``ValueError``, a metric reported without values gives none).

    The order is that in which each trial reports ``frozen/<layer>`` (every tracked layer, in
    its model's order, in every report), the trials' orders merged (:func:`merged_order`: a
    sweep of two model families keeps each family's order); layers without it follow in order
    of first appearance.

    Examples:
        >>> rows = [("a", 1, "cka", "fc", 0.9), ("a", 1, "frozen", "conv", 0.0)]
        >>> rows += [("a", 1, "frozen", "fc", 0.0)]
        >>> df = pd.DataFrame(rows, columns=TIDY_COLUMNS)
        >>> layers(df), layers(df, metric="cka")
        (['conv', 'fc'], ['fc'])
    """
    check_tidy(df)
    if metric is not None and metric != FROZEN:  # an unknown metric (a typo) is an error
        check_metric(df, metric, allow_empty=True)
    rows = df[df["layer"].notna()]
    frozen = rows[rows["metric"] == FROZEN]
    ordered = merged_order(
        [list(dict.fromkeys(own["layer"])) for _, own in frozen.groupby("trial_id", sort=False)]
    )
    seen = set(ordered)
    ordered += [name for name in dict.fromkeys(rows["layer"]) if name not in seen]
    if metric is not None:
        present = set(rows.loc[rows["metric"] == metric, "layer"])
        ordered = [name for name in ordered if name in present]
    return ordered


def merged_order(orders: list[list[str]]) -> list[str]:
    """One order of the names of several ``orders`` that keeps each one's own order where they
    agree: a name new to the merged order goes right after the name before it in its own
    order, or, first in its own order, right before the first name after it already placed.

    Examples:
        >>> merged_order([["fc1", "fc2"], ["conv1", "conv2", "fc1", "fc2"]])
        ['conv1', 'conv2', 'fc1', 'fc2']
        >>> merged_order([["a", "b"], ["a", "x", "b"], ["y"]])
        ['a', 'x', 'b', 'y']
    """
    merged: list[str] = []
    for order in orders:
        anchor: int | None = None  # where the previous name of this order stands
        for i, name in enumerate(order):
            if name in merged:
                anchor = merged.index(name)
                continue
            if anchor is None:  # before the first later name of this order already placed
                later = [merged.index(n) for n in order[i + 1 :] if n in merged]
                anchor = (later[0] if later else len(merged)) - 1
            merged.insert(anchor + 1, name)
            anchor += 1
    return merged


def freeze_iterations(df: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Per trial, per layer: the first ``training_iteration`` of the last stretch of reports
    that say it is frozen (a layer unfrozen at a learning-rate change and frozen again counts
    from its last freeze; one frozen once, from its first frozen report).

    A layer frozen after a report (as the scheduler does) shows up frozen in the next one; one
    frozen by the trial at an epoch's end, before its report, in that report (it trained in
    that iteration: ``frozen_fraction`` counts it from the next).

    Examples:
        >>> rows = [("a", 1, "frozen", "conv", 0.0), ("a", 1, "frozen", "fc", 0.0)]
        >>> rows += [("a", 2, "frozen", "conv", 1.0), ("a", 2, "frozen", "fc", 0.0)]
        >>> df = pd.DataFrame(rows, columns=TIDY_COLUMNS)
        >>> freeze_iterations(df)
        {'a': {'conv': 2}}
        >>> flags = [0, 1, 0, 1, 1]  # frozen at 2, unfrozen at 3, frozen again at 4
        >>> df = pd.DataFrame([("a", i + 1, "frozen", "fc", float(f)) for i, f in enumerate(flags)],
        ...                   columns=TIDY_COLUMNS)
        >>> freeze_iterations(df)
        {'a': {'fc': 4}}
    """
    check_tidy(df)
    flags = df[(df["metric"] == FROZEN) & df["layer"].notna()].sort_values("training_iteration")
    result: dict[str, dict[str, int]] = {}
    for (trial_id, layer), group in flags.groupby(["trial_id", "layer"], sort=False):
        frozen = (group["value"] > 0).to_numpy()
        iterations = group["training_iteration"].to_numpy()
        if not frozen.any():
            continue
        last = len(frozen) - 1 - int(frozen[::-1].argmax())  # the last frozen report
        start = last
        while start > 0 and frozen[start - 1]:
            start -= 1
        result.setdefault(str(trial_id), {})[str(layer)] = int(iterations[start])
    return result


def iterations_run(df: pd.DataFrame) -> dict[str, int]:
    """Per trial: the last ``training_iteration`` it reported.

    Examples:
        >>> rows = [("a", 1, "frozen", "conv", 0.0), ("a", 1, "frozen", "fc", 0.0)]
        >>> rows += [("a", 2, "frozen", "conv", 1.0), ("a", 2, "frozen", "fc", 0.0)]
        >>> df = pd.DataFrame(rows, columns=TIDY_COLUMNS)
        >>> iterations_run(df)
        {'a': 2}
    """
    last = df.groupby("trial_id")["training_iteration"].max().to_dict()
    return {str(k): int(v) for k, v in last.items()}


def with_recorded_stops(
    df: pd.DataFrame, infos: Mapping[str, Mapping[str, Any]]
) -> dict[str, Mapping[str, Any]]:
    """``infos`` with every trial that SVCCAScheduler recorded a stop of (one still in force,
    in ``df.attrs["decisions"]``) marked ``stopped_by_tune``: a stop the scheduler recorded
    is Tune's too, also where no result says so (a trial HyperBand stopped while paused: its
    state reads paused or terminated, by timing). The summary, the layer panels and the
    freeze timeline all mark trials stopped early from it.

    Examples:
        >>> df = pd.DataFrame(columns=TIDY_COLUMNS)
        >>> df.attrs["decisions"] = [{"trial_id": "a", "action": "stop", "in_force": True}]
        >>> with_recorded_stops(df, {"a": {}, "b": {}})
        {'a': {'stopped_by_tune': True}, 'b': {}}
    """
    stops = {
        str(row["trial_id"])
        for row in df.attrs.get("decisions", [])
        if row.get("in_force", True) and row.get("action") == "stop"
    }
    return {
        t: {**info, "stopped_by_tune": True} if t in stops else info for t, info in infos.items()
    }


def stopped_early(
    infos: Mapping[str, Mapping[str, Any]], iterations: Mapping[str, int], budget: int | None = None
) -> dict[str, bool]:
    """Per trial: Tune stopped it (its last result says ``done``) before it ran ``budget``
    iterations (default: as many as the longest trial), and it did not fail.

    Examples:
        >>> infos = {"a": {"stopped_by_tune": True}, "b": {"stopped_by_tune": True}, "c": {}}
        >>> stopped_early(infos, {"a": 3, "b": 10, "c": 10})
        {'a': True, 'b': False, 'c': False}
        >>> stopped_early(infos, {"a": 3, "b": 10, "c": 10}, budget=5)
        Traceback (most recent call last):
        ...
        ValueError: Expected `budget` (the iterations a trial runs unless stopped early) to be \
at least the iterations every trial ran but got 5, while trial b ran 10
    """
    longest = max(iterations.items(), key=lambda item: int(item[1]), default=None)
    if budget is not None and longest is not None and int(longest[1]) > budget:
        raise ValueError(
            f"Expected `budget` (the iterations a trial runs unless stopped early) to be at "
            f"least the iterations every trial ran but got {budget}, while trial {longest[0]} "
            f"ran {int(longest[1])}"
        )
    if budget is None:
        budget = max((int(v) for v in iterations.values()), default=0)
    return {
        trial_id: bool(
            not info.get("failed")
            and info.get("stopped_by_tune")
            and int(iterations.get(trial_id, 0)) < budget
        )
        for trial_id, info in infos.items()
    }


def check_tidy(df: Any) -> None:
    """Check that ``df`` is a non-empty tidy DataFrame (it has the :data:`TIDY_COLUMNS`).

    Examples:
        >>> check_tidy(pd.DataFrame([("a", 1, "loss", None, 0.5)], columns=TIDY_COLUMNS))
        >>> check_tidy(pd.DataFrame(columns=TIDY_COLUMNS))
        Traceback (most recent call last):
        ...
        ValueError: The DataFrame holds no results
    """
    if not isinstance(df, pd.DataFrame) or not set(TIDY_COLUMNS) <= set(df.columns):
        got = type(df).__name__
        if isinstance(df, pd.DataFrame):
            lacking = [c for c in TIDY_COLUMNS if c not in df.columns]
            got = f"a DataFrame without {', '.join(lacking)}"
        raise ValueError(
            f"Expected the tidy DataFrame of compare.load (columns {', '.join(TIDY_COLUMNS)}) "
            f"but got {got}"
        )
    if not len(df):
        raise ValueError("The DataFrame holds no results")


def check_metric(
    df: pd.DataFrame, metric: str, per_layer: bool | None = None, allow_empty: bool = False
) -> None:
    """Check that ``df`` has values of ``metric`` (of its kind, when ``per_layer`` is given).

    With ``allow_empty``, a metric reported without values (``df.attrs["empty_metrics"]``)
    passes too, if of the right kind.

    Examples:
        >>> rows = [("a", 0.1, 1, "frozen", "conv", 0.0), ("b", 0.01, 1, "loss", None, 0.7)]
        >>> df = pd.DataFrame(rows, columns=["trial_id", "lr", *TIDY_COLUMNS[1:]])
        >>> check_metric(df, "loss", per_layer=False)
        >>> check_metric(df, "frozen", per_layer=False)
        Traceback (most recent call last):
        ...
        ValueError: Metric 'frozen' is reported per layer; pick a network-wide metric: loss
    """
    empty = df.attrs.get("empty_metrics", {})
    if isinstance(metric, str) and metric not in set(df["metric"].unique()) and metric in empty:
        if per_layer is False and empty[metric]:
            raise ValueError(
                f"Metric {metric!r} is reported per layer; pick a network-wide metric: "
                f"{', '.join(metrics(df, per_layer=False)) or '(none)'}"
            )
        if allow_empty:
            return
        raise ValueError(
            f"Metric {metric!r} was reported but has no values in any trial (every value is "
            f"NaN or null); metrics with values: {', '.join(metrics(df)) or '(none)'}"
        )
    if not isinstance(metric, str) or metric not in set(df["metric"].unique()):
        layered, network = metrics(df, per_layer=True), metrics(df, per_layer=False)
        without = f"; without values: {', '.join(empty)}" if empty else ""
        raise ValueError(
            f"Unknown metric {metric!r}; per-layer metrics: {', '.join(layered) or '(none)'}; "
            f"network-wide metrics: {', '.join(network) or '(none)'}{without}"
        )
    if per_layer is False and metric not in metrics(df, per_layer=False):
        network = metrics(df, per_layer=False)
        raise ValueError(
            f"Metric {metric!r} is reported per layer; pick a network-wide metric: "
            f"{', '.join(network) or '(none)'}"
        )


def check_color_by(df: pd.DataFrame, color_by: str | None, what: str = "color_by") -> None:
    """Check that ``color_by`` is None or a config column of ``df`` (``what`` names the argument).

    Examples:
        >>> rows = [("a", 0.1, 1, "frozen", "conv", 0.0), ("b", 0.01, 1, "loss", None, 0.7)]
        >>> df = pd.DataFrame(rows, columns=["trial_id", "lr", *TIDY_COLUMNS[1:]])
        >>> check_color_by(df, "lr")
        >>> check_color_by(df, "momentum", what="style_by")
        Traceback (most recent call last):
        ...
        ValueError: Unknown style_by parameter 'momentum'; config columns: lr
    """
    if color_by is not None and color_by not in config_columns(df):
        raise ValueError(
            f"Unknown {what} parameter {color_by!r}; config columns: "
            f"{', '.join(config_columns(df)) or '(none)'}"
        )


def check_mode(mode: str) -> None:
    """Check that ``mode`` is ``'max'`` or ``'min'``.

    Examples:
        >>> check_mode("max")
        >>> check_mode("best")
        Traceback (most recent call last):
        ...
        ValueError: Expected `mode` to be 'max' or 'min' but got 'best'
    """
    if mode not in ("max", "min"):
        raise ValueError(f"Expected `mode` to be 'max' or 'min' but got {mode!r}")


def check_budget(budget: int | None) -> None:
    """Check that ``budget`` is a positive integer (NumPy's too, not a bool) or None.

    Examples:
        >>> check_budget(None), check_budget(np.int64(10))
        (None, None)
        >>> check_budget(0)
        Traceback (most recent call last):
        ...
        ValueError: Expected `budget` to be a positive integer or None but got 0
    """
    if budget is not None and (
        not isinstance(budget, (int, np.integer)) or isinstance(budget, bool) or budget < 1
    ):
        raise ValueError(f"Expected `budget` to be a positive integer or None but got {budget!r}")


def trial_infos(df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per-trial facts: from ``df.attrs`` when present, else what the rows tell.

    Examples:
        >>> rows = [("a", 0.1, 1, "frozen", "conv", 0.0), ("b", 0.01, 1, "loss", None, 0.7)]
        >>> df = pd.DataFrame(rows, columns=["trial_id", "lr", *TIDY_COLUMNS[1:]])
        >>> df.attrs["trials"] = {"b": {"status": "TERMINATED"}}
        >>> infos = trial_infos(df)
        >>> infos["a"]["config"], infos["a"]["status"], infos["b"]["status"]
        ({'lr': 0.1}, None, 'TERMINATED')
    """
    infos = {str(k): dict(v) for k, v in df.attrs.get("trials", {}).items()}
    config = config_columns(df)
    for trial_id, rows in df.groupby("trial_id", sort=False):
        info = infos.setdefault(str(trial_id), {})
        last = rows.sort_values("training_iteration", kind="stable").iloc[-1]
        info.setdefault("config", last[config].to_dict())
        info.setdefault("status", None)
        info.setdefault("failed", False)
        info.setdefault("stopped_by_tune", False)
        info.setdefault("path", None)
    return dict(sorted(infos.items()))


def trial_values(df: pd.DataFrame, column: str | None) -> dict[str, Any]:
    """Each trial's value of a config column: None when the trial's config lacks it, the text
    ``'None'`` where its config (as loaded, ``df.attrs``) sets it to None (a limit left off:
    no "(missing)" label for it).

    Examples:
        >>> rows = [("a", 0.1, 1, "loss", None, 0.5), ("b", None, 1, "loss", None, 0.7)]
        >>> df = pd.DataFrame(rows, columns=["trial_id", "lr", *TIDY_COLUMNS[1:]])
        >>> trial_values(df, "lr"), trial_values(df, None)
        ({'a': 0.1, 'b': None}, {})
        >>> df.attrs["trials"] = {"b": {"config": {"lr": None}}}
        >>> trial_values(df, "lr")
        {'a': 0.1, 'b': 'None'}
    """
    if column is None:
        return {}
    values = {}
    loaded = df.attrs.get("trials", {})
    set_to_none = set()
    for trial_id, info in trial_infos(df).items():
        config = info.get("config", {})
        values[trial_id] = config.get(column, config.get(column.removeprefix("config/")))
        own = (loaded.get(trial_id) or {}).get("config")
        if isinstance(own, Mapping):
            key = column if column in own else column.removeprefix("config/")
            if key in own and own[key] is None:
                set_to_none.add(trial_id)
    # the last row's: a config that changed during the trial (population-based training) is
    # taken as it ended, as the summaries take it
    rows = df.sort_values("training_iteration", kind="stable").drop_duplicates(
        "trial_id", keep="last"
    )
    for trial_id, value in zip(rows["trial_id"], rows[column]):
        values[str(trial_id)] = value
    return {
        k: (("None" if k in set_to_none else None) if missing(v) else v) for k, v in values.items()
    }


def missing(value: Any) -> bool:
    """Whether ``value`` is None or NaN (a list or text is not missing).

    Examples:
        >>> missing(None), missing(float("nan")), missing("relu"), missing([1, 2])
        (True, True, False, False)
    """
    try:
        return value is None or bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def sort_key(value: Any) -> tuple[int, Any]:
    """Orders config values: numbers by value, then text, then None.

    Examples:
        >>> sorted([None, "relu", 0.1, 2, "elu"], key=sort_key)
        [0.1, 2, 'elu', 'relu', None]
    """
    if value is None:
        return (2, "")
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return (0, float(value))
    return (1, str(value))


def shown_value(value: Any) -> str:
    """A config value as the plots write it (floats to 4 significant digits).

    Examples:
        >>> shown_value(0.000123456), shown_value(32), shown_value(None)
        ('0.0001235', '32', '(missing)')
    """
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return "(missing)" if value is None else str(value)


def trial_label(trial_id: str, color_by: str | None, value: Any) -> str:
    """A trial's name in legends: its id, with its ``color_by`` value when there is one.

    Examples:
        >>> trial_label("a", "lr", 0.001), trial_label("a", None, 0.001)
        ('a (lr=0.001)', 'a')
    """
    if color_by is None:
        return trial_id
    return f"{trial_id} ({color_by}={shown_value(value)})"
