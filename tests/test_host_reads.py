"""The hot path reads no tensor back to Python: the standard metric set adds no host read to a
training step, and a report (the collector) or an epoch's TensorBoard flush reads once per device.

On a GPU every such read (``.item()``, ``.tolist()``, ``bool(tensor)``, ...) is a host
synchronisation. They are counted here on the CPU by wrapping those methods of ``torch.Tensor``,
against plain training of the same model as the reference.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.tune.collector import MetricCollector

READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__")
STEPS = 12


@contextmanager
def counting_reads() -> Iterator[Counter[str]]:
    """Count the calls of every Tensor method that reads a value back to Python."""
    counts: Counter[str] = Counter()
    with pytest.MonkeyPatch.context() as patch:
        for name in READS:
            original = getattr(torch.Tensor, name)

            def counted(self, *args, _original=original, _name=name, **kwargs):  # type: ignore[no-untyped-def]
                counts[_name] += 1
                return _original(self, *args, **kwargs)

            patch.setattr(torch.Tensor, name, counted)
        yield counts


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 16), nn.ReLU(),
        nn.Linear(16, 3),
    )  # fmt: skip


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g))
        for _ in range(STEPS)
    ]


def _train(model: nn.Module, opt: torch.optim.Optimizer, loss_fn) -> None:  # type: ignore[no-untyped-def]
    for x, y in _batches():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()


def test_the_standard_set_adds_no_host_read_to_a_step_and_reads_once_per_report(
    tmp_path,
) -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with counting_reads() as plain:
        _train(model, opt, F.cross_entropy)

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    bus = MessageBus(log_dir=tmp_path)  # TensorBoard, as a user gets by default
    exporter = ik.Exporter(model, opt, bus)
    subscribers = [
        ik.NormSubscriber("weights", bus),
        ik.NormSubscriber("weight_gradients", bus),
        ik.RatioSubscriber(["weight_updates", "weights"], bus),
        ik.LossSubscriber(bus),
        ik.TrainAccuracySubscriber(bus),
    ]
    published = {k: bus.kind_type(k) for s in subscribers for k in s.publications}
    collector = MetricCollector(published, list(exporter.modules))
    collector.attach(bus)
    with counting_reads() as instrumented:
        _train(model, opt, exporter.wrap_loss(F.cross_entropy))
    assert sum(instrumented.values()) == sum(plain.values()), (instrumented, plain)

    with counting_reads() as report:
        numbers = collector.collect()
    assert sum(report.values()) == 1, report  # one transfer for every value of the report
    assert set(numbers["weights_norm2"]) == {"0", "3", "5"}
    assert all(isinstance(v, float) for v in numbers["weight_gradients_norm2"].values())
    assert isinstance(numbers["train_accuracy"], float)
    assert set(numbers["weight_updates_weights_ratio"]) == {"0", "3", "5"}

    with counting_reads() as flush:
        exporter.epoch_finished()  # flushes the TensorBoard backend: STEPS steps of values
    assert sum(flush.values()) == 1, flush
    exporter.close()
    bus.close()


def test_a_report_reads_the_users_tensors_with_the_subscribers_values_once() -> None:
    """``ik.report({"loss": tensor, ...})``: the user's tensors and every subscriber value in
    one transfer per device (a GPU synchronises once per report, not once more for the loss)."""
    counted: list[Counter[str]] = []
    reported: list[dict] = []

    def trainable(config: dict) -> None:
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        exporter = ik.watch(model, opt)
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        for x, y in _batches()[:3]:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
        exporter.epoch_finished()
        metrics = {"loss": loss.detach(), "nested": {"flag": loss.detach() > 0}, "n": 3}
        with counting_reads() as reads:
            reported.append(ik.report(metrics))
        counted.append(reads)

    subscribers = [ik.NormSubscriber("weights", backend=None), ik.LossSubscriber(backend=None)]
    ik.instrument(trainable, subscribers)({})
    assert sum(counted[0].values()) == 1, counted[0]
    result = reported[0]
    assert isinstance(result["loss"], float) and result["nested"] == {"flag": True}
    assert result["n"] == 3 and set(result["weights_norm2"]) == {"0", "3", "5"}
    assert all(isinstance(v, float) for v in result["weights_norm2"].values())


def test_an_epochs_histograms_are_read_in_one_transfer(tmp_path) -> None:
    """HistogramSubscriber's counts, edges and statistics of every layer and step: one read
    when the epoch's end flushes them (was three per histogram)."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    bus = MessageBus(log_dir=tmp_path)
    exporter = ik.Exporter(model, opt, bus)
    ik.HistogramSubscriber("weights", bus)
    _train(model, opt, exporter.wrap_loss(F.cross_entropy))
    with counting_reads() as flush:
        exporter.epoch_finished()
    assert sum(flush.values()) == 1, flush
    exporter.close()
    bus.close()
