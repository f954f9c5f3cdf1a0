"""Mistakes in using instrument/watch/report are named where they are made."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ikkuna_tune as ik
from tests.conftest import TinyNet
from tests.tune.trainables import StepCount, WeightSum, data


class EpochCount(ik.Subscriber):
    """Runs at every epoch end (as frequency='epoch' subscribers do) and publishes a count."""

    def __init__(self) -> None:
        super().__init__([ik.Subscription(self, ["epoch_finished"])])
        self._add_publication("epochs_seen", "META")
        self.count = 0

    def compute(self, message) -> None:
        self.count += 1
        self.publish("epochs_seen", torch.tensor(float(self.count)), message)


def _train(config: dict) -> None:
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    exporter = ik.watch(model, opt)
    x, y = data()
    for epoch in range(config["epochs"]):
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        if config["end_epochs"]:
            exporter.epoch_finished()
        ik.report({"epoch": epoch})


def test_report_warns_once_when_epoch_subscribers_never_ran() -> None:
    trainable = ik.instrument(_train, [StepCount(), EpochCount()])
    with pytest.warns(UserWarning) as caught:
        trainable({"epochs": 3, "end_epochs": False})
    ours = [w for w in caught if "epoch_finished" in str(w.message)]
    assert len(ours) == 1
    message = str(ours[0].message)
    assert message.startswith("ik.report: 2 training steps and no epoch has ended")
    assert "EpochCount" in message and "StepCount" not in message
    assert "exporter.epoch_finished()" in message and "epochs_seen" in message
    assert ours[0].filename == __file__  # points at the user's ik.report line
    assert [r["epochs_seen"] for r in ik.local_results()] == [None, None, None]
    # silent when epochs end, or when no subscriber waits for them
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ik.instrument(_train, [EpochCount()])({"epochs": 2, "end_epochs": True})
        assert [r["epochs_seen"] for r in ik.local_results()] == [1.0, 2.0]
        ik.instrument(_train, [StepCount()])({"epochs": 2, "end_epochs": False})
        # a subscriber that also takes epoch ends but has a value per step is not waiting
        norms = ik.NormSubscriber("weights", backend=None)
        mean = ik.MessageMeanSubscriber("weights_norm2", backend=None)
        ik.instrument(_train, [norms, mean])({"epochs": 2, "end_epochs": False})
        assert all(r["weights_norm2_message_mean"] > 0 for r in ik.local_results())


def test_instrument_checks_the_templates_kinds_in_the_driver() -> None:
    late = ik.CallbackSubscriber(["weight_sums"], print)
    with pytest.raises(ValueError) as caught:
        ik.instrument(_train, [WeightSum(), late])
    message = str(caught.value)
    assert message.startswith("ik.instrument: subscriber 2 (CallbackSubscriber")
    assert "Unknown message kind(s) ['weight_sums']; did you mean 'weight_sum'?" in message
    assert "kinds published on this bus: ['weight_sum']" in message
    # a subscriber of another's topic must come after it, as when the trial attaches them
    ik.instrument(_train, [WeightSum(), ik.CallbackSubscriber(["weight_sum"], print)])
    with pytest.raises(
        ValueError, match=r"subscriber 1 .*'weight_sum', which subscriber 2 publishes; put it after"
    ):
        ik.instrument(_train, [ik.CallbackSubscriber(["weight_sum"], print), WeightSum()])


@pytest.mark.parametrize(
    ("kwargs", "called", "original"),
    [
        (
            {"model": "TinyNet"},
            r"ik\.watch\(model=str, optimizer=SGD\)",
            r"Expected `model` to be a torch.nn.Module",
        ),
        (
            {"module_filter": int},
            r"ik\.watch\(model=TinyNet, optimizer=SGD, module_filter=int\)",
            r"Expected `module_filter` to be an nn.Module subclass",
        ),
        (
            {"optimizer": "sgd"},
            r"ik\.watch\(model=TinyNet, optimizer=str\)",
            r"optimizer",
        ),
        (
            {"depth": 1, "module_filter": (nn.BatchNorm2d, nn.LSTM)},
            r"ik\.watch\(model=TinyNet, optimizer=SGD, depth=1, "
            r"module_filter=\(BatchNorm2d, LSTM\)\)",
            r"No layer of TinyNet matches depth=1",
        ),
    ],
)
def test_watch_errors_name_ik_watch_and_its_arguments(kwargs, called, original) -> None:
    def trainable(config: dict) -> None:
        model = TinyNet()
        arguments = {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.1)}
        arguments.update(config)
        ik.watch(**arguments)

    with pytest.raises(ValueError, match=rf"^{called}: ") as caught:
        ik.instrument(trainable)(kwargs)
    assert isinstance(caught.value.__cause__, ValueError)
    assert caught.value.__cause__.args[0] in str(caught.value)
    assert caught.match(original)


def test_watch_names_the_subscriber_a_trial_cannot_attach() -> None:
    def trainable(config: dict) -> None:
        ik.watch(TinyNet())  # no optimizer, but a subscriber wants updates

    with pytest.raises(ValueError) as caught:
        ik.instrument(trainable, [ik.NormSubscriber("weight_updates")])({})
    assert str(caught.value).startswith(
        "ik.watch(model=TinyNet): cannot attach subscriber 1 (NormSubscriber(kinds="
    )
    assert "need the optimizer" in str(caught.value)
