"""experiments.layer_convergence: the convergence analysis against plain recomputations, and a
quick end-to-end run on scikit-learn's digits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import kendalltau

from experiments import layer_convergence as lc
from tests.experiments.fake_datasets import fake_mnist


# ------------------------------------------------------------------------------ analysis
def test_convergence_epoch() -> None:
    series = [(1, 0.5), (2, 0.995), (3, 0.98), (4, 0.991), (5, 0.999), (6, 0.992)]
    assert lc.convergence_epoch(series, 0.99) == 2
    assert lc.convergence_epoch(series, 0.99, patience=2) == 4
    assert lc.convergence_epoch(series, 0.99, patience=3) == 4
    assert lc.convergence_epoch(series, 0.99, patience=4) is None
    assert lc.convergence_epoch(series, 0.9999) is None
    assert lc.convergence_epoch([], 0.9) is None
    assert lc.convergence_epoch([(1, None), (2, math.nan), (3, 1.0)], 0.9) == 3
    with pytest.raises(ValueError, match="`patience` to be a positive integer but got 0"):
        lc.convergence_epoch(series, 0.99, patience=0)


def test_kendall_tau_b_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 9))
        x = rng.integers(0, 4, n).tolist()  # ties on both sides
        y = rng.integers(0, 4, n).tolist()
        expected = kendalltau(x, y).statistic
        got = lc.kendall_tau_b(x, y)
        if math.isnan(expected):
            assert got is None
        else:
            assert got == pytest.approx(expected)
    assert lc.kendall_tau_b([1], [2]) is None
    with pytest.raises(ValueError, match="equal length but got 2 and 3"):
        lc.kendall_tau_b([1, 2], [1, 2, 3])


def test_order_agreement() -> None:
    layers = ["a", "b", "c", "d"]
    assert lc.order_agreement(layers, {"a": 1, "b": 2, "c": None, "d": None}) == pytest.approx(
        kendalltau([0, 1, 2, 3], [1, 2, 99, 99]).statistic
    )
    assert lc.order_agreement(layers, {"a": 4, "b": 3, "c": 2, "d": 1}) == pytest.approx(-1)
    assert lc.order_agreement(layers, dict.fromkeys(layers)) is None
    assert lc.order_agreement(layers, dict.fromkeys(layers, 2)) is None


def test_summarize_by_lr() -> None:
    def run(lr: float, tau: float | None, epochs: dict, accuracy: float) -> dict:
        first = None if tau is None else tau > 0
        return {
            "lr": lr,
            "kendall_tau": tau,
            "input_side_first": first,
            "convergence_epoch": epochs,
            "test_accuracy": accuracy,
        }

    runs = [
        run(0.1, 0.5, {"a": 1, "b": 3}, 0.9),
        run(0.1, None, {"a": None, "b": None}, 0.5),
        run(0.01, -1.0, {"a": 4, "b": 2}, 0.7),
    ]
    summary = lc.summarize(runs)
    assert summary["input_side_first_fraction"] == 0.5
    low, high = summary["by_lr"]
    assert low == {
        "lr": 0.01,
        "input_side_first_fraction": 0.0,
        "mean_kendall_tau": -1.0,
        "converged_fraction": 1.0,
        "mean_convergence_epoch": 3.0,
        "mean_test_accuracy": 0.7,
    }
    assert high["input_side_first_fraction"] == 1.0
    assert high["converged_fraction"] == 0.5
    assert high["mean_convergence_epoch"] == 2.0
    assert high["mean_test_accuracy"] == pytest.approx(0.7)


def test_rejects() -> None:
    with pytest.raises(ValueError, match="a model in .* but got 'vit'"):
        lc.build_model("vit", (1, 8, 8))
    with pytest.raises(ValueError, match="a data set in .* but got 'svhn'"):
        lc.load_data("svhn")
    with pytest.raises(SystemExit):
        lc.main(["--threshold", "1.5"])
    with pytest.raises(SystemExit):
        lc.main(["--data", "torchvision:mnist"])  # no --root


# ---------------------------------------------------------------------------- end to end
def test_quick_run_is_consistent(caplog: pytest.LogCaptureFixture) -> None:
    epochs, threshold = 3, 0.98
    argv = ["--quick", "--models", "mlp", "cnn", "--lrs", "0.1", "--epochs", str(epochs)]
    argv += [
        "--threshold",
        str(threshold),
        "--probe",
        "100",
        "--max-positions",
        "500",
        "--limit",
        "800",
    ]
    with caplog.at_level("INFO", logger="layer_convergence"):
        result = lc.main(argv)
    json.dumps(result, allow_nan=False)  # the printed last line is strict JSON
    assert result["settings"]["threshold"] == threshold
    assert [(r["model"], r["lr"]) for r in result["runs"]] == [("mlp", 0.1), ("cnn", 0.1)]
    assert result["runs"][0]["layers"] == ["fc1", "fc2", "fc3"]
    assert result["runs"][1]["layers"] == ["conv1", "conv2", "fc1", "fc2"]
    flags = []
    for run in result["runs"]:
        assert set(run["convergence_epoch"]) == set(run["layers"]) == set(run["self_similarity"])
        for layer, series in run["self_similarity"].items():
            # epoch 0 only records; every later epoch end compares with the one before
            assert [epoch for epoch, _ in series] == list(range(1, epochs))
            assert all(0 <= v <= 1 + 1e-9 for _, v in series)
            first = next((e for e, v in series if v >= threshold), None)
            assert run["convergence_epoch"][layer] == first
        never = epochs  # later than any recorded epoch
        converged = [run["convergence_epoch"][n] for n in run["layers"]]
        expected = kendalltau(
            range(len(converged)), [never if e is None else e for e in converged]
        ).statistic
        if math.isnan(expected):
            assert run["kendall_tau"] is None and run["input_side_first"] is None
        else:
            assert run["kendall_tau"] == pytest.approx(expected)
            assert run["input_side_first"] == (expected > 0)
            flags.append(expected > 0)
        assert 0.2 < run["test_accuracy"] <= 1  # chance is 0.1
    fraction = result["input_side_first_fraction"]
    assert fraction == (sum(flags) / len(flags) if flags else None)
    assert "conv1" in caplog.text and "input side first in" in caplog.text


def test_runs_on_torchvision_files(tmp_path: Path) -> None:
    fake_mnist(tmp_path / "FashionMNIST" / "raw", n_train=48, n_test=24)
    argv = ["--data", "torchvision:fashion_mnist", "--root", str(tmp_path), "--models", "mlp"]
    result = lc.main([*argv, "--lrs", "0.05", "--epochs", "2", "--probe", "24"])
    (run,) = result["runs"]
    assert result["settings"]["data"] == "torchvision:fashion_mnist"
    assert run["layers"] == ["fc1", "fc2", "fc3"]
    assert all(len(series) == 1 for series in run["self_similarity"].values())
