"""The order in which data flows through the tracked layers, and what trains upstream of them.

The order the model registers its layers in is not always the order its forward pass calls
them (``self.head`` defined before ``self.body``), and freezing must go from the input side:
only a frozen prefix of the data flow no longer changes and saves backward computation. A
:class:`FlowRecorder` watches one forward pass (a probe's, in eval mode without gradients)
with forward pre-hooks and records :class:`LayerFlow`: the tracked layers in the order they
were first entered, and for each the untracked modules holding parameters of their own that
were entered before it (a BatchNorm left out by ``module_filter``, or a parent's
``nn.Parameter`` such as a position embedding). While such a module trains, the layers after
it keep changing even when frozen, so they are no frozen prefix.

A parent module's own parameters are taken as upstream of every layer inside it (where its
``forward`` uses them cannot be seen from its modules' calls): conservative, it can only keep a
layer trainable.

Examples:
    >>> import torch
    >>> from torch import nn
    >>> from ikkuna_tune.messages import NamedModule
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.head = nn.Linear(4, 2)  # registered first, called last
    ...         self.norm = nn.BatchNorm1d(3)  # not tracked below
    ...         self.body = nn.Linear(3, 4)
    ...     def forward(self, x):
    ...         return self.head(self.body(self.norm(x)))
    >>> net = Net()
    >>> tracked = {n: NamedModule(n, getattr(net, n)) for n in ("head", "body")}
    >>> with FlowRecorder(net, tracked) as recorder:
    ...     _ = net(torch.randn(5, 3))
    >>> flow = recorder.flow()
    >>> flow.order, flow.upstream
    (('body', 'head'), {'body': ('norm',), 'head': ('norm',)})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from ikkuna_tune.messages import NamedModule

__all__ = ["FlowRecorder", "LayerFlow", "compiled"]


@dataclass(frozen=True)
class LayerFlow:
    """What one forward pass showed of the data flow (see the module docstring).

    ``order``: the tracked layers in the order first entered (layers not entered are not in
    it); ``upstream``: per entered layer, the untracked modules with parameters of their own
    entered before it, by name in the model.

    Examples:
        >>> flow = LayerFlow(order=("body", "head"), upstream={"body": (), "head": ("norm",)})
        >>> flow.ordered(["head", "body"]), flow.upstream["head"]
        (['body', 'head'], ('norm',))
    """

    order: tuple[str, ...] = ()
    upstream: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain lists and dicts of names (a checkpoint's ``weights_only`` load takes them).

        >>> flow = LayerFlow(("a", "b"), {"a": (), "b": ("norm",)})
        >>> LayerFlow.from_dict(flow.as_dict()) == flow
        True
        """
        return {
            "order": list(self.order),
            "upstream": {name: list(names) for name, names in self.upstream.items()},
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> LayerFlow:
        """The flow :meth:`as_dict` gave."""
        upstream = {str(k): tuple(map(str, v)) for k, v in dict(state.get("upstream", {})).items()}
        return cls(tuple(map(str, state.get("order", ()))), upstream)

    def ordered(self, names: list[str]) -> list[str]:
        """``names`` (in registration order) in this flow's order; each one it did not see
        stays right after the name registered before it (a layer whose weight its parent reads
        directly, ``wpe.weight``, keeps its place, and freezing, which needs its similarity,
        stops there as before), one registered first stays first.

        >>> LayerFlow(order=("c", "a")).ordered(["a", "b", "c", "d"])
        ['c', 'd', 'a', 'b']
        >>> LayerFlow(order=("b",)).ordered(["a", "b"])
        ['a', 'b']
        """
        result = [n for n in self.order if n in names]
        placed = set(result)
        for index, name in enumerate(names):
            if name in placed:
                continue
            before = next((n for n in reversed(names[:index]) if n in placed), None)
            result.insert(0 if before is None else result.index(before) + 1, name)
            placed.add(name)
        return result


def compiled(model: nn.Module) -> bool:
    """Whether ``torch.compile`` runs ``model`` or one of its modules (hooks added to a compiled
    module would make it recompile, so the flow is not recorded there).

    >>> compiled(nn.Linear(2, 2))
    False
    """
    if type(model).__name__ == "OptimizedModule":
        return True
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


class _ParameterUses(TorchFunctionMode):
    """Calls ``note(owner)`` when a torch function takes a watched parameter (``owners``: the
    owning module's key by parameter ``id``) as an argument, or in a list or tuple of them."""

    def __init__(self, owners: dict[int, int], note: Callable[[int], None]) -> None:
        super().__init__()
        self._owners = owners
        self._note = note

    def _look(self, value: Any) -> None:
        owner = self._owners.get(id(value))
        if owner is not None:
            self._note(owner)
        elif isinstance(value, (list, tuple)):
            for item in value:
                owner = self._owners.get(id(item))
                if owner is not None:
                    self._note(owner)

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if self._owners:
            for value in (*args, *kwargs.values()):
                self._look(value)
        return func(*args, **kwargs)


class FlowRecorder:
    """Watches one forward pass and records a :class:`LayerFlow` while in a ``with`` block.

    Forward pre-hooks go on the tracked layers of ``layers`` (inside ``model``) and on the
    other modules that hold parameters of their own and are neither inside a tracked layer nor
    around one; ``model``'s own pre-hook counts its calls, the second ending the first pass.
    The parameters of every such other module are also watched as they are used (a
    ``TorchFunctionMode``): a parent's ``nn.Parameter`` (a position embedding, a layer scale),
    an ``nn.ParameterList`` or an embedding whose weight its parent reads directly acts where
    the pass first uses it. What acts before a layer's last call in the first pass is upstream
    of it (``fc -> norm -> fc``: ``norm`` feeds ``fc``'s second call); a module whose
    parameters the pass never used (a branch run in training only) is upstream of nothing the
    probe measures. When ``model`` is not called (a probe that runs parts of it), what acts
    before a layer's first call is upstream of it.

    Examples:
        >>> import torch
        >>> model = nn.Sequential(nn.LayerNorm(2), nn.Linear(2, 2))
        >>> with FlowRecorder(model, {"1": NamedModule("1", model[1])}) as recorder:
        ...     _ = model(torch.ones(1, 2))
        >>> recorder.flow().upstream  # the untracked LayerNorm runs before the Linear
        {'1': ('0',)}
    """

    def __init__(self, model: nn.Module, layers: Mapping[str, NamedModule]) -> None:
        self._layers = {id(named.module): name for name, named in layers.items()}
        named_modules = dict(model.named_modules())
        inside: set[int] = set()
        around: set[int] = set()  # the modules that hold a tracked layer
        for name, named in layers.items():
            inside.update(id(m) for m in named.module.modules())
            parts = name.split(".") if name else []
            for depth in range(len(parts)):
                parent = named_modules.get(".".join(parts[:depth]))
                if parent is not None:
                    around.add(id(parent))
        owning = {
            name: module
            for name, module in named_modules.items()
            if id(module) not in inside and next(module.parameters(recurse=False), None) is not None
        }
        self._others = {id(module): name or "(the model)" for name, module in owning.items()}
        self._owners = {
            id(p): id(module)
            for module in owning.values()
            for p in module.parameters(recurse=False)
        }
        self._root = model
        self._modules = [
            m
            for m in model.modules()
            if id(m) in self._layers or (id(m) in self._others and id(m) not in around)
        ]
        self._events: list[int] = []  # what acted, in order (first pass only)
        self._passes = 0  # calls of the model itself
        self._handles: list[RemovableHandle] = []
        self._mode: _ParameterUses | None = None

    def _note(self, key: int) -> None:
        if self._passes <= 1:
            self._events.append(key)

    def __enter__(self) -> FlowRecorder:
        def entered(module: nn.Module, _args: Any) -> None:
            self._note(id(module))

        def counted(_module: nn.Module, _args: Any) -> None:
            self._passes += 1
            if self._passes > 1 and self._mode is not None:
                self._mode._owners = {}  # the first pass is over: nothing more to watch

        self._handles = [self._root.register_forward_pre_hook(counted, prepend=True)]
        self._handles += [m.register_forward_pre_hook(entered) for m in self._modules]
        self._mode = _ParameterUses(self._owners, self._note)
        self._mode.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._mode is not None:
            self._mode.__exit__(kind, error, trace)
            self._mode = None
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def flow(self) -> LayerFlow:
        """The flow recorded so far."""
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        for index, key in enumerate(self._events):
            first.setdefault(key, index)
            last[key] = index
        reach = last if self._passes else first  # the end of the layer's part of the pass
        others = sorted((i, self._others[k]) for k, i in first.items() if k in self._others)
        order: list[str] = []
        upstream: dict[str, tuple[str, ...]] = {}
        for key in sorted(first, key=first.__getitem__):
            if key in self._layers:
                name = self._layers[key]
                order.append(name)
                upstream[name] = tuple(n for i, n in others if i < reach[key])
        return LayerFlow(tuple(order), upstream)
