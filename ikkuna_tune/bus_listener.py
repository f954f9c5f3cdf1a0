"""What follows a bus's subscribers without the bus knowing it: the :class:`BusListener`
protocol, which the Exporter implements (see :class:`ikkuna_tune.bus.MessageBus`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ikkuna_tune.bus import MessageBus
    from ikkuna_tune.subscribers.base import Subscriber

__all__ = ["BusListener"]


class BusListener(Protocol):
    """What follows a bus's subscribers (the Exporter is one): it may refuse a subscriber before
    it is added, and hears when the subscribers changed.

    Examples:
        >>> from ikkuna_tune.bus import MessageBus
        >>> from ikkuna_tune.subscribers import CallbackSubscriber
        >>> class LossOnly:  # notes each change, refuses subscribers to other kinds
        ...     def __init__(self):
        ...         self.changes = []
        ...     def check_subscriber(self, subscriber):
        ...         if subscriber.kinds != ("loss",):
        ...             raise ValueError(f"only 'loss' here, not {list(subscriber.kinds)}")
        ...     def subscribers_changed(self, bus):
        ...         self.changes.append(len(bus.subscribers))
        >>> bus, listener = MessageBus(), LossOnly()
        >>> bus.add_listener(listener)
        >>> CallbackSubscriber(["loss"], print, bus).detach()
        >>> CallbackSubscriber(["weights"], print, bus)
        Traceback (most recent call last):
        ...
        ValueError: only 'loss' here, not ['weights']
        >>> listener.changes, bus.subscribers
        ([1, 0], ())
    """

    def check_subscriber(self, subscriber: Subscriber) -> None:
        """Raise ``ValueError`` if ``subscriber`` asks for something this listener cannot give."""

    def subscribers_changed(self, bus: MessageBus) -> None:
        """Called after a subscriber was added to or removed from ``bus``."""
