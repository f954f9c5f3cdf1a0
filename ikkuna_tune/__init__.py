"""ikkuna_tune: see inside neural-network training across a Ray Tune sweep, and act on it.

The names below are loaded when first used (``import ikkuna_tune`` itself imports neither torch
nor Ray, so ``ikkuna-tune --help`` starts at once); ``ik.watch`` brings in torch, and
``ik.SVCCAScheduler`` Ray Tune.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_SOURCES: dict[str, str] = {
    "EVAL_TAG": "ikkuna_tune.exporter",
    "PROBE_TAG": "ikkuna_tune.exporter",
    "Exporter": "ikkuna_tune.exporter",
    "cca": "ikkuna_tune.functional.svcca",
    "svcca_similarity": "ikkuna_tune.functional.svcca",
    "DATA_KINDS": "ikkuna_tune.messages",
    "DEFAULT_TAG": "ikkuna_tune.messages",
    "META_KINDS": "ikkuna_tune.messages",
    "Message": "ikkuna_tune.messages",
    "MessageBundle": "ikkuna_tune.messages",
    "MessageBus": "ikkuna_tune.messages",
    "ModuleMessage": "ikkuna_tune.messages",
    "NamedModule": "ikkuna_tune.messages",
    "NetworkMessage": "ikkuna_tune.messages",
    "BatchedSVCCASubscriber": "ikkuna_tune.subscribers",
    "CallbackSubscriber": "ikkuna_tune.subscribers",
    "HistogramSubscriber": "ikkuna_tune.subscribers",
    "LossSubscriber": "ikkuna_tune.subscribers",
    "MeanSubscriber": "ikkuna_tune.subscribers",
    "MessageMeanSubscriber": "ikkuna_tune.subscribers",
    "NormSubscriber": "ikkuna_tune.subscribers",
    "PlotSubscriber": "ikkuna_tune.subscribers",
    "RatioSubscriber": "ikkuna_tune.subscribers",
    "SpectralNormSubscriber": "ikkuna_tune.subscribers",
    "Subscriber": "ikkuna_tune.subscribers",
    "Subscription": "ikkuna_tune.subscribers",
    "SVCCASubscriber": "ikkuna_tune.subscribers",
    "SynchronizedSubscription": "ikkuna_tune.subscribers",
    "TestAccuracySubscriber": "ikkuna_tune.subscribers",
    "TrainAccuracySubscriber": "ikkuna_tune.subscribers",
    "VarianceSubscriber": "ikkuna_tune.subscribers",
    "instrument": "ikkuna_tune.tune",
    "local_results": "ikkuna_tune.tune",
    "report": "ikkuna_tune.tune",
    "watch": "ikkuna_tune.tune",
    "SVCCAScheduler": "ikkuna_tune.tune.scheduler",
    "PersistTrialFiles": "ikkuna_tune.tune.callbacks",
}

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

if TYPE_CHECKING:
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
    from ikkuna_tune.tune.callbacks import PersistTrialFiles
    from ikkuna_tune.tune.scheduler import SVCCAScheduler


#: submodules reachable as attributes (``ik.tune``, ``ik.compare``, ...)
_SUBMODULES = frozenset(
    {"backends", "cli", "compare", "demo", "exporter", "functional", "messages"}
    | {"subscribers", "tune"}
)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"ikkuna_tune.{name}")
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module 'ikkuna_tune' has no attribute {name!r}")
    value = getattr(importlib.import_module(source), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_SOURCES])
