"""The kinds a statistics subscriber may take: which carry a tensor, and whether a set of kinds
is per layer (``DATA``) or network-wide (``META``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ikkuna_tune.bus import MessageBus
from ikkuna_tune.messages import META_KINDS, KindType

__all__ = [
    "EVENT_KINDS",
    "SCALAR_KINDS",
    "check_spread_data",
    "check_spread_kind",
    "check_tensor_kind",
    "kind_type",
]

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

    Examples:
        >>> check_tensor_kind("weights")
        'weights'
        >>> check_tensor_kind("epoch_finished")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: Expected `kind` to be a kind that carries a tensor ... 'epoch_finished'
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


#: Built-in kinds whose tensor is one number (a step's loss): no spread, no matrix.
SCALAR_KINDS = frozenset({"loss"})


def check_spread_kind(kind: str, subscriber: str) -> str:
    """Refuse a kind whose tensor is one number for a statistic that needs several entries
    (a variance, a spectral norm); return ``kind``.

    Examples:
        >>> check_spread_kind("weights", "VarianceSubscriber")
        'weights'
        >>> check_spread_kind("loss", "VarianceSubscriber")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: VarianceSubscriber needs a kind with several entries per message ... 'loss'...
    """
    if kind in SCALAR_KINDS:
        raise ValueError(
            f"{subscriber} needs a kind with several entries per message (such as 'weights' "
            f"or 'activations') but got {kind!r}, whose tensor is one number"
        )
    return kind


def check_spread_data(
    data: torch.Tensor, kind: str, subscriber: str, least_entries: int = 2, least_dims: int = 0
) -> None:
    """The first-message counterpart of :func:`check_spread_kind`, for kinds only the data
    tells (a subscriber output): refuse a tensor of fewer than ``least_entries`` entries or
    ``least_dims`` dimensions.

    Examples:
        >>> check_spread_data(torch.ones(2, 2), "weights", "VarianceSubscriber")
        >>> check_spread_data(torch.tensor(0.5), "acc", "VarianceSubscriber")
        Traceback (most recent call last):
        ...
        ValueError: VarianceSubscriber needs a kind with several entries ... of shape ()
    """
    if data.numel() < least_entries or data.dim() < least_dims:
        raise ValueError(
            f"{subscriber} needs a kind with several entries per message but {kind!r} carries "
            f"a tensor of shape {tuple(data.shape)}"
        )


def kind_type(kinds: Sequence[str], bus: MessageBus | None = None) -> KindType:
    """``'META'`` if the kinds are network-wide (on ``bus``, or built in), else ``'DATA'``.

    Examples:
        >>> kind_type(["loss"]), kind_type(["weights", "weight_updates"])
        ('META', 'DATA')
    """
    meta = bus.meta_kinds if bus is not None else frozenset(META_KINDS)
    return "META" if all(k in meta for k in kinds) else "DATA"
