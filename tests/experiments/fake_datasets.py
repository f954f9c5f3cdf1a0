"""Small data set files in the formats torchvision downloads, written for tests."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

# IDX type code and big-endian dtype, as the format's description lists them
IDX_CODES = [(0x08, "u1"), (0x09, "i1"), (0x0B, ">i2"), (0x0C, ">i4"), (0x0D, ">f4"), (0x0E, ">f8")]


def write_idx(path: Path, array: np.ndarray, code: int, compress: bool = False) -> Path:
    """The IDX layout spelled out: 0, 0, type code, ndim, the dims as big-endian uint32, data."""
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    dtype = dict(IDX_CODES)[code]
    payload = header + array.astype(dtype).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def fake_mnist(
    raw: Path, n_train: int = 6, n_test: int = 3, side: int = 28, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MNIST-format files in ``raw``: train files gzipped, test files plain (both occur)."""
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        "train": (rng.integers(0, 256, (n_train, side, side)), rng.integers(0, 10, n_train)),
        "test": (rng.integers(0, 256, (n_test, side, side)), rng.integers(0, 10, n_test)),
    }
    images, labels = arrays["train"]
    write_idx(raw / "train-images-idx3-ubyte.gz", images, 0x08, compress=True)
    write_idx(raw / "train-labels-idx1-ubyte.gz", labels, 0x08, compress=True)
    images, labels = arrays["test"]
    write_idx(raw / "t10k-images-idx3-ubyte", images, 0x08)
    write_idx(raw / "t10k-labels-idx1-ubyte", labels, 0x08)
    return arrays


def fake_cifar(
    directory: Path, per_batch: int = 2, seed: int = 0
) -> dict[str, tuple[np.ndarray, list[int]]]:
    """CIFAR-10 python batches of ``per_batch`` images; data_batch_1, 3 and 5 with bytes keys
    (as pickle.load(encoding='bytes') shows the official files), the others with str keys."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        data = rng.integers(0, 256, (per_batch, 3072)).astype(np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        if i % 2:
            batch = {"data": data, "labels": labels, "batch_label": name}
        else:
            batch = {b"data": data, b"labels": labels, b"batch_label": name.encode()}
        with open(directory / name, "wb") as f:
            pickle.dump(batch, f)
        written[name] = (data, labels)
    return written
