"""A computed weight (a layer whose ``weight`` is a property over its parameters, as a
parametrisation computes it) is not in the layer's parameters: the Exporter reads it through the
layer's attribute, step by step, and its update is the change of the computed weight. Layers
parametrised with ``torch.nn.utils.parametrize`` (``weight_norm``, ``spectral_norm``, the user's
own) are tracked as layers, and frozen with every parameter of their parametrisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.layers import select_modules


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


class Doubled(nn.Module):
    """A parametrisation: the weight is twice its original."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    parametrizations.weight_norm(model[0])
    parametrize.register_parametrization(model[2], "weight", Doubled())
    return model


def test_parametrised_layers_are_selected_and_nothing_inside_their_parametrisations() -> None:
    model = _model()
    assert list(select_modules(model)) == ["0", "2", "4"]
    assert list(select_modules(model, depth=2)) == ["0", "2", "4"]
    nested = nn.Sequential(nn.Sequential(model[0]), nn.ReLU(), nn.Linear(6, 1))
    assert list(select_modules(nested, depth=1)) == ["0", "2"]
    assert list(select_modules(nested)) == ["0.0", "2"]


def test_a_parametrised_weight_is_published_as_the_layer_computes_it() -> None:
    """Published weight norms and update ratios of the parametrised layers equal those
    computed by hand from ``layer.weight`` before and after each step; the weight published
    carries no autograd graph."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    bus = MessageBus()
    ik.NormSubscriber("weights", bus, backend=None)
    ik.RatioSubscriber(["weight_updates", "weights"], bus, backend=None)
    got: dict[tuple[str, str], list[float]] = {}
    graphs: list[bool] = []

    def keep(message) -> None:
        got.setdefault((message.kind, message.key), []).append(float(message.data))

    ik.CallbackSubscriber(["weights_norm2", "weight_updates_weights_ratio"], keep, bus)
    ik.CallbackSubscriber(["weights"], lambda m: graphs.append(m.data.requires_grad), bus)
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    expected: dict[tuple[str, str], list[float]] = {}
    with ik.Exporter(model, opt, bus):
        for _ in range(3):
            before = {n: model[int(n)].weight.detach().clone() for n in ("0", "2")}
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            for name, b in before.items():
                after = model[int(name)].weight.detach()
                expected.setdefault(("weights_norm2", name), []).append(b.norm().item())
                expected.setdefault(("weight_updates_weights_ratio", name), []).append(
                    ((after - b).norm() / b.norm()).item()
                )
    assert expected[("weight_updates_weights_ratio", "0")][0] > 1e-3  # it moved
    for key, values in expected.items():
        assert got[key] == pytest.approx(values, rel=1e-5)
    assert not any(graphs)


def test_freezing_a_parametrised_layer_freezes_its_parametrisation() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    with ik.Exporter(model, opt) as exporter:
        exporter.freeze("0")
        originals = [p.detach().clone() for p in model[0].parameters()]
        trained_before = model[2].parametrizations.weight.original.detach().clone()
        assert len(originals) == 3  # weight_norm's magnitude and direction, and the bias
        for _ in range(2):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        for old, new in zip(originals, model[0].parameters()):
            assert torch.equal(old, new)
        assert not torch.equal(model[2].parametrizations.weight.original, trained_before)
