"""What instrumentation costs per training step: plain vs instrumented training of a small CNN.

Trains :class:`~ikkuna_tune.examples.models.DeepCNN` (``--depth 2`` is SmallCNN: conv 16 ->
conv 32 -> fc 64 -> fc 10) on the 5,000-image MNIST subset with SGD (momentum 0.9, batch 64) for
a fixed number of steps, three times in one process:

* ``plain``: no Exporter at all;
* ``every``: the standard set every step: weight and gradient norms of every layer, the
  update-to-weight ratio, the loss and the train accuracy (TensorBoard backend, flushed at the
  end of every epoch, as in real use);
* ``sub16``: the same set with ``subsample=16``.

The three runs see the same batches and alternate in blocks of ``--block`` steps, so that
whatever else the machine is doing falls on all three alike. The order within a block goes
through all six permutations, so that each run follows each other run equally often: with the
order only rotated, the run after ``every`` always followed it, and a plain run in that place
measured 1.033x plain (an A/A test), from what the run before it left behind.
They also train one and the same model and optimizer, taking turns (an instrumented run attaches
its Exporter for its turn and carries the Exporter's counters over to the next): on this 2-core
machine two identical copies of the model, trained side by side, differed by 3.5% in median step
time, by where their tensors happened to lie in memory, which is more than the cost being
measured. A step is zero_grad, forward, loss, backward, optimizer step, and on
the step that ends an epoch the Exporter's ``epoch_finished`` (which flushes the backend); on
CUDA it is timed between two synchronisations (``--sync step``, the default: the latency of a
step, with the device idle when it starts). ``--sync turn`` synchronises only around a turn and
gives each step of it the turn's mean: the throughput of training, where the host queues work
ahead of the device, so that host-side cost is hidden while the device is the slower of the two
(on a CPU both are the same). The first block of each run is warm-up and
dropped, and so is the first step of every turn, which pays for changing turns (attaching the
Exporter, caches cold from the other runs): in real use nobody changes turns. ``ratio`` and
``ratio_subsample16`` are ratios of median wall-clock step times (without stalled steps, see
below); ``*_mean`` use mean times over all steps (they include the epoch-end flushes), ``*_cpu``
the thread CPU time.
On CUDA, one more untimed run per variant counts host synchronisations with
``torch.cuda.set_sync_debug_mode('warn')`` (``syncs_per_step``; the epoch-end flushes and the
final flush included) and logs the source lines they came from; ``extra_syncs_per_report`` is
what instrumentation adds to plain training's own, per report (an epoch end's flush).
``--launches`` counts what one step launches with :mod:`torch.profiler` (``kernels_per_step`` on
CUDA, ``ops_per_step``: ``aten`` operator calls, on the CPU) and logs the launches that the
every-step run adds most.

**Stalled steps.** On the shared 2-core VM this was developed on, a quarter of all training
steps (plain ones alike) take 20 to 100 times as long as the rest (0.3-1.5 s instead of 12 ms),
with the time charged as the thread's own user time: the host takes the CPU away. Which steps
are hit is chance, and it moves the median over all steps by more than the cost being measured:
with 25% of the steps stalled, the median is the 67th percentile of the others, and a stalled
fraction of 28% instead of 25% moves it by about 2%. So a step slower than ``--stall-factor``
times the 10th percentile of all steps of all runs (one threshold for all) counts as stalled, and
``ratio``/``ratio_subsample16`` are ratios of the medians of the other steps.
``stalled_fraction`` says how many each run lost (instrumentation that made steps that slow
would show there), and ``ratio_all_steps``/``ratio_subsample16_all_steps`` are the ratios of the
medians over every timed step.

``--floor`` adds a fourth run, ``floor``: the standard set's arithmetic written by hand in plain
PyTorch (:class:`FloorSet`: the same multi-tensor norms, copy and subtraction, values read once
per report), without ikkuna_tune. ``ratio_floor`` is what the set costs done this way; the
distance from it to ``ratio`` is ikkuna_tune's own bookkeeping (messages, bus, subscribers).

``--control`` makes the ``sub16`` run train without instrumentation: its ratio is then the
harness's own noise floor on the machine at hand.

Run: ``python -m experiments.bench_overhead --depth 2`` and ``--depth 6`` (how the cost grows
with the number of layers). ``--model resnet18`` times ResNet-18's layout on random 32x32 images
(``--batch-size 128`` on a GPU, smaller on a CPU), ``--model mlp --layers N --width W`` a deep
MLP of N hidden layers (the cost per layer when layers are cheap). The last line printed is one
JSON object.
"""

from __future__ import annotations

import argparse
import collections
import itertools
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
from ikkuna_tune import functional as IF
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.examples.models import MLP, DeepCNN, SmallResNet
from ikkuna_tune.functional.accuracy import rate
from ikkuna_tune.step_hooks import _subtract_into  # the update's subtraction, as the set does

log = logging.getLogger("bench_overhead")

VARIANTS = ("plain", "every", "sub16")
#: with ``--floor``: the standard set's arithmetic written by hand, without ikkuna_tune
FLOOR = "floor"


MODELS = ("cnn", "resnet18", "mlp")


def variants(args: argparse.Namespace) -> tuple[str, ...]:
    """The runs to time: plain, every, sub16, and with ``--floor`` the hand-written set."""
    return VARIANTS + ((FLOOR,) if getattr(args, "floor", False) else ())


def build_model(args: argparse.Namespace) -> torch.nn.Module:
    """``cnn``: DeepCNN(``--depth``, ``--width``) on MNIST; ``resnet18``: ResNet-18's layout for
    32x32 images (stem + 4 stages of 2 basic blocks, 64-512 channels, 11.2M parameters) on
    random 3x32x32 data; ``mlp``: ``--layers`` hidden Linear(``--width``) layers on MNIST."""
    if args.model == "cnn":
        return DeepCNN(args.depth, width=args.width)
    if args.model == "resnet18":
        return SmallResNet(3, 10, width=64, blocks=(2, 2, 2, 2))
    return MLP(28 * 28, hidden=[args.width] * args.layers, classes=10)


def load_batches(
    n_batches: int, batch_size: int, device: torch.device, seed: int = 0, model: str = "cnn"
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n_batches`` shuffled training batches of the MNIST subset (random 3x32x32 images with
    random labels for ``resnet18``: the cost of a step does not depend on the data), on
    ``device``."""
    from ikkuna_tune.examples.data import load_mnist_subset

    if model == "resnet18":
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(max(batch_size, 512), 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (len(x),), generator=g)
    else:
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


def standard_set(bus: MessageBus, subsample: int) -> None:
    """Weight and gradient norms, update-to-weight ratio, loss and train accuracy on ``bus``."""
    ik.NormSubscriber("weights", bus, subsample=subsample)
    ik.NormSubscriber("weight_gradients", bus, subsample=subsample)
    ik.RatioSubscriber(["weight_updates", "weights"], bus, subsample=subsample)
    ik.LossSubscriber(bus, subsample=subsample)
    ik.TrainAccuracySubscriber(bus, subsample=subsample)


class Model:
    """The network and optimizer that every variant trains, taking turns."""

    def __init__(
        self, init: dict[str, torch.Tensor], args: argparse.Namespace, device: torch.device
    ) -> None:
        self.net = build_model(args).to(device)
        self.net.load_state_dict(init)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9)


class FloorSet:
    """The standard set's arithmetic by hand, in plain PyTorch: what the every-step run computes,
    without ikkuna_tune's messages, bus and bookkeeping (``--floor``).

    Per step: the weight norms of every layer when the step starts, the gradient norms and a copy
    of the weights before the optimizer's step, the update (``after - before``) and its norm over
    the step's weight norm, a copy of the loss and the batch's accuracy. The same operations
    ikkuna_tune runs: the multi-tensor norms and copy, its subtraction of the update (one
    ``torch.sub`` for a large parameter, two multi-tensor passes for the small ones) and its
    accuracy (NaN scores and ignored labels handled), the values kept on the device and read
    once per report (:meth:`report`). Its cost over plain training is a floor for the standard
    set done this way: ikkuna_tune's cost above it is its own bookkeeping.
    """

    def __init__(self, net: torch.nn.Module) -> None:
        self.layers = [
            m for m in ik.exporter.select_modules(net).values()
            if isinstance(m._parameters.get("weight"), torch.nn.Parameter)
        ]  # fmt: skip
        self.before: list[torch.Tensor] = []
        #: per step: weight norms, gradient norms, update ratios (stacked), loss, accuracy
        self.values: list[tuple[torch.Tensor, ...]] = []
        #: what :meth:`report` read, per step
        self.reported: list[tuple[list[float], list[float], list[float], float, float]] = []

    def step(
        self, net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
    ) -> None:
        weights = [m.weight for m in self.layers]
        with torch.no_grad():
            weight_norms = torch.stack(torch._foreach_norm(weights))
        output = net(x)
        loss = F.cross_entropy(output, y)
        with torch.no_grad():
            accuracy = rate(IF.count_predictions(output, y))
            loss_value = loss.detach().clone()
        loss.backward()
        with torch.no_grad():
            grad_norms = torch.stack(torch._foreach_norm([w.grad for w in weights]))
            if len(self.before) != len(weights) or any(
                b.shape != w.shape for b, w in zip(self.before, weights)
            ):
                self.before = [torch.empty_like(w) for w in weights]
            torch._foreach_copy_(self.before, weights)
        opt.step()
        with torch.no_grad():
            _subtract_into(self.before, weights)  # the update, after - before
            ratios = torch.stack(torch._foreach_norm(self.before)) / weight_norms
        self.values.append((weight_norms, grad_norms, ratios, loss_value, accuracy))

    def report(self) -> None:
        """Read the steps' values since the last report (one host read of each kind)."""
        if not self.values:
            return
        columns = [torch.stack(list(c)).tolist() for c in zip(*self.values)]
        self.reported.extend(zip(*columns))
        self.values.clear()


class Run:
    """One variant's training steps on the shared :class:`Model`, a turn at a time.

    An instrumented variant keeps its bus and subscribers for the whole run and attaches an
    Exporter to the model for each turn (:meth:`begin`), carrying the Exporter's counters from
    turn to turn, so its messages and subsampling go on as in one uninterrupted run.
    """

    def __init__(self, variant: str, model: Model, args: argparse.Namespace, log_dir: str) -> None:
        self.model = model
        self.steps_per_epoch = args.steps_per_epoch
        self.step_count = 0
        self.bus: MessageBus | None = None
        self.exporter: ik.Exporter | None = None
        self.state: dict[str, Any] | None = None
        self.loss_fn: Callable[..., torch.Tensor] = F.cross_entropy
        #: seconds of each epoch end (the subscribers' epoch work and the TensorBoard flush)
        self.epoch_end_seconds: list[float] = []
        #: seconds of the flushes when a turn ends (each turn's Exporter is closed, which
        #: flushes what the turn buffered), outside the timed steps
        self.around_seconds = 0.0
        self.floor = FloorSet(model.net) if variant == FLOOR else None
        if variant not in ("plain", FLOOR):
            self.bus = MessageBus(variant, log_dir=f"{log_dir}/{variant}")
            standard_set(self.bus, 16 if variant == "sub16" else 1)

    def begin(self) -> None:
        """Start a turn: attach this variant's hooks to the model."""
        if self.bus is not None:
            self.exporter = ik.Exporter(self.model.net, self.model.opt, self.bus)
            if self.state is not None:
                self.exporter.load_state_dict(self.state)
            self.loss_fn = self.exporter.wrap_loss(F.cross_entropy)

    def end(self) -> None:
        """End a turn: remove the hooks, keep the counters."""
        if self.exporter is not None:
            self.state = self.exporter.state_dict()
            started = time.perf_counter()
            self.exporter.close()  # flushes what the turn's steps buffered: counted as around
            self.around_seconds += time.perf_counter() - started
            self.exporter = None

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        net, opt = self.model.net, self.model.opt
        opt.zero_grad()
        if self.floor is not None:
            self.floor.step(net, opt, x, y)
        else:
            self.loss_fn(net(x), y).backward()
            opt.step()
        self.step_count += 1
        if self.floor is not None and self.step_count % self.steps_per_epoch == 0:
            started = time.perf_counter()
            self.floor.report()
            self.epoch_end_seconds.append(time.perf_counter() - started)
        if self.exporter is not None and self.step_count % self.steps_per_epoch == 0:
            started = time.perf_counter()
            self.exporter.epoch_finished()  # flushes the backend: the per-epoch cost counts
            self.epoch_end_seconds.append(time.perf_counter() - started)

    def close(self) -> None:
        self.end()
        if self.floor is not None:
            self.floor.report()
        if self.bus is not None:
            self.bus.close()


def time_runs(
    init: dict[str, torch.Tensor],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    args: argparse.Namespace,
    device: torch.device,
    log_dir: str,
    epoch_ends: dict[str, list[float]] | None = None,
    around: dict[str, float] | None = None,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and thread-CPU seconds of every step after warm-up, per variant (and, into
    ``epoch_ends``, the seconds of each variant's epoch ends; into ``around``, those of its
    flushes at the ends of its turns)."""
    epoch_ends = {} if epoch_ends is None else epoch_ends
    around = {} if around is None else around
    model = Model(init, args, device)
    # with --control the sub16 run trains plainly (an A/A test of the harness)
    names = variants(args)
    runs = {
        v: Run("plain" if args.control and v == "sub16" else v, model, args, log_dir) for v in names
    }
    sync: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    wall: dict[str, list[float]] = {v: [] for v in names}
    cpu: dict[str, list[float]] = {v: [] for v in names}
    orders = list(itertools.permutations(names))
    per_turn = getattr(args, "sync", "step") == "turn"
    for block, start in enumerate(range(0, args.steps, args.block)):
        for variant in orders[block % len(orders)]:
            run = runs[variant]
            run.begin()
            turn = batches[start : start + args.block]
            if per_turn:  # the host runs ahead of the device within the turn, as in training
                run.step(*turn[0])
                sync()
                t0, c0 = time.perf_counter(), time.thread_time()
                for x, y in turn[1:]:
                    run.step(x, y)
                sync()
                if block > 0:
                    n = len(turn) - 1
                    wall[variant] += [(time.perf_counter() - t0) / n] * n
                    cpu[variant] += [(time.thread_time() - c0) / n] * n
            else:
                for i, (x, y) in enumerate(turn):
                    sync()
                    t0, c0 = time.perf_counter(), time.thread_time()
                    run.step(x, y)
                    sync()
                    if block > 0 and i > 0:
                        wall[variant].append(time.perf_counter() - t0)
                        cpu[variant].append(time.thread_time() - c0)
            run.end()
    for run in runs.values():
        run.close()
    epoch_ends.update({v: run.epoch_end_seconds for v, run in runs.items()})
    around.update({v: run.around_seconds for v, run in runs.items()})
    return wall, cpu


def stall_threshold(wall: dict[str, list[float]], factor: float) -> float:
    """``factor`` times the 10th percentile of the step times of all runs together."""
    pooled = sorted(t for times in wall.values() for t in times)
    return factor * pooled[int(0.1 * (len(pooled) - 1))]


def count_syncs(
    variant: str,
    init: dict[str, torch.Tensor],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    args: argparse.Namespace,
    device: torch.device,
    log_dir: str,
) -> tuple[int, collections.Counter[str]]:
    """Host synchronisations during one untimed run of ``variant`` (CUDA only), and how many
    came from each source line."""
    run = Run(variant, Model(init, args, device), args, f"{log_dir}/syncs")
    run.begin()
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for x, y in batches:
                run.step(x, y)
            run.close()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    return len(syncs), collections.Counter(f"{w.filename}:{w.lineno}" for w in syncs)


def count_launches(
    variant: str,
    init: dict[str, torch.Tensor],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    args: argparse.Namespace,
    device: torch.device,
    log_dir: str,
    steps: int = 20,
) -> collections.Counter[str]:
    """What one training step of ``variant`` launches, by name, averaged over ``steps`` steps
    after 5 warm-up steps (none of them ends an epoch): CUDA kernels on CUDA, ``aten`` operators
    on the CPU (every operator call, nested ones included), from :mod:`torch.profiler`."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    args = argparse.Namespace(**{**vars(args), "steps_per_epoch": 10**9})
    run = Run(variant, Model(init, args, device), args, f"{log_dir}/launches")
    run.begin()
    for x, y in batches[:5]:
        run.step(x, y)
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        for x, y in batches[5 : 5 + steps]:
            run.step(x, y)
        if cuda:
            torch.cuda.synchronize()
    run.close()
    if cuda:
        names = [e.name for e in prof.events() if e.device_type == DeviceType.CUDA]
    else:
        names = [e.name for e in prof.events() if e.name.startswith("aten::")]
    counts: collections.Counter[str] = collections.Counter()
    for name, n in collections.Counter(names).items():
        counts[name] = n / steps
    return counts


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=MODELS, default="cnn")
    parser.add_argument("--depth", type=int, default=2, help="cnn: convolutions (2: SmallCNN)")
    parser.add_argument(
        "--width", type=int, default=16, help="cnn: channels of the first conv; mlp: layer width"
    )
    parser.add_argument("--layers", type=int, default=10, help="mlp: hidden layers")
    parser.add_argument("--steps", type=int, default=600, help="training steps per run")
    parser.add_argument("--block", type=int, default=20, help="steps per turn of each run")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps-per-epoch", type=int, default=62, help="4,000 images / 64")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    parser.add_argument(
        "--stall-factor",
        type=float,
        default=3.0,
        help="a step slower than this times the 10th percentile of all steps counts as stalled",
    )
    parser.add_argument(
        "--launches",
        action="store_true",
        help="also count what a step launches (CUDA kernels, or aten operators on the CPU)",
    )
    parser.add_argument(
        "--sync",
        choices=["step", "turn"],
        default="step",
        help="synchronise the device around every timed step (a step's latency) or only around "
        "each turn (throughput: the host queues work ahead of the device, as in training)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also time the standard set's arithmetic written by hand in plain PyTorch, "
        "without ikkuna_tune (ratio_floor: what the set costs done this way)",
    )
    parser.add_argument("--times-out", help="write every step time (JSON) to this file")
    parser.add_argument(
        "--control",
        action="store_true",
        help="A/A test: the sub16 run trains without instrumentation, so ratio_subsample16 "
        "shows the harness's own noise floor",
    )
    args = parser.parse_args(argv)
    if args.block < 2 or args.steps < 2 * args.block:
        parser.error(
            "need --block >= 2 (the first step of a turn is not timed) and --steps >= 2 * --block "
            f"(the first block is warm-up), got --block {args.block} --steps {args.steps}"
        )
    if args.stall_factor <= 1:
        parser.error(f"need --stall-factor > 1, got {args.stall_factor}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    init = {k: v.to(device) for k, v in build_model(args).state_dict().items()}
    batches = load_batches(args.steps, args.batch_size, device, model=args.model)
    with tempfile.TemporaryDirectory() as log_dir:
        epoch_ends: dict[str, list[float]] = {}
        around: dict[str, float] = {}
        wall, cpu = time_runs(init, batches, args, device, log_dir, epoch_ends, around)
        syncs: dict[str, int] | None = None
        if device.type == "cuda":
            syncs = {}
            for v in variants(args):
                syncs[v], sites = count_syncs(v, init, batches, args, device, log_dir)
                for site, n in sites.most_common(5):
                    log.info("%-5s %d host synchronisations at %s", v, n, site)
        launches = None
        if args.launches:
            launches = {
                v: count_launches(v, init, batches, args, device, log_dir) for v in variants(args)
            }
            extra = launches["every"] - launches["plain"]
            for name, n in extra.most_common(12):
                log.info("every step launches %5.1f more %s", n, name[:90])
    threshold = stall_threshold(wall, args.stall_factor)
    kept = {v: [t for t in times if t <= threshold] for v, times in wall.items()}
    for v, times in kept.items():
        if not times:
            raise SystemExit(
                f"All {len(wall[v])} timed steps of the {v!r} run were stalled (slower than "
                f"{1e3 * threshold:.1f} ms); run more --steps or raise --stall-factor"
            )
    kept_cpu = {v: [c for t, c in zip(wall[v], cpu[v]) if t <= threshold] for v in wall}
    if args.times_out:
        with open(args.times_out, "w") as f:
            json.dump({"wall": wall, "cpu": cpu}, f)
    median = {v: statistics.median(t) for v, t in kept.items()}
    median_all = {v: statistics.median(t) for v, t in wall.items()}
    mean = {v: statistics.fmean(t) for v, t in wall.items()}
    median_cpu = {v: statistics.median(t) for v, t in kept_cpu.items()}
    for v in wall:
        log.info("%-5s median %.3f ms wall, %.3f ms cpu", v, 1e3 * median[v], 1e3 * median_cpu[v])
    layers = len(ik.exporter.select_modules(build_model(args)))
    result: dict[str, Any] = {
        "ratio": round(median["every"] / median["plain"], 4),
        "ratio_subsample16": round(median["sub16"] / median["plain"], 4),
        "ratio_all_steps": round(median_all["every"] / median_all["plain"], 4),
        "ratio_subsample16_all_steps": round(median_all["sub16"] / median_all["plain"], 4),
        "stalled_fraction": {v: round(1 - len(kept[v]) / len(wall[v]), 4) for v in wall},
        "stall_threshold_ms": round(1e3 * threshold, 3),
        "ratio_mean": round(mean["every"] / mean["plain"], 4),
        "ratio_subsample16_mean": round(mean["sub16"] / mean["plain"], 4),
        "ratio_cpu": round(median_cpu["every"] / median_cpu["plain"], 4),
        "ratio_subsample16_cpu": round(median_cpu["sub16"] / median_cpu["plain"], 4),
        "steps": args.steps,
        "timed_steps": len(wall["plain"]),
        "block": args.block,
        "model": args.model,
        "layers": layers,
        "depth": args.depth if args.model == "cnn" else None,
        "width": args.width,
        "batch_size": args.batch_size,
        "device": args.device,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "median_ms": {v: round(1e3 * m, 4) for v, m in median.items()},
        "overhead_ms_per_layer": round(1e3 * (median["every"] - median["plain"]) / layers, 4),
        "overhead_ms": round(1e3 * (median["every"] - median["plain"]), 4),
        # an epoch end of the every-step run: its subscribers' epoch work and TensorBoard flush
        "epoch_end_ms_median": round(1e3 * statistics.median(epoch_ends["every"]), 3)
        if epoch_ends.get("every")
        else None,
        # the every-step run's mean step, with the flushes at its turns' ends spread over its
        # steps, over plain training's mean step (the medians above leave both out)
        "ratio_total": round(
            (mean["every"] + around.get("every", 0.0) / args.steps) / mean["plain"],
            4,
        ),
        "torch": torch.__version__,
        "control": args.control,
        "sync": args.sync,
    }
    if FLOOR in median:
        # the standard set by hand, without ikkuna_tune (see FloorSet)
        result["ratio_floor"] = round(median[FLOOR] / median["plain"], 4)
        result["ratio_floor_cpu"] = round(median_cpu[FLOOR] / median_cpu["plain"], 4)
        result["overhead_ms_floor"] = round(1e3 * (median[FLOOR] - median["plain"]), 4)
    if syncs is not None:
        # a report is an epoch end (the backend's flush); the run ends with one more flush
        reports = args.steps // args.steps_per_epoch + 1
        result["syncs_per_step"] = round(syncs["every"] / args.steps, 4)
        result["syncs_per_step_subsample16"] = round(syncs["sub16"] / args.steps, 4)
        result["syncs_per_step_plain"] = round(syncs["plain"] / args.steps, 4)
        result["syncs"] = syncs
        result["reports"] = reports
        # what instrumentation adds to plain training's own synchronisations, per report
        result["extra_syncs_per_report"] = round((syncs["every"] - syncs["plain"]) / reports, 3)
        result["extra_syncs_per_report_subsample16"] = round(
            (syncs["sub16"] - syncs["plain"]) / reports, 3
        )
    if launches is not None:
        kind = "kernels" if device.type == "cuda" else "ops"
        result[f"{kind}_per_step"] = {v: round(sum(c.values()), 2) for v, c in launches.items()}
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(json.dumps(main()))
