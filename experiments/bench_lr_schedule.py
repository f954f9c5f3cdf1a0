"""Does freezing leave the sweep's answer as it was when the trials change their learning rate?

A sweep over the starting learning rate x *when* a tenfold step decay comes (``lr_drop_epoch``)
x seeds, for one model family
on scikit-learn's digits (:mod:`experiments.fidelity_trial`, SGD + momentum, ``MultiStepLR``
stepped at each epoch's end). Trials that drop late sit on a plateau at the large learning rate
while the others have dropped: their layers look converged, yet each gains again after its own
drop. Every grid runs with the same seeds under:

- ``fifo``: every trial to the end (the answer);
- ``svcca``: ``SVCCAScheduler()`` (its defaults: a layer it froze is unfrozen by the trial once
  its learning rate moves by a factor of 2, and judged again after);
- ``svcca_hold``: ``SVCCAScheduler(unfreeze_lr_factor=None)``: freezes hold through the drop;
- ``freeze``: ``SVCCAScheduler(stop=False, freeze_best=True)``: freezing only, the best trials
  too (what freezing itself costs a trial, with unfreezing);
- ``freeze_hold``: the same without unfreezing.

Per family and group: ``best_same`` (the same best configuration as FIFO), ``best_acc_delta``,
``top3_worst_delta`` (the worst change of FIFO's three best configurations), ``worst_delta``
(over every trial), ``compute_ratio`` (the trials' ``train_seconds`` against FIFO's) and
``reports_ratio`` (reports made, free of timing noise), ``frozen_trials`` (trials that had a
layer frozen) and ``unfreezes`` (layers unfrozen at a learning-rate change, over the trials).
A trial's accuracy is its last ``test_accuracy`` (a decayed schedule is judged where it ends).

Run: ``python -m experiments.bench_lr_schedule`` (MLP and CNN) or ``--quick`` (the MLP, two
seeds). The last line printed is one JSON object.
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

log = logging.getLogger("bench_lr_schedule")

GROUPS = ("fifo", "svcca", "svcca_hold", "freeze", "freeze_hold")
DROPS = (4, 10, 16, 20)
EPOCHS = 24
LRS = (0.03, 0.3)


def group_of(config: dict[str, Any]) -> str:
    """``<family>/<scheduler>``: each family's grid is a sweep of its own."""
    variant = config["variant"]
    return f"{variant['family']}/{variant['scheduler']}"


def schedulers(families: list[str]) -> dict[str, Any]:
    """Fresh schedulers for each family's grid."""
    from ray.tune.schedulers import FIFOScheduler

    import ikkuna_tune as ik

    def fresh(name: str) -> Any:
        return {
            "fifo": FIFOScheduler,
            "svcca": ik.SVCCAScheduler,
            "svcca_hold": lambda: ik.SVCCAScheduler(unfreeze_lr_factor=None),
            "freeze": lambda: ik.SVCCAScheduler(stop=False, freeze_best=True),
            "freeze_hold": lambda: ik.SVCCAScheduler(
                stop=False, freeze_best=True, unfreeze_lr_factor=None
            ),
        }[name]()

    return {f"{f}/{g}": fresh(g) for f in families for g in GROUPS}


def trial_summary(df: Any) -> dict[str, Any]:
    """Last accuracy, compute, reports, and whether (and how often) layers froze and thawed."""
    df = df.sort_values("training_iteration")
    fractions = df["frozen_fraction"].fillna(0.0) if "frozen_fraction" in df else None
    reasons = [c for c in df.columns if c.startswith("unfreeze_reason/")]
    unfreezes = 0
    for column in reasons:  # a layer's reason appears at its unfreeze and stays while it trains
        # (a column of nothing but "" reads as NaN)
        text = df[column].astype(object).where(df[column].notna(), "").astype(str)
        unfreezes += int(((text != "") & (text != text.shift(fill_value=""))).sum())
    return {
        "accuracy": float(df["test_accuracy"].iloc[-1]),
        "seconds": float(df["train_seconds"].max()),
        "reports": len(df),
        "frozen": fractions is not None and bool((fractions > 0).any()),
        "unfreezes": unfreezes,
    }


def _name(key: tuple[Any, ...]) -> str:
    """``lr/drop/seed``."""
    return "/".join(str(part) for part in key)


def grid_summary(trials: dict[str, dict[tuple[Any, ...], dict[str, Any]]]) -> dict[str, Any]:
    """The figures of one family's grid; ``trials[group][(lr, drop, seed)]`` as
    trial_summary."""
    fifo = {k: t["accuracy"] for k, t in trials["fifo"].items()}
    best_ref = max(fifo, key=fifo.__getitem__)
    top3 = sorted(fifo, key=fifo.__getitem__, reverse=True)[:3]
    seconds_ref = sum(t["seconds"] for t in trials["fifo"].values())
    reports_ref = sum(t["reports"] for t in trials["fifo"].values())
    out: dict[str, Any] = {
        "fifo_accuracy": {_name(k): round(a, 4) for k, a in sorted(fifo.items())},
        "fifo_best": _name(best_ref),
    }
    for group in GROUPS[1:]:
        ours = {k: t["accuracy"] for k, t in trials[group].items()}
        if set(ours) != set(fifo):
            out[group] = {"missing": sorted(_name(k) for k in set(fifo) - set(ours))}
            continue
        best = max(ours, key=ours.__getitem__)
        out[group] = {
            "best_same": best == best_ref,
            "best_acc_delta": round(ours[best] - fifo[best_ref], 4),
            "top3_worst_delta": round(min(ours[k] - fifo[k] for k in top3), 4),
            "worst_delta": round(min(ours[k] - fifo[k] for k in fifo), 4),
            "compute_ratio": round(
                sum(t["seconds"] for t in trials[group].values()) / seconds_ref, 3
            ),
            "reports_ratio": round(
                sum(t["reports"] for t in trials[group].values()) / reports_ref, 3
            ),
            "frozen_trials": sum(t["frozen"] for t in trials[group].values()),
            "unfreezes": sum(t["unfreezes"] for t in trials[group].values()),
        }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the MLP only, two seeds")
    parser.add_argument("--families", nargs="+", choices=["cnn", "mlp", "resnet"], default=None)
    parser.add_argument("--seeds", type=int, default=None, help="seeds per drop epoch (3)")
    parser.add_argument("--lrs", type=float, nargs="+", default=list(LRS))
    parser.add_argument("--storage", default=None, help="where Tune writes (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import tune

    import ikkuna_tune as ik
    from experiments.fidelity_trial import subscribers, train_trial
    from experiments.local_ray import init_local_ray
    from experiments.routing import RoutingScheduler

    families = args.families or (["mlp"] if args.quick else ["mlp", "cnn"])
    seeds = args.seeds or (2 if args.quick else 3)
    if not ray.is_initialized():
        init_local_ray()
    storage = args.storage or tempfile.mkdtemp(prefix="bench_lr_schedule_")
    variants = [
        # (SVCCAScheduler's groups, which may pause a trial to wait, get checkpoints)
        {
            "scheduler": g,
            "family": f,
            "lr": lr,
            "lr_drop_epoch": d,
            "seed": s,
            "checkpoint": g.startswith("svcca"),
        }
        for f in families
        for lr in args.lrs
        for d in DROPS
        for s in range(seeds)
        for g in GROUPS
    ]
    started = time.perf_counter()
    analysis = tune.run(
        ik.instrument(train_trial, subscribers),
        name="bench_lr_schedule",
        config={
            "variant": tune.grid_search(variants),
            "epochs": EPOCHS,
            "data": "digits",
            "family": "mlp",  # replaced by the variant's
            "lr": 0.0,
        },
        scheduler=RoutingScheduler(schedulers(families), group=group_of),
        stop={"training_iteration": EPOCHS},
        metric="test_accuracy",
        mode="max",
        storage_path=storage,
        verbose=0,
        resources_per_trial={"cpu": 1},
        reuse_actors=True,
    )
    wall = time.perf_counter() - started
    grids: dict[str, dict[str, dict[tuple[Any, ...], dict[str, Any]]]] = {}
    for trial in analysis.trials:
        df = analysis.trial_dataframes.get(trial.trial_id)
        if df is None or df.empty:
            continue
        v = trial.config["variant"]
        grid = grids.setdefault(v["family"], {g: {} for g in GROUPS})
        grid[v["scheduler"]][(v["lr"], v["lr_drop_epoch"], v["seed"])] = trial_summary(df)
    out: dict[str, Any] = {
        "epochs": EPOCHS,
        "lrs": args.lrs,
        "drops": list(DROPS),
        "seeds": seeds,
        "wall_seconds": round(wall, 1),
    }
    for family, trials in sorted(grids.items()):
        out[family] = grid_summary(trials)
    if not args.storage:  # a temporary directory of ours (checkpoints: a GB or more)
        shutil.rmtree(storage, ignore_errors=True)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
