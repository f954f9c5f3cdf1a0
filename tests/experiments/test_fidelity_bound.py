"""experiments.fidelity_bound: the compute bound against brute-force recomputations, and a
tiny grid trained end to end on scikit-learn's digits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from experiments import fidelity_bound as fb


def _brute_first_behind(own: list[float], top: list[list[float]]) -> int | None:
    own_best = np.maximum.accumulate(own)
    top_best = np.maximum.accumulate(np.array(top), axis=1)
    for t in range(len(own)):
        if all(own_best[t] < top_best[k, t] for k in range(len(top))):
            return t + 1
    return None


@pytest.mark.parametrize("seed", range(20))
def test_first_behind_equals_a_brute_force_scan(seed: int) -> None:
    rng = np.random.default_rng(seed)
    own = list(rng.uniform(0, 1, 8))
    top = [list(rng.uniform(0, 1, 8)) for _ in range(3)]
    assert fb.first_behind(own, top) == _brute_first_behind(own, top)


def _trial(accuracy: list[float], step: float = 1.0, diverged_at: int | None = None) -> dict:
    return {
        "accuracy": accuracy,
        "seconds": [step * (t + 1) for t in range(len(accuracy))],
        "diverged_at": diverged_at,
    }


def test_grid_bound_charges_the_top_3_in_full_and_the_others_up_to_their_stop() -> None:
    trials = {
        0.1: _trial([0.5, 0.8, 0.9, 0.95]),  # top 3
        0.2: _trial([0.6, 0.7, 0.8, 0.94]),
        0.3: _trial([0.2, 0.4, 0.6, 0.93]),
        0.4: _trial([0.3, 0.3, 0.3, 0.3], step=2.0),  # behind all three after report 2
        0.5: _trial([0.7, 0.7, 0.7, 0.7]),  # ahead of 0.3 until report 4: charged in full
        0.6: _trial([0.1, 0.1, 0.1, 0.1], diverged_at=1),  # diverged: after report 1
    }
    bound = fb.grid_bound(trials)
    assert bound["top3"] == ["0.1", "0.2", "0.3"]
    assert bound["stop_after"] == {"0.4": 2, "0.5": 4, "0.6": 1}
    # spent: 3 x 4 (top 3) + 4 (0.4 to report 2 at 2 s a report) + 4 (0.5) + 1 (0.6)
    total = 3 * 4 + 8 + 4 + 4
    assert bound["compute_bound"] == pytest.approx(round((12 + 4 + 4 + 1) / total, 4))
    assert bound["target_reachable"] is False  # 21 / 28 = 0.75


def test_a_trial_never_behind_is_charged_in_full() -> None:
    trials = {lr: _trial([0.9, 0.9]) for lr in (0.1, 0.2, 0.3)}
    trials[0.4] = _trial([0.95, 0.1])  # the best: top 3 is 0.4 and the first two ties
    bound = fb.grid_bound(trials)
    assert bound["top3"] == ["0.4", "0.1", "0.2"]
    assert bound["stop_after"] == {"0.3": None}  # tied with the top 3, so never behind them
    assert bound["compute_bound"] == 1.0


def test_a_tiny_grid_trains_end_to_end() -> None:
    trials = fb.run_grid("digits", "mlp", 2, [0.1, 3.0])
    assert set(trials) == {0.1, 3.0}
    for trial in trials.values():
        assert len(trial["accuracy"]) == len(trial["seconds"]) == 2
        assert all(0.0 <= a <= 1.0 for a in trial["accuracy"])
        assert 0 < trial["seconds"][0] < trial["seconds"][1]
        assert trial["diverged_at"] in (None, 1, 2)
    assert max(trials[0.1]["accuracy"]) > 0.5  # lr 0.1 learns digits within 2 epochs
    assert math.isfinite(fb.grid_bound(trials, top=1)["compute_bound"])


def _reports(accuracy: list[float], loss: list[float], live: float = 1.0) -> list[dict]:
    """Reports as Tune flattens them: one tracked layer 'fc' that keeps moving."""
    return [
        {
            "test_accuracy": a,
            "train_loss": loss_value,
            "frozen/fc": 0,
            "self_similarity/fc": 0.9,
            "init_similarity/fc": 0.9 - 0.05 * t,
            "live_fraction/fc": live,
        }
        for t, (a, loss_value) in enumerate(zip(accuracy, loss))
    ]


def test_replay_feeds_the_reports_in_step_to_the_schedulers_stopping_rules() -> None:
    n = 6
    good = [[0.5 + 0.07 * t for t in range(n)], [0.4 + 0.07 * t for t in range(n)],
            [0.3 + 0.07 * t for t in range(n)]]  # fmt: skip
    trials = {
        lr: {"accuracy": acc, "seconds": [float(t + 1) for t in range(n)],
             "reports": _reports(acc, [1.0] * n)}
        for lr, acc in zip((0.1, 0.2, 0.3), good)
    }  # fmt: skip
    nan_loss = [1.0, math.nan, 1.0, 1.0, 1.0, 1.0]
    trials[3.0] = {"accuracy": [0.1] * n, "seconds": [float(t + 1) for t in range(n)],
                   "reports": _reports([0.1] * n, nan_loss)}  # fmt: skip
    replay = fb.replay_stops(trials)
    # the NaN loss stops the diverged trial at its 2nd report; the three learners run on
    assert replay["stopped"] == {"3.0": [2, "diverged: non-finite value"]}
    assert replay["top3_kept"] is True
    assert replay["compute"] == pytest.approx((3 * 6 + 2) / (4 * 6), abs=1e-4)


def test_replay_keeps_the_schedulers_exceptions_to_divergence() -> None:
    # as SVCCAScheduler: a NaN similarity in a trial that learned, and a best-so-far loss that
    # is infinite before its first value, stop nothing; the same NaN in a trial at its first
    # value, and a loss infinite after it was finite, do
    n = 6
    learner = [0.5 + 0.07 * t for t in range(n)]
    trials = {}
    for lr, acc in zip((0.1, 0.2, 0.3), (learner, learner[::-1], [0.3] * n)):
        reports = _reports(acc, [1.0] * n)
        trials[lr] = {"accuracy": acc, "seconds": [float(t + 1) for t in range(n)],
                      "reports": reports}  # fmt: skip
    trials[0.1]["reports"][4]["self_similarity/fc"] = math.nan  # learned: runs on
    trials[0.3]["reports"][3]["self_similarity/fc"] = math.nan  # never learned: stopped
    for t, report in enumerate(trials[0.2]["reports"]):
        report["best_val_loss"] = math.inf if t in (0, 1, 5) else 0.5  # inf at 6: diverged
    replay = fb.replay_stops(trials)
    assert replay["stopped"] == {
        "0.3": [4, "diverged: non-finite value"],
        "0.2": [6, "diverged: non-finite value"],
    }
