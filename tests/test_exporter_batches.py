"""Batched delivery: when every subscription of a per-layer kind processes every message, the
Exporter publishes a training step's layers of that kind as one LayerBatch and the subscribers
reduce them with multi-tensor operations. The values must be those of the per-layer path and of
a computation by hand (plain autograd), whichever path the bus takes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.messages import LayerBatch, NamedModule
from ikkuna_tune.tune.collector import MetricCollector

STEPS = 3
KINDS = ("weights_norm2", "weight_gradients_norm2", "weight_updates_weights_ratio")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 7), nn.Tanh(), nn.Linear(7, 3))


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g))] * STEPS


class BatchCounter(ik.Subscriber):
    """Counts the batches and the single messages of ``kind`` it receives."""

    takes_batches = True

    def __init__(self, kind: str) -> None:
        self.batches = 0
        self.messages = 0
        super().__init__([ik.Subscription(self, [kind])])

    def compute(self, message) -> None:
        self.messages += 1

    def compute_batch(self, batch: LayerBatch) -> None:
        self.batches += 1


def _run(extra: str | None = None, freeze_at: int | None = None, subsample: int = 1):
    """Train STEPS steps with the standard set; ``extra``: also a plain callback on that kind
    (which takes no batches). The published values by (kind, layer, step), what was computed by
    hand, the counter of 'weights' deliveries and the collector."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    bus = MessageBus()
    ik.NormSubscriber("weights", bus, backend=None, subsample=subsample)
    ik.NormSubscriber("weight_gradients", bus, backend=None, subsample=subsample)
    ik.RatioSubscriber(["weight_updates", "weights"], bus, backend=None, subsample=subsample)
    counter = BatchCounter("weights")
    counter.attach(bus)
    got: dict = {}

    def keep(batch_or_message) -> None:
        got[(batch_or_message.kind, batch_or_message.key, batch_or_message.global_step)] = (
            batch_or_message.data
        )

    ik.CallbackSubscriber(list(KINDS), keep, bus)
    collector = MetricCollector({kind: "DATA" for kind in KINDS}, ["0", "2", "4"])
    collector.attach(bus)
    if extra is not None:
        ik.CallbackSubscriber([extra], lambda m: None, bus)
    expected: dict = {}
    with ik.Exporter(model, opt, bus) as exporter:
        for step, (x, y) in enumerate(_batches()):
            if step == freeze_at:
                exporter.freeze("0")
            before = {n: model[int(n)].weight.detach().clone() for n in ("0", "2", "4")}
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            grads = {n: model[int(n)].weight.grad for n in ("0", "2", "4")}
            opt.step()
            for n, w in before.items():
                expected[("weights_norm2", n, step)] = w.norm()
                if grads[n] is not None:
                    expected[("weight_gradients_norm2", n, step)] = grads[n].norm()
                change = model[int(n)].weight.detach() - w
                expected[("weight_updates_weights_ratio", n, step)] = change.norm() / w.norm()
    return got, expected, counter, collector


def test_the_standard_set_is_delivered_in_batches_with_the_values_computed_by_hand() -> None:
    got, expected, counter, collector = _run()
    assert counter.batches == STEPS and counter.messages == 0  # one delivery per step
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-6, atol=1e-8)
    reported = collector.collect()  # the last step's values, one number per layer
    for kind in KINDS:
        for layer in ("0", "2", "4"):
            value = expected[(kind, layer, STEPS - 1)].item()
            assert abs(reported[kind][layer] - value) <= 1e-6 * abs(value)


def test_a_subscriber_without_batches_gets_single_messages_and_the_values_do_not_change() -> None:
    batched, _, _, _ = _run()
    single, expected, counter, _ = _run(extra="weights")
    # weights now come one message at a time, and so do the updates paired with them
    assert counter.batches == 0 and counter.messages == 3 * STEPS
    assert single.keys() == batched.keys() == expected.keys()
    for key, value in batched.items():
        torch.testing.assert_close(single[key], value, rtol=1e-6, atol=1e-8)


def test_subsampling_takes_the_single_message_path() -> None:
    got, expected, counter, _ = _run(subsample=2)
    # one subscription of 'weights' subsamples: every subscription gets single messages
    assert counter.batches == 0 and counter.messages == 3 * STEPS
    assert {step for (_, _, step) in got} == {0, 2}
    for key, value in got.items():
        torch.testing.assert_close(value, expected[key], rtol=1e-6, atol=1e-8)


def test_a_frozen_layer_has_no_gradient_and_a_zero_update_in_its_batch() -> None:
    got, expected, _, _ = _run(freeze_at=1)
    assert ("weight_gradients_norm2", "0", 1) not in got
    assert got[("weight_updates_weights_ratio", "0", 1)].item() == 0.0
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=1e-6, atol=1e-8)


def test_the_collector_keeps_the_latest_value_whether_batched_or_single() -> None:
    bus = MessageBus()
    bus.register_kind("weights_norm2", "DATA")
    collector = MetricCollector({"weights_norm2": "DATA"}, ["a", "b"])
    collector.attach(bus)
    modules = [NamedModule(name, nn.Linear(1, 1)) for name in ("a", "b")]
    batch = LayerBatch("weights_norm2", "default", 0, 0, 0, modules, torch.tensor([1.0, 2.0]))
    collector.compute_batch(batch)
    bus.publish_module_message(
        "weights_norm2", modules[1], torch.tensor(5.0), global_step=0, train_step=0, epoch=0
    )
    assert collector.collect() == {"weights_norm2": {"a": 1.0, "b": 5.0}}
