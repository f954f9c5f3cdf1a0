"""TrialView following a Ray Train job through its workers' restarts, from the names of its
reports (``keys.TRAIN_REPORT``), without Ray: a recorded mailbox stands for the real one."""

from __future__ import annotations

from typing import Any

from ikkuna_tune.tune.convergence import Decision
from ikkuna_tune.tune.trial_view import TrialView


class Recorded:
    """A mailbox that keeps what is posted."""

    def __init__(self) -> None:
        self.posted: list[tuple[str, dict[str, Any]]] = []

    def post(self, trial_id: str, directive: dict[str, Any]) -> bool:
        self.posted.append((trial_id, directive))
        return True


def _view(names: list[str]) -> TrialView:
    """A view of reports 1..len(names) named ``names``, with conv frozen at report 2 (carried
    out: the trial reported it frozen) and fc ordered at report 4 (not confirmed yet)."""
    view = TrialView()
    view.history.layers = ["conv", "fc", "head"]
    for iteration, name in enumerate(names, start=1):
        assert view.follow_train_restart("t1", name, iteration, None) is None
        view.history.add(0.1 * iteration, {}, {}, {})
        view.iterations.append(iteration)
        view.last_iteration = iteration
    view.reasons["conv"] = Decision("freeze", "converged", 2, "conv")
    view.reasons["fc"] = Decision("freeze", "converged", 4, "fc")
    view.history.frozen = {"conv"}
    view.order(["fc"], 4)
    return view


def test_a_restart_from_a_checkpoint_forgets_later_reports_and_orders_earlier_freezes() -> None:
    view, mailbox = _view(["a-1", "a-2", "a-3", "a-4", "a-5"]), Recorded()
    # the job failed after report 5 and resumed from the checkpoint saved with report 3
    assert view.follow_train_restart("t1", "b-1@a-3", 6, mailbox) == 3  # type: ignore[arg-type]
    assert view.iterations == [1, 2, 3] and view.history.reports == 3
    # conv (decided at 2) is ordered again, fc (decided at 4, after the checkpoint) is not
    assert [d["freeze"] for _, d in mailbox.posted] == [["conv"]]
    assert mailbox.posted[0][1]["restore"] is True
    assert sorted(view.reasons) == ["conv"] and view.history.pending == {"conv"}
    # the attempt's later reports are no restart
    assert view.follow_train_restart("t1", "b-2@a-3", 7, mailbox) is None  # type: ignore[arg-type]
    assert len(mailbox.posted) == 1


def test_a_restart_from_scratch_forgets_every_report_and_freeze() -> None:
    view, mailbox = _view(["a-1", "a-2", "a-3", "a-4"]), Recorded()
    assert view.follow_train_restart("t1", "b-1", 5, mailbox) == 0  # type: ignore[arg-type]
    assert view.iterations == [] and view.history.reports == 0
    assert mailbox.posted == [] and view.reasons == {} and view.history.pending == set()


def test_a_resume_from_a_report_never_seen_changes_nothing() -> None:
    """A driver restored with Tuner.restore has not seen the reports before it: the view is
    left to the usual rules (an order the trial does not carry out is judged lost)."""
    view, mailbox = _view(["a-1", "a-2", "a-3"]), Recorded()
    assert view.follow_train_restart("t1", "b-1@z-9", 4, mailbox) is None  # type: ignore[arg-type]
    assert view.iterations == [1, 2, 3] and mailbox.posted == []
    assert view.history.pending == {"fc"}


def test_freezes_taken_up_after_a_tuner_restore_are_not_lost_at_the_first_report() -> None:
    """Tuner.restore: the new driver replays the trial's 5 reports and takes up conv's freeze
    (decided at report 2); the trial restores from the checkpoint of report 4 with conv frozen,
    and at report 5 a learning-rate decay releases it. The order is the restore's, made at the
    replayed reports: report 5 finds nothing lost (ordered at report 0, it read as not carried
    out, warned, and counted towards never ordering conv again)."""
    view, mailbox = TrialView(), Recorded()
    view.history.layers = ["conv", "fc", "head"]
    for iteration in range(1, 6):
        view.history.add(0.1 * iteration, {}, {}, {})
        view.iterations.append(iteration)
    decisions = [Decision("freeze", "converged", 2, "conv")]
    view.take_up("t1", decisions, mailbox, restore_at=4)  # type: ignore[arg-type]
    assert [d["freeze"] for _, d in mailbox.posted] == [["conv"]]
    assert view.rewind(5) == 1  # the trial makes report 5 again
    assert view.forget_lost_orders("t1") == [] and view.lost == {}
    assert view.history.pending == {"conv"}
    # an order that is really not carried out is still found lost, two reports later
    view.history.add(0.5, {}, {}, {})
    view.history.add(0.6, {}, {}, {})
    assert view.forget_lost_orders("t1") == ["conv"] and view.lost == {"conv": 1}
