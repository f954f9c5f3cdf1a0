"""SVCCAScheduler's log of decisions: one JSON object a line in ``ikkuna_decisions.jsonl`` in
each trial's directory, appended as decisions are made and read back by a driver that takes
over after ``Tuner.restore``. (:mod:`ikkuna_tune.compare` reads the same files for reports.)"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ikkuna_tune import keys
from ikkuna_tune.tune.convergence import Decision
from ikkuna_tune.tune.persist import fetch_trial_file

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

__all__ = ["DECISIONS_FILE", "append_decision", "read_decisions", "trial_dir"]

logger = logging.getLogger(__name__)

#: Where the decisions go in each trial's directory.
DECISIONS_FILE = keys.DECISIONS_FILE


def trial_dir(trial: Trial | None) -> Path | None:
    """The trial's directory on this machine, once Tune has made it.

    Examples:
        >>> from types import SimpleNamespace
        >>> str(trial_dir(SimpleNamespace(local_path="."))), trial_dir(SimpleNamespace())
        ('.', None)
    """
    try:
        path = getattr(trial, "local_path", None) if trial is not None else None
    except RuntimeError:  # Tune has not named the trial's directory yet
        return None
    return Path(path) if isinstance(path, str) and Path(path).is_dir() else None


def append_decision(trial: Trial | None, trial_id: str, decision: Decision) -> None:
    """Add ``decision`` to the trial's log, once it has a directory; the stored lines are
    fetched first, so that they are appended to and never replaced. A log that cannot be
    written is named in a warning.

    Examples:
        >>> import tempfile
        >>> from types import SimpleNamespace
        >>> import pyarrow.fs
        >>> with tempfile.TemporaryDirectory() as directory:
        ...     storage = SimpleNamespace(
        ...         trial_fs_path=directory, storage_filesystem=pyarrow.fs.LocalFileSystem()
        ...     )
        ...     trial = SimpleNamespace(local_path=directory, storage=storage)
        ...     append_decision(trial, "t1", Decision("freeze", "converged", 4, "conv1"))
        ...     append_decision(trial, "t1", Decision("stop", "stuck", 6))
        ...     [(d.action, d.layer, d.iteration) for d in read_decisions(trial)]
        [('freeze', 'conv1', 4), ('stop', None, 6)]
    """
    directory = trial_dir(trial)
    if directory is None:
        return
    fetch_trial_file(trial, DECISIONS_FILE)  # append to the stored lines, never replace them
    try:
        with open(directory / DECISIONS_FILE, "a", encoding="utf-8") as out:
            out.write(json.dumps({"trial_id": trial_id, **decision.as_dict()}) + "\n")
    except OSError as error:
        logger.warning("Could not write %s in %s: %s", DECISIONS_FILE, directory, error)


def read_decisions(trial: Trial, trial_id: str | None = None) -> list[Decision]:
    """The decisions in the trial's log (fetched from storage if the driver has no copy), in
    order; bad lines are skipped and an unreadable log counts as empty, each with a warning.
    With ``trial_id``, the lines logged for another trial are left out (Tune restarts an
    errored trial under a new id in the old one's directory, ``restart_errored``).

    Examples:
        >>> from types import SimpleNamespace
        >>> read_decisions(SimpleNamespace(local_path=None, storage=None))  # no directory yet
        []

        :func:`append_decision` shows a log written and read back.
    """
    path = fetch_trial_file(trial, DECISIONS_FILE)
    if path is None or not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        logger.warning("Could not read %s: %s", path, error)
        return []
    decisions = []
    for line in lines:
        try:
            entry = json.loads(line)
            if trial_id is not None and entry.get("trial_id", trial_id) != trial_id:
                continue
            decision = Decision(
                str(entry["action"]),
                str(entry["rule"]),
                int(entry["iteration"]),
                entry.get("layer"),
                dict(entry.get("values") or {}),
            )
        except (ValueError, KeyError, TypeError) as error:
            logger.warning("Skipping a bad line of %s: %s", path, error)
            continue
        decisions.append(decision)
    return decisions
