"""The kinds a bus knows: the built-in ones and those its subscribers publish, with their owners.

Examples:
    >>> registry = KindRegistry()
    >>> registry.register_kind("weights_norm2", "DATA", owner="a norm subscriber")
    >>> registry.kind_type("weights_norm2"), registry.kind_type("loss"), registry.kind_type("x")
    ('DATA', 'META', None)
    >>> registry.check_kinds(["weight"])
    Traceback (most recent call last):
    ...
    ValueError: Unknown message kind(s) ['weight']; did you mean 'weights'? ...
"""

from __future__ import annotations

from collections.abc import Iterable

from ikkuna_tune.messages import DATA_KINDS, META_KINDS, KindType, unknown_kinds_message

__all__ = ["KindRegistry"]


class KindRegistry:
    """Per-layer (``'DATA'``) and network-wide (``'META'``) kinds, built-in and registered; the
    base of :class:`~ikkuna_tune.bus.MessageBus`, where each bus owns its kinds.

    Examples:
        >>> registry = KindRegistry()
        >>> registry.register_kind("accuracy", "META", owner="an evaluator")
        >>> "accuracy" in registry.meta_kinds, registry.published_kinds
        (True, {'accuracy': 'an evaluator'})
        >>> registry.register_kind("accuracy", "META", owner="another evaluator")
        Traceback (most recent call last):
        ...
        ValueError: Kind 'accuracy' is already published by 'an evaluator'
        >>> registry.deregister_kind("accuracy"); registry.kind_type("accuracy") is None
        True
    """

    def __init__(self) -> None:
        self._data_kinds: set[str] = set(DATA_KINDS)
        self._meta_kinds: set[str] = set(META_KINDS)
        self._kind_owners: dict[str, object] = {}

    @property
    def data_kinds(self) -> frozenset[str]:
        """Per-layer kinds this bus knows (built-in and registered)."""
        return frozenset(self._data_kinds)

    @property
    def meta_kinds(self) -> frozenset[str]:
        """Network-wide kinds this bus knows (built-in and registered)."""
        return frozenset(self._meta_kinds)

    @property
    def known_kinds(self) -> frozenset[str]:
        return frozenset(self._data_kinds | self._meta_kinds)

    @property
    def published_kinds(self) -> dict[str, object]:
        """Kinds registered by subscribers, mapped to the subscriber that publishes each."""
        return dict(self._kind_owners)

    def register_kind(self, kind: str, type: KindType = "DATA", owner: object = None) -> None:
        """Add a kind that ``owner`` (a subscriber) publishes: per layer (``'DATA'``) or for the
        whole network (``'META'``).

        Raises:
            ValueError: on an empty name, an unknown type, a built-in kind, or a kind another
                publisher owns.
        """
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"Expected a non-empty kind name but got {kind!r}")
        if type not in ("DATA", "META"):
            raise ValueError(f"Expected kind type 'DATA' or 'META' but got {type!r}")
        if kind in DATA_KINDS or kind in META_KINDS:
            raise ValueError(f"{kind!r} is a built-in kind and cannot be registered again")
        current = self._kind_owners.get(kind)
        if current is not None and current is not owner:
            raise ValueError(f"Kind {kind!r} is already published by {current!r}")
        self._kind_owners[kind] = owner
        (self._data_kinds if type == "DATA" else self._meta_kinds).add(kind)

    def kind_type(self, kind: str) -> KindType | None:
        """``'DATA'`` for a per-layer kind, ``'META'`` for a network kind, None if unknown."""
        if kind in self._data_kinds:
            return "DATA"
        return "META" if kind in self._meta_kinds else None

    def deregister_kind(self, kind: str) -> None:
        """Remove a registered kind (built-in kinds stay)."""
        if kind in self._kind_owners:
            del self._kind_owners[kind]
            self._data_kinds.discard(kind)
            self._meta_kinds.discard(kind)

    def check_kinds(self, kinds: Iterable[str], asking: object = None) -> None:
        """Raise ``ValueError`` if any of ``kinds`` is unknown, with a "did you mean", the
        built-in kinds and the kinds registered here (not those of ``asking``, the subscriber
        being attached, which registers its own kinds first)."""
        unknown = [k for k in kinds if k not in self._data_kinds and k not in self._meta_kinds]
        if unknown:
            published = [k for k, owner in self._kind_owners.items() if owner is not asking]
            raise ValueError(unknown_kinds_message(unknown, published))
