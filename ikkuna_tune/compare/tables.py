"""The per-trial summary table, the scheduler's decisions, and the work a trial skipped."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ikkuna_tune import keys
from ikkuna_tune.compare.frame import (
    FROZEN,
    check_budget,
    check_metric,
    check_mode,
    check_tidy,
    config_columns,
    iterations_run,
    stopped_early,
    trial_infos,
    with_recorded_stops,
)

__all__ = ["DECISION_COLUMNS", "compute_saved", "decisions", "summary"]

#: The columns of :func:`decisions`.
DECISION_COLUMNS = (
    "trial_id",
    "iteration",
    "action",
    "layer",
    "rule",
    "values",
    "in_force",
    "carried_out",
)
#: Decimals :func:`compute_saved` rounds to.
SAVED_DECIMALS = 3

_SUMMARY_COLUMNS = (
    "trial_id",
    "status",
    "failed",
    "iterations_run",
    "best_iteration",
    "stopped_early",
    "stopped_by",
    "frozen_layers",
    "freeze_reasons",
    "frozen_fraction",
    "compute_saved",
)


def decisions(df: pd.DataFrame) -> pd.DataFrame:
    """What SVCCAScheduler decided on each trial, and why: one row per decision.

    Columns ``trial_id``; ``iteration``, the number of reports the scheduler had seen from
    the trial when it decided (the ``training_iteration`` of that report when a trial reports
    once an iteration; a freeze shows as ``frozen/<layer> = 1`` from the next report on;
    ``<NA>`` if unknown); ``action`` (``freeze``, ``unfreeze``: a frozen layer trains again,
    its learning rate changed, ``stop``, or ``pause``: the trial waited for others to be
    compared with, and resumed from that report's checkpoint); ``layer`` (None for a decision
    on the whole trial); ``rule``; and ``values``, the values behind the rule as one string
    (``"similarity=0.995, distance_from_init=0.12"``, floats to 4 significant digits);
    ``in_force``, whether the trial ended under the decision: False for a freeze the trial's
    last report no longer holds (the layer was released since, frozen again by a later row,
    or ordered in a run the trial left when it was restored from an older checkpoint), for an
    unfreeze after which the layer was frozen again, and for a stop a later stop replaced;
    ``carried_out``, for a freeze, whether the trial reported the layer frozen after it
    (before the layer's next decision) or released it (a freeze released at the trial's
    first step after it, its learning rate having moved, shows in no report): False for a
    freeze the trial never carried out (it refused one that would stop a weight another layer
    trains with), ``<NA>`` where its results cannot tell and for the other actions.

    The rows come from the ``ikkuna_decisions.jsonl`` the scheduler writes in each trial's
    directory; for a layer that file holds no freeze of, from the ``freeze_reason/<layer>``
    the trial reported (a reason not in the scheduler's words is the ``rule``, without
    values or report). Rows are by trial, then report; a layer frozen again after a restore
    has a row each time. A DataFrame not from :func:`load` has no decisions.

    Raises:
        ValueError: ``df`` is not a DataFrame.

    Examples:
        >>> from ikkuna_tune.compare.frame import TIDY_COLUMNS
        >>> df = pd.DataFrame([("a", 1, "loss", None, 0.5)], columns=TIDY_COLUMNS)
        >>> df.attrs["decisions"] = [{"trial_id": "a", "iteration": 2, "action": "freeze",
        ...     "layer": "conv1", "rule": "converged", "values": {"similarity": 0.99512}}]
        >>> decisions(df).to_dict("records")  # doctest: +NORMALIZE_WHITESPACE
        [{'trial_id': 'a', 'iteration': 2, 'action': 'freeze', 'layer': 'conv1',
          'rule': 'converged', 'values': 'similarity=0.9951', 'in_force': True,
          'carried_out': None}]
    """
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"Expected the tidy DataFrame of compare.load but got {type(df).__name__}")
    rows = df.attrs.get("decisions", [])
    table = pd.DataFrame(
        {
            "trial_id": pd.Series([str(r["trial_id"]) for r in rows], dtype=object),
            "iteration": pd.array([r["iteration"] for r in rows], dtype="Int64"),
            "action": pd.Series([r["action"] for r in rows], dtype=object),
            "layer": pd.Series([r["layer"] for r in rows], dtype=object),
            "rule": pd.Series([r["rule"] for r in rows], dtype=object),
            "values": pd.Series([_values_text(r["values"]) for r in rows], dtype=object),
            "in_force": pd.Series([bool(r.get("in_force", True)) for r in rows], dtype=bool),
            "carried_out": pd.array([r.get("carried_out") for r in rows], dtype="boolean"),
        }
    )
    return table[list(DECISION_COLUMNS)]


def _values_text(values: Mapping[str, Any]) -> str:
    """``k=v, ...`` as ``Decision.describe()`` writes them."""
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
    )


def _reason(row: Mapping[str, Any], with_layer: bool) -> str:
    """A decision in words: ``rule [layer] at report N (values)``."""
    text = str(row["rule"])
    if with_layer and row.get("layer"):
        text += f" {row['layer']}"
    if row.get("iteration") is not None:
        text += f" at report {row['iteration']}"
    shown = _values_text(row.get("values", {}))
    return f"{text} ({shown})" if shown else text


def compute_saved(
    frozen_fractions: Sequence[float], budget: int, steps: Sequence[float] | None = None
) -> float:
    """The fraction of a trial's training work it skipped, by stopping early and by freezing.

    Training every parameter for one iteration is one unit of work; the trial's full budget is
    ``budget`` units. During the ``n = len(frozen_fractions)`` iterations it ran it trained the
    parameters that were not frozen, ``sum(1 - f)`` units, where ``f`` is the fraction of the
    parameters frozen during that iteration (their gradients and updates were skipped). The
    rest was skipped::

        compute_saved = (budget - n + sum(frozen_fractions)) / budget

    rounded to 3 decimals: (a) the ``budget - n`` iterations not run, plus (b) the frozen
    fraction times the iterations it was frozen for. It counts parameter updates, not seconds
    or FLOPs (a frozen layer still runs forward; a frozen convolution may hold few parameters
    and much compute), so it does not depend on timing noise: the same decisions give the
    same figure.

    With ``steps`` (each iteration's training steps, ``train_steps``), a step is the unit
    instead: an iteration weighs as many steps as it trained (a report with none since the one
    before, an evaluation between epochs, weighs nothing: counted as a unit, it made a trial
    that reports twice per epoch read 0.332 where its steps give 0.221), and the iterations
    not run are taken at the mean steps of those run. With equal steps it is the formula above.

    Args:
        frozen_fractions: per iteration run, the fraction of parameters frozen, in [0, 1].
        budget: the iterations the trial would have run had it not been stopped early
            (at least ``n``, at least 1).
        steps: per iteration run, its training steps (>= 0), or None.

    Example: 4 iterations of a budget of 6, the last two with a quarter and then half of the
    parameters frozen, skipped (6 - 4 + 0.25 + 0.5) / 6 of the work:

    >>> compute_saved([0.0, 0.0, 0.25, 0.5], budget=6)
    0.458

    Two reports per epoch, the second of each without a step: a quarter frozen in the second
    epoch's 4 steps of 8 skipped 0.125 of the work, not (0.25 * 3) / 4

    >>> compute_saved([0.0, 0.25, 0.25, 0.25], budget=4, steps=[4, 0, 4, 0])
    0.125

    Raises:
        ValueError: a fraction is not in [0, 1], ``budget`` is not an integer of at least
            ``max(n, 1)``, or ``steps`` is not one count >= 0 per iteration.
    """
    if isinstance(frozen_fractions, (str, bytes)) or not isinstance(frozen_fractions, Iterable):
        raise ValueError(
            "Expected `frozen_fractions` to be a sequence of fractions (one per iteration run) "
            f"but got {frozen_fractions!r}"
        )
    fractions = [float(f) for f in frozen_fractions]
    bad = [f for f in fractions if not 0.0 <= f <= 1.0]
    if bad:
        raise ValueError(f"Expected frozen fractions in [0, 1] but got {bad[0]!r}")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < max(len(fractions), 1):
        raise ValueError(
            f"Expected `budget` to be an integer of at least the {len(fractions)} iteration(s) "
            f"run (and at least 1) but got {budget!r}"
        )
    if steps is not None:
        counts = [float(s) for s in steps]
        if len(counts) != len(fractions) or any(not c >= 0 for c in counts):
            raise ValueError(
                f"Expected `steps` to be one count >= 0 for each of the {len(fractions)} "
                f"iteration(s) but got {list(steps)!r}"
            )
        total = math.fsum(counts)
        if total > 0:
            trained = math.fsum(c * (1.0 - f) for c, f in zip(counts, fractions))
            saved = 1.0 - trained * len(fractions) / (total * budget)
            return round(saved, SAVED_DECIMALS) + 0.0
    saved = (budget - len(fractions) + math.fsum(fractions)) / budget
    return round(saved, SAVED_DECIMALS) + 0.0  # + 0.0: no -0.0


def summary(
    df: pd.DataFrame, metric: str | None = None, mode: str = "max", budget: int | None = None
) -> pd.DataFrame:
    """One row per trial: how it did, how long it ran, what it froze and saved.

    Columns:

    - ``trial_id``, the config parameters, ``status`` (Tune's: ``TERMINATED``, ``ERROR``...;
      None when unknown) and ``failed`` (the trial ended in an error).
    - ``iterations_run``: the last ``training_iteration`` reported (0 if none).
    - ``best_<metric>`` and ``best_iteration`` (only with ``metric``, a network-wide metric):
      the best finite value by ``mode`` and the first iteration reaching it; NaN if never
      reported with a finite value (a diverged ``-inf`` loss or ``inf`` score is not a best).
    - ``stopped_early``: Tune stopped the trial (a scheduler or stopper: its last result
      carries ``done``, which a trainable that returns by itself never writes, or Tune's
      state lists it as paused, or SVCCAScheduler recorded a stop of it) before it ran
      ``budget`` iterations (default: as many as the longest trial of the experiment), and it
      did not fail. A trial that ends its own loop early, or the longest trial, does not count.
    - ``stopped_by``: why SVCCAScheduler stopped the trial, ``"<rule>[ <layer>] at report N
      (<values>)"`` (its last stop in :func:`decisions`); None if it did not.
    - ``frozen_layers``: the layers frozen in the last report, in network order (a list).
    - ``freeze_reasons``: why the scheduler froze each layer it ordered frozen (a dict, in
      network order): ``"<rule> at report N (<values>)"`` from the layer's freeze in
      :func:`decisions` that the trial's last report names (a trial restored from an older
      checkpoint may have left a run that froze it otherwise, or not at all). A layer ordered
      frozen at the trial's last report is in it but not in ``frozen_layers``.
    - ``frozen_fraction``: the fraction of parameters frozen in the last report.
    - ``compute_saved``: the fraction of the trial's full-budget training work it skipped,
      :func:`compute_saved` of the ``frozen_fraction`` of each iteration it ran (a report
      says what was frozen while training for it; an iteration without a report counts as
      the report before it), weighed by its ``train_steps`` where every iteration reported
      them, and its budget: ``budget`` (or the longest trial's iterations)
      for a trial stopped early, else the iterations it ran. Rounded to 3 decimals; NaN for
      a trial that reported no ``frozen_fraction``.

    A config parameter named like one of these columns appears as ``config/<name>``.

    A network-wide ``metric`` that was reported but never with a value (every value NaN or
    null) gives NaN, as for a trial that never reported it.

    Raises:
        ValueError: ``metric`` is unknown or per-layer, ``mode`` is not max/min or
            ``budget`` is not a positive integer.

    Examples:
        >>> from ikkuna_tune.compare.frame import TIDY_COLUMNS
        >>> rows = [("a", i, "test_accuracy", None, 0.5 + i / 10) for i in (1, 2)]
        >>> rows += [("a", i, "frozen", "fc", i - 1.0) for i in (1, 2)]
        >>> rows += [("a", i, "frozen_fraction", None, (i - 1) / 2) for i in (1, 2)]
        >>> row = summary(pd.DataFrame(rows, columns=TIDY_COLUMNS), "test_accuracy").iloc[0]
        >>> row = row.to_dict()
        >>> [row[c] for c in ("best_iteration", "frozen_layers", "compute_saved")]
        [2, ['fc'], 0.25]
    """
    check_tidy(df)
    check_mode(mode)
    check_budget(budget)
    if metric is not None:
        check_metric(df, metric, per_layer=False, allow_empty=True)
    infos = trial_infos(df)
    config = config_columns(df)
    iterations = iterations_run(df)
    full = budget if budget is not None else max(iterations.values(), default=0)
    network = df[df["layer"].isna()]
    frozen_rows = df[(df["metric"] == FROZEN) & df["layer"].notna()]
    stops: dict[str, dict[str, Any]] = {}
    freezes: dict[str, dict[str, dict[str, Any]]] = {}
    for row in df.attrs.get("decisions", []):
        if not row.get("in_force", True):  # made in a run the trial left (see decisions)
            continue
        trial_id = str(row["trial_id"])
        if row["action"] == "stop":
            stops[trial_id] = row
        elif row["action"] == "freeze" and row.get("layer"):
            freezes.setdefault(trial_id, {})[row["layer"]] = row
    early = stopped_early(with_recorded_stops(df, infos), iterations, budget)
    taken = {*_SUMMARY_COLUMNS, f"best_{metric}"}
    shown = {name: f"config/{name}" if name in taken else name for name in config}
    records = []
    for trial_id, info in infos.items():
        trial_config = info.get("config", {})
        record: dict[str, Any] = {"trial_id": trial_id}
        for name in config:
            value = trial_config.get(name, trial_config.get(name.removeprefix("config/")))
            record[shown[name]] = value
        record["status"] = info.get("status")
        record["failed"] = bool(info.get("failed"))
        record["iterations_run"] = iterations.get(trial_id, 0)
        own = network[network["trial_id"] == trial_id]
        if metric is not None:
            values = own[own["metric"] == metric]
            values = values[np.isfinite(values["value"].to_numpy(dtype=float))]
            if len(values):
                best = values["value"].max() if mode == "max" else values["value"].min()
                best_row = values[values["value"] == best].iloc[0]
                record[f"best_{metric}"] = float(best)
                record["best_iteration"] = int(best_row["training_iteration"])
            else:
                record[f"best_{metric}"] = math.nan
                record["best_iteration"] = pd.NA
        record["stopped_early"] = early.get(trial_id, False)
        stop = stops.get(trial_id)
        record["stopped_by"] = _reason(stop, with_layer=True) if stop else None
        frozen = frozen_rows[frozen_rows["trial_id"] == trial_id]
        # the trial's own network order (a sweep may train models of several families)
        order = {name: i for i, name in enumerate(dict.fromkeys(frozen["layer"]))}
        if len(frozen):
            last = frozen[frozen["training_iteration"] == frozen["training_iteration"].max()]
            names = [str(n) for n in last.loc[last["value"] > 0, "layer"]]
            record["frozen_layers"] = sorted(names, key=lambda n: order.get(n, len(order)))
        else:
            record["frozen_layers"] = []
        reasons = freezes.get(trial_id, {})
        record["freeze_reasons"] = {
            name: _reason(reasons[name], with_layer=False)
            for name in sorted(reasons, key=lambda n: order.get(n, len(order)))
        }
        record["frozen_fraction"] = _last(own, "frozen_fraction")
        ran = record["iterations_run"]
        record["compute_saved"] = _saved(own, ran, full if early.get(trial_id) else ran)
        records.append(record)
    table = pd.DataFrame.from_records(records)
    table["stopped_by"] = pd.Series(  # None, not NaN, where the scheduler did not stop
        [r["stopped_by"] for r in records], index=table.index, dtype=object
    )
    for column in shown.values():  # integers stay integers where another trial lacks one
        table[column] = _config_column([r[column] for r in records], table.index)
    if metric is not None:
        table["best_iteration"] = table["best_iteration"].astype("Int64")
    return table


def _config_column(values: list[Any], index: pd.Index) -> pd.Series:
    """A config parameter's column of the summary: numbers as numbers (integers, missing in
    some trials, as pandas' nullable integers rather than floats: 8, not 8.0), anything else
    as given.

    Examples:
        >>> index = pd.RangeIndex(3)
        >>> widths = _config_column([8, None, 16], index)
        >>> widths.tolist(), str(widths.dtype)
        ([8, <NA>, 16], 'Int64')
        >>> [str(_config_column(v, index).dtype) for v in ([0.1, None, 0.3], [8, 16, 32])]
        ['float64', 'int64']
        >>> _config_column(["sgd", None, 2], index).tolist()
        ['sgd', None, 2]
        >>> _config_column([2**63 + 5, None, 7], index).tolist()  # beyond 64 bits: as given
        [9223372036854775813, None, 7]
    """
    present = [v for v in values if v is not None]
    integers = present and all(
        isinstance(v, (int, np.integer))
        and not isinstance(v, (bool, np.bool_))
        and _INT64[0] <= v <= _INT64[1]
        for v in present
    )
    if integers and len(present) < len(values):
        return pd.Series(values, index=index, dtype="Int64")
    column = pd.Series(values, index=index)
    if column.dtype == np.float64 and any(
        isinstance(v, (int, np.integer)) and abs(v) >= 2**53 for v in present
    ):  # integers too large for 64 bits (a seed) would be rounded as floats: kept as given
        return pd.Series(values, index=index, dtype=object)
    return column


#: The range of pandas' nullable 64-bit integers
_INT64 = (-(2**63), 2**63 - 1)


def _last(rows: pd.DataFrame, metric: str) -> float:
    values = rows[rows["metric"] == metric]
    if not len(values):
        return math.nan
    return float(values.sort_values("training_iteration", kind="stable")["value"].iloc[-1])


def _saved(rows: pd.DataFrame, ran: int, budget: int) -> float:
    """:func:`compute_saved` of a trial's network-wide rows; NaN without ``frozen_fraction``."""
    reported = rows[rows["metric"] == "frozen_fraction"]
    if not len(reported) or ran < 1:
        return math.nan
    by_iteration = dict(zip(reported["training_iteration"].astype(int), reported["value"]))
    fractions = []
    fraction = 0.0
    for iteration in range(1, ran + 1):
        fraction = min(max(float(by_iteration.get(iteration, fraction)), 0.0), 1.0)
        fractions.append(fraction)
    # weighed by each iteration's training steps where every iteration reported them
    counted = rows[rows["metric"] == keys.TRAIN_STEPS]
    by_steps = dict(zip(counted["training_iteration"].astype(int), counted["value"]))
    steps = [by_steps.get(i) for i in range(1, ran + 1)]
    known = all(s is not None and float(s) >= 0 for s in steps)
    return compute_saved(fractions, budget, [float(s) for s in steps] if known else None)
