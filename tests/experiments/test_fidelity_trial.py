"""fidelity_trial's own test measures, against a hand computation on the test split."""

from __future__ import annotations

import math

import pytest
import torch

import ikkuna_tune as ik
from experiments.fidelity_trial import METRICS, build_model, load, measure_on_test_split


def test_test_measures_against_hand_computation() -> None:
    torch.manual_seed(0)
    _, test = load("digits")
    inputs, labels = test.tensors
    model = build_model("mlp", tuple(inputs.shape[1:]))
    exporter = ik.Exporter(model)
    model.train()
    out = measure_on_test_split(model, exporter, "digits")
    assert model.training  # the probe restores the mode it found
    with torch.no_grad():
        model.eval()
        logits = model(inputs).double()
    log_p = logits - logits.exp().sum(dim=1, keepdim=True).log()
    loss = -float(log_p[torch.arange(len(labels)), labels].mean())
    right = sum(int(row.argmax()) == int(y) for row, y in zip(logits, labels, strict=True))
    counts = [int((labels == c).sum()) for c in range(10)]
    assert out["test_loss"] == pytest.approx(loss, rel=1e-5)
    assert out["test_accuracy_percent"] == pytest.approx(100 * right / len(labels))
    assert out["test_accuracy_percent_chance"] == pytest.approx(100 * max(counts) / len(labels))
    assert math.isfinite(out["test_loss"]) and exporter.global_step == 0  # no training step


def test_metrics_name_their_modes() -> None:
    assert METRICS == {"test_accuracy": "max", "test_accuracy_percent": "max", "test_loss": "min"}


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"lr_drop_epoch": 3},
        {"warmup_epochs": 2},
        {"warmup_epochs": 5, "warmup_factor": 0.1},
        {"warmup_epochs": 2, "lr_drop_epoch": 4, "lr_drop_factor": 0.5},
    ],
)
def test_the_learning_rate_schedule_is_the_warm_up_and_the_drop_by_hand(config) -> None:
    """Epoch by epoch (stepped at each epoch's end), the rate is the base rate times the
    warm-up's factor in the first ``warmup_epochs`` and the drop's factor from
    ``lr_drop_epoch`` on, written out by hand."""
    from experiments.fidelity_trial import lr_schedule

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.2)
    schedule = lr_schedule(opt, config)
    assert (schedule is None) == (config == {})
    for epoch in range(8):
        expected = 0.2
        if epoch < config.get("warmup_epochs", 0):
            expected *= config.get("warmup_factor", 0.01)
        if "lr_drop_epoch" in config and epoch >= config["lr_drop_epoch"]:
            expected *= config.get("lr_drop_factor", 0.1)
        assert opt.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12)
        opt.step()
        if schedule is not None:
            schedule.step()
