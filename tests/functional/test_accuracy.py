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
