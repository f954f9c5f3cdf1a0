"""Freezing a tracked layer: its parameters stop training and its buffers stop changing.

:class:`LayerFreezing` is the part of :class:`~ikkuna_tune.exporter.Exporter` that freezes and
unfreezes layers (which layers to freeze is decided elsewhere: :mod:`ikkuna_tune.freezing`).

Examples:
    >>> import torch
    >>> from torch import nn
    >>> from ikkuna_tune.exporter import Exporter
    >>> model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
    >>> exporter = Exporter(model, torch.optim.SGD(model.parameters(), lr=0.1))
    >>> exporter.freeze("1")
    >>> _ = model.train()(torch.randn(8, 2))  # a training step: the frozen BatchNorm stays put
    >>> model[1].training, model[1].weight.requires_grad, int(model[1].num_batches_tracked)
    (False, False, 0)
    >>> exporter.frozen, exporter.frozen_parameter_fraction()  # 8 of 25 parameters
    (('1',), 0.32)
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ikkuna_tune.ddp_sync import TrainableOnlySyncState, install_trainable_only_sync
from ikkuna_tune.layers import TraceableHook, hold_eval, hold_own_eval, wrappers
from ikkuna_tune.messages import NamedModule

__all__ = ["LayerFreezing"]

logger = logging.getLogger("ikkuna_tune.exporter")


class LayerFreezing:
    """Freeze and unfreeze the tracked layers of a model (see the module docstring).

    Its state is set by :class:`~ikkuna_tune.exporter.Exporter`'s constructor.

    Examples:
        >>> from torch import nn
        >>> from ikkuna_tune.exporter import Exporter
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> exporter = Exporter(model)
        >>> exporter.freeze("0"); model[0].weight.requires_grad, exporter.frozen
        (False, ('0',))
        >>> exporter.freeze("2")
        Traceback (most recent call last):
        ...
        ValueError: Refusing to freeze '2': it is the last trainable layer ...
        >>> exporter.unfreeze("0"); model[0].weight.requires_grad, exporter.frozen
        (True, ())
    """

    model: nn.Module
    modules: dict[str, NamedModule]
    optimizers: tuple[torch.optim.Optimizer, ...]
    global_step: int
    _frozen: dict[str, None]
    #: per parameter held frozen by some frozen layer (by ``id``): the parameter and its
    #: ``requires_grad`` before the first of those layers froze it
    _held: dict[int, tuple[nn.Parameter, bool]]
    #: the parameters (by ``id``) an unfreeze made trainable again, with the step it came at:
    #: until a training step has run they have no gradient (the freeze dropped it), yet train
    _released: dict[int, int]
    #: per frozen layer: the training flag of each of its modules (by name within the layer,
    #: ``''`` the layer itself) whose flag differed from the model's when it was frozen
    _held_modes: dict[str, dict[str, bool]]
    #: frozen layers whose modes are read at the next training pass (:meth:`_read_held_modes`):
    #: frozen while the model was in eval mode (at a report after validation), when a module
    #: the user keeps in eval mode looks like all the others
    _modes_pending: set[str]
    #: per frozen layer, the forward pre-hooks that hold it (and each module in it) in eval mode
    _freeze_handles: dict[str, list[RemovableHandle]]
    _recompile_allowed: bool
    #: the kinds of forward pass the model ran, ``(training, gradients on)``: each is a graph
    #: of its own for a compiled model
    _pass_kinds: set[tuple[bool, bool]]
    _closed: bool
    #: DDP's trainable-only synchronisation, installed at the first freeze under DDP
    ddp_sync: TrainableOnlySyncState | None

    if TYPE_CHECKING:  # provided by StepHooks

        def _publish_meta(self, kind: str, data: Any = None, tag: str = ...) -> None: ...

    @property
    def frozen(self) -> tuple[str, ...]:
        """Names of the frozen layers, in the order they were frozen."""
        return tuple(self._frozen)

    def _layer(self, name: str) -> NamedModule:
        if not isinstance(name, str):
            raise ValueError(
                f"Expected a layer name (a str; one call per layer) but got {name!r}; this "
                f"Exporter tracks {list(self.modules)}"
            )
        if name not in self.modules:  # a repeated call's key ('fc#2') is not a layer
            raise ValueError(f"Unknown layer {name!r}; this Exporter tracks {list(self.modules)}")
        return self.modules[name]

    def leaves_trainable(self, name: str, frozen: Iterable[str] = ()) -> bool:
        """Whether some parameter of the model would still train with layer ``name`` (and the
        layers ``frozen``) frozen: :meth:`freeze` refuses to freeze the last trainable layer.

        Once a backward pass has given some parameter a gradient, only parameters with one
        count: a layer the training never uses (a second task's head, trained by other runs)
        keeps nothing training, and a loss with no trainable parameter behind it fails at
        ``backward()``. Before any gradient (or after ``zero_grad()`` set them to None), every
        trainable parameter counts."""
        excluded = {
            id(p) for layer in (name, *frozen) for p in self._layer(layer).module.parameters()
        }
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        left = [p for p in trainable if id(p) not in excluded]
        if any(p.grad is not None for p in trainable):
            # (a parameter unfrozen since has no gradient yet, and trains all the same)
            step = self.global_step
            return any(p.grad is not None or self._released.get(id(p)) == step for p in left)
        return bool(left)

    def freeze(self, name: str) -> None:
        """Stop training layer ``name``: its parameters and its buffers stop changing.

        Its trainable parameters lose ``requires_grad`` and their gradients (a parameter that was
        not trainable, a frozen base weight of fine-tuning, is left as it is; :meth:`unfreeze` gives
        each parameter its own ``requires_grad`` back); optimizers skip parameters whose ``grad`` is
        None, so momentum and weight decay no longer move them. L-BFGS is the exception: its step
        moves every parameter along a direction its history built, so an ``LBFGS`` optimizer given
        to the Exporter forgets its history at each freeze and unfreeze (its next step starts afresh
        from the gradient, which is zero for the frozen layer); one not given to the Exporter would
        go on moving the layer. The layer and its submodules run in eval mode in every forward pass
        (forward pre-hooks on the layer and on each of its modules set their ``training`` flag, so
        ``model.train()`` does not undo it, also in a layer the model never calls itself, such as an
        ``nn.ModuleList``): a BatchNorm uses its running statistics and no longer updates them
        (``running_mean``, ``running_var``, ``num_batches_tracked``), dropout is off. Publishes
        ``layer_frozen`` with the layer's name; while frozen, the layer's ``*_updates`` are exactly
        zero and it publishes no ``*_gradients``.

        Under ``DistributedDataParallel`` every rank must freeze the same layer before the same
        step, and DDP must have been built with ``find_unused_parameters=True``: the frozen
        parameters then get no gradient, which DDP otherwise takes for a failed step. The first
        freeze under DDP also leaves frozen parameters out of DDP's gradient all-reduce
        (:func:`~ikkuna_tune.ddp_sync.install_trainable_only_sync`; its byte count is
        ``exporter.ddp_sync``), unless the model already has a communication hook of its own.

        Raises:
            ValueError: for an unknown layer, if nothing in the model would still train, or
                under a ``DistributedDataParallel`` built without ``find_unused_parameters``.
            RuntimeError: after :meth:`close` (no hook would hold the layer in eval mode).
        """
        if self._closed:
            raise RuntimeError(
                f"freeze({name!r}) after close(): this Exporter watches nothing, so the layer's "
                "BatchNorm statistics and dropout would go on training; freeze through a new "
                "Exporter"
            )
        shares_with = getattr(self, "shares_with", None)
        tied = (
            [] if shares_with is None else [o for o in shares_with(name) if o not in self._frozen]
        )
        self._freeze(name)
        if tied and name in self._frozen:
            logger.warning(
                "Freezing %r also stops training the parameters it shares with %s (tied "
                "weights), which are not reported frozen: their other parameters go on training",
                name,
                tied,
            )

    def _freeze(self, name: str, saved: Mapping[str, Any] | None = None) -> None:
        """:meth:`freeze`; ``saved`` (from :meth:`_freezing_state`, through a checkpoint) gives
        the layer's ``requires_grad`` flags and training modes from before it was frozen, which
        :meth:`unfreeze` restores, instead of those the layer has now."""
        named = self._layer(name)
        if name in self._frozen:
            return
        if not self.leaves_trainable(name):
            raise ValueError(
                f"Refusing to freeze {name!r}: it is the last trainable layer "
                "(backward would fail); stop training instead"
            )
        ddp = [
            m for m in wrappers(self.model) if isinstance(m, nn.parallel.DistributedDataParallel)
        ]
        if ddp and not ddp[0].find_unused_parameters:
            raise ValueError(
                f"Refusing to freeze {name!r}: the model runs under DistributedDataParallel "
                "built without find_unused_parameters=True, which would fail at the next step "
                "because the frozen parameters get no gradient; build it with "
                "DistributedDataParallel(model, find_unused_parameters=True)"
            )
        if ddp and getattr(ddp[0], "static_graph", False):
            raise ValueError(
                f"Refusing to freeze {name!r}: the model runs under DistributedDataParallel "
                "built with static_graph=True, which looks for parameters without a gradient "
                "in the first step only: the frozen ones would leave the next step's gradients "
                "unreduced (the ranks would train apart, then fail); build it with "
                "static_graph=False (the default) and find_unused_parameters=True"
            )
        if ddp:
            self._sync_trainable_only(ddp[0])
        self._allow_recompilation()
        saved_flags = dict((saved or {}).get("requires_grad", {}))
        for local, param in named.module.named_parameters():
            if id(param) not in self._held:  # else another frozen layer holds it already
                before = bool(saved_flags.get(local, param.requires_grad))
                self._held[id(param)] = (param, before)
            if param.requires_grad:
                param.requires_grad_(False)
                param.grad = None
        if saved is not None and "training" in saved:
            modes = {str(k): bool(v) for k, v in dict(saved["training"]).items()}
            if saved.get("modes_pending"):  # (frozen in eval mode, saved before it was read)
                self._modes_pending.add(name)
        elif not self.model.training:  # (those the user keeps training: read the rest later)
            modes = {n: m.training for n, m in named.module.named_modules() if m.training}
            self._modes_pending.add(name)
        else:
            modes = {n: m.training for n, m in named.module.named_modules() if not m.training}
            self._modes_pending.discard(name)  # (a freeze in eval mode, undone, read nothing)
        self._held_modes[name] = modes
        hold_eval(named.module, ())
        if not self._closed:  # a closed Exporter leaves no hook behind
            # the layer's hook puts it and its modules in eval mode when it is called; each of
            # its modules has its own, for a layer that is never called itself (a ModuleList)
            self._freeze_handles[name] = [
                named.module.register_forward_pre_hook(TraceableHook(hold_eval), prepend=True),
                *(
                    inner.register_forward_pre_hook(TraceableHook(hold_own_eval), prepend=True)
                    for local, inner in named.module.named_modules()
                    if local
                ),
            ]
        self._frozen[name] = None
        self._restart_lbfgs(named)
        if saved is None:  # a restored freeze was announced when it happened
            self._publish_meta("layer_frozen", name)
            logger.info("Froze layer %r at step %d", name, self.global_step)

    def _release_retrained(self) -> None:
        """Unfreeze, with a warning, each frozen layer some of whose parameters the user made
        trainable again (``requires_grad_(True)`` on every parameter, say): it trains, so its
        updates are no longer zero and it no longer runs in eval mode. Run at each step's start
        (a check of the frozen layers' parameters only)."""
        held = self._held
        if not any(p.requires_grad for p, _ in held.values()):  # the common case: one pass
            return
        for name in [n for n in self._frozen if self._retrained(n)]:
            for param in self.modules[name].module.parameters():
                if id(param) in held and param.requires_grad:  # trainable now, by the user
                    held[id(param)] = (param, True)
            logger.warning(
                "Layer %r was frozen but some of its parameters require gradients again (set "
                "by the training code): it counts as unfrozen from step %d on; call "
                "exporter.unfreeze(%r) to unfreeze a layer",
                name,
                self.global_step,
                name,
            )
            self.unfreeze(name)

    def _release_replaced(self) -> None:
        """Unfreeze, with a warning, each frozen layer that holds a trainable parameter its
        freeze does not hold: one the training code put in place of a frozen one (an
        assignment, ``load_state_dict(assign=True)``), which the optimizers handed over now
        train. Run when the optimizers change (:meth:`~ikkuna_tune.Exporter.set_optimizers`);
        parameters held for layers that no longer have them are let go."""
        held = self._held
        replaced = [
            name
            for name in self._frozen
            if any(
                p.requires_grad and id(p) not in held
                for p in self.modules[name].module.parameters()
            )
        ]
        for name in replaced:
            logger.warning(
                "Layer %r was frozen but holds a trainable parameter put in place of a frozen "
                "one: it counts as unfrozen from step %d on; freeze it again with "
                "exporter.freeze(%r)",
                name,
                self.global_step,
                name,
            )
            self.unfreeze(name)
        current = {id(p) for n in self._frozen for p in self.modules[n].module.parameters()}
        for key in [k for k in held if k not in current]:
            del held[key]

    def _retrained(self, name: str) -> bool:
        """Whether a parameter this layer's freeze holds requires gradients again: freezing
        turns each off, so only the training code turned it back on."""
        held = self._held
        return any(p.requires_grad for p in self.modules[name].module.parameters() if id(p) in held)

    def _allow_recompilation(self) -> None:
        """Compiled code guards on which parameters need gradients, so a compiled model
        recompiles once for each kind of forward pass it runs (training, evaluation with or
        without gradients, as the epoch-end subscribers run it) after freezing or unfreezing
        (however many layers changed). Each such change raises dynamo's recompile limit by the
        number of kinds of pass seen so far, so that a trial that freezes layer after layer
        never reaches the limit (past it, dynamo would run the model eagerly from then on); the
        limit still catches every other cause."""
        if self._recompile_allowed:
            return
        self._recompile_allowed = True  # until the next forward pass starts
        config = sys.modules.get("torch._dynamo.config")
        if config is not None:  # else nothing has been compiled
            config.recompile_limit += max(1, len(self._pass_kinds))  # type: ignore[attr-defined]
            logger.debug("dynamo's recompile limit is now %d", config.recompile_limit)

    def _sync_trainable_only(self, ddp: nn.parallel.DistributedDataParallel) -> None:
        """At the first freeze under DDP: leave frozen parameters out of DDP's all-reduce
        (:mod:`ikkuna_tune.ddp_sync`), unless the model already has a communication hook."""
        if self.ddp_sync is not None:
            return
        try:
            # (after training began, as a rule: the steps before froze nothing, so DDP's own
            # all-reduce synchronised them exactly as the hook would have: nothing to warn of)
            self.ddp_sync = install_trainable_only_sync(ddp, warn_late=False)
        except ValueError as error:  # the user's own hook stays; frozen slots stay in sync
            logger.info("Frozen parameters stay in DDP's all-reduce: %s", error)

    def unfreeze(self, name: str) -> None:
        """Train layer ``name`` again: undo :meth:`freeze`.

        Each parameter of the layer gets back the ``requires_grad`` it had before it was frozen
        (a parameter the user had frozen stays frozen), except one that another frozen layer
        also holds (shared weights), which waits for that layer. The layer takes the model's
        current training mode, but a module of it whose mode differed from the model's when the
        layer was frozen (a BatchNorm the user keeps in eval mode) gets its own mode back.
        """
        named = self._layer(name)
        if name not in self._frozen:
            return
        self._allow_recompilation()
        del self._frozen[name]
        still_held = {
            id(p) for other in self._frozen for p in self.modules[other].module.parameters()
        }
        for param in named.module.parameters():
            if id(param) in still_held:
                continue
            _, before = self._held.pop(id(param), (param, True))
            param.requires_grad_(before)
            if before:
                self._released[id(param)] = self.global_step
        for handle in self._freeze_handles.pop(name, []):
            handle.remove()
        self._restart_lbfgs(named)
        self._restore_modes(name, self._held_modes.pop(name, {}))
        self._modes_pending.discard(name)
        bus = getattr(self, "message_bus", None)
        if bus is not None:  # its gradients come back in phase with the other layers'
            bus.realign(name)

    def _read_held_modes(self) -> None:
        """At a training pass's start, before the frozen layers' hooks put them in eval mode,
        read the modes of the modules of each layer frozen while the model was in eval mode:
        those the training code keeps in eval mode now (``model.train(); bn.eval()``) get
        their own mode back at the unfreeze (read at the freeze, every module looked alike,
        and an unfreeze put such a BatchNorm in training mode)."""
        for name in self._modes_pending:
            if name in self._frozen:
                module = self.modules[name].module
                held = {n: m.training for n, m in module.named_modules() if not m.training}
                self._held_modes[name] = {**self._held_modes.get(name, {}), **held}
        self._modes_pending.clear()

    def _restore_modes(self, name: str, modes: Mapping[str, bool]) -> None:
        """Give layer ``name`` the model's training mode, except its modules whose mode
        differed from the model's when the layer was frozen (``modes``: a BatchNorm the user
        keeps in eval mode), which get their own back."""
        module = self.modules[name].module
        module.train(self.model.training)
        for module_name, training in modes.items():
            try:
                module.get_submodule(module_name).training = training
            except AttributeError:  # the layer no longer has that module
                continue

    def _restart_lbfgs(self, named: NamedModule) -> None:
        """Clear the history of each ``LBFGS`` optimizer holding a parameter of ``named``.

        An L-BFGS step adds its direction to every parameter it holds, whatever their ``grad``,
        and the direction mixes the steps and gradient changes of its history: a layer frozen
        after that history began would go on moving. With the history cleared, the next
        direction is the gradient's, zero for the frozen layer, and each later step and
        gradient change is zero there too, so the layer stays put.
        """
        held = {id(p) for p in named.module.parameters()}
        for optimizer in self.optimizers:
            if isinstance(optimizer, torch.optim.LBFGS) and any(
                id(p) in held for group in optimizer.param_groups for p in group["params"]
            ):
                optimizer.state.clear()
                logger.info(
                    "Cleared the L-BFGS history at the change of layer %r's freezing", named.name
                )

    def _freezing_state(self) -> dict[str, dict[str, Any]]:
        """Per frozen layer, what :meth:`unfreeze` restores (for a checkpoint): its parameters'
        ``requires_grad`` from before it was frozen (``'requires_grad'``, by name within the
        layer), the modes of its modules that differed from the model's (``'training'``) and
        whether a training pass is still to read the rest (``'modes_pending'``: frozen in eval
        mode, see :meth:`_read_held_modes`)."""
        state = {}
        for name in self._frozen:
            module = self.modules[name].module
            flags = {
                local: self._held.get(id(param), (param, param.requires_grad))[1]
                for local, param in module.named_parameters()
            }
            state[name] = {
                "requires_grad": flags,
                "training": dict(self._held_modes.get(name, {})),
                "modes_pending": name in self._modes_pending,
            }
        return state

    def _load_freezing_state(
        self, frozen: Iterable[str], saved: Mapping[str, Mapping[str, Any]] | None = None
    ) -> None:
        """Freeze the layers ``frozen`` (from a checkpoint), with what :meth:`_freezing_state`
        saved for them; a checkpoint without it (an older one) takes the flags and modes the
        layers have now as those from before they were frozen."""
        saved = saved or {}
        for name in frozen:
            self._freeze(name, saved.get(name, {}))

    def held_fixed(self) -> list[str]:
        """The tracked layers the training code holds fixed: each has parameters and none of
        them requires gradients, holds no floating-point buffer, and this Exporter did not
        freeze it (``requires_grad_(False)`` on a fine-tuned backbone's convolution). Nothing
        changes there for a freeze to stop; a rule that freezes layers input side first goes
        past such a layer as past a frozen one. A layer with buffers (a batch norm's running
        statistics) is not held: they move in training mode whatever its parameters do, and
        only a freeze (eval mode) stops them.

        Examples:
            >>> from torch import nn
            >>> from ikkuna_tune.exporter import Exporter
            >>> model = nn.Sequential(
            ...     nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Linear(2, 1)
            ... )
            >>> _ = model[0].requires_grad_(False), model[3].requires_grad_(False)
            >>> exporter = Exporter(model, depth=1)
            >>> exporter.freeze("2")
            >>> exporter.held_fixed()  # (ReLU: no parameter; 2: frozen here; 3: running stats)
            ['0']
        """
        frozen = self._frozen
        held = []
        for name, named in self.modules.items():
            if name in frozen:
                continue
            module = named.module
            params = list(module.parameters())
            if not params or any(p.requires_grad for p in params):
                continue
            if not any(b.is_floating_point() for b in module.buffers()):
                held.append(name)
        return held

    def frozen_parameter_fraction(self) -> float:
        """Fraction of the model's trainable parameters (by count) that frozen layers hold:
        the share of the training work the freezes stop. Trainable are the parameters that
        would train without them (``requires_grad`` before the layer froze); one the user
        froze (``requires_grad_(False)``: a fine-tuned backbone) counts in neither part, and a
        parameter two frozen layers share (tied weights) counts once."""
        held = {id(p) for p, before in self._held.values() if before}
        frozen = trainable = 0
        for param in self.model.parameters():
            if id(param) in held:
                frozen += param.numel()
                trainable += param.numel()
            elif param.requires_grad:
                trainable += param.numel()
        return frozen / trainable if trainable else 0.0
