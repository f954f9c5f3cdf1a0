"""The driver-to-trial channel: a named Ray actor holding directives for running trials.

The scheduler (on the driver) posts a directive while it handles a trial's result; Tune does not
resume the trial's ``report()`` until that handling is done, so the trial reads the directive right
after its report returns. One mailbox per experiment, named after it; it needs no CPU (a 1-CPU
actor could wait forever for trials to free one).
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["MAILBOX_PREFIX", "Mailbox", "TrialInbox", "mailbox_name"]

logger = logging.getLogger(__name__)

MAILBOX_PREFIX = "ikkuna_tune_mailbox:"


def mailbox_name(experiment: str) -> str:
    """The actor name of the mailbox of ``experiment``."""
    return MAILBOX_PREFIX + experiment


class _MailboxActor:
    def __init__(self) -> None:
        self._boxes: dict[str, list[dict[str, Any]]] = {}

    def post(self, trial_id: str, directive: dict[str, Any]) -> None:
        self._boxes.setdefault(trial_id, []).append(directive)

    def take(self, trial_id: str) -> list[dict[str, Any]]:
        return self._boxes.pop(trial_id, [])

    def discard(self, trial_id: str) -> None:
        self._boxes.pop(trial_id, None)


class Mailbox:
    """Driver side: creates (or finds) the experiment's mailbox actor and posts to it."""

    def __init__(self, experiment: str) -> None:
        import ray

        self.name = mailbox_name(experiment)
        actor = ray.remote(num_cpus=0)(_MailboxActor)
        self._actor = actor.options(name=self.name, get_if_exists=True).remote()

    def post(self, trial_id: str, directive: dict[str, Any]) -> None:
        """Post and wait until it is stored, so the trial's next read cannot miss it."""
        import ray

        ray.get(self._actor.post.remote(trial_id, directive))

    def discard(self, trial_id: str) -> None:
        self._actor.discard.remote(trial_id)


class TrialInbox:
    """Trial side: reads this trial's directives.

    If the experiment has no mailbox at the first read, reading stops quietly; if a mailbox that
    was there is gone (the driver died), it warns once and stops reading.
    """

    def __init__(self, experiment: str, trial_id: str) -> None:
        self.name = mailbox_name(experiment)
        self.trial_id = trial_id
        self._actor: Any = None
        self._seen = False
        self._disabled = False

    def take(self) -> list[dict[str, Any]]:
        """Directives waiting for this trial ([] when there are none or no mailbox)."""
        import ray

        if self._disabled:
            return []
        try:
            if self._actor is None:
                self._actor = ray.get_actor(self.name)
            directives = ray.get(self._actor.take.remote(self.trial_id), timeout=30)
            self._seen = True
            return directives
        except ValueError:  # no actor by that name: this experiment has no mailbox (yet)
            self._actor = None
            self._warn_if_gone()
            return []
        except Exception as error:  # the actor died or timed out
            self._actor = None
            self._warn_if_gone(error)
            return []

    def _warn_if_gone(self, error: Exception | None = None) -> None:
        # never seen: the experiment runs without a mailbox; seen before: it is gone
        self._disabled = True
        if self._seen:
            logger.warning(
                "The scheduler's mailbox %r is gone (%s); training goes on without directives",
                self.name,
                error or "not found",
            )
