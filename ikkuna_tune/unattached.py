"""Subscribers made without a message bus and never attached to one: they receive nothing.

The original ikkuna's subscribers and Exporter defaulted to one global bus, so code written for
it makes subscribers without naming a bus. ikkuna_tune has no global bus (each Exporter, each
trial, has its own), so such a subscriber would wait for messages that never come. A record of
each is kept here (a description, not the subscriber: one nobody holds may be gone already)
until it is attached; the first training step of any Exporter names those still unattached,
once, in a warning.
"""

from __future__ import annotations

import logging

__all__ = ["forget", "made_without_bus", "warn_unattached"]

logger = logging.getLogger(__name__)

#: by ``id`` of the subscriber: its description
_UNATTACHED: dict[int, str] = {}


def made_without_bus(subscriber: object, description: str) -> None:
    """Note that ``subscriber`` (described as ``description``) was made without a bus.

    Examples:
        >>> loose = object()
        >>> made_without_bus(loose, "Loose()"); _UNATTACHED[id(loose)]
        'Loose()'
        >>> forget(loose)
    """
    _UNATTACHED[id(subscriber)] = description


def forget(subscriber: object) -> None:
    """Forget ``subscriber``'s record: it is attached to a bus now, or left out on purpose
    (a subscriber that runs the model, on a data-parallel job's ranks other than 0).

    Examples:
        >>> loose = object()
        >>> made_without_bus(loose, "Loose()"); forget(loose); id(loose) in _UNATTACHED
        False
    """
    _UNATTACHED.pop(id(subscriber), None)


def warn_unattached() -> None:
    """Name, in one warning, the subscribers made without a bus and never attached to one
    since the last call, and forget them.

    Examples:
        >>> import ikkuna_tune as ik
        >>> loose = ik.NormSubscriber("weights", backend=None)
        >>> _UNATTACHED[id(loose)]
        "NormSubscriber(kinds=['weights'])"
        >>> warn_unattached(); _UNATTACHED
        {}
    """
    if not _UNATTACHED:
        return
    described = sorted(_UNATTACHED.values())
    _UNATTACHED.clear()
    more = len(described) - 5
    shown = ", ".join(described[:5]) + (f" and {more} more" if more > 0 else "")
    logger.warning(
        "%d subscriber(s) made without a message_bus and attached to none receive nothing: %s. "
        "ikkuna_tune has no global bus (the original ikkuna's subscribers defaulted to one): "
        "pass message_bus=exporter.message_bus, register them with "
        "bus.register_subscriber, or hand them to ik.watch / ik.instrument",
        len(described),
        shown,
    )
