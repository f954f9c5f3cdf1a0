"""Gradient accumulation counted across epochs: an epoch that ends among the passes of one
optimizer step does not split that step in two.

The reference is the same loop in plain PyTorch: an accumulation step is every pass until an
optimizer step, its accuracy the share of those passes' samples predicted right."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.tune.collector import StepTimer

K, BATCH, BATCHES, EPOCHS = 3, 4, 10, 3  # 10 passes an epoch: a step straddles each epoch end


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCHES * BATCH, 6, generator=g)
    return x, torch.randint(0, 3, (len(x),), generator=g)


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: Callable[..., torch.Tensor],
    end_epoch: Callable[[int], None],
    zero_at_epoch_start: str | None = None,
) -> None:
    """K passes per optimizer step, counted over the whole run (or, with
    ``zero_at_epoch_start``, ``"none"`` or ``"inplace"``, each epoch's passes after its last
    step dropped by ``zero_grad`` to None or in place)."""
    x, y = _data()
    passes = 0
    for epoch in range(EPOCHS):
        if zero_at_epoch_start:
            opt.zero_grad(set_to_none=zero_at_epoch_start == "none")
            passes = 0
        for i in range(BATCHES):
            rows = slice(i * BATCH, (i + 1) * BATCH)
            (loss_fn(model(x[rows]), y[rows]) / K).backward()
            passes += 1
            if passes % K == 0:
                opt.step()
                opt.zero_grad()
        end_epoch(epoch)


class _PlainAccuracy:
    """The reference: the accuracy of each step's passes, counted in plain PyTorch (a step
    ends where the loop calls :meth:`close`)."""

    def __init__(self) -> None:
        self.counts = [0, 0]
        self.accuracies: list[float] = []

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.counts[0] += int((output.argmax(1) == target).sum())
        self.counts[1] += len(target)
        return F.cross_entropy(output, target)

    def close(self) -> None:
        if self.counts[1]:
            self.accuracies.append(self.counts[0] / self.counts[1])
            self.counts = [0, 0]


def _reference(zero_at_epoch_start: str | None = None) -> tuple[list[float], list[list[float]]]:
    """Per step, the accuracy over its passes, and the weight gradient of the last layer it
    stepped with; a step is the passes up to an optimizer step (or, with
    ``zero_at_epoch_start``, an epoch's dropped passes, which are a step of their own)."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.5)
    plain = _PlainAccuracy()
    gradients: list[list[float]] = []

    def on_step(*_: object) -> None:
        gradients.append(model[2].weight.grad.flatten().tolist())
        plain.close()

    opt.register_step_pre_hook(on_step)

    def end_epoch(_: int) -> None:
        if zero_at_epoch_start:
            plain.close()  # the dropped passes

    _train(model, opt, plain.loss, end_epoch, zero_at_epoch_start)
    return plain.accuracies, gradients


@pytest.mark.parametrize("dropped", [None, "none", "inplace"], ids=["carried", "none", "inplace"])
def test_a_step_straddling_an_epoch_end_is_one_step(dropped: str | None) -> None:
    accuracies, gradients = _reference(dropped)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.5)
    bus = MessageBus()
    ik.TrainAccuracySubscriber(bus, backend=None)
    got: dict[str, list[tuple[int, int, int, object]]] = {}

    def keep(message: ik.messages.Message) -> None:
        data = message.data.detach().clone() if isinstance(message.data, torch.Tensor) else None
        if message.kind != "weight_gradients" or message.key == "2":  # the last layer's
            at = (message.global_step, message.train_step, message.epoch, data)
            got.setdefault(message.kind, []).append(at)

    kinds = ["train_accuracy", "weight_gradients", "batch_finished", "epoch_started"]
    ik.CallbackSubscriber(kinds, keep, bus)
    exporter = ik.Exporter(model, opt, bus)
    _train(
        model,
        opt,
        exporter.wrap_loss(F.cross_entropy),
        lambda _: exporter.epoch_finished(),
        dropped,
    )
    exporter.close()
    # a step's last published accuracy is that over all of its passes
    last = {step: float(data) for step, _, _, data in got["train_accuracy"]}
    assert sorted(last) == list(range(len(accuracies)))
    assert [last[s] for s in sorted(last)] == pytest.approx(accuracies, abs=1e-6)
    steps_with_update = [step for step, *_ in got["weight_gradients"]]
    published = [data.flatten().tolist() for *_, data in got["weight_gradients"]]
    assert len(published) == len(gradients)
    for mine, theirs in zip(published, gradients):
        assert mine == pytest.approx(theirs, abs=1e-6)
    finished = [step for step, *_ in got["batch_finished"]]
    assert finished == sorted(set(finished)) == list(range(len(accuracies)))
    # every step ends in an epoch it ran in: a carried step in the next, where it goes on; one
    # dropped there (or one still carried when the Exporter closes) in its own
    epochs = [epoch for *_, epoch, _ in got["batch_finished"]]
    assert max(epochs) == EPOCHS - 1
    if not dropped:
        # 30 passes, 10 optimizer steps, each one step: steps 3 and 6 straddle the epoch ends
        assert len(accuracies) == 10 and steps_with_update == list(range(10))
    else:
        # each epoch: 3 steps, then its last pass, dropped at the next epoch's start (a step
        # without an update, step 3 of its epoch); the last epoch's is ended by close()
        assert len(accuracies) == 12 and steps_with_update == [0, 1, 2, 4, 5, 6, 8, 9, 10]
        by_step = {
            step: (train_step, epoch) for step, train_step, epoch, _ in got["batch_finished"]
        }
        assert [by_step[s] for s in (3, 7, 11)] == [(3, 0), (3, 1), (3, 2)]
    # each epoch opens once, and a carried step is its epoch's first (train_step 0)
    assert [(step, epoch) for step, _, epoch, _ in got["epoch_started"]] == (
        [(0, 0), (3, 1), (6, 2)] if not dropped else [(0, 0), (4, 1), (8, 2)]
    )
    if not dropped:
        by_step = {
            step: (train_step, epoch) for step, train_step, epoch, _ in got["batch_finished"]
        }
        assert by_step[3] == (0, 1) and by_step[6] == (0, 2) and by_step[4] == (1, 1)


def _accuracy_per_step(
    model: nn.Module, opt: torch.optim.Optimizer
) -> tuple[ik.Exporter, dict[int, float]]:
    """An Exporter of ``model`` with train accuracy, and the last accuracy published for each
    step (that over all of its passes), filled as it trains."""
    bus = MessageBus()
    ik.TrainAccuracySubscriber(bus, backend=None)
    last: dict[int, float] = {}
    ik.CallbackSubscriber(
        ["train_accuracy"], lambda m: last.__setitem__(m.global_step, float(m.data)), bus
    )
    return ik.Exporter(model, opt, bus), last


class _WithUnusedHead(nn.Module):
    """The test's model with a second head registered last that these steps never use (a
    multi-task model's): its parameter never gets a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _model()
        self.aux = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_an_unused_last_parameter_does_not_hide_the_accumulation() -> None:
    """Whether a backward ran is read off a parameter that receives gradients, not the
    optimizer's last one (an unused head's never changes)."""
    accuracies, _ = _reference()
    model = _WithUnusedHead()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.5)
    exporter, last = _accuracy_per_step(model, opt)
    _train(model, opt, exporter.wrap_loss(F.cross_entropy), lambda _: exporter.epoch_finished())
    exporter.close()
    assert [last[s] for s in sorted(last)] == pytest.approx(accuracies, abs=1e-6)


def test_reports_count_a_carried_step_once() -> None:
    """``train_steps`` per report counts the steps begun since the report before (a step
    carried over an epoch's end counts once, where it began); a test evaluation every third
    step follows every third optimizer step."""
    x, y = _data()
    test = TensorDataset(x[:20], y[:20])
    optimizer_steps = [0]
    evaluated_after: list[int] = []

    def trainable(config: dict) -> None:
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.5)
        opt.register_step_post_hook(
            lambda *_: optimizer_steps.__setitem__(0, optimizer_steps[0] + 1)
        )
        exporter = ik.watch(model, optimizer=opt)
        ik.CallbackSubscriber(
            ["test_accuracy"],
            lambda _: evaluated_after.append(optimizer_steps[0]),
            exporter.message_bus,
        )

        def end_epoch(epoch: int) -> None:
            exporter.epoch_finished()
            ik.report({"epoch": epoch})

        _train(model, opt, exporter.wrap_loss(F.cross_entropy), end_epoch)

    subscribers = [
        ik.TrainAccuracySubscriber(backend=None),
        ik.TestAccuracySubscriber(test, batch_size=20, frequency=3, backend=None),
    ]
    ik.instrument(trainable, subscribers)({})
    reports = ik.local_results()
    # steps 1-4 begin in epoch 0 (the 4th ends in epoch 1), 5-7 in epoch 1, 8-10 in epoch 2
    assert [r["train_steps"] for r in reports] == [4, 3, 3]
    assert evaluated_after == [3, 6, 9]


def test_a_pass_without_backward_at_an_epoch_end_is_a_step_of_its_own() -> None:
    """The usual loop (``zero_grad`` before each backward) leaves the last step's gradients in
    place; a training-mode pass at the epoch's end that logs a loss, with no backward, is no
    accumulation: its samples are not added to the next epoch's first step."""
    x, y = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    exporter, accuracy = _accuracy_per_step(model, opt)
    loss_fn = exporter.wrap_loss(F.cross_entropy)
    expected = []
    for _ in range(2):
        for i in range(3):
            rows = slice(i * BATCH, (i + 1) * BATCH)
            output = model(x[rows])
            expected.append(float((output.argmax(1) == y[rows]).float().mean()))
            loss = loss_fn(output, y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
        logged = slice(3 * BATCH, 7 * BATCH)  # 16 samples, a loss logged, no backward
        output = model(x[logged])
        expected.append(float((output.argmax(1) == y[logged]).float().mean()))
        loss_fn(output, y[logged])
        exporter.epoch_finished()
    exporter.close()
    assert [accuracy[s] for s in sorted(accuracy)] == pytest.approx(expected)


def test_step_timer_leaves_out_a_step_an_epoch_end_falls_in() -> None:
    bus = MessageBus()
    timer = StepTimer(bus)
    at = {"train_step": 0, "epoch": 0}
    for step in range(3):  # the first is warm-up
        bus.publish_network_message("batch_started", global_step=step, **at)
        bus.publish_network_message("batch_finished", global_step=step, **at)
    bus.publish_network_message("batch_started", global_step=3, **at)
    bus.publish_network_message("epoch_finished", global_step=3, **at)  # its evaluations
    bus.publish_network_message("batch_finished", global_step=3, **at)
    assert timer.steps == 2


class _TwoHeads(nn.Module):
    """The test's model with a second head, registered last, that the optimizer steps take in
    turn (a multi-task model's): the parameter that had a gradient at the last step can get
    none in this one."""

    def __init__(self) -> None:
        super().__init__()
        self.body = _model()
        torch.manual_seed(2)
        self.other = nn.Linear(3, 3)
        self.use_other = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return self.other(out) if self.use_other else out


def test_heads_taken_in_turn_do_not_split_a_step_straddling_an_epoch_end() -> None:
    """Whether a backward ran in the open step is not read off one parameter alone: with the
    heads taken in turn, the one marked (the last with a gradient at the last step) gets none
    in a step that straddles an epoch end, which was split in two (a step without an update,
    and all later steps numbered one on). Reference: the same loop in plain PyTorch."""

    def train(
        model: _TwoHeads,
        opt: torch.optim.Optimizer,
        loss_fn: Callable[..., torch.Tensor],
        end: Callable[[], None],
        stepped: Callable[[], None] = lambda: None,
    ) -> None:
        x, y = _data()
        passes = steps = 0
        for _ in range(EPOCHS):
            for i in range(BATCHES):
                model.use_other = steps % 2 == 1
                rows = slice(i * BATCH, (i + 1) * BATCH)
                (loss_fn(model(x[rows]), y[rows]) / K).backward()
                passes += 1
                if passes % K == 0:
                    opt.step()
                    opt.zero_grad()
                    steps += 1
                    stepped()
            end()

    plain = _PlainAccuracy()
    model = _TwoHeads()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.5)
    train(model, opt, plain.loss, lambda: None, plain.close)
    accuracies = plain.accuracies
    assert len(accuracies) == 10
    model = _TwoHeads()
    bus = MessageBus()
    ik.TrainAccuracySubscriber(bus, backend=None)
    last: dict[int, float] = {}
    ik.CallbackSubscriber(
        ["train_accuracy"], lambda m: last.__setitem__(m.global_step, float(m.data)), bus
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.5)
    exporter = ik.Exporter(model, opt, bus)
    train(model, opt, exporter.wrap_loss(F.cross_entropy), exporter.epoch_finished)
    exporter.close()
    assert exporter.steps_started == 10
    assert [last[s] for s in sorted(last)] == pytest.approx(accuracies, abs=1e-6)


def test_passes_dropped_at_an_epoch_start_are_a_step_of_their_own_with_heads_in_turn() -> None:
    """The passes after an epoch's last optimizer step, dropped by ``zero_grad()`` to None at
    the next epoch's start, are a step of their own, also when they did not use the head the
    stepped passes used: whether the loop cleared the gradients is read off a parameter that
    held one as the epoch ended (read off that head, without a gradient before and after the
    clear, they were merged into the next epoch's first step). Reference: plain PyTorch."""
    k, batches, epochs = 2, 3, 3  # an optimizer step and one dropped pass an epoch

    def train(model: _TwoHeads, opt, loss_fn, end, stepped) -> None:
        x, y = _data()
        for _ in range(epochs):
            opt.zero_grad(set_to_none=True)
            passes = 0
            for i in range(batches):
                model.use_other = passes < k  # the stepped passes use the other head
                rows = slice(i * BATCH, (i + 1) * BATCH)
                (loss_fn(model(x[rows]), y[rows]) / k).backward()
                passes += 1
                if passes % k == 0:
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    stepped()
            end()

    plain = _PlainAccuracy()
    model = _TwoHeads()
    train(model, torch.optim.SGD(model.parameters(), lr=0.3), plain.loss, plain.close, plain.close)
    accuracies = plain.accuracies
    assert len(accuracies) == 6
    model = _TwoHeads()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    exporter, last = _accuracy_per_step(model, opt)
    train(model, opt, exporter.wrap_loss(F.cross_entropy), exporter.epoch_finished, lambda: None)
    exporter.close()
    assert exporter.steps_started == 6
    assert [last[s] for s in sorted(last)] == pytest.approx(accuracies, abs=1e-6)
