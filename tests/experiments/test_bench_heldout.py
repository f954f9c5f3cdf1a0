"""The held-out benchmark's grids and its per-grid figures against a hand computation."""

from __future__ import annotations

import pytest
import torch

from experiments import bench_heldout
from experiments.fidelity_trial import build_model


def _trial(accuracy: float, reports: int = 12, seconds: float = 1.0, tid: str = "") -> dict:
    return {"accuracy": accuracy, "reports": reports, "seconds": seconds, "trial_id": tid}


def test_grid_summary_against_hand_computation() -> None:
    fifo = {"a": _trial(0.9), "b": _trial(0.8), "c": _trial(0.7), "d": _trial(0.2)}
    svcca = {
        "a": _trial(0.9, tid="sa"),
        "b": _trial(0.795, tid="sb", seconds=0.5),  # frozen: half a point lower
        "c": _trial(0.7, tid="sc"),
        "d": _trial(0.1, reports=3, seconds=0.25, tid="sd"),
    }
    decisions = [
        {"trial_id": "sd", "action": "stop", "iteration": 3, "layer": None, "rule": "dead layer"},
        {"trial_id": "sb", "action": "freeze", "iteration": 7, "layer": "fc1", "rule": "c"},
        {"trial_id": "other", "action": "stop", "iteration": 1, "layer": None, "rule": "x"},
    ]
    summary = bench_heldout.grid_summary({"fifo": fifo, "svcca": svcca}, decisions)
    assert summary["best_same"] and summary["best_acc_delta"] == 0.0
    assert summary["top3"] == ["a", "b", "c"]
    assert summary["top3_worst_delta"] == pytest.approx(-0.005)
    assert summary["reports_ratio"] == round((12 * 3 + 3) / 48, 3)
    assert summary["compute_ratio"] == round(2.75 / 4, 3)
    assert summary["stopped"] == {"d": "report 3: dead layer"}
    assert summary["frozen"] == {"b": ["fc1 at report 7"]}
    assert summary["answer_kept"]
    # the best configuration changed: the answer is not kept, whatever the top 3 did
    svcca["b"] = _trial(0.95, tid="sb")
    changed = bench_heldout.grid_summary({"fifo": fifo, "svcca": svcca}, [])
    assert not changed["best_same"] and not changed["answer_kept"]


@pytest.mark.parametrize("grid", sorted(bench_heldout.GRIDS))
def test_every_grid_varies_one_axis_and_builds(grid: str) -> None:
    configs = bench_heldout.GRIDS[grid]
    labels = [bench_heldout.label(c) for c in configs]
    assert len(set(labels)) == len(labels) >= 6  # one trial per configuration
    for config in configs:
        hidden = config.get("hidden")
        model = build_model(config.get("family", "mlp"), (1, 8, 8), tuple(hidden or ()) or None)
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    variants = bench_heldout.variants([grid], seed=3)
    assert len(variants) == 2 * len(configs)
    assert [v["scheduler"] for v in variants[:2]] == ["fifo", "svcca"]  # twins side by side
    assert {v["seed"] for v in variants} == {3}
