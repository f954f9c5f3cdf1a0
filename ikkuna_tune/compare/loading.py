"""Reading a finished Tune experiment from disk (or a Ray object) into the tidy DataFrame.

See :mod:`ikkuna_tune.compare` for the frame's columns and ``attrs``. Ray is not imported here
unless the caller passes a Ray object (then it is already imported).
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ikkuna_tune import keys
from ikkuna_tune.compare.frame import TIDY_COLUMNS, missing

__all__ = ["BOOKKEEPING", "DECISIONS_FILE", "FREEZE_REASON", "ExperimentLike", "load"]

logger = logging.getLogger(__name__)

#: Fields Tune adds to every result that are not measurements.
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
        "node",
        "checkpoint_dir_name",
        "time_since_restore",
        "iterations_since_restore",
        "timesteps_since_restore",
        "timesteps_total",
        "episodes_total",
        "experiment_id",
        "experiment_tag",
        "should_checkpoint",
        "warmup_time",
    }
)
#: Where SVCCAScheduler writes its decisions in each trial directory, one JSON object a line.
DECISIONS_FILE = keys.DECISIONS_FILE
#: Tune's flattened key of the reason a trial reports for each frozen layer.
FREEZE_REASON = keys.FREEZE_REASON
_RESULT_FILES = ("result.json", "progress.csv", "params.json")
_ERROR_FILES = ("error.txt", "error.pkl")
_TRIAL_ID = re.compile(r"(?:^|_)([0-9a-f]{5}_\d{5})(?:_|$)")
#: ``Decision.describe()``: "freeze conv1 at report 3: converged (similarity=0.995, ...)".
_DESCRIBED = re.compile(
    r"^(?P<action>\w+) (?P<layer>.+?) at report (?P<iteration>\d+): (?P<rule>.+?)"
    r"(?: \((?P<values>[^()]*)\))?$"
)

ExperimentLike = Any  # a path, a ray.tune.ExperimentAnalysis or a ray.tune.ResultGrid


@dataclass
class _Trial:
    """One trial as read from an experiment: its flat config, its results, what became of it."""

    trial_id: str
    config: dict[str, Any]
    results: pd.DataFrame
    status: str | None = None
    failed: bool = False
    path: str | None = None

    def __post_init__(self) -> None:
        self.results = _clean(self.results)

    def info(self) -> dict[str, Any]:
        results = self.results
        stopped_by_tune = False
        if len(results) and "done" in results.columns:
            stopped_by_tune = _truthy(results["done"].iloc[-1])
        return {
            "config": dict(self.config),
            "status": self.status,
            "failed": self.failed,
            "stopped_by_tune": stopped_by_tune,
            "path": self.path,
            "results": len(results),
        }


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
        ``metric``, ``layer`` (None for network-wide metrics) and ``value`` (float); rows by
        trial id, then iteration, then in the order the trial reported its metrics (so layers
        come in network order). Failed trials and trials stopped early contribute the results
        they reported; a result repeated for one iteration (after a restore) counts once, the
        last one. ``df.attrs["trials"]`` maps each trial id to its ``config``, ``status``,
        ``failed``, ``stopped_by_tune`` (its last result says ``done``: a scheduler or stopper
        ended it), ``path`` and number of ``results`` (iterations reported).
        ``df.attrs["decisions"]`` and ``df.attrs["empty_metrics"]``: see the module docstring.

    A trial's id is the last usable ``trial_id`` (a non-empty string, or an integer) in its
    results, else the one in Tune's experiment state, else taken from its directory's name
    (Tune's ``xxxxx_00000`` part of it, or the whole name).

    Raises:
        ValueError: the path does not exist or is not an experiment directory, the object is
            not an experiment, or no trial reported any value.
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


def _read_object(experiment: Any) -> list[_Trial]:
    if "ray" not in sys.modules:  # then it cannot be a Ray object; don't import Ray to check
        raise _not_an_experiment(experiment)
    from ray.tune import ExperimentAnalysis, ResultGrid

    if isinstance(experiment, ExperimentAnalysis):
        frames = experiment.trial_dataframes
        trials = []
        for trial in experiment.trials:
            status = getattr(trial, "status", None)
            trials.append(
                _Trial(
                    trial_id=str(trial.trial_id),
                    config=_flatten_config(trial.config or {}),
                    results=frames.get(trial.trial_id, pd.DataFrame()),
                    status=status,
                    failed=status == "ERROR",
                    path=str(trial.path) if getattr(trial, "path", None) else None,
                )
            )
        return trials
    if isinstance(experiment, ResultGrid):
        trials = []
        for result in experiment:
            frame = result.metrics_dataframe
            frame = frame if frame is not None else pd.DataFrame()
            failed = result.error is not None
            trials.append(
                _Trial(
                    trial_id=_result_trial_id(result, frame),
                    config=_flatten_config(result.config or {}),
                    results=frame,
                    status="ERROR" if failed else "TERMINATED",
                    failed=failed,
                    path=str(result.path) if result.path else None,
                )
            )
        return trials
    raise _not_an_experiment(experiment)


def _not_an_experiment(experiment: Any) -> ValueError:
    return ValueError(
        "Expected an experiment directory, a ray.tune.ExperimentAnalysis or a "
        f"ray.tune.ResultGrid but got {type(experiment).__name__}"
    )


def _result_trial_id(result: Any, frame: pd.DataFrame) -> str:
    trial_id = _usable_trial_id([(result.metrics or {}).get("trial_id")])
    if trial_id is None and "trial_id" in frame.columns:
        trial_id = _usable_trial_id(frame["trial_id"])
    return trial_id or _trial_id_from_name(Path(str(result.path)).name)


def _usable_trial_id(values: Iterable[Any]) -> str | None:
    """The last usable trial id of ``values``: a non-empty string, as written, or an integer.

    ``None``, NaN (what a ``null`` or missing ``trial_id`` becomes in a frame) and anything else
    are not trial ids.
    """
    for value in reversed(list(values)):
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            return str(value)
    return None


def _trial_id_from_name(name: str) -> str:
    match = _TRIAL_ID.search(name)
    return match.group(1) if match else name


def _read_directory(path: Path) -> list[_Trial]:
    if not path.exists():
        raise ValueError(f"Experiment directory {path} does not exist")
    if not path.is_dir():
        raise ValueError(f"Expected an experiment directory but {path} is not a directory")
    trial_dirs = _trial_dirs(path)
    if not trial_dirs:
        inner = sorted(p.name for p in path.iterdir() if p.is_dir() and _trial_dirs(p))
        hint = f"; it holds the experiments {', '.join(inner)}: pass one of them" if inner else ""
        raise ValueError(
            f"{path} is not a Tune experiment directory (no trial directories with "
            f"params.json, result.json or progress.csv){hint}"
        )
    state = _experiment_state(path)
    trials = []
    for trial_dir in trial_dirs:
        results = _read_results(trial_dir)
        trial_id = None
        if "trial_id" in results.columns:
            trial_id = _usable_trial_id(results["trial_id"])
        known = state.get(trial_dir.name, {})
        trial_id = trial_id or known.get("trial_id") or _trial_id_from_name(trial_dir.name)
        has_error = any((trial_dir / name).exists() for name in _ERROR_FILES)
        status = known.get("status") or ("ERROR" if has_error else None)
        trials.append(
            _Trial(
                trial_id=trial_id,
                config=_flatten_config(_read_params(trial_dir, results)),
                results=results,
                status=status,
                failed=status == "ERROR",
                path=str(trial_dir),
            )
        )
    return trials


def _trial_dirs(path: Path) -> list[Path]:
    return sorted(
        p for p in path.iterdir() if p.is_dir() and any((p / f).exists() for f in _RESULT_FILES)
    )


def _experiment_state(path: Path) -> dict[str, dict[str, str]]:
    """Trial id and status per trial directory name, from Tune's newest experiment state."""
    files = sorted(path.glob("experiment_state*.json"), key=lambda p: (p.stat().st_mtime, p.name))
    if not files:
        return {}
    try:
        state = json.loads(files[-1].read_text())
        known = {}
        for trial_json, _ in state["trial_data"]:
            trial = json.loads(trial_json)
            known[str(trial["relative_logdir"])] = {
                "trial_id": str(trial["trial_id"]),
                "status": str(trial["status"]),
            }
        return known
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.debug("Cannot read trial states from %s: %s", files[-1], error)
        return {}


def _read_json_lines(
    path: Path, wanted: Callable[[dict[str, Any]], bool] | None = None
) -> list[dict[str, Any]] | None:
    """The JSON objects of a JSON-lines file, or None if the file cannot be read.

    Lines that are not UTF-8, not JSON or not a JSON object (``null``, a list...), or that
    ``wanted`` rejects, are skipped with one warning naming the file and the line numbers.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        logger.warning("Cannot read %s, skipping it: %s", path, error)
        return None
    rows: list[dict[str, Any]] = []
    bad: list[int] = []
    first_error = ""
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:  # UnicodeDecodeError and json.JSONDecodeError are ValueErrors
            row = json.loads(line.decode("utf-8"))
            if not isinstance(row, dict):
                raise ValueError(f"expected a JSON object but got {json.dumps(row)[:40]}")
            if wanted is not None and not wanted(row):
                raise ValueError(f"unexpected object {json.dumps(row)[:60]}")
        except (ValueError, RecursionError) as error:
            bad.append(number)
            first_error = first_error or f"line {number}: {error}"
            continue
        rows.append(row)
    if bad:
        logger.warning(
            "Skipping unreadable line%s %s of %s (%s)",
            "s" if len(bad) > 1 else "",
            ", ".join(map(str, bad)),
            path,
            first_error,
        )
    return rows


def _read_results(trial_dir: Path) -> pd.DataFrame:
    """A trial's results, flattened as Tune flattens them (``metric/layer``)."""
    json_path = trial_dir / "result.json"
    if json_path.exists():
        rows = _read_json_lines(json_path)
        if rows:
            return pd.json_normalize(rows, sep="/")
    csv_path = trial_dir / "progress.csv"
    try:
        if csv_path.exists() and csv_path.stat().st_size:
            return pd.read_csv(csv_path, dtype={"trial_id": str})
    except (OSError, ValueError, pd.errors.ParserError) as error:
        logger.warning("Cannot read %s, skipping it: %s", csv_path, error)
    return pd.DataFrame()


def _read_params(trial_dir: Path, results: pd.DataFrame) -> dict[str, Any]:
    params = trial_dir / "params.json"
    if params.exists():
        try:
            config = json.loads(params.read_text(encoding="utf-8"))
            if isinstance(config, dict):
                return config
            logger.warning("%s holds no JSON object; taking the config from the results", params)
        except (OSError, ValueError) as error:
            logger.warning("Cannot read %s; taking the config from the results: %s", params, error)
    prefix = "config/"
    if len(results):
        last = results.iloc[-1]
        return {k[len(prefix) :]: last[k] for k in results.columns if k.startswith(prefix)}
    return {}


def _flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten_config(value, name + "/"))
        elif value is None or isinstance(value, (bool, int, float, str)):
            flat[name] = value
        elif isinstance(value, np.generic):
            flat[name] = value.item()
        else:
            try:
                flat[name] = json.dumps(value)
            except (TypeError, ValueError):
                flat[name] = str(value)
    return flat


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() == "true"
    try:
        return bool(value) and not pd.isna(value)
    except (TypeError, ValueError):
        return False


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
    renamed = {n: f"config/{n}" if n in TIDY_COLUMNS else n for n in config_names}
    frames = []
    text: set[str] = set()  # names of results holding text (no numbers) in some trial
    for trial in trials:
        long = _tidy_trial(trial.results, text)
        if long is None:
            continue
        long.insert(0, "trial_id", trial.trial_id)
        for position, name in enumerate(config_names, 1):
            long.insert(position, renamed[name], [trial.config.get(name)] * len(long))
        frames.append(long)
    columns = ["trial_id", *renamed.values(), "training_iteration", "metric", "layer", "value"]
    df = pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
    reported: dict[str, bool] = {}  # metric name -> reported per layer
    for metric, layer in df[["metric", "layer"]].drop_duplicates().itertuples(index=False):
        reported[metric] = reported.get(metric, False) or not missing(layer)
    df = df[df["value"].notna()].reset_index(drop=True)
    with_values = set(df["metric"])
    df.attrs["trials"] = {t.trial_id: t.info() for t in trials}
    df.attrs["decisions"] = [row for t in trials for row in _trial_decisions(t)]
    df.attrs["empty_metrics"] = {
        name: per_layer
        for name, per_layer in sorted(reported.items())
        if name not in with_values and name not in text
    }
    return df


def _trial_decisions(trial: _Trial) -> list[dict[str, Any]]:
    """The scheduler's decisions on one trial: its ``ikkuna_decisions.jsonl``, then the
    ``freeze_reason/<layer>`` its results carry for layers that file has no freeze for; in
    report order (file order within a report; reasons whose report is unknown last)."""
    rows: list[dict[str, Any]] = []
    path = Path(trial.path) / DECISIONS_FILE if trial.path else None
    if path is not None and path.exists():
        for raw in _read_json_lines(path, wanted=_is_decision) or []:
            rows.append({"trial_id": trial.trial_id, **_decision(raw)})
    frozen = {row["layer"] for row in rows if row["action"] == "freeze"}
    prefix = FREEZE_REASON + "/"
    for column in trial.results.columns:
        layer = column[len(prefix) :]
        if not column.startswith(prefix) or layer in frozen:
            continue
        reasons = [r for r in trial.results[column] if isinstance(r, str) and r.strip()]
        if reasons:
            rows.append({"trial_id": trial.trial_id, **_described(reasons[-1], layer)})
    return sorted(rows, key=lambda r: (r["iteration"] is None, r["iteration"] or 0))


def _is_decision(raw: Mapping[str, Any]) -> bool:
    return isinstance(raw.get("action"), str) and isinstance(raw.get("rule"), str)


def _decision(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A line of ``ikkuna_decisions.jsonl`` (``Decision.as_dict()``) as a decision row."""
    iteration = raw.get("iteration")
    layer = raw.get("layer")
    values = raw.get("values")
    return {
        "iteration": int(iteration) if _is_whole(iteration) else None,
        "action": str(raw["action"]),
        "layer": layer if isinstance(layer, str) and layer else None,
        "rule": str(raw["rule"]),
        "values": dict(values) if isinstance(values, Mapping) else {},
    }


def _described(reason: str, layer: str) -> dict[str, Any]:
    """A ``freeze_reason/<layer>`` a trial reported (``Decision.describe()``) as a decision
    row; a reason in another format is the row's rule, with no values and no report."""
    match = _DESCRIBED.match(reason.strip())
    if match and match["action"] == "freeze" and match["layer"] == layer:
        values: dict[str, Any] = {}
        for pair in (match["values"] or "").split(", "):
            key, equals, value = pair.partition("=")
            if not pair:
                continue
            if not equals or not key:
                break
            try:
                values[key] = float(value)
            except ValueError:
                values[key] = value
        else:
            return {
                "iteration": int(match["iteration"]),
                "action": "freeze",
                "layer": layer,
                "rule": match["rule"],
                "values": values,
            }
    return {"iteration": None, "action": "freeze", "layer": layer, "rule": reason, "values": {}}


def _is_whole(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value == int(value)
    )


def _clean(results: pd.DataFrame) -> pd.DataFrame:
    """One row per ``training_iteration`` (the last reported, as after a restore), in order."""
    if not len(results) or "training_iteration" not in results.columns:
        return pd.DataFrame()
    results = results.copy()
    results["training_iteration"] = pd.to_numeric(results["training_iteration"], errors="coerce")
    results = results.dropna(subset=["training_iteration"])
    results = results.drop_duplicates("training_iteration", keep="last")
    return results.sort_values("training_iteration", kind="stable", ignore_index=True)


def _tidy_trial(results: pd.DataFrame, text: set[str]) -> pd.DataFrame | None:
    """One trial's results in long form, NaN values included; adds the metric names of
    columns holding text to ``text``."""
    if not len(results):
        return None
    iterations = results["training_iteration"].astype(int).to_numpy()
    parts = []
    for column in results.columns:
        if column in BOOKKEEPING or column.startswith("config/"):
            continue
        metric, _, layer = column.partition("/")
        values = _numeric(results[column])
        if values is None:
            text.add(metric)
            continue
        parts.append(
            pd.DataFrame(
                {
                    "training_iteration": iterations,
                    "metric": metric,
                    "layer": layer or None,
                    "value": values.to_numpy(),
                }
            )
        )
    if not parts:
        return None
    long = pd.concat(parts, ignore_index=True)  # NaN values are dropped once all are seen
    long = long.sort_values("training_iteration", kind="stable", ignore_index=True)
    long["layer"] = long["layer"].astype(object).where(long["layer"].notna(), None)
    return long
