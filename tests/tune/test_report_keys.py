"""Every report of a trial has the same keys from the first one on (Tune fixes the columns of
``progress.csv`` at the first report): ``freeze_reason/<layer>`` is ``""`` until the layer is
frozen, ``step_seconds`` / ``step_seconds_unfrozen`` are NaN until measured. No Ray session."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from ray.tune.utils import flatten_dict

from ikkuna_tune import compare
from ikkuna_tune.tune import session as session_module
from ikkuna_tune.tune.session import TrialSession
from ikkuna_tune.tune.train_workers import TrainWorker
from tests.conftest import TinyNet
from tests.tune.trainables import StepCount, WeightSum, data

REASON = "freeze conv at report 3: converged (similarity=0.995)"


class _Trial:
    """A TrialSession outside Tune on TinyNet, trained a given number of steps per report."""

    def __init__(self, worker: TrainWorker | None = None) -> None:
        torch.manual_seed(0)
        self.model = TinyNet()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1)
        self.session = TrialSession([WeightSum(), StepCount()], {"lr": 0.1}, worker=worker)
        self.exporter = self.session.watch(self.model, self.opt)
        self.loss_fn = self.exporter.wrap_loss(F.cross_entropy)
        self.x, self.y = data()

    def steps(self, count: int) -> None:
        for _ in range(count):
            self.opt.zero_grad()
            self.loss_fn(self.model(self.x), self.y).backward()
            self.opt.step()

    def report(self, steps: int, **metrics: Any) -> dict[str, Any]:
        self.steps(steps)
        return self.session.report(metrics)


def _flat(report: dict[str, Any]) -> dict[str, Any]:
    return flatten_dict(report, delimiter="/")  # as Tune flattens it for progress.csv


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _reports() -> list[dict[str, Any]]:
    """Reports: before training, after 1 step (the timer's warm-up), after 3 steps, then
    ``conv`` frozen by the scheduler (with a reason), 3 steps, no step, 3 steps."""
    trial = _Trial()
    reports = [trial.report(0, i=0), trial.report(1, i=1), trial.report(3, i=2)]
    trial.session.apply([{"freeze": ["conv"], "reasons": {"conv": REASON}}])
    reports += [trial.report(3, i=3), trial.report(0, i=4), trial.report(3, i=5)]
    trial.session.close()
    return reports


def test_train_steps_counts_the_steps_since_the_report_before() -> None:
    """``train_steps``: 0 before training, then the steps each report's period ran (the
    timer's warm-up step included), 0 for the report with no step between two others."""
    assert [r["train_steps"] for r in _reports()] == [0, 1, 3, 3, 0, 3]


def test_trainable_is_0_only_where_the_training_code_holds_a_layer_fixed() -> None:
    """``trainable/<layer>``: 0 for a layer whose parameters the training code set
    ``requires_grad_(False)`` (a fine-tuned backbone), 1 for one frozen on the scheduler's order
    (it would train without the freeze) and for the rest; a layer made trainable again reads
    1 from the next report on."""
    trial = _Trial()
    assert trial.report(1)["trainable"] == {"conv": 1, "fc": 1}
    trial.model.conv.requires_grad_(False)
    assert trial.report(1)["trainable"] == {"conv": 0, "fc": 1}
    trial.model.conv.requires_grad_(True)
    trial.session.apply([{"freeze": ["conv"], "reasons": {"conv": REASON}}])
    report = trial.report(1)
    assert report["trainable"] == {"conv": 1, "fc": 1} and report["frozen"] == {"conv": 1, "fc": 0}
    trial.session.close()


def test_layers_frozen_past_a_held_layer_are_unfrozen_when_it_trains_again() -> None:
    """Gradual unfreezing: the middle layer frozen past the first while the training code
    held the first fixed; once the first trains again, the middle one (after it) is unfrozen
    at the next report, with the reason, as freezing never goes past a layer that trains."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(36, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 5)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    session = TrialSession([WeightSum()], {"lr": 0.1})
    exporter = session.watch(model, opt)
    loss_fn = exporter.wrap_loss(F.cross_entropy)
    x, y = data()

    def report() -> dict[str, Any]:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
        return session.report({})

    model[1].requires_grad_(False)
    assert report()["trainable"] == {"1": 0, "2": 1, "3": 1}
    session.apply([{"freeze": ["2"], "reasons": {"2": REASON}}])
    assert report()["frozen"] == {"1": 0, "2": 1, "3": 0}
    model[1].requires_grad_(True)
    last = report()
    assert last["frozen"] == {"1": 0, "2": 0, "3": 0}
    assert last["trainable"] == {"1": 1, "2": 1, "3": 1}
    reason = "layer '1' before it trains again (held fixed by the training code)"
    assert last["unfreeze_reason"]["2"] == reason
    assert model[2].weight.requires_grad
    session.close()


def test_every_report_has_the_first_reports_keys() -> None:
    reports = [_flat(r) for r in _reports()]
    first = set(reports[0])
    assert {"freeze_reason/conv", "freeze_reason/fc", "step_seconds"} <= first
    assert {"step_seconds_unfrozen", "frozen/conv", "frozen/fc"} <= first
    for report in reports[1:]:
        assert set(report) == first
    # freeze_reason has the layers of frozen, in the same order
    layers = [k.split("/", 1)[1] for k in reports[0] if k.startswith("frozen/")]
    assert [k.split("/", 1)[1] for k in reports[0] if k.startswith("freeze_reason/")] == layers


def test_freeze_reasons_are_empty_until_a_layer_is_frozen() -> None:
    reports = _reports()
    assert [r["frozen"]["conv"] for r in reports] == [0, 0, 0, 1, 1, 1]
    assert [r["freeze_reason"]["conv"] for r in reports] == ["", "", "", REASON, REASON, REASON]
    assert [r["freeze_reason"]["fc"] for r in reports] == [""] * 6


def test_a_layer_the_trial_froze_itself_says_so() -> None:
    from ikkuna_tune.keys import FROZEN_BY_TRIAL

    trial = _Trial()
    assert trial.report(1)["freeze_reason"] == {"conv": "", "fc": ""}
    trial.exporter.freeze("conv")
    assert trial.report(1)["freeze_reason"] == {"conv": FROZEN_BY_TRIAL, "fc": ""}
    trial.session.close()


def test_a_reason_goes_when_the_training_code_unfreezes_the_layer(caplog) -> None:
    """A two-stage script turns every parameter trainable again: the scheduler's frozen layer
    is unfrozen from the next step on (the warning names that step: the first whose update is
    not zero), and its reason leaves the reports with its frozen flag."""
    trial = _Trial()
    trial.session.apply([{"freeze": ["conv"], "reasons": {"conv": REASON}}])
    frozen = trial.report(2)
    assert frozen["frozen"]["conv"] == 1 and frozen["freeze_reason"]["conv"] == REASON
    for p in trial.model.parameters():
        p.requires_grad_(True)
    before = trial.model.conv.weight.detach().clone()
    step = trial.exporter.global_step + 1  # the step the next training pass starts
    with caplog.at_level("WARNING", logger="ikkuna_tune.layer_freezing"):
        later = trial.report(1)
    assert not torch.equal(trial.model.conv.weight, before)  # it trained in that step
    assert f"counts as unfrozen from step {step} on" in caplog.text
    assert later["frozen"]["conv"] == 0 and later["freeze_reason"]["conv"] == ""
    trial.session.close()


def test_step_times_are_nan_until_measured() -> None:
    reports = _reports()
    step = [r["step_seconds"] for r in reports]
    unfrozen = [r["step_seconds_unfrozen"] for r in reports]
    # nothing measured: no step yet, then the warm-up step; later a report with no step
    assert all(isinstance(v, float) for v in step + unfrozen)
    assert [_is_nan(v) for v in step] == [True, True, False, False, True, False]
    assert all(v > 0 for i, v in enumerate(step) if i not in (0, 1, 4))
    assert [_is_nan(v) for v in unfrozen] == [True, True, False, False, False, False]
    # measured before the freeze only: the mean of the unfrozen reports' step times
    assert unfrozen[2:] == [pytest.approx(step[2])] * 4


def test_a_checkpointed_reason_is_reported_after_a_restore() -> None:
    trial = _Trial()
    trial.report(2)
    trial.session.apply([{"freeze": ["conv"], "reasons": {"conv": REASON}}])
    state = trial.session.state_dict()
    trial.session.close()
    restored = _Trial()
    restored.session.load_state_dict(state)
    report = restored.report(0)
    assert report["freeze_reason"] == {"conv": REASON, "fc": ""}
    assert _is_nan(report["step_seconds"]) and report["step_seconds_unfrozen"] > 0
    restored.session.close()


def test_a_data_parallel_report_averages_only_the_measured_step_times(monkeypatch) -> None:
    """Rank 0 of a two-rank Ray Train job: a step time a rank has not measured is left out
    of the mean; one no rank measured is NaN, and the keys are those of a plain trial."""
    import ray.train

    other: dict[str, Any] = {}
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    monkeypatch.setattr(ray.train, "report", lambda metrics, checkpoint=None: sent.append(metrics))
    # each rank sends its report, its sample counts (none here) and where it measured each
    # value (as rank 0 did)
    monkeypatch.setattr(
        session_module,
        "gather_to_first",
        lambda own: [own, ({**own[0], **other}, own[1], own[2])],
    )
    monkeypatch.setattr(session_module, "broadcast_from_first", lambda value: value)
    trial = _Trial(worker=TrainWorker(rank=0, world_size=2, link=None))
    first = trial.report(1)  # no rank measured a step
    assert _is_nan(first["step_seconds"]) and _is_nan(first["step_seconds_unfrozen"])
    other.update(step_seconds=0.5, step_seconds_unfrozen=0.5)  # only the other rank measured
    second = trial.report(0)
    assert second["step_seconds"] == 0.5 and second["step_seconds_unfrozen"] == 0.5
    other.update(step_seconds=1.0, step_seconds_unfrozen=1.0)
    third = trial.report(3)  # both measured
    assert 0.5 < third["step_seconds"] < 1.0 and 0.5 < third["step_seconds_unfrozen"] < 1.0
    assert sent == [first, second, third]
    assert set(_flat(second)) == set(_flat(third)) == set(_flat(first))
    assert first["freeze_reason"] == {"conv": "", "fc": ""}
    trial.session.close()


def _write_experiment(root: Path, reports: list[dict[str, Any]], as_csv: bool) -> Path:
    """One trial directory as Tune writes it: result.json or progress.csv (columns of the
    first report)."""
    trial = root / "sweep" / "train_aaaaa_00000_0_lr=0.1"
    trial.mkdir(parents=True)
    (trial / "params.json").write_text(json.dumps({"lr": 0.1}))
    rows = [
        {**r, "training_iteration": i, "trial_id": "aaaaa_00000", "done": False}
        for i, r in enumerate(reports, 1)
    ]
    if as_csv:
        flat = [_flat(r) for r in rows]
        with open(trial / "progress.csv", "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(flat[0]))
            writer.writeheader()
            writer.writerows(flat)
    else:
        (trial / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "sweep"


@pytest.mark.parametrize("as_csv", [False, True], ids=["result.json", "progress.csv"])
def test_the_comparison_reads_empty_reasons_and_nan_times_as_absent(tmp_path, as_csv) -> None:
    reports = _reports()
    df = compare.load(_write_experiment(tmp_path, reports, as_csv))
    # one decision: the freeze of conv, from its reason; fc's empty reasons are no freeze
    assert [(d["action"], d["layer"], d["iteration"]) for d in df.attrs["decisions"]] == [
        ("freeze", "conv", 3)
    ]
    assert "freeze_reason" not in df.attrs["empty_metrics"]
    assert "freeze_reason" not in compare.metrics(df)
    # NaN step times are no values (not 0 seconds)
    times = df[df["metric"] == "step_seconds"]
    assert times["training_iteration"].tolist() == [3, 4, 6]
    assert (times["value"] > 0).all()
    unfrozen = df[df["metric"] == "step_seconds_unfrozen"]
    assert unfrozen["training_iteration"].tolist() == [3, 4, 5, 6]
    (row,) = compare.summary(df).to_dict("records")
    assert row["frozen_layers"] == ["conv"] and list(row["freeze_reasons"]) == ["conv"]


def test_a_sweep_without_a_freeze_has_no_reasons_and_no_empty_metric(tmp_path) -> None:
    # read from progress.csv, a freeze_reason column of nothing but "" is one of NaN
    trial = _Trial()
    reports = [trial.report(steps) for steps in (0, 1, 3)]
    trial.session.close()
    df = compare.load(_write_experiment(tmp_path, reports, as_csv=True))
    assert df.attrs["decisions"] == []
    # (the trial runs no learning-rate scheduler: lr_base_scale is NaN in every report)
    assert df.attrs["empty_metrics"] == {"lr_base_scale": False}
    assert "freeze_reason" not in compare.metrics(df)
    assert df.loc[df["metric"] == "step_seconds", "training_iteration"].tolist() == [3]
    (row,) = compare.summary(df).to_dict("records")
    assert row["frozen_layers"] == [] and row["freeze_reasons"] == {}


def test_the_step_time_before_any_freeze_stops_at_the_first_freeze() -> None:
    """``step_seconds_unfrozen`` is the mean step time before any freeze: reports after a
    layer was frozen, also once it is unfrozen again, do not change it (they did, after an
    unfreeze); the state keeps that a freeze happened."""
    trial = _Trial()
    trial.report(1)  # the timer's warm-up
    before = [trial.report(2)["step_seconds"] for _ in range(2)]
    trial.exporter.freeze("conv")
    trial.report(2)
    trial.exporter.unfreeze("conv")
    after = [trial.report(2) for _ in range(2)]
    assert all(r["step_seconds"] > 0 for r in after)
    assert [r["step_seconds_unfrozen"] for r in after] == [pytest.approx(sum(before) / 2)] * 2
    state = trial.session.state_dict()
    assert state["frozen_once"] is True
    trial.session.close()


def test_a_report_after_the_exporter_was_closed_warns_once_and_re_watching_says_why() -> None:
    trial = _Trial()
    trial.report(1, i=0)
    trial.exporter.close()
    with pytest.warns(UserWarning, match="Exporter was closed") as caught:
        trial.report(0, i=1)
        trial.report(0, i=2)
    assert len([w for w in caught if "Exporter was closed" in str(w.message)]) == 1
    with pytest.raises(RuntimeError, match="to train a new model, start a new trial"):
        trial.session.watch(TinyNet(), None)
    trial.session.close()


def test_a_number_not_measured_for_a_report_is_none_and_named_once() -> None:
    """Test accuracy after every 4th step, a report every 3 steps: reports 1 and 5 hold no
    measurement. Their None is kept (never the last value again), and named once in a
    warning at the first: Tune's stoppers and schedulers fail on it."""
    import warnings

    from torch.utils.data import TensorDataset

    import ikkuna_tune as ik

    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = data()
    accuracy = ik.TestAccuracySubscriber(TensorDataset(x, y), frequency=4, backend=None)
    session = TrialSession([accuracy], {"lr": 0.1})
    exporter = session.watch(model, opt)
    loss_fn = exporter.wrap_loss(F.cross_entropy)
    values = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(5):
            for _ in range(3):
                opt.zero_grad()
                loss_fn(model(x), y).backward()
                opt.step()
            values.append(session.report({})["test_accuracy"])
    # measured at steps 3, 7 and 11: in reports 2 (steps 3-5), 3 (6-8) and 4 (9-11)
    assert [v is None for v in values] == [True, False, False, False, True], values
    named = [str(w.message) for w in caught if "not measured since" in str(w.message)]
    assert len(named) == 1 and "'test_accuracy'" in named[0], named
    session.close()
