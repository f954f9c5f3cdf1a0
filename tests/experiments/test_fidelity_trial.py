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
