"""Does SVCCAScheduler keep the sweep's answer on axes its rules were not tuned on?

The fidelity benchmark sweeps the learning rate of SGD. This one sweeps other axes on
scikit-learn's digits (:func:`experiments.fidelity_trial.train_trial`, 12 epochs): Adam's
learning rate, weight decay under SGD and Adam, the batch size under SGD and Adam, the
width and depth of an MLP, and SGD's learning rate behind a constant warm-up (1 % of the
rate for the first 3 or 5 epochs: the layers stand as still as at a rate too small to
learn), each grid under FIFO and under ``SVCCAScheduler()`` with its
defaults, same seeds, in one Tune experiment (:class:`~experiments.routing.RoutingScheduler`
hands each trial to its grid's scheduler).

Per grid, against FIFO: ``best_same`` (the same best configuration), ``best_acc_delta``,
``top3_worst_delta`` (the worst change of FIFO's three best configurations), ``reports_ratio``
(reports made, free of timing noise) and ``compute_ratio`` (``train_seconds``), and the
scheduler's decisions (``stopped`` and ``frozen``: configuration -> report and rule). The last
line is one JSON object; ``answer_kept`` counts the grids where the best configuration is the
same and each of FIFO's top 3 is within 1 point (``top3_worst_delta >= -0.01``).

Run: ``python -m experiments.bench_heldout`` (14 grids) or ``--quick`` (3 grids, 8 epochs).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any

GROUPS = ("fifo", "svcca")
ADAM_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
DECAYS = (0.0, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
BATCHES = (8, 16, 32, 64, 128, 256)
SHAPES = ((32,), (256,), (64, 64), (128, 64), (64, 64, 64), (64,) * 4, (64,) * 6, (32,) * 8)
SGD, ADAM, CNN = {"optimizer": "sgd"}, {"optimizer": "adam"}, {"family": "cnn"}
WARMUP = {"warmup_factor": 0.01}
WARMUP_LRS = (0.003, 0.007, 0.01, 0.014, 0.02, 0.028, 0.04)  # (none learns much in the warm-up)

#: grid name -> the configurations it sweeps (``family`` mlp and SGD unless named)
GRIDS: dict[str, list[dict[str, Any]]] = {
    "adam_lr_mlp": [{**ADAM, "lr": lr} for lr in ADAM_LRS],
    "adam_lr_cnn": [{**CNN, **ADAM, "lr": lr} for lr in ADAM_LRS],
    "sgd_decay_mlp": [{**SGD, "lr": 0.1, "weight_decay": wd} for wd in DECAYS],
    "sgd_decay_cnn": [{**CNN, **SGD, "lr": 0.1, "weight_decay": wd} for wd in DECAYS],
    "adam_decay_mlp": [{**ADAM, "lr": 3e-3, "weight_decay": wd} for wd in DECAYS],
    "sgd_batch_cnn": [{**CNN, **SGD, "lr": 0.03, "batch_size": b} for b in BATCHES],
    "sgd_batch_cnn_fast": [{**CNN, **SGD, "lr": 0.1, "batch_size": b} for b in BATCHES],
    "sgd_batch_mlp": [{**SGD, "lr": 0.03, "batch_size": b} for b in BATCHES],
    "adam_batch_mlp": [{**ADAM, "lr": 1e-3, "batch_size": b} for b in BATCHES],
    "sgd_shape_mlp": [{**SGD, "lr": 0.03, "hidden": list(h)} for h in SHAPES],
    "sgd_shape_mlp_fast": [{**SGD, "lr": 0.1, "hidden": list(h)} for h in SHAPES],
    "adam_shape_mlp": [{**ADAM, "lr": 1e-3, "hidden": list(h)} for h in SHAPES],
    # a constant warm-up at 1 % of the rate: for a quarter of the budget, and for longer than
    # the third (stall_share) after which trials that made no progress may be stopped
    "sgd_warmup3_mlp": [{**SGD, "lr": lr, **WARMUP, "warmup_epochs": 3} for lr in WARMUP_LRS],
    "sgd_warmup5_mlp": [{**SGD, "lr": lr, **WARMUP, "warmup_epochs": 5} for lr in WARMUP_LRS],
    # the warm-up's length swept (1 % of the rate, a CNN at lr 0.1): a trial with a long one
    # sits at chance while the others have learned, and may end level with them or ahead (run
    # it over 30 epochs: --epochs 30, warm-ups up to 12 of them)
    "sgd_warmup_len_cnn": [
        {**CNN, **SGD, "lr": 0.1, **WARMUP, "warmup_epochs": w} for w in (0, 2, 4, 6, 8, 10, 12)
    ],
}
QUICK_GRIDS = ("adam_lr_mlp", "sgd_decay_mlp", "sgd_batch_cnn")


def label(config: dict[str, Any]) -> str:
    """What a grid's configuration varies, as ``key=value`` (``lr=0.001``, ``hidden=[64, 64]``)."""
    shown = {k: v for k, v in config.items() if k not in ("family", "optimizer")}
    return ",".join(f"{k}={v}" for k, v in shown.items())


def variants(grids: list[str], seed: int) -> list[dict[str, Any]]:
    """Grid by grid, configuration by configuration, the two groups side by side (the
    SVCCAScheduler group's trials report checkpoints: it may pause one to wait)."""
    return [
        {
            **config,
            "grid": grid,
            "label": label(config),
            "scheduler": group,
            "seed": seed,
            "checkpoint": group == "svcca",
        }
        for grid in grids
        for config in GRIDS[grid]
        for group in GROUPS
    ]


def grid_summary(
    trials: dict[str, dict[str, dict[str, Any]]], decisions: list[dict[str, Any]]
) -> dict[str, Any]:
    """One grid's figures: ``trials[group][label]`` as ``bench_fidelity.trial_summary`` (with
    ``trial_id``), ``decisions`` the rows of :func:`ikkuna_tune.compare.decisions` of the
    SVCCAScheduler group's trials."""
    fifo, svcca = trials["fifo"], trials["svcca"]
    acc = {g: {k: t["accuracy"] for k, t in trials[g].items()} for g in GROUPS}
    best_fifo = max(acc["fifo"], key=acc["fifo"].__getitem__)
    best_svcca = max(acc["svcca"], key=acc["svcca"].__getitem__)
    top3 = sorted(acc["fifo"], key=acc["fifo"].__getitem__, reverse=True)[:3]
    by_trial = {t["trial_id"]: k for k, t in svcca.items()}
    stopped: dict[str, str] = {}
    frozen: dict[str, list[str]] = {}
    for row in decisions:
        config = by_trial.get(row["trial_id"])
        if config is None:
            continue
        if row["action"] == "stop":
            stopped[config] = f"report {row['iteration']}: {row['rule']}"
        elif row["action"] == "freeze":
            frozen.setdefault(config, []).append(f"{row['layer']} at report {row['iteration']}")
    out = {
        "fifo_accuracy": {k: round(a, 4) for k, a in acc["fifo"].items()},
        "svcca_accuracy": {k: round(a, 4) for k, a in acc["svcca"].items()},
        "best_same": best_fifo == best_svcca,
        "best_acc_delta": round(acc["svcca"][best_svcca] - acc["fifo"][best_fifo], 4),
        "top3": top3,
        "top3_worst_delta": round(min(acc["svcca"][k] - acc["fifo"][k] for k in top3), 4),
        "reports_ratio": round(
            sum(t["reports"] for t in svcca.values()) / sum(t["reports"] for t in fifo.values()),
            3,
        ),
        "compute_ratio": round(
            sum(t["seconds"] for t in svcca.values()) / sum(t["seconds"] for t in fifo.values()),
            3,
        ),
        "stopped": stopped,
        "frozen": frozen,
    }
    out["answer_kept"] = out["best_same"] and out["top3_worst_delta"] >= -0.01
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 grids, 8 epochs")
    parser.add_argument("--grids", nargs="+", choices=sorted(GRIDS), default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--storage", default=None, help="where Tune writes (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    import ikkuna_tune as ik
    from experiments.bench_fidelity import trial_summary
    from experiments.fidelity_trial import subscribers, train_trial
    from experiments.local_ray import init_local_ray
    from experiments.routing import RoutingScheduler
    from ikkuna_tune import compare

    grids = args.grids or list(QUICK_GRIDS if args.quick else GRIDS)
    epochs = args.epochs or (8 if args.quick else 12)
    schedulers: dict[str, Any] = {}
    for grid in grids:
        schedulers[f"{grid}/fifo"] = FIFOScheduler()
        schedulers[f"{grid}/svcca"] = ik.SVCCAScheduler()
    if not ray.is_initialized():
        init_local_ray()
    storage = args.storage or tempfile.mkdtemp(prefix="bench_heldout_")
    started = time.perf_counter()
    analysis = tune.run(
        ik.instrument(train_trial, subscribers),
        name="bench_heldout",
        config={
            "variant": tune.grid_search(variants(grids, args.seed)),
            "epochs": epochs,
            "data": "digits",
            "family": "mlp",  # replaced by the variant's where it names one
            "lr": 0.0,
        },
        scheduler=RoutingScheduler(
            schedulers, group=lambda c: f"{c['variant']['grid']}/{c['variant']['scheduler']}"
        ),
        stop={"training_iteration": epochs},
        metric="test_accuracy",
        mode="max",
        storage_path=storage,
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
        v = trial.config["variant"]
        cell = cells.setdefault(v["grid"], {g: {} for g in GROUPS})
        cell[v["scheduler"]][v["label"]] = {**trial_summary(df), "trial_id": trial.trial_id}
    rows = compare.decisions(compare.load(os.path.join(storage, "bench_heldout")))
    decisions = rows.to_dict("records")
    out: dict[str, Any] = {"epochs": epochs, "seed": args.seed, "wall_seconds": round(wall, 1)}
    for grid in grids:
        summary = grid_summary(cells[grid], decisions)
        out[grid] = summary
        logging.getLogger("bench_heldout").info(
            "%s: best same %s, top 3 worst %+.4f, reports %.3f, compute %.3f; stopped %s; "
            "frozen %s",
            grid,
            summary["best_same"],
            summary["top3_worst_delta"],
            summary["reports_ratio"],
            summary["compute_ratio"],
            summary["stopped"],
            summary["frozen"],
        )
    kept = sum(out[g]["answer_kept"] for g in grids)
    out["answer_kept"] = f"{kept}/{len(grids)}"
    ratios = [out[g]["reports_ratio"] for g in grids]
    out["reports_ratio_range"] = [min(ratios), max(ratios)]
    if not args.storage:  # a temporary directory of ours (checkpoints: a GB or more)
        shutil.rmtree(storage, ignore_errors=True)
    print(json.dumps(out, default=str))
    return out


if __name__ == "__main__":
    main()
