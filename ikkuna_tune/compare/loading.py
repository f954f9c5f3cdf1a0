"""Loading a finished Tune experiment (from disk or a Ray object) as the tidy DataFrame.

See :mod:`ikkuna_tune.compare` for the frame's columns and ``attrs``. The trials are read by
:mod:`~ikkuna_tune.compare.trials` and the scheduler's decisions by
:mod:`~ikkuna_tune.compare.decision_log`; here they become one long frame of numbers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ikkuna_tune import keys
from ikkuna_tune.compare.decision_log import DECISIONS_FILE, FREEZE_REASON, _trial_decisions
from ikkuna_tune.compare.frame import TIDY_COLUMNS, SharedDict, SharedList, missing
from ikkuna_tune.compare.trials import REPORTED_NAN, _read_directory, _read_object, _Trial

logger = logging.getLogger(__name__)

__all__ = ["BOOKKEEPING", "DECISIONS_FILE", "FREEZE_REASON", "ExperimentLike", "load"]

#: Fields Tune adds to every result that are not measurements (Ray 2.60 writes none of
#: ``timesteps_total``, ``episodes_total``, ``timesteps_since_restore``, ``warmup_time`` or
#: ``node``: there they are the user's own, and kept).
BOOKKEEPING = frozenset(
    {
        "trial_id",
        "training_iteration",
        "done",
        "timestamp",
        "date",
        "pid",
        "hostname",
        "node_ip",
        "checkpoint_dir_name",
        "time_since_restore",
        "iterations_since_restore",
        "experiment_id",
        "experiment_tag",
        "should_checkpoint",
    }
)

ExperimentLike = Any  # a path, a ray.tune.ExperimentAnalysis or a ray.tune.ResultGrid


def load(experiment: ExperimentLike) -> pd.DataFrame:
    """Load every trial of an experiment into one tidy DataFrame.

    Args:
        experiment: an experiment directory as ``tune.run(storage_path=...)`` or
            ``tune.RunConfig(storage_path=...)`` writes it (``<storage>/<name>``, holding one
            directory per trial with ``params.json`` and ``result.json`` or ``progress.csv``),
            an ``ExperimentAnalysis`` (what ``tune.run`` returns) or a ``ResultGrid`` (what
            ``Tuner.fit`` returns). Reading a directory needs no running Ray.

    Returns:
        Columns ``trial_id``, the config parameters (sorted by name), ``training_iteration``,
        ``metric``, ``layer`` (None for network-wide metrics) and ``value`` (float); rows by trial
        id, then iteration, then in the order the trial reported its metrics (so layers come in
        network order). Failed trials and trials stopped early contribute the results they reported;
        a trial restored (or restarted) keeps the results of the run it ended in from the iteration
        it went on at; two results of one iteration within a run (a trainable that sets
        ``training_iteration`` itself and reports twice in it) are one, merged, the later one's
        values first (Tune's ``iterations_since_restore`` tells the two apart; without it every
        repeat counts as a restore). A config that changed during a trial (population-based
        training) labels each row with the value its report was made with (with a warning);
        ``attrs`` hold the last. ``df.attrs["trials"]`` maps each trial id to its ``config``,
        ``status``, ``failed``, ``stopped_by_tune`` (its last result says ``done``, or Tune's state
        still lists it as paused: a scheduler or stopper ended it, HyperBand's halving while it was
        paused; a sweep interrupted while the trial was paused reads alike), ``path`` and number of
        ``results`` (iterations reported).
        ``df.attrs["decisions"]`` and ``df.attrs["empty_metrics"]``: see the module docstring.

    A trial's id is the last usable ``trial_id`` (a non-empty string, or an integer) in its
    results, else the one in Tune's experiment state, else taken from its directory's name
    (Tune's ``xxxxx_00000`` part of it, or the whole name). Directories of one experiment
    that claim the same id (a copied trial directory) are kept apart, as
    ``<id>@<directory name>``, with a warning.

    Raises:
        ValueError: the path does not exist or is not an experiment directory, the object is
            not an experiment, or no trial reported any value.

    Examples:
        >>> import json, tempfile
        >>> with tempfile.TemporaryDirectory() as experiment:
        ...     trial = Path(experiment, "train_abcde_00000")
        ...     trial.mkdir()
        ...     _ = (trial / "params.json").write_text(json.dumps({"lr": 0.1}))
        ...     result = {"training_iteration": 1, "loss": 0.5, "frozen": {"conv": 1, "fc": 0}}
        ...     _ = (trial / "result.json").write_text(json.dumps(result))
        ...     df = load(experiment)
        >>> df.loc[0, "trial_id"], float(df.loc[0, "lr"])
        ('abcde_00000', 0.1)
        >>> df[["metric", "layer", "value"]].values.tolist()
        [['loss', None, 0.5], ['frozen', 'conv', 1.0], ['frozen', 'fc', 0.0]]
    """
    if isinstance(experiment, (str, PathLike)):
        trials = _read_directory(Path(experiment).expanduser())
        name = str(experiment)
    else:
        trials = _read_object(experiment)
        name = str(getattr(experiment, "experiment_path", type(experiment).__name__))
    trials.sort(key=lambda t: t.trial_id)
    if not any(len(t.results) for t in trials):
        raise ValueError(
            f"Experiment {name} has no results: {len(trials)} trial(s), none reported a result"
        )
    df = _tidy(trials)
    if not len(df):
        empty = ", ".join(df.attrs["empty_metrics"]) or "(none)"
        reported = sum(len(t.results) for t in trials)
        raise ValueError(
            f"Experiment {name} has no values: {len(trials)} trial(s) reported {reported} "
            f"result(s), every value NaN, null or text (without values: {empty})"
        )
    return df


#: The long form's column that says which NaN values were reported as NaN (see _tidy).
_NAN = "reported_nan"
#: ikkuna_tune's own outputs: a NaN among them is no measurement (the step times are NaN when
#: nothing was timed since the last report; the frozen flags and fraction are never NaN, one
#: in a damaged file is left out as a value not reported)
_NAN_MEANS_MISSING = frozenset(keys.RESERVED_KEYS)


def _numeric(column: pd.Series) -> pd.Series | None:
    """The column as floats (NaN where missing or not a number), or None if it holds no
    numbers but text. A column of nothing but ``None``/NaN is all NaN."""
    if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
        return column.astype(float)
    numbers = pd.to_numeric(column.map(_number_or_nan), errors="coerce")
    if numbers.notna().any() or column.isna().all():
        return numbers.astype(float)
    return None


def _number_or_nan(value: Any) -> Any:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float, np.number)):
        return value
    return math.nan


def _tidy(trials: Sequence[_Trial]) -> pd.DataFrame:
    config_names = sorted({name for t in trials for name in t.config})
    # a config key named like a column of the long form (or its own NaN column) gets a prefix
    renamed = {n: f"config/{n}" if n in TIDY_COLUMNS or n == _NAN else n for n in config_names}
    frames = []
    text: set[str] = set()  # names of results holding text (no numbers) in some trial
    # the network's layers: those ikkuna_tune reports frozen/<layer> for, in any trial (a plain
    # Tune trial of the same sweep reports none, and its "val/acc" is still network-wide)
    prefix = f"{keys.FROZEN}/"
    layers = {c[len(prefix) :] for t in trials for c in t.results.columns if c.startswith(prefix)}
    per_layer = _per_layer_metrics([t.results.columns for t in trials], layers)
    for trial in trials:
        long = _tidy_trial(trial.results, text, per_layer)
        if long is None:
            continue
        long.insert(0, "trial_id", trial.trial_id)
        changing = _changing_config(trial.results, config_names)
        if changing:
            logger.warning(
                "Trial %s's config changed during its run (population-based training?) in %s: "
                "each report is labelled with the config it was made with; summaries and plot "
                "styles take its last config",
                trial.trial_id,
                sorted(changing),
            )
        for name, by_iteration in changing.items():  # its last config, as the warning says
            trial.config[name] = by_iteration[max(by_iteration)]
        for position, name in enumerate(config_names, 1):
            if name in changing:
                values = long["training_iteration"].map(changing[name]).tolist()
            else:
                values = [trial.config.get(name)] * len(long)
            long.insert(position, renamed[name], values)
        frames.append(long)
    columns = ["trial_id", *renamed.values(), "training_iteration", "metric", "layer", "value"]
    df = (
        pd.concat(frames, ignore_index=True)[[*columns, _NAN]]
        if frames
        else pd.DataFrame(columns=[*columns, _NAN])
    )
    reported: dict[str, bool] = {}  # metric name -> reported per layer
    for metric, layer in df[["metric", "layer"]].drop_duplicates().itertuples(index=False):
        reported[metric] = reported.get(metric, False) or not missing(layer)
    # a NaN that was reported stays (a diverged loss: plotted as "not finite from here") in a
    # metric and layer with values elsewhere; one that stands for a value not reported goes
    has_value = df["value"].notna()
    layer_key = df["layer"].astype(object).where(df["layer"].notna(), "")
    series_has_value = has_value.groupby([df["metric"], layer_key]).transform("any")
    keep = has_value | (df[_NAN].astype(bool) & series_has_value.astype(bool))
    df = df[keep][columns].reset_index(drop=True)
    with_values = set(df["metric"].unique())
    # shared, not deep-copied, by every frame an operation on df returns (see SharedDict)
    df.attrs["trials"] = SharedDict({t.trial_id: t.info() for t in trials})
    df.attrs["decisions"] = SharedList(row for t in trials for row in _trial_decisions(t))
    df.attrs["empty_metrics"] = SharedDict(
        (name, per_layer)
        for name, per_layer in sorted(reported.items())
        if name not in with_values and name not in text
    )
    return df


def _changing_config(results: pd.DataFrame, names: Sequence[str]) -> dict[str, dict[int, Any]]:
    """The config values that change between a trial's reports (population-based training
    mutates them; each result holds the config it was made with, as ``config/<name>``), as
    each report's value by ``training_iteration``."""
    if not len(results) or "training_iteration" not in results.columns:
        return {}
    iterations = results["training_iteration"].astype(int)
    changing: dict[str, dict[int, Any]] = {}
    for name in names:
        column = f"config/{name}"
        if column not in results.columns:
            continue
        values = results[column]
        if values.astype(str).nunique(dropna=False) > 1:
            changing[name] = {
                int(i): (None if _absent(v) else _plain(v))
                for i, v in zip(iterations, values, strict=True)
            }
    return changing


def _absent(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _per_layer_metrics(columns: Sequence[Iterable[str]], layers: set[str]) -> set[str]:
    """The names ``<name>`` of columns ``"<name>/<layer>"`` that are per-layer metrics: those
    whose every column, in any trial, names one of ``layers`` (the network's layers, those
    ikkuna_tune reports ``frozen/<layer>`` for), or a later call of one (``fc#2``). A user's
    nested metric is network-wide even where some of its keys look like layers: ``val/acc``,
    or per-class accuracies ``class_acc/0``, ``class_acc/1`` of a network whose layers are
    named ``0``, ``2``, ``4``. Without ``layers``, every ``<name>`` with a ``/`` is per-layer.

    Examples:
        >>> cols = [["frozen/0", "frozen/2", "self_similarity/2", "class_acc/0", "class_acc/1"]]
        >>> sorted(_per_layer_metrics(cols, {"0", "2"}))
        ['frozen', 'self_similarity']
    """
    rests: dict[str, set[str]] = {}
    for names in columns:
        for column in names:
            if column in BOOKKEEPING or column.startswith("config/") or column == REPORTED_NAN:
                continue
            name, _, rest = column.partition("/")
            if rest:
                rests.setdefault(name, set()).add(rest)
    if not layers:  # no trial says what its layers are (results of an older version)
        return set(rests)
    return {
        name
        for name, keys_seen in rests.items()
        if all(key in layers or keys.layer_of_call(key) in layers for key in keys_seen)
    }


def _tidy_trial(results: pd.DataFrame, text: set[str], per_layer: set[str]) -> pd.DataFrame | None:
    """One trial's results in long form, NaN values included (marked when reported as NaN);
    adds the metric names of columns holding text to ``text``.

    A column ``"<name>/<layer>"`` is metric ``<name>`` of that layer when ``<name>`` is in
    ``per_layer`` (:func:`_per_layer_metrics`); any other column is a network-wide metric of
    that whole name (``"val/accuracy"``).
    """
    if not len(results):
        return None
    iterations = results["training_iteration"].astype(int).to_numpy()
    n = len(results)
    # the rows at which each column was reported as NaN (one pass over the few such names,
    # not a test per column and row: a sweep's frame has millions of values)
    nan_rows: dict[str, list[int]] = {}
    if REPORTED_NAN in results.columns:
        for row, names in enumerate(results[REPORTED_NAN]):
            for name in names:
                nan_rows.setdefault(name, []).append(row)
    columns: dict[str, list[np.ndarray]] = {c: [] for c in ("metric", "layer", "value", _NAN)}
    for column in results.columns:
        if column in BOOKKEEPING or column.startswith("config/") or column == REPORTED_NAN:
            continue
        metric, _, layer = column.partition("/")
        if layer and metric not in per_layer:
            metric, layer = column, ""
        # freeze_reason and unfreeze_reason are text; read from progress.csv, a layer never
        # frozen ("" in every report) is a column of NaN, not a metric without values
        text_only = metric in (FREEZE_REASON, keys.UNFREEZE_REASON)
        values = None if text_only else _numeric(results[column])
        if values is None:
            text.add(metric)
            continue
        # a NaN of ikkuna_tune's own outputs is no measurement: not reported
        reported_nan = np.zeros(n, dtype=bool)
        if metric not in _NAN_MEANS_MISSING:
            reported_nan[nan_rows.get(column, [])] = True
        columns["metric"].append(np.full(n, metric, dtype=object))
        columns["layer"].append(np.full(n, layer or None, dtype=object))
        columns["value"].append(values.to_numpy(dtype=float))
        columns[_NAN].append(reported_nan)
    if not columns["value"]:
        return None
    # NaN values are dropped once all are seen
    long = pd.DataFrame(
        {
            "training_iteration": np.tile(iterations, len(columns["value"])),
            **{name: np.concatenate(parts) for name, parts in columns.items()},
        }
    )
    long = long.sort_values("training_iteration", kind="stable", ignore_index=True)
    long["layer"] = long["layer"].astype(object).where(long["layer"].notna(), None)
    return long
