"""SVCCAScheduler: freeze converged layers of running trials, stop trials early."""

from __future__ import annotations

import difflib
import logging
import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ray.tune.result import SHOULD_CHECKPOINT
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.utils import flatten_dict

from ikkuna_tune import keys
from ikkuna_tune.checks import (
    check_bool,
    check_factor_or_none,
    check_int,
    check_positive,
)
from ikkuna_tune.tune.convergence import (
    ConvergenceRules,
    Decision,
    among_best,
    divergence,
    earlier_phase,
    freeze_candidates,
    in_units,
    metric_scale_from,
    others_best_so_far,
    parse_reason,
    stop_verdict,
)
from ikkuna_tune.tune.decision_log import (
    DECISIONS_FILE,
    append_decision,
    read_decisions,
)
from ikkuna_tune.tune.mailbox import Mailbox, mailbox_name
from ikkuna_tune.tune.persist import persist_trial_files, read_results
from ikkuna_tune.tune.results import (
    first_nonfinite,
    is_number,
    iteration_budget,
    layer_values,
    network_nonfinite,
    reported_layers,
)
from ikkuna_tune.tune.trial_view import TrialView

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

__all__ = ["DECISIONS_FILE", "SVCCAScheduler"]

logger = logging.getLogger(__name__)


def _copies_checkpoints(scheduler: object) -> bool:
    """Whether ``scheduler`` is population-based training (or PB2), which replaces a trial's
    model with another trial's checkpoint, or wraps one (``ResourceChangingScheduler``).

    Examples:
        >>> from ray.tune.schedulers import PopulationBasedTraining, ResourceChangingScheduler
        >>> pbt = PopulationBasedTraining(hyperparam_mutations={"lr": [0.1, 0.01]})
        >>> _copies_checkpoints(ResourceChangingScheduler(pbt))
        True
    """
    from ray.tune.schedulers import PopulationBasedTraining

    return any(isinstance(s, PopulationBasedTraining) for s in _wrapped_chain(scheduler))


def _wrapped_chain(scheduler: object) -> list[object]:
    """``scheduler`` and the schedulers it wraps (``ResourceChangingScheduler``'s base), outer
    first."""
    chain: list[object] = []
    while scheduler is not None and all(scheduler is not s for s in chain):
        chain.append(scheduler)
        scheduler = getattr(scheduler, "_base_scheduler", None)
    return chain


#: values of a decision that are the metric itself (signed by the rules; see _in_metric_units)
_METRIC_VALUES = frozenset({"best", "recent_best", "reachable", "target", "chance"})
#: rules that read no threshold in the metric's units
_SCALE_FREE_RULES = frozenset(
    {"diverged: non-finite value", "dead layer", "stuck: accuracy at chance and no layer moving"}
)


def _check_base_mode(base: TrialScheduler, metric: str | None, mode: str | None) -> None:
    """Refuse a base scheduler (or one it wraps) that ranks the same metric the other way."""
    for scheduler in _wrapped_chain(base):
        base_metric = getattr(scheduler, "_metric", None)
        base_mode = getattr(scheduler, "_mode", None)
        same_metric = not base_metric or base_metric == metric
        if mode and base_mode and base_mode != mode and same_metric:
            raise ValueError(
                f"Expected `base` ({type(scheduler).__name__}) to rank {metric!r} as "
                f"SVCCAScheduler does (mode={mode!r}) but it has mode={base_mode!r}: it would "
                "stop the best trials. Give the mode once (to SVCCAScheduler or to Tune) and "
                "leave the base's unset"
            )


#: Tune's keys of one result alone, never carried from one result into the next
_OWN_RESULT_KEYS = frozenset(
    {
        "done",
        "should_checkpoint",
        "checkpoint_dir_name",
        "time_this_iter_s",
        "timestamp",
        "date",
        keys.TRAIN_REPORT,
    }
)


def _starting(tune_controller: Any, trial: Trial) -> bool:
    """Whether Tune has started ``trial``'s actor (its resources acquired) though the trial is
    still PENDING: the actor's start takes a while (imports, a loaded machine). Read from the
    controller's actor bookkeeping (Ray 2.60's ``TuneController._trial_to_actor`` and its actor
    manager); False where that cannot be read."""
    inner = getattr(tune_controller, "_tune_controller", tune_controller)
    actors, manager = (
        getattr(inner, "_trial_to_actor", None),
        getattr(inner, "_actor_manager", None),
    )
    if not isinstance(actors, dict) or manager is None:
        return False
    actor = actors.get(trial)
    try:
        return actor is not None and bool(manager.is_actor_started(actor))
    except Exception:  # (an actor the manager no longer tracks)
        return False


def _merged_repeat(view: TrialView, result: dict[str, Any]) -> dict[str, Any]:
    """``result``, merged over the trial's result before when it repeats that result's
    ``training_iteration`` within one run (Tune's ``iterations_since_restore`` went on: no
    restore; a trainable that sets ``training_iteration`` itself and reports twice in an
    epoch, its training loss, then its validation accuracy), its own values first; sets
    ``view.repeat``. A repeat after a restore (``iterations_since_restore`` starts again) is
    left to the rules of a restore. Taken for one report, the two are judged as one: taken
    for a restore, the second dropped the first, and a loss reported finite before went
    non-finite unnoticed (a loss's finite record starts again at a restore)."""
    previous = view.last_result
    view.repeat = False
    since, iteration = result.get("iterations_since_restore"), result.get("training_iteration")
    before = None if previous is None else previous.get("iterations_since_restore")
    if (
        previous is not None
        and is_number(since)
        and is_number(before)
        and is_number(iteration)
        and since > before  # type: ignore[operator]
        and previous.get("training_iteration") == iteration
    ):
        view.repeat = True
        carried = {k: v for k, v in previous.items() if k not in _OWN_RESULT_KEYS}
        result = {**carried, **result}
    view.last_result = result
    return result


def _measured(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` without the keys a report did not measure (``None``, see docs/reports.md),
    for a base scheduler: Tune's compare values by arithmetic and fail on ``None``, while a key
    that is missing makes them leave that report unjudged (ASHA, HyperBand, the median rule).

    Examples:
        >>> _measured({"training_iteration": 2, "test_accuracy": None, "loss": 0.5})
        {'training_iteration': 2, 'loss': 0.5}
    """
    if not isinstance(result, dict):
        return result
    return {key: value for key, value in result.items() if value is not None}


#: Reports after which a similarity reported only as None from every trial is named in a warning
#: (a subscriber measuring once an epoch, with several reports an epoch, gives its first value
#: after as many reports: this many leaves room for most)
_NO_VALUE_REPORTS = 20


class SVCCAScheduler(FIFOScheduler):
    """A Tune scheduler that freezes converged layers and stops lost trials, never the best.

    Trials report, through :func:`ikkuna_tune.report` and an SVCCA subscriber, per layer
    ``self_similarity`` (SVCCA to the last checkpoint), ``init_similarity`` (linear CKA to
    initialisation), ``live_fraction`` and ``frozen``. The decisions are pure functions of each
    trial's history (:mod:`ikkuna_tune.tune.convergence`, where the rules are spelled out):

    1. **Freeze** (input side first, never the last trainable layer; by default never in a trial
       that may still end among the ``protect_top`` best, whose final value freezing could move
       enough to reorder near-tied best configurations: fewer than ``protect_top`` others are
       ahead of its best so far by more than its metric still swings from report to report,
       each at its best over as many reports as the trial has made,
       :func:`~ikkuna_tune.tune.convergence.among_best`): a layer that is similar to
       its last checkpoint (``freeze_at``, ``patience``), has come ``min_travel`` from its
       initialisation and stopped going further (``settle_window``, ``settle_tol``), and is
       alive, once the trial's metric has stopped improving (``plateau``, ``min_delta``: neither
       its best nor its mean over recent reports still rises, nor its best over the last
       ``2 * plateau + 2`` reports, which sees a slow climb after a learning-rate drop). A slow,
       dead or widening layer, and every layer of a trial that still learns, stays trainable.
       The directive reaches the trial through the experiment's mailbox right after the report
       that triggered it; the trial confirms it in its next report (``frozen/<layer> = 1``).
       A freeze holds for the learning rate it was judged at: the trial unfreezes the layer
       once that rate moves by ``unfreeze_lr_factor`` (it reports ``unfreeze_reason/<layer>``;
       the layer is judged again on the reports after it), and a trial whose rate has not
       decayed (``lr_scale`` above one half) is not frozen while a trial that had decayed its
       own by as many reports stands ahead of it
       (:func:`~ikkuna_tune.tune.convergence.earlier_phase`: a swept schedule's late dropper).
    2. **Stop** (``stop=True``): a diverged trial (a NaN or infinite metric or weight norm,
       every layer signal of a report NaN; a non-finite loss or one layer's similarity where
       the metric measured at that report does not stand where it learned:
       :func:`~ikkuna_tune.tune.convergence.divergence`) and a trial with a dead layer at
       once; after ``grace`` reports a trial that made no
       progress (``stall_delta``) while no layer moves any more (``move_tol``; where a chance
       level is reported as ``<metric>_chance``, as TestAccuracySubscriber reports
       ``test_accuracy_chance``, only a trial at chance; steered on a metric without a chance
       level, a loss, also one whose accuracy reported beside it with its ``_chance`` (a key
       with ``acc`` in its name) made no progress and sits at chance:
       :func:`~ikkuna_tune.tune.convergence.accuracy_at_chance`), unless it may still end
       among the
       best (as for freezing, with ``protect_top`` others to rank it among) and leads while
       others learn, or is clearly ahead of some other trial; and, when the budget is known
       (``max_t``, Tune's ``stop={"training_iteration": N}`` or a
       ``MaximumIterationStopper``), after ``stall_share`` of it: a trial that made no
       progress and is more than ``stall_delta`` behind the ``protect_top``-th best level
       other trials held after as many reports (stuck while its layers still drift); and a
       trial that cannot reach the ``protect_top``-th best value where the other trials stand
       (each at its latest value; a trial that collapsed, or was stopped as diverged, is no
       bar) even at ``optimism`` times its best recent rate of improvement, judged so at two of its
       values in a row (once it has a rate: a trial that has not yet gained a tenth of its way
       to that value waits for ``stall_share`` of the budget, one flat where it started is
       left to the stuck rules, and the gains of one whose latest gain is its largest yet are
       taken to keep growing as they last grew). A trial is never stopped on its level alone
       with no other trial to compare it with (rule 3 makes it wait for them).
       Converged trials that are among the best are never stopped: freezing is what saves their
       compute.
    3. **Wait to be compared** (``wait=True``, with ``stop`` and no ``base``): the rules that
       compare a trial with the others cannot judge one that started first: at ``stall_share``
       of its budget no other trial has got as far, and a late starter at chance looks like a
       stuck trial. Such a trial (fewer than ``protect_top`` others have made as many reports)
       that reports a checkpoint with that report, while trials of the sweep still wait to
       start, is paused there once (``PAUSE``, as Ray's ``MedianStoppingRule`` pauses a trial
       too few others can be compared with); it resumes from that checkpoint, ahead of the
       trials that wait to start, once ``protect_top`` other trials have ended (run their
       budget, been stopped, or failed for good), or when no trial waits to start (of several
       such trials the one with the best metric so far first, where Tune would resume them in
       the order they were added: those behind are then compared with where it got to), and
       is judged from then on like the others. Trials run with ``max_concurrent_trials`` no
       larger than the trials the cluster runs at once never wait: Tune creates no trial
       beyond the limit, so none waits to start. A trial that reports no checkpoint is never
       paused (it would start again from scratch), nor a trial of a sweep with a time budget
       (``time_budget_s``: the sweep could end before it resumes). What the trial's
       training does after it resumes must not depend on the pause: its checkpoint holds the
       model, the optimizer, the schedules, the random state of its data order and torch's
       own (``torch.get_rng_state()``: dropout draws from it).
    4. With ``base=`` a Ray scheduler (e.g. ``ASHAScheduler()``), every result also goes to it
       and its STOP/PAUSE decisions are followed; it also chooses which trial runs next.

    Every decision is logged with its rule and values, listed by :meth:`debug_string` and
    :attr:`decisions`, sent to the trial with a freeze (the trial reports it under
    ``freeze_reason/<layer>``), and written as JSON lines to ``ikkuna_decisions.jsonl`` in the
    trial's directory (``ikkuna-tune compare`` shows them). The scheduler keeps no state that
    only it knows: frozen layers come from the trials' own reports, so after a trial restore or
    ``Tuner.restore`` its view is rebuilt from the next reports (which can only delay a
    decision).

    Args:
        metric: the metric to judge trials by; taken from Tune (``tune.run(metric=...)``) if None.
        mode: ``"max"`` or ``"min"``; taken from Tune if None.
        freeze_at: SVCCA self-similarity at which a layer counts as settled, in (0, 1].
        patience: consecutive reports at or above ``freeze_at``.
        min_travel: CKA distance from initialisation (1 - ``init_similarity``) a layer must
            have covered before it may freeze.
        settle_window: reports over which that distance must have stayed steady.
        settle_tol: how much it may vary over them, as a fraction of the distance.
        plateau: reports without an improvement above ``min_delta`` before anything freezes
            (and the metric's mean over its last ``plateau + 1`` values no more than
            ``min_delta`` above its mean over the ``plateau + 1`` before; nothing freezes
            before twice that many values; and, once there are more than ``2 * plateau + 2``
            reports, no improvement above ``min_delta`` over that many either: a slow climb
            after a learning-rate drop). ``0``: the metric is not asked (the layers' own
            signals alone decide; a trial at chance is still not frozen).
        min_delta: improvement of the metric that counts, in units of ``metric_scale``.
        input_side_first: freeze only a prefix of the network.
        stop: stop trials (False: freezing only).
        wait: pause a trial that too few others can be compared with, at ``stall_share`` of
            its budget, while trials wait to start (rule 3; only a trial that reports a
            checkpoint, only with ``stop`` and without ``base``); it resumes once
            ``protect_top`` others have ended, or when no trial waits to start.
        freeze: freeze layers (False: stopping only, nothing is ordered frozen, also after a
            restore of a run that froze; layers a trial's checkpoint holds frozen stay so; for
            a sweep whose trials change their learning rate at different times, see the
            README's limits of freezing).
        grace: reports before a trial may be stopped as stuck or behind.
        stall_delta: progress since the first report below which a trial counts as stuck, in
            units of ``metric_scale``.
        stall_share: share of a known budget after which a stuck trial that is behind the
            others is stopped even though its layers still move, in (0, 1].
        move_tol: change of a layer's distance from initialisation over ``settle_window``
            reports below which the layer no longer moves.
        protect_top: how many of the best trials so far are protected from being stopped as
            behind and (unless ``freeze_best``) from freezing.
        freeze_best: freeze layers in the ``protect_top`` best trials too (off by default:
            freezing a layer perturbs the rest of a trial's training, by about a point of
            accuracy in the fidelity sweeps, which can change which configuration wins; a sweep
            of at most ``protect_top`` trials, or a single trial, needs it to freeze at all).
        optimism: how much faster than its best recent rate a trial is assumed to improve.
        unfreeze_lr_factor: a trial unfreezes a layer this scheduler froze once a learning rate
            of the layer's parameters has moved by this factor or more, either way, from the
            one the layer was judged at (a step decay, a reduction on a plateau, a warm
            restart: the layer may learn again at the new rate); the scheduler logs the
            unfreeze and judges the layer again on the reports after it. None: a freeze holds
            to the end whatever the learning rate does.
        max_t: the trials' budget in reports; by default Tune's stopping criterion on
            ``training_iteration`` (``stop={"training_iteration": N}``, or a
            ``MaximumIterationStopper``), if any (else trials are never stopped as behind).
        base: an optional Ray scheduler for metric-based early stopping.
        similarity_key: the reported per-layer SVCCA similarity to read.
        metric_scale: what an accuracy of 1 is in the metric's units: ``min_delta``,
            ``stall_delta`` and the 0.05 within which a trial near the top is never judged by
            its rate (``reach_within``) are multiplied by it (:meth:`metric_rules`). None (the
            default): inferred from the trials' reports so far
            (:func:`~ikkuna_tune.tune.convergence.metric_scale_of`): 1 for an accuracy as a
            fraction, 100 for one in percent (whose decisions are then those on the
            fraction, its ``<metric>_chance`` reported in percent too; a chance level above 1
            says percent however close the trials' values lie), 0.1 for a mean squared
            error that starts near 0.05, never above 1 otherwise (a cross-entropy, a reward).
            Give it for a metric whose values say nothing of its range (an error rate in
            [0, 1] steered with ``mode="min"`` reads as a loss: pass 1).

    Examples:
        >>> scheduler = SVCCAScheduler(metric="test_accuracy", mode="max", stop=False)
        >>> scheduler.rules.freeze_at, scheduler.stop, scheduler.decisions
        (0.99, False, [])
        >>> SVCCAScheduler(freeze_at=1.5)
        Traceback (most recent call last):
        ...
        ValueError: Expected `freeze_at` to be a number in (0, 1] but got 1.5
    """

    _supports_buffered_results = False

    def __init__(
        self,
        metric: str | None = None,
        mode: str | None = None,
        freeze_at: float = 0.99,
        patience: int = 2,
        min_travel: float = 0.02,
        settle_window: int = 3,
        settle_tol: float = 0.2,
        plateau: int = 2,
        min_delta: float = 0.005,
        input_side_first: bool = True,
        stop: bool = True,
        wait: bool = True,
        freeze: bool = True,
        grace: int = 2,
        stall_delta: float = 0.02,
        stall_share: float = 1 / 3,
        move_tol: float = 0.005,
        protect_top: int = 3,
        freeze_best: bool = False,
        optimism: float = 3.0,
        unfreeze_lr_factor: float | None = 2.0,
        max_t: int | None = None,
        base: TrialScheduler | None = None,
        similarity_key: str = keys.SELF_SIMILARITY,
        metric_scale: float | None = None,
    ) -> None:
        super().__init__()
        if mode is not None and mode not in ("max", "min"):
            raise ValueError(f"Expected `mode` to be 'max' or 'min' but got {mode!r}")
        if metric is not None and (not isinstance(metric, str) or not metric):
            raise ValueError(f"Expected `metric` to be a metric name but got {metric!r}")
        self.metric_scale = (
            None if metric_scale is None else check_positive("metric_scale", metric_scale)
        )
        #: the thresholds as given, for an accuracy in [0, 1] (:meth:`metric_rules`: in the
        #: metric's units)
        self.rules = ConvergenceRules(  # (which checks each threshold)
            freeze_at=freeze_at,
            patience=patience,
            min_travel=min_travel,
            settle_window=settle_window,
            settle_tol=settle_tol,
            plateau=plateau,
            min_delta=min_delta,
            stall_delta=stall_delta,
            move_tol=move_tol,
            optimism=optimism,
            protect_top=protect_top,
            grace=grace,
            stall_share=stall_share,
        )
        self._scaled = (1.0, self.rules)  # the rules in the metric's units, at their scale
        self.freeze_at = self.rules.freeze_at
        self.patience = self.rules.patience
        self.input_side_first = check_bool("input_side_first", input_side_first)
        self.stop = check_bool("stop", stop)
        self.wait = check_bool("wait", wait)
        self.freeze = check_bool("freeze", freeze)
        self.freeze_best = check_bool("freeze_best", freeze_best)
        self.unfreeze_lr_factor = check_factor_or_none("unfreeze_lr_factor", unfreeze_lr_factor)
        self.max_t = None if max_t is None else check_int("max_t", max_t)
        self._told_no_budget = False
        if base is not None and not isinstance(base, TrialScheduler):
            raise ValueError(
                f"Expected `base` to be a ray.tune TrialScheduler but got {type(base).__name__}"
            )
        if _copies_checkpoints(base):
            copier = [s for s in _wrapped_chain(base) if _copies_checkpoints(s)][-1]
            inside = "" if copier is base else f" (inside {type(base).__name__})"
            raise ValueError(
                f"Expected a `base` that stops or pauses trials (ASHA, HyperBand, "
                f"MedianStoppingRule) but got {type(copier).__name__}{inside}, which copies "
                "one trial's checkpoint into another: freezes judged on the model it replaces "
                "would be applied to the copy. Run population-based training without "
                "SVCCAScheduler (with callbacks=[ik.PersistTrialFiles()], so that no trial's "
                "reports are lost when PBT restarts it)"
            )
        if any(isinstance(s, SVCCAScheduler) for s in _wrapped_chain(base)):
            raise ValueError(
                "Expected a `base` that is one of Ray's schedulers (ASHA, HyperBand, "
                "MedianStoppingRule) but got an SVCCAScheduler inside this one: two would "
                "judge and order the same trials twice; use one, with its base"
            )
        self.base = base
        if not isinstance(similarity_key, str) or not similarity_key:
            raise ValueError(f"Expected `similarity_key` to be a name but got {similarity_key!r}")
        self.similarity_key = similarity_key
        self._metric = metric
        self._mode = mode
        self._views: dict[str, TrialView] = {}
        self._trials: dict[str, Trial] = {}
        self._mailbox: Mailbox | None = None
        self._warned_no_similarity = False
        #: whether any trial has reported a similarity value (not None) yet
        self._similarity_seen = False
        self._warned_no_metric = False
        self._warned_not_ikkuna = False
        #: every decision taken, in order: (trial id, decision)
        self.decisions: list[tuple[str, Decision]] = []
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
        _check_base_mode(self.base, self._metric, self._mode)
        base_metric = getattr(self.base, "_metric", None)
        base_mode = getattr(self.base, "_mode", None)
        self.base.set_search_properties(
            None if base_metric else self._metric, None if base_mode else self._mode
        )

    def _of_another_run(self, tune_controller: Any, trial: Trial) -> bool:
        """Whether ``trial`` is the first of another ``tune.run`` or ``Tuner`` run than the
        trials steered so far, with the same experiment name: none of those is the
        controller's. That is a notebook cell run again with the scheduler of an earlier cell,
        or the same run resumed (``tune.run(resume=...)``), whose trials are new objects and
        whose first may have a new id (an errored trial restarted, re-added first): the two
        cannot be told apart here (see :meth:`_forget_trials`). A trial seen before is the
        same run resumed."""
        if not self._trials or trial.trial_id in self._trials:
            return False
        get_trials = getattr(tune_controller, "get_trials", None)
        if get_trials is None:
            return False
        current = {id(t) for t in get_trials()}
        if id(trial) not in current:
            return False  # (a controller that does not list the trial it adds tells nothing)
        return not any(id(t) in current for t in self._trials.values())

    def _forget_trials(self, experiment: str) -> None:
        """Forget the trials steered so far, and their decisions: a new run of ``experiment``
        began (:meth:`_of_another_run`). A new run's trials are then judged among themselves
        (judged among the earlier run's finished trials, a new one was stopped as "stuck while
        others learned"); a resumed run's trials are taken up again from their own files as
        Tune re-adds them, as after ``Tuner.restore`` (:meth:`_recall`)."""
        logger.info(
            "SVCCAScheduler steers a new run of %r (none of the %d trials it steered is in it): "
            "it forgets them; the trials of a resumed run are taken up from their files as "
            "they are added again",
            experiment,
            len(self._trials),
        )
        self._trials.clear()
        self._views.clear()
        self.decisions.clear()

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
        elif self._mailbox.name != mailbox_name(trial.experiment_dir_name):
            raise ValueError(
                "Expected a new SVCCAScheduler for each experiment but got one that steered "
                f"another experiment already (trial {trial.trial_id} is of "
                f"{trial.experiment_dir_name!r}): it would rank the new trials among the "
                "other experiment's, and its mailbox is that experiment's, so no freeze would "
                "reach them. Create a new SVCCAScheduler for each tune.run or Tuner"
            )
        elif self._of_another_run(tune_controller, trial):
            self._forget_trials(trial.experiment_dir_name)
        self._mailbox.steer(trial.trial_id)  # (its reports are acknowledged, see Mailbox)
        self._trials[trial.trial_id] = trial
        view = self._views.get(trial.trial_id)
        if view is None:
            view = self._views[trial.trial_id] = self._new_view()
            self._recall(trial, view)
        view.budget = self.max_t or iteration_budget(trial, _stopper_of(tune_controller))
        if view.budget is None and self.stop and not self._told_no_budget:
            self._told_no_budget = True
            logger.warning(
                "SVCCAScheduler found no budget for trial %s (neither max_t, nor "
                "stop={'training_iteration': N}, nor a MaximumIterationStopper), so it stops "
                "no trial as stuck or behind or unable to reach the best (only diverged "
                "trials and dead layers); pass max_t= to enable those rules",
                trial.trial_id,
            )
        if self.base is not None:
            self.base.on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        try:
            return self._on_result(tune_controller, trial, result)
        finally:  # a Ray Train job's rank 0 waits for this before it reads its directives
            self._acknowledge(trial.trial_id, result)

    def _acknowledge(self, trial_id: str, result: dict[str, Any]) -> None:
        report = result.get(keys.TRAIN_REPORT) if isinstance(result, dict) else None
        if isinstance(report, str) and self._mailbox is not None:
            self._mailbox.acknowledge(trial_id, report)

    def _on_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        view = self._views.get(trial.trial_id)
        if view is None:
            view = self._views[trial.trial_id] = self._new_view()
        result = _merged_repeat(view, result)
        report, iteration = result.get(keys.TRAIN_REPORT), result.get("training_iteration")
        if isinstance(report, str) and is_number(iteration) and not view.repeat:
            if view.last_iteration is not None and int(iteration) <= view.last_iteration:
                # a Tune restore (_observe rewinds the history): the reports are numbered
                # anew, so the Ray Train job is followed anew from here (Tune restarts such a
                # trial from its first iteration: TuneReportCallback hands Tune no checkpoint)
                view.train_attempt = None
                view.train_reports.clear()
                # the checkpoint it resumed from is where the renumbered reports start: a
                # worker restart from it later goes back to before report 1
                resumed = report.partition("@")[2]
                if resumed and resumed != "?":
                    view.train_reports[resumed] = 0
            view.follow_train_restart(
                trial.trial_id, report, int(iteration), self._mailbox, reorder=self.freeze
            )
        decision = self._decide(trial.trial_id, view, result)
        if decision == TrialScheduler.STOP:
            # the base is not told: Tune hands the trial's last result to on_trial_complete,
            # which passes it on (ASHA records it in its rungs there, a median rule in its
            # history; a synchronous HyperBand told here would count the trial among a rung's
            # survivors and promote one trial fewer)
            return decision
        if self.base is not None:
            base_decision = self.base.on_trial_result(tune_controller, trial, _measured(result))
            if base_decision == TrialScheduler.STOP and not self._budget_spent(trial, view, result):
                self._base_stop(trial.trial_id, view, result, "metric")
            return base_decision
        if self._waits(tune_controller, trial, view, result):
            return TrialScheduler.PAUSE
        return TrialScheduler.CONTINUE

    def _waits(
        self, tune_controller: Any, trial: Trial, view: TrialView, result: dict[str, Any]
    ) -> bool:
        """Whether to pause the trial until trials waiting to start can be compared with it
        (rule 3 of the class docstring); records the decision."""
        if not (self.stop and self.wait) or self.base is not None or view.waited:
            return False
        if view.stopped is not None or result.get(SHOULD_CHECKPOINT) is not True:
            return False  # (without this report's checkpoint it would go back, or start over)
        if keys.TRAIN_REPORT in result:
            return False  # a Ray Train job: its workers would start again
        if _time_bounded(_stopper_of(tune_controller)):
            return False  # the sweep may end before the trial resumes (time_budget_s)
        if not any(math.isfinite(m) for m in view.history.metric):
            return False  # nothing to compare it by
        budget, reports = view.measured_budget(), view.history.reports
        rules = self.metric_rules()
        # judged once, at the first report at stall_share of its budget: one that could be
        # compared there is judged by the rules from then on (a trial that started second
        # would otherwise wait too, a report later, behind the first one's pause)
        if budget is None or not reports or reports >= budget:
            return False
        if not reports - 1 < rules.stall_share * budget <= reports:
            return False
        as_far = sum(
            1
            for other_id, other in self._views.items()
            if other_id != trial.trial_id and other.history.reports >= reports
        )
        if as_far >= rules.protect_top:
            return False
        # trials that have not started: PENDING is also the state of a paused or failed trial
        # that Tune readies to run again, which brings no new trial to compare with, and of a
        # trial whose actor holds its resources and is starting (a slow start: it waits for
        # no slot, and reports soon)
        waiting = sum(
            1
            for other_id, other in self._trials.items()
            if other_id != trial.trial_id
            and getattr(other, "status", None) == "PENDING"
            and self._views[other_id].last_iteration is None
            and not _starting(tune_controller, other)
        )
        if not waiting:
            return False
        view.waited = True
        decision = view.dated(
            Decision(
                "pause",
                "waits to be compared",
                reports,
                None,
                {"others_as_far": float(as_far), "trials_waiting": float(waiting)},
            )
        )
        self._record(trial.trial_id, decision)
        return True

    def _base_stop(self, trial_id: str, view: TrialView, result: dict[str, Any], how: str) -> None:
        """Record that the base scheduler stopped the trial, with the metric of ``result``."""
        value = result.get(self._metric) if self._metric else None
        values = {self._metric: float(value)} if self._metric and is_number(value) else {}
        # (the scheduler that decided: a ResourceChangingScheduler's base, not the wrapper)
        name = f"{type(_wrapped_chain(self.base)[-1]).__name__} ({how})"
        view.stopped = view.dated(Decision("stop", name, view.history.reports, None, values))
        self._record(trial_id, view.stopped)

    def _budget_spent(self, trial: Trial, view: TrialView, result: dict[str, Any]) -> bool:
        """Whether the trial has made its whole budget with this report: the budget Tune was
        given (``view.budget``), or the base scheduler's own, at which the base ends every
        trial it kept: ASHA's ``max_t``, the last rung of the trial's HyperBand bracket (most
        brackets end short of ``max_t``: HyperBand rounds their rungs down), looking through a
        ``ResourceChangingScheduler``. Such an end is no early stop, and is not recorded as
        one."""
        if view.budget is not None and view.history.reports >= view.budget:
            return True
        return any(_ends_trial_at(base, trial, result) for base in _wrapped_chain(self.base))

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> None:
        view = self._views.get(trial.trial_id)
        if view is not None:
            # a result that meets Tune's stopping criterion comes here, not to on_trial_result:
            # the trial's last report, which the other trials are compared with
            raw = result.get("training_iteration") if isinstance(result, dict) else None
            if is_number(raw) and (view.last_iteration is None or int(raw) > view.last_iteration):
                observed = self._observe(trial.trial_id, view, result)
                for decision in observed[2] if observed is not None else []:
                    self._record(trial.trial_id, decision)
            view.completed = True
        self._acknowledge(trial.trial_id, result)
        if self._mailbox is not None:
            self._mailbox.discard(trial.trial_id)
        if self.base is not None:
            self.base.on_trial_complete(tune_controller, trial, _measured(result))

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        view = self._views.get(trial.trial_id)
        if (
            self.base is not None
            and view is not None
            and view.history.reports
            and view.stopped is None
            and not view.completed
            and getattr(trial, "status", None) == "PAUSED"  # Trial.PAUSED
        ):
            # the base ends a trial it paused (HyperBand's halving): a stop of the base's,
            # recorded as one made at a report (it is told nothing else)
            raw = getattr(trial, "last_result", None)
            last = flatten_dict(raw) if isinstance(raw, dict) else {}
            if not self._budget_spent(trial, view, last):
                self._base_stop(trial.trial_id, view, last, "stopped while paused")
        if self._mailbox is not None:
            self._mailbox.discard(trial.trial_id)
        if self.base is not None:
            self.base.on_trial_remove(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        view = self._views.get(trial.trial_id)
        if view is not None and self.freeze:  # (freeze=False: the trial is ordered nothing)
            view.reorder_after_restore(trial.trial_id, self._mailbox, _checkpoint_iteration(trial))
        persist_trial_files(trial)
        if self.base is not None:
            self.base.on_trial_error(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        if self.base is not None:
            trial = self.base.choose_trial_to_run(tune_controller)
        else:
            # a trial that waited to be compared goes on as soon as it can be (before trials
            # that wait to start: a sweep without end, num_samples=-1, or a searcher that always
            # has one ready, would otherwise hold it to the end); else FIFO's choice
            trials = list(tune_controller.get_trials())
            errored = {
                t.trial_id for t in trials if getattr(t, "status", None) == "ERROR"
            }  # Trial.ERROR: failed for good (Tune retries a failed trial as PENDING)
            trial = self._most_promising(
                [t for t in trials if self._compared_now(t, errored)]
            ) or super().choose_trial_to_run(tune_controller)
            if trial is not None and self._waits_to_resume(trial):
                # FIFO resumes paused trials in the order they were added (in a sweep over
                # learning rates, mostly the smallest first): the best goes first, so that
                # the ones behind it are compared with where it got to
                trial = self._most_promising([t for t in trials if self._waits_to_resume(t)])
        if trial is not None and trial.last_result:
            # a trial that reported before resumes (paused by the base scheduler, say): Tune
            # copies its stored files back over the driver's as it starts, and the background
            # copy in storage can lack its latest reports
            persist_trial_files(trial)
            if getattr(trial, "status", None) == "PAUSED":  # Trial.PAUSED
                self._resume(trial)
        return trial

    def _waits_to_resume(self, trial: Trial) -> bool:
        """Whether ``trial`` is paused, waiting to be compared, and neither stopped nor done."""
        view = self._views.get(trial.trial_id)
        return (
            getattr(trial, "status", None) == "PAUSED"  # Trial.PAUSED
            and view is not None
            and view.waited
            and view.stopped is None
            and not view.completed
        )

    def _most_promising(self, trials: list[Trial]) -> Trial | None:
        """The trial of ``trials`` with the best metric so far (the first of equals; one
        without a finite value last), or None if there is none."""

        def best(trial: Trial) -> float:
            view = self._views.get(trial.trial_id)
            value = view.history.best() if view is not None else math.nan
            return value if math.isfinite(value) else -math.inf

        return max(trials, key=best, default=None)

    def _compared_now(self, trial: Trial, errored: set[str]) -> bool:
        """Whether ``trial`` is one this scheduler paused to wait to be compared, and
        ``protect_top`` other trials have ended since (run their budget, been stopped, or
        failed for good: the ids in ``errored``): the rules then compare it with where they
        ended, not only with where they stood a report or two ahead of it (which let trials at
        chance run to report 11 of 12)."""
        view = self._views.get(trial.trial_id)
        if view is None or not self._waits_to_resume(trial):
            return False
        ended = sum(
            1
            for other_id, other in self._views.items()
            if other_id != trial.trial_id
            and (other.completed or other.stopped is not None or other_id in errored)
        )
        return ended >= self.rules.protect_top

    def _resume(self, trial: Trial) -> None:
        """A paused trial starts again from its latest checkpoint, as after a failure.

        It was paused inside the report that ended its run, before it read what that report
        made the scheduler order; and its checkpoint can be older than that report (one every
        few iterations), so that it makes the reports after the checkpoint again. What it
        finds in its mailbox is replaced with the freezes decided up to the checkpoint's
        report, to apply as it restores (:meth:`TrialView.reorder_after_restore`); a freeze
        judged on a later report of the run it leaves is judged again on the new one.
        """
        view = self._views.get(trial.trial_id)
        if view is None or not self.freeze or self._mailbox is None:
            return
        self._mailbox.discard(trial.trial_id)
        self._mailbox.steer(trial.trial_id)  # (discard took its mark off)
        view.reorder_after_restore(trial.trial_id, self._mailbox, _checkpoint_iteration(trial))

    def debug_string(self) -> str:
        lines = [
            f"SVCCAScheduler: freeze_at={self.freeze_at}, patience={self.patience}, "
            f"stop={self.stop}, freeze={self.freeze}, {len(self._views)} trials"
        ]
        # each trial's unfreezes and pauses, in one pass over the decisions
        listed: dict[str, list[Decision]] = {}
        for t, d in self.decisions:
            if d.action in ("unfreeze", "pause"):
                listed.setdefault(t, []).append(d)
        for trial_id, view in self._views.items():
            frozen = view.frozen_or_ordered()
            status = getattr(self._trials.get(trial_id), "status", None)
            if view.completed:
                state = "finished"
            elif status == "ERROR":  # (failed for good: one Tune retries is PENDING again)
                state = "failed"
            elif status == "PAUSED":
                state = "paused"
            elif status == "TERMINATED":  # ended by Tune itself (a time budget, an interrupt)
                state = "ended"
            else:  # (a trial Tune has not started yet has made no report)
                state = "running" if view.history.reports else "no report yet"
            if view.stopped:
                state = f"stopped: {view.stopped.describe()}"
            lines.append(f"  {trial_id}: frozen {frozen or 'none'}; {state}")
            for name in frozen:
                if name in view.reasons:
                    lines.append(f"    {view.reasons[name].describe()}")
            # the latest unfreeze of each layer that trains now (its learning rate changed)
            own = listed.get(trial_id, [])
            unfrozen = {d.layer: d for d in own if d.action == "unfreeze" and d.layer not in frozen}
            lines.extend(f"    {d.describe()}" for d in unfrozen.values())
            lines.extend(f"    {d.describe()}" for d in own if d.action == "pause")
        if self.base is not None:
            lines.append(self.base.debug_string())
        return "\n".join(lines)

    # ------------------------------------------------------------ decisions
    def _new_view(self) -> TrialView:
        return TrialView(unfreeze_lr_factor=self.unfreeze_lr_factor)

    @property
    def frozen_layers(self) -> dict[str, list[str]]:
        """Per trial: the layers frozen or ordered frozen, in network order."""
        return {t: v.frozen_or_ordered() for t, v in self._views.items()}

    @property
    def stopped_trials(self) -> dict[str, str]:
        """Trials this scheduler stopped, with the rule that stopped each."""
        return {t: v.stopped.rule for t, v in self._views.items() if v.stopped}

    def _decide(self, trial_id: str, view: TrialView, result: dict[str, Any]) -> str:
        observed = self._observe(trial_id, view, result)
        if observed is None:
            self._check_ikkuna_report(trial_id, result)
            return TrialScheduler.CONTINUE  # not an ikkuna_tune report
        measured, signals, released = observed
        similarity = signals[self.similarity_key]
        for decision in released:
            self._record(trial_id, decision)
        self._check_similarity(result, similarity)
        self._check_metric(trial_id, view, result)
        history = view.history
        nonfinite = first_nonfinite(
            result, self._metric, similarity, self.similarity_key, view.finite_losses
        )
        # the weights, or every layer signal of this report, not finite
        collapsed = network_nonfinite(result, history.layers, signals)
        # nothing is frozen on a report whose metric or loss is not finite, or whose network
        # is not (one layer's similarity that is not is that layer's business only)
        freeze_now = (
            measured
            and collapsed is None
            and (nonfinite is None or nonfinite[0].startswith(f"{self.similarity_key}/"))
        )
        if self.stop:
            views = [v for t, v in self._views.items() if t != trial_id]
            others = [v.history.metric for v in views]
            # a trial stopped as diverged is no bar to reach (its metric ends non-finite: a
            # sweep ranked by last values leaves it out, one ranked by best values holds it at
            # its best before it diverged); the rules that rank a trial among the others
            # still count it
            bars = [
                v.history.metric
                for v in views
                if not (v.stopped and v.stopped.rule.startswith("diverged"))
            ]
            # the metric at this report, where the history does not hold it (not measured)
            latest = None if measured else self._signed(result.get(self._metric or ""))
            diverged = divergence(
                nonfinite,
                history,
                self.metric_rules(),
                self.similarity_key,
                self._metric,
                collapsed,
                latest,
            )
            if nonfinite is not None and diverged is None:
                now = history.metric[-1] if latest is None and history.metric else latest
                if now is not None and math.isfinite(now):
                    logger.info(
                        "Trial %s: %s is %s while its metric stands where it learned at this "
                        "report (%s=%.4g); not stopped",
                        trial_id,
                        *nonfinite,
                        self._metric,
                        now if self._mode == "max" else -now,
                    )
                else:
                    logger.info(
                        "Trial %s: %s is %s at a report that does not measure its metric; "
                        "judged at the next that does",
                        trial_id,
                        *nonfinite,
                    )
            nonfinite = diverged
            if measured:
                budget = view.measured_budget()
                # behind trials whose learning rate decayed while its own has not: its
                # plateau is no final one, so it is not judged behind (a swept step decay)
                phase = self._earlier_phase(trial_id, view)
                verdict = stop_verdict(
                    history,
                    self.metric_rules(),
                    others,
                    budget,
                    nonfinite,
                    earlier=phase,
                    accuracy_delta=self.rules.stall_delta,  # (an accuracy: in its own units)
                    bars=bars,
                )
            elif nonfinite is not None:
                verdict = Decision(
                    "stop",
                    "diverged: non-finite value",
                    history.reports,
                    None,
                    dict([nonfinite]),
                )
            else:
                verdict = None
            if verdict is not None:
                verdict = view.dated(self._in_metric_units(verdict))
                view.stopped = verdict
                self._record(trial_id, verdict)
                return TrialScheduler.STOP
        if freeze_now:
            self._freeze(trial_id, view)
        return TrialScheduler.CONTINUE

    def _accuracy_beside(self, result: dict[str, Any]) -> tuple[float, float]:
        """An accuracy the report holds beside a metric without a chance level of its own
        (``test_accuracy`` and ``test_accuracy_chance`` beside a loss: any ``<key>`` naming an
        accuracy, ``acc`` in its name, reported with a ``<key>_chance``, the first by name),
        and its chance level, in the units reported; NaN where there is none."""
        none = (math.nan, math.nan)
        if self._metric is None or keys.chance_of(self._metric) in result:
            return none
        for name in sorted(k for k in result if isinstance(k, str) and k.endswith("_chance")):
            base = name[: -len("_chance")]
            value, chance = result.get(base), result[name]
            if base == self._metric or "acc" not in base.lower():
                continue  # (a loss reported with its chance level is no accuracy)
            if not (is_number(value) and is_number(chance)):
                continue
            chance = float(chance)  # type: ignore[arg-type]
            if math.isfinite(chance) and 0.0 < chance <= 100.0:
                return float(value), chance  # type: ignore[arg-type]
        return none

    def _observe(
        self, trial_id: str, view: TrialView, result: dict[str, Any]
    ) -> tuple[bool, dict[str, dict[str, float]], list[Decision]] | None:
        """Take one report into the trial's view; returns whether it measured the layers,
        their signals (by key: similarity, ``init_similarity``, ``live_fraction``; each by
        layer) and the unfreezes it reports (None for a report ikkuna_tune did
        not make)."""
        layers = reported_layers(result)
        if not layers:
            return None
        history = view.history
        history.layers = layers
        reported_frozen = {name for name in layers if result.get(keys.per_layer(keys.FROZEN, name))}
        # a layer frozen (or ordered frozen) that the trial reports unfrozen, with the reason
        unfrozen = {
            name: reason
            for name in (history.frozen | history.pending) - reported_frozen
            if isinstance(reason := result.get(keys.per_layer(keys.UNFREEZE_REASON, name)), str)
            and reason.strip()
        }
        history.pending -= reported_frozen
        history.frozen = reported_frozen
        history.held = {
            name for name in layers if result.get(keys.per_layer(keys.TRAINABLE, name)) == 0
        }
        raw = result.get("training_iteration")
        if is_number(raw):
            iteration = int(raw)  # type: ignore[arg-type]
        else:  # not from Tune: count the reports
            iteration = 1 if view.last_iteration is None else view.last_iteration + 1
        if view.repeat:  # the iteration's report again, within the run: it replaces it
            view.rewind(iteration)
        elif view.last_iteration is not None and iteration <= view.last_iteration:
            # restored from a checkpoint (or restarted): the reports it makes again replace
            # those of the run it left, which must not count twice or date decisions
            dropped = view.rewind(iteration)
            # a loss kept by the training code (best_val_loss) starts again where the run
            # starts again: infinite before its first value, as at the trial's first report
            view.finite_losses.clear()
            report = result.get(keys.TRAIN_REPORT)
            resumed = isinstance(report, str) and "@" in report  # a Train job's checkpoint
            if iteration <= 1 and not resumed:  # restarted from scratch: no freeze holds
                view.start_afresh()
            elif iteration <= 1:  # Tune numbers a restarted Train job's reports from 1 again
                view.history.pending.clear()
                view.ordered_at.clear()
            if dropped:
                logger.info(
                    "Trial %s repeats training_iteration %s: the %s report(s) from there on "
                    "of the run it left are forgotten",
                    trial_id,
                    iteration,
                    dropped,
                )
        view.last_iteration = iteration
        view.forget_lost_orders(trial_id)  # (none while a restored driver replays reports)
        similarity = layer_values(result, self.similarity_key, layers)
        init = layer_values(result, keys.INIT_SIMILARITY, layers)
        live = layer_values(result, keys.LIVE_FRACTION, layers)
        # A report that measures no layer comes between two checkpoints of the SVCCA
        # subscriber (several reports per epoch): the rules judge a trial by the reports that
        # measure its layers, so such a report joins the history only while the trial has
        # measured none (it may never: no SVCCA subscriber); the first that does replaces those
        # made before it. A non-finite metric or network in any report still stops the trial.
        measures = bool(similarity or init or live)
        if measures and not view.measured:
            view.rewind(0)
        measured = measures or not view.measured
        view.measured = view.measured or measures
        if measured:
            metric = self._signed(result.get(self._metric) if self._metric else None)
            scale = result.get(keys.LR_SCALE)
            scale = float(scale) if is_number(scale) else math.nan  # type: ignore[arg-type]
            base = result.get(keys.LR_BASE_SCALE)
            base = float(base) if is_number(base) else math.nan  # type: ignore[arg-type]
            accuracy, chance = self._accuracy_beside(result)
            if math.isfinite(chance):
                history.accuracy_chance = chance
            history.add(metric, similarity, init, live, scale, accuracy, base)
            view.iterations.append(iteration)
        if self._mode == "max":  # a chance level is that of an accuracy (larger is better)
            chance = result.get(keys.chance_of(self._metric)) if self._metric else None
            if is_number(chance) and math.isfinite(chance):  # type: ignore[arg-type]
                history.chance = float(chance)  # type: ignore[arg-type]
        view.offset = iteration - history.reports
        released = []
        for name, reason in unfrozen.items():
            history.pending.discard(name)
            view.ordered_at.pop(name, None)
            history.released[name] = history.reports
            rule, values = parse_reason(reason)
            decision = view.dated(Decision("unfreeze", rule, history.reports, name, values))
            view.events.setdefault(name, []).append(decision)  # (a restore before it voids it)
            released.append(decision)
        signals = {
            self.similarity_key: similarity,
            keys.INIT_SIMILARITY: init,
            keys.LIVE_FRACTION: live,
        }
        return measured, signals, released

    def _in_metric_units(self, decision: Decision) -> Decision:
        """``decision`` with the metric's values as the trial reported them: the rules work on
        the metric signed so that larger is better, which negates a ``mode='min'`` metric
        (a loss). Gains (``progress``) stay improvements: positive is better. A decision
        that read the metric's thresholds carries the scale they were taken at, unless 1."""
        values = decision.values
        if self._mode == "min" and _METRIC_VALUES & values.keys():
            values = {
                k: -v if k in _METRIC_VALUES and math.isfinite(v) else v for k, v in values.items()
            }
        scale = self._scaled[0]
        if scale != 1.0 and decision.rule not in _SCALE_FREE_RULES:
            values = {**values, "metric_scale": scale}
        return decision if values is decision.values else replace(decision, values=values)

    def _signed(self, value: object) -> float:
        if not is_number(value):
            return math.nan
        return float(value) if self._mode == "max" else -float(value)  # type: ignore[arg-type]

    def _check_ikkuna_report(self, trial_id: str, result: dict[str, Any]) -> None:
        """Warn once when a trial keeps reporting without ikkuna_tune's keys: it reports with
        ``tune.report`` (or is not instrumented), so nothing is frozen or stopped by the rules."""
        reports = result.get("training_iteration")
        if self._warned_not_ikkuna or not is_number(reports) or reports < 2:  # type: ignore[operator]
            return
        self._warned_not_ikkuna = True
        logger.warning(
            "SVCCAScheduler: trial %s has made %s reports without ikkuna_tune's per-layer keys "
            "(no 'frozen/<layer>'), so its rules neither freeze nor stop it. Instrument the "
            "trainable (ik.instrument), watch the model (ik.watch) and report with ik.report "
            "in place of tune.report",
            trial_id,
            reports,
        )

    #: the reports of a trial without any value of the metric after which to say so
    _METRIC_UNSEEN_REPORTS = 3

    def _check_metric(self, trial_id: str, view: TrialView, result: dict[str, Any]) -> None:
        """Warn once when a trial has made several reports without any value of the metric:
        the rules judge trials by it, so such a trial is never stopped as behind, nor compared
        (a misspelt key, or a metric measured only at the end)."""
        if self._warned_no_metric or not self._metric:
            return
        history = view.history
        if history.reports < self._METRIC_UNSEEN_REPORTS or any(
            math.isfinite(m) for m in history.metric
        ):
            return
        self._warned_no_metric = True
        reported = [
            k for k in result if "/" not in k and k != self._metric and is_number(result.get(k))
        ]
        close = difflib.get_close_matches(self._metric, reported, n=3, cutoff=0.5)
        value = result.get(self._metric)
        if self._metric not in result:
            present = "not among the keys"
        else:
            present = f"not finite, {value}" if is_number(value) else f"present as {value!r}"
        logger.warning(
            "SVCCAScheduler has received no value of its metric %r from trial %s in %d reports "
            "(%s): it judges trials by the metric, so such a trial is neither stopped as behind "
            "nor compared with others. Report it at every report that measures it (None where "
            "not), or pass the right `metric`%s.",
            self._metric,
            trial_id,
            history.reports,
            present,
            f" (reported keys that look alike: {close})" if close else "",
        )

    def _check_similarity(self, result: dict[str, Any], similarity: dict[str, float]) -> None:
        self._similarity_seen = self._similarity_seen or bool(similarity)
        if self._similarity_seen or self._warned_no_similarity:
            return
        prefix = self.similarity_key + "/"
        iteration = result.get("training_iteration", 0)
        if any(key.startswith(prefix) for key in result):
            # reported, without a value yet (between two of the subscriber's checkpoints), or
            # never: a subscriber that measures nothing (a `tag` no message carries)
            if iteration >= _NO_VALUE_REPORTS:
                self._warned_no_similarity = True
                logger.warning(
                    "SVCCAScheduler has received %r only as None, from every layer and trial, "
                    "in %s reports, so it has frozen nothing: the SVCCASubscriber has measured "
                    "nothing yet (it measures nothing when subscribed to a `tag` no message "
                    "carries; with `frequency` 'epoch' and many reports an epoch, it measures "
                    "once that many).",
                    self.similarity_key,
                    iteration,
                )
            return
        if iteration >= 2:
            self._warned_no_similarity = True
            keys = sorted({k.split("/", 1)[0] for k in result if "/" in k} - {"config"})
            logger.warning(
                "SVCCAScheduler has received no %r from any layer after %s reports, so it "
                "freezes nothing; the per-layer keys reported are %s. Add an SVCCASubscriber "
                "or pass the right `similarity_key`.",
                self.similarity_key,
                result.get("training_iteration"),
                keys,
            )

    @property
    def scale(self) -> float:
        """The metric's scale now: ``metric_scale`` if given, else inferred from the reports
        (:func:`~ikkuna_tune.tune.convergence.metric_scale_of`)."""
        if self.metric_scale is not None:
            return self.metric_scale
        extents = []
        for view in self._views.values():
            extent = view.history.metric.extent()  # of the signed metric
            if extent is not None:
                first, low, high = extent
                # as reported: a minimised metric is held negated
                extents.append((-first, -high, -low) if self._mode == "min" else extent)
        chances = [view.history.chance for view in self._views.values()]
        return metric_scale_from(extents, self._mode or "max", chances)

    def metric_rules(self) -> ConvergenceRules:
        """The rules with their metric thresholds in the metric's units (:attr:`scale`
        times those of :attr:`rules`); a change of the inferred scale is logged."""
        scale = self.scale
        if scale != self._scaled[0]:
            self._scaled = (scale, in_units(self.rules, scale))
            how = "as given" if self.metric_scale is not None else "inferred from the reports"
            logger.info(
                "SVCCAScheduler takes %r at a scale of %g (%s): min_delta %g, stall_delta %g "
                "and reach_within %g in its units",
                self._metric,
                scale,
                how,
                self._scaled[1].min_delta,
                self._scaled[1].stall_delta,
                self._scaled[1].reach_within,
            )
        return self._scaled[1]

    def _among_best(self, trial_id: str, view: TrialView) -> bool:
        """Whether the trial may still end among the ``protect_top`` best (:func:`among_best`)."""
        others = [v.history for t, v in self._views.items() if t != trial_id]
        rules = self.metric_rules()
        return among_best(view.history, others_best_so_far(view.history, others), rules)

    def _earlier_phase(self, trial_id: str, view: TrialView) -> dict[str, float] | None:
        """The values behind "a trial ahead of this one has decayed its learning rate and this
        one has not" (:func:`~ikkuna_tune.tune.convergence.earlier_phase`), or None."""
        others = [v.history for t, v in self._views.items() if t != trial_id]
        return earlier_phase(view.history, others)

    def _freeze(self, trial_id: str, view: TrialView) -> bool:
        """Post a directive for the layers to freeze now; True if one was posted."""
        if not self.freeze:
            return False
        if not self.freeze_best and self._among_best(trial_id, view):
            return False  # a contender for the sweep's answer is left exactly as it would run
        if not self.freeze_best and self._earlier_phase(trial_id, view) is not None:
            return False  # behind trials whose learning rate has decayed while its own has not
        chosen = [
            view.dated(self._in_metric_units(d))
            for d in freeze_candidates(view.history, self.metric_rules(), self.input_side_first)
        ]
        if not chosen:
            return False
        names = [d.layer for d in chosen if d.layer is not None]
        if self._mailbox is None:
            logger.warning("No mailbox for trial %s; cannot freeze %s", trial_id, names)
            return False
        reasons = {d.layer: d.describe() for d in chosen if d.layer is not None}
        factor = self.unfreeze_lr_factor
        directive = {"freeze": names, "reasons": reasons, "unfreeze_lr_factor": factor}
        if not self._mailbox.post(trial_id, directive):
            return False
        view.order(names, view.history.reports)
        for decision in chosen:
            assert decision.layer is not None
            view.reasons[decision.layer] = decision
            view.events.setdefault(decision.layer, []).append(decision)
            self._record(trial_id, decision)
        return True

    def _recall(self, trial: Trial, view: TrialView) -> None:
        """Take up what an earlier driver knew of ``trial`` (``Tuner.restore``): its reports,
        replayed into the view without deciding anything (so that rules that look back, such as
        progress since the first report, see the whole trial), and its decisions. Only those of
        this trial id: a trial Tune restarts from scratch under a new id
        (``restart_errored``) has the errored trial's directory until it starts."""
        own = trial.trial_id
        for result in read_results(trial):
            if result.get("trial_id", own) == own:
                self._observe(own, view, result)
        view.events.clear()  # the log's decisions are the layers' events, once and in order
        decisions = read_decisions(trial, own)
        self.decisions.extend((trial.trial_id, decision) for decision in decisions)
        restore_at = _checkpoint_iteration(trial)
        view.take_up(trial.trial_id, decisions, self._mailbox, restore_at, order=self.freeze)
        stops = [decision for decision in decisions if decision.action == "stop"]
        if stops:
            view.stopped = stops[-1]
        view.waited = any(decision.action == "pause" for decision in decisions)
        if getattr(trial, "status", None) == "TERMINATED":  # Trial.TERMINATED: Tune ended it
            view.completed = True

    def _record(self, trial_id: str, decision: Decision) -> None:
        self.decisions.append((trial_id, decision))
        logger.info("Trial %s: %s", trial_id, decision.describe())
        append_decision(self._trials.get(trial_id), trial_id, decision)


def _ends_trial_at(scheduler: object, trial: Any, result: dict[str, Any]) -> bool:
    """Whether ``scheduler`` (an ASHA or a HyperBand) ends ``trial`` at ``result`` because the
    trial has run all it would ever let it run: ASHA's ``max_t``; the last rung of the trial's
    HyperBand bracket (no halving left and the rung reached). Reads their attributes: a
    scheduler without them ends no trial so."""
    time_attr = getattr(scheduler, "_time_attr", None)
    now = result.get(time_attr) if isinstance(time_attr, str) else None
    if not is_number(now):
        return False
    max_t = getattr(scheduler, "_max_t", None)  # ASHA's
    if is_number(max_t) and now >= max_t:
        return True
    brackets = getattr(scheduler, "_trial_info", None)  # HyperBand's trial -> (bracket, band)
    entry = brackets.get(trial) if isinstance(brackets, dict) else None
    bracket = entry[0] if isinstance(entry, tuple) and entry else None
    last_rung = getattr(bracket, "_cumul_r", None)
    return getattr(bracket, "_halves", None) == 0 and is_number(last_rung) and now >= last_rung


def _checkpoint_iteration(trial: Any) -> int | None:
    """The ``training_iteration`` of the checkpoint a failed trial restores from (None if it
    has none, or Tune does not say)."""
    try:
        result = trial.latest_checkpoint_result
    except AttributeError:
        return None
    metrics = getattr(result, "metrics", None) if result is not None else None
    value = metrics.get("training_iteration") if isinstance(metrics, dict) else None
    return int(value) if is_number(value) else None


def _time_bounded(stopper: object) -> bool:
    """Whether the experiment's stopper ends the whole sweep after a time
    (``time_budget_s``: a :class:`~ray.tune.stopper.TimeoutStopper`, alone or combined with
    ``stop=``'s stopper)."""
    from ray.tune.stopper import CombinedStopper, TimeoutStopper

    if isinstance(stopper, TimeoutStopper):
        return True
    if isinstance(stopper, CombinedStopper):
        return any(_time_bounded(inner) for inner in getattr(stopper, "_stoppers", ()))
    return False


def _stopper_of(tune_controller: Any) -> object:
    """The experiment's stopper (``stop=`` a Stopper): read from the controller behind the
    wrapper Tune hands schedulers, whose own attribute access warns about a restricted API."""
    controller = getattr(tune_controller, "__dict__", {}).get("_tune_controller", tune_controller)
    return getattr(controller, "__dict__", {}).get("_stopper")
