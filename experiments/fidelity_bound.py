"""How little compute can a scheduler that keeps FIFO's top 3 use? A bound per fidelity grid.

``bench_fidelity`` asks SVCCAScheduler for two things at once in every (data set, family) grid:
keep FIFO's best configuration and each of its three best trials (within 1 point), and use at
most 0.6 of FIFO's compute. This study says where both can hold for a scheduler that decides
from what the trials have reported so far.

It trains every trial of each grid once without a scheduler (:mod:`experiments.fidelity_trial`,
the same seeds as the benchmark's FIFO trials, outside Tune) and reads each trial's test
accuracy and cumulative training time after every report. A trial outside FIFO's top 3 can be
stopped after report ``t``, with the top 3 left running, only if some rule tells it apart from
each of them by then. Two kinds of rule are granted:

- **divergence**: a non-finite loss or a dead layer (``live_fraction`` 0) stops the trial at the
  first report that shows it;
- **ranking**: the trial is *behind* at report ``t`` when its best accuracy so far is below the
  best so far of every top-3 trial. A rule that stops a trial for being behind others (ASHA,
  median stopping, SVCCAScheduler's "cannot reach the top 3") cannot stop it earlier without
  also stopping a top-3 trial that is no further ahead at that report.

Each trial outside the top 3 is charged its training time up to the earliest such report (its
whole time if there is none); the top 3 are charged in full. The ratio of that to FIFO's total
is a lower bound on the compute of any scheduler of these kinds that keeps the top 3, however
its thresholds are set. Where the bound exceeds 0.6 the two targets cannot both be met.

**Replay.** The same reports are also fed, report by report and every trial in step (as in a
sweep that runs all its trials at once), to SVCCAScheduler's stopping rules
(:func:`ikkuna_tune.tune.convergence.stop_verdict`, default thresholds, the budget known), the
way the scheduler feeds them, with its rules for non-finite values
(:func:`ikkuna_tune.tune.convergence.divergence`: a non-finite weight norm or every layer
signal of a report NaN stops the trial; a non-finite loss or one layer's similarity only
where the metric at that report has not learned or fell back; a loss infinite before it was
ever finite stops nothing): what it would stop, when, and the compute that leaves. Freezing is
not replayed (a frozen trial's later reports would differ). It is replayed once more without
the rules that wait for ``stall_share`` of the budget (stuck at chance, and stuck while others
learned), to show their share. In
``bench_fidelity`` itself the trials of a grid run two at a time, smallest learning rate
first, so the rules that compare trials have less to compare with than here.

Run: ``python -m experiments.fidelity_bound`` (every grid, about 2 minutes on 2 CPUs) or
``--quick`` (digits). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("fidelity_bound")

LRS = (0.001, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
TOP = 3
TARGET = 0.6


def first_behind(own: Sequence[float], top: Sequence[Sequence[float]]) -> int | None:
    """The first report (1-based) after which ``own``'s best so far is below every ``top``
    trial's best so far, or None.

    Examples:
        >>> first_behind([0.2, 0.3, 0.4], [[0.1, 0.5, 0.6], [0.3, 0.4, 0.5]])
        2
        >>> first_behind([0.2, 0.9], [[0.1, 0.5]]) is None
        True
    """
    best_own, best_top = -math.inf, [-math.inf] * len(top)
    for t, value in enumerate(own):
        best_own = max(best_own, value)
        best_top = [max(b, curve[t]) for b, curve in zip(best_top, top)]
        if all(best_own < b for b in best_top):
            return t + 1
    return None


def grid_bound(trials: dict[float, dict[str, Any]], top: int = TOP) -> dict[str, Any]:
    """The bound for one grid. ``trials[lr]`` holds ``accuracy`` (per report), ``seconds``
    (cumulative training time per report) and ``diverged_at`` (the first report that shows a
    non-finite loss or a dead layer, or None).

    Examples:
        >>> curve = lambda *a: {"accuracy": list(a), "seconds": [1.0, 2.0, 3.0, 4.0],
        ...                     "diverged_at": None}
        >>> trials = {1: curve(.5, .6, .7, .8), 2: curve(.4, .5, .6, .7),
        ...           3: curve(.3, .4, .5, .6), 4: curve(.1, .1, .1, .1)}
        >>> bound = grid_bound(trials)
        >>> bound["stop_after"], bound["compute_bound"]  # trial 4 is behind after report 1
        ({'4': 1}, 0.8125)
    """
    best = {lr: max(t["accuracy"]) for lr, t in trials.items()}
    top_lrs = sorted(best, key=best.__getitem__, reverse=True)[:top]
    total = sum(t["seconds"][-1] for t in trials.values())
    spent = sum(trials[lr]["seconds"][-1] for lr in top_lrs)
    stop_after: dict[str, int | None] = {}
    for lr, trial in trials.items():
        if lr in top_lrs:
            continue
        behind = first_behind(trial["accuracy"], [trials[k]["accuracy"] for k in top_lrs])
        reasons = [r for r in (behind, trial["diverged_at"]) if r is not None]
        t = min(reasons) if reasons else None
        stop_after[str(lr)] = t
        spent += trial["seconds"][(t or len(trial["seconds"])) - 1]
    bound = spent / total
    return {
        "top3": [str(lr) for lr in top_lrs],
        "stop_after": stop_after,
        "compute_bound": round(bound, 4),
        "target_reachable": bound <= TARGET,
    }


def replay_stops(
    trials: dict[float, dict[str, Any]],
    rules: Any = None,
    metric: str = "test_accuracy",
    top: int = TOP,
) -> dict[str, Any]:
    """Feed every trial's reports, in step, to the scheduler's stopping rules (as
    SVCCAScheduler does for a ``max`` metric); ``trials[lr]["reports"]`` holds the reports (as
    Tune flattens them) and ``["seconds"]`` the cumulative training time per report.

    Returns what was stopped (report and rule), the compute left as a share of all of it, and
    whether FIFO's top ``top`` (by best metric) all ran to the end.
    """
    from ikkuna_tune import keys
    from ikkuna_tune.tune.convergence import (
        ConvergenceRules,
        TrialHistory,
        divergence,
        stop_verdict,
    )
    from ikkuna_tune.tune.results import (
        first_nonfinite,
        layer_values,
        network_nonfinite,
        reported_layers,
    )

    rules = rules or ConvergenceRules()
    budget = max(len(t["reports"]) for t in trials.values())
    histories = {lr: TrialHistory() for lr in trials}
    finite_losses: dict[float, set[str]] = {lr: set() for lr in trials}
    stopped: dict[float, tuple[int, str]] = {}
    for t in range(budget):
        for lr, trial in trials.items():
            if lr in stopped or t >= len(trial["reports"]):
                continue
            result = trial["reports"][t]
            history = histories[lr]
            history.layers = reported_layers(result)
            similarity = layer_values(result, keys.SELF_SIMILARITY, history.layers)
            value = result.get(metric)
            history.add(
                float(value) if isinstance(value, (int, float)) else math.nan,
                similarity,
                layer_values(result, keys.INIT_SIMILARITY, history.layers),
                layer_values(result, keys.LIVE_FRACTION, history.layers),
            )
            chance = result.get(keys.chance_of(metric))
            if isinstance(chance, (int, float)) and math.isfinite(chance):
                history.chance = float(chance)
            others = [h.metric for k, h in histories.items() if k != lr]
            signals = {
                keys.SELF_SIMILARITY: similarity,
                keys.INIT_SIMILARITY: layer_values(result, keys.INIT_SIMILARITY, history.layers),
                keys.LIVE_FRACTION: layer_values(result, keys.LIVE_FRACTION, history.layers),
            }
            nonfinite = divergence(
                first_nonfinite(
                    result, metric, similarity, keys.SELF_SIMILARITY, finite_losses[lr]
                ),
                history,
                rules,
                keys.SELF_SIMILARITY,
                metric,
                network_nonfinite(result, history.layers, signals),
            )
            verdict = stop_verdict(history, rules, others, budget, nonfinite)
            if verdict is not None:
                stopped[lr] = (t + 1, verdict.rule)
    best = {lr: max(t["accuracy"]) for lr, t in trials.items()}
    top_lrs = sorted(best, key=best.__getitem__, reverse=True)[:top]
    total = sum(t["seconds"][-1] for t in trials.values())
    spent = sum(
        t["seconds"][stopped[lr][0] - 1] if lr in stopped else t["seconds"][-1]
        for lr, t in trials.items()
    )
    return {
        "stopped": {str(lr): list(v) for lr, v in stopped.items()},
        "compute": round(spent / total, 4),
        "top3_kept": not any(lr in stopped for lr in top_lrs),
    }


def run_grid(data: str, family: str, epochs: int, lrs: Sequence[float]) -> dict[float, Any]:
    """Train each learning rate's trial of one grid, without a scheduler; its per-report
    accuracy, cumulative training time and first sign of divergence."""
    from ray.tune.utils import flatten_dict

    import ikkuna_tune as ik
    from experiments.fidelity_trial import subscribers, train_trial

    trials: dict[float, Any] = {}
    for lr in lrs:
        ik.instrument(train_trial, subscribers)(
            {"data": data, "family": family, "lr": lr, "epochs": epochs}
        )
        reports = ik.local_results()
        diverged_at = None
        for t, report in enumerate(reports, start=1):
            loss = report.get("train_loss")
            live = report.get("live_fraction") or {}
            dead = any(v is not None and v <= 0 for v in live.values())
            if dead or loss is None or not math.isfinite(float(loss)):
                diverged_at = t
                break
        trials[lr] = {
            "accuracy": [float(r["test_accuracy"]) for r in reports],
            "seconds": [float(r["train_seconds"]) for r in reports],
            "diverged_at": diverged_at,
            # as Tune passes them to a scheduler: nested values as <key>/<layer>
            "reports": [flatten_dict(r, delimiter="/") for r in reports],
        }
        log.info(
            "%s %s lr %s: accuracy %s, %.1f s%s",
            data,
            family,
            lr,
            " ".join(f"{a:.3f}" for a in trials[lr]["accuracy"]),
            trials[lr]["seconds"][-1],
            f", diverged at report {diverged_at}" if diverged_at else "",
        )
    return trials


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="digits only")
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    library = logging.getLogger("ikkuna_tune")
    level = library.level
    library.setLevel(logging.ERROR)  # (restored when done: a caller's logging stays its own)
    try:
        return _run(args)
    finally:
        library.setLevel(level)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ikkuna_tune.tune.convergence import ConvergenceRules

    torch.set_num_threads(1)
    data_sets = ["digits"] if args.quick else ["digits", "mnist"]
    out: dict[str, Any] = {"epochs": args.epochs, "lrs": list(LRS), "target": TARGET}
    for data in data_sets:
        out[data] = {}
        for family in ("cnn", "mlp", "resnet"):
            trials = run_grid(data, family, args.epochs, LRS)
            bound = grid_bound(trials)
            bound["replay"] = replay_stops(trials)
            bound["replay_without_stall_share"] = replay_stops(
                trials, ConvergenceRules(stall_share=1.0)
            )
            out[data][family] = bound
            log.info(
                "%s %s: top 3 %s; others stoppable after %s; compute bound %.3f (%s)",
                data,
                family,
                bound["top3"],
                bound["stop_after"],
                bound["compute_bound"],
                "0.6 reachable" if bound["target_reachable"] else "0.6 out of reach",
            )
            for name in ("replay", "replay_without_stall_share"):
                log.info(
                    "%s %s %s of SVCCAScheduler's stopping rules: compute %.3f, top 3 %s; "
                    "stopped %s",
                    data,
                    family,
                    name,
                    bound[name]["compute"],
                    "kept" if bound[name]["top3_kept"] else "NOT kept",
                    bound[name]["stopped"],
                )
    cells = [cell for data in data_sets for cell in out[data].values()]
    out["grids_where_reachable"] = f"{sum(c['target_reachable'] for c in cells)}/{len(cells)}"
    out["replay_grids_top3_kept"] = f"{sum(c['replay']['top3_kept'] for c in cells)}/{len(cells)}"
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
