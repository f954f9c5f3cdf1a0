"""The Exporter: removable hooks on a model (and its optimizer) that publish training on a bus.

The hook handlers themselves (the hot path) are in :mod:`ikkuna_tune.step_hooks`; what the
Exporter reads of a model (layers, weights and biases, outputs) in :mod:`ikkuna_tune.layers`."""

from __future__ import annotations

import functools
import logging
import operator
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from torch.utils.hooks import RemovableHandle

from ikkuna_tune import keys
from ikkuna_tune.backends import to_numbers
from ikkuna_tune.bus import MessageBus
from ikkuna_tune.compiled_taps import add_receiver, remove_receiver
from ikkuna_tune.layer_flow import (
    FLOW_VERSION,
    FlowRecorder,
    LayerFlow,
    compiled,
    holds_state,
    keeps_running_stats,
)
from ikkuna_tune.layer_freezing import LayerFreezing
from ikkuna_tune.layers import (
    OUTPUT_KEYS,
    CopySafeHook,
    TrackedLayers,
    for_evaluation,
    output_tensor,
    select_modules,
    unowned_parameters,
    unwrapped,
    view_root,
)
from ikkuna_tune.messages import DEFAULT_TAG, LabelsMessage, NamedModule, check_tag
from ikkuna_tune.parameters import assign_parameters, check_optimizers
from ikkuna_tune.step_hooks import EVAL_TAG, PARAM_KINDS, UPDATE_KINDS, StepHooks

if TYPE_CHECKING:
    from ikkuna_tune.subscribers.base import Subscriber

__all__ = ["EVAL_TAG", "OUTPUT_KEYS", "PROBE_TAG", "Exporter", "select_modules"]

logger = logging.getLogger(__name__)

#: Default tag of the evaluation passes subscribers run through :meth:`Exporter.probe`.
PROBE_TAG = "probe"


def _unowned_advice(unowned: dict[str, list[str]], scripted: set[str]) -> str:
    """What ``depth=`` would do about the parameters :func:`unowned_parameters` found: it makes a
    module that holds some a layer, but then its submodules' parameters get no metrics, and
    no depth makes the model itself a layer. The modules named in ``scripted`` are TorchScript
    modules, which no depth makes layers."""
    by_depth: dict[int, list[str]] = {}
    for name in unowned:
        if name and name not in scripted:
            by_depth.setdefault(name.count(".") + 1, []).append(name)
    advice = ""
    if scripted:
        advice += (
            f". {sorted(scripted)} are TorchScript modules, which take no Python hooks: use "
            "their eager form to watch them"
        )
    if by_depth:
        choices = "; ".join(
            f"depth={depth} makes {names} layers" for depth, names in by_depth.items()
        )
        advice += (
            f". Exporter(depth=k) tracks the modules k levels down instead ({choices}): such a "
            "layer is frozen as a whole and its weight and bias come from the parameters it "
            "holds itself, but the parameters of its submodules then get no weight, gradient "
            "or update metrics"
        )
    if "" in unowned:
        advice += ". Parameters held by the model itself belong to no layer at any depth"
    return advice


def _scripted_holders(model: nn.Module) -> list[str]:
    """The outermost TorchScript modules of ``model`` that hold parameters (``'<model>'`` for
    the model itself)."""
    found: list[str] = []
    for name, module in model.named_modules():
        inside = any(name.startswith(f"{outer}.") or not outer for outer in found)
        if inside or not isinstance(module, torch.jit.ScriptModule):
            continue
        if any(True for _ in module.parameters()):
            found.append(name)
    return [name or "<model>" for name in found]


#: the open Exporters, told of every optimizer's steps by one pair of global hooks, registered
#: once and never removed: removing a hook while torch runs them (as the finalizer of an
#: Exporter collected without close() did, or registering one from inside a hook) broke that
#: optimizer step with "OrderedDict mutated during iteration"
_WATCHING: weakref.WeakSet[Exporter] = weakref.WeakSet()
_GLOBAL_HOOKS: list[RemovableHandle] = []


def _before_any_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    for watcher in list(_WATCHING):
        watcher._on_unwatched_step(optimizer)


def _after_any_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    for watcher in list(_WATCHING):
        if watcher._unwatched_running:
            watcher._on_unwatched_step_end(optimizer)


def _on_every_optimizer_step(exporter: Exporter) -> None:
    """Tell ``exporter`` (held weakly) which optimizer is about to step and which has stepped,
    for every optimizer, until it closes."""
    if not _GLOBAL_HOOKS:
        _GLOBAL_HOOKS.append(register_optimizer_step_pre_hook(_before_any_step))
        _GLOBAL_HOOKS.append(register_optimizer_step_post_hook(_after_any_step))
    _WATCHING.add(exporter)


#: torch's losses whose targets are class labels, with the score above which one output per
#: sample means class 1 (0 for a logit, 0.5 for a probability; None: no such output)
_CLASS_LOSSES: tuple[tuple[type, Callable[..., Any], float | None], ...] = (
    (nn.CrossEntropyLoss, nn.functional.cross_entropy, 0.0),
    (nn.BCEWithLogitsLoss, nn.functional.binary_cross_entropy_with_logits, 0.0),
    (nn.BCELoss, nn.functional.binary_cross_entropy, 0.5),
    (nn.NLLLoss, nn.functional.nll_loss, 0.0),  # (log-probabilities: never one per sample)
    (nn.MultiMarginLoss, nn.functional.multi_margin_loss, 0.0),
)
#: torch's losses whose targets are no class labels (train accuracy leaves them out): a
#: regression's, ranking's or multi-label loss's, and the -1/1 targets of a soft margin
_OTHER_LOSS_NAMES = (
    "MSELoss:mse_loss", "L1Loss:l1_loss", "SmoothL1Loss:smooth_l1_loss", "HuberLoss:huber_loss",
    "GaussianNLLLoss:gaussian_nll_loss", "PoissonNLLLoss:poisson_nll_loss",
    "CosineEmbeddingLoss:cosine_embedding_loss", "MarginRankingLoss:margin_ranking_loss",
    "TripletMarginLoss:triplet_margin_loss",
    "TripletMarginWithDistanceLoss:triplet_margin_with_distance_loss",
    "HingeEmbeddingLoss:hinge_embedding_loss", "CTCLoss:ctc_loss",
    "MultiLabelSoftMarginLoss:multilabel_soft_margin_loss",
    "MultiLabelMarginLoss:multilabel_margin_loss", "SoftMarginLoss:soft_margin_loss",
)  # fmt: skip
_OTHER_LOSSES = tuple(getattr(nn, n.split(":")[0]) for n in _OTHER_LOSS_NAMES)
_OTHER_LOSS_FUNCTIONS = tuple(getattr(nn.functional, n.split(":")[1]) for n in _OTHER_LOSS_NAMES)


def _as_index(value: object) -> int | None:
    """``value`` as an int if it is one (a Python, NumPy or 0-d tensor integer), else None.

    >>> _as_index(255), _as_index(torch.tensor(3)), _as_index(2.5), _as_index(True)
    (255, 3, None, None)
    """
    if value is None or isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def _read_through(loss_fn: object) -> Iterator[object]:
    """``loss_fn``, then what it wraps, as far as it goes: a ``functools.partial``'s function,
    a ``torch.compile``'d module's or function's original (at most 8 levels).

    >>> inner = nn.MSELoss()
    >>> [type(f).__name__ for f in _read_through(functools.partial(inner))]
    ['partial', 'MSELoss']
    """
    for _ in range(8):
        yield loss_fn
        inner = (
            loss_fn.func
            if isinstance(loss_fn, functools.partial)
            else getattr(loss_fn, "_orig_mod", None)
            or getattr(loss_fn, "_torchdynamo_orig_callable", None)
        )
        if inner is None:
            return
        loss_fn = inner


def _ignore_index(loss_fn: object) -> int | None:
    """The ``ignore_index`` a loss module or a ``functools.partial`` of a loss was given
    (None if it has none; -100 unless said otherwise).

    >>> _ignore_index(nn.CrossEntropyLoss(ignore_index=255)), _ignore_index(nn.MSELoss())
    (255, None)
    """
    for layer in _read_through(loss_fn):
        if isinstance(layer, functools.partial) and "ignore_index" in layer.keywords:
            return _as_index(layer.keywords["ignore_index"])
        value = _as_index(getattr(layer, "ignore_index", None))
        if value is not None:
            return value
    return None


def _loss_labels(loss_fn: object) -> tuple[bool | None, float | None]:
    """What ``loss_fn`` says of its targets and scores: whether its targets are class labels
    (None: not known, as for any loss but torch's own; ``nn.KLDivLoss``'s targets may be soft
    labels or not), and the score above which one output per sample means class 1 (None: not
    known). A ``functools.partial``, a ``torch.compile``'d loss and a loss
    :meth:`Exporter.wrap_loss` wrapped are read through.

    >>> [_loss_labels(f) for f in (nn.BCELoss(), nn.functional.mse_loss, lambda o, t: o)]
    [(True, 0.5), (False, None), (None, None)]
    """
    for layer in _read_through(loss_fn):
        told = getattr(layer, "_ikkuna_loss_labels", None)
        if told is not None:
            return told
        loss_fn = layer
    for module, function, threshold in _CLASS_LOSSES:
        if isinstance(loss_fn, module) or loss_fn is function:
            return True, threshold
    if isinstance(loss_fn, _OTHER_LOSSES) or any(loss_fn is f for f in _OTHER_LOSS_FUNCTIONS):
        return False, None
    return None, None


def _check_call_keys_free(layers: dict[str, nn.Module]) -> None:
    """Raise if a layer's name is the key of another layer's repeated call (a ModuleDict key
    ``'fc#2'`` beside a layer ``'fc'``): the second call of ``'fc'`` in a forward pass would
    publish under that layer's name, and the two would be read as one.

    Examples:
        >>> _check_call_keys_free({"fc": nn.Linear(1, 1), "fc#2x": nn.Linear(1, 1)})
        >>> _check_call_keys_free({"d.fc": nn.Linear(1, 1), "d.fc#2": nn.Linear(1, 1)})
        Traceback (most recent call last):
        ...
        ValueError: Expected layer names ... but got 'd.fc#2' beside layer 'd.fc': rename ...
    """
    for name in layers:
        owner = keys.layer_of_call(name)
        if owner != name and owner in layers:
            raise ValueError(
                "Expected layer names that are not the keys of another layer's repeated calls "
                "(a layer called twice in a forward pass publishes its second call as "
                f"'NAME#2') but got {name!r} beside layer {owner!r}: rename the module, or "
                "choose the layers with `module_filter` or `depth` so that not both are tracked"
            )


class Exporter(StepHooks, LayerFreezing):
    """Hooks ``model`` (and its optimizers) and publishes what flows through training.

    Per training step it publishes, all with the same step numbers and in this order:
    ``epoch_started`` (first step of an epoch), ``batch_started``, ``weights``/``biases`` (the
    values the step starts from), ``input_data``, ``activations`` (forward order),
    ``network_output``, then whatever the user publishes (``input_labels``, ``loss``), then during
    backward ``layer_gradients`` (gradient w.r.t. each layer's output), then at each
    ``optimizer.step()`` ``weight_gradients``/``bias_gradients`` (``param.grad`` as the optimizer
    is about to use it: with gradient accumulation, the sum of the step's backward passes) and
    ``weight_updates``/``bias_updates`` (what that optimizer step changed, copied as it begins:
    a change the forward pass makes in place, such as ``nn.Embedding(max_norm=...)``'s
    renormalisation of the rows it looks up, is in no update; in float32 for half-precision
    parameters, whose own dtype would round the difference) of the layers that optimizer
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
    construction (and again when one gains a parameter group). A training stage that builds a
    new optimizer (fine-tuning the whole model after training its head) hands it over with
    :meth:`set_optimizers`; until then its steps end no training step (the forward passes pile
    up in one step, as if accumulating gradients) and are not measured, and the Exporter warns
    at the first step of an optimizer it does not watch that steps the model's parameters.

    **Frozen layers** (:meth:`freeze`) publish an update of exactly zero (one zero tensor kept
    per layer, not one per step) and no ``*_gradients``.

    **Which parameter is the weight**: :func:`~ikkuna_tune.parameters.parameter_roles`. Other
    parameters (an LSTM's ``weight_ih_l0``, ...) get no metrics; the Exporter warns once, at
    construction, naming the layers and parameters. A layer parametrised with
    ``torch.nn.utils.parametrize`` (``parametrizations.weight_norm``, ``spectral_norm``, ...)
    is tracked like any leaf layer: its ``weights`` are the weight its parametrisation computes
    (read without building an autograd graph), its ``weight_updates`` the change of that
    weight, and it has no ``weight_gradients`` (the gradients belong to the parametrisation's
    own parameters, which :meth:`freeze` freezes with the layer). A weight pruned with
    ``torch.nn.utils.prune`` (before the Exporter is made or later) is the masked weight the
    forward uses, its update that weight's change, and its gradient ``weight_orig``'s (masked:
    what the optimizer applies).

    **Outputs that are not tensors.** ``network_output`` and ``activations`` are always tensors.
    Of a tuple or list output the first tensor is taken (depth-first: an LSTM's output sequence,
    a ``PackedSequence``'s data), of a dict the value under ``'logits'`` or ``'out'`` (in that
    order), else its first tensor; where the wrapped loss (:meth:`wrap_loss`) scores another
    tensor of the output and never that one (a model that returns ``(features, logits)``), the
    tensor at that place of the output from the next forward pass on (logged once), also where
    the loss scores a view of all of it (``logits.squeeze(1)``); where it scores only a part of
    another tensor than the first (``logits[:, :3]``), a warning says so.
    ``output_fn`` chooses the network's output tensor instead.
    A layer's ``layer_gradients`` are the gradient of that tensor: an LSTM classifier that reads
    only the final hidden state ``h_n`` sends none through the output sequence, so the LSTM
    publishes no ``layer_gradients`` (its weight gradients are there as usual).
    An output with no tensor in it raises ``ValueError`` naming the model or layer and the type
    it returned; this happens in the first forward pass that publishes it (the first step).

    **A layer called several times in one forward pass** (shared weights, a recurrent cell)
    publishes ``activations`` and ``layer_gradients`` for every call: the first call under the
    layer's name, call ``k`` under ``'<name>#k'`` (``'fc#2'``), a key of its own for every
    subscriber (``modules['fc#2']`` resolves it; it is not a layer to :meth:`freeze`). Its
    parameters' kinds are published once, under the layer's name. Calls are counted within a
    forward pass of the model; a layer run on its own publishes each call under its name. A
    training loop that runs the model's parts instead of the model (``model.head(model.body(x))``)
    gets steps as the model's forward pass would give them: with optimizers, the first training
    call of a layer after every optimizer stepped starts the next step (parts called between
    the steps of optimizers that step in turn, as a GAN's do, stay in the step).

    **Copies.** ``copy.deepcopy``, ``pickle`` and ``torch.save`` of the model or an optimizer
    give a plain copy: every hook this Exporter registered is inert there, so the copy runs
    without publishing anything (and without holding a frozen layer in eval mode).

    Args:
        model: the network to watch.
        optimizer: its optimizer, or a sequence of its optimizers; needed for
            ``weight_updates``/``bias_updates`` and marks the end of a step. Gradients are read
            as the optimizer is about to use them: at ``optimizer.step()``, or after the first
            call of the closure given to it (further calls in the same step, L-BFGS's line
            search, publish under the tag ``'closure'``). A step pre-hook the user registers
            after the Exporter runs after this read (clipping there is not seen).
        message_bus: the bus to publish on (a new one by default).
        depth: track modules at this depth instead of the leaf layers (see :func:`select_modules`).
        module_filter: track only layers of these classes (subclasses included).
        output_fn: maps the model's output to the tensor published as ``network_output``
            (``lambda out: out["scores"]``); by default the rule above.
        scaler: the ``torch.amp.GradScaler`` of mixed-precision training, if any. Parameter
            gradients are read after it unscaled them (at ``optimizer.step()``), so they are the
            true ones in any case (without an optimizer, they are read in the backward pass and
            divided by its scale, as ``layer_gradients`` are); ``layer_gradients`` come from the
            backward pass itself, so only given the scaler are they divided by its scale (in float32
            for half-precision ones). Given the scaler, a step it skips (inf or NaN gradients)
            publishes updates of exactly zero under the tag ``'skipped'``, ends as a step of its
            own, and subscriptions of training steps (``tag='default'``: norms, ratios) do not count
            it.

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

    #: whether an epoch has ended since this Exporter was made (see :meth:`epoch_finished`)
    _epoch_ended: bool = False
    _warned_empty_epoch: bool = False
    #: layers the model no longer holds, or holds since, already warned about (see
    #: :meth:`_check_layers`)
    _replaced: set[str]
    #: ``depth`` and ``module_filter``, as given
    _selection: tuple[int | None, type[nn.Module] | tuple[type[nn.Module], ...] | None]

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
        message_bus: MessageBus | None = None,
        depth: int | None = None,
        module_filter: type[nn.Module] | tuple[type[nn.Module], ...] | None = None,
        output_fn: Callable[[Any], torch.Tensor] | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"Expected `model` to be a torch.nn.Module but got {type(model)}")
        if isinstance(model, torch.jit.ScriptModule):
            raise ValueError(
                f"Expected an eager torch.nn.Module but got a TorchScript module "
                f"({type(model).__name__}, from torch.jit.script or torch.jit.trace), whose layers "
                "take no Python hooks: watch the eager model (torch.compile keeps its layers "
                "watchable)"
            )
        lazy = [name for name, p in model.named_parameters() if is_lazy(p)]
        if lazy:
            raise ValueError(
                f"Expected a model whose parameters exist but got lazy parameters {lazy[:5]} "
                "(nn.LazyLinear and the like create them in their first forward pass): run the "
                "model once on an example batch before creating the Exporter"
            )
        optimizers = check_optimizers(optimizer)
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
        chosen = select_modules(unwrapped(model), depth, module_filter)
        if not chosen:
            scripted = _scripted_holders(unwrapped(model)) if module_filter is None else []
            hint = (
                f": {scripted} are TorchScript modules, which take no Python hooks (watch the "
                "eager model; torch.compile keeps its layers watchable)"
                if scripted
                else ""
            )
            raise ValueError(
                f"No layer of {type(model).__name__} matches depth={depth!r}, "
                f"module_filter={module_filter!r}{hint}"
            )
        _check_call_keys_free(chosen)
        if depth is None and module_filter is None:
            unowned = unowned_parameters(unwrapped(model), chosen)
            if unowned:
                logger.warning(
                    "These parameters are held by modules that are not layers and get no "
                    "weight, gradient or update metrics, nor are they frozen with a layer: %s (a "
                    "layer is a leaf module that holds parameters)%s",
                    ", ".join(f"{name or '<model>'!r}: {held}" for name, held in unowned.items()),
                    _unowned_advice(unowned, set(_scripted_holders(unwrapped(model)))),
                )
        self.model = model
        #: The optimizers, in the order given (empty without one).
        self.optimizers: tuple[torch.optim.Optimizer, ...] = optimizers
        #: The first optimizer (the only one, usually), or None.
        self.optimizer: torch.optim.Optimizer | None = optimizers[0] if optimizers else None
        self.message_bus = message_bus
        #: The tracked layers by name (``modules['fc#2']`` also resolves a repeated call).
        self.modules: dict[str, NamedModule] = TrackedLayers(
            {n: NamedModule(n, m) for n, m in chosen.items()}
        )
        self._output_fn = output_fn
        self._selection = (depth, module_filter)  # (how the layers were chosen: _check_layers)
        self._output_path = None
        self._output_settled = False
        self._scored_path = None
        self._unplaced = None
        self._pending_output = None
        self._pending_seen = False
        self._latest_output = None
        self._part_checked = output_fn is not None  # (output_fn says where the scores lie)
        if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
            raise ValueError(
                f"Expected `scaler` to be a torch.amp.GradScaler or None but got {scaler!r}"
            )
        self._scaler = scaler
        self._scale_version = 0

        self.global_step = 0
        self.train_step = 0
        self.epoch = 0
        self._steps_started = 0
        self._step_open = False
        self._step_marks = []
        self._carried = None
        self._graded = []
        # indices of the optimizers that have stepped in the open step
        self._stepped: set[int] = set()
        self._forget_cycle()
        self._stepping = 0
        self._watched_steps = 0
        self._warned_label_type = False
        self._warned_whole_output = False
        #: the score above which a model with one output per sample predicts class 1: 0 for
        #: a logit, 0.5 for a probability (set by :meth:`wrap_loss` for a loss that takes
        #: probabilities; accuracy subscribers read it unless given their own ``threshold``)
        self.binary_threshold = 0.0
        #: whether :attr:`binary_threshold` comes from the loss (else it is 0 by default)
        self.scores_known = False
        self._loss_thresholds: set[float | None] = set()  # those of the losses wrapped
        #: the non-negative ``ignore_index`` every wrapped loss with class labels agrees on
        #: (padding, a segmentation's void class), else None: test accuracy leaves it out too
        self.ignore_index: int | None = None
        # the ignore_index of each wrapped loss with class labels, by its number
        self._loss_ignores: dict[int, int | None] = {}
        self._wrapped_losses = 0  # how many losses wrap_loss wrapped (each one's number)
        self._loss_sources: list[tuple[object, int]] = []  # each loss wrapped, its number
        # unwatched optimizers whose step is under way, with the watched steps begun before
        self._unwatched_running: list[tuple[torch.optim.Optimizer, int]] = []
        self._epoch_open = False
        self._pass_tag = DEFAULT_TAG
        self._probe_tag: str | None = None
        self._passes = 0  # forward passes of the model so far
        self._layer_calls = {}
        self._flow = LayerFlow()  # the data flow through the layers, once a probe has run
        self._flow_known = False  # whether a probe has run the whole model
        self._flow_stale = False  # whether the flow came from an older version's checkpoint
        #: the running statistics as last looked at (the step, each module's buffers' sums)
        #: and which of them had changed since the look before
        self._stats_look: tuple[int, dict[str, list[float]], set[str]] | None = None
        self._stale_version: Any = None  # that checkpoint's flow version (None: unversioned)
        self._deferred_gradients = {}
        self._warned_uncalled = False
        self._current_pass = 0  # the number of the running forward pass of the model, else 0
        self._frozen: dict[str, None] = {}  # ordered, with O(1) membership
        self._held: dict[int, tuple[nn.Parameter, bool]] = {}  # see LayerFreezing
        self._released: dict[int, int] = {}  # see LayerFreezing
        self._held_modes: dict[str, dict[str, bool]] = {}
        self._modes_pending: set[str] = set()
        self._freeze_handles: dict[str, list[RemovableHandle]] = {}
        self._recompile_allowed = False  # see LayerFreezing._allow_recompilation
        self._pass_kinds = set()
        self.ddp_sync = None
        self._update_before: dict[tuple[str, str], torch.Tensor] = {}
        self._update_buffers: dict[tuple[str, str], torch.Tensor] = {}
        self._zero_updates: dict[tuple[str, str], torch.Tensor] = {}
        self._repeats: dict[tuple[str, int], NamedModule] = {}
        # what the layers' hooks record while torch.compile traces them (compiled_taps)
        self._traced: list[tuple[NamedModule, torch.Tensor]] = []
        self._trained_outputs = []
        self._look_outputs = []
        self._tap_layers: list[NamedModule] = []
        self._call_patterns: dict[str, tuple[int, tuple[int, ...]]] = {}
        self._unsure_calls: set[str] = set()
        self._receiver = add_receiver(self._on_traced_gradient)
        self._base_handles: list[RemovableHandle] = []
        self._kind_handles: dict[str, list[RemovableHandle]] = {}
        self._want_gradients: list[str] = []
        self._wanted: frozenset[str] = frozenset()
        self._closed = False
        self._replaced = set()
        # (name, layer, attribute) of every tracked layer with a weight / a bias, and of those
        # each optimizer steps
        self._role_layers, self._optimizer_layers = assign_parameters(self.modules, optimizers)
        self._name_optimizer_layers()

        self._base_handles.append(
            model.register_forward_pre_hook(CopySafeHook(self._on_forward_start))
        )
        self._base_handles.append(model.register_forward_hook(CopySafeHook(self._on_forward_end)))
        self._optimizer_handles: list[RemovableHandle] = self._hook_optimizers(optimizers)
        # optimizers not watched that stepped while watching: checked for the model's parameters
        self._seen_optimizers: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()
        _on_every_optimizer_step(self)  # (an Exporter collected without close() drops out)
        try:
            for subscriber in message_bus.subscribers:
                self.check_subscriber(subscriber)
            message_bus.add_listener(self)
            # hands the model to the subscribers that run it (a test-accuracy check runs then)
            self.subscribers_changed(message_bus)
        except BaseException:
            self.close()  # nothing stays hooked to the model or listening on the bus
            raise

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Publish a pending ``batch_finished`` and remove every hook this Exporter added.

        A layer it froze keeps its parameters untrainable (``requires_grad`` off: another
        Exporter restored from this one's :meth:`state_dict` may hold it frozen too) and goes
        back to the model's mode; :meth:`unfreeze` it before closing to train it again."""
        if self._closed:
            return
        self._publish_traced()
        self._finish_step()
        remove_receiver(self._receiver)
        self.message_bus.flush()
        self._unwatched_running.clear()
        self._pending_output = None  # (a model output held to learn where its scores lie)
        self._latest_output = None
        _WATCHING.discard(self)
        for handle in (*self._base_handles, *self._optimizer_handles):
            handle.remove()
        self._base_handles.clear()
        self._optimizer_handles.clear()
        for handles in self._kind_handles.values():
            for handle in handles:
                handle.remove()
        self._kind_handles.clear()
        for name, handles in self._freeze_handles.items():
            for handle in handles:
                handle.remove()
            # without the hook the layer would stay in eval mode until the next model.train();
            # a module the user kept in eval mode stays so
            self._restore_modes(name, self._held_modes.get(name, {}))
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
        kinds = list(kinds)
        needs_optimizer = sorted(k for k in kinds if k in UPDATE_KINDS)
        if needs_optimizer and not self.optimizers:
            raise ValueError(
                f"Kinds {needs_optimizer} need the optimizer: pass Exporter(model, optimizer=...)"
            )
        needs_bias = sorted(k for k in kinds if PARAM_KINDS.get(k) == "bias")
        if needs_bias and not self._role_layers.get("bias"):
            # (they would read None at every report, silently)
            raise ValueError(
                f"Kinds {needs_bias} need a tracked layer with a bias, but none of the "
                f"{len(self.modules)} tracked layers of {type(unwrapped(self.model)).__name__} "
                f"has one ({sorted(self.modules)[:8]}): subscribe the weight kinds instead"
            )

    def output_tensor(self, output: Any) -> torch.Tensor:
        """The tensor that stands for the model's ``output`` (what ``network_output`` carries):
        ``output_fn(output)`` if one was given, else the output itself if it is a tensor, else
        its first tensor (see the class documentation).

        Raises:
            ValueError: if there is no tensor (or ``output_fn`` returns something else).
        """
        return output_tensor(self.model, output, self._output_fn, self._output_path)

    def _hook_optimizers(
        self, optimizers: Sequence[torch.optim.Optimizer]
    ) -> list[RemovableHandle]:
        """Register the step hooks of ``optimizers`` (in the order watched); their handles."""
        handles = []
        for index, opt in enumerate(optimizers):
            handles.append(opt.register_step_pre_hook(CopySafeHook(self._on_optimizer_pre, index)))
            handles.append(
                opt.register_step_post_hook(CopySafeHook(self._on_optimizer_post, index))
            )
        return handles

    def set_optimizers(
        self, optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None
    ) -> None:
        """Watch ``optimizer`` (one, a sequence of them, or None) from now on, in place of the
        optimizers watched so far; call it between training steps (after ``optimizer.step()``,
        before the next forward pass).

        For a training stage with an optimizer of its own: after training a head with one
        optimizer, fine-tuning the whole model with a new one. The optimizers watched so far
        are no longer hooked; an optimizer kept from before keeps counting, and a new
        optimizer's parameters are matched with the layers as at construction (with the same
        warnings about layers none of them steps). Pass the old and the new optimizer together
        to watch both. A frozen layer one of whose parameters the training code replaced by a
        trainable one since the freeze (``load_state_dict(assign=True)``, say) is unfrozen
        here, with a warning: the new optimizer trains it.

        Raises:
            ValueError: for anything but optimizers, or None while a subscriber wants a kind
                that needs an optimizer (updates); nothing changes then.
            RuntimeError: after :meth:`close`.

        Examples:
            >>> model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
            >>> head = torch.optim.SGD(model[2].parameters(), lr=0.1)
            >>> exporter = Exporter(model, head)
            >>> whole = torch.optim.Adam(model.parameters())
            >>> exporter.set_optimizers(whole)
            >>> exporter.optimizers == (whole,)
            True
        """
        optimizers = check_optimizers(optimizer)
        if self._closed:
            raise RuntimeError("set_optimizers() after close(): this Exporter watches nothing")
        if not optimizers:
            needing = sorted(k for k in self._wanted if k in UPDATE_KINDS)
            if needing:
                raise ValueError(
                    f"Expected an optimizer, since subscribers want kinds {needing}, which "
                    "need one, but got None"
                )
        # a step still open now was stepped by an optimizer not watched (or by none): it ends
        # here, so that the next training pass starts a step of the optimizers watched now
        self._finish_step()
        for handle in self._optimizer_handles:
            handle.remove()
        self._optimizer_handles = self._hook_optimizers(optimizers)
        self.optimizers = optimizers
        self.optimizer = optimizers[0] if optimizers else None
        self._stepped.clear()  # indices of the optimizers watched before
        self._forget_cycle()
        self._role_layers, self._optimizer_layers = assign_parameters(self.modules, optimizers)
        self._name_optimizer_layers()
        self._release_replaced()
        self._sync_hooks()  # without optimizers, gradients are read per parameter

    def _on_unwatched_step(self, optimizer: torch.optim.Optimizer) -> None:
        """An optimizer is about to step: if it is not watched, note it, to be judged when its
        step ends (:meth:`_on_unwatched_step_end`)."""
        if self._closed or self._stepping or any(optimizer is opt for opt in self.optimizers):
            return  # watched, or run by a watched optimizer's step (a wrapper's inner one)
        if optimizer in self._seen_optimizers:
            return
        self._unwatched_running.append((optimizer, self._watched_steps))

    def _judge_unwatched(self) -> None:
        """A training pass starts: the steps of optimizers not watched that never ended (they
        raised) are judged now."""
        while self._unwatched_running:
            self._on_unwatched_step_end(self._unwatched_running[-1][0])

    def _on_unwatched_step_end(self, optimizer: torch.optim.Optimizer) -> None:
        """An optimizer noted by :meth:`_on_unwatched_step` stepped: warn once if it steps the
        model's parameters and no watched optimizer stepped inside its step (one that did is
        a wrapper around a watched optimizer: its steps are measured)."""
        running = self._unwatched_running
        found = next(
            (i for i in range(len(running) - 1, -1, -1) if running[i][0] is optimizer), None
        )
        if found is None:
            return
        _, before = running.pop(found)
        self._seen_optimizers.add(optimizer)
        if self._closed or self._watched_steps != before:
            return
        mine = {id(p) for p in self.model.parameters()}
        if any(id(p) in mine for group in optimizer.param_groups for p in group["params"]):
            logger.warning(
                "A %s that the Exporter does not watch steps parameters of the watched model: "
                "what it changes is in no gradient or update metric, and if it is what trains "
                "the model now (a new training stage), its steps end no training step (the "
                "forward passes pile up in one step, as if accumulating gradients). Hand it "
                "over with exporter.set_optimizers(optimizer) (a list to keep watching the "
                "others too)",
                type(optimizer).__name__,
            )

    def _name_optimizer_layers(self) -> None:
        """The names of the layers each optimizer steps, by role, and the number of parameter
        groups each optimizer had when they were assigned."""
        self._optimizer_names = [
            {role: tuple([name for name, _, _ in entries]) for role, entries in layers.items()}
            for layers in self._optimizer_layers
        ]
        self._group_counts = [len(opt.param_groups) for opt in self.optimizers]

    def _reassign_parameters(self) -> None:
        """An optimizer gained (or lost) a parameter group since the layers were matched with
        the optimizers (``add_param_group`` for gradual unfreezing, say): match them again, so
        the layers it now steps get gradients and updates."""
        before = [set(names.get("weight", ())) for names in self._optimizer_names]
        _, self._optimizer_layers = assign_parameters(self.modules, self.optimizers, warn=False)
        self._name_optimizer_layers()
        for index, names in enumerate(self._optimizer_names):
            added = [n for n in names.get("weight", ()) if n not in before[index]]
            if added:
                logger.info(
                    "Optimizer %d's parameter groups changed: it now steps layers %s too",
                    index,
                    added,
                )

    # ------------------------------------------------------- user-facing API
    def publish_labels(
        self,
        labels: torch.Tensor,
        loss: torch.Tensor | None = None,
        scores: torch.Tensor | None = None,
    ) -> None:
        """Publish this step's target labels (``input_labels``), under the tag of the last
        forward pass (see :meth:`publish_loss` for ``loss``, the loss computed with them). A
        list or array of labels is taken as a tensor. ``scores``: the output the labels were
        scored against, if not the last forward pass's (:class:`LabelsMessage`)."""
        self._publish_labels(labels, loss, scores, None)

    def _warn_early_labels(self) -> None:
        """Warn (once) of training labels published before the first training pass: a step
        opens at its forward pass, so a loop that publishes each batch's labels before it (as
        the batch is loaded) pairs every later step's output with the next batch's labels."""
        self._warned_early_labels = True
        logger.warning(
            "Labels were published before the first training forward pass: a training step "
            "opens at its forward pass, so labels published before it carry the step before, "
            "and each step's output would be paired with the next batch's labels (train "
            "accuracy of the wrong labels); publish the labels after the forward pass (or let "
            "exporter.wrap_loss publish them)"
        )

    def _publish_labels(
        self,
        labels: torch.Tensor,
        loss: torch.Tensor | None,
        scores: torch.Tensor | None,
        threshold: float | None,
        classes: bool | None = None,
        source: int | None = None,
        ignore_index: int | None = None,
    ) -> None:
        """:meth:`publish_labels`, telling what the wrapped loss ``source`` knows: its
        ``binary_threshold`` and whether its labels are ``classes`` (None: not known)."""
        labels = _as_tensor(labels, "labels")
        if scores is not None and not isinstance(scores, torch.Tensor):
            raise ValueError(f"Expected `scores` to be a tensor but got {type(scores).__name__}")
        tag = self._loss_tag(loss, scores)
        if tag == DEFAULT_TAG or self._eval_grad_pass:  # the training step's (maybe eval mode)
            # (a model trained in eval mode opens its step at the optimizer's step: its
            # labels come after a forward pass in eval mode, with gradients)
            if (
                self._steps_started == 0
                and scores is None
                and self.model.training
                and not self._eval_grad_pass
                and not self._warned_early_labels
            ):
                self._warn_early_labels()
            self._labels_given = True
        if "input_labels" in self._wanted and self._due("input_labels", None, tag):
            self.message_bus.publish(
                LabelsMessage(
                    "input_labels",
                    tag,
                    self.global_step,
                    self.train_step,
                    self.epoch,
                    labels.detach(),
                    None if scores is None else scores.detach(),
                    threshold,
                    classes,
                    source,
                    ignore_index,
                )
            )

    def publish_loss(self, loss: torch.Tensor) -> None:
        """Publish this step's loss (left on its device), under the tag of the last forward
        pass; a loss computed with gradients while a training step is open belongs to that
        step, also when a pass without gradients came in between (a teacher model's, say). A
        number (``loss.item()``) is taken as a tensor."""
        self._publish_loss(loss)

    def _publish_loss(self, loss: torch.Tensor, scores: torch.Tensor | None = None) -> None:
        """:meth:`publish_loss`, telling the ``scores`` a wrapped loss scored (None: not
        known)."""
        loss = _as_tensor(loss, "loss")
        tag = self._loss_tag(loss, scores)
        # the training step's (also one trained in eval mode), as with labels
        self._loss_given = self._loss_given or tag == DEFAULT_TAG or self._eval_grad_pass
        self._publish_tensor_meta("loss", loss, tag)

    def _loss_tag(self, loss: torch.Tensor | None, scores: torch.Tensor | None = None) -> str:
        if self._probe_tag is not None:  # a probe, or an optimizer's further closure calls
            return self._probe_tag
        if (
            self._pass_tag != DEFAULT_TAG
            and not self._own_loss(scores)
            and self._step_open
            and isinstance(loss, torch.Tensor)
            and loss.requires_grad
        ):
            return DEFAULT_TAG
        return self._pass_tag

    def _own_loss(self, scores: torch.Tensor | None) -> bool:
        """Whether a loss with gradients after the last pass, an eval-mode one, is that pass's
        own: the pass ran with gradients, and the loss is not known to score a training
        pass's output of the open step. ``scores`` that are such an output or a view of it,
        or computed from one (``log_softmax(out)``, ``out / T``: found in their autograd
        graph, a few nodes deep), are the step's: a look without ``no_grad`` between the
        training pass and the step's loss. Any other loss (of the look's output, or with no
        scores given) stays the look's, as in a model trained in eval mode."""
        if not self._eval_grad_pass:
            return False
        if not self._trained_in_step or scores is None:
            return True
        root = view_root(scores)
        trained = [t for t in (ref() for ref in self._trained_outputs) if t is not None]
        if any(t is root for t in trained):
            return False
        looks = [t for t in (ref() for ref in self._look_outputs) if t is not None]
        if any(t is root for t in looks):
            return True
        return _graph_reaches(root, trained, looks) is not True

    def _note_ignore_index(self, source: int, index: int | None) -> None:
        """Take the ``ignore_index`` of wrapped loss ``source`` (one with class labels) into
        :attr:`ignore_index`: the one index they all have, else None."""
        self._loss_ignores[source] = index if index is not None and index >= 0 else None
        ignores = set(self._loss_ignores.values())
        self.ignore_index = ignores.pop() if len(ignores) == 1 else None

    def wrap_loss(
        self, loss_fn: Callable[..., torch.Tensor], classes: bool | None = None
    ) -> Callable[..., torch.Tensor]:
        """Wrap a loss (an ``nn.Module`` or a function such as ``F.cross_entropy``).

        The wrapper calls ``loss_fn(output, target, *args, **kwargs)``, publishes ``input_labels``
        (the target, when it is a tensor, with ``output`` as the scores it was compared with:
        train accuracy counts those; otherwise it warns once) and ``loss``, and returns the
        loss unchanged. A loss that takes probabilities (:class:`torch.nn.BCELoss`,
        :func:`torch.nn.functional.binary_cross_entropy`) tells train accuracy that one output
        per sample is a probability (class 1 above 0.5), one that takes logits that it is a
        logit (above 0); :attr:`binary_threshold` (test accuracy's) is known when every
        wrapped loss tells the same.

        ``classes``: whether the loss's targets are class labels. By default True for torch's
        classification losses, False for its others (``F.mse_loss``, ``nn.L1Loss``, ...: a
        regression head's targets, which train accuracy leaves out), and unknown for any other
        loss (a ``functools.partial`` or ``torch.compile`` of one of torch's is read through).
        Train accuracy checks the first targets of each loss not known to lack class labels,
        and leaves the loss out, with a warning, if they are none (multi-hot targets, say).
        In a step where a loss known to take class labels counts, a loss of unknown kind is
        left out (a center loss, a distillation term): pass ``classes=True`` to count it. A
        non-negative ``ignore_index`` of the loss (given to the module, a ``partial`` or the
        call) counts nowhere in train accuracy, as in the loss, and is :attr:`ignore_index`
        (which test accuracy leaves out) when every wrapped loss with class labels has it.
        Wrapping this Exporter's own wrapper again returns it as it is.
        """
        if not callable(loss_fn):
            raise ValueError(f"Expected a callable loss but got {loss_fn!r}")
        layers = [named.module for named in self.modules.values()]
        if isinstance(loss_fn, nn.Module) and any(  # (a loss kept in the model is no layer)
            loss_fn is module for module in (self.model, unwrapped(self.model), *layers)
        ):
            raise ValueError(
                "Expected a loss function (F.cross_entropy, nn.CrossEntropyLoss()) but got the "
                f"watched model or one of its layers, {type(loss_fn).__name__}"
            )
        if getattr(loss_fn, "_ikkuna_owner", None) == id(self) and classes is None:
            return loss_fn  # wrapped already: wrapped again, it would publish twice
        if classes is not None and not isinstance(classes, bool):
            raise ValueError(f"Expected `classes` to be True, False or None but got {classes!r}")
        told, threshold = _loss_labels(loss_fn)
        labelled = told if classes is None else classes
        if labelled is not False:
            # the model's one threshold (test accuracy's) only if every wrapped loss with
            # class labels agrees on it
            self._loss_thresholds.add(threshold)
            agreed = next(iter(self._loss_thresholds)) if len(self._loss_thresholds) == 1 else None
            self.binary_threshold, self.scores_known = agreed or 0.0, agreed is not None
        # the same loss wrapped again (once an epoch, say) is the same source: its first
        # labels were checked already
        source = next((n for f, n in self._loss_sources if f is loss_fn), None)
        if source is None:
            self._wrapped_losses += 1
            source = self._wrapped_losses
            self._loss_sources.append((loss_fn, source))
        ignore = _ignore_index(loss_fn)
        if labelled is not False:
            self._note_ignore_index(source, ignore)

        def loss_with_export(
            output: torch.Tensor, target: torch.Tensor, *args: Any, **kwargs: Any
        ) -> torch.Tensor:
            loss = loss_fn(output, target, *args, **kwargs)
            scores = output if isinstance(output, torch.Tensor) else None
            if isinstance(target, torch.Tensor):
                # (the scores of a loss without class labels too: its labels then pair with
                # them, not with the next loss's output)
                if scores is None and not self._warned_whole_output:
                    self._warn_whole_output(output)
                if scores is not None and not self._output_settled:
                    # (a regression head's loss says nothing of where the class scores lie)
                    self._note_scores(scores, learn=labelled is not False)
                elif (
                    scores is not None and labelled is not False and self._latest_output is not None
                ):
                    self._note_part_scored(scores)
                ignored = _as_index(kwargs.get("ignore_index", ignore))
                if ignored != ignore and labelled is not False:  # given to the call
                    self._note_ignore_index(source, ignored)
                self._publish_labels(
                    target, loss, scores, threshold, labelled, source,
                    ignored if ignored is not None and ignored >= 0 else None,
                )  # fmt: skip
            elif not self._warned_label_type:
                self._warned_label_type = True
                logger.warning(
                    "wrap_loss was given a target of type %s, not a tensor: no input_labels are "
                    "published, so train accuracy has nothing to count (publish the labels "
                    "with exporter.publish_labels(labels), for mixup say the dominant ones)",
                    type(target).__name__,
                )
            self._publish_loss(loss, scores)
            return loss

        loss_with_export._ikkuna_loss_labels = (labelled, threshold)  # type: ignore[attr-defined]
        loss_with_export._ikkuna_owner = id(self)  # type: ignore[attr-defined]
        return loss_with_export

    def _warn_whole_output(self, output: Any) -> None:
        """Warn once that a wrapped loss was handed several tensors (the model's whole tuple
        output, a loss that picks its scores out itself) without ``output_fn``: train and test
        accuracy then score the tensor :func:`~ikkuna_tune.layers.first_tensor` names, which
        need not be the one the loss scores (features before logits were scored as classes,
        with no error, where the labels fit their width). Judged once: a training loop hands
        its loss the same kind of output at every step."""
        self._warned_whole_output = True
        if self._output_fn is not None:
            return
        if isinstance(output, Mapping) and any(
            isinstance(output.get(key), torch.Tensor) for key in OUTPUT_KEYS
        ):
            return  # the scores are named
        found = _tensors_in(output)
        if len(found) < 2:
            return
        logger.warning(
            "A wrapped loss was given a %s holding %d tensors, not the tensor it scores: train "
            "and test accuracy score the first one (shape %s) as the model's output. Call the "
            "wrapped loss with the scores themselves (loss_fn(output[1], y)), or pass "
            "output_fn= to ik.watch or Exporter to name them",
            type(output).__name__,
            len(found),
            tuple(found[0].shape),
        )

    def epoch_finished(self) -> None:
        """End the current epoch: publish ``batch_finished`` if a step is pending, then
        ``epoch_finished``.

        A gradient accumulation under way (training passes made, no optimizer stepped yet) is
        not ended: the passes before one optimizer step are one step, also when an epoch ends
        among them (accumulation counted across epochs), so the step goes on into the next
        epoch and ends there, where its optimizer steps; it is that epoch's first step
        (``train_step`` 0), and its train accuracy is published there (it counts in
        ``train_steps`` where it began; its step time is not measured). Told by the gradients:
        a backward pass ran since the step began. A training loop that drops an epoch's last
        passes (``zero_grad()`` as the next epoch starts, to None or in place) makes them a
        step of their own, without an update, ended by the next epoch's first pass under the
        epoch they were in.

        A call with no training step since the last one is ignored, with a warning: the
        epoch-end subscribers would measure the same weights again (SVCCA would find every
        layer unchanged, which reads as converged). A first call before any step (a baseline
        before training) counts.
        """
        carry = self._accumulating()
        if not carry:
            self._finish_step()
        if self._epoch_ended and not self._epoch_open:
            if not self._warned_empty_epoch:
                self._warned_empty_epoch = True
                logger.warning(
                    "epoch_finished() was called again with no training step since the last "
                    "call (epoch %d); ignored, here and from now on",
                    self.epoch,
                )
            return
        self._epoch_ended = True
        self._check_layers()
        self._publish_meta("epoch_finished")
        self._check_called()  # after the epoch-end probes, which call eval-only layers too
        if carry:
            self._carry_over_epoch_end()  # after the epoch end's freezes let their gradients go
        self._epoch_open = False
        self.epoch += 1
        self.message_bus.flush()

    def _check_layers(self) -> None:
        """Warn once per layer that the model no longer holds where it was (replaced, say by a
        new head for transfer learning): its metrics would be those of the old module. Warn
        once per layer added since the Exporter was made (``model.append(nn.Linear(...))``),
        which it would have tracked: nothing is published for it, and automatic freezing
        cannot see it."""
        root = unwrapped(self.model)
        # (by identity, not name: a layer wrapped where it is, torch.compile(model[2]), is
        # still the module the Exporter tracks, named '2._orig_mod')
        current = {id(module) for module in root.modules()}
        gone = [
            name
            for name, named in self.modules.items()
            if id(named.module) not in current and name not in self._replaced
        ]
        if gone:
            self._replaced.update(gone)
            logger.warning(
                "Layers %s of the model are no longer the modules the Exporter tracks (replaced "
                "or removed after it was created): what is published for them is the old "
                "modules', no longer trained. Watch the model anew (a new Exporter, or "
                "ik.watch in a new trial) after changing its layers",
                gone,
            )
        tracked = {id(named.module) for named in self.modules.values()}
        added = [
            name
            for name, module in select_modules(root, *self._selection).items()
            if id(module) not in tracked and name not in self._replaced
        ]
        if added:
            self._replaced.update(added)
            logger.warning(
                "Layers %s were added to the model after the Exporter was created: nothing is "
                "published for them (no metrics, no SVCCA) and automatic freezing cannot see "
                "them. Watch the model anew (a new Exporter, or ik.watch in a new trial) after "
                "changing its layers",
                added,
            )

    def _check_called(self) -> None:
        """Warn once about tracked layers that no forward pass called while their hooks were
        registered: a parent that uses a layer's weights directly (``nn.MultiheadAttention``
        and its ``out_proj``) never calls it, so it has no activations or layer gradients, and
        no SVCCA self-similarity to say it converged."""
        if (
            self._warned_uncalled
            or "forward" not in self._kind_handles
            or self._passes <= self._forward_since
        ):
            return
        self._warned_uncalled = True
        uncalled = [name for name, calls in self._layer_calls.items() if calls[0] < 0]
        if uncalled:
            logger.warning(
                "Layers %s were never called in a forward pass of this epoch (a parent module "
                "uses their parameters directly, as nn.MultiheadAttention does with out_proj, "
                "or they are not used): they publish no activations or layer gradients, SVCCA "
                "cannot measure them, and if the probe does not call them either, automatic "
                "freezing leaves every layer (after an attention module whose out_proj it is: "
                "the layers inside and after it) trainable while they train (where they act "
                "cannot be seen). Track their parents instead (Exporter(depth=...)), or freeze "
                "or remove layers that are not used",
                uncalled,
            )

    @contextmanager
    def probe(self, tag: str = PROBE_TAG) -> Iterator[nn.Module]:
        """Run evaluation passes: eval mode, ``torch.no_grad()``, messages under ``tag``.

        Counters and weight-update bookkeeping are untouched and every module's training flag is
        restored afterwards. Yields the model to call: the model itself, or under data
        parallelism the module it wraps (a probe runs on one rank, so it must not call
        ``DistributedDataParallel``'s collective forward). Under ``torch.compile`` the probe's
        passes run eagerly (``torch.compiler.set_stance("force_eager")``): compiled code does
        not see a layer hook added after it was compiled, so a subscriber that subscribes to
        activations only while it probes (SVCCA's) would find none in an evaluation graph
        compiled before (by a test-accuracy pass, say).
        """
        if not isinstance(tag, str) or not tag or tag == DEFAULT_TAG:
            raise ValueError(f"Expected a probe tag other than {DEFAULT_TAG!r} but got {tag!r}")
        check_tag("tag", tag)
        if self._probe_tag is not None:
            raise RuntimeError(f"A probe with tag {self._probe_tag!r} is already running")
        modes = [(m, m.training) for m in self.model.modules()]
        previous_tag = self._pass_tag
        # a probe may run inside a training forward pass (a step that ends at the next pass's
        # start, where a subscriber probes at ``batch_finished``): that pass goes on afterwards
        # as it was, its layers' calls counted on (a second call of a layer is still ``'fc#2'``)
        outer = self._outer_pass()
        self._probe_tag = tag
        self.model.eval()
        # the data flow through the layers, seen in the probe's passes (eager ones under
        # torch.compile, so the recorder's hooks make nothing recompile), until a probe has run
        # the whole model (then it is known: no more watching)
        recorder = None if self._flow_known else FlowRecorder(unwrapped(self.model), self.modules)
        completed = False
        try:
            # (the stance is set when it is made: inside the ``try``, after the others)
            with torch.no_grad(), recorder or nullcontext(), _eager(self.model):
                yield for_evaluation(self.model)
            completed = True
        finally:
            for module, training in modes:
                module.training = training
            self._probe_tag = None
            self._pass_tag = previous_tag
            self._resume_pass(outer)
            # a probe that raised shows nothing for sure; one that ran parts of the model stands
            # until a better one (or one that ran it whole) comes
            flow = recorder.flow() if recorder is not None and completed else None
            if flow is not None and flow.order:
                if recorder is not None and recorder.whole_pass:
                    self._flow, self._flow_known, self._flow_stale = flow, True, False
                elif self._flow_stale or len(flow.order) >= len(self._flow.order):
                    self._flow, self._flow_stale = flow, False

    def _outer_pass(self) -> tuple[int, bool, dict[str, list[int]], list[Any]] | None:
        """What a probe must give back to the forward pass it runs inside, if any: the pass's
        number, its flags, the calls of layers it has run, and the traced layers it has not
        published yet."""
        current = self._current_pass
        if not current:
            return None
        calls = {name: list(c) for name, c in self._layer_calls.items() if c[0] == current}
        traced = list(self._traced)
        self._traced.clear()
        return current, self._eval_grad_pass, calls, traced

    def _resume_pass(self, outer: tuple[int, bool, dict[str, list[int]], list[Any]] | None) -> None:
        """Give the forward pass a probe ran inside back what :meth:`_outer_pass` kept."""
        if outer is None:
            return
        current, eval_grad_pass, calls, traced = outer
        self._current_pass, self._eval_grad_pass = current, eval_grad_pass
        for name, counted in calls.items():
            self._layer_calls[name][:] = counted
        self._traced[:0] = traced

    @property
    def layer_order(self) -> list[str]:
        """The tracked layers, input side first, as data flows through them: in the order a
        probe's forward pass (SVCCA's, test accuracy's: :meth:`probe`) first called them, once
        one has run (under ``torch.compile`` too: a probe's passes run eagerly), and in
        registration order before; a layer the probe did not call stays right after the layer
        registered before it. Probes are watched (forward pre-hooks, nothing that changes what
        they compute) until one has run the whole model."""
        return self._flow.ordered(list(self.modules))

    def trains_upstream(self, name: str) -> list[str]:
        """The modules outside the tracked layers that the last probe pass ran before layer
        ``name`` and that hold a trainable parameter of their own (a BatchNorm ``module_filter``
        left out, a parent's position embedding), or keep running statistics that a freeze
        does not hold and that changed since the previous look at an earlier step (a BatchNorm
        with ``affine=False``, which is no layer, or one whose parameters the training code
        froze while it still updates its statistics in training mode; at the first look, any):
        while they train, ``name`` sees changing inputs, so freezing it saves no backward
        computation and its output still changes; automatic freezing (SVCCA's ``freeze_at``,
        SVCCAScheduler) leaves it trainable.

        A parent's own parameters count as upstream of every layer inside it and after it, and
        those of a module the probe never ran (an ``nn.ParameterList`` or an embedding whose
        weight its parent reads directly, a branch run in training only, a tracked layer
        among them) as upstream of every layer, but an ``nn.MultiheadAttention``'s
        ``out_proj``, which that module reads in its own call, as upstream of the layers inside
        and after it: where they act cannot be seen from module calls (conservative: it can
        only keep a layer trainable)."""
        upstream = tuple(self._flow.upstream.get(name, ()))
        model = unwrapped(self.model)
        if self._flow_stale:
            # an older version's flow may leave out or misplace what its probe never entered:
            # until a probe records the flow again, every other module with parameters of its
            # own counts as upstream (no automatic freeze)
            upstream = tuple(n for n in self._parameter_holders(model) if n != name)
        if not upstream:
            return []
        found = self._by_name()
        # a tracked layer's parameters are all its own (at a depth, inside it too); another
        # module's are those it holds itself (a parent's, not its layers')
        tracked = {named.module for named in self.modules.values()}
        return [
            other
            for other in upstream
            if other in found
            and (
                any(
                    p.requires_grad
                    for p in found[other].parameters(recurse=found[other] in tracked)
                )
                or (
                    other not in self._frozen
                    and keeps_running_stats(found[other])
                    and other in self._moving_stats(found)
                )
            )
        ]

    def _by_name(self) -> dict[str, nn.Module]:
        """The model's modules by name, the model itself as ``'(the model)'``."""
        model = unwrapped(self.model)
        found = dict(model.named_modules())
        found["(the model)"] = model
        return found

    def look_at_running_stats(self) -> None:
        """Look at the running statistics that may hold automatic freezing back (a report
        does, before the scheduler's orders are carried out): whether they moved is judged
        against the previous look. Reads nothing where no module keeps statistics that only
        their buffers tell about (every BatchNorm a layer that trains, or frozen)."""
        self._moving_stats(self._by_name())

    def _moving_stats(self, modules: Mapping[str, nn.Module]) -> set[str]:
        """The modules of ``modules`` (by name) that keep running statistics and updated them
        since the previous look, at an earlier step (their buffers' sums changed, read in one
        transfer): whatever mode they are in at a report (a validation pass leaves a model in
        eval mode; a fine-tuning loop may hold a BatchNorm in it for good). The look is kept
        in the checkpoint, so a restored trial judges as the uninterrupted one; at the first
        look, all of them (nothing to compare with: they may be updating)."""
        look = self._stats_look
        if look is not None and look[0] == self.global_step:
            return look[2]
        buffers = {  # (one whose parameters train holds freezing back anyway)
            name: [b.detach() for b in module.buffers(recurse=False)]
            for name, module in modules.items()
            if keeps_running_stats(module)
            and name not in self._frozen
            and not any(p.requires_grad for p in module.parameters())
        }
        items = [("", b.sum(dtype=torch.float64), 0) for held in buffers.values() for b in held]
        numbers = iter(to_numbers(items))
        now = {name: [next(numbers) for _ in held] for name, held in buffers.items()}
        before = look[1] if look is not None else {}
        moving = {name for name, sums in now.items() if before.get(name) != sums}
        self._stats_look = (self.global_step, now, moving)
        return moving

    def _parameter_holders(self, model: nn.Module) -> list[str]:
        """The tracked layers and the other modules outside them that hold parameters of
        their own (``'(the model)'`` for the model itself), by name."""
        inside: set[int] = set()
        for named in self.modules.values():
            inside.update(id(m) for m in named.module.modules())
        others = [
            name or "(the model)"
            for name, module in model.named_modules()
            if id(module) not in inside and holds_state(module)
        ]
        return [*self.modules, *others]

    def shares_with(self, name: str) -> list[str]:
        """The other tracked layers that hold a trainable parameter of layer ``name`` (tied
        weights: an embedding and the output layer that reuses its weight): freezing ``name``
        freezes that parameter in them too, so automatic freezing waits until they may be
        frozen as well."""
        held = {id(p) for p in self._layer(name).module.parameters() if p.requires_grad}
        if not held:
            return []
        return [
            other
            for other, named in self.modules.items()
            if other != name and any(id(p) in held for p in named.module.parameters())
        ]

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
            # which optimizers step in a training step, as learned (see StepHooks._opens_step)
            "passes_per_step": self._passes_per_step,
            # what unfreeze restores: the frozen layers' requires_grad flags and modes before
            "frozen_state": self._freezing_state(),
            # the data flow a probe showed (a restored trial may freeze before its first probe);
            # one loaded from an older version keeps that version until a probe records it
            "flow": self._flow_state(),
            # whether a probe ran the whole model for it (else the next probes are watched)
            "flow_known": self._flow_known,
            # the running statistics as last looked at (whether they still move)
            "stats_look": None
            if self._stats_look is None
            else {
                "step": self._stats_look[0],
                "sums": self._stats_look[1],
                "moving": sorted(self._stats_look[2]),
            },
        }

    def _flow_state(self) -> dict[str, Any]:
        flow = self._flow.as_dict()
        if self._flow_stale:
            flow.pop("version")
            if self._stale_version is not None:
                flow["version"] = self._stale_version
        return flow

    @property
    def flow_stale(self) -> bool:
        """Whether the data flow came from an older version's checkpoint and waits for the
        next probe to be recorded again (until then nothing is frozen automatically)."""
        return self._flow_stale

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore counters and re-freeze the layers recorded in ``state``."""
        missing = {"global_step", "train_step", "epoch", "steps_started", "frozen"} - set(state)
        if missing:
            raise ValueError(f"Expected an Exporter state with keys {sorted(missing)} as well")
        for name in state["frozen"]:  # (checked before anything changes: no partial load)
            self._layer(name)
        self.global_step = int(state["global_step"])
        self.train_step = int(state["train_step"])
        self.epoch = int(state["epoch"])
        self._steps_started = int(state["steps_started"])
        self._epoch_open = bool(state.get("epoch_open", False))
        self._forget_cycle()
        per_step = state.get("passes_per_step")
        if isinstance(per_step, int) and not isinstance(per_step, bool) and per_step >= 1:
            self._passes_per_step = per_step
        # the step before the checkpoint is not judged here
        self._labels_given = self._loss_given = True
        if state.get("flow"):
            self._flow = LayerFlow.from_dict(state["flow"])
            # a flow recorded the way this version records it stands; an older one is only
            # the order until the next probe records the flow again
            version = state["flow"].get("version")
            current = version == FLOW_VERSION
            whole = bool(state.get("flow_known", False))  # not a partial probe's
            self._flow_known = bool(self._flow.order) and current and whole
            self._flow_stale = not current
            self._stale_version = None if current else version
        look = state.get("stats_look")
        if look is not None:
            sums = {str(k): [float(x) for x in v] for k, v in dict(look["sums"]).items()}
            self._stats_look = (int(look["step"]), sums, {str(n) for n in look["moving"]})
        self._load_freezing_state(state["frozen"], state.get("frozen_state"))

    def __repr__(self) -> str:
        return f"Exporter({type(self.model).__name__}, layers={list(self.modules)})"


def _as_tensor(value: object, name: str) -> torch.Tensor:
    """``value`` as a tensor (a number, a list or an array converted), or a ``ValueError``
    naming ``name``."""
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            f"Expected `{name}` to be a tensor (or numbers) but got {type(value).__name__}"
        ) from None


def _eager(model: nn.Module) -> AbstractContextManager[Any]:
    """Run ``model`` eagerly inside the block if ``torch.compile`` runs it or one of its
    modules (``torch.compiler.set_stance("force_eager")``), else nothing. Nothing either when
    called inside a compiled region (a probe in the user's own compiled function), where the
    stance cannot change.

    >>> from torch import nn
    >>> with _eager(nn.Linear(2, 2)):  # an eager model: nothing to do
    ...     pass
    """
    if not compiled(model) or torch.compiler.is_compiling():
        return nullcontext()
    try:
        return torch.compiler.set_stance("force_eager")  # (set here, restored on exit)
    except RuntimeError:  # run by a compiled function (after a graph break): as it runs
        return nullcontext()


def _tensors_in(value: Any, depth: int = 0) -> list[torch.Tensor]:
    """The tensors in ``value`` (tuples, lists and dicts searched depth-first, a few levels
    deep), in order.

    Examples:
        >>> len(_tensors_in((torch.zeros(1), {"a": torch.ones(2)}, "text")))
        2
    """
    if isinstance(value, torch.Tensor):
        return [value]
    if depth > 4 or not isinstance(value, (Mapping, tuple, list)):
        return []
    items = value.values() if isinstance(value, Mapping) else value
    return [t for item in items for t in _tensors_in(item, depth + 1)]


def _graph_reaches(
    tensor: torch.Tensor, first: list[torch.Tensor], second: list[torch.Tensor], limit: int = 64
) -> bool | None:
    """Whether ``tensor`` was computed from a tensor of ``first`` (True) or of ``second``
    (False), read from its autograd graph breadth first, ``limit`` nodes at most; None where
    neither is found (no graph, or deeper than that)."""
    nodes = {id(t.grad_fn): True for t in first if t.grad_fn is not None}
    nodes.update({id(t.grad_fn): False for t in second if t.grad_fn is not None})
    start = tensor.grad_fn
    if start is None or not nodes:
        return None
    queue, seen = [start], {id(start)}
    for node in queue:
        if len(seen) > limit:
            return None
        if id(node) in nodes:
            return nodes[id(node)]
        for child, _ in node.next_functions:
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                queue.append(child)
    return None
