"""Data parallelism: an Exporter on a DistributedDataParallel model (2 processes, gloo, CPU) names
the layers as the user does and publishes, on every rank, the gradient norms, weight norms and
update ratios of a single process training on the same global batch.

DDP averages the gradients over the ranks during backward, so at ``optimizer.step()`` every rank
holds the gradient of the mean loss over the global batch, which is the single process's.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import ikkuna_tune as ik
from ikkuna_tune.bus import MessageBus

WORLD = 2
STEPS = 3
KINDS = ("weight_gradients_norm2", "weights_norm2", "weight_updates_weights_ratio")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def _global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)


def _train(model: nn.Module, rank: int, world: int) -> tuple[list, dict]:
    """Train STEPS steps on this rank's share of each global batch; the tracked layer names and
    the published values by (kind, layer, step)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    bus = MessageBus()
    ik.NormSubscriber("weight_gradients", bus, backend=None)
    ik.NormSubscriber("weights", bus, backend=None)
    ik.RatioSubscriber(["weight_updates", "weights"], bus, backend=None)
    got: dict = {}
    ik.CallbackSubscriber(
        list(KINDS), lambda m: got.__setitem__((m.kind, m.key, m.global_step), m.data), bus
    )
    with ik.Exporter(model, opt, bus) as exporter:
        for step in range(STEPS):
            x, y = _global_batch(step)
            share = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
            opt.zero_grad()
            F.cross_entropy(model(x[share]), y[share]).backward()
            opt.step()
        names = list(exporter.modules)
    return names, {k: v.item() for k, v in got.items()}


def _worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        ddp = nn.parallel.DistributedDataParallel(_model())
        torch.save(_train(ddp, rank, WORLD), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_publish_the_single_process_values_under_the_users_names(tmp_path) -> None:
    names, reference = _train(_model(), 0, 1)
    out = str(tmp_path / "values")
    context = mp.start_processes(
        _worker, args=(str(tmp_path / "store"), out), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 240  # no hang: the workers are killed past it
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError("the DDP workers did not finish within 240 s")
    assert names == ["0", "2"]
    assert len(reference) == len(KINDS) * 2 * STEPS
    for rank in range(WORLD):
        rank_names, values = torch.load(f"{out}.{rank}")
        assert rank_names == names  # no 'module.' prefix
        assert values.keys() == reference.keys()
        for key, value in reference.items():
            assert abs(values[key] - value) <= 1e-5 * abs(value) + 1e-7, (rank, key)
