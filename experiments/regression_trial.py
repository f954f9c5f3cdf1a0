"""The trials of the regression benchmark: an MLP fits a synthetic smooth function, steered on
its validation mean squared error (``mode="min"``, values near 0.01-0.06).

The data: inputs ``x`` in R^10 (standard normal), targets from a fixed random two-layer tanh
network plus a product term, scaled to a standard deviation of 0.3, plus noise of 0.05; 1,000
training and 400 validation points, the same for every trial. The model: ``10 -> 48 -> 48 -> 1``
with ReLU, its initial parameters multiplied by ``init_scale`` (a small initialisation starts
late: flat for a few epochs, then falls, and may end best). SGD with momentum 0.9 or Adam, a
constant rate or a cosine decay over the epochs, evaluated at every epoch end:
``val_mse`` and the SVCCA subscriber's per-layer signals on the validation inputs.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ikkuna_tune as ik

__all__ = ["build_model", "load", "subscribers", "train_trial"]

_FEATURES = 10


@functools.lru_cache(maxsize=1)
def load() -> tuple[TensorDataset, TensorDataset]:
    """(train, validation): 1,000 and 400 points of the fixed regression task."""
    g = torch.Generator().manual_seed(123)
    x = torch.randn(1400, _FEATURES, generator=g)
    w1 = torch.randn(_FEATURES, 16, generator=g) * (2.0 / math.sqrt(_FEATURES))
    b1 = 0.5 * torch.randn(16, generator=g)
    w2 = torch.randn(16, 1, generator=g)
    y = torch.tanh(x @ w1 + b1) @ w2 + 0.3 * torch.sin(2 * x[:, :1]) * x[:, 1:2]
    y = 0.3 * (y - y.mean()) / y.std() + 0.05 * torch.randn(1400, 1, generator=g)
    return TensorDataset(x[:1000], y[:1000]), TensorDataset(x[1000:], y[1000:])


def build_model(init_scale: float = 1.0) -> nn.Module:
    """``10 -> 48 -> 48 -> 1`` with ReLU, parameters multiplied by ``init_scale``."""
    model = nn.Sequential(
        nn.Linear(_FEATURES, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 1)
    )
    if init_scale != 1.0:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.mul_(init_scale)
    return model


def subscribers(config: dict[str, Any]) -> list[ik.Subscriber]:
    """The SVCCA signals at every epoch end, on the validation inputs."""
    _, validation = load()
    return [ik.SVCCASubscriber(validation.tensors[0], n=400, backend=None)]


def train_trial(config: dict[str, Any]) -> None:
    """Train for ``config["epochs"]`` epochs; keys ``lr``, optional ``init_scale`` (1.0),
    ``optimizer`` (``sgd`` or ``adam``), ``schedule`` (``constant`` or ``cosine``, stepped per
    batch), ``batch_size`` (64), ``seed`` (0), and ``variant`` (merged into the config)."""
    config = {**config, **config.get("variant", {})}
    torch.set_num_threads(1)
    seed = int(config.get("seed", 0))
    torch.manual_seed(seed)
    train, validation = load()
    model = build_model(float(config.get("init_scale", 1.0)))
    lr = float(config["lr"])
    if config.get("optimizer", "sgd") == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loader = DataLoader(
        train,
        batch_size=int(config.get("batch_size", 64)),
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    epochs = int(config["epochs"])
    schedule = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(loader))
        if config.get("schedule", "constant") == "cosine"
        else None
    )
    exporter = ik.watch(model, opt)
    loss_fn = exporter.wrap_loss(F.mse_loss)
    inputs, targets = validation.tensors
    for epoch in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            if schedule is not None:
                schedule.step()
        exporter.epoch_finished()
        with exporter.probe("validation"):
            val_mse = float(F.mse_loss(model(inputs), targets))
        ik.report({"epoch": epoch, "val_mse": val_mse})
