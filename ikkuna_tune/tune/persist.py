"""Getting a trial's files to the experiment's storage, where Tune does not do it reliably.

Two gaps in Tune 2.60 lose files a sweep wrote:

* A trial writes in its working directory (``tune.get_context().get_trial_dir()``), which Tune
  copies to storage only with ``SyncConfig(sync_artifacts=True)``; with ``reuse_actors=True`` a
  reused actor's trials lost their TensorBoard files. :class:`TrialUploader` copies the files
  ikkuna_tune writes there to the trial's directory in storage itself (at every report with a
  checkpoint and at the end of the trial).
* The driver keeps a trial's ``progress.csv`` and ``result.json`` in a staging directory and
  copies it to storage in the background. When a trial is restored after a failure, Tune first
  copies the storage copy back over the staging one: if the background copy was older, the
  reports made since are lost on disk. :func:`persist_trial_files` copies the staging files to
  storage first; :class:`~ikkuna_tune.SVCCAScheduler` calls it on every trial error and
  before a trial that reported resumes (a base scheduler paused it), and the callback
  :class:`~ikkuna_tune.PersistTrialFiles` does it for sweeps with any other scheduler.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ikkuna_tune.backends import EVENT_FILE_SUFFIX

__all__ = ["TrialUploader", "fetch_trial_file", "persist_trial_files", "read_results"]

logger = logging.getLogger(__name__)


def _copy_up(local_dir: str, names: list[str], filesystem: Any, remote_dir: str) -> None:
    import pyarrow.fs

    for folder in sorted({os.path.dirname(name) for name in names}):
        filesystem.create_dir(f"{remote_dir}/{folder}" if folder else remote_dir, recursive=True)
    for name in names:
        pyarrow.fs.copy_files(
            os.path.join(local_dir, name),
            f"{remote_dir}/{name}",
            destination_filesystem=filesystem,
        )


def _same_place(local_dir: str, filesystem: Any, remote_dir: str) -> bool:
    import pyarrow.fs

    if not isinstance(filesystem, pyarrow.fs.LocalFileSystem):
        return False
    return Path(local_dir).resolve() == Path(remote_dir).resolve()


def persist_trial_files(trial: Any) -> bool:
    """Copy the driver's files of ``trial`` (``progress.csv``, ``result.json``, ...) to storage.

    Runs on the driver. Returns True if files were copied.

    Examples:
        >>> import tempfile, pyarrow.fs
        >>> from types import SimpleNamespace as Stub  # stands in for a Tune trial
        >>> disk = pyarrow.fs.LocalFileSystem()
        >>> with tempfile.TemporaryDirectory() as local, tempfile.TemporaryDirectory() as stored:
        ...     _ = Path(local, "progress.csv").write_text("training_iteration")
        ...     storage = Stub(trial_fs_path=stored, storage_filesystem=disk)
        ...     copied = persist_trial_files(Stub(local_path=local, storage=storage))
        ...     copied, [path.name for path in Path(stored).iterdir()]
        (True, ['progress.csv'])
        >>> persist_trial_files(Stub())  # a trial without directories yet
        False
    """
    try:
        local_dir = trial.local_path
        storage = trial.storage
        remote_dir = storage.trial_fs_path
        filesystem = storage.storage_filesystem
    except Exception as error:  # Tune has not named the trial's directory yet
        logger.debug("Trial %s has no directories yet: %s", trial, error)
        return False
    if not local_dir or not os.path.isdir(local_dir):
        return False
    if _same_place(local_dir, filesystem, remote_dir):
        return False
    names = [e.name for e in os.scandir(local_dir) if e.is_file()]
    try:
        _copy_up(local_dir, names, filesystem, remote_dir)
    except Exception as error:  # storage unreachable: Tune's own copy is all there is
        logger.warning("Could not copy trial %s's files to %s: %s", trial, remote_dir, error)
        return False
    return True


def read_results(trial: Any) -> list[dict[str, Any]]:
    r"""The reports in the trial's ``result.json``, flattened as Tune hands them to a scheduler
    (``{"self_similarity": {"fc": 0.9}}`` becomes ``{"self_similarity/fc": 0.9}``): the
    driver's copy, else the one in storage (read, not copied: Tune brings it back itself when
    the trial starts). Bad lines are skipped; no file, or one that cannot be read, gives none.

    Examples:
        >>> import json, tempfile, pyarrow.fs
        >>> from types import SimpleNamespace as Stub  # stands in for a Tune trial
        >>> disk = pyarrow.fs.LocalFileSystem()
        >>> with tempfile.TemporaryDirectory() as local, tempfile.TemporaryDirectory() as stored:
        ...     row = {"training_iteration": 1, "frozen": {"fc": 0}}
        ...     _ = Path(stored, "result.json").write_text(json.dumps(row) + "\nnot json\n")
        ...     storage = Stub(trial_fs_path=stored, storage_filesystem=disk)
        ...     read_results(Stub(local_path=local, storage=storage))
        [{'training_iteration': 1, 'frozen/fc': 0}]
    """
    import json

    from ray.tune.utils import flatten_dict

    try:
        local = Path(trial.local_path, "result.json") if trial.local_path else None
        if local is not None and local.exists():
            text = local.read_text(encoding="utf-8")
        else:
            storage = trial.storage
            filesystem = storage.storage_filesystem
            with filesystem.open_input_stream(f"{storage.trial_fs_path}/result.json") as stream:
                text = stream.read().decode("utf-8")
    except Exception as error:  # no directory or file yet, or storage unreachable: no reports
        logger.debug("No stored reports of trial %s: %s", trial, error)
        return []
    results = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            results.append(flatten_dict(row, delimiter="/"))
    return results


def fetch_trial_file(trial: Any, name: str) -> Path | None:
    """The driver's copy of the trial file ``name``, fetched from storage if it has none.

    After ``Tuner.restore`` the driver's staging directory holds only the ``.json`` and
    ``.pkl`` files Tune brings back; a file the driver appends to (the scheduler's decisions)
    must be fetched first, or the next upload replaces the stored one with the new lines only.
    Returns the local path (None if the trial has no directory yet).

    Examples:
        >>> import tempfile, pyarrow.fs
        >>> from types import SimpleNamespace as Stub  # stands in for a Tune trial
        >>> disk = pyarrow.fs.LocalFileSystem()
        >>> with tempfile.TemporaryDirectory() as local, tempfile.TemporaryDirectory() as stored:
        ...     _ = Path(stored, "ikkuna_decisions.jsonl").write_text("{}")
        ...     storage = Stub(trial_fs_path=stored, storage_filesystem=disk)
        ...     trial = Stub(local_path=local, storage=storage)
        ...     path = fetch_trial_file(trial, "ikkuna_decisions.jsonl")  # fetched from storage
        ...     path.parent == Path(local), path.read_text()
        (True, '{}')
    """
    try:
        local_dir = trial.local_path
        storage = trial.storage
        remote = f"{storage.trial_fs_path}/{name}"
        filesystem = storage.storage_filesystem
    except Exception:  # Tune has not named the trial's directory yet
        return None
    if not local_dir:
        return None
    local = Path(local_dir) / name
    if local.exists() or _same_place(local_dir, filesystem, storage.trial_fs_path):
        return local
    try:
        import pyarrow.fs

        if filesystem.get_file_info(remote).type == pyarrow.fs.FileType.File:
            local.parent.mkdir(parents=True, exist_ok=True)
            pyarrow.fs.copy_files(remote, str(local), source_filesystem=filesystem)
    except Exception as error:  # storage unreachable: start a new file
        logger.warning("Could not fetch %s of trial %s from storage: %s", name, trial, error)
    return local


class TrialUploader:
    """Trial side: copies ikkuna_tune's event files in a local folder to the trial's storage
    (to its folder ``remote_subdir`` there, when given: :data:`~ikkuna_tune.backends.EVENT_DIR`
    for the folder ikkuna_tune chooses).

    Only files named ``events.out.tfevents*`` + :data:`~ikkuna_tune.backends.EVENT_FILE_SUFFIX`
    are copied, so the user's own files and Tune's are left to Tune; with ``only``, only those
    of them that ``only()`` names (the trial's own, in a folder other trials write to as well).

    Examples:
        >>> uploader = TrialUploader("trial_dir")  # outside a Tune trial: no storage to copy to
        >>> uploader.local_dir, uploader.upload()
        ('trial_dir', None)
    """

    def __init__(
        self,
        local_dir: str | Path,
        remote_subdir: str = "",
        only: Callable[[], Iterable[Path]] | None = None,
    ) -> None:
        self.local_dir = str(local_dir)
        self._only = only
        self._target: tuple[Any, str] | None = None
        try:
            from ray.train._internal.session import get_session

            storage = get_session().storage
            filesystem, remote_dir = storage.storage_filesystem, storage.trial_fs_path
        except Exception as error:  # not in a Tune trial: nothing to upload to
            logger.debug("No trial storage to upload to: %s", error)
            return
        if remote_subdir:
            remote_dir = f"{remote_dir}/{remote_subdir}"
        if not _same_place(self.local_dir, filesystem, remote_dir):
            self._target = (filesystem, remote_dir)

    def _ours(self) -> list[str]:
        """Our event files in the folder and its subfolders (the runs of attempts restored
        without ikkuna_tune's state), as paths relative to the folder."""
        names = []
        for folder, _, files in os.walk(self.local_dir):
            relative = os.path.relpath(folder, self.local_dir)
            names += [
                name if relative == os.curdir else os.path.join(relative, name)
                for name in files
                if name.startswith("events.out.tfevents") and name.endswith(EVENT_FILE_SUFFIX)
            ]
        if self._only is not None:
            own = {os.path.realpath(path) for path in self._only()}
            names = [n for n in names if os.path.realpath(os.path.join(self.local_dir, n)) in own]
        return sorted(names)

    def upload(self) -> None:
        """Copy the files to storage now (a warning, not an error, if storage fails)."""
        if self._target is None:
            return
        names = self._ours()
        if not names:
            return
        filesystem, remote_dir = self._target
        try:
            _copy_up(self.local_dir, names, filesystem, remote_dir)
        except Exception as error:
            logger.warning(
                "Could not copy %s to the trial's storage %s: %s", names, remote_dir, error
            )
