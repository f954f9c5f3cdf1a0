"""CCA and SVCCA against a textbook covariance-based CCA and against known invariances."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pytest
import torch

from ikkuna_tune import functional as F
from ikkuna_tune.functional import cca, svcca_similarity
from ikkuna_tune.functional.svcca import _svcca, svcca_similarity_or_nan
from tests.svcca_reference import subspace_cca, subspace_svcca, textbook_cca, textbook_svcca


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _related(n: int = 600, p: int = 8, q: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well-conditioned x and a noisy linear read-out y of it (correlations spread in (0, 1))."""
    rng = _rng(seed)
    x = rng.standard_normal((n, p)) @ rng.standard_normal((p, p)) + 3.0
    y = x @ rng.standard_normal((p, q)) + rng.standard_normal((n, q)) * np.linspace(0.5, 8, q)
    return x, y


def _orthogonal(p: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(_rng(seed).standard_normal((p, p)))
    return q


# ----------------------------------------------------------------------- textbook agreement
def test_cca_agrees_with_textbook_cca_on_well_conditioned_data() -> None:
    x, y = _related()
    ours = F.cca(torch.from_numpy(x), torch.from_numpy(y))
    expected = textbook_cca(x, y)
    assert ours.shape == (6,)
    assert ours.dtype == torch.float64
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-6)
    assert 0.05 < expected.min() and expected.max() < 0.999  # a non-trivial spread
    assert torch.all(ours[:-1] >= ours[1:])  # descending


def _known_angles(
    cosines: np.ndarray, spread: float, n: int = 400, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` whose canonical correlations are ``cosines`` by construction.

    Orthonormal ``Q_x`` and ``Q_perp`` (n x p each, orthogonal to the constant vector, so
    centring changes nothing) give ``y``'s column space the basis
    ``Q_x diag(c) + Q_perp diag(sqrt(1 - c^2))``: its principal angles to ``span(Q_x)`` have
    exactly the cosines ``c``. Both sides are then mixed by random maps whose singular values
    spread over ``spread`` (the ratio of the largest to the smallest).
    """
    rng = _rng(seed)
    p = len(cosines)
    u, _ = np.linalg.qr(np.hstack([np.ones((n, 1)), rng.standard_normal((n, 2 * p))]))
    qx, qperp = u[:, 1 : p + 1], u[:, p + 1 :]
    qy = qx * cosines + qperp * np.sqrt(1 - cosines**2)

    def mix(seed: int) -> np.ndarray:
        spectrum = np.geomspace(1.0, 1.0 / spread, p)
        return (_orthogonal(p, seed) * spectrum) @ _orthogonal(p, seed + 1)

    return qx @ mix(seed + 10), qy @ mix(seed + 20)


@pytest.mark.parametrize("spread", [1e3, 1e9])
def test_cca_finds_principal_angles_known_by_construction(spread: float) -> None:
    # a textbook covariance CCA would square the spread of 1e9 past what float64 resolves
    cosines = np.array([0.999, 0.9, 0.6, 0.3, 0.05])
    x, y = _known_angles(cosines, spread)
    np.testing.assert_allclose(F.cca(x, y), cosines, atol=1e-7)


@pytest.mark.parametrize("keep", [1.0, 0.99, 0.9, 0.6])
def test_svcca_agrees_withtextbook_svcca(keep) -> None:
    x, y = _related(p=12, q=10, seed=1)
    ours = F.svcca_similarity(torch.from_numpy(x), torch.from_numpy(y), keep=keep)
    assert ours.dim() == 0
    assert ours.item() == pytest.approx(textbook_svcca(x, y, keep), abs=1e-6)


def test_svcca_with_keep_one_is_the_mean_canonical_correlation() -> None:
    x, y = _related(seed=2)
    assert F.svcca_similarity(x, y, keep=1.0) == pytest.approx(textbook_cca(x, y).mean(), abs=1e-9)


def test_masked_and_sliced_kept_directions_agree() -> None:
    # the masked form is what runs on GPUs (no host synchronisation, dead neurons kept as zero
    # columns); check it here on the CPU, on plain and on ill-conditioned data
    for seed, keep, ill in [(3, 0.99, False), (4, 0.7, False), (5, 1.0, False), (6, 1.0, True)]:
        x, y = _related(p=10, q=7, seed=seed)
        if ill:
            x, y = _ill(x, seed), _ill(y, seed + 1)
        x, y = torch.from_numpy(x).double(), torch.from_numpy(y).double()
        sliced = _svcca(x, y, keep, slice_kept=True)
        masked = _svcca(x, y, keep, slice_kept=False)
        torch.testing.assert_close(masked, sliced, rtol=0, atol=1e-12)


def _wide_spectrum(n: int, p: int, decades: float, seed: int) -> np.ndarray:
    """Data whose singular values fall evenly (in log) over ``decades`` decades."""
    s = np.logspace(0, -decades, p)
    return (_orthogonal(n, seed)[:, :p] * s) @ _orthogonal(p, seed + 1) + 5.0


@pytest.mark.parametrize("keep", [0.99, 1 - 1e-6, 1 - 1e-10])
def test_per_side_reduction_matches_singular_vectors_from_lapack(keep) -> None:
    # keep < 1 reduces each side on its own, dividing by kept singular values; with a spectrum
    # over 8 decades and keep close to 1 small directions are kept, and the result must still
    # match the Bjorck-Golub formula on LAPACK's own left singular vectors
    x = _wide_spectrum(300, 20, 8, seed=20)
    y = x @ _rng(21).standard_normal((20, 15)) + 1e-3 * _rng(22).standard_normal((300, 15))

    def leading(a: np.ndarray) -> np.ndarray:
        u, s, _ = np.linalg.svd(a - a.mean(0), full_matrices=False)
        before = np.cumsum(s**2) - s**2
        return u[:, before < keep * np.sum(s**2)]

    ux, uy = leading(x), leading(y)
    expected = np.linalg.svd(ux.T @ uy, compute_uv=False).clip(0, 1).sum() / min(
        ux.shape[1], uy.shape[1]
    )
    assert F.svcca_similarity(x, y, keep=keep) == pytest.approx(expected, abs=1e-8)


def test_kept_basis_is_orthonormal_within_the_bound_of_keep() -> None:
    from ikkuna_tune.functional.cca import _centred
    from ikkuna_tune.functional.svcca import _kept_basis

    x = torch.from_numpy(_wide_spectrum(400, 30, 12, seed=23))
    for keep in (0.9, 0.99, 1 - 1e-8):
        centred, _, noise = _centred((x,), compact=True)
        basis, k = _kept_basis(centred, keep, slice_kept=True, noise=noise)
        assert basis.shape == (400, int(k))
        gram = basis.T @ basis
        # rounding amplified by at most sqrt(p / (1 - keep)) (the docstring's bound)
        tol = 1e-13 * math.sqrt(30 / (1 - keep))
        assert (gram - torch.eye(int(k), dtype=gram.dtype)).abs().max().item() < tol


def _spectrum(n: int, p: int, decades: float, seed: int) -> np.ndarray:
    """An (n, p) matrix of either shape whose singular values fall evenly (in log) over
    ``decades`` decades, plus an offset (centring removes it)."""
    r = min(n, p)
    u, v = _orthogonal(n, seed)[:, :r], _orthogonal(p, seed + 1)[:r]
    return (u * np.logspace(0, -decades, r)) @ v + 3.0


@pytest.mark.parametrize("shape", [(300, 20), (400, 128), (20, 30), (2000, 8)])
@pytest.mark.parametrize("slice_kept", [True, False])
def test_gram_and_qr_reductions_keep_the_same_directions(shape, slice_kept) -> None:
    """The eigendecomposition of the Gram matrix (taken where it resolves ``keep``) spans the
    subspace that the QR and SVD span, with as many directions, for both shapes of a side."""
    from ikkuna_tune.functional.cca import _centred
    from ikkuna_tune.functional.svcca import (
        _gram_resolves,
        _kept_basis_from_gram,
        _kept_basis_from_qr,
    )

    x = torch.from_numpy(_spectrum(*shape, decades=5, seed=sum(shape)))
    assert not _gram_resolves(shape, 1 - 1e-6)  # too close to 1: the QR route
    for keep in (0.5, 0.9, 0.99, 0.999 if min(shape) <= 64 else 0.99):
        assert _gram_resolves(shape, keep)
        projectors = []
        for reduce in (_kept_basis_from_gram, _kept_basis_from_qr):
            centred, _, noise = _centred((x,), compact=slice_kept)
            basis, count = reduce(centred, keep, slice_kept, noise)
            projectors.append((basis @ basis.T, int(count)))
        (gram, k_gram), (qr, k_qr) = projectors
        assert k_gram == k_qr > 0
        assert (gram - qr).abs().max().item() < 1e-9, keep


def test_gram_reduction_with_fewer_samples_than_features_matches_lapack() -> None:
    """A side with more features than samples (the Gram matrix of the samples is taken) gives
    the Bjorck-Golub formula on LAPACK's own leading left singular vectors."""
    x, y = _spectrum(40, 90, 4, seed=30), _spectrum(40, 70, 3, seed=33)

    def leading(a: np.ndarray) -> np.ndarray:
        u, s, _ = np.linalg.svd(a - a.mean(0), full_matrices=False)
        s = np.where(s > 1e-12 * s[0], s, 0.0)  # the direction of the removed mean
        before = np.cumsum(s**2) - s**2
        return u[:, (before < 0.99 * np.sum(s**2)) & (s > 0)]

    ux, uy = leading(x), leading(y)
    expected = np.linalg.svd(ux.T @ uy, compute_uv=False).clip(0, 1).sum()
    expected /= min(ux.shape[1], uy.shape[1])
    assert F.svcca_similarity(x, y, keep=0.99) == pytest.approx(expected, abs=1e-9)


def test_a_basis_close_to_1_and_extreme_scales_keep_similarity_one() -> None:
    """A side compared with itself or a rotation of it has similarity 1 to rounding:
    with ``keep`` so close to 1 that tiny directions are kept (the QR route then), and at
    magnitudes whose squares overflow or underflow float64."""
    x = (_orthogonal(10, 41)[:, :5] * np.logspace(0, -5, 5)) @ _orthogonal(5, 42)
    rotated = 3.0 * x @ _orthogonal(5, 44)  # the same spectrum: the same directions kept
    for keep in (1 - 8.3e-12, 1 - 1e-6, 0.99):
        assert F.svcca_similarity(x, x, keep) == pytest.approx(1.0, abs=1e-11), keep
        assert F.svcca_similarity(x, rotated, keep) == pytest.approx(1.0, abs=1e-9), keep
    y = _spectrum(300, 12, 3, seed=43)
    for scale in (1e160, 1e-160):
        assert F.svcca_similarity(scale * y, y, 0.99) == pytest.approx(1.0, abs=1e-12), scale
        assert F.svcca_similarity(scale * y, 2 * y, 0.9) == pytest.approx(1.0, abs=1e-12), scale


# ----------------------------------------------------------------------------- invariances
@pytest.mark.parametrize("scale", [1e-6, 0.5, 1e6])
def test_rotated_and_scaled_copy_has_similarity_one(scale) -> None:
    x, _ = _related(p=16, seed=6)
    rotated = scale * x @ _orthogonal(16, 7)
    for a, b in [(x, rotated), (rotated, x)]:
        assert F.svcca_similarity(a, b) == pytest.approx(1.0, abs=1e-9)
        np.testing.assert_allclose(F.cca(a, b), np.ones(16), rtol=0, atol=1e-9)


def test_similarity_to_another_matrix_is_unchanged_by_rotating_and_scaling_either_side() -> None:
    x, y = _related(p=10, q=9, seed=8)
    base = F.svcca_similarity(x, y)
    base_cca = F.cca(x, y)
    assert 0.2 < base < 0.99
    for a, b in [
        (3.0 * x @ _orthogonal(10, 9), y),
        (x, 1e-3 * y @ _orthogonal(9, 10)),
        (x @ _orthogonal(10, 11), 50.0 * y @ _orthogonal(9, 12)),
    ]:
        assert F.svcca_similarity(a, b) == pytest.approx(base, abs=1e-9)
        np.testing.assert_allclose(F.cca(a, b), base_cca, rtol=0, atol=1e-9)


def test_cca_is_invariant_to_any_invertible_map_of_the_features() -> None:
    x, y = _related(seed=13)
    mixed = x @ _rng(14).standard_normal((8, 8)) * np.logspace(-4, 4, 8)
    np.testing.assert_allclose(F.cca(mixed, y), F.cca(x, y), rtol=0, atol=1e-7)


def test_independent_random_matrices_give_a_small_value_shrinking_with_samples() -> None:
    values = []
    for n in (200, 2000, 20000):
        rng = _rng(n)
        x, y = rng.standard_normal((n, 10)), rng.standard_normal((n, 10))
        value = float(F.svcca_similarity(x, y))
        # for independent data the canonical correlations are of order sqrt(p / n)
        assert value < 3 * math.sqrt(10 / n)
        values.append(value)
    assert values[0] > values[1] > values[2]


# ---------------------------------------------------------------------- ill-conditioned data
def _ill(x: np.ndarray, seed: int) -> np.ndarray:
    """x (float32) with 30% extra dead neurons (constant, some large) and 20% duplicates."""
    rng = _rng(seed)
    n, p = x.shape
    dead = np.tile(rng.choice([0.0, 1.0, -3.5, 1e4], size=int(0.3 * p) + 1), (n, 1))
    dup = x[:, rng.choice(p, size=int(0.2 * p) + 1)]
    return rng.permutation(np.hstack([x, dead, dup]), axis=1).astype(np.float32)


def test_dead_and_duplicated_neurons_change_nothing() -> None:
    x, y = _related(p=10, q=8, seed=15)
    x, y = x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64)
    xi, yi = _ill(x, 16), _ill(y, 17)
    np.testing.assert_allclose(F.cca(xi, yi), F.cca(x, y), rtol=0, atol=1e-6)
    assert F.svcca_similarity(xi, yi, keep=1.0) == pytest.approx(
        F.svcca_similarity(x, y, keep=1.0), abs=1e-6
    )


@pytest.mark.parametrize("side", [0, 1])
def test_cca_with_duplicates_on_one_side_only(side) -> None:
    x, y = _related(p=10, q=8, seed=29)
    pair = [x, y]
    pair[side] = np.hstack([pair[side], pair[side][:, [0, 3, 3]]])  # rank-deficient side
    np.testing.assert_allclose(F.cca(*pair), textbook_cca(x, y), rtol=0, atol=1e-6)
    wide = [x[:9], y[:9]]  # fewer samples than features on the other side too
    wide[side] = np.hstack([wide[side], wide[side][:, :2]])
    assert np.all(F.cca(*wide) <= 1) and F.cca(*wide).shape == (8,)


def test_dead_neurons_do_not_correlate_spuriously() -> None:
    # two unrelated layers that both have a dead neuron: a constant column left over after
    # centring would be a shared direction and report a correlation of 1
    rng = _rng(18)
    x = np.hstack([rng.standard_normal((500, 5)), np.full((500, 1), 1e6)]).astype(np.float32)
    y = np.hstack([rng.standard_normal((500, 5)), np.full((500, 1), 0.1)]).astype(np.float32)
    rho = F.cca(x, y)
    assert rho.shape == (5,)
    assert rho.max() < 0.3


def _widening_layer(dtype: type, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``x`` (400, 12) and the outputs ``y = x w + b`` of a layer whose weight has rank 6, both
    computed in ``dtype``: ``y`` spans exactly 6 directions of span(x), plus rounding noise."""
    rng = _rng(41)
    x = rng.standard_normal((400, 12)).astype(dtype)
    w = (rng.standard_normal((12, 6)) @ rng.standard_normal((6, 24))).astype(dtype)
    b = (rng.standard_normal(24) + offset).astype(dtype)
    return x, x @ w + b


@pytest.mark.parametrize("slice_kept", [True, False])
def test_rank_deficient_float32_layer_has_the_rank_of_its_exact_values(slice_kept) -> None:
    # In float32 the rank-6 outputs have 18 more directions made of rounding noise (at about
    # 1e-7 of the signal); they are not part of span(x), so keeping them would report 12
    # correlations, 6 of them arbitrary (mean CCA 0.69 here instead of 1).
    x, y = _widening_layer(np.float32)
    rho = F.cca(x, y)
    assert rho.shape == (6,)
    np.testing.assert_allclose(rho, np.ones(6), atol=1e-6)
    value = _svcca(torch.from_numpy(x), torch.from_numpy(y), 1.0, slice_kept=slice_kept)
    assert value.item() == pytest.approx(1.0, abs=1e-6)
    # the same layer in float64 has its rounding noise far below the arithmetic's floor
    x64, y64 = _widening_layer(np.float64)
    np.testing.assert_allclose(F.cca(x64, y64), np.ones(6), atol=1e-9)


def test_float32_directions_well_above_its_rounding_are_kept() -> None:
    # a neuron that differs from another by 1e-4 of its scale is a real direction in float32
    # (its rounding is at 6e-8): the floor must not take it for noise
    rng = _rng(42)
    base = rng.standard_normal((500, 3))
    x = np.hstack([base, base[:, :1] + 1e-4 * rng.standard_normal((500, 1))]).astype(np.float32)
    y = x.astype(np.float64) @ _orthogonal(4, 43)
    rho = F.cca(x, y)
    assert rho.shape == (4,)
    np.testing.assert_allclose(rho, np.ones(4), atol=1e-6)


def test_rank_deficient_input_with_a_large_offset_is_not_given_rank_by_it() -> None:
    # float64 outputs 1e6 away from zero are known to about 1e-10 each; the directions that
    # rounding adds are as large relative to the centred data and must not count as rank
    x, y = _widening_layer(np.float64, offset=1e6)
    assert F.cca(x, y).shape == (6,)
    assert F.svcca_similarity(x, y, keep=1.0) == pytest.approx(1.0, abs=1e-6)
    x0, y0 = _widening_layer(np.float64)
    assert F.svcca_similarity(x, y, keep=0.99) == pytest.approx(
        F.svcca_similarity(x0, y0, keep=0.99), abs=1e-6
    )


def test_full_rank_certificate_never_contradicts_the_singular_values() -> None:
    from ikkuna_tune.functional.cca import _certainly_full_rank, _rank_mask

    rng = _rng(44)
    shape, floor = (1000, 40), torch.tensor(0.0, dtype=torch.float64)
    shown = 0
    for smallest in np.logspace(-16, -6, 41):
        # triangular factor of a matrix whose singular values run from 1 down to `smallest`
        a = _orthogonal(40, int(rng.integers(1 << 30))) * np.logspace(0, np.log10(smallest), 40)
        r = torch.from_numpy(np.linalg.qr(a @ _orthogonal(40, int(rng.integers(1 << 30))))[1])
        full = bool(_rank_mask(torch.linalg.svdvals(r), shape, floor).all())
        if _certainly_full_rank(r, shape, floor):
            shown += 1
            assert full, smallest
    # well-conditioned factors are shown full rank without an SVD
    assert shown >= 20
    singular = torch.triu(torch.ones(4, 4, dtype=torch.float64))
    singular[2, 2] = 0.0
    assert not _certainly_full_rank(singular, (10, 4), floor)


class _Known(NamedTuple):
    """An ill-conditioned pair and its known answers: the canonical correlations and the SVCCA
    value by ``keep`` (0.99 and 1.0)."""

    x: np.ndarray
    y: np.ndarray
    rho: np.ndarray
    svcca: dict[float, float]


def _ill_cases() -> dict[str, _Known]:
    rng = _rng(19)
    base = rng.standard_normal((300, 20))
    low_rank = rng.standard_normal((300, 3)) @ rng.standard_normal((3, 40))
    cases: dict[str, _Known] = {}

    other = np.tanh(base @ rng.random((20, 20)))
    x, y = _ill(base, 20), _ill(other, 21)
    clean = [a.astype(np.float32).astype(np.float64) for a in (base, other)]
    # dead columns centre to zero and duplicates add no direction: the column spaces, hence the
    # canonical correlations, are those of the clean (float32-rounded) matrices; with keep < 1
    # a duplicate weighs its direction twice in the variance, so the reduction is of x and y
    rho = textbook_cca(*clean)
    cases["dead_and_duplicated"] = _Known(
        x, y, rho, {0.99: subspace_svcca(x, y, 0.99), 1.0: rho.mean()}
    )

    # a constant side spans nothing once centred: no correlation at all, similarity 0
    cases["all_dead_one_side"] = _Known(
        np.full((300, 4), 2.0), base, np.zeros(0), {0.99: 0.0, 1.0: 0.0}
    )

    x, y = low_rank, low_rank + 1e-3 * rng.standard_normal((300, 40))
    # rank 3: three correlations, each of a direction of x lying within the 1e-3 noise of span(y)
    rho = subspace_cca(x, y)
    assert rho.shape == (3,) and rho.min() > 1 - 1e-6
    cases["rank_deficient"] = _Known(x, y, rho, {0.99: subspace_svcca(x, y), 1.0: rho.mean()})

    x, y = rng.standard_normal((30, 80)), rng.standard_normal((30, 50))
    # 30 centred samples span 29 dimensions and both sides fill them: 29 correlations of 1; kept
    # subspaces of k_x and k_y dimensions share at least k_x + k_y - 29 of them
    kept = subspace_svcca(x, y, 0.99)
    assert kept >= (28 + 27 - 29) / 27  # k_x = 28, k_y = 27 here
    cases["more_features_than_samples"] = _Known(x, y, np.ones(29), {0.99: kept, 1.0: 1.0})

    x, y = (base[:, :1] + 1e-6 * base[:, 1:]).astype(np.float32), base.astype(np.float32)
    # one direction holds all but 1e-13 of x's variance (keep 0.99 keeps it alone) and lies in
    # span(y); the 18 directions of size 1e-6 are ~8 float32 units in the last place, so they
    # count, each within the float32 rounding of span(y)
    rho = subspace_cca(x, y)
    assert rho.shape == (19,) and rho.min() > 0.999
    cases["float32_nearly_collinear"] = _Known(x, y, rho, {0.99: 1.0, 1.0: rho.mean()})

    # x is an affine map of y (scale and offset): every correlation is 1 (to the offset's
    # rounding, 1e-8 of the signal)
    cases["huge_offset_small_variance"] = _Known(
        1e5 + 1e-3 * base, base, np.ones(20), {0.99: 1.0, 1.0: 1.0}
    )

    x, y = np.maximum(base, 0), np.maximum(base @ rng.standard_normal((20, 20)), 0)
    # full column rank and well-conditioned: the textbook covariance route is exact here
    rho = textbook_cca(x, y)
    cases["relu_like"] = _Known(x, y, rho, {0.99: textbook_svcca(x, y, 0.99), 1.0: rho.mean()})
    return cases


@pytest.mark.parametrize("case", sorted(_ill_cases()))
@pytest.mark.parametrize("as_tensor", [False, True])
def test_ill_conditioned_input_gives_its_known_answer(case, as_tensor) -> None:
    known = _ill_cases()[case]
    x, y = known.x, known.y
    if as_tensor:
        x, y = torch.from_numpy(x), torch.from_numpy(y)
    for keep in (0.99, 1.0):
        assert float(F.svcca_similarity(x, y, keep=keep)) == pytest.approx(
            known.svcca[keep], abs=1e-6
        )
        # the masked form (what runs on GPUs, dead neurons kept as zero columns) agrees
        tx, ty = torch.as_tensor(known.x), torch.as_tensor(known.y)
        masked = _svcca(tx, ty, keep, slice_kept=False).item()
        assert masked == pytest.approx(known.svcca[keep], abs=1e-6)
    rho = np.asarray(F.cca(x, y))
    assert rho.shape == known.rho.shape
    np.testing.assert_allclose(rho, known.rho, rtol=0, atol=1e-6)


def test_no_variation_gives_zero_and_no_correlations() -> None:
    x = np.ones((10, 3))
    y = _rng(22).standard_normal((10, 2))
    assert F.svcca_similarity(x, y) == 0.0
    assert F.cca(x, y).shape == (0,)


def test_more_features_than_samples_correlate_fully_by_dimension_counting() -> None:
    # 20 centred samples span 19 dimensions; two 19-dimensional subspaces of them coincide
    rng = _rng(23)
    rho = F.cca(rng.standard_normal((20, 40)), rng.standard_normal((20, 30)))
    np.testing.assert_allclose(rho, np.ones(19), atol=1e-9)


# -------------------------------------------------------------------------- types and errors
def test_return_types() -> None:
    x, y = _related(seed=24)
    assert isinstance(F.svcca_similarity(x, y), np.float64)
    assert isinstance(F.cca(x, y), np.ndarray) and F.cca(x, y).dtype == np.float64
    tx = torch.from_numpy(x).float()
    for a, b in [(tx, y), (x, tx), (tx, tx)]:
        value = F.svcca_similarity(a, b)
        assert isinstance(value, torch.Tensor) and value.dim() == 0
        assert value.dtype == torch.float64 and value.device == tx.device
        assert F.cca(a, b).dtype == torch.float64
    # low-precision input is computed in float64 (the result is that of the rounded values);
    # the conversion happens while centring, on both the sliced and the masked path
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        low = torch.from_numpy(x).to(dtype)
        rounded = low.double().numpy()
        assert F.svcca_similarity(low, y).item() == pytest.approx(
            F.svcca_similarity(rounded, y), abs=1e-12
        )
        np.testing.assert_allclose(F.cca(low, y).numpy(), F.cca(rounded, y), atol=1e-12)
        yt = torch.from_numpy(y)
        for keep in (0.99, 1.0):
            masked = _svcca(low, yt, keep, slice_kept=False)
            assert masked.item() == pytest.approx(F.svcca_similarity(rounded, y, keep), abs=1e-12)


def test_exported_from_the_package() -> None:
    assert cca is F.cca
    assert svcca_similarity is F.svcca_similarity


@pytest.mark.parametrize("bad", [0, -0.5, 1.5, math.nan, True, "0.99", None])
def test_keep_must_be_in_unit_interval(bad) -> None:
    x, y = _related(seed=25)
    with pytest.raises(ValueError, match=r"`keep` to be a number in \(0, 1\] but got"):
        F.svcca_similarity(x, y, keep=bad)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("side", [0, 1])
def test_non_finite_input_raises(bad, side) -> None:
    xy = list(_related(seed=26))
    xy[side] = xy[side].copy()
    xy[side][3, 1] = bad
    name = "xy"[side]
    for fn in (F.cca, F.svcca_similarity):
        with pytest.raises(ValueError, match=f"`{name}` to hold finite values"):
            fn(*xy)
        with pytest.raises(ValueError, match=f"`{name}` to hold finite values"):
            fn(*(torch.from_numpy(a) for a in xy))


def test_mismatched_sample_counts_raise() -> None:
    x, y = _related(seed=27)
    for fn in (F.cca, F.svcca_similarity):
        with pytest.raises(ValueError, match="same number of samples .* got 600 and 599"):
            fn(x, y[:-1])


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.ones(5), r"matrix of shape \(n_samples, n_features\) but got shape \(5,\)"),
        (np.ones((5, 2, 2)), r"but got shape \(5, 2, 2\)"),
        (np.ones((1, 3)), "at least 2 samples"),
        (np.ones((5, 0)), "at least one feature"),
        ([[1.0, 2.0], [3.0, 4.0]], "torch.Tensor or a numpy.ndarray but got list"),
        (np.array([["a", "b"], ["c", "d"]]), "real numbers"),
        (torch.ones(5, 2, dtype=torch.complex64), "real numbers"),
    ],
)
def test_invalid_matrices_raise(x, match) -> None:
    y = np.ones((len(x), 2)) if len(x) else np.ones((5, 2))
    for fn in (F.cca, F.svcca_similarity):
        with pytest.raises(ValueError, match=match):
            fn(x, y)


def test_or_nan_variant_returns_nan_for_non_finite_and_agrees_otherwise() -> None:
    x, y = (torch.from_numpy(a).float() for a in _related(seed=28))
    torch.testing.assert_close(svcca_similarity_or_nan(x, y), F.svcca_similarity(x, y))
    y[0, 0] = math.inf
    assert math.isnan(svcca_similarity_or_nan(x, y).item())
    x[1, 1] = math.nan
    assert math.isnan(svcca_similarity_or_nan(y[:, :3], x).item())


@pytest.mark.parametrize(("dtype", "offset"), [(torch.bfloat16, 100.0), (torch.float16, 1000.0)])
def test_half_precision_with_a_large_offset_is_computed_as_its_float32_values(
    dtype, offset
) -> None:
    """Half-precision activations far from zero (mean ``offset``, std 1) keep their directions:
    a matrix is fully similar to itself, and the result is that of the same values in float32
    (converting them is exact)."""
    g = torch.Generator().manual_seed(31)
    z = (torch.randn(500, 20, generator=g) + offset).to(dtype)
    w = (z.float() @ torch.randn(20, 12, generator=g) / 5 + offset).to(dtype)
    up_z, up_w = z.float(), w.float()
    for keep in (0.99, 1.0):
        assert F.svcca_similarity(z, z, keep).item() == pytest.approx(1.0, abs=1e-3)
        assert svcca_similarity_or_nan(z, z, keep).item() == pytest.approx(1.0, abs=1e-3)
        for a, b in [(z, z), (z, w), (w, z)]:
            up_a, up_b = a.float(), b.float()
            expected = F.svcca_similarity(up_a, up_b, keep).item()
            assert F.svcca_similarity(a, b, keep).item() == pytest.approx(expected, abs=1e-12)
            masked = _svcca(a, b, keep, slice_kept=False).item()
            assert masked == pytest.approx(expected, abs=1e-12)
    rho = F.cca(z, z)
    np.testing.assert_allclose(rho.numpy(), np.ones(20), atol=1e-3)
    np.testing.assert_allclose(F.cca(z, w).numpy(), F.cca(up_z, up_w).numpy(), atol=1e-12)


# ------------------------------------------------------------------ one side at a time (reuse)
def _sides(seed: int) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    x, y = _related(n=300, p=12, q=10, seed=seed)
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    dead = yt.clone()
    dead[:, :4] = 0.5  # constant columns (dead neurons)
    wide = torch.from_numpy(_rng(seed).standard_normal((20, 30))).float()  # more features than n
    bad = xt.clone()
    bad[3, 2] = math.nan
    return [
        ("related", xt, yt),
        ("dead columns", xt, dead),
        ("constant side", xt, torch.ones_like(xt)),
        ("wide", wide, wide @ torch.randn(30, 30, generator=torch.Generator().manual_seed(1))),
        ("non-finite", bad, yt),
    ]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("slice_kept", [True, False])
def test_similarity_of_reusable_bases_equals_svcca_of_the_pair(seed: int, slice_kept: bool) -> None:
    """Each side reduced on its own and paired later gives the pair's SVCCA, and the subspace
    reference's where the value is finite."""
    from ikkuna_tune.functional.svcca import kept_basis, similarity_of_bases

    for what, x, y in _sides(seed):
        a, b = kept_basis(x, 0.99, slice_kept), kept_basis(y, 0.99, slice_kept)
        got = similarity_of_bases(a, b)
        assert got.dtype == torch.float64 and got.shape == (), what
        expected = svcca_similarity_or_nan(x, y, 0.99)
        if what == "non-finite":
            assert math.isnan(got) and math.isnan(expected)
            continue
        torch.testing.assert_close(got, expected.double(), rtol=0, atol=1e-12, msg=what)
        if what == "constant side":
            assert float(got) == 0.0
        elif what != "wide":  # the reference needs more samples than features
            reference = subspace_svcca(x.double().numpy(), y.double().numpy(), 0.99)
            assert float(got) == pytest.approx(reference, abs=1e-5), what
        # pairing is symmetric
        torch.testing.assert_close(similarity_of_bases(b, a), got, rtol=0, atol=1e-12)


def test_kept_basis_refuses_keep_1() -> None:
    from ikkuna_tune.functional.svcca import kept_basis

    with pytest.raises(ValueError, match="keep=1 factorises both sides together"):
        kept_basis(torch.randn(10, 3), keep=1.0)
