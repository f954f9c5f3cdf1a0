"""A subscriber's declared state as a checkpoint can hold it, and back.

A trial's checkpoint is read with ``torch.load(..., weights_only=True)``, which takes tensors,
Python numbers, strings and the plain containers, and refuses the rest (a NumPy scalar among
them): a state it refuses would be lost at every restore. :func:`portable` turns NumPy values
into what it takes (a NumPy scalar into a Python number, an array into a tensor) and moves
tensors to the CPU; :func:`like` gives a restored value the NumPy type the subscriber holds
now; :func:`check_loadable` raises, when the state is saved, for anything else it would refuse.

Examples:
    >>> import numpy as np
    >>> saved = portable({"best": np.float64(0.5), "hist": np.arange(3)})
    >>> saved
    {'best': 0.5, 'hist': tensor([0, 1, 2])}
    >>> restored = like({"best": np.float64(0.0), "hist": np.zeros(3)}, saved)
    >>> type(restored["best"]).__name__, type(restored["hist"]).__name__
    ('float64', 'ndarray')
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

__all__ = ["check_loadable", "like", "portable"]

#: values that a weights-only load takes as they are (containers are walked)
_PLAIN = (torch.Tensor, int, float, complex, str, bytes, type(None), torch.dtype, torch.device)


def portable(value: Any) -> Any:
    """``value`` with tensors detached on the CPU, NumPy scalars as Python numbers and NumPy
    arrays (of numbers or booleans) as tensors, through dicts, lists, tuples and sets.

    >>> portable([np.int64(3), np.array([True, False])])
    [3, tensor([ True, False])]
    """
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.generic) and value.dtype.kind in "biufc":
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind in "biufc":
        return torch.from_numpy(np.array(value))  # a copy: the subscriber keeps its array
    if isinstance(value, dict):
        return type(value)((k, portable(v)) for k, v in value.items())
    if isinstance(value, (list, tuple, set)) and not hasattr(value, "_fields"):
        return type(value)(portable(v) for v in value)
    return value


def like(current: Any, saved: Any) -> Any:
    """``saved`` given the NumPy type of ``current`` where :func:`portable` took it away (a
    tensor for an array, a number for a NumPy scalar), through matching dicts and lists.

    >>> like([np.float32(0), torch.zeros(1)], [0.5, torch.ones(1)])  # a tensor stays one
    [np.float32(0.5), tensor([1.])]
    """
    if isinstance(current, np.ndarray) and isinstance(saved, torch.Tensor):
        return saved.numpy()
    if isinstance(current, np.generic) and isinstance(saved, (bool, int, float, complex)):
        return current.dtype.type(saved)
    if isinstance(current, dict) and isinstance(saved, dict):
        return type(saved)((k, like(current.get(k), v)) for k, v in saved.items())
    if isinstance(current, list) and isinstance(saved, list) and len(current) == len(saved):
        return [like(c, v) for c, v in zip(current, saved)]
    return saved


def _plain(value: Any) -> bool:
    if isinstance(value, (dict, list, tuple, set)):
        if hasattr(value, "_fields") or type(value) not in (dict, list, tuple, set):
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
