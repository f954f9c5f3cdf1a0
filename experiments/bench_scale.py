"""What the driver-side work costs as sweeps grow: the scheduler per result, and the comparison.

Three measures on synthetic data (no Ray, no training), each the median of several calls:

- ``scheduler``: one ``SVCCAScheduler.on_trial_result`` in a sweep of ``trials`` trials that
  have each made ``reports`` reports of ``layers`` layers (histories filled directly; constant
  learning rates, ``lr_scale`` 1.0, as an optimizer without a schedule reports it);
- ``freeze_candidates``: the freezing rules on one plateaued trial of ``layers`` settled layers
  and ``reports`` reports (every layer a candidate);
- ``compare``: ``compare.load`` and ``compare.summary`` of an experiment directory written as
  Tune writes it (``result.json``, ``params.json``, ``ikkuna_decisions.jsonl``) with
  ``trials`` x ``layers`` x ``iterations`` and five per-layer metrics.

Run: ``python -m experiments.bench_scale`` (about two minutes on 2 CPUs; ``--quick`` for
smaller sizes). The last line printed is one JSON object: milliseconds per scheduler result and
per ``freeze_candidates`` call by size, and the comparison's seconds and rows by size.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("bench_scale")

PER_LAYER = ("self_similarity", "init_similarity", "live_fraction", "weights_norm2", "frozen")


class _Trial:
    """What the scheduler reads of a Tune trial."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id
        self.experiment_dir_name = "bench_scale"
        self.status = "RUNNING"
        self.config: dict[str, Any] = {}
        self.last_result: dict[str, Any] = {}


class _Mailbox:
    """Takes the scheduler's posts without Ray."""

    def __init__(self) -> None:
        from ikkuna_tune.tune.mailbox import mailbox_name

        self.name = mailbox_name("bench_scale")  # the trials' experiment

    def steer(self, trial_id: str) -> None: ...
    def acknowledge(self, trial_id: str, report: str) -> None: ...
    def discard(self, trial_id: str) -> None: ...
    def post(self, trial_id: str, directive: dict[str, Any]) -> bool:
        return True


def _flat_result(layers: list[str], iteration: int, accuracy: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "training_iteration": iteration,
        "acc": accuracy,
        "acc_chance": 0.1,
        "lr_scale": 1.0,
    }
    for name in layers:
        out[f"self_similarity/{name}"] = 0.95
        out[f"init_similarity/{name}"] = 0.7
        out[f"live_fraction/{name}"] = 1.0
        out[f"frozen/{name}"] = 0
    return out


def scheduler_result_ms(trials: int, layers: int, reports: int, calls: int = 15) -> float:
    """The median time of one result in a sweep whose trials made ``reports`` reports each."""
    from ikkuna_tune.tune.scheduler import SVCCAScheduler

    rng = random.Random(0)
    scheduler = SVCCAScheduler(metric="acc", mode="max", max_t=2 * reports + calls)
    scheduler._mailbox = _Mailbox()  # type: ignore[assignment]
    names = [f"layer{i}" for i in range(layers)]
    runs = [_Trial(f"t{i}") for i in range(trials)]
    levels = [rng.uniform(0.5, 0.9) for _ in runs]
    for trial, level in zip(runs, levels):
        scheduler.on_trial_add(None, trial)
        view = scheduler._views[trial.trial_id]
        view.history.layers = list(names)
        for it in range(1, reports + 1):
            accuracy = level * (1 - math.exp(-it / 20)) + 0.01 * rng.random()
            signals = [dict.fromkeys(names, v) for v in (0.95, 0.7, 1.0)]
            view.history.add(accuracy, *signals, 1.0)
            view.iterations.append(it)
        view.last_iteration = reports
        view.measured = True
    seconds = []
    for k in range(calls):
        trial = runs[k % trials]
        view = scheduler._views[trial.trial_id]
        result = _flat_result(names, view.last_iteration + 1, levels[k % trials])
        view.stopped = None
        started = time.perf_counter()
        scheduler.on_trial_result(None, trial, result)
        seconds.append(time.perf_counter() - started)
    return round(1e3 * statistics.median(seconds), 3)


def freeze_candidates_ms(layers: int, reports: int, calls: int = 5) -> float:
    """The median time of the freezing rules on a plateaued trial of settled layers."""
    from ikkuna_tune.tune.convergence import ConvergenceRules, TrialHistory, freeze_candidates

    history = TrialHistory(layers=[f"layer{i}" for i in range(layers)])
    for _ in range(reports):
        history.add(0.8, *[dict.fromkeys(history.layers, v) for v in (0.995, 0.7, 1.0)], 0.1)
    rules = ConvergenceRules()
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        chosen = freeze_candidates(history, rules)
        seconds.append(time.perf_counter() - started)
    assert len(chosen) == layers - 1  # every layer but the last trainable one
    return round(1e3 * statistics.median(seconds), 3)


def write_experiment(root: Path, trials: int, layers: int, iterations: int) -> Path:
    """An experiment directory as Tune and ikkuna_tune write it; returns its path."""
    experiment = root / "bench_scale"
    rng = random.Random(0)
    names = [f"block{i}.conv" for i in range(layers)]
    for t in range(trials):
        trial_id = f"scale_{t:05d}"
        lr = 10 ** rng.uniform(-4, 0)
        folder = experiment / f"train_{trial_id}_{t}_lr={lr:.4g}"
        folder.mkdir(parents=True)
        config = {"lr": lr}
        (folder / "params.json").write_text(json.dumps(config))
        lines = []
        for it in range(1, iterations + 1):
            result = {
                "test_accuracy": 0.9 * (1 - math.exp(-it / 10)) + 0.01 * rng.random(),
                "test_accuracy_chance": 0.1,
                **{kind: {n: rng.random() for n in names} for kind in PER_LAYER[:-1]},
                "frozen": dict.fromkeys(names, 0),
                "freeze_reason": dict.fromkeys(names, ""),
                "frozen_fraction": 0.0,
                "training_iteration": it,
                "trial_id": trial_id,
                "config": config,
                "done": False,
                "timestamp": 1_700_000_000 + it,
            }
            lines.append(json.dumps(result))
        (folder / "result.json").write_text("\n".join(lines) + "\n")
        (folder / "ikkuna_decisions.jsonl").write_text("")
    return experiment


def compare_seconds(trials: int, layers: int, iterations: int) -> dict[str, float]:
    """Seconds of ``compare.load`` and ``compare.summary`` on a written experiment."""
    from ikkuna_tune import compare

    with tempfile.TemporaryDirectory() as root:
        experiment = write_experiment(Path(root), trials, layers, iterations)
        started = time.perf_counter()
        df = compare.load(experiment)
        loaded = time.perf_counter()
        compare.summary(df, metric="test_accuracy")
        done = time.perf_counter()
    expected = trials * iterations * (2 + 1 + layers * len(PER_LAYER))
    assert len(df) == expected, (len(df), expected)  # accuracy, chance, fraction, per layer
    return {"load_s": round(loaded - started, 3), "summary_s": round(done - loaded, 3),
            "rows": len(df)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes only (seconds)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    library = logging.getLogger("ikkuna_tune")
    level = library.level
    library.setLevel(logging.ERROR)  # the scheduler's notices (restored when done)
    try:
        return _measure(args.quick)
    finally:
        library.setLevel(level)


def _measure(quick: bool) -> dict[str, Any]:
    if quick:
        sched, freeze, sweeps = [(4, 3, 20)], [(20, 20)], [(3, 4, 5)]
    else:
        sched = [(8, 3, 100), (32, 3, 1000), (128, 3, 1000), (32, 200, 100)]
        freeze = [(200, 100), (500, 1000)]
        sweeps = [(25, 50, 100), (50, 50, 100)]
    out: dict[str, Any] = {"scheduler_ms": {}, "freeze_candidates_ms": {}, "compare": {}}
    for trials, layers, reports in sched:
        key = f"{trials}x{layers}x{reports}"
        out["scheduler_ms"][key] = scheduler_result_ms(trials, layers, reports)
        log.info("scheduler, trials x layers x reports %s: %s ms a result", key,
                 out["scheduler_ms"][key])  # fmt: skip
    for layers, reports in freeze:
        key = f"{layers}x{reports}"
        out["freeze_candidates_ms"][key] = freeze_candidates_ms(layers, reports)
        log.info("freeze_candidates, layers x reports %s: %s ms", key,
                 out["freeze_candidates_ms"][key])  # fmt: skip
    for trials, layers, iterations in sweeps:
        key = f"{trials}x{layers}x{iterations}"
        out["compare"][key] = compare_seconds(trials, layers, iterations)
        log.info("compare, trials x layers x iterations %s: %s", key, out["compare"][key])
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
