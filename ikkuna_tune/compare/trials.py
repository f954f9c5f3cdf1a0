"""Reading the trials of an experiment, from its directory or a Ray object: each trial's id,
flat config, results (one row per iteration), status and directory.

Damaged files do not stop the reading: unreadable lines of a JSON-lines file are skipped with
one warning naming the file and the lines, and a file that cannot be read with a warning naming
it. Ray is not imported here unless the caller passes a Ray object (then it is already
imported).
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

_RESULT_FILES = ("result.json", "progress.csv", "params.json")
_ERROR_FILES = ("error.txt", "error.pkl")
_TRIAL_ID = re.compile(r"(?:^|_)([0-9a-f]{5}_\d{5})(?:_|$)")


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
        self.results = _clean(self.results, self.trial_id)

    def info(self) -> dict[str, Any]:
        results = self.results
        stopped_by_tune = False
        if len(results) and "done" in results.columns:
            stopped_by_tune = _truthy(results["done"].iloc[-1])
        # a trial Tune stopped while it was paused (HyperBand's halving) has no result saying
        # ``done``, and Tune's state still lists it as paused (as it does a trial paused when
        # the sweep was interrupted, which is no more finished than stopped)
        if len(results) and not self.failed and self.status == "PAUSED":
            stopped_by_tune = True
        return {
            "config": dict(self.config),
            "status": self.status,
            "failed": self.failed,
            "stopped_by_tune": stopped_by_tune,
            "path": self.path,
            "results": len(results),
        }


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
        # a Result carries no status: Tune's, where the grid's analysis holds it (PAUSED for a
        # trial HyperBand left paused), else None (unknown), never one made up
        analysis = getattr(experiment, "_experiment_analysis", None)
        statuses = {
            str(getattr(t, "trial_id", "")): getattr(t, "status", None)
            for t in getattr(analysis, "trials", None) or []
        }
        trials = []
        for result in experiment:
            frame = result.metrics_dataframe
            frame = frame if frame is not None else pd.DataFrame()
            failed = result.error is not None
            trial_id = _result_trial_id(result, frame)
            trials.append(
                _Trial(
                    trial_id=trial_id,
                    config=_flatten_config(result.config or {}),
                    results=frame,
                    status="ERROR" if failed else statuses.get(trial_id),
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
        if any((path / name).exists() for name in _RESULT_FILES):
            hint = f"; it is a trial directory: pass its experiment, {path.parent}"
        raise ValueError(
            f"{path} is not a Tune experiment directory (no trial directories with "
            f"params.json, result.json or progress.csv){hint}"
        )
    state = _experiment_state(path)
    older = _experiment_state(path, newest=False)  # of trials the newest state does not list
    trials = []
    for trial_dir in trial_dirs:
        results = _read_results(trial_dir)
        trial_id = None
        if "trial_id" in results.columns:
            trial_id = _usable_trial_id(results["trial_id"])
        known = state.get(trial_dir.name) or older.get(trial_dir.name, {})
        trial_id = trial_id or known.get("trial_id") or _trial_id_from_name(trial_dir.name)
        status = known.get("status") or ("ERROR" if _failed_last(trial_dir, results) else None)
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
    trials = _without_restarted(trials, state, path)
    _tell_apart(trials)
    unlisted = [name for t in trials if state and (name := Path(str(t.path)).name) not in state]
    if unlisted:
        logger.warning(
            "%d trial directories of %s are not in its newest experiment state (%s): trials "
            "of an earlier run under the same experiment name? They are loaded with the "
            "others (Ray's ExperimentAnalysis and ResultGrid leave them out); move them out "
            "of the experiment to compare the latest run alone",
            len(unlisted),
            path,
            _first_names(unlisted),
        )
    return trials


def _without_restarted(
    trials: list[_Trial], state: dict[str, dict[str, str]], path: Path
) -> list[_Trial]:
    """``trials`` without the attempts Tune restarted as new trials: a directory the newest
    experiment state does not list but a state it continues does (:func:`_continued`: the
    experiment was restored, not run again under its name), that ended in an error (as the
    latest older state listing it says, or else its files: :func:`_failed_last`) and whose
    experiment tag (in its name) and config are those of a listed trial is an errored trial's
    first attempt, which ``Tuner.restore(..., restart_errored=True)`` runs again from scratch
    under a new id and directory (Ray's ExperimentAnalysis and ResultGrid leave it out too). A
    trial of an earlier run under the same name is kept."""
    continued = _continued(path)
    if not state or not continued:
        return trials  # the newest state continues no older one: a run of its own
    listed: dict[tuple[str, str], list[_Trial]] = {}
    for trial in trials:
        name = Path(str(trial.path)).name
        if name in state:
            tag = _experiment_tag(name, state[name].get("trial_id", trial.trial_id))
            listed.setdefault((tag, _config_key(trial.config)), []).append(trial)
    kept, restarted = [], []
    for trial in trials:
        name = Path(str(trial.path)).name
        key = (_experiment_tag(name, trial.trial_id), _config_key(trial.config))
        restarted_attempt = name in continued and name not in state and trial.failed
        if restarted_attempt and key[0] and key in listed:
            restarted.append(name)
        else:
            kept.append(trial)
    if restarted:
        logger.info(
            "Leaving out %d trial directories of %s that Tune restarted as new trials "
            "(Tuner.restore(..., restart_errored=True): same experiment tag and config as a "
            "trial of the newest experiment state): %s",
            len(restarted),
            path,
            _first_names(restarted),
        )
    return kept


def _first_names(names: list[str], shown: int = 5) -> str:
    """The first ``shown`` of ``names``, comma-separated, with ``...`` for the rest.

    >>> _first_names(["a", "b", "c"], shown=2)
    'a, b, ...'
    """
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


#: The date and time Tune ends a trial directory's name with.
_DATED = re.compile(r"_\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}$")


def _experiment_tag(name: str, trial_id: str) -> str:
    """The experiment tag in trial directory ``name`` (``train_<trial id>_<tag>_<date>``;
    ``""`` when the name has no such part).

    >>> _experiment_tag("train_72705_00001_1_lr=0.1000_2026-11-30_19-51-34", "72705_00001")
    '1_lr=0.1000'
    """
    marker = f"_{trial_id}_"
    if marker not in name:
        return ""
    return _DATED.sub("", name.split(marker, 1)[1])


def _config_key(config: dict[str, Any]) -> str:
    """A comparable text of a flat config."""
    return json.dumps(config, sort_keys=True, default=str)


def _failed_last(trial_dir: Path, results: pd.DataFrame) -> bool:
    """Whether the trial's last attempt failed, as its files tell without an experiment
    state: its last failure (``error.txt``: "Failure # N (occurred at <date>)") came at or after
    its last report (the ``date`` Tune gives each result, in the same form); an earlier one is
    that of an attempt the trial was resumed from (``Tuner.restore(resume_errored=True)``).
    Without both dates: an error file written after its results were (Tune copies a trial's
    files to its storage at once, at the trial's end, so there their times tell nothing)."""
    errors = [trial_dir / n for n in _ERROR_FILES if (trial_dir / n).exists()]
    if not errors:
        return False
    failed_at, reported_at = _last_failure(trial_dir), _last_report_date(results)
    if failed_at is not None and reported_at is not None:
        return failed_at >= reported_at
    results = [trial_dir / n for n in _RESULT_FILES if (trial_dir / n).exists()]
    last_result = max((r.stat().st_mtime for r in results), default=-math.inf)
    return max(e.stat().st_mtime for e in errors) >= last_result


#: A failure in Tune's ``error.txt`` and when it occurred (the form of a result's ``date``)
_FAILURE = re.compile(r"^Failure # \d+ \(occurred at (\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d)\)", re.M)


def _last_failure(trial_dir: Path) -> str | None:
    """When the trial's last failure occurred, as Tune's ``error.txt`` says (None if it does
    not say).

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "error.txt").write_text(
    ...     "Failure # 1 (occurred at 2026-12-02_06-59-00)\\nboom\\n"
    ...     "Failure # 2 (occurred at 2026-12-02_07-01-30)\\nboom\\n"
    ... )
    >>> _last_failure(folder)
    '2026-12-02_07-01-30'
    """
    try:
        text = (trial_dir / "error.txt").read_text(errors="replace")
    except OSError:
        return None
    found = _FAILURE.findall(text)
    return max(found) if found else None


def _last_report_date(results: pd.DataFrame) -> str | None:
    """The ``date`` of the trial's last result (None without one)."""
    if "date" not in results.columns or results.empty:
        return None
    last = results["date"].iloc[-1]
    return last if isinstance(last, str) and _DATE_FORM.fullmatch(last) else None


_DATE_FORM = re.compile(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d")


def _tell_apart(trials: list[_Trial]) -> None:
    """Give trials that claim one id (a trial directory copied within the experiment) ids of
    their own, ``<id>@<directory name>``, with a warning: their results are never merged."""
    claims: dict[str, list[_Trial]] = {}
    for trial in trials:
        claims.setdefault(trial.trial_id, []).append(trial)
    for trial_id, same in claims.items():
        if len(same) < 2:
            continue
        for trial in same:
            trial.trial_id = f"{trial_id}@{Path(str(trial.path)).name}"
        logger.warning(
            "%d trial directories hold trial id %r (%s); they are kept apart as %s",
            len(same),
            trial_id,
            ", ".join(Path(str(t.path)).name for t in same),
            ", ".join(repr(t.trial_id) for t in same),
        )


def _trial_dirs(path: Path) -> list[Path]:
    return sorted(
        p for p in path.iterdir() if p.is_dir() and any((p / f).exists() for f in _RESULT_FILES)
    )


def _experiment_state(path: Path, newest: bool = True) -> dict[str, dict[str, str]]:
    """Trial id and status per trial directory name, from Tune's newest experiment state: the
    file with the latest name (``experiment_state-<date>_<time>.json``), as Tune chooses it. Not
    the latest written: a driver resumed with ``Tuner.restore`` writes the old file too, at its
    end. With ``newest=False``: from the older ones (a later file's entry first)."""
    files = _state_files(path)
    known: dict[str, dict[str, str]] = {}
    for file in files[-1:] if newest else reversed(files[:-1]):
        for name, entry in _read_state(file)[0].items():
            known.setdefault(name, entry)
    return known


def _state_files(path: Path) -> list[Path]:
    return sorted(path.glob("experiment_state*.json"), key=lambda p: p.name)


def _read_state(file: Path, quiet: bool = False) -> tuple[dict[str, dict[str, str]], bool | None]:
    """An experiment state's trials (id and status by directory name), and whether the run
    that wrote it was resumed from the state before it (``Tuner.restore``; None: not said).
    A state that cannot be read is warned of, unless ``quiet`` (read a second time)."""
    known: dict[str, dict[str, str]] = {}
    resumed: bool | None = None
    try:
        state = json.loads(file.read_text())
        runner = state.get("runner_data")
        if isinstance(runner, dict) and isinstance(runner.get("_resumed"), bool):
            resumed = runner["_resumed"]
        for trial_json, _ in state["trial_data"]:
            trial = json.loads(trial_json)
            known[str(trial["relative_logdir"])] = {
                "trial_id": str(trial["trial_id"]),
                "status": str(trial["status"]),
            }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        if not quiet:
            logger.warning(
                "Cannot read trial states from %s (%s): the trials' statuses are read from "
                "their own files",
                file,
                error,
            )
    return known, resumed


def _continued(path: Path) -> set[str]:
    """The trial directories the states that the newest one continues list: those before it,
    back to the run that was not resumed (``Tuner.restore`` says so in each state); where the
    states do not say, every older state's when the newest lists one of their directories."""
    files = _state_files(path)
    if len(files) < 2:
        return set()
    states = [_read_state(file, quiet=True) for file in files]
    newest, said = states[-1]
    if said is None:
        older = {name for known, _ in states[:-1] for name in known}
        return older if any(name in older for name in newest) else set()
    continued: set[str] = set()
    index = len(states) - 1
    while index > 0 and states[index][1]:  # resumed from the state before it
        index -= 1
        continued.update(states[index][0])
    return continued


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


#: The column of a trial's results read from ``result.json`` that holds, per result, the
#: (flattened) names of the values reported as NaN: the frame's NaN alone cannot tell them from
#: values not reported (``null``, a key missing from a result).
REPORTED_NAN = "__reported_nan__"


def _nan_names(row: Mapping[str, Any], prefix: str = "") -> frozenset[str]:
    """The flattened names (``metric/layer``) of the NaN floats in one result."""
    names: set[str] = set()
    for key, value in row.items():
        if isinstance(value, float) and math.isnan(value):
            names.add(f"{prefix}{key}")
        elif isinstance(value, Mapping):
            names |= _nan_names(value, f"{prefix}{key}/")
    return frozenset(names)


def _read_results(trial_dir: Path) -> pd.DataFrame:
    """A trial's results, flattened as Tune flattens them (``metric/layer``); from
    ``result.json``, with the :data:`REPORTED_NAN` column."""
    json_path = trial_dir / "result.json"
    if json_path.exists():
        rows = _read_json_lines(json_path)
        if rows:
            results = pd.json_normalize(rows, sep="/")
            results[REPORTED_NAN] = [_nan_names(row) for row in rows]
            return results
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
    if len(results):  # column by column: a row of mixed columns would turn integers to floats
        return {
            k[len(prefix) :]: results[k].iloc[-1] for k in results.columns if k.startswith(prefix)
        }
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


def _clean(results: pd.DataFrame, trial_id: str = "") -> pd.DataFrame:
    """One row per ``training_iteration``, in order, from the run the trial ended in: rows
    are read in the order they were reported, and a trial restored from a checkpoint (or
    restarted) reports an iteration again; its rows from that iteration on replace those of
    the run it left, including the iterations the restored run never reached again.

    A restore is told by Tune's ``iterations_since_restore``, which starts again at each
    restore. Where it says the run went on (a trainable that sets ``training_iteration``
    itself and reports twice in an epoch: after training, after validation), the rows of one
    iteration are merged, the later report's values first; a value the later report replaced
    is warned of, naming ``trial_id``. Without that column every repeat is taken for a
    restore.

    Examples:
        >>> rows = pd.DataFrame({"training_iteration": [1, 2, 3, 2], "acc": [0.1, 0.2, 0.8, 0.3]})
        >>> _clean(rows)["acc"].tolist()  # the restored run's report 2 replaced reports 2 and 3
        [0.1, 0.3]
        >>> rows = pd.DataFrame(
        ...     {
        ...         "training_iteration": [1, 1, 2, 2],
        ...         "iterations_since_restore": [1, 2, 3, 4],  # one run: no restore
        ...         "loss": [0.9, None, 0.5, None],
        ...         "acc": [None, 0.3, None, 0.6],
        ...     }
        ... )
        >>> _clean(rows)[["loss", "acc"]].values.tolist()
        [[0.9, 0.3], [0.5, 0.6]]
    """
    if not len(results) or "training_iteration" not in results.columns:
        return pd.DataFrame()
    results = results.copy()
    results["training_iteration"] = pd.to_numeric(results["training_iteration"], errors="coerce")
    results = results.dropna(subset=["training_iteration"]).reset_index(drop=True)
    iterations = results["training_iteration"].tolist()
    if "iterations_since_restore" in results.columns:
        since = pd.to_numeric(results["iterations_since_restore"], errors="coerce").tolist()
    else:
        since = [math.nan] * len(results)
    # positions of the rows of the latest run, by iteration (``starts``: their iterations,
    # sorted; rows mostly come in order, so that a lookup is a bisection, an append the rule)
    groups: list[list[int]] = []
    starts: list[float] = []
    for position, iteration in enumerate(iterations):
        went_on = (
            position > 0
            and not math.isnan(since[position])
            and not math.isnan(since[position - 1])
            and since[position] > since[position - 1]
        )
        at = bisect.bisect_left(starts, iteration)
        if went_on:  # no restore: a repeated iteration is merged into its rows
            if at < len(starts) and starts[at] == iteration:
                groups[at].append(position)
            else:
                groups.insert(at, [position])
                starts.insert(at, iteration)
            continue
        del groups[at:], starts[at:]  # the run it left, from this iteration on
        groups.append([position])
        starts.append(iteration)
    kept = results.iloc[[group[-1] for group in groups]].reset_index(drop=True)
    replaced: set[str] = set()
    nan_names = REPORTED_NAN in results.columns
    for row, group in enumerate(groups):
        if len(group) == 1:
            continue
        # the values reported NaN: a NaN reported is a value, a NaN not reported none
        reported = set(kept.at[row, REPORTED_NAN]) if nan_names else set()
        for earlier in reversed(group[:-1]):  # the later reports' values first
            values = results.iloc[earlier]
            earlier_nan = values[REPORTED_NAN] if nan_names else frozenset()
            for column in results.columns:
                if column == REPORTED_NAN:
                    continue
                value, current = values[column], kept.at[row, column]
                value_given = not _missing(value) or column in earlier_nan
                if _missing(current) and column not in reported:
                    if value_given:
                        kept.at[row, column] = value
                        if column in earlier_nan:
                            reported.add(column)
                elif value_given and column not in _PER_REPORT and not _same(current, value):
                    replaced.add(column)
        if nan_names:
            kept.at[row, REPORTED_NAN] = frozenset(reported)
    if replaced:
        logger.warning(
            "Trial %s reported %s twice for one training_iteration without a restore: the "
            "later value is kept",
            trial_id or "?",
            sorted(replaced),
        )
    return kept


#: Tune's own keys, which every report holds anew
_PER_REPORT = frozenset(
    {
        "timestamp",
        "time_this_iter_s",
        "time_total_s",
        "time_since_restore",
        "iterations_since_restore",
        "date",
        "done",
        "should_checkpoint",
        "checkpoint_dir_name",
        "training_iteration",
        "trial_id",
        "pid",
        "hostname",
        "node_ip",
        "experiment_tag",
        "config",
    }
)


def _missing(value: Any) -> bool:
    """Whether a cell holds no value (None or NaN; a list or dict is a value)."""
    return bool(pd.api.types.is_scalar(value) and pd.isna(value))


def _same(a: Any, b: Any) -> bool:
    """Whether two reported values are one (NaN equals NaN)."""
    try:
        return bool(a == b) or bool(pd.isna(a) and pd.isna(b))
    except (TypeError, ValueError):
        return a is b


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() == "true"
    try:
        return bool(value) and not pd.isna(value)
    except (TypeError, ValueError):
        return False
