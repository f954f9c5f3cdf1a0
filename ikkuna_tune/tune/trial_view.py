"""What SVCCAScheduler keeps of one trial: its history, its budget, the freezes it ordered and
whether the trial carried them out, and ordering them again for a trial that restores. All of it
is rebuilt from the trial's reports (and the decision log) after a restore."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ikkuna_tune.tune.convergence import Decision, TrialHistory

if TYPE_CHECKING:
    from ikkuna_tune.tune.mailbox import Mailbox

__all__ = ["TrialView"]

logger = logging.getLogger(__name__)


@dataclass
class TrialView:
    """What the scheduler derives from one trial's reports.

    Examples:
        >>> view = TrialView()
        >>> view.history.layers = ["conv", "fc", "head"]
        >>> view.history.frozen = {"conv"}
        >>> view.order(["fc"], at=0)  # ordered at report 0, not confirmed yet
        >>> view.frozen_or_ordered()
        ['conv', 'fc']
        >>> view.history.metric = [0.1, 0.2, 0.3]  # three reports later: the order was lost
        >>> view.forget_lost_orders("t1"), view.frozen_or_ordered()
        (['fc'], ['conv'])
        >>> view.offset = 10  # the trial made 10 reports before this scheduler saw one
        >>> view.dated(Decision("freeze", "converged", 3, "fc")).iteration
        13
    """

    history: TrialHistory = field(default_factory=TrialHistory)
    budget: int | None = None
    stopped: Decision | None = None
    reasons: dict[str, Decision] = field(default_factory=dict)
    #: the report at which each pending freeze was ordered
    ordered_at: dict[str, int] = field(default_factory=dict)
    #: how many times each layer's freeze was ordered and not carried out
    lost: dict[str, int] = field(default_factory=dict)
    #: the trial's training_iteration minus the reports this scheduler saw (decisions are
    #: dated by training_iteration, also after a restore)
    offset: int = 0
    #: the training_iteration of each report in the history
    iterations: list[int] = field(default_factory=list)
    #: the training_iteration of the trial's latest report
    last_iteration: int | None = None
    #: whether any report of the trial measured a layer (a similarity or a live fraction)
    measured: bool = False
    #: whether the trial has ended (Tune completed it)
    completed: bool = False
    #: whether the scheduler paused the trial once to wait for others to compare it with
    waited: bool = False
    #: a Ray Train job's current attempt (its workers' start), from its reports' names
    train_attempt: str | None = None
    #: the training_iteration of each named report of a Ray Train job
    train_reports: dict[str, int] = field(default_factory=dict)
    #: sent with every freeze: the trial unfreezes the layer once its learning rate moves by
    #: this factor (None: never; see :mod:`ikkuna_tune.tune.lr_release`)
    unfreeze_lr_factor: float | None = None
    #: per layer, the freezes and unfreezes decided for it, in order (what held at a
    #: checkpoint a restore goes back to)
    events: dict[str, list[Decision]] = field(default_factory=dict)
    #: the losses the trial has reported finite (a loss that is infinite before it ever was
    #: finite, ``best_val_loss`` before the first validation, is no divergence)
    finite_losses: set[str] = field(default_factory=set)
    #: the trial's latest result as the scheduler took it (two results of one iteration within
    #: a run are merged: see ``scheduler._merged_repeat``)
    last_result: dict[str, Any] | None = None
    #: whether the latest result repeated the iteration before within the run (no restore)
    repeat: bool = False

    def start_afresh(self) -> None:
        """Forget the orders, freezes and unfreezes of a run the trial left to start over from
        scratch (the decisions stay in the log)."""
        self.history.pending.clear()
        self.ordered_at.clear()
        self.reasons.clear()
        self.events.clear()

    def measured_budget(self) -> int | None:
        """The budget counted in the reports the rules judge (those that measure the layers):
        a trial that reports several times per epoch while its layers are measured at epoch
        ends makes ``budget`` reports but only ``budget / k`` measured ones. The measured
        reports so far plus those the iterations left would make at the pace since the first
        measured one, rounded up (the rules that use the budget wait longer, never shorter);
        None for an unknown budget.

        Examples:
            >>> view = TrialView(budget=18)
            >>> for it in (3, 6, 9):  # three reports per epoch, measured at the third
            ...     view.history.add(0.1, {}, {}, {})
            ...     view.iterations.append(it)
            >>> view.measured_budget()
            6
        """
        reports, budget, iterations = self.history.reports, self.budget, self.iterations
        if budget is None or not reports or not iterations:
            return budget
        # the measured reports so far, and as many more as the iterations left would make at
        # the pace since the first measured one (one per iteration while it is not known)
        pace = (reports - 1) / (iterations[-1] - iterations[0]) if reports > 1 else 1.0
        if not 0 < pace <= 1:
            pace = 1.0
        return reports + math.ceil(max(0, budget - iterations[-1]) * pace)

    def rewind(self, iteration: int) -> int:
        """Forget the reports from ``iteration`` on: the trial restored from a checkpoint made
        before them (or restarted) and makes them again. Returns how many were forgotten.

        Examples:
            >>> view = TrialView()
            >>> for it in (1, 2, 3, 4):
            ...     view.history.add(0.1 * it, {}, {}, {})
            ...     view.iterations.append(it)
            >>> view.rewind(3), view.history.metric, view.iterations
            (2, [0.1, 0.2], [1, 2])
        """
        keep = sum(1 for it in self.iterations if it < iteration)
        dropped = len(self.iterations) - keep
        del self.iterations[keep:]
        self.history.truncate(keep)
        for name, at in self.ordered_at.items():
            self.ordered_at[name] = min(at, keep)
        return dropped

    def follow_train_restart(
        self,
        trial_id: str,
        report: str,
        iteration: int,
        mailbox: Mailbox | None,
        reorder: bool = True,
    ) -> int | None:
        """Follow the Ray Train job of a trial from the name of its report (see
        ``keys.TRAIN_REPORT``: ``<attempt>-<count>``, with ``@<name>`` of the report whose
        checkpoint the attempt resumed from, ``@?`` for a checkpoint of an unnamed report).
        Returns the training_iteration the job went back to when this report is the first of
        a new attempt (0: it started over), else None (also where the report it resumed from
        is unknown: the rules for lost orders apply then).

        Ray Train restarts a job's workers after a failure without Tune noticing: Tune's
        training_iteration goes on while the job trains again from its latest checkpoint. The
        reports made since that checkpoint are forgotten, as after a Tune restore, and the
        freezes decided at reports up to it are ordered again
        (:meth:`reorder_after_restore`): a freeze the job carried out after its checkpoint was
        saved is not in it.

        Examples:
            >>> view = TrialView()
            >>> view.history.layers = ["conv", "fc"]
            >>> for it, name in ((1, "a-1"), (2, "a-2"), (3, "a-3")):
            ...     view.history.add(0.1 * it, {}, {}, {})
            ...     view.iterations.append(it)
            ...     view.follow_train_restart("t1", name, it, None)
            >>> view.reasons["conv"] = Decision("freeze", "converged", 2, "conv")
            >>> view.order(["conv"], 2)
            >>> view.follow_train_restart("t1", "b-1@a-2", 4, None)  # resumed from report 2
            2
            >>> view.iterations, sorted(view.history.pending)
            ([1, 2], ['conv'])
        """
        name, _, resumed = report.partition("@")
        attempt = name.rpartition("-")[0]
        previous, self.train_attempt = self.train_attempt, attempt
        self.train_reports[name] = iteration
        if previous is None or attempt == previous:
            return None
        restore_at = self.train_reports.get(resumed, None) if resumed else 0
        if restore_at is None:  # resumed from a report this scheduler did not see
            return None
        dropped = self.rewind(restore_at + 1)
        if reorder:  # (without: a scheduler that freezes nothing)
            self.reorder_after_restore(trial_id, mailbox, restore_at)  # (0: none ordered again)
        logger.info(
            "Trial %s: its Ray Train job restarted from %s; the %s report(s) since are forgotten",
            trial_id,
            f"the checkpoint of training_iteration {restore_at}" if restore_at else "scratch",
            dropped,
        )
        return restore_at

    def dated(self, decision: Decision) -> Decision:
        """``decision`` dated by the trial's ``training_iteration``."""
        return replace(decision, iteration=decision.iteration + self.offset)

    def frozen_or_ordered(self) -> list[str]:
        """The layers frozen or ordered frozen, in network order."""
        history = self.history
        position = {name: i for i, name in enumerate(history.layers)}
        return sorted(
            history.frozen | history.pending, key=lambda n: position.get(n, len(position))
        )

    def order(self, names: list[str], at: int) -> None:
        """Count ``names`` as ordered frozen at report ``at``, until the trial reports them
        frozen."""
        self.history.pending.update(names)
        self.ordered_at.update(dict.fromkeys(names, at))

    def forget_lost_orders(self, trial_id: str) -> list[str]:
        """Drop (and return) pending freezes the trial has not carried out two reports after the
        order.

        A trial applies a directive right after the report that triggered it, so its next
        report confirms it. One that is still unconfirmed a report later was lost (the mailbox
        died, the trial could not apply it): the layer is judged again and ordered again if it
        is still due.
        """
        history = self.history
        now = history.reports + 1  # the report being handled
        lost = [n for n in history.pending if now - self.ordered_at.get(n, now) > 2]
        if lost:
            for name in lost:
                self.lost[name] = self.lost.get(name, 0) + 1
            # a layer the trial would not freeze twice (its log says why: something trains
            # before it) is not ordered again
            refused = sorted(n for n in lost if self.lost[n] >= 2)
            history.refused.update(refused)
            logger.warning(
                "Trial %s has not carried out the freeze of %s ordered at report(s) %s; %s",
                trial_id,
                lost,
                sorted({self.ordered_at[n] for n in lost}),
                f"not ordering {refused} again (not carried out twice)"
                if refused
                else "judging again",
            )
            history.pending.difference_update(lost)
        return lost

    def reorder_after_restore(
        self, trial_id: str, mailbox: Mailbox | None, restore_at: int | None = None
    ) -> None:
        """Order again every freeze ordered so far, for the restored trial to apply at once.

        The checkpoint a trial restores from can predate a freeze it was ordered (or already
        carried out): without this the layer would train again until the next order. The trial
        applies these at ``watch`` only when it restores from a checkpoint (a trial restarting
        from scratch drops them: the layers have not converged there). With ``restore_at``,
        the ``training_iteration`` of that checkpoint, only the freezes decided at reports up
        to it are ordered again: those decided on later reports were judged on a run the trial
        no longer continues (it makes those reports again, and is judged on them anew).

        Examples:
            >>> class Posted:
            ...     def post(self, trial_id, directive):
            ...         print(directive["freeze"])
            ...         return True
            >>> view = TrialView()
            >>> view.history.layers = ["conv1", "conv2", "fc"]
            >>> for name, at in (("conv1", 4), ("conv2", 9)):
            ...     view.reasons[name] = Decision("freeze", "converged", at, name)
            ...     view.order([name], at)
            >>> view.reorder_after_restore("t1", Posted(), restore_at=8)
            ['conv1']
            >>> sorted(view.history.pending), sorted(view.reasons)
            (['conv1'], ['conv1'])
        """
        if restore_at is not None:
            # a layer the trial unfroze at a learning-rate change: what held at the checkpoint
            # (its last freeze or unfreeze up to it) holds again, later ones are void
            thawed = {n for n, ev in self.events.items() if any(d.action == "unfreeze" for d in ev)}
            held: list[str] = []
            for name in thawed:
                kept = [d for d in self.events[name] if d.iteration <= restore_at]
                self.ordered_at.pop(name, None)
                if kept and kept[-1].action == "freeze":
                    self.reasons[name] = kept[-1]
                    held.append(name)
                else:  # unfrozen (or not yet frozen) at the checkpoint: nothing to order
                    self.reasons.pop(name, None)
                    self.history.pending.discard(name)
                    self.history.frozen.discard(name)
            later = [
                n for n, d in self.reasons.items() if d.iteration > restore_at and n not in thawed
            ]
            for name in later:
                del self.reasons[name]
                self.ordered_at.pop(name, None)
                self.history.pending.discard(name)
                self.history.frozen.discard(name)
            for name, events in self.events.items():
                self.events[name] = [d for d in events if d.iteration <= restore_at]
            # the trial's own freezes come back with its checkpoint: only the orders are given
            ordered = [n for n in self.frozen_or_ordered() if n in self.reasons and n not in thawed]
            ordered += held
            position = {name: i for i, name in enumerate(self.history.layers)}
            ordered.sort(key=lambda n: position.get(n, len(position)))
        else:
            ordered = self.frozen_or_ordered()
        self.order(ordered, self.history.reports)
        if not ordered or mailbox is None:
            return
        reasons = {n: self.reasons[n].describe() for n in ordered if n in self.reasons}
        directive = {
            "freeze": ordered,
            "reasons": reasons,
            "restore": True,
            "unfreeze_lr_factor": self.unfreeze_lr_factor,
        }
        if not mailbox.post(trial_id, directive):
            self.history.pending.clear()

    def take_up(
        self,
        trial_id: str,
        decisions: list[Decision],
        mailbox: Mailbox | None,
        restore_at: int | None = None,
        order: bool = True,
    ) -> None:
        """Take up the ``decisions`` an earlier driver made for the trial (``Tuner.restore``).

        Its freezes are ordered again for the restored trial to apply at once (its checkpoint
        may predate them); a trial that starts afresh drops them (see ``TrialSession``). With
        ``restore_at``, the ``training_iteration`` of the checkpoint it restores from, only
        the freezes decided at reports up to it (see :meth:`reorder_after_restore`). Without
        ``order`` (a scheduler that freezes nothing), they are only kept as the reasons.

        Examples:
            >>> class Posted:
            ...     def post(self, trial_id, directive):
            ...         print(trial_id, directive["freeze"], directive["restore"])
            ...         return True
            >>> view = TrialView()
            >>> view.take_up("t1", [Decision("freeze", "converged", 4, "conv1")], Posted())
            t1 ['conv1'] True
            >>> view.history.pending, view.reasons["conv1"].describe()
            ({'conv1'}, 'freeze conv1 at report 4: converged ()')
        """
        before = [d for d in decisions if restore_at is None or d.iteration <= restore_at]
        freezes: dict[str, Decision] = {}
        for decision in before:  # in order: a later unfreeze (a learning-rate change) ends one
            if decision.layer and decision.action == "freeze":
                freezes[decision.layer] = decision
            elif decision.layer and decision.action == "unfreeze":
                freezes.pop(decision.layer, None)
            if decision.layer and decision.action in ("freeze", "unfreeze"):
                self.events.setdefault(decision.layer, []).append(decision)
        self.reasons.update(freezes)
        if freezes and mailbox is not None and order:
            names = list(freezes)
            reasons = {n: d.describe() for n, d in freezes.items()}
            directive = {
                "freeze": names,
                "reasons": reasons,
                "restore": True,
                "unfreeze_lr_factor": self.unfreeze_lr_factor,
            }
            if mailbox.post(trial_id, directive):
                # ordered at the reports replayed so far, as reorder_after_restore orders: the
                # trial's first report after its restore confirms it (ordered "at report 0",
                # a freeze the trial restored and then released at a decay read as lost)
                self.order(names, self.history.reports)
