"""A computed weight (a layer whose ``weight`` is a property over its parameters, as a
parametrisation computes it) is not in the layer's parameters: the Exporter reads it through the
layer's attribute, step by step, and its update is the change of the computed weight."""

from __future__ import annotations

import torch
from torch import nn

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus


class ScaledLinear(nn.Module):
    """``x @ weight.T`` with ``weight = raw / ||raw||`` (a unit-norm weight, computed)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.raw = nn.Parameter(torch.randn(n_out, n_in))

    @property
    def weight(self) -> torch.Tensor:
        return 3.0 * self.raw / self.raw.norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T


def test_a_computed_weight_is_published_as_the_layer_computes_it() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(ScaledLinear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert "weight" not in model[0]._parameters
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    bus = MessageBus()
    ik.NormSubscriber("weights", bus, backend=None)
    ik.RatioSubscriber(["weight_updates", "weights"], bus, backend=None)
    got: dict[str, list[float]] = {"weights_norm2": [], "weight_updates_weights_ratio": []}
    ik.CallbackSubscriber(
        list(got), lambda m: got[m.kind].append(float(m.data)) if m.key == "0" else None, bus
    )
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    norms, ratios = [], []
    with ik.Exporter(model, opt, bus):
        for _ in range(3):
            before = model[0].weight.detach().clone()
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            after = model[0].weight.detach()
            norms.append(before.norm().item())
            ratios.append(((after - before).norm() / before.norm()).item())
    assert ratios[0] > 1e-3  # the computed weight moved (its norm stays 3)
    assert len(got["weights_norm2"]) == len(got["weight_updates_weights_ratio"]) == 3
    for a, b in zip(got["weights_norm2"], norms):
        assert abs(a - b) <= 1e-6 * b
    for a, b in zip(got["weight_updates_weights_ratio"], ratios):
        assert abs(a - b) <= 1e-5 * b
