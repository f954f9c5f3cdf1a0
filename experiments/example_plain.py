"""Watch a small CNN learn scikit-learn's digits: per-layer gradient norms and the loss.

Run: ``python -m experiments.example_plain``
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.examples.data import load_digits
from ikkuna_tune.examples.models import SmallCNN

log = logging.getLogger("example")


def main(epochs: int = 3) -> None:
    torch.manual_seed(0)
    train, _ = load_digits()
    model = SmallCNN(image_size=8, width=8, hidden=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    bus = MessageBus()
    norms: dict[str, list[torch.Tensor]] = {}
    losses: list[torch.Tensor] = []
    ik.CallbackSubscriber(
        ["weight_gradients"],
        lambda m: norms.setdefault(m.key, []).append(torch.linalg.vector_norm(m.data)),
        bus,
    )
    ik.CallbackSubscriber(["loss"], lambda m: losses.append(m.data), bus)
    with ik.Exporter(model, opt, bus) as exporter:
        loss_fn = exporter.wrap_loss(F.cross_entropy)
        for epoch in range(epochs):
            for x, y in DataLoader(train, batch_size=64, shuffle=True):
                opt.zero_grad()
                loss_fn(model(x), y).backward()
                opt.step()
            exporter.epoch_finished()
            # one host synchronisation per epoch: stack on the device, then convert
            mean_norms = {k: torch.stack(v).mean() for k, v in norms.items()}
            values = torch.stack([torch.stack(losses).mean(), *mean_norms.values()]).tolist()
            log.info(
                "epoch %d  loss %.3f  mean |grad W|: %s",
                epoch,
                values[0],
                "  ".join(f"{k} {v:.3f}" for k, v in zip(mean_norms, values[1:])),
            )
            norms.clear()
            losses.clear()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
