"""One Tune run, several schedulers: each trial is governed by the scheduler its config names.

A benchmark that compares schedulers would otherwise need one ``tune.run`` per scheduler, and on
a small machine each run pays for new trial processes (importing torch in a fresh process takes
seconds) and Tune's own start and finish, which dwarf a small sweep. :class:`RoutingScheduler`
runs every group in one experiment instead: ``config["scheduler"]`` names a trial's group, and
only that group's scheduler ever hears of the trial (``on_trial_add``, results, completion), so
ASHA's rungs and SVCCAScheduler's comparisons see exactly the trials they would see alone. What
the groups share is the machine: trials of all groups take turns on the same CPUs, which is why
a trial's compute is measured inside the trial (see ``experiments/bench_sweep.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

__all__ = ["GROUP_KEY", "RoutingScheduler"]

#: The config key that names a trial's scheduler group.
GROUP_KEY = "scheduler"


class RoutingScheduler(FIFOScheduler):
    """Hands each trial to the scheduler named by its ``config["scheduler"]``.

    Args:
        schedulers: group name -> a fresh Tune scheduler (metric and mode are passed on from
            ``tune.run``; give the schedulers none of their own).
        group: the config key that names the group, or a function ``config -> group name``.

    Trials run first come, first served (FIFO's choice) across groups, but a trial a group's
    scheduler paused resumes as soon as that scheduler, shown only its own group's trials,
    chooses it (SVCCAScheduler resumes a trial that waited to be compared ahead of the trials
    that wait to start; PBT, which copies trials into each other, is not supported). A trial
    whose config names no known group is an error when it is added.
    """

    _supports_buffered_results = False

    def __init__(
        self,
        schedulers: Mapping[str, TrialScheduler],
        group: str | Callable[[dict[str, Any]], Any] = GROUP_KEY,
    ) -> None:
        super().__init__()
        if not (isinstance(group, str) or callable(group)):
            raise ValueError(f"Expected `group` to be a config key or a function but got {group!r}")
        self._group = group
        if not schedulers:
            raise ValueError("Expected at least one scheduler group but got none")
        for name, scheduler in schedulers.items():
            if not isinstance(scheduler, TrialScheduler):
                raise ValueError(
                    f"Expected a Tune scheduler for group {name!r} but got "
                    f"{type(scheduler).__name__}"
                )
        self.schedulers = dict(schedulers)

    def _of(self, trial: Trial) -> TrialScheduler:
        config = trial.config
        group = config.get(self._group) if isinstance(self._group, str) else self._group(config)
        if group not in self.schedulers:
            raise ValueError(
                f"Expected trial {trial.trial_id}'s group to be one of {sorted(self.schedulers)} "
                f"but got {group!r}"
            )
        return self.schedulers[group]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        ok = super().set_search_properties(metric, mode, **spec)
        for scheduler in self.schedulers.values():
            ok = scheduler.set_search_properties(metric, mode, **spec) and ok
        return ok

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._of(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> None:
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._of(trial).on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        trials = tune_controller.get_trials()
        asked: set[int] = set()
        for trial in trials:
            group = self._of(trial)
            if trial.status != Trial.PAUSED or id(group) in asked:
                continue
            # a paused trial its group's scheduler resumes now, as it would in a sweep of its
            # own group (SVCCAScheduler: a trial that waited to be compared, ahead of the
            # trials that wait to start, best first; any scheduler: when none of its group
            # waits); each group is asked once (its choice readies the trial it resumes)
            asked.add(id(group))
            own = _GroupTrials(tune_controller, [t for t in trials if self._of(t) is group])
            chosen = group.choose_trial_to_run(own)
            if chosen is not None and chosen.status == Trial.PAUSED:
                return chosen
        return super().choose_trial_to_run(tune_controller)

    def debug_string(self) -> str:
        return "\n".join(f"[{name}] {s.debug_string()}" for name, s in self.schedulers.items())


class _GroupTrials:
    """Tune's controller as one group's scheduler would see it in a sweep of its own: only
    that group's trials."""

    def __init__(self, controller: Any, trials: list[Trial]) -> None:
        self._controller = controller
        self._trials = trials

    def get_trials(self) -> list[Trial]:
        return list(self._trials)

    def get_live_trials(self) -> list[Trial]:
        return [t for t in self._trials if t.status not in (Trial.TERMINATED, Trial.ERROR)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._controller, name)
