"""Messages, bundles and the per-trial message bus.

Everything that flows through training is published as a :class:`Message` on a
:class:`MessageBus`. Data kinds belong to one layer (a :class:`ModuleMessage`), meta kinds to the
whole network (a :class:`NetworkMessage`). Each bus owns its topics: subscribers add the topics
they publish to the bus they are attached to, and nothing is shared between buses.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from ikkuna_tune.backends import BACKENDS, Backend, NullBackend, TensorBoardBackend

if TYPE_CHECKING:
    from ikkuna_tune.exporter import Exporter
    from ikkuna_tune.subscribers.base import Subscriber, Subscription

__all__ = [
    "BUILTIN_KINDS",
    "DATA_KINDS",
    "DEFAULT_TAG",
    "META_KINDS",
    "Message",
    "MessageBundle",
    "MessageBus",
    "ModuleMessage",
    "NamedModule",
    "NetworkMessage",
    "typo_of_builtin_kind",
    "unknown_kinds_message",
]

logger = logging.getLogger(__name__)

#: Kinds published once per tracked layer (ModuleMessage).
DATA_KINDS: tuple[str, ...] = (
    "weights",
    "weight_gradients",
    "weight_updates",
    "biases",
    "bias_gradients",
    "bias_updates",
    "activations",
    "layer_gradients",
)
#: Kinds published once per step or epoch for the whole network (NetworkMessage).
META_KINDS: tuple[str, ...] = (
    "batch_started",
    "batch_finished",
    "epoch_started",
    "epoch_finished",
    "input_data",
    "input_labels",
    "network_output",
    "loss",
    "layer_frozen",
)
#: Every built-in kind.
BUILTIN_KINDS: frozenset[str] = frozenset(DATA_KINDS + META_KINDS)
#: Tag of the messages of ordinary training steps.
DEFAULT_TAG = "default"
#: Messages the subsampling fast path of MessageBus.skip_all notes before settling them.
_MAX_DEFERRED = 4096

TopicType = Literal["DATA", "META"]


def typo_of_builtin_kind(kind: str) -> str | None:
    """The built-in kind that ``kind`` looks like a typo of, or ``None``.

    A typo is as similar as ``difflib.get_close_matches(..., cutoff=0.8)`` demands and at most
    two characters longer or shorter (``'weight_gradient'``, ``'wieghts'``, ``'los'``). Names
    built on a kind (``'weight_gradients_norm2'``, ``'bias_updates_mean'``) are longer, and are
    left to the bus, which knows the topics its subscribers publish.
    """
    if kind in BUILTIN_KINDS:
        return None
    for match in difflib.get_close_matches(kind, sorted(BUILTIN_KINDS), n=3, cutoff=0.8):
        if abs(len(match) - len(kind)) <= 2:
            return match
    return None


def unknown_kinds_message(unknown: Sequence[str], topics: Iterable[str] = ()) -> str:
    """Why ``unknown`` kinds are refused: each with a "did you mean" where one is close, the
    built-in kinds, and the ``topics`` subscribers publish on the bus (if any)."""
    topics = sorted(set(topics) - BUILTIN_KINDS)
    candidates = sorted(BUILTIN_KINDS) + topics
    hints = []
    for kind in unknown:
        close = typo_of_builtin_kind(kind)
        if close is None:
            matches = difflib.get_close_matches(kind, candidates, n=1)
            close = matches[0] if matches else None
        if close is not None:
            hint = f"did you mean {close!r}?"
            hints.append(hint if len(unknown) == 1 else f"{kind!r}: {hint}")
    text = f"Unknown message kind(s) {list(unknown)}"
    if hints:
        text += "; " + "; ".join(hints)
    text += f" (built-in kinds: {sorted(BUILTIN_KINDS)}"
    if topics:
        text += f"; topics published on this bus: {topics}"
    return text + ")"


@dataclass(frozen=True, eq=False)
class NamedModule:
    """A module together with its name from ``model.named_modules()`` (e.g. ``'features.0'``)."""

    name: str
    module: torch.nn.Module = field(repr=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NamedModule) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


@dataclass(frozen=True, slots=True)
class Message:
    """One published item.

    Attributes:
        kind: what the data is (``'weights'``, ``'loss'``, ``'weights_norm2'``, ...).
        tag: which pass produced it (``'default'`` for training steps, the probe's tag otherwise).
        global_step: training steps since the start (0-based); evaluation passes keep the step
            of the last training step.
        train_step: training step within the current epoch (0-based).
        epoch: the epoch (0-based).
        data: the payload, usually a tensor left on its device.
    """

    kind: str
    tag: str
    global_step: int
    train_step: int
    epoch: int
    data: Any

    @property
    def key(self) -> str | None:
        """The identifier messages are grouped by: the module name, or ``None`` for the network."""
        return None


@dataclass(frozen=True, slots=True)
class NetworkMessage(Message):
    """A message about the whole network (loss, labels, step events, network-wide metrics)."""


@dataclass(frozen=True, slots=True)
class ModuleMessage(Message):
    """A message about one layer; ``module`` names it (call ``k`` of a layer called several
    times in one forward pass is named ``'<layer>#k'``, see :class:`Exporter`)."""

    module: NamedModule = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if not isinstance(self.module, NamedModule):
            raise ValueError(
                f"Expected `module` to be a NamedModule but got {type(self.module).__name__}"
            )

    @property
    def key(self) -> str | None:
        return self.module.name


class MessageBundle:
    """The messages of several kinds for one identifier (a layer or the network) in one step.

    Index a bundle by kind to get that message's data; ``bundle.messages[kind]`` gives the
    message itself.
    """

    def __init__(self, key: str | None, kinds: Iterable[str]) -> None:
        self.key = key
        self.kinds: tuple[str, ...] = tuple(kinds)
        self.messages: dict[str, Message] = {}

    def add_message(self, message: Message) -> None:
        """Add a message; a second message of the same kind in one bundle is an error."""
        if message.kind not in self.kinds:
            raise ValueError(
                f"Expected a message of kind {self.kinds} but got kind {message.kind!r}"
            )
        if message.key != self.key:
            raise ValueError(f"Expected a message for {self.key!r} but got one for {message.key!r}")
        if message.kind in self.messages:
            raise ValueError(f"This bundle already holds a {message.kind!r} message")
        if self.messages:
            step = next(iter(self.messages.values())).global_step
            if message.global_step != step:
                raise ValueError(
                    f"Expected a message of step {step} but got step {message.global_step}"
                )
        self.messages[message.kind] = message

    def complete(self) -> bool:
        """Whether a message of every kind has arrived."""
        return len(self.messages) == len(self.kinds)

    def __getitem__(self, kind: str) -> Any:
        try:
            return self.messages[kind].data
        except KeyError:
            raise KeyError(
                f"No {kind!r} message in this bundle; it holds {list(self.messages)}"
            ) from None

    def __contains__(self, kind: object) -> bool:
        return kind in self.messages

    def __iter__(self) -> Iterator[Message]:
        return iter(self.messages.values())

    def _first(self) -> Message:
        if not self.messages:
            raise ValueError("This bundle is empty")
        return next(iter(self.messages.values()))

    @property
    def module(self) -> NamedModule | None:
        first = self._first()
        return first.module if isinstance(first, ModuleMessage) else None

    @property
    def global_step(self) -> int:
        return self._first().global_step

    @property
    def train_step(self) -> int:
        return self._first().train_step

    @property
    def epoch(self) -> int:
        return self._first().epoch

    @property
    def tag(self) -> str:
        return self._first().tag

    def __repr__(self) -> str:
        return f"MessageBundle(key={self.key!r}, kinds={list(self.messages)}/{list(self.kinds)})"


class MessageBus:
    """Routes messages from publishers (the Exporter, subscribers) to subscriptions.

    Each bus starts with the built-in kinds and learns the topics its subscribers publish through
    :meth:`register_topic`. Subscribing to a kind the bus does not know raises ``ValueError``.

    Args:
        name: a name for logs.
        log_dir: where the ``'tb'`` backend of this bus writes its event files (default: a new
            ``runs/<date>_<host>`` directory, as tensorboardX chooses).
    """

    def __init__(self, name: str = "bus", log_dir: str | Path | None = None) -> None:
        self.name = name
        self.log_dir = None if log_dir is None else Path(log_dir)
        self._backends: dict[str, Backend] = {}
        self._data_kinds: set[str] = set(DATA_KINDS)
        self._meta_kinds: set[str] = set(META_KINDS)
        self._topic_owners: dict[str, object] = {}
        self._subscribers: list[Subscriber] = []
        self._by_kind: dict[str, list[Subscription]] = {}
        self._shared: dict[tuple[int, str], tuple[Message, Any]] | None = None
        # the subsampling fast path (see skip_all): per kind [keys, events left], for the
        # default tag; and the messages counted that way that the subscriptions have not seen
        # yet, in publication order
        self._quiet: dict[str, list[Any]] = {}
        self._deferred: list[tuple[str, tuple[str | None, ...], str, int]] = []
        self.exporter: Exporter | None = None

    # ---------------------------------------------------------------- topics
    @property
    def data_kinds(self) -> frozenset[str]:
        """Per-layer kinds this bus knows (built-in and registered)."""
        return frozenset(self._data_kinds)

    @property
    def meta_kinds(self) -> frozenset[str]:
        """Network-wide kinds this bus knows (built-in and registered)."""
        return frozenset(self._meta_kinds)

    @property
    def known_kinds(self) -> frozenset[str]:
        return frozenset(self._data_kinds | self._meta_kinds)

    @property
    def published_topics(self) -> dict[str, object]:
        """Topics registered by subscribers, mapped to the subscriber that publishes each."""
        return dict(self._topic_owners)

    def register_topic(self, topic: str, type: TopicType = "DATA", owner: object = None) -> None:
        """Add a topic that some subscriber publishes.

        Raises:
            ValueError: on an empty name, an unknown type, or a topic another publisher owns.
        """
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"Expected a non-empty topic name but got {topic!r}")
        if type not in ("DATA", "META"):
            raise ValueError(f"Expected topic type 'DATA' or 'META' but got {type!r}")
        if topic in DATA_KINDS or topic in META_KINDS:
            raise ValueError(f"{topic!r} is a built-in kind and cannot be registered again")
        current = self._topic_owners.get(topic)
        if current is not None and current is not owner:
            raise ValueError(f"Topic {topic!r} is already published by {current!r}")
        self._topic_owners[topic] = owner
        (self._data_kinds if type == "DATA" else self._meta_kinds).add(topic)

    def deregister_topic(self, topic: str) -> None:
        """Remove a registered topic (built-in kinds stay)."""
        if topic in self._topic_owners:
            del self._topic_owners[topic]
            self._data_kinds.discard(topic)
            self._meta_kinds.discard(topic)

    def check_kinds(self, kinds: Iterable[str], asking: object = None) -> None:
        """Raise ``ValueError`` if any of ``kinds`` is unknown, with a "did you mean", the
        built-in kinds and the topics registered here (not those of ``asking``, the subscriber
        being attached, which registers its own topics first)."""
        unknown = [k for k in kinds if k not in self._data_kinds and k not in self._meta_kinds]
        if unknown:
            topics = [t for t, owner in self._topic_owners.items() if owner is not asking]
            raise ValueError(unknown_kinds_message(unknown, topics))

    # ----------------------------------------------------------- subscribers
    @property
    def subscribers(self) -> tuple[Subscriber, ...]:
        return tuple(self._subscribers)

    def register_subscriber(self, subscriber: Subscriber) -> None:
        """Attach a subscriber: check its kinds, then route messages of those kinds to it."""
        subscriber.attach(self)

    def _add(self, subscriber: Subscriber) -> None:
        for subscription in subscriber.subscriptions:
            self.check_kinds(subscription.kinds, asking=subscriber)
            if self.exporter is not None:
                self.exporter.check_kinds(subscription.kinds)
        self._settle()  # deferred counts belong to the subscriptions there were
        self._quiet.clear()
        self._subscribers.append(subscriber)
        for subscription in subscriber.subscriptions:
            subscription.bind(self)
            for kind in subscription.routed_kinds:
                self._by_kind.setdefault(kind, []).append(subscription)
        self._changed()

    def deregister_subscriber(self, subscriber: Subscriber) -> None:
        """Detach a subscriber; it receives nothing more and its topics are removed."""
        subscriber.detach()

    def _remove(self, subscriber: Subscriber) -> None:
        if subscriber not in self._subscribers:
            raise ValueError(f"{subscriber!r} is not registered on this bus")
        self._settle()
        self._quiet.clear()
        self._subscribers.remove(subscriber)
        for kind, subscriptions in list(self._by_kind.items()):
            kept = [s for s in subscriptions if s.subscriber is not subscriber]
            if kept:
                self._by_kind[kind] = kept
            else:
                del self._by_kind[kind]
        for topic, owner in list(self._topic_owners.items()):
            if owner is subscriber:
                self.deregister_topic(topic)
        self._changed()

    def _changed(self) -> None:
        if self.exporter is not None:
            self.exporter._sync_hooks()

    def subscribed_kinds(self, tag: str | None = None) -> frozenset[str]:
        """Kinds that at least one subscription wants (optionally: under ``tag``)."""
        if tag is None:
            return frozenset(self._by_kind)
        return frozenset(
            kind
            for kind, subscriptions in self._by_kind.items()
            if any(s.accepts_tag(tag) for s in subscriptions)
        )

    def wants(self, kind: str, tag: str = DEFAULT_TAG) -> bool:
        """Whether any subscription would receive a message of ``kind`` under ``tag``."""
        subscriptions = self._by_kind.get(kind)
        return bool(subscriptions) and any(s.accepts_tag(tag) for s in subscriptions)

    def will_process(self, kind: str, key: str | None, tag: str = DEFAULT_TAG) -> bool:
        """Whether a message of ``kind`` for ``key`` (a layer name or ``None``) published now
        under ``tag`` would be looked at by any subscription (after tag and subsample filters).

        Publishers skip computing the data of messages nobody will look at and publish them with
        ``data=None``, so that subsampling counts stay right.
        """
        return self.will_process_any(kind, (key,), tag)

    def will_process_any(
        self, kind: str, keys: Sequence[str | None], tag: str = DEFAULT_TAG
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
            for key in keys:
                if subscription.will_process(key, kind, tag):
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

        This is what a step that subsampling skips costs, so it has a fast path. After counting
        messages of ``kind`` for ``keys`` under the default tag, the bus asks each subscription
        how many more such groups it would only count (:meth:`Subscription.quiet_for`). While
        that allowance lasts, the same ``keys`` with a step are counted by noting them in a list,
        without asking any subscription; the subscriptions count the noted messages, in
        publication order, before they are next asked or sent anything. Subsampling therefore
        delivers exactly the messages it would deliver if every message were published.
        """
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
    def publish(self, message: Message) -> None:
        """Deliver ``message`` to every subscription of its kind (synchronously)."""
        subscriptions = self._by_kind.get(message.kind)
        if not subscriptions:
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

    def shared(self, message: Message, name: str, fn: Callable[[Any], Any]) -> Any:
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
                "register it with register_topic(kind, 'META') first"
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
                "register it with register_topic(kind, 'DATA') first"
            )
        if kind in self._by_kind:
            self.publish(ModuleMessage(kind, tag, global_step, train_step, epoch, data, module))

    # -------------------------------------------------------------- backends
    def backend(self, name: str | None) -> Backend:
        """The backend ``name`` of this bus (one per bus, shared by its subscribers)."""
        if name is None:
            return NullBackend()
        if name not in BACKENDS:
            raise ValueError(f"Expected a backend in {list(BACKENDS)} but got {name!r}")
        if name not in self._backends:
            self._backends[name] = TensorBoardBackend(self.log_dir)
        return self._backends[name]

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
