"""What the epoch end costs in the fidelity benchmark's trials, and which subscriber costs it.

``bench_fidelity`` reports the subscribers' epoch-end work (test accuracy on the test split,
SVCCA and CKA on a probe drawn from it) as one share of a trial's training time. This splits
it: each (data set, model family) of :mod:`experiments.fidelity_trial` is trained for
``--epochs`` epochs (learning rate 0.03, SGD + momentum, one thread, no Ray) three times, with
the test-accuracy subscriber only, the SVCCA subscriber only and both (as in the benchmark),
and ``Exporter.epoch_finished`` is timed apart from the training epochs. The variants take
turns ``--repeats`` times; each share is the median over the repeats of the epoch ends' total
time over the training epochs' total time.

Run: ``python -m experiments.bench_epoch_end`` (about a minute on 2 CPUs). The last line
printed is one JSON object: per data set and family the shares of ``accuracy``, ``svcca`` and
``both``, and the median of each over the grids; and the same three shares for the demo's
model and subscribers (``ikkuna-tune demo``: SmallCNN of width 8 on digits, SVCCA on a
500-sample probe), under ``demo``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

import numpy as np

log = logging.getLogger("bench_epoch_end")

VARIANTS = ("accuracy", "svcca", "both")


def share(epoch_end_seconds: list[float], train_seconds: list[float]) -> float:
    """The epoch ends' total time over the training epochs' total time.

    >>> share([0.1, 0.1], [1.0, 1.0])
    0.1
    """
    return float(sum(epoch_end_seconds) / sum(train_seconds))


def run_variant(data: str, family: str, variant: str, epochs: int) -> tuple[float, list[float]]:
    """Train one model with the subscribers of ``variant``; the epochs' training seconds
    (total) and each epoch end's seconds."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    import ikkuna_tune as ik
    from experiments.fidelity_trial import build_model, load
    from experiments.fidelity_trial import subscribers as fidelity_subscribers
    from ikkuna_tune.examples.demo import demo_subscribers, train_epoch
    from ikkuna_tune.unattached import forget

    torch.manual_seed(0)
    train, _ = load(data)
    shape = tuple(train.tensors[0].shape[1:])
    if family == "demo":  # the demo's model and subscribers
        from ikkuna_tune.examples.models import SmallCNN

        model: torch.nn.Module = SmallCNN(image_size=shape[-1], width=8, hidden=64)
        chosen = demo_subscribers({"data": data})
    else:
        model = build_model(family, shape)
        chosen = fidelity_subscribers({"data": data})
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    kinds = {
        "accuracy": (ik.TestAccuracySubscriber,),
        "svcca": (ik.SVCCASubscriber,),
        "both": (ik.TestAccuracySubscriber, ik.SVCCASubscriber),
    }[variant]
    subscribers = [s for s in chosen if isinstance(s, kinds)]
    for left_out in chosen:
        if not isinstance(left_out, kinds):
            forget(left_out)  # left out on purpose: no warning that it is unattached
    for subscriber in subscribers:
        subscriber.backend_name = None  # no TensorBoard files outside a trial directory
    loader = DataLoader(
        train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    train_seconds = 0.0
    ends: list[float] = []
    with ik.Exporter(model, opt) as exporter:
        for subscriber in subscribers:
            exporter.message_bus.register_subscriber(subscriber)
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        for _ in range(epochs):
            started = time.perf_counter()
            train_epoch(model, opt, loss_fn, loader)
            trained = time.perf_counter()
            exporter.epoch_finished()
            ends.append(time.perf_counter() - trained)
            train_seconds += trained - started
    return train_seconds, ends


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", nargs="+", choices=["digits", "mnist"], default=None)
    parser.add_argument("--families", nargs="+", choices=["cnn", "mlp", "resnet"], default=None)
    parser.add_argument("--no-demo", action="store_true", help="leave out the demo's model")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    torch.set_num_threads(1)
    data_sets = args.data or ["digits", "mnist"]
    families = args.families or ["cnn", "mlp", "resnet"]
    out: dict[str, Any] = {"epochs": args.epochs, "repeats": args.repeats}
    for data in data_sets:
        out[data] = {}
        for family in families:
            out[data][family] = measure(data, family, args.epochs, args.repeats)
    cells = [out[d][f] for d in data_sets for f in families]
    out["median"] = {v: round(float(np.median([c[v] for c in cells])), 4) for v in VARIANTS}
    if not args.no_demo:
        out["demo"] = measure("digits", "demo", args.epochs, args.repeats)
    print(json.dumps(out))
    return out


def measure(data: str, family: str, epochs: int, repeats: int) -> dict[str, float]:
    """The median share of each variant over ``repeats`` turns (the variants take turns)."""
    shares: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(repeats):
        for variant in VARIANTS:
            train_seconds, ends = run_variant(data, family, variant, epochs)
            shares[variant].append(share(ends, [train_seconds]))
    cell = {v: round(float(np.median(s)), 4) for v, s in shares.items()}
    log.info("%s %s: epoch end / training %s", data, family, cell)
    return cell


if __name__ == "__main__":
    main()
