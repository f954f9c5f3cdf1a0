"""The shared reduction of one layer's activations, against the separate functions and against
textbook formulas in NumPy (the reference SVCCA, Kornblith's kernel form of CKA, the standard
deviation of each column)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ikkuna_tune.functional.cka import cka_side, linear_cka_of_sides, live_fraction
from ikkuna_tune.functional.layer_reduction import reduce_layer
from ikkuna_tune.functional.svcca import kept_basis, similarity_of_bases
from tests.functional.test_cka import _kernel_cka
from tests.svcca_reference import subspace_svcca


def _layer(n: int, p: int, seed: int, dead: int = 0, dtype: torch.dtype = torch.float32):
    """ReLU activations of a random layer, ``dead`` of its features constant."""
    g = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(n, p, generator=g) @ torch.randn(p, p, generator=g) + 0.3)
    if dead:
        x[:, :dead] = 0.5
    return x.to(dtype)


@pytest.mark.parametrize("slice_kept", [True, False])
@pytest.mark.parametrize(
    ("n", "p", "dead", "keep"),
    [
        (300, 40, 0, 0.99),
        (300, 40, 7, 0.99),
        (30, 60, 5, 0.99),  # fewer rows than features: the other Gram matrix
        (200, 12, 3, 1 - 1e-9),  # too close to 1 for the Gram route: from a QR
    ],
)
def test_the_three_results_match_the_separate_functions_and_the_textbook(
    n: int, p: int, dead: int, keep: float, slice_kept: bool
) -> None:
    x = _layer(n, p, seed=n + p, dead=dead)
    y = _layer(n, p, seed=n + p + 1)
    shared = reduce_layer(x, keep, slice_kept=slice_kept)
    separate = kept_basis(x, keep, slice_kept=slice_kept)
    other = kept_basis(y, keep, slice_kept=slice_kept)
    assert int(shared.basis.count) == int(separate.count)
    got = float(similarity_of_bases(shared.basis, other))
    assert got == pytest.approx(float(similarity_of_bases(separate, other)), abs=1e-10)
    if keep < 0.999:  # the textbook SVCCA (an SVD of each side; the principal angles)
        reference = subspace_svcca(x.double().numpy(), y.double().numpy(), keep)
        assert got == pytest.approx(reference, abs=1e-6)
    cka = float(linear_cka_of_sides(shared.cka, cka_side(y)))
    assert cka == pytest.approx(float(linear_cka_of_sides(cka_side(x), cka_side(y))), abs=1e-12)
    assert cka == pytest.approx(_kernel_cka(x.double().numpy(), y.double().numpy()), abs=1e-9)
    # live: a column's standard deviation above 1e-6 of the largest magnitude
    xs = x.double().numpy()
    expected = float(np.mean(xs.std(axis=0, ddof=1) > 1e-6 * np.abs(xs).max()))
    assert float(shared.live) == float(live_fraction(x)) == pytest.approx(expected)
    assert float(shared.live) == pytest.approx((p - dead) / p)


def test_a_constant_column_holding_the_largest_magnitude_sets_the_live_threshold() -> None:
    # the column at 1000 is left out of the centring's divisor; the live rule still measures
    # against it, as live_fraction does: a spread of 1e-4 is below 1e-6 * 1000
    g = torch.Generator().manual_seed(0)
    x = torch.cat(
        [
            torch.full((100, 1), 1000.0, dtype=torch.float64),
            1e-4 * torch.randn(100, 2, generator=g, dtype=torch.float64),
            torch.randn(100, 3, generator=g, dtype=torch.float64),
        ],
        dim=1,
    )
    assert float(reduce_layer(x).live) == float(live_fraction(x)) == 0.5
    assert float(reduce_layer(x, rtol=1e-9).live) == float(live_fraction(x, 1e-9)) == 5 / 6


def test_a_side_that_does_not_vary_and_a_side_that_is_not_finite() -> None:
    y = _layer(50, 4, seed=1)
    flat = reduce_layer(torch.ones(50, 4))
    assert flat.basis.basis is None and int(flat.basis.count) == 0
    assert float(similarity_of_bases(flat.basis, kept_basis(y))) == 0.0
    assert float(linear_cka_of_sides(flat.cka, cka_side(y))) == 0.0
    assert float(flat.live) == 0.0
    bad = y.clone()
    bad[3, 2] = math.nan
    broken = reduce_layer(bad)
    assert math.isnan(float(similarity_of_bases(broken.basis, kept_basis(y))))
    assert math.isnan(float(linear_cka_of_sides(broken.cka, cka_side(y))))
    assert math.isnan(float(broken.live)) and math.isnan(float(live_fraction(bad)))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((torch.ones(5),), r"matrix with >= 2 rows.*got shape \(5,\)"),
        ((torch.ones(1, 3),), r"got shape \(1, 3\)"),
        ((torch.randn(5, 2), 1.0), "keep"),
        ((torch.randn(5, 2), 0.0), "keep"),
        ((torch.randn(5, 2), 0.99, 1.5), r"`rtol` in \[0, 1\) but got 1.5"),
    ],
)
def test_bad_input_is_refused(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        reduce_layer(*args)
