r"""Canonical correlation analysis (CCA) between activation matrices, and the decomposition that
SVCCA builds on: checking the inputs, centring them, the QR factorisations and rank pruning.

:func:`cca` takes two activation matrices ``x`` (n_samples, p) and ``y`` (n_samples, q) whose
rows are the same data points (the same probe images, say) seen by two layers, or by one layer
at two points in training. No covariance matrix is formed: one Householder QR puts both sides
in one orthonormal system, directions at rounding level (of the arithmetic, or of the input's
precision) are dropped, and the canonical correlations are the singular values of the product
of the two bases (Björck and Golub, 1973). Everything runs in float64 on the input's device;
half-precision inputs count as the float32 numbers they hold. With fewer samples than features
the correlations are 1 whatever the data: use more samples (or fold convolution outputs so that
every position is a sample). SVCCA (:mod:`ikkuna_tune.functional.svcca`) reads its inputs the
same way and reuses the pieces here.

The derivation, the rounding floors and the costs are in ``docs/svcca.md``.

References: Björck and Golub, "Numerical methods for computing angles between linear
subspaces", Math. Comp. 27 (1973).
"""

from __future__ import annotations

import math
from typing import overload

import numpy as np
import torch

__all__ = ["cca"]

_EPS = float(torch.finfo(torch.float64).eps)


# ------------------------------------------------------------------------------------- input
def _as_tensor(a: object, name: str, device: torch.device | None) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        t = a.detach()
    elif isinstance(a, np.ndarray):
        if a.dtype.kind not in "biuf":
            raise ValueError(f"Expected `{name}` to hold real numbers but got dtype {a.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(a))
    else:
        raise ValueError(
            f"Expected `{name}` to be a torch.Tensor or a numpy.ndarray but got {type(a).__name__}"
        )
    if t.is_complex():
        raise ValueError(f"Expected `{name}` to hold real numbers but got dtype {t.dtype}")
    if t.dim() != 2:
        raise ValueError(
            f"Expected `{name}` to be a matrix of shape (n_samples, n_features) but got shape "
            f"{tuple(t.shape)}"
        )
    # floating inputs keep their dtype: they are converted to float64 while being centred
    return t.to(device=device, dtype=t.dtype if t.is_floating_point() else torch.float64)


def _prepare(x: object, y: object) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Both inputs as floating tensors on one device, checked; and whether to return NumPy."""
    numpy_out = not isinstance(x, torch.Tensor) and not isinstance(y, torch.Tensor)
    device = next((a.device for a in (x, y) if isinstance(a, torch.Tensor)), None)
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.device != y.device:
        raise ValueError(f"Expected `x` and `y` on one device but got {x.device} and {y.device}")
    xt = _as_tensor(x, "x", device)
    yt = _as_tensor(y, "y", device)
    if xt.shape[0] != yt.shape[0]:
        raise ValueError(
            "Expected `x` and `y` to have the same number of samples (rows) but got "
            f"{xt.shape[0]} and {yt.shape[0]}"
        )
    if xt.shape[0] < 2:
        raise ValueError(f"Expected at least 2 samples (rows) but got {xt.shape[0]}")
    for name, t in (("x", xt), ("y", yt)):
        if t.shape[1] < 1:
            raise ValueError(f"Expected `{name}` to have at least one feature (column)")
    # one read-back for both inputs; NaN propagates through min and max
    extremes = torch.stack([e.double() for e in (*torch.aminmax(xt), *torch.aminmax(yt))])
    finite = torch.isfinite(extremes).tolist()
    for name, ok in (("x", finite[0] and finite[1]), ("y", finite[2] and finite[3])):
        if not ok:
            raise ValueError(f"Expected `{name}` to hold finite values but it has NaN or inf")
    return xt, yt, numpy_out


# ------------------------------------------------------------------------------- the maths
# Activation matrices are large (tens of MB) and every fresh allocation of that size is backed
# by new pages, so the sides are centred straight into one column-major float64 buffer (the
# input's dtype is converted on the way), and LAPACK's QR works on that buffer in place.


def _column_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over the input: which columns vary at all, and each column's largest magnitude.

    A column whose minimum equals its maximum is constant (a dead neuron) and spans nothing once
    centred. Columns that vary only at rounding level are caught after centring
    (:func:`_centre_into_`).
    """
    lo, hi = torch.aminmax(x, dim=0)
    return lo != hi, torch.maximum(lo.abs(), hi.abs()).to(torch.float64)


def _column_major(n: int, p: int, like: torch.Tensor) -> torch.Tensor:
    """An uninitialised float64 (n, p) matrix stored column by column, as LAPACK wants it."""
    return torch.empty((p, n), dtype=torch.float64, device=like.device).T


def _input_eps(dtype: torch.dtype) -> float:
    """The relative precision of the input: that of ``dtype``, but never coarser than float32's
    (half-precision values count as the float32 numbers they are; see the module docstring)."""
    return min(torch.finfo(dtype).eps, torch.finfo(torch.float32).eps)


def _centre_into_(
    out: torch.Tensor,
    x: torch.Tensor,
    scale: torch.Tensor,
    dead: torch.Tensor | None = None,
    divisor: torch.Tensor | None = None,
) -> torch.Tensor:
    """Write ``x`` with its column means subtracted into ``out``; zero the constant columns.

    ``out`` is a column-major float64 block of the same shape (a view into a larger buffer is
    fine); ``scale`` holds each column's largest magnitude (in the units of ``out``); ``dead``
    optionally marks columns to zero regardless (or a 0-d mask that zeroes everything);
    ``divisor`` (0-d), if given, divides ``x`` as it is copied (to keep squares finite). The
    mean is subtracted twice: the second pass removes the rounding residue of the first, which
    would otherwise survive as a tiny component along the all-ones vector, identical in every
    centred matrix, and show up as a spurious canonical correlation of 1. A column whose
    centred norm is at rounding level relative to its largest entry is constant up to rounding
    and set to exactly zero.

    Returns each column's bound on the norm of the input's own rounding error,
    ``eps / 2 * ||x_j||`` with ``eps`` from :func:`_input_eps` (zero for the zeroed columns,
    which carry none): see the module docstring.
    """
    n = x.shape[0]
    out.copy_(x)
    if divisor is not None:
        out.div_(divisor)
    mean = out.mean(dim=0)
    out -= mean
    out -= out.mean(dim=0)
    norms = torch.linalg.vector_norm(out, dim=0)
    flat = norms <= 4 * n * _EPS * scale
    if dead is not None:
        flat = flat | dead
    out.masked_fill_(flat, 0.0)
    # ||x_j||^2 = ||x_j - mean_j||^2 + n mean_j^2
    raw = torch.hypot(norms, mean.mul_(math.sqrt(n)))
    return raw.mul_(_input_eps(x.dtype) / 2).masked_fill_(flat, 0.0)


def _centred(
    xs: tuple[torch.Tensor, ...],
    compact: bool,
    invalid: torch.Tensor | None = None,
    divisors: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """The centred sides next to each other in one column-major float64 buffer.

    With ``compact`` the constant columns are left out (reading their number back to the host);
    otherwise they stay, as zero columns, and nothing is read back. ``invalid`` is a 0-d mask
    that zeroes everything (used for non-finite input that must not reach LAPACK). Returns the
    buffer, the number of columns of each side, and each column's bound on the input's rounding
    error (:func:`_centre_into_`). Each side's divisor (0-d: its largest magnitude over the
    columns kept, 1 if none) is appended to ``divisors`` if given.
    """
    stats = [_column_stats(x) for x in xs]
    if compact:
        parts = [
            (x, scale, None) if bool(live.all()) else (x[:, live], scale[live], None)
            for x, (live, scale) in zip(xs, stats, strict=True)
        ]
    else:
        parts = [(x, scale, ~live) for x, (live, scale) in zip(xs, stats, strict=True)]
    widths = [part[0].shape[1] for part in parts]
    buffer = _column_major(xs[0].shape[0], sum(widths), xs[0])
    noise = []
    start = 0
    for (x, scale, dead), width in zip(parts, widths, strict=True):
        if invalid is not None:
            dead = invalid if dead is None else dead | invalid
        # each side is divided by its largest magnitude (CCA sees no scale), so that no square
        # (a norm, a Gram entry, a variance) overflows or underflows at extreme magnitudes
        largest = scale.max() if scale.numel() else scale.new_ones(())
        divisor = torch.where(largest > 0, largest, torch.ones_like(largest))
        if divisors is not None:
            divisors.append(divisor)
        out = buffer[:, start : start + width]
        noise.append(_centre_into_(out, x, scale / divisor, dead, divisor))
        start += width
    return buffer, widths, torch.cat(noise)


def _floor(noise: torch.Tensor, divisors: torch.Tensor | None = None) -> torch.Tensor:
    """The input-precision floor for singular values of one side (0-d): a bound on the Frobenius
    norm of its rounding error, after its columns were divided by ``divisors`` (if given)."""
    if divisors is not None:
        noise = noise / divisors
    return torch.linalg.vector_norm(noise)


def _equilibrate_(x: torch.Tensor) -> torch.Tensor:
    """Scale every non-zero column of ``x`` to unit length in place (same column space); return
    the divisors (1 for zero columns).

    CCA does not depend on the scale of single features, so this makes the rank decision
    independent of it: a legitimately small-scale neuron is not mistaken for rounding noise.
    ``x`` must be a matrix this module owns (a centred copy), never the caller's input.
    """
    norms = torch.linalg.vector_norm(x, dim=0)
    divisors = torch.where(norms > 0, norms, torch.ones_like(norms))
    x.div_(divisors)
    return divisors


def _r_in_place(a: torch.Tensor) -> torch.Tensor:
    """The triangular factor ``R`` of a Householder QR ``a = Q R``, overwriting ``a``.

    ``a`` must be column-major (as from :func:`_column_major`); LAPACK's ``geqrf`` then works on
    its memory directly, and ``Q`` (left as reflectors in ``a``) is never formed. Returns the
    ``min(n, p)`` leading rows of ``R`` as a new matrix.
    """
    n, p = a.shape
    tau = a.new_empty(min(n, p))
    torch.geqrf(a, out=(a, tau))
    return a[: min(n, p)].triu()


def _joint_r(both: torch.Tensor, p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(R_x, R_y)`` from one Householder QR ``[x, y] = Q [R_x, R_y]``, overwriting ``both``.

    ``both`` holds ``x`` in its first ``p`` columns and ``y`` after them (column-major).
    ``Q`` (n, m), ``m = min(n, p + q)``, has orthonormal columns, so ``x = Q R_x`` and
    ``y = Q R_y`` are both written in one orthonormal coordinate system. ``R_x`` is upper
    trapezoidal: only its first ``min(m, p)`` rows can be non-zero, and only those are returned.
    """
    r = _r_in_place(both)
    return r[: min(r.shape[0], p), :p], r[:, p:]


def _arithmetic_floor(shape: tuple[int, ...], largest: torch.Tensor) -> torch.Tensor:
    """Rounding level of the float64 arithmetic for singular values of data of ``shape`` whose
    largest singular value is (at most) ``largest``."""
    return max(shape) * _EPS * largest


def _rank_mask(s: torch.Tensor, shape: tuple[int, ...], floor: torch.Tensor) -> torch.Tensor:
    """Which singular values are above rounding level: that of the arithmetic (relative to the
    largest) and that of the input's precision (``floor``, from :func:`_floor`)."""
    return (s > _arithmetic_floor(shape, s[:1])) & (s > floor) & (s > 0)


def _cosines(m: torch.Tensor) -> torch.Tensor:
    """Singular values of the product of two orthonormal bases (the cosines of the principal
    angles), clipped to [0, 1]; empty for an empty product."""
    if m.numel() == 0:
        return m.new_zeros(0)
    return torch.linalg.svdvals(m).clamp_(0.0, 1.0)


def _rank(r: torch.Tensor, shape: tuple[int, int], floor: torch.Tensor) -> int:
    """Number of singular values of ``r`` above rounding level (for data of ``shape`` whose input
    precision gives ``floor``)."""
    return int(_rank_mask(torch.linalg.svdvals(r), shape, floor).sum())


def _certainly_full_rank(r: torch.Tensor, shape: tuple[int, int], floor: torch.Tensor) -> bool:
    """Whether the square triangular ``r`` certainly has every singular value above rounding
    level, shown without an SVD (a triangular inverse costs a fraction of one).

    The computed inverse ``X`` is the exact inverse of ``r + dR`` with ``|dR|`` at rounding
    level of ``r``, so ``sigma_min(r) >= 1 / ||X||_2 - ||dR|| >= 1 / ||X||_F - ||dR||``. The
    test asks ``1 / ||X||_F`` to clear four times the larger of the two floors of
    :func:`_rank_mask`, with ``||r||_F >= sigma_1`` standing in for the largest singular value:
    that margin covers ``dR``. ``False`` means "not shown" (near rank deficiency, or an inverse
    that overflowed), and the caller counts the rank with an SVD.
    """
    if r.shape[0] != r.shape[1] or r.numel() == 0:
        return False
    eye = torch.eye(r.shape[0], dtype=r.dtype, device=r.device)
    inverse = torch.linalg.solve_triangular(r, eye, upper=True)
    tol = _arithmetic_floor(shape, torch.linalg.matrix_norm(r))
    return bool(torch.linalg.matrix_norm(inverse) * 4 * torch.maximum(tol, floor) < 1)


def _leading_left_vectors(r: torch.Tensor, rank: int) -> torch.Tensor:
    return torch.linalg.svd(r, full_matrices=False)[0][:, :rank]


def _basis_x(rx: torch.Tensor, shape: tuple[int, int], floor: torch.Tensor) -> torch.Tensor | None:
    """Orthonormal basis of the column space of ``R_x`` in the QR's coordinates.

    ``None`` stands for the identity: a square triangular block of full rank spans all of its
    coordinates, so no singular vectors are needed. Otherwise the leading left singular vectors.
    """
    rows, cols = rx.shape
    if _certainly_full_rank(rx, shape, floor):
        return None
    rank = _rank(rx, shape, floor)
    return None if rank == cols == rows else _leading_left_vectors(rx, rank)


def _basis_y(ry: torch.Tensor, shape: tuple[int, int], floor: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the column space of ``R_y``: the ``Q`` of its QR when it has full
    column rank (cheaper than singular vectors), else its leading left singular vectors."""
    rows, cols = ry.shape
    if rows >= cols:
        q, tri = torch.linalg.qr(ry)
        if _certainly_full_rank(tri, shape, floor):
            return q
        rank = _rank(tri, shape, floor)
        if rank == cols:
            return q
    else:
        rank = _rank(ry, shape, floor)
    return _leading_left_vectors(ry, rank)


# -------------------------------------------------------------------------------- public API
@overload
def cca(x: torch.Tensor, y: torch.Tensor | np.ndarray) -> torch.Tensor: ...
@overload
def cca(x: np.ndarray, y: torch.Tensor) -> torch.Tensor: ...
@overload
def cca(x: np.ndarray, y: np.ndarray) -> np.ndarray: ...
def cca(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """The canonical correlations between ``x`` (n, p) and ``y`` (n, q), in descending order.

    Computed without covariance matrices (see the module docstring): centre, drop constant
    columns, scale columns to unit length, find orthonormal bases of both column spaces with
    rank pruning (QR and an SVD of the triangular factor), and take the singular values of the
    product of the bases, clipped to [0, 1].

    There are ``min(rank x, rank y)`` correlations, where rank counts the directions of the
    centred data above rounding level: dead (constant) and duplicated neurons add none, so they
    neither fail nor report spurious correlations of 1. Rounding level includes the precision
    of the input's dtype, so a float32 matrix of exact rank ``r`` counts as rank ``r`` even though
    its rounding makes it full rank (see the module docstring). With more features than samples
    see the module docstring: many (or all) correlations are 1 by dimension counting.

    Args:
        x: activations of shape (n_samples, n_features), a torch tensor (any device) or a NumPy
            array, any real dtype (float16 and bfloat16 count as float32); computed in float64.
        y: the same n_samples seen by another layer (or checkpoint).

    Returns:
        A 1-d float64 tensor on the input's device if either input is a torch tensor (a NumPy
        input is moved to that tensor's device), else a 1-d float64 ``numpy.ndarray``. Empty when
        one side has no variation at all.

    Raises:
        ValueError: for inputs that are not matrices, hold NaN or inf, have different numbers of
            rows or fewer than two, or live on different devices.

    Examples:
        >>> x = torch.randn(100, 3, generator=torch.Generator().manual_seed(0))
        >>> rho = cca(x, x @ torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]]))
        >>> rho.dtype, [round(r, 6) for r in rho.tolist()]  # an invertible map of x: all 1
        (torch.float64, [1.0, 1.0, 1.0])
        >>> empty = cca(x.numpy(), np.ones((100, 2)))  # a constant side: no correlations
        >>> empty.shape, empty.dtype
        ((0,), dtype('float64'))
    """
    xt, yt, numpy_out = _prepare(x, y)
    n = xt.shape[0]
    both, (px, py), noise = _centred((xt, yt), compact=True)
    if px and py:
        divisors = _equilibrate_(both)
        floor_x = _floor(noise[:px], divisors[:px])
        floor_y = _floor(noise[px:], divisors[px:])
        rx, ry = _joint_r(both, px)
        bx, by = _basis_x(rx, (n, px), floor_x), _basis_y(ry, (n, py), floor_y)
        rows = rx.shape[0]
        rho = _cosines(by[:rows] if bx is None else bx.T @ by[:rows])
    else:
        # one side does not vary: no canonical correlations (float64, as documented)
        rho = torch.zeros(0, dtype=torch.float64, device=xt.device)
    return rho.cpu().numpy() if numpy_out else rho
