"""Tune callbacks that ikkuna_tune offers to sweeps run without its scheduler."""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

from ikkuna_tune.tune.persist import persist_trial_files

__all__ = ["PersistTrialFiles"]


class PersistTrialFiles(Callback):
    """Keeps a restored trial's earlier reports on disk.

    When a trial starts again (restored after a failure, or resumed after a scheduler paused
    it), Tune copies the trial's ``progress.csv`` and ``result.json`` back from storage, where
    its background copy can be older than the reports the trial made: those reports would be
    lost. This callback copies the driver's files to storage first
    (:func:`~ikkuna_tune.tune.persist.persist_trial_files`; Tune runs it before its own loggers,
    which come after the callbacks passed to it). Pass it as
    ``tune.run(..., callbacks=[PersistTrialFiles()])`` or in ``RunConfig(callbacks=...)`` when
    the sweep does not use :class:`~ikkuna_tune.SVCCAScheduler`, which does the same itself.

    Examples:
        >>> from ray import tune
        >>> callback = PersistTrialFiles()
        >>> isinstance(callback, tune.Callback)
        True
        >>> tune.RunConfig(callbacks=[callback]).callbacks == [callback]
        True
    """

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        if trial.last_result:  # it reported before: resumed, not new
            persist_trial_files(trial)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        persist_trial_files(trial)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        persist_trial_files(trial)
