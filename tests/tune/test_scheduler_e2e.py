"""SVCCAScheduler end to end (with a crash and restore): in the shared Ray session, and on a
simulated two-node cluster."""

from __future__ import annotations

import math

import pytest
from ray import tune

import ikkuna_tune as ik
from tests.tune.trainables import (
    StepCount,
    WeightCosine,
    WeightSum,
    eager_freezer,
    run_script,
    train_tiny,
)


def test_directives_freeze_layers_stop_trials_and_survive_restore(ray_session, tmp_path) -> None:
    # the movement and plateau rules are switched off (any weight counts as settled, no
    # improvement counts), so layers freeze at the first similarity; each trial reports a NaN
    # loss (the scheduler's metric) at its fourth report, and is stopped there as diverged
    scheduler = eager_freezer(stop=True)
    crashes = ("crash", "crash_ordered")
    config = {
        "lr": 0.01,
        "iterations": 10,
        "nan_loss_at": 3,
        "checkpoint": True,
        "variant": tune.grid_search(["plain", *crashes]),
        # each crashing trial crashes once, in its third iteration, before its third report
        "crash_marker": tune.sample_from(
            lambda spec: (
                str(tmp_path / f"crashed_{spec.config.variant}")
                if spec.config.variant in crashes
                else None
            )
        ),
        # "crash" freezes conv itself before its first checkpoint: the restored trial must come
        # back with conv frozen. "crash_ordered" is ordered to freeze conv after its second
        # report, whose checkpoint predates the order: the restored trial must apply it at once
        "freeze_at_iteration": tune.sample_from(
            lambda spec: 0 if spec.config.variant == "crash" else None
        ),
        # when it crashes, the storage copy of its progress.csv is older than its reports
        "stale_progress": tune.sample_from(lambda spec: spec.config.variant == "crash_ordered"),
    }
    analysis = tune.run(
        ik.instrument(train_tiny, [WeightCosine(), WeightSum(), StepCount()]),
        config=config,
        scheduler=scheduler,
        storage_path=str(tmp_path),
        verbose=0,
        max_failures=1,
    )
    assert all((tmp_path / f"crashed_{variant}").exists() for variant in crashes)
    for trial in analysis.trials:
        df = analysis.trial_dataframes[trial.trial_id].sort_values("training_iteration")
        iterations = df["training_iteration"].tolist()
        assert iterations == list(range(1, len(iterations) + 1))  # nothing lost, even on restore
        assert df["iteration"].tolist() == [i - 1 for i in iterations]
        # subscriber state comes back from the checkpoint: the count of training steps (two per
        # iteration) goes on after the crash, it does not start again
        assert df["steps_seen"].tolist() == [2.0 * i for i in iterations]
        # the first similarity arrives with the second report; the directive is applied right
        # after that report and confirmed by the next one. "crash" froze conv before its first
        # report and restarts from the checkpoint of its second: still frozen. "crash_ordered"
        # restarts from the checkpoint of its second report, written before the order: the
        # order is applied again at the restore, so the third report confirms it all the same.
        frozen = df["frozen/conv"].tolist()
        first = frozen.index(1)
        assert first == (0 if trial.config["variant"] == "crash" else 2)
        assert frozen[first:] == [1] * (len(df) - first)
        assert set(df["frozen/fc"]) == {0}  # the last trainable layer is never frozen
        # from the freeze on, conv's weights stop changing while training goes on (fc's weight
        # sum cannot show it: softmax gradients of the output layer sum to zero over classes)
        # (a weight sum is of the weights the epoch's last step started from, so after the
        # trial's own freeze at the end of its first epoch the sums are equal from report 2 on)
        unchanged_from = first + 1 if trial.config["variant"] == "crash" else first
        frozen_sums = df["weight_sum/conv"].tolist()[unchanged_from:]
        assert frozen_sums == [frozen_sums[0]] * len(frozen_sums)
        assert (df["loss"].iloc[:-1].diff().dropna() < 0).all()
        assert df["frozen_fraction"].iloc[-1] == pytest.approx(30 / 275)
        # the NaN loss of the fourth report: stopped there as diverged, not at 10
        assert len(df) == 4 and math.isnan(df["loss"].iloc[-1])
        assert scheduler.stopped_trials[trial.trial_id] == "diverged: non-finite value"


def test_directives_reach_a_trial_on_another_node() -> None:
    out = run_script("tests.tune.two_node")
    assert out["driver"] == out["head"] != out["worker"]
    assert out["trial_nodes"] == [out["worker"]]
    assert out["frozen_conv"] == [0, 0, 1, 1]  # asked after report 2, confirmed in report 3
    assert out["weight_sum_conv"][2] == out["weight_sum_conv"][3]


def test_a_trial_that_started_first_waits_resumes_exactly_and_is_judged(
    ray_session, tmp_path
) -> None:
    """One trial at a time: the first trial (flat at 0.1) has nothing to be compared with at a
    third of its budget, so it is paused there with its checkpoint; the trials that learn run;
    it resumes from its checkpoint (its training the same as theirs, which share its seed and
    learning rate) and is stopped as stuck at its next report."""
    from ikkuna_tune import compare

    flat, learns = [0.1] * 6, [0.6, 0.8, 0.9, 0.9, 0.9, 0.9]
    # (move_tol=0: its layers count as moving, so that only a comparison can judge it)
    scheduler = ik.SVCCAScheduler(
        metric="acc", mode="max", freeze=False, protect_top=1, move_tol=0.0
    )
    analysis = tune.run(
        # each trial takes both CPUs: one runs, the others wait to start
        tune.with_resources(ik.instrument(train_tiny, [WeightCosine()]), {"cpu": 2}),
        name="waits",
        config={
            "lr": 0.05,
            "iterations": 6,
            "checkpoint": True,
            "acc": tune.grid_search([flat, learns, learns]),
        },
        scheduler=scheduler,
        stop={"training_iteration": 6},
        storage_path=str(tmp_path),
        verbose=0,
    )
    first, *others = analysis.trials
    assert first.config["acc"] == flat
    made = [(d.action, d.iteration, d.rule) for t, d in scheduler.decisions if t == first.trial_id]
    assert made == [
        ("pause", 2, "waits to be compared"),
        ("stop", 3, "stuck: no progress while others learned"),
    ]
    frames = analysis.trial_dataframes
    waited = frames[first.trial_id].sort_values("training_iteration")
    assert waited["training_iteration"].tolist() == [1, 2, 3]
    assert waited["iteration"].tolist() == [0, 1, 2]  # resumed from report 2, not afresh
    for other in others:
        ran = frames[other.trial_id].sort_values("training_iteration")
        assert ran["training_iteration"].tolist() == list(range(1, 7))
        # the same seed and learning rate: the same losses, pause or not
        assert ran["loss"].tolist()[:3] == waited["loss"].tolist()
    assert not [d for t, d in scheduler.decisions if t != first.trial_id]
    why = compare.decisions(compare.load(tmp_path / "waits"))
    assert why.loc[why["action"] == "pause", "rule"].tolist() == ["waits to be compared"]


def test_a_scheduler_reused_for_a_resumed_or_a_new_run_of_the_same_name(
    ray_session, tmp_path
) -> None:
    """The run resumed with its errored trial restarted (``resume="AUTO+RESTART_ERRORED"``)
    adds that trial first, under a new id: no trial of the controller's is one the scheduler
    steered, as in another run of the same name (a notebook cell run again). The resume went
    on (refusing it, as a first fix did, failed it); the new run's trials are judged among
    themselves (judged among the earlier run's, a review's new trial was stopped as stuck)."""
    scheduler = eager_freezer(stop=False)
    trainable = ik.instrument(train_tiny, [WeightSum()])

    def run(config: dict, **options: object) -> object:
        return tune.run(
            trainable,
            config={"lr": 0.01, "iterations": 4, **config},
            scheduler=scheduler,
            storage_path=str(tmp_path),
            name="sweep",
            verbose=0,
            raise_on_failed_trial=False,
            **options,
        )

    marker = str(tmp_path / "crashed")
    first = run({"crash_marker": marker})  # crashes in its third iteration, for good
    assert [t.status for t in first.trials] == ["ERROR"]
    resumed = run({"crash_marker": marker}, resume="AUTO+RESTART_ERRORED")
    (trial,) = resumed.trials
    assert trial.status == "TERMINATED" and trial.trial_id != first.trials[0].trial_id
    assert set(scheduler._views) == {trial.trial_id}
    again = run({"lr": 0.02})  # the cell run again
    (new,) = again.trials
    assert new.status == "TERMINATED" and set(scheduler._views) == {new.trial_id}
