"""bench_fidelity's figures, computed by hand on made-up trials (no Ray)."""

from __future__ import annotations

import pandas as pd
import pytest

from experiments.bench_fidelity import cell_summary, trial_summary, variants


def t(
    acc: float,
    seconds: float,
    reports: int = 10,
    diverged: bool = False,
    frozen: bool = False,
    score: float | None = None,
) -> dict:
    return {
        "accuracy": acc,
        "score": acc if score is None else score,
        "seconds": seconds,
        "reports": reports,
        "diverged": diverged,
        "frozen": frozen,
    }


def test_cell_summary_against_hand_computation() -> None:
    fifo = {0.01: t(0.90, 10), 0.1: t(0.97, 10), 0.3: t(0.95, 10), 1.0: t(0.1, 10, diverged=True)}
    trials = {
        "fifo": fifo,
        "asha": {0.01: t(0.5, 2), 0.1: t(0.97, 10), 0.3: t(0.95, 10), 1.0: t(0.1, 1)},
        "svcca": {0.01: t(0.895, 8), 0.1: t(0.965, 9), 0.3: t(0.95, 9), 1.0: t(0.1, 2, 2)},
        "svcca_asha": {0.01: t(0.5, 2), 0.1: t(0.97, 8), 0.3: t(0.95, 8), 1.0: t(0.1, 1, 1)},
        "freeze": {
            0.01: t(0.89, 7, frozen=True),
            0.1: t(0.97, 8),
            0.3: t(0.96, 9, frozen=True),
            1.0: t(0.1, 10, frozen=True),  # not a good trial: not counted
        },
    }
    out = cell_summary(trials, epochs=10)
    assert out["asha"]["compute_ratio"] == pytest.approx(23 / 40, abs=1e-3)
    assert out["asha"]["top3_worst_delta"] == pytest.approx(0.5 - 0.9)
    assert out["svcca"] == {
        "compute_ratio": pytest.approx(28 / 40),
        "reports_ratio": pytest.approx(32 / 40),  # the diverged trial stopped at report 2
        "best_same": True,
        "best_acc_delta": pytest.approx(-0.005),
        "top3_worst_delta": pytest.approx(-0.005),
    }
    assert out["svcca_asha"]["vs_asha"]["compute_ratio"] == pytest.approx(
        19 / 23, abs=1e-3
    )  # rounded to 3 places
    assert out["freeze"] == {
        "worst_good_delta": pytest.approx(-0.01),
        "time_ratio_good": pytest.approx(24 / 30),
        "good_trials": 3,
        "good_trials_frozen": 2,
    }
    assert out["diverged_lrs"] == [1.0] and out["diverged_reports"] == 2
    assert out["targets"] == {
        "svcca": False,  # 0.7 of FIFO's compute
        "svcca_asha": True,
        "freeze": True,
        "diverged_stopped_by_half": True,
    }


def test_a_shorter_time_without_saved_work_meets_no_compute_target() -> None:
    # every scheduler makes every report and freezes nothing, in less measured time (noise)
    fifo = {lr: t(acc, 10) for lr, acc in ((0.01, 0.9), (0.1, 0.97), (0.3, 0.95))}
    same = {lr: t(trial["accuracy"], 5) for lr, trial in fifo.items()}
    trials = {"fifo": fifo, "asha": fifo, "svcca": same, "svcca_asha": same, "freeze": same}
    out = cell_summary(trials, epochs=10)
    assert out["svcca"]["compute_ratio"] == 0.5 and out["svcca"]["reports_ratio"] == 1
    assert out["freeze"]["time_ratio_good"] == 0.5 and out["freeze"]["good_trials_frozen"] == 0
    assert out["targets"] == {
        "svcca": False,
        "svcca_asha": False,
        "freeze": False,
        "diverged_stopped_by_half": None,  # no trial diverged: nothing to judge
    }


def test_trial_summary_reads_best_accuracy_and_divergence() -> None:
    df = pd.DataFrame(
        {
            "test_accuracy": [0.5, 0.9, 0.8],
            "train_seconds": [1.0, 2.0, 3.0],
            "train_loss": [1.0, 0.5, float("nan")],
            "live_fraction/fc1": [1.0, 1.0, 1.0],
        }
    )
    assert trial_summary(df) == {
        "accuracy": 0.9,
        "score": 0.9,
        "seconds": 3.0,
        "reports": 3,
        "diverged": True,
        "frozen": False,
    }
    df["frozen_fraction"] = [0.0, float("nan"), 0.0]
    assert not trial_summary(df)["frozen"]
    df.loc[2, "frozen_fraction"] = 0.4
    assert trial_summary(df)["frozen"]
    df["train_loss"] = [1.0, 0.5, 0.4]
    assert not trial_summary(df)["diverged"]
    df.loc[2, "live_fraction/fc1"] = 0.0
    assert trial_summary(df)["diverged"]


def test_trial_summary_scores_the_steered_metric() -> None:
    df = pd.DataFrame(
        {
            "test_accuracy": [0.5, 0.9, 0.8],
            "test_accuracy_percent": [50.0, 90.0, 80.0],
            "test_loss": [1.2, float("nan"), 0.4],
            "train_seconds": [1.0, 2.0, 3.0],
            "train_loss": [1.0, 0.5, 0.4],
        }
    )
    assert trial_summary(df, "test_accuracy_percent")["score"] == 90.0
    # the lowest finite loss, negated (larger is better); the NaN is skipped
    assert trial_summary(df, "test_loss")["score"] == -0.4
    df["test_loss"] = float("nan")
    assert trial_summary(df, "test_loss")["score"] == -1e9  # ranks last


def test_cell_summary_ranks_by_score_in_units_and_picks_good_trials_by_accuracy() -> None:
    # steered on a loss: the lowest loss wins even where its accuracy is not the highest
    def loss_trial(acc: float, loss: float, seconds: float = 10, frozen: bool = False) -> dict:
        return t(acc, seconds, frozen=frozen, score=-loss)

    fifo = {0.01: loss_trial(0.90, 0.30), 0.1: loss_trial(0.95, 0.20), 0.3: loss_trial(0.97, 0.25)}
    other = {0.01: loss_trial(0.90, 0.30), 0.1: loss_trial(0.95, 0.26), 0.3: loss_trial(0.97, 0.25)}
    frozen = {lr: loss_trial(0.5, 0.32, frozen=True) for lr in fifo}
    trials = {"fifo": fifo, "asha": fifo, "svcca": other, "svcca_asha": fifo, "freeze": frozen}
    out = cell_summary(trials, epochs=10)
    assert out["svcca"]["best_same"] is False  # lr 0.3 (loss 0.25) now beats lr 0.1 (0.26)
    assert out["svcca"]["best_acc_delta"] == pytest.approx(-0.05)  # in the loss's units
    assert out["svcca"]["top3_worst_delta"] == pytest.approx(-0.06)
    assert out["freeze"]["worst_good_delta"] == pytest.approx(-0.12)  # 0.32 against 0.20
    assert out["freeze"]["good_trials"] == 3  # by accuracy (>= 0.8), not by the loss
    assert out["fifo_score"] == {"0.01": -0.3, "0.1": -0.2, "0.3": -0.25}
    # in percent: deltas in points of accuracy with unit=100
    pct = {lr: t(a, 10, score=100 * a) for lr, a in ((0.01, 0.9), (0.1, 0.97), (0.3, 0.95))}
    worse = {lr: t(trial["accuracy"], 10, score=trial["score"] - 2.0) for lr, trial in pct.items()}
    trials = {"fifo": pct, "asha": pct, "svcca": worse, "svcca_asha": pct, "freeze": pct}
    assert cell_summary(trials, epochs=10, unit=100.0)["svcca"]["top3_worst_delta"] == (
        pytest.approx(-0.02)
    )


def test_variants_put_the_groups_of_one_config_side_by_side() -> None:
    out = variants(["digits"], ["cnn", "mlp"], (0.1, 1.0))
    assert len(out) == 2 * 2 * 5
    assert [v["scheduler"] for v in out[:5]] == ["fifo", "asha", "svcca", "svcca_asha", "freeze"]
    assert {v["lr"] for v in out[:5]} == {0.1}


@pytest.mark.parametrize("freeze_best", [False, True])
def test_only_the_freezing_group_follows_freeze_best(freeze_best: bool) -> None:
    import ikkuna_tune as ik
    from experiments.bench_fidelity import schedulers

    made = schedulers(["digits"], ["cnn", "mlp"], freeze_best)
    assert len(made) == 2 * 5
    for name, scheduler in made.items():
        if isinstance(scheduler, ik.SVCCAScheduler):
            expected = freeze_best and name.endswith("/freeze")
            assert scheduler.freeze_best is expected, name
            assert scheduler.stop is not name.endswith("/freeze"), name


def test_waited_compares_a_paused_trial_with_fifo_report_for_report() -> None:
    from types import SimpleNamespace

    from experiments.bench_fidelity import waited
    from ikkuna_tune.tune.convergence import Decision

    def trial(trial_id: str, group: str, lr: float) -> SimpleNamespace:
        return SimpleNamespace(
            trial_id=trial_id, config={"variant": {"scheduler": group, "lr": lr}}
        )

    trials = [trial("f1", "fifo", 0.1), trial("s1", "svcca", 0.1), trial("s2", "svcca", 0.3),
              trial("s3", "svcca", 1.0)]  # fmt: skip
    scheduler = SimpleNamespace(
        decisions=[("s1", Decision("pause", "waits to be compared", 4)),
                   ("s2", Decision("pause", "waits to be compared", 4)),
                   ("s2", Decision("stop", "stuck", 5)),
                   ("s3", Decision("pause", "waits to be compared", 1)),
                   ("s3", Decision("freeze", "converged", 2, "fc1"))]
    )  # fmt: skip
    series = {
        ("d", "m", "fifo", 0.1): [0.1, 0.2, 0.3],
        ("d", "m", "svcca", 0.1): [0.1, 0.2],  # stopped early, the same so far
        ("d", "m", "fifo", 0.3): [0.5, 0.6],
        ("d", "m", "svcca", 0.3): [0.5, 0.61],  # its resume changed its training
        ("d", "m", "fifo", 1.0): [0.5, 0.6, 0.7],
        ("d", "m", "svcca", 1.0): [0.5, 0.6, 0.65],  # frozen at report 2: trains otherwise
    }
    assert waited(scheduler, trials, series, "d", "m") == {
        "0.1": {"at": 4, "reports": 2, "compared": 2, "same_as_fifo": True},
        "0.3": {"at": 4, "reports": 2, "compared": 2, "same_as_fifo": False},
        "1.0": {"at": 1, "reports": 3, "compared": 2, "same_as_fifo": True},
    }
