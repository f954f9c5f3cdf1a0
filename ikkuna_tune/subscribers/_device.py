"""Devices for subscribers that run the model themselves: checked when the subscriber is built.

A ``device=`` that this machine does not have (``'cuda'`` without CUDA, ``'cuda:3'`` on a
machine with two GPUs, ``'mps'`` off Apple silicon, a misspelt type) is rejected at once, not
when the first evaluation moves a batch there, an epoch into training.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["check_device", "device_of", "own_random_state"]

#: Device types whose availability and count torch reports through ``torch.<type>``.
_CHECKED_TYPES = ("cuda", "mps", "xpu")


def _available(device_type: str) -> tuple[bool, int | None]:
    """Whether ``device_type`` is available here, and how many devices of it (``None``:
    not reported)."""
    module = getattr(torch, device_type, None)
    is_available = getattr(module, "is_available", None)
    if device_type == "mps":
        is_available = torch.backends.mps.is_available
    if is_available is None or not is_available():
        return False, 0
    count = getattr(module, "device_count", None)
    return True, int(count()) if callable(count) else None


def check_device(device: object, name: str = "device") -> torch.device | None:
    """``device`` as a :class:`torch.device` (``None`` stays ``None``) if this machine has it.

    Anything :class:`torch.device` accepts is accepted (an integer is an index of the current
    accelerator); device types other than ``cuda``, ``mps`` and ``xpu`` are not checked further.

    Raises:
        ValueError: for something that is not a device or device string, an unknown device
            type, or a ``cuda``, ``mps`` or ``xpu`` device that is not available here (or whose
            index is not below the number of such devices).

    Examples:
        >>> check_device("cpu")
        device(type='cpu')
        >>> check_device("warp-drive")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: Expected `device` to be a torch.device, a device string ... got 'warp-drive'
    """
    if device is None:
        return None
    expected = (
        f"Expected `{name}` to be a torch.device, a device string such as 'cpu' or 'cuda:0', or "
        "an accelerator index"
    )
    if isinstance(device, bool) or not isinstance(device, (str, torch.device, int)):
        raise ValueError(f"{expected} but got {device!r}")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"{expected} but got {device!r}") from None
    if resolved.type not in _CHECKED_TYPES:
        return resolved
    available, count = _available(resolved.type)
    if not available:
        raise ValueError(
            f"Expected `{name}` to be a device this machine has but got {device!r}: "
            f"{resolved.type} is not available here"
        )
    if resolved.index is not None and count is not None and resolved.index >= count:
        raise ValueError(
            f"Expected `{name}` to be a device this machine has but got {device!r}: there "
            f"{'is' if count == 1 else 'are'} {count} {resolved.type} device"
            f"{'' if count == 1 else 's'} (indices 0 to {count - 1})"
        )
    return resolved


def device_of(model: nn.Module | None) -> torch.device | None:
    """The device of the model's first parameter (or buffer); ``None`` for none or no model.

    Examples:
        >>> device_of(nn.Linear(2, 2)), device_of(nn.ReLU()), device_of(None)
        (device(type='cpu'), None, None)
    """
    if model is None:
        return None
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return None


@contextlib.contextmanager
def own_random_state(device: torch.device | None) -> Iterator[None]:
    """Run the block on a copy of torch's random state (the CPU's, and ``device``'s if it is a
    GPU), so that what a subscriber draws while it runs the model (a DataLoader's seed, a
    stochastic layer's noise in eval mode) leaves the training run's random draws alone.

    Examples:
        >>> _ = torch.manual_seed(0); expected = torch.rand(1)
        >>> _ = torch.manual_seed(0)
        >>> with own_random_state(None):
        ...     _ = torch.rand(3)  # drawn from the copy
        >>> torch.equal(torch.rand(1), expected)
        True
    """
    devices = []
    if device is not None and device.type == "cuda":  # an index-less device: the current
        devices = [torch.cuda.current_device() if device.index is None else device.index]
    with torch.random.fork_rng(devices=devices):
        yield
