"""Classification accuracy from network outputs and targets, computed on the device."""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = [
    "Counts",
    "accuracy",
    "check_targets",
    "check_top_label",
    "class_counts",
    "class_range",
    "correct",
    "count_correct",
    "count_predictions",
    "one_hot_ints",
    "predictions",
    "rate",
    "without_ignored",
]


def predictions(output: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Predicted classes of a batch of outputs.

    ``output`` of shape ``(N, C)`` with ``C > 1`` (logits or probabilities, more dimensions after
    ``C`` allowed, as for :func:`torch.nn.functional.cross_entropy`): the arg-max over dimension
    1. Shape ``(N,)``, ``(N, 1)`` or ``(N, 1, ...)``: one score per sample (or position) for
    binary classification (or segmentation), predicting class 1 where it is above
    ``threshold`` (0 for a logit, 0.5 for a probability, the output of a sigmoid as
    :class:`torch.nn.BCELoss` takes it).

    A sample whose scores hold a NaN has no prediction: -1, which equals no class (an arg-max
    would read the NaN as the largest score and name its class).

    Examples:
        >>> predictions(torch.tensor([[2.0, 0.5], [0.1, 0.9], [0.3, 0.2]]))
        tensor([0, 1, 0])
        >>> predictions(torch.tensor([-1.0, 2.0]))  # one logit per sample
        tensor([0, 1])
        >>> predictions(torch.tensor([0.2, 0.7]), threshold=0.5)  # one probability per sample
        tensor([0, 1])
        >>> predictions(torch.tensor([[[[-1.0, 2.0]]]]))  # (N, 1, H, W): one logit per pixel
        tensor([0, 1])
        >>> predictions(torch.tensor([[2.0, 0.5], [float("nan"), 0.9]]))
        tensor([ 0, -1])
    """
    if output.dim() == 0:
        raise ValueError("Expected a batch of outputs but got a 0-d tensor")
    if _one_logit(output):
        flat = output.reshape(-1)
        return torch.where(flat.isnan(), -1, (flat > threshold).long())
    return _argmax_or_none(output, 1)


def _argmax_or_none(output: torch.Tensor, classes: int) -> torch.Tensor:
    """The arg-max of ``output`` along dimension ``classes``, -1 where the scores hold a NaN
    (the maximum propagates a NaN, so one test per sample finds them)."""
    values, indices = output.max(dim=classes)
    return torch.where(values.isnan(), -1, indices)


def _one_logit(x: torch.Tensor) -> bool:
    """Whether ``x`` is shaped as one value per sample (or per position): ``(N,)``, ``(N, 1)``
    or ``(N, 1, ...)``, a binary segmentation's ``(N, 1, H, W)`` say."""
    return x.dim() == 1 or (x.dim() >= 2 and x.shape[1] == 1)


def _one_per_sample(x: torch.Tensor) -> bool:
    """Whether ``x`` is shaped as one value per sample: ``(N,)`` or ``(N, 1)``."""
    return x.dim() == 1 or (x.dim() == 2 and x.shape[1] == 1)


def one_hot_ints(target: torch.Tensor, output: torch.Tensor | None) -> bool:
    """Whether ``target`` is read as integer one-hot labels for ``output``: an integer (not
    bool) tensor of ``output``'s shape ``(N, C)``, ``C > 1`` (``torch.nn.functional.one_hot``'s
    labels of a classifier), never class indices, which would be ``(N,)``. Only two dimensions:
    torch's one-hot labels of a sequence, ``(N, T, V)``, have the shape of an output with its
    classes last but their classes last too, where ``(N, C, T)`` outputs have them in dimension
    1; such labels are refused, not guessed (pass class indices, ``argmax(-1)``).

    Examples:
        >>> one_hot_ints(torch.tensor([[0, 1], [1, 0]]), torch.zeros(2, 2))
        True
        >>> one_hot_ints(torch.tensor([1, 0]), torch.zeros(2, 2))  # class indices
        False
    """
    return (
        output is not None
        and not target.is_floating_point()
        and target.dtype != torch.bool
        and target.dim() == 2
        and target.shape == output.shape
        and target.shape[1] > 1
    )


def without_ignored(target: torch.Tensor, output: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """``target`` with its class index ``ignore_index`` replaced by ``-1``, which counts neither
    as correct nor in the total (:func:`count_predictions`), as a loss given that
    ``ignore_index`` ignores it; unchanged where ``target`` does not hold class indices.

    Class indices are an integer tensor, other than integer one-hot labels
    (:func:`one_hot_ints`), or floats that are whole numbers (as :func:`check_targets` accepts
    them), other than labels shaped like a multi-class ``output`` (one-hot or soft) and the
    probabilities for one logit per sample: torch's losses ignore an index in none of those.

    Examples:
        >>> output = torch.zeros(3, 4)
        >>> without_ignored(torch.tensor([0, 2, 0]), output, 0)
        tensor([-1,  2, -1])
        >>> without_ignored(torch.tensor([0.0, 2.0, 0.0]), output, 0)  # float class indices
        tensor([-1,  2, -1])
        >>> without_ignored(torch.tensor([[1.0, 0, 0, 0]]), torch.zeros(1, 4), 0)  # one-hot
        tensor([[1., 0., 0., 0.]])
    """
    if target.is_floating_point():
        soft = target.dim() == output.dim() and output.dim() > 1
        soft = soft and target.shape[1] == output.shape[1] and output.shape[1] > 1
        if soft or _one_logit(output):
            return target
    elif one_hot_ints(target, output):
        return target
    return torch.where(target == ignore_index, -1, target.long())


def _targets(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.is_floating_point() and target.dim() == output.dim() and output.dim() > 1:
        if target.shape[1] == output.shape[1] and output.shape[1] > 1:
            return target.argmax(dim=1)  # one-hot or soft labels
    if one_hot_ints(target, output):
        return target.argmax(dim=1)  # integer one-hot labels (checked by check_targets)
    if target.is_floating_point() and _one_logit(output):
        # the probability of class 1 (0/1 labels, or smoothed ones such as 0.05/0.95); a
        # negative target stays an ignore index
        return torch.where(target < 0, -1, (target > 0.5).long())
    return target


def check_targets(target: torch.Tensor, output: torch.Tensor | None = None) -> None:
    """Raise a ``ValueError`` unless ``target`` holds classification labels.

    Accepted: class indices, as an integer tensor or as floats that are whole numbers (negative
    ones are an ignore index, e.g. ``-100``; ``0.0`` / ``1.0`` labels for one logit per sample
    are class indices too); for one logit per sample, probabilities of class 1 in [0, 1]
    (smoothed labels, read as class 1 above 0.5); or one-hot / soft labels: non-negative floats
    that sum to 1 over the class dimension (dimension 1), shaped like ``output`` when it is
    given (a target shaped like ``output`` is read as such labels only, never as class indices),
    and integer one-hot labels shaped like an ``(N, C)`` ``output`` (``torch.nn.functional.
    one_hot``'s: each 0 or 1, one 1 per sample; :func:`one_hot_ints`).
    Anything else, such as the real-valued targets of a regression or the multi-hot targets
    of a multi-label task, has no accuracy.

    An integer tensor of class indices is accepted from its dtype alone; a float tensor, and
    integer one-hot labels, are checked with one read back to the host (a synchronisation on an
    accelerator), so call this once, not every step.
    :func:`class_range` and :func:`check_top_label` check that class indices fit the
    output's classes.

    Raises:
        ValueError: naming what was expected and what was got (dtype, shape, an offending value).

    Examples:
        >>> check_targets(torch.tensor([0.0, 1.0, 1.0]))  # float class indices
        >>> check_targets(torch.tensor([[0.2, 0.8], [0.5, 0.5]]))  # soft labels
        >>> check_targets(torch.tensor([[0.3], [1.7]]))  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
        ...
        ValueError: Expected classification targets: ... but got a tensor of dtype torch.float32 and
        shape (2, 1) with a value 0.3 that is not a whole number; ...
    """
    if not target.is_floating_point():
        if target.is_complex():
            raise ValueError(_targets_message(target, output, "complex values"))
        if one_hot_ints(target, output):  # (one host read)
            rows = target.detach().movedim(1, -1).reshape(-1, target.shape[1])
            binary = ((rows == 0) | (rows == 1)).all(dim=1)
            wrong = (~binary | (rows.sum(dim=1) != 1)).nonzero()
            if wrong.numel():
                row = rows[int(wrong[0, 0])]
                got = (
                    f"integer labels shaped like the output that are not one-hot (one holds "
                    f"{row.tolist()[:8]}{'...' if row.numel() > 8 else ''})"
                )
                raise ValueError(_targets_message(target, output, got))
        return
    values = target.detach()
    not_whole = (values != values.round()) | ~values.isfinite()
    whole = ~not_whole.any()
    soft_shape = values.dim() > 1 and values.shape[1] > 1
    if output is not None:
        soft_shape = soft_shape and values.shape == output.shape
    tol = max(1e-3, values.shape[1] * torch.finfo(values.dtype).eps) if soft_shape else 0.0
    if soft_shape:
        sums = values.double().sum(dim=1)
        soft = (values >= 0).all() & ((sums - 1).abs() <= tol).all()
        # shaped like the output, the target has a class dimension, so it holds no class
        # indices: whole numbers are one-hot labels only if each sums to 1 (multi-hot ones of
        # a multi-label task have no accuracy here)
        ok = soft if output is not None else whole | soft
    else:
        ok = whole
    if _one_per_sample(values) and (output is None or _one_per_sample(output)):
        # one logit per sample: targets may be class-1 probabilities (smoothed labels), beside
        # a negative whole number that is an ignore index (per position, only 0/1 masks: a
        # grayscale image in [0, 1] is no label)
        probability = (values >= 0) & (values <= 1)
        ok = ok | (probability | ((values < 0) & (values == values.round()))).all()
    if bool(ok):  # the one host read
        return
    bad = values[not_whole]  # the error path: reads are no concern here
    got = f"a value {bad[0].item():g} that is not a whole number" if bad.numel() else ""
    if soft_shape:
        rows = values.double().movedim(1, -1).reshape(-1, values.shape[1])
        wrong = ((rows < 0).any(dim=1) | ((rows.sum(dim=1) - 1).abs() > tol)).nonzero()
        if wrong.numel():
            row = rows[int(wrong[0, 0])]
            got += (" and " if got else "") + (
                f"soft labels that are negative or do not sum to 1 (one sums to "
                f"{row.sum().item():g}, its smallest is {row.min().item():g})"
            )
    raise ValueError(_targets_message(target, output, got))


def class_range(
    target: torch.Tensor, output: torch.Tensor, so_far: tuple[torch.Tensor, int] | None = None
) -> tuple[torch.Tensor, int] | None:
    """The largest class index of ``target`` (with ``so_far``'s, over batches; a 0-d tensor,
    on the device: no read back) and the number of classes ``output`` has (read as
    :func:`count_correct` reads it), for :func:`check_top_label`; ``so_far`` as it is for
    soft labels and outputs no reading fits.

    Examples:
        >>> top = class_range(torch.tensor([0, 1]), torch.zeros(2, 3))
        >>> top = class_range(torch.tensor([2, 3]), torch.zeros(2, 3), top)
        >>> int(top[0]), top[1]
        (3, 3)
    """
    if output.dim() == 0 or target.numel() == 0:
        return so_far
    soft = target.is_floating_point() and target.dim() > 1 and target.shape == output.shape
    if soft and output.shape[1] > 1:
        return so_far  # one-hot or soft labels (one column of floats: labels of one logit)
    if one_hot_ints(target, output):
        return so_far  # integer one-hot labels
    if _one_logit(output) and output.numel() == target.numel():
        classes = 2
    elif output.numel() == target.numel() * output.shape[1]:
        classes = output.shape[1]
    elif output.dim() > 2 and output.numel() == target.numel() * output.shape[-1]:
        classes = output.shape[-1]
    else:
        return so_far  # no reading gives one prediction per target: count_correct says so
    top = target.detach().max().to(output.device, torch.float64)
    if so_far is not None:
        top = torch.maximum(top, so_far[0])
    return top, classes


def check_top_label(top: torch.Tensor, classes: int) -> None:
    """Refuse class indices at or beyond the number of classes (see :func:`class_range`):
    they would count as wrong, silently, where ``cross_entropy`` raises. One read back.

    Examples:
        >>> check_top_label(torch.tensor(2.0), 3)
        >>> check_top_label(torch.tensor(3.0), 3)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: Expected class indices below the 3 classes of the output but got a label 3; ...
    """
    largest = float(top)
    if largest >= classes:
        raise ValueError(
            f"Expected class indices below the {classes} classes of the output but got a label "
            f"{largest:g}; are the labels 1-based, or is the output not the scores of every "
            "class? (An ignore index must be negative, as cross_entropy's -100: map 255 to it.)"
        )


def _targets_message(target: torch.Tensor, output: torch.Tensor | None, got: str) -> str:
    like = f" {tuple(output.shape)}" if output is not None else ""
    return (
        "Expected classification targets: class indices (an integer tensor, or float values "
        "that are whole numbers) or one-hot / soft labels shaped like the output"
        f"{like} (non-negative, summing to 1 over dimension 1), but got a tensor of dtype "
        f"{target.dtype} and shape {tuple(target.shape)} with {got}; accuracy is not defined "
        "for regression or multi-label targets"
    )


class Counts(NamedTuple):
    """What :func:`count_predictions` counted in one batch: 0-d int64 tensors on the outputs'
    device, to be summed over batches.

    Examples:
        >>> counts = count_predictions(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
        >>> int(counts.correct), int(counts.total), int(counts.predicted)
        (1, 2, 2)
    """

    #: targets whose prediction equals them
    correct: torch.Tensor
    #: counted targets (those not ignored)
    total: torch.Tensor
    #: counted targets with a prediction (scores without NaN)
    predicted: torch.Tensor


def count_correct(output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(correct, total)`` of :func:`count_predictions`.

    Examples:
        >>> count_correct(torch.tensor([[2.0, 0.5], [0.1, 0.9]]), torch.tensor([0, 0]))
        (tensor(1), tensor(2))
    """
    counts = count_predictions(output, target)
    return counts.correct, counts.total


def count_predictions(output: torch.Tensor, target: torch.Tensor, threshold: float = 0.0) -> Counts:
    """:class:`Counts`: the number of correct predictions (see :func:`correct`), the number of
    counted targets and how many of those have a prediction, as 0-d int64 tensors on
    ``output``'s device (no synchronisation). Sum them over batches for a data set's accuracy.

    A sample whose scores hold a NaN has no prediction (:func:`predictions`, which takes
    ``threshold``): it counts in ``total`` and is never correct.

    Negative class indices (an ignore index such as ``-100``, the padding of a sequence, as
    :func:`torch.nn.functional.cross_entropy` ignores them) count neither as correct nor in
    ``total``, as in :func:`class_counts`.

    The classes are in dimension 1 (see :func:`predictions`), unless that leaves a number of
    predictions other than the number of targets while the last dimension fits: a sequence
    model's ``(N, T, V)`` logits, whose loss reads them as ``(N * T, V)``, with targets
    ``(N, T)`` or ``(N * T,)``, are read with their classes last.

    Raises:
        ValueError: if neither reading gives one prediction per target.

    Examples:
        >>> output = torch.tensor([[2.0, 0.5], [0.1, 0.9], [0.3, 0.2], [0.0, 1.0]])
        >>> count_predictions(output, torch.tensor([0, 1, 1, -100]))  # the last is ignored
        Counts(correct=tensor(2), total=tensor(3), predicted=tensor(3))
        >>> logits = torch.zeros(2, 3, 5)  # 2 sequences of 3 tokens, 5 classes
        >>> logits[..., 4] = 1.0  # class 4 everywhere
        >>> logits[1, 2, 0] = float("nan")  # no prediction for the last token
        >>> count_predictions(logits, torch.tensor([[4, 4, 0], [4, 1, 4]]))
        Counts(correct=tensor(3), total=tensor(6), predicted=tensor(5))
    """
    pred = predictions(output, threshold)
    target = _targets(output, target)
    if pred.numel() != target.numel():
        if output.dim() > 2 and output.numel() == target.numel() * output.shape[-1]:
            # classes last: (N, T, V) logits of a sequence model
            pred = _argmax_or_none(output, -1)
        else:
            raise ValueError(
                f"Expected one target per prediction but got outputs of shape "
                f"{tuple(output.shape)} ({tuple(pred.shape)} predictions with the classes in "
                f"dimension 1, or with them last) and targets of shape {tuple(target.shape)}"
            )
    pred = pred.reshape(-1)
    target = target.reshape(-1).to(pred.device)
    kept = target >= 0
    return Counts(((pred == target) & kept).sum(), kept.sum(), ((pred >= 0) & kept).sum())


def rate(counts: Counts) -> torch.Tensor:
    """``correct / total`` of summed :class:`Counts` as a 0-d float tensor: 0 with nothing to
    count, NaN when targets were counted but none has a prediction (every sample's scores hold
    a NaN: a diverged model has no accuracy, rather than that of the class an arg-max of NaN
    names).

    Examples:
        >>> rate(Counts(torch.tensor(3), torch.tensor(4), torch.tensor(4)))
        tensor(0.7500)
        >>> rate(Counts(torch.tensor(0), torch.tensor(4), torch.tensor(0)))
        tensor(nan)
    """
    value = counts.correct.float() / counts.total.clamp(min=1)
    unscored = (counts.predicted == 0) & (counts.total > 0)
    return torch.where(unscored, float("nan"), value)


def correct(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """How many predictions of ``output`` (see :func:`predictions`) equal ``target``.

    ``target`` holds class indices, or one-hot / soft labels shaped like ``output`` (their
    arg-max is the class); negative class indices (an ignore index) are never correct. Returns a
    0-d int64 tensor on ``output``'s device.

    Raises:
        ValueError: if predictions and targets do not have the same number of entries.

    Examples:
        >>> output = torch.tensor([[2.0, 0.5], [0.1, 0.9], [0.3, 0.2]])
        >>> correct(output, torch.tensor([0, 1, 1]))
        tensor(2)
        >>> correct(output, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]))  # one-hot
        tensor(2)
    """
    return count_correct(output, target)[0]


def accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The fraction of correct predictions in one batch, as a 0-d float tensor.

    Every sample (every position, for outputs with spatial dimensions) counts once, except those
    whose target is negative (an ignore index, see :func:`count_correct`). A batch with nothing
    to count (empty, or every target ignored) has accuracy 0. A sample whose scores hold a NaN
    is never correct, and a batch in which every counted sample's do has accuracy NaN.

    Examples:
        >>> output = torch.tensor([[2.0, 0.5], [0.1, 0.9], [0.3, 0.2], [0.0, 1.0]])
        >>> accuracy(output, torch.tensor([0, 1, 1, 1]))
        tensor(0.7500)
        >>> accuracy(output, torch.tensor([0, 1, -100, -100]))  # padding is not counted
        tensor(1.)
        >>> accuracy(output, torch.full((4,), -100))  # nothing to count
        tensor(0.)
        >>> accuracy(torch.full((2, 3), float("nan")), torch.tensor([0, 1]))  # diverged
        tensor(nan)
    """
    return rate(count_predictions(output, target))


def class_counts(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """How many targets of each class a batch holds, as an int64 tensor on ``target``'s device
    with at least one entry per class of ``output`` (two for one logit per sample). Targets are
    read as by :func:`count_correct`; negative ones (an ignore index) are not counted.

    The largest count over a data set, divided by its size, is the accuracy of always answering
    its most frequent class: the chance level of an accuracy.

    Examples:
        >>> output = torch.zeros(4, 3)
        >>> class_counts(output, torch.tensor([0, 2, 2, -100]))
        tensor([1, 0, 2])
        >>> class_counts(torch.zeros(3), torch.tensor([1, 1, 0]))  # one logit per sample
        tensor([1, 2])
    """
    target = _targets(output, target).reshape(-1)
    binary = _one_logit(output) and output.numel() == target.numel()
    classes = 2 if binary else output.shape[1]
    return torch.bincount(target[target >= 0].long(), minlength=classes)
