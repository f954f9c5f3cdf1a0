"""Statistics of training artifacts: norms, mean, variance, ratios, spectral norm, histograms.

Each subscriber computes its metric on the tensor's device with a function from
:mod:`ikkuna_tune.functional` and publishes it back on the bus as a 0-d tensor, under the kind
named in its docstring. Per-layer kinds (``weights``, ``activations``, ...) give per-layer kinds
(``DATA``); network-wide kinds (``loss``, ``network_output``) give network kinds (``META``).
Nothing here turns a tensor into a Python number: backends convert once per flush.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ikkuna_tune import functional as F
from ikkuna_tune.backends import safe_tag
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.checks import check_int, check_ylims
from ikkuna_tune.messages import (
    DATA_KINDS,
    DEFAULT_TAG,
    META_KINDS,
    KindType,
    Message,
    MessageBundle,
    ModuleMessage,
)
from ikkuna_tune.subscribers.base import PlotSubscriber, Subscriber
from ikkuna_tune.subscribers.subscriptions import Subscription, SynchronizedSubscription

__all__ = [
    "HistogramSubscriber",
    "MeanSubscriber",
    "MessageMeanSubscriber",
    "NormSubscriber",
    "RatioSubscriber",
    "SpectralNormSubscriber",
    "VarianceSubscriber",
]

logger = logging.getLogger(__name__)

#: Built-in kinds that mark events and carry no tensor.
EVENT_KINDS: tuple[str, ...] = (
    "batch_started",
    "batch_finished",
    "epoch_started",
    "epoch_finished",
    "layer_frozen",
)


def check_tensor_kind(kind: object, name: str = "kind") -> str:
    """Return ``kind`` if it can name a kind of tensor message, else raise ``ValueError``.

    Only what is knowable without a bus is checked (a non-empty string that is not an event
    kind); the bus rejects kinds it does not know when the subscriber is attached.
    """
    if not isinstance(kind, str) or not kind:
        raise ValueError(
            f"Expected `{name}` to be a message kind (a non-empty string) but got {kind!r}"
        )
    if kind in EVENT_KINDS:
        raise ValueError(
            f"Expected `{name}` to be a kind that carries a tensor (such as 'weights' or "
            f"'weight_gradients') but got the event kind {kind!r}"
        )
    return kind


def _plot_config(title: str, ylabel: str, ylims: object) -> dict[str, Any]:
    config: dict[str, Any] = {"title": title, "xlabel": "Train step", "ylabel": ylabel}
    limits = check_ylims(ylims)
    if limits is not None:
        config["ylims"] = limits
    return config


def _kind_type(kinds: Sequence[str], bus: MessageBus | None = None) -> KindType:
    """``'META'`` if the kinds are network-wide (on ``bus``, or built in), else ``'DATA'``."""
    meta = bus.meta_kinds if bus is not None else frozenset(META_KINDS)
    return "META" if all(k in meta for k in kinds) else "DATA"


class _TensorMetricSubscriber(PlotSubscriber):
    """One kind in, one scalar per message out, published under :attr:`published_kind`.

    That kind is per layer (``DATA``) for per-layer kinds and network-wide (``META``) for
    network kinds; which one is decided when the subscriber is attached to a bus.
    """

    def __init__(
        self,
        kind: str,
        published_kind: str,
        message_bus: MessageBus | None,
        tag: str | None,
        subsample: int,
        ylims: tuple[float, float] | None,
        backend: str | None,
        ylabel: str,
    ) -> None:
        self.kind = check_tensor_kind(kind)
        self.published_kind = published_kind
        super().__init__(
            [Subscription(self, [kind], tag, subsample)],
            message_bus,
            _plot_config(f"{published_kind} per layer", ylabel, ylims),
            backend,
            publishes={published_kind: _kind_type([kind])},
        )

    def publications_on(self, message_bus: MessageBus) -> dict[str, KindType]:
        return {self.published_kind: _kind_type([self.kind], message_bus)}

    def metric(self, data: torch.Tensor) -> torch.Tensor:
        """The metric of one message's data (a 0-d tensor on the data's device)."""
        raise NotImplementedError

    #: Name under which :meth:`metric` results are shared with other subscribers of the same
    #: message (see :meth:`MessageBus.shared`); ``None`` shares nothing.
    shared_as: str | None = None

    def compute(self, message_or_bundle: Message | MessageBundle) -> None:
        if isinstance(message_or_bundle, Message):
            bus = self.message_bus
            if self.shared_as is not None and bus is not None:
                value = bus.shared(message_or_bundle, self.shared_as, self.metric)
            else:
                value = self.metric(message_or_bundle.data)
            self.publish(self.published_kind, value, message_or_bundle)


def _order_name(order: float) -> str:
    if order == math.inf:
        return "inf"
    if isinstance(order, float) and order.is_integer():
        return str(int(order))
    return str(order)


class NormSubscriber(_TensorMetricSubscriber):
    """The ``order``-norm of each message's tensor, taken as one vector (see
    :func:`ikkuna_tune.functional.norm`; the Frobenius norm of a weight matrix for ``order=2``).

    Publishes ``{kind}_norm{order}`` (``'weights_norm2'``), one 0-d tensor per layer and message.

    Args:
        kind: the message kind to take norms of.
        message_bus: attach to this bus right away.
        tag: receive only messages with this tag (``None``: every tag).
        subsample: process every ``subsample``-th message per layer.
        ylims: optional y-axis limits for plots.
        backend: ``'tb'`` or ``None``.
        order: the norm's order, a positive number (``math.inf`` for the largest magnitude).
    """

    def __init__(
        self,
        kind: str,
        message_bus: MessageBus | None = None,
        tag: str | None = DEFAULT_TAG,
        subsample: int = 1,
        ylims: tuple[float, float] | None = None,
        backend: str | None = "tb",
        order: float = 2,
    ) -> None:
        check_tensor_kind(kind)
        if isinstance(order, bool) or not isinstance(order, (int, float)) or not order > 0:
            raise ValueError(f"Expected argument `order` to be a positive number but got {order!r}")
        self.order = order
        self.shared_as = f"norm{_order_name(order)}"
        super().__init__(
            kind,
            f"{kind}_norm{_order_name(order)}",
            message_bus,
            tag,
            subsample,
            ylims,
            backend,
            f"L{_order_name(order)} norm",
        )

    def metric(self, data: torch.Tensor) -> torch.Tensor:
        return F.norm(data, self.order)


class MeanSubscriber(_TensorMetricSubscriber):
    """The mean of all entries of each message's tensor. Publishes ``{kind}_mean``.

    Arguments as for :class:`NormSubscriber` (without ``order``).
    """

    def __init__(
        self,
        kind: str,
        message_bus: MessageBus | None = None,
        tag: str | None = DEFAULT_TAG,
        subsample: int = 1,
        ylims: tuple[float, float] | None = None,
        backend: str | None = "tb",
    ) -> None:
        check_tensor_kind(kind)
        super().__init__(kind, f"{kind}_mean", message_bus, tag, subsample, ylims, backend, "Mean")

    def metric(self, data: torch.Tensor) -> torch.Tensor:
        return F.mean(data)


class VarianceSubscriber(_TensorMetricSubscriber):
    """The unbiased variance of all entries of each message's tensor (``n - 1`` in the
    denominator; NaN for a single entry). Publishes ``{kind}_variance``.

    Arguments as for :class:`NormSubscriber` (without ``order``).
    """

    def __init__(
        self,
        kind: str,
        message_bus: MessageBus | None = None,
        tag: str | None = DEFAULT_TAG,
        subsample: int = 1,
        ylims: tuple[float, float] | None = None,
        backend: str | None = "tb",
    ) -> None:
        check_tensor_kind(kind)
        super().__init__(
            kind, f"{kind}_variance", message_bus, tag, subsample, ylims, backend, "Variance"
        )

    def metric(self, data: torch.Tensor) -> torch.Tensor:
        return F.variance(data)


class SpectralNormSubscriber(_TensorMetricSubscriber):
    """The spectral norm (largest singular value) of each message's tensor as a matrix
    ``(out, -1)``, estimated by power iteration (:func:`ikkuna_tune.functional.spectral_norm`).

    One vector ``u`` per layer persists from message to message, so a few iterations per step
    track the slowly changing weights (the approach of :func:`torch.nn.utils.spectral_norm`); the
    vectors are in :meth:`state_dict` for checkpoints. Meant for weight-shaped kinds
    (``weights``, ``weight_gradients``, ``weight_updates``). Publishes ``{kind}_spectral_norm``.

    Args:
        n_power_iterations: power iterations per message (>= 1).
        Others as for :class:`NormSubscriber` (without ``order``).
    """

    def __init__(
        self,
        kind: str,
        message_bus: MessageBus | None = None,
        tag: str | None = DEFAULT_TAG,
        subsample: int = 1,
        ylims: tuple[float, float] | None = None,
        backend: str | None = "tb",
        n_power_iterations: int = 1,
    ) -> None:
        check_tensor_kind(kind)
        self.n_power_iterations = check_int("n_power_iterations", n_power_iterations)
        self._u: dict[str, torch.Tensor] = {}
        super().__init__(
            kind,
            f"{kind}_spectral_norm",
            message_bus,
            tag,
            subsample,
            ylims,
            backend,
            "Spectral norm",
        )

    def compute(self, message_or_bundle: Message | MessageBundle) -> None:
        if not isinstance(message_or_bundle, Message):
            return
        key = message_or_bundle.key or ""
        sigma, self._u[key] = F.spectral_norm(
            message_or_bundle.data, self._u.get(key), self.n_power_iterations
        )
        self.publish(self.published_kind, sigma, message_or_bundle)

    def state_dict(self) -> dict[str, Any]:
        """``{'u': {layer: vector}}``: the power-iteration vectors (network kinds under ``''``)."""
        return {"u": dict(self._u)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the vectors of :meth:`state_dict`; they move to the data's device when used."""
        u = state.get("u") if isinstance(state, dict) else None
        if not isinstance(u, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) and v.dim() == 1
            for k, v in u.items()
        ):
            raise ValueError(
                "Expected a state {'u': {layer name: 1-d tensor}} for SpectralNormSubscriber "
                f"but got {state!r}"
            )
        self._u = {k: v.detach().clone() for k, v in u.items()}


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

    def receive_message(self, message: Message) -> None:
        if self.tag is not None and message.tag != self.tag:
            return
        data = message.data
        if (
            isinstance(data, torch.Tensor)
            and self._rounds.get(message.key, 0) % self.subsample == 0
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


def _snapshot(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone()


class RatioSubscriber(PlotSubscriber):
    """The ratio of two kinds of the same layer and step: ``||k1||_2 / ||k2||_2``.

    With ``kinds=['weight_updates', 'weights']`` this is the update-to-weight ratio
    ``||W_after - W_before|| / ||W_before||``: the weights are those the step started from (the
    values its forward pass used), because each tensor's norm is taken the moment its message
    arrives, before ``optimizer.step()`` changes the weights in place. Publishes
    ``{k1}_{k2}_ratio`` per layer and step (a 0-d tensor).

    Args:
        kinds: ``[dividend kind, divisor kind]``.
        absolute: ``True`` (default): the ratio of L2 norms above, always >= 0. ``False``: the
            signed ratio ``<k1, k2> / ||k2||^2`` (:func:`ikkuna_tune.functional.projection_ratio`),
            the component of ``k1`` along ``k2``; negative when an update shrinks the weights.
            It copies both tensors on arrival instead of reducing them.
        Others as for :class:`NormSubscriber` (``subsample`` counts whole steps per layer).
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
            _plot_config(f"{k1}/{k2} ratio per layer", "Ratio", ylims),
            backend,
            publishes={self.published_kind: _kind_type([k1, k2])},
        )

    def publications_on(self, message_bus: MessageBus) -> dict[str, KindType]:
        meta, data = message_bus.meta_kinds, message_bus.data_kinds
        k1, k2 = self._ratio_kinds
        if (k1 in meta and k2 in data) or (k1 in data and k2 in meta):
            raise ValueError(
                f"Expected two per-layer kinds or two network kinds but got {k1!r} and "
                f"{k2!r}: one per layer and one for the network never share a bundle"
            )
        return {self.published_kind: _kind_type(self._ratio_kinds, message_bus)}

    def compute(self, message_or_bundle: Message | MessageBundle) -> None:
        if not isinstance(message_or_bundle, MessageBundle):
            return
        k1, k2 = self._ratio_kinds
        if self.absolute:  # the bundle holds the norms taken on arrival
            ratio = message_or_bundle[k1] / message_or_bundle[k2]
        else:
            ratio = F.projection_ratio(message_or_bundle[k1], message_or_bundle[k2])
        self.publish(self.published_kind, ratio, message_or_bundle)


class MessageMeanSubscriber(PlotSubscriber):
    """The mean over all layers of one step of a per-layer scalar kind, e.g. the mean weight
    norm over the network from ``'weights_norm2'`` (the name is the original ikkuna's: it
    averages over the layers' messages of a step, not over time; :class:`MeanSubscriber` is the
    mean of the entries of each message's tensor).

    Publishes ``{kind}_message_mean`` (network-wide, a 0-d tensor) once per step, when that
    step's ``batch_finished`` arrives (messages of evaluation tags: at the next
    ``batch_finished``). Attach it after the subscriber that publishes ``kind``.

    Arguments as for :class:`NormSubscriber` (without ``order``); ``subsample`` thins the
    per-layer messages.
    """

    def __init__(
        self,
        kind: str,
        message_bus: MessageBus | None = None,
        tag: str | None = DEFAULT_TAG,
        subsample: int = 1,
        ylims: tuple[float, float] | None = None,
        backend: str | None = "tb",
    ) -> None:
        self.kind = check_tensor_kind(kind)
        if kind in META_KINDS:
            raise ValueError(
                f"Expected `kind` to be a per-layer kind (such as 'weights_norm2') but got the "
                f"network kind {kind!r}"
            )
        self.published_kind = f"{kind}_message_mean"
        self._groups: dict[tuple[str, int], list[torch.Tensor]] = {}
        self._sources: dict[tuple[str, int], Message] = {}
        super().__init__(
            [
                Subscription(self, [kind], tag, subsample),
                Subscription(self, ["batch_finished"], None),
            ],
            message_bus,
            _plot_config(f"{kind}: mean over layers", "Mean", ylims),
            backend,
            publishes={self.published_kind: "META"},
        )

    def publications_on(self, message_bus: MessageBus) -> dict[str, KindType]:
        if self.kind in message_bus.meta_kinds:
            raise ValueError(
                f"Expected `kind` to be a per-layer kind but {self.kind!r} is a network kind on "
                f"{message_bus!r}"
            )
        return super().publications_on(message_bus)

    def compute(self, message_or_bundle: Message | MessageBundle) -> None:
        if not isinstance(message_or_bundle, Message):
            return
        message = message_or_bundle
        if message.kind == "batch_finished":
            self._publish_all()
            return
        data = message.data
        if not isinstance(data, torch.Tensor) or data.numel() != 1:
            shape = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
            raise ValueError(
                f"MessageMeanSubscriber expects one number per message but {message.kind!r} "
                f"carries {shape}"
            )
        key = (message.tag, message.global_step)
        group = self._groups.get(key)
        if group is None:
            # a new step: anything left of an older step of this tag is complete
            for old in [k for k in self._groups if k[0] == message.tag]:
                self._publish(old)
            group = self._groups[key] = []
        group.append(data.reshape(()))
        self._sources[key] = message

    def _publish(self, key: tuple[str, int]) -> None:
        values = self._groups.pop(key)
        source = self._sources.pop(key)
        self.publish(self.published_kind, torch.stack(values).float().mean(), source)

    def _publish_all(self) -> None:
        for key in list(self._groups):
            self._publish(key)


class HistogramSubscriber(PlotSubscriber):
    """Histograms of each layer's tensor of one kind, drawn by the backend (TensorBoard).

    Counts are computed on the device (:func:`ikkuna_tune.functional.histogram`, ``bins``
    equal-width bins between the tensor's minimum and maximum) and handed to the backend, which
    converts them when it flushes. Publishes no message.

    Args:
        kind: the message kind to bin.
        subsample: bin every ``subsample``-th message per layer.
        bins: number of bins (>= 1).
        per_epoch: bin only the first (sub-sampled) message of each layer in each epoch.
        Others as for :class:`NormSubscriber`.
    """

    def __init__(
        self,
        kind: str,
        message_bus: MessageBus | None = None,
        tag: str | None = DEFAULT_TAG,
        subsample: int = 1,
        backend: str | None = "tb",
        bins: int = 64,
        per_epoch: bool = False,
    ) -> None:
        self.kind = check_tensor_kind(kind)
        self.bins = check_int("bins", bins)
        if not isinstance(per_epoch, bool):
            raise ValueError(f"Expected `per_epoch` to be True or False but got {per_epoch!r}")
        self.per_epoch = per_epoch
        self._last_epoch: dict[str | None, int] = {}
        super().__init__(
            [Subscription(self, [kind], tag, subsample)],
            message_bus,
            {"title": f"{kind} histogram", "ylabel": "Frequency"},
            backend,
        )

    def compute(self, message_or_bundle: Message | MessageBundle) -> None:
        if not isinstance(message_or_bundle, Message):
            return
        message = message_or_bundle
        if not isinstance(message.data, torch.Tensor) or message.data.numel() == 0:
            return
        if self.per_epoch:
            if self._last_epoch.get(message.key) == message.epoch:
                return
            self._last_epoch[message.key] = message.epoch
        counts, edges, stats = F.histogram(message.data, self.bins)
        self.backend.add_histogram(
            safe_tag(f"{self.kind}_histogram", message.key),
            counts,
            edges,
            stats,
            message.global_step,
        )
