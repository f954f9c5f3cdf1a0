"""A subscriber's declared state as a checkpoint can hold it, and back.

A trial's checkpoint is read with ``torch.load(..., weights_only=True)``, which takes tensors,
Python numbers, strings and the plain containers, and refuses the rest (a NumPy scalar among
them): a state it refuses would be lost at every restore. :func:`portable` turns each NumPy
value into a marked plain value (a scalar's number, an array's tensor, with its dtype), moves
tensors to the CPU and dict-like containers into plain dicts; :func:`restored` turns the marks
back into the NumPy values they were; :func:`check_loadable` raises, when the state is saved,
for anything else the load would refuse.

Examples:
    >>> import numpy as np
    >>> saved = portable({"best": np.float64(0.5), "hist": np.arange(3)})
    >>> back = restored(saved)
    >>> back["best"], back["hist"]
    (np.float64(0.5), array([0, 1, 2]))
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

__all__ = ["check_loadable", "portable", "restored"]

#: values that a weights-only load takes as they are (containers are walked)
_PLAIN = (
    torch.Tensor,
    int,
    float,
    complex,
    str,
    bytes,
    type(None),
    torch.dtype,
    torch.device,
    torch.Size,
)
#: the key of a marked NumPy value: ``{_NUMPY: dtype, "value": number or tensor}``
_NUMPY = "__ikkuna_tune_numpy__"


#: The most bytes :func:`on_cpu` joins into one transfer (the joined copy is made on the
#: device first: at most this much more memory there).
JOIN_BYTES = 64 * 2**20


def on_cpu(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """``tensors`` detached on the CPU, those of another device copied in one transfer per
    device and dtype (each copy a synchronisation on a GPU), or one per :data:`JOIN_BYTES`
    of them; those on the CPU as they are.

    >>> a, b = on_cpu([torch.ones(2, 3), torch.zeros(4)])
    >>> tuple(a.shape), tuple(b.shape)
    ((2, 3), (4,))
    """
    out = [t.detach() for t in tensors]
    items = [
        (i, (t.device, t.dtype), t.numel() * t.element_size())
        for i, t in enumerate(out)
        if t.device.type != "cpu"
    ]
    for indices in _joined(items, JOIN_BYTES):
        if len(indices) == 1:
            out[indices[0]] = out[indices[0]].cpu()
            continue
        host = torch.cat([out[i].reshape(-1) for i in indices]).cpu()
        start = 0
        for i in indices:
            size = out[i].numel()
            # a copy of its own: a view would keep (and save) the whole transfer's storage
            out[i] = host[start : start + size].reshape(out[i].shape).clone()
            start += size
    return out


def _joined(items: list[tuple[int, Any, int]], limit: int) -> list[list[int]]:
    """The indices of ``(index, kind, bytes)`` items in groups of one kind each, a group
    closed before it would pass ``limit`` bytes (an item larger than that alone).

    >>> _joined([(0, "a", 40), (1, "b", 10), (2, "a", 40), (3, "a", 10), (4, "a", 90)], 60)
    [[0], [2, 3], [4], [1]]
    """
    by_kind: dict[Any, list[list[int]]] = {}
    joined: dict[Any, int] = {}  # bytes in each kind's last group
    for index, kind, size in items:
        groups = by_kind.setdefault(kind, [[]])
        if groups[-1] and joined.get(kind, 0) + size > limit:
            groups.append([])
            joined[kind] = 0
        groups[-1].append(index)
        joined[kind] = joined.get(kind, 0) + size
    return [group for groups in by_kind.values() for group in groups]


def portable(value: Any) -> Any:
    """``value`` with tensors detached on the CPU (one transfer per device and dtype, see
    :func:`on_cpu`), NumPy scalars and arrays (of numbers or booleans) marked with their
    dtype, and dicts, lists, tuples and sets (subclasses included: a ``Counter``, a
    ``defaultdict``) as plain ones.

    >>> portable([np.int64(3), {"n": 1}])
    [{'__ikkuna_tune_numpy__': 'int64', 'value': 3}, {'n': 1}]
    """
    found: list[torch.Tensor] = []
    _tensors_in(value, found)
    moved = dict(zip(map(id, found), on_cpu(found)))
    return _portable(value, moved)


def _tensors_in(value: Any, found: list[torch.Tensor]) -> None:
    """Append the tensors in ``value`` (as :func:`_portable` walks it) to ``found``."""
    if isinstance(value, torch.Tensor):
        found.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            _tensors_in(v, found)
    elif isinstance(value, (list, tuple, set, frozenset)) and not hasattr(value, "_fields"):
        for v in value:
            _tensors_in(v, found)


def _portable(value: Any, moved: dict[int, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        return moved[id(value)] if id(value) in moved else value.detach().cpu()
    if isinstance(value, np.generic) and isinstance(value.item(), (bool, int, float, complex)):
        return {_NUMPY: value.dtype.name, "value": value.item()}  # (not a longdouble)
    if isinstance(value, np.ndarray) and value.dtype.kind in "biufc":
        array = np.array(value, dtype=value.dtype.newbyteorder("="), order="C", copy=True)
        try:
            return {_NUMPY: value.dtype.name, "value": torch.from_numpy(array)}
        except TypeError:  # a dtype torch has none of (longdouble): check_loadable refuses it
            return value
    if isinstance(value, dict):
        return {k: _portable(v, moved) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v, moved) for v in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_portable(v, moved) for v in value)
    if isinstance(value, (set, frozenset)):  # (a NumPy scalar in it: as its number)
        return {v.item() if isinstance(v, np.generic) else _portable(v, moved) for v in value}
    return value


def restored(saved: Any) -> Any:
    """``saved`` (from :func:`portable`, through a checkpoint) with its marked NumPy values
    given back as NumPy values of their dtype.

    >>> restored(portable((np.float32(0.25), torch.ones(1))))
    (np.float32(0.25), tensor([1.]))
    """
    if isinstance(saved, dict):
        if set(saved) == {_NUMPY, "value"}:
            dtype, value = np.dtype(saved[_NUMPY]), saved["value"]
            if isinstance(value, torch.Tensor):
                return value.numpy().astype(dtype, copy=False)
            return dtype.type(value)
        return {k: restored(v) for k, v in saved.items()}
    if isinstance(saved, list):
        return [restored(v) for v in saved]
    if isinstance(saved, tuple):
        return tuple(restored(v) for v in saved)
    return saved


def _plain(value: Any) -> bool:
    if isinstance(value, (dict, list, tuple, set)):
        if type(value) not in (dict, list, tuple, set):
            return False  # a named tuple or a subclass: the weights-only load may refuse it
        items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
        return all(_plain(k) and _plain(v) for k, v in items)
    return isinstance(value, _PLAIN)


def check_loadable(owner: str, name: str, value: Any) -> None:
    """Raise ``ValueError`` if a checkpoint holding ``value`` (state ``name`` of ``owner``)
    could not be read back with ``torch.load(..., weights_only=True)``.

    Plain values pass at once; anything else is saved and read back once to see.

    Examples:
        >>> check_loadable("Sub", "seen", {"fc": torch.ones(2), "n": 3})
        >>> from collections import deque
        >>> check_loadable("Sub", "window", deque([1.0]))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: Sub's state 'window' holds a deque, which a trial's checkpoint cannot ...
    """
    if _plain(value):
        return
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
    except Exception as error:  # the weights-only unpickler's errors vary by type
        raise ValueError(
            f"{owner}'s state {name!r} holds a {type(value).__name__}, which a trial's "
            "checkpoint cannot read back (torch.load with weights_only=True refuses it: "
            f"{str(error).splitlines()[-1][:200]}); keep tensors, numbers, strings and plain "
            "lists, tuples and dicts in add_state values"
        ) from error
