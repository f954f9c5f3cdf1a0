"""Collects the values the trial's subscribers published since the last report."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ikkuna_tune.backends import to_numbers
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.messages import (
    DEFAULT_TAG,
    KindType,
    LayerBatch,
    Message,
    MessageBundle,
    NamedModule,
)
from ikkuna_tune.subscribers.base import Subscriber
from ikkuna_tune.subscribers.subscriptions import Subscription

__all__ = ["MetricCollector", "StepTimer"]

logger = logging.getLogger(__name__)

Key = tuple[str, str | None]


class MetricCollector(Subscriber):
    """Keeps the latest value of each (kind, layer) since the last report.

    Values stay tensors on their device until :meth:`collect`, which turns them into numbers in
    one transfer. Per-layer kinds are nested by layer name:
    ``{"weights_norm2": {"conv1": 0.7, "fc": 1.2}, "test_accuracy": 0.97}``.

    Values published under a tag other than training's (a validation pass's, a probe's, for
    a subscriber on ``tag=None``) are reported under ``<kind>_<tag>`` (:func:`reported_kind`),
    from the first report after the first such pass on (no tag is known before).

    A value is reported once, in the first report after it was measured. Every report carries
    the same keys: one per declared kind (per layer for ``'DATA'`` kinds, for every layer in
    ``layers``) and every key measured before; a key not measured since the previous report is
    ``None``. So Tune's ``progress.csv``, whose columns are fixed by the first report, has a
    column for every output, and a value measured at one report is never shown again as new at
    the next (a frozen layer has no gradient: its gradient norm is ``None``, not the last one).

    Examples:
        >>> bus = MessageBus()
        >>> collector = MetricCollector(["loss"])
        >>> collector.attach(bus)
        >>> step = {"global_step": 0, "train_step": 0, "epoch": 0}
        >>> bus.publish_network_message("loss", torch.tensor(0.25), **step)
        >>> collector.collect(), collector.collect()  # a value is reported once
        ({'loss': 0.25}, {'loss': None})
    """

    def __init__(
        self, kinds: Mapping[str, KindType] | Sequence[str], layers: Sequence[str] = ()
    ) -> None:
        if not isinstance(kinds, Mapping):
            kinds = {kind: "META" for kind in kinds}
        self.collected: dict[str, KindType] = dict(kinds)
        self._keys: dict[Key, None] = {}  # every key reported, in first-seen order
        for kind, type_ in self.collected.items():
            if type_ == "META":
                self._keys[(kind, None)] = None
            else:
                self._keys.update(((kind, layer), None) for layer in layers)
        self._latest: dict[Key, Any] = {}
        #: where in training each latest value was measured: (epoch, step within it)
        self._latest_at: dict[Key, tuple[int, int]] = {}
        #: where the values the last :meth:`collect` gave were measured, nested as they are
        #: (values it gave as None have none): a data-parallel job averages the ranks' values
        #: measured at the same step only
        self.positions: dict[str, Any] = {}
        #: the layer keys every per-layer kind is reported for
        self._layers: set[str | None] = set(layers)
        #: batches of one value per layer (kind, layers, 1-D tensor), in arrival order
        #: the latest batch of each kind and set of layers, most recent last
        self._batches: dict[
            tuple[str, tuple[NamedModule, ...]], tuple[torch.Tensor, tuple[int, int]]
        ] = {}
        self._skipped: set[str] = set()  # kinds that published only non-scalar data so far
        self._scalar_kinds: set[str] = set()  # kinds that published a number
        self._warned: set[str] = set()
        #: the kind each ``<kind>_<tag>`` key reports (values published under another tag)
        self.tagged: dict[str, str] = {}
        super().__init__([Subscription(self, list(self.collected), tag=None)])

    def compute(self, message_or_bundle: Message | MessageBundle) -> None:
        if isinstance(message_or_bundle, Message):
            message = message_or_bundle
            kind = self._reported(message.kind, message.tag)
            self._take(kind, message.key, message.data, (message.epoch, message.train_step))

    def _reported(self, kind: str, tag: str) -> str:
        name = reported_kind(kind, tag)
        if name != kind:
            self.tagged[name] = kind
        return name

    takes_batches = True

    def compute_batch(self, batch: LayerBatch) -> None:
        data, kind = batch.data, self._reported(batch.kind, batch.tag)
        at = (batch.epoch, batch.train_step)
        if isinstance(data, torch.Tensor) and data.dim() == 1 and len(data) == len(batch.modules):
            # one value per layer in one tensor: split at the next report (or before a
            # message of one layer arrives, which must replace the value it holds)
            key = (kind, batch.modules)
            self._batches.pop(key, None)  # a later batch of the same layers replaces it whole
            self._batches[key] = (data.detach(), at)
            return
        for module, datum in zip(batch.modules, data):
            self._take(kind, module.name, datum, at)

    def _unpack_batches(self) -> None:
        batches, self._batches = self._batches, {}
        for (kind, modules), (values, at) in batches.items():
            for module, value in zip(modules, values.unbind()):
                self._latest[(kind, module.name)] = value
                self._latest_at[(kind, module.name)] = at

    def _take(self, kind: str, key: str | None, data: Any, at: tuple[int, int]) -> None:
        if self._batches:
            self._unpack_batches()
        if data is None:
            return  # nothing measured this time: the report has None, unless measured later
        value = _scalar(data)
        if value is not None:
            self._latest[(kind, key)] = value
            self._latest_at[(kind, key)] = at
            self._skipped.discard(kind)
            self._scalar_kinds.add(kind)
        elif kind in self._scalar_kinds:  # a number before: its key stays, None this time
            if kind not in self._warned:
                self._warned.add(kind)
                logger.warning(
                    "%r published a %s where it published numbers before; that value is not "
                    "reported (None)",
                    kind,
                    type(data).__name__,
                )
        elif kind not in self._skipped:
            self._skipped.add(kind)
            logger.debug("Topic %r publishes non-scalar data; it is not reported", kind)

    def reported_kinds(self) -> set[str]:
        """The top-level keys the next :meth:`collect` gives: every kind declared, reported or
        measured since (those of other tags, ``<kind>_<tag>``, included)."""
        pending = [kind for kind, _ in self._latest] + [kind for kind, _ in self._batches]
        return {kind for kind, _ in self._keys} | set(pending)

    def collect(self) -> dict[str, Any]:
        """Values measured since the last call as nested Python numbers, ``None`` for the rest.

        One host transfer per device.
        """
        return self.collect_with([])[0]

    def collect_with(self, extra: Sequence[torch.Tensor]) -> tuple[dict[str, Any], list[float]]:
        """:meth:`collect`, and the values of the one-element tensors ``extra`` (a report's own
        metrics) as floats, read in the same host transfer per device."""
        self._unpack_batches()
        latest, self._latest = self._latest, {}
        latest_at, self._latest_at = self._latest_at, {}
        self._keys.update(dict.fromkeys(latest))
        # a layer key first seen now (a layer's further call in a forward pass, 'fc#2', whose
        # SVCCA similarity comes a checkpoint after its other values) has every per-layer kind,
        # as the tracked layers do from the first report on
        known = {layer for _, layer in self._keys}
        new = [layer for _, layer in latest if layer is not None and layer in known - self._layers]
        for layer in dict.fromkeys(new):
            self._layers.add(layer)
            self._keys.update(
                ((kind, layer), None) for kind, type_ in self.collected.items() if type_ != "META"
            )
        items = [(t, v, 0) for (t, _), v in latest.items()]
        read = to_numbers(items + [("metric", tensor, 0) for tensor in extra])
        numbers = dict(zip(latest, read[: len(items)]))
        nested: dict[str, Any] = {}
        positions: dict[str, Any] = {}
        for key in self._keys:
            kind, layer = key
            if kind in self._skipped:
                continue
            number = numbers.get(key)
            at = latest_at.get(key) if key in numbers else None
            if layer is None:
                nested[kind] = number
                if at is not None:
                    positions[kind] = at
            else:
                nested.setdefault(kind, {})[layer] = number
                if at is not None:
                    positions.setdefault(kind, {})[layer] = at
        self.positions = positions
        return nested, read[len(items) :]


def reported_kind(kind: str, tag: str) -> str:
    """The report key of values of ``kind`` published under ``tag``: ``kind`` for training's
    (the default tag), ``<kind>_<tag>`` for another pass's, so that a subscriber on every tag
    (``tag=None``) reports a validation pass's or a probe's values beside training's, never in
    their place.

    >>> reported_kind("activations_norm2", DEFAULT_TAG), reported_kind("loss", "eval")
    ('activations_norm2', 'loss_eval')
    """
    return kind if tag == DEFAULT_TAG else f"{kind}_{tag}"


def _scalar(data: Any) -> torch.Tensor | float | int | None:
    """``data`` as a reportable number (a one-element tensor stays a tensor until the report),
    or None if it holds no single real number.

    >>> import numpy as np
    >>> [_scalar(v) for v in (torch.tensor([0.5]), 3, True, np.float32(0.25), np.array([2]))]
    [tensor([0.5000]), 3, 1, 0.25, 2]
    >>> _scalar(torch.ones(2)), _scalar("text"), _scalar(np.complex64(1j))
    (None, None, None)
    """
    if isinstance(data, torch.Tensor):
        return data.detach() if data.numel() == 1 and not data.is_complex() else None
    if isinstance(data, bool):
        return int(data)
    if isinstance(data, (int, float)):
        return data
    if isinstance(data, (np.generic, np.ndarray)) and data.size == 1 and data.dtype.kind in "biuf":
        item = data.item()
        return int(item) if isinstance(item, bool) else item
    return None


class StepTimer(Subscriber):
    """Wall-clock seconds per training step (``batch_started`` to ``batch_finished``).

    The first step of a trial (warm-up: allocations, first kernel launches) is not counted, nor
    a step that an epoch's end falls in (a gradient accumulation carried over it: its time
    would hold the epoch end's evaluations).

    Examples:
        >>> bus = MessageBus()
        >>> timer = StepTimer(bus)
        >>> for i in range(3):
        ...     step = {"global_step": i, "train_step": i, "epoch": 0}
        ...     bus.publish_network_message("batch_started", **step)
        ...     bus.publish_network_message("batch_finished", **step)
        >>> timer.steps, timer.pop_mean() >= 0, timer.pop_mean()  # the first step is not counted
        (2, True, None)
    """

    def __init__(
        self, message_bus: MessageBus | None = None, frozen: Callable[[], bool] | None = None
    ) -> None:
        self._started: float | None = None
        self._warm = False
        self.total = 0.0
        self.steps = 0
        #: ``frozen()`` says whether some layer is frozen now; the steps that start with none
        #: frozen, before the first that starts with one, are summed apart as well (seconds,
        #: steps): the step time before any freeze
        self._frozen = frozen
        self.frozen_once = False
        self.unfrozen = (0.0, 0)
        self._step_unfrozen = False
        super().__init__(
            [Subscription(self, ["batch_started", "batch_finished", "epoch_finished"])],
            message_bus,
        )

    def compute(self, message_or_bundle: Message | MessageBundle) -> None:
        now = time.perf_counter()
        kind = message_or_bundle.kind  # type: ignore[union-attr]
        if kind == "epoch_finished":
            self._started = None  # a step under way at an epoch's end is not timed
        elif kind == "batch_started":
            self._started = now
            if self._frozen is not None and self._frozen():
                self.frozen_once = True
            self._step_unfrozen = not self.frozen_once
        elif self._started is not None and not self._warm:
            self._warm = True
            self._started = None
        elif self._started is not None:
            seconds = now - self._started
            self.total += seconds
            self.steps += 1
            if self._step_unfrozen and not self.frozen_once:
                total, steps = self.unfrozen
                self.unfrozen = (total + seconds, steps + 1)
            self._started = None

    def pop_mean(self) -> float | None:
        """Mean seconds per step since the last call (None if no step finished)."""
        if not self.steps:
            return None
        mean = self.total / self.steps
        self.total, self.steps = 0.0, 0
        return mean
