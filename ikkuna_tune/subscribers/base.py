"""Subscriptions (what a subscriber wants) and the subscriber base classes."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from ikkuna_tune.backends import BACKENDS, Backend, NullBackend, safe_tag
from ikkuna_tune.checks import check_int
from ikkuna_tune.messages import (
    DEFAULT_TAG,
    Message,
    MessageBundle,
    MessageBus,
    ModuleMessage,
    NamedModule,
    TopicType,
    typo_of_builtin_kind,
    unknown_kinds_message,
)

__all__ = [
    "CallbackSubscriber",
    "PlotSubscriber",
    "Subscriber",
    "Subscription",
    "SynchronizedSubscription",
]

logger = logging.getLogger(__name__)

#: ``quiet_for`` of a subscription that never needs the messages asked about.
_NEVER = sys.maxsize


def _check_kinds(kinds: object) -> tuple[str, ...]:
    if isinstance(kinds, str) or not isinstance(kinds, Iterable):
        raise ValueError(f"Expected `kinds` to be a list of message kinds but got {kinds!r}")
    kinds = tuple(kinds)
    if not kinds:
        raise ValueError("Expected `kinds` to name at least one message kind but got none")
    for kind in kinds:
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"Expected every kind to be a non-empty string but got {kind!r}")
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"Expected distinct kinds but got {list(kinds)}")
    # a typo of a built-in kind is an error now; other names may be topics that subscribers
    # publish, which the bus knows when this subscription is attached to it
    typos = [kind for kind in kinds if typo_of_builtin_kind(kind) is not None]
    if typos:
        raise ValueError(
            f"{unknown_kinds_message(typos)}. A topic that a subscriber publishes must not be "
            "named like a typo of a built-in kind"
        )
    return kinds


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int >= 1, else raise a ``ValueError`` naming ``name``."""
    return check_int(name, value)


def check_ylims(ylims: object) -> tuple[float, float] | None:
    """Return ``ylims`` as a ``(low, high)`` pair with ``low < high`` (or ``None``)."""
    if ylims is None:
        return None
    if (
        not isinstance(ylims, (tuple, list))
        or len(ylims) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in ylims)
        or not ylims[0] < ylims[1]
    ):
        raise ValueError(
            f"Expected `ylims` to be None or a pair (low, high) with low < high but got {ylims!r}"
        )
    return (float(ylims[0]), float(ylims[1]))


def check_probe_args(forward_fn: object, probe_tag: object) -> None:
    """Check the arguments of a subscriber that runs the model itself (through the Exporter's
    probe): ``forward_fn`` callable or None, ``probe_tag`` a tag other than the training tag."""
    if forward_fn is not None and not callable(forward_fn):
        raise ValueError(f"Expected `forward_fn` to be callable or None but got {forward_fn!r}")
    if not isinstance(probe_tag, str) or not probe_tag or probe_tag == DEFAULT_TAG:
        raise ValueError(
            f"Expected `probe_tag` to be a tag other than {DEFAULT_TAG!r} but got {probe_tag!r}"
        )


def check_has_model(subscriber: object, message_bus: object, forward_fn: object, use: str) -> None:
    """Raise ``ValueError`` when a subscriber that runs the model (to ``use`` it: 'probe',
    'evaluate') is attached to ``message_bus`` with neither a ``forward_fn`` nor an Exporter
    there to take the model from."""
    if isinstance(message_bus, MessageBus) and forward_fn is None and message_bus.exporter is None:
        raise ValueError(
            f"{type(subscriber).__name__} has no model to {use}: pass `forward_fn`, or attach it "
            f"to a bus that already has an Exporter ({message_bus!r} has none; create "
            "Exporter(model, optimizer, message_bus) first)"
        )


class Subscription:
    """Which messages a subscriber receives: some kinds, one tag, every ``subsample``-th message.

    A kind that looks like a typo of a built-in kind (``'weight_gradient'``) raises
    ``ValueError`` here, with a "did you mean"; any other kind that is not built in must be a
    topic some subscriber publishes, which the bus checks when the subscriber is attached.

    Args:
        subscriber: the subscriber that receives the messages.
        kinds: the message kinds to receive.
        tag: only messages with this tag are received; ``None`` receives every tag.
        subsample: process only every ``subsample``-th message per (layer, kind), starting with
            the first. Counted separately for every kind, so ``subsample=10`` also keeps only every
            tenth ``epoch_finished``.
    """

    def __init__(
        self,
        subscriber: Subscriber,
        kinds: Sequence[str],
        tag: str | None = DEFAULT_TAG,
        subsample: int = 1,
    ) -> None:
        self.kinds = _check_kinds(kinds)
        if tag is not None and (not isinstance(tag, str) or not tag):
            raise ValueError(f"Expected `tag` to be a non-empty string or None but got {tag!r}")
        self.tag = tag
        self.subsample = check_positive_int("subsample", subsample)
        self.subscriber = subscriber
        self.counter: dict[tuple[str | None, str], int] = {}
        # a subclass with its own receive_message needs every message of its tag (see needs_data)
        self._own_receive = type(self).receive_message is not Subscription.receive_message

    @property
    def routed_kinds(self) -> tuple[str, ...]:
        """Kinds the bus must deliver to this subscription."""
        return self.kinds

    def bind(self, message_bus: MessageBus) -> None:
        """Called on attaching to ``message_bus``, after its kinds are checked."""

    def accepts_tag(self, tag: str) -> bool:
        return self.tag is None or self.tag == tag

    def receive_message(self, message: Message) -> None:
        """Filter by tag and subsample, then hand the message on."""
        if self.tag is not None and message.tag != self.tag:
            return
        key = (message.key, message.kind)
        count = self.counter.get(key, 0)
        self.counter[key] = count + 1
        if count % self.subsample == 0:
            self._handle_message(message)

    def _handle_message(self, message: Message) -> None:
        self.subscriber.receive_message(message)

    def will_process(self, key: str | None, kind: str, tag: str) -> bool:
        """Whether the next message of ``kind`` for ``key`` (a layer name, or ``None`` for the
        network) under ``tag`` would reach the subscriber, or be thinned out by tag or subsample.

        Publishers use it to skip computing data nobody looks at (the message is still published,
        so the counts stay right). A subclass that overrides :meth:`receive_message` must
        override this as well; until it does, the answer is always ``True``.
        """
        # for this class, "looks at the data" and "must be delivered" are the same question
        return Subscription.needs_data(self, key, kind, tag)

    def needs_data(self, key: str | None, kind: str, tag: str, step: int | None = None) -> bool:
        """Whether the next message of ``kind`` for ``key`` under ``tag`` (of global step
        ``step``, where the publisher knows it) must be delivered, or :meth:`count_only` may
        stand in for it (it would only move a counter).

        Publishers call it before preparing a message at all. A subclass that overrides
        :meth:`receive_message` needs every message of its tag unless it overrides this too.
        """
        if self.tag is not None and tag != self.tag:
            return False
        if self._own_receive:
            return True
        return self.counter.get((key, kind), 0) % self.subsample == 0

    def count_only(self, key: str | None, kind: str, tag: str, step: int | None = None) -> None:
        """Account for a message that :meth:`needs_data` said need not be delivered."""
        if self.tag is not None and tag != self.tag:
            return
        counter_key = (key, kind)
        self.counter[counter_key] = self.counter.get(counter_key, 0) + 1

    def needs_any(
        self, keys: Sequence[str | None], kind: str, tag: str, step: int | None = None
    ) -> bool:
        """Whether :meth:`needs_data` holds for any of ``keys`` (messages of one step)."""
        if type(self).needs_data is not Subscription.needs_data:  # a subclass's own rule
            return any(self.needs_data(key, kind, tag, step) for key in keys)
        if self.tag is not None and tag != self.tag:
            return False
        if self._own_receive:
            return True
        counter, subsample = self.counter, self.subsample
        return any(counter.get((key, kind), 0) % subsample == 0 for key in keys)

    def count_all(
        self, keys: Sequence[str | None], kind: str, tag: str, step: int | None = None
    ) -> None:
        """:meth:`count_only` for a message of ``kind`` for each of ``keys``."""
        if type(self).count_only is not Subscription.count_only:  # a subclass's own counting
            for key in keys:
                self.count_only(key, kind, tag, step)
            return
        if self.tag is not None and tag != self.tag:
            return
        counter = self.counter
        for key in keys:
            counter[(key, kind)] = counter.get((key, kind), 0) + 1

    def quiet_for(self, keys: Sequence[str | None], kind: str, tag: str) -> int:
        """How many more messages of ``kind`` for each of ``keys`` under ``tag`` are sure to be
        only counted (:meth:`needs_data` false), as long as each comes at most once per group.

        The bus counts that many groups without asking again (see
        :meth:`MessageBus.skip_all`). A lower bound is always safe; a subclass with its own
        :meth:`needs_data`, :meth:`count_only` or :meth:`receive_message` gets 0 (ask every
        time) unless it overrides this too.
        """
        if self._own_receive or self._own_rules(Subscription):
            return 0
        if self.tag is not None and tag != self.tag:
            return _NEVER
        counter, subsample = self.counter, self.subsample
        # the next message for key is number counter[key]; it is needed at a multiple of subsample
        return min((-counter.get((key, kind), 0)) % subsample for key in keys)

    def _own_rules(self, base: type[Subscription]) -> bool:
        cls = type(self)
        return cls.needs_data is not base.needs_data or cls.count_only is not base.count_only

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kinds={list(self.kinds)}, tag={self.tag!r}, "
            f"subsample={self.subsample})"
        )


class SynchronizedSubscription(Subscription):
    """Collects the messages of one step into one :class:`MessageBundle` per identifier.

    The identifier is the layer for per-layer kinds and the network for meta kinds. A bundle is
    handed to the subscriber as soon as it holds a message of every kind for that step.
    ``subsample=k`` keeps every k-th complete bundle per identifier. A bundle that is still
    incomplete when the next step begins (a frozen layer publishes no gradients, say) is dropped.

    A bundle that subsampling will drop is never built: its messages are only counted (which
    kinds of which step have arrived), so that the completed bundles are counted exactly as if
    they had been built. Publishers that give the step to :meth:`MessageBus.skip` do not even
    build those messages.
    """

    def __init__(
        self,
        subscriber: Subscriber,
        kinds: Sequence[str],
        tag: str | None = DEFAULT_TAG,
        subsample: int = 1,
    ) -> None:
        super().__init__(subscriber, kinds, tag, subsample)
        self._open: dict[str | None, MessageBundle] = {}
        self._rounds: dict[str | None, int] = {}
        # bundles that will not be delivered: (their step, the kinds that have arrived)
        self._counted: dict[str | None, tuple[int, set[str]]] = {}
        self._layer_kinds: tuple[str, ...] = self.kinds
        self._network_kinds: tuple[str, ...] = self.kinds
        # a subclass with its own receive_message gets every message of its tag, unless it sets
        # this to False because its receive_message keeps the bundle rules of this class
        self._own_sync_receive = (
            type(self).receive_message is not SynchronizedSubscription.receive_message
        )

    def bind(self, message_bus: MessageBus) -> None:
        data = message_bus.data_kinds
        self._layer_kinds = tuple(k for k in self.kinds if k in data)
        self._network_kinds = tuple(k for k in self.kinds if k not in data)

    def _delivers(self, key: str | None, tag: str) -> bool:
        """Whether the bundle now being collected for ``key`` under ``tag`` will be delivered.

        It is iff the count of completed bundles is a multiple of ``subsample`` when it
        completes, and that count cannot change before it completes.
        """
        if self.tag is not None and tag != self.tag:
            return False
        return self._rounds.get(key, 0) % self.subsample == 0

    def will_process(self, key: str | None, kind: str, tag: str) -> bool:
        """Whether the bundle the next message for ``key`` joins would be delivered."""
        if self._own_sync_receive:
            return self.accepts_tag(tag)
        return self._delivers(key, tag)

    def needs_data(self, key: str | None, kind: str, tag: str, step: int | None = None) -> bool:
        # without the step a skipped message could not be told apart from the next step's
        if step is None or self._own_sync_receive:
            return self.accepts_tag(tag)
        return self._delivers(key, tag)

    def count_only(self, key: str | None, kind: str, tag: str, step: int | None = None) -> None:
        if step is not None and self.accepts_tag(tag):
            self._count(key, kind, step)

    def needs_any(
        self, keys: Sequence[str | None], kind: str, tag: str, step: int | None = None
    ) -> bool:
        if type(self).needs_data is not SynchronizedSubscription.needs_data:
            return any(self.needs_data(key, kind, tag, step) for key in keys)
        if step is None or self._own_sync_receive:
            return self.accepts_tag(tag)
        if self.tag is not None and tag != self.tag:
            return False
        rounds, subsample = self._rounds, self.subsample
        return any(rounds.get(key, 0) % subsample == 0 for key in keys)

    def count_all(
        self, keys: Sequence[str | None], kind: str, tag: str, step: int | None = None
    ) -> None:
        if type(self).count_only is not SynchronizedSubscription.count_only:
            for key in keys:
                self.count_only(key, kind, tag, step)
        elif step is not None and self.accepts_tag(tag):
            for key in keys:
                self._count(key, kind, step)

    def quiet_for(self, keys: Sequence[str | None], kind: str, tag: str) -> int:
        """Bundles that subsampling will drop, counted in messages of ``kind`` (a bundle has at
        most one of each kind per step, so a message of ``kind`` starts at most one new bundle).
        """
        if self._own_sync_receive or self._own_rules(SynchronizedSubscription):
            return 0
        if self.tag is not None and tag != self.tag:
            return _NEVER
        rounds, counted, subsample = self._rounds, self._counted, self.subsample
        quiet = _NEVER
        for key in keys:
            # the bundle the next message of kind joins: the open one, unless it already has one
            entry = counted.get(key)
            upcoming = rounds.get(key, 0) + (entry is not None and kind in entry[1])
            quiet = min(quiet, (-upcoming) % subsample)
        return quiet

    def _count(self, key: str | None, kind: str, step: int) -> None:
        """Note that a message of ``kind`` for ``key`` arrived in ``step``, for a bundle that
        will not be delivered: the same bookkeeping as building it, without the bundle."""
        entry = self._counted.get(key)
        if entry is None or entry[0] != step:  # an incomplete bundle of an earlier step is dropped
            entry = self._counted[key] = (step, set())
        entry[1].add(kind)
        if len(entry[1]) == len(self._network_kinds if key is None else self._layer_kinds):
            del self._counted[key]
            self._rounds[key] = self._rounds.get(key, 0) + 1

    def receive_message(self, message: Message) -> None:
        if self.tag is not None and message.tag != self.tag:
            return
        key = message.key
        if self._rounds.get(key, 0) % self.subsample != 0:
            self._count(key, message.kind, message.global_step)
            return
        bundle = self._open.get(key)
        if bundle is not None and bundle.global_step != message.global_step:
            logger.debug("Dropping incomplete %r of step %d", bundle, bundle.global_step)
            bundle = None
        if bundle is None:
            kinds = self._network_kinds if key is None else self._layer_kinds
            bundle = self._open[key] = MessageBundle(key, kinds)
        # a second message of a kind within one step (gradient accumulation) replaces the first
        bundle.messages.pop(message.kind, None)
        bundle.add_message(message)
        if bundle.complete():
            del self._open[key]
            self._rounds[key] = self._rounds.get(key, 0) + 1
            self.subscriber.receive_message(bundle)


class Subscriber:
    """Base class: receives messages (or bundles) and turns them into metrics.

    Subclasses build their subscriptions, call ``super().__init__``, declare the topics they
    publish with :meth:`_add_publication`, and override :meth:`compute`. A subscriber can be
    created without a bus and attached later (:meth:`attach`); :meth:`detach` removes it.
    """

    def __init__(
        self, subscriptions: Sequence[Subscription], message_bus: MessageBus | None = None
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
        self._publications: dict[str, TopicType] = {}
        self.message_bus: MessageBus | None = None
        if message_bus is not None:
            self.attach(message_bus)

    # --------------------------------------------------------------- wiring
    @property
    def kinds(self) -> tuple[str, ...]:
        """Every kind this subscriber receives."""
        return tuple(k for s in self.subscriptions for k in s.kinds)

    @property
    def publications(self) -> dict[str, TopicType]:
        """Topics this subscriber publishes, with their type (``'DATA'`` or ``'META'``)."""
        return dict(self._publications)

    def _add_publication(self, topic: str, type: TopicType = "DATA") -> None:
        """Declare a topic this subscriber publishes (registered on the bus it is attached to)."""
        if type not in ("DATA", "META"):
            raise ValueError(f"Expected topic type 'DATA' or 'META' but got {type!r}")
        self._publications[topic] = type
        if self.message_bus is not None:
            self.message_bus.register_topic(topic, type, owner=self)

    def attach(self, message_bus: MessageBus) -> None:
        """Register this subscriber and its topics on ``message_bus``.

        Raises:
            ValueError: if already attached, or if a subscribed kind is unknown to the bus.
        """
        if not isinstance(message_bus, MessageBus):
            raise ValueError(f"Expected a MessageBus but got {type(message_bus).__name__}")
        if self.message_bus is not None:
            raise ValueError(f"{self!r} is already attached to {self.message_bus!r}")
        registered: list[str] = []
        try:
            for topic, type_ in self._publications.items():
                message_bus.register_topic(topic, type_, owner=self)
                registered.append(topic)
            message_bus._add(self)
        except ValueError:
            for topic in registered:
                message_bus.deregister_topic(topic)
            raise
        self.message_bus = message_bus

    def detach(self) -> None:
        """Remove this subscriber (and its topics) from its bus."""
        if self.message_bus is None:
            return
        self.message_bus._remove(self)
        self.message_bus = None

    # ------------------------------------------------------------ receiving
    def receive_message(self, message_or_bundle: Message | MessageBundle) -> None:
        """Entry point for subscriptions; calls :meth:`compute`."""
        self.compute(message_or_bundle)

    def compute(self, message_or_bundle: Message | MessageBundle) -> None:
        """Turn one message (or, with a SynchronizedSubscription, one bundle) into a metric."""
        raise NotImplementedError(f"{type(self).__name__} must override compute()")

    # ----------------------------------------------------------- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """State worth keeping across a restore (tensors may stay on their device).

        Subclasses with such state (previous activations, power-iteration vectors, counters)
        override this and :meth:`load_state_dict`; the Tune integration stores it in the trial's
        checkpoint.
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(
                f"{type(self).__name__} keeps no state but was given keys {sorted(state)}"
            )

    # ----------------------------------------------------------- publishing
    def publish(
        self,
        topic: str,
        data: Any,
        source: Message | MessageBundle,
        module: NamedModule | None = None,
    ) -> None:
        """Publish ``data`` under ``topic`` with the step, epoch and tag of ``source``.

        The result is a per-layer message when ``module`` is given or ``source`` is about a layer,
        and a network message otherwise.
        """
        bus = self.message_bus
        if bus is None:
            return
        if topic not in self._publications:
            raise ValueError(
                f"{type(self).__name__} publishes {sorted(self._publications)}, not {topic!r}"
            )
        if module is None and isinstance(source, (ModuleMessage, MessageBundle)):
            module = source.module
        steps = {
            "global_step": source.global_step,
            "train_step": source.train_step,
            "epoch": source.epoch,
            "tag": source.tag,
        }
        if module is not None and self._publications[topic] == "DATA":
            bus.publish_module_message(topic, module, data, **steps)
        else:
            bus.publish_network_message(topic, data, **steps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kinds={list(self.kinds)})"


class CallbackSubscriber(Subscriber):
    """Calls ``callback(message)`` for each message (each bundle, if ``synchronized``)."""

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
        cls = SynchronizedSubscription if synchronized else Subscription
        super().__init__([cls(self, kinds, tag, subsample)], message_bus)

    def compute(self, message_or_bundle: Message | MessageBundle) -> None:
        self.callback(message_or_bundle)


class PlotSubscriber(Subscriber):
    """A subscriber whose scalar results are also written to a backend (the name is the original
    ikkuna's; it draws nothing itself: with ``backend='tb'`` its values go to TensorBoard files,
    with ``backend=None`` nowhere).

    Every scalar it publishes is sent to the backend as ``'{topic}/{layer}'`` (or ``'{topic}'``
    for network-wide results) at the message's global step. The backend buffers tensors and writes
    them when the bus is flushed (end of epoch, Tune report), so drawing costs no per-step sync.

    Args:
        subscriptions: as for :class:`Subscriber`.
        message_bus: as for :class:`Subscriber`.
        plot_config: optional ``title``, ``xlabel``, ``ylabel``, ``ylims`` for plots.
        backend: ``'tb'`` (TensorBoard event files in the bus's ``log_dir``) or ``None``.
    """

    def __init__(
        self,
        subscriptions: Sequence[Subscription],
        message_bus: MessageBus | None = None,
        plot_config: dict[str, Any] | None = None,
        backend: str | None = "tb",
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(
                f"Expected `backend` to be one of {list(BACKENDS)} but got {backend!r}"
            )
        if plot_config is not None:
            if not isinstance(plot_config, dict):
                raise ValueError(f"Expected `plot_config` to be a dict but got {plot_config!r}")
            unknown = set(plot_config) - {"title", "xlabel", "ylabel", "ylims"}
            if unknown:
                raise ValueError(
                    f"Unknown plot_config keys {sorted(unknown)}; "
                    "expected title, xlabel, ylabel, ylims"
                )
        self.plot_config = dict(plot_config or {})
        self.backend_name = backend
        self.backend: Backend = NullBackend()
        self._tags: dict[tuple[str, str | None], str] = {}
        super().__init__(subscriptions, message_bus)

    def attach(self, message_bus: MessageBus) -> None:
        super().attach(message_bus)
        self.backend = message_bus.backend(self.backend_name)

    def detach(self) -> None:
        super().detach()
        self.backend = NullBackend()

    def publish(
        self,
        topic: str,
        data: Any,
        source: Message | MessageBundle,
        module: NamedModule | None = None,
    ) -> None:
        super().publish(topic, data, source, module)
        if isinstance(data, (int, float)) or (isinstance(data, torch.Tensor) and data.numel() == 1):
            if module is None and isinstance(source, (ModuleMessage, MessageBundle)):
                module = source.module
            name = (
                module.name if module is not None and self._publications[topic] == "DATA" else None
            )
            tag = self._tags.get((topic, name))
            if tag is None:
                tag = self._tags[(topic, name)] = safe_tag(topic, name)
            self.backend.add_scalar(tag, data, source.global_step)
