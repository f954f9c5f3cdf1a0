"""SVCCAScheduler decisions, driven with synthetic flattened results and no Ray."""

from __future__ import annotations

from typing import Any

import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from ikkuna_tune.tune.scheduler import SVCCAScheduler

LAYERS = ("conv1", "conv2", "fc1", "fc2")
CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


class FakeMailbox:
    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []

    def post(self, trial_id: str, directive: dict[str, Any]) -> None:
        self.posts.append((trial_id, directive))

    def discard(self, trial_id: str) -> None:
        pass


class FakeTrial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id
        self.experiment_dir_name = "exp"
        self.status = "RUNNING"
        self.config: dict[str, Any] = {}


class FakeController:
    def __init__(self, trials) -> None:
        self.trials = trials

    def get_trials(self):
        return self.trials

    def get_live_trials(self):
        return self.trials


def result(sim: dict[str, float], frozen=(), it: int = 1, acc: float = 0.5) -> dict[str, Any]:
    out: dict[str, Any] = {"training_iteration": it, "acc": acc}
    for name in LAYERS:
        if name in sim:
            out[f"self_similarity/{name}"] = sim[name]
        out[f"frozen/{name}"] = int(name in frozen)
    return out


def make(**kwargs) -> tuple[SVCCAScheduler, FakeMailbox]:
    kwargs.setdefault("metric", "acc")
    kwargs.setdefault("mode", "max")
    scheduler = SVCCAScheduler(**kwargs)
    mailbox = FakeMailbox()
    scheduler._mailbox = mailbox  # type: ignore[assignment]
    return scheduler, mailbox


def test_freezes_converged_prefix_after_patience() -> None:
    scheduler, mailbox = make(freeze_at=0.99, patience=2)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    sims = {"conv1": 0.995, "conv2": 0.991, "fc1": 0.5, "fc2": 0.999}
    assert scheduler.on_trial_result(None, trial, result(sims, it=1)) == CONTINUE
    assert mailbox.posts == []  # one report is not enough with patience 2
    assert scheduler.on_trial_result(None, trial, result(sims, it=2)) == CONTINUE
    # fc1 has not converged, so fc2 (converged) is not frozen: only a prefix saves compute
    assert mailbox.posts == [("t1", {"freeze": ["conv1", "conv2"]})]
    # until the trial confirms, the layers are pending and not posted again
    scheduler.on_trial_result(None, trial, result(sims, it=3))
    assert len(mailbox.posts) == 1
    scheduler.on_trial_result(None, trial, result(sims, frozen=("conv1", "conv2"), it=4))
    assert scheduler.frozen_layers == {"t1": ["conv1", "conv2"]}
    assert "t1: frozen ['conv1', 'conv2']; running" in scheduler.debug_string()


def test_any_converged_layer_without_input_side_first() -> None:
    scheduler, mailbox = make(input_side_first=False)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    scheduler.on_trial_result(None, trial, result({"conv1": 0.5, "conv2": 0.999, "fc1": 0.2}))
    assert mailbox.posts == [("t1", {"freeze": ["conv2"]})]


def test_last_trainable_layer_is_never_frozen() -> None:
    scheduler, mailbox = make()
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    every = dict.fromkeys(LAYERS, 1.0)
    scheduler.on_trial_result(None, trial, result(every))
    assert mailbox.posts == [("t1", {"freeze": ["conv1", "conv2", "fc1"]})]
    scheduler.on_trial_result(None, trial, result(every, frozen=LAYERS[:3], it=2))
    assert len(mailbox.posts) == 1


def test_view_is_rebuilt_from_reports_after_a_restart() -> None:
    # a fresh scheduler (driver restarted, Tuner.restore) learns what is frozen from the report
    scheduler, mailbox = make()
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    sims = {"conv1": 1.0, "conv2": 0.999, "fc1": 0.3}
    scheduler.on_trial_result(None, trial, result(sims, frozen=("conv1",), it=7))
    assert mailbox.posts == [("t1", {"freeze": ["conv2"]})]


def test_error_clears_pending_directives() -> None:
    scheduler, mailbox = make()
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    scheduler.on_trial_result(None, trial, result({"conv1": 1.0}))
    scheduler.on_trial_error(None, trial)
    # the restored trial did not get the directive: it reports conv1 unfrozen, so ask again
    scheduler.on_trial_result(None, trial, result({"conv1": 1.0}, it=2))
    assert mailbox.posts == [("t1", {"freeze": ["conv1"]}), ("t1", {"freeze": ["conv1"]})]


def test_stops_converged_trial_whose_metric_stopped_improving() -> None:
    scheduler, _ = make(stop_patience=2, grace=1, min_delta=0.01)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    every = dict.fromkeys(LAYERS, 0.999)
    frozen = LAYERS[:3]
    assert scheduler.on_trial_result(None, trial, result(every, it=1, acc=0.80)) == CONTINUE
    assert scheduler.on_trial_result(None, trial, result(every, frozen, 2, acc=0.90)) == CONTINUE
    assert scheduler.on_trial_result(None, trial, result(every, frozen, 3, acc=0.905)) == CONTINUE
    assert scheduler.on_trial_result(None, trial, result(every, frozen, 4, acc=0.90)) == STOP
    assert scheduler.stopped_trials == {"t1": "converged"}


def test_improving_or_unconverged_trials_go_on() -> None:
    scheduler, _ = make(stop_patience=1, grace=0)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    sims = {"conv1": 0.999, "conv2": 0.999, "fc1": 0.999, "fc2": 0.9}  # fc2 still moving
    for it in range(1, 6):
        assert scheduler.on_trial_result(None, trial, result(sims, it=it, acc=0.5)) == CONTINUE


def test_stops_unsettled_trial_after_grace() -> None:
    scheduler, _ = make(unsettled_below=0.9, unsettled_patience=2, grace=2)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    churning = {"conv1": 0.95, "conv2": 0.7, "fc1": 0.8, "fc2": 0.6}
    decisions = [
        scheduler.on_trial_result(None, trial, result(churning, it=it)) for it in range(1, 5)
    ]
    assert decisions == [CONTINUE, CONTINUE, CONTINUE, STOP]
    assert scheduler.stopped_trials == {"t1": "unsettled"}


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


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"freeze_at": 0}, r"`freeze_at` to be a number in \(0, 1\]"),
        ({"freeze_at": 1.5}, r"`freeze_at` to be a number in \(0, 1\]"),
        ({"freeze_at": "0.9"}, r"`freeze_at` to be a number"),
        ({"patience": 0}, r"`patience` to be an integer >= 1"),
        ({"mode": "maximise"}, r"`mode` to be 'max' or 'min'"),
        ({"unsettled_below": 2.0}, r"`unsettled_below`"),
        ({"min_delta": -1}, r"`min_delta` to be a number >= 0"),
        ({"grace": -1}, r"`grace` to be an integer >= 0"),
        ({"base": "asha"}, r"`base` to be a ray.tune TrialScheduler"),
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
