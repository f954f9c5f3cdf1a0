"""Parameters that no layer holds (a module with children that holds parameters itself) are
named in a warning when the Exporter is made, and get no per-layer metrics."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.layers import select_modules, unowned_parameters


class WithToken(nn.Module):
    """A class token on the model itself, beside its layers."""

    def __init__(self) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 4))
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x + self.token)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "held by modules" in r.getMessage()]


def _every_parameter_name(model: nn.Module) -> set[str]:
    return {name for name, _ in model.named_parameters()}


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (
            lambda: nn.TransformerEncoderLayer(8, 2, 16),
            {"self_attn": ["in_proj_weight", "in_proj_bias"]},
        ),
        (WithToken, {"": ["token"]}),
        (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)), {}),
    ],
    ids=["attention", "model_token", "plain"],
)
def test_unowned_parameters_are_those_no_layer_holds(make, expected) -> None:
    model = make()
    layers = select_modules(model)
    unowned = unowned_parameters(model, layers)
    assert unowned == expected
    # brute force: every parameter is held by exactly one layer itself, or listed as unowned
    held = {f"{n}.{p}" if n else p for n, m in layers.items() for p in m._parameters}
    listed = {f"{n}.{p}" if n else p for n, ps in unowned.items() for p in ps}
    assert held | listed == _every_parameter_name(model) and not held & listed


def test_a_parametrised_layer_owns_its_parametrisations_parameters() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    nn.utils.parametrizations.weight_norm(model[0])
    assert unowned_parameters(model, select_modules(model)) == {}


def test_the_exporter_warns_once_naming_them(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.exporter"):
        ik.Exporter(nn.TransformerEncoderLayer(8, 2, 16), message_bus=MessageBus())
        ik.Exporter(WithToken(), message_bus=MessageBus())
        ik.Exporter(nn.Sequential(nn.Linear(2, 2)), message_bus=MessageBus())
    got = _warnings(caplog)
    assert len(got) == 2
    assert "'self_attn': ['in_proj_weight', 'in_proj_bias']" in got[0]
    assert "'<model>': ['token']" in got[1]


def test_no_warning_when_the_user_chose_the_layers(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.exporter"):
        ik.Exporter(nn.TransformerEncoderLayer(8, 2, 16), message_bus=MessageBus(), depth=1)
        ik.Exporter(
            nn.TransformerEncoderLayer(8, 2, 16), message_bus=MessageBus(), module_filter=nn.Linear
        )
    assert _warnings(caplog) == []
