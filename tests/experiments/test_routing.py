"""RoutingScheduler: every trial is heard only by its own group's scheduler."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from experiments.bench_sweep import group_of, variants
from experiments.routing import RoutingScheduler


class Recording(FIFOScheduler):
    """Records what it hears and stops trials whose result says so."""

    def __init__(self) -> None:
        super().__init__()
        self.heard: list[tuple[str, str]] = []

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self.heard.append(("add", trial.trial_id))

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        self.heard.append(("result", trial.trial_id))
        return TrialScheduler.STOP if result.get("stop") else TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        self.heard.append(("complete", trial.trial_id))

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self.heard.append(("remove", trial.trial_id))

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self.heard.append(("error", trial.trial_id))


def _trial(trial_id: str, group: str) -> Any:
    return SimpleNamespace(trial_id=trial_id, config={"scheduler": group})


def test_each_trial_reaches_only_its_group() -> None:
    a, b = Recording(), Recording()
    router = RoutingScheduler({"a": a, "b": b})
    ta, tb = _trial("t1", "a"), _trial("t2", "b")
    for trial in (ta, tb):
        router.on_trial_add(None, trial)
    assert router.on_trial_result(None, ta, {"stop": True}) == TrialScheduler.STOP
    assert router.on_trial_result(None, tb, {}) == TrialScheduler.CONTINUE
    router.on_trial_error(None, tb)
    router.on_trial_complete(None, ta, {})
    router.on_trial_remove(None, tb)
    assert a.heard == [("add", "t1"), ("result", "t1"), ("complete", "t1")]
    assert b.heard == [("add", "t2"), ("result", "t2"), ("error", "t2"), ("remove", "t2")]


def test_search_properties_reach_every_group() -> None:
    a, b = ASHAScheduler(), ASHAScheduler()
    router = RoutingScheduler({"a": a, "b": b})
    assert router.set_search_properties("acc", "max")
    assert (a._metric, a._mode, b._metric, b._mode) == ("acc", "max", "acc", "max")
    # a group that already has its own metric refuses, and so does the router
    assert not RoutingScheduler({"c": ASHAScheduler(metric="x", mode="min")}).set_search_properties(
        "acc", "max"
    )


def test_unknown_group_and_bad_arguments_are_errors() -> None:
    router = RoutingScheduler({"a": Recording()})
    with pytest.raises(ValueError, match=r"group to be one of \['a'\] but got 'zz'"):
        router.on_trial_add(None, _trial("t1", "zz"))
    with pytest.raises(ValueError, match="at least one scheduler group"):
        RoutingScheduler({})
    with pytest.raises(ValueError, match="Expected a Tune scheduler for group 'a'"):
        RoutingScheduler({"a": object()})  # type: ignore[dict-item]


def test_bench_sweep_groups_every_config_side_by_side() -> None:
    quick = variants(quick=True)
    groups = [group_of({"variant": v}) for v in quick]
    assert groups.count("fifo") == groups.count("svcca_asha") == 4
    assert groups.count("freeze_on") == 1
    # the freezing trial has a FIFO twin with the same config
    twin = next(v for v in quick if v["scheduler"] == "freeze_on")
    assert {**twin, "scheduler": "fifo"} in quick
    assert len(variants(quick=False)) == 4 * 8 + 1


def test_a_paused_trial_resumes_as_its_group_would_alone() -> None:
    """A group's scheduler, shown only its own group's trials, decides when a trial it paused
    resumes: while a trial of its group waits to start, FIFO (trials waiting to start first);
    then the paused one, ahead of other groups' trials waiting to start."""
    chosen: list[tuple[str, str]] = []

    class Choosing(Recording):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def choose_trial_to_run(self, tune_controller: Any) -> Any:
            trial = super().choose_trial_to_run(tune_controller)
            chosen.append((self.name, trial.trial_id if trial else None))
            return trial

    router = RoutingScheduler({"a": Choosing("a"), "b": Choosing("b")})
    paused, pending_a, pending_b = _trial("t1", "b"), _trial("t2", "a"), _trial("t3", "b")
    paused.status, pending_a.status, pending_b.status = "PAUSED", "PENDING", "PENDING"
    controller = SimpleNamespace(get_trials=lambda: [paused, pending_a, pending_b])
    # group b, alone, would start t3 first: the global FIFO choice stands
    assert router.choose_trial_to_run(controller) is pending_a
    assert chosen == [("b", "t3")]
    pending_b.status = "RUNNING"
    assert router.choose_trial_to_run(controller) is paused  # ahead of a's t2
    assert chosen[-1] == ("b", "t1")


def test_the_paused_trial_a_group_chooses_is_resumed_and_the_group_asked_once() -> None:
    """A group's scheduler may resume another of its paused trials than the first one
    (SVCCAScheduler resumes trials that waited best first): the router resumes the one it
    chose, asking each group once (its choice readies that trial to resume)."""
    asked: list[str] = []

    class Last(FIFOScheduler):
        def choose_trial_to_run(self, tune_controller: Any) -> Any:
            paused = [t for t in tune_controller.get_trials() if t.status == "PAUSED"]
            asked.append(",".join(t.trial_id for t in paused))
            return paused[-1] if paused else None

    router = RoutingScheduler({"a": Last(), "b": Last()})
    first, second, other = _trial("t1", "a"), _trial("t2", "a"), _trial("t3", "b")
    first.status = second.status = "PAUSED"
    other.status = "RUNNING"
    controller = SimpleNamespace(get_trials=lambda: [first, second, other])
    assert router.choose_trial_to_run(controller) is second
    assert asked == ["t1,t2"]
