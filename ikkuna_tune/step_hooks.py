"""The Exporter's hot path: the hooks that turn each training step into messages on the bus.

:class:`StepHooks` holds what runs inside the model's forward and backward passes and around
``optimizer.step()``: counting steps and epochs, registering hooks only for the kinds some
subscriber wants, asking the bus whether a message is due before building it (subsampling), and
taking weight updates into buffers kept per parameter. The public face of it is
:class:`~ikkuna_tune.exporter.Exporter`, which sets up the state declared here.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from itertools import repeat
from operator import is_
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ikkuna_tune import keys
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.compiled_taps import TracedLayerHook, tap_gradient
from ikkuna_tune.layers import (
    CopySafeHook,
    at_path,
    first_tensor,
    layer_tensor,
    output_tensor,
    shared_path,
    tensor_path,
    unwrapped,
    view_root,
    view_roots,
    viewed_path,
)
from ikkuna_tune.messages import (
    CLOSURE_TAG,
    DEFAULT_TAG,
    EVAL_TAG,
    SKIPPED_TAG,
    LayerBatch,
    ModuleMessage,
    NamedModule,
    NetworkMessage,
)
from ikkuna_tune.parameters import Entry, gradients, tensor_attr, tensor_attrs
from ikkuna_tune.unattached import warn_unattached

__all__ = [
    "CLOSURE_TAG",
    "EVAL_TAG",
    "GRADIENT_KINDS",
    "PARAM_KINDS",
    "SKIPPED_TAG",
    "UPDATE_KINDS",
    "StepHooks",
]

#: The role ('weight' or 'bias') of the parameter each per-parameter kind is about.
PARAM_KINDS = {
    "weights": "weight",
    "biases": "bias",
    "weight_gradients": "weight",
    "bias_gradients": "bias",
    "weight_updates": "weight",
    "bias_updates": "bias",
}
UPDATE_KINDS = {"weight_updates": "weight", "bias_updates": "bias"}
GRADIENT_KINDS = {"weight_gradients": "weight", "bias_gradients": "bias"}
#: The keys of a network-wide message.
_NETWORK_KEYS: tuple[None] = (None,)


logger = logging.getLogger(__name__)

#: an optimizer's steps again, with no step in which every optimizer that stepped before
#: stepped, after which those that stopped stepping no longer count in a training step
_RESTEPS_BEFORE_RELEARN = 64

#: a parameter, a weak reference to its gradient (None without one) and that gradient's version
GradMark = tuple[torch.Tensor, "weakref.ref[torch.Tensor] | None", int]

_autograd_node: Callable[[], object] | None = getattr(torch._C, "_current_autograd_node", None)


_functorch_level: Callable[[], object] | None = getattr(
    getattr(torch._C, "_functorch", None), "maybe_current_level", None
)


def _in_transform() -> bool:
    """Whether a ``torch.func`` transform (``vmap``, ``grad``: per-sample gradients over
    ``functional_call``) runs this call: its tensors are wrapped (batched per sample, or
    tracked by the transform), not the step's values, and have no storage to read."""
    return _functorch_level is not None and _functorch_level() is not None


def _in_backward() -> bool:
    """Whether autograd's backward pass is running this call: a layer called then is being
    recomputed (activation checkpointing re-runs the forward of a checkpointed part inside
    the backward pass), and its call is not a new forward pass."""
    return _autograd_node is not None and _autograd_node() is not None


#: Parameters at least this large are subtracted one at a time (one pass over memory); smaller
#: ones in two multi-tensor passes (where a Python call per tensor costs more than a pass).
_LARGE = 1 << 16


def _subtract_into(befores: list[torch.Tensor], afters: list[torch.Tensor]) -> None:
    """``before <- after - before`` for each pair, in the ``before`` buffers (no allocation)."""
    small_b, small_a = [], []
    with torch.no_grad():
        for before, after in zip(befores, afters):
            if before.numel() >= _LARGE:
                torch.sub(after, before, out=before)
            else:
                small_b.append(before)
                small_a.append(after)
        if small_b:  # negation and sum are exact: the same numbers as a subtraction
            torch._foreach_neg_(small_b)
            torch._foreach_add_(small_b, small_a)


def _last_graded(optimizer: torch.optim.Optimizer, with_grad: bool = False) -> torch.Tensor | None:
    """``optimizer``'s last parameter that requires grad and has a gradient (None if none has
    one, with ``with_grad``; else then its last that requires grad)."""
    fallback = None
    for group in reversed(optimizer.param_groups):
        for param in reversed(group["params"]):
            if param.requires_grad:
                if param.grad is not None:
                    return param
                if fallback is None:
                    fallback = param
    return None if with_grad else fallback


def _present(
    entries: Sequence[Entry], tensors: Sequence[torch.Tensor | None]
) -> tuple[Sequence[Entry], Sequence[torch.Tensor]]:
    """The entries whose tensor is not ``None``, and their tensors (the lists themselves when
    every tensor is there, the common case: no copy)."""
    if not any(map(is_, tensors, repeat(None))):
        return entries, tensors  # type: ignore[return-value]
    pairs = [(e, t) for e, t in zip(entries, tensors) if t is not None]
    return [e for e, _ in pairs], [t for _, t in pairs]  # type: ignore[misc]


#: a compiled model's gradient tap names the layer's call as ``layer number * _TAP_CALLS + call``
_TAP_CALLS = 1 << 32
#: Half-precision parameters' updates are kept in float32: the difference of two bfloat16
#: (or float16) values is a float32 number (exactly, unless their exponents differ by more than
#: 16), but rounds to 8 (or 11) bits in their own dtype.
_UPDATE_DTYPES = {torch.float16: torch.float32, torch.bfloat16: torch.float32}


def _call_in_pass(compiled_call: int, pattern: tuple[int, tuple[int, ...]]) -> int:
    """The number in its forward pass of a layer's ``compiled_call``-th compiled call, given
    where the layer's eager calls fall (``pattern``: see ``StepHooks._call_patterns``).

    >>> _call_in_pass(1, (0, ())), _call_in_pass(1, (1, ())), _call_in_pass(2, (0, (1,)))
    (1, 2, 3)
    """
    first, marks = pattern
    return compiled_call + first + sum(1 for before in marks if before < compiled_call)


def _update_dtype(param: torch.Tensor) -> torch.dtype:
    """The dtype of ``param``'s update (and of the snapshot it is computed in)."""
    return _UPDATE_DTYPES.get(param.dtype, param.dtype)


def _fits(buffer: torch.Tensor | None, param: torch.Tensor) -> bool:
    """Whether ``buffer`` can hold ``param``'s update (see :meth:`StepHooks._buffer_like`)."""
    return (
        buffer is not None
        and buffer.shape == param.shape
        and buffer.dtype == _update_dtype(param)
        and buffer.device == param.device
    )


class StepHooks:
    """The hook handlers and per-step publishing of an Exporter (see the module docstring).

    Every attribute below is set by :class:`~ikkuna_tune.exporter.Exporter`'s constructor.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from ikkuna_tune.exporter import Exporter
        >>> from ikkuna_tune.subscribers import CallbackSubscriber
        >>> model, seen = nn.Linear(2, 1), []
        >>> exporter = Exporter(model)
        >>> def note(message):
        ...     seen.append((message.tag, message.global_step))
        >>> _ = CallbackSubscriber(["network_output"], note, exporter.message_bus, tag=None)
        >>> for _ in range(2):
        ...     _ = model(torch.ones(1, 2))  # a training forward pass: a new step
        >>> _ = model.eval()(torch.ones(1, 2))  # an eval forward pass: no step
        >>> seen, exporter.global_step, exporter.steps_started
        ([('default', 0), ('default', 1), ('eval', 1)], 1, 2)
    """

    model: nn.Module
    optimizers: tuple[torch.optim.Optimizer, ...]
    message_bus: MessageBus
    modules: dict[str, NamedModule]
    global_step: int
    train_step: int
    epoch: int
    _output_fn: Callable[[Any], torch.Tensor] | None
    _output_path: tuple[Any, ...] | None  # where in the model's output the scores lie
    _output_settled: bool  # whether a wrapped loss has told where its scores lie
    _scored_path: tuple[Any, ...] | None  # another element a wrapped loss scored, not settled
    #: what test accuracy reads otherwise than the first loss that scored a part of the
    #: output (warned of if the rule stands)
    _unplaced: str | None
    _pending_output: Any  # the latest training output of a model whose output is no tensor
    #: the latest training output of a model whose output is one tensor, until a loss of
    #: class labels scores it or a part of it (weakly: it must not outlive its step)
    _latest_output: weakref.ref[torch.Tensor] | None
    _part_checked: bool  # whether a loss of class labels scored the one-tensor output
    _pending_seen: bool  # whether a wrapped loss has scored since that output
    _wrapped_losses: int
    _steps_started: int
    _step_open: bool
    #: the gradients as the open step began (:meth:`_grad_marks`; with optimizers)
    _step_marks: list[GradMark]
    #: an accumulation step carried over an epoch's end: its epoch, its number in it and the
    #: gradients as that epoch ended (None: no step carried)
    _carried: tuple[int, int, list[GradMark]] | None
    #: per watched optimizer, a parameter that had a gradient when it last stepped
    _graded: list[torch.Tensor | None]
    _stepped: set[int]
    #: the loop's cycle (see :meth:`_opens_step`): the passes an optimizer stepped on in a
    #: step of every optimizer (None: not known yet), those of the open step, whether a
    #: training pass ran since the last optimizer step, and steps again since a full cycle
    _passes_per_step: int | None
    _stepped_passes: int
    _passed_since_step: bool
    _resteps: int
    _stepping: int  # optimizer steps under way (a wrapper's step runs its inner one's)
    _watched_steps: int  # watched optimizer steps begun so far
    _unwatched_running: list[tuple[torch.optim.Optimizer, int]]
    _epoch_open: bool
    _pass_tag: str
    _probe_tag: str | None
    _passes: int
    _current_pass: int
    _frozen: dict[str, None]
    _update_before: dict[tuple[str, str], torch.Tensor]
    _update_buffers: dict[tuple[str, str], torch.Tensor]
    _zero_updates: dict[tuple[str, str], torch.Tensor]
    _repeats: dict[tuple[str, int], NamedModule]
    _kind_handles: dict[str, list[RemovableHandle]]
    _want_gradients: list[str]
    _wanted: frozenset[str]
    _closed: bool
    _role_layers: dict[str, list[Entry]]
    _optimizer_layers: list[dict[str, list[Entry]]]
    _optimizer_names: list[Mapping[str, tuple[str, ...]]]
    _scaler: Any
    _scale_version: int
    _traced: list[tuple[NamedModule, torch.Tensor]]
    #: whether the last forward pass of the model ran in eval mode with gradients enabled
    _eval_grad_pass: bool = False
    #: whether a training pass was made in the open step
    _trained_in_step: bool = False
    #: weak references to what the outputs of the open step's training passes are views of
    #: (with ``output_fn``, its tensor too): after an eval-mode pass with gradients (a logging
    #: look without ``no_grad``), a loss that scores one of them is the step's, any other the
    #: look's own
    _trained_outputs: list[weakref.ref[torch.Tensor]]
    #: the same of the eval-mode passes with gradients made in the open step (the looks)
    _look_outputs: list[weakref.ref[torch.Tensor]]
    #: whether the warning about optimizer steps after such passes has been given
    _warned_eval_step: bool = False
    _warned_nested: bool = False
    _warned_recomputed: bool = False
    _warned_transform: bool = False
    _warned_whole_checkpoint: bool = False
    _warned_regradient: bool = False
    _warned_restep: bool = False
    #: whether this step's labels were given (publish_labels, a wrapped loss), and whether the
    #: warning about a step without them, where a subscriber needs them, has been given
    _labels_given: bool = False
    #: the same for this step's loss (publish_loss, a wrapped loss)
    _loss_given: bool = False
    _warned_no_loss: bool = False
    _warned_no_labels: bool = False
    _warned_early_labels: bool = False  # labels published before their step's forward pass
    #: per layer module, its calls in this training pass that ran without gradients (inside a
    #: reentrant activation checkpoint), whose gradients are tapped when recomputed
    _deferred_gradients: dict[nn.Module, list[NamedModule]]
    #: the tracked layers by number, as the gradient taps of a compiled model name them
    _tap_layers: list[NamedModule]
    #: per layer with compiled calls in the training passes of this step (since the last step
    #: whose passes had a backward pass), where its eager calls fall among them (see
    #: :meth:`_call_pattern`): how many come before the first compiled call, and for each later
    #: one the compiled calls before it; ``(0, ())`` for none
    _call_patterns: dict[str, tuple[int, tuple[int, ...]]]
    #: layers whose patterns differ between those passes: their compiled calls' gradients
    #: cannot be named, and are left out
    _unsure_calls: set[str]
    _warned_unsure_calls: bool = False
    #: whether a compiled call's gradient arrived since the orders were last forgotten
    _traced_backward: bool = False
    #: whether the last training pass of a compiled model was an optimizer's further closure
    #: call (whose gradients no training step publishes)
    _traced_closure: bool = False
    _receiver: int
    _recompile_allowed: bool

    #: per tracked layer, the call counter of its forward hook (see :meth:`_register`): the
    #: forward pass of its last call, its eager calls in it, and for each of them how many of
    #: the layer's compiled calls ran before it
    _layer_calls: dict[str, list[int]]
    #: the number of forward passes when the forward hooks were registered
    _forward_since: int = 0
    _group_counts: list[int]
    _pass_kinds: set[tuple[bool, bool]]
    _modes_pending: set[str]  # (see LayerFreezing)

    if TYPE_CHECKING:  # provided by LayerFreezing and Exporter

        def _release_retrained(self) -> None: ...

        def _reassign_parameters(self) -> None: ...

        def _judge_unwatched(self) -> None: ...

        def _read_held_modes(self) -> None: ...

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
            **{kind: per_param and kind in wanted for kind in GRADIENT_KINDS},
        }
        self._want_gradients = [] if per_param else [k for k in GRADIENT_KINDS if k in wanted]
        self._want_activations = "activations" in wanted
        self._want_layer_gradients = "layer_gradients" in wanted
        self._want_params = [k for k in ("weights", "biases") if k in wanted]
        self._want_updates = [k for k in UPDATE_KINDS if k in wanted]
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
            self._layer_calls = {}
            self._forward_since = self._passes
            self._tap_layers = list(self.modules.values())
            self._call_patterns = {}
            self._unsure_calls = set()
            root = unwrapped(self.model)
            for number, named in enumerate(self._tap_layers):
                # [the forward pass of the last call (0: outside one, -1: never), calls in it,
                # then per call the compiled calls before it]
                calls = self._layer_calls[named.name] = [-1, 0]
                hook = TracedLayerHook(
                    partial(self._on_layer, named, calls),
                    partial(self._trace_layer, named, number, root),
                )
                # the model as its own layer: its activations before its network_output
                prepend = named.module is root
                handles.append(named.module.register_forward_hook(hook, prepend=prepend))
            return handles
        for _name, named, attr in self._role_layers[GRADIENT_KINDS[group]]:
            param = named.module._parameters.get(attr)
            if isinstance(param, nn.Parameter):
                hook = CopySafeHook(self._on_gradient, group, named)
                handles.append(param.register_post_accumulate_grad_hook(hook))
        return handles

    # Publishing on the hot path: ``_due`` first (it counts a message that subsampling thins
    # out, without building it), then ``_emit_*`` with the data. Only built-in kinds pass here.
    def _due(self, kind: str, key: str | None, tag: str = DEFAULT_TAG) -> bool:
        keys = _NETWORK_KEYS if key is None else (key,)
        return not self.message_bus.skip_all(kind, keys, tag, self.global_step)

    def _publish_layers(
        self, kind: str, entries: Sequence[Entry], tensors: Sequence[torch.Tensor | None]
    ) -> None:
        """Publish one training-step message of ``kind`` per layer of ``entries`` with its
        tensor (detached; ``None``: a message without data): as one batch when every
        subscription of ``kind`` takes batches (no subsampling then), else one by one; a step
        that subsampling skips costs one :meth:`MessageBus.skip_all`."""
        bus, step = self.message_bus, self.global_step
        if bus.takes_batches(kind) and not any(map(is_, tensors, repeat(None))):
            if entries:
                modules = [named for _, named, _ in entries]
                # parameters are detached; gradients and update buffers need not be
                data = [t.detach() if t.requires_grad else t for t in tensors]  # type: ignore[union-attr]
                step_of = (DEFAULT_TAG, step, self.train_step, self.epoch)
                bus.publish_batch(LayerBatch(kind, *step_of, modules, data))
            return
        if bus.skip_all(kind, tuple([name for name, _, _ in entries]), DEFAULT_TAG, step):
            return
        for (name, named, _), data in zip(entries, tensors):
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
        if _in_backward():  # the model's forward recomputed for a checkpointed backward
            return
        if _in_transform():
            self._skip_transformed()
            return
        self._publish_traced()
        self._recompile_allowed = False
        self._pass_kinds.add((self.model.training, torch.is_grad_enabled()))
        self._passes += 1
        self._current_pass = self._passes
        training = self._is_training_pass()
        self._eval_grad_pass = not training and self._probe_tag is None and torch.is_grad_enabled()
        if not training:
            self._pass_tag = self._probe_tag or EVAL_TAG
            if self.model.training and not self._warned_whole_checkpoint:
                self._warn_if_checkpointed_whole(args)
            if args and isinstance(args[0], torch.Tensor):
                self._publish_tensor_meta("input_data", args[0], self._pass_tag)
            return
        self._pass_tag = DEFAULT_TAG
        if self._modes_pending:  # (before an unfreeze at this step's start needs them)
            self._read_held_modes()
        # an optimizer step holds no training pass but its closure's (which restores the count
        # after it): a step that raised (its post-hook never ran) is over by now
        self._stepping = 0
        if self._unwatched_running:
            self._judge_unwatched()
        if self._opens_step() or not self.optimizers:
            self._start_step(upcoming=True)
        elif not self._epoch_open:  # an accumulation step carried over an epoch's end
            self._go_on_in_new_epoch(upcoming=True)
        self._trained_in_step = True
        self._passed_since_step = True
        if args and isinstance(args[0], torch.Tensor):
            self._publish_tensor_meta("input_data", args[0], DEFAULT_TAG)

    def _opens_step(self) -> bool:
        """Whether a training pass now starts a new step, given optimizers: a pass before any
        optimizer stepped belongs to the open step (gradient accumulation), unless the scaler
        has been updated since (then the step was skipped). Of several optimizers, a step
        holds as many passes followed by an optimizer's step as the loop's cycle showed
        (:meth:`_learn_cycle`): one where the optimizers step on the same pass (parameter
        groups, one stepping every k-th iteration), two where they step in turn with a
        forward pass before each (a GAN's through the whole model); until the loop showed it,
        a step waits for every optimizer."""
        if not self._step_open or self._scaled():
            return True
        if not self._stepped:
            return False
        per_step = self._passes_per_step
        return per_step is not None and self._stepped_passes >= per_step

    def _forget_cycle(self) -> None:
        """Know nothing of the loop's cycle (a new set of optimizers)."""
        #: passes followed by an optimizer's step in a step, as the loop showed (None: not yet)
        self._passes_per_step: int | None = None
        self._stepped_passes = 0  # such passes in the open step
        self._passed_since_step = False  # a training pass since the last optimizer step
        self._resteps = 0

    def _learn_cycle(self, index: int) -> None:
        """Optimizer ``index`` is about to step: note what it shows of the loop's cycle. One
        that steps again in the step before every watched optimizer stepped (a critic's
        steps, or a watched optimizer that never steps) shows that steps of one pass each
        are the cycle; so many times in a row (:data:`_RESTEPS_BEFORE_RELEARN`) with no step
        in which every optimizer stepped that the others look to have stopped stepping (a new
        stage's optimizer, watched beside the old one), likewise, with a warning."""
        if index not in self._stepped:
            return
        self._resteps += 1
        if self._passes_per_step is None:
            self._passes_per_step = 1
        elif self._resteps > _RESTEPS_BEFORE_RELEARN and self._passes_per_step > 1:
            self._passes_per_step, self._resteps = 1, 0
            logger.warning(
                "Watched optimizers %s have not stepped in %d steps of the others: a training "
                "step ends at each optimizer step from now on (watch only the optimizers of a "
                "training stage: exporter.set_optimizers)",
                sorted(set(range(len(self.optimizers))) - self._stepped),
                _RESTEPS_BEFORE_RELEARN,
            )

    def _grad_marks(self, holding: bool = False) -> list[GradMark]:
        """Per watched optimizer, a parameter that receives gradients (the last that had one
        when the optimizer last stepped, :meth:`_note_graded`; before that, its last parameter
        that requires grad and has one, else its last that requires grad), with a weak
        reference to its gradient (None without one) and that gradient's version counter. A
        backward pass changes them (a new gradient, or one added to in place), and so does
        ``zero_grad()`` (None, or zeroed in place): comparing marks (:meth:`_grads_changed`)
        tells whether gradients changed, reading no value. A few Python calls, taken at each
        step's start. ``holding``: the last parameter that holds a gradient now, where one
        does (whether the loop clears the gradients later shows on it: a parameter without a
        gradient stays without one as they are cleared to None)."""
        marks = []
        graded = self._graded
        for index, optimizer in enumerate(self.optimizers):
            param = _last_graded(optimizer, with_grad=True) if holding else None
            if param is None:
                param = graded[index] if index < len(graded) else None
            if param is None or not param.requires_grad:
                param = _last_graded(optimizer)
            if param is not None:
                grad = param.grad
                ref = None if grad is None else weakref.ref(grad)
                marks.append((param, ref, 0 if grad is None else grad._version))
        return marks

    def _note_graded(self, index: int, optimizer: torch.optim.Optimizer) -> None:
        """Keep optimizer ``index``'s last parameter with a gradient as it steps: a parameter
        that receives gradients, for :meth:`_grad_marks` (a last head the steps do not use, a
        second task's, never gets one). A reversed scan that stops at the first found."""
        graded = self._graded
        while len(graded) <= index:
            graded.append(None)
        found = _last_graded(optimizer, with_grad=True)
        if found is not None:
            graded[index] = found

    @staticmethod
    def _grads_changed(marks: list[GradMark]) -> bool:
        """Whether the gradient of a parameter of ``marks`` (:meth:`_grad_marks`) changed since
        they were taken; a parameter frozen since (no longer requiring grad: its gradient was
        let go) is left out."""
        for param, ref, version in marks:
            if not param.requires_grad:
                continue
            grad = param.grad
            if ref is None:
                if grad is not None:
                    return True
            elif ref() is None or grad is not ref() or grad._version != version:
                return True  # (a gradient let go since: freed, or held elsewhere)
        return False

    def _accumulating(self) -> bool:
        """Whether the open step is a gradient accumulation under way: training passes made,
        gradients computed since the step began (a backward pass), and no optimizer stepped
        (nor the scaler skipped the step). An epoch that ends now leaves it open: the passes
        before one optimizer step are one step, whichever epoch they fall in
        (:meth:`Exporter.epoch_finished`). A training-mode pass without a backward (a loss
        logged at the epoch's end, the last step's gradients still held) is a step of its own."""
        marks = self._step_marks
        return (
            bool(self.optimizers)
            and self._step_open
            and not self._stepped
            and not self._scaled()
            # the marked parameters' gradients changed; or the step began with none of them
            # holding one (``zero_grad()`` to None clears them all) and some parameter holds
            # one now: a backward ran that did not reach them (a multi-task model's heads
            # taken in turn, a block skipped at random)
            and (self._grads_changed(marks) or all(ref is None for _, ref, _ in marks))
            and self._holds_gradients()
        )

    def _holds_gradients(self) -> bool:
        """Whether a parameter of the watched optimizers has a gradient (a Python check per
        parameter, at an epoch's end)."""
        params = (p for opt in self.optimizers for g in opt.param_groups for p in g["params"])
        return any(p.grad is not None for p in params)

    def _carry_over_epoch_end(self) -> None:
        """Keep the open step, an accumulation under way, across the epoch's end: noted with
        its epoch and number, in case it ends without going on, and with its gradients as the
        epoch ended (after the epoch end's freezes), to tell whether the loop cleared them."""
        self._carried = (self.epoch, self.train_step, self._grad_marks(holding=True))

    def _go_on_in_new_epoch(self, upcoming: bool = False) -> None:
        """A training pass in the epoch after one that ended during a gradient accumulation
        (:meth:`_carry_over_epoch_end`): the accumulation goes on, as that epoch's first step,
        unless its gradients were cleared since (``zero_grad()`` at the epoch's start, in
        place or to None: the loop dropped the passes before the epoch's end, which then are a
        step of their own, without an update, ended under the epoch they were in). Any
        in-place change of the marked gradient in between reads as cleared (a version counter
        cannot tell ``zero_()`` from a clip): clip or unscale before the optimizer steps, not
        between an epoch's end and the next pass."""
        carried = self._carried
        if carried is not None and not self._grads_changed(carried[2]):
            self._carried = None
            self._open_epoch()
        else:
            self._start_step(upcoming)

    def _open_epoch(self) -> None:
        """Open the next epoch: its ``train_step`` counts from 0, ``epoch_started`` published."""
        self._epoch_open = True
        self.train_step = 0
        self._publish_meta("epoch_started")

    def _start_step(self, upcoming: bool = False) -> None:
        """Open the next training step and publish its weights (``upcoming``: called before the
        model's training pass, so that a weight computed in the forward pass, such as a
        spectral norm's, is read as that pass will compute it)."""
        self._finish_step()
        if self._traced_backward:  # the passes before had their backward: a new order may come
            self._traced_backward = False
            self._call_patterns.clear()
            self._unsure_calls.clear()
        if self._steps_started == 0:
            warn_unattached()  # subscribers waiting for messages from no bus
            self._warn_if_unscaled()
        # (judged when the next step starts: labels may come after the optimizer's step)
        if self._steps_started > 0 and not self._labels_given and not self._warned_no_labels:
            self._warn_no_labels()
        if self._steps_started > 0 and not self._loss_given and not self._warned_no_loss:
            self._warn_no_loss()
        if self._steps_started > 0:
            self.global_step += 1
            if self._epoch_open:
                self.train_step += 1
        if self._frozen:  # after the count: the step starting now is the first unfrozen one
            self._release_retrained()
        self._steps_started += 1
        self._step_open = True
        self._labels_given = self._loss_given = False
        self._trained_in_step = False
        self._trained_outputs = []
        self._look_outputs = []
        self._stepped.clear()
        self._stepped_passes = 0
        self._scale_version = self._scale_version_now()
        if self.optimizers:
            self._step_marks = self._grad_marks()
        if not self._epoch_open:
            self._open_epoch()
        self._publish_meta("batch_started")
        for kind in self._want_params:
            entries = self._role_layers[PARAM_KINDS[kind]]
            self._publish_layers(kind, *_present(entries, tensor_attrs(entries, upcoming)))

    def _finish_step(self) -> None:
        self._deferred_gradients.clear()  # the step's backward passes have run
        if self._step_open:
            if self._scaled() and len(self._stepped) < len(self.optimizers):
                self._publish_skipped_updates()
            self._step_open = False
            carried, self._carried = self._carried, None
            if carried is None or self._epoch_open:
                self._publish_meta("batch_finished")
                return
            # a step carried over an epoch's end that ends without going on: in its epoch
            epoch, train_step = self.epoch, self.train_step
            self.epoch, self.train_step = carried[0], carried[1]
            try:
                self._publish_meta("batch_finished")
            finally:
                self.epoch, self.train_step = epoch, train_step

    def _warn_no_labels(self) -> None:
        """Warn (once) that a training step went by without labels while a subscriber needs
        them (train accuracy would otherwise stay missing without a word)."""
        self._warned_no_labels = self._warn_step_without(
            "input_labels", "labels", "exporter.publish_labels(labels)", any_tag=True
        )

    def _warn_no_loss(self) -> None:
        """Warn (once) that a training step went by without its loss while a subscriber of the
        training loss wants it (a LossSubscriber's values would stay missing without a word);
        a subscription to an evaluation's loss alone waits for no training step's."""
        self._warned_no_loss = self._warn_step_without(
            "loss", "its loss", "exporter.publish_loss(loss)", any_tag=False
        )

    def _warn_step_without(self, kind: str, what: str, call: str, any_tag: bool) -> bool:
        """Warn that the training step went by without ``what`` (the messages of ``kind``),
        naming the subscribers that wait for them (of any tag, or of the training tag) and the
        fix. Whether it is settled (judged once: not again at every step)."""
        if kind not in self._wanted or not self.message_bus.wants(kind):
            return False
        needing = sorted(
            {
                type(subscriber).__name__
                for subscriber in self.message_bus.subscribers
                for subscription in getattr(subscriber, "subscriptions", ())
                if kind in subscription.kinds
                and (any_tag or subscription.tag in (None, DEFAULT_TAG))
            }
        )
        if not needing:
            return True
        logger.warning(
            "Training step %d went by without %s, which %s need(s) (%s): compute the loss with "
            "exporter.wrap_loss(loss_fn), or call %s at each step; until then %s publish(es) "
            "nothing",
            self.global_step,
            what,
            ", ".join(needing),
            kind,
            call,
            ", ".join(needing),
        )
        return True

    def _warn_if_unscaled(self) -> None:
        """Warn (at the first training step) that the model trains under float16 autocast, as
        with a ``GradScaler``, while none was passed: a step the scaler skipped would be read as
        gradient accumulation, merged into the next step, without a word."""
        if self._scaler is not None or not self.optimizers:
            return
        param = next(self.model.parameters(), None)
        device = param.device.type if param is not None else "cpu"
        try:
            half = torch.is_autocast_enabled(device)
            half = half and torch.get_autocast_dtype(device) == torch.float16
        except RuntimeError:  # a device type without autocast
            return
        if half:
            logger.warning(
                "The model trains under float16 autocast but the Exporter was given no "
                "GradScaler: if one scales the loss, pass it (ik.watch(model, optimizer, "
                "scaler=scaler)). Without it a step the scaler skips (inf or NaN gradients) is "
                "read as gradient accumulation: its loss, labels and gradients are merged into "
                "the next step's, and the gradients of the layers' outputs are the scaled ones"
            )

    # A GradScaler that finds inf or NaN gradients skips optimizer.step(), so no optimizer hook
    # fires. Its update() (once per step, after step()) rewrites its scale tensor in place, which
    # bumps the tensor's version counter: a step whose optimizers did not all step although the
    # scale was updated was skipped. Reading the counter is no host synchronisation.
    def _scale_version_now(self) -> int:
        scale = getattr(self._scaler, "_scale", None)
        return scale._version if isinstance(scale, torch.Tensor) else 0

    def _scaled(self) -> bool:
        """Whether the scaler was updated since this step started."""
        return self._scaler is not None and self._scale_version_now() != self._scale_version

    def _publish_skipped_updates(self) -> None:
        """The updates of the optimizers a GradScaler skipped: exactly zero, under
        :data:`SKIPPED_TAG` (subscriptions of training steps do not count them)."""
        bus = self.message_bus
        for index, layers in enumerate(self._optimizer_layers):
            if index in self._stepped:
                continue
            for kind in self._want_updates:
                if not bus.wants(kind, SKIPPED_TAG):
                    continue
                for name, named, attr in layers[UPDATE_KINDS[kind]]:
                    param = tensor_attr(named.module, attr)
                    if param is not None:
                        zero = self._zero_update((name, kind), param)
                        self._emit_layer(kind, named, zero, SKIPPED_TAG)

    def _on_forward_end(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if _in_backward() or _in_transform():
            return
        self._publish_traced()
        self._current_pass = 0
        tag = self._pass_tag
        chosen = None  # the output tensor output_fn picks, once per pass
        if tag == DEFAULT_TAG and self._step_open:  # a training pass: what a loss may score
            roots = view_roots(output)
            if self._output_fn is not None and not isinstance(output, torch.Tensor):
                try:
                    chosen = output_tensor(self.model, output, self._output_fn, self._output_path)
                    roots.append(view_root(chosen))
                except ValueError:  # (no tensor there: nothing a loss could score)
                    pass
            self._trained_outputs.extend(weakref.ref(t) for t in roots)
        elif self._eval_grad_pass and self._trained_in_step:
            self._look_outputs.extend(weakref.ref(t) for t in view_roots(output))
        if not self._output_settled:
            self._note_output(output, tag)
        elif not self._part_checked and tag == DEFAULT_TAG and self._wrapped_losses:
            if isinstance(output, torch.Tensor):  # (see _note_part_scored)
                self._latest_output = weakref.ref(output)
        if "network_output" in self._wanted and self._due("network_output", None, tag):
            if chosen is not None:
                output = chosen
            elif self._output_fn is not None or not isinstance(output, torch.Tensor):
                output = output_tensor(self.model, output, self._output_fn, self._output_path)
            self._emit_meta("network_output", output.detach(), tag)

    def _note_output(self, output: Any, tag: str) -> None:
        """Learn which tensor of a model's output holds its scores: the one a wrapped loss
        scores (:meth:`_note_scores`), itself or through a view of all of it
        (``logits.squeeze(1)``). Where the losses of a step scored another tensor than the
        first (``(features, logits)``) and never the first, the next forward pass settles on
        that one: ``network_output`` and test accuracy read it from then on."""
        if self._scored_path is not None:
            self._output_path, self._scored_path = self._scored_path, None
            self._output_settled, self._pending_output = True, None
            self._pending_seen = False
            logger.info(
                "The wrapped loss scores the element %s of %s's output, not its first tensor: "
                "network_output and test accuracy use that element (pass Exporter(..., "
                "output_fn=...) to choose another)",
                "".join(f"[{key!r}]" for key in self._output_path),
                type(self.model).__name__,
            )
            return
        if self._pending_seen or self._output_fn is not None or isinstance(output, torch.Tensor):
            # nothing to learn, or the losses of a step scored the first tensor or only
            # tensors computed from the output: the rule stands, and the output is let go (it
            # holds the step's graph)
            self._output_settled, self._pending_output = True, None
            if self._output_fn is None:
                self._warn_unplaced()
                if isinstance(output, torch.Tensor) and tag == DEFAULT_TAG:
                    self._latest_output = weakref.ref(output)  # (see _note_part_scored)
        elif tag == DEFAULT_TAG and self._wrapped_losses:
            self._pending_output = output  # (held until a loss scores it, then let go)

    def _note_scores(self, scores: torch.Tensor, learn: bool = True) -> None:
        """A wrapped loss scored ``scores``: where in the latest training output they lie, if
        ``learn`` (a loss of class labels; any loss tells that the step's losses ran)."""
        pending = self._pending_output
        if pending is None:
            return
        self._pending_seen = True
        if not learn:
            return
        path = tensor_path(pending, scores)
        if path is None:
            # a view of all of an element (logits.squeeze(1), a transpose) is that element:
            # test accuracy reads it as it is (the classes in dimension 1, else last)
            path = viewed_path(pending, scores)
            if path is None:
                self._note_unplaced(pending, scores)
                return  # computed from the output, or a part of it: the rule stands
        if first_tensor(pending) is at_path(pending, path):
            self._output_settled, self._pending_output = True, None  # the rule's choice
            self._scored_path = None
        elif self._scored_path is None:
            self._scored_path = path

    def _note_part_scored(self, scores: torch.Tensor) -> None:
        """A wrapped loss of class labels scored ``scores`` after the output settled: where
        the output is one tensor and ``scores`` are a part of the latest training output
        (``logits[:, :3]`` of 10), warn as :meth:`_note_unplaced` does, once. The output is
        held weakly: once the step let it go there is nothing to compare, and the next
        training output is looked at."""
        output = None if self._latest_output is None else self._latest_output()
        if output is None:
            self._latest_output = None
            return
        if shared_path(output, scores) is None:
            return  # computed from the output (or from something else): keep looking
        self._latest_output, self._part_checked = None, True
        self._note_unplaced(output, scores)
        self._warn_unplaced()

    def _note_unplaced(self, output: Any, scores: torch.Tensor) -> None:
        """Keep, for :meth:`_warn_unplaced`, what test accuracy would read otherwise than the
        loss where the scores are a part of the output: a part of another element than the
        tensor that stands for it (``logits[:, :3]`` of ``(features, logits)``), or some of a
        classifier's ``(N, C)`` scores (``logits[:, :3]`` of 10). Scores computed from the
        output, or another part of the standing tensor (a language model's shifted
        ``logits[:, :-1]``), say nothing of that."""
        standing = first_tensor(output)
        if self._unplaced is not None or standing is None:
            return
        part = shared_path(output, scores)
        if part is None:
            return
        model = type(self.model).__name__
        if at_path(output, part) is not standing:
            self._unplaced = (
                f"The wrapped loss scores a tensor of shape {tuple(scores.shape)}, a part of an "
                f"element of {model}'s output other than its first tensor: network_output and "
                f"test accuracy read that first tensor, of shape {tuple(standing.shape)}, as "
                "the model's scores"
            )
        elif (
            scores.dim() == standing.dim() == 2  # a classifier's head (not a sequence's)
            and scores.shape[0] == standing.shape[0]
            and scores.shape[1] < standing.shape[1]
        ):
            self._unplaced = (
                f"The wrapped loss scores {scores.shape[1]} of the {standing.shape[1]} classes "
                f"(dimension 1) of {model}'s output: test accuracy reads all of them"
            )

    def _warn_unplaced(self) -> None:
        """Warn that the step's losses scored only a part of the output, which test accuracy
        reads otherwise (:meth:`_note_unplaced`)."""
        if self._unplaced is None:
            return
        logger.warning(
            "%s. Pass output_fn= to ik.watch or Exporter to say which scores the output holds",
            self._unplaced,
        )
        self._unplaced = None

    def _repeat(self, named: NamedModule, call: int) -> NamedModule:
        """The layer as the key of its ``call``-th call in one forward pass (``'fc#2'``)."""
        repeat = self._repeats.get((named.name, call))
        if repeat is None:
            repeat = self._repeats[(named.name, call)] = NamedModule(
                keys.call_key(named.name, call), named.module
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
        if _in_backward():  # recomputed for a checkpointed backward: published already
            self._on_recomputed_layer(named, output)
            return
        if _in_transform():
            self._skip_transformed()
            return
        current = self._current_pass
        if current:  # count the calls within one forward pass of the model
            if calls[0] == current:
                calls[1] += 1
            else:
                calls[0] = current
                calls[1] = 1
                if len(calls) > 2:
                    del calls[2:]
            call = calls[1]
            if self._traced:
                # calls of the layer in compiled code of this pass so far (a part of the model
                # left out of compilation, or a graph break, calls it eagerly too): noted for
                # the compiled calls after it (see _publish_traced)
                before = sum(1 for layer, _ in self._traced if layer is named)
                if before:
                    calls.append(before)
                    call += before
            if call > 1:
                named = self._repeat(named, call)
            tag = self._pass_tag
        else:  # a layer called on its own, outside the model's forward pass
            calls[0] = max(calls[0], 0)
            tag = self._outside_tag(module)
            if tag == DEFAULT_TAG and (not self._step_open or self._scaled()):
                # the training loop runs the model's parts (model.encoder, then model.head):
                # their first training call after every optimizer stepped starts the next step
                # (with optimizers that step in turn, as a GAN's do, parts are called between
                # their steps: the step goes on until the last one stepped)
                self._start_step()
            elif tag == DEFAULT_TAG and not self._epoch_open:
                self._go_on_in_new_epoch()  # an accumulation step carried over an epoch's end
        if not isinstance(output, torch.Tensor):
            output = layer_tensor(named, output)
        if output.is_nested:
            self._skip_nested(named)
            return
        if self._want_activations and self._due("activations", named.name, tag):
            self._emit_layer("activations", named, output.detach(), tag)
        if self._want_layer_gradients and tag == DEFAULT_TAG:
            if output.requires_grad:
                output.register_hook(partial(self._on_layer_gradient, named, [0]))
            elif not torch.is_grad_enabled():  # inside a reentrant activation checkpoint
                self._deferred_gradients.setdefault(named.module, []).append(named)

    def _warn_if_checkpointed_whole(self, args: tuple[Any, ...]) -> None:
        """A forward pass in training mode without gradients on an input that requires them is
        what a reentrant activation checkpoint around the whole model runs: said once, since
        its pass is published as an evaluation."""
        if self._probe_tag is not None:
            return
        if args and isinstance(args[0], torch.Tensor) and args[0].requires_grad:
            self._warned_whole_checkpoint = True
            logger.warning(
                "The model ran in training mode without gradients on an input that requires "
                "them: a reentrant activation checkpoint around the whole model "
                "(torch.utils.checkpoint.checkpoint(model, x, use_reentrant=True))? Such a pass "
                "is published as an evaluation (tag 'eval': its activations, output and loss; "
                "no layer_gradients). Checkpoint parts inside the model, or pass "
                "use_reentrant=False, for the pass to count as training"
            )

    def _skip_transformed(self) -> None:
        """A forward pass (or a layer's call) inside a ``torch.func`` transform publishes
        nothing: its tensors are the transform's, per sample. Warned once."""
        if self._warned_transform:
            return
        self._warned_transform = True
        logger.warning(
            "The model runs inside a torch.func transform (vmap/grad, as per-sample gradients "
            "over functional_call compute them): those forward passes publish nothing "
            "(activations, outputs, loss, the weights at the step's start); what the optimizer "
            "steps (gradients, updates) is still published at optimizer.step(). Run an "
            "ordinary forward pass for activations, or a probe (test accuracy, SVCCA)"
        )

    def _on_recomputed_layer(self, named: NamedModule, output: Any) -> None:
        """Tap the gradient of a layer recomputed in the backward pass whose training call ran
        without gradients: a reentrant activation checkpoint (``use_reentrant=True``) runs its
        part under ``torch.no_grad()`` in the forward pass and again, with gradients, in the
        backward pass, where the layer's gradient flows through the recomputed output. Its
        activations were published at the first call.

        The backward pass recomputes checkpointed parts in an order of its own (the last part
        first), so a recomputation cannot be matched to one of several calls of the layer
        named apart (``fc``, ``fc#2``): those calls' gradients are left out, with one warning,
        rather than published under each other's names. Calls of one name (the same call in
        several forward passes before one backward) need no telling apart."""
        waiting = self._deferred_gradients.get(named.module)
        if not waiting:
            return
        if len({n.name for n in waiting}) > 1:
            del self._deferred_gradients[named.module]
            if not self._warned_recomputed:
                self._warned_recomputed = True
                logger.warning(
                    "Layer %r runs more than once inside reentrant activation checkpoints "
                    "(%s): which call a recomputation in the backward pass belongs to cannot be "
                    "told, so those calls publish no layer_gradients (use_reentrant=False "
                    "publishes them all)",
                    named.name,
                    [n.name for n in waiting],
                )
            return
        if not isinstance(output, torch.Tensor):
            output = layer_tensor(named, output)
        if output.requires_grad and not output.is_nested:
            output.register_hook(partial(self._on_layer_gradient, waiting.pop(0), [0]))

    def _skip_nested(self, named: NamedModule) -> None:
        """Leave out a layer's output that is a nested tensor, with one warning per Exporter.

        ``nn.TransformerEncoder`` packs a padded batch into a nested tensor (one sequence per
        sample, each of its own length) in its fast path, taken in eval mode without gradients,
        as in a probe's passes: such an output has no rows per sample to measure, so the pass
        publishes no activations for the layer (a training pass, with gradients, is padded).
        """
        if self._warned_nested:
            return
        self._warned_nested = True
        logger.warning(
            "Layer %r (and any other inside the same nn.TransformerEncoder) returned a nested "
            "tensor (the encoder's fast path, in eval mode without gradients, given a padding "
            "mask): activations of such passes are not published, so a probe (SVCCA, CKA) "
            "has none for those layers; build the encoder with enable_nested_tensor=False to "
            "measure them",
            named.name,
        )

    def _outside_tag(self, module: nn.Module) -> str:
        """The tag of a layer's call outside the model's forward pass (the user runs one part
        of the model on its own): that of a probe running, else a training call when the layer
        is in training mode with gradients enabled, else an evaluation."""
        if self._probe_tag is not None:
            return self._probe_tag
        return DEFAULT_TAG if module.training and torch.is_grad_enabled() else EVAL_TAG

    # Under torch.compile (see ikkuna_tune.compiled_taps). ``_trace_layer`` is what dynamo
    # traces: it reads no counter (a guard on one would recompile every step), only appends to
    # ``_traced``, which is empty whenever a forward pass starts (so the guard on its length
    # holds), and taps the output's gradient of a training pass under the layer's number and
    # the call's number in the pass (both fixed in a traced graph), as the eager hook names it.
    def _trace_layer(self, named: NamedModule, number: int, root: nn.Module, output: Any) -> Any:
        traced = self._traced
        tensor = output if isinstance(output, torch.Tensor) else layer_tensor(named, output)
        call = 1 + sum(1 for layer, _ in traced if layer is named)
        traced.append((named, tensor))
        # as the eager hook: the gradients of a training pass only (the model in training mode;
        # without gradients, nothing requires one), not of an evaluation that takes gradients
        # (an adversarial input made in eval mode)
        if not (self._want_layer_gradients and tensor.requires_grad and root.training):
            return None
        tapped = tap_gradient(tensor, self._receiver, number * _TAP_CALLS + call)
        if output is tensor:
            return tapped
        if type(output) in (tuple, list):  # a named tuple would need its fields
            return type(output)([tapped if item is tensor else item for item in output])
        return None

    def _publish_traced(self) -> None:
        """Publish the activations the traced hooks recorded in this forward pass, numbering
        repeated calls of a layer as the eager hook does; note whether a training pass was an
        optimizer's further closure call for :meth:`_on_traced_gradient`."""
        traced = self._traced
        if not traced:
            return
        tag, calls = self._pass_tag, dict[str, int]()
        # compiled parts run on their own, outside a pass, count no eager calls of one
        current = self._current_pass
        patterns: dict[str, tuple[int, tuple[int, ...]]] = {}
        for named, tensor in traced:
            traced_call = calls[named.name] = calls.get(named.name, 0) + 1
            pattern = patterns.get(named.name)
            if pattern is None:
                pattern = patterns[named.name] = self._call_pattern(named, current, tag)
            call = _call_in_pass(traced_call, pattern)
            if call > 1:
                named = self._repeat(named, call)
            if self._want_activations and self._due("activations", named.name, tag):
                self._emit_layer("activations", named, tensor.detach(), tag)
        traced.clear()
        if tag == DEFAULT_TAG:
            self._traced_closure = False
        elif tag == CLOSURE_TAG:
            # an optimizer's further closure call: its backward follows before the next pass,
            # and its gradients are no training step's (the eager hooks publish none either)
            self._traced_closure = True

    def _call_pattern(
        self, named: NamedModule, current: int, tag: str
    ) -> tuple[int, tuple[int, ...]]:
        """Where the layer's eager calls of this pass fall among its compiled ones (see
        :attr:`_call_patterns`), noted for its compiled calls' gradients: a gradient tap knows
        only the compiled call's number, and arrives when the backward pass runs, maybe after
        other passes of its step (or never: a pass whose loss is dropped). So the pattern of a
        step's training passes must be one; a layer whose pattern changes within a step (an
        eager part in one pass, not in the next) has its compiled calls' gradients left out
        until a step after a backward pass starts, with a warning (once)."""
        eager = self._layer_calls.get(named.name)
        pattern: tuple[int, tuple[int, ...]] = (0, ())
        if eager is not None:
            if current and eager[0] == current:  # also called eagerly in this pass
                marks = tuple(eager[2:])  # (calls before any compiled one noted nothing)
                pattern = (eager[1] - len(marks), marks)
            eager[0] = max(eager[0], 0)
        if not current or tag not in (DEFAULT_TAG, CLOSURE_TAG):
            # a pass whose calls tap no gradient, or calls outside a pass, published only as
            # the next pass starts (after their backward pass, if any)
            return pattern
        known = self._call_patterns.setdefault(named.name, pattern)
        if known != pattern:
            self._unsure_calls.add(named.name)
            if not self._warned_unsure_calls:
                self._warned_unsure_calls = True
                logger.warning(
                    "Layer %r runs both in compiled code and eagerly, in another order in "
                    "some forward passes of a step than in others: which call a compiled call's "
                    "gradient belongs to cannot be told, so its compiled calls publish no "
                    "layer_gradients until the next step (their activations, and its eager "
                    "calls' gradients, are published)",
                    named.name,
                )
        return pattern

    def _on_traced_gradient(self, code: int, grad: torch.Tensor) -> None:
        """The gradient tapped at a layer's call (``code``: see :meth:`_trace_layer`) of a
        training pass, at backward time. It is copied: a compiled backward may write another
        value into its memory later."""
        number, call = divmod(code, _TAP_CALLS)
        self._traced_backward = True
        if self._traced_closure or number >= len(self._tap_layers):
            return
        named = self._tap_layers[number]
        if self._unsure_calls and named.name in self._unsure_calls:
            return
        pattern = self._call_patterns.get(named.name)
        if pattern is not None:
            call = _call_in_pass(call, pattern)
        if call > 1:
            named = self._repeat(named, call)
        if self._due("layer_gradients", named.name):
            data = grad.detach()
            unscaled = self._unscaled(data)  # a new tensor, or a copy is needed
            data = unscaled if unscaled is not data else data.clone()
            self._emit_layer("layer_gradients", named, data, DEFAULT_TAG)

    def _on_layer_gradient(self, named: NamedModule, fired: list[int], grad: torch.Tensor) -> None:
        fired[0] += 1  # backward passes through this output so far
        if fired[0] == 2 and not self._warned_regradient:
            self._warned_regradient = True
            logger.warning(
                "Layer %r's output took part in a second backward pass (several losses "
                "backpropagated one by one through a retained graph, a gradient penalty through "
                "torch.autograd.grad(..., create_graph=True), or second-order gradients): the "
                "gradient of each backward pass through it is published as "
                "layer_gradients, in the order they ran (the loss's usually last), and "
                "subscribers that pair layer_gradients with activations pair them in that order",
                named.name,
            )
        if self._due("layer_gradients", named.name):
            self._emit_layer("layer_gradients", named, self._unscaled(grad.detach()), DEFAULT_TAG)

    def _unscaled(self, grad: torch.Tensor) -> torch.Tensor:
        """``grad`` as the loss's own gradient: divided by the GradScaler's scale (the one the
        backward pass ran with: the scaler updates it only after the optimizer's step), in
        float32 for a half-precision gradient (a true gradient too small for float16 is what
        the scale is for); ``grad`` itself without an enabled scaler. A 0-d division on the
        device: no host synchronisation."""
        scale = getattr(self._scaler, "_scale", None)
        if not isinstance(scale, torch.Tensor) or not self._scaler.is_enabled():
            return grad
        if grad.dtype in _UPDATE_DTYPES:
            grad = grad.float()
        return grad / scale.to(grad.device)

    def _on_gradient(self, kind: str, named: NamedModule, param: torch.Tensor) -> None:
        # (no optimizer watched: read in the backward pass, before any unscaling)
        if param.grad is not None and self._due(kind, named.name):
            self._emit_layer(kind, named, self._unscaled(param.grad.detach()), DEFAULT_TAG)

    def _on_optimizer_pre(
        self, index: int, optimizer: torch.optim.Optimizer, *args: Any
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        if self._step_open:
            self._learn_cycle(index)
        if self._step_open and index in self._stepped and not self._warned_restep:
            self._warned_restep = True
            logger.warning(
                "Optimizer %d (%s) stepped again before every watched optimizer stepped once "
                "(a critic's several steps per generator step, or a watched optimizer that "
                "does not step): a training step ends when every watched optimizer that "
                "steps has stepped, so this step holds several of its "
                "updates, each published, while the step's weights are published once: a ratio "
                "of updates to weights (RatioSubscriber) pairs only its first update with them",
                index,
                type(optimizer).__name__,
            )
        if not self._step_open:
            # no training-mode forward pass opened this step: the model trains in eval mode
            # (batch-norm statistics frozen, say), or the optimizer steps before its closure's
            # forward pass (L-BFGS); the optimizer's step is then the training step
            if self._eval_grad_pass and not self._warned_eval_step:
                self._warned_eval_step = True
                logger.warning(
                    "The optimizer stepped after a forward pass in eval mode: each such "
                    "optimizer step counts as a training step (its weights, gradients and "
                    "updates are published under the tag %r), but the activations, output, "
                    "loss and train accuracy of eval-mode passes are published under %r",
                    DEFAULT_TAG,
                    EVAL_TAG,
                )
            self._start_step()
        elif not self._epoch_open:
            self._open_epoch()  # an accumulation step carried over an epoch's end
        self._stepping += 1
        self._watched_steps += 1
        if len(optimizer.param_groups) != self._group_counts[index]:  # add_param_group
            self._reassign_parameters()
        layers = self._optimizer_layers[index]
        replaced = self._closure_step(index, *args)
        if replaced is None:
            self._publish_gradients(index)
        bus, frozen, names = self.message_bus, self._frozen, self._optimizer_names[index]
        for kind in self._want_updates:
            role = UPDATE_KINDS[kind]
            if bus.takes_batches(kind):  # every layer's update is looked at: one copy kernel
                self._snapshot_all(kind, layers[role])
                continue
            step = self.global_step
            if not bus.will_process_any(kind, names[role], DEFAULT_TAG, step):
                continue
            for name, named, attr in layers[role]:
                # an update every subscription would skip (subsampling) is not computed, and
                # that of a frozen layer is known
                if name not in frozen and bus.will_process(kind, name, DEFAULT_TAG, step):
                    param = tensor_attr(named.module, attr)
                    if param is not None:
                        key = (name, kind)
                        self._update_before[key] = self._snapshot(key, param)
        return replaced

    def _publish_gradients(self, index: int) -> None:
        """The gradients of optimizer ``index``'s parameters, as it is about to use them."""
        layers = self._optimizer_layers[index]
        for kind in self._want_gradients:
            entries = layers[GRADIENT_KINDS[kind]]
            grads = gradients(entries)
            self._publish_layers(kind, *_present(entries, grads))

    # ``optimizer.step(closure)`` computes the gradients inside the step: the closure's first
    # call evaluates the loss and its gradients at the step's weights, and further calls (L-BFGS's
    # line search) at trial weights. The closure is replaced by one that publishes the gradients
    # after its first call and runs the further calls as passes of their own (CLOSURE_TAG), so
    # that the step's loss, activations and train accuracy are those of its weights.
    def _closure_step(
        self, index: int, step_args: tuple[Any, ...] = (), step_kwargs: dict[str, Any] | None = None
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """The optimizer step's arguments with its closure replaced (see above), or None when
        it was given no closure. ``step_args`` are those of the bound call: the optimizer
        first, then the closure if given by position."""
        positional = len(step_args) > 1
        closure = step_args[1] if positional else (step_kwargs or {}).get("closure")
        if not callable(closure):
            return None  # the common case: nothing to copy
        kwargs = dict(step_kwargs or {})
        calls = [0]

        def publishing_closure(*args: Any, **inner: Any) -> Any:
            calls[0] += 1
            stepping = self._stepping  # the closure's training pass resets it: still stepping
            try:
                if calls[0] == 1:
                    result = closure(*args, **inner)
                    self._publish_gradients(index)
                    return result
                previous, self._probe_tag = self._probe_tag, self._probe_tag or CLOSURE_TAG
                try:
                    return closure(*args, **inner)
                finally:
                    self._probe_tag = previous
            finally:
                self._stepping = stepping

        if positional:
            return (step_args[0], publishing_closure, *step_args[2:]), kwargs
        kwargs["closure"] = publishing_closure
        return step_args, kwargs

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
        if not _fits(buffer, param):
            buffer = store[key] = make(param, dtype=_update_dtype(param), requires_grad=False)
        return buffer  # type: ignore[return-value]

    def _snapshot(self, key: tuple[str, str], param: torch.Tensor) -> torch.Tensor:
        """A copy of ``param`` in a buffer kept per parameter (no allocation per step)."""
        buffer = self._buffer_like(self._update_buffers, key, param, torch.empty_like)
        return buffer.copy_(param.detach())

    def _snapshot_all(self, kind: str, layers: list[Entry]) -> None:
        """:meth:`_snapshot` of every layer's parameter that is not frozen, in one multi-tensor
        copy."""
        frozen, buffers_of, before_of = self._frozen, self._update_buffers, self._update_before
        entries, params = _present(layers, tensor_attrs(layers))
        if frozen:
            entries, params = _present(
                entries, [None if e[0] in frozen else p for e, p in zip(entries, params)]
            )
        keys = [(name, kind) for name, _, _ in entries]
        buffers = [buffers_of.get(key) for key in keys]
        if not all(map(_fits, buffers, params)):
            buffers = [
                self._buffer_like(buffers_of, key, param, torch.empty_like)
                for key, param in zip(keys, params)
            ]
        before_of.update(zip(keys, buffers))
        if buffers:
            with torch.no_grad():
                torch._foreach_copy_(buffers, params)

    def _zero_update(self, key: tuple[str, str], param: torch.Tensor) -> torch.Tensor:
        """The update of a frozen parameter: zeros, kept per parameter (no allocation per step)."""
        return self._buffer_like(self._zero_updates, key, param, torch.zeros_like)

    def _on_optimizer_post(self, index: int, optimizer: torch.optim.Optimizer, *args: Any) -> None:
        self._stepping = max(0, self._stepping - 1)
        self._note_graded(index, optimizer)
        layers = self._optimizer_layers[index]
        for kind in self._want_updates:
            self._publish_updates(kind, layers[UPDATE_KINDS[kind]])
        # the passes an optimizer stepped on (a GAN's discriminator's, then its generator's),
        # not the optimizers: several stepping on one pass (parameter groups, one stepping
        # every k-th iteration) are one pass of the cycle, whichever steps first
        if self._passed_since_step or not self._stepped_passes:
            self._stepped_passes += 1
        self._passed_since_step = False
        self._stepped.add(index)
        if len(self._stepped) == len(self.optimizers):
            # a step in which every optimizer stepped: the cycle's passes
            self._passes_per_step, self._resteps = self._stepped_passes, 0
            self._finish_step()

    def _publish_updates(self, kind: str, layers: list[Entry]) -> None:
        """The updates of one optimizer's step: ``after - before`` for every snapshot, written
        into the snapshots' buffers (no allocation; see :func:`_subtract_into`), zeros for
        frozen layers; a layer without a snapshot (nobody looks at its update) is published
        without data."""
        frozen, before_of = self._frozen, self._update_before
        params: list[torch.Tensor | None] = tensor_attrs(layers)
        # every snapshot of this kind is used up now, whether its parameter is still there or not
        befores = [before_of.pop((name, kind), None) for name, _, _ in layers]
        entries: Sequence[Entry] = layers
        if any(map(is_, params, repeat(None))):
            kept = [i for i, param in enumerate(params) if param is not None]
            entries = [layers[i] for i in kept]
            params, befores = [params[i] for i in kept], [befores[i] for i in kept]
        updates: list[torch.Tensor | None] = befores
        if frozen:
            updates = [
                self._zero_update((name, kind), param) if name in frozen else before
                for (name, _, _), param, before in zip(entries, params, befores)
            ]
            befores = [None if name in frozen else b for (name, _, _), b in zip(entries, befores)]
        if any(map(is_, befores, repeat(None))):
            pairs = [(b, p) for b, p in zip(befores, params) if b is not None]
            if pairs:
                _subtract_into([b for b, _ in pairs], [p for _, p in pairs])
        elif befores:
            _subtract_into(befores, params)  # type: ignore[arg-type]
        self._publish_layers(kind, entries, updates)
