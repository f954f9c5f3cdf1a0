"""What a report costs, and where: ikkuna_tune's own work, Tune's ``report``, the mailbox.

Runs ``--trials`` instrumented trials of a tiny model at once (one Tune experiment, each trial
with 1/``--trials`` of a CPU, so all run together, and SVCCAScheduler with freezing only), each
reporting ``--reports`` times. Inside every trial each ``ik.report`` is timed, and within it
``ray.tune.report`` (Tune's work: sending the result to the driver, which runs the scheduler)
and the mailbox poll (``TrialInbox.take``: one call to the experiment's mailbox actor); what is
left is ikkuna_tune's own work (collecting the subscribers' values, one host transfer, freezing).
The first ``--warmup`` reports of every trial are left out.

Run: ``python -m experiments.bench_report`` (8 trials x 40 reports). The last line printed is
one JSON object with the medians and 90th percentiles in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from typing import Any

import numpy as np

log = logging.getLogger("bench_report")

PARTS = ("total", "tune", "mailbox", "own")


def trial(config: dict[str, Any]) -> None:
    """A tiny model trained one step per report; every ``ik.report`` timed in its parts."""
    import ray.tune
    import torch
    import torch.nn.functional as F
    from torch import nn

    import ikkuna_tune as ik
    from ikkuna_tune.tune.mailbox import TrialInbox

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    exporter = ik.watch(model, opt)
    loss_fn = exporter.wrap_loss(F.cross_entropy)
    x, y = torch.randn(16, 8), torch.randint(0, 2, (16,))
    spent = {"tune": 0.0, "mailbox": 0.0}
    tune_report, take = ray.tune.report, TrialInbox.take

    def timed_report(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return tune_report(*args, **kwargs)
        finally:
            spent["tune"] += time.perf_counter() - started

    def timed_take(inbox: TrialInbox) -> Any:
        started = time.perf_counter()
        try:
            return take(inbox)
        finally:
            spent["mailbox"] += time.perf_counter() - started

    ray.tune.report, TrialInbox.take = timed_report, timed_take  # type: ignore[method-assign]
    timings: dict[str, list[float]] = {part: [] for part in PARTS}
    last = {"total": float("nan"), "tune": float("nan"), "mailbox": float("nan")}
    try:
        for step in range(int(config["reports"])):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
            exporter.epoch_finished()
            spent.update(tune=0.0, mailbox=0.0)
            started = time.perf_counter()
            # the previous report's timings travel with this one (a report cannot carry its own)
            ik.report({"step": step, **{f"last_{k}_s": v for k, v in last.items()}})
            last = {"total": time.perf_counter() - started, **spent}
            if step >= int(config["warmup"]):
                for part in ("total", "tune", "mailbox"):
                    timings[part].append(last[part])
                timings["own"].append(last["total"] - last["tune"] - last["mailbox"])
    finally:
        ray.tune.report, TrialInbox.take = tune_report, take  # type: ignore[method-assign]
    path = os.path.join(config["out"], f"{config['trial']}.json")
    with open(path, "w") as out:
        json.dump(timings, out)


def summary(timings: list[dict[str, list[float]]]) -> dict[str, Any]:
    """Medians and 90th percentiles in ms of each part over every timed report of every trial.

    >>> summary([{"total": [0.004, 0.006], "tune": [0.003, 0.004], "mailbox": [0.001, 0.001],
    ...           "own": [0.0, 0.001]}])["median_ms"]
    {'total': 5.0, 'tune': 3.5, 'mailbox': 1.0, 'own': 0.5}
    """
    out: dict[str, Any] = {"median_ms": {}, "p90_ms": {}}
    for part in PARTS:
        values = 1e3 * np.array([v for t in timings for v in t[part]])
        out["median_ms"][part] = round(float(np.median(values)), 2)
        out["p90_ms"][part] = round(float(np.percentile(values, 90)), 2)
    out["reports"] = sum(len(t["total"]) for t in timings)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=8, help="trials running at once")
    parser.add_argument("--reports", type=int, default=40, help="reports per trial")
    parser.add_argument("--warmup", type=int, default=5, help="first reports left out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import tune

    import ikkuna_tune as ik
    from experiments.local_ray import init_local_ray

    if not ray.is_initialized():
        init_local_ray()
    out_dir = tempfile.mkdtemp(prefix="bench_report_")
    started = time.perf_counter()
    tune.run(
        ik.instrument(trial, [ik.NormSubscriber("weight_gradients", backend=None)]),
        name="bench_report",
        config={
            "trial": tune.grid_search(list(range(args.trials))),
            "reports": args.reports,
            "warmup": args.warmup,
            "out": out_dir,
        },
        scheduler=ik.SVCCAScheduler(metric="step", mode="max", stop=False),
        storage_path=tempfile.mkdtemp(prefix="bench_report_storage_"),
        resources_per_trial={"cpu": 1 / args.trials},
        verbose=0,
    )
    timings = []
    for name in sorted(os.listdir(out_dir)):
        with open(os.path.join(out_dir, name)) as f:
            timings.append(json.load(f))
    out = {"trials": args.trials, "reports_per_trial": args.reports, **summary(timings)}
    out["wall_seconds"] = round(time.perf_counter() - started, 1)
    out["trials_timed"] = len(timings)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
