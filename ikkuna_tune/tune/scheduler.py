"""SVCCAScheduler: freeze converged layers of running trials, stop trials early."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from ikkuna_tune.tune.mailbox import Mailbox

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

__all__ = ["SVCCAScheduler"]

logger = logging.getLogger(__name__)


@dataclass
class _TrialView:
    """What the scheduler derives from one trial's reports (rebuilt from them after a restore)."""

    layers: list[str] = field(default_factory=list)
    frozen: set[str] = field(default_factory=set)
    pending: set[str] = field(default_factory=set)
    streak: dict[str, int] = field(default_factory=dict)
    unsettled: int = 0
    best: float | None = None
    since_best: int = 0
    reports: int = 0
    stopped: str | None = None


def _check_fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"Expected `{name}` to be a number in (0, 1] but got {value!r}")
    return float(value)


def _check_count(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Expected `{name}` to be an integer >= {minimum} but got {value!r}")
    return value


class SVCCAScheduler(FIFOScheduler):
    """A Tune scheduler that steers by each layer's SVCCA self-similarity.

    Trials report ``self_similarity/<layer>`` (from an SVCCA subscriber) and ``frozen/<layer>``
    (always, through :func:`ikkuna_tune.report`). The scheduler applies these rules to every result:

    1. **Freeze converged layers.** A layer whose self-similarity has been ``>= freeze_at`` for
       ``patience`` consecutive reports is frozen in the running trial. With
       ``input_side_first=True`` (the default) a layer is frozen only when every layer before it
       is frozen (or freezes in the same decision), because only a frozen prefix skips backward
       compute. The last trainable layer is never frozen. The directive reaches the trial
       through the experiment's mailbox right after the report that triggered it; the trial
       confirms it in its next report (``frozen/<layer> = 1``).
    2. **Stop converged trials.** A trial whose layers have all converged (every layer frozen or
       at ``>= freeze_at``) and whose metric has not improved by more than ``min_delta`` for
       ``stop_patience`` reports is stopped: more training would change nothing.
    3. **Stop unsettled trials.** A trial in which some layer's self-similarity stays below
       ``unsettled_below`` for ``unsettled_patience`` consecutive reports, after ``grace``
       reports, is stopped: its representation keeps churning (a learning rate too high, say),
       which precedes divergence. ``unsettled_below=None`` turns this rule off.
    4. **Metric-based early stopping among trials (optional).** With ``base=`` a Ray scheduler
       (e.g. ``ASHAScheduler()``), every result also goes to it and its STOP/PAUSE decisions are
       followed; it also chooses which trial runs next. Its metric and mode are set from this
       scheduler's.

    The scheduler keeps no state that only it knows: frozen layers come from the trials' own
    reports, so after a trial restore or ``Tuner.restore`` its view is rebuilt from the next
    reports (streak counts start again, which can only delay a decision).

    Args:
        metric: the metric to judge trials by; taken from Tune (``tune.run(metric=...)``) if None.
        mode: ``"max"`` or ``"min"``; taken from Tune if None.
        freeze_at: self-similarity at which a layer counts as converged, in (0, 1].
        patience: consecutive reports at or above ``freeze_at`` before a layer is frozen.
        input_side_first: freeze only a prefix of the network.
        stop_patience: reports without improvement before a converged trial is stopped.
        min_delta: improvement of the metric that counts.
        unsettled_below: self-similarity below which a layer counts as unsettled (None: off).
        unsettled_patience: consecutive unsettled reports before a trial is stopped.
        grace: reports before rules 2 and 3 may stop a trial.
        base: an optional Ray scheduler for metric-based early stopping.
        similarity_key: the reported per-layer metric to read.
    """

    _supports_buffered_results = False

    def __init__(
        self,
        metric: str | None = None,
        mode: str | None = None,
        freeze_at: float = 0.99,
        patience: int = 1,
        input_side_first: bool = True,
        stop_patience: int = 2,
        min_delta: float = 0.0,
        unsettled_below: float | None = None,
        unsettled_patience: int = 2,
        grace: int = 2,
        base: TrialScheduler | None = None,
        similarity_key: str = "self_similarity",
    ) -> None:
        super().__init__()
        if mode is not None and mode not in ("max", "min"):
            raise ValueError(f"Expected `mode` to be 'max' or 'min' but got {mode!r}")
        if metric is not None and (not isinstance(metric, str) or not metric):
            raise ValueError(f"Expected `metric` to be a metric name but got {metric!r}")
        self.freeze_at = _check_fraction("freeze_at", freeze_at)
        self.patience = _check_count("patience", patience)
        self.input_side_first = bool(input_side_first)
        self.stop_patience = _check_count("stop_patience", stop_patience)
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or min_delta < 0:
            raise ValueError(f"Expected `min_delta` to be a number >= 0 but got {min_delta!r}")
        self.min_delta = float(min_delta)
        self.unsettled_below = (
            None if unsettled_below is None else _check_fraction("unsettled_below", unsettled_below)
        )
        self.unsettled_patience = _check_count("unsettled_patience", unsettled_patience)
        self.grace = _check_count("grace", grace, minimum=0)
        if base is not None and not isinstance(base, TrialScheduler):
            raise ValueError(
                f"Expected `base` to be a ray.tune TrialScheduler but got {type(base).__name__}"
            )
        self.base = base
        if not isinstance(similarity_key, str) or not similarity_key:
            raise ValueError(f"Expected `similarity_key` to be a name but got {similarity_key!r}")
        self.similarity_key = similarity_key
        self._metric = metric
        self._mode = mode
        self._views: dict[str, _TrialView] = {}
        self._mailbox: Mailbox | None = None
        if base is not None and (metric or mode):
            self._pass_search_properties()

    # ------------------------------------------------------------ Tune hooks
    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        if (self._metric and metric) or (self._mode and mode):
            return False
        if metric:
            self._metric = metric
        if mode:
            if mode not in ("max", "min"):
                raise ValueError(f"Expected `mode` to be 'max' or 'min' but got {mode!r}")
            self._mode = mode
        if self.base is not None:
            self._pass_search_properties()
        return True

    def _pass_search_properties(self) -> None:
        assert self.base is not None
        base_metric = getattr(self.base, "_metric", None)
        base_mode = getattr(self.base, "_mode", None)
        self.base.set_search_properties(
            None if base_metric else self._metric, None if base_mode else self._mode
        )

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        if not self._metric or not self._mode:
            raise ValueError(
                "SVCCAScheduler needs a metric and a mode: pass SVCCAScheduler(metric=..., "
                "mode=...) or tune.run(..., metric=..., mode=...) / "
                f"TuneConfig(metric=..., mode=...); got metric={self._metric!r}, "
                f"mode={self._mode!r}"
            )
        if self._mailbox is None:
            self._mailbox = Mailbox(trial.experiment_dir_name)
        self._views.setdefault(trial.trial_id, _TrialView())
        if self.base is not None:
            self.base.on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        view = self._views.setdefault(trial.trial_id, _TrialView())
        decision = self._decide(trial.trial_id, view, result)
        if decision == TrialScheduler.STOP:
            return decision
        if self.base is not None:
            base_decision = self.base.on_trial_result(tune_controller, trial, result)
            if base_decision == TrialScheduler.STOP:
                view.stopped = f"{type(self.base).__name__} (metric)"
            return base_decision
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> None:
        if self._mailbox is not None:
            self._mailbox.discard(trial.trial_id)
        if self.base is not None:
            self.base.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        if self._mailbox is not None:
            self._mailbox.discard(trial.trial_id)
        if self.base is not None:
            self.base.on_trial_remove(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        view = self._views.get(trial.trial_id)
        if view is not None:
            view.pending.clear()  # the restored trial reports what it really has frozen
            view.streak.clear()
        if self.base is not None:
            self.base.on_trial_error(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        if self.base is not None:
            return self.base.choose_trial_to_run(tune_controller)
        return super().choose_trial_to_run(tune_controller)

    def debug_string(self) -> str:
        lines = [
            f"SVCCAScheduler: freeze_at={self.freeze_at}, patience={self.patience}, "
            f"{len(self._views)} trials"
        ]
        for trial_id, view in self._views.items():
            frozen = sorted(view.frozen | view.pending, key=_order(view.layers))
            state = f"stopped: {view.stopped}" if view.stopped else "running"
            lines.append(f"  {trial_id}: frozen {frozen or 'none'}; {state}")
        if self.base is not None:
            lines.append(self.base.debug_string())
        return "\n".join(lines)

    # ------------------------------------------------------------ decisions
    @property
    def frozen_layers(self) -> dict[str, list[str]]:
        """Per trial: the layers frozen or ordered frozen, in network order."""
        return {
            t: sorted(v.frozen | v.pending, key=_order(v.layers)) for t, v in self._views.items()
        }

    @property
    def stopped_trials(self) -> dict[str, str]:
        """Trials this scheduler stopped, with the rule that stopped each."""
        return {t: v.stopped for t, v in self._views.items() if v.stopped}

    def _decide(self, trial_id: str, view: _TrialView, result: dict[str, Any]) -> str:
        frozen_prefix = "frozen/"
        sim_prefix = self.similarity_key + "/"
        layers = [k[len(frozen_prefix) :] for k in result if k.startswith(frozen_prefix)]
        if not layers:
            return TrialScheduler.CONTINUE  # not an ikkuna_tune report
        view.layers = layers
        view.reports += 1
        reported_frozen = {name for name in layers if result.get(frozen_prefix + name)}
        view.pending -= reported_frozen
        view.frozen = reported_frozen
        similarity = {
            name: float(result[sim_prefix + name])
            for name in layers
            if isinstance(result.get(sim_prefix + name), (int, float))
        }
        for name in layers:
            value = similarity.get(name)
            if value is not None and value == value and value >= self.freeze_at:
                view.streak[name] = view.streak.get(name, 0) + 1
            elif value is not None:
                view.streak[name] = 0
        self._update_best(view, result)

        if self._freeze(trial_id, view):
            return TrialScheduler.CONTINUE
        if view.reports <= self.grace:
            return TrialScheduler.CONTINUE
        converged = all(
            name in view.frozen or view.streak.get(name, 0) >= self.patience for name in layers
        )
        if converged and view.since_best >= self.stop_patience:
            view.stopped = "converged"
            return TrialScheduler.STOP
        if self.unsettled_below is not None and similarity:
            if min(similarity.values()) < self.unsettled_below:
                view.unsettled += 1
            else:
                view.unsettled = 0
            if view.unsettled >= self.unsettled_patience:
                view.stopped = "unsettled"
                return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def _update_best(self, view: _TrialView, result: dict[str, Any]) -> None:
        value = result.get(self._metric) if self._metric else None
        if not isinstance(value, (int, float)) or value != value:
            return
        sign = 1.0 if self._mode == "max" else -1.0
        if view.best is None or sign * (value - view.best) > self.min_delta:
            view.best = float(value)
            view.since_best = 0
        else:
            view.since_best += 1

    def _freeze(self, trial_id: str, view: _TrialView) -> bool:
        """Post a directive for the layers to freeze now; True if one was posted."""
        done = view.frozen | view.pending
        trainable = [name for name in view.layers if name not in done]
        chosen: list[str] = []
        for name in view.layers:
            if name in done:
                continue
            ready = view.streak.get(name, 0) >= self.patience
            if ready and len(trainable) - len(chosen) > 1:
                chosen.append(name)
            elif self.input_side_first:
                break
        if not chosen:
            return False
        if self._mailbox is None:
            logger.warning("No mailbox for trial %s; cannot freeze %s", trial_id, chosen)
            return False
        self._mailbox.post(trial_id, {"freeze": chosen})
        view.pending.update(chosen)
        logger.info("Trial %s: freezing %s", trial_id, chosen)
        return True


def _order(layers: list[str]) -> Any:
    position = {name: i for i, name in enumerate(layers)}
    return lambda name: position.get(name, len(position))
