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
    BatchedSVCCASubscriber,
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
    SVCCASubscriber,
    SynchronizedSubscription,
    TestAccuracySubscriber,
    TrainAccuracySubscriber,
    VarianceSubscriber,
)
from ikkuna_tune.tune import instrument, local_results, report, watch

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # the scheduler imports ray.tune's schedulers: load it only when asked for
    if name == "SVCCAScheduler":
        from ikkuna_tune.tune.scheduler import SVCCAScheduler

        return SVCCAScheduler
    if name == "PersistTrialFiles":
        from ikkuna_tune.tune.callbacks import PersistTrialFiles

        return PersistTrialFiles
    raise AttributeError(f"module 'ikkuna_tune' has no attribute {name!r}")


__all__ = [
    "DATA_KINDS",
    "DEFAULT_TAG",
    "EVAL_TAG",
    "META_KINDS",
    "PROBE_TAG",
    "BatchedSVCCASubscriber",
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
    "PersistTrialFiles",
    "PlotSubscriber",
    "RatioSubscriber",
    "SVCCAScheduler",
    "SVCCASubscriber",
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
