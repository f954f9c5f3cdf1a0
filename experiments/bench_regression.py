"""Does SVCCAScheduler keep the answer of a sweep steered on a small-scale loss?

Its metric thresholds (``min_delta``, ``stall_delta``, ``reach_within``) are set for an accuracy
in [0, 1] and taken in the metric's units, at a scale it infers from the reports. This runs
regression sweeps steered on a validation mean squared error near 0.01-0.06 (``mode="min"``,
:mod:`experiments.regression_trial`), each under FIFO, ``SVCCAScheduler()`` (the scale
inferred: 0.1 here) and ``SVCCAScheduler(metric_scale=1.0)`` (the thresholds of an accuracy,
as before the scale was inferred), same seeds, in one Tune experiment
(:class:`~experiments.routing.RoutingScheduler`). Grids, 12 epochs each:

- ``late_start_s<seed>`` (seeds 0, 1, 2): SGD at learning rates 0.01-0.3, and a small
  initialisation (``init_scale=0.3``, lr 0.03) that is flat for a few epochs, then falls and
  often ends best;
- ``cosine``: SGD (0.01-0.3) and Adam (0.001-0.01) with a cosine decay;
- ``batch``: batch sizes 16, 64, 256 x learning rates 0.03, 0.1.

A trial's score is its lowest ``val_mse``. Per grid and scheduler the summary gives
``best_same`` (FIFO's best configuration), ``best_delta`` and ``top3_worst_delta`` (FIFO's
minus the scheduler's, so negative is worse), ``kept`` (``best_same`` and each of FIFO's top 3
within 1 % of FIFO's best), ``reports_ratio`` (reports made over FIFO's) and ``stopped`` (the
trials stopped); and each scheduler's ``scale``. Run: ``python -m experiments.bench_regression``
(about 3 minutes on 2 CPUs; ``--quick``: the first late-start grid only). The last line printed
is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from typing import Any

log = logging.getLogger("bench_regression")

GROUPS = ("fifo", "svcca", "svcca_scale1")
EPOCHS = 12
#: how close to FIFO's score each of its top 3 must end, relative to FIFO's best
KEEP_WITHIN = 0.01


def grids(quick: bool = False) -> dict[str, list[dict[str, Any]]]:
    """The configurations of each grid (a grid is one sweep, with schedulers of its own)."""
    late = [{"lr": lr, "init_scale": 1.0} for lr in (0.01, 0.03, 0.1, 0.3)]
    late.append({"lr": 0.03, "init_scale": 0.3})
    out = {f"late_start_s{seed}": [{**c, "seed": seed} for c in late] for seed in (0, 1, 2)}
    if quick:
        return {"late_start_s0": out["late_start_s0"]}
    out["cosine"] = [
        {"lr": lr, "optimizer": "sgd", "schedule": "cosine"} for lr in (0.01, 0.03, 0.1, 0.3)
    ] + [{"lr": lr, "optimizer": "adam", "schedule": "cosine"} for lr in (0.001, 0.003, 0.01)]
    out["batch"] = [{"lr": lr, "batch_size": size} for size in (16, 64, 256) for lr in (0.03, 0.1)]
    return out


def group_of(config: dict[str, Any]) -> str:
    """``<grid>/<scheduler>``."""
    return f"{config['variant']['grid']}/{config['variant']['scheduler']}"


def name_of(config: dict[str, Any]) -> str:
    """A configuration's name within its grid (its settings but the grid and scheduler)."""
    return ",".join(f"{k}={v}" for k, v in sorted(config.items()) if k not in ("grid", "scheduler"))


def grid_summary(trials: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """One grid's figures; ``trials[scheduler][config name]`` = ``{"score", "reports",
    "stopped"}``, the score being the lowest loss (lower is better).

    Examples:
        >>> fifo = {"a": {"score": 0.010, "reports": 12}, "b": {"score": 0.012, "reports": 12},
        ...         "c": {"score": 0.013, "reports": 12}, "d": {"score": 0.02, "reports": 12}}
        >>> ours = {**fifo, "d": {"score": 0.03, "reports": 4}}
        >>> out = grid_summary({"fifo": fifo, "svcca": ours})
        >>> out["svcca"]["kept"], out["svcca"]["reports_ratio"], out["svcca"]["stopped"]
        (True, 0.833, 1)
    """
    fifo = trials["fifo"]
    top3 = sorted(fifo, key=lambda n: fifo[n]["score"])[:3]
    best = top3[0]
    out: dict[str, Any] = {"fifo": {n: round(t["score"], 5) for n, t in fifo.items()}}
    for group, ours in trials.items():
        if group == "fifo":
            continue
        our_best = min(ours, key=lambda n: ours[n]["score"])
        worst = min(fifo[n]["score"] - ours[n]["score"] for n in top3)
        best_same = our_best == best
        out[group] = {
            "best_same": best_same,
            "best_delta": round(fifo[best]["score"] - ours[our_best]["score"], 5),
            "top3_worst_delta": round(worst, 5),
            "kept": best_same and worst >= -KEEP_WITHIN * fifo[best]["score"],
            "reports_ratio": round(
                sum(t["reports"] for t in ours.values()) / sum(t["reports"] for t in fifo.values()),
                3,
            ),
            "stopped": sum(t["reports"] < EPOCHS for t in ours.values()),
        }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the first late-start grid only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    import ikkuna_tune as ik
    from experiments.local_ray import init_local_ray
    from experiments.regression_trial import subscribers, train_trial
    from experiments.routing import RoutingScheduler

    chosen = grids(args.quick)
    schedulers: dict[str, Any] = {}
    for grid in chosen:
        schedulers[f"{grid}/fifo"] = FIFOScheduler()
        schedulers[f"{grid}/svcca"] = ik.SVCCAScheduler()
        schedulers[f"{grid}/svcca_scale1"] = ik.SVCCAScheduler(metric_scale=1.0)
    variants = [
        {**config, "grid": grid, "scheduler": group}
        for grid, configs in chosen.items()
        for config in configs
        for group in GROUPS
    ]
    if not ray.is_initialized():
        init_local_ray()
    started = time.perf_counter()
    analysis = tune.run(
        ik.instrument(train_trial, subscribers),
        name="bench_regression",
        config={"variant": tune.grid_search(variants), "epochs": EPOCHS, "lr": 0.0},
        scheduler=RoutingScheduler(schedulers, group=group_of),
        stop={"training_iteration": EPOCHS},
        metric="val_mse",
        mode="min",
        storage_path=tempfile.mkdtemp(prefix="bench_regression_"),
        verbose=0,
        resources_per_trial={"cpu": 1},
        reuse_actors=True,
    )
    wall = time.perf_counter() - started
    cells: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for trial in analysis.trials:
        df = analysis.trial_dataframes.get(trial.trial_id)
        if df is None or df.empty:
            continue
        variant = trial.config["variant"]
        losses = df["val_mse"].astype(float)
        cell = cells.setdefault(variant["grid"], {g: {} for g in GROUPS})
        cell[variant["scheduler"]][name_of(variant)] = {
            "score": float(losses.min()),
            "reports": len(df),
        }
    out: dict[str, Any] = {"epochs": EPOCHS, "wall_seconds": round(wall, 1)}
    for grid, trials in cells.items():
        out[grid] = grid_summary(trials)
        out[grid]["scale"] = {g: schedulers[f"{grid}/{g}"].scale for g in GROUPS[1:]}
        log.info("%s: %s", grid, {g: out[grid][g] for g in GROUPS[1:]})
    for group in GROUPS[1:]:
        kept = [out[g][group]["kept"] for g in cells]
        out[f"{group}_kept"] = f"{sum(kept)}/{len(kept)}"
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
