"""When is a layer converged, and when is a trial lost? Pure decisions on a trial's reports.

SVCCAScheduler keeps, per trial, the history of what the trial reported (its metric, and per
layer the SVCCA ``self_similarity``, the CKA ``init_similarity`` and the ``live_fraction`` of
the SVCCA subscriber) and asks two functions of this module what to do:

- :func:`freeze_candidates`: the layers at the input end that may be frozen now. A high
  epoch-to-epoch similarity alone is not enough: it is also high for a layer that moves slowly
  (a small learning rate), for a dead layer and for a widening layer whose output is an
  invertible linear map of its input (SVCCA cannot see such a layer change). So a layer must
  (1) be similar to its last checkpoint (SVCCA >= ``freeze_at`` for ``patience`` reports),
  (2) have come some way from its initialisation (CKA distance >= ``min_travel``: a layer that
  never moved is slow, not converged) and (3) have stopped going further (over the last
  ``settle_window`` reports that distance stayed within ``settle_tol`` of itself and grew at
  most ``settle_tol`` times as much as it once did over as many reports: steady drift keeps
  growing it), (4) be alive, and only while (5) the trial's metric has stopped improving
  (no gain above ``min_delta`` in the last ``plateau`` reports over its best before them, and
  its mean over its last ``plateau + 1`` values no more than ``min_delta`` above its mean over
  the ``plateau + 1`` before: a climb that a noisy report or two dipped after is still a
  climb; and, once it has more than ``2 * plateau + 2`` reports, no gain above ``min_delta``
  in that many over its best before them; and no change of its learning rate by a factor of
  :data:`LR_MOVED` or more over those reports: a slow climb after a learning-rate drop is
  still a climb): while a trial still learns, nothing is frozen.
- :func:`stop_verdict`: a reason to stop the trial, or None. Non-finite values (a diverged
  trial) and a dead layer stop at once. With a known budget, after the grace period and
  ``stall_share`` of the budget, a trial that makes no progress and whose layers no longer
  move is stuck (where its chance level is known, only at chance: a fine-tuned model far
  above it gains little with layers that barely move, and still learns; and not before that
  share, nor before another trial held a level ``stall_delta`` above where it started, after
  as many reports (:func:`_others_learned`): a learning-rate
  warm-up holds the layers as still as a rate too small to learn), and so is a trial that
  made no progress and is more than ``stall_delta`` behind the level the
  ``protect_top``-th best other trial held after as many reports (:func:`held_level`: its
  best over ``settle_window`` reports in a row, so that one noisy report is none), once
  those others had made
  :data:`LEARNED_SHARE` of their way by then (a slow starter at chance for the first reports,
  which then learns, is left running until then, and in a sweep whose trials all start late,
  a long warm-up, until the others have learned). A trial is never stopped for sitting at
  chance alone, with no other trial to compare it with: a late starter sits there as long as
  a stuck one (recurrent nets at chance for 4 to 8 of 12 epochs ended as their sweep's best
  or among its top 3). And a trial that cannot reach the
  ``protect_top``-th best value where the other trials stand (each at its latest value: a
  trial that peaked and collapsed is no bar, whether the sweep ranks trials by their best
  or by their last value; the scheduler leaves trials stopped as diverged out), even improving at
  ``optimism`` times its best recent rate from its best over its recent reports until the
  budget ends (a trial flat where it started has no rate: the stuck rules judge it), whose
  recent best is further from it than twice its noise (:func:`noise_band`,
  at most twice ``reach_within``) and than ``reach_margin`` of its way from its first value to
  it (or ``reach_within``, if less), and is as far behind where the others stood after as
  many reports, at its latest value and at the one before (one value's reading, a dip just
  before a trial speeds up, is no verdict; a report without a value adds no reading, and a
  trial's first reading needs a second), is stopped (so the best configurations always run to
  the end, and the good ones run until they are clearly behind: a plateau before a
  learning-rate drop, or a few noisy reports, show no rate); that rate is measured only once
  the trial has gained ``stall_delta`` and :data:`STARTED_SHARE` of its way from its first
  value to that target, or after ``stall_share`` of the budget (a flat start is no rate);
  while its latest gain is its largest yet (a curve still speeding up), its gains are taken to
  keep growing by as much as they last grew.

Every decision carries its rule and the values behind it (:class:`Decision`), which the
scheduler logs, keeps in ``debug_string``, sends to the trial with a freeze and writes beside
the experiment's results.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ikkuna_tune.checks import (
    check_finite_nonnegative,
    check_fraction,
    check_int,
    check_unit,
)
from ikkuna_tune.freezing import next_to_freeze
from ikkuna_tune.keys import layer_of_call

__all__ = [
    "ConvergenceRules",
    "Decision",
    "LayerHistory",
    "MetricSeries",
    "TrialHistory",
    "accuracy_at_chance",
    "among_best",
    "divergence",
    "earlier_phase",
    "freeze_candidates",
    "further_calls",
    "has_learned",
    "held_level",
    "in_units",
    "layer_settled",
    "metric_scale_from",
    "metric_scale_of",
    "metric_swing",
    "noise_band",
    "others_best_so_far",
    "others_held_so_far",
    "parse_reason",
    "stands_where_learned",
    "stop_verdict",
]


@dataclass(frozen=True)
class ConvergenceRules:
    """The thresholds of the convergence and stopping rules (see the module docstring).

    Metric thresholds (``min_delta``, ``stall_delta``, ``reach_within``) are in the units of
    the scheduler's metric; the defaults suit accuracies in [0, 1] (:func:`in_units` scales
    them to another metric).

    Examples:
        >>> rules = ConvergenceRules(freeze_at=0.95)
        >>> rules.freeze_at, rules.patience, rules.min_travel
        (0.95, 2, 0.02)
    """

    freeze_at: float = 0.99
    patience: int = 2
    min_travel: float = 0.02
    settle_window: int = 3
    settle_tol: float = 0.2
    plateau: int = 2
    min_delta: float = 0.005
    dead_below: float = 0.0
    stall_delta: float = 0.02
    move_tol: float = 0.005
    optimism: float = 3.0
    protect_top: int = 3
    grace: int = 2  # reports before a trial may be stopped as stuck or behind
    stall_share: float = 1 / 3  # of the budget, after which a stuck trial stops, layers moving
    reach_margin: float = 0.25  # of its way to the target: closer, never "cannot reach"...
    reach_within: float = 0.05  # ...unless further than this from it (the metric's units)

    def __post_init__(self) -> None:
        """Check every threshold where the rules are made: a bad one (a negative patience, a
        ``freeze_at`` above 1, an infinite ``min_delta``) changed what the rules decided
        without a word."""
        checked = {
            "freeze_at": check_fraction("freeze_at", self.freeze_at),
            "patience": check_int("patience", self.patience),
            "min_travel": check_unit("min_travel", self.min_travel),
            "settle_window": check_int("settle_window", self.settle_window),
            "settle_tol": check_finite_nonnegative("settle_tol", self.settle_tol),
            "plateau": check_int("plateau", self.plateau, minimum=0),
            "min_delta": check_finite_nonnegative("min_delta", self.min_delta),
            "dead_below": check_unit("dead_below", self.dead_below),
            "stall_delta": check_finite_nonnegative("stall_delta", self.stall_delta),
            "move_tol": check_finite_nonnegative("move_tol", self.move_tol),
            "optimism": check_finite_nonnegative("optimism", self.optimism),
            "protect_top": check_int("protect_top", self.protect_top),
            "grace": check_int("grace", self.grace, minimum=0),
            "stall_share": check_fraction("stall_share", self.stall_share),
            "reach_margin": check_unit("reach_margin", self.reach_margin),
            "reach_within": check_finite_nonnegative("reach_within", self.reach_within),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)


#: How much less than ``stall_delta`` a gain must be to count as less, relative to the values
#: compared (at least 1): metrics reported in float32 are rounded by that much (an accuracy of
#: 93/400 less one of 85/400 is 0.019999996; in percent, 56/3 - 50/3 is 1.999998). Each rule
#: that stops a trial allows for it in the direction that keeps the trial.
ROUNDING = 1e-6


def _tolerance(*values: float) -> float:
    """:data:`ROUNDING` at the scale of ``values`` (their largest magnitude, at least 1).

    >>> _tolerance(0.2, 0.23), _tolerance(93.0, -256.0), _tolerance(float("nan"))
    (1e-06, 0.000256, 1e-06)
    """
    return ROUNDING * max([1.0, *(abs(v) for v in values if math.isfinite(v))])


#: The share of its way from its first reported value to the value it must reach that a trial
#: must have gained before its rate of gain is extrapolated (see :func:`stop_verdict`).
STARTED_SHARE = 0.1

#: A trial whose ``lr_scale`` is at most this has decayed its learning rate (by a factor of 2
#: from the largest it had): see :func:`earlier_phase`.
DECAYED = 0.5

#: A trial whose learning rate is below this share of the rate its scheduler starts from
#: (``lr_base_scale``), and never was higher, is warming up: not stopped as stuck or behind,
#: not frozen (see :meth:`TrialHistory.warming_up`).
WARMING_BELOW = 0.5

#: The share of a known budget after which a warm-up no longer keeps a trial from being
#: stopped as stuck or behind (see :func:`stop_verdict`).
WARM_UP_SHARE = 0.5

#: A trial whose learning rate moved by this factor or more (either way: a decay, a warm
#: restart) over the plateau test's longer look (``2 * plateau + 2`` reports) is not frozen:
#: after a tenfold drop trials climbed a test image every other report, which read as a
#: plateau (see :func:`freeze_candidates`).
LR_MOVED = 2.0

#: The share of their way from a trial's first value to where they end (their best so far)
#: that the other trials must have made after as many reports as it, for it to be stopped as
#: stuck while others learned (see :func:`stop_verdict`).
LEARNED_SHARE = 0.5


@dataclass(frozen=True)
class Decision:
    """One decision: ``action`` ('freeze', 'unfreeze', 'stop' or 'pause'), the ``rule`` that
    made it, the layer it concerns (if any), the report it was made at and the values behind
    it.

    Examples:
        >>> decision = Decision("freeze", "converged", 4, "conv1", {"similarity": 0.99512})
        >>> decision.describe()
        'freeze conv1 at report 4: converged (similarity=0.9951)'
        >>> decision.as_dict()  # doctest: +NORMALIZE_WHITESPACE
        {'action': 'freeze', 'rule': 'converged', 'iteration': 4, 'layer': 'conv1',
         'values': {'similarity': 0.99512}}
    """

    action: str
    rule: str
    iteration: int
    layer: str | None = None
    values: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        """One line: what, why, with the values."""
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in self.values.items())
        target = f" {self.layer}" if self.layer else ""
        return f"{self.action}{target} at report {self.iteration}: {self.rule} ({shown})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "rule": self.rule,
            "iteration": self.iteration,
            "layer": self.layer,
            "values": dict(self.values),
        }


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def parse_reason(text: str) -> tuple[str, dict[str, float]]:
    """A reason a trial reported, ``"rule (name=value, ...)"``, as its rule and values (text
    in another form is all rule).

    Examples:
        >>> parse_reason("learning rate changed (lr_at_freeze=0.1, lr=0.01)")
        ('learning rate changed', {'lr_at_freeze': 0.1, 'lr': 0.01})
        >>> parse_reason("unfrozen by hand")
        ('unfrozen by hand', {})
    """
    rule, opened, rest = text.strip().partition(" (")
    if not opened or not rest.endswith(")"):
        return text.strip(), {}
    values: dict[str, float] = {}
    for pair in rest[:-1].split(", "):
        key, equals, value = pair.partition("=")
        try:
            values[key] = float(value)
        except ValueError:
            return text.strip(), {}
        if not equals or not key:
            return text.strip(), {}
    return rule, values


class MetricSeries(list[float]):
    """A trial's metric, report by report: a list that remembers what the rules derive from
    it (its best and its held level after each report, its finite values) until it changes.

    The scheduler judges a trial against every other trial's series at each report; computed
    afresh each time, that made a result's cost grow with trials x reports (a sweep's with
    their square). Each mutation forgets what was derived, so the values are exactly those
    computed afresh.

    Examples:
        >>> series = MetricSeries([0.2, float("nan"), 0.5, 0.4])
        >>> series.best_after(2), series.best_after(4), series.held_after(4, window=2)
        (0.2, 0.5, 0.4)
        >>> series.append(0.9); series.best_after(5), series.finite()[-1]
        (0.9, 0.9)
    """

    def _derived(self) -> dict[Any, Any]:
        found = self.__dict__.get("_cache")
        if found is None:
            found = self.__dict__["_cache"] = {}
        return found

    def _changed(self) -> None:
        self.__dict__.pop("_cache", None)

    def finite(self) -> list[float]:
        """The finite values, in order (do not modify the list returned)."""
        derived = self._derived()
        found = derived.get("finite")
        if found is None:
            found = derived["finite"] = [v for v in self if math.isfinite(v)]
        return found

    def extent(self) -> tuple[float, float, float] | None:
        """The first, lowest and highest finite value; None if there is none."""
        derived = self._derived()
        if "extent" not in derived:
            finite = self.finite()
            derived["extent"] = (finite[0], min(finite), max(finite)) if finite else None
        return derived["extent"]

    def best_after(self, reports: int | None = None) -> float:
        """The best finite value over the first ``reports`` reports (all if None); -inf if
        there is none."""
        derived = self._derived()
        bests = derived.get("best")
        if bests is None:
            bests, best = [-math.inf], -math.inf
            for value in self:
                if math.isfinite(value) and value > best:
                    best = value
                bests.append(best)
            derived["best"] = bests
        return bests[len(self) if reports is None else max(0, min(reports, len(self)))]

    def last_finite(self) -> float | None:
        """The latest finite value; None if there is none."""
        finite = self.finite()
        return finite[-1] if finite else None

    def held_after(self, reports: int | None, window: int) -> float | None:
        """:func:`held_level` of the first ``reports`` reports (all if None)."""
        derived = self._derived()
        levels = derived.get(("held", window))
        if levels is None:
            levels, finite, level = [None], [], None
            for value in self:
                if math.isfinite(value):
                    finite.append(value)
                    if len(finite) >= window:
                        run = min(finite[-window:])
                        level = run if level is None else max(level, run)
                levels.append(level)
            derived[("held", window)] = levels
        return levels[len(self) if reports is None else max(0, min(reports, len(self)))]

    # every way a list changes forgets what was derived from it
    def append(self, value: float) -> None:
        super().append(value)
        self._changed()

    def extend(self, values: Any) -> None:
        super().extend(values)
        self._changed()

    def insert(self, index: Any, value: float) -> None:
        super().insert(index, value)
        self._changed()

    def pop(self, index: Any = -1) -> float:
        self._changed()
        return super().pop(index)

    def remove(self, value: float) -> None:
        super().remove(value)
        self._changed()

    def clear(self) -> None:
        super().clear()
        self._changed()

    def sort(self, *args: Any, **kwargs: Any) -> None:
        super().sort(*args, **kwargs)
        self._changed()

    def reverse(self) -> None:
        super().reverse()
        self._changed()

    def __setitem__(self, index: Any, value: Any) -> None:
        super().__setitem__(index, value)
        self._changed()

    def __delitem__(self, index: Any) -> None:
        super().__delitem__(index)
        self._changed()

    def __iadd__(self, values: Any) -> MetricSeries:
        super().__iadd__(values)
        self._changed()
        return self

    def __imul__(self, times: Any) -> MetricSeries:
        super().__imul__(times)
        self._changed()
        return self

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return (MetricSeries, (list(self),))  # the values only: what is derived is rebuilt


def _best_after(series: list[float], reports: int | None = None) -> float:
    """The best finite value of ``series`` over its first ``reports`` reports, -inf if none."""
    if isinstance(series, MetricSeries):
        return series.best_after(reports)
    values = series if reports is None else series[:reports]
    return max((m for m in values if math.isfinite(m)), default=-math.inf)


def _last_finite(series: list[float]) -> float | None:
    """The latest finite value of ``series``; None if there is none.

    >>> _last_finite([0.2, 0.63, 0.07, float("nan")]), _last_finite([float("nan")])
    (0.07, None)
    """
    if isinstance(series, MetricSeries):
        return series.last_finite()
    return next((m for m in reversed(series) if math.isfinite(m)), None)


def _first_finite(series: list[float]) -> float:
    if isinstance(series, MetricSeries):
        finite = series.finite()
        return finite[0] if finite else math.nan
    return next((m for m in series if math.isfinite(m)), math.nan)


def _held_after(series: list[float], reports: int | None, window: int) -> float | None:
    if isinstance(series, MetricSeries):
        return series.held_after(reports, window)
    return held_level(series if reports is None else series[:reports], window)


@dataclass
class LayerHistory:
    """One layer's reported signals, one entry per report (NaN where nothing was reported).

    Examples:
        >>> history = LayerHistory(similarity=[0.9, 0.995, 0.997], distance=[0.1, 0.1, 0.1])
        >>> history.similarity[-1], history.live
        (0.997, [])
    """

    similarity: list[float] = field(default_factory=list)
    distance: list[float] = field(default_factory=list)  # 1 - init_similarity
    live: list[float] = field(default_factory=list)
    #: :meth:`growths` as far as it has read ``distance``: (window, distances read, the largest
    #: finite growth before the latest, the latest)
    _growth_seen: tuple[int, int, float, float] = field(
        default=(0, 0, -math.inf, math.nan), init=False, repr=False, compare=False
    )

    def growths(self, window: int) -> tuple[float, float]:
        """The latest finite growth of the distance from initialisation over ``window``
        reports (from 0 before the first report), and the largest before it (``-inf`` if
        none); NaN as the latest if there is none. Each distance is read once over the
        layer's life (the scheduler asks at every result while a trial stands still).

        Examples:
            >>> latest, fastest = LayerHistory(distance=[0.05, 0.09, 0.1, 0.1, 0.1]).growths(3)
            >>> round(latest, 6), fastest  # 0.1 - 0.09 over the last 3; 0.1 - 0 over the first
            (0.01, 0.1)
        """
        seen_window, seen, fastest, latest = self._growth_seen
        n = len(self.distance)
        if seen_window != window or seen > n + 1:  # other rules, or shortened: afresh
            seen, fastest, latest = 0, -math.inf, math.nan
        distance = self.distance
        for end in range(max(seen, window), n + 1):
            if end < window:
                continue
            start = distance[end - window - 1] if end > window else 0.0
            growth = distance[end - 1] - start
            if math.isfinite(growth):
                if math.isfinite(latest):
                    fastest = max(fastest, latest)
                latest = growth
        self._growth_seen = (window, n + 1 if n >= window else 0, fastest, latest)
        return latest, fastest

    def forget_after(self, reports: int) -> None:
        """Keep the first ``reports`` entries only."""
        for series in (self.similarity, self.distance, self.live):
            del series[reports:]
        self._growth_seen = (0, 0, -math.inf, math.nan)


@dataclass
class TrialHistory:
    """What one trial reported: its metric (signed so that larger is better) and its layers.

    Examples:
        >>> trial = TrialHistory(layers=["conv", "fc"])
        >>> trial.add(0.5, {"conv": 0.9}, {"conv": 0.75}, {"conv": 1.0})
        >>> trial.add(0.75, {}, {}, {})  # nothing per layer this time
        >>> trial.reports, trial.best(), trial.per_layer["conv"].distance
        (2, 0.75, [0.25, nan])
    """

    layers: list[str] = field(default_factory=list)
    metric: list[float] = field(default_factory=MetricSeries)
    per_layer: dict[str, LayerHistory] = field(default_factory=dict)
    frozen: set[str] = field(default_factory=set)
    pending: set[str] = field(default_factory=set)
    #: layers the training code holds fixed, as the latest report says (``trainable`` 0:
    #: parameters, none requiring gradients): nothing to freeze there, and no stop for the
    #: prefix frozen input side first
    held: set[str] = field(default_factory=set)
    #: layers ordered frozen that the trial did not freeze, twice: never ordered again
    refused: set[str] = field(default_factory=set)
    #: layers the trial unfroze after a freeze (its learning rate changed), each with the
    #: number of reports in the history when the trial reported it: judged again only on the
    #: reports after those
    released: dict[str, int] = field(default_factory=dict)
    #: the metric's chance level, as the trial last reported it (signed like the metric)
    chance: float = math.nan
    #: per report, the trial's learning rate over the largest it has had (``lr_scale``; NaN
    #: where not reported)
    lr_scale: list[float] = field(default_factory=list)
    #: per report, the trial's learning rate over the rate its scheduler starts from
    #: (``lr_base_scale``; NaN where not reported): see :meth:`warming_up`
    lr_base_scale: list[float] = field(default_factory=list)
    #: per report, an accuracy the trial reports beside a metric without a chance level of its
    #: own (``test_accuracy`` beside a loss), as reported (a fraction or a percentage); NaN
    #: where not reported
    accuracy: list[float] = field(default_factory=list)
    #: that accuracy's chance level, in its units (NaN: unknown)
    accuracy_chance: float = math.nan
    #: how many ``lr_scale`` values :meth:`decayed_by` has looked at, and the first at or
    #: below :data:`DECAYED` among them (None: none yet)
    _decay_seen: tuple[int, int | None] = field(
        default=(0, None), init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if not isinstance(self.metric, MetricSeries):
            self.metric = MetricSeries(self.metric)

    @property
    def reports(self) -> int:
        return len(self.metric)

    def best(self, reports: int | None = None) -> float:
        """The best finite metric value, over the first ``reports`` reports if given."""
        return _best_after(self.metric, reports)

    def decayed_by(self, reports: int) -> bool:
        """Whether the learning rate fell to :data:`DECAYED` of its largest or below within
        the first ``reports`` reports. Each value is looked at once over the trial's life (the
        scheduler asks of every other trial at every result).

        Examples:
            >>> trial = TrialHistory(lr_scale=[1.0, 0.9, 0.1])
            >>> trial.decayed_by(2), trial.decayed_by(3)
            (False, True)
        """
        seen, first = self._decay_seen
        if seen > len(self.lr_scale):  # (shortened other than by truncate)
            seen, first = 0, None
        if first is None:
            for i in range(seen, len(self.lr_scale)):
                value = self.lr_scale[i]
                if math.isfinite(value) and value <= DECAYED:
                    first = i
                    break
            seen = len(self.lr_scale)
        self._decay_seen = (seen, first)
        return first is not None and first < reports

    def warming_up(self) -> bool:
        """Whether the trial's latest report finds its learning rate in a warm-up: below
        :data:`WARMING_BELOW` of the rate its scheduler starts from, and never higher than now
        (``lr_scale`` 1: a rate that decayed there is no warm-up). Layers at 1 % of their rate
        stand as still as at a rate too small to learn; what the trial does at its own rate
        is not known yet.

        Examples:
            >>> TrialHistory(lr_scale=[1.0, 1.0], lr_base_scale=[0.01, 0.01]).warming_up()
            True
            >>> TrialHistory(lr_scale=[1.0, 0.1], lr_base_scale=[1.0, 0.1]).warming_up()
            False
        """
        return self.reports_since_warm_up() == 0

    def reports_since_warm_up(self) -> float:
        """The reports made since the latest that found the trial warming up (see
        :meth:`warming_up`): 0 if the latest did, ``inf`` if none did. A report is made after
        the epoch it measures, often after the scheduler's step: the first report at the full
        rate measures an epoch of the warm-up still.

        Examples:
            >>> warmed = TrialHistory(lr_scale=[1.0] * 3, lr_base_scale=[0.01, 1.0, 1.0])
            >>> warmed.reports_since_warm_up()
            2
            >>> TrialHistory(lr_scale=[1.0], lr_base_scale=[math.nan]).reports_since_warm_up()
            inf
        """
        bases, scales = self.lr_base_scale, self.lr_scale
        for back in range(len(bases)):
            base = bases[-1 - back]
            scale = scales[-1 - back] if back < len(scales) else math.nan
            if (
                math.isfinite(base)
                and base < WARMING_BELOW
                and not (math.isfinite(scale) and scale < 1.0 - 1e-9)
            ):
                return back
        return math.inf

    def truncate(self, reports: int) -> None:
        """Keep the first ``reports`` reports only (a trial restored from a checkpoint repeats
        the reports after it: those of the run it left are void).

        Examples:
            >>> trial = TrialHistory(layers=["fc"])
            >>> for acc in [0.5, 0.6, 0.7]:
            ...     trial.add(acc, {"fc": acc}, {}, {})
            >>> trial.truncate(1)
            >>> trial.metric, trial.per_layer["fc"].similarity
            ([0.5], [0.5])
        """
        del self.metric[reports:]
        del self.lr_scale[reports:]
        del self.lr_base_scale[reports:]
        del self.accuracy[reports:]
        self._decay_seen = (0, None)
        for history in self.per_layer.values():
            history.forget_after(reports)
        self.released = {n: at for n, at in self.released.items() if at <= reports}

    def add(
        self,
        metric: float,
        similarity: dict[str, float],
        init_similarity: dict[str, float],
        live: dict[str, float],
        lr_scale: float = math.nan,
        accuracy: float = math.nan,
        lr_base_scale: float = math.nan,
    ) -> None:
        """Append one report's values (missing ones become NaN); a layer's further calls
        (``fc#2``, a layer the forward pass calls twice) are kept beside it. ``accuracy``: see
        :attr:`accuracy`.

        Examples:
            >>> trial = TrialHistory(layers=["fc"])
            >>> trial.add(0.5, {"fc": 0.99, "fc#2": 0.9}, {}, {})
            >>> trial.per_layer["fc#2"].similarity, further_calls(trial, "fc")
            ([0.9], ['fc#2'])
        """
        self.metric.append(metric)
        self.lr_scale.extend([math.nan] * (self.reports - 1 - len(self.lr_scale)))
        self.lr_scale.append(lr_scale)
        self.accuracy.extend([math.nan] * (self.reports - 1 - len(self.accuracy)))
        self.accuracy.append(accuracy)
        self.lr_base_scale.extend([math.nan] * (self.reports - 1 - len(self.lr_base_scale)))
        self.lr_base_scale.append(lr_base_scale)
        layers = set(self.layers)
        calls = [
            n
            for values in (self.per_layer, similarity, init_similarity, live)
            for n in values
            if n not in layers and layer_of_call(n) in layers
        ]
        for name in dict.fromkeys([*self.layers, *calls]):
            history = self.per_layer.setdefault(name, LayerHistory())
            pad = self.reports - 1 - len(history.similarity)
            for series in (history.similarity, history.distance, history.live):
                series.extend([math.nan] * pad)
            history.similarity.append(similarity.get(name, math.nan))
            init = init_similarity.get(name, math.nan)
            history.distance.append(1.0 - init if math.isfinite(init) else math.nan)
            history.live.append(live.get(name, math.nan))


def further_calls(trial: TrialHistory, name: str) -> list[str]:
    """The keys of layer ``name``'s further calls in a forward pass (``fc#2``) that the trial
    reported values for.

    Examples:
        >>> trial = TrialHistory(layers=["fc", "out"])
        >>> trial.add(0.5, {"fc": 0.9, "fc#2": 0.8, "fc#3": 0.7, "out": 0.9}, {}, {})
        >>> further_calls(trial, "fc"), further_calls(trial, "out")
        (['fc#2', 'fc#3'], [])
    """
    return [n for n in trial.per_layer if n != name and layer_of_call(n) == name]


# ------------------------------------------------------------------------- metric units
#: How far apart a maximised metric's values in [0, 100] must lie to be read as a percentage:
#: a sweep in percent spans more than this (chance to learned); a metric that merely lies in
#: [0, 100] (a PSNR of 28-31 dB, a BLEU score of a fine-tuning sweep) spans less, and its
#: thresholds in hundreds would read every trial as making no progress.
PERCENT_SPREAD = 10.0


def metric_scale_of(series: list[list[float]], mode: str) -> float:
    """The scale of a sweep's metric: what the thresholds of :class:`ConvergenceRules`, set
    for an accuracy in [0, 1], are multiplied by to suit it.

    - A maximised metric whose values all lie in [0, 1] (an accuracy, a fraction): 1.
    - A maximised metric whose values all lie in [0, 100], some above 1, and lie at least
      :data:`PERCENT_SPREAD` apart (a percentage): 100.
    - Any other: the power of ten nearest the lower median, over the trials, of each trial's
      first finite value (in magnitude: where a loss starts; a diverged trial's later values
      do not count), but never above 1: a mean squared error that starts near 0.05 gets 0.1,
      while a cross-entropy (whichever its number of classes) or a reward keeps the thresholds
      as they are.
    - 1 when nothing finite has been reported. ``series`` holds each trial's values as
      reported (not signed).

    Examples:
        >>> metric_scale_of([[0.12, 0.81, 0.93], [0.1, 0.5]], "max")  # accuracies
        1.0
        >>> metric_scale_of([[12.0, 21.0, 23.0], [10.0, 15.0]], "max")  # in percent
        100.0
        >>> metric_scale_of([[0.052, 0.031, 0.015], [0.047, 0.04], [0.06, 0.02]], "min")
        0.1
        >>> metric_scale_of([[2.31, 0.6, 0.2], [0.48, 0.1], [2.3, 1e6, float("nan")]], "min")
        1.0
    """
    extents = [MetricSeries(values).extent() for values in series]
    return metric_scale_from([e for e in extents if e is not None], mode)


def metric_scale_from(
    extents: list[tuple[float, float, float]], mode: str, chances: Sequence[float] = ()
) -> float:
    """:func:`metric_scale_of` from each trial's first, lowest and highest finite value (as
    reported; trials without one left out). ``chances``: the chance levels the trials
    reported beside a maximised metric (``<metric>_chance``); one above 1 (and at most 100)
    is an accuracy's in percent, and so is the metric, whatever its spread (an imbalanced
    task's accuracies in percent spanned 89.4-94.0, less than :data:`PERCENT_SPREAD`, and were
    taken at a scale of 1: thresholds 100 times too small stopped two of FIFO's top 3).

    Examples:
        >>> metric_scale_from([(12.0, 12.0, 23.0), (10.0, 10.0, 15.0)], "max")
        100.0
        >>> metric_scale_from([(90.8, 90.8, 94.0), (91.2, 90.1, 93.5)], "max")
        1.0
        >>> metric_scale_from([(90.8, 90.8, 94.0), (91.2, 90.1, 93.5)], "max", [90.8])
        100.0
    """
    if mode == "max" and any(1.0 < c <= 100.0 for c in chances if math.isfinite(c)):
        return 100.0
    if not extents:
        return 1.0
    if mode == "max":
        if all(0.0 <= low and high <= 1.0 for _, low, high in extents):
            return 1.0
        spread = max(high for _, _, high in extents) - min(low for _, low, _ in extents)
        if spread >= PERCENT_SPREAD and all(
            0.0 <= low and high <= 100.0 for _, low, high in extents
        ):
            return 100.0
    firsts = sorted(abs(first) for first, _, _ in extents)
    lower_median = firsts[(len(firsts) - 1) // 2]
    if lower_median <= 0:
        return 1.0
    return float(min(1.0, 10.0 ** round(math.log10(lower_median))))


def in_units(rules: ConvergenceRules, scale: float) -> ConvergenceRules:
    """``rules`` with the thresholds that are in the metric's units (``min_delta``,
    ``stall_delta``, ``reach_within``) multiplied by ``scale`` (:func:`metric_scale_of`).

    Examples:
        >>> in_units(ConvergenceRules(), 100.0).stall_delta
        2.0
    """
    if scale == 1.0:
        return rules
    return replace(
        rules,
        min_delta=rules.min_delta * scale,
        stall_delta=rules.stall_delta * scale,
        reach_within=rules.reach_within * scale,
    )


# ------------------------------------------------------------------------------ freezing
def metric_swing(metric: list[float], window: int) -> float:
    """The largest change, either way, between consecutive finite values of the last
    ``window + 1`` reports (0 with fewer than two): how much this trial's metric still moves
    from one report to the next, by improving or by noise.

    Examples:
        >>> round(metric_swing([0.5, 0.9, 0.94, 0.91, 0.95], window=3), 6)
        0.04
        >>> metric_swing([0.5], window=3)
        0.0
    """
    recent = [m for m in metric[-(window + 1) :] if math.isfinite(m)]
    return max((abs(b - a) for a, b in itertools.pairwise(recent)), default=0.0)


def noise_band(trial: TrialHistory, rules: ConvergenceRules) -> float:
    """How far the trial's metric moves from one report to the next, as an allowance for noise:
    its :func:`metric_swing` over the last ``settle_window`` reports or the last half of its
    reports, whichever is longer (a few quiet reports of a noisy metric do not make it
    precise), and at least ``min_delta``.

    Examples:
        >>> trial = TrialHistory()
        >>> for acc in [0.80, 0.90, 0.93, 0.91, 0.93, 0.931, 0.932, 0.931]:
        ...     trial.add(acc, {}, {}, {})
        >>> round(noise_band(trial, ConvergenceRules()), 6)  # the last 3 alone: 0.001
        0.02
    """
    window = max(rules.settle_window, trial.reports // 2)
    return max(rules.min_delta, metric_swing(trial.metric, window))


def among_best(trial: TrialHistory, others_best: list[float], rules: ConvergenceRules) -> bool:
    """Whether the trial may still end among the ``protect_top`` best: fewer than
    ``protect_top`` other trials are ahead of its best by more than its :func:`noise_band`.

    ``others_best`` holds each other trial's best over as many reports as this trial has made
    (:func:`others_best_so_far`): a trial that started late (trials run a few at a time) is
    compared with where the others stood at the same point, not with where they ended (a
    trial before its learning-rate drop cannot match others after theirs).

    A trial whose metric still moves by a few points from one report to the next (noisy test
    accuracy, or still improving) and is within that much of the best trials can overtake them
    by the last report; ranking it by its best so far alone would freeze (and so perturb) the
    configuration that wins.

    Examples:
        >>> trial = TrialHistory()
        >>> for acc in [0.86, 0.93, 0.91, 0.94, 0.92]:  # swings by up to 3 points
        ...     trial.add(acc, {}, {}, {})
        >>> among_best(trial, [0.956, 0.951, 0.943], ConvergenceRules())  # 3rd within 3 points
        True
        >>> among_best(trial, [0.99, 0.98, 0.975], ConvergenceRules())  # all 3 further ahead
        False
    """
    own = trial.best()
    band = noise_band(trial, rules)
    ahead = sum(1 for best in others_best if best > own + band)
    return ahead < rules.protect_top


def earlier_phase(trial: TrialHistory, others: list[TrialHistory]) -> dict[str, float] | None:
    """Whether the trial is in an earlier phase of its schedule than a trial ahead of it: its
    learning rate has not decayed (``lr_scale`` above :data:`DECAYED` at its latest report)
    while another trial that had decayed its own by as many reports stands ahead of it (its
    best over those reports is better). Its plateau then is no final one: its own decay may
    still bring what the others' brought them (a swept schedule). Returns the values behind
    it, or None (also where the learning rates are not reported).

    Examples:
        >>> late = TrialHistory(metric=[0.80, 0.85, 0.86, 0.86], lr_scale=[1.0] * 4)
        >>> early = TrialHistory(metric=[0.80, 0.85, 0.93, 0.94], lr_scale=[1.0, 0.1, 0.1, 0.1])
        >>> earlier_phase(late, [early])
        {'lr_scale': 1.0, 'ahead_decayed': 0.94}
        >>> earlier_phase(early, [late]) is None  # decayed itself
        True
    """
    own = trial.lr_scale[-1] if trial.lr_scale else math.nan
    if not (math.isfinite(own) and own > DECAYED):
        return None
    reports = trial.reports
    mine = trial.best(reports)
    ahead = [
        best
        for other in others
        if other.decayed_by(reports) and (best := other.best(reports)) > mine
    ]
    return {"lr_scale": own, "ahead_decayed": max(ahead)} if ahead else None


def others_best_so_far_values(others: list[list[float]], reports: int) -> list[float]:
    """Each of ``others``' (metric series) best finite value over its first ``reports``
    reports, those without one left out.

    Examples:
        >>> others_best_so_far_values([[0.5, 0.9], [float("nan"), 0.4], []], 1)
        [0.5]
    """
    bests = [_best_after(series, reports) for series in others]
    return [b for b in bests if b != -math.inf]


def held_level(series: list[float], window: int) -> float | None:
    """The highest level ``series`` held: the best, over its runs of ``window`` consecutive
    finite values, of a run's lowest value; None with fewer than ``window`` finite values (a
    trial stopped or failed early held no level). One report of noise (a trial at chance that
    reads a few points above it once) is no level held; a trial that learned holds what it
    reached, a report behind.

    Examples:
        >>> held_level([0.111, 0.108, 0.111, 0.158, 0.111], 3)  # one noisy report
        0.111
        >>> held_level([0.2, 0.5, 0.7, 0.8], 3), held_level([0.158, float("nan")], 3)
        (0.5, None)
    """
    finite = [m for m in series if math.isfinite(m)]
    if len(finite) < window:
        return None
    return max(min(finite[i : i + window]) for i in range(len(finite) - window + 1))


def others_held_so_far(others: list[list[float]], reports: int, window: int) -> list[float]:
    """Each of ``others``' :func:`held_level` over its first ``reports`` reports, those that
    held none there left out.

    Examples:
        >>> others_held_so_far([[0.5, 0.9, 0.95, 0.9], [0.1, 0.4, 0.1], [0.9]], 4, 3)
        [0.9, 0.1]
    """
    levels = [_held_after(series, reports, window) for series in others]
    return [level for level in levels if level is not None]


def others_best_so_far(trial: TrialHistory, others: list[TrialHistory]) -> list[float]:
    """Each of ``others``' best over its first ``trial.reports`` reports (trials without a
    finite value there left out), for :func:`among_best`.

    Examples:
        >>> late, done = TrialHistory(), TrialHistory()
        >>> for acc in [0.5, 0.6]:
        ...     late.add(acc, {}, {}, {})
        >>> for acc in [0.55, 0.65, 0.9]:
        ...     done.add(acc, {}, {}, {})
        >>> others_best_so_far(late, [done])  # where it stood at report 2
        [0.65]
    """
    bests = [other.best(trial.reports) for other in others]
    return [b for b in bests if math.isfinite(b)]


def _improvement(metric: list[float], window: int) -> float:
    """Best of the last ``window`` values minus the best before them (+inf if too short)."""
    if len(metric) <= window:
        return math.inf
    before = [m for m in metric[:-window] if math.isfinite(m)]
    recent = [m for m in metric[-window:] if math.isfinite(m)]
    if not before or not recent:
        return math.inf
    return max(recent) - max(before)


def _longer_span(plateau: int) -> int:
    """The reports of the plateau test's longer look: ``2 * plateau + 2``.

    After a tenfold learning-rate drop a trial may climb by a fraction of ``min_delta`` per
    report, under one or two test images of noise: no new best above ``min_delta`` in
    ``plateau`` reports, and a mean that rises too little over ``plateau + 1``. Over this
    many reports a steady climb of ``min_delta / span`` per report or more gains more than
    ``min_delta`` where the noise lets it (a noisy high value before them can hide it, and a
    climb that started fewer reports ago is diluted by the flat ones before it: hence no
    freeze either while the learning rate changed within them); a flat trial does not.

    Examples:
        >>> _longer_span(2)
        6
    """
    return 2 * plateau + 2


def _lr_moved(lr_scale: list[float], span: int) -> float:
    """How far the learning rate moved over the last ``span`` reports and the one before
    them: the largest ``lr_scale`` over the smallest (1.0 where fewer than two are known).

    Examples:
        >>> _lr_moved([1.0, 1.0, 0.1, 0.1], 6)  # a tenfold drop
        10.0
        >>> _lr_moved([1.0, 0.1] + [0.1] * 7, 6)  # seven reports ago: out of sight
        1.0
        >>> _lr_moved([math.nan, math.nan], 6)  # not reported
        1.0
    """
    known = [s for s in lr_scale[-(span + 1) :] if math.isfinite(s) and s > 0]
    return max(known) / min(known) if len(known) > 1 else 1.0


def _trend(metric: list[float], window: int) -> float:
    """Mean of the last ``window`` finite values minus that of the ``window`` finite values
    before them (+inf while there are fewer than ``2 * window``: a trial too young to tell a
    climb from a plateau is still climbing): a climb that one noisy report or two dipped after
    still reads as one, where the best so far (:func:`_improvement`) sees a plateau. Values,
    not reports: a metric measured every few reports (``None`` between validations) is
    compared over as many values.

    Examples:
        >>> _trend([0.5, 0.7, 0.8, 0.8, 0.78, 0.79], 3)  # dipped after a climb: still rising
        0.1233333333333334
        >>> _trend([0.8, math.nan, 0.8, math.nan, 0.8, math.nan, 0.8], 2)  # every other report
        0.0
        >>> _trend([0.5, 0.7, 0.8, 0.8, 0.79], 3)  # five values: too few to compare 3 with 3
        inf
    """
    values = [m for m in metric if math.isfinite(m)]
    if window < 1 or len(values) < 2 * window:
        return math.inf
    before, recent = values[-2 * window : -window], values[-window:]
    return sum(recent) / window - sum(before) / window


def layer_settled(history: LayerHistory, rules: ConvergenceRules) -> tuple[bool, dict[str, float]]:
    """Whether one layer meets rules (1)-(4), and the values that decided it.

    "Stopped going further" is two conditions on the distance from initialisation ``d``: over
    the last ``settle_window`` reports it varied by at most ``settle_tol * d``, and it grew by at
    most ``settle_tol`` times the most it ever grew over as many reports (steady drift grows as
    fast now as ever; a converging layer slows down). Both need the distance at each of those
    reports and at the report before them (a layer unfrozen lately is judged once it has
    reported ``settle_window + 1`` distances since).

    Examples:
        >>> history = LayerHistory(
        ...     similarity=[0.9, 0.98, 0.99, 0.995, 0.996],
        ...     distance=[0.05, 0.09, 0.1, 0.1, 0.1],  # went some way, then stopped
        ...     live=[1.0] * 5,
        ... )
        >>> settled, values = layer_settled(history, ConvergenceRules())
        >>> settled, values["similarity"], values["distance_spread"]
        (True, 0.995, 0.0)
    """
    w = rules.settle_window
    sims = history.similarity[-rules.patience :]
    dists = history.distance[-w:]
    live = history.live[-1] if history.live else math.nan
    values: dict[str, float] = {}
    if len(sims) < rules.patience or len(dists) < w:
        return False, values
    if not all(math.isfinite(s) for s in sims) or not all(math.isfinite(d) for d in dists):
        return False, values
    # the growth over the last w reports needs the distance where they start (0 before the
    # first report): a layer frozen until lately has none there, and its latest growth would
    # be one from before the freeze
    start = len(history.distance) - w - 1
    if start >= 0 and not math.isfinite(history.distance[start]):
        return False, values
    recent, fastest = history.growths(w)
    values = {
        "similarity": min(sims),
        "distance_from_init": dists[-1],
        "distance_spread": max(dists) - min(dists),
        "recent_growth": recent,
        "fastest_growth": fastest,
        "live_fraction": live,
    }
    ok = (
        min(sims) >= rules.freeze_at
        and dists[-1] >= rules.min_travel
        and max(dists) - min(dists) <= rules.settle_tol * dists[-1]
        and recent <= rules.settle_tol * fastest
        and math.isfinite(live)
        and live > rules.dead_below
    )
    return ok, values


def freeze_candidates(
    trial: TrialHistory, rules: ConvergenceRules, input_side_first: bool = True
) -> list[Decision]:
    """The layers to freeze now, each with its reason (never the last trainable layer).

    Examples:
        >>> trial = TrialHistory(layers=["conv", "fc"])
        >>> for distance in [0.05, 0.09, 0.1, 0.1, 0.1, 0.1]:  # layers settle, the metric stalls
        ...     layers = {"conv": 0.995, "fc": 0.995}, {"conv": 1 - distance, "fc": 1 - distance}
        ...     trial.add(0.9, *layers, {"conv": 1.0, "fc": 1.0})
        >>> [(d.action, d.layer, d.rule) for d in freeze_candidates(trial, ConvergenceRules())]
        [('freeze', 'conv', 'converged')]
    """
    metric_values: dict[str, float] = {}
    if rules.plateau:  # (plateau=0: the layers' own signals alone decide)
        gain = _improvement(trial.metric, rules.plateau)
        trend = _trend(trial.metric, rules.plateau + 1)
        # a slow climb (after a learning-rate drop) gains less than min_delta over a few
        # reports but more over a longer look; a history too short for it has no such veto
        span = _longer_span(rules.plateau)
        longer = _improvement(trial.metric, span) if len(trial.metric) > span else -math.inf
        if gain > rules.min_delta or trend > rules.min_delta or longer > rules.min_delta:
            return []  # the trial still learns: leave every layer alone
        if _lr_moved(trial.lr_scale, span) >= LR_MOVED:
            return []  # its learning rate changed lately: a slow climb, not yet a plateau
        metric_values = {"metric_gain": gain, "metric_trend": trend}
        if math.isfinite(longer):
            metric_values["metric_gain_longer"] = longer
    if _near_chance(trial, rules):
        return []  # a trial at chance is one to stop, never to freeze
    if trial.reports_since_warm_up() <= rules.grace:
        return []  # layers barely move at a fraction of the rate: settled says nothing yet
    done = trial.frozen | trial.pending | trial.held
    checks: dict[str, tuple[bool, dict[str, float]]] = {}
    further: dict[str, list[str]] = {}  # further_calls of every layer, in one pass
    for call in trial.per_layer:
        if (layer := layer_of_call(call)) != call:
            further.setdefault(layer, []).append(call)

    def settled(name: str) -> bool:
        history = trial.per_layer.get(name)
        if name in trial.refused:  # the trial will not freeze it: a stop for the prefix
            return False
        released = trial.released.get(name)
        if released is not None and trial.reports - released < max(
            rules.settle_window, rules.patience
        ):
            # unfrozen at a learning-rate change: settled only on reports made after it
            return False
        checks[name] = layer_settled(history, rules) if history else (False, {})
        # a layer the forward pass calls more than once is settled only in every call: a
        # later call (after layers that still train) may still change
        return checks[name][0] and all(
            layer_settled(trial.per_layer[call], rules)[0] for call in further.get(name, [])
        )

    names = next_to_freeze(trial.layers, done, settled, input_side_first=input_side_first)
    reports = trial.reports
    return [
        Decision(
            "freeze",
            "converged",
            reports,
            name,
            {**checks[name][1], **metric_values},
        )
        for name in names
    ]


# ------------------------------------------------------------------------------- stopping
def stop_verdict(
    trial: TrialHistory,
    rules: ConvergenceRules,
    others: list[list[float]],
    budget: int | None,
    nonfinite: tuple[str, float] | None = None,
    earlier: Mapping[str, float] | None = None,
    accuracy_delta: float | None = None,
    bars: list[list[float]] | None = None,
) -> Decision | None:
    """Why to stop the trial now, or None.

    Args:
        trial: the trial's history, its latest report included.
        rules: thresholds.
        others: each other trial's (signed) metric, report by report so far.
        budget: the number of reports the trial would make if not stopped, when known.
        nonfinite: the name and value of a reported value that is NaN or infinite, if any
            (:func:`~ikkuna_tune.tune.results.first_nonfinite`).
        earlier: :func:`earlier_phase` of the trial, if it is in an earlier phase of its
            schedule than a trial ahead of it: then it is not stopped as behind (neither
            "no progress while others learned" nor "cannot reach the top"), since its own
            learning-rate decay may still bring what the others' brought them.
        accuracy_delta: ``stall_delta`` for the trial's :attr:`TrialHistory.accuracy` (as a
            fraction), to judge a trial steered on a metric without a chance level (a loss) as
            stuck where that accuracy is (:func:`accuracy_at_chance`); None: not judged so.
        bars: the series "cannot reach the top" takes its bar from (default: ``others``);
            the scheduler leaves out trials it stopped as diverged, which stay in ``others``
            for the rules that rank the trial among the rest.

    Examples:
        >>> trial = TrialHistory(layers=["fc"])
        >>> trial.add(0.1, {}, {}, {"fc": 0.0})  # no unit of fc varies over the probe set
        >>> stop_verdict(trial, ConvergenceRules(), others=[], budget=None).describe()
        'stop fc at report 1: dead layer (live_fraction=0)'
        >>> stop_verdict(trial, ConvergenceRules(), [], None, ("loss", math.inf)).describe()
        'stop at report 1: diverged: non-finite value (loss=inf)'
    """
    it = trial.reports
    if nonfinite is not None:
        return Decision("stop", "diverged: non-finite value", it, None, dict([nonfinite]))
    values_seen = sum(math.isfinite(m) for m in trial.metric)
    dead = []
    for name in trial.layers:
        history = trial.per_layer.get(name)
        live = history.live[-1] if history and history.live else math.nan
        if math.isfinite(live) and live <= rules.dead_below and name not in trial.frozen:
            dead.append((name, live))
    if dead:
        # a dead layer in a trial that learned (a residual branch whose units died, the skip
        # connection learning on) is no diverged trial: the best one had one. Unless the
        # output side's last layer is dead: the model then answers every input alike, and what
        # its metric gained is the classes' priors (a cross-entropy falling from 2.4 to 2.31)
        output_dead = dead[-1][0] == trial.layers[-1]
        # judged where its metric stands at this report, where it measures the metric (a
        # trial that fell to chance as the layer died is stopped there, not reports later
        # once its best over the last ones has fallen too); a report that does not measure it
        # decides nothing (validation every few epochs: the branch's trial may be learning)
        measured = bool(trial.metric) and math.isfinite(trial.metric[-1])
        learned = learned_so_far(trial, rules) if measured else True
        # (with one value and no chance level known, nothing shows where it stands yet)
        judged = math.isfinite(trial.chance) or values_seen >= 2
        fell = measured and judged and not stands_where_learned(trial, rules)
        if output_dead or fell or not learned:
            name, live = dead[-1] if output_dead else dead[0]
            return Decision("stop", "dead layer", it, name, {"live_fraction": live})
    if it <= rules.grace:
        return None
    if trial.reports_since_warm_up() <= rules.grace and (
        budget is None or it <= WARM_UP_SHARE * budget
    ):
        # at a fraction of its own rate (a warm-up, of another length than the others' in a
        # sweep over it), or out of it for no more reports than a trial's first grace: what
        # it does at its rate is not known yet, and a review's sweep over warm-up lengths
        # lost its best configuration, stopped at 1 % of its rate as behind trials whose
        # warm-up had ended; only divergence stops it (above). For WARM_UP_SHARE of a known
        # budget at most: a rate set by hand below the scheduler's reads as a warm-up too
        return None
    fell = _fell_to_chance(trial, rules, others)
    if fell is not None:
        return Decision("stop", "fell back to chance", it, None, fell)
    # a trial at chance that no other trial can be compared with (none has made as many
    # reports: it started first) is not stopped on its level alone: a late starter sits there
    # as long as a stuck one (recurrent nets at chance for 4-8 of 12 epochs, then learning,
    # ended as their sweep's best or among its top 3), and nothing tells them apart but the
    # trials it is compared with below
    first = next((m for m in trial.metric if math.isfinite(m)), math.nan)
    best = trial.best()
    progress = best - first
    stalled = math.isfinite(progress) and progress < rules.stall_delta - _tolerance(first, best)
    # no progress is read from settle_window values at least, as the rules below compare them
    # (one value, with validation every third epoch, has made no progress by construction)
    stalled = stalled and values_seen >= rules.settle_window
    # (where chance is known, only a trial at chance: one far above it that gains little while
    # its layers barely move is a fine-tuned model near its best, which still gains a point or
    # two by the end; a review's sweep of fine-tuning runs lost its best configuration when
    # every trial was stopped here at report 3)
    learned_above_chance = math.isfinite(trial.chance) and not _near_chance(trial, rules)
    # judged after stall_share of a known budget only, as a flat start is by the rules that
    # compare trials: a learning-rate warm-up (1 % of the rate for the first 3 of 10 epochs)
    # holds every layer as still as a rate too small to learn does, and a review's sweep of
    # such trials lost its best configuration and its top 3, each stopped at report 3
    # (and only where some other trial learned by as many reports: a flat start that is
    # everybody's, a warm-up longer than that share, says nothing of this trial)
    waited = budget is not None and it >= rules.stall_share * budget - _tolerance(budget)
    waited = waited and _others_learned(others, it, rules, first, trial.chance)
    if (
        stalled
        and waited
        and not learned_above_chance
        and not _moving(trial, rules)
        and not _contender(trial, rules, others)
    ):
        return Decision(
            "stop", "stuck: no progress and no layer moving", it, None, {"progress": progress}
        )
    # steered on a metric without a chance level (a loss, whose fall from a first epoch's
    # blow-up reads as progress), a trial is stuck where the accuracy beside it is: at chance
    # with no progress, while no layer moves, as one steered on that accuracy would be
    at_chance = accuracy_at_chance(trial, rules, accuracy_delta) if waited else None
    if at_chance is not None and not _moving(trial, rules) and not _contender(trial, rules, others):
        rule = "stuck: accuracy at chance and no layer moving"
        return Decision("stop", rule, it, None, at_chance)
    # the rules that compare a trial with the others judge it on settle_window values at least
    # (a metric reported at some reports only, validation every other epoch, has fewer than
    # reports: one dip among two values is no trend, and no value is no rate)
    if values_seen < rules.settle_window:
        return None
    window = rules.settle_window
    # a trial that may still end among the best is never stopped as behind: where it stands
    # (its best over its recent reports: one that collapsed stands where it fell) is within
    # its own noise of the third best other trial after as many reports (a noisy leader's
    # recent rate says little about where it ends)
    if _stands_among_best(trial, rules, others):
        return None
    if earlier is not None:  # behind trials that decayed, before its own decay
        return None
    held_so_far = sorted(others_held_so_far(others, it, window), reverse=True)
    if (
        stalled
        and budget is not None
        and it >= rules.stall_share * budget
        and len(held_so_far) >= rules.protect_top
    ):
        # at chance (say) for a good part of the budget while others had learned by then: its
        # layers may still drift, but a trial this far behind is not among the best. The others
        # are taken where they stood after as many reports, at the level they held there (over
        # settle_window reports: one noisy report of a trial at chance is no learning), and
        # must have made LEARNED_SHARE of their way by then: in a sweep whose trials all start
        # late (a long learning-rate warm-up), a flat start is everybody's, and says nothing yet
        target = held_so_far[rules.protect_top - 1]
        held = [lv for lv in (_held_after(s, None, window) for s in others) if lv is not None]
        final = sorted(held, reverse=True)[rules.protect_top - 1]
        learned = target - first >= LEARNED_SHARE * (final - first)
        # a yardstick still within stall_delta of chance (where known) has learned nothing
        chance_bar = trial.chance + rules.stall_delta
        if math.isfinite(chance_bar) and target <= chance_bar + _tolerance(chance_bar):
            learned = False
        if learned and best < target - rules.stall_delta - _tolerance(target, best):
            return Decision(
                "stop",
                "stuck: no progress while others learned",
                it,
                None,
                {"progress": progress, "best": trial.best(), "target": target},
            )
    bars = others if bars is None else bars
    verdict = _cannot_reach(trial, rules, others, budget, bars)
    if verdict is not None:
        # only where the reading before the latest value said so too: one value's reading (a
        # dip before a trial speeds up) is no verdict (a late starter, FIFO's third best at
        # 0.7643, was stopped at 0.1717); a report without a value (a metric measured every
        # other report) adds no reading; nor does the first reading a trial gets (at
        # stall_share of the budget, with no rate yet: a late starter's first gain may come
        # at the next value)
        latest = max(i for i, m in enumerate(trial.metric) if math.isfinite(m))
        # (the verdict reads the metric only: not a copy of every layer's history)
        previous = TrialHistory(
            layers=list(trial.layers),
            metric=list(trial.metric[:latest]),
            chance=trial.chance,
            lr_scale=trial.lr_scale[:latest],
        )
        if _cannot_reach(previous, rules, others, budget, bars) is None:
            return None
    return verdict


def learned_so_far(trial: TrialHistory, rules: ConvergenceRules) -> bool:
    """:func:`has_learned` once the trial has two values of its metric; with one, whether it
    stands more than ``stall_delta`` above a known chance level (a dead branch at the first
    report of a trial at 80 % is no divergence), and True where chance is unknown (one value
    shows no progress either way: the trial is judged at its next value).

    Examples:
        >>> rules = ConvergenceRules()
        >>> learned_so_far(TrialHistory(metric=[0.8], chance=0.1), rules)
        True
        >>> learned_so_far(TrialHistory(metric=[0.11], chance=0.1), rules)
        False
        >>> learned_so_far(TrialHistory(metric=[0.11]), rules)  # chance unknown: not yet
        True
    """
    values = [m for m in trial.metric if math.isfinite(m)]
    if len(values) >= 2:
        return has_learned(trial, rules)
    if not values:
        return False
    if not math.isfinite(trial.chance):
        return True
    return values[0] > trial.chance + rules.stall_delta


def has_learned(trial: TrialHistory, rules: ConvergenceRules) -> bool:
    """Whether the trial stands where it learned something: the best of its last
    ``settle_window`` values is more than ``stall_delta`` above its first value, and above
    chance by more than ``stall_delta`` where chance is known. A dead layer does not stop such
    a trial (a residual branch whose units died while the skip connection learns on; the best
    trial of a sweep had one), unless its metric at that report fell back
    (:func:`stop_verdict`): a diverged trial sits at chance, or fell back there, and is judged
    where it fell (a non-finite value is judged by :func:`divergence`, on the metric measured
    at its own report).

    Examples:
        >>> rules = ConvergenceRules()
        >>> has_learned(TrialHistory(metric=[0.3, 0.45, 0.6]), rules)
        True
        >>> has_learned(TrialHistory(metric=[0.111, 0.091, 0.118], chance=0.1), rules)
        False
        >>> has_learned(TrialHistory(metric=[0.3, 0.6, 0.1, 0.1, 0.1]), rules)  # fell back
        False
    """
    values = [m for m in trial.metric if math.isfinite(m)]
    if len(values) < 2:
        return False
    top = max(values[-rules.settle_window :])
    if math.isfinite(trial.chance) and top <= trial.chance + rules.stall_delta:
        return False
    return top - values[0] > rules.stall_delta - _tolerance(top, values[0])


def accuracy_at_chance(
    trial: TrialHistory, rules: ConvergenceRules, delta: float | None
) -> dict[str, float] | None:
    """Where a trial steered on a metric without a chance level of its own stands, when the
    accuracy it reports beside it (:attr:`TrialHistory.accuracy`) made no progress (its best
    less than ``delta`` above its first value) and the best of its last ``settle_window``
    values is within ``delta`` of its chance level; else None (also with fewer than
    ``settle_window`` values, with the chance level unknown, or when the metric has one).
    ``delta`` is a fraction; the accuracy reads as a percentage (``delta`` times 100) where its
    chance level or any of its values is above 1 (a chance level of 1 % among 100 classes).

    Examples:
        >>> trial = TrialHistory()
        >>> for loss, acc in [(-59.0, 0.1), (-2.4, 0.09), (-2.31, 0.11), (-2.3, 0.1)]:
        ...     trial.add(loss, {}, {}, {}, accuracy=acc)
        >>> trial.accuracy_chance = 0.1
        >>> accuracy_at_chance(trial, ConvergenceRules(), 0.02)
        {'accuracy': 0.11, 'accuracy_chance': 0.1}
        >>> trial.add(-1.2, {}, {}, {}, accuracy=0.6)  # it learns
        >>> accuracy_at_chance(trial, ConvergenceRules(), 0.02) is None
        True
    """
    chance = trial.accuracy_chance
    if delta is None or math.isfinite(trial.chance) or not math.isfinite(chance):
        return None
    values = [a for a in trial.accuracy if math.isfinite(a)]
    if len(values) < rules.settle_window:
        return None
    if chance > 1.0 or max(values) > 1.0:
        delta *= 100.0
    recent = max(values[-rules.settle_window :])
    if max(values) - values[0] >= delta - _tolerance(values[0], max(values)):
        return None  # it learned (and maybe fell back: the divergence rules' business)
    if recent > chance + delta + _tolerance(chance, recent):
        return None
    return {"accuracy": recent, "accuracy_chance": chance}


def _fell_to_chance(
    trial: TrialHistory, rules: ConvergenceRules, others: list[list[float]]
) -> dict[str, float] | None:
    """The values behind stopping a trial that learned and fell back to chance (its labels
    or inputs gone bad, a collapse with no NaN and no dead layer), or None: chance is known,
    the trial held a level more than ``stall_delta`` above it (over ``settle_window`` values in
    a row) before its last ``settle_window`` values, each of which is within ``stall_delta`` of
    it, while ``protect_top`` other trials that have made as many reports stand above that bar
    (each of their last ``settle_window`` values there). Its best before the fall kept it
    "among the best" (the best over its recent reports) for about as long again as it had
    learned.

    Examples:
        >>> rules = ConvergenceRules()
        >>> trial = TrialHistory(metric=[0.5, 0.9, 0.94, 0.12, 0.1, 0.11], chance=0.1)
        >>> others = [[0.5, 0.8, 0.9, 0.92, 0.93, 0.94]] * 3
        >>> _fell_to_chance(trial, rules, others)  # held 0.5 over its first three values
        {'best': 0.5, 'recent_best': 0.12, 'chance': 0.1}
        >>> _fell_to_chance(trial, rules, others[:2]) is None  # too few others learned
        True
    """
    if not math.isfinite(trial.chance):
        return None
    window = rules.settle_window
    values = [m for m in trial.metric if math.isfinite(m)]
    if len(values) <= window:
        return None
    bar = trial.chance + rules.stall_delta
    recent = values[-window:]
    # learned: a level held over settle_window values before the fall (one noisy report of a
    # late starter at chance is no learning)
    before = held_level(values[:-window], window)
    if max(recent) > bar + _tolerance(bar) or before is None or before <= bar + _tolerance(bar):
        return None
    # where the others stand after as many reports: the lowest of their last window values
    # (not the best level they ever held: a fall that is everybody's is no fault of this one);
    # one that has made fewer reports is not there yet, and says nothing
    standing = 0
    for series in others:
        if len(series) < trial.reports:
            continue
        theirs = [m for m in series[: trial.reports] if math.isfinite(m)][-window:]
        standing += len(theirs) == window and min(theirs) > bar + _tolerance(bar)
    if standing < rules.protect_top:
        return None
    return {"best": before, "recent_best": max(recent), "chance": trial.chance}


def _near_chance(trial: TrialHistory, rules: ConvergenceRules) -> bool:
    """Whether chance is known and the best of the trial's last ``settle_window`` values is
    within ``stall_delta`` of it (or no value is finite yet)."""
    if not math.isfinite(trial.chance):
        return False
    recent = [m for m in trial.metric[-rules.settle_window :] if math.isfinite(m)]
    return not recent or max(recent) <= trial.chance + rules.stall_delta


def stands_where_learned(
    trial: TrialHistory, rules: ConvergenceRules, latest: float | None = None
) -> bool:
    """Whether the trial's latest value stands where it learned: above chance by more than
    ``stall_delta`` where chance is known (a fine-tuned model that started high too), else more
    than ``stall_delta`` above its first value. Unlike :func:`has_learned`, a trial whose value
    fell back at its latest measurement does not.

    The latest value is the last of the trial's history, or ``latest`` when given: the value
    of a report the history does not hold (one between two that measure the layers). It must
    be finite: a value measured before is no evidence of where the trial stands now.

    Examples:
        >>> rules = ConvergenceRules()
        >>> stands_where_learned(TrialHistory(metric=[0.3, 0.6, 0.8]), rules)
        True
        >>> stands_where_learned(TrialHistory(metric=[0.9, 0.9, 0.91], chance=0.1), rules)
        True
        >>> stands_where_learned(TrialHistory(metric=[0.3, 0.6, 0.8, 0.1], chance=0.1), rules)
        False
        >>> stands_where_learned(TrialHistory(metric=[0.3, 0.6, 0.8, 0.2]), rules)
        False
        >>> stands_where_learned(TrialHistory(metric=[0.3, 0.6, 0.8, math.nan]), rules)
        False
        >>> stands_where_learned(TrialHistory(metric=[0.3, 0.6]), rules, latest=0.8)
        True
    """
    series = trial.metric if latest is None else [*trial.metric, latest]
    if not series or not math.isfinite(series[-1]):
        return False
    last = series[-1]
    if math.isfinite(trial.chance):
        return last > trial.chance + rules.stall_delta
    values = [m for m in series if math.isfinite(m)]
    return len(values) > 1 and last - values[0] > rules.stall_delta - _tolerance(last, values[0])


def divergence(
    nonfinite: tuple[str, float] | None,
    trial: TrialHistory,
    rules: ConvergenceRules,
    similarity_key: str,
    metric: str | None,
    collapsed: tuple[str, float] | None = None,
    latest: float | None = None,
) -> tuple[str, float] | None:
    """The non-finite value that stops ``trial`` as diverged, or None.

    ``collapsed`` (:func:`~ikkuna_tune.tune.results.network_nonfinite`: the weights, or every
    layer signal of this report, not finite) and ``metric`` (the scheduler's) always do. Any
    other non-finite value of the report (``nonfinite``, from
    :func:`~ikkuna_tune.tune.results.first_nonfinite`), one layer's similarity
    (``<similarity_key>/<layer>``) or a loss other than ``metric``, does not stop a trial whose
    metric at this same report :func:`stands_where_learned`: one batch whose loss overflowed (a
    step that a ``GradScaler`` skips) makes an epoch's mean loss NaN while training goes on as
    before (the best trial of a sweep was stopped on it, and the sweep's answer changed), and
    most of one layer's probe points may not be finite in a trial that learns on (the layer is
    not frozen on it either). Where the metric is not measured at this report (``latest``, for
    a report the history does not hold, or the history's last value, NaN), such a value stops
    nothing now: a trial whose weights diverged shows it at its next measured report (its
    metric, or every layer's signals, not finite, or its metric fallen back), and is stopped
    there, while a value measured before is no evidence of where it stands now. A trial with
    no value of the metric yet (none measured, or a metric it never reports) has nothing to
    vouch for it, and is stopped at once.

    Examples:
        >>> learned = TrialHistory(metric=[0.3, 0.6, 0.8], chance=0.1)
        >>> divergence(("sim/fc", math.nan), learned, ConvergenceRules(), "sim", "acc")
        >>> divergence(("loss", math.inf), learned, ConvergenceRules(), "sim", "acc")
        >>> fell = TrialHistory(metric=[0.3, 0.6, 0.8, 0.1], chance=0.1)
        >>> divergence(("loss", math.nan), fell, ConvergenceRules(), "sim", "acc")
        ('loss', nan)
        >>> divergence(("acc", math.nan), learned, ConvergenceRules(), "sim", "acc")
        ('acc', nan)
        >>> collapsed = ("weights_norm2/fc", math.nan)
        >>> divergence(None, learned, ConvergenceRules(), "sim", "acc", collapsed)
        ('weights_norm2/fc', nan)
        >>> divergence(("loss", math.nan), learned, ConvergenceRules(), "sim", "acc", latest=0.1)
        ('loss', nan)
        >>> divergence(("loss", math.nan), learned, ConvergenceRules(), "sim", "acc",
        ...            latest=math.nan)  # not measured at this report: judged when it is
        >>> unmeasured = TrialHistory(metric=[math.nan, math.nan])
        >>> divergence(("loss", math.nan), unmeasured, ConvergenceRules(), "sim", "acc")
        ('loss', nan)
    """
    if collapsed is not None:
        return collapsed
    if nonfinite is None or nonfinite[0] == metric or metric is None:
        return nonfinite  # (without a metric, nothing vouches for the trial)
    series = trial.metric if latest is None else [*trial.metric, latest]
    if not any(math.isfinite(m) for m in series):
        return nonfinite  # no value of the metric yet: nothing vouches for the trial
    if not math.isfinite(series[-1]):
        return None  # the metric is not measured at this report: judged where it is
    return None if stands_where_learned(trial, rules, latest) else nonfinite


def _stands_among_best(
    trial: TrialHistory, rules: ConvergenceRules, others: list[list[float]]
) -> bool:
    """Whether fewer than ``protect_top`` other trials, each at its best over as many reports
    as this one made, are ahead of where this one stands (its best over the last half of its
    reports, at least ``settle_window`` + 1) by more than its :func:`noise_band`."""
    it = trial.reports
    window = max(rules.settle_window, it // 2) + 1
    recent = [m for m in trial.metric[-window:] if math.isfinite(m)]
    if not recent:
        return False
    bar = max(recent) + noise_band(trial, rules)
    ahead = sum(1 for best in others_best_so_far_values(others, it) if best > bar)
    return ahead < rules.protect_top


def _cannot_reach(
    trial: TrialHistory,
    rules: ConvergenceRules,
    others: list[list[float]],
    budget: int | None,
    bars: list[list[float]] | None = None,
) -> Decision | None:
    """The "cannot reach the top ``protect_top``" verdict on the trial as it stands (see
    :func:`stop_verdict`), or None. The bar is taken from ``bars`` (default: ``others``);
    everything else from ``others``."""
    it = trial.reports
    bars = others if bars is None else bars
    others_best = [b for b in (_best_after(series) for series in others) if b != -math.inf]
    if budget is None or len(others_best) < rules.protect_top or it >= budget:
        return None
    if sum(math.isfinite(m) for m in trial.metric) < rules.settle_window:
        return None
    first = next((m for m in trial.metric if math.isfinite(m)), math.nan)
    best = trial.best()
    progress = best - first
    stalled = math.isfinite(progress) and progress < rules.stall_delta - _tolerance(first, best)
    so_far = sorted(others_best_so_far_values(others, it), reverse=True)
    # the bar: the protect_top-th best of where the others stand now, each at its latest
    # value (its best so far while it climbs): a trial that peaked and collapsed (0.63, then
    # dead at 0.07) is no bar, whether the sweep ranks trials by their best value or by
    # their last (Tune's default scope): a third-best trial at 0.2 was stopped as unable to
    # reach the collapsed trial's peak. What protects a trial (whether it has started, how
    # near the top counts as near) is still measured against the peaks, so that this bar,
    # never above the peaks' (a latest value is at most a best), stops no trial the peaks'
    # would have kept
    standing = [s for s in (_last_finite(series) for series in bars) if s is not None]
    if len(standing) < rules.protect_top:
        return None  # (fewer bars than others: those left out diverged)
    target = sorted(standing, reverse=True)[rules.protect_top - 1]
    peak = sorted(others_best, reverse=True)[rules.protect_top - 1]
    # a trial that has not yet started to learn has no rate to extrapolate: a late start
    # (chance level, or a loss at log(classes), for a few epochs, then learning: recurrent
    # nets, warm-up) looks the same as a stuck one until a share of the budget has passed,
    # and the stuck rules above wait for that share (then judge in the metric's units).
    # Started: it gained stall_delta and STARTED_SHARE of its way from its first value to
    # the peaks' bar
    started = not stalled and progress >= STARTED_SHARE * (peak - first)
    if not started and it < rules.stall_share * budget:
        return None
    # the last values reported, with the reports between them: a metric reported at some
    # reports only (validation every other epoch) gains per report, not per value
    values = [(i, m) for i, m in enumerate(trial.metric) if math.isfinite(m)]
    if stalled and values[-1][1] >= first - rules.stall_delta - _tolerance(first):
        # flat where it started: no rate to extrapolate, only a start to wait for; the stuck
        # rules judge it, against the level the others held after as many reports and not
        # while that level is at chance (a late starter on imbalanced data, at its 0.908
        # chance for 6 reports and then FIFO's third best at 0.936, was stopped here at rate
        # 0 while the others stood only 2 points above chance). One that fell back from its
        # start is judged here, where it fell.
        return None
    recent = values[-(rules.settle_window + 1) :]
    steps = [(b - a) / (j - i) for (i, a), (j, b) in itertools.pairwise(recent)]
    rate = max([0.0, *steps])
    remaining = budget - it
    gain = rate * remaining
    if _speeding_up(steps):
        # a straight line under-reads a curve still speeding up (a loss flat at
        # log(classes) for a few epochs, then falling fast): its gains are taken to keep
        # growing by as much as they last grew, report after report
        growth = steps[-1] - max([0.0, *steps[:-1]])
        gain += growth * remaining * (remaining + 1) / 2
    # a trial close to the target is not judged by its rate: a few reports of noise, a
    # plateau before a learning-rate drop, read as no rate at all, and the top of the
    # sweep is where its answer lies (how the good trials compare). Close: where it stands
    # now (its best over its recent reports: a trial that fell back is where it fell) is
    # within twice its noise of the target, or within reach_margin of its way to the peaks'
    # bar from its first value and reach_within of the target
    window = max(rules.settle_window, it // 2) + 1  # reports, not values (sparse metrics)
    level = max((m for i, m in values if i >= it - window), default=values[-1][1])
    near = max(
        min(2 * noise_band(trial, rules), 2 * rules.reach_within),
        min(rules.reach_margin * (peak - first), rules.reach_within),
    )
    # where the others stood after as many reports (so_far): a trial level with them there
    # follows their course later (trials run a few at a time, each with its learning-rate
    # drop to come), not a worse one
    level_with_others = (
        len(so_far) >= rules.protect_top and level >= so_far[rules.protect_top - 1] - near
    )
    reachable = level + rules.optimism * gain
    if reachable < target and target - level > near and not level_with_others:
        return Decision(
            "stop",
            f"cannot reach the top {rules.protect_top}",
            it,
            None,
            {
                "best": trial.best(),
                "recent_best": level,
                "reachable": reachable,
                "target": target,
                "margin": near,
            },
        )
    return None


def _speeding_up(steps: list[float]) -> bool:
    """Whether the latest of ``steps`` (gains per report, oldest first) is a gain larger than
    each before it (beyond rounding): the curve has shown no slowing down yet.

    Examples:
        >>> _speeding_up([0.011, 0.022]), _speeding_up([0.01, 0.01]), _speeding_up([0.2, 0.0])
        (True, False, False)
    """
    if not steps or steps[-1] <= 0:
        return False
    last = steps[-1]
    return all(last > s and not math.isclose(last, s, rel_tol=1e-9) for s in steps[:-1])


def _contender(trial: TrialHistory, rules: ConvergenceRules, others: list[list[float]]) -> bool:
    """Whether a trial that looks stuck is a contender all the same: :func:`among_best`
    against ``others``' metrics over as many reports as it made, and either ahead of all of
    them (by however little) while another trial has gained ``stall_delta`` (the others learn
    towards where it stands: a fine-tuned leader), or ahead of one of them by more than its
    swing (a trial as flat as others at chance outranks none of them, leading by noise).
    False with fewer than ``protect_top`` others to rank it among (as the rules that compare
    trials, it needs them: in a sweep of 3 trials every trial is among the best 3)."""
    at = trial.reports
    # each other trial's best over its first `at` reports, and its first finite value
    seen = [(b, _first_finite(o)) for o in others if (b := _best_after(o, at)) != -math.inf]
    bests = [b for b, _ in seen]
    if len(bests) < rules.protect_top or not among_best(trial, bests, rules):
        return False
    own = trial.best()
    band = noise_band(trial, rules)
    others_learn = any(b - f0 >= rules.stall_delta - _tolerance(b, f0) for b, f0 in seen)
    return (own > max(bests) and others_learn) or any(own > best + band for best in bests)


def _others_learned(
    others: list[list[float]],
    reports: int,
    rules: ConvergenceRules,
    first: float,
    chance: float = math.nan,
) -> bool:
    """Whether some other trial learned over its first ``reports`` reports, as the rule "no
    progress while others learned" reads it: the level it held there (:func:`held_level`,
    over ``settle_window`` values in a row: one noisy report is no learning) is
    ``stall_delta`` above ``first`` (where the trial judged started) and, where the
    ``chance`` level is known, above it by as much.

    >>> rules = ConvergenceRules()
    >>> _others_learned([[0.1, 0.1, 0.1], [0.1, 0.13, 0.15, 0.16]], 4, rules, first=0.1)
    True
    >>> _others_learned([[0.1, 0.1, 0.1], [0.1, 0.13, 0.15, 0.16]], 3, rules, 0.1)  # held 0.1
    False
    >>> _others_learned([[0.1, 0.1, 0.1], [0.1, 0.13, 0.15, 0.16]], 4, rules, 0.1, chance=0.12)
    False
    """
    bar = chance + rules.stall_delta
    return any(
        held - first >= rules.stall_delta - _tolerance(held, first)
        and not (math.isfinite(bar) and held <= bar + _tolerance(bar))
        for held in others_held_so_far(others, reports, rules.settle_window)
    )


def _moving(trial: TrialHistory, rules: ConvergenceRules) -> bool:
    """Whether some live, unfrozen layer's distance from initialisation still changes."""
    for name in trial.layers:
        if name in trial.frozen:
            continue
        history = trial.per_layer.get(name)
        if history is None:
            return True  # unknown: assume it moves
        dists = [d for d in history.distance[-max(2, rules.settle_window) :] if math.isfinite(d)]
        if len(dists) < 2 or max(dists) - min(dists) > rules.move_tol:
            return True
    return False
