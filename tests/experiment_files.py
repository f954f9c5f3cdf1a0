"""Hand-written Tune experiment directories (the files Tune writes), for tests without Ray.

``handmade(root)`` writes experiment ``root/sweep`` with three trials of a network whose layers
are, in order, ``stem``, ``block.0``, ``head`` (not alphabetical, and ``sim`` reports them in
another order; only ``frozen`` follows the model):

- ``aaaaa_00000``, lr=0.01: 4 reports, ``stem`` frozen from iteration 3 (the scheduler decided
  it at report 2: :data:`FREEZE_STEM` in ``ikkuna_decisions.jsonl``, and the trial reports the
  reason under ``freeze_reason/stem`` from iteration 3); ends by itself.
- ``aaaaa_00001``, lr=0.1: 2 reports, the last with ``done`` (Tune stopped it: the scheduler's
  :data:`STOP_STUCK` in ``ikkuna_decisions.jsonl``).
- ``aaaaa_00002``, lr=1.0: 3 reports, ends by itself (shorter, not stopped early); its
  result.json ends in a half-written line and repeats iteration 2 (after a restore).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LAYERS = ["stem", "block.0", "head"]
#: The file SVCCAScheduler writes its decisions to in each trial directory.
DECISIONS_FILE = "ikkuna_decisions.jsonl"
#: Decision.as_dict() of the scheduler's freeze of ``stem`` in trial aaaaa_00000.
FREEZE_STEM: dict[str, Any] = {
    "action": "freeze",
    "rule": "converged",
    "iteration": 2,
    "layer": "stem",
    "values": {
        "similarity": 0.995,
        "distance_from_init": 0.12,
        "live_fraction": 1.0,
        "metric_gain": 0.0,
    },
}
#: Decision.describe() of FREEZE_STEM, as the trial reports it under ``freeze_reason/stem``.
FREEZE_STEM_REASON = (
    "freeze stem at report 2: converged "
    "(similarity=0.995, distance_from_init=0.12, live_fraction=1, metric_gain=0)"
)
#: Decision.as_dict() of the scheduler's stop of trial aaaaa_00001.
STOP_STUCK: dict[str, Any] = {
    "action": "stop",
    "rule": "stuck: no progress and no layer moving",
    "iteration": 2,
    "layer": None,
    "values": {"progress": 0.004},
}
STEP = 0.2  # seconds per step before freezing
FROZEN_STEP = 0.1  # seconds per step after freezing stem


def write_trial(
    experiment_dir: Path,
    name: str,
    params: dict[str, Any],
    results: list[dict[str, Any]],
    error: bool = False,
    tail: str = "",
) -> Path:
    """One trial directory: params.json, result.json (JSON lines), optionally error.txt."""
    trial = experiment_dir / name
    trial.mkdir(parents=True)
    (trial / "params.json").write_text(json.dumps(params, sort_keys=True, indent=2))
    lines = [json.dumps(r) for r in results]
    (trial / "result.json").write_text("".join(line + "\n" for line in lines) + tail)
    if error:
        (trial / "error.txt").write_text("Failure # 1\nRuntimeError: boom\n")
    return trial


def write_decisions(trial_dir: Path, trial_id: str, decisions: list[dict[str, Any]]) -> Path:
    """``ikkuna_decisions.jsonl`` as SVCCAScheduler writes it: one JSON object a line."""
    path = trial_dir / DECISIONS_FILE
    lines = [json.dumps({"trial_id": trial_id, **decision}) + "\n" for decision in decisions]
    path.write_text("".join(lines))
    return path


def report(
    trial_id: str,
    config: dict[str, Any],
    iteration: int,
    frozen: tuple[str, ...] = (),
    done: bool = False,
    reasons: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A result as ikkuna_tune.report + Tune write it (nested per layer)."""
    sim = {"head": 0.5 + 0.1 * iteration, "stem": 0.9, "block.0": 0.8 * config["lr"]}
    result: dict[str, Any] = {
        "loss": 2.0 / iteration + config["lr"],
        "phase": "train",  # a string: not a metric
        "sim": sim,
        "frozen": {name: int(name in frozen) for name in LAYERS},
        "frozen_fraction": 0.25 * len(frozen),
        "step_seconds": FROZEN_STEP if frozen else STEP,
        "step_seconds_unfrozen": STEP,
        "timestamp": 1_700_000_000 + iteration,
        "done": done,
        "training_iteration": iteration,
        "trial_id": trial_id,
        "pid": 1234,
        "config": config,
        "time_this_iter_s": 0.5,
    }
    if reasons:
        result["freeze_reason"] = dict(reasons)
    return result


def handmade(root: Path) -> Path:
    """Write the experiment described in the module docstring; returns its directory."""
    experiment = root / "sweep"
    config0 = {"lr": 0.01, "model": {"width": 8}}
    frozen = ("stem",)
    reasons = {"stem": FREEZE_STEM_REASON}
    trial0 = write_trial(
        experiment,
        "train_aaaaa_00000_0_lr=0.01",
        config0,
        [report("aaaaa_00000", config0, i) for i in (1, 2)]
        + [report("aaaaa_00000", config0, i, frozen, reasons=reasons) for i in (3, 4)],
    )
    write_decisions(trial0, "aaaaa_00000", [FREEZE_STEM])
    config1 = {"lr": 0.1, "model": {"width": 16}}
    trial1 = write_trial(
        experiment,
        "train_aaaaa_00001_1_lr=0.1",
        config1,
        [report("aaaaa_00001", config1, 1), report("aaaaa_00001", config1, 2, done=True)],
    )
    write_decisions(trial1, "aaaaa_00001", [STOP_STUCK])
    config2 = {"lr": 1.0, "model": {"width": 8}}
    restored = report("aaaaa_00002", config2, 2)
    restored["loss"] = 0.25
    write_trial(
        experiment,
        "train_aaaaa_00002_2_lr=1.0",
        config2,
        [
            report("aaaaa_00002", config2, 1),
            report("aaaaa_00002", config2, 2),
            restored,
            report("aaaaa_00002", config2, 3),
        ],
        tail='{"loss": 0.1, "training_iter',
    )
    return experiment
