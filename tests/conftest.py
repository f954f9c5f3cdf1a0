"""Shared fixtures: a tiny conv + linear model and a batch."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

# Ray Train's controller collects its workers' reports every 2 s by default: a data-parallel
# trial's report reached Tune up to 2 s after training made it, which made the Train tests wait
# (set before any Ray session or subprocess of the suite starts, so that every one inherits it)
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


class TinyNet(nn.Module):
    """conv(1->3, 3x3) -> relu -> flatten -> linear(48 -> 5) on 6x6 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.act = nn.ReLU()
        self.fc = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).flatten(1))


@pytest.fixture(autouse=True)
def _no_unattached_from_other_tests() -> None:
    """Forget the subscribers other tests made without a bus (each test's first training step
    names those still unattached, ikkuna_tune.unattached): a test sees only its own."""
    from ikkuna_tune import unattached

    unattached._UNATTACHED.clear()


@pytest.fixture
def tiny() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 5, (8,), generator=g)
