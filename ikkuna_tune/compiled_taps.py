"""What a layer's hook does while ``torch.compile`` traces it: record, never break the graph.

In an eager model the Exporter's per-layer hook publishes activations as they come and registers
a gradient hook on each output. Under ``torch.compile`` that hook would have to run eagerly (a
graph break at every tracked layer), and then freezing a layer recompiles two pieces: the one
holding the layer (its parameters stop requiring gradients) and the next one (its input does).
Traced instead, the hook only appends ``(layer, output)`` to a list, a side effect dynamo replays
after the graph ran, and the Exporter publishes the list when the model's forward pass ends. The
whole model stays one graph, so a freeze changes the guards of that one graph: one
recompilation.

Gradients with respect to a layer's output (``layer_gradients``) cannot be read from inside one
graph with a tensor hook (dynamo breaks the graph for a hook with side effects). They pass
through :func:`tap_gradient`, an identity whose backward calls the custom operator
``ikkuna_tune::tap_gradient``: opaque to the compiler, it runs at the backward pass's time with
the real gradient and hands it to the Exporter that tapped it (a receiver, by number).
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["TracedLayerHook", "add_receiver", "remove_receiver", "tap_gradient"]

#: Receivers by number: ``receiver(position, gradient)``, held weakly (an Exporter that is
#: dropped without ``close`` is not kept alive by its taps).
_RECEIVERS: dict[int, weakref.WeakMethod[Callable[[int, torch.Tensor], None]]] = {}
_NUMBERS = itertools.count(1)


def add_receiver(receiver: Callable[[int, torch.Tensor], None]) -> int:
    """Register a bound method to receive tapped gradients; returns its number.

    Examples:
        >>> class Sink:
        ...     def take(self, position, grad): ...
        >>> sink = Sink()
        >>> number = add_receiver(sink.take)
        >>> number in _RECEIVERS, _RECEIVERS[number]() == sink.take
        (True, True)
        >>> remove_receiver(number); number in _RECEIVERS
        False
    """
    number = next(_NUMBERS)
    _RECEIVERS[number] = weakref.WeakMethod(receiver)  # type: ignore[arg-type]
    return number


def remove_receiver(number: int) -> None:
    """Stop handing gradients to receiver ``number`` (its taps then pass gradients through).

    Examples:
        >>> x = torch.ones(2, requires_grad=True)
        >>> remove_receiver(10**9)  # unknown numbers are ignored
        >>> tap_gradient(x, 10**9, 0).sum().backward(); x.grad  # no receiver: passes through
        tensor([1., 1.])
    """
    _RECEIVERS.pop(number, None)


@torch.library.custom_op("ikkuna_tune::tap_gradient", mutates_args=())
def _tap_gradient_op(grad: torch.Tensor, receiver: int, position: int) -> torch.Tensor:
    found = _RECEIVERS.get(receiver)
    method = found() if found is not None else None
    if method is not None:
        method(position, grad)
    # a custom operator may not return its input: the gradient passes on as a copy
    return grad.clone()


@_tap_gradient_op.register_fake
def _(grad: torch.Tensor, receiver: int, position: int) -> torch.Tensor:
    return torch.empty_like(grad)


class _GradientTap(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, receiver: int, position: int) -> torch.Tensor:
        ctx.receiver, ctx.position = receiver, position
        # a copy, not a view: a view that is the graph's output is replayed outside the graph,
        # without this backward
        return tensor.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return _tap_gradient_op(grad, ctx.receiver, ctx.position), None, None


def tap_gradient(tensor: torch.Tensor, receiver: int, position: int) -> torch.Tensor:
    """A copy of ``tensor`` in the forward pass; in the backward pass the gradient with respect to
    it is handed to receiver ``receiver`` as ``(position, gradient)`` on its way through.

    Examples:
        >>> got = {}
        >>> class Sink:
        ...     def take(self, position, grad):
        ...         got[position] = grad.clone()
        >>> sink = Sink()
        >>> number = add_receiver(sink.take)
        >>> x = torch.ones(3, requires_grad=True)
        >>> (tap_gradient(x * 2, number, 7) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
        >>> got[7], x.grad
        (tensor([1., 2., 3.]), tensor([2., 4., 6.]))
        >>> remove_receiver(number)
    """
    return _GradientTap.apply(tensor, receiver, position)


def _no_hook(*args: Any, **kwargs: Any) -> None:
    """What a copy of a model holds in place of a :class:`TracedLayerHook`: nothing."""


def _dropped_hook() -> Callable[..., None]:
    return _no_hook


class TracedLayerHook:
    """A layer's forward hook with two faces: ``eager(module, args, output)`` when the model
    runs eagerly, ``traced(output)`` (which may return a replacement output) while
    ``torch.compile`` traces it. Like :class:`~ikkuna_tune.layers.CopySafeHook`, a copy of the
    model (``copy.deepcopy``, ``pickle``) holds a hook that does nothing.

    Examples:
        >>> import copy
        >>> from torch import nn
        >>> seen = []
        >>> hook = TracedLayerHook(lambda m, a, out: seen.append(tuple(out.shape)), lambda out: out)
        >>> layer = nn.Linear(2, 3)
        >>> _ = layer.register_forward_hook(hook)
        >>> _ = layer(torch.zeros(4, 2)); _ = copy.deepcopy(layer)(torch.zeros(5, 2))
        >>> seen  # eager: the first face; the copy's hook did nothing
        [(4, 3)]
    """

    def __init__(self, eager: Callable[..., None], traced: Callable[[Any], Any]) -> None:
        self.eager = eager
        self.traced = traced

    def __call__(self, module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if torch.compiler.is_compiling():
            return self.traced(output)
        self.eager(module, args, output)
        return None

    def __reduce__(self) -> tuple[Callable[[], Callable[..., None]], tuple[()]]:
        return (_dropped_hook, ())

    def __deepcopy__(self, memo: dict[int, Any]) -> Callable[..., None]:
        return _no_hook
