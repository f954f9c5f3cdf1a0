"""The subscribers of a trial: made afresh from the user's templates for each trial, and
checked before any trial starts that they can be attached to a bus in their order."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ikkuna_tune import unattached
from ikkuna_tune.keys import RESERVED_KEYS
from ikkuna_tune.messages import BUILTIN_KINDS, unknown_kinds_message
from ikkuna_tune.subscribers.base import Subscriber

__all__ = ["SubscriberSpec", "check_attachable", "fresh_subscribers"]

#: What ``ik.instrument(subscribers=...)`` takes: templates, or a function of the trial's config.
SubscriberSpec = Sequence[Subscriber] | Callable[[dict[str, Any]], Sequence[Subscriber]]


#: set on a subscriber once a trial has used it (see :func:`fresh_subscribers`)
USED = "_ikkuna_trial_used"


def fresh_subscribers(spec: SubscriberSpec | None, config: dict[str, Any]) -> list[Subscriber]:
    """New, unshared subscribers for one trial: deep copies of templates, or ``spec(config)``.

    Examples:
        >>> from ikkuna_tune.subscribers import NormSubscriber
        >>> template = NormSubscriber("weights", backend=None)
        >>> (copy,) = fresh_subscribers([template], {"lr": 0.1})
        >>> copy is template, copy.published_kind
        (False, 'weights_norm2')
        >>> def per_trial(config):
        ...     return [NormSubscriber("weights", order=config["p"], backend=None)]
        >>> [made.published_kind for made in fresh_subscribers(per_trial, {"p": 1})]
        ['weights_norm1']
    """
    if spec is None:
        return []
    if not callable(spec):
        for template in spec:  # a template is used through its copies, never attached itself
            unattached.forget(template)
    made = spec(config) if callable(spec) else copy.deepcopy(list(spec))
    if isinstance(made, (str, bytes, Mapping)) or not isinstance(made, Iterable):
        raise ValueError(
            f"Expected the subscribers function to return a list of subscribers but got "
            f"{type(made).__name__}"
        )
    made = list(made)
    for subscriber in made:
        if not isinstance(subscriber, Subscriber):
            raise ValueError(
                f"Expected subscribers to be Subscriber objects but got {type(subscriber).__name__}"
            )
        if subscriber.message_bus is not None:
            raise ValueError(f"{subscriber!r} is already attached to a bus; pass unattached ones")
        if getattr(subscriber, USED, False):
            raise ValueError(
                f"Expected new subscribers for this trial but {subscriber!r} ran in an earlier "
                "trial (its state, such as SVCCA's last checkpoint, would carry over): make "
                "them in the function that is given the config, or pass templates"
            )
    return made


def check_attachable(subscribers: Sequence[Subscriber]) -> None:
    """Check, without a bus, that ``subscribers`` can be attached to one in this order: each
    subscribes to built-in kinds or to kinds it or the subscribers before it publish, and no
    two publish the same kind. Raises ``ValueError`` naming the first that cannot.

    What needs the model is checked only by :meth:`TrialSession.watch` (kinds that need the
    optimizer, say).

    Examples:
        >>> from ikkuna_tune.subscribers import MessageMeanSubscriber, NormSubscriber
        >>> norms = NormSubscriber("weights", backend=None)  # publishes weights_norm2
        >>> mean = MessageMeanSubscriber("weights_norm2", backend=None)
        >>> check_attachable([norms, mean])  # in this order all is well
        >>> check_attachable([mean, norms])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ik.instrument: subscriber 1 (...) cannot be attached: it subscribes to
        'weights_norm2', which subscriber 2 publishes; put it after subscriber 2
    """
    published: dict[str, int] = {}  # kind -> the (1-based) subscriber that publishes it
    for index, subscriber in enumerate(subscribers, 1):
        where = f"ik.instrument: subscriber {index} ({subscriber!r}) cannot be attached"
        own = subscriber.publications
        for kind in own:
            if kind in RESERVED_KEYS:
                raise ValueError(
                    f"{where}: it publishes {kind!r}, a key ikkuna_tune adds to every report "
                    f"itself (taken: {list(RESERVED_KEYS)}); name its output otherwise"
                )
            if kind in published:
                raise ValueError(
                    f"{where}: it publishes {kind!r}, which subscriber {published[kind]} "
                    "publishes already; let only one of them publish it"
                )
        known = BUILTIN_KINDS | set(published) | set(own)
        for subscription in subscriber.subscriptions:
            unknown = [kind for kind in subscription.kinds if kind not in known]
            if unknown:
                for later, other in enumerate(subscribers[index:], index + 1):
                    theirs = [kind for kind in unknown if kind in other.publications]
                    if theirs:
                        raise ValueError(
                            f"{where}: it subscribes to {theirs[0]!r}, which subscriber "
                            f"{later} publishes; put it after subscriber {later}"
                        )
                raise ValueError(f"{where}: {unknown_kinds_message(unknown, published)}")
        published.update(dict.fromkeys(own, index))
