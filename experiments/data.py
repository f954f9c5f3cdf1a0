"""The experiments' data sets, defined in :mod:`ikkuna_tune.examples.data`."""

from ikkuna_tune.examples.data import (
    TORCHVISION_SETS,
    NormalizedImages,
    load_dataset,
    load_digits,
    load_mnist_subset,
    load_torchvision,
    read_cifar_batches,
    read_idx,
    read_mnist_raw,
)

__all__ = [
    "TORCHVISION_SETS",
    "NormalizedImages",
    "load_dataset",
    "load_digits",
    "load_mnist_subset",
    "load_torchvision",
    "read_cifar_batches",
    "read_idx",
    "read_mnist_raw",
]
