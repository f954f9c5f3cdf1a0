"""Subscribers: turn messages into metrics and publish them back on the bus."""

from ikkuna_tune.subscribers.accuracy import (
    LossSubscriber,
    TestAccuracySubscriber,
    TrainAccuracySubscriber,
)
from ikkuna_tune.subscribers.base import (
    CallbackSubscriber,
    PlotSubscriber,
    Subscriber,
    Subscription,
    SynchronizedSubscription,
)
from ikkuna_tune.subscribers.stats import (
    HistogramSubscriber,
    MeanSubscriber,
    MessageMeanSubscriber,
    NormSubscriber,
    RatioSubscriber,
    SpectralNormSubscriber,
    VarianceSubscriber,
)

__all__ = [
    "CallbackSubscriber",
    "HistogramSubscriber",
    "LossSubscriber",
    "MeanSubscriber",
    "MessageMeanSubscriber",
    "NormSubscriber",
    "PlotSubscriber",
    "RatioSubscriber",
    "SpectralNormSubscriber",
    "Subscriber",
    "Subscription",
    "SynchronizedSubscription",
    "TestAccuracySubscriber",
    "TrainAccuracySubscriber",
    "VarianceSubscriber",
]
