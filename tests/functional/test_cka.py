"""Linear CKA and the share of live features, against textbook formulas in NumPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ikkuna_tune.functional.cka import cka_side, linear_cka, linear_cka_of_sides, live_fraction


def _kernel_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al.'s HSIC form with linear kernels: ``tr(K H L H)`` normalised, where
    ``K = X X^T``, ``L = Y Y^T`` and ``H`` the centring matrix."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float(np.sum(k * l_) / math.sqrt(np.sum(k * k) * np.sum(l_ * l_)))


@pytest.mark.parametrize("shape", [(200, 7, 5), (30, 50, 40), (40, 3, 90)])
def test_linear_cka_matches_the_kernel_form(shape) -> None:
    n, p, q = shape
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal((n, p)) + 2.0
    y = np.tanh(x @ rng.standard_normal((p, q))) + 0.3 * rng.standard_normal((n, q))
    expected = _kernel_cka(x, y)
    got = linear_cka(torch.from_numpy(x), torch.from_numpy(y).float())
    assert got.dtype == torch.float64 and got.shape == ()
    assert float(got) == pytest.approx(expected, abs=1e-6)  # y in float32
    # a side prepared once and paired with several others gives the same values
    side = cka_side(torch.from_numpy(x))
    for other in (y, 2.0 * y, y[:, ::-1].copy()):
        paired = linear_cka_of_sides(cka_side(torch.from_numpy(other)), side)
        assert float(paired) == pytest.approx(_kernel_cka(other, x), abs=1e-12)


def test_linear_cka_is_invariant_to_rotation_and_scale_but_not_to_any_linear_map() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 6))
    rotation, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    stretch = np.diag([1.0, 1.0, 1.0, 1.0, 1.0, 20.0])
    t = torch.from_numpy
    assert float(linear_cka(t(x), t(5.0 * x @ rotation))) == pytest.approx(1.0, abs=1e-12)
    assert float(linear_cka(t(x), t(x @ stretch))) < 0.5


def test_constant_side_gives_zero_and_non_finite_gives_nan() -> None:
    x = torch.randn(50, 4, dtype=torch.float64)
    assert float(linear_cka(x, torch.ones(50, 3))) == 0.0
    bad = x.clone()
    bad[7, 1] = math.inf
    assert math.isnan(float(linear_cka(bad, x)))
    assert math.isnan(float(linear_cka_of_sides(cka_side(x), cka_side(bad))))


def test_mismatched_rows_are_refused() -> None:
    with pytest.raises(ValueError, match="same number"):
        linear_cka_of_sides(cka_side(torch.randn(10, 3)), cka_side(torch.randn(11, 3)))
    with pytest.raises(ValueError, match=r"got shape \(1, 3\)"):
        cka_side(torch.randn(1, 3))


def test_live_fraction_counts_the_columns_that_vary() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((40, 10))
    x[:, [1, 4, 5]] = 0.7  # dead
    x[:, 8] = 3.0 + 1e-9 * rng.standard_normal(40)  # varies far below rtol of the largest value
    expected = np.mean(x.std(axis=0, ddof=1) > 1e-6 * np.abs(x).max())
    assert float(live_fraction(torch.from_numpy(x))) == pytest.approx(expected)
    assert expected == pytest.approx(0.6)


def test_a_constant_float64_side_gives_zero() -> None:
    """A float64 column's mean need not round back to its value; the residue of centring must
    not make a constant side look like a representation (CKA 1 against itself)."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        dead = torch.from_numpy(np.tile(rng.standard_normal(4), (200, 1)))
        assert float(linear_cka(dead, dead)) == 0.0
        assert float(linear_cka(dead, 2 * dead + 1)) == 0.0


@pytest.mark.parametrize("scale", [1e120, 1e-120])
def test_extreme_magnitudes_give_the_value_of_ordinary_ones(scale: float) -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((60, 5))
    y = np.tanh(x @ rng.standard_normal((5, 4)))
    expected = _kernel_cka(x, y)
    got = linear_cka(torch.from_numpy(scale * x), torch.from_numpy(y))
    assert float(got) == pytest.approx(expected, abs=1e-12)
