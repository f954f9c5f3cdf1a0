"""Trainables and subscribers for the Tune tests (importable by Ray workers)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from ray import tune

import ikkuna_tune as ik
from ikkuna_tune.tune.session import STATE_FILE
from tests.conftest import TinyNet


class WeightSum(ik.PlotSubscriber):
    """Publishes the sum of each layer's weights at every step (a value easy to recompute)."""

    def __init__(self, backend: str | None = None) -> None:
        super().__init__(
            [ik.Subscription(self, ["weights"])], backend=backend, publishes={"weight_sum": "DATA"}
        )

    def compute(self, message) -> None:
        self.publish("weight_sum", message.data.sum(), message)


class StepCount(ik.Subscriber):
    """Counts the steps it saw (state that must survive a restore) and publishes the count."""

    def __init__(self) -> None:
        self.add_state("count", 0)
        super().__init__(
            [ik.Subscription(self, ["batch_finished"])], publishes={"steps_seen": "META"}
        )

    def compute(self, message) -> None:
        self.count += 1
        self.publish("steps_seen", torch.tensor(float(self.count)), message)


class WeightCosine(ik.Subscriber):
    """``self_similarity`` per layer: cosine between its weights now and at the last epoch end.

    A cheap, exact stand-in for SVCCA when testing the scheduler: it reaches 1.0 as a layer
    stops changing. Like the SVCCA subscriber it also publishes ``init_similarity`` (cosine to
    the weights at the first epoch end) and ``live_fraction`` (always 1).
    """

    uses_model = "probe"  # it reads the layers' weights

    def __init__(self) -> None:
        self.add_state("previous", {})
        self.add_state("initial", {})
        published = ("self_similarity", "init_similarity", "live_fraction")
        super().__init__(
            [ik.Subscription(self, ["epoch_finished"])], publishes=dict.fromkeys(published, "DATA")
        )

    def compute(self, message) -> None:
        assert self.model_access is not None
        for name, named in self.model_access.modules.items():
            weight = named.module.weight.detach().flatten().clone()
            if name in self.previous:
                similarity = F.cosine_similarity(weight, self.previous[name], dim=0)
                self.publish("self_similarity", similarity, message, module=named)
            start = self.initial.setdefault(name, weight)
            init = F.cosine_similarity(weight, start, dim=0)
            self.publish("init_similarity", init, message, module=named)
            self.publish("live_fraction", torch.tensor(1.0), message, module=named)
            self.previous[name] = weight


def data(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 1, 6, 6, generator=g), torch.randint(0, 5, (16,), generator=g)


def _storage_trial_dir() -> Path:
    from ray.train._internal.session import get_session

    return Path(get_session().storage.trial_fs_path)


def train_tiny(config: dict[str, Any]) -> None:
    """A few SGD steps per iteration on TinyNet; optionally checkpoints, freezes, crashes once.

    Faults on request: ``kill_mailbox_at`` kills the scheduler's mailbox before that
    iteration's report; ``stale_progress`` empties the trial's ``result.json`` and ``progress.csv``
    in storage when it crashes (as if the driver's background copy was made before any report);
    ``corrupt_state`` truncates ikkuna_tune's state file in the checkpoint it restores from,
    ``drop_state`` deletes it (a checkpoint saved without it), each at the first restore only;
    ``crash_again_marker`` crashes once more, at iteration ``crash_again_at`` (3). ``acc``: a
    list, reported as metric ``acc`` (its value at each iteration), for tests of the stop rules;
    ``nan_loss_at``: the iteration whose reported ``loss`` is NaN (the trial trains on).
    ``log_dir``: where the event files go (default: the trial's own folder for them).
    """
    torch.manual_seed(config.get("seed", 0))
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"])
    start = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "model.pt", weights_only=True)
            state_file = Path(d) / STATE_FILE
            lost = Path(f"{config.get('crash_marker')}.lost")  # the state is lost once only
            if config.get("corrupt_state") and not lost.exists():
                state_file.write_bytes(state_file.read_bytes()[:100])
                lost.touch()
            if config.get("drop_state") and not lost.exists():
                state_file.unlink()
                lost.touch()
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["iteration"] + 1
    exporter = ik.watch(model, opt, log_dir=config.get("log_dir"))
    loss_fn = exporter.wrap_loss(F.cross_entropy)
    x, y = data()
    for iteration in range(start, config["iterations"]):
        for _ in range(config.get("steps", 2)):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
        exporter.epoch_finished()
        if iteration == config.get("freeze_at_iteration"):
            exporter.freeze("conv")
        metrics = {"iteration": iteration, "loss": loss.item(), "node": node_id()}
        if iteration == config.get("nan_loss_at"):  # a diverged report, for the stop rules
            metrics["loss"] = float("nan")
        if "acc" in config:  # a scripted metric, one value per iteration
            metrics["acc"] = float(config["acc"][iteration])
        if iteration == config.get("kill_mailbox_at"):
            import ray

            from ikkuna_tune.tune.mailbox import mailbox_name

            ray.kill(ray.get_actor(mailbox_name(tune.get_context().get_experiment_name())))
        again = config.get("crash_again_marker")  # a second crash (at iteration 3)
        if again and iteration == config.get("crash_again_at", 3) and not os.path.exists(again):
            Path(again).touch()
            raise RuntimeError("simulated second crash")
        crash_marker = config.get("crash_marker")
        if crash_marker and iteration == 2 and not os.path.exists(crash_marker):
            Path(crash_marker).touch()
            if config.get("stale_progress"):
                for name in ("result.json", "progress.csv"):
                    (_storage_trial_dir() / name).write_text("")
            raise RuntimeError("simulated crash")
        if config.get("checkpoint"):
            with tempfile.TemporaryDirectory() as d:
                torch.save(
                    {"model": model.state_dict(), "opt": opt.state_dict(), "iteration": iteration},
                    Path(d) / "model.pt",
                )
                ik.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        else:
            ik.report(metrics)


def two_reports_per_epoch(config: dict[str, Any]) -> None:
    """Names the epoch as ``training_iteration`` and reports twice in it: the training loss,
    then the validation accuracy (Tune keeps a ``training_iteration`` the trainable sets)."""
    for epoch in range(1, config["epochs"] + 1):
        tune.report({"training_iteration": epoch, "train_loss": 1.0 / epoch})
        tune.report({"training_iteration": epoch, "val_acc": 0.3 * epoch})


def node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def eager_freezer(**overrides: Any) -> ik.SVCCAScheduler:
    """An SVCCAScheduler (metric ``loss``, min) that freezes a layer once its self-similarity
    passes 0.9 at one report, every trial alike, and stops none: for tests of how freezes
    travel and hold, not of when to freeze. ``overrides`` replace its settings."""
    settings: dict[str, Any] = {
        "metric": "loss",
        "mode": "min",
        "freeze_at": 0.9,
        "patience": 1,
        "min_travel": 0.0,
        "settle_window": 1,
        "settle_tol": 1e9,
        "plateau": 0,  # the metric is not asked
        "min_delta": 10.0,
        "grace": 0,
        "stop": False,
        "freeze_best": True,
    }
    return ik.SVCCAScheduler(**{**settings, **overrides})


def run_script(module: str, timeout: int = 600) -> dict[str, Any]:
    """Run ``python -m module`` from the repository root (a simulated cluster that must not
    clash with the suite's Ray session) and return the JSON object of its last line."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-m", module],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
