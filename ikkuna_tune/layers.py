"""What the Exporter reads of a model: the layers it tracks, each layer's weight and bias and the
optimizer that steps them, the tensor that stands for an output, and hooks that copies drop.

Examples:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    >>> list(select_modules(model))
    ['0', '3']
    >>> parameter_roles(nn.LayerNorm(4))
    ({'weight': 'weight', 'bias': 'bias'}, [])
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from ikkuna_tune.messages import NamedModule

__all__ = [
    "OUTPUT_KEYS",
    "ROLES",
    "CopySafeHook",
    "TrackedLayers",
    "assign_parameters",
    "check_optimizers",
    "first_tensor",
    "hold_eval",
    "layer_tensor",
    "output_tensor",
    "own_params",
    "parameter_roles",
    "select_modules",
    "tensor_attr",
]

logger = logging.getLogger(__name__)

#: The roles a layer's parameter may have.
ROLES = ("weight", "bias")
#: Keys of a dict output, in order of preference, whose tensor is the output (else its first).
OUTPUT_KEYS = ("logits", "out")
#: ``(layer name, layer, attribute)``: where one role's tensor of one layer is found.
Entry = tuple[str, NamedModule, str]


def own_params(module: nn.Module) -> list[nn.Parameter]:
    """The parameters ``module`` holds itself, not those of its submodules.

    Examples:
        >>> from torch import nn
        >>> block = nn.Sequential(nn.Linear(2, 3))
        >>> own_params(block), [tuple(p.shape) for p in own_params(block[0])]
        ([], [(3, 2), (3,)])
    """
    return list(module.parameters(recurse=False))


def _no_hook(*args: Any, **kwargs: Any) -> None:
    """What a copy of a model or optimizer holds in place of an Exporter's hook: nothing."""


def _dropped_hook() -> Callable[..., None]:
    return _no_hook


class CopySafeHook(partial):  # type: ignore[type-arg]
    """A hook the Exporter registers: a ``functools.partial`` (called as fast) that does not
    survive copying. ``copy.deepcopy``, ``pickle`` and ``torch.save`` of a model or optimizer
    copy its hook dicts; there, this becomes :func:`_no_hook`, so that a copy never reaches the
    Exporter, its bus or the bus's backends (a TensorBoard writer cannot be copied).

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

    def __reduce__(self) -> tuple[Callable[[], Callable[..., None]], tuple[()]]:
        return (_dropped_hook, ())

    def __deepcopy__(self, memo: dict[int, Any]) -> Callable[..., None]:
        return _no_hook


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


def _is_bias_name(name: str) -> bool:
    return name == "bias" or name.startswith("bias_") or name.endswith("_bias")


def parameter_roles(module: nn.Module) -> tuple[dict[str, str], list[str]]:
    """Which attribute of ``module`` is its weight and which its bias, and the names of its own
    parameters that are neither.

    ``weight``/``bias`` if the module has them (a parameter or a computed tensor attribute);
    otherwise its only own parameter not named like a bias is the weight (a ``scale``) and its
    only one named like a bias (``bias``, ``bias_*``, ``*_bias``) the bias. With several
    candidates (an LSTM's ``weight_ih_l0``, ``weight_hh_l0``, ...) a role stays empty.

    Examples:
        >>> from torch import nn
        >>> layer = nn.Module()
        >>> layer.scale = nn.Parameter(torch.ones(3))
        >>> layer.shift_bias = nn.Parameter(torch.zeros(3))
        >>> parameter_roles(layer)
        ({'weight': 'scale', 'bias': 'shift_bias'}, [])
        >>> parameter_roles(nn.LSTM(2, 3))
        ({}, ['weight_ih_l0', 'weight_hh_l0', 'bias_ih_l0', 'bias_hh_l0'])
    """
    own = list(module._parameters)
    roles: dict[str, str] = {}
    for role in ROLES:
        if tensor_attr(module, role) is not None:
            roles[role] = role
    free = [n for n in own if n not in roles.values() and module._parameters[n] is not None]
    if "weight" not in roles:
        candidates = [n for n in free if not _is_bias_name(n)]
        if len(candidates) == 1:
            roles["weight"] = candidates[0]
    if "bias" not in roles:
        candidates = [n for n in free if _is_bias_name(n) and n != roles.get("weight")]
        if len(candidates) == 1:
            roles["bias"] = candidates[0]
    left = [n for n in free if n not in roles.values()]
    return roles, left


def tensor_attr(module: nn.Module, attr: str) -> torch.Tensor | None:
    """``module.<attr>`` if it is a tensor, else None; a parameter is found without
    ``nn.Module.__getattr__`` (this runs for every layer on every step).

    Examples:
        >>> from torch import nn
        >>> tensor_attr(nn.Linear(2, 3), "weight").shape
        torch.Size([3, 2])
        >>> tensor_attr(nn.BatchNorm1d(2), "running_mean")  # a buffer
        tensor([0., 0.])
        >>> tensor_attr(nn.Linear(2, 3, bias=False), "bias"), tensor_attr(nn.LSTM(2, 3), "bias")
        (None, None)
    """
    value = module._parameters.get(attr)
    if value is None:
        value = getattr(module, attr, None)
    return value if isinstance(value, torch.Tensor) else None


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


def check_optimizers(optimizer: object) -> tuple[torch.optim.Optimizer, ...]:
    """``optimizer`` (one, a sequence of them, or None) as a tuple of distinct optimizers.

    Examples:
        >>> from torch import nn
        >>> sgd = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1)
        >>> check_optimizers(None), check_optimizers(sgd) == (sgd,)
        ((), True)
        >>> check_optimizers([sgd, sgd])
        Traceback (most recent call last):
        ...
        ValueError: Expected distinct optimizers but got the same optimizer twice in ['SGD', 'SGD']
    """
    expected = "Expected `optimizer` to be a torch.optim.Optimizer, a sequence of them or None"
    if optimizer is None:
        return ()
    if isinstance(optimizer, torch.optim.Optimizer):
        return (optimizer,)
    if isinstance(optimizer, (str, bytes)) or not isinstance(optimizer, Sequence):
        raise ValueError(f"{expected} but got {type(optimizer).__name__}")
    optimizers = tuple(optimizer)
    if not optimizers:
        raise ValueError(
            f"Expected `optimizer` to hold at least one optimizer but got an empty "
            f"{type(optimizer).__name__}"
        )
    for item in optimizers:
        if not isinstance(item, torch.optim.Optimizer):
            raise ValueError(f"{expected} but got a {type(optimizer).__name__} holding {item!r}")
    if len({id(o) for o in optimizers}) != len(optimizers):
        raise ValueError(
            "Expected distinct optimizers but got the same optimizer twice in "
            f"{[type(o).__name__ for o in optimizers]}"
        )
    return optimizers


def select_modules(
    model: nn.Module,
    depth: int | None = None,
    module_filter: type[nn.Module] | tuple[type[nn.Module], ...] | None = None,
) -> dict[str, nn.Module]:
    """Choose the layers an Exporter tracks, in registration order.

    By default: every leaf module that holds parameters. With ``depth=k``: the modules ``k``
    levels below the model (``'features.0'`` is at depth 2) that hold parameters, plus leaf modules
    with parameters above that depth. ``module_filter`` keeps only instances of the given
    class(es), subclasses included.

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
    """
    chosen: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if not name and len(list(model.children())) > 0:
            continue  # the model itself is a layer only when it has no children
        level = 0 if not name else name.count(".") + 1
        is_leaf = not any(True for _ in module.children())
        if depth is None:
            take = is_leaf and bool(own_params(module))
        else:
            has_params = any(True for _ in module.parameters())
            take = has_params and (level == depth or (is_leaf and level < depth))
        if take and module_filter is not None:
            take = isinstance(module, module_filter)
        if take:
            chosen[name] = module
    return chosen


def assign_parameters(
    modules: Mapping[str, NamedModule], optimizers: Sequence[torch.optim.Optimizer]
) -> tuple[dict[str, list[Entry]], list[dict[str, list[Entry]]]]:
    """Find each layer's weight and bias and the optimizer that steps each: the
    ``(layer name, layer, attribute)`` entries by role (``'weight'``, ``'bias'``), over
    all layers and per optimizer. Warns once about parameters that get no metrics and
    layers that no optimizer steps.

    Examples:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1, bias=False))
        >>> layers = {n: NamedModule(n, m) for n, m in select_modules(model).items()}
        >>> opt = torch.optim.SGD(model[0].parameters(), lr=0.1)
        >>> by_role, by_optimizer = assign_parameters(layers, [opt])
        >>> [(name, attr) for name, _, attr in by_role["weight"]]
        [('0', 'weight'), ('1', 'weight')]
        >>> [name for name, _, _ in by_optimizer[0]["bias"]]
        ['0']
    """
    role_layers: dict[str, list[Entry]] = {r: [] for r in ROLES}
    by_optimizer: list[dict[str, list[Entry]]] = [{r: [] for r in ROLES} for _ in optimizers]
    held = [{id(p) for group in opt.param_groups for p in group["params"]} for opt in optimizers]
    untracked: dict[str, list[str]] = {}
    unstepped: dict[str, None] = {}
    for name, named in modules.items():
        roles, left = parameter_roles(named.module)
        if left:
            untracked[name] = left
        for role, attr in roles.items():
            entry = (name, named, attr)
            role_layers[role].append(entry)
            if not optimizers:
                continue
            tensor = named.module._parameters.get(attr)
            # a computed weight (a parametrisation) moves with the layer's parameters
            ids = {id(tensor)} if tensor is not None else {id(p) for p in named.module.parameters()}
            index = next((i for i, h in enumerate(held) if ids & h), None)
            if index is None:
                unstepped[name] = None
            else:
                by_optimizer[index][role].append(entry)
    if untracked:
        logger.warning(
            "These parameters are neither a layer's weight nor its bias and get no weight, "
            "gradient or update metrics: %s (a layer's weight and bias are its `weight` and "
            "`bias`, or its only parameters named otherwise)",
            ", ".join(f"{name!r}: {params}" for name, params in untracked.items()),
        )
    if unstepped:
        logger.warning(
            "The parameters of layers %s are in none of the %d optimizer(s) given to the "
            "Exporter: they get no *_gradients and no *_updates messages; pass every "
            "optimizer that trains the model, Exporter(model, [optimizer1, optimizer2])",
            list(unstepped),
            len(optimizers),
        )
    return role_layers, by_optimizer


def output_tensor(
    model: nn.Module, output: Any, output_fn: Callable[[Any], torch.Tensor] | None = None
) -> torch.Tensor:
    """The tensor that stands for ``model``'s ``output`` (what ``network_output`` carries):
    ``output_fn(output)`` if one was given, else :func:`first_tensor`.

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
