"""A Tune trial that trains as a Ray Train job (TorchTrainer, DDP on gloo), for the tests of
data-parallel trials (importable by Ray workers).

:func:`train_loop` is the per-worker training function; each rank takes its share of the same
global batch, so with 1 worker (or called directly, without Ray) it is the single-process run of
the same training. :func:`tune_trial` is the Tune trainable that runs it as a Train job.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from ray import tune
from torch import nn
from torch.utils.data import TensorDataset

import ikkuna_tune as ik
from ikkuna_tune.tune.session import current_session
from tests.conftest import TinyNet
from tests.tune.trainables import WeightCosine, WeightSum

GLOBAL_BATCH = 16


def subscribers(config: dict[str, Any] | None = None) -> list[ik.Subscriber]:
    """Gradient and weight norms, update ratios, loss, train accuracy (every rank) and a
    self-similarity that reads the model (rank 0 only); with ``config["tensorboard"]`` also the
    weights' mean, drawn in TensorBoard; with ``config["layernorm"]`` also a test accuracy, whose
    evaluation pass (rank 0 only) records the data flow through the layers."""
    drawn = [ik.MeanSubscriber("weights")] if config and config.get("tensorboard") else []
    if config and config.get("layernorm"):
        x, y = global_batch(-1)
        probe = TensorDataset(x, y)
        drawn.append(ik.TestAccuracySubscriber(probe, frequency="epoch", backend=None))
    return [
        ik.NormSubscriber("weight_gradients", backend=None),
        ik.NormSubscriber("weights", backend=None),
        ik.RatioSubscriber(["weight_updates", "weights"], backend=None),
        ik.LossSubscriber(backend=None),
        ik.TrainAccuracySubscriber(backend=None),
        WeightSum(),
        WeightCosine(),
        *drawn,
    ]


def global_batch(step: int, size: int = GLOBAL_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(size, 1, 6, 6, generator=g), torch.randint(0, 5, (size,), generator=g)


def layernorm_net() -> nn.Module:
    """Linear layers '1', '3', '5' (tracked with ``module_filter=nn.Linear``) with a trainable
    LayerNorm '2', not tracked, between the first two: '1' may be frozen, '3' may not while the
    LayerNorm trains (its inputs keep changing), which only a probe's data flow shows."""
    layers = [nn.Linear(36, 12), nn.LayerNorm(12), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 5)]
    return nn.Sequential(nn.Flatten(), *layers)


def _train_rank() -> tuple[int, int] | None:
    """(rank, world size) in a Ray Train job, None when called directly."""
    try:
        import ray.train

        context = ray.train.get_context()
        return context.get_world_rank(), context.get_world_size()
    except Exception:
        return None


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().contiguous().numpy().tobytes()).hexdigest()


def train_loop(config: dict[str, Any]) -> None:
    """``config["iterations"]`` iterations of ``config["steps"]`` SGD steps on this rank's share
    of each global batch, one ``ik.report`` per iteration (with a checkpoint from rank 0 when
    ``config["checkpoint"]``). With ``config["crash_marker"]``: once ``conv`` is frozen, the job
    crashes once after a report (a worker failure); with ``config["crash_on_freeze"]`` too, right
    after the report whose directive froze ``conv`` (its checkpoint predates the freeze). With
    ``config["out"]``: every rank writes the digest of its ``conv`` weights (and whether it was
    frozen) there at the end, and after each report its frozen layers and the correct and
    counted samples of its last step (``log_rank<rank>.json``). With
    ``config["rank0_lr_drop_after"]``: rank 0 alone lowers its learning rate tenfold after that
    iteration's report. With ``config["layernorm"]``: :func:`layernorm_net`, its Linear layers
    tracked; ``config["global_batch"]`` samples per step (16)."""
    import ray
    import ray.train

    in_train = _train_rank()
    rank, world = in_train or (0, 1)
    torch.manual_seed(0)
    model: torch.nn.Module = layernorm_net() if config.get("layernorm") else TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
    start = 0
    checkpoint = ray.train.get_checkpoint() if in_train else None
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / "model.pt", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["iteration"] + 1
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    exporter = ik.watch(model, opt, module_filter=nn.Linear if config.get("layernorm") else None)
    loss_fn = exporter.wrap_loss(F.cross_entropy)
    size = config.get("global_batch", GLOBAL_BATCH)
    share = slice(rank * size // world, (rank + 1) * size // world)
    log: list[dict[str, Any]] = []
    for iteration in range(start, config["iterations"]):
        for step in range(config["steps"]):
            x, y = global_batch(iteration * config["steps"] + step, size)
            opt.zero_grad()
            output = model(x[share])
            loss = loss_fn(output, y[share])
            loss.backward()
            opt.step()
        correct = int((output.argmax(1) == y[share]).sum())
        exporter.epoch_finished()
        frozen_before_report = "conv" in exporter.frozen
        metrics = {"iteration": iteration, "loss": loss.item()}  # rank 0's loss reaches Tune
        if config.get("checkpoint"):
            with tempfile.TemporaryDirectory() as directory:
                inner = getattr(model, "module", model)
                state = {"model": inner.state_dict(), "opt": opt.state_dict()}
                torch.save({**state, "iteration": iteration}, Path(directory) / "model.pt")
                saved = ray.train.Checkpoint.from_directory(directory) if rank == 0 else None
                ik.report(metrics, checkpoint=saved)
        else:
            ik.report(metrics)
        frozen = sorted(exporter.frozen)
        log.append({"frozen": frozen, "correct": correct, "counted": share.stop - share.start})
        if config.get("out"):
            Path(config["out"], f"log_rank{rank}.json").write_text(json.dumps(log))
        if config.get("rank0_lr_drop_after") == iteration and rank == 0:
            for group in opt.param_groups:  # rank 0's rate alone (its own plateau schedule)
                group["lr"] *= 0.1
        marker = config.get("crash_marker")
        # once conv is frozen: before the report (the checkpoint holds the freeze), or, with
        # config["crash_on_freeze"], right after the report that froze it (it does not)
        crash_now = ("conv" in exporter.frozen) if config.get("crash_on_freeze") else None
        if crash_now is None:
            crash_now = frozen_before_report
        elif frozen_before_report:
            crash_now = False
        if marker and crash_now and not os.path.exists(marker):
            if rank == 1:
                Path(marker).touch()
                raise RuntimeError("simulated worker failure")
    out = config.get("out")
    if out and "conv" in exporter.modules:
        conv = exporter.modules["conv"].module
        frozen = int("conv" in exporter.frozen)
        node = ray.get_runtime_context().get_node_id() if in_train else "local"
        session = current_session()
        names = ",".join(type(s).__name__ for s in session.subscribers) if session else ""
        Path(out, f"rank{rank}").write_text(f"{_digest(conv.weight)} {frozen} {node} {names}")


def tune_trial(config: dict[str, Any]) -> None:
    """The Tune trainable: runs :func:`train_loop` as a TorchTrainer job of
    ``config["workers"]`` workers, the pattern Ray documents for Train inside Tune."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=config["workers"], resources_per_worker={"CPU": config["worker_cpus"]}
        ),
        run_config=ray.train.RunConfig(
            name=f"train-{tune.get_context().get_trial_id()}",
            storage_path=config["storage"],
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=config.get("max_failures", 0)),
        ),
    )
    trainer.fit()
