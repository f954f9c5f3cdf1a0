"""SVCCAScheduler decisions, driven with synthetic flattened results and no Ray."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from ray.tune.schedulers import (
    ASHAScheduler,
    FIFOScheduler,
    PopulationBasedTraining,
    ResourceChangingScheduler,
    TrialScheduler,
)

from ikkuna_tune import keys
from ikkuna_tune.tune.mailbox import mailbox_name
from ikkuna_tune.tune.results import iteration_budget
from ikkuna_tune.tune.scheduler import DECISIONS_FILE, SVCCAScheduler

LAYERS = ("conv1", "conv2", "fc1", "fc2")
CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


class FakeMailbox:
    name = mailbox_name("exp")  # FakeTrial's experiment

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.reachable = True
        self.steered: list[str] = []
        self.acknowledged: list[tuple[str, str]] = []

    def steer(self, trial_id: str) -> None:
        self.steered.append(trial_id)

    def acknowledge(self, trial_id: str, report: str) -> None:
        self.acknowledged.append((trial_id, report))

    def post(self, trial_id: str, directive: dict[str, Any]) -> bool:
        if self.reachable:
            self.posts.append((trial_id, directive))
        return self.reachable

    def discard(self, trial_id: str) -> None:
        pass


class FakeTrial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id
        self.experiment_dir_name = "exp"
        self.status = "RUNNING"
        self.config: dict[str, Any] = {}
        self.last_result: dict[str, Any] = {}  # (as a Trial that has not reported)


class FakeController:
    def __init__(self, trials) -> None:
        self.trials = trials

    def get_trials(self):
        return self.trials

    def get_live_trials(self):
        return self.trials


def result(
    sim: dict[str, float],
    frozen=(),
    it: int = 1,
    acc: float = 0.5,
    dist: dict[str, float] | None = None,
    live: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A flattened report; ``dist`` is each layer's distance from init (default 0.3)."""
    out: dict[str, Any] = {"training_iteration": it, "acc": acc}
    for name in LAYERS:
        if name in sim:
            out[f"self_similarity/{name}"] = sim[name]
        out[f"init_similarity/{name}"] = 1.0 - (dist or {}).get(name, 0.3)
        out[f"live_fraction/{name}"] = (live or {}).get(name, 1.0)
        out[f"frozen/{name}"] = int(name in frozen)
    return out


def make(**kwargs) -> tuple[SVCCAScheduler, FakeMailbox]:
    kwargs.setdefault("metric", "acc")
    kwargs.setdefault("mode", "max")
    kwargs.setdefault("freeze_best", True)  # these tests are about how a trial is frozen
    scheduler = SVCCAScheduler(**kwargs)
    mailbox = FakeMailbox()
    scheduler._mailbox = mailbox  # type: ignore[assignment]
    return scheduler, mailbox


def feed(scheduler, trial, reports) -> list[str]:
    return [scheduler.on_trial_result(None, trial, r) for r in reports]


def test_freezes_settled_prefix_once_the_metric_plateaus() -> None:
    scheduler, mailbox = make(freeze_at=0.99, patience=2, settle_window=3, plateau=2)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    sims = {"conv1": 0.995, "conv2": 0.991, "fc1": 0.5, "fc2": 0.999}
    accs = [0.5, 0.7, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]
    for i, acc in enumerate(accs[:8]):
        feed(scheduler, trial, [result(sims, it=i + 1, acc=acc)])
        # report 4: the last two reports gained 0.1 over the best before them; reports 5-7:
        # no new best, but the mean of the last three still stands above that of the three
        # before (0.8 against 0.75 at report 5, 0.667 at 6, 0.767 at 7): learning; report
        # 8: the best of the last six (0.8) still stands 0.1 above the best of the two before
        assert mailbox.posts == [], i + 1
    feed(scheduler, trial, [result(sims, it=9, acc=accs[8])])
    # fc1 is not settled, so fc2 (settled) is not frozen: only a prefix saves compute
    assert [p[1]["freeze"] for p in mailbox.posts] == [["conv1", "conv2"]]
    reason = mailbox.posts[0][1]["reasons"]["conv1"]
    assert "converged" in reason and "similarity=0.995" in reason
    assert "metric_gain=0," in reason and "metric_trend=0" in reason
    assert "metric_gain_longer=0)" in reason
    # until the trial confirms, the layers are pending and not posted again
    feed(scheduler, trial, [result(sims, it=10, acc=0.8)])
    assert len(mailbox.posts) == 1
    feed(scheduler, trial, [result(sims, frozen=("conv1", "conv2"), it=11, acc=0.8)])
    assert scheduler.frozen_layers == {"t1": ["conv1", "conv2"]}
    text = scheduler.debug_string()
    assert "t1: frozen ['conv1', 'conv2']; running" in text
    assert "freeze conv1 at report 9: converged" in text


def test_a_layer_called_again_later_waits_for_its_later_call_to_settle() -> None:
    scheduler, mailbox = make(freeze_at=0.99, patience=2, settle_window=3, plateau=2, stop=False)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    sims = {"conv1": 0.995, "conv2": 0.991, "fc1": 0.5, "fc2": 0.999}

    def report(i: int, again: float) -> dict[str, Any]:
        # conv1 is called a second time after fc1 (which still changes)
        out = result(sims, it=i, acc=0.8)
        out["self_similarity/conv1#2"] = again
        out["init_similarity/conv1#2"] = 0.7
        out["live_fraction/conv1#2"] = 1.0
        return out

    feed(scheduler, trial, [report(i + 1, 0.6) for i in range(5)])
    assert mailbox.posts == []  # its second call is far from settled
    feed(scheduler, trial, [report(i + 6, 0.995) for i in range(2)])
    assert [p[1]["freeze"] for p in mailbox.posts] == [["conv1", "conv2"]]


def test_by_default_the_best_trials_so_far_are_never_frozen() -> None:
    """Freezing perturbs a trial's final accuracy (by about a point in the fidelity sweeps),
    which can reorder near-tied best configurations: by default only trials that are not among
    the ``protect_top`` best so far are frozen; ``freeze_best=True`` freezes every trial."""
    every = dict.fromkeys(LAYERS, 1.0)
    for freeze_best in (False, True):
        scheduler, mailbox = make(
            patience=1,
            settle_window=1,
            plateau=1,
            protect_top=2,
            freeze_best=freeze_best,
            stop=False,
        )
        trials = {name: FakeTrial(name) for name in ("best", "second", "third")}
        for trial in trials.values():
            scheduler.on_trial_add(None, trial)
        for it in (1, 2, 3, 4):  # settled from the start, and on a plateau from report 4
            for name, acc in (("best", 0.9), ("second", 0.8), ("third", 0.5)):
                feed(scheduler, trials[name], [result(every, it=it, acc=acc)])
        posted = [trial_id for trial_id, _ in mailbox.posts]
        assert posted == (["best", "second", "third"] if freeze_best else ["third"])


def test_a_noisy_trial_close_behind_the_best_is_not_frozen() -> None:
    """A trial whose test accuracy swings by a few points from report to report and whose best
    is within that swing of the top ``protect_top`` may still win: it is not frozen. The same
    trial further behind than its swing is frozen."""
    every = dict.fromkeys(LAYERS, 1.0)
    # swings by up to 3 points, best 0.94 at report 4 (frozen no earlier than four reports on:
    # until then, the best of the last four stands above the best before them)
    noisy = [0.86, 0.93, 0.91, 0.94, 0.92, 0.93, 0.91, 0.93]
    for leaders, frozen in (((0.956, 0.951, 0.943), False), ((0.995, 0.99, 0.985), True)):
        scheduler, mailbox = make(
            patience=1, settle_window=3, plateau=1, protect_top=3, freeze_best=False, stop=False
        )
        trials = {name: FakeTrial(name) for name in ("a", "b", "c", "noisy")}
        for trial in trials.values():
            scheduler.on_trial_add(None, trial)
        for name, acc in zip("abc", leaders, strict=True):
            feed(scheduler, trials[name], [result(every, it=1, acc=acc)])
        # the leaders' single report cannot plateau; only the noisy trial can be frozen
        feed(
            scheduler,
            trials["noisy"],
            [result(every, it=i + 1, acc=a) for i, a in enumerate(noisy)],
        )
        posted = [trial_id for trial_id, _ in mailbox.posts]
        assert posted == (["noisy"] if frozen else [])


def test_a_trial_that_still_learns_keeps_every_layer() -> None:
    scheduler, mailbox = make()
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    every = dict.fromkeys(LAYERS, 0.999)
    feed(scheduler, trial, [result(every, it=i, acc=0.1 * i) for i in range(1, 9)])
    assert mailbox.posts == []


def test_plateau_zero_freezes_on_the_layers_signals_alone() -> None:
    """``plateau=0``: a settled layer freezes at its first similarity although the metric
    climbs (the default waits for a plateau), and the reason names no metric values."""
    scheduler, mailbox = make(patience=1, settle_window=1, plateau=0, stop=False)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    sims = {"conv1": 1.0, "conv2": 0.2}
    feed(scheduler, trial, [result(sims, it=1, acc=0.3), result(sims, it=2, acc=0.6)])
    assert [p[1]["freeze"] for p in mailbox.posts] == [["conv1"]]
    assert "metric_gain" not in mailbox.posts[0][1]["reasons"]["conv1"]
    with pytest.raises(ValueError, match="`plateau` to be an integer >= 0"):
        make(plateau=-1)


def test_last_trainable_layer_is_never_frozen() -> None:
    # (stop=False: flat from report 1 with no layer moving, the trial is stuck by report 3)
    scheduler, mailbox = make(patience=1, settle_window=1, plateau=1, stop=False)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    every = dict.fromkeys(LAYERS, 1.0)
    feed(scheduler, trial, [result(every, it=i) for i in (1, 2, 3, 4)])
    assert [p[1]["freeze"] for p in mailbox.posts] == [["conv1", "conv2", "fc1"]]
    feed(scheduler, trial, [result(every, frozen=LAYERS[:3], it=5)])
    assert len(mailbox.posts) == 1


def test_view_is_rebuilt_from_reports_after_a_restart() -> None:
    # a fresh scheduler (driver restarted, Tuner.restore) learns what is frozen from the report
    scheduler, mailbox = make(patience=1, settle_window=1, plateau=1, stop=False)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    sims = {"conv1": 1.0, "conv2": 0.999, "fc1": 0.3}
    feed(scheduler, trial, [result(sims, ("conv1",), it=i) for i in (7, 8, 9, 10)])
    assert [p[1]["freeze"] for p in mailbox.posts] == [["conv2"]]


def test_an_error_orders_the_freezes_again_for_the_restored_trial() -> None:
    scheduler, mailbox = make(patience=1, settle_window=1, plateau=1, stop=False)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    sims = {"conv1": 1.0, "conv2": 0.2}
    feed(scheduler, trial, [result(sims, it=i) for i in (1, 2, 3, 4)])
    assert [p[1]["freeze"] for p in mailbox.posts] == [["conv1"]]
    # the checkpoint the trial restores from may predate the order: order it again at once,
    # for the restored trial to apply at watch()
    scheduler.on_trial_error(None, trial)
    assert mailbox.posts[1][1]["freeze"] == ["conv1"] and mailbox.posts[1][1]["restore"]
    assert "converged" in mailbox.posts[1][1]["reasons"]["conv1"]
    feed(scheduler, trial, [result(sims, frozen=("conv1",), it=5)])
    assert len(mailbox.posts) == 2 and scheduler.frozen_layers == {"t1": ["conv1"]}


def test_a_restore_from_an_older_checkpoint_forgets_the_freezes_decided_after_it() -> None:
    scheduler, mailbox = make(patience=1, settle_window=1, plateau=1, stop=False)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    feed(scheduler, trial, [result({"conv1": 1.0, "conv2": 0.2}, it=i) for i in (1, 2, 3, 4)])
    feed(scheduler, trial, [result({"conv1": 1.0, "conv2": 1.0}, frozen=("conv1",), it=5)])
    feed(scheduler, trial, [result({"conv1": 1.0, "conv2": 1.0}, frozen=("conv1",), it=6)])
    assert [p[1]["freeze"] for p in mailbox.posts] == [["conv1"], ["conv2"]]
    # conv1 was ordered after report 4, conv2 after report 5; the trial fails after report 6
    # and restores from its checkpoint of report 4, which predates both orders
    trial.latest_checkpoint_result = SimpleNamespace(metrics={"training_iteration": 4})
    scheduler.on_trial_error(None, trial)
    assert mailbox.posts[-1][1]["freeze"] == ["conv1"] and mailbox.posts[-1][1]["restore"]
    assert scheduler.frozen_layers == {"t1": ["conv1"]}
    # it makes report 5 again, with conv2 settled again: ordered again, on the run it continues
    feed(scheduler, trial, [result({"conv1": 1.0, "conv2": 1.0}, frozen=("conv1",), it=5)])
    assert mailbox.posts[-1][1]["freeze"] == ["conv2"]
    assert "freeze conv2 at report 5" in mailbox.posts[-1][1]["reasons"]["conv2"]


class _ResumingBase(FIFOScheduler):
    """A base scheduler that hands back the trial given to it (as HyperBand resumes one it
    paused)."""

    def __init__(self, trial) -> None:
        super().__init__()
        self.trial = trial

    def choose_trial_to_run(self, controller):
        return self.trial


def test_a_paused_trial_resumes_with_the_freezes_up_to_its_checkpoint_only() -> None:
    """A trial paused at report 5 was ordered conv2 frozen at that report, but Tune paused it
    inside the report, before it read the order, and its latest checkpoint is of report 4: it
    makes report 5 again. The order waiting in its mailbox (judged on the run it leaves) was
    applied as it restored, so that report 5 was made again with conv2 frozen; it is replaced
    by the freezes decided up to report 4, ordered for the restore."""
    trial = FakeTrial("t1")
    scheduler, mailbox = make(
        patience=1, settle_window=1, plateau=1, stop=False, base=_ResumingBase(trial)
    )
    discarded: list[str] = []
    mailbox.discard = discarded.append  # type: ignore[method-assign]
    scheduler.on_trial_add(None, trial)
    feed(scheduler, trial, [result({"conv1": 1.0, "conv2": 0.2}, it=i) for i in (1, 2, 3, 4)])
    feed(scheduler, trial, [result({"conv1": 1.0, "conv2": 1.0}, frozen=("conv1",), it=5)])
    assert [p[1]["freeze"] for p in mailbox.posts] == [["conv1"], ["conv2"]]
    trial.status = "PAUSED"
    trial.last_result = {"training_iteration": 5}  # type: ignore[attr-defined]
    trial.latest_checkpoint_result = SimpleNamespace(metrics={"training_iteration": 4})
    assert scheduler.choose_trial_to_run(None) is trial
    assert discarded == ["t1"] and mailbox.steered == ["t1", "t1"]  # emptied, steered again
    assert mailbox.posts[-1][1]["freeze"] == ["conv1"] and mailbox.posts[-1][1]["restore"]
    assert scheduler.frozen_layers == {"t1": ["conv1"]}
    # a trial chosen while running (its actor reused) or afresh is left alone
    trial.status = "PENDING"
    posts = len(mailbox.posts)
    scheduler.choose_trial_to_run(None)
    assert len(mailbox.posts) == posts and discarded == ["t1"]


class _StoppingBase(_ResumingBase):
    """A base that stops every trial at each report, with ASHA's budget attributes."""

    _time_attr, _max_t = "training_iteration", 3

    def on_trial_result(self, controller, trial, result) -> str:
        return STOP


def test_a_base_stop_at_the_end_of_its_budget_is_no_early_stop() -> None:
    """ASHA (or HyperBand) ends every trial that reaches its ``max_t`` with a STOP: recorded as
    "stop at report 3: ... (metric)", it put the sweep's best trial among those stopped early.
    A STOP before ``max_t`` is recorded as the base's."""
    scheduler, _ = make(stop=False, base=_StoppingBase(None))
    early, full = FakeTrial("t1"), FakeTrial("t2")
    for trial in (early, full):
        scheduler.on_trial_add(None, trial)
    feed(scheduler, early, [result({"conv1": 0.5}, it=1, acc=0.2)])
    feed(scheduler, full, [result({"conv1": 0.5}, it=3, acc=0.9)])
    assert scheduler.stopped_trials == {"t1": "_StoppingBase (metric)"}
    ((trial_id, decision),) = scheduler.decisions
    assert trial_id == "t1" and decision.describe() == (
        "stop at report 1: _StoppingBase (metric) (acc=0.2)"
    )


def test_a_trial_the_base_stops_while_paused_is_recorded_as_stopped() -> None:
    """HyperBand's halving stops the trials it dropped while they are paused (Tune then calls
    ``on_trial_remove``, with no result): they were not recorded at all; a paused trial that
    made its budget is not an early stop either."""
    scheduler, _ = make(stop=False, base=_StoppingBase(None))
    scheduler.base.on_trial_result = lambda *args: "PAUSE"  # type: ignore[union-attr]
    dropped, finished, fresh = FakeTrial("t1"), FakeTrial("t2"), FakeTrial("t3")
    for trial in (dropped, finished, fresh):
        scheduler.on_trial_add(None, trial)
        trial.status = "PAUSED"
    scheduler.base.on_trial_remove = lambda *args: None  # type: ignore[union-attr]
    feed(scheduler, dropped, [result({"conv1": 0.5}, it=1, acc=0.4)])
    dropped.last_result = {"training_iteration": 1, "acc": 0.4}  # type: ignore[attr-defined]
    feed(scheduler, finished, [result({"conv1": 0.5}, it=3, acc=0.9)])
    finished.last_result = {"training_iteration": 3, "acc": 0.9}  # type: ignore[attr-defined]
    for trial in (dropped, finished, fresh):
        scheduler.on_trial_remove(None, trial)
    assert scheduler.stopped_trials == {"t1": "_StoppingBase (stopped while paused)"}
    ((trial_id, decision),) = scheduler.decisions
    assert trial_id == "t1" and decision.describe() == (
        "stop at report 1: _StoppingBase (stopped while paused) (acc=0.4)"
    )


def _named(report: dict[str, Any], name: str) -> dict[str, Any]:
    return {**report, keys.TRAIN_REPORT: name}


def test_a_ray_train_job_is_acknowledged_and_followed_through_restarts() -> None:
    """Every named report of a Ray Train job is acknowledged once handled (its rank 0 waits
    for that); a new attempt that resumed from report 4's checkpoint gets the freezes decided
    up to report 4 ordered again; a Tune restore (training_iteration from 1 again) starts the
    following anew instead of reading the renumbered reports as a worker restart."""
    scheduler, mailbox = make(patience=1, settle_window=1, plateau=1, stop=False)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    assert mailbox.steered == ["t1"]
    sims = {"conv1": 1.0, "conv2": 0.2}
    feed(scheduler, trial, [_named(result(sims, it=i), f"a-{i}") for i in (1, 2, 3, 4)])
    assert [p[1]["freeze"] for p in mailbox.posts] == [["conv1"]]  # ordered after report 4
    # the job carried it out after report 4's checkpoint, then a worker failed: the new
    # attempt resumed from that checkpoint, without the freeze
    feed(scheduler, trial, [_named(result(sims, it=5), "b-1@a-4")])
    assert mailbox.posts[-1][1] == {**mailbox.posts[-1][1], "freeze": ["conv1"], "restore": True}
    assert len(mailbox.posts) == 2
    feed(scheduler, trial, [_named(result(sims, frozen=("conv1",), it=6), "b-2@a-4")])
    assert len(mailbox.posts) == 2  # no restart: the same attempt
    assert [name for _, name in mailbox.acknowledged] == [
        "a-1",
        "a-2",
        "a-3",
        "a-4",
        "b-1@a-4",
        "b-2@a-4",
    ]
    # Tune restarts the trial: its reports count from 1 again, its job resumes from its own
    # latest checkpoint (of report b-2)
    feed(scheduler, trial, [_named(result(sims, frozen=("conv1",), it=1), "c-1@b-2")])
    feed(scheduler, trial, [_named(result(sims, frozen=("conv1",), it=2), "c-2@b-2")])
    assert not [p for p in mailbox.posts[2:] if p[1].get("restore")]  # nothing ordered again
    assert mailbox.acknowledged[-1] == ("t1", "c-2@b-2")
    # then a worker fails, and the job resumes from the checkpoint the Tune restart began
    # with: the reports since (renumbered from 1) are forgotten
    view = scheduler._views["t1"]
    assert view.iterations == [1, 2]
    feed(scheduler, trial, [_named(result(sims, frozen=("conv1",), it=3), "d-1@b-2")])
    assert view.iterations == [3]


def test_an_order_the_trial_did_not_carry_out_is_given_again() -> None:
    scheduler, mailbox = make(patience=1, settle_window=1, plateau=1, stop=False)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    sims = {"conv1": 1.0, "conv2": 0.2}
    feed(scheduler, trial, [result(sims, it=i) for i in (1, 2, 3, 4)])  # ordered at report 4
    # report 5 should confirm it; report 6 is one report of slack; at report 7 it is lost
    feed(scheduler, trial, [result(sims, it=5), result(sims, it=6)])
    assert len(mailbox.posts) == 1
    feed(scheduler, trial, [result(sims, it=7)])
    assert [p[1]["freeze"] for p in mailbox.posts] == [["conv1"], ["conv1"]]


def test_an_order_the_trial_did_not_carry_out_twice_is_not_given_again(caplog) -> None:
    # the trial refuses the layer (something untracked trains before it): after the second
    # loss the scheduler stops ordering it, and the layers after it wait behind it
    scheduler, mailbox = make(patience=1, settle_window=1, plateau=1, stop=False)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    sims = {"conv1": 1.0, "conv2": 1.0, "fc1": 0.2}
    with caplog.at_level(logging.WARNING, logger="ikkuna_tune"):
        feed(scheduler, trial, [result(sims, it=i) for i in range(1, 15)])
    assert [p[1]["freeze"] for p in mailbox.posts] == [["conv1", "conv2"]] * 2
    assert "not ordering ['conv1', 'conv2'] again (not carried out twice)" in caplog.text
    assert scheduler.frozen_layers == {"t1": []}


def test_an_order_that_could_not_be_posted_is_not_taken_as_given() -> None:
    scheduler, mailbox = make(patience=1, settle_window=1, plateau=1, stop=False)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    sims = {"conv1": 1.0, "conv2": 0.2}
    mailbox.reachable = False
    feed(scheduler, trial, [result(sims, it=i) for i in (1, 2, 3, 4)])
    assert scheduler.frozen_layers == {"t1": []}
    mailbox.reachable = True
    feed(scheduler, trial, [result(sims, it=5)])
    assert [p[1]["freeze"] for p in mailbox.posts] == [["conv1"]]


def test_nan_metric_or_similarity_stops_at_once() -> None:
    inf = float("inf")
    for bad in (
        {"acc": float("nan")},
        {"self_similarity/fc1": float("nan")},
        {"loss": float("nan")},
        {"acc": -inf},
    ):
        scheduler, mailbox = make()
        trial = FakeTrial("t1")
        scheduler.on_trial_add(None, trial)
        report = {**result(dict.fromkeys(LAYERS, 0.5)), **bad}
        assert scheduler.on_trial_result(None, trial, report) == STOP
        assert scheduler.stopped_trials == {"t1": "diverged: non-finite value"}
        assert mailbox.posts == []
        # the decision carries the value as reported: an infinity is no NaN
        ((_, decision),) = scheduler.decisions
        ((key, value),) = decision.values.items()
        assert key == next(iter(bad)) and str(value) == str(bad[key])


def test_an_infinite_loss_is_a_divergence_once_the_loss_was_finite() -> None:
    """``best_val_loss = inf`` before the first validation is a tracker's start: it stops no
    trial; the same key infinite after a finite value is a divergence, with the value, in a
    trial whose metric fell back to where it started (weights that diverged)."""
    scheduler, _ = make()
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    sims = dict.fromkeys(LAYERS, 0.5)
    first = {**result(sims, it=1), "best_val_loss": float("inf")}
    assert scheduler.on_trial_result(None, trial, first) == CONTINUE
    second = {**result(sims, it=2, acc=0.6), "best_val_loss": 0.9}
    assert scheduler.on_trial_result(None, trial, second) == CONTINUE
    third = {**result(sims, it=3, acc=0.5), "best_val_loss": float("inf")}
    assert scheduler.on_trial_result(None, trial, third) == STOP
    ((_, decision),) = scheduler.decisions
    assert decision.rule == "diverged: non-finite value"
    assert decision.values == {"best_val_loss": float("inf")}


def test_an_infinite_loss_in_a_trial_that_stands_where_it_learned_stops_and_freezes_nothing() -> (
    None
):
    """One batch whose loss overflowed makes an epoch's loss infinite while training goes on:
    a trial whose metric stands where it learned is not stopped on it, and nothing is frozen on
    that report (its layers settled and its metric on a plateau, it would be otherwise); the
    next finite report freezes as usual."""
    scheduler, mailbox = make(patience=1, settle_window=1, plateau=1)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    sims = dict.fromkeys(LAYERS, 1.0)
    losses = [float("inf"), 0.9, 0.8, 0.8, 0.8, float("inf"), 0.8]
    # a plateau from report 6 on (the best of the last four no higher than the best before)
    accs = [0.3, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]
    reports = [
        {**result(sims, it=i + 1, acc=acc), "best_val_loss": loss}
        for i, (acc, loss) in enumerate(zip(accs, losses, strict=True))
    ]
    assert feed(scheduler, trial, reports[:6]) == [CONTINUE] * 6
    assert mailbox.posts == [] and scheduler.decisions == []
    assert feed(scheduler, trial, reports[6:]) == [CONTINUE]
    assert [p[1]["freeze"] for p in mailbox.posts] == [["conv1", "conv2", "fc1"]]
    assert [(d.action, d.iteration) for _, d in scheduler.decisions] == [("freeze", 7)] * 3
    # the same reports with a finite loss at report 6: frozen there
    scheduler, mailbox = make(patience=1, settle_window=1, plateau=1)
    scheduler.on_trial_add(None, trial)
    reports[5]["best_val_loss"] = 0.8
    feed(scheduler, trial, reports[:6])
    assert [p[1]["freeze"] for p in mailbox.posts] == [["conv1", "conv2", "fc1"]]


def _diverged(it: int, acc: float | None, signals: bool = True) -> dict[str, Any]:
    """A report of a trial whose weights are NaN: its loss and weight norms NaN, and (with
    ``signals``: an epoch end that measures the layers) every layer signal NaN."""
    nan = float("nan")
    report = {"training_iteration": it, "acc": acc, "train_loss": nan}
    for name in LAYERS:
        report[f"weights_norm2/{name}"] = nan
        report[f"frozen/{name}"] = 0
        if signals:
            for key in ("self_similarity", "init_similarity", "live_fraction"):
                report[f"{key}/{name}"] = nan
    return report


@pytest.mark.parametrize("weight_norms", [True, False])
def test_a_trial_whose_network_diverged_is_stopped_at_that_report_whatever_it_learned_before(
    weight_norms: bool,
) -> None:
    """The metric measured every third report (None between) stood at 0.93; at report 4 the
    weights went NaN. That report stops the trial, on its NaN weight norms or, without them,
    on every layer's signals being NaN, though its metric is not measured there: the metric's
    last value, from before, is no evidence of where it stands (it ran on to report 6, and
    with no loss reported, to the end)."""
    scheduler, mailbox = make()
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    sims = dict.fromkeys(LAYERS, 0.5)
    accs = [0.5, None, None]  # measured at reports 1 and 4 ...
    reports = [result(sims, it=i + 1, acc=a) for i, a in enumerate(accs)]  # type: ignore[arg-type]
    reports[2]["acc"] = 0.93
    diverged = _diverged(4, None)
    if not weight_norms:
        diverged = {k: v for k, v in diverged.items() if not k.startswith("weights_norm2/")}
    assert feed(scheduler, trial, reports) == [CONTINUE] * 3
    assert scheduler.on_trial_result(None, trial, diverged) == STOP
    ((_, decision),) = scheduler.decisions
    assert decision.rule == "diverged: non-finite value" and decision.iteration == 4
    key = "weights_norm2/conv1" if weight_norms else "self_similarity/conv1"
    assert list(decision.values) == [key] and math.isnan(decision.values[key])
    assert mailbox.posts == []


def test_a_nan_loss_between_measurements_is_judged_at_the_next_measured_report() -> None:
    """Two reports per epoch, the layers and the metric measured at the epoch's second. A NaN
    loss at a mid-epoch report whose weights are finite (one batch overflowed) stops nothing
    there, even in a trial still at chance (judged on its metric from before, it was stopped),
    and nothing at the next report where the loss is finite again; a NaN loss where the metric
    measured at the same report fell back to chance stops the trial there."""
    cases = {
        "early overflow": ((0.1, 0.3, 0.6), {2: "nan"}, [CONTINUE] * 6),
        "fell back": ((0.3, 0.6, 0.1), {4: "nan", 5: "nan"}, [CONTINUE] * 5 + [STOP]),
    }
    for case, (accs, losses, expected) in cases.items():
        scheduler, _ = make()
        trial = FakeTrial("t1")
        scheduler.on_trial_add(None, trial)
        reports = []
        for epoch, acc in enumerate(accs):
            middle = {"training_iteration": 2 * epoch + 1, "acc": None, "train_loss": 0.5}
            middle.update({f"frozen/{name}": 0 for name in LAYERS})
            middle.update({f"weights_norm2/{name}": 2.0 for name in LAYERS})
            end = result(dict.fromkeys(LAYERS, 0.5), it=2 * epoch + 2, acc=acc)
            end["train_loss"] = 0.5
            end["acc_chance"] = middle["acc_chance"] = 0.1
            reports += [middle, end]
        for index, loss in losses.items():
            reports[index]["train_loss"] = float(loss)
        assert feed(scheduler, trial, reports) == expected, case
        if case == "fell back":
            ((_, decision),) = scheduler.decisions
            assert decision.iteration == 6 and list(decision.values) == ["train_loss"]


def test_a_nan_loss_in_a_trial_without_any_value_of_its_metric_stops_it() -> None:
    """A trial that never reported its metric (measured only at the end, or misspelt) has
    nothing to vouch for it: a NaN loss stops it at that report, not never."""
    scheduler, _ = make()
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    reports = [result(dict.fromkeys(LAYERS, 0.5), it=i, acc=None) for i in (1, 2, 3)]  # type: ignore[arg-type]
    for report in reports:
        report["train_loss"] = 0.5
    reports[1]["train_loss"] = float("nan")
    assert feed(scheduler, trial, reports[:2]) == [CONTINUE, STOP]
    ((_, decision),) = scheduler.decisions
    assert decision.iteration == 2 and list(decision.values) == ["train_loss"]


def test_one_layers_nan_similarity_is_judged_on_the_metric_of_its_own_report() -> None:
    """One layer's NaN similarity beside finite ones stops a trial whose metric at that report
    fell back to chance, though its best over the last reports stood high (it ran on, judged on
    that best), and not one whose metric at that report stands where it learned."""
    for last, expected in ((0.1, STOP), (0.9, CONTINUE)):
        scheduler, _ = make()
        trial = FakeTrial("t1")
        scheduler.on_trial_add(None, trial)
        accs = [0.3, 0.9, 0.93, last]
        reports = [
            result(dict.fromkeys(LAYERS, 0.5), it=i + 1, acc=a, dist=dict.fromkeys(LAYERS, 0.1 * i))
            for i, a in enumerate(accs)
        ]
        for report in reports:
            report["acc_chance"] = 0.1
        reports[-1]["self_similarity/fc1"] = float("nan")
        assert feed(scheduler, trial, reports) == [CONTINUE] * 3 + [expected], last


def test_a_diverged_network_is_never_frozen_when_freezing_only() -> None:
    """stop=False: a report whose weights are NaN freezes nothing, though its layers read as
    settled and the metric reached its plateau there (with finite weights it freezes)."""
    scheduler, mailbox = make(stop=False, patience=1, settle_window=1, plateau=1)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    sims = dict.fromkeys(LAYERS, 1.0)
    reports = [result(sims, it=i + 1, acc=a) for i, a in enumerate([0.3, 0.7, 0.7, 0.7, 0.7])]
    assert feed(scheduler, trial, reports) == [CONTINUE] * 5
    assert mailbox.posts == []  # one report short of the plateau
    # its weights NaN (its layers' signals still read as settled: measured before the step)
    diverged = {**result(sims, it=6, acc=0.7), **dict.fromkeys(
        [f"weights_norm2/{name}" for name in LAYERS], float("nan"))}  # fmt: skip
    assert scheduler.on_trial_result(None, trial, diverged) == CONTINUE
    assert mailbox.posts == [] and scheduler.decisions == []
    # the same report with finite weights: frozen there
    scheduler, mailbox = make(stop=False, patience=1, settle_window=1, plateau=1)
    scheduler.on_trial_add(None, trial)
    feed(scheduler, trial, [*reports, result(sims, it=6, acc=0.7)])
    assert mailbox.posts != []


def test_dead_layer_stops_the_trial_and_is_never_frozen() -> None:
    scheduler, mailbox = make()
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    sims = dict.fromkeys(LAYERS, 1.0)
    # at chance at its first report: one value shows where it stands where chance is known
    report = {**result(sims, live={"fc1": 0.0}, acc=0.1), "acc_chance": 0.1}
    decision = scheduler.on_trial_result(None, trial, report)
    assert decision == STOP
    assert scheduler.stopped_trials == {"t1": "dead layer"}
    assert "dead layer" in scheduler.debug_string() and "fc1" in scheduler.debug_string()
    assert mailbox.posts == []


@pytest.mark.parametrize("signal", ["dead layer", "NaN similarity"])
def test_a_layer_signal_stops_a_trial_at_chance_but_not_one_that_learned(signal) -> None:
    """A dead layer or one layer's NaN similarity at report 4: a trial whose accuracy rose
    from 0.1 to 0.6 (a residual branch that died while the skip connection learns on) runs on;
    one that stayed at chance (0.1, chance 0.1) is stopped there, and so is one that fell back
    to chance at that report (judged on its best over the last reports, 0.93, it ran on)."""

    def moved(i: int) -> dict[str, float]:
        return dict.fromkeys(LAYERS, 0.1 * (i + 1))

    cases = (
        ([0.1, 0.3, 0.45, 0.6], False),
        ([0.1, 0.11, 0.09, 0.1], True),
        ([0.3, 0.9, 0.93, 0.1], True),
    )
    for accs, stops in cases:
        scheduler, _ = make()
        trial = FakeTrial("t1")
        scheduler.on_trial_add(None, trial)
        reports = [
            # layers still moving away from their initialisation: nothing else stops it
            result(dict.fromkeys(LAYERS, 0.5), it=i + 1, acc=a, dist=moved(i))
            for i, a in enumerate(accs)
        ]
        if signal == "dead layer":
            reports[-1] = result(
                dict.fromkeys(LAYERS, 1.0), it=4, acc=accs[-1], dist=moved(3), live={"fc1": 0.0}
            )
        else:
            reports[-1]["self_similarity/fc1"] = float("nan")
        for report in reports:
            report["acc_chance"] = 0.1
        decisions = feed(scheduler, trial, reports)
        assert decisions == [CONTINUE] * 3 + [STOP if stops else CONTINUE], accs
        if stops:
            expected = "dead layer" if signal == "dead layer" else "diverged: non-finite value"
            assert scheduler.stopped_trials == {"t1": expected}


def test_stop_false_freezes_only() -> None:
    scheduler, _ = make(stop=False)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    report = {**result(dict.fromkeys(LAYERS, 0.5)), "acc": float("nan")}
    assert scheduler.on_trial_result(None, trial, report) == CONTINUE


def test_freeze_false_stops_only() -> None:
    """The reports that freeze conv1 and conv2 with the defaults freeze nothing; a NaN metric
    still stops the trial."""
    scheduler, mailbox = make(freeze_at=0.99, patience=2, settle_window=3, plateau=2, freeze=False)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    sims = {"conv1": 0.995, "conv2": 0.991, "fc1": 0.5, "fc2": 0.999}
    accs = [0.5, 0.7, 0.8, 0.8, 0.8, 0.8]
    decisions = feed(scheduler, trial, [result(sims, it=i + 1, acc=a) for i, a in enumerate(accs)])
    assert decisions == [CONTINUE] * 6 and mailbox.posts == []
    assert "freeze=False" in scheduler.debug_string()
    report = {**result(sims, it=7), "acc": float("nan")}
    assert scheduler.on_trial_result(None, trial, report) == STOP
    with pytest.raises(ValueError, match="freeze"):
        SVCCAScheduler(freeze="no")


def test_a_trial_behind_the_top_three_is_stopped_when_the_budget_is_known() -> None:
    scheduler, _ = make(max_t=10, grace=2)
    trials = [FakeTrial(f"t{i}") for i in range(4)]
    for t in trials:
        scheduler.on_trial_add(None, t)
    sims = dict.fromkeys(LAYERS, 0.9)

    def moving(it: int, acc: float) -> dict[str, Any]:  # layers still travel: not stuck
        return result(sims, it=it, acc=acc, dist=dict.fromkeys(LAYERS, 0.05 * it))

    for it in range(1, 4):
        for t, acc in zip(trials[:3], (0.9, 0.92, 0.95)):
            scheduler.on_trial_result(None, t, moving(it, acc))
    # the fourth creeps up by 0.015 a report: at 3x that rate it ends at 0.24 + 0.045 * 6 < 0.9;
    # it never gains a tenth of its way to the target, so it is judged from a third of the
    # budget on (report 4 of 10), and stopped when a second reading agrees (report 5)
    decisions = [
        scheduler.on_trial_result(None, trials[3], moving(it, 0.18 + 0.015 * it))
        for it in range(1, 6)
    ]
    assert decisions == [CONTINUE, CONTINUE, CONTINUE, CONTINUE, STOP]
    assert scheduler.stopped_trials == {"t3": "cannot reach the top 3"}
    # without a known budget nothing is stopped as behind
    scheduler, _ = make(grace=2)
    for t in trials:
        scheduler.on_trial_add(None, t)
    for it in range(1, 4):
        for t, acc in zip(trials, (0.9, 0.92, 0.95, 0.2)):
            assert scheduler.on_trial_result(None, t, moving(it, acc)) == CONTINUE


def test_a_trial_stopped_as_diverged_is_no_bar_for_the_others() -> None:
    """A trial that learned to 0.63 and then diverged (NaN) is stopped; a sweep ranked by last
    values leaves it out and one ranked by best values holds it at 0.63, so a slow trial at
    0.2 is not stopped for being unable to reach it: the third best of the others is then a
    trial at chance."""
    scheduler, _ = make(max_t=16, grace=2)
    trials = [FakeTrial(f"t{i}") for i in range(5)]
    for t in trials:
        scheduler.on_trial_add(None, t)
    sims = dict.fromkeys(LAYERS, 0.9)

    def moving(it: int, acc: float) -> dict[str, Any]:
        return result(sims, it=it, acc=acc, dist=dict.fromkeys(LAYERS, 0.05 * it))

    for it, acc in enumerate([0.3, 0.5, 0.63], 1):
        assert scheduler.on_trial_result(None, trials[0], moving(it, acc)) == CONTINUE
    assert scheduler.on_trial_result(None, trials[0], moving(4, math.nan)) == STOP
    assert scheduler.stopped_trials == {"t0": "diverged: non-finite value"}
    for it in range(1, 7):
        for t, acc in zip(trials[1:4], (0.97, 0.552, 0.098)):
            scheduler.on_trial_result(None, t, moving(it, acc))
    slow = [0.09, 0.1, 0.12, 0.13, 0.15, 0.155, 0.16, 0.165, 0.17]  # + 3 * 0.005 a report
    decisions = [
        scheduler.on_trial_result(None, trials[4], moving(it, acc))
        for it, acc in enumerate(slow, 1)
    ]
    assert STOP not in decisions and "t4" not in scheduler.stopped_trials


def test_a_trial_stopped_as_diverged_still_counts_among_the_others() -> None:
    """Left out of the bar to reach, a diverged trial still counts where a trial is ranked
    among the others: a sweep's leader, flat at 0.5 with still layers while one other trial
    learns, stays a contender (it needs protect_top others to be ranked among) and runs on."""
    scheduler, _ = make(max_t=20)
    t0, t1, t2, lead = (FakeTrial(n) for n in ("t0", "t1", "t2", "lead"))
    for t in (t0, t1, t2, lead):
        scheduler.on_trial_add(None, t)
    sims = dict.fromkeys(LAYERS, 0.9)

    def moving(it: int, acc: float) -> dict[str, Any]:
        return result(sims, it=it, acc=acc, dist=dict.fromkeys(LAYERS, 0.05 * it))

    for it, acc in enumerate([0.2, 0.25, 0.3], 1):
        scheduler.on_trial_result(None, t0, moving(it, acc))
    assert scheduler.on_trial_result(None, t0, moving(4, math.nan)) == STOP
    for it in range(1, 7):
        scheduler.on_trial_result(None, t1, moving(it, 0.30 + 0.03 * (it - 1)))
        scheduler.on_trial_result(None, t2, moving(it, 0.30))
    still = dict.fromkeys(LAYERS, 0.3)
    for it in range(1, 7):
        assert scheduler.on_trial_result(None, lead, result(sims, it=it, acc=0.5, dist=still)) == (
            CONTINUE
        )
    assert scheduler.stopped_trials == {"t0": "diverged: non-finite value"}


def test_a_layer_reported_held_by_the_training_code_is_passed_over() -> None:
    """``trainable/<layer>`` 0 (the trial holds every parameter of it fixed, so it never leaves
    its initialisation): the freeze of the settled layers after it is ordered as after a
    frozen layer; reported trainable, the same still layer holds them back."""
    accs = [0.5, 0.7, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]
    sims = {"conv1": 1.0, "conv2": 0.995, "fc1": 0.5, "fc2": 0.999}
    for held in (False, True):
        scheduler, mailbox = make(freeze_at=0.99, patience=2, settle_window=3, plateau=2)
        trial = FakeTrial("t1")
        scheduler.on_trial_add(None, trial)
        for i, acc in enumerate(accs):
            out = result(sims, it=i + 1, acc=acc, dist={"conv1": 0.0})
            out.update({f"trainable/{name}": 1 for name in LAYERS})
            out["trainable/conv1"] = 0 if held else 1
            feed(scheduler, trial, [out])
        posts = [p[1]["freeze"] for p in mailbox.posts]
        assert posts == ([["conv2"]] if held else []), held


def test_the_budget_is_read_from_a_maximum_iteration_stopper(caplog) -> None:
    """``stop=MaximumIterationStopper(10)`` (alone, or with others in a CombinedStopper) is the
    same budget as ``stop={"training_iteration": 10}``: the trial behind is judged from report
    4 on and stopped at report 5 (two readings).
    """
    from ray.tune.execution.tune_controller import TrialRunnerWrapper
    from ray.tune.stopper import CombinedStopper, MaximumIterationStopper, TimeoutStopper

    for stopper in (
        MaximumIterationStopper(10),
        CombinedStopper(TimeoutStopper(3600), MaximumIterationStopper(10)),
    ):
        scheduler, _ = make(grace=2)
        trials = [FakeTrial(f"t{i}") for i in range(4)]
        controller = FakeController(trials)
        controller._stopper = stopper
        # as Tune hands it to schedulers (TuneController._wrapped): reading its private
        # attributes logs a warning
        public = {"get_trials", "get_live_trials"}  # (of what Tune lets a scheduler read)
        wrapped = TrialRunnerWrapper(controller, trial_executor=None, runner_whitelist_attr=public)
        with caplog.at_level(logging.WARNING):
            for t in trials:
                scheduler.on_trial_add(wrapped, t)
        assert "restricted" not in caplog.text

        def moving(it: int, acc: float) -> dict[str, Any]:
            sims = dict.fromkeys(LAYERS, 0.9)
            return result(sims, it=it, acc=acc, dist=dict.fromkeys(LAYERS, 0.05 * it))

        for it in range(1, 4):
            for t, acc in zip(trials[:3], (0.9, 0.92, 0.95)):
                scheduler.on_trial_result(controller, t, moving(it, acc))
        decisions = [
            scheduler.on_trial_result(controller, trials[3], moving(it, 0.18 + 0.015 * it))
            for it in range(1, 6)
        ]
        assert decisions == [CONTINUE, CONTINUE, CONTINUE, CONTINUE, STOP], stopper
        assert scheduler.stopped_trials == {"t3": "cannot reach the top 3"}


def test_iteration_budget_takes_the_first_criterion_a_trial_meets() -> None:
    from ray.tune.stopper import CombinedStopper, FunctionStopper, MaximumIterationStopper

    trial = FakeTrial("t0")
    trial.stopping_criterion = {"training_iteration": 12}
    assert iteration_budget(trial) == 12
    assert iteration_budget(trial, MaximumIterationStopper(8)) == 8
    assert iteration_budget(trial, MaximumIterationStopper(20)) == 12
    trial.stopping_criterion = {"training_iteration": 7.2}  # Tune stops at iteration 8
    assert iteration_budget(trial) == 8
    trial.stopping_criterion = {"test_accuracy": 0.99}
    assert iteration_budget(trial) is None
    assert iteration_budget(trial, FunctionStopper(lambda trial_id, result: False)) is None
    nested = CombinedStopper(MaximumIterationStopper(9), MaximumIterationStopper(6))
    assert iteration_budget(trial, nested) == 6
    # a trial restored at iteration 5 under a fresh stopper runs 6 more results (its count of
    # the trial starts again), one whose stopper saw 2 of its 5 results runs 4 more
    trial.last_result = {"training_iteration": 5}
    assert iteration_budget(trial, MaximumIterationStopper(6)) == 11
    counted = MaximumIterationStopper(6)
    for _ in range(2):
        counted("t0", {})
    assert iteration_budget(trial, counted) == 9


def test_a_sweep_without_a_budget_says_so_once(caplog) -> None:
    scheduler, _ = make()
    with caplog.at_level(logging.INFO, logger="ikkuna_tune.tune.scheduler"):
        for i in range(3):
            scheduler.on_trial_add(FakeController([]), FakeTrial(f"t{i}"))
    told = [r for r in caplog.records if "found no budget" in r.getMessage()]
    assert len(told) == 1 and "max_t=" in told[0].getMessage()
    # a warning: rules are off, and a script without logging set up shows warnings only
    assert told[0].levelno == logging.WARNING
    caplog.clear()
    scheduler, _ = make(max_t=5)
    with caplog.at_level(logging.INFO, logger="ikkuna_tune.tune.scheduler"):
        scheduler.on_trial_add(FakeController([]), FakeTrial("t0"))
    assert not [r for r in caplog.records if "found no budget" in r.getMessage()]


def test_a_trial_at_chance_is_judged_against_others_at_their_reported_chance_level() -> None:
    """A lone trial at chance runs on (a late starter sits there as long as a stuck one);
    beside 3 trials that learned it is stopped at a third of a known budget (report 4 of 12),
    with the rule and values; unless the level those trials held is within ``stall_delta`` of
    the chance level the scheduler reads from ``<metric>_chance``: they learned nothing
    either."""
    sims = dict.fromkeys(LAYERS, 0.9)

    def moving(it: int, acc: float, chance: float | None) -> dict[str, Any]:  # layers travel
        report = result(sims, it=it, acc=acc, dist=dict.fromkeys(LAYERS, 0.05 * it))
        return report if chance is None else {**report, "acc_chance": chance}

    def run(chance: float | None, learners: int) -> tuple[SVCCAScheduler, list[str]]:
        scheduler, _ = make(max_t=12)
        stuck = FakeTrial("stuck")
        others = [FakeTrial(f"learner{i}") for i in range(learners)]
        for t in (stuck, *others):
            scheduler.on_trial_add(None, t)
        decisions = []
        for it in range(1, 5):
            for other in others:
                scheduler.on_trial_result(None, other, moving(it, 0.1 + 0.05 * it, chance))
            decisions.append(scheduler.on_trial_result(None, stuck, moving(it, 0.1, chance)))
        return scheduler, decisions

    assert run(chance=0.1, learners=0)[1] == [CONTINUE] * 4
    assert run(chance=0.1, learners=2)[1] == [CONTINUE] * 4
    scheduler, decisions = run(chance=0.1, learners=3)
    assert decisions == [CONTINUE] * 3 + [STOP]
    assert scheduler.stopped_trials == {"stuck": "stuck: no progress while others learned"}
    text = "stop at report 4: stuck: no progress while others learned (progress=0, best=0.1, "
    assert text + "target=0.2)" in scheduler.debug_string()
    # held at 0.2, within stall_delta of a chance level of 0.19: nobody learned
    assert run(chance=0.19, learners=3)[1] == [CONTINUE] * 4


def test_a_stuck_trial_is_stopped_after_grace_but_a_moving_one_is_not() -> None:
    # (at report 3, a third of the budget: not before, see test_convergence's warm-up test)
    scheduler, _ = make(grace=2, max_t=9)
    stuck, moving = FakeTrial("stuck"), FakeTrial("moving")
    learners = [FakeTrial(f"learner{i}") for i in range(3)]  # three trials ahead of both
    for t in (stuck, moving, *learners):
        scheduler.on_trial_add(None, t)
    sims = dict.fromkeys(LAYERS, 1.0)
    for it in range(1, 6):
        for i, learner in enumerate(learners):
            ahead = result(sims, it=it, acc=0.2 + 0.1 * it + 0.01 * i, dist={"fc1": 0.05 * it})
            assert scheduler.on_trial_result(None, learner, ahead) == CONTINUE
        still = scheduler.on_trial_result(None, stuck, result(sims, it=it, acc=0.1))
        # at chance too, but its layers keep travelling: a slow start, not a dead end (with
        # the learners ahead, the rule that compares trials may stop it: not this one)
        going = result(sims, it=it, acc=0.1, dist=dict.fromkeys(LAYERS, 0.02 * it))
        if "moving" not in scheduler.stopped_trials:
            scheduler.on_trial_result(None, moving, going)
        assert still == (STOP if it == 3 else CONTINUE)
        if still == STOP:
            break
    assert scheduler.stopped_trials["stuck"] == "stuck: no progress and no layer moving"
    assert "no layer moving" not in scheduler.stopped_trials.get("moving", "")


def _loss_sweep(
    metric: str, mode: str, with_accuracy: bool = True, unit: float = 1.0
) -> dict[str, str]:
    """Three learners, a trial whose loss blew up at its first report and then sat at chance
    (accuracy at its chance level, layers still), and one as flat whose layers keep moving:
    steered on ``metric``; the stopped trials' rules."""
    scheduler, _ = make(grace=2, metric=metric, mode=mode, max_t=9)
    stuck, moving = FakeTrial("stuck"), FakeTrial("moving")
    learners = [FakeTrial(f"learner{i}") for i in range(3)]
    for t in (stuck, moving, *learners):
        scheduler.on_trial_add(None, t)
    sims = dict.fromkeys(LAYERS, 1.0)

    def report(it: int, loss: float, acc: float, dist: dict[str, float] | None = None) -> dict:
        out = result(sims, it=it, acc=acc, dist=dist)
        out["loss"] = loss
        if with_accuracy:
            out[keys.TEST_ACCURACY], out[keys.TEST_ACCURACY_CHANCE] = acc * unit, 0.1 * unit
        return out

    for it in range(1, 7):
        for i, learner in enumerate(learners):
            acc = 0.2 + 0.1 * it + 0.01 * i
            ahead = report(it, 2.3 - 0.3 * it, acc, dist={"fc1": 0.05 * it})
            assert scheduler.on_trial_result(None, learner, ahead) == CONTINUE
        blown = 59.2 if it == 1 else 2.3 + 0.001 * (it % 2)
        if "stuck" not in scheduler.stopped_trials:
            scheduler.on_trial_result(None, stuck, report(it, blown, 0.1 + 0.002 * (it % 2)))
        going = report(it, blown, 0.1, dist=dict.fromkeys(LAYERS, 0.02 * it))
        if "moving" not in scheduler.stopped_trials:
            scheduler.on_trial_result(None, moving, going)
        # (the rule that compares trials may stop the moving one: never as motionless)
        assert "no layer moving" not in scheduler.stopped_trials.get("moving", "")
        if "stuck" in scheduler.stopped_trials:
            return {"at": str(it), "stuck": scheduler.stopped_trials["stuck"]}
    return {k: v for k, v in scheduler.stopped_trials.items() if k == "stuck"}


def test_a_loss_steered_trial_whose_accuracy_sits_at_chance_is_stopped_as_an_accuracy_one() -> None:
    """A loss that blew up at the first report and fell back to chance reads as progress; the
    accuracy reported beside it (with its chance level) says the trial is stuck. Reference:
    the same sweep steered on that accuracy."""
    on_accuracy = _loss_sweep(keys.TEST_ACCURACY, "max")
    assert on_accuracy == {"at": "3", "stuck": "stuck: no progress and no layer moving"}
    on_loss = _loss_sweep("loss", "min")
    assert on_loss == {"at": "3", "stuck": "stuck: accuracy at chance and no layer moving"}
    # an accuracy in percent, its chance level too (10.0): the same decisions
    assert _loss_sweep("loss", "min", unit=100.0) == on_loss
    # without an accuracy beside the loss nothing tells that the loss's fall is no learning
    # (the rule that compares trials may stop it later, as behind: not as motionless)
    assert "no layer moving" not in _loss_sweep("loss", "min", with_accuracy=False).get("stuck", "")


def test_a_stuck_looking_trial_among_the_best_is_not_stopped() -> None:
    # a fine-tuning trial that starts near its best, with layers that barely leave their
    # pretrained values, leading the sweep: "no progress and no layer moving" is no reason to
    # stop the trial that answers the sweep
    scheduler, _ = make(grace=2)
    leader = FakeTrial("leader")
    others = [FakeTrial(f"other{i}") for i in range(3)]
    for t in (leader, *others):
        scheduler.on_trial_add(None, t)
    sims = dict.fromkeys(LAYERS, 1.0)
    for it in range(1, 7):
        for i, other in enumerate(others):
            behind = result(sims, it=it, acc=0.3 + 0.05 * it + 0.01 * i, dist={"fc1": 0.05 * it})
            assert scheduler.on_trial_result(None, other, behind) == CONTINUE
        leading = result(sims, it=it, acc=0.9 + 0.001 * it, dist=dict.fromkeys(LAYERS, 0.001))
        assert scheduler.on_trial_result(None, leader, leading) == CONTINUE
    assert scheduler.stopped_trials == {}


def test_a_flat_leader_by_a_hair_is_not_stopped_as_stuck() -> None:
    from ikkuna_tune.tune.convergence import ConvergenceRules, TrialHistory, stop_verdict

    def trial(values: list[float]) -> TrialHistory:
        history = TrialHistory(layers=["fc"])
        for value in values:
            history.add(value, {"fc": 1.0}, {"fc": 0.999}, {"fc": 0.5})
        return history

    leader = trial([0.970, 0.971, 0.972, 0.971])
    others = [[0.90, 0.95, 0.970, 0.969], [0.91, 0.96, 0.968, 0.966], [0.92, 0.965, 0.969, 0.96]]
    assert stop_verdict(leader, ConvergenceRules(), others, budget=None) is None
    # flat at chance like the others, leading by noise: no contender
    noisy = trial([0.1, 0.1012, 0.1005, 0.1])
    flat = [[0.1, 0.1008, 0.1, 0.1001], [0.1003, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1007, 0.1]]
    flat.append([0.1, 0.2, 0.4, 0.6])  # (one learned meanwhile: the flat start is not all's)
    verdict = stop_verdict(noisy, ConvergenceRules(), flat, budget=12)
    assert verdict is not None and verdict.rule == "stuck: no progress and no layer moving"


def test_stuck_trials_that_outrank_no_one_are_stopped_though_few_others_learn() -> None:
    # six trials flat at chance, two learning: each flat one has only two trials ahead of it,
    # but it outranks none, so it is no contender, and the stuck rule stops it
    from ikkuna_tune.tune.convergence import ConvergenceRules, TrialHistory, stop_verdict

    def trial(values: list[float], dist: float) -> TrialHistory:
        history = TrialHistory(layers=["fc1", "fc2"])
        for k, value in enumerate(values):
            d = dist * k
            history.add(value, dict.fromkeys(("fc1", "fc2"), 0.9), {"fc1": 1 - d, "fc2": 1 - d},
                        dict.fromkeys(("fc1", "fc2"), 0.5))  # fmt: skip
        return history

    learners = [trial([0.1 + 0.16 * k for k in range(6)], 0.05) for _ in range(2)]
    flat = [trial([0.1] * 6, 0.0) for _ in range(6)]
    everyone = learners + flat
    for budget in (10, 18):  # (6 reports: a third of the budget or more)
        for stuck in flat:
            others = [t.metric for t in everyone if t is not stuck]
            verdict = stop_verdict(stuck, ConvergenceRules(), others, budget)
            assert verdict is not None and verdict.rule == "stuck: no progress and no layer moving"


def test_a_late_trial_is_protected_against_where_the_others_stood_at_the_same_report() -> None:
    # trials run one at a time: three finished after their learning-rate drop at report 6;
    # a late trial at report 5, before its own drop, is second at report 5 and must not be
    # frozen as behind the others' final values
    scheduler, mailbox = make(freeze_best=False, grace=1)
    done = [FakeTrial(f"done{i}") for i in range(3)]
    late = FakeTrial("late")
    for t in (*done, late):
        scheduler.on_trial_add(None, t)
    for i, trial in enumerate(done):
        curve = [0.80, 0.84, 0.85, 0.855, 0.86, 0.93, 0.935, 0.94]
        reports = [
            result(dict.fromkeys(LAYERS, 0.999), it=it, acc=a - 0.01 * i, dist={"fc1": 0.1})
            for it, a in enumerate(curve, start=1)
        ]
        feed(scheduler, trial, reports)
        scheduler.on_trial_complete(None, trial, reports[-1])
    # the late trial has settled before its drop: similar layers, distance flat, metric flat
    for it, acc in enumerate([0.84, 0.86, 0.865, 0.866, 0.866], start=1):
        settled = result(
            dict.fromkeys(LAYERS, 0.9995), it=it, acc=acc, dist=dict.fromkeys(LAYERS, 0.1)
        )
        assert scheduler.on_trial_result(None, late, settled) == CONTINUE
    assert [post for post in mailbox.posts if post[0] == "late"] == []


def test_wrapped_asha_stops_a_poor_trial_at_its_rung() -> None:
    base = ASHAScheduler(time_attr="training_iteration", grace_period=1, reduction_factor=2)
    scheduler, _ = make(base=base)
    assert base._metric == "acc" and base._mode == "max"
    good, bad = FakeTrial("good"), FakeTrial("bad")
    controller = FakeController([good, bad])
    for trial in (good, bad):
        scheduler.on_trial_add(controller, trial)
    sims = {"conv1": 0.5}
    assert scheduler.on_trial_result(controller, good, result(sims, it=1, acc=0.9)) == CONTINUE
    assert scheduler.on_trial_result(controller, bad, result(sims, it=1, acc=0.1)) == STOP
    assert scheduler.stopped_trials == {"bad": "AsyncHyperBandScheduler (metric)"}
    # the value behind the base's decision is in its reason
    stop = scheduler._views["bad"].stopped
    assert stop is not None and stop.describe() == (
        "stop at report 1: AsyncHyperBandScheduler (metric) (acc=0.1)"
    )


@pytest.mark.parametrize("base_name", ["asha", "median"])
def test_a_wrapped_base_leaves_a_report_without_its_metric_unjudged(base_name) -> None:
    """A report that did not measure the metric holds it as None (an accuracy measured every
    100 batches, epochs of fewer): Tune's schedulers multiply or average it and raised, which
    ended the whole sweep. The base is handed the report without it, as a report that lacks
    the key, and judges the trial at its next measured report."""
    from ray.tune.schedulers import MedianStoppingRule

    if base_name == "asha":
        base: Any = ASHAScheduler(
            time_attr="training_iteration", grace_period=1, reduction_factor=2
        )
    else:
        base = MedianStoppingRule(
            time_attr="training_iteration", grace_period=1, min_samples_required=1
        )
    scheduler, _ = make(base=base)
    good, bad = FakeTrial("good"), FakeTrial("bad")
    controller = FakeController([good, bad])
    for trial in (good, bad):
        scheduler.on_trial_add(controller, trial)
    sims = {"conv1": 0.5}
    unmeasured = {**result(sims, it=1), "acc": None}
    for trial in (good, bad):
        assert scheduler.on_trial_result(controller, trial, unmeasured) == CONTINUE
    assert scheduler.on_trial_result(controller, good, result(sims, it=2, acc=0.9)) == CONTINUE
    # judged where measured: the poor trial is stopped at its first measured report
    assert scheduler.on_trial_result(controller, bad, result(sims, it=2, acc=0.1)) == STOP
    scheduler.on_trial_complete(controller, good, {**result(sims, it=3), "acc": None})


def test_a_trial_restarted_from_scratch_reports_its_loss_tracker_at_inf_again() -> None:
    """``best_val_loss`` is infinite until the first validation: no divergence at a trial's
    first report. A trial that fails before its first checkpoint starts over, and its first
    report is the first again (it was stopped as diverged on ``best_val_loss=inf``)."""
    scheduler, _ = make()
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    sims = {"conv1": 0.5}

    def report(it: int, tracked: float) -> dict[str, Any]:
        return {**result(sims, it=it, acc=0.12 + 0.1 * it), "best_val_loss": tracked}

    for it, tracked in ((1, math.inf), (2, 1.2), (3, 0.9)):
        assert scheduler.on_trial_result(None, trial, report(it, tracked)) == CONTINUE
    scheduler.on_trial_error(None, trial)  # Tune starts it again, from scratch
    assert scheduler.on_trial_result(None, trial, report(1, math.inf)) == CONTINUE
    assert scheduler.stopped_trials == {}


def test_a_base_records_a_trial_stopped_here_once_as_tune_completes_it() -> None:
    """A diverged trial this scheduler stops reaches the base once, through on_trial_complete
    (as Tune calls it for a stopped trial): ASHA's rungs then hold what they hold on their
    own, and a median rule counts the trial's last result once."""
    from ray.tune.schedulers import MedianStoppingRule

    def asha() -> ASHAScheduler:
        return ASHAScheduler(
            metric="acc", mode="max", time_attr="training_iteration", grace_period=1,
            reduction_factor=2,
        )  # fmt: skip

    scheduler, _ = make(base=asha(), freeze_best=False)
    alone = asha()
    trials = {name: FakeTrial(name) for name in ("best", "dead", "fair")}
    controller = FakeController(list(trials.values()))
    for trial in trials.values():
        scheduler.on_trial_add(controller, trial)
        alone.on_trial_add(controller, trial)
    sims = {"conv1": 0.5}
    reports = {
        "best": result(sims, it=1, acc=0.9),
        "dead": {**result(sims, it=1, acc=0.05, live={"conv1": 0.0}), "acc_chance": 0.1},
        "fair": result(sims, it=1, acc=0.5),
    }
    decisions = {}
    for name, report in reports.items():
        decisions[name] = scheduler.on_trial_result(controller, trials[name], report)
        if decisions[name] == STOP:
            scheduler.on_trial_complete(controller, trials[name], report)
    reference = {n: alone.on_trial_result(controller, trials[n], r) for n, r in reports.items()}
    assert decisions["dead"] == STOP and scheduler.stopped_trials["dead"] == "dead layer"
    assert reference["fair"] == CONTINUE  # above the median of 0.9 and 0.05 (0.475)
    assert decisions["fair"] == reference["fair"]
    median = MedianStoppingRule(metric="acc", mode="max", time_attr="training_iteration")
    scheduler, _ = make(base=median, freeze_best=False)
    dead = FakeTrial("dead")
    scheduler.on_trial_add(controller, dead)
    assert scheduler.on_trial_result(controller, dead, reports["dead"]) == STOP
    scheduler.on_trial_complete(controller, dead, reports["dead"])
    assert len(median._results[dead]) == 1


def test_metric_and_mode_from_tune_or_a_clear_error() -> None:
    scheduler = SVCCAScheduler()
    with pytest.raises(ValueError, match="needs a metric and a mode.*metric=None"):
        scheduler.on_trial_add(None, FakeTrial("t"))
    assert scheduler.set_search_properties("acc", "max")
    assert (scheduler.metric, scheduler._mode) == ("acc", "max")
    # Tune refuses a second metric when the scheduler already has one
    assert not scheduler.set_search_properties("loss", "min")
    base = ASHAScheduler()
    wrapped = SVCCAScheduler(base=base)
    wrapped.set_search_properties("loss", "min")
    assert (base._metric, base._mode) == ("loss", "min")


def test_warns_once_when_no_similarity_arrives(caplog) -> None:
    scheduler, _mailbox = make(similarity_key="self_similarty")
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    with caplog.at_level("WARNING"):
        feed(scheduler, trial, [result({"conv1": 1.0}, it=i) for i in range(1, 5)])
    warnings = [r.message for r in caplog.records if "self_similarty" in r.message]
    assert len(warnings) == 1 and "'self_similarity'" in warnings[0]


@pytest.mark.parametrize("measured_at", [None, 12])
def test_warns_once_when_the_similarity_arrives_only_as_none(caplog, measured_at) -> None:
    """A subscriber that measures nothing (subscribed to a tag no message carries) reports
    every layer's similarity as None: named once, after a few reports, as when it is absent;
    a similarity measured less often than that, and then, is not."""
    scheduler, _mailbox = make()
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    with caplog.at_level("WARNING"):
        for i in range(1, 25):
            sims = {name: (0.5 if i == measured_at else None) for name in LAYERS}
            feed(scheduler, trial, [result(sims, it=i)])  # type: ignore[arg-type]
    warned = [r.message for r in caplog.records if "only as None" in r.message]
    assert len(warned) == (1 if measured_at is None else 0), warned


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"freeze_at": 0}, r"`freeze_at` to be a number in \(0, 1\]"),
        ({"freeze_at": 1.5}, r"`freeze_at` to be a number in \(0, 1\]"),
        ({"freeze_at": "0.9"}, r"`freeze_at` to be a number"),
        ({"patience": 0}, r"`patience` to be an integer >= 1"),
        ({"mode": "maximise"}, r"`mode` to be 'max' or 'min'"),
        ({"min_delta": -1}, r"`min_delta` to be a finite number >= 0"),
        ({"min_delta": float("inf")}, r"`min_delta` to be a finite number >= 0"),
        ({"min_travel": float("nan")}, r"`min_travel` to be a number in \[0, 1\]"),
        ({"min_travel": 1.5}, r"`min_travel` to be a number in \[0, 1\]"),  # no layer froze
        ({"optimism": float("inf")}, r"`optimism` to be a finite number >= 0"),
        ({"base": SVCCAScheduler()}, r"an SVCCAScheduler inside this one"),
        ({"grace": -1}, r"`grace` to be an integer >= 0"),
        ({"stall_share": 0}, r"`stall_share` to be a number in \(0, 1\]"),
        ({"max_t": 0}, r"`max_t` to be an integer >= 1"),
        ({"base": "asha"}, r"`base` to be a ray.tune TrialScheduler"),
        ({"stop": "False"}, r"`stop` to be True or False but got 'False'"),
        ({"input_side_first": 0}, r"`input_side_first` to be True or False but got 0"),
        ({"freeze_best": "no"}, r"`freeze_best` to be True or False"),
        ({"unfreeze_lr_factor": 1.0}, r"`unfreeze_lr_factor` to be a number above 1 or None"),
        ({"metric_scale": 0}, r"`metric_scale` to be a finite number > 0 but got 0"),
        ({"metric_scale": float("inf")}, r"`metric_scale` to be a finite number > 0"),
        ({"metric_scale": True}, r"`metric_scale` to be a finite number > 0 but got True"),
        ({"metric_scale": "100"}, r"`metric_scale` to be a finite number > 0 but got '100'"),
        (
            {"base": PopulationBasedTraining(hyperparam_mutations={"lr": [0.1, 0.01]})},
            r"got PopulationBasedTraining, which copies one",
        ),
        (
            {
                "base": ResourceChangingScheduler(
                    PopulationBasedTraining(hyperparam_mutations={"lr": [0.1, 0.01]})
                )
            },
            r"got PopulationBasedTraining \(inside ResourceChangingScheduler\).*PersistTrialFiles",
        ),
    ],
)
def test_argument_validation(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        SVCCAScheduler(**kwargs)


def test_results_without_layers_are_ignored() -> None:
    scheduler, mailbox = make()
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    assert scheduler.on_trial_result(None, trial, {"acc": 0.1, "training_iteration": 1}) == CONTINUE
    assert mailbox.posts == []


def _trial_with_dirs(trial_id: str, local: Path, stored: Path) -> FakeTrial:
    import pyarrow.fs

    trial = FakeTrial(trial_id)
    trial.local_path = str(local)  # type: ignore[attr-defined]
    trial.storage = SimpleNamespace(  # type: ignore[attr-defined]
        trial_fs_path=str(stored), storage_filesystem=pyarrow.fs.LocalFileSystem()
    )
    return trial


def test_a_new_driver_takes_up_the_decisions_of_the_last_one(tmp_path) -> None:
    # Tuner.restore: the driver's directory is new; the stored decisions name a frozen layer
    local, stored = tmp_path / "driver", tmp_path / "storage"
    local.mkdir()
    stored.mkdir()
    old = {"trial_id": "t1", "action": "freeze", "rule": "converged", "iteration": 4,
           "layer": "conv1", "values": {"similarity": 0.999}}  # fmt: skip
    (stored / DECISIONS_FILE).write_text(json.dumps(old) + "\n")
    scheduler, mailbox = make(patience=1, settle_window=1, plateau=1, stop=False)
    trial = _trial_with_dirs("t1", local, stored)
    scheduler.on_trial_add(None, trial)
    # ordered again, for the trial restored from a checkpoint that may predate the freeze
    (posted,) = mailbox.posts
    assert posted[1]["freeze"] == ["conv1"] and posted[1]["restore"]
    assert "similarity=0.999" in posted[1]["reasons"]["conv1"]
    # its next decision is appended to the stored lines, not written over them
    sims = {"conv1": 1.0, "conv2": 1.0, "fc1": 0.2}
    feed(scheduler, trial, [result(sims, frozen=("conv1",), it=i) for i in (5, 6, 7, 8)])
    lines = [json.loads(x) for x in (local / DECISIONS_FILE).read_text().splitlines()]
    assert [(x["layer"], x["iteration"]) for x in lines] == [("conv1", 4), ("conv2", 8)]
    assert "freeze conv1 at report 4: converged" in scheduler.debug_string()


def test_freeze_false_orders_nothing_after_a_restore_of_a_freezing_run(tmp_path) -> None:
    """A stop-only scheduler taking up a freezing run's decisions (Tuner.restore, or
    tune.run(resume=True) with a new scheduler) keeps them as reasons but orders nothing, at
    the take-up and after a trial error."""
    local, stored = tmp_path / "driver", tmp_path / "storage"
    local.mkdir()
    stored.mkdir()
    old = {"trial_id": "t1", "action": "freeze", "rule": "converged", "iteration": 2,
           "layer": "conv1", "values": {"similarity": 0.999}}  # fmt: skip
    (stored / DECISIONS_FILE).write_text(json.dumps(old) + "\n")
    scheduler, mailbox = make(patience=1, settle_window=1, plateau=1, freeze=False, stop=False)
    trial = _trial_with_dirs("t1", local, stored)
    scheduler.on_trial_add(None, trial)
    sims = {"conv1": 1.0, "conv2": 1.0, "fc1": 0.2}
    feed(scheduler, trial, [result(sims, it=3), result(sims, it=4)])
    scheduler.on_trial_error(None, trial)
    feed(scheduler, trial, [result(sims, it=5)])
    assert mailbox.posts == [] and scheduler.frozen_layers == {"t1": []}
    assert [(t, d.layer, d.iteration) for t, d in scheduler.decisions] == [("t1", "conv1", 2)]
    # the same with freezing on orders it again
    scheduler, mailbox = make(patience=1, settle_window=1, plateau=1)
    scheduler.on_trial_add(None, _trial_with_dirs("t1", local, stored))
    assert [p[1]["freeze"] for p in mailbox.posts] == [["conv1"]]
    # a Ray Train job whose workers restart, conv1 frozen in its checkpoint by an earlier
    # run's decision: ordered again only when freezing
    from ikkuna_tune.tune.convergence import Decision

    for freeze, posts in ((False, 0), (True, 1)):
        scheduler, mailbox = make(patience=9, freeze=freeze, stop=False)
        trial = FakeTrial("t2")
        scheduler.on_trial_add(None, trial)
        scheduler._views["t2"].reasons["conv1"] = Decision("freeze", "converged", 1, "conv1")
        frozen = [result(sims, frozen=("conv1",), it=i) for i in (1, 2, 3)]
        feed(scheduler, trial, [_named(frozen[0], "a-1"), _named(frozen[1], "a-2")])
        feed(scheduler, trial, [_named(frozen[2], "b-1@a-2")])  # a worker restart
        assert len(mailbox.posts) == posts, freeze


def test_a_new_driver_takes_up_only_the_freezes_made_before_the_checkpoint(tmp_path) -> None:
    local, stored = tmp_path / "driver", tmp_path / "storage"
    local.mkdir()
    stored.mkdir()
    decided = [
        {"trial_id": "t1", "action": "freeze", "rule": "converged", "iteration": it,
         "layer": layer, "values": {}}
        for it, layer in ((2, "conv1"), (3, "conv2"))
    ]  # fmt: skip
    (stored / DECISIONS_FILE).write_text("".join(json.dumps(d) + "\n" for d in decided))
    scheduler, mailbox = make(patience=1, settle_window=1, plateau=1, stop=False)
    trial = _trial_with_dirs("t1", local, stored)
    trial.latest_checkpoint_result = SimpleNamespace(metrics={"training_iteration": 2})
    scheduler.on_trial_add(None, trial)
    (posted,) = mailbox.posts  # conv2 was decided on a report after the checkpoint
    assert posted[1]["freeze"] == ["conv1"] and posted[1]["restore"]


def test_the_result_that_completes_a_trial_counts_for_the_others() -> None:
    """Tune hands the result that meets its stopping criterion (the trial's last) to
    on_trial_complete only. Trial a's last report (0.9) puts b, which cannot reach it, out;
    unseen, b ran on. A finished trial is shown as such."""
    scheduler, _ = make(max_t=5, protect_top=1, freeze_best=False)  # b: 2 readings, 3 and 4
    a, b = FakeTrial("a"), FakeTrial("b")
    for trial in (a, b):
        scheduler.on_trial_add(None, trial)
    dists = {name: 0.1 for name in LAYERS}
    reports_a = [result({}, it=i + 1, acc=m, dist=dists) for i, m in enumerate([0.8, 0.85, 0.88])]
    assert feed(scheduler, a, reports_a) == [CONTINUE] * 3
    scheduler.on_trial_complete(None, a, result({}, it=4, acc=0.9, dist=dists))
    assert scheduler._views["a"].history.metric == [0.8, 0.85, 0.88, 0.9]
    reports_b = [
        result({}, it=i + 1, acc=m, dist=dists) for i, m in enumerate([0.5, 0.52, 0.53, 0.535])
    ]
    assert feed(scheduler, b, reports_b) == [CONTINUE, CONTINUE, CONTINUE, STOP]
    stop = scheduler._views["b"].stopped
    assert stop is not None and stop.values["target"] == 0.9
    assert "a: frozen none; finished" in scheduler.debug_string()
    # the result of a trial the scheduler stopped itself (seen already) is not taken twice
    scheduler.on_trial_complete(None, b, reports_b[-1])
    assert scheduler._views["b"].history.metric == [0.5, 0.52, 0.53, 0.535]


def test_a_loss_metric_is_explained_in_its_own_units() -> None:
    """With mode='min' the rules rank the negated loss; the decisions show the losses as
    reported: the stopped trial's best is its lowest loss, the target the third lowest."""
    scheduler, _ = make(metric="loss", mode="min", max_t=10, grace=2)
    trials = [FakeTrial(f"t{i}") for i in range(4)]
    for t in trials:
        scheduler.on_trial_add(None, t)
    sims = dict.fromkeys(LAYERS, 0.9)

    def report(it: int, loss: float) -> dict[str, Any]:
        out = result(sims, it=it, dist=dict.fromkeys(LAYERS, 0.05 * it))
        del out["acc"]
        return {**out, "loss": loss}

    for it in range(1, 4):
        for t, loss in zip(trials[:3], (0.3, 0.25, 0.2)):
            scheduler.on_trial_result(None, t, report(it, loss))
    # it gains 0.01 a report, never a tenth of its way to the target: judged from a third of
    # the budget on (report 4 of 10), stopped at the second reading (report 5)
    losses = [2.3 - 0.01 * it for it in range(1, 6)]
    decisions = [
        scheduler.on_trial_result(None, trials[3], report(i + 1, v)) for i, v in enumerate(losses)
    ]
    assert decisions == [CONTINUE, CONTINUE, CONTINUE, CONTINUE, STOP]
    stop = scheduler._views["t3"].stopped
    assert stop is not None and stop.rule == "cannot reach the top 3"
    assert stop.values["best"] == pytest.approx(min(losses))
    assert stop.values["target"] == pytest.approx(0.3)  # the third lowest loss
    assert stop.values["reachable"] > stop.values["target"]  # a loss: above is worse
    assert "best=2.25" in scheduler.debug_string()


def test_a_base_ranking_the_metric_the_other_way_is_refused() -> None:
    with pytest.raises(ValueError, match="mode='min'.*mode='max': it would stop the best"):
        SVCCAScheduler(metric="loss", mode="min", base=ASHAScheduler(metric="loss", mode="max"))
    # the same when the metric and mode come from Tune
    scheduler = SVCCAScheduler(base=ASHAScheduler(mode="max"))
    with pytest.raises(ValueError, match="it would stop the best trials"):
        scheduler.set_search_properties("loss", "min")
    # a base on another metric may rank it either way
    SVCCAScheduler(metric="loss", mode="min", base=ASHAScheduler(metric="acc", mode="max"))
    # a base the base wraps is looked at too
    from ray.tune.schedulers import ResourceChangingScheduler

    wrapped = ResourceChangingScheduler(base_scheduler=ASHAScheduler(metric="loss", mode="max"))
    with pytest.raises(ValueError, match="it would stop the best trials"):
        SVCCAScheduler(metric="loss", mode="min", base=wrapped)


def test_population_based_training_is_refused_when_wrapped_too() -> None:
    from ray.tune.schedulers import ResourceChangingScheduler

    pbt = PopulationBasedTraining(hyperparam_mutations={"lr": [0.1, 0.01]})
    with pytest.raises(ValueError, match=r"PopulationBasedTraining \(inside ResourceChanging"):
        SVCCAScheduler(base=ResourceChangingScheduler(base_scheduler=pbt))
    SVCCAScheduler(base=ResourceChangingScheduler(base_scheduler=ASHAScheduler()))


def test_warns_once_when_a_trial_reports_without_ikkuna_keys(caplog) -> None:
    """``tune.report`` in place of ``ik.report``: the rules can do nothing, and say so."""
    scheduler, _ = make()
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    with caplog.at_level("WARNING"):
        for it in range(1, 5):
            assert (
                scheduler.on_trial_result(None, trial, {"acc": 0.5, "training_iteration": it})
                == CONTINUE
            )
    warnings = [r.getMessage() for r in caplog.records if "without ikkuna_tune's" in r.getMessage()]
    assert len(warnings) == 1 and "report with ik.report" in warnings[0]


@pytest.mark.parametrize("status", ["TERMINATED", "ERROR"])
def test_a_new_driver_takes_up_a_stop_and_a_finished_trial(tmp_path, status) -> None:
    """Tuner.restore: a trial the last driver stopped is shown stopped (it showed as running
    and left stopped_trials), and a trial Tune finished is shown finished."""
    local, stored = tmp_path / "driver", tmp_path / "storage"
    local.mkdir()
    stored.mkdir()
    stop = {"trial_id": "t1", "action": "stop", "rule": "stuck: no progress", "iteration": 3,
            "layer": None, "values": {"best": 0.11}}  # fmt: skip
    (stored / DECISIONS_FILE).write_text(json.dumps(stop) + "\n")
    scheduler, _ = make()
    trial = _trial_with_dirs("t1", local, stored)
    trial.status = status  # type: ignore[attr-defined]
    scheduler.on_trial_add(None, trial)
    assert scheduler.stopped_trials == {"t1": "stuck: no progress"}
    assert "t1: frozen none; stopped: stop at report 3: stuck: no progress" in (
        scheduler.debug_string()
    )
    finished = _trial_with_dirs("t2", tmp_path / "d2", tmp_path / "s2")
    (tmp_path / "d2").mkdir()
    (tmp_path / "s2").mkdir()
    finished.status = status  # type: ignore[attr-defined]
    scheduler.on_trial_add(None, finished)
    # an errored trial is shown failed while Tune holds it errored (one it resumes is PENDING)
    state = "finished" if status == "TERMINATED" else "failed"
    assert f"t2: frozen none; {state}" in scheduler.debug_string()
    if status == "ERROR":
        finished.status = "PENDING"  # type: ignore[attr-defined]
        assert "t2: frozen none; no report yet" in scheduler.debug_string()


@pytest.mark.parametrize(("status", "state"), [("ERROR", "failed"), ("PAUSED", "paused"),
                                               ("RUNNING", "running"),
                                               ("TERMINATED", "ended")])  # fmt: skip
def test_debug_string_tells_a_failed_and_a_paused_trial_from_a_running_one(status, state) -> None:
    """A trial that reported and then failed for good was shown as running, and so was one
    Tune itself ended (a time budget: its last result never came as a complete one)."""
    scheduler, _ = make()
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    feed(scheduler, trial, [result(dict.fromkeys(LAYERS, 0.5), it=1)])
    trial.status = status  # type: ignore[attr-defined]
    assert f"t1: frozen none; {state}" in scheduler.debug_string()


def test_a_trial_restarted_under_a_new_id_takes_up_nothing_of_the_errored_one(tmp_path) -> None:
    """``Tuner.restore(..., restart_errored=True)``: Tune restarts an errored trial from
    scratch under a new id, and until the new trial starts its directory is the errored one's.
    What the errored trial reported and what was decided for it (a freeze, a stop) are not
    the new trial's: its view starts empty, as a fresh trial's."""
    local, stored = tmp_path / "driver", tmp_path / "storage"
    local.mkdir()
    stored.mkdir()
    old = [
        {"trial_id": "old", "action": "freeze", "rule": "converged", "iteration": 2,
         "layer": "first", "values": {"similarity": 0.995}},
        {"trial_id": "old", "action": "stop", "rule": "dead layer", "iteration": 3,
         "layer": "head", "values": {"live_fraction": 0.0}},
    ]  # fmt: skip
    (stored / DECISIONS_FILE).write_text("".join(json.dumps(d) + "\n" for d in old))
    sims = dict.fromkeys(LAYERS, 0.9)
    rows = [{**result(sims, it=i, acc=0.3 * i), "trial_id": "old"} for i in (1, 2, 3)]
    (local / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    scheduler, _ = make()
    scheduler.on_trial_add(None, _trial_with_dirs("new", local, stored))
    assert scheduler.decisions == [] and scheduler.stopped_trials == {}
    assert scheduler._views["new"].history.metric == []
    assert "new: frozen none; no report yet" in scheduler.debug_string()
    # the same files under the trial's own id are taken up (Tuner.restore of that trial)
    scheduler, _ = make()
    scheduler.on_trial_add(None, _trial_with_dirs("old", local, stored))
    assert [d.action for _, d in scheduler.decisions] == ["freeze", "stop"]
    assert scheduler._views["old"].history.metric == pytest.approx([0.3, 0.6, 0.9])


def test_debug_string_tells_a_trial_that_has_not_reported_from_a_running_one() -> None:
    """A trial Tune has added but not started showed as running."""
    scheduler, _ = make()
    first, second = FakeTrial("t1"), FakeTrial("t2")
    scheduler.on_trial_add(None, first)
    scheduler.on_trial_add(None, second)
    feed(scheduler, first, [result({"conv1": 0.5}, it=1)])
    text = scheduler.debug_string()
    assert "t1: frozen none; running" in text and "t2: frozen none; no report yet" in text


class _HalvingController:
    """Enough of Tune's controller for HyperBand's synchronous halving: it stops and pauses
    trials as a scheduler's decisions and HyperBand's own calls ask."""

    def __init__(self, scheduler, trials) -> None:
        self.scheduler, self.trials = scheduler, trials

    def get_trials(self):
        return self.trials

    def get_live_trials(self):
        return [t for t in self.trials if t.status != "TERMINATED"]

    def stop_trial(self, trial) -> None:
        if trial.status in ("PAUSED", "PENDING"):
            self.scheduler.on_trial_remove(self, trial)
        elif trial.status == "RUNNING":
            self.scheduler.on_trial_complete(self, trial, {})
        trial.status = "TERMINATED"

    def pause_trial(self, trial) -> None:
        trial.status = "PAUSED"


def test_a_synchronous_hyperband_is_not_told_of_a_trial_stopped_here() -> None:
    """HyperBand halves a rung once all its trials reported: told of a trial stopped here
    (a dead last layer), it would count it among the survivors and promote one trial fewer.
    Its survivors are those of HyperBand over the other trials."""
    from ray.tune.schedulers import HyperBandScheduler

    def survivors(wrapped: bool) -> list[str]:
        hyperband = HyperBandScheduler(
            time_attr="training_iteration", max_t=9, reduction_factor=3, metric="acc", mode="max"
        )
        scheduler: Any = hyperband
        if wrapped:
            scheduler, _ = make(base=hyperband, freeze_best=False)
        trials = [FakeTrial(f"t{i}") for i in range(17)]
        for trial in trials:
            trial.is_saving = False  # type: ignore[attr-defined]
        controller = _HalvingController(scheduler, trials)
        for trial in trials:
            scheduler.on_trial_add(controller, trial)
        bracket = trials[8:]  # HyperBand's bracket of 9 trials that start at 1 iteration
        accs = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.75]
        for trial, acc in zip(bracket, accs):
            dead = trial is bracket[-1]
            if dead and not wrapped:  # HyperBand alone over the others: it is gone
                controller.stop_trial(trial)
                continue
            live = {"fc2": 0.0 if dead else 1.0}
            decision = scheduler.on_trial_result(
                controller, trial, result({"conv1": 0.5}, acc=acc, live=live)
            )
            if decision == "PAUSE":
                trial.status = "PAUSED"
            elif decision == STOP:
                controller.stop_trial(trial)
        return [t.trial_id for t in bracket if t.status != "TERMINATED"]

    assert survivors(wrapped=True) == survivors(wrapped=False) == ["t13", "t14", "t15"]


def test_hyperbands_halvings_are_recorded_and_a_bracket_ending_short_of_max_t_is_not() -> None:
    """HyperBand (max_t=4, eta=3) puts its first 2 trials in a bracket of 4 iterations, the
    next 3 in one from 1 iteration: at its halving it keeps the best and stops the other two
    (one paused, one reporting: both early stops, recorded), then ends the bracket at its
    last rung, 3 iterations (it rounds rungs down, short of max_t): its best trial made its
    whole budget there, and is not recorded as stopped (it was, as "stop at report 3:
    HyperBandScheduler (metric)")."""
    from ray.tune.schedulers import HyperBandScheduler

    hyperband = HyperBandScheduler(
        time_attr="training_iteration", max_t=4, reduction_factor=3, metric="acc", mode="max"
    )
    scheduler, _ = make(base=hyperband, freeze_best=False, stop=False)
    trials = [FakeTrial(f"t{i}") for i in range(5)]
    controller = _HalvingController(scheduler, trials)
    for trial in trials:
        trial.is_saving = False  # type: ignore[attr-defined]
        scheduler.on_trial_add(controller, trial)
    bracket = trials[2:]
    decisions = []
    for trial, acc in zip(bracket, (0.3, 0.9, 0.5)):
        trial.last_result = result({"conv1": 0.5}, it=1, acc=acc)  # type: ignore[attr-defined]
        decisions.append(scheduler.on_trial_result(controller, trial, trial.last_result))
        if decisions[-1] == "PAUSE":
            trial.status = "PAUSED"
    assert decisions == ["PAUSE", "PAUSE", STOP]  # the halving, at the last trial's report
    assert [t.status for t in bracket] == ["TERMINATED", "PAUSED", "RUNNING"]
    best = bracket[1]
    best.status = "RUNNING"  # resumed
    assert [scheduler.on_trial_result(controller, best, result({"conv1": 0.5}, it=i, acc=0.9))
            for i in (2, 3)] == ["CONTINUE", STOP]  # fmt: skip
    assert scheduler.stopped_trials == {
        "t2": "HyperBandScheduler (stopped while paused)",
        "t4": "HyperBandScheduler (metric)",
    }


class _StopsFromTwo(_ResumingBase):
    """A base that stops a trial at its second report, whose own budget is 10."""

    _time_attr, _max_t = "training_iteration", 10

    def on_trial_result(self, controller, trial, result) -> str:
        return STOP if result["training_iteration"] >= 2 else "CONTINUE"


def test_a_trial_removed_while_not_paused_and_one_at_the_budget_tune_was_given_are_no_stops() -> (
    None
):
    """Tune removes a pending trial with ``on_trial_remove`` too (a stopper's end of the
    sweep): only a paused one was stopped by the base. And a base STOP at the budget Tune was
    given (here ``max_t=2``; ``stop={"training_iteration": 2}`` alike) is no early stop,
    whatever the base's own budget."""
    scheduler, _ = make(stop=False, base=_StopsFromTwo(None), max_t=2)
    pending, full = FakeTrial("t1"), FakeTrial("t2")
    for trial in (pending, full):
        scheduler.on_trial_add(None, trial)
    feed(scheduler, pending, [result({"conv1": 0.5}, it=1, acc=0.4)])
    pending.status = "PENDING"
    scheduler.on_trial_remove(None, pending)
    assert feed(scheduler, full, [result({"conv1": 0.5}, it=i, acc=0.9) for i in (1, 2)]) == [
        "CONTINUE",
        STOP,
    ]
    assert scheduler.stopped_trials == {} and scheduler.decisions == []


# ---------------------------------------------------------- unfreezing at a learning-rate change
LR_REASON = "learning rate changed (lr_at_freeze=0.1, lr=0.01, factor=2, frozen_at_step=80)"


def _unfrozen(report: dict[str, Any], reasons: dict[str, str]) -> dict[str, Any]:
    """``report`` with the trial's ``unfreeze_reason/<layer>`` ("" for the others)."""
    for name in LAYERS:
        report[f"unfreeze_reason/{name}"] = reasons.get(name, "")
    return report


def test_a_layer_the_trial_unfroze_at_a_learning_rate_change_is_logged_and_judged_anew() -> None:
    """conv1 is frozen; the trial reports it unfrozen (its learning rate dropped): the
    scheduler logs the unfreeze with the trial's values and orders conv1 again only once it
    has settled over max(settle_window, patience) reports made after that one."""
    scheduler, mailbox = make(patience=2, settle_window=3, plateau=1, stop=False)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    assert scheduler.unfreeze_lr_factor == 2.0
    sims = {"conv1": 1.0, "conv2": 0.2}
    feed(scheduler, trial, [result(sims, it=i) for i in (1, 2, 3, 4)])
    assert mailbox.posts == [
        ("t1", {"freeze": ["conv1"], "reasons": ANY_REASON, "unfreeze_lr_factor": 2.0})
    ]
    feed(scheduler, trial, [_unfrozen(result(sims, ("conv1",), it=5), {})])
    assert scheduler.frozen_layers == {"t1": ["conv1"]}
    feed(scheduler, trial, [_unfrozen(result(sims, it=6), {"conv1": LR_REASON})])
    assert scheduler.frozen_layers == {"t1": []}
    trial_id, decision = scheduler.decisions[-1]
    assert (trial_id, decision.action, decision.layer, decision.iteration) == (
        "t1",
        "unfreeze",
        "conv1",
        6,
    )
    assert decision.rule == "learning rate changed"
    assert decision.values == {
        "lr_at_freeze": 0.1,
        "lr": 0.01,
        "factor": 2.0,
        "frozen_at_step": 80.0,
    }
    assert "unfreeze conv1 at report 6: learning rate changed (lr_at_freeze=0.1" in (
        scheduler.debug_string()
    )
    # still as settled as before: ordered again after 3 reports past report 6, not sooner
    for it in (7, 8):
        feed(scheduler, trial, [_unfrozen(result(sims, it=it), {"conv1": LR_REASON})])
        assert len(mailbox.posts) == 1, it
    feed(scheduler, trial, [_unfrozen(result(sims, it=9), {"conv1": LR_REASON})])
    assert [p[1]["freeze"] for p in mailbox.posts] == [["conv1"], ["conv1"]]
    # one unfreeze was logged, not one per report that still carries its reason
    assert [d.action for _, d in scheduler.decisions] == ["freeze", "unfreeze", "freeze"]


class _AnyReason:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, dict) and all("converged" in str(v) for v in other.values())


ANY_REASON = _AnyReason()


def test_an_order_released_before_the_trial_confirmed_it_is_not_taken_as_lost() -> None:
    """The learning rate dropped between the order and the trial's next report: the trial
    froze the layer and unfroze it at once. That is no lost order (which would be given again
    at once, and refused for good after two)."""
    scheduler, mailbox = make(patience=1, settle_window=1, plateau=1, stop=False)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    sims = {"conv1": 1.0, "conv2": 0.2}
    feed(scheduler, trial, [result(sims, it=i) for i in (1, 2, 3, 4)])  # ordered at report 4
    feed(scheduler, trial, [_unfrozen(result(sims, it=5), {"conv1": LR_REASON})])
    assert [d.action for _, d in scheduler.decisions] == ["freeze", "unfreeze"]
    assert scheduler.frozen_layers == {"t1": []}
    feed(scheduler, trial, [_unfrozen(result(sims, it=6), {"conv1": LR_REASON})])
    # judged anew on report 6 (settle_window 1): ordered again, as a new decision
    assert [p[1]["freeze"] for p in mailbox.posts] == [["conv1"], ["conv1"]]
    assert not scheduler._views["t1"].history.refused


def test_a_restore_after_an_unfreeze_does_not_order_the_layer_again() -> None:
    scheduler, mailbox = make(patience=1, settle_window=1, plateau=1, stop=False)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    sims = {"conv1": 1.0, "conv2": 0.2}
    feed(scheduler, trial, [result(sims, it=i) for i in (1, 2, 3, 4)])
    feed(scheduler, trial, [_unfrozen(result(sims, ("conv1",), it=5), {})])
    feed(scheduler, trial, [_unfrozen(result(sims, it=6), {"conv1": LR_REASON})])
    scheduler.on_trial_error(None, trial)
    assert [p[1]["freeze"] for p in mailbox.posts] == [["conv1"]]


def test_unfreeze_lr_factor_none_is_sent_with_the_order() -> None:
    scheduler, mailbox = make(
        patience=1, settle_window=1, plateau=1, unfreeze_lr_factor=None, stop=False
    )
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    feed(scheduler, trial, [result({"conv1": 1.0, "conv2": 0.2}, it=i) for i in (1, 2, 3, 4)])
    assert mailbox.posts[0][1]["unfreeze_lr_factor"] is None


def test_a_new_driver_does_not_order_a_freeze_the_trial_undid_since(tmp_path) -> None:
    local, stored = tmp_path / "driver", tmp_path / "storage"
    local.mkdir()
    stored.mkdir()
    freeze = {"trial_id": "t1", "action": "freeze", "rule": "converged", "iteration": 4,
              "layer": "conv1", "values": {"similarity": 0.999}}  # fmt: skip
    unfreeze = {"trial_id": "t1", "action": "unfreeze", "rule": "learning rate changed",
                "iteration": 6, "layer": "conv1", "values": {"lr": 0.01}}  # fmt: skip
    lines = [json.dumps(freeze), json.dumps(unfreeze)]
    (stored / DECISIONS_FILE).write_text("\n".join(lines) + "\n")
    scheduler, mailbox = make(stop=False)
    scheduler.on_trial_add(None, _trial_with_dirs("t1", local, stored))
    assert mailbox.posts == []
    assert [d.action for _, d in scheduler.decisions] == ["freeze", "unfreeze"]


def _scaled(report: dict[str, Any], lr_scale: float) -> dict[str, Any]:
    report["lr_scale"] = lr_scale
    return report


def test_a_trial_behind_others_whose_learning_rate_decayed_while_its_own_did_not_is_kept() -> None:
    """A swept schedule: three trials drop their learning rate at report 2 and jump ahead; the
    fourth, still at its first rate, sits on a plateau behind them with settled layers. It is
    not frozen until its own rate decays and the plateau test's longer look (4 reports at
    plateau=1) no longer sees the change (then the usual rules apply); with constant rates
    (lr_scale 1 everywhere) the same trial is frozen."""
    sims = {"conv1": 1.0, "conv2": 0.2}
    for decays in (True, False):
        scheduler, mailbox = make(
            patience=1, settle_window=1, plateau=1, stop=False, freeze_best=False
        )
        trials = [FakeTrial(f"t{i}") for i in range(4)]
        for trial in trials:
            scheduler.on_trial_add(None, trial)
        for it in (1, 2, 3, 4, 5):
            for trial in trials[:3]:  # ahead: decayed from report 2 on
                scale = 0.1 if decays and it >= 2 else 1.0
                acc = 0.9 if it >= 2 else 0.5
                feed(scheduler, trial, [_scaled(result({"conv2": 0.2}, it=it, acc=acc), scale)])
            feed(scheduler, trials[3], [_scaled(result(sims, it=it, acc=0.5), 1.0)])
        posted = [p for p in mailbox.posts if p[0] == "t3"]
        assert bool(posted) is not decays, decays
        if decays:  # its own decay at report 6: judged as usual once out of sight
            for it in (6, 7, 8, 9):
                feed(scheduler, trials[3], [_scaled(result(sims, it=it, acc=0.5), 0.1)])
            assert not [p for p in mailbox.posts if p[0] == "t3"]
            feed(scheduler, trials[3], [_scaled(result(sims, it=10, acc=0.5), 0.1)])
            assert [p[1]["freeze"] for p in mailbox.posts if p[0] == "t3"] == [["conv1"]]


def test_a_late_dropper_behind_trials_that_decayed_is_not_stopped_as_behind() -> None:
    """A swept step decay over 12 reports: three trials drop their learning rate at report 3
    and climb to 0.86-0.88; the fourth keeps its rate, sits at 0.6 until its own drop at report
    9 and ends best (FIFO's answer). It is not stopped as unable to reach the top 3 while it
    has not decayed; told nothing of the rates (lr_scale 1 everywhere), the same reports stop
    it, which would change the best configuration."""
    leaders = {f"t{i}": [0.4, 0.55, 0.6, 0.75, 0.8, *[0.84 + 0.01 * i] * 7] for i in range(3)}
    late = [0.4, 0.55, *[0.6 + 0.001 * k for k in range(7)], 0.8, 0.9, 0.95]
    for told in (True, False):
        scheduler, _ = make(max_t=12, freeze_best=False)
        trials = {name: FakeTrial(name) for name in [*leaders, "late"]}
        for trial in trials.values():
            scheduler.on_trial_add(None, trial)
        for it in range(1, 13):
            for name, trial in trials.items():
                if name in scheduler.stopped_trials:
                    continue
                curve = late if name == "late" else leaders[name]
                dropped = it >= (10 if name == "late" else 4)
                scale = 0.1 if told and dropped else 1.0
                report = result({"conv1": 0.5, "conv2": 0.5}, it=it, acc=curve[it - 1])
                scheduler.on_trial_result(None, trial, _scaled(report, scale))
        stopped = scheduler.stopped_trials.get("late")
        if told:
            assert stopped is None
        else:
            assert stopped is not None and "cannot reach" in stopped


def _frozen_then_unfrozen() -> tuple[SVCCAScheduler, FakeMailbox, FakeTrial]:
    """conv1 ordered frozen after report 4, frozen at 5, unfrozen at 6 (a learning-rate drop)."""
    scheduler, mailbox = make(patience=1, settle_window=1, plateau=1, stop=False)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    sims = {"conv1": 1.0, "conv2": 0.2}
    feed(scheduler, trial, [_unfrozen(result(sims, it=i), {}) for i in (1, 2, 3, 4)])
    feed(scheduler, trial, [_unfrozen(result(sims, ("conv1",), it=5), {})])
    feed(scheduler, trial, [_unfrozen(result(sims, it=6), {"conv1": LR_REASON})])
    return scheduler, mailbox, trial


def test_a_restore_from_before_an_unfreeze_orders_the_freeze_again() -> None:
    """conv1 ordered after report 4, frozen at 5, unfrozen at 6 (a drop); the trial restores
    from its checkpoint of report 4, made before both: the unfreeze is void, the freeze is
    ordered again (the trial unfreezes it again when its rate drops again)."""
    scheduler, mailbox, trial = _frozen_then_unfrozen()
    trial.latest_checkpoint_result = SimpleNamespace(metrics={"training_iteration": 4})
    scheduler.on_trial_error(None, trial)
    assert mailbox.posts[-1][1]["freeze"] == ["conv1"] and mailbox.posts[-1][1]["restore"]
    assert "freeze conv1 at report 4: converged" in mailbox.posts[-1][1]["reasons"]["conv1"]
    # from a checkpoint made after the unfreeze, nothing is ordered
    scheduler, mailbox, trial = _frozen_then_unfrozen()
    trial.latest_checkpoint_result = SimpleNamespace(metrics={"training_iteration": 6})
    scheduler.on_trial_error(None, trial)
    assert [p[1]["freeze"] for p in mailbox.posts] == [["conv1"]]


def test_a_restore_from_before_an_unfreeze_and_a_second_freeze_orders_the_first_again() -> None:
    """conv1 frozen after report 4, unfrozen at 6, frozen again after 7; the trial restores
    from its checkpoint of report 4: what held there (the first freeze) is ordered again."""
    scheduler, mailbox, trial = _frozen_then_unfrozen()
    sims = {"conv1": 1.0, "conv2": 0.2}
    feed(scheduler, trial, [_unfrozen(result(sims, it=7), {})])  # settled again: ordered
    feed(scheduler, trial, [_unfrozen(result(sims, ("conv1",), it=8), {})])
    assert [(d.action, d.iteration) for _, d in scheduler.decisions] == [
        ("freeze", 4),
        ("unfreeze", 6),
        ("freeze", 7),
    ]
    trial.latest_checkpoint_result = SimpleNamespace(metrics={"training_iteration": 4})
    scheduler.on_trial_error(None, trial)
    assert mailbox.posts[-1][1]["freeze"] == ["conv1"] and mailbox.posts[-1][1]["restore"]
    assert "freeze conv1 at report 4" in mailbox.posts[-1][1]["reasons"]["conv1"]


def test_a_restart_from_scratch_forgets_the_freezes_and_unfreezes_of_the_run_it_left() -> None:
    """Run A froze conv1 and unfroze it, then failed without a checkpoint; run B never
    freezes conv1 and restores from its own checkpoint: nothing of run A is ordered."""
    scheduler, mailbox = make(patience=1, settle_window=1, plateau=1, stop=False)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    settled, moving = {"conv1": 1.0, "conv2": 0.2}, {"conv1": 0.2, "conv2": 0.2}
    feed(scheduler, trial, [_unfrozen(result(settled, it=i), {}) for i in (1, 2, 3, 4)])
    feed(scheduler, trial, [_unfrozen(result(settled, ("conv1",), it=5), {})])
    feed(scheduler, trial, [_unfrozen(result(moving, it=6), {"conv1": LR_REASON})])
    assert [d.action for _, d in scheduler.decisions] == ["freeze", "unfreeze"]
    scheduler.on_trial_error(None, trial)  # no checkpoint: run B starts from scratch
    posted = len(mailbox.posts)
    feed(scheduler, trial, [_unfrozen(result(moving, it=i), {}) for i in (1, 2, 3, 4)])
    trial.latest_checkpoint_result = SimpleNamespace(metrics={"training_iteration": 3})
    scheduler.on_trial_error(None, trial)
    assert mailbox.posts[posted:] == []


def test_restores_one_after_another_go_back_to_what_held_at_each_checkpoint() -> None:
    """Freeze 4, unfreeze 6, freeze 7, unfreeze 9: a restore to 8 orders the freeze of 7, a
    later restore to 5 the freeze of 4 (an unfreeze after either checkpoint is void)."""
    scheduler, mailbox = make(patience=1, settle_window=1, plateau=1, stop=False)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    sims = {"conv1": 1.0, "conv2": 0.2}
    frozen = {5: ("conv1",), 8: ("conv1",)}
    reasons = {6: {"conv1": LR_REASON}, 9: {"conv1": LR_REASON}}
    for it in range(1, 10):
        report = result(sims, frozen.get(it, ()), it=it)
        feed(scheduler, trial, [_unfrozen(report, reasons.get(it, {}))])
    assert [(d.action, d.iteration) for _, d in scheduler.decisions] == [
        ("freeze", 4),
        ("unfreeze", 6),
        ("freeze", 7),
        ("unfreeze", 9),
    ]
    for restore_at, freeze in ((8, "report 7"), (5, "report 4")):
        trial.latest_checkpoint_result = SimpleNamespace(metrics={"training_iteration": restore_at})
        scheduler.on_trial_error(None, trial)
        assert mailbox.posts[-1][1]["freeze"] == ["conv1"], restore_at
        assert f"freeze conv1 at {freeze}" in mailbox.posts[-1][1]["reasons"]["conv1"]


def test_a_train_job_resumed_by_tune_from_its_checkpoint_keeps_the_reasons() -> None:
    """Tune restarts a Ray Train trial and numbers its reports from 1 again, while the job goes
    on from its own checkpoint (its report's name says '@a-6'): conv1 is still frozen, and why
    is still known (a restart from scratch would forget it)."""
    scheduler, _ = make(patience=1, settle_window=1, plateau=1, stop=False)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    sims = {"conv1": 1.0, "conv2": 0.2}
    feed(scheduler, trial, [_named(result(sims, it=i), f"a-{i}") for i in (1, 2, 3, 4)])
    feed(scheduler, trial, [_named(result(sims, ("conv1",), it=i), f"a-{i}") for i in (5, 6)])
    scheduler.on_trial_error(None, trial)
    feed(scheduler, trial, [_named(result(sims, ("conv1",), it=1), "b-1@a-6")])
    assert "freeze conv1 at report 4: converged" in scheduler.debug_string()


def test_a_scheduler_that_steered_an_experiment_refuses_another() -> None:
    # a second experiment would be ranked among the first one's trials, and the mailbox is the
    # first experiment's: no freeze would reach its trials
    scheduler, _ = make()
    scheduler.on_trial_add(None, FakeTrial("t1"))
    scheduler.set_search_properties(None, None)  # (the same experiment resumed: allowed)
    scheduler.on_trial_add(None, FakeTrial("t1"))
    other = FakeTrial("t2")
    other.experiment_dir_name = "another"
    with pytest.raises(ValueError, match=r"new SVCCAScheduler for each experiment.*'another'"):
        scheduler.on_trial_add(None, other)


def test_the_metric_scale_is_inferred_from_the_reports_logged_and_carried_by_decisions(
    caplog,
) -> None:
    # a mean squared error (mode="min") near 0.05: its scale is 0.1, so a trial whose loss
    # stays flat while the others' falls is stopped on thresholds a tenth of an accuracy's
    scheduler, _ = make(mode="min", max_t=12, freeze=False)
    assert scheduler.scale == 1.0  # nothing reported yet
    falling = [0.05, 0.03, 0.02, 0.016, 0.015]
    trials = [FakeTrial(f"t{i}") for i in range(4)]
    for trial in trials:
        scheduler.on_trial_add(None, trial)
    with caplog.at_level(logging.INFO, logger="ikkuna_tune"):
        for it, loss in enumerate(falling, start=1):
            for trial in trials[:3]:
                feed(scheduler, trial, [result({"conv1": 0.9}, it=it, acc=loss)])
        decisions = feed(
            scheduler,
            trials[3],
            [result({"conv1": 0.9}, it=it, acc=0.05, dist={"conv1": 0.1 * it}) for it in (1, 2)]
            + [
                result({"conv1": 0.9}, it=it, acc=0.0499, dist={"conv1": 0.1 * it}) for it in (3, 4)
            ],
        )
    assert scheduler.scale == 0.1 and scheduler.metric_rules().stall_delta == pytest.approx(0.002)
    assert decisions[-1] == TrialScheduler.STOP
    (stop,) = [d for t, d in scheduler.decisions if t == "t3"]
    assert stop.rule == "stuck: no progress while others learned"
    assert stop.values["metric_scale"] == 0.1 and stop.values["best"] == pytest.approx(0.0499)
    told = [r.getMessage() for r in caplog.records if "at a scale of" in r.getMessage()]
    assert told == [
        "SVCCAScheduler takes 'acc' at a scale of 0.1 (inferred from the reports): min_delta "
        "0.0005, stall_delta 0.002 and reach_within 0.005 in its units"
    ]
    # given, it is not inferred
    given, _ = make(mode="min", metric_scale=1.0)
    feed(given, FakeTrial("t"), [result({"conv1": 0.9}, it=1, acc=0.05)])
    assert given.scale == 1.0


def test_a_stop_through_a_resource_changing_scheduler_is_credited_to_its_base() -> None:
    """``ResourceChangingScheduler`` only changes resources: the stop its base decides is the
    base's, as it reads when the wrapping is the other way round."""
    from ray.tune import PlacementGroupFactory
    from ray.tune.schedulers import ResourceChangingScheduler

    scheduler, _ = make(stop=False, base=ResourceChangingScheduler(_StoppingBase(None)))
    early = FakeTrial("t1")
    early.placement_group_factory = PlacementGroupFactory([{"CPU": 1}])  # type: ignore[attr-defined]
    scheduler.on_trial_add(None, early)
    feed(scheduler, early, [result({"conv1": 0.5}, it=1, acc=0.2)])
    assert scheduler.stopped_trials == {"t1": "_StoppingBase (metric)"}


PAUSE = TrialScheduler.PAUSE


def _waiting_sweep(**kwargs) -> tuple[SVCCAScheduler, list[FakeTrial]]:
    """A scheduler with a budget of 6 reports, one running trial and three waiting to start."""
    kwargs.setdefault("max_t", 6)
    kwargs.setdefault("freeze", False)
    scheduler, _ = make(**kwargs)
    trials = [FakeTrial(f"t{i}") for i in range(4)]
    for trial in trials:
        trial.status = "PENDING"
        scheduler.on_trial_add(None, trial)
    trials[0].status = "RUNNING"
    return scheduler, trials


def checkpointed(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` as Tune hands it on when the trial reported a checkpoint with it."""
    return {**report, "should_checkpoint": True}


def test_a_trial_no_other_can_be_compared_with_waits_once_at_stall_share() -> None:
    """The first trial of a sweep that runs one trial at a time has nothing to be compared
    with at a third of its budget: it is paused there (with its checkpoint) while trials wait
    to start, once, with the decision and its values recorded."""
    scheduler, trials = _waiting_sweep()
    first = trials[0]
    reports = [checkpointed(result({"conv1": 0.5}, it=i, acc=0.2 * i)) for i in (1, 2, 3)]
    assert feed(scheduler, first, reports[:1]) == [CONTINUE]
    assert feed(scheduler, first, reports[1:2]) == [PAUSE]  # report 2 = 6 / 3
    ((trial_id, decision),) = scheduler.decisions
    assert trial_id == "t0" and decision.describe() == (
        "pause at report 2: waits to be compared (others_as_far=0, trials_waiting=3)"
    )
    assert "pause at report 2: waits to be compared" in scheduler.debug_string()
    first.status = "RUNNING"  # resumed from the report's checkpoint
    assert feed(scheduler, first, reports[2:]) == [CONTINUE]  # never twice
    assert scheduler.stopped_trials == {}


@pytest.mark.parametrize(
    "case",
    [
        "no checkpoint",
        "none waiting",
        "others as far",
        "stop=False",
        "wait=False",
        "base",
        "no metric",
    ],
)
def test_a_trial_waits_only_where_waiting_helps_and_resuming_is_exact(case) -> None:
    """Without the report's checkpoint it would go back or start over; with no trial waiting
    to start, nothing would come to compare it with; with protect_top others as far, it can
    be compared now; with stopping off, or a base scheduler (which chooses what runs), there
    is nothing to wait for; and a trial that never reported its metric cannot be compared."""
    kwargs: dict[str, Any] = {
        "stop=False": {"stop": False},
        "wait=False": {"wait": False},
        "base": {"base": FIFOScheduler()},
    }.get(case, {})
    scheduler, trials = _waiting_sweep(**kwargs)
    if case == "none waiting":
        for trial in trials[1:]:
            trial.status = "TERMINATED"
    if case == "others as far":
        for trial in trials[1:]:
            feed(scheduler, trial, [result({"conv1": 0.5}, it=i, acc=0.5) for i in (1, 2)])
    wrap = (lambda r: r) if case == "no checkpoint" else checkpointed
    acc = None if case == "no metric" else 0.1
    reports = [wrap(result({"conv1": 0.5}, it=i, acc=acc)) for i in range(1, 7)]  # type: ignore[arg-type]
    assert PAUSE not in feed(scheduler, trials[0], reports)
    assert not [d for _, d in scheduler.decisions if d.action == "pause"]


@pytest.mark.parametrize("reported", ["None", "misspelt", "present", "NaN"])
def test_a_trial_that_never_reports_the_metric_is_named_once(caplog, reported) -> None:
    """A trial whose third report still has no value of the metric (a misspelt key, or one
    measured only at the end) is named in one warning, with the reported keys that look like
    the metric; one that reports it, at any of those reports, is not."""
    scheduler, _ = make(stop=reported != "NaN")  # (a NaN metric stops a trial otherwise)
    trials = [FakeTrial(f"t{i}") for i in range(2)]
    for trial in trials:
        scheduler.on_trial_add(None, trial)
    for trial in trials:
        reports = [result(dict.fromkeys(LAYERS, 0.5), it=i) for i in (1, 2, 3, 4)]
        for i, report in enumerate(reports):
            if reported == "misspelt":
                report["accu"] = report.pop("acc")
            elif reported == "NaN":
                report["acc"] = float("nan")
            elif reported == "None" or i != 2:
                report["acc"] = None
        with caplog.at_level(logging.WARNING, logger="ikkuna_tune.tune.scheduler"):
            feed(scheduler, trial, reports)
    warned = [r.getMessage() for r in caplog.records if "no value of its metric" in r.getMessage()]
    if reported == "present":
        assert warned == []
        return
    (message,) = warned
    assert "'acc' from trial t0 in 3 reports" in message
    assert ("['accu']" in message) == (reported == "misspelt")
    assert ("not among the keys" in message) == (reported == "misspelt")
    assert ("not finite, nan" in message) == (reported == "NaN")
    assert "look alike: ['acc']" not in message  # (the metric itself is no look-alike)


def test_a_ray_train_job_is_not_paused_to_wait() -> None:
    """A Ray Train job's workers would start again from a pause."""
    scheduler, trials = _waiting_sweep()
    reports = [
        checkpointed({**result({"conv1": 0.5}, it=i, acc=0.1), keys.TRAIN_REPORT: f"a-{i}"})
        for i in (1, 2, 3)
    ]
    assert PAUSE not in feed(scheduler, trials[0], reports)


def test_a_restored_scheduler_does_not_pause_a_trial_that_waited(tmp_path) -> None:
    """After ``Tuner.restore`` the scheduler reads the decision log: a trial that waited once
    is not paused again."""
    scheduler, _ = _waiting_sweep()
    scheduler._views.pop("t0")
    trial = _trial_with_dirs("t0", tmp_path, tmp_path)
    scheduler.on_trial_add(None, trial)
    reports = [checkpointed(result({"conv1": 0.5}, it=i, acc=0.2 * i)) for i in (1, 2, 3)]
    assert feed(scheduler, trial, reports[:2]) == [CONTINUE, PAUSE]
    again, _ = _waiting_sweep()
    again._views.pop("t0")
    again.on_trial_add(None, _trial_with_dirs("t0", tmp_path, tmp_path))
    assert again._views["t0"].waited
    assert feed(again, trial, reports[2:]) == [CONTINUE]


def test_a_trial_compared_at_stall_share_does_not_wait_later() -> None:
    """Whether a trial waits is judged once, at the first report at stall_share of its
    budget: the second trial of a sweep, comparable there with the first (paused at that
    report), would otherwise wait a report later behind it, and the third behind both."""
    scheduler, trials = _waiting_sweep(protect_top=1)
    first, second = trials[:2]
    rising = [checkpointed(result({"conv1": 0.5}, it=i, acc=0.1 * i)) for i in range(1, 7)]
    assert feed(scheduler, first, rising[:2]) == [CONTINUE, PAUSE]
    first.status, second.status = "PAUSED", "RUNNING"
    assert feed(scheduler, second, rising) == [CONTINUE] * 6


def test_a_trial_readied_to_run_again_is_no_trial_waiting_to_start() -> None:
    """PENDING is also the state of a paused trial Tune readies to resume (or of a failed one
    it starts again): such a trial has reported, brings nothing new to compare with, and is no
    reason for another trial to wait."""
    scheduler, trials = _waiting_sweep()
    first, second, third, fourth = trials
    rising = [checkpointed(result({"conv1": 0.5}, it=i, acc=0.1 * i)) for i in range(1, 4)]
    assert feed(scheduler, first, rising[:2]) == [CONTINUE, PAUSE]
    first.status, second.status, third.status = "PENDING", "RUNNING", "RUNNING"  # readied
    fourth.status = "TERMINATED"
    assert feed(scheduler, second, rising) == [CONTINUE] * 3
    assert [t for t, d in scheduler.decisions if d.action == "pause"] == ["t0"]


def test_a_trial_that_waited_resumes_once_others_ended_ahead_of_new_ones() -> None:
    """A trial that waited goes on as soon as protect_top others have ended (here one), ahead
    of trials waiting to start (a sweep without end would otherwise hold it to the end); a
    trial that has only got as far as it is not enough (compared with where the others stood a
    report ahead, trials at chance ran on almost to the end); before that, trials waiting to
    start go first."""
    scheduler, trials = _waiting_sweep(protect_top=1)
    first, second, third, _ = trials
    rising = [checkpointed(result({"conv1": 0.5}, it=i, acc=0.1 * i)) for i in range(1, 7)]
    assert feed(scheduler, first, rising[:2]) == [CONTINUE, PAUSE]
    first.status, second.status = "PAUSED", "RUNNING"
    controller = FakeController(trials)
    first.last_result = {"training_iteration": 2}
    assert scheduler.choose_trial_to_run(controller) is third  # FIFO: none has ended
    feed(scheduler, second, rising[:3])
    assert scheduler.choose_trial_to_run(controller) is third  # only as far, and further
    scheduler.on_trial_complete(None, second, rising[5])
    assert scheduler.choose_trial_to_run(controller) is first


def test_trials_that_waited_resume_best_first() -> None:
    """Tune resumes paused trials in the order they were added (a sweep over learning rates
    adds the smallest first): trials that waited to be compared resume best first, both once
    protect_top others have ended and when FIFO would pick one (no trial waits to start), so
    that the ones behind are compared with where the better ones got to. Checked against a
    plain ranking of the trials' best accuracies so far."""
    accs = {"t0": [0.1, 0.12], "t1": [0.3, 0.5], "t2": [0.2, 0.45]}
    ranked = sorted(accs, key=lambda t: -max(accs[t]))  # t1 (0.5), t2 (0.45), t0

    def waited() -> tuple[SVCCAScheduler, list[FakeTrial], FakeController]:
        scheduler, _ = make(max_t=6, freeze=False)  # protect_top=3
        trials = [FakeTrial(f"t{i}") for i in range(7)]
        for trial in trials:
            trial.status = "PENDING"
            scheduler.on_trial_add(None, trial)
        for trial_id, curve in accs.items():
            trial = trials[int(trial_id[1])]
            trial.status = "RUNNING"
            reports = [
                checkpointed(result({"conv1": 0.5}, it=i + 1, acc=a)) for i, a in enumerate(curve)
            ]
            assert feed(scheduler, trial, reports) == [CONTINUE, PAUSE], trial_id
            trial.status, trial.last_result = "PAUSED", {"training_iteration": 2}
        return scheduler, trials, FakeController(trials)

    def resumed(scheduler: SVCCAScheduler, controller: FakeController) -> list[str]:
        """The waiting trials in the order the scheduler starts them, one after another."""
        order = []
        for _ in accs:
            trial = scheduler.choose_trial_to_run(controller)
            order.append(trial.trial_id)
            trial.status = "RUNNING"
        return order

    # three others ended, one still waits to start: the waiting trials go first, best first
    scheduler, trials, controller = waited()
    for trial in trials[3:6]:
        feed(scheduler, trial, [result({"conv1": 0.5}, it=i, acc=0.9) for i in range(1, 7)])
        scheduler.on_trial_complete(None, trial, result({"conv1": 0.5}, it=6, acc=0.9))
        trial.status = "TERMINATED"
    assert resumed(scheduler, controller) == ranked
    assert scheduler.choose_trial_to_run(controller) is trials[6]
    # nobody has ended and nothing waits to start: FIFO would resume t0, the worst
    scheduler, trials, controller = waited()
    for trial in trials[3:]:
        trial.status = "RUNNING"
    assert resumed(scheduler, controller) == ranked


def test_debug_string_lists_the_latest_unfreeze_of_a_layer_that_trains_again() -> None:
    scheduler, _ = make(patience=1, settle_window=1, plateau=1, stop=False)
    trial, other = FakeTrial("t1"), FakeTrial("t2")
    for t in (trial, other):
        scheduler.on_trial_add(None, t)
    sims = {"conv1": 1.0, "conv2": 0.2}
    feed(scheduler, trial, [result(sims, it=i) for i in (1, 2, 3, 4)])
    feed(scheduler, trial, [_unfrozen(result(sims, ("conv1",), it=5), {})])
    feed(scheduler, trial, [_unfrozen(result(sims, it=6), {"conv1": LR_REASON})])
    feed(scheduler, other, [result({"conv1": 0.3, "conv2": 0.2}, it=i) for i in (1, 2)])
    text = scheduler.debug_string()
    mine = text.split("  t2:")[0].split("  t1:")[1]
    assert "unfreeze conv1 at report 6" in mine, text
    assert "unfreeze" not in text.split("  t2:")[1]  # listed under its own trial only


def test_only_an_accuracy_reported_with_its_chance_level_is_read_beside_a_loss() -> None:
    """``<key>_chance`` beside a key that names an accuracy; a loss reported with its chance
    level (ln 10 for ten classes) falls as the trial learns: no accuracy to judge it by."""
    scheduler, _ = make(metric="val_loss", mode="min")
    assert scheduler._accuracy_beside({"train_loss": 2.3, "train_loss_chance": 2.3}) == (
        pytest.approx(math.nan, nan_ok=True),
        pytest.approx(math.nan, nan_ok=True),
    )
    both = {"train_loss": 2.3, "train_loss_chance": 2.3, "test_accuracy": 0.4}
    both["test_accuracy_chance"] = 0.1
    assert scheduler._accuracy_beside(both) == (0.4, 0.1)
    assert scheduler._accuracy_beside({"val_acc": 31.0, "val_acc_chance": 1.0}) == (31.0, 1.0)
    # steered on an accuracy with its own chance level: nothing is read beside it
    own, _ = make(metric="acc", mode="max")
    assert math.isnan(own._accuracy_beside({"acc": 0.5, "acc_chance": 0.1, **both})[0])


def test_a_new_run_of_the_same_name_is_judged_among_its_own_trials() -> None:
    """The scheduler of an earlier run, given a new run of the same name: the controller holds
    none of the trials it steered, so it forgets them. A late starter at chance, its layers
    moving, was stopped at report 3 as stuck while the earlier run's finished trials learned;
    alone, it runs on. A run resumed re-adds its trials under their ids (an errored one
    restarted may come first, under a new id): those are taken up again, not forgotten."""
    scheduler, _ = make(grace=2, max_t=9)
    learners = [FakeTrial(f"a_0000{i}") for i in range(3)]
    for t in learners:
        scheduler.on_trial_add(FakeController(learners), t)
    sims = dict.fromkeys(LAYERS, 1.0)
    for it in range(1, 10):
        for i, t in enumerate(learners):
            acc = 0.2 + 0.08 * it + 0.01 * i
            scheduler.on_trial_result(
                None, t, result(sims, it=it, acc=acc, dist={"fc1": 0.05 * it})
            )
    restarted = FakeTrial("a_00003")  # the first trial re-added by a resume: a new id
    scheduler.on_trial_add(FakeController([restarted]), restarted)
    again = [FakeTrial("a_00000"), FakeTrial("a_00001")]
    for t in again:
        scheduler.on_trial_add(FakeController([restarted, *again]), t)
    assert set(scheduler._views) == {"a_00003", "a_00000", "a_00001"}
    late = FakeTrial("b_00000")  # another run: its controller holds only it
    scheduler.on_trial_add(FakeController([late]), late)
    assert set(scheduler._views) == {"b_00000"}
    for it in range(1, 10):
        going = result(sims, it=it, acc=0.1, dist=dict.fromkeys(LAYERS, 0.02 * it))
        assert scheduler.on_trial_result(None, late, going) == CONTINUE
    assert scheduler.stopped_trials == {}


def test_a_trial_failed_for_good_counts_as_ended_for_the_one_that_waited() -> None:
    """A trial that errored for good (Tune's ERROR, after its retries) makes no more reports:
    it has ended where it stood, and a trial that waited to be compared resumes as after one
    that ran its budget; a failed trial Tune retries (PENDING again) has not ended."""
    scheduler, trials = _waiting_sweep(protect_top=1)
    first, second = trials[:2]
    rising = [checkpointed(result({"conv1": 0.5}, it=i, acc=0.1 * i)) for i in range(1, 7)]
    assert feed(scheduler, first, rising[:2]) == [CONTINUE, PAUSE]
    first.status, second.status = "PAUSED", "RUNNING"
    first.last_result = {"training_iteration": 2}
    controller = FakeController(trials)
    feed(scheduler, second, rising[:3])
    second.status = "PENDING"  # failed, to be retried
    scheduler.on_trial_error(None, second)
    assert scheduler.choose_trial_to_run(controller) is second  # FIFO: none has ended
    second.status = "ERROR"  # failed for good
    assert scheduler.choose_trial_to_run(controller) is first


def test_two_results_of_one_iteration_within_a_run_are_judged_as_one() -> None:
    """A trainable that sets ``training_iteration`` itself and reports twice in an epoch (its
    layers, then its validation loss and accuracy) made no restore: Tune's
    ``iterations_since_restore`` goes on. The two are merged and judged as one report, as the
    same values reported once are (the reference: the test above's reports); taken for a
    restore, the second dropped the first, and the finite record of the loss started again
    at each, so the loss that went infinite stopped nothing."""
    scheduler, _ = make()
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    sims = dict.fromkeys(LAYERS, 0.5)
    since = 0
    verdicts = []
    for it, acc, loss in ((1, 0.5, float("inf")), (2, 0.6, 0.9), (3, 0.5, float("inf"))):
        layers = {k: v for k, v in result(sims, it=it).items() if k != "acc"}
        for part in (layers, {"training_iteration": it, "acc": acc, "best_val_loss": loss}):
            since += 1
            verdicts.append(
                scheduler.on_trial_result(None, trial, {**part, "iterations_since_restore": since})
            )
    assert verdicts == [CONTINUE] * 5 + [STOP]
    ((_, decision),) = scheduler.decisions
    assert (decision.rule, decision.iteration) == ("diverged: non-finite value", 3)
    assert decision.values == {"best_val_loss": float("inf")}
    assert scheduler._views["t1"].history.reports == 3  # one report per iteration


class _ActorManager:
    """Ray 2.60's actor manager as the scheduler reads it: which actors hold their resources
    and have been started."""

    def __init__(self, started: set[str]) -> None:
        self.started = started

    def is_actor_started(self, actor: str) -> bool:
        return actor in self.started


class _Controller(FakeController):
    """A controller whose trials have actors: Tune's ``_trial_to_actor`` and actor manager."""

    def __init__(self, trials, actors: dict, started: set[str]) -> None:
        super().__init__(trials)
        self._trial_to_actor = actors
        self._actor_manager = _ActorManager(started)


@pytest.mark.parametrize("starting", [True, False])
def test_a_trial_whose_actor_is_starting_is_no_trial_waiting_to_start(starting: bool) -> None:
    """A trial stays PENDING until its actor has started; one whose actor holds its resources
    and is starting (a slow start on a loaded machine) waits for no slot, and will report
    soon: no reason for another trial to pause (with max_concurrent_trials no larger than the
    trials that run at once, a trial was paused, and started again, in a sweep where none
    waited). A trial whose actor waits for resources still counts."""
    scheduler, trials = _waiting_sweep()
    first, second = trials[:2]
    for trial in trials[2:]:
        trial.status = "TERMINATED"
    actors = {second: "actor-1"}
    controller = _Controller(trials, actors, {"actor-1"} if starting else set())
    reports = [checkpointed(result({"conv1": 0.5}, it=i, acc=0.2 * i)) for i in (1, 2)]
    verdicts = [scheduler.on_trial_result(controller, first, r) for r in reports]
    assert verdicts == [CONTINUE, CONTINUE if starting else PAUSE]


@pytest.mark.parametrize("timed", ["alone", "combined", "none"])
def test_a_trial_of_a_sweep_with_a_time_budget_does_not_wait(timed: str) -> None:
    """``time_budget_s`` ends the whole sweep after a time (Tune's TimeoutStopper, combined
    with ``stop=``'s stopper as ray.tune.Experiment builds it): a trial paused to wait to be
    compared could be ended there, before it resumes. It runs on; without a time budget it
    waits."""
    from ray.tune.stopper import CombinedStopper, MaximumIterationStopper, TimeoutStopper

    stoppers = {
        "alone": TimeoutStopper(3600),
        "combined": CombinedStopper(MaximumIterationStopper(6), TimeoutStopper(3600)),
        "none": MaximumIterationStopper(6),
    }
    scheduler, trials = _waiting_sweep()
    controller = FakeController(trials)
    controller._stopper = stoppers[timed]
    reports = [checkpointed(result({"conv1": 0.5}, it=i, acc=0.2 * i)) for i in (1, 2, 3)]
    verdicts = [scheduler.on_trial_result(controller, trials[0], r) for r in reports]
    assert verdicts == [CONTINUE, PAUSE if timed == "none" else CONTINUE, CONTINUE]
    assert (scheduler.decisions == []) == (timed != "none")
