"""MetricSeries remembers what the rules derive from a trial's metric; what it gives must be
what a computation afresh gives, after any change, and the scheduler must decide exactly as
without it."""

from __future__ import annotations

import copy
import math
import pickle
import random
from typing import Any

import pytest

from ikkuna_tune.tune import convergence
from ikkuna_tune.tune.convergence import MetricSeries, held_level, metric_scale_of
from ikkuna_tune.tune.scheduler import SVCCAScheduler
from tests.tune.test_scheduler import FakeMailbox, FakeTrial

NAN, INF = math.nan, math.inf


def _best(values: list[float], reports: int | None = None) -> float:
    """By hand: the best finite value of the first ``reports`` values."""
    kept = values if reports is None else values[:reports]
    return max([v for v in kept if math.isfinite(v)], default=-INF)


def _check(series: MetricSeries) -> None:
    plain = list(series)
    finite = [v for v in plain if math.isfinite(v)]
    assert series.finite() == finite
    assert series.extent() == ((finite[0], min(finite), max(finite)) if finite else None)
    for reports in [None, *range(len(plain) + 2)]:
        assert series.best_after(reports) == _best(plain, reports)
        for window in (1, 2, 3):
            prefix = plain if reports is None else plain[:reports]
            assert series.held_after(reports, window) == held_level(prefix, window)


def test_what_is_derived_follows_every_change_of_the_list() -> None:
    rng = random.Random(0)
    series = MetricSeries()
    pool = [NAN, INF, -INF, 0.0, 0.1, 0.5, 0.9, -0.3, 2.0]
    for _ in range(300):
        _check(series)  # derives (and remembers) everything before the next change
        change = rng.randrange(12)
        value = rng.choice(pool)
        if change < 4 or not series:
            series.append(value)
        elif change == 4:
            del series[rng.randrange(len(series)) :]  # a restored trial's truncation
        elif change == 5:
            series[rng.randrange(len(series))] = value
        elif change == 6:
            series.extend([value, rng.choice(pool)])
        elif change == 7:
            series.insert(rng.randrange(len(series)), value)
        elif change == 8:
            series.pop()
        elif change == 9:
            series += [value]
        elif change == 10:
            series.reverse()
        else:
            series.remove(series[0])
    _check(series)


def test_copies_and_pickles_carry_the_values_and_derive_afresh() -> None:
    series = MetricSeries([0.1, 0.4, NAN, 0.3])
    assert series.best_after() == 0.4
    for copied in (copy.deepcopy(series), copy.copy(series), pickle.loads(pickle.dumps(series))):
        assert type(copied) is MetricSeries and repr(list(copied)) == repr(list(series))
        copied.append(0.9)
        assert (copied.best_after(), series.best_after()) == (0.9, 0.4)
    del series[1:]
    assert series.best_after() == 0.1


def test_the_scale_from_extents_is_the_scale_from_the_values() -> None:
    rng = random.Random(1)
    for _ in range(200):
        series = [
            [rng.choice([NAN, rng.uniform(-5, 120), rng.uniform(0, 1)]) for _ in range(4)]
            for _ in range(rng.randrange(0, 5))
        ]
        for mode in ("max", "min"):
            extents = [e for e in (MetricSeries(s).extent() for s in series) if e is not None]
            assert metric_scale_of(series, mode) == convergence.metric_scale_from(extents, mode)


def _sweep(mode: str, seed: int) -> list[Any]:
    """A synthetic sweep of trials that start at different times, learn at different rates,
    diverge or sit at chance, with a metric every other report in one of them; every decision
    the scheduler returned and logged."""
    rng = random.Random(seed)
    budget, layers = 20, ["l0", "l1", "l2"]
    scheduler = SVCCAScheduler(metric="m", mode=mode, max_t=budget)
    scheduler._mailbox = FakeMailbox()
    trials = [FakeTrial(f"t{i}") for i in range(10)]
    for trial in trials:
        scheduler.on_trial_add(None, trial)
    speed = {t.trial_id: rng.choice([0.0, 0.02, 0.1, 0.3, 0.6]) for t in trials}
    start = {t.trial_id: rng.randrange(0, 8) for t in trials}
    out: list[Any] = []
    stopped: set[str] = set()
    for step in range(budget + 8):
        for trial in trials:
            tid = trial.trial_id
            r = step - start[tid] + 1
            if tid in stopped or not 1 <= r <= budget:
                continue
            acc = 0.1 + 0.85 * (1 - math.exp(-speed[tid] * r)) + 0.03 * rng.random()
            if speed[tid] == 0.6 and r > 6 and seed % 2:
                acc = 0.1  # collapsed
            value: float | None = 2.5 * (1 - acc) if mode == "min" else acc
            if tid == "t3" and r % 2 == 0:
                value = None
            result: dict[str, Any] = {"training_iteration": r, "m": value, "m_chance": 0.1}
            for i, name in enumerate(layers):
                result[f"self_similarity/{name}"] = (
                    None if r == 1 else 1 - 0.3 * math.exp(-(speed[tid] + 0.05) * r * (3 - i))
                )
                result[f"init_similarity/{name}"] = 0.5 + 0.5 * math.exp(-speed[tid] * r)
                result[f"live_fraction/{name}"] = 1.0
                result[f"frozen/{name}"] = 0
            decision = scheduler.on_trial_result(None, trial, result)
            out.append((tid, r, decision))
            if decision == "STOP":
                stopped.add(tid)
    return [*out, *map(repr, scheduler.decisions)]


@pytest.mark.parametrize(("mode", "seed"), [("max", 0), ("max", 1), ("min", 2), ("min", 3)])
def test_the_scheduler_decides_as_with_everything_computed_afresh(monkeypatch, mode, seed) -> None:
    remembered = _sweep(mode, seed)
    # the same sweep with nothing remembered: each value derived from the list by hand
    monkeypatch.setattr(MetricSeries, "best_after", lambda self, reports=None: _best(self, reports))
    monkeypatch.setattr(
        MetricSeries,
        "held_after",
        lambda self, reports, window: held_level(
            list(self) if reports is None else list(self)[:reports], window
        ),
    )

    def extent(self: MetricSeries) -> tuple[float, float, float] | None:
        finite = [v for v in self if math.isfinite(v)]
        return (finite[0], min(finite), max(finite)) if finite else None

    monkeypatch.setattr(MetricSeries, "extent", extent)
    afresh = _sweep(mode, seed)
    assert remembered == afresh
    assert sum(1 for item in remembered if isinstance(item, tuple) and item[2] == "STOP") >= 2
