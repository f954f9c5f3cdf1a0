"""torchvision's downloadable data sets, read from the files torchvision downloads.

:func:`load_torchvision` reads MNIST, Fashion-MNIST and CIFAR-10 in torchvision's directory
layout. The files are parsed here (:func:`read_idx`, :func:`read_cifar_batches`), so reading
needs no torchvision; only ``download=True`` does (torchvision fetches the files and checks
their MD5 sums). Nothing is downloaded unless asked for.
"""

from __future__ import annotations

import gzip
import logging
import math
import pickle
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "TORCHVISION_SETS",
    "NormalizedImages",
    "load_torchvision",
    "read_cifar_batches",
    "read_idx",
    "read_mnist_raw",
]

logger = logging.getLogger(__name__)


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
        try:
            return gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as error:  # truncated, or a bad checksum
            raise ValueError(
                f"Expected {path} to be a whole gzip file but it is damaged "
                f"({type(error).__name__}: {error}); download it again"
            ) from error
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


#: How many of a directory's entries a missing-file error names.
_SHOWN = 8


def _found_in(directory: Path) -> str:
    """What ``directory`` holds, for an error about files missing there: whether it exists,
    and its first :data:`_SHOWN` entries by name (sub-directories with a trailing ``/``).

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     print(_found_in(Path(d)))
        ...     _ = Path(d, "train-images-idx3-ubyte.zip").write_bytes(b"")
        ...     Path(d, "extracted").mkdir()
        ...     print(_found_in(Path(d)))
        it is empty
        it holds extracted/, train-images-idx3-ubyte.zip
        >>> print(_found_in(Path("/no/such/directory")))
        it does not exist
    """
    if not directory.exists():
        return "it does not exist"
    if not directory.is_dir():
        return "it is a file, not a directory"
    try:
        entries = sorted(directory.iterdir(), key=lambda e: e.name)
    except OSError as error:
        return f"it cannot be listed ({error.strerror or error})"
    if not entries:
        return "it is empty"
    names = [f"{e.name}/" if e.is_dir() else e.name for e in entries[:_SHOWN]]
    more = len(entries) - len(names)
    return f"it holds {', '.join(names)}" + (f" and {more} more" if more else "")


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
            f"Expected the MNIST-format files {', '.join(missing)} (or their .gz) in {raw} "
            f"but {_found_in(raw)}"
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
        if labels.dtype != torch.uint8:  # (a float label would be truncated to a class)
            raise ValueError(f"Expected uint8 labels in {labels_path} but got {labels.dtype}")
        _check_labels(labels, labels_path)
        splits[split] = (images.unsqueeze(1), labels.long())
    sizes = {split: tuple(images.shape[2:]) for split, (images, _) in splits.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"Expected the train and test images in {raw} of one size but got {sizes}")
    return splits


#: The number of classes of the data sets read here (labels 0 to 9).
CLASSES = 10


def _check_labels(labels: torch.Tensor | np.ndarray, path: Path) -> None:
    """Refuse labels outside 0..CLASSES-1 where the file is read, not at the first loss."""
    labels = torch.as_tensor(labels)
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= CLASSES):
        raise ValueError(
            f"Expected labels 0 to {CLASSES - 1} in {path} but got labels from "
            f"{int(labels.min())} to {int(labels.max())}"
        )


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
            f"Expected the CIFAR-10 batches {', '.join(missing)} in {directory} "
            f"but {_found_in(directory)}"
        )
    images, labels = [], []
    for name in names:
        path = directory / name
        with open(path, "rb") as f:
            try:
                batch = pickle.load(f, encoding="latin1")
            except (pickle.UnpicklingError, EOFError, ValueError) as error:
                raise ValueError(
                    f"Expected {path} to be a whole CIFAR-10 python batch but it is damaged "
                    f"({type(error).__name__}: {error}); download it again"
                ) from error
        try:
            raw = np.asarray(_entry(batch, "data"))
            targets = np.asarray(_entry(batch, "labels"))
        except (KeyError, TypeError):
            raise ValueError(f"Expected {path} to hold a dict with 'data' and 'labels'") from None
        if raw.dtype != np.uint8:  # (a cast would wrap 300 to 44, or floor scaled pixels)
            raise ValueError(f"Expected uint8 'data' in {path} but got {raw.dtype}")
        if targets.dtype.kind not in "iu":
            raise ValueError(f"Expected integer 'labels' in {path} but got {targets.dtype}")
        data, targets = raw, targets.astype(np.int64)
        _check_labels(targets, path)
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
