"""Histograms of each layer's tensor of one kind, counted on the device and drawn by the
backend."""

from __future__ import annotations

from typing import Any

import torch

from ikkuna_tune import functional as F
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.checks import check_int
from ikkuna_tune.messages import DEFAULT_TAG, Message, MessageBundle
from ikkuna_tune.subscribers.kinds import check_tensor_kind
from ikkuna_tune.subscribers.plotting import PlotSubscriber
from ikkuna_tune.subscribers.subscriptions import Subscription

__all__ = ["HistogramSubscriber"]


class HistogramSubscriber(PlotSubscriber):
    """Histograms of each layer's tensor of one kind, drawn by the backend (TensorBoard).

    Counts are computed on the device (:func:`ikkuna_tune.functional.histogram`, ``bins``
    equal-width bins between the tensor's finite minimum and maximum) and handed to the
    backend, which converts them when it flushes. NaN and infinite entries (a diverged layer)
    fall in no bin: they show in the histogram's count, minimum, maximum and sums, which are
    then larger than the bins' total or not finite. Publishes no message.

    Args:
        kind: the message kind to bin.
        subsample: bin every ``subsample``-th message per layer.
        bins: number of bins (>= 1).
        per_epoch: bin only the first (sub-sampled) message of each layer in each epoch (per
            message tag: a validation pass's histogram is drawn apart from training's).
        Others as for :class:`NormSubscriber`.

    Examples:
        >>> from ikkuna_tune.bus import MessageBus
        >>> from ikkuna_tune.messages import NamedModule
        >>> bus = MessageBus()
        >>> sub = HistogramSubscriber("weights", bus, backend=None, bins=3)
        >>> class Shown:  # stands in for TensorBoard
        ...     def add_histogram(self, tag, counts, edges, stats, step):
        ...         print(tag, counts.tolist(), edges.tolist()[::3], step)
        >>> sub.backend = Shown()
        >>> layer = NamedModule("fc", torch.nn.Linear(1, 1))
        >>> data = torch.tensor([0.0, 1.0, 1.0, 2.0])
        >>> bus.publish_module_message("weights", layer, data, global_step=7, train_step=7, epoch=0)
        weights_histogram/fc [1, 2, 1] [0.0, 2.0] 7
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
        #: by message tag and layer: each is a histogram of its own
        self._last_epoch: dict[tuple[str, str | None], int] = {}
        super().__init__(
            [Subscription(self, [kind], tag, subsample)],
            message_bus,
            {"title": f"{kind} histogram", "ylabel": "Frequency"},
            backend,
        )

    def state_dict(self) -> dict[str, Any]:
        """As :meth:`Subscriber.state_dict`; with ``per_epoch``, also the epoch each layer's
        histogram was last drawn in (``'drawn'``: ``[tag, layer, epoch]`` lists), so that a
        trial restored within an epoch does not draw that epoch's again."""
        state = super().state_dict()
        if self.per_epoch:
            state["drawn"] = [[tag, key, epoch] for (tag, key), epoch in self._last_epoch.items()]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.per_epoch and isinstance(state, dict) and "drawn" in state:
            state = dict(state)
            drawn = state.pop("drawn")
            if not isinstance(drawn, list) or not all(
                isinstance(d, (list, tuple)) and len(d) == 3 and isinstance(d[2], int)
                for d in drawn
            ):
                raise ValueError(
                    f"Expected 'drawn' to be a list of [tag, layer, epoch] but got {drawn!r:.80}"
                )
            self._last_epoch = {(str(tag), key): int(epoch) for tag, key, epoch in drawn}
        super().load_state_dict(state)

    def compute(self, message_or_bundle: Message | MessageBundle) -> None:
        if not isinstance(message_or_bundle, Message):
            return
        message = message_or_bundle
        if not isinstance(message.data, torch.Tensor) or message.data.numel() == 0:
            return
        if self.per_epoch:
            series = (message.tag, message.key)
            if self._last_epoch.get(series) == message.epoch:
                return
            self._last_epoch[series] = message.epoch
        counts, edges, stats = F.histogram(message.data, self.bins)
        self.backend.add_histogram(
            self._tag(f"{self.kind}_histogram", message.key, message.tag),
            counts,
            edges,
            stats,
            message.global_step,
        )
