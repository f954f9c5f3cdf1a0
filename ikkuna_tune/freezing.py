"""The freezing rule, in one place: freeze an input-side prefix, never the last trainable layer.

Only a frozen prefix saves backward computation (gradients must still flow through a frozen
layer that has trainable layers before it), and freezing everything leaves ``backward`` nothing
to do. :meth:`~ikkuna_tune.Exporter.freeze` enforces the second half, the SVCCA subscriber's
``freeze_at`` and :class:`~ikkuna_tune.SVCCAScheduler` choose layers with :func:`next_to_freeze`,
and the SVCCA subscriber skips what :func:`frozen_prefix` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

__all__ = ["frozen_prefix", "next_to_freeze", "tie_closed"]


def frozen_prefix(order: Sequence[str], frozen: Collection[str]) -> list[str]:
    """The frozen layers at the input end of ``order`` (they can no longer change).

    >>> frozen_prefix(["conv1", "conv2", "fc1", "fc2"], {"conv1", "fc1"})
    ['conv1']
    """
    prefix = []
    for name in order:
        if name not in frozen:
            break
        prefix.append(name)
    return prefix


def _keeps_a_layer(order: Sequence[str]) -> Callable[[str, Collection[str]], bool]:
    def keeps(name: str, frozen: Collection[str]) -> bool:
        return any(other != name and other not in frozen for other in order)

    return keeps


def next_to_freeze(
    order: Sequence[str],
    frozen: Collection[str],
    settled: Callable[[str], bool],
    leaves_trainable: Callable[[str, Collection[str]], bool] | None = None,
    input_side_first: bool = True,
) -> list[str]:
    """The layers to freeze now, in ``order``.

    Goes through the layers not yet ``frozen``, input side first, and takes each that is
    ``settled`` while ``leaves_trainable(name, frozen_so_far)`` says something would still
    train without it (by default: another layer of ``order`` is not frozen). With
    ``input_side_first`` it stops at the first layer it does not take, so that what is frozen
    stays a prefix; without, it skips that layer and goes on.

    >>> order = ["conv1", "conv2", "fc1", "fc2"]
    >>> next_to_freeze(order, {"conv1"}, lambda name: name != "fc1")
    ['conv2']
    >>> next_to_freeze(order, set(), lambda name: True)  # never the last trainable layer
    ['conv1', 'conv2', 'fc1']
    >>> next_to_freeze(order, set(), lambda name: name != "conv2", input_side_first=False)
    ['conv1', 'fc1', 'fc2']
    """
    keeps = leaves_trainable if leaves_trainable is not None else _keeps_a_layer(order)
    done = set(frozen)
    chosen: list[str] = []
    for name in order:
        if name in done:
            continue
        if settled(name) and keeps(name, done):
            chosen.append(name)
            done.add(name)
        elif input_side_first:
            break
    return chosen


def tie_closed(
    chosen: Sequence[str], frozen: Collection[str], shares_with: Callable[[str], list[str]]
) -> tuple[list[str], tuple[str, list[str]] | None]:
    """The longest prefix of ``chosen`` in which every layer's tied partners (the layers
    ``shares_with`` names: they hold one of its parameters) are frozen or in the prefix too,
    and the first layer cut off with its partners left out (None if none is).

    Freezing a layer freezes its parameters in every layer holding them: an embedding whose
    weight the output layer reuses is frozen only with the output layer. The partners named
    are those whose absence started the cut (in a chain of ties, those of a later layer).

    >>> tied = {"emb": ["out"], "out": ["emb"]}
    >>> tie_closed(["emb", "body"], set(), lambda n: tied.get(n, []))
    ([], ('emb', ['out']))
    >>> tie_closed(["emb", "body", "out"], set(), lambda n: tied.get(n, []))
    (['emb', 'body', 'out'], None)
    """
    kept = list(chosen)
    missing: list[str] = []  # the partners left out that started the cut
    while True:
        ready = set(kept) | set(frozen)
        short = next((i for i, n in enumerate(kept) if not set(shares_with(n)) <= ready), None)
        if short is None:
            break
        missing = missing or [o for o in shares_with(kept[short]) if o not in ready]
        kept = kept[:short]
    if len(kept) == len(chosen):
        return kept, None
    return kept, (chosen[len(kept)], missing)
