"""Which parameter of a layer is its weight and which its bias, and which optimizer steps each.

Examples:
    >>> from torch import nn
    >>> parameter_roles(nn.LayerNorm(4))
    ({'weight': 'weight', 'bias': 'bias'}, [])
    >>> parameter_roles(nn.LSTM(2, 3))[0]  # several weights: no single one is "the" weight
    {}
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import repeat
from operator import is_
from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrizations import _SpectralNorm as _SpectralNormParametrization
from torch.nn.utils.prune import BasePruningMethod as _Pruning
from torch.nn.utils.spectral_norm import SpectralNorm as _SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm as _WeightNorm

from ikkuna_tune.messages import NamedModule

__all__ = [
    "ROLES",
    "Entry",
    "assign_parameters",
    "check_optimizers",
    "gradients",
    "parameter_roles",
    "tensor_attr",
    "tensor_attrs",
]

logger = logging.getLogger(__name__)

#: The roles a layer's parameter may have.
ROLES = ("weight", "bias")
#: ``(layer name, layer, attribute)``: where one role's tensor of one layer is found.
Entry = tuple[str, NamedModule, str]


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
    # the parameters an older hook-based weight_norm / spectral_norm computes a weight from
    # (weight_g and weight_v, weight_orig), and a pruned weight's (weight_orig, which
    # torch.nn.utils.prune masks): the computed weight gets the metrics
    parts = {
        f"{name}{suffix}"
        for hook in module._forward_pre_hooks.values()
        if (name := _computed_name(hook)) is not None
        for suffix in ("_g", "_v", "_orig")
    }
    own = [name for name in own if name not in parts]
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


def tensor_attr(module: nn.Module, attr: str, upcoming: bool = False) -> torch.Tensor | None:
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
        value = _computed(module, attr, upcoming)
    return value if isinstance(value, torch.Tensor) else None


def _computed_name(hook: object) -> str | None:
    """The attribute a forward pre-hook computes from parameters (the older hook-based
    weight_norm / spectral_norm, or torch.nn.utils.prune's mask), or None."""
    if isinstance(hook, (_WeightNorm, _SpectralNorm)):
        return hook.name
    if isinstance(hook, _Pruning):
        return getattr(hook, "_tensor_name", None)
    return None


def _computed(module: nn.Module, attr: str, upcoming: bool = False) -> Any:
    """``module.<attr>`` when it is not a parameter: a buffer, a plain attribute, or a weight
    computed from parameters, read as it is now and without side effects.

    A parametrised weight (``torch.nn.utils.parametrize``) is computed with its parametrisations
    in eval mode: a spectral norm's power iteration, which updates its buffers, runs in the
    model's own forward passes only. A weight that a forward pre-hook of the older
    ``torch.nn.utils.weight_norm`` / ``spectral_norm`` or of ``torch.nn.utils.prune``
    recomputes (a plain attribute, stale until the next forward pass: read before the step,
    it would be the last step's weight, and the step's update read zero) is computed from
    the parameters it is made of.

    With ``upcoming`` (read when a training pass starts, before any layer ran), a spectral norm
    in training mode is read as that pass will compute it: its power iteration runs here on its
    own vectors, which are put back afterwards, so that the pass starts from them as it would
    have (the weight the forward uses, not the one the last pass used: the older
    ``spectral_norm`` starts from random vectors, so before the first pass that would be off by
    a factor of ten).
    """
    parametrizations = getattr(module, "parametrizations", None)
    if isinstance(parametrizations, nn.ModuleDict) and attr in parametrizations:
        training = [(m, m.training) for m in parametrizations[attr].modules() if m.training]
        iterating = [
            m for m, _ in training if upcoming and isinstance(m, _SpectralNormParametrization)
        ]
        for m, _ in training:
            m.training = any(m is kept for kept in iterating)
        with _restored([b for m in iterating for b in m.buffers(recurse=False)]):
            try:
                # the chain itself, not the attribute: under parametrize.cached() the
                # attribute would cache this value (without its graph) for the forward pass
                return parametrizations[attr]()
            finally:
                for m, mode in training:
                    m.training = mode
    for hook in module._forward_pre_hooks.values():
        if _computed_name(hook) != attr:
            continue
        if isinstance(hook, _WeightNorm):
            return hook.compute_weight(module)
        if isinstance(hook, _SpectralNorm):
            iterate = upcoming and module.training
            vectors = [module._buffers.get(f"{attr}_{part}") for part in ("u", "v")]
            with _restored([v for v in vectors if v is not None] if iterate else []):
                return hook.compute_weight(module, do_power_iteration=iterate)
        if isinstance(hook, _Pruning):
            orig, mask = module._parameters.get(f"{attr}_orig"), module._buffers.get(f"{attr}_mask")
            if orig is not None and mask is not None:
                with torch.no_grad():
                    return orig * mask
    return getattr(module, attr, None)


@contextmanager
def _restored(buffers: list[torch.Tensor]) -> Iterator[None]:
    """Put ``buffers`` back as they were on entry, whatever ran in between (in place: whoever
    holds them keeps holding them)."""
    with torch.no_grad():
        saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, old in zip(buffers, saved):
                buffer.copy_(old)


def tensor_attrs(entries: Sequence[Entry], upcoming: bool = False) -> list[torch.Tensor | None]:
    """:func:`tensor_attr` of every ``(name, layer, attribute)`` entry, in order: one lookup in
    each layer's parameters at the cost of a list comprehension, and :func:`tensor_attr` only
    for the entries that are not parameters now (this runs for every layer on every step).
    ``upcoming``: as a training pass about to start will compute them (see :func:`_computed`).

    Examples:
        >>> from torch import nn
        >>> from ikkuna_tune.messages import NamedModule
        >>> fc = NamedModule("fc", nn.Linear(2, 3, bias=False))
        >>> bn = NamedModule("bn", nn.BatchNorm1d(3))
        >>> [None if t is None else tuple(t.shape) for t in tensor_attrs(
        ...     [("fc", fc, "weight"), ("fc", fc, "bias"), ("bn", bn, "running_mean")])]
        [(3, 2), None, (3,)]
    """
    found = [named.module._parameters.get(attr) for _, named, attr in entries]
    if any(map(is_, found, repeat(None))):
        with torch.no_grad():  # a computed weight's value, without building an autograd graph
            found = [
                tensor_attr(named.module, attr, upcoming) if value is None else value
                for (_, named, attr), value in zip(entries, found)
            ]
    return found


def gradients(entries: Sequence[Entry]) -> list[torch.Tensor | None]:
    """The gradient of every entry's parameter, in order (None where it has none): of a
    weight pruned with ``torch.nn.utils.prune``, that of ``weight_orig`` (masked: what the
    optimizer applies); a weight a parametrisation computes has none.

    Examples:
        >>> import torch.nn.utils.prune as prune
        >>> from torch import nn
        >>> from ikkuna_tune.messages import NamedModule
        >>> fc = nn.Linear(2, 2)
        >>> _ = prune.identity(fc, "weight")
        >>> fc(torch.ones(1, 2)).sum().backward()
        >>> [tuple(g.shape) for g in gradients([("fc", NamedModule("fc", fc), "weight")])]
        [(2, 2)]
    """
    found = [named.module._parameters.get(attr) for _, named, attr in entries]
    if any(map(is_, found, repeat(None))):
        found = [
            _pruned_parameter(named.module, attr) if value is None else value
            for (_, named, attr), value in zip(entries, found)
        ]
    return [None if p is None else p.grad for p in found]


def _pruned_parameter(module: nn.Module, attr: str) -> torch.Tensor | None:
    """``<attr>_orig`` of a weight ``torch.nn.utils.prune`` masks, else None."""
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, _Pruning) and _computed_name(hook) == attr:
            return module._parameters.get(f"{attr}_orig")
    return None


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


def assign_parameters(
    modules: Mapping[str, NamedModule],
    optimizers: Sequence[torch.optim.Optimizer],
    warn: bool = True,
) -> tuple[dict[str, list[Entry]], list[dict[str, list[Entry]]]]:
    """Find each layer's weight and bias and the optimizer that steps each: the
    ``(layer name, layer, attribute)`` entries by role (``'weight'``, ``'bias'``), over
    all layers and per optimizer. Warns once about parameters that get no metrics, layers
    that hold no parameter of their own (blocks, which get no weight or bias metrics) and
    layers whose trainable parameters no optimizer steps (a parameter with
    ``requires_grad=False`` is not expected in an optimizer; it gets no ``*_gradients`` and no
    ``*_updates`` either, since it does not change). ``warn=False`` leaves the warnings out
    (a new assignment after an optimizer gained a parameter group).

    Examples:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1, bias=False))
        >>> layers = {n: NamedModule(n, m) for n, m in model.named_children()}
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
    blocks: list[str] = []
    for name, named in modules.items():
        roles, left = parameter_roles(named.module)
        if left:
            untracked[name] = left
        elif not roles:  # a block: every parameter it has is a submodule's
            blocks.append(name)
        for role, attr in roles.items():
            entry = (name, named, attr)
            role_layers[role].append(entry)
            if not optimizers:
                continue
            tensor = named.module._parameters.get(attr)
            # a computed weight (a parametrisation) moves with the layer's parameters
            params = [tensor] if tensor is not None else list(named.module.parameters())
            ids = {id(p) for p in params}
            index = next((i for i, h in enumerate(held) if ids & h), None)
            if index is not None:
                by_optimizer[index][role].append(entry)
            elif any(p.requires_grad for p in params):
                # a parameter that does not require gradients (frozen by the user, as in
                # fine-tuning) is in no optimizer on purpose: it does not change
                unstepped[name] = None
    if not warn:
        return role_layers, by_optimizer
    if untracked:
        logger.warning(
            "These parameters are neither a layer's weight nor its bias and get no weight, "
            "gradient or update metrics: %s (a layer's weight and bias are its `weight` and "
            "`bias`, or its only parameters named otherwise)",
            ", ".join(f"{name!r}: {params}" for name, params in untracked.items()),
        )
    if unstepped:
        logger.warning(
            "The trainable parameters of layers %s are in none of the %d optimizer(s) given to "
            "the Exporter: they get no *_gradients and no *_updates messages until an "
            "optimizer's add_param_group takes them up; pass every optimizer that trains the "
            "model, Exporter(model, [optimizer1, optimizer2])",
            list(unstepped),
            len(optimizers),
        )
    if blocks:
        logger.warning(
            "Layers %s hold no parameter of their own (all their parameters belong to their "
            "submodules), so weights, biases, weight_gradients, bias_gradients, weight_updates "
            "and bias_updates get no values for them: a layer's weight and bias are parameters "
            "it holds itself, and the Exporter does not combine its submodules' parameters. "
            "Track the layers that hold them (Exporter without depth=, or a larger depth) for "
            "those metrics",
            blocks,
        )
    return role_layers, by_optimizer
