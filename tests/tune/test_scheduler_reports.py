"""SVCCAScheduler on report streams that are not one fresh report per epoch: a trial restored
from an older checkpoint (it repeats iterations), several reports per epoch, a loss under a
name of the user's. Each is compared with the uninterrupted, one-report-per-epoch run it stands
for (driven with synthetic flattened results and no Ray)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from tests.tune.test_scheduler import CONTINUE, STOP, FakeTrial, feed, make, result

SIMS = {"conv1": 0.995, "conv2": 0.994, "fc1": 0.5, "fc2": 0.999}


def _epoch(it: int, acc: float, dist: float) -> dict[str, Any]:
    """An epoch-end report: similarities and a distance from initialisation for every layer."""
    return result(SIMS, it=it, acc=acc, dist={n: dist for n in SIMS})


def _mid(it: int, acc: float) -> dict[str, Any]:
    """A report within an epoch: the metric, but no similarity (SVCCA runs at epoch ends)."""
    out = result({}, it=it, acc=acc)
    # every report has the same keys: those measured at epoch ends are None in between
    for key in [k for k in out if k.startswith(("init_similarity", "live_fraction"))]:
        out[key] = None
    return {**out, **{f"self_similarity/{name}": None for name in SIMS}}


def _run(reports: list[dict[str, Any]]):
    scheduler, mailbox = make(patience=2, settle_window=2, plateau=2)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    decisions = feed(scheduler, trial, reports)
    return scheduler, mailbox, decisions


# the epochs' accuracies and distances: learning for 3 epochs, then settled (on a plateau
# long enough that the metric's mean over three reports no longer rises: a freeze at epoch 8)
ACCS = [0.5, 0.7, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8]
DISTS = [0.05, 0.09, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]


def test_a_trial_restored_from_an_older_checkpoint_is_judged_on_the_run_it_continues() -> None:
    clean = [_epoch(i + 1, a, d) for i, (a, d) in enumerate(zip(ACCS, DISTS))]
    # the run that failed made reports 4 and 5 with other values (a better accuracy that
    # the restored run never reaches), then was restored from its checkpoint of iteration 3
    void = [_epoch(4, 0.95, 0.2), _epoch(5, 0.95, 0.3)]
    restored_stream = clean[:3] + void + clean[3:]
    reference, ref_mailbox, _ = _run(clean)
    scheduler, mailbox, _ = _run(restored_stream)
    assert ref_mailbox.posts  # the clean run freezes something: the comparison means something
    assert mailbox.posts == ref_mailbox.posts  # same layers, same reports, same values
    view, ref_view = scheduler._views["t1"], reference._views["t1"]
    assert view.history.metric == ref_view.history.metric
    assert view.iterations == list(range(1, len(ACCS) + 1))
    assert [d.describe() for _, d in scheduler.decisions] == [
        d.describe() for _, d in reference.decisions
    ]


def test_a_trial_restarted_from_scratch_forgets_its_first_run() -> None:
    clean = [_epoch(i + 1, a, d) for i, (a, d) in enumerate(zip(ACCS, DISTS))]
    first_run = [_epoch(1, 0.9, 0.3), _epoch(2, 0.9, 0.3)]
    reference, ref_mailbox, _ = _run(clean)
    scheduler, mailbox, _ = _run(first_run + clean)
    assert mailbox.posts == ref_mailbox.posts
    assert scheduler._views["t1"].history.metric == reference._views["t1"].history.metric


def test_several_reports_per_epoch_are_judged_by_the_epochs_reports(caplog) -> None:
    per_epoch = [_epoch(i + 1, a, d) for i, (a, d) in enumerate(zip(ACCS, DISTS))]
    thrice: list[dict[str, Any]] = []
    for epoch, (a, d) in enumerate(zip(ACCS, DISTS)):
        base = 3 * epoch
        thrice += [_mid(base + 1, a - 0.02), _mid(base + 2, a - 0.01), _epoch(base + 3, a, d)]
    _, ref_mailbox, _ = _run(per_epoch)
    with caplog.at_level("WARNING"):
        scheduler, mailbox, decisions = _run(thrice)
    assert decisions == [CONTINUE] * len(thrice)
    # the same layers frozen for the same reasons, dated by the trial's own iterations
    assert ref_mailbox.posts
    assert [p[1]["freeze"] for p in mailbox.posts] == [p[1]["freeze"] for p in ref_mailbox.posts]
    (_, reference), (_, decision) = ref_mailbox.posts[0], mailbox.posts[0]
    for name in reference["reasons"]:
        ref_text, text = reference["reasons"][name], decision["reasons"][name]
        assert ref_text.split(":", 1)[1] == text.split(":", 1)[1]  # the same values
    frozen_at = [d.iteration for _, d in scheduler.decisions if d.action == "freeze"]
    assert all(it % 3 == 0 for it in frozen_at)  # at an epoch-end report
    assert not [r for r in caplog.records if "no 'self_similarity'" in r.getMessage()]


def test_a_non_finite_value_in_a_report_between_epochs_stops_at_once() -> None:
    reports = [_epoch(1, 0.5, 0.05), _mid(2, 0.5), {**_mid(3, 0.5), "mean_loss": math.nan}]
    scheduler, _, decisions = _run(reports)
    assert decisions == [CONTINUE, CONTINUE, STOP]
    stop = scheduler._views["t1"].stopped
    assert stop is not None and stop.rule == "diverged: non-finite value"
    assert stop.iteration == 3 and "mean_loss" in stop.values


def test_a_loss_under_any_name_that_is_not_finite_stops_the_trial() -> None:
    for key in ("mean_loss", "val_loss", "valLoss", "losses/val"):
        # infinite once it was finite, or NaN at any report
        for first, then in ((0.4, math.inf), (None, math.nan)):
            reports = [{**_epoch(1, 0.5, 0.05), key: first}, {**_epoch(2, 0.5, 0.06), key: then}]
            scheduler, _, decisions = _run(reports)
            assert decisions == [CONTINUE, STOP], key
            assert key in scheduler._views["t1"].stopped.values
    # infinite before it was ever finite: a tracker's start (best_val_loss = inf)
    reports = [_epoch(1, 0.5, 0.05), {**_epoch(2, 0.5, 0.06), "best_val_loss": math.inf}]
    assert _run(reports)[2] == [CONTINUE, CONTINUE]
    # a finite loss, or a number that is no loss, does not
    _, _, decisions = _run([_epoch(1, 0.5, 0.05), {**_epoch(2, 0.5, 0.06), "val_loss": 0.3}])
    assert decisions == [CONTINUE, CONTINUE]


def _nested(flat: dict[str, Any]) -> dict[str, Any]:
    """A flattened report as Tune writes it to result.json (per-layer values nested)."""
    row: dict[str, Any] = {}
    for key, value in flat.items():
        head, _, layer = key.partition("/")
        if layer:
            row.setdefault(head, {})[layer] = value
        else:
            row[key] = value
    return row


def test_a_new_driver_judges_a_restored_trial_on_all_its_reports(tmp_path) -> None:
    import json

    # a trial that gained 3 points in its first 3 reports and little since, while no layer
    # moves: progress since its first report keeps it running; since report 4 it would not
    accs = [0.5, 0.51, 0.525, 0.53, 0.534, 0.537, 0.539, 0.54, 0.541]
    reports = [_epoch(i + 1, a, 0.1) for i, a in enumerate(accs)]
    reference, _, ref_decisions = _run(reports)
    assert ref_decisions == [CONTINUE] * len(accs)  # progress since report 1: not stuck
    # the driver stops after report 3; the new one (Tuner.restore) finds the stored reports
    stored = FakeTrial("t1")
    stored.local_path = str(tmp_path)  # type: ignore[attr-defined]
    lines = [json.dumps(_nested(r)) for r in reports[:3]]
    (tmp_path / "result.json").write_text("\n".join(lines) + "\n")
    scheduler, _ = make(patience=2, settle_window=2, plateau=2)
    scheduler.on_trial_add(None, stored)
    decisions = feed(scheduler, stored, reports[3:])
    assert decisions == ref_decisions[3:]
    view, ref_view = scheduler._views["t1"], reference._views["t1"]
    assert view.history.metric == ref_view.history.metric
    assert view.iterations == ref_view.iterations


def test_the_budget_of_a_trial_reporting_several_times_per_epoch_counts_epochs() -> None:
    """A trial stuck at chance for 6 epochs while 3 others learned: stopped after the same
    share of its epochs whether the trials report once or three times per epoch (with three,
    the budget of 18 reports was compared with the stuck trial's 6 measured ones, so it ran to
    the end)."""
    stops = {}
    for per_epoch in (1, 3):
        scheduler, _ = make(max_t=6 * per_epoch)
        trial = FakeTrial("t1")
        learners = [FakeTrial(f"learner{i}") for i in range(3)]
        for t in (trial, *learners):
            scheduler.on_trial_add(None, t)

        def reports(
            acc: Callable[[int], float], per_epoch: int = per_epoch
        ) -> list[dict[str, Any]]:
            out = []
            for epoch in range(6):
                base = per_epoch * epoch
                out += [
                    {**_mid(base + k, acc(epoch)), "acc_chance": 0.1} for k in range(1, per_epoch)
                ]
                out.append(
                    {**_epoch(base + per_epoch, acc(epoch), 0.05 * (epoch + 1)), "acc_chance": 0.1}
                )
            return out

        decisions = []
        learned = reports(lambda epoch: min(0.9, 0.3 + 0.2 * epoch))
        for i, report in enumerate(reports(lambda epoch: 0.1)):
            for learner in learners:
                scheduler.on_trial_result(None, learner, learned[i])
            decisions.append(scheduler.on_trial_result(None, trial, report))
            if decisions[-1] == STOP:
                break
        assert STOP in decisions
        stop = scheduler._views["t1"].stopped
        assert stop is not None and stop.rule == "stuck: no progress while others learned"
        stops[per_epoch] = (decisions.index(STOP) + 1) / per_epoch  # epochs it ran
    assert stops[1] == stops[3] == 3  # past the grace of 2 reports and a third of the budget


def test_a_trial_restarted_from_scratch_after_a_freeze_is_not_taken_as_frozen(caplog) -> None:
    """The first run froze layers, then failed without a checkpoint: the trial restarts from
    scratch and drops the freezes (as documented). The scheduler does too: no layer counts as
    frozen or ordered, no freeze is taken as lost, and the restarted run freezes at the report
    a fresh trial would."""
    clean = [_epoch(i + 1, a, d) for i, (a, d) in enumerate(zip(ACCS, DISTS))]
    reference, ref_mailbox, _ = _run(clean)
    assert ref_mailbox.posts
    first_at = len(clean)  # the first run goes as far as the clean one, freezing on the way
    scheduler, mailbox = make(patience=2, settle_window=2, plateau=2)
    trial = FakeTrial("t1")
    scheduler.on_trial_add(None, trial)
    feed(scheduler, trial, clean[:first_at])
    assert mailbox.posts == ref_mailbox.posts
    scheduler.on_trial_error(None, trial)  # no checkpoint: Tune restarts it from scratch
    mailbox.posts.clear()
    with caplog.at_level("WARNING"):
        feed(scheduler, trial, clean[:1])
        assert scheduler.frozen_layers == {"t1": []}
        feed(scheduler, trial, clean[1:])
    assert "has not carried out" not in caplog.text
    assert [p[1]["freeze"] for p in mailbox.posts] == [p[1]["freeze"] for p in ref_mailbox.posts]
    freezes = [d for _, d in scheduler.decisions if d.action == "freeze"]
    ref_freezes = [d for _, d in reference.decisions if d.action == "freeze"]
    assert [d.describe() for d in freezes[-len(ref_freezes) :]] == [
        d.describe() for d in ref_freezes
    ]


def test_the_measured_budget_counts_from_the_first_measured_report() -> None:
    """The first report measures nothing (no record at initialisation), every later one does:
    of a budget of 10 iterations, 9 are measured; the estimate never falls below that (it read
    5 at iteration 2, which stopped a trial as unable to catch up too early)."""
    from ikkuna_tune.tune.trial_view import TrialView

    view = TrialView(budget=10)
    for iteration in range(2, 11):
        view.history.add(0.1, {}, {}, {})
        view.iterations.append(iteration)
        assert view.measured_budget() == 9, iteration
    thrice = TrialView(budget=18)  # three reports per epoch, measured at epoch ends
    for iteration in (3, 6, 9):
        thrice.history.add(0.1, {}, {}, {})
        thrice.iterations.append(iteration)
    assert thrice.measured_budget() == 6
