"""Reading ikkuna_tune's values from a trial's flattened Tune result (``<key>/<layer>``) and its
budget from the trial, as SVCCAScheduler does."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ikkuna_tune import keys

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

__all__ = [
    "first_nonfinite",
    "is_number",
    "iteration_budget",
    "layer_values",
    "network_nonfinite",
    "reported_layers",
]

#: The first parts of the kinds whose non-finite value means the weights themselves are not
#: finite: the norms of a layer's weights and biases (``weights_norm2``, ``biases_norm1``, ...).
_WEIGHT_NORMS = ("weights_norm", "biases_norm")


def is_number(value: object) -> bool:
    """Whether ``value`` is an int or a float (not a bool).

    Examples:
        >>> is_number(0.5), is_number(3), is_number(True), is_number("1")
        (True, True, False, False)
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def reported_layers(result: dict[str, Any]) -> list[str]:
    """The layers a result reports ``frozen/<layer>`` for, in the order reported: the network's
    tracked layers, input side first (none for a result that ``ikkuna_tune.report`` did not make).

    Examples:
        >>> reported_layers({"acc": 0.5, "frozen/conv": 1, "frozen/fc": 0})
        ['conv', 'fc']
    """
    prefix = keys.FROZEN + "/"
    return [k[len(prefix) :] for k in result if k.startswith(prefix)]


def layer_values(result: dict[str, Any], key: str, layers: list[str]) -> dict[str, float]:
    """The numbers ``result`` holds under ``<key>/<layer>`` for ``layers`` and for their further
    calls in a forward pass (``<key>/<layer>#2``), as floats; those without a number are left
    out.

    Examples:
        >>> result = {"self_similarity/conv": 0.99, "self_similarity/fc": None}
        >>> layer_values(result, "self_similarity", ["conv", "fc"])
        {'conv': 0.99}
        >>> layer_values({"self_similarity/fc#2": 0.5}, "self_similarity", ["fc"])
        {'fc#2': 0.5}
    """
    prefix = key + "/"
    known = set(layers)
    names = [*layers]
    for k in result:
        name = k[len(prefix) :]
        if k.startswith(prefix) and name not in known and keys.layer_of_call(name) in known:
            names.append(name)
    return {
        name: float(result[prefix + name]) for name in names if is_number(result.get(prefix + name))
    }


def first_nonfinite(
    result: dict[str, Any],
    metric: str | None,
    similarity: dict[str, float],
    similarity_key: str,
    finite_before: set[str] | None = None,
) -> tuple[str, float] | None:
    """The first of ``metric``, the reported losses and the layers' similarities whose value
    is NaN or infinite, with that value (a similarity as ``<similarity_key>/<layer>``), or None.

    A loss is any number reported under a key whose first part names one (``loss``,
    ``train_loss``, ``mean_loss``, ``val_loss``, ``losses/val``, ``valLoss``), whatever the
    user called it (whether it stops the trial is
    :func:`~ikkuna_tune.tune.convergence.divergence`'s to judge). With ``finite_before``
    (the losses the trial has reported finite so far; this result's finite ones are added to
    it), a loss other than ``metric`` that is infinite before it was ever finite is passed
    over: ``best_val_loss = inf`` before the first validation is a tracker's start, not a
    divergence (a NaN always counts).

    Examples:
        >>> first_nonfinite({"acc": 0.5, "loss": float("nan")}, "acc", {}, "self_similarity")
        ('loss', nan)
        >>> first_nonfinite({"acc": 0.5, "val_loss": float("inf")}, "acc", {}, "self_similarity")
        ('val_loss', inf)
        >>> first_nonfinite({"acc": 0.5}, "acc", {"fc": -float("inf")}, "self_similarity")
        ('self_similarity/fc', -inf)
        >>> seen = set()
        >>> first_nonfinite({"acc": 0.5, "best_loss": float("inf")}, "acc", {}, "sim", seen)
        >>> first_nonfinite({"acc": 0.6, "best_loss": 0.9}, "acc", {}, "sim", seen), seen
        (None, {'best_loss'})
        >>> first_nonfinite({"acc": 0.6, "best_loss": float("inf")}, "acc", {}, "sim", seen)
        ('best_loss', inf)
    """
    losses = [k for k in result if "loss" in k.split("/", 1)[0].lower()]
    found: tuple[str, float] | None = None
    for key in (metric, *losses):
        value = result.get(key) if key else None
        if not is_number(value):
            continue
        number = float(value)  # type: ignore[arg-type]
        if math.isfinite(number):
            if finite_before is not None and key != metric:
                finite_before.add(str(key))
            continue
        if (
            finite_before is not None
            and key != metric
            and not math.isnan(number)
            and key not in finite_before
        ):
            continue  # infinite from the start: a tracker's initial value
        if found is None:
            found = str(key), number
    if found is not None:
        return found
    for name, value in similarity.items():
        if not math.isfinite(value):
            return f"{similarity_key}/{name}", value
    return None


def network_nonfinite(
    result: dict[str, Any], layers: list[str], signals: Mapping[str, Mapping[str, float]]
) -> tuple[str, float] | None:
    """A value of ``result`` that shows the network itself diverged, as ``(key, value)``, or
    None.

    Either a norm of a layer's weights or biases (``weights_norm2/<layer>``, ...) that is NaN
    or infinite: the weights are no longer finite (a step that a ``GradScaler`` skips for an
    overflow leaves them as they were, as does a loss that overflowed in one batch); or every
    layer signal measured in ``result`` NaN or infinite (``signals``: by key, such as
    ``self_similarity``, ``init_similarity`` and ``live_fraction``, the layers' values; at
    least one value): no layer scores any probe point finitely. One layer's non-finite
    similarity beside finite values, or a non-finite loss alone, is no such sign (see
    :func:`~ikkuna_tune.tune.convergence.divergence`).

    Examples:
        >>> network_nonfinite({"weights_norm2/fc": float("nan")}, ["fc"], {})
        ('weights_norm2/fc', nan)
        >>> nan = float("nan")
        >>> network_nonfinite({}, ["a", "b"], {"sim": {"a": nan, "b": nan}, "live": {}})
        ('sim/a', nan)
        >>> network_nonfinite({}, ["a", "b"], {"sim": {"a": nan}, "live": {"a": 0.5}})
        >>> network_nonfinite({"weights_norm2/fc": 3.0}, ["fc"], {"sim": {}})  # nothing measured
        >>> network_nonfinite({"weights_norm2/a#2": nan}, ["a#2"], {})  # a layer named 'a#2'
        ('weights_norm2/a#2', nan)
    """
    known = set(layers)
    for key, value in result.items():
        kind, slash, layer = key.partition("/")
        if (
            slash
            and kind.startswith(_WEIGHT_NORMS)
            and (layer in known or keys.layer_of_call(layer) in known)
            and is_number(value)
            and not math.isfinite(value)
        ):
            return key, float(value)
    values = [
        (f"{signal}/{name}", value) for signal, by_layer in signals.items()
        for name, value in by_layer.items()
    ]  # fmt: skip
    if values and not any(math.isfinite(value) for _, value in values):
        return values[0]
    return None


def iteration_budget(trial: Trial, stopper: object = None) -> int | None:
    """The trial's budget in reports, from its stopping criteria, if they give one.

    Tune stops a trial at the first criterion met, so the budget is the least of:

    - ``stop={"training_iteration": N}`` (the trial's ``stopping_criterion``; a float stops at
      the first iteration that reaches it);
    - a :class:`~ray.tune.stopper.MaximumIterationStopper` passed as ``stop=``, alone or inside
      a :class:`~ray.tune.stopper.CombinedStopper` (``stopper``, the experiment's): it counts the
      results it has seen of the trial, so a trial restored with a fresh stopper runs that many
      more than it has made already.

    Any other stopper gives no budget.

    Examples:
        >>> from types import SimpleNamespace
        >>> iteration_budget(SimpleNamespace(stopping_criterion={"training_iteration": 20}))
        20
        >>> iteration_budget(SimpleNamespace(stopping_criterion={"training_iteration": 11.5}))
        12
        >>> iteration_budget(SimpleNamespace(stopping_criterion={})) is None
        True
    """
    budgets: list[int] = []
    criterion = getattr(trial, "stopping_criterion", None)
    if isinstance(criterion, dict):
        value = criterion.get("training_iteration")
        if is_number(value) and math.isfinite(value) and value > 0:
            budgets.append(math.ceil(value))
    budgets += _stopper_budgets(trial, stopper)
    return min(budgets) if budgets else None


def _stopper_budgets(trial: Trial, stopper: object) -> list[int]:
    """The budgets of the MaximumIterationStoppers in ``stopper`` (see :func:`iteration_budget`)."""
    from ray.tune.stopper import CombinedStopper, MaximumIterationStopper

    if isinstance(stopper, CombinedStopper):
        inner = getattr(stopper, "_stoppers", ())
        return [b for s in inner for b in _stopper_budgets(trial, s)]
    if not isinstance(stopper, MaximumIterationStopper):
        return []
    limit = getattr(stopper, "_max_iter", None)
    counts = getattr(stopper, "_iter", {})
    if not is_number(limit) or not isinstance(counts, dict):
        return []
    seen = counts.get(getattr(trial, "trial_id", None), 0)
    last = getattr(trial, "last_result", None) or {}
    made = last.get("training_iteration", 0) if isinstance(last, dict) else 0
    made = made if is_number(made) else 0
    budget = math.ceil(limit) - int(seen) + int(made)
    return [budget] if budget > 0 else []
