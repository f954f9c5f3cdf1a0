"""Collects the latest value of every topic the trial's subscribers publish."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from ikkuna_tune.backends import to_numbers
from ikkuna_tune.messages import Message, MessageBundle, MessageBus
from ikkuna_tune.subscribers.base import Subscriber, Subscription

__all__ = ["MetricCollector", "StepTimer"]

logger = logging.getLogger(__name__)


class MetricCollector(Subscriber):
    """Keeps the latest value of each (topic, layer) and turns them into numbers in one transfer.

    Values stay tensors on their device until :meth:`collect`. Per-layer topics are nested by
    layer name: ``{"weights_norm2": {"conv1": 0.7, "fc": 1.2}, "test_accuracy": 0.97}``. A value
    is reported until a newer one replaces it.
    """

    def __init__(self, topics: list[str]) -> None:
        self.topics = list(topics)
        self._latest: dict[tuple[str, str | None], Any] = {}
        self._skipped: set[str] = set()
        super().__init__([Subscription(self, self.topics, tag=None)])

    def compute(self, message_or_bundle: Message | MessageBundle) -> None:
        if not isinstance(message_or_bundle, Message):
            return
        message = message_or_bundle
        data = message.data
        if isinstance(data, torch.Tensor) and data.numel() == 1:
            self._latest[(message.kind, message.key)] = data.detach()
        elif isinstance(data, (int, float)) and not isinstance(data, bool):
            self._latest[(message.kind, message.key)] = data
        elif message.kind not in self._skipped:
            self._skipped.add(message.kind)
            logger.debug("Topic %r publishes non-scalar data; it is not reported", message.kind)

    def collect(self) -> dict[str, Any]:
        """The latest values as nested Python numbers (one host transfer per device)."""
        items = [(topic, value, 0) for (topic, _), value in self._latest.items()]
        numbers = to_numbers(items)
        nested: dict[str, Any] = {}
        for ((topic, key), _), number in zip(self._latest.items(), numbers):
            if key is None:
                nested[topic] = number
            else:
                nested.setdefault(topic, {})[key] = number
        return nested


class StepTimer(Subscriber):
    """Wall-clock seconds per training step (``batch_started`` to ``batch_finished``).

    The first step of a trial (warm-up: allocations, first kernel launches) is not counted.
    """

    def __init__(self, message_bus: MessageBus | None = None) -> None:
        self._started: float | None = None
        self._warm = False
        self.total = 0.0
        self.steps = 0
        super().__init__([Subscription(self, ["batch_started", "batch_finished"])], message_bus)

    def compute(self, message_or_bundle: Message | MessageBundle) -> None:
        now = time.perf_counter()
        if message_or_bundle.kind == "batch_started":  # type: ignore[union-attr]
            self._started = now
        elif self._started is not None and not self._warm:
            self._warm = True
            self._started = None
        elif self._started is not None:
            self.total += now - self._started
            self.steps += 1
            self._started = None

    def pop_mean(self) -> float | None:
        """Mean seconds per step since the last call (None if no step finished)."""
        if not self.steps:
            return None
        mean = self.total / self.steps
        self.total, self.steps = 0.0, 0
        return mean
