"""Subscribers whose scalars also go to a backend (TensorBoard): :class:`PlotSubscriber`, the
original ikkuna's name, and :func:`plot_config`, how their values are meant to be drawn."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ikkuna_tune.backends import BACKENDS, Backend, NullBackend, layer_tag, safe_tag
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.checks import check_ylims
from ikkuna_tune.messages import (
    DEFAULT_TAG,
    KindType,
    LayerBatch,
    Message,
    MessageBundle,
    NamedModule,
)
from ikkuna_tune.subscribers.base import Subscriber, _origin
from ikkuna_tune.subscribers.subscriptions import Subscription

__all__ = ["PlotSubscriber", "plot_config"]


def plot_config(title: str, ylabel: str, ylims: object = None) -> dict[str, Any]:
    """The :attr:`PlotSubscriber.plot_config` of a subscriber's values (``ylims`` checked).

    Examples:
        >>> plot_config("Loss", "Cross-entropy", ylims=[0, 2])
        {'title': 'Loss', 'xlabel': 'Train step', 'ylabel': 'Cross-entropy', 'ylims': (0.0, 2.0)}
        >>> plot_config("Loss", "Cross-entropy")
        {'title': 'Loss', 'xlabel': 'Train step', 'ylabel': 'Cross-entropy'}
    """
    config: dict[str, Any] = {"title": title, "xlabel": "Train step", "ylabel": ylabel}
    limits = check_ylims(ylims)
    if limits is not None:
        config["ylims"] = limits
    return config


class PlotSubscriber(Subscriber):
    """A subscriber whose scalar results are also written to a backend (the name is the original
    ikkuna's; it draws nothing itself: with ``backend='tb'`` its values go to TensorBoard files,
    with ``backend=None`` nowhere).

    Every scalar it publishes is sent to the backend as ``'{kind}/{layer}'`` (or ``'{kind}'``
    for network-wide results) at the message's global step. The backend buffers tensors and writes
    them when the bus is flushed (end of epoch, Tune report), so drawing costs no per-step sync.

    Args:
        subscriptions: as for :class:`Subscriber`.
        message_bus: as for :class:`Subscriber`.
        plot_config: optional ``title``, ``xlabel``, ``ylabel``, ``ylims``: how the values are
            meant to be drawn. Checked and kept as :attr:`plot_config` for the user's own plots
            and for code written for the original ikkuna; TensorBoard draws its own axes.
        backend: ``'tb'`` (TensorBoard event files in the bus's ``log_dir``) or ``None``.
        publishes: as for :class:`Subscriber`.

    Examples:
        >>> from ikkuna_tune.backends import Backend
        >>> from ikkuna_tune.messages import NamedModule
        >>> class PrintingBackend(Backend):
        ...     def add_scalar(self, tag, value, step):
        ...         print(tag, value, step)
        >>> class Size(PlotSubscriber):  # the number of weights of each layer
        ...     def __init__(self, message_bus):
        ...         subscriptions = [Subscription(self, ["weights"])]
        ...         super().__init__(subscriptions, message_bus, plot_config("Size", "weights"),
        ...                          backend=None, publishes={"weights_size": "DATA"})
        ...     def compute(self, message):
        ...         self.publish("weights_size", message.data.numel(), message)
        >>> bus = MessageBus()
        >>> Size(bus).backend = PrintingBackend()  # in place of TensorBoard (backend='tb')
        >>> fc = NamedModule("fc", torch.nn.Linear(3, 2))
        >>> bus.publish_module_message("weights", fc, fc.module.weight, global_step=4,
        ...                            train_step=4, epoch=0)
        weights_size/fc 6 4
    """

    def __init__(
        self,
        subscriptions: Sequence[Subscription],
        message_bus: MessageBus | None = None,
        plot_config: dict[str, Any] | None = None,
        backend: str | None = "tb",
        *,
        publishes: Mapping[str, KindType] | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(
                f"Expected `backend` to be one of {list(BACKENDS)} but got {backend!r}"
            )
        if plot_config is not None:
            if not isinstance(plot_config, dict):
                raise ValueError(f"Expected `plot_config` to be a dict but got {plot_config!r}")
            unknown = set(plot_config) - {"title", "xlabel", "ylabel", "ylims"}
            if unknown:
                raise ValueError(
                    f"Unknown plot_config keys {sorted(unknown)}; "
                    "expected title, xlabel, ylabel, ylims"
                )
            if "ylims" in plot_config:
                plot_config = {**plot_config, "ylims": check_ylims(plot_config["ylims"])}
        self.plot_config = dict(plot_config or {})
        self.backend_name = backend
        self.backend: Backend = NullBackend()
        self._tags: dict[tuple[str, str | None, str], str] = {}
        # by kind and layer names (hashing names is C work; a layer's hash is a Python call)
        self._batch_tags: dict[tuple[str, tuple[str, ...], str], tuple[str, ...]] = {}
        super().__init__(subscriptions, message_bus, publishes=publishes)

    def attached(self, message_bus: MessageBus) -> None:
        super().attached(message_bus)
        self.backend = message_bus.backend(self.backend_name)

    def detached(self, message_bus: MessageBus) -> None:
        super().detached(message_bus)
        self.backend = NullBackend()

    def publish(
        self,
        kind: str,
        data: Any,
        source: Message | MessageBundle,
        module: NamedModule | None = None,
    ) -> None:
        super().publish(kind, data, source, module)
        bus = self.message_bus
        if bus is None or isinstance(self.backend, NullBackend):
            return  # drawn nowhere
        if isinstance(data, (int, float)) or (isinstance(data, torch.Tensor) and data.numel() == 1):
            first, module = _origin(source, module)
            name = module.name if module is not None and bus.kind_type(kind) == "DATA" else None
            self.backend.add_scalar(self._tag(kind, name, first.tag), data, first.global_step)

    def _tag(self, kind: str, name: str | None, message_tag: str = DEFAULT_TAG) -> str:
        """The TensorBoard tag of ``kind`` for layer ``name`` and messages under
        ``message_tag``: :func:`safe_tag` of the three (``'loss'``, ``'loss/eval'``,
        ``'activations_norm2/eval/fc1'``: training's values and a validation pass's never share
        a curve, also when two subscribers draw them). A layer name with characters a tag cannot
        hold gets a suffix of its own (:func:`layer_tag`: ``'enc 1'`` is ``'enc_1-85cb66'``,
        ``'enc_1'`` stays), so that two layers never share a curve; a ``_2``, ``_3``, ... suffix
        is the last resort should two tags still meet."""
        key = (kind, name, message_tag)
        tag = self._tags.get(key)
        if tag is None:
            layer = None if name is None else layer_tag(name)
            base = tag = safe_tag(kind, None if message_tag == DEFAULT_TAG else message_tag, layer)
            taken = set(self._tags.values())
            count = 1
            while tag in taken:
                count += 1
                tag = f"{base}_{count}"
            self._tags[key] = tag
        return tag

    def publish_batch(self, kind: str, data: Sequence[Any], source: LayerBatch) -> None:
        super().publish_batch(kind, data, source)
        if self.message_bus is None or isinstance(self.backend, NullBackend):
            return  # drawn nowhere
        step, add = source.global_step, self.backend.add_scalar
        if isinstance(data, torch.Tensor) and data.dim() == 1 and len(data) == len(source.modules):
            key = (kind, source.keys, source.tag)
            tags = self._batch_tags.get(key)
            if tags is None:
                tags = self._batch_tags[key] = tuple(
                    self._tag(kind, name, source.tag) for name in key[1]
                )
            self.backend.add_scalars(tags, data, step)
            return
        for module, datum in zip(source.modules, data):
            if isinstance(datum, (int, float)) or (
                isinstance(datum, torch.Tensor) and datum.numel() == 1
            ):
                add(self._tag(kind, module.name, source.tag), datum, step)
