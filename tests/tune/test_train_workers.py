"""Data-parallel trials: a Tune trial whose training runs as a Ray Train TorchTrainer job with 2
workers (DDP on gloo), instrumented like a single-process trial.

The reference is the same training function called directly, in one process, on the same global
batches (each rank of the job trains on its half of every batch; DDP averages the gradients, so
every rank steps with the single process's gradient).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from ray import tune
from ray.tune.utils import flatten_dict

import ikkuna_tune as ik
from ikkuna_tune import keys
from ikkuna_tune.backends import EVENT_DIR, EVENT_FILE_SUFFIX
from tests.tune.train_job import subscribers, train_loop, tune_trial
from tests.tune.trainables import eager_freezer, run_script
from tests.tune.two_node_train import CONFIG

ITERATIONS = 3
#: outputs of the subscribers every rank runs, and of the one that runs on rank 0 only
COMPARED = (
    "weight_gradients_norm2",
    "weights_norm2",
    "weight_updates_weights_ratio",
    "weight_sum",
    "train_accuracy",
    "self_similarity",
)


def _run(config: dict, storage: Path, scheduler=None):
    trainable = tune.with_resources(ik.instrument(tune_trial, subscribers), {"cpu": 0.1})
    analysis = tune.run(
        trainable,
        config={"storage": str(storage), "workers": 2, "worker_cpus": 0.5, **config},
        scheduler=scheduler,
        storage_path=str(storage),
        verbose=0,
    )
    (trial,) = analysis.trials
    return trial, analysis.trial_dataframes[trial.trial_id]


@pytest.mark.timeout(300)
def test_a_two_worker_job_reports_the_single_process_metrics_once_per_iteration(
    ray_session, tmp_path
) -> None:
    config = {"lr": 0.1, "iterations": ITERATIONS, "steps": 2, "out": str(tmp_path)}
    ik.instrument(train_loop, subscribers())(config)
    reference = [flatten_dict(r, delimiter="/") for r in ik.local_results()]
    trial, df = _run({**config, "tensorboard": True}, tmp_path)
    assert trial.status == "TERMINATED"
    # rank 0's TensorBoard file reached the trial's storage (the other rank draws nothing)
    events = list((Path(trial.path) / EVENT_DIR).glob(f"events.out.tfevents*{EVENT_FILE_SUFFIX}"))
    assert len(events) == 1, sorted(p.name for p in Path(trial.path).iterdir())
    # one report per iteration reaches Tune, not one per worker
    assert df["training_iteration"].tolist() == list(range(1, ITERATIONS + 1))
    assert df["iteration"].tolist() == list(range(ITERATIONS))
    columns = [c for c in df.columns if c.startswith(COMPARED)]
    assert {c.split("/")[-1] for c in columns if "/" in c} == {"conv", "fc"}  # no 'module.'
    expected_columns = {k for r in reference for k in r if k.startswith(COMPARED)}
    assert set(columns) == expected_columns
    for row, want in zip(df.to_dict("records"), reference):
        for column in columns:
            got, value = row[column], want[column]
            if value is None:
                assert got is None or math.isnan(got), column
                continue
            assert abs(got - value) <= 1e-5 * abs(value) + 1e-7, (row["iteration"], column)
    ranks = {p.name: p.read_text().split() for p in tmp_path.glob("rank*")}
    assert len(ranks) == 2 and ranks["rank0"][0] == ranks["rank1"][0]  # the ranks stay in step
    # the subscriber that reads the model runs on rank 0 only; the others on every rank
    assert "WeightCosine" in ranks["rank0"][3].split(",")
    assert ranks["rank1"][3].split(",") == [
        n for n in ranks["rank0"][3].split(",") if n != "WeightCosine"
    ]


def _crashing(tmp_path: Path, **extra: object) -> dict:
    """The config of a 7-iteration job, checkpointed at every report, whose worker fails once
    after conv is frozen (see ``train_loop``)."""
    return {
        "lr": 0.1,
        "iterations": 7,
        "steps": 2,
        "checkpoint": True,
        "crash_marker": str(tmp_path / "crashed"),
        "max_failures": 1,
        "out": str(tmp_path),
        **extra,
    }


def _freezes_decided(trial) -> list[int]:
    """The reports at which the scheduler decided a freeze (its decision log)."""
    lines = (Path(trial.path) / keys.DECISIONS_FILE).read_text().splitlines()
    return [d["iteration"] for d in map(json.loads, lines) if d["action"] == "freeze"]


@pytest.mark.timeout(300)
def test_a_freeze_reaches_every_worker_and_survives_a_worker_failure(ray_session, tmp_path) -> None:
    """SVCCAScheduler freezes ``conv``; once frozen, a worker fails and the job restarts from its
    latest checkpoint with ``conv`` still frozen, bit-identical on both ranks."""
    marker = tmp_path / "crashed"
    trial, df = _run(_crashing(tmp_path), tmp_path, eager_freezer())
    assert trial.status == "TERMINATED"
    assert marker.exists()  # the failure happened, after conv was frozen
    frozen = df["frozen/conv"].tolist()
    first = frozen.index(1)
    # rank 0 reads a report's directives once the scheduler has handled it (Train hands the
    # report to Tune seconds later): the freeze holds from the first step after the report
    # that decided it, as in a single-process trial, not a report or more later
    decided = _freezes_decided(trial)
    assert decided and df["training_iteration"].tolist()[first] == decided[0] + 1, (
        decided,
        frozen,
    )
    names = df[keys.TRAIN_REPORT].tolist()  # one name per report, unique across the restart
    assert len(set(names)) == len(names) and all(isinstance(n, str) for n in names)
    assert all(frozen[first:]), frozen  # frozen from the order on, also after the restart
    assert df["iteration"].tolist()[-1] == 6
    # the frozen weights do not move, while fc still trains
    sums = df["weight_sum/conv"].tolist()[first:]
    assert max(sums) == min(sums)
    assert df["weights_norm2/fc"].nunique() > 1
    digests = [p.read_text().split()[:2] for p in sorted(tmp_path.glob("rank*"))]
    assert len(digests) == 2
    assert digests[0] == digests[1] and digests[0][1] == "1"  # same bits, frozen, on both ranks


@pytest.mark.timeout(300)
def test_a_freeze_carried_out_after_the_checkpoint_is_ordered_again_when_a_worker_fails(
    ray_session, tmp_path
) -> None:
    """The job fails right after the report whose directive froze ``conv``: it restarts from
    that report's checkpoint, which predates the freeze. The scheduler sees the new attempt in
    its first report and orders the freeze again at once (not a few reports later, when it
    would judge the order lost)."""
    trial, df = _run(_crashing(tmp_path, crash_on_freeze=True), tmp_path, eager_freezer())
    assert trial.status == "TERMINATED" and (tmp_path / "crashed").exists()
    decided = _freezes_decided(trial)
    iterations, frozen = df["training_iteration"].tolist(), df["frozen/conv"].tolist()
    # the job resumed from report k's checkpoint, at the iteration after it
    k = decided[0]
    assert df["iteration"].tolist() == list(range(7))
    names = df[keys.TRAIN_REPORT].tolist()
    attempt = names[0].split("-")[0]
    assert not names[k].startswith(attempt) and names[k].endswith(f"@{names[k - 1]}"), names
    assert frozen[: k + 1] == [0] * (k + 1), frozen  # frozen after report k, then lost
    # ordered again at report k + 1 (the attempt's first), so frozen from report k + 2 on
    assert frozen[k + 1 :] == [1] * (len(frozen) - k - 1), (decided, frozen)
    assert iterations == list(range(1, len(frozen) + 1))
    digests = [p.read_text().split()[:2] for p in sorted(tmp_path.glob("rank*"))]
    assert digests[0] == digests[1] and digests[0][1] == "1"


@pytest.mark.timeout(600)
def test_a_two_worker_job_on_a_simulated_cluster_freezes_on_both_nodes() -> None:
    out = run_script("tests.tune.two_node_train", timeout=540)
    assert out["driver"] == out["head"] not in out["nodes"]
    assert sorted(out["rank_nodes"]) == out["nodes"]  # one rank on each node
    assert out["iterations"] == list(range(6))  # one report per iteration
    frozen = out["frozen_conv"]
    first = frozen.index(1)
    assert all(frozen[first:])
    sums = out["weight_sum_conv"][first:]
    assert max(sums) == min(sums)
    assert out["rank_frozen"] == ["1", "1"]
    assert out["rank_digests"][0] == out["rank_digests"][1]  # bit-identical on both nodes
    # until the freeze, the job's gradient norms are those of one process on the global batch
    ik.instrument(train_loop, subscribers())(dict(CONFIG))
    reference = ik.local_results()
    for got, want in zip(out["gradient_norms"][:first], reference[:first]):
        norms = want["weight_gradients_norm2"]
        for value, layer in zip(got, ("conv", "fc")):
            assert abs(value - norms[layer]) <= 1e-5 * abs(norms[layer]), (layer, got, norms)
    assert first >= 1


@pytest.mark.timeout(300)
def test_the_workers_unfreeze_together_on_rank_0s_learning_rate(ray_session, tmp_path) -> None:
    """conv is frozen on every worker; rank 0 alone lowers its learning rate (its own plateau
    schedule): the unfreeze is rank 0's decision, carried out by every rank after the same
    report. Decided by each rank, the ranks' frozen layers would differ and DDP's collectives
    with them (the job aborts)."""
    config = {"lr": 0.1, "iterations": 6, "steps": 2, "out": str(tmp_path)}
    trial, df = _run({**config, "rank0_lr_drop_after": 2}, tmp_path, eager_freezer())
    assert trial.status == "TERMINATED"
    reasons = df["unfreeze_reason/conv"].fillna("").astype(str).tolist()
    released = [i for i, r in enumerate(reasons) if r.startswith("learning rate changed")]
    assert released, reasons
    flags = [p.read_text().split()[1] for p in sorted(tmp_path.glob("rank*"))]
    assert len(flags) == 2 and flags[0] == flags[1]
