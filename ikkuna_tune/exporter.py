"""The Exporter: removable hooks on a model (and its optimizer) that publish training on a bus."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ikkuna_tune.bus import MessageBus
from ikkuna_tune.messages import DEFAULT_TAG, ModuleMessage, NamedModule, NetworkMessage

if TYPE_CHECKING:
    from ikkuna_tune.subscribers.base import Subscriber

__all__ = ["EVAL_TAG", "OUTPUT_KEYS", "PROBE_TAG", "Exporter"]

logger = logging.getLogger(__name__)

#: Tag of forward passes the user runs in eval mode or without gradients.
EVAL_TAG = "eval"
#: Default tag of the evaluation passes subscribers run through :meth:`Exporter.probe`.
PROBE_TAG = "probe"

#: The role ('weight' or 'bias') of the parameter each per-parameter kind is about.
_PARAM_KINDS = {
    "weights": "weight",
    "biases": "bias",
    "weight_gradients": "weight",
    "bias_gradients": "bias",
    "weight_updates": "weight",
    "bias_updates": "bias",
}
_ROLES = ("weight", "bias")
_UPDATE_KINDS = {"weight_updates": "weight", "bias_updates": "bias"}
_GRADIENT_KINDS = {"weight_gradients": "weight", "bias_gradients": "bias"}
#: The keys of a network-wide message.
_NETWORK_KEYS: tuple[None] = (None,)
#: Keys of a dict output, in order of preference, whose tensor is the output (else its first).
OUTPUT_KEYS = ("logits", "out")


def _own_params(module: nn.Module) -> list[nn.Parameter]:
    return list(module.parameters(recurse=False))


def _no_hook(*args: Any, **kwargs: Any) -> None:
    """What a copy of a model or optimizer holds in place of an Exporter's hook: nothing."""


def _dropped_hook() -> Callable[..., None]:
    return _no_hook


class _Hook(partial):  # type: ignore[type-arg]
    """A hook the Exporter registers: a ``functools.partial`` (called as fast) that does not
    survive copying. ``copy.deepcopy``, ``pickle`` and ``torch.save`` of a model or optimizer
    copy its hook dicts; there, this becomes :func:`_no_hook`, so that a copy never reaches the
    Exporter, its bus or the bus's backends (a TensorBoard writer cannot be copied)."""

    def __reduce__(self) -> tuple[Callable[[], Callable[..., None]], tuple[()]]:
        return (_dropped_hook, ())

    def __deepcopy__(self, memo: dict[int, Any]) -> Callable[..., None]:
        return _no_hook


class _Layers(dict):  # type: ignore[type-arg]
    """The tracked layers by name. Looking up the key of a repeated call (``'fc#2'``, see
    :class:`Exporter`) gives its :class:`NamedModule` too, so that a subscriber can resolve every
    key it receives, but such keys are not among the dict's keys."""

    def __init__(self, layers: dict[str, NamedModule]) -> None:
        super().__init__(layers)
        self.repeats: dict[str, NamedModule] = {}

    def __missing__(self, key: str) -> NamedModule:
        try:
            return self.repeats[key]
        except KeyError:
            raise KeyError(key) from None


def _first_tensor(output: Any) -> torch.Tensor | None:
    """The tensor that stands for a module's output: the output itself if it is a tensor; for a
    tuple or list (an LSTM's ``(output, (h, c))``, a ``PackedSequence``) the first tensor found
    depth-first; for a dict the value of the first of :data:`OUTPUT_KEYS` present, else its first
    tensor found depth-first; None if there is none."""
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
        found = _first_tensor(value)
        if found is not None:
            return found
    return None


def _is_bias_name(name: str) -> bool:
    return name == "bias" or name.startswith("bias_") or name.endswith("_bias")


def _parameter_roles(module: nn.Module) -> tuple[dict[str, str], list[str]]:
    """Which attribute of ``module`` is its weight and which its bias, and the names of its own
    parameters that are neither.

    ``weight``/``bias`` if the module has them (a parameter or a computed tensor attribute);
    otherwise its only own parameter not named like a bias is the weight (a ``scale``) and its
    only one named like a bias (``bias``, ``bias_*``, ``*_bias``) the bias. With several
    candidates (an LSTM's ``weight_ih_l0``, ``weight_hh_l0``, ...) a role stays empty.
    """
    own = list(module._parameters)
    roles: dict[str, str] = {}
    for role in _ROLES:
        if _tensor_attr(module, role) is not None:
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


def _tensor_attr(module: nn.Module, attr: str) -> torch.Tensor | None:
    """``module.<attr>`` if it is a tensor, else None; a parameter is found without
    ``nn.Module.__getattr__`` (this runs for every layer on every step)."""
    value = module._parameters.get(attr)
    if value is None:
        value = getattr(module, attr, None)
    return value if isinstance(value, torch.Tensor) else None


def _hold_eval(module: nn.Module, args: tuple[Any, ...]) -> None:
    """Forward pre-hook of a frozen layer: it and its submodules run in eval mode, so that
    ``model.train()`` cannot make a frozen BatchNorm update its running statistics (or a frozen
    dropout drop)."""
    for submodule in module.modules():
        submodule.training = False


def _check_optimizers(optimizer: object) -> tuple[torch.optim.Optimizer, ...]:
    """``optimizer`` (one, a sequence of them, or None) as a tuple of distinct optimizers."""
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
    """
    chosen: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if not name and len(list(model.children())) > 0:
            continue  # the model itself is a layer only when it has no children
        level = 0 if not name else name.count(".") + 1
        is_leaf = not any(True for _ in module.children())
        if depth is None:
            take = is_leaf and bool(_own_params(module))
        else:
            has_params = any(True for _ in module.parameters())
            take = has_params and (level == depth or (is_leaf and level < depth))
        if take and module_filter is not None:
            take = isinstance(module, module_filter)
        if take:
            chosen[name] = module
    return chosen


class Exporter:
    """Hooks ``model`` (and its optimizers) and publishes what flows through training.

    Per training step it publishes, all with the same step numbers and in this order:
    ``epoch_started`` (first step of an epoch), ``batch_started``, ``weights``/``biases`` (the
    values this step's forward uses), ``input_data``, ``activations`` (forward order),
    ``network_output``, then whatever the user publishes (``input_labels``, ``loss``), then during
    backward ``layer_gradients`` (gradient w.r.t. each layer's output), then at each
    ``optimizer.step()`` ``weight_gradients``/``bias_gradients`` (``param.grad`` as the optimizer
    is about to use it: with gradient accumulation, the sum of the step's backward passes) and
    ``weight_updates``/``bias_updates`` (what that step changed) of the layers that optimizer
    trains, and once every optimizer has stepped ``batch_finished``. Without an optimizer,
    gradients are published during backward, each once accumulated, and a step ends at the next
    training forward, :meth:`epoch_finished` or :meth:`close`.

    Tensors are published without copies: ``weights`` and ``weight_gradients`` are views of the
    parameters and their gradients, and an update is written into a buffer the Exporter keeps per
    parameter. All of them are right while the step's messages are delivered and change with
    later steps; a subscriber that keeps one beyond its step keeps a ``clone()``.

    A training step is a forward pass of the model in training mode with gradients enabled.
    Other forward passes (eval mode, ``torch.no_grad()``, :meth:`probe`) publish under their own
    tag and move no counter. Hooks are registered only for kinds some subscriber wants; removing
    subscribers removes hooks. A message that every subscription would thin out by subsampling
    is only counted, never built (:meth:`MessageBus.skip`, which gets the step, so that a
    synchronised bundle that subsampling drops is counted without its messages); an update that
    is delivered but that no subscription looks at is published with ``data=None`` and not
    computed.
    Nothing here turns a tensor into a Python number.

    **Several optimizers.** Pass every optimizer that trains the model (a body and a head, say):
    each layer's gradients and update are read around the ``step()`` of the optimizer that holds
    its parameter. The parameters of a layer that none of them holds get no ``*_gradients`` and
    no ``*_updates`` messages (rather than an update of 0 that did not happen); the Exporter
    warns once, at construction, naming those layers. Optimizers are matched with parameters at
    construction.

    **Frozen layers** (:meth:`freeze`) publish an update of exactly zero (one zero tensor kept
    per layer, not one per step) and no ``*_gradients``.

    **Which parameter is the weight.** A layer's ``weight`` and ``bias`` are its attributes of
    those names; a layer without them whose only own parameter is otherwise named (a ``scale``)
    uses that as its weight, and its only parameter named like a bias (``bias_*``, ``*_bias``)
    as its bias. Parameters that remain (an LSTM's ``weight_ih_l0``, ``weight_hh_l0``, ...; two
    parameters ``scale`` and ``shift``) get no weight, gradient or update metrics; the Exporter
    warns once, at construction, naming the layers and parameters.

    **Outputs that are not tensors.** ``network_output`` and ``activations`` are always tensors.
    Of a tuple or list output the first tensor is taken (depth-first: an LSTM's output sequence,
    a ``PackedSequence``'s data), of a dict the value under ``'logits'`` or ``'out'`` (in that
    order), else its first tensor. ``output_fn`` chooses the network's output tensor instead.
    An output with no tensor in it raises ``ValueError`` naming the model or layer and the type
    it returned; this happens in the first forward pass that publishes it (the first step).

    **A layer called several times in one forward pass** (shared weights, a recurrent cell)
    publishes ``activations`` and ``layer_gradients`` for every call: the first call under the
    layer's name, call ``k`` under ``'<name>#k'`` (``'fc#2'``), a key of its own for every
    subscriber (``modules['fc#2']`` resolves it; it is not a layer to :meth:`freeze`). Its
    parameters' kinds are published once, under the layer's name. Calls are counted within a
    forward pass of the model; a layer run on its own publishes each call under its name.

    **Copies.** ``copy.deepcopy``, ``pickle`` and ``torch.save`` of the model or an optimizer
    give a plain copy: every hook this Exporter registered is inert there, so the copy runs
    without publishing anything (and without holding a frozen layer in eval mode).

    Args:
        model: the network to watch.
        optimizer: its optimizer, or a sequence of its optimizers; needed for
            ``weight_updates``/``bias_updates`` and marks the end of a step.
        message_bus: the bus to publish on (a new one by default).
        depth: track modules at this depth instead of the leaf layers (see :func:`select_modules`).
        module_filter: track only layers of these classes (subclasses included).
        output_fn: maps the model's output to the tensor published as ``network_output``
            (``lambda out: out["scores"]``); by default the rule above.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> body = torch.optim.SGD(model[0].parameters(), lr=0.1)
        >>> head = torch.optim.Adam(model[2].parameters(), lr=0.01)
        >>> with Exporter(model, [body, head]) as exporter:
        ...     exporter.optimizers == (body, head)
        True
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
        message_bus: MessageBus | None = None,
        depth: int | None = None,
        module_filter: type[nn.Module] | tuple[type[nn.Module], ...] | None = None,
        output_fn: Callable[[Any], torch.Tensor] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"Expected `model` to be a torch.nn.Module but got {type(model)}")
        optimizers = _check_optimizers(optimizer)
        if message_bus is None:
            message_bus = MessageBus()
        elif not isinstance(message_bus, MessageBus):
            raise ValueError(f"Expected a MessageBus but got {type(message_bus).__name__}")
        if any(isinstance(listener, Exporter) for listener in message_bus.listeners):
            raise ValueError(f"{message_bus!r} already has an Exporter; use one Exporter per bus")
        if depth is not None and (
            isinstance(depth, bool) or not isinstance(depth, int) or depth < 1
        ):
            raise ValueError(f"Expected `depth` to be an integer >= 1 or None but got {depth!r}")
        if module_filter is not None:
            classes = module_filter if isinstance(module_filter, tuple) else (module_filter,)
            if not classes or not all(
                isinstance(c, type) and issubclass(c, nn.Module) for c in classes
            ):
                raise ValueError(
                    "Expected `module_filter` to be an nn.Module subclass or a tuple of them "
                    f"but got {module_filter!r}"
                )
        if output_fn is not None and not callable(output_fn):
            raise ValueError(f"Expected `output_fn` to be callable or None but got {output_fn!r}")
        chosen = select_modules(model, depth, module_filter)
        if not chosen:
            raise ValueError(
                f"No layer of {type(model).__name__} matches depth={depth!r}, "
                f"module_filter={module_filter!r}"
            )
        self.model = model
        #: The optimizers, in the order given (empty without one).
        self.optimizers: tuple[torch.optim.Optimizer, ...] = optimizers
        #: The first optimizer (the only one, usually), or None.
        self.optimizer: torch.optim.Optimizer | None = optimizers[0] if optimizers else None
        self.message_bus = message_bus
        #: The tracked layers by name (``modules['fc#2']`` also resolves a repeated call).
        self.modules: dict[str, NamedModule] = _Layers(
            {n: NamedModule(n, m) for n, m in chosen.items()}
        )
        self._output_fn = output_fn

        self.global_step = 0
        self.train_step = 0
        self.epoch = 0
        self._steps_started = 0
        self._step_open = False
        # indices of the optimizers that have stepped in the open step
        self._stepped: set[int] = set()
        self._epoch_open = False
        self._pass_tag = DEFAULT_TAG
        self._probe_tag: str | None = None
        self._passes = 0  # forward passes of the model so far
        self._current_pass = 0  # the number of the running forward pass of the model, else 0
        self._frozen: dict[str, None] = {}  # ordered, with O(1) membership
        self._freeze_handles: dict[str, RemovableHandle] = {}
        self._update_before: dict[tuple[str, str], torch.Tensor] = {}
        self._update_buffers: dict[tuple[str, str], torch.Tensor] = {}
        self._zero_updates: dict[tuple[str, str], torch.Tensor] = {}
        self._repeats: dict[tuple[str, int], NamedModule] = {}
        self._base_handles: list[RemovableHandle] = []
        self._kind_handles: dict[str, list[RemovableHandle]] = {}
        self._want_gradients: list[str] = []
        self._wanted: frozenset[str] = frozenset()
        self._closed = False
        # (name, layer, attribute) of every tracked layer with a weight / a bias, and of those
        # each optimizer steps
        self._role_layers, self._optimizer_layers = self._assign_parameters()
        self._optimizer_names = [
            {role: tuple([name for name, _, _ in entries]) for role, entries in layers.items()}
            for layers in self._optimizer_layers
        ]

        self._base_handles.append(model.register_forward_pre_hook(_Hook(self._on_forward_start)))
        self._base_handles.append(model.register_forward_hook(_Hook(self._on_forward_end)))
        for index, opt in enumerate(optimizers):
            pre, post = _Hook(self._on_optimizer_pre, index), _Hook(self._on_optimizer_post, index)
            self._base_handles.append(opt.register_step_pre_hook(pre))
            self._base_handles.append(opt.register_step_post_hook(post))
        try:
            for subscriber in message_bus.subscribers:
                self.check_subscriber(subscriber)
        except ValueError:
            self.close()
            raise
        message_bus.add_listener(self)
        self.subscribers_changed(message_bus)

    def _assign_parameters(
        self,
    ) -> tuple[
        dict[str, list[tuple[str, NamedModule, str]]],
        list[dict[str, list[tuple[str, NamedModule, str]]]],
    ]:
        """Find each layer's weight and bias and the optimizer that steps each; warn once about
        parameters that get no metrics and layers that no optimizer steps."""
        role_layers: dict[str, list[tuple[str, NamedModule, str]]] = {r: [] for r in _ROLES}
        by_optimizer: list[dict[str, list[tuple[str, NamedModule, str]]]] = [
            {r: [] for r in _ROLES} for _ in self.optimizers
        ]
        held = [
            {id(p) for group in opt.param_groups for p in group["params"]}
            for opt in self.optimizers
        ]
        untracked: dict[str, list[str]] = {}
        unstepped: dict[str, None] = {}
        for name, named in self.modules.items():
            roles, left = _parameter_roles(named.module)
            if left:
                untracked[name] = left
            for role, attr in roles.items():
                entry = (name, named, attr)
                role_layers[role].append(entry)
                if not self.optimizers:
                    continue
                tensor = named.module._parameters.get(attr)
                # a computed weight (a parametrisation) moves with the layer's parameters
                ids = (
                    {id(tensor)}
                    if tensor is not None
                    else {id(p) for p in named.module.parameters()}
                )
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
                len(self.optimizers),
            )
        return role_layers, by_optimizer

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Publish a pending ``batch_finished`` and remove every hook this Exporter added."""
        if self._closed:
            return
        self._finish_step()
        self.message_bus.flush()
        for handle in self._base_handles:
            handle.remove()
        self._base_handles.clear()
        for handles in self._kind_handles.values():
            for handle in handles:
                handle.remove()
        self._kind_handles.clear()
        for name, handle in self._freeze_handles.items():
            handle.remove()
            # without the hook the layer would stay in eval mode until the next model.train()
            self.modules[name].module.train(self.model.training)
        self._freeze_handles.clear()
        self._update_before.clear()
        self._update_buffers.clear()
        self._zero_updates.clear()
        self.message_bus.remove_listener(self)
        for subscriber in self.message_bus.subscribers:
            if subscriber.model_access is self:
                subscriber.use_model(None)
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def steps_started(self) -> int:
        """Training steps begun so far (kept in :meth:`state_dict`, so counted across
        restores); :attr:`epoch` is the number of epochs ended (:meth:`epoch_finished`)."""
        return self._steps_started

    # ------------------------------------------------ the bus's listener (BusListener)
    def check_subscriber(self, subscriber: Subscriber) -> None:
        """Raise ``ValueError`` if this Exporter cannot publish a kind ``subscriber`` wants."""
        for subscription in subscriber.subscriptions:
            self.check_kinds(subscription.kinds)

    def subscribers_changed(self, bus: MessageBus) -> None:
        """Hook exactly the kinds now subscribed, and hand this Exporter (as the subscribers'
        :class:`~ikkuna_tune.model_access.ModelAccess`) to those that run the model."""
        self._sync_hooks()
        for subscriber in bus.subscribers:
            if subscriber.uses_model is not None and subscriber.model_access is None:
                subscriber.use_model(self)

    def check_kinds(self, kinds: Iterable[str]) -> None:
        """Raise ``ValueError`` if this Exporter cannot publish one of ``kinds``."""
        needs_optimizer = sorted(k for k in kinds if k in _UPDATE_KINDS)
        if needs_optimizer and not self.optimizers:
            raise ValueError(
                f"Kinds {needs_optimizer} need the optimizer: pass Exporter(model, optimizer=...)"
            )

    def output_tensor(self, output: Any) -> torch.Tensor:
        """The tensor that stands for the model's ``output`` (what ``network_output`` carries):
        ``output_fn(output)`` if one was given, else the output itself if it is a tensor, else
        its first tensor (see the class documentation).

        Raises:
            ValueError: if there is no tensor (or ``output_fn`` returns something else).
        """
        if self._output_fn is not None:
            tensor = self._output_fn(output)
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(
                    f"Expected `output_fn` to return a tensor for the output of "
                    f"{type(self.model).__name__} but got {type(tensor).__name__}"
                )
            return tensor
        tensor = _first_tensor(output)
        if tensor is None:
            raise ValueError(
                f"{type(self.model).__name__} returned a {type(output).__name__} with no tensor "
                "in it, so there is no network_output to publish; pass "
                "Exporter(..., output_fn=...) to say which tensor is the output"
            )
        return tensor

    @staticmethod
    def _layer_tensor(named: NamedModule, output: Any) -> torch.Tensor:
        tensor = _first_tensor(output)
        if tensor is None:
            raise ValueError(
                f"Layer {named.name!r} ({type(named.module).__name__}) returned a "
                f"{type(output).__name__} with no tensor in it, so it has no activations to "
                "publish; track other layers (depth=, module_filter=)"
            )
        return tensor

    # ----------------------------------------------------------------- hooks
    def _sync_hooks(self) -> None:
        """Register hooks for the kinds now subscribed, remove those for kinds no longer wanted."""
        if self._closed:
            return
        wanted = self._wanted = self.message_bus.subscribed_kinds()
        # with an optimizer, parameter gradients are read in its pre-step hook (one Python call
        # per step); without one, each parameter gets a post-accumulate-grad hook
        per_param = not self.optimizers
        groups: dict[str, bool] = {
            "forward": bool(wanted & {"activations", "layer_gradients"}),
            **{kind: per_param and kind in wanted for kind in _GRADIENT_KINDS},
        }
        self._want_gradients = [] if per_param else [k for k in _GRADIENT_KINDS if k in wanted]
        self._want_activations = "activations" in wanted
        self._want_layer_gradients = "layer_gradients" in wanted
        self._want_params = [k for k in ("weights", "biases") if k in wanted]
        self._want_updates = [k for k in _UPDATE_KINDS if k in wanted]
        if not self._want_updates:
            self._update_before.clear()
            self._update_buffers.clear()
            self._zero_updates.clear()
        for group, on in groups.items():
            registered = group in self._kind_handles
            if on and not registered:
                self._kind_handles[group] = self._register(group)
            elif registered and not on:
                for handle in self._kind_handles.pop(group):
                    handle.remove()

    def _register(self, group: str) -> list[RemovableHandle]:
        handles = []
        if group == "forward":
            for named in self.modules.values():
                # [the forward pass of the last call, calls in that pass]
                calls = [-1, 0]
                hook = _Hook(self._on_layer, named, calls)
                # the model as its own layer: its activations before its network_output
                prepend = named.module is self.model
                handles.append(named.module.register_forward_hook(hook, prepend=prepend))
            return handles
        for _name, named, attr in self._role_layers[_GRADIENT_KINDS[group]]:
            param = named.module._parameters.get(attr)
            if isinstance(param, nn.Parameter):
                hook = _Hook(self._on_gradient, group, named)
                handles.append(param.register_post_accumulate_grad_hook(hook))
        return handles

    # Publishing on the hot path: ``_due`` first (it counts a message that subsampling thins
    # out, without building it), then ``_emit_*`` with the data. Only built-in kinds pass here.
    def _due(self, kind: str, key: str | None, tag: str = DEFAULT_TAG) -> bool:
        keys = _NETWORK_KEYS if key is None else (key,)
        return not self.message_bus.skip_all(kind, keys, tag, self.global_step)

    def _publish_layers(
        self, kind: str, found: list[tuple[str, NamedModule, torch.Tensor | None]]
    ) -> None:
        """Publish one training-step message of ``kind`` per ``(name, layer, tensor)``, the
        tensor detached; a step that subsampling skips costs one :meth:`MessageBus.skip_all`."""
        bus, step = self.message_bus, self.global_step
        if bus.skip_all(kind, tuple([name for name, _, _ in found]), DEFAULT_TAG, step):
            return
        for name, named, data in found:
            if not bus.skip_all(kind, (name,), DEFAULT_TAG, step):
                self._emit_layer(kind, named, None if data is None else data.detach(), DEFAULT_TAG)

    def _emit_meta(self, kind: str, data: Any, tag: str) -> None:
        self.message_bus.publish(
            NetworkMessage(kind, tag, self.global_step, self.train_step, self.epoch, data)
        )

    def _emit_layer(self, kind: str, named: NamedModule, data: Any, tag: str) -> None:
        self.message_bus.publish(
            ModuleMessage(kind, tag, self.global_step, self.train_step, self.epoch, data, named)
        )

    def _publish_meta(self, kind: str, data: Any = None, tag: str = DEFAULT_TAG) -> None:
        if kind in self._wanted and self._due(kind, None, tag):
            self._emit_meta(kind, data, tag)

    def _publish_tensor_meta(self, kind: str, data: Any, tag: str) -> None:
        """Publish ``data`` (detached if a tensor), unless no subscription needs it now."""
        if kind in self._wanted and self._due(kind, None, tag):
            self._emit_meta(kind, data.detach() if isinstance(data, torch.Tensor) else data, tag)

    def _is_training_pass(self) -> bool:
        return self._probe_tag is None and self.model.training and torch.is_grad_enabled()

    def _on_forward_start(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._passes += 1
        self._current_pass = self._passes
        if not self._is_training_pass():
            self._pass_tag = self._probe_tag or EVAL_TAG
            if args and isinstance(args[0], torch.Tensor):
                self._publish_tensor_meta("input_data", args[0], self._pass_tag)
            return
        self._pass_tag = DEFAULT_TAG
        if not (self._step_open and self.optimizers and not self._stepped):
            self._start_step()
        if args and isinstance(args[0], torch.Tensor):
            self._publish_tensor_meta("input_data", args[0], DEFAULT_TAG)

    def _start_step(self) -> None:
        self._finish_step()
        if self._steps_started > 0:
            self.global_step += 1
            if self._epoch_open:
                self.train_step += 1
        self._steps_started += 1
        self._step_open = True
        self._stepped.clear()
        if not self._epoch_open:
            self._epoch_open = True
            self.train_step = 0
            self._publish_meta("epoch_started")
        self._publish_meta("batch_started")
        for kind in self._want_params:
            found = []
            for name, named, attr in self._role_layers[_PARAM_KINDS[kind]]:
                param = _tensor_attr(named.module, attr)
                if param is not None:
                    found.append((name, named, param))
            self._publish_layers(kind, found)

    def _finish_step(self) -> None:
        if self._step_open:
            self._step_open = False
            self._publish_meta("batch_finished")

    def _on_forward_end(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._current_pass = 0
        tag = self._pass_tag
        if "network_output" in self._wanted and self._due("network_output", None, tag):
            if self._output_fn is not None or not isinstance(output, torch.Tensor):
                output = self.output_tensor(output)
            self._emit_meta("network_output", output.detach(), tag)

    def _repeat(self, named: NamedModule, call: int) -> NamedModule:
        """The layer as the key of its ``call``-th call in one forward pass (``'fc#2'``)."""
        repeat = self._repeats.get((named.name, call))
        if repeat is None:
            repeat = self._repeats[(named.name, call)] = NamedModule(
                f"{named.name}#{call}", named.module
            )
            self.modules.repeats[repeat.name] = repeat  # type: ignore[attr-defined]
        return repeat

    def _on_layer(
        self,
        named: NamedModule,
        calls: list[int],
        module: nn.Module,
        args: tuple[Any, ...],
        output: Any,
    ) -> None:
        current = self._current_pass
        if current:  # count the calls within one forward pass of the model
            if calls[0] == current:
                calls[1] += 1
                named = self._repeat(named, calls[1])
            else:
                calls[0] = current
                calls[1] = 1
        tag = self._pass_tag
        if not isinstance(output, torch.Tensor):
            output = self._layer_tensor(named, output)
        if self._want_activations and self._due("activations", named.name, tag):
            self._emit_layer("activations", named, output.detach(), tag)
        if self._want_layer_gradients and tag == DEFAULT_TAG and output.requires_grad:
            output.register_hook(partial(self._on_layer_gradient, named))

    def _on_layer_gradient(self, named: NamedModule, grad: torch.Tensor) -> None:
        if self._due("layer_gradients", named.name):
            self._emit_layer("layer_gradients", named, grad.detach(), DEFAULT_TAG)

    def _on_gradient(self, kind: str, named: NamedModule, param: torch.Tensor) -> None:
        if param.grad is not None and self._due(kind, named.name):
            self._emit_layer(kind, named, param.grad.detach(), DEFAULT_TAG)

    def _on_optimizer_pre(self, index: int, optimizer: torch.optim.Optimizer, *args: Any) -> None:
        layers = self._optimizer_layers[index]
        for kind in self._want_gradients:
            found = []
            for name, named, attr in layers[_GRADIENT_KINDS[kind]]:
                param = _tensor_attr(named.module, attr)
                if param is not None and param.grad is not None:
                    found.append((name, named, param.grad))
            self._publish_layers(kind, found)
        bus, frozen, names = self.message_bus, self._frozen, self._optimizer_names[index]
        for kind in self._want_updates:
            role = _UPDATE_KINDS[kind]
            if not bus.will_process_any(kind, names[role]):
                continue
            for name, named, attr in layers[role]:
                # an update every subscription would skip (subsampling) is not computed, and
                # that of a frozen layer is known
                if name not in frozen and bus.will_process(kind, name):
                    param = _tensor_attr(named.module, attr)
                    if param is not None:
                        key = (name, kind)
                        self._update_before[key] = self._snapshot(key, param)

    @staticmethod
    def _buffer_like(
        store: dict[tuple[str, str], torch.Tensor],
        key: tuple[str, str],
        param: torch.Tensor,
        make: Callable[..., torch.Tensor],
    ) -> torch.Tensor:
        """The buffer of ``key`` in ``store``, made by ``make`` (``torch.empty_like`` or
        ``torch.zeros_like``) when missing or no longer of ``param``'s shape, dtype or device."""
        buffer = store.get(key)
        if buffer is None or (buffer.shape, buffer.dtype, buffer.device) != (
            param.shape,
            param.dtype,
            param.device,
        ):
            buffer = store[key] = make(param, requires_grad=False)
        return buffer

    def _snapshot(self, key: tuple[str, str], param: torch.Tensor) -> torch.Tensor:
        """A copy of ``param`` in a buffer kept per parameter (no allocation per step)."""
        buffer = self._buffer_like(self._update_buffers, key, param, torch.empty_like)
        return buffer.copy_(param.detach())

    def _zero_update(self, key: tuple[str, str], param: torch.Tensor) -> torch.Tensor:
        """The update of a frozen parameter: zeros, kept per parameter (no allocation per step)."""
        return self._buffer_like(self._zero_updates, key, param, torch.zeros_like)

    def _on_optimizer_post(self, index: int, optimizer: torch.optim.Optimizer, *args: Any) -> None:
        layers, frozen, before_of = self._optimizer_layers[index], self._frozen, self._update_before
        for kind in self._want_updates:
            found: list[tuple[str, NamedModule, torch.Tensor | None]] = []
            for name, named, attr in layers[_UPDATE_KINDS[kind]]:
                key = (name, kind)
                before = before_of.pop(key, None)
                param = _tensor_attr(named.module, attr)
                if param is None:
                    continue
                if name in frozen:
                    update: torch.Tensor | None = self._zero_update(key, param)
                elif before is None:
                    # without a snapshot nobody looks at the update: it is published without data
                    update = None
                else:
                    # written into the snapshot's buffer (no allocation)
                    update = torch.sub(param.detach(), before, out=before)
                found.append((name, named, update))
            self._publish_layers(kind, found)
        self._stepped.add(index)
        if len(self._stepped) == len(self.optimizers):
            self._finish_step()

    # ------------------------------------------------------- user-facing API
    def publish_labels(self, labels: torch.Tensor) -> None:
        """Publish this step's target labels (``input_labels``)."""
        self._publish_tensor_meta("input_labels", labels, self._pass_tag)

    def publish_loss(self, loss: torch.Tensor) -> None:
        """Publish this step's loss (left on its device)."""
        self._publish_tensor_meta("loss", loss, self._pass_tag)

    def wrap_loss(self, loss_fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """Wrap a loss (an ``nn.Module`` or a function such as ``F.cross_entropy``).

        The wrapper calls ``loss_fn(output, target, *args, **kwargs)``, publishes ``input_labels``
        (the target) and ``loss``, and returns the loss unchanged.
        """
        if not callable(loss_fn):
            raise ValueError(f"Expected a callable loss but got {loss_fn!r}")

        def loss_with_export(
            output: torch.Tensor, target: torch.Tensor, *args: Any, **kwargs: Any
        ) -> torch.Tensor:
            loss = loss_fn(output, target, *args, **kwargs)
            if isinstance(target, torch.Tensor):
                self.publish_labels(target)
            self.publish_loss(loss)
            return loss

        return loss_with_export

    def epoch_finished(self) -> None:
        """End the current epoch: publish ``batch_finished`` if pending, then ``epoch_finished``."""
        self._finish_step()
        self._publish_meta("epoch_finished")
        self._epoch_open = False
        self.epoch += 1
        self.message_bus.flush()

    @contextmanager
    def probe(self, tag: str = PROBE_TAG) -> Iterator[nn.Module]:
        """Run evaluation passes: eval mode, ``torch.no_grad()``, messages under ``tag``.

        Counters and weight-update bookkeeping are untouched and every module's training flag is
        restored afterwards. Yields the model.
        """
        if not isinstance(tag, str) or not tag or tag == DEFAULT_TAG:
            raise ValueError(f"Expected a probe tag other than {DEFAULT_TAG!r} but got {tag!r}")
        if self._probe_tag is not None:
            raise RuntimeError(f"A probe with tag {self._probe_tag!r} is already running")
        modes = [(m, m.training) for m in self.model.modules()]
        previous_tag = self._pass_tag
        self._probe_tag = tag
        self.model.eval()
        try:
            with torch.no_grad():
                yield self.model
        finally:
            for module, training in modes:
                module.training = training
            self._probe_tag = None
            self._pass_tag = previous_tag

    # ---------------------------------------------------------------- freeze
    @property
    def frozen(self) -> tuple[str, ...]:
        """Names of the frozen layers, in the order they were frozen."""
        return tuple(self._frozen)

    def _layer(self, name: str) -> NamedModule:
        if name not in self.modules:  # a repeated call's key ('fc#2') is not a layer
            raise ValueError(f"Unknown layer {name!r}; this Exporter tracks {list(self.modules)}")
        return self.modules[name]

    def leaves_trainable(self, name: str, frozen: Iterable[str] = ()) -> bool:
        """Whether some parameter of the model would still train with layer ``name`` (and the
        layers ``frozen``) frozen: :meth:`freeze` refuses to freeze the last trainable layer."""
        excluded = {
            id(p) for layer in (name, *frozen) for p in self._layer(layer).module.parameters()
        }
        return any(p.requires_grad and id(p) not in excluded for p in self.model.parameters())

    def freeze(self, name: str) -> None:
        """Stop training layer ``name``: its parameters and its buffers stop changing.

        Its parameters lose ``requires_grad`` and their gradients; optimizers skip parameters
        whose ``grad`` is None, so momentum and weight decay no longer move them. The layer and
        its submodules run in eval mode in every forward pass (a forward pre-hook sets their
        ``training`` flag, so ``model.train()`` does not undo it): a BatchNorm uses its running
        statistics and no longer updates them (``running_mean``, ``running_var``,
        ``num_batches_tracked``), dropout is off. Publishes ``layer_frozen`` with the layer's
        name; while frozen, the layer's ``*_updates`` are exactly zero and it publishes no
        ``*_gradients``.

        Raises:
            ValueError: for an unknown layer, or if nothing in the model would still train.
        """
        named = self._layer(name)
        if name in self._frozen:
            return
        params = list(named.module.parameters())
        if not self.leaves_trainable(name):
            raise ValueError(
                f"Refusing to freeze {name!r}: it is the last trainable layer "
                "(backward would fail); stop training instead"
            )
        for param in params:
            param.requires_grad_(False)
            param.grad = None
        _hold_eval(named.module, ())
        if not self._closed:  # a closed Exporter leaves no hook behind
            self._freeze_handles[name] = named.module.register_forward_pre_hook(
                _Hook(_hold_eval), prepend=True
            )
        self._frozen[name] = None
        self._publish_meta("layer_frozen", name)
        logger.info("Froze layer %r at step %d", name, self.global_step)

    def unfreeze(self, name: str) -> None:
        """Train layer ``name`` again; it takes the model's current training mode."""
        named = self._layer(name)
        if name not in self._frozen:
            return
        for param in named.module.parameters():
            param.requires_grad_(True)
        handle = self._freeze_handles.pop(name, None)
        if handle is not None:
            handle.remove()
        named.module.train(self.model.training)
        del self._frozen[name]

    def frozen_parameter_fraction(self) -> float:
        """Fraction of the model's parameters (by count) in frozen layers."""
        total = sum(p.numel() for p in self.model.parameters())
        frozen = sum(
            p.numel() for name in self._frozen for p in self.modules[name].module.parameters()
        )
        return frozen / total if total else 0.0

    # ------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Counters and frozen layers, for a trial's checkpoint."""
        return {
            "global_step": self.global_step,
            "train_step": self.train_step,
            "epoch": self.epoch,
            "steps_started": self._steps_started,
            "epoch_open": self._epoch_open,
            "frozen": list(self._frozen),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore counters and re-freeze the layers recorded in ``state``."""
        missing = {"global_step", "train_step", "epoch", "steps_started", "frozen"} - set(state)
        if missing:
            raise ValueError(f"Expected an Exporter state with keys {sorted(missing)} as well")
        self.global_step = int(state["global_step"])
        self.train_step = int(state["train_step"])
        self.epoch = int(state["epoch"])
        self._steps_started = int(state["steps_started"])
        self._epoch_open = bool(state.get("epoch_open", False))
        for name in state["frozen"]:
            self.freeze(name)

    def __repr__(self) -> str:
        return f"Exporter({type(self.model).__name__}, layers={list(self.modules)})"
