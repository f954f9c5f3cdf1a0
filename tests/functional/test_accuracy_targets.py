"""Ignored targets (a negative ignore index) and targets that are no classification labels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as torch_F

from ikkuna_tune import functional as F
from ikkuna_tune.functional.accuracy import check_targets
from tests.test_host_reads import counting_reads


def _padded(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token outputs ``(N, C, T)`` and targets ``(N, T)`` padded with -100 at ragged lengths."""
    g = torch.Generator().manual_seed(seed)
    output = torch.randn(6, 4, 9, generator=g)
    target = torch.randint(0, 4, (6, 9), generator=g)
    for n, length in enumerate([9, 5, 1, 7, 3, 6]):
        target[n, length:] = -100
    return output, target


def _by_hand(output: torch.Tensor, target: torch.Tensor) -> tuple[int, int]:
    """(correct, counted) over every non-ignored token, in plain Python."""
    hits = counted = 0
    for n in range(output.shape[0]):
        for t in range(output.shape[2]):
            label = int(target[n, t])
            if label < 0:
                continue
            scores = output[n, :, t].tolist()
            counted += 1
            hits += int(scores.index(max(scores)) == label)
    return hits, counted


def test_ignored_targets_count_neither_as_correct_nor_in_the_total() -> None:
    output, target = _padded()
    hits, counted = _by_hand(output, target)
    assert 0 < counted < target.numel()
    got_hits, got_total = F.count_correct(output, target)
    assert isinstance(got_total, torch.Tensor) and got_total.dim() == 0
    assert got_hits.dim() == 0 and got_total.device == output.device
    assert (int(got_hits), int(got_total)) == (hits, counted)
    assert int(F.correct(output, target)) == hits
    assert F.accuracy(output, target).item() == pytest.approx(hits / counted)


def test_the_total_is_what_cross_entropy_averages_over() -> None:
    """cross_entropy's mean divides the summed loss by the number of non-ignored targets."""
    output, target = _padded(1)
    summed = torch_F.cross_entropy(output, target, reduction="sum")
    mean = torch_F.cross_entropy(output, target)  # ignore_index=-100 by default
    assert int(F.count_correct(output, target)[1]) == round(float(summed / mean))
    other = target.masked_fill(target == -100, -1)
    summed = torch_F.cross_entropy(output, other, ignore_index=-1, reduction="sum")
    mean = torch_F.cross_entropy(output, other, ignore_index=-1)
    assert int(F.count_correct(output, other)[1]) == round(float(summed / mean))


def test_ignored_targets_agree_with_class_counts() -> None:
    output, target = _padded(2)
    assert int(F.class_counts(output, target).sum()) == int(F.count_correct(output, target)[1])
    float_target = target.float()  # float class indices, -100.0 ignored alike
    assert int(F.count_correct(output, float_target)[1]) == int(F.count_correct(output, target)[1])


def test_nothing_to_count_gives_accuracy_zero_without_an_error() -> None:
    output = torch.randn(3, 4)
    ignored = torch.full((3,), -100)
    hits, total = F.count_correct(output, ignored)
    assert (int(hits), int(total)) == (0, 0)
    assert F.accuracy(output, ignored).item() == 0.0
    empty = F.accuracy(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert empty.item() == 0.0


def test_counting_reads_nothing_back() -> None:
    output, target = _padded(3)
    with counting_reads() as reads:
        F.count_correct(output, target)
        F.accuracy(output, target.float())
    assert not reads


@pytest.mark.parametrize(
    ("target", "output"),
    [
        (torch.tensor([0, 2, 1, -100]), torch.zeros(4, 3)),
        (torch.tensor([0.0, 1.0, 1.0, 0.0]), torch.zeros(4, 1)),  # BCE with one logit
        (torch.tensor([[0.0], [1.0], [1.0], [0.0]]), torch.zeros(4, 1)),
        (torch.tensor([2.0, -100.0, 0.0, 1.0]), torch.zeros(4, 3)),  # float class indices
        (torch_F.one_hot(torch.tensor([0, 2, 1, 1]), 3).float(), torch.zeros(4, 3)),
        (torch.tensor([[0.1, 0.7, 0.2], [1 / 3, 1 / 3, 1 / 3]]), torch.zeros(2, 3)),  # soft
        (torch.tensor([[0.1, 0.7, 0.2]], dtype=torch.bfloat16), torch.zeros(1, 3)),
    ],
)
def test_classification_targets_are_accepted(target: torch.Tensor, output: torch.Tensor) -> None:
    check_targets(target)
    check_targets(target, output)


@pytest.mark.parametrize(
    ("target", "output", "got"),
    [
        # regression: one real value per sample
        (
            torch.tensor([[0.5], [2.25], [-1.0]]),
            torch.zeros(3, 1),
            r"shape \(3, 1\) with a value 0.5",
        ),
        # autoencoder: targets shaped like the output, but real-valued
        (
            torch.tensor([[[0.25, -1.0]], [[1.0, 0.0]]]).expand(2, 3, 2),
            torch.zeros(2, 3, 2),
            r"shape \(2, 3, 2\) with a value 0.25",
        ),
        # negative "soft labels" that are not whole numbers
        (torch.tensor([[1.5, -0.5], [0.5, 0.5]]), torch.zeros(2, 2), r"a value 1.5 that is not"),
        # soft labels that do not sum to 1
        (
            torch.tensor([[0.5, 0.25], [0.5, 0.5]]),
            torch.zeros(2, 2),
            r"do not sum to 1 \(one sums to 0.75, its smallest is 0.25\)",
        ),
        # soft labels not shaped like the output
        (torch.tensor([[0.5, 0.5], [0.25, 0.75]]), torch.zeros(2, 3), r"a value 0.5 that"),
        # multi-hot labels of a multi-label task: whole numbers, but shaped like the output,
        # so not class indices (read as such, the first positive label was scored)
        (
            torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]),
            torch.zeros(2, 3),
            r"do not sum to 1 \(one sums to 2, its smallest is 0\)",
        ),
        # one logit per element without a class dimension (N, H, W): not (N, C, ...) scores
        (
            torch.tensor([[[1.0, 0.0], [1.0, 1.0]]]).expand(2, 2, 2),
            torch.zeros(2, 2, 2),
            r"do not sum to 1 \(one sums to 2",
        ),
    ],
)
def test_non_classification_targets_raise_naming_expected_and_got(
    target: torch.Tensor, output: torch.Tensor, got: str
) -> None:
    with pytest.raises(ValueError, match="Expected classification targets: class indices") as err:
        check_targets(target, output)
    assert "dtype torch.float32" in str(err.value)
    assert f"shaped like the output {tuple(output.shape)}" in str(err.value)
    with pytest.raises(ValueError, match=got):
        check_targets(target, output)


def test_soft_labels_are_checked_against_the_output_only_when_given() -> None:
    soft = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
    check_targets(soft)  # without an output: soft labels of 2 classes
    check_targets(torch.tensor([[1.0, 0.0, 1.0]]))  # or class indices of a sequence
    with pytest.raises(ValueError, match=r"output \(2, 3\)"):
        check_targets(soft, torch.zeros(2, 3))


def test_smoothed_binary_labels_are_class_one_probabilities() -> None:
    # one logit per sample and label smoothing (0.05 / 0.95): accuracy as with the hard labels
    logits = torch.tensor([[2.0], [-1.0], [0.5], [-3.0], [1.0]])
    hard = torch.tensor([[1.0], [0.0], [0.0], [0.0], [-100.0]])
    smoothed = torch.where(hard < 0, hard, hard * 0.9 + 0.05)
    check_targets(smoothed, logits)
    check_targets(smoothed)
    by_hand = sum(int(v > 0) == int(t) for v, t in zip(logits[:4, 0], hard[:4, 0])) / 4
    assert F.accuracy(logits, smoothed).item() == pytest.approx(by_hand)
    assert F.accuracy(logits, hard).item() == pytest.approx(by_hand)
    with pytest.raises(ValueError, match="not a whole number"):
        check_targets(torch.tensor([[0.3], [1.7]]), logits[:2])  # a regression's targets


def test_integer_one_hot_labels_read_as_their_classes() -> None:
    # torch's one_hot makes int64 labels shaped like the output: they were refused as "one
    # target per prediction" (the message named no dtype)
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(7, 4, generator=g)
    labels = torch.randint(0, 4, (7,), generator=g)
    one_hot = torch_F.one_hot(labels, 4)
    check_targets(one_hot, logits)
    by_hand = sum(int(row.argmax()) == int(y) for row, y in zip(logits, labels)) / 7
    assert F.accuracy(logits, one_hot).item() == pytest.approx(by_hand)
    assert F.accuracy(logits, one_hot).item() == F.accuracy(logits, labels).item()
    assert F.class_counts(logits, one_hot).tolist() == torch.bincount(labels, minlength=4).tolist()
    # uint8 too; bool ones have no argmax: refused as before, with a ValueError
    assert F.accuracy(logits, one_hot.to(torch.uint8)).item() == pytest.approx(by_hand)
    with pytest.raises(ValueError):
        F.accuracy(logits, one_hot.bool())


def test_integer_one_hot_labels_of_sequences_are_refused_not_guessed() -> None:
    # torch's one_hot of (N, T) labels is (N, T, V): the shape of an output with its classes
    # last, but (N, C, T) outputs have them in dimension 1; the arg-max over dimension 1 read
    # 0.0 where the labels give 0.7. Refused, as before integer one-hot labels were read at all
    g = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 6, (3, 5), generator=g)
    for output in (torch.randn(3, 5, 6, generator=g), torch.randn(3, 6, 5, generator=g)):
        one_hot = torch_F.one_hot(labels, 6)
        if output.shape[1] == 6:
            one_hot = one_hot.movedim(-1, 1)
        with pytest.raises(ValueError, match="one target per prediction"):
            F.accuracy(output, one_hot)


def test_integer_multi_hot_labels_are_refused_naming_their_dtype() -> None:
    logits = torch.zeros(2, 3)
    with pytest.raises(
        ValueError, match=r"dtype torch.int64 .*not one-hot \(one holds \[1, 0, 1\]\)"
    ):
        check_targets(torch.tensor([[1, 0, 1], [0, 1, 0]]), logits)
    with pytest.raises(ValueError, match=r"not one-hot \(one holds \[2, 0, 0\]\)"):
        check_targets(torch.tensor([[0, 1, 0], [2, 0, 0]]), logits)
