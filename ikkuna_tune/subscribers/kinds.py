"""The kinds a statistics subscriber may take: which carry a tensor, and whether a set of kinds
is per layer (``DATA``) or network-wide (``META``)."""

from __future__ import annotations

from collections.abc import Sequence

from ikkuna_tune.bus import MessageBus
from ikkuna_tune.messages import META_KINDS, KindType

__all__ = ["EVENT_KINDS", "check_tensor_kind", "kind_type"]

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


def kind_type(kinds: Sequence[str], bus: MessageBus | None = None) -> KindType:
    """``'META'`` if the kinds are network-wide (on ``bus``, or built in), else ``'DATA'``.

    Examples:
        >>> kind_type(["loss"]), kind_type(["weights", "weight_updates"])
        ('META', 'DATA')
    """
    meta = bus.meta_kinds if bus is not None else frozenset(META_KINDS)
    return "META" if all(k in meta for k in kinds) else "DATA"
