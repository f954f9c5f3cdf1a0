"""Subscribers: turn the messages they receive into metrics and publish those on the bus.

:class:`Subscriber` is the base class; :class:`CallbackSubscriber` hands each message to a
function. :class:`~ikkuna_tune.subscribers.plotting.PlotSubscriber` adds a backend.
Which messages a subscriber receives is its :mod:`~ikkuna_tune.subscribers.subscriptions`.

Examples:
    >>> from ikkuna_tune.bus import MessageBus
    >>> bus = MessageBus()
    >>> losses = []
    >>> sub = CallbackSubscriber(["loss"], lambda m: losses.append(m.data), bus)
    >>> bus.publish_network_message("loss", 1.5, global_step=0, train_step=0, epoch=0)
    >>> losses, sub.message_bus is bus
    ([1.5], True)
    >>> sub.detach(); bus.subscribers
    ()
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ikkuna_tune.bus import MessageBus
from ikkuna_tune.checks import check_bool
from ikkuna_tune.messages import (
    DEFAULT_TAG,
    KindType,
    LayerBatch,
    Message,
    MessageBundle,
    ModuleMessage,
    NamedModule,
    NetworkMessage,
)
from ikkuna_tune.subscribers.state_values import check_loadable, portable, restored
from ikkuna_tune.subscribers.subscriptions import (
    Subscription,
    SynchronizedSubscription,
    bypassed,
)
from ikkuna_tune.unattached import made_without_bus

if TYPE_CHECKING:
    from ikkuna_tune.model_access import ModelAccess

__all__ = ["CallbackSubscriber", "Subscriber"]

logger = logging.getLogger(__name__)

#: the key of the subscriptions' counts in a subsampling subscriber's :meth:`Subscriber.state_dict`
SUBSCRIPTIONS_STATE = "subscriptions"


def _apply(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``value`` with ``fn`` applied to every tensor in it (through dicts, lists and tuples)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, dict):
        return {k: _apply(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_apply(v, fn) for v in value)
    return value


class Subscriber:
    """Base class: receives messages (or bundles) and turns them into metrics.

    A subclass sets up its own attributes, then calls ``super().__init__`` with its
    subscriptions, the bus (if any) and the kinds it ``publishes``, and overrides
    :meth:`compute`. A subscriber can be created without a bus and attached later
    (:meth:`attach`, the same as ``bus.register_subscriber(subscriber)``); :meth:`detach` removes
    it.

    A subscriber that runs the model itself (``uses_model`` set to what it does with it,
    ``'probe'`` or ``'evaluate'``) is handed a :class:`~ikkuna_tune.model_access.ModelAccess` by
    the Exporter on its bus (:meth:`use_model`); attaching it to a bus without one raises
    ``ValueError`` unless it was given a ``forward_fn``.

    Args:
        subscriptions: what it receives; each created for this subscriber.
        message_bus: attach to this bus right away.
        publishes: the kinds it publishes, each ``'DATA'`` (per layer) or ``'META'``.

    Examples:
        >>> class DoubleLoss(Subscriber):
        ...     def __init__(self, message_bus=None):
        ...         subscriptions = [Subscription(self, ["loss"])]
        ...         super().__init__(subscriptions, message_bus, publishes={"loss_x2": "META"})
        ...     def compute(self, message):
        ...         self.publish("loss_x2", 2 * message.data, message)
        >>> bus, got = MessageBus(), []
        >>> doubler = DoubleLoss(bus)
        >>> _ = CallbackSubscriber(["loss_x2"], got.append, bus)
        >>> bus.publish_network_message("loss", 0.25, global_step=7, train_step=7, epoch=0)
        >>> [(m.kind, m.data, m.global_step) for m in got], bus.published_kinds
        ([('loss_x2', 0.5, 7)], {'loss_x2': DoubleLoss(kinds=['loss'])})
    """

    #: what a subscriber that runs the model does with it ('probe', 'evaluate'), else None
    uses_model: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse a subclass that has the original ikkuna's ``process_messages`` (its own, or
        a mixin's) but keeps the ``compute`` and ``receive_message`` (and their batch forms) of
        this library's classes: nothing here calls ``process_messages``, so its code would be
        bypassed in silence."""
        super().__init_subclass__(**kwargs)
        entries = ("compute", "receive_message", "compute_batch", "receive_batch")
        if bypassed(cls, "process_messages", entries):
            raise TypeError(
                f"{cls.__qualname__} has process_messages(), the original ikkuna's callback "
                "for each message or bundle, which ikkuna_tune never calls: override "
                "compute(message_or_bundle) instead (receive_message() hands every message or "
                "bundle to it)"
            )

    def __init__(
        self,
        subscriptions: Sequence[Subscription],
        message_bus: MessageBus | None = None,
        *,
        publishes: Mapping[str, KindType] | None = None,
    ) -> None:
        subscriptions = list(subscriptions)
        if not subscriptions:
            raise ValueError("Expected at least one Subscription but got none")
        for subscription in subscriptions:
            if not isinstance(subscription, Subscription):
                raise ValueError(
                    f"Expected Subscription objects but got {type(subscription).__name__}"
                )
            if subscription.subscriber is not self:
                raise ValueError("Each Subscription must be created for this subscriber")
        self.subscriptions = subscriptions
        self._publications: dict[str, KindType] = {}
        self.message_bus: MessageBus | None = None
        #: the model this subscriber runs, handed over by the Exporter (see :meth:`use_model`)
        self.model_access: ModelAccess | None = None
        for kind, type_ in (publishes or {}).items():
            self._add_publication(kind, type_)
        if message_bus is not None:
            self.attach(message_bus)
        else:
            made_without_bus(self, f"{type(self).__name__}(kinds={list(self.kinds)})")

    # --------------------------------------------------------------- wiring
    @property
    def kinds(self) -> tuple[str, ...]:
        """Every kind this subscriber receives."""
        return tuple(k for s in self.subscriptions for k in s.kinds)

    @property
    def publications(self) -> dict[str, KindType]:
        """The kinds this subscriber publishes, with their type (``'DATA'`` or ``'META'``)."""
        return dict(self._publications)

    def unmeasurable(self) -> dict[str, str]:
        """The kinds this subscriber publishes that it knows it cannot measure in this run,
        each with why (a report's warning about them says so); none by default.

        Examples:
            >>> from ikkuna_tune.subscribers import NormSubscriber
            >>> NormSubscriber("weights", backend=None).unmeasurable()
            {}
        """
        return {}

    def publications_on(self, message_bus: MessageBus) -> dict[str, KindType]:
        """The kinds this subscriber publishes on ``message_bus``, with their types; what the bus
        registers when it attaches this subscriber. A subclass whose kinds depend on the bus's
        (a derived kind is per layer if its source is) decides here, and raises ``ValueError``
        if it cannot work with them."""
        return dict(self._publications)

    def _add_publication(self, kind: str, type: KindType = "DATA") -> None:
        """Declare a kind this subscriber publishes (registered on the bus it is attached to).

        The original ikkuna's name; subclasses usually pass ``publishes=`` to ``__init__``.
        """
        if type not in ("DATA", "META"):
            raise ValueError(f"Expected kind type 'DATA' or 'META' but got {type!r}")
        self._publications[kind] = type
        if self.message_bus is not None:
            self.message_bus.register_kind(kind, type, owner=self)

    def attach(self, message_bus: MessageBus) -> None:
        """Attach to ``message_bus`` (:meth:`MessageBus.register_subscriber`).

        Raises:
            ValueError: if already attached, or if a subscribed kind is unknown to the bus.
        """
        if not isinstance(message_bus, MessageBus):
            raise ValueError(f"Expected a MessageBus but got {type(message_bus).__name__}")
        message_bus.register_subscriber(self)

    def detach(self) -> None:
        """Remove this subscriber (and the kinds it publishes) from its bus."""
        if self.message_bus is not None:
            self.message_bus.deregister_subscriber(self)

    def attached(self, message_bus: MessageBus) -> None:
        """Called by ``message_bus`` once this subscriber is registered there (and the bus's
        listeners, its Exporter among them, have been told). Raising undoes the attaching."""
        if (
            self.uses_model is not None
            and self.model_access is None
            and getattr(self, "forward_fn", None) is None
        ):
            raise ValueError(
                f"{type(self).__name__} has no model to {self.uses_model}: pass `forward_fn`, or "
                f"attach it to a bus that already has an Exporter ({message_bus!r} has none; "
                "create Exporter(model, optimizer, message_bus) first)"
            )

    def detached(self, message_bus: MessageBus) -> None:
        """Called by ``message_bus`` once this subscriber is removed from it: the model of that
        bus's Exporter is no longer this subscriber's (attached to another bus, it runs that
        bus's)."""
        if self.model_access is not None:
            self.use_model(None)

    def use_model(self, access: ModelAccess | None) -> None:
        """Run the model through ``access`` from now on (None: the access has closed)."""
        self.model_access = access

    def restored_without_state(self) -> None:
        """Called when training goes on from a checkpoint that holds no state of this
        subscriber (ikkuna_tune's state file was missing or unreadable): the model is the
        checkpoint's, while this subscriber starts afresh. A subscriber that measures against
        the start of training must stop doing so, since the start is unknown (nothing here:
        most subscribers measure each step or epoch on its own)."""

    def sample_counts(self) -> dict[tuple[str, str], Any]:
        """How many samples the latest value it published of each of its outputs that is a
        fraction of samples (an accuracy) counted, by ``(kind, tag)``: a 0-d tensor or a
        number. A data-parallel job reports such an output as its ranks' values weighted by
        these counts, the fraction over all their samples, whatever the size of each rank's
        shard; an output without a count is the plain mean over the ranks. None here."""
        return {}

    # ------------------------------------------------------------ receiving
    def receive_message(self, message_or_bundle: Message | MessageBundle) -> None:
        """Entry point for subscriptions; calls :meth:`compute`."""
        self.compute(message_or_bundle)

    def compute(self, message_or_bundle: Message | MessageBundle) -> None:
        """Turn one message (or, with a SynchronizedSubscription, one bundle) into a metric."""
        raise NotImplementedError(f"{type(self).__name__} must override compute()")

    #: whether :meth:`compute_batch` reduces a step's layers at once exactly as :meth:`compute`
    #: does each message; the bus then delivers batches to its subscriptions without
    #: subsampling (:meth:`MessageBus.publish_batch <ikkuna_tune.bus.MessageBus.publish_batch>`)
    takes_batches: ClassVar[bool] = False

    def receive_batch(self, batch: LayerBatch) -> None:
        """Entry point for subscriptions that take batches; calls :meth:`compute_batch`."""
        self.compute_batch(batch)

    def compute_batch(self, batch: LayerBatch) -> None:
        """The messages of one kind and step for several layers at once; by default
        :meth:`compute` for each of them."""
        for message in batch.messages():
            self.compute(message)

    # ----------------------------------------------------------- checkpoint
    def add_state(self, name: str, default: Any, check: Callable[[Any], Any] | None = None) -> None:
        """Declare ``self.<name>`` (set to ``default`` now) as state worth keeping across a
        restore: :meth:`state_dict` saves it under ``name`` (tensors detached, on the CPU;
        NumPy scalars and arrays as numbers and tensors, given back as NumPy values; dict and
        list subclasses, a ``Counter`` or a ``defaultdict``, as plain dicts and lists, which
        ``check`` can turn back, ``check=Counter``; anything a checkpoint could not read back
        raises ``ValueError`` there),
        :meth:`load_state_dict` restores it (through ``check``, which may convert the saved
        value and raises ``ValueError`` for a bad one) and :meth:`to` moves its tensors.

        Examples:
            >>> import torch
            >>> sub = CallbackSubscriber(["loss"], print)
            >>> sub.add_state("seen", {"fc": torch.ones(2)})
            >>> sub.state_dict()
            {'seen': {'fc': tensor([1., 1.])}}
            >>> sub.load_state_dict({"seen": {"fc": torch.zeros(2)}}); sub.seen["fc"]
            tensor([0., 0.])
        """
        self.__dict__.setdefault("_states", {})[name] = check
        setattr(self, name, default)

    def _declared(self) -> dict[str, Callable[[Any], Any] | None]:
        return self.__dict__.get("_states", {})

    def state_dict(self) -> dict[str, Any]:
        """The state declared with :meth:`add_state`, tensors detached and on the CPU; the Tune
        integration keeps it in the trial's checkpoint. A subscriber that subsamples also keeps
        its subscriptions' counts (under ``'subscriptions'``), so that a restored run measures
        at the steps the uninterrupted one would."""
        state = {name: portable(getattr(self, name)) for name in self._declared()}
        for name, value in state.items():
            check_loadable(type(self).__name__, name, value)
        counts = self._subscription_counts()
        if counts is not None:
            state[SUBSCRIPTIONS_STATE] = counts
        return state

    def _subscription_counts(self) -> list[Any] | None:
        """The subscriptions' counts, brought up to date, if any of them subsamples (what a
        restored subscriber needs to go on thinning where this one stands), else None."""
        if not any(s.subsample > 1 for s in self.subscriptions):
            return None
        if self.message_bus is not None:
            self.message_bus.settle()
        return [s.counts() for s in self.subscriptions]

    def _load_subscription_counts(self, state: dict[str, Any]) -> dict[str, Any]:
        """Restore the subscriptions' counts from ``state`` (if it holds them); returns the
        rest of ``state``."""
        if not isinstance(state, dict) or SUBSCRIPTIONS_STATE not in state:
            return state
        state = dict(state)
        counts = state.pop(SUBSCRIPTIONS_STATE)
        if not isinstance(counts, list) or len(counts) != len(self.subscriptions):
            raise ValueError(
                f"Expected the counts of {len(self.subscriptions)} subscriptions under "
                f"{SUBSCRIPTIONS_STATE!r} but got {counts!r:.80}"
            )
        if self.message_bus is not None:
            self.message_bus.settle()
        for subscription, saved in zip(self.subscriptions, counts):
            subscription.load_counts(saved)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Raises:
            ValueError: if ``state`` does not hold exactly the declared keys, or a value fails
                its check.
        """
        state = self._load_subscription_counts(state)
        declared = self._declared()
        if not isinstance(state, dict) or set(state) != set(declared):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            if not declared:
                raise ValueError(f"{type(self).__name__} keeps no state but was given keys {got}")
            expected = ", ".join(f"{name!r}: ..." for name in declared)
            raise ValueError(
                f"Expected a state {{{expected}}} for {type(self).__name__} but got keys {got}"
            )
        for name, check in declared.items():
            value = restored(state[name])  # NumPy values as they were saved
            setattr(self, name, check(value) if check is not None else value)

    def to(self, device: torch.device | str) -> Subscriber:
        """Move the tensors of the declared state to ``device``; returns this subscriber."""
        for name in self._declared():
            setattr(self, name, _apply(getattr(self, name), lambda t: t.to(device)))
        return self

    # ----------------------------------------------------------- publishing
    def publish(
        self,
        kind: str,
        data: Any,
        source: Message | MessageBundle,
        module: NamedModule | None = None,
    ) -> None:
        """Publish ``data`` under ``kind`` with the step, epoch and tag of ``source``.

        The result is a per-layer message when ``module`` is given or ``source`` is about a layer,
        and a network message otherwise. A tensor published is held as it is, not copied, and
        read when the trial reports (one transfer for all values): publish a tensor that is not
        changed afterwards (a new one, not a running total that is reset in place, which the
        report would read as it is then).

        Raises:
            ValueError: for a kind declared per layer (``'DATA'``) with no layer to publish it
                for (a network message as ``source`` and no ``module``): in a report its value
                would have replaced the kind's values of every layer.
        """
        first, module = _origin(source, module)
        if module is None and self.message_bus is not None:
            if self.message_bus.kind_type(kind) == "DATA" and kind in self._publications:
                raise ValueError(
                    f"{type(self).__name__} publishes {kind!r}, declared per layer ('DATA'), "
                    f"from a {first.kind!r} message, which is about no layer: pass `module=` "
                    f"(the layer the value is about) or declare {kind!r} as 'META' (one value "
                    "for the network)"
                )
        bus = self._bus_for(kind)
        if bus is None:
            return
        step, train_step, epoch, tag = first.global_step, first.train_step, first.epoch, first.tag
        if module is not None and bus.kind_type(kind) == "DATA":
            bus.publish(ModuleMessage(kind, tag, step, train_step, epoch, data, module))
        else:
            bus.publish(NetworkMessage(kind, tag, step, train_step, epoch, data))

    def _bus_for(self, kind: str) -> MessageBus | None:
        """The bus to publish ``kind`` on; None when detached or when nobody receives it (no
        message is built: this runs per step)."""
        bus = self.message_bus
        if bus is None:
            return None
        if kind not in self._publications:
            raise ValueError(
                f"{type(self).__name__} publishes {sorted(self._publications)}, not {kind!r}"
            )
        return bus if bus.has_subscribers(kind) else None

    def publish_batch(self, kind: str, data: Sequence[Any], source: LayerBatch) -> None:
        """Publish per-layer ``data`` (one datum per layer of ``source``, in its order) under
        ``kind`` with the step, epoch and tag of ``source``: one delivery for all layers."""
        bus = self._bus_for(kind)
        if bus is None:
            return
        step = (source.tag, source.global_step, source.train_step, source.epoch)
        bus.publish_batch(LayerBatch(kind, *step, source.modules, data))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kinds={list(self.kinds)})"


def _origin(
    source: Message | MessageBundle, module: NamedModule | None
) -> tuple[Message, NamedModule | None]:
    """The message a result derives from (a bundle's first) and the layer it is about:
    ``module`` if given, else that message's layer (None for a network message)."""
    first = source.first() if isinstance(source, MessageBundle) else source
    if module is None and isinstance(first, ModuleMessage):
        module = first.module
    return first, module


class CallbackSubscriber(Subscriber):
    """Calls ``callback(message)`` for each message (each bundle, if ``synchronized``).

    Examples:
        >>> bus, got = MessageBus(), []
        >>> sub = CallbackSubscriber(["loss"], got.append, bus, tag="eval")
        >>> for tag, loss in [("default", 0.9), ("eval", 0.7)]:
        ...     bus.publish_network_message("loss", loss, global_step=0, train_step=0, epoch=0,
        ...                                 tag=tag)
        >>> [(m.tag, m.data) for m in got]  # only the messages tagged 'eval'
        [('eval', 0.7)]
    """

    def __init__(
        self,
        kinds: Sequence[str],
        callback: Callable[[Any], None],
        message_bus: MessageBus | None = None,
        tag: str | None = DEFAULT_TAG,
        subsample: int = 1,
        synchronized: bool = False,
    ) -> None:
        if not callable(callback):
            raise ValueError(f"Expected `callback` to be callable but got {callback!r}")
        self.callback = callback
        cls = SynchronizedSubscription if check_bool("synchronized", synchronized) else Subscription
        super().__init__([cls(self, kinds, tag, subsample)], message_bus)

    def compute(self, message_or_bundle: Message | MessageBundle) -> None:
        self.callback(message_or_bundle)
