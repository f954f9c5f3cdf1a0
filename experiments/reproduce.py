"""Regenerate the README's figures: run each benchmark and write its log in experiments/results.

Every log starts with the same header (:func:`log_header`): the exact command, the date, the
commit (``+dirty`` when the working tree differs from it), the machine (CPU model and cores,
GPU) and the versions of Python, torch and Ray. Then comes what the benchmark
printed, and its wall time. The README's "Measured" table summarises these logs (each row names
its log; ``tests/experiments/test_readme_figures.py`` checks that every figure of a row appears
in its log).

    python -m experiments.reproduce               # every CPU figure (about 40 min on 2 cores)
    python -m experiments.reproduce --only faults sweep_quick
    python -m experiments.reproduce --quick       # the quick variants, to <name>_quick logs
    python -m experiments.reproduce --list

GPU figures run only where CUDA is available (``--gpu`` runs all of them, ``--only
overhead_gpu_depth2 ...`` some). Where the tree runs as a copy on another machine,
``IKKUNA_SENT_COMMIT`` names the commit it was copied from (the copy's own git metadata can lag
behind).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FIGURES", "Figure", "log_header", "main", "run_figure"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"


@dataclass(frozen=True)
class Figure:
    """One benchmark run behind README figures: its arguments and the log it writes."""

    module: str
    args: tuple[str, ...]
    log: str
    quick_args: tuple[str, ...] | None = None  # None: no quick variant
    gpu: bool = False


FIGURES: dict[str, Figure] = {
    "overhead_depth2": Figure(
        "experiments.bench_overhead", ("--depth", "2"), "cpu_bench_overhead_depth2.txt",
        ("--depth", "2", "--steps", "120"),
    ),
    "overhead_depth6": Figure(
        "experiments.bench_overhead", ("--depth", "6"), "cpu_bench_overhead_depth6.txt",
        ("--depth", "6", "--steps", "120"),
    ),
    "svcca": Figure(
        "experiments.bench_svcca", ("--repeats", "5"), "cpu_bench_svcca.txt", ("--quick",)
    ),
    "overhead_resnet18": Figure(
        "experiments.bench_overhead",
        ("--model", "resnet18", "--batch-size", "16", "--steps", "60", "--block", "10"),
        "cpu_bench_overhead_resnet18.txt",
    ),
    **{
        f"overhead_mlp{n}": Figure(
            "experiments.bench_overhead",
            # with the hand-written floor; 24 blocks: every order of the 4 runs once
            ("--model", "mlp", "--layers", str(n), "--width", "64", "--steps", "480", "--floor"),
            f"cpu_bench_overhead_mlp{n}.txt",
        )
        for n in (10, 50, 200)
    },
    "sweep": Figure("experiments.bench_sweep", (), "cpu_bench_sweep.txt"),
    "sweep_quick": Figure(
        "experiments.bench_sweep", ("--quick",), "cpu_bench_sweep_quick.txt", ("--quick",)
    ),
    "fidelity": Figure("experiments.bench_fidelity", (), "cpu_bench_fidelity.txt"),
    "fidelity_freeze_best": Figure(
        "experiments.bench_fidelity", ("--freeze-best",), "cpu_bench_fidelity_freeze_best.txt"
    ),
    "fidelity_long": Figure(
        "experiments.bench_fidelity",
        ("--freeze-best", "--epochs", "30", "--data", "digits"),
        "cpu_bench_fidelity_long.txt",
    ),
    "fidelity_quick": Figure(
        "experiments.bench_fidelity", ("--quick",), "cpu_bench_fidelity_quick.txt", ("--quick",)
    ),
    "fidelity_percent": Figure(
        "experiments.bench_fidelity", ("--metric", "test_accuracy_percent"),
        "cpu_bench_fidelity_percent.txt", ("--quick", "--metric", "test_accuracy_percent"),
    ),
    "fidelity_loss": Figure(
        "experiments.bench_fidelity", ("--metric", "test_loss"), "cpu_bench_fidelity_loss.txt",
        ("--quick", "--metric", "test_loss"),
    ),
    "regression": Figure(
        "experiments.bench_regression", (), "cpu_bench_regression.txt", ("--quick",)
    ),
    "heldout": Figure(
        "experiments.bench_heldout", (), "cpu_bench_heldout.txt", ("--quick",)
    ),
    "heldout_warmup_len": Figure(
        "experiments.bench_heldout",
        ("--grids", "sgd_warmup_len_cnn", "--epochs", "30", "--seed", "2"),
        "cpu_bench_heldout_warmup_len.txt",
    ),
    "fidelity_bound": Figure(
        "experiments.fidelity_bound", (), "cpu_fidelity_bound.txt", ("--quick",)
    ),
    "faults": Figure("experiments.bench_faults", (), "cpu_bench_faults.txt", ("--quick",)),
    "lr_schedule": Figure(
        "experiments.bench_lr_schedule", (), "cpu_bench_lr_schedule.txt", ("--quick",)
    ),
    "report": Figure("experiments.bench_report", (), "cpu_bench_report.txt"),
    "epoch_end": Figure("experiments.bench_epoch_end", (), "cpu_bench_epoch_end.txt"),
    "scale": Figure("experiments.bench_scale", (), "cpu_bench_scale.txt", ("--quick",)),
    "demo": Figure("experiments.demo_log", ("--images", "docs/images"), "cpu_demo.txt"),
    "ddp": Figure("experiments.bench_ddp", (), "cpu_bench_ddp.txt", ("--quick",)),
    "layer_convergence": Figure(
        "experiments.layer_convergence", (), "cpu_layer_convergence.txt", ("--quick",)
    ),
    "overhead_gpu_depth2": Figure(
        "experiments.bench_overhead", ("--device", "cuda", "--depth", "2", "--launches"),
        "gpu_bench_overhead_depth2.txt", gpu=True,
    ),
    "overhead_gpu_depth6": Figure(
        "experiments.bench_overhead", ("--device", "cuda", "--depth", "6", "--launches"),
        "gpu_bench_overhead_depth6.txt", gpu=True,
    ),
    "overhead_gpu_resnet18": Figure(
        "experiments.bench_overhead",
        ("--device", "cuda", "--model", "resnet18", "--batch-size", "128", "--launches"),
        "gpu_bench_overhead_resnet18.txt", gpu=True,
    ),
    "overhead_gpu_depth2_turn": Figure(
        "experiments.bench_overhead",
        ("--device", "cuda", "--depth", "2", "--sync", "turn"),
        "gpu_bench_overhead_depth2_turn.txt", gpu=True,
    ),
    "overhead_gpu_resnet18_turn": Figure(
        "experiments.bench_overhead",
        ("--device", "cuda", "--model", "resnet18", "--batch-size", "128", "--sync", "turn"),
        "gpu_bench_overhead_resnet18_turn.txt", gpu=True,
    ),
    **{
        f"overhead_gpu_mlp{n}": Figure(
            "experiments.bench_overhead",
            ("--device", "cuda", "--model", "mlp", "--layers", str(n), "--width", "64",
             "--steps", "200", "--launches"),
            f"gpu_bench_overhead_mlp{n}.txt", gpu=True,
        )
        for n in (10, 50, 200)
    },
    "step_profile_gpu": Figure(
        "experiments.bench_step_profile", ("--model", "resnet18", "--batch-size", "128"),
        "gpu_bench_step_profile_resnet18.txt", gpu=True,
    ),
    "svcca_gpu": Figure(
        "experiments.bench_svcca", ("--device", "cuda"), "gpu_bench_svcca.txt", gpu=True
    ),
}  # fmt: skip


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def log_header(command: str) -> str:
    """The header lines (each starting with ``# ``) that every log in experiments/results has."""
    import torch

    try:
        import ray

        ray_version = ray.__version__
    except ImportError:
        ray_version = "not installed"
    sent = os.environ.get("IKKUNA_SENT_COMMIT")
    if sent:  # a copy of the tree on another machine (a lent GPU), whose git may lag behind
        commit = f"{sent} (as its sender named the copy of the tree)"
    else:
        commit = _git("rev-parse", "--short", "HEAD") or "unknown"
        # the logs themselves do not count: a run writes one before the next starts
        status = (
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":!experiments/results",
        )
        if _git(*status):
            commit += "+dirty"
    gpu = (
        f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
        if torch.cuda.is_available()
        else "none"
    )
    # the threads a benchmark uses are its own setting (most take 1 torch thread per process)
    machine = f"{_cpu_model()}, {os.cpu_count()} logical CPUs, GPU {gpu}"
    versions = f"python {platform.python_version()}, torch {torch.__version__}, ray {ray_version}"
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            f"# command: {command}",
            f"# date: {date}",
            f"# commit: {commit}",
            f"# machine: {machine}",
            f"# versions: {versions}",
        ]
    )


def run_figure(name: str, quick: bool = False, results: Path = RESULTS) -> Path:
    """Run one figure's benchmark and write its log; returns the log's path."""
    figure = FIGURES[name]
    args = figure.quick_args if quick else figure.args
    if args is None:
        raise ValueError(f"{name!r} has no quick variant; run it without --quick")
    command = " ".join(["python", "-m", figure.module, *args])
    quick_log = quick and figure.args != figure.quick_args
    log = results / (figure.log.replace(".txt", "_quick.txt") if quick_log else figure.log)
    header = log_header(command)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "RAY_AIR_NEW_OUTPUT": "0"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", figure.module, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wall = time.perf_counter() - started
    results.mkdir(parents=True, exist_ok=True)
    log.write_text(f"{header}\n# wall: {wall:.0f} s; exit status {done.returncode}\n{done.stdout}")
    return log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(FIGURES), metavar="NAME")
    parser.add_argument("--quick", action="store_true", help="the quick variants only")
    parser.add_argument(
        "--gpu", action="store_true", help="every GPU figure (on a machine with CUDA)"
    )
    parser.add_argument("--list", action="store_true", help="list the figures and exit")
    parser.add_argument("--results", default=str(RESULTS), help="where the logs go")
    args = parser.parse_args(argv)
    if args.list:
        for name, figure in FIGURES.items():
            print(f"{name:22s} {figure.log:36s} python -m {figure.module} {' '.join(figure.args)}")
        return 0
    import torch

    if args.only and args.gpu:
        parser.error("give --only or --gpu, not both")
    names = args.only or [
        n for n, f in FIGURES.items() if f.gpu == args.gpu and (not args.quick or f.quick_args)
    ]
    failed = []
    for name in names:
        figure = FIGURES[name]
        if figure.gpu and not torch.cuda.is_available():
            print(f"{name}: skipped (no CUDA here)")
            continue
        if args.quick and figure.quick_args is None:
            print(f"{name}: skipped (no quick variant)")
            continue
        log = run_figure(name, quick=args.quick, results=Path(args.results))
        status = log.read_text().split("\n", 6)[5]
        print(f"{name}: {log} ({status.lstrip('# ')})")
        if "exit status 0" not in status:
            failed.append(name)
    if failed:
        print(f"failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
