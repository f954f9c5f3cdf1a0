"""ikkuna_tune: see inside neural-network training across a Ray Tune sweep, and act on it.

The names below are loaded when first used (``import ikkuna_tune`` itself imports neither torch
nor Ray, so ``ikkuna-tune --help`` starts at once); ``ik.watch`` brings in torch, and
``ik.SVCCAScheduler`` Ray Tune.

Examples:
    >>> import ikkuna_tune as ik
    >>> ik.watch is ik.tune.watch, ik.watch.__module__
    (True, 'ikkuna_tune.tune.instrument')
    >>> "SVCCAScheduler" in dir(ik), ik.compare.load.__module__
    (True, 'ikkuna_tune.compare.loading')
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it. The top level holds what a user calls: the Tune
#: workflow, the Exporter and the subscribers (the original ikkuna's names among them). The bus
#: and the message types live in ``ikkuna_tune.bus`` and ``ikkuna_tune.messages``, the maths in
#: ``ikkuna_tune.functional``.
_SOURCES: dict[str, str] = {
    "instrument": "ikkuna_tune.tune",
    "watch": "ikkuna_tune.tune",
    "report": "ikkuna_tune.tune",
    "local_results": "ikkuna_tune.tune",
    "SVCCAScheduler": "ikkuna_tune.tune.scheduler",
    "PersistTrialFiles": "ikkuna_tune.tune.callbacks",
    "Exporter": "ikkuna_tune.exporter",
    **{
        name: "ikkuna_tune.subscribers"
        for name in (
            "BatchedSVCCASubscriber",
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
            "SVCCASubscriber",
            "SynchronizedSubscription",
            "TestAccuracySubscriber",
            "TrainAccuracySubscriber",
            "VarianceSubscriber",
        )
    },
}

__all__ = [
    "BatchedSVCCASubscriber",
    "CallbackSubscriber",
    "Exporter",
    "HistogramSubscriber",
    "LossSubscriber",
    "MeanSubscriber",
    "MessageMeanSubscriber",
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
    "instrument",
    "local_results",
    "report",
    "watch",
]

if TYPE_CHECKING:
    from ikkuna_tune.exporter import Exporter
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
    {"backends", "bus", "cli", "compare", "exporter", "functional", "messages"}
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
