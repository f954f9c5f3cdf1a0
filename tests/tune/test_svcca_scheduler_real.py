"""The real SVCCA subscriber steering SVCCAScheduler under Tune: a small MLP on a slice of the
bundled digits freezes its converged layers and is stopped, and the trial's own numbers show it.

tests/tune/test_scheduler_e2e.py drives the scheduler with a cheap stand-in for SVCCA; here the
similarities come from :class:`ikkuna_tune.SVCCASubscriber` itself (probe forward passes,
SVCCA, CKA to initialisation, live fraction).
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from ray import tune
from torch import nn

import ikkuna_tune as ik
from ikkuna_tune.tune.scheduler import DECISIONS_FILE

LAYERS = ("0", "2", "4")  # the Linear layers of the MLP (ReLUs hold no parameters)


@functools.cache
def _digits(n: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` of scikit-learn's bundled 8x8 digits, flattened, in [0, 1]."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data[:n] / 16.0, dtype=torch.float32)
    return x, torch.tensor(bunch.target[:n], dtype=torch.long)


def svcca_probe(config: dict[str, Any]) -> list[ik.Subscriber]:
    """The real SVCCA subscriber, on 100 of the training digits, at every epoch end."""
    return [ik.SVCCASubscriber(_digits()[0], n=100, backend=None)]


def train_mlp(config: dict[str, Any]) -> None:
    """64 -> 32 -> 16 -> 10 MLP, SGD + momentum, batches of 50; reports each layer's sum of
    squared weights (in float64, so that any change of a weight changes it)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = _digits()
    model = nn.Sequential(
        nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10)
    )
    opt = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=0.9)
    exporter = ik.watch(model, opt)
    loss_fn = exporter.wrap_loss(F.cross_entropy)
    for epoch in range(config["epochs"]):
        losses = []
        for start in range(0, len(x), 50):
            opt.zero_grad()
            loss = loss_fn(model(x[start : start + 50]), y[start : start + 50])
            loss.backward()
            opt.step()
            losses.append(loss.item())
        exporter.epoch_finished()
        squares = {
            f"weight_sq_{name}": model[int(name)].weight.detach().double().square().sum().item()
            for name in LAYERS
        }
        mean = sum(losses) / len(losses) if epoch != config.get("nan_loss_at") else math.nan
        ik.report({"epoch": epoch, "train_loss": mean, **squares})


def test_real_svcca_freezes_converged_layers_and_the_scheduler_stops_the_trial(
    ray_session, tmp_path
) -> None:
    # permissive rules, so that decisions come within a few epochs: a layer freezes at its first
    # similarity >= 0.9 once the metric's trend can be read (report 4: twice plateau + 1
    # values; no travel, settling or plateau asked for); the trial's loss (the metric) is NaN
    # at its sixth report, where it is stopped as diverged
    scheduler = ik.SVCCAScheduler(
        metric="train_loss", mode="min", freeze_at=0.9, patience=1, min_travel=0.0,
        settle_window=1, settle_tol=1e9, plateau=1, min_delta=10.0, grace=5, stall_delta=10.0,
        move_tol=10.0, freeze_best=True,
    )  # fmt: skip
    epochs = 10
    analysis = tune.run(
        ik.instrument(train_mlp, svcca_probe),
        config={"lr": 0.05, "epochs": epochs, "nan_loss_at": 5},
        scheduler=scheduler,
        stop={"training_iteration": epochs},
        storage_path=str(tmp_path),
        verbose=0,
    )
    (trial,) = analysis.trials
    df = analysis.trial_dataframes[trial.trial_id].sort_values("training_iteration")
    assert df["training_iteration"].tolist() == [1, 2, 3, 4, 5, 6]

    # report 1 has no similarity yet (the first checkpoint only records); report 2 has the
    # subscriber's real SVCCA values, and the two input-side layers reach 0.9
    assert df["self_similarity/0"].isna().tolist()[0]
    report2 = df.iloc[1]
    for name in LAYERS:
        assert 0.9 <= report2[f"self_similarity/{name}"] <= 1.0
        assert 0.0 < report2[f"init_similarity/{name}"] < 1.0
        assert report2[f"live_fraction/{name}"] == 1.0
    # ordered after report 4, carried out at once, confirmed by report 5 and kept; the last
    # trainable layer is never frozen
    for name in ("0", "2"):
        assert df[f"frozen/{name}"].tolist() == [0, 0, 0, 0, 1, 1]
    assert df["frozen/4"].tolist() == [0] * 6
    # the frozen layers' weights stop changing from report 4 on (they moved before), while the
    # output layer goes on training
    for name in ("0", "2"):
        squares = df[f"weight_sq_{name}"].tolist()
        assert squares[2] != squares[3] == squares[4] == squares[5]
    output = df["weight_sq_4"].tolist()
    assert output[3] != output[4] != output[5]

    # the scheduler's account: two freezes for convergence at report 4, then the stop
    assert scheduler.frozen_layers == {trial.trial_id: ["0", "2"]}
    assert scheduler.stopped_trials == {trial.trial_id: "diverged: non-finite value"}
    decisions = [d.as_dict() for _, d in scheduler.decisions]
    assert [(d["action"], d["rule"], d["layer"], d["iteration"]) for d in decisions] == [
        ("freeze", "converged", "0", 4),
        ("freeze", "converged", "2", 4),
        ("stop", "diverged: non-finite value", None, 6),
    ]
    # the decisions reached the trial's files, the freezes with the similarity they were made at
    (path,) = Path(tmp_path).rglob(DECISIONS_FILE)
    written = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    mine = [{k: v for k, v in d.items() if k != "trial_id"} for d in written]
    assert json.dumps(mine) == json.dumps(decisions)  # (as text: the stop's NaN is no equal)
    for d in written[:2]:
        assert d["values"]["similarity"] == df.iloc[3][f"self_similarity/{d['layer']}"]
