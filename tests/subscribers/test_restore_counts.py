"""A run restored from a checkpoint mid-way measures at the steps the uninterrupted run does:
subsampling counts and the batches counted towards a frequency are part of the state."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import ikkuna_tune as ik

X = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


def _setup(model: nn.Module, seen: dict[str, list[int]]):  # type: ignore[no-untyped-def]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    exporter = ik.Exporter(model, opt)
    bus = exporter.message_bus
    subscribers = [
        ik.NormSubscriber("weights", bus, backend=None, subsample=3),
        ik.RatioSubscriber(["weight_updates", "weights"], bus, backend=None, subsample=4),
        ik.CallbackSubscriber(
            ["weights", "weight_gradients"],
            lambda b: seen["bundle"].append(b.global_step),
            bus,
            subsample=3,
            synchronized=True,
        ),
        ik.TestAccuracySubscriber(TensorDataset(X, Y), frequency=3, message_bus=bus, backend=None),
    ]
    for kind in ("weights_norm2", "weight_updates_weights_ratio", "test_accuracy"):
        ik.CallbackSubscriber(
            [kind],
            lambda m, k=kind: seen[k].append(m.global_step) if m.key in ("0", None) else None,
            bus,
        )
    return opt, exporter, subscribers


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> None:
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(X), Y).backward()
        opt.step()


def _seen() -> dict[str, list[int]]:
    return {
        "bundle": [],
        "weights_norm2": [],
        "weight_updates_weights_ratio": [],
        "test_accuracy": [],
    }


@pytest.mark.parametrize("restore_at", [1, 5, 7, 8])
def test_a_restored_run_measures_at_the_steps_of_the_uninterrupted_one(restore_at: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    reference = _seen()
    opt, exporter, _ = _setup(copy.deepcopy(model), reference)
    _train(exporter.model, opt, 14)
    exporter.close()

    seen = _seen()
    opt, exporter, subscribers = _setup(copy.deepcopy(model), seen)
    _train(exporter.model, opt, restore_at)
    state = {
        "exporter": exporter.state_dict(),
        "subscribers": [s.state_dict() for s in subscribers],
        "model": copy.deepcopy(exporter.model.state_dict()),
    }
    exporter.close()
    restored = copy.deepcopy(model)
    restored.load_state_dict(state["model"])
    opt, exporter, subscribers = _setup(restored, seen)
    exporter.load_state_dict(state["exporter"])
    for subscriber, saved in zip(subscribers, state["subscribers"]):
        subscriber.load_state_dict(saved)
    _train(restored, opt, 14 - restore_at)
    exporter.close()
    assert reference["weights_norm2"] == [0, 3, 6, 9, 12]  # the rule the runs are held to
    assert seen == reference


def test_states_saved_before_counts_were_kept_still_load() -> None:
    test_accuracy = ik.TestAccuracySubscriber(TensorDataset(X, Y), frequency=3, backend=None)
    test_accuracy.load_state_dict({})
    assert test_accuracy.trigger.batches == 0
    norm = ik.NormSubscriber("weights", backend=None, subsample=3)
    norm.load_state_dict({})
    with pytest.raises(ValueError, match="counts of 1 subscriptions"):
        norm.load_state_dict({"subscriptions": []})


def test_a_restore_between_two_bundles_of_one_step_keeps_them_one_round() -> None:
    """Bundles of one step are one subsampling round (several evaluation batches at one
    global step, say); restored between two of them, the second still joins that round."""
    from ikkuna_tune.bus import MessageBus

    def subscriber(bus: MessageBus, got: list[int]) -> ik.CallbackSubscriber:
        return ik.CallbackSubscriber(
            ["network_output"], lambda b: got.append(b.global_step), bus,
            tag="eval", synchronized=True, subsample=2,
        )  # fmt: skip

    def publish(bus: MessageBus, step: int) -> None:
        bus.publish_network_message(
            "network_output", torch.ones(2), global_step=step, train_step=step, epoch=0, tag="eval"
        )

    steps = [0, 0, 1, 1, 2, 3, 4, 4]  # two evaluation batches at most steps
    whole: list[int] = []
    bus = MessageBus()
    subscriber(bus, whole)
    for step in steps:
        publish(bus, step)
    assert whole == [0, 0, 2, 4, 4]
    restored: list[int] = []
    first = MessageBus()
    before = subscriber(first, restored)
    publish(first, 0)
    again = MessageBus()
    subscriber(again, restored).load_state_dict(copy.deepcopy(before.state_dict()))
    for step in steps[1:]:
        publish(again, step)
    assert restored == whole
