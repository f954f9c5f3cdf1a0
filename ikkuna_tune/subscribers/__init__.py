"""Subscribers: turn messages into metrics and publish them back on the bus."""

from ikkuna_tune.subscribers.accuracy import (
    LossSubscriber,
    TestAccuracySubscriber,
    TrainAccuracySubscriber,
)
from ikkuna_tune.subscribers.base import CallbackSubscriber, Subscriber
from ikkuna_tune.subscribers.histogram import HistogramSubscriber
from ikkuna_tune.subscribers.message_mean import MessageMeanSubscriber
from ikkuna_tune.subscribers.plotting import PlotSubscriber
from ikkuna_tune.subscribers.ratio import RatioSubscriber
from ikkuna_tune.subscribers.stats import (
    MeanSubscriber,
    NormSubscriber,
    SpectralNormSubscriber,
    VarianceSubscriber,
)
from ikkuna_tune.subscribers.subscriptions import Subscription, SynchronizedSubscription
from ikkuna_tune.subscribers.svcca import BatchedSVCCASubscriber, SVCCASubscriber

__all__ = [
    "BatchedSVCCASubscriber",
    "CallbackSubscriber",
    "HistogramSubscriber",
    "LossSubscriber",
    "MeanSubscriber",
    "MessageMeanSubscriber",
    "NormSubscriber",
    "PlotSubscriber",
    "RatioSubscriber",
    "SVCCASubscriber",
    "SpectralNormSubscriber",
    "Subscriber",
    "Subscription",
    "SynchronizedSubscription",
    "TestAccuracySubscriber",
    "TrainAccuracySubscriber",
    "VarianceSubscriber",
]
