"""Data parallelism with frozen layers: the metrics of 2 workers are those of 1, and a frozen
prefix leaves the gradient all-reduce.

:class:`~ikkuna_tune.examples.models.SmallCNN` on the MNIST subset, SGD with momentum, the same
global batches in the same order, trained twice: by 1 process on each whole global batch, and by
2 processes (``torch.multiprocessing`` spawn, gloo, CPU) under ``DistributedDataParallel`` with
``find_unused_parameters=True`` and :func:`~ikkuna_tune.ddp_sync.install_trainable_only_sync`,
each rank on its half of every global batch. An Exporter publishes every layer's gradient norm,
weight norm and update/weight ratio at every step. Before step ``steps // 2`` the first
``--freeze`` layers (the two convolutions by default) are frozen on every rank; training goes on
to ``--steps``. Every process runs one torch thread.

This runs in float32 (bytes, step times, and the published values), then once more in float64
for the published values only: in float32 the mean of two half-batch means rounds differently
from the whole batch's mean and training carries that on (about 1e-5 after a few dozen steps),
float64 shows what the synchronisation itself adds.

The last line printed is one JSON object: ``metrics_max_rel_diff`` (every published value of both
ranks against the 1-worker run, float64; ``metrics_max_rel_diff_float32`` likewise in float32),
``allreduce_bytes_ratio_frozen`` (bytes all-reduced per step after the freeze / before),
``frozen_parameter_share`` (the frozen layers' share of the trainable parameters before it),
``step_time_ratio_frozen`` (mean step time of rank 0 after / before, the first ``WARMUP`` steps of
either phase left out), and ``targets``.

    python -m experiments.bench_ddp [--steps 80] [--batch-size 128] [--freeze 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import ikkuna_tune as ik
from experiments.processes import in_gloo_group, run_ranks
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.ddp_sync import install_trainable_only_sync
from ikkuna_tune.examples.models import SmallCNN

__all__ = ["KINDS", "main", "max_rel_diff", "train"]

logger = logging.getLogger(__name__)

WORLD = 2
KINDS = ("weight_gradients_norm2", "weights_norm2", "weight_updates_weights_ratio")
WARMUP = 3  # steps of each phase left out of the step times (first step, bucket rebuild)


def _batches(
    steps: int, batch_size: int, dtype: torch.dtype = torch.float32
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` global batches of the MNIST subset's training images, shuffled with seed 0."""
    from ikkuna_tune.examples.data import load_mnist_subset

    train, _ = load_mnist_subset()
    x, y = train.tensors
    x = x.to(dtype)
    g = torch.Generator().manual_seed(0)
    batches: list[tuple[torch.Tensor, torch.Tensor]] = []
    while len(batches) < steps:
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - batch_size + 1, batch_size):
            if len(batches) == steps:
                break
            idx = order[i : i + batch_size]
            batches.append((x[idx], y[idx]))
    return batches


def train(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    freeze: list[str],
    freeze_step: int,
    rank: int = 0,
    world: int = 1,
) -> dict[str, Any]:
    """Train on this rank's share of every batch, freezing ``freeze`` before ``freeze_step``;
    the published values by (kind, layer, step), the step times, the trainable parameters
    before the freeze, and (under DDP) the bytes all-reduced at every step."""
    sync = (
        install_trainable_only_sync(model)
        if isinstance(model, nn.parallel.DistributedDataParallel)
        else None
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    bus = MessageBus()
    ik.NormSubscriber("weight_gradients", bus, backend=None)
    ik.NormSubscriber("weights", bus, backend=None)
    ik.RatioSubscriber(["weight_updates", "weights"], bus, backend=None)
    got: dict[tuple[str, str, int], torch.Tensor] = {}
    ik.CallbackSubscriber(
        list(KINDS), lambda m: got.__setitem__((m.kind, m.key, m.global_step), m.data), bus
    )
    out: dict[str, Any] = {"times": [], "bytes": []}
    out["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    with ik.Exporter(model, opt, bus) as exporter:
        modules = exporter.modules
        out["parameters"] = {
            n: sum(p.numel() for p in m.module.parameters()) for n, m in modules.items()
        }
        for step, (x, y) in enumerate(batches):
            if step == freeze_step:
                for name in freeze:
                    exporter.freeze(name)
            share = slice(rank * len(x) // world, (rank + 1) * len(x) // world)
            started = time.perf_counter()
            opt.zero_grad()
            F.cross_entropy(model(x[share]), y[share]).backward()
            opt.step()
            out["times"].append(time.perf_counter() - started)
            if sync is not None:
                out["bytes"].append(sync.last_step_bytes)
    out["values"] = {k: float(v) for k, v in got.items()}
    out["frozen_weights"] = [
        p.detach().clone() for name in freeze for p in exporter.modules[name].module.parameters()
    ]
    return out


def _model(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN().to(dtype)


def _rank_work(rank: int, out: str, args: dict[str, Any]) -> None:
    dtype = getattr(torch, args["dtype"])
    ddp = nn.parallel.DistributedDataParallel(_model(dtype), find_unused_parameters=True)
    batches = _batches(args["steps"], args["batch_size"], dtype)
    result = train(ddp, batches, args["freeze"], args["freeze_step"], rank, WORLD)
    torch.save(result, f"{out}.{rank}")


def _worker(rank: int, store: str, out: str, args: dict[str, Any]) -> None:
    torch.set_num_threads(1)
    in_gloo_group(rank, WORLD, store, partial(_rank_work, rank, out, args))


def _two_workers(args: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="bench_ddp_") as tmp:
        out = os.path.join(tmp, "result")
        run_ranks(_worker, (os.path.join(tmp, "store"), out, args), WORLD, timeout)
        return [torch.load(f"{out}.{rank}") for rank in range(WORLD)]


def max_rel_diff(got: dict[Any, float], want: dict[Any, float]) -> tuple[float, Any]:
    """The largest ``|got - want| / max(|got|, |want|)`` over ``want``'s keys (0 where both are
    0), and its key; ``got`` must have the same keys.

    >>> max_rel_diff({"a": 1.0, "b": 0.0}, {"a": 1.25, "b": 0.0})
    (0.2, 'a')
    """
    if got.keys() != want.keys():
        raise ValueError(f"Expected the same values published, but {got.keys() ^ want.keys()}")
    worst, where = 0.0, None
    for key, value in want.items():
        scale = max(abs(value), abs(got[key]))
        diff = abs(got[key] - value) / scale if scale else 0.0
        if diff > worst or where is None:
            worst, where = max(worst, diff), key
    return worst, where


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _pair(config: dict[str, Any], timeout: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Train in ``config["dtype"]`` with 1 worker (this process, 1 thread), then with 2."""
    dtype = getattr(torch, config["dtype"])
    steps, batch_size = config["steps"], config["batch_size"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, batches = _model(dtype), _batches(steps, batch_size, dtype)
        one = train(model, batches, config["freeze"], config["freeze_step"])
    finally:
        torch.set_num_threads(threads)
    return one, _two_workers(config, timeout)


def _compare(one: dict[str, Any], ranks: list[dict[str, Any]], dtype: str) -> float:
    """Print and return the largest relative difference of the ranks' values from ``one``'s."""
    worst, where = max(max_rel_diff(r["values"], one["values"]) for r in ranks)
    steps = 1 + max(step for _, _, step in one["values"])
    by_step = [
        max(
            max_rel_diff(
                {k: v for k, v in r["values"].items() if k[2] == step},
                {k: v for k, v in one["values"].items() if k[2] == step},
            )[0]
            for r in ranks
        )
        for step in range(steps)
    ]
    shown = sorted({*range(0, steps, max(1, steps // 8)), steps - 1})
    print(
        f"{dtype}: {len(one['values'])} values per rank, max relative difference "
        f"{WORLD} workers vs 1: {worst:.3g} ({where[0]} of {where[1]} at step {where[2]}); "
        "by step: " + ", ".join(f"{step}: {by_step[step]:.1e}" for step in shown)
    )
    return worst


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=None, help="steps in all (default 80)")
    parser.add_argument("--batch-size", type=int, default=None, help="global batch (default 128)")
    parser.add_argument("--freeze", type=int, default=2, help="layers frozen (a prefix)")
    parser.add_argument("--quick", action="store_true", help="16 steps of 32 images")
    parser.add_argument("--timeout", type=float, default=300, help="seconds the workers may take")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    steps = args.steps or (16 if args.quick else 80)
    batch_size = args.batch_size or (32 if args.quick else 128)
    if steps < 2 * (WARMUP + 1):
        parser.error(f"--steps must be at least {2 * (WARMUP + 1)}")
    started = time.perf_counter()
    layers = list(_model().state_dict())  # conv1.weight, conv1.bias, ...
    prefix = list(dict.fromkeys(name.rsplit(".", 1)[0] for name in layers))[: args.freeze]
    freeze_step = steps // 2
    config = {
        "steps": steps,
        "batch_size": batch_size,
        "freeze": prefix,
        "freeze_step": freeze_step,
        "dtype": "float32",
    }
    print(
        f"SmallCNN on MNIST: {steps} steps of {batch_size} images, {', '.join(prefix)} frozen "
        f"before step {freeze_step}; 1 worker, then {WORLD} (DDP, gloo, CPU, 1 thread each); "
        "float32, then float64 for the published values only"
    )
    one, ranks = _pair(config, args.timeout)
    print(
        f"float32: 1 worker {sum(one['times']):.2f} s of steps, {WORLD} workers "
        f"{sum(ranks[0]['times']):.2f} s on rank 0"
    )
    worst32 = _compare(one, ranks, "float32")
    one64, ranks64 = _pair({**config, "dtype": "float64"}, args.timeout)
    worst = _compare(one64, ranks64, "float64")
    print(
        "  (float32 rounds a mean of two half-batch means differently from the whole batch's "
        "mean, and training carries it on; float64 shows what the synchronisation adds)"
    )
    identical = all(
        torch.equal(a, b) for a, b in zip(ranks[0]["frozen_weights"], ranks[1]["frozen_weights"])
    )
    print(f"frozen weights bit-identical on both ranks: {identical}")

    bytes_before = _mean(ranks[0]["bytes"][:freeze_step])
    bytes_after = _mean(ranks[0]["bytes"][freeze_step:])
    frozen, trainable = sum(one["parameters"][n] for n in prefix), one["trainable"]
    share = frozen / trainable
    ratio = bytes_after / bytes_before
    print(
        f"all-reduced per step (float32): {bytes_before:.0f} bytes before the freeze, "
        f"{bytes_after:.0f} after (ratio {ratio:.4f}); frozen parameters: {frozen} of "
        f"{trainable} (share {share:.4f}, 1 - share {1 - share:.4f})"
    )
    times = ranks[0]["times"]
    before, after = times[WARMUP:freeze_step], times[freeze_step + WARMUP :]
    time_ratio = _mean(after) / _mean(before)
    median_ratio = statistics.median(after) / statistics.median(before)
    print(
        f"step time on rank 0 (float32): mean {1e3 * _mean(before):.1f} ms before the freeze, "
        f"{1e3 * _mean(after):.1f} ms after (ratio {time_ratio:.3f}; medians' ratio "
        f"{median_ratio:.3f}): mostly the backward pass a frozen prefix no longer needs"
    )
    out = {
        "steps": steps,
        "global_batch": batch_size,
        "frozen_layers": prefix,
        "metrics_compared": len(one64["values"]) * WORLD,
        "metrics_dtype": "float64",
        "metrics_max_rel_diff": worst,
        "metrics_max_rel_diff_float32": worst32,
        "allreduce_bytes_per_step": [bytes_before, bytes_after],
        "allreduce_bytes_ratio_frozen": round(ratio, 6),
        "frozen_parameter_share": round(share, 6),
        "step_time_ratio_frozen": round(time_ratio, 3),
        "step_time_median_ratio_frozen": round(median_ratio, 3),
        "frozen_weights_identical_on_ranks": identical,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "targets": {
            "metrics_within_1e-5": worst <= 1e-5,
            "bytes_fall_by_frozen_share_within_5pct": abs(ratio - (1 - share))
            <= 0.05 * (1 - share),
        },
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
