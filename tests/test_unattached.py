"""A subscriber made without a bus and never attached receives nothing; the first training step
names it in a warning (the original ikkuna's subscribers defaulted to a global bus)."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ikkuna_tune as ik


def _train(exporter: ik.Exporter, model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    loss_fn = exporter.wrap_loss(F.cross_entropy)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(torch.randn(4, 3)), torch.randint(0, 2, (4,))).backward()
        opt.step()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "attached to none" in r.getMessage()]


def test_a_subscriber_without_a_bus_is_named_at_the_first_step_and_gets_nothing(caplog) -> None:
    """Written as for the original ikkuna (no bus named, the subscriber not even kept): the
    first step warns once, naming it; the one attached later gets its messages, unnamed."""
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    got: list[str] = []
    with ik.Exporter(model, opt) as exporter:
        ik.NormSubscriber("weights", backend=None)  # as the original ikkuna's code would
        later = ik.CallbackSubscriber(["loss"], lambda m: got.append(m.kind))
        exporter.message_bus.register_subscriber(later)
        with caplog.at_level(logging.WARNING, logger="ikkuna_tune.unattached"):
            _train(exporter, model, opt, 3)
    (message,) = _warnings(caplog)
    assert message.startswith("1 subscriber(s)") and "NormSubscriber(kinds=['weights'])" in message
    assert got == ["loss"] * 3


def test_subscribers_on_a_bus_are_not_named(caplog) -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with ik.Exporter(model, opt) as exporter:
        ik.NormSubscriber("weights", exporter.message_bus, backend=None)
        with caplog.at_level(logging.WARNING, logger="ikkuna_tune.unattached"):
            _train(exporter, model, opt, 2)
    assert _warnings(caplog) == []


def test_subscribers_a_data_parallel_rank_leaves_out_are_not_named(caplog) -> None:
    """On a Ray Train job's ranks other than 0 the subscribers that run the model (test
    accuracy, SVCCA) are left out on purpose: no warning names them there."""
    from torch.utils.data import TensorDataset

    from ikkuna_tune.bus import MessageBus
    from ikkuna_tune.tune.train_workers import subscribers_for_rank
    from ikkuna_tune.unattached import warn_unattached

    data = TensorDataset(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
    chosen = [ik.NormSubscriber("weights", backend=None), ik.TestAccuracySubscriber(data)]
    bus = MessageBus()
    for subscriber in subscribers_for_rank(chosen, 1):
        bus.register_subscriber(subscriber)
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.unattached"):
        warn_unattached()
    assert _warnings(caplog) == []


def test_templates_handed_to_instrument_are_not_named(caplog) -> None:
    """``ik.instrument(train, [templates])`` attaches copies of the templates in each trial:
    run locally, the templates themselves (never attached) are not named."""

    def trainable(config) -> None:
        model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        exporter = ik.watch(model, opt)
        _train(exporter, model, opt, 2)
        exporter.epoch_finished()
        ik.report({"x": 1.0})

    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.unattached"):
        ik.instrument(trainable, [ik.NormSubscriber("weights", backend=None)])({})
    assert _warnings(caplog) == []
    assert set(ik.local_results()[-1]["weights_norm2"]) == {"0", "2"}


def test_a_trial_ended_before_watch_leaves_none_of_its_subscribers_to_the_next(caplog) -> None:
    """A trial that returns before ``ik.watch`` (a config it skips) never attaches what its
    factory made: the next trial in the process (a reused actor, the next local call) attaches
    all of its own and must not be told of the first trial's."""

    def trainable(config) -> None:
        if config["skip"]:
            return
        model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        exporter = ik.watch(model, opt)
        _train(exporter, model, opt, 2)
        ik.report({"x": 1.0})

    def subscribers(config) -> list[ik.Subscriber]:
        return [ik.NormSubscriber("weights", backend=None)]

    instrumented = ik.instrument(trainable, subscribers)
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune.unattached"):
        instrumented({"skip": True})
        instrumented({"skip": False})
    assert _warnings(caplog) == []
    assert set(ik.local_results()[-1]["weights_norm2"]) == {"0", "2"}
