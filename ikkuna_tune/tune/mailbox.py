"""The driver-to-trial channel: a named Ray actor holding directives for running trials.

The scheduler (on the driver) posts a directive while it handles a trial's result; Tune does not
resume the trial's ``report()`` until that handling is done, so the trial reads the directive right
after its report returns. One mailbox per experiment, named after it; it needs no CPU (a 1-CPU
actor could wait forever for trials to free one).
"""

from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["MAILBOX_PREFIX", "Mailbox", "TrialInbox", "mailbox_name"]

logger = logging.getLogger(__name__)

MAILBOX_PREFIX = "ikkuna_tune_mailbox:"
#: seconds to wait for the mailbox to answer
_TIMEOUT_S = 30


def mailbox_name(experiment: str) -> str:
    """The actor name of the mailbox of ``experiment``.

    Examples:
        >>> mailbox_name("my_sweep")
        'ikkuna_tune_mailbox:my_sweep'
    """
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
    """Driver side: creates (or finds) the experiment's mailbox actor and posts to it.

    The actor is placed on the driver's node (the node a sweep cannot lose without losing its
    driver too). If it dies all the same (killed, out of memory), the next post creates it
    again, with one warning; directives it held are lost, and the scheduler orders again what
    a trial did not carry out (see ``SVCCAScheduler``).

    Creating one needs a running Ray (it creates the actor), so the example shows only what
    it is named and how often it tries a post:

    Examples:
        >>> mailbox_name("my_sweep")  # the name of the actor Mailbox("my_sweep") creates
        'ikkuna_tune_mailbox:my_sweep'
        >>> Mailbox.attempts
        3
    """

    #: attempts per post (each one after the first recreates the actor)
    attempts = 3

    def __init__(self, experiment: str) -> None:
        self.name = mailbox_name(experiment)
        self._warned = False
        self._actor = self._create()

    def _create(self) -> Any:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        actor = ray.remote(num_cpus=0, max_restarts=-1)(_MailboxActor)
        return actor.options(name=self.name, get_if_exists=True, scheduling_strategy=here).remote()

    def post(self, trial_id: str, directive: dict[str, Any]) -> bool:
        """Post and wait until it is stored, so the trial's next read cannot miss it.

        Returns False (with a warning) if the mailbox could not be reached or recreated.
        """
        import ray

        error: Exception | None = None
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(0.1 * attempt)
                try:
                    self._actor = self._create()
                except Exception as create_error:  # Ray refused: try again, then give up
                    error = create_error
                    continue
            try:
                ray.get(self._actor.post.remote(trial_id, directive), timeout=_TIMEOUT_S)
            except Exception as post_error:  # the actor died, its node is gone, or it hangs
                error = post_error
                if not self._warned:
                    self._warned = True
                    logger.warning(
                        "The scheduler's mailbox %r is gone (%s: %s); creating it again",
                        self.name,
                        type(post_error).__name__,
                        post_error,
                    )
                continue
            return True
        logger.warning(
            "Could not deliver %s to trial %s: the mailbox %r is unreachable (%s)",
            directive,
            trial_id,
            self.name,
            error,
        )
        return False

    def discard(self, trial_id: str) -> None:
        try:
            self._actor.discard.remote(trial_id)
        except Exception as error:  # nothing to discard from a dead mailbox
            logger.debug("Could not discard %s's directives: %s", trial_id, error)


class TrialInbox:
    """Trial side: reads this trial's directives.

    Looks the mailbox up by name at every read until it finds it (an experiment without a
    scheduler that posts has none: reads then cost one failed lookup, a few milliseconds a
    report). If a mailbox that was there is gone, it warns once and looks again at the next
    read, so a mailbox the scheduler recreated is found again.

    Reading (:meth:`take`) needs a running Ray; making one does not:

    Examples:
        >>> inbox = TrialInbox("my_sweep", "abcde_00000")
        >>> inbox.name, inbox.trial_id
        ('ikkuna_tune_mailbox:my_sweep', 'abcde_00000')
    """

    def __init__(self, experiment: str, trial_id: str) -> None:
        self.name = mailbox_name(experiment)
        self.trial_id = trial_id
        self._actor: Any = None
        self._seen = False
        self._warned = False

    def take(self) -> list[dict[str, Any]]:
        """Directives waiting for this trial ([] when there are none or no mailbox)."""
        import ray

        for attempt in range(2):  # a cached handle may be of a mailbox since recreated
            try:
                if self._actor is None:
                    self._actor = ray.get_actor(self.name)
                directives = ray.get(self._actor.take.remote(self.trial_id), timeout=_TIMEOUT_S)
            except ValueError:  # no actor by that name (yet, or any more)
                self._actor = None
                self._warn_if_gone("not found")
                return []
            except Exception as error:  # the actor died or timed out
                self._actor = None
                if attempt:
                    self._warn_if_gone(f"{type(error).__name__}: {error}")
                continue
            self._seen = True
            return list(directives)
        return []

    def _warn_if_gone(self, why: str) -> None:
        if self._seen and not self._warned:
            self._warned = True
            logger.warning(
                "The scheduler's mailbox %r is gone (%s); training goes on and directives are "
                "read again once it is back",
                self.name,
                why,
            )
