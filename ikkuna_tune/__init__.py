"""ikkuna_tune: see inside neural-network training across a Ray Tune sweep, and act on it."""

from ikkuna_tune.exporter import EVAL_TAG, PROBE_TAG, Exporter
from ikkuna_tune.functional.svcca import cca, svcca_similarity
from ikkuna_tune.messages import (
    DATA_KINDS,
    DEFAULT_TAG,
    META_KINDS,
    Message,
    MessageBundle,
    MessageBus,
    ModuleMessage,
    NamedModule,
    NetworkMessage,
)
from ikkuna_tune.subscribers import (
    CallbackSubscriber,
    HistogramSubscriber,
    LossSubscriber,
    MeanSubscriber,
    MessageMeanSubscriber,
    NormSubscriber,
    PlotSubscriber,
    RatioSubscriber,
    SpectralNormSubscriber,
    Subscriber,
    Subscription,
    SynchronizedSubscription,
    TestAccuracySubscriber,
    TrainAccuracySubscriber,
    VarianceSubscriber,
)
from ikkuna_tune.tune import instrument, local_results, report, watch

__version__ = "0.1.0"

__all__ = [
    "DATA_KINDS",
    "DEFAULT_TAG",
    "EVAL_TAG",
    "META_KINDS",
    "PROBE_TAG",
    "CallbackSubscriber",
    "Exporter",
    "HistogramSubscriber",
    "LossSubscriber",
    "MeanSubscriber",
    "Message",
    "MessageBundle",
    "MessageBus",
    "MessageMeanSubscriber",
    "ModuleMessage",
    "NamedModule",
    "NetworkMessage",
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
    "cca",
    "instrument",
    "local_results",
    "report",
    "svcca_similarity",
    "watch",
]
