"""Is a training step bound by the host or by the device? Plain vs instrumented, on CUDA.

``bench_overhead --sync turn`` gives the throughput ratio; this says why it is what it is. For
each of ``plain`` and ``every`` (the standard set every step, as in ``bench_overhead``), twice
in the order plain, every, plain, every, it trains ``bench_overhead``'s model from the same
initial weights:

* ``--warmup`` steps, then a synchronisation;
* ``--steps`` timed steps with no synchronisation between them: ``issue_ms`` is the host's time
  per step until the last step was queued, ``wall_ms`` the time per step until the device
  finished it (one synchronisation at the end), ``host_cpu_ms`` the thread's CPU time per step;
* ``--profile-steps`` steps under :mod:`torch.profiler`: ``device_ms`` is the summed duration
  per step of what the profiler records on the device (kernels and copies, and the
  device-side span of annotated ranges such as ``Optimizer.step#SGD.step``, which is the time
  from the range's first to its last kernel, idle gaps included).

When ``issue_ms`` is about ``wall_ms``, the host never got ahead of the device: the step is
host-bound, and whatever the instrumentation adds on the host shows in the throughput. The
``extra_device_ms`` lines list what the instrumented step adds on the device, by name.

Run: ``python -m experiments.bench_step_profile --model resnet18 --batch-size 128`` (on a
machine with CUDA; on the CPU nothing is recorded on a device and ``device_ms`` is 0). The last
line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import tempfile
import time
from typing import Any

import torch

from experiments.bench_overhead import MODELS, Model, Run, build_model, load_batches

log = logging.getLogger("bench_step_profile")

ORDER = ("plain", "every", "plain", "every")


def profile_run(
    variant: str,
    init: dict[str, torch.Tensor],
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    args: argparse.Namespace,
    device: torch.device,
    log_dir: str,
) -> tuple[dict[str, float], collections.Counter[str]]:
    """One run of ``variant``: its per-step times (ms) and its device time per step by name."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    run = Run(variant, Model(init, args, device), args, log_dir)
    run.begin()
    warm, timed = batches[: args.warmup], batches[args.warmup : args.warmup + args.steps]
    profiled = batches[args.warmup + args.steps :]
    for x, y in warm:
        run.step(x, y)
    sync()
    t0, c0 = time.perf_counter(), time.thread_time()
    for x, y in timed:
        run.step(x, y)
    issued = time.perf_counter() - t0
    sync()
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for x, y in profiled:
            run.step(x, y)
        sync()
    on_device: collections.Counter[str] = collections.Counter()
    for event in prof.events():
        if event.device_type == DeviceType.CUDA:
            on_device[event.name[:90]] += event.device_time / len(profiled) / 1e3
    run.close()
    n = len(timed)
    times = {
        "wall_ms": round(1e3 * wall / n, 4),
        "issue_ms": round(1e3 * issued / n, 4),
        "host_cpu_ms": round(1e3 * cpu / n, 4),
        "device_ms": round(sum(on_device.values()), 4),
    }
    return times, on_device


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=MODELS, default="resnet18")
    parser.add_argument("--depth", type=int, default=2, help="cnn: convolutions")
    parser.add_argument("--width", type=int, default=16, help="cnn/mlp width")
    parser.add_argument("--layers", type=int, default=10, help="mlp: hidden layers")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per run")
    parser.add_argument("--profile-steps", type=int, default=5)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    args = parser.parse_args(argv)
    if min(args.steps, args.profile_steps) < 1 or args.warmup < 0:
        parser.error("need --steps >= 1, --profile-steps >= 1 and --warmup >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    # no epoch ends inside the measured steps: their flush would synchronise
    args.steps_per_epoch = 10**9
    torch.manual_seed(0)
    init = {k: v.to(device) for k, v in build_model(args).state_dict().items()}
    total = args.warmup + args.steps + args.profile_steps
    batches = load_batches(total, args.batch_size, device, model=args.model)
    runs: list[dict[str, Any]] = []
    by_name: dict[str, collections.Counter[str]] = {}
    with tempfile.TemporaryDirectory() as log_dir:
        for i, variant in enumerate(ORDER):
            times, on_device = profile_run(variant, init, batches, args, device, f"{log_dir}/{i}")
            log.info("%-5s %s", variant, times)
            runs.append({"variant": variant, **times})
            by_name[variant] = on_device  # the last run of each variant
    extra = {k: v - by_name["plain"].get(k, 0.0) for k, v in by_name["every"].items()}
    top = sorted(extra.items(), key=lambda kv: -kv[1])[:12]
    for name, ms in top:
        log.info("extra_device_ms %.4f %s", ms, name)
    out: dict[str, Any] = {
        "model": args.model,
        "batch_size": args.batch_size,
        "device": args.device,
        "torch": torch.__version__,
        "runs": runs,
        "extra_device_ms": {name: round(ms, 4) for name, ms in top},
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
