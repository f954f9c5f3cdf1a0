"""Sweeps survive the faults a long sweep meets: a dead mailbox, a corrupt state file, a trial
paused and resumed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from ray import tune
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import ikkuna_tune as ik
from ikkuna_tune.backends import EVENT_DIR
from ikkuna_tune.tune.session import STATE_FILE
from tests.tune.trainables import (
    StepCount,
    WeightCosine,
    WeightSum,
    data,
    eager_freezer,
    train_tiny,
)


def _eager_scheduler() -> ik.SVCCAScheduler:
    # freezes conv as soon as the metric's trend can be read (report 4: twice plateau + 1
    # values); never stops a trial
    return ik.SVCCAScheduler(
        metric="loss", mode="min", freeze_at=0.9, patience=1, min_travel=0.0, settle_window=1,
        settle_tol=1e9, plateau=1, min_delta=10.0, stop=False, freeze_best=True,
    )  # fmt: skip


def test_a_killed_mailbox_is_recreated_and_the_sweep_goes_on(ray_session, tmp_path) -> None:
    # the trial kills the mailbox before its fourth report, the one whose result makes the
    # scheduler order conv frozen: the order is posted to a new mailbox and carried out
    config = {"lr": 0.01, "iterations": 6, "kill_mailbox_at": 3}
    analysis = tune.run(
        ik.instrument(train_tiny, [WeightCosine(), StepCount()]),
        config=config,
        scheduler=_eager_scheduler(),
        storage_path=str(tmp_path),
        verbose=0,
    )
    (trial,) = analysis.trials
    assert trial.status == "TERMINATED"
    df = analysis.trial_dataframes[trial.trial_id].sort_values("training_iteration")
    assert df["training_iteration"].tolist() == [1, 2, 3, 4, 5, 6]
    assert df["steps_seen"].tolist() == [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]
    assert df["frozen/conv"].tolist() == [0, 0, 0, 0, 1, 1]
    # progress.csv has a column for self_similarity although the first report had no value
    header = (Path(trial.path) / "progress.csv").read_text().splitlines()[0].split(",")
    assert {"self_similarity/conv", "self_similarity/fc"} <= set(header)
    assert df["self_similarity/conv"].isna().tolist() == [True] + [False] * 5


@pytest.mark.parametrize("fault", ["corrupt_state", "drop_state"])
def test_a_checkpoint_without_readable_state_goes_on_honestly(ray_session, tmp_path, fault):
    # the trial crashes before its third report; restoring, it finds its state file truncated
    # or gone
    config = {
        "lr": 0.01,
        "iterations": 4,
        "checkpoint": True,
        "crash_marker": str(tmp_path / "crashed"),
        fault: True,
        "freeze_at_iteration": 0,
    }
    x, _ = data()
    subscribers = [StepCount(), WeightSum(backend="tb"), ik.SVCCASubscriber(x, 16, backend=None)]
    analysis = tune.run(
        ik.instrument(train_tiny, subscribers),
        config=config,
        storage_path=str(tmp_path),
        verbose=0,
        max_failures=1,
        # as documented for sweeps without SVCCAScheduler: Tune copies the stored progress
        # files back over the driver's as the trial restores, and the report made just before
        # the crash may not have been stored yet (a CI run lost one)
        callbacks=[ik.PersistTrialFiles()],
    )
    (trial,) = analysis.trials
    assert (tmp_path / "crashed").exists()
    assert trial.status == "TERMINATED"
    df = analysis.trial_dataframes[trial.trial_id].sort_values("training_iteration")
    assert df["training_iteration"].tolist() == [1, 2, 3, 4]
    # the user's model came back (iterations go on from the checkpoint); the subscribers'
    # state started afresh: the step count restarts, and conv, frozen in the lost state, is
    # trainable again
    assert df["iteration"].tolist() == [0, 1, 2, 3]
    assert df["steps_seen"].tolist() == [2.0, 4.0, 2.0, 4.0]
    assert df["frozen/conv"].tolist() == [1, 1, 0, 0]
    # the activations at initialisation are unknown after the restore: no similarity to them
    # (measured against the checkpoint's model, fc read about 1.0, "never moved"); SVCCA
    # starts comparing afresh at the restored attempt's second epoch
    assert df["init_similarity/fc"].notna().tolist() == [True, True, False, False]
    assert df["live_fraction/fc"].notna().tolist() == [True, True, False, False]
    assert df["self_similarity/fc"].notna().tolist() == [False, True, False, True]
    # TensorBoard: the crashed attempt's steps stay in the trial's run (its third iteration,
    # steps 4 and 5, included); the restored attempt counts steps from 0 in a run of its own
    events_dir = Path(trial.path) / EVENT_DIR
    events = EventAccumulator(str(events_dir))
    events.Reload()
    assert [e.step for e in events.Scalars("weight_sum/fc")] == list(range(6))
    (resumed,) = events_dir.glob("resumed_without_state_*")
    events = EventAccumulator(str(resumed))
    events.Reload()
    assert [e.step for e in events.Scalars("weight_sum/fc")] == list(range(4))


@pytest.mark.parametrize("again_at", [3, 2])
def test_a_restore_after_one_without_state_goes_on_in_its_run(
    ray_session, tmp_path, again_at
) -> None:
    """Lost state at the first restore (a run of its own from step 0), then a second crash,
    restored from a checkpoint saved after it, with state, or from the same checkpoint without
    state again: either way that attempt goes on in the same run, its steps after the
    checkpoint superseded there; the trial's first run stays whole."""
    config = {
        "lr": 0.01,
        "iterations": 5,
        "checkpoint": True,
        "crash_marker": str(tmp_path / "crashed"),
        "crash_again_marker": str(tmp_path / "crashed_again"),
        "crash_again_at": again_at,
        "drop_state": True,
    }
    analysis = tune.run(
        ik.instrument(train_tiny, [StepCount(), WeightSum(backend="tb")]),
        config=config,
        storage_path=str(tmp_path),
        verbose=0,
        max_failures=2,
        callbacks=[ik.PersistTrialFiles()],  # (see the test above)
    )
    (trial,) = analysis.trials
    assert (tmp_path / "crashed_again").exists() and trial.status == "TERMINATED"
    df = analysis.trial_dataframes[trial.trial_id].sort_values("training_iteration")
    assert df["iteration"].tolist() == [0, 1, 2, 3, 4]
    # counted again from the lost state (kept by the checkpoint after it, or lost again)
    assert df["steps_seen"].tolist() == [2.0, 4.0, 2.0, 4.0, 6.0]
    events_dir = Path(trial.path) / EVENT_DIR
    events = EventAccumulator(str(events_dir))
    events.Reload()
    assert [e.step for e in events.Scalars("weight_sum/fc")] == list(range(6))
    (resumed,) = events_dir.glob("resumed_without_state_*")  # one run, either way
    assert resumed.name == "resumed_without_state_checkpoint_000001"
    events = EventAccumulator(str(resumed))
    events.Reload()
    assert [e.step for e in events.Scalars("weight_sum/fc")] == list(range(6))


def test_a_corrupt_state_file_is_named_in_a_warning(tmp_path, caplog) -> None:
    from ikkuna_tune.tune.session import TrialSession
    from tests.conftest import TinyNet

    session = TrialSession([StepCount()], {})
    session.watch(TinyNet())
    bad = tmp_path / STATE_FILE
    bad.write_bytes(b"PK\x03\x04 not a whole zip file")
    with caplog.at_level(logging.WARNING):
        session._load_state_file(bad)
    assert str(bad) in caplog.text and "start afresh" in caplog.text
    assert session.subscribers[0].count == 0
    session.close()


def test_a_restored_trial_keeps_its_reports_with_any_scheduler(ray_session, tmp_path) -> None:
    # when the trial crashes, the storage copy of its progress.csv is older than its two
    # reports; Tune copies it back over the driver's on restore unless the callback saved them
    config = {
        "lr": 0.01,
        "iterations": 4,
        "checkpoint": True,
        "crash_marker": str(tmp_path / "crashed"),
        "stale_progress": True,
    }
    analysis = tune.run(
        ik.instrument(train_tiny, [StepCount(), WeightSum(backend="tb")]),
        config=config,
        storage_path=str(tmp_path),
        verbose=0,
        max_failures=1,
        callbacks=[ik.PersistTrialFiles()],
    )
    (trial,) = analysis.trials
    assert (tmp_path / "crashed").exists()
    df = analysis.trial_dataframes[trial.trial_id].sort_values("training_iteration")
    assert df["training_iteration"].tolist() == [1, 2, 3, 4]
    assert df["steps_seen"].tolist() == [2.0, 4.0, 6.0, 8.0]
    # the attempt that crashed wrote steps 4 and 5 (its third iteration) to TensorBoard before
    # the crash, and the restored attempt wrote them again: TensorBoard shows each step once
    events_dir = Path(trial.path) / EVENT_DIR
    assert len(list(events_dir.glob("events.out.tfevents*"))) == 2  # one file per attempt
    events = EventAccumulator(str(events_dir))
    events.Reload()
    assert [e.step for e in events.Scalars("weight_sum/conv")] == list(range(8))


@pytest.mark.parametrize("how", ["scheduler", "callback"])
def test_a_paused_and_resumed_trial_keeps_its_reports(ray_session, tmp_path, how) -> None:
    # MedianStoppingRule pauses a trial while too few others have reported to compare it with
    # and trials wait for a CPU; when the trial resumes, Tune copies its stored result.json
    # back over the driver's, which lacked the latest reports unless they were saved first
    from ray.tune.schedulers import MedianStoppingRule

    median = MedianStoppingRule(
        time_attr="training_iteration", grace_period=1, min_samples_required=1, hard_stop=False
    )
    # the eager freezer carries the metric and mode: it hands them to its base
    scheduler = eager_freezer(base=median) if how == "scheduler" else median
    metric = {} if how == "scheduler" else {"metric": "loss", "mode": "min"}
    analysis = tune.run(
        tune.with_resources(ik.instrument(train_tiny, [StepCount()]), {"cpu": 1}),
        config={"lr": tune.grid_search([0.01, 0.02, 0.03]), "iterations": 3, "checkpoint": True},
        scheduler=scheduler,
        **metric,
        storage_path=str(tmp_path),
        verbose=0,
        callbacks=[ik.PersistTrialFiles()] if how == "callback" else None,
    )
    assert median._last_pause, "no trial was paused: the test would show nothing"
    for trial in analysis.trials:
        rows = [
            json.loads(line)["training_iteration"]
            for line in (Path(trial.path) / "result.json").read_text().splitlines()
        ]
        assert rows == list(range(1, len(rows) + 1)), (trial.trial_id, rows)
        assert rows[-1] == trial.last_result["training_iteration"]
