"""Per-sample gradients with ``torch.func`` (``vmap(grad(...))`` over ``functional_call``, the
DP-SGD recipe) on a watched model: the transformed forward passes publish nothing (their
tensors are the transform's; reading the weights there failed with "Cannot access data pointer
of Tensor that doesn't have storage"), and what the optimizer steps is published as usual."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus


def test_per_sample_gradients_publish_the_steps_gradients_and_updates(caplog) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus()
    for kind in ("weights", "activations", "weight_gradients", "weight_updates"):
        ik.NormSubscriber(kind, bus, backend=None)
    got: dict[str, list[tuple[int, float]]] = {}
    ik.CallbackSubscriber(
        ["weights_norm2", "activations_norm2", "weight_gradients_norm2", "weight_updates_norm2"],
        lambda m: (
            got.setdefault(m.kind, []).append((m.global_step, float(m.data)))
            if m.key == "0"
            else None
        ),
        bus,
    )

    def loss(params, x, y):  # type: ignore[no-untyped-def]
        return F.cross_entropy(functional_call(model, params, (x[None],)), y[None])

    want: dict[str, list[float]] = {
        "weights_norm2": [],
        "weight_gradients_norm2": [],
        "weight_updates_norm2": [],
    }
    with caplog.at_level(logging.WARNING), ik.Exporter(model, opt, bus):
        for _ in range(3):
            x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
            params = {k: v.detach() for k, v in model.named_parameters()}
            per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
            for name, p in model.named_parameters():
                p.grad = per_sample[name].mean(0)
            before = model[0].weight.detach().clone()
            want["weights_norm2"].append(before.norm().item())
            opt.step()
            want["weight_gradients_norm2"].append(model[0].weight.grad.norm().item())
            want["weight_updates_norm2"].append((model[0].weight.detach() - before).norm().item())
    assert "activations_norm2" not in got  # per-sample tensors are not the step's
    for kind, values in want.items():
        assert [v for _, v in got[kind]] == pytest.approx(values, rel=1e-5), kind
    assert [step for step, _ in got["weight_updates_norm2"]] == [0, 1, 2]
    warned = [r for r in caplog.records if "torch.func transform" in r.getMessage()]
    assert len(warned) == 1
