"""Subscribers: turn messages into metrics and publish them back on the bus."""

from ikkuna_tune.subscribers.base import (
    CallbackSubscriber,
    PlotSubscriber,
    Subscriber,
    Subscription,
    SynchronizedSubscription,
)

__all__ = [
    "CallbackSubscriber",
    "PlotSubscriber",
    "Subscriber",
    "Subscription",
    "SynchronizedSubscription",
]
