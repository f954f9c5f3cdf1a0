"""Benchmark: ``svcca_similarity``/``cca`` against a covariance-based CCA written here.

The reference is the textbook route that google/svcca takes, in float64 NumPy: centre, form the
covariance matrices, invert ``Sigma_xx`` and ``Sigma_yy`` with ``pinv``, take their square roots
from ``eigh`` (inverse square roots), and read the canonical correlations off the singular values
of ``Sigma_xx^-1/2 Sigma_xy Sigma_yy^-1/2``. Its SVCCA first reduces each side by a thin SVD to
the directions that explain ``keep`` of the variance, as Raghu et al. (2017) do. The reference is
written charitably: negative rounding-level eigenvalues are clipped to 0 before the square root,
and the last SVD computes no singular vectors.

Cases: activations with a power-law spectrum (singular values ~ i^-0.75, so about half to
four-fifths of the directions explain 99% of the variance) of shapes (500, 64), (2000, 512),
(10000, 500) and (5000, 1024); ``y`` is a noisy linear map of ``x``, as for one layer at two
checkpoints. The ill-conditioned set has the same shapes in float32 with 30% dead (constant)
and 20% duplicated neurons. For those the exact answer is known by construction: dead and
duplicated neurons add nothing to the column space, so the canonical correlations are those of
the live, distinct columns (well-conditioned, so the reference computes them reliably).

A run *fails* when it raises, returns non-finite values, returns correlations outside [0, 1]
(by more than 1e-6), or, on the ill-conditioned set, is further than 1e-3 from the exact answer.
Each side runs ``--repeats`` times, reference and ours interleaved so that load from other
processes hits both alike, and a case's time is the fastest of its runs (``--stat min``, as
``timeit`` advises: on a shared virtual machine the slower runs are slower because of stalls
that have nothing to do with the code, such as the host backing freshly allocated memory, which
here can cost a second for 40 MB); ``--stat median`` uses the median instead, and both are
reported. By default both sides run single-threaded and are timed in
process CPU time, which other processes on a shared machine disturb far less than wall-clock
time (both are reported; ``--clock wall`` and ``--threads 0`` change this). ``speedup`` is
reference time / our time per (case, function) on the CPU; ``speedup_median`` is the median over
all cases where the reference did not fail.
``max_abs_diff`` is the largest difference between the two results where the reference did not
fail. With ``--device cuda`` our functions are also timed on the GPU (data already on the
device, synchronised before and after each call) and compared with the same CPU reference.

The last line printed is one JSON object with the summary. It includes
``paused_fraction_before``/``_after``: the share of time, over a few seconds before and after the
cases, that chunks of a fixed small workload lost to stops of the whole machine (on a shared
virtual machine these can be hundreds of milliseconds every few tenths of a second, charged as
CPU time; calls longer than the gaps between them then never run clean, and a case's time is
its clean time plus stops).

Run: ``python -m experiments.bench_svcca [--device cuda] [--repeats 5] [--threads 1]
[--clock cpu] [--stat min] [--quick] [--pause-probe 3]``
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ikkuna_tune.functional import cca, svcca_similarity

SHAPES: tuple[tuple[int, int], ...] = ((500, 64), (2000, 512), (10000, 500), (5000, 1024))
QUICK_SHAPES: tuple[tuple[int, int], ...] = ((300, 16), (800, 64))
KEEP = 0.99
DEAD = 0.3
DUPLICATED = 0.2
FAIL_TRUTH = 1e-3
FAIL_RANGE = 1e-6
_STATS: dict[str, Callable[..., float]] = {"min": min, "median": statistics.median}


# ------------------------------------------------------------------------------ reference
def _inv_sqrt_psd(sigma: np.ndarray) -> np.ndarray:
    """Inverse square root of a covariance matrix: sqrt of its pseudo-inverse, via eigh."""
    w, v = np.linalg.eigh(np.linalg.pinv(sigma))
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def reference_cca(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Canonical correlations from covariance matrices (pinv + eigh + SVD), float64 NumPy."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    n = x.shape[0]
    sxx, syy, sxy = x.T @ x / (n - 1), y.T @ y / (n - 1), x.T @ y / (n - 1)
    arr = _inv_sqrt_psd(sxx) @ sxy @ _inv_sqrt_psd(syy)
    return np.linalg.svd(arr, compute_uv=False)


def _reference_reduce(a: np.ndarray, keep: float) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    a = a - a.mean(axis=0)
    u, s, _ = np.linalg.svd(a, full_matrices=False)
    frac = np.cumsum(s**2) / np.sum(s**2)
    k = int(np.searchsorted(frac, keep) + 1)
    return u[:, :k] * s[:k]


def reference_svcca(x: np.ndarray, y: np.ndarray, keep: float = KEEP) -> float:
    """SVCCA: SVD reduction to ``keep`` of the variance, then the covariance-based CCA."""
    return float(np.mean(reference_cca(_reference_reduce(x, keep), _reference_reduce(y, keep))))


# ---------------------------------------------------------------------------------- data
def power_law_pair(n: int, p: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``x`` with singular values ~ i^-0.75 in random directions; ``y`` a noisy map of it."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((p, p)))
    spectrum = np.arange(1, p + 1) ** -0.75
    x = (rng.standard_normal((n, p)) * spectrum) @ rotation + rng.standard_normal(p)
    mix = np.eye(p) + 0.3 * rng.standard_normal((p, p)) / math.sqrt(p)
    y = x @ mix + 0.02 * rng.standard_normal((n, p))
    return x, y


def ill_conditioned(a: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ill, live)``: float32 with 30% dead and 20% duplicated neurons out of ``a.shape[1]``,
    and its live distinct columns (as float64) which span the same space."""
    rng = np.random.default_rng(seed)
    n, p = a.shape
    n_dead, n_dup = round(DEAD * p), round(DUPLICATED * p)
    live = a[:, : p - n_dead - n_dup].astype(np.float32)
    dead = np.tile(rng.choice([0.0, 0.0, 1.0, 2.5], size=n_dead).astype(np.float32), (n, 1))
    dup = live[:, rng.choice(live.shape[1], size=n_dup)]
    ill = np.hstack([live, dead, dup])[:, rng.permutation(p)]
    return np.ascontiguousarray(ill), live.astype(np.float64)


# ------------------------------------------------------------------------------- timing
def paused_fraction(chunk_seconds: list[float], factor: float = 3.0) -> float:
    """Fraction of the total time spent beyond the median in chunks of identical work that took
    over ``factor`` times the median: the share of time the machine was not running the code."""
    total = sum(chunk_seconds)
    if not chunk_seconds or total <= 0:
        return 0.0
    median = statistics.median(chunk_seconds)
    excess = sum(t - median for t in chunk_seconds if t > factor * median)
    return excess / total


def measure_pauses(seconds: float = 3.0) -> float:
    """:func:`paused_fraction` of ~2 ms chunks of one fixed matrix product, for ``seconds``.

    On a shared virtual machine the whole machine can stop for hundreds of milliseconds at a
    time, and the stop is charged to the running process as CPU time; a call longer than the
    gaps between stops then never runs clean. This figure says how much that affected a run.
    """
    a = np.random.default_rng(0).standard_normal((200, 200))
    chunks = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        for _ in range(10):
            a @ a
        chunks.append(time.perf_counter() - start)
    return paused_fraction(chunks)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    wall: float
    cpu: float
    out: Any = None
    error: str | None = None


def _timed(fn: Callable[[], Any], device: torch.device) -> Timing:
    """Run ``fn`` once: wall-clock and process CPU time, its result (as NumPy) or its error."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        out = fn()
        if isinstance(out, torch.Tensor):
            out = out.detach().cpu().numpy()
        _sync(device)
    except Exception as error:  # a failure is a result here, not a crash
        message = f"{type(error).__name__}: {error}"[:120]
        return Timing(time.perf_counter() - wall, time.process_time() - cpu, None, message)
    return Timing(time.perf_counter() - wall, time.process_time() - cpu, out)


def _status(out: Any, error: str | None, truth: Any) -> str:
    if error is not None:
        return "error"
    values = np.atleast_1d(np.asarray(out, dtype=np.float64))
    if not np.all(np.isfinite(values)):
        return "nonfinite"
    if np.any(values < -FAIL_RANGE) or np.any(values > 1 + FAIL_RANGE):
        return "out_of_range"
    if truth is not None and _diff(values, truth) > FAIL_TRUTH:
        return "wrong"
    return "ok"


def _diff(a: Any, b: Any) -> float:
    a = np.atleast_1d(np.asarray(a, dtype=np.float64))
    b = np.atleast_1d(np.asarray(b, dtype=np.float64))
    if a.size != b.size:  # missing canonical correlations count as 0 (null directions)
        size = max(a.size, b.size)
        a, b = np.pad(a, (0, size - a.size)), np.pad(b, (0, size - b.size))
    return float(np.max(np.abs(a - b))) if a.size else 0.0


@dataclass
class Case:
    name: str
    function: str
    x: np.ndarray
    y: np.ndarray
    truth: Any = None
    result: dict[str, Any] = field(default_factory=dict)


def _ours(function: str) -> Callable[..., Any]:
    return cca if function == "cca" else svcca_similarity


def _reference(function: str) -> Callable[..., Any]:
    return reference_cca if function == "cca" else reference_svcca


def run_case(
    case: Case, repeats: int, clock: str, gpu: torch.device | None, stat: str = "min"
) -> dict[str, Any]:
    cpu = torch.device("cpu")
    ref_fn, our_fn = _reference(case.function), _ours(case.function)
    # one untimed warm-up each, then interleaved timed runs (load from elsewhere hits both alike)
    _timed(lambda: ref_fn(case.x, case.y), cpu)
    _timed(lambda: our_fn(case.x, case.y), cpu)
    refs, ours = [], []
    for _ in range(repeats):
        refs.append(_timed(lambda: ref_fn(case.x, case.y), cpu))
        ours.append(_timed(lambda: our_fn(case.x, case.y), cpu))
    ref, our = refs[-1], ours[-1]
    result: dict[str, Any] = {
        "case": case.name,
        "function": case.function,
        "shape": list(case.x.shape),
        "dtype": str(case.x.dtype),
        "ref_s": _STATS[stat](getattr(t, clock) for t in refs),
        "ours_s": _STATS[stat](getattr(t, clock) for t in ours),
        "ref_median_s": statistics.median(getattr(t, clock) for t in refs),
        "ours_median_s": statistics.median(getattr(t, clock) for t in ours),
        "ref_wall_s": _STATS[stat](t.wall for t in refs),
        "ours_wall_s": _STATS[stat](t.wall for t in ours),
        "ref_status": _status(ref.out, ref.error, case.truth),
        "ours_status": _status(our.out, our.error, case.truth),
    }
    if ref.error:
        result["ref_error"] = ref.error
    if our.error:
        result["ours_error"] = our.error
    result["speedup"] = result["ref_s"] / result["ours_s"]
    result["speedup_of_medians"] = result["ref_median_s"] / result["ours_median_s"]
    result["speedup_wall"] = result["ref_wall_s"] / result["ours_wall_s"]
    if result["ref_status"] == "ok" and our.out is not None:
        result["abs_diff"] = _diff(ref.out, our.out)
    if case.truth is not None:
        if our.out is not None:
            result["ours_vs_truth"] = _diff(our.out, case.truth)
        if ref.out is not None:
            result["ref_vs_truth"] = _diff(ref.out, case.truth)
    if gpu is not None:
        xg = torch.from_numpy(case.x).to(gpu)
        yg = torch.from_numpy(case.y).to(gpu)
        _timed(lambda: our_fn(xg, yg), gpu)
        gpus = [_timed(lambda: our_fn(xg, yg), gpu) for _ in range(repeats)]
        # GPU times are wall-clock (the CPU only waits); compared with the reference's wall time
        result["gpu_s"] = _STATS[stat](t.wall for t in gpus)
        result["gpu_speedup"] = result["ref_wall_s"] / result["gpu_s"]
        result["gpu_status"] = _status(gpus[-1].out, gpus[-1].error, case.truth)
        if our.out is not None and gpus[-1].out is not None:
            result["gpu_vs_cpu_diff"] = _diff(gpus[-1].out, our.out)
    return result


def build_cases(shapes: tuple[tuple[int, int], ...], seed: int) -> list[Case]:
    cases: list[Case] = []
    for i, (n, p) in enumerate(shapes):
        x, y = power_law_pair(n, p, seed + i)
        for function in ("svcca", "cca"):
            cases.append(Case(f"powerlaw_{n}x{p}", function, x, y))
        xi, x_live = ill_conditioned(x, seed + 100 + i)
        yi, y_live = ill_conditioned(y, seed + 200 + i)
        cases.append(Case(f"ill_{n}x{p}", "svcca", xi, yi))
        cases.append(Case(f"ill_{n}x{p}", "cca", xi, yi, truth=reference_cca(x_live, y_live)))
    return cases


def summarise(
    results: list[dict[str, Any]], device: str, repeats: int, clock: str, stat: str = "min"
) -> dict[str, Any]:
    converged = [r for r in results if r["ref_status"] == "ok"]
    summary: dict[str, Any] = {
        "speedup_median": statistics.median(r["speedup"] for r in converged) if converged else None,
        "speedup_median_wall": _median_of(converged, None, "speedup_wall"),
        "speedup_median_of_medians": _median_of(converged, None, "speedup_of_medians"),
        "speedup_min": min((r["speedup"] for r in converged), default=None),
        "speedup_median_svcca": _median_of(converged, "svcca", "speedup"),
        "speedup_median_cca": _median_of(converged, "cca", "speedup"),
        "max_abs_diff": max((r.get("abs_diff", math.inf) for r in converged), default=None),
        "failures_reference": sum(r["ref_status"] != "ok" for r in results),
        "failures_ours": sum(r["ours_status"] != "ok" for r in results),
        "max_ours_vs_truth": max(
            (r["ours_vs_truth"] for r in results if "ours_vs_truth" in r), default=None
        ),
        "cases": len(results),
        "repeats": repeats,
        "clock": clock,
        "stat": stat,
        "device": device,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    if any("gpu_s" in r for r in results):
        gpu = [r for r in converged if "gpu_s" in r]
        summary["gpu_speedup_median"] = statistics.median(r["gpu_speedup"] for r in gpu)
        summary["gpu_failures"] = sum(r.get("gpu_status") != "ok" for r in results)
        summary["gpu_max_diff_vs_cpu"] = max(r.get("gpu_vs_cpu_diff", math.inf) for r in results)
        summary["gpu_name"] = torch.cuda.get_device_name(0)
    return summary


def _median_of(results: list[dict[str, Any]], function: str | None, key: str) -> float | None:
    values = [r[key] for r in results if function is None or r["function"] == function]
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small shapes, for a smoke test")
    parser.add_argument(
        "--shapes", default=None, help="comma-separated shapes to run instead, e.g. 500x64,2000x512"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="BLAS/LAPACK threads for both sides (default 1: on a shared machine a second "
        "thread mostly waits for a busy core; 0 leaves the libraries' defaults)",
    )
    parser.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="what speedup_median compares: process CPU time (default; robust to other "
        "processes when single-threaded) or wall-clock time (also reported)",
    )
    parser.add_argument(
        "--stat",
        choices=sorted(_STATS),
        default="min",
        help="a case's time over its repeats: the fastest run (default) or the median",
    )
    parser.add_argument(
        "--pause-probe",
        type=float,
        default=3.0,
        help="seconds spent before and after the cases measuring how much of the time the "
        "machine was paused (paused_fraction_before/after in the summary)",
    )
    args = parser.parse_args(argv)
    if args.pause_probe < 0:
        parser.error(f"--pause-probe must be >= 0 seconds, got {args.pause_probe}")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was given but torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(args.threads)
        except ImportError:
            logging.warning("threadpoolctl is missing: NumPy's BLAS threads are not limited")
    gpu = torch.device("cuda") if args.device == "cuda" else None
    results = []
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.shapes:
        try:
            shapes = tuple(
                (int(n), int(p)) for n, p in (s.split("x") for s in args.shapes.split(","))
            )
        except ValueError:
            parser.error(f"--shapes must look like 500x64,2000x512 but got {args.shapes!r}")
    paused_before = measure_pauses(args.pause_probe)
    for case in build_cases(shapes, args.seed):
        result = run_case(case, args.repeats, args.clock, gpu, args.stat)
        results.append(result)
        print(json.dumps(result), flush=True)
    summary = summarise(results, args.device, args.repeats, args.clock, args.stat)
    summary["paused_fraction_before"] = round(paused_before, 3)
    summary["paused_fraction_after"] = round(measure_pauses(args.pause_probe), 3)
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
