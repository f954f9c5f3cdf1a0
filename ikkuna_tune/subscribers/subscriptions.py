"""Subscriptions: which messages a subscriber receives (kinds, a tag, subsampling, bundles).

Examples:
    >>> from ikkuna_tune.subscribers import CallbackSubscriber
    >>> sub = CallbackSubscriber(["weights"], print, subsample=10)
    >>> sub.subscriptions[0]
    Subscription(kinds=['weights'], tag='default', subsample=10)
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ikkuna_tune.checks import check_int
from ikkuna_tune.messages import (
    DEFAULT_TAG,
    LayerBatch,
    Message,
    MessageBundle,
    NetworkMessage,
    check_tag,
    typo_of_builtin_kind,
    unknown_kinds_message,
)

if TYPE_CHECKING:
    from ikkuna_tune.bus import MessageBus
    from ikkuna_tune.subscribers.base import Subscriber

__all__ = ["LIVE_KINDS", "Subscription", "SynchronizedSubscription"]

logger = logging.getLogger(__name__)

#: ``quiet_for`` of a subscription that never needs the messages asked about.
_NEVER = sys.maxsize

#: Kinds whose tensor is the model's own (a parameter, a layer's output), which can change in
#: place before the bundle holding it is complete: the optimizer steps the weights, an in-place
#: activation function overwrites a layer's output. An open bundle keeps a copy of them.
LIVE_KINDS = frozenset({"weights", "biases", "activations"})


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
    # a typo of a built-in kind is an error now; other names may be kinds that subscribers
    # publish, which the bus knows when this subscription is attached to it
    typos = [kind for kind in kinds if typo_of_builtin_kind(kind) is not None]
    if typos:
        raise ValueError(
            f"{unknown_kinds_message(typos)}. A kind that a subscriber publishes must not be "
            "named like a typo of a built-in kind"
        )
    return kinds


def own_override(cls: type, name: str) -> bool:
    """Whether ``cls``'s method ``name`` is defined outside ikkuna_tune (a user's class, or a
    mixin's): code the library's own classes know nothing of.

    Examples:
        >>> own_override(Subscription, "receive_message")
        False
        >>> user_code = {"__module__": "user_code", "_handle_message": print}
        >>> mine = type("Mine", (Subscription,), user_code)
        >>> own_override(mine, "_handle_message"), own_override(mine, "receive_message")
        (True, False)
    """
    owner = next((base for base in cls.__mro__ if name in vars(base)), None)
    return owner is not None and not owner.__module__.startswith("ikkuna_tune.")


def bypassed(cls: type, old: str, entries: tuple[str, ...]) -> bool:
    """Whether ``cls`` has a method ``old`` (the original ikkuna's name for an override point)
    while each of its methods ``entries`` (what is called here instead) is still that of one of
    ikkuna_tune's own classes: ``old`` would never run.

    Examples:
        >>> def handle_message(self, message): ...
        >>> def receive(self, message): return self.handle_message(message)
        >>> ported = {"__module__": "user_code", "handle_message": handle_message}
        >>> type("Ported", (Subscription,), ported)
        Traceback (most recent call last):
        ...
        TypeError: Ported has handle_message(), the original ikkuna's entry point ...
        >>> calls_it = type("CallsIt", (Subscription,), {**ported, "receive_message": receive})
        >>> bypassed(calls_it, "handle_message", ("receive_message",))
        False
    """
    return hasattr(cls, old) and not any(own_override(cls, entry) for entry in entries)


class Subscription:
    """Which messages a subscriber receives: some kinds, one tag, every ``subsample``-th message.

    A kind that looks like a typo of a built-in kind (``'weight_gradient'``) raises
    ``ValueError`` here, with a "did you mean"; any other kind that is not built in must be a
    kind some subscriber publishes, which the bus checks when the subscriber is attached.

    Args:
        subscriber: the subscriber that receives the messages.
        kinds: the message kinds to receive.
        tag: only messages with this tag are received; ``None`` receives every tag.
        subsample: process only every ``subsample``-th message per (layer, kind), starting with
            the first. Counted separately for every kind, so ``subsample=10`` also keeps only every
            tenth ``epoch_finished``; with ``tag=None``, separately for every tag too (training
            messages and an evaluation pass's are thinned out each on their own).

    Examples:
        >>> from ikkuna_tune.bus import MessageBus
        >>> from ikkuna_tune.subscribers import CallbackSubscriber
        >>> bus, steps = MessageBus(), []
        >>> sub = CallbackSubscriber(["loss"], lambda m: steps.append(m.global_step), bus,
        ...                          subsample=2)
        >>> for step in range(6):
        ...     bus.publish_network_message("loss", 0.5, global_step=step, train_step=step, epoch=0)
        >>> steps  # the 1st, 3rd and 5th message
        [0, 2, 4]
        >>> Subscription(sub, ["weight_gradient"])
        Traceback (most recent call last):
        ...
        ValueError: Unknown message kind(s) ['weight_gradient']; did you mean 'weight_gradients'?...
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse a subclass that has the original ikkuna's ``handle_message`` (its own, or a
        mixin's) but keeps the ``receive_message`` and ``_handle_message`` of this library's
        classes: nothing here calls ``handle_message``, so its filter would be bypassed in
        silence."""
        super().__init_subclass__(**kwargs)
        if bypassed(cls, "handle_message", ("receive_message", "_handle_message")):
            raise TypeError(
                f"{cls.__qualname__} has handle_message(), the original ikkuna's entry point "
                "for each incoming message, which ikkuna_tune never calls: override "
                "receive_message(message) instead (it filters by tag and subsample, then "
                "hands the message on)"
            )

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
        if tag is not None:
            check_tag("tag", tag)
        self.tag = tag
        self.subsample = check_int("subsample", subsample)
        self.subscriber = subscriber
        #: messages counted per (layer, kind): of the subscription's tag, or with ``tag=None``
        #: of the default tag (the other tags' are in ``tag_counters``)
        self.counter: dict[tuple[str | None, str], int] = {}
        self.tag_counters: dict[str, dict[tuple[str | None, str], int]] = {}
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

    def _counter(self, tag: str) -> dict[tuple[str | None, str], int]:
        """The counts that messages under ``tag`` go by."""
        if self.tag is not None or tag == DEFAULT_TAG:
            return self.counter
        counter = self.tag_counters.get(tag)
        if counter is None:
            counter = self.tag_counters[tag] = {}
        return counter

    def receive_message(self, message: Message) -> None:
        """Filter by tag and subsample, then hand the message on."""
        if self.tag is not None and message.tag != self.tag:
            return
        key = (message.key, message.kind)
        counter = self.counter if self.tag is not None else self._counter(message.tag)
        count = counter.get(key, 0)
        counter[key] = count + 1
        if count % self.subsample == 0:
            self._handle_message(message)

    def _handle_message(self, message: Message) -> None:
        self.subscriber.receive_message(message)

    def realign(self, key: str) -> None:
        """Count for layer ``key`` the messages it sat out (a frozen layer publishes no
        gradients): each kind's count for it rises to the largest of the other layers', so
        that, unfrozen, it is subsampled at the steps the others are (a step's mean over the
        layers is then over all of them, not the one layer out of phase). Only a count that
        lags rises; a layer never counted stays as it is."""
        counter = self.counter
        for kind in self.kinds:
            own = counter.get((key, kind))
            if own is None:
                continue
            others = [n for (k, c), n in counter.items() if c == kind and k not in (key, None)]
            if others and max(others) > own:
                counter[(key, kind)] = max(others)

    def counts(self) -> dict[str, list[list[Any]]]:
        """How many messages of each layer and kind it has counted (what subsampling goes
        by), as plain lists for a checkpoint; :meth:`load_counts` restores them."""
        counts = {"counter": [[key, kind, n] for (key, kind), n in self.counter.items()]}
        if self.tag_counters:
            counts["tag_counter"] = [
                [tag, key, kind, n]
                for tag, counter in self.tag_counters.items()
                for (key, kind), n in counter.items()
            ]
        return counts

    def load_counts(self, counts: dict[str, list[list[Any]]]) -> None:
        """Restore what :meth:`counts` returned."""
        self.counter = {(key, kind): int(n) for key, kind, n in counts.get("counter", [])}
        self.tag_counters = {}
        for tag, key, kind, n in counts.get("tag_counter", []):
            self.tag_counters.setdefault(tag, {})[(key, kind)] = int(n)

    @property
    def takes_batches(self) -> bool:
        """Whether this subscription can be handed a step's layers at once
        (:meth:`receive_batch`): it keeps every message (``subsample=1``), its subscriber
        reduces a batch as it would each message, and neither has a message handler of a
        user's (``_handle_message`` here, ``receive_message`` there, which a batch would go
        around); or it never receives the default tag that batches are published under."""
        if self.tag is not None and self.tag != DEFAULT_TAG:
            return True
        return (
            self.subsample == 1
            and not self._own_receive
            and bool(getattr(self.subscriber, "takes_batches", False))
            # a user's message handler, here or in the subscriber, sees every message
            and not own_override(type(self), "_handle_message")
            and not own_override(type(self.subscriber), "receive_message")
        )

    def receive_batch(self, batch: LayerBatch) -> None:
        """The messages of ``batch`` at once (only when :attr:`takes_batches`): with
        ``subsample=1`` nothing needs counting, so the batch goes to the subscriber whole."""
        if self.accepts_tag(batch.tag):
            self.subscriber.receive_batch(batch)

    def will_process(self, key: str | None, kind: str, tag: str, step: int | None = None) -> bool:
        """Whether the next message of ``kind`` for ``key`` (a layer name, or ``None`` for the
        network) under ``tag`` (in global step ``step``, where known) would reach the
        subscriber, or be thinned out by tag or subsample.

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
        return self._counter(tag).get((key, kind), 0) % self.subsample == 0

    def count_only(self, key: str | None, kind: str, tag: str, step: int | None = None) -> None:
        """Account for a message that :meth:`needs_data` said need not be delivered."""
        if self.tag is not None and tag != self.tag:
            return
        counter, counter_key = self._counter(tag), (key, kind)
        counter[counter_key] = counter.get(counter_key, 0) + 1

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
        counter, subsample = self._counter(tag), self.subsample
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
        counter = self._counter(tag)
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
        counter, subsample = self._counter(tag), self.subsample
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

    The identifier is the layer for per-layer kinds and the network for meta kinds: per-layer
    kinds beside network kinds (``["weights", "loss"]``) give each layer a bundle of the
    per-layer kinds and the network one of the others, never one bundle of all (where the
    original ikkuna raised ``RuntimeError``). A bundle is
    handed to the subscriber as soon as it holds a message of every kind for that step.
    ``subsample=k`` keeps the bundles of every k-th step that completes one per identifier. A
    step with several forward passes (gradient accumulation) completes a bundle per pass where
    every kind of the bundle is published per pass (``activations``, ``loss``, outputs,
    labels): they all count as that step's one round, delivered or dropped together. A bundle
    that also waits for a kind published once per step (``weight_gradients``, ``weights``,
    updates) completes once, when that kind comes, with the step's last pass's messages of
    the per-pass kinds (each pass's replaces the one before). A bundle that is still
    incomplete when the next step begins (a frozen layer publishes no gradients, say) is dropped.
    While a bundle waits, it keeps a copy of the tensors of :data:`LIVE_KINDS` (weights the
    optimizer steps in place, a layer's output an in-place activation overwrites), so that each
    message reaches the subscriber as it was published.

    A bundle that subsampling will drop is never built: its messages are only counted (which
    kinds of which step have arrived), so that the completed bundles are counted exactly as if
    they had been built. Publishers that give the step to :meth:`MessageBus.skip` do not even
    build those messages.

    Examples:
        >>> from ikkuna_tune.bus import MessageBus
        >>> from ikkuna_tune.subscribers import CallbackSubscriber
        >>> bus, bundles = MessageBus(), []
        >>> sub = CallbackSubscriber(["loss", "input_labels"], bundles.append, bus,
        ...                          synchronized=True)
        >>> def publish(kind, data, step):
        ...     bus.publish_network_message(kind, data, global_step=step, train_step=step, epoch=0)
        >>> publish("loss", 0.9, step=0)  # step 0 brings no labels: its bundle is dropped
        >>> publish("loss", 0.7, step=1); publish("input_labels", [1, 0], step=1)
        >>> [(b.global_step, b["loss"], b["input_labels"]) for b in bundles]
        [(1, 0.7, [1, 0])]
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
        # the step of each identifier's latest completed round (another bundle completed in that
        # step belongs to the same round)
        self._round_steps: dict[str | None, int] = {}
        # bundles that will not be delivered: (their step, the kinds that have arrived)
        self._counted: dict[str | None, tuple[int, set[str]]] = {}
        self._layer_kinds: tuple[str, ...] = self.kinds
        self._network_kinds: tuple[str, ...] = self.kinds
        # a subclass with its own receive_message gets every message of its tag, unless it sets
        # this to False because its receive_message keeps the bundle rules of this class
        self._own_sync_receive = (
            type(self).receive_message is not SynchronizedSubscription.receive_message
        )

    def counts(self) -> dict[str, list[list[Any]]]:
        """The bundles completed per layer (what subsampling goes by), for a checkpoint (taken
        between steps, when no bundle is open)."""
        return {
            **super().counts(),
            "rounds": [[key, n] for key, n in self._rounds.items()],
            "round_steps": [[key, step] for key, step in self._round_steps.items()],
        }

    def realign(self, key: str) -> None:
        """:meth:`Subscription.realign` for bundles: the layer's completed rounds rise to the
        largest of the other layers'."""
        super().realign(key)
        own = self._rounds.get(key)
        others = [n for k, n in self._rounds.items() if k not in (key, None)]
        if own is not None and others and max(others) > own:
            self._rounds[key] = max(others)

    def load_counts(self, counts: dict[str, list[list[Any]]]) -> None:
        super().load_counts(counts)
        self._rounds = {key: int(n) for key, n in counts.get("rounds", [])}
        self._round_steps = {key: int(step) for key, step in counts.get("round_steps", [])}
        self._open.clear()
        self._counted.clear()

    def bind(self, message_bus: MessageBus) -> None:
        data = message_bus.data_kinds
        self._layer_kinds = tuple(k for k in self.kinds if k in data)
        self._network_kinds = tuple(k for k in self.kinds if k not in data)

    def _round_of(self, key: str | None, step: int | None) -> int:
        """The round a bundle of ``step`` for ``key`` belongs to: the count of rounds completed
        before it, or the latest round's number if it completed in ``step`` too (a second
        forward pass of the step). Without ``step``: a bundle of a new step."""
        rounds = self._rounds.get(key, 0)
        if step is not None and rounds and self._round_steps.get(key) == step:
            return rounds - 1
        return rounds

    def _complete_round(self, key: str | None, step: int) -> None:
        if self._round_steps.get(key) != step or not self._rounds.get(key):
            self._rounds[key] = self._rounds.get(key, 0) + 1
            self._round_steps[key] = step

    def _delivers(self, key: str | None, tag: str, step: int | None = None) -> bool:
        """Whether the bundle now being collected for ``key`` under ``tag`` (in ``step``, if
        given) will be delivered.

        It is iff its round (:meth:`_round_of`) is a multiple of ``subsample``, and that
        cannot change before it completes.
        """
        if self.tag is not None and tag != self.tag:
            return False
        if step is not None:
            return self._round_of(key, step) % self.subsample == 0
        # without the step, the bundle may be another pass of the latest round's step or the
        # first of a new step's (it may be delivered if either round is), unless a message of
        # a later step has come (an open or counted bundle of that step; one of an earlier
        # step is an incomplete leftover, which says nothing)
        rounds = self._rounds.get(key, 0)
        if rounds % self.subsample == 0:
            return True
        last = self._round_steps.get(key)
        if last is None or (rounds - 1) % self.subsample != 0:
            return False
        counted, bundle = self._counted.get(key), self._open.get(key)
        later = (counted is not None and counted[0] > last) or (
            bundle is not None and bundle.global_step > last
        )
        return not later

    def will_process(self, key: str | None, kind: str, tag: str, step: int | None = None) -> bool:
        """Whether the bundle the next message for ``key`` (in ``step``, where known) joins
        would be delivered."""
        if self._own_sync_receive:
            return self.accepts_tag(tag)
        return self._delivers(key, tag, step)

    def needs_data(self, key: str | None, kind: str, tag: str, step: int | None = None) -> bool:
        # without the step a skipped message could not be told apart from the next step's
        if step is None or self._own_sync_receive:
            return self.accepts_tag(tag)
        return self._delivers(key, tag, step)

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
        subsample = self.subsample
        return any(self._round_of(key, step) % subsample == 0 for key in keys)

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
        round_steps = self._round_steps
        quiet = _NEVER
        for key in keys:
            done, entry = rounds.get(key, 0), counted.get(key)
            # a bundle counted in the step of the latest round belongs to that round (another
            # forward pass of the step): completing it starts no new round
            same_step = entry is not None and entry[0] == round_steps.get(key)
            if done and (done - 1) % subsample == 0 and (entry is None or same_step):
                return 0  # the next message may be another pass of the step just delivered
            # the bundle the next message of kind joins: the open one, unless it already has one
            upcoming = done + (entry is not None and kind in entry[1] and not same_step)
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
            self._complete_round(key, step)

    def receive_message(self, message: Message) -> None:
        if self.tag is not None and message.tag != self.tag:
            return
        scores = getattr(message, "scores", None)
        if scores is not None and "network_output" in self._network_kinds:
            # labels that come with the output they were scored against (Exporter.wrap_loss)
            # pair with that output, whichever forward pass of the step ran last (all of a
            # step's passes may run before its losses)
            self.receive_message(
                NetworkMessage(
                    "network_output",
                    message.tag,
                    message.global_step,
                    message.train_step,
                    message.epoch,
                    scores,
                )
            )
        key = message.key
        if self._round_of(key, message.global_step) % self.subsample != 0:
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
            self._complete_round(key, message.global_step)
            self.subscriber.receive_message(bundle)
        else:  # held until the step's other kinds come: as it was when published
            bundle.messages[message.kind] = self._hold(message)

    def _hold(self, message: Message) -> Message:
        """``message`` as an open bundle keeps it: with a copy of its tensor for the kinds
        that can change in place before the bundle completes (:data:`LIVE_KINDS`)."""
        data = message.data
        if message.kind not in LIVE_KINDS or not isinstance(data, torch.Tensor):
            return message
        return dataclasses.replace(message, data=data.detach().clone())
