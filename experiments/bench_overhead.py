"""What instrumentation costs per training step: plain vs instrumented training of a small CNN.

Trains :class:`~experiments.models.DeepCNN` (``--depth 2`` is SmallCNN: conv 16 -> conv 32 ->
fc 64 -> fc 10) on the 5,000-image MNIST subset with SGD (momentum 0.9, batch 64) for a fixed
number of steps, alternating in one process between

* ``plain``: no Exporter at all;
* ``every``: the standard set every step: weight and gradient norms of every layer, the
  update-to-weight ratio, the loss and the train accuracy (TensorBoard backend, flushed at the
  end of every epoch, as in real use);
* ``sub16``: the same set with ``subsample=16``.

Each run starts from the same initial weights and batches; the order of the three runs rotates
every repeat. Step times (zero_grad, forward, loss, backward, step, and the epoch-end flush of
the backend on the steps that end an epoch; on CUDA between two synchronisations) are pooled per
variant after dropping each run's warm-up steps. ``ratio`` and ``ratio_subsample16`` are ratios
of median wall-clock step times; ``*_mean`` use means (they include the flushes), ``*_cpu`` the
thread CPU time (less sensitive to other processes on a shared CPU). On CUDA a separate, untimed
run per variant counts host synchronisations with ``torch.cuda.set_sync_debug_mode('warn')``
(``syncs_per_step``: every step; includes the flushes at epoch ends and at close).

Run: ``python -m experiments.bench_overhead --depth 2`` (and ``--depth 8`` for the cost per
layer). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

import ikkuna_tune as ik
from experiments.models import DeepCNN

log = logging.getLogger("bench_overhead")

VARIANTS = ("plain", "every", "sub16")


def load_batches(
    n_batches: int, batch_size: int, device: torch.device, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n_batches`` shuffled training batches of the MNIST subset, on ``device``."""
    from experiments.data import load_mnist_subset

    train, _ = load_mnist_subset()
    x, y = train.tensors
    g = torch.Generator().manual_seed(seed)
    batches = []
    while len(batches) < n_batches:
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            batches.append((x[idx].to(device), y[idx].to(device)))
            if len(batches) == n_batches:
                break
    return batches


def standard_set(bus: ik.MessageBus, subsample: int) -> None:
    """Weight and gradient norms, update-to-weight ratio, loss and train accuracy on ``bus``."""
    ik.NormSubscriber("weights", bus, subsample=subsample)
    ik.NormSubscriber("weight_gradients", bus, subsample=subsample)
    ik.RatioSubscriber(["weight_updates", "weights"], bus, subsample=subsample)
    ik.LossSubscriber(bus, subsample=subsample)
    ik.TrainAccuracySubscriber(bus, subsample=subsample)


def run(
    variant: str,
    init: dict[str, torch.Tensor],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    args: argparse.Namespace,
    device: torch.device,
    log_dir: str,
    synchronize: bool = True,
) -> list[tuple[float, float]]:
    """Train one run of ``variant``; return (wall-clock, thread CPU) time of every step in s."""
    model = DeepCNN(depth=args.depth, width=args.width).to(device)
    model.load_state_dict(init)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    timed_on_cuda = synchronize and device.type == "cuda"
    sync: Callable[[], None] = torch.cuda.synchronize if timed_on_cuda else lambda: None
    exporter = None
    loss_fn: Callable[..., torch.Tensor] = F.cross_entropy
    if variant != "plain":
        bus = ik.MessageBus(variant, log_dir=f"{log_dir}/{variant}")
        standard_set(bus, 16 if variant == "sub16" else 1)
        exporter = ik.Exporter(model, opt, bus)
        loss_fn = exporter.wrap_loss(F.cross_entropy)
    times = []
    sync()
    for step, (x, y) in enumerate(batches):
        start = time.perf_counter()
        cpu_start = time.thread_time()
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        if exporter is not None and (step + 1) % args.steps_per_epoch == 0:
            exporter.epoch_finished()  # flushes the backend: the per-epoch cost is included
        sync()
        times.append((time.perf_counter() - start, time.thread_time() - cpu_start))
    if exporter is not None:
        exporter.close()
        exporter.message_bus.close()
    return times


def count_syncs(
    variant: str,
    init: dict[str, torch.Tensor],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    args: argparse.Namespace,
    device: torch.device,
    log_dir: str,
) -> int:
    """Host synchronisations during one untimed run of ``variant`` (CUDA only)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run(variant, init, batches, args, device, log_dir, synchronize=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depth", type=int, default=2, help="convolutions (2: SmallCNN)")
    parser.add_argument("--width", type=int, default=16, help="channels of the first conv")
    parser.add_argument("--steps", type=int, default=200, help="training steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="steps dropped from each run")
    parser.add_argument("--repeats", type=int, default=5, help="runs per variant")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps-per-epoch", type=int, default=62, help="4,000 images / 64")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    init = {k: v.to(device) for k, v in DeepCNN(args.depth, width=args.width).state_dict().items()}
    batches = load_batches(args.steps, args.batch_size, device)
    wall: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as log_dir:
        for r in range(args.repeats):
            order = VARIANTS[r % 3 :] + VARIANTS[: r % 3]
            for variant in order:
                step_times = run(variant, init, batches, args, device, log_dir)[args.warmup :]
                wall[variant].extend(t for t, _ in step_times)
                cpu[variant].extend(c for _, c in step_times)
                log.info(
                    "repeat %d %-5s median %.3f ms wall, %.3f ms cpu",
                    r,
                    variant,
                    1e3 * statistics.median(t for t, _ in step_times),
                    1e3 * statistics.median(c for _, c in step_times),
                )
        syncs: dict[str, float] | None = None
        if device.type == "cuda":
            syncs = {
                v: count_syncs(v, init, batches, args, device, log_dir) / args.steps
                for v in VARIANTS
            }
    median = {v: statistics.median(t) for v, t in wall.items()}
    mean = {v: statistics.fmean(t) for v, t in wall.items()}
    median_cpu = {v: statistics.median(t) for v, t in cpu.items()}
    layers = len(ik.exporter.select_modules(DeepCNN(args.depth, width=args.width)))
    result: dict[str, Any] = {
        "ratio": round(median["every"] / median["plain"], 4),
        "ratio_subsample16": round(median["sub16"] / median["plain"], 4),
        "ratio_mean": round(mean["every"] / mean["plain"], 4),
        "ratio_subsample16_mean": round(mean["sub16"] / mean["plain"], 4),
        "ratio_cpu": round(median_cpu["every"] / median_cpu["plain"], 4),
        "ratio_subsample16_cpu": round(median_cpu["sub16"] / median_cpu["plain"], 4),
        "steps": args.steps,
        "repeats": args.repeats,
        "layers": layers,
        "depth": args.depth,
        "width": args.width,
        "batch_size": args.batch_size,
        "device": args.device,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "median_ms": {v: round(1e3 * m, 4) for v, m in median.items()},
        "median_cpu_ms": {v: round(1e3 * m, 4) for v, m in median_cpu.items()},
        "torch": torch.__version__,
    }
    if syncs is not None:
        result["syncs_per_step"] = round(syncs["every"], 4)
        result["syncs_per_step_subsample16"] = round(syncs["sub16"], 4)
        result["syncs_per_step_plain"] = round(syncs["plain"], 4)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(json.dumps(main()))
