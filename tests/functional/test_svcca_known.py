"""CCA and SVCCA on degenerate inputs whose answers are known exactly by construction.

Every case is checked through the public functions (NumPy and torch input) and through the
masked form that runs on GPUs (``_svcca(..., slice_kept=False)``); the comment of each case says
why its answer is what it is.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ikkuna_tune import functional as F
from ikkuna_tune.functional.svcca import _svcca, svcca_similarity_or_nan

KEEPS = (0.99, 1.0)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _check(x: np.ndarray, y: np.ndarray, rho: np.ndarray, svcca: float, atol: float) -> None:
    """``cca(x, y) == rho`` and ``svcca_similarity(x, y, keep) == svcca`` for every keep, for
    NumPy and torch input, and the masked and NaN-checking forms agree."""
    for a, b in [(x, y), (torch.from_numpy(x), torch.from_numpy(y))]:
        got = np.asarray(F.cca(a, b))
        assert got.shape == rho.shape
        np.testing.assert_allclose(got, rho, rtol=0, atol=atol)
        for keep in KEEPS:
            assert float(F.svcca_similarity(a, b, keep)) == pytest.approx(svcca, abs=atol)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    for keep in KEEPS:
        for slice_kept in (True, False):
            value = _svcca(tx, ty, keep, slice_kept=slice_kept).item()
            assert value == pytest.approx(svcca, abs=atol)
        assert svcca_similarity_or_nan(tx, ty, keep).item() == pytest.approx(svcca, abs=atol)


def _low_rank(n: int, rank: int, p: int, seed: int) -> np.ndarray:
    rng = _rng(seed)
    return rng.standard_normal((n, rank)) @ rng.standard_normal((rank, p)) + 3.0


# ---------------------------------------------------------------------------- constant sides
@pytest.mark.parametrize("side", [0, 1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_constant_side_has_no_correlation_and_similarity_zero(side, dtype) -> None:
    # a constant (all-dead) layer centres to the zero matrix: it spans no direction, so there
    # is no canonical correlation at all and nothing is shared
    live = _rng(1).standard_normal((50, 4)).astype(dtype)
    dead = np.tile(np.array([0.0, 1.0, -3.5, 1e4], dtype=dtype), (50, 1))
    x, y = [(dead, live), (live, dead), (dead, dead)][side]
    _check(x, y, np.zeros(0), 0.0, atol=0.0)


# ---------------------------------------------------------------------- copies of one matrix
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_rank_deficient_matrix_is_fully_similar_to_itself(dtype) -> None:
    # rank 3 in 40 columns: exactly 3 directions (the other 37 are zero or rounding), each
    # shared with itself, so 3 correlations of 1 and a mean of 1 whatever is kept
    x = _low_rank(300, 3, 40, seed=2).astype(dtype)
    _check(x, x.copy(), np.ones(3), 1.0, atol=1e-6)


def test_a_copy_under_an_invertible_map_has_all_correlations_one() -> None:
    # y = x M with M invertible has the column space of x: every correlation is 1 (CCA sees
    # spans only); keep = 1 keeps every direction, so SVCCA is 1 too. (With keep < 1 a
    # non-orthogonal M reweighs the directions and SVCCA need not be 1: not asserted here.)
    rng = _rng(3)
    x = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6))
    m = rng.standard_normal((6, 6)) * np.logspace(-2, 2, 6)  # condition number ~1e4
    y = x @ m
    np.testing.assert_allclose(F.cca(x, y), np.ones(6), rtol=0, atol=1e-8)
    assert F.svcca_similarity(x, y, keep=1.0) == pytest.approx(1.0, abs=1e-8)
    # the same holds for a rank-deficient x: its 2 directions, mapped, span the same plane
    low = _low_rank(400, 2, 6, seed=4)
    np.testing.assert_allclose(F.cca(low, low @ m), np.ones(2), rtol=0, atol=1e-8)
    assert F.svcca_similarity(low, low @ m, keep=1.0) == pytest.approx(1.0, abs=1e-8)


def test_an_orthogonal_map_times_a_scale_keeps_every_similarity_one() -> None:
    # y = c x Q (Q orthogonal) has the singular values of x times c and the same left singular
    # vectors, so the kept leading subspaces coincide for every keep: SVCCA 1
    x = _rng(5).standard_normal((300, 8)) * np.linspace(1, 8, 8)
    q, _ = np.linalg.qr(_rng(6).standard_normal((8, 8)))
    _check(x, 1e-3 * x @ q, np.ones(8), 1.0, atol=1e-8)


# --------------------------------------------------------------------------- duplicated columns
def test_a_matrix_beside_itself_is_the_matrix() -> None:
    # [x, x] = x [I, I]: its singular values are sqrt(2) times those of x, with the same left
    # singular vectors, so for every keep the kept subspaces are those of x
    x = _rng(7).standard_normal((200, 5)) * np.linspace(1, 10, 5)
    _check(x, np.hstack([x, x]), np.ones(5), 1.0, atol=1e-8)


def test_duplicated_columns_add_no_correlation() -> None:
    # a duplicated neuron adds no direction: x and [x, x_0, x_3, x_3] span the same space
    x = _rng(8).standard_normal((200, 5))
    y = np.hstack([x, x[:, [0, 3, 3]]])
    np.testing.assert_allclose(F.cca(x, y), np.ones(5), rtol=0, atol=1e-8)
    assert F.svcca_similarity(x, y, keep=1.0) == pytest.approx(1.0, abs=1e-8)
    # against an unrelated matrix the duplicates leave the correlations unchanged
    z = _rng(9).standard_normal((200, 4))
    np.testing.assert_allclose(F.cca(y, z), F.cca(x, z), rtol=0, atol=1e-8)


# --------------------------------------------------------------------- one or two directions
@pytest.mark.parametrize("n", [5, 10, 40])
def test_matrices_varying_at_single_samples_correlate_as_indicator_vectors(n) -> None:
    # every column of x is a multiple of e_0 and every column of y of e_1: centred, each side
    # spans one direction, e_i - 1/n; the cosine between them is (-1/n) / (1 - 1/n), so the one
    # correlation is 1/(n-1); with y also varying only at sample 0 it is 1
    x = np.zeros((n, 3))
    x[0] = [1.0, 2.0, -1.0]
    y = np.zeros((n, 2))
    y[1] = [5.0, 0.5]
    _check(x, y, np.array([1 / (n - 1)]), 1 / (n - 1), atol=1e-12)
    same = np.zeros((n, 2))
    same[0] = [-7.0, 3.0]
    _check(x, same, np.ones(1), 1.0, atol=1e-12)


def test_two_samples_always_correlate_fully() -> None:
    # two centred samples span one direction, (1, -1)/sqrt(2), shared by any non-constant sides
    rng = _rng(10)
    _check(rng.standard_normal((2, 4)), rng.standard_normal((2, 3)), np.ones(1), 1.0, atol=1e-12)


# ------------------------------------------------------------------------ orthogonal spaces
def _orthonormal_beside_ones(n: int, k: int, seed: int) -> np.ndarray:
    """k orthonormal columns, each orthogonal to the all-ones vector (centring changes nothing)."""
    q, _ = np.linalg.qr(np.hstack([np.ones((n, 1)), _rng(seed).standard_normal((n, k))]))
    return q[:, 1:]


def test_orthogonal_column_spaces_have_all_correlations_zero() -> None:
    # span(x) and span(y) are orthogonal: every principal angle is 90 degrees
    q = _orthonormal_beside_ones(300, 7, seed=11)
    rng = _rng(12)
    x = q[:, :4] @ rng.standard_normal((4, 4)) + 2.0
    y = q[:, 4:] @ rng.standard_normal((3, 3)) - 1.0
    _check(x, y, np.zeros(3), 0.0, atol=1e-8)


def test_a_shared_plane_beside_orthogonal_directions() -> None:
    # y shares a 2-dimensional subspace with x and adds directions orthogonal to all of x:
    # correlations 1, 1 and 0 for the rest (keep = 1: the mean over min(4, 5) = 4 correlations)
    q = _orthonormal_beside_ones(300, 7, seed=13)
    rng = _rng(14)
    x = q[:, :4] @ rng.standard_normal((4, 4))
    y = np.hstack([q[:, :2] @ rng.standard_normal((2, 2)), q[:, 4:]])
    np.testing.assert_allclose(F.cca(x, y), [1.0, 1.0, 0.0, 0.0], rtol=0, atol=1e-8)
    assert F.svcca_similarity(x, y, keep=1.0) == pytest.approx(0.5, abs=1e-8)
