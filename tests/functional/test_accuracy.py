from __future__ import annotations

import pytest
import torch

from ikkuna_tune import functional as F


def test_accuracy_counted_by_hand() -> None:
    g = torch.Generator().manual_seed(0)
    output = torch.randn(50, 4, generator=g)
    target = torch.randint(0, 4, (50,), generator=g)
    hits = sum(1 for row, t in zip(output.tolist(), target.tolist()) if row.index(max(row)) == t)
    assert F.correct(output, target).item() == hits
    assert F.accuracy(output, target).item() == pytest.approx(hits / 50)
    assert F.accuracy(output, target).dim() == 0


def test_binary_one_hot_and_spatial_outputs() -> None:
    logits = torch.tensor([-1.0, 2.0, 0.5, -0.2])
    assert F.accuracy(logits, torch.tensor([0, 1, 0, 0])).item() == 0.75
    assert F.accuracy(logits[:, None], torch.tensor([0, 1, 1, 0])).item() == 1.0
    out = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    assert F.accuracy(out, torch.tensor([[0.0, 1.0], [0.0, 1.0]])).item() == 0.5
    seg = torch.zeros(2, 3, 2, 2)
    seg[:, 1] = 1.0  # predicts class 1 everywhere
    target = torch.ones(2, 2, 2, dtype=torch.long)
    target[0, 0, 0] = 2
    assert F.accuracy(seg, target).item() == pytest.approx(7 / 8)


def test_mismatched_targets_raise() -> None:
    with pytest.raises(ValueError, match="one target per prediction"):
        F.correct(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="batch of outputs"):
        F.predictions(torch.tensor(1.0))


def test_class_counts_against_a_python_count() -> None:
    """Per-class counts equal collections.Counter's over the targets, for class indices,
    one-hot labels, one logit per sample, and with an ignore index left out."""
    from collections import Counter

    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 6, (40,), generator=g)
    output = torch.randn(40, 6, generator=g)
    counted = Counter(target.tolist())
    assert F.class_counts(output, target).tolist() == [counted[c] for c in range(6)]
    one_hot = torch.nn.functional.one_hot(target, 6).float()
    assert F.class_counts(output, one_hot).tolist() == [counted[c] for c in range(6)]
    ignored = target.clone()
    ignored[:5] = -100
    counted_kept = Counter(ignored[5:].tolist())
    assert F.class_counts(output, ignored).tolist() == [counted_kept[c] for c in range(6)]
    binary = torch.tensor([1, 1, 1, 0])
    assert F.class_counts(torch.randn(4, generator=g), binary).tolist() == [1, 3]


def _nan_free_hits(rows: list[list[float]], targets: list[int]) -> int:
    """Correct predictions counted in plain Python: a row holding a NaN predicts nothing."""
    hits = 0
    for row, t in zip(rows, targets):
        if any(v != v for v in row):  # NaN
            continue
        hits += int(row.index(max(row)) == t)
    return hits


def test_scores_holding_a_nan_are_never_correct() -> None:
    """A NaN score names no class: an arg-max would read it as the largest and call the row
    correct whenever the target is the NaN's class."""
    g = torch.Generator().manual_seed(1)
    output = torch.randn(40, 5, generator=g)
    target = torch.randint(0, 5, (40,), generator=g)
    for i in range(0, 40, 3):
        output[i, target[i]] = float("nan")  # an arg-max would name the target
    output[1, (target[1] + 1) % 5] = float("nan")
    hits = _nan_free_hits(output.tolist(), target.tolist())
    counts = F.count_predictions(output, target)
    assert counts.correct.item() == hits
    assert counts.total.item() == 40 and counts.predicted.item() == 40 - 15
    assert F.accuracy(output, target).item() == pytest.approx(hits / 40)
    # one logit per sample: NaN is neither positive nor class 0
    logits = torch.tensor([float("nan"), -1.0, float("nan"), 2.0])
    assert F.predictions(logits).tolist() == [-1, 0, -1, 1]
    assert F.accuracy(logits, torch.tensor([0, 0, 1, 1])).item() == 0.5
    # a sequence model's (N, T, V) logits, classes last
    seq = torch.zeros(2, 3, 4)
    seq[..., 2] = 1.0
    seq[0, 1, 2] = float("nan")
    assert F.count_correct(seq, torch.full((2, 3), 2)) == (torch.tensor(5), torch.tensor(6))


def test_a_batch_of_nothing_but_nan_scores_has_no_accuracy() -> None:
    nan = torch.full((6, 3), float("nan"))
    assert torch.isnan(F.accuracy(nan, torch.zeros(6, dtype=torch.long)))
    assert torch.isnan(F.accuracy(torch.full((4,), float("nan")), torch.tensor([0, 1, 0, 1])))
    # ignored targets still count as nothing to count
    assert F.accuracy(nan, torch.full((6,), -100)).item() == 0.0
