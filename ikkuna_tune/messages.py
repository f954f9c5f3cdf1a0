"""Message types: what flows on a bus (messages, bundles, the named kinds).

Everything that flows through training is published as a :class:`Message`. Data kinds belong to
one layer (a :class:`ModuleMessage`), meta kinds to the whole network (a
:class:`NetworkMessage`); a :class:`MessageBundle` holds the messages of several kinds for one
layer and step. The bus that routes them is :class:`ikkuna_tune.bus.MessageBus`. This module
imports nothing else of the package.

Examples:
    >>> import torch
    >>> layer = NamedModule("fc", torch.nn.Linear(2, 2))
    >>> message = ModuleMessage("weights", DEFAULT_TAG, 0, 0, 0, layer.module.weight, layer)
    >>> message.key, message.kind in DATA_KINDS
    ('fc', True)
    >>> bundle = MessageBundle("fc", ["weights"])
    >>> bundle.add_message(message)
    >>> bundle.complete(), bundle["weights"].shape
    (True, torch.Size([2, 2]))
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

__all__ = [
    "BUILTIN_KINDS",
    "CLOSURE_TAG",
    "DATA_KINDS",
    "DEFAULT_TAG",
    "EVAL_TAG",
    "META_KINDS",
    "PASS_TAGS",
    "SKIPPED_TAG",
    "KindType",
    "LabelsMessage",
    "LayerBatch",
    "Message",
    "MessageBundle",
    "ModuleMessage",
    "NamedModule",
    "NetworkMessage",
    "check_tag",
    "typo_of_builtin_kind",
    "typo_of_pass_tag",
    "unknown_kinds_message",
]

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
#: Tag of forward passes the user runs in eval mode or without gradients.
EVAL_TAG = "eval"
#: Tag of the (zero) updates of a step that a GradScaler skipped (inf or NaN gradients).
SKIPPED_TAG = "skipped"
#: Tag of the forward passes of an optimizer's closure after its first call in a step (L-BFGS
#: evaluates the loss at trial weights during its line search).
CLOSURE_TAG = "closure"
#: The tags the Exporter gives the passes and steps of training (probes bring their own).
PASS_TAGS: frozenset[str] = frozenset({DEFAULT_TAG, EVAL_TAG, SKIPPED_TAG, CLOSURE_TAG})
#: Where a published kind belongs: to one layer ('DATA') or to the whole network ('META').
KindType = Literal["DATA", "META"]


def typo_of_builtin_kind(kind: str) -> str | None:
    """The built-in kind that ``kind`` looks like a typo of, or ``None``.

    A typo is as similar as ``difflib.get_close_matches(..., cutoff=0.8)`` demands and at most
    two characters longer or shorter (``'weight_gradient'``, ``'wieghts'``, ``'los'``). Names
    built on a kind (``'weight_gradients_norm2'``, ``'bias_updates_mean'``) are longer, and are
    left to the bus, which knows the kinds its subscribers publish.

    Examples:
        >>> typo_of_builtin_kind("wieghts"), typo_of_builtin_kind("los")
        ('weights', 'loss')
        >>> typo_of_builtin_kind("weight_gradients_norm2") is None
        True
    """
    if kind in BUILTIN_KINDS:
        return None
    for match in difflib.get_close_matches(kind, sorted(BUILTIN_KINDS), n=3, cutoff=0.8):
        if abs(len(match) - len(kind)) <= 2:
            return match
    return None


def typo_of_pass_tag(tag: str) -> str | None:
    """The Exporter's tag that ``tag`` looks like a typo of, or ``None``: the same tag in other
    letter case (``'Default'``, ``'EVAL'``), or, for the longer tags, as similar as
    ``difflib.get_close_matches(..., cutoff=0.8)`` demands and at most one character longer or
    shorter (``'deafult'``, ``'defualt'``). A probe's own tag (``exporter.probe('eval2')``) is
    any other name.

    Examples:
        >>> typo_of_pass_tag("deafult"), typo_of_pass_tag("Eval"), typo_of_pass_tag("eval2")
        ('default', 'eval', None)
        >>> typo_of_pass_tag("enclosure") is None  # a word of its own
        True
    """
    if tag in PASS_TAGS:
        return None
    if tag in _TYPOS:  # a probe checks its tag at every pass
        return _TYPOS[tag]
    answer = _typo_of(tag)
    if len(_TYPOS) < 256:
        _TYPOS[tag] = answer
    return answer


#: :func:`typo_of_pass_tag`'s answers so far (a plain dict: torch.compile traces a probe's
#: check of its tag, and warns about a functools cache)
_TYPOS: dict[str, str | None] = {}


def _typo_of(tag: str) -> str | None:
    """:func:`typo_of_pass_tag`, worked out."""
    for known in sorted(PASS_TAGS):
        if tag.lower() == known:
            return known
    longer = sorted(t for t in PASS_TAGS if len(t) >= 6)
    for match in difflib.get_close_matches(tag.lower(), longer, n=3, cutoff=0.8):
        if abs(len(match) - len(tag)) <= 1:
            return match
    return None


def check_tag(name: str, tag: str) -> None:
    """Refuse a tag that :func:`typo_of_pass_tag` reads as a typo of the Exporter's tags, where
    it enters: a subscription's (no message would ever carry it: the subscriber's outputs read
    None at every report) and a probe's (no subscription could take its messages).

    Examples:
        >>> check_tag("tag", "svcca")
        >>> check_tag("tag", "Default")
        Traceback (most recent call last):
        ...
        ValueError: Expected `tag` to be one of the Exporter's tags [...] or a name of its own, ...
    """
    known = typo_of_pass_tag(tag)
    if known is not None:
        raise ValueError(
            f"Expected `{name}` to be one of the Exporter's tags {sorted(PASS_TAGS)} or a name of "
            f"its own, but got {tag!r}: did you mean {known!r}?"
        )


def unknown_kinds_message(unknown: Sequence[str], published: Iterable[str] = ()) -> str:
    """Why ``unknown`` kinds are refused: each with a "did you mean" where one is close, the
    built-in kinds, and the kinds subscribers publish on the bus (``published``, if any).

    Examples:
        >>> text = unknown_kinds_message(["weights_norm3"], published=["weights_norm2"])
        >>> text.split(" (")[0]
        "Unknown message kind(s) ['weights_norm3']; did you mean 'weights_norm2'?"
        >>> text.endswith("kinds published on this bus: ['weights_norm2'])")
        True
    """
    published = sorted(set(published) - BUILTIN_KINDS)
    candidates = sorted(BUILTIN_KINDS) + published
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
    if published:
        text += f"; kinds published on this bus: {published}"
    return text + ")"


@dataclass(frozen=True, eq=False)
class NamedModule:
    """A module together with its name from ``model.named_modules()`` (e.g. ``'features.0'``).

    Two are equal when their names are.

    Examples:
        >>> layer = NamedModule("features.0", torch.nn.Linear(2, 2))
        >>> layer, layer == NamedModule("features.0", torch.nn.ReLU())
        (NamedModule(name='features.0'), True)
    """

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

    Examples:
        >>> message = Message("loss", DEFAULT_TAG, global_step=7, train_step=2, epoch=1, data=0.5)
        >>> message.kind, message.epoch, message.data, message.key
        ('loss', 1, 0.5, None)
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
    """A message about the whole network (loss, labels, step events, network-wide metrics).

    Examples:
        >>> message = NetworkMessage("loss", DEFAULT_TAG, 7, 2, 1, torch.tensor(0.5))
        >>> message.key is None, message.kind in META_KINDS, float(message.data)
        (True, True, 0.5)
    """


@dataclass(frozen=True, slots=True)
class LabelsMessage(NetworkMessage):
    """The ``input_labels`` of a loss, with the output that loss scored (``scores``, detached;
    None when not known): :meth:`Exporter.wrap_loss` knows it, and train accuracy counts it
    rather than the step's last forward pass (a batch run in chunks, concatenated for one
    loss, or a second pass before the first pass's loss); ``binary_threshold``, the score
    above which one output per sample means class 1, when the loss tells (0.5 for one that
    takes probabilities, 0 for one that takes logits; None: not known); ``classes``, whether
    the labels are class labels (False for a regression loss's targets, which train accuracy
    leaves out; None: not known); ``source``, which wrapped loss published them; and
    ``ignore_index``, the loss's label that counts nowhere (None: only negative ones).

    Examples:
        >>> message = LabelsMessage("input_labels", DEFAULT_TAG, 7, 2, 1, torch.tensor([1]))
        >>> message.scores is None, isinstance(message, NetworkMessage)
        (True, True)
    """

    scores: Any = None
    binary_threshold: float | None = None
    classes: bool | None = None
    source: int | None = None
    ignore_index: int | None = None


@dataclass(frozen=True, slots=True)
class ModuleMessage(Message):
    """A message about one layer; ``module`` names it (call ``k`` of a layer called several
    times in one forward pass is named ``'<layer>#k'``, see :class:`Exporter`).

    Examples:
        >>> fc = NamedModule("fc", torch.nn.Linear(3, 2))
        >>> message = ModuleMessage("weights", DEFAULT_TAG, 0, 0, 0, fc.module.weight, fc)
        >>> message.key, tuple(message.data.shape)
        ('fc', (2, 3))
        >>> ModuleMessage("weights", DEFAULT_TAG, 0, 0, 0, fc.module.weight, "fc")
        Traceback (most recent call last):
        ...
        ValueError: Expected `module` to be a NamedModule but got str
    """

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

    Examples:
        >>> bundle = MessageBundle(None, ["loss", "network_output"])
        >>> bundle.add_message(NetworkMessage("loss", DEFAULT_TAG, 4, 4, 0, 0.25))
        >>> bundle, bundle.complete()
        (MessageBundle(key=None, kinds=['loss']/['loss', 'network_output']), False)
        >>> bundle["loss"], bundle.global_step, "network_output" in bundle
        (0.25, 4, False)
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

    def first(self) -> Message:
        """The first message of the bundle (all share its step, epoch and tag)."""
        return self._first()

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


class LayerBatch:
    """The messages of one kind, tag and step for several layers, delivered at once.

    The Exporter publishes a training step's per-layer kinds this way when every subscription
    of the kind takes batches (:meth:`MessageBus.publish_batch
    <ikkuna_tune.bus.MessageBus.publish_batch>`): one delivery per kind and step instead of one
    per layer, and the subscribers reduce all layers with one multi-tensor operation.
    :meth:`messages` gives the per-layer messages it stands for.

    Examples:
        >>> fc1 = NamedModule("fc1", torch.nn.Linear(3, 2))
        >>> fc2 = NamedModule("fc2", torch.nn.Linear(2, 1))
        >>> data = [torch.ones(2), torch.zeros(1)]
        >>> batch = LayerBatch("weights", DEFAULT_TAG, 5, 5, 0, (fc1, fc2), data)
        >>> batch.keys, batch.global_step, len(batch)
        (('fc1', 'fc2'), 5, 2)
        >>> [(m.key, m.global_step) for m in batch.messages()]
        [('fc1', 5), ('fc2', 5)]
        >>> LayerBatch("weights_norm2", DEFAULT_TAG, 5, 5, 0, (fc1, fc2), torch.ones(2)).data
        tensor([1., 1.])
    """

    __slots__ = (
        "_messages",
        "data",
        "epoch",
        "global_step",
        "kind",
        "modules",
        "tag",
        "train_step",
    )

    def __init__(
        self,
        kind: str,
        tag: str,
        global_step: int,
        train_step: int,
        epoch: int,
        modules: Sequence[NamedModule],
        data: Sequence[Any],
    ) -> None:
        if len(modules) != len(data):
            raise ValueError(
                f"Expected one datum per layer but got {len(data)} for {len(modules)} layers"
            )
        self.kind = kind
        self.tag = tag
        self.global_step = global_step
        self.train_step = train_step
        self.epoch = epoch
        self.modules = tuple(modules)
        #: one datum per layer: a list, or one 1-D tensor of per-layer values (a result)
        self.data: Sequence[Any] = data if isinstance(data, torch.Tensor) else list(data)
        self._messages: list[ModuleMessage] | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        """The layers' names, in order."""
        return tuple(m.name for m in self.modules)

    def __len__(self) -> int:
        return len(self.modules)

    def messages(self) -> list[ModuleMessage]:
        """The per-layer messages this batch stands for (made once)."""
        if self._messages is None:
            step = (self.kind, self.tag, self.global_step, self.train_step, self.epoch)
            self._messages = [
                ModuleMessage(*step, data, module) for module, data in zip(self.modules, self.data)
            ]
        return self._messages

    def first(self) -> ModuleMessage:
        """The first layer's message (all share the step, epoch and tag)."""
        return self.messages()[0]

    def __repr__(self) -> str:
        return f"LayerBatch({self.kind!r}, step={self.global_step}, layers={list(self.keys)})"
