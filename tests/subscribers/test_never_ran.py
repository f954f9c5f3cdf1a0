"""A subscriber that runs the model every ``frequency`` training batches and never got that far
says so when it is detached (at the end of a trial), instead of leaving only missing values."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus


def _train(subscriber_of, batches: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = TensorDataset(torch.randn(12, 4), torch.randint(0, 3, (12,)))
    bus = MessageBus()
    exporter = ik.Exporter(model, opt, bus)
    subscriber = subscriber_of(data, bus)
    x, y = data.tensors
    for _ in range(batches):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    exporter.epoch_finished()
    exporter.close()
    subscriber.detach()


MAKERS = {
    "accuracy": lambda frequency: (
        lambda data, bus: ik.TestAccuracySubscriber(
            data, batch_size=4, message_bus=bus, frequency=frequency, backend=None
        )
    ),
    "svcca": lambda frequency: (
        lambda data, bus: ik.SVCCASubscriber(
            data, 6, message_bus=bus, frequency=frequency, backend=None
        )
    ),
}


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_a_frequency_never_reached_is_named_once_detached(kind, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.subscribers"):
        _train(MAKERS[kind](100), batches=7)
    warned = [r.getMessage() for r in caplog.records if "training batches came" in r.getMessage()]
    assert len(warned) == 1
    assert "7 training batches came, fewer than frequency=100" in warned[0]


@pytest.mark.parametrize("kind", sorted(MAKERS))
@pytest.mark.parametrize("frequency", [3, "epoch"])
def test_no_warning_when_it_ran(kind, frequency, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.subscribers"):
        _train(MAKERS[kind](frequency), batches=7)
    assert not [r for r in caplog.records if "training batches came" in r.getMessage()]
