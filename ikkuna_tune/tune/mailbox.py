"""The driver-to-trial channel: a named Ray actor holding directives for running trials.

The scheduler (on the driver) posts a directive while it handles a trial's result; Tune does not
resume the trial's ``report()`` until that handling is done, so the trial reads the directive right
after its report returns. One mailbox per experiment, named after it; it needs no CPU (a 1-CPU
actor could wait forever for trials to free one).

Asking the mailbox at every report costs a round trip to an actor that every trial of the sweep
queues for (milliseconds with many trials on few cores), and most reports find nothing. So a
post also raises a flag for the trial in Ray's key-value store (kept by the cluster's control
service, which answers without queueing behind the trials), and a trial asks the mailbox only
when it lowers a raised flag, and at its first read and every :data:`FULL_READ_EVERY`-th read in
any case (a flag that could not be read or raised never strands a directive).

A Ray Train job's ``ray.train.report`` returns before the scheduler has seen the report (Train's
controller collects reports when it polls the workers, every few seconds), so rank 0 would read
too early and apply a directive a report or more late, at a step that depends on timing. So the
scheduler marks each trial it steers in the key-value store when the trial is added
(:meth:`Mailbox.steer`); rank 0 of a marked trial names each report (``keys.TRAIN_REPORT``), the
scheduler acknowledges the name once it has handled the report (:meth:`Mailbox.acknowledge`),
and rank 0 waits for that acknowledgement before it reads (:meth:`TrialInbox.wait_handled`): a
directive applies from the first step after the report that caused it, as in a single-process
trial. A trial no scheduler marked (another scheduler's, or an experiment's whose mailbox is
left from an earlier run) neither names its reports nor waits.
"""

from __future__ import annotations

import logging
import time
from typing import Any

__all__ = [
    "FULL_READ_EVERY",
    "HANDLED_TIMEOUT_S",
    "MAILBOX_PREFIX",
    "Mailbox",
    "TrialInbox",
    "mailbox_name",
]

logger = logging.getLogger(__name__)

MAILBOX_PREFIX = "ikkuna_tune_mailbox:"
#: seconds to wait for the mailbox to answer
_TIMEOUT_S = 30
#: a trial asks the mailbox itself at least this often (in reads), flag or no flag
FULL_READ_EVERY = 10
#: seconds a Ray Train job's rank 0 waits for the scheduler to acknowledge a report (Train's
#: controller polls the workers every 2 s by default; a busy driver takes longer)
HANDLED_TIMEOUT_S = 60.0
_FLAG_NAMESPACE = "ikkuna_tune"


def _flag_key(name: str, trial_id: str) -> str:
    return f"{name}/{trial_id}"


def _handled_key(name: str, trial_id: str) -> str:
    return f"{name}/{trial_id}/handled"


def _steered_key(name: str, trial_id: str) -> str:
    return f"{name}/{trial_id}/steered"


def _key_value_store() -> Any | None:
    """Ray's internal key-value store where a running Ray has one, else None."""
    try:
        from ray.experimental import internal_kv

        return internal_kv if internal_kv._internal_kv_initialized() else None
    except Exception:  # no Ray, or a Ray without it
        return None


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
        """Post and wait until it is stored, so the trial's next read cannot miss it; then
        raise the trial's flag.

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
            self._raise_flag(trial_id)
            return True
        logger.warning(
            "Could not deliver %s to trial %s: the mailbox %r is unreachable (%s)",
            directive,
            trial_id,
            self.name,
            error,
        )
        return False

    def _raise_flag(self, trial_id: str) -> None:
        store = _key_value_store()
        if store is None:
            return  # the trial finds the directive at its next full read
        try:
            store._internal_kv_put(_flag_key(self.name, trial_id), b"1", namespace=_FLAG_NAMESPACE)
        except Exception as error:
            logger.debug("Could not raise %s's flag (%s); it reads in full soon", trial_id, error)

    def steer(self, trial_id: str) -> None:
        """Mark the trial as steered by this experiment's scheduler: its reports are
        acknowledged (see the module docstring)."""
        store = _key_value_store()
        if store is None:
            return
        try:
            store._internal_kv_put(
                _steered_key(self.name, trial_id), b"1", namespace=_FLAG_NAMESPACE
            )
        except Exception as error:
            logger.debug("Could not mark %s as steered (%s)", trial_id, error)

    def acknowledge(self, trial_id: str, report: str) -> None:
        """Tell the trial's rank 0 that the report it named ``report`` has been handled: any
        directive it caused is posted (see the module docstring)."""
        store = _key_value_store()
        if store is None:
            return  # rank 0 stops waiting at its timeout, and reads
        try:
            store._internal_kv_put(
                _handled_key(self.name, trial_id), report.encode(), namespace=_FLAG_NAMESPACE
            )
        except Exception as error:
            logger.debug("Could not acknowledge %s's report %s (%s)", trial_id, report, error)

    def discard(self, trial_id: str) -> None:
        store = _key_value_store()
        try:
            if store is not None:
                # (an acknowledgement stays: a rank 0 may be waiting for it; it names a report
                # of one attempt, which no later attempt's reports are named like); the mark of
                # a steered trial goes, for a restore of it under another scheduler
                store._internal_kv_del(_flag_key(self.name, trial_id), namespace=_FLAG_NAMESPACE)
                store._internal_kv_del(_steered_key(self.name, trial_id), namespace=_FLAG_NAMESPACE)
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
        self._reads = 0
        #: False once an acknowledgement did not come in time: no more waiting for them
        self.waits = True
        self._steered: bool | None = None

    def take(self, check_flag: bool = True) -> list[dict[str, Any]]:
        """Directives waiting for this trial ([] when there are none or no mailbox).

        With ``check_flag``, the mailbox is asked only if the trial's flag was raised (or at
        the first and every :data:`FULL_READ_EVERY`-th read).
        """
        import ray

        self._reads += 1
        if check_flag and self._reads % FULL_READ_EVERY != 1 and not self._flag_raised():
            return []

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

    def steered(self) -> bool:
        """Whether a scheduler marked this trial as one it steers (:meth:`Mailbox.steer`,
        when the trial was added: before it reports), so that it acknowledges its reports.
        Asked once; the answer is kept."""
        if self._steered is None:
            store = _key_value_store()
            try:
                key = _steered_key(self.name, self.trial_id)
                self._steered = bool(
                    store is not None and store._internal_kv_get(key, namespace=_FLAG_NAMESPACE)
                )
            except Exception as error:  # cannot tell: no waiting
                logger.debug("Could not tell whether %s is steered (%s)", self.trial_id, error)
                self._steered = False
        return self._steered

    def wait_handled(self, report: str, timeout: float = HANDLED_TIMEOUT_S) -> bool:
        """Wait until the scheduler has acknowledged the report named ``report``; whether it
        did (see the module docstring).

        Returns False at once where no scheduler steers this trial (:meth:`steered`) or no
        key-value store answers. A report not acknowledged within ``timeout`` seconds is named
        in a warning and no later report is waited for: directives are then read when the
        trial reads, one or more reports late.
        """
        store = _key_value_store()
        if not self.waits or store is None or not self.steered():
            return False
        key, want = _handled_key(self.name, self.trial_id), report.encode()
        deadline, pause = time.monotonic() + timeout, 0.002
        while True:
            try:
                if store._internal_kv_get(key, namespace=_FLAG_NAMESPACE) == want:
                    return True
            except Exception as error:  # cannot tell: read now
                logger.debug("Could not read %s's acknowledgement (%s)", self.trial_id, error)
                return False
            if time.monotonic() >= deadline:
                break
            time.sleep(pause)
            pause = min(2 * pause, 0.05)
        self.waits = False
        logger.warning(
            "Trial %s: the scheduler did not acknowledge report %s within %.0f s; reading its "
            "directives without waiting from now on (they may apply a report or more late)",
            self.trial_id,
            report,
            timeout,
        )
        return False

    def _flag_raised(self) -> bool:
        """Lower this trial's flag; whether it was raised (True when that cannot be told)."""
        store = _key_value_store()
        if store is None:
            return True
        try:
            key = _flag_key(self.name, self.trial_id)
            return bool(store._internal_kv_del(key, namespace=_FLAG_NAMESPACE))
        except Exception:  # cannot tell: ask the mailbox
            return True

    def _warn_if_gone(self, why: str) -> None:
        if self._seen and not self._warned:
            self._warned = True
            logger.warning(
                "The scheduler's mailbox %r is gone (%s); training goes on and directives are "
                "read again once it is back",
                self.name,
                why,
            )
