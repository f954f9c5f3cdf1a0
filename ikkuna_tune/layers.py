"""What the Exporter reads of a model: the layers it tracks, the tensor that stands for an
output, and hooks that copies drop. Which parameter is a layer's weight or bias, and which
optimizer steps it, is in :mod:`ikkuna_tune.parameters`.

Examples:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    >>> list(select_modules(model))
    ['0', '3']
    >>> first_tensor((torch.ones(2), "hidden state")).shape
    torch.Size([2])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ikkuna_tune.messages import NamedModule

__all__ = [
    "OUTPUT_KEYS",
    "CopySafeHook",
    "TraceableHook",
    "TrackedLayers",
    "at_path",
    "first_tensor",
    "for_evaluation",
    "hold_eval",
    "hold_own_eval",
    "layer_tensor",
    "output_tensor",
    "own_params",
    "select_modules",
    "shared_path",
    "tensor_path",
    "unowned_parameters",
    "unwrapped",
    "viewed_path",
    "wrappers",
]

#: Keys of a dict output, in order of preference, whose tensor is the output (else its first).
OUTPUT_KEYS = ("logits", "out")


def own_params(module: nn.Module) -> list[nn.Parameter]:
    """The parameters ``module`` holds itself, not those of its submodules.

    Examples:
        >>> from torch import nn
        >>> block = nn.Sequential(nn.Linear(2, 3))
        >>> own_params(block), [tuple(p.shape) for p in own_params(block[0])]
        ([], [(3, 2), (3,)])
    """
    return list(module.parameters(recurse=False))


def _children(module: nn.Module) -> list[nn.Module]:
    """``module``'s child modules, without the container of its parametrisations
    (``torch.nn.utils.parametrize``): a parametrised ``Linear`` is still a leaf layer."""
    if parametrize.is_parametrized(module):
        return [child for name, child in module.named_children() if name != "parametrizations"]
    return list(module.children())


def _holds_params(module: nn.Module) -> bool:
    """Whether ``module`` holds parameters itself, those of its parametrisations included."""
    if own_params(module):
        return True
    return parametrize.is_parametrized(module) and any(
        True for _ in module.parametrizations.parameters()
    )


def _no_hook(*args: Any, **kwargs: Any) -> None:
    """What a copy of a model or optimizer holds in place of an Exporter's hook: nothing."""


def _dropped_hook() -> Callable[..., None]:
    return _no_hook


class CopySafeHook(partial):  # type: ignore[type-arg]
    """A hook the Exporter registers: a ``functools.partial`` that does not survive copying and
    that ``torch.compile`` does not trace.

    ``copy.deepcopy``, ``pickle`` and ``torch.save`` of a model or optimizer copy its hook
    dicts; there, this becomes :func:`_no_hook`, so that a copy never reaches the Exporter, its
    bus or the bus's backends (a TensorBoard writer cannot be copied). The function runs under
    :func:`torch.compiler.disable`: in a compiled model it runs eagerly (a graph break), so that
    dynamo neither traces the Exporter's bookkeeping nor guards on its counters (which change
    every step and would recompile the model until dynamo's recompile limit).

    Examples:
        >>> import copy
        >>> from torch import nn
        >>> model, shapes = nn.Linear(2, 1), []
        >>> hook = CopySafeHook(lambda module, args, out: shapes.append(tuple(out.shape)))
        >>> _ = model.register_forward_hook(hook)
        >>> _ = model(torch.zeros(4, 2)); _ = copy.deepcopy(model)(torch.zeros(5, 2))
        >>> shapes  # the copy's hook did nothing
        [(4, 1)]
    """

    def __new__(cls, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> CopySafeHook:
        return super().__new__(cls, torch.compiler.disable(func), *args, **kwargs)

    def __reduce__(self) -> tuple[Callable[[], Callable[..., None]], tuple[()]]:
        return (_dropped_hook, ())

    def __deepcopy__(self, memo: dict[int, Any]) -> Callable[..., None]:
        return _no_hook


class TraceableHook(CopySafeHook):
    """A :class:`CopySafeHook` that ``torch.compile`` traces into the graph (no graph break),
    for a hook that reads no counter: a frozen layer's :func:`hold_eval`.

    Examples:
        >>> import copy
        >>> from torch import nn
        >>> model = nn.Linear(2, 1)
        >>> _ = model.register_forward_pre_hook(TraceableHook(hold_eval))
        >>> copy.deepcopy(model).train()(torch.zeros(1, 2)).shape  # the copy's hook: nothing
        torch.Size([1, 1])
    """

    def __new__(cls, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TraceableHook:
        return partial.__new__(cls, func, *args, **kwargs)


class TrackedLayers(dict):  # type: ignore[type-arg]
    """The tracked layers by name. Looking up the key of a repeated call (``'fc#2'``, see
    :class:`~ikkuna_tune.exporter.Exporter`) gives its :class:`NamedModule` too, so that a
    subscriber can resolve every key it receives, but such keys are not among the dict's keys.

    Examples:
        >>> from torch import nn
        >>> fc = NamedModule("fc", nn.Linear(2, 2))
        >>> layers = TrackedLayers({"fc": fc})
        >>> layers.repeats["fc#2"] = NamedModule("fc#2", fc.module)
        >>> layers["fc#2"], list(layers), "fc#2" in layers
        (NamedModule(name='fc#2'), ['fc'], False)
        >>> layers["fc#3"]
        Traceback (most recent call last):
        ...
        KeyError: 'fc#3'
    """

    def __init__(self, layers: dict[str, NamedModule]) -> None:
        super().__init__(layers)
        self.repeats: dict[str, NamedModule] = {}

    def __missing__(self, key: str) -> NamedModule:
        try:
            return self.repeats[key]
        except KeyError:
            raise KeyError(key) from None


def first_tensor(output: Any) -> torch.Tensor | None:
    """The tensor that stands for a module's output: the output itself if it is a tensor; for a
    tuple or list (an LSTM's ``(output, (h, c))``, a ``PackedSequence``) the first tensor found
    depth-first; for a dict the value of the first of :data:`OUTPUT_KEYS` present, else its first
    tensor found depth-first; None if there is none.

    Examples:
        >>> first_tensor((torch.ones(2), (torch.zeros(1), torch.zeros(1))))  # an LSTM's output
        tensor([1., 1.])
        >>> first_tensor({"aux": torch.zeros(1), "out": torch.ones(3)})
        tensor([1., 1., 1.])
        >>> first_tensor([None, {"h": torch.zeros(2)}]), first_tensor("no tensor")
        (tensor([0., 0.]), None)
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        for key in OUTPUT_KEYS:
            value = output.get(key)
            if isinstance(value, torch.Tensor):
                return value
        values: Iterable[Any] = output.values()
    elif isinstance(output, (tuple, list)):
        values = output
    else:
        return None
    for value in values:
        found = first_tensor(value)
        if found is not None:
            return found
    return None


def hold_eval(module: nn.Module, args: tuple[Any, ...]) -> None:
    """Forward pre-hook of a frozen layer: it and its submodules run in eval mode, so that
    ``model.train()`` cannot make a frozen BatchNorm update its running statistics (or a frozen
    dropout drop).

    Examples:
        >>> from torch import nn
        >>> block = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
        >>> handle = block.register_forward_pre_hook(hold_eval)
        >>> _ = block.train()(torch.ones(1, 2))
        >>> block.training, block[1].training  # the forward pass put them in eval mode
        (False, False)
        >>> handle.remove(); block.train()[1].training
        True
    """
    for submodule in module.modules():
        submodule.training = False


def hold_own_eval(module: nn.Module, args: tuple[Any, ...]) -> None:
    """Forward pre-hook of a module inside a frozen layer: it runs in eval mode even when the
    frozen layer itself is never called (a container such as ``nn.ModuleList``, whose modules
    the model calls one by one), so that :func:`hold_eval` on the layer never runs.

    Examples:
        >>> from torch import nn
        >>> blocks = nn.ModuleList([nn.BatchNorm1d(2)])
        >>> handle = blocks[0].register_forward_pre_hook(hold_own_eval)
        >>> _ = blocks.train()[0](torch.randn(4, 2))  # the list is never called
        >>> blocks[0].training, int(blocks[0].num_batches_tracked)
        (False, 0)
    """
    module.training = False


def wrappers(model: nn.Module) -> list[nn.Module]:
    """``model`` and the modules it wraps, outermost first, down to the user's model:
    ``torch.compile``'s wrapper holds it as ``_orig_mod``, ``DistributedDataParallel`` and
    ``DataParallel`` as ``module``, in any nesting.

    Examples:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> [type(m).__name__ for m in wrappers(torch.compile(nn.DataParallel(model)))]
        ['OptimizedModule', 'DataParallel', 'Sequential']
    """
    chain = [model]
    while True:
        inner = getattr(model, "_orig_mod", None)
        if type(model).__name__ == "OptimizedModule" and isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return chain
        chain.append(model)


def unwrapped(model: nn.Module) -> nn.Module:
    """The user's model inside the wrappers that run it (see :func:`wrappers`): its layers are
    named as the user names them (no ``_orig_mod.`` or ``module.``).

    Examples:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> unwrapped(torch.compile(model)) is model, unwrapped(nn.DataParallel(model)) is model
        (True, True)
        >>> unwrapped(model) is model
        True
    """
    return wrappers(model)[-1]


def for_evaluation(model: nn.Module) -> nn.Module:
    """The model a single process evaluates: ``model`` without its data-parallel wrappers.

    A forward pass through ``DistributedDataParallel`` is a collective (it may broadcast buffers
    from rank 0), so an evaluation that runs on one rank only (a probe, test accuracy) must call
    the wrapped module itself. Other models (compiled ones too) are returned as they are.

    Examples:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> for_evaluation(nn.DataParallel(model)) is model, for_evaluation(model) is model
        (True, True)
    """
    chain = wrappers(model)
    parallel = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return chain[-1] if any(isinstance(m, parallel) for m in chain) else model


def select_modules(
    model: nn.Module,
    depth: int | None = None,
    module_filter: type[nn.Module] | tuple[type[nn.Module], ...] | None = None,
) -> dict[str, nn.Module]:
    """Choose the layers an Exporter tracks, in registration order.

    By default: every leaf module that holds parameters. With ``depth=k``: the modules ``k``
    levels below the model (``'features.0'`` is at depth 2) that hold parameters, plus leaf modules
    with parameters above that depth. ``module_filter`` keeps only instances of the given
    class(es), subclasses included. A layer parametrised with ``torch.nn.utils.parametrize``
    (``parametrizations.weight_norm``, ``spectral_norm``, ``orthogonal``, ...) is a leaf that
    holds the parameters of its parametrisations; nothing inside its ``parametrizations``
    container is a layer. A TorchScript submodule (``torch.jit.script`` or ``trace``) takes no
    Python hooks: neither it nor anything inside it is a layer.

    Examples:
        >>> from torch import nn
        >>> features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
        >>> model = nn.ModuleDict({"features": features, "head": nn.Linear(2, 1)})
        >>> list(select_modules(model))
        ['features.0', 'features.1', 'head']
        >>> list(select_modules(model, depth=1))
        ['features', 'head']
        >>> list(select_modules(model, module_filter=nn.Conv2d))
        ['features.0']
        >>> _ = nn.utils.parametrizations.weight_norm(model["head"])
        >>> list(select_modules(model))  # 'head' is still a layer
        ['features.0', 'features.1', 'head']
    """
    chosen: dict[str, nn.Module] = {}
    inside: list[str] = []  # the containers of parametrisations: nothing in them is a layer
    for name, module in model.named_modules():
        if any(name == c or name.startswith(c + ".") for c in inside):
            continue
        if isinstance(module, torch.jit.ScriptModule):
            inside.append(name)  # TorchScript takes no Python hooks: no layer in or at it
            continue
        if parametrize.is_parametrized(module):
            inside.append(f"{name}.parametrizations" if name else "parametrizations")
        if not name and _children(model):
            continue  # the model itself is a layer only when it has no children
        level = 0 if not name else name.count(".") + 1
        is_leaf = not _children(module)
        if depth is None:
            take = is_leaf and _holds_params(module)
        else:
            has_params = any(True for _ in module.parameters())
            take = has_params and (level == depth or (is_leaf and level < depth))
        if take and module_filter is not None:
            take = isinstance(module, module_filter)
        if take:
            chosen[name] = module
    return chosen


def unowned_parameters(model: nn.Module, layers: Mapping[str, nn.Module]) -> dict[str, list[str]]:
    """The parameters that no layer holds itself, by the name of the module that holds them
    (``''`` for the model): those of a module with child modules, such as the ``in_proj_weight``
    of ``nn.MultiheadAttention`` or a class token set on the model. Parameters of a
    parametrisation belong to the layer it parametrises.

    Examples:
        >>> from torch import nn
        >>> block = nn.TransformerEncoderLayer(8, 2, 16)
        >>> unowned_parameters(block, select_modules(block))
        {'self_attn': ['in_proj_weight', 'in_proj_bias']}
        >>> model = nn.Sequential(nn.Linear(2, 2))
        >>> unowned_parameters(model, select_modules(model))
        {}
    """
    unowned: dict[str, list[str]] = {}
    inside: list[str] = []  # parametrisation containers: their parameters are a layer's
    chosen = {id(module) for module in layers.values()}
    for name, module in model.named_modules():
        if any(name == c or name.startswith(c + ".") for c in inside):
            continue
        if parametrize.is_parametrized(module):
            inside.append(f"{name}.parametrizations" if name else "parametrizations")
        if id(module) in chosen:
            continue
        if isinstance(module, torch.jit.ScriptModule):  # opaque: all it holds, by full name
            inside.append(name)
            held = [n for n, _ in module.named_parameters()]
            if held:
                unowned[name] = held
            continue
        held = [n for n, p in module._parameters.items() if p is not None]
        if held:
            unowned[name] = held
    return unowned


def _found_where(
    output: Any, match: Callable[[torch.Tensor], bool]
) -> tuple[tuple[Any, ...], torch.Tensor] | None:
    """The path (indices and keys) to the first tensor in ``output``, a tensor or a nest of
    tuples, lists and dicts, for which ``match`` holds (depth-first), and that tensor."""
    if isinstance(output, torch.Tensor):
        return ((), output) if match(output) else None
    if isinstance(output, Mapping):
        items: Iterable[tuple[Any, Any]] = output.items()
    elif isinstance(output, (tuple, list)):
        items = enumerate(output)
    else:
        return None
    for key, value in items:
        found = _found_where(value, match)
        if found is not None:
            return (key, *found[0]), found[1]
    return None


def tensor_path(output: Any, target: torch.Tensor) -> tuple[Any, ...] | None:
    """Where ``target`` (the very tensor, not an equal one) lies in ``output``, a nest of tuples,
    lists and dicts: the indices and keys that lead to it, depth-first, or None.

    Examples:
        >>> features, logits = torch.zeros(2, 4), torch.ones(2, 3)
        >>> tensor_path((features, {"logits": logits}), logits)
        (1, 'logits')
        >>> tensor_path((features, logits), logits.clone()) is None  # equal is not the same
        True
    """
    found = _found_where(output, lambda tensor: tensor is target)
    return None if found is None else found[0]


def view_root(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor that ``tensor`` is a view of, or ``tensor`` itself where it is no view.

    Examples:
        >>> logits = torch.ones(2, 3)
        >>> view_root(logits[:, :2]) is logits, view_root(logits) is logits
        (True, True)
    """
    return tensor._base if tensor._base is not None else tensor


def viewed_path(output: Any, target: torch.Tensor) -> tuple[Any, ...] | None:
    """Where in ``output`` (a tensor, or a nest of tuples, lists and dicts) lies the tensor
    that ``target`` is a view of with all its elements (``logits.squeeze(1)``, a transpose,
    ``logits.view(-1, classes)``): the path to it (depth-first, as :func:`tensor_path`), or
    None where ``target`` is no such view of any (a part, or computed).

    Examples:
        >>> features, logits = torch.zeros(2, 4), torch.ones(2, 1, 3)
        >>> viewed_path((features, logits), logits.squeeze(1))
        (1,)
        >>> viewed_path((features, logits), logits[:, :, :2]) is None  # a part only
        True
    """
    root = view_root(target)
    found = _found_where(
        output,
        lambda tensor: (
            view_root(tensor) is root
            and tensor.numel() == target.numel()
            and tensor.storage_offset() == target.storage_offset()
        ),
    )
    return None if found is None else found[0]


def shared_path(output: Any, target: torch.Tensor) -> tuple[Any, ...] | None:
    """Where in ``output`` lies the first tensor (depth-first) that ``target`` shares its
    storage with as a view of the same tensor (a part of it, ``logits[:, :3]``), or None.

    Examples:
        >>> features, logits = torch.zeros(2, 4), torch.ones(2, 5)
        >>> shared_path((features, logits), logits[:, :3])
        (1,)
        >>> shared_path((features, logits), logits * 2) is None  # computed, no view
        True
    """
    root = view_root(target)
    found = _found_where(output, lambda tensor: view_root(tensor) is root)
    return None if found is None else found[0]


def view_roots(output: Any) -> list[torch.Tensor]:
    """The tensors that the tensors of ``output`` (a tensor, or a nest of tuples, lists and
    dicts) are views of (each itself where it is no view), depth-first.

    Examples:
        >>> logits = torch.ones(2, 3)
        >>> [t is logits for t in view_roots((torch.zeros(1), {"x": logits[:, :2]}))]
        [False, True]
    """
    roots: list[torch.Tensor] = []
    _found_where(output, lambda tensor: roots.append(view_root(tensor)) and False)
    return roots


def at_path(output: Any, path: tuple[Any, ...]) -> torch.Tensor | None:
    """The tensor that :func:`tensor_path` ``path`` leads to in ``output``, or None where
    ``output`` has no tensor there (another structure).

    Examples:
        >>> at_path((torch.zeros(1), [torch.ones(2)]), (1, 0))
        tensor([1., 1.])
        >>> at_path((torch.zeros(1),), (1, 0)) is None
        True
    """
    for key in path:
        if not isinstance(output, (Mapping, tuple, list)):
            return None  # (indexing a tensor would give one of its rows)
        try:
            output = output[key]
        except (KeyError, IndexError, TypeError):
            return None
    return output if isinstance(output, torch.Tensor) else None


def output_tensor(
    model: nn.Module,
    output: Any,
    output_fn: Callable[[Any], torch.Tensor] | None = None,
    path: tuple[Any, ...] | None = None,
) -> torch.Tensor:
    """The tensor that stands for ``model``'s ``output`` (what ``network_output`` carries):
    ``output_fn(output)`` if one was given, else the tensor at ``path`` (:func:`tensor_path`:
    the element a wrapped loss scored), if there is one there, else :func:`first_tensor`.

    Raises:
        ValueError: if there is no tensor (or ``output_fn`` returns something else).

    Examples:
        >>> from torch import nn
        >>> output_tensor(nn.Identity(), {"aux": 1, "logits": torch.zeros(2)}).shape
        torch.Size([2])
    """
    if output_fn is not None:
        tensor = output_fn(output)
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(
                f"Expected `output_fn` to return a tensor for the output of "
                f"{type(model).__name__} but got {type(tensor).__name__}"
            )
        return tensor
    tensor = at_path(output, path) if path else None
    if tensor is None:
        tensor = first_tensor(output)
    if tensor is None:
        raise ValueError(
            f"{type(model).__name__} returned a {type(output).__name__} with no tensor "
            "in it, so there is no network_output to publish; pass "
            "Exporter(..., output_fn=...) to say which tensor is the output"
        )
    return tensor


def layer_tensor(named: NamedModule, output: Any) -> torch.Tensor:
    """The tensor that stands for layer ``named``'s ``output`` (its ``activations``).

    Raises:
        ValueError: if there is no tensor in ``output``.

    Examples:
        >>> from torch import nn
        >>> lstm = NamedModule("lstm", nn.LSTM(2, 3, batch_first=True))
        >>> output = lstm.module(torch.zeros(1, 5, 2))  # (sequence, (h, c))
        >>> layer_tensor(lstm, output).shape
        torch.Size([1, 5, 3])
        >>> layer_tensor(lstm, (None, "no tensor"))
        Traceback (most recent call last):
        ...
        ValueError: Layer 'lstm' (LSTM) returned a tuple with no tensor in it, ...
    """
    tensor = first_tensor(output)
    if tensor is None:
        raise ValueError(
            f"Layer {named.name!r} ({type(named.module).__name__}) returned a "
            f"{type(output).__name__} with no tensor in it, so it has no activations to "
            "publish; track other layers (depth=, module_filter=)"
        )
    return tensor
