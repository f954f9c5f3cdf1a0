"""Classification accuracy from network outputs and targets, computed on the device."""

from __future__ import annotations

import torch

__all__ = ["accuracy", "class_counts", "correct", "count_correct", "predictions"]


def predictions(output: torch.Tensor) -> torch.Tensor:
    """Predicted classes of a batch of outputs.

    ``output`` of shape ``(N, C)`` with ``C > 1`` (logits or probabilities, more dimensions after
    ``C`` allowed, as for :func:`torch.nn.functional.cross_entropy`): the arg-max over dimension
    1. Shape ``(N,)`` or ``(N, 1)``: one logit per sample for binary classification, predicting
    class 1 where it is positive.

    Examples:
        >>> predictions(torch.tensor([[2.0, 0.5], [0.1, 0.9], [0.3, 0.2]]))
        tensor([0, 1, 0])
        >>> predictions(torch.tensor([-1.0, 2.0]))  # one logit per sample
        tensor([0, 1])
    """
    if output.dim() == 0:
        raise ValueError("Expected a batch of outputs but got a 0-d tensor")
    if output.dim() == 1 or (output.dim() == 2 and output.shape[1] == 1):
        return (output.reshape(-1) > 0).long()
    return output.argmax(dim=1)


def _targets(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.is_floating_point() and target.dim() == output.dim() and output.dim() > 1:
        if target.shape[1] == output.shape[1] and output.shape[1] > 1:
            return target.argmax(dim=1)  # one-hot or soft labels
    return target


def count_correct(output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(correct, total)``: the number of correct predictions as a 0-d int64 tensor on the
    device (see :func:`correct`), and the number of predictions as a Python int (known from the
    shapes, so no synchronisation). Sum both over batches for a dataset's accuracy.

    Examples:
        >>> output = torch.tensor([[2.0, 0.5], [0.1, 0.9], [0.3, 0.2]])
        >>> count_correct(output, torch.tensor([0, 1, 1]))
        (tensor(2), 3)
    """
    pred = predictions(output)
    target = _targets(output, target)
    if pred.numel() != target.numel():
        raise ValueError(
            f"Expected one target per prediction ({tuple(pred.shape)}) but got targets of "
            f"shape {tuple(target.shape)}"
        )
    return (pred.reshape(-1) == target.reshape(-1).to(pred.device)).sum(), pred.numel()


def correct(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """How many predictions of ``output`` (see :func:`predictions`) equal ``target``.

    ``target`` holds class indices, or one-hot / soft labels shaped like ``output`` (their
    arg-max is the class). Returns a 0-d int64 tensor on ``output``'s device.

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

    Every sample (every position, for outputs with spatial dimensions) counts once; an empty
    batch has accuracy 0.

    Examples:
        >>> output = torch.tensor([[2.0, 0.5], [0.1, 0.9], [0.3, 0.2], [0.0, 1.0]])
        >>> accuracy(output, torch.tensor([0, 1, 1, 1]))
        tensor(0.7500)
    """
    hits, total = count_correct(output, target)
    return hits.float() / max(1, total)


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
    binary = output.dim() == 1 or (output.dim() == 2 and output.shape[1] == 1)
    classes = 2 if binary else output.shape[1]
    return torch.bincount(target[target >= 0].long(), minlength=classes)
