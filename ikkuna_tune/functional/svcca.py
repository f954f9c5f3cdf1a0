r"""SVCCA between activation matrices: each side reduced by a thin SVD to its leading singular
directions, then the mean canonical correlation between the two reduced sides.

SVCCA (Raghu et al., 2017) keeps each side's leading singular directions covering the fraction
``keep`` of its variance. The inputs are read, centred and factorised as for :func:`cca` (see
:mod:`ikkuna_tune.functional.cca`: float64 on the input's device, half precision counts as
float32, fewer samples than features give correlations of 1). :func:`svcca_similarity_or_nan`
is the variant for the training loop. :func:`cca` is importable from here too.

The derivation, the rounding floors and the costs are in ``docs/svcca.md``.

References: Raghu, Gilmer, Yosinski and Sohl-Dickstein, "SVCCA: Singular Vector Canonical
Correlation Analysis for Deep Learning Dynamics and Interpretability", NeurIPS 2017.
"""

from __future__ import annotations

import math
from typing import NamedTuple, overload

import numpy as np
import torch

from ikkuna_tune.checks import check_fraction
from ikkuna_tune.functional.cca import (
    _EPS,
    _centred,
    _cosines,
    _floor,
    _joint_r,
    _prepare,
    _rank_mask,
    cca,
)

__all__ = [
    "KeptBasis",
    "cca",
    "kept_basis",
    "similarity_of_bases",
    "svcca_similarity",
    "svcca_similarity_or_nan",
]


# ------------------------------------------------------------------------------------- input
def _check_keep(keep: float) -> float:
    return check_fraction("keep", keep)


# ------------------------------------------------------------------------------- the maths
def _unit_(x: torch.Tensor) -> torch.Tensor:
    """Scale ``x`` in place to Frobenius norm 1 (left alone if zero; CCA does not see scale) and
    return the divisor."""
    norm = torch.linalg.matrix_norm(x)
    divisor = torch.where(norm > 0, norm, torch.ones_like(norm))
    x.div_(divisor)
    return divisor


def _factor(both: torch.Tensor, p: int, noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Left singular vectors and singular values of both sides, in one coordinate system.

    With ``x = Q R_x`` and ``y = Q R_y`` from :func:`_joint_r`, the thin SVDs
    ``R_x = W_x diag(s_x) V_x^T`` and ``R_y = W_y diag(s_y) V_y^T`` are small, and
    ``x = (Q W_x) diag(s_x) V_x^T`` is the thin SVD of ``x`` (likewise for ``y``). Since ``Q``
    has orthonormal columns, ``(Q W_x)^T (Q W_y) = W_x^T W_y``: products of the bases never
    involve ``n``. Each side is scaled to unit norm first (Householder QR is backward stable
    column by column, so this only keeps the numbers tidy). ``noise`` holds the columns' bounds
    on the input's rounding error (:func:`_centred`). Returns
    ``(w_x, s_x, floor_x, w_y, s_y, floor_y)``, ``s`` descending, ``floor`` the input-precision
    floor of each side's singular values (:func:`_floor`).
    """
    floor_x = _floor(noise[:p], _unit_(both[:, :p]))
    floor_y = _floor(noise[p:], _unit_(both[:, p:]))
    rx, ry = _joint_r(both, p)
    wx, sx, _ = torch.linalg.svd(rx, full_matrices=False)
    wy, sy, _ = torch.linalg.svd(ry, full_matrices=False)
    return wx, sx, floor_x, wy, sy, floor_y


def _variance_mask(s: torch.Tensor, keep: float) -> torch.Tensor:
    """The leading directions whose variance (``s**2``) first reaches ``keep`` of the total.

    Direction ``i`` is kept while the variance of the directions before it is still short of
    the target, so the smallest such prefix is kept.
    """
    v = s * s
    before = torch.cumsum(v, dim=0) - v
    return before < keep * v.sum()


def _correlations(
    wx: torch.Tensor, wy: torch.Tensor, mx: torch.Tensor, my: torch.Tensor, slice_kept: bool
) -> torch.Tensor:
    """Singular values of ``B_x^T B_y``, ``B`` the kept columns of ``W``, clipped to [0, 1].

    With ``slice_kept`` the kept columns (a prefix, since ``s`` is descending) are cut out, which
    reads their number back to the host; otherwise the dropped columns are zeroed, giving the same
    non-zero singular values padded with zeros, and no host synchronisation.
    """
    if slice_kept:
        wx, wy = wx[:, : int(mx.sum())], wy[:, : int(my.sum())]
    else:
        wx, wy = wx * mx, wy * my
    return _cosines(wx.T @ wy[: wx.shape[0]])


def _kept_basis(
    x: torch.Tensor,
    keep: float,
    slice_kept: bool,
    noise: torch.Tensor,
    gram: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal basis of the kept leading directions of one centred side, and their count.

    Where :func:`_gram_resolves` ``keep`` (at a probe's sizes, every ``keep`` short of 1 by
    more than about 1e-6) the side is reduced from its Gram matrix
    (:func:`_kept_basis_from_gram`), otherwise from the triangular factor of its QR
    (:func:`_kept_basis_from_qr`). With ``slice_kept`` the kept
    columns are cut out (their number is read to the host), otherwise the dropped ones are zero.
    ``noise`` holds the columns' bounds on the input's rounding error (:func:`_centred`);
    ``gram``, if given, is the Gram matrix :func:`_gram_of` made of ``x`` already.
    """
    if _gram_resolves(tuple(x.shape), keep):
        return _kept_basis_from_gram(x, keep, slice_kept, noise, gram)
    return _kept_basis_from_qr(x, keep, slice_kept, noise)


def _kept_basis_from_qr(
    x: torch.Tensor, keep: float, slice_kept: bool, noise: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_kept_basis` from a Householder QR, for ``keep`` too close to 1 for the Gram route.

    The triangular factor of a Householder QR (``Q`` is not formed) has the singular values and
    right singular vectors of ``x``: with ``R = W diag(s) V^T``, ``x V diag(1/s) = Q W`` are the
    left singular vectors of ``x``, found with one matrix product. Only kept directions are
    divided by their singular value, and with ``keep < 1`` a kept direction has
    ``s_i >= s_1 sqrt((1 - keep) / p)`` (the variance from ``i`` on is more than ``1 - keep`` of
    the total and at most ``p s_i^2``), so the division amplifies rounding by at most
    ``sqrt(p / (1 - keep))``: about 300 for ``keep=0.99`` and 1,000 features.
    """
    r = torch.linalg.qr(x, mode="r").R
    _, s, vh = torch.linalg.svd(r, full_matrices=False)
    mask = _rank_mask(s, tuple(x.shape), _floor(noise)) & _variance_mask(s, keep)
    if slice_kept:
        k = int(mask.sum())
        return x @ (vh[:k].T / s[:k]), mask.new_tensor(k, dtype=torch.int64)
    scale = torch.where(mask, 1.0 / torch.where(mask, s, torch.ones_like(s)), torch.zeros_like(s))
    return x @ (vh.T * scale), mask.sum()


#: How far below the smallest variance share that ``keep`` can keep the Gram route's rounding
#: must stay (:func:`_gram_resolves`).
_GRAM_MARGIN = 100.0
#: The largest error of a similarity that the Gram route may risk (:func:`_gram_resolves`).
_GRAM_ERROR = 1e-8


def _gram_resolves(shape: tuple[int, ...], keep: float) -> bool:
    """Whether the Gram route finds the directions ``keep`` keeps, for a side of ``shape``,
    and spans them accurately enough.

    Forming ``G = x^T x`` (or ``x x^T``) and its eigendecomposition in float64 perturbs the
    eigenvalues ``s_i^2`` by at most about ``n m eps s_1^2`` (``m`` the smaller dimension): a
    direction below ``sqrt(n m eps) s_1`` cannot be told from rounding. Such directions hold at
    most ``m n m eps`` of the variance (the total is at least ``s_1^2``), and the variance
    mask never reaches them while ``1 - keep`` is ``_GRAM_MARGIN`` times that or more.

    The kept directions are found less accurately than from a QR: an eigenvector's error is
    about ``eps s_1^2`` over the gap between squared singular values, and ``x v / s`` turns it
    into an error of up to ``eps (s_1 / s_k)^3`` in the basis, with
    ``s_1 / s_k <= sqrt(m / (1 - keep))``. The route is also required to keep that bound below
    ``_GRAM_ERROR``: with ``keep = 0.99`` (the default) up to about 1,270 features, with
    ``keep = 0.999`` up to about 127; beyond, the QR route is taken.

    Examples:
        >>> _gram_resolves((300, 128), 0.99), _gram_resolves((300, 128), 1 - 1e-6)
        (True, False)
    """
    n, m = max(shape), min(shape)
    resolved = _GRAM_MARGIN * m * n * m * _EPS < 1.0 - keep
    return resolved and _EPS * (m / (1.0 - keep)) ** 1.5 <= _GRAM_ERROR


def _gram_of(x: torch.Tensor) -> torch.Tensor:
    """The smaller Gram matrix of ``x``: ``x^T x`` with at least as many rows as columns,
    ``x x^T`` with fewer (both have the same non-zero eigenvalues, the squared singular values).
    """
    return x.T @ x if x.shape[0] >= x.shape[1] else x @ x.T


def _kept_basis_from_gram(
    x: torch.Tensor,
    keep: float,
    slice_kept: bool,
    noise: torch.Tensor,
    gram: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_kept_basis` from the eigendecomposition of the smaller Gram matrix of ``x``.

    With at least as many rows as columns, ``x^T x = V diag(s^2) V^T`` gives the singular values
    and right singular vectors, and ``x V diag(1/s)`` are the left singular vectors (dividing
    only kept directions, with ``s_i >= s_1 sqrt((1 - keep) / p)`` as in
    :func:`_kept_basis_from_qr`); with fewer rows, ``x x^T = U diag(s^2) U^T`` gives the left
    singular vectors directly. Both Gram matrices cost one matrix product and a symmetric
    eigendecomposition, about half of a QR and an SVD at the sizes of a probe. Squaring doubles
    the condition number, so directions below ``sqrt(n m eps) s_1`` drop out as rounding (the
    arithmetic floor here); :func:`_gram_resolves` only allows ``keep`` that never reaches them,
    and bounds the error of the kept basis. ``gram``, if given, is :func:`_gram_of` of ``x``.
    """
    n, p = x.shape
    features = n >= p
    if gram is None:
        gram = _gram_of(x)
    squares, vectors = torch.linalg.eigh(gram)
    squares, vectors = squares.flip(0), vectors.flip(1)  # descending
    s = squares.clamp_min(0.0).sqrt()
    arithmetic = math.sqrt(n * min(n, p) * _EPS) * s[:1]
    mask = (s > arithmetic) & (s > _floor(noise)) & (s > 0) & _variance_mask(s, keep)
    if slice_kept:
        k = int(mask.sum())
        count = mask.new_tensor(k, dtype=torch.int64)
        if features:
            return x @ (vectors[:, :k] / s[:k]), count
        return vectors[:, :k], count
    if features:
        inverse = torch.where(mask, s, torch.ones_like(s)).reciprocal()
        return x @ (vectors * torch.where(mask, inverse, torch.zeros_like(s))), mask.sum()
    return vectors * mask, mask.sum()


def _svcca(
    x: torch.Tensor,
    y: torch.Tensor,
    keep: float,
    slice_kept: bool | None = None,
    invalid: torch.Tensor | None = None,
) -> torch.Tensor:
    """SVCCA of two checked matrices (any real dtype, one device), as a 0-d float64 tensor.

    ``invalid`` is an optional 0-d boolean tensor; where it is true both sides are treated as
    all zeros (for non-finite input, which must not reach LAPACK), without reading it back.

    By default the kept directions are sliced out on a CPU (reading their count costs nothing
    there) and masked on other devices, so that this reads nothing back of its own (on a GPU
    the factorisations, ``torch.linalg.eigh``, ``svd`` and ``svdvals``, still synchronise the
    device with the host: PyTorch checks their error codes there).
    When slicing, dead neurons are also dropped before the factorisation (they span nothing, and
    the QR's cost grows with the square of the number of columns); when masking they stay, as
    zero columns, and the rank pruning leaves them out.

    With ``keep < 1`` each side is reduced on its own (:func:`_kept_basis`: a QR of one side is
    several times cheaper than one of both side by side, and the kept directions are
    well-conditioned by construction). With ``keep == 1`` every direction above rounding level
    is kept, however small, so the bases come from the joint QR instead (:func:`_factor`), which
    never divides by a singular value.
    """
    if slice_kept is None:
        slice_kept = x.device.type == "cpu"
    n = x.shape[0]
    if keep < 1:
        bases = []
        for side in (x, y):
            centred, (width,), noise = _centred((side,), slice_kept, invalid)
            if width == 0:
                return x.new_zeros(())  # one side does not vary: nothing is shared
            bases.append(_kept_basis(centred, keep, slice_kept, noise))
            del centred  # freed before the other side is centred: one side's buffers at a time
        (bx, kx), (by, ky) = bases
        rho = _cosines(bx.T @ by)
    else:
        both, (px, py), noise = _centred((x, y), slice_kept, invalid)
        if px == 0 or py == 0:
            return x.new_zeros(())
        wx, sx, floor_x, wy, sy, floor_y = _factor(both, px, noise)
        mx = _rank_mask(sx, (n, px), floor_x)
        my = _rank_mask(sy, (n, py), floor_y)
        rho = _correlations(wx, wy, mx, my, slice_kept)
        kx, ky = mx.sum(), my.sum()
    k = torch.minimum(kx, ky).clamp_min(1).to(rho.dtype)
    # the padded zeros add nothing to the sum; rank(B_x^T B_y) <= min(k_x, k_y)
    return rho.sum() / k


def svcca_similarity_or_nan(x: torch.Tensor, y: torch.Tensor, keep: float = 0.99) -> torch.Tensor:
    """:func:`svcca_similarity` for the training loop: NaN instead of an error, no value read.

    ``x`` and ``y`` are activation matrices already on one device (any floating dtype). If
    either holds a NaN or an infinity the result is NaN; the check stays on the device, so
    (on a GPU) the caller decides when to read the value; the factorisations themselves
    synchronise a GPU with the host (see :func:`_svcca`). Shapes are not validated beyond
    what the linear algebra needs: pass at least 2 matching rows.

    Examples:
        >>> x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
        >>> round(float(svcca_similarity_or_nan(x, 3.0 * x)), 6)
        1.0
        >>> x[0, 0] = math.inf
        >>> svcca_similarity_or_nan(x, 3.0 * x)
        tensor(nan, dtype=torch.float64)
    """
    keep = _check_keep(keep)
    x, y = x.detach(), y.detach().to(x.device)
    extremes = [e.double() for e in (*torch.aminmax(x), *torch.aminmax(y))]
    finite = torch.isfinite(torch.stack(extremes)).all()
    value = _svcca(x, y, keep, invalid=~finite)
    return torch.where(finite, value, torch.full_like(value, math.nan))


# ------------------------------------------------------------------------ one side at a time
class KeptBasis(NamedTuple):
    """One side's SVCCA reduction (:func:`kept_basis`), to be paired with any other side's.

    Examples:
        >>> x = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
        >>> side = kept_basis(x)
        >>> tuple(side.basis.shape), int(side.count), bool(side.finite)
        ((40, 3), 3, True)
        >>> kept_basis(torch.ones(40, 3)).basis is None  # no variation
        True
    """

    #: Orthonormal columns spanning the kept leading directions, or None if the side does not
    #: vary (then every similarity with it is 0).
    basis: torch.Tensor | None
    #: The number of kept directions (0-d int64).
    count: torch.Tensor
    #: Whether the side was finite (0-d bool); if not, every similarity with it is NaN.
    finite: torch.Tensor


def kept_basis(x: torch.Tensor, keep: float = 0.99, slice_kept: bool | None = None) -> KeptBasis:
    """The reduction of one activation matrix that :func:`svcca_similarity_or_nan` makes of
    each side (``keep < 1``), kept for reuse: comparing one checkpoint's activations with the
    previous and then the next checkpoint's reduces each matrix once, not twice.
    ``similarity_of_bases(kept_basis(x), kept_basis(y))`` equals
    ``svcca_similarity_or_nan(x, y)``; no value is read back on a GPU (its eigendecomposition
    or SVD synchronises the device with the host, as PyTorch checks their errors there).

    Raises:
        ValueError: for ``keep`` outside (0, 1) (with ``keep == 1`` both sides are factorised
            together; use :func:`svcca_similarity_or_nan`).

    Examples:
        >>> x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
        >>> a, b = kept_basis(x), kept_basis(x @ torch.randn(4, 4) + 1.0)
        >>> round(float(similarity_of_bases(a, b)), 6), int(a.count)
        (1.0, 4)
    """
    keep = _check_keep(keep)
    if keep == 1:
        raise ValueError(
            "Expected `keep` < 1 for a basis of one side (keep=1 factorises both sides "
            "together: use svcca_similarity_or_nan) but got 1"
        )
    x = x.detach()
    if slice_kept is None:
        slice_kept = x.device.type == "cpu"
    finite = torch.isfinite(torch.stack([e.double() for e in torch.aminmax(x)])).all()
    centred, (width,), noise = _centred((x,), slice_kept, ~finite)
    if width == 0:
        return KeptBasis(None, torch.zeros((), dtype=torch.int64, device=x.device), finite)
    basis, count = _kept_basis(centred, keep, slice_kept, noise)
    return KeptBasis(basis, count, finite)


def similarity_of_bases(a: KeptBasis, b: KeptBasis) -> torch.Tensor:
    """SVCCA between the two sides whose :func:`kept_basis` ``a`` and ``b`` are: a 0-d float64
    tensor, NaN if either side was not finite, 0 if either does not vary.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> x, noise = torch.randn(200, 3, generator=g), torch.randn(200, 3, generator=g)
        >>> similarity_of_bases(kept_basis(x), kept_basis(torch.ones(200, 3)))
        tensor(0., dtype=torch.float64)
        >>> float(similarity_of_bases(kept_basis(x), kept_basis(noise))) < 0.3  # unrelated
        True
    """
    device = a.count.device
    finite = (a.finite & b.finite.to(device)).reshape(())
    if a.basis is None or b.basis is None:
        value = torch.zeros((), dtype=torch.float64, device=device)
    else:
        rho = _cosines(a.basis.T @ b.basis.to(device))
        k = torch.minimum(a.count, b.count.to(device)).clamp_min(1).to(rho.dtype)
        value = rho.sum() / k
    return torch.where(finite, value, torch.full_like(value, math.nan))


# -------------------------------------------------------------------------------- public API
@overload
def svcca_similarity(
    x: torch.Tensor, y: torch.Tensor | np.ndarray, keep: float = 0.99
) -> torch.Tensor: ...
@overload
def svcca_similarity(x: np.ndarray, y: torch.Tensor, keep: float = 0.99) -> torch.Tensor: ...
@overload
def svcca_similarity(x: np.ndarray, y: np.ndarray, keep: float = 0.99) -> np.float64: ...
def svcca_similarity(
    x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, keep: float = 0.99
) -> torch.Tensor | np.float64:
    """SVCCA similarity: the mean canonical correlation of the leading singular directions.

    Each side is centred, its constant columns dropped, and reduced by a thin SVD to the fewest
    leading directions whose variance (squared singular values) reaches ``keep`` of the total;
    directions at rounding level (of float64, or of the input's dtype) are never kept. The
    result is the mean of the ``min(k_x, k_y)`` canonical correlations between the two reduced
    sets, a number in [0, 1]:
    1 when the reduced subspaces coincide (``y`` a rotation or scaling of ``x``, or with
    ``keep=1`` any invertible linear map of it: with ``keep < 1`` a map that reshapes the
    spectrum changes which directions are kept, and the value reads a little below 1), near 0
    for unrelated data with many more samples than kept directions (for independent random data
    it is roughly ``sqrt(k / n)``). Zero when either side has no variation. With more kept
    directions than samples the value is biased towards 1; see :mod:`ikkuna_tune.functional.cca`.

    Args:
        x: activations (n_samples, n_features), torch tensor (any device) or NumPy array, any
            real dtype (float16 and bfloat16 count as float32); computed in float64 on the
            tensor's device.
        y: the same samples at another layer or checkpoint.
        keep: fraction of each side's variance the kept directions explain, in (0, 1]; 1 keeps
            every direction above rounding level (plain mean CCA).

    Returns:
        A 0-d float64 tensor on the input's device if either input is a torch tensor, else a
        ``numpy.float64``.

    Raises:
        ValueError: for ``keep`` outside (0, 1], and for the inputs as in :func:`cca`.

    Examples:
        >>> generator = torch.Generator().manual_seed(0)
        >>> x = torch.randn(200, 4, generator=generator, dtype=torch.float64)
        >>> rotation, _ = torch.linalg.qr(torch.randn(4, 4, generator=generator, dtype=x.dtype))
        >>> round(float(svcca_similarity(x, 2.0 * x @ rotation)), 6)
        1.0
        >>> float(svcca_similarity(x, torch.randn(200, 4, generator=generator))) < 0.3  # unrelated
        True
    """
    keep = _check_keep(keep)
    xt, yt, numpy_out = _prepare(x, y)
    value = _svcca(xt, yt, keep)
    return np.float64(value.item()) if numpy_out else value
