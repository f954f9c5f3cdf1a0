"""The ratio of two kinds of the same layer and step (the update-to-weight ratio, say), and the
subscription that reduces each tensor the moment it arrives."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ikkuna_tune import functional as F
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.messages import (
    DATA_KINDS,
    DEFAULT_TAG,
    META_KINDS,
    KindType,
    LayerBatch,
    Message,
    MessageBundle,
    ModuleMessage,
)
from ikkuna_tune.subscribers.base import Subscriber
from ikkuna_tune.subscribers.kinds import check_tensor_kind, kind_type
from ikkuna_tune.subscribers.plotting import PlotSubscriber, plot_config
from ikkuna_tune.subscribers.subscriptions import SynchronizedSubscription

__all__ = ["RatioSubscriber"]


class _SnapshotSynchronizedSubscription(SynchronizedSubscription):
    """A :class:`SynchronizedSubscription` that applies ``snapshot`` to each message's tensor the
    moment it arrives, before the bundle is complete.

    Some messages carry live views: ``weights`` arrive before the forward pass but the bundle
    completes only after ``optimizer.step()`` has changed them in place. Reducing (or copying) on
    arrival keeps the values as published. Messages that join a bundle the subsampling will drop
    are not touched.
    """

    def __init__(
        self,
        subscriber: Subscriber,
        kinds: Sequence[str],
        tag: str | None,
        subsample: int,
        snapshot: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        super().__init__(subscriber, kinds, tag, subsample)
        self.snapshot = snapshot
        #: the L2 norm is shared with other subscribers of the same message; copies are not
        self.shared_as = "norm2" if snapshot is F.norm else None
        # receive_message only adds the snapshot: the bundle rules of the base class hold, so
        # will_process, needs_data and skipping work as for the base class
        self._own_sync_receive = False
        #: the reduced batches of the step being collected, by kind, that are not paired yet
        self._batches: dict[str, list[tuple[LayerBatch, Any]]] = {}

    @property
    def takes_batches(self) -> bool:
        """Batches of L2 norms are reduced at once (one multi-tensor kernel per batch) and
        paired layer by layer when the batch of every kind of a step has arrived."""
        if self.tag is not None and self.tag != DEFAULT_TAG:
            return True
        return self.subsample == 1 and self.shared_as is not None

    def receive_batch(self, batch: LayerBatch) -> None:
        if not self.accepts_tag(batch.tag):
            return
        bus = self.subscriber.message_bus
        if bus is not None:  # shared with a NormSubscriber of the same batch
            values = bus.shared(batch, self.shared_as or "", _norm_vector)
        else:
            values = _norm_vector(batch.data)
        batches = self._batches
        for kind in [
            k for k, held in batches.items() if held[0][0].global_step != batch.global_step
        ]:
            del batches[kind]  # an incomplete bundle of an earlier step is dropped
        batches.setdefault(batch.kind, []).append((batch, values))
        if len(batches) == len(self.kinds):
            self._pair()

    def _pair(self) -> None:
        """Hand the subscriber the layers that both kinds hold in this step, as one pair of
        batches, and keep the rest for batches still to come.

        One optimizer: the ``weights`` batch and the ``weight_updates`` batch hold the same
        layers, and pair whole. Several optimizers publish their layers' updates (or gradients)
        in one batch each, so the ``weights`` of every layer are paired part by part, each
        layer once; a second batch of a kind for a layer within the step replaces the first.
        """
        batches = self._batches
        first, second = (batches[kind] for kind in self.kinds)
        if len(first) == 1 and len(second) == 1 and first[0][0].modules == second[0][0].modules:
            batches.clear()
            self.subscriber.compute_batches([first[0], second[0]])  # type: ignore[attr-defined]
            return
        by_kind = [_by_layer(held) for held in (first, second)]
        names = [name for name in by_kind[0] if name in by_kind[1]]
        if not names:
            return
        pairs = []
        for kind, held, layers in zip(self.kinds, (first, second), by_kind):
            latest = held[-1][0]
            step = (latest.tag, latest.global_step, latest.train_step, latest.epoch)
            paired = [layers.pop(name) for name in names]
            modules = [module for module, _ in paired]
            values = F.stacked([value for _, value in paired])
            pairs.append((LayerBatch(kind, *step, modules, list(values)), values))
            if layers:  # the layers still waiting for the other kind
                rest = list(layers.values())
                kept = F.stacked([value for _, value in rest])
                batches[kind] = [(LayerBatch(kind, *step, [m for m, _ in rest], list(kept)), kept)]
            else:
                del batches[kind]
        self.subscriber.compute_batches(pairs)  # type: ignore[attr-defined]

    def _hold(self, message: Message) -> Message:
        return message  # a snapshot already, taken on arrival

    def receive_message(self, message: Message) -> None:
        if self.tag is not None and message.tag != self.tag:
            return
        data = message.data
        if (
            isinstance(data, torch.Tensor)
            and self._round_of(message.key, message.global_step) % self.subsample == 0
        ):
            bus = self.subscriber.message_bus
            if self.shared_as is not None and bus is not None:
                data = bus.shared(message, self.shared_as, self.snapshot)
            else:
                data = self.snapshot(data)
            if isinstance(message, ModuleMessage):
                message = ModuleMessage(
                    message.kind,
                    message.tag,
                    message.global_step,
                    message.train_step,
                    message.epoch,
                    data,
                    message.module,
                )
            else:
                message = dataclasses.replace(message, data=data)
        super().receive_message(message)


def _by_layer(held: list[tuple[LayerBatch, Any]]) -> dict[str, tuple[Any, Any]]:
    """Each layer's module and reduced value over the batches ``held`` (a later batch's value
    replaces an earlier one's), by layer name, in the order the layers came."""
    layers: dict[str, tuple[Any, Any]] = {}
    for batch, values in held:
        for module, value in zip(batch.modules, values):
            layers.pop(module.name, None)
            layers[module.name] = (module, value)
    return layers


def _norm_vector(data: Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """The L2 norms of a batch, as :class:`~ikkuna_tune.subscribers.NormSubscriber` computes
    them (the two share them, see :meth:`MessageBus.shared`)."""
    return F.stacked(F.norms(data, 2))


def _snapshot(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone()


class RatioSubscriber(PlotSubscriber):
    """The ratio of two kinds of the same layer and step: ``||k1||_2 / ||k2||_2``.

    With ``kinds=['weight_updates', 'weights']`` this is the update-to-weight ratio
    ``||W_after - W_before|| / ||W_before||``: the weights are those the step started from (the
    values its forward pass used), because each tensor's norm is taken the moment its message
    arrives, before ``optimizer.step()`` changes the weights in place. Publishes
    ``{k1}_{k2}_ratio`` per layer and step (a 0-d tensor). A step holds one bundle per layer:
    an optimizer that steps several times in one training step (a critic's steps between two
    generator steps, see :class:`~ikkuna_tune.exporter.Exporter`) has its first update paired
    with the step's weights, and its later ones with none (the Exporter warns).

    Args:
        kinds: ``[dividend kind, divisor kind]``.
        absolute: ``True`` (default): the ratio of L2 norms above, always >= 0. ``False``: the
            signed ratio ``<k1, k2> / ||k2||^2`` (:func:`ikkuna_tune.functional.projection_ratio`),
            the component of ``k1`` along ``k2``; negative when an update shrinks the weights.
            It copies both tensors on arrival instead of reducing them.
        Others as for :class:`NormSubscriber` (``subsample`` counts whole steps per layer).

    Examples:
        >>> from ikkuna_tune.bus import MessageBus
        >>> from ikkuna_tune.messages import NamedModule
        >>> from ikkuna_tune.subscribers import CallbackSubscriber
        >>> bus = MessageBus()
        >>> ratio = RatioSubscriber(["weight_updates", "weights"], bus, backend=None)
        >>> out = []
        >>> _ = CallbackSubscriber([ratio.published_kind], out.append, bus)
        >>> fc, step = NamedModule("fc", torch.nn.Linear(2, 1)), {"epoch": 0}
        >>> for kind, data in [("weights", [3.0, 4.0]), ("weight_updates", [0.3, 0.4])]:
        ...     bus.publish_module_message(
        ...         kind, fc, torch.tensor(data), global_step=5, train_step=5, **step
        ...     )
        >>> [(m.kind, m.key, m.global_step, m.data) for m in out]
        [('weight_updates_weights_ratio', 'fc', 5, tensor(0.1000))]
    """

    def __init__(
        self,
        kinds: Sequence[str],
        message_bus: MessageBus | None = None,
        tag: str | None = DEFAULT_TAG,
        subsample: int = 1,
        ylims: tuple[float, float] | None = None,
        backend: str | None = "tb",
        absolute: bool = True,
    ) -> None:
        if isinstance(kinds, str) or not isinstance(kinds, Sequence) or len(kinds) != 2:
            raise ValueError(
                f"Expected `kinds` to be a list of exactly two message kinds [dividend, divisor] "
                f"but got {kinds!r}"
            )
        k1, k2 = (check_tensor_kind(k, "kinds") for k in kinds)
        if k1 == k2:
            raise ValueError(f"Expected two different kinds but got {list(kinds)}")
        if (k1 in META_KINDS and k2 in DATA_KINDS) or (k1 in DATA_KINDS and k2 in META_KINDS):
            raise ValueError(
                f"Expected two per-layer kinds or two network kinds but got {list(kinds)}"
            )
        if not isinstance(absolute, bool):
            raise ValueError(f"Expected `absolute` to be True or False but got {absolute!r}")
        self.absolute = absolute
        self._ratio_kinds = (k1, k2)
        self.published_kind = f"{k1}_{k2}_ratio"
        subscription = _SnapshotSynchronizedSubscription(
            self, [k1, k2], tag, subsample, F.norm if absolute else _snapshot
        )
        super().__init__(
            [subscription],
            message_bus,
            plot_config(f"{k1}/{k2} ratio per layer", "Ratio", ylims),
            backend,
            publishes={self.published_kind: kind_type([k1, k2])},
        )

    def publications_on(self, message_bus: MessageBus) -> dict[str, KindType]:
        meta, data = message_bus.meta_kinds, message_bus.data_kinds
        k1, k2 = self._ratio_kinds
        if (k1 in meta and k2 in data) or (k1 in data and k2 in meta):
            raise ValueError(
                f"Expected two per-layer kinds or two network kinds but got {k1!r} and "
                f"{k2!r}: one per layer and one for the network never share a bundle"
            )
        return {self.published_kind: kind_type(self._ratio_kinds, message_bus)}

    def compute(self, message_or_bundle: Message | MessageBundle) -> None:
        if not isinstance(message_or_bundle, MessageBundle):
            return
        k1, k2 = self._ratio_kinds
        if self.absolute:  # the bundle holds the norms taken on arrival
            ratio = message_or_bundle[k1] / message_or_bundle[k2]
        else:
            ratio = F.projection_ratio(message_or_bundle[k1], message_or_bundle[k2])
        self.publish(self.published_kind, ratio, message_or_bundle)

    def compute_batches(self, pairs: list[tuple[LayerBatch, Any]]) -> None:
        """The ratios of one step's batches of L2 norms (``pairs``: the batch of each kind and
        its norms, dividend first), layer by layer, published as one batch."""
        (dividend, top), (divisor, bottom) = pairs
        if dividend.modules != divisor.modules:  # pair the layers both batches hold
            where = {module.name: i for i, module in enumerate(divisor.modules)}
            kept = [i for i, module in enumerate(dividend.modules) if module.name in where]
            if not kept:
                return
            modules = [dividend.modules[i] for i in kept]
            top = [top[i] for i in kept]
            bottom = [bottom[where[m.name]] for m in modules]
            step = (dividend.tag, dividend.global_step, dividend.train_step, dividend.epoch)
            dividend = LayerBatch(dividend.kind, *step, modules, top)
        if isinstance(top, torch.Tensor) and isinstance(bottom, torch.Tensor):
            ratios: Any = top / bottom  # one division for every layer
        else:
            ratios = F.stacked([a / b for a, b in zip(top, bottom)])
        self.publish_batch(self.published_kind, ratios, dividend)
