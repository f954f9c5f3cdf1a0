"""The order in which data flows through the tracked layers, and what trains upstream of them.

The order the model registers its layers in is not always the order its forward pass calls
them (``self.head`` defined before ``self.body``), and freezing must go from the input side:
only a frozen prefix of the data flow no longer changes and saves backward computation. A
:class:`FlowRecorder` watches one forward pass (a probe's, in eval mode without gradients)
with forward pre-hooks and records :class:`LayerFlow`: the tracked layers in the order they
were first entered, and for each the untracked modules holding parameters of their own that
were entered before it (a BatchNorm left out by ``module_filter``, or a parent's
``nn.Parameter`` such as a position embedding), or that keep running statistics (a BatchNorm
with ``affine=False``, which holds no parameter and is no layer). While such a module trains,
or updates its statistics, the layers after it keep changing even when frozen, so they are no
frozen prefix.

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

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ikkuna_tune.messages import NamedModule

__all__ = [
    "FLOW_VERSION",
    "FlowRecorder",
    "LayerFlow",
    "compiled",
    "holds_state",
    "keeps_running_stats",
]

#: How :meth:`LayerFlow.as_dict` records what is upstream: 3 counts a module the pass never
#: entered, tracked layers too, as upstream of every layer but an attention module's out_proj;
#: 4 counts modules that keep running statistics without parameters (a BatchNorm with
#: ``affine=False``) too (an older checkpoint's flow left some out, or placed them after layers
#: they feed: it is recorded again, and until then nothing is frozen automatically).
FLOW_VERSION = 4


def keeps_running_stats(module: nn.Module) -> bool:
    """Whether ``module`` updates running statistics of its inputs in training mode (a
    BatchNorm or an InstanceNorm with ``track_running_stats``): state that changes, and changes
    what it computes in eval mode, without any parameter of it training.

    Examples:
        >>> keeps_running_stats(nn.BatchNorm1d(3, affine=False)), keeps_running_stats(nn.ReLU())
        (True, False)
        >>> keeps_running_stats(nn.BatchNorm1d(3, track_running_stats=False))
        False
    """
    return (
        isinstance(module, nn.modules.batchnorm._NormBase)
        and bool(module.track_running_stats)
        and module.running_mean is not None
    )


def holds_state(module: nn.Module) -> bool:
    """Whether ``module`` holds parameters of its own, or keeps running statistics
    (:func:`keeps_running_stats`): what can keep changing the layers after it.

    Examples:
        >>> holds_state(nn.LayerNorm(3)), holds_state(nn.BatchNorm1d(3, affine=False))
        (True, True)
        >>> holds_state(nn.Sequential(nn.Linear(2, 2)))  # its layer's, not its own
        False
    """
    return next(module.parameters(recurse=False), None) is not None or keeps_running_stats(module)


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
            "version": FLOW_VERSION,
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
    return any(
        type(m).__name__ == "OptimizedModule"  # torch.compile(module), the model or a child
        or getattr(m, "_compiled_call_impl", None) is not None  # module.compile()
        for m in model.modules()
    )


class FlowRecorder:
    """Forward pre-hooks that record a :class:`LayerFlow` while in a ``with`` block.

    Hooks go on the tracked layers of ``layers`` (inside ``model``), on every other module of
    ``model`` that holds parameters of its own and is not inside a tracked layer, and on
    ``model`` itself, whose second call ends the first forward pass: what runs before a
    layer's last call in that pass is upstream of it (``fc -> norm -> fc``: ``norm`` feeds
    ``fc``'s second call). When ``model`` is not called (a probe that runs parts of it), what
    runs before a layer's first call is. A module with parameters of its own that the pass
    never entered (an ``nn.ParameterList`` or an embedding whose weight its parent reads
    directly, a branch run in training only, a ``ScriptModule``, which takes no hooks), and a
    tracked layer it never entered, is upstream of every layer: where it acts cannot be seen
    from module calls, so it is taken conservatively, as a parent's own parameters are (the
    pass is not watched in any way that could change what it computes). The one exception is
    known to act where it is held: the ``out_proj`` of an ``nn.MultiheadAttention`` the pass
    entered, whose forward reads that weight, counts as upstream of the layers inside and after
    the attention module.

    Examples:
        >>> import torch
        >>> model = nn.Sequential(nn.LayerNorm(2), nn.Linear(2, 2))
        >>> with FlowRecorder(model, {"1": NamedModule("1", model[1])}) as recorder:
        ...     _ = model(torch.ones(1, 2))
        >>> recorder.flow().upstream, recorder.whole_pass  # the LayerNorm runs before
        ({'1': ('0',)}, True)
    """

    def __init__(self, model: nn.Module, layers: Mapping[str, NamedModule]) -> None:
        self._layers = {id(named.module): name for name, named in layers.items()}
        inside: set[int] = set()
        for named in layers.values():
            inside.update(id(m) for m in named.module.modules())
        self._others = {
            id(module): name or "(the model)"
            for name, module in model.named_modules()
            if id(module) not in inside and holds_state(module)
        }
        self._root = model
        self._modules = [
            m for m in model.modules() if id(m) in self._layers or id(m) in self._others
        ]
        # the modules holding each module (one per place it is registered)
        self._parents: dict[int, list[nn.Module]] = {}
        for module in model.modules():
            for _, child in module.named_children():
                self._parents.setdefault(id(child), []).append(module)
        self._events: list[int] = []  # the hooked modules' calls, in order (first pass only)
        self._passes = 0  # calls of the model itself
        self._handles: list[RemovableHandle] = []

    @property
    def whole_pass(self) -> bool:
        """Whether the model itself was called (not only parts of it)."""
        return self._passes > 0

    def __enter__(self) -> FlowRecorder:
        events = self._events

        def entered(module: nn.Module, _args: Any) -> None:
            if self._passes <= 1:
                events.append(id(module))

        def counted(_module: nn.Module, _args: Any) -> None:
            self._passes += 1

        try:
            for module, hook in [(self._root, counted), *((m, entered) for m in self._modules)]:
                if isinstance(module, torch.jit.ScriptModule):
                    continue  # takes no hooks: never entered, so upstream of every layer
                self._handles.append(module.register_forward_pre_hook(hook, prepend=True))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
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
        # what the pass never entered, tracked layers too (a branch run in training only,
        # registered after the layers it feeds; a weight another module reads): upstream of
        # every layer, but for the out_proj of an nn.MultiheadAttention the pass ran, which
        # that module reads in its own call (upstream of the layers inside and after it)
        names = {**self._others, **self._layers}
        placed: list[tuple[int, str]] = []
        for module in self._modules:
            if id(module) not in first:
                placed.append((self._read_at(id(module), first), names[id(module)]))
        order: list[str] = []
        upstream: dict[str, tuple[str, ...]] = {}
        for key in sorted(first, key=first.__getitem__):
            if key in self._layers:
                name = self._layers[key]
                order.append(name)
                upstream[name] = (
                    *(n for i, n in others if i < reach[key]),
                    *(n for i, n in placed if i < reach[key]),
                )
        return LayerFlow(tuple(order), upstream)

    def _read_at(self, key: int, first: Mapping[int, int]) -> int:
        """Where in the pass a module the pass never entered acts: at its parent's first call
        when it is the ``out_proj`` of an ``nn.MultiheadAttention`` (held there only) that the
        pass entered, whose forward reads its weight; else unknown: -1, before everything."""
        parents = self._parents.get(key, [])
        if len(parents) == 1 and isinstance(parents[0], nn.MultiheadAttention):
            parent = parents[0]
            if getattr(parent, "out_proj", None) is not None and id(parent.out_proj) == key:
                return first.get(id(parent), -1)
        return -1
