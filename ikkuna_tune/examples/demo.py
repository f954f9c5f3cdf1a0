"""The demo sweep: :class:`~ikkuna_tune.examples.models.SmallCNN` on scikit-learn's bundled
digits, steered by SVCCAScheduler.

``ikkuna-tune demo`` calls :func:`run_demo`; ``experiments/bench_sweep.py`` reuses
:func:`train_cnn` and :func:`demo_subscribers` to compare schedulers. Needs the ``examples``
extra (``pip install "ikkuna_tune[examples]"``) for the data.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import ikkuna_tune as ik
from ikkuna_tune.examples.data import check_bundled, load_dataset
from ikkuna_tune.examples.models import SmallCNN

__all__ = ["check_reachable", "demo_subscribers", "run_demo", "train_cnn", "train_epoch"]

logger = logging.getLogger(__name__)


def demo_subscribers(config: dict[str, Any]) -> list[ik.Subscriber]:
    """Test accuracy and SVCCA self-similarity at every epoch end, on the test split."""
    _, test = load_dataset(config.get("data", "digits"), config.get("data_seed", 0))
    return [
        ik.TestAccuracySubscriber(test, batch_size=500, frequency="epoch", backend="tb"),
        ik.SVCCASubscriber(
            test, n=min(500, len(test)), max_positions=config.get("max_positions", 4000)
        ),
    ]


def train_epoch(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """One epoch of plain training (zero_grad, forward, backward, step per batch, model in
    training mode); the mean loss over the batches as a 0-d tensor (no host sync per batch).

    Examples:
        >>> model = torch.nn.Linear(2, 2)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> batches = [(torch.ones(4, 2), torch.zeros(4, dtype=torch.long))] * 3
        >>> first = train_epoch(model, opt, F.cross_entropy, batches)
        >>> bool(train_epoch(model, opt, F.cross_entropy, batches) < first)
        True
    """
    model.train()
    total = torch.zeros(())
    batches = 0
    for x, y in loader:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        total += loss.detach()
        batches += 1
    return total / max(batches, 1)


def train_cnn(config: dict[str, Any]) -> None:
    """Train SmallCNN with SGD + momentum; report every epoch through ikkuna_tune.

    Config keys: ``lr``, ``width``, ``epochs``, optional ``data`` ('digits'), ``seed`` (0),
    ``batch_size`` (64), ``threads`` (1), ``freeze`` (a list of layers to freeze at
    ``freeze_epoch``, for freezing experiments without the scheduler).

    Besides ``epoch`` and ``train_loss`` it reports ``train_seconds``: the wall-clock time spent
    in the epochs so far (training steps and the subscribers' epoch-end work, such as SVCCA and
    test accuracy), without the process start-up or the time spent reporting, so that what a
    scheduler saves can be compared across trials that share a machine.
    """
    torch.set_num_threads(int(config.get("threads", 1)))
    torch.manual_seed(int(config.get("seed", 0)))
    train, _ = load_dataset(config.get("data", "digits"), config.get("data_seed", 0))
    image = train.tensors[0].shape[-1]
    model = SmallCNN(image_size=image, width=int(config["width"]), hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=float(config["lr"]), momentum=0.9)
    start = 0
    train_seconds = 0.0
    checkpoint = _get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / "model.pt", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = int(state["epoch"]) + 1
        train_seconds = float(state.get("train_seconds", 0.0))
    exporter = ik.watch(model, opt)
    loss_fn = exporter.wrap_loss(F.cross_entropy)
    generator = torch.Generator().manual_seed(int(config.get("seed", 0)))
    loader = DataLoader(
        train, batch_size=int(config.get("batch_size", 64)), shuffle=True, generator=generator
    )
    for epoch in range(start, int(config["epochs"])):
        started = time.perf_counter()
        if epoch == config.get("freeze_epoch"):
            for name in config.get("freeze", ()):
                exporter.freeze(name)
        mean_loss = train_epoch(model, opt, loss_fn, loader)
        exporter.epoch_finished()
        train_seconds += time.perf_counter() - started
        metrics = {
            "epoch": epoch,
            "train_loss": mean_loss.item(),
            "train_seconds": train_seconds,
        }
        if config.get("checkpoint", False):
            with tempfile.TemporaryDirectory() as directory:
                state = {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "epoch": epoch,
                    "train_seconds": train_seconds,
                }
                torch.save(state, Path(directory) / "model.pt")
                ik.report(metrics, checkpoint=_checkpoint_from(directory))
        else:
            ik.report(metrics)


def _get_checkpoint() -> Any:
    from ray import tune

    from ikkuna_tune.tune.session import current_session

    session = current_session()
    return tune.get_checkpoint() if session is not None and session.in_tune else None


def _checkpoint_from(directory: str) -> Any:
    from ray import tune

    return tune.Checkpoint.from_directory(directory)


def _new_name(storage: Path, base: str) -> str:
    """``base``, or ``base_2``, ``base_3``, ... if an experiment of that name is in ``storage``."""
    name, number = base, 1
    while (storage / name).exists():
        number += 1
        name = f"{base}_{number}"
    return name


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Raise ``ConnectionError`` unless something listens at a ``host:port`` (or
    ``ray://host:port``) cluster address: ``ray.init`` would wait for it without end. Other
    forms (``auto``, ``local``) are left to ``ray.init``.

    Examples:
        >>> check_reachable("auto")  # not a host:port: ray.init's to check
        >>> check_reachable("127.0.0.1:1", timeout=1.0)
        Traceback (most recent call last):
        ...
        ConnectionError: Cannot reach a Ray cluster at 127.0.0.1:1: nothing answers there (...)
    """
    import socket

    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as error:
        raise ConnectionError(
            f"Cannot reach a Ray cluster at {address}: nothing answers there ({error})"
        ) from None


def run_demo(
    address: str | None = None,
    quick: bool = False,
    storage_path: str | Path | None = None,
    out_dir: str | Path = "ikkuna_demo",
) -> dict[str, Any]:
    """Run the demo sweep with SVCCAScheduler, then write the comparison plots and summary.

    Everything goes under ``out_dir``: the plots, ``summary.csv`` and ``decisions.csv``, and
    (unless ``storage_path`` says otherwise) Tune's results in ``out_dir/ray_results``. Each run
    is its own experiment: ``ikkuna_demo``, then ``ikkuna_demo_2``, ... so that a second run is
    never compared together with the first. The console shows one status table with the few
    columns that matter; every per-layer metric is in the results.

    Returns a dict with the experiment path, the summary table, the scheduler's decisions and
    the files written.

    Raises:
        ImportError: before anything starts, when scikit-learn (the ``examples`` extra) is
            missing.
        ConnectionError: when nothing answers at a ``host:port`` ``address``.
    """
    check_bundled("digits")  # fail here, before Ray starts, not in every trial
    if address:
        check_reachable(address)  # before anything is written
    import ray
    from ray import tune

    from ikkuna_tune import compare
    from ikkuna_tune.compare.report import check_out_dir

    check_out_dir(out_dir)  # a file in the way: said here, before Ray starts
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    storage = Path(storage_path).resolve() if storage_path else out / "ray_results"
    name = _new_name(storage, "ikkuna_demo")
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(address="local", include_dashboard=False, log_to_driver=False)
    lrs = [0.01, 0.1] if quick else [0.003, 0.01, 0.03, 0.1]
    widths = [8] if quick else [8, 16]
    config = {
        "lr": tune.grid_search(lrs),
        "width": tune.grid_search(widths),
        "epochs": 6 if quick else 30,
        "data": "digits",
    }
    # the demo shows freezing on every trial; by default SVCCAScheduler leaves the best trials
    # so far alone (freezing them can reorder near-tied configurations), which in a sweep of
    # this size means it freezes nothing
    scheduler = ik.SVCCAScheduler(metric="test_accuracy", mode="max", freeze_best=True)
    # Tune's default console lists every reported key of every trial (a box per trial with all
    # per-layer metrics); its classic reporter shows only the columns named here
    experiment_dir = storage / name

    class Reporter(tune.CLIReporter):
        def _print(self, msg: str) -> None:
            # Tune names its driver-side staging folder here; the results (TensorBoard files
            # included) are read from the experiment's folder in storage
            lines = [
                f"Results and TensorBoard files: {experiment_dir}"
                if line.startswith("Result logdir:")
                else line
                for line in msg.splitlines()
            ]
            super()._print("\n".join(lines))

    reporter = Reporter(
        metric_columns={
            "training_iteration": "epochs",
            "test_accuracy": "test acc",
            "frozen_fraction": "frozen",
        },
        parameter_columns=["lr", "width"],
        max_report_frequency=30,
    )
    new_output = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        analysis = tune.run(
            ik.instrument(train_cnn, demo_subscribers),
            name=name,
            config=config,
            scheduler=scheduler,
            stop={"training_iteration": config["epochs"]},
            storage_path=str(storage),
            verbose=1,
            progress_reporter=reporter,
            resources_per_trial={"cpu": 1},
            reuse_actors=True,
        )
    finally:
        if new_output is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = new_output
    logger.info("%s", scheduler.debug_string())
    # from the experiment's directory: values Tune's own objects hold drop NaN (a diverged
    # trial's "not finite" mark), result.json keeps them
    comparison = compare.compare_experiment(
        analysis.experiment_path,
        out,
        metric="self_similarity",
        color_by="lr",
        summary_metric="test_accuracy",
    )
    return {
        "experiment": analysis.experiment_path,
        "summary": comparison.summary,
        "decisions": comparison.decisions,
        "files": comparison.files,
    }
