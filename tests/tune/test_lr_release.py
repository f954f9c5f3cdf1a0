"""A layer the scheduler froze is unfrozen by the trial once its learning rate has changed: the
trial side (local mode, no Ray), checked against the same training written in plain PyTorch."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ikkuna_tune as ik
from ikkuna_tune.checks import check_factor_or_none
from ikkuna_tune.tune.lr_release import LearningRateRelease
from ikkuna_tune.tune.session import TrialSession, current_session

X = torch.randn(32, 5, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 3, (32,), generator=torch.Generator().manual_seed(1))
REASON = "freeze 0 at report 1: converged (similarity=0.999)"


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def _steps(model: nn.Module, opt: torch.optim.Optimizer, n: int) -> None:
    for _ in range(n):
        opt.zero_grad()
        F.cross_entropy(model(X), Y).backward()
        opt.step()


def _session() -> TrialSession:
    session = current_session()
    assert session is not None
    return session


def _freeze(name: str = "0", factor: float | None = 2.0) -> dict[str, Any]:
    return {"freeze": [name], "reasons": {name: REASON}, "unfreeze_lr_factor": factor}


def _set_lr(opt: torch.optim.Optimizer, lr: float, group: int = 0) -> None:
    opt.param_groups[group]["lr"] = lr


def _plain(drop_to: float, unfreeze: bool) -> list[torch.Tensor]:
    """The reference: 3 steps, layer 0 frozen by hand (no gradient, so no momentum step),
    3 steps, the learning rate set to ``drop_to``, layer 0 trainable again if ``unfreeze``,
    3 steps."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _steps(model, opt, 3)
    for p in model[0].parameters():
        p.requires_grad_(False)
        p.grad = None
    _steps(model, opt, 3)
    _set_lr(opt, drop_to)
    if unfreeze:
        for p in model[0].parameters():
            p.requires_grad_(True)
    _steps(model, opt, 3)
    return [p.detach().clone() for p in model.parameters()]


def _instrumented(drop_to: float, factor: float | None) -> tuple[list[torch.Tensor], list[dict]]:
    out: list[torch.Tensor] = []

    def trainable(config: dict[str, Any]) -> None:
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        ik.watch(model, opt)
        _steps(model, opt, 3)
        ik.report({"epoch": 1})
        _session().apply([_freeze(factor=factor)])  # as the scheduler's mailbox delivers it
        _steps(model, opt, 3)
        _set_lr(opt, drop_to)  # an epoch-wise decay, before the report
        ik.report({"epoch": 2})
        _steps(model, opt, 3)
        ik.report({"epoch": 3})
        out.extend(p.detach().clone() for p in model.parameters())

    ik.instrument(trainable)({})
    return out, ik.local_results()


def test_a_learning_rate_drop_unfreezes_the_layer_at_the_report_as_plain_pytorch_would() -> None:
    weights, reports = _instrumented(drop_to=0.01, factor=2.0)
    for got, expected in zip(weights, _plain(drop_to=0.01, unfreeze=True), strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert [r["frozen"]["0"] for r in reports] == [0, 0, 0]  # frozen after 1, freed before 2
    second = reports[1]
    assert second["freeze_reason"]["0"] == ""
    assert second["unfreeze_reason"]["0"] == (
        "learning rate changed (lr_at_freeze=0.1, lr=0.01, factor=2, frozen_at_step=2)"
    )
    assert reports[0]["unfreeze_reason"] == {"0": "", "2": "", "4": ""}
    # said once, in the report after the unfreeze: a reason repeated later would read as another
    assert reports[2]["unfreeze_reason"]["0"] == ""
    # (frozen_at_step is the global step, counted from 0); the 3 steps before the second
    # report ran with the layer frozen, those before the third with it trainable
    share = sum(p.numel() for p in _model()[0].parameters()) / sum(
        p.numel() for p in _model().parameters()
    )
    assert second["frozen_fraction"] == pytest.approx(share)
    assert reports[2]["frozen_fraction"] == 0.0


@pytest.mark.parametrize(("drop_to", "factor"), [(0.06, 2.0), (0.01, None)])
def test_a_small_change_or_no_factor_keeps_the_layer_frozen(drop_to, factor) -> None:
    weights, reports = _instrumented(drop_to=drop_to, factor=factor)
    for got, expected in zip(weights, _plain(drop_to=drop_to, unfreeze=False), strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert [r["frozen"]["0"] for r in reports] == [0, 1, 1]
    assert reports[2]["freeze_reason"]["0"] == REASON
    assert reports[2]["unfreeze_reason"]["0"] == ""


def test_a_gradual_decay_unfreezes_at_the_first_step_past_the_factor() -> None:
    """ExponentialLR stepped every training step: the layer trains again from the first step
    whose learning rate is half the one it was frozen at or less (0.9**7 < 0.5 < 0.9**6)."""
    expected = next(k for k in range(1, 100) if 0.9**k <= 0.5 + 1e-12)
    frozen_at_steps: list[bool] = []

    def trainable(config: dict[str, Any]) -> None:
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        decay = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
        ik.watch(model, opt)
        _steps(model, opt, 1)
        ik.report({"epoch": 1})
        _session().apply([_freeze()])
        for _ in range(10):
            _steps(model, opt, 1)  # the check runs as a step starts
            frozen_at_steps.append(not model[0].weight.requires_grad)
            decay.step()
        ik.report({"epoch": 2})

    ik.instrument(trainable)({})
    # the step after the decay's k-th step trains the layer: k steps ran frozen
    assert frozen_at_steps == [True] * expected + [False] * (10 - expected)
    reason = ik.local_results()[-1]["unfreeze_reason"]["0"]
    assert f"lr={0.1 * 0.9**expected:.4g}" in reason


def test_only_the_learning_rate_of_the_layers_own_parameter_group_counts() -> None:
    flags: list[tuple[bool, bool]] = []

    def trainable(config: dict[str, Any]) -> None:
        model = _model()
        head = [p for name, p in model.named_parameters() if not name.startswith("0.")]
        opt = torch.optim.SGD(
            [{"params": model[0].parameters()}, {"params": head, "lr": 0.5}], lr=0.1
        )
        ik.watch(model, opt)
        _steps(model, opt, 1)
        ik.report({"epoch": 1})
        _session().apply([_freeze()])
        _set_lr(opt, 0.01, group=1)  # the head's group only
        _steps(model, opt, 1)
        flags.append((model[0].weight.requires_grad, model[2].weight.requires_grad))
        _set_lr(opt, 0.2, group=0)  # layer 0's own group, doubled
        _steps(model, opt, 1)
        flags.append((model[0].weight.requires_grad, model[2].weight.requires_grad))

    ik.instrument(trainable)({})
    assert flags == [(False, True), (True, True)]


class _Inbox:
    """Delivers a directive at the next report, as the scheduler's mailbox does."""

    def __init__(self) -> None:
        self.directives: list[dict[str, Any]] = []

    def take(self, check_flag: bool = True) -> list[dict[str, Any]]:
        taken, self.directives = self.directives, []
        return taken


def test_a_freeze_judged_before_a_drop_that_came_before_it_is_released_at_once() -> None:
    """The report the scheduler judged measured an epoch at lr 0.1; the learning rate dropped
    to 0.01 before that report, and the freeze arrives after it: the layer was judged at 0.1,
    so it is released at once and trains at 0.01."""
    seen: list[bool] = []

    def trainable(config: dict[str, Any]) -> None:
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ik.watch(model, opt)
        inbox = _Inbox()
        _session().inbox = inbox  # type: ignore[assignment]
        _steps(model, opt, 2)
        _set_lr(opt, 0.01)
        inbox.directives.append(_freeze())
        ik.report({"epoch": 1})  # the directive is applied right after it
        seen.append(model[0].weight.requires_grad)
        _steps(model, opt, 1)
        ik.report({"epoch": 2})

    ik.instrument(trainable)({})
    assert seen == [True]
    reason = ik.local_results()[-1]["unfreeze_reason"]["0"]
    assert "lr_at_freeze=0.1, lr=0.01" in reason


def test_a_freeze_ordered_again_at_a_restore_is_judged_at_the_checkpoints_rates() -> None:
    """The same as above, where the trial stops inside the report (Tune pauses it there, or it
    fails after its checkpoint) and the freeze reaches it only as it restores from that
    report's checkpoint: the freeze was judged at the rate of the epoch that report measured
    (0.1), saved with the checkpoint; taking the rate at the restore (0.01, decayed already)
    kept the layer frozen until the next decay. Released before the first step trains, as
    above (not inside the restore: the next test)."""

    def run(restore: bool) -> tuple[bool, dict[str, Any]]:
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        session = TrialSession([], {})
        session.watch(model, opt)
        _steps(model, opt, 2)
        _set_lr(opt, 0.01)  # an epoch-wise decay, before the report
        state = session.state_dict()  # the report's checkpoint
        session.close()
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)  # the user's restored optimizer
        session = TrialSession([], {})
        session.watch(model, opt)
        if restore:
            session.load_state_dict(state)
        session._as_rank_0_decides([{**_freeze(), "restore": True}], release=False)  # _restore's
        assert not model[0].weight.requires_grad
        _steps(model, opt, 1)  # released at the step's start, so the step trains the layer
        trainable, merged = model[0].weight.grad is not None, session.merge({})
        session.close()
        return trainable, merged

    trainable, merged = run(restore=True)
    assert trainable
    assert "lr_at_freeze=0.1, lr=0.01" in merged["unfreeze_reason"]["0"]
    # without a checkpoint's rates (a state saved before they were), those of the restore
    trainable, merged = run(restore=False)
    assert not trainable and merged["unfreeze_reason"]["0"] == ""


def test_a_restore_inside_watch_releases_nothing_before_the_optimizers_state_is_loaded() -> None:
    """``ik.watch`` before the usual "load the checkpoint's optimizer state" block: the
    restore (inside watch) re-freezes a layer judged at the decayed rate 0.01 while the
    optimizer still holds the config's 0.1. Judged there, the layer was released as if the rate
    had changed; once the training code loads the optimizer's state the rate is 0.01 again,
    as at the freeze: the layer stays frozen, as in the run that never stopped."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    session = TrialSession([], {})
    session.watch(model, opt)
    _steps(model, opt, 2)
    session.report({"epoch": 1})
    _set_lr(opt, 0.01)  # the decay, an epoch before the report the freeze was judged on
    _steps(model, opt, 2)
    # the checkpoint of the report the freeze was judged on (ik.report saves it inside)
    state, opt_state = session.state_dict(), opt.state_dict()
    session.report({"epoch": 2})
    session.close()

    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # the config's rate, as built
    session = TrialSession([], {})
    session.watch(model, opt)
    session.load_state_dict(state)
    session._as_rank_0_decides([{**_freeze(), "restore": True}], release=False)  # _restore's
    opt.load_state_dict(opt_state)  # the training code's restore block, after ik.watch
    assert opt.param_groups[0]["lr"] == 0.01
    before = model[0].weight.detach().clone()
    _steps(model, opt, 2)
    merged = session.merge({})
    session.close()
    assert not model[0].weight.requires_grad
    torch.testing.assert_close(model[0].weight.detach(), before, rtol=0, atol=0)
    assert merged["unfreeze_reason"]["0"] == "" and merged["frozen"]["0"] == 1


def test_a_layer_the_training_code_unfroze_itself_is_not_reported_as_released() -> None:
    def trainable(config: dict[str, Any]) -> None:
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        exporter = ik.watch(model, opt)
        _steps(model, opt, 1)
        ik.report({"epoch": 1})
        _session().apply([_freeze()])
        exporter.unfreeze("0")
        _set_lr(opt, 0.01)
        _steps(model, opt, 1)
        ik.report({"epoch": 2})

    ik.instrument(trainable)({})
    assert ik.local_results()[-1]["unfreeze_reason"]["0"] == ""


def test_the_learning_rates_at_the_freeze_survive_a_checkpoint(tmp_path) -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=torch.tensor(0.1))  # a tensor learning rate
    release = LearningRateRelease()
    release.track("0", 3.0, [opt], model[0].parameters(), step=7)
    torch.save(release.state_dict(), tmp_path / "state.pt")
    restored = LearningRateRelease()
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    opt.param_groups[0]["lr"] = torch.tensor(0.04)  # 2.5 times lower: less than 3
    assert restored.due([opt]) == []
    opt.param_groups[0]["lr"] = torch.tensor(0.03)
    ((name, change),) = restored.due([opt])
    assert (name, change.frozen_at_step, change.factor) == ("0", 7, 3.0)
    assert math.isclose(change.before, 0.1, rel_tol=1e-6)
    assert math.isclose(change.now, 0.03, rel_tol=1e-6)


@pytest.mark.parametrize("bad", [1, 0.5, float("inf"), float("nan"), "2", True])
def test_a_factor_that_is_not_above_one_is_refused(bad) -> None:
    with pytest.raises(ValueError, match="unfreeze_lr_factor.*above 1 or None but got"):
        check_factor_or_none("unfreeze_lr_factor", bad)


def test_lr_scale_is_the_learning_rate_over_its_largest_for_the_least_decayed_group() -> None:
    """A warm-up (rising: 1.0 throughout), then a decay of one group only (the other keeps
    the report at 1.0), then of both; computed by hand from the rates set."""
    scales: list[float] = []

    def trainable(config: dict[str, Any]) -> None:
        model = _model()
        head = [p for name, p in model.named_parameters() if not name.startswith("0.")]
        opt = torch.optim.SGD([{"params": model[0].parameters()}, {"params": head}], lr=0.01)
        ik.watch(model, opt)
        for body, top in [(0.01, 0.01), (0.1, 0.05), (0.1, 0.1), (0.02, 0.1), (0.02, 0.025)]:
            _set_lr(opt, body, group=0)
            _set_lr(opt, top, group=1)
            _steps(model, opt, 1)
            scales.append(ik.report({"x": 1})["lr_scale"])

    ik.instrument(trainable)({})
    assert scales == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.25])


def test_lr_base_scale_is_the_rate_over_its_schedulers_starting_rate() -> None:
    """A constant warm-up at 1 % (LambdaLR) for 2 epochs, then the rate itself, then a
    tenfold drop: lr_base_scale reads 0.01, 0.01, 1 (the rates over torch's ``initial_lr``,
    0.1), then 1 again (a rate that fell from its largest is no warm-up), lr_scale 1, 1, 1,
    0.1; NaN without a scheduler."""
    reports: list[tuple[float, float]] = []

    def trainable(config: dict[str, Any]) -> None:
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        factors = [0.01, 0.01, 1.0, 0.1]
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: factors[epoch])
        ik.watch(model, opt)
        for _ in factors:
            _steps(model, opt, 1)
            report = ik.report({"x": 1})
            reports.append((report["lr_base_scale"], report["lr_scale"]))
            if len(reports) < len(factors):
                schedule.step()

    ik.instrument(trainable)({})
    assert reports == [
        pytest.approx((0.01, 1.0)),
        pytest.approx((0.01, 1.0)),
        pytest.approx((1.0, 1.0)),
        pytest.approx((1.0, 0.1)),
    ]

    def plain(config: dict[str, Any]) -> None:
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ik.watch(model, opt)
        _steps(model, opt, 1)
        ik.report({"x": 1})

    ik.instrument(plain)({})
    assert math.isnan(ik.local_results()[-1]["lr_base_scale"])


def test_lr_base_scale_reads_a_warm_up_only_where_every_group_warms_up() -> None:
    """Two parameter groups: one held at 1 % of its scheduler's rate (LambdaLR), the other on
    a cosine from its own rate: no warm-up (1), since the second group trains at its rate and
    then falls from it; both at 1 %: 0.01. lr_scale reads 1 throughout (the held group)."""
    reports: dict[str, list[float]] = {"mixed": [], "both": []}

    def trainable(config: dict[str, Any]) -> None:
        model = _model()
        head = [p for name, p in model.named_parameters() if not name.startswith("0.")]
        opt = torch.optim.SGD([{"params": model[0].parameters()}, {"params": head}], lr=0.1)
        second = (lambda e: 0.01) if config["case"] == "both" else (lambda e: 1.0 - 0.2 * e)
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, [lambda e: 0.01, second])
        ik.watch(model, opt)
        for _ in range(3):
            _steps(model, opt, 1)
            schedule.step()
            report = ik.report({"x": 1})
            reports[config["case"]].append((report["lr_base_scale"], report["lr_scale"]))

    for case in reports:
        ik.instrument(trainable)({"case": case})
    assert reports["mixed"] == [pytest.approx((1.0, 1.0))] * 3
    assert reports["both"] == [pytest.approx((0.01, 1.0))] * 3


def test_lr_scale_is_nan_without_an_optimizer() -> None:
    def trainable(config: dict[str, Any]) -> None:
        ik.watch(_model())
        ik.report({"x": 1})

    ik.instrument(trainable)({})
    assert math.isnan(ik.local_results()[-1]["lr_scale"])


def test_a_release_takes_the_layers_frozen_after_it_along() -> None:
    """Layers 0 and 2 frozen together; only layer 0's group decays: layer 2, judged on inputs
    that change again, is unfrozen with it (what is frozen stays a prefix), saying why."""
    flags: list[tuple[bool, bool]] = []

    def trainable(config: dict[str, Any]) -> None:
        model = _model()
        rest = [p for name, p in model.named_parameters() if not name.startswith("0.")]
        opt = torch.optim.SGD([{"params": model[0].parameters()}, {"params": rest}], lr=0.1)
        ik.watch(model, opt)
        _steps(model, opt, 1)
        ik.report({"epoch": 1})
        _session().apply([{"freeze": ["0", "2"], "reasons": {}, "unfreeze_lr_factor": 2.0}])
        flags.append((model[0].weight.requires_grad, model[2].weight.requires_grad))
        _set_lr(opt, 0.01, group=0)
        _steps(model, opt, 1)
        flags.append((model[0].weight.requires_grad, model[2].weight.requires_grad))
        ik.report({"epoch": 2})

    ik.instrument(trainable)({})
    assert flags == [(False, False), (True, True)]
    reasons = ik.local_results()[-1]["unfreeze_reason"]
    assert reasons["0"].startswith("learning rate changed (lr_at_freeze=0.1, lr=0.01")
    assert reasons["2"].startswith("learning rate changed in 0 (lr_at_freeze=0.1, lr=0.01")


def test_a_layer_the_training_code_froze_again_itself_stays_frozen_at_a_drop() -> None:
    """The scheduler froze layer 0, the training code unfroze it and froze it again: that
    freeze is the training code's, and a learning-rate change leaves it."""
    frozen: list[bool] = []

    def trainable(config: dict[str, Any]) -> None:
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        exporter = ik.watch(model, opt)
        _steps(model, opt, 1)
        ik.report({"epoch": 1})
        _session().apply([_freeze()])
        _steps(model, opt, 1)
        exporter.unfreeze("0")
        _steps(model, opt, 1)
        exporter.freeze("0")
        _set_lr(opt, 0.01)
        _steps(model, opt, 1)
        frozen.append(not model[0].weight.requires_grad)
        ik.report({"epoch": 2})

    ik.instrument(trainable)({})
    assert frozen == [True]
    assert ik.local_results()[-1]["unfreeze_reason"]["0"] == ""


@pytest.mark.parametrize("number", [float, np.float64, np.float32])
def test_lr_scale_takes_a_peak_reached_between_reports(number) -> None:
    """A per-step warm-up to 0.1 over 4 steps, then a per-step decay, within one report
    period: the largest rate is the one a step trained with, not one seen at a report (also
    for rates a schedule computes as NumPy numbers)."""
    rates = [0.025, 0.05, 0.075, 0.1, 0.08, 0.06, 0.04]

    def trainable(config: dict[str, Any]) -> None:
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=rates[0])
        ik.watch(model, opt)
        for lr in rates:
            _set_lr(opt, number(lr))
            _steps(model, opt, 1)
        ik.report({"epoch": 1})

    ik.instrument(trainable)({})
    assert ik.local_results()[-1]["lr_scale"] == pytest.approx(0.04 / 0.1, rel=1e-6)


def test_a_hand_over_to_an_optimizer_that_does_not_hold_the_frozen_layer_releases_nothing() -> None:
    """A second training stage trains only the head with a new optimizer at another rate: the
    frozen layer is trained by nothing, whatever the rates, so it stays frozen."""
    flags: list[bool] = []

    def trainable(config: dict[str, Any]) -> None:
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        exporter = ik.watch(model, opt)
        _steps(model, opt, 2)
        ik.report({"epoch": 1})
        _session().apply([_freeze()])
        _steps(model, opt, 1)
        head = torch.optim.Adam(model[4].parameters(), lr=1e-3)
        exporter.set_optimizers(head)
        _steps(model, head, 2)
        flags.append(model[0].weight.requires_grad)
        ik.report({"epoch": 2})

    ik.instrument(trainable)({})
    report = ik.local_results()[-1]
    assert flags == [False]
    assert (report["frozen"]["0"], report["unfreeze_reason"]["0"]) == (1, "")


@pytest.mark.parametrize(("new_lr", "released"), [(0.1, False), (0.12, False), (0.01, True)])
def test_after_a_hand_over_the_frozen_layer_is_compared_with_the_group_that_holds_it_now(
    new_lr, released
) -> None:
    """The new optimizer puts the head first and layer 0 in its second group: layer 0 is
    released only when its own new rate is a factor 2 from its rate at the freeze (0.1), not
    by the rate at the position it had (the head's 0.001)."""
    flags: list[bool] = []

    def trainable(config: dict[str, Any]) -> None:
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        exporter = ik.watch(model, opt)
        _steps(model, opt, 2)
        ik.report({"epoch": 1})
        _session().apply([_freeze()])
        head = [p for name, p in model.named_parameters() if not name.startswith("0.")]
        new = torch.optim.SGD(
            [{"params": head, "lr": 0.001}, {"params": model[0].parameters(), "lr": new_lr}]
        )
        exporter.set_optimizers(new)
        _steps(model, new, 1)
        flags.append(model[0].weight.requires_grad)

    ik.instrument(trainable)({})
    assert flags == [released]


def test_lr_scale_starts_afresh_with_a_new_optimizer() -> None:
    """A first stage decays its rate tenfold; the second stage's optimizer keeps a constant
    rate (1.0 throughout), whatever the order of its groups: the old optimizer's largest rates
    say nothing of the new one's groups."""
    scales: list[float] = []

    def trainable(config: dict[str, Any]) -> None:
        model = _model()
        head = [p for name, p in model.named_parameters() if not name.startswith("0.")]
        opt = torch.optim.SGD([{"params": model[0].parameters()}, {"params": head}], lr=0.1)
        exporter = ik.watch(model, opt)
        for lr in (0.1, 0.01):
            _set_lr(opt, lr, 0)
            _set_lr(opt, lr, 1)
            _steps(model, opt, 1)
            scales.append(ik.report({"x": 1})["lr_scale"])
        new = torch.optim.Adam(model.parameters(), lr=1e-3)
        exporter.set_optimizers(new)
        for _ in range(2):
            _steps(model, new, 1)
            scales.append(ik.report({"x": 1})["lr_scale"])

    ik.instrument(trainable)({})
    assert scales == pytest.approx([1.0, 0.1, 1.0, 1.0])
