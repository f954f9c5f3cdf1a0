"""Fault injection: one sweep of the demo kind survives the faults a long sweep meets.

A grid of small CNNs on digits, checkpointed at every epoch, steered by SVCCAScheduler (set to
freeze early, so that there are frozen layers to lose), with TensorBoard output. Faults, each
injected once:

* ``mailbox``: a trial kills the scheduler's mailbox actor before a report;
* ``sigkill``: a trial's worker process is killed with SIGKILL mid-epoch;
* ``raise``: a trial raises mid-epoch;
* ``corrupt``: a trial raises, and the ikkuna_tune state file of the checkpoint it restores
  from is truncated;
* ``driver``: the driver is interrupted (SIGINT) mid-sweep and the sweep resumed with
  ``Tuner.restore``.

The driver runs in a child process (``--phase run`` / ``--phase resume``). Then every trial's
stored results are checked. Last line, JSON: ``faults_injected``, ``sweeps_completed``,
``iterations_lost`` (budget iterations missing from a trial's stored results),
``frozen_layers_lost`` (a layer reported frozen and later reported trainable, or a freeze the
scheduler ordered that no later report confirms), ``trials_without_tb`` (trials whose own
ikkuna_tune TensorBoard files in storage hold fewer test accuracies than epochs), and
``targets``.

    python -m experiments.bench_faults [--quick] [--storage DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import ikkuna_tune as ik
from experiments.fidelity_trial import build_model, load
from experiments.local_ray import ROOT, init_local_ray
from ikkuna_tune.backends import EVENT_DIR, EVENT_FILE_SUFFIX

__all__ = ["FAULTS", "check_sweep", "main", "train_with_faults"]

logger = logging.getLogger(__name__)

#: the faults a trial can be given (the driver interrupt is the benchmark's own)
FAULTS = ("mailbox", "sigkill", "raise", "corrupt", "none")
NAME = "bench_faults"


def _once(marker_dir: str, fault: str) -> bool:
    """True the first time ``fault`` is asked for (a marker file remembers it)."""
    marker = Path(marker_dir) / f"{fault}.done"
    if marker.exists():
        return False
    marker.touch()
    return True


def _subscribers(config: dict[str, Any]) -> list[ik.Subscriber]:
    _, test = load("digits")
    return [
        ik.TestAccuracySubscriber(test, batch_size=500, frequency="epoch", backend="tb"),
        ik.SVCCASubscriber(test, n=200, max_positions=2000, backend=None),
    ]


def train_with_faults(config: dict[str, Any]) -> None:
    """A small CNN on digits, a checkpoint at every epoch, and the fault ``config["fault"]``."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train, _ = load("digits")
    model = build_model("cnn", tuple(train.tensors[0].shape[1:]))
    opt = torch.optim.SGD(model.parameters(), lr=float(config["lr"]), momentum=0.9)
    fault, markers, at = config["fault"], config["markers"], int(config["fault_epoch"])
    from ray import tune

    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "model.pt", weights_only=True)
            if fault == "corrupt" and _once(markers, "corrupt_restore"):
                state_file = Path(d) / "ikkuna_tune_state.pt"
                state_file.write_bytes(state_file.read_bytes()[:64])
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = int(state["epoch"]) + 1
    exporter = ik.watch(model, opt)
    loss_fn = exporter.wrap_loss(F.cross_entropy)
    loader = DataLoader(
        train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(start)
    )
    for epoch in range(start, int(config["epochs"])):
        for batch, (x, y) in enumerate(loader):
            if epoch == at and batch == len(loader) // 2:
                if fault == "sigkill" and _once(markers, "sigkill"):
                    os.kill(os.getpid(), signal.SIGKILL)
                if fault in ("raise", "corrupt") and _once(markers, fault):
                    raise RuntimeError(f"injected fault: {fault}")
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
        exporter.epoch_finished()
        if fault == "mailbox" and epoch == at and _once(markers, "mailbox"):
            import ray

            from ikkuna_tune.tune.mailbox import mailbox_name

            experiment = tune.get_context().get_experiment_name()
            ray.kill(ray.get_actor(mailbox_name(experiment)))
        time.sleep(float(config.get("pause", 0.0)))  # leaves the driver time to be interrupted
        with tempfile.TemporaryDirectory() as d:
            torch.save(
                {"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch},
                Path(d) / "model.pt",
            )
            saved = tune.Checkpoint.from_directory(d)
            ik.report({"epoch": epoch, "train_loss": loss.item()}, checkpoint=saved)
        (Path(markers) / f"report_{tune.get_context().get_trial_id()}_{epoch}").touch()


def _trainable() -> Any:
    return ik.instrument(train_with_faults, _subscribers)


def _scheduler() -> Any:
    # early freezing (the rules of converged layers relaxed) so that frozen layers exist to
    # be lost; no stopping, so every trial's whole budget is expected in its results
    return ik.SVCCAScheduler(
        freeze_at=0.9, patience=1, min_travel=0.0, settle_window=1, settle_tol=1e9,
        plateau=1, min_delta=1.0, stop=False, freeze_best=True,
    )  # fmt: skip


def _run(storage: str, epochs: int, markers: str) -> None:
    from ray import tune

    param_space = {
        "fault": tune.grid_search(list(FAULTS)),
        "lr": 0.05,
        "epochs": epochs,
        "fault_epoch": max(1, epochs // 3),
        "markers": markers,
        "pause": 0.3,
    }
    tuner = tune.Tuner(
        _trainable(),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric="test_accuracy", mode="max", scheduler=_scheduler(), reuse_actors=True
        ),
        run_config=tune.RunConfig(
            name=NAME,
            storage_path=storage,
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=3),
        ),
    )
    tuner.fit()


def _resume(storage: str) -> None:
    from ray import tune

    tuner = tune.Tuner.restore(
        str(Path(storage) / NAME), _trainable(), resume_errored=True, resume_unfinished=True
    )
    grid = tuner.fit()
    print(json.dumps({"errors": len(grid.errors), "trials": len(grid)}))


def _reports(markers: Path) -> int:
    """Reports made so far (the trials leave a marker per report; storage lags behind)."""
    return len(list(markers.glob("report_*")))


def _tb_epochs(trial_dir: Path) -> int:
    """``test_accuracy`` values TensorBoard shows for the trial's own (ikkuna_tune) runs: its
    folder, and the run of an attempt restored without ikkuna_tune's state (a subfolder, whose
    steps start again at 0).

    One per epoch when nothing was lost: TensorBoard drops the steps an attempt wrote after
    the checkpoint the next attempt restored from (its restart mark), so an epoch run again
    shows once.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    count = 0
    pattern = f"events.out.tfevents*{EVENT_FILE_SUFFIX}"
    runs = {path.parent for path in (trial_dir / EVENT_DIR).rglob(pattern)}
    for run in sorted(runs):
        events = EventAccumulator(str(run))
        events.Reload()
        if "test_accuracy" in events.Tags().get("scalars", []):
            count += len(events.Scalars("test_accuracy"))
    return count


def check_sweep(experiment: Path, epochs: int) -> dict[str, Any]:
    """Iterations and frozen layers lost, and trials without their own TensorBoard file."""
    iterations_lost = frozen_lost = without_tb = 0
    trials = sorted(p for p in experiment.iterdir() if (p / "params.json").exists())
    per_trial = {}
    for trial_dir in trials:
        rows = []
        for line in (trial_dir / "result.json").read_text(errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        by_iteration = {int(r["training_iteration"]): r for r in rows}
        lost = len(set(range(1, epochs + 1)) - set(by_iteration))
        iterations_lost += lost
        frozen_seen: set[str] = set()
        layers_lost: set[str] = set()
        for it in sorted(by_iteration):
            frozen = {k for k, v in by_iteration[it].get("frozen", {}).items() if v}
            layers_lost |= frozen_seen - frozen
            frozen_seen |= frozen
        decisions = trial_dir / "ikkuna_decisions.jsonl"
        if decisions.exists():
            for line in decisions.read_text().splitlines():
                d = json.loads(line)
                if d["action"] != "freeze":
                    continue
                # ordered after report d, applied before the next: every later report confirms
                later = [by_iteration[i] for i in by_iteration if i > int(d["iteration"])]
                if later and not all(r.get("frozen", {}).get(d["layer"]) for r in later):
                    layers_lost.add(d["layer"])
        frozen_lost += len(layers_lost)
        tb_epochs = _tb_epochs(trial_dir)
        has_tb = tb_epochs >= epochs  # every epoch's accuracy, also from before a restore
        without_tb += not has_tb
        params = json.loads((trial_dir / "params.json").read_text())
        per_trial[params["fault"]] = {
            "iterations": sorted(by_iteration),
            "frozen_at_end": sorted(frozen_seen),
            "layers_lost": sorted(layers_lost),
            "tb_epochs": tb_epochs,
        }
    return {
        "trials": len(trials),
        "iterations_lost": iterations_lost,
        "frozen_layers_lost": frozen_lost,
        "trials_without_tb": without_tb,
        "per_trial": per_trial,
    }


def _driver(phase: str, storage: str, epochs: int, markers: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AIR_NEW_OUTPUT": "0"}
    command = [sys.executable, "-m", "experiments.bench_faults", "--phase", phase]
    command += ["--storage", storage, "--epochs", str(epochs), "--markers", markers]
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def run_benchmark(storage: Path, epochs: int, timeout: float = 900.0) -> dict[str, Any]:
    """Run the sweep with every fault, interrupt and resume its driver, check what is stored."""
    markers = storage / "markers"
    markers.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    first = _driver("run", str(storage), epochs, str(markers))
    budget = len(FAULTS) * epochs
    interrupted = False
    while first.poll() is None and time.perf_counter() - started < timeout:
        if not interrupted and _reports(markers) >= budget * 2 // 5:
            first.send_signal(signal.SIGINT)  # as a user's Ctrl-C
            interrupted = True
            (markers / "driver.done").touch()
        time.sleep(0.2)
    if first.poll() is None:
        first.kill()
    first_err = first.communicate()[1]
    reports_at_interrupt = _reports(markers)
    second = _driver("resume", str(storage), epochs, str(markers))
    out, second_err = second.communicate(timeout=timeout)
    (storage / "driver_run.log").write_text(first_err)
    (storage / "driver_resume.log").write_text(second_err)
    lines = out.strip().splitlines()
    resumed = json.loads(lines[-1]) if lines else {"errors": -1, "trials": 0}
    if not lines:
        logger.error("The resumed driver failed:\n%s", second_err[-3000:])
    checked = check_sweep(storage / NAME, epochs)
    injected = len(list(markers.glob("*.done"))) - (markers / "corrupt_restore.done").exists()
    completed = int(resumed["errors"] == 0 and resumed["trials"] == len(FAULTS))
    result = {
        "epochs": epochs,
        "faults_injected": injected,
        "sweeps_completed": completed,
        "iterations_lost": checked["iterations_lost"],
        "frozen_layers_lost": checked["frozen_layers_lost"],
        "trials_without_tb": checked["trials_without_tb"],
        "reports_before_resume": reports_at_interrupt,
        "reports_in_all": _reports(markers),
        "per_trial": checked["per_trial"],
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    result["targets"] = {
        "every_fault_survived": injected == 5 and completed == 1,
        "no_iteration_lost": checked["iterations_lost"] == 0,
        "no_frozen_layer_lost": checked["frozen_layers_lost"] == 0,
        "every_trial_with_tb": checked["trials_without_tb"] == 0 and checked["trials"] > 0,
    }
    return result


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 epochs instead of 9")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--storage", default=None, help="where Tune writes (default: temp dir)")
    parser.add_argument("--phase", choices=["run", "resume"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--markers", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    epochs = args.epochs or (6 if args.quick else 9)
    if args.phase is not None:
        init_local_ray()
        if args.phase == "run":
            _run(args.storage, epochs, args.markers)
        else:
            _resume(args.storage)
        return None
    storage = Path(args.storage or tempfile.mkdtemp(prefix="bench_faults_"))
    result = run_benchmark(storage, epochs)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
