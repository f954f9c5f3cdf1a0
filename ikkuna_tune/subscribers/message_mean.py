"""The mean over a step's layers of a per-layer scalar kind (the mean weight norm of the
network, say), published once per step."""

from __future__ import annotations

from typing import Any

import torch

from ikkuna_tune import functional as F
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.messages import (
    DATA_KINDS,
    DEFAULT_TAG,
    META_KINDS,
    KindType,
    Message,
    MessageBundle,
)
from ikkuna_tune.subscribers.base import Subscriber
from ikkuna_tune.subscribers.kinds import check_tensor_kind
from ikkuna_tune.subscribers.plotting import PlotSubscriber, plot_config
from ikkuna_tune.subscribers.subscriptions import Subscription

__all__ = ["MessageMeanSubscriber"]


class _WholeSteps(Subscription):
    """Thins by whole steps: of the steps that bring messages of its kinds (counted per tag),
    every ``subsample``-th is kept with all of its layers' messages. Counting per layer, as
    :class:`Subscription` does, let a layer that sat out a step (a block skipped at random, a
    head not used, no gradient) run out of phase with the others, so that a kept step's mean
    was over some of its layers only."""

    def __init__(self, subscriber: Subscriber, kinds: list[str], tag: str | None, subsample: int):
        super().__init__(subscriber, kinds, tag, subsample)
        #: per tag: the steps counted, and the global step of the latest
        self.steps: dict[str, tuple[int, int | None]] = {}

    def receive_message(self, message: Message) -> None:
        if self.tag is not None and message.tag != self.tag:
            return
        count, latest = self.steps.get(message.tag, (0, None))
        if message.global_step != latest:  # (None before the first)
            count, latest = count + 1, message.global_step
            self.steps[message.tag] = (count, latest)
        if (count - 1) % self.subsample == 0:
            self._handle_message(message)

    def counts(self) -> dict[str, list[list[Any]]]:
        return {"steps": [[tag, n, step] for tag, (n, step) in self.steps.items()]}

    def load_counts(self, counts: dict[str, list[list[Any]]]) -> None:
        self.steps = {tag: (int(n), step) for tag, n, step in counts.get("steps", [])}


class MessageMeanSubscriber(PlotSubscriber):
    """The mean over all layers of one step of a per-layer scalar kind, e.g. the mean weight
    norm over the network from ``'weights_norm2'`` (the name is the original ikkuna's: it
    averages over the layers' messages of a step, not over time; :class:`MeanSubscriber` is the
    mean of the entries of each message's tensor).

    Publishes ``{kind}_message_mean`` (network-wide, a 0-d tensor) once per step and tag, when
    that step's ``batch_finished`` arrives or, for the values of a forward pass, when its
    ``network_output`` does (an evaluation pass, after the last step too), and for values
    published at an epoch's end (SVCCA's ``self_similarity``, say) when ``epoch_finished`` does,
    so that the epoch's report holds them. Attach it after the subscriber that publishes
    ``kind``.

    Arguments as for :class:`NormSubscriber` (without ``order``); ``subsample`` keeps every
    ``subsample``-th step that brings ``kind`` (counted per tag), each with all of its layers'
    messages, so that a kept step's mean is over all of its layers (a layer that sits out a
    step, without a gradient in it, does not shift the steps kept).

    Examples:
        >>> from ikkuna_tune.bus import MessageBus
        >>> from ikkuna_tune.messages import NamedModule
        >>> from ikkuna_tune.subscribers import CallbackSubscriber, NormSubscriber
        >>> bus = MessageBus()
        >>> _ = NormSubscriber("weights", bus, backend=None)
        >>> mean = MessageMeanSubscriber("weights_norm2", bus, backend=None)
        >>> means = []
        >>> _ = CallbackSubscriber([mean.published_kind], lambda m: means.append(m.data), bus)
        >>> at = {"global_step": 0, "train_step": 0, "epoch": 0}
        >>> for name, weights in [("a", [3.0, 4.0]), ("b", [1.0])]:  # norms 5 and 1
        ...     layer = NamedModule(name, torch.nn.Linear(1, 1))
        ...     bus.publish_module_message("weights", layer, torch.tensor(weights), **at)
        >>> bus.publish_network_message("batch_finished", **at)
        >>> means
        [tensor(3.)]
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
        if kind in DATA_KINDS:  # whole tensors: one number per layer is a metric of them
            raise ValueError(
                f"Expected `kind` to carry one number per layer (such as "
                f"'{kind}_norm2', published by a NormSubscriber of {kind!r} attached before "
                f"this one) but got {kind!r}, whose messages are whole tensors"
            )
        self.published_kind = f"{kind}_message_mean"
        self._groups: dict[tuple[str, int], list[torch.Tensor]] = {}
        self._sources: dict[tuple[str, int], Message] = {}
        super().__init__(
            [
                _WholeSteps(self, [kind], tag, subsample),
                # a pass's values are all in when its output is (an evaluation pass after the
                # last step has no batch_finished after it); an epoch end's when the
                # subscribers attached before this one have had epoch_finished
                Subscription(self, ["batch_finished", "network_output", "epoch_finished"], None),
            ],
            message_bus,
            plot_config(f"{kind}: mean over layers", "Mean", ylims),
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
        if message.kind in ("batch_finished", "epoch_finished"):
            self._publish_all()
            return
        if message.kind == "network_output":
            for key in [k for k in self._groups if k[0] == message.tag]:
                self._publish(key)
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
        self.publish(self.published_kind, F.mean(torch.stack(values)), source)

    def _publish_all(self) -> None:
        for key in list(self._groups):
            self._publish(key)
