"""Convergence decisions on synthetic per-layer trajectories (no Ray)."""

from __future__ import annotations

import math
import random

import pytest

from ikkuna_tune.tune.convergence import (
    STARTED_SHARE,
    ConvergenceRules,
    Decision,
    TrialHistory,
    _cannot_reach,
    among_best,
    freeze_candidates,
    in_units,
    metric_scale_of,
    metric_swing,
    noise_band,
    stop_verdict,
)

RULES = ConvergenceRules()
LAYERS = ["first", "middle", "head"]
# The arithmetic of "cannot reach the top 3" at one report is tested on ``_cannot_reach``;
# ``stop_verdict`` stops on it only when it also held at the report before (see
# test_cannot_reach_is_a_verdict_of_two_reports_in_a_row).


def history(reports: list[tuple[float, dict[str, tuple[float, float, float]]]]) -> TrialHistory:
    """Reports of (metric, {layer: (svcca to last, CKA to init, live fraction)})."""
    trial = TrialHistory(layers=list(LAYERS))
    for metric, layers in reports:
        trial.add(
            metric,
            {n: v[0] for n, v in layers.items()},
            {n: v[1] for n, v in layers.items()},
            {n: v[2] for n, v in layers.items()},
        )
    return trial


def plateau_metric(n: int) -> list[float]:
    return [0.9 + 0.05 * min(i, 2) / 2 for i in range(n)]  # learns, then flat at 0.95


def test_converged_prefix_is_frozen_with_its_reason() -> None:
    # the first layer came 0.2 from its initialisation and then stayed there
    reports = [
        (m, {"first": (0.999, 0.8, 1.0), "middle": (0.9, 0.5, 1.0), "head": (0.999, 0.4, 1.0)})
        for m in plateau_metric(9)
    ]
    chosen = freeze_candidates(history(reports), RULES)
    assert [d.layer for d in chosen] == ["first"]
    assert chosen[0].values["distance_from_init"] == 0.19999999999999996
    assert chosen[0].rule == "converged"


def test_a_layer_called_twice_is_frozen_only_once_both_calls_settled() -> None:
    # 'first' is also called after 'middle' ('first#2'): its second call still changes
    settled = (0.999, 0.8, 1.0)
    moving = [(0.9, 1.0 - 0.05 * (i + 1), 1.0) for i in range(9)]
    reports = [
        (m, {"first": settled, "first#2": moving[i], "middle": settled, "head": settled})
        for i, m in enumerate(plateau_metric(9))
    ]
    trial = history(reports)
    assert trial.per_layer["first#2"].similarity == [0.9] * 9
    assert freeze_candidates(trial, RULES) == []
    both = [(m, {**layers, "first#2": settled}) for m, layers in reports]
    assert [d.layer for d in freeze_candidates(history(both), RULES)] == ["first", "middle"]


def test_slow_steady_drift_is_not_frozen() -> None:
    # a small learning rate: each epoch changes little (SVCCA 0.9999) but the layer keeps
    # travelling away from its initialisation at a steady pace
    reports = [
        (m, {n: (0.9999, 1.0 - 0.03 * (i + 1), 1.0) for n in LAYERS})
        for i, m in enumerate(plateau_metric(12))
    ]
    assert freeze_candidates(history(reports), RULES) == []


def test_a_slow_climb_under_noise_is_not_frozen_and_a_flat_trial_is() -> None:
    """After a learning-rate drop a trial may climb 0.0015 per report under noise of 0.0028
    (about a test image of digits): over two or three reports that reads as a plateau
    (checked here on the plain definitions: no new best above min_delta, no rise of the mean
    above it), over six it gains 0.009. The same noise on a flat trial is frozen."""
    noise = [0.0, 0.0028, -0.0028, 0.0]
    climb = [0.9 + 0.0015 * i + noise[i % 4] for i in range(16)]
    flat = [0.9 + noise[i % 4] for i in range(16)]
    settled = dict.fromkeys(LAYERS, (0.999, 0.8, 1.0))

    def short_look_sees_a_plateau(m: list[float]) -> bool:
        gain = max(m[-2:]) - max(m[:-2])
        trend = sum(m[-3:]) / 3 - sum(m[-6:-3]) / 3
        return gain <= RULES.min_delta and trend <= RULES.min_delta

    short_plateaus = [n for n in range(7, 17) if short_look_sees_a_plateau(climb[:n])]
    assert len(short_plateaus) >= 4  # the two- and three-report look alone would freeze it
    for n in range(1, 17):
        assert freeze_candidates(history([(m, settled) for m in climb[:n]]), RULES) == [], n
    chosen = freeze_candidates(history([(m, settled) for m in flat[:12]]), RULES)
    assert [d.layer for d in chosen] == ["first", "middle"]
    # six reports whose best (0.9028) stands 0.0 above the best of the six before
    assert chosen[0].values["metric_gain_longer"] == pytest.approx(0.0)


def test_nothing_freezes_within_the_longer_look_after_a_learning_rate_change() -> None:
    """A slow climb that starts with a tenfold learning-rate drop is diluted by the flat
    reports before the drop in every window the plateau test looks at (here it reads as a
    plateau throughout), so for ``2 * plateau + 2`` reports after a change of the rate by a
    factor of 2 or more, either way, nothing freezes; a change by less, or a rate never
    reported, holds nothing back."""
    settled = dict.fromkeys(LAYERS, (0.999, 0.8, 1.0))
    flat = [0.9] * 16

    def freezes_at(scales: list[float]) -> list[int]:
        """The reports at which the layers would be frozen (each judged on its own)."""
        at = []
        for n in range(1, 17):
            trial = TrialHistory(layers=list(LAYERS))
            for metric, scale in zip(flat[:n], scales[:n], strict=True):
                values = ({k: v[i] for k, v in settled.items()} for i in range(3))
                trial.add(metric, *values, lr_scale=scale)
            if freeze_candidates(trial, RULES):
                at.append(n)
        return at

    span = 2 * RULES.plateau + 2
    always = list(range(6, 17))  # (the short look alone: a plateau from report 6 on)
    assert freezes_at([1.0] * 16) == always
    assert freezes_at([math.nan] * 16) == always
    drop = [1.0] * 8 + [0.1] * 8  # the rate falls tenfold at report 9
    held = list(range(9, 9 + span))  # reports 9-14 see the change
    assert freezes_at(drop) == [n for n in always if n not in held]
    restart = [0.1] * 8 + [1.0] * 8  # a warm restart: as much a change
    assert freezes_at(restart) == [n for n in always if n not in held]
    assert freezes_at([1.0] * 8 + [0.6] * 8) == always  # by less than a factor of 2


def test_widening_layer_at_initialisation_is_not_frozen_on_similarity_alone() -> None:
    # SVCCA reads 1.0 for an invertible linear map of the input whatever the weights; CKA to
    # initialisation shows the layer has not moved at all
    reports = [(m, {n: (1.0, 1.0, 1.0) for n in LAYERS}) for m in plateau_metric(9)]
    assert freeze_candidates(history(reports), RULES) == []


def test_nothing_freezes_while_the_trial_still_improves() -> None:
    reports = [(0.1 * i, {n: (0.999, 0.8, 1.0) for n in LAYERS}) for i in range(1, 9)]
    assert freeze_candidates(history(reports), RULES) == []


@pytest.mark.parametrize(
    "curve",
    [
        # two held-out trials (digits; Adam, 6 hidden layers; Adam with weight decay 0.03)
        # that were frozen here on a two-report plateau of their best and then ended 3.0 and
        # 2.7 points below their runs without freezing (0.902 and 0.933 there)
        [0.094, 0.195, 0.468, 0.653, 0.683, 0.784, 0.835, 0.791, 0.808],
        [0.518, 0.623, 0.801, 0.832, 0.842, 0.889, 0.852, 0.879],
    ],
)
def test_a_climb_that_dipped_for_two_reports_still_learns(curve: list[float]) -> None:
    settled = {n: (0.999, 0.8, 1.0) for n in LAYERS}
    trial = history([(m, settled) for m in curve])
    # no new best in the last two reports: the best so far reads a plateau...
    assert max(curve[-2:]) <= max(curve[:-2])
    # ...but the mean of the last three stands well above that of the three before
    assert sum(curve[-3:]) / 3 - sum(curve[-6:-3]) / 3 > 0.04
    assert freeze_candidates(trial, RULES) == []
    # once it has stayed level for six reports, its settled prefix freezes
    level = max(curve)
    flat = history([(m, settled) for m in [*curve, *[level] * 6]])
    chosen = freeze_candidates(flat, RULES)
    assert [d.layer for d in chosen] == ["first", "middle"]
    assert chosen[0].values["metric_trend"] == 0.0


@pytest.mark.parametrize("every", [5, 6, 10])
def test_a_metric_measured_every_few_reports_still_lets_a_plateau_freeze(every: int) -> None:
    # validation every few reports (NaN between): the trend compares the last values, not the
    # last reports, which would often hold none
    settled = {n: (0.999, 0.8, 1.0) for n in LAYERS}
    metric = [0.9 if (i + 1) % every == 0 else math.nan for i in range(6 * every)]
    chosen = freeze_candidates(history([(m, settled) for m in metric]), RULES)
    assert [d.layer for d in chosen] == ["first", "middle"]
    assert chosen[0].values["metric_trend"] == 0.0
    # the same values still climbing are not frozen
    climbing = [0.5 + 0.05 * (i // every) if not math.isnan(m) else m for i, m in enumerate(metric)]
    assert freeze_candidates(history([(m, settled) for m in climbing]), RULES) == []


def test_dead_layer_stops_the_trial_and_is_not_frozen() -> None:
    reports = [(0.95, {"first": (1.0, 0.8, 1.0), "middle": (1.0, 0.0, 0.0), "head": (1.0, 0.5, 1)})]
    trial = history(reports * 6)
    verdict = stop_verdict(trial, RULES, [], None)
    assert verdict is not None and verdict.rule == "dead layer" and verdict.layer == "middle"
    assert [d.layer for d in freeze_candidates(trial, RULES)] == ["first"]  # middle blocks


def test_a_dead_layer_stops_a_trial_that_learned_only_where_the_output_is_dead() -> None:
    """A trial whose metric rose: a dead middle layer (a residual branch whose units died) does
    not stop it; a dead last layer does, since the model then answers every input alike and
    what its metric gained is the classes' priors (a diverging CNN's cross-entropy fell from
    2.4 to 2.31 with its fc layers dead, and ran past half its budget)."""
    alive, dead = (1.0, 0.5, 1.0), (1.0, 0.5, 0.0)
    rising = [0.3, 0.4, 0.5, 0.6]
    branch = history([(m, {"first": alive, "middle": dead, "head": alive}) for m in rising])
    assert stop_verdict(branch, RULES, [], None) is None
    output = history([(m, {"first": alive, "middle": dead, "head": dead}) for m in rising])
    verdict = stop_verdict(output, RULES, [], None)
    assert verdict is not None and (verdict.rule, verdict.layer) == ("dead layer", "head")


def test_nan_stops_with_the_key_that_was_not_finite() -> None:
    trial = history([(math.nan, {n: (0.5, 0.5, 1.0) for n in LAYERS})])
    verdict = stop_verdict(trial, RULES, [], None, nonfinite=("acc", math.nan))
    assert verdict is not None and verdict.rule.startswith("diverged")
    assert "acc=nan" in verdict.describe()


def test_ties_with_the_protected_trials_are_not_stopped() -> None:
    # a trial that can just reach the third best value is kept (the comparison is strict)
    reports = [(0.5 + 0.01 * i, {n: (0.9, 0.5 - 0.05 * i, 1.0) for n in LAYERS}) for i in range(4)]
    trial = history(reports)
    reachable = 0.53 + 3 * 0.01 * (10 - 4)
    assert stop_verdict(trial, RULES, [[0.99], [0.98], [reachable]], 10) is None
    assert _cannot_reach(trial, RULES, [[0.99], [0.98], [reachable + 1e-9]], 10) is not None


def test_a_metric_reported_at_every_other_report_gains_per_report() -> None:
    """Validation every other epoch: the reports between carry no value (NaN). Its rate is
    what it gains per report over the reports between two values, as for a trial that reports
    the same progress at every report; it was 0 (every difference touched a NaN)."""
    nan = math.nan
    sparse = _drifting([0.1, nan, 0.3, nan, 0.5])
    dense = _drifting([0.1, 0.2, 0.3, 0.4, 0.5])
    # best 0.5 at report 5 of 10, gaining 0.1 a report: 0.5 + 3 * 0.1 * 5 = 2.0 reachable,
    # against the third best of the others
    assert RULES.protect_top == 3 and RULES.optimism == 3
    for trial in (sparse, dense):
        assert stop_verdict(trial, RULES, [[2.5], [2.5], [1.99]], 10) is None
        stop = _cannot_reach(trial, RULES, [[2.5], [2.5], [2.01]], 10)
        assert stop is not None and stop.values["reachable"] == pytest.approx(2.0)


def _steady(*values: float, reports: int = 12) -> list[list[float]]:
    """Other trials that reported each of ``values`` all along (a level held)."""
    return [[value] * reports for value in values]


def _drifting(metrics: list[float]) -> TrialHistory:
    """A trial whose metric is ``metrics`` while every layer keeps moving away from its
    initialisation (so it never counts as 'no layer moving')."""
    return history(
        [(m, {n: (0.9, 0.9 - 0.05 * i, 1.0) for n in LAYERS}) for i, m in enumerate(metrics)]
    )


def test_stuck_at_chance_while_others_learned_stops_after_a_third_of_the_budget() -> None:
    # noisy enough that "cannot reach the top 3" (3x its best recent step) keeps it running
    at_chance = [0.1, 0.1, 0.115, 0.1, 0.115, 0.1]
    others = _steady(0.9, 0.85, 0.4)
    verdicts = [
        stop_verdict(_drifting(at_chance[:it]), RULES, others, budget=12) for it in range(1, 7)
    ]
    assert verdicts[:3] == [None, None, None]  # 3 reports: under a third of 12
    stop = verdicts[3]
    assert stop is not None and stop.rule == "stuck: no progress while others learned"
    assert stop.iteration == 4 and stop.values["target"] == 0.4
    assert "progress=0.015" in stop.describe()


def test_a_stalled_trial_is_kept_when_nobody_is_far_ahead() -> None:
    """Fine-tuning: every trial starts near its best and gains little; none is stopped."""
    flat = [0.95, 0.951, 0.952, 0.952, 0.953, 0.953]
    assert stop_verdict(_drifting(flat), RULES, _steady(0.96, 0.955, 0.954), budget=12) is None
    # within stall_delta of the third best other trial: kept too
    noisy = [0.1, 0.1, 0.115, 0.1, 0.115, 0.1]
    assert stop_verdict(_drifting(noisy), RULES, _steady(0.9, 0.5, 0.13), budget=12) is None
    assert stop_verdict(_drifting(noisy), RULES, _steady(0.9, 0.5, 0.1351), budget=12) is not None


@pytest.mark.parametrize("scale, n, low, high", [(1.0, 400, 85, 93), (100.0, 300, 50, 56)])
def test_a_gain_of_exactly_stall_delta_in_float32_is_progress(
    scale: float, n: int, low: int, high: int
) -> None:
    """93/400 - 85/400 is 0.02, but 0.019999996 from float32 accuracies (56/300 - 50/300 in
    percent, 1.9999981): progress all the same (the rule says "less than stall_delta"), while
    a gain a hair less is none. The metric's units are the rules' (``scale``)."""
    import torch

    rules = ConvergenceRules(
        stall_delta=0.02 * scale, min_delta=0.005 * scale, reach_within=0.05 * scale
    )
    # accuracies in float32, then in the metric's units (float32 arithmetic too)
    first, best = (float(torch.tensor(k / n, dtype=torch.float32) * scale) for k in (low, high))
    assert best - first < 0.02 * scale  # what float32 makes of it
    others = _steady(0.9 * scale, 0.85 * scale, 0.82 * scale)
    gained = [first, first, best, first, best, first]
    verdict = stop_verdict(_drifting(gained), rules, others, budget=12)
    # (another rule may still stop it: it cannot reach the top 3 at that pace)
    assert verdict is None or not verdict.rule.startswith("stuck"), verdict
    short = [first, first, best - 1e-4 * scale, first, best - 1e-4 * scale, first]
    stop = stop_verdict(_drifting(short), rules, others, budget=12)
    assert stop is not None and stop.rule == "stuck: no progress while others learned"


def test_a_slow_starter_that_progresses_or_an_unknown_budget_is_not_stopped_as_stuck() -> None:
    slow = [0.08, 0.07, 0.1, 0.145, 0.2, 0.34]  # digits CNN at lr 0.01: 3rd best in the end
    assert stop_verdict(_drifting(slow), RULES, [[0.9], [0.85], [0.8]], budget=12) is None
    assert stop_verdict(_drifting([0.1] * 6), RULES, [[0.9], [0.85], [0.8]], budget=None) is None
    # fewer than protect_top other trials: nothing to compare with
    assert stop_verdict(_drifting([0.1] * 6), RULES, [[0.9], [0.85]], budget=12) is None


def _at_chance_trial(metrics: list[float], chance: float = 0.1) -> TrialHistory:
    trial = _drifting(metrics)
    trial.chance = chance
    return trial


def test_a_flat_start_while_the_others_had_not_learned_either_is_not_stuck() -> None:
    """A long learning-rate warm-up: every trial sat near chance for its first reports. Where
    the others stood after 4 reports (0.18 at most) is a small part of their way to where they
    ended: the flat trial is not stopped as stuck while others learned, as it is once the
    others had learned by that report."""
    flat = [0.111, 0.111, 0.111, 0.125]  # a warm-up of half the budget: ends at 0.956
    late = [
        [0.111, 0.111, 0.088, 0.253, 0.596, 0.697, 0.81, 0.85, 0.88, 0.9],
        [0.111, 0.111, 0.135, 0.094, 0.384, 0.71, 0.835, 0.899, 0.87, 0.9],
        [0.111, 0.111, 0.111, 0.178, 0.074, 0.303, 0.633, 0.838, 0.889, 0.926],
    ]
    assert stop_verdict(_drifting(flat), RULES, late, budget=12) is None
    early = [[0.4, 0.7, 0.8, 0.85, 0.88, 0.9]] * 3  # had learned by report 4
    stop = stop_verdict(_drifting(flat), RULES, early, budget=12)
    assert stop is not None and stop.rule == "stuck: no progress while others learned"
    # where they stood after 4 reports (the level held over 3 of them), not where they ended
    assert stop.values["target"] == 0.7


#: A recurrent net (an LSTM reading digits row by row, Adam) at chance for 5 of 12 epochs, then
#: learning: its sweep's best configuration under FIFO (chance 0.1178, the test set's most
#: frequent class).
LATE_STARTER = [0.0707, 0.0774, 0.0774, 0.0741, 0.1178, 0.3199, 0.4141, 0.4377, 0.4377, 0.5556]


def test_a_lone_trial_at_chance_is_not_stopped_on_its_level_alone() -> None:
    """No other trial to compare it with (it started first): a late starter at chance for a
    third of its budget and more runs on, whatever its level (it was stopped at report 4 as
    "stuck at chance", and the sweep's best configuration changed)."""
    for it in range(1, len(LATE_STARTER) + 1):
        trial = _at_chance_trial(LATE_STARTER[:it], chance=0.1178)
        assert stop_verdict(trial, RULES, [], 12) is None, it
        # trials that have not made as many reports, learned or not, change nothing
        shorter = [[0.5, 0.6, 0.7], [0.1, 0.1]]
        assert stop_verdict(trial, RULES, shorter, 12) is None, it
    flat = [0.05, 0.06, 0.055, 0.06, 0.07, 0.06, 0.06, 0.065]  # stuck for good: the same
    assert stop_verdict(_at_chance_trial(flat), RULES, [], 12) is None


def test_a_trial_at_chance_is_stopped_once_three_others_learned_by_as_many_reports() -> None:
    """The late starter among trials that had learned most of their way after as many
    reports: behind the third best of them by far more than stall_delta at a third of the
    budget, it is stopped ("stuck: no progress while others learned"); among fewer than
    protect_top others that learned, it may still end among the best and runs on."""
    trial = _at_chance_trial(LATE_STARTER[:4], chance=0.1178)
    learned = [[0.5, 0.8, 0.85, 0.9, 0.92]] * 3
    stop = stop_verdict(trial, RULES, learned, 12)
    assert stop is not None and stop.rule == "stuck: no progress while others learned"
    assert stop.iteration == 4 and stop.values["target"] == 0.8  # held over 3 reports
    assert stop_verdict(trial, RULES, learned[:2], 12) is None
    # others that sat at chance as long (a task slow to start for everybody): kept
    slow = [[0.07, 0.08, 0.07, 0.08, 0.3, 0.6]] * 3
    assert stop_verdict(trial, RULES, slow, 12) is None


def test_a_trial_at_chance_beside_fewer_than_protect_top_others_is_left_running() -> None:
    """Another trial as far (at chance too, or learned), or one not as far but at chance too:
    with fewer than protect_top trials ahead it may still end among the best of a sweep whose
    other trials diverge."""
    flat = [0.1, 0.1, 0.11, 0.105]
    for other in ([0.1] * 4, [0.2, 0.3, 0.4, 0.5], [0.1, 0.11]):
        assert stop_verdict(_at_chance_trial(flat), RULES, [other], 12) is None


def test_a_late_starter_is_not_extrapolated_from_its_flat_start() -> None:
    """A recurrent net at chance for three epochs, then learning (FIFO: 0.703 in the end, the
    sweep's third best): with no gain since its first report it has no rate to extrapolate, so
    "cannot reach the top 3" waits, as the stuck rules do, for a share of the budget. Once it
    gains, its rate is measured; a trial that gained and then stopped gaining is judged at
    once."""
    late = [0.143, 0.105, 0.108, 0.213, 0.22, 0.291]
    others = _steady(0.93, 0.933, 0.377)
    assert RULES.stall_share * 12 > 3
    for it in range(1, 7):
        assert stop_verdict(_drifting(late[:it]), RULES, others, budget=12) is None, it
    # still flat at a third of the budget: now stuck while others learned
    flat = [0.143, 0.105, 0.108, 0.11]
    stop = stop_verdict(_drifting(flat), RULES, others, budget=12)
    assert stop is not None and stop.rule == "stuck: no progress while others learned"
    # learned, then stalled before a third of the budget: its rate (0 over the last reports)
    # is measured, and it is stopped as soon as that shows
    plateau = [0.3, 0.526, 0.526, 0.526, 0.526]
    assert RULES.stall_share * 24 > 5 and RULES.settle_window == 3
    stop = _cannot_reach(_drifting(plateau), RULES, [[0.96], [0.95], [0.927]], budget=24)
    assert stop is not None and stop.rule == "cannot reach the top 3" and stop.iteration == 5
    assert stop.values["reachable"] == pytest.approx(0.526)


def test_a_collapsed_trials_peak_is_no_bar_to_reach() -> None:
    """A held-out sweep: lr 0.3 peaked at 0.63 and collapsed to 0.07 (stopped, a dead layer);
    lr 0.01 rose slowly to 0.2 and ended third by last value, FIFO's top 3 as Tune ranks by
    default. Measured against the collapsed trial's peak it was stopped as unable to reach
    the top 3; measured against where each other trial stands (its latest value), the third
    best is a trial at chance, which it has passed."""
    slow = [0.09, 0.1, 0.11, 0.12, 0.13, 0.135]
    collapsed = [0.2, 0.45, 0.63, 0.5, 0.07, 0.071]
    others = [[0.5, 0.8, 0.97], [0.3, 0.45, 0.552], collapsed, [0.098] * 6, [0.099] * 6]
    assert _cannot_reach(_drifting(slow), RULES, others, budget=12) is None
    # the same peak, held to the end, is a bar: at 3x its best recent gain (0.01 a report)
    # the slow trial reaches 0.135 + 3 * 0.06 = 0.315, short of the third best, 0.552
    held = [0.2, 0.45, 0.63, 0.63, 0.62, 0.63]
    stop = _cannot_reach(_drifting(slow), RULES, [*others[:2], held, *others[3:]], budget=12)
    assert stop is not None and stop.rule == "cannot reach the top 3"
    assert stop.values["target"] == 0.552  # the third best of where they stand
    assert stop.values["reachable"] == pytest.approx(0.315)
    # a trial measured at some reports only stands at its latest measured value
    sparse = [0.2, math.nan, 0.63, math.nan, 0.07, math.nan]
    assert _cannot_reach(_drifting(slow), RULES, [*others[:2], sparse, *others[3:]], 12) is None


def test_the_bar_of_where_others_stand_never_stops_a_trial_the_peaks_kept() -> None:
    """Measured against where the others stand (their latest values, at most their peaks),
    "cannot reach the top 3" stops no trial that measured against their peaks was kept: what
    protects a trial (whether it has started, how near counts as near) stays measured against
    the peaks. A lower bar alone made a slow start (0.10 to 0.126, not a tenth of its way to
    the peaks' 0.6) count as started against collapsed trials' 0.2, and stopped it at report 6
    where it would have waited for a third of the budget. Checked on random sweeps against the
    same sweeps with each other trial held at its peak (the bar of the peaks)."""
    slow = [0.100, 0.125, 0.125, 0.126, 0.126, 0.126]
    collapsed = [[0.5, 0.9, 0.7, 0.3, 0.2, 0.2], [0.5, 0.8, 0.6, 0.3, 0.2, 0.2]]
    others = [*collapsed, [0.4, 0.5, 0.6, 0.6, 0.6, 0.6]]
    assert _cannot_reach(_drifting(slow), RULES, others, budget=20) is None
    rng = random.Random(0)
    stopped = 0
    for _ in range(3000):
        reports = rng.randint(2, 9)

        def walk(start: float, drift: float, reports: int = reports) -> list[float]:
            values, v = [], start
            for _ in range(reports):
                v = min(1.0, max(0.0, v + rng.gauss(drift, 0.08)))
                values.append(round(v, 3) if rng.random() > 0.05 else math.nan)
            return values

        trial = walk(rng.uniform(0.05, 0.5), rng.uniform(-0.02, 0.06))
        others = [walk(rng.uniform(0.05, 0.6), rng.uniform(-0.1, 0.15)) for _ in range(4)]
        held = [[*o, max((v for v in o if math.isfinite(v)), default=math.nan)] for o in others]
        budget = reports + rng.randint(1, 12)
        now = _cannot_reach(_drifting(trial), RULES, others, budget)
        if now is not None:
            stopped += 1
            at_peaks = _cannot_reach(_drifting(trial), RULES, held, budget)
            assert at_peaks is not None, (trial, others, budget)
    assert stopped > 100  # (the check saw many stops)


def test_a_layer_the_training_code_holds_fixed_does_not_stop_the_prefix() -> None:
    """A fine-tuned backbone's first layer, held by ``requires_grad_(False)``, never moves from
    its initialisation (distance 0: never settled) and blocked every freeze after it; reported
    held (``trainable`` 0), it is passed over as a frozen layer and not frozen itself."""
    reports = [
        (m, {"first": (1.0, 1.0, 1.0), "middle": (0.999, 0.8, 1.0), "head": (0.999, 0.4, 1.0)})
        for m in plateau_metric(9)
    ]
    trial = history(reports)
    assert freeze_candidates(trial, RULES) == []
    trial.held = {"first"}
    assert [d.layer for d in freeze_candidates(trial, RULES)] == ["middle"]  # not the head


def test_a_loss_flat_at_its_start_is_not_judged_on_its_first_small_gains() -> None:
    """A CNN's validation loss (mode 'min': the rules see it negated) sits near log(10) for
    three epochs, then falls to 0.24, FIFO's second best: a gain under a tenth of its way to
    the target is no rate yet (such a trial, gaining 0.011 and 0.022, was stopped at report 3
    as unable to reach 1.328; here the gains slow down, so only the share protects it)."""
    late = [-2.301, -2.270, -2.268]
    others = [[-0.102], [-0.24], [-1.328]]
    assert STARTED_SHARE == 0.1 and RULES.stall_share * 10 > 3
    assert stop_verdict(_drifting(late), RULES, others, budget=10) is None
    # still there at a third of the budget: judged, and stopped
    stop = _cannot_reach(_drifting([*late, -2.26]), RULES, others, budget=10)
    assert stop is not None and stop.rule == "cannot reach the top 3"


def test_a_trial_still_speeding_up_is_judged_on_growing_gains() -> None:
    """Its latest gain its largest: a straight line at 3x the best recent rate under-reads it,
    so its gains are taken to keep growing as they last grew. Once a gain is smaller than one
    before it, the rate is extrapolated on a straight line."""
    others = [[0.99], [0.98], [0.97]]
    rising = [0.3, 0.33, 0.40]  # gains 0.03, 0.07: on a line 0.4 + 3 * 0.07 * 2 < 0.97
    # growing by 0.04 a report: 0.4 + 3 * (0.11 + 0.15) = 1.18
    assert stop_verdict(_drifting(rising), RULES, others, budget=5) is None
    # gains 0.01, 0.025, growing by 0.015: 0.335 + 3 * (0.025 * 2 + 0.015 * 3) = 0.62 < 0.7
    slow = [0.3, 0.31, 0.335]
    stop = _cannot_reach(_drifting(slow), RULES, [[0.99], [0.98], [0.7]], budget=5)
    assert stop is not None and stop.rule == "cannot reach the top 3"
    assert stop.values["reachable"] == pytest.approx(0.335 + 3 * (0.05 + 0.045))
    stop = _cannot_reach(_drifting([*rising, 0.42]), RULES, others, budget=5)
    assert stop is not None and stop.rule == "cannot reach the top 3" and stop.iteration == 4
    assert stop.values["reachable"] == pytest.approx(0.42 + 3 * 0.07 * 1)


def test_a_sparse_metric_is_compared_once_it_has_settle_window_values() -> None:
    """Validation every 5th report: no value yet is no rate (such trials, FIFO's best, were
    stopped with best=-inf); validation every other report: two values, one of them a dip,
    are no trend (FIFO's third best was stopped at report 4)."""
    nan = math.nan
    others = _steady(0.98, 0.975, 0.936)
    none_yet = _drifting([nan, nan, nan, nan])
    assert stop_verdict(none_yet, RULES, others, budget=10) is None
    dip = _drifting([nan, 0.926, nan, 0.825])
    assert stop_verdict(dip, RULES, others, budget=10) is None
    assert RULES.settle_window == 3
    # a third value that is still far behind: judged
    behind = _drifting([nan, 0.5, nan, 0.5, nan, 0.5])
    stop = stop_verdict(behind, RULES, others, budget=10)
    assert stop is not None and stop.rule == "stuck: no progress while others learned"


def test_a_good_trial_in_a_noisy_dip_or_on_a_plateau_near_the_top_is_not_stopped() -> None:
    """A trial whose test accuracy fell three reports in a row (noise) has no recent rate: it
    was stopped 0.3 points below the third best at report 7 of 20, though it ends best of all.
    Near the target (within twice its noise, or a quarter of its way from its first value)
    it runs on; far behind, with the same flat stretch, it is stopped."""
    dip = [0.810, 0.882, 0.914, 0.916, 0.913, 0.909, 0.906]
    others = [
        [0.819, 0.884, 0.915, 0.917, 0.914, 0.909, 0.922],
        [0.820, 0.866, 0.901, 0.914, 0.920, 0.915, 0.914],
        [0.822, 0.878, 0.907, 0.917, 0.915, 0.909, 0.919],
    ]
    assert stop_verdict(_drifting(dip), RULES, others, budget=20) is None
    # a plateau 0.2 points below the top before a late learning-rate drop
    plateau = [0.80, 0.90, 0.93, 0.94, 0.94, 0.939, 0.94, 0.94, 0.939, 0.94]
    ahead = [[0.80, 0.91, 0.94, 0.942, 0.942, 0.942, 0.942, 0.942, 0.942, 0.942]] * 3
    assert stop_verdict(_drifting(plateau), RULES, ahead, budget=30) is None
    # the same flat stretch 20 points below the others: clearly behind
    behind = [v - 0.2 for v in dip]
    stop = stop_verdict(_drifting(behind), RULES, others, budget=20)
    assert stop is not None and stop.rule == "cannot reach the top 3"
    gap = stop.values["target"] - stop.values["best"]
    assert stop.values["target"] == 0.914  # the third best of the others' latest values
    assert gap > stop.values["margin"]
    assert stop.values["margin"] == pytest.approx(RULES.reach_within)  # < 0.25 * (0.914 - 0.61)


def test_among_best_reads_the_noise_of_the_last_half_of_the_reports() -> None:
    """A noisy trial whose last three reports happen to be quiet is still as noisy: the best
    configuration of a small validation set was frozen when its band was read from those three
    reports alone (0.003) while others stood 0.5 to 1 point ahead of it by noise."""
    trial = TrialHistory()
    for acc in [0.90, 0.93, 0.945, 0.93, 0.95, 0.935, 0.95, 0.951, 0.948, 0.950]:
        trial.add(acc, {}, {}, {})
    assert metric_swing(trial.metric, RULES.settle_window) == pytest.approx(0.003)
    assert noise_band(trial, RULES) == pytest.approx(0.015)
    others = [0.956, 0.958, 0.961]  # 0.5 to 1 point ahead
    assert among_best(trial, others, RULES)
    assert not among_best(trial, [0.97, 0.975, 0.98], RULES)  # 2 points and more: behind


def test_a_trial_far_behind_or_fallen_back_is_stopped_despite_the_margin() -> None:
    """The margin spares trials close to the target, judged by where they stand now: a trial
    flat 20 points behind (its way from its first value is long, but the target is more than
    reach_within away), and one that neared the target and fell back to chance, are stopped."""
    top = [[0.5, 0.8, 0.9] + [0.95] * 27] * 3
    flat = [0.1, 0.5, 0.7] + [0.75] * 7
    stop = stop_verdict(_drifting(flat), RULES, top, budget=30)
    assert stop is not None and stop.rule == "cannot reach the top 3"
    assert stop.values["margin"] == pytest.approx(RULES.reach_within)
    fallen = [0.1, 0.5, 0.8, 0.9] + [0.1] * 10
    stop = stop_verdict(_drifting(fallen), RULES, top, budget=30)
    assert stop is not None and stop.rule == "cannot reach the top 3"
    assert stop.values["best"] == 0.9 and stop.values["recent_best"] == 0.1


def test_the_margin_cases_a_review_found() -> None:
    """Sparse metrics: a trial that fell back is judged by where it stands over its recent
    reports, not its recent values. A trial that passed the target and collapsed is judged
    from where it stands now. A wildly noisy trial far behind is not spared by its noise. A
    late trial level with where the others stood after as many reports (before their own
    learning-rate drop) runs on."""
    nan = math.nan
    top = [[0.5, 0.8, 0.9] + [0.95] * 27] * 3
    fallen = [0.1, nan, 0.5, nan, 0.9, nan] + [0.1, nan] * 6
    stop = stop_verdict(_drifting(fallen), RULES, top, budget=60)
    assert stop is not None and stop.values["recent_best"] == 0.1
    collapsed = [0.1, 0.5, 0.9, 0.96] + [0.1] * 10
    stop = stop_verdict(_drifting(collapsed), RULES, top, budget=30)
    assert stop is not None and stop.values["best"] == 0.96
    noisy = [0.1, 0.3, 0.5, 0.1, 0.5, 0.1, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
    stop = stop_verdict(_drifting(noisy), RULES, top, budget=30)
    assert stop is not None and stop.values["margin"] == pytest.approx(2 * RULES.reach_within)
    # three trials that finished: 0.87 until their drop at report 20, then 0.93
    finished = [[0.5, 0.7, 0.8] + [0.87] * 17 + [0.93] * 10] * 3
    late = [0.5, 0.7, 0.8] + [0.87] * 14  # report 17, level with them at report 17
    assert stop_verdict(_drifting(late), RULES, finished, budget=30) is None
    behind = [0.4, 0.6, 0.7] + [0.77] * 14  # 10 points below where they stood
    assert stop_verdict(_drifting(behind), RULES, finished, budget=30) is not None


def test_one_noisy_report_of_a_trial_at_chance_is_no_learning_to_be_behind() -> None:
    """A 4-trial sweep: the third best other trial sits at chance with one report 4 points
    above it. The flat trial (FIFO's third best: it learns to 0.391 from report 6) is not
    stuck behind that report; behind one that held such a level, it is."""
    flat = [0.111, 0.108, 0.118, 0.111, 0.077]
    noisy = [0.111, 0.111, 0.108, 0.111, 0.158, 0.141, 0.098, 0.104, 0.111, 0.111]
    others = [[0.5, 0.7, 0.8, 0.85, 0.9, 0.92], [0.4, 0.6, 0.7, 0.75, 0.8, 0.82], noisy]
    for it in range(3, 6):
        assert stop_verdict(_drifting(flat[:it]), RULES, others, budget=10) is None, it
    held = [0.111, 0.111, 0.158, 0.16, 0.165, 0.17]
    stop = stop_verdict(_drifting(flat), RULES, [*others[:2], held], budget=10)
    assert stop is not None and stop.rule == "stuck: no progress while others learned"
    assert stop.values["target"] == 0.158  # held over reports 3 to 5


def test_a_yardstick_within_stall_delta_of_chance_has_learned_nothing() -> None:
    # the third best other trial held 0.118 for three reports: 0.018 above chance (0.1)
    flat = [0.09, 0.085, 0.095, 0.09, 0.08]
    others = [*_steady(0.9, 0.8), [0.1, 0.1, 0.118, 0.118, 0.118]]
    trial = _drifting(flat)
    assert stop_verdict(trial, RULES, others, budget=10) is not None  # chance unknown
    trial.chance = 0.1
    assert stop_verdict(trial, RULES, others, budget=10) is None


def test_a_yardstick_that_stopped_reporting_early_held_no_level() -> None:
    """The third best other trial read 0.158 once (chance 0.118) and diverged at its second
    report: fewer than settle_window values are no level held, and with two others left the
    flat trial (a slow starter) is not stuck behind anybody."""
    flat = [0.111, 0.108, 0.118, 0.111, 0.077]
    others = [*_steady(0.9, 0.85), [0.158, math.nan]]
    assert stop_verdict(_drifting(flat), RULES, others, budget=10) is None


def _random_sweep(rng: random.Random, reports: int) -> list[list[float]]:
    """Accuracy-like curves of a few trials: a start, a rise of some speed (possibly after a
    flat start, possibly none), a plateau, noise."""
    curves = []
    for _ in range(rng.randint(3, 7)):
        start = rng.uniform(0.05, 0.6)
        top = rng.uniform(start, 0.99)
        delay = rng.randint(0, reports // 2)
        speed = rng.uniform(0.05, 0.8)
        noise = rng.choice([0.0, 0.002, 0.01, 0.03])
        curve = []
        for i in range(reports):
            rise = 0.0 if i < delay else 1 - (1 - speed) ** (i - delay + 1)
            curve.append(min(1.0, max(0.0, start + (top - start) * rise + rng.gauss(0, noise))))
        curves.append(curve)
    return curves


def test_decisions_on_a_metric_in_other_units_are_those_on_the_fraction_with_metric_scale() -> None:
    # metric_scale=100 (given, or inferred from percentages) multiplies the metric thresholds
    # by 100: every rule then decides on an accuracy in percent as on the same fraction
    from ikkuna_tune.tune.scheduler import SVCCAScheduler

    fraction = SVCCAScheduler(metric="acc", mode="max").metric_rules()  # no report yet: 1
    percent = SVCCAScheduler(metric="acc", mode="max", metric_scale=100).metric_rules()
    assert percent.stall_delta == 100 * fraction.stall_delta
    assert percent.min_delta == 100 * fraction.min_delta
    assert percent.reach_within == 100 * fraction.reach_within
    rng = random.Random(0)
    fired: set[str] = set()
    froze = 0
    for _ in range(300):
        reports = rng.randint(4, 16)
        curves = _random_sweep(rng, reports)
        budget = rng.choice([None, reports, reports + rng.randint(1, 8)])
        chance = rng.choice([math.nan, 0.1, curves[0][0]])
        moving = rng.random() < 0.5  # else the layer's distance from initialisation is still
        for at in range(1, reports + 1):
            trial = TrialHistory(layers=["fc", "head"], chance=chance)
            big = TrialHistory(layers=["fc", "head"], chance=100 * chance)
            for i, m in enumerate(curves[0][:at]):
                distance = dict.fromkeys(["fc", "head"], 0.9 - (0.01 * i if moving else 0.0))
                layers = dict.fromkeys(["fc", "head"], 0.999), distance, {"fc": 1.0, "head": 1.0}
                trial.add(m, *layers)
                big.add(100 * m, *layers)
            others = [c[: rng.randint(1, reports)] for c in curves[1:]]
            verdict = stop_verdict(trial, fraction, others, budget)
            scaled = stop_verdict(big, percent, [[100 * m for m in o] for o in others], budget)
            assert (verdict is None) == (scaled is None), (curves, at, budget, chance)
            if verdict is not None and scaled is not None:
                assert verdict.rule == scaled.rule
                fired.add(verdict.rule)
            assert among_best(trial, [max(o) for o in others], fraction) == among_best(
                big, [100 * max(o) for o in others], percent
            )
            frozen = [d.layer for d in freeze_candidates(trial, fraction)]
            assert frozen == [d.layer for d in freeze_candidates(big, percent)]
            froze += bool(frozen)
    # the sample reaches the rules that read the metric's thresholds
    assert {
        "stuck: no progress and no layer moving",
        "stuck: no progress while others learned",
        "cannot reach the top 3",
    } <= fired, fired
    assert froze > 0
    # and without the scale, the percent curves are judged otherwise somewhere
    differ = 0
    rng = random.Random(0)
    for _ in range(300):
        reports = rng.randint(4, 16)
        curves = _random_sweep(rng, reports)
        budget = reports
        trial = TrialHistory(layers=["fc"], metric=[100 * m for m in curves[0]])
        others = [[100 * m for m in c] for c in curves[1:]]
        a = stop_verdict(trial, fraction, others, budget)
        b = stop_verdict(trial, percent, others, budget)
        differ += (a is None) != (b is None) or (
            a is not None and b is not None and a.rule != b.rule
        )
    assert differ > 0


# A regression sweep steered on the validation MSE (mode="min"), as a run reported it: SGD
# learning rates 0.01-0.3, and a small initialisation (lr 0.03) that starts late and ends best.
_MSE_SWEEP = {
    "lr 0.01": [0.05245, 0.03549, 0.02845, 0.02281, 0.01968, 0.01741, 0.01642, 0.01582],
    "lr 0.03": [0.03942, 0.02094, 0.01783, 0.01597, 0.01524, 0.01504, 0.01492, 0.01482],
    "lr 0.1": [0.02043, 0.01731, 0.01875, 0.01463, 0.01559, 0.01484, 0.0147, 0.01512],
    "lr 0.3": [0.0238, 0.01475, 0.0161, 0.01755, 0.01453, 0.01496, 0.01735, 0.01449],
}
_LATE_STARTER = [0.05056, 0.0501, 0.04911, 0.04715, 0.04311, 0.03477, 0.02158, 0.01397]


def test_a_late_starter_on_a_small_scale_loss_is_judged_at_the_losss_scale() -> None:
    series = [*_MSE_SWEEP.values(), _LATE_STARTER]
    scale = metric_scale_of(series, "min")
    assert scale == 0.1
    others = [[-v for v in values] for values in _MSE_SWEEP.values()]  # signed: larger better

    def first_stop(rules: ConvergenceRules) -> Decision | None:
        trial = TrialHistory(layers=["head"])
        for i, value in enumerate(_LATE_STARTER):
            # its last layer moves away from its initialisation report after report
            trial.add(-value, {"head": 0.99}, {"head": 0.8 / (i + 1)}, {"head": 1.0})
            verdict = stop_verdict(trial, rules, others, budget=12)
            if verdict is not None:
                return verdict
        return None

    # in accuracy units a loss that fell by 0.0034 in 4 reports made "no progress", and the
    # trial that ends best was stopped at a third of the budget
    stopped = first_stop(RULES)
    assert stopped is not None and (stopped.rule, stopped.iteration) == (
        "stuck: no progress while others learned",
        4,
    )
    # at the loss's scale it runs on
    assert first_stop(in_units(RULES, scale)) is None


@pytest.mark.parametrize(
    ("series", "mode", "scale"),
    [
        # a diverged trial's later values do not count, nor does one outlier of two trials
        ([[2.3, 1.0, 0.5], [2.3, 40.0, 1e6, math.nan]], "min", 1.0),
        ([[0.05, 0.02], [1e6, math.nan]], "min", 0.1),
        # a hard task in percent, whose accuracies stay below 31.6, and trials at chance
        # joining good ones: still a percentage
        ([[12.0, 21.0, 28.0], [10.0, 10.2]], "max", 100.0),
        ([[80.0, 91.0]] * 4 + [[10.0, 10.1]] * 5, "max", 100.0),
        # a cross-entropy of 100 classes starts near 4.6: never above 1
        ([[4.6, 3.1, 2.0], [4.61, 4.0], [4.7, 1.5]], "min", 1.0),
        # a reward, an accuracy at exactly 1, a negated small loss, nothing finite
        ([[20.0, 180.0, 450.0], [15.0, 300.0]], "max", 1.0),
        ([[0.5, 1.0], [0.2, 0.9]], "max", 1.0),
        ([[-0.05, -0.02], [-0.04, -0.01]], "max", 0.1),
        ([[math.nan], []], "min", 1.0),
    ],
)
def test_the_inferred_metric_scale_resists_outliers_and_stays_put(series, mode, scale) -> None:
    assert metric_scale_of(series, mode) == scale


def test_cannot_reach_is_a_verdict_of_two_reports_in_a_row() -> None:
    """Random search, 8 trials of 8 reports: a CNN (FIFO: 0.7643 at the end, the sweep's third
    best) dipped at report 4 and was stopped there as unable to reach 0.7374 (3x its best
    recent gain, 0.0404, from 0.2458: 0.7306); it then sped up (+0.13, +0.17, +0.29 a report).
    At report 3 it could still reach the target, so report 4's reading alone stops nothing;
    from report 5 on its gains grow. Curves from that sweep under FIFO. A trial that cannot
    reach the target at two reports in a row is stopped at the second."""
    others = [
        [0.2458, 0.7374, 0.6532, 0.7037, 0.7104, 0.2222, 0.0842, 0.0707],
        [0.3468, 0.5589, 0.6869, 0.6667, 0.6902, 0.7172, 0.7037, 0.5488],
        [0.1448, 0.1178, 0.2189, 0.2525, 0.4175, 0.4478, 0.6431, 0.7306],
        [0.1582, 0.2525, 0.2694, 0.4074, 0.3838, 0.4916, 0.6364, 0.6364],
        [0.0909, 0.1111, 0.1481, 0.1684, 0.2256, 0.229, 0.2593, 0.2424],
        [0.3098, 0.532, 0.7205, 0.7912, 0.8687, 0.899, 0.936, 0.9259],
        [0.3838, 0.8249, 0.9596, 0.9461, 0.9562, 0.963, 0.9764, 0.9731],
    ]
    late = [0.1684, 0.2088, 0.2458, 0.1717, 0.3064, 0.4714, 0.7609, 0.7643]
    for it in range(1, 9):
        assert stop_verdict(_drifting(late[:it]), RULES, others, budget=8) is None, it
    # measured every other report (NaN between): a report without a value adds no reading
    # (the one after the dip confirmed it, and stopped the trial before its next value)
    nan = math.nan
    sparse = [v for value in late for v in (nan, value)]
    sparse_others = [[v for value in o for v in (nan, value)] for o in others]
    for it in range(1, 17):
        trial = _drifting(sparse[:it])
        assert stop_verdict(trial, RULES, sparse_others, budget=16) is None, it
    # a trial flat where it started (here at a third of the budget) has no rate to read: a
    # late starter whose first gain comes at the next value runs on (the stuck rules judge a
    # flat start, against the level the others held)
    first = [0.1684, 0.18, 0.1717]
    assert _cannot_reach(_drifting(first), RULES, others, budget=8) is None
    assert stop_verdict(_drifting(first), RULES, others, budget=8) is None
    assert stop_verdict(_drifting([*first, 0.3064]), RULES, others, budget=8) is None
    # the same dip, and no gain after it: the first reading at report 5 (at report 4 it could
    # still reach the target, 0.2458 + 3 * 0.0404 * 4 = 0.7306: the third best of where the
    # others stand, the first of them having fallen from 0.7374 to 0.0707), the verdict at 6
    flat = [*late[:4], 0.17]
    assert _cannot_reach(_drifting(flat), RULES, others, budget=8) is not None
    assert stop_verdict(_drifting(flat), RULES, others, budget=8) is None
    stop = stop_verdict(_drifting([*flat, 0.17]), RULES, others, budget=8)
    assert stop is not None and stop.rule == "cannot reach the top 3" and stop.iteration == 6
    assert stop.values["target"] == 0.7306


def test_a_noisy_trial_within_its_noise_of_the_top_is_not_stopped_as_behind() -> None:
    """A return that swings by tens between evaluations, 1.1 below the third best other trial
    (whose returns have held since report 9), its last values falling (no rate): "cannot
    reach" read it as behind at two readings in a row (a replayed RL sweep lost its best
    configuration that way). Where it stands is within its noise of the top: it runs on. One
    as noisy but far behind is still stopped."""
    noisy = [-150, -60, 20, 90, 150, 120, 200, 140, 231.3, 170, 210, 231.3, 215, 200, 185, 170]
    others = [[min(-100 + 40 * i, top) for i in range(16)] for top in (215, 235, 240, 232.4)]
    assert stop_verdict(_drifting(noisy), RULES, others, budget=20) is None
    behind = [v - 120 for v in noisy]
    stop = stop_verdict(_drifting(behind), RULES, others, budget=20)
    assert stop is not None and stop.rule == "cannot reach the top 3"


def test_a_metric_in_0_100_is_a_percentage_only_when_its_values_spread_like_one() -> None:
    """A PSNR of 28.5-31.5 dB lies in [0, 100] but is no percentage: its thresholds stay
    those of its own units (hundredfold, every trial read as making no progress); an accuracy
    in percent from chance to learned is one."""
    psnr = [[28.5, 29.6, 30.4, 31.2], [28.7, 29.1, 29.9, 30.3], [28.6, 30.1, 30.8, 31.0]]
    assert metric_scale_of(psnr, "max") == 1.0
    percent = [[11.0, 45.0, 80.0, 91.0], [10.5, 12.0, 30.0, 60.0], [9.8, 10.1, 10.3, 10.2]]
    assert metric_scale_of(percent, "max") == 100.0


def test_a_fine_tuned_trial_far_above_chance_is_not_stuck_for_gaining_little() -> None:
    """Fine-tuning a pretrained MLP (digits, chance 0.128): a trial starts at 96 % and gains
    less than stall_delta while its layers barely move. Far above chance, it is not "stuck:
    no progress and no layer moving" (every trial of such a sweep was stopped at report 3, and
    the best configuration changed: under FIFO they went on to gain 1-2 points); at chance it
    still is, and so it is where no chance level is known."""
    fine = [0.963, 0.962, 0.965, 0.966]
    trial = history([(m, dict.fromkeys(LAYERS, (0.999, 0.9, 1.0))) for m in fine])
    trial.chance = 0.128
    assert stop_verdict(trial, RULES, [], budget=12) is None
    flat = history([(m, dict.fromkeys(LAYERS, (0.999, 0.9, 1.0))) for m in (0.12, 0.12, 0.13)])
    flat.chance = 0.128
    learner = [[0.3, 0.4, 0.5, 0.6]]  # (stuck is relative: another trial learned meanwhile)
    stop = stop_verdict(flat, RULES, learner, budget=9)  # (3 reports: a third of the budget)
    assert stop is not None and stop.rule == "stuck: no progress and no layer moving"
    unknown = history([(m, dict.fromkeys(LAYERS, (0.999, 0.9, 1.0))) for m in fine])
    ahead = [[0.99, 0.995, 0.996, 0.997]]  # (another learned, to above where it started)
    stop = stop_verdict(unknown, RULES, ahead, budget=12)
    assert stop is not None and stop.rule == "stuck: no progress and no layer moving"


def test_a_learning_rate_warm_up_is_not_stuck_before_a_share_of_the_budget() -> None:
    """A warm-up at 1 % of the rate for the first 3 of 10 epochs holds every layer as still as
    a rate too small to learn, at chance: a review's sweep of such trials had every one (FIFO's
    best and top 3 among them, 0.85-0.90 at the end) stopped at report 3 as "stuck: no progress
    and no layer moving". Not before stall_share of the budget (report 4 of 10, where the
    warm-up is over), nor while no other trial has learned by as many reports (a warm-up
    longer than that share: a level held over settle_window reports, stall_delta above where
    the trial started and above chance); without a budget there is no share to wait for, so
    never. A trial still flat and still after the share, while another learned, is stuck."""
    still = dict.fromkeys(LAYERS, (0.999, 0.9999, 1.0))
    warming = history([(m, still) for m in (0.081, 0.081, 0.081)])
    warming.chance = 0.101
    learner = [0.081, 0.3, 0.4, 0.5]
    flat_others = [[0.081] * 4] * 3
    assert stop_verdict(warming, RULES, [*flat_others, learner], budget=10) is None
    assert stop_verdict(warming, RULES, [*flat_others, learner], budget=None) is None
    warming.add(0.081, *({n: v[k] for n, v in still.items()} for k in range(3)))
    assert stop_verdict(warming, RULES, flat_others, budget=10) is None  # everybody's
    # one report of another trial at chance is no learning (held over settle_window values)
    blip = [0.081, 0.081, 0.102, 0.081]
    assert stop_verdict(warming, RULES, [*flat_others, blip], budget=10) is None
    stop = stop_verdict(warming, RULES, [*flat_others, learner], budget=10)
    assert stop is not None and stop.rule == "stuck: no progress and no layer moving"


def test_a_trial_flat_at_its_start_is_left_to_the_stuck_rules_not_read_at_rate_0() -> None:
    """Imbalanced binary task (chance 0.908, SGD): the lr 0.02 trial sat at 0.908 for 6 reports,
    then learned to 0.936, FIFO's third best. "Cannot reach the top 3" read it at rate 0
    against the others' best so far (0.927, 0.931) and stopped it at report 6; the stuck rule,
    which reads the level the others held (0.909, within stall_delta of chance), keeps it.
    A trial that fell back from where it started is still read at its level."""
    late = [0.9084] * 6
    others = [
        [0.9084, 0.9084, 0.9118, 0.9219, 0.9253, 0.9286, 0.9320, 0.9310, 0.9300, 0.9310],
        [0.9084, 0.9084, 0.9084, 0.9186, 0.9270, 0.9310, 0.9360, 0.9400, 0.9390, 0.9400],
        [0.9084, 0.9084, 0.9084, 0.9084, 0.9253, 0.9310, 0.9330, 0.9350, 0.9340, 0.9350],
        [0.9084, 0.9084, 0.9084, 0.9118, 0.9186, 0.9270, 0.9330, 0.9380, 0.9370, 0.9380],
    ]
    for it in range(1, 7):
        trial = _at_chance_trial(late[:it], chance=0.9084)
        assert _cannot_reach(trial, RULES, others, budget=12) is None, it
        assert stop_verdict(trial, RULES, others, budget=12) is None, it
    fell = _at_chance_trial([0.935, *[0.88] * 7], chance=0.9084)  # below where it started
    stop = stop_verdict(fell, RULES, others, budget=12)
    assert stop is not None and stop.rule == "cannot reach the top 3"


def test_a_chance_level_above_one_makes_the_metric_a_percentage() -> None:
    """Accuracies in percent that lie within 10 points of each other (89.4-94.0 on an
    imbalanced task) say nothing of their range; their chance level, reported in percent
    (90.8), does."""
    from ikkuna_tune.tune.convergence import metric_scale_from

    extents = [(90.8, 90.8, 94.0), (91.2, 89.4, 93.5), (90.8, 90.8, 93.8)]
    assert metric_scale_from(extents, "max") == 1.0
    assert metric_scale_from(extents, "max", [90.8, math.nan]) == 100.0
    assert metric_scale_from(extents, "max", [0.908]) == 1.0  # a fraction's chance
    assert metric_scale_from([(2.3, 0.5, 2.3)], "min", [90.8]) == 1.0  # a loss has none


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"freeze_at": 1.5}, r"`freeze_at` to be a number in \(0, 1\]"),
        ({"patience": 0}, r"`patience` to be an integer >= 1"),  # read the whole history
        ({"patience": -1}, r"`patience` to be an integer >= 1"),  # dropped the first report
        ({"stall_share": 2}, r"`stall_share` to be a number in \(0, 1\]"),
        ({"dead_below": math.nan}, r"`dead_below` to be a number in \[0, 1\]"),
        ({"reach_within": -0.1}, r"`reach_within` to be a finite number >= 0"),
        ({"plateau": 1.5}, r"`plateau` to be an integer >= 0"),
    ],
)
def test_convergence_rules_refuse_bad_thresholds_where_they_are_made(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        ConvergenceRules(**kwargs)
    assert ConvergenceRules(plateau=0, grace=0, min_travel=0).plateau == 0  # edges allowed


def test_a_metric_measured_at_some_reports_is_not_read_as_no_progress_from_one_value() -> None:
    """Validation every third report, layers barely moving (fine-tuning), no chance level
    known: at report 3 the trial has one value, which shows no progress by construction. It
    was stopped there as stuck (a review's sweep lost all four trials, FIFO's top 3 among
    them); it is judged once it has settle_window values, as the rules that compare trials."""
    still = dict.fromkeys(LAYERS, (0.999, 0.95, 1.0))
    sparse = history([(m, still) for m in (math.nan, math.nan, 0.8)])
    assert stop_verdict(sparse, RULES, [], budget=12) is None
    # the same trial flat over three measured values is still stuck
    flat = history([(m, still) for m in (0.8, math.nan, math.nan, 0.8, math.nan, math.nan, 0.8)])
    learner = [0.85, math.nan, math.nan, 0.9, math.nan, math.nan, 0.95]  # (another learned)
    stop = stop_verdict(flat, RULES, [learner], budget=12)
    assert stop is not None and stop.rule == "stuck: no progress and no layer moving"


def test_a_dead_branch_is_judged_at_reports_that_measure_the_metric() -> None:
    """A middle layer dies at report 2. With the metric at report 3 only (validation every
    third epoch), report 2 decides nothing; at one value the trial is judged against chance
    where chance is known (above it: learning; at it: stopped), and at its next value where
    it is not."""
    alive, dead = (1.0, 0.5, 1.0), (1.0, 0.5, 0.0)

    def trial(metrics: list[float], chance: float = math.nan) -> TrialHistory:
        layers = [{"first": alive, "middle": alive, "head": alive}]
        layers += [{"first": alive, "middle": dead, "head": alive}] * (len(metrics) - 1)
        out = history(list(zip(metrics, layers)))
        out.chance = chance
        return out

    assert stop_verdict(trial([math.nan, math.nan]), RULES, [], None) is None
    assert stop_verdict(trial([math.nan, math.nan, 0.4], chance=0.1), RULES, [], None) is None
    assert stop_verdict(trial([math.nan, math.nan, 0.4]), RULES, [], None) is None
    at_chance = stop_verdict(trial([math.nan, math.nan, 0.11], chance=0.1), RULES, [], None)
    assert at_chance is not None and (at_chance.rule, at_chance.layer) == ("dead layer", "middle")
    # a trial measured at every report whose branch died at report 2, at chance: stopped there
    diverged = stop_verdict(trial([0.1, 0.1], chance=0.1), RULES, [], None)
    assert diverged is not None and diverged.rule == "dead layer"


def test_the_accuracy_beside_a_loss_is_cut_with_the_history_on_a_restore() -> None:
    """A trial restored from an older checkpoint repeats reports: the accuracy beside its
    loss is forgotten with them, so the stuck rule reads the run it continues."""
    from ikkuna_tune.tune.convergence import accuracy_at_chance

    trial = TrialHistory(layers=["fc"])
    trial.accuracy_chance = 0.1
    for loss, acc in [(-2.3, 0.1), (-1.5, 0.7), (-1.2, 0.8)]:
        trial.add(loss, {"fc": 0.9}, {"fc": 0.8}, {"fc": 1.0}, accuracy=acc)
    trial.truncate(2)
    assert trial.accuracy == [0.1, 0.7] and trial.metric == [-2.3, -1.5]
    for loss in (-2.3, -2.3):  # the run it continues fell back to chance
        trial.add(loss, {"fc": 1.0}, {"fc": 0.8}, {"fc": 1.0}, accuracy=0.1)
    # it learned (0.1 to 0.7) and fell back: the divergence rules' business, not "no progress"
    assert accuracy_at_chance(trial, ConvergenceRules(), 0.02) is None
    trial.truncate(1)
    assert accuracy_at_chance(trial, ConvergenceRules(), 0.02) is None  # one value: too few
    trial.truncate(0)
    for loss in (-59.0, -2.3, -2.3):
        trial.add(loss, {"fc": 1.0}, {"fc": 0.8}, {"fc": 1.0}, accuracy=0.1)
    assert accuracy_at_chance(trial, ConvergenceRules(), 0.02) == {
        "accuracy": 0.1,
        "accuracy_chance": 0.1,
    }
    # a metric with a chance level of its own is judged on it, not on the accuracy beside it
    trial.chance = -2.3
    assert accuracy_at_chance(trial, ConvergenceRules(), 0.02) is None


def test_decayed_by_matches_a_scan_of_the_learning_rates_through_adds_and_restores() -> None:
    """The scheduler asks of every other trial at every result whether its learning rate had
    decayed by some report; the answer, kept as the history grows and is cut back by
    restores, equals a scan of the whole series (brute force)."""
    from ikkuna_tune.tune.convergence import DECAYED

    rng = random.Random(0)
    for _ in range(200):
        trial = TrialHistory(layers=["fc"])
        for _ in range(rng.randrange(1, 30)):
            if trial.reports and rng.random() < 0.15:
                trial.truncate(rng.randrange(trial.reports))  # a restore
            scale = rng.choice([math.nan, 1.0, 0.9, 0.6, DECAYED, 0.1])
            trial.add(0.5, {}, {}, {}, scale)
            for reports in range(trial.reports + 2):
                expected = any(s <= DECAYED for s in trial.lr_scale[:reports] if math.isfinite(s))
                assert trial.decayed_by(reports) == expected


def test_growths_match_a_scan_of_the_distances_through_adds_and_restores() -> None:
    """The latest and the largest earlier growth of a layer's distance from initialisation,
    kept as reports come and cut back by restores, equal a scan of the whole series (the
    textbook windowed differences, brute force)."""
    from ikkuna_tune.tune.convergence import LayerHistory

    def scan(distance: list[float], w: int) -> tuple[float, float]:
        series = [0.0, *distance]
        growths = [series[k + w] - series[k] for k in range(len(series) - w)]
        growths = [g for g in growths if math.isfinite(g)]
        if not growths:
            return math.nan, -math.inf
        return growths[-1], max(growths[:-1], default=-math.inf)

    def check(history: LayerHistory, w: int) -> None:
        got, expected = history.growths(w), scan(history.distance, w)
        assert got[1] == expected[1]
        assert got[0] == expected[0] or (math.isnan(got[0]) and math.isnan(expected[0]))

    rng = random.Random(1)
    for case in range(300):
        trial = TrialHistory(layers=["fc"])
        w = 1 + case % 4  # one window per history, as the scheduler asks (its settle_window)
        for _ in range(rng.randrange(1, 25)):
            if trial.reports and rng.random() < 0.15:
                trial.truncate(rng.randrange(trial.reports))  # a restore
            init = rng.choice([math.nan, rng.random(), rng.random()])
            trial.add(0.5, {"fc": 0.9}, {"fc": init}, {"fc": 1.0})
            if rng.random() < 0.7:  # (not asked at every report: several read at once)
                check(trial.per_layer["fc"], w)
        check(trial.per_layer["fc"], w)
        check(trial.per_layer["fc"], w + 1)  # another window: read afresh


def test_an_accuracy_in_percent_is_judged_in_percent_whatever_its_chance_level() -> None:
    """A hundred classes in percent: a chance level of 1.0 is 1 %, not a fraction of 1."""
    from ikkuna_tune.tune.convergence import accuracy_at_chance

    def judged(accuracies: list[float], chance: float) -> dict[str, float] | None:
        trial = TrialHistory()
        trial.accuracy_chance = chance
        for i, acc in enumerate(accuracies):
            trial.add(-59.0 if i == 0 else -4.6, {}, {}, {}, accuracy=acc)
        return accuracy_at_chance(trial, ConvergenceRules(), 0.02)

    assert judged([1.0, 0.9, 1.3, 1.1], 1.0) == {"accuracy": 1.3, "accuracy_chance": 1.0}
    assert judged([0.01, 0.009, 0.013, 0.011], 0.01) == {"accuracy": 0.013, "accuracy_chance": 0.01}
    assert judged([1.0, 5.0, 20.0, 35.0], 1.0) is None  # it learns, in percent
    assert judged([0.01, 0.05, 0.2, 0.35], 0.01) is None  # as a fraction


def test_a_layer_unfrozen_at_a_learning_rate_change_is_judged_on_growth_after_it() -> None:
    """The layer settled at distance 0.09 (frozen after report 6: no values while frozen),
    was unfrozen at report 10 and moves on at the new rate: 0.10, 0.105, 0.11. Its growth over
    the 3 reports to 13 is 0.11 - 0.09 = 0.02, more than settle_tol (0.2) x its fastest 0.08
    = 0.016: not settled. Read from the last growth before the freeze (0.01), it was frozen
    again at report 13. Once it has stopped (0.11 from report 13 on) it is frozen again, on a
    growth of the reports after the release."""
    rules = ConvergenceRules(plateau=0)
    nan = math.nan
    dists = [0.02, 0.05, 0.08, 0.09, 0.09, 0.09, nan, nan, nan, nan, 0.10, 0.105, 0.11]
    dists += [0.11, 0.11, 0.11]
    trial = TrialHistory(layers=["conv", "fc"])
    decided = {}
    for report, d in enumerate(dists, 1):
        known = math.isfinite(d)
        values = ({"conv": 0.995}, {"conv": 1 - d}, {"conv": 1.0}) if known else ({}, {}, {})
        trial.add(0.9, *values)
        if report == 6:
            (freeze,) = freeze_candidates(trial, rules)
            assert freeze.layer == "conv"
            trial.frozen = {"conv"}
        elif report == 10:
            trial.frozen, trial.released["conv"] = set(), report
        elif report > 10:
            decided[report] = [d.values for d in freeze_candidates(trial, rules)]
    assert decided[11] == decided[12] == decided[13] == []
    # report 14: grown 0.11 - 0.10 = 0.01 over reports 12-14, <= 0.016
    (values,) = decided[14]
    assert values["recent_growth"] == pytest.approx(0.01)
    assert values["fastest_growth"] == pytest.approx(0.08)


def test_a_trial_in_a_longer_warm_up_than_the_others_is_not_stopped_as_behind() -> None:
    """A sweep over warm-up lengths (1 % of the rate for W epochs): the trial with the
    longest warm-up sits at chance while the others have learned. It is stopped neither as
    stuck nor as unable to reach the top 3 (nor frozen) while its rate is 1 % of its
    scheduler's (lr_base_scale 0.01, lr_scale 1), nor in the grace reports after (the first
    report at its rate measures a warm-up epoch still); then it is judged as any other (here:
    it stays at chance, and is stopped). A rate that reads as a warm-up for good (set by hand
    below the scheduler's) protects the trial for half the budget at most; the same trial
    without a scheduler's rate is stopped sooner."""
    budget = 12
    others = [
        [0.1, 0.5, 0.8, 0.9, 0.93, 0.95, 0.96, 0.96, 0.97, 0.97, 0.97, 0.97],
        [0.1, 0.1, 0.6, 0.85, 0.92, 0.94, 0.95, 0.96, 0.96, 0.97, 0.97, 0.97],
        [0.1, 0.1, 0.1, 0.7, 0.88, 0.93, 0.95, 0.96, 0.96, 0.96, 0.97, 0.97],
    ]

    def verdicts(bases: list[float]) -> dict[int, Decision | None]:
        trial = TrialHistory(layers=["first", "head"], chance=0.1)
        decided = {}
        for report, base in enumerate(bases, 1):
            layers = {"first": 0.9999, "head": 0.9999}
            trial.add(0.1, layers, {"first": 0.999, "head": 0.999}, dict.fromkeys(layers, 1.0),
                      lr_scale=1.0, lr_base_scale=base)  # fmt: skip
            decided[report] = stop_verdict(trial, RULES, [s[:report] for s in others], budget)
            if base < 0.5:
                assert freeze_candidates(trial, RULES) == []
        return decided

    warmed = verdicts([0.01] * 4 + [1.0] * 8)  # at its rate from report 5 on
    assert all(warmed[r] is None for r in range(1, 7))  # 4 warming, 2 of grace after
    assert any(warmed[r] is not None for r in range(7, budget + 1))
    forever = verdicts([0.01] * budget)
    assert all(forever[r] is None for r in range(1, 7))  # half the budget
    assert any(forever[r] is not None for r in range(7, budget + 1))
    flat = verdicts([math.nan] * budget)  # no scheduler: judged from the start
    first = min(r for r, v in flat.items() if v is not None)
    assert first < min(r for r, v in warmed.items() if v is not None)


def test_a_trial_that_learned_and_fell_back_to_chance_is_stopped_after_settle_window() -> None:
    """Labels shuffled from epoch 4 (as in a review's faulted MLP): 0.94, then at chance.
    Its best before the fall kept it "among the best" to report 10 of 12; it is stopped once
    settle_window (3) values in a row stand within stall_delta of chance while the others
    learned, at report 7. A dip of two reports that recovers is not stopped, nor a fall while the
    others are at chance too."""
    chance = 0.1178
    learned = [0.55, 0.85, 0.92, 0.9428]
    others = [[0.5, 0.8, 0.9, 0.92, 0.93, 0.94, 0.95, 0.95, 0.95, 0.96, 0.96, 0.96]] * 3
    trial = TrialHistory(layers=["fc"], chance=chance)
    verdicts = {}
    for report, value in enumerate([*learned, 0.125, 0.07, 0.118, 0.12], 1):
        trial.add(value, {"fc": 0.9}, {"fc": 0.5}, {"fc": 1.0})
        verdicts[report] = stop_verdict(trial, RULES, [o[:report] for o in others], budget=12)
    assert all(verdicts[r] is None for r in range(1, 7))
    assert verdicts[7] is not None and verdicts[7].rule == "fell back to chance"
    # the level it held over 3 values before the fall
    assert verdicts[7].values == {"best": 0.85, "recent_best": 0.125, "chance": chance}
    dip = TrialHistory(layers=["fc"], chance=chance)
    for report, value in enumerate([*learned, 0.12, 0.11, 0.9, 0.93], 1):
        dip.add(value, {"fc": 0.9}, {"fc": 0.5}, {"fc": 1.0})
        verdict = stop_verdict(dip, RULES, [o[:report] for o in others], budget=12)
        assert verdict is None or verdict.rule != "fell back to chance"
    alone = TrialHistory(layers=["fc"], chance=chance)
    flat = [[0.5, 0.6, 0.6, 0.6, *[0.12] * 8]] * 3  # every trial fell
    for report, value in enumerate([*learned, 0.12, 0.11, 0.12], 1):
        alone.add(value, {"fc": 0.9}, {"fc": 0.5}, {"fc": 1.0})
        verdict = stop_verdict(alone, RULES, [o[:report] for o in flat], budget=12)
        assert verdict is None or verdict.rule != "fell back to chance"
