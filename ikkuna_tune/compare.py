"""Compare the trials of a Tune experiment: one tidy DataFrame, plots and a summary table.

Everything here works on finished experiments read from disk, without Ray running::

    from ikkuna_tune import compare

    df = compare.load("~/ray_results/my_sweep")  # or an ExperimentAnalysis / ResultGrid
    compare.plot_layers(df, metric="self_similarity", color_by="lr").savefig("layers.png")
    compare.plot_freeze_timeline(df).savefig("freeze.png")
    table = compare.summary(df, metric="test_accuracy", mode="max")  # one row per trial
    why = compare.decisions(df)  # what SVCCAScheduler froze and stopped, and why

The tidy DataFrame has one row per reported number: ``trial_id``, one column per config
parameter (nested configs flattened as ``a/b``), ``training_iteration``, ``metric``, ``layer``
and ``value``. Tune flattens the nested per-layer reports of :func:`ikkuna_tune.report`
(``{"self_similarity": {"conv1": 0.99}}``) to ``self_similarity/conv1``; such a name becomes
metric ``self_similarity``, layer ``conv1``. Network-wide metrics have no layer (NaN).
Non-numeric and missing values (NaN, ``null``), and Tune's bookkeeping fields (``done``,
``timestamp``, ``pid``...), are left out. Booleans become 0/1.

What is known about each trial beyond its numbers (status, whether it failed, whether Tune
stopped it, its directory, its config, also for trials that never reported) is kept in
``df.attrs["trials"]``, which :func:`summary` and :func:`plot_freeze_timeline` read. The
scheduler's decisions are in ``df.attrs["decisions"]`` (see :func:`decisions`), and metrics that
were reported but never with a value (every value NaN or ``null``) in
``df.attrs["empty_metrics"]`` (name -> reported per layer), so that asking for one says so.

Damaged files do not stop a load: lines of ``result.json`` (or of the scheduler's
``ikkuna_decisions.jsonl``) that are not UTF-8 JSON objects are skipped with one warning per
file naming its path and the lines, and a file that cannot be read is skipped with a warning
naming it.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
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

__all__ = [
    "Comparison",
    "compare_experiment",
    "config_columns",
    "decisions",
    "freeze_iterations",
    "layers",
    "load",
    "metrics",
    "plot_freeze_timeline",
    "plot_layers",
    "summary",
    "write_report",
]

logger = logging.getLogger(__name__)

#: The tidy columns besides the config columns.
TIDY_COLUMNS = ("trial_id", "training_iteration", "metric", "layer", "value")
#: The per-layer metric whose reported order is the network's order of layers.
FROZEN = "frozen"
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
#: Where SVCCAScheduler writes its decisions in each trial directory, one JSON object a line
#: (``ikkuna_tune.tune.scheduler.DECISIONS_FILE``; that module imports Ray, this one does not).
DECISIONS_FILE = "ikkuna_decisions.jsonl"
#: The columns of :func:`decisions`.
DECISION_COLUMNS = ("trial_id", "iteration", "action", "layer", "rule", "values")
#: Tune's flattened key of the reason a trial reports for each frozen layer.
FREEZE_REASON = "freeze_reason"
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


# --------------------------------------------------------------------------------- loading
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
        reported[metric] = reported.get(metric, False) or not _missing(layer)
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


# ------------------------------------------------------------------------------- queries
def config_columns(df: pd.DataFrame) -> list[str]:
    """The config parameters of a tidy DataFrame from :func:`load`."""
    return [c for c in df.columns if c not in TIDY_COLUMNS]


def metrics(df: pd.DataFrame, per_layer: bool | None = None) -> list[str]:
    """Metric names in ``df`` (sorted); only per-layer ones, or only network-wide ones."""
    if per_layer is None:
        names = df["metric"]
    elif per_layer:
        names = df.loc[df["layer"].notna(), "metric"]
    else:
        names = df.loc[df["layer"].isna(), "metric"]
    return sorted(set(names))


def layers(df: pd.DataFrame, metric: str | None = None) -> list[str]:
    """Layer names in network order (of ``metric``'s layers, if given).

    The order is that in which trials report ``frozen/<layer>`` (every tracked layer, in the
    model's order, in every report); layers without it follow in order of first appearance.
    """
    rows = df[df["layer"].notna()]
    ordered = list(dict.fromkeys(rows.loc[rows["metric"] == FROZEN, "layer"]))
    seen = set(ordered)
    ordered += [name for name in dict.fromkeys(rows["layer"]) if name not in seen]
    if metric is not None:
        present = set(rows.loc[rows["metric"] == metric, "layer"])
        ordered = [name for name in ordered if name in present]
    return ordered


def _check_tidy(df: Any) -> None:
    if not isinstance(df, pd.DataFrame) or not set(TIDY_COLUMNS) <= set(df.columns):
        raise ValueError(
            f"Expected the tidy DataFrame of compare.load (columns {', '.join(TIDY_COLUMNS)}) "
            f"but got {type(df).__name__}"
        )
    if not len(df):
        raise ValueError("The DataFrame holds no results")


def _check_metric(
    df: pd.DataFrame, metric: str, per_layer: bool | None = None, allow_empty: bool = False
) -> None:
    """Check that ``df`` has values of ``metric`` (of its kind, when ``per_layer`` is given).

    With ``allow_empty``, a metric reported without values (``df.attrs["empty_metrics"]``)
    passes too, if of the right kind.
    """
    empty = df.attrs.get("empty_metrics", {})
    if isinstance(metric, str) and metric not in set(df["metric"]) and metric in empty:
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
    if not isinstance(metric, str) or metric not in set(df["metric"]):
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


def _check_color_by(df: pd.DataFrame, color_by: str | None) -> None:
    if color_by is not None and color_by not in config_columns(df):
        raise ValueError(
            f"Unknown color_by parameter {color_by!r}; config columns: "
            f"{', '.join(config_columns(df)) or '(none)'}"
        )


def _check_mode(mode: str) -> None:
    if mode not in ("max", "min"):
        raise ValueError(f"Expected `mode` to be 'max' or 'min' but got {mode!r}")


def _trial_infos(df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per-trial facts: from ``df.attrs`` when present, else what the rows tell."""
    infos = {str(k): dict(v) for k, v in df.attrs.get("trials", {}).items()}
    config = config_columns(df)
    for trial_id, rows in df.groupby("trial_id", sort=False):
        info = infos.setdefault(str(trial_id), {})
        info.setdefault("config", rows.iloc[0][config].to_dict())
        info.setdefault("status", None)
        info.setdefault("failed", False)
        info.setdefault("stopped_by_tune", False)
        info.setdefault("path", None)
    return dict(sorted(infos.items()))


def _trial_values(df: pd.DataFrame, column: str | None) -> dict[str, Any]:
    """Each trial's value of a config column (None when missing)."""
    if column is None:
        return {}
    values = {}
    for trial_id, info in _trial_infos(df).items():
        config = info.get("config", {})
        values[trial_id] = config.get(column, config.get(column.removeprefix("config/")))
    rows = df.drop_duplicates("trial_id")
    for trial_id, value in zip(rows["trial_id"], rows[column]):
        values[str(trial_id)] = value
    return {k: (None if _missing(v) else v) for k, v in values.items()}


def _missing(value: Any) -> bool:
    try:
        return value is None or bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------------- colours
@dataclass
class _Colours:
    """How trials are coloured by a config parameter."""

    colour: dict[str, Any]
    mappable: ScalarMappable | None = None
    legend: list[tuple[str, Any]] = field(default_factory=list)


_MISSING_COLOUR = (0.6, 0.6, 0.6, 1.0)


def _colours(values: dict[str, Any], cmap: str) -> _Colours:
    """Numbers map through ``cmap`` (log scale when all positive and spanning a factor >= 10);
    anything else gets one qualitative colour per distinct value and a legend."""
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
        return _Colours(colour, mappable=ScalarMappable(norm=norm, cmap=colour_map))
    distinct = sorted({str(v) for v in present.values()})
    palette = colormaps["tab10" if len(distinct) <= 10 else "tab20"]
    by_value = {v: palette(i % palette.N) for i, v in enumerate(distinct)}
    colour = {k: by_value[str(v)] if v is not None else _MISSING_COLOUR for k, v in values.items()}
    legend = [(v, by_value[v]) for v in distinct]
    if len(present) < len(values):
        legend.append(("(missing)", _MISSING_COLOUR))
    return _Colours(colour, legend=legend)


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


# ----------------------------------------------------------------------------------- plots
def plot_layers(
    df: pd.DataFrame,
    metric: str = "self_similarity",
    color_by: str | None = "lr",
    *,
    columns: int = 4,
    cmap: str = "viridis",
) -> Figure:
    """Small multiples of a per-layer metric: one Axes per layer, one line per trial.

    Axes come in network order (see :func:`layers`), titled with the layer's name, x =
    ``training_iteration``, y = ``metric``. Each trial's line (its ``gid`` is the trial id) is
    coloured by its value of the config parameter ``color_by``: numbers through ``cmap``, on
    a log scale when all are positive and span a factor of 10 or more, with a colorbar;
    other values one colour each, with a legend. ``color_by=None`` colours by trial. A
    network-wide metric gets one Axes titled with the metric's name.

    Raises:
        ValueError: ``metric`` or ``color_by`` is not in ``df``.
    """
    _check_tidy(df)
    _check_metric(df, metric)
    _check_color_by(df, color_by)
    if not isinstance(columns, int) or columns < 1:
        raise ValueError(f"Expected `columns` to be a positive integer but got {columns!r}")
    rows = df[df["metric"] == metric]
    names = layers(df, metric)
    panels: list[str | None] = list(names) if names else [None]
    trial_ids = sorted(set(rows["trial_id"]))
    if color_by is None:
        colours = _colours({t: t for t in trial_ids}, cmap)
    else:
        values = _trial_values(df, color_by)
        colours = _colours({t: values.get(t) for t in trial_ids}, cmap)

    ncols = min(columns, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    figure = _new_figure(3.2 * ncols + 1.2, 2.6 * nrows + 0.6)
    grid = figure.subplots(nrows, ncols, sharex=True, squeeze=False)
    for ax in grid.flat[len(panels) :]:
        figure.delaxes(ax)
    for ax, layer in zip(grid.flat, panels):
        selected = rows[rows["layer"] == layer] if layer is not None else rows
        for trial_id in trial_ids:
            trial = selected[selected["trial_id"] == trial_id]
            if not len(trial):
                continue
            ax.plot(
                trial["training_iteration"].to_numpy(),
                trial["value"].to_numpy(),
                color=colours.colour[trial_id],
                gid=trial_id,
                label=trial_id,
                linewidth=1.4,
                marker="." if len(trial) < 30 else None,
            )
        ax.set_title(layer if layer is not None else metric)
        ax.set_xlabel("training_iteration")
        ax.set_ylabel(metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    used = list(grid.flat[: len(panels)])
    if colours.mappable is not None:
        figure.colorbar(colours.mappable, ax=used, label=color_by or "trial")
    elif colours.legend:
        handles = [Line2D([], [], color=c, label=label) for label, c in colours.legend]
        figure.legend(handles=handles, title=color_by or "trial", loc="outside right upper")
    figure.suptitle(f"{metric} per layer" if names else metric)
    return figure


def freeze_iterations(df: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Per trial, per layer: the first ``training_iteration`` whose report says it is frozen.

    A layer frozen after a report (as the scheduler does) shows up frozen in the next one.
    """
    frozen = df[(df["metric"] == FROZEN) & df["layer"].notna() & (df["value"] > 0)]
    first = frozen.groupby(["trial_id", "layer"], sort=False)["training_iteration"].min()
    result: dict[str, dict[str, int]] = {}
    for (trial_id, layer), iteration in first.items():
        result.setdefault(str(trial_id), {})[str(layer)] = int(iteration)
    return result


def plot_freeze_timeline(
    df: pd.DataFrame, color_by: str | None = None, *, cmap: str = "viridis"
) -> Figure:
    """When each layer froze in each trial.

    One row per trial (labelled ``trial_id``, plus ``color_by``'s value when given, and
    sorted by it), x = ``training_iteration``. A grey line spans the iterations a trial ran;
    one marker per layer at the first iteration reporting it frozen, a colour per layer
    (input side darkest, following ``cmap``) and one legend entry per layer in network
    order (each layer is one ``Line2D`` labelled with its name, holding every trial's point).
    A red ``x`` marks the last iteration of a failed trial, a black ``|`` that of a trial
    stopped early (see :func:`summary`).

    Raises:
        ValueError: ``df`` has no ``frozen/<layer>`` metrics (not reported through
            :func:`ikkuna_tune.report`) or ``color_by`` is unknown.
    """
    _check_tidy(df)
    _check_color_by(df, color_by)
    if FROZEN not in set(df["metric"]):
        raise ValueError(
            "No frozen/<layer> metrics in the results: was the trainable wrapped with "
            "ikkuna_tune.instrument and reporting through ikkuna_tune.report?"
        )
    infos = _trial_infos(df)
    iterations = df.groupby("trial_id")["training_iteration"].max().to_dict()
    trial_ids = list(infos)
    values = _trial_values(df, color_by)
    if color_by is not None:
        trial_ids.sort(key=lambda t: _sort_key(values.get(t)))
    early = _stopped_early(infos, iterations)
    names = layers(df, FROZEN)
    frozen_at = freeze_iterations(df)

    figure = _new_figure(8.0, 1.2 + 0.45 * len(trial_ids))
    ax = figure.subplots()
    positions = {t: i for i, t in enumerate(trial_ids)}
    for trial_id in trial_ids:
        y = positions[trial_id]
        last = int(iterations.get(trial_id, 0))
        if last:
            ax.plot([1, last], [y, y], color="0.75", linewidth=3, solid_capstyle="butt", zorder=1)
    layer_colours = colormaps[cmap](np.linspace(0.0, 0.9, max(len(names), 1)))
    markers = "osD^v<>ph*"
    for index, layer in enumerate(names):
        points = [
            (frozen_at[t][layer], positions[t]) for t in trial_ids if layer in frozen_at.get(t, {})
        ]
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        ax.plot(
            xs,
            ys,
            linestyle="none",
            marker=markers[index % len(markers)],
            markersize=8,
            color=layer_colours[index],
            label=layer,
            zorder=3,
        )
    failed = [t for t in trial_ids if infos[t].get("failed")]
    stopped = [t for t in trial_ids if early.get(t)]
    for trials, marker, colour, label in (
        (failed, "x", "tab:red", "failed"),
        (stopped, "|", "black", "stopped early"),
    ):
        if trials:
            ax.plot(
                [int(iterations.get(t, 0)) for t in trials],
                [positions[t] for t in trials],
                linestyle="none",
                marker=marker,
                markersize=11,
                markeredgewidth=2,
                color=colour,
                label=label,
                zorder=4,
            )
    ax.set_yticks(range(len(trial_ids)))
    ax.set_yticklabels([_trial_label(t, color_by, values.get(t)) for t in trial_ids])
    ax.set_ylim(len(trial_ids) - 0.5, -0.5)
    ax.set_xlabel("training_iteration")
    ax.set_ylabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Layer freeze timeline")
    ax.grid(True, axis="x", alpha=0.3)
    if not frozen_at:
        ax.text(0.5, 0.5, "no layer was frozen", transform=ax.transAxes, ha="center", va="center")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), title="layer")
    return figure


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (2, "")
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return (0, float(value))
    return (1, str(value))


def _trial_label(trial_id: str, color_by: str | None, value: Any) -> str:
    if color_by is None:
        return trial_id
    shown = f"{value:.4g}" if isinstance(value, float) else str(value)
    return f"{trial_id} ({color_by}={shown})"


# --------------------------------------------------------------------------------- summary
def _stopped_early(
    infos: Mapping[str, Mapping[str, Any]], iterations: Mapping[str, Any]
) -> dict[str, bool]:
    longest = max((int(v) for v in iterations.values()), default=0)
    return {
        trial_id: bool(
            not info.get("failed")
            and info.get("stopped_by_tune")
            and int(iterations.get(trial_id, 0)) < longest
        )
        for trial_id, info in infos.items()
    }


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
    ``<NA>`` if unknown); ``action`` (``freeze`` or ``stop``); ``layer`` (None for a decision
    on the whole trial); ``rule``; and ``values``, the values behind the rule as one string
    (``"similarity=0.995, distance_from_init=0.12"``, floats to 4 significant digits).

    The rows come from the ``ikkuna_decisions.jsonl`` the scheduler writes in each trial's
    directory; for a layer that file holds no freeze of, from the ``freeze_reason/<layer>``
    the trial reported (a reason not in the scheduler's words is the ``rule``, without
    values or report). Rows are by trial, then report; a layer frozen again after a restore
    has a row each time. A DataFrame not from :func:`load` has no decisions.

    Raises:
        ValueError: ``df`` is not a DataFrame.
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


def summary(df: pd.DataFrame, metric: str | None = None, mode: str = "max") -> pd.DataFrame:
    """One row per trial: how it did, how long it ran, what it froze and saved.

    Columns:

    - ``trial_id``, the config parameters, ``status`` (Tune's: ``TERMINATED``, ``ERROR``...;
      None when unknown) and ``failed`` (the trial ended in an error).
    - ``iterations_run``: the last ``training_iteration`` reported (0 if none).
    - ``best_<metric>`` and ``best_iteration`` (only with ``metric``, a network-wide metric):
      the best value by ``mode`` and the first iteration reaching it; NaN if never reported.
    - ``stopped_early``: Tune stopped the trial (a scheduler or stopper: its last result
      carries ``done``, which a trainable that returns by itself never writes) before it ran
      as many iterations as the longest trial of the experiment, and it did not fail. A
      trial that ends its own loop early, or the longest trial, does not count.
    - ``stopped_by``: why SVCCAScheduler stopped the trial, ``"<rule>[ <layer>] at report N
      (<values>)"`` (its last stop in :func:`decisions`); None if it did not.
    - ``frozen_layers``: the layers frozen in the last report, in network order (a list).
    - ``freeze_reasons``: why the scheduler froze each layer it ordered frozen (a dict, in
      network order): ``"<rule> at report N (<values>)"`` from the layer's last freeze in
      :func:`decisions`. A layer ordered frozen after the trial's last report is in it but
      not in ``frozen_layers``.
    - ``frozen_fraction``: the fraction of parameters frozen in the last report.
    - ``compute_saved``: ``1 - sum(step_seconds) / (n * step_seconds_unfrozen)`` over the
      trial's ``n`` reports with ``step_seconds`` (the mean training-step time since the
      previous report), where ``step_seconds_unfrozen`` is the last reported mean step time
      before any layer froze: the fraction of training-step time saved against running every
      report at the unfrozen speed, assuming equally many steps per report. Timing noise can
      make it slightly negative; NaN without timings or when a layer was frozen before the
      first report (no unfrozen speed was measured).

    A config parameter named like one of these columns appears as ``config/<name>``.

    A network-wide ``metric`` that was reported but never with a value (every value NaN or
    null) gives NaN, as for a trial that never reported it.

    Raises:
        ValueError: ``metric`` is unknown or per-layer, or ``mode`` is not max/min.
    """
    _check_tidy(df)
    _check_mode(mode)
    if metric is not None:
        _check_metric(df, metric, per_layer=False, allow_empty=True)
    infos = _trial_infos(df)
    config = config_columns(df)
    iterations = df.groupby("trial_id")["training_iteration"].max().to_dict()
    iterations = {str(k): int(v) for k, v in iterations.items()}
    early = _stopped_early(infos, iterations)
    network = df[df["layer"].isna()]
    frozen_rows = df[(df["metric"] == FROZEN) & df["layer"].notna()]
    order = {name: i for i, name in enumerate(layers(df, FROZEN))}
    stops: dict[str, dict[str, Any]] = {}
    freezes: dict[str, dict[str, dict[str, Any]]] = {}
    for row in df.attrs.get("decisions", []):
        trial_id = str(row["trial_id"])
        if row["action"] == "stop":
            stops[trial_id] = row
        elif row["action"] == "freeze" and row.get("layer"):
            freezes.setdefault(trial_id, {})[row["layer"]] = row
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
        record["compute_saved"] = _compute_saved(own)
        records.append(record)
    table = pd.DataFrame.from_records(records)
    table["stopped_by"] = pd.Series(  # None, not NaN, where the scheduler did not stop
        [r["stopped_by"] for r in records], index=table.index, dtype=object
    )
    if metric is not None:
        table["best_iteration"] = table["best_iteration"].astype("Int64")
    return table


def _last(rows: pd.DataFrame, metric: str) -> float:
    values = rows[rows["metric"] == metric]
    if not len(values):
        return math.nan
    return float(values.sort_values("training_iteration", kind="stable")["value"].iloc[-1])


def _compute_saved(rows: pd.DataFrame) -> float:
    steps = rows.loc[rows["metric"] == "step_seconds", "value"]
    unfrozen = _last(rows, "step_seconds_unfrozen")
    if not len(steps) or not unfrozen > 0:
        return math.nan
    return float(1.0 - steps.sum() / (len(steps) * unfrozen))


# --------------------------------------------------------------------------------- compare
@dataclass
class Comparison:
    """What :func:`compare_experiment` made: the summary table, the files it wrote and the
    scheduler's :func:`decisions`."""

    summary: pd.DataFrame
    files: list[Path]
    decisions: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=list(DECISION_COLUMNS))
    )


def compare_experiment(
    experiment: ExperimentLike,
    out_dir: str | PathLike[str],
    metric: str = "self_similarity",
    color_by: str | None = "lr",
    summary_metric: str | None = None,
    mode: str = "max",
) -> Comparison:
    """:func:`load` an experiment and :func:`write_report` its comparison into ``out_dir``.

    Raises:
        ValueError: as :func:`load` and :func:`write_report` do.
    """
    _check_mode(mode)
    df = load(experiment)
    table = _summary_for_report(df, metric, color_by, summary_metric, mode)
    made = decisions(df)
    files = _write(df, table, made, out_dir, metric, color_by)
    return Comparison(summary=table, files=files, decisions=made)


def write_report(
    df: pd.DataFrame,
    out_dir: str | PathLike[str],
    metric: str = "self_similarity",
    color_by: str | None = "lr",
    summary_metric: str | None = None,
    mode: str = "max",
) -> list[Path]:
    """Write ``layers_<metric>.png``, ``freeze_timeline.png``, ``summary.csv`` and
    ``decisions.csv`` of a tidy DataFrame into ``out_dir`` (created if needed); returns the
    paths written.

    ``summary_metric`` is the network-wide metric whose best value the summary shows; None
    takes ``test_accuracy`` when the trials report it. The freeze timeline is left out, with
    a warning, when the trials report no ``frozen/<layer>``, and ``decisions.csv`` (the
    table of :func:`decisions`) when there are no scheduler decisions. Every argument is
    checked before anything is written. In ``summary.csv`` the frozen layers are joined by
    spaces and the freeze reasons written ``layer: reason; layer: reason``.

    Raises:
        ValueError: as :func:`plot_layers` and :func:`summary` do.
    """
    _check_tidy(df)
    table = _summary_for_report(df, metric, color_by, summary_metric, mode)
    return _write(df, table, decisions(df), out_dir, metric, color_by)


def _summary_for_report(
    df: pd.DataFrame, metric: str, color_by: str | None, summary_metric: str | None, mode: str
) -> pd.DataFrame:
    _check_mode(mode)
    _check_metric(df, metric)
    _check_color_by(df, color_by)
    if summary_metric is None and "test_accuracy" in metrics(df, per_layer=False):
        summary_metric = "test_accuracy"
    return summary(df, metric=summary_metric, mode=mode)


def _write(
    df: pd.DataFrame,
    table: pd.DataFrame,
    made: pd.DataFrame,
    out_dir: str | PathLike[str],
    metric: str,
    color_by: str | None,
) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    path = out / f"layers_{_safe_name(metric)}.png"
    _save(plot_layers(df, metric=metric, color_by=color_by), path)
    files.append(path)
    if FROZEN in set(df["metric"]):
        path = out / "freeze_timeline.png"
        _save(plot_freeze_timeline(df, color_by=color_by), path)
        files.append(path)
    else:
        logger.warning("The trials report no frozen/<layer>: no freeze timeline")
    path = out / "summary.csv"
    written = table.copy()
    written["frozen_layers"] = [" ".join(names) for names in written["frozen_layers"]]
    written["freeze_reasons"] = [
        "; ".join(f"{name}: {why}" for name, why in reasons.items())
        for reasons in written["freeze_reasons"]
    ]
    written.to_csv(path, index=False)
    files.append(path)
    if len(made):
        path = out / "decisions.csv"
        made.to_csv(path, index=False)
        files.append(path)
    logger.info("Wrote %s", ", ".join(str(f) for f in files))
    return files


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _save(figure: Figure, path: Path) -> None:
    figure.savefig(path, dpi=110)
