"""The Exporter: removable hooks on a model (and its optimizer) that publish training on a bus."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ikkuna_tune.messages import (
    DEFAULT_TAG,
    MessageBus,
    ModuleMessage,
    NamedModule,
    NetworkMessage,
)

__all__ = ["EVAL_TAG", "PROBE_TAG", "Exporter"]

logger = logging.getLogger(__name__)

#: Tag of forward passes the user runs in eval mode or without gradients.
EVAL_TAG = "eval"
#: Default tag of the evaluation passes subscribers run through :meth:`Exporter.probe`.
PROBE_TAG = "probe"

_PARAM_KINDS = {
    "weights": "weight",
    "biases": "bias",
    "weight_gradients": "weight",
    "bias_gradients": "bias",
    "weight_updates": "weight",
    "bias_updates": "bias",
}
_UPDATE_KINDS = {"weight_updates": "weight", "bias_updates": "bias"}
_GRADIENT_KINDS = {"weight_gradients": "weight", "bias_gradients": "bias"}
#: The keys of a network-wide message.
_NETWORK_KEYS: tuple[None] = (None,)


def _own_params(module: nn.Module) -> list[nn.Parameter]:
    return list(module.parameters(recurse=False))


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
    """Hooks ``model`` (and ``optimizer``) and publishes what flows through training.

    Per training step it publishes, all with the same step numbers and in this order:
    ``epoch_started`` (first step of an epoch), ``batch_started``, ``weights``/``biases`` (the
    values this step's forward uses), ``input_data``, ``activations`` (forward order),
    ``network_output``, then whatever the user publishes (``input_labels``, ``loss``), then during
    backward ``layer_gradients`` (gradient w.r.t. each layer's output), then at
    ``optimizer.step()`` ``weight_gradients``/``bias_gradients`` (``param.grad`` as the optimizer
    is about to use it: with gradient accumulation, the sum of the step's backward passes),
    ``weight_updates``/``bias_updates`` (what that step changed) and ``batch_finished``. Without
    an optimizer, gradients are published during backward, each once accumulated, and a step
    ends at the next training forward, :meth:`epoch_finished` or :meth:`close`.

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

    Args:
        model: the network to watch.
        optimizer: its optimizer; needed for ``weight_updates``/``bias_updates`` and marks the
            end of a step.
        message_bus: the bus to publish on (a new one by default).
        depth: track modules at this depth instead of the leaf layers (see :func:`select_modules`).
        module_filter: track only layers of these classes (subclasses included).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        message_bus: MessageBus | None = None,
        depth: int | None = None,
        module_filter: type[nn.Module] | tuple[type[nn.Module], ...] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"Expected `model` to be a torch.nn.Module but got {type(model)}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(
                f"Expected `optimizer` to be a torch.optim.Optimizer or None but got "
                f"{type(optimizer).__name__}"
            )
        if message_bus is None:
            message_bus = MessageBus()
        elif not isinstance(message_bus, MessageBus):
            raise ValueError(f"Expected a MessageBus but got {type(message_bus).__name__}")
        if message_bus.exporter is not None:
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
        chosen = select_modules(model, depth, module_filter)
        if not chosen:
            raise ValueError(
                f"No layer of {type(model).__name__} matches depth={depth!r}, "
                f"module_filter={module_filter!r}"
            )
        self.model = model
        self.optimizer = optimizer
        self.message_bus = message_bus
        self.modules: dict[str, NamedModule] = {n: NamedModule(n, m) for n, m in chosen.items()}

        self.global_step = 0
        self.train_step = 0
        self.epoch = 0
        self._steps_started = 0
        self._step_open = False
        self._stepped = False
        self._epoch_open = False
        self._pass_tag = DEFAULT_TAG
        self._probe_tag: str | None = None
        self._frozen: list[str] = []
        self._freeze_handles: dict[str, RemovableHandle] = {}
        self._update_before: dict[tuple[str, str], torch.Tensor] = {}
        self._update_names: dict[str, tuple[str, ...]] = {}
        self._update_buffers: dict[tuple[str, str], torch.Tensor] = {}
        self._base_handles: list[RemovableHandle] = []
        self._kind_handles: dict[str, list[RemovableHandle]] = {}
        self._want_gradients: list[str] = []
        self._wanted: frozenset[str] = frozenset()
        self._closed = False

        self._base_handles.append(model.register_forward_pre_hook(self._on_forward_start))
        self._base_handles.append(model.register_forward_hook(self._on_forward_end))
        if optimizer is not None:
            self._base_handles.append(optimizer.register_step_pre_hook(self._on_optimizer_pre))
            self._base_handles.append(optimizer.register_step_post_hook(self._on_optimizer_post))
        message_bus.exporter = self
        try:
            for subscriber in message_bus.subscribers:
                for subscription in subscriber.subscriptions:
                    self.check_kinds(subscription.kinds)
        except ValueError:
            self.close()
            raise
        self._sync_hooks()

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
        self._update_names.clear()
        self._update_buffers.clear()
        if self.message_bus.exporter is self:
            self.message_bus.exporter = None
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def check_kinds(self, kinds: Iterable[str]) -> None:
        """Raise ``ValueError`` if this Exporter cannot publish one of ``kinds``."""
        needs_optimizer = sorted(k for k in kinds if k in _UPDATE_KINDS)
        if needs_optimizer and self.optimizer is None:
            raise ValueError(
                f"Kinds {needs_optimizer} need the optimizer: pass Exporter(model, optimizer=...)"
            )

    # ----------------------------------------------------------------- hooks
    def _sync_hooks(self) -> None:
        """Register hooks for the kinds now subscribed, remove those for kinds no longer wanted."""
        if self._closed:
            return
        wanted = self._wanted = self.message_bus.subscribed_kinds()
        # with an optimizer, parameter gradients are read in its pre-step hook (one Python call
        # per step); without one, each parameter gets a post-accumulate-grad hook
        per_param = self.optimizer is None
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
            self._update_names.clear()
            self._update_buffers.clear()
        for group, on in groups.items():
            registered = group in self._kind_handles
            if on and not registered:
                self._kind_handles[group] = self._register(group)
            elif registered and not on:
                for handle in self._kind_handles.pop(group):
                    handle.remove()

    def _register(self, group: str) -> list[RemovableHandle]:
        handles = []
        for named in self.modules.values():
            if group == "forward":
                handles.append(named.module.register_forward_hook(partial(self._on_layer, named)))
            else:
                param = getattr(named.module, _GRADIENT_KINDS[group], None)
                if isinstance(param, nn.Parameter):
                    hook = partial(self._on_gradient, group, named)
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
        if not self._is_training_pass():
            self._pass_tag = self._probe_tag or EVAL_TAG
            if args and isinstance(args[0], torch.Tensor):
                self._publish_tensor_meta("input_data", args[0], self._pass_tag)
            return
        self._pass_tag = DEFAULT_TAG
        if not (self._step_open and self.optimizer is not None and not self._stepped):
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
        self._stepped = False
        if not self._epoch_open:
            self._epoch_open = True
            self.train_step = 0
            self._publish_meta("epoch_started")
        self._publish_meta("batch_started")
        for kind in self._want_params:
            attr = _PARAM_KINDS[kind]
            found = []
            for name, named in self.modules.items():
                param = _tensor_attr(named.module, attr)
                if param is not None:
                    found.append((name, named, param))
            self._publish_layers(kind, found)

    def _finish_step(self) -> None:
        if self._step_open:
            self._step_open = False
            self._publish_meta("batch_finished")

    def _on_forward_end(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._publish_tensor_meta("network_output", output, self._pass_tag)

    def _on_layer(
        self, named: NamedModule, module: nn.Module, args: tuple[Any, ...], output: Any
    ) -> None:
        tag = self._pass_tag
        is_tensor = isinstance(output, torch.Tensor)
        if self._want_activations and self._due("activations", named.name, tag):
            self._emit_layer("activations", named, output.detach() if is_tensor else output, tag)
        if self._want_layer_gradients and tag == DEFAULT_TAG and is_tensor and output.requires_grad:
            output.register_hook(partial(self._on_layer_gradient, named))

    def _on_layer_gradient(self, named: NamedModule, grad: torch.Tensor) -> None:
        if self._due("layer_gradients", named.name):
            self._emit_layer("layer_gradients", named, grad.detach(), DEFAULT_TAG)

    def _on_gradient(self, kind: str, named: NamedModule, param: torch.Tensor) -> None:
        if param.grad is not None and self._due(kind, named.name):
            self._emit_layer(kind, named, param.grad.detach(), DEFAULT_TAG)

    def _on_optimizer_pre(self, optimizer: torch.optim.Optimizer, *args: Any) -> None:
        for kind in self._want_gradients:
            attr = _GRADIENT_KINDS[kind]
            found = []
            for name, named in self.modules.items():
                param = _tensor_attr(named.module, attr)
                if param is not None and param.grad is not None:
                    found.append((name, named, param.grad))
            self._publish_layers(kind, found)
        bus = self.message_bus
        for kind in self._want_updates:
            attr = _UPDATE_KINDS[kind]
            params = []
            for name, named in self.modules.items():
                param = _tensor_attr(named.module, attr)
                if param is not None and param.requires_grad:
                    params.append((name, param))
            # the layers whose update is published at the step's end (see _on_optimizer_post)
            names = self._update_names[kind] = tuple([name for name, _ in params])
            if not bus.will_process_any(kind, names):
                continue
            for name, param in params:
                # an update every subscription would skip (subsampling) is not computed
                if bus.will_process(kind, name):
                    key = (name, kind)
                    self._update_before[key] = self._snapshot(key, param)

    def _snapshot(self, key: tuple[str, str], param: torch.Tensor) -> torch.Tensor:
        """A copy of ``param`` in a buffer kept per parameter (no allocation per step)."""
        buffer = self._update_buffers.get(key)
        if buffer is None or (buffer.shape, buffer.dtype, buffer.device) != (
            param.shape,
            param.dtype,
            param.device,
        ):
            buffer = self._update_buffers[key] = torch.empty_like(param, requires_grad=False)
        return buffer.copy_(param.detach())

    def _on_optimizer_post(self, optimizer: torch.optim.Optimizer, *args: Any) -> None:
        for kind in self._want_updates:
            attr = _UPDATE_KINDS[kind]
            found: list[tuple[str, NamedModule, torch.Tensor | None]] = []
            for name in self._update_names.pop(kind, ()):
                named = self.modules[name]
                before = self._update_before.pop((name, kind), None)
                param = _tensor_attr(named.module, attr)
                if param is None:
                    continue
                # without a snapshot nobody looks at the update: it is published without data;
                # with one, the update is written into the snapshot's buffer (no allocation)
                update = None if before is None else torch.sub(param.detach(), before, out=before)
                found.append((name, named, update))
            self._publish_layers(kind, found)
        self._stepped = True
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
        try:
            return self.modules[name]
        except KeyError:
            raise ValueError(
                f"Unknown layer {name!r}; this Exporter tracks {list(self.modules)}"
            ) from None

    def freeze(self, name: str) -> None:
        """Stop training layer ``name``: its parameters and its buffers stop changing.

        Its parameters lose ``requires_grad`` and their gradients; optimizers skip parameters
        whose ``grad`` is None, so momentum and weight decay no longer move them. The layer and
        its submodules run in eval mode in every forward pass (a forward pre-hook sets their
        ``training`` flag, so ``model.train()`` does not undo it): a BatchNorm uses its running
        statistics and no longer updates them (``running_mean``, ``running_var``,
        ``num_batches_tracked``), dropout is off. Publishes ``layer_frozen`` with the layer's
        name.

        Raises:
            ValueError: for an unknown layer, or if nothing in the model would still train.
        """
        named = self._layer(name)
        if name in self._frozen:
            return
        params = list(named.module.parameters())
        ids = {id(p) for p in params}
        if not any(p.requires_grad and id(p) not in ids for p in self.model.parameters()):
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
                _hold_eval, prepend=True
            )
        self._frozen.append(name)
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
        self._frozen.remove(name)

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
