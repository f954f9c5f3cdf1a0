"""The per-trial message bus: routes messages from publishers to the subscriptions that want them.

Each bus owns its kinds: it starts with the built-in ones and learns those its subscribers
publish; nothing is shared between buses. The bus knows subscribers and subscriptions only
through their public methods and nothing of the Exporter: whoever must follow the subscriptions
(the Exporter registers hooks only for the kinds somebody wants) adds a :class:`BusListener`.

Examples:
    >>> from ikkuna_tune.subscribers import CallbackSubscriber
    >>> bus = MessageBus("demo")
    >>> seen = []
    >>> bus.register_subscriber(CallbackSubscriber(["loss"], seen.append))
    >>> sorted(bus.subscribed_kinds())
    ['loss']
    >>> bus.publish_network_message("loss", 0.5, global_step=0, train_step=0, epoch=0)
    >>> [(m.kind, m.data) for m in seen]
    [('loss', 0.5)]
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ikkuna_tune import unattached
from ikkuna_tune.backends import BACKENDS, Backend, NullBackend, TensorBoardBackend
from ikkuna_tune.bus_listener import BusListener
from ikkuna_tune.checks import check_bool
from ikkuna_tune.kind_registry import KindRegistry
from ikkuna_tune.messages import (
    DEFAULT_TAG,
    LayerBatch,
    Message,
    ModuleMessage,
    NamedModule,
    NetworkMessage,
)

if TYPE_CHECKING:
    from ikkuna_tune.subscribers.base import Subscriber
    from ikkuna_tune.subscribers.subscriptions import Subscription

__all__ = ["BusListener", "MessageBus"]

logger = logging.getLogger(__name__)

#: Messages the subsampling fast path of MessageBus.skip_all notes before settling them.
_MAX_DEFERRED = 4096


class MessageBus(KindRegistry):
    """Routes messages from publishers (the Exporter, subscribers) to subscriptions.

    Each bus starts with the built-in kinds and learns the kinds its subscribers publish through
    :meth:`register_kind`. Subscribing to a kind the bus does not know raises ``ValueError``.

    Args:
        name: a name for logs.
        log_dir: where the ``'tb'`` backend of this bus writes its event files (default: a new
            ``runs/<date>_<host>`` directory, as tensorboardX chooses, with ``_2`` ... added
            where a run started in the same second has that name).
        draw: ``False`` makes every backend of this bus draw nothing (the ranks of a
            data-parallel job other than rank 0, whose values rank 0 reports).

    Examples:
        >>> from ikkuna_tune.subscribers import CallbackSubscriber
        >>> bus, got = MessageBus("trial-0"), []
        >>> CallbackSubscriber(["accuracy"], got.append, bus)
        Traceback (most recent call last):
        ...
        ValueError: Unknown message kind(s) ['accuracy']...
        >>> bus.register_kind("accuracy", "META", owner="an evaluator")
        >>> sub = CallbackSubscriber(["accuracy"], got.append, bus)
        >>> bus.publish_network_message("accuracy", 0.9, global_step=3, train_step=3, epoch=0)
        >>> bus, [(m.kind, m.data, m.global_step) for m in got]
        (MessageBus('trial-0', subscribers=1), [('accuracy', 0.9, 3)])
    """

    def __init__(
        self, name: str = "bus", log_dir: str | Path | None = None, draw: bool = True
    ) -> None:
        super().__init__()
        self.name = name
        self.draw = check_bool("draw", draw)
        self.log_dir = None if log_dir is None else Path(log_dir)
        self._backends: dict[str, Backend] = {}
        self._restart_step: int | None = None
        self._subscribers: list[Subscriber] = []
        self._by_kind: dict[str, list[Subscription]] = {}
        self._shared: dict[tuple[int, str], tuple[Message, Any]] | None = None
        # the subsampling fast path (see skip_all): per kind [keys, events left], for the
        # default tag; and the messages counted that way that the subscriptions have not seen
        # yet, in publication order
        self._quiet: dict[str, list[Any]] = {}
        self._deferred: list[tuple[str, tuple[str | None, ...], str, int]] = []
        self._listeners: list[BusListener] = []
        #: kinds whose every subscription takes a whole step's layers at once (publish_batch)
        self._batched: frozenset[str] = frozenset()
        self._muted = False  # (see muted)
        self._event_files: list[Path] = []  # (see event_files)

    # ------------------------------------------------------------- listeners
    @property
    def listeners(self) -> tuple[BusListener, ...]:
        return tuple(self._listeners)

    def add_listener(self, listener: BusListener) -> None:
        """Let ``listener`` check every subscriber before it is added and hear of changes."""
        if listener not in self._listeners:
            self._listeners.append(listener)

    def remove_listener(self, listener: BusListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # ----------------------------------------------------------- subscribers
    @property
    def subscribers(self) -> tuple[Subscriber, ...]:
        return tuple(self._subscribers)

    def register_subscriber(self, subscriber: Subscriber) -> None:
        """Attach ``subscriber``: register the kinds it publishes, check the kinds it subscribes
        to, route messages of those kinds to it, tell the listeners, then call its
        :meth:`~ikkuna_tune.subscribers.Subscriber.attached` hook. If any of it fails, nothing
        of it stays.

        Raises:
            ValueError: if the subscriber is attached somewhere already, publishes a kind
                another publisher owns, subscribes to a kind this bus does not know, or a
                listener (or the subscriber's hook) refuses it.
        """
        if subscriber.message_bus is not None:
            raise ValueError(f"{subscriber!r} is already attached to {subscriber.message_bus!r}")
        registered: list[str] = []
        try:
            for kind, type_ in subscriber.publications_on(self).items():
                self.register_kind(kind, type_, owner=subscriber)
                registered.append(kind)
            for subscription in subscriber.subscriptions:
                self.check_kinds(subscription.kinds, asking=subscriber)
            for listener in self._listeners:
                listener.check_subscriber(subscriber)
        except ValueError:
            for kind in registered:
                self.deregister_kind(kind)
            raise
        self.settle()  # deferred counts belong to the subscriptions there were
        self._subscribers.append(subscriber)
        for subscription in subscriber.subscriptions:
            subscription.bind(self)
            for kind in subscription.routed_kinds:
                self._by_kind.setdefault(kind, []).append(subscription)
        subscriber.message_bus = self
        try:
            self._changed()
            subscriber.attached(self)
        except Exception:
            self.deregister_subscriber(subscriber)
            raise
        unattached.forget(subscriber)

    def deregister_subscriber(self, subscriber: Subscriber) -> None:
        """Detach ``subscriber``: it receives nothing more and the kinds it published are removed.

        Raises:
            ValueError: if it is not attached to this bus.
        """
        if subscriber not in self._subscribers:
            raise ValueError(f"{subscriber!r} is not registered on this bus")
        self.settle()
        self._subscribers.remove(subscriber)
        for kind, subscriptions in list(self._by_kind.items()):
            kept = [s for s in subscriptions if s.subscriber is not subscriber]
            if kept:
                self._by_kind[kind] = kept
            else:
                del self._by_kind[kind]
        for kind, owner in list(self._kind_owners.items()):
            if owner is subscriber:
                self.deregister_kind(kind)
        subscriber.message_bus = None
        subscriber.detached(self)
        self._changed()

    def _changed(self) -> None:
        self._batched = self._batchable_kinds()
        for listener in list(self._listeners):
            listener.subscribers_changed(self)

    def _batchable_kinds(self) -> frozenset[str]:
        """Kinds whose every subscription takes batches, and for a subscription that bundles
        several kinds, all of them do (it must not get some layers as a batch and others one
        message at a time)."""
        kinds = {
            kind
            for kind, subscriptions in self._by_kind.items()
            if all(s.takes_batches for s in subscriptions)
        }
        changed = True
        while changed:
            changed = False
            for kind in list(kinds):
                if any(not set(s.routed_kinds) <= kinds for s in self._by_kind[kind]):
                    kinds.discard(kind)
                    changed = True
        return frozenset(kinds)

    def takes_batches(self, kind: str) -> bool:
        """Whether a step's messages of ``kind`` for several layers are delivered as one
        :class:`~ikkuna_tune.messages.LayerBatch` (see :meth:`publish_batch`)."""
        return kind in self._batched

    def subscribed_kinds(self, tag: str | None = None) -> frozenset[str]:
        """Kinds that at least one subscription wants (optionally: under ``tag``)."""
        if tag is None:
            return frozenset(self._by_kind)
        return frozenset(
            kind
            for kind, subscriptions in self._by_kind.items()
            if any(s.accepts_tag(tag) for s in subscriptions)
        )

    def has_subscribers(self, kind: str) -> bool:
        """Whether any subscription (of any tag) receives ``kind``; publishers build no message
        of a kind nobody receives."""
        return kind in self._by_kind

    def wants(self, kind: str, tag: str = DEFAULT_TAG) -> bool:
        """Whether any subscription would receive a message of ``kind`` under ``tag``."""
        subscriptions = self._by_kind.get(kind)
        return bool(subscriptions) and any(s.accepts_tag(tag) for s in subscriptions)

    def will_process(
        self, kind: str, key: str | None, tag: str = DEFAULT_TAG, step: int | None = None
    ) -> bool:
        """Whether a message of ``kind`` for ``key`` (a layer name or ``None``) published now
        under ``tag`` (in global step ``step``, if given) would be looked at by any
        subscription (after tag and subsample filters).

        Publishers skip computing the data of messages nobody will look at and publish them with
        ``data=None``, so that subsampling counts stay right. A synchronised subscription needs
        the step to tell another forward pass of a step from the next step's (without it, it
        answers for both).
        """
        return self.will_process_any(kind, (key,), tag, step)

    def will_process_any(
        self,
        kind: str,
        keys: Sequence[str | None],
        tag: str = DEFAULT_TAG,
        step: int | None = None,
    ) -> bool:
        """Whether :meth:`will_process` is true for any of ``keys``."""
        subscriptions = self._by_kind.get(kind)
        if not subscriptions or not keys:
            return False
        quiet = self._quiet.get(kind)
        if quiet is not None and quiet[1] > 0 and tag == DEFAULT_TAG and quiet[0] == keys:
            return False
        self._settle()
        for subscription in subscriptions:
            if step is not None and _takes_step(type(subscription)):
                if any(subscription.will_process(key, kind, tag, step) for key in keys):
                    return True
            elif any(subscription.will_process(key, kind, tag) for key in keys):
                return True
        return False

    def skip(
        self, kind: str, key: str | None, tag: str = DEFAULT_TAG, step: int | None = None
    ) -> bool:
        """Count a message of ``kind`` for ``key`` under ``tag`` without building it, if no
        subscription needs its data now (subsampling thins it out, or nobody subscribed).

        ``step`` is the global step the message would carry. Synchronised subscriptions need it
        to count the bundles they skip; without it they ask for every message of their tag.

        Returns ``True`` when the message is accounted for and must not be published; ``False``
        when the caller must publish it. Publishers call this first on the hot path, so that a
        step that subsampling skips costs no message objects and no tensor views.
        """
        return self.skip_all(kind, (key,), tag, step)

    def skip_all(
        self, kind: str, keys: Sequence[str | None], tag: str = DEFAULT_TAG, step: int | None = None
    ) -> bool:
        """:meth:`skip` for messages of ``kind`` for all of ``keys`` at once (the layers of one
        step): ``True`` when none of them is needed and all are counted, ``False`` when at least
        one is needed and none is counted (the caller then goes key by key with :meth:`skip`).

        Why subsampling is counted per message and not a plain function of the step (such as
        ``step % k == 0``): ``subsample=k`` means every k-th message of a layer and kind, as in
        the original ikkuna, and layers do not publish at every step alike (a frozen layer has no
        gradients, a layer called twice publishes twice, probes publish under their own tags, a
        subscriber may join mid-training, a synchronised bundle counts only when complete).
        A step rule would thin those streams differently from the documented rule. The
        counting is kept cheap instead.

        This is what a step that subsampling skips costs, so it has a fast path. After counting
        messages of ``kind`` for ``keys`` under the default tag, the bus asks each subscription
        how many more such groups it would only count (:meth:`Subscription.quiet_for`). While
        that allowance lasts, the same ``keys`` with a step are counted by noting them in a list,
        without asking any subscription; the subscriptions count the noted messages, in
        publication order, before they are next asked or sent anything. Subsampling therefore
        delivers exactly the messages it would deliver if every message were published.
        """
        if self._muted:
            return True
        if type(keys) is not tuple:
            keys = tuple(keys)
        quiet = self._quiet.get(kind)
        if (
            quiet is not None
            and quiet[1] > 0
            and step is not None
            and tag == DEFAULT_TAG
            and quiet[0] == keys
        ):
            quiet[1] -= 1
            self._deferred.append((kind, quiet[0], tag, step))
            if len(self._deferred) >= _MAX_DEFERRED:
                self._settle()
            return True
        subscriptions = self._by_kind.get(kind)
        if not subscriptions or not keys:
            return True
        self._changing(kind, tag)
        for subscription in subscriptions:
            if subscription.needs_any(keys, kind, tag, step):
                return False
        for subscription in subscriptions:
            subscription.count_all(keys, kind, tag, step)
        if step is not None and tag == DEFAULT_TAG:
            allowance = min(s.quiet_for(keys, kind, tag) for s in subscriptions)
            if allowance > 0:
                self._quiet[kind] = [keys, allowance]
        return True

    def realign(self, key: str) -> None:
        """Let every subscription count the messages layer ``key`` sat out while it published
        none (see :meth:`Subscription.realign`); the Exporter calls it when it unfreezes the
        layer."""
        self.settle()
        for subscription in {id(s): s for subs in self._by_kind.values() for s in subs}.values():
            subscription.realign(key)

    def settle(self) -> None:
        """Bring every subscription's counts up to date (the fast path of :meth:`skip_all`
        defers them) and drop the allowances computed from them: before the counts are read
        for a checkpoint, or replaced by a restored one."""
        self._settle()
        self._quiet.clear()

    def _settle(self) -> None:
        """Let the subscriptions count the messages the fast path of :meth:`skip_all` noted."""
        if not self._deferred:
            return
        deferred, self._deferred = self._deferred, []
        by_kind = self._by_kind
        for kind, keys, tag, step in deferred:
            for subscription in by_kind.get(kind, ()):
                subscription.count_all(keys, kind, tag, step)

    def _changing(self, kind: str, tag: str) -> None:
        """Before a message of ``kind`` under ``tag`` is counted or delivered the slow way:
        settle the deferred counts and drop the allowances that message may shorten (that of
        ``kind``; under another tag, every one, since a subscription for all tags counts it
        and its bundles may complete with it)."""
        self._settle()
        if tag == DEFAULT_TAG:
            self._quiet.pop(kind, None)
        else:
            self._quiet.clear()

    # ------------------------------------------------------------ publishing
    @contextlib.contextmanager
    def muted(self) -> Iterator[None]:
        """Deliver nothing and count nothing inside the block: passes that only check
        something (a test set's first batch against the model, when a subscriber is attached)
        are no measurement, and leave no value and no subsampling count behind.

        Examples:
            >>> from ikkuna_tune.subscribers import CallbackSubscriber
            >>> bus = MessageBus()
            >>> got = []
            >>> _ = CallbackSubscriber(["loss"], lambda m: got.append(m.data), bus)
            >>> with bus.muted():
            ...     bus.publish_network_message("loss", 0.5, global_step=0, train_step=0, epoch=0)
            >>> bus.publish_network_message("loss", 0.4, global_step=1, train_step=1, epoch=0)
            >>> got
            [0.4]
        """
        outer, self._muted = self._muted, True
        try:
            yield
        finally:
            self._muted = outer

    def publish(self, message: Message) -> None:
        """Deliver ``message`` to every subscription of its kind (synchronously)."""
        subscriptions = self._by_kind.get(message.kind)
        if not subscriptions or self._muted:
            return
        if self._deferred or self._quiet:
            self._changing(message.kind, message.tag)
        if len(subscriptions) == 1:
            subscriptions[0].receive_message(message)
            return
        outer, self._shared = self._shared, {}
        try:
            for subscription in subscriptions:
                subscription.receive_message(message)
        finally:
            self._shared = outer

    def publish_batch(self, batch: LayerBatch) -> None:
        """Deliver the messages of ``batch`` (one kind and step, several layers): to every
        subscription at once when all of them take batches (:meth:`takes_batches`, for the
        default tag), else one message at a time, as :meth:`publish` would.

        A subscription takes batches when it processes every message it receives (no
        subsampling) and its subscriber reduces a batch exactly as it would each message: the
        subscribers see the same values, at the cost of one delivery per kind and step.
        """
        subscriptions = self._by_kind.get(batch.kind)
        if not subscriptions or self._muted:
            return
        if batch.kind not in self._batched or batch.tag != DEFAULT_TAG:
            for message in batch.messages():
                self.publish(message)
            return
        if self._deferred or self._quiet:
            self._changing(batch.kind, batch.tag)
        outer, self._shared = self._shared, {}
        try:
            for subscription in subscriptions:
                subscription.receive_batch(batch)
        finally:
            self._shared = outer

    def shared(self, message: Message | LayerBatch, name: str, fn: Callable[[Any], Any]) -> Any:
        """``fn(message.data)``, computed once for all the subscribers of one delivery.

        Subscribers that reduce the same message the same way (the L2 norm of ``weights`` for a
        norm and for an update-to-weight ratio, say) call this with the same ``name`` and share
        one result while :meth:`publish` hands ``message`` around. Outside a delivery to several
        subscriptions it just calls ``fn``.
        """
        if self._shared is None:
            return fn(message.data)
        key = (id(message), name)
        hit = self._shared.get(key)
        if hit is not None and hit[0] is message:
            return hit[1]
        value = fn(message.data)
        self._shared[key] = (message, value)
        return value

    def publish_network_message(
        self,
        kind: str,
        data: Any = None,
        *,
        global_step: int,
        train_step: int,
        epoch: int,
        tag: str = DEFAULT_TAG,
    ) -> None:
        if kind not in self._meta_kinds:
            raise ValueError(
                f"Expected a meta kind {sorted(self._meta_kinds)} but got {kind!r}; "
                "register it with register_kind(kind, 'META') first"
            )
        if kind in self._by_kind:
            self.publish(NetworkMessage(kind, tag, global_step, train_step, epoch, data))

    def publish_module_message(
        self,
        kind: str,
        module: NamedModule,
        data: Any,
        *,
        global_step: int,
        train_step: int,
        epoch: int,
        tag: str = DEFAULT_TAG,
    ) -> None:
        if kind not in self._data_kinds:
            raise ValueError(
                f"Expected a data kind {sorted(self._data_kinds)} but got {kind!r}; "
                "register it with register_kind(kind, 'DATA') first"
            )
        if kind in self._by_kind:
            self.publish(ModuleMessage(kind, tag, global_step, train_step, epoch, data, module))

    # -------------------------------------------------------------- backends
    def backend(self, name: str | None) -> Backend:
        """The backend ``name`` of this bus (one per bus, shared by its subscribers)."""
        if name not in BACKENDS:
            raise ValueError(f"Expected a backend in {list(BACKENDS)} but got {name!r}")
        if name is None or not self.draw:
            return NullBackend()
        if name not in self._backends:
            backend = self._backends[name] = TensorBoardBackend(self.log_dir)
            self._event_files.append(backend.path)
            if self._restart_step is not None:
                backend.restart_at(self._restart_step)
        return self._backends[name]

    def event_files(self) -> list[Path]:
        """The event files this bus's backends opened (closed ones too), in the order opened:
        this bus's own, where other buses write to the same folder (trials given one
        ``log_dir``)."""
        return list(self._event_files)

    def move_log_dir(self, log_dir: str | Path) -> None:
        """Write the event files to ``log_dir`` from now on: a run of their own
        (:meth:`Backend.move_to`, for the backends already open too)."""
        self.log_dir = Path(log_dir)
        for backend in self._backends.values():
            backend.move_to(self.log_dir)
            if isinstance(backend, TensorBoardBackend):
                self._event_files.append(backend.path)

    def restart_at(self, step: int) -> None:
        """Mark in every backend of this bus, and in those made later, that the run goes on
        from ``step`` after a restore (:meth:`Backend.restart_at`)."""
        self._restart_step = step
        for backend in self._backends.values():
            backend.restart_at(step)

    def flush(self) -> None:
        """Write what the backends of this bus have buffered."""
        self._settle()
        for backend in self._backends.values():
            backend.flush()

    def close(self) -> None:
        """Flush and close the backends of this bus."""
        for backend in self._backends.values():
            backend.close()
        self._backends.clear()

    def __repr__(self) -> str:
        return f"MessageBus({self.name!r}, subscribers={len(self._subscribers)})"


@functools.cache
def _takes_step(subscription_type: type) -> bool:
    """Whether ``subscription_type.will_process`` takes a ``step`` (a subclass written before
    it did may override it without one)."""
    return "step" in inspect.signature(subscription_type.will_process).parameters
