"""Linear CKA and the share of live features: cheap second opinions on a layer's representation.

SVCCA (:mod:`ikkuna_tune.functional.svcca`) ignores every invertible linear map of either side
(exactly with ``keep=1``; with ``keep < 1`` a map that reshapes the spectrum changes which
directions are kept, and the value reads a little below 1: 0.993 for a random map of data with a
decaying spectrum at ``keep=0.99``), so a widening layer read before its nonlinearity scores
near 1 against any other weights. Linear
CKA (Kornblith et al., "Similarity of Neural Network Representations Revisited", ICML 2019) is
invariant only to orthogonal maps and isotropic scaling, so it sees such a layer move; the
convergence rules use it to measure how far a layer has come from its initialisation.

References:
    Kornblith, Norouzi, Lee, Hinton. ICML 2019, equation (2) (linear kernel, feature space form).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

_EPS = float(torch.finfo(torch.float64).eps)

__all__ = ["CKASide", "cka_side", "linear_cka", "linear_cka_of_sides", "live_fraction"]


class CKASide(NamedTuple):
    """One side of linear CKA (:func:`cka_side`), kept for pairing with any other side: a layer's
    activations at initialisation are prepared once and compared at every checkpoint.

    Examples:
        >>> x = torch.randn(30, 4, dtype=torch.float64)
        >>> side = cka_side(x)
        >>> tuple(side.centred.shape), bool(side.finite)
        ((30, 4), True)
    """

    #: The activations in float64, divided by their largest magnitude, with each column's mean
    #: subtracted (a column constant up to rounding is exactly zero).
    centred: torch.Tensor
    #: ``||Xc^T Xc||_F`` (0-d float64): the Frobenius norm of the side's Gram matrix.
    norm: torch.Tensor
    #: Whether the side was finite (0-d bool).
    finite: torch.Tensor


def cka_side(x: torch.Tensor) -> CKASide:
    """Prepare one activation matrix (n_samples, n_features) for :func:`linear_cka_of_sides`.

    The norm of the Gram matrix is taken from the smaller of ``Xc^T Xc`` and ``Xc Xc^T`` (their
    non-zero eigenvalues, hence Frobenius norms, are equal). Nothing is read back to the host.

    Raises:
        ValueError: for anything but a matrix with at least 2 rows.

    Examples:
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [2.0, 1.0]])
        >>> side = cka_side(x)
        >>> side.centred.sum(dim=0), side.norm.dtype
        (tensor([0., 0.], dtype=torch.float64), torch.float64)
    """
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(
            f"Expected a matrix with >= 2 rows (samples) but got shape {tuple(x.shape)}"
        )
    xd = x.detach().double()
    lo, hi = torch.aminmax(xd, dim=0)
    scale = torch.maximum(lo.abs(), hi.abs())  # each column's largest magnitude
    largest = scale.max()
    # CKA sees no scale: divided by the largest magnitude, no square over- or underflows
    divisor = torch.where(largest > 0, largest, torch.ones_like(largest))
    xc = xd / divisor
    # the mean twice (its rounding residue would survive as a constant column's variance)
    xc -= xc.mean(dim=0, keepdim=True)
    xc -= xc.mean(dim=0, keepdim=True)
    n = xc.shape[0]
    # a column that varies only at rounding level is constant: zero
    flat = torch.linalg.vector_norm(xc, dim=0) <= 4 * n * _EPS * (scale / divisor)
    xc.masked_fill_(flat, 0.0)
    gram = xc.T @ xc if xc.shape[0] >= xc.shape[1] else xc @ xc.T
    return CKASide(xc, torch.linalg.matrix_norm(gram), torch.isfinite(largest))


def linear_cka_of_sides(a: CKASide, b: CKASide) -> torch.Tensor:
    """Linear CKA between the two matrices whose :func:`cka_side` ``a`` and ``b`` are: the value
    of :func:`linear_cka`, with only the cross product left to compute.

    Raises:
        ValueError: if the sides have different numbers of rows.

    Examples:
        >>> x = torch.randn(50, 3, dtype=torch.float64)
        >>> start = cka_side(x)  # prepared once
        >>> [round(float(linear_cka_of_sides(cka_side(y), start)), 6) for y in (x, 2.0 * x)]
        [1.0, 1.0]
    """
    if a.centred.shape[0] != b.centred.shape[0]:
        raise ValueError(
            "Expected two sides with the same number of rows but got shapes "
            f"{tuple(a.centred.shape)} and {tuple(b.centred.shape)}"
        )
    device = a.centred.device
    cross = torch.linalg.matrix_norm(b.centred.to(device).T @ a.centred) ** 2
    norms = a.norm * b.norm.to(device)
    value = torch.where(norms > 0, cross / norms.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    finite = a.finite & b.finite.to(device)
    return torch.where(finite, value.clamp(0.0, 1.0), torch.full_like(value, math.nan))


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA between two activation matrices with the same rows (data points).

    ``CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``Xc``, ``Yc``,
    computed in float64 from products of cost ``O(n p q)``. 1 for representations equal up to an
    orthogonal map and a scale, 0 for unrelated ones. A side without any variance (every
    feature constant over the rows) gives 0; non-finite input gives NaN. The result is a 0-d
    float64 tensor on ``x``'s device; nothing is read back to the host. To compare one matrix
    with many, prepare it once with :func:`cka_side` and use :func:`linear_cka_of_sides`.

    Examples:
        >>> x = torch.randn(100, 5, dtype=torch.float64)
        >>> q, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
        >>> round(float(linear_cka(x, 3.0 * x @ q)), 6)
        1.0
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(
            "Expected two matrices with the same number (>= 2) of rows but got shapes "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    return linear_cka_of_sides(cka_side(x), cka_side(y.to(x.device)))


def live_fraction(x: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """The fraction of features (columns of ``x``) that vary over the data points (rows).

    A feature is live when its standard deviation over the rows exceeds ``rtol`` times the
    largest absolute value in ``x`` (and is not 0). A layer whose units all died (a ReLU layer
    stuck at 0, constant outputs) gives 0. A 0-d float64 tensor; NaN for non-finite input.

    Examples:
        >>> x = torch.tensor([[0.0, 1.0, 2.0], [0.0, 3.0, 2.0], [0.0, 5.0, 2.0]])
        >>> float(live_fraction(x))  # only the middle column varies
        0.3333333333333333
    """
    if x.dim() != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(
            f"Expected a matrix with >= 2 rows and >= 1 column but got {tuple(x.shape)}"
        )
    xd = x.detach().double()
    spread = xd.std(dim=0)
    scale = xd.abs().max()
    live = (spread > rtol * scale) & (spread > 0)
    value = live.double().mean()
    return torch.where(torch.isfinite(scale), value, torch.full_like(value, math.nan))
