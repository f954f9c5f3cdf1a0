"""bench_regression's figures, computed by hand on made-up trials (no Ray), and its task."""

from __future__ import annotations

import pytest
import torch

from experiments.bench_regression import grid_summary, grids, name_of
from experiments.regression_trial import build_model, load


def _t(score: float, reports: int = 12) -> dict:
    return {"score": score, "reports": reports}


def test_grid_summary_against_hand_computation() -> None:
    fifo = {"a": _t(0.010), "b": _t(0.012), "c": _t(0.013), "d": _t(0.020)}
    # the late starter "a" stopped early: another configuration wins
    stopped = {**fifo, "a": _t(0.050, reports=4)}
    # "c" a little worse, within 1 % of the best (0.0001): kept
    close = {**fifo, "c": _t(0.01305), "d": _t(0.03, reports=3)}
    out = grid_summary({"fifo": fifo, "stopped": stopped, "close": close})
    assert out["stopped"] == {
        "best_same": False,
        "best_delta": pytest.approx(0.010 - 0.012),
        "top3_worst_delta": pytest.approx(0.010 - 0.050),
        "kept": False,
        "reports_ratio": pytest.approx(40 / 48, abs=1e-3),
        "stopped": 1,
    }
    assert out["close"]["kept"] and out["close"]["top3_worst_delta"] == pytest.approx(-0.00005)
    assert out["fifo"] == {"a": 0.01, "b": 0.012, "c": 0.013, "d": 0.02}


def test_grids_and_names() -> None:
    assert list(grids(quick=True)) == ["late_start_s0"]
    full = grids()
    assert [len(full[g]) for g in full] == [5, 5, 5, 7, 6]
    assert name_of({"lr": 0.1, "grid": "g", "scheduler": "fifo", "seed": 0}) == "lr=0.1,seed=0"


def test_the_task_is_fixed_and_small_scale() -> None:
    train, validation = load()
    assert (len(train), len(validation)) == (1000, 400)
    # the targets' spread: a constant prediction scores about 0.3**2 + 0.05**2
    variance = float(validation.tensors[1].var())
    assert 0.06 < variance < 0.13
    torch.manual_seed(0)
    plain = build_model(1.0)
    torch.manual_seed(0)
    small = build_model(0.3)
    for a, b in zip(small.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, 0.3 * b)
