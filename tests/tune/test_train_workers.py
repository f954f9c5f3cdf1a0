"""Data-parallel trials: a Tune trial whose training runs as a Ray Train TorchTrainer job with 2
workers (DDP on gloo), instrumented like a single-process trial.

The reference is the same training function called directly, in one process, on the same global
batches (each rank of the job trains on its half of every batch; DDP averages the gradients, so
every rank steps with the single process's gradient).
"""

from __future__ import annotations

import hashlib
import json
import math
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from ray import tune
from ray.tune.utils import flatten_dict
from torch import nn
from torch.utils.data import TensorDataset

import ikkuna_tune as ik
from experiments.processes import in_gloo_group, run_ranks
from ikkuna_tune import keys
from ikkuna_tune.backends import EVENT_DIR, EVENT_FILE_SUFFIX
from ikkuna_tune.tune.session import STATE_FILE, TrialSession
from ikkuna_tune.tune.train_workers import TrainWorker, subscribers_for_rank
from tests.tune.train_job import global_batch, layernorm_net, subscribers, train_loop, tune_trial
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


@pytest.mark.timeout(300)
def test_a_job_on_uneven_shards_freezes_rank_0s_choice_and_counts_every_sample(
    ray_session, tmp_path
) -> None:
    """A 2-worker job of :func:`~tests.tune.train_job.layernorm_net` (Linear layers tracked, a
    trainable LayerNorm between the first two) on global batches of 33 samples (shards of 16
    and 17) that the scheduler orders to freeze; each rank logs its frozen layers and the last
    step's correct and counted samples after every report. (One job for both checks below: a
    Train job is the costliest thing the suite starts.)"""
    config = {
        "lr": 0.1,
        "iterations": 4,
        "steps": 2,
        "layernorm": True,
        "global_batch": 33,
        "out": str(tmp_path),
    }
    trainable = tune.with_resources(ik.instrument(tune_trial, subscribers), {"cpu": 0.1})
    analysis = tune.run(
        trainable,
        config={"storage": str(tmp_path), "workers": 2, "worker_cpus": 0.5, **config},
        scheduler=eager_freezer(),
        storage_path=str(tmp_path),
        verbose=0,
        raise_on_failed_trial=False,
    )
    (trial,) = analysis.trials
    assert trial.status == "TERMINATED", trial.error_file and Path(trial.error_file).read_text()
    logs = [json.loads((tmp_path / f"log_rank{r}.json").read_text()) for r in range(2)]
    df = analysis.trial_dataframes[trial.trial_id]

    # The scheduler orders '1' and '3' frozen. Only rank 0 runs the evaluation pass that shows
    # the LayerNorm training between them, so only rank 0 can tell that '3' must stay
    # trainable: every rank carries out rank 0's decision ('1' frozen, '3' not). Decided by
    # each rank, rank 1 froze '3' too, and the next backward pass's all-reduce failed across
    # the ranks.
    assert [entry["frozen"] for entry in logs[0]] == [entry["frozen"] for entry in logs[1]]
    assert logs[0][-1]["frozen"] == ["1"], logs[0]  # the layer before the LayerNorm
    reasons = df["freeze_reason/1"].fillna("").astype(str).tolist()
    assert df["frozen/1"].tolist()[-1] == 1 and reasons[-1], reasons
    assert df["frozen/3"].tolist() == [0] * len(df), df["frozen/3"].tolist()
    orders = (Path(trial.path) / keys.DECISIONS_FILE).read_text().splitlines()
    ordered = {d["layer"] for d in map(json.loads, orders) if d["action"] == "freeze"}
    assert "3" in ordered, ordered  # ordered, and refused on every rank

    # Global batches of 33 samples: shards of 16 and 17. The reported train accuracy is that
    # of the last step's 33 predictions, counted by hand on each rank and summed (a mean of
    # the two ranks' accuracies would weigh each of rank 0's samples more).
    assert [entry["counted"] for entry in logs[0]] == [16] * len(logs[0])
    assert [entry["counted"] for entry in logs[1]] == [17] * len(logs[1])
    union = [(a["correct"] + b["correct"]) / 33 for a, b in zip(logs[0], logs[1])]
    # (each rank's accuracy is a float32)
    assert df["train_accuracy"].tolist() == pytest.approx(union, abs=1e-7)
    # the plain mean differs at some report here: the test tells them apart
    means = [(a["correct"] / 16 + b["correct"] / 17) / 2 for a, b in zip(logs[0], logs[1])]
    assert any(abs(m - u) > 1e-4 for m, u in zip(means, union)), (means, union)


#: what the scheduler orders in the two-rank jobs below (rank 0 refuses '3': the LayerNorm
#: before it trains)
ORDER = {"freeze": ["1", "3"], "reasons": {"1": "freeze 1: converged", "3": "freeze 3: converged"}}


class _Inbox:
    """Rank 0's mailbox without a scheduler: hands out the directives given, once."""

    def __init__(self, at_restore: list[dict[str, Any]], at_report: list[dict[str, Any]]) -> None:
        self.at_restore, self.at_report = at_restore, at_report

    def steered(self) -> bool:
        return False

    def take(self, check_flag: bool = True) -> list[dict[str, Any]]:
        box = self.at_report if check_flag else self.at_restore
        taken = list(box)
        box.clear()
        return taken


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().contiguous().numpy().tobytes()).hexdigest()


def _rank_session(
    rank: int, phase: str, checkpoint: Path
) -> tuple[TrialSession, nn.Module, torch.optim.Optimizer]:
    """This rank's session of a job of :func:`layernorm_net` under DDP, watched: train accuracy
    on every rank, a test accuracy (whose evaluation pass records the data flow) on rank 0.
    Rank 0's mailbox orders ORDER at the restore in phase 'restore' (from ``checkpoint``), at
    the first report in phase 'report'."""
    import ray.train

    torch.manual_seed(0)
    ddp = nn.parallel.DistributedDataParallel(layernorm_net(), find_unused_parameters=True)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    probe = TensorDataset(*global_batch(-1))
    every = [
        ik.TrainAccuracySubscriber(backend=None),
        ik.TestAccuracySubscriber(probe, frequency="epoch", backend=None),
    ]
    kept = subscribers_for_rank(every, rank)
    positions = [i for i, s in enumerate(every) if any(s is k for k in kept)]
    session = TrialSession(kept, {}, TrainWorker(rank, 2, None), positions)
    if rank == 0:
        restoring = phase == "restore"
        order = {**ORDER, "restore": True} if restoring else ORDER
        session.inbox = _Inbox([order] if restoring else [], [] if restoring else [order])
    restored = ray.train.Checkpoint.from_directory(str(checkpoint)) if phase == "restore" else None
    with mock.patch.object(ray.train, "get_checkpoint", return_value=restored):
        session.watch(ddp, opt, module_filter=nn.Linear)
    return session, ddp, opt


def _shard_step(session: TrialSession, ddp: nn.Module, opt: Any, rank: int, step: int) -> int:
    """One SGD step on this rank's shard (16 or 17 samples) of a global batch of 33; the number
    of its samples predicted right."""
    assert session.exporter is not None
    x, y = global_batch(step, 33)
    share = slice(rank * 33 // 2, (rank + 1) * 33 // 2)
    opt.zero_grad()
    output = ddp(x[share])
    session.exporter.wrap_loss(F.cross_entropy)(output, y[share]).backward()
    opt.step()
    return int((output.argmax(1) == y[share]).sum())


def _layernorm_ranks(rank: int, out: str) -> None:
    """Rank ``rank`` of a two-rank job, in three phases, each with a fresh model and session:
    'report' (ORDER at the first report, after the step that rank 0's probe follows), 'restore'
    (ORDER at the restore from the checkpoint rank 0 wrote at that report) and 'differ' (rank 1
    freezes '5' itself just before a report)."""
    import ray.train

    checkpoint = Path(out) / "checkpoint"
    checkpoint.mkdir(exist_ok=True)
    result: dict[str, Any] = {}
    sent: list[dict[str, Any]] = []
    with mock.patch.object(ray.train, "report", lambda m, checkpoint=None: sent.append(m)):
        for phase in ("report", "restore", "differ"):
            session, ddp, opt = _rank_session(rank, phase, checkpoint)
            exporter = session.exporter
            assert exporter is not None
            seen: dict[str, Any] = {"restored": sorted(exporter.frozen)}
            seen["correct"] = _shard_step(session, ddp, opt, rank, 0)
            exporter.epoch_finished()  # rank 0's test accuracy: the probe records the flow
            if phase == "differ" and rank == 1:
                exporter.freeze("5")  # the training code of one rank
            saved = ray.train.Checkpoint.from_directory(str(checkpoint)) if rank == 0 else None
            try:
                session.report({}, checkpoint=saved if phase == "report" else None)
            except RuntimeError as error:
                seen["error"] = str(error)
            seen["frozen"] = sorted(exporter.frozen)
            seen["reasons"] = dict(session.freeze_reasons)
            if "error" not in seen:  # a backward pass with what is frozen now, across the ranks
                _shard_step(session, ddp, opt, rank, 1)
                inner = ddp.module
                seen["digests"] = [_digest(inner[i].weight) for i in (1, 3, 5)]
            session.close()
            result[phase] = seen
    result["sent"] = sent
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


def _layernorm_worker(rank: int, store: str, out: str) -> None:
    in_gloo_group(rank, 2, store, partial(_layernorm_ranks, rank, out))


@pytest.fixture(scope="module")
def layernorm_ranks(tmp_path_factory) -> list[dict[str, Any]]:
    """The results of :func:`_layernorm_ranks` on two gloo ranks (no Ray session)."""
    tmp = tmp_path_factory.mktemp("layernorm_ranks")
    run_ranks(_layernorm_worker, (str(tmp / "store"), str(tmp)), 2, seconds=120)
    return [json.loads((tmp / f"rank{rank}.json").read_text()) for rank in range(2)]


def test_the_other_ranks_carry_out_what_rank_0_did_at_a_report(layernorm_ranks) -> None:
    """Only rank 0 ran the evaluation pass that shows the LayerNorm training before '3': it
    freezes '1' and refuses '3', and rank 1 freezes exactly '1' (deciding itself, it froze '3'
    too, and the next backward pass failed across the ranks)."""
    first, second = (ranks["report"] for ranks in layernorm_ranks)
    assert first["frozen"] == second["frozen"] == ["1"]
    assert first["reasons"] == second["reasons"] == {"1": "freeze 1: converged"}
    assert first["digests"] == second["digests"]  # the step after it: one model on both ranks


def test_the_other_ranks_carry_out_what_rank_0_did_at_a_restore(layernorm_ranks) -> None:
    """Restored from the checkpoint of that report (nothing frozen yet), rank 0 applies the
    order again at the restore and rank 1 carries out what it did."""
    first, second = (ranks["restore"] for ranks in layernorm_ranks)
    assert first["restored"] == second["restored"] == ["1"]
    assert first["reasons"] == second["reasons"] == {"1": "freeze 1: converged"}
    assert first["digests"] == second["digests"]


def test_a_report_from_ranks_with_other_layers_frozen_fails_on_every_rank(layernorm_ranks) -> None:
    first, second = (ranks["differ"] for ranks in layernorm_ranks)
    expected = "rank 0 has [] frozen and rank 1 has ['5']"
    assert expected in first["error"] and first["error"] == second["error"]


def test_the_train_accuracy_of_uneven_shards_is_over_all_their_samples(layernorm_ranks) -> None:
    """Shards of 16 and 17 samples: the accuracy reported is the share of the 33 predictions
    that are right, counted by hand on each rank."""
    first, second = (ranks["report"] for ranks in layernorm_ranks)
    reported = layernorm_ranks[0]["sent"][0][keys.TRAIN_ACCURACY]
    right = first["correct"] + second["correct"]
    assert reported == pytest.approx(right / 33, abs=1e-7)  # (each rank's is a float32)
    assert abs((first["correct"] / 16 + second["correct"] / 17) / 2 - right / 33) > 1e-4


def _fewer_batches_ranks(rank: int, out: str) -> None:
    """Rank ``rank`` of a two-rank job under DDP's ``join``: rank 0 trains 2 steps, rank 1 one
    (a batch fewer in the epoch), then both report. Logged by hand per step: the samples
    predicted right and counted, and each tracked layer's weight gradient norm (after DDP's
    all-reduce) and weight norm at the step's start."""
    import ray.train

    torch.manual_seed(0)
    ddp = nn.parallel.DistributedDataParallel(layernorm_net())
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    every = [
        ik.TrainAccuracySubscriber(backend=None),
        ik.NormSubscriber("weight_gradients", backend=None),
        ik.NormSubscriber("weights", backend=None),
    ]
    session = TrialSession(every, {}, TrainWorker(rank, 2, None), [0, 1, 2])
    with mock.patch.object(ray.train, "get_checkpoint", return_value=None):
        session.watch(ddp, opt, module_filter=nn.Linear)
    assert session.exporter is not None
    inner = ddp.module
    logged: list[dict[str, Any]] = []
    with ddp.join():
        for step in range(2 - rank):
            x, y = global_batch(step, 32)
            share = slice(rank * 16, (rank + 1) * 16)
            weights = {name: float(inner[int(name)].weight.norm()) for name in ("1", "3", "5")}
            opt.zero_grad()
            output = ddp(x[share])
            session.exporter.wrap_loss(F.cross_entropy)(output, y[share]).backward()
            grads = {name: float(inner[int(name)].weight.grad.norm()) for name in ("1", "3", "5")}
            opt.step()
            right = int((output.argmax(1) == y[share]).sum())
            logged.append({"correct": right, "weights": weights, "grads": grads})
    session.exporter.epoch_finished()
    sent: list[dict[str, Any]] = []
    with mock.patch.object(ray.train, "report", lambda m, checkpoint=None: sent.append(m)):
        session.report({})
    session.close()
    Path(out, f"rank{rank}.json").write_text(json.dumps({"logged": logged, "sent": sent}))


def _fewer_batches_worker(rank: int, store: str, out: str) -> None:
    in_gloo_group(rank, 2, store, partial(_fewer_batches_ranks, rank, out))


def test_a_rank_with_a_batch_fewer_does_not_mix_its_last_step_into_rank_0s(tmp_path) -> None:
    """Under DDP's ``join`` rank 1 has a batch fewer: its last values are of step 0, rank 0's of
    step 1. The report gives step 1's values: rank 0's gradient and weight norms as logged by
    hand, and the train accuracy of the 16 samples rank 0 alone trained on in that step (the
    mean over the two ranks' last values, of two different steps, was reported before)."""
    run_ranks(_fewer_batches_worker, (str(tmp_path / "store"), str(tmp_path)), 2, seconds=120)
    first, second = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert len(first["logged"]) == 2 and len(second["logged"]) == 1
    (report,) = first["sent"]
    last = first["logged"][-1]
    assert report[keys.TRAIN_ACCURACY] == pytest.approx(last["correct"] / 16, abs=1e-7)
    for name in ("1", "3", "5"):
        assert report["weight_gradients_norm2"][name] == pytest.approx(last["grads"][name], 1e-6)
        assert report["weights_norm2"][name] == pytest.approx(last["weights"][name], 1e-6)
    # the test tells the two apart: rank 1's step-0 values differ from rank 0's step-1 values
    other = second["logged"][0]
    assert any(abs(other["grads"][n] - last["grads"][n]) > 1e-3 for n in ("1", "3", "5"))


class _BeforeA(nn.Module):
    """Registers 'b' before 'a' but calls a -> b -> head: a rank that runs no probe (any but 0)
    has its layers in another order than the data flow."""

    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Linear(8, 8)
        self.a = nn.Linear(16, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


def _batch_of_16(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A global batch of 32 samples of 16 features for :class:`_BeforeA`, four classes."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(32, 16, generator=generator), torch.randint(0, 4, (32,), generator=generator)


def _retrained_run(rank: int | None, out: str) -> None:
    """Rank ``rank`` of a two-rank DDP job of :class:`_BeforeA` (None: one process on the whole
    batches). The training code holds 'a' fixed, the scheduler freezes 'b' at report 0, the
    training code trains 'a' again from iteration 2 on; four iterations of two steps, one report
    each. Logged: each report's frozen flags and unfreeze reasons, the layers frozen after it,
    and the weights' digests at the end."""
    import ray.train

    torch.manual_seed(0)
    model = _BeforeA()
    trained: nn.Module = model
    if rank is not None:
        trained = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    model.a.requires_grad_(False)  # held fixed by the training code
    opt = torch.optim.SGD(trained.parameters(), lr=0.1)
    every = [
        ik.TrainAccuracySubscriber(backend=None),
        ik.TestAccuracySubscriber(
            TensorDataset(*_batch_of_16(-1)), frequency="epoch", backend=None
        ),
    ]
    if rank is None:
        session = TrialSession(every, {})
    else:
        kept = subscribers_for_rank(every, rank)
        positions = [i for i, s in enumerate(every) if any(s is k for k in kept)]
        session = TrialSession(kept, {}, TrainWorker(rank, 2, None), positions)
    if not rank:  # rank 0, or the single process
        session.inbox = _Inbox([], [{"freeze": ["b"], "reasons": {"b": "converged"}}])
    log: dict[str, Any] = {"frozen": [], "unfreeze": [], "after": []}
    share = slice(0, 32) if rank is None else slice(rank * 16, rank * 16 + 16)
    with (
        mock.patch.object(ray.train, "get_checkpoint", return_value=None),
        mock.patch.object(ray.train, "report", lambda m, checkpoint=None: None),
    ):
        exporter = session.watch(trained, opt)
        for iteration in range(4):
            if iteration == 2:
                model.a.requires_grad_(True)  # gradual unfreezing: 'a' trains again
            for step in range(2):
                x, y = _batch_of_16(10 * iteration + step)
                opt.zero_grad()
                exporter.wrap_loss(F.cross_entropy)(trained(x[share]), y[share]).backward()
                opt.step()
            exporter.epoch_finished()
            # a checkpoint at report 2, where the unfreeze past 'a' is found
            saved = Path(out, f"checkpoint{'' if rank is None else rank}")
            saved.mkdir(exist_ok=True)
            checkpoint = ray.train.Checkpoint.from_directory(str(saved)) if iteration == 2 else None
            try:
                merged = session.report({}, checkpoint=checkpoint)
            except RuntimeError as error:
                log["error"] = str(error)
                break
            log["frozen"].append(sorted(n for n, flag in merged[keys.FROZEN].items() if flag))
            log["unfreeze"].append({n: r for n, r in merged[keys.UNFREEZE_REASON].items() if r})
            log["after"].append(sorted(exporter.frozen))
    log["digests"] = {n: _digest(p) for n, p in model.named_parameters()}
    session.close()
    log["restored"] = _restored_frozen(rank, saved)
    Path(out, f"rank{'' if rank is None else rank}.json").write_text(json.dumps(log))


def _restored_frozen(rank: int | None, saved: Path) -> list[str]:
    """The layers frozen once a new session of rank ``rank`` of the job restored the
    checkpoint saved at report 2 (a worker restart from it); for the single process (None),
    those its state file holds frozen (it was saved after the report's unfreeze)."""
    import ray.train

    if rank is None:
        state = torch.load(saved / STATE_FILE, weights_only=True)
        return sorted(state["exporter"]["frozen"])
    model = nn.parallel.DistributedDataParallel(_BeforeA(), find_unused_parameters=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    every = [
        ik.TrainAccuracySubscriber(backend=None),
        ik.TestAccuracySubscriber(
            TensorDataset(*_batch_of_16(-1)), frequency="epoch", backend=None
        ),
    ]
    kept = subscribers_for_rank(every, rank)
    positions = [i for i, s in enumerate(every) if any(s is k for k in kept)]
    session = TrialSession(kept, {}, TrainWorker(rank, 2, None), positions)
    checkpoint = ray.train.Checkpoint.from_directory(str(saved))
    with (
        mock.patch.object(ray.train, "get_checkpoint", return_value=checkpoint),
        mock.patch.object(ray.train, "report", lambda m, checkpoint=None: None),
    ):
        exporter = session.watch(model, opt)
        frozen = sorted(exporter.frozen)
    session.close()
    return frozen


def _retrained_worker(rank: int, store: str, out: str) -> None:
    in_gloo_group(rank, 2, store, partial(_retrained_run, rank, out))


def test_the_ranks_unfreeze_together_past_a_layer_the_training_code_trains_again(tmp_path) -> None:
    """'b' (frozen by the scheduler past 'a', which the training code held fixed) is unfrozen
    when 'a' trains again. The reference is the single-process trial: 'b' trains again from the
    first step after report 2. Both ranks must do the same, on rank 0's data flow (a -> b ->
    head): rank 1, which runs no probe, knows only the registration order (b, a, head), and
    deciding for itself kept 'b' frozen while rank 0 unfroze it, and the report failed on
    every rank. The ranks report the same frozen layers at every report, the unfreeze (with the
    reference's reason) at the report after (as rank 0's other releases in a job), and end with
    the same weights."""
    _retrained_run(None, str(tmp_path))
    reference = json.loads((tmp_path / "rank.json").read_text())
    reason = "layer 'a' before it trains again (held fixed by the training code)"
    assert reference["after"] == [["b"], ["b"], [], []]
    assert reference["unfreeze"] == [{}, {}, {"b": reason}, {}]
    run_ranks(_retrained_worker, (str(tmp_path / "store"), str(tmp_path)), 2, seconds=120)
    first, second = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert "error" not in first and "error" not in second, first.get("error")
    assert first["after"] == second["after"] == reference["after"]
    assert first["frozen"] == second["frozen"] == [[], ["b"], ["b"], []]
    assert first["unfreeze"] == second["unfreeze"] == [{}, {}, {}, {"b": reason}]
    assert first["digests"] == second["digests"]
    # a restart from the checkpoint of report 2 (saved before a job carries out what it found
    # there) trains 'b' as the single process does: the unfreeze is carried out at the restore
    assert reference["restored"] == first["restored"] == second["restored"] == []
